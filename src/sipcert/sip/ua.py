"""A small SIP user agent: REGISTER, MESSAGE, INVITE/ACK/BYE, over UDP, TCP or TLS.

Enough of RFC 3261 for the draft's flow (§1 figure, steps 2-4: a signed and encrypted
request crosses the proxies to the callee):

* client transactions (§17.1) with the UDP retransmission timers A/E and time-outs B/F,
  scaled by :class:`Timers` so tests run fast; ACK for non-2xx finals inside the
  transaction, ACK for 2xx end to end with a new branch (§13.2.2.4, §17.1.1.3);
* server transactions (§17.2) that absorb retransmitted requests by resending the last
  response, and 2xx retransmission until the ACK arrives (§13.3.1.4);
* Digest answers to 401/407 with :class:`sipcert.proto.digest.DigestClient` (MD5 and
  SHA-256, ``nc`` counted per nonce, credentials reused pre-emptively, §22);
* dialogs (§12) with route sets from Record-Route, so in-dialog requests follow a proxy's
  loose routing (§16.12, Kamailio's ``record_route``/``loose_route``).

Bodies are :class:`~sipcert.proto.mime.MimePart` both ways: the caller gives the body of
MESSAGE, INVITE and the 200 answering an INVITE, and callbacks receive every request with
its body as a ``MimePart``. The S/MIME layer sits on top of exactly that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from sipcert.client.locate import DNSResolver
from sipcert.errors import (
    ConfigError,
    InputError,
    LocationError,
    SipCertError,
    SipMessageError,
    TransportError,
)
from sipcert.proto.aor import AOR, parse_aor
from sipcert.proto.digest import DigestClient
from sipcert.proto.logsafe import log_safe
from sipcert.proto.mime import MimePart, parse_content_type
from sipcert.proto.sip import (
    NameAddr,
    Request,
    Response,
    SipLimits,
    body_part,
    error_response,
    make_response,
    new_branch,
    new_call_id,
    new_tag,
    parse_name_addr,
    parse_uri,
    with_body,
)
from sipcert.sip.nexthop import next_hops
from sipcert.sip.transport import (
    Hop,
    MessageTooLongError,
    Origin,
    SipTransport,
    Transport,
    cancel_and_wait,
)

__all__ = [
    "ACCEPTED_TYPES",
    "ALLOWED_METHODS",
    "Call",
    "Dialog",
    "IncomingRequest",
    "InviteHandler",
    "MessageHandler",
    "OptionsHandler",
    "Timers",
    "UserAgent",
]

log = logging.getLogger(__name__)

ALLOWED_METHODS = ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "MESSAGE")
_ALLOW = ", ".join(ALLOWED_METHODS)
#: Methods of RFC 3261 and its extensions we know but do not serve: 405, not 501 (§8.2.1).
_KNOWN_METHODS = frozenset(
    {"REGISTER", "SUBSCRIBE", "NOTIFY", "REFER", "INFO", "UPDATE", "PRACK", "PUBLISH"}
)
#: Request body types this UA reads (§8.2.3): SDP, text and their S/MIME protection.
ACCEPTED_TYPES = (
    "application/sdp",
    "text/plain",
    "application/pkcs7-mime",
    "multipart/signed",
    "multipart/mixed",
    "multipart/alternative",
    "message/cpim",
    "message/sipfrag",
    "message/external-body",
)
#: What the 200 to an INVITE may carry: SDP, signed or encrypted (draft §1, RFC 3261 §23).
_ANSWER_TYPES = ("application/sdp", "multipart/signed", "application/pkcs7-mime")


@dataclass(frozen=True)
class Timers:
    """RFC 3261 §17 timer values in seconds (T1 500 ms, T2 4 s, T4 5 s by default).

    Tests scale them down. ``invite_answer`` bounds the wait for a final response after a
    provisional one (the UAC's stand-in for Timer C, §16.6).
    """

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    invite_answer: float = 180.0

    @property
    def timeout(self) -> float:
        """Timer B / F / H / J: 64*T1 (§17.1.1.2, §17.1.2.2)."""
        return 64 * self.t1


@dataclass(frozen=True)
class IncomingRequest:
    """A request delivered to a callback: the parsed message, its body, where it came from."""

    request: Request
    body: MimePart | None
    origin: Origin
    dialog: Dialog | None = None

    @property
    def sender(self) -> NameAddr:
        return self.request.from_


MessageHandler = Callable[[IncomingRequest], Awaitable[int | None]]
"""Answers a MESSAGE: the status to send (None means 200)."""
InviteHandler = Callable[[IncomingRequest], Awaitable[MimePart | int]]
"""Answers an INVITE: the body (e.g. SDP) of the 200, or a status code >= 300 to refuse."""
OptionsHandler = Callable[[IncomingRequest], Awaitable[MimePart | None]]
"""Supplies the body of the 200 to an OPTIONS (draft §4.2 location), or None."""


@dataclass
class Dialog:
    """The state of one dialog (RFC 3261 §12): IDs, sequence numbers, target and route set."""

    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: str
    remote_uri: str
    remote_target: str
    route_set: list[str]
    local_seq: int
    remote_seq: int | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.call_id, self.local_tag, self.remote_tag)


@dataclass(eq=False)
class Call:
    """One INVITE session, caller or callee side.

    ``response`` is the final response (the caller's 2xx or refusal, or the 200 the callee
    sent); ``remote_body`` the body the other side sent (the 200's on the caller side, the
    INVITE's on the callee side).
    """

    ua: UserAgent = field(repr=False)
    invite: Request
    dialog: Dialog | None = None
    response: Response | None = None
    provisional: list[Response] = field(default_factory=list)
    remote_body: MimePart | None = None
    ack: Request | None = None
    ack_hop: Hop | None = field(default=None, repr=False)
    confirmed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    ended: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    ended_by: str = ""
    _early: list[Response] = field(default_factory=list, repr=False)

    @property
    def established(self) -> bool:
        return (
            self.response is not None
            and 200 <= self.response.status < 300
            and not self.ended.is_set()
        )

    async def bye(self) -> Response:
        """End the call with BYE (RFC 3261 §15.1.1) and return the final response."""
        if self.dialog is None or self.ended.is_set():
            raise ConfigError("the call is not established")
        response = await self.ua._in_dialog(self.dialog, "BYE")
        self._end("local BYE")
        return response

    def _end(self, why: str) -> None:
        if not self.ended.is_set():
            self.ended_by = why
            self.ended.set()
            if self.dialog is not None:
                self.ua._calls.pop(self.dialog.key, None)


@dataclass(eq=False)
class _ServerTransaction:
    request: Request
    origin: Origin
    last: Response | None = None
    task: asyncio.Task[None] | None = None


class UserAgent:
    """A SIP UA for one AOR, reachable on one transport (RFC 3261 §8, §10, §12-§17).

    ``proxy`` is the outbound proxy / registrar every out-of-dialog request goes to (with a
    pre-loaded Route, §8.1.2); its ``domain`` is what TLS verifies (RFC 5922). Use as an
    async context manager, or call :meth:`start` and :meth:`aclose`.
    """

    def __init__(
        self,
        aor: AOR | str,
        *,
        password: str | None = None,
        username: str | None = None,
        proxy: Hop | None = None,
        transport: Transport = Transport.UDP,
        host: str = "127.0.0.1",
        port: int = 0,
        tls_context: ssl.SSLContext | None = None,
        server_tls_context: ssl.SSLContext | None = None,
        timers: Timers | None = None,
        limits: SipLimits | None = None,
        resolver: DNSResolver | None = None,
        on_message: MessageHandler | None = None,
        on_invite: InviteHandler | None = None,
        on_options: OptionsHandler | None = None,
        display_name: str | None = None,
        user_agent: str = "sipcert",
        incomplete_timeout: float = 32.0,
        path_mtu: int | None = None,
        keepalive: float | None = None,
        keepalive_timeout: float = 10.0,
    ) -> None:
        self.aor = aor if isinstance(aor, AOR) else parse_aor(aor)
        self.uri = f"sip:{self.aor}"
        self.proxy = proxy
        self._resolver = resolver
        self._keepalive = keepalive
        self._keepalive_timeout = keepalive_timeout
        self._keepalive_task: asyncio.Task[None] | None = None
        self._expires = 300
        #: CRLF pings sent and connections to the registrar re-established (RFC 5626 §4.4.1).
        self.keepalive_pings = 0
        self.reconnects = 0
        self.transport_kind = transport
        self.timers = timers or Timers()
        #: Largest request sent over UDP (RFC 3261 §18.1.1): MTU - 200, or 1300.
        self.udp_limit = path_mtu - 200 if path_mtu is not None else 1300
        self.on_message = on_message
        self.on_invite = on_invite
        self.on_options = on_options
        #: MESSAGEs received while no ``on_message`` handler is set (answered 200).
        self.inbox: asyncio.Queue[IncomingRequest] = asyncio.Queue()
        #: Calls this UA answered with a 200, in order.
        self.incoming_calls: asyncio.Queue[Call] = asyncio.Queue()
        self._password = password
        self._username = username or self.aor.user
        self._display = display_name
        self._user_agent = user_agent
        self._host = host
        self._port = port
        self._server_tls = server_tls_context
        self._transport = SipTransport(
            self._on_received,
            limits=limits or SipLimits(),
            tls_context=tls_context,
            on_error=self._on_unparsed,
            incomplete_timeout=incomplete_timeout,
        )
        self._www: DigestClient | None = None
        self._proxy_auth: DigestClient | None = None
        self._client_txns: dict[tuple[str, str], asyncio.Queue[Response]] = {}
        self._server_txns: dict[tuple[str, str, str], _ServerTransaction] = {}
        self._calls: dict[tuple[str, str, str], Call] = {}
        self._invites: dict[tuple[str, str], Call] = {}
        self._completed_acks: dict[str, tuple[Request, Hop]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self._register_call_id = new_call_id()
        self._register_cseq = 0
        self._started = False

    # -- life cycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> UserAgent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Open the listener (UDP always, so UDP peers and responses reach us)."""
        if self._started:
            return
        self._started = True
        kind = self.transport_kind
        if kind is Transport.UDP:
            await self._transport.listen(Transport.UDP, self._host, self._port)
        elif kind is Transport.TCP:
            await self._transport.listen(Transport.TCP, self._host, self._port)
        elif self._server_tls is not None:
            await self._transport.listen(
                Transport.TLS, self._host, self._port, ssl_context=self._server_tls
            )

    async def aclose(self) -> None:
        """Stop every task and timer and close every socket."""
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        await cancel_and_wait(self._tasks)
        await self._transport.aclose()

    @property
    def transport(self) -> SipTransport:
        return self._transport

    @property
    def local_address(self) -> tuple[str, int]:
        """Where this UA listens (for SIPp's remote host, tests and Contact)."""
        if self.transport_kind not in self._transport.transports:
            raise ConfigError(
                f"this UA has no {self.transport_kind} listener, so it has no Contact: a TLS "
                "UA needs server_tls_context to receive INVITEs and in-dialog requests"
            )
        return self._transport.local_address(self.transport_kind)

    @property
    def contact(self) -> str:
        """Our Contact URI (§8.1.1.8): the listener's address and transport; ``sips:`` for
        TLS (RFC 3261 §19.1, RFC 5630 §3.1.3: ``transport=tls`` is deprecated)."""
        host, port = self.local_address
        if self.transport_kind is Transport.TLS:
            return f"sips:{self.aor.user}@{host}:{port}"
        suffix = "" if self.transport_kind is Transport.UDP else f";transport={self.transport_kind}"
        return f"sip:{self.aor.user}@{host}:{port}{suffix}"

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _later(self, delay: float, callback: Callable[[], object]) -> None:
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(handle)
            callback()

        handle = loop.call_later(delay, fire)
        self._timers.add(handle)

    # -- building requests ----------------------------------------------------------------------

    async def _hops(self, target: str) -> list[Hop]:
        """Where an out-of-dialog request for ``target`` goes: the outbound proxy, else the
        hops RFC 3263 locates for the target's domain, in the order to try them (§4.3)."""
        if self.proxy is not None:
            return [self.proxy]
        if self._resolver is None:
            raise ConfigError(
                "no proxy configured: pass proxy=Hop(...) or a DNS resolver to UserAgent"
            )
        uri = parse_uri(target)
        try:
            hops = await next_hops(uri, self._resolver)
        except LocationError as error:
            raise LocationError(f"no next hop for {uri.host} in DNS (RFC 3263): {error}") from error
        for index, hop in enumerate(hops):  # §4.3: skip hops whose connection fails
            if index == len(hops) - 1:
                return hops[index:]
            try:
                await self._via(hop)
            except TransportError as error:
                log.info("next hop %s:%s (%s) failed: %s", hop.host, hop.port, hop.transport, error)
                continue
            return hops[index:]
        return hops

    def _route(self, hop: Hop) -> list[tuple[str, str]]:
        """The pre-loaded Route to the outbound proxy (§8.1.2); none without one."""
        return [("Route", f"<{self._proxy_uri(hop)}>")] if self.proxy is not None else []

    def _proxy_uri(self, hop: Hop) -> str:
        transport = "" if hop.transport is Transport.UDP else f";transport={hop.transport}"
        host = f"[{hop.host}]" if ":" in hop.host else hop.host
        return f"sip:{host}:{hop.port}{transport};lr"

    async def _via(self, hop: Hop) -> str:
        """Our Via for ``hop`` (§8.1.1.7, ``rport`` of RFC 3581)."""
        if hop.transport in self._transport.transports:
            host, port = self._transport.local_address(hop.transport)
        elif hop.transport is Transport.UDP:
            raise ConfigError("this UA does not listen on UDP")
        else:
            conn = await self._transport.connection(hop)
            sock = conn.writer.get_extra_info("sockname")
            host, port = str(sock[0]), int(sock[1])
        return f"SIP/2.0/{hop.transport.via_name} {host}:{port};rport;branch={new_branch()}"

    def _from(self, tag: str) -> str:
        display = f'"{self._display}" ' if self._display else ""
        return f"{display}<{self.uri}>;tag={tag}"

    def _common(self) -> list[tuple[str, str]]:
        return [("Max-Forwards", "70"), ("User-Agent", self._user_agent)]

    def _contact_header(self) -> tuple[str, str]:
        return ("Contact", f"<{self.contact}>")

    def _hop_for(self, uri: str) -> Hop:
        """Next hop for a URI from a route set or a remote target (RFC 3263 reduced)."""
        parsed = parse_uri(uri)
        hop = Hop.from_uri(parsed)
        proxy = self.proxy
        if (
            proxy is not None
            and hop.host == proxy.host
            and hop.port == proxy.port
            and hop.transport is proxy.transport
        ):
            return proxy
        return hop

    # -- sending requests ----------------------------------------------------------------------

    async def _send(
        self,
        request: Request,
        hop: Hop,
        *,
        on_provisional: Callable[[Response], None] | None = None,
        authenticate: bool = True,
        fallbacks: Sequence[Hop] = (),
    ) -> tuple[Request, Response]:
        """Run the client transaction, answering 401/407 challenges (§22.2); return both.

        A request too large for UDP goes over TCP (§18.1.1, :meth:`_sized`); a 513 to one
        sent over UDP, or a UDP send refused with EMSGSIZE, is retried once over TCP.
        """
        challenged = 0
        stream = False
        remaining = list(fallbacks)
        while True:
            request, used = await self._sized(request, hop, stream=stream)
            try:
                response = await self._transaction(request, used, on_provisional)
            except MessageTooLongError as error:
                if used.transport is not Transport.UDP or stream:
                    raise
                # §18.1.1: EMSGSIZE (over the datagram limit, or the path MTU an ICMP
                # "fragmentation needed" reported) is the 513 case found locally: TCP.
                log.info("%s over UDP: %s; retrying over TCP", request.method, error)
                stream = True
                continue
            except TransportError as error:
                if not remaining:
                    raise
                # RFC 3263 §4.3: a connection failure or a timeout moves to the next hop.
                log.info(
                    "%s to %s:%s failed (%s): next hop", request.method, used.host, used.port, error
                )
                stream = False
                while True:
                    hop = remaining.pop(0)
                    try:
                        request = request.replacing("Via", await self._via(hop))
                        break
                    except TransportError:
                        if not remaining:
                            raise
                continue
            if response.status == 513 and used.transport is Transport.UDP and not stream:
                stream = True  # §21.5.14: too large for the server over UDP; try a stream
                number, method = request.cseq
                request = request.replacing("CSeq", f"{number + 1} {method}")
                continue
            if response.status not in (401, 407) or not authenticate or self._password is None:
                return request, response
            challenged += 1
            if challenged > 2:
                return request, response
            request = await self._answer_challenge(request, response, hop)

    async def _sized(self, request: Request, hop: Hop, *, stream: bool) -> tuple[Request, Hop]:
        """RFC 3261 §18.1.1: over TCP when within 200 bytes of the path MTU (over 1300 bytes
        when it is unknown), else as given. If TCP cannot be reached, UDP after all (the
        §18.1.1 fallback for a refused connection)."""
        if hop.transport is not Transport.UDP:
            return request, hop
        if not stream and len(request.to_bytes()) <= self.udp_limit:
            return request, hop
        tcp = Hop(Transport.TCP, hop.host, hop.port, hop.domain)
        try:
            via = await self._via(tcp)
        except TransportError as error:
            log.info(
                "%s over TCP to %s:%s failed (%s): UDP", request.method, hop.host, hop.port, error
            )
            return request, hop
        vias = request.get_all("Via")
        return request.replacing("Via", via, *vias[1:]), tcp

    def _digest_client(self, proxy: bool) -> DigestClient:
        if self._password is None:
            raise ConfigError("no password configured")
        if proxy:
            if self._proxy_auth is None:
                self._proxy_auth = DigestClient(self._username, self._password)
            return self._proxy_auth
        if self._www is None:
            self._www = DigestClient(self._username, self._password)
        return self._www

    async def _answer_challenge(self, request: Request, response: Response, hop: Hop) -> Request:
        """The same request with credentials, CSeq + 1 and a new branch (§22.2, §8.1.3.5)."""
        proxy = response.status == 407
        challenge_name = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
        answer_name = "Proxy-Authorization" if proxy else "Authorization"
        client = self._digest_client(proxy)
        value = client.answer(
            response.get_all(challenge_name), method=request.method, uri=request.uri
        )
        number, method = request.cseq
        retry = request.without(answer_name).with_headers((answer_name, value))
        return retry.replacing("CSeq", f"{number + 1} {method}").replacing(
            "Via", await self._via(hop)
        )

    def _preemptive(self, method: str, uri: str) -> list[tuple[str, str]]:
        """Credentials for a nonce we already hold, ``nc`` incremented (§22.3).

        REGISTER answers the registrar (401, Authorization); other requests the proxy (407,
        Proxy-Authorization), so no credentials travel to a party that did not ask.
        """
        client, name = (
            (self._www, "Authorization")
            if method == "REGISTER"
            else (self._proxy_auth, "Proxy-Authorization")
        )
        value = client.authorization(method=method, uri=uri) if client is not None else None
        return [] if value is None else [(name, value)]

    async def _transaction(
        self,
        request: Request,
        hop: Hop,
        on_provisional: Callable[[Response], None] | None,
    ) -> Response:
        """A client transaction (§17.1): retransmit over UDP, wait for the final response."""
        branch = request.top_via.branch or ""
        method = request.method
        key = (branch, method)
        queue: asyncio.Queue[Response] = asyncio.Queue()
        self._client_txns[key] = queue
        loop = asyncio.get_running_loop()
        timers = self.timers
        try:
            await self._transport.send(request, hop)
            deadline = loop.time() + timers.timeout
            interval = timers.t1
            retransmit = not hop.transport.reliable
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    name = "B" if method == "INVITE" else "F"
                    raise TransportError(
                        f"no final response to {method} {request.uri} from "
                        f"{hop.host}:{hop.port} ({hop.transport}): Timer {name} fired"
                    )
                wait = min(remaining, interval) if retransmit else remaining
                try:
                    async with asyncio.timeout(wait):
                        response = await queue.get()
                except TimeoutError:
                    if retransmit and loop.time() < deadline:
                        await self._transport.send(request, hop)  # Timer A / E
                        interval = (
                            interval * 2 if method == "INVITE" else min(interval * 2, timers.t2)
                        )
                    continue
                if response.status < 200:
                    if on_provisional is not None:
                        on_provisional(response)
                    if method == "INVITE":
                        retransmit = False
                        deadline = loop.time() + timers.invite_answer
                    else:
                        interval = timers.t2
                    continue
                if method == "INVITE" and response.status >= 300:
                    await self._ack_non_2xx(request, response, hop)
                return response
        finally:
            del self._client_txns[key]
            while not queue.empty():
                self._stray_response(queue.get_nowait())

    async def _ack_non_2xx(self, invite: Request, response: Response, hop: Hop) -> None:
        """ACK a non-2xx final in the INVITE transaction, same branch (§17.1.1.3)."""
        number, _ = invite.cseq
        headers = [
            ("Via", invite.get_all("Via")[0]),
            ("From", invite.require("From")),
            ("To", response.require("To")),
            ("Call-ID", invite.call_id),
            ("CSeq", f"{number} ACK"),
            ("Max-Forwards", "70"),
            *(("Route", r) for r in invite.get_all("Route")),
        ]
        ack = Request("ACK", invite.uri, headers=tuple(headers))
        branch = invite.top_via.branch or ""
        self._completed_acks[branch] = (ack, hop)
        self._later(self.timers.timeout, lambda: self._completed_acks.pop(branch, None))
        await self._transport.send(ack, hop)

    # -- REGISTER ------------------------------------------------------------------------------

    async def register(self, expires: int = 300) -> Response:
        """Register our Contact for our AOR at the proxy (RFC 3261 §10.2); final response.

        The registrar's 401 is answered with Digest; later registrations reuse the nonce
        with an incremented ``nc``.
        """
        uri = f"sip:{self.aor.host}"
        hop, *others = await self._hops(uri)
        self._register_cseq += 1
        aor = f"<{self.uri}>"
        headers = [
            ("Via", await self._via(hop)),
            ("From", f"{aor};tag={new_tag()}"),
            ("To", aor),
            ("Call-ID", self._register_call_id),
            ("CSeq", f"{self._register_cseq} REGISTER"),
            *self._route(hop),
            self._contact_header(),
            ("Expires", str(expires)),
            *self._common(),
            *self._preemptive("REGISTER", uri),
        ]
        request, response = await self._send(
            Request("REGISTER", uri, headers=tuple(headers)), hop, fallbacks=others
        )
        self._register_cseq = request.cseq[0]
        self._expires = expires
        task = self._keepalive_task
        running = task is not None and not task.done()
        if expires == 0 and task is not None and running and task is not asyncio.current_task():
            task.cancel()
        elif (
            200 <= response.status < 300
            and expires > 0
            and self._keepalive is not None
            and hop.transport.reliable
            and not running
        ):
            self._keepalive_task = self._spawn(self._keep_alive(hop, self._keepalive))
        return response

    async def _keep_alive(self, hop: Hop, interval: float) -> None:
        """RFC 5626 §4.4.1: a CRLFCRLF ping on the idle stream to the registrar every
        ``interval`` s; without an answer (CRLF pong, or any byte) within
        ``keepalive_timeout`` the connection is closed and the registration re-made over a
        new one (§4.4: a flow that failed is re-established)."""
        while True:
            await asyncio.sleep(interval)
            conn = self._transport.pooled(hop)
            if conn is not None:
                conn.heard.clear()
                try:
                    await conn.send(b"\r\n\r\n")
                    self.keepalive_pings += 1
                    async with asyncio.timeout(self._keepalive_timeout):
                        await conn.heard.wait()
                    continue
                except (TransportError, TimeoutError):
                    log.info("no keep-alive answer from %s:%s: reconnecting", hop.host, hop.port)
                await conn.aclose()
            self.reconnects += 1
            try:
                await self.register(self._expires)
            except SipCertError as error:
                log.info("re-registration with %s:%s failed: %s", hop.host, hop.port, error)

    async def unregister(self) -> Response:
        """Remove our binding (Expires: 0, §10.2.2)."""
        return await self.register(expires=0)

    # -- out-of-dialog requests ----------------------------------------------------------------

    async def _out_of_dialog(
        self,
        method: str,
        target: str,
        *,
        body: MimePart | None,
        headers: Sequence[tuple[str, str]],
        tag: str,
        call_id: str,
        contact: bool,
        hop: Hop,
    ) -> Request:
        to_uri = _target_uri(target)
        pairs = [
            ("Via", await self._via(hop)),
            ("From", self._from(tag)),
            ("To", f"<{to_uri}>"),
            ("Call-ID", call_id),
            ("CSeq", f"{secrets.randbelow(10000) + 1} {method}"),
            *self._route(hop),
            *([self._contact_header()] if contact else []),
            *self._common(),
            *self._preemptive(method, to_uri),
            *headers,
        ]
        return with_body(Request(method, to_uri, headers=tuple(pairs)), body)

    async def _outside_dialog(
        self,
        method: str,
        to: str,
        body: MimePart | None,
        headers: Sequence[tuple[str, str]],
    ) -> Response:
        """A non-INVITE request outside any dialog, through the proxy; its final response."""
        hop, *others = await self._hops(_target_uri(to))
        request = await self._out_of_dialog(
            method,
            to,
            body=body,
            headers=headers,
            tag=new_tag(),
            call_id=new_call_id(self._host),
            contact=False,
            hop=hop,
        )
        _, response = await self._send(request, hop, fallbacks=others)
        return response

    async def send_message(
        self,
        to: str,
        body: MimePart,
        *,
        headers: Sequence[tuple[str, str]] = (),
    ) -> Response:
        """Send a MESSAGE (RFC 3428) with ``body`` to ``to`` via the proxy; final response."""
        return await self._outside_dialog("MESSAGE", to, body, headers)

    async def options(self, to: str) -> Response:
        """Send OPTIONS to ``to`` via the proxy (draft §4.2 location by SIP); final response."""
        return await self._outside_dialog(
            "OPTIONS", to, None, [("Accept", "message/external-body, application/sdp")]
        )

    async def invite(
        self,
        to: str,
        body: MimePart,
        *,
        headers: Sequence[tuple[str, str]] = (),
    ) -> Call:
        """Place a call: INVITE with ``body`` (the SDP, or its S/MIME protection), wait for
        the final response, ACK a 2xx (§13.2.2.4). The call is established when
        :attr:`Call.established`; otherwise ``call.response`` says why not.
        """
        hop, *others = await self._hops(_target_uri(to))
        tag = new_tag()
        call_id = new_call_id(self._host)
        request = await self._out_of_dialog(
            "INVITE",
            to,
            body=body,
            headers=[("Allow", _ALLOW), *headers],
            tag=tag,
            call_id=call_id,
            contact=True,
            hop=hop,
        )
        call = Call(self, request)
        self._invites[(call_id, tag)] = call
        try:
            request, response = await self._send(
                request, hop, on_provisional=call.provisional.append, fallbacks=others
            )
        except BaseException:
            self._invites.pop((call_id, tag), None)
            raise
        call.invite = request
        call.response = response
        if not 200 <= response.status < 300:
            self._invites.pop((call_id, tag), None)
            call._end(f"refused with {response.status}")
            return call
        call.remote_body = body_part(response)
        await self._establish(call, response)
        early, call._early = call._early, []
        for extra in early:
            self._stray_response(extra)
        self._later(self.timers.timeout, lambda: self._invites.pop((call_id, tag), None))
        return call

    def _uac_dialog(self, invite: Request, response: Response) -> Dialog:
        """Dialog state from a 2xx (§12.1.2): reversed Record-Route, Contact as target."""
        contacts = response.values("Contact")
        if not contacts:
            raise InputError("2xx to INVITE without a Contact (RFC 3261 §12.1.2)")
        return Dialog(
            call_id=invite.call_id,
            local_tag=invite.from_.tag or "",
            remote_tag=response.to.tag or "",
            local_uri=invite.from_.uri,
            remote_uri=response.to.uri,
            remote_target=parse_name_addr(contacts[0]).uri,
            route_set=list(reversed(response.values("Record-Route"))),
            local_seq=invite.cseq[0],
        )

    async def _establish(self, call: Call, response: Response) -> None:
        dialog = self._uac_dialog(call.invite, response)
        call.dialog = dialog
        self._calls[dialog.key] = call
        ack, hop = await self._dialog_request(dialog, "ACK", cseq=dialog.local_seq)
        credentials = [
            (name, value)
            for name, value in call.invite.headers
            if name in ("Authorization", "Proxy-Authorization")
        ]
        ack = ack.with_headers(*credentials)  # §22.1: the ACK carries the INVITE's credentials
        call.ack, call.ack_hop = ack, hop
        await self._transport.send(ack, hop)
        call.confirmed.set()

    def _stray_response(self, response: Response) -> None:
        """A response outside any transaction: a retransmitted or forked 2xx (§13.2.2.4)."""
        try:
            _, method = response.cseq
            if method != "INVITE":
                return
            if response.status >= 300:
                completed = self._completed_acks.get(response.top_via.branch or "")
                if completed is not None:
                    self._spawn(self._resend(*completed))
                return
            if response.status < 200:
                return
            key = (response.call_id, response.from_.tag or "", response.to.tag or "")
            call = self._calls.get(key)
            if call is not None:  # a retransmitted 2xx: our ACK was lost (or is on its way)
                if call.ack is not None and call.ack_hop is not None:
                    self._spawn(self._resend(call.ack, call.ack_hop))
                return
            original = self._invites.get((response.call_id, response.from_.tag or ""))
            if original is None:
                return
            if original.dialog is None:
                original._early.append(response)  # handled once the first 2xx is ACKed
            else:
                self._spawn(self._drop_fork(original, response))
        except SipCertError as error:
            log.info("dropping a response: %s", error)

    async def _resend(self, message: Request, hop: Hop) -> None:
        await self._transport.send(message, hop)

    async def _drop_fork(self, original: Call, response: Response) -> None:
        """A second 2xx from another fork: ACK it, then BYE that dialog (§13.2.2.4)."""
        extra = Call(self, original.invite, response=response)
        await self._establish(extra, response)
        if extra.dialog is not None:
            with contextlib.suppress(SipCertError):
                await self._in_dialog(extra.dialog, "BYE")
            extra._end("extra fork ended")

    # -- in-dialog requests --------------------------------------------------------------------

    async def _dialog_request(
        self, dialog: Dialog, method: str, *, cseq: int | None = None
    ) -> tuple[Request, Hop]:
        """A request inside ``dialog`` (§12.2.1.1) and the hop it goes to (§16.12)."""
        if cseq is None:
            dialog.local_seq += 1
            cseq = dialog.local_seq
        route = list(dialog.route_set)
        uri = dialog.remote_target
        if route and not parse_name_addr(route[0]).sip_uri.loose_route:
            uri = parse_name_addr(route[0]).uri  # strict router (§12.2.1.1)
            route = [*route[1:], f"<{dialog.remote_target}>"]
            next_uri = uri
        else:
            next_uri = parse_name_addr(route[0]).uri if route else uri
        hop = self._hop_for(next_uri)
        headers = [
            ("Via", await self._via(hop)),
            ("From", f"<{dialog.local_uri}>;tag={dialog.local_tag}"),
            ("To", f"<{dialog.remote_uri}>;tag={dialog.remote_tag}"),
            ("Call-ID", dialog.call_id),
            ("CSeq", f"{cseq} {method}"),
            *(("Route", r) for r in route),
            *self._common(),
        ]
        return Request(method, uri, headers=tuple(headers)), hop

    async def _in_dialog(self, dialog: Dialog, method: str) -> Response:
        request, hop = await self._dialog_request(dialog, method)
        _, response = await self._send(request, hop)
        return response

    # -- receiving -----------------------------------------------------------------------------

    def _on_received(self, message: Request | Response, origin: Origin) -> None:
        if isinstance(message, Response):
            branch = message.top_via.branch or ""
            _, method = message.cseq
            queue = self._client_txns.get((branch, method))
            if queue is not None:
                queue.put_nowait(message)
            else:
                self._stray_response(message)
            return
        self._on_request(message, origin)

    def _on_request(self, request: Request, origin: Origin) -> None:
        via = request.top_via
        sent_by = f"{via.host}:{via.port}"
        method = "INVITE" if request.method == "ACK" else request.method
        key = (via.branch or "", sent_by, method)
        if request.method == "ACK":
            self._on_ack(request, key)
            return
        if request.method == "CANCEL":
            self._on_cancel(request, origin, (key[0], sent_by, "INVITE"))
            return
        existing = self._server_txns.get(key)
        if existing is not None:  # a retransmission (§17.2.1, §17.2.2)
            if existing.last is not None:
                self._spawn(self._transport.reply(existing.last, origin))
            return
        txn = _ServerTransaction(request, origin)
        self._server_txns[key] = txn
        txn.task = self._spawn(self._serve(txn, key))

    def _on_unparsed(self, error: SipCertError, origin: Origin) -> Response | None:
        """A request that did not parse gets a 400 or 505 naming why (RFC 3261 §8.2.6)."""
        if not isinstance(error, SipMessageError):
            return None
        response = error_response(error, to_tag=new_tag())
        if response is not None:
            log.info(
                "refusing a request from %s:%s with %s: %s",
                origin.host,
                origin.port,
                response.status,
                log_safe(str(error)),
            )
        return response

    def _inspect(self, request: Request) -> Response | None:
        """The checks of RFC 3261 §8.2.1-§8.2.3 in their order; a refusal or None."""
        tag = new_tag()
        method = request.method
        if method not in ALLOWED_METHODS:
            status = 405 if method in _KNOWN_METHODS else 501
            return make_response(request, status, to_tag=tag, headers=[("Allow", _ALLOW)])
        if request.uri.partition(":")[0].lower() not in ("sip", "sips"):
            return make_response(request, 416, to_tag=tag)  # §8.2.2.1
        required = request.values("Require")
        if required and method != "CANCEL":  # we support no extension (§8.2.2.3)
            return make_response(
                request, 420, to_tag=tag, headers=[("Unsupported", ", ".join(required))]
            )
        content_type = request.get("Content-Type")
        encoding = (request.get("Content-Encoding") or "identity").lower()
        if request.body or content_type is not None:
            media = parse_content_type(content_type)[0] if content_type is not None else ""
            if media not in ACCEPTED_TYPES or encoding != "identity":  # §8.2.3
                return make_response(
                    request,
                    415,
                    to_tag=tag,
                    headers=[
                        ("Accept", ", ".join(ACCEPTED_TYPES)),
                        ("Accept-Encoding", "identity"),
                    ],
                )
        if method == "INVITE" and request.get("Accept") is not None:
            ranges = {
                value.partition(";")[0].strip(" \t").lower() for value in request.values("Accept")
            }
            wanted = {"*/*", "application/*", "multipart/*", *_ANSWER_TYPES}
            if not ranges & wanted:  # §21.4.7: we could only answer with SDP
                return make_response(
                    request, 406, to_tag=tag, headers=[("Accept", ", ".join(_ANSWER_TYPES))]
                )
        return None

    def _on_ack(self, ack: Request, key: tuple[str, str, str]) -> None:
        if key in self._server_txns:
            return  # ACK for a non-2xx final: absorbed by the transaction (§17.2.1)
        dialog_key = (ack.call_id, ack.to.tag or "", ack.from_.tag or "")
        call = self._calls.get(dialog_key)
        if call is not None:
            call.ack = ack
            call.confirmed.set()

    def _on_cancel(self, cancel: Request, origin: Origin, key: tuple[str, str, str]) -> None:
        """CANCEL (§9.2): 200 to the CANCEL; 487 to the INVITE if still unanswered."""
        txn = self._server_txns.get(key)
        if txn is None:
            self._spawn(self._transport.reply(make_response(cancel, 481), origin))
            return
        self._spawn(self._transport.reply(make_response(cancel, 200, to_tag=new_tag()), origin))
        if txn.last is None or txn.last.status < 200:
            if txn.task is not None:
                txn.task.cancel()
            tag = txn.last.to.tag if txn.last is not None else None
            self._spawn(
                self._respond(txn, make_response(txn.request, 487, to_tag=tag or new_tag()))
            )

    async def _respond(self, txn: _ServerTransaction, response: Response) -> None:
        txn.last = response
        await self._transport.reply(response, txn.origin)

    async def _serve(self, txn: _ServerTransaction, key: tuple[str, str, str]) -> None:
        request = txn.request
        try:
            refusal = self._inspect(request)
            if refusal is not None:
                await self._respond(txn, refusal)
            elif request.method == "INVITE":
                await self._serve_invite(txn)
            else:
                await self._respond(txn, await self._answer(request, txn.origin))
        except Exception as error:  # a failing handler must still answer the request
            log.info(
                "%s from %s:%s failed: %s",
                request.method,
                txn.origin.host,
                txn.origin.port,
                error,
                exc_info=not isinstance(error, SipCertError),
            )
            if txn.last is None or txn.last.status < 200:
                status = 400 if isinstance(error, InputError) else 500
                with contextlib.suppress(SipCertError):
                    await self._respond(txn, make_response(request, status, to_tag=new_tag()))
        finally:
            linger = self.timers.timeout if txn.origin.transport is Transport.UDP else 0.0
            self._later(linger, lambda: self._server_txns.pop(key, None))

    async def _answer(self, request: Request, origin: Origin) -> Response:
        """The final response to a non-INVITE request."""
        tag = new_tag()
        if request.method == "BYE":
            dialog_key = (request.call_id, request.to.tag or "", request.from_.tag or "")
            call = self._calls.get(dialog_key)
            if call is None:
                return make_response(request, 481)
            call._end("remote BYE")
            return make_response(request, 200)
        if request.method == "MESSAGE":
            incoming = IncomingRequest(request, body_part(request), origin)
            if self.on_message is None:
                self.inbox.put_nowait(incoming)
                status: int | None = 200
            else:
                status = await self.on_message(incoming)
            return make_response(request, status or 200, to_tag=tag)
        if request.method == "OPTIONS":
            body = None
            if self.on_options is not None:
                body = await self.on_options(IncomingRequest(request, body_part(request), origin))
            response = make_response(
                request, 200, to_tag=tag, headers=[("Allow", _ALLOW), self._contact_header()]
            )
            return with_body(response, body)
        return make_response(request, 481)

    async def _serve_invite(self, txn: _ServerTransaction) -> None:
        """Answer an INVITE: 100, 180, then the handler's 200 with body or refusal (§13.3)."""
        request = txn.request
        if request.to.tag is not None:  # a re-INVITE of no dialog we know (§12.2.2)
            await self._respond(txn, make_response(request, 481))
            return
        await self._respond(txn, make_response(request, 100))
        tag = new_tag()
        contacts = request.values("Contact")
        if not contacts:
            await self._respond(txn, make_response(request, 400, "Missing Contact", to_tag=tag))
            return
        dialog = Dialog(
            call_id=request.call_id,
            local_tag=tag,
            remote_tag=request.from_.tag or "",
            local_uri=request.to.uri,
            remote_uri=request.from_.uri,
            remote_target=parse_name_addr(contacts[0]).uri,
            route_set=request.values("Record-Route"),
            local_seq=secrets.randbelow(10000) + 1,
            remote_seq=request.cseq[0],
        )
        call = Call(self, request, dialog=dialog, remote_body=body_part(request))
        incoming = IncomingRequest(request, call.remote_body, txn.origin, dialog)
        await self._respond(
            txn, make_response(request, 180, to_tag=tag, headers=[self._contact_header()])
        )
        answer: MimePart | int = 480 if self.on_invite is None else await self.on_invite(incoming)
        if isinstance(answer, int):
            await self._respond(txn, make_response(request, answer, to_tag=tag))
            call.response = txn.last
            call._end(f"refused with {answer}")
            return
        ok = make_response(
            request, 200, to_tag=tag, headers=[self._contact_header(), ("Allow", _ALLOW)]
        )
        ok = with_body(ok, answer)
        call.response = ok
        self._calls[dialog.key] = call
        self.incoming_calls.put_nowait(call)
        await self._respond(txn, ok)
        if not txn.origin.transport.reliable:
            self._spawn(self._retransmit_2xx(call, ok, txn.origin))

    async def _retransmit_2xx(self, call: Call, ok: Response, origin: Origin) -> None:
        """Resend the 200 at T1, 2*T1 ... T2 until the ACK comes, for 64*T1 (§13.3.1.4)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timers.timeout
        interval = self.timers.t1
        while loop.time() < deadline:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await call.confirmed.wait()
                return
            if call.ended.is_set():
                return
            await self._transport.reply(ok, origin)
            interval = min(interval * 2, self.timers.t2)
        log.info("no ACK for the 200 of call %s: ending it", call.invite.call_id)
        if call.dialog is not None:
            with contextlib.suppress(SipCertError):
                await self._in_dialog(call.dialog, "BYE")
        call._end("no ACK")


def _target_uri(target: str) -> str:
    """``bob@example.com`` or a URI, as the URI it is (checked: sip: or sips:)."""
    uri = target if ":" in target else f"sip:{target}"
    parse_uri(uri)
    return uri
