"""Location with SIP (draft §4.2): reading the OPTIONS answer, with a fake UA.

The answers are built the way a proxy sends them (RFC 4483 ``message/external-body``,
access-type URL, referencing ``application/pkix-cert``); the real Kamailio is in
``tests/integration/siploc``.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from cryptography import x509

from sipcert.client.fetch import FetchResult
from sipcert.client.ua import AsyncUA, ClientConfig
from sipcert.errors import LocationError, NameMismatchError
from sipcert.proto.aor import AOR, parse_aor
from sipcert.proto.certs import generate_identity
from sipcert.proto.indirection import certificate_reference
from sipcert.proto.mime import MimePart, build_multipart, format_content_type
from sipcert.proto.sip import Response, with_body
from sipcert.sip.locate import SipLocation, fetch_by_sip, locate_by_sip

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
BOB = parse_aor("bob@example.com")
URL = "https://127.0.0.1:8443/search-cgi?sip=bob%40example.com"
URL2 = "https://certs.example.com/search-cgi?email=bob%40example.com"


class FakeUA:
    """Answers every OPTIONS with ``response`` and remembers where they went."""

    def __init__(self, response: Response) -> None:
        self.response = response
        self.sent: list[str] = []

    async def options(self, to: str) -> Response:
        self.sent.append(to)
        return self.response


def ok(body: MimePart | None) -> Response:
    return with_body(Response(200, "OK"), body)


def external(url: str, inner_type: str = "application/pkix-cert", **params: str) -> MimePart:
    """A message/external-body built by hand, so that it can be wrong in any way."""
    content_type = format_content_type(
        "message/external-body", {"access-type": "URL", "URL": url, **params}
    )
    inner = f"Content-Type: {inner_type}\r\nContent-ID: <bob.cert@example.com>\r\n\r\n"
    return MimePart(content_type, inner.encode("ascii"))


def locate(response: Response) -> tuple[SipLocation, FakeUA]:
    ua = FakeUA(response)
    return asyncio.run(locate_by_sip(ua, "bob@example.com", now=lambda: NOW)), ua


def test_good_body_gives_the_reference() -> None:
    location, ua = locate(ok(certificate_reference(URL, content_id="<b1@example.com>")))
    assert ua.sent == ["sip:bob@example.com"]
    assert location.found and location.status == 200
    assert location.urls == (URL,)
    assert location.references[0].content_type == "application/pkix-cert"
    assert location.references[0].content_id == "<b1@example.com>"
    assert location.problems == ()
    assert location.explain() == f"certificates of bob@example.com at {URL}"


def test_kamailio_form_is_accepted() -> None:
    """Byte for byte what contrib/kamailio/kamailio.cfg's route[CERTLOC] sends."""
    body = MimePart(
        f'message/external-body; access-type="URL"; URL="{URL}"',
        b"Content-Type: application/pkix-cert\r\nContent-ID: <bob.cert@example.com>\r\n\r\n",
    )
    location, _ = locate(ok(body))
    assert location.urls == (URL,)
    assert location.references[0].content_id == "<bob.cert@example.com>"


def test_no_body() -> None:
    location, _ = locate(ok(None))
    assert not location.found
    assert location.problems == ("the answer has no body (no content indirection, RFC 4483)",)
    assert location.explain().startswith("no certificate location for bob@example.com by SIP")


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (MimePart("application/sdp", b"v=0\r\n"), "application/sdp is not message/external-body"),
        (external(URL, "text/plain"), "the reference is to text/plain"),
        (external(URL, size="9999999"), "octets"),
    ],
    ids=["sdp", "inner-type", "too-big"],
)
def test_wrong_type_or_form(body: MimePart, problem: str) -> None:
    location, _ = locate(ok(body))
    assert not location.found
    assert len(location.problems) == 1 and problem in location.problems[0]


def test_wrong_access_type() -> None:
    body = MimePart(
        format_content_type("message/external-body", {"access-type": "anon-ftp", "URL": URL}),
        b"Content-Type: application/pkix-cert\r\nContent-ID: <a@b>\r\n\r\n",
    )
    location, _ = locate(ok(body))
    assert not location.found and "is not URL" in location.problems[0]


def test_http_url_is_refused() -> None:
    location, _ = locate(ok(external("http://127.0.0.1:8080/search-cgi?sip=bob%40example.com")))
    assert not location.found
    assert "is not https" in location.problems[0]


