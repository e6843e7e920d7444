"""Delegated crypto (draft §6, docs/delegated.md) end to end with real peers.

SIPp, which has no S/MIME, is alice@example.com's phone; ``sipcert authsvc`` (in process)
holds her delegated key; Kamailio (``WITH_AUTHSVC``) routes her requests, and requests to
her, through it; bob@example.net is a full ``SecureUA``. Both Stores and dnsmasq are real,
from the fixtures of ``tests/integration/secure/conftest.py``.

* the phone's MESSAGE (plain text + an RFC 4483 placeholder) reaches Bob signed as Alice and
  encrypted for his certificate; Bob verifies it against Store A (step 5) and sees that the
  signer certificate is a delegated one;
* Bob's protected MESSAGE to Alice is opened by the service; SIPp receives the plain text
  with ``Sipcert-Verification: verified;...``, checked by a SIPp regexp;
* a forged ``Sipcert-Verification`` from outside the domain is stripped;
* a malformed phone-side body (400) and a URL the service may not fetch (403) are refused;
* ending the delegation revokes the certificate: the phone's next request is refused, and a
  body signed with the old delegated key is reported signer-not-enrolled by Bob.
"""

from __future__ import annotations

import asyncio
import json
import signal
import stat
import subprocess
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sipcert.authsvc import DEVICE, AuthService, AuthServiceConfig, Subscriber
from sipcert.client import AsyncUA, ClientConfig, Credentials
from sipcert.proto.aor import parse_aor
from sipcert.proto.certs import delegated_by, sha256_fingerprint
from sipcert.proto.delegation import Action
from sipcert.proto.mime import MimePart
from sipcert.proto.sipsec import Reason, protect
from sipcert.sip.secure import Received, SecureUA, ensure_enrolled
from sipcert.sip.transport import Hop, Transport
from sipcert.sip.ua import Timers, UserAgent
from tests.conftest import free_port, require_program
from tests.integration.kamailio.peers import Kamailio, register_scenario, run_sipp
from tests.integration.secure.conftest import (
    ALICE,
    BOB,
    KamailioFactory,
    Network,
    run,
    sipcert_program,
)
from tests.integration.sip.peers import ANSWER_SDP_THEN_BYE, HEADER, SEND_200, sipp

pytestmark = [pytest.mark.peer("kamailio"), pytest.mark.peer("dnsmasq"), pytest.mark.peer("sipp")]

SERVICE = "authsvc.example.com"
FILL_URL = "https://authsvc.example.com/smime"
OFFER = MimePart(
    "application/sdp",
    b"v=0\r\no=bob 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 9 RTP/AVP 0\r\n",
)
TIMERS = Timers(t1=0.1, t2=0.8, invite_answer=20.0)


def placeholder_body(url: str = FILL_URL, content_id: str = "<p1@example.com>") -> str:
    """The phone's body (docs/delegated.md §2): the text and the RFC 4483 placeholder."""
    cid = f"Content-ID: {content_id}\n" if content_id else ""
    return (
        "--sipcert-b1\n"
        "Content-Type: text/plain\n\n"
        "Hello Bob\n"
        "--sipcert-b1\n"
        f'Content-Type: message/external-body; access-type="URL"; URL="{url}"\n\n'
        "Content-Type: application/pkcs7-mime; smime-type=enveloped-data\n"
        f"{cid}\n"
        "--sipcert-b1--\n"
    )


def phone_message(body: str, final: int) -> str:
    """SIPp as Alice's phone: MESSAGE to Bob, answer Kamailio's 407, expect ``final``."""
    request = """  <send retrans="500">
    <![CDATA[
MESSAGE sip:bob@example.net SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];rport;branch=[branch]
From: <sip:alice@example.com>;tag=[pid]SIPpTag[call_number]
To: <sip:bob@example.net>
Call-ID: [call_id]
CSeq: {cseq} MESSAGE
Max-Forwards: 70
{auth}Content-Type: multipart/mixed;boundary=sipcert-b1
Content-Length: [len]

{body}
    ]]>
  </send>
"""
    auth = f"[authentication username={ALICE.username} password={ALICE.password}]\n"
    return (
        HEADER
        + '<scenario name="sipcert: a delegating phone sends a MESSAGE">\n'
        + request.format(cseq=1, auth="", body=body)
        + '  <recv response="407" auth="true"/>\n'
        + request.format(cseq=2, auth=auth, body=body)
        + f'  <recv response="{final}"/>\n</scenario>\n'
    )


