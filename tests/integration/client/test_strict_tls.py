"""The UA against real dnsmasq and a recording TLS stand-in for the Store on 127.0.0.1.

The stand-in (``peers.TLSServer``) records every byte it receives, so the tests can show
that no HTTP byte follows a failed name check, and can present the wrong certificates an
attacker would; the same flows against a real ``sipcert serve`` are in ``tests/integration/e2e``.

Covers draft §4.1 (SRV location, priority/weight failover, ``certificates.<domain>``
fallback) and draft §4.3 (the Store's TLS certificate must name the AOR's domain exactly;
the check ends the connection before any HTTP byte), plus connection pooling per domain.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from sipcert.client import AsyncUA, ClientConfig
from sipcert.errors import (
    LocationError,
    NameMismatchError,
    TransportError,
    UntrustedCertificateError,
)
from sipcert.proto.aor import parse_aor
from sipcert.proto.ca import TestCA
from sipcert.proto.certs import certificate_der, generate_identity, sha256_fingerprint
from tests.integration.client.conftest import DNSFactory
from tests.integration.client.peers import (
    FakeStore,
    TLSServer,
    closed_port,
    server_context,
    srv,
)

pytestmark = pytest.mark.peer("dnsmasq")

NOW = datetime.now(UTC)
BOB = parse_aor("bob@example.com")


@pytest.fixture(scope="module")
def bob_identity_der() -> bytes:
    return certificate_der(generate_identity(BOB, now=NOW).certificate)


@pytest.fixture
def servers() -> Iterator[list[TLSServer]]:
    started: list[TLSServer] = []
    yield started
    for server in started:
        server.close()


def start(
    servers: list[TLSServer],
    ca: TestCA,
    tmp_path: Path,
    names: dict[str, list[str]],
    *,
    default: list[str] | None = None,
    ips: list[str] | None = None,
    store: FakeStore | None = None,
) -> TLSServer:
    """A TLS server with one certificate per SNI name in ``names`` (SAN lists)."""
    contexts = {
        sni: server_context(ca.issue(sans, now=NOW), tmp_path) for sni, sans in names.items()
    }
    fallback = (
        ca.issue(default or [], now=NOW, ip_addresses=ips or []) if (default or ips) else None
    )
    base = server_context(fallback, tmp_path) if fallback else next(iter(contexts.values()))
    server = TLSServer(base, contexts, store)
    servers.append(server)
    return server


def start_bob_store(
    servers: list[TLSServer], ca: TestCA, tmp_path: Path, bob_identity_der: bytes
) -> TLSServer:
    """The stand-in Store of example.com, with a correct certificate, holding Bob's one."""
    store = FakeStore({})
    store.certificates[str(BOB)] = [bob_identity_der]
    return start(servers, ca, tmp_path, {"example.com": ["example.com"]}, store=store)


def run_ua(config: ClientConfig, aor: str, **kwargs: object) -> object:
    async def main() -> object:
        async with AsyncUA(config, **kwargs) as ua:  # type: ignore[arg-type]
            return await ua.fetch(aor)

    return asyncio.run(main())


def dns_for(dns_server: DNSFactory, port: int, domain: str = "example.com") -> str:
    """dnsmasq with one SRV record: ``domain``'s Store is a.example.com (127.0.0.1) at ``port``."""
    return dns_server(
        [srv(domain, "a.example.com", port), "--host-record=a.example.com,127.0.0.1"],
        ["example.com"],
    )


def test_srv_location_and_fetch(
    dns_server: DNSFactory,
    ca: TestCA,
    ca_file: Path,
    tmp_path: Path,
    servers: list[TLSServer],
    bob_identity_der: bytes,
) -> None:
    server = start_bob_store(servers, ca, tmp_path, bob_identity_der)
    dns = dns_for(dns_server, server.port)
    lines: list[str] = []

    async def main() -> None:
        config = ClientConfig(dns=dns, ca_file=ca_file, home=tmp_path / "home")
        async with AsyncUA(config, narrate=lines.append) as ua:
            result = await ua.fetch("sip:bob@example.com")
            assert [sha256_fingerprint(c) for c in result.kept] == [
                sha256_fingerprint(x509.load_der_x509_certificate(bob_identity_der))
            ]
            assert (
                result.url
                == f"https://a.example.com:{server.port}/search-cgi?email=bob%40example.com"
            )

    asyncio.run(main())
    assert [c.sni for c in server.connections] == ["example.com"]
    # The certificates, then the default log check on the same connection (no log: 404).
    assert [r.target for r in server.requests] == [
        "/search-cgi?email=bob%40example.com",
        "/log/vkey",
    ]
    assert any("TLS for example.com verified" in line for line in lines)


