"""Certificate storage in MariaDB/MySQL (asyncmy), including a MariaDB Galera cluster (issue 10).

Why it looks like this:

* Driver: asyncmy (maintained, its own protocol code, cp311 wheels). aiomysql 0.3.2 was
  tried first: it imports ``escape_bytes_prefixed`` from PyMySQL, which PyMySQL 1.2 turned
  into a string, so every BLOB parameter failed with ``'str' object is not callable``.
* Galera replicates optimistically: locks are local to a node and a conflict between two
  nodes shows up at COMMIT as a deadlock (error 1213). So every write that must be atomic
  across frontends *writes one row both contenders touch*, and every transaction is retried
  a bounded number of times (:data:`RETRIES`) on 1213, 1205 (lock wait timeout) and 1020/
  1047 (row changed / node not ready). On one server the same row is an exclusive lock.
* ``add`` bumps the AOR's row in ``sipcert_aors`` first (``INSERT ... ON DUPLICATE KEY
  UPDATE``), then counts and inserts in the same READ COMMITTED transaction: two adds for one
  AOR serialise on one server and conflict at certification on two Galera nodes, so the
  per-AOR limit holds either way (a row lock on the certificates alone protects nothing on
  Galera, and nothing for an AOR with no row yet).
* The schema is created on first use (``CREATE TABLE IF NOT EXISTS``: DDL commits implicitly
  in MySQL and Galera runs it in total order), versioned in ``sipcert_schema_version``; a
  newer version is refused. Every table has a primary key (Galera needs one).
* AORs are stored as UTF-8 ``VARBINARY``: byte equality and byte order (which is code point
  order), like the other backends; a string UTF-8 cannot hold matches nothing. Datetimes are
  ``DATETIME(6)`` in UTC.
* Errors become :class:`StorageError` naming host, port and database, never the password.

Digest nonce counts and the guessing limiter (:class:`MysqlNonceCounter`,
:class:`MysqlLoginLimiter`) live in the same database, as with PostgreSQL.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from sipcert.errors import ConfigError, StorageError
from sipcert.proto.digest import DEFAULT_MAX_CLOCK_SKEW, DEFAULT_NONCE_LIFETIME
from sipcert.proto.ratelimit import LimitState, LoginLimits
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
from sipcert.storage.dbstate import DatabaseLoginLimiter, DatabaseNonceCounter, Step
from sipcert.storage.feed import Change

__all__ = [
    "RETRIES",
    "SCHEMA_VERSION",
    "MysqlLoginLimiter",
    "MysqlNonceCounter",
    "MysqlStore",
]

#: Value in ``sipcert_schema_version`` for the schema below; 2 added the transparency log,
#: 3 the change feed.
SCHEMA_VERSION = 3
#: Seconds a starting process waits for another one's migration.
_SCHEMA_LOCK_WAIT = 30


async def _schema_version(cur: Any) -> int:
    """The database's schema version; 0 when sipcert's tables are not there yet."""
    await cur.execute("SHOW TABLES LIKE 'sipcert_schema_version'")
    if await cur.fetchone() is None:
        return 0
    await cur.execute("SELECT MAX(version) FROM sipcert_schema_version")
    row = await cur.fetchone()
    return int(row[0] or 0)


#: Attempts of one transaction that lost a deadlock or a Galera certification.
RETRIES = 8
#: MySQL/MariaDB error codes worth a retry: deadlock or certification failure, lock wait
#: timeout, record changed since last read, node not ready (Galera, just after a view change).
_RETRYABLE = frozenset({1213, 1205, 1020, 1047})
#: Most expired rows one prune deletes, and seconds (of ``now``) between prunes.
PRUNE_BATCH = 5000

_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE IF NOT EXISTS sipcert_certificates (
            aor VARBINARY(2048) NOT NULL,
            sha256 CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
            cert_hash CHAR(28) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
            der MEDIUMBLOB NOT NULL,
            not_before DATETIME(6) NOT NULL,
            not_after DATETIME(6) NOT NULL,
            created DATETIME(6) NOT NULL,
            label TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
            PRIMARY KEY (aor, sha256),
            KEY sipcert_certificates_by_aor (aor, created, sha256),
            KEY sipcert_certificates_by_cert_hash (cert_hash, created, aor),
            KEY sipcert_certificates_by_not_after (not_after)
        ) ENGINE=InnoDB""",
        # One row per AOR that every add of it writes: the per-AOR limit's lock (above).
        """CREATE TABLE IF NOT EXISTS sipcert_aors (
            aor VARBINARY(2048) NOT NULL PRIMARY KEY,
            adds BIGINT NOT NULL
        ) ENGINE=InnoDB""",
        """CREATE TABLE IF NOT EXISTS sipcert_nonces (
            nonce VARBINARY(128) NOT NULL PRIMARY KEY,
            first_seen DOUBLE NOT NULL,
            nc BIGINT NOT NULL,
            KEY sipcert_nonces_by_age (first_seen)
        ) ENGINE=InnoDB""",
        """CREATE TABLE IF NOT EXISTS sipcert_limits (
            kind VARBINARY(16) NOT NULL,
            `key` VARBINARY(1024) NOT NULL,
            until DOUBLE NOT NULL,
            PRIMARY KEY (kind, `key`),
            KEY sipcert_limits_by_time (until)
        ) ENGINE=InnoDB""",
        """CREATE TABLE IF NOT EXISTS sipcert_schema_version (
            singleton TINYINT NOT NULL PRIMARY KEY,
            version INT NOT NULL
        ) ENGINE=InnoDB""",
    ),
    # The transparency log (issue 14; storage/tlog_mysql.py). Domains are UTF-8 VARBINARY
    # like the AORs: byte equality and byte order, the same as the other backends.
    2: (
        """CREATE TABLE IF NOT EXISTS sipcert_tlog_pending (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            domain VARBINARY(255) NOT NULL,
            operation TINYINT NOT NULL,
            commitment BINARY(32) NOT NULL,
            cert_sha256 BINARY(32) NOT NULL,
            seq BIGINT NULL,
            KEY sipcert_tlog_pending_open (seq, id),
            KEY sipcert_tlog_pending_cert (domain, cert_sha256, seq)
        ) ENGINE=InnoDB""",
        """CREATE TABLE IF NOT EXISTS sipcert_tlog_entries (
            domain VARBINARY(255) NOT NULL,
            idx BIGINT NOT NULL,
            data VARBINARY(1024) NOT NULL,
            PRIMARY KEY (domain, idx)
        ) ENGINE=InnoDB""",
        """CREATE TABLE IF NOT EXISTS sipcert_tlog_nodes (
            domain VARBINARY(255) NOT NULL,
            level TINYINT NOT NULL,
            idx BIGINT NOT NULL,
            hash BINARY(32) NOT NULL,
            PRIMARY KEY (domain, level, idx)
        ) ENGINE=InnoDB""",
        """CREATE TABLE IF NOT EXISTS sipcert_tlog_checkpoints (
            domain VARBINARY(255) NOT NULL PRIMARY KEY,
            size BIGINT NOT NULL,
            note BLOB NOT NULL
        ) ENGINE=InnoDB""",
        """CREATE TABLE IF NOT EXISTS sipcert_tlog_lease (
            name VARBINARY(64) NOT NULL PRIMARY KEY,
            holder VARBINARY(255) NOT NULL,
            expires_ms BIGINT NOT NULL
        ) ENGINE=InnoDB""",
    ),
    # The change feed the edge publishers follow (issue 13, storage/feed.py), written in
    # the transaction that changes the AOR. Galera's auto_increment_offset per node leaves
    # gaps and interleaves the numbers; the follower's cursor (proto.edge) allows for both.
    3: (
        """CREATE TABLE IF NOT EXISTS sipcert_changes (
            seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            aor VARBINARY(2048) NOT NULL,
            at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
        ) ENGINE=InnoDB""",
    ),
}

