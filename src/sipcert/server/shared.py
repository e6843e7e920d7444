"""Where a Store process keeps the state all frontends must share (issue 10).

Digest nonce counts (replays, RFC 7616 §3.4) and the guessing limiter are chosen with the
certificate storage: a PostgreSQL or MariaDB/MySQL database holds them in its own tables, so
every frontend on every host sees one count per nonce and one bucket per user; an SQLite
store (one host) keeps them in local files of the data folder, shared by that host's
workers. The Store awaits both; the SQLite ones group concurrent calls into one transaction
in a worker thread (``GroupedNonceCounter``, ``GroupedLoginLimiter``, issue 13).
"""

from __future__ import annotations

import inspect
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

__all__ = [
    "LIMITS_DB",
    "NONCE_DB",
    "SharedState",
    "as_async_counter",
    "as_async_limiter",
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
