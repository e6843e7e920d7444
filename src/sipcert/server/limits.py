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
from sipcert.storage.sqlite import open_shared_sqlite, storage_error

__all__ = ["SqliteLoginLimiter"]

#: New rows (per worker) between two checks of the row cap.
_CHECK_EVERY = 1000
_TABLES = ("addresses", "users", "trusted")


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

    def __repr__(self) -> str:
        return f"SqliteLoginLimiter({str(self.path)!r})"

    def admit(self, address: str, user: str | None, now: float) -> Admission:
        """See :meth:`sipcert.proto.ratelimit.LoginLimiter.admit`.

        A challenge (no ``user``) that is admitted changes nothing: it is answered from one
        read, without the write lock, so unauthenticated requests do not queue on it.
        """
        if user is None:
            with self._lock:
                conn = self._conn
                if conn is None:
                    raise StorageError(f"{self._subject} is closed")
                try:
                    state = LimitState(self._get(conn, "addresses", address), None, None)
                except sqlite3.Error as exc:
                    raise storage_error(self._subject, "checking a rate limit", exc) from exc
            if decide(self.limits, state, now, checks=False).admitted:
                return Admission(True)
        result: list[Admission] = []

        def step(state: LimitState) -> None:
            result.append(decide(self.limits, state, now, checks=user is not None))

        self._transaction(address, user, now, step, "checking a rate limit")
        return result[0]

    def release(
        self, address: str, user: str, admission: Admission, now: float, *, trust: bool
    ) -> None:
        """See :meth:`sipcert.proto.ratelimit.LoginLimiter.release`."""
        period = self.limits.trust_period if trust else 0.0

        def step(state: LimitState) -> None:
            release(state, admission, now, trust=period)

        self._transaction(address, user, now, step, "releasing a rate limit")

    def _transaction(
        self,
        address: str,
        user: str | None,
        now: float,
        step: Callable[[LimitState], None],
        action: str,
    ) -> None:
        keys = [("addresses", address)]
        if user is not None:
            keys += [("users", user), ("trusted", f"{user}\n{address}")]
        with self._lock:
            conn = self._conn
            if conn is None:
                raise StorageError(f"{self._subject} is closed")
            try:
                conn.execute("BEGIN IMMEDIATE")
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
                if self._new_rows >= _CHECK_EVERY:
                    self._prune(conn, now)
                    self._new_rows = 0
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                raise storage_error(self._subject, action, exc) from exc

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
        """Close the connection; further calls raise :class:`StorageError`."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
