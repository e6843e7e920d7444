"""Token-bucket rate limiting, without I/O (the caller passes ``now``).

The Store's Digest endpoint is an online password oracle: without a limit, anyone on the
internet can try passwords as fast as the server answers. The Store charges one token per
failed authentication to the client address and to the user name, and answers 429 while a
bucket is empty, so guessing is slowed to the refill rate while honest clients, who fail at
most once or twice, never notice.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["RateLimiter"]


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """Buckets of ``capacity`` tokens per key, refilled at ``capacity / period`` per second.

    At most ``max_keys`` buckets are kept; the least recently charged are forgotten first
    (a forgotten key starts full, which errs on the side of letting clients through rather
    than growing without bound under a flood of distinct keys).
    """

    def __init__(self, capacity: int, period: float, *, max_keys: int = 100_000) -> None:
        if capacity < 1 or not period > 0 or max_keys < 1:
            raise ValueError("capacity and max_keys must be >= 1 and period > 0")
        self.capacity = capacity
        self.period = period
        self._rate = capacity / period
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def _level(self, key: str, now: float) -> float:
        bucket = self._buckets.get(key)
        if bucket is None:
            return float(self.capacity)
        elapsed = max(0.0, now - bucket.stamp)
        return min(float(self.capacity), bucket.tokens + elapsed * self._rate)

    def allowed(self, key: str, now: float) -> bool:
        """Whether ``key`` has a token left (nothing is charged)."""
        return self._level(key, now) >= 1.0

    def retry_after(self, key: str, now: float) -> int:
        """Whole seconds until ``key`` has a token again (0 if it has one now)."""
        missing = 1.0 - self._level(key, now)
        return 0 if missing <= 0 else max(1, math.ceil(missing / self._rate))

    def charge(self, key: str, now: float) -> None:
        """Take one token from ``key``'s bucket (it may go down to zero, not below)."""
        level = max(0.0, self._level(key, now) - 1.0)
        self._buckets[key] = _Bucket(level, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)
