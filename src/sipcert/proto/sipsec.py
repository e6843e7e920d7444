"""The protected SIP body of draft-jennings-sipping-certs-02 §1 steps 2-5, sans-IO.

Building (the Caller, draft §4.4, RFC 3261 §23.3)::

    multipart/mixed
    ├── application/pkcs7-mime; smime-type=enveloped-data    CEK wrapped for EVERY kept
    │   └── (encrypted) multipart/signed                     certificate of the callee
    │       ├── the content (text/plain, application/sdp)    exactly the signed bytes
    │       └── application/pkcs7-signature                  detached SignedData, our cert
    └── message/external-body; access-type="URL"             RFC 4483: where our certificate
                                                             is, at our own Store (draft §4.2)

Taking apart (the callee, draft step 5) is :func:`open_protected`: find our RecipientInfo by
issuer and serial number (draft §4.5), decrypt, verify the signature, and require the signer
certificate's SAN URIs to name the sender's AOR and the certificate to be valid now
(:func:`~sipcert.proto.certs.validate_retrieved`). Whether the signer certificate is enrolled
at the sender's Store needs I/O; the result says so (:attr:`Reason.UNCHECKED`) and
:meth:`Outcome.after_store_check` finishes it. Nothing here raises for a bad body: every
problem is an :class:`Outcome` with a :class:`Reason`, and :func:`response_status` says what
a UA answers (RFC 3261 §21.4.27, §23.2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sipcert.errors import (
    CMSError,
    CryptoError,
    DecryptionError,
    InputError,
    NotRecipientError,
    SignatureError,
)
from sipcert.proto import cms, smime
from sipcert.proto.aor import AOR
from sipcert.proto.certs import (
    DiscardReason,
    delegated_by,
    sha256_fingerprint,
    validate_retrieved,
)
from sipcert.proto.indirection import (
    EXTERNAL_BODY,
    ExternalBody,
    certificate_reference,
    parse_external_body,
)
from sipcert.proto.mime import MimePart, build_multipart, parse_multipart

__all__ = [
    "ENVELOPED_TYPES",
    "Outcome",
    "Reason",
    "open_protected",
    "protect",
    "response_status",
    "split_body",
]

ENVELOPED_TYPES = frozenset({"application/pkcs7-mime", "application/x-pkcs7-mime"})
_SENDER_MISMATCH = frozenset(
    {DiscardReason.NO_SAN_URI, DiscardReason.SAN_MALFORMED, DiscardReason.SAN_MISMATCH}
)


class Reason(StrEnum):
    """Why a received body is, or is not, verified as coming from the sender's AOR."""

    VERIFIED = "verified"
    #: Signature and SAN fine; enrollment at the sender's Store not yet checked (sans-IO).
    UNCHECKED = "enrollment-unchecked"
    NOT_PROTECTED = "not-protected"
    NOT_A_RECIPIENT = "not-a-recipient"
    UNDECIPHERABLE = "undecipherable"
    BAD_SIGNATURE = "bad-signature"
    SIGNER_NOT_SENDER = "signer-not-sender"
    SIGNER_INVALID = "signer-invalid"
    SIGNER_NOT_ENROLLED = "signer-not-enrolled"
    STORE_UNREACHABLE = "store-unreachable"


@dataclass(frozen=True)
class Outcome:
    """What a UA learnt from a received body, for its user (RFC 3261 §23.2 "notify").

    ``sender`` is the AOR the message claims (From of a request, To of a response);
    ``content`` is the decrypted inner content when decryption worked (the plaintext body
    when the message was not protected); ``signer`` the certificate that signed it;
    ``reference`` the sender's content-indirection body (draft §4.2), when present;
    ``capabilities`` the SMIMECapabilities ``signer`` announced (RFC 8551 §2.5.2), which a
    UA remembers for its next message to ``sender`` once the signer is confirmed.
    """

    reason: Reason
    sender: AOR
    detail: str = ""
    content: MimePart | None = None
    signer: x509.Certificate | None = None
    reference: ExternalBody | None = None
    capabilities: tuple[str, ...] = ()

    @property
    def verified(self) -> bool:
        return self.reason is Reason.VERIFIED

    @property
    def needs_store_check(self) -> bool:
        """True until the signer's enrollment at the sender's Store is confirmed (step 5)."""
        return self.reason is Reason.UNCHECKED

    @property
    def signer_sha256(self) -> str | None:
        return None if self.signer is None else sha256_fingerprint(self.signer)

    @property
    def delegated_by(self) -> str | None:
        """The authentication service that signed for the sender (draft §6), or None when
        the signer certificate is a device's own (docs/delegated.md §5)."""
        return None if self.signer is None else delegated_by(self.signer)

    @property
    def text(self) -> str | None:
        """The content as text when it is ``text/*`` (a MESSAGE), else None."""
        if self.content is None or not self.content.media_type.startswith("text/"):
            return None
        charset = self.content.params.get("charset", "utf-8")
        try:
            return self.content.body.decode(charset, "replace")
        except LookupError:
            return self.content.body.decode("utf-8", "replace")

    def after_store_check(self, in_store: bool | None, detail: str = "") -> Outcome:
        """Finish draft step 5: ``in_store`` True/False, or None when the Store failed."""
        if not self.needs_store_check:
            return self
        if in_store is None:
            return replace(self, reason=Reason.STORE_UNREACHABLE, detail=detail)
        if not in_store:
            return replace(
                self,
                reason=Reason.SIGNER_NOT_ENROLLED,
                detail=detail
                or f"the Store of {self.sender.host} does not hold the signer certificate",
            )
        return replace(self, reason=Reason.VERIFIED, detail=detail)

    def __str__(self) -> str:
        if self.verified:
            service = self.delegated_by
            if service is not None:
                return f"verified as {self.sender} (signed for them by {service})"
            return f"verified as {self.sender}"
        suffix = f" ({self.detail})" if self.detail else ""
        return f"not verified: {self.reason}{suffix}"


