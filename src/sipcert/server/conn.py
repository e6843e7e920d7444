"""Connection limits of the Store: deadlines, a per-worker cap with shedding, a request-head cap.

aiohttp's server alone keeps an idle connection for about an hour, waits for a request head
forever and accepts until the process runs out of descriptors (issue 9). This module sits
between the listening socket and aiohttp's :class:`~aiohttp.web_protocol.RequestHandler`:

* :class:`ConnectionGuard` is the protocol factory of the plain TCP listener. Each accepted
  connection is a :class:`_Conn` that does the TLS handshake itself (``loop.start_tls`` with
  a deadline), so the guard counts every descriptor from ``accept`` to close, handshakes
  included, and only then hands the TLS transport to aiohttp.
* A connection is in one of four states: ``handshake``, ``idle`` (waiting for a request),
  ``head`` (a request head is arriving) or ``busy`` (a request is being handled). The head
  of the first request must be complete ``header_timeout`` seconds after the handshake, a
  later one ``header_timeout`` seconds after its first byte; aiohttp's ``keepalive_timeout``
  closes idle connections between requests.
* The cap (``max_connections``, never more than the descriptor limit minus
  :data:`FD_RESERVE`): from 90 % of it on, each new connection closes the connection idle for
  longest (nginx's reuse of keep-alive connections); at the cap, the oldest connection still
  in its handshake or head is closed instead, and when every connection is busy the new one
  is. A connection with a request being handled is never shed.
* A request head over ``max_head_size`` bytes is answered ``431 Request Header Fields Too
  Large`` through aiohttp's own error path and the connection is closed; the bytes are
  counted before aiohttp's parser sees them, so it never holds more than the limit (plus at
  most one read when requests are pipelined).

* The hot GET (issue 13, :mod:`sipcert.server.hotget`): while aiohttp has nothing under
  way on a connection, a read that starts with a complete simple ``GET``/``HEAD`` head
  (:func:`~sipcert.proto.hotget.parse_simple_get`) is answered here on the TLS transport;
  the rest of the read, and every other request, goes to aiohttp as before. So is a
  credential-less enrollment PUT whose body is in the read (its 401). The connection
  stays ``idle`` and the keep-alive deadline runs from that answer. An enrollment PUT with
  its Digest answer and whole body in the read is answered by a task (it awaits the
  limiter, the nonce count and storage): the connection is ``busy``, its reads paused and
  anything already read held, until the answer is written; then it is ``idle`` again and
  what was held is read as if it had just come. aiohttp's handler is
  made only for the first request the hot GET leaves (a handshake per GET then costs no
  aiohttp objects); until then the guard keeps ``keepalive_timeout`` itself.

* PROXY protocol (issue 10): when ``proxy_protocol_from`` names load balancers, the listener
  accepts connections itself (:class:`_ProxyAcceptor`). From a balancer, the header (v1 or
  v2, :mod:`sipcert.proto.proxy`) is required and read before the TLS ClientHello -- peeked
  first, then consumed to its exact length, so TLS gets every byte after it -- and its source
  address becomes the peer of every request (``request.remote``, the access log, the
  limiter). From anyone else a connection that starts like a PROXY header is closed.

It relies on four details of aiohttp 3.x's ``RequestHandler``: the ``_messages`` queue the
parser fills, the ``_waiter`` future its loop waits on, ``_request_in_progress`` (true until a
request's answer is written) and ``_ErrInfo`` for parser refusals;
tests/unit/server/test_conn.py exercises each of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import ipaddress
import itertools
import logging
import resource
import socket
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import RequestHandler, _ErrInfo

from sipcert.errors import HeaderTooLargeError, ProxyProtocolError
from sipcert.proto.hotget import SimpleGet, SimplePut, parse_simple_get, parse_simple_put
from sipcert.proto.proxy import header_length, may_be_proxy, parse_header
from sipcert.server.config import ConnectionLimits
from sipcert.server.http import set_client_address
from sipcert.server.tls import sni_domain

if TYPE_CHECKING:
    from sipcert.server.hotget import HotGet

__all__ = [
    "FD_RESERVE",
    "ConnectionGuard",
    "GuardedSite",
    "connection_cap",
    "fix_malloc_mmap_threshold",
    "raise_nofile_limit",
]

log = logging.getLogger("sipcert.server")

#: Descriptors a worker keeps for everything but client connections (listening sockets,
#: SQLite files and their journals, the event loop, standard streams, the users file).
FD_RESERVE = 64
#: Fraction of the cap from which idle connections are shed.
SHED_IDLE_FROM = 0.9
#: Seconds a stopping worker waits for the hot enrollments under way (server.run's wait
#: for aiohttp's handlers is as long).
ENROLL_SHUTDOWN_TIMEOUT = 5.0
#: The worker's shared read buffer: TLS decrypts into it, each read is copied out at once.
#: A TLS record holds at most 16 KiB; a larger read gets a buffer of its own, up to
#: :data:`READ_BUFFER_MAX`.
READ_BUFFER = 16 * 1024 + 256
#: uvloop's own bound for one TLS read (``SSL_READ_MAX_SIZE``).
READ_BUFFER_MAX = 256 * 1024

_HANDSHAKE = "handshake"
_IDLE = "idle"
_HEAD = "head"
_BUSY = "busy"

_Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def raise_nofile_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; the soft limit in force after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the descriptor limit from %d to %d: %s", soft, hard, exc)
        else:
            soft = hard
    return soft


#: glibc's ``mallopt`` parameter number and the threshold it has by default.
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 128 * 1024


def fix_malloc_mmap_threshold() -> bool:
    """Keep glibc from moving its mmap threshold up (``mallopt(M_MMAP_THRESHOLD, 128 KiB)``).

    Each TLS connection has a 256 KiB read buffer. By default glibc raises the threshold the
    first time such a block is freed, so later buffers come from the heap, where freed blocks
    stay in RSS: 100 connections that sent large heads left the worker 31 MiB larger after
    they closed, 5 MiB with the threshold fixed (tests/integration/store/test_connections.py).
    ``False`` where there is no glibc.
    """
    name = ctypes.util.find_library("c")
    if name is None:  # pragma: no cover - Linux always has a C library
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # pragma: no cover - musl, other systems
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD))


def connection_cap(configured: int, nofile: int) -> int:
    """``configured``, lowered to leave :data:`FD_RESERVE` descriptors of ``nofile`` free."""
    return max(1, min(configured, nofile - FD_RESERVE))


class ConnectionGuard:
    """Counts, times and sheds the connections of one worker (the listener's protocol factory).

    Call :meth:`wrap` on the request handler before building the ``web.Server`` and
    :meth:`bind` with that server before listening.
    """

    def __init__(self, ssl_context: ssl.SSLContext, limits: ConnectionLimits) -> None:
        self.ssl_context = ssl_context
        self.limits = limits
        self.cap = limits.max_connections
        self._shed_from = max(1, int(self.cap * SHED_IDLE_FROM))
        self._server: web.Server | None = None
        #: Connections per state, oldest (in that state) first.
        self._states: dict[str, dict[_Conn, None]] = {
            state: {} for state in (_HANDSHAKE, _IDLE, _HEAD, _BUSY)
        }
        self._by_handler: dict[RequestHandler, _Conn] = {}
        self.count = 0
        self.closing = False
        #: Connections closed to make room (shed) and refused at the cap.
        self.shed = 0
        self.refused = 0
        #: Connections closed for a missing, malformed or untrusted PROXY header.
        self.proxy_refused = 0
        #: Answers simple GETs before aiohttp sees them (issue 13); None: aiohttp answers all.
        self.hot: HotGet | None = None
        #: The tasks answering hot enrollment PUTs now (awaited on shutdown, as aiohttp
        #: awaits its handlers).
        self.enrolling: set[asyncio.Task[None]] = set()
        #: What every connection's TLS layer decrypts into (see _Conn.get_buffer).
        self.read_buffer = memoryview(bytearray(READ_BUFFER))

    # -- wiring ----------------------------------------------------------------------------

    def bind(self, server: web.Server) -> None:
        """Hand established connections to ``server``'s request handlers."""
        self._server = server

    def wrap(self, handler: _Handler) -> _Handler:
        """``handler``, marking its connection busy while it runs."""
        by_handler = self._by_handler

        async def guarded(request: web.BaseRequest) -> web.StreamResponse:
            conn = by_handler.get(request.protocol)
            if conn is not None:
                conn.set_busy()
            try:
                return await handler(request)
            finally:
                if conn is not None:
                    conn.request_done()

        return guarded

    def __call__(self) -> _Conn:
        return _Conn(self)

    def trusts(self, host: str) -> bool:
        """Whether ``host`` is a load balancer that sends a PROXY header."""
        try:
            address = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.limits.proxy_protocol_from)

    def new_handler(self, conn: _Conn) -> RequestHandler:
        if self._server is None:
            raise RuntimeError("ConnectionGuard.bind() was not called")
        handler = self._server()
        if conn.client is not None:
            set_client_address(handler, conn.client)
        self._by_handler[handler] = conn
        return handler

    # -- accounting ------------------------------------------------------------------------

    def admit(self, conn: _Conn, now: float) -> bool:
        """Register a new connection, making room for it; ``False`` if it must be closed."""
        if self.closing:
            return False
        if self.count >= self._shed_from:
            self._shed_idle(self.count - self._shed_from + 1)
        if self.count >= self.cap and not self._evict_unfinished():
            self.refused += 1
            return False
        self.count += 1
        conn.state = _HANDSHAKE
        conn.since = now
        self._states[_HANDSHAKE][conn] = None
        return True

    def move(self, conn: _Conn, state: str, now: float) -> None:
        if conn.state is None or conn.state == state:
            return
        del self._states[conn.state][conn]
        conn.state = state
        conn.since = now
        self._states[state][conn] = None

    def touch(self, conn: _Conn, now: float) -> None:
        """``conn`` (idle) just answered a request: it is now the most recently idle."""
        idle = self._states[_IDLE]
        if conn.state == _IDLE:
            del idle[conn]
            idle[conn] = None
            conn.since = now

    def forget(self, conn: _Conn) -> None:
        """The connection is closed (or being closed): it no longer counts."""
        if conn.state is None:
            return
        del self._states[conn.state][conn]
        conn.state = None
        self.count -= 1
        if conn.handler is not None:
            self._by_handler.pop(conn.handler, None)

    def _shed_idle(self, wanted: int) -> None:
        idle = self._states[_IDLE]
        for conn in list(itertools.islice(idle, wanted + 8)):
            if wanted <= 0:
                break
            if conn.waiting():
                self.shed += 1
                wanted -= 1
                conn.close_now("shed (idle, the connection cap is near)")

    def _evict_unfinished(self) -> bool:
        firsts = [next(iter(self._states[s]), None) for s in (_HANDSHAKE, _HEAD)]
        candidates = [c for c in firsts if c is not None]
        if not candidates:
            return False
        min(candidates, key=lambda c: c.since).close_now("shed (unfinished, at the cap)")
        self.shed += 1
        return True

    def close_handshakes(self) -> None:
        """On shutdown: stop admitting and close connections that have no handler yet
        (idle ones that only had hot answers gracefully, as aiohttp closes its own)."""
        self.closing = True
        for conn in list(self._states[_HANDSHAKE]):
            conn.close_now("shutting down")
        for conn in list(self._states[_IDLE]):
            if conn.handler is None:
                conn.close_idle("shutting down")

    async def finish_enrollments(self, timeout: float = ENROLL_SHUTDOWN_TIMEOUT) -> None:
        """On shutdown: let the hot enrollments under way write their answers (at most
        ``timeout`` seconds, aiohttp's wait for its handlers); then their connections close."""
        if self.enrolling:
            await asyncio.wait(list(self.enrolling), timeout=timeout)


