"""Issue 11 against BouncyCastle 1.72 (Java): CMS code that shares nothing with the others.

``CmsPeer.java`` beside this file is compiled with ``javac`` into tmp_path against
Debian's ``bcprov``/``bcpkix``/``bcutil`` jars (no binary is vendored). BouncyCastle makes
and opens AES-GCM/CBC envelopes with RSA-OAEP/v1.5 and ECDH recipients, and it makes the
Ed25519 signatures (RFC 8419) that OpenSSL 3.0 cannot. Neither it (1.72) nor any other
peer here does X25519/X448 recipients (RFC 8418): a strict xfail says so.
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Callable
from pathlib import Path

import pytest
from asn1crypto import cms as asn1_cms
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x448, x25519
from cryptography.x509.oid import NameOID

from sipcert.errors import DecryptionError, SignatureError
from sipcert.proto import cms, smime
from sipcert.proto.mime import MimePart, parse_multipart
from tests.cmslean import record
from tests.factories import make_identity
from tests.integration.cms.peers import CONTENT, INNER, device, flip, pems, run

pytestmark = pytest.mark.peer("java", "javac")

JARS = [Path("/usr/share/java") / f"{name}.jar" for name in ("bcprov", "bcpkix", "bcutil")]
SOURCE = Path(__file__).with_name("CmsPeer.java")
ALL_FOUR = ("rsa", "p256", "p384", "rsa-b")
Java = Callable[..., bytes]


@functools.cache
def _montgomery(
    kind: str,
) -> tuple[x25519.X25519PrivateKey | x448.X448PrivateKey, x509.Certificate]:
    """An X25519/X448 device of Carol's; such a key cannot sign, so her P-256 key certifies it."""
    key: x25519.X25519PrivateKey | x448.X448PrivateKey = (
        x25519.X25519PrivateKey.from_private_bytes(bytes(range(32)))
        if kind == "x25519"
        else x448.X448PrivateKey.from_private_bytes(bytes(range(56)))
    )
    issuer_key, issuer = device("p256")
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"carol {kind}")]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(25519 if kind == "x25519" else 448)
        .not_valid_before(datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC))
        .not_valid_after(datetime.datetime(2049, 1, 1, tzinfo=datetime.UTC))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(issuer_key, hashes.SHA256())
    )
    return key, cert


