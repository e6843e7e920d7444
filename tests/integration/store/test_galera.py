"""Store frontends on a 3-node MariaDB Galera cluster, one node SIGKILLed (issue 10).

One cluster for the module (it takes ~20 s to bootstrap and join by rsync SST): first the
per-AOR limit raced from all three nodes (Galera replicates optimistically, so this is where
a limit that is only a local lock would break), then three ``sipcert serve`` frontends, each
on its own node, under enrollment load while one node is killed and then rejoins. Figures
are in docs/benchmarks.md ("Galera: a node killed under enrollment load").
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sipcert.client.fetch import DigestAuth
from sipcert.errors import ForbiddenError
from sipcert.storage import MysqlStore, open_store
from tests.integration.galera import GaleraCluster, galera_cluster
from tests.integration.store.conftest import USERS, StoreProcess, make_store_files
from tests.integration.store.haproxy import DIRECT, client_via, proxied, wait_for
from tests.integration.store.test_store_e2e import PKIX, der, target, user_cert
from tests.unit.storage.test_storage import NOW, make_cert

# About 70 s (cluster bootstrap and SST ~20 s, the rejoin ~7 s): still part of `make test`.
pytestmark = [pytest.mark.peer("mariadbd", "rsync"), pytest.mark.slow]

SECRET = "galera-frontends-share-this-nonce-secret-01"


@pytest.fixture(scope="module")
def cluster() -> Iterator[GaleraCluster]:
    with galera_cluster() as started:
        yield started


def test_the_per_aor_limit_holds_across_galera_nodes(cluster: GaleraCluster) -> None:
    """24 concurrent adds for one AOR, spread over the three nodes, limit 5: exactly 5."""

    async def race() -> list[str]:
        stores = [open_store(node.url) for node in cluster.nodes]
        assert all(isinstance(s, MysqlStore) for s in stores)

        async def add(n: int) -> str:
            try:
                await stores[n % 3].add(make_cert("race@example.com", n), max_per_aor=5, now=NOW)
            except ForbiddenError as exc:
                return exc.reason
            return "added"

        try:
            return await asyncio.gather(*(add(n) for n in range(24)))
        finally:
            for store in stores:
                await store.close()

    outcomes = asyncio.run(race())
    assert outcomes.count("added") == 5, outcomes
    assert outcomes.count("too-many-certificates") == 19

    async def count() -> int:
        store = open_store(cluster.nodes[1].url)
        try:
            return len(await store.get_by_aor("race@example.com", NOW))
        finally:
            await store.close()

    assert asyncio.run(count()) == 5


def test_two_frontends_on_two_nodes_sequence_one_log(cluster: GaleraCluster) -> None:
    """The transparency log's single-sequencer lease on Galera (issue 14): two frontends on
    two nodes race for every batch (each round starts after the last lease ran out), and
    submissions arrive at both nodes. Locks are node-local there, so what keeps one batch per
    round is the lease row both batches write (certification: first committer wins); the
    tree read back from the third node has every entry exactly once and the signed root."""
    from sipcert.proto import merkle
    from sipcert.proto.note import Signer, sign_note
    from sipcert.proto.tlog import Checkpoint, Operation
    from sipcert.storage.tlog import open_log

    signer = Signer.generate("galera.example")

    def sign(_domain: str, checkpoint: Checkpoint) -> bytes:
        return sign_note(checkpoint.text(), [signer]).to_bytes()

    async def main() -> None:
        first, second, third = (open_log(node.url, Path("/nonexistent")) for node in cluster.nodes)
        submitted: list[object] = []
        try:
            await first.ensure_checkpoint("galera.example", sign)
            for round_ in range(1, 9):
                now = round_ * 10_000
                for i, log in enumerate((first, second)):
                    submitted += await log.submit_many(  # type: ignore[attr-defined]
                        "galera.example",
                        [(Operation.ENROLL, b"g" * 32, bytes([round_, i]) * 16)],
                    )
                results = await asyncio.gather(
                    first.integrate("node0", now, 5000, sign, 100),
                    second.integrate("node1", now, 5000, sign, 100),
                )
                assert sum(r is not None for r in results) == 1, results
            # Whatever a round's winner did not see yet, a last batch takes (lease free).
            while True:
                batches = await first.integrate("node0", 1_000_000, 5000, sign, 100)
                indexes = [await second.sequenced(p) for p in submitted]  # type: ignore[arg-type]
                if None not in indexes:
                    break
                assert batches is not None
            assert sorted(i for i in indexes if i is not None) == list(range(16))

            deadline = time.monotonic() + 30.0  # the third node applies what the others wrote
            while Checkpoint.from_note(await third.checkpoint("galera.example") or b"").size < 16:
                assert time.monotonic() < deadline, "node 2 never applied the last batch"
                await asyncio.sleep(0.05)
            cp = Checkpoint.from_note(await third.checkpoint("galera.example") or b"")
            entries = await third.entries("galera.example", 0, 16)
            tree = merkle.MemoryTree()
            tree.append_hashes([merkle.leaf_hash(e) for e in entries])
            assert (cp.size, cp.root) == (16, tree.root())
            assert len({e[34:66] for e in entries}) == 16  # no entry twice
        finally:
            for log in (first, second, third):
                await log.close()

    asyncio.run(main())


def test_a_killed_node_loses_no_acknowledged_enrollment_and_rejoins(
    cluster: GaleraCluster, tmp_path: Path
) -> None:
    files = make_store_files(tmp_path)
    config = tmp_path / "frontend.toml"
    config.write_text(f'nonce_secret = "{SECRET}"\naccess_log = false\n')
    stores = [
        proxied(
            StoreProcess(
                files,
                db=node.url,
                data_dir=tmp_path / f"host{n}",
                extra=["--config", str(config), "--max-per-aor", "1000"],
            )
        )
        for n, node in enumerate(cluster.nodes)
    ]
    aors = ["alice@example.com", "bob@example.com", "dave@example.com"]
    acknowledged: dict[str, list[bytes]] = {aor: [] for aor in aors}
    failed: list[str] = []
    stop = threading.Event()

    def enroll(store: StoreProcess, aor: str) -> None:
        with client_via(files, store.port, DIRECT) as client:
            url = f"https://example.com:{store.port}{target(aor)}"
            for slot in itertools.count(200):
                if stop.is_set():
                    return
                body = der(user_cert(aor, slot=slot))
                try:
                    response = client.put(
                        url,
                        content=body,
                        headers={"Content-Type": PKIX},
                        auth=DigestAuth(aor.partition("@")[0], USERS[aor]),
                    )
                except httpx.TransportError as exc:
                    failed.append(type(exc).__name__)
                    continue
                if response.status_code == 201:
                    acknowledged[aor].append(body)
                else:
                    failed.append(str(response.status_code))
                    time.sleep(0.05)  # a dead database: do not spin on 503s

    def total() -> int:
        return sum(len(v) for v in acknowledged.values())

    try:
        for store in stores:
            store.start()
        threads = [
            threading.Thread(target=enroll, args=(s, a)) for s, a in zip(stores, aors, strict=True)
        ]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        try:
            wait_for(lambda: total() >= 30, "30 enrollments", timeout=60)
            cluster.kill(cluster.nodes[2])  # frontend 2's database node
            killed_at = total()
            wait_for(lambda: total() >= killed_at + 30, "30 more enrollments", timeout=60)
            # GETs keep working through the surviving nodes while one is down.
            for store in stores[:2]:
                with client_via(files, store.port, DIRECT) as client:
                    got = client.get(f"https://example.com:{store.port}{target(aors[0])}")
                    assert got.status_code == 200
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
        elapsed = time.monotonic() - started
        rejoin = cluster.restart(cluster.nodes[2])
        cluster.wait_size(3)

        def served_by(store: StoreProcess, aor: str) -> bytes:
            with client_via(files, store.port, DIRECT) as client:
                got = client.get(f"https://example.com:{store.port}{target(aor)}")
                return got.content if got.status_code == 200 else b""

        # Every 201 is served by every frontend, the rejoined node's included (its pool
        # reconnects within a few requests).
        for store in stores:
            for aor in aors:
                wait_for(
                    lambda s=store, a=aor: all(b in served_by(s, a) for b in acknowledged[a]),
                    f"the acknowledged certificates of {aor} at :{store.port}",
                    timeout=30,
                )
        print(  # the figures for docs/benchmarks.md (pytest -s shows them)
            f"\ngalera: {total()} acknowledged in {elapsed:.1f} s, {killed_at} before the kill, "
            f"{len(failed)} failed ({sorted(set(failed))}), 0 lost, rejoin {rejoin:.1f} s"
        )
        assert total() >= 60
    finally:
        for store in stores:
            store.stop()