def protect(
    content: MimePart,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    certificate: x509.Certificate,
    recipients: Sequence[x509.Certificate],
    *,
    certificate_url: str | None = None,
    domain: str = "sipcert.invalid",
    algorithms: cms.EnvelopeAlgorithms = cms.DEFAULT_ALGORITHMS,
    also_to: Sequence[x509.Certificate] = (),
    now: datetime | None = None,
) -> MimePart:
    """The SIP body for ``content``: signed, then encrypted for every recipient (draft §4.4).

    Every recipient certificate gets a RecipientInfo whatever its key type (RSA key
    transport, EC key agreement), so one EC device never locks the others of an AOR out.
    ``algorithms`` is AES-128-GCM with RSA-OAEP unless the caller chose the fallback
    (:func:`sipcert.proto.cms.choose_algorithms`). ``also_to`` adds more recipients, e.g.
    the sender's own certificates so it can read what it sent (off unless given). ``now``
    becomes the signature's signingTime (RFC 8551 §2.5.1).
    With ``certificate_url`` (our certificate at our Store) the body is ``multipart/mixed``
    of the enveloped-data and an RFC 4483 reference (draft §4.2); without it, the
    enveloped-data alone. ``domain`` names the Content-ID of the reference.
    """
    if not recipients:
        raise CryptoError("no recipient certificates: cannot send a protected body")
    enveloped = smime.sign_and_encrypt(
        content,
        key,
        certificate,
        [*recipients, *also_to],
        algorithms=algorithms,
        signing_time=now,
    )
    if certificate_url is None:
        return enveloped
    reference = certificate_reference(certificate_url, domain=domain)
    return build_multipart("mixed", [enveloped, reference])


def split_body(body: MimePart | None) -> tuple[MimePart | None, MimePart | None, str]:
    """(enveloped-data part, external-body part, problem) of a received SIP body.

    Accepts a bare ``application/pkcs7-mime`` or a ``multipart/mixed`` holding one (and at
    most one content-indirection part). ``problem`` explains a body that holds none.
    """
    if body is None:
        return None, None, "the request has no body"
    if body.media_type in ENVELOPED_TYPES:
        return body, None, ""
    if body.media_type != "multipart/mixed":
        return None, None, f"the body is {body.media_type}, not S/MIME"
    try:
        parts = parse_multipart(body.content_type, body.body).parts
    except InputError as exc:
        return None, None, f"malformed multipart/mixed: {exc}"
    enveloped = [p for p in parts if p.media_type in ENVELOPED_TYPES]
    references = [p for p in parts if p.media_type == EXTERNAL_BODY]
    if len(enveloped) != 1:
        return None, None, f"multipart/mixed holds {len(enveloped)} pkcs7-mime parts, not 1"
    return enveloped[0], references[0] if len(references) == 1 else None, ""


def _reference(part: MimePart | None) -> ExternalBody | None:
    if part is None:
        return None
    try:
        return parse_external_body(part)
    except InputError:
        return None  # a bad reference is ignored: location is by DNS (draft §4.1) anyway


