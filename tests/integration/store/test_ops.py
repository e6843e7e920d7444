"""Operating the Store (issue 10) against real ``sipcert serve`` processes with 2 workers.

Probes on every served domain and on the plain-HTTP admin listener; exact Prometheus counter
values summed over several pre-forked workers (each request steered to one worker by
freezing the other); JSON logs and the audit file; SIGHUP reloading TLS files and the
credential source without dropping a connection; workers exiting when their parent is
SIGKILLed. Every wait is on a condition with a deadline.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sipcert.client.fetch import DigestAuth
from sipcert.server.credentials import FileCredentials
from tests.conftest import wait_for
from tests.integration.store.conftest import (
    StoreFiles,
    StoreProcess,
    free_port,
    is_running,
    make_store_files,
    only_worker,
)
from tests.integration.store.test_store_e2e import der, get, put, target, user_cert

NOBODY = target("nobody@example.com", "sip")


class ConfigStore(StoreProcess):
    """A Store whose credentials come from its configuration file (so SIGHUP can change them)."""

    def command(self) -> list[str]:
        command = super().command()
        at = command.index("--credentials")
        del command[at : at + 2]
        return command


def port_besides(*taken: int) -> int:
    """A free port that is none of ``taken`` (two free_port() calls may give the same one)."""
    while (port := free_port()) in taken:
        pass
    return port


def write_config(root: Path, admin: int, credentials: Path, **extra: str) -> Path:
    path = root / "ops.toml"
    lines = [
        f'admin_listen = "127.0.0.1:{admin}"',
        "workers = 2",
        'frontend_name = "frontend-a"',
        f'credentials = "file:{credentials}"',
        *(f"{key} = {value}" for key, value in extra.items()),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def files(tmp_path: Path) -> StoreFiles:
    return make_store_files(tmp_path)


@pytest.fixture
def ops_store(files: StoreFiles) -> Iterator[tuple[ConfigStore, int]]:
    store = ConfigStore(files)
    admin = port_besides(store.port)
    config = write_config(
        files.root,
        admin,
        files.users_file,
        log_format='"json"',
        audit_log='"audit.jsonl"',
    )
    store.extra = ["--config", str(config)]
    store.start()
    try:
        wait_for(lambda: len(store.workers()) == 2, "two workers")
        yield store, admin
    finally:
        store.stop()


def admin_get(admin: int, path: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{admin}{path}", timeout=10)


def scrape(admin: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = admin_get(admin, "/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_probes_on_every_domain_and_on_the_admin_listener(
    ops_store: tuple[ConfigStore, int], files: StoreFiles
) -> None:
    store, admin = ops_store
    for domain in ("example.com", "example.net"):
        health = get(store, domain, "/healthz")
        assert (health.status_code, health.text) == (200, "ok\n")
        assert get(store, domain, "/readyz").text == "ready\n"
    assert admin_get(admin, "/healthz").text == "ok\n"
    assert admin_get(admin, "/readyz").status_code == 200
    assert httpx.post(f"http://127.0.0.1:{admin}/healthz").status_code == 405
    assert admin_get(admin, "/search-cgi").status_code == 404
    # Credentials unreachable: not ready (the reason goes to the log, not the answer).
    files.users_file.rename(files.users_file.with_suffix(".away"))
    try:
        answer = admin_get(admin, "/readyz")
        assert (answer.status_code, answer.text) == (503, "not ready: credentials unavailable\n")
        assert get(store, "example.net", "/readyz").status_code == 503
        assert admin_get(admin, "/healthz").status_code == 200  # still alive
    finally:
        files.users_file.with_suffix(".away").rename(files.users_file)
    assert admin_get(admin, "/readyz").status_code == 200


def tls_connection(store: StoreProcess, domain: str = "example.com") -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=store.files.ca_file)
    raw = socket.create_connection(("127.0.0.1", store.port), timeout=10)
    return context.wrap_socket(raw, server_hostname=domain)


def keepalive_get(tls: ssl.SSLSocket, path: str = "/healthz") -> bytes:
    """One GET on an open connection; the whole answer (this path's body is ``ok``)."""
    tls.sendall(f"GET {path} HTTP/1.1\r\nHost: example.com\r\n\r\n".encode())
    answer = b""
    while not answer.endswith(b"\r\n\r\nok\n"):
        chunk = tls.recv(65536)
        assert chunk, f"connection closed after {answer!r}"
        answer += chunk
    return answer


def test_metrics_are_exact_sums_over_the_workers(ops_store: tuple[ConfigStore, int]) -> None:
    store, admin = ops_store
    first, second = store.workers()
    with only_worker(first, [second]):
        statuses = [get(store, "example.com", NOBODY).status_code for _ in range(3)]
    with only_worker(second, [first]):
        statuses += [get(store, "example.com", NOBODY).status_code for _ in range(2)]
    assert statuses == [404] * 5
    alice, bob = user_cert("alice@example.com"), user_cert("bob@example.com")
    assert put(store, "alice@example.com", der(alice)).status_code == 201
    assert put(store, "bob@example.com", der(bob)).status_code == 201
    assert put(store, "alice@example.com", der(alice), password="wrong").status_code == 401
    with store.client("example.com") as client:
        deleted = client.delete(
            store.url("example.com", target("bob@example.com")),
            auth=DigestAuth("bob", "bob-secret"),
        )
    assert deleted.status_code == 204

    samples = scrape(admin)
    requests = "sipcert_http_requests_total"
    assert value(samples, requests, route="/search-cgi", method="GET", status="404") == 5
    # Each Digest exchange: a 401 with the challenge, then the answer; the wrong password
    # is tried with SHA-256, then MD5 (client.fetch.DigestAuth), so two checked failures.
    assert value(samples, requests, route="/search-cgi", method="PUT", status="401") == 5
    assert value(samples, requests, route="/search-cgi", method="PUT", status="201") == 2
    assert value(samples, requests, route="/search-cgi", method="DELETE", status="401") == 1
    assert value(samples, requests, route="/search-cgi", method="DELETE", status="204") == 1
    assert value(samples, "sipcert_http_request_duration_seconds_count", route="/search-cgi") == 14
    assert value(samples, "sipcert_enrollments_total") == 2
    assert value(samples, "sipcert_revocations_total") == 1
    assert value(samples, "sipcert_auth_failures_total") == 2
    assert value(samples, "sipcert_rate_limited_total") == 0
    assert value(samples, "sipcert_database_errors_total") == 0
    assert value(samples, "sipcert_certificates_stored") == 1

    # Open connections: a live-summed gauge, published by each worker.
    with only_worker(second, [first]):
        held = [tls_connection(store), tls_connection(store)]
        for tls in held:
            keepalive_get(tls)
    try:
        wait_for(
            lambda: value(scrape(admin), "sipcert_open_connections") == 2,
            "2 open connections",
        )
    finally:
        for tls in held:
            tls.close()
    wait_for(lambda: value(scrape(admin), "sipcert_open_connections") == 0, "0 open connections")

    # A worker that dies: its counts stay (totals), its live gauge goes; a new one starts.
    with only_worker(second, [first]):
        held = [tls_connection(store)]
        keepalive_get(held[0])
    wait_for(lambda: value(scrape(admin), "sipcert_open_connections") == 1, "1 open connection")
    os.kill(second, signal.SIGKILL)
    wait_for(lambda: second not in store.workers() and len(store.workers()) == 2, "a new worker")
    held[0].close()
    samples = scrape(admin)
    assert value(samples, "sipcert_open_connections") == 0
    assert value(samples, requests, route="/search-cgi", method="GET", status="404") == 5
    assert value(samples, "sipcert_enrollments_total") == 2


def json_lines(store: StoreProcess) -> list[dict[str, Any]]:
    """Every line of the Store's standard error (the CLI's banner too), as JSON."""
    return [json.loads(line) for line in store.output().splitlines()]


def test_json_logs_and_the_audit_trail(
    ops_store: tuple[ConfigStore, int], files: StoreFiles
) -> None:
    store, _admin = ops_store
    alice = der(user_cert("alice@example.com"))
    assert put(store, "alice@example.com", alice).status_code == 201
    with store.client("example.com") as client:
        revoked = client.delete(
            store.url("example.com", target("alice@example.com")),
            auth=DigestAuth("alice", "alice-secret"),
        )
    assert revoked.status_code == 204
    # A request whose target tries to close the JSON object and start another one.
    forged = '/nothing?x=","level":"ERROR"}\n{"forged":"1'
    with tls_connection(store) as tls:
        tls.sendall(
            f"GET {forged.replace(chr(10), '%0A')} HTTP/1.1\r\nHost: example.com\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        while tls.recv(65536):
            pass

    def access() -> list[dict[str, Any]]:
        return [r for r in json_lines(store) if r["logger"] == "sipcert.access"]

    wait_for(lambda: len(access()) >= 5, "the access lines")  # flushed within a second
    records = json_lines(store)
    assert all({"time", "level", "logger"} <= set(r) for r in records)
    assert records[0]["logger"] == "sipcert.cli"
    assert records[0]["message"].startswith("serving example.com, example.net on ")
    assert not any("forged" in r for r in records)
    [line] = [r for r in access() if r["path"].startswith("/nothing")]
    assert line["path"] == forged.replace("\n", "%0A")
    assert (line["method"], line["status"], line["remote"]) == ("GET", 404, "127.0.0.1")
    assert {"version", "bytes", "seconds"} <= set(line)

    audit_file = files.root / "audit.jsonl"
    wait_for(lambda: len(audit_file.read_text().splitlines()) == 2, "two audit records")
    enroll, revoke = (json.loads(line) for line in audit_file.read_text().splitlines())
    sha256 = hashlib.sha256(alice).hexdigest()
    assert enroll["event"] == "enroll"
    assert (enroll["user"], enroll["aor"], enroll["sha256"]) == (
        "alice",
        "alice@example.com",
        [sha256],
    )
    assert (enroll["address"], enroll["frontend"]) == ("127.0.0.1", "frontend-a")
    assert enroll["listener"] == f"127.0.0.1:{store.port}"
    assert revoke["event"] == "revoke"
    assert (revoke["sha256"], revoke["removed"], revoke["via"]) == ([sha256], 1, "DELETE")
    # The same records in the application log.
    assert [r["event"] for r in records if r["logger"] == "sipcert.audit"] == ["enroll", "revoke"]
    # Never a password, a Digest response or a nonce.
    everything = store.output() + audit_file.read_text()
    for secret in ("alice-secret", "response=", "nonce", "Digest username"):
        assert secret not in everything


def _renew(files: StoreFiles, domain: str) -> bytes:
    """Replace the domain's certificate and key files as certbot does; the new DER."""
    issued = files.ca.issue([domain], now=datetime.now(UTC), days=30)
    cert, key = files.tls[domain]
    for path, data in ((key, issued.key_pem), (cert, issued.cert_pem)):
        path.with_suffix(".new").write_bytes(data)
        path.with_suffix(".new").replace(path)
    return ssl.PEM_cert_to_DER_cert(issued.cert_pem.decode())


def presented(store: StoreProcess) -> bytes:
    with tls_connection(store) as tls:
        cert = tls.getpeercert(binary_form=True)
    assert cert is not None
    return cert


def test_sighup_reloads_certificates_and_credentials_without_dropping_connections(
    files: StoreFiles,
) -> None:
    store = ConfigStore(files)
    admin = port_besides(store.port)
    frank_users = files.root / "users2.json"
    FileCredentials(frank_users).add("frank@example.com", "frank-secret")
    config = write_config(files.root, admin, files.users_file)
    store.extra = ["--config", str(config)]
    store.start()
    try:
        wait_for(lambda: len(store.workers()) == 2, "two workers")
        workers = store.workers()
        old = presented(store)
        kept = tls_connection(store)
        keepalive_get(kept)
        new = _renew(files, "example.com")
        write_config(files.root, admin, frank_users)
        assert store.process is not None
        store.process.send_signal(signal.SIGHUP)
        for worker in workers:
            others = [w for w in workers if w != worker]
            with only_worker(worker, others):
                wait_for(
                    lambda: presented(store) == new,
                    f"worker {worker} to present the new certificate",
                )
        assert keepalive_get(kept).startswith(b"HTTP/1.1 200")  # the old connection lives on
        assert kept.getpeercert(binary_form=True) == old != new
        kept.close()
        assert store.workers() == workers and store.process.poll() is None
        with store.client("example.com") as client:
            url = store.url("example.com", "/account")
            assert client.get(url, auth=DigestAuth("frank", "frank-secret")).status_code == 200
            assert client.get(url, auth=DigestAuth("alice", "alice-secret")).status_code == 401

        # A broken renewal is refused: everything stays as it was.
        files.tls["example.com"][0].write_text("not a certificate\n")
        store.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in store.output(), "the refusal")
        assert presented(store) == new
        assert store.workers() == workers and store.process.poll() is None
        assert get(store, "example.com", "/healthz").status_code == 200
    finally:
        store.stop()


def test_sighup_reloads_a_single_process_store(files: StoreFiles) -> None:
    """With ``workers = 1`` the one process handles SIGHUP itself, checks included."""
    store = StoreProcess(files)
    store.start()
    try:
        assert store.process is not None
        kept = tls_connection(store)
        keepalive_get(kept)
        new = _renew(files, "example.com")
        store.process.send_signal(signal.SIGHUP)
        wait_for(lambda: presented(store) == new, "the new certificate")
        assert keepalive_get(kept).startswith(b"HTTP/1.1 200")
        kept.close()
        files.tls["example.com"][1].write_text("not a key\n")
        store.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in store.output(), "the refusal")
        assert presented(store) == new and store.process.poll() is None
    finally:
        store.stop()


def test_workers_exit_when_the_parent_is_killed(files: StoreFiles) -> None:
    store = StoreProcess(files, extra=["--workers", "2"])
    store.start()
    try:
        wait_for(lambda: len(store.workers()) == 2, "two workers")
        workers = store.workers()
        store.kill(signal.SIGKILL)
        wait_for(lambda: not any(map(is_running, workers)), "the orphaned workers to exit")
    finally:
        store.stop()
