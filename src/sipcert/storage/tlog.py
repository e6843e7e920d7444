"""The transparency log's storage: one Merkle log per served domain, in the Store's database.

Why it looks like this (docs/transparency.md):

* A PUT or DELETE adds a *pending* row and waits; a sequencer integrates every pending row in
  one transaction per batch: it gives each an index and its sequencing time, stores the entry
  bytes, the new full-subtree hashes (``proto.merkle.new_nodes``) and the newly signed
  checkpoint. The answer goes out only once its row has an index: the entry is durable and in
  the checkpoint of that same transaction.
* Several Store processes (and frontends) share the database, so exactly one of them may
  sequence at a time: a lease row (holder, expiry) taken and checked inside the sequencing
  transaction itself, so a holder whose lease ran out can never commit a batch.
* Every full subtree's hash is kept (``tlog_nodes``): tiles are slices of one tree level
  (tlog-tiles: tree level ``8 * L``), and proofs are read from the same rows.
* The tables live next to ``certificates`` in the same SQLite file but are created with
  ``IF NOT EXISTS`` and leave the certificate schema's ``user_version`` alone.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

from sipcert.errors import ConfigError, StorageError
from sipcert.proto import merkle
from sipcert.proto.tlog import Checkpoint, Entry, Operation
from sipcert.storage import sqlite_path_of

__all__ = [
    "Batch",
    "DatabaseLog",
    "LogStore",
    "NodeDict",
    "NodeRecorder",
    "Pending",
    "SqliteLog",
    "edge_nodes",
    "group_pending",
    "lease_blocks",
    "open_log",
    "plan_batch",
]

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS tlog_pending (
        id INTEGER PRIMARY KEY,
        domain TEXT NOT NULL,
        operation INTEGER NOT NULL,
        commitment BLOB NOT NULL,
        cert_sha256 BLOB NOT NULL,
        seq INTEGER
    )""",
    "CREATE INDEX IF NOT EXISTS tlog_pending_open ON tlog_pending (seq, id)",
    # A GET's proof finds the entry of each certificate it hands out.
    "CREATE INDEX IF NOT EXISTS tlog_pending_cert ON tlog_pending (domain, cert_sha256, seq)",
    """CREATE TABLE IF NOT EXISTS tlog_entries (
        domain TEXT NOT NULL,
        idx INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (domain, idx)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS tlog_nodes (
        domain TEXT NOT NULL,
        level INTEGER NOT NULL,
        idx INTEGER NOT NULL,
        hash BLOB NOT NULL,
        PRIMARY KEY (domain, level, idx)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS tlog_checkpoints (
        domain TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        note BLOB NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS tlog_lease (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires_ms INTEGER NOT NULL
    )""",
)

_T = TypeVar("_T")


def edge_nodes(size: int) -> list[tuple[int, int]]:
    """The full subtrees making up a tree of ``size`` (its right edge), largest first.

    They are all that appending and computing the new root need from the existing tree.
    """
    out = []
    start = 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            out.append((level, start >> level))
            start += 1 << level
    return out


class _Overlay:
    """Nodes known so far in one batch: the existing edge plus what the batch creates."""

    def __init__(self, known: dict[tuple[int, int], bytes]) -> None:
        self.known = known

    def node(self, level: int, index: int) -> bytes:
        try:
            return self.known[(level, index)]
        except KeyError:
            raise StorageError(f"log node ({level}, {index}) is missing") from None


@dataclass(frozen=True, slots=True)
class Pending:
    """A submitted entry waiting for (or with) its index."""

    id: int
    domain: str


@dataclass(frozen=True, slots=True)
class Batch:
    """What one sequencing transaction did to one domain's log."""

    domain: str
    old_size: int
    new_size: int
    checkpoint: bytes  # the signed note


#: Signs a checkpoint for a domain: returns the signed note bytes.
CheckpointSigner = Callable[[str, Checkpoint], bytes]


@dataclass(frozen=True, slots=True)
class Plan:
    """What one domain's batch writes: entry bytes, new nodes and the signed checkpoint."""

    entries: list[bytes]
    nodes: list[tuple[int, int, bytes]]
    batch: Batch


