"""ConnectionGuard on a real aiohttp server over loopback TLS (no Store process).

These pin the aiohttp internals the guard relies on (``RequestHandler._messages``,
``_waiter``, ``_request_in_progress``, ``_ErrInfo``): an aiohttp upgrade that changes them
fails here first.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import ssl
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

from aiohttp import web

from sipcert.proto.ca import TestCA
from sipcert.server.config import ConnectionLimits
from sipcert.server.conn import (
    FD_RESERVE,
    ConnectionGuard,
    GuardedSite,
    connection_cap,
    fix_malloc_mmap_threshold,
    raise_nofile_limit,
)


def test_the_cap_leaves_descriptors_free() -> None:
    assert connection_cap(1024, 1024) == 1024 - FD_RESERVE
    assert connection_cap(1024, 524288) == 1024
    assert connection_cap(10, 20) == 1


def test_nofile_is_raised_to_the_hard_limit_and_malloc_is_pinned() -> None:
    soft = raise_nofile_limit()
    assert soft == resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert fix_malloc_mmap_threshold() is True


class Served:
    def __init__(self, guard: ConnectionGuard, port: int, client: ssl.SSLContext) -> None:
        self.guard, self.port, self.client = guard, port, client

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=self.client, server_hostname="example.com"
        )


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[Served]:
    now = datetime.now(UTC)
    ca = TestCA.create(now=now)
    issued = ca.issue(["example.com"], now=now, days=2)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert_chain = issued.cert_pem + issued.key_pem
    client = ssl.create_default_context(cadata=ca.cert_pem.decode())
    with tempfile.NamedTemporaryFile(suffix=".pem") as pem:
        pem.write(cert_chain)
        pem.flush()
        server_ctx.load_cert_chain(pem.name)

    async def hello(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(text="hello")

    limits = ConnectionLimits(
        tls_handshake_timeout=5, header_timeout=5, keepalive_timeout=5, max_connections=10,
        max_head_size=2048,
    )  # fmt: skip
    guard = ConnectionGuard(server_ctx, limits)
    server = web.Server(guard.wrap(hello), keepalive_timeout=limits.keepalive_timeout)
    guard.bind(server)
    runner = web.ServerRunner(server, handle_signals=False)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    await GuardedSite(runner, sock, guard, 16).start()
    try:
        yield Served(guard, sock.getsockname()[1], client)
    finally:
        await runner.cleanup()
        sock.close()


async def _until(condition: object, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():  # type: ignore[operator]
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def run(test: Callable[[Served], Awaitable[None]]) -> None:
    async def main() -> None:
        async with serving() as served:
            await test(served)

    asyncio.run(main())


def test_a_request_is_answered_and_its_connection_goes_idle() -> None:
    run(_answered)


def test_an_oversized_head_is_431() -> None:
    run(_oversized)


def test_idle_connections_are_shed_near_the_cap_and_unfinished_ones_at_it() -> None:
    run(_shed)


async def _answered(served: Served) -> None:
    reader, writer = await served.connect()
    writer.write(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert await reader.readexactly(5) == b"hello"
    await _until(lambda: served.guard.count == 1 and len(served.guard._states["idle"]) == 1)
    conn = next(iter(served.guard._states["idle"]))
    await _until(conn.waiting)
    writer.close()
    await _until(lambda: served.guard.count == 0)


async def _oversized(served: Served) -> None:
    reader, writer = await served.connect()
    writer.write(b"GET / HTTP/1.1\r\nHost: example.com\r\nX-Big: " + b"a" * 3000 + b"\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.split()[1] == b"431"  # aiohttp answers its refusals as HTTP/1.0
    assert b"request head over the limit of 2048 bytes" in await reader.read()
    writer.close()


async def _shed(served: Served) -> None:
    guard = served.guard
    idle = [await served.connect() for _ in range(8)]
    await _until(lambda: all(c.waiting() for c in guard._states["idle"]) and guard.count == 8)
    # 9 = 90 % of 10: the ninth connection sheds the oldest idle one.
    raw = [await asyncio.open_connection("127.0.0.1", served.port) for _ in range(4)]
    await _until(lambda: guard.shed >= 1)
    assert guard.count <= guard.cap
    reader, writer = await served.connect()  # still admitted
    writer.write(b"GET / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
    assert (await reader.read()).startswith(b"HTTP/1.1 200")
    for _, w in idle + raw + [(reader, writer)]:
        w.close()
    await _until(lambda: guard.count == 0)


def test_aiohttp_marks_a_request_in_progress_until_its_answer_is_written() -> None:
    """The hot path answers once aiohttp's handlers have returned and nothing is in
    progress (``_request_in_progress``), before aiohttp's loop is back at its waiter."""

    async def main() -> None:
        seen: list[object] = []
        protocols: list[object] = []

        async def handler(request: web.BaseRequest) -> web.StreamResponse:
            protocols.append(request.protocol)
            seen.append(request.protocol._request_in_progress)  # type: ignore[attr-defined]
            return web.Response(text="x")

        runner = web.ServerRunner(web.Server(handler), handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ") and seen == [True]
            await _until(lambda: protocols[0]._request_in_progress is False)  # type: ignore[attr-defined]
            writer.close()
        finally:
            await runner.cleanup()

    asyncio.run(main())
