#!/usr/bin/env python3
"""S/MIME throughput of :mod:`sipcert.proto.smime` next to the limit ``openssl speed`` sets.

One command (bench/README.md)::

    .venv/bin/python bench/smime_vs_openssl.py

For RSA-2048 and P-256 device keys it measures, on one core, how many SIP bodies per second
we sign and encrypt (AES-128-GCM, RSA-OAEP or ECDH) to 1, 4 and 16 devices of the callee,
and how many we decrypt and verify. In the same run ``openssl speed`` measures the public
key operations each body needs, which bound any implementation:

* sign + encrypt to N: one signature, plus per recipient one RSA public operation (OAEP
  encryption costs what a verification costs) or one ECDH key generation and one ECDH;
* decrypt + verify: one RSA private operation (or one ECDH) and one verification.

Both sides are operations per CPU second of one process (``openssl speed`` divides by its
CPU user time), and the rounds interleave them, so other work on the shared cores moves
neither much. The row "the primitives alone" times just the ``cryptography`` calls a body's
decrypt and verify make (no parsing, no MIME): the ceiling for any Python code on that library. The
AES, hashing and ASN.1 work is on top, so the ratio (ours / limit) says how much the
Python around the primitives costs. The table goes into docs/benchmarks.md between the
``bench:smime:begin``/``bench:smime:end`` markers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import hashlib
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, keywrap, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.ciphers.algorithms import AES
from cryptography.hazmat.primitives.ciphers.modes import GCM
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from tests.factories import KeyKind, make_identity  # noqa: E402

from sipcert.proto import smime  # noqa: E402
from sipcert.proto.mime import MimePart  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
BEGIN = (
    "<!-- bench:smime:begin (written by bench/smime_vs_openssl.py; edits here are overwritten) -->"
)
END = "<!-- bench:smime:end -->"
MESSAGE = MimePart("text/plain; charset=utf-8", b"Hello Carol, are you free at ten?\r\n" * 4)


def openssl_speed(seconds: int) -> dict[str, float]:
    """Operations per second of one core: rsa sign/verify, ecdsa sign/verify, ecdh."""
    out = subprocess.run(
        ["openssl", "speed", "-seconds", str(seconds), "rsa2048", "ecdsap256", "ecdhp256"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rsa = re.search(r"^rsa 2048 bits\s+\S+\s+\S+\s+([\d.]+)\s+([\d.]+)", out, re.M)
    ecdsa = re.search(r"256 bits ecdsa \(nistp256\)\s+\S+\s+\S+\s+([\d.]+)\s+([\d.]+)", out)
    ecdh = re.search(r"256 bits ecdh \(nistp256\)\s+\S+\s+([\d.]+)", out)
    if not (rsa and ecdsa and ecdh):
        raise SystemExit(f"cannot read openssl speed output:\n{out}")
    return {
        "rsa_sign": float(rsa[1]),
        "rsa_verify": float(rsa[2]),
        "ecdsa_sign": float(ecdsa[1]),
        "ecdsa_verify": float(ecdsa[2]),
        "ecdh": float(ecdh[1]),
    }


def limit(speed: dict[str, float], *, kind: str, operation: str, n: int) -> float:
    """Bodies per second if only the public-key operations cost anything."""
    if kind == "rsa2048":
        if operation == "send":
            return 1 / (1 / speed["rsa_sign"] + n / speed["rsa_verify"])
        return 1 / (1 / speed["rsa_sign"] + 1 / speed["rsa_verify"])
    if operation == "send":
        return 1 / (1 / speed["ecdsa_sign"] + 2 * n / speed["ecdh"])
    return 1 / (1 / speed["ecdh"] + 1 / speed["ecdsa_verify"])


def rate(action: Callable[[], object], seconds: float) -> float:
    """Operations per CPU second of this process.

    CPU time, not wall time: ``openssl speed`` divides by its CPU user time (unless told
    ``-elapsed``), so on cores shared with other work a wall-clock rate would be compared
    with a reference that the load does not touch.
    """
    action()  # warm up
    count, start = 0, time.process_time()
    while (elapsed := time.process_time() - start) < seconds:
        action()
        count += 1
    return count / elapsed


def primitives_only(kind: str, sender_key: Any, device_key: Any, size: int) -> Callable[[], object]:
    """The ``cryptography`` calls one body's decrypt + verify needs, and nothing else.

    What no parsing can remove: for P-256 the originator point loaded, ECDH, the X9.63
    KDF, AES key unwrap; for RSA-2048 the OAEP decryption; then AES-128-GCM over the
    body's ciphertext, SHA-256 of the signed content and the signature check.
    """
    cek, kek, nonce = os.urandom(16), os.urandom(16), os.urandom(12)
    sealed = AESGCM(cek).encrypt(nonce, os.urandom(size), None)
    wrapped = keywrap.aes_key_wrap(kek, cek)
    content = os.urandom(size // 2)
    if kind == "rsa2048":
        oaep = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
        encrypted = device_key.public_key().encrypt(cek, oaep)
        signature = sender_key.sign(content, padding.PKCS1v15(), hashes.SHA256())
        public = sender_key.public_key()

        def rsa_body() -> None:
            key = device_key.decrypt(encrypted, oaep)
            body = Cipher(AES(key), GCM(nonce, sealed[-16:])).decryptor()
            body.update(sealed[:-16])
            body.finalize()
            hashlib.sha256(content).digest()
            public.verify(signature, content, padding.PKCS1v15(), hashes.SHA256())

        return rsa_body
    point = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    signature = sender_key.sign(content, ec.ECDSA(hashes.SHA256()))
    public = sender_key.public_key()

    def ec_body() -> None:
        peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        shared = device_key.exchange(ec.ECDH(), peer)
        X963KDF(algorithm=hashes.SHA256(), length=16, sharedinfo=b"\x30" * 30).derive(shared)
        keywrap.aes_key_unwrap(kek, wrapped)
        body = Cipher(AES(cek), GCM(nonce, sealed[-16:])).decryptor()
        body.update(sealed[:-16])
        body.finalize()
        hashlib.sha256(content).digest()
        public.verify(signature, content, ec.ECDSA(hashes.SHA256()))

    return ec_body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    cases: list[tuple[str, str, Callable[[], object], Callable[[dict[str, float]], float]]] = []
    sizes = []
    kinds: tuple[KeyKind, ...] = ("rsa2048", "ec-p256")
    for kind in kinds:
        key_kind = kind
        key, cert = make_identity("alice@example.com", key_kind)
        devices = [make_identity("carol@example.com", key_kind, slot) for slot in range(16)]
        label = "rsa2048" if kind == "rsa2048" else "p256"
        for n in (1, 4, 16):
            certs = [c for _, c in devices[:n]]
            cases.append((
                label, f"sign + encrypt to {n}",
                functools.partial(smime.sign_and_encrypt, MESSAGE, key, cert, certs),
                functools.partial(limit, kind=label, operation="send", n=n),
            ))  # fmt: skip
        body = smime.sign_and_encrypt(MESSAGE, key, cert, [c for _, c in devices[:4]])
        dkey, dcert = devices[0]
        assert smime.decrypt_and_verify(body, dkey, dcert).content == MESSAGE
        cases.append((
            label, "decrypt + verify (of 4)",
            functools.partial(smime.decrypt_and_verify, body, dkey, dcert),
            functools.partial(limit, kind=label, operation="receive", n=1),
        ))  # fmt: skip
        cases.append((
            label, "decrypt + verify: the primitives alone",
            primitives_only(kind, key, dkey, len(body.body)),
            functools.partial(limit, kind=label, operation="receive", n=1),
        ))  # fmt: skip
        sizes.append((label, float(len(body.to_bytes()))))
    # Rounds interleave the reference and us, so a change of load on the shared cores hits
    # both; each figure is the median over the rounds, each ratio the median of the rounds'.
    speeds: list[dict[str, float]] = []
    ours: list[list[float]] = [[] for _ in cases]
    for _ in range(args.rounds):
        speeds.append(openssl_speed(max(1, round(args.seconds))))
        for index, (_, _, action, _) in enumerate(cases):
            ours[index].append(rate(action, args.seconds))
    speed = {name: statistics.median(s[name] for s in speeds) for name in speeds[0]}
    rows = []
    for index, (label, operation, _, bound_of) in enumerate(cases):
        ratios = [o / bound_of(s) for o, s in zip(ours[index], speeds, strict=True)]
        rows.append((
            label, operation, statistics.median(ours[index]),
            statistics.median(bound_of(s) for s in speeds), statistics.median(ratios),
            f"{min(ratios):.2f}-{max(ratios):.2f}",
        ))  # fmt: skip
        if operation.endswith("alone"):
            rows.append((label, "body octets, 4 recipients", dict(sizes)[label], 0.0, 0.0, ""))
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        BEGIN,
        "",
        f"Measured {when} on {platform.machine()} with `python bench/smime_vs_openssl.py`; "
        f"one core, AES-128-GCM, RSA-OAEP / ECDH P-256, {args.rounds} rounds of "
        f"{args.seconds:g} s per figure, interleaved with `openssl speed`; medians. "
        f"`openssl speed` (median): RSA-2048 sign {speed['rsa_sign']:,.0f}/s, verify "
        f"{speed['rsa_verify']:,.0f}/s; ECDSA P-256 sign {speed['ecdsa_sign']:,.0f}/s, verify "
        f"{speed['ecdsa_verify']:,.0f}/s; ECDH P-256 {speed['ecdh']:,.0f}/s.",
        "",
        "Each ratio is the median of the rounds' own ratios (ours / the limit of the same"
        " round), with their range: the rounds move together, so it is steadier than the"
        " ratio of the two medians.",
        "",
        "| device key | operation | sipcert per s | openssl limit per s | ratio | rounds |",
        "|---|---|---|---|---|---|",
    ]
    for label, operation, value, bound, ratio, spread in rows:
        if bound == 0.0:
            lines.append(f"| {label} | {operation} | {value:,.0f} octets | | | |")
        else:
            lines.append(
                f"| {label} | {operation} | {value:,.0f} | {bound:,.0f} | {ratio:.2f} | {spread} |"
            )
    lines += ["", END]
    section = "\n".join(lines)
    print(section)
    if not args.no_write:
        text = DOC.read_text()
        if BEGIN in text:
            text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END) :]
        else:
            text += "\n" + section + "\n"
        DOC.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