def plan_batch(
    domain: str,
    size: int,
    edge: dict[tuple[int, int], bytes],
    items: Sequence[tuple[int, Entry]],
    sign: CheckpointSigner,
) -> Plan:
    """The writes that append ``items`` to a tree of ``size`` whose right edge is ``edge``.

    The same for every backend, so they cannot disagree on the tree they build.
    """
    missing = [key for key in edge_nodes(size) if key not in edge]
    if missing:
        raise StorageError(f"the log of {domain} is missing node {missing[0]}")
    known = dict(edge)
    overlay = _Overlay(known)
    data = [entry.to_bytes() for _, entry in items]
    made = merkle.new_nodes(size, [merkle.leaf_hash(d) for d in data], overlay)
    for level, index, value in made:
        known[(level, index)] = value
    new_size = size + len(items)
    note = sign(domain, Checkpoint(domain, new_size, merkle.root(overlay, new_size)))
    return Plan(data, made, Batch(domain, size, new_size, note))


def lease_blocks(held_by: str | None, expires_ms: int, holder: str, now_ms: int) -> bool:
    """Whether the lease row (``held_by``, ``expires_ms``) keeps ``holder`` from sequencing
    at ``now_ms``: another holder's lease that has not run out. No row, or the empty holder
    (a placeholder), blocks nobody."""
    return held_by not in (None, "", holder) and expires_ms > now_ms


#: A pending row as the batch reads it: id, domain, operation, commitment, cert_sha256.
PendingRow = tuple[int, str, int, bytes, bytes]


def group_pending(
    rows: Iterable[PendingRow], now_ms: int
) -> list[tuple[str, list[tuple[int, Entry]]]]:
    """Pending rows (in id order) as each domain's entries, stamped ``now_ms``, domains
    sorted: every backend integrates a batch in the same order."""
    by_domain: dict[str, list[tuple[int, Entry]]] = {}
    for pid, domain, op, commitment, cert_sha256 in rows:
        entry = Entry(Operation(op), bytes(commitment), bytes(cert_sha256), now_ms)
        by_domain.setdefault(domain, []).append((int(pid), entry))
    return sorted(by_domain.items())


def plan_rows(
    domain: str, size: int, items: Sequence[tuple[int, Entry]], plan: Plan
) -> tuple[list[tuple[str, int, int, bytes]], list[tuple[str, int, bytes]], list[tuple[int, int]]]:
    """The rows a plan writes, in every backend's column order: nodes ``(domain, level,
    idx, hash)``, entries ``(domain, idx, data)``, pending updates ``(seq, id)``."""
    return (
        [(domain, level, index, value) for level, index, value in plan.nodes],
        [(domain, size + i, d) for i, d in enumerate(plan.entries)],
        [(size + i, pid) for i, (pid, _) in enumerate(items)],
    )


class NodeRecorder:
    """A node reader that only records which nodes a proof reads (their values are zeros).

    Which nodes RFC 9162's proofs read depends only on the sizes and index, never on the
    hashes, so a backend can fetch exactly those rows first and then compute the proof.
    """

    def __init__(self) -> None:
        self.keys: list[tuple[int, int]] = []

    def node(self, level: int, index: int) -> bytes:
        self.keys.append((level, index))
        return bytes(merkle.HASH_SIZE)


class NodeDict:
    """Nodes fetched from a backend, as a :class:`~sipcert.proto.merkle.NodeReader`."""

    def __init__(self, nodes: dict[tuple[int, int], bytes]) -> None:
        self.nodes = nodes

    def node(self, level: int, index: int) -> bytes:
        try:
            return self.nodes[(level, index)]
        except KeyError:
            raise StorageError(f"log node ({level}, {index}) is missing") from None


class LogStore(Protocol):
    """What the sequencer and the ``/log/`` handlers need from the database."""

    async def submit(
        self, domain: str, operation: Operation, commitment: bytes, cert_sha256: bytes
    ) -> Pending:
        """Add a pending entry; it is sequenced by the next batch."""

    async def sequenced(self, pending: Pending) -> int | None:
        """The index the entry was given, or None while it waits."""

    async def integrate(
        self, holder: str, now_ms: int, lease_ms: int, sign: CheckpointSigner, max_batch: int
    ) -> list[Batch] | None:
        """One batch: None if another holder has the lease, else what changed (maybe [])."""

    async def ensure_checkpoint(self, domain: str, sign: CheckpointSigner) -> None:
        """Sign and store the empty tree's checkpoint if the domain has none yet."""

    async def checkpoint(self, domain: str) -> bytes | None:
        """The latest signed checkpoint note (with any cosignatures), or None before any."""

    async def add_cosignatures(self, domain: str, size: int, note: bytes) -> bool:
        """Replace the checkpoint note of ``size`` by ``note`` (same text, more signatures)."""

    async def hashes(self, domain: str, level: int, start: int, count: int) -> list[bytes]:
        """``count`` node hashes of tree ``level`` from index ``start`` (fewer if absent)."""

    async def entries(self, domain: str, start: int, count: int) -> list[bytes]:
        """``count`` entries from index ``start`` (fewer if absent)."""

    async def nodes(
        self, domain: str, keys: Sequence[tuple[int, int]]
    ) -> dict[tuple[int, int], bytes]:
        """The stored nodes among ``keys`` (``(level, index)``)."""

    async def latest_enrollment(
        self, domain: str, commitment: bytes, cert_sha256: bytes
    ) -> int | None:
        """The index of the newest sequenced enrollment of this certificate for this AOR."""

    async def close(self) -> None:
        """Release connections."""


