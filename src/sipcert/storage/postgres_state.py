"""Digest nonce counts and the guessing limiter in the PostgreSQL certificate database (issue 10).

Several Store frontends on several hosts share one database; the state that refuses replays
(RFC 7616 §3.4) and counts password guesses must be shared as well, or an ``Authorization``
captured at one frontend is accepted by the next. Both live in tables of the store's own
schema (created by migration 3 of :mod:`sipcert.storage.postgres`) and use its pool.

* :class:`PostgresNonceCounter`: one statement per answer, ``INSERT ... ON CONFLICT DO UPDATE
  ... WHERE nc < excluded.nc RETURNING``: a row comes back iff the count is new and higher,
  and two frontends racing with the same count cannot both get one (the conflicting insert
  waits for the other's row lock, then re-checks the ``WHERE``).
* :class:`PostgresLoginLimiter`: the pure decision of :mod:`sipcert.proto.ratelimit` inside one
  READ COMMITTED transaction that first takes transaction-level advisory locks on the (sorted)
  keys it reads, so N frontends pass exactly as many guesses as one; a row that does not exist
  yet is protected too, which ``SELECT ... FOR UPDATE`` would not do.
* Pruning is bounded: at most :data:`PRUNE_BATCH` expired rows per statement, at most once a
  minute per process, sooner again when a batch was full.
"""

from __future__ import annotations

import hashlib
from typing import Any

from sipcert.proto.digest import DEFAULT_MAX_CLOCK_SKEW, DEFAULT_NONCE_LIFETIME
from sipcert.proto.ratelimit import LimitState, LoginLimits
from sipcert.storage.dbstate import DatabaseLoginLimiter, DatabaseNonceCounter, Step
from sipcert.storage.postgres import PostgresStore, _storable

__all__ = ["PRUNE_BATCH", "PostgresLoginLimiter", "PostgresNonceCounter"]

#: Most expired rows one prune deletes.
PRUNE_BATCH = 5000

_ADVANCE = (
    "INSERT INTO sipcert_nonces (nonce, first_seen, nc) VALUES ($1, $2, $3) "
    "ON CONFLICT (nonce) DO UPDATE SET nc = excluded.nc "
    "WHERE sipcert_nonces.nc < excluded.nc RETURNING nc"
)
_PRUNE_NONCES = (
    "DELETE FROM sipcert_nonces WHERE nonce IN "
    "(SELECT nonce FROM sipcert_nonces WHERE first_seen < $1 LIMIT $2)"
)
_COUNT_NONCES = "SELECT count(*) FROM sipcert_nonces"

# Advisory lock class 'SIPL' (see postgres.py for 'SIPC' and 'SIPD').
_LIMIT_LOCK_CLASS = 0x5349504C
_LOCK_KEYS = (
    "SELECT pg_advisory_xact_lock($1::int4, hashtext(k)) FROM unnest($2::text[]) WITH ORDINALITY "
    "AS t(k, n) ORDER BY n"
)
_READ = (
    "SELECT kind, key, until FROM sipcert_limits "
    "WHERE (kind, key) IN (SELECT * FROM unnest($1::text[], $2::text[]))"
)
_READ_ONE = "SELECT until FROM sipcert_limits WHERE kind = $1 AND key = $2"
_UPSERT = (
    "INSERT INTO sipcert_limits (kind, key, until) VALUES ($1, $2, $3) "
    "ON CONFLICT (kind, key) DO UPDATE SET until = excluded.until"
)
_DELETE = "DELETE FROM sipcert_limits WHERE kind = $1 AND key = $2"
_PRUNE_LIMITS = (
    "DELETE FROM sipcert_limits WHERE (kind, key) IN "
    "(SELECT kind, key FROM sipcert_limits WHERE until <= $1 LIMIT $2)"
)
_COUNT_LIMITS = "SELECT count(*) FROM sipcert_limits"


def _column(key: str) -> str:
    """``key`` as PostgreSQL text: one it cannot hold (NUL, a lone surrogate) by its hash."""
    if _storable(key):
        return key
    return "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _deleted(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


