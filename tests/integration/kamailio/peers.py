"""Real SIP peers for the Kamailio tests: Kamailio itself, SIPp, and a tiny SIP-over-UDP endpoint.

* :func:`create_subscriber_db` builds Kamailio's SQLite database from Kamailio's own schema
  files (``standard-create.sql`` for ``version``, ``auth_db-create.sql`` for ``subscriber``),
  so the Store reads exactly the table Kamailio's registrar reads.
* :class:`Kamailio` runs ``contrib/kamailio/kamailio.cfg`` in the foreground on a loopback port,
  waits until it answers OPTIONS, and keeps its log (stderr) for failure messages.
* :func:`run_sipp` runs one SIPp scenario and returns its exit code and traces.
* :class:`SipEndpoint` sends and receives single SIP messages over UDP; with
  :func:`send_with_digest` it answers 401/407 with :mod:`sipcert.proto.digest`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

from sipcert.proto.digest import Algorithm, DigestClient, compute_ha1
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[3]
KAMAILIO_CFG = REPO / "contrib" / "kamailio" / "kamailio.cfg"
SCHEMA_GLOBS = (
    "/usr/share/kamailio/db_sqlite",
    "/usr/local/share/kamailio/db_sqlite",
    "/usr/share/kamailio*/db_sqlite",
)


# -- the subscriber database ----------------------------------------------------------------


def kamailio_schema_dir() -> Path:
    """Where the installed Kamailio keeps its SQLite ``*-create.sql`` files."""
    for pattern in SCHEMA_GLOBS:
        for candidate in sorted(glob.glob(pattern)):
            path = Path(candidate)
            if (path / "auth_db-create.sql").is_file():
                return path
    raise FileNotFoundError(
        "Kamailio's SQLite schema (auth_db-create.sql) was not found; "
        "install kamailio-sqlite-modules"
    )


@dataclass(frozen=True)
class Subscriber:
    """One row of ``subscriber``; ``ha1_only`` stores MD5(user:domain:password), no password."""

    username: str
    domain: str
    password: str
    ha1_only: bool = False

    @property
    def aor(self) -> str:
        return f"{self.username}@{self.domain}"


def create_subscriber_db(path: Path, subscribers: Iterable[Subscriber]) -> None:
    """Create Kamailio's database at ``path`` with the real schema and ``subscribers``."""
    schema = kamailio_schema_dir()
    conn = sqlite3.connect(path)
    try:
        for name in ("standard-create.sql", "auth_db-create.sql"):
            conn.executescript((schema / name).read_text())
        for sub in subscribers:
            if sub.ha1_only:
                ha1 = compute_ha1(Algorithm.MD5, sub.username, sub.domain, sub.password)
                row = (sub.username, sub.domain, "", ha1)
            else:
                row = (sub.username, sub.domain, sub.password, "")
            conn.execute(
                "INSERT INTO subscriber (username, domain, password, ha1) VALUES (?, ?, ?, ?)",
                row,
            )
        conn.commit()
    finally:
        conn.close()


# -- SIP messages over UDP ----------------------------------------------------------------------


