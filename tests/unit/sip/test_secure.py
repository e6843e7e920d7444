"""SecureUA over loopback SIP with in-process Stores: draft §1 steps 1-5, §4.4, §5 cache rule.

The Stores are a stand-in for :class:`~sipcert.client.AsyncUA` that serves certificates from a
dict and keeps the real :class:`~sipcert.client.CertificateCache`, so the draft §5 rule
("a certificate received in the SIP signaling that is not cached ... MUST update the cache")
runs exactly as in the client. The SIP side is two real :class:`UserAgent` on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Awaitable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from sipcert.client.cache import CertificateCache, SignaledCheck
from sipcert.client.fetch import FetchResult
from sipcert.client.home import Home
from sipcert.client.locate import Location, Target
from sipcert.errors import LocationError, TransportError
from sipcert.proto import cms, smime
from sipcert.proto.aor import AOR, parse_aor
from sipcert.proto.certs import Identity, generate_identity, sha256_fingerprint
from sipcert.proto.indirection import parse_external_body
from sipcert.proto.mime import MimePart, build_multipart, parse_multipart
from sipcert.proto.sipsec import Reason
from sipcert.sip.secure import NoCertificatesError, Received, SecureUA
from sipcert.sip.transport import Hop, Transport
from sipcert.sip.ua import Timers, UserAgent

T = TypeVar("T")
TIMERS = Timers(t1=0.1, t2=0.8, invite_answer=5.0)
NOW = datetime.now(UTC)
ALICE = parse_aor("alice@example.com")
BOB = parse_aor("bob@example.net")
OFFER = MimePart("application/sdp", b"v=0\r\no=alice 1 1 IN IP4 127.0.0.1\r\ns=-\r\n")


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro, 30)

    return asyncio.run(main())


class Stores:
    """Every domain's Store in one dict, with the client's real cache in front (draft §5)."""

    def __init__(self, home: Path, ttl: float = 60.0) -> None:
        self.certificates: dict[AOR, list[Identity]] = {}
        self.cache = CertificateCache(ttl)
        self._home = Home(home)
        self.gets: list[AOR] = []
        self.down = False

    @property
    def home(self) -> Home:
        return self._home

    def enroll(self, identity: Identity, aor: AOR) -> None:
        self.certificates.setdefault(aor, []).append(identity)

    async def fetch(self, aor: AOR | str, *, use_cache: bool = True) -> FetchResult:
        target = aor if isinstance(aor, AOR) else parse_aor(aor)
        if use_cache:
            cached = self.cache.get(target)
            if cached is not None:
                return cached
        if self.down:
            raise TransportError(f"connection to certificates.{target.host} refused")
        self.gets.append(target)
        kept = tuple(i.certificate for i in self.certificates.get(target, []))
        result = FetchResult(target, (await self.locate(target)).url, kept)
        self.cache.put(result)
        return result

    async def certificate_in_signaling(
        self, aor: AOR | str, certificate: x509.Certificate
    ) -> SignaledCheck:
        target = aor if isinstance(aor, AOR) else parse_aor(aor)

        async def refresh(which: AOR) -> FetchResult:
            return await self.fetch(which, use_cache=False)

        return await self.cache.check_signaled(target, certificate, refresh)

    async def locate(self, aor: AOR | str) -> Location:
        target = aor if isinstance(aor, AOR) else parse_aor(aor)
        if target.host == "unlocatable.example":
            raise LocationError("no SRV and no A record")
        return Location(target, (Target(f"certificates.{target.host}", 443),), True)


@pytest.fixture(scope="module")
def alice_id() -> Identity:
    return generate_identity(ALICE, now=NOW)


@pytest.fixture(scope="module")
def bob_ids() -> tuple[Identity, Identity]:
    return generate_identity(BOB, now=NOW), generate_identity(BOB, now=NOW)


@pytest.fixture
def stores(tmp_path: Path, alice_id: Identity, bob_ids: tuple[Identity, Identity]) -> Stores:
    stores = Stores(tmp_path / "home")
    stores.enroll(alice_id, ALICE)
    for identity in bob_ids:
        stores.enroll(identity, BOB)
    return stores


def test_message_is_verified_and_the_cache_rule_applies(
    stores: Stores, alice_id: Identity, bob_ids: tuple[Identity, Identity]
) -> None:
    async def main() -> None:
        bob_ua = UserAgent(BOB, timers=TIMERS)
        async with SecureUA(bob_ua, stores, identity=bob_ids[1], device="phone") as bob:
            proxy = Hop(Transport.UDP, *bob_ua.local_address)
            alice_ua = UserAgent(ALICE, proxy=proxy, timers=TIMERS)
            async with SecureUA(alice_ua, stores, identity=alice_id) as alice:
                sent = await alice.send_message(BOB, "hello Bob")
                assert sent.ok and sent.status == 200, sent
                assert not sent.retried
                assert set(sent.recipients) == {i.certificate for i in bob_ids}
                assert sent.reference_url == (
                    "https://certificates.example.com/search-cgi?email=alice%40example.com"
                )
                received = bob.received.get_nowait()
                assert received.kind == "message"
                assert received.device == "phone"
                assert received.verified, received.outcome
                assert str(received.outcome) == "verified as alice@example.com"
                assert received.text == "hello Bob"
                assert received.status == 200
                assert received.outcome.signer == alice_id.certificate
                reference = received.outcome.reference
                assert reference is not None and reference.url == sent.reference_url
                # draft §5: Alice's certificate came in signaling and was not cached: refresh.
                assert received.check is not None
                assert (received.check.cached, received.check.refreshed) == (False, True)
                assert stores.gets == [BOB, ALICE]

                again = await alice.send_message(BOB, "again")
                assert again.fetch.from_cache
                second = bob.received.get_nowait()
                assert second.verified
                assert second.check is not None and second.check.cached
                assert stores.gets == [BOB, ALICE]  # both answered from the cache

    run(main())


def test_the_wire_body_is_multipart_mixed(
    stores: Stores, alice_id: Identity, bob_ids: tuple[Identity, Identity]
) -> None:
    async def main() -> None:
        async with UserAgent(BOB, timers=TIMERS) as raw:
            proxy = Hop(Transport.UDP, *raw.local_address)
            async with SecureUA(
                UserAgent(ALICE, proxy=proxy, timers=TIMERS), stores, identity=alice_id
            ) as alice:
                assert (await alice.send_message(BOB, "on the wire")).status == 200
            incoming = raw.inbox.get_nowait()
        assert (incoming.request.get("Content-Type") or "").startswith("multipart/mixed")
        assert incoming.body is not None
        parts = parse_multipart(incoming.body.content_type, incoming.body.body).parts
        assert [p.media_type for p in parts] == ["application/pkcs7-mime", "message/external-body"]
        assert b"on the wire" not in incoming.request.body
        assert len(cms.recipient_identifiers(parts[0].body)) == 2
        assert parse_external_body(parts[1]).url.endswith("email=alice%40example.com")

    run(main())


def test_not_a_recipient_gets_493_and_the_sender_refetches_once(
    stores: Stores, alice_id: Identity, bob_ids: tuple[Identity, Identity]
) -> None:
    """Bob's device re-enrolled after Alice cached his certificates (draft §8's open issue)."""

    async def main() -> None:
        new_phone = generate_identity(BOB, now=NOW)
        bob_ua = UserAgent(BOB, timers=TIMERS)
        async with SecureUA(bob_ua, stores, identity=new_phone) as bob:
            proxy = Hop(Transport.UDP, *bob_ua.local_address)
            async with SecureUA(
                UserAgent(ALICE, proxy=proxy, timers=TIMERS), stores, identity=alice_id
            ) as alice:
                await alice.recipients(BOB)  # cached: the two old certificates
                stores.certificates[BOB] = [new_phone]
                sent = await alice.send_message(BOB, "after re-enrollment")
                assert sent.ok and sent.retried
                assert sent.recipients == (new_phone.certificate,)
                first, second = bob.received.get_nowait(), bob.received.get_nowait()
                assert first.outcome.reason is Reason.NOT_A_RECIPIENT
                assert first.status == 493
                assert second.verified and second.text == "after re-enrollment"

                # Fresh certificates that still do not include the device: 493 is reported.
                stores.certificates[BOB] = list(bob_ids)
                stores.cache.clear()
                stale = await alice.send_message(BOB, "lost")
                assert stale.undecipherable and not stale.retried
                assert "493" in str(stale)
                assert bob.received.get_nowait().outcome.reason is Reason.NOT_A_RECIPIENT

    run(main())


def test_unconfirmed_signers_are_delivered_but_flagged(
    stores: Stores, alice_id: Identity, bob_ids: tuple[Identity, Identity]
) -> None:
    async def main() -> None:
        rogue = generate_identity(ALICE, now=NOW)  # a key for alice@ that the Store never saw
        reports: list[Received] = []

        async def report(received: Received) -> None:
            reports.append(received)
            raise RuntimeError("a broken observer does not change the answer")

        bob_ua = UserAgent(BOB, timers=TIMERS)
        async with SecureUA(bob_ua, stores, identity=bob_ids[0], on_received=report) as bob:
            proxy = Hop(Transport.UDP, *bob_ua.local_address)
            async with SecureUA(
                UserAgent(ALICE, proxy=proxy, timers=TIMERS), stores, identity=rogue
            ) as mallory:
                sent = await mallory.send_message(BOB, "trust me")
                assert sent.status == 200
                received = bob.received.get_nowait()
                assert received.outcome.reason is Reason.SIGNER_NOT_ENROLLED
                assert received.text == "trust me"
                assert "not among the certificates" in received.outcome.detail
                assert received.check is not None and received.check.refreshed
                assert reports == [received]

                stores.down = True  # Bob's certificates are cached; Alice's Store is asked
                sent = await mallory.send_message(BOB, "store down")
                assert sent.status == 200
                unreachable = bob.received.get_nowait()
                assert unreachable.outcome.reason is Reason.STORE_UNREACHABLE
                detail = unreachable.outcome.detail
                assert "the Store check failed: connection to certificates." in detail
                assert "Error" not in detail  # said in words, no class name (issue 8)

    run(main())


def test_invite_both_directions_protected(
    stores: Stores, alice_id: Identity, bob_ids: tuple[Identity, Identity]
) -> None:
    async def main() -> None:
        bob_ua = UserAgent(BOB, timers=TIMERS)
        async with SecureUA(bob_ua, stores, identity=bob_ids[0]) as bob:
            proxy = Hop(Transport.UDP, *bob_ua.local_address)
            alice_ua = UserAgent(ALICE, proxy=proxy, timers=TIMERS)
            async with SecureUA(alice_ua, stores, identity=alice_id) as alice:
                call = await alice.invite(BOB, OFFER)
                assert call.established, call.sent
                offer = bob.received.get_nowait()
                assert offer.kind == "invite" and offer.status == 200
                assert offer.verified and offer.outcome.content == OFFER
                # The 200's SDP is protected toward Alice's certificates and verified as Bob.
                assert call.answer is not None
                assert call.answer.kind == "answer"
                assert str(call.answer.outcome) == "verified as bob@example.net"
                assert call.answer.outcome.signer == bob_ids[0].certificate
                content = call.answer.outcome.content
                assert content is not None and content.media_type == "application/sdp"
                assert b"o=bob " in content.body and b"IN IP4 127.0.0.1" in content.body
                assert call.call.remote_body is not None
                assert call.call.remote_body.media_type == "multipart/mixed"
                assert alice.received.get_nowait() is call.answer
                assert (await call.bye()).status == 200

    run(main())


@pytest.mark.parametrize("sdp", [OFFER.body.decode("ascii"), OFFER.body])
def test_invite_takes_the_sdp_as_text_or_bytes(
    stores: Stores, alice_id: Identity, bob_ids: tuple[Identity, Identity], sdp: str | bytes
) -> None:
    """docs/sip.md's ``invite(to, sdp)``: a plain SDP string is sent as application/sdp."""

    async def main() -> None:
        bob_ua = UserAgent(BOB, timers=TIMERS)
        async with SecureUA(bob_ua, stores, identity=bob_ids[0]) as bob:
            alice_ua = UserAgent(
                ALICE, proxy=Hop(Transport.UDP, *bob_ua.local_address), timers=TIMERS
            )
            async with SecureUA(alice_ua, stores, identity=alice_id) as alice:
                call = await alice.invite(BOB, sdp)
                assert call.established, call.sent
                offer = bob.received.get_nowait()
                assert offer.verified and offer.outcome.content == OFFER
                assert (await call.bye()).status == 200

    run(main())


