#!/usr/bin/env python3
"""How long a write takes from its 201/204 to every edge (issue 13 target: 100 ms p99).

One command (bench/README.md)::

    .venv/bin/python bench/edge_feed_latency.py [--writes 200]

Two real ``sipcert serve`` frontends on one PostgreSQL database (a fresh schema on the
server of ``SIPCERT_TEST_PG_DSN``, the tests' default otherwise), two real ``sipcert publish``
followers (LISTEN/NOTIFY) with their own folders, as tests/integration/edge/cluster.py sets
them up. Writes alternate between the frontends: enroll alice's certificate, then revoke it.
For each, the clock starts when the client has the Store's answer and stops when both
edges' files hold the new answer (polled every 0.5 ms). Prints p50, p90, p99 and max.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from tests.factories import make_cert, make_key  # noqa: E402
from tests.integration.edge.cluster import postgres_cluster  # noqa: E402
from tests.integration.store.conftest import make_store_files  # noqa: E402
from tests.unit.storage.test_storage import postgres_schema, postgres_url  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=200, help="writes to time (default 200)")
    args = parser.parse_args()
    aor = "alice@example.com"
    now = datetime.now(UTC)
    der = make_cert(
        make_key("ec-p256", aor, 0),
        aor,
        not_before=now - timedelta(minutes=5),
        not_after=now + timedelta(days=5),
    ).public_bytes(serialization.Encoding.DER)
    delays: list[float] = []
    with tempfile.TemporaryDirectory(prefix="sipcert-feed-") as scratch:
        root = Path(scratch)
        files = make_store_files(root)
        with (
            postgres_schema() as schema,
            postgres_cluster(files, postgres_url(schema), root) as cluster,
        ):
            for i in range(args.writes):
                frontend = i % 2
                if i % 2 == 0:
                    response = cluster.put(frontend, aor, der)
                    if response.status_code != 201:
                        raise SystemExit(f"enrollment failed: {response.text}")
                    expected: bytes | None = der
                else:
                    response = cluster.delete(frontend, aor)
                    if response.status_code != 204:
                        raise SystemExit(f"revocation failed: {response.text}")
                    expected = None
                start = time.perf_counter()
                while not cluster.everywhere(aor, expected):
                    if time.perf_counter() - start > 10:
                        raise SystemExit(f"write {i} did not reach every edge in 10 s")
                    time.sleep(0.0005)
                delays.append(time.perf_counter() - start)
    ms = sorted(d * 1000 for d in delays)
    cuts = statistics.quantiles(ms, n=100)
    print(
        f"{len(ms)} writes, 2 frontends, 2 edges: "
        f"p50 {cuts[49]:.1f} ms, p90 {cuts[89]:.1f} ms, p99 {cuts[98]:.1f} ms, max {ms[-1]:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