class _Conn(asyncio.BufferedProtocol):
    """One accepted connection: TLS handshake, then aiohttp's handler behind the deadlines.

    A buffered protocol: with a plain one, uvloop's TLS transport decrypts every read into
    a new 256 KiB ``bytes`` (``SSLObject.read(256 KiB)``), which glibc serves with an
    ``mmap``, a page fault, an ``mremap`` and a ``munmap`` per request. Here it decrypts into
    the worker's shared buffer, which :meth:`buffer_updated` copies out before the next read.
    """

    __slots__ = (
        "_body",
        "_buffer",
        "_closing",
        "_domain",
        "_early",
        "_enrolling",
        "_guard",
        "_head_bytes",
        "_held",
        "_idle_at",
        "_loop",
        "_paused",
        "_pending",
        "_raw",
        "_refused",
        "_remote",
        "_requests",
        "_timer",
        "_tls",
        "_used",
        "client",
        "handler",
        "since",
        "state",
    )

    def __init__(self, guard: ConnectionGuard, client: tuple[str, int] | None = None) -> None:
        self._guard = guard
        #: The client's address from a trusted PROXY header, if there was one.
        self.client = client
        self._loop = asyncio.get_running_loop()
        self._raw: asyncio.Transport | None = None
        self._tls: asyncio.Transport | None = None
        self.handler: RequestHandler | None = None
        self.state: str | None = None
        self.since = 0.0
        self._timer: asyncio.TimerHandle | None = None
        #: When ``_timer`` is the idle deadline of hot answers: the loop time it now ends
        #: at (each answer moves it on without a new timer), else 0.
        self._idle_at = 0.0
        self._head_bytes = 0
        self._requests = 0
        #: Requests handed to aiohttp whose handler has not returned yet.
        self._pending = 0
        self._body: StreamReader | None = None
        self._refused = False
        self._early: list[bytes] = []
        #: The served domain (SNI) when the hot GET may answer here, and the peer it logs.
        self._domain: str | None = None
        self._remote = "-"
        #: aiohttp's handler has had a request; the transport asked us to stop writing;
        #: a hot answer closed the connection.
        self._used = False
        self._paused = False
        self._closing = False
        #: The task answering a hot enrollment PUT, and the bytes read meanwhile.
        self._enrolling: asyncio.Task[None] | None = None
        self._held = b""
        #: The buffer handed out by the last get_buffer().
        self._buffer = guard.read_buffer

    # -- asyncio.Protocol (first of the TCP transport, then of the TLS one) ---------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._raw = transport  # type: ignore[assignment]  # a stream server: a Transport
        if not self._guard.admit(self, self._loop.time()):
            transport.close()
            return
        limits = self._guard.limits
        handshake: Any = self._loop.start_tls(
            self._raw,  # type: ignore[arg-type]
            self,
            self._guard.ssl_context,
            server_side=True,
            ssl_handshake_timeout=limits.tls_handshake_timeout,
            ssl_shutdown_timeout=limits.tls_handshake_timeout,
        )
        # Run start_tls() up to its wait now, not in a task: the event loop starts reading
        # as soon as this method returns, and the ClientHello must reach TLS, not us.
        try:
            waiter = handshake.send(None)
        except (OSError, RuntimeError) as exc:  # pragma: no cover - it waits at least once
            self._handshake_failed(exc)
            return
        waiter.add_done_callback(lambda _: self._handshake_done(handshake))

    def get_buffer(self, sizehint: int) -> memoryview:
        """The shared buffer, or one of ``sizehint`` bytes (at most 256 KiB) for this read:
        uvloop asks for what its TLS layer holds, and a read that fills the buffer leaves
        the rest for the next loop iteration."""
        shared = self._guard.read_buffer
        if sizehint <= len(shared):
            self._buffer = shared
        else:
            self._buffer = memoryview(bytearray(min(sizehint, READ_BUFFER_MAX)))
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        buffer, self._buffer = self._buffer, self._guard.read_buffer
        self.data_received(bytes(buffer[:nbytes]))

    def data_received(self, data: bytes) -> None:
        """A read of the connection (decrypted once the handshake is done)."""
        handler = self.handler
        if self._tls is None:  # asyncio's own loop delivers before start_tls() returns
            if self.state is not None:
                self._early.append(data)
            return
        if self._refused or self._closing or self.state is None or not data:
            return
        if self._enrolling is not None:  # read before the pause took effect: kept in order
            self._held += data
            return
        hot = self._guard.hot
        if hot is not None and self._domain is not None and self._quiet(handler):
            data = self._answer_hot(hot, self._domain, data)
            if not data:
                return
        if handler is None:  # the first request the hot GET leaves to aiohttp
            handler = self._start_handler()
        body = self._body
        if body is None or body.is_eof():
            if self._head_bytes == 0:
                self._body = None
                self._guard.move(self, _HEAD, self._loop.time())
                if self._requests:  # the first request's deadline runs since the handshake
                    self._arm(self._guard.limits.header_timeout)
            # Only the head counts: a body (or the next request) may share this read.
            end = data.find(b"\r\n\r\n")
            self._head_bytes += len(data) if end < 0 else end + 4
            if self._head_bytes > self._guard.limits.max_head_size:
                self._refuse_head()
                return
        queued = len(handler._messages)
        handler.data_received(data)
        messages = handler._messages
        if len(messages) > queued:  # a head is complete
            self._requests += 1
            self._pending += len(messages) - queued
            self._used = True
            self._head_bytes = 0
            self._cancel_timer()
            self._body = messages[-1][1] if messages else None
            self._guard.move(self, _BUSY, self._loop.time())

    def eof_received(self) -> bool | None:
        if self.handler is not None:
            self.handler.eof_received()
        return None

    def pause_writing(self) -> None:
        self._paused = True
        if self.handler is not None:
            self.handler.pause_writing()

    def resume_writing(self) -> None:
        self._paused = False
        if self.handler is not None:
            self.handler.resume_writing()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_timer()
        self._guard.forget(self)
        handler, self.handler = self.handler, None
        # uvloop's TLS layer keeps our get_buffer/buffer_updated after the connection is
        # lost, and we keep its transport: a cycle that only the cyclic GC would free, with
        # the layer's 256 KiB buffer and its BIOs (+60 MiB after 100 closed connections,
        # tests/integration/store/test_connections.py). Dropping our side frees it now.
        self._tls = self._raw = None
        self._early = []
        if handler is not None:
            handler.connection_lost(exc)

    # -- the hot GET (server.hotget) ------------------------------------------------------

    def _quiet(self, handler: RequestHandler | None) -> bool:
        """Whether nothing of aiohttp's is under way: no head or body arriving, no request
        queued or being answered, nothing waiting to be written, no close decided."""
        if self._head_bytes or self._paused:
            return False
        if handler is None:  # only hot answers so far
            return True
        if handler._messages or handler._force_close:
            return False
        if self._body is not None and not self._body.is_eof():
            return False
        if not self._used:  # aiohttp never had a request: its loop has nothing to finish
            return not handler._close
        waiter = handler._waiter  # set only between requests, once the last answer is out
        if waiter is not None and not waiter.done():
            return True
        # Or every request aiohttp took has been answered (its handler returned, then its
        # answer was written), and aiohttp's loop has yet to get back to its waiter: its
        # request task ends a loop iteration before the loop does.
        return not self._pending and not handler._request_in_progress and not handler._close

    def _answer_hot(self, hot: HotGet, domain: str, data: bytes) -> bytes:
        """Answer the simple requests at the start of ``data``; the bytes left for aiohttp.

        Pipelined simple requests are answered in order; from the first other one on, the
        rest goes to aiohttp (whose parser has seen nothing of the answered ones).
        """
        tls = self._tls
        if tls is None:  # pragma: no cover - data_received checked it
            return data
        answered = False
        enrolling: tuple[Coroutine[Any, Any, bytes], bool] | None = None
        max_head = self._guard.limits.max_head_size
        while data:
            head: SimpleGet | SimplePut | None = parse_simple_get(data)
            if head is None:
                head = parse_simple_put(data)
                if head is None or head.head_length > max_head:
                    break
            elif head.length > max_head:
                break  # an oversized head gets aiohttp's 431 as before
            try:
                if isinstance(head, SimplePut) and head.authorization is not None:
                    pending = hot.enroll(head, data, domain, self._remote, tls)
                    if pending is not None:
                        enrolling = (pending, head.close)
                        data = data[head.length :]
                    break  # answered by the task; what follows waits for it
                if isinstance(head, SimplePut):
                    wire = hot.challenge(head, domain, self._remote)
                else:
                    wire = hot.answer(head, domain, self._remote)
            except Exception as exc:  # a bug: say it in one line, let aiohttp answer
                log.error("hot GET failed, answered by aiohttp: %s: %s", type(exc).__name__, exc)
                wire = None
            if wire is None:
                break
            answered = True
            self._requests += 1
            tls.write(wire)
            if head.close:  # RFC 9112 §9.6: nothing more is read after this request
                self._closing = True
                self._cancel_timer()
                tls.close()
                if len(data) == head.length:  # nothing pipelined after it: close as nginx
                    self._close_after_notify(tls)
                return b""
            data = data[head.length :]
            if self._paused:
                break
        if answered:
            self._answered_hot()
        if enrolling is not None:
            self._start_enrolling(tls, *enrolling, data)
            return b""
        return data

    def _answered_hot(self) -> None:
        """The keep-alive deadline runs from the hot answer just written."""
        now = self._loop.time()
        handler = self.handler
        if handler is None:  # no aiohttp handler to close it: the same deadline here
            deadline = now + self._guard.limits.keepalive_timeout
            if not self._idle_at:  # the head deadline or nothing: replaced once
                self._cancel_timer()
                self._timer = self._loop.call_at(deadline, self._idle_expired)
            self._idle_at = deadline  # a later answer only moves it (_idle_expired)
        else:  # aiohttp's own idle deadline (keepalive_timeout) runs from this answer
            self._cancel_timer()
            handler._next_keepalive_close_time = now + handler.keepalive_timeout
        self._guard.touch(self, now)

    def _start_enrolling(
        self,
        tls: asyncio.Transport,
        answer: Coroutine[Any, Any, bytes],
        close: bool,
        rest: bytes,
    ) -> None:
        """Answer a hot enrollment PUT in a task; reads wait (paused, ``rest`` held)."""
        self._cancel_timer()  # busy: neither the head nor the idle deadline runs
        handler = self.handler
        if handler is not None:  # nor aiohttp's idle deadline, while the answer is made
            handler._next_keepalive_close_time = self._loop.time() + handler.keepalive_timeout
        self._held = rest
        tls.pause_reading()
        self._guard.move(self, _BUSY, self._loop.time())
        task = self._loop.create_task(self._enroll(tls, answer, close))
        self._enrolling = task
        self._guard.enrolling.add(task)
        task.add_done_callback(self._guard.enrolling.discard)

    async def _enroll(
        self, tls: asyncio.Transport, answer: Coroutine[Any, Any, bytes], close: bool
    ) -> None:
        try:
            wire = await answer  # every failure is an answer (StoreApp.answer_put)
        except Exception as exc:  # a bug: say it in one line (no traceback), drop the peer
            self._enrolling = None
            log.error("hot enrollment failed: %s: %s", type(exc).__name__, exc)
            self.close_now("the enrollment's answer was not made")
            return
        except BaseException:  # cancelled at shutdown: no answer, drop the peer
            self._enrolling = None
            self.close_now("the enrollment's answer was not made")
            raise
        self._enrolling = None
        if self.state is None or tls.is_closing():  # the peer left meanwhile
            return
        self._requests += 1
        tls.write(wire)
        if close or self._guard.closing:  # RFC 9112 §9.6; or the worker is stopping
            self._closing = True
            self._cancel_timer()
            tls.close()
            return
        self._guard.move(self, _IDLE, self._loop.time())
        self._answered_hot()
        held, self._held = self._held, b""
        tls.resume_reading()
        if held:
            self.data_received(held)

    def _close_after_notify(self, tls: asyncio.Transport) -> None:
        """Close the socket once our close_notify is out, without waiting for the peer's.

        ``tls.close()`` has flushed the answer and the close_notify into the TCP transport
        when nothing is left in the TLS layer's buffers; the TLS transport would then wait
        up to ``tls_handshake_timeout`` for the client's close_notify, which costs a wake-up,
        a read and a decryption per connection and keeps it open meanwhile. RFC 8446 §6.1
        lets the closing side go at once; nginx does. The TCP transport still sends what it
        holds before it closes. Anything still in the TLS buffers (the socket was full):
        the TLS transport's own close goes on.
        """
        raw = self._raw
        if raw is None or raw.is_closing() or tls.get_write_buffer_size():
            return
        raw.close()

    def _idle_expired(self) -> None:
        """``keepalive_timeout`` after the last hot answer, with no request since: close."""
        self._timer = None
        deadline, self._idle_at = self._idle_at, 0.0
        if deadline > self._loop.time():  # answers since the timer was set: wait on
            self._timer = self._loop.call_at(deadline, self._idle_expired)
            self._idle_at = deadline
            return
        if self.handler is None and self.state == _IDLE and not self._head_bytes:
            self.close_idle("idle for keepalive_timeout")

    def close_idle(self, why: str) -> None:
        """Close a connection aiohttp never had, with TLS's close_notify (as aiohttp does)."""
        log.debug("closing connection from %s: %s", self._peer(), why)
        self._closing = True
        self._cancel_timer()
        if self._tls is not None:
            self._tls.close()

    # -- states ----------------------------------------------------------------------------

    def set_busy(self) -> None:
        self._guard.move(self, _BUSY, self._loop.time())

    def request_done(self) -> None:
        self._pending = max(0, self._pending - 1)
        if self.handler is not None and not self.handler._messages and self._head_bytes == 0:
            self._guard.move(self, _IDLE, self._loop.time())

    def waiting(self) -> bool:
        """Whether aiohttp's handler is between requests (its response is written)."""
        handler = self.handler
        if self._enrolling is not None:  # a hot enrollment is being answered
            return False
        if handler is None:  # only hot answers (all written at once), or no handshake yet
            return self._tls is not None and not self._head_bytes and not self._closing
        if handler._messages or self._head_bytes:
            return False
        waiter = handler._waiter
        return waiter is not None and not waiter.done()

    def close_now(self, why: str) -> None:
        """Close at once (no TLS close_notify exchange): the peer has had its time."""
        log.debug("closing connection from %s: %s", self._peer(), why)
        self._guard.forget(self)
        self._cancel_timer()
        transport = self._tls or self._raw
        if transport is not None:
            transport.abort()

    # -- internals -------------------------------------------------------------------------

    def _handshake_done(self, handshake: Any) -> None:
        try:
            handshake.send(None)
        except StopIteration as done:
            tls = done.value
        except (OSError, RuntimeError) as exc:
            # Refused SNI, a timeout, a reset: start_tls() closed the transport already.
            self._handshake_failed(exc)
            return
        else:  # pragma: no cover - start_tls() waits for its handshake only
            handshake.close()
            self.close_now("unexpected TLS start-up")
            return
        if self.state is None:  # shed while the handshake finished
            tls.abort()
            return
        self._tls = tls
        hot = self._guard.hot
        if hot is not None:
            domain = sni_domain(tls)
            if domain in hot.domains:
                self._domain = domain
                self._remote = self._peer()
        if self._domain is None:  # else made for the first request the hot GET leaves
            self._start_handler()
        self._guard.move(self, _IDLE, self._loop.time())
        self._arm(self._guard.limits.header_timeout)
        early, self._early = self._early, []
        for data in early:
            self.data_received(data)

    def _start_handler(self) -> RequestHandler:
        """aiohttp's handler for this connection, from now on."""
        tls = self._tls
        if tls is None:  # pragma: no cover - only called after the handshake
            raise RuntimeError("no TLS transport yet")
        handler = self._guard.new_handler(self)
        self.handler = handler
        handler.connection_made(tls)
        if self._paused:  # the transport paused during the hot answers
            handler.pause_writing()
        return handler

    def _handshake_failed(self, exc: BaseException) -> None:
        log.debug("TLS handshake with %s failed: %s", self._peer(), exc)
        self._guard.forget(self)
        self._raw = None  # no cycle through the TLS layer (see connection_lost)

    def _arm(self, seconds: float) -> None:
        self._cancel_timer()
        self._timer = self._loop.call_later(seconds, self._head_expired)

    def _cancel_timer(self) -> None:
        self._idle_at = 0.0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_expired(self) -> None:
        self._timer = None
        if self.state in (_IDLE, _HEAD) and not (self.handler and self.handler._messages):
            self.close_now(f"no complete request head within {self._guard.limits.header_timeout} s")

    def _refuse_head(self) -> None:
        """431 through aiohttp's error path (it closes the connection after the answer)."""
        self._refused = True
        self._cancel_timer()
        handler = self.handler
        if handler is None:  # pragma: no cover - only called with a handler
            return
        limit = self._guard.limits.max_head_size
        exc = HeaderTooLargeError(f"request head over the limit of {limit} bytes")
        handler._messages.append((_ErrInfo(status=431, exc=exc, message=str(exc)), EMPTY_PAYLOAD))
        waiter = handler._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._guard.move(self, _BUSY, self._loop.time())

    def _peer(self) -> str:
        if self.client is not None:
            return self.client[0]
        transport = self._tls or self._raw
        peer = transport.get_extra_info("peername") if transport is not None else None
        return str(peer[0]) if isinstance(peer, tuple) and peer else "-"


