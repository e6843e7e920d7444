"""The Digest guessing limiter's state, shared by every worker of one host: an SQLite file.

Each :meth:`SqliteLoginLimiter.admit` and :meth:`~SqliteLoginLimiter.release` is one
``BEGIN IMMEDIATE`` transaction that reads the (address, user, trust) state, runs the pure
decision of :mod:`sipcert.proto.ratelimit` and writes it back, so N workers pass exactly as
many guesses as one would. Like the nonce counts (:mod:`sipcert.server.nonces`) it is
consulted only on authenticated requests; the synchronous calls cost the event loop little.

Rows are bounded: a bucket that is full again is deleted (it answers exactly as a missing
one), expired trust is deleted, and past ``max_keys`` rows per table the buckets closest to
full (and the oldest trust) go first. The check runs every 1,000 new rows per worker.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

from sipcert.errors import StorageError
from sipcert.proto.ratelimit import (
    Admission,
    LimitState,
    LoginLimits,
    decide,
    release,
)
from sipcert.storage.sqlite import GroupCommit, open_shared_sqlite, storage_error

__all__ = ["GroupedLoginLimiter", "SqliteLoginLimiter"]

#: New rows (per worker) between two checks of the row cap.
_CHECK_EVERY = 1000
_TABLES = ("addresses", "users", "trusted")

#: One read-change-write of :meth:`SqliteLoginLimiter.run_many`: address, user, now, the
#: pure step that changes the state, and what it is doing (for an error message).
LimitOp = tuple[str, str | None, float, Callable[[LimitState], None], str]


def _raise_first(outcomes: list[BaseException | None]) -> None:
    for outcome in outcomes:
        if outcome is not None:
            raise outcome


class SqliteLoginLimiter:
    """A :class:`~sipcert.proto.ratelimit.LoginLimiter` in an SQLite file (WAL)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        limits: LoginLimits | None = None,
        *,
        busy_timeout: float = 5.0,
    ) -> None:
        self.path = Path(path).absolute()
        self.limits = limits or LoginLimits()
        self._lock = threading.Lock()
        self._new_rows = 0
        self._subject = f"rate-limit database {self.path}"
        # A power cut forgets some recent failures: the buckets start fuller, no harm.
        schema = [
            statement
            for table in _TABLES
            for statement in (
                f"CREATE TABLE IF NOT EXISTS {table} "
                "(key TEXT PRIMARY KEY, until REAL NOT NULL) WITHOUT ROWID",
                f"CREATE INDEX IF NOT EXISTS {table}_by_time ON {table} (until)",
            )
        ]
        conn = open_shared_sqlite(self.path, self._subject, schema, busy_timeout)
        self._conn: sqlite3.Connection | None = conn
        try:
            reader = open_shared_sqlite(self.path, self._subject, (), busy_timeout)
        except BaseException:
            conn.close()
            raise
        self._reader: sqlite3.Connection | None = reader
        self._read_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SqliteLoginLimiter({str(self.path)!r})"

    def admit(self, address: str, user: str | None, now: float) -> Admission:
        """See :meth:`sipcert.proto.ratelimit.LoginLimiter.admit`.

        A challenge (no ``user``) that is admitted changes nothing: it is answered from one
        read on a connection of its own, without the write lock, so unauthenticated requests
        do not queue on it.
        """
        quick = self.admit_challenge(address, user, now)
        if quick is not None:
            return quick
        op, result = self.admit_op(address, user, now)
        _raise_first(self.run_many([op]))
        return result[0]

    def admit_challenge(self, address: str, user: str | None, now: float) -> Admission | None:
        """The answer for a challenge that a read alone decides, else None (take the lock)."""
        if user is not None:
            return None
        with self._read_lock:
            conn = self._reader
            if conn is None:
                raise StorageError(f"{self._subject} is closed")
            try:
                state = LimitState(self._get(conn, "addresses", address), None, None)
            except sqlite3.Error as exc:
                raise storage_error(self._subject, "checking a rate limit", exc) from exc
        if decide(self.limits, state, now, checks=False).admitted:
            return Admission(True)
        return None

    def admit_op(
        self, address: str, user: str | None, now: float
    ) -> tuple[LimitOp, list[Admission]]:
        """The read-decide-write of one admission, for :meth:`run_many`, and its result."""
        result: list[Admission] = []

        def step(state: LimitState) -> None:
            result.append(decide(self.limits, state, now, checks=user is not None))

        return (address, user, now, step, "checking a rate limit"), result

    def release(
        self, address: str, user: str, admission: Admission, now: float, *, trust: bool
    ) -> None:
        """See :meth:`sipcert.proto.ratelimit.LoginLimiter.release`."""
        _raise_first(self.run_many([self.release_op(address, user, admission, now, trust=trust)]))

    def release_op(
        self, address: str, user: str, admission: Admission, now: float, *, trust: bool
    ) -> LimitOp:
        """The read-change-write of one release, for :meth:`run_many`."""
        period = self.limits.trust_period if trust else 0.0

        def step(state: LimitState) -> None:
            release(state, admission, now, trust=period)

        return (address, user, now, step, "releasing a rate limit")

    def run_many(self, ops: list[LimitOp]) -> list[BaseException | None]:
        """Apply ``ops`` in order in one ``BEGIN IMMEDIATE`` transaction.

        Each reads its rows, runs its pure step and writes what changed, after the ops
        before it: exactly what one transaction each would do. If the transaction fails,
        none is applied and each gets the :class:`StorageError`.
        """
        with self._lock:
            conn = self._conn
            if conn is None:
                return [StorageError(f"{self._subject} is closed") for _ in ops]
            outcomes: list[BaseException | None] = []
            try:
                conn.execute("BEGIN IMMEDIATE")
                for op in ops:
                    try:
                        self._apply(conn, op)
                        outcomes.append(None)
                    except sqlite3.Error:
                        raise
                    except Exception as exc:  # a step's own failure: that op only
                        outcomes.append(exc)
                if self._new_rows >= _CHECK_EVERY:
                    self._prune(conn, max(op[2] for op in ops))
                    self._new_rows = 0
                conn.execute("COMMIT")
                return outcomes
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                error = storage_error(self._subject, ops[0][4], exc)
                return [error for _ in ops]

    def _apply(self, conn: sqlite3.Connection, op: LimitOp) -> None:
        address, user, _, step, _ = op
        keys = [("addresses", address)]
        if user is not None:
            keys += [("users", user), ("trusted", f"{user}\n{address}")]
        before = [self._get(conn, table, key) for table, key in keys]
        state = LimitState(*before, *([None] * (3 - len(before))))
        step(state)
        after = [state.address_at, state.user_at, state.trusted_until][: len(keys)]
        for (table, key), old, new in zip(keys, before, after, strict=True):
            if new == old:
                continue
            if new is None:
                conn.execute(f"DELETE FROM {table} WHERE key = ?", (key,))  # noqa: S608
            else:
                conn.execute(
                    f"INSERT INTO {table} (key, until) VALUES (?, ?) "  # noqa: S608
                    "ON CONFLICT (key) DO UPDATE SET until = excluded.until",
                    (key, new),
                )
                self._new_rows += old is None

    @staticmethod
    def _get(conn: sqlite3.Connection, table: str, key: str) -> float | None:
        row = conn.execute(
            f"SELECT until FROM {table} WHERE key = ?",  # noqa: S608 (fixed names)
            (key,),
        ).fetchone()
        return None if row is None else float(row[0])

    def _prune(self, conn: sqlite3.Connection, now: float) -> None:
        """Forget what no longer changes an answer, then the least useful past the cap."""
        for table in _TABLES:
            conn.execute(f"DELETE FROM {table} WHERE until <= ?", (now,))  # noqa: S608
            count = int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608
            excess = count - self.limits.max_keys
            if excess > 0:
                conn.execute(
                    f"DELETE FROM {table} WHERE key IN "  # noqa: S608
                    f"(SELECT key FROM {table} ORDER BY until LIMIT ?)",
                    (excess,),
                )

    def rows(self) -> int:
        """Rows in all tables together (tests and monitoring)."""
        with self._lock:
            if self._conn is None:
                return 0
            total = 0
            for table in _TABLES:
                sql = f"SELECT count(*) FROM {table}"  # noqa: S608 (fixed names)
                total += int(self._conn.execute(sql).fetchone()[0])
            return total

    def close(self) -> None:
        """Close the connections; further calls raise :class:`StorageError`."""
        with self._lock, self._read_lock:
            for conn in (self._conn, self._reader):
                if conn is not None:
                    conn.close()
            self._conn = self._reader = None


