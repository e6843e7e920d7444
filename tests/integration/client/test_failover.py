"""SRV failover past dead Store targets (RFC 2782, draft §4.1), against real dnsmasq.

A dead backend behind a load balancer accepts TCP and then closes or resets the connection
during the TLS handshake, or never answers. Every failure before the Store presents a
certificate moves on to the next target; a target that presents a certificate that does
not name the AOR's domain stops the fetch (draft §4.5: "close the connection and not
proceed") and never receives an HTTP byte. The final error names every target and, in
words, why each failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sipcert.client import AsyncUA, ClientConfig
from sipcert.errors import NameMismatchError, TransportError
from sipcert.proto.aor import parse_aor
from sipcert.proto.ca import TestCA
from sipcert.proto.certs import certificate_der, generate_identity
from tests.integration.client.conftest import DNSFactory
from tests.integration.client.peers import FakeStore, TLSServer, closed_port, server_context, srv

pytestmark = pytest.mark.peer("dnsmasq")

NOW = datetime.now(UTC)
BOB = parse_aor("bob@example.com")
#: Names of library classes and internals that must never reach a user.
LIBRARY_WORDS = re.compile(
    r"BrokenResource|EndOfStream|ConnectError|ConnectTimeout|ReadError|anyio|httpcore|httpx|"
    r"SSLError|SSLEOF|OSError|Errno|ExceptionGroup|All connection attempts"
)


class DeadBackend:
    """A TCP listener on 127.0.0.1 that accepts and then fails the TLS handshake.

    ``close``: reads the ClientHello and closes (FIN); ``reset``: reads it and resets (RST);
    ``hang``: reads it and never answers. ``received`` holds what each connection sent.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.received: list[bytes] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            conn.settimeout(5)
            with contextlib.suppress(OSError):
                self.received.append(conn.recv(65536))
            if self.mode == "hang":
                self._held.append(conn)
                continue
            if self.mode == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(5)
        for conn in self._held:
            conn.close()


@pytest.fixture
def dead() -> Iterator[list[DeadBackend]]:
    started: list[DeadBackend] = []
    yield started
    for backend in started:
        backend.close()


@pytest.fixture
def good_store(ca: TestCA, tmp_path: Path) -> Iterator[TLSServer]:
    """The stand-in Store of example.com with a correct certificate, holding Bob's one."""
    store = FakeStore({})
    store.certificates[str(BOB)] = [certificate_der(generate_identity(BOB, now=NOW).certificate)]
    context = server_context(ca.issue(["example.com"], now=NOW), tmp_path)
    server = TLSServer(context, {}, store)
    yield server
    server.close()


def fetch(config: ClientConfig) -> tuple[object, list[tuple[str, str, str]]]:
    """Fetch Bob's certificates; the result (or the error) and the connection events."""

    async def main() -> tuple[object, list[tuple[str, str, str]]]:
        async with AsyncUA(config) as ua:
            try:
                result: object = await ua.fetch(BOB)
            except TransportError as exc:
                result = exc
            return result, [(e.kind, e.target.host, e.detail) for e in ua.events]

    return asyncio.run(main())


def first_dead_then_good(dns_server: DNSFactory, dead_port: int, good_port: int) -> str:
    return dns_server(
        [
            srv("example.com", "a.example.com", dead_port, priority=10),
            srv("example.com", "b.example.com", good_port, priority=20),
            "--host-record=a.example.com,127.0.0.1",
            "--host-record=b.example.com,127.0.0.1",
        ],
        ["example.com"],
    )


