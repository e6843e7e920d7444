"""The SIP user agent against in-process peers on loopback (RFC 3261 §8-§17, §22)."""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import pytest

from sipcert.errors import AuthenticationError, ConfigError, NameMismatchError, TransportError
from sipcert.proto.ca import TestCA
from sipcert.proto.digest import (
    Algorithm,
    DigestServer,
    StoredCredential,
    parse_authorization,
)
from sipcert.proto.indirection import certificate_reference, parse_external_body
from sipcert.proto.mime import MimePart
from sipcert.proto.sip import Request, Response, StreamParser, body_part, make_response
from sipcert.sip.transport import (
    Hop,
    MessageTooLongError,
    Origin,
    SipTransport,
    Transport,
    client_tls_context,
)
from sipcert.sip.ua import Call, IncomingRequest, Timers, UserAgent

T = TypeVar("T")
FAST = Timers(t1=0.02, t2=0.16, t4=0.2, invite_answer=5.0)
SDP_OFFER = MimePart("application/sdp", b"v=0\r\no=alice 1 1 IN IP4 127.0.0.1\r\ns=-\r\n")
SDP_ANSWER = MimePart("application/sdp", b"v=0\r\no=bob 2 2 IN IP4 127.0.0.1\r\ns=-\r\n")
TEXT = MimePart("text/plain; charset=utf-8", "héllo\r\n\r\nbinary\x00".encode())


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro, 30)

    return asyncio.run(main())


class RawPeer:
    """A scripted SIP endpoint on one UDP socket: records everything, answers via ``script``."""

    def __init__(self, script: Callable[[RawPeer, Request | Response, Origin], None]) -> None:
        self.script = script
        self.received: list[Request | Response] = []
        self._arrived = asyncio.Event()
        self.transport = SipTransport(self._on)

    def _on(self, message: Request | Response, origin: Origin) -> None:
        self.received.append(message)
        self._arrived.set()
        self.script(self, message, origin)

    async def start(self) -> Hop:
        host, port = await self.transport.listen(Transport.UDP)
        return Hop(Transport.UDP, host, port)

    def reply(self, response: Response, origin: Origin) -> None:
        asyncio.get_running_loop().create_task(self.transport.reply(response, origin))

    def requests(self, method: str) -> list[Request]:
        """Every copy received, retransmissions included."""
        return [m for m in self.received if isinstance(m, Request) and m.method == method]

    def transactions(self, method: str) -> list[Request]:
        """The first copy of each transaction (its Via branch): how many the UA made,
        whatever the UDP retransmissions a loaded machine's late answers let through."""
        seen: set[str | None] = set()
        first: list[Request] = []
        for request in self.requests(method):
            if request.top_via.branch not in seen:
                seen.add(request.top_via.branch)
                first.append(request)
        return first

    def responses(self) -> list[Response]:
        return [m for m in self.received if isinstance(m, Response)]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._arrived.clear()
                await self._arrived.wait()


def _ignore(peer: RawPeer, message: Request | Response, origin: Origin) -> None:
    pass


# --- MESSAGE ---------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", [Transport.UDP, Transport.TCP])
def test_message_body_is_delivered_as_a_mime_part(transport: Transport) -> None:
    async def main() -> None:
        got: list[IncomingRequest] = []

        async def on_message(incoming: IncomingRequest) -> int | None:
            got.append(incoming)
            return None

        async with UserAgent(
            "bob@example.com", transport=transport, on_message=on_message, timers=FAST
        ) as bob:
            proxy = Hop(transport, *bob.local_address)
            async with UserAgent(
                "alice@example.com", transport=transport, proxy=proxy, timers=FAST
            ) as alice:
                response = await alice.send_message("bob@example.com", TEXT)
                assert response.status == 200
                assert response.to.tag is not None
                assert len(got) == 1
                incoming = got[0]
                assert incoming.body == TEXT
                assert incoming.sender.aor == alice.aor
                assert incoming.request.uri == "sip:bob@example.com"
                assert incoming.origin.transport is transport
                assert incoming.request.top_via.transport == transport.via_name

    run(main())


def test_message_inbox_and_handler_status() -> None:
    async def main() -> None:
        async with UserAgent("bob@example.com", timers=FAST) as bob:
            proxy = Hop(Transport.UDP, *bob.local_address)
            async with UserAgent("alice@example.com", proxy=proxy, timers=FAST) as alice:
                assert (await alice.send_message("bob@example.com", TEXT)).status == 200
                incoming = bob.inbox.get_nowait()
                assert incoming.body == TEXT

                async def refuse(incoming: IncomingRequest) -> int:
                    return 415

                bob.on_message = refuse
                refused = await alice.send_message("bob@example.com", TEXT)
                assert (refused.status, refused.reason) == (415, "Unsupported Media Type")

                async def crash(incoming: IncomingRequest) -> int:
                    raise RuntimeError("handler bug")

                bob.on_message = crash
                assert (await alice.send_message("bob@example.com", TEXT)).status == 500

    run(main())