class DatabaseLog(ABC):
    """The sequencing transaction of a log in a database server (PostgreSQL, MariaDB).

    The batch is the same everywhere: read and lock the lease row, refuse if another
    holder's lease runs, renew it, read the pending rows, and for each domain read its size
    and right edge, :func:`plan_batch`, write the plan -- all in one transaction that commits
    or leaves nothing. A backend supplies the transaction and the SQL of each step; how its
    lease row excludes a second sequencer (a row lock, or Galera's certification of the
    row both contenders write) is its own docstring's business.
    """

    async def integrate(
        self, holder: str, now_ms: int, lease_ms: int, sign: CheckpointSigner, max_batch: int
    ) -> list[Batch] | None:
        """One batch: None if another holder has the lease, else what changed (maybe [])."""

        async def batch(tx: Any) -> list[Batch] | None:
            held_by, expires_ms = await self._lock_lease(tx)
            if lease_blocks(held_by, expires_ms, holder, now_ms):
                return None
            await self._renew_lease(tx, holder, now_ms + lease_ms)
            batches = []
            for domain, items in group_pending(await self._pending(tx, max_batch), now_ms):
                size = await self._size(tx, domain)
                edge = await self._edge(tx, domain, edge_nodes(size))
                plan = plan_batch(domain, size, edge, items, sign)
                await self._write_plan(tx, domain, plan, *plan_rows(domain, size, items, plan))
                batches.append(plan.batch)
            return batches

        return await self._in_transaction("sequencing the log", batch)

    @abstractmethod
    async def _in_transaction(self, action: str, work: Callable[[Any], Awaitable[_T]]) -> _T:
        """Run ``work(tx)`` in one transaction on one connection, committed if it returns
        (retried whole if the backend retries), rolled back if it raises."""

    @abstractmethod
    async def _lock_lease(self, tx: Any) -> tuple[str | None, int]:
        """The sequencer lease row (holder, expiry in ms), locked for this transaction;
        ``(None, 0)`` or the placeholder ``("", 0)`` when nobody ever held it."""

    @abstractmethod
    async def _renew_lease(self, tx: Any, holder: str, expires_ms: int) -> None:
        """Write the lease row: ``holder`` until ``expires_ms``."""

    @abstractmethod
    async def _pending(self, tx: Any, limit: int) -> list[PendingRow]:
        """At most ``limit`` pending rows without an index, oldest id first."""

    @abstractmethod
    async def _size(self, tx: Any, domain: str) -> int:
        """The domain's tree size as of its stored checkpoint (0 without one)."""

    @abstractmethod
    async def _edge(
        self, tx: Any, domain: str, keys: Sequence[tuple[int, int]]
    ) -> dict[tuple[int, int], bytes]:
        """The stored nodes among ``keys`` (the tree's right edge)."""

    @abstractmethod
    async def _write_plan(
        self,
        tx: Any,
        domain: str,
        plan: Plan,
        node_rows: Sequence[tuple[str, int, int, bytes]],
        entry_rows: Sequence[tuple[str, int, bytes]],
        seq_rows: Sequence[tuple[int, int]],
    ) -> None:
        """Insert the nodes and entries, give the pending rows their index, and store
        ``plan.batch``'s checkpoint as the domain's latest."""


