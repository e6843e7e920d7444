"""Interoperability of our CMS/S-MIME with the real ``openssl cms`` command, both ways."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from sipcert.errors import CMSError, DecryptionError, SignatureError
from sipcert.proto import cms, smime
from sipcert.proto.mime import MimePart, parse_mime_part, parse_multipart
from tests.factories import KeyKind, make_identity, rsa_identity, write_pem

pytestmark = pytest.mark.peer("openssl")

INNER = MimePart(
    "application/sdp",
    b"v=0\r\no=bob 1 1 IN IP4 192.0.2.2\r\ns=-\r\nc=IN IP4 192.0.2.2\r\nt=0 0\r\n"
    b"binary \x00\xff\x80 and a bare LF\n",
)
CONTENT = INNER.to_bytes()


def openssl(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(
        ["openssl", *map(str, args)], capture_output=True, timeout=60, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"openssl {args[:2]} failed: {result.stderr.decode(errors='replace')}")
    return result


# --- openssl checks what we make ------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "pss", "digest"),
    [
        ("rsa2048", False, "sha256"),
        ("rsa2048", True, "sha256"),
        ("rsa2048", True, "sha512"),
        ("ec-p256", False, "sha256"),
        ("ec-p384", False, "sha384"),
    ],
)
def test_openssl_verifies_our_signature(
    tmp_path: Path, kind: KeyKind, pss: bool, digest: cms.DigestName
) -> None:
    key, cert = make_identity("alice@example.com", kind)
    _, cert_pem = write_pem(tmp_path, "alice", key, cert)
    signed = smime.sign(INNER, key, cert, digest=digest, rsa_pss=pss)
    parts = parse_multipart(signed.content_type, signed.body)
    content = tmp_path / "content.bin"
    content.write_bytes(parts.raw_parts[0])
    signature = tmp_path / "sig.der"
    signature.write_bytes(parts.parts[1].body)
    common = ("cms", "-verify", "-binary", "-inform", "DER", "-in", signature, "-content", content)
    out = openssl(*common, "-CAfile", cert_pem, "-out", "-").stdout
    assert out == CONTENT
    openssl(*common, "-noverify", "-out", tmp_path / "out.bin")
    content.write_bytes(CONTENT.replace(b"192.0.2.2", b"192.0.2.3"))
    tampered = openssl(*common, "-noverify", "-out", tmp_path / "out.bin", check=False)
    assert tampered.returncode != 0
    assert b"digest failure" in tampered.stderr.lower() or b"verify" in tampered.stderr.lower()


@pytest.mark.parametrize("cipher", ["aes128", "aes256"])
def test_openssl_decrypts_our_enveloped_data_for_each_recipient(
    tmp_path: Path, cipher: cms.Cipher
) -> None:
    identities = [
        rsa_identity("bob@example.com"),
        rsa_identity("bob@example.com", slot=1),
        rsa_identity("carol@example.com"),
    ]
    encrypted = smime.encrypt(
        INNER, [cert for _, cert in identities], cipher=cipher, algorithms=cms.LEGACY_ALGORITHMS
    )
    envelope = tmp_path / "env.der"
    envelope.write_bytes(encrypted.body)
    printed = openssl("cms", "-cmsout", "-print", "-inform", "DER", "-in", envelope).stdout
    assert f"aes-{cipher[3:]}-cbc".encode() in printed
    assert b"rsaEncryption" in printed
    for number, (key, cert) in enumerate(identities):
        key_pem, cert_pem = write_pem(tmp_path, f"r{number}", key, cert)
        out = openssl(
            "cms", "-decrypt", "-binary", "-inform", "DER", "-in", envelope,
            "-recip", cert_pem, "-inkey", key_pem, "-out", "-",
        ).stdout  # fmt: skip
        assert out == CONTENT
    eve_key, eve = rsa_identity("eve@example.com")
    eve_key_pem, eve_pem = write_pem(tmp_path, "eve", eve_key, eve)
    refused = openssl(
        "cms", "-decrypt", "-binary", "-inform", "DER", "-in", envelope,
        "-recip", eve_pem, "-inkey", eve_key_pem, check=False,
    )  # fmt: skip
    assert refused.returncode != 0


def test_openssl_decrypts_and_verifies_our_sign_and_encrypt(tmp_path: Path) -> None:
    alice_key, alice = make_identity("alice@example.com", "ec-p256")
    _, alice_pem = write_pem(tmp_path, "alice", alice_key, alice)
    bob_key, bob = rsa_identity("bob@example.com")
    bob_key_pem, bob_pem = write_pem(tmp_path, "bob", bob_key, bob)
    message = smime.sign_and_encrypt(INNER, alice_key, alice, [bob])
    (tmp_path / "env.der").write_bytes(message.body)
    signed = openssl(
        "cms", "-decrypt", "-binary", "-inform", "DER", "-in", tmp_path / "env.der",
        "-recip", bob_pem, "-inkey", bob_key_pem, "-out", "-",
    ).stdout  # fmt: skip
    # openssl's SMIME reader only takes a base64 signature part, so hand it the DER and the
    # first part's exact bytes, as split by our parser.
    parts = parse_multipart(parse_mime_part(signed).content_type, parse_mime_part(signed).body)
    (tmp_path / "content.bin").write_bytes(parts.raw_parts[0])
    (tmp_path / "sig.der").write_bytes(parts.parts[1].body)
    out = openssl(
        "cms", "-verify", "-binary", "-inform", "DER", "-in", tmp_path / "sig.der",
        "-content", tmp_path / "content.bin", "-CAfile", alice_pem,
        "-out", "-",
    ).stdout  # fmt: skip
    assert out == CONTENT


# --- we check what openssl makes ------------------------------------------------------------


def _openssl_sign(tmp_path: Path, kind: KeyKind, *extra: str) -> tuple[bytes, x509.Certificate]:
    key, cert = make_identity("alice@example.com", kind)
    key_pem, cert_pem = write_pem(tmp_path, "signer", key, cert)
    (tmp_path / "content.bin").write_bytes(CONTENT)
    openssl(
        "cms", "-sign", "-binary", "-in", tmp_path / "content.bin", "-signer", cert_pem,
        "-inkey", key_pem, "-outform", "DER", "-out", tmp_path / "sig.der", *extra,
    )  # fmt: skip
    return (tmp_path / "sig.der").read_bytes(), cert


@pytest.mark.parametrize(
    ("kind", "extra"),
    [
        ("rsa2048", ()),
        ("rsa2048", ("-noattr",)),
        ("rsa2048", ("-md", "sha512")),
        ("rsa2048", ("-keyopt", "rsa_padding_mode:pss")),
        ("rsa2048", ("-keyopt", "rsa_padding_mode:pss", "-keyopt", "rsa_pss_saltlen:-1")),
        ("rsa2048", ("-keyopt", "rsa_padding_mode:pss", "-md", "sha384", "-noattr")),
        ("rsa2048", ("-keyid",)),
        ("ec-p256", ()),
        ("ec-p256", ("-noattr",)),
        ("ec-p384", ("-md", "sha384", "-keyid")),
    ],
)
def test_we_verify_openssl_signatures(
    tmp_path: Path, kind: KeyKind, extra: tuple[str, ...]
) -> None:
    signature, cert = _openssl_sign(tmp_path, kind, *extra)
    assert cms.verify_detached(signature, CONTENT) == cert
    with pytest.raises(SignatureError):
        cms.verify_detached(signature, CONTENT[:-1] + b"!")
    tampered = bytearray(signature)
    tampered[-5] ^= 0x10  # inside the signature value, which ends the DER
    with pytest.raises(SignatureError):
        cms.verify_detached(bytes(tampered), CONTENT)


def test_we_verify_openssl_signature_without_embedded_certificate(tmp_path: Path) -> None:
    signature, cert = _openssl_sign(tmp_path, "ec-p256", "-nocerts")
    with pytest.raises(CMSError, match="neither in the SignedData"):
        cms.verify_detached(signature, CONTENT)
    assert cms.verify_detached(signature, CONTENT, certificates=[cert]) == cert


def test_we_refuse_openssl_sha1_signature(tmp_path: Path) -> None:
    signature, _ = _openssl_sign(tmp_path, "rsa2048", "-md", "sha1")
    with pytest.raises(CMSError, match="SHA-1"):
        cms.verify_detached(signature, CONTENT)


def test_we_verify_openssl_smime_output(tmp_path: Path) -> None:
    """openssl's own multipart/signed (CRLF, preamble, base64 signature part)."""
    key, cert = make_identity("alice@example.com", "rsa2048")
    key_pem, cert_pem = write_pem(tmp_path, "alice", key, cert)
    (tmp_path / "inner.mime").write_bytes(CONTENT)
    openssl(
        "cms", "-sign", "-binary", "-crlfeol", "-in", tmp_path / "inner.mime",
        "-signer", cert_pem, "-inkey", key_pem, "-outform", "SMIME", "-out", tmp_path / "s.eml",
    )  # fmt: skip
    message = parse_mime_part((tmp_path / "s.eml").read_bytes())
    assert message.header("MIME-Version") == "1.0"
    verified = smime.verify(message)
    assert verified.content == INNER
    assert verified.signer == cert


