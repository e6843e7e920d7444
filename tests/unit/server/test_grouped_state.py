"""Grouped nonce counts and limiter calls (issue 13): fewer transactions, the same answers.

RFC 7616 §3.4: a replayed ``nc`` must be refused, on every worker. The Store's workers are
processes sharing one SQLite file, so the cross-worker test runs real processes; whatever
their interleaving, each (nonce, nc) is accepted exactly once.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipcert.errors import StorageError
from sipcert.proto.digest import AsyncNonceCounter
from sipcert.proto.ratelimit import AsyncLoginLimiter, LoginLimits
from sipcert.server.limits import GroupedLoginLimiter, SqliteLoginLimiter
from sipcert.server.nonces import GroupedNonceCounter, SqliteNonceCounter
from sipcert.server.shared import (
    Confirm,
    GroupedConfirm,
    as_async_counter,
    as_async_limiter,
    confirm_for,
)

_WORKER = """
import asyncio, json, sys
from sipcert.server.nonces import GroupedNonceCounter, SqliteNonceCounter

async def main() -> None:
    counter = GroupedNonceCounter(SqliteNonceCounter(sys.argv[1]))
    calls = [(f"n{i}", nc) for i in range(int(sys.argv[2])) for nc in (1, 1, 2)]
    results = await asyncio.gather(*(counter.advance(n, nc, 100.0) for n, nc in calls))
    counter.inner.close()
    print(json.dumps([[n, nc] for (n, nc), ok in zip(calls, results) if ok]))