def test_server_transaction_absorbs_retransmissions() -> None:
    async def main() -> None:
        calls: list[IncomingRequest] = []

        async def on_message(incoming: IncomingRequest) -> int:
            calls.append(incoming)
            return 202

        peer = RawPeer(_ignore)
        await peer.start()
        async with UserAgent("bob@example.com", on_message=on_message, timers=FAST) as bob:
            bob_hop = Hop(Transport.UDP, *bob.local_address)
            host, port = peer.transport.local_address(Transport.UDP)
            message = Request(
                "MESSAGE",
                "sip:bob@example.com",
                headers=(
                    ("Via", f"SIP/2.0/UDP {host}:{port};branch=z9hG4bKretrans"),
                    ("From", "<sip:alice@example.com>;tag=a"),
                    ("To", "<sip:bob@example.com>"),
                    ("Call-ID", "retrans-1"),
                    ("CSeq", "7 MESSAGE"),
                    ("Content-Type", "text/plain"),
                ),
                body=b"once",
            )
            await peer.transport.send(message, bob_hop)
            await peer.wait_for(lambda: len(peer.responses()) == 1)
            await peer.transport.send(message, bob_hop)
            await peer.wait_for(lambda: len(peer.responses()) == 2)
            first, second = peer.responses()
            assert first.status == second.status == 202
            assert first.to.tag == second.to.tag
            assert len(calls) == 1

            no_type = message.without("Content-Type").replacing(
                "Via", f"SIP/2.0/UDP {host}:{port};branch=z9hG4bKnotype"
            )
            await peer.transport.send(no_type, bob_hop)
            await peer.wait_for(lambda: len(peer.responses()) == 3)
            assert peer.responses()[2].status == 400
        await peer.transport.aclose()

    run(main())


def test_udp_retransmission_timer_e() -> None:
    """Timer E: resend at T1, 2*T1, ... until a response (RFC 3261 §17.1.2.2)."""

    def answer_third(peer: RawPeer, message: Request | Response, origin: Origin) -> None:
        if isinstance(message, Request) and len(peer.requests("MESSAGE")) == 3:
            peer.reply(make_response(message, 200, to_tag="late"), origin)

    async def main() -> None:
        peer = RawPeer(answer_third)
        hop = await peer.start()
        async with UserAgent("alice@example.com", proxy=hop, timers=FAST) as alice:
            started = time.monotonic()
            response = await alice.send_message("bob@example.com", TEXT)
            elapsed = time.monotonic() - started
        await peer.transport.aclose()
        assert response.status == 200
        copies = peer.requests("MESSAGE")
        # Answered on the third; a loaded machine may let a fourth leave before the answer.
        assert len(copies) >= 3
        assert len({c.to_bytes() for c in copies}) == 1  # identical retransmissions
        assert elapsed >= FAST.t1 + 2 * FAST.t1 - 0.005

    run(main())


def test_timer_f_gives_up() -> None:
    async def main() -> None:
        peer = RawPeer(_ignore)
        hop = await peer.start()
        async with UserAgent("alice@example.com", proxy=hop, timers=FAST) as alice:
            with pytest.raises(TransportError, match="Timer F fired"):
                await alice.send_message("bob@example.com", TEXT)
        await peer.transport.aclose()
        # T1=20 ms doubling to T2=160 ms within 64*T1=1.28 s: 1 + 9 or so copies.
        assert 7 <= len(peer.requests("MESSAGE")) <= 12

    run(main())


def test_provisional_switches_non_invite_retransmission_to_t2() -> None:
    """After a provisional response a non-INVITE request is resent every T2 (§17.1.2.2).

    Timed from when the UA took the 100 (a loaded machine may let a T1 retransmission leave
    before it), on the UA's own sends: timers never fire early, so this cannot fail by chance.
    """
    provisional_at: list[float] = []
    sends: list[float] = []

    def trying_then_ok(peer: RawPeer, message: Request | Response, origin: Origin) -> None:
        if not isinstance(message, Request):
            return
        if len(peer.requests("MESSAGE")) == 1:
            peer.reply(make_response(message, 100), origin)
        elif provisional_at and len([t for t in sends if t > provisional_at[0]]) >= 2:
            peer.reply(make_response(message, 200, to_tag="x"), origin)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        peer = RawPeer(trying_then_ok)
        hop = await peer.start()
        async with UserAgent("alice@example.com", proxy=hop, timers=FAST) as alice:
            transaction, send = alice._transaction, alice._transport.send

            async def spy_transaction(
                request: Request, used: Hop, on_provisional: Callable[[Response], None] | None
            ) -> Response:
                def seen(response: Response) -> None:
                    provisional_at.append(loop.time())
                    if on_provisional is not None:
                        on_provisional(response)

                return await transaction(request, used, seen)

            async def spy_send(message: Request | Response, to: Hop) -> None:
                sends.append(loop.time())
                await send(message, to)

            alice._transaction = spy_transaction  # type: ignore[method-assign,assignment]
            alice._transport.send = spy_send  # type: ignore[method-assign,assignment]
            assert (await alice.send_message("bob@example.com", TEXT)).status == 200
        await peer.transport.aclose()
        after = [t for t in sends if t > provisional_at[0]]
        assert len(after) >= 2
        gaps = [b - a for a, b in zip([provisional_at[0], *after], after, strict=False)]
        assert all(gap >= FAST.t2 - 0.002 for gap in gaps), gaps

    run(main())


# --- Digest ----------------------------------------------------------------------------------


class Registrar:
    """A registrar / proxy that challenges with sipcert's DigestServer (nonce counts enforced)."""

    def __init__(self, algorithm: Algorithm, password: str, *, status: int = 401) -> None:
        self.digest = DigestServer(b"s" * 32, "example.com", algorithms=[algorithm])
        self.password = password
        self.status = status
        self.authorizations: list[str] = []
        self.answered: dict[str | None, Response] = {}  # by Via branch
        self.peer = RawPeer(self.handle)

    def handle(self, peer: RawPeer, message: Request | Response, origin: Origin) -> None:
        if not isinstance(message, Request):
            return
        branch = message.top_via.branch
        if branch in self.answered:  # a retransmission: the same answer (RFC 3261 §17.2.2)
            peer.reply(self.answered[branch], origin)
            return
        response = self._answer(message)
        self.answered[branch] = response
        peer.reply(response, origin)

    def _answer(self, message: Request) -> Response:
        header = "Authorization" if self.status == 401 else "Proxy-Authorization"
        value = message.get(header)
        if value is not None:
            self.authorizations.append(value)
            try:
                self.digest.verify(
                    parse_authorization(value),
                    StoredCredential(password=self.password),
                    method=message.method,
                    request_uri=message.uri,
                    now=time.time(),
                )
            except AuthenticationError:
                pass
            else:
                return make_response(message, 200, to_tag="reg")
        challenge = "WWW-Authenticate" if self.status == 401 else "Proxy-Authenticate"
        headers = [(challenge, c) for c in self.digest.challenges(time.time())]
        return make_response(message, self.status, to_tag="ch", headers=headers)