@dataclass
class SipMessage:
    """A parsed SIP request or response (headers in order, names as received)."""

    first_line: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    @property
    def is_response(self) -> bool:
        return self.first_line.startswith("SIP/2.0 ")

    @property
    def status(self) -> int:
        return int(self.first_line.split(" ", 2)[1]) if self.is_response else 0

    @property
    def method(self) -> str:
        return "" if self.is_response else self.first_line.split(" ", 1)[0]

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def get(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def __str__(self) -> str:
        lines = [self.first_line, *(f"{k}: {v}" for k, v in self.headers)]
        return "\n".join(lines)


def parse_sip(data: bytes) -> SipMessage:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("utf-8", "replace").split("\r\n")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    return SipMessage(lines[0], headers, body)


@dataclass
class SipEndpoint:
    """A SIP UA reduced to one UDP socket on 127.0.0.1; close it (or use ``with``)."""

    timeout: float = 5.0
    sock: socket.socket = field(init=False)
    port: int = field(init=False)
    received: list[SipMessage] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    def __enter__(self) -> SipEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    @property
    def contact(self) -> str:
        return f"127.0.0.1:{self.port}"

    def send_request(
        self,
        target: tuple[str, int],
        method: str,
        request_uri: str,
        *,
        from_uri: str,
        to_uri: str,
        call_id: str,
        cseq: int,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> None:
        lines = [
            f"{method} {request_uri} SIP/2.0",
            f"Via: SIP/2.0/UDP {self.contact};rport;branch=z9hG4bK{secrets.token_hex(8)}",
            "Max-Forwards: 70",
            f"From: <{from_uri}>;tag={call_id[:8]}",
            f"To: <{to_uri}>",
            f"Call-ID: {call_id}",
            f"CSeq: {cseq} {method}",
            *(f"{name}: {value}" for name, value in headers),
            f"Content-Length: {len(body)}",
        ]
        self.sock.sendto(("\r\n".join(lines) + "\r\n\r\n").encode() + body, target)

    def receive(self, timeout: float | None = None) -> tuple[SipMessage, tuple[str, int]]:
        """The next datagram as a message (raises ``TimeoutError``)."""
        self.sock.settimeout(self.timeout if timeout is None else timeout)
        data, address = self.sock.recvfrom(65535)
        message = parse_sip(data)
        self.received.append(message)
        return message, address

    def final_response(self, cseq: int, timeout: float | None = None) -> SipMessage:
        """The first final (>= 200) response to the request with ``cseq``; 1xx are skipped."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no final response to CSeq {cseq}")
            message, _ = self.receive(remaining)
            if not message.is_response or message.status < 200:
                continue
            if (message.get("CSeq") or "").split(" ")[0] == str(cseq):
                return message

    def reply(
        self, request: SipMessage, address: tuple[str, int], status: int, reason: str
    ) -> None:
        """Answer ``request`` (its Via, From, To + tag, Call-ID, CSeq), no body."""
        to = request.get("To") or ""
        if ";tag=" not in to:
            to += f";tag={secrets.token_hex(4)}"
        lines = [f"SIP/2.0 {status} {reason}"]
        lines += [f"Via: {via}" for via in request.all("Via")]
        lines += [
            f"From: {request.get('From')}",
            f"To: {to}",
            f"Call-ID: {request.get('Call-ID')}",
            f"CSeq: {request.get('CSeq')}",
            "Content-Length: 0",
        ]
        self.sock.sendto(("\r\n".join(lines) + "\r\n\r\n").encode(), address)


def send_with_digest(
    endpoint: SipEndpoint,
    target: tuple[str, int],
    method: str,
    request_uri: str,
    *,
    from_uri: str,
    to_uri: str,
    username: str,
    password: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
) -> tuple[list[SipMessage], DigestClient]:
    """Send a request, answer one 401/407 with Digest, return every final response in order.

    The Digest ``uri`` is the Request-URI (RFC 3261 §22.4); the challenge is chosen by
    :func:`sipcert.proto.digest.choose_challenge` (SHA-256 over MD5).
    """
    call_id = secrets.token_hex(12)
    client = DigestClient(username, password)
    common = {"from_uri": from_uri, "to_uri": to_uri, "call_id": call_id}
    endpoint.send_request(target, method, request_uri, cseq=1, headers=headers, body=body, **common)
    first = endpoint.final_response(1)
    if first.status not in (401, 407):
        return [first], client
    challenge_header = "WWW-Authenticate" if first.status == 401 else "Proxy-Authenticate"
    answer_header = "Authorization" if first.status == 401 else "Proxy-Authorization"
    authorization = client.answer(first.all(challenge_header), method=method, uri=request_uri)
    endpoint.send_request(
        target,
        method,
        request_uri,
        cseq=2,
        headers=[*headers, (answer_header, authorization)],
        body=body,
        **common,
    )
    return [first, endpoint.final_response(2)], client


# -- Kamailio -----------------------------------------------------------------------------------


class KamailioError(RuntimeError):
    pass


class Kamailio:
    """``kamailio -DD -E`` with ``contrib/kamailio/kamailio.cfg`` on 127.0.0.1:``port``.

    ``defines`` are extra ``-A`` pre-processor defines (``WITH_SHA256``, ``NO_PROXY_AUTH``).
    Its stderr (the log) goes to ``log_path``; :meth:`log` reads it.
    """

    def __init__(
        self,
        binary: str,
        db_path: Path,
        workdir: Path,
        *,
        defines: Sequence[str] = (),
        config: Path = KAMAILIO_CFG,
        db_url: str | None = None,
    ) -> None:
        self.port = free_port()
        self.address = ("127.0.0.1", self.port)
        self.log_path = workdir / f"kamailio-{self.port}.log"
        self.command = [
            binary,
            "-DD",  # stay in the foreground (the children are still forked)
            "-E",  # log to stderr
            "-f",
            str(config),
            "-m",
            "32",  # shared memory, MB
            "-M",
            "8",  # private memory per process, MB
            "-A",
            "SIP_IP=127.0.0.1",
            "-A",
            f"SIP_PORT={self.port}",
            "-A",
            f'DBURL="{db_url or f"sqlite://{db_path}"}"',
            *(arg for define in defines for arg in ("-A", define)),
        ]
        self._log_file = open(self.log_path, "wb")  # closed in stop()
        # Its own session and process group: Kamailio signals its group on shutdown, and
        # stop() must find the children that outlive the main process.
        self.process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=self._log_file,
            cwd=workdir,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def describe(self) -> str:
        """The command line and the log, for assertion messages."""
        return f"$ {' '.join(self.command)}\n--- kamailio log ---\n{self.log()}"

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Wait until Kamailio answers an OPTIONS to itself (any response will do)."""
        deadline = time.monotonic() + timeout
        with SipEndpoint(timeout=0.2) as probe:
            while True:
                if self.process.poll() is not None:
                    raise KamailioError(
                        f"kamailio exited with {self.process.returncode}\n{self.describe()}"
                    )
                if time.monotonic() > deadline:
                    raise KamailioError(f"kamailio did not answer OPTIONS\n{self.describe()}")
                probe.send_request(
                    self.address,
                    "OPTIONS",
                    f"sip:127.0.0.1:{self.port}",
                    from_uri="sip:probe@invalid",
                    to_uri=f"sip:127.0.0.1:{self.port}",
                    call_id=secrets.token_hex(8),
                    cseq=1,
                )
                with contextlib.suppress(TimeoutError):
                    probe.receive()
                    return

    def stop(self) -> None:
        """SIGTERM the main process (it signals its children), SIGKILL after 10 s; then end
        any child still in Kamailio's process group; close the log.

        Measured with 5.6.3: now and then a few children stay blocked on a futex in shared
        memory after the main process has exited, and only SIGKILL ends them.
        """
        try:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(10)
            _end_process_group(self.process.pid)
        finally:
            self._log_file.close()


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of group ``pgid``, from /proc.

    Zombies are skipped: a container's PID 1 may never reap orphans, and they hold nothing.
    """
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may contain spaces, so split after ")".
        fields = text[text.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


def _end_process_group(pgid: int, grace: float = 1.0) -> None:
    """Wait ``grace`` seconds for the group ``pgid`` (ours: start_new_session) to empty, then
    SIGKILL what is left and wait a little for it to go."""
    deadline = time.monotonic() + grace
    while _group_members(pgid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            end = time.monotonic() + 2.0
            while _group_members(pgid) and time.monotonic() < end:
                time.sleep(0.02)
            return
        time.sleep(0.02)


@contextlib.contextmanager
def kamailio(
    binary: str, db_path: Path, workdir: Path, *, defines: Sequence[str] = ()
) -> Iterator[Kamailio]:
    """A started, answering :class:`Kamailio`, stopped on exit."""
    server = Kamailio(binary, db_path, workdir, defines=defines)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


# -- SIPp -----------------------------------------------------------------------------------------


REGISTER_SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<!-- REGISTER, expect a 401 Digest challenge, answer it, expect {final}. -->
<scenario name="sipcert register {user}@{domain}">
  <send retrans="500">
    <![CDATA[
REGISTER sip:{domain} SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];rport;branch=[branch]
From: <sip:{user}@{domain}>;tag=[pid]SIPpTag[call_number]
To: <sip:{user}@{domain}>
Call-ID: [call_id]
CSeq: 1 REGISTER
Contact: <sip:{user}@{contact}>
Max-Forwards: 70
Expires: 300
User-Agent: SIPp sipcert-test
Content-Length: 0

    ]]>
  </send>
  <recv response="401" auth="true" />
  <send retrans="500">
    <![CDATA[
REGISTER sip:{domain} SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];rport;branch=[branch]
From: <sip:{user}@{domain}>;tag=[pid]SIPpTag[call_number]
To: <sip:{user}@{domain}>
Call-ID: [call_id]
CSeq: 2 REGISTER
Contact: <sip:{user}@{contact}>
[authentication username={user} password={password}]
Max-Forwards: 70
Expires: 300
User-Agent: SIPp sipcert-test
Content-Length: 0

    ]]>
  </send>
  <recv response="{final}" />
</scenario>
"""


@dataclass
class SippResult:
    returncode: int
    command: list[str]
    stdout: str
    errors: str
    messages: str

    def describe(self) -> str:
        return (
            f"$ {' '.join(self.command)}\nexit code {self.returncode}\n"
            f"--- stdout (tail) ---\n{self.stdout[-3000:]}\n--- errors ---\n{self.errors}\n"
            f"--- messages ---\n{self.messages}"
        )


def register_scenario(
    user: str, domain: str, password: str, *, contact: str, final: int = 200
) -> str:
    """A SIPp REGISTER scenario for ``user@domain`` whose Contact is ``user@contact``."""
    values = {
        "user": user,
        "domain": domain,
        "password": password,
        "contact": contact,
        "final": str(final),
    }
    # The values go into CDATA and attributes: allow no characters that could break out.
    for value in values.values():
        if any(c in value for c in "]<>&\"' \r\n"):
            raise ValueError(f"{value!r} cannot go into a SIPp scenario unquoted")
    return REGISTER_SCENARIO.format(**{k: escape(v) for k, v in values.items()})


def run_sipp(
    binary: str,
    scenario: str,
    target: tuple[str, int],
    workdir: Path,
    *,
    name: str = "scenario",
    transport: str = "u1",
    timeout: float = 20.0,
) -> SippResult:
    """Run ``scenario`` (XML text) once against ``target``; traces land in ``workdir``.

    ``transport`` is SIPp's ``-t``: ``u1`` (UDP, one socket) or ``t1`` (TCP, one connection).
    """
    scenario_path = workdir / f"{name}.xml"
    scenario_path.write_text(scenario, encoding="iso-8859-1")
    errors_path = workdir / f"{name}-errors.log"
    messages_path = workdir / f"{name}-messages.log"
    command = [
        binary,
        f"{target[0]}:{target[1]}",
        "-sf",
        str(scenario_path),
        "-i",
        "127.0.0.1",
        "-p",
        str(free_port()),
        "-t",
        transport,
        "-m",
        "1",
        "-timeout",
        "10s",
        "-timeout_error",
        "-recv_timeout",
        "5s",
        "-nostdin",
        "-trace_err",
        "-error_file",
        str(errors_path),
        "-trace_msg",
        "-message_file",
        str(messages_path),
    ]
    completed = subprocess.run(
        command,
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        check=False,
    )

    def read(path: Path) -> str:
        return path.read_text(errors="replace") if path.exists() else ""

    return SippResult(
        completed.returncode,
        command,
        completed.stdout.decode(errors="replace"),
        read(errors_path),
        read(messages_path),
    )


def sipp_register(
    sipp: str,
    server: Kamailio,
    tmp_path: Path,
    who: Subscriber,
    *,
    password: str,
    contact: str,
    final: int,
    transport: str = "u1",
) -> SippResult:
    """SIPp REGISTERs ``who``; the scenario must end with ``final`` (SIPp exit code 0)."""
    scenario = register_scenario(who.username, who.domain, password, contact=contact, final=final)
    name = f"register-{who.username}-{who.domain}-{final}-{secrets.token_hex(3)}"
    result = run_sipp(sipp, scenario, server.address, tmp_path, name=name, transport=transport)
    assert result.returncode == 0, result.describe() + "\n" + server.describe()
    # SIPp's own trace shows Kamailio's challenge and final answer.
    assert "SIP/2.0 401 Unauthorized" in result.messages, result.describe()
    assert f"SIP/2.0 {final} " in result.messages, result.describe()
    return result


# -- sipcert serve (the Store) -------------------------------------------------------------------


class SipcertStore:
    """``sipcert serve`` for one domain on a free 127.0.0.1 port, credentials from ``credentials``.

    Output (stderr) goes to ``log_path``; ready once it printed ``sipcert: serving`` and accepts
    TCP connections.
    """

    def __init__(
        self,
        sipcert: str,
        workdir: Path,
        *,
        domain: str,
        tls_cert: Path,
        tls_key: Path,
        credentials: str,
    ) -> None:
        self.port = free_port()
        self.log_path = workdir / f"sipcert-serve-{self.port}.log"
        self.command = [
            sipcert,
            "serve",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--domain",
            domain,
            "--tls-cert",
            str(tls_cert),
            "--tls-key",
            str(tls_key),
            "--db",
            f"sqlite:///{workdir / 'store' / 'certificates.db'}",  # absolute: 4 slashes
            "--credentials",
            credentials,
            "--data-dir",
            str(workdir / "store"),
        ]
        self._log_file = open(self.log_path, "wb")  # closed in stop()
        self.process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=self._log_file,
            cwd=workdir,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def describe(self) -> str:
        return f"$ {' '.join(self.command)}\n--- sipcert serve log ---\n{self.log()}"

    def log_contains(self, text: str, timeout: float = 5.0) -> bool:
        """Whether ``text`` shows up in the log within ``timeout`` seconds.

        The Store buffers its access log for up to a second (docs/store.md), so a request
        just answered may not be in the file yet.
        """
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"sipcert serve exited with {self.process.returncode}\n{self.describe()}"
                )
            if "sipcert: serving" in self.log():
                with contextlib.suppress(OSError):
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"sipcert serve did not start\n{self.describe()}")
            time.sleep(0.05)

    def stop(self) -> None:
        try:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(10)
        finally:
            self._log_file.close()
