"""Schema versions and migrations behind ``sipcert db upgrade`` (issue 10), per backend.

Each backend is asked for its version without migrating (``migrate=False``), upgraded
(twice: the second changes nothing), and refuses its other operations while outdated. The
version-1 schemas are the ones sipcert 0.x created (tests/unit/storage/test_labels.py).
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from sipcert.errors import StorageError
from sipcert.storage import SchemaStatus, open_store
from sipcert.storage import mysql as mysql_backend
from sipcert.storage import postgres as pg_backend
from sipcert.storage import sqlite as sqlite_backend
from tests.unit.storage.test_labels import _SQLITE_V1, labelled
from tests.unit.storage.test_storage import (
    ALICE,
    NOW,
    backend,
    make_cert,
    mysql_admin,
    mysql_database,
    opened,
    pg_admin,
    postgres_schema,
    postgres_url,
    run,
    store_url,
)

__all__ = ["backend", "store_url"]


def test_every_backend_counts_unexpired_and_reports_its_version(store_url: str) -> None:
    async def scenario() -> None:
        async with opened(store_url) as store:
            assert await store.count(NOW) == 0
            await store.add(make_cert(ALICE, 0), max_per_aor=5, now=NOW)
            await store.add(make_cert("bob@example.com", 1), max_per_aor=5, now=NOW)
            expired = make_cert(ALICE, 2, not_after=NOW.replace(year=2025))
            await store.add(expired, max_per_aor=5, now=NOW.replace(year=2024))
            assert await store.count(NOW) == 2
            status = await store.schema_status()
            assert status.up_to_date
            assert await store.upgrade() == status  # idempotent on a current schema

    run(scenario())


def _sqlite_v1(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        for statement in _SQLITE_V1:
            conn.execute(statement)
    conn.close()


def test_sqlite_old_schema_is_left_alone_until_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _sqlite_v1(path)
    url = f"sqlite:///{path}"

    async def scenario() -> None:
        store = open_store(url, migrate=False)
        try:
            assert await store.schema_status() == SchemaStatus(1, sqlite_backend.SCHEMA_VERSION)
            with pytest.raises(StorageError, match="sipcert db upgrade"):
                await store.get_by_aor(ALICE, NOW)
            with pytest.raises(StorageError, match="sipcert db upgrade"):
                await store.add(labelled(0, "x"), max_per_aor=5, now=NOW)
            after = await store.upgrade()
            assert after == SchemaStatus(3, 3)  # label (2), change feed (3)
            assert await store.upgrade() == after
            assert await store.add(labelled(0, "phone"), max_per_aor=5, now=NOW)
        finally:
            await store.close()

    run(scenario())
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
    conn.close()


def test_sqlite_empty_file_is_version_0_without_migrate(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/new.db"

    async def scenario() -> None:
        store = open_store(url, migrate=False)
        try:
            assert await store.schema_status() == SchemaStatus(0, 3)
            assert await store.upgrade() == SchemaStatus(3, 3)
            assert await store.count(NOW) == 0
        finally:
            await store.close()

    run(scenario())


def test_sqlite_newer_schema_is_refused_even_without_migrate(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    _sqlite_v1(path)
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StorageError, match="99"):
        open_store(f"sqlite:///{path}", migrate=False)


def test_postgres_old_schema_is_left_alone_until_upgrade() -> None:
    with postgres_schema() as schema:
        run(
            pg_admin(
                f'CREATE SCHEMA "{schema}"',
                f'SET search_path = "{schema}"',
                *pg_backend._MIGRATIONS[1],
                "UPDATE sipcert_schema_version SET version = 1",
            )
        )

        async def scenario() -> None:
            store = open_store(postgres_url(schema), migrate=False)
            try:
                assert await store.schema_status() == SchemaStatus(1, pg_backend.SCHEMA_VERSION)
                with pytest.raises(StorageError, match="sipcert db upgrade"):
                    await store.get_by_aor(ALICE, NOW)
                latest = SchemaStatus(pg_backend.SCHEMA_VERSION, pg_backend.SCHEMA_VERSION)
                assert await store.upgrade() == latest
                assert await store.upgrade() == latest
                assert await store.add(labelled(0, "phone"), max_per_aor=5, now=NOW)
            finally:
                await store.close()
            fresh = open_store(postgres_url(schema), migrate=False)
            try:  # a current schema opens without migrating
                assert [c.label for c in await fresh.get_by_aor(ALICE, NOW)] == ["phone"]
            finally:
                await fresh.close()

        run(scenario())


def test_postgres_missing_schema_is_version_0() -> None:
    with postgres_schema() as schema:

        async def scenario() -> None:
            store = open_store(postgres_url(schema), migrate=False)
            try:
                latest = pg_backend.SCHEMA_VERSION
                assert await store.schema_status() == SchemaStatus(0, latest)
                assert await store.upgrade() == SchemaStatus(latest, latest)
            finally:
                await store.close()

        run(scenario())


@pytest.mark.peer("mysql")
def test_mysql_empty_database_is_left_alone_until_upgrade() -> None:
    with mysql_database() as url:

        async def scenario() -> None:
            latest = mysql_backend.SCHEMA_VERSION
            store = open_store(url, migrate=False)
            try:
                assert await store.schema_status() == SchemaStatus(0, latest)
                with pytest.raises(StorageError, match="sipcert db upgrade"):
                    await store.get_by_aor(ALICE, NOW)
                assert await store.upgrade() == SchemaStatus(latest, latest)
                assert await store.upgrade() == SchemaStatus(latest, latest)
                assert await store.add(labelled(0, "phone"), max_per_aor=5, now=NOW)
            finally:
                await store.close()
            fresh = open_store(url, migrate=False)
            try:  # a current schema opens without migrating
                assert [c.label for c in await fresh.get_by_aor(ALICE, NOW)] == ["phone"]
            finally:
                await fresh.close()

        run(scenario())


@pytest.mark.peer("mysql")
def test_mysql_newer_schema_is_refused_even_without_migrate() -> None:
    with mysql_database() as url:
        name = url.rsplit("/", 1)[1]
        mysql_admin(
            f"USE `{name}`",
            *mysql_backend._MIGRATIONS[1],
            "INSERT INTO sipcert_schema_version (singleton, version) VALUES (1, 99)",
        )

        async def scenario() -> None:
            for migrate in (True, False):
                store = open_store(url, migrate=migrate)
                try:
                    with pytest.raises(StorageError, match="99"):
                        await store.get_by_aor(ALICE, NOW)
                finally:
                    await store.close()

        run(scenario())


@pytest.mark.peer("mysql")
def test_mysql_version_1_upgrades_to_the_log_tables() -> None:
    """A database sipcert created before the log (version 1) is refused without migrating,
    then ``upgrade`` adds the ``sipcert_tlog_*`` tables (issue 14) and keeps the certificates."""
    from sipcert.storage.tlog import open_log

    with mysql_database() as url:
        name = url.rsplit("/", 1)[1]
        mysql_admin(
            f"USE `{name}`",
            *mysql_backend._MIGRATIONS[1],
            "INSERT INTO sipcert_schema_version (singleton, version) VALUES (1, 1)",
        )

        async def scenario() -> None:
            store = open_store(url, migrate=False)
            try:
                latest = mysql_backend.SCHEMA_VERSION
                assert await store.schema_status() == SchemaStatus(1, latest)
                with pytest.raises(StorageError, match="sipcert db upgrade"):
                    await store.get_by_aor(ALICE, NOW)
                assert await store.upgrade() == SchemaStatus(latest, latest)
            finally:
                await store.close()
            log = open_log(url, Path("/nonexistent"))
            try:
                assert await log.checkpoint("example.com") is None  # the table is there
            finally:
                await log.close()

        run(scenario())