_COLUMNS = "aor, sha256, cert_hash, der, not_before, not_after, created, label"
_SELECT_BY_AOR = (
    f"SELECT {_COLUMNS} FROM sipcert_certificates "  # noqa: S608 (constant column list)
    "WHERE aor = %s AND not_after >= %s ORDER BY created, sha256"
)
_SELECT_BY_CERT_HASH = (
    f"SELECT {_COLUMNS} FROM sipcert_certificates "  # noqa: S608 (constant column list)
    "WHERE cert_hash = %s AND not_after >= %s ORDER BY created, aor LIMIT 1"
)
_BUMP_AOR = (
    "INSERT INTO sipcert_aors (aor, adds) VALUES (%s, 1) ON DUPLICATE KEY UPDATE adds = adds + 1"
)
_HELD_AND_COUNT = (
    "SELECT COALESCE(SUM(sha256 = %s), 0), COALESCE(SUM(not_after >= %s), 0) "
    "FROM sipcert_certificates WHERE aor = %s"
)
_INSERT = (
    f"INSERT INTO sipcert_certificates ({_COLUMNS}) "  # noqa: S608 (constant column list)
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
)
_DELETE_ALL = "DELETE FROM sipcert_certificates WHERE aor = %s"
_DELETE_ONE = "DELETE FROM sipcert_certificates WHERE aor = %s AND cert_hash = %s"
_PURGE = "DELETE FROM sipcert_certificates WHERE not_after < %s"
_RECORD_CHANGE = "INSERT INTO sipcert_changes (aor) VALUES (%s)"
# Rows older than this are pruned: a follower further behind publishes everything again.
_PRUNE_CHANGES = (
    "DELETE FROM sipcert_changes WHERE at < UTC_TIMESTAMP(6) - INTERVAL 7 DAY "
    "ORDER BY seq LIMIT 5000"
)

