"""A witness policy (k of n) for ``sipcert ua`` and ``sipcert message send`` (issue 14).

A real ``sipcert serve`` with the log on and a real ``aics-witness`` cosigning it; a second
witness key belongs to a witness the Store never submits to (it never cosigns). The proxy
is the stand-in of test_cli_sip.py.

* ``message send`` with a quorum of 1 of the Store's witness: the recipient's certificate is
  proven and the MESSAGE goes out; with a quorum of 1 of the other witness only, no
  checkpoint of the recipient's Store is acceptable: a ProofError (exit 8), nothing sent;
  a quorum larger than the witnesses given is a usage error before any request.
* ``sipcert ua`` with 1 of both witnesses: its periodic monitor accepts the cosigned
  checkpoints and raises the alarm for an enrollment that is not its own.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sipcert.server.tlog import load_or_create_log_keys
from tests.integration.e2e.conftest import sipcert
from tests.integration.e2e.test_cli_sip import Lines, finish, proxy_answering, start
from tests.integration.store.conftest import (
    NONCE_LIFETIME,
    SIPCERT,
    USERS,
    StoreProcess,
    make_store_files,
)
from tests.integration.store.test_store_e2e import der, put, user_cert
from tests.integration.store.test_tlog_peers import DOMAIN, LoggedStore, cosigned_checkpoint
from tests.integration.store.tlog_peers import peer, run_witness

__all__ = ["proxy_answering"]  # the fixture, imported for this module's tests


@pytest.fixture(scope="module")
def witnessed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LoggedStore, str]]:
    """The Store with its witness, and the vkey of a witness that never cosigns it."""
    root = tmp_path_factory.mktemp("ua-quorum")
    files = make_store_files(root)
    keys = load_or_create_log_keys(files.data_dir, DOMAIN)
    made = subprocess.run(
        [peer("aics-witness"), "init", "--config", str(root / "idle.json"), "--name", "idle/w2"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    idle = made.stdout.split()[0]
    with run_witness(root / "witness", {DOMAIN: keys.signer.verifier.vkey}) as witness:
        config = root / "store.toml"
        config.write_text(
            f"nonce_lifetime = {NONCE_LIFETIME}\n"
            "[transparency]\ninterval = 0.1\n"
            f'witnesses = [{{vkey = "{witness.vkey}", url = "{witness.url}"}}]\n'
        )
        store = StoreProcess(files, extra=["--config", str(config)])
        store.start()
        try:
            yield LoggedStore(store, files, keys, witness), idle
        finally:
            store.stop()


def _options(logged: LoggedStore, home: Path) -> list[str]:
    return [
        *("--store", f"127.0.0.1:{logged.store.port}", "--ca-file", str(logged.files.ca_file)),
        *("--home", str(home)),
    ]


def test_message_send_needs_its_quorum_of_witnesses(
    witnessed: tuple[LoggedStore, str], proxy_answering: Any, tmp_path: Path
) -> None:
    logged, idle = witnessed
    aor = "alice@example.com"
    options = _options(logged, tmp_path / "home")
    enrolled = sipcert("enroll", aor, *options, secret=USERS[aor])
    assert enrolled.returncode == 0, enrolled.stderr
    cosigned_checkpoint(logged, 1)
    proxy = proxy_answering("200 OK")
    send = ["message", "send", aor, aor, "--text", "hi", "--proxy", proxy.uri, *options]

    good = sipcert(
        *send,
        "--log-witness",
        logged.witness.vkey,
        "--log-quorum",
        "1",
        "--json",
        secret=USERS[aor],
    )
    assert good.returncode == 0, good.stdout + good.stderr
    assert proxy.requests.get(timeout=10) == "MESSAGE"

    unmet = sipcert(*send, "--log-witness", idle, "--log-quorum", "1", "--json", secret=USERS[aor])
    assert unmet.returncode == 8, unmet.stdout + unmet.stderr  # ProofError
    # The last line: the UA waited for the cosignature a while (a progress line), in vain.
    assert json.loads(unmet.stdout.splitlines()[-1])["error"] == (
        "the checkpoint of example.com has 0 of the 1 witness cosignatures required"
    )
    assert proxy.requests.empty()  # nothing was sent without a proven certificate

    usage = sipcert(*send, "--log-witness", idle, "--log-quorum", "2")
    assert usage.returncode == 2, usage.stderr
    assert usage.stderr == (
        "sipcert: error: a log quorum of 2 needs 0 to 1 cosignatures: give as many "
        "--log-witness keys (issue 14, k of n)\n"
    )
    twice = sipcert(*send, "--log-witness", idle, "--log-witness", idle, "--log-quorum", "1")
    assert twice.returncode == 2 and "given twice" in twice.stderr, twice.stderr


def test_ua_monitors_with_one_of_two_witnesses(
    witnessed: tuple[LoggedStore, str], proxy_answering: Any, tmp_path: Path
) -> None:
    logged, idle = witnessed
    aor = "dave@example.com"
    proxy = proxy_answering("200 OK")
    secret = tmp_path / "password"
    secret.write_text(USERS[aor] + "\n")
    command = [
        *(SIPCERT, "ua", aor, "--proxy", proxy.uri, *_options(logged, tmp_path / "home")),
        *("--password-file", str(secret), "--json", "--log-monitor", "0.2"),
        *("--log-witness", idle, "--log-witness", logged.witness.vkey, "--log-quorum", "1"),
    ]
    process = start(command)
    lines = Lines(process.stdout)
    try:
        assert lines.event()["event"] == "certificate"
        assert lines.event()["event"] == "registered"
        injected = der(user_cert(aor, slot=78))  # not from this UA's home
        assert put(logged.store, aor, injected).status_code == 201
        alarm = lines.event()
        assert (alarm["event"], alarm["sha256"]) == ("alarm", hashlib.sha256(injected).hexdigest())
        process.send_signal(signal.SIGTERM)
        unregistered = lines.event()
    finally:
        errors = finish(process, lines)
    assert unregistered["event"] == "unregistered", errors
    assert process.returncode == 0, errors
    assert "cosignatures" not in errors, errors  # the quorum was met every round
    assert "Traceback" not in errors
    assert alarm["aor"] == aor
