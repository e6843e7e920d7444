"""Edge mode for real: ``sipcert serve`` (TCP + unix socket), ``sipcert publish`` and nginx.

:class:`EdgeSetup` runs the Store of tests/integration/store on a free port and a unix
socket, publishes once and starts a following publisher, writes the configuration with
``sipcert nginx-config`` and runs the system nginx on it with a private prefix, on another
free loopback port. Clients reach either with the same SNI and Host.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import require_program, wait_for
from tests.integration.store.conftest import (
    SIPCERT,
    StoreFiles,
    StoreProcess,
    free_port,
    make_store_files,
)

#: The ``Cache-Control: max-age`` the Store and the publisher use (StoreProcess's).
MAX_AGE = 60
#: Seconds the follower lets a changed AOR wait for the next map generation.
MAP_INTERVAL = 0.3


def store_flags(files: StoreFiles) -> list[str]:
    """The flags that name the Store's configuration (shared by serve/publish/nginx-config)."""
    flags: list[str] = []
    for domain, (cert, key) in files.tls.items():
        flags += ["--domain", domain, "--tls-cert", str(cert), "--tls-key", str(key)]
    return [
        *flags,
        "--db",
        files.db_url,
        "--data-dir",
        str(files.data_dir),
        "--max-age",
        str(MAX_AGE),
    ]


@dataclass
class Endpoint:
    """Something that answers HTTPS for the served domains on 127.0.0.1:``port``."""

    files: StoreFiles
    port: int

    def url(self, domain: str, target: str) -> str:
        return f"https://{domain}:{self.port}{target}"

    @contextlib.contextmanager
    def client(self, domain: str) -> Iterator[httpx.Client]:
        helper = StoreProcess(self.files, port=self.port)  # its client(): SNI and Host kept
        with helper.client(domain) as client:
            yield client


