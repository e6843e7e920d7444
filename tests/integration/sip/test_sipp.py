"""Our SIP UA against SIPp, a real and strict SIP peer, in both roles.

SIPp as UAS receives our MESSAGE and INVITE (and checks the body arrived intact); SIPp as
UAC sends MESSAGE and INVITE/ACK/BYE to our UA. SIPp's exit code 0 means every call of the
scenario succeeded, so SIPp itself vouches that our framing and dialog handling are valid SIP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import pytest

from sipcert.proto.mime import MimePart
from sipcert.sip.transport import Hop, Transport
from sipcert.sip.ua import IncomingRequest, Timers, UserAgent
from tests.integration.sip.peers import ANSWER_SDP_THEN_BYE, HEADER, SEND_200, sipp

pytestmark = pytest.mark.peer("sipp")

T = TypeVar("T")
TIMERS = Timers(t1=0.1, t2=0.8, invite_answer=10.0)
TEXT = MimePart("text/plain", b"hello from sipcert")
SDP = MimePart(
    "application/sdp",
    b"v=0\r\no=alice 1 1 IN IP4 127.0.0.1\r\ns=sipcert\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 0\r\n",
)


UAS_MESSAGE = (
    HEADER
    + """<scenario name="sipcert: SIPp receives a MESSAGE">
  <recv request="MESSAGE" crlf="true">
    <action>
      <ereg regexp="^hello from sipcert$" search_in="body" check_it="true" assign_to="text"/>
      <ereg regexp="text/plain" search_in="hdr" header="Content-Type:" check_it="true"
            assign_to="ctype"/>
      <ereg regexp="branch=z9hG4bK" search_in="hdr" header="Via:" check_it="true"
            assign_to="cookie"/>
    </action>
  </recv>
"""
    + SEND_200
    + """  <Reference variables="text,ctype,cookie"/>
</scenario>
"""
)

UAS_INVITE = (
    HEADER
    + """<scenario name="sipcert: SIPp answers an INVITE">
  <recv request="INVITE" crlf="true">
    <action>
      <ereg regexp="o=alice 1 1 IN IP4" search_in="body" check_it="true" assign_to="offer"/>
    </action>
  </recv>
  <send>
    <![CDATA[
SIP/2.0 180 Ringing
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
Content-Length: 0

    ]]>
  </send>
"""
    + ANSWER_SDP_THEN_BYE
    + """  <Reference variables="offer"/>
</scenario>
"""
)

UAC_MESSAGE = (
    HEADER
    + """<scenario name="sipcert: SIPp sends a MESSAGE">
  <send retrans="500">
    <![CDATA[
MESSAGE sip:bob@example.com SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:sipp@example.net>;tag=[pid]SIPpTag00[call_number]
To: <sip:bob@example.com>
Call-ID: [call_id]
CSeq: 1 MESSAGE
Max-Forwards: 70
Content-Type: text/plain;charset=utf-8
Content-Length: [len]

hello from sipp
    ]]>
  </send>
  <recv response="200">
    <action>
      <ereg regexp=";tag=" search_in="hdr" header="To:" check_it="true" assign_to="totag"/>
    </action>
  </recv>
  <Reference variables="totag"/>
