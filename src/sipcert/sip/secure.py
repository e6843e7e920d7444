"""S/MIME-protected MESSAGE and INVITE over SIP: draft-jennings-sipping-certs-02 §1, steps 1-5.

:class:`SecureUA` joins three things a device has: a :class:`~sipcert.sip.ua.UserAgent` (the
SIP side, steps 2-4), a certificate client (:class:`~sipcert.client.AsyncUA`: location,
retrieval and the draft §5 cache) and this device's identity (key and enrolled certificate
from the :class:`~sipcert.client.Home`).

Sending (step 1-4): fetch ALL of the callee's certificates (draft §4.4), sign with our key,
encrypt for every one of them, add a content-indirection reference to our own certificate at
our own Store (draft §4.2, RFC 4483) and send. A 493 from the far end (its certificates
changed since we fetched: draft §8's open issue) makes us fetch afresh and resend once when
what we used came from the cache.

Receiving (step 5): :func:`sipcert.proto.sipsec.open_protected` decrypts and verifies, then
the signer certificate is checked against the sender's own Store through
:meth:`AsyncUA.certificate_in_signaling <sipcert.client.AsyncUA.certificate_in_signaling>`,
so a certificate that arrived in signaling and is not cached forces a refresh (draft §5).
Every received body gets an :class:`~sipcert.proto.sipsec.Outcome`; the SIP answer follows
:func:`~sipcert.proto.sipsec.response_status` and nothing is raised to the SIP layer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

from cryptography import x509

from sipcert.client.cache import CapabilityMemory, SignaledCheck
from sipcert.client.fetch import FetchResult
from sipcert.client.home import DEFAULT_DEVICE, Home
from sipcert.client.locate import Location
from sipcert.client.ua import (
    DEFAULT_RENEW_WINDOW,
    DEFAULT_VALIDITY,
    AsyncUA,
    Credentials,
    Enrollment,
    Renewal,
    Status,
)
from sipcert.errors import NotFoundError, SipCertError
from sipcert.proto.aor import AOR, parse_aor
from sipcert.proto.certs import Identity, sha256_fingerprint
from sipcert.proto.cms import EnvelopeAlgorithms, choose_algorithms, choose_for_devices
from sipcert.proto.mime import MimePart
from sipcert.proto.sip import Message, Response
from sipcert.proto.sipsec import Outcome, open_protected, protect, response_status
from sipcert.sip.ua import Call, IncomingRequest, UserAgent

__all__ = [
    "AnswerFactory",
    "CertificateClient",
    "NoCertificatesError",
    "Received",
    "ReceivedHandler",
    "SecureCall",
    "SecureUA",
    "Sent",
    "StartupCheck",
    "default_answer",
    "ensure_enrolled",
]

log = logging.getLogger(__name__)


class NoCertificatesError(NotFoundError):
    """The callee's Store has no usable certificate: nothing can be sent protected to it."""


class CertificateClient(Protocol):
    """What :class:`SecureUA` needs of :class:`~sipcert.client.AsyncUA` (tests may stand in)."""

    @property
    def home(self) -> Home: ...

    async def fetch(self, aor: AOR | str, *, use_cache: bool = True) -> FetchResult: ...

    async def certificate_in_signaling(
        self, aor: AOR | str, certificate: x509.Certificate
    ) -> SignaledCheck: ...

    async def locate(self, aor: AOR | str) -> Location: ...


@dataclass(frozen=True)
class Sent:
    """A protected request we sent: to whom, for which certificates, and the final answer."""

    to: AOR
    response: Response | None
    recipients: tuple[x509.Certificate, ...]
    fetch: FetchResult
    reference_url: str | None
    #: A 493 made us fetch the callee's certificates afresh and send again (draft §8).
    retried: bool = False

    @property
    def status(self) -> int:
        return 0 if self.response is None else self.response.status

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def undecipherable(self) -> bool:
        """The far end answered 493: none of its devices could decrypt (RFC 3261 §21.4.27)."""
        return self.status == 493

    def __str__(self) -> str:
        reason = "" if self.response is None else f" {self.response.reason}"
        return (
            f"{self.status}{reason} from {self.to} (encrypted for "
            f"{len(self.recipients)} certificate(s))"
        )


