"""A real SIP registrar: Kamailio 5.6 with contrib/kamailio/kamailio.cfg and its subscriber table.

Proves the configuration and the credential rules the Store shares with it (draft §5):

* SIPp registers with MD5 Digest: right password -> 200 OK, wrong password -> 403; the
  ``ha1``-only user registers too (MD5);
* a registration takes effect: a MESSAGE to the AOR is routed to the registered contact;
* our own Digest client (:mod:`sipcert.proto.digest`) registers over raw UDP with MD5 and, when
  Kamailio is started with ``WITH_SHA256``, with SHA-256; the ``ha1``-only user then cannot
  (its stored HA1 is MD5) — the same rule as the Store's ``KamailioSQLiteCredentials``.
"""

from __future__ import annotations

import secrets
import sqlite3
from pathlib import Path

import pytest

from sipcert.proto.digest import DigestClient, parse_challenges
from tests.integration.kamailio.conftest import (
    ALICE,
    ALICE_NET,
    BOB,
    CAROL_HA1,
    KamailioFactory,
)
from tests.integration.kamailio.peers import (
    Kamailio,
    SipEndpoint,
    SipMessage,
    SippResult,
    Subscriber,
    send_with_digest,
    sipp_register,
)

pytestmark = pytest.mark.peer("kamailio")


def message_to(
    sender: SipEndpoint, server: Kamailio, frm: Subscriber, to: Subscriber, text: bytes
) -> SipMessage:
    """``frm`` sends a MESSAGE to ``to``'s AOR through Kamailio (answering its 407)."""
    responses, _ = send_with_digest(
        sender,
        server.address,
        "MESSAGE",
        f"sip:{to.aor}",
        from_uri=f"sip:{frm.aor}",
        to_uri=f"sip:{to.aor}",
        username=frm.username,
        password=frm.password,
        headers=[("Content-Type", "text/plain")],
        body=text,
    )
    assert responses[0].status == 407, str(responses[0])
    return responses[-1]


def _message_delivered(
    sender: SipEndpoint,
    devices: SipEndpoint | list[SipEndpoint],
    server: Kamailio,
    to: Subscriber,
    text: bytes,
) -> SipMessage:
    """Bob sends a MESSAGE to ``to``'s AOR; each of ``devices`` (registered contacts) must get
    it from Kamailio and answers 200 OK; returns the final response Bob gets."""
    devices = devices if isinstance(devices, list) else [devices]
    uri = f"sip:{to.aor}"
    common = {"from_uri": f"sip:{BOB.aor}", "to_uri": uri, "call_id": secrets.token_hex(12)}
    headers = [("Content-Type", "text/plain")]
    sender.send_request(
        server.address, "MESSAGE", uri, cseq=1, headers=headers, body=text, **common
    )
    challenge = sender.final_response(1)
    assert challenge.status == 407, str(challenge)
    client = DigestClient(BOB.username, BOB.password)
    answer = client.answer(challenge.all("Proxy-Authenticate"), method="MESSAGE", uri=uri)
    sender.send_request(
        server.address,
        "MESSAGE",
        uri,
        cseq=2,
        headers=[*headers, ("Proxy-Authorization", answer)],
        body=text,
        **common,
    )
    for device in devices:
        request, address = device.receive()
        assert request.method == "MESSAGE", str(request)
        # Kamailio replaced the AOR with the registered contact and dropped our credentials.
        assert request.first_line == f"MESSAGE sip:{to.username}@{device.contact} SIP/2.0"
        assert request.body == text
        assert request.get("Proxy-Authorization") is None
        device.reply(request, address, 200, "OK")
    return sender.final_response(2)


# -- SIPp: MD5 Digest ---------------------------------------------------------------------------


def _sipp_registers_and_receives(
    sipp: str,
    server: Kamailio,
    tmp_path: Path,
    who: Subscriber,
    text: bytes,
    transport: str = "u1",
) -> SippResult:
    """SIPp registers a contact for ``who`` with ``who``'s password (200 OK); the binding is
    real: Kamailio then routes Bob's MESSAGE for the AOR to that contact."""
    with SipEndpoint() as device, SipEndpoint() as bob:
        result = sipp_register(
            sipp,
            server,
            tmp_path,
            who,
            password=who.password,
            contact=device.contact,
            final=200,
            transport=transport,
        )
        final = _message_delivered(bob, device, server, who, text)
        assert final.status == 200, str(final)
    return result


