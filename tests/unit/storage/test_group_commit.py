"""SQLite group commit (issue 13): several waiting ``add`` calls share one transaction.

Each call must get its own answer only after the commit, and one that fails — the draft §5.1
per-AOR limit, a constraint SQLite raises — must leave the store as it was for itself without
failing the others of its batch. To make a batch deterministic, a test holds the store's
writer lock while the calls queue up (a real commit would hold it the same way).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sipcert.errors import ForbiddenError, StorageError
from sipcert.storage import SqliteStore, StoredCertificate
from sipcert.storage import sqlite as sqlite_backend
from sipcert.storage.sqlite import GroupCommit

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


def cert(aor: str, n: int) -> StoredCertificate:
    return StoredCertificate.from_der(
        aor,
        f"DER of {aor} #{n}".encode(),
        not_before=NOW - timedelta(days=1),
        not_after=NOW + timedelta(days=30),
        created=NOW,
    )


@contextmanager
def held(store: SqliteStore) -> Iterator[None]:
    """Hold the writer lock, as a commit under way does, so that calls queue behind it."""
    lock = store._writer_lock
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


async def in_one_batch(
    store: SqliteStore, calls: list[Awaitable[bool]]
) -> list[bool | BaseException]:
    """Start every call while the writer is busy, then let them commit; outcomes in order."""
    with held(store):
        tasks = [asyncio.ensure_future(call) for call in calls]
        await asyncio.sleep(0)  # each task runs up to its wait: every call is queued
        assert store.adds.draining
    return list(await asyncio.gather(*tasks, return_exceptions=True))


def stored(path: Path) -> set[tuple[str, bytes]]:
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        return {(aor, bytes(der)) for aor, der in conn.execute("SELECT aor, der FROM certificates")}


def test_concurrent_adds_share_few_commits(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = SqliteStore(tmp_path / "c.db")
        try:
            calls = [
                store.add(cert(f"u{i}@example.com", 0), max_per_aor=5, now=NOW) for i in range(50)
            ]
            outcomes = await in_one_batch(store, calls)
            assert outcomes == [True] * 50
            # The drainer may have taken the first call before the rest queued: two at most.
            assert store.adds.batched == 50
            assert store.adds.commits <= 2
            for i in range(50):
                assert len(await store.get_by_aor(f"u{i}@example.com", NOW)) == 1
        finally:
            await store.close()

    asyncio.run(scenario())
    assert len(stored(tmp_path / "c.db")) == 50


def test_limit_violation_fails_alone_and_sees_earlier_items_of_its_batch(tmp_path: Path) -> None:
    """§5.1 limit: with max 2, the third new certificate of one AOR in one batch is refused."""

    async def scenario() -> list[bool | BaseException]:
        store = SqliteStore(tmp_path / "c.db")
        try:
            assert await store.add(cert("full@example.com", 0), max_per_aor=2, now=NOW)
            assert await store.add(cert("full@example.com", 1), max_per_aor=2, now=NOW)
            calls = [
                store.add(cert("a@example.com", 0), max_per_aor=2, now=NOW),
                store.add(cert("full@example.com", 2), max_per_aor=2, now=NOW),  # over
                store.add(cert("b@example.com", 0), max_per_aor=2, now=NOW),
                store.add(cert("b@example.com", 1), max_per_aor=2, now=NOW),
                store.add(cert("b@example.com", 2), max_per_aor=2, now=NOW),  # over, in-batch
                store.add(cert("a@example.com", 0), max_per_aor=2, now=NOW),  # duplicate
                store.add(cert("c@example.com", 0), max_per_aor=2, now=NOW),
            ]
            return await in_one_batch(store, calls)
        finally:
            await store.close()

    outcomes = asyncio.run(scenario())
    assert outcomes[0] is True
    assert isinstance(outcomes[1], ForbiddenError)
    assert outcomes[2] is True and outcomes[3] is True
    assert isinstance(outcomes[4], ForbiddenError)
    assert outcomes[5] is False
    assert outcomes[6] is True
    assert stored(tmp_path / "c.db") == {
        (c.aor, c.der)
        for c in (
            cert("full@example.com", 0),
            cert("full@example.com", 1),
            cert("a@example.com", 0),
            cert("b@example.com", 0),
            cert("b@example.com", 1),
            cert("c@example.com", 0),
        )
    }


def test_constraint_error_of_one_item_leaves_the_others_stored(tmp_path: Path) -> None:
    """An error SQLite raises for one insert (a trigger's ABORT) rolls back that item only."""
    path = tmp_path / "c.db"

    async def scenario() -> list[bool | BaseException]:
        store = SqliteStore(path)
        try:
            with contextlib.closing(sqlite3.connect(path)) as conn, conn:
                conn.execute(
                    "CREATE TRIGGER refuse BEFORE INSERT ON certificates "
                    "WHEN NEW.aor = 'bad@example.com' BEGIN SELECT RAISE(ABORT, 'refused'); END"
                )
            calls = [
                store.add(cert("x@example.com", 0), max_per_aor=5, now=NOW),
                store.add(cert("bad@example.com", 0), max_per_aor=5, now=NOW),
                store.add(cert("y@example.com", 0), max_per_aor=5, now=NOW),
            ]
            outcomes = await in_one_batch(store, calls)
            # The store is usable afterwards, for good and bad items alike.
            assert await store.add(cert("z@example.com", 0), max_per_aor=5, now=NOW)
            assert await store.get_by_aor("bad@example.com", NOW) == []
            return outcomes
        finally:
            await store.close()

    outcomes = asyncio.run(scenario())
    assert outcomes[0] is True and outcomes[2] is True
    assert isinstance(outcomes[1], StorageError)
    assert "refused" in str(outcomes[1])
    assert stored(path) == {
        (c.aor, c.der)
        for c in (cert("x@example.com", 0), cert("y@example.com", 0), cert("z@example.com", 0))
    }


def test_failure_of_the_whole_transaction_fails_every_item_and_stores_none(
    tmp_path: Path,
) -> None:
    """RAISE(ROLLBACK) ends the batch's transaction: no item of that batch may claim to be
    stored. Which calls share the doomed call's batch depends on when the commit thread
    took its first one (it may take the first call alone, or the first two, before the
    rest are queued), so the test reads the batches the commit was given."""
    path = tmp_path / "c.db"
    batches: list[list[str]] = []

    async def scenario() -> list[bool | BaseException]:
        store = SqliteStore(path)
        commit = store.adds._commit

        def recorded(items: list[Any]) -> list[Any]:
            batches.append([item.cert.aor for item in items])
            return commit(items)

        store.adds._commit = recorded
        try:
            with contextlib.closing(sqlite3.connect(path)) as conn, conn:
                conn.execute(
                    "CREATE TRIGGER doom BEFORE INSERT ON certificates "
                    "WHEN NEW.aor = 'doom@example.com' BEGIN SELECT RAISE(ROLLBACK, 'doom'); END"
                )
            calls = [
                store.add(cert(f"{user}@example.com", 0), max_per_aor=5, now=NOW)
                for user in ("x", "doom", "y")
            ]
            outcomes = await in_one_batch(store, calls)
            after = await store.add(cert("w@example.com", 0), max_per_aor=5, now=NOW)
            assert after is True
            return outcomes
        finally:
            await store.close()

    outcomes = dict(zip(("x", "doom", "y"), asyncio.run(scenario()), strict=True))
    doomed = next(batch for batch in batches if "doom@example.com" in batch)
    assert len(doomed) >= 2  # never alone: x or y (or both) share its transaction
    kept = [cert("w@example.com", 0)]
    for user, outcome in outcomes.items():
        if f"{user}@example.com" in doomed:
            assert isinstance(outcome, StorageError), user
        else:
            assert outcome is True, user
            kept.append(cert(f"{user}@example.com", 0))
    assert stored(path) == {(c.aor, c.der) for c in kept}


def test_batches_are_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_backend, "MAX_BATCH", 4)

    async def scenario() -> None:
        store = SqliteStore(tmp_path / "c.db")
        try:
            calls = [
                store.add(cert(f"u{i}@example.com", 0), max_per_aor=5, now=NOW) for i in range(10)
            ]
            assert await in_one_batch(store, calls) == [True] * 10
            assert store.adds.commits >= 3  # 10 calls, at most 4 a transaction
        finally:
            await store.close()

    asyncio.run(scenario())