@dataclass(frozen=True)
class Received:
    """One protected body received and what we made of it.

    ``kind`` is ``message`` (a MESSAGE), ``invite`` (an INVITE's offer; ``status`` is what
    we answered) or ``answer`` (the 200 answering our INVITE; ``status`` is its status).
    ``check`` is the draft §5 Store check of the signer, when it was made.
    """

    kind: Literal["message", "invite", "answer"]
    message: Message
    outcome: Outcome
    status: int
    check: SignaledCheck | None = None
    device: str = DEFAULT_DEVICE

    @property
    def sender(self) -> AOR:
        return self.outcome.sender

    @property
    def verified(self) -> bool:
        return self.outcome.verified

    @property
    def text(self) -> str | None:
        return self.outcome.text


@dataclass(eq=False)
class SecureCall:
    """An INVITE we placed: the SIP call, what we sent, and the outcome of the answer SDP."""

    call: Call
    sent: Sent
    answer: Received | None = None

    @property
    def established(self) -> bool:
        return self.call.established

    async def bye(self) -> Response:
        return await self.call.bye()


@dataclass(frozen=True)
class StartupCheck:
    """What :func:`ensure_enrolled` found and did (draft §5, §5.1)."""

    aor: AOR
    device: str
    action: Literal["ok", "enrolled", "renewed"]
    status: Status
    certificate: x509.Certificate
    enrollment: Enrollment | None = None
    renewal: Renewal | None = None


AnswerFactory = Callable[[Received], MimePart]
"""Our SDP answer to a verified offer (it is protected before it is sent)."""
ReceivedHandler = Callable[[Received], Awaitable[None]]
"""Called for every :class:`Received` (the ``sipcert ua`` printer, the demo's narrator)."""


def default_answer(ua: UserAgent) -> AnswerFactory:
    """An SDP answer naming our SIP address; no media flows (port 9, discard)."""

    def answer(received: Received) -> MimePart:
        host = ua.local_address[0]
        version = abs(hash(received.message.call_id)) % 10**9
        sdp = (
            f"v=0\r\no={ua.aor.user} {version} {version} IN IP4 {host}\r\ns=sipcert\r\n"
            f"c=IN IP4 {host}\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n"
        )
        return MimePart("application/sdp", sdp.encode("ascii"))

    return answer


def _now() -> datetime:
    return datetime.now(UTC)


def _sdp_part(sdp: str | bytes | MimePart) -> MimePart:
    """An offer given as text or bytes, as the ``application/sdp`` part it is sent as."""
    if isinstance(sdp, MimePart):
        return sdp
    if isinstance(sdp, str):
        lines = sdp.replace("\r\n", "\n").split("\n")
        sdp = "\r\n".join(lines).encode("utf-8")
    return MimePart("application/sdp", sdp)


def _aor(value: AOR | str) -> AOR:
    return value if isinstance(value, AOR) else parse_aor(value)