def test_invite_from_an_unconfirmed_signer_is_declined(
    stores: Stores, bob_ids: tuple[Identity, Identity]
) -> None:
    async def main() -> None:
        rogue = generate_identity(ALICE, now=NOW)
        bob_ua = UserAgent(BOB, timers=TIMERS)
        async with SecureUA(bob_ua, stores, identity=bob_ids[0]) as bob:
            proxy = Hop(Transport.UDP, *bob_ua.local_address)
            async with SecureUA(
                UserAgent(ALICE, proxy=proxy, timers=TIMERS), stores, identity=rogue
            ) as mallory:
                call = await mallory.invite(BOB, OFFER)
                assert not call.established
                assert call.sent.status == 603 and call.answer is None
                assert bob.received.get_nowait().outcome.reason is Reason.SIGNER_NOT_ENROLLED

                # A user who accepts unverified calls still encrypts the answer only to the
                # certificates at alice@'s Store: the rogue key cannot read it.
                bob.accept_unverified = True
                call = await mallory.invite(BOB, OFFER)
                assert call.established
                assert call.answer is not None
                assert call.answer.outcome.reason is Reason.NOT_A_RECIPIENT
                await call.bye()

    run(main())


def test_no_certificates_means_no_protected_send(stores: Stores, alice_id: Identity) -> None:
    async def main() -> None:
        proxy = Hop(Transport.UDP, "127.0.0.1", 9)
        async with SecureUA(
            UserAgent(ALICE, proxy=proxy, timers=TIMERS), stores, identity=alice_id
        ) as alice:
            with pytest.raises(NoCertificatesError, match=r"carol@example\.net has no usable"):
                await alice.send_message("carol@example.net", "nobody home")

    run(main())


