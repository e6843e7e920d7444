"""The guessing limiter's state in SQLite, shared by workers (two objects = two workers)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sipcert.errors import StorageError
from sipcert.proto.ratelimit import LoginLimits
from sipcert.server.limits import SqliteLoginLimiter

ALICE = "alice@example.com"


def test_two_workers_share_one_user_bucket(tmp_path: Path) -> None:
    limits = LoginLimits(address_failures=20, user_failures=40)
    one = SqliteLoginLimiter(tmp_path / "ratelimit.db", limits)
    two = SqliteLoginLimiter(tmp_path / "ratelimit.db", limits)
    try:
        admitted = 0
        for i in range(200):
            worker = one if i % 2 else two
            admitted += worker.admit(f"10.0.0.{i}", ALICE, 0.0).admitted
        assert admitted == 40  # as with one worker
        refused = one.admit("10.0.1.1", ALICE, 0.0)
        assert (refused.admitted, refused.reason, refused.retry_after) == (False, "user", 3)
        # The address bucket is shared too.
        assert sum(two.admit("10.0.2.1", None, 0.0).admitted for _ in range(3)) == 3
        assert sum((one, two)[i % 2].admit("10.0.2.1", f"u{i}", 1.0).admitted for i in range(30))
        assert not two.admit("10.0.2.1", "x", 1.0).admitted
    finally:
        one.close()
        two.close()


def test_success_and_trust_are_seen_by_the_other_worker(tmp_path: Path) -> None:
    limits = LoginLimits(user_failures=1, window=6000.0)
    one = SqliteLoginLimiter(tmp_path / "ratelimit.db", limits)
    two = SqliteLoginLimiter(tmp_path / "ratelimit.db", limits)
    try:
        admission = one.admit("127.0.0.2", ALICE, 0.0)
        assert admission.admitted
        one.release("127.0.0.2", ALICE, admission, 0.0, trust=True)
        assert two.rows() == 1  # the tokens came back: only the trust record is left
        assert two.admit("10.0.0.1", ALICE, 1.0).admitted  # a wrong guess: bucket empty
        assert two.admit("10.0.0.2", ALICE, 1.0).reason == "user"
        assert two.admit("127.0.0.2", ALICE, 2.0).admitted  # trusted, seen by worker two
    finally:
        one.close()
        two.close()


def test_invented_user_names_cannot_grow_the_file(tmp_path: Path) -> None:
    limits = LoginLimits(address_failures=1_000_000, user_failures=10, max_keys=1_000)
    limiter = SqliteLoginLimiter(tmp_path / "ratelimit.db", limits)
    try:
        started = time.monotonic()
        for i in range(20_000):
            limiter.admit(f"10.0.{i >> 8 & 255}.{i & 255}", f"u{i}@example.com", 0.0)
        elapsed = time.monotonic() - started
        # Addresses and users, each at most max_keys plus the rows between two checks.
        assert limiter.rows() <= 2 * (1_000 + 1_000)
        assert elapsed < 30  # about 1 ms per decision even on a loaded machine
    finally:
        limiter.close()


def test_full_buckets_go_and_the_fullest_are_evicted_first(tmp_path: Path) -> None:
    limits = LoginLimits(address_failures=100, user_failures=40, window=6000.0, max_keys=10)
    limiter = SqliteLoginLimiter(tmp_path / "ratelimit.db", limits)
    try:
        for i in range(999):
            limiter.admit(f"10.0.{i >> 8}.{i & 255}", None, 0.0)  # admitted, nothing stored
        assert limiter.rows() == 0
        for _ in range(30):  # alice's bucket: 10 tokens left, far from full
            limiter.admit("10.1.0.1", ALICE, 0.0)
        for i in range(499):  # 998 new rows: the 1,000th prunes to the cap
            limiter.admit(f"10.2.{i >> 8}.{i & 255}", f"u{i}@example.com", 1.0)
        assert limiter.rows() <= 10 + 10
        # alice's bucket survived the eviction: still 10 tokens, not a fresh 40.
        assert sum(limiter.admit(f"10.3.0.{i}", ALICE, 1.0).admitted for i in range(50)) == 10
    finally:
        limiter.close()


def test_a_closed_or_broken_database_is_a_storage_error(tmp_path: Path) -> None:
    limiter = SqliteLoginLimiter(tmp_path / "ratelimit.db")
    limiter.close()
    with pytest.raises(StorageError, match="closed"):
        limiter.admit("10.0.0.1", None, 0.0)
    (tmp_path / "bad.db").write_bytes(b"not a database" * 100)
    with pytest.raises(StorageError, match=r"bad\.db"):
        SqliteLoginLimiter(tmp_path / "bad.db")
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="cannot create"):
        SqliteLoginLimiter(tmp_path / "file" / "ratelimit.db")
