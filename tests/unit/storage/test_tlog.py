"""The log's SQLite storage: batches, the sequencer lease, tiles and proofs from stored nodes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sipcert.errors import StorageError
from sipcert.proto import merkle
from sipcert.proto.note import Signer, open_note, sign_note
from sipcert.proto.tlog import Checkpoint, Entry, Operation
from sipcert.storage.tlog import NodeDict, NodeRecorder, SqliteLog, edge_nodes, open_log
from tests.unit.storage.test_storage import mysql_database, postgres_schema, postgres_url

Factory = Callable[[], Any]


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def new_log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    """Opens logs on one database (several calls: several frontends sharing it)."""
    if request.param == "sqlite":
        yield lambda: SqliteLog(tmp_path / "db")
        return
    if request.param == "mysql":
        with mysql_database() as url:
            yield lambda: open_log(url, tmp_path)
        return
    with contextlib.ExitStack() as stack:
        schema = stack.enter_context(postgres_schema())
        yield lambda: open_log(postgres_url(schema), tmp_path)


SIGNER = Signer.generate("example.com")


def sign(domain: str, checkpoint: Checkpoint) -> bytes:
    return sign_note(checkpoint.text(), [SIGNER]).to_bytes()


def test_edge_nodes() -> None:
    assert edge_nodes(0) == []
    assert edge_nodes(1) == [(0, 0)]
    assert edge_nodes(6) == [(2, 0), (1, 2)]
    assert edge_nodes(7) == [(2, 0), (1, 2), (0, 6)]


async def _fill(log: Any, domain: str, count: int, now_ms: int) -> None:
    commitment = hashlib.sha256(b"aor").digest()
    items = [
        (Operation.ENROLL, commitment, hashlib.sha256(b"%d" % i).digest()) for i in range(count)
    ]
    pending = await log.submit_many(domain, items)
    assert await log.integrate("me", now_ms, 10_000, sign, 10_000) is not None
    assert [await log.sequenced(p) for p in pending[-1:]] != [None]


def test_batches_build_the_same_tree_as_memory(new_log: Factory) -> None:
    async def main() -> None:
        log = new_log()
        await log.ensure_checkpoint("example.com", sign)
        empty = Checkpoint.from_note(await log.checkpoint("example.com") or b"")
        assert (empty.size, empty.root) == (0, merkle.EMPTY_ROOT)
        expected = merkle.MemoryTree()
        for batch, count in enumerate((1, 5, 250, 300)):
            await _fill(log, "example.com", count, 1000 + batch)
            start = expected.size
            entries = await log.entries("example.com", start, count)
            assert len(entries) == count
            assert all(Entry.parse(e).sequenced_ms == 1000 + batch for e in entries)
            expected.append_hashes([merkle.leaf_hash(e) for e in entries])
        note = await log.checkpoint("example.com")
        assert note is not None
        open_note(note, [SIGNER.verifier])
        cp = Checkpoint.from_note(note)
        assert (cp.size, cp.root) == (556, expected.root())
        assert await log.hashes("example.com", 8, 0, 5) == [
            expected.node(8, 0),
            expected.node(8, 1),
        ]
        recorder = NodeRecorder()
        merkle.consistency_proof(recorder, 6, 556)
        reader = NodeDict(await log.nodes("example.com", recorder.keys))
        assert merkle.consistency_proof(reader, 6, 556) == merkle.consistency_proof(
            expected, 6, 556
        )
        assert merkle.inclusion_proof(recorder, 5, 556) is not None
        with pytest.raises(StorageError, match="missing"):
            merkle.inclusion_proof(reader, 5, 556)
        # Another domain's log is its own tree.
        await _fill(log, "other.example", 2, 5)
        other = Checkpoint.from_note(await log.checkpoint("other.example") or b"")
        assert other.size == 2
        await log.close()

    asyncio.run(main())


def test_lease_keeps_a_second_sequencer_out_until_it_expires(new_log: Factory) -> None:
    async def main() -> None:
        first, second = new_log(), new_log()
        pending = await first.submit("example.com", Operation.REVOKE, b"a" * 32, b"b" * 32)
        assert await second.integrate("B", 1000, 5000, sign, 10) is not None
        assert await first.sequenced(pending) == 0
        assert await first.integrate("A", 2000, 5000, sign, 10) is None  # B holds it to 6000
        assert await first.integrate("A", 6001, 5000, sign, 10) == []  # expired: A takes over
        assert await second.integrate("B", 7000, 5000, sign, 10) is None
        await first.close()
        await second.close()
        with pytest.raises(StorageError, match="closed"):
            await first.checkpoint("example.com")

    asyncio.run(main())


def test_racing_sequencers_commit_one_batch_each_round(new_log: Factory) -> None:
    """Two frontends whose lease view says "free" race for the same batch: exactly one
    commits it, the other answers None, and the tree is one tree (no index twice)."""

    async def main() -> None:
        first, second = new_log(), new_log()
        expected = merkle.MemoryTree()
        for round_ in range(1, 7):
            now = round_ * 10_000  # every round starts after the last lease ran out
            await (first, second)[round_ % 2].submit_many(
                "example.com",
                [
                    (Operation.ENROLL, b"c" * 32, hashlib.sha256(b"%d/%d" % (round_, i)).digest())
                    for i in range(round_)
                ],
            )
            results = await asyncio.gather(
                first.integrate("A", now, 5000, sign, 100),
                second.integrate("B", now, 5000, sign, 100),
            )
            winners = [r for r in results if r is not None]
            assert len(winners) == 1, results
            assert [b.new_size - b.old_size for b in winners[0]] == [round_]
            start = expected.size
            entries = await first.entries("example.com", start, round_)
            expected.append_hashes([merkle.leaf_hash(e) for e in entries])
        cp = Checkpoint.from_note(await second.checkpoint("example.com") or b"")
        assert (cp.size, cp.root) == (21, expected.root())
        await first.close()
        await second.close()

    asyncio.run(main())


def test_add_cosignatures_only_to_the_same_size(new_log: Factory) -> None:
    async def main() -> None:
        log = new_log()
        await _fill(log, "example.com", 3, 1)
        assert await log.add_cosignatures("example.com", 3, b"new note")
        assert await log.checkpoint("example.com") == b"new note"
        assert not await log.add_cosignatures("example.com", 2, b"old note")
        await log.close()

    asyncio.run(main())


def test_a_new_log_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "new" / "tlog.db"
    log = SqliteLog(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    asyncio.run(log.close())
