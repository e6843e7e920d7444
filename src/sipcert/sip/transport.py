"""SIP transports over asyncio: UDP, TCP and TLS (RFC 3261 §18, RFC 5922).

One :class:`SipTransport` owns the UA's sockets: a UDP socket (datagrams, one message each),
TCP/TLS listeners, and a pool of stream connections keyed by ``(transport, host, port,
domain)``, so a TLS connection verified for one domain is never reused for another (the
same trap FIELD-NOTES records for httpx). Every received message, with the :class:`Origin`
it came from, goes to one handler callback; responses to a request go back the way it came
(the same connection on streams, the source address and port on UDP, RFC 3261 §18.2.2 with
RFC 3581 ``rport``).

TLS to a proxy follows RFC 5922: SNI is the SIP domain, the chain must verify against the
trusted CAs, and the certificate must name the domain as a dNSName SubjectAltName, checked
with :func:`sipcert.proto.names.check_server_certificate` (exact match, no wildcards, no
Common Name) before any SIP byte is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography import x509

from sipcert.client.tls import CONNECT, HANDSHAKE, in_words, make_ssl_context, peer
from sipcert.errors import (
    AORError,
    CertificateParseError,
    ConfigError,
    InputError,
    InputTooLargeError,
    SipCertError,
    TLSHandshakeError,
    TransportError,
    UntrustedCertificateError,
)
from sipcert.proto.aor import normalize_domain
from sipcert.proto.names import check_server_certificate
from sipcert.proto.sip import (
    DEFAULT_LIMITS,
    Request,
    Response,
    SipLimits,
    SipUri,
    StreamParser,
    parse_message,
    split_header_list,
)

__all__ = [
    "DEFAULT_PORTS",
    "Hop",
    "MessageHandler",
    "MessageTooLongError",
    "Origin",
    "SipTransport",
    "StreamConnection",
    "Transport",
    "cancel_and_wait",
    "client_tls_context",
    "server_tls_context",
]

#: Largest UDP payload over IPv4 (65,535 - 20 - 8); the kernel refuses more with EMSGSIZE.
MAX_DATAGRAM = 65507


class MessageTooLongError(TransportError):
    """A UDP datagram was refused as too long (EMSGSIZE): over the datagram limit, or over
    the path MTU that an ICMP "fragmentation needed" reported (RFC 3261 §18.1.1, RFC 1191).
    The request should go over TCP instead."""


class Transport(StrEnum):
    """The transports of RFC 3261 §18 (``transport=`` values, lower-case)."""

    UDP = "udp"
    TCP = "tcp"
    TLS = "tls"

    @property
    def via_name(self) -> str:
        return self.value.upper()

    @property
    def reliable(self) -> bool:
        """Whether retransmission timers stay off (RFC 3261 §17.1.1.2, §17.1.2.2)."""
        return self is not Transport.UDP


DEFAULT_PORTS = {Transport.UDP: 5060, Transport.TCP: 5060, Transport.TLS: 5061}


def _transport_named(name: str) -> Transport:
    try:
        return Transport(name.lower())
    except ValueError as exc:
        raise ConfigError(f"unsupported SIP transport {name!r} (udp, tcp or tls)") from exc


@dataclass(frozen=True)
class Hop:
    """Where to send a message: transport, address and, for TLS, the domain to verify.

    ``domain`` is the SIP domain the peer must prove it serves (RFC 5922 §4); it defaults to
    ``host`` and matters only for TLS.
    """

    transport: Transport
    host: str
    port: int
    domain: str | None = None

    @classmethod
    def from_uri(cls, uri: SipUri, *, domain: str | None = None) -> Hop:
        """The hop a URI names (RFC 3263 reduced to explicit host, port and transport)."""
        transport = _transport_named(uri.transport)
        port = uri.port if uri.port is not None else DEFAULT_PORTS[transport]
        return cls(transport, uri.host.strip("[]"), port, domain)

    @property
    def tls_domain(self) -> str:
        return (self.domain or self.host).lower()


@dataclass(frozen=True, eq=False)
class Origin:
    """Where a received message came from; ``connection`` is set for TCP and TLS."""

    transport: Transport
    host: str
    port: int
    connection: StreamConnection | None = None


MessageHandler = Callable[[Request | Response, Origin], None]
ErrorHandler = Callable[[SipCertError, Origin], "Response | None"]
"""Told of input that did not parse; may return the response to send back (a 400, 505)."""


def client_tls_context(ca_file: str | Path | None = None) -> ssl.SSLContext:
    """A TLS client context for proxies: TLS 1.2+, chain verified against ``ca_file``.

    OpenSSL's host name check is off on purpose: the RFC 5922 / draft §4.3 rule is applied
    by :func:`check_server_certificate` after the handshake, which reports the names the
    peer presented in a :class:`~sipcert.errors.NameMismatchError`.
    """
    return make_ssl_context(ca_file, check_hostname=False)


def server_tls_context(certificate: str | Path, key: str | Path) -> ssl.SSLContext:
    """A TLS server context for a UA's listener: TLS 1.2+, our certificate chain and key.

    The certificate should name our host as a dNSName SubjectAltName, which is what a peer
    checks under RFC 5922 §7.1. Raises ConfigError when the files do not load.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(certificate), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load the TLS certificate {certificate} with key {key}: {exc}"
        ) from exc
    return context


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until each has finished, ignoring how it ended.

    ``asyncio.wait`` rather than awaiting each under ``suppress(CancelledError)``: that
    would also swallow a cancellation of the caller itself. The caller's own task, if it is
    among them, is left to finish what it is doing.
    """
    current = asyncio.current_task()
    pending = [task for task in tasks if task is not current]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    for task in pending:
        if not task.cancelled():
            task.exception()  # retrieved: asyncio would log it when the task is collected


@dataclass(eq=False)
class StreamConnection:
    """One TCP or TLS connection carrying SIP messages framed by Content-Length."""

    transport: Transport
    host: str
    port: int
    domain: str | None
    reader: asyncio.StreamReader = field(repr=False)
    writer: asyncio.StreamWriter = field(repr=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    #: Requests received here whose final response has not been sent yet.
    unanswered: int = 0
    #: Set whenever bytes arrive (a pong, RFC 5626 §4.4.1, or anything else); cleared by
    #: whoever waits for the next.
    heard: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _answered: asyncio.Condition = field(default_factory=asyncio.Condition, repr=False)

    async def note_answered(self) -> None:
        async with self._answered:
            self.unanswered = max(0, self.unanswered - 1)
            self._answered.notify_all()

    async def all_answered(self, timeout: float) -> None:
        """Wait (at most ``timeout`` s) until every request received here has its answer."""
        async with self._answered:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._answered.wait_for(lambda: self.unanswered == 0)

    @property
    def closed(self) -> bool:
        return self.writer.is_closing()

    @property
    def origin(self) -> Origin:
        return Origin(self.transport, self.host, self.port, self)

    async def send(self, data: bytes) -> None:
        async with self._lock:
            if self.writer.is_closing():
                raise TransportError(
                    f"{self.transport} connection to {self.host}:{self.port} is closed"
                )
            try:
                self.writer.write(data)
                await self.writer.drain()
            except (ConnectionError, OSError) as exc:
                why = in_words(exc, peer(self.host, self.port), None, "sending")
                raise TransportError(
                    f"sending over {self.transport} to {self.host}:{self.port} failed: {why}"
                ) from exc

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError, ssl.SSLError, TimeoutError):
            async with asyncio.timeout(2.0):
                await self.writer.wait_closed()


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, owner: SipTransport) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.owner._datagram(data, str(addr[0]), int(addr[1]))

    def error_received(self, exc: Exception) -> None:
        """A failed send, or an ICMP error reported on the socket. Only EMSGSIZE matters
        (message too long, or "fragmentation needed" lowered the path MTU): the next send
        raises it, so the request goes over TCP. Others (port unreachable) are the
        transaction timers' business."""
        if isinstance(exc, OSError) and exc.errno == errno.EMSGSIZE:
            self.owner._too_long = exc


