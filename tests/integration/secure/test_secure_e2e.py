"""The draft's figure (§1) end to end with real peers: Kamailio, two Stores, dnsmasq, SIPp.

Alice (alice@example.com, two devices) and Bob (bob@example.net, two devices) enroll at their
own domain's Store with their SIP password (step 0), register at Kamailio, and:

* Alice's MESSAGE is encrypted for both of Bob's certificates (step 1, draft §4.4), crosses
  Kamailio (steps 2-4), and each of Bob's devices decrypts it and verifies the signer against
  Alice's Store (step 5): "verified as alice@example.com";
* an INVITE's SDP is protected the same way, and so is the 200's answer (toward Alice);
* after Bob revokes one device, Alice's next MESSAGE is not for it: not-a-recipient, 493;
* a key of Alice's that was never enrolled signs a MESSAGE: delivered, reported as
  signer-not-enrolled.

SIPp, as the receiving peer of our protected MESSAGE and INVITE, vouches for the framing.
"""

from __future__ import annotations

import asyncio
import json
import queue
import signal
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import pytest

from sipcert.client import AsyncUA, Credentials
from sipcert.proto import cms
from sipcert.proto.aor import parse_aor
from sipcert.proto.certs import Identity, generate_identity, sha256_fingerprint
from sipcert.proto.mime import MimePart, parse_multipart
from sipcert.proto.sipsec import Reason
from sipcert.sip.secure import Received, SecureUA, ensure_enrolled
from sipcert.sip.transport import Hop, Transport
from sipcert.sip.ua import Timers, UserAgent
from tests.integration.kamailio.peers import Subscriber
from tests.integration.secure.conftest import (
    ALICE,
    BOB,
    KamailioFactory,
    Network,
    run,
    sipcert_program,
)
from tests.integration.sip.peers import ANSWER_SDP_THEN_BYE, HEADER, SEND_200, sipp

pytestmark = [pytest.mark.peer("kamailio"), pytest.mark.peer("dnsmasq")]

VALIDITY = timedelta(days=20)
TIMERS = Timers(t1=0.1, t2=0.8, invite_answer=20.0)
OFFER = MimePart(
    "application/sdp",
    b"v=0\r\no=alice 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 9 RTP/AVP 0\r\n",
)


async def next_event(device: SecureUA, timeout: float = 15.0) -> Received:
    return await asyncio.wait_for(device.received.get(), timeout)


def secure_device(
    client: AsyncUA, who: Subscriber, device: str, proxy: Hop, identity: Identity | None = None
) -> SecureUA:
    """One device of ``who``: its SIP UA on the proxy's transport, its key from the home."""
    ua = UserAgent(
        who.aor, password=who.password, proxy=proxy, transport=proxy.transport, timers=TIMERS
    )
    return SecureUA(ua, client, device=device, identity=identity)


