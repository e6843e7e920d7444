"""Certificate storage in PostgreSQL (asyncpg), for several Store processes sharing one database.

Why it looks like this:

* One asyncpg pool per store, created on first use (``open_store`` must not block, and an
  unreachable server should fail a request, not the start), ``min_size=1`` so the GET path
  always finds a warm connection, ``max_size`` configurable.
* The schema (the tables, their indexes and a one-row ``sipcert_schema_version`` table) is
  created on first use if missing, under a transaction-level advisory lock so that several
  processes starting at once do not race; :data:`_MIGRATIONS` lists the statements that lead
  from each version to the next, so a future version only appends to it.
* Every SQL statement is a constant. The ``schema`` URL parameter does not qualify table names:
  it sets the session's ``search_path`` to that one (quoted) schema at connection start, so the
  only SQL built from an identifier is ``CREATE SCHEMA``, which quotes it (:func:`quote_ident`).
* ``add`` serialises per AOR with ``pg_advisory_xact_lock(class, hashtext(aor))`` and then
  counts and inserts in the same READ COMMITTED transaction. Locking a row (``SELECT ... FOR
  UPDATE``) cannot protect an AOR that has no row yet, so it would need a table of AORs kept in
  step with this one (an upsert per enrollment and dead rows to clean up); the advisory lock
  needs no extra state, is released by COMMIT/ROLLBACK, also works behind a transaction-mode
  connection pooler, and a 32-bit hash collision between two AORs only makes their rare adds
  wait for each other. READ COMMITTED is set explicitly: each statement after the lock takes a
  fresh snapshot and so sees the previous holder's commit, which REPEATABLE READ or
  SERIALIZABLE (if the server's default said so) would not.
* Text columns use the "C" collation: exact byte equality, and ``ORDER BY sha256`` / ``aor``
  matches Python's ordering (and the SQLite backend's) whatever the database's locale.
* Datetimes are ``timestamptz`` (microseconds, like Python): exact round trips, readable by an
  operator with ``psql``.
* Errors become :class:`StorageError` naming host, port and database, never the password.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from sipcert.errors import ConfigError, StorageError
from sipcert.storage.base import (
    SchemaStatus,
    StoredCertificate,
    cert_hash_column,
    cert_hash_from_column,
    check_limit,
    ensure_utc,
    schema_refusal,
    too_many,
)
from sipcert.storage.feed import Change

__all__ = ["SCHEMA_VERSION", "PostgresStore", "quote_ident"]

#: Value in ``sipcert_schema_version`` for the schema below; bump it with a migration.
SCHEMA_VERSION = 4

#: Statements that take the schema from version ``n - 1`` to ``n``, run in one transaction.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE sipcert_certificates (
            aor text COLLATE "C" NOT NULL,
            sha256 text COLLATE "C" NOT NULL,
            cert_hash text COLLATE "C" NOT NULL,
            der bytea NOT NULL,
            not_before timestamptz NOT NULL,
            not_after timestamptz NOT NULL,
            created timestamptz NOT NULL,
            PRIMARY KEY (aor, sha256)
        )""",
        # GET by AOR: the search and the ORDER BY in one index, no sort step.
        "CREATE INDEX sipcert_certificates_by_aor ON sipcert_certificates (aor, created, sha256)",
        # GET/DELETE by RFC 4387 certHash, likewise without a sort step.
        "CREATE INDEX sipcert_certificates_by_cert_hash "
        "ON sipcert_certificates (cert_hash, created, aor)",
        # purge_expired without a full scan.
        "CREATE INDEX sipcert_certificates_by_not_after ON sipcert_certificates (not_after)",
        """CREATE TABLE sipcert_schema_version (
            singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
            version integer NOT NULL
        )""",
        "INSERT INTO sipcert_schema_version (version) VALUES (0)",
    ),
    # The device label of each certificate (display only; NULL for rows enrolled before).
    2: ('ALTER TABLE sipcert_certificates ADD COLUMN IF NOT EXISTS label text COLLATE "C"',),
    # State every frontend must share (issue 10): Digest nonce counts and the guessing
    # limiter (storage/postgres_state.py). Logged tables: a lost count would reopen replays.
    3: (
        """CREATE TABLE sipcert_nonces (
            nonce text COLLATE "C" PRIMARY KEY,
            first_seen double precision NOT NULL,
            nc bigint NOT NULL
        )""",
        "CREATE INDEX sipcert_nonces_by_age ON sipcert_nonces (first_seen)",
        """CREATE TABLE sipcert_limits (
            kind text COLLATE "C" NOT NULL,
            key text COLLATE "C" NOT NULL,
            until double precision NOT NULL,
            PRIMARY KEY (kind, key)
        )""",
        "CREATE INDEX sipcert_limits_by_time ON sipcert_limits (until)",
    ),
    # The change feed the edge publishers follow (issue 13, storage/feed.py): one row per
    # changed AOR, written in the transaction that changed it, announced by NOTIFY.
    4: (
        """CREATE TABLE sipcert_changes (
            seq bigserial PRIMARY KEY,
            aor text COLLATE "C" NOT NULL,
            at timestamptz NOT NULL DEFAULT now()
        )""",
    ),
}

