"""The Store's HTTP handling in-process, over real TLS on 127.0.0.1 (memory storage).

The clock is injected (``StoreApp(clock=...)``), so expiry and stale nonces are tested
without waiting; the end-to-end tests in tests/integration/store drive the real process.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from sipcert.client.fetch import DigestAuth
from sipcert.errors import StorageError
from sipcert.proto.ca import TestCA
from sipcert.proto.digest import DigestClient, MemoryNonceCounter
from sipcert.proto.store import StorePolicy
from sipcert.server.app import StoreApp
from sipcert.server.credentials import FileCredentials
from sipcert.server.run import serve_app
from sipcert.server.tls import build_sni_context, load_domain_context
from sipcert.storage import MemoryStore, cert_hash_of
from tests.factories import make_cert, make_key

START = datetime(2030, 1, 1, tzinfo=UTC)
PASSWORDS = {"alice@example.com": "alice-pw", "bob@example.net": "bob-pw"}


class Clock:
    def __init__(self) -> None:
        self.now = START.timestamp()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Env:
    app: StoreApp
    clock: Clock
    port: int
    ca_file: Path

    def client(self, domain: str, *, source: str | None = None) -> httpx.AsyncClient:
        """A client for ``domain``; ``source`` picks the local address (any 127.x works)."""
        verify = ssl.create_default_context(cafile=self.ca_file)
        inner = httpx.AsyncHTTPTransport(verify=verify, local_address=source)
        return httpx.AsyncClient(mounts={f"all://{domain}": _Redirected(inner, self.port)})

    def url(self, domain: str, target: str) -> str:
        return f"https://{domain}:{self.port}{target}"


class _Redirected(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncHTTPTransport, port: int) -> None:
        self._inner, self._port = inner, port

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        domain = request.url.host
        headers = httpx.Headers(request.headers)
        headers["Host"] = f"{domain}:{self._port}"
        redirected = httpx.Request(
            request.method,
            request.url.copy_with(host="127.0.0.1"),
            headers=headers,
            stream=request.stream,
            extensions={**request.extensions, "sni_hostname": domain},
        )
        return await self._inner.handle_async_request(redirected)

    async def aclose(self) -> None:
        await self._inner.aclose()


Scenario = Callable[[Env], Awaitable[None]]


def run_store(
    tmp_path: Path, scenario: Scenario, *, storage: object = None, auth_failures: int = 20
) -> None:
    """Serve a Store for example.com and example.net while ``scenario`` runs."""
    ca = TestCA.create(now=datetime.now(UTC))
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.cert_pem)
    contexts = {}
    for domain in ("example.com", "example.net"):
        issued = ca.issue([domain], now=datetime.now(UTC))
        (tmp_path / f"{domain}.pem").write_bytes(issued.cert_pem)
        (tmp_path / f"{domain}.key").write_bytes(issued.key_pem)
        contexts[domain] = load_domain_context(
            domain, tmp_path / f"{domain}.pem", tmp_path / f"{domain}.key", now=datetime.now(UTC)
        )
    users = FileCredentials(tmp_path / "users.json")
    for aor, password in PASSWORDS.items():
        users.add(aor, password)
    clock = Clock()

    async def main() -> None:
        store = storage if storage is not None else MemoryStore()
        app = StoreApp(
            domains=contexts,
            storage=store,  # type: ignore[arg-type]
            credentials=users,
            policy=StorePolicy(max_age=0, max_per_aor=2),
            nonce_secret=b"k" * 32,
            nonce_counter=MemoryNonceCounter(),
            auth_failures=auth_failures,
            auth_failure_window=60.0,
            clock=clock,
        )
        sock = socket.create_server(("127.0.0.1", 0))
        sock.setblocking(False)
        stop = asyncio.Event()
        server = asyncio.create_task(
            serve_app(app, build_sni_context(contexts), [sock], stop, purge_interval=0.05)
        )
        try:
            await asyncio.sleep(0.05)
            await scenario(Env(app, clock, sock.getsockname()[1], ca_file))
        finally:
            stop.set()
            await server
            sock.close()
            await app.storage.close()

    asyncio.run(main())


def alice_cert(slot: int = 0, days: float = 10) -> bytes:
    key = make_key("ec-p256", "alice@example.com", slot)
    cert = make_cert(
        key,
        "alice@example.com",
        not_before=START - timedelta(minutes=1),
        not_after=START + timedelta(days=days),
    )
    return cert.public_bytes(serialization.Encoding.DER)


ALICE = "/search-cgi?email=alice%40example.com"


def test_enroll_then_expiry_and_purge_follow_the_clock(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        body = alice_cert(days=1)
        async with env.client("example.com") as client:
            auth = DigestAuth("alice", "alice-pw")
            put = await client.put(env.url("example.com", ALICE), content=body, auth=auth)
            assert put.status_code == 201
            got = await client.get(env.url("example.com", ALICE))
            assert (got.status_code, got.content) == (200, body)
            assert got.headers["cache-control"] == "max-age=0"
            env.clock.advance(2 * 86400)
            assert (await client.get(env.url("example.com", ALICE))).status_code == 404
            # The purge task runs every 0.05 s here: wait until it has removed the expired
            # certificate (counted as of 2000, when it was not expired yet).
            then = datetime(2000, 1, 1, tzinfo=UTC)
            async with asyncio.timeout(10):
                while await env.app.storage.count(then):
                    await asyncio.sleep(0.01)
            assert await env.app.storage.delete("alice@example.com", None) == 0

    run_store(tmp_path, scenario)


def test_stale_nonce_with_the_clock_and_retry(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        async with env.client("example.com") as client:
            auth = DigestAuth("alice", "alice-pw")
            url = env.url("example.com", ALICE)
            assert (await client.put(url, content=alice_cert(0), auth=auth)).status_code == 201
            env.clock.advance(400)  # past the 300 s nonce lifetime
            # The pre-emptive answer is stale; DigestAuth retries once with the new nonce.
            second = await client.put(url, content=alice_cert(1), auth=auth)
            assert second.status_code == 201

    run_store(tmp_path, scenario)


def test_cert_hash_of_another_domain_is_404_and_delete_needs_the_aor_user(
    tmp_path: Path,
) -> None:
    async def scenario(env: Env) -> None:
        body = alice_cert()
        by_hash = f"/search-cgi?certHash={quote(cert_hash_of(body), safe='')}"
        async with env.client("example.com") as client:
            auth = DigestAuth("alice", "alice-pw")
            assert (
                await client.put(env.url("example.com", ALICE), content=body, auth=auth)
            ).status_code == 201
            assert (await client.get(env.url("example.com", by_hash))).status_code == 200
        async with env.client("example.net") as client:
            assert (await client.get(env.url("example.net", by_hash))).status_code == 404
            bob = DigestAuth("bob", "bob-pw")
            other = await client.delete(
                env.url("example.net", "/search-cgi?email=alice%40example.net"), auth=bob
            )
            assert other.status_code == 403
            assert other.text.startswith("aor-user-mismatch: ")

    run_store(tmp_path, scenario)


class BrokenStore(MemoryStore):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    async def get_by_aor(self, aor: str, now: datetime) -> list:  # type: ignore[type-arg]
        raise self.error


def test_unexpected_exception_is_500_without_details(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(env: Env) -> None:
        async with env.client("example.com") as client:
            answer = await client.get(env.url("example.com", ALICE))
        assert answer.status_code == 500
        assert answer.text == "internal error\n"
        assert "secret-detail" not in answer.text

    with caplog.at_level(logging.ERROR, logger="sipcert.server"):
        run_store(tmp_path, scenario, storage=BrokenStore(RuntimeError("secret-detail")))
    assert any("secret-detail" in (r.exc_text or "") for r in caplog.records)


def test_storage_failure_is_503_without_paths(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        async with env.client("example.com") as client:
            answer = await client.get(env.url("example.com", ALICE))
        assert answer.status_code == 503
        assert "/var/lib" not in answer.text

    error = StorageError("certificate database /var/lib/x.db: reading failed")
    run_store(tmp_path, scenario, storage=BrokenStore(error))


def test_access_log_has_no_authorization(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def scenario(env: Env) -> None:
        async with env.client("example.com") as client:
            auth = DigestAuth("alice", "alice-pw")
            put = await client.put(env.url("example.com", ALICE), content=alice_cert(), auth=auth)
            assert put.status_code == 201

    run_store(tmp_path, scenario)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if " INFO sipcert.access: " in line]
    assert len(lines) == 2
    assert all("Digest" not in line and "response=" not in line for line in lines)
    assert '"PUT /search-cgi?email=alice%40example.com HTTP/1.1" 201' in lines[1]


async def digest_put(client: httpx.AsyncClient, url: str, password: str) -> httpx.Response:
    """One PUT answered with ``password`` (a limited address is refused before any challenge)."""
    challenge = await client.put(url, content=alice_cert())
    if challenge.status_code != 401:
        return challenge  # a limited address is refused before it is even challenged
    authorization = DigestClient("alice", password).answer(
        challenge.headers.get_list("WWW-Authenticate"),
        method="PUT",
        uri=httpx.URL(url).raw_path.decode(),
    )
    return await client.put(url, content=alice_cert(), headers={"Authorization": authorization})


def test_failed_digest_answers_are_rate_limited(tmp_path: Path) -> None:
    """Digest is a password oracle: after 3 failures the address and user get 429."""

    async def scenario(env: Env) -> None:
        async with env.client("example.com") as client:
            url = env.url("example.com", ALICE)
            for _ in range(3):
                assert (await digest_put(client, url, "wrong")).status_code == 401
            limited = await digest_put(client, url, "wrong")
            assert limited.status_code == 429
            assert limited.headers["Retry-After"] == "20"  # one token per 60/3 s
            assert limited.text.startswith("too many failed authentication attempts")
            # Even the right password waits: the check comes before any credential lookup.
            assert (await digest_put(client, url, "alice-pw")).status_code == 429
            assert (await client.get(url)).status_code == 404  # reads are never limited
            env.clock.advance(21)
            assert (await digest_put(client, url, "alice-pw")).status_code == 201

    run_store(tmp_path, scenario, auth_failures=3)


def test_a_guesser_elsewhere_does_not_lock_the_user_out(tmp_path: Path) -> None:
    """Issue 9's attack on the clock: 20 wrong guesses from one address, then one every
    0.2 s for 24 s; alice logs in every second from another address and always gets in,
    while the guesser's knocking keeps him refused."""

    async def scenario(env: Env) -> None:
        url = env.url("example.com", ALICE)
        async with (
            env.client("example.com", source="127.0.0.1") as attacker,
            env.client("example.com", source="127.0.0.2") as victim,
        ):
            for _ in range(20):
                assert (await digest_put(attacker, url, "wrong")).status_code == 401
            logged_in = 0
            for step in range(120):
                env.clock.advance(0.2)
                assert (await digest_put(attacker, url, "wrong")).status_code == 429
                if step % 5 == 4:
                    status = (await digest_put(victim, url, "alice-pw")).status_code
                    logged_in += status not in (401, 429)  # 201, or 403 for a third device
            assert logged_in == 24

    run_store(tmp_path, scenario)