def test_alice_and_bob_through_kamailio(
    start_kamailio: KamailioFactory,
    network: Network,
    tmp_path: Path,
) -> None:
    kamailio = start_kamailio(())
    proxy = Hop(Transport.TCP, "127.0.0.1", kamailio.port)  # S/MIME bodies exceed 1300 bytes
    store_a = network.stores["example.com"]

    async def main() -> None:
        async with (
            AsyncUA(network.config(tmp_path / "alice-home")) as alice_client,
            AsyncUA(network.config(tmp_path / "bob-home")) as bob_client,
        ):
            # Step 0: the start-up check enrolls each device with its SIP password (§5.1).
            for client, who in ((alice_client, ALICE), (bob_client, BOB)):
                for name in ("laptop", "phone"):
                    check = await ensure_enrolled(
                        client, who.aor, Credentials(who.password), device=name, validity=VALIDITY
                    )
                    assert check.action == "enrolled", check
            again = await ensure_enrolled(
                alice_client, ALICE.aor, Credentials(ALICE.password), device="laptop"
            )
            assert again.action == "ok" and again.status.in_store
            bob_certs = {
                sha256_fingerprint(bob_client.home.certificate(parse_aor(BOB.aor), name))
                for name in ("laptop", "phone")
            }

            async with (
                secure_device(alice_client, ALICE, "laptop", proxy) as alice,
                secure_device(alice_client, ALICE, "phone", proxy) as alice_phone,
                secure_device(bob_client, BOB, "laptop", proxy) as bob_laptop,
                secure_device(bob_client, BOB, "phone", proxy) as bob_phone,
            ):
                for device in (alice, alice_phone, bob_laptop, bob_phone):
                    assert (await device.register()).status == 200, kamailio.describe()
                bobs = (bob_laptop, bob_phone)

                # -- MESSAGE: encrypted for both of Bob's certificates (draft §4.4) ----------
                sent = await alice.send_message(BOB.aor, "hello Bob, this is Alice")
                assert sent.status == 200, (sent, kamailio.describe())
                assert {sha256_fingerprint(c) for c in sent.recipients} == bob_certs
                assert sent.reference_url == (
                    f"https://certs.example.com:{store_a.port}/search-cgi?email=alice%40example.com"
                )
                for device in bobs:
                    received = await next_event(device)
                    assert received.kind == "message"
                    assert str(received.outcome) == "verified as alice@example.com", device.device
                    assert received.text == "hello Bob, this is Alice"
                    assert received.status == 200
                    assert received.message.vias[0].port == kamailio.port  # via the proxy
                    assert received.check is not None and received.check.refreshed
                    assert received.outcome.reference is not None
                    assert received.outcome.reference.url == sent.reference_url
                    body = received.message.body
                    assert b"hello Bob" not in body

                # -- INVITE: each of Bob's devices in turn (a fork would CANCEL the slower) --
                for answering, other in ((bob_laptop, bob_phone), (bob_phone, bob_laptop)):
                    assert (await other.unregister()).status == 200
                    call = await alice.invite(BOB.aor, OFFER)
                    assert call.established, (call.sent, kamailio.describe())
                    offer = await next_event(answering)
                    assert offer.kind == "invite" and offer.status == 200
                    assert str(offer.outcome) == "verified as alice@example.com"
                    assert offer.outcome.content == OFFER
                    assert call.answer is not None
                    assert str(call.answer.outcome) == "verified as bob@example.net"
                    assert call.answer.outcome.signer == answering.identity.certificate
                    sdp = call.answer.outcome.content
                    assert sdp is not None and sdp.media_type == "application/sdp"
                    assert b"o=bob " in sdp.body
                    assert (await call.bye()).status == 200, kamailio.describe()
                    assert (await other.register()).status == 200
                assert alice_phone.received.empty()  # nothing was for Alice's other device

                # -- Bob revokes his phone: later messages are not for it (draft §5) ---------
                await bob_client.revoke(BOB.aor, Credentials(BOB.password), device="phone")
                sent = await alice.send_message(BOB.aor, "after the revocation")
                assert sent.status == 200, kamailio.describe()
                assert sent.recipients == (bob_laptop.identity.certificate,)
                laptop, phone = await next_event(bob_laptop), await next_event(bob_phone)
                assert laptop.verified and laptop.text == "after the revocation"
                assert phone.outcome.reason is Reason.NOT_A_RECIPIENT
                assert phone.status == 493
                assert phone.outcome.content is None

                # -- A key of Alice's that her Store never saw --------------------------------
                rogue = generate_identity(parse_aor(ALICE.aor), now=datetime.now(UTC))
                async with secure_device(alice_client, ALICE, "rogue", proxy, rogue) as mallory:
                    sent = await mallory.send_message(BOB.aor, "trust me")
                    assert sent.status == 200
                    received = await next_event(bob_laptop)
                    assert received.outcome.reason is Reason.SIGNER_NOT_ENROLLED
                    assert str(received.outcome).startswith("not verified: signer-not-enrolled")
                    assert received.outcome.signer == rogue.certificate
                    assert received.check is not None and received.check.refreshed
                    assert (await next_event(bob_phone)).outcome.reason is Reason.NOT_A_RECIPIENT

                    call = await mallory.invite(BOB.aor, OFFER)
                    assert call.sent.status == 603 and not call.established
                    declined = await next_event(bob_laptop)
                    assert declined.outcome.reason is Reason.SIGNER_NOT_ENROLLED

                for device in (alice, alice_phone, bob_laptop, bob_phone):
                    assert (await device.unregister()).status == 200

    run(main())


# -- SIPp as the receiving peer ---------------------------------------------------------------

