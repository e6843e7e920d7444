"""Token buckets that slow password guessing at the Store."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipcert.proto.ratelimit import RateLimiter


def test_capacity_then_refused_then_refilled() -> None:
    limiter = RateLimiter(3, 60.0)
    for _ in range(3):
        assert limiter.allowed("198.51.100.7", 0.0)
        limiter.charge("198.51.100.7", 0.0)
    assert not limiter.allowed("198.51.100.7", 0.0)
    assert limiter.retry_after("198.51.100.7", 0.0) == 20  # one token per 20 s
    assert not limiter.allowed("198.51.100.7", 19.0)
    assert limiter.allowed("198.51.100.7", 20.0)
    assert limiter.retry_after("198.51.100.7", 20.0) == 0


def test_keys_are_independent() -> None:
    limiter = RateLimiter(1, 10.0)
    limiter.charge("a", 0.0)
    assert not limiter.allowed("a", 0.0)
    assert limiter.allowed("b", 0.0)


def test_refill_never_exceeds_capacity() -> None:
    limiter = RateLimiter(2, 10.0)
    limiter.charge("a", 0.0)
    limiter.charge("a", 1000.0)  # long idle: back to 2, minus 1
    assert limiter.allowed("a", 1000.0)
    limiter.charge("a", 1000.0)
    assert not limiter.allowed("a", 1000.0)


def test_clock_going_backwards_does_not_refill() -> None:
    limiter = RateLimiter(1, 10.0)
    limiter.charge("a", 100.0)
    assert not limiter.allowed("a", 50.0)


def test_bounded_memory_forgets_the_oldest() -> None:
    limiter = RateLimiter(1, 60.0, max_keys=2)
    for key in ("a", "b", "c"):
        limiter.charge(key, 0.0)
    assert len(limiter) == 2
    assert limiter.allowed("a", 0.0)  # forgotten: starts full again
    assert not limiter.allowed("c", 0.0)


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="capacity"):
        RateLimiter(0, 1.0)
    with pytest.raises(ValueError, match="period"):
        RateLimiter(1, 0.0)


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=50))
def test_never_more_than_capacity_plus_refill(times: list[float]) -> None:
    """Over any schedule, allowed charges <= capacity + elapsed * rate."""
    limiter = RateLimiter(5, 50.0)
    times.sort()
    allowed = 0
    for now in times:
        if limiter.allowed("k", now):
            allowed += 1
            limiter.charge("k", now)
    assert allowed <= 5 + (times[-1] - times[0]) * (5 / 50.0) + 1e-9
