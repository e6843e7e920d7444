"""The transparency log in PostgreSQL, next to the certificates (issue 14).

The same design as the SQLite log (``storage.tlog``): pending rows, entries, full-subtree
nodes, the latest signed checkpoint, and a lease row. Here the lease is read with
``SELECT ... FOR UPDATE`` inside the sequencing transaction, so two frontends racing for it
queue on the row and the loser sees the winner's lease; the whole batch commits or nothing
does. The connection pool, URL parsing and error wording are the certificate store's
(:class:`~sipcert.storage.postgres.PostgresStore`), so one URL configures both.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from sipcert.errors import StorageError
from sipcert.proto.tlog import Operation
from sipcert.storage.postgres import PostgresStore
from sipcert.storage.tlog import (
    CheckpointSigner,
    DatabaseLog,
    Pending,
    PendingRow,
    Plan,
    plan_batch,
)

__all__ = ["PostgresLog"]

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS sipcert_tlog_pending (
        id bigserial PRIMARY KEY,
        domain text COLLATE "C" NOT NULL,
        operation smallint NOT NULL,
        commitment bytea NOT NULL,
        cert_sha256 bytea NOT NULL,
        seq bigint
    )""",
    "CREATE INDEX IF NOT EXISTS sipcert_tlog_pending_open ON sipcert_tlog_pending (id) "
    "WHERE seq IS NULL",
    "CREATE INDEX IF NOT EXISTS sipcert_tlog_pending_cert "
    "ON sipcert_tlog_pending (domain, cert_sha256, seq)",
    """CREATE TABLE IF NOT EXISTS sipcert_tlog_entries (
        domain text COLLATE "C" NOT NULL,
        idx bigint NOT NULL,
        data bytea NOT NULL,
        PRIMARY KEY (domain, idx)
    )""",
    """CREATE TABLE IF NOT EXISTS sipcert_tlog_nodes (
        domain text COLLATE "C" NOT NULL,
        level smallint NOT NULL,
        idx bigint NOT NULL,
        hash bytea NOT NULL,
        PRIMARY KEY (domain, level, idx)
    )""",
    """CREATE TABLE IF NOT EXISTS sipcert_tlog_checkpoints (
        domain text COLLATE "C" PRIMARY KEY,
        size bigint NOT NULL,
        note bytea NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS sipcert_tlog_lease (
        name text PRIMARY KEY,
        holder text NOT NULL,
        expires_ms bigint NOT NULL
    )""",
)
#: ``pg_advisory_xact_lock`` class of the schema creation (any constant of our own).
_SCHEMA_LOCK = 0x7106
_T = TypeVar("_T")


async def _nodes(
    conn: Any, domain: str, keys: Sequence[tuple[int, int]]
) -> dict[tuple[int, int], bytes]:
    """The stored nodes among ``keys``, in one query (on a pool or a transaction)."""
    wanted = sorted(set(keys))
    rows = await conn.fetch(
        "SELECT level, idx, hash FROM sipcert_tlog_nodes WHERE domain = $1 "
        "AND (level, idx) IN (SELECT * FROM unnest($2::smallint[], $3::bigint[]))",
        domain,
        [k[0] for k in wanted],
        [k[1] for k in wanted],
    )
    return {(int(r["level"]), int(r["idx"])): bytes(r["hash"]) for r in rows}


