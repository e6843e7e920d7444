"""The hot GET answers exactly as aiohttp's path does, over real TLS on 127.0.0.1 (issue 13).

Two Stores share one SQLite file: one with the hot GET (server.hotget), one without. Every
request of the corpus goes, as the same bytes, to both; the answers must be the same bytes
but for the ``Date`` value, and so must the access log lines but for the seconds. A write
through a third connection to the file must be seen by the next GET of the hot Store.
"""

from __future__ import annotations

import asyncio
import gc
import io
import json
import logging
import re
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from sipcert.proto.ca import TestCA
from sipcert.proto.digest import MemoryNonceCounter
from sipcert.proto.store import StorePolicy, etag_for
from sipcert.server import run
from sipcert.server.answers import AnswerCache, version_source
from sipcert.server.app import AccessLog, StoreApp
from sipcert.server.config import ConnectionLimits
from sipcert.server.credentials import FileCredentials
from sipcert.server.hotget import HotGet, hot_get_for
from sipcert.server.metrics import Metrics
from sipcert.server.run import serve_app
from sipcert.server.tls import build_sni_context, load_domain_context
from sipcert.storage import CertificateStore, StoredCertificate, open_store
from tests.factories import make_cert, make_key

NOW = datetime.now(UTC).replace(microsecond=0)
ALICE = "alice@example.com"
BOB = "bob@example.com"  # two certificates
CAROL = "carol@example.com"  # one certificate expiring in an hour
NET = "dave@example.net"
_DATE = re.compile(rb"\r\nDate: [A-Za-z0-9:, ]+ GMT\r\n")
_SECONDS = re.compile(r" [0-9]+\.[0-9]{6}$")


class Clock:
    def __init__(self) -> None:
        self.now = NOW.timestamp()

    def __call__(self) -> float:
        return self.now


class Counted(Metrics):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, int]] = []

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.seen.append((route, method, status))


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(_SECONDS.sub("", record.getMessage()))


@dataclass
class Side:
    app: StoreApp
    port: int
    metrics: Counted
    lines: Lines
    client: ssl.SSLContext
    json_lines: io.StringIO

    async def exchange(self, data: bytes, domain: str = "example.com") -> bytes:
        """Send ``data`` on a new connection; what the Store sends until it has answered
        every request in it or closes (keep-alive answers must be framed)."""
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=self.client, server_hostname=domain
        )
        writer.write(data)
        await writer.drain()
        methods = re.findall(rb"^([A-Z]+) /", data, re.MULTILINE)
        got = b""
        while not _answered(got, methods):
            chunk = await asyncio.wait_for(reader.read(65536), 10)
            if not chunk:
                break
            got += chunk
        writer.close()
        return got


def _answered(data: bytes, methods: list[bytes]) -> bool:
    """Whether ``data`` holds a whole answer to each of ``methods``' requests."""
    for method in methods:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return False
        head, data = data[:end], data[end + 4 :]
        length = re.search(rb"\r\nContent-Length: ([0-9]+)", head)
        if method != b"HEAD" and length is not None:
            if len(data) < int(length[1]):
                return False
            data = data[int(length[1]) :]
    return True


@dataclass
class Pair:
    hot: Side
    plain: Side
    clock: Clock
    writer: CertificateStore
    hot_get: HotGet
    ders: dict[str, list[bytes]] = field(default_factory=dict)

    def logged_alike(self) -> None:
        """The same access lines (but for time and seconds) and metrics on both sides."""
        assert self.hot.lines.lines == self.plain.lines.lines
        hot, plain = (_fields(side.json_lines.getvalue()) for side in (self.hot, self.plain))
        assert hot == plain and (hot or self.hot.lines.lines)
        assert self.hot.metrics.seen == self.plain.metrics.seen

    async def same(self, data: bytes, domain: str = "example.com") -> bytes:
        """Both answers to ``data``, which must be equal but for Date; the hot one."""
        hot_answer = await self.hot.exchange(data, domain)
        plain_answer = await self.plain.exchange(data, domain)
        assert _DATE.sub(b"\r\nDate: -\r\n", hot_answer) == _DATE.sub(
            b"\r\nDate: -\r\n", plain_answer
        ), (data, hot_answer[:400], plain_answer[:400])
        return hot_answer


def _fields(text: str) -> list[object]:
    """Access lines of an AccessLog without their time and seconds: JSON ones as fields,
    plain ones as the text after the time (``INFO sipcert.access: ...``)."""
    found: list[object] = []
    for line in text.splitlines():
        if line.startswith("{"):
            fields = json.loads(line)
            found.append({k: v for k, v in fields.items() if k not in ("time", "seconds")})
        else:
            found.append(_SECONDS.sub("", line.split(" ", 2)[2]))
    return found


