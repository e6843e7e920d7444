"""Password guessing against a real ``sipcert serve`` (issue 9, docs/store.md "Password guessing").

The attacker and the victim use different loopback source addresses (all of 127/8 is local on
Linux), so the Store sees two clients. Time is real here, so the attack is short and bounded
and the assertions keep margins; the limiter's arithmetic is unit-tested with a clock.
"""

from __future__ import annotations

import contextlib
import itertools
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sipcert.client.fetch import DigestAuth
from sipcert.proto.digest import build_authorization, parse_challenges
from tests.integration.store.conftest import (
    USERS,
    StoreFiles,
    StoreProcess,
    _Redirected,
    make_store_files,
    only_worker,
)

ATTACKER, VICTIM = "127.0.0.1", "127.0.0.2"
ACCOUNT = "/account"


@contextlib.contextmanager
def client_from(store: StoreProcess, source: str) -> Iterator[httpx.Client]:
    """An httpx client for example.com whose connections leave from ``source``."""
    verify = ssl.create_default_context(cafile=store.files.ca_file)
    inner = httpx.HTTPTransport(verify=verify, local_address=source)
    mounts = {"all://example.com": _Redirected(inner, store.port)}
    with httpx.Client(mounts=mounts, timeout=10) as client:
        yield client


def wrong_answer(client: httpx.Client, store: StoreProcess, user: str) -> str:
    """A Digest answer with a wrong password; the nonce stays good for many guesses."""
    first = client.get(store.url("example.com", ACCOUNT), headers={"Connection": "close"})
    assert first.status_code == 401
    challenge = next(
        c
        for c in parse_challenges(first.headers.get_list("www-authenticate"))
        if c.algorithm == "SHA-256"
    )
    return build_authorization(
        challenge, method="GET", uri=ACCOUNT, username=user, password="guess", nc=1, cnonce="ab"
    )


def guess(client: httpx.Client, store: StoreProcess, answer: str, **headers: str) -> int:
    url = store.url("example.com", ACCOUNT)
    return client.get(url, headers={"Authorization": answer, **headers}).status_code


@pytest.fixture
def fresh_files(tmp_path: Path) -> StoreFiles:
    return make_store_files(tmp_path)


def test_a_guesser_elsewhere_cannot_lock_the_user_out(fresh_files: StoreFiles) -> None:
    """Issue 9: 20 wrong guesses, then one every 0.2 s; the victim logs in twice a second
    from another address with her correct password. Before: 0 of 24 logins succeeded."""
    store = StoreProcess(fresh_files)
    store.start()
    duration = 8.0
    attacker: list[int] = []
    try:
        with client_from(store, ATTACKER) as client:
            answer = wrong_answer(client, store, "alice")
            attacker += [guess(client, store, answer) for _ in range(20)]
        stop = threading.Event()

        def attack() -> None:
            with client_from(store, ATTACKER) as client:
                while not stop.wait(0.2):
                    attacker.append(guess(client, store, answer))

        thread = threading.Thread(target=attack)
        thread.start()
        logins: list[int] = []
        started = time.monotonic()
        try:
            while time.monotonic() - started < duration:
                with client_from(store, VICTIM) as client:
                    auth = DigestAuth("alice", USERS["alice@example.com"])
                    logins.append(
                        client.get(store.url("example.com", ACCOUNT), auth=auth).status_code
                    )
                time.sleep(0.5)
        finally:
            stop.set()
            thread.join(10)
        elapsed = time.monotonic() - started
    finally:
        store.stop()
    assert len(logins) >= 10
    assert logins.count(200) >= 0.9 * len(logins), logins
    # The attacker: his first 20 guesses were checked, then (knocking every 0.2 s) nothing.
    checked = attacker.count(401)
    assert set(attacker) <= {401, 429}
    assert checked <= 20 + elapsed / 3 + 1, attacker
    assert attacker.count(429) >= 0.8 * (len(attacker) - 20)
    assert "429 for 127.0.0.1" in store.output()


@pytest.mark.parametrize("workers", [1, 2])
def test_the_limits_are_the_same_with_two_workers(fresh_files: StoreFiles, workers: int) -> None:
    """With ``auth_failures = 10``: one address gets 10 guesses checked, one user 20 across
    addresses, with one worker as with two. With two, guesses alternate between the workers
    (the other one frozen while each is sent, on a new connection). Before: each worker
    counted alone."""
    config = fresh_files.root / "limits.toml"
    config.write_text("auth_failures = 10\n")
    store = StoreProcess(fresh_files, extra=["--config", str(config), "--workers", str(workers)])
    store.start()
    close = {"Connection": "close"}
    try:
        deadline = time.monotonic() + 15
        while len(pids := store.workers()) != (workers if workers > 1 else 0):
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.02)
        turns = itertools.cycle([(p, [o for o in pids if o != p]) for p in pids] or [(0, [])])

        def steered(client: httpx.Client, answer: str) -> int:
            worker, others = next(turns)
            with only_worker(worker, others):
                return guess(client, store, answer, **close)

        with client_from(store, "127.0.0.10") as client:
            answer = wrong_answer(client, store, "bob")
            one_address = [steered(client, answer) for _ in range(30)]
        per_user = []
        for i in range(6):  # 6 addresses x 5 guesses at dave: under each address's 10
            with client_from(store, f"127.0.0.{20 + i}") as client:
                answer = wrong_answer(client, store, "dave")
                per_user += [steered(client, answer) for _ in range(5)]
        with client_from(store, "127.0.0.30") as client:
            answer = wrong_answer(client, store, "dave")
            refused = steered(client, answer)
    finally:
        store.stop()
    assert one_address.count(401) == 10, one_address
    assert per_user.count(401) == 20, per_user
    assert refused == 429
