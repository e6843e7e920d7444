"""A write through any frontend reaches every edge (issue 13), on a real PostgreSQL.

Two ``sipcert serve`` frontends share one database; two ``sipcert publish`` followers
keep their own folders from its change feed. Enrollments and revocations alternate between
the frontends; after each 201/204 both edges must come to serve exactly what the Store
answers. How fast is measured, not asserted: bench/edge_feed_latency.py, docs/benchmarks.md.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.factories import make_cert, make_key
from tests.integration.edge.cluster import postgres_cluster
from tests.integration.edge.conftest import wait_for
from tests.integration.store.conftest import make_store_files
from tests.unit.storage.test_storage import postgres_schema, postgres_url

pytestmark = pytest.mark.peer("psql")


def device(aor: str, slot: int) -> bytes:
    now = datetime.now(UTC)
    cert = make_cert(
        make_key("ec-p256", aor, slot),
        aor,
        not_before=now - timedelta(minutes=5),
        not_after=now + timedelta(days=5),
    )
    return cert.public_bytes(serialization.Encoding.DER)


def test_every_edge_follows_writes_from_every_frontend(tmp_path: Path) -> None:
    files = make_store_files(tmp_path)
    with (
        postgres_schema() as schema,
        postgres_cluster(files, postgres_url(schema), tmp_path) as cluster,
    ):
        for step, aor in enumerate(["alice@example.com", "bob@example.com", "carol@example.net"]):
            for slot in range(2):
                frontend = (step + slot) % 2
                assert cluster.put(frontend, aor, device(aor, slot)).status_code == 201
                answer = cluster.get(1 - frontend, aor)  # the other frontend, same database
                assert answer.status_code == 200
                wait_for(lambda a=aor, b=answer.content: cluster.everywhere(a, b), f"{aor}")  # type: ignore[misc]
        assert cluster.delete(1, "bob@example.com").status_code == 204
        wait_for(lambda: cluster.everywhere("bob@example.com", None), "the revocation")
        assert cluster.get(0, "bob@example.com").status_code == 404
        # Nothing else changed at either edge.
        for aor in ("alice@example.com", "carol@example.net"):
            assert cluster.everywhere(aor, cluster.get(0, aor).content)
