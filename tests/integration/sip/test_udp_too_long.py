"""A real EMSGSIZE from the kernel sends the request over TCP (RFC 3261 §18.1.1, issue 12).

A UDP datagram over IPv4 carries at most 65,507 octets; the kernel refuses a longer one
with EMSGSIZE ("Message too long"), the error a path MTU lowered by ICMP "fragmentation
needed" gives as well. Alice is told the path MTU is huge, so her own 1300-octet rule does
not move the request to TCP first: the kernel's refusal must. Bob listens on TCP only, at
the address Alice's UDP hop names.
"""

from __future__ import annotations

import asyncio

from sipcert.proto.mime import MimePart
from sipcert.proto.sip import SipLimits
from sipcert.sip.transport import MAX_DATAGRAM, Hop, Transport
from sipcert.sip.ua import IncomingRequest, Timers, UserAgent

FAST = Timers(t1=0.05, t2=0.4, t4=0.5, invite_answer=5.0)
LIMITS = SipLimits(max_message=200_000)
HUGE = MimePart("text/plain", b"x" * (MAX_DATAGRAM + 1000))


def test_a_request_the_kernel_refuses_over_udp_goes_over_tcp() -> None:
    async def main() -> None:
        received: list[IncomingRequest] = []

        async def on_message(incoming: IncomingRequest) -> int:
            received.append(incoming)
            return 200

        async with UserAgent(
            "bob@example.com",
            transport=Transport.TCP,
            limits=LIMITS,
            on_message=on_message,
            timers=FAST,
        ) as bob:
            host, port = bob.local_address
            proxy = Hop(Transport.UDP, host, port)
            async with UserAgent(
                "alice@example.com", proxy=proxy, limits=LIMITS, path_mtu=1_000_000, timers=FAST
            ) as alice:
                assert alice.udp_limit > len(HUGE.body)  # our own rule would keep it on UDP
                response = await asyncio.wait_for(alice.send_message("bob@example.com", HUGE), 30)
        assert response.status == 200
        [incoming] = received
        assert incoming.request.top_via.transport == "TCP"
        assert incoming.body == HUGE

    asyncio.run(main())
