"""Token buckets that slow password guessing at the Store."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipcert.proto.ratelimit import (
    LoginLimiter,
    LoginLimits,
    MemoryLoginLimiter,
    RateLimiter,
    address_key,
)


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


# -- the Store's login limiter ---------------------------------------------------------------

ATTACKER, VICTIM = "127.0.0.1", "127.0.0.2"
ALICE = "alice@example.com"


def attack(limiter: LoginLimiter, seconds: float) -> tuple[int, int, int]:
    """Issue 9's attack: 20 wrong guesses, then one every 0.2 s; the victim logs in every
    second from another address. (guesses checked, victim logins, victim successes)."""
    now = 1000.0
    checked = 0
    for _ in range(20):
        if limiter.admit(ATTACKER, ALICE, now).admitted:
            checked += 1  # a wrong guess keeps its tokens
    logins = successes = 0
    for step in range(int(seconds / 0.2)):
        now += 0.2
        if limiter.admit(ATTACKER, ALICE, now).admitted:
            checked += 1
        if step % 5 == 4:
            logins += 1
            admission = limiter.admit(VICTIM, ALICE, now)
            if admission.admitted:
                successes += 1
                limiter.release(VICTIM, ALICE, admission, now, trust=True)
    return checked, logins, successes


def test_guesses_from_one_address_do_not_lock_the_user_out() -> None:
    checked, logins, successes = attack(MemoryLoginLimiter(), 24.0)
    assert (logins, successes) == (24, 24)
    assert checked == 20  # knocking while refused never earns a token back


def test_a_refused_request_is_charged_to_its_address() -> None:
    limiter = MemoryLoginLimiter(LoginLimits(address_failures=2, window=6.0))  # 1 per 3 s
    for _ in range(2):
        assert limiter.admit(ATTACKER, ALICE, 0.0).admitted
    refused = limiter.admit(ATTACKER, ALICE, 0.0)
    assert (refused.admitted, refused.retry_after, refused.reason) == (False, 3, "address")
    for tick in range(1, 30):  # one request every 0.5 s: each refusal pushes the token away
        assert not limiter.admit(ATTACKER, None, tick * 0.5).admitted
    assert limiter.admit(ATTACKER, ALICE, 14.5 + 3.0).admitted  # waiting 3 s earns one
    assert limiter.admit(VICTIM, None, 0.0).admitted  # other addresses are not affected


def test_a_challenge_alone_costs_nothing() -> None:
    limiter = MemoryLoginLimiter(LoginLimits(address_failures=1))
    for _ in range(10):
        assert limiter.admit(ATTACKER, None, 0.0).admitted
    assert limiter.admit(ATTACKER, ALICE, 0.0).admitted


def test_the_user_bucket_bounds_guessing_from_many_addresses() -> None:
    limits = LoginLimits(address_failures=20, user_failures=40, window=60.0)
    limiter = MemoryLoginLimiter(limits)
    admitted = sum(
        limiter.admit(f"10.0.{i // 250}.{i % 250}", ALICE, 0.0).admitted for i in range(1000)
    )
    assert admitted == 40
    refused = limiter.admit("10.9.9.9", ALICE, 0.0)
    assert (refused.reason, refused.retry_after) == ("user", 3)
    # Over time: 40 + one per 3 s, whatever the number of addresses.
    admitted = sum(limiter.admit(f"10.1.0.{i % 250}", ALICE, i * 0.1).admitted for i in range(601))
    assert admitted == 20


def test_a_recent_success_keeps_that_address_in_while_the_user_bucket_is_empty() -> None:
    # One token per 300 s: nothing refills during the test.
    limits = LoginLimits(address_failures=20, user_failures=2, window=6000.0, trust_period=100.0)
    limiter = MemoryLoginLimiter(limits)
    admission = limiter.admit(VICTIM, ALICE, 0.0)
    assert admission.admitted
    limiter.release(VICTIM, ALICE, admission, 0.0, trust=True)
    for source in ("10.0.0.1", "10.0.0.2"):
        assert limiter.admit(source, ALICE, 1.0).admitted
    assert limiter.admit("10.0.0.3", ALICE, 1.0).reason == "user"
    admission = limiter.admit(VICTIM, ALICE, 2.0)  # trusted
    assert admission.admitted
    limiter.release(VICTIM, ALICE, admission, 2.0, trust=False)  # (a stale nonce: no new trust)
    admission = limiter.admit(VICTIM, ALICE, 99.0)
    assert admission.admitted
    limiter.release(VICTIM, ALICE, admission, 99.0, trust=False)
    assert limiter.admit(VICTIM, ALICE, 100.5).reason == "user"  # trust expired


def test_concurrent_answers_cannot_pass_more_than_the_bucket_holds() -> None:
    """Tokens are reserved before the check: 50 answers in flight, only 20 admitted."""
    limiter = MemoryLoginLimiter()
    assert sum(limiter.admit(ATTACKER, ALICE, 0.0).admitted for _ in range(50)) == 20


def test_a_success_gives_its_tokens_back() -> None:
    limiter = MemoryLoginLimiter(LoginLimits(address_failures=1))
    for _ in range(5):
        admission = limiter.admit(VICTIM, ALICE, 0.0)
        assert admission.admitted
        limiter.release(VICTIM, ALICE, admission, 0.0, trust=True)
    assert len(limiter) == 1  # only the trust record: full buckets are forgotten


def test_invented_user_names_cannot_grow_the_state() -> None:
    limiter = MemoryLoginLimiter(LoginLimits(max_keys=10_000))
    for i in range(100_000):
        limiter.admit(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", f"u{i}@example.com", 0.0)
    assert len(limiter) <= 2 * 10_000  # addresses and users; no trust without a success


@pytest.mark.parametrize(
    ("remote", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("fe80::1%eth0", "fe80::/64"),
        (None, "-"),
        ("", "-"),
        ("not-an-ip", "not-an-ip"),
    ],
)
def test_address_key(remote: str | None, key: str) -> None:
    assert address_key(remote) == key


def test_bad_limits() -> None:
    with pytest.raises(ValueError, match="max_keys"):
        LoginLimits(user_failures=0)
    with pytest.raises(ValueError, match="window"):
        LoginLimits(window=0.0)


@given(st.lists(st.floats(min_value=0, max_value=1e4), min_size=1, max_size=60))
def test_login_limiter_never_admits_more_than_burst_plus_refill(times: list[float]) -> None:
    limiter = MemoryLoginLimiter(LoginLimits(address_failures=5, user_failures=8, window=50.0))
    times.sort()
    admitted = sum(limiter.admit(f"10.0.0.{i % 7}", ALICE, t).admitted for i, t in enumerate(times))
    assert admitted <= 8 + (times[-1] - times[0]) / 10.0 + 1e-9
