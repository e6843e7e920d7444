"""The hot enrollment: a PUT with its Digest answer answered on the TLS transport as
aiohttp's path answers it (issue 13), over real TLS on 127.0.0.1.

The pair of Stores of tests/integration/store/test_hot_get.py (one with the hot path, one
without) shares the certificate file, the nonce secret and the clock; each has its own nonce
counts and limiter. Every request goes, as the same bytes, to both: the answers must be the
same bytes but for ``Date`` and the fresh nonces, and the access lines and metrics the same.
"""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import timedelta
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from sipcert.proto.digest import DEFAULT_NONCE_LIFETIME, DigestClient
from sipcert.server.conn import ConnectionGuard
from sipcert.server.credentials import FileCredentials
from tests.factories import make_cert, make_key
from tests.integration.store.test_hot_challenge import _normal, put, same
from tests.integration.store.test_hot_get import ALICE, BOB, NOW, Pair, run_pair

URI = "/search-cgi?sip=alice%40example.com"


def _der(aor: str, slot: int) -> bytes:
    cert = make_cert(
        make_key("ec-p256", aor, slot),
        aor,
        not_before=NOW - timedelta(minutes=5),
        not_after=NOW + timedelta(hours=48),
    )
    return cert.public_bytes(serialization.Encoding.DER)


async def _client(pair: Pair, password: str = "alice-pw") -> DigestClient:  # noqa: S107
    """A Digest client holding a fresh challenge of the hot Store (the 401 of both)."""
    challenge = await same(pair, put())
    values = [
        line.split(b": ", 1)[1].decode()
        for line in challenge.split(b"\r\n")
        if line.startswith(b"WWW-Authenticate: ")
    ]
    client = DigestClient("alice", password)
    client.answer(values, method="PUT", uri=URI)  # nc=1 used up here: start at 2
    return client


def _signed(client: DigestClient, der: bytes, extra: str = "", **kw: object) -> bytes:
    authorization = client.authorization(method="PUT", uri=URI)
    assert authorization is not None
    return put(body=der, extra=f"Authorization: {authorization}\r\n{extra}", **kw)  # type: ignore[arg-type]


async def _hot(pair: Pair, data: bytes, expect: bytes, *, hot: bool = True) -> bytes:
    """``data`` answered alike by both Stores, with status line ``expect``; ``hot``: the
    hot Store answered it without aiohttp."""
    before = pair.hot_get.answered
    answer = await same(pair, data)
    assert answer.startswith(b"HTTP/1.1 " + expect + b"\r\n"), answer[:400]
    assert pair.hot_get.answered == before + (1 if hot else 0)
    return answer


def test_enrollments_and_their_failures_are_answered_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    FileCredentials(tmp_path / "users.json").add(ALICE, "alice-pw")

    async def scenario(pair: Pair) -> None:
        client = await _client(pair)
        der = _der(ALICE, 7)
        # A new certificate: enrolled by the hot Store, removed, enrolled by aiohttp's.
        signed = _signed(client, der)
        hot = await pair.hot.exchange(signed)
        assert hot.startswith(b"HTTP/1.1 201 Created\r\n"), hot[:300]
        (new,) = [c for c in await pair.writer.get_by_aor(ALICE, NOW) if c.der == der]
        assert await pair.writer.delete(ALICE, new.cert_hash) == 1
        plain = await pair.plain.exchange(signed)
        assert _normal(hot) == _normal(plain)
        assert b"\r\nLocation: /search-cgi?certHash=" in hot
        # The same certificate again (a new nonce count): 200 on both.
        await _hot(pair, _signed(client, der), b"200 OK")
        await _hot(pair, _signed(client, der, "Content-Description: phone\r\n"), b"200 OK")
        # The same nonce count twice (RFC 7616 §3.4): the second is a replay on each Store.
        replayed = _signed(client, der)
        await _hot(pair, replayed, b"200 OK")
        await _hot(pair, replayed, b"401 Unauthorized")
        # Bad uploads, once authenticated.
        await _hot(pair, _signed(client, b"not a certificate"), b"400 Bad Request")
        await _hot(pair, _signed(client, _der(BOB, 1)), b"403 Forbidden")  # another AOR's
        wrong_type = _signed(client, der).replace(b"application/pkix-cert", b"text/plain")
        await _hot(pair, wrong_type, b"415 Unsupported Media Type")
        await _hot(pair, _signed(client, der, "Connection: close\r\n"), b"200 OK")
        # Malformed or missing parts of the answer.
        await _hot(pair, put(body=der, extra="Authorization: Basic YTpi\r\n"), b"401 Unauthorized")
        bad = put(body=der, extra='Authorization: Digest username="alice"\r\n')
        await _hot(pair, bad, b"400 Bad Request")
        # Left to aiohttp before anything is counted: 413, 400 for the label, 404.
        big = _signed(client, b"x" * 70_000)
        await _hot(pair, big, b"413 " + HTTPStatus(413).phrase.encode(), hot=False)
        label = _signed(client, der, "Content-Description: " + "x" * 200 + "\r\n")
        await _hot(pair, label, b"400 Bad Request", hot=False)
        # A stale nonce: 401 with stale=true.
        pair.clock.now += DEFAULT_NONCE_LIFETIME + 120
        stale = await _hot(pair, _signed(client, der), b"401 Unauthorized")
        assert b"stale=true" in stale
        pair.clock.now -= DEFAULT_NONCE_LIFETIME + 120
        pair.logged_alike()

    run_pair(tmp_path, monkeypatch, scenario, cache_mb=0)


