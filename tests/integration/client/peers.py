"""Real peers for the client tests: dnsmasq on a loopback port, a TLS server with SNI.

:class:`TLSServer` is a tiny HTTPS/1.1 responder (stdlib ``ssl`` in threads) that records,
per connection, the SNI name, whether the handshake completed and every application byte it
received, so tests can prove that no HTTP request was sent after a refused handshake.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import secrets
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import dns.exception
import dns.resolver

from sipcert.errors import AuthenticationError, ForbiddenError, StaleNonceError
from sipcert.proto.ca import IssuedCertificate
from sipcert.proto.certs import certificate_der
from sipcert.proto.digest import DigestServer, StoredCredential
from sipcert.proto.store import (
    StorePolicy,
    authorize_upload,
    certificates_response,
    parse_query,
    parse_upload,
)
from tests.conftest import free_port

Handler = Callable[["Request"], tuple[int, list[tuple[str, str]], bytes]]


@dataclass
class Request:
    sni: str | None
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Connection:
    sni: str | None = None
    handshake_ok: bool = False
    handshake_error: str = ""
    received: bytearray = field(default_factory=bytearray)
    requests: list[Request] = field(default_factory=list)


def server_context(issued: IssuedCertificate, directory: Path) -> ssl.SSLContext:
    """A server context presenting ``issued`` (written to ``directory``)."""
    name = f"srv-{id(issued)}"
    cert_path = directory / f"{name}.crt"
    key_path = directory / f"{name}.key"
    cert_path.write_bytes(issued.cert_pem)
    key_path.write_bytes(issued.key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_path, key_path)
    return ctx


class TLSServer:
    """HTTPS on 127.0.0.1: ``contexts`` by SNI name, ``default`` for any other name."""

    def __init__(
        self,
        default: ssl.SSLContext,
        contexts: dict[str, ssl.SSLContext] | None = None,
        handler: Handler | None = None,
    ) -> None:
        self._contexts = contexts or {}
        self._handler = handler or (lambda request: (404, [], b"no certificates\n"))
        self.connections: list[Connection] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._stopping = threading.Event()
        base = default

        def pick(sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
            self._current_sni.value = name
            if name in self._contexts:
                sslobj.context = self._contexts[name]

        base.sni_callback = pick
        self._default = base
        self._current_sni = threading.local()
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return [r for c in self.connections for r in c.requests]

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            record = Connection()
            with self._lock:
                self.connections.append(record)
                self._sockets.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn, record), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket, record: Connection) -> None:
        conn.settimeout(5)
        try:
            self._current_sni.value = None
            try:
                tls = self._default.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                record.sni = self._current_sni.value
                record.handshake_error = str(exc)
                return
            record.sni = self._current_sni.value
            record.handshake_ok = True
            with self._lock:
                self._sockets.append(tls)
            buffer = b""
            while True:
                try:
                    chunk = tls.recv(65536)
                except (OSError, ssl.SSLError):
                    return
                if not chunk:
                    return
                record.received += chunk
                buffer += chunk
                while b"\r\n\r\n" in buffer:
                    head, _, rest = buffer.partition(b"\r\n\r\n")
                    lines = head.decode("latin-1").split("\r\n")
                    method, target, _ = lines[0].split(" ", 2)
                    headers = {}
                    for line in lines[1:]:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                    length = int(headers.get("content-length", "0"))
                    if len(rest) < length:
                        break
                    body, buffer = rest[:length], rest[length:]
                    request = Request(record.sni, method, target, headers, body)
                    with self._lock:
                        record.requests.append(request)
                    status, extra, payload = self._handler(request)
                    out = [f"HTTP/1.1 {status} X", f"Content-Length: {len(payload)}"]
                    out += [f"{k}: {v}" for k, v in extra]
                    tls.sendall(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + payload)
        finally:
            conn.close()

    def close(self) -> None:
        self._stopping.set()
        self._listener.close()
        self._accepter.join(5)
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()
        for thread in self._threads:
            thread.join(5)


def closed_port() -> int:
    """A TCP port on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def srv(domain: str, target: str, port: int, priority: int = 10, weight: int = 0) -> str:
    """A dnsmasq ``--srv-host`` option for the Store of ``domain`` (draft §4.1)."""
    return f"--srv-host=_certificates._tcp.{domain},{target},{port},{priority},{weight}"


