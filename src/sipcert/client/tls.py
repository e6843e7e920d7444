"""The strictly checked HTTPS connection to a Store (draft §4.3, §4.5, §5.1).

The draft's whole trust argument is that the Store proves, in the TLS handshake, that it
speaks for the AOR's domain -- "the original is example.com, not the result of any SRV
lookup" (draft §4.3). So the connection goes to the SRV target's address, but SNI, chain
verification and the exact name rule all use the AOR's domain, and all of it completes
before a single byte of HTTP is written.

The design that makes this hold with connection pooling: requests are addressed to
``https://<AOR domain>/...``, so the pool key (:class:`StrictTransport`'s lanes), SNI and
OpenSSL's hostname check are all the AOR domain. :class:`RoutedBackend` is the network
backend (httpcore's interface, asyncio underneath: :mod:`sipcert.client.net`) that turns a
connection to ``<AOR domain>`` into a TCP connection to the located targets in order
(RFC 2782 failover), and wraps the stream so that ``start_tls`` ends with
:func:`sipcert.proto.names.check_server_certificate`. A pooled connection is therefore only
ever reused for the domain it was verified for. HTTP/1.1 on it is
:mod:`sipcert.client.http11`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509

from sipcert import __version__
from sipcert.client.http11 import Answer, ClosedBeforeAnswerError, HTTP11Connection
from sipcert.client.locate import DEFAULT_HTTPS_PORT, Locator, Target
from sipcert.client.net import (
    AsyncioBackend,
    NetworkBackend,
    NetworkStream,
    connect_failures,
    network_failures,
    stream_failures,
    timeout_failures,
)
from sipcert.errors import (
    CertificateParseError,
    ConfigError,
    LocationError,
    NameMismatchError,
    SipCertError,
    TLSHandshakeError,
    TransportError,
    UntrustedCertificateError,
)
from sipcert.proto.names import check_server_certificate, server_certificate_names

# httpx is for PUT and DELETE only (handle_async_request imports it): the GET of ``sipcert
# fetch`` runs without it (issue 13, start-up time).
if TYPE_CHECKING:
    import httpx

__all__ = [
    "CONNECT",
    "HANDSHAKE",
    "TARGET_INFO",
    "ConnectionEvent",
    "RoutedBackend",
    "StrictTransport",
    "in_words",
    "make_ssl_context",
    "peer",
]

#: ``get_extra_info`` key (and response ``network_stream``) giving the :class:`Target` used.
TARGET_INFO = "sipcert_target"
# X509_V_ERR_HOSTNAME_MISMATCH: OpenSSL's own hostname check refused the certificate.
_HOSTNAME_MISMATCH = 62


def make_ssl_context(
    ca_file: str | Path | None = None, *, check_hostname: bool = True
) -> ssl.SSLContext:
    """A client context: TLS 1.2+, chain verified, exact host names only (draft §4.3).

    Trusts the system store, or only ``ca_file`` (PEM) when given. OpenSSL's hostname check
    stays on, without Common Name fallback and without wildcards, as a second line behind
    the explicit check of :func:`~sipcert.proto.names.check_server_certificate`; a caller
    that reports the presented names itself after the handshake (the SIP transport) turns
    it off with ``check_hostname=False`` and relies on that explicit check alone.
    """
    try:
        if ca_file is None:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        else:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load CA file {ca_file}: {exc}") from exc
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = check_hostname
    ctx.hostname_checks_common_name = False
    ctx._host_flags |= ssl._ssl.HOSTFLAG_NO_WILDCARDS  # type: ignore[attr-defined]
    return ctx


@dataclass(frozen=True)
class ConnectionEvent:
    """One step of connecting, for narration and tests: what, for which domain, where."""

    kind: str  # "connect-failed", "connected", "tls-failed", "tls-verified", "tls-refused"
    domain: str
    target: Target
    address: str
    detail: str = ""


class _CheckedStream:
    """A TCP stream whose ``start_tls`` insists on the AOR domain and checks it exactly.

    A handshake that fails before the server presents a certificate (a dead backend: reset,
    closed, timed out, a TLS alert) moves on to the next target of the ``walk`` (RFC 2782);
    a certificate that is refused stops there (draft §4.5), before any HTTP byte.
    """

    def __init__(self, inner: NetworkStream, walk: _Walk, target: Target, address: str) -> None:
        self._inner = inner
        self._walk = walk
        self._backend = walk.backend
        self._domain = walk.domain
        self._target = target
        self._address = address

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # Plain-text HTTP to a Store is never sent: the draft requires HTTPS (§4.3, §5).
        raise TransportError("refusing to send HTTP before the TLS check (draft §4.3)")

    async def aclose(self) -> None:
        await self._inner.aclose()

    def get_extra_info(self, info: str) -> Any:
        if info == TARGET_INFO:
            return self._target
        return self._inner.get_extra_info(info)

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> NetworkStream:
        if server_hostname != self._domain:
            await self._inner.aclose()
            raise TransportError(
                f"TLS server name {server_hostname!r} is not the AOR domain {self._domain!r}"
            )
        current = self
        while True:
            verified = await current._handshake(ssl_context, timeout)
            if verified is not None:
                return verified
            current = await self._walk.connect(timeout)

    async def _handshake(
        self, ssl_context: ssl.SSLContext, timeout: float | None
    ) -> NetworkStream | None:
        """The verified stream; ``None`` after a dead-backend failure (recorded in the walk).

        Raises the refusal when the server presented a certificate we do not accept.
        """
        where = f"{self._target.host} port {self._target.port} ({self._address})"
        try:
            tls = await self._inner.start_tls(ssl_context, self._domain, timeout)
        except connect_failures(OSError) as exc:
            verification = _verification_failure(exc)
            if verification is None:
                with contextlib.suppress(*network_failures(OSError)):
                    await self._inner.aclose()
                why = in_words(exc, peer(self._address, self._target.port), timeout, HANDSHAKE)
                why = _server_name_hint(why, self._domain)
                self._walk.fail(self._target, self._address, why, kind="tls-failed")
                return None
            error = await self._refusal(verification, ssl_context, timeout, where)
            self._backend.emit("tls-refused", self._domain, self._target, self._address, str(error))
            raise error from exc
        ssl_object = tls.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        try:
            if der is None:
                raise TLSHandshakeError(f"the Store at {where} presented no certificate")
            try:
                certificate = x509.load_der_x509_certificate(der)
            except ValueError as exc:
                raise CertificateParseError(f"Store TLS certificate does not parse: {exc}") from exc
            try:
                check_server_certificate(certificate, self._domain)
            except NameMismatchError as exc:
                raise NameMismatchError(
                    exc.expected, exc.presented, context=self._walk.context(where)
                ) from exc
        except SipCertError as error:
            await tls.aclose()
            self._backend.emit("tls-refused", self._domain, self._target, self._address, str(error))
            raise
        version = ssl_object.version() if ssl_object is not None else "?"
        self._backend.emit(
            "tls-verified",
            self._domain,
            self._target,
            self._address,
            f"{version}, certificate names {', '.join(server_certificate_names(certificate))}",
        )
        return _TargetStream(tls, self._target)

    async def _refusal(
        self,
        cause: ssl.SSLCertVerificationError,
        ssl_context: ssl.SSLContext,
        timeout: float | None,
        where: str,
    ) -> SipCertError:
        """The error for a certificate OpenSSL refused: the name (draft §4.3) or the chain."""
        if cause.verify_code == _HOSTNAME_MISMATCH:
            names = await self._backend.presented_names(
                self._address, self._target.port, self._domain, ssl_context, timeout
            )
            return NameMismatchError(self._domain, names, context=self._walk.context(where))
        return UntrustedCertificateError(
            f"the Store at {where} presented a certificate for {self._domain} that does "
            f"not verify: {cause.verify_message} (use --ca-file for a private CA)"
        )


def _verification_failure(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification error behind a failed handshake, if that was the cause."""
    for link in _causes(exc):
        if isinstance(link, ssl.SSLCertVerificationError):
            return link
    return None


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what caused it, outermost first (the first of each exception group)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 16:
        chain.append(current)
        if isinstance(current, BaseExceptionGroup) and current.exceptions:
            current = current.exceptions[0]
        else:
            current = current.__cause__ or current.__context__
    return chain