def test_wrong_passwords_lock_both_stores_out_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The limiter (20 failures per address a minute) counts the hot path's failures as
    aiohttp's path does: the same answers in the same order, 429 from the same request."""
    FileCredentials(tmp_path / "users.json").add(ALICE, "alice-pw")

    async def scenario(pair: Pair) -> None:
        wrong = await _client(pair, "wrong")
        right = await _client(pair)
        der = _der(ALICE, 8)
        statuses = []
        for _ in range(23):
            data = _signed(wrong, der)
            before = pair.hot_get.answered
            answer = await same(pair, data)
            assert pair.hot_get.answered == before + 1
            statuses.append(answer.split(b" ", 2)[1])
        assert statuses == [b"401"] * 20 + [b"429"] * 3, statuses
        # A challenge from the address is refused too now (the hot 401 leaves it to aiohttp).
        assert (await same(pair, put())).startswith(b"HTTP/1.1 429 ")
        locked = await same(pair, _signed(right, der))  # the right password, locked out
        assert locked.startswith(b"HTTP/1.1 429 ") and b"\r\nRetry-After: " in locked
        pair.logged_alike()

    run_pair(tmp_path, monkeypatch, scenario, cache_mb=0)


def test_pipelined_requests_wait_for_the_enrollment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests read with (or during) the hot enrollment are answered after it, in order,
    on the same keep-alive connection."""
    FileCredentials(tmp_path / "users.json").add(ALICE, "alice-pw")

    async def scenario(pair: Pair) -> None:
        client = await _client(pair)
        der = _der(ALICE, 9)
        get = b"GET /search-cgi?sip=alice%40example.com HTTP/1.1\r\nHost: example.com\r\n\r\n"
        other = b"GET /nothing HTTP/1.1\r\nHost: example.com\r\n\r\n"  # aiohttp's 404
        data = _signed(client, der) + get + _signed(client, der) + other + put()
        side = pair.hot
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", side.port, ssl=side.client, server_hostname="example.com"
        )
        writer.write(data)
        statuses = []
        for _ in range(5):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = re.search(rb"Content-Length: ([0-9]+)", head)
            assert length is not None
            await reader.readexactly(int(length[1]))
            statuses.append(head.split(b" ", 2)[1])
        writer.close()
        assert statuses == [b"201", b"200", b"200", b"404", b"401"]

    run_pair(tmp_path, monkeypatch, scenario, cache_mb=0)


def test_a_stopping_worker_answers_the_enrollment_under_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shutdown (GuardedSite.stop) waits for a hot enrollment being answered, as aiohttp
    waits for its handlers: the answer is written, then the connection closes."""
    FileCredentials(tmp_path / "users.json").add(ALICE, "alice-pw")
    guards: list[ConnectionGuard] = []
    made = ConnectionGuard.__init__

    def keep(self: ConnectionGuard, *args: Any, **kw: Any) -> None:
        made(self, *args, **kw)
        guards.append(self)

    monkeypatch.setattr(ConnectionGuard, "__init__", keep)

    async def scenario(pair: Pair) -> None:
        (guard,) = [g for g in guards if g.hot is pair.hot_get]
        client = await _client(pair)
        storage = pair.hot.app.storage
        add = storage.add
        entered, gate = asyncio.Event(), asyncio.Event()

        async def held_add(*args: Any, **kw: Any) -> bool:
            entered.set()
            await gate.wait()
            return await add(*args, **kw)

        monkeypatch.setattr(storage, "add", held_add)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", pair.hot.port, ssl=pair.hot.client, server_hostname="example.com"
        )
        writer.write(_signed(client, _der(ALICE, 10)))
        await entered.wait()
        assert len(guard.enrolling) == 1
        guard.close_handshakes()  # what GuardedSite.stop does first
        waiting = asyncio.create_task(guard.finish_enrollments())
        await asyncio.sleep(0)
        assert not waiting.done()  # the enrollment is held at its storage call
        gate.set()
        await waiting
        answer = await asyncio.wait_for(reader.read(), 10)  # to the end: it closes
        assert answer.startswith(b"HTTP/1.1 201 Created\r\n"), answer[:200]
        assert not guard.enrolling
        writer.close()

    run_pair(tmp_path, monkeypatch, scenario, cache_mb=0)


def test_a_bug_in_the_hot_enrollment_closes_the_connection_without_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    FileCredentials(tmp_path / "users.json").add(ALICE, "alice-pw")

    async def scenario(pair: Pair) -> None:
        client = await _client(pair)

        async def broken(*args: Any, **kw: Any) -> Any:
            raise RuntimeError("boom")

        monkeypatch.setattr(pair.hot.app, "answer_put", broken)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", pair.hot.port, ssl=pair.hot.client, server_hostname="example.com"
        )
        writer.write(_signed(client, _der(ALICE, 11)))
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, nothing sent
        writer.close()

    with caplog.at_level(logging.ERROR, logger="sipcert.server"):
        run_pair(tmp_path, monkeypatch, scenario, cache_mb=0)
    failed = [r for r in caplog.records if "hot enrollment failed" in r.getMessage()]
    assert [r.getMessage() for r in failed] == ["hot enrollment failed: RuntimeError: boom"]
    assert failed[0].exc_info is None
