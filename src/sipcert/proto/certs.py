"""User certificates: generation, encoding, and the checks of draft §4.5 and §5.1.

The draft builds on self-signed certificates (draft §3: "the certificates are assumed to be
self signed") whose SubjectAltName URIs name the AOR. The trust does not come from an issuer
but from where the certificate was fetched, so the checks that remain are about the names
inside it: a Caller keeps only certificates whose every SAN URI names the AOR it asked for
(draft §4.5) and a Store accepts only certificates whose every SAN URI names the Digest user
and the TLS domain (draft §5.1). Everything here is sans-IO: ``now`` is an argument.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
import warnings
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sipcert.errors import (
    AORError,
    CertificateParseError,
    ConfigError,
    CryptoError,
    ForbiddenError,
    InputError,
    InputTooLargeError,
)
from sipcert.proto.aor import AOR, aor_from_uri, escape_user, normalize_domain

__all__ = [
    "CLOCK_SKEW",
    "DELEGATED_PREFIX",
    "EXTENSION_ERRORS",
    "MAX_CERTIFICATE_SIZE",
    "MAX_PRIVATE_KEY_SIZE",
    "MAX_VALIDITY",
    "DiscardReason",
    "Discarded",
    "Identity",
    "KeyType",
    "RetrievalChecks",
    "ValidationResult",
    "cert_hash",
    "certificate_der",
    "check_enrollment",
    "delegated_by",
    "format_cert_hash",
    "generate_identity",
    "load_certificate",
    "load_private_key",
    "san_uris",
    "self_signed_certificate",
    "serialize_private_key",
    "sha256_fingerprint",
    "validate_retrieved",
    "verify_self_signature",
    "weak_signature_problem",
]

#: How far ``not_before`` is back-dated so peers with a slow clock accept a new certificate.
CLOCK_SKEW = timedelta(minutes=5)
#: Longest validity ``generate_identity`` agrees to; the draft recommends "days to months"
#: (draft §5), 825 days is the CA/Browser Forum's old ceiling.
MAX_VALIDITY = timedelta(days=825)
#: The subject OU that marks a key held by an authentication service for the subscriber
#: (draft §6, docs/delegated.md §5): ``OU=sipcert-delegated:<service host>``.
DELEGATED_PREFIX = "sipcert-delegated:"
_SERVICE_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,61}[A-Za-z0-9])?")
#: Default size limit for one encoded certificate.
MAX_CERTIFICATE_SIZE = 16384
#: Size limit for an encoded private key.
MAX_PRIVATE_KEY_SIZE = 65536

_PEM_CERT_RE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n(?P<body>[A-Za-z0-9+/= \t\r\n]*?)"
    rb"-----END CERTIFICATE-----[ \t\r\n]*",
)
_ALLOWED_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
#: What ``cryptography`` raises for extensions that do not decode (not all are ValueError).
EXTENSION_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)
_MIN_RSA_BITS = 2048


class KeyType(StrEnum):
    """Key types ``generate_identity`` makes (``sipcert enroll --key-type``).

    P-256 is the default for new devices: its certificate is ~40% of an RSA-2048 one (a
    smaller SIP body, RFC 3261 §18.1.1) and it signs much faster (docs/benchmarks.md);
    S/MIME 4.0 encrypts to it with ECDH (RFC 8551 §2.3, RFC 5753). RSA stays for peers
    that only know RSA key transport (RFC 3261 §23).
    """

    P256 = "p256"
    P384 = "p384"
    RSA2048 = "rsa2048"
    RSA3072 = "rsa3072"

    @property
    def is_rsa(self) -> bool:
        return self in (KeyType.RSA2048, KeyType.RSA3072)

    @property
    def bits(self) -> int:
        """The RSA modulus size, or the curve's size."""
        return {"p256": 256, "p384": 384, "rsa2048": 2048, "rsa3072": 3072}[self.value]

    @classmethod
    def of(cls, certificate: x509.Certificate) -> KeyType:
        """The key type of an existing certificate (a renewal keeps it)."""
        key = certificate.public_key()
        if isinstance(key, ec.EllipticCurvePublicKey):
            return cls.P384 if key.curve.key_size >= 384 else cls.P256
        if isinstance(key, rsa.RSAPublicKey) and key.key_size >= 3072:
            return cls.RSA3072
        return cls.RSA2048