def phone_calls(verification: str) -> str:
    """SIPp as Alice's phone placing a call: the SDP offer plus a placeholder; the answer
    must arrive as plain SDP from Bob with the service's verification (a SIPp regexp)."""
    offer = (
        "--sipcert-b1\n"
        "Content-Type: application/sdp\n\n"
        "v=0\no=alice 1 1 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\n"
        "m=audio 9 RTP/AVP 0\n"
        "--sipcert-b1\n"
        f'Content-Type: message/external-body; access-type="URL"; URL="{FILL_URL}"\n\n'
        "Content-Type: application/pkcs7-mime; smime-type=enveloped-data\n"
        "Content-ID: <offer1@example.com>\n\n"
        "--sipcert-b1--\n"
    )
    invite = """  <send retrans="500">
    <![CDATA[
INVITE sip:bob@example.net SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];rport;branch=[branch]
From: <sip:alice@example.com>;tag=[pid]SIPpTag[call_number]
To: <sip:bob@example.net>
Call-ID: [call_id]
CSeq: {cseq} INVITE
Contact: <sip:alice@[local_ip]:[local_port]>
Max-Forwards: 70
{auth}Content-Type: multipart/mixed;boundary=sipcert-b1
Content-Length: [len]

{body}
    ]]>
  </send>
"""
    in_dialog = """  <send{retrans}>
    <![CDATA[
{method} [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];rport;branch=[branch]
From: <sip:alice@example.com>;tag=[pid]SIPpTag[call_number]
[last_To:]
[routes]
Call-ID: [call_id]
CSeq: {cseq} {method}
Contact: <sip:alice@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Length: 0

    ]]>
  </send>
"""
    auth = f"[authentication username={ALICE.username} password={ALICE.password}]\n"
    return (
        HEADER
        + '<scenario name="sipcert: a delegating phone places a call">\n'
        + invite.format(cseq=1, auth="", body=offer)
        + '  <recv response="100" optional="true"/>\n'
        + '  <recv response="407" auth="true"/>\n'
        + """  <send>
    <![CDATA[
ACK sip:bob@example.net SIP/2.0
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0

    ]]>
  </send>
"""
        + invite.format(cseq=2, auth=auth, body=offer)
        + '  <recv response="100" optional="true"/>\n'
        + '  <recv response="180" optional="true"/>\n'
        + f"""  <recv response="200" rrs="true">
    <action>
      <ereg regexp="{verification}" search_in="hdr" header="Sipcert-Verification:"
            check_it="true" assign_to="verification"/>
      <ereg regexp="o=bob " search_in="body" check_it="true" assign_to="answer"/>
      <ereg regexp="application/sdp" search_in="hdr" header="Content-Type:" check_it="true"
            assign_to="ctype"/>
    </action>
  </recv>
"""
        + in_dialog.format(retrans="", method="ACK", cseq=2)
        + in_dialog.format(retrans=' retrans="500"', method="BYE", cseq=3)
        + """  <recv response="200"/>
  <Reference variables="verification,answer,ctype"/>
</scenario>
"""
    )


def phone_answers(verification: str) -> str:
    """SIPp as Alice's phone answering a call with plain SDP; the offer must be plain with
    the service's verification."""
    return (
        HEADER
        + f"""<scenario name="sipcert: a delegating phone answers a call">
  <recv request="INVITE" crlf="true">
    <action>
      <ereg regexp="{verification}" search_in="hdr" header="Sipcert-Verification:"
            check_it="true" assign_to="verification"/>
      <ereg regexp="o=bob 1 1 IN IP4" search_in="body" check_it="true" assign_to="offer"/>
    </action>
  </recv>
"""
        + ANSWER_SDP_THEN_BYE.replace(
            "[last_CSeq:]\nContact:", "[last_CSeq:]\n[last_Record-Route:]\nContact:", 1
        )
        + """  <Reference variables="verification,offer"/>
</scenario>
"""
    )


