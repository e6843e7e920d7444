"""The change feed (issue 13) on every backend that has one: SQLite, PostgreSQL, memory.

Each add or removal appends a row naming the AOR in the same transaction; a write that
fails appends nothing; the feed keeps its order across reopening.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from sipcert.errors import ForbiddenError
from sipcert.storage import MemoryStore, open_store
from sipcert.storage.base import CertificateStore
from sipcert.storage.feed import Change, ChangeFeed
from tests.unit.storage.test_storage import (
    ALICE,
    BOB,
    NOW,
    make_cert,
    mysql_database,
    postgres_schema,
    postgres_url,
    run,
)


@contextlib.contextmanager
def _sqlite(tmp: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp / 'feed.db'}"


@contextlib.contextmanager
def _postgres(_tmp: Path) -> Iterator[str]:
    with postgres_schema() as schema:
        yield postgres_url(schema)


@contextlib.contextmanager
def _memory(_tmp: Path) -> Iterator[str]:
    yield "memory://"


@contextlib.contextmanager
def _mysql(_tmp: Path) -> Iterator[str]:
    with mysql_database() as url:
        yield url


BACKENDS: dict[str, Callable[[Path], contextlib.AbstractContextManager[str]]] = {
    "sqlite": _sqlite,
    "postgres": _postgres,
    "memory": _memory,
    "mysql": _mysql,
}


@pytest.fixture(params=list(BACKENDS))
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with BACKENDS[request.param](tmp_path) as value:
        yield value


def _feed(store: CertificateStore) -> ChangeFeed:
    assert isinstance(store, ChangeFeed)
    return store


def test_writes_append_to_the_feed_in_order(url: str) -> None:
    async def scenario() -> None:
        store = open_store(url)
        feed = _feed(store)
        try:
            assert await feed.feed_bounds() == (0, 0)
            assert await store.add(make_cert(ALICE, 0), max_per_aor=2, now=NOW)
            assert await store.add(make_cert(BOB, 0), max_per_aor=2, now=NOW)
            assert not await store.add(make_cert(ALICE, 0), max_per_aor=2, now=NOW)  # no change
            assert await store.add(make_cert(ALICE, 1), max_per_aor=2, now=NOW)
            with pytest.raises(ForbiddenError):  # a refused write records nothing
                await store.add(make_cert(ALICE, 2), max_per_aor=2, now=NOW)
            assert await store.delete(BOB, None) == 1
            assert await store.delete(BOB, None) == 0  # nothing removed, nothing recorded
            changes = await feed.changes_since(0)
            assert [c.aor for c in changes] == [ALICE, BOB, ALICE, BOB]
            seqs = [c.seq for c in changes]
            assert seqs == sorted(seqs) and len(set(seqs)) == 4
            assert await feed.changes_since(seqs[1]) == changes[2:]
            assert await feed.changes_since(0, limit=1) == changes[:1]
            assert await feed.feed_bounds() == (seqs[0], seqs[-1])
            assert await feed.aors(NOW) == [ALICE]
            later = NOW + timedelta(days=31)  # both of alice's expired by then
            assert await feed.aors(later) == []
        finally:
            await store.close()

    run(scenario())


def test_memory_feed_wakes_followers() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        wake_ups = store.wake_ups()
        assert wake_ups is not None
        await anext(wake_ups)  # listening
        import asyncio

        task = asyncio.ensure_future(anext(wake_ups))
        await asyncio.sleep(0)
        assert not task.done()
        await store.add(make_cert(ALICE, 0), max_per_aor=2, now=NOW)
        await asyncio.wait_for(task, 5)
        assert await store.changes_since(0) == [Change(1, ALICE)]
        await wake_ups.aclose()

    run(scenario())


def test_postgres_notifies_listeners_at_commit() -> None:
    import asyncio

    with postgres_schema() as schema:

        async def scenario() -> None:
            writer = open_store(postgres_url(schema))
            follower = open_store(postgres_url(schema))
            wake_ups = _feed(follower).wake_ups()
            assert wake_ups is not None
            try:
                await anext(wake_ups)  # listening
                await writer.add(make_cert(ALICE, 0), max_per_aor=2, now=NOW)
                await asyncio.wait_for(anext(wake_ups), 5)
                assert [c.aor for c in await _feed(follower).changes_since(0)] == [ALICE]
            finally:
                await wake_ups.aclose()
                await writer.close()
                await follower.close()

        run(scenario())


def test_sqlite_version_2_gains_the_feed_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"

    async def make() -> None:
        store = open_store(f"sqlite:///{path}")
        await store.add(make_cert(ALICE, 0), max_per_aor=2, now=NOW)
        await store.close()

    run(make())
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:  # back to version 2
        conn.execute("DROP TABLE changes")
        conn.execute("PRAGMA user_version = 2")

    async def reopen() -> None:
        store = open_store(f"sqlite:///{path}")
        try:
            assert (await store.schema_status()).current == 3
            assert len(await store.get_by_aor(ALICE, NOW)) == 1
            await store.add(make_cert(BOB, 0), max_per_aor=2, now=NOW)
            assert [c.aor for c in await _feed(store).changes_since(0)] == [BOB]
        finally:
            await store.close()

    run(reopen())


def test_sqlite_prunes_old_changes_but_keeps_the_position(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'prune.db'}"

    async def scenario() -> None:
        store = open_store(url)
        feed = _feed(store)
        try:
            await store.add(make_cert(ALICE, 0), max_per_aor=2, now=NOW)
            await store.add(make_cert(BOB, 0), max_per_aor=2, now=NOW)
            await store.purge_expired(NOW + timedelta(days=400))
            _low, high = await feed.feed_bounds()
            assert high == 2  # numbers are never reused
            assert await feed.changes_since(0) in ([], [Change(2, BOB)])
        finally:
            await store.close()

    run(scenario())


def test_a_backend_without_a_feed_is_refused_by_the_publisher() -> None:
    from sipcert.errors import ConfigError
    from sipcert.server.publish import feed_of

    class NoFeed(MemoryStore):
        aors = None  # type: ignore[assignment]

    with pytest.raises(ConfigError, match="NoFeed storage does not have"):
        feed_of(NoFeed())


def test_mysql_version_2_gains_the_feed() -> None:
    from tests.unit.storage.test_storage import mysql_admin

    with mysql_database() as url:

        async def make() -> None:
            store = open_store(url)
            await store.add(make_cert(ALICE, 0), max_per_aor=2, now=NOW)
            await store.close()

        run(make())
        database = url.rsplit("/", 1)[1]
        mysql_admin(
            f"DROP TABLE `{database}`.sipcert_changes",
            f"UPDATE `{database}`.sipcert_schema_version SET version = 2",  # noqa: S608
        )

        async def reopen() -> None:
            store = open_store(url)
            try:
                assert len(await store.get_by_aor(ALICE, NOW)) == 1  # migrates on first use
                assert (await store.schema_status()).current == 3
                await store.delete(ALICE, None)
                assert [c.aor for c in await _feed(store).changes_since(0)] == [ALICE]
            finally:
                await store.close()

        run(reopen())
