"""CMS (RFC 5652) for SIP S/MIME: SignedData, EnvelopedData and AuthEnvelopedData, sans-IO.

``cryptography`` has the primitives but neither CMS verification nor envelopes beyond RSA
PKCS#1 v1.5 with AES-CBC, and its ``pkcs7_decrypt_der`` fails on an envelope that also holds
a non-RSA recipient. So the structures are read and written here with ``asn1crypto`` and
every operation is a ``cryptography`` primitive. All ``asn1crypto`` objects stay inside this
module: callers see bytes, ``cryptography`` certificates and keys, and our own small types.

Algorithm policy (RFC 8551 §2.1-§2.7; RFC 5754; RFC 4056; RFC 5753; RFC 5083/5084; RFC 8418):

* digests SHA-256, SHA-384, SHA-512. SHA-1 and MD5 are **rejected** as signature digests
  (:class:`CMSError`): RFC 8551 §2.1 makes SHA-256 the digest every agent must support and
  SHA-1 has practical collisions. (SHA-1 is still read where it is no digest of the signed
  content: MGF1 of RSA-PSS and OAEP, the X9.63 KDF of ECDH, which openssl uses by default);
* signatures RSA PKCS#1 v1.5, RSA-PSS (parameters read from the AlgorithmIdentifier, whose
  hash must equal the digest algorithm, RFC 4056 §3; any MGF1 hash), ECDSA and Ed25519
  (RFC 8419); several signers, each reported; detached or attached content;
* envelopes: AuthEnvelopedData with AES-128/192/256-GCM and EnvelopedData with
  AES-128/192/256-CBC; key transport RSA PKCS#1 v1.5 and RSA-OAEP (any SHA parameters);
  key agreement ECDH ephemeral-static on the NIST curves (X9.63 KDF, RFC 5753) and X25519/
  X448 (HKDF or X9.63, RFC 8418) with AES key wrap (RFC 3394). Our RecipientInfo is picked
  out of any mix; kekri, pwri and ori entries are skipped. DER and BER are both read.

Verification answers "which certificate made this signature"; whether that certificate is
the right one for the sender's AOR (draft-jennings-sipping-certs-02 §4.5) and whether it is
valid *now* is the caller's decision.
"""

from __future__ import annotations

import collections
import datetime
import functools
import hashlib
import hmac
import itertools
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, TypeVar

from asn1crypto import algos as asn1_algos
from asn1crypto import cms as asn1_cms
from asn1crypto import core as asn1_core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, keywrap, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, x448, x25519
from cryptography.hazmat.primitives.ciphers import algorithms as block_ciphers
from cryptography.hazmat.primitives.ciphers import base as cipher_base
from cryptography.hazmat.primitives.ciphers import modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF
from cryptography.hazmat.primitives.padding import PKCS7

from sipcert.errors import (
    CertificateParseError,
    CMSError,
    CryptoError,
    DecryptionError,
    InputTooLargeError,
    NotRecipientError,
    SignatureError,
    SipCertError,
)
from sipcert.proto import der
from sipcert.proto.certs import load_certificate
from sipcert.proto.der import NotLean

