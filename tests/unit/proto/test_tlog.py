"""Checkpoints, tiles, bundles, witness bodies, tlog-proofs and entries (proto.tlog)."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipcert.errors import InputTooLargeError, LogFormatError
from sipcert.proto import merkle, note, tlog

# tlog-checkpoint's example (the note text, without its signature).
EXAMPLE = b"example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"


def test_checkpoint_example_parses_and_formats() -> None:
    cp = tlog.Checkpoint.parse(EXAMPLE)
    assert (cp.origin, cp.size) == ("example.com/behind-the-sofa", 20852163)
    assert cp.text() == EXAMPLE
    with_ext = tlog.Checkpoint(cp.origin, cp.size, cp.root, ("ext one",))
    assert tlog.Checkpoint.parse(with_ext.text()) == with_ext


@pytest.mark.parametrize(
    "text",
    [
        b"origin\n01\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",  # leading zero
        b"origin\n-1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
        b"origin\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I\n",  # no padding
        b"origin\n1\nAAAA\n",  # not 32 bytes
        b"\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",  # empty origin
        b"origin\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=",  # no final newline
        b"origin\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n",  # empty extension
        b"origin\n1\n",
        b"origin\n9223372036854775808\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
        b"\xff\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
    ],
)
def test_malformed_checkpoints_are_refused(text: bytes) -> None:
    with pytest.raises(LogFormatError):
        tlog.Checkpoint.parse(text)


@pytest.mark.parametrize(
    ("n", "path"),
    [(0, "000"), (5, "005"), (1234067, "x001/x234/067"), (1000, "x001/000"), (999, "999")],
)
def test_tile_index_encoding(n: int, path: str) -> None:
    """tlog-tiles: "index 1234067 will be encoded as x001/x234/067"."""
    assert tlog.format_tile_index(n) == path
    assert tlog.parse_tile_path(f"tile/0/{path}") == tlog.TilePath(0, n)


def test_tile_paths() -> None:
    assert tlog.TilePath(1, 1234067, 17).path() == "tile/1/x001/x234/067.p/17"
    assert tlog.TilePath(None, 3).path() == "tile/entries/003"
    assert tlog.parse_tile_path("tile/entries/003.p/255") == tlog.TilePath(None, 3, 255)
    assert tlog.parse_tile_path("tile/63/000") == tlog.TilePath(63, 0)


@pytest.mark.parametrize(
    "path",
    [
        "tile/64/000",
        "tile/01/000",
        "tile/0/1",
        "tile/0/0001",
        "tile/0/001/002",
        "tile/0/x000/001",
        "tile/0/001.p/256",
        "tile/0/001.p/0",
        "tile/0/001.p/01",
        "tile/0/001.p/",
        "tile/x/001",
        "tile/0/001/",
        "../tile/0/001",
    ],
)
def test_bad_tile_paths_are_refused(path: str) -> None:
    with pytest.raises(LogFormatError):
        tlog.parse_tile_path(path)


def test_tile_widths_of_the_spec_example() -> None:
    """tlog-tiles: a tree of 70,000 has 273 full level-0 tiles, a partial one of 112, ..."""
    size = 70_000
    assert tlog.tile_width(0, 272, size) == 256
    assert tlog.tile_width(0, 273, size) == 112
    assert tlog.tile_width(0, 274, size) == 0
    assert tlog.tile_width(1, 0, size) == 256
    assert tlog.tile_width(1, 1, size) == 17
    assert tlog.tile_width(2, 0, size) == 1
    assert tlog.tile_width(1, 0, 256) == 1


def _tiles_of(tree: merkle.MemoryTree) -> dict[tuple[int, int, int], bytes]:
    out: dict[tuple[int, int, int], bytes] = {}
    for level in range(3):
        for index in range(tree.size // (256 << (8 * level)) + 1):
            width = tlog.tile_width(level, index, tree.size)
            if width:
                out[(level, index, width)] = b"".join(
                    tree.node(8 * level, index * 256 + i) for i in range(width)
                )
    return out


def test_tile_nodes_rebuild_roots_and_proofs() -> None:
    tree = merkle.MemoryTree(i.to_bytes(4, "big") for i in range(70_000 // 64))
    tiles = _tiles_of(tree)
    fetched: list[tuple[int, int, int]] = []

    def fetch(level: int, index: int, width: int) -> bytes:
        fetched.append((level, index, width))
        return tiles[(level, index, width)]

    reader = tlog.TileNodes(tree.size, fetch)
    assert merkle.root(reader, tree.size) == tree.root()
    assert merkle.inclusion_proof(reader, 700, tree.size) == merkle.inclusion_proof(
        tree, 700, tree.size
    )
    assert len(fetched) == len(set(fetched))  # cached
    with pytest.raises(LogFormatError):
        tlog.TileNodes(tree.size, lambda level, index, width: b"short").node(0, 0)


def test_entry_bundles() -> None:
    entries = [b"", b"a", b"b" * 300]
    bundle = tlog.encode_entry_bundle(entries)
    assert bundle[:2] == b"\x00\x00"
    assert tlog.decode_entry_bundle(bundle, 3) == entries
    for bad in (bundle[:-1], bundle + b"\x00", bundle + b"\x00\x01"):
        with pytest.raises(LogFormatError):
            tlog.decode_entry_bundle(bad, 3)
    with pytest.raises(LogFormatError, match="not 4"):
        tlog.decode_entry_bundle(bundle, 4)
    with pytest.raises(LogFormatError):
        tlog.encode_entry_bundle([b"x" * 65536])
    with pytest.raises(LogFormatError):
        tlog.encode_entry_bundle([])


def _signed_checkpoint(size: int = 5) -> tuple[bytes, note.Signer]:
    signer = note.Signer.generate("example.com")
    cp = tlog.Checkpoint("example.com", size, hashlib.sha256(b"r").digest())
    return note.sign_note(cp.text(), [signer]).to_bytes(), signer


def test_witness_request_round_trip_and_spec_example_shape() -> None:
    signed, _ = _signed_checkpoint()
    proof = (hashlib.sha256(b"1").digest(), hashlib.sha256(b"2").digest())
    request = tlog.WitnessRequest(3, proof, signed)
    body = request.to_bytes()
    assert body.startswith(b"old 3\n" + base64.b64encode(proof[0]) + b"\n")
    assert b"\n\nexample.com\n5\n" in body
    assert tlog.WitnessRequest.parse(body) == request


@pytest.mark.parametrize(
    "head",
    [b"old 03\n", b"old\n", b"new 3\n", b"old 0\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"],
)
def test_bad_witness_requests_are_refused(head: bytes) -> None:
    signed, _ = _signed_checkpoint()
    with pytest.raises(LogFormatError):
        tlog.WitnessRequest.parse(head + b"\n" + signed)


def test_witness_request_limits() -> None:
    signed, _ = _signed_checkpoint()
    h = base64.b64encode(b"\x00" * 32) + b"\n"
    with pytest.raises(LogFormatError, match="63"):
        tlog.WitnessRequest.parse(b"old 1\n" + h * 64 + b"\n" + signed)
    with pytest.raises(InputTooLargeError):
        tlog.WitnessRequest.parse(b"old 1\n" + b"x" * 70_000)


def test_witness_answers() -> None:
    witness = note.Signer.generate("w.example/1", note.ALG_COSIGNATURE_V1)
    line = witness.sign(b"a\n", 5).line().encode()
    assert tlog.parse_cosignatures(line + line) == [witness.sign(b"a\n", 5)] * 2
    for bad in (b"", b"\n", line[:-1], b"not a line\n"):
        with pytest.raises(LogFormatError):
            tlog.parse_cosignatures(bad)
    assert tlog.parse_conflict_size(b"20852014\n") == 20852014
    for bad in (b"12", b"012\n", b"x\n", b"\xff\n"):
        with pytest.raises(LogFormatError):
            tlog.parse_conflict_size(bad)


def test_inclusion_proof_format_round_trips() -> None:
    signed, _ = _signed_checkpoint()
    proof = tlog.InclusionProof(3, (b"\x01" * 32, b"\x02" * 32), signed, extra=b"entry")
    data = proof.to_bytes()
    assert data.startswith(b"c2sp.org/tlog-proof@v1\nextra ZW50cnk=\nindex 3\nAQEB")
    assert tlog.InclusionProof.parse(data) == proof
    bare = tlog.InclusionProof(0, (), signed)
    assert tlog.InclusionProof.parse(bare.to_bytes()) == bare
    for bad in (
        data.replace(b"@v1", b"@v2"),
        data.replace(b"index 3", b"index 03"),
        data.replace(b"index 3\n", b""),
        data.split(b"\n\n")[0],
    ):
        with pytest.raises(LogFormatError):
            tlog.InclusionProof.parse(bad)


def test_entry_format() -> None:
    key = b"k" * 32
    commitment = tlog.aor_commitment(key, "bob@example.com")
    assert commitment != tlog.aor_commitment(key, "alice@example.com")
    assert commitment != tlog.aor_commitment(b"K" * 32, "bob@example.com")
    entry = tlog.Entry(tlog.Operation.ENROLL, commitment, hashlib.sha256(b"der").digest(), 1234)
    data = entry.to_bytes()
    assert len(data) == tlog.ENTRY_SIZE == 74
    assert data[:2] == b"\x01\x01"
    assert data[-8:] == (1234).to_bytes(8, "big")
    assert tlog.Entry.parse(data) == entry
    for bad in (data[:-1], b"\x02" + data[1:], data[:1] + b"\x09" + data[2:]):
        with pytest.raises(LogFormatError):
            tlog.Entry.parse(bad)
    with pytest.raises(LogFormatError):
        tlog.aor_commitment(b"short", "bob@example.com")


@given(st.binary(max_size=200))
def test_parsers_raise_only_our_errors(raw: bytes) -> None:
    for parse in (
        tlog.Checkpoint.parse,
        tlog.WitnessRequest.parse,
        tlog.InclusionProof.parse,
        tlog.parse_cosignatures,
        tlog.parse_conflict_size,
        tlog.Entry.parse,
    ):
        try:
            parse(raw)
        except LogFormatError:
            pass
    try:
        tlog.decode_entry_bundle(raw, 1)
    except LogFormatError:
        pass


@given(
    origin=st.text(st.characters(codec="utf-8", exclude_categories=("C",)), min_size=1).filter(
        lambda s: "\n" not in s
    ),
    size=st.integers(0, 2**63 - 1),
    root=st.binary(min_size=32, max_size=32),
)
def test_checkpoints_round_trip(origin: str, size: int, root: bytes) -> None:
    cp = tlog.Checkpoint(origin, size, root)
    assert tlog.Checkpoint.parse(cp.text()) == cp


@given(n=st.integers(0, 10**18 - 1), level=st.integers(0, 63), width=st.integers(1, 256))
def test_tile_paths_round_trip(n: int, level: int, width: int) -> None:
    path = tlog.TilePath(level, n, width)
    assert tlog.parse_tile_path(path.path()) == path


@given(entries=st.lists(st.binary(max_size=40), min_size=1, max_size=20))
def test_bundles_round_trip(entries: list[bytes]) -> None:
    assert tlog.decode_entry_bundle(tlog.encode_entry_bundle(entries), len(entries)) == entries


def _proof_fixture() -> tuple[bytes, note.Signer, note.Signer, bytes, bytes]:
    log = note.Signer.generate("example.com")
    witness = note.Signer.generate("w.example/1", note.ALG_COSIGNATURE_V1)
    commitment = tlog.aor_commitment(b"k" * 32, "bob@example.com")
    cert = b"bob's certificate DER"
    entries = [
        tlog.Entry(tlog.Operation.ENROLL, commitment, hashlib.sha256(b"%d" % i).digest(), i)
        for i in range(6)
    ]
    entries[4] = tlog.Entry(tlog.Operation.ENROLL, commitment, hashlib.sha256(cert).digest(), 4)
    tree = merkle.MemoryTree(e.to_bytes() for e in entries)
    cp = tlog.Checkpoint("example.com", 6, tree.root())
    signed = note.sign_note(cp.text(), [log]).with_signatures([witness.sign(cp.text(), 99)])
    proof = tlog.InclusionProof(
        4, tuple(merkle.inclusion_proof(tree, 4, 6)), signed.to_bytes(), entries[4].to_bytes()
    )
    return proof.to_bytes(), log, witness, commitment, cert


def test_certificate_proof_verifies_and_each_binding_is_checked() -> None:
    from sipcert.errors import ProofError

    proof, log, witness, commitment, cert = _proof_fixture()
    ok = tlog.verify_certificate_proof(
        proof,
        log_key=log.verifier,
        cert_der=cert,
        aor_commitment=commitment,
        witnesses=[witness.verifier],
        quorum=1,
    )
    assert (ok.index, ok.checkpoint.size, ok.cosigners) == (4, 6, ("w.example/1",))
    kwargs = {"log_key": log.verifier, "cert_der": cert, "aor_commitment": commitment}
    cases = [
        ({**kwargs, "cert_der": b"another"}, "another certificate"),
        ({**kwargs, "aor_commitment": b"x" * 32}, "another AOR"),
        ({**kwargs, "witnesses": [witness.verifier], "quorum": 2}, "cosignatures"),
        ({**kwargs, "quorum": 1}, "cosignatures"),
        ({**kwargs, "log_key": note.Signer.generate("example.com").verifier}, "trusted key"),
    ]
    for args, message in cases:
        with pytest.raises(ProofError, match=message):
            tlog.verify_certificate_proof(proof, **args)  # type: ignore[arg-type]
    parsed = tlog.InclusionProof.parse(proof)
    moved = tlog.InclusionProof(5, parsed.hashes, parsed.checkpoint, parsed.extra)
    with pytest.raises(ProofError, match="inclusion proof"):
        tlog.verify_certificate_proof(moved.to_bytes(), **kwargs)  # type: ignore[arg-type]
    bare = tlog.InclusionProof(4, parsed.hashes, parsed.checkpoint)
    with pytest.raises(ProofError, match="entry"):
        tlog.verify_certificate_proof(bare.to_bytes(), **kwargs)  # type: ignore[arg-type]