@pytest.mark.parametrize(
    ("aor", "sans", "ips"),
    [
        ("bob@example.com", ["example.org"], []),  # another domain
        ("bob@example.com", ["certificates.example.com"], []),  # a sub-domain only
        ("bob@sip.example.com", ["*.example.com"], []),  # a wildcard
        ("bob@example.com", [], ["127.0.0.1"]),  # an IP address only
    ],
    ids=["wrong-domain", "sub-domain", "wildcard", "ip-only"],
)
def test_name_mismatch_sends_no_http(
    dns_server: DNSFactory,
    ca: TestCA,
    ca_file: Path,
    tmp_path: Path,
    servers: list[TLSServer],
    aor: str,
    sans: list[str],
    ips: list[str],
) -> None:
    server = start(servers, ca, tmp_path, {}, default=sans, ips=ips)
    domain = parse_aor(aor).host
    dns = dns_for(dns_server, server.port, domain)
    config = ClientConfig(dns=dns, ca_file=ca_file, home=tmp_path / "home")
    with pytest.raises(NameMismatchError) as caught:
        run_ua(config, aor)
    assert caught.value.expected == domain
    message = str(caught.value)
    assert domain in message
    for name in sans:
        assert name in message
    assert caught.value.exit_code == 5
    assert server.connections, "the client did connect"
    assert server.requests == []
    assert all(bytes(c.received) == b"" for c in server.connections)


def test_untrusted_ca(
    dns_server: DNSFactory, ca_file: Path, tmp_path: Path, servers: list[TLSServer]
) -> None:
    other = TestCA.create(now=NOW, name="not trusted")
    server = start(servers, other, tmp_path, {"example.com": ["example.com"]})
    dns = dns_for(dns_server, server.port)
    config = ClientConfig(dns=dns, ca_file=ca_file, home=tmp_path / "home")
    with pytest.raises(UntrustedCertificateError, match="does not verify") as caught:
        run_ua(config, "bob@example.com")
    assert isinstance(caught.value, TransportError)
    assert server.requests == []


def test_srv_failover_to_next_target(
    dns_server: DNSFactory,
    ca: TestCA,
    ca_file: Path,
    tmp_path: Path,
    servers: list[TLSServer],
    bob_identity_der: bytes,
) -> None:
    server = start_bob_store(servers, ca, tmp_path, bob_identity_der)
    dead = closed_port()
    dns = dns_server(
        [
            srv("example.com", "b.example.com", server.port, priority=20),
            srv("example.com", "a.example.com", dead, priority=10, weight=5),
            "--host-record=a.example.com,127.0.0.1",
            "--host-record=b.example.com,127.0.0.1",
        ],
        ["example.com"],
    )

    async def main() -> None:
        config = ClientConfig(dns=dns, ca_file=ca_file, home=tmp_path / "home")
        async with AsyncUA(config) as ua:
            location = await ua.locate(BOB)
            assert [(t.host, t.port) for t in location.targets] == [
                ("a.example.com", dead),
                ("b.example.com", server.port),
            ]
            result = await ua.fetch(BOB)
            assert len(result.kept) == 1
            assert result.url.startswith(f"https://b.example.com:{server.port}/")
            kinds = [(e.kind, e.target.host) for e in ua.events]
            assert kinds[:2] == [
                ("connect-failed", "a.example.com"),
                ("connected", "b.example.com"),
            ]

    asyncio.run(main())