def test_identity_from_the_home_and_no_reference_when_unlocatable(
    tmp_path: Path, stores: Stores, bob_ids: tuple[Identity, Identity]
) -> None:
    async def main() -> None:
        erin = parse_aor("erin@unlocatable.example")
        identity = generate_identity(erin, now=NOW)
        stores.home.save(erin, identity, device="laptop")
        bob_ua = UserAgent(BOB, timers=TIMERS)
        async with SecureUA(bob_ua, stores, identity=bob_ids[0]) as bob:
            proxy = Hop(Transport.UDP, *bob_ua.local_address)
            async with SecureUA(
                UserAgent(erin, proxy=proxy, timers=TIMERS), stores, device="laptop"
            ) as sender:
                assert sender.identity.certificate == identity.certificate
                sent = await sender.send_message(BOB, "no reference")
                assert sent.ok and sent.reference_url is None
                received = bob.received.get_nowait()
                assert received.outcome.reference is None
                # Erin's Store cannot be located: delivered, flagged.
                assert received.outcome.reason is Reason.STORE_UNREACHABLE
                assert received.outcome.detail == "the Store check failed: no SRV and no A record"

    run(main())


# --- what the callee announced chooses our next body (RFC 8551 §2.5.2, §2.7.1) -------------

CAROL = parse_aor("carol@example.org")
CBC_ONLY = ("aes256_cbc", "aes128_cbc")
AUTH_ENVELOPED = bytes.fromhex("060b2a864886f70d0109100117")  # id-ct-authEnvelopedData
ENVELOPED = bytes.fromhex("06092a864886f70d010703")  # id-envelopedData
AES256_CBC = bytes.fromhex("060960864801650304012a")  # aes256-CBC


