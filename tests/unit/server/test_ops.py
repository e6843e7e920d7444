"""Probes, the admin listener and in-process metrics (issue 10), over real TLS on 127.0.0.1.

The metrics here are prometheus_client's single-process mode (a registry per
:class:`PrometheusMetrics`); the multiprocess mode across pre-forked workers is tested
against real ``sipcert serve`` processes in tests/integration/store/test_ops.py.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sipcert.client.fetch import DigestAuth
from sipcert.errors import StorageError
from sipcert.proto.ca import TestCA
from sipcert.proto.digest import MemoryNonceCounter
from sipcert.proto.store import StorePolicy
from sipcert.server.app import StoreApp
from sipcert.server.audit import Audit
from sipcert.server.credentials import FileCredentials
from sipcert.server.metrics import Metrics, PrometheusMetrics, route_of
from sipcert.server.run import serve_app
from sipcert.server.tls import build_sni_context, load_domain_context
from sipcert.storage import MemoryStore, StoredCertificate
from tests.unit.server.test_app import ALICE, Clock, Env, alice_cert, run_store


class BrokenStore(MemoryStore):
    """Every read fails, as a database that went away does."""

    async def get_by_cert_hash(self, cert_hash: str, now: datetime) -> StoredCertificate | None:
        raise StorageError("certificate database /var/lib/sipcert/x.db: reading failed")

    async def count(self, now: datetime) -> int:
        raise StorageError("certificate database /var/lib/sipcert/x.db: reading failed")


def test_probes_answer_on_every_domain(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        for domain in ("example.com", "example.net"):
            async with env.client(domain) as client:
                health = await client.get(env.url(domain, "/healthz"))
                ready = await client.head(env.url(domain, "/readyz"))
                post = await client.post(env.url(domain, "/healthz"))
            assert (health.status_code, health.text) == (200, "ok\n")
            assert health.headers["Cache-Control"] == "no-store"
            assert ready.status_code == 200
            assert (post.status_code, post.headers["Allow"]) == (405, "GET, HEAD")

    run_store(tmp_path, scenario)


def test_readiness_names_the_failed_source_not_the_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(env: Env) -> None:
        async with env.client("example.com") as client:
            health = await client.get(env.url("example.com", "/healthz"))
            ready = await client.get(env.url("example.com", "/readyz"))
        assert health.status_code == 200  # the process is up
        assert (ready.status_code, ready.text) == (503, "not ready: database unavailable\n")

    with caplog.at_level(logging.ERROR, "sipcert.server"):
        run_store(tmp_path, scenario, storage=BrokenStore())
    assert "readiness: the certificate database failed: " in caplog.text
    assert "/var/lib/sipcert/x.db" in caplog.text  # the operator sees why, the client not


def samples_of(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def test_routes_and_methods_are_bounded() -> None:
    assert route_of("/search-cgi") == "/search-cgi"
    assert route_of("/wp-admin/../etc") == "other"
    metrics = PrometheusMetrics()
    metrics.request("other", "BREW", 405, 0.001)
    metrics.request("/search-cgi", "GET", 200, 0.002)
    samples = samples_of(metrics.render(None).decode())
    requests = "sipcert_http_requests_total"
    assert (
        samples[
            (requests, frozenset({"route": "other", "method": "other", "status": "405"}.items()))
        ]
        == 1
    )
    assert ("sipcert_certificates_stored", frozenset()) not in samples
    Metrics().request("x", "GET", 200, 0.0)  # the null object accepts everything


def serve_with_admin(tmp_path: Path, scenario: Any, *, storage: MemoryStore | None = None) -> None:
    """Serve a Store with PrometheusMetrics, an audit and an admin socket during ``scenario``."""
    ca = TestCA.create(now=datetime.now(UTC))
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.cert_pem)
    issued = ca.issue(["example.com"], now=datetime.now(UTC))
    (tmp_path / "c.pem").write_bytes(issued.cert_pem)
    (tmp_path / "c.key").write_bytes(issued.key_pem)
    contexts = {
        "example.com": load_domain_context(
            "example.com", tmp_path / "c.pem", tmp_path / "c.key", now=datetime.now(UTC)
        )
    }
    users = FileCredentials(tmp_path / "users.json")
    users.add("alice@example.com", "alice-pw")

    async def main() -> None:
        metrics = PrometheusMetrics()
        app = StoreApp(
            domains=contexts,
            storage=storage or MemoryStore(),
            credentials=users,
            policy=StorePolicy(max_age=0, max_per_aor=2),
            nonce_secret=b"k" * 32,
            nonce_counter=MemoryNonceCounter(),
            clock=Clock(),
            metrics=metrics,
            audit=Audit("unit-frontend"),
        )
        tls_sock = socket.create_server(("127.0.0.1", 0))
        admin_sock = socket.create_server(("127.0.0.1", 0))
        for sock in (tls_sock, admin_sock):
            sock.setblocking(False)
        stop = asyncio.Event()
        server = asyncio.create_task(
            serve_app(
                app,
                build_sni_context(contexts),
                [tls_sock],
                stop,
                admin_sockets=[admin_sock],
                json_access_log=True,
            )
        )
        try:  # the sockets listen already: a connection waits in the backlog until served
            env = Env(app, Clock(), tls_sock.getsockname()[1], ca_file)
            await scenario(env, f"http://127.0.0.1:{admin_sock.getsockname()[1]}")
        finally:
            stop.set()
            await server
            tls_sock.close()
            admin_sock.close()
            await app.storage.close()

    asyncio.run(main())


def test_admin_listener_counts_and_audits(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(env: Env, admin: str) -> None:
        async with env.client("example.com") as client:
            auth = DigestAuth("alice", "alice-pw")
            body = alice_cert()
            put = await client.put(env.url("example.com", ALICE), content=body, auth=auth)
            assert put.status_code == 201
            again = await client.put(env.url("example.com", ALICE), content=body, auth=auth)
            assert again.status_code == 200
            page = await client.post(
                env.url("example.com", "/account/revoke"),
                content=b"all=1",
                auth=auth,
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            assert page.status_code == 403  # no CSRF token: nothing revoked, nothing audited
            deleted = await client.delete(env.url("example.com", ALICE), auth=auth)
            assert deleted.status_code == 204
        async with httpx.AsyncClient() as plain:
            scraped = await plain.get(f"{admin}/metrics")
            ready = await plain.get(f"{admin}/readyz")
            unknown = await plain.get(f"{admin}/search-cgi")
        assert (ready.status_code, unknown.status_code) == (200, 404)
        samples = samples_of(scraped.text)
        assert samples[("sipcert_enrollments_total", frozenset())] == 1
        assert samples[("sipcert_revocations_total", frozenset())] == 1
        assert samples[("sipcert_certificates_stored", frozenset())] == 0
        assert samples[("sipcert_auth_failures_total", frozenset())] == 0

    with caplog.at_level(logging.INFO, "sipcert.audit"):
        serve_with_admin(tmp_path, scenario)
    records = [r for r in caplog.records if r.name == "sipcert.audit"]
    assert [r.audit["event"] for r in records] == ["enroll", "enroll-again", "revoke"]  # type: ignore[attr-defined]
    revoke = records[-1].audit  # type: ignore[attr-defined]
    assert (revoke["user"], revoke["via"], revoke["removed"], revoke["frontend"]) == (
        "alice",
        "DELETE",
        1,
        "unit-frontend",
    )
    assert len(revoke["sha256"]) == 1 and revoke["address"] == "127.0.0.1"
    assert "user=alice aor=alice@example.com" in records[0].getMessage()


def test_metrics_without_a_database_leave_the_count_out(tmp_path: Path) -> None:
    async def scenario(env: Env, admin: str) -> None:
        async with httpx.AsyncClient() as plain:
            scraped = await plain.get(f"{admin}/metrics")
            ready = await plain.get(f"{admin}/readyz")
        assert scraped.status_code == 200
        samples = samples_of(scraped.text)
        assert ("sipcert_certificates_stored", frozenset()) not in samples
        assert samples[("sipcert_database_errors_total", frozenset())] == 1  # the count itself
        assert ready.status_code == 503

    serve_with_admin(tmp_path, scenario, storage=BrokenStore())


def test_metrics_are_off_without_prometheus(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        assert isinstance(env.app.metrics, Metrics)
        assert not isinstance(env.app.metrics, PrometheusMetrics)

    run_store(tmp_path, scenario)
