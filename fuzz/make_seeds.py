"""Write the committed fuzz inputs: test keys in ``fuzz/keys/`` and seeds in ``fuzz/corpus/``.

Run from the repository root: ``python -m fuzz.make_seeds``. Keys are made only when
absent (the targets load them; new keys would invalidate the CMS and Digest seeds); the
seeds are rewritten every time. Each seed is one valid input of its parser, so that the
fuzzer starts from the paths the real callers take.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

HERE = Path(__file__).parent
KEYS = HERE / "keys"
CORPUS = HERE / "corpus"


def _keys() -> None:
    from tests.factories import make_cert

    KEYS.mkdir(exist_ok=True)
    for name in ("alice", "bob"):
        key_path, cert_path = KEYS / f"{name}.key", KEYS / f"{name}.pem"
        if key_path.exists() and cert_path.exists():
            continue
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        cert = make_cert(key, f"{name}@example.com")
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _write(target: str, seeds: list[bytes]) -> None:
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        if not old.name.startswith("finding-"):  # past findings stay (fuzz/README.md)
            old.unlink()
    for seed in seeds:
        (folder / hashlib.sha1(seed).hexdigest()).write_bytes(seed)  # noqa: S324 - a name


def main() -> None:
    _keys()
    from cryptography.hazmat.primitives import serialization as ser

    from fuzz import targets as t
    from sipcert.proto import cms, mime, sip, smime
    from sipcert.proto.digest import DigestServer, build_authorization, parse_challenges

    _write(
        "query",
        [
            b"sip=alice%40example.com",
            b"email=alice@example.com&certHash=AAAAAAAAAAAAAAAAAAAAAAAAAAA",
            b"certHash=2jmj7l5rSw0yVb/vlWAYkK/YBwk",
            b"uri=sip%3Abob%40xn--bcher-kva.example",
            b"=?utf-8?b?w6lsw6luZQ==?=",
        ],
    )
    server = DigestServer(t.DIGEST_SECRET, "example.com", random_bytes=lambda n: b"\x07" * n)
    challenges = server.challenges(t.NOW_TS)
    seeds = []
    for i, challenge in enumerate(parse_challenges(challenges)):
        seeds.append(
            build_authorization(
                challenge,
                method="PUT",
                uri=t.DIGEST_URI,
                username="alice",
                password="alice-secret",
                nc=1,
                cnonce=f"0a4f113b{i}",
            ).encode()
        )
    seeds.append("\n".join(challenges).encode())
    seeds.append(b'Digest username*=UTF-8\'\'al%C3%AFce, realm="example.com", nonce="x"')
    _write("digest", seeds)

    alice_der = t.ALICE_CERT.public_bytes(ser.Encoding.DER)
    alice_pem = t.ALICE_CERT.public_bytes(ser.Encoding.PEM)
    _write("upload", [b"\x00" + alice_der, b"\x01" + alice_der, b"\x02" + alice_pem])

    alice_key = serialization.load_pem_private_key((KEYS / "alice.key").read_bytes(), None)
    assert isinstance(alice_key, rsa.RSAPrivateKey)
    signed = smime.sign(t.CONTENT, alice_key, t.ALICE_CERT)
    multipart = mime.parse_multipart(signed.content_type, signed.body)
    signature = multipart.parts[1].body
    envelope = cms.encrypt_enveloped(t.CONTENT.to_bytes(), [t.BOB_CERT])
    _write("cms", [signature, envelope])
    _write(
        "mime",
        [
            signed.to_bytes(),
            signed.content_type.encode() + b"\n" + signed.body,
            t.CONTENT.to_bytes(),
        ],
    )

    body = smime.encrypt(t.CONTENT, [t.BOB_CERT])
    request = sip.Request(
        "MESSAGE",
        "sip:bob@example.com",
        headers=(
            ("Via", "SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bK776asdhds"),
            ("Max-Forwards", "70"),
            ("To", "<sip:bob@example.com>"),
            ("From", '"Alice" <sip:alice@example.com>;tag=1928301774'),
            ("Call-ID", "a84b4c76e66710@127.0.0.1"),
            ("CSeq", "1 MESSAGE"),
            ("Content-Type", body.content_type),
        ),
        body=body.body,
    )
    response = sip.make_response(request, 200)
    _write("sip", [request.to_bytes(), response.to_bytes(), request.to_bytes() * 2])

    placeholder = mime.MimePart(
        f'message/external-body; access-type="URL"; URL="{t.FILL_URL}"',
        b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n"
        b"Content-ID: <p1@example.com>\r\n\r\n",
    )
    phone = mime.build_multipart("mixed", [t.CONTENT, placeholder])
    header = b'verified;sender="sip:bob@example.net";signer=' + b"ab" * 32 + b";by=a.example"
    _write(
        "delegation",
        [
            header + b"\n" + phone.to_bytes(),
            b"not-protected;delegated\n" + body.to_bytes(),
        ],
    )


if __name__ == "__main__":
    main()
