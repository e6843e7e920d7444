"""Retrieval from a Store URL learnt by SIP location (draft §4.2) under the HTTP rules (§4.3).

:func:`location_from_url` turns the URL into one target while the TLS name stays the AOR's
domain, and refuses URLs that do not name the AOR; :meth:`AsyncUA.fetch_url` runs the same
strict connection as :meth:`AsyncUA.fetch`. The network is a fake httpcore backend, so the
tests see every connect, the SNI name and every byte written.
"""

from __future__ import annotations

import asyncio
import ssl
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from sipcert.client.locate import Location, Target, location_from_url
from sipcert.client.tls import RoutedBackend, StrictTransport, make_ssl_context
from sipcert.client.ua import UA, AsyncUA, ClientConfig
from sipcert.errors import LocationError, NameMismatchError
from sipcert.proto.aor import parse_aor
from sipcert.proto.ca import TestCA
from sipcert.proto.certs import DiscardReason, certificate_der, generate_identity

NOW = datetime.now(UTC)
CA = TestCA.create(now=NOW)
BOB = parse_aor("bob@example.com")
BOB_CERT = generate_identity(BOB, now=NOW).certificate
ALICE_CERT = generate_identity(parse_aor("alice@example.com"), now=NOW).certificate
URL = "https://127.0.0.1:8443/search-cgi?sip=bob%40example.com"


def tls_der(*names: str) -> bytes:
    return CA.issue(list(names), now=NOW).certificate.public_bytes(serialization.Encoding.DER)


# -- location_from_url ------------------------------------------------------------------------


def test_url_gives_one_target_and_keeps_the_aor_domain_for_tls() -> None:
    location = location_from_url(BOB, URL)
    assert location == Location(BOB, (Target("127.0.0.1", 8443),), False, "sip", location.steps)
    assert location.domain == "example.com"  # what TLS must prove, not 127.0.0.1
    assert location.url == URL
    assert any("must name example.com" in step for step in location.steps)


def test_url_forms_email_default_port_ipv6_and_case() -> None:
    email = location_from_url(BOB, "https://Certs.EXAMPLE.com/search-cgi?email=bob%40example.com")
    assert email.targets == (Target("certs.example.com", 443),)
    assert email.attribute == "email"
    assert email.url == "https://certs.example.com/search-cgi?email=bob%40example.com"
    v6 = location_from_url(BOB, "https://[::1]:7000/search-cgi?sip=bob%40Example.COM")
    assert v6.targets == (Target("::1", 7000),)
    assert v6.url == "https://[::1]:7000/search-cgi?sip=bob%40example.com"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:8080/search-cgi?sip=bob%40example.com", "not https"),
        ("https://eve@127.0.0.1/search-cgi?sip=bob%40example.com", "user information"),
        ("https://127.0.0.1/search-cgi?sip=bob%40example.com#x", "fragment"),
        ("https://127.0.0.1:0/search-cgi?sip=bob%40example.com", "port 0"),
        ("https:///search-cgi?sip=bob%40example.com", "no host"),
        ("https://127.0.0.1/certs?sip=bob%40example.com", "path must be /search-cgi"),
        ("https://127.0.0.1/search-cgi", "missing query"),
        ("https://127.0.0.1/search-cgi?sip=bob%40example.com&x=1", "unsupported"),
        (
            "https://127.0.0.1/search-cgi?sip=bob%40example.com&certHash=" + "A" * 27,
            "nothing else",
        ),
        ("https://127.0.0.1/search-cgi?uri=sip%3Abob%40example.com", "nothing else"),
        ("https://127.0.0.1/search-cgi?sip=alice%40example.com", "names alice@example.com"),
        ("https://127.0.0.1/search-cgi?sip=bob%40example.net", "names bob@example.net"),
        ("https://127.0.0.1/search-cgi?sip=bob%40example.com.evil.org", "not bob@example.com"),
        ("https://127.0.0.1/search-cgi?sip=bob example.com", "invalid characters"),
        ("https://127.0.0.1:99999/search-cgi?sip=bob%40example.com", "does not parse"),
    ],
)
def test_url_that_does_not_name_exactly_this_aor_is_refused(url: str, message: str) -> None:
    with pytest.raises(LocationError, match=message):
        location_from_url(BOB, url)


# -- AsyncUA.fetch_url over a fake network ----------------------------------------------------


class FakeSSLObject:
    def __init__(self, der: bytes) -> None:
        self.der = der

    def getpeercert(self, binary_form: bool = False) -> bytes:
        return self.der

    def version(self) -> str:
        return "TLSv1.3"

    def selected_alpn_protocol(self) -> str | None:
        return None


class FakeStream(httpcore.AsyncNetworkStream):
    """Presents ``der`` as the TLS certificate and answers one HTTP request with ``answer``."""

    def __init__(self, der: bytes, answer: bytes, log: list[str], written: bytearray) -> None:
        self.der = der
        self.answer = answer
        self.log = log
        self.written = written

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        chunk, self.answer = self.answer[:max_bytes], self.answer[max_bytes:]
        return chunk

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.written += buffer

    async def aclose(self) -> None:
        self.log.append("close")

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.log.append(f"tls {server_hostname}")
        return self

    def get_extra_info(self, info: str) -> Any:
        return FakeSSLObject(self.der) if info == "ssl_object" else None