# Advisory lock "classes" (first key of the two-int4 form): 'SIPC' and 'SIPD' in ASCII, so that
# sipcert's locks stay out of the way of other applications sharing the database.
_AOR_LOCK_CLASS = 0x53495043
_SCHEMA_LOCK_CLASS = 0x53495044

_COLUMNS = "aor, sha256, cert_hash, der, not_before, not_after, created, label"
_SELECT_BY_AOR = (
    f"SELECT {_COLUMNS} FROM sipcert_certificates "  # noqa: S608 (constant column list)
    "WHERE aor = $1 AND not_after >= $2 ORDER BY created, sha256"
)
_SELECT_BY_CERT_HASH = (
    f"SELECT {_COLUMNS} FROM sipcert_certificates "  # noqa: S608 (constant column list)
    "WHERE cert_hash = $1 AND not_after >= $2 ORDER BY created, aor LIMIT 1"
)
_LOCK_AOR = "SELECT pg_advisory_xact_lock($1::int4, hashtext($2))"
# One scan of the AOR's rows answers both questions: held already? how many unexpired?
_HELD_AND_COUNT = (
    "SELECT count(*) FILTER (WHERE sha256 = $2) AS held, "
    "count(*) FILTER (WHERE not_after >= $3) AS unexpired "
    "FROM sipcert_certificates WHERE aor = $1"
)
# ON CONFLICT only matters if something writes without the lock (an operator, say).
_INSERT = (
    f"INSERT INTO sipcert_certificates ({_COLUMNS}) "  # noqa: S608 (constant column list)
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (aor, sha256) DO NOTHING"
)
_DELETE_ALL = "DELETE FROM sipcert_certificates WHERE aor = $1"
_DELETE_ONE = "DELETE FROM sipcert_certificates WHERE aor = $1 AND cert_hash = $2"
_PURGE = "DELETE FROM sipcert_certificates WHERE not_after < $1"
_RECORD_CHANGE = "INSERT INTO sipcert_changes (aor) VALUES ($1)"
_NOTIFY = "SELECT pg_notify($1, '')"
# A follower further behind than this starts again from a full publication.
_PRUNE_CHANGES = (
    "DELETE FROM sipcert_changes WHERE at < now() - interval '7 days' "
    "AND seq < (SELECT max(seq) FROM sipcert_changes)"
)

# The URL parameters sipcert reads itself; the rest of the URL goes to asyncpg unchanged.
_OWN_PARAMETERS = ("schema", "max_connections", "timeout")
_MAX_IDENTIFIER_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1; longer names are truncated

_T = TypeVar("_T")
log = logging.getLogger("sipcert.storage")