def _signed_body(to: x509.Certificate, signed: MimePart) -> MimePart:
    """Carol's body: ``signed``, encrypted for Bob's device (as an RFC 5751 agent would)."""
    return smime.encrypt(signed, [to], algorithms=cms.LEGACY_ALGORITHMS)


def _envelope_of(body: MimePart) -> bytes:
    parts = parse_multipart(body.content_type, body.body).parts
    return parts[0].body


def _hear_from_carol(
    stores: Stores, bob_id: Identity, body: MimePart, **options: object
) -> SecureUA:
    """Carol's plain UA sends ``body`` to Bob's SecureUA, which is returned (closed; its home,
    and what it remembered there, kept) with what it received."""

    async def main() -> tuple[SecureUA, Received]:
        bob_ua = UserAgent(BOB, timers=TIMERS)
        async with SecureUA(bob_ua, stores, identity=bob_id) as bob:
            proxy = Hop(Transport.UDP, *bob_ua.local_address)
            async with UserAgent(CAROL, proxy=proxy, timers=TIMERS) as carol_ua:
                response = await carol_ua.send_message(str(BOB), body)
                assert response.status == 200
        return bob, bob.received.get_nowait()

    return run(main())


def _next_envelope(bob: SecureUA) -> bytes:
    body, _, _ = run(bob.protect(CAROL, MimePart("text/plain", b"next one")))
    return _envelope_of(body)