__all__ = [
    "DEFAULT_ALGORITHMS",
    "DEFAULT_MAX_DER",
    "LEGACY_ALGORITHMS",
    "Cipher",
    "ContentEncryption",
    "DecryptionKey",
    "DigestName",
    "EnvelopeAlgorithms",
    "RSAKeyTransport",
    "RecipientId",
    "SignedContent",
    "SignerReport",
    "choose_algorithms",
    "choose_for_devices",
    "decrypt_enveloped",
    "encrypt_enveloped",
    "is_recipient",
    "recipient_identifiers",
    "sign_detached",
    "verify_detached",
    "verify_signed",
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
#: The ECDSA parameter per digest, made once (its constructor imports the backend each call).
_ECDSA = {name: ec.ECDSA(digest()) for name, digest in _DIGESTS.items()}
#: Signature OIDs that name their hash; asn1crypto's names for them.
_COMBINED = {
    "sha256_rsa": "sha256",
    "sha384_rsa": "sha384",
    "sha512_rsa": "sha512",
    "sha256_ecdsa": "sha256",
    "sha384_ecdsa": "sha384",
    "sha512_ecdsa": "sha512",
}
_MGF_DIGESTS: dict[str, type[hashes.HashAlgorithm]] = {"sha1": hashes.SHA1, **_DIGESTS}
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
        if expected == "signed_data":
            _parse_signed_data(content)
        else:
            content.native  # noqa: B018 - force asn1crypto's lazy parse so errors surface here
    except _ASN1_ERRORS as exc:
        raise CMSError(f"malformed CMS {expected} structure: {exc}") from exc
    return content


def _parse_signed_data(signed_data: Any) -> None:
    """Force the lazy parse of a SignedData, except attribute values.

    An attribute we never read must not make the message unreadable: asn1crypto's spec for
    some (NSS's encryption key preference, for one) is stricter than what agents send, and
    the signature covers the attributes' bytes anyway. The ones we read are parsed later,
    per signer.
    """
    for name in ("version", "encap_content_info"):
        signed_data[name].native  # noqa: B018
    _parse_fully(signed_data["digest_algorithms"])
    for choice in signed_data["certificates"] or []:
        choice.name  # noqa: B018 - each is parsed fully only if it is a signer's
    for signer in signed_data["signer_infos"]:
        for name in ("sid", "digest_algorithm", "signature_algorithm"):
            _parse_fully(signer[name])
        signer["signature"].native  # noqa: B018
        attrs = signer["signed_attrs"]
        if isinstance(attrs, asn1_cms.CMSAttributes):
            for attr in attrs:
                attr["type"].native  # noqa: B018


def _parse_fully(value: Any) -> None:
    """Force asn1crypto's full parse of ``value``, once per (type, encoding).

    For the parts a repeated sender sends identically in every message (its
    SignerIdentifier, with the issuer Name whose every string is decoded, and the
    algorithm identifiers): an encoding of a type that parsed once parses again, so it is
    remembered (by SHA-256, in the LRU) and not decoded again. Malformed input raises
    as before, and is never remembered.
    """
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    key = b"parsed" + hashlib.sha256(kind.encode() + b"\0" + value.dump()).digest()
    if _ids_cache.get(key) is None:
        value.native  # noqa: B018
        _ids_cache.put(key, True)


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
    scheme: Literal["pkcs1v15", "pss", "ecdsa", "ed25519"]
    pss_salt_length: int
    pss_mgf_digest: str
    signature: bytes
    capabilities: tuple[str, ...] = ()


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


class _LRU:
    """A bounded, thread-safe LRU map from a DER encoding (:func:`_encoding_key`, or its
    SHA-256), prefixed by what is derived, to what it gives.

    For derived values that depend on the DER alone (no clock, no trust decision), so a
    cached entry is exactly what computing again would give; callers store only successes.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: collections.OrderedDict[bytes, Any] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: bytes) -> Any:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: bytes, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            if len(self._items) > self._size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def _encoding_key(what: bytes, encoding: bytes) -> bytes:
    """The :class:`_LRU` key of what is derived (``what``) from ``encoding``.

    An algorithm identifier is shorter than its SHA-256 and hashing it costs more than the
    lookup, so short encodings are their own key; long ones (a hostile sender's) by SHA-256,
    so no entry holds more than a few octets of key.
    """
    if len(encoding) <= 128:
        return what + b"=" + encoding
    return what + b"#" + hashlib.sha256(encoding).digest()


#: Issuer, serial number and key identifiers of certificates (signers' and our own), and
#: the SMIMECapabilities signers announce, by SHA-256 of their DER.
_ids_cache = _LRU(512)


class _CertIds:
    """How a CMS identifier can name one certificate, read from its DER once per DER.

    Issuer and serial number, and the key identifiers, are each read (and cached, by
    SHA-256 of the DER) only when asked for, so a certificate is parsed exactly as far as
    a plain asn1crypto lookup would parse it, and fails the same way.
    """

    def __init__(self, der: bytes) -> None:
        self.der = der
        self._fingerprint = hashlib.sha256(der).digest()
        self._issuer_serial: tuple[int, bytes] | None = None
        self._key_ids: tuple[bytes | None, bytes] | None = None

    def issuer_serial(self) -> tuple[int, bytes]:
        """(serial number, issuer Name DER)."""
        if self._issuer_serial is not None:
            return self._issuer_serial
        key = b"ias" + self._fingerprint
        hit: tuple[int, bytes] | None = _ids_cache.get(key)
        if hit is None:
            parsed = asn1_x509.Certificate.load(self.der)
            hit = (int(parsed.serial_number), bytes(parsed.issuer.dump()))
            _ids_cache.put(key, hit)
        self._issuer_serial = hit
        return hit

    def key_ids(self) -> tuple[bytes | None, bytes]:
        """(subjectKeyIdentifier or None, SHA-1 of the subjectPublicKey)."""
        if self._key_ids is not None:
            return self._key_ids
        key = b"kid" + self._fingerprint
        hit: tuple[bytes | None, bytes] | None = _ids_cache.get(key)
        if hit is None:
            parsed = asn1_x509.Certificate.load(self.der)
            hit = (parsed.key_identifier, bytes(parsed.public_key.sha1))
            _ids_cache.put(key, hit)
        self._key_ids = hit
        return hit


_T = TypeVar("_T")


def _per_certificate(
    size: int,
) -> Callable[[Callable[[x509.Certificate], _T]], Callable[[x509.Certificate], _T]]:
    """A bounded cache of what a function gives for a certificate *object*, by identity.

    For the certificate objects a UA hands in with every message (its own, a sender's,
    its devices'): ``hash(cert)``, which ``functools.lru_cache`` needs, hashes the whole
    DER (~3 µs a lookup). Each entry holds its object, so the ``id`` is not reused while
    the entry lives; an equal but distinct object gets its own (equal) entry; the oldest
    entry goes first; errors are not kept.
    """

    def wrap(func: Callable[[x509.Certificate], _T]) -> Callable[[x509.Certificate], _T]:
        items: dict[int, tuple[x509.Certificate, _T]] = {}
        lock = threading.Lock()

        @functools.wraps(func)
        def lookup(cert: x509.Certificate) -> _T:
            hit = items.get(id(cert))
            if hit is not None and hit[0] is cert:
                return hit[1]
            value = func(cert)
            with lock:
                items.pop(id(cert), None)
                if len(items) >= size:
                    items.pop(next(iter(items)))
                items[id(cert)] = (cert, value)
            return value

        return lookup

    return wrap


@_per_certificate(64)
def _our_ids(cert: x509.Certificate) -> _CertIds:
    """The :class:`_CertIds` of our own certificate, which opens every message we receive:
    what it has read stays with it (a pure function of the DER)."""
    return _CertIds(_cert_der(cert))


@_per_certificate(64)
def _cert_der(cert: x509.Certificate) -> bytes:
    """The DER of a certificate object we are handed again and again (ours, a sender's)."""
    return cert.public_bytes(serialization.Encoding.DER)


def _issuer_serial_match(cand: _CertIds, issuer: Any, serial: int) -> bool:
    cand_serial, cand_issuer = cand.issuer_serial()
    if cand_serial != serial:
        return False
    # byte equality first; RFC 5280 §7.1 comparison (slow: string preparation) if not
    return bool(issuer.dump() == cand_issuer or issuer == asn1_x509.Name.load(cand_issuer))


def _find_signer(sid: Any, embedded: Sequence[bytes], extra: Sequence[x509.Certificate]) -> bytes:
    """DER of the certificate that ``sid`` names (RFC 5652 §5.3 SignerIdentifier)."""
    candidates = [_CertIds(der) for der in embedded]
    candidates += [_CertIds(_cert_der(cert)) for cert in extra]
    if sid.name == "issuer_and_serial_number":
        issuer = sid.chosen["issuer"]
        serial = sid.chosen["serial_number"].native
        for cand in candidates:
            if _issuer_serial_match(cand, issuer, serial):
                return cand.der
        shown = f"issuer {issuer.human_friendly!r}, serial {serial}"
    elif sid.name == "subject_key_identifier":
        key_id = sid.chosen.native
        for cand in candidates:
            if key_id in cand.key_ids():
                return cand.der
        shown = f"subjectKeyIdentifier {key_id.hex()}"
    else:  # pragma: no cover - the CHOICE has only these two alternatives
        raise CMSError(f"unsupported SignerIdentifier {sid.name!r}")
    raise CMSError(f"signer certificate ({shown}) is neither in the SignedData nor given")


def _signature_scheme(
    sig_alg: Any, digest: str
) -> tuple[Literal["pkcs1v15", "pss", "ecdsa", "ed25519"], int, str]:
    """(scheme, PSS salt length, PSS MGF1 digest) from the signatureAlgorithm."""
    name = sig_alg["algorithm"].native
    implied = _COMBINED.get(name)
    if implied is not None and implied != digest:
        raise CMSError(f"signature algorithm {name} does not match digest algorithm {digest}")
    if name in ("rsassa_pkcs1v15", "sha256_rsa", "sha384_rsa", "sha512_rsa"):
        return "pkcs1v15", 0, digest
    if name in ("ecdsa", "sha256_ecdsa", "sha384_ecdsa", "sha512_ecdsa"):
        return "ecdsa", 0, digest
    if name == "ed25519":
        # RFC 8419 §3: PureEdDSA signs the attributes themselves; the digest is SHA-512.
        if digest != "sha512":
            raise CMSError(f"Ed25519 signature with digest {digest}; RFC 8419 §3 needs SHA-512")
        return "ed25519", 0, digest
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
        # MGF1 is a mask generator, not a collision-resistant digest: SHA-1 is fine there
        # (RFC 4055 §3.1 makes MGF1-SHA-1 the default; openssl and Java send it).
        mgf_name = mgf["parameters"]["algorithm"].native
        if mgf_name not in _MGF_DIGESTS:
            raise CMSError(f"RSA-PSS with MGF1-{mgf_name} is not supported")
        mgf_digest = str(mgf_name)
        if params["trailer_field"].native not in ("trailer_field_bc", 1):
            raise CMSError("unsupported RSA-PSS trailer field (RFC 4055 §3.1 allows only 1)")
        return "pss", int(params["salt_length"].native), mgf_digest
    raise CMSError(
        f"unsupported signature algorithm {name!r} (accepted: RSA PKCS#1 v1.5, RSA-PSS, ECDSA)"
    )


def _der_header(tag: int, length: int) -> bytes:
    """A DER tag and definite length (X.690 §8.1.3), for re-encoding BER-parsed values."""
    if length < 0x80:
        return bytes([tag, length])
    size = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size


def _capabilities(signed_attrs: Any) -> tuple[str, ...]:
    """The SMIMECapabilities a signer announced, in its order of preference (RFC 8551 §2.5.2)."""
    try:
        found = [a for a in signed_attrs if a["type"].native == "smime_capabilities"]
        if len(found) != 1 or len(found[0]["values"]) != 1:
            return ()
        value = found[0]["values"][0]
        return _capability_names(value.dump(), lambda: value)
    except _ASN1_ERRORS:
        return ()  # a malformed announcement is no announcement (RFC 8551 §2.5.2)


def _capability_names(encoding: bytes, parsed: Callable[[], Any]) -> tuple[str, ...]:
    """The capability names of an SMIMECapabilities ``encoding``; ``parsed`` gives its value.

    A sender announces the same list in every message: it is read once per encoding. A
    malformed announcement is no announcement (RFC 8551 §2.5.2): ().
    """
    key = _encoding_key(b"cap", encoding)
    hit: tuple[str, ...] | None = _ids_cache.get(key)
    if hit is None:
        try:
            hit = tuple(str(cap["capability_id"].native) for cap in parsed())
        except _ASN1_ERRORS:
            return ()
        _ids_cache.put(key, hit)
    return hit


def _signer_data(
    signer: Any, econtent_type: str, embedded: Sequence[bytes], extra: Sequence[x509.Certificate]
) -> _SignerData:
    certificate_der = _find_signer(signer["sid"], embedded, extra)
    digest = _digest_name(signer["digest_algorithm"], "SignerInfo")
    scheme, salt, mgf_digest = _signature_scheme(signer["signature_algorithm"], digest)
    attrs = signer["signed_attrs"]
    signed_attrs: bytes | None = None
    message_digest: bytes | None = None
    attr_content_type: str | None = None
    capabilities: tuple[str, ...] = ()
    if not isinstance(attrs, asn1_core.Void):
        # [0] IMPLICIT -> SET OF, RFC 5652 §5.4; rebuilt from the contents so a BER
        # (indefinite-length) outer encoding does not leak into the signed bytes.
        contents = bytes(attrs.contents)
        signed_attrs = _der_header(0x31, len(contents)) + contents
        message_digest = _single_attr(attrs, "message_digest")
        attr_content_type = _single_attr(attrs, "content_type")
        capabilities = _capabilities(attrs)
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
        capabilities=capabilities,
    )


def _parse_signed(
    der: bytes, extra_certs: Sequence[x509.Certificate]
) -> tuple[bytes | None, list[_SignerData | SipCertError]]:
    """(embedded content or None, one entry per SignerInfo: its data or why it is unusable)."""
    try:
        return _lean_parse_signed(der, extra_certs)
    except _LEAN_FALLBACK:
        pass  # the general path below reads it again and gives its answer
    signed_data = _load_content_info(der, "signed_data")
    try:
        encap = signed_data["encap_content_info"]
        econtent_type = str(encap["content_type"].native)
        econtent = encap["content"]
        embedded_content: bytes | None = None
        if econtent.native is not None:
            embedded_content = _octets(econtent)
        signer_infos = signed_data["signer_infos"]
        if len(signer_infos) == 0:
            raise CMSError("SignedData has no SignerInfo: nobody signed it")
        embedded = [
            bytes(choice.chosen.dump())
            for choice in (signed_data["certificates"] or [])
            if choice.name == "certificate"
        ]
        signers: list[_SignerData | SipCertError] = []
        for signer in signer_infos:
            try:
                signers.append(_signer_data(signer, econtent_type, embedded, extra_certs))
            except CMSError as exc:
                signers.append(exc)
        return embedded_content, signers
    except _ASN1_ERRORS as exc:
        raise CMSError(f"malformed CMS SignerInfo: {exc}") from exc


#: Signer certificates already loaded, by SHA-256 of their DER: a repeated sender's
#: certificate is parsed and checked once. A certificate that fails to load is not kept,
#: so it is loaded (and refused) every time.
_signer_cache = _LRU(256)


#: The last signer certificate loaded, with the DER object it came from: the layout of a
#: repeated sender's SignedData (:class:`_SignedLayout`) hands the same object every time.
_last_signer: tuple[bytes, x509.Certificate, Any] | None = None


def _signer_certificate(der: bytes) -> tuple[x509.Certificate, Any]:
    """(certificate, public key) of a signer certificate's DER, through :data:`_signer_cache`."""
    global _last_signer  # one tuple, replaced whole
    last = _last_signer
    if last is not None and last[0] is der:
        return last[1], last[2]
    fingerprint = hashlib.sha256(der).digest()
    hit: tuple[x509.Certificate, Any] | None = _signer_cache.get(fingerprint)
    if hit is not None:
        _last_signer = (der, *hit)
        return hit
    try:
        # load_certificate, not cryptography directly: it also refuses what cryptography
        # only warns about (a serial that is not positive) and decodes every lazy field.
        cert = load_certificate(der, max_size=len(der))
        public_key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm, CertificateParseError) as exc:
        raise CMSError(f"signer certificate does not parse: {exc}") from exc
    _signer_cache.put(fingerprint, (cert, public_key))
    _last_signer = (der, cert, public_key)
    return cert, public_key


def _check_signer(data: _SignerData, content: bytes) -> x509.Certificate:
    """Verify one SignerInfo over ``content``; return its certificate or raise."""
    if data.scheme == "ed25519":
        hash_name = "sha512"  # RFC 8419 §3: the messageDigest uses SHA-512 with Ed25519
    else:
        hash_name = _DIGESTS[data.digest].name
    if data.signed_attrs is None:
        if data.econtent_type != "data":
            raise CMSError("SignedData without signed attributes must have eContentType id-data")
        signed_bytes = content
    else:
        if data.attr_content_type is None or data.message_digest is None:
            raise CMSError("signed attributes lack contentType or messageDigest (RFC 5652 §5.3)")
        if data.attr_content_type != data.econtent_type:
            raise SignatureError("contentType attribute differs from eContentType")
        computed = hashlib.new(hash_name, content).digest()
        if not hmac.compare_digest(computed, data.message_digest):
            raise SignatureError("messageDigest does not match the signed content")
        signed_bytes = data.signed_attrs
    cert, public_key = _signer_certificate(data.certificate_der)
    try:
        if data.scheme == "ed25519":
            if not isinstance(public_key, ed25519.Ed25519PublicKey):
                raise CMSError("Ed25519 signature but the signer certificate has no Ed25519 key")
            public_key.verify(data.signature, signed_bytes)
        elif data.scheme == "ecdsa":
            if not isinstance(public_key, ec.EllipticCurvePublicKey):
                raise CMSError("ECDSA signature but the signer certificate has no EC key")
            public_key.verify(data.signature, signed_bytes, _ECDSA[data.digest])
        else:
            if not isinstance(public_key, rsa.RSAPublicKey):
                raise CMSError("RSA signature but the signer certificate has no RSA key")
            pad: padding.AsymmetricPadding = padding.PKCS1v15()
            if data.scheme == "pss":
                mgf = padding.MGF1(_MGF_DIGESTS[data.pss_mgf_digest]())
                pad = padding.PSS(mgf=mgf, salt_length=data.pss_salt_length)
            public_key.verify(data.signature, signed_bytes, pad, _DIGESTS[data.digest]())
    except InvalidSignature as exc:
        raise SignatureError("CMS signature does not verify") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CMSError(f"CMS signature cannot be checked: {exc}") from exc
    return cert


@dataclass(frozen=True)
class SignerReport:
    """One SignerInfo's verdict: its certificate when it verified, otherwise why not.

    ``capabilities`` are the SMIMECapabilities the signer announced (RFC 8551 §2.5.2), the
    algorithm names in its order of preference; a sender may use them to choose how to
    encrypt to this signer (:func:`choose_algorithms`).
    """

    certificate: x509.Certificate | None
    error: SipCertError | None = None
    capabilities: tuple[str, ...] = ()

    @property
    def verified(self) -> bool:
        return self.error is None and self.certificate is not None


@dataclass(frozen=True)
class SignedContent:
    """A checked SignedData: the signed bytes and every signer's verdict (RFC 5652 §5.6)."""

    content: bytes
    signers: tuple[SignerReport, ...]

    @property
    def verified(self) -> tuple[SignerReport, ...]:
        return tuple(report for report in self.signers if report.verified)

    def first_error(self) -> SipCertError:
        """The first signer's error, for a SignedData none of whose signers verified."""
        for report in self.signers:
            if report.error is not None:
                return report.error
        return SignatureError("no signer of the SignedData verified")


def verify_signed(
    signed_der: bytes,
    content: bytes | None = None,
    *,
    certificates: Sequence[x509.Certificate] = (),
    max_size: int = DEFAULT_MAX_DER,
) -> SignedContent:
    """Check every SignerInfo of a SignedData, detached (``content`` given) or attached.

    DER and BER (indefinite-length, chunked OCTET STRING) encodings are both read. Each
    signer is reported on its own; the caller decides which signer matters (in SIP, one
    that names the sender's AOR, draft §4.5). Raises :class:`CMSError` only for a
    structure that is malformed as a whole, or when content is missing or given twice.
    """
    _check_size(signed_der, "CMS SignedData", max_size)
    embedded, signers = _parse_signed(signed_der, certificates)
    if content is None:
        if embedded is None:
            raise CMSError("detached SignedData: the signed content is not in it")
        content = embedded
    elif embedded is not None:
        raise CMSError("SignedData carries its content; a detached signature was expected")
    reports = []
    for data in signers:
        if isinstance(data, SipCertError):
            reports.append(SignerReport(None, data))
            continue
        try:
            reports.append(SignerReport(_check_signer(data, content), None, data.capabilities))
        except (CMSError, SignatureError) as exc:
            reports.append(SignerReport(None, exc, data.capabilities))
    return SignedContent(content, tuple(reports))


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
    id-data. With several signers the first that verifies is returned
    (:func:`verify_signed` reports them all).

    Raises :class:`SignatureError` when the signature or digest does not match,
    :class:`CMSError` for a malformed or unsupported structure.
    """
    result = verify_signed(signature_der, content, certificates=certificates, max_size=max_size)
    verified = result.verified
    if not verified or verified[0].certificate is None:
        raise result.first_error()
    return verified[0].certificate


# --- EnvelopedData and AuthEnvelopedData --------------------------------------------------

#: Content encryption we make and open. GCM is AuthEnvelopedData (RFC 5083, RFC 5084), CBC
#: is EnvelopedData (RFC 3565), which RFC 3261 §23 peers expect.
ContentEncryption = Literal["aes128-gcm", "aes256-gcm", "aes128-cbc", "aes256-cbc"]
#: RSA key transport: RSAES-OAEP with SHA-256 (RFC 3560, RFC 4055 §4) or PKCS#1 v1.5.
RSAKeyTransport = Literal["rsa-oaep", "rsa-pkcs1v15"]
DecryptionKey = (
    rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | x25519.X25519PrivateKey | x448.X448PrivateKey
)

_CONTENT_CIPHERS: dict[str, tuple[Literal["gcm", "cbc"], int]] = {
    "aes128_gcm": ("gcm", 16),
    "aes192_gcm": ("gcm", 24),
    "aes256_gcm": ("gcm", 32),
    "aes128_cbc": ("cbc", 16),
    "aes192_cbc": ("cbc", 24),
    "aes256_cbc": ("cbc", 32),
}
_OUR_CIPHER_OIDS: dict[str, str] = {
    "aes128-gcm": "aes128_gcm",
    "aes256-gcm": "aes256_gcm",
    "aes128-cbc": "aes128_cbc",
    "aes256-cbc": "aes256_cbc",
}
_KEY_WRAPS = {"aes128_wrap": 16, "aes192_wrap": 24, "aes256_wrap": 32}
#: Key agreement schemes of RFC 5753 §7.1.4 (X9.63 KDF) and RFC 8418 §2.2 (HKDF): OID ->
#: (KDF, hash). The cofactor variants equal the standard ones on the prime curves, whose
#: cofactor is 1.
_KARI_SCHEMES: dict[str, tuple[Literal["x963", "hkdf"], type[hashes.HashAlgorithm]]] = {
    "1.3.133.16.840.63.0.2": ("x963", hashes.SHA1),  # dhSinglePass-stdDH-sha1kdf-scheme
    "1.3.132.1.11.0": ("x963", hashes.SHA224),
    "1.3.132.1.11.1": ("x963", hashes.SHA256),
    "1.3.132.1.11.2": ("x963", hashes.SHA384),
    "1.3.132.1.11.3": ("x963", hashes.SHA512),
    "1.3.133.16.840.63.0.3": ("x963", hashes.SHA1),  # dhSinglePass-cofactorDH-sha1kdf
    "1.3.132.1.14.0": ("x963", hashes.SHA224),
    "1.3.132.1.14.1": ("x963", hashes.SHA256),
    "1.3.132.1.14.2": ("x963", hashes.SHA384),
    "1.3.132.1.14.3": ("x963", hashes.SHA512),
    "1.2.840.113549.1.9.16.3.19": ("hkdf", hashes.SHA256),  # RFC 8418
    "1.2.840.113549.1.9.16.3.20": ("hkdf", hashes.SHA384),
    "1.2.840.113549.1.9.16.3.21": ("hkdf", hashes.SHA512),
}
_STD_DH_SHA256 = "1.3.132.1.11.1"
_STD_DH_SHA384 = "1.3.132.1.11.2"
_HKDF_SHA256 = "1.2.840.113549.1.9.16.3.19"
_X25519_OID = "1.3.101.110"
_X448_OID = "1.3.101.111"
_NAMES_OF_CIPHERS = {
    "aes128_ccm": "AES-128-CCM",
    "aes192_ccm": "AES-192-CCM",
    "aes256_ccm": "AES-256-CCM",
    "tripledes_3key": "3DES-CBC",
    "des": "DES-CBC",
    "rc2": "RC2-CBC",
}


class _GCMParameters(asn1_core.Sequence):  # type: ignore[misc]
    """GCMParameters of RFC 5084 §3.2."""

    _fields = [  # noqa: RUF012 - asn1crypto's declaration style
        ("aes_nonce", asn1_core.OctetString),
        ("aes_icvlen", asn1_core.Integer, {"default": 12}),
    ]


@dataclass(frozen=True)
class EnvelopeAlgorithms:
    """How :func:`encrypt_enveloped` encrypts: the content cipher and RSA key transport.

    EC recipients always get ECDH ephemeral-static key agreement (RFC 5753) with the X9.63
    SHA-256 KDF (SHA-384 on P-384) and the AES key wrap matching the content key size.
    """

    content: ContentEncryption = "aes128-gcm"
    rsa: RSAKeyTransport = "rsa-oaep"


#: S/MIME 4.0's mandatory-to-implement choice (RFC 8551 §2.3, §2.7): AES-128-GCM, OAEP.
DEFAULT_ALGORITHMS = EnvelopeAlgorithms()
#: What RFC 3261 §23 and RFC 5751 peers can open: AES-128-CBC, RSA PKCS#1 v1.5.
LEGACY_ALGORITHMS = EnvelopeAlgorithms("aes128-cbc", "rsa-pkcs1v15")


def choose_algorithms(
    capabilities: Sequence[str] | None = None, *, legacy: bool = False
) -> EnvelopeAlgorithms:
    """The algorithms to encrypt to a callee with, following RFC 8551 §2.7.1.

    * ``legacy`` (a configuration switch for a callee known to be an RFC 3261 S/MIME peer)
      gives :data:`LEGACY_ALGORITHMS`;
    * no announced capabilities gives :data:`DEFAULT_ALGORITHMS` (RFC 8551 §2.7.1.2: an
      unknown peer is taken to speak S/MIME 4.0, whose receivers must open AES-128-GCM);
    * announced SMIMECapabilities (RFC 8551 §2.5.2, :attr:`SignerReport.capabilities`)
      choose the first content cipher in the callee's order that we make, AES-128-CBC when
      it names none of ours (§2.7.1.1), and OAEP only when it names ``rsaes_oaep``.
    """
    if legacy:
        return LEGACY_ALGORITHMS
    if not capabilities:
        return DEFAULT_ALGORITHMS
    ours = {oid: name for name, oid in _OUR_CIPHER_OIDS.items()}
    content: ContentEncryption = "aes128-cbc"
    for capability in capabilities:
        if capability in ours:
            content = ours[capability]  # type: ignore[assignment]
            break
    return EnvelopeAlgorithms(
        content, "rsa-oaep" if "rsaes_oaep" in capabilities else "rsa-pkcs1v15"
    )


def choose_for_devices(
    announced: Sequence[Sequence[str] | None], *, legacy: bool = False
) -> EnvelopeAlgorithms:
    """One envelope's algorithms for several devices of a callee (draft §4.4).

    ``announced`` holds, per recipient device, the SMIMECapabilities it announced (None
    when unknown: RFC 8551 §2.7.1.2 then takes it to open the defaults). Each device's
    :func:`choose_algorithms` choice is made, and the envelope uses what every device can
    open: AES-GCM only when every choice is GCM, AES-256 only when every choice is 256,
    RSA-OAEP only when every choice is OAEP.
    """
    if legacy:
        return LEGACY_ALGORITHMS
    choices = [choose_algorithms(caps) for caps in announced] or [DEFAULT_ALGORITHMS]
    if all(c == choices[0] for c in choices):
        return choices[0]
    gcm = all(c.content.endswith("gcm") for c in choices)
    size = "aes256" if all(c.content.startswith("aes256") for c in choices) else "aes128"
    content: ContentEncryption = f"{size}-{'gcm' if gcm else 'cbc'}"  # type: ignore[assignment]
    oaep = all(c.rsa == "rsa-oaep" for c in choices)
    return EnvelopeAlgorithms(content, "rsa-oaep" if oaep else "rsa-pkcs1v15")


# DER writing for what we send. Building asn1crypto objects from dicts cost ~97% of the
# time of a protected body (docs/benchmarks.md), so the few structures we emit are written
# here directly (X.690 §8, §10: definite lengths, SET OF sorted); asn1crypto still parses
# everything we receive, and the unit and peer tests parse everything we send.


def _der(tag: int, content: bytes) -> bytes:
    return _der_header(tag, len(content)) + content


def _der_seq(*items: bytes) -> bytes:
    return _der(0x30, b"".join(items))


def _der_int(value: int) -> bytes:
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def _der_octets(value: bytes) -> bytes:
    return _der(0x04, value)


class _Frame:
    """What ``build`` writes from values of given lengths, kept as a ``bytes %`` template
    whose ``%b`` places take those values: :meth:`fill` writes exactly what ``build`` would.

    What a sender writes around its fresh values (digest, signature, ephemeral point,
    wrapped key) depends only on their lengths (DER lengths are definite), so the places
    are found by running ``build`` on all-zero values and, for each value in turn, with
    that one all 0xFF: the octets that differ are its place, which must be one run of its
    length, apart from the others; the template is then checked on other values. A
    value's place may come before an earlier one's (the signed attributes are a sorted
    SET), so the template's order is kept with it.
    """

    __slots__ = ("_order", "_template")

    def __init__(self, build: Callable[..., bytes], *sizes: int) -> None:
        zeros = [bytes(size) for size in sizes]
        low = build(*zeros)
        places: list[tuple[int, int]] = []
        for index, size in enumerate(sizes):
            high = build(*zeros[:index], b"\xff" * size, *zeros[index + 1 :])
            differ = [i for i, (a, b) in enumerate(zip(low, high, strict=True)) if a != b]
            if not differ or differ != list(range(differ[0], differ[0] + size)):
                raise CMSError("internal: a DER frame's structure depends on its values")
            places.append((differ[0], index))
        places.sort()
        pieces, start = [], 0
        for place, index in places:
            if place < start:
                raise CMSError("internal: a DER frame's structure depends on its values")
            pieces.append(low[start:place].replace(b"%", b"%%"))
            start = place + sizes[index]
        pieces.append(low[start:].replace(b"%", b"%%"))
        self._template = b"%b".join(pieces)
        order = tuple(index for _, index in places)
        self._order = None if order == tuple(range(len(sizes))) else order
        distinct = [bytes([index + 1]) * size for index, size in enumerate(sizes)]
        if self.fill(*distinct) != build(*distinct):
            raise CMSError("internal: a DER frame's structure depends on its values")

    def fill(self, *values: bytes) -> bytes:
        """``build(*values)``, for values of the lengths the frame was made for."""
        if self._order is None:
            return self._template % values
        return self._template % tuple([values[index] for index in self._order])


@functools.cache
def _der_oid(dotted: str) -> bytes:
    arcs = [int(arc) for arc in dotted.split(".")]
    body = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(chunk))
    return _der(0x06, bytes(body))


_OID = {
    "data": "1.2.840.113549.1.7.1",
    "enveloped_data": "1.2.840.113549.1.7.3",
    "authenticated_enveloped_data": "1.2.840.113549.1.9.16.1.23",
    "rsaes_pkcs1v15": "1.2.840.113549.1.1.1",
    "rsaes_oaep": "1.2.840.113549.1.1.7",
    "mgf1": "1.2.840.113549.1.1.8",
    "sha256": "2.16.840.1.101.3.4.2.1",
    "ec": "1.2.840.10045.2.1",
    "aes128_gcm": "2.16.840.1.101.3.4.1.6",
    "aes256_gcm": "2.16.840.1.101.3.4.1.46",
    "aes128_cbc": "2.16.840.1.101.3.4.1.2",
    "aes256_cbc": "2.16.840.1.101.3.4.1.42",
}
_NULL = b"\x05\x00"
#: RSAES-OAEP with SHA-256 and MGF1-SHA-256 (RFC 4055 §4.1; hash parameters absent, §2.1)
_OAEP_SHA256 = _der_seq(
    _der_oid(_OID["rsaes_oaep"]),
    _der_seq(
        _der(0xA0, _der_seq(_der_oid(_OID["sha256"]))),
        _der(0xA1, _der_seq(_der_oid(_OID["mgf1"]), _der_seq(_der_oid(_OID["sha256"])))),
    ),
)
_PKCS1V15 = _der_seq(_der_oid(_OID["rsaes_pkcs1v15"]), _NULL)


def _random(size: int) -> bytes:
    return os.urandom(size)


@_per_certificate(256)
def _recipient(cert: x509.Certificate) -> tuple[bytes, Any, bytes, Literal["ktri", "kari", ""]]:
    """(DER, public key, IssuerAndSerialNumber, RecipientInfo kind) of a recipient
    certificate; the kind is "" for a key that cannot receive.

    A UA encrypts to the same few devices again and again; these depend on the
    certificate alone (the key object is immutable), so they are made once per certificate.
    """
    ias = _der_seq(cert.issuer.public_bytes(), _der_int(cert.serial_number))
    public_key = cert.public_key()
    kind: Literal["ktri", "kari", ""] = ""
    if isinstance(public_key, rsa.RSAPublicKey):
        kind = "ktri"
    elif isinstance(
        public_key, ec.EllipticCurvePublicKey | x25519.X25519PublicKey | x448.X448PublicKey
    ):
        kind = "kari"
    return _cert_der(cert), public_key, ias, kind


@functools.lru_cache(maxsize=16)
def _shared_info(wrap: str, key_size: int, ukm: bytes | None) -> bytes:
    """DER of ECC-CMS-SharedInfo (RFC 5753 §7.2): the wrap algorithm, ukm, key size."""
    return _der_seq(
        _der_seq(_der_oid(_WRAP_OID[wrap])),
        b"" if ukm is None else _der(0xA0, _der_octets(ukm)),
        _der(0xA2, _der_octets((key_size * 8).to_bytes(4, "big"))),
    )


_WRAP_OID = {
    "aes128_wrap": "2.16.840.1.101.3.4.1.5",
    "aes192_wrap": "2.16.840.1.101.3.4.1.25",
    "aes256_wrap": "2.16.840.1.101.3.4.1.45",
}
_WRAP_NAMES = {oid: name for name, oid in _WRAP_OID.items()}


def _kdf(scheme: str, shared: bytes, wrap: str, ukm: bytes | None) -> bytes:
    kdf, hash_cls = _KARI_SCHEMES[scheme]
    size = _KEY_WRAPS[wrap]
    info = _shared_info(wrap, size, ukm)
    if kdf == "x963":
        return X963KDF(algorithm=hash_cls(), length=size, sharedinfo=info).derive(shared)
    return HKDF(algorithm=hash_cls(), length=size, salt=None, info=info).derive(shared)


#: The padding of each key transport we send (immutable, so made once).
_KEY_TRANSPORT_PADDINGS: dict[str, padding.AsymmetricPadding] = {
    "rsa-oaep": padding.OAEP(
        mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None
    ),
    "rsa-pkcs1v15": padding.PKCS1v15(),
}


def _ktri_der(ias: bytes, how: str, encrypted_key: bytes) -> bytes:
    """A KeyTransRecipientInfo (RFC 5652 §6.2.1) naming a certificate by issuer and serial
    (``ias``, its IssuerAndSerialNumber)."""
    algorithm = _OAEP_SHA256 if how == "rsa-oaep" else _PKCS1V15
    return _der_seq(b"\x02\x01\x00", ias, algorithm, _der_octets(encrypted_key))


@functools.lru_cache(maxsize=256)
def _ktri_frame(ias: bytes, how: str, size: int) -> _Frame:
    """The :class:`_Frame` of :func:`_ktri_der` to one certificate: every message to it
    repeats all but the encrypted key (``size`` octets, the modulus length)."""
    return _Frame(functools.partial(_ktri_der, ias, how), size)


def _ktri(ias: bytes, public_key: rsa.RSAPublicKey, cek: bytes, how: str) -> bytes:
    """The KeyTransRecipientInfo of :func:`_ktri_der` with ``cek`` encrypted afresh."""
    encrypted = public_key.encrypt(cek, _KEY_TRANSPORT_PADDINGS[how])
    return _ktri_frame(ias, how, len(encrypted)).fill(encrypted)


_ECDH = ec.ECDH()
_X962_UNCOMPRESSED = (serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
_RAW_PUBLIC = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _ephemeral(public_key: Any) -> tuple[Any, bytes, str, str]:
    """A fresh ephemeral key agreement with ``public_key``: (shared secret, the ephemeral
    public key as the originator carries it, its key OID, the RFC 5753/8418 scheme OID)."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        ephemeral: Any = ec.generate_private_key(public_key.curve)
        shared = ephemeral.exchange(_ECDH, public_key)
        scheme = _STD_DH_SHA384 if public_key.curve.key_size >= 384 else _STD_DH_SHA256
        return shared, ephemeral.public_key().public_bytes(*_X962_UNCOMPRESSED), _OID["ec"], scheme
    ephemeral = (
        x25519.X25519PrivateKey.generate()
        if isinstance(public_key, x25519.X25519PublicKey)
        else x448.X448PrivateKey.generate()
    )
    shared = ephemeral.exchange(public_key)
    oid = _X25519_OID if isinstance(public_key, x25519.X25519PublicKey) else _X448_OID
    # RFC 8551 §2.3: X25519 with HKDF-256 (RFC 8418 §2.2)
    return shared, ephemeral.public_key().public_bytes(*_RAW_PUBLIC), oid, _HKDF_SHA256


def _kari_der(ias: bytes, oid: str, scheme: str, wrap: str, point: bytes, wrapped: bytes) -> bytes:
    """A KeyAgreeRecipientInfo (RFC 5753 §3.1, RFC 8418 §2) to the certificate of
    IssuerAndSerialNumber ``ias``: the originator is the ephemeral public key ``point``,
    id-ecPublicKey with absent parameters (RFC 5753 §7.1.2; the curve is the recipient's)
    or id-X25519/id-X448; ``wrapped`` is the wrapped CEK."""
    originator = _der(0xA1, _der_seq(_der_oid(oid)) + _der(0x03, b"\x00" + point))
    return _der(
        0xA1,  # [1] IMPLICIT KeyAgreeRecipientInfo
        b"\x02\x01\x03"  # version 3
        + _der(0xA0, originator)
        + _kari_algorithm_der(scheme, wrap)
        + _der_seq(_der_seq(ias, _der_octets(wrapped))),
    )


@functools.lru_cache(maxsize=16)
def _kari_algorithm_der(scheme: str, wrap: str) -> bytes:
    """keyEncryptionAlgorithm of a kari: the scheme with the key wrap as parameter."""
    return _der_seq(_der_oid(scheme), _der_seq(_der_oid(_WRAP_OID[wrap])))


@functools.lru_cache(maxsize=256)
def _kari_frame(ias: bytes, oid: str, scheme: str, wrap: str, sizes: tuple[int, int]) -> _Frame:
    """The :class:`_Frame` of :func:`_kari_der` to one certificate: every message to it
    repeats all but the ephemeral point and the wrapped key (``sizes``)."""
    return _Frame(functools.partial(_kari_der, ias, oid, scheme, wrap), *sizes)


def _kari(ias: bytes, public_key: Any, cek: bytes) -> bytes:
    """The KeyAgreeRecipientInfo of :func:`_kari_der` with a fresh ephemeral key."""
    wrap = "aes128_wrap" if len(cek) == 16 else "aes256_wrap"
    shared, point, oid, scheme = _ephemeral(public_key)
    wrapped = keywrap.aes_key_wrap(_kdf(scheme, shared, wrap, None), cek)
    return _kari_frame(ias, oid, scheme, wrap, (len(point), len(wrapped))).fill(point, wrapped)


def _gcm_algorithm_der(cipher_name: str, nonce: bytes) -> bytes:
    """contentEncryptionAlgorithm of an AuthEnvelopedData: AES-GCM with a 16-octet tag
    (RFC 5084 §3.2)."""
    return _der_seq(_der_oid(_OID[cipher_name]), _der_seq(_der_octets(nonce), _der_int(16)))


@functools.cache
def _gcm_algorithm_frame(cipher_name: str) -> _Frame:
    """The :class:`_Frame` of :func:`_gcm_algorithm_der` around the 12-octet nonce."""
    return _Frame(functools.partial(_gcm_algorithm_der, cipher_name), 12)


_DATA_OID = _der_oid(_OID["data"])


def encrypt_enveloped(
    content: bytes,
    recipients: Sequence[x509.Certificate],
    *,
    cipher: Cipher | None = None,
    algorithms: EnvelopeAlgorithms = DEFAULT_ALGORITHMS,
) -> bytes:
    """DER of an envelope of ``content`` whose content key is wrapped for every recipient.

    One RecipientInfo per distinct certificate, whatever its key (draft §4.5: "encrypt the
    CEK with each of the certificates"): RSA keys get a KeyTransRecipientInfo (OAEP or
    PKCS#1 v1.5, ``algorithms.rsa``), EC, X25519 and X448 keys a KeyAgreeRecipientInfo
    (RFC 5753, RFC 8418). Every recipient is named by issuer and serial number (RFC 5652
    §6.2.1). AES-GCM gives an AuthEnvelopedData (RFC 5083, RFC 5084; 12-octet nonce,
    16-octet tag), AES-CBC an EnvelopedData. ``cipher`` ("aes128"/"aes256"), kept for
    older callers, only sets the key size.
    """
    if not recipients:
        raise CryptoError("cannot encrypt for no recipients")
    choice = algorithms.content
    if cipher is not None:
        if cipher not in ("aes128", "aes256"):
            raise CryptoError(f"unsupported cipher {cipher!r} (aes128 or aes256)")
        choice = f"{cipher}-{choice.rsplit('-', 1)[1]}"  # type: ignore[assignment]
    cipher_name = _OUR_CIPHER_OIDS[choice]
    mode, key_size = _CONTENT_CIPHERS[cipher_name]
    cek = _random(key_size)
    infos: list[bytes] = []
    all_ktri = True
    seen: set[bytes] = set()
    try:
        for cert in recipients:
            der, public_key, ias, kind = _recipient(cert)
            if der in seen:
                continue
            seen.add(der)
            if kind == "ktri":
                infos.append(_ktri(ias, public_key, cek, algorithms.rsa))
            elif kind == "kari":
                infos.append(_kari(ias, public_key, cek))
                all_ktri = False
            else:
                raise CryptoError(
                    f"recipient {cert.subject.rfc4514_string()} has a "
                    f"{type(public_key).__name__}: only RSA, EC, X25519 and X448 keys "
                    "can receive"
                )
        recipient_infos = _der(0x31, b"".join(sorted(infos)))  # DER SET OF, X.690 §11.6
        if mode == "gcm":
            nonce = _random(12)
            sealed = AESGCM(cek).encrypt(nonce, content, None)
            algorithm = _gcm_algorithm_frame(cipher_name).fill(nonce)
            encrypted = _der_seq(_DATA_OID, algorithm, _der(0x80, sealed[:-16]))
            body = _der_seq(b"\x02\x01\x00", recipient_infos, encrypted, _der_octets(sealed[-16:]))
            content_type = _OID["authenticated_enveloped_data"]
        else:
            iv = _random(16)
            padder = PKCS7(128).padder()
            padded = padder.update(content) + padder.finalize()
            encryptor = cipher_base.Cipher(block_ciphers.AES(cek), modes.CBC(iv)).encryptor()
            ciphertext = encryptor.update(padded) + encryptor.finalize()
            algorithm = _der_seq(_der_oid(_OID[cipher_name]), _der_octets(iv))
            encrypted = _der_seq(_DATA_OID, algorithm, _der(0x80, ciphertext))
            version = 0 if all_ktri else 2  # RFC 5652 §6.1
            body = _der_seq(_der_int(version), recipient_infos, encrypted)
            content_type = _OID["enveloped_data"]
        return _der_seq(_der_oid(content_type), _der(0xA0, body))
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CryptoError(f"CMS encryption failed: {exc}") from exc


# --- SignedData creation -----------------------------------------------------------------

#: What we announce (RFC 8551 §2.5.2), most preferred first: the content ciphers we open,
#: then the key transport and agreement we open. A peer following §2.7.1.1 then sends us
#: AES-128-GCM, which a cryptography-built SignedData (it lists only AES-CBC) would not get.
_OUR_CAPABILITIES = _der_seq(
    _der_seq(_der_oid(_OID["aes128_gcm"])),
    _der_seq(_der_oid(_OID["aes256_gcm"])),
    _der_seq(_der_oid(_OID["aes128_cbc"])),
    _der_seq(_der_oid(_OID["aes256_cbc"])),
    _der_seq(_der_oid(_OID["rsaes_oaep"])),
    _der_seq(_der_oid(_STD_DH_SHA256), _der_seq(_der_oid(_WRAP_OID["aes128_wrap"]))),
)


def _announce(capabilities: Sequence[str]) -> bytes:
    """An SMIMECapabilities value (RFC 8551 §2.5.2) listing ``capabilities`` in order."""
    unknown = [name for name in capabilities if name not in _OID]
    if unknown:
        raise CMSError(f"cannot announce unknown capabilities {unknown}")
    return _der_seq(*(_der_seq(_der_oid(_OID[name])) for name in capabilities))


_DIGEST_OIDS = {
    "sha256": "2.16.840.1.101.3.4.2.1",
    "sha384": "2.16.840.1.101.3.4.2.2",
    "sha512": "2.16.840.1.101.3.4.2.3",
}
_RSA_SIG_OIDS = {
    "sha256": "1.2.840.113549.1.1.11",
    "sha384": "1.2.840.113549.1.1.12",
    "sha512": "1.2.840.113549.1.1.13",
}
_ECDSA_SIG_OIDS = {
    "sha256": "1.2.840.10045.4.3.2",
    "sha384": "1.2.840.10045.4.3.3",
    "sha512": "1.2.840.10045.4.3.4",
}
_ATTR_OIDS = {
    "content_type": "1.2.840.113549.1.9.3",
    "message_digest": "1.2.840.113549.1.9.4",
    "signing_time": "1.2.840.113549.1.9.5",
    "smime_capabilities": "1.2.840.113549.1.9.15",
}


def _der_time(when: datetime.datetime) -> bytes:
    """signingTime: UTCTime until 2049, GeneralizedTime after (RFC 5652 §11.3)."""
    when = when.astimezone(datetime.UTC)
    if 1950 <= when.year < 2050:
        return _der(0x17, when.strftime("%y%m%d%H%M%SZ").encode())
    return _der(0x18, when.strftime("%Y%m%d%H%M%SZ").encode())


def _attribute(name: str, value: bytes) -> bytes:
    return _der_seq(_der_oid(_ATTR_OIDS[name]), _der(0x31, value))


def sign_detached(
    content: bytes,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    cert: x509.Certificate,
    *,
    digest: DigestName = "sha256",
    rsa_pss: bool = False,
    signing_time: datetime.datetime | None = None,
    capabilities: Sequence[str] | None = None,
) -> bytes:
    """DER of a detached SignedData over exactly ``content`` (RFC 5652 §5, RFC 8551 §3.5.3).

    ``capabilities`` replaces the SMIMECapabilities we announce (names as in
    :attr:`SignerReport.capabilities`: ``aes128_gcm``, ``aes256_cbc``, ``rsaes_oaep``...),
    for an agent that must not be sent what it cannot open; by default we announce all we
    open.

    The signature covers the bytes given, nothing is canonicalized. The signer certificate
    is included and named by issuer and serial number, so a receiver needs nothing else.
    Signed attributes: contentType, messageDigest, SMIMECapabilities (what we open, AES-GCM
    first, RFC 8551 §2.5.2) and, when ``signing_time`` is given, signingTime (§2.5.1; the
    caller passes its clock: this module reads none). RSA-PSS uses MGF1 with the same hash
    and a salt as long as the digest (RFC 4056 §3).
    """
    if digest not in _DIGESTS:
        raise CryptoError(f"unsupported digest {digest!r} (sha256, sha384 or sha512)")
    if isinstance(key, rsa.RSAPrivateKey):
        kind = "rsa-pss" if rsa_pss else "rsa"
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        if rsa_pss:
            raise CryptoError("RSA-PSS was requested but the signing key is an EC key")
        kind = "ecdsa"
    else:
        raise CryptoError(f"cannot sign CMS with a {type(key).__name__}: RSA or EC keys only")
    cert_der, _, ias, _ = _recipient(cert)
    announced = _OUR_CAPABILITIES if capabilities is None else _announce(capabilities)
    message_digest = _HASHLIB[digest](content).digest()
    if signing_time is None:
        values: tuple[bytes, ...] = (message_digest,)
    else:
        values = (message_digest, _der_time(signing_time))
    sizes = tuple(len(value) for value in values)
    try:
        # RFC 5652 §5.4: the attributes are signed as a SET
        to_sign = _attributes_frame(announced, sizes).fill(*values)
        if isinstance(key, rsa.RSAPrivateKey):
            signature = key.sign(to_sign, _RSA_PADDINGS[kind, digest], _DIGESTS[digest]())
        else:
            signature = key.sign(to_sign, _ECDSA[digest])
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CryptoError(f"CMS signing failed: {exc}") from exc
    frame = _signed_data_frame(cert_der, ias, digest, kind, announced, (*sizes, len(signature)))
    return frame.fill(*values, signature)


def _signed_attributes(announced: bytes, message_digest: bytes, *signing_time: bytes) -> bytes:
    """The signed attributes, a DER SET OF (X.690 §11.6): contentType, messageDigest,
    SMIMECapabilities (``announced``) and signingTime (the DER of the time), if given."""
    attributes = [
        _ATTRIBUTE_DATA,
        _attribute("message_digest", _der_octets(message_digest)),
        _attribute("smime_capabilities", announced),
    ]
    attributes += [_attribute("signing_time", value) for value in signing_time]
    return _der(0x31, b"".join(sorted(attributes)))


@functools.lru_cache(maxsize=64)
def _attributes_frame(announced: bytes, sizes: tuple[int, ...]) -> _Frame:
    """The :class:`_Frame` of :func:`_signed_attributes` around messageDigest and signingTime:
    their order in the SET is that of their lengths and OIDs, never of their values."""
    return _Frame(functools.partial(_signed_attributes, announced), *sizes)


def _signed_data_der(
    cert_der: bytes, ias: bytes, digest: str, kind: str, announced: bytes, *values: bytes
) -> bytes:
    """A detached SignedData with one signer (RFC 5652 §5.1, §5.3): ``values`` are the
    messageDigest, the signingTime if any, and the signature."""
    signer_head, signature_id, signed_head = _signer_parts(cert_der, ias, digest, kind)
    *attribute_values, signature = values
    signed_attrs = _signed_attributes(announced, *attribute_values)
    signer_info = _der_seq(
        signer_head, b"\xa0" + signed_attrs[1:], signature_id, _der_octets(signature)
    )
    signed_data = _der_seq(signed_head, _der(0x31, signer_info))
    return _der_seq(_SIGNED_DATA_OID, _der(0xA0, signed_data))


@functools.lru_cache(maxsize=64)
def _signed_data_frame(
    cert_der: bytes, ias: bytes, digest: str, kind: str, announced: bytes, sizes: tuple[int, ...]
) -> _Frame:
    """The :class:`_Frame` of :func:`_signed_data_der`: every SignedData of one signer repeats
    all but the messageDigest, signingTime and signature (``sizes``; an ECDSA signature's
    length varies by a few octets, so a signer has a few frames)."""
    return _Frame(
        functools.partial(_signed_data_der, cert_der, ias, digest, kind, announced), *sizes
    )


_HASHLIB = {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}
_SIGNED_DATA_OID = _der_oid("1.2.840.113549.1.7.2")
_ATTRIBUTE_DATA = _attribute("content_type", _DATA_OID)
#: RSA signature paddings by (kind, digest); PSS with a salt as long as the digest (RFC 4056 §3).
_RSA_PADDINGS: dict[tuple[str, str], padding.AsymmetricPadding] = {
    **{("rsa", name): padding.PKCS1v15() for name in _DIGESTS},
    **{
        ("rsa-pss", name): padding.PSS(mgf=padding.MGF1(hash_()), salt_length=hash_.digest_size)
        for name, hash_ in _DIGESTS.items()
    },
}


@functools.lru_cache(maxsize=64)
def _signer_parts(
    cert_der: bytes, ias: bytes, digest: str, kind: str
) -> tuple[bytes, bytes, bytes]:
    """What every SignedData of one signer repeats: (SignerInfo's version, sid and
    digestAlgorithm; its signatureAlgorithm; SignedData's fields up to its certificates).

    ``cert_der`` and ``ias`` (IssuerAndSerialNumber) are the ones :func:`_recipient` keeps,
    whose hash Python keeps too.
    """
    digest_id = _der_seq(_der_oid(_DIGEST_OIDS[digest]))
    if kind == "rsa-pss":
        signature_id = _der_seq(
            _der_oid("1.2.840.113549.1.1.10"),
            _der_seq(
                _der(0xA0, digest_id),
                _der(0xA1, _der_seq(_der_oid(_OID["mgf1"]), digest_id)),
                _der(0xA2, _der_int(_DIGESTS[digest].digest_size)),
            ),
        )
    elif kind == "rsa":
        signature_id = _der_seq(_der_oid(_RSA_SIG_OIDS[digest]), _NULL)
    else:
        signature_id = _der_seq(_der_oid(_ECDSA_SIG_OIDS[digest]))
    signer_head = _der_int(1) + ias + digest_id
    signed_head = _der_int(1) + _der(0x31, digest_id) + _der_seq(_DATA_OID) + _der(0xA0, cert_der)
    return signer_head, signature_id, signed_head


# --- receiving -----------------------------------------------------------------------------


def _load_envelope(der: bytes, max_size: int) -> tuple[Any, bool]:
    """(EnvelopedData or AuthEnvelopedData, is-authenticated) of a ContentInfo, DER or BER."""
    _check_size(der, "CMS EnvelopedData", max_size)
    try:
        info = asn1_cms.ContentInfo.load(der, strict=True)
        content_type = info["content_type"].native
        if content_type not in ("enveloped_data", "authenticated_enveloped_data"):
            raise CMSError(
                f"CMS ContentInfo holds {content_type!r}, expected 'enveloped_data' or "
                "'authenticated_enveloped_data'"
            )
        content = info["content"]
        authenticated = content_type == "authenticated_enveloped_data"
        # Force the parse of what every reader needs, so that malformed input is reported
        # as such here; the RecipientInfos of others are parsed only as far as their kind.
        content["version"].native  # noqa: B018
        for recipient_info in content["recipient_infos"]:
            recipient_info.name  # noqa: B018
        encrypted = content[
            "auth_encrypted_content_info" if authenticated else "encrypted_content_info"
        ]
        encrypted["content_type"].native  # noqa: B018
        encrypted["content_encryption_algorithm"].native  # noqa: B018
        if authenticated:
            content["mac"].native  # noqa: B018
    except _ASN1_ERRORS as exc:
        raise CMSError(f"malformed CMS enveloped_data structure: {exc}") from exc
    return content, authenticated


def _octets(value: Any) -> bytes:
    """The bytes of an OCTET STRING, primitive or BER-constructed (chunked)."""
    native = value.native
    if isinstance(native, bytes):
        return native
    return bytes(value.contents if native is None else value.__bytes__())


def _names_us(rid: Any, ours: _CertIds) -> bool:
    """True when a recipient identifier names our certificate (RFC 5652 §6.2.1, §6.2.2)."""
    if rid.name == "issuer_and_serial_number":
        ias = rid.chosen
        return _issuer_serial_match(ours, ias["issuer"], ias["serial_number"].native)
    key_id = rid.chosen.native
    if isinstance(key_id, dict):  # RecipientKeyIdentifier of a kari
        key_id = key_id["subject_key_identifier"]
    return key_id in ours.key_ids()


def _our_recipient_info(envelope: Any, cert: x509.Certificate) -> tuple[Any, Any] | None:
    """(RecipientInfo, RecipientEncryptedKey or None) of the first entry naming ``cert``.

    kekri, pwri and ori entries are skipped: they are for other recipients and never
    stop us from reading ours (RFC 5652 §6.2: "any of the RecipientInfo"). The entries
    after ours are not read: the first match is the one used.
    """
    ours = _our_ids(cert)
    for info in envelope["recipient_infos"]:
        if info.name == "ktri":
            if _names_us(info.chosen["rid"], ours):
                return info, None
        elif info.name == "kari":
            for rek in info.chosen["recipient_encrypted_keys"]:
                if _names_us(rek["rid"], ours):
                    return info, rek
    return None


def _ias_of(rid: Any) -> Any:
    return rid.chosen if rid.name == "issuer_and_serial_number" else None


def _oaep_parameters(algorithm: Any, encoding: bytes) -> tuple[str, str, bytes]:
    """(hash, MGF1 hash, label) of an RSAES-OAEP AlgorithmIdentifier (RFC 4055 §4.1).

    A sender uses the same parameters in every message: the ones read are remembered by
    SHA-256 of the AlgorithmIdentifier's DER, ``encoding`` (asn1crypto re-encodes a value
    whose DEFAULT fields it filled in, slowly); unsupported ones raise every time.
    """
    key = b"oaep" + hashlib.sha256(encoding).digest()
    hit: tuple[str, str, bytes] | None = _ids_cache.get(key)
    if hit is not None:
        return hit
    params = algorithm["parameters"]
    if params is None or params.native is None:
        params = asn1_algos.RSAESOAEPParams({})
    hash_name = params["hash_algorithm"]["algorithm"].native
    mgf = params["mask_gen_algorithm"]
    mgf_hash = mgf["parameters"]["algorithm"].native
    if mgf["algorithm"].native != "mgf1" or hash_name not in _MGF_DIGESTS:
        raise CMSError(f"RSA-OAEP with {hash_name} / {mgf['algorithm'].native} is not supported")
    if mgf_hash not in _MGF_DIGESTS:
        raise CMSError(f"RSA-OAEP with MGF1-{mgf_hash} is not supported")
    label = bytes(params["p_source_algorithm"]["parameters"].native or b"")
    hit = (str(hash_name), str(mgf_hash), label)
    _ids_cache.put(key, hit)
    return hit


def _key_transport(algorithm: Callable[[], Any], encoding: bytes) -> padding.OAEP | None:
    """The OAEP padding of a keyEncryptionAlgorithm, None for PKCS#1 v1.5 (RFC 3560).

    ``encoding`` is its DER, ``algorithm`` gives its asn1crypto value (only when not yet
    remembered: a sender repeats it in every message, so the lean path need not parse it);
    unsupported ones raise every time.
    """
    key = _encoding_key(b"ktri", encoding)
    hit: tuple[padding.OAEP | None] | None = _ids_cache.get(key)
    if hit is not None:
        return hit[0]
    value = algorithm()
    name = value["algorithm"].native
    pad = None
    if name == "rsaes_oaep":
        hash_name, mgf_hash, label = _oaep_parameters(value, encoding)
        pad = padding.OAEP(
            mgf=padding.MGF1(_MGF_DIGESTS[mgf_hash]()),
            algorithm=_MGF_DIGESTS[hash_name](),
            label=label or None,
        )
    elif name != "rsaes_pkcs1v15":
        raise CMSError(f"key transport {name!r} is not supported (RSA PKCS#1 v1.5 or OAEP)")
    _ids_cache.put(key, (pad,))
    return pad


def _unwrap_ktri(
    algorithm: Callable[[], Any],
    encoding: bytes,
    encrypted: bytes,
    key: DecryptionKey,
    key_size: int,
) -> bytes:
    """The content key from a KeyTransRecipientInfo (RFC 5652 §6.2.1, RFC 3560).

    ``algorithm`` gives its keyEncryptionAlgorithm (``encoding`` its DER, see
    :func:`_key_transport`), ``encrypted`` is its encryptedKey.
    """
    if not isinstance(key, rsa.RSAPrivateKey):
        raise DecryptionError(
            "our RecipientInfo uses RSA key transport but our key is not an RSA key"
        )
    pad = _key_transport(algorithm, encoding)
    if pad is not None:
        try:
            return key.decrypt(encrypted, pad)
        except ValueError as exc:
            raise DecryptionError("RSA-OAEP key transport does not decrypt with our key") from exc
    try:
        cek = key.decrypt(encrypted, padding.PKCS1v15())
    except ValueError:
        cek = b""
    if len(cek) != key_size:
        # RFC 3218 §2.3: a random key instead of an error, so a padding oracle learns nothing;
        # the content then fails to decrypt or authenticate.
        cek = _random(key_size)
    return cek


def _agree(key: DecryptionKey, originator: Any) -> bytes:
    """Z, the ECDH shared secret with the originator's ephemeral key (RFC 5753 §3.1.2)."""
    if originator.name != "originator_key":
        raise CMSError("key agreement with a static originator certificate is not supported")
    info = originator.chosen
    oid = info["algorithm"]["algorithm"].dotted
    point = bytes(info["public_key"].contents[1:])  # BIT STRING: skip the unused-bits octet
    return _agree_with(key, oid, point)


def _agree_with(key: DecryptionKey, oid: str, point: bytes) -> bytes:
    """Z with the originator's public key ``point``, of algorithm ``oid`` (dotted)."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if oid != "1.2.840.10045.2.1":
            raise DecryptionError(f"originator key {oid} does not match our EC key")
        peer = ec.EllipticCurvePublicKey.from_encoded_point(key.curve, point)
        return key.exchange(ec.ECDH(), peer)
    if isinstance(key, x25519.X25519PrivateKey) and oid == _X25519_OID:
        return key.exchange(x25519.X25519PublicKey.from_public_bytes(point))
    if isinstance(key, x448.X448PrivateKey) and oid == _X448_OID:
        return key.exchange(x448.X448PublicKey.from_public_bytes(point))
    raise DecryptionError(
        f"our RecipientInfo uses key agreement with a {oid} key, which our key cannot do"
    )


def _kari_algorithms(value: Callable[[], Any], encoding: bytes) -> tuple[str, str]:
    """(scheme OID, key wrap name) of a kari keyEncryptionAlgorithm (RFC 5753 §7.1.5).

    The same in every message of a sender: remembered by the AlgorithmIdentifier's DER
    (``encoding``; ``value`` gives its asn1crypto value, only when not yet remembered) once
    supported; unsupported ones raise every time.
    """
    key = _encoding_key(b"kari", encoding)
    hit: tuple[str, str] | None = _ids_cache.get(key)
    if hit is not None:
        return hit
    algorithm = value()
    scheme = algorithm["algorithm"].dotted
    if scheme not in _KARI_SCHEMES:
        raise CMSError(f"key agreement scheme {scheme} is not supported (RFC 5753/8418 ECDH)")
    wrap_alg = asn1_algos.AlgorithmIdentifier.load(algorithm["parameters"].dump())
    wrap = _WRAP_NAMES.get(wrap_alg["algorithm"].dotted, wrap_alg["algorithm"].dotted)
    if wrap not in _KEY_WRAPS:
        raise CMSError(f"key wrap {wrap!r} is not supported (AES key wrap, RFC 3394)")
    hit = (str(scheme), str(wrap))
    _ids_cache.put(key, hit)
    return hit


def _unwrap_kari(kari: Any, rek: Any, key: DecryptionKey) -> bytes:
    """The content key from a KeyAgreeRecipientInfo (RFC 5753 §3.1.2, RFC 8418 §2)."""
    algorithm = kari["key_encryption_algorithm"]
    scheme, wrap = _kari_algorithms(lambda: algorithm, algorithm.dump())
    ukm_value = kari["ukm"]
    ukm = None if ukm_value.native is None else bytes(ukm_value.native)
    shared = _agree(key, kari["originator"])
    return _kari_cek(scheme, wrap, shared, ukm, bytes(rek["encrypted_key"].native))


def _kari_cek(scheme: str, wrap: str, shared: bytes, ukm: bytes | None, wrapped: bytes) -> bytes:
    """The content key: the KEK from Z by the scheme's KDF, then AES key unwrap (RFC 3394)."""
    kek = _kdf(scheme, shared, wrap, ukm)
    try:
        return keywrap.aes_key_unwrap(kek, wrapped)
    except keywrap.InvalidUnwrap as exc:
        raise DecryptionError("the key agreement's wrapped key does not unwrap") from exc


def _content_cipher(encrypted_info: Any, authenticated: bool) -> tuple[str, str, int, Any]:
    """(asn1crypto name, mode, key size, parameters) of the content encryption."""
    algorithm = encrypted_info["content_encryption_algorithm"]
    name = algorithm["algorithm"].native
    kind = "AuthEnvelopedData" if authenticated else "EnvelopedData"
    if name not in _CONTENT_CIPHERS:
        shown = _NAMES_OF_CIPHERS.get(name, name)
        raise CMSError(f"{kind} with {shown} is not supported (AES-128/192/256 GCM or CBC)")
    mode, size = _CONTENT_CIPHERS[name]
    if (mode == "gcm") != authenticated:
        raise CMSError(f"{kind} with {name} is not supported: GCM belongs in AuthEnvelopedData")
    return str(name), mode, size, algorithm["parameters"]


# --- the lean paths: DER of the usual shapes, read without asn1crypto -----------------------
#
# Every message a SIP UA receives is one of a few shapes: a DER AuthEnvelopedData or
# EnvelopedData to ktri/kari recipients, and a DER SignedData with one signer. For those,
# proto.der slices the encoding and the values go to the same checks and primitives as the
# asn1crypto path; the parts a repeated sender sends identically in every message (its
# SignerIdentifier, algorithm identifiers) are still read by asn1crypto, once per encoding
# (_asn1_once). Anything else -- BER, an unusual or unsupported shape, and *every* failure,
# of parsing or of cryptography -- raises NotLean or a SipCertError and the asn1crypto path
# reads the input again from the start: its answer (and its precise error) is the answer.
# The lean path only ever answers with a success the asn1crypto path gives too
# (tests/unit/proto/test_cms_lean.py checks that on the peers' corpus and on mutations).

#: What the lean paths fall back on: their own signal, our errors, asn1crypto's and
#: cryptography's exceptions (ValueError for a bad point or nonce, among others).
_LEAN_FALLBACK = (NotLean, SipCertError, UnsupportedAlgorithm, *_ASN1_ERRORS)


def _oid_contents(names: dict[str, str], wanted: Sequence[str] | None = None) -> dict[bytes, str]:
    """{OID content octets: asn1crypto name} for asn1crypto's map ``names`` (dotted -> name)."""
    return {
        _der_oid(dotted)[2:]: name
        for dotted, name in names.items()
        if wanted is None or name in wanted
    }


#: Content types by their DER, with asn1crypto's names (so both paths name them alike).
_LEAN_CONTENT_TYPES = _oid_contents(asn1_cms.ContentType._map)
_LEAN_CIPHERS = _oid_contents(asn1_algos.EncryptionAlgorithmId._map, tuple(_CONTENT_CIPHERS))
_ATTR_CONTENT_TYPE = _der_oid("1.2.840.113549.1.9.3")[2:]
_ATTR_MESSAGE_DIGEST = _der_oid("1.2.840.113549.1.9.4")[2:]
_ATTR_CAPABILITIES = _der_oid("1.2.840.113549.1.9.15")[2:]
_ATTR_SIGNING_TIME = _der_oid("1.2.840.113549.1.9.5")[2:]
#: Attribute OIDs whose content octets are well formed (checked once, here), with signingTime.
_ATTR_KNOWN = frozenset(
    (_ATTR_CONTENT_TYPE, _ATTR_MESSAGE_DIGEST, _ATTR_CAPABILITIES, _ATTR_SIGNING_TIME)
)
_ORIGINATOR_KEYS = {_der_oid(oid)[2:]: oid for oid in ("1.2.840.10045.2.1", _X25519_OID, _X448_OID)}

#: asn1crypto objects of the per-sender constant parts, parsed in full, by type and DER.
_asn1_cache = _LRU(512)


def _asn1_once(spec: Any, encoding: bytes) -> Any:
    """``spec.load(encoding)`` parsed in full, remembered by type and ``encoding``.

    For what a sender repeats in every message (a SignerIdentifier, an AlgorithmIdentifier):
    the same encoding parses to the same value; only successes are kept.
    """
    key = _encoding_key(spec.__name__.encode() + b"\0", encoding)
    hit = _asn1_cache.get(key)
    if hit is None:
        hit = spec.load(encoding, strict=True)
        hit.native  # noqa: B018 - parse in full now, so errors surface here and not later
        _asn1_cache.put(key, hit)
    return hit


def _lean_oid(data: bytes, item: der.TLV, names: dict[bytes, str]) -> str:
    if item.tag != 0x06:
        raise NotLean
    name = names.get(data[item.content : item.end])
    if name is None:
        raise NotLean
    return name


def _lean_bytes(data: bytes, item: der.TLV, tag: int = 0x04) -> bytes:
    if item.tag != tag:
        raise NotLean
    return data[item.content : item.end]


def _lean_valid_oid(body: bytes) -> None:
    """An OBJECT IDENTIFIER's content must be well formed (X.690 §8.19) to be read lean."""
    if not body or body[-1] & 0x80 or body[0] == 0x80:
        raise NotLean
    for previous, octet in itertools.pairwise(body):
        if octet == 0x80 and not previous & 0x80:
            raise NotLean  # a sub-identifier with a leading 0x80: not minimal


def _lean_content_info(data: bytes, names: tuple[str, ...]) -> tuple[str, der.TLV]:
    """(content type, the SEQUENCE inside [0]) of a DER ContentInfo filling ``data``."""
    top = der.read_tlv(data, 0, len(data))
    if top.tag != 0x30 or top.end != len(data):
        raise NotLean
    fields = der.children(data, top)
    if len(fields) != 2:
        raise NotLean
    kind = _lean_oid(data, fields[0], _LEAN_CONTENT_TYPES)
    if kind not in names:
        raise NotLean
    return kind, der.one(data, der.expect(fields[1], 0xA0), 0x30)


def _lean_names_us(data: bytes, rid: der.TLV, ours: _CertIds, *, kari: bool) -> bool:
    """:func:`_names_us` on DER: issuer and serial (byte-equal issuer), or a key identifier."""
    if rid.tag == 0x30:
        issuer, serial = der.children(data, rid)
        der.expect(issuer, 0x30)  # a Name, even when the serial is not ours (asn1crypto's rule)
        our_serial, our_issuer = ours.issuer_serial()
        if der.integer(data, serial) != our_serial:
            return False
        if data[issuer.start : issuer.end] == our_issuer:
            return True
        raise NotLean  # our serial, another encoding of a Name: RFC 5280 §7.1 is asn1crypto's
    if kari:
        key_id = _lean_bytes(data, der.one(data, der.expect(rid, 0xA0), 0x04))
    else:
        key_id = _lean_bytes(data, rid, 0x80)
    return key_id in ours.key_ids()


class _LeanEntry(NamedTuple):
    """Our RecipientInfo, as DER slices: kind, keyEncryptionAlgorithm, encrypted key."""

    kind: Literal["ktri", "kari"]
    algorithm: bytes
    encrypted_key: bytes
    ukm: bytes | None = None
    originator_oid: str = ""
    originator_point: bytes = b""


def _lean_kari(data: bytes, info: der.TLV, ours: _CertIds) -> _LeanEntry | None:
    """A KeyAgreeRecipientInfo (RFC 5652 §6.2.2) with an ephemeral originator key.

    Another device's entry is read only up to its RecipientEncryptedKeys, as the asn1crypto
    path reads it.
    """
    fields = der.children(data, info)
    if len(fields) not in (4, 5):
        raise NotLean
    algorithm, keys = der.expect(fields[-2], 0x30), fields[-1]
    wrapped = None
    for rek in der.children(data, der.expect(keys, 0x30)):
        rid, encrypted = der.children(data, der.expect(rek, 0x30))
        if _lean_names_us(data, rid, ours, kari=True):
            wrapped = _lean_bytes(data, encrypted)
            break
    if wrapped is None:
        return None
    if der.integer(data, fields[0]) != 3:
        raise NotLean
    originator = der.one(data, der.expect(fields[1], 0xA0), 0xA1)  # originatorKey only
    key_alg, point = der.children(data, originator)
    key_alg_fields = der.children(data, der.expect(key_alg, 0x30))
    if not key_alg_fields:
        raise NotLean
    oid = _lean_oid(data, key_alg_fields[0], _ORIGINATOR_KEYS)
    bits = _lean_bytes(data, point, 0x03)
    if not bits or bits[0] != 0:
        raise NotLean
    ukm = None
    if len(fields) == 5:
        ukm = _lean_bytes(data, der.one(data, der.expect(fields[2], 0xA1), 0x04))
    return _LeanEntry("kari", data[algorithm.start : algorithm.end], wrapped, ukm, oid, bits[1:])


#: RecipientInfo CHOICE (RFC 5652 §6.2): ktri, kari [1], kekri [2], pwri [3], ori [4].
_RECIPIENT_INFO_TAGS = frozenset((0x30, 0xA1, 0xA2, 0xA3, 0xA4))


def _lean_recipient(data: bytes, infos: der.TLV, ours: _CertIds) -> _LeanEntry:
    """Our entry: the first RecipientInfo naming us. Those after it are not read (their
    framing is), those before it only as far as their identifiers, as on the asn1crypto path.
    """
    entries = der.children(data, der.expect(infos, 0x31))
    for info in entries:
        if info.tag not in _RECIPIENT_INFO_TAGS:
            raise NotLean  # asn1crypto resolves every entry's kind, ours or not
    for info in entries:
        if info.tag == 0x30:  # ktri
            fields = der.children(data, info)
            if len(fields) != 4:
                raise NotLean
            if _lean_names_us(data, fields[1], ours, kari=False):
                if der.integer(data, fields[0]) not in (0, 2):
                    raise NotLean
                algorithm = der.expect(fields[2], 0x30)
                encrypted = _lean_bytes(data, fields[3])
                return _LeanEntry("ktri", data[algorithm.start : algorithm.end], encrypted)
        elif info.tag == 0xA1:
            entry = _lean_kari(data, info, ours)
            if entry is not None:
                return entry
        # kekri, pwri, ori: others', skipped
    raise NotLean  # the asn1crypto path says "not a recipient", precisely


def _lean_decrypt(data: bytes, key: DecryptionKey, cert: x509.Certificate) -> bytes:
    """:func:`decrypt_enveloped` for a DER envelope of the usual shape; NotLean otherwise."""
    kind, body = _lean_content_info(data, ("enveloped_data", "authenticated_enveloped_data"))
    authenticated = kind == "authenticated_enveloped_data"
    fields = der.children(data, body)
    if len(fields) < 3 or der.integer(data, fields[0]) not in (0, 2, 3, 4):
        raise NotLean
    entry = _lean_recipient(data, fields[1], _our_ids(cert))
    info_fields = der.children(data, der.expect(fields[2], 0x30))
    if len(info_fields) != 3 or _lean_oid(data, info_fields[0], _LEAN_CONTENT_TYPES) != "data":
        raise NotLean
    algorithm = der.children(data, der.expect(info_fields[1], 0x30))
    if len(algorithm) != 2:
        raise NotLean
    name = _lean_oid(data, algorithm[0], _LEAN_CIPHERS)
    mode, key_size = _CONTENT_CIPHERS[name]
    if (mode == "gcm") != authenticated:
        raise NotLean
    ciphertext = _lean_bytes(data, info_fields[2], 0x80)
    rest = fields[3:]
    aad, tag = b"", b""
    if authenticated:
        if rest and rest[0].tag == 0xA1:
            aad = b"\x31" + data[rest[0].start + 1 : rest[0].end]  # RFC 5083 §2.2
            rest = rest[1:]
        if len(rest) != 1:
            raise NotLean
        tag = _lean_bytes(data, rest[0])
    elif rest:
        raise NotLean
    _check_key_matches(key, cert)
    if entry.kind == "ktri":
        cek = _unwrap_ktri(
            lambda: _asn1_once(asn1_cms.KeyEncryptionAlgorithm, entry.algorithm),
            entry.algorithm,
            entry.encrypted_key,
            key,
            key_size,
        )
    else:
        scheme, wrap = _kari_algorithms(
            lambda: _asn1_once(asn1_cms.KeyEncryptionAlgorithm, entry.algorithm), entry.algorithm
        )
        shared = _agree_with(key, entry.originator_oid, entry.originator_point)
        cek = _kari_cek(scheme, wrap, shared, entry.ukm, entry.encrypted_key)
    if len(cek) != key_size:
        raise NotLean
    if mode == "gcm":
        params = der.children(data, der.expect(algorithm[1], 0x30))
        if len(params) not in (1, 2):
            raise NotLean
        nonce = _lean_bytes(data, params[0])
        tag_length = der.integer(data, params[1]) if len(params) == 2 else 12
        if tag_length not in (12, 13, 14, 15, 16) or len(tag) != tag_length:
            raise NotLean
        return _open_gcm(cek, nonce, tag, aad, ciphertext)
    iv = _lean_bytes(data, algorithm[1])
    if len(iv) != 16 or len(ciphertext) % 16:
        raise NotLean
    return _open_cbc(cek, iv, ciphertext)


def _lean_attributes(
    data: bytes, attrs: der.TLV, holes: list[tuple[int, int]]
) -> tuple[bytes | None, str | None, tuple[str, ...]]:
    """(messageDigest, contentType, SMIMECapabilities) of the signed attributes (RFC 5652 §11).

    Adds to ``holes`` the content of the signingTime value and then of the messageDigest
    value: octets this reader never reads, or takes as they are (:class:`_SignedLayout`).
    """
    message_digest: bytes | None = None
    digest_at: tuple[int, int] | None = None
    content_type: str | None = None
    capabilities: list[der.TLV] = []
    seen: set[bytes] = set()
    for attr in der.children(data, attrs):
        kind, values = der.children(data, der.expect(attr, 0x30))
        oid = _lean_bytes(data, kind, 0x06)
        if oid not in _ATTR_KNOWN:
            _lean_valid_oid(oid)
        items = der.children(data, der.expect(values, 0x31))
        if oid in (_ATTR_MESSAGE_DIGEST, _ATTR_CONTENT_TYPE, _ATTR_CAPABILITIES):
            if oid in seen or len(items) != 1:
                raise NotLean  # asn1crypto's path names the duplicate precisely
            seen.add(oid)
        if oid == _ATTR_MESSAGE_DIGEST:
            message_digest = _lean_bytes(data, items[0])
            digest_at = (items[0].content, items[0].end)
        elif oid == _ATTR_SIGNING_TIME and len(items) == 1:
            holes.append((items[0].content, items[0].end))  # framed, never read
        elif oid == _ATTR_CONTENT_TYPE:
            content_type = _lean_oid(data, items[0], _LEAN_CONTENT_TYPES)
        elif oid == _ATTR_CAPABILITIES:
            capabilities.append(der.expect(items[0], 0x30))
    announced: tuple[str, ...] = ()
    if capabilities:
        value = data[capabilities[0].start : capabilities[0].end]
        announced = _capability_names(value, lambda: asn1_cms.SMIMECapabilites.load(value))
    if digest_at is not None:
        holes.append(digest_at)
    return message_digest, content_type, announced


def _lean_find_signer(
    sid: bytes, embedded: Sequence[bytes], extra: Sequence[x509.Certificate]
) -> bytes:
    """:func:`_find_signer`, remembered by the SignerIdentifier's DER and the candidates.

    Which candidate a SignerIdentifier names depends on those encodings alone; a repeated
    sender sends the same ones in every message.
    """
    digest = hashlib.sha256(len(embedded).to_bytes(4, "big") + sid)
    for candidate in embedded:
        digest.update(hashlib.sha256(candidate).digest())
    for cert in extra:
        digest.update(hashlib.sha256(_cert_der(cert)).digest())
    key = b"signer" + digest.digest()
    hit: bytes | None = _ids_cache.get(key)
    if hit is None:
        hit = _find_signer(_asn1_once(asn1_cms.SignerIdentifier, sid), embedded, extra)
        _ids_cache.put(key, hit)
    return hit


def _lean_signer_algorithms(
    digest_alg: bytes, signature_alg: bytes
) -> tuple[str, Literal["pkcs1v15", "pss", "ecdsa", "ed25519"], int, str]:
    """(digest, scheme, PSS salt length, MGF1 digest) of a SignerInfo's two algorithms.

    Their DER, as a sender repeats them in every message, gives the same answer each time:
    remembered by the two encodings once supported; unsupported ones raise every time.
    """
    key = _encoding_key(b"sigalgs", len(digest_alg).to_bytes(4, "big") + digest_alg + signature_alg)
    hit = _ids_cache.get(key)
    if hit is None:
        digest = _digest_name(_asn1_once(asn1_algos.DigestAlgorithm, digest_alg), "SignerInfo")
        scheme = _signature_scheme(
            _asn1_once(asn1_algos.SignedDigestAlgorithm, signature_alg), digest
        )
        hit = (digest, *scheme)
        _ids_cache.put(key, hit)
    return hit  # type: ignore[no-any-return]


def _lean_signer(
    data: bytes,
    signer: der.TLV,
    econtent_type: str,
    embedded: Sequence[bytes],
    extra: Sequence[x509.Certificate],
    holes: list[tuple[int, int]],
) -> tuple[_SignerData, _SignerHoles]:
    """:func:`_signer_data` on the DER of one SignerInfo (RFC 5652 §5.3), and where its
    per-message values are (``holes`` gets them too, :class:`_SignedLayout`)."""
    fields = der.children(data, der.expect(signer, 0x30))
    if len(fields) not in (5, 6, 7):
        raise NotLean
    der.integer(data, fields[0])
    sid, digest_alg = fields[1], der.expect(fields[2], 0x30)
    if sid.tag not in (0x30, 0x80):
        raise NotLean
    rest = fields[3:]
    attrs = None
    if rest[0].tag == 0xA0:
        attrs, rest = rest[0], rest[1:]
    if len(rest) == 3:
        der.expect(rest[2], 0xA1)  # unsignedAttrs: not read, as on the asn1crypto path
    elif len(rest) != 2:
        raise NotLean
    signature_alg = der.expect(rest[0], 0x30)
    signature = _lean_bytes(data, rest[1])
    certificate_der = _lean_find_signer(data[sid.start : sid.end], embedded, extra)
    digest, scheme, salt, mgf_digest = _lean_signer_algorithms(
        data[digest_alg.start : digest_alg.end], data[signature_alg.start : signature_alg.end]
    )
    signed_attrs: bytes | None = None
    message_digest: bytes | None = None
    attr_content_type: str | None = None
    capabilities: tuple[str, ...] = ()
    attrs_at: tuple[int, int] | None = None
    digest_at: tuple[int, int] | None = None
    if attrs is not None:
        signed_attrs = b"\x31" + data[attrs.start + 1 : attrs.end]  # RFC 5652 §5.4
        attrs_at = (attrs.start + 1, attrs.end)
        message_digest, attr_content_type, capabilities = _lean_attributes(data, attrs, holes)
        if message_digest is not None:
            digest_at = holes[-1]
    signature_at = (rest[1].content, rest[1].end)
    holes.append(signature_at)
    places = _SignerHoles(signature_at, attrs_at, digest_at)
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
        signature=signature,
        capabilities=capabilities,
    ), places


class _SignerHoles(NamedTuple):
    """Where one SignerInfo's per-message values are: (start, end) of the signature value,
    of the signed attributes' content and of the messageDigest value."""

    signature: tuple[int, int]
    attrs: tuple[int, int] | None
    digest: tuple[int, int] | None


class _SignedLayout(NamedTuple):
    """A detached DER SignedData the lean reader read, less what changes per message.

    A sender's SignedData repeat every octet but the contents of a few primitive values:
    each signer's signature and messageDigest, and signingTime. The reader takes the first
    two as they are and never reads the third, and the lengths and tags around them are
    outside these holes, so another SignedData of the same length whose every octet outside
    the holes is the same reads to the same result with the holes' octets put in. That
    makes :func:`_lean_parse_signed` a few byte comparisons for a repeated sender; every
    check of :func:`_check_signer` still runs on the values of the message.
    """

    segments: tuple[tuple[int, bytes], ...]  # (offset, octets) of everything but the holes
    signers: tuple[tuple[_SignerData, _SignerHoles], ...]


#: Layouts by (length, first octets) of the SignedData: see :class:`_SignedLayout`.
_signed_layouts = _LRU(128)
#: Octets of the key of :data:`_signed_layouts`; no hole starts this early in a SignedData.
_LAYOUT_KEY = 64
#: Largest SignedData whose layout is kept (a SIP body's is a few kB), so the cache stays
#: small whatever senders send.
_MAX_LAYOUT = 16384


def _layout_key(data: bytes) -> bytes:
    return b"sd" + len(data).to_bytes(4, "big") + data[:_LAYOUT_KEY]


def _remember_layout(
    data: bytes, signers: Sequence[tuple[_SignerData, _SignerHoles]], holes: list[tuple[int, int]]
) -> None:
    """Keep the layout of ``data`` (a detached SignedData just read, all its signers
    usable); ``holes`` are every value a signer's result takes or skips."""
    segments = []
    pos = 0
    for start, end in sorted(holes):
        if start < pos:
            return  # overlapping holes: not a shape made by one reading, keep nothing
        segments.append((pos, data[pos:start]))
        pos = end
    segments.append((pos, data[pos:]))
    if len(data) > _MAX_LAYOUT or len(segments[0][1]) < _LAYOUT_KEY:
        return
    _signed_layouts.put(_layout_key(data), _SignedLayout(tuple(segments), tuple(signers)))


def _from_layout(data: bytes) -> list[_SignerData | SipCertError] | None:
    """The signers of ``data`` read through a remembered layout, or None if none fits."""
    layout: _SignedLayout | None = _signed_layouts.get(_layout_key(data))
    if layout is None:
        return None
    for offset, octets in layout.segments:
        if not data.startswith(octets, offset):
            return None
    signers: list[_SignerData | SipCertError] = []
    for base, places in layout.signers:
        signature = data[places.signature[0] : places.signature[1]]
        signed_attrs = message_digest = None
        if places.attrs is not None:
            signed_attrs = b"\x31" + data[places.attrs[0] : places.attrs[1]]
        if places.digest is not None:
            message_digest = data[places.digest[0] : places.digest[1]]
        signers.append(
            _SignerData(
                certificate_der=base.certificate_der,
                digest=base.digest,
                econtent_type=base.econtent_type,
                signed_attrs=signed_attrs,
                message_digest=message_digest,
                attr_content_type=base.attr_content_type,
                scheme=base.scheme,
                pss_salt_length=base.pss_salt_length,
                pss_mgf_digest=base.pss_mgf_digest,
                signature=signature,
                capabilities=base.capabilities,
            )
        )
    return signers


def _lean_parse_signed(
    data: bytes, extra: Sequence[x509.Certificate]
) -> tuple[bytes | None, list[_SignerData | SipCertError]]:
    """:func:`_parse_signed` for a DER SignedData every signer of which is usable.

    Without ``extra`` certificates (which may name the signer), a detached SignedData is
    first tried against the layouts of those read before (:class:`_SignedLayout`).
    """
    if not extra:
        known = _from_layout(data)
        if known is not None:
            return None, known
    _, body = _lean_content_info(data, ("signed_data",))
    fields = der.children(data, body)
    if len(fields) not in (4, 5):
        raise NotLean
    der.integer(data, fields[0])
    digest_algs = der.expect(fields[1], 0x31)
    _asn1_once(asn1_cms.DigestAlgorithms, data[digest_algs.start : digest_algs.end])
    encap = der.children(data, der.expect(fields[2], 0x30))
    if len(encap) not in (1, 2):
        raise NotLean
    econtent_type = _lean_oid(data, encap[0], _LEAN_CONTENT_TYPES)
    embedded_content = None
    if len(encap) == 2:
        if econtent_type != "data":
            raise NotLean
        embedded_content = _lean_bytes(data, der.one(data, der.expect(encap[1], 0xA0), 0x04))
    embedded: list[bytes] = []
    if len(fields) == 5:
        for choice in der.children(data, der.expect(fields[3], 0xA0)):
            embedded.append(data[choice.start : der.expect(choice, 0x30).end])
    signer_infos = der.children(data, der.expect(fields[-1], 0x31))
    if not signer_infos:
        raise NotLean
    holes: list[tuple[int, int]] = []
    read = [
        _lean_signer(data, signer, econtent_type, embedded, extra, holes) for signer in signer_infos
    ]
    if embedded_content is None and not extra:
        _remember_layout(data, read, holes)
    return embedded_content, [signer for signer, _ in read]


#: (key, certificate) pairs found to match, by the objects' identities: a UA opens every
#: message with the same two objects. Each entry holds both, so neither id is reused while
#: it lives; a pair that does not match is never kept.
_matching_keys: dict[tuple[int, int], tuple[DecryptionKey, x509.Certificate]] = {}
_MATCHING_KEYS_SIZE = 64


def _check_key_matches(key: DecryptionKey, cert: x509.Certificate) -> None:
    """Refuse a private key that is not the one of ``cert`` (a configuration mistake)."""
    pair = (id(key), id(cert))
    hit = _matching_keys.get(pair)
    if hit is not None and hit[0] is key and hit[1] is cert:
        return
    if key.public_key() != _recipient(cert)[1]:  # cryptography compares the key material
        raise DecryptionError("the private key does not belong to the given certificate")
    if len(_matching_keys) >= _MATCHING_KEYS_SIZE:
        _matching_keys.clear()
    _matching_keys[pair] = (key, cert)


def _open_gcm(cek: bytes, nonce: bytes, tag: bytes, aad: bytes, ciphertext: bytes) -> bytes:
    """AES-GCM decryption of the content (RFC 5084 §3), the tag checked.

    The usual 16-octet tag goes through the one-call AEAD interface (a third of the cost
    of the streaming one for a SIP body); shorter tags, which it does not take, through
    the streaming one.
    """
    if len(tag) == 16:
        try:
            return AESGCM(cek).decrypt(nonce, ciphertext + tag, aad or None)
        except InvalidTag as exc:
            raise DecryptionError(
                "AES-GCM authentication failed: the message was altered, or the key is wrong"
            ) from exc
    decryptor = cipher_base.Cipher(
        block_ciphers.AES(cek), modes.GCM(nonce, tag, min_tag_length=12)
    ).decryptor()
    decryptor.authenticate_additional_data(aad)
    try:
        return decryptor.update(ciphertext) + decryptor.finalize()
    except InvalidTag as exc:
        raise DecryptionError(
            "AES-GCM authentication failed: the message was altered, or the key is wrong"
        ) from exc


def _open_cbc(cek: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    """AES-CBC decryption of the content (RFC 3565), PKCS #7 padding removed."""
    cbc = cipher_base.Cipher(block_ciphers.AES(cek), modes.CBC(iv)).decryptor()
    padded = cbc.update(ciphertext) + cbc.finalize()
    unpadder = PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError as exc:
        raise DecryptionError(
            "AES-CBC content does not decrypt (bad padding): wrong key or altered message"
        ) from exc


def decrypt_enveloped(
    enveloped_der: bytes,
    key: DecryptionKey,
    cert: x509.Certificate,
    *,
    max_size: int = DEFAULT_MAX_DER,
) -> bytes:
    """Open an EnvelopedData or AuthEnvelopedData with our key; ``cert`` finds our entry.

    Our RecipientInfo is the key transport entry naming ``cert`` (issuer and serial, or
    subjectKeyIdentifier) or the key agreement entry with a RecipientEncryptedKey naming it,
    among any mix of kinds; the others are skipped. DER and BER (indefinite length) are
    read. Raises :class:`NotRecipientError` (a :class:`DecryptionError`, "not a recipient")
    when no entry names ``cert``; :class:`DecryptionError` when the key does not open it or
    the content does not decrypt or authenticate; :class:`CMSError` when the structure is
    malformed or uses an algorithm we lack (the message names it).
    """
    _check_size(enveloped_der, "CMS EnvelopedData", max_size)
    try:
        return _lean_decrypt(enveloped_der, key, cert)
    except _LEAN_FALLBACK:
        pass  # the general path below reads it again and gives its answer
    envelope, authenticated = _load_envelope(enveloped_der, max_size)
    try:
        entry = _our_recipient_info(envelope, cert)
        if entry is None:
            raise NotRecipientError(
                f"not a recipient: no RecipientInfo names issuer "
                f"{cert.issuer.rfc4514_string()!r} serial {cert.serial_number} (draft §4.5)"
            )
        _check_key_matches(key, cert)
        encrypted_info = envelope[
            "auth_encrypted_content_info" if authenticated else "encrypted_content_info"
        ]
        name, mode, key_size, params = _content_cipher(encrypted_info, authenticated)
        info, rek = entry
        if info.name == "ktri":
            ktri = info.chosen
            algorithm = ktri["key_encryption_algorithm"]
            cek = _unwrap_ktri(
                lambda: algorithm,
                algorithm.dump(),
                bytes(ktri["encrypted_key"].native),
                key,
                key_size,
            )
        else:
            cek = _unwrap_kari(info.chosen, rek, key)
        if len(cek) != key_size:
            raise DecryptionError(f"the content key has {len(cek)} octets, {name} needs {key_size}")
        ciphertext_value = encrypted_info["encrypted_content"]
        if ciphertext_value.native is None:
            raise CMSError("the encrypted content is detached (not in the message): not supported")
        ciphertext = _octets(ciphertext_value)
        content_type = encrypted_info["content_type"].native
        if content_type != "data":
            raise CMSError(f"the enveloped content is {content_type!r}, not id-data")
        if mode == "gcm":
            gcm = _GCMParameters.load(params.dump())
            nonce = bytes(gcm["aes_nonce"].native)
            tag_length = int(gcm["aes_icvlen"].native)
            if tag_length not in (12, 13, 14, 15, 16):
                raise CMSError(f"AES-GCM tag of {tag_length} octets is not allowed (RFC 5084 §3.2)")
            tag = bytes(envelope["mac"].native)
            if len(tag) != tag_length:
                raise DecryptionError("AES-GCM tag length differs from aes-ICVlen")
            aad = b""
            attrs = envelope["auth_attrs"]
            if not isinstance(attrs, asn1_core.Void):
                contents = bytes(attrs.contents)
                aad = _der_header(0x31, len(contents)) + contents  # RFC 5083 §2.2
            return _open_gcm(cek, nonce, tag, aad, ciphertext)
        iv = bytes(params.native)
        if len(iv) != 16 or len(ciphertext) % 16:
            raise CMSError("AES-CBC content with a bad IV or a length not a multiple of 16")
        return _open_cbc(cek, iv, ciphertext)
    except _ASN1_ERRORS as exc:
        raise CMSError(f"malformed CMS enveloped structure: {exc}") from exc


def _recipient_infos(enveloped: Any) -> list[Any]:
    """The issuer-and-serial identifiers of all key transport and agreement recipients."""
    ids = []
    for info in enveloped["recipient_infos"]:
        if info.name == "ktri":
            ias = _ias_of(info.chosen["rid"])
            if ias is not None:
                ids.append(ias)
        elif info.name == "kari":
            for rek in info.chosen["recipient_encrypted_keys"]:
                ias = _ias_of(rek["rid"])
                if ias is not None:
                    ids.append(ias)
    return ids


def recipient_identifiers(
    enveloped_der: bytes, *, max_size: int = DEFAULT_MAX_DER
) -> list[RecipientId]:
    """Issuer and serial number of every recipient of an envelope (RFC 5652 §6.2).

    A UA uses these to tell whether one of its certificates is a recipient (draft §4.5:
    "it uses the serial number and issuer to find the certificate it needs to decrypt").
    Recipients named only by subjectKeyIdentifier, and kekri/pwri/ori entries, are not
    listed. EnvelopedData and AuthEnvelopedData are both read.
    """
    envelope, _ = _load_envelope(enveloped_der, max_size)
    try:
        return [
            RecipientId(_name_to_x509(ias["issuer"]), int(ias["serial_number"].native))
            for ias in _recipient_infos(envelope)
        ]
    except _ASN1_ERRORS as exc:
        raise CMSError(f"malformed CMS RecipientInfo: {exc}") from exc


def is_recipient(
    enveloped_der: bytes, cert: x509.Certificate, *, max_size: int = DEFAULT_MAX_DER
) -> bool:
    """True when a RecipientInfo names ``cert`` (issuer and serial, or its key identifier).

    Names are compared with asn1crypto's RFC 5280 §7.1 rules, not byte for byte.
    """
    envelope, _ = _load_envelope(enveloped_der, max_size)
    try:
        return _our_recipient_info(envelope, cert) is not None
    except _ASN1_ERRORS as exc:
        raise CMSError(f"malformed CMS RecipientInfo: {exc}") from exc