#: A device's private key: RSA or EC (P-256, P-384; P-521 keys are loaded too).
DeviceKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Identity:
    """A UA's own key pair and the self-signed certificate it enrols (draft §5.1)."""

    key: DeviceKey
    certificate: x509.Certificate


def generate_identity(
    aor: AOR,
    *,
    now: datetime,
    key_type: KeyType = KeyType.P256,
    validity: timedelta = timedelta(days=30),
    delegated_by: str | None = None,
) -> Identity:
    """Generate a key and a self-signed certificate for ``aor`` (draft §1, §4.5, §5.1).

    ``delegated_by`` (a host name) marks the certificate as held by that authentication
    service for the subscriber (draft §6): subject ``OU=sipcert-delegated:<host>``, which
    :func:`delegated_by` reads back, so the trade is visible to every verifier.

    The SAN URIs are exactly ``sip:user@host`` and ``im:user@host`` (the draft's own example,
    draft §4.5), because those are what Callers check. ``not_before`` is back-dated by
    :data:`CLOCK_SKEW` and the lifetime is exactly ``validity``, so a Store allowing that
    much accepts it; ``validity`` must be positive and at most :data:`MAX_VALIDITY`
    (the draft recommends short-lived certificates, draft §5).
    """
    _require_aware(now)
    if not isinstance(key_type, KeyType):
        raise ConfigError(f"unknown key type {key_type!r}")
    if validity <= timedelta(0):
        raise ConfigError(f"certificate validity must be positive, not {validity}")
    if validity > MAX_VALIDITY:
        raise ConfigError(
            f"certificate validity {validity.days} days is over the limit of "
            f"{MAX_VALIDITY.days} days (draft §5 recommends days to months)"
        )
    start = now.replace(microsecond=0)
    key: DeviceKey
    if key_type.is_rsa:
        key = rsa.generate_private_key(public_exponent=65537, key_size=key_type.bits)
    else:
        curve = ec.SECP384R1() if key_type is KeyType.P384 else ec.SECP256R1()
        key = ec.generate_private_key(curve)
    certificate = self_signed_certificate(
        key,
        aor,
        not_before=start - CLOCK_SKEW,
        not_after=start - CLOCK_SKEW + validity,
        delegated_by=delegated_by,
    )
    return Identity(key=key, certificate=certificate)


def self_signed_certificate(
    key: DeviceKey,
    aor: AOR,
    *,
    not_before: datetime,
    not_after: datetime,
    serial: int | None = None,
    delegated_by: str | None = None,
) -> x509.Certificate:
    """The self-signed UA certificate of :func:`generate_identity` for an existing ``key``
    (a random serial unless ``serial`` is given); the benchmarks build their corpora with it."""
    is_rsa = isinstance(key, rsa.RSAPrivateKey)
    # X.520 limits a Common Name to 64 characters; the SAN URIs carry the full AOR anyway.
    common_name = str(aor) if len(str(aor)) <= 64 else str(aor)[:61] + "..."
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if delegated_by is not None:
        if not _SERVICE_NAME.fullmatch(delegated_by):
            raise ConfigError(f"service name {delegated_by[:70]!r} is not a host name")
        attributes.append(
            x509.NameAttribute(
                NameOID.ORGANIZATIONAL_UNIT_NAME, DELEGATED_PREFIX + delegated_by.lower()
            )
        )
    name = x509.Name(attributes)
    public_key = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(serial if serial is not None else secrets.randbits(159) or 1)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier(aor.sip_uri),
                    x509.UniformResourceIdentifier(aor.im_uri),
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                # RSA transports the content key, EC agrees on it (RFC 8550 §4.4.2)
                key_encipherment=is_rsa,
                data_encipherment=False,
                key_agreement=not is_rsa,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return certificate


def delegated_by(cert: x509.Certificate) -> str | None:
    """The authentication service holding this certificate's key (draft §6), or None.

    None for a device's own certificate; a marker that is not a host name counts as none
    (it cannot be shown as a service's name).
    """
    for attribute in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME):
        value = attribute.value
        if isinstance(value, str) and value.startswith(DELEGATED_PREFIX):
            host = value[len(DELEGATED_PREFIX) :]
            if _SERVICE_NAME.fullmatch(host):
                return host
    return None


