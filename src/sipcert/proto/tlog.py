"""The log's formats: checkpoints, tiles, entry bundles, witness requests, proofs and entries.

Each function is pure and cites the C2SP text it follows:

* c2sp.org/tlog-checkpoint: the note text ``origin\\nsize\\nbase64(root)\\n`` (+ extensions);
* c2sp.org/tlog-tiles: tile paths ``tile/<L>/<N>[.p/<W>]``, ``tile/entries/<N>[.p/<W>]``,
  tile contents (256 hashes at tree level ``8 * L``) and entry bundles (u16-prefixed);
* c2sp.org/tlog-witness: the ``add-checkpoint`` request body and its answers;
* c2sp.org/tlog-proof: the ``c2sp.org/tlog-proof@v1`` inclusion proof a GET can carry;
* our entry format (docs/transparency.md "Entries"): one enrollment or revocation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from sipcert.errors import InputTooLargeError, LogFormatError, ProofError
from sipcert.proto import merkle
from sipcert.proto.note import NoteSignature, Verifier, decode_base64, open_note, parse_note

__all__ = [
    "ENTRY_SIZE",
    "TILE_HEIGHT",
    "TILE_WIDTH",
    "Checkpoint",
    "Entry",
    "InclusionProof",
    "Operation",
    "TileNodes",
    "TilePath",
    "VerifiedProof",
    "WitnessRequest",
    "aor_commitment",
    "decode_entry_bundle",
    "encode_entry_bundle",
    "format_tile_index",
    "parse_conflict_size",
    "parse_cosignatures",
    "parse_tile_path",
    "tile_width",
    "verify_certificate_proof",
]

#: tlog-tiles: "Full tiles MUST be exactly 256 hashes wide"; a tile spans 8 tree levels.
TILE_HEIGHT = 8
TILE_WIDTH = 256
#: tlog-witness: "The client MUST NOT send more than 63 consistency proof lines."
MAX_PROOF_LINES = 63
MAX_REQUEST_SIZE = 64 * 1024
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}")


def _decimal(text: str, what: str) -> int:
    """An ASCII decimal with no leading zeroes (the rule of every C2SP size and index)."""
    if not _DECIMAL.fullmatch(text):
        raise LogFormatError(f"{what} {text[:24]!r} is not a decimal without leading zeroes")
    value = int(text)
    if value > merkle.MAX_TREE_SIZE:
        raise LogFormatError(f"{what} {value} is over 2^63 - 1")
    return value


def _hash_b64(text: str, what: str) -> bytes:
    raw = decode_base64(text, what)
    if len(raw) != merkle.HASH_SIZE:
        raise LogFormatError(f"{what} is not a 32-byte SHA-256 hash")
    return raw


# -- checkpoints (c2sp.org/tlog-checkpoint) -----------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A log's tree head: origin, tree size, RFC 6962 root hash, optional extension lines."""

    origin: str
    size: int
    root: bytes = field(repr=False)
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin:
            raise LogFormatError("a checkpoint origin is one non-empty line")
        if not 0 <= self.size <= merkle.MAX_TREE_SIZE:
            raise LogFormatError(f"tree size {self.size} is out of range")
        if len(self.root) != merkle.HASH_SIZE:
            raise LogFormatError("a checkpoint root is a 32-byte SHA-256 hash")
        for line in self.extensions:
            if not line or "\n" in line:  # "Extension lines, if any, MUST be non-empty"
                raise LogFormatError("a checkpoint extension line is one non-empty line")

    def text(self) -> bytes:
        """The note text (tlog-checkpoint §Note text), ending in a newline."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode()]
        return ("\n".join([*lines, *self.extensions]) + "\n").encode()

    @classmethod
    def parse(cls, text: bytes) -> Checkpoint:
        """Parse a note text (no signatures) into a checkpoint, strictly."""
        try:
            decoded = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise LogFormatError("a checkpoint is not UTF-8") from exc
        if not decoded.endswith("\n"):
            raise LogFormatError("a checkpoint's text ends with a newline")
        lines = decoded[:-1].split("\n")
        if len(lines) < 3:
            raise LogFormatError("a checkpoint has an origin, a size and a root hash line")
        origin, size, root, *extensions = lines
        if not origin:
            raise LogFormatError("a checkpoint's origin line is empty")
        return cls(
            origin=origin,
            size=_decimal(size, "the checkpoint's tree size"),
            root=_hash_b64(root, "the checkpoint's root hash"),
            extensions=tuple(extensions),
        )

    @classmethod
    def from_note(cls, raw: bytes) -> Checkpoint:
        """The checkpoint of a signed note (signatures are *not* checked here)."""
        return cls.parse(parse_note(raw).text)


# -- tiles (c2sp.org/tlog-tiles) ----------------------------------------------------------


def format_tile_index(n: int) -> str:
    """tlog-tiles: zero-padded 3-digit elements, all but the last prefixed ``x``."""
    if n < 0:
        raise LogFormatError("a tile index is non-negative")
    parts = [f"{n % 1000:03d}"]
    n //= 1000
    while n:
        parts.append(f"x{n % 1000:03d}")
        n //= 1000
    return "/".join(reversed(parts))


@dataclass(frozen=True, slots=True)
class TilePath:
    """A tile resource: ``level`` is None for an entry bundle; ``width`` 256 means full."""

    level: int | None
    index: int
    width: int = TILE_WIDTH

    def __post_init__(self) -> None:
        if self.level is not None and not 0 <= self.level <= 63:
            raise LogFormatError("a tile level is between 0 and 63")
        if not 1 <= self.width <= TILE_WIDTH:
            raise LogFormatError("a tile width is between 1 and 256")
        if self.index < 0:
            raise LogFormatError("a tile index is non-negative")

    def path(self) -> str:
        """The path below the log's prefix, e.g. ``tile/0/x001/234`` or ``tile/entries/5.p/3``."""
        level = "entries" if self.level is None else str(self.level)
        suffix = "" if self.width == TILE_WIDTH else f".p/{self.width}"
        return f"tile/{level}/{format_tile_index(self.index)}{suffix}"


