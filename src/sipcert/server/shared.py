"""Where a Store process keeps the state all frontends must share (issue 10).

Digest nonce counts (replays, RFC 7616 §3.4) and the guessing limiter are chosen with the
certificate storage: a PostgreSQL or MariaDB/MySQL database holds them in its own tables, so
every frontend on every host sees one count per nonce and one bucket per user; an SQLite
store (one host) keeps them in local files of the data folder, shared by that host's
workers. The Store awaits both; the SQLite ones group concurrent calls into one transaction
in a worker thread (``GroupedNonceCounter``, ``GroupedLoginLimiter``, issue 13).

A correct Digest answer ends with two steps, the nonce count and then, if it advanced, the
limiter's release: :func:`confirm_for` gives the Store one call for both, which for the
SQLite state is one hand-off to a worker thread instead of two (:class:`GroupedConfirm`).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from sipcert.proto.digest import AsyncNonceCounter, NonceCounter
from sipcert.proto.ratelimit import Admission, AsyncLoginLimiter, LoginLimiter, LoginLimits
from sipcert.server.limits import GroupedLoginLimiter, SqliteLoginLimiter
from sipcert.server.nonces import GroupedNonceCounter, SqliteNonceCounter
from sipcert.storage import CertificateStore, MysqlStore, PostgresStore
from sipcert.storage.mysql import MysqlLoginLimiter, MysqlNonceCounter
from sipcert.storage.postgres_state import PostgresLoginLimiter, PostgresNonceCounter
from sipcert.storage.sqlite import GroupCommit

__all__ = [
    "LIMITS_DB",
    "NONCE_DB",
    "Confirm",
    "GroupedConfirm",
    "SharedState",
    "as_async_counter",
    "as_async_limiter",
    "confirm_for",
    "open_shared_state",
]

#: File of the nonce counts inside the data folder (SQLite storage only).
NONCE_DB = "nonces.db"
#: File of the Digest guessing limiter's state inside the data folder (SQLite storage only).
LIMITS_DB = "ratelimit.db"


class _AsyncCounter:
    """A synchronous :class:`NonceCounter` seen as an :class:`AsyncNonceCounter`."""

    def __init__(self, inner: NonceCounter) -> None:
        self.inner = inner

    async def advance(self, nonce: str, nc: int, now: float) -> bool:
        return self.inner.advance(nonce, nc, now)


class _AsyncLimiter:
    """A synchronous :class:`LoginLimiter` seen as an :class:`AsyncLoginLimiter`."""

    def __init__(self, inner: LoginLimiter) -> None:
        self.inner = inner

    async def admit(self, address: str, user: str | None, now: float) -> Admission:
        return self.inner.admit(address, user, now)

    async def release(
        self, address: str, user: str, admission: Admission, now: float, *, trust: bool
    ) -> None:
        self.inner.release(address, user, admission, now, trust=trust)

    def admit_challenge_now(self, address: str, now: float) -> bool:
        """Whether a challenge from ``address`` is admitted by a read alone (no state changes);
        False means "ask :meth:`admit`" (server.hotget, issue 13)."""
        peek = getattr(self.inner, "admit_challenge", None)
        return peek is not None and peek(address, None, now) is not None


def as_async_counter(counter: NonceCounter | AsyncNonceCounter) -> AsyncNonceCounter:
    """``counter`` itself if its ``advance`` is a coroutine function, else wrapped."""
    if inspect.iscoroutinefunction(counter.advance):
        return cast(AsyncNonceCounter, counter)
    return _AsyncCounter(cast(NonceCounter, counter))


def as_async_limiter(limiter: LoginLimiter | AsyncLoginLimiter) -> AsyncLoginLimiter:
    """``limiter`` itself if its ``admit`` is a coroutine function, else wrapped."""
    if inspect.iscoroutinefunction(limiter.admit):
        return cast(AsyncLoginLimiter, limiter)
    return _AsyncLimiter(cast(LoginLimiter, limiter))


#: ``confirm(nonce, nc, now, address, user, admission)``: record the count of a correct
#: answer; if it advanced, give the admission's tokens back and trust the pair (True); a
#: replay keeps them (False). A failure to record it releases untrusted, then raises.
Confirm = Callable[[str, int, float, str, str, Admission], Awaitable[bool]]


def confirm_for(nonces: AsyncNonceCounter, limiter: AsyncLoginLimiter) -> Confirm:
    """The :data:`Confirm` of this state: :class:`GroupedConfirm` for the SQLite files,
    else the two awaited calls one after the other."""
    if isinstance(nonces, GroupedNonceCounter) and isinstance(limiter, GroupedLoginLimiter):
        return GroupedConfirm(nonces.inner, limiter.inner).confirm

    async def confirm(
        nonce: str, nc: int, now: float, address: str, user: str, admission: Admission
    ) -> bool:
        try:
            advanced = await nonces.advance(nonce, nc, now)
        except BaseException:  # storage: nothing was guessed
            await limiter.release(address, user, admission, now, trust=False)
            raise
        if advanced:
            await limiter.release(address, user, admission, now, trust=True)
        return advanced

    return confirm


#: One call of :meth:`GroupedConfirm.confirm`: its arguments, in order.
_ConfirmItem = tuple[str, int, float, str, str, Admission]


class GroupedConfirm:
    """:data:`Confirm` for the SQLite state: the nonce count and the release in one hand-off.

    Concurrent calls are batched (:class:`~sipcert.storage.sqlite.GroupCommit`): the batch's
    counts are one ``BEGIN IMMEDIATE`` transaction of the nonce file
    (:meth:`SqliteNonceCounter.advance_many`, the very transaction
    :class:`GroupedNonceCounter` runs, so a replayed ``nc`` is refused across workers exactly
    as before), and only then the releases of the answers whose count advanced (trusted) or
    could not be recorded (untrusted) are one transaction of the limiter's file
    (:meth:`SqliteLoginLimiter.run_many`). Same steps, same order, same outcomes as the two
    awaited calls; what goes is one thread hand-off and its wake-ups per enrollment.
    """

    def __init__(self, nonces: SqliteNonceCounter, limiter: SqliteLoginLimiter) -> None:
        self._nonces = nonces
        self._limiter = limiter
        self.group: GroupCommit[_ConfirmItem, bool] = GroupCommit(self._run)

    async def confirm(
        self, nonce: str, nc: int, now: float, address: str, user: str, admission: Admission
    ) -> bool:
        if nc < 1:  # GroupedNonceCounter.advance's answer, without the hand-off
            return False
        return await self.group.submit((nonce, nc, now, address, user, admission))

    def _run(self, items: list[_ConfirmItem]) -> list[bool | BaseException]:
        counted = self._nonces.advance_many([(nonce, nc, now) for nonce, nc, now, *_ in items])
        ops, released = [], []
        for at, ((_, _, now, address, user, admission), outcome) in enumerate(
            zip(items, counted, strict=True)
        ):
            if outcome is False:  # a replay: the guess keeps its reserved tokens
                continue
            trust = outcome is True
            ops.append(self._limiter.release_op(address, user, admission, now, trust=trust))
            released.append(at)
        outcomes = list(counted)
        if ops:
            for at, failure in zip(released, self._limiter.run_many(ops), strict=True):
                if failure is not None and outcomes[at] is True:
                    outcomes[at] = failure  # as a failed release after the count: raised
        return outcomes


@dataclass
class SharedState:
    """The nonce counter and limiter of one worker, and what closing them takes."""

    nonces: AsyncNonceCounter
    limiter: AsyncLoginLimiter
    #: Where they live, for the start-up log line.
    where: str
    _files: tuple[SqliteNonceCounter, SqliteLoginLimiter] | None = None

    def close(self) -> None:
        """Close local files; database-backed state goes with the storage's pool."""
        if self._files is not None:
            for part in self._files:
                part.close()


def open_shared_state(
    storage: CertificateStore,
    data_dir: Path,
    *,
    retention: float,
    limits: LoginLimits,
) -> SharedState:
    """The state for ``storage``: in its database if it is shared (PostgreSQL, MySQL), else
    files."""
    if isinstance(storage, PostgresStore):
        return SharedState(
            PostgresNonceCounter(storage, retention=retention),
            PostgresLoginLimiter(storage, limits),
            where=f"certificate database {storage.where}",
        )
    if isinstance(storage, MysqlStore):
        return SharedState(
            MysqlNonceCounter(storage, retention=retention),
            MysqlLoginLimiter(storage, limits),
            where=f"certificate database {storage.where}",
        )
    nonces = SqliteNonceCounter(data_dir / NONCE_DB, retention=retention)
    try:
        limiter = SqliteLoginLimiter(data_dir / LIMITS_DB, limits)
    except BaseException:
        nonces.close()
        raise
    return SharedState(
        GroupedNonceCounter(nonces),
        GroupedLoginLimiter(limiter),
        where=f"files of {data_dir}",
        _files=(nonces, limiter),
    )