@contextlib.contextmanager
def dnsmasq(binary: str, records: Sequence[str], domains: Sequence[str]) -> Iterator[str]:
    """Run dnsmasq with ``records`` (``--srv-host=...``, ``--host-record=...``) on a loopback
    port, authoritative for ``domains``; yields ``127.0.0.1:PORT``."""
    port = free_port()
    command = [
        binary,
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--listen-address=127.0.0.1",
        f"--port={port}",
        "--log-facility=-",
        *records,
        *(f"--local=/{domain}/" for domain in domains),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = port
        resolver.lifetime = 0.5
        deadline = time.monotonic() + 10
        while True:
            if process.poll() is not None:
                error = process.stderr.read().decode() if process.stderr else ""
                raise RuntimeError(f"dnsmasq exited: {error}")
            try:
                resolver.resolve(f"ready-probe.{domains[0]}.", "A")
            except dns.resolver.NXDOMAIN:
                break
            except dns.exception.DNSException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
            else:
                break
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)
        if process.stderr is not None:
            process.stderr.close()


class FakeStore:
    """A small Store behind :class:`TLSServer`, built from the protocol core (issue 3 stand-in).

    GET/PUT/DELETE on ``/search-cgi`` with Digest for PUT and DELETE; ``extra`` DER bodies are
    served with every GET, as a misbehaving Store would. It publishes no transparency log:
    ``/log/...`` is 404, which the UA's default log check asks once (docs/transparency.md).
    """

    def __init__(self, users: dict[str, str], *, expire_next_nonce: bool = False) -> None:
        self.users = users
        self.certificates: dict[str, list[bytes]] = {}
        self.extra: list[bytes] = []
        self.statuses: list[int] = []
        self._digest: dict[str, DigestServer] = {}
        self.stale_once = expire_next_nonce

    def _server(self, realm: str) -> DigestServer:
        if realm not in self._digest:
            self._digest[realm] = DigestServer(secrets.token_bytes(32), realm)
        return self._digest[realm]

    def __call__(self, request: Request) -> tuple[int, list[tuple[str, str]], bytes]:
        status, headers, body = self._answer(request)
        self.statuses.append(status)
        return status, headers, body

    def _answer(self, request: Request) -> tuple[int, list[tuple[str, str]], bytes]:
        if request.target.startswith("/log/"):
            return 404, [], b""
        _, _, query_text = request.target.partition("?")
        query = parse_query(query_text)
        domain = request.sni or ""
        aor = str(query.aor)
        if request.method == "GET":
            ders = [*self.certificates.get(aor, []), *self.extra]
            fingerprints = [hashlib.sha256(d).hexdigest() for d in ders]
            response = certificates_response(ders, fingerprints, max_age=60)
            return response.status, list(response.headers), response.body
        server = self._server(domain)
        now = time.time()
        try:
            user = server.authenticate(
                request.headers.get("authorization"),
                lambda name: (
                    StoredCredential(password=self.users[name]) if name in self.users else None
                ),
                method=request.method,
                request_uri=request.target,
                now=now,
            )
            if self.stale_once:
                self.stale_once = False
                raise StaleNonceError("pretend the nonce expired")
        except StaleNonceError:
            return 401, [("WWW-Authenticate", c) for c in server.challenges(now, stale=True)], b""
        except AuthenticationError:
            return 401, [("WWW-Authenticate", c) for c in server.challenges(now)], b""
        assert query.aor is not None
        if request.method == "PUT":
            try:
                cert = parse_upload(
                    request.body, request.headers.get("content-type"), max_size=16384
                )
                authorize_upload(
                    cert,
                    query.aor,
                    digest_username=user,
                    tls_domain=domain,
                    now=datetime.now(UTC),
                    policy=StorePolicy(),
                )
            except ForbiddenError as exc:
                return 403, [], f"{exc.reason}: {exc}\n".encode()
            der = certificate_der(cert)
            held = self.certificates.setdefault(aor, [])
            if der in held:
                return 200, [], b""
            held.append(der)
            return 201, [], b""
        held = self.certificates.get(aor, [])
        if query.cert_hash is None:
            if not held:
                return 404, [], b"nothing\n"
            self.certificates[aor] = []
            return 204, [], b""
        for der in held:
            digest = base64.b64encode(hashlib.sha1(der).digest()).decode().rstrip("=")  # noqa: S324
            if digest == query.cert_hash:
                held.remove(der)
                return 204, [], b""
        return 404, [], b"no such certificate\n"