def test_url_for_another_aor_is_refused() -> None:
    location, _ = locate(ok(external("https://127.0.0.1/search-cgi?sip=eve%40example.com")))
    assert not location.found
    assert "names eve@example.com, not bob@example.com" in location.problems[0]


def test_expired_reference_is_dropped_and_a_fresh_one_kept() -> None:
    past = format_datetime(NOW - timedelta(seconds=1), usegmt=True)
    future = format_datetime(NOW + timedelta(days=1), usegmt=True)
    location, _ = locate(ok(external(URL, expiration=past)))
    assert not location.found
    assert "expired at 2026-06-01 11:59:59+00:00" in location.problems[0]
    location, _ = locate(ok(external(URL, expiration=future)))
    assert location.urls == (URL,)


def test_several_references_in_multipart_mixed() -> None:
    body = build_multipart(
        "mixed",
        [
            certificate_reference(URL),
            certificate_reference(URL2),
            certificate_reference(URL),  # the same URL twice is fetched once
            external("http://127.0.0.1/search-cgi?sip=bob%40example.com"),
            MimePart("text/plain", b"hello"),
        ],
    )
    location, _ = locate(ok(body))
    assert location.urls == (URL, URL2)
    assert len(location.problems) == 2
    assert location.problems[0].startswith("body part 4: ")
    assert "not https" in location.problems[0]
    assert location.problems[1] == "body part 5: text/plain is not message/external-body (RFC 4483)"


def test_unknown_user_404_is_no_certificate_location() -> None:
    location, _ = locate(Response(404, "Not Found"))
    assert not location.found and location.status == 404
    assert location.explain() == (
        "no certificate location for bob@example.com by SIP (draft §4.2): "
        "OPTIONS answered 404 Not Found: no such user"
    )


def test_other_failure() -> None:
    location, _ = locate(Response(403, "Relaying forbidden"))
    assert not location.found
    assert location.problems == ("OPTIONS answered 403 Relaying forbidden: not a success",)


# -- fetch_by_sip --------------------------------------------------------------------------


def identity(aor: AOR) -> x509.Certificate:
    return generate_identity(aor, now=datetime.now(UTC)).certificate


class FakeClient(AsyncUA):
    """An AsyncUA whose fetch_url answers from a table (the real one is tested elsewhere)."""

    def __init__(self, answers: dict[str, FetchResult | Exception]) -> None:
        super().__init__(ClientConfig(home=Path("/nonexistent/sipcert-home"), cache_ttl=60))
        self.answers = answers
        self.fetched: list[str] = []

    async def fetch_url(self, aor: AOR | str, url: str) -> FetchResult:
        self.fetched.append(url)
        answer = self.answers[url]
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_fetch_by_sip_pools_every_reference() -> None:
    phone, laptop = identity(BOB), identity(BOB)
    answers: dict[str, FetchResult | Exception] = {
        URL: FetchResult(BOB, URL, kept=(phone,), max_age=60),
        URL2: FetchResult(BOB, URL2, kept=(laptop, phone), max_age=30),
    }
    body = build_multipart("mixed", [certificate_reference(URL), certificate_reference(URL2)])

    async def main() -> tuple[SipLocation, FetchResult, list[str]]:
        async with FakeClient(answers) as client:
            location, result = await fetch_by_sip(FakeUA(ok(body)), client, BOB)
            cached = client.cache.get(BOB)
            assert cached is not None and cached.kept == result.kept  # the pooled result
            return location, result, client.fetched

    location, result, fetched = asyncio.run(main())
    assert fetched == [URL, URL2]
    assert location.urls == (URL, URL2)
    assert result.kept == (phone, laptop)
    assert result.max_age == 30 and result.url == URL


def test_fetch_by_sip_without_location_raises() -> None:
    async def main() -> None:
        async with FakeClient({}) as client:
            with pytest.raises(LocationError, match="404 Not Found: no such user"):
                await fetch_by_sip(FakeUA(Response(404, "Not Found")), client, BOB)
            assert client.fetched == []

    asyncio.run(main())


def test_fetch_by_sip_does_not_hide_a_failed_tls_check() -> None:
    answers: dict[str, FetchResult | Exception] = {
        URL: NameMismatchError("example.com", ["example.net"])
    }

    async def main() -> None:
        async with FakeClient(answers) as client:
            with pytest.raises(NameMismatchError):
                await fetch_by_sip(FakeUA(ok(certificate_reference(URL))), client, BOB)

    asyncio.run(main())