# Affected rows: 1 inserted, 2 raised, 0 unchanged (the client does not ask for FOUND_ROWS).
_ADVANCE = (
    "INSERT INTO sipcert_nonces (nonce, first_seen, nc) VALUES (%s, %s, %s) "
    "ON DUPLICATE KEY UPDATE nc = IF(nc < VALUES(nc), VALUES(nc), nc)"
)
_PRUNE_NONCES = "DELETE FROM sipcert_nonces WHERE first_seen < %s LIMIT %s"
# Absent and "full again at 0" answer alike, so a placeholder gives every contender a row to
# lock before it reads. An upsert locks an existing row exclusively at once (INSERT IGNORE
# would take a shared lock first, and 120 racers upgrading it deadlocked each other).
_PLACEHOLDER = (
    "INSERT INTO sipcert_limits (kind, `key`, until) VALUES (%s, %s, 0) "
    "ON DUPLICATE KEY UPDATE until = until"
)
_READ_LOCKED = "SELECT until FROM sipcert_limits WHERE kind = %s AND `key` = %s FOR UPDATE"
_READ_ONE = "SELECT until FROM sipcert_limits WHERE kind = %s AND `key` = %s"
_SET_LIMIT = "UPDATE sipcert_limits SET until = %s WHERE kind = %s AND `key` = %s"
_DELETE_LIMIT = "DELETE FROM sipcert_limits WHERE kind = %s AND `key` = %s"
_PRUNE_LIMITS = "DELETE FROM sipcert_limits WHERE until <= %s LIMIT %s"

_OWN_PARAMETERS = ("max_connections", "timeout")
_T = TypeVar("_T")


def _import_asyncmy() -> Any:
    try:
        import asyncmy
    except ImportError as exc:
        raise ConfigError("mysql:// certificate storage needs the asyncmy package") from exc
    return asyncmy


