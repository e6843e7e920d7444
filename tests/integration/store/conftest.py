"""A real ``sipcert serve`` process for example.com and example.net, and clients to drive it.

:class:`StoreProcess` runs the installed ``sipcert`` command with certificates from a
:class:`~sipcert.proto.ca.TestCA` written to files, an SQLite database, a users file and its
own data folder, on a free loopback port; it waits until a TLS handshake with SNI succeeds
and kills the process afterwards. Clients reach it as the client library does: the URL's host
is the AOR domain (SNI and Host header), the connection goes to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from sipcert.proto.ca import TestCA
from sipcert.server.credentials import FileCredentials

SIPCERT = str(Path(sys.executable).with_name("sipcert"))
DOMAINS = ("example.com", "example.net")
#: Users of the users file: AOR -> password.
USERS = {
    "alice@example.com": "alice-secret",
    "bob@example.com": "bob-secret",
    "dave@example.com": "dave-secret",
    "erin@example.com": "erin-secret",
    "carol@example.net": "carol-secret",
    "hash@example.com": "hash-secret",  # the RFC 4387 certHash spellings test
    "label@example.com": "label-secret",  # edge mode: a label nginx's map has to quote
}
MAX_PER_AOR = 3
MAX_LIFETIME_DAYS = 30
NONCE_LIFETIME = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def children_of(parent: int) -> list[int]:
    """Pids whose parent is ``parent`` (from /proc; no psutil needed)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process went away while we looked
        if int(fields[1]) == parent:
            found.append(int(stat.parent.name))
    return sorted(found)


def is_running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, already dead, counts as gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] != "Z"


@dataclass
class StoreFiles:
    """Everything a Store needs on disk, in one temporary folder."""

    root: Path
    ca: TestCA
    ca_file: Path
    tls: dict[str, tuple[Path, Path]]
    db_path: Path
    users_file: Path
    data_dir: Path

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.db_path}"

    @property
    def credentials_url(self) -> str:
        return f"file://{self.users_file}"


def make_store_files(root: Path) -> StoreFiles:
    now = datetime.now(UTC)
    ca = TestCA.create(now=now)
    ca_file = root / "ca.pem"
    ca_file.write_bytes(ca.cert_pem)
    tls: dict[str, tuple[Path, Path]] = {}
    for domain in DOMAINS:
        issued = ca.issue([domain], now=now, days=30)
        cert, key = root / f"{domain}.pem", root / f"{domain}.key"
        cert.write_bytes(issued.cert_pem)
        key.write_bytes(issued.key_pem)
        tls[domain] = (cert, key)
    users = FileCredentials(root / "users.json")
    for aor, password in USERS.items():
        users.add(aor, password)
    return StoreFiles(
        root=root,
        ca=ca,
        ca_file=ca_file,
        tls=tls,
        db_path=root / "certificates.db",
        users_file=root / "users.json",
        data_dir=root / "data",
    )


