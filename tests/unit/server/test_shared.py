"""The shared state is chosen with the storage backend (issue 10)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sipcert.proto.digest import MemoryNonceCounter
from sipcert.proto.ratelimit import LoginLimits, MemoryLoginLimiter
from sipcert.server.shared import (
    LIMITS_DB,
    NONCE_DB,
    as_async_counter,
    as_async_limiter,
    open_shared_state,
)
from sipcert.storage import PostgresStore, SqliteStore
from sipcert.storage.postgres_state import PostgresLoginLimiter, PostgresNonceCounter


def test_postgres_storage_keeps_the_state_in_its_database(tmp_path: Path) -> None:
    store = PostgresStore("postgresql://nobody@127.0.0.1:1/none")  # never connected
    shared = open_shared_state(store, tmp_path, retention=360.0, limits=LoginLimits())
    assert isinstance(shared.nonces, PostgresNonceCounter)
    assert isinstance(shared.limiter, PostgresLoginLimiter)
    assert "127.0.0.1:1/none" in shared.where
    shared.close()
    assert list(tmp_path.iterdir()) == []  # no local file at all


def test_sqlite_storage_keeps_local_files_for_the_workers(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "certs.db")
    shared = open_shared_state(store, tmp_path, retention=360.0, limits=LoginLimits())
    try:
        assert (tmp_path / NONCE_DB).exists() and (tmp_path / LIMITS_DB).exists()
        nonces = shared.nonces

        async def use() -> tuple[bool, bool, bool]:
            admitted = (await shared.limiter.admit("10.0.0.1", "alice", 0.0)).admitted
            return await nonces.advance("n", 1, 0.0), await nonces.advance("n", 1, 0.0), admitted

        assert asyncio.run(use()) == (True, False, True)
    finally:
        shared.close()
        asyncio.run(store.close())


def test_async_ones_pass_through_and_sync_ones_are_wrapped() -> None:
    store = PostgresStore("postgresql://nobody@127.0.0.1:1/none")
    counter, limiter = PostgresNonceCounter(store), PostgresLoginLimiter(store)
    assert as_async_counter(counter) is counter
    assert as_async_limiter(limiter) is limiter
    memory = as_async_counter(MemoryNonceCounter())
    assert memory is not counter and asyncio.run(memory.advance("n", 1, 0.0))
    wrapped = as_async_limiter(MemoryLoginLimiter())
    admission = asyncio.run(wrapped.admit("10.0.0.1", "bob", 0.0))
    asyncio.run(wrapped.release("10.0.0.1", "bob", admission, 0.0, trust=True))
    assert admission.admitted


def test_mysql_storage_keeps_the_state_in_its_database(tmp_path: Path) -> None:
    from sipcert.storage import MysqlStore
    from sipcert.storage.mysql import MysqlLoginLimiter, MysqlNonceCounter

    store = MysqlStore.from_url("mysql://nobody@127.0.0.1:1/none")  # never connected
    shared = open_shared_state(store, tmp_path, retention=360.0, limits=LoginLimits())
    assert isinstance(shared.nonces, MysqlNonceCounter)
    assert isinstance(shared.limiter, MysqlLoginLimiter)
    shared.close()
    assert list(tmp_path.iterdir()) == []