def serialize_private_key(key: DeviceKey, passphrase: bytes | None) -> bytes:
    """PEM PKCS#8, encrypted with the best available scheme when ``passphrase`` is given."""
    from cryptography.hazmat.primitives import serialization

    if passphrase is not None and not passphrase:
        raise ConfigError("empty passphrase: give a non-empty one or none at all")
    encryption: serialization.KeySerializationEncryption = (
        serialization.NoEncryption()
        if passphrase is None
        else serialization.BestAvailableEncryption(passphrase)
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def load_private_key(data: bytes, passphrase: bytes | None) -> DeviceKey:
    """Load an RSA or EC private key (PEM or DER, PKCS#8 or traditional).

    An encrypted key without a passphrase, or a passphrase for a plain key, is a
    :class:`ConfigError`; a wrong passphrase is a :class:`CryptoError`; bytes that are no
    private key, or a key that is neither RSA nor EC on an accepted curve, an
    :class:`InputError`.
    """
    if len(data) > MAX_PRIVATE_KEY_SIZE:
        raise InputTooLargeError(
            f"private key is {len(data)} bytes, more than the limit of {MAX_PRIVATE_KEY_SIZE}"
        )
    from cryptography.hazmat.primitives import serialization

    load = (
        serialization.load_pem_private_key
        if data.lstrip().startswith(b"-----BEGIN")
        else serialization.load_der_private_key
    )
    # Probe without a passphrase first: it tells "encrypted" (TypeError) from "malformed"
    # (ValueError), which a failed decryption alone cannot.
    try:
        key = load(data, None)
        encrypted = False
    except TypeError:
        encrypted = True
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise InputError(f"not a usable private key: {exc}") from exc
    if encrypted:
        if passphrase is None:
            raise ConfigError("the private key is encrypted: a passphrase is needed")
        try:
            key = load(data, passphrase)
        except (ValueError, TypeError) as exc:
            raise CryptoError("wrong passphrase for the private key") from exc
        except UnsupportedAlgorithm as exc:
            raise InputError(f"unsupported private key encryption: {exc}") from exc
    elif passphrase is not None:
        raise ConfigError("a passphrase was given but the private key is not encrypted")
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, _ALLOWED_CURVES):
        return key
    if not isinstance(key, rsa.RSAPrivateKey):
        raise InputError(
            f"private key is {type(key).__name__}, sipcert identities are RSA or EC "
            "(P-256, P-384, P-521)"
        )
    return key


def load_certificate(data: bytes, *, max_size: int = MAX_CERTIFICATE_SIZE) -> x509.Certificate:
    """Decode exactly one certificate, DER (RFC 2585, draft §4.3) or one PEM block.

    Anything else -- empty input, several PEM blocks, bytes before or after the certificate,
    a truncated or malformed encoding -- is a :class:`CertificateParseError`; input over
    ``max_size`` bytes is an :class:`InputTooLargeError`. Extensions are decoded here so that
    later reads cannot fail on a malformed one.
    """
    if len(data) > max_size:
        raise InputTooLargeError(
            f"certificate is {len(data)} bytes, more than the limit of {max_size}"
        )
    data = bytes(data)
    if not data.strip():
        raise CertificateParseError("empty certificate")
    # DER starts with the SEQUENCE tag 0x30; only look for PEM otherwise, so DER that
    # happens to contain "-----BEGIN" somewhere is still read as DER.
    der = _pem_to_der(data) if data[0] != 0x30 and b"-----BEGIN" in data else data
    _check_der_envelope(der)
    # cryptography reports some defects with a warning (a serial that is not positive,
    # RFC 5280 §4.1.2.2), which ``-W error`` turns into an exception: record them instead
    # and refuse the certificate, so no warning reaches the caller either way.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            cert = x509.load_der_x509_certificate(der)
        except x509.InvalidVersion as exc:
            raise CertificateParseError(f"unsupported certificate version: {exc}") from exc
        except (ValueError, TypeError) as exc:
            raise CertificateParseError(f"malformed certificate: {exc}") from exc
        try:
            _ = cert.extensions
        except EXTENSION_ERRORS as exc:
            raise CertificateParseError(f"malformed certificate extensions: {exc}") from exc
        try:
            # Decoded lazily by cryptography: read each once so later reads cannot fail.
            _ = (cert.serial_number, cert.issuer, cert.subject)
            _ = (cert.not_valid_before_utc, cert.not_valid_after_utc)
            _ = cert.signature_algorithm_oid
        except (ValueError, TypeError) as exc:
            raise CertificateParseError(f"malformed certificate: {exc}") from exc
    if caught:
        raise CertificateParseError(f"malformed certificate: {caught[0].message}")
    return cert


