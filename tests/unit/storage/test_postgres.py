"""What the PostgreSQL backend adds to the storage contract (``test_storage.py`` runs that).

Each test works in a fresh schema of the test database, dropped afterwards; an unreachable
server skips locally and fails with ``CI=true``, as for the other real-peer tests.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import pytest

from sipcert.errors import ConfigError, ForbiddenError, StorageError
from sipcert.storage import PostgresStore, open_store
from sipcert.storage import postgres as pg_backend
from tests.unit.storage.test_storage import (
    ADMIN_DSN,
    ALICE,
    NOW,
    make_cert,
    opened,
    pg_admin,
    postgres_schema,
    postgres_url,
    run,
)

pytestmark = pytest.mark.peer("psql")


@pytest.fixture
def schema() -> Iterator[str]:
    with postgres_schema() as name:
        yield name


async def pg_fetch(sql: str, *args: object, schema: str | None = None) -> list[Any]:
    """Rows of one query on a connection of its own (search_path = ``schema`` if given)."""
    import asyncpg  # type: ignore[import-untyped]

    settings = {"search_path": pg_backend.quote_ident(schema)} if schema else None
    conn = await asyncpg.connect(ADMIN_DSN, timeout=5, server_settings=settings)
    try:
        rows: list[Any] = await conn.fetch(sql, *args)
        return rows
    finally:
        await conn.close()


def row_count(schema: str) -> int:
    rows = run(pg_fetch("SELECT count(*) FROM sipcert_certificates", schema=schema))
    count: int = rows[0][0]
    return count


# -- schema ------------------------------------------------------------------------------------


def test_schema_is_created_and_versioned(schema: str) -> None:
    url = postgres_url(schema)
    run(open_store(url).close())  # an unused store creates nothing
    assert not run(pg_fetch("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema))

    async def use() -> None:
        async with opened(url) as store:
            assert await store.get_by_aor(ALICE, NOW) == []

    run(use())
    [[version]] = run(pg_fetch("SELECT version FROM sipcert_schema_version", schema=schema))
    assert version == pg_backend.SCHEMA_VERSION
    indexes = run(
        pg_fetch(
            "SELECT indexname FROM pg_indexes WHERE schemaname = $1 ORDER BY indexname", schema
        )
    )
    assert [row[0] for row in indexes] == [
        "sipcert_certificates_by_aor",
        "sipcert_certificates_by_cert_hash",
        "sipcert_certificates_by_not_after",
        "sipcert_certificates_pkey",
        "sipcert_changes_pkey",
        "sipcert_limits_by_time",
        "sipcert_limits_pkey",
        "sipcert_nonces_by_age",
        "sipcert_nonces_pkey",
        "sipcert_schema_version_pkey",
    ]
    run(use())  # reopening an existing schema works and changes nothing
    assert run(pg_fetch("SELECT count(*) FROM sipcert_schema_version", schema=schema))[0][0] == 1


def test_unknown_schemas_are_refused(schema: str) -> None:
    url = postgres_url(schema)

    async def use() -> None:
        async with opened(url) as store:
            await store.get_by_aor(ALICE, NOW)

    run(use())
    run(pg_admin(f'SET search_path = "{schema}"', "UPDATE sipcert_schema_version SET version = 99"))
    with pytest.raises(StorageError, match="schema version 99 is newer"):
        run(use())

    run(pg_admin(f'DROP TABLE "{schema}".sipcert_schema_version'))
    with pytest.raises(StorageError, match="not a sipcert schema"):
        run(use())


def test_schema_names_are_quoted(schema: str) -> None:
    """A schema name that is hostile SQL is just a name (it is quoted, never spliced raw)."""
    odd = f'{schema}"; DROP SCHEMA public; --'
    url = postgres_url(quote(odd, safe=""))
    cert = make_cert()

    async def scenario() -> None:
        async with opened(url) as store:
            assert await store.add(cert, max_per_aor=1, now=NOW)
            assert await store.get_by_aor(ALICE, NOW) == [cert]

    try:
        run(scenario())
        assert run(pg_fetch("SELECT 1 FROM pg_namespace WHERE nspname = 'public'"))
        assert run(pg_fetch("SELECT count(*) FROM sipcert_certificates", schema=odd))[0][0] == 1
    finally:
        run(pg_admin(f"DROP SCHEMA IF EXISTS {pg_backend.quote_ident(odd)} CASCADE"))


def test_search_path_isolates_too(schema: str) -> None:
    """``?search_path=`` (passed on to the server) works for a schema that already exists."""
    run(pg_admin(f'CREATE SCHEMA "{schema}"'))
    url = f"{ADMIN_DSN}{'&' if '?' in ADMIN_DSN else '?'}search_path={schema}"

    async def scenario() -> None:
        async with opened(url) as store:
            assert isinstance(store, PostgresStore) and store.schema is None
            assert await store.add(make_cert(), max_per_aor=1, now=NOW)

    run(scenario())
    assert row_count(schema) == 1


# -- lookups -----------------------------------------------------------------------------------


def plan_nodes(sql: str, *args: object, schema: str, settings: str = "") -> list[tuple[str, str]]:
    """(node type, index name) of each node of a single-branch plan, top first."""

    async def explain() -> Any:
        import asyncpg

        conn = await asyncpg.connect(ADMIN_DSN, server_settings={"search_path": schema})
        try:
            if settings:
                await conn.execute(settings)
            return await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args)
        finally:
            await conn.close()

    nodes = []
    node = json.loads(run(explain()))[0]["Plan"]
    while True:
        nodes.append((node["Node Type"], node.get("Index Name", "")))
        if not node.get("Plans"):
            return nodes
        [node] = node["Plans"]


def test_lookups_are_single_index_scans(schema: str) -> None:
    """With a realistic table (many AORs, analysed) each GET is one search of its index.

    For a handful of rows PostgreSQL may prefer a bitmap scan and sort them afterwards (cheap);
    when it walks the index instead, the index alone gives the order: no Sort node.
    """
    url = postgres_url(schema)

    async def fill() -> None:
        async with opened(url) as store:
            await store.get_by_aor(ALICE, NOW)  # creates the schema
        rows = [
            (
                cert.aor,
                cert.sha256,
                cert.cert_hash,
                cert.der,
                cert.not_before,
                cert.not_after,
                cert.created,
                cert.label,
            )
            for cert in (make_cert(f"user{i}@example.com", n) for i in range(2000) for n in (0, 1))
        ]
        import asyncpg

        conn = await asyncpg.connect(ADMIN_DSN, server_settings={"search_path": schema})
        try:
            await conn.copy_records_to_table("sipcert_certificates", records=rows)
            await conn.execute("ANALYZE sipcert_certificates")
        finally:
            await conn.close()

    run(fill())
    for sql, arg, index in [
        (pg_backend._SELECT_BY_AOR, "user7@example.com", "sipcert_certificates_by_aor"),
        (
            pg_backend._SELECT_BY_CERT_HASH,
            make_cert("user7@example.com").cert_hash,
            "sipcert_certificates_by_cert_hash",
        ),
    ]:
        nodes = plan_nodes(sql, arg, NOW, schema=schema)
        assert [n for n in nodes if n[1]] in (
            [("Index Scan", index)],
            [("Bitmap Index Scan", index)],
        )
        assert not [n for n in nodes if "Seq" in n[0]], nodes
        nodes = plan_nodes(sql, arg, NOW, schema=schema, settings="SET enable_bitmapscan = off")
        assert [n for n in nodes if n[0] != "Limit"] == [("Index Scan", index)], nodes


# -- add under concurrency ---------------------------------------------------------------------


@pytest.mark.parametrize("isolation", [None, "repeatable read", "serializable"])
def test_concurrent_adds_from_many_connections(schema: str, isolation: str | None) -> None:
    """Two pools of eight connections race 16 adds for 5 places; never more than 5.

    Also with a server default isolation level under which a snapshot taken before the lock
    would miss the other racers' commits: ``add`` must insist on READ COMMITTED.
    """
    params = {"max_connections": "8"}
    if isolation:
        params["default_transaction_isolation"] = isolation.replace(" ", "%20")
    url = postgres_url(schema, **params)
    limit = 5

    async def scenario() -> list[str]:
        async with opened(url) as first, opened(url) as second:
            await first.get_by_aor(ALICE, NOW)  # schema in place, so only adds race
            await second.get_by_aor(ALICE, NOW)

            async def attempt(n: int) -> str:
                store = first if n % 2 else second
                try:
                    await store.add(make_cert(n=n), max_per_aor=limit, now=NOW)
                except ForbiddenError as exc:
                    return exc.reason
                return "added"

            outcomes = await asyncio.gather(*(attempt(n) for n in range(16)))
            assert len(await first.get_by_aor(ALICE, NOW)) == limit
            return list(outcomes)

    assert sorted(run(scenario())) == ["added"] * limit + ["too-many-certificates"] * 11
    assert row_count(schema) == limit


def test_concurrent_adds_of_one_certificate(schema: str) -> None:
    """The same certificate sent eight times at once is added once; the others say False."""
    url = postgres_url(schema, max_connections="8")
    cert = make_cert()

    async def scenario() -> list[bool]:
        async with opened(url) as store:
            return list(
                await asyncio.gather(*(store.add(cert, max_per_aor=1, now=NOW) for _ in range(8)))
            )

    assert sorted(run(scenario())) == [False] * 7 + [True]


def test_unencodable_keys_find_nothing(schema: str) -> None:
    """A lone surrogate cannot reach the server (not UTF-8): nothing matches, no error."""
    odd = "al\udcffice@example.com"

    async def scenario() -> None:
        async with opened(postgres_url(schema)) as store:
            assert await store.get_by_aor(odd, NOW) == []
            assert await store.get_by_cert_hash(odd, NOW) is None
            assert await store.delete(odd, None) == 0

    run(scenario())


# -- failures ----------------------------------------------------------------------------------


def test_failed_writes_change_nothing(schema: str) -> None:
    """An error after the INSERT (a trigger) or mid-DELETE rolls the whole operation back."""
    url = postgres_url(schema)
    certs = [make_cert(n=n) for n in range(3)]

    async def scenario() -> None:
        async with opened(url) as store:
            for cert in certs[:2]:
                await store.add(cert, max_per_aor=5, now=NOW)
            await pg_admin(
                f'SET search_path = "{schema}"',
                "CREATE FUNCTION fail() RETURNS trigger LANGUAGE plpgsql AS "
                "$$BEGIN IF OLD IS NULL OR OLD.sha256 = '" + certs[1].sha256 + "' THEN "
                "RAISE EXCEPTION 'simulated failure'; END IF; RETURN OLD; END$$",
                "CREATE TRIGGER fail_insert AFTER INSERT ON sipcert_certificates "
                "FOR EACH ROW EXECUTE FUNCTION fail()",
                "CREATE TRIGGER fail_delete BEFORE DELETE ON sipcert_certificates "
                "FOR EACH ROW EXECUTE FUNCTION fail()",
            )
            with pytest.raises(StorageError, match="simulated failure"):
                await store.add(certs[2], max_per_aor=5, now=NOW)
            with pytest.raises(StorageError, match="simulated failure"):
                await store.delete(ALICE, None)  # fails on one row, perhaps after another
            assert await store.get_by_aor(ALICE, NOW) == sorted(certs[:2], key=lambda c: c.sha256)
            await pg_admin(f'SET search_path = "{schema}"', "DROP FUNCTION fail() CASCADE")
            # The store goes on: the failed transaction left no lock and no broken connection.
            assert await store.add(certs[2], max_per_aor=5, now=NOW)
            assert await store.delete(ALICE, None) == 3

    run(scenario())


def test_query_errors_are_storage_errors(schema: str) -> None:
    url = postgres_url(schema)

    async def scenario() -> None:
        async with opened(url) as store:
            await store.add(make_cert(), max_per_aor=5, now=NOW)
            await pg_admin(f'DROP TABLE "{schema}".sipcert_certificates')
            for call in (
                store.get_by_aor(ALICE, NOW),
                store.get_by_cert_hash(make_cert().cert_hash, NOW),
                store.add(make_cert(n=1), max_per_aor=5, now=NOW),
                store.delete(ALICE, None),
                store.purge_expired(NOW + timedelta(days=1)),
            ):
                with pytest.raises(StorageError, match="does not exist") as info:
                    await call
                assert pg_backend.describe_dsn(ADMIN_DSN) in str(info.value)

    run(scenario())


@pytest.mark.parametrize(
    ("url", "where", "reason"),
    [
        # Nothing listens on port 1.
        ("postgresql://u:s3cr3t@127.0.0.1:1/certs", "127.0.0.1:1/certs", "connecting"),
        # A role that does not exist (the server trusts, so this is its "authentication failed");
        # the role's name is the password here, to show that messages are scrubbed of it.
        ("postgresql://s3cr3t:s3cr3t@127.0.0.1:5432/test", "127.0.0.1:5432/test", "s3cr3t"),
        ("postgresql://postgres:s3cr3t@127.0.0.1/no_such_db", "127.0.0.1:5432/no_such_db", "exist"),
    ],
)
def test_connection_errors_name_the_server_not_the_password(
    url: str, where: str, reason: str
) -> None:
    store = open_store(url + "?timeout=5")
    assert "s3cr3t" not in repr(store)

    async def scenario() -> None:
        try:
            for _ in range(2):  # a failed connection is retried on the next call
                with pytest.raises(StorageError, match=re.escape(where)) as info:
                    await store.get_by_aor(ALICE, NOW)
                message = str(info.value)
                assert "s3cr3t" not in message
                if reason != "s3cr3t":
                    assert reason in message
        finally:
            await store.close()

    run(scenario())


# -- the pool ----------------------------------------------------------------------------------


def test_pool_is_bounded_and_lazy(schema: str) -> None:
    """``max_connections`` caps the pool; URL parameters sipcert does not know reach the server."""
    name = f"sipcert-{schema}"
    url = postgres_url(schema, max_connections="2", application_name=name)

    async def connections() -> int:
        rows = await pg_fetch(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", name
        )
        count: int = rows[0][0]
        return count

    async def scenario() -> None:
        store = open_store(url)
        try:
            assert await connections() == 0
            await store.add(make_cert(), max_per_aor=5, now=NOW)
            assert await connections() == 1  # min_size=1
            results = await asyncio.gather(*(store.get_by_aor(ALICE, NOW) for _ in range(50)))
            assert all(len(r) == 1 for r in results)
            assert 1 <= await connections() <= 2
        finally:
            await store.close()
        deadline = time.monotonic() + 5  # a closed connection's backend takes a moment to exit
        while await connections() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await connections() == 0

    run(scenario())


def test_quote_ident() -> None:
    assert pg_backend.quote_ident('a"b') == '"a""b"'
    for bad in ("", "a\x00b", "x" * 64):
        with pytest.raises(ConfigError, match="schema name"):
            pg_backend.quote_ident(bad)
    assert pg_backend.describe_dsn("postgresql://u:p@[::1]/db") == "[::1]:5432/db"
    assert (
        pg_backend.describe_dsn("postgresql:///db?host=%2Fvar%2Frun%2Fpostgresql")
        == "/var/run/postgresql/db"
    )
