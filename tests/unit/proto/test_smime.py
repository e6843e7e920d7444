"""S/MIME bodies for SIP: multipart/signed and application/pkcs7-mime (RFC 3261 §23)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipcert.errors import DecryptionError, MIMEError, SignatureError
from sipcert.proto import cms, smime
from sipcert.proto.cms import Cipher, recipient_identifiers
from sipcert.proto.mime import MimePart, build_multipart, parse_mime_part, parse_multipart
from tests.factories import KeyKind, make_identity, rsa_identity

SDP = MimePart(
    "application/sdp",
    b"v=0\r\no=alice 2890844526 2890844526 IN IP4 192.0.2.1\r\ns=-\r\n"
    b"c=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0\r\n",
    (("Content-Disposition", "session"),),
)


@pytest.mark.parametrize(
    ("kind", "pss"), [("rsa2048", False), ("rsa2048", True), ("ec-p256", False)]
)
def test_sign_verify_round_trip(kind: KeyKind, pss: bool) -> None:
    key, cert = make_identity("alice@example.com", kind)
    signed = smime.sign(SDP, key, cert, rsa_pss=pss)
    assert signed.media_type == "multipart/signed"
    assert signed.params["protocol"] == "application/pkcs7-signature"
    assert signed.params["micalg"] == "sha-256"
    parsed = parse_multipart(signed.content_type, signed.body)
    assert parsed.raw_parts[0] == SDP.to_bytes()
    signature = parsed.parts[1]
    assert signature.content_type == "application/pkcs7-signature; name=smime.p7s"
    assert signature.header("Content-Transfer-Encoding") == "binary"
    assert "handling=required" in (signature.header("Content-Disposition") or "")
    verified = smime.verify(signed)
    assert verified.content == SDP
    assert verified.signer == cert


def test_verify_after_wire_round_trip() -> None:
    key, cert = make_identity("alice@example.com", "ec-p256")
    wire = smime.sign(SDP, key, cert, digest="sha512").to_bytes()
    received = parse_mime_part(wire)
    assert received.params["micalg"] == "sha-512"
    assert smime.verify(received).signer == cert


@pytest.mark.parametrize("count", [1, 3])
@pytest.mark.parametrize("cipher", ["aes128", "aes256"])
def test_encrypt_each_recipient_decrypts(count: int, cipher: Cipher) -> None:
    recipients = [
        rsa_identity("bob@example.com"),
        rsa_identity("bob@example.com", slot=1),
        rsa_identity("carol@example.com"),
    ][:count]
    encrypted = smime.encrypt(SDP, [cert for _, cert in recipients], cipher=cipher)
    assert encrypted.content_type == smime.AUTH_ENVELOPED_CONTENT_TYPE
    assert encrypted.header("Content-Disposition") == (
        "attachment; handling=required; filename=smime.p7m"
    )
    assert encrypted.header("Content-Transfer-Encoding") == "binary"
    assert len(recipient_identifiers(encrypted.body)) == count
    for key, cert in recipients:
        assert smime.decrypt(encrypted, key, cert) == SDP
    assert smime.decrypt(parse_mime_part(encrypted.to_bytes()), *recipients[0]) == SDP


def test_not_a_recipient() -> None:
    _, bob = rsa_identity("bob@example.com")
    eve_key, eve = rsa_identity("eve@example.com")
    encrypted = smime.encrypt(SDP, [bob])
    with pytest.raises(DecryptionError, match="not a recipient"):
        smime.decrypt(encrypted, eve_key, eve)
    with pytest.raises(DecryptionError, match="not a recipient"):
        smime.decrypt_and_verify(encrypted, eve_key, eve)


@pytest.mark.parametrize("kind", ["rsa2048", "ec-p256"])
def test_sign_and_encrypt_then_decrypt_and_verify(kind: KeyKind) -> None:
    alice_key, alice = make_identity("alice@example.com", kind)
    recipients = [rsa_identity("bob@example.com"), rsa_identity("bob@example.com", slot=1)]
    message = smime.sign_and_encrypt(SDP, alice_key, alice, [c for _, c in recipients])
    assert message.media_type == "application/pkcs7-mime"
    for key, cert in recipients:
        verified = smime.decrypt_and_verify(parse_mime_part(message.to_bytes()), key, cert)
        assert verified.content == SDP
        assert verified.signer == alice


def test_decrypt_and_verify_requires_a_signature() -> None:
    key, cert = rsa_identity("bob@example.com")
    with pytest.raises(MIMEError, match="not signed"):
        smime.decrypt_and_verify(smime.encrypt(SDP, [cert]), key, cert)


@pytest.mark.parametrize(
    "algorithms", [cms.DEFAULT_ALGORITHMS, cms.LEGACY_ALGORITHMS], ids=["gcm-oaep", "cbc-v15"]
)
def test_encrypt_to_mixed_rsa_and_ec_devices(algorithms: cms.EnvelopeAlgorithms) -> None:
    """Issue 11 / draft §4.4: one EC device of an AOR no longer breaks the envelope."""
    devices = [
        rsa_identity("carol@example.com"),
        make_identity("carol@example.com", "ec-p256"),
        make_identity("carol@example.com", "ec-p384", slot=1),
        rsa_identity("carol@example.com", slot=1),
    ]
    encrypted = smime.encrypt(SDP, [cert for _, cert in devices], algorithms=algorithms)
    gcm = algorithms.content.endswith("gcm")
    assert encrypted.content_type == (
        smime.AUTH_ENVELOPED_CONTENT_TYPE if gcm else smime.ENVELOPED_CONTENT_TYPE
    )
    assert len(recipient_identifiers(encrypted.body)) == 4
    for key, cert in devices:
        assert smime.decrypt(encrypted, key, cert) == SDP


def _signed() -> MimePart:
    key, cert = make_identity("alice@example.com", "ec-p256")
    return smime.sign(SDP, key, cert)


def test_verify_rejects_wrong_shapes() -> None:
    signed = _signed()
    parsed = parse_multipart(signed.content_type, signed.body)
    with pytest.raises(MIMEError, match="expected multipart/signed"):
        smime.verify(SDP)
    unprotocolled = MimePart(
        signed.content_type.replace("application/pkcs7-signature", "application/pgp-signature"),
        signed.body,
    )
    with pytest.raises(MIMEError, match="pgp-signature"):
        smime.verify(unprotocolled)
    three = build_multipart(
        "signed", [*parsed.parts, SDP], params={"protocol": "application/pkcs7-signature"}
    )
    with pytest.raises(MIMEError, match="3 parts"):
        smime.verify(three)
    swapped = build_multipart(
        "signed", [parsed.parts[1], SDP], params={"protocol": "application/pkcs7-signature"}
    )
    with pytest.raises(MIMEError, match=r"second part .* application/sdp"):
        smime.verify(swapped)
    with pytest.raises(MIMEError, match="expected application/pkcs7-mime"):
        smime.decrypt(signed, *rsa_identity("bob@example.com"))
    signed_data = MimePart("application/pkcs7-mime; smime-type=signed-data", b"")
    with pytest.raises(MIMEError, match="not enveloped-data"):
        smime.decrypt(signed_data, *rsa_identity("bob@example.com"))


def test_verify_accepts_legacy_x_pkcs7_signature() -> None:
    signed = _signed()
    parsed = parse_multipart(signed.content_type, signed.body)
    legacy_sig = MimePart("application/x-pkcs7-signature", parsed.parts[1].body)
    legacy = build_multipart(
        "signed",
        [parsed.parts[0], legacy_sig],
        params={"protocol": "application/x-pkcs7-signature"},
    )
    assert smime.verify(legacy).content == SDP


_SIGNED = _signed()
_SIGNED_WIRE = _SIGNED.to_bytes()
_BODY_START = _SIGNED_WIRE.index(SDP.body)


@given(index=st.integers(min_value=0, max_value=len(SDP.body) - 1), bit=st.integers(0, 7))
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_tampering_the_signed_body_fails(index: int, bit: int) -> None:
    wire = bytearray(_SIGNED_WIRE)
    wire[_BODY_START + index] ^= 1 << bit
    with pytest.raises(SignatureError):
        smime.verify(parse_mime_part(bytes(wire)))


@given(index=st.integers(min_value=0), bit=st.integers(0, 7))
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_tampering_any_byte_of_the_first_part_fails(index: int, bit: int) -> None:
    start = _SIGNED_WIRE.index(b"Content-Type: application/sdp")
    length = len(SDP.to_bytes())
    wire = bytearray(_SIGNED_WIRE)
    wire[start + index % length] ^= 1 << bit
    with pytest.raises((SignatureError, MIMEError)):
        smime.verify(parse_mime_part(bytes(wire)))


def test_decrypt_entity_then_verify_decrypted_equals_decrypt_and_verify() -> None:
    """The multipart/signed split while decrypting is the one verified, not split again."""
    key, cert = make_identity("alice@example.com", "ec-p256")
    bob_key, bob = make_identity("bob@example.com", "ec-p256")
    body = smime.sign_and_encrypt(SDP, key, cert, [bob])
    entity = smime.decrypt_entity(body, bob_key, bob)
    assert entity[0] == smime.decrypt(body, bob_key, bob)
    assert entity[1] == parse_multipart(entity[0].content_type, entity[0].body)
    assert smime.verify_decrypted(entity) == smime.decrypt_and_verify(body, bob_key, bob)
    plain = smime.encrypt(SDP, [bob])
    assert smime.decrypt_entity(plain, bob_key, bob)[1] is None