def certificate_der(cert: x509.Certificate) -> bytes:
    """The DER encoding, as served with ``application/pkix-cert`` (draft §4.3, RFC 2585)."""
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.DER)


def sha256_fingerprint(cert: x509.Certificate) -> str:
    """Lower-case hex SHA-256 of the DER certificate: the identifier used in logs and the Store."""
    return cert.fingerprint(hashes.SHA256()).hex()


def cert_hash(cert: x509.Certificate) -> str:
    """RFC 4387 ``certHash`` of the DER certificate (§2.1, §2.2; SHA-1, not for security)."""
    return format_cert_hash(hashlib.sha1(certificate_der(cert), usedforsecurity=False).digest())


def format_cert_hash(sha1: bytes) -> str:
    """RFC 4387 §2.1 spelling of a SHA-1: base64 without the trailing ``=`` (27 characters)."""
    return base64.b64encode(sha1).decode("ascii").rstrip("=")


def san_uris(cert: x509.Certificate) -> list[str]:
    """The uniformResourceIdentifier SubjectAltNames, in certificate order (draft §4.5).

    No SAN extension gives ``[]``; an extension that does not decode raises
    :class:`CertificateParseError`.
    """
    try:
        extension = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    except EXTENSION_ERRORS as exc:
        raise CertificateParseError(f"certificate extensions do not decode: {exc}") from exc
    return [str(uri) for uri in extension.value.get_values_for_type(x509.UniformResourceIdentifier)]


def verify_self_signature(cert: x509.Certificate) -> bool:
    """Whether ``cert`` names itself as issuer and its signature verifies with its own key.

    For an enrolled certificate this proves the uploader holds the private key (draft §5.1);
    for a retrieved one it shows the certificate was not altered after signing.
    """
    try:
        cert.verify_directly_issued_by(cert)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


#: Signature hashes refused whatever the key: collisions can be made for SHA-1 (SHAttered,
#: 2017; chosen-prefix 2020) and MD5, and OpenSSL 3 no longer verifies them.
_WEAK_SIGNATURE_HASHES = ("md5", "sha1")


def weak_signature_problem(cert: x509.Certificate) -> str | None:
    """Why ``cert``'s signature algorithm is refused (MD5 or SHA-1), or ``None``.

    Checked before :func:`verify_self_signature` so that a certificate correctly signed with
    SHA-1 is refused for what it is, not as a failed proof of possession.
    """
    try:
        algorithm = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        return None  # not a hash we know of: the signature check refuses it
    if algorithm is None or algorithm.name not in _WEAK_SIGNATURE_HASHES:
        return None
    return (
        f"certificate is signed with {algorithm.name.upper()}: MD5 and SHA-1 "
        "signatures are not accepted: sign it with SHA-256 or better"
    )


class DiscardReason(StrEnum):
    """Why ``validate_retrieved`` dropped a certificate (draft §4.5)."""

    MALFORMED = "malformed"
    NO_SAN_URI = "no-san-uri"
    SAN_MALFORMED = "san-malformed"
    SAN_MISMATCH = "san-mismatch"
    NOT_YET_VALID = "not-yet-valid"
    EXPIRED = "expired"
    WEAK_SIGNATURE_ALGORITHM = "weak-signature-algorithm"
    BAD_SELF_SIGNATURE = "bad-self-signature"
    #: The Store publishes a transparency log and this certificate has no valid proof in it
    #: (docs/transparency.md; ``client.tlog``).
    NOT_IN_LOG = "not-in-log"


@dataclass(frozen=True)
class Discarded:
    """One dropped certificate: SHA-256 (of the raw bytes when undecodable), reason, detail."""

    sha256: str
    reason: DiscardReason
    detail: str


@dataclass(frozen=True)
class ValidationResult:
    """The usable certificates in retrieval order (draft §4.4: use every one) and the rest."""

    kept: list[x509.Certificate] = field(default_factory=list)
    discarded: list[Discarded] = field(default_factory=list)