def _stored(aor: str, slot: int, hours: float, label: str | None) -> StoredCertificate:
    cert = make_cert(
        make_key("ec-p256", aor, slot),
        aor,
        not_before=NOW - timedelta(minutes=5),
        not_after=NOW + timedelta(hours=hours),
    )
    return StoredCertificate.from_der(
        aor,
        cert.public_bytes(serialization.Encoding.DER),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        created=NOW - timedelta(minutes=1),
        label=label,
    )


@asynccontextmanager
async def _side(
    tmp: Path,
    contexts: dict[str, object],
    ca: bytes,
    clock: Clock,
    *,
    hot: bool,
    cache_mb: int,
    limit_args: dict[str, Any],
    json_log: bool,
    plain_log: bool = False,
) -> AsyncIterator[Side]:
    storage = open_store(f"sqlite:///{tmp}/store.db")
    version = version_source(storage)
    assert version is not None
    metrics = Counted()
    app = StoreApp(
        domains=contexts,
        storage=storage,
        credentials=FileCredentials(tmp / "users.json"),
        policy=StorePolicy(max_age=30),
        nonce_secret=b"k" * 32,
        nonce_counter=MemoryNonceCounter(),
        clock=clock,
        metrics=metrics,
        answer_cache=AnswerCache(version, max_bytes=cache_mb << 20) if cache_mb else None,
    )
    lines = Lines()
    access = logging.getLogger(f"hot-get-test.{'hot' if hot else 'plain'}")
    access.setLevel(logging.INFO)
    access.propagate = False
    access.addHandler(lines)
    written = io.StringIO()
    sink: AccessLog | logging.Logger = access
    if json_log or plain_log:  # the buffered access log, written at once (max_buffer=1)
        sink = AccessLog(written, json_lines=json_log, max_buffer=1)
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    stop = asyncio.Event()
    limits = ConnectionLimits(max_head_size=1024, **limit_args)
    task = asyncio.create_task(
        serve_app(
            app,
            build_sni_context(contexts),  # type: ignore[arg-type]
            [sock],
            stop,
            access_log=sink,
            hot_get=hot,
            limits=limits,
        )
    )
    client = ssl.create_default_context(cadata=ca.decode())
    side = Side(app, sock.getsockname()[1], metrics, lines, client, written)
    try:
        yield side
    finally:
        stop.set()
        await task
        sock.close()
        await storage.close()
        access.removeHandler(lines)


def run_pair(
    tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
    scenario: Callable[[Pair], Awaitable[None]],
    *,
    cache_mb: int,
    limit_args: dict[str, Any] | None = None,
    json_log: bool = False,
    plain_log: bool = False,
) -> None:
    made: list[HotGet] = []

    def keep(*args: Any, **kw: Any) -> HotGet | None:
        hot = hot_get_for(*args, **kw)
        if hot is not None:
            made.append(hot)
        return hot

    monkeypatch.setattr(run, "hot_get_for", keep)
    now = datetime.now(UTC)
    ca = TestCA.create(now=now)
    contexts: dict[str, object] = {}
    for domain in ("example.com", "example.net"):
        issued = ca.issue([domain], now=now)
        (tmp / f"{domain}.pem").write_bytes(issued.cert_pem)
        (tmp / f"{domain}.key").write_bytes(issued.key_pem)
        contexts[domain] = load_domain_context(
            domain, tmp / f"{domain}.pem", tmp / f"{domain}.key", now=now
        )

    args = {"limit_args": limit_args or {}, "json_log": json_log, "plain_log": plain_log}

    async def main() -> None:
        clock = Clock()
        writer = open_store(f"sqlite:///{tmp}/store.db")
        ders: dict[str, list[bytes]] = {}
        for aor, slot, hours, label in (
            (ALICE, 0, 48, "phone"),
            (BOB, 0, 48, None),
            (BOB, 1, 48, "desk =?utf-8?q?caf=C3=A9?="),
            (CAROL, 0, 1, None),
            (NET, 0, 48, None),
        ):
            stored = _stored(aor, slot, hours, label)
            await writer.add(stored, max_per_aor=10, now=NOW)
            ders.setdefault(aor, []).append(stored.der)
        async with (
            _side(tmp, contexts, ca.cert_pem, clock, hot=True, cache_mb=cache_mb, **args) as hot,
            _side(tmp, contexts, ca.cert_pem, clock, hot=False, cache_mb=cache_mb, **args) as plain,
        ):
            for _ in range(200):  # serve_app makes it as it starts
                if made:
                    break
                await asyncio.sleep(0.01)
            assert len(made) == 1
            await scenario(Pair(hot, plain, clock, writer, made[0], ders))
        await writer.close()

    asyncio.run(main())


