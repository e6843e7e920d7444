"""S/MIME bodies for SIP (RFC 3261 §23.3, RFC 8551 §3), sans-IO.

* signing makes ``multipart/signed`` (RFC 1847, RFC 8551 §3.5.3): the first part is the
  exact bytes of the inner entity, the second the DER detached SignedData;
* encryption makes ``application/pkcs7-mime; smime-type=authEnveloped-data`` (AES-GCM,
  RFC 8551 §3.4) or ``smime-type=enveloped-data`` (AES-CBC, RFC 8551 §3.3) with the CEK
  wrapped for every certificate of the recipient, whatever its key type
  (draft-jennings-sipping-certs-02 §4.5);
* receiving also takes attached SignedData (``smime-type=signed-data``, RFC 8551 §3.5.2)
  and several signers, each reported;
* both use ``Content-Transfer-Encoding: binary`` (SIP is 8-bit clean, RFC 3261 §23.3) and
  ``Content-Disposition: ...; handling=required`` (RFC 3261 §23.3, §20.11), so a UA that
  cannot process the body rejects the request instead of ignoring it.

SIP layers them as an enveloped-data wrapping a multipart/signed (RFC 3261 §23.3;
RFC 8551 §3.7 "signed then encrypted"): :func:`sign_and_encrypt` and
:func:`decrypt_and_verify`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sipcert.errors import MIMEError
from sipcert.proto import cms
from sipcert.proto.mime import (
    DEFAULT_LIMITS,
    MimeLimits,
    MimePart,
    Multipart,
    build_multipart,
    format_content_type,
    new_boundary,
    parse_mime_entity,
    parse_mime_part,
    parse_multipart,
)

__all__ = [
    "AUTH_ENVELOPED_CONTENT_TYPE",
    "ENVELOPED_CONTENT_TYPE",
    "SIGNATURE_CONTENT_TYPE",
    "Verified",
    "decrypt",
    "decrypt_and_verify",
    "decrypt_entity",
    "encrypt",
    "is_signed",
    "sign",
    "sign_and_encrypt",
    "verify",
    "verify_decrypted",
]

SIGNATURE_CONTENT_TYPE = "application/pkcs7-signature; name=smime.p7s"
ENVELOPED_CONTENT_TYPE = "application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m"
AUTH_ENVELOPED_CONTENT_TYPE = (
    "application/pkcs7-mime; smime-type=authEnveloped-data; name=smime.p7m"
)
#: micalg values of RFC 8551 §3.5.3 (RFC 5751 names for the SHA-2 family).
_MICALG: dict[cms.DigestName, str] = {
    "sha256": "sha-256",
    "sha384": "sha-384",
    "sha512": "sha-512",
}
#: Older agents send the x-pkcs7 spellings; accepting them costs nothing.
_SIGNATURE_TYPES = frozenset({"application/pkcs7-signature", "application/x-pkcs7-signature"})
_ENVELOPED_TYPES = frozenset({"application/pkcs7-mime", "application/x-pkcs7-mime"})
#: smime-type values of an encrypted body (RFC 8551 §3.2.2); absent means enveloped-data.
_ENCRYPTED_SMIME_TYPES = frozenset({"enveloped-data", "authenveloped-data"})


@dataclass(frozen=True)
class Verified:
    """A verified multipart/signed: the signed entity and the certificate that signed it.

    The certificate is only cryptographically bound to ``content``; the caller still checks
    it belongs to the sender's AOR and is valid now (draft §4.5).
    """

    content: MimePart
    signer: x509.Certificate
    #: Every SignerInfo's verdict (RFC 5652 §5.6); ``signer`` is the first that verified.
    signers: tuple[cms.SignerReport, ...] = ()

    @property
    def verified_signers(self) -> tuple[x509.Certificate, ...]:
        """The certificates of all signers that verified (just ``signer`` if unreported)."""
        found = tuple(r.certificate for r in self.signers if r.certificate is not None)
        return found or (self.signer,)


def sign(
    part: MimePart,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    cert: x509.Certificate,
    *,
    digest: cms.DigestName = "sha256",
    rsa_pss: bool = False,
    signing_time: datetime | None = None,
    capabilities: Sequence[str] | None = None,
) -> MimePart:
    """Wrap ``part`` in ``multipart/signed`` with a detached CMS signature (RFC 8551 §3.5.3).

    The signature covers exactly ``part.to_bytes()``, which is also the first body part,
    byte for byte; nothing is re-canonicalized (binary transfer, RFC 3261 §23.3).
    ``signing_time`` (the caller's clock) becomes the signingTime attribute;
    ``capabilities`` replaces what we announce (:func:`sipcert.proto.cms.sign_detached`).
    """
    content = part.to_bytes()
    signature = cms.sign_detached(
        content,
        key,
        cert,
        digest=digest,
        rsa_pss=rsa_pss,
        signing_time=signing_time,
        capabilities=capabilities,
    )
    signature_part = MimePart(SIGNATURE_CONTENT_TYPE, signature, _SIGNATURE_HEADERS)
    return build_multipart("signed", [part, signature_part], params=_signed_params(digest))


_SIGNATURE_HEADERS = (
    ("Content-Transfer-Encoding", "binary"),
    ("Content-Disposition", "attachment; handling=required; filename=smime.p7s"),
)
_ENCRYPTED_HEADERS = (
    ("Content-Transfer-Encoding", "binary"),
    ("Content-Disposition", "attachment; handling=required; filename=smime.p7m"),
)


def _signed_params(digest: cms.DigestName) -> dict[str, str]:
    """The multipart/signed parameters before the boundary (RFC 1847 §2.1, RFC 8551 §3.5.3)."""
    return {"protocol": "application/pkcs7-signature", "micalg": _MICALG[digest]}


@functools.cache
def _signed_template(digest: cms.DigestName) -> bytes:
    """``sign(...).to_bytes()`` as a ``bytes %`` template: the boundary (six times), the
    signed entity's bytes and the SignedData are its ``%b`` places.

    What :func:`build_multipart` writes for the two parts :func:`sign` gives it: the
    Content-Type line, the delimiters and the signature part's headers are the same in
    every message but for the boundary.
    """
    content_type = format_content_type("multipart/signed", _signed_params(digest))
    signature_head = MimePart(SIGNATURE_CONTENT_TYPE, b"", _SIGNATURE_HEADERS).to_bytes()
    return (
        f"Content-Type: {content_type}; boundary=".encode("ascii").replace(b"%", b"%%")
        + b"%b\r\n\r\n--%b\r\n%b\r\n--%b\r\n"
        + signature_head.replace(b"%", b"%%")
        + b"%b\r\n--%b--\r\n"
    )


def _signed_bytes(content: bytes, signature: bytes, digest: cms.DigestName) -> bytes:
    """``sign(...).to_bytes()`` of the entity whose bytes are ``content``, signed by
    ``signature``, written by one formatting of :func:`_signed_template`.

    The boundary is drawn as :func:`build_multipart` draws it, and drawn again while its
    delimiter occurs in either part (the signature part's headers hold no ``--``).
    """
    boundary = new_boundary().encode("ascii")
    while (dash := b"--" + boundary) in content or dash in signature:
        boundary = new_boundary().encode("ascii")  # pragma: no cover - 2**-128 chance
    return _signed_template(digest) % (boundary, boundary, content, boundary, signature, boundary)


def _verified(result: cms.SignedContent, content: MimePart) -> Verified:
    good = result.verified
    if not good or good[0].certificate is None:
        raise result.first_error()
    return Verified(content=content, signer=good[0].certificate, signers=result.signers)


def verify(
    part: MimePart,
    *,
    certificates: Sequence[x509.Certificate] = (),
    limits: MimeLimits = DEFAULT_LIMITS,
) -> Verified:
    """Verify a signed entity and return the signed part and its signer(s).

    ``multipart/signed`` (RFC 1847, RFC 8551 §3.5.3) is checked over the exact bytes of
    the first body part; ``application/pkcs7-mime; smime-type=signed-data`` (RFC 8551
    §3.5.2) carries the entity inside the SignedData. ``certificates`` are extra candidates
    for the signer certificate (e.g. from the sender's Store) when the SignedData does not
    carry it. ``micalg`` is not trusted: the digest algorithm comes from each SignerInfo.
    With several signers, ``signer`` is the first that verified and ``signers`` reports all.
    """
    return _verify(part, None, certificates=certificates, limits=limits)


def _verify(
    part: MimePart,
    multipart: Multipart | None,
    *,
    certificates: Sequence[x509.Certificate],
    limits: MimeLimits,
) -> Verified:
    """:func:`verify`; ``multipart`` is ``part``'s body already parsed with ``limits``."""
    media_type, params = part.media_type, part.params
    if media_type in _ENVELOPED_TYPES:
        smime_type = params.get("smime-type", "").lower()
        if smime_type != "signed-data":
            raise MIMEError(f"application/pkcs7-mime smime-type is {smime_type!r}, not signed-data")
        result = cms.verify_signed(part.body, certificates=certificates, max_size=limits.max_size)
        return _verified(result, parse_mime_part(result.content, limits=limits))
    if media_type != "multipart/signed":
        raise MIMEError(f"expected multipart/signed, got {media_type}")
    protocol = params.get("protocol", "").lower()
    if protocol not in _SIGNATURE_TYPES:
        raise MIMEError(
            f"multipart/signed protocol {protocol or '(missing)'!r} is not "
            "application/pkcs7-signature"
        )
    if multipart is None:
        multipart = parse_multipart(part.content_type, part.body, limits=limits)
    if len(multipart.parts) != 2:
        raise MIMEError(f"multipart/signed has {len(multipart.parts)} parts; exactly 2 expected")
    signature_part = multipart.parts[1]
    if signature_part.media_type != protocol:
        raise MIMEError(
            f"second part of multipart/signed is {signature_part.media_type}, not {protocol}"
        )
    result = cms.verify_signed(
        signature_part.body,
        multipart.raw_parts[0],
        certificates=certificates,
        max_size=limits.max_size,
    )
    return _verified(result, multipart.parts[0])


def is_signed(part: MimePart) -> bool:
    """True for the two S/MIME signed forms: multipart/signed, pkcs7-mime signed-data."""
    if part.media_type == "multipart/signed":
        return True
    return (
        part.media_type in _ENVELOPED_TYPES
        and part.params.get("smime-type", "").lower() == "signed-data"
    )


def encrypt(
    part: MimePart,
    recipients: Sequence[x509.Certificate],
    cipher: cms.Cipher | None = None,
    *,
    algorithms: cms.EnvelopeAlgorithms = cms.DEFAULT_ALGORITHMS,
) -> MimePart:
    """Encrypt ``part`` as ``application/pkcs7-mime`` (RFC 8551 §3.3, §3.4).

    The CEK is wrapped for every certificate in ``recipients`` (draft §4.5), so pass all
    valid certificates the Store returned for the AOR: RSA and EC keys alike.
    ``algorithms`` picks AES-GCM (authEnveloped-data, the default) or AES-CBC
    (enveloped-data), see :func:`sipcert.proto.cms.choose_algorithms`.
    """
    return _encrypted(part.to_bytes(), recipients, cipher, algorithms)


def _encrypted(
    entity: bytes,
    recipients: Sequence[x509.Certificate],
    cipher: cms.Cipher | None,
    algorithms: cms.EnvelopeAlgorithms,
) -> MimePart:
    """:func:`encrypt` of the entity whose bytes are ``entity``."""
    enveloped = cms.encrypt_enveloped(entity, recipients, cipher=cipher, algorithms=algorithms)
    gcm = algorithms.content.endswith("gcm")
    content_type = AUTH_ENVELOPED_CONTENT_TYPE if gcm else ENVELOPED_CONTENT_TYPE
    return MimePart(content_type, enveloped, _ENCRYPTED_HEADERS)


def decrypt(
    part: MimePart,
    key: cms.DecryptionKey,
    cert: x509.Certificate,
    *,
    limits: MimeLimits = DEFAULT_LIMITS,
) -> MimePart:
    """Decrypt an enveloped-data or authEnveloped-data entity for ``cert``; parse the inside.

    Our RecipientInfo is found by issuer and serial number or key identifier among any
    mix of recipient kinds (draft §4.5); a message not addressed to ``cert`` raises
    :class:`~sipcert.errors.DecryptionError` ("not a recipient").
    """
    return decrypt_entity(part, key, cert, limits=limits)[0]


def decrypt_entity(
    part: MimePart,
    key: cms.DecryptionKey,
    cert: x509.Certificate,
    *,
    limits: MimeLimits = DEFAULT_LIMITS,
) -> tuple[MimePart, Multipart | None]:
    """:func:`decrypt`, also returning the decrypted entity's multipart body, if it is one.

    Pass the pair to :func:`verify_decrypted`, which then does not split the
    multipart/signed a second time.
    """
    media_type, params = part.media_type, part.params
    if media_type not in _ENVELOPED_TYPES:
        raise MIMEError(f"expected application/pkcs7-mime, got {media_type}")
    smime_type = params.get("smime-type", "enveloped-data").lower()
    if smime_type not in _ENCRYPTED_SMIME_TYPES:
        raise MIMEError(
            f"application/pkcs7-mime smime-type is {smime_type!r}, not enveloped-data or "
            "authEnveloped-data"
        )
    inner = cms.decrypt_enveloped(part.body, key, cert, max_size=limits.max_size)
    return parse_mime_entity(inner, limits=limits)


def sign_and_encrypt(
    part: MimePart,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    cert: x509.Certificate,
    recipients: Sequence[x509.Certificate],
    *,
    cipher: cms.Cipher | None = None,
    digest: cms.DigestName = "sha256",
    rsa_pss: bool = False,
    algorithms: cms.EnvelopeAlgorithms = cms.DEFAULT_ALGORITHMS,
    signing_time: datetime | None = None,
) -> MimePart:
    """Sign with our key, then encrypt for ``recipients`` (RFC 3261 §23.3 layering).

    ``encrypt(sign(part, ...), recipients, ...)``, octet for octet, without the
    multipart/signed as an object in between: its bytes are written at once
    (:func:`_signed_bytes`), and nothing reads them but the encryption.
    """
    content = part.to_bytes()
    signature = cms.sign_detached(
        content, key, cert, digest=digest, rsa_pss=rsa_pss, signing_time=signing_time
    )
    return _encrypted(_signed_bytes(content, signature, digest), recipients, cipher, algorithms)


def decrypt_and_verify(
    part: MimePart,
    key: cms.DecryptionKey,
    cert: x509.Certificate,
    *,
    certificates: Sequence[x509.Certificate] = (),
    limits: MimeLimits = DEFAULT_LIMITS,
) -> Verified:
    """Decrypt an encrypted entity and verify the signed entity inside it."""
    entity = decrypt_entity(part, key, cert, limits=limits)
    if not is_signed(entity[0]):
        raise MIMEError(
            f"decrypted entity is {entity[0].media_type}, not multipart/signed: it is not signed"
        )
    return verify_decrypted(entity, certificates=certificates, limits=limits)


def verify_decrypted(
    entity: tuple[MimePart, Multipart | None],
    *,
    certificates: Sequence[x509.Certificate] = (),
    limits: MimeLimits = DEFAULT_LIMITS,
) -> Verified:
    """:func:`verify` of what :func:`decrypt_entity` returned (with the same ``limits``).

    The multipart/signed it already split is used as is, not parsed a second time.
    """
    part, multipart = entity
    return _verify(part, multipart, certificates=certificates, limits=limits)
