"""Device labels kept with each certificate, on every backend, and the schema migrations.

A Subscriber with several devices (draft §5: "upload a different certificate for each UA")
must tell them apart on the revocation page. The label comes with the PUT
(``Content-Description``, RFC 2045 §8) and is display text only: stored as given, never
parsed, never used to pick a row. Existing databases gain the column in place.
"""

from __future__ import annotations

import contextlib
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from sipcert.errors import StorageError
from sipcert.storage import SqliteStore, StoredCertificate
from sipcert.storage import postgres as pg_backend
from sipcert.storage import sqlite as sqlite_backend
from tests.unit.storage.test_postgres import pg_fetch
from tests.unit.storage.test_storage import (
    ALICE,
    NOW,
    backend,
    opened,
    pg_admin,
    postgres_schema,
    postgres_url,
    run,
    store_url,
)

__all__ = ["backend", "store_url"]


def labelled(n: int, label: str | None) -> StoredCertificate:
    der = f"DER of {ALICE} #{n}".encode()
    return StoredCertificate.from_der(
        ALICE,
        der,
        not_before=NOW - timedelta(days=1),
        not_after=NOW + timedelta(days=30),
        created=NOW + timedelta(seconds=n),
        label=label,
    )


def test_every_backend_keeps_the_label(store_url: str) -> None:
    phone, laptop, bare = (
        labelled(0, "Alice's phone \N{MOBILE PHONE}"),
        labelled(1, "laptop"),
        labelled(2, None),
    )

    async def scenario() -> None:
        async with opened(store_url) as store:
            for cert in (phone, laptop, bare):
                assert await store.add(cert, max_per_aor=5, now=NOW)
            got = await store.get_by_aor(ALICE, NOW)
            assert [(c.label, c.created) for c in got] == [
                ("Alice's phone \N{MOBILE PHONE}", NOW),
                ("laptop", NOW + timedelta(seconds=1)),
                (None, NOW + timedelta(seconds=2)),
            ]
            assert got == [phone, laptop, bare]
            by_hash = await store.get_by_cert_hash(laptop.cert_hash, NOW)
            assert by_hash is not None and by_hash.label == "laptop"
            # The same certificate again keeps the label it was enrolled with.
            again = labelled(1, "renamed")
            assert not await store.add(again, max_per_aor=5, now=NOW)
            assert [c.label for c in await store.get_by_aor(ALICE, NOW)][1] == "laptop"

    run(scenario())


# The version 1 schema exactly as sipcert 0.x created it (before labels).
_SQLITE_V1 = (
    """CREATE TABLE certificates (
        id INTEGER PRIMARY KEY,
        aor TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        cert_hash TEXT NOT NULL,
        der BLOB NOT NULL,
        not_before INTEGER NOT NULL,
        not_after INTEGER NOT NULL,
        created INTEGER NOT NULL,
        UNIQUE (aor, sha256)
    )""",
    "CREATE INDEX certificates_by_aor ON certificates (aor, created, sha256)",
    "CREATE INDEX certificates_by_cert_hash ON certificates (cert_hash, created, aor)",
    "CREATE INDEX certificates_by_not_after ON certificates (not_after)",
    "PRAGMA user_version = 1",
)


def _us(value: object) -> int:
    return sqlite_backend._to_us(value)  # type: ignore[arg-type]


def test_sqlite_database_of_schema_1_gains_the_label_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = labelled(0, None)
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        for statement in _SQLITE_V1:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO certificates (aor, sha256, cert_hash, der, not_before, not_after, created)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                old.aor,
                old.sha256,
                old.cert_hash,
                old.der,
                _us(old.not_before),
                _us(old.not_after),
                _us(old.created),
            ),
        )
    conn.close()

    async def scenario() -> None:
        store = SqliteStore(path)
        try:
            assert await store.get_by_aor(ALICE, NOW) == [old]  # the old row, no label
            assert await store.add(labelled(1, "phone"), max_per_aor=5, now=NOW)
            assert [c.label for c in await store.get_by_aor(ALICE, NOW)] == [None, "phone"]
        finally:
            await store.close()
        reopened = SqliteStore(path)  # migrating twice is a no-op
        try:
            assert [c.label for c in await reopened.get_by_aor(ALICE, NOW)] == [None, "phone"]
        finally:
            await reopened.close()

    run(scenario())
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == sqlite_backend.SCHEMA_VERSION
        columns = [row[1] for row in conn.execute("PRAGMA table_info(certificates)")]
    conn.close()
    assert columns[-1] == "label"


def test_sqlite_schema_1_opened_read_only_says_to_migrate(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        for statement in _SQLITE_V1:
            conn.execute(statement)
    conn.close()
    with pytest.raises(StorageError, match="open it once read-write"):
        SqliteStore(path, read_only=True)


@pytest.mark.peer("psql")
def test_postgres_schema_1_gains_the_label_column() -> None:
    with postgres_schema() as schema:
        old = labelled(0, None)
        run(
            pg_admin(
                f'CREATE SCHEMA "{schema}"',
                f'SET search_path = "{schema}"',
                *pg_backend._MIGRATIONS[1],
                "UPDATE sipcert_schema_version SET version = 1",
            )
        )

        async def insert() -> None:
            import asyncpg  # type: ignore[import-untyped]

            from tests.unit.storage.test_storage import ADMIN_DSN

            conn = await asyncpg.connect(ADMIN_DSN, server_settings={"search_path": f'"{schema}"'})
            try:
                await conn.execute(
                    "INSERT INTO sipcert_certificates "
                    "(aor, sha256, cert_hash, der, not_before, not_after, created) "
                    "VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    old.aor,
                    old.sha256,
                    old.cert_hash,
                    old.der,
                    old.not_before,
                    old.not_after,
                    old.created,
                )
            finally:
                await conn.close()

        run(insert())

        async def scenario() -> None:
            async with opened(postgres_url(schema)) as store:
                assert await store.get_by_aor(ALICE, NOW) == [old]
                assert await store.add(labelled(1, "phone"), max_per_aor=5, now=NOW)
                assert [c.label for c in await store.get_by_aor(ALICE, NOW)] == [None, "phone"]

        run(scenario())
        run(_reopen(schema))
        [[version]] = run(pg_fetch("SELECT version FROM sipcert_schema_version", schema=schema))
        assert version == pg_backend.SCHEMA_VERSION == 4  # label (2), shared state (3), feed (4)


async def _reopen(schema: str) -> None:
    """Opening a migrated schema again migrates nothing and reads the labels."""
    async with opened(postgres_url(schema)) as store:
        assert [c.label for c in await store.get_by_aor(ALICE, NOW)] == [None, "phone"]