class SqliteLog:
    """:class:`LogStore` in the Store's SQLite file (WAL, ``synchronous=FULL``)."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 5.0) -> None:
        self.path = Path(path).absolute()
        self._subject = f"transparency log in {self.path}"
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        except OSError as exc:
            raise StorageError(f"{self._subject}: cannot create it: {exc.strerror}") from exc
        try:
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                f"file:{quote(str(self.path))}?mode=rwc",
                uri=True,
                timeout=busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            self._conn.execute("PRAGMA synchronous = FULL")
            for statement in _SCHEMA:
                self._conn.execute(statement)
        except sqlite3.Error as exc:
            raise StorageError(f"{self._subject}: opening failed: {exc}") from exc

    def __repr__(self) -> str:
        return f"SqliteLog({str(self.path)!r})"

    def _run(self, action: str, work: Callable[[sqlite3.Connection], _T], write: bool) -> _T:
        with self._lock:
            conn = self._conn
            if conn is None:
                raise StorageError(f"{self._subject} is closed")
            try:
                if write:
                    conn.execute("BEGIN IMMEDIATE")
                result = work(conn)
                if write:
                    conn.execute("COMMIT")
                return result
            except BaseException as exc:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                if isinstance(exc, sqlite3.Error):
                    raise StorageError(f"{self._subject}: {action} failed: {exc}") from exc
                raise

    async def _write(self, action: str, work: Callable[[sqlite3.Connection], _T]) -> _T:
        return await asyncio.to_thread(self._run, action, work, True)

    def _read(self, action: str, work: Callable[[sqlite3.Connection], _T]) -> _T:
        return self._run(action, work, False)

    async def submit(
        self, domain: str, operation: Operation, commitment: bytes, cert_sha256: bytes
    ) -> Pending:
        def work(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "INSERT INTO tlog_pending (domain, operation, commitment, cert_sha256) "
                "VALUES (?, ?, ?, ?)",
                (domain, int(operation), commitment, cert_sha256),
            )
            return int(cursor.lastrowid or 0)

        return Pending(await self._write("adding a log entry", work), domain)

    async def submit_many(
        self, domain: str, items: Sequence[tuple[Operation, bytes, bytes]]
    ) -> list[Pending]:
        """Several pending entries in one transaction (imports, benchmarks, tests)."""

        def work(conn: sqlite3.Connection) -> list[int]:
            ids = []
            for operation, commitment, cert_sha256 in items:
                cursor = conn.execute(
                    "INSERT INTO tlog_pending (domain, operation, commitment, cert_sha256) "
                    "VALUES (?, ?, ?, ?)",
                    (domain, int(operation), commitment, cert_sha256),
                )
                ids.append(int(cursor.lastrowid or 0))
            return ids

        return [Pending(i, domain) for i in await self._write("adding log entries", work)]

    async def sequenced(self, pending: Pending) -> int | None:
        rows = self._read(
            "reading a log entry",
            lambda c: c.execute(
                "SELECT seq FROM tlog_pending WHERE id = ?", (pending.id,)
            ).fetchall(),
        )
        if not rows:
            raise StorageError(f"{self._subject}: pending entry {pending.id} vanished")
        seq = rows[0][0]
        return None if seq is None else int(seq)

    async def integrate(
        self, holder: str, now_ms: int, lease_ms: int, sign: CheckpointSigner, max_batch: int
    ) -> list[Batch] | None:
        def work(conn: sqlite3.Connection) -> list[Batch] | None:
            row = conn.execute(
                "SELECT holder, expires_ms FROM tlog_lease WHERE name = 'sequencer'"
            ).fetchone()
            if row is not None and lease_blocks(row[0], row[1], holder, now_ms):
                return None
            conn.execute(
                "INSERT INTO tlog_lease (name, holder, expires_ms) VALUES ('sequencer', ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
                "expires_ms = excluded.expires_ms",
                (holder, now_ms + lease_ms),
            )
            pending = conn.execute(
                "SELECT id, domain, operation, commitment, cert_sha256 FROM tlog_pending "
                "WHERE seq IS NULL ORDER BY id LIMIT ?",
                (max_batch,),
            ).fetchall()
            return [
                self._integrate_domain(conn, domain, items, sign)
                for domain, items in group_pending(pending, now_ms)
            ]

        return await self._write("sequencing the log", work)

    def _integrate_domain(
        self,
        conn: sqlite3.Connection,
        domain: str,
        items: Sequence[tuple[int, Entry]],
        sign: CheckpointSigner,
    ) -> Batch:
        row = conn.execute(
            "SELECT size FROM tlog_checkpoints WHERE domain = ?", (domain,)
        ).fetchone()
        size = int(row[0]) if row else 0
        known: dict[tuple[int, int], bytes] = {}
        for level, index in edge_nodes(size):
            found = conn.execute(
                "SELECT hash FROM tlog_nodes WHERE domain = ? AND level = ? AND idx = ?",
                (domain, level, index),
            ).fetchone()
            if found is not None:
                known[(level, index)] = bytes(found[0])
        plan = plan_batch(domain, size, known, items, sign)
        node_rows, entry_rows, seq_rows = plan_rows(domain, size, items, plan)
        conn.executemany(
            "INSERT INTO tlog_nodes (domain, level, idx, hash) VALUES (?, ?, ?, ?)", node_rows
        )
        conn.executemany(
            "INSERT INTO tlog_entries (domain, idx, data) VALUES (?, ?, ?)", entry_rows
        )
        conn.executemany("UPDATE tlog_pending SET seq = ? WHERE id = ?", seq_rows)
        conn.execute(
            "INSERT INTO tlog_checkpoints (domain, size, note) VALUES (?, ?, ?) "
            "ON CONFLICT (domain) DO UPDATE SET size = excluded.size, note = excluded.note",
            (domain, plan.batch.new_size, plan.batch.checkpoint),
        )
        return plan.batch

    async def ensure_checkpoint(self, domain: str, sign: CheckpointSigner) -> None:
        """Sign the empty tree's checkpoint for a domain that has none yet (tlog-tiles:
        a log always serves a checkpoint)."""

        def work(conn: sqlite3.Connection) -> None:
            if conn.execute(
                "SELECT 1 FROM tlog_checkpoints WHERE domain = ?", (domain,)
            ).fetchone():
                return
            note = sign(domain, Checkpoint(domain, 0, merkle.EMPTY_ROOT))
            conn.execute(
                "INSERT INTO tlog_checkpoints (domain, size, note) VALUES (?, 0, ?)", (domain, note)
            )

        await self._write("creating the first checkpoint", work)

    async def nodes(
        self, domain: str, keys: Sequence[tuple[int, int]]
    ) -> dict[tuple[int, int], bytes]:
        def work(conn: sqlite3.Connection) -> dict[tuple[int, int], bytes]:
            found = {}
            for level, index in set(keys):
                row = conn.execute(
                    "SELECT hash FROM tlog_nodes WHERE domain = ? AND level = ? AND idx = ?",
                    (domain, level, index),
                ).fetchone()
                if row is not None:
                    found[(level, index)] = bytes(row[0])
            return found

        return self._read("reading log nodes", work)

    async def latest_enrollment(
        self, domain: str, commitment: bytes, cert_sha256: bytes
    ) -> int | None:
        rows = self._read(
            "finding a log entry",
            lambda c: c.execute(
                "SELECT max(seq) FROM tlog_pending WHERE domain = ? AND cert_sha256 = ? "
                "AND commitment = ? AND operation = ? AND seq IS NOT NULL",
                (domain, cert_sha256, commitment, int(Operation.ENROLL)),
            ).fetchall(),
        )
        return None if not rows or rows[0][0] is None else int(rows[0][0])

    async def checkpoint(self, domain: str) -> bytes | None:
        rows = self._read(
            "reading the checkpoint",
            lambda c: c.execute(
                "SELECT note FROM tlog_checkpoints WHERE domain = ?", (domain,)
            ).fetchall(),
        )
        return bytes(rows[0][0]) if rows else None

    async def add_cosignatures(self, domain: str, size: int, note: bytes) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE tlog_checkpoints SET note = ? WHERE domain = ? AND size = ?",
                (note, domain, size),
            )
            return cursor.rowcount == 1

        return await self._write("storing cosignatures", work)

    async def hashes(self, domain: str, level: int, start: int, count: int) -> list[bytes]:
        rows = self._read(
            "reading a tile",
            lambda c: c.execute(
                "SELECT hash FROM tlog_nodes WHERE domain = ? AND level = ? "
                "AND idx >= ? AND idx < ? ORDER BY idx",
                (domain, level, start, start + count),
            ).fetchall(),
        )
        return [bytes(r[0]) for r in rows]

    async def entries(self, domain: str, start: int, count: int) -> list[bytes]:
        rows = self._read(
            "reading entries",
            lambda c: c.execute(
                "SELECT data FROM tlog_entries WHERE domain = ? "
                "AND idx >= ? AND idx < ? ORDER BY idx",
                (domain, start, start + count),
            ).fetchall(),
        )
        return [bytes(r[0]) for r in rows]

    async def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def open_log(url: str, data_dir: Path) -> LogStore:
    """The log's storage for the certificate database ``url``: the same database.

    For ``memory://`` (tests, demos) the log goes to ``data_dir/tlog.db``.
    """
    scheme = url.partition(":")[0].lower()
    if scheme == "sqlite":
        return SqliteLog(sqlite_path_of(url, "sqlite"))
    if scheme == "memory":
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return SqliteLog(data_dir / "tlog.db")
    if scheme in ("postgresql", "postgres"):
        from sipcert.storage.tlog_postgres import PostgresLog  # imports this module

        return PostgresLog(url)
    if scheme in ("mysql", "mariadb"):
        from sipcert.storage.tlog_mysql import MysqlLog  # imports this module

        return MysqlLog(url)
    raise ConfigError(
        f"the transparency log needs SQLite, PostgreSQL or MariaDB storage; {scheme}:// has none"
    )