asyncio.run(main())
"""


def test_a_count_is_accepted_once_across_worker_processes(tmp_path: Path) -> None:
    path = tmp_path / "nonces.db"
    SqliteNonceCounter(path).close()  # created once, as the Store's parent does
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(path), "300"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    accepted: list[tuple[str, int]] = []
    for worker in workers:
        out, _ = worker.communicate(timeout=120)
        assert worker.returncode == 0
        accepted += [(n, nc) for n, nc in json.loads(out)]
    # Each (nonce, 1) and (nonce, 2) once in all; (nonce, 2) may be taken before (nonce, 1)
    # by another worker, which then refuses that (nonce, 1): never twice.
    assert len(accepted) == len(set(accepted))
    for i in range(300):
        assert (f"n{i}", 2) in accepted


def test_same_nonce_twice_in_one_batch_is_refused_the_second_time(tmp_path: Path) -> None:
    counter = GroupedNonceCounter(SqliteNonceCounter(tmp_path / "n.db"))

    async def scenario() -> list[bool]:
        # Holding the counter's lock makes the calls queue into one batch behind it.
        with counter.inner._lock:
            tasks = [
                asyncio.ensure_future(counter.advance("a", nc, 100.0)) for nc in (1, 1, 3, 2, 4)
            ]
            await asyncio.sleep(0)
        return list(await asyncio.gather(*tasks))

    try:
        assert asyncio.run(scenario()) == [True, False, True, False, True]
        assert counter.group.batched == 5
        assert counter.group.commits <= 2
        assert not counter.inner.advance("a", 4, 100.0)  # the sync path sees the same counts
    finally:
        counter.inner.close()


def test_nc_zero_and_closed_counter(tmp_path: Path) -> None:
    counter = GroupedNonceCounter(SqliteNonceCounter(tmp_path / "n.db"))

    async def scenario() -> None:
        assert not await counter.advance("a", 0, 100.0)
        counter.inner.close()
        try:
            await counter.advance("a", 1, 100.0)
        except StorageError as exc:
            assert "closed" in str(exc)
        else:
            raise AssertionError("a closed counter accepted a count")

    asyncio.run(scenario())


def test_grouped_limiter_counts_as_many_guesses_as_single_calls(tmp_path: Path) -> None:
    """Two 'workers' (connections), concurrent failed guesses: the budget holds exactly."""
    limits = LoginLimits(address_failures=5, user_failures=100, window=60.0)
    path = tmp_path / "ratelimit.db"
    admitted: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        limiter = GroupedLoginLimiter(SqliteLoginLimiter(path, limits))

        async def go() -> list[bool]:
            answers = await asyncio.gather(
                *(limiter.admit("192.0.2.1", "bob@example.com", 1000.0) for _ in range(10))
            )
            return [a.admitted for a in answers]

        try:
            result = asyncio.run(go())
        finally:
            limiter.inner.close()
        with lock:
            admitted.extend(result)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Nothing released: each admitted guess keeps its token; 5 per address in the window.
    assert admitted.count(True) == 5
    assert len(admitted) == 20


def test_grouped_limiter_release_and_challenge(tmp_path: Path) -> None:
    limits = LoginLimits(address_failures=2, user_failures=100, window=60.0)
    limiter = GroupedLoginLimiter(SqliteLoginLimiter(tmp_path / "ratelimit.db", limits))

    async def scenario() -> None:
        first = await limiter.admit("192.0.2.1", "bob@example.com", 1000.0)
        assert first.admitted
        await limiter.release("192.0.2.1", "bob@example.com", first, 1000.0, trust=True)
        # Released with trust: the address keeps its budget, a challenge is one read.
        for _ in range(3):
            again = await limiter.admit("192.0.2.1", "bob@example.com", 1000.0)
            assert again.admitted
            await limiter.release("192.0.2.1", "bob@example.com", again, 1000.0, trust=True)
        assert (await limiter.admit("192.0.2.1", None, 1000.0)).admitted

    try:
        asyncio.run(scenario())
    finally:
        limiter.inner.close()


def _rows(nonces: SqliteNonceCounter, limiter: SqliteLoginLimiter) -> list[object]:
    """Everything both files hold, in order."""
    found: list[object] = []
    assert nonces._conn is not None and limiter._conn is not None
    found += nonces._conn.execute("SELECT nonce, nc FROM nonces ORDER BY nonce").fetchall()
    for table in ("addresses", "users", "trusted"):
        sql = f"SELECT key, until FROM {table} ORDER BY key"  # noqa: S608 (fixed names)
        found += [(table, *row) for row in limiter._conn.execute(sql).fetchall()]
    return found


_STEPS = st.lists(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 1), st.integers(0, 2)),
        min_size=1,
        max_size=6,
    ),
    max_size=6,
)


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=_STEPS)
def test_grouped_confirm_decides_as_the_two_calls_do(
    tmp_path_factory: pytest.TempPathFactory, batches: list[list[tuple[int, int, int, int]]]
) -> None:
    """GroupedConfirm (one hand-off) against the nonce count and release awaited one after
    the other: the same outcome for every call, the same rows after, batches included."""
    limits = LoginLimits(address_failures=3, user_failures=5, window=60.0)
    folder = tmp_path_factory.mktemp("confirm")

    def run(grouped: bool) -> tuple[list[object], list[object]]:
        nonces = SqliteNonceCounter(folder / f"n{grouped}.db")
        limiter = SqliteLoginLimiter(folder / f"l{grouped}.db", limits)
        async_nonces: AsyncNonceCounter = (
            GroupedNonceCounter(nonces) if grouped else as_async_counter(nonces)
        )
        async_limiter: AsyncLoginLimiter = (
            GroupedLoginLimiter(limiter) if grouped else as_async_limiter(limiter)
        )
        confirm = confirm_for(async_nonces, async_limiter)
        assert isinstance(getattr(confirm, "__self__", None), GroupedConfirm) == grouped

        async def go() -> list[object]:
            outcomes: list[object] = []
            now = 1000.0
            for batch in batches:
                now += 7.0
                calls = []
                for nonce, nc, address, user in batch:
                    where, who = f"192.0.2.{address}", f"u{user}@example.com"
                    admission = await async_limiter.admit(where, who, now)
                    outcomes.append(admission.admitted)
                    if admission.admitted:
                        calls.append(confirm(f"n{nonce}", nc, now, where, who, admission))
                outcomes += await asyncio.gather(*calls)
            return outcomes

        try:
            return asyncio.run(go()), _rows(nonces, limiter)
        finally:
            nonces.close()
            limiter.close()

    assert run(grouped=True) == run(grouped=False)


def test_grouped_confirm_releases_untrusted_when_the_count_fails(tmp_path: Path) -> None:
    """The nonce file fails: the caller gets the StorageError, the admission's tokens come
    back untrusted, as when the two calls are awaited one after the other."""
    limits = LoginLimits(address_failures=2, user_failures=100, window=60.0)
    states = []
    for grouped in (True, False):
        nonces = SqliteNonceCounter(tmp_path / f"n{grouped}.db")
        limiter = SqliteLoginLimiter(tmp_path / f"l{grouped}.db", limits)
        confirm = (
            GroupedConfirm(nonces, limiter).confirm
            if grouped
            else confirm_for(as_async_counter(nonces), as_async_limiter(limiter))
        )

        async def go(confirm: Confirm = confirm, limiter: SqliteLoginLimiter = limiter) -> None:
            admission = limiter.admit("192.0.2.1", "bob@example.com", 1000.0)
            assert admission.admitted
            with pytest.raises(StorageError):
                await confirm("n", 1, 1000.0, "192.0.2.1", "bob@example.com", admission)

        nonces.close()
        try:
            asyncio.run(go())
            assert limiter._conn is not None
            states.append(limiter._conn.execute("SELECT key, until FROM addresses").fetchall())
        finally:
            limiter.close()
    # Refunded: the address bucket is full again, so its row is gone.
    assert states == [[], []]
