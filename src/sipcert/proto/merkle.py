"""RFC 6962 Merkle tree hashing, and RFC 9162 §2.1.3/§2.1.4 inclusion and consistency proofs.

The transparency log (docs/transparency.md) is one append-only Merkle tree per served domain.
Everything here is a pure function over bytes: the tree's nodes come from a :class:`NodeReader`
(the database in ``storage.tlog``, a dict in tests), so the same code serves the sequencer,
the HTTP layer and the verifying client.

Node addressing: ``(level, index)`` is the Merkle Tree Hash of the *full* subtree
``D[index * 2**level : (index + 1) * 2**level]`` (level 0 holds the leaf hashes). Only full
subtrees are stored; the hash of any other range is computed from them (RFC 6962 §2.1: the
tree is left-balanced, so every range a proof needs splits into full subtrees).

Generation and verification are written separately, on purpose: the verifiers follow the
RFC 9162 §2.1.3.2 and §2.1.4.2 algorithms step by step and never call the generators, so a
bug in one is not mirrored in the other.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from typing import Protocol

from sipcert.errors import InputError, ProofError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MemoryTree",
    "NodeReader",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "new_nodes",
    "node_hash",
    "root",
    "subtree_hash",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
#: RFC 6962 §2.1: "The hash of an empty list is the hash of an empty string".
EMPTY_ROOT = hashlib.sha256(b"").digest()
#: A proof never has more hashes than the tree has levels (2**63 entries at most).
MAX_PROOF_HASHES = 63
MAX_TREE_SIZE = 2**63 - 1


def leaf_hash(entry: bytes) -> bytes:
    """RFC 6962 §2.1: ``MTH({d(0)}) = SHA-256(0x00 || d(0))``."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 §2.1: ``SHA-256(0x01 || MTH(left) || MTH(right))``."""
    return hashlib.sha256(b"\x01" + left + right).digest()


class NodeReader(Protocol):
    """Where the hashes of full subtrees come from (see the module docstring)."""

    def node(self, level: int, index: int) -> bytes:
        """The hash of full subtree ``(level, index)``; it must exist."""