def _write(tmp_path: Path, name: str, key: object, cert: x509.Certificate) -> tuple[Path, Path]:
    key_path, cert_path = tmp_path / f"{name}.key", tmp_path / f"{name}.pem"
    key_path.write_bytes(
        key.private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@pytest.fixture(scope="module")
def java(tmp_path_factory: pytest.TempPathFactory) -> Java:
    missing = [str(jar) for jar in JARS if not jar.exists()]
    if missing:
        pytest.fail(f"BouncyCastle jars missing: {missing} (libbcprov-java, libbcpkix-java, ...)")
    classes = tmp_path_factory.mktemp("bc")
    classpath = ":".join(map(str, JARS))
    run("javac", "-nowarn", "-cp", classpath, "-d", classes, SOURCE)

    def call(*args: str | Path, check: bool = True) -> bytes:
        result = run("java", "-cp", f"{classes}:{classpath}", "CmsPeer", *args, check=check)
        return result.stdout if result.returncode == 0 else b"FAILED " + result.stderr

    return call


def _devices(tmp_path: Path) -> dict[str, tuple[object, x509.Certificate, Path, Path]]:
    found: dict[str, tuple[object, x509.Certificate, Path, Path]] = {}
    for name, (key_path, cert_path) in pems(tmp_path, ALL_FOUR).items():
        key, cert = device(name)
        found[name] = (key, cert, key_path, cert_path)
    return found


@pytest.mark.xfail(
    strict=True,
    reason="BouncyCastle 1.72 cannot make nor open X25519/X448 recipients (RFC 8418): 'can't "
    "identify EC private key' -- its ECDH KDF schemes take EC keys only, and it does not "
    "know the HKDF schemes (1.2.840.113549.1.9.16.3.19)",
)
@pytest.mark.parametrize("kind", ["x25519", "x448"])
def test_bouncycastle_opens_our_x25519_and_x448_recipients(
    java: Java, tmp_path: Path, kind: str
) -> None:
    key, cert = _montgomery(kind)
    key_path, cert_path = _write(tmp_path, kind, key, cert)
    envelope = cms.encrypt_enveloped(CONTENT, [cert])
    assert cms.decrypt_enveloped(envelope, key, cert) == CONTENT  # our own round trip
    (tmp_path / "env.der").write_bytes(envelope)
    java("decrypt", tmp_path / "env.der", cert_path, key_path, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == CONTENT


@pytest.mark.parametrize(("mode", "rsa"), [("gcm", "oaep"), ("cbc", "v15")])
def test_we_open_bouncycastle_envelopes_to_four_mixed_devices(
    java: Java, tmp_path: Path, mode: str, rsa: str
) -> None:
    everyone = _devices(tmp_path)
    (tmp_path / "inner.mime").write_bytes(CONTENT)
    out = tmp_path / "env.der"
    java("encrypt", mode, rsa, tmp_path / "inner.mime", out, *(d[3] for d in everyone.values()))
    content_type = (
        smime.AUTH_ENVELOPED_CONTENT_TYPE if mode == "gcm" else smime.ENVELOPED_CONTENT_TYPE
    )
    part = MimePart(content_type, out.read_bytes())
    for _name, (key, cert, _, _) in everyone.items():
        assert smime.decrypt(part, key, cert) == INNER  # type: ignore[arg-type]
        record(f"bc-env-{mode}-{rsa}", part.body, key=key, cert=cert)
    if mode == "gcm":
        # BouncyCastle writes BER (end-of-contents octets last): change the tag itself
        mac = bytes(asn1_cms.ContentInfo.load(part.body)["content"]["mac"].native)
        tampered = part.body.replace(mac, flip(mac, 1))
        with pytest.raises(DecryptionError, match="AES-GCM authentication failed"):
            smime.decrypt(MimePart(content_type, tampered), *device("p384"))


@pytest.mark.parametrize(
    "algorithms",
    [cms.DEFAULT_ALGORITHMS, cms.LEGACY_ALGORITHMS],
    ids=["aes128-gcm+oaep", "aes128-cbc+pkcs1v15"],
)
def test_bouncycastle_opens_our_envelopes_to_four_mixed_devices(
    java: Java, tmp_path: Path, algorithms: cms.EnvelopeAlgorithms
) -> None:
    everyone = _devices(tmp_path)
    envelope = cms.encrypt_enveloped(
        CONTENT, [d[1] for d in everyone.values()], algorithms=algorithms
    )
    (tmp_path / "env.der").write_bytes(envelope)
    args: list[str | Path] = []
    for name, (_, _, key_path, cert_path) in everyone.items():
        args += [cert_path, key_path, tmp_path / f"{name}.out"]
    java("decrypt", tmp_path / "env.der", *args)
    for name in everyone:
        assert (tmp_path / f"{name}.out").read_bytes() == CONTENT, name
    if algorithms.content.endswith("gcm"):
        (tmp_path / "bad.der").write_bytes(flip(envelope, 1))  # the tag
        refused = java("decrypt", tmp_path / "bad.der", *args[:3], check=False)
        assert refused.startswith(b"FAILED")


@pytest.mark.parametrize(
    ("scheme", "name", "attached"),
    [
        ("pss", "rsa", True),
        ("ecdsa", "p256", False),
        ("ed25519", "ed25519", True),
    ],
)
def test_we_verify_bouncycastle_signatures(
    java: Java, tmp_path: Path, scheme: str, name: str, attached: bool
) -> None:
    if name == "ed25519":
        key: object = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
        cert = make_identity("carol@example.com", "ec-p256")[1]
        cert = (
            x509.CertificateBuilder()
            .subject_name(cert.subject)
            .issuer_name(cert.subject)
            .public_key(key.public_key())  # type: ignore[attr-defined]
            .serial_number(8419)
            .not_valid_before(cert.not_valid_before_utc)
            .not_valid_after(cert.not_valid_after_utc)
            .sign(key, None)  # type: ignore[arg-type]
        )
        key_path, cert_path = _write(tmp_path, name, key, cert)
    else:
        key, cert = device(name)
        key_path, cert_path = pems(tmp_path, (name,))[name]
    (tmp_path / "content.bin").write_bytes(CONTENT)
    how = "attached" if attached else "detached"
    java("sign", scheme, how, tmp_path / "content.bin", tmp_path / "sig.der", cert_path, key_path)
    der = (tmp_path / "sig.der").read_bytes()
    result = cms.verify_signed(der, None if attached else CONTENT)
    assert result.content == CONTENT
    assert [r.certificate for r in result.signers] == [cert]
    record(f"bc-sig-{scheme}-{name}-{how}", der, content=None if attached else CONTENT)
    tampered = CONTENT.replace(b"carol", b"carla")
    if attached:
        assert not any(
            r.verified for r in cms.verify_signed(der.replace(b"carol", b"carla")).signers
        )
    else:
        with pytest.raises(SignatureError):
            cms.verify_detached(der, tampered)


def test_bouncycastle_verifies_our_signatures(java: Java, tmp_path: Path) -> None:
    args: list[str | Path] = []
    for name in ("rsa", "p256"):
        key, cert = device(name)
        _, cert_path = pems(tmp_path, (name,))[name]
        signed = smime.sign(INNER, key, cert, rsa_pss=name == "rsa")  # type: ignore[arg-type]
        parts = parse_multipart(signed.content_type, signed.body)
        (tmp_path / f"{name}.bin").write_bytes(parts.raw_parts[0])
        (tmp_path / f"{name}.sig").write_bytes(parts.parts[1].body)
        (tmp_path / f"{name}.bad").write_bytes(parts.raw_parts[0].replace(b"carol", b"carla"))
        args += [tmp_path / f"{name}.sig", tmp_path / f"{name}.bin", cert_path]
        args += [tmp_path / f"{name}.sig", tmp_path / f"{name}.bad", cert_path]
    assert java("verify", *args).split(b"\n")[:4] == [b"verified 1", b"verified 0"] * 2
