"""TCP and TLS streams on plain asyncio transports with the stdlib ``ssl`` (issue 13).

:class:`AsyncioBackend` is the network backend under :class:`~sipcert.client.tls.RoutedBackend`:
the same ``connect_tcp`` / ``start_tls`` / ``read`` / ``write`` interface as httpcore's
anyio backend, so the target walk, SNI and the exact name check of draft §4.3 are
unchanged, but each read and write is one buffer operation on an ``asyncio.Protocol``
instead of anyio's stream, task-group and cancel-scope layers (about a third of a fetch's
client CPU went there). Failures are this module's :class:`NetworkError` and
:class:`NetworkTimeout` kinds, which the walk and the transport turn into
:mod:`sipcert.errors`; the cause stays chained, so a certificate verification failure is
still told from a dead backend.

The interface (:class:`NetworkStream`, :class:`NetworkBackend`: structural protocols that
httpcore's streams and backends also satisfy) and the failure kinds are httpcore's, defined
here so that the lean GET of ``sipcert fetch`` does not import httpcore (with trio, which it
loads when installed, a third of the command's start-up; issue 13). A backend a caller
gives (tests do, subclassing httpcore's classes) may raise httpcore's own
kinds instead: :func:`connect_failures`, :func:`network_failures`, :func:`timeout_failures`
and :func:`stream_failures` name both whenever httpcore is loaded, so a failure is judged
the same whichever library raised it.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import sys
from collections.abc import Iterable
from typing import Any, Protocol

__all__ = [
    "AsyncioBackend",
    "AsyncioStream",
    "ConnectError",
    "ConnectTimeout",
    "NetworkBackend",
    "NetworkError",
    "NetworkStream",
    "NetworkTimeout",
    "ReadError",
    "ReadTimeout",
    "WriteError",
    "WriteTimeout",
    "connect_failures",
    "network_failures",
    "stream_failures",
    "timeout_failures",
]


class NetworkError(Exception):
    """The network failed (httpcore's ``NetworkError``): the peer refused, reset or closed."""


class ConnectError(NetworkError):
    """No connection, or no TLS session on it (httpcore's ``ConnectError``)."""


class ReadError(NetworkError):
    """Reading failed (httpcore's ``ReadError``)."""


class WriteError(NetworkError):
    """Writing failed (httpcore's ``WriteError``)."""


class NetworkTimeout(Exception):  # noqa: N818 (httpcore's TimeoutException)
    """A network step took longer than its timeout (httpcore's ``TimeoutException``)."""


class ConnectTimeout(NetworkTimeout):
    """Connecting, or the TLS handshake, timed out."""


class ReadTimeout(NetworkTimeout):
    """Reading timed out."""


class WriteTimeout(NetworkTimeout):
    """Writing timed out."""


def _httpcore_kinds(*names: str) -> tuple[type[Exception], ...]:
    """httpcore's exception classes ``names`` when httpcore is loaded, else none: when it
    is not, no backend in this process can raise them."""
    httpcore = sys.modules.get("httpcore")
    kinds = (getattr(httpcore, name, None) for name in names)
    return tuple(k for k in kinds if isinstance(k, type) and issubclass(k, Exception))


def connect_failures(*extra: type[Exception]) -> tuple[type[Exception], ...]:
    """What a failed ``connect_tcp`` or ``start_tls`` raises (ours and httpcore's), and
    ``extra``."""
    return (
        ConnectError,
        ConnectTimeout,
        *_httpcore_kinds("ConnectError", "ConnectTimeout"),
        *extra,
    )


def network_failures(*extra: type[Exception]) -> tuple[type[Exception], ...]:
    """Every network failure of a stream but a timeout (ours and httpcore's), and ``extra``."""
    return (NetworkError, *_httpcore_kinds("NetworkError"), *extra)


def timeout_failures(*extra: type[Exception]) -> tuple[type[Exception], ...]:
    """Every network timeout (ours and httpcore's), and ``extra``."""
    return (NetworkTimeout, *_httpcore_kinds("TimeoutException"), *extra)


def stream_failures(*extra: type[Exception]) -> tuple[type[Exception], ...]:
    """Every network failure or timeout of a stream (ours and httpcore's), and ``extra``."""
    return network_failures(*timeout_failures(*extra))


class NetworkStream(Protocol):
    """A byte stream to a peer, TLS-capable: httpcore's ``AsyncNetworkStream`` interface,
    structurally, so that httpcore's own streams (a test's or a caller's) fit it too."""

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes: ...

    async def write(self, buffer: bytes, timeout: float | None = None) -> None: ...

    async def aclose(self) -> None: ...

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> NetworkStream: ...

    def get_extra_info(self, info: str) -> Any: ...


class NetworkBackend(Protocol):
    """Opens :class:`NetworkStream` connections: httpcore's ``AsyncNetworkBackend``
    interface, structurally (httpcore's backends fit it too)."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> NetworkStream: ...

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> NetworkStream: ...

    async def sleep(self, seconds: float) -> None: ...


#: Bytes buffered from the peer before reading is paused until the caller reads.
_HIGH_WATER = 1 << 20
#: How long a close waits for the peer's TLS close_notify before the socket is dropped.
_CLOSE_WAIT = 0.1


class _Protocol(asyncio.Protocol):
    """Buffers what arrives and wakes the one reader or writer waiting for it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self.paused_reading = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._write_waiter: asyncio.Future[None] | None = None
        self._writing_paused = False
        self.lost = False
        self._lost_waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # noqa: S101 (a stream transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > _HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
            self.paused_reading = True
        self._wake_reader()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake_reader()
        return False  # close our side too: a Store never half-closes on purpose

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = self.lost = True
        self.error = exc
        self._wake_reader()
        for waiter in (self._write_waiter, self._lost_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        self._write_waiter = self._lost_waiter = None

    async def wait_lost(self, timeout: float) -> bool:
        """Whether the connection ended within ``timeout`` seconds."""
        if not self.lost:
            self._lost_waiter = asyncio.get_running_loop().create_future()
            try:
                await _wait(asyncio.get_running_loop(), self._lost_waiter, timeout)
            except TimeoutError:
                return False
        return True

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        waiter, self._write_waiter = self._write_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_reader(self) -> None:
        waiter, self._read_waiter = self._read_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait_readable(self, timeout: float | None) -> None:
        loop = asyncio.get_running_loop()
        waiter = self._read_waiter = loop.create_future()
        await _wait(loop, waiter, timeout)

    async def wait_writable(self, timeout: float | None) -> None:
        if not self._writing_paused:
            return
        loop = asyncio.get_running_loop()
        waiter = self._write_waiter = loop.create_future()
        await _wait(loop, waiter, timeout)


async def _wait(
    loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[None], timeout: float | None
) -> None:
    """Await ``waiter``; ``TimeoutError`` after ``timeout`` seconds (one timer, no task)."""
    if timeout is None:
        await waiter
        return

    def expire() -> None:
        if not waiter.done():
            waiter.set_exception(TimeoutError())

    timer = loop.call_later(timeout, expire)
    try:
        await waiter
    finally:
        timer.cancel()


class AsyncioStream:
    """One TCP connection, later TLS over it (:meth:`start_tls`)."""

    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport = transport
        self._protocol = protocol

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        protocol = self._protocol
        if not protocol.buffer:
            if protocol.eof:
                return self._at_eof()
            try:
                await protocol.wait_readable(timeout)
            except TimeoutError as exc:
                raise ReadTimeout("reading timed out") from exc
            if not protocol.buffer:
                return self._at_eof()
        data = bytes(protocol.buffer[:max_bytes])
        del protocol.buffer[:max_bytes]
        if protocol.paused_reading and len(protocol.buffer) <= _HIGH_WATER:
            protocol.paused_reading = False
            self._transport.resume_reading()
        return data

    def _at_eof(self) -> bytes:
        """``b""`` at a clean end; the cause of an unclean one as a :class:`ReadError`."""
        error = self._protocol.error
        if error is not None:
            raise ReadError(str(error) or type(error).__name__) from error
        return b""

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        protocol = self._protocol
        if protocol.eof or self._transport.is_closing():
            cause = protocol.error or ConnectionResetError("the connection is closed")
            raise WriteError(str(cause)) from cause
        self._transport.write(buffer)
        try:
            await protocol.wait_writable(timeout)
        except TimeoutError as exc:
            raise WriteTimeout("writing timed out") from exc

    async def aclose(self) -> None:
        """Close (with TLS, send close_notify and give the peer a moment to answer), then
        drop the socket, so that none outlives the event loop."""
        self._transport.close()
        if not await self._protocol.wait_lost(_CLOSE_WAIT):
            self._transport.abort()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> NetworkStream:
        """TLS over this connection, SNI ``server_hostname``; verified by ``ssl_context``."""
        loop = asyncio.get_running_loop()
        closed = False
        try:
            async with asyncio.timeout(timeout):
                transport = await loop.start_tls(
                    self._transport,
                    self._protocol,
                    ssl_context,
                    server_hostname=server_hostname,
                    ssl_handshake_timeout=None if timeout is None else timeout + 1,
                )
        except TimeoutError as exc:
            self._transport.close()
            raise ConnectTimeout("the TLS handshake timed out") from exc
        except ConnectionResetError as exc:
            self._transport.close()
            if exc.errno is not None:  # a real reset; asyncio says an EOF without an errno
                raise ConnectError(str(exc)) from exc
            closed = True
        except OSError as exc:  # ssl.SSLError is an OSError
            self._transport.close()
            raise ConnectError(str(exc)) from exc
        if closed or transport is None:  # the peer closed during the handshake
            raise ConnectError("closed during the TLS handshake") from EOFError()
        assert isinstance(transport, asyncio.Transport)  # noqa: S101
        return AsyncioStream(transport, self._protocol)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":  # idle and readable: the peer closed it or sent junk
            return bool(self._protocol.buffer) or self._protocol.eof
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        return self._transport.get_extra_info(info)


class AsyncioBackend:
    """``connect_tcp`` on the running asyncio loop (see the module docstring)."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> NetworkStream:
        loop = asyncio.get_running_loop()
        protocol = _Protocol()
        try:
            async with asyncio.timeout(timeout):
                transport, _ = await loop.create_connection(
                    lambda: protocol,
                    host,
                    port,
                    local_addr=(local_address, 0) if local_address else None,
                )
        except TimeoutError as exc:
            raise ConnectTimeout(f"connecting to {host}:{port} timed out") from exc
        except OSError as exc:
            raise ConnectError(str(exc)) from exc
        assert isinstance(transport, asyncio.Transport)  # noqa: S101
        raw = transport.get_extra_info("socket")
        for option in socket_options or ():
            if raw is not None:
                raw.setsockopt(*option)
        if raw is not None and raw.family in (socket.AF_INET, socket.AF_INET6):
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return AsyncioStream(transport, protocol)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> NetworkStream:
        raise ConnectError("a Store is reached over TCP, not a Unix socket")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
