"""``sipcert ua`` monitors its own AOR in the Store's transparency log (issue 14).

A real ``sipcert serve`` with the log on (its own data folder, no witness); the proxy is
the stand-in of test_cli_sip.py. Once the UA is registered, a certificate for its AOR is
enrolled at the Store without the UA's home (what a Store that lies, or a thief of the SIP
password, does): the UA's next periodic check prints one ALARM line on stderr and an
``alarm`` JSON event, and the UA keeps running until it is stopped.
"""

from __future__ import annotations

import hashlib
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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