#: Bytes peeked at once while a PROXY header arrives (a v1 line is at most 107).
_PEEK = 4096


class _ClosedError(Exception):
    """The peer closed before sending a byte."""


class _ProxyAcceptor:
    """Accepts on one listening socket and reads PROXY headers before TLS (issue 10).

    ``close`` stops accepting; connections already handed to a :class:`_Conn` go on.
    """

    def __init__(self, guard: ConnectionGuard, sock: socket.socket) -> None:
        self._guard = guard
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._pending: set[asyncio.Task[None]] = set()
        self._task = self._loop.create_task(self._accept_forever())

    async def _accept_forever(self) -> None:
        while True:
            try:
                conn, address = await self._loop.sock_accept(self._sock)
            except BlockingIOError:  # another worker took it first
                continue
            except OSError as exc:  # EMFILE and the like: the cap logic will shed
                log.warning("accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            if len(self._pending) >= self._guard.cap or self._guard.closing:
                self._guard.refused += 1
                conn.close()
                continue
            conn.setblocking(False)
            task = self._loop.create_task(self._start(conn, address))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _start(self, conn: socket.socket, address: Any) -> None:
        host = str(address[0])
        timeout = self._guard.limits.tls_handshake_timeout
        try:
            async with asyncio.timeout(timeout):
                client = await self._read_header(conn, host)
            await self._loop.connect_accepted_socket(lambda: _Conn(self._guard, client), conn)
        except _ClosedError:  # a balancer's health check (connect, close) or a client gone
            conn.close()
        except (ProxyProtocolError, OSError, TimeoutError) as exc:
            self._guard.proxy_refused += 1
            why = "no PROXY header in time" if isinstance(exc, TimeoutError) else str(exc)
            log.info("closing connection from %s: %s", host, why)
            conn.close()
        except BaseException:
            conn.close()
            raise

    async def _wait_readable(self, conn: socket.socket) -> None:
        ready: asyncio.Future[None] = self._loop.create_future()
        fd = conn.fileno()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        self._loop.add_reader(fd, wake)
        try:
            await ready
        finally:
            self._loop.remove_reader(fd)

    async def _read_header(self, conn: socket.socket, host: str) -> tuple[str, int] | None:
        """The client address of the PROXY header of a balancer; ``None`` for others."""
        trusted = self._guard.trusts(host)
        seen = b""
        while True:
            await self._wait_readable(conn)
            peek = conn.recv(_PEEK, socket.MSG_PEEK)
            if not peek:
                raise _ClosedError
            if not trusted:
                if may_be_proxy(peek[:12]):
                    raise ProxyProtocolError(f"a PROXY header from {host}, which is not trusted")
                return None  # a direct client: TLS reads every byte itself
            end = header_length(seen + peek)  # raises unless a header is starting
            if end is None:
                seen += conn.recv(len(peek))  # all of it belongs to the header
                continue
            seen += conn.recv(end - len(seen))  # exactly the header; TLS gets the rest
            header = parse_header(seen)
            if header is None or header.source is None:  # LOCAL/UNKNOWN: the balancer itself
                return None
            return header.source

    def close(self) -> None:
        self._task.cancel()
        for task in list(self._pending):
            task.cancel()

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class GuardedSite(web.BaseSite):
    """A listening socket whose connections go through a :class:`ConnectionGuard`."""

    __slots__ = ("_acceptor", "_guard", "_name", "_sock")

    def __init__(
        self, runner: web.BaseRunner, sock: socket.socket, guard: ConnectionGuard, backlog: int
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._sock = sock
        self._guard = guard
        self._acceptor: _ProxyAcceptor | None = None
        host, port = sock.getsockname()[:2]
        self._name = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        await super().start()
        if self._guard.limits.proxy_protocol_from:
            self._acceptor = _ProxyAcceptor(self._guard, self._sock)
            return
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._guard, sock=self._sock, backlog=self._backlog)

    async def stop(self) -> None:
        acceptor, self._acceptor = self._acceptor, None
        if acceptor is not None:
            acceptor.close()
            await acceptor.wait_closed()
        await super().stop()
        self._guard.close_handshakes()
        await self._guard.finish_enrollments()
