"""The certificate storage contract (draft §4.4, §5), run against every backend.

To add a backend, append a :class:`Backend` to ``BACKENDS`` whose ``url`` context manager
prepares an empty database and cleans it up afterwards. The PostgreSQL backend gives each test
a fresh schema in the database ``test`` (``SIPCERT_TEST_POSTGRES_DSN`` overrides the server),
dropped afterwards; like the other real-peer tests it skips when the server is unreachable,
and fails instead with ``CI=true``. Every contract test
runs its whole scenario inside one ``asyncio.run`` so backends with loop-bound pools work.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import pytest

from sipcert.errors import ConfigError, ForbiddenError, InputError, StorageError
from sipcert.storage import (
    CertificateStore,
    MemoryStore,
    PostgresStore,
    SqliteStore,
    StoredCertificate,
    cert_hash_of,
    open_store,
)
from sipcert.storage import sqlite as sqlite_backend
from tests.conftest import IN_CI

T = TypeVar("T")

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
ALICE = "alice@example.com"
BOB = "bob@example.com"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def make_cert(
    aor: str = ALICE,
    n: int = 0,
    *,
    not_before: datetime = NOW - timedelta(days=1),
    not_after: datetime = NOW + timedelta(days=30),
    created: datetime = NOW,
    size: int = 0,
) -> StoredCertificate:
    """A record with unique bytes per (aor, n); the store never parses the DER."""
    der = f"DER of {aor} #{n}".encode() + b"\x00" * size
    return StoredCertificate.from_der(
        aor, der, not_before=not_before, not_after=not_after, created=created
    )


# -- backends ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    name: str
    #: Yields the URL of a fresh, empty store under the given directory, then cleans up.
    url: Callable[[Path], contextlib.AbstractContextManager[str]]
    #: A second open_store(url) sees the first one's data (and can race with it).
    persistent: bool
    #: pytest marks of every test run on this backend.
    marks: tuple[pytest.MarkDecorator, ...] = ()


@contextlib.contextmanager
def _memory_url(_tmp: Path) -> Iterator[str]:
    yield "memory://"


@contextlib.contextmanager
def _sqlite_url(tmp: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp}/store/certs.db"  # tmp is absolute: four slashes


ADMIN_DSN = os.environ.get("SIPCERT_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


async def pg_admin(*statements: str) -> None:
    """Run ``statements`` on a connection of its own, as an operator with psql would."""
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(ADMIN_DSN, timeout=5)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    """A unique schema name in the test database (not created), dropped afterwards.

    Skips when the server is unreachable, or fails with ``CI=true`` (as the Kamailio
    PostgreSQL credential tests do).
    """
    import asyncpg

    schema = f"sipcert_test_{uuid.uuid4().hex[:12]}"
    try:
        run(pg_admin("SELECT 1"))
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        message = f"PostgreSQL at {ADMIN_DSN} is not usable: {exc}"
        if IN_CI:
            pytest.fail(message + " (CI=true: peers are required)")
        pytest.skip(message)
    try:
        yield schema
    finally:
        run(pg_admin(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


def postgres_url(schema: str, **params: str) -> str:
    """The store URL for ``schema`` (and any further query parameters) on the test server."""
    query = "&".join(f"{k}={v}" for k, v in {"schema": schema, **params}.items())
    return f"{ADMIN_DSN}{'&' if '?' in ADMIN_DSN else '?'}{query}"


@contextlib.contextmanager
def _postgres_url(_tmp: Path) -> Iterator[str]:
    with postgres_schema() as schema:
        yield postgres_url(schema)  # the store itself creates the schema


MYSQL_SERVER = os.environ.get("SIPCERT_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306")


def mysql_admin(*statements: str, server: str = MYSQL_SERVER) -> None:
    """Run ``statements`` as an operator with the mysql client would."""
    from urllib.parse import urlsplit

    parts = urlsplit(server)
    command = ["mysql", "-h", parts.hostname or "127.0.0.1", "-P", str(parts.port or 3306)]
    command += ["-u", parts.username or "root", "--connect-timeout=5", "-e", ";".join(statements)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise OSError(done.stderr.strip())


@contextlib.contextmanager
def mysql_database(server: str = MYSQL_SERVER) -> Iterator[str]:
    """A fresh database on the shared MariaDB server, dropped afterwards (the store's URL).

    Skips when the server is unreachable, or fails with ``CI=true``.
    """
    name = f"sipcert_test_{uuid.uuid4().hex[:12]}"
    try:
        mysql_admin(f"CREATE DATABASE `{name}`", server=server)
    except (OSError, subprocess.SubprocessError) as exc:
        message = f"MariaDB at {server} is not usable: {exc}"
        if IN_CI:
            pytest.fail(message + " (CI=true: peers are required)")
        pytest.skip(message)
    try:
        yield f"{server}/{name}"
    finally:
        mysql_admin(f"DROP DATABASE IF EXISTS `{name}`", server=server)


@contextlib.contextmanager
def _mysql_url(_tmp: Path) -> Iterator[str]:
    with mysql_database() as url:
        yield url


BACKENDS = [
    Backend("memory", _memory_url, persistent=False),
    Backend("sqlite", _sqlite_url, persistent=True),
    Backend("postgresql", _postgres_url, persistent=True, marks=(pytest.mark.peer("psql"),)),
    Backend("mysql", _mysql_url, persistent=True, marks=(pytest.mark.peer("mysql"),)),
]


def _params(backends: list[Backend]) -> list[Any]:
    return [pytest.param(b, marks=b.marks, id=b.name) for b in backends]


@pytest.fixture(params=_params(BACKENDS))
def backend(request: pytest.FixtureRequest) -> Backend:
    result: Backend = request.param
    return result


@pytest.fixture
def store_url(backend: Backend, tmp_path: Path) -> Iterator[str]:
    with backend.url(tmp_path) as url:
        yield url


@pytest.fixture(params=_params([b for b in BACKENDS if b.persistent]))
def persistent_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with request.param.url(tmp_path) as url:
        yield url


@contextlib.asynccontextmanager
async def opened(url: str) -> AsyncIterator[CertificateStore]:
    store = open_store(url)
    try:
        yield store
    finally:
        await store.close()


# -- the contract -----------------------------------------------------------------------------


def test_add_new_then_existing(store_url: str) -> None:
    cert = make_cert()

    async def scenario() -> None:
        async with opened(store_url) as store:
            assert await store.add(cert, max_per_aor=5, now=NOW) is True
            assert await store.add(cert, max_per_aor=5, now=NOW) is False
            assert await store.get_by_aor(ALICE, NOW) == [cert]  # every field round-trips

    run(scenario())


def test_get_by_aor_is_ordered_and_per_aor(store_url: str) -> None:
    later = make_cert(n=1, created=NOW + timedelta(seconds=1))
    same_time = sorted((make_cert(n=2), make_cert(n=3)), key=lambda c: c.sha256)
    other = make_cert(BOB)

    async def scenario() -> None:
        async with opened(store_url) as store:
            for cert in (later, same_time[1], other, same_time[0]):
                assert await store.add(cert, max_per_aor=5, now=NOW)
            assert await store.get_by_aor(ALICE, NOW) == [*same_time, later]
            assert await store.get_by_aor(BOB, NOW) == [other]
            assert await store.get_by_aor("carol@example.com", NOW) == []

    run(scenario())


def test_limit_is_enforced_with_reason(store_url: str) -> None:
    async def scenario() -> None:
        async with opened(store_url) as store:
            assert await store.add(make_cert(n=0), max_per_aor=2, now=NOW)
            assert await store.add(make_cert(n=1), max_per_aor=2, now=NOW)
            with pytest.raises(ForbiddenError) as info:
                await store.add(make_cert(n=2), max_per_aor=2, now=NOW)
            assert info.value.reason == "too-many-certificates"
            # Re-sending a certificate already held is not a new one: no error at the limit.
            assert await store.add(make_cert(n=1), max_per_aor=2, now=NOW) is False
            # The limit is per AOR.
            assert await store.add(make_cert(BOB), max_per_aor=2, now=NOW)
            assert len(await store.get_by_aor(ALICE, NOW)) == 2

    run(scenario())


def test_expired_certificates_do_not_count_towards_the_limit(store_url: str) -> None:
    expired = make_cert(n=0, not_after=NOW - timedelta(seconds=1))

    async def scenario() -> None:
        async with opened(store_url) as store:
            assert await store.add(expired, max_per_aor=1, now=NOW - timedelta(days=1))
            assert await store.add(make_cert(n=1), max_per_aor=1, now=NOW)

    run(scenario())


def test_bad_limit_is_refused(store_url: str) -> None:
    async def scenario() -> None:
        async with opened(store_url) as store:
            with pytest.raises(ConfigError):
                await store.add(make_cert(), max_per_aor=0, now=NOW)

    run(scenario())


def test_expired_are_not_returned(store_url: str) -> None:
    """Draft §4.4: "A certificate Store SHOULD not provide certificates that have become
    invalid"."""
    edge = make_cert(n=0, not_after=NOW)  # notAfter is inclusive (RFC 5280 §4.1.2.5)
    gone = make_cert(n=1, not_after=NOW - timedelta(microseconds=1))
    future = make_cert(n=2, not_before=NOW + timedelta(days=1))  # not yet valid: still held

    async def scenario() -> None:
        async with opened(store_url) as store:
            for cert in (edge, gone, future):
                assert await store.add(cert, max_per_aor=5, now=NOW - timedelta(days=1))
            assert {c.sha256 for c in await store.get_by_aor(ALICE, NOW)} == {
                edge.sha256,
                future.sha256,
            }
            assert await store.get_by_cert_hash(gone.cert_hash, NOW) is None
            assert await store.get_by_cert_hash(edge.cert_hash, NOW) == edge
            later = NOW + timedelta(microseconds=1)
            assert await store.get_by_aor(ALICE, later) == [future]
            assert await store.get_by_cert_hash(edge.cert_hash, later) is None

    run(scenario())


def test_get_by_cert_hash(store_url: str) -> None:
    cert = make_cert()

    async def scenario() -> None:
        async with opened(store_url) as store:
            await store.add(cert, max_per_aor=5, now=NOW)
            await store.add(make_cert(BOB), max_per_aor=5, now=NOW)
            assert await store.get_by_cert_hash(cert.cert_hash, NOW) == cert
            assert await store.get_by_cert_hash(cert_hash_of(b"unknown"), NOW) is None

    run(scenario())


def test_delete_one_and_all(store_url: str) -> None:
    certs = [make_cert(n=i) for i in range(3)]
    bobs = make_cert(BOB)

    async def scenario() -> None:
        async with opened(store_url) as store:
            for cert in [*certs, bobs]:
                await store.add(cert, max_per_aor=5, now=NOW)
            assert await store.delete(ALICE, certs[1].cert_hash) == 1
            assert await store.delete(ALICE, certs[1].cert_hash) == 0
            assert await store.delete(ALICE, bobs.cert_hash) == 0  # another AOR's certificate
            assert await store.get_by_aor(ALICE, NOW) == [certs[0], certs[2]]
            assert await store.get_by_cert_hash(certs[1].cert_hash, NOW) is None
            assert await store.delete(ALICE, None) == 2
            assert await store.get_by_aor(ALICE, NOW) == []
            assert await store.delete(ALICE, None) == 0
            assert await store.get_by_aor(BOB, NOW) == [bobs]

    run(scenario())


def test_delete_removes_expired_too(store_url: str) -> None:
    expired = make_cert(not_after=NOW - timedelta(days=1))

    async def scenario() -> None:
        async with opened(store_url) as store:
            await store.add(expired, max_per_aor=5, now=NOW - timedelta(days=2))
            assert await store.delete(ALICE, expired.cert_hash) == 1

    run(scenario())


def test_purge_expired(store_url: str) -> None:
    old = [make_cert(n=i, not_after=NOW - timedelta(seconds=1)) for i in range(2)]
    old_bob = make_cert(BOB, not_after=NOW - timedelta(days=3))
    fresh = make_cert(n=9)
    before = NOW - timedelta(days=5)

    async def scenario() -> None:
        async with opened(store_url) as store:
            for cert in [*old, old_bob, fresh]:
                await store.add(cert, max_per_aor=5, now=before)
            assert await store.purge_expired(NOW) == 3
            assert await store.purge_expired(NOW) == 0
            # Gone, not merely hidden: asking "in the past" finds nothing either.
            assert await store.get_by_aor(ALICE, before) == [fresh]
            assert await store.get_by_aor(BOB, before) == []

    run(scenario())


def test_impossible_keys_find_nothing(store_url: str) -> None:
    """A NUL (which PostgreSQL text cannot hold) in a key is no error: nothing matches it."""

    async def scenario() -> None:
        async with opened(store_url) as store:
            await store.add(make_cert(), max_per_aor=5, now=NOW)
            assert await store.get_by_aor(f"{ALICE}\x00", NOW) == []
            assert await store.get_by_cert_hash(f"{make_cert().cert_hash}\x00", NOW) is None
            assert await store.delete(f"{ALICE}\x00", None) == 0
            assert await store.delete(ALICE, f"{make_cert().cert_hash}\x00") == 0
            assert len(await store.get_by_aor(ALICE, NOW)) == 1

    run(scenario())


def test_naive_datetimes_are_refused(store_url: str) -> None:
    async def scenario() -> None:
        async with opened(store_url) as store:
            with pytest.raises(InputError):
                await store.get_by_aor(ALICE, datetime(2026, 1, 1))

    run(scenario())


def test_closed_store_raises_storage_error(store_url: str) -> None:
    async def scenario() -> None:
        store = open_store(store_url)
        await store.close()
        with pytest.raises(StorageError):
            await store.get_by_aor(ALICE, NOW)
        with pytest.raises(StorageError):
            await store.add(make_cert(), max_per_aor=1, now=NOW)

    run(scenario())


def test_concurrent_adds_never_exceed_the_limit(backend: Backend, store_url: str) -> None:
    """Eight threads race for three places; a persistent backend gets one store per thread."""
    limit, racers = 3, 8
    barrier = threading.Barrier(racers, timeout=30)
    outcomes: list[str] = []
    shared = None if backend.persistent else open_store(store_url)

    def racer(n: int) -> None:
        async def attempt() -> str:
            store = shared if shared is not None else open_store(store_url)
            try:
                barrier.wait()
                await store.add(make_cert(n=n), max_per_aor=limit, now=NOW)
            except ForbiddenError as exc:
                return exc.reason
            finally:
                if shared is None:
                    await store.close()
            return "added"

        try:
            outcomes.append(run(attempt()))
        except Exception as exc:  # shown by the assertion below instead of hanging the others
            outcomes.append(repr(exc))
            barrier.abort()

    threads = [threading.Thread(target=racer, args=(n,)) for n in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    async def check() -> None:
        async with contextlib.AsyncExitStack() as stack:
            if shared is None:
                store = await stack.enter_async_context(opened(store_url))
            else:
                store = shared
                stack.push_async_callback(shared.close)
            assert len(await store.get_by_aor(ALICE, NOW)) == limit

    assert sorted(outcomes) == ["added"] * limit + ["too-many-certificates"] * (racers - limit)
    run(check())


def test_committed_add_is_visible_to_a_second_store(persistent_store_url: str) -> None:
    store_url = persistent_store_url
    cert = make_cert()

    async def scenario() -> None:
        async with opened(store_url) as first, opened(store_url) as second:
            await second.get_by_aor(ALICE, NOW)  # an open read connection must not hide it
            assert await first.add(cert, max_per_aor=5, now=NOW)
            assert await second.get_by_aor(ALICE, NOW) == [cert]
            assert await second.delete(ALICE, None) == 1
            assert await first.get_by_aor(ALICE, NOW) == []

    run(scenario())


# -- StoredCertificate ----------------------------------------------------------------------


def test_stored_certificate_hashes_and_times() -> None:
    der = b"some DER bytes"
    cet = timezone(timedelta(hours=1))
    cert = StoredCertificate.from_der(
        ALICE,
        der,
        not_before=datetime(2026, 1, 1, 1, 0, tzinfo=cet),
        not_after=NOW,
        created=NOW,
    )
    assert cert.sha256 == hashlib.sha256(der).hexdigest()
    sha1 = hashlib.sha1(der, usedforsecurity=False).digest()
    # RFC 4387 §2.1: base64 without the trailing '=', 27 characters.
    assert cert.cert_hash == base64.b64encode(sha1).decode().rstrip("=")
    assert len(cert.cert_hash) == 27
    assert cert.not_before == datetime(2026, 1, 1, tzinfo=UTC)
    assert cert.not_before.tzinfo is UTC
    assert "DER" not in repr(cert)
    assert not cert.is_expired(NOW) and cert.is_expired(NOW + timedelta(microseconds=1))


@pytest.mark.parametrize(
    "change",
    [
        {"aor": ""},
        {"sha256": "ABC"},
        {"cert_hash": "not base64"},
        {"created": datetime(2026, 1, 1)},
    ],
)
def test_stored_certificate_validates(change: dict[str, Any]) -> None:
    fields: dict[str, Any] = {
        "aor": ALICE,
        "sha256": "0" * 64,
        "cert_hash": cert_hash_of(b"x"),
        "der": b"x",
        "not_before": NOW,
        "not_after": NOW,
        "created": NOW,
    }
    with pytest.raises(InputError):
        StoredCertificate(**(fields | change))


# -- open_store ---------------------------------------------------------------------------------


def test_open_store_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    async def scenario() -> None:
        relative = open_store("sqlite:///rel/dir/certs.db")
        absolute = open_store(f"sqlite:///{tmp_path}/abs%20dir/certs.db")
        memory = open_store("memory://")
        # Nothing listens there: opening a PostgreSQL store must not connect.
        postgres = open_store("postgresql://u:secret@127.0.0.1:1/certs?schema=s")
        postgres_short = open_store("postgres://127.0.0.1:1/certs")
        try:
            assert isinstance(postgres, PostgresStore) and postgres.schema == "s"
            assert isinstance(postgres_short, PostgresStore) and postgres_short.schema is None
            assert repr(postgres) == "PostgresStore('127.0.0.1:1/certs (schema s)')"
            assert isinstance(relative, SqliteStore)
            assert relative.path == tmp_path / "rel" / "dir" / "certs.db"
            assert isinstance(absolute, SqliteStore)
            assert absolute.path == tmp_path / "abs dir" / "certs.db"
            assert isinstance(memory, MemoryStore)
        finally:
            for store in (relative, absolute, memory, postgres, postgres_short):
                await store.close()
        assert relative.path.is_file() and absolute.path.is_file()

    run(scenario())


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://u:secret@db:port/certs", "malformed"),
        ("postgresql://u:secret@db/certs?max_connections=0", "at least 1"),
        ("postgresql://u:secret@db/certs?timeout=soon", "not a number"),
        ("postgresql://u:secret@db/certs?schema=", "schema name"),
        ("postgres://u:secret@db/certs?schema=a&search_path=b", "not both"),
        ("mysql://u:secret@db/certs?sslmode=x", "unknown parameter"),
        ("certs.db", "unknown"),
        ("sqlite://host/certs.db", "expected"),
        ("sqlite:///certs.db?mode=ro", "expected"),
        ("sqlite:///", "no database file"),
        ("sqlite:///:memory:", "no database file"),
        ("memory:///somewhere", "no path"),
    ],
)
def test_open_store_refuses(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        open_store(url)
    assert "secret" not in str(info.value)


# -- SQLite specifics ---------------------------------------------------------------------------


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "new-dir" / "certs.db"


@contextlib.contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain second connection, as another process or an operator would have."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def row_count(path: Path) -> int:
    with raw(path) as conn:
        count: int = conn.execute("SELECT count(*) FROM certificates").fetchone()[0]
        return count


def test_sqlite_file_setup(db_path: Path) -> None:
    run(SqliteStore(db_path).close())
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(db_path.parent.stat().st_mode) == 0o700
    with raw(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == sqlite_backend.SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    run(SqliteStore(db_path).close())  # reopening an existing database works


def test_sqlite_column_keeps_the_padded_spelling_of_0_1(db_path: Path) -> None:
    """The column holds base64 with '=' as 0.1 wrote it; the API speaks RFC 4387 §2.1.

    So a database written by 0.1 is found by the RFC form without a migration, and a
    row written now is found by a 0.1 worker sharing the file during an upgrade.
    """
    old, new = make_cert(n=1), make_cert(n=2)

    async def scenario() -> None:
        async with opened(f"sqlite:///{db_path}") as store:
            await store.add(new, max_per_aor=5, now=NOW)
        with raw(db_path) as conn:
            conn.execute(
                "INSERT INTO certificates (aor, sha256, cert_hash, der, not_before, not_after,"
                " created) SELECT aor, ?, ?, ?, not_before, not_after, created FROM certificates",
                (old.sha256, old.cert_hash + "=", old.der),
            )
            columns = {r[0] for r in conn.execute("SELECT cert_hash FROM certificates")}
        assert columns == {old.cert_hash + "=", new.cert_hash + "="}
        async with opened(f"sqlite:///{db_path}") as store:
            found = await store.get_by_cert_hash(old.cert_hash, NOW)
            assert found is not None and found.cert_hash == old.cert_hash
            assert len(found.cert_hash) == 27
            assert await store.delete(ALICE, old.cert_hash) == 1
            assert await store.get_by_aor(ALICE, NOW) == [new]

    run(scenario())


def test_sqlite_lookups_are_single_index_searches(db_path: Path) -> None:
    run(SqliteStore(db_path).close())
    with raw(db_path) as conn:
        for sql, index, column in [
            (sqlite_backend._SELECT_BY_AOR, "certificates_by_aor", "aor"),
            (sqlite_backend._SELECT_BY_CERT_HASH, "certificates_by_cert_hash", "cert_hash"),
        ]:
            plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", ("x", 0))]
            # One search, and no "USE TEMP B-TREE FOR ORDER BY": the index gives the order.
            assert plan == [f"SEARCH certificates USING INDEX {index} ({column}=?)"]


def test_sqlite_concurrent_processes_never_exceed_the_limit(db_path: Path) -> None:
    """Four processes, three certificates each, limit five: BEGIN IMMEDIATE serialises them."""
    run(SqliteStore(db_path).close())
    script = textwrap.dedent(
        """
        import asyncio, sys, time
        from datetime import UTC, datetime, timedelta
        from sipcert.errors import ForbiddenError
        from sipcert.storage import SqliteStore, StoredCertificate

        path, worker, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
        now = datetime(2026, 1, 15, tzinfo=UTC)

        async def main():
            store = SqliteStore(path)
            time.sleep(max(0.0, start - time.time()))
            for n in range(3):
                cert = StoredCertificate.from_der(
                    "alice@example.com", f"{worker}/{n}".encode(), not_before=now,
                    not_after=now + timedelta(days=1), created=now)
                try:
                    await store.add(cert, max_per_aor=5, now=now)
                    print("added")
                except ForbiddenError:
                    print("forbidden")
            await store.close()

        asyncio.run(main())
        """
    )
    start = str(time.time() + 1.5)
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(db_path), str(w), start],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for w in range(4)
    ]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        results += out.split()
    assert sorted(results) == ["added"] * 5 + ["forbidden"] * 7
    assert row_count(db_path) == 5