def phone_receives(verification: str, text: str) -> str:
    """SIPp as Alice's phone receiving a MESSAGE: plain text and the header, by regexp."""
    return (
        HEADER
        + """<scenario name="sipcert: a delegating phone receives a MESSAGE">
  <recv request="MESSAGE" crlf="true">
    <action>
      <ereg regexp="VERIFICATION" search_in="hdr" header="Sipcert-Verification:"
            check_it="true" assign_to="verification"/>
      <ereg regexp="^TEXT" search_in="body" check_it="true" assign_to="text"/>
      <ereg regexp="text/plain" search_in="hdr" header="Content-Type:" check_it="true"
            assign_to="ctype"/>
    </action>
  </recv>
""".replace("VERIFICATION", verification).replace("TEXT", text)
        + SEND_200
        + """  <Reference variables="verification,text,ctype"/>
</scenario>
"""
    )


def service_config(
    tmp_path: Path, client: Callable[[Path], ClientConfig], return_port: int
) -> AuthServiceConfig:
    keys = tmp_path / "authsvc-keys"
    return AuthServiceConfig(
        name=SERVICE,
        fill_url=FILL_URL,
        keys=keys,
        listen=Hop(Transport.TCP, "127.0.0.1", free_port()),
        proxy=Hop(Transport.TCP, "127.0.0.1", return_port),
        client=client(keys),
        subscribers=(Subscriber(parse_aor(ALICE.aor), Credentials(ALICE.password)),),
    )


def delegating_kamailio(start: KamailioFactory, config: AuthServiceConfig) -> Kamailio:
    return start(
        (
            "WITH_AUTHSVC",
            f'AUTHSVC_URI="sip:127.0.0.1:{config.listen.port};transport=tcp"',
            f"AUTHSVC_RETURN_PORT={config.proxy.port}",
            'DELEGATES="^alice@example[.]com$"',
        )
    )


async def next_event(device: SecureUA, timeout: float = 15.0) -> Received:
    return await asyncio.wait_for(device.received.get(), timeout)


