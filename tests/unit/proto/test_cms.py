"""CMS SignedData verification and EnvelopedData helpers (RFC 5652)."""

from __future__ import annotations

import datetime
import hashlib
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from asn1crypto import cms as asn1_cms
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipcert.errors import (
    CMSError,
    CryptoError,
    DecryptionError,
    InputTooLargeError,
    SignatureError,
)
from sipcert.proto import cms
from tests.factories import KeyKind, make_cert, make_identity, rsa_identity

CONTENT = b"Content-Type: application/sdp\r\n\r\nv=0\r\no=alice 1 1 IN IP4 192.0.2.1\n"
SLOW = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=60)


def _public_der(cert: Any) -> bytes:
    return bytes(
        cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


@pytest.mark.parametrize(
    ("kind", "digest", "pss"),
    [
        ("rsa2048", "sha256", False),
        ("rsa2048", "sha384", False),
        ("rsa2048", "sha256", True),
        ("rsa2048", "sha512", True),
        ("ec-p256", "sha256", False),
        ("ec-p384", "sha384", False),
        ("ec-p256", "sha512", False),
    ],
)
def test_sign_verify_round_trip(kind: KeyKind, digest: cms.DigestName, pss: bool) -> None:
    key, cert = make_identity("alice@example.com", kind)
    der = cms.sign_detached(CONTENT, key, cert, digest=digest, rsa_pss=pss)
    assert cms.verify_detached(der, CONTENT) == cert
    with pytest.raises(SignatureError, match="messageDigest"):
        cms.verify_detached(der, CONTENT + b" ")


def test_signature_covers_bare_lf_exactly() -> None:
    """Binary mode: a signature over LF text must not verify over its CRLF form."""
    key, cert = make_identity("alice@example.com", "ec-p256")
    der = cms.sign_detached(b"a\nb\n", key, cert)
    assert cms.verify_detached(der, b"a\nb\n") == cert
    with pytest.raises(SignatureError):
        cms.verify_detached(der, b"a\r\nb\r\n")


def _builder_sign(
    kind: KeyKind, options: list[pkcs7.PKCS7Options], content: bytes = CONTENT
) -> bytes:
    key, cert = make_identity("alice@example.com", kind)
    builder = pkcs7.PKCS7SignatureBuilder().set_data(content)
    builder = builder.add_signer(cert, key, hashes.SHA256())
    return builder.sign(
        serialization.Encoding.DER,
        [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary, *options],
    )


@pytest.mark.parametrize("kind", ["rsa2048", "ec-p256"])
def test_without_signed_attributes(kind: KeyKind) -> None:
    der = _builder_sign(kind, [pkcs7.PKCS7Options.NoAttributes])
    _, cert = make_identity("alice@example.com", kind)
    assert cms.verify_detached(der, CONTENT) == cert
    with pytest.raises(SignatureError, match="does not verify"):
        cms.verify_detached(der, CONTENT[:-1])


def test_signer_certificate_from_caller_when_not_embedded() -> None:
    der = _builder_sign("ec-p256", [pkcs7.PKCS7Options.NoCerts])
    _, cert = make_identity("alice@example.com", "ec-p256")
    _, other = make_identity("bob@example.com", "ec-p256")
    with pytest.raises(CMSError, match="neither in the SignedData nor given"):
        cms.verify_detached(der, CONTENT)
    with pytest.raises(CMSError, match="serial"):
        cms.verify_detached(der, CONTENT, certificates=[other])
    assert cms.verify_detached(der, CONTENT, certificates=[other, cert]) == cert


def test_wrong_certificate_with_same_issuer_and_serial_fails() -> None:
    """A certificate that merely claims the signer's issuer and serial has the wrong key."""
    der = _builder_sign("ec-p256", [pkcs7.PKCS7Options.NoCerts])
    _, cert = make_identity("alice@example.com", "ec-p256")
    from tests.factories import make_cert, make_key

    impostor = make_cert(
        make_key("ec-p256", "alice@example.com", slot=9), serial=cert.serial_number
    )
    with pytest.raises(SignatureError):
        cms.verify_detached(der, CONTENT, certificates=[impostor])


# --- structural edits with asn1crypto --------------------------------------------------------


def _edit(der: bytes, change: Callable[[Any], None]) -> bytes:
    info = asn1_cms.ContentInfo.load(der)
    change(info["content"])
    return bytes(info.dump(force=True))


def _signer(signed_data: Any) -> Any:
    return signed_data["signer_infos"][0]


def _drop_attr(name: str) -> Callable[[Any], None]:
    def change(signed_data: Any) -> None:
        signer = _signer(signed_data)
        attrs = [a for a in signer["signed_attrs"] if a["type"].native != name]
        signer["signed_attrs"] = asn1_cms.CMSAttributes(attrs)

    return change


def _set_attr(name: str, value: Any) -> Callable[[Any], None]:
    def change(signed_data: Any) -> None:
        signer = _signer(signed_data)
        attrs = []
        for attr in signer["signed_attrs"]:
            if attr["type"].native == name:
                attr = asn1_cms.CMSAttribute({"type": name, "values": [value]})
            attrs.append(attr)
        signer["signed_attrs"] = asn1_cms.CMSAttributes(attrs)

    return change


def _digest_sha1(signed_data: Any) -> None:
    _signer(signed_data)["digest_algorithm"] = {"algorithm": "sha1"}


def _two_signers(signed_data: Any) -> None:
    signer = _signer(signed_data)
    signed_data["signer_infos"] = asn1_cms.SignerInfos([signer, signer.copy()])


def test_two_signers_are_each_reported() -> None:
    """RFC 5652 §5.6: each SignerInfo is checked on its own; one bad signer is reported."""
    key, cert = make_identity("alice@example.com", "ec-p256")
    der = _edit(cms.sign_detached(CONTENT, key, cert), _two_signers)
    result = cms.verify_signed(der, CONTENT)
    assert [r.certificate for r in result.signers] == [cert, cert]
    assert cms.verify_detached(der, CONTENT) == cert

    # A second signer (bob) whose messageDigest is over other content.
    bob_key, bob = make_identity("bob@example.com", "ec-p256")
    mine = asn1_cms.ContentInfo.load(cms.sign_detached(CONTENT, key, cert))
    other = asn1_cms.ContentInfo.load(cms.sign_detached(CONTENT + b"!", bob_key, bob))
    signed = mine["content"]
    signed["signer_infos"] = asn1_cms.SignerInfos(
        [_signer(mine["content"]), _signer(other["content"])]
    )
    signed["certificates"] = asn1_cms.CertificateSet(
        [*mine["content"]["certificates"], *other["content"]["certificates"]]
    )
    result = cms.verify_signed(bytes(mine.dump(force=True)), CONTENT)
    # SignerInfos is a SET OF: DER orders it, so look the verdicts up, not by position.
    assert [r.certificate for r in result.verified] == [cert]
    (bad,) = [r for r in result.signers if not r.verified]
    assert isinstance(bad.error, SignatureError)
    assert "messageDigest" in str(bad.error)
    assert cms.verify_detached(bytes(mine.dump(force=True)), CONTENT) == cert


def test_attached_signed_data() -> None:
    key, cert = make_identity("alice@example.com", "ec-p256")
    der = _edit(cms.sign_detached(CONTENT, key, cert), _embed_content)
    result = cms.verify_signed(der)
    assert result.content == CONTENT
    assert result.verified[0].certificate == cert
    with pytest.raises(CMSError, match="detached SignedData"):
        cms.verify_signed(cms.sign_detached(CONTENT, key, cert))


def _embed_content(signed_data: Any) -> None:
    signed_data["encap_content_info"] = {"content_type": "data", "content": CONTENT}


def _ed25519_alg(signed_data: Any) -> None:
    _signer(signed_data)["signature_algorithm"] = {"algorithm": "ed25519"}


def _mismatched_alg(signed_data: Any) -> None:
    _signer(signed_data)["signature_algorithm"] = {"algorithm": "sha512_ecdsa"}


def _rsa_alg_for_ec(signed_data: Any) -> None:
    _signer(signed_data)["signature_algorithm"] = {"algorithm": "sha256_rsa"}


@pytest.mark.parametrize(
    ("change", "error", "fragment"),
    [
        (_digest_sha1, CMSError, "SHA-1 and MD5 are refused"),
        (_embed_content, CMSError, "not detached|carries its content"),
        (_ed25519_alg, CMSError, "RFC 8419 §3 needs SHA-512"),
        (_mismatched_alg, CMSError, "does not match digest"),
        (_rsa_alg_for_ec, CMSError, "no RSA key"),
        (_drop_attr("message_digest"), CMSError, "lack contentType or messageDigest"),
        (_drop_attr("content_type"), CMSError, "lack contentType or messageDigest"),
        (_set_attr("content_type", "signed_data"), SignatureError, "contentType attribute"),
        (_set_attr("message_digest", b"\x00" * 32), SignatureError, "messageDigest"),
    ],
)
def test_structural_defects(
    change: Callable[[Any], None], error: type[Exception], fragment: str
) -> None:
    key, cert = make_identity("alice@example.com", "ec-p256")
    der = _edit(cms.sign_detached(CONTENT, key, cert), change)
    with pytest.raises(error, match=fragment):
        cms.verify_detached(der, CONTENT)


def test_resigned_attributes_changed_after_signing_fail() -> None:
    """Dropping the signingTime attribute changes the signed bytes: the signature fails."""
    key, cert = make_identity("alice@example.com", "rsa2048")
    when = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)
    signed = cms.sign_detached(CONTENT, key, cert, signing_time=when)
    attrs = asn1_cms.ContentInfo.load(signed)["content"]["signer_infos"][0]["signed_attrs"]
    assert [a["values"][0].native for a in attrs if a["type"].native == "signing_time"] == [when]
    der = _edit(signed, _drop_attr("signing_time"))
    with pytest.raises(SignatureError, match="does not verify"):
        cms.verify_detached(der, CONTENT)