class FakeNetwork(httpcore.AsyncNetworkBackend):
    def __init__(self, der: bytes, answer: bytes) -> None:
        self.der = der
        self.answer = answer
        self.log: list[str] = []
        self.written = bytearray()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        self.log.append(f"connect {host}:{port}")
        return FakeStream(self.der, self.answer, self.log, self.written)


class NoDNS:
    """A resolver that fails the test if location by DNS is attempted."""

    async def resolve(self, qname: str, rdtype: str, *, search: bool | None = None) -> Any:
        raise AssertionError(f"unexpected DNS query {rdtype} {qname}")


def answer_with(*certificates: bytes) -> bytes:
    (body,) = certificates
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: application/pkix-cert\r\n"
        f"Content-Length: {len(body)}\r\nCache-Control: max-age=60\r\n\r\n"
    )
    return head.encode("ascii") + body


async def ua_over(network: FakeNetwork, home: Path, *, dns: bool = False) -> AsyncUA:
    """An AsyncUA whose strict transport runs over ``network`` (everything else as shipped).

    Without ``dns`` any DNS query fails the test; with it, host names go to the system
    resolver (here: straight to the fake network, by name).
    """
    ua = AsyncUA(ClientConfig(home=home, cache_ttl=60), resolver=None if dns else NoDNS())
    if dns:

        async def by_name(host: str) -> list[str]:
            return [host]

        ua.locator.addresses = by_name  # type: ignore[method-assign]
    await ua.http.aclose()
    ua.backend = RoutedBackend(ua.locator, inner=network, on_event=ua.events.append)
    ua.transport = StrictTransport(make_ssl_context(), ua.backend)
    ua.http = httpx.AsyncClient(transport=ua.transport)
    return ua


def test_fetch_url_connects_to_the_url_but_proves_the_aor_domain(tmp_path: Path) -> None:
    network = FakeNetwork(tls_der("example.com"), answer_with(certificate_der(BOB_CERT)))

    async def main() -> None:
        ua = await ua_over(network, tmp_path)
        async with ua:
            result = await ua.fetch_url("bob@example.com", URL)
            assert result.kept == (BOB_CERT,)
            assert result.url == URL
            assert result.target == Target("127.0.0.1", 8443)
            assert result.max_age == 60
            cached = ua.cache.get(BOB)
            assert cached is not None and cached.kept == (BOB_CERT,)
            # The fake answers one request per connection: the /log/vkey request after
            # the GET finds it closed and is sent once more on a new, verified one.
            assert [e.kind for e in ua.events] == ["connected", "tls-verified"] * 2

    asyncio.run(main())
    assert network.log[:2] == ["connect 127.0.0.1:8443", "tls example.com"]
    request = bytes(network.written).decode("ascii")
    assert request.startswith("GET /search-cgi?sip=bob%40example.com HTTP/1.1\r\n")
    assert "\r\nHost: example.com\r\n" in request


def test_fetch_url_refuses_a_store_naming_the_url_host_only(tmp_path: Path) -> None:
    """The URL's host is where to connect, never what to trust (draft §4.3)."""
    network = FakeNetwork(tls_der("store.example.org"), answer_with(certificate_der(BOB_CERT)))
    url = "https://store.example.org:8443/search-cgi?sip=bob%40example.com"

    async def main() -> None:
        ua = await ua_over(network, tmp_path, dns=True)
        async with ua:
            with pytest.raises(NameMismatchError, match=r"store\.example\.org.*'example\.com'"):
                await ua.fetch_url(BOB, url)
            assert ua.cache.get(BOB) is None
            assert [e.kind for e in ua.events] == ["connected", "tls-refused"]

    asyncio.run(main())
    assert network.log == ["connect store.example.org:8443", "tls example.com", "close"]
    assert network.written == b""  # not one HTTP byte


def test_fetch_url_validates_what_it_gets(tmp_path: Path) -> None:
    network = FakeNetwork(tls_der("example.com"), answer_with(certificate_der(ALICE_CERT)))

    async def main() -> None:
        ua = await ua_over(network, tmp_path)
        async with ua:
            result = await ua.fetch_url(BOB, URL)
            assert result.kept == ()
            assert [d.reason for d in result.discarded] == [DiscardReason.SAN_MISMATCH]

    asyncio.run(main())


def test_fetch_url_refuses_another_aor_before_connecting(tmp_path: Path) -> None:
    network = FakeNetwork(tls_der("example.com"), b"")

    async def main() -> None:
        ua = await ua_over(network, tmp_path)
        async with ua:
            with pytest.raises(LocationError, match=r"names alice@example\.com, not bob"):
                await ua.fetch_url(BOB, "https://127.0.0.1:8443/search-cgi?sip=alice%40example.com")

    asyncio.run(main())
    assert network.log == []


def test_sync_facade_has_fetch_url(tmp_path: Path) -> None:
    with (
        UA(ClientConfig(home=tmp_path), resolver=NoDNS()) as ua,
        pytest.raises(LocationError, match="not https"),
    ):
        ua.fetch_url(BOB, "http://127.0.0.1/search-cgi?sip=bob%40example.com")
