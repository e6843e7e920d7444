"""Issue 11 against ``openssl cms`` (OpenSSL 3): every envelope variant, both directions.

openssl encrypts with each content cipher, each RSA padding and ECDH KDF, DER and streamed
BER, to one device or to all four of Carol's (RSA and EC mixed, with KEK and password
recipients beside them) and every device opens it with :mod:`sipcert.proto.cms`; then we
encrypt with each of our algorithm choices and openssl opens it with every device's key.
Signatures: attached, several signers, BER, RSA-PSS with MGF1-SHA-1. OpenSSL 3.0 itself
cannot make X25519/X448 recipients nor Ed25519 SignedData (checked: "operation not
supported for this keytype", "no default digest"); BouncyCastle covers those.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sipcert.errors import DecryptionError, InputError, SignatureError
from sipcert.proto import cms, smime
from sipcert.proto.mime import MimePart, parse_mime_part
from tests.cmslean import record
from tests.factories import make_identity
from tests.integration.cms.peers import CONTENT, INNER, device, devices, flip, pems, run

pytestmark = pytest.mark.peer("openssl")

CIPHERS = ["-aes-128-gcm", "-aes-256-gcm", "-aes128", "-aes192", "-aes256"]
#: scenario -> [(device, -keyopt values)], plus extra recipient arguments.
SCENARIOS: dict[str, tuple[list[tuple[str, tuple[str, ...]]], tuple[str, ...]]] = {
    "rsa-pkcs1v15": ([("rsa", ())], ()),
    "rsa-oaep-sha1": ([("rsa", ("rsa_padding_mode:oaep",))], ()),
    "rsa-oaep-sha256": (
        [("rsa", ("rsa_padding_mode:oaep", "rsa_oaep_md:sha256", "rsa_mgf1_md:sha256"))],
        (),
    ),
    "p256-sha1kdf": ([("p256", ())], ()),
    "p256-sha256kdf": ([("p256", ("ecdh_kdf_md:sha256",))], ()),
    "p384-sha384kdf": ([("p384", ("ecdh_kdf_md:sha384",))], ()),
    "mixed-4": (
        [
            ("rsa", ("rsa_padding_mode:oaep",)),
            ("p256", ()),
            ("p384", ()),
            ("rsa-b", ()),
        ],
        (),
    ),
    "mixed-4-keyid": ([("rsa", ()), ("p256", ()), ("p384", ()), ("rsa-b", ())], ("-keyid",)),
    "mixed-with-kek-and-password": (
        [("p256", ()), ("rsa", ())],
        (
            "-secretkey",
            "000102030405060708090a0b0c0d0e0f",
            "-secretkeyid",
            "0a0b",
            "-pwri_password",
            "not-ours",
        ),
    ),
}


def _openssl_encrypt(tmp_path: Path, cipher: str, scenario: str, stream: bool) -> bytes:
    recipients, extra = SCENARIOS[scenario]
    if cipher.endswith("gcm") and "-pwri_password" in extra:
        # openssl 3.0 cannot make a password recipient for AES-GCM ("cipher parameter
        # error" in cms_pwri.c): the GCM variant has the KEK recipient beside ours only.
        extra = extra[: extra.index("-pwri_password")]
    paths = pems(tmp_path, tuple(name for name, _ in recipients))
    args: list[str | Path] = []
    for name, keyopts in recipients:
        args += ["-recip", paths[name][1]]
        for keyopt in keyopts:
            args += ["-keyopt", keyopt]
    (tmp_path / "inner.mime").write_bytes(CONTENT)
    out = tmp_path / "env.der"
    streaming = ("-stream", "-indef") if stream else ()
    run(
        "openssl", "cms", "-encrypt", "-binary", cipher, *streaming, *extra,
        "-in", tmp_path / "inner.mime", "-outform", "DER", "-out", out, *args,
    )  # fmt: skip
    return out.read_bytes()


@pytest.mark.parametrize("stream", [False, True], ids=["der", "ber-indefinite"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("cipher", CIPHERS)
def test_we_open_every_openssl_envelope(
    tmp_path: Path, cipher: str, scenario: str, stream: bool
) -> None:
    envelope = _openssl_encrypt(tmp_path, cipher, scenario, stream)
    if stream:
        assert envelope[1] == 0x80  # indefinite length, X.690 §8.1.3.6
    gcm = cipher.endswith("gcm")
    content_type = smime.AUTH_ENVELOPED_CONTENT_TYPE if gcm else smime.ENVELOPED_CONTENT_TYPE
    part = MimePart(content_type, envelope)
    names = [name for name, _ in SCENARIOS[scenario][0]]
    for _, key, cert in devices(tuple(names)):
        assert cms.is_recipient(envelope, cert)
        assert smime.decrypt(part, key, cert) == INNER
        record(
            f"openssl-env{cipher}-{scenario}-{'ber' if stream else 'der'}",
            envelope,
            key=key,
            cert=cert,
        )
    if "keyid" not in scenario:
        assert len(cms.recipient_identifiers(envelope)) == len(names)
    # a device that is not among the recipients is told so, not "bad decryption"
    with pytest.raises(DecryptionError, match="not a recipient"):
        smime.decrypt(part, *make_identity("eve@example.com", "ec-p256"))


def test_tampered_openssl_gcm_envelope_is_detected(tmp_path: Path) -> None:
    envelope = _openssl_encrypt(tmp_path, "-aes-128-gcm", "mixed-4", stream=False)
    key, cert = device("p256")
    assert cms.decrypt_enveloped(envelope, key, cert) == CONTENT
    # DER AuthEnvelopedData ends with the mac; 20 octets back is the ciphertext.
    for offset in (1, 20):
        with pytest.raises(DecryptionError, match="AES-GCM authentication failed"):
            cms.decrypt_enveloped(flip(envelope, offset), key, cert)


def test_openssl_ccm_is_named_not_blamed_on_decryption(tmp_path: Path) -> None:
    """An algorithm we lack is named; an encoding problem is not called a decryption one."""
    envelope = _openssl_encrypt(tmp_path, "-aes-128-gcm", "rsa-pkcs1v15", stream=False)
    key, cert = device("rsa")
    ccm = envelope.replace(
        bytes.fromhex("0609608648016503040106"), bytes.fromhex("0609608648016503040107")
    )
    with pytest.raises(InputError, match="AuthEnvelopedData with AES-128-CCM is not supported"):
        cms.decrypt_enveloped(ccm, key, cert)
    with pytest.raises(InputError, match="malformed"):
        cms.decrypt_enveloped(envelope[:-30], key, cert)


# --- openssl opens what we make ------------------------------------------------------------

ALGORITHMS = {
    "aes128-gcm+oaep": cms.DEFAULT_ALGORITHMS,
    "aes256-gcm+oaep": cms.EnvelopeAlgorithms("aes256-gcm", "rsa-oaep"),
    "aes128-cbc+pkcs1v15": cms.LEGACY_ALGORITHMS,
    "aes256-cbc+oaep": cms.EnvelopeAlgorithms("aes256-cbc", "rsa-oaep"),
}


@pytest.mark.parametrize("count", [1, 4])
@pytest.mark.parametrize("choice", list(ALGORITHMS))
def test_openssl_opens_our_envelopes(tmp_path: Path, choice: str, count: int) -> None:
    names = ("p256",) if count == 1 else ("rsa", "p256", "p384", "rsa-b")
    paths = pems(tmp_path, names)
    certs = [cert for _, _, cert in devices(names)]
    encrypted = smime.encrypt(INNER, certs, algorithms=ALGORITHMS[choice])
    envelope = tmp_path / "env.der"
    envelope.write_bytes(encrypted.body)
    printed = run("openssl", "cms", "-cmsout", "-print", "-inform", "DER", "-in", envelope).stdout
    expected = {"aes128": b"aes-128-", "aes256": b"aes-256-"}[choice[:6]] + choice[7:10].encode()
    assert expected in printed
    for name in names:
        key_pem, cert_pem = paths[name]
        out = run(
            "openssl", "cms", "-decrypt", "-binary", "-inform", "DER", "-in", envelope,
            "-recip", cert_pem, "-inkey", key_pem, "-out", "-",
        ).stdout  # fmt: skip
        assert out == CONTENT
    tampered = tmp_path / "tampered.der"
    # GCM: the last octet is the tag's. CBC: the last octet of the next-to-last block,
    # which flips the padding octet, so the change is always seen (never by chance).
    tampered.write_bytes(flip(encrypted.body, 1 if "gcm" in choice else 17))
    key_pem, cert_pem = paths[names[0]]
    refused = run(
        "openssl", "cms", "-decrypt", "-binary", "-inform", "DER", "-in", tampered,
        "-recip", cert_pem, "-inkey", key_pem, "-out", tmp_path / "out.bin", check=False,
    )  # fmt: skip
    assert refused.returncode != 0
    with pytest.raises(DecryptionError):
        smime.decrypt(MimePart(encrypted.content_type, tampered.read_bytes()), *device(names[0]))


def test_openssl_opens_and_verifies_our_protected_body_from_an_ec_sender(tmp_path: Path) -> None:
    alice_key, alice = device("p256")
    alice_pem = pems(tmp_path, ("p256",))["p256"][1]
    paths = pems(tmp_path, ("rsa", "p384"))
    body = smime.sign_and_encrypt(
        INNER,
        alice_key,
        alice,
        [device("rsa")[1], device("p384")[1]],  # type: ignore[arg-type]
    )
    (tmp_path / "env.der").write_bytes(body.body)
    for name in ("rsa", "p384"):
        signed = run(
            "openssl", "cms", "-decrypt", "-binary", "-inform", "DER", "-in",
            tmp_path / "env.der", "-recip", paths[name][1], "-inkey", paths[name][0], "-out", "-",
        ).stdout  # fmt: skip
        inner = parse_mime_part(signed)
        (tmp_path / "signed.eml").write_bytes(b"MIME-Version: 1.0\r\n" + signed)
        from sipcert.proto.mime import parse_multipart

        parts = parse_multipart(inner.content_type, inner.body)
        (tmp_path / "content.bin").write_bytes(parts.raw_parts[0])
        (tmp_path / "sig.der").write_bytes(parts.parts[1].body)
        out = run(
            "openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", tmp_path / "sig.der",
            "-content", tmp_path / "content.bin", "-CAfile", alice_pem, "-out", "-",
        ).stdout  # fmt: skip
        assert out == CONTENT


# --- signatures openssl makes that issue 11 found refused -----------------------------------


def _sign(tmp_path: Path, signers: tuple[str, ...], *extra: str) -> bytes:
    paths = pems(tmp_path, signers)
    args: list[str | Path] = []
    for name in signers:
        args += ["-signer", paths[name][1], "-inkey", paths[name][0]]
        if name.startswith("rsa") and "pss" in extra:
            args += ["-keyopt", "rsa_padding_mode:pss", "-keyopt", "rsa_mgf1_md:sha1"]
    (tmp_path / "content.bin").write_bytes(CONTENT)
    run(
        "openssl", "cms", "-sign", "-binary", "-in", tmp_path / "content.bin",
        "-outform", "DER", "-out", tmp_path / "sig.der",
        *[e for e in extra if e != "pss"], *args,
    )  # fmt: skip
    return (tmp_path / "sig.der").read_bytes()


@pytest.mark.parametrize(
    ("signers", "extra"),
    [
        (("p256",), ("-nodetach",)),
        (("p256",), ("-nodetach", "-stream", "-indef")),
        (("rsa", "p256"), ("-nodetach",)),
        (("rsa", "p384"), ("-nodetach", "pss")),
        (("rsa",), ("pss",)),
    ],
    ids=["attached", "attached-ber", "two-signers", "two-signers-pss-mgf1-sha1", "pss-mgf1-sha1"],
)
def test_we_verify_openssl_attached_multi_signer_and_pss_sha1_mgf(
    tmp_path: Path, signers: tuple[str, ...], extra: tuple[str, ...]
) -> None:
    der = _sign(tmp_path, signers, *extra)
    attached = "-nodetach" in extra
    record(
        f"openssl-sig-{'+'.join(signers)}-{'-'.join(extra)}",
        der,
        content=None if attached else CONTENT,
    )
    result = cms.verify_signed(der, None if attached else CONTENT)
    assert result.content == CONTENT
    assert {r.certificate for r in result.verified} == {device(n)[1] for n in signers}
    assert all(r.verified for r in result.signers)
    if attached:
        part = MimePart("application/pkcs7-mime; smime-type=signed-data; name=smime.p7m", der)
        verified = smime.verify(part)
        assert verified.content == INNER
        assert set(verified.verified_signers) == {device(n)[1] for n in signers}
        changed = der.replace(b"192.0.2.2", b"192.0.2.9")
        assert changed != der
        assert not any(r.verified for r in cms.verify_signed(changed).signers)
        with pytest.raises(SignatureError):
            smime.verify(MimePart(part.content_type, changed))
    else:
        with pytest.raises(SignatureError):
            cms.verify_detached(der, CONTENT.replace(b"192.0.2.2", b"192.0.2.9"))
