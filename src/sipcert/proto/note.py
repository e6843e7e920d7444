"""C2SP signed-note: Ed25519 note signatures and tlog-cosignature v1 witness cosignatures.

A note is UTF-8 text ending in a newline, a blank line, then signature lines
``— <key name> base64(key ID || signature)`` (c2sp.org/signed-note §Format). The log signs its
checkpoints with signature type 0x01 (Ed25519 over the note text, §Ed25519 signatures);
witnesses add type 0x04 cosignatures (c2sp.org/tlog-cosignature §Format: a big-endian u64
timestamp then an Ed25519 signature over ``cosignature/v1\\ntime <t>\\n`` + the note text).

Keys are written as the Go reference implementation writes them: a verifier key ("vkey") is
``<name>+<key ID hex>+base64(type || public key)``, a signer key ("skey") is
``PRIVATE+KEY+<name>+<key ID hex>+base64(type || seed)``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from sipcert.errors import InputTooLargeError, LogFormatError, ProofError

__all__ = [
    "ALG_COSIGNATURE_V1",
    "ALG_ED25519",
    "MAX_NOTE_SIZE",
    "MAX_SIGNATURES",
    "Note",
    "NoteSignature",
    "Opened",
    "Signer",
    "Verifier",
    "cosignature_message",
    "decode_base64",
    "key_id",
    "open_note",
    "parse_note",
    "sign_note",
]

#: Signature type bytes (signed-note §Signature types).
ALG_ED25519 = 0x01
ALG_COSIGNATURE_V1 = 0x04
#: A note this large is refused before parsing; ours are a few hundred bytes.
MAX_NOTE_SIZE = 64 * 1024
#: signed-note: verifiers "MUST accept at least up to 16 signatures"; Go's limit is 100.
MAX_SIGNATURES = 100

_DASH = "\u2014 "
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def decode_base64(text: str, what: str) -> bytes:
    """Strict standard base64 (RFC 4648 §4), canonical padding only."""
    if not _BASE64.fullmatch(text) or len(text) % 4:
        raise LogFormatError(f"{what} is not standard base64")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise LogFormatError(f"{what} is not standard base64") from exc
    if base64.b64encode(raw).decode() != text:
        raise LogFormatError(f"{what} is not canonical base64")
    return raw


def _check_key_name(name: str) -> None:
    # signed-note: "Key names MUST be non-empty and MUST NOT contain any Unicode spaces or plus".
    if not name or "+" in name or any(c.isspace() for c in name) or _CONTROL.search(name):
        raise LogFormatError(f"{name!r} is not a valid note key name")


def key_id(name: str, alg: int, public_key: bytes) -> int:
    """signed-note: ``SHA-256(key name || 0x0A || signature type || public key)[:4]``."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + public_key).digest()
    value: int = struct.unpack(">I", digest[:4])[0]
    return value


def cosignature_message(timestamp: int, text: bytes) -> bytes:
    """tlog-cosignature §Ed25519 signed message: header line, time line, the note text."""
    return b"cosignature/v1\ntime %d\n" % timestamp + text


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True, slots=True)
class Verifier:
    """A trusted key: name, type (0x01 note signature, 0x04 cosignature) and Ed25519 key."""

    name: str
    alg: int
    public_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_key_name(self.name)
        if self.alg not in (ALG_ED25519, ALG_COSIGNATURE_V1):
            raise LogFormatError(f"signature type 0x{self.alg:02x} is not supported")
        if len(self.public_key) != 32:
            raise LogFormatError("an Ed25519 public key is 32 bytes")

    @property
    def key_id(self) -> int:
        return key_id(self.name, self.alg, self.public_key)

    @property
    def vkey(self) -> str:
        """The ``name+keyid+base64`` encoding (what ``/log/vkey`` serves)."""
        blob = base64.b64encode(bytes([self.alg]) + self.public_key).decode()
        return f"{self.name}+{self.key_id:08x}+{blob}"

    @classmethod
    def parse(cls, vkey: str) -> Verifier:
        """Parse a vkey line; its key ID must match its name and key (Go's ``NewVerifier``)."""
        parts = vkey.strip("\n").split("+", 2)
        if len(parts) != 3 or not re.fullmatch(r"[0-9a-f]{8}", parts[1]):
            raise LogFormatError("a verifier key is name+keyid+base64")
        name, hex_id, blob = parts
        raw = decode_base64(blob, "the verifier key")
        if len(raw) != 33:
            raise LogFormatError("a verifier key holds a type byte and a 32-byte Ed25519 key")
        verifier = cls(name=name, alg=raw[0], public_key=raw[1:])
        if verifier.key_id != int(hex_id, 16):
            raise LogFormatError("the verifier key's ID does not match its name and key")
        return verifier

    def verify(self, text: bytes, signature: bytes) -> int | None:
        """Check ``signature`` (without key ID) over ``text``.

        Returns the cosignature timestamp for type 0x04, 0 for type 0x01, None if it fails.
        The answer for the same key, text and signature bytes is remembered
        (:func:`_verify`): a UA checks the same checkpoint on every fetch (issue 13).
        """
        text, signature = bytes(text), bytes(signature)
        if len(text) > _MEMO_TEXT:
            return _verify.__wrapped__(self.alg, self.public_key, text, signature)
        return _verify(self.alg, self.public_key, text, signature)