@pytest.mark.peer("sipp")
def test_sipp_registers_with_the_subscriber_password(
    sipp: str, kamailio_md5: Kamailio, tmp_path: Path
) -> None:
    _sipp_registers_and_receives(sipp, kamailio_md5, tmp_path, ALICE, b"hello alice")


@pytest.mark.peer("sipp")
def test_sipp_registers_over_tcp(sipp: str, kamailio_md5: Kamailio, tmp_path: Path) -> None:
    result = _sipp_registers_and_receives(
        sipp, kamailio_md5, tmp_path, BOB, b"note to self", transport="t1"
    )
    assert "Via: SIP/2.0/TCP" in result.messages, result.describe()


@pytest.mark.peer("sipp")
def test_sipp_wrong_password_is_refused_and_registers_nothing(
    sipp: str, kamailio_md5: Kamailio, tmp_path: Path
) -> None:
    with SipEndpoint() as device, SipEndpoint() as bob:
        sipp_register(
            sipp,
            kamailio_md5,
            tmp_path,
            ALICE,
            password="not-" + ALICE.password,
            contact=device.contact,
            final=403,
        )
        final = message_to(bob, kamailio_md5, BOB, ALICE, b"anyone there?")
        assert final.status == 480, str(final)  # no contact registered for alice
    assert "authentication result -2" in kamailio_md5.log()


@pytest.mark.peer("sipp")
def test_sipp_registers_the_ha1_only_subscriber_with_md5(
    sipp: str, kamailio_md5: Kamailio, tmp_path: Path
) -> None:
    _sipp_registers_and_receives(sipp, kamailio_md5, tmp_path, CAROL_HA1, b"hello carol")


@pytest.mark.peer("sipp")
def test_sipp_realm_is_the_domain_so_users_of_two_domains_differ(
    sipp: str, kamailio_md5: Kamailio, tmp_path: Path
) -> None:
    with SipEndpoint() as device, SipEndpoint() as bob:
        # alice@example.net has her own password; alice@example.com's does not work there.
        sipp_register(
            sipp,
            kamailio_md5,
            tmp_path,
            ALICE_NET,
            password=ALICE.password,
            contact=device.contact,
            final=403,
        )
        final = message_to(bob, kamailio_md5, BOB, ALICE_NET, b"anyone there?")
        assert final.status == 480, str(final)  # the refused REGISTER bound nothing
    _sipp_registers_and_receives(sipp, kamailio_md5, tmp_path, ALICE_NET, b"hello alice.net")


# -- our Digest client over raw UDP ---------------------------------------------------------------


def register(
    endpoint: SipEndpoint, server: Kamailio, who: Subscriber, password: str
) -> tuple[list[SipMessage], str]:
    """REGISTER ``who`` with sipcert's Digest client; returns responses and chosen algorithm."""
    responses, client = send_with_digest(
        endpoint,
        server.address,
        "REGISTER",
        f"sip:{who.domain}",
        from_uri=f"sip:{who.aor}",
        to_uri=f"sip:{who.aor}",
        username=who.username,
        password=password,
        headers=[("Contact", f"<sip:{who.username}@{endpoint.contact}>"), ("Expires", "300")],
    )
    assert responses[0].status == 401, str(responses[0])
    challenge = client.challenge
    assert challenge is not None
    assert challenge.realm == who.domain
    return responses, challenge.algorithm


def test_kamailio_offers_md5_by_default_and_our_client_registers(
    kamailio_md5: Kamailio,
) -> None:
    with SipEndpoint() as device:
        responses, algorithm = register(device, kamailio_md5, ALICE, ALICE.password)
        offered = parse_challenges(responses[0].all("WWW-Authenticate"))
        assert [(c.algorithm, c.qop) for c in offered] == [("MD5", ("auth",))]
        assert algorithm == "MD5"
        assert responses[1].status == 200, str(responses[1])
        assert f"sip:alice@{device.contact}" in (responses[1].get("Contact") or "")