def test_sqlite_failed_write_rolls_back(db_path: Path) -> None:
    """An error after the INSERT (here a trigger) leaves nothing behind; the store goes on."""

    async def scenario() -> None:
        async with opened(f"sqlite:///{db_path}") as store:
            await store.add(make_cert(n=0), max_per_aor=5, now=NOW)
            with raw(db_path) as conn:
                conn.execute(
                    "CREATE TRIGGER fail AFTER INSERT ON certificates "
                    "BEGIN SELECT RAISE(FAIL, 'simulated failure'); END"
                )
            with pytest.raises(StorageError, match="simulated failure"):
                await store.add(make_cert(n=1), max_per_aor=5, now=NOW)
            assert row_count(db_path) == 1
            with raw(db_path) as conn:
                conn.execute("DROP TRIGGER fail")
            assert await store.add(make_cert(n=1), max_per_aor=5, now=NOW)
            assert row_count(db_path) == 2

    run(scenario())


def test_sqlite_locked_database(db_path: Path) -> None:
    """Another process holding the write lock past busy_timeout: a clear StorageError."""

    async def scenario() -> None:
        store = SqliteStore(db_path, busy_timeout=0.1)
        try:
            with raw(db_path) as conn:
                conn.execute("BEGIN IMMEDIATE")
                with pytest.raises(StorageError, match="locked"):
                    await store.add(make_cert(), max_per_aor=5, now=NOW)
                assert await store.get_by_aor(ALICE, NOW) == []  # WAL: reads go on
                conn.execute("ROLLBACK")
            assert await store.add(make_cert(), max_per_aor=5, now=NOW)
        finally:
            await store.close()

    run(scenario())


