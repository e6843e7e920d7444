"""Content indirection bodies pointing at certificates (RFC 4483, draft §4.2)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from sipcert.errors import InputTooLargeError, MIMEError
from sipcert.proto.indirection import (
    CERTIFICATE_TYPE,
    MAX_URL_LENGTH,
    ExternalBody,
    build_external_body,
    certificate_reference,
    parse_external_body,
)
from sipcert.proto.mime import MimePart, parse_mime_part
from sipcert.proto.sip import Request, body_part, parse_message, with_body

URL = "https://certs.example.com:7000/search-cgi?email=alice%40example.com"
WHEN = datetime(2026, 6, 20, 12, 0, tzinfo=UTC)

# The shape RFC 4483's example shows, with the draft's certificate type.
WIRE = (
    b"Content-Type: message/external-body; ACCESS-TYPE=URL;\r\n"
    b' URL="' + URL.encode() + b'";\r\n'
    b' EXPIRATION="Sat, 20 Jun 2026 12:00:00 GMT"; size=812\r\n'
    b"\r\n"
    b"Content-Type: application/pkix-cert\r\n"
    b"Content-ID: <4e5562cd1214427d@example.com>\r\n"
    b"\r\n"
)


def _part(content_type: str, inner: bytes = b"") -> MimePart:
    return MimePart(
        content_type,
        inner or b"Content-Type: application/pkix-cert\r\nContent-ID: <a@example.com>\r\n\r\n",
    )


def test_parses_the_rfc_4483_shape() -> None:
    ref = parse_external_body(parse_mime_part(WIRE))
    assert ref == ExternalBody(URL, CERTIFICATE_TYPE, "<4e5562cd1214427d@example.com>", WHEN, 812)
    assert ref.host == "certs.example.com"
    assert not ref.expired(WHEN - timedelta(seconds=1))
    assert ref.expired(WHEN)


def test_build_then_parse_round_trips() -> None:
    part = certificate_reference(
        URL, expiration=WHEN.astimezone(timezone(timedelta(hours=2))), size=812, domain="a.com"
    )
    assert part.media_type == "message/external-body"
    assert part.params["access-type"] == "URL"
    assert part.params["expiration"] == "Sat, 20 Jun 2026 12:00:00 GMT"
    assert b"Content-Type: application/pkix-cert\r\n" in part.body
    ref = parse_external_body(part)
    assert (ref.url, ref.expiration, ref.size) == (URL, WHEN, 812)
    assert ref.content_id.endswith("@a.com>")
    again = build_external_body(ref)
    assert parse_external_body(again) == ref  # the Content-ID is kept, not renewed


def test_minimal_reference_has_no_optional_parameters() -> None:
    part = certificate_reference("https://example.com/c.der", content_id="<x@example.com>")
    assert set(part.params) == {"access-type", "url"}
    ref = parse_external_body(part)
    assert (ref.expiration, ref.size, ref.content_id) == (None, None, "<x@example.com>")
    assert not ref.expired(WHEN)


def test_travels_as_a_sip_body() -> None:
    request = Request(
        "OPTIONS",
        "sip:alice@example.com",
        headers=(
            ("Via", "SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK1"),
            ("From", "<sip:p@example.com>;tag=1"),
            ("To", "<sip:alice@example.com>"),
            ("Call-ID", "x"),
            ("CSeq", "1 OPTIONS"),
        ),
    )
    message = with_body(request, certificate_reference(URL, size=812))
    received = parse_message(message.to_bytes(), datagram=False)
    part = body_part(received)
    assert part is not None
    assert parse_external_body(part).url == URL


@pytest.mark.parametrize(
    "url",
    [
        "http://certs.example.com/c",
        "ftp://certs.example.com/c",
        "HTTP://certs.example.com/c",
        "//certs.example.com/c",
        "file:///etc/passwd",
    ],
)
def test_only_https_urls(url: str) -> None:
    part = _part(f'message/external-body; access-type=URL; URL="{url}"')
    with pytest.raises(MIMEError, match="is not https"):
        parse_external_body(part)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://user:pw@certs.example.com/c", "user information"),
        ("https:///path-only", "has no host"),
        ("https://certs.example.com:99999/c", "does not parse"),
        ("https://certs.example.com:0/c", "port 0"),
        ("https://certs.example.com/a b", "spaces"),
        ("https://cert\u00e9.example.com/", "non-ASCII"),
    ],
)
def test_url_defects(url: str, problem: str) -> None:
    with pytest.raises(MIMEError, match=problem):
        ExternalBody(url)


def test_url_length_limit() -> None:
    with pytest.raises(InputTooLargeError):
        ExternalBody("https://example.com/" + "a" * MAX_URL_LENGTH)


@pytest.mark.parametrize(
    ("content_type", "problem"),
    [
        ("text/plain", "expected message/external-body"),
        ('message/external-body; access-type=local-file; name="/etc/x"', "is not URL"),
        ('message/external-body; URL="https://a.com/"', "access-type None is not URL"),
        ("message/external-body; access-type=URL", "lacks the URL parameter"),
        ('message/external-body; access-type=URL; URL="https://a.com/"; size=-1', "size"),
        ('message/external-body; access-type=URL; URL="https://a.com/"; size=1e3', "size"),
        (
            'message/external-body; access-type=URL; URL="https://a.com/"; expiration=tomorrow',
            "is not a date",
        ),
        (
            'message/external-body; access-type=URL; URL="https://a.com/";'
            ' expiration="Sat, 20 Jun 2026 12:00:00 -0000"',
            "no time zone",
        ),
    ],
)
def test_outer_defects(content_type: str, problem: str) -> None:
    with pytest.raises(MIMEError, match=problem):
        parse_external_body(_part(content_type))


def test_announced_size_limit() -> None:
    part = _part('message/external-body; access-type=URL; URL="https://a.com/"; size=70000')
    with pytest.raises(InputTooLargeError, match="70000 octets"):
        parse_external_body(part)
    assert parse_external_body(part, max_size=70000).size == 70000


@pytest.mark.parametrize(
    ("inner", "problem"),
    [
        (b"Content-ID: <a@example.com>\r\n\r\n", "do not name a Content-Type"),
        (b"Content-Type: text/html\r\nContent-ID: <a@example.com>\r\n\r\n", "text/html"),
        (b"Content-Type: application/pkix-cert\r\n\r\n", "lack a Content-ID"),
        (b"Content-Type: application/pkix-cert\r\nContent-ID: nobrackets\r\n\r\n", "<id@domain>"),
    ],
)
def test_inner_header_defects(inner: bytes, problem: str) -> None:
    part = _part('message/external-body; access-type=URL; URL="https://a.com/"', inner)
    with pytest.raises(MIMEError, match=problem):
        parse_external_body(part)


def test_other_referenced_types_when_accepted() -> None:
    inner = b"Content-Type: application/pkcs7-mime\r\nContent-ID: <b@example.com>\r\n\r\n"
    part = _part('message/external-body; access-type=URL; URL="https://a.com/"', inner)
    ref = parse_external_body(part, accept=frozenset({"application/pkcs7-mime"}))
    assert ref.content_type == "application/pkcs7-mime"


def test_oversized_entity() -> None:
    inner = b"Content-Type: application/pkix-cert\r\nContent-ID: <b@x.com>\r\n\r\n" + b"x" * 5000
    part = _part('message/external-body; access-type=URL; URL="https://a.com/"', inner)
    with pytest.raises(InputTooLargeError):
        parse_external_body(part)


def test_reference_validates_its_fields() -> None:
    with pytest.raises(MIMEError, match="timezone-aware"):
        ExternalBody(URL, expiration=datetime(2026, 1, 1))
    with pytest.raises(MIMEError, match="negative"):
        ExternalBody(URL, size=-1)
