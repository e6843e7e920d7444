"""Digest nonce state shared by every Store process: the nonce secret and the nonce counts.

Nonces are stateless HMACs (:class:`sipcert.proto.digest.DigestServer`), so every worker
process and every restart must hold the same secret: it comes from the configuration or is
generated once (32 random bytes) into a 0600 file of the data folder. It is never logged.

Replays are refused by the highest ``nc`` seen per nonce (RFC 7616 §3.4). That state must be
shared by all workers (a client's next request may land on another process) and survive a
restart (the secret does, so old nonces stay valid for their lifetime): an SQLite table.
It is consulted only on PUT and DELETE; the Store calls it through :class:`GroupedNonceCounter`,
which runs concurrent calls in one transaction in a worker thread.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
from pathlib import Path

from sipcert.errors import ConfigError, StorageError
from sipcert.proto.digest import DEFAULT_MAX_CLOCK_SKEW, DEFAULT_NONCE_LIFETIME
from sipcert.storage.sqlite import GroupCommit, open_shared_sqlite, storage_error

__all__ = ["SECRET_FILE", "GroupedNonceCounter", "SqliteNonceCounter", "load_or_create_secret"]

#: Name of the nonce secret file inside the data folder.
SECRET_FILE = "nonce-secret"  # noqa: S105 (a file name)
_SECRET_BYTES = 32
#: How often (seconds of ``now``) forgotten nonces are deleted.
_PRUNE_EVERY = 60.0


def load_or_create_secret(data_dir: Path) -> bytes:
    """The nonce secret in ``data_dir/nonce-secret``, created (0600, exclusive) if missing."""
    path = data_dir / SECRET_FILE
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            try:
                os.write(fd, secrets.token_bytes(_SECRET_BYTES))
                os.fsync(fd)
            finally:
                os.close(fd)
        secret = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"nonce secret {path}: {exc.strerror or exc}") from exc
    if len(secret) < 16:
        raise ConfigError(
            f"nonce secret {path} is shorter than 16 bytes; delete it to have a new one made"
        )
    return secret


class SqliteNonceCounter:
    """A :class:`~sipcert.proto.digest.NonceCounter` in an SQLite file (WAL), for all workers.

    A nonce is forgotten ``retention`` seconds after its first use, which is safe when that is
    at least the nonce lifetime plus clock skew: an older nonce is refused as stale before its
    count is looked at. Each :meth:`advance` is one ``BEGIN IMMEDIATE`` transaction, so two
    processes can never both accept the same count.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        retention: float = DEFAULT_NONCE_LIFETIME + DEFAULT_MAX_CLOCK_SKEW,
        busy_timeout: float = 5.0,
    ) -> None:
        if not retention > 0:
            raise ConfigError("SqliteNonceCounter needs retention > 0")
        self.path = Path(path).absolute()
        self._retention = retention
        self._lock = threading.Lock()
        self._last_prune = float("-inf")
        self._subject = f"nonce database {self.path}"
        # A lost count after a power cut only re-opens nonces of the last few minutes.
        schema = (
            "CREATE TABLE IF NOT EXISTS nonces ("
            "nonce TEXT PRIMARY KEY, first_seen REAL NOT NULL, nc INTEGER NOT NULL)",
            "CREATE INDEX IF NOT EXISTS nonces_by_age ON nonces (first_seen)",
        )
        conn = open_shared_sqlite(self.path, self._subject, schema, busy_timeout)
        self._conn: sqlite3.Connection | None = conn

    def __repr__(self) -> str:
        return f"SqliteNonceCounter({str(self.path)!r})"

    def advance(self, nonce: str, nc: int, now: float) -> bool:
        """Record ``nc`` for ``nonce``; True iff it is above every count seen for it."""
        (outcome,) = self.advance_many([(nonce, nc, now)])
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def advance_many(self, items: list[tuple[str, int, float]]) -> list[bool | BaseException]:
        """:meth:`advance` for each ``(nonce, nc, now)`` in order, in one transaction.

        The items are decided one after the other under the write lock, so the answer is
        exactly what as many single calls would give (the same nonce twice in one batch: the
        second with a count not above the first is refused). If the transaction fails,
        nothing of it is recorded and every item gets the :class:`StorageError`.
        """
        outcomes: list[bool | BaseException] = []
        with self._lock:
            conn = self._conn
            if conn is None:
                return [StorageError(f"{self._subject} is closed") for _ in items]
            try:
                conn.execute("BEGIN IMMEDIATE")
                latest = max(now for _, _, now in items)
                if latest - self._last_prune >= _PRUNE_EVERY:
                    conn.execute(
                        "DELETE FROM nonces WHERE first_seen < ?", (latest - self._retention,)
                    )
                    self._last_prune = latest
                for nonce, nc, now in items:
                    outcomes.append(self._advance_one(conn, nonce, nc, now))
                conn.execute("COMMIT")
                return outcomes
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                error = storage_error(self._subject, "recording a nonce count", exc)
                return [error for _ in items]

    @staticmethod
    def _advance_one(conn: sqlite3.Connection, nonce: str, nc: int, now: float) -> bool:
        if nc < 1:
            return False
        row = conn.execute("SELECT nc FROM nonces WHERE nonce = ?", (nonce,)).fetchone()
        if row is None:
            conn.execute(
                "INSERT INTO nonces (nonce, first_seen, nc) VALUES (?, ?, ?)", (nonce, now, nc)
            )
            return True
        if nc > row[0]:
            conn.execute("UPDATE nonces SET nc = ? WHERE nonce = ?", (nc, nonce))
            return True
        return False

    def __len__(self) -> int:
        with self._lock:
            if self._conn is None:
                return 0
            return int(self._conn.execute("SELECT count(*) FROM nonces").fetchone()[0])

    def close(self) -> None:
        """Close the connection; further :meth:`advance` calls raise :class:`StorageError`."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class GroupedNonceCounter:
    """A :class:`SqliteNonceCounter` as an :class:`~sipcert.proto.digest.AsyncNonceCounter`
    whose concurrent calls share transactions (issue 13).

    Each call still waits for its own answer, decided under SQLite's write lock in the order
    the calls were queued, so a replayed ``nc`` is refused exactly as before, on every
    worker. What moved off the event loop is the wait: a worker whose counter is locked by
    another worker's transaction used to sleep in SQLite's busy handler on the loop, holding
    up every other request of that worker.
    """

    def __init__(self, inner: SqliteNonceCounter) -> None:
        self.inner = inner
        self.group: GroupCommit[tuple[str, int, float], bool] = GroupCommit(inner.advance_many)

    async def advance(self, nonce: str, nc: int, now: float) -> bool:
        if nc < 1:
            return False
        return await self.group.submit((nonce, nc, now))
