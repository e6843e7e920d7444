"""Certificate storage in one SQLite file (stdlib :mod:`sqlite3`).

Why it looks like this:

* Reads run synchronously inside the ``async`` methods, on the caller's thread: the Store is
  read-mostly (every caller of every AOR does a GET, draft §4.5) and a synchronous lookup costs
  microseconds, while a hop to a worker thread (``aiosqlite``) costs twenty times more
  (FIELD-NOTES "Storage").
* Writes (PUT, DELETE, purge) are rare, wait for the disk (``synchronous=FULL``) and may wait
  for another process's lock (``busy_timeout``), so they run in a worker thread on their own
  connection and never stall the event loop. WAL lets reads go on meanwhile.
* ``add`` checks the per-AOR limit and inserts inside one ``BEGIN IMMEDIATE`` transaction, which
  takes SQLite's single write lock first: several processes sharing the file can never exceed
  the limit together.
* ``synchronous=FULL`` in WAL mode syncs the log on every commit, so an enrollment that was
  answered with success survives a crash the next instant.
* ``add`` calls are group-committed (issue 13): the calls that arrive while a commit is under
  way wait in a queue, and the next transaction takes all of them, each in its own
  ``SAVEPOINT``, with one commit and so one sync of the log. Each caller is answered only
  after that commit; one that fails (the §5.1 per-AOR limit, a constraint) is rolled back to
  its savepoint alone, so the others of its batch are stored and it leaves the store as it
  was. One sync per enrollment behind SQLite's write lock bounded enrollment at ~500/s.
* Every lookup is one indexed search (by AOR, by certHash); ``PRAGMA user_version`` records the
  schema version for future migrations.
* The database file (and SQLite's ``-wal``/``-shm`` files, which inherit its mode) is created
  0600 in a directory created 0700. An existing file keeps the mode its operator gave it.
"""

from __future__ import annotations

import asyncio
import os
import queue
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from sipcert.errors import StorageError
from sipcert.storage.base import (
    SchemaStatus,
    StoredCertificate,
    cert_hash_column,
    check_limit,
    ensure_utc,
    schema_refusal,
    too_many,
)
from sipcert.storage.feed import Change

__all__ = ["SCHEMA_VERSION", "GroupCommit", "SqliteStore"]

#: Value of ``PRAGMA user_version`` for the schema below; bump it with a migration.
#: 2 added ``label`` (the device label, migrated in place from 1 by :data:`_MIGRATIONS`);
#: 3 added ``changes``, the ordered change feed the edge publishers follow (issue 13).
SCHEMA_VERSION = 3

# The change feed (issue 13): one row per AOR whose answer may have changed, written in the
# transaction that changed it. AUTOINCREMENT: a sequence number is never reused, even after
# the newest rows are pruned, so a follower's position stays meaningful.
_CHANGES_TABLE = """CREATE TABLE IF NOT EXISTS changes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        aor TEXT NOT NULL,
        at INTEGER NOT NULL
    )"""

# Datetimes are stored as integer microseconds since the Unix epoch, UTC: exact, compact,
# ordered, and free of the text-format pitfalls of comparing ISO strings.
_SCHEMA = (
    """CREATE TABLE certificates (
        id INTEGER PRIMARY KEY,
        aor TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        cert_hash TEXT NOT NULL,
        der BLOB NOT NULL,
        not_before INTEGER NOT NULL,
        not_after INTEGER NOT NULL,
        created INTEGER NOT NULL,
        label TEXT,
        UNIQUE (aor, sha256)
    )""",
    # GET by AOR: the search and the ORDER BY in one index, no sort step.
    "CREATE INDEX certificates_by_aor ON certificates (aor, created, sha256)",
    # GET/DELETE by RFC 4387 certHash, likewise without a sort step.
    "CREATE INDEX certificates_by_cert_hash ON certificates (cert_hash, created, aor)",
    # purge_expired without a full scan.
    "CREATE INDEX certificates_by_not_after ON certificates (not_after)",
    _CHANGES_TABLE,
)