def test_sqlite_read_only_database(db_path: Path) -> None:
    async def scenario() -> None:
        async with opened(f"sqlite:///{db_path}") as store:
            await store.add(make_cert(n=0), max_per_aor=5, now=NOW)
        reader = SqliteStore(db_path, read_only=True)
        try:
            assert len(await reader.get_by_aor(ALICE, NOW)) == 1
            with pytest.raises(StorageError, match="read-only"):
                await reader.add(make_cert(n=1), max_per_aor=5, now=NOW)
            with pytest.raises(StorageError, match="read-only"):
                await reader.delete(ALICE, None)
        finally:
            await reader.close()
        assert row_count(db_path) == 1

    run(scenario())


def test_sqlite_disk_full(db_path: Path) -> None:
    """SQLITE_FULL (simulated with max_page_count) fails the add and changes nothing."""

    async def scenario() -> None:
        store = SqliteStore(db_path)
        try:
            await store.add(make_cert(n=0), max_per_aor=5, now=NOW)
            writer = store._writer
            assert writer is not None
            writer.execute("PRAGMA max_page_count = 1")  # clamps to the current size
            with pytest.raises(StorageError, match="full"):
                await store.add(make_cert(n=1, size=100_000), max_per_aor=5, now=NOW)
            writer.execute("PRAGMA max_page_count = 1073741823")
            assert [c.sha256 for c in await store.get_by_aor(ALICE, NOW)] == [make_cert(n=0).sha256]
            assert await store.add(make_cert(n=1, size=100_000), max_per_aor=5, now=NOW)
        finally:
            await store.close()

    run(scenario())


def test_sqlite_refuses_files_that_are_not_its_database(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not an SQLite database, not at all" * 100)
    with pytest.raises(StorageError, match="not an SQLite database"):
        SqliteStore(garbage)

    foreign = tmp_path / "kamailio.db"
    with raw(foreign) as conn:
        conn.execute("CREATE TABLE subscriber (id INTEGER PRIMARY KEY)")
    with pytest.raises(StorageError, match="not a sipcert database"):
        SqliteStore(foreign)

    newer = tmp_path / "newer.db"
    run(SqliteStore(newer).close())
    with raw(newer) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(StorageError, match="schema version 99"):
        SqliteStore(newer)


def test_sqlite_cannot_create_the_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory should be")
    with pytest.raises(StorageError, match="cannot create"):
        SqliteStore(blocker / "certs.db")
