"""Several ``sipcert serve`` frontends on one PostgreSQL database (issue 10).

Each frontend has its own data folder, as if it ran on its own host; they share only the
nonce secret (configuration) and the certificate database. Before issue 10 the nonce counts
lived in a file of the data folder, so an ``Authorization`` captured at one frontend was
accepted by another: a replayed PUT enrolled the attacker's certificate for alice, and a
replayed DELETE revoked her certificates (RFC 7616 §3.4 and §5.1: nc detects replays).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sipcert.proto.digest import Algorithm, build_authorization, parse_challenges
from tests.integration.store.conftest import (
    USERS,
    StoreFiles,
    StoreProcess,
    make_store_files,
)
from tests.integration.store.test_store_e2e import PKIX, der, target, user_cert
from tests.unit.storage.test_storage import postgres_schema, postgres_url

pytestmark = pytest.mark.peer("psql")

SECRET = "frontends-share-this-nonce-secret-0123456789"


@pytest.fixture
def files(tmp_path: Path) -> StoreFiles:
    return make_store_files(tmp_path)


@contextlib.contextmanager
def frontends(files: StoreFiles, count: int, *extra: str) -> Iterator[list[StoreProcess]]:
    """``count`` Stores on one fresh PostgreSQL schema, each with its own data folder."""
    config = files.root / "frontend.toml"
    config.write_text(f'nonce_secret = "{SECRET}"\naccess_log = true\n')
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