@pytest.mark.parametrize("algorithm", [Algorithm.MD5, Algorithm.SHA256])
def test_register_answers_401_and_counts_nc(algorithm: Algorithm) -> None:
    async def main() -> None:
        registrar = Registrar(algorithm, "secret")
        hop = await registrar.peer.start()
        async with UserAgent(
            "alice@example.com", password="secret", proxy=hop, timers=FAST
        ) as alice:
            assert (await alice.register(expires=120)).status == 200
            assert (await alice.register(expires=120)).status == 200
            assert (await alice.unregister()).status == 200
        await registrar.peer.transport.aclose()
        registers = registrar.peer.transactions("REGISTER")
        assert len(registers) == 4  # unauthenticated, answered, then two pre-emptive
        first, answered, again, gone = registers
        assert first.get("Authorization") is None
        assert first.uri == "sip:example.com"
        assert first.to.uri == first.from_.uri == "sip:alice@example.com"
        assert answered.call_id == first.call_id == again.call_id  # §10.2: one Call-ID
        assert [r.cseq[0] for r in registers] == [1, 2, 3, 4]
        assert answered.top_via.branch != first.top_via.branch
        assert first.get("Expires") == "120"
        assert gone.get("Expires") == "0"
        creds = [parse_authorization(v) for v in registrar.authorizations]
        assert [c.nc for c in creds] == [1, 2, 3]
        assert len({c.nonce for c in creds}) == 1
        assert {c.algorithm for c in creds} == {algorithm.value}
        assert {c.uri for c in creds} == {"sip:example.com"}
        assert creds[0].username == "alice"

    run(main())


def test_message_answers_407_with_proxy_authorization() -> None:
    async def main() -> None:
        proxy = Registrar(Algorithm.SHA256, "secret", status=407)
        hop = await proxy.peer.start()
        async with UserAgent(
            "alice@example.com", password="secret", proxy=hop, timers=FAST
        ) as alice:
            assert (await alice.send_message("bob@example.net", TEXT)).status == 200
        await proxy.peer.transport.aclose()
        first, second = proxy.peer.transactions("MESSAGE")
        assert second.get("Proxy-Authorization") is not None
        assert second.get("Authorization") is None
        assert (second.call_id, second.from_.tag) == (first.call_id, first.from_.tag)
        assert second.cseq[0] == first.cseq[0] + 1
        assert second.body == first.body
        assert parse_authorization(proxy.authorizations[0]).uri == "sip:bob@example.net"

    run(main())


def test_wrong_password_ends_with_the_challenge() -> None:
    async def main() -> None:
        registrar = Registrar(Algorithm.MD5, "right")
        hop = await registrar.peer.start()
        async with UserAgent("alice@example.com", password="wrong", proxy=hop, timers=FAST) as ua:
            assert (await ua.register()).status == 401
        await registrar.peer.transport.aclose()
        assert len(registrar.peer.transactions("REGISTER")) == 3  # gives up after two answers

    run(main())


def test_without_password_a_challenge_is_returned() -> None:
    async def main() -> None:
        registrar = Registrar(Algorithm.MD5, "x")
        hop = await registrar.peer.start()
        async with UserAgent("alice@example.com", proxy=hop, timers=FAST) as ua:
            assert (await ua.register()).status == 401
        await registrar.peer.transport.aclose()

    run(main())


# --- INVITE ----------------------------------------------------------------------------------


async def _answer(incoming: IncomingRequest) -> MimePart:
    return SDP_ANSWER


@pytest.mark.parametrize("transport", [Transport.UDP, Transport.TCP])
def test_invite_ack_bye(transport: Transport) -> None:
    async def main() -> None:
        offers: list[IncomingRequest] = []

        async def on_invite(incoming: IncomingRequest) -> MimePart:
            offers.append(incoming)
            return SDP_ANSWER

        async with UserAgent(
            "bob@example.com", transport=transport, on_invite=on_invite, timers=FAST
        ) as bob:
            proxy = Hop(transport, *bob.local_address)
            async with UserAgent(
                "alice@example.com", transport=transport, proxy=proxy, timers=FAST
            ) as alice:
                call = await alice.invite("bob@example.com", SDP_OFFER)
                assert call.established
                assert [r.status for r in call.provisional] == [100, 180]
                assert call.response is not None and call.response.status == 200
                assert call.remote_body == SDP_ANSWER
                assert offers[0].body == SDP_OFFER
                assert offers[0].dialog is not None
                answered = await bob.incoming_calls.get()
                await asyncio.wait_for(answered.confirmed.wait(), 5)
                assert answered.ack is not None
                assert answered.ack.cseq == (call.invite.cseq[0], "ACK")
                assert answered.remote_body == SDP_OFFER
                bye = await call.bye()
                assert bye.status == 200
                await asyncio.wait_for(answered.ended.wait(), 5)
                assert (call.ended_by, answered.ended_by) == ("local BYE", "remote BYE")
                assert not call.established
                with pytest.raises(ConfigError, match="not established"):
                    await call.bye()

    run(main())


def test_callee_hangs_up() -> None:
    async def main() -> None:
        async with UserAgent("bob@example.com", on_invite=_answer, timers=FAST) as bob:
            proxy = Hop(Transport.UDP, *bob.local_address)
            async with UserAgent("alice@example.com", proxy=proxy, timers=FAST) as alice:
                call = await alice.invite("bob@example.com", SDP_OFFER)
                answered = await bob.incoming_calls.get()
                await asyncio.wait_for(answered.confirmed.wait(), 5)
                assert (await answered.bye()).status == 200
                await asyncio.wait_for(call.ended.wait(), 5)
                assert call.ended_by == "remote BYE"

    run(main())


