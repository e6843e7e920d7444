"""A local test certificate authority for the Store's TLS certificates.

The draft relies on the Store presenting a certificate "signed by a well known certificate
authority" for its domain (draft §7.1). For development, the self-test and the demo, a
local CA stands in for that authority: its root is handed to clients as ``--ca-file``.
ECDSA P-256 keeps handshakes cheap (FIELD-NOTES: ~29k signatures/s per core).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from ipaddress import ip_address

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sipcert.errors import ConfigError, InputError

__all__ = ["IssuedCertificate", "TestCA"]

_SKEW = timedelta(minutes=5)


def _serial() -> int:
    return secrets.randbits(159) | 1


@dataclass(frozen=True)
class IssuedCertificate:
    """A server certificate and its key, with PEM encodings ready to write out."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


@dataclass(frozen=True)
class TestCA:
    """A self-signed root that issues TLS server certificates for named domains."""

    __test__ = False  # not a pytest test class, despite the name

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def create(cls, *, now: datetime, name: str = "sipcert test CA", days: int = 3650) -> TestCA:
        """A new root CA valid for ``days`` from ``now``."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(_serial())
            .not_valid_before(now - _SKEW)
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key=key, certificate=cert)

    @classmethod
    def load(cls, cert_pem: bytes, key_pem: bytes) -> TestCA:
        """A CA from its PEM certificate and unencrypted PEM key."""
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise InputError(f"test CA files do not hold a certificate and key: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise InputError("test CA key is not an EC key")
        return cls(key=key, certificate=cert)

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return IssuedCertificate(self.key, self.certificate).key_pem

    def issue(
        self,
        dns_names: Sequence[str] = (),
        *,
        now: datetime,
        days: int = 365,
        ip_addresses: Sequence[str] = (),
    ) -> IssuedCertificate:
        """A TLS server certificate whose SANs are exactly these names and addresses.

        Names are taken as given (wildcards and sub-domains included), so tests can build
        the certificates a misbehaving Store would present.
        """
        if not dns_names and not ip_addresses:
            raise ConfigError("a server certificate needs at least one DNS name or IP address")
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        names += [x509.IPAddress(ip_address(a)) for a in ip_addresses]
        common = dns_names[0] if dns_names else ip_addresses[0]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common[:64])]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(_serial())
            .not_valid_before(now - _SKEW)
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return IssuedCertificate(key=key, certificate=cert)
