"""Nonce counts and the guessing limiter in PostgreSQL, shared by frontends (issue 10).

Two :class:`PostgresStore` objects on one schema are two frontends (each has its own pool);
every test runs against the real server in a fresh schema, dropped afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from sipcert.errors import StorageError
from sipcert.proto.ratelimit import LoginLimits
from sipcert.storage import PostgresStore, open_store
from sipcert.storage import postgres_state as state
from sipcert.storage.postgres_state import PostgresLoginLimiter, PostgresNonceCounter
from tests.unit.storage.test_postgres import pg_fetch
from tests.unit.storage.test_storage import postgres_schema, postgres_url

pytestmark = pytest.mark.peer("psql")

ALICE = "alice@example.com"
NONCE = "n" * 54


@pytest.fixture
def schema() -> Iterator[str]:
    with postgres_schema() as name:
        yield name


def with_frontends(
    schema: str, scenario: Callable[[PostgresStore, PostgresStore], Awaitable[None]]
) -> None:
    async def main() -> None:
        one, two = (open_store(postgres_url(schema)) for _ in range(2))
        assert isinstance(one, PostgresStore) and isinstance(two, PostgresStore)
        try:
            await scenario(one, two)
        finally:
            await one.close()
            await two.close()

    asyncio.run(main())


def test_counts_must_increase_per_nonce_across_frontends(schema: str) -> None:
    async def scenario(one: PostgresStore, two: PostgresStore) -> None:
        a, b = PostgresNonceCounter(one), PostgresNonceCounter(two)
        assert await a.advance(NONCE, 1, 100.0)
        assert not await b.advance(NONCE, 1, 100.0)  # the replay, at the other frontend
        assert await b.advance(NONCE, 3, 101.0)
        assert not await a.advance(NONCE, 2, 102.0)
        assert not await a.advance(NONCE, 3, 102.0)
        assert await a.advance(NONCE, 4, 102.0)
        assert not await a.advance("m" * 54, 0, 102.0)  # nc starts at 1 (RFC 7616 §3.4)
        assert not await a.advance("bad\x00nonce", 1, 102.0)  # not storable: never accepted
        assert await a.count() == 1

    with_frontends(schema, scenario)


def test_a_race_for_one_count_has_one_winner(schema: str) -> None:
    """Forty concurrent uses of one (nonce, nc) at two frontends: exactly one is accepted."""

    async def scenario(one: PostgresStore, two: PostgresStore) -> None:
        counters = [PostgresNonceCounter(one), PostgresNonceCounter(two)]
        for round_ in range(1, 4):
            nonce = f"{round_}" * 54
            results = await asyncio.gather(
                *(counters[i % 2].advance(nonce, 1, 100.0) for i in range(40))
            )
            assert sum(results) == 1

    with_frontends(schema, scenario)


def test_pruning_forgets_old_nonces_a_bounded_batch_at_a_time(
    schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state, "PRUNE_BATCH", 3)

    async def scenario(one: PostgresStore, _two: PostgresStore) -> None:
        counter = PostgresNonceCounter(one, retention=10.0)
        for i in range(7):
            assert await counter.advance(f"{i}" * 54, 1, 0.0)
        assert await counter.prune(5.0) == 0  # nothing is old enough yet
        assert await counter.prune(100.0) == 3  # one bounded batch
        assert await counter.count() == 4
        # A full batch makes the next use prune again at once; then once a minute.
        assert await counter.advance("x" * 54, 1, 100.0)
        assert await counter.count() == 2
        assert await counter.advance("y" * 54, 1, 101.0)  # prunes the last old one
        assert await counter.count() == 2
        assert await counter.advance("z" * 54, 1, 102.0)  # 1 < 3 deleted: wait a minute
        assert await counter.count() == 3
        # A forgotten nonce is older than its lifetime: the Digest check calls it stale.
        assert await counter.advance("7" * 54, 1, 170.0)

    with_frontends(schema, scenario)


def test_frontends_share_one_user_bucket(schema: str) -> None:
    limits = LoginLimits(address_failures=20, user_failures=40)

    async def scenario(one: PostgresStore, two: PostgresStore) -> None:
        frontends = [PostgresLoginLimiter(one, limits), PostgresLoginLimiter(two, limits)]
        # Concurrent guesses at both frontends pass exactly as many as one frontend would.
        admissions = await asyncio.gather(
            *(frontends[i % 2].admit(f"10.0.0.{i}", ALICE, 0.0) for i in range(120))
        )
        assert sum(a.admitted for a in admissions) == 40
        refused = await frontends[0].admit("10.0.1.1", ALICE, 0.0)
        assert (refused.admitted, refused.reason, refused.retry_after) == (False, "user", 3)
        # The address bucket is shared too.
        for _ in range(3):
            assert (await frontends[1].admit("10.0.2.1", None, 0.0)).admitted
        passed = [
            (await frontends[i % 2].admit("10.0.2.1", f"u{i}", 1.0)).admitted for i in range(30)
        ]
        assert sum(passed) == 20
        assert not (await frontends[1].admit("10.0.2.1", None, 1.0)).admitted

    with_frontends(schema, scenario)


def test_success_and_trust_are_seen_by_the_other_frontend(schema: str) -> None:
    limits = LoginLimits(user_failures=1, window=6000.0)

    async def scenario(one: PostgresStore, two: PostgresStore) -> None:
        a, b = PostgresLoginLimiter(one, limits), PostgresLoginLimiter(two, limits)
        admission = await a.admit("127.0.0.2", ALICE, 0.0)
        assert admission.admitted
        await a.release("127.0.0.2", ALICE, admission, 0.0, trust=True)
        assert await b.rows() == 1  # the tokens came back: only the trust record is left
        assert (await b.admit("10.0.0.1", ALICE, 1.0)).admitted  # a wrong guess
        assert (await b.admit("10.0.0.2", ALICE, 1.0)).reason == "user"
        assert (await b.admit("127.0.0.2", ALICE, 2.0)).admitted  # trusted, at frontend b
        # A user name PostgreSQL text cannot hold is a key like any other.
        assert (await b.admit("10.0.0.3", "nul\x00user", 2.0)).admitted
        rows: list[Any] = await asyncio.to_thread(
            lambda: asyncio.run(pg_fetch("SELECT kind, key FROM sipcert_limits", schema=schema))
        )
        assert all("\x00" not in row["key"] for row in rows)

    with_frontends(schema, scenario)


def test_expired_limiter_rows_are_pruned_in_bounded_batches(
    schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state, "PRUNE_BATCH", 2)
    limits = LoginLimits(address_failures=10, user_failures=20, window=60.0)

    async def scenario(one: PostgresStore, _two: PostgresStore) -> None:
        limiter = PostgresLoginLimiter(one, limits)
        for i in range(3):
            assert (await limiter.admit(f"10.0.0.{i}", f"u{i}", 0.0)).admitted
        assert await limiter.rows() == 6  # an address and a user bucket each
        assert await limiter.prune(1.0) == 0  # the buckets are not full again yet
        assert await limiter.prune(1000.0) == 2
        assert await limiter.rows() == 4

    with_frontends(schema, scenario)


def test_a_closed_store_is_a_storage_error(schema: str) -> None:
    async def scenario(one: PostgresStore, _two: PostgresStore) -> None:
        counter, limiter = PostgresNonceCounter(one), PostgresLoginLimiter(one)
        assert await counter.advance(NONCE, 1, 0.0)
        await one.close()
        with pytest.raises(StorageError, match="closed"):
            await counter.advance(NONCE, 2, 0.0)
        with pytest.raises(StorageError, match="closed"):
            await limiter.admit("10.0.0.1", ALICE, 0.0)

    with_frontends(schema, scenario)