class SecureUA:
    """A device that signs and encrypts what it sends and verifies what it receives.

    ``ua`` is handed over: its ``on_message`` and ``on_invite`` become ours, and
    :meth:`aclose` closes it. ``client`` is only borrowed (several devices of one home may
    share it). ``identity`` defaults to this device's in the client's home (``device``,
    ``passphrase``); an explicit one is used as is (e.g. a key never enrolled, for tests).
    Every :class:`Received` goes to ``on_received`` and to the :attr:`received` queue.
    ``accept_unverified`` answers calls whose signer is not confirmed (see
    :func:`~sipcert.proto.sipsec.response_status`). Bodies are AES-128-GCM with RSA-OAEP
    and ECDH recipients, unless the callee's devices announced otherwise: what a confirmed
    signer announced in SMIMECapabilities (RFC 8551 §2.5.2) is kept in ``capabilities``
    (by default in the client's home) and chooses the algorithms of our next body to that
    AOR (:func:`sipcert.proto.cms.choose_for_devices`, docs/sip.md); ``legacy_cbc`` always
    uses AES-128-CBC with RSA PKCS#1 v1.5, for callees that are RFC 3261 S/MIME peers.
    ``encrypt_to_self`` adds our own certificate as a recipient, so we can read what we
    sent (off by default: a stolen copy of our key then also opens our sent messages).
    """

    def __init__(
        self,
        ua: UserAgent,
        client: CertificateClient,
        *,
        device: str = DEFAULT_DEVICE,
        identity: Identity | None = None,
        passphrase: bytes | None = None,
        answer: AnswerFactory | None = None,
        on_received: ReceivedHandler | None = None,
        accept_unverified: bool = False,
        reference: bool = True,
        legacy_cbc: bool = False,
        encrypt_to_self: bool = False,
        capabilities: CapabilityMemory | None = None,
        now: Callable[[], datetime] = _now,
    ) -> None:
        self.ua = ua
        #: The configured choice; a callee's announcement may change it per message.
        self.algorithms = choose_algorithms(legacy=legacy_cbc)
        self.legacy_cbc = legacy_cbc
        self._capabilities = capabilities
        self.encrypt_to_self = encrypt_to_self
        self.client = client
        self.aor = ua.aor
        self.device = device
        self.accept_unverified = accept_unverified
        self.on_received = on_received
        #: Every body received (MESSAGE, INVITE offer, our INVITE's answer), in order.
        self.received: asyncio.Queue[Received] = asyncio.Queue()
        self._fixed_identity = identity
        self._identity = identity
        self._passphrase = passphrase
        self._answer = answer or default_answer(ua)
        self._reference = reference
        self._reference_url: str | None = None
        self._now = now
        ua.on_message = self._on_message
        ua.on_invite = self._on_invite

    # -- life cycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> SecureUA:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Start the SIP side (listeners)."""
        await self.ua.start()

    async def aclose(self) -> None:
        """Close the SIP side; the certificate client stays open (it is borrowed)."""
        await self.ua.aclose()

    async def register(self, expires: int = 300) -> Response:
        return await self.ua.register(expires)

    async def unregister(self) -> Response:
        return await self.ua.unregister()

    @property
    def identity(self) -> Identity:
        """This device's key and certificate (loaded from the home on first use)."""
        if self._identity is None:
            self._identity = self.client.home.identity(
                self.aor, self.device, passphrase=self._passphrase
            )
        return self._identity

    def reload_identity(self) -> Identity:
        """Read the identity from the home again (after an enrollment or a renewal)."""
        self._identity = self._fixed_identity
        return self.identity

    async def reference_url(self) -> str | None:
        """Where others find our certificate: our Store's URL for our AOR (draft §4.1, §4.2).

        None when references are off or our own Store cannot be located (the receiver
        locates it by DNS anyway, so the request still goes out).
        """
        if not self._reference:
            return None
        if self._reference_url is None:
            try:
                self._reference_url = (await self.client.locate(self.aor)).url
            except SipCertError as exc:
                log.info("no content-indirection reference: %s", exc)
                return None
        return self._reference_url

    # -- sending ------------------------------------------------------------------------------

    async def recipients(self, to: AOR | str, *, use_cache: bool = True) -> FetchResult:
        """Every usable certificate of ``to`` (draft §4.4); none raises NoCertificatesError."""
        target = _aor(to)
        fetched = await self.client.fetch(target, use_cache=use_cache)
        if not fetched.kept:
            why = "; ".join(f"{d.sha256[:16]}: {d.reason}" for d in fetched.discarded)
            raise NoCertificatesError(
                f"{target} has no usable certificate at {fetched.url} "
                f"({why or 'the Store holds none'}): cannot send it a protected body"
            )
        return fetched

    async def protect(
        self, to: AOR | str, content: MimePart, *, use_cache: bool = True
    ) -> tuple[MimePart, FetchResult, str | None]:
        """The protected body for ``to`` (draft §4.4, §4.2), the fetch and our reference URL."""
        fetched = await self.recipients(to, use_cache=use_cache)
        url = await self.reference_url()
        return self._seal(content, fetched.kept, url, fetched.aor), fetched, url

    @property
    def capabilities(self) -> CapabilityMemory:
        """What callees' devices announced (RFC 8551 §2.5.2), kept in the client's home."""
        if self._capabilities is None:
            self._capabilities = CapabilityMemory(self.client.home.capabilities_path)
        return self._capabilities

    def algorithms_for(self, to: AOR, recipients: Sequence[x509.Certificate]) -> EnvelopeAlgorithms:
        """How to encrypt to these devices of ``to``: the configuration switch first, then
        what each device announced (RFC 8551 §2.7.1), the S/MIME 4.0 defaults otherwise."""
        if self.legacy_cbc:
            return self.algorithms
        announced = [self.capabilities.announced(to, sha256_fingerprint(c)) for c in recipients]
        return choose_for_devices(announced)

    def _remember(self, outcome: Outcome) -> None:
        """Keep a confirmed signer's SMIMECapabilities for our next body to its AOR."""
        if not outcome.verified or outcome.signer is None or not outcome.capabilities:
            return
        try:
            self.capabilities.remember(
                outcome.sender, sha256_fingerprint(outcome.signer), outcome.capabilities
            )
        except SipCertError as exc:  # a lost hint must not change the SIP answer
            log.warning("cannot remember the capabilities of %s: %s", outcome.sender, exc)

    def _seal(
        self,
        content: MimePart,
        recipients: Sequence[x509.Certificate],
        url: str | None,
        to: AOR,
    ) -> MimePart:
        """``content`` signed with our key and encrypted for ``recipients`` (draft §4.4)."""
        identity = self.identity
        return protect(
            content,
            identity.key,
            identity.certificate,
            recipients,
            certificate_url=url,
            domain=self.aor.host,
            algorithms=self.algorithms_for(to, recipients),
            also_to=(identity.certificate,) if self.encrypt_to_self else (),
            now=self._now(),
        )

    async def send_message(
        self,
        to: AOR | str,
        text: str | MimePart,
        *,
        headers: Sequence[tuple[str, str]] = (),
    ) -> Sent:
        """Send one signed and encrypted MESSAGE (RFC 3428) and return its final answer."""
        target = _aor(to)
        content = (
            MimePart("text/plain; charset=utf-8", text.encode("utf-8"))
            if isinstance(text, str)
            else text
        )
        retried = False
        body, fetched, url = await self.protect(target, content)
        response = await self.ua.send_message(str(target), body, headers=headers)
        if response.status == 493 and fetched.from_cache:
            retried = True
            body, fetched, url = await self.protect(target, content, use_cache=False)
            response = await self.ua.send_message(str(target), body, headers=headers)
        return Sent(target, response, fetched.kept, fetched, url, retried)

    async def invite(
        self,
        to: AOR | str,
        sdp: str | bytes | MimePart,
        *,
        headers: Sequence[tuple[str, str]] = (),
    ) -> SecureCall:
        """Place a call with the SDP protected; check the protected answer (draft §5 step 5).

        ``sdp`` is the offer: a :class:`MimePart`, or the SDP itself as bytes or text (sent as
        ``application/sdp``; text is UTF-8 with its line ends made CRLF, RFC 8866 §5).
        ``SecureCall.answer`` is the outcome of the 200's body (verified as the callee's
        AOR, or why not); it is also put on :attr:`received`.
        """
        target = _aor(to)
        sdp = _sdp_part(sdp)
        body, fetched, url = await self.protect(target, sdp)
        call = await self.ua.invite(str(target), body, headers=headers)
        retried = False
        if call.response is not None and call.response.status == 493 and fetched.from_cache:
            retried = True
            body, fetched, url = await self.protect(target, sdp, use_cache=False)
            call = await self.ua.invite(str(target), body, headers=headers)
        sent = Sent(target, call.response, fetched.kept, fetched, url, retried)
        secure = SecureCall(call, sent)
        if call.established and call.response is not None:
            outcome, check = await self._open(call.remote_body, target)
            secure.answer = Received("answer", call.response, outcome, call.response.status, check)
            await self._deliver(secure.answer)
        return secure

    # -- receiving ----------------------------------------------------------------------------

    async def _open(
        self, body: MimePart | None, sender: AOR
    ) -> tuple[Outcome, SignaledCheck | None]:
        """Draft step 5 for one body: decrypt and verify, then the Store check of the signer."""
        identity = self.identity
        outcome = open_protected(body, identity.key, identity.certificate, sender, self._now())
        if not outcome.needs_store_check or outcome.signer is None:
            return outcome, None
        try:
            check = await self.client.certificate_in_signaling(sender, outcome.signer)
        except SipCertError as exc:
            return outcome.after_store_check(None, f"the Store check failed: {exc}"), None
        if check.in_store:
            how = "cached" if check.cached else "fetched"
            detail = f"signer {check.sha256[:16]} is enrolled at the Store of {sender.host} ({how})"
        else:
            url = check.result.url if check.result is not None else sender.host
            detail = f"signer {check.sha256[:16]} is not among the certificates at {url}"
        checked = outcome.after_store_check(check.in_store, detail)
        self._remember(checked)
        return checked, check

    async def _deliver(self, received: Received) -> None:
        self.received.put_nowait(received)
        if self.on_received is not None:
            try:
                await self.on_received(received)
            except Exception:  # a failing observer must not change the SIP answer
                log.exception("on_received failed")

    async def _on_message(self, incoming: IncomingRequest) -> int:
        request = incoming.request
        outcome, check = await self._open(incoming.body, request.from_.aor)
        status = response_status(outcome, "MESSAGE", accept_unverified=self.accept_unverified)
        await self._deliver(Received("message", request, outcome, status, check, self.device))
        return status

    async def _on_invite(self, incoming: IncomingRequest) -> MimePart | int:
        request = incoming.request
        caller = request.from_.aor
        outcome, check = await self._open(incoming.body, caller)
        status = response_status(outcome, "INVITE", accept_unverified=self.accept_unverified)
        answer: MimePart | None = None
        if status == 200:
            received = Received("invite", request, outcome, status, check, self.device)
            try:
                answer = await self._protected_answer(received, caller, check)
            except SipCertError as exc:
                log.info("cannot protect the answer to %s: %s", caller, exc)
                status = 480
        await self._deliver(Received("invite", request, outcome, status, check, self.device))
        return answer if answer is not None else status

    async def _protected_answer(
        self, received: Received, caller: AOR, check: SignaledCheck | None
    ) -> MimePart:
        """Our SDP, signed and encrypted for the caller's certificates at its Store (RFC 3261
        §23.2: "respond with a body secured in a similar way"). Never for the signer
        certificate itself: an unconfirmed signer must not be able to read the answer."""
        fetched = (
            check.result
            if check is not None and check.result is not None
            else await self.recipients(caller)
        )
        if not fetched.kept:
            raise NoCertificatesError(f"{caller} has no usable certificate at {fetched.url}")
        return self._seal(self._answer(received), fetched.kept, await self.reference_url(), caller)


