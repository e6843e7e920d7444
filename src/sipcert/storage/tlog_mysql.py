"""The transparency log in MariaDB/MySQL, including a MariaDB Galera cluster (issue 14).

The tables (``sipcert_tlog_*``) are schema version 2 of :mod:`sipcert.storage.mysql`, created
or migrated by the same mechanism (``sipcert db upgrade``, ``schema_status``); the batch is
:class:`~sipcert.storage.tlog.DatabaseLog`'s, so the tree is built by the same code as with
SQLite and PostgreSQL.

Why the lease is a row and not ``GET_LOCK``: on Galera ``GET_LOCK`` and ``SELECT ... FOR
UPDATE`` are local to one node, so two frontends on two nodes could both "hold" them. What
Galera does guarantee is first-committer-wins certification: a transaction whose write set
touches a row that another transaction, committed on any node after this one's snapshot,
also wrote is aborted at COMMIT (error 1213), whatever the reads it made. So:

* every batch reads the lease row, refuses if another holder's lease has not expired, and
  **writes the lease row** (holder, expiry) in the same transaction that writes the entries,
  the nodes and the checkpoint. Two batches that overlap in time -- on one node or on two --
  both write that row (and the domain's checkpoint row, and entry rows with the same keys),
  so at most one commits; the other is rolled back whole and retried
  (:data:`~sipcert.storage.mysql.RETRIES`), and on the retry it reads the winner's lease (or,
  if that write set is not applied on its node yet, fails certification again until it is).
* A holder that pauses past its expiry (GC, a stopped VM) cannot commit a stale batch: its
  transaction either began before the new holder's batch committed (certification aborts it)
  or after (it reads the new holder's lease and stops). On one server the ``FOR UPDATE``
  lock makes the same point by waiting.
* No separate fencing token is needed because the resource the lease protects (the log
  tables) is written in the lease's own transaction: the row version of the lease row *is*
  the fence, checked by the database at commit. (A fencing token is needed when the guarded
  resource lives outside the lock service.) Clock skew between frontends therefore costs
  only liveness -- a fast clock may take over early, a slow one wait longer -- never two
  commits from one tree size: the entries' primary keys ``(domain, idx)`` would collide too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from sipcert.errors import StorageError
from sipcert.proto.tlog import Operation
from sipcert.storage.mysql import MysqlStore
from sipcert.storage.tlog import (
    CheckpointSigner,
    DatabaseLog,
    Pending,
    PendingRow,
    Plan,
    plan_batch,
)

__all__ = ["MysqlLog"]

_T = TypeVar("_T")

_INSERT_PENDING = (
    "INSERT INTO sipcert_tlog_pending (domain, operation, commitment, cert_sha256) "
    "VALUES (%s, %s, %s, %s)"
)
# An upsert takes the row's exclusive lock at once (INSERT IGNORE would take a shared lock
# first, and two of them upgrading deadlock; see storage/mysql.py's limiter).
_LEASE_PLACEHOLDER = (
    "INSERT INTO sipcert_tlog_lease (name, holder, expires_ms) VALUES ('sequencer', '', 0) "
    "ON DUPLICATE KEY UPDATE holder = holder"
)
_READ_LEASE = (
    "SELECT holder, expires_ms FROM sipcert_tlog_lease WHERE name = 'sequencer' FOR UPDATE"
)
_RENEW_LEASE = "UPDATE sipcert_tlog_lease SET holder = %s, expires_ms = %s WHERE name = 'sequencer'"


def _domain(domain: str) -> bytes:
    return domain.encode("utf-8")


class MysqlLog(DatabaseLog):
    """:class:`~sipcert.storage.tlog.LogStore` in the MariaDB/MySQL database of ``url``.

    The pool, URL parsing, retries and error wording are the certificate store's
    (:class:`~sipcert.storage.mysql.MysqlStore`), so one URL configures both.
    """

    def __init__(self, url: str) -> None:
        self._db = MysqlStore.from_url(url)

    def __repr__(self) -> str:
        return f"MysqlLog({self._db.where!r})"

    async def _execute(self, action: str, sql: str, args: tuple[Any, ...]) -> Any:
        async def work(conn: Any) -> Any:
            async with conn.cursor() as cur:
                await cur.execute(sql, args)
                return await cur.fetchall()

        return await self._db.run(action, work)

    async def _in_transaction(self, action: str, work: Callable[[Any], Awaitable[_T]]) -> _T:
        async def run(conn: Any) -> _T:
            await self._db.transaction(conn)
            async with conn.cursor() as cur:
                result = await work(cur)
            await conn.commit()
            return result

        return await self._db.run(action, run)

    async def _lock_lease(self, tx: Any) -> tuple[str | None, int]:
        await tx.execute(_LEASE_PLACEHOLDER)
        await tx.execute(_READ_LEASE)
        holder, expires_ms = await tx.fetchone()
        return bytes(holder).decode("utf-8"), int(expires_ms)

    async def _renew_lease(self, tx: Any, holder: str, expires_ms: int) -> None:
        await tx.execute(_RENEW_LEASE, (holder.encode("utf-8"), expires_ms))

    async def _pending(self, tx: Any, limit: int) -> list[PendingRow]:
        await tx.execute(
            "SELECT id, domain, operation, commitment, cert_sha256 FROM sipcert_tlog_pending "
            "WHERE seq IS NULL ORDER BY id LIMIT %s",
            (limit,),
        )
        return [
            (int(pid), bytes(domain).decode("utf-8"), int(op), bytes(commitment), bytes(sha))
            for pid, domain, op, commitment, sha in await tx.fetchall()
        ]

    async def _size(self, tx: Any, domain: str) -> int:
        await tx.execute(
            "SELECT size FROM sipcert_tlog_checkpoints WHERE domain = %s", (_domain(domain),)
        )
        row = await tx.fetchone()
        return int(row[0]) if row else 0

    async def _edge(
        self, tx: Any, domain: str, keys: Sequence[tuple[int, int]]
    ) -> dict[tuple[int, int], bytes]:
        return await _nodes(tx, domain, keys)

    async def _write_plan(
        self,
        tx: Any,
        domain: str,
        plan: Plan,
        node_rows: Sequence[tuple[str, int, int, bytes]],
        entry_rows: Sequence[tuple[str, int, bytes]],
        seq_rows: Sequence[tuple[int, int]],
    ) -> None:
        key = _domain(domain)
        if node_rows:
            await tx.executemany(
                "INSERT INTO sipcert_tlog_nodes (domain, level, idx, hash) VALUES (%s, %s, %s, %s)",
                [(key, level, idx, value) for _, level, idx, value in node_rows],
            )
        if entry_rows:
            await tx.executemany(
                "INSERT INTO sipcert_tlog_entries (domain, idx, data) VALUES (%s, %s, %s)",
                [(key, idx, data) for _, idx, data in entry_rows],
            )
        if seq_rows:
            await tx.executemany("UPDATE sipcert_tlog_pending SET seq = %s WHERE id = %s", seq_rows)
        await tx.execute(
            "INSERT INTO sipcert_tlog_checkpoints (domain, size, note) VALUES (%s, %s, %s) "
            "ON DUPLICATE KEY UPDATE size = VALUES(size), note = VALUES(note)",
            (key, plan.batch.new_size, plan.batch.checkpoint),
        )

    # -- the rest of the LogStore contract -----------------------------------------------

    async def submit(
        self, domain: str, operation: Operation, commitment: bytes, cert_sha256: bytes
    ) -> Pending:
        async def work(conn: Any) -> int:
            async with conn.cursor() as cur:
                await cur.execute(
                    _INSERT_PENDING, (_domain(domain), int(operation), commitment, cert_sha256)
                )
                return int(cur.lastrowid)

        return Pending(await self._db.run("adding a log entry", work), domain)

    async def submit_many(
        self, domain: str, items: Sequence[tuple[Operation, bytes, bytes]]
    ) -> list[Pending]:
        """Several pending entries in one transaction (imports, benchmarks, tests)."""

        async def work(cur: Any) -> list[int]:
            ids = []
            for operation, commitment, cert_sha256 in items:
                await cur.execute(
                    _INSERT_PENDING, (_domain(domain), int(operation), commitment, cert_sha256)
                )
                ids.append(int(cur.lastrowid))
            return ids

        ids = await self._in_transaction("adding log entries", work)
        return [Pending(i, domain) for i in ids]

    async def sequenced(self, pending: Pending) -> int | None:
        rows = await self._execute(
            "reading a log entry",
            "SELECT seq FROM sipcert_tlog_pending WHERE id = %s",
            (pending.id,),
        )
        if not rows:
            raise StorageError(f"transparency log: pending entry {pending.id} vanished")
        seq = rows[0][0]
        return None if seq is None else int(seq)

    async def ensure_checkpoint(self, domain: str, sign: CheckpointSigner) -> None:
        """Sign the empty tree's checkpoint for a domain that has none yet (tlog-tiles: a
        log always serves a checkpoint); a concurrent first start keeps the row it finds."""
        plan = plan_batch(domain, 0, {}, [], sign)
        await self._execute(
            "creating the first checkpoint",
            "INSERT INTO sipcert_tlog_checkpoints (domain, size, note) VALUES (%s, 0, %s) "
            "ON DUPLICATE KEY UPDATE domain = domain",
            (_domain(domain), plan.batch.checkpoint),
        )

    async def checkpoint(self, domain: str) -> bytes | None:
        rows = await self._execute(
            "reading the checkpoint",
            "SELECT note FROM sipcert_tlog_checkpoints WHERE domain = %s",
            (_domain(domain),),
        )
        return bytes(rows[0][0]) if rows else None

    async def add_cosignatures(self, domain: str, size: int, note: bytes) -> bool:
        """True iff the checkpoint of ``size`` now carries ``note`` (MariaDB counts an
        update to the same value as no change, so an unchanged row is asked for)."""

        async def work(conn: Any) -> bool:
            async with conn.cursor() as cur:
                changed = await cur.execute(
                    "UPDATE sipcert_tlog_checkpoints SET note = %s WHERE domain = %s AND size = %s",
                    (note, _domain(domain), size),
                )
                if changed:
                    return True
                await cur.execute(
                    "SELECT 1 FROM sipcert_tlog_checkpoints "
                    "WHERE domain = %s AND size = %s AND note = %s",
                    (_domain(domain), size, note),
                )
                return await cur.fetchone() is not None

        return await self._db.run("storing cosignatures", work)

    async def hashes(self, domain: str, level: int, start: int, count: int) -> list[bytes]:
        rows = await self._execute(
            "reading a tile",
            "SELECT hash FROM sipcert_tlog_nodes WHERE domain = %s AND level = %s "
            "AND idx >= %s AND idx < %s ORDER BY idx",
            (_domain(domain), level, start, start + count),
        )
        return [bytes(r[0]) for r in rows]

    async def entries(self, domain: str, start: int, count: int) -> list[bytes]:
        rows = await self._execute(
            "reading entries",
            "SELECT data FROM sipcert_tlog_entries WHERE domain = %s "
            "AND idx >= %s AND idx < %s ORDER BY idx",
            (_domain(domain), start, start + count),
        )
        return [bytes(r[0]) for r in rows]

    async def nodes(
        self, domain: str, keys: Sequence[tuple[int, int]]
    ) -> dict[tuple[int, int], bytes]:
        async def work(conn: Any) -> dict[tuple[int, int], bytes]:
            async with conn.cursor() as cur:
                return await _nodes(cur, domain, keys)

        found: dict[tuple[int, int], bytes] = await self._db.run("reading log nodes", work)
        return found

    async def latest_enrollment(
        self, domain: str, commitment: bytes, cert_sha256: bytes
    ) -> int | None:
        rows = await self._execute(
            "finding a log entry",
            "SELECT MAX(seq) FROM sipcert_tlog_pending WHERE domain = %s AND cert_sha256 = %s "
            "AND commitment = %s AND operation = %s AND seq IS NOT NULL",
            (_domain(domain), cert_sha256, commitment, int(Operation.ENROLL)),
        )
        return None if not rows or rows[0][0] is None else int(rows[0][0])

    async def close(self) -> None:
        await self._db.close()


async def _nodes(
    cur: Any, domain: str, keys: Sequence[tuple[int, int]]
) -> dict[tuple[int, int], bytes]:
    """The stored nodes among ``keys``, in one query on the cursor ``cur``."""
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    pairs = ", ".join(["(%s, %s)"] * len(wanted))
    await cur.execute(
        "SELECT level, idx, hash FROM sipcert_tlog_nodes "  # noqa: S608 (placeholders only)
        f"WHERE domain = %s AND (level, idx) IN ({pairs})",
        (_domain(domain), *(v for key in wanted for v in key)),
    )
    return {(int(level), int(idx)): bytes(value) for level, idx, value in await cur.fetchall()}