</scenario>
"""
)

UAC_INVITE = (
    HEADER
    + """<scenario name="sipcert: SIPp calls our UA">
  <send retrans="500">
    <![CDATA[
INVITE sip:bob@example.com SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:sipp@example.net>;tag=[pid]SIPpTag00[call_number]
To: <sip:bob@example.com>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: [len]

v=0
o=sipp 1 1 IN IP[local_ip_type] [local_ip]
s=sipp
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0

    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rrs="true">
    <action>
      <ereg regexp="o=bob 7 7 IN IP4" search_in="body" check_it="true" assign_to="answer"/>
    </action>
  </recv>
  <send>
    <![CDATA[
ACK [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:sipp@example.net>;tag=[pid]SIPpTag00[call_number]
[last_To:]
[routes]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0

    ]]>
  </send>
  <pause milliseconds="200"/>
  <send retrans="500">
    <![CDATA[
BYE [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:sipp@example.net>;tag=[pid]SIPpTag00[call_number]
[last_To:]
[routes]
Call-ID: [call_id]
CSeq: 2 BYE
Max-Forwards: 70
Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
  <Reference variables="answer"/>
</scenario>
"""
)


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro, 60)

    return asyncio.run(main())


# --- SIPp as UAS ---------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", [Transport.UDP, Transport.TCP])
def test_sipp_receives_our_message(tmp_path: Path, transport: Transport) -> None:
    async def main() -> None:
        async with sipp(UAS_MESSAGE, tmp_path, "uas-message", transport=transport) as peer:
            proxy = Hop(transport, "127.0.0.1", peer.port)
            async with UserAgent(
                "alice@example.com", transport=transport, proxy=proxy, timers=TIMERS
            ) as alice:
                response = await peer.reach(lambda: alice.send_message("sipp@example.net", TEXT))
            code, report = await peer.finish()
        assert code == 0, report
        assert response.status == 200
        assert (response.to.tag or "").startswith(str(peer.process.pid))

    run(main())


def test_sipp_answers_our_invite_and_we_hang_up(tmp_path: Path) -> None:
    async def main() -> None:
        async with sipp(UAS_INVITE, tmp_path, "uas-invite") as peer:
            proxy = Hop(Transport.UDP, "127.0.0.1", peer.port)
            async with UserAgent("alice@example.com", proxy=proxy, timers=TIMERS) as alice:
                call = await alice.invite("sipp@example.net", SDP)
                assert call.established, call.response
                assert [r.status for r in call.provisional] == [180]
                assert call.remote_body is not None
                assert call.remote_body.media_type == "application/sdp"
                assert b"o=sipp 2 2 IN IP4 127.0.0.1" in call.remote_body.body
                assert call.dialog is not None
                assert call.dialog.remote_target == f"sip:sipp@127.0.0.1:{peer.port};transport=UDP"
                await asyncio.sleep(0.2)
                bye = await call.bye()
            code, report = await peer.finish()
        assert code == 0, report
        assert bye.status == 200

    run(main())


# --- SIPp as UAC ---------------------------------------------------------------------------------


def test_sipp_sends_us_a_message(tmp_path: Path) -> None:
    async def main() -> None:
        received: list[IncomingRequest] = []

        async def on_message(incoming: IncomingRequest) -> int:
            received.append(incoming)
            return 200

        async with UserAgent("bob@example.com", on_message=on_message, timers=TIMERS) as bob:
            async with sipp(UAC_MESSAGE, tmp_path, "uac-message", remote=bob.local_address) as peer:
                code, report = await peer.finish()
        assert code == 0, report
        assert len(received) == 1
        incoming = received[0]
        assert incoming.body == MimePart("text/plain;charset=utf-8", b"hello from sipp\r\n")
        assert str(incoming.sender.aor) == "sipp@example.net"

    run(main())


def test_sipp_calls_us_and_hangs_up(tmp_path: Path) -> None:
    async def main() -> None:
        offers: list[IncomingRequest] = []

        async def on_invite(incoming: IncomingRequest) -> MimePart:
            offers.append(incoming)
            return MimePart("application/sdp", b"v=0\r\no=bob 7 7 IN IP4 127.0.0.1\r\ns=-\r\n")

        async with UserAgent("bob@example.com", on_invite=on_invite, timers=TIMERS) as bob:
            async with sipp(UAC_INVITE, tmp_path, "uac-invite", remote=bob.local_address) as peer:
                code, report = await peer.finish()
            call = await asyncio.wait_for(bob.incoming_calls.get(), 5)
        assert code == 0, report
        assert offers[0].body is not None
        assert b"o=sipp 1 1 IN IP4 127.0.0.1" in offers[0].body.body
        assert call.confirmed.is_set()  # SIPp's ACK matched our dialog
        assert call.ended.is_set()
        assert call.ended_by == "remote BYE"

    run(main())
