"""Certificate generation, encoding and the checks of draft §4.5 (retrieval) and §5.1."""

from __future__ import annotations

import base64
import hashlib
import warnings
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipcert.errors import (
    AORError,
    CertificateParseError,
    ConfigError,
    CryptoError,
    ForbiddenError,
    InputError,
    InputTooLargeError,
)
from sipcert.proto.aor import AOR, parse_aor
from sipcert.proto.certs import (
    CLOCK_SKEW,
    DiscardReason,
    Identity,
    KeyType,
    cert_hash,
    certificate_der,
    check_enrollment,
    generate_identity,
    load_certificate,
    load_private_key,
    san_uris,
    serialize_private_key,
    sha256_fingerprint,
    validate_retrieved,
    verify_self_signature,
)
from tests.factories import resign_with_sha1

NOW = datetime(2024, 6, 1, 12, 0, 0, 123456, tzinfo=UTC)
ALICE = parse_aor("alice@example.com")
DAY = timedelta(days=1)
MAX_LIFETIME = timedelta(days=90)


# --- fixtures: keys are slow, make each once per module ------------------------------------


@pytest.fixture(scope="module")
def alice() -> Identity:
    return generate_identity(ALICE, now=NOW)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def build(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey,
    uris: list[str] | None,
    *,
    not_before: datetime = NOW - DAY,
    not_after: datetime = NOW + 30 * DAY,
    signer: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | None = None,
    issuer: str | None = None,
    serial: int = 1000,
) -> x509.Certificate:
    """A certificate with the given SAN URIs, self-signed unless ``signer``/``issuer`` say."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    issuer_name = (
        subject if issuer is None else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if uris is not None:
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    signing_key = signer if signer is not None else key
    algorithm = None if isinstance(signing_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(signing_key, algorithm)


def raw_san(key: ec.EllipticCurvePrivateKey, value: bytes, *, duplicate: bool = False) -> bytes:
    """DER of a certificate whose SAN extension value is ``value`` (or appears twice)."""
    extension = x509.UnrecognizedExtension(ObjectIdentifier("2.5.29.99"), value)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + DAY)
        .add_extension(extension, critical=False)
    )
    if duplicate:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(ObjectIdentifier("2.5.29.98"), value), critical=False
        )
    der = certificate_der(builder.sign(key, hashes.SHA256()))
    # Re-label the private OIDs 2.5.29.99/98 as subjectAltName (2.5.29.17).
    return der.replace(b"\x55\x1d\x63", b"\x55\x1d\x11").replace(b"\x55\x1d\x62", b"\x55\x1d\x11")


SAN_ALICE = b"\x30\x17\x86\x15sip:alice@example.com"
SAN_X400 = b"\x30\x04\xa3\x02\x30\x00"
SAN_TRUNCATED = b"\x30\x03\x86\x01"


def tampered(cert: x509.Certificate) -> x509.Certificate:
    """The certificate with the last byte of its signature flipped."""
    der = bytearray(certificate_der(cert))
    der[-1] ^= 0x01
    return x509.load_der_x509_certificate(bytes(der))


# --- generation -------------------------------------------------------------------------------


def test_generated_sans_are_sip_and_im_uris(alice: Identity) -> None:
    assert san_uris(alice.certificate) == ["sip:alice@example.com", "im:alice@example.com"]


def test_generated_names_and_serial(alice: Identity) -> None:
    cert = alice.certificate
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in cn] == ["alice@example.com"]
    assert cert.issuer == cert.subject
    assert 0 < cert.serial_number < 2**159


def test_generated_validity_window(alice: Identity) -> None:
    start = NOW.replace(microsecond=0)
    assert alice.certificate.not_valid_before_utc == start - CLOCK_SKEW
    assert alice.certificate.not_valid_after_utc == start - CLOCK_SKEW + timedelta(days=30)


def test_generated_extensions(alice: Identity) -> None:
    ext = alice.certificate.extensions
    usage = ext.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    # P-256 by default (issue 11): it agrees on content keys (ECDH), it transports none
    assert usage.value.digital_signature and usage.value.key_agreement
    assert not (usage.value.key_cert_sign or usage.value.crl_sign or usage.value.key_encipherment)
    rsa_usage = (
        generate_identity(ALICE, now=NOW, key_type=KeyType.RSA2048)
        .certificate.extensions.get_extension_for_class(x509.KeyUsage)
        .value
    )
    assert rsa_usage.key_encipherment and not rsa_usage.key_agreement
    basic = ext.get_extension_for_class(x509.BasicConstraints)
    assert basic.value.ca is False
    ski = ext.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(alice.key.public_key())
    eku = ext.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.EMAIL_PROTECTION]
    assert not ext.get_extension_for_class(x509.SubjectAlternativeName).critical


def test_generated_signature_and_key(alice: Identity) -> None:
    cert = alice.certificate
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert verify_self_signature(cert)
    assert isinstance(alice.key, ec.EllipticCurvePrivateKey)
    assert isinstance(alice.key.curve, ec.SECP256R1)
    assert KeyType.of(cert) is KeyType.P256
    assert cert.public_key() == alice.key.public_key()


def test_generated_rsa3072() -> None:
    identity = generate_identity(
        ALICE, now=NOW, key_type=KeyType.RSA3072, validity=timedelta(days=825)
    )
    assert isinstance(identity.key, rsa.RSAPrivateKey) and identity.key.key_size == 3072
    cert = identity.certificate
    assert KeyType.of(cert) is KeyType.RSA3072
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=825)


def test_generated_serials_differ_and_long_aor_fits(alice: Identity) -> None:
    long_aor = AOR("u" * 200, "example.com")
    identity = generate_identity(long_aor, now=NOW)
    cn = identity.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "u" * 61 + "..."
    assert san_uris(identity.certificate)[0] == long_aor.sip_uri
    assert identity.certificate.serial_number != alice.certificate.serial_number


@pytest.mark.parametrize(
    ("validity", "fragment"),
    [
        (timedelta(0), "must be positive"),
        (-DAY, "must be positive"),
        (timedelta(days=826), "over the limit of 825"),
    ],
)
def test_generate_rejects_bad_validity(validity: timedelta, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        generate_identity(ALICE, now=NOW, validity=validity)


def test_generate_rejects_naive_now() -> None:
    with pytest.raises(ConfigError, match="timezone-aware"):
        generate_identity(ALICE, now=datetime(2024, 1, 1))


# --- private keys -----------------------------------------------------------------------------


def test_private_key_round_trip_with_passphrase(alice: Identity) -> None:
    pem = serialize_private_key(alice.key, b"correct horse")
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    loaded = load_private_key(pem, b"correct horse")
    assert loaded.private_numbers() == alice.key.private_numbers()


def test_private_key_round_trip_plain(alice: Identity) -> None:
    pem = serialize_private_key(alice.key, None)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert load_private_key(pem, None).private_numbers() == alice.key.private_numbers()
    der = alice.key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    assert load_private_key(der, None).private_numbers() == alice.key.private_numbers()


def test_private_key_passphrase_errors(alice: Identity) -> None:
    encrypted = serialize_private_key(alice.key, b"secret")
    with pytest.raises(CryptoError, match="wrong passphrase"):
        load_private_key(encrypted, b"not the secret")
    with pytest.raises(ConfigError, match="passphrase is needed"):
        load_private_key(encrypted, None)
    plain = serialize_private_key(alice.key, None)
    with pytest.raises(ConfigError, match="not encrypted"):
        load_private_key(plain, b"secret")
    with pytest.raises(ConfigError, match="empty passphrase"):
        serialize_private_key(alice.key, b"")


def test_private_key_malformed(ec_key: ec.EllipticCurvePrivateKey) -> None:
    with pytest.raises(InputError, match="not a usable private key"):
        load_private_key(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", None)
    with pytest.raises(InputError, match="not a usable private key"):
        load_private_key(b"\x30\x03\x02\x01\x00", None)
    ec_pem = ec_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert load_private_key(ec_pem, None).public_key() == ec_key.public_key()
    k1 = ec.generate_private_key(ec.SECP256K1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(InputError, match="RSA or EC"):
        load_private_key(k1, None)
    with pytest.raises(InputTooLargeError):
        load_private_key(b"x" * 70000, None)


# --- encoding ---------------------------------------------------------------------------------


def test_load_der_and_pem(alice: Identity) -> None:
    der = certificate_der(alice.certificate)
    pem = alice.certificate.public_bytes(serialization.Encoding.PEM)
    assert load_certificate(der) == alice.certificate
    assert load_certificate(pem) == alice.certificate
    assert load_certificate(b"\n  " + pem.replace(b"\n", b"\r\n") + b"\n\n") == alice.certificate


@pytest.fixture(scope="module")
def der(alice: Identity) -> bytes:
    return certificate_der(alice.certificate)


@pytest.fixture(scope="module")
def pem(alice: Identity) -> bytes:
    return alice.certificate.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda der, pem: b"", "empty certificate"),
        (lambda der, pem: b" \n\t", "empty certificate"),
        (lambda der, pem: b"hello world, not a certificate", "no outer SEQUENCE"),
        (lambda der, pem: der + b"\x00", "1 bytes of trailing data"),
        (lambda der, pem: der + der, "trailing data"),
        (lambda der, pem: der[:-10], "truncated certificate"),
        (lambda der, pem: b"\x30\x03\x02\x01\x00", "malformed certificate"),
        (lambda der, pem: b"\x30\x80" + der[2:], "bad outer length"),
        (lambda der, pem: pem + pem, "2 PEM blocks"),
        (lambda der, pem: pem + b"garbage", "7 bytes of trailing data"),
        (lambda der, pem: b"Certificate:\n" + pem, "text before the PEM block"),
        (
            lambda der, pem: pem.replace(b"CERTIFICATE", b"PRIVATE KEY"),
            "not a CERTIFICATE",
        ),
        (lambda der, pem: pem.replace(b"M", b"!", 1), "malformed PEM block"),
        (lambda der, pem: pem[:-30], "malformed PEM block"),
        (lambda der, pem: pem.replace(b"\nMII", b"\nM=I", 1), "not valid base64"),
    ],
)
def test_load_certificate_rejects(der: bytes, pem: bytes, make: object, fragment: str) -> None:
    assert callable(make)
    with pytest.raises(CertificateParseError) as info:
        load_certificate(make(der, pem))
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("value", "duplicate", "fragment"),
    [
        (SAN_ALICE, True, "Duplicate"),
        (SAN_X400, False, "x400Address"),
        (SAN_TRUNCATED, False, "subject_alternative_name"),
    ],
)
def test_load_certificate_rejects_bad_extensions(
    ec_key: ec.EllipticCurvePrivateKey, value: bytes, duplicate: bool, fragment: str
) -> None:
    der = raw_san(ec_key, value, duplicate=duplicate)
    with pytest.raises(CertificateParseError, match="malformed certificate extensions") as info:
        load_certificate(der)
    assert fragment in str(info.value)
    # The same certificate handed over as an object is discarded, not a crash.
    cert = x509.load_der_x509_certificate(der)
    with pytest.raises(CertificateParseError):
        san_uris(cert)
    [discarded] = validate_retrieved([cert, der], ALICE, NOW).discarded
    assert discarded.reason == DiscardReason.MALFORMED
    assert refusal(cert).reason == "san-malformed"


def test_raw_san_helper_builds_a_readable_san(ec_key: ec.EllipticCurvePrivateKey) -> None:
    cert = load_certificate(raw_san(ec_key, SAN_ALICE))
    assert san_uris(cert) == ["sip:alice@example.com"]


def test_der_containing_pem_marker_is_read_as_der(ec_key: ec.EllipticCurvePrivateKey) -> None:
    cert = build(ec_key, ["sip:alice@example.com", "x:-----BEGIN@example.com"])
    assert load_certificate(certificate_der(cert)) == cert


def test_every_prefix_of_der_fails_cleanly(der: bytes) -> None:
    for end in range(len(der)):
        with pytest.raises(CertificateParseError):
            load_certificate(der[:end])


def test_oversized_certificate(der: bytes) -> None:
    with pytest.raises(InputTooLargeError, match="limit of 100"):
        load_certificate(der, max_size=100)
    with pytest.raises(InputTooLargeError, match="limit of 16384"):
        load_certificate(b"\x30" * 16385)
    assert certificate_der(load_certificate(der, max_size=len(der))) == der


def _patched(der: bytes, offset: int, value: int) -> bytes:
    return der[:offset] + bytes([value]) + der[offset + 1 :]


def version_2(der: bytes) -> bytes:
    """``der`` relabelled as X.509 v2 (version INTEGER 1): RFC 5280 §4.1.2.1 allows it, but
    ``cryptography`` raises its own ``InvalidVersion`` (not a ValueError) on it."""
    at = der.index(b"\xa0\x03\x02\x01\x02") + 4
    return _patched(der, at, 1)


def negative_serial(der: bytes) -> bytes:
    """``der`` with the top bit of its serial set: RFC 5280 §4.1.2.2 wants it positive and
    ``cryptography`` warns (an error under ``-W error``)."""
    at = der.index(b"\xa0\x03\x02\x01\x02") + 7
    return _patched(der, at, der[at] | 0x80)


def bad_subject(der: bytes) -> bytes:
    """``der`` whose issuer and subject UTF8String are not UTF-8: decoded only when read."""
    return der.replace(b"\x0c\x11alice@", b"\x0c\x11\xfflice@")


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (version_2, "version"),
        (negative_serial, "serial"),
        (bad_subject, "malformed certificate"),
    ],
)
def test_one_bad_certificate_never_hides_the_good_ones(
    der: bytes, alice: Identity, mutate: object, fragment: str
) -> None:
    # Issue 8 / draft §4.4: every certificate of the AOR is used, so a bad one is discarded
    # with its reason and the good one is still kept. No warning may escape either.
    assert callable(mutate)
    bad = mutate(der)
    assert bad != der
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CertificateParseError, match=fragment):
            load_certificate(bad)
        result = validate_retrieved([der, bad], ALICE, NOW)
    assert caught == []
    assert result.kept == [alice.certificate]
    [discarded] = result.discarded
    assert discarded.reason == DiscardReason.MALFORMED
    assert discarded.sha256 == hashlib.sha256(bad).hexdigest()
    assert fragment in discarded.detail


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_der_only_raises_parse_errors(
    der: bytes, alice: Identity, data: st.DataObject
) -> None:
    position = data.draw(st.integers(0, len(der) - 1))
    value = data.draw(st.integers(0, 255))
    mutated = der[:position] + bytes([value]) + der[position + 1 :]
    # Whatever the mutation, the good certificate beside it survives (draft §4.4).
    assert validate_retrieved([der, mutated], ALICE, NOW).kept[0] == alice.certificate
    try:
        cert = load_certificate(mutated)
    except CertificateParseError:
        return
    assert certificate_der(cert) == mutated
    try:
        enroll(cert)
    except ForbiddenError:
        pass


@given(st.binary(max_size=300))
def test_random_bytes_only_raise_parse_errors(blob: bytes) -> None:
    with pytest.raises(CertificateParseError):
        load_certificate(blob)


def test_fingerprints(alice: Identity, der: bytes) -> None:
    assert sha256_fingerprint(alice.certificate) == hashlib.sha256(der).hexdigest()
    digest = hashlib.sha1(der, usedforsecurity=False).digest()
    # RFC 4387 §2.1: base64 without the trailing '=' (27 characters).
    assert cert_hash(alice.certificate) == base64.b64encode(digest).decode().rstrip("=")
    assert len(base64.b64decode(cert_hash(alice.certificate) + "=")) == 20


def test_san_uris_none_and_mixed(ec_key: ec.EllipticCurvePrivateKey) -> None:
    assert san_uris(build(ec_key, None)) == []
    assert san_uris(build(ec_key, ["xmpp:a@b.example", "sip:a@b.example"])) == [
        "xmpp:a@b.example",
        "sip:a@b.example",
    ]


def test_verify_self_signature(
    alice: Identity, ec_key: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey
) -> None:
    assert verify_self_signature(build(ec_key, None))
    assert not verify_self_signature(tampered(alice.certificate))
    # Claims to be self-issued but is signed by another key.
    assert not verify_self_signature(build(ec_key, None, signer=rsa_key))
    # Properly signed by another issuer: not self-signed.
    assert not verify_self_signature(build(ec_key, None, signer=rsa_key, issuer="CA"))


# --- retrieval (draft §4.5) -------------------------------------------------------------------


def test_retrieved_good_certificate_is_kept(alice: Identity) -> None:
    result = validate_retrieved([alice.certificate], ALICE, NOW)
    assert result.kept == [alice.certificate]
    assert result.discarded == []


def test_retrieved_other_schemes_and_spellings_are_fine(rsa_key: rsa.RSAPrivateKey) -> None:
    cert = build(
        rsa_key,
        ["SIP:alice@EXAMPLE.COM", "im:alice@example.com", "mailto:al%69ce@example.com"],
    )
    assert validate_retrieved([cert], ALICE, NOW).kept == [cert]


@pytest.mark.parametrize(
    ("uris", "reason", "fragment"),
    [
        (["sip:alice@example.com", "xmpp:mallory@example.com"], "san-mismatch", "mallory"),
        (["sip:alice@example.com", "sip:bob@example.com"], "san-mismatch", "bob@example.com"),
        (["sip:alice@example.org"], "san-mismatch", "alice@example.org"),
        (["sip:alice@sub.example.com"], "san-mismatch", "sub.example.com"),
        (["sip:Alice@example.com"], "san-mismatch", "Alice"),
        (["sip:alice@example.com:5060"], "san-malformed", "port"),
        (["https://example.com/alice"], "san-malformed", "authority"),
        (["urn:example:alice"], "san-malformed", "no '@'"),
        ([], "no-san-uri", "no SubjectAltName URI"),
    ],
)
def test_retrieved_name_mismatches_are_discarded(
    ec_key: ec.EllipticCurvePrivateKey, uris: list[str], reason: str, fragment: str
) -> None:
    cert = build(ec_key, uris)
    result = validate_retrieved([cert], ALICE, NOW)
    assert result.kept == []
    [discarded] = result.discarded
    assert discarded.reason == reason
    assert fragment in discarded.detail
    assert discarded.sha256 == sha256_fingerprint(cert)


def test_retrieved_without_san_extension(ec_key: ec.EllipticCurvePrivateKey) -> None:
    result = validate_retrieved([build(ec_key, None)], ALICE, NOW)
    assert [d.reason for d in result.discarded] == [DiscardReason.NO_SAN_URI]


def test_retrieved_validity_window(alice: Identity) -> None:
    cert = alice.certificate
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    assert validate_retrieved([cert], ALICE, not_before).kept == [cert]
    assert validate_retrieved([cert], ALICE, not_after).kept == [cert]
    late = validate_retrieved([cert], ALICE, not_after + timedelta(seconds=1))
    assert [d.reason for d in late.discarded] == [DiscardReason.EXPIRED]
    early = validate_retrieved([cert], ALICE, not_before - timedelta(seconds=1))
    assert [d.reason for d in early.discarded] == [DiscardReason.NOT_YET_VALID]


MICROSECOND = timedelta(microseconds=1)


def test_retrieved_validity_boundary_is_exact_to_the_microsecond(alice: Identity) -> None:
    # RFC 5280 §4.1.2.5: valid through notAfter inclusive, so one microsecond later (and
    # one before notBefore) it is refused -- not a second later, as a rounded "now" would.
    cert = alice.certificate
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    late = validate_retrieved([cert], ALICE, not_after + MICROSECOND)
    assert late.kept == [] and [d.reason for d in late.discarded] == [DiscardReason.EXPIRED]
    almost = validate_retrieved([cert], ALICE, not_after + timedelta(microseconds=999_999))
    assert [d.reason for d in almost.discarded] == [DiscardReason.EXPIRED]
    early = validate_retrieved([cert], ALICE, not_before - MICROSECOND)
    assert [d.reason for d in early.discarded] == [DiscardReason.NOT_YET_VALID]
    assert validate_retrieved([cert], ALICE, not_after).kept == [cert]
    assert validate_retrieved([cert], ALICE, not_before).kept == [cert]


def test_enrollment_validity_boundary_is_exact_to_the_microsecond(
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    # draft §5.1: the Store refuses an expired certificate; the same exact RFC 5280 window.
    cert = build(ec_key, ["sip:alice@example.com"], not_before=NOW - DAY, not_after=NOW)
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    assert refusal(cert, now=not_after + MICROSECOND).reason == "expired"
    assert refusal(cert, now=not_after + timedelta(microseconds=999_999)).reason == "expired"
    assert refusal(cert, now=not_before - MICROSECOND).reason == "not-yet-valid"
    enroll(cert, now=not_after)
    enroll(cert, now=not_before)


def test_retrieved_tampered_signature(alice: Identity) -> None:
    result = validate_retrieved([tampered(alice.certificate)], ALICE, NOW)
    assert result.kept == []
    assert [d.reason for d in result.discarded] == [DiscardReason.BAD_SELF_SIGNATURE]


def test_retrieved_mixed_list(
    alice: Identity, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    second = build(rsa_key, ["sip:alice@example.com"])
    foreign = build(ec_key, ["sip:alice@example.com", "im:eve@example.com"], serial=1)
    expired = build(ec_key, ["sip:alice@example.com"], not_after=NOW - DAY, serial=2)
    garbage = b"\x30\x03\x02\x01\x00"
    items: list[x509.Certificate | bytes] = [
        foreign,
        certificate_der(alice.certificate),
        garbage,
        expired,
        alice.certificate,  # duplicate of the DER above
        second.public_bytes(serialization.Encoding.PEM),
        tampered(second),
        garbage,  # duplicate garbage
    ]
    result = validate_retrieved(iter(items), ALICE, NOW)
    assert result.kept == [alice.certificate, second]
    assert [(d.sha256, d.reason) for d in result.discarded] == [
        (sha256_fingerprint(foreign), DiscardReason.SAN_MISMATCH),
        (hashlib.sha256(garbage).hexdigest(), DiscardReason.MALFORMED),
        (sha256_fingerprint(expired), DiscardReason.EXPIRED),
        (sha256_fingerprint(tampered(second)), DiscardReason.BAD_SELF_SIGNATURE),
    ]
    assert "malformed certificate" in result.discarded[1].detail


def test_retrieved_rejects_naive_now(alice: Identity) -> None:
    with pytest.raises(ConfigError):
        validate_retrieved([alice.certificate], ALICE, datetime(2024, 6, 1))


# --- enrollment (draft §5.1) ------------------------------------------------------------------


def enroll(cert: x509.Certificate, **overrides: object) -> None:
    arguments: dict[str, object] = {
        "digest_username": "alice",
        "tls_domain": "example.com",
        "now": NOW,
        "max_lifetime": MAX_LIFETIME,
    }
    arguments.update(overrides)
    check_enrollment(cert, **arguments)  # type: ignore[arg-type]


def refusal(cert: x509.Certificate, **overrides: object) -> ForbiddenError:
    with pytest.raises(ForbiddenError) as info:
        enroll(cert, **overrides)
    return info.value


def test_enrollment_accepts_own_certificate(alice: Identity) -> None:
    enroll(alice.certificate)
    enroll(alice.certificate, tls_domain="EXAMPLE.com")


def test_enrollment_accepts_other_schemes_and_ec(ec_key: ec.EllipticCurvePrivateKey) -> None:
    enroll(build(ec_key, ["sip:alice@example.com", "xmpp:alice@Example.com"]))


def test_enrollment_escapes_the_digest_username(ec_key: ec.EllipticCurvePrivateKey) -> None:
    enroll(build(ec_key, ["sip:al%20ice@example.com"]), digest_username="al ice")
    assert refusal(build(ec_key, ["sip:al%20ice@example.com"])).reason == "san-user-mismatch"


@pytest.mark.parametrize(
    ("uris", "reason"),
    [
        ([], "no-san-uri"),
        (None, "no-san-uri"),
        (["sip:alice@example.com:5060"], "san-malformed"),
        (["sip:bob@example.com"], "san-user-mismatch"),
        (["sip:Alice@example.com"], "san-user-mismatch"),
        (["sip:alice@example.com", "im:bob@example.com"], "san-user-mismatch"),
        (["sip:alice@example.org"], "san-domain-mismatch"),
        (["sip:alice@example.com", "im:alice@sub.example.com"], "san-domain-mismatch"),
    ],
)
def test_enrollment_name_refusals(
    ec_key: ec.EllipticCurvePrivateKey, uris: list[str] | None, reason: str
) -> None:
    error = refusal(build(ec_key, uris))
    assert error.reason == reason
    assert error.http_status == 403


def test_enrollment_signature_refusals(
    alice: Identity, ec_key: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey
) -> None:
    assert refusal(tampered(alice.certificate)).reason == "bad-self-signature"
    foreign_signed = build(ec_key, ["sip:alice@example.com"], signer=rsa_key, issuer="CA")
    assert refusal(foreign_signed).reason == "bad-self-signature"


def test_enrollment_refuses_a_correct_sha1_self_signature(rsa_key: rsa.RSAPrivateKey) -> None:
    # Issue 9: SHA-1 was refused as "bad-self-signature ... proof of possession failed".
    sha1 = resign_with_sha1(build(rsa_key, ["sip:alice@example.com"]), rsa_key)
    assert isinstance(sha1.signature_hash_algorithm, hashes.SHA1)
    error = refusal(sha1)
    assert error.reason == "weak-signature-algorithm"
    assert "SHA1" in str(error) and "possession" not in str(error)
    # A tampered SHA-1 certificate is refused for its algorithm too: it is checked first.
    assert refusal(tampered(sha1)).reason == "weak-signature-algorithm"


def test_retrieved_sha1_certificate_has_its_own_discard_reason(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    sha1 = resign_with_sha1(build(rsa_key, ["sip:alice@example.com"]), rsa_key)
    result = validate_retrieved([sha1], ALICE, NOW)
    assert result.kept == []
    assert [d.reason for d in result.discarded] == [DiscardReason.WEAK_SIGNATURE_ALGORITHM]
    assert str(DiscardReason.WEAK_SIGNATURE_ALGORITHM) == "weak-signature-algorithm"


def test_enrollment_time_refusals(ec_key: ec.EllipticCurvePrivateKey) -> None:
    expired = build(ec_key, ["sip:alice@example.com"], not_after=NOW - DAY)
    assert refusal(expired).reason == "expired"
    future = build(ec_key, ["sip:alice@example.com"], not_before=NOW + DAY)
    assert refusal(future).reason == "not-yet-valid"
    long_lived = build(ec_key, ["sip:alice@example.com"], not_after=NOW + 365 * DAY)
    error = refusal(long_lived)
    assert error.reason == "lifetime-too-long"
    enroll(long_lived, max_lifetime=400 * DAY)


@pytest.fixture(scope="module")
def weak_keys() -> list[rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey]:
    return [
        rsa.generate_private_key(public_exponent=65537, key_size=1024),  # noqa: S505 (the point)
        ec.generate_private_key(ec.SECP256K1()),
        ec.generate_private_key(ec.SECP224R1()),
    ]


def test_enrollment_weak_keys(
    weak_keys: list[rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey],
) -> None:
    for key in weak_keys:
        error = refusal(build(key, ["sip:alice@example.com"]))
        assert error.reason == "weak-key"
    ed = build(ed25519.Ed25519PrivateKey.generate(), ["sip:alice@example.com"])
    assert refusal(ed).reason == "weak-key"
    for curve in (ec.SECP384R1(), ec.SECP521R1()):
        enroll(build(ec.generate_private_key(curve), ["sip:alice@example.com"]))


def test_enrollment_checks_names_before_time(ec_key: ec.EllipticCurvePrivateKey) -> None:
    cert = build(ec_key, ["sip:bob@example.com"], not_after=NOW - DAY)
    assert refusal(cert).reason == "san-user-mismatch"
    assert refusal(tampered(cert), digest_username="bob").reason == "bad-self-signature"


def test_enrollment_configuration_errors(alice: Identity) -> None:
    with pytest.raises(AORError):
        enroll(alice.certificate, tls_domain="192.0.2.1")
    with pytest.raises(ConfigError, match="positive"):
        enroll(alice.certificate, max_lifetime=timedelta(0))
    with pytest.raises(ConfigError, match="timezone-aware"):
        enroll(alice.certificate, now=datetime(2024, 6, 1))
    assert refusal(alice.certificate, digest_username="").reason == "san-user-mismatch"