class RetrievalChecks:
    """What :func:`validate_retrieved` found about a certificate that does not depend on
    ``now``, remembered by its DER's SHA-256 and the AOR (issue 13).

    Decoding the DER, the SAN rule of draft §4.5 and the self-signature (the costly part: a
    signature verification) give the same answer for the same bytes and AOR every time, so
    a UA that fetches the same certificates again skips them; the validity period is still
    checked against ``now`` on every call. Bounded (least recently used first out); pure
    and synchronous, owned by one client.
    """

    def __init__(self, max_entries: int = 4096) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[bytes, AOR], _Checked] = OrderedDict()
        #: Lookups answered from the cache (tests and bench/).
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _get(self, key: tuple[bytes, AOR]) -> _Checked | None:
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
            self.hits += 1
        return found

    def _put(self, key: tuple[bytes, AOR], checked: _Checked) -> None:
        self._entries[key] = checked
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


@dataclass(frozen=True, slots=True)
class _Checked:
    """One certificate's ``now``-independent checks: the parsed certificate, its
    fingerprint, and the first problem before (SAN) and after (signature) the validity
    check, in :func:`validate_retrieved`'s order."""

    cert: x509.Certificate
    fingerprint: str
    before_validity: tuple[DiscardReason, str] | None
    after_validity: tuple[DiscardReason, str] | None


def validate_retrieved(
    items: Iterable[x509.Certificate | bytes],
    aor: AOR,
    now: datetime,
    *,
    checks: RetrievalChecks | None = None,
) -> ValidationResult:
    """Keep the retrieved certificates a Caller may use for ``aor`` (draft §4.4, §4.5).

    Per certificate, in this order: it must decode (``malformed``); it must have at least
    one SAN URI (``no-san-uri``); EVERY SAN URI, whatever its scheme, must name ``aor``
    (``san-malformed`` / ``san-mismatch``, draft §4.5 "all the SubjectAltNames in all the
    certificates"); it must be inside its validity period (``not-yet-valid`` / ``expired``,
    draft §4.5); it must not be signed with MD5 or SHA-1 (``weak-signature-algorithm``) and
    its self-signature must verify (``bad-self-signature``). Order is kept and
    repeats of a certificate already seen are dropped silently. With ``checks``, what does
    not depend on ``now`` is looked up there first (the validity period never is).
    """
    _require_aware(now)
    kept: list[x509.Certificate] = []
    discarded: list[Discarded] = []
    seen: set[str] = set()
    for item in items:
        checked: _Checked | None = None
        key: tuple[bytes, AOR] | None = None
        if isinstance(item, x509.Certificate):
            cert = item
            if checks is not None:
                key = (cert.fingerprint(hashes.SHA256()), aor)
                checked = checks._get(key)
        else:
            if checks is not None:
                key = (hashlib.sha256(item).digest(), aor)
                checked = checks._get(key)
            if checked is None:
                try:
                    cert = load_certificate(item)
                except InputError as exc:
                    raw_fingerprint = hashlib.sha256(item).hexdigest()
                    if raw_fingerprint not in seen:
                        seen.add(raw_fingerprint)
                        discarded.append(
                            Discarded(raw_fingerprint, DiscardReason.MALFORMED, str(exc))
                        )
                    continue
        if checked is None:
            checked = _Checked(
                cert,
                sha256_fingerprint(cert),
                _san_problem(cert, aor),
                _signature_problem(cert),
            )
            if checks is not None and key is not None:
                checks._put(key, checked)
        if checked.fingerprint in seen:
            continue
        seen.add(checked.fingerprint)
        problem = checked.before_validity
        if problem is None:
            window = _validity_problem(checked.cert, now)
            problem = (DiscardReason(window[0]), window[1]) if window else checked.after_validity
        if problem is None:
            kept.append(checked.cert)
        else:
            discarded.append(Discarded(checked.fingerprint, *problem))
    return ValidationResult(kept=kept, discarded=discarded)


