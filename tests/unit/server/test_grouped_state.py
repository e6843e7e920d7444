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

from sipcert.errors import StorageError
from sipcert.proto.ratelimit import LoginLimits
from sipcert.server.limits import GroupedLoginLimiter, SqliteLoginLimiter
from sipcert.server.nonces import GroupedNonceCounter, SqliteNonceCounter

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