def _stamp_received(request: Request, host: str, port: int) -> Request:
    """Add ``received`` and fill ``rport`` in the top Via (RFC 3261 §18.2.1, RFC 3581 §4)."""
    vias = request.get_all("Via")
    first = split_header_list(vias[0])
    top = request.top_via
    params = list(top.params)
    if top.param("rport") is not None:
        params = [(k, str(port) if k.lower() == "rport" else v) for k, v in params]
    elif top.host == host:
        return request
    params = [p for p in params if p[0].lower() != "received"] + [("received", host)]
    first[0] = str(replace(top, params=tuple(params)))
    return request.replacing("Via", ", ".join(first), *vias[1:])


class SipTransport:
    """The UA's SIP sockets: listen, send, reply, close (RFC 3261 §18).

    ``handler`` receives every parsed message with its :class:`Origin`; ``on_error``
    receives input that did not parse and may return a response, which is sent back the
    way the input came before anything else happens. Over TCP and TLS only a framing error
    closes the connection (RFC 3261 §18.3: its framing is lost), after that response; a
    message that stays incomplete for ``incomplete_timeout`` seconds is given up and the
    connection closed (RFC 4475 §3.1.2.2 "clerr" over a stream).
    """

    def __init__(
        self,
        handler: MessageHandler,
        *,
        limits: SipLimits = DEFAULT_LIMITS,
        tls_context: ssl.SSLContext | None = None,
        connect_timeout: float = 5.0,
        on_error: ErrorHandler | None = None,
        incomplete_timeout: float = 32.0,
    ) -> None:
        self._handler = handler
        self._limits = limits
        self._tls_context = tls_context
        self._connect_timeout = connect_timeout
        self._on_error = on_error
        self._incomplete_timeout = incomplete_timeout
        self._udp: asyncio.DatagramTransport | None = None
        self._local: dict[Transport, tuple[str, int]] = {}
        self._servers: list[asyncio.Server] = []
        self._pool: dict[tuple[Transport, str, int, str], StreamConnection] = {}
        self._connections: set[StreamConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._connecting: dict[tuple[Transport, str, int, str], asyncio.Lock] = {}
        self._closed = False
        self._too_long: OSError | None = None
        self.dropped: list[SipCertError] = []

    async def __aenter__(self) -> SipTransport:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- listening ----------------------------------------------------------------------------

    async def listen(
        self,
        transport: Transport,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> tuple[str, int]:
        """Listen on ``host:port`` (0: any free port) and return the bound address."""
        loop = asyncio.get_running_loop()
        try:
            if transport is Transport.UDP:
                udp, _ = await loop.create_datagram_endpoint(
                    lambda: _Datagrams(self), local_addr=(host, port)
                )
                self._udp = udp
                bound = udp.get_extra_info("sockname")
            else:
                if transport is Transport.TLS and ssl_context is None:
                    raise ConfigError("a TLS listener needs a server ssl_context")
                server = await asyncio.start_server(
                    lambda r, w: self._accept(transport, r, w),
                    host,
                    port,
                    ssl=ssl_context if transport is Transport.TLS else None,
                )
                self._servers.append(server)
                bound = server.sockets[0].getsockname()
        except OSError as exc:
            raise TransportError(f"cannot listen on {transport} {host}:{port}: {exc}") from exc
        self._local[transport] = (str(bound[0]), int(bound[1]))
        return self._local[transport]

    def local_address(self, transport: Transport) -> tuple[str, int]:
        """The address our listener for ``transport`` is bound to (for Via and Contact)."""
        try:
            return self._local[transport]
        except KeyError:
            raise ConfigError(f"no {transport} listener: call listen() first") from None

    @property
    def transports(self) -> tuple[Transport, ...]:
        return tuple(self._local)

    # -- receiving ----------------------------------------------------------------------------

    def _report(self, error: SipCertError, origin: Origin) -> Response | None:
        self.dropped.append(error)
        del self.dropped[:-32]
        if self._on_error is None:
            return None
        return self._on_error(error, origin)

    def _deliver(self, message: Request | Response, origin: Origin) -> None:
        try:
            self._handler(message, origin)
        except SipCertError as error:
            self._report(error, origin)

    def _datagram(self, data: bytes, host: str, port: int) -> None:
        origin = Origin(Transport.UDP, host, port)
        if not data.strip(b"\r\n"):
            return  # keep-alive (RFC 5626 §3.5.1)
        try:
            message = parse_message(data, datagram=True, limits=self._limits)
            if isinstance(message, Request):
                message = _stamp_received(message, host, port)
        except InputError as error:
            response = self._report(error, origin)
            if response is not None:
                with contextlib.suppress(TransportError):
                    self._sendto(response.to_bytes(), host, port)
            return
        self._deliver(message, origin)

    async def _accept(
        self, transport: Transport, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = writer.get_extra_info("peername")
        conn = StreamConnection(transport, str(peer[0]), int(peer[1]), None, reader, writer)
        self._connections.add(conn)
        self._pool[(transport, conn.host, conn.port, "")] = conn
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._read_loop(conn)
        except asyncio.CancelledError:
            # Closing cancels this task. It is asyncio.start_server's callback task, and
            # Python 3.11 asks a finished one for task.exception(), which raises for a
            # cancelled task and is logged with a traceback: so end it normally instead.
            pass
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def _read_loop(self, conn: StreamConnection) -> None:
        parser = StreamParser(self._limits)
        try:
            while not parser.failed:
                read = conn.reader.read(65536)
                try:
                    async with asyncio.timeout(
                        self._incomplete_timeout if parser.buffered else None
                    ):
                        data = await read
                except TimeoutError:
                    self._report(
                        InputError(
                            f"an incomplete SIP message ({parser.buffered} octets) stayed "
                            f"incomplete for {self._incomplete_timeout:g} s"
                        ),
                        conn.origin,
                    )
                    break
                if not data:
                    break
                conn.heard.set()
                events = parser.feed(data)
                while parser.pings:  # RFC 5626 §3.5.1: answer a CRLFCRLF ping with CRLF
                    parser.pings -= 1
                    with contextlib.suppress(TransportError):
                        await conn.send(b"\r\n")
                for event in events:
                    if isinstance(event, InputError):
                        response = self._report(event, conn.origin)
                        if response is not None:
                            with contextlib.suppress(TransportError):
                                await conn.send(response.to_bytes())
                    else:
                        if isinstance(event, Request) and event.method != "ACK":
                            conn.unanswered += 1
                        self._deliver(event, conn.origin)
            if parser.failed:  # answer what was framed before the framing was lost
                await conn.all_answered(self._incomplete_timeout)
        except (ConnectionError, OSError, ssl.SSLError):
            pass
        finally:
            self._forget(conn)
            await conn.aclose()

    def _forget(self, conn: StreamConnection) -> None:
        self._connections.discard(conn)
        for key, value in list(self._pool.items()):
            if value is conn:
                del self._pool[key]

    # -- sending ------------------------------------------------------------------------------

    async def send(self, message: Request | Response, hop: Hop) -> StreamConnection | None:
        """Send ``message`` to ``hop``; returns the stream connection used (None for UDP)."""
        data = message.to_bytes()
        if len(data) > self._limits.max_message:
            raise TransportError(f"SIP message of {len(data)} octets is over our own limit")
        if hop.transport is Transport.UDP:
            self._sendto(data, hop.host, hop.port)
            return None
        conn = await self.connection(hop)
        await conn.send(data)
        return conn

    async def reply(self, response: Response, origin: Origin) -> None:
        """Send a response the way its request came (RFC 3261 §18.2.2)."""
        if origin.transport is Transport.UDP:
            self._sendto(response.to_bytes(), origin.host, origin.port)
            return
        if origin.connection is None or origin.connection.closed:
            raise TransportError(
                f"the {origin.transport} connection from {origin.host}:{origin.port} is gone"
            )
        await origin.connection.send(response.to_bytes())
        if response.status >= 200:
            await origin.connection.note_answered()

    def _sendto(self, data: bytes, host: str, port: int) -> None:
        if self._udp is None or self._udp.is_closing():
            raise TransportError("no UDP socket: listen on UDP first")
        # asyncio hands a failed sendto (and any ICMP error reported later) to
        # error_received instead of raising: an EMSGSIZE noted there, during this send or
        # since the last one, fails this send.
        earlier, self._too_long = self._too_long, None
        if earlier is None:
            self._udp.sendto(data, (host, port))
        failed = earlier or self._too_long
        self._too_long = None
        if failed is not None:
            raise MessageTooLongError(
                f"{len(data)} octets do not fit a UDP datagram to {host}:{port} "
                f"({failed.strerror or 'message too long'}); use TCP"
            ) from failed

    def pooled(self, hop: Hop) -> StreamConnection | None:
        """The open pooled connection to ``hop``, if any (no connection is made)."""
        domain = hop.tls_domain if hop.transport is Transport.TLS else ""
        conn = self._pool.get((hop.transport, hop.host, hop.port, domain))
        return conn if conn is not None and not conn.closed else None

    async def connection(self, hop: Hop) -> StreamConnection:
        """An open, verified connection to ``hop``: pooled if one exists, else a new one."""
        if self._closed:
            raise TransportError("the SIP transport is closed")
        domain = hop.tls_domain if hop.transport is Transport.TLS else ""
        key = (hop.transport, hop.host, hop.port, domain)
        lock = self._connecting.setdefault(key, asyncio.Lock())
        async with lock:
            existing = self._pool.get(key)
            if existing is not None and not existing.closed:
                return existing
            conn = await self._connect(hop, domain)
            self._pool[key] = conn
            self._connections.add(conn)
            task = asyncio.get_running_loop().create_task(self._read_loop(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return conn

    async def _connect(self, hop: Hop, domain: str) -> StreamConnection:
        where = f"{hop.transport} {hop.host}:{hop.port}"
        ctx: ssl.SSLContext | None = None
        if hop.transport is Transport.TLS:
            try:
                normalize_domain(domain)
            except (AORError, InputTooLargeError) as exc:
                raise ConfigError(
                    f"TLS to {hop.host}:{hop.port} needs the SIP domain the peer must prove, "
                    f"not {domain!r} (RFC 5922 §4): {exc}"
                ) from exc
            ctx = self._tls_context or client_tls_context()
        try:
            async with asyncio.timeout(self._connect_timeout):
                reader, writer = await asyncio.open_connection(
                    hop.host, hop.port, ssl=ctx, server_hostname=domain if ctx else None
                )
        except ssl.SSLCertVerificationError as exc:
            raise UntrustedCertificateError(
                f"the SIP peer at {where} presented a certificate for {domain} that does not "
                f"verify: {exc.verify_message}"
            ) from exc
        except ssl.SSLError as exc:
            why = in_words(exc, peer(hop.host, hop.port), self._connect_timeout, HANDSHAKE)
            raise TLSHandshakeError(f"TLS handshake with {where} failed: {why}") from exc
        except TimeoutError as exc:
            raise TransportError(f"connecting to {where} timed out") from exc
        except OSError as exc:  # words, not "[Errno 111] Connect call failed (...)"
            step = HANDSHAKE if ctx is not None else CONNECT
            why = in_words(exc, peer(hop.host, hop.port), self._connect_timeout, step)
            raise TransportError(f"cannot connect to {where}: {why}") from exc
        conn = StreamConnection(hop.transport, hop.host, hop.port, domain or None, reader, writer)
        if ctx is not None:
            try:
                self._check_peer(writer, domain, where)
            except SipCertError:
                await conn.aclose()
                raise
        return conn

    @staticmethod
    def _check_peer(writer: asyncio.StreamWriter, domain: str, where: str) -> None:
        """RFC 5922 §7.1 (as draft §4.3): the certificate must name ``domain`` exactly."""
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der is None:
            raise TLSHandshakeError(f"the SIP peer at {where} presented no certificate")
        try:
            certificate = x509.load_der_x509_certificate(der)
        except ValueError as exc:
            raise CertificateParseError(f"SIP peer certificate does not parse: {exc}") from exc
        check_server_certificate(certificate, domain)

    # -- closing ------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close every socket and stop every reader; safe to call twice."""
        self._closed = True
        for server in self._servers:
            server.close()
        if self._udp is not None:
            self._udp.close()
        for conn in list(self._connections):
            conn.writer.close()
        await cancel_and_wait(self._tasks)
        for conn in list(self._connections):
            await conn.aclose()
        self._connections.clear()
        self._pool.clear()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        await asyncio.sleep(0)
