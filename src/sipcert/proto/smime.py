"""S/MIME bodies for SIP (RFC 3261 §23.3, RFC 8551 §3), sans-IO.

* signing makes ``multipart/signed`` (RFC 1847, RFC 8551 §3.5.3): the first part is the
  exact bytes of the inner entity, the second the DER detached SignedData;
* encryption makes ``application/pkcs7-mime; smime-type=enveloped-data`` (RFC 8551 §3.3) with
  the CEK wrapped for every certificate of the recipient (draft-jennings-sipping-certs-02
  §4.5);
* both use ``Content-Transfer-Encoding: binary`` (SIP is 8-bit clean, RFC 3261 §23.3) and
  ``Content-Disposition: ...; handling=required`` (RFC 3261 §23.3, §20.11), so a UA that
  cannot process the body rejects the request instead of ignoring it.

SIP layers them as an enveloped-data wrapping a multipart/signed (RFC 3261 §23.3;
RFC 8551 §3.7 "signed then encrypted"): :func:`sign_and_encrypt` and
:func:`decrypt_and_verify`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sipcert.errors import MIMEError
from sipcert.proto import cms
from sipcert.proto.mime import (
    DEFAULT_LIMITS,
    MimeLimits,
    MimePart,
    build_multipart,
    parse_mime_part,
    parse_multipart,
)

__all__ = [
    "ENVELOPED_CONTENT_TYPE",
    "SIGNATURE_CONTENT_TYPE",
    "Verified",
    "decrypt",
    "decrypt_and_verify",
    "encrypt",
    "sign",
    "sign_and_encrypt",
    "verify",
]

SIGNATURE_CONTENT_TYPE = "application/pkcs7-signature; name=smime.p7s"
ENVELOPED_CONTENT_TYPE = "application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m"
#: micalg values of RFC 8551 §3.5.3 (RFC 5751 names for the SHA-2 family).
_MICALG: dict[cms.DigestName, str] = {
    "sha256": "sha-256",
    "sha384": "sha-384",
    "sha512": "sha-512",
}
#: Older agents send the x-pkcs7 spellings; accepting them costs nothing.
_SIGNATURE_TYPES = frozenset({"application/pkcs7-signature", "application/x-pkcs7-signature"})
_ENVELOPED_TYPES = frozenset({"application/pkcs7-mime", "application/x-pkcs7-mime"})


@dataclass(frozen=True)
class Verified:
    """A verified multipart/signed: the signed entity and the certificate that signed it.

    The certificate is only cryptographically bound to ``content``; the caller still checks
    it belongs to the sender's AOR and is valid now (draft §4.5).
    """

    content: MimePart
    signer: x509.Certificate


def sign(
    part: MimePart,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    cert: x509.Certificate,
    *,
    digest: cms.DigestName = "sha256",
    rsa_pss: bool = False,
) -> MimePart:
    """Wrap ``part`` in ``multipart/signed`` with a detached CMS signature (RFC 8551 §3.5.3).

    The signature covers exactly ``part.to_bytes()``, which is also the first body part,
    byte for byte; nothing is re-canonicalized (binary transfer, RFC 3261 §23.3).
    """
    content = part.to_bytes()
    signature = cms.sign_detached(content, key, cert, digest=digest, rsa_pss=rsa_pss)
    signature_part = MimePart(
        content_type=SIGNATURE_CONTENT_TYPE,
        body=signature,
        headers=(
            ("Content-Transfer-Encoding", "binary"),
            ("Content-Disposition", "attachment; handling=required; filename=smime.p7s"),
        ),
    )
    return build_multipart(
        "signed",
        [part, signature_part],
        params={"protocol": "application/pkcs7-signature", "micalg": _MICALG[digest]},
    )


def verify(
    part: MimePart,
    *,
    certificates: Sequence[x509.Certificate] = (),
    limits: MimeLimits = DEFAULT_LIMITS,
) -> Verified:
    """Verify a ``multipart/signed`` entity and return the signed part and its signer.

    The signature is checked over the exact bytes of the first body part (RFC 1847 §2.1).
    ``certificates`` are extra candidates for the signer certificate (e.g. from the
    sender's Store) when the SignedData does not carry it. ``micalg`` is not trusted: the
    digest algorithm comes from the SignerInfo.
    """
    media_type, params = part.media_type, part.params
    if media_type != "multipart/signed":
        raise MIMEError(f"expected multipart/signed, got {media_type}")
    protocol = params.get("protocol", "").lower()
    if protocol not in _SIGNATURE_TYPES:
        raise MIMEError(
            f"multipart/signed protocol {protocol or '(missing)'!r} is not "
            "application/pkcs7-signature"
        )
    multipart = parse_multipart(part.content_type, part.body, limits=limits)
    if len(multipart.parts) != 2:
        raise MIMEError(f"multipart/signed has {len(multipart.parts)} parts; exactly 2 expected")
    signature_part = multipart.parts[1]
    if signature_part.media_type != protocol:
        raise MIMEError(
            f"second part of multipart/signed is {signature_part.media_type}, not {protocol}"
        )
    signer = cms.verify_detached(
        signature_part.body,
        multipart.raw_parts[0],
        certificates=certificates,
        max_size=limits.max_size,
    )
    return Verified(content=multipart.parts[0], signer=signer)


def encrypt(
    part: MimePart,
    recipients: Sequence[x509.Certificate],
    cipher: cms.Cipher = "aes128",
) -> MimePart:
    """Encrypt ``part`` as ``application/pkcs7-mime`` enveloped-data (RFC 8551 §3.3).

    The CEK is wrapped for every certificate in ``recipients`` (draft §4.5), so pass all
    valid certificates the Store returned for the AOR.
    """
    enveloped = cms.encrypt_enveloped(part.to_bytes(), recipients, cipher=cipher)
    return MimePart(
        content_type=ENVELOPED_CONTENT_TYPE,
        body=enveloped,
        headers=(
            ("Content-Transfer-Encoding", "binary"),
            ("Content-Disposition", "attachment; handling=required; filename=smime.p7m"),
        ),
    )


def decrypt(
    part: MimePart,
    key: rsa.RSAPrivateKey,
    cert: x509.Certificate,
    *,
    limits: MimeLimits = DEFAULT_LIMITS,
) -> MimePart:
    """Decrypt an enveloped-data entity addressed to ``cert`` and parse the inner entity.

    Our RecipientInfo is found by issuer and serial number (draft §4.5); a message not
    addressed to ``cert`` raises :class:`~sipcert.errors.DecryptionError` ("not a
    recipient").
    """
    media_type, params = part.media_type, part.params
    if media_type not in _ENVELOPED_TYPES:
        raise MIMEError(f"expected application/pkcs7-mime, got {media_type}")
    smime_type = params.get("smime-type", "enveloped-data").lower()
    if smime_type != "enveloped-data":
        raise MIMEError(f"application/pkcs7-mime smime-type is {smime_type!r}, not enveloped-data")
    inner = cms.decrypt_enveloped(part.body, key, cert, max_size=limits.max_size)
    return parse_mime_part(inner, limits=limits)


def sign_and_encrypt(
    part: MimePart,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    cert: x509.Certificate,
    recipients: Sequence[x509.Certificate],
    *,
    cipher: cms.Cipher = "aes128",
    digest: cms.DigestName = "sha256",
    rsa_pss: bool = False,
) -> MimePart:
    """Sign with our key, then encrypt for ``recipients`` (RFC 3261 §23.3 layering)."""
    signed = sign(part, key, cert, digest=digest, rsa_pss=rsa_pss)
    return encrypt(signed, recipients, cipher=cipher)


def decrypt_and_verify(
    part: MimePart,
    key: rsa.RSAPrivateKey,
    cert: x509.Certificate,
    *,
    certificates: Sequence[x509.Certificate] = (),
    limits: MimeLimits = DEFAULT_LIMITS,
) -> Verified:
    """Decrypt an enveloped-data entity and verify the multipart/signed inside it."""
    inner = decrypt(part, key, cert, limits=limits)
    if inner.media_type != "multipart/signed":
        raise MIMEError(
            f"decrypted entity is {inner.media_type}, not multipart/signed: it is not signed"
        )
    return verify(inner, certificates=certificates, limits=limits)
