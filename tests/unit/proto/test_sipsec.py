"""The protected SIP body (draft §4.4, §4.2, step 5; RFC 3261 §23) built and taken apart."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from sipcert.errors import CryptoError
from sipcert.proto import cms, smime
from sipcert.proto.aor import parse_aor
from sipcert.proto.certs import Identity, generate_identity
from sipcert.proto.indirection import parse_external_body
from sipcert.proto.mime import MimePart, build_multipart, parse_multipart
from sipcert.proto.sipsec import (
    Outcome,
    Reason,
    open_protected,
    protect,
    response_status,
    split_body,
)

NOW = datetime.now(UTC)
ALICE = parse_aor("alice@example.com")
BOB = parse_aor("bob@example.net")
URL = "https://certificates.example.com/search-cgi?email=alice%40example.com"
TEXT = MimePart("text/plain; charset=utf-8", "héllo Bob\r\n".encode())


@pytest.fixture(scope="module")
def alice() -> Identity:
    return generate_identity(ALICE, now=NOW)


@pytest.fixture(scope="module")
def bob_devices() -> tuple[Identity, Identity]:
    return generate_identity(BOB, now=NOW), generate_identity(BOB, now=NOW)


@pytest.fixture(scope="module")
def stranger() -> Identity:
    return generate_identity(BOB, now=NOW)


def test_layout_is_mixed_of_enveloped_data_and_a_reference(
    alice: Identity, bob_devices: tuple[Identity, Identity]
) -> None:
    body = protect(
        TEXT,
        alice.key,
        alice.certificate,
        [d.certificate for d in bob_devices],
        certificate_url=URL,
        domain="example.com",
    )
    assert body.media_type == "multipart/mixed"
    parts = parse_multipart(body.content_type, body.body).parts
    assert [p.media_type for p in parts] == ["application/pkcs7-mime", "message/external-body"]
    enveloped, reference = parts
    assert enveloped.params["smime-type"] == "authEnveloped-data"  # AES-GCM, RFC 8551 §3.4
    assert enveloped.header("Content-Disposition") == (
        "attachment; handling=required; filename=smime.p7m"
    )
    # draft §4.4: the CEK is wrapped for EVERY certificate of the callee.
    ids = cms.recipient_identifiers(enveloped.body)
    assert {(i.issuer, i.serial_number) for i in ids} == {
        (d.certificate.issuer, d.certificate.serial_number) for d in bob_devices
    }
    ref = parse_external_body(reference)
    assert ref.url == URL
    assert ref.content_type == "application/pkix-cert"
    assert ref.content_id.endswith("@example.com>")
    assert TEXT.body not in body.body  # the content is encrypted


def test_without_url_the_body_is_the_enveloped_data(
    alice: Identity, bob_devices: tuple[Identity, Identity]
) -> None:
    body = protect(TEXT, alice.key, alice.certificate, [bob_devices[0].certificate])
    assert body.media_type == "application/pkcs7-mime"
    outcome = open_protected(body, bob_devices[0].key, bob_devices[0].certificate, ALICE, NOW)
    assert outcome.reason is Reason.UNCHECKED
    assert outcome.reference is None


def test_every_device_decrypts_and_verifies(
    alice: Identity, bob_devices: tuple[Identity, Identity]
) -> None:
    body = protect(
        TEXT,
        alice.key,
        alice.certificate,
        [d.certificate for d in bob_devices],
        certificate_url=URL,
    )
    for device in bob_devices:
        outcome = open_protected(body, device.key, device.certificate, ALICE, NOW)
        assert outcome.reason is Reason.UNCHECKED
        assert outcome.needs_store_check
        assert outcome.content == TEXT
        assert outcome.text == "héllo Bob\r\n"
        assert outcome.signer == alice.certificate
        assert outcome.reference is not None and outcome.reference.url == URL
        with pytest.raises(ValueError, match="Store check"):
            response_status(outcome, "MESSAGE")
        verified = outcome.after_store_check(True, "enrolled")
        assert verified.verified
        assert str(verified) == "verified as alice@example.com"
        assert response_status(verified, "MESSAGE") == 200
        assert response_status(verified, "INVITE") == 200
        assert verified.after_store_check(False) is verified  # already final


def test_store_check_outcomes(alice: Identity, bob_devices: tuple[Identity, Identity]) -> None:
    device = bob_devices[0]
    body = protect(TEXT, alice.key, alice.certificate, [device.certificate])
    opened = open_protected(body, device.key, device.certificate, ALICE, NOW)
    missing = opened.after_store_check(False)
    assert missing.reason is Reason.SIGNER_NOT_ENROLLED
    assert "example.com" in missing.detail
    assert str(missing).startswith("not verified: signer-not-enrolled")
    assert response_status(missing, "MESSAGE") == 200  # delivered, flagged (RFC 3261 §23.2)
    assert response_status(missing, "INVITE") == 603
    assert response_status(missing, "INVITE", accept_unverified=True) == 200
    down = opened.after_store_check(None, "connection refused")
    assert down.reason is Reason.STORE_UNREACHABLE
    assert down.detail == "connection refused"
    assert response_status(down, "MESSAGE") == 200
    assert response_status(down, "INVITE") == 480


def test_not_a_recipient_is_493(
    alice: Identity, bob_devices: tuple[Identity, Identity], stranger: Identity
) -> None:
    body = protect(TEXT, alice.key, alice.certificate, [d.certificate for d in bob_devices])
    outcome = open_protected(body, stranger.key, stranger.certificate, ALICE, NOW)
    assert outcome.reason is Reason.NOT_A_RECIPIENT
    assert outcome.content is None and outcome.signer is None
    assert f"{stranger.certificate.serial_number:x}" in outcome.detail
    assert response_status(outcome, "MESSAGE") == 493
    assert response_status(outcome, "INVITE") == 493


def test_garbage_enveloped_data_is_undecipherable(bob_devices: tuple[Identity, Identity]) -> None:
    device = bob_devices[0]
    body = MimePart("application/pkcs7-mime; smime-type=enveloped-data", b"\x30\x03\x02\x01\x00")
    outcome = open_protected(body, device.key, device.certificate, ALICE, NOW)
    assert outcome.reason is Reason.UNDECIPHERABLE
    assert response_status(outcome, "MESSAGE") == 493


def test_tampered_signed_content_is_a_bad_signature(
    alice: Identity, bob_devices: tuple[Identity, Identity]
) -> None:
    device = bob_devices[0]
    signed = smime.sign(TEXT, alice.key, alice.certificate)
    tampered = replace(signed, body=signed.body.replace(b"Bob", b"Rob"))
    body = smime.encrypt(tampered, [device.certificate])
    outcome = open_protected(body, device.key, device.certificate, ALICE, NOW)
    assert outcome.reason is Reason.BAD_SIGNATURE
    assert "messageDigest" in outcome.detail
    assert outcome.content is None  # nothing unattributable is handed out
    assert response_status(outcome, "MESSAGE") == 400
    assert response_status(outcome, "INVITE") == 400


def test_encrypted_but_unsigned_is_a_bad_signature(bob_devices: tuple[Identity, Identity]) -> None:
    device = bob_devices[0]
    body = smime.encrypt(TEXT, [device.certificate])
    outcome = open_protected(body, device.key, device.certificate, ALICE, NOW)
    assert outcome.reason is Reason.BAD_SIGNATURE
    assert "not multipart/signed" in outcome.detail


def test_signer_of_another_aor_is_not_the_sender(
    bob_devices: tuple[Identity, Identity],
) -> None:
    mallory = generate_identity(parse_aor("mallory@example.com"), now=NOW)
    device = bob_devices[0]
    body = protect(TEXT, mallory.key, mallory.certificate, [device.certificate])
    outcome = open_protected(body, device.key, device.certificate, ALICE, NOW)
    assert outcome.reason is Reason.SIGNER_NOT_SENDER
    assert "san-mismatch" in outcome.detail and "mallory@example.com" in outcome.detail
    assert outcome.signer == mallory.certificate
    assert not outcome.needs_store_check
    assert response_status(outcome, "MESSAGE") == 200
    assert response_status(outcome, "INVITE") == 603


def test_expired_signer_is_invalid(alice: Identity, bob_devices: tuple[Identity, Identity]) -> None:
    device = bob_devices[0]
    body = protect(TEXT, alice.key, alice.certificate, [device.certificate])
    later = NOW + timedelta(days=60)
    outcome = open_protected(body, device.key, device.certificate, ALICE, later)
    assert outcome.reason is Reason.SIGNER_INVALID
    assert outcome.detail.startswith("expired")


def test_unprotected_bodies(bob_devices: tuple[Identity, Identity]) -> None:
    device = bob_devices[0]
    plain = open_protected(TEXT, device.key, device.certificate, ALICE, NOW)
    assert plain.reason is Reason.NOT_PROTECTED
    assert plain.content == TEXT and plain.text == "héllo Bob\r\n"
    assert "text/plain" in plain.detail
    assert response_status(plain, "MESSAGE") == 200
    assert response_status(plain, "INVITE") == 488
    empty = open_protected(None, device.key, device.certificate, ALICE, NOW)
    assert empty.reason is Reason.NOT_PROTECTED and empty.detail == "the request has no body"
    mixed = build_multipart("mixed", [TEXT, TEXT])
    assert open_protected(mixed, device.key, device.certificate, ALICE, NOW).detail == (
        "multipart/mixed holds 0 pkcs7-mime parts, not 1"
    )


def test_a_bad_reference_is_ignored(
    alice: Identity, bob_devices: tuple[Identity, Identity]
) -> None:
    device = bob_devices[0]
    enveloped = protect(TEXT, alice.key, alice.certificate, [device.certificate])
    bogus = MimePart('message/external-body; access-type="URL"; URL="http://x.invalid/"', b"")
    body = build_multipart("mixed", [enveloped, bogus])
    found, reference, problem = split_body(body)
    assert found is not None and reference == bogus and problem == ""
    outcome = open_protected(body, device.key, device.certificate, ALICE, NOW)
    assert outcome.reason is Reason.UNCHECKED
    assert outcome.reference is None


def test_protect_needs_recipients(alice: Identity) -> None:
    with pytest.raises(CryptoError, match="no recipient"):
        protect(TEXT, alice.key, alice.certificate, [])


def test_outcome_text_only_for_text() -> None:
    sdp = Outcome(Reason.VERIFIED, ALICE, content=MimePart("application/sdp", b"v=0\r\n"))
    assert sdp.text is None
    odd = Outcome(Reason.VERIFIED, ALICE, content=MimePart("text/plain; charset=nope", b"hi"))
    assert odd.text == "hi"
    assert sdp.signer_sha256 is None
