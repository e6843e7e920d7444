"""What the CMS interoperability tests share: the devices of one AOR, the content, tampering.

Carol has four devices (draft §4.4), of mixed key types, so every envelope test is also a
"one EC device must not lock the RSA devices out" test (issue 11).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from cryptography import x509

from sipcert.proto.mime import MimePart
from tests.factories import KeyKind, PrivateKey, make_identity, write_pem

INNER = MimePart(
    "application/sdp",
    b"v=0\r\no=carol 1 1 IN IP4 192.0.2.2\r\ns=-\r\nc=IN IP4 192.0.2.2\r\nt=0 0\r\n"
    b"binary \x00\xff\x80 and a bare LF\n",
)
CONTENT = INNER.to_bytes()

#: (name, key kind, slot): Carol's devices; the first of each kind is used for 1 recipient.
DEVICES: tuple[tuple[str, KeyKind, int], ...] = (
    ("rsa", "rsa2048", 0),
    ("p256", "ec-p256", 0),
    ("p384", "ec-p384", 1),
    ("rsa-b", "rsa2048", 1),
)


def device(name: str) -> tuple[PrivateKey, x509.Certificate]:
    (kind, slot) = next((k, s) for n, k, s in DEVICES if n == name)
    return make_identity("carol@example.com", kind, slot)


def devices(names: tuple[str, ...]) -> list[tuple[str, PrivateKey, x509.Certificate]]:
    return [(name, *device(name)) for name in names]


def pems(tmp_path: Path, names: tuple[str, ...]) -> dict[str, tuple[Path, Path]]:
    """``{name: (key.pem, cert.pem)}`` for the named devices, written into ``tmp_path``."""
    return {name: write_pem(tmp_path, name, key, cert) for name, key, cert in devices(names)}


def flip(data: bytes, offset_from_end: int) -> bytes:
    """``data`` with one bit changed ``offset_from_end`` octets before its end."""
    changed = bytearray(data)
    changed[-offset_from_end] ^= 0x01
    return bytes(changed)


def run(*args: str | Path, check: bool = True, stdin: bytes | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
    """Run a peer program; on ``check`` failure the assertion shows its stderr."""
    result = subprocess.run(
        [str(a) for a in args], capture_output=True, timeout=60, check=False, input=stdin,
        env=env,
    )  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, args[:3]))} failed ({result.returncode}): "
            f"{result.stderr.decode(errors='replace')[-2000:]}"
        )
    return result