def open_protected(
    body: MimePart | None,
    key: cms.DecryptionKey,
    certificate: x509.Certificate,
    sender: AOR,
    now: datetime,
) -> Outcome:
    """Take a received body apart (draft step 5) up to, not including, the Store check.

    The order is the draft's: our RecipientInfo by issuer and serial (draft §4.5), decrypt,
    verify the signature, then the signer certificate must name ``sender`` in every SAN
    URI and be valid at ``now`` (draft §4.5 rules, applied to the certificate received in
    signaling). Success is :attr:`Reason.UNCHECKED`; the caller then asks the Store.
    """
    enveloped, reference_part, problem = split_body(body)
    reference = _reference(reference_part)
    if enveloped is None:
        return Outcome(Reason.NOT_PROTECTED, sender, problem, content=body)
    try:
        # one read of the envelope: it finds our RecipientInfo, or says there is none
        entity = smime.decrypt_entity(enveloped, key, certificate)
    except NotRecipientError:
        return Outcome(
            Reason.NOT_A_RECIPIENT,
            sender,
            f"no RecipientInfo names our certificate (serial {certificate.serial_number:x})",
            reference=reference,
        )
    except (DecryptionError, InputError) as exc:
        return Outcome(Reason.UNDECIPHERABLE, sender, str(exc), reference=reference)
    inner = entity[0]
    if not smime.is_signed(inner):
        return Outcome(
            Reason.BAD_SIGNATURE,
            sender,
            f"the decrypted entity is {inner.media_type}, not multipart/signed",
            content=inner,
            reference=reference,
        )
    try:
        verified = smime.verify_decrypted(entity)
    except (SignatureError, CMSError, InputError) as exc:
        return Outcome(Reason.BAD_SIGNATURE, sender, str(exc), reference=reference)
    # With several signers, one that names the sender and is valid now is the one that
    # counts (draft §4.5); the others are only reported.
    checked = validate_retrieved(list(verified.verified_signers), sender, now)
    signer = checked.kept[0] if checked.kept else verified.signer
    announced = next((r.capabilities for r in verified.signers if r.certificate == signer), ())
    if not checked.kept:
        discarded = checked.discarded[0]
        reason = (
            Reason.SIGNER_NOT_SENDER
            if discarded.reason in _SENDER_MISMATCH
            else Reason.SIGNER_INVALID
        )
        return Outcome(
            reason,
            sender,
            f"{discarded.reason}: {discarded.detail}",
            content=verified.content,
            signer=signer,
            reference=reference,
        )
    return Outcome(
        Reason.UNCHECKED,
        sender,
        "",
        content=verified.content,
        signer=signer,
        reference=reference,
        capabilities=announced,
    )


#: Answers of a UAS per outcome (RFC 3261 §21.4.27, §23.2); see docs/sip.md.
_MESSAGE_STATUS = {
    Reason.VERIFIED: 200,
    Reason.NOT_PROTECTED: 200,
    Reason.NOT_A_RECIPIENT: 493,
    Reason.UNDECIPHERABLE: 493,
    Reason.BAD_SIGNATURE: 400,
    Reason.SIGNER_NOT_SENDER: 200,
    Reason.SIGNER_INVALID: 200,
    Reason.SIGNER_NOT_ENROLLED: 200,
    Reason.STORE_UNREACHABLE: 200,
}
_INVITE_STATUS = {
    Reason.NOT_PROTECTED: 488,
    Reason.NOT_A_RECIPIENT: 493,
    Reason.UNDECIPHERABLE: 493,
    Reason.BAD_SIGNATURE: 400,
    Reason.STORE_UNREACHABLE: 480,
}


def response_status(outcome: Outcome, method: str, *, accept_unverified: bool = False) -> int:
    """The final status a UAS answers ``method`` with, given the body's outcome.

    * 493 Undecipherable when the body is not for us or cannot be decrypted (RFC 3261
      §21.4.27, §23.2);
    * 400 when the signature is broken (the content cannot be attributed to anyone);
    * a MESSAGE whose signer is merely unconfirmed (not the sender, invalid, not enrolled,
      Store unreachable) or that is not protected is delivered (200) with the outcome shown
      to the user -- that display is RFC 3261 §23.2's "notify its user";
    * an INVITE is answered 200 only when verified (or unconfirmed with
      ``accept_unverified``: a user who said yes); otherwise 603 Decline for an unconfirmed
      signer, 488 for an unprotected offer (this UA takes only protected sessions) and 480
      when the caller's Store cannot be reached (the answer could not be encrypted).
    """
    reason = outcome.reason
    if reason is Reason.UNCHECKED:
        raise ValueError("finish the Store check (after_store_check) before answering")
    if method == "INVITE":
        if reason is Reason.VERIFIED:
            return 200
        if reason in _INVITE_STATUS:
            return _INVITE_STATUS[reason]
        return 200 if accept_unverified else 603
    return _MESSAGE_STATUS[reason]