def test_we_announce_gcm_first_so_peers_choose_it() -> None:
    """RFC 8551 §2.5.2/§2.7.1.1: what we announce makes choose_algorithms pick AES-GCM."""
    key, cert = make_identity("alice@example.com", "ec-p256")
    (report,) = cms.verify_signed(cms.sign_detached(CONTENT, key, cert), CONTENT).signers
    assert report.capabilities[:2] == ("aes128_gcm", "aes256_gcm")
    assert cms.choose_algorithms(report.capabilities) == cms.DEFAULT_ALGORITHMS
    with pytest.raises(CryptoError, match="unsupported digest"):
        cms.sign_detached(CONTENT, key, cert, digest="sha1")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("der", "error", "fragment"),
    [
        (b"", CMSError, "malformed"),
        (b"\x30\x03\x02\x01", CMSError, "malformed"),
        (b"\x04\x02hi", CMSError, "malformed"),
        (b"\x30" * 40, CMSError, "malformed"),
        (b"\x00" * (cms.DEFAULT_MAX_DER + 1), InputTooLargeError, "limit"),
    ],
)
def test_garbage_der(der: bytes, error: type[Exception], fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        cms.verify_detached(der, CONTENT)
    with pytest.raises(error, match=fragment):
        cms.recipient_identifiers(der)


def test_truncated_der_is_cms_error() -> None:
    key, cert = make_identity("alice@example.com", "ec-p256")
    der = cms.sign_detached(CONTENT, key, cert)
    for cut in (1, 10, len(der) // 2, len(der) - 1):
        with pytest.raises(CMSError):
            cms.verify_detached(der[:cut], CONTENT)


def test_enveloped_data_is_not_a_signature() -> None:
    _, cert = rsa_identity("bob@example.com")
    enveloped = cms.encrypt_enveloped(CONTENT, [cert])
    with pytest.raises(CMSError, match="expected 'signed_data'"):
        cms.verify_detached(enveloped, CONTENT)
    key, signer = make_identity("alice@example.com", "ec-p256")
    with pytest.raises(CMSError, match="expected 'enveloped_data'"):
        cms.recipient_identifiers(cms.sign_detached(CONTENT, key, signer))


@given(data=st.binary(max_size=300))
@settings(max_examples=300)
def test_arbitrary_bytes_only_raise_cms_error(data: bytes) -> None:
    with pytest.raises(CMSError):
        cms.verify_detached(data, CONTENT)


def test_signer_certificate_with_a_negative_serial_is_a_cms_error() -> None:
    """The SID and the embedded certificate are outside the signature, so an attacker can
    give the signer a serial that is not positive (RFC 5280 §4.1.2.2); cryptography only
    warns about it (an exception under -W error). It must be a CMSError, and no warning."""
    key, cert = make_identity("alice@example.com", "rsa2048")
    der = cms.sign_detached(CONTENT, key, cert)
    serial = cert.serial_number.to_bytes((cert.serial_number.bit_length() + 8) // 8, "big")
    assert der.count(b"\x02" + bytes([len(serial)]) + serial) == 2  # certificate and SID
    negative = bytes([serial[0] | 0x80]) + serial[1:]
    mutated = der.replace(serial, negative)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CMSError, match=r"signer certificate does not parse.*serial"):
            cms.verify_detached(mutated, CONTENT)
    assert caught == []


# --- tampering ------------------------------------------------------------------------------

_EC_DER = cms.sign_detached(CONTENT, *make_identity("alice@example.com", "ec-p256"))


@given(index=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
@SLOW
def test_flipping_any_content_byte_fails(index: int, bit: int) -> None:
    content = bytearray(CONTENT)
    content[index % len(content)] ^= 1 << bit
    with pytest.raises(SignatureError):
        cms.verify_detached(_EC_DER, bytes(content))


@given(index=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
@SLOW
def test_flipping_any_signature_byte_fails(index: int, bit: int) -> None:
    key, cert = make_identity("alice@example.com", "rsa2048")
    der = bytearray(cms.sign_detached(CONTENT, key, cert))
    signature_length = 256  # RSA-2048; the signature value ends the DER
    der[len(der) - signature_length + index % signature_length] ^= 1 << bit
    with pytest.raises(SignatureError):
        cms.verify_detached(bytes(der), CONTENT)


@given(index=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
@SLOW
def test_flipping_any_der_byte_fails_or_keeps_the_signer_key(index: int, bit: int) -> None:
    """Bytes outside the SignerInfo (e.g. inside the embedded certificate's own signature)
    are not covered by the CMS signature; flipping them may still verify, but then only
    with the genuine signer's public key."""
    _, cert = make_identity("alice@example.com", "ec-p256")
    der = bytearray(_EC_DER)
    der[index % len(der)] ^= 1 << bit
    try:
        signer = cms.verify_detached(bytes(der), CONTENT)
    except (SignatureError, CMSError):
        return
    assert _public_der(signer) == _public_der(cert)


# --- EnvelopedData --------------------------------------------------------------------------


@pytest.mark.parametrize("cipher", ["aes128", "aes256"])
def test_encrypt_for_three_recipients_each_decrypts(cipher: cms.Cipher) -> None:
    identities = [rsa_identity(aor) for aor in ("bob@example.com", "carol@example.com")]
    identities.append(rsa_identity("bob@example.com", slot=1))  # a second device of Bob
    enveloped = cms.encrypt_enveloped(CONTENT, [c for _, c in identities], cipher=cipher)
    ids = cms.recipient_identifiers(enveloped)
    assert len(ids) == 3
    for key, cert in identities:
        assert any(rid.matches(cert) for rid in ids)
        assert (cert.issuer, cert.serial_number) in ids
        assert cms.is_recipient(enveloped, cert)
        assert cms.decrypt_enveloped(enveloped, key, cert) == CONTENT


def test_duplicate_recipients_are_wrapped_once() -> None:
    _, cert = rsa_identity("bob@example.com")
    assert len(cms.recipient_identifiers(cms.encrypt_enveloped(CONTENT, [cert, cert]))) == 1


def test_not_a_recipient() -> None:
    _, bob = rsa_identity("bob@example.com")
    eve_key, eve = rsa_identity("eve@example.com")
    enveloped = cms.encrypt_enveloped(CONTENT, [bob])
    assert not cms.is_recipient(enveloped, eve)
    with pytest.raises(DecryptionError, match=r"not a recipient.*serial"):
        cms.decrypt_enveloped(enveloped, eve_key, eve)


def test_key_not_matching_certificate() -> None:
    _, bob = rsa_identity("bob@example.com")
    eve_key, _ = rsa_identity("eve@example.com")
    enveloped = cms.encrypt_enveloped(CONTENT, [bob])
    with pytest.raises(DecryptionError, match="does not belong"):
        cms.decrypt_enveloped(enveloped, eve_key, bob)


def test_tampered_ciphertext_fails_to_decrypt_or_changes_plaintext() -> None:
    """CBC has no integrity: a flipped last block fails the padding check (DecryptionError);
    integrity comes from the signature inside (sign_and_encrypt)."""
    key, cert = rsa_identity("bob@example.com")
    enveloped = bytearray(cms.encrypt_enveloped(CONTENT, [cert]))
    enveloped[-1] ^= 0x01
    try:
        plaintext = cms.decrypt_enveloped(bytes(enveloped), key, cert)
    except DecryptionError:
        return
    assert plaintext != CONTENT


def _ed25519_cert() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.from_private_bytes(b"\x01" * 32)
    signer_key, _ = make_identity("dave@example.com", "ec-p256")
    cert = make_cert(signer_key, "dave@example.com")
    return (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.issuer)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
        .sign(signer_key, hashes.SHA256())
    )


def test_encrypt_rejects_bad_recipients() -> None:
    ed_cert = _ed25519_cert()
    with pytest.raises(CryptoError, match="Ed25519PublicKey: only RSA, EC"):
        cms.encrypt_enveloped(CONTENT, [ed_cert])
    with pytest.raises(CryptoError, match="no recipients"):
        cms.encrypt_enveloped(CONTENT, [])
    _, cert = rsa_identity("bob@example.com")
    with pytest.raises(CryptoError, match="unsupported cipher"):
        cms.encrypt_enveloped(CONTENT, [cert], cipher="des3")  # type: ignore[arg-type]


def test_sign_rejects_pss_with_ec_key() -> None:
    key, cert = make_identity("alice@example.com", "ec-p256")
    with pytest.raises(CryptoError, match="RSA-PSS"):
        cms.sign_detached(CONTENT, key, cert, rsa_pss=True)


def _montgomery_cert(key: Any) -> Any:
    issuer_key, issuer = make_identity("carol@example.com", "ec-p256")
    return (
        x509.CertificateBuilder()
        .subject_name(issuer.subject)
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(25519)
        .not_valid_before(issuer.not_valid_before_utc)
        .not_valid_after(issuer.not_valid_after_utc)
        .sign(issuer_key, hashes.SHA256())
    )


@pytest.mark.parametrize("kind", ["x25519", "x448"])
@pytest.mark.parametrize("content", ["aes128-gcm", "aes256-cbc"])
def test_x25519_and_x448_recipients_round_trip(kind: str, content: cms.ContentEncryption) -> None:
    """RFC 8418 with HKDF-SHA-256 (RFC 8551 §2.3); no peer on this machine makes them."""
    from cryptography.hazmat.primitives.asymmetric import x448, x25519

    key: Any = (
        x25519.X25519PrivateKey.from_private_bytes(b"\x07" * 32)
        if kind == "x25519"
        else x448.X448PrivateKey.from_private_bytes(b"\x07" * 56)
    )
    cert = _montgomery_cert(key)
    _, rsa_cert = rsa_identity("carol@example.com")
    der = cms.encrypt_enveloped(
        CONTENT, [rsa_cert, cert], algorithms=cms.EnvelopeAlgorithms(content)
    )
    assert cms.decrypt_enveloped(der, key, cert) == CONTENT
    info = asn1_cms.ContentInfo.load(der)["content"]["recipient_infos"][1].chosen
    assert info["key_encryption_algorithm"]["algorithm"].dotted == "1.2.840.113549.1.9.16.3.19"


def test_choose_algorithms_follows_announced_capabilities() -> None:
    """RFC 8551 §2.7.1: the callee's first announced cipher we make; CBC when none."""
    assert cms.choose_algorithms() == cms.DEFAULT_ALGORITHMS
    assert cms.choose_algorithms(legacy=True) == cms.LEGACY_ALGORITHMS
    openssl_default = ("aes256_cbc", "aes192_cbc", "aes128_cbc", "tripledes_3key")
    assert cms.choose_algorithms(openssl_default) == cms.EnvelopeAlgorithms(
        "aes256-cbc", "rsa-pkcs1v15"
    )
    assert cms.choose_algorithms(("aes128_gcm", "rsaes_oaep")) == cms.DEFAULT_ALGORITHMS
    assert cms.choose_algorithms(("des",)) == cms.LEGACY_ALGORITHMS


def test_unknown_recipient_kinds_are_skipped_and_errors_name_the_algorithm() -> None:
    key, cert = make_identity("carol@example.com", "ec-p256")
    der = cms.encrypt_enveloped(CONTENT, [cert])
    with pytest.raises(DecryptionError, match="does not belong"):
        cms.decrypt_enveloped(der, make_identity("dave@example.com", "ec-p256")[0], cert)
    ccm = der.replace(
        bytes.fromhex("0609608648016503040106"), bytes.fromhex("0609608648016503040107")
    )
    with pytest.raises(CMSError, match="AuthEnvelopedData with AES-128-CCM is not supported"):
        cms.decrypt_enveloped(ccm, key, cert)


def test_signer_cache_repeats_every_check_but_the_certificate_load() -> None:
    """A cached signer certificate skips only the load: a bad signature still fails."""
    key, cert = make_identity("alice@example.com", "ec-p256")
    der = cms.sign_detached(CONTENT, key, cert)
    cms._signer_cache.clear()
    assert cms.verify_detached(der, CONTENT) == cert
    assert cms.verify_detached(der, CONTENT) == cert  # from the cache
    with pytest.raises(SignatureError, match="messageDigest"):
        cms.verify_detached(der, CONTENT + b"!")
    signature = _signer(asn1_cms.ContentInfo.load(der)["content"])["signature"].native
    forged = der.replace(signature, signature[:-1] + bytes([signature[-1] ^ 1]))
    with pytest.raises(SignatureError, match="does not verify"):
        cms.verify_detached(forged, CONTENT)


def test_signer_cache_is_bounded_and_least_recently_used_goes() -> None:
    cache = cms._LRU(2)
    cache.put(b"a", 1)
    cache.put(b"b", 2)
    assert cache.get(b"a") == 1  # now b is the oldest
    cache.put(b"c", 3)
    assert (cache.get(b"a"), cache.get(b"b"), cache.get(b"c")) == (1, None, 3)


def test_a_signer_certificate_that_fails_to_load_is_not_cached() -> None:
    cms._signer_cache.clear()
    with pytest.raises(CMSError, match="signer certificate does not parse"):
        cms._signer_certificate(b"\x30\x03\x02\x01\x00")
    assert cms._signer_cache.get(hashlib.sha256(b"\x30\x03\x02\x01\x00").digest()) is None


def test_parse_fully_remembers_only_encodings_that_parsed() -> None:
    """A malformed Name (an invalid UTF8String) fails every time, not only the first."""

    def name(value: bytes) -> bytes:
        ava = b"\x06\x03\x55\x04\x03" + b"\x0c" + bytes([len(value)]) + value
        rdn = b"\x30" + bytes([len(ava)]) + ava
        rdns = b"\x31" + bytes([len(rdn)]) + rdn
        return b"\x30" + bytes([len(rdns)]) + rdns

    for _ in range(2):
        with pytest.raises(ValueError):
            cms._parse_fully(asn1_x509.Name.load(name(b"\xff\xfe")))
    cms._parse_fully(asn1_x509.Name.load(name(b"ok")))
    cms._parse_fully(asn1_x509.Name.load(name(b"ok")))  # remembered: no decoding


def test_per_certificate_cache_finds_objects_by_identity_and_is_bounded() -> None:
    """Equal but distinct certificate objects get equal values; the oldest entry goes."""
    calls: list[x509.Certificate] = []

    @cms._per_certificate(2)
    def serial(cert: x509.Certificate) -> int:
        calls.append(cert)
        return cert.serial_number

    _, cert = make_identity("alice@example.com", "ec-p256")
    copy = x509.load_der_x509_certificate(cert.public_bytes(serialization.Encoding.DER))
    _, other = make_identity("bob@example.com", "ec-p256")
    assert serial(cert) == serial(cert) == serial(copy) == cert.serial_number
    assert calls == [cert, copy]
    serial(other)  # a third object: the oldest (cert) goes
    assert serial(copy) == cert.serial_number and len(calls) == 3
    assert serial(cert) == cert.serial_number and len(calls) == 4


def test_a_matching_key_is_remembered_by_its_objects_and_a_mismatch_never() -> None:
    key, cert = make_identity("alice@example.com", "ec-p256")
    other, _ = make_identity("dave@example.com", "ec-p256")
    cms._check_key_matches(key, cert)
    cms._check_key_matches(key, cert)  # remembered for these two objects
    for _ in range(2):
        with pytest.raises(DecryptionError, match="does not belong"):
            cms._check_key_matches(other, cert)


def test_the_last_signer_certificate_is_found_by_its_der_object() -> None:
    _, cert = make_identity("alice@example.com", "ec-p256")
    der = cert.public_bytes(serialization.Encoding.DER)
    loaded = cms._signer_certificate(der)
    assert cms._signer_certificate(der)[0] is loaded[0]
    assert cms._signer_certificate(bytes(der))[0] == cert  # an equal object: by SHA-256