def _utf8(text: str) -> bytes | None:
    """``text`` as stored (UTF-8), or ``None`` if UTF-8 cannot hold it (a lone surrogate)."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return None


def _naive_utc(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(tzinfo=None)


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC)


def _row_to_cert(row: Any) -> StoredCertificate:
    aor, sha256, cert_hash, der, not_before, not_after, created, label = row
    return StoredCertificate(
        aor=bytes(aor).decode("utf-8"),
        sha256=sha256,
        cert_hash=cert_hash_from_column(cert_hash),
        der=bytes(der),
        not_before=_aware(not_before),
        not_after=_aware(not_after),
        created=_aware(created),
        label=label,
    )


class MysqlStore:
    """The :class:`~sipcert.storage.base.CertificateStore` contract on MariaDB or MySQL.

    Build it with :meth:`from_url`. One pool per store, created on first use (``open_store``
    must not block); ``max_connections`` bounds it, ``timeout`` bounds connecting. Use one
    instance within one event loop.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        user: str,
        password: str,
        database: str,
        max_connections: int = 10,
        timeout: float = 10.0,
        create_schema: bool = True,
        migrate: bool = True,
    ) -> None:
        if max_connections < 1:
            raise ConfigError(f"max_connections must be at least 1, not {max_connections}")
        if timeout <= 0:
            raise ConfigError(f"timeout must be positive, not {timeout}")
        if not database:
            raise ConfigError("MySQL URL: name the database (mysql://user@host/DATABASE)")
        self._driver = _import_asyncmy()
        errors = self._driver.errors
        self._errors: tuple[type[BaseException], ...] = (errors.MySQLError, OSError, TimeoutError)
        self._connect = {
            "host": host,
            "port": port,
            "user": user,
            "password": password,
            "db": database,
            "connect_timeout": timeout,
            "autocommit": True,
            "charset": "utf8mb4",
        }
        self.max_connections = max_connections
        self.where = f"{host}:{port}/{database}"
        self._password = password
        self._pool: Any = None
        self._pool_lock = asyncio.Lock()
        self._closed = False
        #: False: a database without sipcert's tables (Kamailio's ``subscriber``), left alone.
        self._create_schema = create_schema
        #: False: an empty or older schema is left for ``sipcert db upgrade`` (issue 10).
        self._migrate = migrate

    @classmethod
    def from_url(cls, url: str, *, create_schema: bool = True, migrate: bool = True) -> MysqlStore:
        """A store for ``mysql://user[:password]@host[:port]/database[?max_connections=N&
        timeout=S]`` (``mariadb://`` too). Error messages never echo the URL."""
        try:
            parts = urlsplit(url)
            port = parts.port or 3306
            pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True)
        except ValueError as exc:
            raise ConfigError(
                "malformed MySQL URL: expected mysql://user[:password]@host[:port]/database"
            ) from exc
        own: dict[str, str] = {}
        for key, value in pairs:
            if key not in _OWN_PARAMETERS:
                raise ConfigError(
                    f"MySQL URL: unknown parameter {key!r} (known: {', '.join(_OWN_PARAMETERS)})"
                )
            own[key] = value
        kwargs: dict[str, Any] = {}
        for key, kind in (("max_connections", int), ("timeout", float)):
            if key in own:
                try:
                    kwargs[key] = kind(own[key])
                except ValueError:
                    raise ConfigError(f"MySQL URL: {key}={own[key]!r} is not a number") from None
        return cls(
            host=parts.hostname or "localhost",
            port=port,
            user=unquote(parts.username or "root"),
            password=unquote(parts.password or ""),
            database=unquote(parts.path.lstrip("/")),
            create_schema=create_schema,
            migrate=migrate,
            **kwargs,
        )

    def __repr__(self) -> str:
        return f"MysqlStore({self.where!r})"

    # -- connections ----------------------------------------------------------------------

    def _failure(self, action: str, exc: BaseException) -> StorageError:
        reason = f"{type(exc).__name__}: {exc}".rstrip(": ")
        if self._password:
            reason = reason.replace(self._password, "***")
        return StorageError(f"certificate database {self.where}: {action} failed: {reason}")

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"certificate database {self.where} is closed")

    async def _get_pool(self) -> Any:
        if self._pool is not None:
            return self._pool
        async with self._pool_lock:
            self._check_open()
            if self._pool is None:
                try:
                    pool = await self._driver.create_pool(
                        minsize=1, maxsize=self.max_connections, **self._connect
                    )
                except self._errors as exc:
                    raise self._failure("connecting", exc) from exc
                try:
                    if self._create_schema:
                        await self._init_schema(pool, migrate=self._migrate)
                except BaseException:
                    pool.close()
                    await pool.wait_closed()
                    raise
                self._pool = pool
            return self._pool

    async def schema_status(self) -> SchemaStatus:
        """Read the version on a connection of its own (the pool may refuse an old schema)."""
        self._check_open()
        try:
            conn = await self._driver.connect(**self._connect)
        except self._errors as exc:
            raise self._failure("connecting", exc) from exc
        try:
            async with conn.cursor() as cur:
                return SchemaStatus(await _schema_version(cur), SCHEMA_VERSION)
        except self._errors as exc:
            raise self._failure("reading the schema version", exc) from exc
        finally:
            conn.close()

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

        async def work(conn: Any) -> int:
            async with conn.cursor() as cur:
                await cur.execute(
                    "SELECT COUNT(*) FROM sipcert_certificates WHERE not_after >= %s",
                    (_naive_utc(now),),
                )
                row = await cur.fetchone()
                return int(row[0])

        return await self.run("counting certificates", work)

    async def _init_schema(self, pool: Any, *, migrate: bool) -> None:
        """Create or migrate the schema (or, without ``migrate``, refuse an older one), and
        refuse one newer than this sipcert.

        ``GET_LOCK`` serialises processes starting at once on one server; under Galera it is
        node-local, but DDL runs in total order there and every statement is idempotent
        (``IF NOT EXISTS``, the version only grows).
        """

        async def attempt() -> None:
            async with pool.acquire() as conn, conn.cursor() as cur:
                await cur.execute("SELECT GET_LOCK('sipcert_schema', %s)", (_SCHEMA_LOCK_WAIT,))
                try:
                    await self._migrate_locked(cur, migrate=migrate)
                finally:
                    await cur.execute("SELECT RELEASE_LOCK('sipcert_schema')")

        # Two Galera nodes starting at once both write the version row: the loser of that
        # certification gets 1213 and tries again (every statement is idempotent).
        await self._with_retries("creating the schema", attempt)

    async def _migrate_locked(self, cur: Any, *, migrate: bool) -> None:
        version = await _schema_version(cur)
        refusal = schema_refusal(self.where, version, SCHEMA_VERSION, migrate=migrate)
        if refusal is not None:
            raise refusal
        for target in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[target]:
                await cur.execute(statement)
            await cur.execute(
                "INSERT INTO sipcert_schema_version (singleton, version) VALUES (1, %s) "
                "ON DUPLICATE KEY UPDATE version = GREATEST(version, VALUES(version))",
                (target,),
            )

    async def run(self, action: str, work: Callable[[Any], Awaitable[_T]]) -> _T:
        """``work(connection)`` in autocommit mode (a transaction if it begins one), retried
        on deadlocks and certification failures; driver errors become StorageError."""
        pool = await self._get_pool()

        async def attempt() -> _T:
            async with pool.acquire() as conn:
                try:
                    return await work(conn)
                except BaseException:
                    if conn.get_transaction_status():
                        await conn.rollback()
                    raise

        return await self._with_retries(action, attempt)

    async def _with_retries(self, action: str, attempt: Callable[[], Awaitable[_T]]) -> _T:
        """``attempt()``, again (at most :data:`RETRIES` times in all) after a deadlock or a
        certification failure; driver errors become StorageError."""
        for tries in range(RETRIES):
            try:
                return await attempt()
            except self._errors as exc:
                code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
                if code in _RETRYABLE and tries + 1 < RETRIES:
                    await asyncio.sleep(0.002 * 2**tries)
                    continue
                raise self._failure(action, exc) from exc
        raise StorageError(f"certificate database {self.where}: {action}: no attempt left")

    async def transaction(self, conn: Any) -> None:
        """Begin a READ COMMITTED transaction on ``conn`` (each statement sees the latest
        commits, so a count taken after a lock is current)."""
        async with conn.cursor() as cur:
            await cur.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        await conn.begin()

    # -- the contract --------------------------------------------------------------------

    async def get_by_aor(self, aor: str, now: datetime) -> list[StoredCertificate]:
        now = ensure_utc(now, "now")
        key = _utf8(aor)
        if key is None:
            self._check_open()
            return []

        async def work(conn: Any) -> list[Any]:
            async with conn.cursor() as cur:
                await cur.execute(_SELECT_BY_AOR, (key, _naive_utc(now)))
                rows: list[Any] = await cur.fetchall()
                return rows

        return [_row_to_cert(row) for row in await self.run("reading", work)]

    async def get_by_cert_hash(self, cert_hash: str, now: datetime) -> StoredCertificate | None:
        now = ensure_utc(now, "now")
        if not cert_hash.isascii():
            self._check_open()
            return None

        async def work(conn: Any) -> Any:
            async with conn.cursor() as cur:
                await cur.execute(
                    _SELECT_BY_CERT_HASH, (cert_hash_column(cert_hash), _naive_utc(now))
                )
                return await cur.fetchone()

        row = await self.run("reading", work)
        return _row_to_cert(row) if row is not None else None

    async def add(self, cert: StoredCertificate, *, max_per_aor: int, now: datetime) -> bool:
        check_limit(max_per_aor)
        now = ensure_utc(now, "now")
        key = _utf8(cert.aor)
        if key is None:
            raise StorageError(f"certificate database {self.where}: the AOR is not UTF-8 text")

        async def work(conn: Any) -> bool:
            await self.transaction(conn)
            async with conn.cursor() as cur:
                await cur.execute(_BUMP_AOR, (key,))
                await cur.execute(_HELD_AND_COUNT, (cert.sha256, _naive_utc(now), key))
                held, unexpired = await cur.fetchone()
                if held:
                    await conn.rollback()
                    return False
                if unexpired >= max_per_aor:
                    await conn.rollback()
                    raise too_many(cert.aor, max_per_aor)
                await cur.execute(
                    _INSERT,
                    (
                        key,
                        cert.sha256,
                        cert_hash_column(cert.cert_hash),
                        cert.der,
                        _naive_utc(cert.not_before),
                        _naive_utc(cert.not_after),
                        _naive_utc(cert.created),
                        cert.label,
                    ),
                )
                await cur.execute(_RECORD_CHANGE, (key,))
            await conn.commit()
            return True

        return await self.run("adding a certificate", work)

    async def delete(self, aor: str, cert_hash: str | None) -> int:
        key = _utf8(aor)
        if key is None or (cert_hash is not None and not cert_hash.isascii()):
            self._check_open()
            return 0

        async def work(conn: Any) -> int:
            await self.transaction(conn)
            async with conn.cursor() as cur:
                if cert_hash is None:
                    removed = int(await cur.execute(_DELETE_ALL, (key,)))
                else:
                    removed = int(
                        await cur.execute(_DELETE_ONE, (key, cert_hash_column(cert_hash)))
                    )
                if removed:
                    await cur.execute(_RECORD_CHANGE, (key,))
            await conn.commit()
            return removed

        return await self.run("deleting certificates", work)

    async def purge_expired(self, now: datetime) -> int:
        now = ensure_utc(now, "now")

        async def work(conn: Any) -> int:
            async with conn.cursor() as cur:
                # An expired certificate is already absent from every answer: no change.
                await cur.execute(_PRUNE_CHANGES)
                return int(await cur.execute(_PURGE, (_naive_utc(now),)))

        return await self.run("purging expired certificates", work)

    # -- the change feed (storage.feed.ChangeFeed, issue 13) -------------------------------

    async def aors(self, now: datetime) -> list[str]:
        """Every AOR with an unexpired certificate, sorted."""
        now = ensure_utc(now, "now")

        async def work(conn: Any) -> list[str]:
            async with conn.cursor() as cur:
                await cur.execute(
                    "SELECT DISTINCT aor FROM sipcert_certificates WHERE not_after >= %s "
                    "ORDER BY aor",
                    (_naive_utc(now),),
                )
                return [bytes(row[0]).decode("utf-8") for row in await cur.fetchall()]

        return await self.run("listing AORs", work)

    async def changes_since(self, seq: int, limit: int = 1000) -> list[Change]:
        async def work(conn: Any) -> list[Change]:
            async with conn.cursor() as cur:
                await cur.execute(
                    "SELECT seq, aor FROM sipcert_changes WHERE seq > %s ORDER BY seq LIMIT %s",
                    (seq, limit),
                )
                rows = await cur.fetchall()
            return [Change(int(row[0]), bytes(row[1]).decode("utf-8")) for row in rows]

        return await self.run("reading the change feed", work)

    async def feed_bounds(self) -> tuple[int, int]:
        async def work(conn: Any) -> tuple[int, int]:
            async with conn.cursor() as cur:
                await cur.execute(
                    "SELECT coalesce(min(seq), 0), coalesce(max(seq), 0) FROM sipcert_changes"
                )
                low, high = await cur.fetchone()
            return int(low), int(high)

        return await self.run("reading the change feed", work)

    def wake_ups(self) -> AsyncIterator[None] | None:
        """None: MariaDB has no notification; followers poll."""
        return None

    async def close(self) -> None:
        """Close the pool; later calls raise StorageError."""
        async with self._pool_lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
            await pool.wait_closed()