def get(
    aor: str = ALICE,
    *,
    method: str = "GET",
    attribute: str = "email",
    extra: str = "",
    host: str = "example.com",
) -> bytes:
    user, _, domain = aor.partition("@")
    return (
        f"{method} /search-cgi?{attribute}={user}%40{domain} HTTP/1.1\r\nHost: {host}\r\n"
        f"{extra}\r\n"
    ).encode()


def _etag(pair: Pair, aor: str) -> str:
    from sipcert.storage import sha256_of

    return etag_for([sha256_of(der) for der in pair.ders[aor]])


CACHE_SIZES = [0, 16]


@pytest.mark.parametrize("cache_mb", CACHE_SIZES)
def test_the_corpus_is_answered_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache_mb: int
) -> None:
    async def scenario(pair: Pair) -> None:
        etag = _etag(pair, ALICE)
        weak = "W/" + etag
        simple = [
            get(),
            get(ALICE, extra="User-Agent: sipcert/0.2\r\nAccept: */*\r\n"),
            get(ALICE, attribute="sip"),
            get(ALICE, attribute="uri", host="example.com:443"),
            get(BOB),
            get(CAROL),
            get("nobody@example.com"),
            get(method="HEAD"),
            get("nobody@example.com", method="HEAD"),
            get(extra=f"If-None-Match: {etag}\r\n"),
            get(extra=f"If-None-Match: {weak}\r\n"),
            get(extra=f'If-None-Match: "other", {etag}\r\n'),
            get(extra='If-None-Match: "other"\r\n'),
            get(extra="If-None-Match: *\r\n"),
            get("nobody@example.com", extra="If-None-Match: *\r\n"),
            get(method="HEAD", extra=f"If-None-Match: {etag}\r\n"),
            get(extra="Connection: close\r\n"),
            get(extra="connection: Keep-Alive\r\n"),
            get(BOB, method="HEAD", extra="Connection: close\r\n"),
            get(ALICE, host="example.net"),  # the domain is the SNI name's, never Host's
        ]
        for count, request in enumerate(simple, 1):
            await pair.same(request)
            assert pair.hot_get.answered == count, request  # not by aiohttp
        handed = [
            get(NET),  # draft §4.3: another domain's AOR on this connection
            b"GET /search-cgi?email=alice@example.com HTTP/1.1\r\nHost: example.com\r\n\r\n",
            b"GET /search-cgi?email=alice%40example.com&email=x HTTP/1.1\r\nHost: a\r\n\r\n",
            get(extra="Content-Length: 0\r\n"),
            get(extra="Expect: 100-continue\r\n"),
            get(extra="Connection: upgrade\r\nUpgrade: h2c\r\n"),
            get(extra="Connection: close, keep-alive\r\n"),
            get(extra="If-None-Match: *\r\nIf-None-Match: *\r\n"),
            get(extra="User-Agent: a\r\nUser-Agent: a\r\n"),
            get(extra="X-Folded: a\r\n b\r\n"),
            b"GET /search-cgi?email=alice%40example.com HTTP/1.1\r\n\r\n",  # no Host
            get(host="exa mple.com"),
            get(host="example.com\r\nHost: example.com"),
            b"GET /search-cgi?email=alice%40example.com HTTP/1.0\r\nHost: example.com\r\n\r\n",
            b"GET /search-cgi?email=alice%40example.com HTTP/1.1\nHost: example.com\n\n",
            b"POST /search-cgi?email=alice%40example.com HTTP/1.1\r\nHost: example.com\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: example.com\r\n\r\n",
            get("a" * 600 + "@example.com"),
            get(extra="User-Agent: " + "u" * 1100 + "\r\n"),  # over max_head_size: 431
        ]
        for request in handed:
            await pair.same(request)
        await pair.same(get(ALICE), domain="example.net")  # SNI example.net, AOR of .com
        await pair.same(get(NET, host="example.net"), domain="example.net")
        assert pair.hot_get.answered == len(simple) + 1  # the last one
        pair.logged_alike()

    run_pair(tmp_path, monkeypatch, scenario, cache_mb=cache_mb)