#: Columns each version adds to ``certificates``, added when missing: version -> (name, type).
_MIGRATIONS: dict[int, tuple[str, str]] = {2: ("label", "TEXT")}
#: Tables each version adds (``CREATE TABLE IF NOT EXISTS``): version -> statement.
_TABLE_MIGRATIONS: dict[int, str] = {3: _CHANGES_TABLE}
#: Changes older than this are pruned by :meth:`SqliteStore.purge_expired` (microseconds);
#: a follower further behind starts again from a full publication.
CHANGES_RETENTION_US = 7 * 86_400 * 1_000_000

_COLUMNS = "aor, sha256, cert_hash, der, not_before, not_after, created, label"
_SELECT_BY_AOR = (
    f"SELECT {_COLUMNS} FROM certificates WHERE aor = ? AND not_after >= ? "  # noqa: S608
    "ORDER BY created, sha256"
)
#: The columns of a GET answer alone, in the order and with the filter of _SELECT_BY_AOR.
_SELECT_ANSWER_BY_AOR = (
    "SELECT sha256, der, not_after, created, label FROM certificates "
    "WHERE aor = ? AND not_after >= ? ORDER BY created, sha256"
)
_SELECT_BY_CERT_HASH = (
    f"SELECT {_COLUMNS} FROM certificates WHERE cert_hash = ? AND not_after >= ? "  # noqa: S608
    "ORDER BY created, aor LIMIT 1"
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Primary SQLite result codes (https://sqlite.org/rescode.html) worth explaining to an operator.
_HINTS = {
    3: "permission denied",
    5: "the database is locked by another connection and the busy timeout expired",
    6: "the database is locked",
    8: "the database is read-only",
    10: "disk I/O error",
    11: "the database file is corrupt",
    13: "the disk is full (or the database reached its size limit)",
    14: "the database file cannot be opened",
    26: "the file is not an SQLite database",
}

_T = TypeVar("_T")

_I = TypeVar("_I")
_R = TypeVar("_R")

#: The most calls one group commit takes; the rest wait for the next one.
MAX_BATCH = 256
#: Seconds a group commit's thread waits for calls before it ends (GroupCommit).
IDLE_EXIT = 5.0


@dataclass(slots=True)
class _Waiting(Generic[_I, _R]):
    """One queued call, and where to send its outcome."""

    item: _I
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[_R] = field(repr=False)


def _settle(future: asyncio.Future[_R], result: _R | BaseException) -> None:
    """Answer one waiting call (on its own loop); a caller that gave up is skipped."""
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


class GroupCommit(Generic[_I, _R]):
    """Queue concurrent calls and hand them in batches to ``commit``, in a worker thread.

    ``commit(items)`` runs one transaction for the batch and returns one outcome per item (a
    result, or the exception that item gets). While it runs (an fsync, or a wait for another
    process's lock) new calls queue and the next batch takes them all: the transaction cost
    is shared, and the event loop never waits for SQLite's lock. Each caller is answered
    only after its batch's ``commit`` returned. Safe to share across threads and loops.

    The thread is this object's own, kept while calls keep coming (issue 13): a call is one
    append and, when the thread is idle, one wake-up, and each batch answers its callers
    with one ``call_soon_threadsafe`` per event loop. The loop's executor cost twice the
    instructions per call (its work item, futures and their chained callbacks, a second
    wake-up of the loop). The thread ends after :data:`IDLE_EXIT` seconds without calls
    and is started again by the next one (also in a forked child, which has no thread). The
    owners' ``close`` waits for a commit under way (it holds their connection's lock); at
    interpreter exit a commit still running is abandoned with the process, and SQLite rolls
    its transaction back (its callers were never answered).
    """

    def __init__(self, commit: Callable[[list[_I]], list[_R | BaseException]]) -> None:
        self._commit = commit
        self._lock = threading.Lock()
        self._queue: list[_Waiting[_I, _R]] = []
        self._draining = False
        self._thread: threading.Thread | None = None
        self._wake: queue.SimpleQueue[None] = queue.SimpleQueue()
        #: How many batches ran and how many calls they took (for tests and bench/).
        self.commits = 0
        self.batched = 0

    @property
    def draining(self) -> bool:
        """Whether calls are queued or being committed now (tests use it)."""
        return self._draining

    async def submit(self, item: _I) -> _R:
        """Queue ``item`` and wait for its outcome (raised if it is an exception)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_R] = loop.create_future()
        with self._lock:
            self._queue.append(_Waiting(item, loop, future))
            if not self._draining:
                self._draining = True
                thread = self._thread
                if thread is None or not thread.is_alive():
                    thread = self._thread = threading.Thread(
                        target=self._serve, name="sipcert-group-commit", daemon=True
                    )
                    thread.start()
                else:
                    self._wake.put(None)
        # A cancelled caller stops waiting; its item still runs (as a write in a thread that
        # cannot be interrupted always did).
        return await future

    def _serve(self) -> None:
        while True:
            self._drain()
            try:
                self._wake.get(timeout=IDLE_EXIT)
            except queue.Empty:
                with self._lock:
                    if not self._draining:  # no call since: end; the next one starts anew
                        self._thread = None
                        return

    def _drain(self) -> None:
        while True:
            with self._lock:
                batch = self._queue[:MAX_BATCH]
                del self._queue[:MAX_BATCH]
                if not batch:
                    self._draining = False
                    return
            try:
                outcomes = self._commit([waiting.item for waiting in batch])
            except BaseException as exc:  # a bug in commit: every caller hears of it
                outcomes = [exc for _ in batch]
            self.commits += 1
            self.batched += len(batch)
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, Any]]] = {}
            for waiting, outcome in zip(batch, outcomes, strict=True):
                by_loop.setdefault(waiting.loop, []).append((waiting.future, outcome))
            for loop, answers in by_loop.items():
                try:
                    loop.call_soon_threadsafe(_settle_all, answers)
                except RuntimeError:  # that caller's event loop is closed: nobody waits
                    pass


def _settle_all(answers: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, outcome in answers:
        _settle(future, outcome)


@dataclass(frozen=True, slots=True)
class _PendingAdd:
    """The arguments of one ``add`` waiting for a group commit."""

    cert: StoredCertificate
    max_per_aor: int
    now_us: int


def _to_us(value: datetime) -> int:
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_us(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def _row_to_cert(row: tuple[Any, ...]) -> StoredCertificate:
    aor, sha256, cert_hash, der, not_before, not_after, created, label = row
    # Checked when written (StoredCertificate.from_der in the PUT): not again per GET.
    return StoredCertificate.from_row(
        aor,
        sha256,
        cert_hash[:-1] if cert_hash.endswith("=") else cert_hash,  # cert_hash_from_column
        bytes(der),
        _EPOCH + timedelta(microseconds=not_before),
        _EPOCH + timedelta(microseconds=not_after),
        _EPOCH + timedelta(microseconds=created),
        label,
    )


def _record_change(conn: sqlite3.Connection, aor: str, at_us: int) -> None:
    """One row of the change feed, in the caller's transaction (issue 13)."""
    conn.execute("INSERT INTO changes (aor, at) VALUES (?, ?)", (aor, at_us))


def enable_wal(conn: sqlite3.Connection, busy_timeout: float) -> None:
    """Switch the file to WAL, retrying while another opener holds it (up to ``busy_timeout``).

    Switching needs the file to itself, and SQLite answers SQLITE_BUSY at once here rather
    than through the busy handler, so several processes opening a new file together (the
    Store's workers, or racing tests) failed now and then.
    """
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            busy = getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY
            if not busy or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def open_shared_sqlite(
    path: Path, subject: str, schema: Sequence[str], busy_timeout: float
) -> sqlite3.Connection:
    """Open (creating, mode 0600) a small SQLite file that a Store's workers share.

    WAL, ``synchronous = NORMAL`` (a power cut may forget the last few writes: callers keep
    only state whose loss is harmless, such as nonce counts and rate-limit buckets) and
    ``schema`` run once. Any failure is a :class:`StorageError` naming ``subject``.
    """
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    except OSError as exc:
        raise StorageError(f"{subject}: cannot create it: {exc.strerror}") from exc
    conn: sqlite3.Connection | None = None
    try:
        conn = sqlite3.connect(
            f"file:{quote(str(path))}?mode=rw",
            uri=True,
            timeout=busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        enable_wal(conn, busy_timeout)
        conn.execute("PRAGMA synchronous = NORMAL")
        for statement in schema:
            conn.execute(statement)
    except sqlite3.Error as exc:
        if conn is not None:
            conn.close()
        raise storage_error(subject, "opening", exc) from exc
    return conn


def storage_error(subject: str, action: str, exc: sqlite3.Error) -> StorageError:
    """A :class:`StorageError` naming the database, the operation and SQLite's reason."""
    code = getattr(exc, "sqlite_errorcode", None)
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    hint = _HINTS.get(code & 0xFF) if isinstance(code, int) else None
    reason = f"{hint} ({name}: {exc})" if hint else f"{name}: {exc}"
    return StorageError(f"{subject}: {action} failed: {reason}")


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            # SQLite already rolled back (e.g. after SQLITE_FULL or an I/O error).
            pass


class SqliteStore:
    """The :class:`~sipcert.storage.base.CertificateStore` contract on one SQLite file.

    ``busy_timeout`` is how long (seconds) a write waits for another connection's lock before
    failing with :class:`StorageError`. ``read_only`` opens the file with ``mode=ro``: reads
    work, every write fails with :class:`StorageError`. ``migrate=False`` leaves an empty or
    older file as it is (``sipcert db upgrade`` migrates it): :meth:`schema_status` reads it,
    every other operation refuses until :meth:`upgrade`. Instances may be shared across
    threads.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 5.0,
        read_only: bool = False,
        migrate: bool = True,
    ) -> None:
        self.path = Path(path).absolute()
        self.read_only = read_only
        self._leave_schema = not migrate
        #: Why operations refuse (an old schema left alone by ``migrate=False``), or None.
        self._outdated: str | None = None
        self._subject = f"certificate database {self.path}"
        self._busy_timeout = busy_timeout
        self._reader_lock = threading.Lock()
        self._writer_lock = threading.Lock()
        self._reader: sqlite3.Connection | None = None
        #: The reader's cursor for the hot GET's rows, kept: a new cursor per GET was ~4% of
        #: the read's instructions. It holds no transaction: fetchall() resets its statement.
        self._answers: sqlite3.Cursor | None = None
        self._writer: sqlite3.Connection | None = None
        #: The group commit of ``add`` calls.
        self.adds: GroupCommit[_PendingAdd, bool] = GroupCommit(self._commit_batch)
        if not read_only:
            self._create_file()
        try:
            self._writer = self._connect()
            self._init_schema(self._writer)
            self._reader = self._connect()
            self._answers = self._reader.cursor()
        except BaseException:
            self._close_connections()
            raise

    def __repr__(self) -> str:
        mode = ", read_only=True" if self.read_only else ""
        return f"SqliteStore({str(self.path)!r}{mode})"

    # -- opening -------------------------------------------------------------------------

    def _create_file(self) -> None:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
        except OSError as exc:
            raise StorageError(
                f"certificate database {self.path}: cannot create it: {exc.strerror or exc}"
            ) from exc

    def _connect(self) -> sqlite3.Connection:
        mode = "ro" if self.read_only else "rw"
        uri = f"file:{quote(str(self.path))}?mode={mode}"
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(
                uri,
                uri=True,
                timeout=self._busy_timeout,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,  # guarded by our locks
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            conn.execute("PRAGMA synchronous = FULL")
            if not self.read_only:
                enable_wal(conn, self._busy_timeout)
            return conn
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            raise storage_error(self._subject, "opening", exc) from exc

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        """Create the schema in an empty file, or check that the file has ours."""
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version < SCHEMA_VERSION and self._leave_schema:
                self._outdated = str(
                    schema_refusal(str(self.path), version, SCHEMA_VERSION, migrate=False)
                )
                return
            if version == 0 and not self.read_only:
                # Re-checked under the write lock: several processes may start at once.
                self._in_write_transaction("creating the schema", self._create_schema)
                version = conn.execute("PRAGMA user_version").fetchone()[0]
            if 0 < version < SCHEMA_VERSION and not self.read_only:
                self._in_write_transaction("migrating the schema", self._migrate)
                version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.Error as exc:
            raise storage_error(self._subject, "reading the schema version", exc) from exc
        if 0 < version < SCHEMA_VERSION:
            raise StorageError(
                f"certificate database {self.path}: schema version {version} is older than "
                f"version {SCHEMA_VERSION}: open it once read-write (sipcert serve) to migrate"
            )
        if version != SCHEMA_VERSION:
            raise StorageError(
                f"certificate database {self.path}: schema version {version} is not the "
                f"version {SCHEMA_VERSION} this sipcert uses"
            )

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        if conn.execute("PRAGMA user_version").fetchone()[0] != 0:
            return
        if conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]:
            raise StorageError(
                f"certificate database {self.path}: the file holds other tables and is not a "
                "sipcert database"
            )
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Bring an older schema up to :data:`SCHEMA_VERSION`, under the write lock.

        Each step adds a column only when it is missing (``ALTER TABLE ... ADD COLUMN``), so a
        file that another process migrated meanwhile, or a half-done manual upgrade, is fine.
        """
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        columns = {row[1] for row in conn.execute("PRAGMA table_info(certificates)")}
        for target in range(version + 1, SCHEMA_VERSION + 1):
            if target in _MIGRATIONS:
                name, kind = _MIGRATIONS[target]
                if name not in columns:
                    conn.execute(f"ALTER TABLE certificates ADD COLUMN {name} {kind}")
            if target in _TABLE_MIGRATIONS:
                conn.execute(_TABLE_MIGRATIONS[target])
            conn.execute(f"PRAGMA user_version = {target}")

    # -- the two paths -------------------------------------------------------------------

    async def schema_status(self) -> SchemaStatus:
        with self._reader_lock:
            if self._reader is None:
                raise StorageError(f"certificate database {self.path} is closed")
            try:
                version = self._reader.execute("PRAGMA user_version").fetchone()[0]
            except sqlite3.Error as exc:
                raise storage_error(self._subject, "reading the schema version", exc) from exc
        return SchemaStatus(int(version), SCHEMA_VERSION)

    async def upgrade(self) -> SchemaStatus:
        writer = self._writer
        if writer is None:
            raise StorageError(f"certificate database {self.path} is closed")
        self._leave_schema = False
        self._init_schema(writer)  # takes the write lock itself; BEGIN IMMEDIATE serialises
        self._outdated = None
        return await self.schema_status()

    def data_version(self) -> int:
        """SQLite's ``PRAGMA data_version`` of the reading connection (issue 13).

        It changes whenever another connection (another worker or process, or this store's
        own writer connection) has committed to the file since the last call: the answer
        cache of :mod:`sipcert.server.answers` is emptied on a change. Synchronous, about a
        microsecond: no file is read unless the WAL index says something changed.
        """
        rows = self._read("PRAGMA data_version", ())
        return int(rows[0][0])

    async def count(self, now: datetime) -> int:
        rows = self._read(
            "SELECT count(*) FROM certificates WHERE not_after >= ?",
            (_to_us(ensure_utc(now, "now")),),
        )
        return int(rows[0][0])

    def _read(
        self, sql: str, params: tuple[object, ...], *, kept: bool = False
    ) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` on the reader; ``kept``: through its kept cursor (the hot GET's)."""
        if self._outdated is not None:
            raise StorageError(self._outdated)
        with self._reader_lock:
            runner = self._answers if kept else self._reader
            if runner is None:
                raise StorageError(f"certificate database {self.path} is closed")
            try:
                return runner.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise storage_error(self._subject, "reading", exc) from exc

    def _in_write_transaction(self, action: str, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``work`` inside ``BEGIN IMMEDIATE``; on any failure roll back and re-raise."""
        with self._writer_lock:
            conn = self._writer
            if conn is None:
                raise StorageError(f"certificate database {self.path} is closed")
            try:
                conn.execute("BEGIN IMMEDIATE")
                result = work(conn)
                conn.execute("COMMIT")
                return result
            except sqlite3.Error as exc:
                _rollback(conn)
                raise storage_error(self._subject, action, exc) from exc
            except BaseException:
                _rollback(conn)
                raise

    async def _write(self, action: str, work: Callable[[sqlite3.Connection], _T]) -> _T:
        if self._outdated is not None:
            raise StorageError(self._outdated)
        return await asyncio.to_thread(self._in_write_transaction, action, work)

    # -- the contract --------------------------------------------------------------------

    async def get_by_aor(self, aor: str, now: datetime) -> list[StoredCertificate]:
        return self.read_by_aor(aor, _to_us(ensure_utc(now, "now")))

    def read_by_aor(self, aor: str, now_us: int) -> list[StoredCertificate]:
        """:meth:`get_by_aor` at ``now_us`` (Unix microseconds), synchronously.

        SQLite reads never wait for the event loop, so the Store's hot GET path
        (:mod:`sipcert.server.hotget`) calls this directly: no coroutine, no datetime.
        """
        return [_row_to_cert(row) for row in self._read(_SELECT_BY_AOR, (aor, now_us))]

    def read_answer_rows(
        self, aor: str, now_us: int
    ) -> list[tuple[str, bytes, int, int, str | None]]:
        """What a GET answer is made of, for the AOR's certificates valid at ``now_us``.

        ``(sha256, der, not_after_us, created_us, label)`` per certificate, in the order of
        :meth:`read_by_aor` and with its filter (never a certificate past its notAfter,
        draft §4.4), as stored: the rows were checked when written (issue 13: the hot GET
        renders its answer from these without making a :class:`StoredCertificate` each).
        """
        return self._read(_SELECT_ANSWER_BY_AOR, (aor, now_us), kept=True)

    async def get_by_cert_hash(self, cert_hash: str, now: datetime) -> StoredCertificate | None:
        rows = self._read(
            _SELECT_BY_CERT_HASH, (cert_hash_column(cert_hash), _to_us(ensure_utc(now, "now")))
        )
        return _row_to_cert(rows[0]) if rows else None

    async def add(self, cert: StoredCertificate, *, max_per_aor: int, now: datetime) -> bool:
        check_limit(max_per_aor)
        now_us = _to_us(ensure_utc(now, "now"))
        if self._outdated is not None:
            raise StorageError(self._outdated)
        return await self.adds.submit(_PendingAdd(cert, max_per_aor, now_us))

    def _commit_batch(self, batch: list[_PendingAdd]) -> list[bool | BaseException]:
        """One transaction for ``batch``: each item in a savepoint, one commit for all.

        An item that fails is rolled back to its savepoint and gets its own error; if the
        transaction itself fails (BEGIN, COMMIT, or a rollback SQLite refused), every item
        that had not already failed gets that error and nothing of the batch is stored.
        """
        outcomes: list[bool | BaseException] = []
        with self._writer_lock:
            conn = self._writer
            if conn is None:
                closed = StorageError(f"certificate database {self.path} is closed")
                return [closed for _ in batch]
            try:
                conn.execute("BEGIN IMMEDIATE")
                for item in batch:
                    conn.execute("SAVEPOINT enrollment")
                    try:
                        outcome: bool | BaseException = self._add_one(conn, item)
                    except sqlite3.Error as exc:
                        outcome = storage_error(self._subject, "adding a certificate", exc)
                    except Exception as exc:  # the limit, or a bad value: this item only
                        outcome = exc
                    if isinstance(outcome, BaseException):
                        conn.execute("ROLLBACK TO enrollment")
                    conn.execute("RELEASE enrollment")
                    outcomes.append(outcome)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                _rollback(conn)
                error = storage_error(self._subject, "adding a certificate", exc)
                return [
                    outcomes[i]
                    if i < len(outcomes) and isinstance(outcomes[i], Exception)
                    else error
                    for i in range(len(batch))
                ]
            except BaseException as exc:
                _rollback(conn)
                return [exc for _ in batch]
        return outcomes

    @staticmethod
    def _add_one(conn: sqlite3.Connection, item: _PendingAdd) -> bool:
        """The checks and the insert of one ``add``, inside the batch's transaction."""
        cert = item.cert
        if conn.execute(
            "SELECT 1 FROM certificates WHERE aor = ? AND sha256 = ?", (cert.aor, cert.sha256)
        ).fetchone():
            return False
        (count,) = conn.execute(
            "SELECT count(*) FROM certificates WHERE aor = ? AND not_after >= ?",
            (cert.aor, item.now_us),
        ).fetchone()
        if count >= item.max_per_aor:
            raise too_many(cert.aor, item.max_per_aor)
        conn.execute(
            f"INSERT INTO certificates ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
            (
                cert.aor,
                cert.sha256,
                cert_hash_column(cert.cert_hash),
                cert.der,
                _to_us(cert.not_before),
                _to_us(cert.not_after),
                _to_us(cert.created),
                cert.label,
            ),
        )
        _record_change(conn, cert.aor, item.now_us)
        return True

    async def delete(self, aor: str, cert_hash: str | None) -> int:
        def work(conn: sqlite3.Connection) -> int:
            if cert_hash is None:
                cursor = conn.execute("DELETE FROM certificates WHERE aor = ?", (aor,))
            else:
                cursor = conn.execute(
                    "DELETE FROM certificates WHERE aor = ? AND cert_hash = ?",
                    (aor, cert_hash_column(cert_hash)),
                )
            if cursor.rowcount:
                _record_change(conn, aor, _to_us(datetime.now(UTC)))
            return cursor.rowcount

        return await self._write("deleting certificates", work)

    async def purge_expired(self, now: datetime) -> int:
        now_us = _to_us(ensure_utc(now, "now"))

        def work(conn: sqlite3.Connection) -> int:
            # An expired certificate is already absent from every answer: no change to record.
            conn.execute(
                "DELETE FROM changes WHERE at < ? AND seq < (SELECT max(seq) FROM changes)",
                (now_us - CHANGES_RETENTION_US,),
            )
            return conn.execute("DELETE FROM certificates WHERE not_after < ?", (now_us,)).rowcount

        return await self._write("purging expired certificates", work)

    # -- the change feed (storage.feed.ChangeFeed, issue 13) -------------------------------

    async def aors(self, now: datetime) -> list[str]:
        """Every AOR with an unexpired certificate, sorted."""
        rows = self._read(
            "SELECT DISTINCT aor FROM certificates WHERE not_after >= ? ORDER BY aor",
            (_to_us(ensure_utc(now, "now")),),
        )
        return [row[0] for row in rows]

    async def changes_since(self, seq: int, limit: int = 1000) -> list[Change]:
        rows = self._read(
            "SELECT seq, aor FROM changes WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
        )
        return [Change(int(s), a) for s, a in rows]

    async def feed_bounds(self) -> tuple[int, int]:
        rows = self._read("SELECT coalesce(min(seq), 0), coalesce(max(seq), 0) FROM changes", ())
        low, high = rows[0]
        if not high:  # empty after pruning: AUTOINCREMENT remembers the last one
            seen = self._read("SELECT seq FROM sqlite_sequence WHERE name = 'changes'", ())
            high = low = int(seen[0][0]) if seen else 0
        return int(low), int(high)

    def wake_ups(self) -> AsyncIterator[None] | None:
        """None: SQLite has no notification across processes; followers poll."""
        return None

    async def close(self) -> None:
        self._close_connections()

    def _close_connections(self) -> None:
        with self._writer_lock, self._reader_lock:
            for conn in (self._reader, self._writer):
                if conn is not None:
                    conn.close()
            self._reader = self._writer = self._answers = None