_TILE_PATH = re.compile(
    r"tile/(?P<level>entries|0|[1-9][0-9]?)/(?P<index>(?:x[0-9]{3}/){0,6}[0-9]{3})"
    r"(?:\.p/(?P<width>[1-9][0-9]{0,2}))?"
)


def parse_tile_path(path: str) -> TilePath:
    """Parse a path below the prefix, refusing every spelling tlog-tiles does not allow."""
    match = _TILE_PATH.fullmatch(path)
    if match is None:
        raise LogFormatError(f"{path[:80]!r} is not a tlog-tiles path")
    level_text, index_text, width_text = match.group("level", "index", "width")
    width = int(width_text) if width_text else TILE_WIDTH
    if width_text and width >= TILE_WIDTH:  # partial widths are 1..255
        raise LogFormatError("a partial tile's width is between 1 and 255")
    index = int(index_text.replace("x", "").replace("/", ""))
    if index_text.startswith("x000"):
        raise LogFormatError("a tile index has no leading zero elements")
    level = None if level_text == "entries" else int(level_text)
    return TilePath(level, index, width)


def tile_width(level: int, index: int, size: int) -> int:
    """How many hashes tile ``index`` at ``level`` has in a tree of ``size`` (0: none)."""
    hashes = size >> (TILE_HEIGHT * level)  # full subtrees at tree level 8 * level
    return max(0, min(TILE_WIDTH, hashes - index * TILE_WIDTH))


