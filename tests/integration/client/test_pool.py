"""Connections to one Store: reused in sequence, a small pool for concurrent fetches
(issue 13), against a real TLS server that records every connection and request."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sipcert.client import AsyncUA, ClientConfig
from sipcert.proto.aor import parse_aor
from sipcert.proto.ca import TestCA
from sipcert.proto.certs import certificate_der, generate_identity
from tests.integration.client.peers import FakeStore, TLSServer, server_context

NOW = datetime.now(UTC)
AORS = [parse_aor(f"u{i}@example.com") for i in range(24)]


@pytest.fixture
def store_server(ca: TestCA, tmp_path: Path) -> Iterator[TLSServer]:
    store = FakeStore({})
    for aor in AORS:
        store.certificates[str(aor)] = [
            certificate_der(generate_identity(aor, now=NOW).certificate)
        ]
    context = server_context(ca.issue(["example.com"], now=NOW), tmp_path)
    server = TLSServer(context, {"example.com": context}, store)
    yield server
    server.close()


def _config(server: TLSServer, ca_file: Path, tmp_path: Path) -> ClientConfig:
    return ClientConfig(
        store=f"127.0.0.1:{server.port}",
        ca_file=ca_file,
        home=tmp_path / "home",
        transparency=False,
    )


def test_sequential_fetches_reuse_one_connection(
    store_server: TLSServer, ca_file: Path, tmp_path: Path
) -> None:
    async def main() -> None:
        async with AsyncUA(_config(store_server, ca_file, tmp_path)) as ua:
            for aor in AORS:
                assert len((await ua.fetch(aor)).kept) == 1
            assert len(ua.transport.connections) == 1

    asyncio.run(main())
    assert len(store_server.connections) == 1
    assert len(store_server.connections[0].requests) == len(AORS)


def test_concurrent_fetches_share_a_small_pool(
    store_server: TLSServer, ca_file: Path, tmp_path: Path
) -> None:
    async def main() -> None:
        async with AsyncUA(_config(store_server, ca_file, tmp_path)) as ua:
            per_domain = ua.transport.per_domain
            results = await asyncio.gather(*(ua.fetch(aor) for aor in AORS))
            assert [len(r.kept) for r in results] == [1] * len(AORS)
            assert [str(r.aor) for r in results] == [str(a) for a in AORS]
            assert 1 < len(ua.transport.connections) <= per_domain
            # Sequential use afterwards still goes through the pooled connections.
            for aor in AORS[:4]:
                assert len((await ua.fetch(aor)).kept) == 1

    asyncio.run(main())
    connections = [c for c in store_server.connections if c.handshake_ok]
    assert 1 < len(connections) <= 4
    assert sum(len(c.requests) for c in connections) == len(AORS) + 4
    assert all(c.sni == "example.com" for c in connections)


def test_the_pool_is_bounded_across_domains(ca: TestCA, ca_file: Path, tmp_path: Path) -> None:
    """Past max_connections, the least recently used idle domain's connections close."""
    domains = ["example.com", "example.net", "example.org"]
    store = FakeStore({})
    for domain in domains:
        aor = parse_aor(f"bob@{domain}")
        store.certificates[str(aor)] = [
            certificate_der(generate_identity(aor, now=NOW).certificate)
        ]
    contexts = {d: server_context(ca.issue([d], now=NOW), tmp_path) for d in domains}
    server = TLSServer(contexts["example.com"], contexts, store)
    try:

        async def main() -> None:
            async with AsyncUA(_config(server, ca_file, tmp_path)) as ua:
                ua.transport.max_connections = 2
                for domain in (*domains, "example.com"):
                    assert len((await ua.fetch(f"bob@{domain}")).kept) == 1
                    assert len(ua.transport.connections) <= 2

        asyncio.run(main())
    finally:
        server.close()
    # example.com was closed to make room for example.org, then connected again.
    assert [c.sni for c in server.connections] == [*domains, "example.com"]