def test_delegating_phone_and_full_ua_through_kamailio(
    start_kamailio: KamailioFactory,
    network: Network,
    tmp_path: Path,
) -> None:
    sipp_binary = require_program("sipp")
    config = service_config(tmp_path, network.config, free_port())
    kamailio = delegating_kamailio(start_kamailio, config)
    proxy = Hop(Transport.TCP, "127.0.0.1", kamailio.port)
    alice = parse_aor(ALICE.aor)

    async def phone_sends(body: str, final: int, name: str) -> str:
        async with sipp(phone_message(body, final), tmp_path, name, remote=kamailio.address) as s:
            code, text = await s.finish()
        assert code == 0, f"{text}\n{kamailio.describe()}"
        return text

    async def phone_registers(contact_port: int, name: str) -> None:
        scenario = register_scenario(
            ALICE.username, "example.com", ALICE.password, contact=f"127.0.0.1:{contact_port}"
        )
        done = await asyncio.to_thread(
            run_sipp, sipp_binary, scenario, kamailio.address, tmp_path, name=name
        )
        assert done.returncode == 0, done.describe()

    async def main() -> None:
        async with (
            AsyncUA(config.client) as service_client,
            AuthService(config, service_client) as service,
            AsyncUA(network.config(tmp_path / "bob-home")) as bob_client,
        ):
            # The service enrolls Alice's delegated certificate with her SIP password (§5.1).
            (synced,) = await service.sync()
            assert synced.action == "enrolled"
            delegated = service.identity(alice).certificate
            assert delegated_by(delegated) == SERVICE
            assert (await service.sync())[0].action == "ok"
            check = await ensure_enrolled(
                bob_client, BOB.aor, Credentials(BOB.password), device="laptop"
            )
            assert check.action == "enrolled"
            bob_ua = UserAgent(
                BOB.aor, password=BOB.password, proxy=proxy, transport=Transport.TCP, timers=TIMERS
            )
            async with SecureUA(bob_ua, bob_client, device="laptop") as bob:
                assert (await bob.register()).status == 200, kamailio.describe()

                # -- the phone -> Bob: signed by the service as Alice, verified by Bob ----------
                await phone_sends(placeholder_body(), 200, "phone-message")
                received = await next_event(bob)
                assert received.verified, (received.outcome, kamailio.describe())
                assert received.text == "Hello Bob"
                assert received.outcome.signer == delegated
                assert received.outcome.delegated_by == SERVICE
                assert str(received.outcome) == (
                    f"verified as alice@example.com (signed for them by {SERVICE})"
                )
                assert b"Hello Bob" not in received.message.body  # encrypted on the wire
                handled = await service.handled.get()
                assert handled.decision.action is Action.PROTECT and handled.status == 0

                # -- Bob -> the phone: the service opens it; SIPp checks text and header -------
                signer = sha256_fingerprint(bob.identity.certificate)
                verified = (
                    f"verified;sender=&quot;sip:bob@example.net&quot;;signer={signer};"
                    f"by=authsvc[.]example[.]com$"
                )

                # -- the phone calls Bob: the offer is protected by the service, Bob's
                #    protected answer is opened for the phone (plain SDP + verification) ------
                calls = phone_calls(verified)
                async with sipp(calls, tmp_path, "phone-call", remote=kamailio.address) as s:
                    offer = await next_event(bob)
                    code, text = await s.finish()
                assert code == 0, f"{text}\n{kamailio.describe()}"
                assert offer.kind == "invite" and offer.status == 200, offer.outcome
                assert offer.outcome.delegated_by == SERVICE and offer.verified
                assert offer.outcome.content is not None
                assert b"o=alice 1 1" in offer.outcome.content.body
                assert (await service.handled.get()).decision.action is Action.PROTECT

                async with sipp(phone_receives(verified, "Hi Alice$"), tmp_path, "phone-in") as s:
                    await phone_registers(s.port, "phone-register")
                    sent = await bob.send_message(ALICE.aor, "Hi Alice")
                    assert sent.status == 200, (sent, kamailio.describe())
                    assert sent.recipients == (delegated,)  # Alice's only certificate
                    code, text = await s.finish()
                assert code == 0, f"{text}\n{kamailio.describe()}"
                opened = await service.handled.get()
                assert opened.decision.action is Action.OPEN
                assert opened.outcome is not None and opened.outcome.verified

                # -- Bob calls the phone: the offer opened for it, its plain answer protected
                #    as Alice by the service, verified by Bob (RFC 3261 §23.2) -----------------
                rings = phone_answers(verified.replace("$", ""))
                async with sipp(rings, tmp_path, "phone-answers") as s:
                    await phone_registers(s.port, "phone-register-call")
                    call = await bob.invite(ALICE.aor, OFFER)
                    assert call.established, (call.sent, kamailio.describe())
                    assert call.answer is not None
                    assert call.answer.verified, call.answer.outcome
                    assert call.answer.outcome.delegated_by == SERVICE
                    assert call.answer.outcome.signer == delegated
                    answer = call.answer.outcome.content
                    assert answer is not None and b"o=sipp 2 2" in answer.body
                    assert (await call.bye()).status == 200, kamailio.describe()
                    code, text = await s.finish()
                assert code == 0, f"{text}\n{kamailio.describe()}"
                assert (await service.handled.get()).decision.action is Action.OPEN
                assert (await next_event(bob)).kind == "answer"

                # -- a forged header from outside the domain is stripped (RFC 3325 §5) ---------
                plain = (
                    "not-protected;sender=&quot;sip:bob@example.net&quot;;"
                    "by=authsvc[.]example[.]com$"
                )
                async with sipp(phone_receives(plain, "forged$"), tmp_path, "phone-forged") as s:
                    await phone_registers(s.port, "phone-register-2")
                    forged = await bob_ua.send_message(
                        ALICE.aor,
                        MimePart("text/plain", b"forged"),
                        headers=[("Sipcert-Verification", f"verified;by={SERVICE}")],
                    )
                    assert forged.status == 200, kamailio.describe()
                    code, text = await s.finish()
                assert code == 0, f"{text}\n{kamailio.describe()}"
                assert "removing a Sipcert-Verification" in kamailio.log()
                assert (await service.handled.get()).decision.action is Action.ANNOTATE

                # -- phone-side bodies the service refuses -----------------------------------
                await phone_sends(placeholder_body(content_id=""), 400, "phone-no-cid")
                assert (await service.handled.get()).status == 400
                evil = "https://evil.example.org/smime"
                await phone_sends(placeholder_body(url=evil), 403, "phone-evil-url")
                assert (await service.handled.get()).status == 403
                await phone_sends(
                    placeholder_body(url="http://authsvc.example.com/smime"), 403, "phone-http-url"
                )
                assert (await service.handled.get()).status == 403
                assert bob.received.empty()  # nothing refused reached Bob

                # -- the delegation ends: the certificate is revoked at Store A ---------------
                old = service.identity(alice)
                revoked = await service.revoke(alice)
                assert revoked.sha256 == (sha256_fingerprint(delegated),)
                await phone_sends(placeholder_body(), 480, "phone-after-revoke")
                assert (await service.handled.get()).status == 480
                # A body still signed with the old delegated key (a leaked key) is refused
                # by Bob's step 5: Store A no longer holds the signer.
                fetched = await bob_client.fetch(BOB.aor, use_cache=False)
                body = protect(
                    MimePart("text/plain", b"signed with a revoked key"),
                    old.key,
                    old.certificate,
                    fetched.kept,
                    now=datetime.now(UTC),
                )
                leak_ua = UserAgent(
                    ALICE.aor,
                    password=ALICE.password,
                    proxy=proxy,
                    transport=Transport.TCP,
                    timers=TIMERS,
                )
                async with leak_ua:
                    response = await leak_ua.send_message(BOB.aor, body)
                assert response.status == 200, kamailio.describe()
                leaked = await next_event(bob)
                assert leaked.outcome.reason is Reason.SIGNER_NOT_ENROLLED
                assert leaked.outcome.signer == old.certificate
                passed = await service.handled.get()
                assert passed.decision.action is Action.FORWARD
                assert not service.client.home.has_identity(alice, DEVICE)
                assert (await bob.unregister()).status == 200

    run(main())


