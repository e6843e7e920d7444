"""Limits on Digest password guessing that an attacker cannot turn against the user, no I/O.

The Store's Digest endpoint is an online password oracle. Three pieces of state bound it:

* a bucket per **client address** (IPv4 address, IPv6 /64): every answer that is checked
  takes a token, and so does every request refused with 429 — a client that keeps knocking
  while refused never gets a token back;
* a bucket per **user** across all addresses, which bounds guessing one password from many
  addresses; it holds more tokens than an address bucket and refills at the same rate, so one
  address alone can never empty it;
* a record of the (user, address) pairs that **succeeded recently**: such a pair is not
  refused when the user's bucket is empty, so a user who logged in from an address before an
  attack keeps logging in from it while guesses from other addresses empty her bucket.

Why this design: the alternative "a slow-down that the right password passes" would have to
check the password to let it pass, which makes every over-budget guess an answer again and
the per-user bound void. Here the decision to refuse depends only on the user name, the
address and the time, never on the password, and it is made before any credential is looked
up, so a 429 says nothing about the password or whether the user exists.

A checked answer reserves its tokens *before* the check (:meth:`LoginLimiter.admit`) and
gets them back if it succeeds (:meth:`LoginLimiter.release`): concurrent guesses, on one
worker or many sharing the state, can never pass more than the buckets hold.

Buckets are stored as the time at which they are full again (the "theoretical arrival
time" of GCRA): one number per key, and a key whose time has passed can be forgotten without
changing any answer. Memory is capped: past the cap, the least recently charged keys are
forgotten first (a forgotten bucket is full again, which errs towards letting clients in).
"""

from __future__ import annotations

import functools
import ipaddress
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "Admission",
    "AsyncLoginLimiter",
    "LimitState",
    "LoginLimiter",
    "LoginLimits",
    "MemoryLoginLimiter",
    "RateLimiter",
    "address_key",
    "decide",
]


@dataclass(frozen=True)
class LoginLimits:
    """The numbers of the limiter (defaults documented in docs/store.md).

    ``address_failures`` tokens per address and ``user_failures`` per user, both refilled at
    one token every ``window / address_failures`` seconds; a success keeps the (user,
    address) pair trusted for ``trust_period`` seconds. Each map holds at most ``max_keys``.
    """

    address_failures: int = 20
    user_failures: int = 40
    window: float = 60.0
    trust_period: float = 30 * 86400.0
    max_keys: int = 100_000

    def __post_init__(self) -> None:
        if self.address_failures < 1 or self.user_failures < 1 or self.max_keys < 1:
            raise ValueError("failure counts and max_keys must be >= 1")
        if not (self.window > 0 and self.trust_period >= 0):
            raise ValueError("window must be > 0 and trust_period >= 0")

    @property
    def interval(self) -> float:
        """Seconds per refilled token."""
        return self.window / self.address_failures


@dataclass(frozen=True)
class Admission:
    """Whether a request may go on; if not, whole seconds until it may (``Retry-After``)."""

    admitted: bool
    retry_after: int = 0
    reason: str = ""
    #: Seconds the admission added to the address and user buckets (what a release undoes).
    address_cost: float = 0.0
    user_cost: float = 0.0


def address_key(remote: str | None) -> str:
    """The bucket key of a client address: IPv4 as is, IPv6 by its /64 (one subscriber).

    Remembered for the last 4,096 addresses (a pure function of the text; a client asks it
    for its 401 and again for its answer, issue 13).
    """
    if not remote:
        return "-"
    return _address_key(remote)