@pytest.mark.parametrize("cache_mb", CACHE_SIZES)
def test_keep_alive_sequences_and_pipelining(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache_mb: int
) -> None:
    async def scenario(pair: Pair) -> None:
        etag = _etag(pair, BOB)
        sequence = [
            get(),
            get(BOB),
            get(method="HEAD"),
            get(BOB, extra=f"If-None-Match: {etag}\r\n"),
        ]
        answer = await pair.same(b"".join(sequence))  # pipelined: all in one write
        assert answer.count(b"HTTP/1.1 ") == 4
        # A simple request, then one for aiohttp, then a simple one, in one write.
        answer = await pair.same(get() + get(NET) + get(BOB))
        assert answer.count(b"HTTP/1.1 ") == 3
        pair.logged_alike()
        # RFC 9112 §9.6: nothing after a request with Connection: close is answered. (With
        # aiohttp alone its parser refuses the whole read, 400 "data after close".)
        before = pair.hot_get.answered
        closing = get() + get(BOB) + get(extra="Connection: close\r\n") + get(BOB)
        answer = await pair.hot.exchange(closing)
        assert answer.count(b"HTTP/1.1 200 OK\r\n") == 3 and pair.hot_get.answered == before + 3
        assert answer.endswith(b"Connection: close\r\n\r\n" + pair.ders[ALICE][0])
        # One head in two writes goes to aiohttp (its parser holds the first part).
        for side in (pair.hot, pair.plain):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", side.port, ssl=side.client, server_hostname="example.com"
            )
            request = get(extra="Connection: close\r\n")
            writer.write(request[:20])
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(request[20:])
            assert (await reader.read()).startswith(b"HTTP/1.1 200 OK\r\n")
            writer.close()
        # Requests one after the other on one connection, hot and aiohttp's alternating.
        for side in (pair.hot, pair.plain):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", side.port, ssl=side.client, server_hostname="example.com"
            )
            for request in (get(), get(NET), get(), get("nobody@example.com"), get(NET), get()):
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"Content-Length: ([0-9]+)", head)[1])  # type: ignore[index]
                await reader.readexactly(length)
            writer.close()

    run_pair(tmp_path, monkeypatch, scenario, cache_mb=cache_mb)


@pytest.mark.parametrize("cache_mb", CACHE_SIZES)
def test_a_write_elsewhere_and_expiry_are_seen_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache_mb: int
) -> None:
    async def scenario(pair: Pair) -> None:
        assert b" 404 " in (await pair.same(get("erin@example.com")))[:20]
        assert b" 200 " in (await pair.same(get(CAROL)))[:20]
        stored = _stored("erin@example.com", 0, 48, None)
        await pair.writer.add(stored, max_per_aor=10, now=NOW)  # another connection writes
        answer = await pair.same(get("erin@example.com"))
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(stored.der)
        assert await pair.writer.delete("erin@example.com", None) == 1
        assert b" 404 " in (await pair.same(get("erin@example.com")))[:20]
        pair.clock.now += 2 * 3600  # draft §4.4: carol's only certificate has expired
        assert b" 404 " in (await pair.same(get(CAROL)))[:20]
        pair.logged_alike()

    run_pair(tmp_path, monkeypatch, scenario, cache_mb=cache_mb)


async def _hot_only(side: Side) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection that had one hot answer (so aiohttp's handler was never made)."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", side.port, ssl=side.client, server_hostname="example.com"
    )
    writer.write(get())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    length = re.search(rb"Content-Length: ([0-9]+)", head)
    assert length is not None
    await reader.readexactly(int(length[1]))
    return reader, writer


def test_hot_only_connections_keep_the_deadlines_and_the_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without aiohttp's handler, the hot GET keeps keepalive_timeout and the shedding."""

    async def scenario(pair: Pair) -> None:
        loop = asyncio.get_running_loop()
        reader, writer = await _hot_only(pair.hot)
        start = loop.time()
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, with close_notify
        assert 0.4 <= loop.time() - start <= 5
        writer.close()
        # Each answer moves the deadline on (one timer, re-armed when it fires early).
        reader, writer = await _hot_only(pair.hot)
        await asyncio.sleep(0.25)
        second = loop.time()  # the second answer leaves after this: timers never fire early
        writer.write(get())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        length = re.search(rb"Content-Length: ([0-9]+)", head)
        assert length is not None
        assert await reader.readexactly(int(length[1])) == pair.ders[ALICE][0]
        assert await asyncio.wait_for(reader.read(), 10) == b""
        assert loop.time() - second >= 0.4  # from the second answer, not the first
        writer.close()
        # max_connections 10: from 9 on, each new connection closes the one idle longest.
        kept = [await _hot_only(pair.hot) for _ in range(9)]
        kept.append(await _hot_only(pair.hot))
        assert await asyncio.wait_for(kept[0][0].read(), 5) == b""
        for _, writer in kept:
            writer.close()

    run_pair(
        tmp_path,
        monkeypatch,
        scenario,
        cache_mb=0,
        limit_args={"keepalive_timeout": 0.5, "max_connections": 10},
    )


