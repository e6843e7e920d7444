"""Two of our UAs through a real Kamailio: REGISTER with Digest, MESSAGE and INVITE via the proxy.

Kamailio runs ``contrib/kamailio/kamailio.cfg`` (the fixtures of
``tests/integration/kamailio``): it challenges REGISTER with 401 and requests from its own
users with 407, looks the callee up in its location table, Record-Routes the INVITE and
loose-routes ACK and BYE. Passing here means our Digest, transactions, Via/rport handling,
Contact and route sets work with the proxy the draft's figure (§1, steps 2-4) assumes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import pytest

from sipcert.proto.mime import MimePart
from sipcert.sip.transport import Hop, Transport
from sipcert.sip.ua import IncomingRequest, Timers, UserAgent
from tests.integration.kamailio.conftest import (  # noqa: F401 - fixtures used by name
    ALICE,
    BOB,
    KamailioFactory,
    start_kamailio,
    subscriber_db,
)

pytestmark = pytest.mark.peer("kamailio")

T = TypeVar("T")
TIMERS = Timers(t1=0.1, t2=0.8, invite_answer=10.0)
TEXT = MimePart("text/plain", b"through the proxy\r\n\x00binary")
OFFER = MimePart("application/sdp", b"v=0\r\no=alice 1 1 IN IP4 127.0.0.1\r\ns=-\r\n")
ANSWER = MimePart("application/sdp", b"v=0\r\no=bob 2 2 IN IP4 127.0.0.1\r\ns=-\r\n")


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro, 60)

    return asyncio.run(main())


@pytest.mark.parametrize("transport", [Transport.UDP, Transport.TCP])
def test_register_message_and_call_through_kamailio(
    start_kamailio: KamailioFactory,  # noqa: F811
    transport: Transport,
) -> None:
    kamailio = start_kamailio(())
    proxy = Hop(transport, "127.0.0.1", kamailio.port)

    async def main() -> None:
        messages: list[IncomingRequest] = []
        offers: list[IncomingRequest] = []

        async def on_message(incoming: IncomingRequest) -> int:
            messages.append(incoming)
            return 200

        async def on_invite(incoming: IncomingRequest) -> MimePart:
            offers.append(incoming)
            return ANSWER

        async with (
            UserAgent(
                ALICE.aor, password=ALICE.password, proxy=proxy, transport=transport, timers=TIMERS
            ) as alice,
            UserAgent(
                BOB.aor,
                password=BOB.password,
                proxy=proxy,
                transport=transport,
                timers=TIMERS,
                on_message=on_message,
                on_invite=on_invite,
            ) as bob,
        ):
            assert (await alice.register()).status == 200, kamailio.describe()
            assert (await bob.register()).status == 200, kamailio.describe()
            again = await bob.register()  # pre-emptive credentials, nc=2, same nonce
            assert again.status == 200, kamailio.describe()
            assert bob._www is not None and bob._www.challenge is not None
            assert bob._www.challenge.algorithm == "MD5"

            # MESSAGE: 407 from Kamailio answered with Proxy-Authorization, then relayed.
            response = await alice.send_message(BOB.aor, TEXT)
            assert response.status == 200, kamailio.describe()
            assert len(messages) == 1
            incoming = messages[0]
            assert incoming.body == TEXT
            assert str(incoming.sender.aor) == ALICE.aor
            vias = incoming.request.vias
            assert len(vias) == 2  # Kamailio's and Alice's
            assert vias[0].port == kamailio.port
            assert incoming.request.uri.startswith(f"sip:bob@127.0.0.1:{bob.local_address[1]}")
            assert incoming.request.get("Proxy-Authorization") is None  # consumed by Kamailio

            # INVITE through the proxy; ACK and BYE follow the Record-Route (loose routing).
            call = await alice.invite(BOB.aor, OFFER)
            assert call.established, (call.response, kamailio.describe())
            assert call.remote_body == ANSWER
            assert offers[0].body == OFFER
            assert call.dialog is not None
            assert len(call.dialog.route_set) == 1
            route = call.dialog.route_set[0]
            assert f"127.0.0.1:{kamailio.port}" in route
            assert ";lr" in route
            answered = await asyncio.wait_for(bob.incoming_calls.get(), 5)
            assert answered.dialog is not None
            assert answered.dialog.route_set == [route]  # one proxy: same in both directions
            assert ("transport=tcp" in route) is (transport is Transport.TCP)
            await asyncio.wait_for(answered.confirmed.wait(), 5)
            assert answered.ack is not None
            assert len(answered.ack.vias) == 2  # the ACK came through Kamailio
            assert (await call.bye()).status == 200, kamailio.describe()
            await asyncio.wait_for(answered.ended.wait(), 5)
            assert answered.ended_by == "remote BYE"

            assert (await alice.unregister()).status == 200
            # Alice is gone from the location table: a call to her is refused by Kamailio.
            refused = await bob.invite(ALICE.aor, OFFER)
            assert refused.response is not None and refused.response.status == 480

    run(main())


def test_sha256_digest_with_kamailio(start_kamailio: KamailioFactory) -> None:  # noqa: F811
    kamailio = start_kamailio(("WITH_SHA256",))
    proxy = Hop(Transport.UDP, "127.0.0.1", kamailio.port)

    async def main() -> None:
        async with UserAgent(ALICE.aor, password=ALICE.password, proxy=proxy, timers=TIMERS) as ua:
            assert (await ua.register()).status == 200, kamailio.describe()
            assert ua._www is not None and ua._www.challenge is not None
            assert ua._www.challenge.algorithm == "SHA-256"
            assert (await ua.register()).status == 200, kamailio.describe()

    run(main())


def test_wrong_password_is_forbidden_by_kamailio(
    start_kamailio: KamailioFactory,  # noqa: F811
) -> None:
    kamailio = start_kamailio(())
    proxy = Hop(Transport.UDP, "127.0.0.1", kamailio.port)

    async def main() -> None:
        async with UserAgent(ALICE.aor, password="not-it", proxy=proxy, timers=TIMERS) as ua:
            response = await ua.register()
        assert response.status == 403, kamailio.describe()

    run(main())


def test_a_large_message_switches_to_tcp_through_kamailio(
    start_kamailio: KamailioFactory,  # noqa: F811
) -> None:
    """RFC 3261 §18.1.1: the UDP UA sends a request over 1300 bytes to Kamailio over TCP
    (same host and port); a small one stays on UDP. Kamailio relays both to Bob."""
    kamailio = start_kamailio(())
    proxy = Hop(Transport.UDP, "127.0.0.1", kamailio.port)
    big = MimePart("text/plain", b"0123456789abcdef" * 120)  # an S/MIME body's size

    async def main() -> None:
        messages: list[IncomingRequest] = []

        async def on_message(incoming: IncomingRequest) -> int:
            messages.append(incoming)
            return 200

        async with (
            UserAgent(ALICE.aor, password=ALICE.password, proxy=proxy, timers=TIMERS) as alice,
            UserAgent(
                BOB.aor, password=BOB.password, proxy=proxy, timers=TIMERS, on_message=on_message
            ) as bob,
        ):
            assert (await bob.register()).status == 200, kamailio.describe()
            assert (await alice.send_message(BOB.aor, TEXT)).status == 200, kamailio.describe()
            assert (await alice.send_message(BOB.aor, big)).status == 200, kamailio.describe()
        small, large = messages
        assert small.request.vias[1].transport == "UDP"  # Alice's Via, as Kamailio got it
        assert large.request.vias[1].transport == "TCP"
        assert large.body == big

    run(main())


def test_crlf_keepalive_with_kamailio(start_kamailio: KamailioFactory) -> None:  # noqa: F811
    """RFC 5626 §4.4.1 against Kamailio: it answers our CRLFCRLF pings with CRLF, so the TCP
    flow to the registrar stays up and is never re-established."""
    kamailio = start_kamailio(())
    proxy = Hop(Transport.TCP, "127.0.0.1", kamailio.port)

    async def main() -> None:
        async with UserAgent(
            ALICE.aor,
            password=ALICE.password,
            proxy=proxy,
            transport=Transport.TCP,
            timers=TIMERS,
            keepalive=0.1,
            keepalive_timeout=2.0,
        ) as ua:
            assert (await ua.register()).status == 200, kamailio.describe()
            flow = ua.transport.pooled(proxy)
            async with asyncio.timeout(10):
                while ua.keepalive_pings < 4:
                    await asyncio.sleep(0.02)
            assert ua.reconnects == 0, kamailio.describe()
            assert ua.transport.pooled(proxy) is flow
            assert (await ua.unregister()).status == 200

    run(main())
