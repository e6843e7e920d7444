"""Two workers with answer caches never serve an answer older than a write (issue 13).

Each worker of ``sipcert serve --workers 2`` keeps its own cache of rendered GET answers
(server.answers), emptied when SQLite's ``data_version`` says another connection wrote.
Here each step is sent to one chosen worker (the other frozen with SIGSTOP), so both
caches hold an answer before a write goes through the *other* worker; the request after the
201/204 must see the write.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from sipcert.client.fetch import DigestAuth
from tests.integration.store.conftest import USERS, StoreFiles, StoreProcess, only_worker
from tests.integration.store.test_store_e2e import PKIX, der, target, user_cert

AOR = "dave@example.com"


@pytest.fixture
def two_workers(store_files: StoreFiles) -> Iterator[StoreProcess]:
    config = store_files.root / "answer-cache.toml"
    config.write_text("answer_cache_mb = 16\n")
    process = StoreProcess(store_files, extra=["--workers", "2", "--config", str(config)])
    process.start()
    try:
        yield process
    finally:
        process.stop()


def _on(
    store: StoreProcess, worker: int, others: list[int], method: str, **kw: object
) -> httpx.Response:
    """One request over a new connection, which only ``worker`` can accept."""
    with only_worker(worker, others), store.client("example.com") as client:
        return client.request(method, store.url("example.com", target(AOR)), **kw)  # type: ignore[arg-type]


def test_a_write_through_one_worker_is_seen_at_once_by_the_other(two_workers: StoreProcess) -> None:
    first, second = two_workers.workers()
    auth = DigestAuth("dave", USERS[AOR])
    for worker, other in ((first, second), (second, first), (first, second), (second, first)):
        assert _on(two_workers, worker, [other], "GET").status_code == 404  # cached twice each

    cert = der(user_cert(AOR, slot=7))
    put = _on(
        two_workers, first, [second], "PUT", content=cert, headers={"Content-Type": PKIX}, auth=auth
    )
    assert put.status_code == 201, put.text
    got = _on(two_workers, second, [first], "GET")  # the worker that did not write
    assert got.status_code == 200 and got.content == cert
    etag = got.headers["ETag"]
    again = _on(two_workers, second, [first], "GET", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert _on(two_workers, first, [second], "GET").content == cert  # now cached in both

    deleted = _on(two_workers, second, [first], "DELETE", auth=auth)
    assert deleted.status_code == 204, deleted.text
    assert _on(two_workers, first, [second], "GET").status_code == 404
    assert _on(two_workers, second, [first], "GET").status_code == 404
    gone = _on(two_workers, first, [second], "GET", headers={"If-None-Match": etag})
    assert gone.status_code == 404