def test_adds_from_several_threads_each_get_their_own_answer(tmp_path: Path) -> None:
    """One store shared by threads with their own event loops (the class allows it)."""
    store = SqliteStore(tmp_path / "c.db")
    results: dict[int, list[bool]] = {}

    def worker(k: int) -> None:
        async def go() -> list[bool]:
            return list(
                await asyncio.gather(
                    *(
                        store.add(cert(f"t{k}-{i}@example.com", 0), max_per_aor=1, now=NOW)
                        for i in range(20)
                    )
                )
            )

        results[k] = asyncio.run(go())

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    asyncio.run(store.close())
    assert results == {k: [True] * 20 for k in range(4)}
    assert len(stored(tmp_path / "c.db")) == 80


def test_add_after_close_fails_cleanly(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = SqliteStore(tmp_path / "c.db")
        await store.close()
        with pytest.raises(StorageError, match="closed"):
            await store.add(cert("a@example.com", 0), max_per_aor=5, now=NOW)

    asyncio.run(scenario())


def test_the_thread_ends_when_idle_and_the_next_call_starts_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each commit names the thread it ran on: with no idle wait the first thread ends
    before the second call, which a new thread takes (read inside the commit, so it does
    not matter how soon either thread is gone afterwards)."""
    monkeypatch.setattr(sqlite_backend, "IDLE_EXIT", 0.0)
    seen: list[list[int]] = []
    threads: list[threading.Thread] = []

    def commit(items: list[int]) -> list[int | BaseException]:
        seen.append(items)
        threads.append(threading.current_thread())
        return [i * 2 for i in items]

    group: GroupCommit[int, int] = GroupCommit(commit)

    async def one(item: int) -> int:
        return await group.submit(item)

    assert asyncio.run(one(1)) == 2
    threads[0].join(timeout=30)
    assert not threads[0].is_alive()
    assert asyncio.run(one(2)) == 4  # a new thread takes it
    threads[1].join(timeout=30)
    assert not threads[1].is_alive()
    assert threads[0] is not threads[1]
    assert threading.current_thread() not in threads
    assert seen == [[1], [2]] and group.commits == 2 and not group.draining


def test_callers_on_several_event_loops_get_their_own_outcomes() -> None:
    group: GroupCommit[int, int] = GroupCommit(lambda items: [i + 100 for i in items])
    results: dict[int, list[int]] = {}

    def run(base: int) -> None:
        async def calls() -> list[int]:
            return list(await asyncio.gather(*(group.submit(base + i) for i in range(20))))

        results[base] = asyncio.run(calls())

    threads = [threading.Thread(target=run, args=(base,)) for base in (0, 1000)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == {base: [base + i + 100 for i in range(20)] for base in (0, 1000)}
    assert group.batched == 40