def _san_problem(cert: x509.Certificate, aor: AOR) -> tuple[DiscardReason, str] | None:
    """Draft §4.5: every SAN URI must name ``aor`` (there must be at least one)."""
    try:
        uris = san_uris(cert)
    except CertificateParseError as exc:
        return DiscardReason.MALFORMED, str(exc)
    if not uris:
        return DiscardReason.NO_SAN_URI, "certificate has no SubjectAltName URI"
    for uri in uris:
        try:
            named = aor_from_uri(uri)
        except (AORError, InputTooLargeError) as exc:
            return DiscardReason.SAN_MALFORMED, f"SAN URI {uri[:100]!r} is not an AOR: {exc}"
        if named != aor:
            return DiscardReason.SAN_MISMATCH, f"SAN URI {uri!r} names {named}, not {aor}"
    return None


def _signature_problem(cert: x509.Certificate) -> tuple[DiscardReason, str] | None:
    """No MD5/SHA-1 signature, and the self-signature verifies."""
    weak = weak_signature_problem(cert)
    if weak is not None:
        return DiscardReason.WEAK_SIGNATURE_ALGORITHM, weak
    if not verify_self_signature(cert):
        return DiscardReason.BAD_SELF_SIGNATURE, "self-signature does not verify"
    return None


def check_enrollment(
    cert: x509.Certificate,
    *,
    digest_username: str,
    tls_domain: str,
    now: datetime,
    max_lifetime: timedelta,
) -> None:
    """Decide whether the Store accepts ``cert`` from ``digest_username`` (draft §5.1).

    Raises :class:`ForbiddenError` with ``reason`` set to the first failed check, in this
    order -- who the certificate is for, then whether the uploader holds its key, then time:

    1. ``no-san-uri``: there is no SAN URI at all (``san-malformed`` if the SAN extension
       or a URI in it does not decode as ``user@host``);
    2. for EACH SAN URI (draft §5.1 "for each URI in the SubjectAltName"):
       ``san-user-mismatch`` when the user is not the Digest username,
       ``san-domain-mismatch`` when the host is not the TLS domain;
    3. ``weak-key``: not RSA of at least 2048 bits or EC on P-256/P-384/P-521 (checked before
       the signature so that no odd key reaches the verifier);
    4. ``weak-signature-algorithm``: signed with MD5 or SHA-1 (however correctly), then
       ``bad-self-signature``: not self-issued or the signature does not verify -- this
       proves the uploader holds the private key;
    5. ``not-yet-valid`` / ``expired`` at ``now``;
    6. ``lifetime-too-long``: ``not_after - not_before`` over ``max_lifetime`` (draft §5
       recommends short-lived certificates).

    ``tls_domain`` is validated with :func:`normalize_domain` (an invalid one raises
    :class:`AORError`); ``digest_username`` is the unescaped name, compared with the SAN
    URI's escaped user part after escaping (RFC 3261 §19.1.4).
    """
    _require_aware(now)
    if max_lifetime <= timedelta(0):
        raise ConfigError(f"maximum certificate lifetime must be positive, not {max_lifetime}")
    domain = normalize_domain(tls_domain)
    try:
        user = escape_user(digest_username)
    except (AORError, InputTooLargeError):
        user = None  # no SAN URI user can equal it

    try:
        uris = san_uris(cert)
    except CertificateParseError as exc:
        raise ForbiddenError(str(exc), reason="san-malformed") from exc
    if not uris:
        raise ForbiddenError("certificate has no SubjectAltName URI", reason="no-san-uri")
    for uri in uris:
        try:
            named = aor_from_uri(uri)
        except (AORError, InputTooLargeError) as exc:
            raise ForbiddenError(
                f"SAN URI {uri[:100]!r} is not a user@host URI: {exc}", reason="san-malformed"
            ) from exc
        if named.user != user:
            raise ForbiddenError(
                f"SAN URI {uri!r} is for user {named.user!r}, not the authenticated user "
                f"{digest_username!r} (draft §5.1)",
                reason="san-user-mismatch",
            )
        if named.host != domain:
            raise ForbiddenError(
                f"SAN URI {uri!r} is in domain {named.host!r}, not this Store's domain "
                f"{domain!r} (draft §5.1)",
                reason="san-domain-mismatch",
            )

    weak = _key_problem(cert)
    if weak is not None:
        raise ForbiddenError(weak, reason="weak-key")
    weak = weak_signature_problem(cert)
    if weak is not None:
        raise ForbiddenError(weak, reason="weak-signature-algorithm")
    if not verify_self_signature(cert):
        raise ForbiddenError(
            "certificate is not self-signed by its own key (proof of possession failed)",
            reason="bad-self-signature",
        )
    window = _validity_problem(cert, now)
    if window is not None:
        raise ForbiddenError(window[1], reason=window[0])
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    if lifetime > max_lifetime:
        raise ForbiddenError(
            f"certificate lifetime {_duration(lifetime)} is longer than the allowed "
            f"{_duration(max_lifetime)}",
            reason="lifetime-too-long",
        )


