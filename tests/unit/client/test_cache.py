"""The Caller's cache (draft §5) with an injected clock."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from cryptography import x509

from sipcert.client.cache import CertificateCache
from sipcert.client.fetch import FetchResult
from sipcert.errors import ConfigError
from sipcert.proto.aor import AOR, parse_aor
from sipcert.proto.certs import Discarded, DiscardReason, generate_identity

NOW = datetime.now(UTC)
BOB = parse_aor("bob@example.com")
PHONE = generate_identity(BOB, now=NOW).certificate
LAPTOP = generate_identity(BOB, now=NOW).certificate


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def result(*certs: x509.Certificate, max_age: int | None = None) -> FetchResult:
    return FetchResult(
        BOB,
        "https://a.example.com/search-cgi?email=bob%40example.com",
        tuple(certs),
        max_age=max_age,
    )


def test_entry_is_served_until_the_ttl_and_never_after() -> None:
    clock = Clock()
    cache = CertificateCache(60, clock=clock)
    cache.put(result(PHONE))
    clock.now += 59.9
    cached = cache.get(BOB)
    assert cached is not None and cached.from_cache and cached.kept == (PHONE,)
    clock.now += 0.1
    assert cache.get(BOB) is None
    clock.now -= 30  # even if time went backwards, an expired entry is gone
    assert cache.get(BOB) is None


def test_store_max_age_shortens_the_ttl() -> None:
    clock = Clock()
    cache = CertificateCache(60, clock=clock)
    cache.put(result(PHONE, max_age=10))
    clock.now += 10
    assert cache.get(BOB) is None
    cache.put(result(PHONE, max_age=0))
    assert cache.get(BOB) is None


def test_ttl_zero_disables_caching_entirely() -> None:
    cache = CertificateCache(0, clock=Clock())
    assert not cache.enabled
    cache.put(result(PHONE))
    assert cache.get(BOB) is None


@pytest.mark.parametrize("ttl", [-1, float("nan"), float("inf")])
def test_bad_ttl(ttl: float) -> None:
    with pytest.raises(ConfigError):
        CertificateCache(ttl)


def test_signaled_certificate_already_cached_needs_no_refresh() -> None:
    cache = CertificateCache(60, clock=Clock())
    cache.put(result(PHONE))
    calls: list[AOR] = []

    async def refresh(aor: AOR) -> FetchResult:
        calls.append(aor)
        return result(PHONE)

    check = asyncio.run(cache.check_signaled(BOB, PHONE, refresh))
    assert check.cached and not check.refreshed and check.in_store
    assert calls == []


@pytest.mark.parametrize("ttl", [60, 0])
def test_signaled_unknown_certificate_refreshes_and_reports(ttl: float) -> None:
    clock = Clock()
    cache = CertificateCache(ttl, clock=clock)
    cache.put(result(PHONE))
    store = [result(PHONE, LAPTOP)]

    async def refresh(aor: AOR) -> FetchResult:
        assert aor == BOB
        return store[0]

    check = asyncio.run(cache.check_signaled(BOB, LAPTOP, refresh))
    assert not check.cached and check.refreshed and check.in_store
    if ttl:
        cached = cache.get(BOB)
        assert cached is not None and cached.kept == (PHONE, LAPTOP)  # the cache was updated
    else:
        assert cache.get(BOB) is None
    stranger = generate_identity(BOB, now=NOW).certificate
    check = asyncio.run(cache.check_signaled(BOB, stranger, refresh))
    assert check.refreshed and not check.in_store  # the Store does not hold it: do not trust


def test_cache_directory_survives_the_process(tmp_path: object) -> None:
    directory = tmp_path / "cache"  # type: ignore[operator]
    clock = Clock()
    first = CertificateCache(60, clock=clock, directory=directory)
    gone = Discarded("ab" * 32, DiscardReason.EXPIRED, "expired yesterday")
    first.put(FetchResult(BOB, "https://x/", (PHONE,), (gone,)))
    second = CertificateCache(60, clock=clock, directory=directory)
    cached = second.get(BOB)
    assert cached is not None and cached.kept == (PHONE,) and cached.discarded == (gone,)
    clock.now += 61
    assert CertificateCache(60, clock=clock, directory=directory).get(BOB) is None
    assert list(directory.iterdir()) == []
    (directory / "bob@example.com.json").write_text("{not json")
    assert second.get(BOB) is None  # a damaged file is a miss, then removed
    assert list(directory.iterdir()) == []