def test_refused_and_unanswerable_invites() -> None:
    async def main() -> None:
        async def busy(incoming: IncomingRequest) -> int:
            return 486

        async with UserAgent("bob@example.com", on_invite=busy, timers=FAST) as bob:
            proxy = Hop(Transport.UDP, *bob.local_address)
            async with UserAgent("alice@example.com", proxy=proxy, timers=FAST) as alice:
                call = await alice.invite("bob@example.com", SDP_OFFER)
                assert call.response is not None and call.response.status == 486
                assert not call.established
                assert call.ended.is_set()
                bob.on_invite = None
                call = await alice.invite("bob@example.com", SDP_OFFER)
                assert call.response is not None and call.response.status == 480

    run(main())


def test_non_2xx_is_acked_in_the_transaction() -> None:
    """ACK for a non-2xx final: same branch, To from the response (RFC 3261 §17.1.1.3)."""

    def busy(peer: RawPeer, message: Request | Response, origin: Origin) -> None:
        if isinstance(message, Request) and message.method == "INVITE":
            peer.reply(make_response(message, 486, to_tag="busy"), origin)

    async def main() -> None:
        peer = RawPeer(busy)
        hop = await peer.start()
        async with UserAgent("alice@example.com", proxy=hop, timers=FAST) as alice:
            call = await alice.invite("bob@example.com", SDP_OFFER)
            await peer.wait_for(lambda: bool(peer.requests("ACK")))
        await peer.transport.aclose()
        assert call.response is not None and call.response.status == 486
        invite, ack = peer.requests("INVITE")[0], peer.requests("ACK")[0]
        assert ack.top_via.branch == invite.top_via.branch
        assert ack.cseq == (invite.cseq[0], "ACK")
        assert ack.to.tag == "busy"
        assert ack.uri == invite.uri

    run(main())


def _ok(message: Request, tag: str, contact: str, record_route: str | None = None) -> Response:
    headers = [("Contact", contact)]
    if record_route is not None:
        headers.append(("Record-Route", record_route))
    response = make_response(message, 200, to_tag=tag, headers=headers)
    return response


def test_record_route_makes_a_loose_route_set() -> None:
    """UAC route set = reversed Record-Route; ACK/BYE go to its first hop (§12.1.2, §12.2.1.1)."""

    async def main() -> None:
        def proxy_like(peer: RawPeer, message: Request | Response, origin: Origin) -> None:
            if isinstance(message, Request) and message.method == "INVITE":
                rr = f"<sip:10.0.0.2:5060;lr>, <sip:127.0.0.1:{port};lr;ftag=x>"
                peer.reply(_ok(message, "uas", "<sip:bob@192.0.2.9:5070>", rr), origin)
            elif isinstance(message, Request) and message.method == "BYE":
                peer.reply(make_response(message, 200), origin)

        peer = RawPeer(proxy_like)
        hop = await peer.start()
        port = hop.port
        async with UserAgent("alice@example.com", proxy=hop, timers=FAST) as alice:
            call = await alice.invite("bob@example.com", SDP_OFFER)
            assert call.established
            assert call.dialog is not None
            assert call.dialog.route_set == [
                f"<sip:127.0.0.1:{port};lr;ftag=x>",
                "<sip:10.0.0.2:5060;lr>",
            ]
            await peer.wait_for(lambda: bool(peer.requests("ACK")))
            assert (await call.bye()).status == 200
        await peer.transport.aclose()
        invite = peer.requests("INVITE")[0]
        assert invite.values("Route") == [f"<sip:127.0.0.1:{port};lr>"]  # pre-loaded (§8.1.2)
        for request in (peer.requests("ACK")[0], peer.requests("BYE")[0]):
            assert request.uri == "sip:bob@192.0.2.9:5070"  # remote target
            assert request.values("Route") == call.dialog.route_set
            assert request.to.tag == "uas"
            assert request.from_.tag == invite.from_.tag
            assert request.call_id == invite.call_id
        assert peer.requests("BYE")[0].cseq == (invite.cseq[0] + 1, "BYE")
        assert peer.requests("ACK")[0].top_via.branch != invite.top_via.branch  # §13.2.2.4

    run(main())


def test_strict_router_in_the_route_set() -> None:
    async def main() -> None:
        def strict(peer: RawPeer, message: Request | Response, origin: Origin) -> None:
            if isinstance(message, Request) and message.method == "INVITE":
                rr = f"<sip:127.0.0.1:{port}>"
                peer.reply(_ok(message, "uas", "<sip:bob@192.0.2.9>", rr), origin)

        peer = RawPeer(strict)
        hop = await peer.start()
        port = hop.port
        async with UserAgent("alice@example.com", proxy=hop, timers=FAST) as alice:
            await alice.invite("bob@example.com", SDP_OFFER)
            await peer.wait_for(lambda: bool(peer.requests("ACK")))
        await peer.transport.aclose()
        ack = peer.requests("ACK")[0]
        assert ack.uri == f"sip:127.0.0.1:{port}"
        assert ack.values("Route") == ["<sip:bob@192.0.2.9>"]

    run(main())