def _validity_problem(cert: x509.Certificate, now: datetime) -> tuple[str, str] | None:
    """``(reason, detail)`` when ``now`` is outside the validity period (RFC 5280 §4.1.2.5)."""
    not_before = cert.not_valid_before_utc
    not_after = cert.not_valid_after_utc
    if now < not_before:
        return "not-yet-valid", f"certificate is not valid before {not_before.isoformat()}"
    if now > not_after:
        return "expired", f"certificate expired at {not_after.isoformat()}"
    return None


def _key_problem(cert: x509.Certificate) -> str | None:
    """Why the certificate's public key is not acceptable, or ``None``."""
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        return f"unsupported or malformed public key: {exc}"
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < _MIN_RSA_BITS:
            return f"RSA key of {key.key_size} bits, at least {_MIN_RSA_BITS} are required"
        return None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if isinstance(key.curve, _ALLOWED_CURVES):
            return None
        return f"EC key on curve {key.curve.name}, only P-256, P-384 and P-521 are accepted"
    return f"{type(key).__name__} keys are not accepted (RSA >= 2048 or EC P-256/384/521)"


def _pem_to_der(data: bytes) -> bytes:
    """The DER inside exactly one ``CERTIFICATE`` PEM block with nothing around it."""
    blocks = data.count(b"-----BEGIN")
    if blocks > 1:
        raise CertificateParseError(
            f"{blocks} PEM blocks where exactly one certificate was expected"
        )
    start = len(data) - len(data.lstrip())
    match = _PEM_CERT_RE.match(data, start)
    if match is None:
        if not data[start:].startswith(b"-----BEGIN CERTIFICATE-----"):
            label = data[start:].split(b"\n", 1)[0][:64]
            if data[start:].startswith(b"-----BEGIN"):
                raise CertificateParseError(f"PEM block is {label!r}, not a CERTIFICATE")
            raise CertificateParseError("text before the PEM block")
        raise CertificateParseError("malformed PEM block (bad base64 or missing END line)")
    if match.end() != len(data):
        raise CertificateParseError(
            f"{len(data) - match.end()} bytes of trailing data after the PEM block"
        )
    body = re.sub(rb"\s+", b"", match.group("body"))
    try:
        return base64.b64decode(body, validate=True)
    except binascii.Error as exc:
        raise CertificateParseError(f"PEM body is not valid base64: {exc}") from exc


def _check_der_envelope(der: bytes) -> None:
    """Check the outer DER SEQUENCE header so truncation and trailing bytes are named."""
    if len(der) < 2 or der[0] != 0x30:
        raise CertificateParseError("not a DER certificate (no outer SEQUENCE)")
    first = der[1]
    if first < 0x80:
        header, length = 2, first
    else:
        count = first & 0x7F
        if count == 0 or count > 4:
            raise CertificateParseError("not a DER certificate (bad outer length)")
        if len(der) < 2 + count:
            raise CertificateParseError("truncated certificate (outer length cut short)")
        header, length = 2 + count, int.from_bytes(der[2 : 2 + count], "big")
    total = header + length
    if len(der) < total:
        raise CertificateParseError(f"truncated certificate: {len(der)} of {total} bytes")
    if len(der) > total:
        raise CertificateParseError(
            f"{len(der) - total} bytes of trailing data after the certificate"
        )


def _duration(value: timedelta) -> str:
    """``30 days`` or ``30 days 00:05:00``: a lifetime as people read it."""
    days, rest = value.days, value - timedelta(days=value.days)
    text = f"{days} day{'s' if days != 1 else ''}"
    if rest:
        hours, seconds = divmod(int(rest.total_seconds()), 3600)
        text += f" {hours:02d}:{seconds // 60:02d}:{seconds % 60:02d}"
    return text


def _require_aware(now: datetime) -> None:
    """Refuse naive datetimes: comparing them with certificate times would silently be wrong."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ConfigError("now must be a timezone-aware datetime (UTC)")