def test_fallback_to_certificates_host(
    dns_server: DNSFactory,
    ca: TestCA,
    ca_file: Path,
    tmp_path: Path,
    servers: list[TLSServer],
    bob_identity_der: bytes,
) -> None:
    server = start_bob_store(servers, ca, tmp_path, bob_identity_der)
    dns = dns_server(["--host-record=certificates.example.com,127.0.0.1"], ["example.com"])

    async def main() -> None:
        config = ClientConfig(
            dns=dns, ca_file=ca_file, home=tmp_path / "home", fallback_port=server.port
        )
        async with AsyncUA(config) as ua:
            location = await ua.locate(BOB)
            assert not location.from_srv
            assert [(t.host, t.port) for t in location.targets] == [
                ("certificates.example.com", server.port)
            ]
            result = await ua.fetch(BOB)
            assert len(result.kept) == 1

    asyncio.run(main())
    assert [c.sni for c in server.connections] == ["example.com"]


def test_dot_target_means_no_service(dns_server: DNSFactory, tmp_path: Path) -> None:
    dns = dns_server(["--srv-host=_certificates._tcp.example.com"], ["example.com"])
    config = ClientConfig(dns=dns, home=tmp_path / "home")
    with pytest.raises(LocationError, match="no certificate Store"):
        run_ua(config, "bob@example.com")


def test_dns_refusal_and_timeout_are_location_errors(
    dns_server: DNSFactory, tmp_path: Path
) -> None:
    dns = dns_server([], ["example.com"])
    # example.net is not local and dnsmasq has no upstream: it refuses (not "no SRV").
    with pytest.raises(LocationError, match="SERVFAIL or refused"):
        run_ua(ClientConfig(dns=dns, home=tmp_path), "bob@example.net")
    silent = f"127.0.0.1:{closed_port()}"
    with pytest.raises(LocationError, match="timed out"):
        run_ua(ClientConfig(dns=silent, home=tmp_path, timeout=0.5), "bob@example.com")


def test_pooled_connection_never_serves_another_domain(
    dns_server: DNSFactory,
    ca: TestCA,
    ca_file: Path,
    tmp_path: Path,
    servers: list[TLSServer],
) -> None:
    """Two domains whose SRV records name the same host:port get separate connections."""
    store = FakeStore({})
    alice = parse_aor("alice@example.net")
    store.certificates[str(BOB)] = [certificate_der(generate_identity(BOB, now=NOW).certificate)]
    store.certificates[str(alice)] = [
        certificate_der(generate_identity(alice, now=NOW).certificate)
    ]
    server = start(
        servers,
        ca,
        tmp_path,
        {"example.com": ["example.com"], "example.net": ["example.net"]},
        store=store,
    )
    dns = dns_server(
        [
            srv("example.com", "a.example.com", server.port),
            srv("example.net", "a.example.com", server.port),
            "--host-record=a.example.com,127.0.0.1",
        ],
        ["example.com", "example.net"],
    )

    async def main() -> None:
        config = ClientConfig(dns=dns, ca_file=ca_file, home=tmp_path / "home", cache_ttl=0)
        async with AsyncUA(config) as ua:
            for aor in (BOB, alice, BOB, alice):
                result = await ua.fetch(aor)
                assert len(result.kept) == 1
                assert result.kept[0].subject.rfc4514_string() == f"CN={aor}"

    asyncio.run(main())
    assert sorted(c.sni or "" for c in server.connections) == ["example.com", "example.net"]
    for connection in server.connections:
        searches = [r.target for r in connection.requests if not r.target.startswith("/log/")]
        assert {t.split("%40")[1] for t in searches} == {connection.sni}
        # Each connection was reused, for its domain only: two fetches; the default log check
        # asks /log/vkey once: cache_ttl=0 keeps no 404 across connections, but the connection
        # that answered it remembers it for a few seconds (docs/transparency.md).
        assert [r.target for r in connection.requests] == [searches[0], "/log/vkey", searches[0]]


def test_cli_name_mismatch_is_exit_5_one_line(
    dns_server: DNSFactory,
    ca: TestCA,
    ca_file: Path,
    tmp_path: Path,
    servers: list[TLSServer],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from sipcert.cli import main as cli

    server = start(servers, ca, tmp_path, {}, default=["store.example.org"])
    dns = dns_for(dns_server, server.port)
    argv = ["fetch", "bob@example.com", "--dns", dns, "--ca-file", str(ca_file)]
    assert cli.main([*argv, "--home", str(tmp_path / "home")]) == 5
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "store.example.org" in err and "'example.com'" in err
    assert server.requests == []
