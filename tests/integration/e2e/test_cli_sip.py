"""``sipcert ua`` and ``sipcert message send`` as people run them (issue 8, "The CLI").

The Store is the shared real ``sipcert serve`` (``--store`` skips DNS); the proxy is a small
stand-in SIP server over TCP that answers every request with one fixed status, or a UDP
socket that never answers (a dead proxy). Each test has its own AOR in the users file.
"""

from __future__ import annotations

import json
import queue
import signal
import socket
import socketserver
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sipcert.server.credentials import FileCredentials
from tests.integration.e2e.conftest import CLI_TIMEOUT, sipcert
from tests.integration.store.conftest import SIPCERT, StoreFiles, StoreProcess

#: AOR -> password, added to the shared Store's users file by :func:`users`.
SIP_USERS = {
    "heidi@example.com": "heidi-secret",
    "ivan@example.com": "ivan-secret",
    "judy@example.com": "judy-secret",
    "mallory@example.com": "mallory-secret",
    "oscar@example.com": "oscar-secret",
}
VALIDITY = "20"


@pytest.fixture(scope="module")
def users(store: StoreProcess, store_files: StoreFiles) -> StoreProcess:
    credentials = FileCredentials(store_files.users_file)
    for aor, secret in SIP_USERS.items():
        credentials.add(aor, secret)
    return store


class _Answering(socketserver.StreamRequestHandler):
    """Answer each SIP request on the connection with ``server.status`` (a stand-in proxy)."""

    server: _Proxy

    def handle(self) -> None:
        while True:
            head: list[bytes] = []
            while (line := self.rfile.readline()) not in (b"\r\n", b""):
                head.append(line)
            if not head:
                return
            copied, length = [], 0
            for raw in head[1:]:
                line = raw.decode().rstrip("\r\n")
                name = line.partition(":")[0].strip().lower()
                if name == "content-length":
                    length = int(line.partition(":")[2])
                elif name in ("via", "from", "call-id", "cseq"):
                    copied.append(line)
                elif name == "to":
                    copied.append(f"{line};tag=stand-in")
            self.rfile.read(length)
            self.server.requests.put(head[0].decode().split()[0])
            answer = [f"SIP/2.0 {self.server.status}", *copied, "Expires: 300"]
            self.wfile.write(("\r\n".join([*answer, "Content-Length: 0", "", ""])).encode())


class _Proxy(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, status: str) -> None:
        super().__init__(("127.0.0.1", 0), _Answering)
        self.status = status
        self.requests: queue.Queue[str] = queue.Queue()

    @property
    def uri(self) -> str:
        return f"sip:127.0.0.1:{self.server_address[1]};transport=tcp"


@pytest.fixture
def proxy_answering() -> Iterator[Any]:
    started: list[_Proxy] = []

    def start(status: str) -> _Proxy:
        proxy = _Proxy(status)
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.shutdown()
        proxy.server_close()


class Lines:
    """The lines a running ``sipcert`` prints, read by a thread (waits have a deadline)."""

    def __init__(self, stream: Any) -> None:
        self.queue: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.stream = stream
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        for line in self.stream:
            self.queue.put(line)

    def close(self) -> None:
        """After the process ended: the reader has seen end of file; close the pipe."""
        self.thread.join(timeout=CLI_TIMEOUT)
        self.stream.close()

    def next(self, timeout: float = 30.0) -> str:
        try:
            line = self.queue.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"nothing printed for {timeout} s; so far: {self.seen}")
        self.seen.append(line)
        return line

    def event(self, timeout: float = 30.0) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.next(timeout))
        return result


def ua_command(store: StoreProcess, home: Path, aor: str, proxy: str, *more: str) -> list[str]:
    secret = home.parent / f"{aor}.password"
    secret.write_text(SIP_USERS[aor] + "\n")
    return [
        *(SIPCERT, "ua", aor, "--proxy", proxy, "--store", f"127.0.0.1:{store.port}"),
        *("--ca-file", str(store.files.ca_file), "--home", str(home)),
        *("--password-file", str(secret), "--validity", VALIDITY, *more),
    ]


