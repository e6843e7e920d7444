"""Several ``sipcert serve`` frontends on one PostgreSQL database (issue 10).

Each frontend has its own data folder, as if it ran on its own host; they share only the
nonce secret (configuration) and the certificate database. Before issue 10 the nonce counts
lived in a file of the data folder, so an ``Authorization`` captured at one frontend was
accepted by another: a replayed PUT enrolled the attacker's certificate for alice, and a
replayed DELETE revoked her certificates (RFC 7616 §3.4 and §5.1: nc detects replays).
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sipcert.client.fetch import DigestAuth
from sipcert.proto.digest import Algorithm, build_authorization, parse_challenges
from tests.integration.store.conftest import (
    USERS,
    StoreFiles,
    StoreProcess,
    make_store_files,
)
from tests.integration.store.haproxy import (
    DIRECT,
    access_lines,
    client_via,
    haproxy,
    proxied,
    wait_for,
)
from tests.integration.store.test_guessing import wrong_answer
from tests.integration.store.test_store_e2e import PKIX, der, target, user_cert
from tests.unit.storage.test_storage import postgres_schema, postgres_url

pytestmark = pytest.mark.peer("psql")

SECRET = "frontends-share-this-nonce-secret-0123456789"


@pytest.fixture
def files(tmp_path: Path) -> StoreFiles:
    return make_store_files(tmp_path)


@contextlib.contextmanager
def frontends(
    files: StoreFiles, count: int, *extra: str, balanced: bool = False
) -> Iterator[list[StoreProcess]]:
    """``count`` Stores on one fresh PostgreSQL schema, each with its own data folder;
    ``balanced``: behind a balancer on 127.0.0.1 that sends PROXY headers."""
    config = files.root / "frontend.toml"
    text = f'nonce_secret = "{SECRET}"\naccess_log = true\n'
    if balanced:
        text += 'proxy_protocol_from = ["127.0.0.1/32"]\n'
    config.write_text(text)
    with postgres_schema() as schema:
        started: list[StoreProcess] = []
        try:
            for n in range(count):
                process = StoreProcess(
                    files,
                    db=postgres_url(schema),
                    data_dir=files.root / f"host{n}",
                    extra=["--config", str(config), *extra],
                )
                if balanced:
                    proxied(process)
                process.start()
                started.append(process)
            yield started
        finally:
            for process in started:
                process.stop()


def challenge_of(response: httpx.Response) -> object:
    assert response.status_code == 401
    return next(
        c
        for c in parse_challenges(response.headers.get_list("www-authenticate"))
        if c.algorithm == Algorithm.SHA256.value
    )


def authorization(challenge: object, method: str, uri: str, nc: int = 1) -> str:
    return build_authorization(
        challenge,  # type: ignore[arg-type]
        method=method,
        uri=uri,
        username="alice",
        password=USERS["alice@example.com"],
        nc=nc,
        cnonce="c0ffee11",
    )


def test_an_authorization_captured_at_one_frontend_is_refused_by_the_other(
    files: StoreFiles,
) -> None:
    """The issue's measurement: PUT and DELETE-all replayed to a second frontend."""
    aor = "alice@example.com"
    uri = target(aor)
    mine, attackers = der(user_cert(aor, slot=1)), der(user_cert(aor, slot=2))
    with frontends(files, 2) as (one, two):
        with one.client("example.com") as client:
            url = one.url("example.com", uri)
            challenge = challenge_of(client.put(url, content=mine))
            captured = authorization(challenge, "PUT", uri)
            headers = {"Content-Type": PKIX, "Authorization": captured}
            assert client.put(url, content=mine, headers=headers).status_code == 201
        with two.client("example.com") as client:
            url = two.url("example.com", uri)
            replayed = client.put(url, content=attackers, headers=headers)
            assert replayed.status_code == 401, replayed.text
            served = client.get(url)
            assert served.status_code == 200
            assert attackers not in served.content and mine in served.content

        # Alice revokes from frontend two; the attacker replays it at frontend one.
        with two.client("example.com") as client:
            url = two.url("example.com", uri)
            challenge = challenge_of(client.delete(url))
            captured = authorization(challenge, "DELETE", uri)
            assert client.delete(url, headers={"Authorization": captured}).status_code == 204
        with one.client("example.com") as client:
            url = one.url("example.com", uri)
            fresh = authorization(challenge_of(client.put(url, content=mine)), "PUT", uri)
            put = client.put(
                url, content=mine, headers={"Content-Type": PKIX, "Authorization": fresh}
            )
            assert put.status_code == 201
            replayed = client.delete(url, headers={"Authorization": captured})
            assert replayed.status_code == 401
            assert mine in client.get(url).content