#: Longest note text whose verification is remembered (a checkpoint is ~100 bytes).
_MEMO_TEXT = 4096


@functools.lru_cache(maxsize=1024)
def _verify(alg: int, public_key: bytes, text: bytes, signature: bytes) -> int | None:
    """:meth:`Verifier.verify`, remembered by its exact inputs: an Ed25519 verification is
    a pure function of the key, the message and the signature, so the memo never answers
    other than the check itself would. Bounded (least recently used out)."""
    key = Ed25519PublicKey.from_public_bytes(public_key)
    if alg == ALG_COSIGNATURE_V1:
        if len(signature) != 8 + 64:
            return None
        (timestamp,) = struct.unpack(">Q", signature[:8])
        if timestamp > 2**63 - 1:  # tlog-cosignature: "MUST NOT exceed 2^63 - 1"
            return None
        message, sig = cosignature_message(timestamp, text), signature[8:]
    else:
        if len(signature) != 64:
            return None
        timestamp, message, sig = 0, text, signature
    try:
        key.verify(sig, message)
    except InvalidSignature:
        return None
    return int(timestamp)


@dataclass(frozen=True, slots=True)
class Signer:
    """A signing key; ``repr`` never shows the secret."""

    name: str
    private_key: Ed25519PrivateKey = field(repr=False)
    alg: int = ALG_ED25519

    def __post_init__(self) -> None:
        _check_key_name(self.name)
        if self.alg not in (ALG_ED25519, ALG_COSIGNATURE_V1):
            raise LogFormatError(f"signature type 0x{self.alg:02x} is not supported")

    @classmethod
    def generate(cls, name: str, alg: int = ALG_ED25519) -> Signer:
        return cls(name, Ed25519PrivateKey.generate(), alg)

    @classmethod
    def parse(cls, skey: str) -> Signer:
        """Parse ``PRIVATE+KEY+name+keyid+base64(type || 32-byte seed)``."""
        parts = skey.strip("\n").split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise LogFormatError("a signer key is PRIVATE+KEY+name+keyid+base64")
        _, _, name, hex_id, blob = parts
        raw = decode_base64(blob, "the signer key")
        if len(raw) != 33 or not re.fullmatch(r"[0-9a-f]{8}", hex_id):
            raise LogFormatError("a signer key holds a type byte and a 32-byte Ed25519 seed")
        signer = cls(name, Ed25519PrivateKey.from_private_bytes(raw[1:]), raw[0])
        if signer.verifier.key_id != int(hex_id, 16):
            raise LogFormatError("the signer key's ID does not match its name and key")
        return signer

    @property
    def skey(self) -> str:
        seed = self.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        blob = base64.b64encode(bytes([self.alg]) + seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.verifier.key_id:08x}+{blob}"

    @property
    def verifier(self) -> Verifier:
        return Verifier(self.name, self.alg, _raw_public(self.private_key.public_key()))

    def sign(self, text: bytes, timestamp: int = 0) -> NoteSignature:
        """A signature line over note ``text`` (a cosignature at ``timestamp`` for type 0x04)."""
        if self.alg == ALG_COSIGNATURE_V1:
            if not 0 <= timestamp <= 2**63 - 1:
                raise LogFormatError("a cosignature timestamp is between 0 and 2^63 - 1")
            blob = struct.pack(">Q", timestamp) + self.private_key.sign(
                cosignature_message(timestamp, text)
            )
        else:
            blob = self.private_key.sign(text)
        return NoteSignature(self.name, self.verifier.key_id, blob)