@pytest.mark.parametrize("cipher", ["-aes128", "-aes256"])
def test_we_decrypt_openssl_enveloped_data_for_each_recipient(tmp_path: Path, cipher: str) -> None:
    identities = [
        rsa_identity("bob@example.com"),
        rsa_identity("bob@example.com", slot=1),
        rsa_identity("carol@example.com"),
    ]
    pems = [write_pem(tmp_path, f"r{n}", k, c)[1] for n, (k, c) in enumerate(identities)]
    (tmp_path / "inner.mime").write_bytes(CONTENT)
    for outform in ("DER", "SMIME"):
        out = tmp_path / f"env.{outform}"
        openssl(
            "cms", "-encrypt", "-binary", cipher, "-in", tmp_path / "inner.mime",
            "-outform", outform, "-out", out, *pems,
        )  # fmt: skip
        if outform == "DER":
            part = MimePart(smime.ENVELOPED_CONTENT_TYPE, out.read_bytes())
        else:
            part = parse_mime_part(out.read_bytes())
            assert part.header("Content-Transfer-Encoding") == "base64"
        assert len(cms.recipient_identifiers(part.body)) == 3
        for key, cert in identities:
            assert smime.decrypt(part, key, cert) == INNER
    eve_key, eve = rsa_identity("eve@example.com")
    with pytest.raises(DecryptionError, match="not a recipient"):
        smime.decrypt(part, eve_key, eve)


def test_we_refuse_openssl_unsupported_cipher(tmp_path: Path) -> None:
    key, cert = rsa_identity("bob@example.com")
    _, cert_pem = write_pem(tmp_path, "bob", key, cert)
    (tmp_path / "inner.mime").write_bytes(CONTENT)
    openssl(
        "cms", "-encrypt", "-binary", "-des3", "-in", tmp_path / "inner.mime",
        "-outform", "DER", "-out", tmp_path / "env.der", cert_pem,
    )  # fmt: skip
    with pytest.raises(CMSError, match="EnvelopedData with 3DES-CBC is not supported"):
        cms.decrypt_enveloped((tmp_path / "env.der").read_bytes(), key, cert)