@pytest.fixture
def carol(stores: Stores) -> Identity:
    identity = generate_identity(CAROL, now=NOW)
    stores.enroll(identity, CAROL)
    return identity


def test_a_cbc_only_callee_gets_enveloped_data_next_time(
    stores: Stores, bob_ids: tuple[Identity, Identity], carol: Identity
) -> None:
    inner = MimePart("text/plain", b"from an RFC 5751 phone")
    signed = smime.sign(inner, carol.key, carol.certificate, capabilities=CBC_ONLY)
    fresh = SecureUA(UserAgent(BOB, timers=TIMERS), stores, identity=bob_ids[0])
    assert ENVELOPED not in _next_envelope(fresh)[:40]  # before: AES-GCM, the default
    bob, last = _hear_from_carol(stores, bob_ids[0], _signed_body(bob_ids[0].certificate, signed))
    assert last.verified
    assert last.outcome.capabilities == CBC_ONLY
    assert bob.algorithms_for(CAROL, [carol.certificate]) == cms.EnvelopeAlgorithms(
        "aes256-cbc", "rsa-pkcs1v15"
    )
    envelope = _next_envelope(bob)
    assert envelope[4 : 4 + len(ENVELOPED)] == ENVELOPED and AES256_CBC in envelope
    assert cms.decrypt_enveloped(envelope, carol.key, carol.certificate)  # Carol opens it
    # the home keeps it: the next process of the same device still sends CBC to Carol
    later = SecureUA(UserAgent(BOB, timers=TIMERS), stores, identity=bob_ids[0])
    assert _next_envelope(later)[4 : 4 + len(ENVELOPED)] == ENVELOPED
    assert stores.home.capabilities_path.exists()