async def _execute(conn: Any, sql: str, args: tuple[Any, ...]) -> int:
    async with conn.cursor() as cur:
        return int(await cur.execute(sql, args))


class MysqlNonceCounter(DatabaseNonceCounter):
    """An :class:`~sipcert.proto.digest.AsyncNonceCounter` in ``sipcert_nonces``: one
    upsert per answer that raises ``nc`` only if it is higher (affected rows say which);
    two Galera nodes inserting one nonce conflict at certification and the retry refuses."""

    def __init__(
        self,
        store: MysqlStore,
        *,
        retention: float = DEFAULT_NONCE_LIFETIME + DEFAULT_MAX_CLOCK_SKEW,
    ) -> None:
        super().__init__(retention=retention)
        self._store = store

    def _storable(self, nonce: str) -> bool:
        key = _utf8(nonce)
        return key is not None and len(key) <= 128

    async def _raise_count(self, nonce: str, nc: int, now: float) -> bool:
        key = _utf8(nonce)

        async def work(conn: Any) -> bool:
            return await _execute(conn, _ADVANCE, (key, now, nc)) > 0

        return await self._store.run("recording a nonce count", work)

    async def prune(self, now: float) -> int:
        """Delete at most :data:`PRUNE_BATCH` forgotten nonces."""

        async def work(conn: Any) -> int:
            return await _execute(conn, _PRUNE_NONCES, (now - self._retention, PRUNE_BATCH))

        deleted = await self._store.run("pruning nonce counts", work)
        self._pruner.done(now, deleted, PRUNE_BATCH)
        return deleted