def test_retransmitted_and_forked_2xx() -> None:
    """A repeated 2xx is ACKed again; a 2xx from a second fork is ACKed then ended (§13.2.2.4)."""

    async def main() -> None:
        def forking(peer: RawPeer, message: Request | Response, origin: Origin) -> None:
            if not isinstance(message, Request):
                return
            contact = f"<sip:bob@127.0.0.1:{port}>"
            if message.method == "INVITE":
                first = _ok(message, "one", contact)
                peer.reply(first, origin)
                peer.reply(first, origin)  # a retransmission of the same 2xx
                peer.reply(_ok(message, "two", contact), origin)
            elif message.method == "BYE":
                peer.reply(make_response(message, 200), origin)

        peer = RawPeer(forking)
        hop = await peer.start()
        port = hop.port
        async with UserAgent("alice@example.com", proxy=hop, timers=FAST) as alice:
            call = await alice.invite("bob@example.com", SDP_OFFER)
            await peer.wait_for(lambda: len(peer.requests("ACK")) >= 3 and peer.requests("BYE"))
            assert call.established
            assert call.dialog is not None and call.dialog.remote_tag == "one"
        await peer.transport.aclose()
        acked = sorted(a.to.tag or "" for a in peer.requests("ACK"))
        assert acked == ["one", "one", "two"]
        assert [b.to.tag for b in peer.requests("BYE")] == ["two"]

    run(main())


def test_2xx_is_retransmitted_until_the_ack() -> None:
    """The UAS resends its 200 at T1, 2*T1 ... until the ACK (RFC 3261 §13.3.1.4)."""

    async def main() -> None:
        peer = RawPeer(_ignore)
        await peer.start()
        host, port = peer.transport.local_address(Transport.UDP)
        async with UserAgent("bob@example.com", on_invite=_answer, timers=FAST) as bob:
            bob_hop = Hop(Transport.UDP, *bob.local_address)
            invite = Request(
                "INVITE",
                "sip:bob@example.com",
                headers=(
                    ("Via", f"SIP/2.0/UDP {host}:{port};branch=z9hG4bKinv"),
                    ("From", "<sip:alice@example.com>;tag=caller"),
                    ("To", "<sip:bob@example.com>"),
                    ("Call-ID", "inv-1"),
                    ("CSeq", "1 INVITE"),
                    ("Contact", f"<sip:alice@{host}:{port}>"),
                    ("Content-Type", "application/sdp"),
                ),
                body=SDP_OFFER.body,
            )
            await peer.transport.send(invite, bob_hop)
            oks = lambda: [r for r in peer.responses() if r.status == 200]  # noqa: E731
            await peer.wait_for(lambda: len(oks()) >= 3)
            ok = oks()[0]
            assert all(r.to_bytes() == ok.to_bytes() for r in oks())
            assert [r.status for r in peer.responses()][:2] == [100, 180]
            assert body_part(ok) == SDP_ANSWER
            ack = Request(
                "ACK",
                "sip:bob@example.com",
                headers=(
                    ("Via", f"SIP/2.0/UDP {host}:{port};branch=z9hG4bKack"),
                    ("From", "<sip:alice@example.com>;tag=caller"),
                    ("To", ok.require("To")),
                    ("Call-ID", "inv-1"),
                    ("CSeq", "1 ACK"),
                ),
            )
            await peer.transport.send(ack, bob_hop)
            answered = await bob.incoming_calls.get()
            await asyncio.wait_for(answered.confirmed.wait(), 5)
            count = len(oks())
            await asyncio.sleep(8 * FAST.t1)
            assert len(oks()) <= count + 1  # at most one already in flight
            assert answered.established
        await peer.transport.aclose()

    run(main())


def test_cancel_ends_an_unanswered_invite() -> None:
    async def main() -> None:
        never = asyncio.Event()

        async def ringing_forever(incoming: IncomingRequest) -> MimePart:
            await never.wait()
            return SDP_ANSWER

        peer = RawPeer(_ignore)
        await peer.start()
        host, port = peer.transport.local_address(Transport.UDP)
        async with UserAgent("bob@example.com", on_invite=ringing_forever, timers=FAST) as bob:
            bob_hop = Hop(Transport.UDP, *bob.local_address)
            common = (
                ("Via", f"SIP/2.0/UDP {host}:{port};branch=z9hG4bKcancelme"),
                ("From", "<sip:alice@example.com>;tag=c"),
                ("To", "<sip:bob@example.com>"),
                ("Call-ID", "cancel-1"),
            )
            invite = Request(
                "INVITE",
                "sip:bob@example.com",
                headers=(*common, ("CSeq", "5 INVITE"), ("Contact", f"<sip:a@{host}:{port}>")),
            )
            await peer.transport.send(invite, bob_hop)
            await peer.wait_for(lambda: any(r.status == 180 for r in peer.responses()))
            cancel = Request(
                "CANCEL", "sip:bob@example.com", headers=(*common, ("CSeq", "5 CANCEL"))
            )
            await peer.transport.send(cancel, bob_hop)
            await peer.wait_for(lambda: any(r.status == 487 for r in peer.responses()))
            statuses = {(r.cseq[1], r.status) for r in peer.responses()}
            assert ("CANCEL", 200) in statuses
            assert ("INVITE", 487) in statuses
            stray = cancel.replacing("Via", f"SIP/2.0/UDP {host}:{port};branch=z9hG4bKnone")
            await peer.transport.send(stray, bob_hop)
            await peer.wait_for(lambda: any(r.status == 481 for r in peer.responses()))
        await peer.transport.aclose()

    run(main())


def test_options_unknown_methods_and_unknown_dialogs() -> None:
    async def main() -> None:
        reference = certificate_reference(
            "https://certs.example.com/search-cgi?email=bob%40example.com"
        )

        async def on_options(incoming: IncomingRequest) -> MimePart:
            return reference

        async with UserAgent("bob@example.com", on_options=on_options, timers=FAST) as bob:
            proxy = Hop(Transport.UDP, *bob.local_address)
            async with UserAgent("alice@example.com", proxy=proxy, timers=FAST) as alice:
                response = await alice.options("bob@example.com")
                assert response.status == 200
                assert "MESSAGE" in (response.get("Allow") or "")
                part = body_part(response)
                assert part is not None
                assert parse_external_body(part).host == "certs.example.com"

                request = await alice._out_of_dialog(
                    "SUBSCRIBE",
                    "bob@example.com",
                    body=None,
                    headers=(),
                    tag="t",
                    call_id="sub-1",
                    contact=True,
                    hop=proxy,
                )
                _, refused = await alice._send(request, proxy)
                assert refused.status == 405
                assert refused.get("Allow") == "INVITE, ACK, BYE, CANCEL, OPTIONS, MESSAGE"

                bye = (
                    await alice._out_of_dialog(
                        "BYE",
                        "bob@example.com",
                        body=None,
                        headers=(),
                        tag="t",
                        call_id="none",
                        contact=False,
                        hop=proxy,
                    )
                ).replacing("To", "<sip:bob@example.com>;tag=nosuch")
                _, gone = await alice._send(bye, proxy)
                assert gone.status == 481

    run(main())


