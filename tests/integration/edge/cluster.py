"""Two Store frontends and two edge publishers on one PostgreSQL database (issue 13).

Each frontend is a real ``sipcert serve`` with its own data folder (another host); each
publisher a real ``sipcert publish DIR`` following the database's change feed
(LISTEN/NOTIFY) into its own folder (another edge). Used by test_feed_postgres.py and by
bench/edge_feed_latency.py, which times a write's way from its 201 to every edge.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from sipcert.client.fetch import DigestAuth
from tests.integration.edge.conftest import store_flags, wait_for
from tests.integration.store.conftest import SIPCERT, USERS, StoreFiles, StoreProcess

PKIX = "application/pkix-cert"


def edge_body(publish_dir: Path, aor: str) -> bytes | None:
    """What an edge serves for ``aor``: the body, or None for its 404 (or nothing yet)."""
    user, _, domain = aor.partition("@")
    try:
        return (publish_dir / domain / "a" / user / "body").read_bytes()
    except OSError:
        return None


@dataclass
class Cluster:
    files: StoreFiles
    db: str
    frontends: list[StoreProcess]
    publish_dirs: list[Path]

    def put(self, frontend: int, aor: str, der: bytes) -> httpx.Response:
        return self._send(frontend, "PUT", aor, content=der, headers={"Content-Type": PKIX})

    def delete(self, frontend: int, aor: str) -> httpx.Response:
        return self._send(frontend, "DELETE", aor)

    def get(self, frontend: int, aor: str) -> httpx.Response:
        return self._send(frontend, "GET", aor, auth=None)

    def _send(self, frontend: int, method: str, aor: str, **kwargs: object) -> httpx.Response:
        store = self.frontends[frontend]
        domain = aor.rpartition("@")[2]
        if "auth" not in kwargs:
            kwargs["auth"] = DigestAuth(aor.partition("@")[0], USERS[aor])
        target = f"/search-cgi?email={aor.replace('@', '%40')}"
        with store.client(domain) as client:
            return client.request(method, store.url(domain, target), **kwargs)  # type: ignore[arg-type]

    def everywhere(self, aor: str, body: bytes | None) -> bool:
        return all(edge_body(d, aor) == body for d in self.publish_dirs)


@contextlib.contextmanager
def postgres_cluster(files: StoreFiles, db: str, scratch: Path) -> Iterator[Cluster]:
    frontends = [StoreProcess(files, db=db, data_dir=scratch / f"frontend-{i}") for i in range(2)]
    publishers: list[subprocess.Popen[bytes]] = []
    dirs = [scratch / f"edge-{i}" for i in range(2)]
    try:
        for frontend in frontends:
            frontend.start()
        flags = store_flags(files)
        flags[flags.index("--db") + 1] = db
        for i, publish_dir in enumerate(dirs):
            log_path = scratch / f"publisher-{i}.log"
            with open(log_path, "wb") as log:
                publishers.append(
                    subprocess.Popen(
                        [SIPCERT, "publish", str(publish_dir), *flags],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        env={**os.environ, "PYTHONUNBUFFERED": "1"},
                    )
                )
            wait_for(
                lambda path=log_path: "following changes" in path.read_text(errors="replace"),  # type: ignore[misc]
                f"publisher {i}",
            )
        yield Cluster(files, db, frontends, dirs)
    finally:
        for process in publishers:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        for frontend in frontends:
            frontend.stop()