def test_a_gcm_callee_stays_gcm_and_the_switch_overrides(
    stores: Stores, bob_ids: tuple[Identity, Identity], carol: Identity
) -> None:
    signed = smime.sign(MimePart("text/plain", b"S/MIME 4.0"), carol.key, carol.certificate)
    bob, last = _hear_from_carol(stores, bob_ids[0], _signed_body(bob_ids[0].certificate, signed))
    assert "aes128_gcm" in last.outcome.capabilities
    assert bob.algorithms_for(CAROL, [carol.certificate]) == cms.DEFAULT_ALGORITHMS
    assert _next_envelope(bob)[4 : 4 + len(AUTH_ENVELOPED)] == AUTH_ENVELOPED
    legacy = SecureUA(UserAgent(BOB, timers=TIMERS), stores, identity=bob_ids[0], legacy_cbc=True)
    assert legacy.algorithms_for(CAROL, [carol.certificate]) == cms.LEGACY_ALGORITHMS
    assert _next_envelope(legacy)[4 : 4 + len(ENVELOPED)] == ENVELOPED


def test_an_unconfirmed_signer_cannot_downgrade_what_we_send(
    stores: Stores, bob_ids: tuple[Identity, Identity], carol: Identity
) -> None:
    rogue = generate_identity(CAROL, now=NOW)  # never enrolled at Carol's Store
    signed = smime.sign(MimePart("text/plain", b"send me CBC"), rogue.key, rogue.certificate,
                        capabilities=CBC_ONLY)  # fmt: skip
    bob, last = _hear_from_carol(stores, bob_ids[0], _signed_body(bob_ids[0].certificate, signed))
    assert last.outcome.reason is Reason.SIGNER_NOT_ENROLLED
    assert bob.capabilities.announced(CAROL, sha256_fingerprint(rogue.certificate)) is None
    assert bob.algorithms_for(CAROL, [carol.certificate, rogue.certificate]) == (
        cms.DEFAULT_ALGORITHMS
    )


@pytest.mark.peer("openssl")
def test_openssls_default_announcement_makes_our_next_body_cbc_and_openssl_opens_it(
    stores: Stores, bob_ids: tuple[Identity, Identity], carol: Identity, tmp_path: Path
) -> None:
    """openssl cms -sign announces AES-256/192/128-CBC, 3DES, RC2, DES: no GCM (checked)."""
    key_pem, cert_pem = tmp_path / "carol.key", tmp_path / "carol.pem"
    key_pem.write_bytes(carol.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    cert_pem.write_bytes(carol.certificate.public_bytes(Encoding.PEM))
    inner = MimePart("text/plain", b"signed by openssl")
    (tmp_path / "inner").write_bytes(inner.to_bytes())
    subprocess.run(
        ["openssl", "cms", "-sign", "-binary", "-in", tmp_path / "inner", "-signer", cert_pem,
         "-inkey", key_pem, "-outform", "DER", "-out", tmp_path / "sig.der"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    signature = MimePart(
        "application/pkcs7-signature; name=smime.p7s",
        (tmp_path / "sig.der").read_bytes(),
        headers=(("Content-Transfer-Encoding", "binary"),),
    )
    signed = build_multipart(
        "signed", [inner, signature],
        params={"protocol": "application/pkcs7-signature", "micalg": "sha-256"},
    )  # fmt: skip
    bob, last = _hear_from_carol(stores, bob_ids[0], _signed_body(bob_ids[0].certificate, signed))
    assert last.verified, last.outcome
    assert last.outcome.capabilities[:3] == ("aes256_cbc", "aes192_cbc", "aes128_cbc")
    envelope = _next_envelope(bob)
    assert envelope[4 : 4 + len(ENVELOPED)] == ENVELOPED and AES256_CBC in envelope
    (tmp_path / "env.der").write_bytes(envelope)
    opened = subprocess.run(
        ["openssl", "cms", "-decrypt", "-binary", "-inform", "DER", "-in", tmp_path / "env.der",
         "-recip", cert_pem, "-inkey", key_pem],
        check=True, capture_output=True, timeout=60,
    ).stdout  # fmt: skip
    assert b"next one" in opened
