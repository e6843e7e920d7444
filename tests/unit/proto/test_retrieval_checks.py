"""RetrievalChecks (issue 13): fetched-again certificates skip decoding and the signature
check, never the validity period (draft §4.5: valid *now*)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sipcert.proto.aor import parse_aor
from sipcert.proto.certs import (
    DiscardReason,
    RetrievalChecks,
    certificate_der,
    generate_identity,
    validate_retrieved,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
BOB = parse_aor("bob@example.com")
ALICE = parse_aor("alice@example.com")


def test_a_cached_certificate_is_still_checked_against_the_clock() -> None:
    der = certificate_der(generate_identity(BOB, now=NOW, validity=timedelta(days=2)).certificate)
    checks = RetrievalChecks()
    first = validate_retrieved([der], BOB, NOW, checks=checks)
    assert len(first.kept) == 1 and checks.hits == 0
    again = validate_retrieved([der], BOB, NOW + timedelta(hours=1), checks=checks)
    assert again.kept == first.kept  # the same parsed certificate, from the cache
    assert checks.hits == 1
    later = validate_retrieved([der], BOB, NOW + timedelta(days=3), checks=checks)
    assert later.kept == []
    assert [d.reason for d in later.discarded] == [DiscardReason.EXPIRED]
    earlier = validate_retrieved([der], BOB, NOW - timedelta(days=1), checks=checks)
    assert [d.reason for d in earlier.discarded] == [DiscardReason.NOT_YET_VALID]
    assert checks.hits == 3


def test_the_same_bytes_for_another_aor_are_checked_for_that_aor() -> None:
    der = certificate_der(generate_identity(BOB, now=NOW).certificate)
    checks = RetrievalChecks()
    assert len(validate_retrieved([der], BOB, NOW, checks=checks).kept) == 1
    other = validate_retrieved([der], ALICE, NOW, checks=checks)
    assert [d.reason for d in other.discarded] == [DiscardReason.SAN_MISMATCH]
    # The refusal is remembered too, and answered the same.
    assert validate_retrieved([der], ALICE, NOW, checks=checks).discarded == other.discarded


def test_same_answers_with_and_without_the_cache() -> None:
    good = certificate_der(generate_identity(BOB, now=NOW).certificate)
    tampered = bytearray(good)
    tampered[-5] ^= 0x01  # in the signature: decodes, does not verify
    items = [good, bytes(tampered), b"\x30\x03junk", good]
    checks = RetrievalChecks()
    plain = validate_retrieved(items, BOB, NOW)
    for _ in range(2):
        cached = validate_retrieved(items, BOB, NOW, checks=checks)
        assert cached.discarded == plain.discarded
        assert len(cached.kept) == len(plain.kept) == 1
    assert {d.reason for d in plain.discarded} == {
        DiscardReason.BAD_SELF_SIGNATURE,
        DiscardReason.MALFORMED,
    }


def test_parsed_certificates_are_cached_too() -> None:
    cert = generate_identity(BOB, now=NOW).certificate
    checks = RetrievalChecks()
    assert validate_retrieved([cert], BOB, NOW, checks=checks).kept == [cert]
    assert validate_retrieved([cert], BOB, NOW, checks=checks).kept == [cert]
    assert checks.hits == 1


def test_the_cache_is_bounded() -> None:
    checks = RetrievalChecks(max_entries=2)
    ders = [certificate_der(generate_identity(BOB, now=NOW).certificate) for _ in range(3)]
    for der in ders:
        validate_retrieved([der], BOB, NOW, checks=checks)
    assert len(checks) == 2
    validate_retrieved([ders[0]], BOB, NOW, checks=checks)  # the oldest went first
    assert checks.hits == 0
    with pytest.raises(ValueError, match="max_entries"):
        RetrievalChecks(max_entries=0)
