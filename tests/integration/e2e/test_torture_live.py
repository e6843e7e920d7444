"""RFC 4475 and RFC 5118 torture messages sent to a running ``sipcert ua`` (issue 12).

A real ``sipcert ua`` process registers through a stand-in registrar (UDP for one process,
TCP for the other), then every torture request of ``tests/unit/proto/torture`` goes to its
Contact over real sockets on 127.0.0.1, and its final response must be the one the RFC
text expects (``cases.toml``). Over TCP the connection must stay usable after an invalid
but well-framed message, be closed after a framing error (bad or missing Content-Length),
and be closed after ``--incomplete-timeout`` when a message never completes.
"""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from sipcert.server.credentials import FileCredentials
from tests.integration.e2e.test_cli_sip import Lines, _Proxy, finish, start
from tests.integration.store.conftest import SIPCERT, StoreFiles, StoreProcess
from tests.unit.proto.torture import Case, cases

AORS = {
    "tortured-udp@example.com": "udp-secret",
    "tortured-tcp@example.com": "tcp-secret",
    "tortured-tls@example.com": "tls-secret",
}
REQUESTS = [case for case in cases() if case.is_request]
ANSWERLESS = [case for case in cases() if not case.is_request]
WAIT = 10.0
INCOMPLETE_TIMEOUT = 1.0
#: On a stream: Content-Length cannot frame what follows (answered, then closed) ...
FRAMING = {"ncl", "mcl01", "inv2543", "dblreq"}
#: ... or the message never completes (closed after ``--incomplete-timeout``).
INCOMPLETE = {"clerr", "baddn", "ipv6-in-sdp", "mult-ip-in-sdp", "ipv4-mapped-ipv6"}

#: An OPTIONS that must always get 200; sent after a message that gets no answer, so the
#: absence of an answer is checked by what comes first, not by sleeping.
PROBE = (
    "OPTIONS sip:probe@example.com SIP/2.0\r\n"
    "Via: SIP/2.0/{transport} 127.0.0.1:9;branch=z9hG4bK-probe-{n}\r\n"
    "From: <sip:prober@example.net>;tag=p{n}\r\nTo: <sip:probe@example.com>\r\n"
    "Call-ID: probe-{n}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
)
_probes = iter(range(1, 10**6))


def _probe(transport: str) -> bytes:
    return PROBE.format(transport=transport, n=next(_probes)).encode()