class GroupedLoginLimiter:
    """A :class:`SqliteLoginLimiter` as an :class:`~sipcert.proto.ratelimit.AsyncLoginLimiter`
    whose concurrent admissions and releases share transactions, in a worker thread.

    Each call is decided under the write lock, in queue order, exactly as alone; a worker
    waiting for another worker's lock no longer sleeps in SQLite's busy handler on the event
    loop. An admitted challenge is still one read, answered at once.
    """

    def __init__(self, inner: SqliteLoginLimiter) -> None:
        self.inner = inner
        self.group: GroupCommit[LimitOp, None] = GroupCommit(inner.run_many)

    async def admit(self, address: str, user: str | None, now: float) -> Admission:
        quick = self.inner.admit_challenge(address, user, now)
        if quick is not None:
            return quick
        op, result = self.inner.admit_op(address, user, now)
        await self.group.submit(op)
        return result[0]

    async def release(
        self, address: str, user: str, admission: Admission, now: float, *, trust: bool
    ) -> None:
        await self.group.submit(self.inner.release_op(address, user, admission, now, trust=trust))

    def admit_challenge_now(self, address: str, now: float) -> bool:
        """Whether a challenge from ``address`` is admitted by one read, without the write
        lock (:meth:`SqliteLoginLimiter.admit_challenge`); False means "ask :meth:`admit`"
        (server.hotget, issue 13). Raises :class:`StorageError` as :meth:`admit` does."""
        return self.inner.admit_challenge(address, None, now) is not None