class TileNodes:
    """A :class:`~sipcert.proto.merkle.NodeReader` over tiles, for a verifier that has only them.

    ``fetch(level, index, width)`` returns a tile's bytes; tiles are cached per instance. Nodes
    between tile levels are rebuilt by hashing within the tile (tlog-tiles §Merkle Tree).
    """

    def __init__(self, size: int, fetch: Callable[[int, int, int], bytes]) -> None:
        self.size = size
        self._fetch = fetch
        self._tiles: dict[tuple[int, int], bytes] = {}

    def _tile(self, level: int, index: int) -> bytes:
        key = (level, index)
        if key not in self._tiles:
            width = tile_width(level, index, self.size)
            if width == 0:
                raise LogFormatError(f"tile {level}/{index} is not in a tree of {self.size}")
            data = self._fetch(level, index, width)
            if len(data) != width * merkle.HASH_SIZE:
                raise LogFormatError(f"tile {level}/{index} is not {width} hashes long")
            self._tiles[key] = data
        return self._tiles[key]

    def node(self, level: int, index: int) -> bytes:
        tile_level, height = divmod(level, TILE_HEIGHT)
        first = index << height  # its first hash at tree level 8 * tile_level
        tile = self._tile(tile_level, first // TILE_WIDTH)
        offset = first % TILE_WIDTH
        hashes = [
            tile[i * merkle.HASH_SIZE : (i + 1) * merkle.HASH_SIZE]
            for i in range(offset, offset + (1 << height))
        ]
        if len(hashes[-1]) != merkle.HASH_SIZE:
            raise LogFormatError(f"node ({level}, {index}) is not a full subtree")
        while len(hashes) > 1:
            hashes = [
                merkle.node_hash(a, b) for a, b in zip(hashes[::2], hashes[1::2], strict=True)
            ]
        return hashes[0]


def encode_entry_bundle(entries: Sequence[bytes]) -> bytes:
    """tlog-tiles §Log entries: big-endian uint16 length-prefixed entries."""
    if not 1 <= len(entries) <= TILE_WIDTH:
        raise LogFormatError("an entry bundle holds 1 to 256 entries")
    out = bytearray()
    for entry in entries:
        if len(entry) > 0xFFFF:
            raise LogFormatError("a log entry is at most 65535 bytes")
        out += struct.pack(">H", len(entry)) + entry
    return bytes(out)


def decode_entry_bundle(data: bytes, width: int = TILE_WIDTH) -> list[bytes]:
    """Split a bundle into exactly ``width`` entries; trailing or missing bytes are an error."""
    if len(data) > TILE_WIDTH * (2 + 0xFFFF):
        raise InputTooLargeError("an entry bundle over the largest possible size")
    entries: list[bytes] = []
    at = 0
    while at < len(data):
        if at + 2 > len(data):
            raise LogFormatError("an entry bundle ends inside a length prefix")
        (length,) = struct.unpack(">H", data[at : at + 2])
        if at + 2 + length > len(data):
            raise LogFormatError("an entry bundle ends inside an entry")
        entries.append(data[at + 2 : at + 2 + length])
        at += 2 + length
        if len(entries) > width:
            raise LogFormatError(f"an entry bundle holds more than {width} entries")
    if len(entries) != width:
        raise LogFormatError(f"an entry bundle holds {len(entries)} entries, not {width}")
    return entries


# -- witnesses (c2sp.org/tlog-witness) ----------------------------------------------------


def _head_and_checkpoint(data: bytes, what: str) -> tuple[list[str], bytes]:
    """The ASCII lines before the first empty line, and the checkpoint note after it (the
    shape of tlog-witness requests and tlog-proof documents)."""
    if len(data) > MAX_REQUEST_SIZE:
        raise InputTooLargeError(f"{what} over 64 KiB")
    head, sep, checkpoint = data.partition(b"\n\n")
    if not sep:
        raise LogFormatError(f"{what} has no empty line before its checkpoint")
    try:
        return head.decode("ascii").split("\n"), checkpoint
    except UnicodeDecodeError as exc:
        raise LogFormatError(f"{what} head is not ASCII") from exc


@dataclass(frozen=True, slots=True)
class WitnessRequest:
    """An ``add-checkpoint`` body: old size, consistency proof, signed checkpoint note."""

    old_size: int
    proof: tuple[bytes, ...]
    checkpoint: bytes  # the whole signed note

    def to_bytes(self) -> bytes:
        if len(self.proof) > MAX_PROOF_LINES:
            raise LogFormatError("an add-checkpoint request carries at most 63 proof lines")
        lines = [f"old {self.old_size}\n"] + [
            base64.b64encode(h).decode() + "\n" for h in self.proof
        ]
        return "".join(lines).encode() + b"\n" + self.checkpoint

    @classmethod
    def parse(cls, body: bytes) -> WitnessRequest:
        lines, checkpoint = _head_and_checkpoint(body, "an add-checkpoint request")
        if not lines[0].startswith("old "):
            raise LogFormatError("an add-checkpoint request starts with 'old <size>'")
        old = _decimal(lines[0][4:], "the old size")
        proof = tuple(_hash_b64(line, "a consistency proof line") for line in lines[1:])
        if len(proof) > MAX_PROOF_LINES:
            raise LogFormatError("an add-checkpoint request carries at most 63 proof lines")
        if old == 0 and proof:
            raise LogFormatError("the proof MUST be empty if the old size is zero")
        Checkpoint.from_note(checkpoint)
        return cls(old, proof, checkpoint)


def parse_cosignatures(body: bytes) -> list[NoteSignature]:
    """A 200 answer to ``add-checkpoint``: one or more note signature lines."""
    if len(body) > MAX_REQUEST_SIZE:
        raise InputTooLargeError("a witness answer over 64 KiB")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LogFormatError("a witness answer is not UTF-8") from exc
    if not text.endswith("\n") or text == "\n":
        raise LogFormatError("a witness answer is signature lines, each ending in a newline")
    return [NoteSignature.parse(line) for line in text[:-1].split("\n")]


def parse_conflict_size(body: bytes) -> int:
    """A 409 answer (``text/x.tlog.size``): the size the witness last cosigned."""
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError as exc:
        raise LogFormatError("a witness 409 body is not ASCII") from exc
    if not text.endswith("\n"):
        raise LogFormatError("a witness 409 body is a size and a newline")
    return _decimal(text[:-1], "the witness's tree size")


# -- proofs (c2sp.org/tlog-proof) ---------------------------------------------------------

_PROOF_HEADER = "c2sp.org/tlog-proof@v1"


@dataclass(frozen=True, slots=True)
class InclusionProof:
    """A ``c2sp.org/tlog-proof@v1``: index, inclusion hashes, the (cosigned) checkpoint note.

    ``extra`` carries, for us, the entry bytes themselves (docs/transparency.md): the proof is
    then self-contained, and the verifier still recomputes the leaf hash from them.
    """

    index: int
    hashes: tuple[bytes, ...]
    checkpoint: bytes
    extra: bytes | None = None

    def to_bytes(self) -> bytes:
        lines = [_PROOF_HEADER]
        if self.extra is not None:
            lines.append("extra " + base64.b64encode(self.extra).decode())
        lines.append(f"index {self.index}")
        lines += [base64.b64encode(h).decode() for h in self.hashes]
        return ("\n".join(lines) + "\n\n").encode() + self.checkpoint

    @classmethod
    def parse(cls, data: bytes) -> InclusionProof:
        lines, checkpoint = _head_and_checkpoint(data, "a tlog proof")
        if lines[0] != _PROOF_HEADER:
            raise LogFormatError(f"a tlog proof starts with {_PROOF_HEADER}")
        rest = lines[1:]
        extra = None
        if rest and rest[0].startswith("extra "):
            extra = decode_base64(rest.pop(0)[6:], "the proof's extra data")
        if not rest or not rest[0].startswith("index "):
            raise LogFormatError("a tlog proof has an 'index <n>' line")
        index = _decimal(rest[0][6:], "the proof's index")
        hashes = tuple(_hash_b64(line, "an inclusion proof line") for line in rest[1:])
        if len(hashes) > merkle.MAX_PROOF_HASHES:
            raise LogFormatError("an inclusion proof longer than any tree allows")
        Checkpoint.from_note(checkpoint)
        return cls(index, hashes, checkpoint, extra)


# -- our entries (docs/transparency.md) ---------------------------------------------------

ENTRY_VERSION = 1
ENTRY_SIZE = 1 + 1 + 32 + 32 + 8
_AOR_LABEL = b"sipcert-log-aor-v1\n"


class Operation(IntEnum):
    """What an entry records."""

    ENROLL = 1
    REVOKE = 2


def aor_commitment(key: bytes, aor: str) -> bytes:
    """HMAC-SHA256 of the canonical AOR under the log's commitment key (docs/transparency.md).

    Only the Store knows ``key``: the log does not list the AORs it serves, and the Store
    reveals an AOR's commitment only with that AOR's answers.
    """
    if len(key) < 32:
        raise LogFormatError("the AOR commitment key is at least 32 bytes")
    return hmac.new(key, _AOR_LABEL + aor.encode("utf-8"), hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry: operation, AOR commitment, SHA-256 of the certificate DER, time (ms)."""

    operation: Operation
    aor_commitment: bytes = field(repr=False)
    cert_sha256: bytes = field(repr=False)
    sequenced_ms: int

    def __post_init__(self) -> None:
        if len(self.aor_commitment) != 32 or len(self.cert_sha256) != 32:
            raise LogFormatError("an entry's commitment and certificate hash are 32 bytes")
        if not 0 <= self.sequenced_ms < 2**64:
            raise LogFormatError("an entry's time is an unsigned 64-bit count of milliseconds")

    def to_bytes(self) -> bytes:
        return (
            bytes([ENTRY_VERSION, int(self.operation)])
            + self.aor_commitment
            + self.cert_sha256
            + struct.pack(">Q", self.sequenced_ms)
        )

    @classmethod
    def parse(cls, data: bytes) -> Entry:
        if len(data) != ENTRY_SIZE:
            raise LogFormatError(f"a log entry is {ENTRY_SIZE} bytes, not {len(data)}")
        if data[0] != ENTRY_VERSION:
            raise LogFormatError(f"log entry version {data[0]} is not {ENTRY_VERSION}")
        try:
            operation = Operation(data[1])
        except ValueError as exc:
            raise LogFormatError(f"log entry operation {data[1]} is unknown") from exc
        (ms,) = struct.unpack(">Q", data[66:74])
        return cls(operation, data[2:34], data[34:66], ms)


@dataclass(frozen=True, slots=True)
class VerifiedProof:
    """What :func:`verify_certificate_proof` established."""

    checkpoint: Checkpoint
    index: int
    entry: Entry
    cosigners: tuple[str, ...]


def verify_certificate_proof(
    proof: bytes,
    *,
    log_key: Verifier,
    cert_der: bytes,
    aor_commitment: bytes,
    witnesses: Sequence[Verifier] = (),
    quorum: int = 0,
) -> VerifiedProof:
    """Check one certificate's ``c2sp.org/tlog-proof@v1`` from ``/log/proof``.

    The checkpoint must be signed by the pinned ``log_key`` and cosigned by ``quorum`` of
    ``witnesses``; the entry (the proof's ``extra``) must be an enrollment of exactly this
    certificate under the AOR's commitment, and included at its index (RFC 9162 §2.1.3.2).

    Raises:
        LogFormatError: the proof does not parse.
        ProofError: any check fails.
    """
    parsed = InclusionProof.parse(proof)
    opened = open_note(parsed.checkpoint, [log_key, *witnesses])
    if log_key not in opened.verified:
        raise ProofError("the checkpoint is not signed by the log's pinned key")
    cosigners = tuple(v.name for v in opened.verified if v in witnesses)
    if len(cosigners) < quorum:
        raise ProofError(f"the checkpoint has {len(cosigners)} of the {quorum} cosignatures needed")
    checkpoint = Checkpoint.parse(opened.note.text)
    if checkpoint.origin != log_key.name:
        raise ProofError(f"the checkpoint's origin {checkpoint.origin!r} is not the log's")
    if parsed.extra is None:
        raise ProofError("the proof does not carry its entry")
    entry = Entry.parse(parsed.extra)
    if entry.operation != Operation.ENROLL:
        raise ProofError("the logged entry is not an enrollment")
    if not hmac.compare_digest(entry.aor_commitment, aor_commitment):
        raise ProofError("the logged entry is for another AOR")
    if not hmac.compare_digest(entry.cert_sha256, hashlib.sha256(cert_der).digest()):
        raise ProofError("the logged entry is for another certificate")
    merkle.verify_inclusion(
        merkle.leaf_hash(parsed.extra),
        parsed.index,
        checkpoint.size,
        parsed.hashes,
        checkpoint.root,
    )
    return VerifiedProof(checkpoint, parsed.index, entry, cosigners)
