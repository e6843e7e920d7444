"""Fixtures for tests against a real Kamailio: its subscriber database and the server itself.

The database is created from Kamailio's own SQLite schema files with these subscribers:

* ``alice@example.com``, ``bob@example.com``, ``alice@example.net`` — plaintext ``password``
  (Kamailio computes HA1 for MD5 or SHA-256; the Store does the same);
* ``carol@example.com`` — ``ha1`` only (MD5(user:realm:password), empty ``password``): MD5 only.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sipcert.client import ClientConfig
from sipcert.proto.ca import TestCA
from tests.conftest import require_program
from tests.integration.kamailio.peers import (
    Kamailio,
    SipcertStore,
    Subscriber,
    create_subscriber_db,
    kamailio,
)

ALICE = Subscriber("alice", "example.com", "alice-Secret-1")
BOB = Subscriber("bob", "example.com", "bob-Secret-2")
ALICE_NET = Subscriber("alice", "example.net", "alice-net-Secret-3")
CAROL_HA1 = Subscriber("carol", "example.com", "carol-Secret-4", ha1_only=True)
SUBSCRIBERS = (ALICE, BOB, ALICE_NET, CAROL_HA1)


@pytest.fixture
def subscriber_db(tmp_path: Path) -> Path:
    """Kamailio's SQLite database (``version`` + ``subscriber``) with :data:`SUBSCRIBERS`."""
    path = tmp_path / "kamailio.sqlite"
    create_subscriber_db(path, SUBSCRIBERS)
    return path


KamailioFactory = Callable[[Sequence[str]], Kamailio]


@pytest.fixture
def start_kamailio(subscriber_db: Path, tmp_path: Path) -> Iterator[KamailioFactory]:
    """Start Kamailio on a free loopback port with the given ``-A`` defines (stopped after)."""
    binary = require_program("kamailio")
    with ExitStack() as stack:

        def start(defines: Sequence[str] = ()) -> Kamailio:
            return stack.enter_context(kamailio(binary, subscriber_db, tmp_path, defines=defines))

        yield start


@pytest.fixture
def kamailio_md5(start_kamailio: KamailioFactory) -> Kamailio:
    """Kamailio with the shipped defaults: Digest MD5, 407 for MESSAGE/INVITE from our users."""
    return start_kamailio(())


@pytest.fixture
def sipp() -> str:
    return require_program("sipp")


# -- the Store, reading the same subscriber table -------------------------------------------------


def sipcert_program() -> str:
    """The ``sipcert`` console script of the running interpreter's environment."""
    beside = Path(sys.executable).with_name("sipcert")
    found = str(beside) if beside.exists() else shutil.which("sipcert")
    if found is None:
        pytest.fail("the sipcert console script is not installed (pip install -e .)")
    return found


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA.create(now=datetime.now(UTC))


@pytest.fixture
def ca_file(ca: TestCA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_bytes(ca.cert_pem)
    return path


@pytest.fixture
def store(ca: TestCA, subscriber_db: Path, tmp_path: Path) -> Iterator[SipcertStore]:
    """``sipcert serve`` for example.com with ``--credentials kamailio+sqlite:////<the DB>``."""
    issued = ca.issue(["example.com"], now=datetime.now(UTC))
    cert, key = tmp_path / "example.com.crt", tmp_path / "example.com.key"
    cert.write_bytes(issued.cert_pem)
    key.write_bytes(issued.key_pem)
    server = SipcertStore(
        sipcert_program(),
        tmp_path,
        domain="example.com",
        tls_cert=cert,
        tls_key=key,
        # sipcert's SQLite URLs follow SQLAlchemy: four slashes for an absolute path.
        credentials=f"kamailio+sqlite:///{subscriber_db}",
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture
def ua_config(store: SipcertStore, ca_file: Path, tmp_path: Path) -> ClientConfig:
    """A UA pointed at the Store by address (``--store``), trusting only the test CA."""
    return ClientConfig(
        store=f"127.0.0.1:{store.port}", ca_file=ca_file, home=tmp_path / "home", cache_ttl=0
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Append the logs of every Kamailio and Store the failing test started to its report."""
    report: pytest.TestReport = yield
    funcargs: dict[str, object] = getattr(item, "funcargs", {})
    tmp = funcargs.get("tmp_path")
    if report.failed and isinstance(tmp, Path):
        for pattern in ("kamailio-*.log", "sipcert-serve-*.log"):
            for log in sorted(tmp.glob(pattern)):
                report.sections.append((f"log {log.name}", log.read_text(errors="replace")))
    return report
