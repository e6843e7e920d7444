"""Our own draft §4.3 name rule, reached over a real TLS connection.

The tests of ``test_strict_tls.py`` pass even with our rule broken, because OpenSSL's
hostname check (kept on, without wildcards or Common Name, as a second line) refuses those
certificates first. Here OpenSSL's hostname check is switched off in the client context,
as the SIP transport does (``make_ssl_context(check_hostname=False)``), so the handshake
completes -- the chain still verifies -- and only
:func:`sipcert.proto.names.check_server_certificate` stands between the wrong certificate
and the first HTTP byte. The stand-in server records every byte it receives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sipcert.client import AsyncUA, ClientConfig
from sipcert.client.tls import make_ssl_context
from sipcert.client.ua import Credentials
from sipcert.errors import NameMismatchError
from sipcert.proto.aor import parse_aor
from sipcert.proto.ca import TestCA
from tests.integration.client.conftest import DNSFactory
from tests.integration.client.peers import FakeStore, TLSServer, server_context, srv

pytestmark = pytest.mark.peer("dnsmasq")

NOW = datetime.now(UTC)


@pytest.fixture
def servers() -> Iterator[list[TLSServer]]:
    started: list[TLSServer] = []
    yield started
    for server in started:
        server.close()


CASES = pytest.mark.parametrize(
    ("aor", "sans", "ips"),
    [
        ("bob@example.com", ["example.org"], []),  # another domain
        ("bob@example.com", ["certificates.example.com"], []),  # the SRV target's sub-domain
        ("bob@sip.example.com", ["*.example.com"], []),  # a wildcard (RFC 6125 would match)
        ("bob@example.com", ["example.com."], []),  # the name with a trailing dot
        ("bob@example.com", [], ["127.0.0.1"]),  # an IP address only
    ],
    ids=["wrong-domain", "sub-domain", "wildcard", "trailing-dot", "ip-only"],
)


def _impostor(
    servers: list[TLSServer], ca: TestCA, tmp_path: Path, sans: list[str], ips: list[str]
) -> TLSServer:
    store = FakeStore({"bob@example.com": "bob-secret", "bob@sip.example.com": "bob-secret"})
    issued = ca.issue(sans, now=NOW, ip_addresses=ips)
    server = TLSServer(server_context(issued, tmp_path), {}, store)
    servers.append(server)
    return server


def _config(dns_server: DNSFactory, server: TLSServer, domain: str, ca_file: Path) -> ClientConfig:
    dns = dns_server(
        [srv(domain, "a.example.com", server.port), "--host-record=a.example.com,127.0.0.1"],
        ["example.com"],
    )
    return ClientConfig(dns=dns, ca_file=ca_file, home=None)


def _assert_refused_after_handshake(server: TLSServer) -> None:
    assert server.connections, "the client did connect"
    # Each connection's server thread ends when the client has closed it: wait for that,
    # so what the server recorded is complete (no race with the client's refusal).
    for thread in list(server._threads):
        thread.join(timeout=10)
        assert not thread.is_alive(), "the client left a connection open"
    # OpenSSL let the handshake through (its hostname check is off here) ...
    assert all(c.handshake_ok for c in server.connections), [
        (c.sni, c.handshake_error) for c in server.connections
    ]
    # ... and our rule closed the connection before a single HTTP byte.
    assert all(bytes(c.received) == b"" for c in server.connections)
    assert server.requests == []


@CASES
def test_our_rule_refuses_what_a_relaxed_openssl_accepts_fetch(
    dns_server: DNSFactory,
    ca: TestCA,
    ca_file: Path,
    tmp_path: Path,
    servers: list[TLSServer],
    aor: str,
    sans: list[str],
    ips: list[str],
) -> None:
    server = _impostor(servers, ca, tmp_path, sans, ips)
    domain = parse_aor(aor).host
    config = _config(dns_server, server, domain, ca_file)
    relaxed = make_ssl_context(ca_file, check_hostname=False)

    async def main() -> None:
        async with AsyncUA(config, ssl_context=relaxed) as ua:
            await ua.fetch(aor)

    with pytest.raises(NameMismatchError) as caught:
        asyncio.run(main())
    assert caught.value.expected == domain
    assert caught.value.presented == sans
    _assert_refused_after_handshake(server)


@CASES
def test_our_rule_refuses_before_the_digest_put(
    dns_server: DNSFactory,
    ca: TestCA,
    ca_file: Path,
    tmp_path: Path,
    servers: list[TLSServer],
    aor: str,
    sans: list[str],
    ips: list[str],
) -> None:
    """Enrollment (draft §5: "the same rules as matching in retrieval"): the impostor must
    not even see the PUT, let alone a Digest answer computed from the SIP secret."""
    server = _impostor(servers, ca, tmp_path, sans, ips)
    domain = parse_aor(aor).host
    config = _config(dns_server, server, domain, ca_file)
    config = ClientConfig(dns=config.dns, ca_file=ca_file, home=tmp_path / "home")
    relaxed = make_ssl_context(ca_file, check_hostname=False)

    async def main() -> None:
        async with AsyncUA(config, ssl_context=relaxed) as ua:
            await ua.enroll(aor, Credentials(password="bob-secret"))

    with pytest.raises(NameMismatchError):
        asyncio.run(main())
    _assert_refused_after_handshake(server)