def test_three_frontends_behind_haproxy(files: StoreFiles) -> None:
    """Issue 10: three frontends, one database, HAProxy round robin with PROXY v2.

    A captured Authorization replayed to any frontend is refused, a client's guesses are
    counted across all three, and an enrollment through the balancer is served by each.
    """
    aor = "alice@example.com"
    uri = target(aor)
    mine = der(user_cert(aor, slot=3))
    with frontends(files, 3, balanced=True) as stores:
        backends = [(store.port, "send-proxy-v2") for store in stores]
        with haproxy(files.root, backends) as port, client_via(files, port, "127.0.0.5") as lb:
            url = f"https://example.com:{port}{uri}"
            # The challenge comes from one frontend, the answer goes to the next.
            captured = authorization(challenge_of(lb.put(url, content=mine)), "PUT", uri)
            headers = {"Content-Type": PKIX, "Authorization": captured}
            assert lb.put(url, content=mine, headers=headers).status_code == 201
            # Replayed through the balancer (the three frontends in turn), then directly.
            assert [lb.put(url, content=mine, headers=headers).status_code for _ in range(3)] == [
                401
            ] * 3
            for store in stores:
                with client_via(files, store.port, DIRECT) as direct:
                    url_at = f"https://example.com:{store.port}{uri}"
                    replayed = direct.put(url_at, content=mine, headers=headers)
                    assert replayed.status_code == 401
                    served = direct.get(url_at)  # the enrollment is served by each
                    assert served.status_code == 200 and mine in served.content

        # 20 wrong guesses from one client spread over three frontends: the 21st is 429.
        # (From another address: the three replays above were charged to 127.0.0.5.)
        with haproxy(files.root, backends) as port, client_via(files, port, "127.0.0.6") as lb:
            answer = wrong_answer(lb, _Balancer(port), "alice")  # type: ignore[arg-type]
            account = f"https://example.com:{port}/account"
            statuses = [
                lb.get(account, headers={"Authorization": answer}).status_code for _ in range(21)
            ]
            assert statuses == [401] * 20 + [429], statuses

        def guesses_at(store: StoreProcess) -> int:
            return sum('"GET /account' in line and " 401 " in line for line in access_lines(store))

        wait_for(lambda: sum(guesses_at(s) for s in stores) >= 21, "the access logs")
        # Each frontend saw its share (round robin), under the client's own address.
        assert all(guesses_at(store) >= 6 for store in stores), [guesses_at(s) for s in stores]
        assert all(
            ": 127.0.0.6 " in line
            for store in stores
            for line in access_lines(store)
            if "/account" in line
        )


class _Balancer:
    """What wrong_answer() needs of a store: URLs, here to the balancer."""

    def __init__(self, port: int) -> None:
        self.port = port

    def url(self, domain: str, target: str) -> str:
        return f"https://{domain}:{self.port}{target}"


def test_killing_a_frontend_mid_traffic_loses_no_acknowledged_enrollment(
    files: StoreFiles,
) -> None:
    """Enrollments through HAProxy while one of three frontends is SIGKILLed: every one
    answered 201 is served afterwards; requests in flight at the kill may fail, not lie."""
    aor = "bob@example.com"
    acknowledged: list[bytes] = []
    failed: list[str] = []
    with frontends(files, 3, "--max-per-aor", "1000", balanced=True) as stores:
        backends = [(store.port, "send-proxy-v2") for store in stores]
        with haproxy(files.root, backends, check=True) as port:
            stop = threading.Event()

            def enroll() -> None:
                with client_via(files, port, "127.0.0.7") as lb:
                    url = f"https://example.com:{port}{target(aor)}"
                    for slot in itertools.count(100):
                        if stop.is_set():
                            return
                        body = der(user_cert(aor, slot=slot))
                        try:
                            response = lb.put(
                                url,
                                content=body,
                                headers={"Content-Type": PKIX},
                                auth=DigestAuth("bob", USERS[aor]),
                            )
                        except httpx.TransportError as exc:
                            failed.append(type(exc).__name__)
                            continue
                        if response.status_code == 201:
                            acknowledged.append(body)
                        else:
                            failed.append(str(response.status_code))

            worker = threading.Thread(target=enroll)
            worker.start()
            try:
                wait_for(lambda: len(acknowledged) >= 20, "20 enrollments", timeout=60)
                stores[1].stop()  # SIGKILL to the whole process group, mid-traffic
                killed_at = len(acknowledged)
                wait_for(lambda: len(acknowledged) >= killed_at + 20, "20 more", timeout=60)
            finally:
                stop.set()
                worker.join(30)
            # GETs keep working through the balancer with one frontend gone.
            with client_via(files, port, "127.0.0.7") as lb:
                for _ in range(6):
                    got = lb.get(f"https://example.com:{port}{target(aor)}")
                    assert got.status_code == 200
        for store in (stores[0], stores[2]):
            with client_via(files, store.port, DIRECT) as direct:
                served = direct.get(f"https://example.com:{store.port}{target(aor)}").content
            lost = [body for body in acknowledged if body not in served]
            assert not lost, f"{len(lost)} of {len(acknowledged)} acknowledged enrollments lost"
    assert len(acknowledged) >= 40
    assert len(failed) <= 5, failed  # at most the requests in flight at the kill