@pytest.mark.parametrize("kind", ["json", "plain"])
def test_buffered_access_lines_are_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """The AccessLog of ``sipcert serve``: JSON lines, and the plain lines the hot GET
    writes inline (issue 13), as aiohttp's path writes them."""

    async def scenario(pair: Pair) -> None:
        for request in (get(), get(method="HEAD"), get("nobody@example.com"), get(NET)):
            await pair.same(request)
        assert pair.hot_get.answered == 3
        pair.logged_alike()
        if kind == "plain":
            lines = _fields(pair.hot.json_lines.getvalue())
            assert len(lines) == 4
            assert isinstance(lines[0], str)
            assert lines[0].startswith(
                'INFO sipcert.access: 127.0.0.1 "GET /search-cgi?email=alice%40example.com '
                'HTTP/1.1" 200 '
            )

    run_pair(
        tmp_path,
        monkeypatch,
        scenario,
        cache_mb=0,
        json_log=kind == "json",
        plain_log=kind == "plain",
    )


async def _raw_tls(side: Side) -> tuple[socket.socket, ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    """A TLS client over memory BIOs, so the test sees the TCP stream's end itself."""
    loop = asyncio.get_running_loop()
    sock = socket.create_connection(("127.0.0.1", side.port))
    sock.setblocking(False)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = side.client.wrap_bio(incoming, outgoing, server_hostname="example.com")
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            await loop.sock_sendall(sock, outgoing.read())
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), 10)
            assert chunk, "closed during the handshake"
            incoming.write(chunk)
    await loop.sock_sendall(sock, outgoing.read())
    return sock, tls, incoming, outgoing


def test_a_hot_close_closes_the_socket_without_waiting_for_the_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After ``Connection: close``, the answer and a close_notify, then the TCP close at
    once (nginx's way), not after the client's close_notify (up to tls_handshake_timeout,
    30 s here). A close request with more behind it in the read keeps the full shutdown."""

    async def scenario(pair: Pair) -> None:
        loop = asyncio.get_running_loop()
        sock, tls, incoming, outgoing = await _raw_tls(pair.hot)
        with sock:
            tls.write(get(extra="Connection: close\r\n"))
            await loop.sock_sendall(sock, outgoing.read())
            while chunk := await asyncio.wait_for(loop.sock_recv(sock, 65536), 5):
                incoming.write(chunk)  # until the server's FIN: our close_notify is never sent
        incoming.write_eof()  # a TCP end without close_notify would raise SSLEOFError
        got = b""
        while chunk := tls.read(65536):  # b"": the server's close_notify (ZERO_RETURN)
            got += chunk
        head, _, body = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"\r\nConnection: close\r\n" in head + b"\r\n"
        assert body == pair.ders[ALICE][0]
        # The same answer as aiohttp's path gives (which closes as it always did).
        plain = await pair.plain.exchange(get(extra="Connection: close\r\n"))
        assert _DATE.sub(b"", got) == _DATE.sub(b"", plain)

    run_pair(
        tmp_path,
        monkeypatch,
        scenario,
        cache_mb=0,
        limit_args={"tls_handshake_timeout": 30.0},
    )


def test_closed_connections_are_freed_without_the_cyclic_gc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The TLS layer keeps the buffered protocol's methods after the connection is lost;
    the connection must not keep the TLS layer in turn (a cycle held 256 KiB and the BIOs
    of each closed connection until a full collection: +60 MiB after 100 large heads)."""
    from sipcert.server.conn import _Conn

    async def scenario(pair: Pair) -> None:
        def conns() -> int:
            return sum(isinstance(o, _Conn) for o in gc.get_objects())

        gc.collect()
        before = conns()
        gc.disable()
        try:
            for _ in range(3):  # hot answers only, then aiohttp's path, then a close
                _reader, writer = await _hot_only(pair.hot)
                writer.close()
                await pair.hot.exchange(get(method="PUT"))
                await pair.hot.exchange(get(extra="Connection: close\r\n"))
            for _ in range(500):  # until every connection is closed on the server's side
                if conns() <= before:
                    break
                await asyncio.sleep(0.01)
            assert conns() <= before
        finally:
            gc.enable()

    run_pair(tmp_path, monkeypatch, scenario, cache_mb=0)