SIPP_MESSAGE = (
    HEADER
    + """<scenario name="sipcert: SIPp receives a protected MESSAGE">
  <recv request="MESSAGE" crlf="true">
    <action>
      <ereg regexp="multipart/mixed; boundary=" search_in="hdr" header="Content-Type:"
            check_it="true" assign_to="mixed"/>
      <ereg regexp="Content-Type: application/pkcs7-mime; smime-type=authEnveloped-data"
            search_in="body" check_it="true" assign_to="p7m"/>
      <ereg regexp="handling=required" search_in="body" check_it="true" assign_to="handling"/>
    </action>
  </recv>
"""
    + SEND_200
    + """  <Reference variables="mixed,p7m,handling"/>
</scenario>
"""
)

SIPP_INVITE = (
    HEADER
    + """<scenario name="sipcert: SIPp answers a protected INVITE">
  <recv request="INVITE" crlf="true">
    <action>
      <ereg regexp="multipart/mixed; boundary=" search_in="hdr" header="Content-Type:"
            check_it="true" assign_to="mixed"/>
      <ereg regexp="Content-Type: application/pkcs7-mime; smime-type=authEnveloped-data"
            search_in="body" check_it="true" assign_to="p7m"/>
    </action>
  </recv>
"""
    + ANSWER_SDP_THEN_BYE
    + """  <Reference variables="mixed,p7m"/>
</scenario>
"""
)