class PostgresLog(DatabaseLog):
    """:class:`~sipcert.storage.tlog.LogStore` in the PostgreSQL database of ``url``."""

    def __init__(self, url: str) -> None:
        self._db = PostgresStore.from_url(url)
        self._ready = False

    def __repr__(self) -> str:
        return f"PostgresLog({self._db.where!r})"

    async def _run(self, action: str, work: Any) -> Any:
        if not self._ready:

            async def create(pool: Any) -> None:
                async with pool.acquire() as conn, conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
                    for statement in _SCHEMA:
                        await conn.execute(statement)

            await self._db._run("creating the log tables", create)
            self._ready = True
        return await self._db._run(action, work)

    async def submit(
        self, domain: str, operation: Operation, commitment: bytes, cert_sha256: bytes
    ) -> Pending:
        async def work(pool: Any) -> int:
            return int(
                await pool.fetchval(
                    "INSERT INTO sipcert_tlog_pending (domain, operation, commitment, cert_sha256)"
                    " VALUES ($1, $2, $3, $4) RETURNING id",
                    domain,
                    int(operation),
                    commitment,
                    cert_sha256,
                )
            )

        return Pending(await self._run("adding a log entry", work), domain)

    async def submit_many(
        self, domain: str, items: Sequence[tuple[Operation, bytes, bytes]]
    ) -> list[Pending]:
        """Several pending entries in one transaction (imports, benchmarks, tests)."""

        async def work(pool: Any) -> list[int]:
            async with pool.acquire() as conn, conn.transaction():
                return [
                    int(
                        await conn.fetchval(
                            "INSERT INTO sipcert_tlog_pending "
                            "(domain, operation, commitment, cert_sha256) "
                            "VALUES ($1, $2, $3, $4) RETURNING id",
                            domain,
                            int(op),
                            commitment,
                            cert_sha256,
                        )
                    )
                    for op, commitment, cert_sha256 in items
                ]

        return [Pending(i, domain) for i in await self._run("adding log entries", work)]

    async def sequenced(self, pending: Pending) -> int | None:
        async def work(pool: Any) -> Any:
            return await pool.fetch(
                "SELECT seq FROM sipcert_tlog_pending WHERE id = $1", pending.id
            )

        rows = await self._run("reading a log entry", work)
        if not rows:
            raise StorageError(f"transparency log: pending entry {pending.id} vanished")
        seq = rows[0]["seq"]
        return None if seq is None else int(seq)

    async def _in_transaction(self, action: str, work: Callable[[Any], Awaitable[_T]]) -> _T:
        async def run(pool: Any) -> _T:
            async with pool.acquire() as conn, conn.transaction():
                return await work(conn)

        result: _T = await self._run(action, run)
        return result

    async def _lock_lease(self, tx: Any) -> tuple[str | None, int]:
        """``FOR UPDATE`` on the row (created as a placeholder first): a second frontend's
        batch waits here until this one commits, then sees its lease."""
        await tx.execute(
            "INSERT INTO sipcert_tlog_lease (name, holder, expires_ms) "
            "VALUES ('sequencer', '', 0) ON CONFLICT (name) DO NOTHING"
        )
        lease = await tx.fetchrow(
            "SELECT holder, expires_ms FROM sipcert_tlog_lease WHERE name = 'sequencer' FOR UPDATE"
        )
        return str(lease["holder"]), int(lease["expires_ms"])

    async def _renew_lease(self, tx: Any, holder: str, expires_ms: int) -> None:
        await tx.execute(
            "UPDATE sipcert_tlog_lease SET holder = $1, expires_ms = $2 WHERE name = 'sequencer'",
            holder,
            expires_ms,
        )

    async def _pending(self, tx: Any, limit: int) -> list[PendingRow]:
        rows = await tx.fetch(
            "SELECT id, domain, operation, commitment, cert_sha256 "
            "FROM sipcert_tlog_pending WHERE seq IS NULL ORDER BY id LIMIT $1",
            limit,
        )
        return [
            (r["id"], r["domain"], r["operation"], bytes(r["commitment"]), bytes(r["cert_sha256"]))
            for r in rows
        ]

    async def _size(self, tx: Any, domain: str) -> int:
        return int(
            await tx.fetchval("SELECT size FROM sipcert_tlog_checkpoints WHERE domain = $1", domain)
            or 0
        )

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
        await tx.executemany(
            "INSERT INTO sipcert_tlog_nodes (domain, level, idx, hash) VALUES ($1, $2, $3, $4)",
            node_rows,
        )
        await tx.executemany(
            "INSERT INTO sipcert_tlog_entries (domain, idx, data) VALUES ($1, $2, $3)", entry_rows
        )
        await tx.executemany("UPDATE sipcert_tlog_pending SET seq = $1 WHERE id = $2", seq_rows)
        await tx.execute(
            "INSERT INTO sipcert_tlog_checkpoints (domain, size, note) VALUES ($1, $2, $3) "
            "ON CONFLICT (domain) DO UPDATE SET size = excluded.size, note = excluded.note",
            domain,
            plan.batch.new_size,
            plan.batch.checkpoint,
        )

    async def ensure_checkpoint(self, domain: str, sign: CheckpointSigner) -> None:
        async def work(pool: Any) -> None:
            plan = plan_batch(domain, 0, {}, [], sign)
            await pool.execute(
                "INSERT INTO sipcert_tlog_checkpoints (domain, size, note) VALUES ($1, 0, $2) "
                "ON CONFLICT (domain) DO NOTHING",
                domain,
                plan.batch.checkpoint,
            )

        await self._run("creating the first checkpoint", work)

    async def checkpoint(self, domain: str) -> bytes | None:
        async def work(pool: Any) -> Any:
            return await pool.fetchval(
                "SELECT note FROM sipcert_tlog_checkpoints WHERE domain = $1", domain
            )

        note = await self._run("reading the checkpoint", work)
        return None if note is None else bytes(note)

    async def add_cosignatures(self, domain: str, size: int, note: bytes) -> bool:
        async def work(pool: Any) -> str:
            status: str = await pool.execute(
                "UPDATE sipcert_tlog_checkpoints SET note = $1 WHERE domain = $2 AND size = $3",
                note,
                domain,
                size,
            )
            return status

        return bool((await self._run("storing cosignatures", work)).endswith(" 1"))

    async def hashes(self, domain: str, level: int, start: int, count: int) -> list[bytes]:
        async def work(pool: Any) -> Any:
            return await pool.fetch(
                "SELECT hash FROM sipcert_tlog_nodes WHERE domain = $1 AND level = $2 "
                "AND idx >= $3 AND idx < $4 ORDER BY idx",
                domain,
                level,
                start,
                start + count,
            )

        return [bytes(r["hash"]) for r in await self._run("reading a tile", work)]

    async def entries(self, domain: str, start: int, count: int) -> list[bytes]:
        async def work(pool: Any) -> Any:
            return await pool.fetch(
                "SELECT data FROM sipcert_tlog_entries WHERE domain = $1 "
                "AND idx >= $2 AND idx < $3 ORDER BY idx",
                domain,
                start,
                start + count,
            )

        return [bytes(r["data"]) for r in await self._run("reading entries", work)]

    async def nodes(
        self, domain: str, keys: Sequence[tuple[int, int]]
    ) -> dict[tuple[int, int], bytes]:
        async def work(pool: Any) -> dict[tuple[int, int], bytes]:
            return await _nodes(pool, domain, keys)

        found: dict[tuple[int, int], bytes] = await self._run("reading log nodes", work)
        return found

    async def latest_enrollment(
        self, domain: str, commitment: bytes, cert_sha256: bytes
    ) -> int | None:
        async def work(pool: Any) -> Any:
            return await pool.fetchval(
                "SELECT max(seq) FROM sipcert_tlog_pending WHERE domain = $1 "
                "AND cert_sha256 = $2 AND commitment = $3 AND operation = $4 "
                "AND seq IS NOT NULL",
                domain,
                cert_sha256,
                commitment,
                int(Operation.ENROLL),
            )

        seq = await self._run("finding a log entry", work)
        return None if seq is None else int(seq)

    async def close(self) -> None:
        await self._db.close()
