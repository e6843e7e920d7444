"""Fixtures for the client's integration tests: a test CA and dnsmasq (a real DNS server)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sipcert.proto.ca import TestCA
from tests.conftest import require_program
from tests.integration.client.peers import dnsmasq


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA.create(now=datetime.now(UTC))


@pytest.fixture
def ca_file(ca: TestCA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_bytes(ca.cert_pem)
    return path


DNSFactory = Callable[[Sequence[str], Sequence[str]], str]


@pytest.fixture
def dns_server() -> Iterator[DNSFactory]:
    """Start dnsmasq with the given records and local domains; returns ``127.0.0.1:PORT``."""
    binary = require_program("dnsmasq")
    with ExitStack() as stack:

        def start(records: Sequence[str], domains: Sequence[str] = ("example.com",)) -> str:
            return stack.enter_context(dnsmasq(binary, records, domains))

        yield start