def _largest_power_of_two_below(n: int) -> int:
    """RFC 6962 §2.1's ``k``: the largest power of two smaller than ``n`` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def _check_size(size: int) -> None:
    if not 0 <= size <= MAX_TREE_SIZE:
        raise InputError(f"tree size {size} is out of range")


def subtree_hash(nodes: NodeReader, start: int, end: int) -> bytes:
    """``MTH(D[start:end])`` for a range a proof can need (``start`` aligned to its split)."""
    if end <= start:
        raise InputError(f"empty range [{start}, {end})")
    size = end - start
    if size & (size - 1) == 0 and start % size == 0:
        return nodes.node(size.bit_length() - 1, start // size)
    k = _largest_power_of_two_below(size)
    return node_hash(subtree_hash(nodes, start, start + k), subtree_hash(nodes, start + k, end))


def root(nodes: NodeReader, size: int) -> bytes:
    """The RFC 6962 root of the first ``size`` leaves (``EMPTY_ROOT`` for zero)."""
    _check_size(size)
    if size == 0:
        return EMPTY_ROOT
    return subtree_hash(nodes, 0, size)


def inclusion_proof(nodes: NodeReader, index: int, size: int) -> list[bytes]:
    """RFC 9162 §2.1.3.1 ``PATH(m, D[n])``: the audit path of leaf ``index`` at ``size``."""
    _check_size(size)
    if not 0 <= index < size:
        raise InputError(f"leaf index {index} is not in a tree of size {size}")
    proof: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = _largest_power_of_two_below(end - start)
        if index < start + k:
            proof.append(subtree_hash(nodes, start + k, end))
            end = start + k
        else:
            proof.append(subtree_hash(nodes, start, start + k))
            start += k
    proof.reverse()  # PATH lists the hashes from the leaf upwards
    return proof


def consistency_proof(nodes: NodeReader, old_size: int, new_size: int) -> list[bytes]:
    """RFC 9162 §2.1.4.1 ``PROOF(m, D[n])``; empty when ``old_size`` is 0 or ``new_size``."""
    _check_size(new_size)
    if not 0 <= old_size <= new_size:
        raise InputError(f"old size {old_size} is larger than the new size {new_size}")
    if old_size in (0, new_size):
        return []
    proof: list[bytes] = []
    start, end, m, complete = 0, new_size, old_size, True
    # SUBPROOF(m, D[start:end], complete), unrolled; the hashes come out leaf-side last.
    while m != end - start:
        k = _largest_power_of_two_below(end - start)
        if m <= k:
            proof.append(subtree_hash(nodes, start + k, end))
            end = start + k
        else:
            proof.append(subtree_hash(nodes, start, start + k))
            start, m, complete = start + k, m - k, False
    if not complete:
        proof.append(subtree_hash(nodes, start, end))
    proof.reverse()
    return proof


def new_nodes(
    size: int, leaf_hashes: Sequence[bytes], nodes: NodeReader
) -> list[tuple[int, int, bytes]]:
    """The full-subtree nodes that appending ``leaf_hashes`` to a tree of ``size`` creates.

    Returns ``(level, index, hash)`` for every new node, leaves included, in creation order;
    ``nodes`` supplies the existing left siblings.
    """
    _check_size(size + len(leaf_hashes))
    made: dict[tuple[int, int], bytes] = {}
    out: list[tuple[int, int, bytes]] = []
    for offset, value in enumerate(leaf_hashes):
        level, index, current = 0, size + offset, value
        made[(0, index)] = current
        out.append((0, index, current))
        while index & 1:
            sibling = made.get((level, index - 1))
            left = sibling if sibling is not None else nodes.node(level, index - 1)
            current = node_hash(left, current)
            level, index = level + 1, index >> 1
            made[(level, index)] = current
            out.append((level, index, current))
    return out


class MemoryTree:
    """A whole tree in a dict: for tests, benchmarks and verifiers that hold every entry."""

    def __init__(self, entries: Iterable[bytes] = ()) -> None:
        self._nodes: dict[tuple[int, int], bytes] = {}
        self.size = 0
        self.append_hashes([leaf_hash(e) for e in entries])

    def node(self, level: int, index: int) -> bytes:
        try:
            return self._nodes[(level, index)]
        except KeyError:
            raise InputError(
                f"no full subtree ({level}, {index}) in a tree of {self.size}"
            ) from None

    def append_hashes(self, leaf_hashes: Sequence[bytes]) -> None:
        """Append leaves given by their RFC 6962 leaf hashes."""
        for level, index, value in new_nodes(self.size, leaf_hashes, self):
            self._nodes[(level, index)] = value
        self.size += len(leaf_hashes)

    def root(self, size: int | None = None) -> bytes:
        """The root at ``size`` (default: the whole tree)."""
        return root(self, self.size if size is None else size)


def _check_proof_shape(proof: Sequence[bytes]) -> None:
    if len(proof) > MAX_PROOF_HASHES:
        raise ProofError(f"a proof of {len(proof)} hashes is longer than any tree allows")
    for value in proof:
        if len(value) != HASH_SIZE:
            raise ProofError(f"a proof hash of {len(value)} bytes is not a SHA-256 hash")


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], expected_root: bytes
) -> None:
    """RFC 9162 §2.1.3.2: check that leaf hash ``leaf`` is at ``index`` in the tree of ``root``.

    Raises:
        ProofError: the proof is malformed or does not lead to ``expected_root``.
    """
    _check_proof_shape(proof)
    if not 0 <= index < size <= MAX_TREE_SIZE:
        raise ProofError(f"leaf index {index} is not in a tree of size {size}")
    fn, sn = index, size - 1  # steps 2 and 3
    r = leaf
    for p in proof:  # step 4
        if sn == 0:
            raise ProofError("the inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while (fn & 1) == 0 and fn != 0:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:  # step 5
        raise ProofError("the inclusion proof is shorter than the tree is deep")
    if not hmac.compare_digest(r, expected_root):
        raise ProofError("the inclusion proof does not lead to the checkpoint's root hash")


def verify_consistency(
    old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes
) -> None:
    """RFC 9162 §2.1.4.2: check that the tree of ``new_root`` extends the tree of ``old_root``.

    Size 0 is consistent with anything, with an empty proof (tlog-witness: "The proof MUST be
    empty if the old size is zero"); equal sizes need equal roots and an empty proof.

    Raises:
        ProofError: the proof is malformed or the trees are not consistent (a fork).
    """
    _check_proof_shape(proof)
    if not 0 <= old_size <= new_size <= MAX_TREE_SIZE:
        raise ProofError(f"old size {old_size} and new size {new_size} are not in order")
    if old_size == 0 or old_size == new_size:
        if proof:
            raise ProofError("a consistency proof from size 0 or to the same size must be empty")
        if old_size == new_size and not hmac.compare_digest(old_root, new_root):
            raise ProofError("two checkpoints of the same size have different root hashes")
        return
    if not proof:  # step 1
        raise ProofError("the consistency proof is empty")
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # step 2: old_size is an exact power of 2
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1  # step 3
    while fn & 1:  # step 4
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]  # step 5
    for c in path[1:]:  # step 6
        if sn == 0:
            raise ProofError("the consistency proof is longer than the trees need")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            if not fn & 1:
                while (fn & 1) == 0 and fn != 0:
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:  # step 7
        raise ProofError("the consistency proof is shorter than the trees need")
    if not hmac.compare_digest(fr, old_root):
        raise ProofError("the consistency proof does not lead to the old root hash")
    if not hmac.compare_digest(sr, new_root):
        raise ProofError("the consistency proof does not lead to the new root hash")