@pytest.mark.peer("sipp")
def test_sipp_receives_our_protected_message_and_invite(
    network: Network,
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with (
            AsyncUA(network.config(tmp_path / "alice-home")) as alice_client,
            AsyncUA(network.config(tmp_path / "bob-home")) as bob_client,
        ):
            for client, who in ((alice_client, ALICE), (bob_client, BOB)):
                await client.enroll(who.aor, Credentials(who.password), validity=VALIDITY)
            bob_cert = bob_client.home.certificate(parse_aor(BOB.aor))

            async with sipp(
                SIPP_MESSAGE, tmp_path, "smime-message", transport=Transport.TCP
            ) as peer:
                hop = Hop(Transport.TCP, "127.0.0.1", peer.port)
                async with secure_device(alice_client, ALICE, "default", hop) as alice:
                    sent = await peer.reach(lambda: alice.send_message(BOB.aor, "hello SIPp"))
                code, report = await peer.finish()
            assert code == 0, report
            assert sent.status == 200 and sent.recipients == (bob_cert,)

            async with sipp(SIPP_INVITE, tmp_path, "smime-invite", transport=Transport.TCP) as peer:
                hop = Hop(Transport.TCP, "127.0.0.1", peer.port)
                async with secure_device(alice_client, ALICE, "default", hop) as alice:
                    call = await peer.reach(lambda: alice.invite(BOB.aor, OFFER))
                    assert call.established, call.sent
                    # SIPp cannot sign: its plain SDP answer is reported, not trusted.
                    assert call.answer is not None
                    assert call.answer.outcome.reason is Reason.NOT_PROTECTED
                    assert str(call.answer.outcome).startswith("not verified: not-protected")
                    invite_body = call.call.invite.body
                    await asyncio.sleep(0.2)
                    assert (await call.bye()).status == 200
                code, report = await peer.finish()
            assert code == 0, report
            # What SIPp accepted is our layout: [enveloped-data for Bob, reference to Alice].
            content_type = call.call.invite.get("Content-Type") or ""
            parts = parse_multipart(content_type, invite_body).parts
            assert [p.media_type for p in parts] == [
                "application/pkcs7-mime",
                "message/external-body",
            ]
            [recipient] = cms.recipient_identifiers(parts[0].body)
            assert recipient.matches(bob_cert)

    run(main())


# -- the command line: `sipcert ua` receives what `sipcert message send` sends -----------------


class Events:
    """The JSON lines a running ``sipcert ua`` prints, read by a thread (no blocking reads)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert process.stdout is not None
        stdout = process.stdout
        self._thread = threading.Thread(target=self._read, args=(stdout,), daemon=True)
        self._thread.start()

    def _read(self, stdout: IO[str]) -> None:
        with stdout:
            for line in stdout:
                self.lines.put(line)

    def next(self, timeout: float = 30.0) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"sipcert ua printed nothing for {timeout} s; so far: {self.seen}")
        self.seen.append(line)
        event: dict[str, Any] = json.loads(line)
        return event


def test_cli_ua_prints_the_verified_message_of_message_send(
    start_kamailio: KamailioFactory,
    network: Network,
    tmp_path: Path,
) -> None:
    kamailio = start_kamailio(())
    proxy = f"sip:127.0.0.1:{kamailio.port};transport=tcp"
    common = ["--dns", network.dns, "--ca-file", str(network.ca_file), "--json"]
    program = sipcert_program()
    alice_home, bob_home = tmp_path / "alice-home", tmp_path / "bob-home"
    enrolled = subprocess.run(
        [program, "enroll", ALICE.aor, "--home", str(alice_home), "--validity", "20", *common],
        input=ALICE.password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert enrolled.returncode == 0, enrolled.stderr
    secret = tmp_path / "bob.password"
    secret.write_text(BOB.password + "\n")
    command = [
        program,
        "ua",
        BOB.aor,
        "--proxy",
        proxy,
        "--home",
        str(bob_home),
        "--password-file",
        str(secret),
        "--device",
        "desk",
        "--validity",
        "20",
        *common,
    ]
    bob = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        events = Events(bob)
        certificate = events.next()
        assert certificate["event"] == "certificate", certificate
        assert certificate["action"] == "enrolled"  # the start-up check of draft §5.1
        assert certificate["device"] == "desk"
        registered = events.next()
        assert (registered["event"], registered["status"]) == ("registered", 200), registered

        sent = subprocess.run(
            [
                *(program, "message", "send", ALICE.aor, BOB.aor, "--text", "hello from the CLI"),
                *("--proxy", proxy, "--home", str(alice_home), *common),
            ],
            input=ALICE.password + "\n",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert sent.returncode == 0, (sent.stdout, sent.stderr, kamailio.describe())
        result = json.loads(sent.stdout)
        assert result["event"] == "sent" and result["status"] == 200
        assert result["recipients"] == [certificate["sha256"]]
        assert result["reference"].startswith("https://certs.example.com:")

        message = events.next()
        assert message["event"] == "message", message
        assert message["verified"] is True and message["outcome"] == "verified"
        assert message["from"] == ALICE.aor
        assert message["text"] == "hello from the CLI"
        assert message["status"] == 200
        assert message["store_check"] == {"cached": False, "in_store": True}
        assert message["delegated_by"] is None  # a device's own key (docs/delegated.md §5)

        # An INVITE from Alice's device (in process): the CLI UA answers with protected SDP.
        async def call_bob() -> None:
            hop = Hop(Transport.TCP, "127.0.0.1", kamailio.port)
            async with AsyncUA(network.config(alice_home)) as client:
                async with secure_device(client, ALICE, "default", hop) as alice:
                    call = await alice.invite(BOB.aor, OFFER)
                    assert call.established, (call.sent, kamailio.describe())
                    assert call.answer is not None
                    assert str(call.answer.outcome) == "verified as bob@example.net"
                    assert (await call.bye()).status == 200

        run(call_bob())
        invite = events.next()
        assert (invite["event"], invite["verified"], invite["status"]) == ("invite", True, 200)
        assert "o=alice 1 1 IN IP4 127.0.0.1" in invite["sdp"]
        bye = events.next()
        assert (bye["event"], bye["ended_by"]) == ("bye", "remote BYE"), bye
        assert bye["call_id"] == invite["call_id"]
    finally:
        if bob.poll() is None:
            bob.send_signal(signal.SIGTERM)
        try:
            bob.wait(timeout=30)  # stdout belongs to the reader thread: no communicate()
        except subprocess.TimeoutExpired:
            bob.kill()
            bob.wait(timeout=10)
        assert bob.stderr is not None
        errors = bob.stderr.read()
        bob.stderr.close()
    assert bob.returncode == 0, errors
    unregistered = events.next(timeout=10)
    assert (unregistered["event"], unregistered["status"]) == ("unregistered", 200), errors

    # Sending to someone with no certificate at all is refused before any SIP is sent.
    nobody = subprocess.run(
        [
            *(program, "message", "send", ALICE.aor, "carol@example.net", "--text", "x"),
            *("--proxy", proxy, "--home", str(alice_home), *common),
        ],
        input=ALICE.password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert nobody.returncode == 1, nobody.stderr
    assert "carol@example.net has no usable certificate" in json.loads(nobody.stdout)["error"]

    # A wrong password: the start-up enrollment is refused, reported as an error event.
    secret.write_text("not-the-password\n")
    refused = subprocess.run(
        [*command[:9], "--device", "other", *command[11:]],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 6, (refused.stdout, refused.stderr)
    error = json.loads(refused.stdout.splitlines()[-1])
    assert (error["event"], error["ok"], error["exit_code"]) == ("error", False, 6), error
    assert refused.stdout.count('"event": "error"') == 1  # printed once
