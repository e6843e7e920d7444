#!/usr/bin/env python3
"""Instructions per S/MIME body under callgrind: a measure the load on shared cores leaves alone.

One command (bench/README.md)::

    .venv/bin/python bench/smime_instructions.py [--src OTHER/src] [--count 50]

CPU-time ratios (bench/smime_vs_openssl.py) move with the load of the two shared cores; the
instruction count of the same work on the same bodies does not, so two versions of the code
(``--src``) can be compared step by step. The keys, certificates and the received body are made
once and written to a temporary file, so every run reads the same (RSA key generation and the
ephemeral keys would otherwise change the work); each figure is (count bodies - 0 bodies) /
count, both under ``valgrind --tool=callgrind``. "primitives" is the ``cryptography`` calls
alone (as in bench/smime_vs_openssl.py), so the rest is the Python around them.
"""

from __future__ import annotations

import argparse
import pickle
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHILD = r"""
import os, pickle, sys
sys.path.insert(0, sys.argv[1])
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization as s
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sipcert.proto import smime
from sipcert.proto.mime import MimePart
fx = pickle.loads(open(sys.argv[2], "rb").read())[sys.argv[3]]
what, count = sys.argv[4], int(sys.argv[5])
key = s.load_der_private_key(fx["key"], None)
cert = x509.load_der_x509_certificate(fx["cert"])
certs = [x509.load_der_x509_certificate(c) for c in fx["certs"]]
device = s.load_der_private_key(fx["device"], None)
body = MimePart(fx["content_type"], fx["body"], fx["headers"])
message = MimePart("text/plain; charset=utf-8", b"Hello Carol, are you free at ten?\r\n" * 4)
if what == "receive":
    def act(): smime.decrypt_and_verify(body, device, certs[0])
elif what.startswith("send"):
    to = certs[: int(what[4:])]
    def act(): smime.sign_and_encrypt(message, key, cert, to)
else:  # the primitives of one receive
    cek = os.urandom(16)
    sealed = AESGCM(cek).encrypt(b"n" * 12, fx["body"], None)
    if isinstance(device, ec.EllipticCurvePrivateKey):
        point = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
            s.Encoding.X962, s.PublicFormat.UncompressedPoint)
        signature = key.sign(fx["body"][:700], ec.ECDSA(hashes.SHA256()))
        def act():
            peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
            device.exchange(ec.ECDH(), peer)
            AESGCM(cek).decrypt(b"n" * 12, sealed, None)
            key.public_key().verify(signature, fx["body"][:700], ec.ECDSA(hashes.SHA256()))
    else:
        oaep = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
        wrapped = device.public_key().encrypt(cek, oaep)
        signature = key.sign(fx["body"][:700], padding.PKCS1v15(), hashes.SHA256())
        def act():
            device.decrypt(wrapped, oaep)
            AESGCM(cek).decrypt(b"n" * 12, sealed, None)
            key.public_key().verify(
                signature, fx["body"][:700], padding.PKCS1v15(), hashes.SHA256())
for _ in range(3 + count):
    act()
"""


def fixtures(path: Path) -> None:
    """Keys, certificates (16 devices) and one 4-recipient body per key kind, as DER."""
    from cryptography.hazmat.primitives import serialization as s

    sys.path.insert(0, str(ROOT / "src"))
    from tests.factories import make_identity

    from sipcert.proto import smime
    from sipcert.proto.mime import MimePart

    message = MimePart("text/plain; charset=utf-8", b"Hello Carol, are you free at ten?\r\n" * 4)
    out = {}
    for kind in ("rsa2048", "ec-p256"):
        key, cert = make_identity("alice@example.com", kind)
        devices = [make_identity("carol@example.com", kind, slot) for slot in range(16)]
        body = smime.sign_and_encrypt(message, key, cert, [c for _, c in devices[:4]])
        pkcs8 = (s.Encoding.DER, s.PrivateFormat.PKCS8, s.NoEncryption())
        out[kind] = {
            "key": key.private_bytes(*pkcs8),
            "cert": cert.public_bytes(s.Encoding.DER),
            "certs": [c.public_bytes(s.Encoding.DER) for _, c in devices],
            "device": devices[0][0].private_bytes(*pkcs8),
            "content_type": body.content_type,
            "headers": body.headers,
            "body": body.body,
        }
    path.write_bytes(pickle.dumps(out))


