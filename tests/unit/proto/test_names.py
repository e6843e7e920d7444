"""The TLS server-name rule of draft §4.3: exact dNSName match, nothing else."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier
from hypothesis import given
from hypothesis import strategies as st

from sipcert.errors import AORError, CertificateParseError, NameMismatchError
from sipcert.proto.names import (
    check_server_certificate,
    dns_name_matches,
    server_certificate_names,
)

NOW = datetime(2024, 6, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def server_cert(
    key: ec.EllipticCurvePrivateKey,
    sans: list[x509.GeneralName] | None,
    common_name: str = "store",
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
    )
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256())


@pytest.mark.parametrize(
    ("presented", "domain", "matches"),
    [
        ("example.com", "example.com", True),
        ("EXAMPLE.com", "example.COM", True),
        ("certificates.example.com", "example.com", False),  # sub-domain (draft §4.3)
        ("example.com", "sub.example.com", False),  # parent domain
        ("*.example.com", "sub.example.com", False),  # wildcard
        ("*.example.com", "example.com", False),
        ("ex*.com", "example.com", False),
        ("*", "example.com", False),
        ("192.0.2.1", "192.0.2.1", False),  # IP as dNSName never matches
        ("2001:db8::1", "2001:db8::1", False),
        ("[2001:db8::1]", "example.com", False),
        ("example.com.", "example.com", False),  # malformed: trailing dot
        ("bücher.example", "bücher.example", False),  # U-label
        ("xn--bcher-kva.example", "XN--BCHER-KVA.example", True),  # A-label is plain LDH
        ("exa mple.com", "exa mple.com", False),
        ("", "example.com", False),
        ("example.com", "", False),
        ("example.org", "example.com", False),
        ("example.com", "1.2.3.4", False),
    ],
)
def test_dns_name_matches(presented: str, domain: str, matches: bool) -> None:
    assert dns_name_matches(presented, domain) is matches


@given(st.text(max_size=80), st.text(max_size=80))
def test_dns_name_matches_never_raises(presented: str, domain: str) -> None:
    result = dns_name_matches(presented, domain)
    if result:
        assert presented.lower() == domain.lower()
        assert "*" not in presented


def test_exact_san_passes_case_insensitively(key: ec.EllipticCurvePrivateKey) -> None:
    cert = server_cert(key, [x509.DNSName("Other.example"), x509.DNSName("EXAMPLE.com")])
    assert server_certificate_names(cert) == ["Other.example", "EXAMPLE.com"]
    check_server_certificate(cert, "example.com")
    check_server_certificate(cert, "Example.Com")


@pytest.mark.parametrize(
    "sans",
    [
        [x509.DNSName("certificates.example.com")],
        [x509.DNSName("com")],
        [x509.DNSName("*.example.com")],
        [x509.DNSName("ex*.com")],
        [x509.DNSName("example.org")],
    ],
)
def test_other_dns_names_mismatch(
    key: ec.EllipticCurvePrivateKey, sans: list[x509.GeneralName]
) -> None:
    cert = server_cert(key, sans)
    with pytest.raises(NameMismatchError) as info:
        check_server_certificate(cert, "example.com")
    assert info.value.expected == "example.com"
    assert info.value.presented == [str(sans[0].value)]
    assert "draft §4.3" in str(info.value)


def test_ip_san_never_matches(key: ec.EllipticCurvePrivateKey) -> None:
    cert = server_cert(key, [x509.IPAddress(ipaddress.ip_address("192.0.2.1"))])
    assert server_certificate_names(cert) == []
    with pytest.raises(NameMismatchError) as info:
        check_server_certificate(cert, "example.com")
    assert info.value.presented == []
    assert "no DNS name" in str(info.value)
    # An IP host is not a valid AOR domain in the first place.
    with pytest.raises(AORError, match="IP address"):
        check_server_certificate(cert, "192.0.2.1")


def test_ip_string_as_dns_name_never_matches(key: ec.EllipticCurvePrivateKey) -> None:
    cert = server_cert(key, [x509.DNSName("192.0.2.1")])
    with pytest.raises(NameMismatchError):
        check_server_certificate(cert, "example.com")


def test_uri_san_is_not_a_server_name(key: ec.EllipticCurvePrivateKey) -> None:
    cert = server_cert(key, [x509.UniformResourceIdentifier("https://example.com/")])
    assert server_certificate_names(cert) == []
    with pytest.raises(NameMismatchError):
        check_server_certificate(cert, "example.com")


def test_no_san_extension_never_matches(key: ec.EllipticCurvePrivateKey) -> None:
    cert = server_cert(key, None, common_name="example.com")
    assert server_certificate_names(cert) == []
    with pytest.raises(NameMismatchError) as info:
        check_server_certificate(cert, "example.com")
    assert info.value.presented == []


def test_undecodable_san_is_a_parse_error(key: ec.EllipticCurvePrivateKey) -> None:
    # An x400Address GeneralName, which cryptography cannot represent.
    odd = x509.UnrecognizedExtension(ObjectIdentifier("2.5.29.99"), b"\x30\x04\xa3\x02\x30\x00")
    builder_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "store")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "store")]))
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(odd, critical=False)
        .sign(key, hashes.SHA256())
    )
    der = builder_cert.public_bytes(serialization.Encoding.DER).replace(
        b"\x55\x1d\x63", b"\x55\x1d\x11"
    )
    cert = x509.load_der_x509_certificate(der)
    with pytest.raises(CertificateParseError, match="do not decode"):
        check_server_certificate(cert, "example.com")


def test_common_name_is_never_a_fallback(key: ec.EllipticCurvePrivateKey) -> None:
    cert = server_cert(key, [x509.DNSName("other.example")], common_name="example.com")
    with pytest.raises(NameMismatchError) as info:
        check_server_certificate(cert, "example.com")
    assert info.value.presented == ["other.example"]