def test_configuration_errors() -> None:
    async def main() -> None:
        async with UserAgent("alice@example.com", timers=FAST) as alice:
            with pytest.raises(ConfigError, match="no proxy configured"):
                await alice.register()
            assert alice.contact == f"sip:alice@127.0.0.1:{alice.local_address[1]}"
        tcp = UserAgent("carol@example.com", transport=Transport.TCP)
        async with tcp:
            assert tcp.contact.endswith(";transport=tcp")

    run(main())


def test_call_api_shape() -> None:
    """Call is what the S/MIME layer reads: the INVITE, the final response, the bodies."""
    fields = set(Call.__dataclass_fields__)
    assert {"invite", "response", "remote_body", "dialog", "provisional"} <= fields


def test_message_and_call_over_tls(tmp_path: Path) -> None:
    """Both UAs on TLS: the caller verifies the callee's certificate for example.com."""
    now = datetime.now(UTC)
    ca = TestCA.create(now=now)
    issued = ca.issue(["example.com"], now=now)
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    (tmp_path / "s.pem").write_bytes(issued.cert_pem)
    (tmp_path / "s.key").write_bytes(issued.key_pem)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp_path / "s.pem", tmp_path / "s.key")
    client = client_tls_context(tmp_path / "ca.pem")

    async def main() -> None:
        async with UserAgent(
            "bob@example.com",
            transport=Transport.TLS,
            server_tls_context=server,
            tls_context=client,
            on_invite=_answer,
            timers=FAST,
        ) as bob:
            proxy = Hop(Transport.TLS, *bob.local_address, domain="example.com")
            async with UserAgent(
                "alice@example.com",
                transport=Transport.TLS,
                tls_context=client,
                server_tls_context=server,
                proxy=proxy,
                timers=FAST,
            ) as alice:
                assert alice.contact.startswith("sips:alice@127.0.0.1:")
                assert (await alice.send_message("bob@example.com", TEXT)).status == 200
                assert bob.inbox.get_nowait().origin.transport is Transport.TLS
                call = await alice.invite("bob@example.com", SDP_OFFER)
                assert call.established
                assert (await call.bye()).status == 200
            wrong = Hop(Transport.TLS, *bob.local_address, domain="example.net")
            async with UserAgent(
                "carol@example.net", transport=Transport.TLS, tls_context=client, proxy=wrong
            ) as carol:
                with pytest.raises(NameMismatchError):
                    await carol.send_message("bob@example.com", TEXT)
                with pytest.raises(ConfigError, match="server_tls_context"):
                    _ = carol.contact

    run(main())


# --- refusals (RFC 3261 §8.2, issue 12) --------------------------------------------------------


def _plain(
    method: str, uri: str, *extra: tuple[str, str], branch: str, body: bytes = b""
) -> Request:
    headers = (
        ("Via", f"SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK{branch}"),
        ("From", "<sip:alice@example.com>;tag=a1"),
        ("To", "<sip:bob@example.com>"),
        ("Call-ID", f"refusal-{branch}"),
        ("CSeq", f"1 {method}"),
        ("Max-Forwards", "70"),
        ("Contact", "<sip:alice@127.0.0.1:9>"),
        *extra,
    )
    return Request(method, uri, headers=headers, body=body)


@pytest.mark.parametrize("transport", [Transport.UDP, Transport.TCP])
def test_requests_are_refused_with_the_status_rfc_3261_names(transport: Transport) -> None:
    async def main() -> None:
        peer = RawPeer(_ignore)
        await peer.start()
        async with UserAgent("bob@example.com", transport=transport, timers=FAST) as bob:
            hop = Hop(transport, *bob.local_address)
            sdp = (("Content-Type", "application/sdp"),)
            sent = [
                (_plain("FROB", "sip:bob@example.com", branch="501"), 501),
                (_plain("OPTIONS", "tel:+15551234", branch="416"), 416),
                (
                    _plain("OPTIONS", "sip:bob@example.com", ("Require", "foo, bar"), branch="420"),
                    420,
                ),
                (
                    _plain(
                        "MESSAGE",
                        "sip:bob@example.com",
                        ("Content-Type", "application/x-odd"),
                        branch="415",
                        body=b"?",
                    ),
                    415,
                ),
                (
                    _plain(
                        "MESSAGE",
                        "sip:bob@example.com",
                        ("Content-Type", "text/plain"),
                        ("Content-Encoding", "gzip"),
                        branch="415b",
                        body=b"?",
                    ),
                    415,
                ),
                (
                    _plain(
                        "INVITE",
                        "sip:bob@example.com",
                        ("Accept", "text/html"),
                        *sdp,
                        branch="406",
                        body=SDP_OFFER.body,
                    ),
                    406,
                ),
                (
                    _plain(
                        "INVITE", "sip:bob@example.com", *sdp, branch="481", body=SDP_OFFER.body
                    ).replacing("To", "<sip:bob@example.com>;tag=gone"),
                    481,
                ),
            ]
            for request, _ in sent:
                await peer.transport.send(request, hop)
            finals = lambda: [r for r in peer.responses() if r.status >= 200]  # noqa: E731
            await peer.wait_for(lambda: len(finals()) == len(sent))
            by_call = {r.call_id: r for r in finals()}
            for request, status in sent:
                response = by_call[request.call_id]
                assert response.status == status, request.call_id
            assert (
                by_call["refusal-501"].get("Allow") == "INVITE, ACK, BYE, CANCEL, OPTIONS, MESSAGE"
            )
            assert by_call["refusal-420"].get("Unsupported") == "foo, bar"
            assert "text/plain" in (by_call["refusal-415"].get("Accept") or "")
            assert by_call["refusal-415b"].get("Accept-Encoding") == "identity"
            assert "application/sdp" in (by_call["refusal-406"].get("Accept") or "")
        await peer.transport.aclose()

    run(main())