class MysqlLoginLimiter(DatabaseLoginLimiter):
    """An :class:`~sipcert.proto.ratelimit.AsyncLoginLimiter` in ``sipcert_limits``.

    Each decision: the keys locked in sorted order (an upsert that creates a placeholder for a
    missing one), the rows read ``FOR UPDATE``, the pure decision, the writes, COMMIT --
    retried when Galera certification or a deadlock says another frontend changed the same
    keys first.
    """

    def __init__(self, store: MysqlStore, limits: LoginLimits | None = None) -> None:
        super().__init__(limits)
        self._store = store

    async def _address_until(self, address: str) -> float | None:
        async def read(conn: Any) -> Any:
            async with conn.cursor() as cur:
                await cur.execute(_READ_ONE, (b"address", _key(address)))
                return await cur.fetchone()

        return _until(await self._store.run("checking a rate limit", read))

    async def _transaction(
        self,
        address: str,
        user: str | None,
        now: float,
        step: Step,
        action: str,
    ) -> None:
        keys = [(b"address", _key(address))]
        if user is not None:
            keys += [(b"user", _key(user)), (b"trusted", _key(f"{user}\n{address}"))]
        keys.sort()
        if self._pruner.due(now):
            await self.prune(now)

        async def work(conn: Any) -> None:
            await self._store.transaction(conn)
            async with conn.cursor() as cur:
                for kind, key in keys:
                    await cur.execute(_PLACEHOLDER, (kind, key))
                found: dict[bytes, float | None] = {}
                for kind, key in keys:
                    await cur.execute(_READ_LOCKED, (kind, key))
                    found[kind] = _until(await cur.fetchone())
                before = [found.get(b"address"), found.get(b"user"), found.get(b"trusted")]
                state = LimitState(*before)
                step(state)
                after = [state.address_at, state.user_at, state.trusted_until]
                for kind, old, new in zip(
                    (b"address", b"user", b"trusted"), before, after, strict=True
                ):
                    if kind not in found:
                        continue
                    key = dict(keys)[kind]
                    if new is None:
                        await cur.execute(_DELETE_LIMIT, (kind, key))
                    elif new != old:
                        await cur.execute(_SET_LIMIT, (new, kind, key))
            await conn.commit()

        await self._store.run(action, work)

    async def prune(self, now: float) -> int:
        """Delete at most :data:`PRUNE_BATCH` rows that no longer change an answer."""

        async def work(conn: Any) -> int:
            return await _execute(conn, _PRUNE_LIMITS, (now, PRUNE_BATCH))

        deleted = await self._store.run("pruning rate limits", work)
        self._pruner.done(now, deleted, PRUNE_BATCH)
        return deleted

    async def rows(self) -> int:
        """Rows in the table, placeholders included (tests and monitoring)."""

        async def work(conn: Any) -> int:
            async with conn.cursor() as cur:
                await cur.execute("SELECT COUNT(*) FROM sipcert_limits")
                return int((await cur.fetchone())[0])

        return await self._store.run("counting rate limits", work)


def _key(text: str) -> bytes:
    """A limiter key as bytes (surrogates kept, so nothing is refused); a longer one than
    the column holds by its SHA-256, so two long keys never share a bucket."""
    raw = text.encode("utf-8", "surrogatepass")
    return raw if len(raw) <= 1024 else b"sha256:" + hashlib.sha256(raw).hexdigest().encode()


def _until(row: Any) -> float | None:
    """A row's time; a placeholder (0) or no row is a full bucket."""
    if row is None or not row[0] > 0:
        return None
    return float(row[0])
