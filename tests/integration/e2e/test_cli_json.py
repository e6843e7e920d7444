"""``--json`` on every command, on success and on failure (README.md, "JSON output").

Each command prints JSON on standard output: one object (``ua``, ``message send`` and
``demo`` print one per line, and the last one is the result). The result always has ``ok``
(true exactly when the exit code is 0) and ``exit_code``; a failure has ``error``, the
message the text mode prints on standard error. Only the documented keys are checked, so
commands may add keys.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sipcert.server.credentials import FileCredentials
from tests.integration.e2e.conftest import sipcert
from tests.integration.store.conftest import SIPCERT, StoreFiles, StoreProcess

AOR = "peggy@example.com"
PASSWORD = "peggy-secret"
VALIDITY = "20"

#: The documented keys of each command's result (README.md, "JSON output").
KEYS = {
    "selftest": {"steps"},
    "demo": {"step", "seconds"},
    "user": {"action", "credentials"},
    "locate": {"aor", "url", "from_srv", "targets", "steps"},
    "enroll": {"aor", "device", "url", "status", "home", "certificate"},
    "fetch": {"aor", "url", "certificates", "discarded"},
    "status": {"aor", "device", "url", "enrolled", "certificate", "in_store", "warnings"},
    "renew": {"aor", "renewed", "reason", "old", "new", "old_revoked"},
    "revoke": {"aor", "all", "revoked"},
    "error": {"error"},
}


@pytest.fixture(scope="module")
def peggy(store: StoreProcess, store_files: StoreFiles) -> StoreProcess:
    FileCredentials(store_files.users_file).add(AOR, PASSWORD)
    return store


def result(done: subprocess.CompletedProcess[str], keys: set[str]) -> dict[str, Any]:
    """The last JSON object on stdout, checked against the exit code and ``keys``."""
    lines = done.stdout.strip().splitlines()
    assert lines, (done.stdout, done.stderr)
    text = done.stdout if done.stdout.lstrip().startswith("{\n") else lines[-1]
    value: dict[str, Any] = json.loads(text)
    assert value["ok"] is (done.returncode == 0), value
    assert value["exit_code"] == done.returncode, value
    assert keys <= set(value), (keys - set(value), value)
    if not value["ok"] and done.returncode != 1:
        assert isinstance(value["error"], str) and value["error"]
    return value


def test_every_command_prints_json_on_success(peggy: StoreProcess, tmp_path: Path) -> None:
    home = tmp_path / "home"
    ua = ["--store", f"127.0.0.1:{peggy.port}", "--ca-file", str(peggy.files.ca_file)]
    ua += ["--home", str(home), "--json"]

    result(sipcert("selftest", "--json"), KEYS["selftest"])
    result(sipcert("demo", "--json"), KEYS["demo"])

    users = f"file:{tmp_path / 'users.json'}"
    for action in ("add", "passwd"):
        done = sipcert(
            "user", action, "trent@example.com", "--credentials", users, "--json", secret="pw"
        )
        assert result(done, KEYS["user"] | {"aor"})["action"] == action
    listed = result(sipcert("user", "list", "--credentials", users, "--json"), KEYS["user"])
    assert listed["users"] == ["trent@example.com"]
    removed = sipcert("user", "remove", "trent@example.com", "--credentials", users, "--json")
    assert result(removed, KEYS["user"] | {"aor"})["action"] == "remove"

    located = result(sipcert("locate", AOR, *ua), KEYS["locate"])
    assert located["aor"] == AOR
    enrolled = result(
        sipcert("enroll", AOR, *ua, "--validity", VALIDITY, secret=PASSWORD), KEYS["enroll"]
    )
    assert enrolled["status"] == 201
    fetched = result(sipcert("fetch", AOR, *ua), KEYS["fetch"])
    assert [c["sha256"] for c in fetched["certificates"]] == [enrolled["certificate"]["sha256"]]
    assert result(sipcert("status", AOR, *ua), KEYS["status"])["enrolled"] is True
    renewed = result(
        sipcert("renew", AOR, *ua, "--force", "--validity", VALIDITY, secret=PASSWORD),
        KEYS["renew"],
    )
    assert renewed["renewed"] is True
    revoked = result(sipcert("revoke", AOR, *ua, "--all", secret=PASSWORD), KEYS["revoke"])
    assert revoked["all"] is True

    # Negative answers (exit 1) are results too, with ok false.
    assert result(sipcert("fetch", AOR, *ua), KEYS["fetch"])["certificates"] == []
    assert result(sipcert("status", AOR, *ua), KEYS["status"])["ok"] is False


@pytest.mark.parametrize(
    ("argv", "code", "secret"),
    [
        (["locate", "not an aor"], 4, None),
        (["fetch", "not an aor"], 4, None),
        (["enroll", AOR], 6, "wrong-password"),
        (["status"], 2, None),  # an empty home: give the AOR
        (["renew"], 2, None),
        (["revoke", "nobody@example.com", "--all"], 6, "x"),  # unknown user: Digest fails
        (["revoke", AOR, "--cert", "zz"], None, PASSWORD),  # the code is i8-conf's (4)
        (["message", "send", AOR, "bob@example.net", "--text", "hi", "--proxy", "sip:x"], 1, "x"),
    ],
)
def test_every_ua_command_prints_one_json_object_on_failure(
    argv: list[str], code: int | None, secret: str | None, peggy: StoreProcess, tmp_path: Path
) -> None:
    ua = ["--store", f"127.0.0.1:{peggy.port}", "--ca-file", str(peggy.files.ca_file)]
    done = sipcert(*argv, *ua, "--home", str(tmp_path / "empty"), "--json", secret=secret)
    assert done.returncode != 0
    if code is not None:
        assert done.returncode == code, done.stdout
    failure = result(done, KEYS["error"])
    assert len(done.stdout.strip().splitlines()) == 1  # one object, on one line
    assert f"sipcert: error: {failure['error']}" not in done.stderr  # said once


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["user", "list", "--credentials", "file:/nonexistent/users.json"], 2),
        (["demo", "--keep", "."], 2),  # the test's folder is not empty
        (["selftest", "--bogus"], 2),
    ],
)
def test_other_commands_print_one_json_object_on_failure(
    argv: list[str], code: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "something").write_text("x")
    done = subprocess.run(
        [SIPCERT, *argv, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == code, done.stderr
    result(done, KEYS["error"])