@dataclass(frozen=True, slots=True)
class NoteSignature:
    """One signature line: key name, key ID and the signature bytes after the key ID."""

    name: str
    key_id: int
    signature: bytes = field(repr=False)

    def line(self) -> str:
        blob = base64.b64encode(struct.pack(">I", self.key_id) + self.signature).decode()
        return f"{_DASH}{self.name} {blob}\n"

    @classmethod
    def parse(cls, line: str) -> NoteSignature:
        """Parse one line (without its newline)."""
        if not line.startswith(_DASH):
            raise LogFormatError("a note signature line starts with an em dash and a space")
        name, sep, blob = line[len(_DASH) :].partition(" ")
        if not sep:
            raise LogFormatError("a note signature line is '— <name> <base64>'")
        _check_key_name(name)
        raw = decode_base64(blob, "a note signature")
        if len(raw) < 5:
            raise LogFormatError("a note signature holds a key ID and a signature")
        return cls(name, struct.unpack(">I", raw[:4])[0], raw[4:])


@dataclass(frozen=True, slots=True)
class Note:
    """A parsed note: its text (ending in a newline) and its signature lines in order."""

    text: bytes
    signatures: tuple[NoteSignature, ...]

    def to_bytes(self) -> bytes:
        return self.text + b"\n" + "".join(s.line() for s in self.signatures).encode()

    def with_signatures(self, extra: Iterable[NoteSignature]) -> Note:
        """This note with ``extra`` appended, skipping any (name, key ID) it already has."""
        seen = {(s.name, s.key_id) for s in self.signatures}
        added = [s for s in extra if (s.name, s.key_id) not in seen]
        return Note(self.text, self.signatures + tuple(added))


def _check_text(raw: bytes, what: str) -> str:
    if len(raw) > MAX_NOTE_SIZE:
        raise InputTooLargeError(f"{what} of {len(raw)} bytes is over {MAX_NOTE_SIZE}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LogFormatError(f"{what} is not UTF-8") from exc
    if _CONTROL.search(text):
        raise LogFormatError(f"{what} contains a control character other than newline")
    return text


def parse_note(raw: bytes) -> Note:
    """Split a signed note into text and signatures, refusing any malformation precisely."""
    text = _check_text(raw, "a signed note")
    cut = text.rfind("\n\n")
    if cut < 0:
        raise LogFormatError("a signed note has no blank line before its signatures")
    body, sigs = text[: cut + 1], text[cut + 2 :]
    if not sigs.endswith("\n"):
        raise LogFormatError("a signed note ends with a newline after its last signature")
    lines = sigs[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise InputTooLargeError(f"a signed note with more than {MAX_SIGNATURES} signatures")
    return Note(body.encode(), tuple(NoteSignature.parse(line) for line in lines))


def sign_note(text: bytes, signers: Sequence[Signer], timestamp: int = 0) -> Note:
    """A note of ``text`` signed by each of ``signers``."""
    _check_text(text, "note text")
    if not text.endswith(b"\n") or text.startswith(b"\n") or b"\n\n" in text:
        raise LogFormatError("note text is non-empty lines, each ending in a newline")
    if not signers:
        raise LogFormatError("a note needs at least one signature")
    return Note(text, tuple(s.sign(text, timestamp) for s in signers))


@dataclass(frozen=True, slots=True)
class Opened:
    """What :func:`open_note` found: the note and the verifiers whose signatures verified.

    ``timestamps`` maps the vkey of each verified cosigner (type 0x04) to its cosignature time.
    """

    note: Note
    verified: tuple[Verifier, ...]
    timestamps: dict[str, int]


def open_note(raw: bytes | Note, verifiers: Sequence[Verifier]) -> Opened:
    """Parse ``raw`` and verify it against the trusted ``verifiers`` (signed-note §Signatures).

    Unknown keys are ignored; a known key whose signature fails, or that signed twice, rejects
    the whole note; at least one known signature must verify.

    Raises:
        LogFormatError: the note does not parse.
        ProofError: no trusted signature, or a trusted one fails.
    """
    note = raw if isinstance(raw, Note) else parse_note(raw)
    known = {(v.name, v.key_id): v for v in verifiers}
    verified: list[Verifier] = []
    timestamps: dict[str, int] = {}
    seen: set[tuple[str, int]] = set()
    for sig in note.signatures:
        key = (sig.name, sig.key_id)
        verifier = known.get(key)
        if verifier is None:
            continue
        if key in seen:
            raise ProofError(f"the note carries two signatures by {sig.name}")
        seen.add(key)
        timestamp = verifier.verify(note.text, sig.signature)
        if timestamp is None:
            raise ProofError(f"the note's signature by {sig.name} does not verify")
        verified.append(verifier)
        if verifier.alg == ALG_COSIGNATURE_V1:
            timestamps[verifier.vkey] = timestamp
    if not verified:
        raise ProofError("the note carries no signature by a trusted key")
    return Opened(note, tuple(verified), timestamps)
