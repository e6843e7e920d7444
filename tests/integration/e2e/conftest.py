"""Fixtures for the UA end-to-end tests: real ``sipcert serve`` Stores and a real dnsmasq.

The Stores are the ones of ``tests/integration/store`` (:class:`StoreProcess`, users in
:data:`USERS`, a test CA) and dnsmasq is the one of ``tests/integration/client``; this module
adds only what the UA's end-to-end view needs:

- :class:`AccessLog` reads the Store's access log (one line per HTTP request), so tests can
  count GETs (the cache) and prove that no request at all reached the Store (TLS refusals).
  :meth:`AccessLog.settle` first makes a sentinel request and waits for its line, so every
  earlier request is known to be logged before anything is counted.
- :class:`MisconfiguredStore` is a real ``sipcert serve`` presenting TLS certificates that do
  not name the domain they serve (another domain, a sub-domain, a wildcard, an IP address).
  ``sipcert serve`` refuses to start with such a certificate (``load_domain_context`` checks
  its own names with the draft §4.3 rule), so this process runs the same ``sipcert`` entry
  point with only that start-up check switched off; everything else is the real Store.
- :func:`sipcert` runs the installed CLI as a subprocess, the password on standard input.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import count
from pathlib import Path
from urllib.parse import quote

import pytest

from sipcert.proto.ca import TestCA
from sipcert.server.credentials import FileCredentials
from tests.integration.client.conftest import DNSFactory, dns_server
from tests.integration.client.peers import srv
from tests.integration.store.conftest import (
    SIPCERT,
    USERS,
    StoreFiles,
    StoreProcess,
    make_store_files,
    store,
    store_files,
)

__all__ = [
    "BAD_TLS",
    "EXTRA_USERS",
    "UNTRUSTED_DOMAIN",
    "AccessLog",
    "DNSFactory",
    "LogLine",
    "MisconfiguredStore",
    "dns_server",
    "password",
    "sipcert",
    "srv",
    "store",
    "store_files",
]

#: Users added to the shared Store's users file for these tests (it sees them without restart).
EXTRA_USERS = {"frank@example.com": "frank-secret", "grace@example.com": "grace-secret"}

#: What the misconfigured Store presents per served domain: (dNSNames, IP addresses).
#: example.com keeps its correct certificate (readiness probe and sentinel requests).
BAD_TLS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "example.net": (("example.com",), ()),  # another domain's certificate
    "example.org": (("certificates.example.org",), ()),  # the SRV target's name, a sub-domain
    "sip.example.com": (("*.example.com",), ()),  # a wildcard that would cover it (RFC 6125)
    "ip.example.org": ((), ("127.0.0.1",)),  # an IP address only
}

#: The untrusted Store serves this domain with a certificate from a CA the UA does not trust.
UNTRUSTED_DOMAIN = "example.net"

CLI_TIMEOUT = 60.0


def password(aor: str) -> str:
    return {**USERS, **EXTRA_USERS}[aor]


def sipcert(*args: str, secret: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed ``sipcert`` CLI; ``secret`` is written to its standard input."""
    return subprocess.run(
        [SIPCERT, *args],
        input=f"{secret}\n" if secret is not None else "",
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


# -- the Store's access log -------------------------------------------------------------------

_ACCESS = re.compile(
    r' sipcert\.access: \S+ "(?P<method>[A-Z]+) (?P<target>\S+) HTTP/[\d.]+" (?P<status>\d{3}) '
)


@dataclasses.dataclass(frozen=True)
class LogLine:
    method: str
    target: str
    status: int


class AccessLog:
    """The requests a :class:`StoreProcess` logged since :meth:`mark` (access_log = true)."""

    _sentinels = count(1)

    def __init__(self, store: StoreProcess) -> None:
        self.store = store
        self._offset = 0
        self.mark()

    def mark(self) -> None:
        """Count from here on."""
        self.settle()
        self._offset = len(self._text())

    def _text(self) -> str:
        assert self.store.log_path is not None
        return self.store.log_path.read_bytes().decode("utf-8", "replace")

    def _all(self) -> list[LogLine]:
        lines = []
        for match in _ACCESS.finditer(self._text()[self._offset :]):
            lines.append(LogLine(match["method"], match["target"], int(match["status"])))
        return lines

    def settle(self, timeout: float = 10.0) -> None:
        """Make a sentinel GET and wait until the Store logged it (and so all before it)."""
        target = f"/search-cgi?email={quote(f'sentinel-{next(self._sentinels)}@example.com')}"
        with self.store.client("example.com") as client:
            assert client.get(self.store.url("example.com", target)).status_code == 404
        deadline = time.monotonic() + timeout
        while not any(line.target == target for line in self._all()):
            assert time.monotonic() < deadline, f"the Store never logged {target}"
            time.sleep(0.02)

    def requests(self, aor: str | None = None) -> list[LogLine]:
        """Requests since :meth:`mark` (sentinels excluded), optionally only ``aor``'s."""
        self.settle()
        found = [line for line in self._all() if "sentinel-" not in line.target]
        if aor is not None:
            needle = "=" + quote(aor, safe="")
            found = [line for line in found if needle in line.target]
        return found

    def gets(self, aor: str) -> int:
        return sum(1 for line in self.requests(aor) if line.method == "GET")


# -- Stores -------------------------------------------------------------------------------------

_LAUNCHER = """\
import sys
import sipcert.server.tls
# Only the start-up check of the Store's own certificate names is switched off (see conftest).
sipcert.server.tls.check_server_certificate = lambda certificate, domain: None
from sipcert.cli.main import entry
sys.exit(entry())
"""


@dataclasses.dataclass
class MisconfiguredStore(StoreProcess):
    """``sipcert serve`` that serves TLS certificates whatever names they hold."""

    def command(self) -> list[str]:
        return [sys.executable, "-c", _LAUNCHER, *super().command()[1:]]


def _write(issued_pem: bytes, key_pem: bytes, root: Path, name: str) -> tuple[Path, Path]:
    cert, key = root / f"{name}.pem", root / f"{name}.key"
    cert.write_bytes(issued_pem)
    key.write_bytes(key_pem)
    return cert, key


def _start(process: StoreProcess) -> Iterator[StoreProcess]:
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def real_store(store: StoreProcess, store_files: StoreFiles) -> StoreProcess:
    """The shared real Store (example.com, example.net), with :data:`EXTRA_USERS` added."""
    users = FileCredentials(store_files.users_file)
    for aor, secret in EXTRA_USERS.items():
        users.add(aor, secret)
    return store


@pytest.fixture(scope="module")
def misconfigured_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreProcess]:
    """A Store presenting, for each domain of :data:`BAD_TLS`, a certificate not naming it."""
    files = make_store_files(tmp_path_factory.mktemp("misconfigured"))
    now = datetime.now(UTC)
    tls = {"example.com": files.tls["example.com"]}
    for number, (domain, (names, addresses)) in enumerate(BAD_TLS.items()):
        issued = files.ca.issue(names, ip_addresses=addresses, now=now, days=30)
        tls[domain] = _write(issued.cert_pem, issued.key_pem, files.root, f"bad-{number}")
    yield from _start(MisconfiguredStore(dataclasses.replace(files, tls=tls)))


@pytest.fixture(scope="module")
def untrusted_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreProcess]:
    """A real, unmodified Store whose :data:`UNTRUSTED_DOMAIN` certificate is from another CA.

    The name is right; only the chain does not verify against the UA's ``--ca-file``.
    """
    files = make_store_files(tmp_path_factory.mktemp("untrusted"))
    now = datetime.now(UTC)
    other = TestCA.create(now=now, name="a CA the UA does not trust")
    issued = other.issue([UNTRUSTED_DOMAIN], now=now, days=30)
    tls = {
        "example.com": files.tls["example.com"],
        UNTRUSTED_DOMAIN: _write(issued.cert_pem, issued.key_pem, files.root, "untrusted"),
    }
    yield from _start(StoreProcess(dataclasses.replace(files, tls=tls)))