def instructions(src: Path, fixture: Path, kind: str, what: str, count: int) -> int:
    """Instructions of ``count`` operations, under callgrind."""
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         sys.executable, "-c", CHILD, str(src), str(fixture), kind, what, str(count)],
        capture_output=True, text=True, check=True,
    ).stderr  # fmt: skip
    match = re.search(r"Collected : (\d+)", out)
    if match is None:
        raise SystemExit(f"no callgrind total in:\n{out}")
    return int(match[1])


#: The libcrypto call each ``openssl speed`` loop makes once per operation.
_SPEED_CALLS = {
    "rsa2048": {"rsa_sign": "EVP_PKEY_sign", "rsa_verify": "EVP_PKEY_verify"},
    "ecdsap256": {"ecdsa_sign": "EVP_PKEY_sign", "ecdsa_verify": "EVP_PKEY_verify"},
    "ecdhp256": {"ecdh": "EVP_PKEY_derive"},
}


def speed_instructions(tmp: Path) -> dict[str, float]:
    """Instructions per operation of ``openssl speed`` itself, under callgrind.

    The inclusive count of the libcrypto call that each timing loop makes once per
    operation, divided by how often it was called (the loop's count and the one check call
    before it): what bench/smime_vs_openssl.py's bound counts, in instructions.
    """
    found: dict[str, float] = {}
    for algorithm, calls in _SPEED_CALLS.items():
        out_file = tmp / f"speed-{algorithm}.callgrind"
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}",
             "openssl", "speed", "-seconds", "1", algorithm],
            capture_output=True, check=True,
        )  # fmt: skip
        tree = subprocess.run(
            ["callgrind_annotate", "--inclusive=yes", "--tree=caller", str(out_file)],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        for name, function in calls.items():
            # a block of "< caller (Nx)" lines, then "* ...:FUNCTION [libcrypto...]"
            block = re.search(
                rf"((?:^.*<.*\(\d[\d,]*x\).*\n)+)^\s*([\d,]+) .*\*\s+\S*:{function} \[",
                tree,
                re.M,
            )
            if block is None:
                raise SystemExit(
                    f"no {function} in callgrind_annotate of openssl speed {algorithm}"
                )
            calls_made = sum(
                int(n.replace(",", "")) for n in re.findall(r"\((\d[\d,]*)x\)", block[1])
            )
            found[name] = int(block[2].replace(",", "")) / calls_made
    return found


def bound(speed: dict[str, float], kind: str, what: str) -> float | None:
    """Instructions of the public-key operations ``openssl speed`` times for one body
    (the arithmetic of bench/smime_vs_openssl.py), or None for the primitives row."""
    if what == "primitives":
        what = "receive"
    n = int(what[4:]) if what.startswith("send") else 0
    if kind == "rsa2048":
        if n:
            return speed["rsa_sign"] + n * speed["rsa_verify"]
        return speed["rsa_sign"] + speed["rsa_verify"]
    if n:
        return speed["ecdsa_sign"] + 2 * n * speed["ecdh"]
    return speed["ecdh"] + speed["ecdsa_verify"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="the sipcert to measure")
    parser.add_argument("--count", type=int, default=50, help="operations per figure")
    parser.add_argument(
        "--bound", action="store_true", help="also count openssl speed's operations, and ratios"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        fixture = Path(tmp) / "bodies.pickle"
        fixtures(fixture)
        speed = speed_instructions(Path(tmp)) if args.bound else {}
        if speed:
            shown = ", ".join(f"{name} {value / 1e6:.3f} M" for name, value in speed.items())
            print(f"openssl speed, instructions per operation: {shown}")
        print(f"instructions per operation, {args.src} (callgrind, {args.count} operations)")
        for kind in ("rsa2048", "ec-p256"):
            for what in ("receive", "primitives", "send1", "send4", "send16"):
                base = instructions(args.src, fixture, kind, what, 0)
                total = instructions(args.src, fixture, kind, what, args.count)
                ours = (total - base) / args.count
                line = f"{kind:8s} {what:10s} {ours / 1e6:7.2f} M"
                limit = bound(speed, kind, what) if speed else None
                if limit is not None:
                    line += f"   openssl speed {limit / 1e6:6.2f} M   ratio {limit / ours:.2f}"
                print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