def test_a_challenge_alone_costs_nothing(tmp_path: Path) -> None:
    """Every client's first request is unauthenticated: 401s without an answer are free."""

    async def scenario(env: Env) -> None:
        async with env.client("example.com") as client:
            url = env.url("example.com", ALICE)
            for _ in range(5):
                assert (await client.put(url, content=alice_cert())).status_code == 401
            ok = await client.put(url, content=alice_cert(), auth=DigestAuth("alice", "alice-pw"))
            assert ok.status_code == 201

    run_store(tmp_path, scenario, auth_failures=2)


def test_the_user_bucket_holds_across_client_addresses(tmp_path: Path) -> None:
    """Guessing one user's password from many addresses still hits the per-user limit
    (2 x auth_failures), except from an address where she logged in before."""

    async def scenario(env: Env) -> None:
        url = env.url("example.com", ALICE)
        async with env.client("example.com", source="127.0.0.9") as client:
            assert (await digest_put(client, url, "alice-pw")).status_code == 201
        for source in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
            async with env.client("example.com", source=source) as client:
                for _ in range(2):
                    assert (await digest_put(client, url, "wrong")).status_code == 401
        async with env.client("example.com", source="127.0.0.5") as client:
            limited = await digest_put(client, url, "alice-pw")
            assert limited.status_code == 429  # a fresh address, but alice's bucket is empty
            assert limited.headers["Retry-After"] == "20"
            bob = env.url("example.com", "/search-cgi?email=bob%40example.com")
            other = await client.put(bob, content=b"x")
            assert other.status_code == 401  # other users are not affected
        async with env.client("example.com", source="127.0.0.9") as client:
            assert (await digest_put(client, url, "alice-pw")).status_code == 201  # trusted

    run_store(tmp_path, scenario, auth_failures=3)


def test_a_client_gone_mid_upload_is_an_input_error_not_a_traceback() -> None:
    """A connection lost while the PUT body arrives is the client's doing: 400, no 500 and
    no traceback in the log (seen under the enrollment bench, issue 13)."""
    import asyncio
    from unittest import mock

    from sipcert.errors import InputError
    from sipcert.server.app import _read_body

    request = mock.Mock()
    request.headers = {}
    request.content.readany = mock.AsyncMock(side_effect=ConnectionResetError("Connection lost"))
    try:
        asyncio.run(_read_body(request, 4096))
    except InputError as exc:
        assert "connection closed" in str(exc)
    else:
        raise AssertionError("no InputError")
