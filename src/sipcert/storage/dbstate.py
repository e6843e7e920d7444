"""What the nonce counters and guessing limiters kept in a database server share (issue 10).

With PostgreSQL or MariaDB storage every frontend reads and writes the same rows
(:mod:`sipcert.storage.postgres_state`, :mod:`sipcert.storage.mysql`). The SQL differs; the
pruning schedule, the nonce counter's checks around its one upsert, and the limiter's
admit/release around one locked read-decide-write transaction do not, so they are here once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

from sipcert.errors import ConfigError
from sipcert.proto.digest import DEFAULT_MAX_CLOCK_SKEW, DEFAULT_NONCE_LIFETIME
from sipcert.proto.ratelimit import Admission, LimitState, LoginLimits, decide, release

__all__ = ["PRUNE_EVERY", "DatabaseLoginLimiter", "DatabaseNonceCounter", "Pruner"]

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


class DatabaseNonceCounter(ABC):
    """An :class:`~sipcert.proto.digest.AsyncNonceCounter` over a backend's one upsert.

    A nonce is forgotten ``retention`` seconds after its first use (safe when that is at least
    the nonce lifetime plus the clock skew: older nonces are refused as stale first).
    """

    def __init__(
        self, *, retention: float = DEFAULT_NONCE_LIFETIME + DEFAULT_MAX_CLOCK_SKEW
    ) -> None:
        if not retention > 0:
            raise ConfigError(f"{type(self).__name__} needs retention > 0")
        self._retention = retention
        self._pruner = Pruner()

    async def advance(self, nonce: str, nc: int, now: float) -> bool:
        """Record ``nc`` for ``nonce``; True iff it is above every count seen for it."""
        if nc < 1 or nc >= 2**63 or not self._storable(nonce):
            return False
        if self._pruner.due(now):
            await self.prune(now)
        return await self._raise_count(nonce, nc, now)

    @abstractmethod
    def _storable(self, nonce: str) -> bool:
        """Whether the backend's column can hold ``nonce`` (one it cannot was never issued)."""

    @abstractmethod
    async def _raise_count(self, nonce: str, nc: int, now: float) -> bool:
        """The atomic upsert: store ``nc`` only if higher; True iff it was stored."""

    @abstractmethod
    async def prune(self, now: float) -> int:
        """Delete a bounded batch of forgotten nonces; how many went."""


class DatabaseLoginLimiter(ABC):
    """An :class:`~sipcert.proto.ratelimit.AsyncLoginLimiter` over a backend's two calls.

    A backend provides :meth:`_address_until` (one read, no lock) and :meth:`_transaction`
    (lock the keys in sorted order, read them, ``step``, write what changed, commit; retried
    by the backend if needed, so ``step`` may run more than once and the last run counts).
    """

    def __init__(self, limits: LoginLimits | None = None) -> None:
        self.limits = limits or LoginLimits()
        self._pruner = Pruner()

    @abstractmethod
    async def _address_until(self, address: str) -> float | None:
        """When the address's bucket is full again (None: it is full now); no lock."""

    @abstractmethod
    async def _transaction(
        self, address: str, user: str | None, now: float, step: Step, action: str
    ) -> None:
        """Lock, read, ``step`` and write the keys of ``address`` (and ``user``), atomically."""

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
