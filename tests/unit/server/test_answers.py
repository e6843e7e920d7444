"""The answer cache (server.answers, issue 13): exact after writes anywhere, never expired.

The Store's handler runs in-process (aiohttp's mocked requests, a fixed SNI domain, an
injected clock) on a real SQLite file; a second :class:`SqliteStore` on the same file plays
another worker (or another process on the host) that writes behind this one's back.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from cryptography.hazmat.primitives import serialization

from sipcert.proto.store import Response, StorePolicy
from sipcert.server.answers import ENTRY_OVERHEAD, AnswerCache, version_source
from sipcert.server.app import StoreApp
from sipcert.server.credentials import FileCredentials
from sipcert.storage import MemoryStore, SqliteStore, StoredCertificate
from tests.factories import make_cert, make_key

START = datetime(2030, 1, 1, tzinfo=UTC)
AOR = "alice@example.com"
QUERY = "/search-cgi?email=alice%40example.com"


class Clock:
    def __init__(self) -> None:
        self.now = START.timestamp()

    def __call__(self) -> float:
        return self.now


def _stored(slot: int, not_after: datetime) -> StoredCertificate:
    cert = make_cert(
        make_key("ec-p256", AOR, slot),
        AOR,
        not_before=START - timedelta(days=1),
        not_after=not_after,
    )
    return StoredCertificate.from_der(
        AOR,
        cert.public_bytes(serialization.Encoding.DER),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        created=START,
    )


class Env:
    def __init__(self, tmp_path: Path) -> None:
        self.db = tmp_path / "certificates.db"
        self.storage = SqliteStore(self.db)
        self.other = SqliteStore(self.db)  # another worker's connection to the same file
        version = version_source(self.storage)
        assert version is not None
        self.cache = AnswerCache(version, max_bytes=1 << 20)
        self.clock = Clock()
        self.app = StoreApp(
            domains=["example.com"],
            storage=self.storage,
            credentials=FileCredentials(tmp_path / "users.json"),
            policy=StorePolicy(max_age=60),
            nonce_secret=b"n" * 32,
            clock=self.clock,
            sni_of=lambda _request: "example.com",
            answer_cache=self.cache,
        )

    async def get(self, target: str = QUERY, **headers: str) -> web.Response:
        request = make_mocked_request("GET", target, headers={"Host": "example.com", **headers})
        response = await self.app(request)
        assert isinstance(response, web.Response)
        return response

    async def close(self) -> None:
        await self.storage.close()
        await self.other.close()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    created = Env(tmp_path)
    try:
        yield created
    finally:
        asyncio.run(created.close())


def run(scenario: Callable[[Env], Awaitable[None]]) -> Callable[[Env], None]:
    """A plain test that runs the async ``scenario`` (the project uses no asyncio plugin)."""

    def test(env: Env) -> None:
        asyncio.run(scenario(env))

    test.__doc__ = scenario.__doc__
    return test


@run
async def test_a_write_by_another_connection_is_seen_by_the_next_get(env: Env) -> None:
    assert (await env.get()).status == 404
    assert (await env.get()).status == 404
    assert env.cache.hits == 1  # the second 404 came from the cache
    first = _stored(0, START + timedelta(days=10))
    assert await env.other.add(first, max_per_aor=5, now=START)
    answer = await env.get()
    assert answer.status == 200 and answer.body == first.der
    cached = await env.get()
    assert cached.body == first.der and env.cache.hits == 2
    assert await env.other.delete(AOR, None) == 1
    assert (await env.get()).status == 404


@run
async def test_a_write_through_this_worker_is_seen_too(env: Env) -> None:
    assert (await env.get()).status == 404
    stored = _stored(0, START + timedelta(days=10))
    assert await env.storage.add(stored, max_per_aor=5, now=START)  # its writer connection
    assert (await env.get()).status == 200


@run
async def test_an_answer_is_not_served_past_a_certificates_not_after(env: Env) -> None:
    """Draft §4.4: never an expired certificate, however recently the answer was made."""
    short = _stored(0, START + timedelta(hours=1))
    long = _stored(1, START + timedelta(days=10))
    for cert in (short, long):
        assert await env.storage.add(cert, max_per_aor=5, now=START)
    both = await env.get()
    assert both.content_type == "multipart/mixed"
    env.clock.now = short.not_after.timestamp()  # notAfter itself is still valid
    assert (await env.get()).body == both.body
    env.clock.now += 1
    after = await env.get()
    assert after.status == 200 and after.body == long.der
    env.clock.now = long.not_after.timestamp() + 1
    assert (await env.get()).status == 404


@run
async def test_if_none_match_is_answered_from_the_cached_answer(env: Env) -> None:
    stored = _stored(0, START + timedelta(days=10))
    assert await env.storage.add(stored, max_per_aor=5, now=START)
    full = await env.get()
    etag = full.headers["ETag"]
    not_modified = await env.get(**{"If-None-Match": etag})
    assert not_modified.status == 304 and not_modified.body in (None, b"")
    assert not_modified.headers["ETag"] == etag
    assert not_modified.headers["Cache-Control"] == "max-age=60"
    other = await env.get(**{"If-None-Match": '"something else"'})
    assert other.status == 200 and other.body == stored.der
    assert env.cache.hits == 2


@run
async def test_the_cache_key_keeps_cert_hash_filters_apart(env: Env) -> None:
    one, two = _stored(0, START + timedelta(days=10)), _stored(1, START + timedelta(days=10))
    for cert in (one, two):
        assert await env.storage.add(cert, max_per_aor=5, now=START)
    assert (await env.get()).content_type == "multipart/mixed"
    only = await env.get(f"{QUERY}&certHash={one.cert_hash.replace('+', '%2B')}")
    assert only.body == one.der
    by_hash = await env.get(f"/search-cgi?certHash={two.cert_hash.replace('+', '%2B')}")
    assert by_hash.body == two.der


def test_the_cache_is_bounded_and_drops_its_oldest_entries() -> None:
    version = 1
    cache = AnswerCache(lambda: version, max_bytes=3 * (100 + ENTRY_OVERHEAD + 40))
    answer = Response(200, (("Content-Type", "application/pkix-cert"),), b"x" * 100)
    for n in range(5):
        assert cache.get(("d", f"a{n}", None), 0.0) == (None, 1)
        cache.put(("d", f"a{n}", None), answer, [], 1)
    assert len(cache) == 3 and cache.size <= cache.max_bytes
    assert cache.get(("d", "a0", None), 0.0) == (None, 1)
    assert cache.get(("d", "a4", None), 0.0) == (answer, 1)  # an equal Response
    huge = Response(200, (), b"x" * cache.max_bytes)
    cache.put(("d", "huge", None), huge, [], 1)  # larger than the whole cache: not kept
    assert cache.get(("d", "huge", None), 0.0) == (None, 1)
    version = 2  # any change of the counter empties it
    assert cache.get(("d", "a4", None), 0.0) == (None, 2) and len(cache) == 0


def test_an_answer_read_before_a_write_that_another_request_noticed_is_not_kept() -> None:
    """A request that read its rows at version 1 while another saw version 2 keeps nothing."""
    version = 1
    cache = AnswerCache(lambda: version, max_bytes=1 << 20)
    _, read_at = cache.get(("d", "a", None), 0.0)
    version = 2  # a write commits; another request notices it first
    assert cache.get(("d", "b", None), 0.0) == (None, 2)
    stale = Response(404, (), b"none\n")
    cache.put(("d", "a", None), stale, [], read_at)
    assert cache.get(("d", "a", None), 0.0) == (None, 2)


def test_entries_are_not_tracked_by_the_garbage_collector() -> None:
    """Full collections must not walk the cache: its entries hold only untracked atoms."""
    cache = AnswerCache(lambda: 1, max_bytes=1 << 20)
    cache.get(("d", "a", None), 0.0)
    cache.put(("d", "a", None), Response(200, (("ETag", '"x"'),), b"body"), [1.0], 1)
    gc.collect()
    assert not any(gc.is_tracked(entry) for entry in cache._entries.values())


def test_only_a_backend_with_a_change_counter_is_cached(tmp_path: Path) -> None:
    assert version_source(MemoryStore()) is None
    store = SqliteStore(tmp_path / "c.db")
    try:
        assert version_source(store) is not None
    finally:
        asyncio.run(store.close())
