"""What the nonce counters and guessing limiters kept in a database server share (issue 10).

With PostgreSQL or MariaDB storage every frontend reads and writes the same rows
(:mod:`sipcert.storage.postgres_state`, :mod:`sipcert.storage.mysql`). The SQL differs; the
pruning schedule and the limiter's admit/release around one locked read-decide-write
transaction do not, so they are here once.
"""

from __future__ import annotations

from collections.abc import Callable

from sipcert.proto.ratelimit import Admission, LimitState, LoginLimits, decide, release

__all__ = ["PRUNE_EVERY", "DatabaseLoginLimiter", "Pruner"]

#: Seconds (of ``now``) between two prunes of one process.
PRUNE_EVERY = 60.0

#: ``step(state)``: the pure decision, applied to the locked rows' state in place.
Step = Callable[[LimitState], None]


class Pruner:
    """When to prune next: every :data:`PRUNE_EVERY` seconds, at once after a full batch."""

    def __init__(self) -> None:
        self._last = float("-inf")

    def due(self, now: float) -> bool:
        return now - self._last >= PRUNE_EVERY

    def done(self, now: float, deleted: int, batch: int) -> None:
        self._last = float("-inf") if deleted >= batch else now


class DatabaseLoginLimiter:
    """An :class:`~sipcert.proto.ratelimit.AsyncLoginLimiter` over a backend's two calls.

    A backend provides :meth:`_address_until` (one read, no lock) and :meth:`_transaction`
    (lock the keys in sorted order, read them, ``step``, write what changed, commit; retried
    by the backend if needed, so ``step`` may run more than once and the last run counts).
    """

    def __init__(self, limits: LoginLimits | None = None) -> None:
        self.limits = limits or LoginLimits()
        self._pruner = Pruner()

    async def _address_until(self, address: str) -> float | None:
        raise NotImplementedError

    async def _transaction(
        self, address: str, user: str | None, now: float, step: Step, action: str
    ) -> None:
        raise NotImplementedError

    async def admit(self, address: str, user: str | None, now: float) -> Admission:
        """See :meth:`sipcert.proto.ratelimit.LoginLimiter.admit`.

        A challenge (no ``user``) that is admitted changes nothing: one read, no lock.
        """
        if user is None:
            state = LimitState(await self._address_until(address), None, None)
            if decide(self.limits, state, now, checks=False).admitted:
                return Admission(True)
        result: list[Admission] = []

        def step(state: LimitState) -> None:
            result.append(decide(self.limits, state, now, checks=user is not None))

        await self._transaction(address, user, now, step, "checking a rate limit")
        return result[-1]

    async def release(
        self, address: str, user: str, admission: Admission, now: float, *, trust: bool
    ) -> None:
        """See :meth:`sipcert.proto.ratelimit.LoginLimiter.release`."""
        period = self.limits.trust_period if trust else 0.0

        def step(state: LimitState) -> None:
            release(state, admission, now, trust=period)

        await self._transaction(address, user, now, step, "releasing a rate limit")