def test_service_refuses_an_untrusted_source(tmp_path: Path) -> None:
    """Only the configured proxies may hand the service requests (docs/delegated.md §4)."""
    config = replace(
        service_config(tmp_path, lambda home: ClientConfig(home=home), free_port()),
        trusted_proxies=frozenset({"192.0.2.1"}),
    )

    async def main() -> None:
        async with (
            AsyncUA(config.client) as client,
            AuthService(config, client) as service,
            UserAgent(
                ALICE.aor,
                proxy=Hop(Transport.TCP, "127.0.0.1", config.listen.port),
                transport=Transport.TCP,
                timers=TIMERS,
            ) as ua,
        ):
            response = await ua.send_message(BOB.aor, MimePart("text/plain", b"hi"))
            assert response.status == 403
            assert "not a trusted proxy" in (response.get("Warning") or "")
            assert service.handled.empty()

    run(main())


def test_the_command_line_enrolls_serves_and_revokes(
    network: Network,
    tmp_path: Path,
) -> None:
    """``sipcert authsvc sync | run | revoke`` with a TOML file against the real Stores."""
    listen = free_port()
    path = tmp_path / "authsvc.toml"
    path.write_text(
        f'name = "{SERVICE}"\nfill_url = "{FILL_URL}"\nkeys = "keys"\n'
        f'listen = "tcp:127.0.0.1:{listen}"\nproxy = "tcp:127.0.0.1:{free_port()}"\n'
        f'[client]\ndns = "{network.dns}"\nca_file = "{network.ca_file}"\n'
        f'[[subscriber]]\naor = "{ALICE.aor}"\npassword = "{ALICE.password}"\n'
    )
    path.chmod(0o600)
    program = sipcert_program()

    def sipcert(*args: str) -> list[dict[str, object]]:
        done = subprocess.run(
            [program, "authsvc", *args[:1], str(path), *args[1:], "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]

    (enrolled,) = sipcert("sync")
    assert enrolled["event"] == "enrolled" and enrolled["aor"] == ALICE.aor
    keys = tmp_path / "keys"
    # The key never leaves the service's folder, readable by the service alone.
    (key,) = keys.rglob("key.pem")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    folders = [keys, *(p for p in keys.rglob("*") if p.is_dir())]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o700 for p in folders)

    with subprocess.Popen(
        [program, "authsvc", "run", str(path), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as server:
        try:
            assert server.stdout is not None and server.stderr is not None
            first = json.loads(server.stdout.readline())
            assert first == {"event": "ok", "aor": ALICE.aor, "sha256": enrolled["sha256"]}
            ready = json.loads(server.stdout.readline())
            assert ready == {"event": "listening", "address": f"tcp:127.0.0.1:{listen}"}
            server.send_signal(signal.SIGTERM)
            assert server.wait(30) == 0, server.stderr.read()
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()

    (revoked,) = sipcert("revoke", ALICE.aor)
    assert revoked == {"event": "revoked", "aor": ALICE.aor, "sha256": [enrolled["sha256"]]}
    (again,) = sipcert("sync")
    assert again["event"] == "enrolled" and again["sha256"] != enrolled["sha256"]
