"""SecureUA over loopback SIP with in-process Stores: draft §1 steps 1-5, §4.4, §5 cache rule.

The Stores are a stand-in for :class:`~sipcert.client.AsyncUA` that serves certificates from a
dict and keeps the real :class:`~sipcert.client.CertificateCache`, so the draft §5 rule
("a certificate received in the SIP signaling that is not cached ... MUST update the cache")
runs exactly as in the client. The SIP side is two real :class:`UserAgent` on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509

from sipcert.client.cache import CertificateCache, SignaledCheck
from sipcert.client.fetch import FetchResult
from sipcert.client.home import Home
from sipcert.client.locate import Location, Target
from sipcert.errors import LocationError, TransportError
from sipcert.proto import cms
from sipcert.proto.aor import AOR, parse_aor
from sipcert.proto.certs import Identity, generate_identity
from sipcert.proto.indirection import parse_external_body
from sipcert.proto.mime import MimePart, parse_multipart
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
