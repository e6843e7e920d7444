"""The hot 401: an enrollment's first PUT answered on the TLS transport as aiohttp's path
answers it (issue 13), over real TLS on 127.0.0.1.

The same pair of Stores as tests/integration/store/test_hot_get.py (one with the hot path, one
without); answers must be the same bytes but for ``Date`` and the fresh nonce, and the access
lines and metrics the same. The hot 401's nonce must then authenticate the PUT.
"""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from sipcert.proto.digest import DigestClient
from sipcert.proto.store import MAX_LABEL_LENGTH
from sipcert.server.credentials import FileCredentials
from tests.factories import make_cert, make_key
from tests.integration.store.test_hot_get import ALICE, NET, NOW, Pair, run_pair

_NONCE = re.compile(rb'nonce="[A-Za-z0-9_-]+"')
_DATE = re.compile(rb"\r\nDate: [A-Za-z0-9:, ]+ GMT\r\n")


def _cert(aor: str = ALICE) -> bytes:
    return make_cert(make_key("ec-p256", aor, 5), aor).public_bytes(serialization.Encoding.DER)


def put(
    aor: str = ALICE, *, extra: str = "", body: bytes | None = None, attr: str = "sip"
) -> bytes:
    user, _, domain = aor.partition("@")
    body = _cert(aor) if body is None else body
    return (
        f"PUT /search-cgi?{attr}={user}%40{domain} HTTP/1.1\r\nHost: example.com\r\n"
        f"Content-Type: application/pkix-cert\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def _normal(answer: bytes) -> bytes:
    return _NONCE.sub(b'nonce="-"', _DATE.sub(b"\r\nDate: -\r\n", answer))


async def same(pair: Pair, data: bytes, domain: str = "example.com") -> bytes:
    hot = await pair.hot.exchange(data, domain)
    plain = await pair.plain.exchange(data, domain)
    assert _normal(hot) == _normal(plain), (data[:300], hot[:600], plain[:600])
    return hot


def test_a_put_without_credentials_is_answered_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(pair: Pair) -> None:
        simple = [
            put(),
            put(attr="email"),
            put(attr="uri", extra="User-Agent: sipcert/0.2\r\nAccept: */*\r\n"),
            put(extra="Content-Description: phone\r\n"),
            put(extra="Content-Description: desk =?utf-8?q?caf=C3=A9?=\r\n"),
            put(extra="Connection: close\r\n"),
            put("nobody@example.com"),  # an unknown user is challenged like any other
            put(body=b""),
        ]
        for count, request in enumerate(simple, 1):
            answer = await same(pair, request)
            assert answer.startswith(b"HTTP/1.1 401 Unauthorized\r\n")
            assert answer.count(b"WWW-Authenticate: Digest ") == 2
            assert pair.hot_get.answered == count, request  # not by aiohttp
        handed = [
            put(NET),  # draft §4.3: another domain's AOR on this connection: 404
            put(extra="Expect: 100-continue\r\n"),
            put(extra="Content-Description: " + "x" * (MAX_LABEL_LENGTH + 1) + "\r\n"),  # 400
            put(body=b"x" * 70_000),  # over max_certificate_size: 413
            put(extra="Content-Description: a\r\nContent-Description: b\r\n"),
        ]
        for request in handed:
            await same(pair, request)
        assert pair.hot_get.answered == len(simple)
        pair.logged_alike()

    run_pair(tmp_path, monkeypatch, scenario, cache_mb=0)


def test_the_hot_challenge_authenticates_the_enrollment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """401 on the hot path, then the answer to its nonce (aiohttp's path): 201, on one
    keep-alive connection, twice; a replay of the same nonce count is refused."""
    FileCredentials(tmp_path / "users.json").add(ALICE, "alice-pw")

    async def scenario(pair: Pair) -> None:
        side = pair.hot
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", side.port, ssl=side.client, server_hostname="example.com"
        )

        async def answer() -> tuple[bytes, bytes]:
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"Content-Length: ([0-9]+)", head)
            assert length is not None
            return head, await reader.readexactly(int(length[1]))

        uri = "/search-cgi?sip=alice%40example.com"
        for slot in (1, 2):
            before = pair.hot_get.answered
            cert = make_cert(
                make_key("ec-p256", ALICE, slot),
                ALICE,
                not_before=NOW - timedelta(minutes=5),
                not_after=NOW + timedelta(hours=48),
            )
            der = cert.public_bytes(serialization.Encoding.DER)
            writer.write(put(body=der))
            head, _ = await answer()
            assert head.startswith(b"HTTP/1.1 401 ") and pair.hot_get.answered == before + 1
            challenges = [
                line.split(b": ", 1)[1].decode()
                for line in head.split(b"\r\n")
                if line.startswith(b"WWW-Authenticate: ")
            ]
            client = DigestClient("alice", "alice-pw")
            authorization = client.answer(challenges, method="PUT", uri=uri)
            signed = put(body=der, extra=f"Authorization: {authorization}\r\n")
            writer.write(signed)
            head, _ = await answer()
            assert head.startswith(b"HTTP/1.1 201 "), head
            writer.write(signed)  # the same nonce count again: a replay
            head, _ = await answer()
            assert head.startswith(b"HTTP/1.1 401 "), head
        writer.close()

    run_pair(tmp_path, monkeypatch, scenario, cache_mb=0)
