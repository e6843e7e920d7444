"""The service as a SIP element on loopback sockets, without Kamailio or a Store: what it
forwards, what it strips, and that responses go back the way the request came."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sipcert.authsvc import AuthService, AuthServiceConfig, Subscriber
from sipcert.client import AsyncUA, ClientConfig, Credentials
from sipcert.proto.aor import parse_aor
from sipcert.proto.delegation import VERIFICATION_HEADER, Action, parse_verification
from sipcert.proto.mime import MimePart
from sipcert.proto.sip import Request, Response, make_response, new_tag
from sipcert.sip.transport import Hop, Origin, SipTransport, Transport
from sipcert.sip.ua import Timers, UserAgent
from tests.conftest import free_port

ALICE = parse_aor("alice@example.com")
TIMERS = Timers(t1=0.05, t2=0.4)


class NextHop:
    """Stands where Kamailio's return socket is: records requests, answers ``status``."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.requests: asyncio.Queue[Request] = asyncio.Queue()
        self.transport = SipTransport(self._on)

    def _on(self, message: Request | Response, origin: Origin) -> None:
        if isinstance(message, Request):
            self.requests.put_nowait(message)
            answer = make_response(message, self.status, to_tag=new_tag())
            asyncio.get_running_loop().create_task(self.transport.reply(answer, origin))


def run_with_service(tmp_path: Path, work) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        hop = NextHop()
        _, port = await hop.transport.listen(Transport.TCP)
        config = AuthServiceConfig(
            name="authsvc.example.com",
            fill_url="https://authsvc.example.com/smime",
            keys=tmp_path / "keys",
            listen=Hop(Transport.TCP, "127.0.0.1", free_port()),
            proxy=Hop(Transport.TCP, "127.0.0.1", port),
            client=ClientConfig(home=tmp_path / "keys"),
            subscribers=(Subscriber(ALICE, Credentials("pw")),),
        )
        async with AsyncUA(config.client) as client, AuthService(config, client) as service:
            ua = UserAgent(
                "bob@example.net",
                proxy=Hop(Transport.TCP, "127.0.0.1", config.listen.port),
                transport=Transport.TCP,
                timers=TIMERS,
            )
            async with ua:
                await asyncio.wait_for(work(service, hop, ua), 20)
        await hop.transport.aclose()

    asyncio.run(main())


def test_a_plain_message_to_a_delegating_phone_is_marked_and_a_forgery_removed(
    tmp_path: Path,
) -> None:
    async def work(service: AuthService, hop: NextHop, ua: UserAgent) -> None:
        response = await ua.send_message(
            str(ALICE),
            MimePart("text/plain", b"hi"),
            headers=[(VERIFICATION_HEADER, "verified;by=authsvc.example.com")],
        )
        assert response.status == 200  # the next hop's answer, relayed back
        forwarded = await hop.requests.get()
        (value,) = forwarded.get_all(VERIFICATION_HEADER)  # the forgery is gone
        mark = parse_verification(value)
        assert (mark.result, mark.sender, mark.by) == (
            "not-protected",
            "sip:bob@example.net",
            "authsvc.example.com",
        )
        assert forwarded.body == b"hi"
        assert len(forwarded.vias) == 2 and forwarded.vias[0].port == service.config.listen.port
        assert forwarded.get("Max-Forwards") == "69"
        handled = await service.handled.get()
        assert handled.decision.action is Action.ANNOTATE

    run_with_service(tmp_path, work)


def test_a_placeholder_before_the_key_exists_is_480_and_goes_nowhere(tmp_path: Path) -> None:
    """A delegating user (here as the sender) whose certificate is not enrolled yet: the
    phone learns it (480 with a Warning); nothing unprotected leaves the service."""

    async def work(service: AuthService, hop: NextHop, ua: UserAgent) -> None:
        body = (
            b"--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\n"
            b'Content-Type: message/external-body; access-type="URL"; '
            b'URL="https://authsvc.example.com/smime"\r\n\r\n'
            b"Content-Type: application/pkcs7-mime\r\nContent-ID: <a@b>\r\n\r\n--b--\r\n"
        )
        alice = UserAgent(
            str(ALICE),
            proxy=Hop(Transport.TCP, "127.0.0.1", service.config.listen.port),
            transport=Transport.TCP,
            timers=TIMERS,
        )
        async with alice:
            response = await alice.send_message(
                "bob@example.net", MimePart("multipart/mixed; boundary=b", body)
            )
        assert response.status == 480
        assert "no delegated certificate" in (response.get("Warning") or "")
        assert hop.requests.empty()
        assert (await service.handled.get()).status == 480

    run_with_service(tmp_path, work)