class _UdpRegistrar(threading.Thread):
    """Answers every request with 200 and the expiry asked (a stand-in registrar)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    def run(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(65536)
            except OSError:
                return
            lines = data.decode().split("\r\n")
            copied = [
                f"{line};tag=stand-in" if line.lower().startswith("to:") else line
                for line in lines[1:]
                if line.partition(":")[0].strip().lower()
                in ("via", "from", "to", "call-id", "cseq")
            ]
            answer = ["SIP/2.0 200 OK", *copied, "Expires: 300", "Content-Length: 0", "", ""]
            self.sock.sendto("\r\n".join(answer).encode(), peer)


class _TlsProxy(_Proxy):
    """The stand-in proxy over TLS, with the certificate of example.com (RFC 5922 §7.1)."""

    def __init__(self, status: str, context: ssl.SSLContext) -> None:
        super().__init__(status)
        self.context = context

    def get_request(self) -> tuple[socket.socket, object]:
        sock, address = super().get_request()
        return self.context.wrap_socket(sock, server_side=True), address

    @property
    def uri(self) -> str:
        return f"sip:127.0.0.1:{self.server_address[1]};transport=tls"


@pytest.fixture(scope="module")
def live_uas(
    store: StoreProcess, store_files: StoreFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, int]]:
    """Two ``sipcert ua`` processes, over UDP and TCP: transport -> the port they listen on."""
    credentials = FileCredentials(store_files.users_file)
    for aor, secret in AORS.items():
        credentials.add(aor, secret)
    registrar = _UdpRegistrar()
    registrar.start()
    tcp_proxy = _Proxy("200 OK")
    cert, key = store_files.tls["example.com"]
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    tls_proxy = _TlsProxy("200 OK", server)
    for stand_in in (tcp_proxy, tls_proxy):
        threading.Thread(target=stand_in.serve_forever, daemon=True).start()
    proxies = {
        "UDP": f"sip:127.0.0.1:{registrar.port}",
        "TCP": tcp_proxy.uri,
        "TLS": tls_proxy.uri,
    }
    running: list[tuple[subprocess.Popen[str], Lines]] = []
    ports: dict[str, int] = {}
    contacts: dict[str, str] = {}
    try:
        for (transport, proxy), aor in zip(proxies.items(), AORS, strict=True):
            home = tmp_path_factory.mktemp(transport.lower())
            secret = home / "password"
            secret.write_text(AORS[aor] + "\n")
            command = [
                *(SIPCERT, "ua", aor, "--proxy", proxy, "--store", f"127.0.0.1:{store.port}"),
                *("--ca-file", str(store.files.ca_file), "--home", str(home / "home")),
                *("--password-file", str(secret), "--validity", "20", "--json"),
                *("--incomplete-timeout", str(INCOMPLETE_TIMEOUT)),
            ]
            if transport == "TLS":  # the UA's own listener: the same test CA's certificate
                command += ["--tls-certificate", str(cert), "--tls-key", str(key)]
            process = start(command)
            lines = Lines(process.stdout)
            running.append((process, lines))
            assert lines.event()["event"] == "certificate"
            registered = lines.event()
            assert (registered["event"], registered["status"]) == ("registered", 200)
            ports[transport] = int(re.findall(r":([0-9]+)", registered["contact"])[-1])
            contacts[transport] = registered["contact"]
        assert contacts["TLS"].startswith("sips:tortured-tls@127.0.0.1:")
        yield ports
    finally:
        for process, lines in running:
            process.terminate()
            errors = finish(process, lines)
            assert "Traceback" not in errors, errors
        registrar.sock.close()
        for stand_in in (tcp_proxy, tls_proxy):
            stand_in.shutdown()
            stand_in.server_close()


def _status_and_call_id(data: bytes) -> tuple[int, str]:
    head = data.partition(b"\r\n\r\n")[0].decode("utf-8", "replace")
    status = int(head.split(" ", 2)[1])
    found = re.search(r"(?im)^(?:call-id|i)[ \t]*:[ \t]*(.*)$", head)
    return status, found.group(1).strip() if found else ""


def _udp_finals(sock: socket.socket, wanted: int) -> list[tuple[int, str]]:
    """Final responses (1xx skipped) until ``wanted`` of them arrived."""
    finals: list[tuple[int, str]] = []
    while len(finals) < wanted:
        status, call_id = _status_and_call_id(sock.recv(65536))
        if status >= 200:
            finals.append((status, call_id))
    return finals


@pytest.mark.parametrize("case", [*REQUESTS, *ANSWERLESS], ids=lambda c: c.name)
def test_over_udp(case: Case, live_uas: dict[str, int]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(WAIT)
        sock.connect(("127.0.0.1", live_uas["UDP"]))
        sock.send(case.wire)
        sock.send(_probe("UDP"))
        finals = _udp_finals(sock, len(case.udp) + 1)
    statuses = [status for status, _ in finals]
    assert statuses[:-1] == list(case.udp), case.note
    assert finals[-1][0] == 200 and finals[-1][1].startswith("probe-")


class _Stream:
    """One TCP connection to the UA, read as SIP responses framed by Content-Length."""

    def __init__(self, port: int, tls: ssl.SSLContext | None = None) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.sock = tls.wrap_socket(sock, server_hostname="example.com") if tls else sock
        self.buffer = b""

    def response(self) -> bytes | None:
        """The next response, or None when the UA closed the connection."""
        while True:
            head, blank, rest = self.buffer.partition(b"\r\n\r\n")
            if blank:
                found = re.search(rb"(?im)^(?:content-length|l)[ \t]*:[ \t]*([0-9]+)", head)
                length = int(found.group(1)) if found else 0
                if len(rest) >= length:
                    self.buffer = rest[length:]
                    return head + blank + rest[:length]
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buffer += data

    def final(self) -> int | None:
        while (data := self.response()) is not None:
            status, _ = _status_and_call_id(data)
            if status >= 200:
                return status
        return None


def _client_tls(store_files: StoreFiles) -> ssl.SSLContext:
    """Our test client verifies the UA's certificate against the test CA (RFC 5922)."""
    context = ssl.create_default_context(cafile=str(store_files.ca_file))
    return context


@pytest.mark.parametrize("transport", ["TCP", "TLS"])
@pytest.mark.parametrize("case", [*REQUESTS, *ANSWERLESS], ids=lambda c: c.name)
def test_over_a_stream(
    case: Case, transport: str, live_uas: dict[str, int], store_files: StoreFiles
) -> None:
    tls = _client_tls(store_files) if transport == "TLS" else None
    stream = _Stream(live_uas[transport], tls)
    with stream.sock:
        started = time.monotonic()
        stream.sock.sendall(case.wire)
        statuses = [stream.final() for _ in case.tcp]
        assert statuses == list(case.tcp), case.note
        if case.name in FRAMING:  # framing lost: answered, then closed
            assert stream.response() is None
            return
        if case.name in INCOMPLETE:  # never completes: no answer, closed after the timeout
            assert stream.response() is None
            assert time.monotonic() - started >= INCOMPLETE_TIMEOUT
            return
        stream.sock.sendall(_probe(transport))  # the connection is still usable
        assert stream.final() == 200


def test_incomplete_message_over_tcp_is_closed_after_the_timeout(
    live_uas: dict[str, int],
) -> None:
    """A head without its blank line is given up too, not held open forever."""
    stream = _Stream(live_uas["TCP"])
    with stream.sock:
        started = time.monotonic()
        stream.sock.sendall(b"OPTIONS sip:probe@example.com SIP/2.0\r\nVia: SIP/2.0/TCP h")
        assert stream.response() is None
        assert INCOMPLETE_TIMEOUT <= time.monotonic() - started < WAIT


def test_a_register_then_junk_in_one_segment(live_uas: dict[str, int]) -> None:
    """The framed REGISTER is answered although the junk after it loses the stream."""
    register = next(c for c in REQUESTS if c.name == "cparam02").wire
    stream = _Stream(live_uas["TCP"])
    with stream.sock:
        stream.sock.sendall(register + b"junk\r\nContent-Length: x\r\n\r\n")
        assert stream.final() == 405
        assert stream.final() is None  # the junk has no Via to answer: closed