#: The step names used in failure descriptions.
CONNECT = "TCP connect"
HANDSHAKE = "TLS handshake"


def peer(address: str, port: int) -> str:
    """``127.0.0.1:8443`` or ``[::1]:8443``."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def in_words(exc: BaseException, where: str | None, timeout: float | None, step: str) -> str:
    """What a network failure means, for a person: no library class names or errno codes.

    ``where`` is the peer (``127.0.0.1:8443``) or ``None``; ``step`` says when it happened
    (:data:`CONNECT`, :data:`HANDSHAKE`, or e.g. ``"reading the answer"``).
    """
    by = f" by {where}" if where else ""
    during = f" during the {step}" if step == HANDSHAKE else f" while {step}"
    for link in _causes(exc):
        if isinstance(link, timeout_failures(TimeoutError)):
            return f"{step} timed out" + (f" after {timeout:g} s" if timeout else "")
        if isinstance(link, ConnectionRefusedError):
            return "connection refused" + by
        if isinstance(link, ConnectionResetError):
            return f"connection reset{by}{during}"
        if isinstance(link, ssl.SSLError):  # its errno is an OpenSSL code, not an OS one
            reason = (link.reason or "").replace("_", " ").lower()
            if reason and "eof" not in reason and not isinstance(link, ssl.SSLEOFError):
                return f"TLS error{during}: {reason}"
        elif isinstance(link, OSError) and link.errno is not None:
            return f"{os.strerror(link.errno).lower()}{during}"
    return f"{where or 'the peer'} closed the connection{during}"


def _server_name_hint(why: str, domain: str) -> str:
    """A handshake ended without a certificate: say the likely reason, SNI (draft §4.5)."""
    if "closed the connection" in why or "unrecognized name" in why:
        return f"{why} (it may not serve {domain}: TLS server name refused)"
    return why


class _TargetStream:
    """The verified TLS stream, remembering which target it reached."""

    def __init__(self, inner: NetworkStream, target: Target) -> None:
        self._inner = inner
        self._target = target

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> NetworkStream:
        raise TransportError("TLS inside TLS is not used with a Store")

    def get_extra_info(self, info: str) -> Any:
        if info == TARGET_INFO:
            return self._target
        return self._inner.get_extra_info(info)


class _Walk:
    """One connection's walk over a domain's targets in RFC 2782 order (draft §4.1).

    Shared by the TCP connect and the TLS handshake, so that a dead backend at either step
    moves on to the next address or target. A target's addresses are looked up when it is
    reached. ``failures`` says in words, in order, why each one was given up.
    """

    def __init__(
        self,
        backend: RoutedBackend,
        domain: str,
        route: tuple[Target, ...],
        local_address: str | None,
        socket_options: Iterable[Any] | None,
    ) -> None:
        self.backend = backend
        self.domain = domain
        self.failures: list[str] = []
        self._targets = list(route)
        self._pending: list[tuple[Target, str]] = []
        self._local_address = local_address
        self._socket_options = socket_options
        self._reached = False  # some address was tried: not merely a location failure
        self._handshakes_only = True  # every address reached failed in the TLS handshake

    def fail(self, target: Target, address: str | None, why: str, kind: str) -> None:
        where = f"{target.host}:{target.port}" + (f" ({address})" if address else "")
        self.failures.append(f"{where}: {why}")
        if address is not None and kind != "tls-failed":
            self._handshakes_only = False
        self.backend.emit(kind, self.domain, target, address or "-", why)

    def context(self, where: str) -> str:
        """Where a refusal happened, and what failed before it (for the error message)."""
        before = f"; before it: {'; '.join(self.failures)}" if self.failures else ""
        return f" -- at {where}{before}"

    async def _next(self) -> tuple[Target, str] | None:
        while not self._pending:
            if not self._targets:
                return None
            target = self._targets.pop(0)
            try:
                addresses = await self.backend.locator.addresses(target.host)
            except LocationError as exc:
                self.fail(target, None, str(exc), "connect-failed")
                continue
            if not addresses:
                self.fail(target, None, f"no address record for {target.host}", "connect-failed")
            self._pending = [(target, address) for address in addresses]
        return self._pending.pop(0)

    async def connect(self, timeout: float | None) -> _CheckedStream:
        """A TCP connection to the next target that accepts one, or the error naming all."""
        while (candidate := await self._next()) is not None:
            target, address = candidate
            self._reached = True
            try:
                stream = await self.backend.inner.connect_tcp(
                    address,
                    target.port,
                    timeout=timeout,
                    local_address=self._local_address,
                    socket_options=self._socket_options,
                )
            except connect_failures() as exc:
                why = in_words(exc, peer(address, target.port), timeout, CONNECT)
                self.fail(target, address, why, "connect-failed")
                continue
            self.backend.emit("connected", self.domain, target, address)
            return _CheckedStream(stream, self, target, address)
        tried = "; ".join(self.failures) or "no target"
        if not self._reached:  # no target has an address: the domain is not there
            raise LocationError(f"could not locate the Store of {self.domain}: {tried}")
        if self._handshakes_only:  # every server answered TCP: say it was TLS that failed
            raise TLSHandshakeError(f"no TLS handshake with a Store of {self.domain}: {tried}")
        raise TransportError(f"no Store target of {self.domain} could be reached: {tried}")


class RoutedBackend:
    """Network backend: ``<AOR domain>`` → the located targets, tried in order, over
    ``inner`` (:class:`~sipcert.client.net.AsyncioBackend` unless a test gives another).

    :meth:`set_route` records the targets of a domain (from :class:`Locator`); a connection
    for a domain without a route is refused, so nothing ever reaches a host the URL names
    by accident. ``on_event`` receives a :class:`ConnectionEvent` per step.
    """

    def __init__(
        self,
        locator: Locator,
        *,
        inner: NetworkBackend | None = None,
        on_event: Callable[[ConnectionEvent], None] | None = None,
    ) -> None:
        self.locator = locator
        self.inner = inner if inner is not None else AsyncioBackend()
        self._routes: dict[str, tuple[Target, ...]] = {}
        self.on_event = on_event

    def set_route(self, domain: str, targets: Iterable[Target]) -> None:
        """Connections for ``domain`` go to ``targets``, first to last."""
        route = tuple(targets)
        if not route:
            raise LocationError(f"no Store target for {domain}")
        self._routes[domain] = route

    def emit(self, kind: str, domain: str, target: Target, address: str, detail: str = "") -> None:
        if self.on_event is not None:
            self.on_event(ConnectionEvent(kind, domain, target, address, detail))

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> NetworkStream:
        route = self._routes.get(host)
        if route is None:
            raise TransportError(f"no located Store for {host}: locate it first (draft §4.5)")
        walk = _Walk(self, host, route, local_address, socket_options)
        return await walk.connect(timeout)

    async def presented_names(
        self,
        address: str,
        port: int,
        domain: str,
        ssl_context: ssl.SSLContext,
        timeout: float | None,
    ) -> list[str]:
        """The dNSNames a server presents for SNI ``domain``, for the mismatch message only.

        OpenSSL refuses the certificate before we can read it, so a second, unverified
        handshake reads the names. It sends no HTTP and trusts nothing it learns.
        """
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        probe.minimum_version = ssl_context.minimum_version
        probe.check_hostname = False
        probe.verify_mode = ssl.CERT_NONE
        try:
            stream = await self.inner.connect_tcp(address, port, timeout=timeout)
            tls = await stream.start_tls(probe, domain, timeout)
            try:
                der = tls.get_extra_info("ssl_object").getpeercert(binary_form=True)
            finally:
                await tls.aclose()
            return server_certificate_names(x509.load_der_x509_certificate(der))
        except connect_failures(ValueError, SipCertError):
            return ["(certificate not readable)"]

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> NetworkStream:
        raise TransportError("a Store is reached over TCP, not a Unix socket")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class _Lane:
    """One connection's worth of a domain's pool: at most one HTTP/1.1 connection, one
    request on it at a time (``lock``), requests queued behind it counted in ``in_flight``.

    httpcore's pool checked every idle connection (a ``poll`` each) whenever a request
    started or ended, so one pool of eight connections made eight concurrent fetches slower
    than sequential ones (issue 13). A lane only ever looks at its own connection.
    """

    def __init__(self) -> None:
        self.connection: HTTP11Connection | None = None
        self.in_flight = 0
        self.lock = asyncio.Lock()
        self.idle_since = 0.0

    def release(self) -> None:
        self.idle_since = time.monotonic()
        self.in_flight -= 1
        self.lock.release()

    async def close(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            await connection.aclose()


def _timeouts(request: httpx.Request) -> tuple[float | None, float | None]:
    """The (connect, read/write) timeouts httpx put on ``request``."""
    timeouts = request.extensions.get("timeout", {})
    return timeouts.get("connect"), timeouts.get("read")


class StrictTransport:
    """HTTPS to Stores over :class:`RoutedBackend`: HTTP/1.1, pooled per domain (issue 13).

    Each domain has up to ``per_domain`` connections (lanes, made as concurrent requests
    need them; a request goes to the lane with the fewest requests in flight, so
    sequential requests keep reusing one connection), and at most ``max_connections``
    lanes exist in all: past that, the least recently used domain with nothing in flight
    is closed. :meth:`get` is the Caller's hot path (draft §4.5): a GET framed and parsed
    with h11's grammar (:mod:`sipcert.client.http11`) without httpx. It also has httpx's
    transport interface (:meth:`handle_async_request`; ``viahttpx.HttpxTransport`` gives it
    httpx's type) and so carries everything else (PUT and DELETE with Digest) over the same
    connections; only that imports httpx, which the GET never loads (issue 13). A GET whose
    kept-alive connection the Store closed while idle is sent once more on a new one.
    Network failures surface as :class:`~sipcert.errors.TransportError` (and its
    subclasses), name mismatches as :class:`~sipcert.errors.NameMismatchError`.
    """

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        backend: RoutedBackend,
        *,
        max_connections: int = 20,
        per_domain: int = 4,
        keepalive_expiry: float = 30.0,
        user_agent: str = f"sipcert/{__version__}",
    ) -> None:
        if max_connections < 1 or per_domain < 1:
            raise ValueError("max_connections and per_domain must be >= 1")
        self._ssl_context = ssl_context
        self._backend = backend
        self._keepalive_expiry = keepalive_expiry
        self._user_agent = user_agent.encode("ascii")
        self.max_connections = max_connections
        self.per_domain = min(per_domain, max_connections)
        #: Lanes by domain, least recently used first.
        self._lanes: dict[str, list[_Lane]] = {}

    @property
    def connections(self) -> list[HTTP11Connection]:
        """The open pooled connections of every domain (for tests and diagnostics)."""
        return [
            lane.connection
            for lanes in self._lanes.values()
            for lane in lanes
            if lane.connection is not None and not lane.connection.closed
        ]

    async def _lane(self, domain: str) -> _Lane:
        """The lane for a request to ``domain`` (made, and older domains closed, as needed)."""
        lanes = self._lanes.pop(domain, [])
        self._lanes[domain] = lanes  # now the most recently used
        idle = next((lane for lane in lanes if lane.in_flight == 0), None)
        if idle is not None:
            return idle
        if len(lanes) < self.per_domain:
            await self._make_room()
            if sum(map(len, self._lanes.values())) < self.max_connections:
                lanes.append(_Lane())
                return lanes[-1]
        if not lanes:  # every lane of every other domain is busy: wait in a new one anyway
            lanes.append(_Lane())
            return lanes[-1]
        return min(lanes, key=lambda lane: lane.in_flight)

    async def _make_room(self) -> None:
        """Close least recently used idle domains while all lanes together are at the cap."""
        while sum(map(len, self._lanes.values())) >= self.max_connections:
            victim = next(
                (
                    d
                    for d, lanes in self._lanes.items()
                    if lanes and all(lane.in_flight == 0 for lane in lanes)
                ),
                None,
            )
            if victim is None:
                return
            for lane in self._lanes.pop(victim):
                await lane.close()

    async def _acquire(self, domain: str) -> _Lane:
        lane = await self._lane(domain)
        lane.in_flight += 1
        try:
            await lane.lock.acquire()
        except BaseException:
            lane.in_flight -= 1
            raise
        return lane

    async def _connection(
        self, lane: _Lane, domain: str, timeout: float | None
    ) -> HTTP11Connection:
        """The lane's connection if it can carry a request, else a new verified one."""
        connection = lane.connection
        if connection is not None:
            idle = time.monotonic() - lane.idle_since
            if connection.reusable and idle <= self._keepalive_expiry:
                return connection
            await lane.close()
        try:
            tcp = await self._backend.connect_tcp(domain, DEFAULT_HTTPS_PORT, timeout=timeout)
            stream = await tcp.start_tls(self._ssl_context, domain, timeout)
        except stream_failures(OSError) as exc:
            why = in_words(exc, None, timeout, "connecting")
            raise TransportError(f"connecting to the Store of {domain} failed: {why}") from exc
        lane.connection = HTTP11Connection(stream, domain)
        return lane.connection

    async def get(
        self, domain: str, target: str, *, max_size: int, timeout: float | None
    ) -> Answer:
        """``GET https://<domain><target>`` and its whole answer, at most ``max_size``
        bytes of body (:class:`~sipcert.errors.InputTooLargeError` beyond)."""
        headers = [(b"Host", domain.encode("ascii")), (b"User-Agent", self._user_agent)]
        lane = await self._acquire(domain)
        try:
            for attempt in (1, 2):
                connection = await self._connection(lane, domain, timeout)
                reused = connection.answered > 0
                try:
                    return await connection.exchange(
                        b"GET", target.encode("ascii"), headers, max_size, timeout
                    )
                except ClosedBeforeAnswerError:
                    if attempt == 2 or not reused:
                        raise
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            lane.release()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        import httpx  # PUT and DELETE only: the lean GET needs none of it (issue 13)

        from sipcert.client.viahttpx import LaneBody

        if request.url.scheme != "https":
            raise TransportError("the Store must be reached over HTTPS (draft §4.3, §5)")
        domain = request.url.host
        connect_timeout, timeout = _timeouts(request)
        assert isinstance(request.stream, httpx.AsyncByteStream)  # noqa: S101
        body = b"".join([chunk async for chunk in request.stream])
        retry = request.method in ("GET", "HEAD")  # idempotent, and no body to resend
        lane = await self._acquire(domain)
        try:
            for attempt in (1, 2):
                connection = await self._connection(lane, domain, connect_timeout)
                reused = connection.answered > 0
                try:
                    await connection.send(
                        request.method.encode("ascii"),
                        request.url.raw_path,
                        request.headers.raw,
                        body,
                        timeout,
                    )
                    head = await connection.receive_head(timeout)
                    break
                except ClosedBeforeAnswerError:
                    if attempt == 2 or not reused or not retry:
                        raise
        except BaseException:
            lane.release()
            raise
        return httpx.Response(
            status_code=head.status_code,
            headers=list(head.headers),
            stream=LaneBody(connection, lane, timeout),
            extensions={
                "network_stream": connection.stream,
                "http_version": b"HTTP/1.1",
                "reason_phrase": head.reason,
            },
        )

    async def __aenter__(self) -> StrictTransport:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        lanes, self._lanes = self._lanes, {}
        for domain_lanes in lanes.values():
            for lane in domain_lanes:
                await lane.close()