@functools.lru_cache(maxsize=4096)
def _address_key(remote: str) -> str:
    try:
        ip = ipaddress.ip_address(remote.partition("%")[0])
    except ValueError:
        return remote[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def _tokens(full_at: float | None, now: float, capacity: int, interval: float) -> float:
    if full_at is None:
        return float(capacity)
    return max(0.0, capacity - max(0.0, full_at - now) / interval)


def _charged(full_at: float | None, now: float, capacity: int, interval: float) -> float:
    """One token less (down to zero, not below); the clock going back refills nothing."""
    base = now if full_at is None else max(full_at, now)
    ceiling = now + capacity * interval
    new = base + interval
    return new if new <= ceiling else max(base, ceiling)


def _refunded(full_at: float | None, now: float, cost: float) -> float | None:
    """``cost`` seconds back; ``None`` once the bucket is full."""
    if full_at is None:
        return None
    new = full_at - cost
    return new if new > now else None


def _cost(before: float | None, after: float | None, now: float) -> float:
    return 0.0 if after is None else after - (now if before is None else max(before, now))


def _wait(full_at: float | None, now: float, capacity: int, interval: float) -> int:
    missing = 1.0 - _tokens(full_at, now, capacity, interval)
    return 0 if missing <= 1e-9 else max(1, math.ceil(missing * interval - 1e-9))


@dataclass
class LimitState:
    """The state one decision reads and writes: two bucket times and the trust expiry."""

    address_at: float | None
    user_at: float | None
    trusted_until: float | None


def decide(limits: LoginLimits, state: LimitState, now: float, *, checks: bool) -> Admission:
    """Admit or refuse, updating ``state`` in place (pure; the storage runs it atomically).

    ``checks`` is whether the request carries an answer to check (a user is named); without
    one only the address bucket is consulted and nothing is charged unless it refuses.
    """
    interval = limits.interval
    if _tokens(state.address_at, now, limits.address_failures, interval) < 1.0:
        wait = _wait(state.address_at, now, limits.address_failures, interval)
        state.address_at = _charged(state.address_at, now, limits.address_failures, interval)
        return Admission(False, wait, "address")
    if not checks:
        return Admission(True)
    trusted = state.trusted_until is not None and state.trusted_until > now
    if not trusted and _tokens(state.user_at, now, limits.user_failures, interval) < 1.0:
        wait = _wait(state.user_at, now, limits.user_failures, interval)
        state.address_at = _charged(state.address_at, now, limits.address_failures, interval)
        return Admission(False, wait, "user")
    address_at, user_at = state.address_at, state.user_at
    state.address_at = _charged(address_at, now, limits.address_failures, interval)
    state.user_at = _charged(user_at, now, limits.user_failures, interval)
    return Admission(
        True,
        address_cost=_cost(address_at, state.address_at, now),
        user_cost=_cost(user_at, state.user_at, now),
    )


def release(state: LimitState, admission: Admission, now: float, *, trust: float) -> None:
    """Undo ``admission``'s charge; ``trust`` > 0 trusts the pair for that long (pure)."""
    state.address_at = _refunded(state.address_at, now, admission.address_cost)
    state.user_at = _refunded(state.user_at, now, admission.user_cost)
    if trust > 0:
        state.trusted_until = now + trust


class LoginLimiter(Protocol):
    """Where the Store keeps the limiter state: in memory, or shared by workers (SQLite)."""

    def admit(self, address: str, user: str | None, now: float) -> Admission:
        """Decide before anything is checked; reserve the tokens of an admitted answer."""

    def release(
        self, address: str, user: str, admission: Admission, now: float, *, trust: bool
    ) -> None:
        """Give back ``admission``'s tokens (it succeeded, or was not a guess); ``trust``
        records a success."""


class AsyncLoginLimiter(Protocol):
    """A :class:`LoginLimiter` behind a network round trip (tables of the certificate
    database shared by every frontend, issue 10), awaited by the Store."""

    async def admit(self, address: str, user: str | None, now: float) -> Admission:
        """See :meth:`LoginLimiter.admit`."""

    async def release(
        self, address: str, user: str, admission: Admission, now: float, *, trust: bool
    ) -> None:
        """See :meth:`LoginLimiter.release`."""


class _Capped(OrderedDict[str, float]):
    """An LRU map of "full again at" times holding at most ``cap`` keys."""

    def __init__(self, cap: int) -> None:
        super().__init__()
        self.cap = cap

    def put(self, key: str, value: float | None) -> None:
        """Store ``value`` (``None``: the bucket is full, forget it), evicting the oldest."""
        if value is None:
            self.pop(key, None)
            return
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.cap:
            self.popitem(last=False)


class MemoryLoginLimiter:
    """:class:`LoginLimiter` in this process's memory (unit tests, one worker)."""

    def __init__(self, limits: LoginLimits | None = None) -> None:
        self.limits = limits or LoginLimits()
        cap = self.limits.max_keys
        self._addresses = _Capped(cap)
        self._users = _Capped(cap)
        self._trusted = _Capped(cap)

    def _state(self, address: str, user: str | None) -> LimitState:
        pair = f"{user}\n{address}"
        return LimitState(
            self._addresses.get(address),
            None if user is None else self._users.get(user),
            None if user is None else self._trusted.get(pair),
        )

    def _store(self, address: str, user: str | None, state: LimitState, now: float) -> None:
        self._addresses.put(address, state.address_at)
        if user is not None:
            self._users.put(user, state.user_at)
            self._trusted.put(f"{user}\n{address}", state.trusted_until)

    def admit(self, address: str, user: str | None, now: float) -> Admission:
        state = self._state(address, user)
        admission = decide(self.limits, state, now, checks=user is not None)
        self._store(address, user, state, now)
        return admission

    def admit_challenge(self, address: str, user: str | None, now: float) -> Admission | None:
        """The admission of a challenge (no ``user``) that changes nothing, else ``None``
        (call :meth:`admit`): the read-only answer the hot path may give (issue 13)."""
        if user is not None:
            return None
        state = self._state(address, None)
        if decide(self.limits, state, now, checks=False).admitted:
            return Admission(True)
        return None

    def release(
        self, address: str, user: str, admission: Admission, now: float, *, trust: bool
    ) -> None:
        state = self._state(address, user)
        release(state, admission, now, trust=self.limits.trust_period if trust else 0.0)
        self._store(address, user, state, now)

    def __len__(self) -> int:
        """Keys held in all maps together (each is capped at ``max_keys``)."""
        return len(self._addresses) + len(self._users) + len(self._trusted)


class RateLimiter:
    """One map of token buckets of ``capacity`` tokens per key, refilled over ``period``.

    At most ``max_keys`` buckets are kept; the least recently charged are forgotten first
    (a forgotten key starts full).
    """

    def __init__(self, capacity: int, period: float, *, max_keys: int = 100_000) -> None:
        if capacity < 1 or not period > 0 or max_keys < 1:
            raise ValueError("capacity and max_keys must be >= 1 and period > 0")
        self.capacity = capacity
        self.period = period
        self._interval = period / capacity
        self._buckets = _Capped(max_keys)

    def allowed(self, key: str, now: float) -> bool:
        """Whether ``key`` has a token left (nothing is charged)."""
        return _tokens(self._buckets.get(key), now, self.capacity, self._interval) >= 1.0

    def retry_after(self, key: str, now: float) -> int:
        """Whole seconds until ``key`` has a token again (0 if it has one now)."""
        return _wait(self._buckets.get(key), now, self.capacity, self._interval)

    def charge(self, key: str, now: float) -> None:
        """Take one token from ``key``'s bucket (it may go down to zero, not below)."""
        full_at = _charged(self._buckets.get(key), now, self.capacity, self._interval)
        self._buckets.put(key, full_at)

    def __len__(self) -> int:
        return len(self._buckets)
