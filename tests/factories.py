"""Test keys and self-signed certificates, built with ``cryptography`` only.

Identities look like what draft-jennings-sipping-certs-02 §3 describes: a self-signed
certificate whose SubjectAltName holds the AOR as a URI (``sip:alice@example.com``).
Everything is deterministic except RSA key material: EC keys are derived from the AOR, RSA
keys (slow to generate) are generated once per session and cached per (kind, AOR, slot).
Use ``slot`` to get a second, different key for the same AOR (several devices, draft §4.4).
"""

from __future__ import annotations

import datetime
import functools
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyKind = Literal["rsa2048", "rsa3072", "ec-p256", "ec-p384"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

#: Fixed validity so certificates are reproducible; far enough out for any test run.
NOT_BEFORE = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
NOT_AFTER = datetime.datetime(2049, 12, 31, tzinfo=datetime.UTC)

_CURVES: dict[str, type[ec.EllipticCurve]] = {"ec-p256": ec.SECP256R1, "ec-p384": ec.SECP384R1}


def _seed(*parts: object) -> bytes:
    return hashlib.sha256("\x00".join(map(str, parts)).encode()).digest()


@functools.cache
def make_key(
    kind: KeyKind = "rsa2048", aor: str = "alice@example.com", slot: int = 0
) -> PrivateKey:
    """A private key for ``aor``; the same arguments give the same key within a session."""
    if kind in _CURVES:
        curve = _CURVES[kind]()
        order = {"ec-p256": 2**256, "ec-p384": 2**384}[kind]
        scalar = int.from_bytes(_seed(kind, aor, slot) * 2) % (order // 2) + 1
        return ec.derive_private_key(scalar, curve)
    bits = {"rsa2048": 2048, "rsa3072": 3072}[kind]
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def make_cert(
    key: PrivateKey,
    aor: str = "alice@example.com",
    *,
    uris: Sequence[str] | None = None,
    serial: int | None = None,
    not_before: datetime.datetime = NOT_BEFORE,
    not_after: datetime.datetime = NOT_AFTER,
    issuer: x509.Name | None = None,
    issuer_key: PrivateKey | None = None,
    subject_key_identifier: bool = True,
) -> x509.Certificate:
    """A certificate for ``aor`` with SAN URIs ``uris`` (default ``sip:<aor>``).

    Self-signed unless ``issuer``/``issuer_key`` are given. The serial number is derived
    from the AOR and public key, so it is stable and differs between keys.
    """
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, aor),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sipcert tests"),
        ]
    )
    public_der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if serial is None:
        serial = int.from_bytes(_seed(aor, public_der.hex())[:16]) >> 1 or 1
    is_rsa = isinstance(key, rsa.RSAPrivateKey)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer or subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(u) for u in (uris or [f"sip:{aor}"])]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
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
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False
        )
    )
    if subject_key_identifier:
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    return builder.sign(issuer_key or key, hashes.SHA256())


@functools.cache
def make_identity(
    aor: str = "alice@example.com", key: KeyKind = "rsa2048", slot: int = 0
) -> tuple[PrivateKey, x509.Certificate]:
    """``(private key, self-signed certificate)`` for ``aor``; cached per arguments."""
    private_key = make_key(key, aor, slot)
    return private_key, make_cert(private_key, aor)


def rsa_identity(
    aor: str = "alice@example.com", key: KeyKind = "rsa2048", slot: int = 0
) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """Like :func:`make_identity` but typed for RSA (what decryption needs)."""
    private_key, cert = make_identity(aor, key, slot)
    assert isinstance(private_key, rsa.RSAPrivateKey)
    return private_key, cert


def write_pem(
    directory: Path, name: str, key: PrivateKey, cert: x509.Certificate
) -> tuple[Path, Path]:
    """Write ``<name>.key`` (PKCS#8, unencrypted) and ``<name>.pem``; return both paths."""
    key_path = directory / f"{name}.key"
    cert_path = directory / f"{name}.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


_SHA256_WITH_RSA = bytes.fromhex("06092a864886f70d01010b")  # OID 1.2.840.113549.1.1.11
_SHA1_WITH_RSA = bytes.fromhex("06092a864886f70d010105")  # OID 1.2.840.113549.1.1.5


def resign_with_sha1(cert: x509.Certificate, key: rsa.RSAPrivateKey) -> x509.Certificate:
    """``cert`` (RSA, SHA-256, signed by ``key``) correctly re-signed with SHA-1.

    ``cryptography`` refuses to build SHA-1 certificates, so the DER is edited: both
    signature AlgorithmIdentifiers become sha1WithRSAEncryption (an OID of the same length)
    and the signature, of the same length for the same RSA key, is recomputed over the new
    TBSCertificate. The result is what ``openssl req -x509 -sha1`` makes.
    """
    der = cert.public_bytes(serialization.Encoding.DER)
    signature = cert.signature
    assert der.count(_SHA256_WITH_RSA) == 2 and der.endswith(signature)
    tbs = cert.tbs_certificate_bytes.replace(_SHA256_WITH_RSA, _SHA1_WITH_RSA)
    new_signature = key.sign(tbs, padding.PKCS1v15(), hashes.SHA1())  # noqa: S303 (the point)
    assert len(new_signature) == len(signature)
    body = der[: -len(signature)].replace(_SHA256_WITH_RSA, _SHA1_WITH_RSA)
    return x509.load_der_x509_certificate(body + new_signature)