class PostgresNonceCounter(DatabaseNonceCounter):
    """An :class:`~sipcert.proto.digest.AsyncNonceCounter` in ``sipcert_nonces``."""

    def __init__(
        self,
        store: PostgresStore,
        *,
        retention: float = DEFAULT_NONCE_LIFETIME + DEFAULT_MAX_CLOCK_SKEW,
    ) -> None:
        super().__init__(retention=retention)
        self._store = store

    def __repr__(self) -> str:
        return f"PostgresNonceCounter({self._store.where!r})"

    def _storable(self, nonce: str) -> bool:
        return _storable(nonce)

    async def _raise_count(self, nonce: str, nc: int, now: float) -> bool:
        async def work(pool: Any) -> bool:
            return await pool.fetchval(_ADVANCE, nonce, now, nc) is not None

        return await self._store._run("recording a nonce count", work)

    async def prune(self, now: float) -> int:
        """Delete at most :data:`PRUNE_BATCH` forgotten nonces; how many went."""

        async def work(pool: Any) -> int:
            return _deleted(await pool.execute(_PRUNE_NONCES, now - self._retention, PRUNE_BATCH))

        deleted = await self._store._run("pruning nonce counts", work)
        self._pruner.done(now, deleted, PRUNE_BATCH)
        return deleted

    async def count(self) -> int:
        """Rows in the table (tests and monitoring)."""

        async def work(pool: Any) -> int:
            return int(await pool.fetchval(_COUNT_NONCES))

        return await self._store._run("counting nonce counts", work)


class PostgresLoginLimiter(DatabaseLoginLimiter):
    """An :class:`~sipcert.proto.ratelimit.AsyncLoginLimiter` in ``sipcert_limits``."""

    def __init__(self, store: PostgresStore, limits: LoginLimits | None = None) -> None:
        super().__init__(limits)
        self._store = store

    def __repr__(self) -> str:
        return f"PostgresLoginLimiter({self._store.where!r})"

    async def _address_until(self, address: str) -> float | None:
        async def read(pool: Any) -> Any:
            return await pool.fetchval(_READ_ONE, "address", _column(address))

        until = await self._store._run("checking a rate limit", read)
        return None if until is None else float(until)

    async def _transaction(
        self,
        address: str,
        user: str | None,
        now: float,
        step: Step,
        action: str,
    ) -> None:
        keys = [("address", _column(address))]
        if user is not None:
            keys += [("user", _column(user)), ("trusted", _column(f"{user}\n{address}"))]
        if self._pruner.due(now):
            await self.prune(now)

        async def work(pool: Any) -> None:
            async with pool.acquire() as conn, conn.transaction(isolation="read_committed"):
                await conn.execute(
                    _LOCK_KEYS, _LIMIT_LOCK_CLASS, sorted(f"{k}\n{v}" for k, v in keys)
                )
                rows = await conn.fetch(_READ, [k for k, _ in keys], [v for _, v in keys])
                found = {(r["kind"], r["key"]): float(r["until"]) for r in rows}
                before = [found.get(key) for key in keys]
                state = LimitState(*before, *([None] * (3 - len(before))))
                step(state)
                after = [state.address_at, state.user_at, state.trusted_until][: len(keys)]
                for (kind, key), old, new in zip(keys, before, after, strict=True):
                    if new == old:
                        continue
                    if new is None:
                        await conn.execute(_DELETE, kind, key)
                    else:
                        await conn.execute(_UPSERT, kind, key, new)

        await self._store._run(action, work)

    async def prune(self, now: float) -> int:
        """Delete at most :data:`PRUNE_BATCH` rows that no longer change an answer."""

        async def work(pool: Any) -> int:
            return _deleted(await pool.execute(_PRUNE_LIMITS, now, PRUNE_BATCH))

        deleted = await self._store._run("pruning rate limits", work)
        self._pruner.done(now, deleted, PRUNE_BATCH)
        return deleted

    async def rows(self) -> int:
        """Rows in the table (tests and monitoring)."""

        async def work(pool: Any) -> int:
            return int(await pool.fetchval(_COUNT_LIMITS))

        return await self._store._run("counting rate limits", work)