@dataclass
class StoreProcess:
    """One ``sipcert serve`` subprocess on 127.0.0.1:``port``."""

    files: StoreFiles
    port: int = field(default_factory=free_port)
    extra: Sequence[str] = ()
    credentials: str | None = None
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    #: Run in the child before ``sipcert`` starts (e.g. to set resource limits).
    preexec: Callable[[], None] | None = None
    #: Another certificate database (e.g. PostgreSQL shared by several frontends).
    db: str | None = None
    #: Another data folder (frontends on "different hosts" keep their own).
    data_dir: Path | None = None

    def command(self) -> list[str]:
        command = [SIPCERT, "serve", "--listen", f"127.0.0.1:{self.port}"]
        for domain, (cert, key) in self.files.tls.items():
            command += ["--domain", domain, "--tls-cert", str(cert), "--tls-key", str(key)]
        command += [
            "--db",
            self.db or self.files.db_url,
            "--credentials",
            self.credentials or self.files.credentials_url,
            "--data-dir",
            str(self.data_dir or self.files.data_dir),
            "--max-per-aor",
            str(MAX_PER_AOR),
            "--max-lifetime-days",
            str(MAX_LIFETIME_DAYS),
            "--max-age",
            "60",
            *self.extra,
        ]
        return command

    def start(self) -> None:
        self.log_path = self.files.root / f"serve-{self.port}-{time.monotonic_ns()}.log"
        log = open(self.log_path, "wb")
        try:
            # Its own process group, so that stop() reaches pre-forked workers too.
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=self.preexec,
            )
        finally:
            log.close()
        try:
            self.wait_ready()
        except BaseException:  # a Store that never came up must not outlive the test
            self.stop()
            raise

    def wait_ready(self, timeout: float = 20.0) -> None:
        context = ssl.create_default_context(cafile=self.files.ca_file)
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"sipcert serve exited early:\n{self.output()}")
            try:
                with (
                    socket.create_connection(("127.0.0.1", self.port), timeout=1) as raw,
                    context.wrap_socket(raw, server_hostname="example.com"),
                ):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sipcert serve did not come up:\n{self.output()}") from None
                time.sleep(0.05)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def kill(self, signum: int = signal.SIGKILL) -> int:
        """Send ``signum`` and wait; the exit status."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signum)
        try:
            return self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(5)

    def workers(self) -> list[int]:
        """Pids of the worker processes (children of the Store's parent process)."""
        assert self.process is not None
        return children_of(self.process.pid)

    def stop(self) -> None:
        """Kill the whole process group: a SIGKILL to the parent alone would leave its
        pre-forked workers running after a failed test (they would be re-parented)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.kill(signal.SIGKILL)
        self.process.wait(5)

    # -- clients ---------------------------------------------------------------------------

    def url(self, domain: str, target: str) -> str:
        return f"https://{domain}:{self.port}{target}"

    @contextlib.contextmanager
    def client(self, domain: str) -> Iterator[httpx.Client]:
        """An httpx client whose connections go to the Store with SNI/Host = ``domain``."""
        transport = httpx.HTTPTransport(
            verify=ssl.create_default_context(cafile=self.files.ca_file)
        )
        mounts = {f"all://{domain}": _Redirected(transport, self.port)}
        with httpx.Client(mounts=mounts, timeout=10) as client:
            yield client

    def curl_args(self, domain: str) -> list[str]:
        return [
            "curl",
            "-sS",
            "--cacert",
            str(self.files.ca_file),
            "--resolve",
            f"{domain}:{self.port}:127.0.0.1",
        ]


class _Redirected(httpx.BaseTransport):
    """Send requests for ``https://domain:port`` to 127.0.0.1 while keeping SNI and Host."""

    def __init__(self, inner: httpx.HTTPTransport, port: int) -> None:
        self._inner = inner
        self._port = port

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        domain = request.url.host
        headers = httpx.Headers(request.headers)
        headers["Host"] = f"{domain}:{self._port}"
        redirected = httpx.Request(
            request.method,
            request.url.copy_with(host="127.0.0.1"),
            headers=headers,
            stream=request.stream,
            extensions={**request.extensions, "sni_hostname": domain},
        )
        return self._inner.handle_request(redirected)

    def close(self) -> None:
        self._inner.close()


@pytest.fixture(scope="module")
def store_files(tmp_path_factory: pytest.TempPathFactory) -> StoreFiles:
    return make_store_files(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def store(store_files: StoreFiles) -> Iterator[StoreProcess]:
    """The Store shared by a test module (users in :data:`USERS`)."""
    process = StoreProcess(store_files, extra=["--config", str(_nonce_config(store_files.root))])
    process.start()
    try:
        yield process
    finally:
        process.stop()


def _nonce_config(root: Path) -> Path:
    path = root / "store.toml"
    path.write_text(f"nonce_lifetime = {NONCE_LIFETIME}\naccess_log = true\n")
    return path


@contextlib.contextmanager
def only_worker(worker: int, others: list[int]) -> Iterator[None]:
    """Freeze every worker but ``worker`` (SIGSTOP): only it accepts a new connection."""
    for pid in others:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in others:
            os.kill(pid, signal.SIGCONT)
