"""What the MariaDB/MySQL backend adds to the storage contract (``test_storage.py`` runs that):
its schema, its URL, and the nonce counts and limiter that frontends share (issue 10).

Two :class:`MysqlStore` objects on one database are two frontends (each has its own pool).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator

import pytest

from sipcert.errors import ConfigError, StorageError
from sipcert.proto.ratelimit import LoginLimits
from sipcert.storage import MysqlStore, open_store
from sipcert.storage import mysql as backend
from sipcert.storage.mysql import MysqlLoginLimiter, MysqlNonceCounter
from tests.unit.storage.test_storage import ALICE, NOW, make_cert, mysql_admin, mysql_database

pytestmark = pytest.mark.peer("mysql")

NONCE = "n" * 54


@pytest.fixture
def url() -> Iterator[str]:
    with mysql_database() as found:
        yield found


def with_frontends(url: str, scenario: Callable[[MysqlStore, MysqlStore], Awaitable[None]]) -> None:
    async def main() -> None:
        one, two = (open_store(url) for _ in range(2))
        assert isinstance(one, MysqlStore) and isinstance(two, MysqlStore)
        try:
            await scenario(one, two)
        finally:
            await one.close()
            await two.close()

    asyncio.run(main())


def test_urls_and_schema_version(url: str) -> None:
    store = MysqlStore.from_url("mariadb://u:p%40ss@db.example:3307/certs?max_connections=3")
    assert store.where == "db.example:3307/certs" and store.max_connections == 3
    for bad, message in (
        ("mysql://u@db/", "name the database"),
        ("mysql://u@db/x?timeout=soon", "not a number"),
        ("mysql://u@db:port/x", "malformed"),
    ):
        with pytest.raises(ConfigError, match=message):
            open_store(bad)

    async def scenario(one: MysqlStore, _two: MysqlStore) -> None:
        assert await one.add(make_cert(), max_per_aor=1, now=NOW)

    with_frontends(url, scenario)
    database = url.rsplit("/", 1)[1]
    mysql_admin(f"UPDATE `{database}`.sipcert_schema_version SET version = 99")  # noqa: S608
    with pytest.raises(StorageError, match="schema version 99 is newer"):
        with_frontends(url, scenario)


def test_nonce_counts_across_frontends_and_races(url: str) -> None:
    async def scenario(one: MysqlStore, two: MysqlStore) -> None:
        a, b = MysqlNonceCounter(one), MysqlNonceCounter(two)
        assert await a.advance(NONCE, 1, 100.0)
        assert not await b.advance(NONCE, 1, 100.0)  # the replay, at the other frontend
        assert await b.advance(NONCE, 3, 101.0)
        assert not await a.advance(NONCE, 2, 102.0)
        assert await a.advance(NONCE, 4, 102.0)
        assert not await a.advance("m" * 54, 0, 102.0)
        for round_ in range(1, 4):  # forty concurrent uses of one count: one winner
            nonce = f"{round_}" * 54
            results = await asyncio.gather(
                *((a, b)[i % 2].advance(nonce, 1, 100.0) for i in range(40))
            )
            assert sum(results) == 1

    with_frontends(url, scenario)


def test_nonce_pruning_is_bounded(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend, "PRUNE_BATCH", 3)

    async def scenario(one: MysqlStore, _two: MysqlStore) -> None:
        counter = MysqlNonceCounter(one, retention=10.0)
        for i in range(7):
            assert await counter.advance(f"{i}" * 54, 1, 0.0)
        assert await counter.prune(5.0) == 0
        assert await counter.prune(100.0) == 3
        assert await counter.prune(100.0) == 3
        assert await counter.prune(100.0) == 1

    with_frontends(url, scenario)


def test_frontends_share_one_user_bucket(url: str) -> None:
    limits = LoginLimits(address_failures=20, user_failures=40)

    async def scenario(one: MysqlStore, two: MysqlStore) -> None:
        frontends = [MysqlLoginLimiter(one, limits), MysqlLoginLimiter(two, limits)]
        admissions = await asyncio.gather(
            *(frontends[i % 2].admit(f"10.0.0.{i}", ALICE, 0.0) for i in range(120))
        )
        assert sum(a.admitted for a in admissions) == 40  # as many as one frontend passes
        refused = await frontends[0].admit("10.0.1.1", ALICE, 0.0)
        assert (refused.admitted, refused.reason, refused.retry_after) == (False, "user", 3)
        # Trust recorded at one frontend is seen by the other.
        trusted = LoginLimits(user_failures=1, window=6000.0)
        a, b = MysqlLoginLimiter(one, trusted), MysqlLoginLimiter(two, trusted)
        admission = await a.admit("127.0.0.2", "bob", 0.0)
        await a.release("127.0.0.2", "bob", admission, 0.0, trust=True)
        assert (await b.admit("10.9.0.1", "bob", 1.0)).admitted
        assert (await b.admit("10.9.0.2", "bob", 1.0)).reason == "user"
        assert (await b.admit("127.0.0.2", "bob", 2.0)).admitted
        assert (await b.admit("10.9.0.3", "x" * 3000, 2.0)).admitted  # a long key is hashed
        assert await a.prune(1e9) > 0

    with_frontends(url, scenario)
