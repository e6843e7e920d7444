"""``sipcert ua`` monitors its own AOR in the Store's transparency log, and ``sipcert fetch``
checks it by default (issue 14).

A real ``sipcert serve`` with the log on (its own data folder, no witness); the proxy is
the stand-in of test_cli_sip.py. Once the UA is registered, a certificate for its AOR is
enrolled at the Store without the UA's home (what a Store that lies, or a thief of the SIP
password, does): the UA's next periodic check prints one ALARM line on stderr and an
``alarm`` JSON event, and the UA keeps running until it is stopped.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sipcert.storage import SqliteStore, StoredCertificate
from tests.integration.e2e.test_cli_sip import Lines, finish, proxy_answering, start
from tests.integration.store.conftest import (
    NONCE_LIFETIME,
    SIPCERT,
    USERS,
    StoreProcess,
    make_store_files,
)
from tests.integration.store.test_store_e2e import der, put, user_cert

__all__ = ["proxy_answering"]  # the fixture, imported for this module's tests

AOR = "dave@example.com"


@pytest.fixture(scope="module")
def logged_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreProcess]:
    root = tmp_path_factory.mktemp("ua-tlog")
    files = make_store_files(root)
    config = root / "store.toml"
    config.write_text(f"nonce_lifetime = {NONCE_LIFETIME}\n[transparency]\ninterval = 0.1\n")
    store = StoreProcess(files, extra=["--config", str(config)])
    store.start()
    try:
        yield store
    finally:
        store.stop()


def test_ua_alarms_on_an_enrollment_that_is_not_its_own(
    logged_store: StoreProcess, proxy_answering: Any, tmp_path: Path
) -> None:
    proxy = proxy_answering("200 OK")
    secret = tmp_path / "password"
    secret.write_text(USERS[AOR] + "\n")
    command = [
        *(SIPCERT, "ua", AOR, "--proxy", proxy.uri, "--store", f"127.0.0.1:{logged_store.port}"),
        *("--ca-file", str(logged_store.files.ca_file), "--home", str(tmp_path / "home")),
        *("--password-file", str(secret), "--json", "--log-monitor", "0.2"),
    ]
    process = start(command)
    lines = Lines(process.stdout)
    try:
        assert lines.event()["event"] == "certificate"
        assert lines.event()["event"] == "registered"
        injected = der(user_cert(AOR, slot=77))  # not from this UA's home
        assert put(logged_store, AOR, injected).status_code == 201
        alarm = lines.event()  # the UA's own enrollment is no alarm: this is the first event
        assert alarm["event"] == "alarm" and alarm["aor"] == AOR
        assert alarm["sha256"] == hashlib.sha256(injected).hexdigest()
        assert process.poll() is None  # an alarm does not stop the UA
        process.send_signal(signal.SIGTERM)
        unregistered = lines.event()
    finally:
        errors = finish(process, lines)
    assert unregistered["event"] == "unregistered", errors
    assert process.returncode == 0, errors
    alarms = [line for line in errors.splitlines() if line.startswith("ALARM ")]
    assert len(alarms) == 1, errors  # each entry is read once
    assert hashlib.sha256(injected).hexdigest() in alarms[0]
    assert "Traceback" not in errors


def test_fetch_checks_the_log_by_default_and_no_verify_log_trusts_the_store(
    logged_store: StoreProcess, tmp_path: Path
) -> None:
    """A certificate written straight into the Store's database (not logged, as a Store that
    lies would) is discarded as ``not-in-log`` by a plain ``sipcert fetch``; the logged one is
    kept. ``--no-verify-log`` gets both."""
    aor = "erin@example.com"
    logged = der(user_cert(aor, slot=5))
    assert put(logged_store, aor, logged).status_code == 201
    sneaked = user_cert(aor, slot=6)
    now = datetime.now(UTC)
    database = SqliteStore(logged_store.files.db_path)
    record = StoredCertificate.from_der(
        aor,
        der(sneaked),
        not_before=sneaked.not_valid_before_utc,
        not_after=sneaked.not_valid_after_utc,
        created=now,
    )
    try:
        asyncio.run(database.add(record, max_per_aor=10, now=now))
    finally:
        asyncio.run(database.close())

    def fetch(*more: str) -> dict[str, Any]:
        command = [SIPCERT, "fetch", aor, "--json", "--home", str(tmp_path / "home")]
        command += ["--store", f"127.0.0.1:{logged_store.port}"]
        command += ["--ca-file", str(logged_store.files.ca_file), *more]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        answer: dict[str, Any] = json.loads(done.stdout)
        return answer

    checked = fetch()
    assert {c["sha256"] for c in checked["certificates"]} == {hashlib.sha256(logged).hexdigest()}
    assert {"sha256": record.sha256, "reason": "not-in-log"} in checked["discarded"]
    trusting = fetch("--no-verify-log")
    assert record.sha256 in {c["sha256"] for c in trusting["certificates"]}
