"""The strict connection (draft §4.3) without a network: fake httpcore streams and backends."""

from __future__ import annotations

import asyncio
import ssl
from datetime import UTC, datetime
from typing import Any

import httpcore
import httpx
import pytest

from sipcert.client.locate import Locator, Target
from sipcert.client.tls import RoutedBackend, StrictTransport, make_ssl_context
from sipcert.errors import ConfigError, NameMismatchError, TransportError
from sipcert.proto.ca import TestCA

NOW = datetime.now(UTC)
CA = TestCA.create(now=NOW)


class FakeSSLObject:
    def __init__(self, der: bytes) -> None:
        self.der = der

    def getpeercert(self, binary_form: bool = False) -> bytes:
        return self.der

    def version(self) -> str:
        return "TLSv1.3"


class FakeStream(httpcore.AsyncNetworkStream):
    def __init__(self, der: bytes, log: list[str]) -> None:
        self.der = der
        self.log = log

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return b""

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.log.append("write")

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


class FakeBackend(httpcore.AsyncNetworkBackend):
    """Refuses every port but ``open_port``; each stream presents ``der``."""

    def __init__(self, der: bytes, open_port: int) -> None:
        self.der = der
        self.open_port = open_port
        self.log: list[str] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        self.log.append(f"connect {host}:{port}")
        if port != self.open_port:
            raise httpcore.ConnectError("refused")
        return FakeStream(self.der, self.log)


def der_for(*names: str) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return CA.issue(list(names), now=NOW).certificate.public_bytes(serialization.Encoding.DER)


class NamesLocator(Locator):
    """Each target's "address" is its name, so the fake backend logs names."""

    async def addresses(self, host: str) -> list[str]:
        return [host]


def backend_for(der: bytes, open_port: int) -> tuple[RoutedBackend, FakeBackend]:
    inner = FakeBackend(der, open_port)
    routed = RoutedBackend(NamesLocator(object()), inner=inner)  # type: ignore[arg-type]
    routed.set_route("example.com", [Target("a.example.com", 1), Target("b.example.com", 2)])
    return routed, inner


def test_client_context_is_strict() -> None:
    ctx = make_ssl_context()
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.hostname_checks_common_name is False
    assert ctx._host_flags & ssl._ssl.HOSTFLAG_NO_WILDCARDS  # type: ignore[attr-defined]
    with pytest.raises(ConfigError):
        make_ssl_context("/nonexistent/ca.pem")


def test_failover_then_exact_check_passes_before_any_write() -> None:
    routed, inner = backend_for(der_for("example.com"), open_port=2)

    async def main() -> None:
        stream = await routed.connect_tcp("example.com", 443)
        await stream.start_tls(make_ssl_context(), "example.com")

    asyncio.run(main())
    assert inner.log == ["connect a.example.com:1", "connect b.example.com:2", "tls example.com"]


def test_explicit_check_closes_without_writing() -> None:
    """Even if OpenSSL accepted it, a certificate not naming the AOR domain is refused."""
    routed, inner = backend_for(der_for("certificates.example.com"), open_port=1)

    async def main() -> None:
        stream = await routed.connect_tcp("example.com", 443)
        with pytest.raises(NameMismatchError, match=r"certificates\.example\.com.*'example\.com'"):
            await stream.start_tls(make_ssl_context(), "example.com")

    asyncio.run(main())
    assert inner.log == ["connect a.example.com:1", "tls example.com", "close"]
    assert "write" not in inner.log


def test_unrouted_domain_and_all_targets_down() -> None:
    routed, _ = backend_for(der_for("example.com"), open_port=99)

    async def main() -> None:
        with pytest.raises(TransportError, match=r"no located Store for example\.org"):
            await routed.connect_tcp("example.org", 443)
        with pytest.raises(TransportError, match=r"a\.example\.com:1.*b\.example\.com:2"):
            await routed.connect_tcp("example.com", 443)

    asyncio.run(main())


def test_sni_other_than_the_route_domain_is_refused() -> None:
    routed, _ = backend_for(der_for("example.com"), open_port=1)

    async def main() -> None:
        stream = await routed.connect_tcp("example.com", 443)
        with pytest.raises(TransportError, match="not the AOR domain"):
            await stream.start_tls(make_ssl_context(), "a.example.com")

    asyncio.run(main())


def test_transport_is_https_only() -> None:
    routed, _ = backend_for(der_for("example.com"), open_port=1)

    async def main() -> None:
        async with httpx.AsyncClient(
            transport=StrictTransport(make_ssl_context(), routed)
        ) as client:
            with pytest.raises(TransportError, match="HTTPS"):
                await client.get("http://example.com/search-cgi?email=bob%40example.com")

    asyncio.run(main())


def test_no_byte_is_written_before_the_tls_check_passed() -> None:
    """draft §4.3: nothing of HTTP reaches the Store before its certificate is checked --
    not on the plain TCP stream, and not on it after a refused certificate either."""
    routed, inner = backend_for(der_for("certificates.example.com"), open_port=1)

    async def main() -> None:
        stream = await routed.connect_tcp("example.com", 443)
        with pytest.raises(TransportError, match="before the TLS check"):
            await stream.write(b"GET /search-cgi?email=bob%40example.com HTTP/1.1\r\n\r\n")
        with pytest.raises(NameMismatchError):
            await stream.start_tls(make_ssl_context(), "example.com")
        with pytest.raises(TransportError, match="before the TLS check"):
            await stream.write(b"GET / HTTP/1.1\r\n\r\n")

    asyncio.run(main())
    assert "write" not in inner.log
    assert inner.log == ["connect a.example.com:1", "tls example.com", "close"]


def test_bytes_flow_only_on_the_stream_returned_by_a_passed_check() -> None:
    routed, inner = backend_for(der_for("example.com"), open_port=1)

    async def main() -> None:
        stream = await routed.connect_tcp("example.com", 443)
        verified = await stream.start_tls(make_ssl_context(), "example.com")
        assert verified is not stream
        await verified.write(b"GET / HTTP/1.1\r\n\r\n")
        with pytest.raises(TransportError, match="before the TLS check"):
            await stream.write(b"x")  # the unchecked TCP stream stays closed to writes

    asyncio.run(main())
    assert inner.log == ["connect a.example.com:1", "tls example.com", "write"]