@dataclass
class EdgeSetup:
    files: StoreFiles
    scratch: Path
    store: StoreProcess
    nginx_port: int = field(default_factory=free_port)
    follower: subprocess.Popen[bytes] | None = None
    nginx: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        return self.scratch / "store.sock"

    @property
    def publish_dir(self) -> Path:
        return self.scratch / "edge"

    @property
    def prefix(self) -> Path:
        return self.scratch / "nginx"

    @property
    def edge(self) -> Endpoint:
        return Endpoint(self.files, self.nginx_port)

    @property
    def python(self) -> Endpoint:
        return Endpoint(self.files, self.store.port)

    def publish_once(self) -> str:
        done = subprocess.run(
            [SIPCERT, "publish", str(self.publish_dir), "--once", *store_flags(self.files)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stderr

    def start_follower(self) -> None:
        log = open(self.scratch / "follower.log", "wb")
        try:
            self.follower = subprocess.Popen(
                [
                    SIPCERT,
                    "publish",
                    str(self.publish_dir),
                    # Keeps nginx's map current (reloads it) a moment after each change.
                    "--nginx-pid",
                    str(self.prefix / "nginx.pid"),
                    "--map-interval",
                    str(MAP_INTERVAL),
                    *store_flags(self.files),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()
        wait_for(lambda: "following changes" in self.follower_output(), "the follower")

    def follower_output(self) -> str:
        path = self.scratch / "follower.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def nginx_config(self) -> Path:
        done = subprocess.run(
            [
                SIPCERT,
                "nginx-config",
                str(self.publish_dir),
                "--store-socket",
                str(self.socket_path),
                "--listen",
                f"127.0.0.1:{self.nginx_port}",
                "--prefix",
                str(self.prefix),
                # Started by root (CI), nginx's workers would be nobody: no way into the
                # 0700 scratch folder nor the 0660 socket.
                *(["--user", "root"] if os.geteuid() == 0 else []),
                *store_flags(self.files),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        path = self.scratch / "nginx.conf"
        # Unbuffered access log here: each line is written as its request ends, in order.
        assert " buffer=64k flush=1s;" in done.stdout
        path.write_text(done.stdout.replace(" buffer=64k flush=1s;", ";"))
        return path

    def start_nginx(self) -> None:
        nginx = require_program("nginx")
        config = self.nginx_config()
        self.prefix.mkdir(parents=True, exist_ok=True)  # nginx makes its *_temp folders in it
        checked = subprocess.run(
            [nginx, "-t", "-q", "-p", str(self.prefix), "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert checked.returncode == 0, checked.stderr
        with open(self.scratch / "nginx.stderr", "wb") as errors:
            self.nginx = subprocess.Popen(
                [nginx, "-p", str(self.prefix), "-c", str(config), "-g", "daemon off;"],
                stdout=subprocess.DEVNULL,
                stderr=errors,
                stdin=subprocess.DEVNULL,
            )
        context = ssl.create_default_context(cafile=self.files.ca_file)

        def up() -> bool:
            assert self.nginx is not None and self.nginx.poll() is None, self.nginx_errors()
            try:
                with (
                    socket.create_connection(("127.0.0.1", self.nginx_port), timeout=1) as raw,
                    context.wrap_socket(raw, server_hostname="example.com"),
                ):
                    return True
            except OSError:
                return False

        wait_for(up, "nginx")

    def nginx_errors(self) -> str:
        parts = []
        for name in ("nginx.stderr", "nginx/error.log"):
            path = self.scratch / name
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def log_mark(self) -> int:
        """Where the access log's next lines start, once the answers already sent are in it.

        nginx writes a request's line after sending its answer, so the line of a GET just
        answered may still be missing from a count read at once (and then turn up among the
        next test's). A marker GET is sent on a new connection and waited for instead.
        """
        target = f"/_sipcert_test_mark?{secrets.token_hex(8)}"
        with self.edge.client("example.com") as client:
            client.get(self.edge.url("example.com", target))
        mark = f'"GET {target} HTTP/1.1"'
        after: list[int] = []

        def logged() -> bool:
            lines = self.access_lines()
            after[:] = [number + 1 for number, line in enumerate(lines) if mark in line]
            return bool(after)

        wait_for(logged, "the access log's mark")
        return after[0]

    def routes(self, since: int, targets: list[str]) -> list[tuple[str, str]]:
        """How nginx answered the GETs of ``targets`` logged after line ``since`` (from
        :meth:`log_mark`).

        Each is ``($uri, $upstream_addr)``: ``/search-cgi`` from the map, ``/_sipcert_body``
        or ``/_sipcert_slow`` through the symlink, an upstream from the Store.
        """

        def logged() -> bool:
            new = self.access_lines()[since:]
            return len(new) == len(targets) and all(
                f'"GET {target} HTTP/1.1"' in line
                for line, target in zip(new, targets, strict=True)
            )

        wait_for(logged, "the access log")
        fields = [line.rsplit(" ", 2)[1:] for line in self.access_lines()[since:]]
        return [(uri.strip('"'), upstream.strip('"')) for uri, upstream in fields]

    def access_lines(self) -> list[str]:
        path = self.prefix / "access.log"
        return path.read_text().splitlines() if path.exists() else []

    def stop(self) -> None:
        for process in (self.nginx, self.follower):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)
        self.store.stop()


@pytest.fixture(scope="module")
def edge_files(tmp_path_factory: pytest.TempPathFactory) -> StoreFiles:
    return make_store_files(tmp_path_factory.mktemp("edge"))


@pytest.fixture(scope="module")
def setup(edge_files: StoreFiles) -> Iterator[EdgeSetup]:
    """A Store (TCP and unix socket), not yet published; nginx not yet started."""
    require_program("nginx")
    # A short folder: a unix socket path is limited to 107 bytes.
    scratch = Path(tempfile.mkdtemp(prefix="sipcert-edge-"))
    store = StoreProcess(edge_files, extra=["--unix-socket", str(scratch / "store.sock")])
    store.start()
    edge = EdgeSetup(edge_files, scratch, store)
    try:
        yield edge
    finally:
        edge.stop()
        if not os.environ.get("SIPCERT_TEST_KEEP"):  # set it to look at a failed run
            shutil.rmtree(scratch, ignore_errors=True)