def test_kamailio_with_sha256_registers_our_client_with_sha256(
    start_kamailio: KamailioFactory,
) -> None:
    server = start_kamailio(["WITH_SHA256"])
    with SipEndpoint() as device:
        responses, algorithm = register(device, server, ALICE, ALICE.password)
        offered = parse_challenges(responses[0].all("WWW-Authenticate"))
        assert [(c.algorithm, c.qop) for c in offered] == [("SHA-256", ("auth",))]
        assert algorithm == "SHA-256"
        assert responses[1].status == 200, str(responses[1])

        responses, _ = register(device, server, BOB, "wrong-" + BOB.password)
        assert responses[1].status == 403, str(responses[1])


def test_ha1_only_subscriber_cannot_use_sha256(start_kamailio: KamailioFactory) -> None:
    """``ha1`` is MD5(user:realm:password): a SHA-256 registrar cannot check it (nor can the
    Store: ``KamailioSQLiteCredentials`` gives such a row MD5 only)."""
    server = start_kamailio(["WITH_SHA256"])
    with SipEndpoint() as device:
        responses, algorithm = register(device, server, CAROL_HA1, CAROL_HA1.password)
        assert algorithm == "SHA-256"
        assert responses[1].status == 403, str(responses[1])


def test_md5_registrar_accepts_ha1_only_and_refuses_its_wrong_password(
    kamailio_md5: Kamailio,
) -> None:
    with SipEndpoint() as device:
        responses, _ = register(device, kamailio_md5, CAROL_HA1, CAROL_HA1.password)
        assert responses[1].status == 200, str(responses[1])
        responses, _ = register(device, kamailio_md5, CAROL_HA1, "x" + CAROL_HA1.password)
        assert responses[1].status == 403, str(responses[1])


def test_unknown_user_and_empty_secret_rows_never_register(
    start_kamailio: KamailioFactory, subscriber_db: Path
) -> None:
    # A row with neither password nor ha1 must not accept the empty password.
    empty = Subscriber("dave", "example.com", "")
    conn = sqlite3.connect(subscriber_db)
    with conn:
        conn.execute(
            "INSERT INTO subscriber (username, domain, password, ha1) VALUES (?, ?, '', '')",
            (empty.username, empty.domain),
        )
    conn.close()
    server = start_kamailio(())
    with SipEndpoint() as device:
        responses, _ = register(device, server, empty, "")
        assert responses[1].status == 403, str(responses[1])
        ghost = Subscriber("ghost", "example.com", "whatever")
        responses, _ = register(device, server, ghost, ghost.password)
        assert responses[1].status == 403, str(responses[1])


def test_register_for_a_foreign_domain_is_refused(kamailio_md5: Kamailio) -> None:
    with SipEndpoint() as device:
        device.send_request(
            kamailio_md5.address,
            "REGISTER",
            "sip:example.org",
            from_uri="sip:alice@example.org",
            to_uri="sip:alice@example.org",
            call_id=secrets.token_hex(8),
            cseq=1,
            headers=[("Contact", f"<sip:alice@{device.contact}>")],
        )
        final = device.final_response(1)
        assert final.status == 403, str(final)
        assert final.get("WWW-Authenticate") is None


def test_message_is_routed_to_every_registered_contact(kamailio_md5: Kamailio) -> None:
    """Two devices of one AOR (draft §4.4): a MESSAGE forks to both; the sender is 407-challenged
    and answers with our Digest client."""
    with SipEndpoint() as phone, SipEndpoint() as laptop, SipEndpoint() as bob:
        for device in (phone, laptop):
            responses, _ = register(device, kamailio_md5, ALICE, ALICE.password)
            assert responses[1].status == 200, str(responses[1])
        final = _message_delivered(bob, [phone, laptop], kamailio_md5, ALICE, b"to both")
        assert final.status == 200, str(final)


def test_message_from_our_user_with_wrong_password_is_refused(kamailio_md5: Kamailio) -> None:
    with SipEndpoint() as bob:
        responses, _ = send_with_digest(
            bob,
            kamailio_md5.address,
            "MESSAGE",
            f"sip:{ALICE.aor}",
            from_uri=f"sip:{BOB.aor}",
            to_uri=f"sip:{ALICE.aor}",
            username=BOB.username,
            password="bad",
            body=b"x",
            headers=[("Content-Type", "text/plain")],
        )
        assert [r.status for r in responses] == [407, 403]
