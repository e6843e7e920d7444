"""The Store's request → decision logic (draft §4.3-§5, RFC 4387)."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from sipcert.errors import (
    CertificateParseError,
    ForbiddenError,
    InputError,
    InputTooLargeError,
    NotFoundError,
    UnsupportedMediaTypeError,
)
from sipcert.proto.aor import AOR
from sipcert.proto.certs import (
    Identity,
    cert_hash,
    certificate_der,
    generate_identity,
    sha256_fingerprint,
)
from sipcert.proto.mime import parse_multipart
from sipcert.proto.store import (
    CERT_HASH_LENGTH,
    MAX_QUERY_LENGTH,
    StorePolicy,
    authorize_upload,
    certificates_response,
    check_host,
    error_response,
    error_to_response,
    etag_for,
    parse_cert_hash,
    parse_description,
    parse_query,
    parse_upload,
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
BOB = AOR("bob", "example.com")
# RFC 4387 §2.1: the base64 SHA-1 without its trailing "=": 27 characters.
HASH = base64.b64encode(hashlib.sha1(b"x", usedforsecurity=False).digest()).decode().rstrip("=")
# A certHash using both '+' and '/', the two characters that need care in a URL.
PLUS_SLASH = base64.b64encode(bytes([0xFB, 0xFF] * 10)).decode().rstrip("=")


@pytest.fixture(scope="module")
def bob() -> Identity:
    return generate_identity(BOB, now=NOW)


@pytest.fixture(scope="module")
def bob2() -> Identity:
    return generate_identity(BOB, now=NOW)


# --- parse_query -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "attribute"),
    [
        ("email=bob%40example.com", "email"),  # draft §4.1
        ("sip=bob%40example.com", "sip"),  # draft §8
        ("uri=sip%3Abob%40example.com", "uri"),  # RFC 4387 §3.2
        ("email=bob@EXAMPLE.com", "email"),
        ("email=sip:b%256Fb%40example.com", "email"),  # %25 -> %, then %6F is "o"
    ],
)
def test_query_names_the_aor(query: str, attribute: str) -> None:
    parsed = parse_query(query)
    assert parsed.aor == BOB
    assert parsed.attribute == attribute
    assert parsed.cert_hash is None


def test_query_cert_hash_alone_and_with_aor() -> None:
    assert parse_query(f"certHash={HASH}").cert_hash == HASH
    both = parse_query(f"email=bob%40example.com&certHash={HASH}")
    assert both.aor == BOB
    assert both.cert_hash == HASH


def test_cert_hash_is_the_rfc_4387_form(bob: Identity) -> None:
    """RFC 4387 §2.1: base64 of the SHA-1 without '=', 27 characters; we emit exactly that."""
    digest = hashlib.sha1(certificate_der(bob.certificate), usedforsecurity=False).digest()
    expected = base64.b64encode(digest).decode().rstrip("=")
    assert len(expected) == CERT_HASH_LENGTH == 27
    assert cert_hash(bob.certificate) == expected
    assert parse_cert_hash(expected) == expected


@pytest.mark.parametrize(
    "query",
    [
        f"certHash={PLUS_SLASH}",  # '+' and '/' sent bare: '+' stays '+' in a query
        "certHash=" + PLUS_SLASH.replace("+", "%2B").replace("/", "%2F"),  # curl --data-urlencode
        "certHash=" + PLUS_SLASH.replace("+", "%2b").replace("/", "%2f"),  # lower-case hex
    ],
)
def test_cert_hash_with_plus_and_slash_in_any_escaping(query: str) -> None:
    assert PLUS_SLASH.startswith("+/")
    assert parse_query(query).cert_hash == PLUS_SLASH


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (HASH + "=", "must not end with '='"),  # the padded form: '=' is outside the alphabet
        (HASH[:-1], "27 characters"),
        (HASH + "A", "27 characters"),
        (HASH[:-1] + "-", "27 characters"),  # base64url is another alphabet (RFC 4648 §5)
        (HASH[:-1] + "_", "27 characters"),
        (HASH[:-1] + " ", "27 characters"),
        ("A" * 26 + "B", "canonical"),  # non-zero unused bits: a second spelling of a digest
    ],
)
def test_cert_hash_outside_rfc_4387_is_rejected(value: str, message: str) -> None:
    """RFC 4387 §2.1: "Queries containing any other character MUST be rejected"."""
    with pytest.raises(InputError, match=message) as info:
        parse_cert_hash(value)
    assert info.value.http_status == 400


def test_plus_is_literal_not_space() -> None:
    assert parse_query("email=bob+home%40example.com").aor == AOR("bob+home", "example.com")


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", "missing query"),
        ("email", "has no value"),
        ("email=", "is empty"),
        ("name=bob", "unsupported search attribute"),
        ("email=a%40example.com&email=b%40example.com", "given twice"),
        ("email=a%40example.com&sip=a%40example.com", "not email and sip"),
        ("email=bob%4", "malformed %-escape"),
        ("email=bob%zz%40example.com", "malformed %-escape"),
        ("email=bob%ff%40example.com", "not UTF-8"),
        ("certHash=not*base64", "A-Za-z0-9+/"),
        ("certHash=" + base64.b64encode(b"short").decode().rstrip("="), "27 characters"),
        ("certHash=" + HASH + "%3D", "must not end with '='"),
        ("email=bob", "not user@host"),
    ],
)
def test_query_rejects(query: str, message: str) -> None:
    with pytest.raises(InputError) as info:
        parse_query(query)
    assert message.lower() in str(info.value).lower()
    assert info.value.http_status == 400


def test_query_too_long_is_414() -> None:
    """RFC 9112 §3: a request-target longer than the server parses is 414 (URI Too Long)."""
    with pytest.raises(InputTooLargeError) as info:
        parse_query("email=" + "a" * MAX_QUERY_LENGTH)
    assert info.value.http_status == 414


def test_an_aor_too_long_in_the_query_is_414() -> None:
    """The AOR is part of the request-target (RFC 9112 §3), not content (RFC 9110 §15.5.14)."""
    with pytest.raises(InputTooLargeError) as info:
        parse_query("sip=" + "a" * 600 + "@example.com")
    assert info.value.http_status == 414


def test_a_byte_that_was_not_utf8_on_the_wire_is_400() -> None:
    """Found by fuzz/targets.py (query): aiohttp hands such bytes on as surrogates, and
    percent-decoding them raised UnicodeEncodeError (a 500)."""
    with pytest.raises(InputError, match="not UTF-8"):
        parse_query("sip=alice@ex\udcffample.com")


def test_an_encoded_word_with_a_charset_name_that_is_not_ascii_is_400() -> None:
    """Found by fuzz/targets.py (query): ``email.charset`` raised CharsetError (a 500)."""
    with pytest.raises(InputError, match="encoded-word"):
        parse_description("=?utf-a\udcff\udcffce@example.co8?b?w6lsw6luZQ==?=")


@pytest.mark.parametrize(
    "values",
    [[], ["a", "b"], [""], ["exa mple.com"], ["example.com:x"], ["ex/ample.com"], ["a@b"]],
)
def test_a_bad_host_field_is_400(values: list[str]) -> None:
    """RFC 9112 §3.2: exactly one Host with a valid host[:port] value."""
    with pytest.raises(InputError, match="Host"):
        check_host(values)


@pytest.mark.parametrize("value", ["example.com", "example.com:443", "[::1]:8443", "127.0.0.1"])
def test_a_good_host_field_passes(value: str) -> None:
    check_host([value])


@given(st.text(max_size=300))
def test_query_parser_only_raises_input_errors(text: str) -> None:
    try:
        query = parse_query(text)
    except InputError:
        return
    # Anything accepted asks for something: an AOR (named by its attribute) or a certHash.
    assert (query.aor is None) == (query.attribute is None)
    assert query.aor is not None or query.cert_hash is not None


# --- certificates_response ---------------------------------------------------------------


def test_no_certificates_is_404() -> None:
    response = certificates_response([], [], max_age=60)
    assert response.status == 404
    assert response.body.startswith(b"no certificates")


def test_one_certificate_is_der_pkix_cert(bob: Identity) -> None:
    der = certificate_der(bob.certificate)
    response = certificates_response([der], [sha256_fingerprint(bob.certificate)], max_age=30)
    headers = dict(response.headers)
    assert response.status == 200
    assert headers["Content-Type"] == "application/pkix-cert"
    assert headers["Cache-Control"] == "max-age=30"
    assert headers["ETag"] == etag_for([sha256_fingerprint(bob.certificate)])
    assert response.body == der


def test_several_certificates_are_multipart_mixed(bob: Identity, bob2: Identity) -> None:
    ders = [certificate_der(bob.certificate), certificate_der(bob2.certificate)]
    prints = [sha256_fingerprint(bob.certificate), sha256_fingerprint(bob2.certificate)]
    response = certificates_response(ders, prints, max_age=0)
    content_type = dict(response.headers)["Content-Type"]
    assert content_type.startswith("multipart/mixed; boundary=")
    assert dict(response.headers)["Cache-Control"] == "max-age=0"
    parts = parse_multipart(content_type, response.body).parts
    assert [p.body for p in parts] == ders
    assert all(p.content_type == "application/pkix-cert" for p in parts)


def test_if_none_match_gives_304(bob: Identity) -> None:
    prints = [sha256_fingerprint(bob.certificate)]
    der = [certificate_der(bob.certificate)]
    etag = etag_for(prints)
    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        response = certificates_response(der, prints, max_age=5, if_none_match=header)
        assert response.status == 304
        assert response.body == b""
        assert dict(response.headers)["ETag"] == etag
    assert certificates_response(der, prints, max_age=5, if_none_match='"x"').status == 200


def test_etag_changes_with_content() -> None:
    assert etag_for(["aa"]) != etag_for(["aa", "bb"])
    assert etag_for(["aa", "bb"]) == etag_for(["aa", "bb"])


def test_error_response_is_one_plain_line() -> None:
    response = error_response(400, "bad\r\ninput")
    assert response.status == 400
    assert dict(response.headers)["Content-Type"] == "text/plain; charset=utf-8"
    assert response.body == b"bad  input\n"


def test_error_to_response_uses_the_class_status() -> None:
    assert error_to_response(NotFoundError("nothing")).status == 404
    forbidden = error_to_response(ForbiddenError("no", reason="weak-key"))
    assert forbidden.status == 403
    assert forbidden.body.startswith(b"weak-key: ")
    assert error_to_response(InputTooLargeError("big")).status == 413


# --- uploads -----------------------------------------------------------------------------


def test_upload_der_and_pem(bob: Identity) -> None:
    der = certificate_der(bob.certificate)
    assert parse_upload(der, "application/pkix-cert", max_size=16384) == bob.certificate
    pem = bob.certificate.public_bytes(serialization.Encoding.PEM)
    assert parse_upload(pem, None, max_size=16384) == bob.certificate


def test_upload_limits_and_types(bob: Identity) -> None:
    der = certificate_der(bob.certificate)
    with pytest.raises(InputTooLargeError):
        parse_upload(der, "application/pkix-cert", max_size=100)
    with pytest.raises(UnsupportedMediaTypeError) as info:
        parse_upload(der, "text/html", max_size=16384)
    assert info.value.http_status == 415
    with pytest.raises(CertificateParseError):
        parse_upload(b"\x30\x03\x02\x01", "application/pkix-cert", max_size=16384)


def test_authorize_upload_accepts_own_certificate(bob: Identity) -> None:
    authorize_upload(
        bob.certificate,
        BOB,
        digest_username="bob",
        tls_domain="example.com",
        now=NOW,
        policy=StorePolicy(),
    )


def test_authorize_upload_refuses_other_user(bob: Identity) -> None:
    with pytest.raises(ForbiddenError) as info:
        authorize_upload(
            bob.certificate,
            AOR("alice", "example.com"),
            digest_username="alice",
            tls_domain="example.com",
            now=NOW,
            policy=StorePolicy(),
        )
    assert info.value.reason == "san-user-mismatch"
    with pytest.raises(ForbiddenError) as info:
        authorize_upload(
            bob.certificate,
            BOB,
            digest_username="alice",
            tls_domain="example.com",
            now=NOW,
            policy=StorePolicy(),
        )
    assert info.value.reason == "aor-user-mismatch"


def test_authorize_upload_applies_policy_lifetime(bob: Identity) -> None:
    with pytest.raises(ForbiddenError) as info:
        authorize_upload(
            bob.certificate,
            BOB,
            digest_username="bob",
            tls_domain="example.com",
            now=NOW,
            policy=StorePolicy(max_lifetime=timedelta(days=1)),
        )
    assert info.value.reason == "lifetime-too-long"


def test_policy_validates_itself() -> None:
    with pytest.raises(ValueError, match="negative"):
        StorePolicy(max_age=-1)


def test_default_ua_certificate_fits_a_store_allowing_exactly_its_validity(bob: Identity) -> None:
    """The clock-skew back-dating is inside the 30 days, not added to them."""
    authorize_upload(
        bob.certificate,
        BOB,
        digest_username="bob",
        tls_domain="example.com",
        now=NOW,
        policy=StorePolicy(max_lifetime=timedelta(days=30)),
    )
    with pytest.raises(ForbiddenError, match="lifetime 30 days is longer than the allowed 29 days"):
        authorize_upload(
            bob.certificate,
            BOB,
            digest_username="bob",
            tls_domain="example.com",
            now=NOW,
            policy=StorePolicy(max_lifetime=timedelta(days=29)),
        )
