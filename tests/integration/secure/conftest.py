"""Fixtures for the S/MIME end-to-end tests: Kamailio for two domains, two Stores, dnsmasq.

The draft's figure (§1) with real programs:

* one Kamailio (``contrib/kamailio/kamailio.cfg``, aliases example.com and example.net) is
  registrar and proxy for both domains -- Proxy A and Proxy B of the figure in one process;
* two ``sipcert serve`` -- Store A for example.com, Store B for example.net -- each reading
  Kamailio's ``subscriber`` table (``kamailio+sqlite:///``), so one password registers and
  enrolls (draft §5, step 0);
* dnsmasq answers ``_certificates._tcp.<domain>`` SRV and the targets' A records, so each UA
  locates BOTH Stores by DNS (draft §4.1), as step 1 and step 5 need.

The Kamailio fixtures are imported from ``tests/integration/kamailio``; only the subscriber
table is replaced (Bob lives at example.net here), which ``start_kamailio`` picks up by name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Generator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import pytest

from sipcert.client import ClientConfig
from sipcert.proto.ca import TestCA
from tests.integration.client.conftest import DNSFactory, dns_server
from tests.integration.client.peers import srv
from tests.integration.kamailio.conftest import (
    ALICE,
    KamailioFactory,
    ca,
    ca_file,
    sipcert_program,
    start_kamailio,
)
from tests.integration.kamailio.peers import SipcertStore, Subscriber, create_subscriber_db

__all__ = [
    "ALICE",
    "BOB",
    "DOMAINS",
    "DNSFactory",
    "KamailioFactory",
    "Network",
    "ca",
    "ca_file",
    "dns_server",
    "network",
    "run",
    "sipcert_program",
    "start_kamailio",
    "stores",
    "subscriber_db",
]

T = TypeVar("T")
BOB = Subscriber("bob", "example.net", "bob-net-Secret-5")
DOMAINS = ("example.com", "example.net")


def run(coro: Awaitable[T], timeout: float = 120.0) -> T:
    """``asyncio.run`` with an overall bound, so a hung peer fails the test instead."""

    async def main() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(main())


@pytest.fixture
def subscriber_db(tmp_path: Path) -> Path:
    """Kamailio's ``subscriber`` table for this figure: alice@example.com, bob@example.net."""
    path = tmp_path / "kamailio.sqlite"
    create_subscriber_db(path, (ALICE, BOB))
    return path


@pytest.fixture
def stores(ca: TestCA, subscriber_db: Path, tmp_path: Path) -> Iterator[dict[str, SipcertStore]]:
    """Store A (example.com) and Store B (example.net), each with its own database."""
    started: dict[str, SipcertStore] = {}
    try:
        for domain in DOMAINS:
            workdir = tmp_path / f"store-{domain}"
            workdir.mkdir()
            issued = ca.issue([domain], now=datetime.now(UTC))
            cert, key = workdir / "tls.crt", workdir / "tls.key"
            cert.write_bytes(issued.cert_pem)
            key.write_bytes(issued.key_pem)
            started[domain] = SipcertStore(
                sipcert_program(),
                workdir,
                domain=domain,
                tls_cert=cert,
                tls_key=key,
                credentials=f"kamailio+sqlite:///{subscriber_db}",
            )
        for server in started.values():
            server.wait_ready()
        yield started
    finally:
        for server in started.values():
            server.stop()


@dataclass(frozen=True)
class Network:
    """Where things are: the DNS server every UA asks and the CA that signed the Stores."""

    dns: str
    ca_file: Path
    stores: dict[str, SipcertStore]

    def config(self, home: Path, *, cache_ttl: float = 0.0) -> ClientConfig:
        """A UA's client settings: locate by DNS (both domains), trust only the test CA."""
        return ClientConfig(dns=self.dns, ca_file=self.ca_file, home=home, cache_ttl=cache_ttl)


@pytest.fixture
def network(dns_server: DNSFactory, stores: dict[str, SipcertStore], ca_file: Path) -> Network:
    """dnsmasq with SRV records for both Stores (draft §4.1): ``certs.<domain>`` -> 127.0.0.1."""
    records: list[str] = []
    for domain, server in stores.items():
        records.append(srv(domain, f"certs.{domain}", server.port))
        records.append(f"--host-record=certs.{domain},127.0.0.1")
    return Network(dns_server(records, DOMAINS), ca_file, stores)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Append the logs of Kamailio and both Stores to a failing test's report."""
    report: pytest.TestReport = yield
    funcargs: dict[str, object] = getattr(item, "funcargs", {})
    tmp = funcargs.get("tmp_path")
    if report.failed and isinstance(tmp, Path):
        for pattern in ("kamailio-*.log", "sipcert-serve-*.log"):
            for log in sorted(tmp.rglob(pattern)):
                report.sections.append((f"log {log.name}", log.read_text(errors="replace")))
    return report
