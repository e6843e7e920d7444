"""RFC 6962 hashing and RFC 9162 §2.1.3/§2.1.4 proofs against the CT vectors and a naive model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipcert.errors import InputError, ProofError
from sipcert.proto import merkle

VECTORS = json.loads((Path(__file__).parent / "vectors/tlog/rfc6962.json").read_text())
LEAVES = [bytes.fromhex(x) for x in VECTORS["leaves_hex"]]
ROOTS = [bytes.fromhex(x) for x in VECTORS["roots_hex"]]


def naive_mth(entries: list[bytes]) -> bytes:
    """RFC 6962 §2.1 MTH written as the RFC writes it, recursively: the model to compare with."""
    if not entries:
        return hashlib.sha256(b"").digest()
    if len(entries) == 1:
        return hashlib.sha256(b"\x00" + entries[0]).digest()
    k = 1
    while k * 2 < len(entries):
        k *= 2
    return hashlib.sha256(b"\x01" + naive_mth(entries[:k]) + naive_mth(entries[k:])).digest()


def test_empty_root_is_hash_of_empty_string() -> None:
    assert merkle.EMPTY_ROOT.hex() == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert merkle.MemoryTree().root() == merkle.EMPTY_ROOT


@pytest.mark.parametrize("size", range(1, 9))
def test_rfc6962_roots(size: int) -> None:
    tree = merkle.MemoryTree(LEAVES)
    assert tree.root(size) == ROOTS[size - 1]
    assert merkle.MemoryTree(LEAVES[:size]).root() == ROOTS[size - 1]


@pytest.mark.parametrize("case", VECTORS["inclusion"], ids=lambda c: f"{c['index']}-{c['size']}")
def test_rfc6962_inclusion_vectors(case: dict[str, object]) -> None:
    index, size = int(case["index"]), int(case["size"])  # type: ignore[call-overload]
    proof = [bytes.fromhex(x) for x in case["proof_hex"]]  # type: ignore[attr-defined]
    tree = merkle.MemoryTree(LEAVES)
    assert merkle.inclusion_proof(tree, index, size) == proof
    leaf = merkle.leaf_hash(LEAVES[index])
    merkle.verify_inclusion(leaf, index, size, proof, ROOTS[size - 1])
    with pytest.raises(ProofError):
        merkle.verify_inclusion(leaf, index - 1, size, proof, ROOTS[size - 1])
    with pytest.raises(ProofError):
        merkle.verify_inclusion(leaf, index, size, proof[:-1], ROOTS[size - 1])
    with pytest.raises(ProofError):
        merkle.verify_inclusion(leaf, index, size, [*proof, proof[0]], ROOTS[size - 1])


@pytest.mark.parametrize("case", VECTORS["consistency"], ids=lambda c: f"{c['old']}-{c['new']}")
def test_rfc6962_consistency_vectors(case: dict[str, object]) -> None:
    old, new = int(case["old"]), int(case["new"])  # type: ignore[call-overload]
    proof = [bytes.fromhex(x) for x in case["proof_hex"]]  # type: ignore[attr-defined]
    tree = merkle.MemoryTree(LEAVES)
    assert merkle.consistency_proof(tree, old, new) == proof
    merkle.verify_consistency(old, new, proof, ROOTS[old - 1], ROOTS[new - 1])
    with pytest.raises(ProofError, match="root hash"):
        merkle.verify_consistency(old, new, proof, ROOTS[old - 2], ROOTS[new - 1])
    with pytest.raises(ProofError, match="new root"):
        merkle.verify_consistency(old, new, proof, ROOTS[old - 1], ROOTS[new - 2])


def test_consistency_edge_cases() -> None:
    tree = merkle.MemoryTree(LEAVES)
    assert merkle.consistency_proof(tree, 0, 8) == []
    assert merkle.consistency_proof(tree, 8, 8) == []
    merkle.verify_consistency(0, 8, [], merkle.EMPTY_ROOT, ROOTS[7])
    merkle.verify_consistency(8, 8, [], ROOTS[7], ROOTS[7])
    with pytest.raises(ProofError, match="same size"):
        merkle.verify_consistency(8, 8, [], ROOTS[6], ROOTS[7])
    with pytest.raises(ProofError, match="must be empty"):
        merkle.verify_consistency(0, 8, [ROOTS[0]], merkle.EMPTY_ROOT, ROOTS[7])
    with pytest.raises(ProofError, match="empty"):
        merkle.verify_consistency(3, 8, [], ROOTS[2], ROOTS[7])
    with pytest.raises(ProofError, match="not in order"):
        merkle.verify_consistency(8, 3, [], ROOTS[7], ROOTS[2])
    with pytest.raises(InputError):
        merkle.consistency_proof(tree, 9, 8)
    with pytest.raises(InputError):
        merkle.inclusion_proof(tree, 8, 8)


def test_malformed_proof_hashes_are_refused() -> None:
    with pytest.raises(ProofError, match="not a SHA-256"):
        merkle.verify_inclusion(ROOTS[0], 0, 2, [b"short"], ROOTS[1])
    with pytest.raises(ProofError, match="longer than any tree"):
        merkle.verify_inclusion(ROOTS[0], 0, 2, [ROOTS[0]] * 64, ROOTS[1])


def test_missing_node_is_an_input_error() -> None:
    with pytest.raises(InputError, match="no full subtree"):
        merkle.MemoryTree(LEAVES[:3]).node(1, 1)


entries_st = st.lists(st.binary(max_size=8), min_size=1, max_size=70)


@given(entries=entries_st, data=st.data())
def test_roots_and_proofs_match_the_naive_model(entries: list[bytes], data: st.DataObject) -> None:
    """Every generated proof verifies, and the roots equal the recursive RFC 6962 definition."""
    tree = merkle.MemoryTree()
    for chunk_start in range(0, len(entries), 7):  # appends in batches, like the sequencer
        tree.append_hashes([merkle.leaf_hash(e) for e in entries[chunk_start : chunk_start + 7]])
    size = len(entries)
    new = data.draw(st.integers(1, size), label="new")
    old = data.draw(st.integers(0, new), label="old")
    index = data.draw(st.integers(0, new - 1), label="index")
    assert tree.root(new) == naive_mth(entries[:new])
    proof = merkle.inclusion_proof(tree, index, new)
    merkle.verify_inclusion(merkle.leaf_hash(entries[index]), index, new, proof, tree.root(new))
    cproof = merkle.consistency_proof(tree, old, new)
    merkle.verify_consistency(old, new, cproof, tree.root(old), tree.root(new))


@given(entries=entries_st, data=st.data())
def test_tampered_proofs_are_refused(entries: list[bytes], data: st.DataObject) -> None:
    tree = merkle.MemoryTree(entries)
    size = len(entries)
    index = data.draw(st.integers(0, size - 1))
    proof = merkle.inclusion_proof(tree, index, size)
    if proof:
        at = data.draw(st.integers(0, len(proof) - 1))
        bad = [*proof]
        bad[at] = bytes(b ^ 1 for b in bad[at])
        with pytest.raises(ProofError):
            merkle.verify_inclusion(merkle.leaf_hash(entries[index]), index, size, bad, tree.root())
    with pytest.raises(ProofError):
        merkle.verify_inclusion(merkle.leaf_hash(b"other" * 3), index, size, proof, tree.root())
    if size >= 3:
        old = data.draw(st.integers(1, size - 1))
        cproof = merkle.consistency_proof(tree, old, size)
        forked = merkle.MemoryTree([*entries[: old - 1], b"forked-entry", *entries[old:]])
        with pytest.raises(ProofError):
            merkle.verify_consistency(old, size, cproof, forked.root(old), tree.root())