def start(command: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str], lines: Lines) -> str:
    """Wait for the end (kill after the deadline); the whole of stderr."""
    try:
        process.wait(timeout=CLI_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    lines.close()
    assert process.stderr is not None
    with process.stderr:
        return process.stderr.read()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ua_stops_cleanly_after_tcp_traffic(
    signum: int, users: StoreProcess, proxy_answering: Any, tmp_path: Path
) -> None:
    """An inbound TCP connection is open when the signal comes: exit 0, no traceback."""
    proxy = proxy_answering("200 OK")
    aor = "heidi@example.com" if signum == signal.SIGINT else "ivan@example.com"
    process = start(ua_command(users, tmp_path / "home", aor, proxy.uri, "--json"))
    lines = Lines(process.stdout)
    try:
        certificate = lines.event()
        assert (certificate["event"], certificate["action"]) == ("certificate", "enrolled")
        # It enrolled because it was not enrolled: that warning no longer holds.
        assert certificate["warnings"] == []
        registered = lines.event()
        assert (registered["event"], registered["status"]) == ("registered", 200)
        port = int(registered["contact"].rpartition(":")[2].partition(";")[0])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as peer:
            peer.sendall(
                (
                    f"OPTIONS sip:{aor} SIP/2.0\r\n"
                    "Via: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bK-test-1\r\n"
                    "From: <sip:bob@example.net>;tag=t1\r\nTo: <sip:heidi@example.com>\r\n"
                    "Call-ID: cli-tcp-1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
                    "Content-Length: 0\r\n\r\n"
                ).encode()
            )
            assert peer.recv(65536).startswith(b"SIP/2.0 200 ")
            process.send_signal(signum)  # the inbound connection is still open
            unregistered = lines.event()
    finally:
        errors = finish(process, lines)
    assert (unregistered["event"], unregistered["status"]) == ("unregistered", 200), errors
    assert process.returncode == 0, errors
    assert "Traceback" not in errors and "CancelledError" not in errors
    assert errors == ""


def test_ua_refused_register_is_one_error_not_registered(
    users: StoreProcess, proxy_answering: Any, tmp_path: Path
) -> None:
    proxy = proxy_answering("403 Forbidden")
    command = ua_command(users, tmp_path / "home", "judy@example.com", proxy.uri)
    done = subprocess.run(
        command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=CLI_TIMEOUT
    )
    assert done.returncode == 6, done.stderr
    assert "registered" not in done.stdout
    both = done.stdout + done.stderr
    assert both.count("the registrar refused the credentials") == 1, both
    assert "Traceback" not in both

    as_json = subprocess.run(
        [*command, "--json"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )
    assert as_json.returncode == 6, as_json.stderr
    events = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [e["event"] for e in events] == ["certificate", "error"]
    assert events[-1] == {
        "event": "error",
        "ok": False,
        "error": "the registrar refused the credentials: 403",
        "exit_code": 6,
    }
    assert as_json.stderr == ""


def test_ua_says_it_is_still_trying_a_dead_proxy(users: StoreProcess, tmp_path: Path) -> None:
    """Over UDP a silent proxy is given up after 32 s (Timer F): say so every few seconds."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dead:
        dead.bind(("127.0.0.1", 0))
        proxy = f"sip:127.0.0.1:{dead.getsockname()[1]}"
        process = start(ua_command(users, tmp_path / "home", "mallory@example.com", proxy))
        lines = Lines(process.stdout)
        try:
            assert lines.next().startswith("certificate enrolled: ")
            progress = lines.next(timeout=15)
            assert progress == f"still trying to register with {proxy} (no answer for 3 s)\n"
            process.send_signal(signal.SIGTERM)
        finally:
            errors = finish(process, lines)
    assert process.returncode == 130, errors
    assert errors == f"sipcert: error: stopped while trying to register with {proxy}\n"


def test_message_send_wrong_password_is_exit_6_naming_the_proxy(
    users: StoreProcess, proxy_answering: Any, tmp_path: Path
) -> None:
    proxy = proxy_answering("403 Forbidden")
    aor, home = "oscar@example.com", tmp_path / "home"
    options = ["--store", f"127.0.0.1:{users.port}", "--ca-file", str(users.files.ca_file)]
    options += ["--home", str(home)]
    enrolled = sipcert("enroll", aor, *options, "--validity", VALIDITY, secret=SIP_USERS[aor])
    assert enrolled.returncode == 0, enrolled.stderr
    port = proxy.server_address[1]
    send = ["message", "send", aor, aor, "--text", "hi", "--proxy", proxy.uri, *options]
    done = sipcert(*send, secret="wrong")
    assert proxy.requests.get(timeout=10) == "MESSAGE"
    assert done.returncode == 6, done.stderr
    assert done.stderr == (
        f"sipcert: error: the proxy 127.0.0.1:{port} (tcp) answered the MESSAGE to {aor} with "
        f"403 Forbidden: wrong SIP credentials for {aor}, or not allowed to send it\n"
    )
    as_json = sipcert(*send, "--json", secret="wrong")
    assert as_json.returncode == 6
    failure = json.loads(as_json.stdout)
    assert (failure["event"], failure["ok"], failure["exit_code"]) == ("error", False, 6)
    assert f"127.0.0.1:{port}" in failure["error"]