def test_an_unreadable_request_over_udp_gets_a_400_naming_the_problem() -> None:
    """To cannot be parsed: the 400 still copies Via, From, Call-ID and CSeq (issue 12).

    A raw socket receives it: our own parser rightly refuses a response whose To it cannot
    read, so a SipTransport peer would drop it.
    """

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with UserAgent("bob@example.com", timers=FAST) as bob:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.connect(bob.local_address)
                wire = _plain("OPTIONS", "sip:bob@example.com", branch="bad").to_bytes()
                bad_to = b'To: "Bob <sip:bob@example.com>'
                await loop.sock_sendall(sock, wire.replace(b"To: <sip:bob@example.com>", bad_to))
                data = await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)
        head = data.decode().split("\r\n")
        assert head[0].startswith("SIP/2.0 400 Bad Request (address ")
        assert "unterminated display name" in head[0]
        assert "Call-ID: refusal-bad" in head
        assert bad_to.decode() in head  # copied as it came, without a tag
        assert "Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKbad" in head

    run(main())


# --- RFC 3261 §18.1.1: large requests over TCP ------------------------------------------------


class _TwoTransportProxy:
    """A stand-in proxy on UDP and TCP at the same port; answers each request ``status``."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.received: list[tuple[Transport, Request]] = []
        self.transport = SipTransport(self._on)

    def _on(self, message: Request | Response, origin: Origin) -> None:
        assert isinstance(message, Request)
        self.received.append((origin.transport, message))
        status = self.statuses.pop(0) if self.statuses else 200
        reply = make_response(message, status, to_tag="p")
        asyncio.get_running_loop().create_task(self.transport.reply(reply, origin))

    async def start(self, *, tcp: bool = True) -> Hop:
        for _ in range(20):  # the UDP port may be taken for TCP; try another
            host, port = await self.transport.listen(Transport.UDP)
            if not tcp:
                return Hop(Transport.UDP, host, port)
            try:
                await self.transport.listen(Transport.TCP, host, port)
            except TransportError:
                await self.transport.aclose()
                self.transport = SipTransport(self._on)
                continue
            return Hop(Transport.UDP, host, port)
        raise AssertionError("no port free on both UDP and TCP")


BIG = MimePart("text/plain", b"x" * 1400)


def test_a_request_over_1300_bytes_goes_over_tcp() -> None:
    async def main() -> None:
        proxy = _TwoTransportProxy([])
        hop = await proxy.start()
        async with UserAgent("alice@example.com", proxy=hop, timers=FAST) as alice:
            assert (await alice.send_message("bob@example.com", TEXT)).status == 200
            assert (await alice.send_message("bob@example.com", BIG)).status == 200
        await proxy.transport.aclose()
        (small_via, small), (big_via, big) = proxy.received
        assert small_via is Transport.UDP and small.top_via.transport == "UDP"
        assert big_via is Transport.TCP and big.top_via.transport == "TCP"
        assert len(big.to_bytes()) > 1300

    run(main())


def test_a_known_path_mtu_sets_the_limit_and_tcp_refused_falls_back_to_udp() -> None:
    async def main() -> None:
        proxy = _TwoTransportProxy([])
        hop = await proxy.start(tcp=False)
        async with UserAgent("alice@example.com", proxy=hop, timers=FAST, path_mtu=9000) as a:
            assert a.udp_limit == 8800
            assert (await a.send_message("bob@example.com", BIG)).status == 200
        async with UserAgent("alice@example.com", proxy=hop, timers=FAST) as alice:
            assert (await alice.send_message("bob@example.com", BIG)).status == 200
        await proxy.transport.aclose()
        assert [t for t, _ in proxy.received] == [Transport.UDP, Transport.UDP]

    run(main())


def test_513_over_udp_is_retried_over_tcp() -> None:
    async def main() -> None:
        proxy = _TwoTransportProxy([513])
        hop = await proxy.start()
        async with UserAgent("alice@example.com", proxy=hop, timers=FAST) as alice:
            assert (await alice.send_message("bob@example.com", TEXT)).status == 200
        await proxy.transport.aclose()
        (first_via, first), (second_via, second) = proxy.received
        assert (first_via, second_via) == (Transport.UDP, Transport.TCP)
        assert second.cseq[0] == first.cseq[0] + 1
        assert second.top_via.branch != first.top_via.branch

    run(main())


def _refuse_udp_once(alice: UserAgent, *, reported: bool) -> list[int]:
    """Make alice's first UDP send fail with EMSGSIZE: within sendto, as asyncio reports
    the kernel's refusal of a datagram over the limit, or ``reported`` on the socket a
    moment later (an ICMP "fragmentation needed": the datagram was dropped on the way).
    Returns the sizes of the UDP sends attempted."""
    udp = alice.transport._udp
    assert udp is not None
    protocol = udp.get_protocol()
    real = udp.sendto
    sizes: list[int] = []

    def sendto(data: bytes, addr: object = None) -> None:
        sizes.append(len(data))
        if len(sizes) > 1:
            real(data, addr)  # type: ignore[arg-type]
            return
        too_long = OSError(errno.EMSGSIZE, "Message too long")
        if reported:
            asyncio.get_running_loop().call_soon(protocol.error_received, too_long)
        else:
            protocol.error_received(too_long)

    udp.sendto = sendto  # type: ignore[method-assign]
    return sizes


@pytest.mark.parametrize("reported", [False, True], ids=["sendto", "icmp-reported"])
def test_emsgsize_over_udp_is_retried_over_tcp(reported: bool) -> None:
    """RFC 3261 §18.1.1: a UDP send refused as too long goes over TCP, like a 513 (the
    reported case at Timer E's retransmission)."""

    async def main() -> None:
        proxy = _TwoTransportProxy([])
        hop = await proxy.start()
        async with UserAgent("alice@example.com", proxy=hop, timers=FAST) as alice:
            sizes = _refuse_udp_once(alice, reported=reported)
            assert (await alice.send_message("bob@example.com", TEXT)).status == 200
        await proxy.transport.aclose()
        assert sizes == sizes[:1] and sizes[0] < 1300  # one small UDP attempt, refused
        [(via, request)] = proxy.received
        assert via is Transport.TCP and request.top_via.transport == "TCP"

    run(main())


def test_emsgsize_when_tcp_is_refused_too_is_a_transport_error() -> None:
    async def main() -> None:
        proxy = _TwoTransportProxy([])
        hop = await proxy.start(tcp=False)
        async with UserAgent("alice@example.com", proxy=hop, timers=FAST) as alice:
            udp = alice.transport._udp
            assert udp is not None
            protocol = udp.get_protocol()

            def sendto(data: bytes, addr: object = None) -> None:
                protocol.error_received(OSError(errno.EMSGSIZE, "Message too long"))

            udp.sendto = sendto  # type: ignore[method-assign]
            with pytest.raises(MessageTooLongError, match="do not fit a UDP datagram"):
                await alice.send_message("bob@example.com", TEXT)
        await proxy.transport.aclose()
        assert proxy.received == []

    run(main())


# --- RFC 5626 keep-alive ----------------------------------------------------------------------


async def _until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for ``predicate`` (checked every 10 ms) or fail after ``timeout`` s."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def test_crlf_keepalive_is_answered_and_keeps_the_flow() -> None:
    """Our transport answers CRLFCRLF with CRLF (RFC 5626 §3.5.1), so the UA keeps its
    connection to the registrar and does not reconnect."""

    async def main() -> None:
        proxy = _TwoTransportProxy([])
        udp = await proxy.start()
        hop = Hop(Transport.TCP, udp.host, udp.port)
        async with UserAgent(
            "alice@example.com", proxy=hop, transport=Transport.TCP, timers=FAST, keepalive=0.05
        ) as alice:
            assert (await alice.register()).status == 200
            first = alice.transport.pooled(hop)
            await _until(lambda: alice.keepalive_pings >= 3)
            assert alice.reconnects == 0
            assert alice.transport.pooled(hop) is first
            assert (await alice.unregister()).status == 200
        await proxy.transport.aclose()
        assert [r.method for _, r in proxy.received] == ["REGISTER", "REGISTER"]

    run(main())


async def _silent_registrar(
    registers: list[tuple[int, Request]],
) -> asyncio.Server:
    """A TCP registrar that answers each REGISTER with a 200 and never a keep-alive ping;
    ``registers`` gets (connection number, request)."""
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        number = connections
        parser = StreamParser()
        while data := await reader.read(65536):
            for event in parser.feed(data):
                if isinstance(event, Request):
                    registers.append((number, event))
                    writer.write(make_response(event, 200, to_tag="s").to_bytes())
            parser.pings = 0  # a registrar that ignores keep-alives
        writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


def test_a_silent_flow_is_closed_and_the_registration_made_again() -> None:
    """A registrar that never answers the ping: close, reconnect, REGISTER again (§4.4.1)."""

    async def main() -> None:
        registers: list[tuple[int, Request]] = []
        server = await _silent_registrar(registers)
        port = server.sockets[0].getsockname()[1]
        hop = Hop(Transport.TCP, "127.0.0.1", port)
        async with UserAgent(
            "alice@example.com",
            proxy=hop,
            transport=Transport.TCP,
            timers=FAST,
            keepalive=0.05,
            keepalive_timeout=0.1,
        ) as alice:
            assert (await alice.register()).status == 200
            await _until(lambda: len(registers) >= 2)
            assert alice.reconnects >= 1
        server.close()
        await server.wait_closed()
        assert [number for number, _ in registers[:2]] == [1, 2]  # a new connection

    run(main())


def test_closing_as_the_keepalive_answer_arrives_stops_the_keepalive() -> None:
    """The answer to a ping and the cancellation of the keep-alive task land in one turn of
    the event loop: the task must end. (With Python 3.11's ``asyncio.wait_for`` the answer
    won and the loop pinged on for ever, so closing the UA hung.)"""

    async def main() -> None:
        registers: list[tuple[int, Request]] = []
        server = await _silent_registrar(registers)
        hop = Hop(Transport.TCP, "127.0.0.1", server.sockets[0].getsockname()[1])
        async with UserAgent(
            "alice@example.com",
            proxy=hop,
            transport=Transport.TCP,
            timers=FAST,
            keepalive=0.01,
            keepalive_timeout=30,
        ) as alice:
            assert (await alice.register()).status == 200
            # Counted after the send, with no await before the wait for the answer: the
            # task waits for it now (the registrar never answers a ping).
            await _until(lambda: alice.keepalive_pings >= 1)
            task = alice._keepalive_task
            conn = alice.transport.pooled(hop)
            assert task is not None and conn is not None
            conn.heard.set()
            task.cancel()
            await asyncio.wait([task], timeout=5)
            assert task.cancelled()
        server.close()
        await server.wait_closed()

    run(main())