def quote_ident(name: str) -> str:
    """``name`` as a PostgreSQL quoted identifier (like ``quote_ident()``, always quoted).

    Quoting (``"`` doubled inside) makes any name safe to splice into SQL; NUL, which
    PostgreSQL cannot store, and names it would silently truncate are refused.
    """
    if not name or "\x00" in name or len(name.encode()) > _MAX_IDENTIFIER_BYTES:
        raise ConfigError(
            f"{name!r} is not a usable PostgreSQL schema name "
            f"(1 to {_MAX_IDENTIFIER_BYTES} bytes, no NUL)"
        )
    return '"' + name.replace('"', '""') + '"'


def _import_asyncpg() -> Any:
    try:
        import asyncpg  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ConfigError("postgresql:// certificate storage needs the asyncpg package") from exc
    return asyncpg


def describe_dsn(dsn: str) -> str:
    """``host:port/database`` of a libpq URL, for messages: no user, password or options."""
    try:
        parts = urlsplit(dsn)
        query = dict(parse_qsl(parts.query))
    except ValueError:
        return "<unparsable URL>"
    hosts = unquote(parts.netloc.rpartition("@")[2]) or query.get("host") or "localhost"
    if "," not in hosts and not re.search(r":\d+$", hosts) and not hosts.startswith("/"):
        hosts = f"{hosts}:{query.get('port', '5432')}"
    database = unquote(parts.path.lstrip("/")) or query.get("dbname") or "(default database)"
    return f"{hosts}/{database}"


def _passwords_in(dsn: str) -> list[str]:
    """Every spelling of the URL's password(s), to scrub from driver messages."""
    try:
        parts = urlsplit(dsn)
        found = [parts.password or "", dict(parse_qsl(parts.query)).get("password", "")]
        raw = parts.netloc.rpartition("@")[0].partition(":")[2]
    except ValueError:
        return []
    return sorted({p for p in [*found, raw, unquote(raw)] if p}, key=len, reverse=True)


def _storable(key: str) -> bool:
    """Whether PostgreSQL text can hold ``key`` (no NUL, no lone surrogate).

    A key it cannot hold matches no row: reads answer "nothing" as the other backends do,
    instead of failing with a server-side encoding error.
    """
    if "\x00" in key:
        return False
    if key.isascii():
        return True
    try:
        key.encode()
    except UnicodeEncodeError:
        return False
    return True


def _row_to_cert(row: Any) -> StoredCertificate:
    return StoredCertificate(
        aor=row["aor"],
        sha256=row["sha256"],
        cert_hash=cert_hash_from_column(row["cert_hash"]),
        der=bytes(row["der"]),
        not_before=row["not_before"],
        not_after=row["not_after"],
        created=row["created"],
        label=row["label"],
    )


def _affected(status: str) -> int:
    """Rows counted in an asyncpg command status such as ``DELETE 3`` or ``INSERT 0 1``."""
    return int(status.rsplit(" ", 1)[-1])