# -- start-up (draft §5, §5.1) ---------------------------------------------------------------


async def ensure_enrolled(
    client: AsyncUA,
    aor: AOR | str,
    credentials: Credentials,
    *,
    device: str = DEFAULT_DEVICE,
    window: timedelta = DEFAULT_RENEW_WINDOW,
    validity: timedelta = DEFAULT_VALIDITY,
    passphrase: bytes | None = None,
) -> StartupCheck:
    """The start-up check of draft §5.1: fetch our own AOR, enroll when our certificate is
    missing or not at the Store ("generate a new certificate"), renew when it expires within
    ``window`` ("arrange to generate a new certificate before the old one expires")."""
    target = _aor(aor)
    status = await client.status(target, device=device, window=window)
    if not status.ok or status.certificate is None:
        enrollment = await client.enroll(
            target, credentials, device=device, validity=validity, passphrase=passphrase
        )
        return StartupCheck(
            target, device, "enrolled", status, enrollment.certificate, enrollment=enrollment
        )
    if status.expires_in is not None and status.expires_in <= window:
        renewal = await client.renew(
            target,
            credentials,
            device=device,
            window=window,
            validity=validity,
            passphrase=passphrase,
        )
        if renewal.new is not None:
            return StartupCheck(
                target, device, "renewed", status, renewal.new.certificate, renewal=renewal
            )
    return StartupCheck(target, device, "ok", status, status.certificate)
