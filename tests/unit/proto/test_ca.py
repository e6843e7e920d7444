"""The local test CA that stands in for a well-known CA (draft §7.1)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cryptography import x509

from sipcert.errors import ConfigError, InputError
from sipcert.proto.ca import TestCA
from sipcert.proto.names import check_server_certificate, server_certificate_names

NOW = datetime(2026, 11, 28, tzinfo=UTC)


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA.create(now=NOW)


def test_issued_certificate_chains_to_the_root(ca: TestCA) -> None:
    issued = ca.issue(["example.com"], now=NOW)
    issued.certificate.verify_directly_issued_by(ca.certificate)
    assert server_certificate_names(issued.certificate) == ["example.com"]
    check_server_certificate(issued.certificate, "example.com")
    basic = ca.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca is True


def test_ip_only_certificate_has_no_dns_name(ca: TestCA) -> None:
    issued = ca.issue(ip_addresses=["127.0.0.1"], now=NOW)
    assert server_certificate_names(issued.certificate) == []


def test_round_trip_through_pem(ca: TestCA) -> None:
    again = TestCA.load(ca.cert_pem, ca.key_pem)
    assert again.certificate == ca.certificate
    issued = again.issue(["example.net"], now=NOW)
    issued.certificate.verify_directly_issued_by(ca.certificate)
    assert b"BEGIN PRIVATE KEY" in issued.key_pem
    assert b"BEGIN CERTIFICATE" in issued.cert_pem


def test_load_rejects_garbage() -> None:
    with pytest.raises(InputError, match="do not hold"):
        TestCA.load(b"nope", b"nope")


def test_issue_needs_a_name(ca: TestCA) -> None:
    with pytest.raises(ConfigError):
        ca.issue([], now=NOW)
