"""Issue 9, "the users file", against a real ``sipcert serve`` and the real ``sipcert user``.

``sipcert user add 'zo%C3%AB@example.com'`` used to write a key its own loader refused; from
then on every authenticated request of every user got 500 and the Store would not start.
Now what ``user add`` accepts loads back, and one bad entry (hand-made here) is refused
alone, with its line number in the log, while the other users keep working.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from sipcert.client.fetch import DigestAuth
from sipcert.proto.logsafe import log_safe
from tests.factories import make_cert, make_key
from tests.integration.store.conftest import SIPCERT, USERS, StoreProcess, make_store_files

PKIX = "application/pkix-cert"
#: AOR → (Digest username, password) of the users added with the real CLI.
ESCAPED = {
    "zo%C3%AB@example.com": ("zoë", "zoe-secret"),
    "a%20b@example.com": ("a b", "space-secret"),
}
#: Hand-made bad entries: what the old ``user add`` wrote for zo%C3%AB, and a broken HA1.
POISON = {
    "yvé@example.com": {"MD5": "0" * 32},
    "mallory@example.com": {"MD5": "not hex"},
}


def sipcert_user(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SIPCERT, "user", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def line_of(path: Path, key: str) -> int:
    """The line of ``key`` in the users file as ``json.dumps(indent=2)`` wrote it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return next(n for n, text in enumerate(lines, 1) if text.startswith(f"    {json.dumps(key)}"))


def poison(path: Path, entries: dict[str, object]) -> None:
    """Add ``entries`` by hand (as an editor would: not through ``sipcert user``)."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["users"].update(entries)
    tmp = path.with_name("hand-edit.tmp")
    tmp.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    os.replace(tmp, path)


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreProcess]:
    files = make_store_files(tmp_path_factory.mktemp("users-file"))
    url = files.credentials_url
    for aor, (_, password) in ESCAPED.items():
        added = sipcert_user("add", aor, "--credentials", url, stdin=f"{password}\n")
        assert added.returncode == 0, added.stderr
        assert added.stdout == f"added {aor} to {files.users_file}\n"
    poison(files.users_file, POISON)
    store = StoreProcess(files)
    store.start()
    try:
        yield store
    finally:
        store.stop()


def cert_der(aor: str, slot: int = 0) -> bytes:
    now = datetime.now(UTC)
    cert = make_cert(
        make_key("ec-p256", aor, slot),
        aor,
        not_before=now - timedelta(minutes=5),
        not_after=now + timedelta(days=5),
    )
    return cert.public_bytes(serialization.Encoding.DER)


def put(store: StoreProcess, aor: str, username: str, password: str) -> httpx.Response:
    domain = aor.rpartition("@")[2]
    with store.client(domain) as client:
        return client.put(
            store.url(domain, f"/search-cgi?email={quote(aor, safe='')}"),
            content=cert_der(aor),
            headers={"Content-Type": PKIX},
            auth=DigestAuth(username, password),
        )


def test_start_up_names_each_refused_entry_and_its_line(poisoned: StoreProcess) -> None:
    path = poisoned.files.users_file
    log = poisoned.output()
    for key in POISON:
        expected = f"credentials file {path} line {line_of(path, key)}: user {key!a} refused: "
        assert log_safe(expected) in log, log  # every log line is escaped (issue 9)
    assert "rename the key to yv%C3%A9@example.com" in log
    assert "Traceback" not in log


def test_the_other_users_still_authenticate(poisoned: StoreProcess) -> None:
    for aor in ("alice@example.com", "carol@example.net"):
        answer = put(poisoned, aor, aor.partition("@")[0], USERS[aor])
        assert answer.status_code == 201, answer.text


def test_users_added_with_escapes_authenticate_with_the_unescaped_name(
    poisoned: StoreProcess,
) -> None:
    for aor, (username, password) in ESCAPED.items():
        answer = put(poisoned, aor, username, password)
        assert answer.status_code == 201, (aor, answer.text)
    # The escaped spelling is not the Digest username: no account has it.
    assert put(poisoned, "zo%C3%AB@example.com", "zo%C3%AB", "zoe-secret").status_code == 401


@pytest.mark.peer("curl")
def test_curl_authenticates_with_the_unescaped_user_part(
    poisoned: StoreProcess, tmp_path: Path
) -> None:
    for n, (aor, (username, password)) in enumerate(ESCAPED.items()):
        upload = tmp_path / f"{n}.der"
        upload.write_bytes(cert_der(aor, slot=1))
        answer = subprocess.run(
            [
                *poisoned.curl_args("example.com"),
                *("--digest", "-u", f"{username}:{password}", "-T", str(upload)),
                *("-H", f"Content-Type: {PKIX}", "-o", "/dev/null", "-w", "%{http_code}"),
                poisoned.url("example.com", f"/search-cgi?email={quote(aor, safe='')}"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert answer.stdout == "201", (aor, answer.stdout, answer.stderr)


def test_refused_entries_do_not_authenticate_nor_answer_500(poisoned: StoreProcess) -> None:
    assert put(poisoned, "mallory@example.com", "mallory", "x").status_code == 401
    assert put(poisoned, "yv%C3%A9@example.com", "yvé", "x").status_code == 401


def test_a_file_poisoned_while_serving_keeps_the_others_working(
    poisoned: StoreProcess,
) -> None:
    path = poisoned.files.users_file
    poison(path, {"eve@Example.com": {"MD5": "0" * 32}})
    answer = put(poisoned, "bob@example.com", "bob", USERS["bob@example.com"])
    assert answer.status_code == 201, answer.text
    line = line_of(path, "eve@Example.com")
    assert f"line {line}: user 'eve@Example.com' refused: not the canonical" in poisoned.output()
    listed = sipcert_user("list", "--credentials", poisoned.files.credentials_url)
    assert listed.returncode == 0, listed.stderr
    assert "alice@example.com\n" in listed.stdout and "zo%C3%AB@example.com\n" in listed.stdout
    assert listed.stderr.count("sipcert: warning: ") == 3
    # A refused entry is removed by its exact key, and the rest of the file stays.
    for key in ("eve@Example.com", "mallory@example.com"):
        removed = sipcert_user("remove", key, "--credentials", f"file:{path}")
        assert (removed.returncode, removed.stdout) == (0, f"removed {key}\n"), removed.stderr
    assert list(json.loads(path.read_text(encoding="utf-8"))["users"])[-1] == "yvé@example.com"
    answer = put(poisoned, "dave@example.com", "dave", USERS["dave@example.com"])
    assert answer.status_code == 201, answer.text
    assert "Traceback" not in poisoned.output()
    assert " 500 " not in poisoned.output()