@pytest.mark.parametrize(
    ("mode", "kind", "words"),
    [
        ("refused", "connect-failed", "connection refused by 127.0.0.1:{port}"),
        ("close", "tls-failed", "127.0.0.1:{port} closed the connection during the TLS handshake"),
        ("reset", "tls-failed", "connection reset by 127.0.0.1:{port} during the TLS handshake"),
        ("hang", "tls-failed", "TLS handshake timed out after 0.5 s"),
    ],
)
def test_dead_first_target_moves_on_to_the_next(
    mode: str,
    kind: str,
    words: str,
    dns_server: DNSFactory,
    ca_file: Path,
    tmp_path: Path,
    dead: list[DeadBackend],
    good_store: TLSServer,
) -> None:
    if mode == "refused":
        dead_port = closed_port()
    else:
        dead.append(DeadBackend(mode))
        dead_port = dead[0].port
    dns = first_dead_then_good(dns_server, dead_port, good_store.port)
    config = ClientConfig(dns=dns, ca_file=ca_file, home=tmp_path / "home", timeout=0.5)
    result, events = fetch(config)
    assert not isinstance(result, Exception), result
    assert result.url.startswith(f"https://b.example.com:{good_store.port}/")  # type: ignore[attr-defined]
    assert len(result.kept) == 1  # type: ignore[attr-defined]
    failed = [(kind, host, detail) for kind, host, detail in events if host == "a.example.com"]
    assert [k for k, _, _ in failed] == (["connected"] if mode != "refused" else []) + [kind]
    detail = failed[-1][2]
    assert words.format(port=dead_port) in detail
    assert not LIBRARY_WORDS.search(detail), detail
    assert ("tls-verified", "b.example.com") == events[-1][:2]
    for backend in dead:
        assert backend.received and all(chunk[:1] == b"\x16" for chunk in backend.received)
    # The certificates, then the default log check: this Store publishes none (404).
    assert [r.target for r in good_store.requests] == [
        "/search-cgi?email=bob%40example.com",
        "/log/vkey",
    ]


def test_every_target_dead_names_each_and_why(
    dns_server: DNSFactory, ca_file: Path, tmp_path: Path, dead: list[DeadBackend]
) -> None:
    dead.extend(DeadBackend(mode) for mode in ("close", "reset", "hang"))
    refused = closed_port()
    dns = dns_server(
        [
            srv("example.com", "a.example.com", refused, priority=10),
            srv("example.com", "b.example.com", dead[0].port, priority=20),
            srv("example.com", "c.example.com", dead[1].port, priority=30),
            srv("example.com", "d.example.com", dead[2].port, priority=40),
            srv("example.com", "e.example.com", 7000, priority=50),  # no address record
            *(f"--host-record={h}.example.com,127.0.0.1" for h in "abcd"),
        ],
        ["example.com"],
    )
    config = ClientConfig(dns=dns, ca_file=ca_file, home=tmp_path / "home", timeout=0.5)
    result, _ = fetch(config)
    assert isinstance(result, TransportError)
    message = str(result)
    assert result.exit_code == 9
    assert "\n" not in message and not LIBRARY_WORDS.search(message), message
    parts = {
        f"a.example.com:{refused}": "connection refused",
        f"b.example.com:{dead[0].port}": "closed the connection during the TLS handshake",
        f"c.example.com:{dead[1].port}": "connection reset by",
        f"d.example.com:{dead[2].port}": "timed out",
        "e.example.com:7000": "no address",
    }
    positions = []
    for where, why in parts.items():
        assert where in message, (where, message)
        chunk = message[message.index(where) :]
        assert why in chunk.split("; ")[0], (where, why, message)
        positions.append(message.index(where))
    assert positions == sorted(positions)  # in RFC 2782 order


def test_name_mismatch_on_the_first_target_stops_without_http(
    dns_server: DNSFactory,
    ca: TestCA,
    ca_file: Path,
    tmp_path: Path,
    good_store: TLSServer,
) -> None:
    """A live target that presents another domain's certificate is not a dead backend: the
    fetch stops there (draft §4.5), sends it no HTTP, and does not try the next target."""
    wrong = TLSServer(server_context(ca.issue(["example.org"], now=NOW), tmp_path), {}, None)
    try:
        dns = first_dead_then_good(dns_server, wrong.port, good_store.port)
        config = ClientConfig(dns=dns, ca_file=ca_file, home=tmp_path / "home", timeout=0.5)
        with pytest.raises(NameMismatchError) as caught:
            fetch(config)
        assert "example.org" in str(caught.value) and caught.value.exit_code == 5
        assert wrong.connections and all(bytes(c.received) == b"" for c in wrong.connections)
        assert good_store.connections == []
    finally:
        wrong.close()


def test_refused_aaaa_does_not_abort_a_resolved_a(
    dns_server: DNSFactory, ca_file: Path, tmp_path: Path, good_store: TLSServer
) -> None:
    """dnsmasq answers A for a.example.org and REFUSES its AAAA (no upstream, not local)."""
    dns = dns_server(
        [
            srv("example.com", "a.example.org", good_store.port),
            "--host-record=a.example.org,127.0.0.1",
        ],
        ["example.com"],
    )
    config = ClientConfig(dns=dns, ca_file=ca_file, home=tmp_path / "home")
    result, events = fetch(config)
    assert not isinstance(result, Exception), result
    assert len(result.kept) == 1  # type: ignore[attr-defined]
    assert [kind for kind, _, _ in events] == ["connected", "tls-verified"]
