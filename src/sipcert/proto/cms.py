"""CMS (RFC 5652) for SIP S/MIME: detached SignedData and EnvelopedData, sans-IO.

``cryptography`` builds SignedData and EnvelopedData and decrypts EnvelopedData, but it cannot
verify a CMS signature; :func:`verify_detached` does that on ``asn1crypto`` structures and
``cryptography`` public keys (RFC 5652 §5.4, §5.6). All ``asn1crypto`` objects stay inside
this module: callers see bytes, ``cryptography`` certificates and our own small types.

Algorithm policy (RFC 8551 §2.1, §2.2; RFC 5754; RFC 4056; RFC 5753):

* digests SHA-256, SHA-384, SHA-512. SHA-1 and MD5 are **rejected** (:class:`CMSError`):
  RFC 8551 §2.1 makes SHA-256 the digest every agent must support, SHA-1 has practical
  collisions, and ``openssl cms`` and ``cryptography`` both default to SHA-256, so
  interoperating with them needs nothing weaker;
* signatures RSA PKCS#1 v1.5, RSA-PSS (parameters read from the AlgorithmIdentifier, whose
  hash must equal the digest algorithm, RFC 4056 §3) and ECDSA;
* key transport is RSA PKCS#1 v1.5 and content encryption AES-128/256-CBC, which is what
  ``cryptography`` implements (its :func:`pkcs7_decrypt_der` does the decryption).

Verification answers "which certificate made this signature"; whether that certificate is
the right one for the sender's AOR (draft-jennings-sipping-certs-02 §4.5) and whether it is
valid *now* is the caller's decision.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from asn1crypto import cms as asn1_cms
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import pkcs7

from sipcert.errors import (
    CertificateParseError,
    CMSError,
    CryptoError,
    DecryptionError,
    InputTooLargeError,
    SignatureError,
)
from sipcert.proto.certs import load_certificate

__all__ = [
    "DEFAULT_MAX_DER",
    "Cipher",
    "DigestName",
    "RecipientId",
    "decrypt_enveloped",
    "encrypt_enveloped",
    "is_recipient",
    "recipient_identifiers",
    "sign_detached",
    "verify_detached",
]

#: Largest CMS structure we parse; a SIP message is far smaller (RFC 3261 §18.1.1).
DEFAULT_MAX_DER = 1 << 20

DigestName = Literal["sha256", "sha384", "sha512"]
Cipher = Literal["aes128", "aes256"]

_DIGESTS: dict[str, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
#: Signature OIDs that name their hash; asn1crypto's names for them.
_COMBINED = {
    "sha256_rsa": "sha256",
    "sha384_rsa": "sha384",
    "sha512_rsa": "sha512",
    "sha256_ecdsa": "sha256",
    "sha384_ecdsa": "sha384",
    "sha512_ecdsa": "sha512",
}
_CIPHERS: dict[str, type[algorithms.AES128] | type[algorithms.AES256]] = {
    "aes128": algorithms.AES128,
    "aes256": algorithms.AES256,
}
_SUPPORTED_CONTENT_ENCRYPTION = {"aes128_cbc", "aes256_cbc"}
#: What asn1crypto raises on malformed DER (its parsing is lazy, so on access too); it
#: raises AttributeError for some unexpected universal types (e.g. ObjectDescriptor).
_ASN1_ERRORS = (ValueError, TypeError, KeyError, IndexError, OverflowError, AttributeError)


class RecipientId(NamedTuple):
    """How an EnvelopedData names one recipient: issuer and serial number (RFC 5652 §6.2.1)."""

    issuer: x509.Name
    serial_number: int

    def matches(self, cert: x509.Certificate) -> bool:
        """True when ``cert`` is the certificate this RecipientInfo was made for."""
        return cert.serial_number == self.serial_number and cert.issuer == self.issuer


# --- parsing helpers ---------------------------------------------------------------------


def _check_size(der: bytes, what: str, max_size: int) -> None:
    if len(der) > max_size:
        raise InputTooLargeError(f"{what} is {len(der)} octets (limit {max_size})")


def _load_content_info(der: bytes, expected: str) -> Any:
    """Load a ContentInfo and return its content, which must be of type ``expected``."""
    try:
        info = asn1_cms.ContentInfo.load(der, strict=True)
        content_type = info["content_type"].native
        if content_type != expected:
            raise CMSError(f"CMS ContentInfo holds {content_type!r}, expected {expected!r}")
        content = info["content"]
        content.native  # noqa: B018 - force asn1crypto's lazy parse so errors surface here
    except _ASN1_ERRORS as exc:
        raise CMSError(f"malformed CMS {expected} structure: {exc}") from exc
    return content


def _asn1_cert(cert: x509.Certificate) -> Any:
    return asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))


def _name_to_x509(name: Any) -> x509.Name:
    """Convert an asn1crypto Name to a ``cryptography`` Name (attribute OIDs and values)."""
    rdns = []
    for rdn in name.chosen:
        attributes = []
        for ava in rdn:
            value = ava["value"].native
            if not isinstance(value, str):
                raise CMSError(f"issuer attribute {ava['type'].dotted} is not a string")
            attributes.append(x509.NameAttribute(x509.ObjectIdentifier(ava["type"].dotted), value))
        rdns.append(x509.RelativeDistinguishedName(attributes))
    return x509.Name(rdns)


# --- SignedData verification -------------------------------------------------------------


@dataclass(frozen=True)
class _SignerData:
    """Everything verification needs, taken out of asn1crypto into plain values."""

    certificate_der: bytes
    digest: str
    econtent_type: str
    signed_attrs: bytes | None  # DER of the SET OF Attribute (tag 0x31), RFC 5652 §5.4
    message_digest: bytes | None
    attr_content_type: str | None
    scheme: Literal["pkcs1v15", "pss", "ecdsa"]
    pss_salt_length: int
    pss_mgf_digest: str
    signature: bytes


def _digest_name(algorithm_id: Any, where: str) -> str:
    name = algorithm_id["algorithm"].native
    if name not in _DIGESTS:
        raise CMSError(
            f"unsupported {where} digest algorithm {name!r} (accepted: SHA-256/384/512; "
            "SHA-1 and MD5 are refused)"
        )
    return str(name)


def _single_attr(signed_attrs: Any, attr_type: str) -> Any:
    """The one value of a signed attribute that must occur once (RFC 5652 §11)."""
    found = [a for a in signed_attrs if a["type"].native == attr_type]
    if not found:
        return None
    if len(found) > 1 or len(found[0]["values"]) != 1:
        raise CMSError(f"signed attribute {attr_type} must occur exactly once, with one value")
    return found[0]["values"][0].native


def _find_signer(sid: Any, embedded: Sequence[bytes], extra: Sequence[x509.Certificate]) -> bytes:
    """DER of the certificate that ``sid`` names (RFC 5652 §5.3 SignerIdentifier)."""
    candidates = [asn1_x509.Certificate.load(der) for der in embedded]
    candidates += [_asn1_cert(cert) for cert in extra]
    if sid.name == "issuer_and_serial_number":
        issuer = sid.chosen["issuer"]
        serial = sid.chosen["serial_number"].native
        for cand in candidates:
            if cand.serial_number == serial and cand.issuer == issuer:
                return bytes(cand.dump())
        shown = f"issuer {issuer.human_friendly!r}, serial {serial}"
    elif sid.name == "subject_key_identifier":
        key_id = sid.chosen.native
        for cand in candidates:
            if key_id in (cand.key_identifier, cand.public_key.sha1):
                return bytes(cand.dump())
        shown = f"subjectKeyIdentifier {key_id.hex()}"
    else:  # pragma: no cover - the CHOICE has only these two alternatives
        raise CMSError(f"unsupported SignerIdentifier {sid.name!r}")
    raise CMSError(f"signer certificate ({shown}) is neither in the SignedData nor given")


def _signature_scheme(
    sig_alg: Any, digest: str
) -> tuple[Literal["pkcs1v15", "pss", "ecdsa"], int, str]:
    """(scheme, PSS salt length, PSS MGF1 digest) from the signatureAlgorithm."""
    name = sig_alg["algorithm"].native
    implied = _COMBINED.get(name)
    if implied is not None and implied != digest:
        raise CMSError(f"signature algorithm {name} does not match digest algorithm {digest}")
    if name in ("rsassa_pkcs1v15", "sha256_rsa", "sha384_rsa", "sha512_rsa"):
        return "pkcs1v15", 0, digest
    if name in ("ecdsa", "sha256_ecdsa", "sha384_ecdsa", "sha512_ecdsa"):
        return "ecdsa", 0, digest
    if name == "rsassa_pss":
        params = sig_alg["parameters"]
        pss_hash = _digest_name(params["hash_algorithm"], "RSA-PSS")
        if pss_hash != digest:
            raise CMSError(
                f"RSA-PSS hash {pss_hash} differs from digest algorithm {digest} (RFC 4056 §3)"
            )
        mgf = params["mask_gen_algorithm"]
        if mgf["algorithm"].native != "mgf1":
            raise CMSError(f"unsupported RSA-PSS mask generation {mgf['algorithm'].native!r}")
        mgf_digest = _digest_name(mgf["parameters"], "RSA-PSS MGF1")
        if params["trailer_field"].native not in ("trailer_field_bc", 1):
            raise CMSError("unsupported RSA-PSS trailer field (RFC 4055 §3.1 allows only 1)")
        return "pss", int(params["salt_length"].native), mgf_digest
    raise CMSError(
        f"unsupported signature algorithm {name!r} (accepted: RSA PKCS#1 v1.5, RSA-PSS, ECDSA)"
    )


def _extract_signer(der: bytes, extra_certs: Sequence[x509.Certificate]) -> _SignerData:
    signed_data = _load_content_info(der, "signed_data")
    try:
        encap = signed_data["encap_content_info"]
        econtent_type = str(encap["content_type"].native)
        if encap["content"].native is not None:
            raise CMSError("SignedData carries its content; a detached signature was expected")
        signer_infos = signed_data["signer_infos"]
        if len(signer_infos) != 1:
            raise CMSError(f"SignedData has {len(signer_infos)} SignerInfos; exactly one expected")
        signer = signer_infos[0]
        embedded = [
            bytes(choice.chosen.dump())
            for choice in (signed_data["certificates"] or [])
            if choice.name == "certificate"
        ]
        certificate_der = _find_signer(signer["sid"], embedded, extra_certs)
        digest = _digest_name(signer["digest_algorithm"], "SignerInfo")
        scheme, salt, mgf_digest = _signature_scheme(signer["signature_algorithm"], digest)
        attrs = signer["signed_attrs"]
        signed_attrs: bytes | None = None
        message_digest: bytes | None = None
        attr_content_type: str | None = None
        if attrs.native is not None:
            raw = bytes(attrs.dump())
            signed_attrs = b"\x31" + raw[1:]  # [0] IMPLICIT -> SET OF, RFC 5652 §5.4
            message_digest = _single_attr(attrs, "message_digest")
            attr_content_type = _single_attr(attrs, "content_type")
        return _SignerData(
            certificate_der=certificate_der,
            digest=digest,
            econtent_type=econtent_type,
            signed_attrs=signed_attrs,
            message_digest=message_digest,
            attr_content_type=attr_content_type,
            scheme=scheme,
            pss_salt_length=salt,
            pss_mgf_digest=mgf_digest,
            signature=bytes(signer["signature"].native),
        )
    except _ASN1_ERRORS as exc:
        raise CMSError(f"malformed CMS SignerInfo: {exc}") from exc


def verify_detached(
    signature_der: bytes,
    content: bytes,
    *,
    certificates: Sequence[x509.Certificate] = (),
    max_size: int = DEFAULT_MAX_DER,
) -> x509.Certificate:
    """Verify a detached CMS SignedData over ``content``; return the signer's certificate.

    The signer certificate is looked up by its SignerIdentifier (issuer and serial number,
    or subjectKeyIdentifier) among the SignedData's certificates and ``certificates`` (e.g.
    the ones fetched from the sender's Store, draft §4.5). With signed attributes, the
    ``contentType`` attribute must equal the eContentType and ``messageDigest`` the digest
    of ``content``, and the signature covers the attributes' DER re-tagged as a SET (RFC 5652
    §5.4, §11.1, §11.2); without them it covers ``content`` itself and eContentType must be
    id-data.

    Raises :class:`SignatureError` when the signature or digest does not match,
    :class:`CMSError` for a malformed or unsupported structure.
    """
    _check_size(signature_der, "CMS SignedData", max_size)
    data = _extract_signer(signature_der, certificates)
    hash_cls = _DIGESTS[data.digest]
    if data.signed_attrs is None:
        if data.econtent_type != "data":
            raise CMSError("SignedData without signed attributes must have eContentType id-data")
        signed_bytes = content
    else:
        if data.attr_content_type is None or data.message_digest is None:
            raise CMSError("signed attributes lack contentType or messageDigest (RFC 5652 §5.3)")
        if data.attr_content_type != data.econtent_type:
            raise SignatureError("contentType attribute differs from eContentType")
        computed = hashlib.new(hash_cls.name, content).digest()
        if not hmac.compare_digest(computed, data.message_digest):
            raise SignatureError("messageDigest does not match the signed content")
        signed_bytes = data.signed_attrs
    try:
        # load_certificate, not cryptography directly: it also refuses what cryptography
        # only warns about (a serial that is not positive) and decodes every lazy field.
        der = data.certificate_der
        cert = load_certificate(der, max_size=len(der))
        public_key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm, CertificateParseError) as exc:
        raise CMSError(f"signer certificate does not parse: {exc}") from exc
    try:
        if data.scheme == "ecdsa":
            if not isinstance(public_key, ec.EllipticCurvePublicKey):
                raise CMSError("ECDSA signature but the signer certificate has no EC key")
            public_key.verify(data.signature, signed_bytes, ec.ECDSA(hash_cls()))
        else:
            if not isinstance(public_key, rsa.RSAPublicKey):
                raise CMSError("RSA signature but the signer certificate has no RSA key")
            pad: padding.AsymmetricPadding = padding.PKCS1v15()
            if data.scheme == "pss":
                mgf = padding.MGF1(_DIGESTS[data.pss_mgf_digest]())
                pad = padding.PSS(mgf=mgf, salt_length=data.pss_salt_length)
            public_key.verify(data.signature, signed_bytes, pad, hash_cls())
    except InvalidSignature as exc:
        raise SignatureError("CMS signature does not verify") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CMSError(f"CMS signature cannot be checked: {exc}") from exc
    return cert


# --- SignedData creation -----------------------------------------------------------------


def sign_detached(
    content: bytes,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    cert: x509.Certificate,
    *,
    digest: DigestName = "sha256",
    rsa_pss: bool = False,
) -> bytes:
    """DER of a detached SignedData over exactly ``content`` (RFC 5652 §5, RFC 8551 §3.5.3).

    ``Binary`` stops ``cryptography`` from rewriting LF to CRLF, so the signature covers the
    bytes given. The signer certificate is included, so a receiver needs nothing else to
    find the key; signed attributes (contentType, messageDigest, signingTime and
    SMIMECapabilities, RFC 8551 §2.5) are added by ``cryptography``, which reads the clock
    for signingTime itself. RSA-PSS uses MGF1 with the same hash and a salt as long as the
    digest (RFC 4056 §3).
    """
    hash_algorithm = _DIGESTS[digest]()
    rsa_padding: padding.PSS | padding.PKCS1v15 | None = None
    if isinstance(key, rsa.RSAPrivateKey):
        rsa_padding = (
            padding.PSS(mgf=padding.MGF1(hash_algorithm), salt_length=padding.PSS.DIGEST_LENGTH)
            if rsa_pss
            else padding.PKCS1v15()
        )
    elif not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CryptoError(f"cannot sign CMS with a {type(key).__name__}: RSA or EC keys only")
    elif rsa_pss:
        raise CryptoError("RSA-PSS was requested but the signing key is an EC key")
    try:
        builder = (
            pkcs7.PKCS7SignatureBuilder()
            .set_data(content)
            .add_signer(cert, key, hash_algorithm, rsa_padding=rsa_padding)
        )
        return builder.sign(
            serialization.Encoding.DER,
            [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary],
        )
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CryptoError(f"CMS signing failed: {exc}") from exc


# --- EnvelopedData -----------------------------------------------------------------------


def encrypt_enveloped(
    content: bytes, recipients: Sequence[x509.Certificate], *, cipher: Cipher = "aes128"
) -> bytes:
    """DER of an EnvelopedData of ``content`` with the CEK wrapped for every recipient.

    One KeyTransRecipientInfo per certificate, so that whoever holds any one of the private
    keys can decrypt (draft §4.5: "encrypt the CEK with each of the certificates").
    Recipients are identified by issuer and serial number (RFC 5652 §6.2.1).
    """
    if not recipients:
        raise CryptoError("cannot encrypt for no recipients")
    if cipher not in _CIPHERS:
        raise CryptoError(f"unsupported cipher {cipher!r} (aes128 or aes256)")
    builder = pkcs7.PKCS7EnvelopeBuilder().set_data(content)
    builder = builder.set_content_encryption_algorithm(_CIPHERS[cipher])
    seen: set[bytes] = set()
    for cert in recipients:
        der = cert.public_bytes(serialization.Encoding.DER)
        if der in seen:
            continue
        seen.add(der)
        if not isinstance(cert.public_key(), rsa.RSAPublicKey):
            raise CryptoError(
                f"recipient {cert.subject.rfc4514_string()} has no RSA key; only RSA key "
                "transport is supported"
            )
        builder = builder.add_recipient(cert)
    try:
        return builder.encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CryptoError(f"CMS encryption failed: {exc}") from exc


def _recipient_infos(enveloped: Any) -> list[Any]:
    """The issuer-and-serial identifiers of all key transport and agreement recipients."""
    ids = []
    for info in enveloped["recipient_infos"]:
        if info.name == "ktri":
            rid = info.chosen["rid"]
            if rid.name == "issuer_and_serial_number":
                ids.append(rid.chosen)
        elif info.name == "kari":
            for rek in info.chosen["recipient_encrypted_keys"]:
                if rek["rid"].name == "issuer_and_serial_number":
                    ids.append(rek["rid"].chosen)
    return ids


def recipient_identifiers(
    enveloped_der: bytes, *, max_size: int = DEFAULT_MAX_DER
) -> list[RecipientId]:
    """Issuer and serial number of every recipient of an EnvelopedData (RFC 5652 §6.2).

    A UA uses these to tell whether one of its certificates is a recipient (draft §4.5:
    "it uses the serial number and issuer to find the certificate it needs to decrypt").
    Recipients named only by subjectKeyIdentifier are not listed.
    """
    _check_size(enveloped_der, "CMS EnvelopedData", max_size)
    enveloped = _load_content_info(enveloped_der, "enveloped_data")
    try:
        return [
            RecipientId(_name_to_x509(ias["issuer"]), int(ias["serial_number"].native))
            for ias in _recipient_infos(enveloped)
        ]
    except _ASN1_ERRORS as exc:
        raise CMSError(f"malformed CMS RecipientInfo: {exc}") from exc


def is_recipient(
    enveloped_der: bytes, cert: x509.Certificate, *, max_size: int = DEFAULT_MAX_DER
) -> bool:
    """True when a RecipientInfo names ``cert`` by issuer and serial number (draft §4.5).

    Names are compared with asn1crypto's RFC 5280 §7.1 rules, not byte for byte.
    """
    _check_size(enveloped_der, "CMS EnvelopedData", max_size)
    enveloped = _load_content_info(enveloped_der, "enveloped_data")
    ours = _asn1_cert(cert)
    try:
        return any(
            ias["serial_number"].native == ours.serial_number and ias["issuer"] == ours.issuer
            for ias in _recipient_infos(enveloped)
        )
    except _ASN1_ERRORS as exc:
        raise CMSError(f"malformed CMS RecipientInfo: {exc}") from exc


def decrypt_enveloped(
    enveloped_der: bytes,
    key: rsa.RSAPrivateKey,
    cert: x509.Certificate,
    *,
    max_size: int = DEFAULT_MAX_DER,
) -> bytes:
    """Decrypt an EnvelopedData with our key; ``cert`` selects our RecipientInfo.

    Raises :class:`DecryptionError` when no RecipientInfo names ``cert`` by issuer and
    serial number (draft §4.5), when ``key`` is not ``cert``'s key, or when decryption
    fails; :class:`CMSError` when the structure is malformed or uses an unsupported cipher.
    """
    if not is_recipient(enveloped_der, cert, max_size=max_size):
        raise DecryptionError(
            f"not a recipient: no RecipientInfo names issuer {cert.issuer.rfc4514_string()!r}"
            f" serial {cert.serial_number} (draft §4.5)"
        )
    enveloped = _load_content_info(enveloped_der, "enveloped_data")
    try:
        algorithm = enveloped["encrypted_content_info"]["content_encryption_algorithm"]
        cipher_name = algorithm["algorithm"].native
    except _ASN1_ERRORS as exc:
        raise CMSError(f"malformed CMS EncryptedContentInfo: {exc}") from exc
    if cipher_name not in _SUPPORTED_CONTENT_ENCRYPTION:
        raise CMSError(
            f"unsupported content-encryption algorithm {cipher_name!r} (AES-128/256-CBC only)"
        )
    if not isinstance(key, rsa.RSAPrivateKey):
        raise DecryptionError("only RSA key transport is supported; the key is not RSA")
    cert_key = cert.public_key()
    if (
        not isinstance(cert_key, rsa.RSAPublicKey)
        or key.public_key().public_numbers() != cert_key.public_numbers()
    ):
        raise DecryptionError("the private key does not belong to the given certificate")
    try:
        return pkcs7.pkcs7_decrypt_der(enveloped_der, cert, key, [])
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise DecryptionError(f"CMS decryption failed: {exc}") from exc