class PostgresStore:
    """The :class:`~sipcert.storage.base.CertificateStore` contract on a PostgreSQL database.

    ``dsn`` is a libpq URL for asyncpg (``postgresql://user:password@host:port/database?...``).
    ``schema`` keeps the tables in that schema (created if missing) by making it the session's
    ``search_path``; without it the tables go where the server's ``search_path`` puts them.
    ``max_connections`` bounds the pool; ``timeout`` (seconds) bounds connecting and each
    statement. ``migrate=False`` leaves an empty or older schema as it is (``sipcert db
    upgrade`` migrates it): :meth:`schema_status` reads it, every other operation refuses.
    Use one instance within one event loop; :meth:`from_url` reads all of this from one URL.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        max_connections: int = 10,
        timeout: float = 10.0,
        migrate: bool = True,
    ) -> None:
        self._migrate = migrate
        if max_connections < 1:
            raise ConfigError(f"max_connections must be at least 1, not {max_connections}")
        if timeout <= 0:
            raise ConfigError(f"timeout must be positive, not {timeout}")
        self._asyncpg = _import_asyncpg()
        self._dsn = dsn
        self.schema = schema
        self._server_settings = {"search_path": quote_ident(schema)} if schema else None
        if schema and "search_path" in dict(parse_qsl(urlsplit(dsn).query)):
            raise ConfigError("give either schema or search_path, not both")
        self.max_connections = max_connections
        self._timeout = timeout
        self.where = describe_dsn(dsn) + (f" (schema {schema})" if schema else "")
        self._passwords = _passwords_in(dsn)
        self._errors = (
            self._asyncpg.PostgresError,
            self._asyncpg.InterfaceError,
            self._asyncpg.exceptions.InternalClientError,
            OSError,
            TimeoutError,
        )
        self._pool: Any = None
        self._pool_lock = asyncio.Lock()
        self._closed = False
        #: NOTIFY channel of this schema's change feed (pg_notify takes any text name).
        self.channel = f"sipcert_changes.{schema or ''}"[:_MAX_IDENTIFIER_BYTES]

    @classmethod
    def from_url(cls, url: str, *, migrate: bool = True) -> PostgresStore:
        """A store for ``postgresql://...`` or ``postgres://...``.

        sipcert reads and removes ``schema``, ``max_connections`` and ``timeout`` from the
        query; every other parameter (``sslmode``, ``search_path``, server settings...) is
        passed on to asyncpg. Error messages never echo the URL (it may hold a password).
        """
        try:
            parts = urlsplit(url)
            _ = parts.port  # refuses a non-numeric port now rather than at first use
            pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True)
        except ValueError as exc:
            raise ConfigError(
                "malformed PostgreSQL URL: expected "
                "postgresql://user[:password]@host[:port]/database[?schema=NAME]"
            ) from exc
        own: dict[str, str] = {}
        passed: list[tuple[str, str]] = []
        for key, value in pairs:
            if key in _OWN_PARAMETERS:
                if key in own:
                    raise ConfigError(f"PostgreSQL URL: {key} given twice")
                own[key] = value
            else:
                passed.append((key, value))
        dsn = urlunsplit(parts._replace(query=urlencode(passed), fragment=""))
        kwargs: dict[str, Any] = {}
        if "schema" in own:
            kwargs["schema"] = own["schema"]
            quote_ident(own["schema"])  # refuse an empty or overlong name now
        for key, kind in (("max_connections", int), ("timeout", float)):
            if key in own:
                try:
                    kwargs[key] = kind(own[key])
                except ValueError:
                    raise ConfigError(
                        f"PostgreSQL URL: {key}={own[key]!r} is not a number"
                    ) from None
        return cls(dsn, migrate=migrate, **kwargs)

    def __repr__(self) -> str:
        return f"PostgresStore({self.where!r})"

    # -- connections ----------------------------------------------------------------------

    def _failure(self, action: str, exc: BaseException) -> StorageError:
        reason = f"{type(exc).__name__}: {exc}".rstrip(": ")
        for password in self._passwords:
            reason = reason.replace(password, "***")
        return StorageError(f"certificate database {self.where}: {action} failed: {reason}")

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"certificate database {self.where} is closed")

    async def _get_pool(self) -> Any:
        if self._pool is not None:  # the hot path: no lock once the pool exists
            return self._pool
        async with self._pool_lock:
            self._check_open()
            if self._pool is None:
                try:
                    pool = await self._asyncpg.create_pool(
                        self._dsn,
                        min_size=1,
                        max_size=self.max_connections,
                        timeout=self._timeout,
                        command_timeout=self._timeout,
                        server_settings=self._server_settings,
                    )
                except self._errors as exc:
                    raise self._failure("connecting", exc) from exc
                try:
                    await self._init_schema(pool, migrate=self._migrate)
                except BaseException:
                    await pool.close()
                    raise
                self._pool = pool
            return self._pool

    async def schema_status(self) -> SchemaStatus:
        """Read the version on a connection of its own (the pool may refuse an old schema)."""
        self._check_open()
        try:
            conn = await self._asyncpg.connect(
                self._dsn, timeout=self._timeout, server_settings=self._server_settings
            )
        except self._errors as exc:
            raise self._failure("connecting", exc) from exc
        try:
            version = 0
            if await conn.fetchval("SELECT to_regclass('sipcert_schema_version')"):
                version = await conn.fetchval("SELECT version FROM sipcert_schema_version")
            return SchemaStatus(int(version), SCHEMA_VERSION)
        except self._errors as exc:
            raise self._failure("reading the schema version", exc) from exc
        finally:
            await conn.close()

    async def upgrade(self) -> SchemaStatus:
        async with self._pool_lock:
            self._check_open()
            self._migrate = True
            if self._pool is not None:  # already open (so already current): check again
                await self._init_schema(self._pool, migrate=True)
        await self._get_pool()
        return await self.schema_status()

    async def count(self, now: datetime) -> int:
        now = ensure_utc(now, "now")

        async def work(pool: Any) -> int:
            return int(
                await pool.fetchval(
                    "SELECT count(*) FROM sipcert_certificates WHERE not_after >= $1", now
                )
            )

        return await self._run("counting certificates", work)

    async def _init_schema(self, pool: Any, *, migrate: bool) -> None:
        """Create or migrate the schema (or, without ``migrate``, refuse an older one), and
        refuse one this sipcert does not know."""
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1::int4, 0)", _SCHEMA_LOCK_CLASS)
                if self.schema is not None and not await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", self.schema
                ):
                    # Checked first: CREATE SCHEMA IF NOT EXISTS needs the CREATE privilege
                    # even when the schema exists.
                    await conn.execute(f"CREATE SCHEMA {quote_ident(self.schema)}")
                version = 0
                if await conn.fetchval("SELECT to_regclass('sipcert_schema_version')"):
                    version = await conn.fetchval("SELECT version FROM sipcert_schema_version")
                elif await conn.fetchval("SELECT to_regclass('sipcert_certificates')"):
                    raise StorageError(
                        f"certificate database {self.where}: sipcert_certificates exists "
                        "without sipcert_schema_version; not a sipcert schema"
                    )
                refusal = schema_refusal(self.where, version, SCHEMA_VERSION, migrate=migrate)
                if refusal is not None:
                    raise refusal
                for target in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in _MIGRATIONS[target]:
                        await conn.execute(statement)
                    await conn.execute("UPDATE sipcert_schema_version SET version = $1", target)
        except self._errors as exc:
            raise self._failure("creating the schema", exc) from exc

    async def _run(self, action: str, work: Callable[[Any], Awaitable[_T]]) -> _T:
        """``work(pool)``, with driver errors turned into :class:`StorageError`."""
        pool = await self._get_pool()
        try:
            return await work(pool)
        except self._errors as exc:
            raise self._failure(action, exc) from exc

    # -- the contract --------------------------------------------------------------------

    async def get_by_aor(self, aor: str, now: datetime) -> list[StoredCertificate]:
        now = ensure_utc(now, "now")
        if not _storable(aor):
            self._check_open()
            return []

        async def work(pool: Any) -> list[Any]:
            rows: list[Any] = await pool.fetch(_SELECT_BY_AOR, aor, now)
            return rows

        return [_row_to_cert(row) for row in await self._run("reading", work)]

    async def get_by_cert_hash(self, cert_hash: str, now: datetime) -> StoredCertificate | None:
        now = ensure_utc(now, "now")
        if not _storable(cert_hash):
            self._check_open()
            return None

        async def work(pool: Any) -> Any:
            return await pool.fetchrow(_SELECT_BY_CERT_HASH, cert_hash_column(cert_hash), now)

        row = await self._run("reading", work)
        return _row_to_cert(row) if row is not None else None

    async def add(self, cert: StoredCertificate, *, max_per_aor: int, now: datetime) -> bool:
        check_limit(max_per_aor)
        now = ensure_utc(now, "now")

        async def work(pool: Any) -> bool:
            async with pool.acquire() as conn, conn.transaction(isolation="read_committed"):
                await conn.execute(_LOCK_AOR, _AOR_LOCK_CLASS, cert.aor)
                counts = await conn.fetchrow(_HELD_AND_COUNT, cert.aor, cert.sha256, now)
                if counts["held"]:
                    return False
                if counts["unexpired"] >= max_per_aor:
                    raise too_many(cert.aor, max_per_aor)
                status = await conn.execute(
                    _INSERT,
                    cert.aor,
                    cert.sha256,
                    cert_hash_column(cert.cert_hash),
                    cert.der,
                    cert.not_before,
                    cert.not_after,
                    cert.created,
                    cert.label,
                )
                if _affected(status) != 1:
                    return False
                await conn.execute(_RECORD_CHANGE, cert.aor)
                await conn.execute(_NOTIFY, self.channel)  # delivered at COMMIT
                return True

        return await self._run("adding a certificate", work)

    async def delete(self, aor: str, cert_hash: str | None) -> int:
        if not _storable(aor) or (cert_hash is not None and not _storable(cert_hash)):
            self._check_open()
            return 0

        async def work(pool: Any) -> int:
            async with pool.acquire() as conn, conn.transaction(isolation="read_committed"):
                if cert_hash is None:
                    removed = _affected(await conn.execute(_DELETE_ALL, aor))
                else:
                    removed = _affected(
                        await conn.execute(_DELETE_ONE, aor, cert_hash_column(cert_hash))
                    )
                if removed:
                    await conn.execute(_RECORD_CHANGE, aor)
                    await conn.execute(_NOTIFY, self.channel)
                return removed

        return await self._run("deleting certificates", work)

    async def purge_expired(self, now: datetime) -> int:
        now = ensure_utc(now, "now")

        async def work(pool: Any) -> int:
            # An expired certificate is already absent from every answer: nothing to record.
            await pool.execute(_PRUNE_CHANGES)
            return _affected(await pool.execute(_PURGE, now))

        return await self._run("purging expired certificates", work)

    # -- the change feed (storage.feed.ChangeFeed, issue 13) -------------------------------

    async def aors(self, now: datetime) -> list[str]:
        """Every AOR with an unexpired certificate, sorted."""
        now = ensure_utc(now, "now")

        async def work(pool: Any) -> list[str]:
            rows = await pool.fetch(
                "SELECT DISTINCT aor FROM sipcert_certificates WHERE not_after >= $1 ORDER BY aor",
                now,
            )
            return [row[0] for row in rows]

        return await self._run("listing AORs", work)

    async def changes_since(self, seq: int, limit: int = 1000) -> list[Change]:
        async def work(pool: Any) -> list[Change]:
            rows = await pool.fetch(
                "SELECT seq, aor FROM sipcert_changes WHERE seq > $1 ORDER BY seq LIMIT $2",
                seq,
                limit,
            )
            return [Change(int(row[0]), row[1]) for row in rows]

        return await self._run("reading the change feed", work)

    async def feed_bounds(self) -> tuple[int, int]:
        async def work(pool: Any) -> tuple[int, int]:
            row = await pool.fetchrow(
                "SELECT coalesce(min(seq), 0), coalesce(max(seq), 0) FROM sipcert_changes"
            )
            return int(row[0]), int(row[1])

        return await self._run("reading the change feed", work)

    def wake_ups(self) -> AsyncIterator[None] | None:
        """LISTEN on a connection of its own; yields after each NOTIFY (and every second,
        so a lost connection is noticed and re-made)."""
        return self._listen()

    async def _listen(self) -> AsyncIterator[None]:
        await self._get_pool()  # the schema exists before anyone listens
        wake = asyncio.Event()

        def notified(*_args: object) -> None:
            wake.set()

        while True:
            self._check_open()
            try:
                conn = await self._asyncpg.connect(
                    self._dsn, timeout=self._timeout, server_settings=self._server_settings
                )
            except self._errors as exc:  # the follower polls meanwhile; try again shortly
                log.warning("%s", self._failure("listening for changes", exc))
                await asyncio.sleep(1.0)
                yield None
                continue
            try:
                await conn.add_listener(self.channel, notified)
                yield None  # listening now: whatever commits from here on wakes us
                while not conn.is_closed():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):
                            await wake.wait()
                    wake.clear()
                    yield None
            except self._errors as exc:
                log.warning("%s", self._failure("listening for changes", exc))
            finally:
                with contextlib.suppress(*self._errors):
                    await conn.close()

    async def close(self) -> None:
        """Close the pool, waiting for queries in flight; later calls raise StorageError."""
        async with self._pool_lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
