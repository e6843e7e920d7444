"""A read-only home that already holds an identity (issue 8, seen by a user): ``sipcert
enroll``, ``renew`` and ``fetch`` with a cache must stop with one line naming the path and
exit 2 before any network request -- never PUT a certificate whose key cannot be saved.

Tests run as root, and chmod does not stop root, so the home is made truly read-only: the
CLI runs in its own user and mount namespace (``unshare``) where the home is bind-mounted
read-only. Nothing outside that short-lived namespace changes. The Store address is a
listening socket that counts connections: "before any network request" is measured.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sipcert.client.home import Home
from sipcert.proto.aor import parse_aor
from sipcert.proto.certs import generate_identity
from tests.conftest import require_program
from tests.integration.store.conftest import SIPCERT

BOB = parse_aor("bob@example.com")

#: Bind-mount the home onto itself read-only, then run the command ("$@").
_READ_ONLY = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'


def _run_read_only(home: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    unshare = require_program("unshare")
    namespace = [unshare, "--user", "--map-root-user", "--mount"]
    return subprocess.run(
        [*namespace, "sh", "-c", _READ_ONLY, "sh", str(home), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    yield sock
    sock.close()


def _connections(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


@pytest.fixture
def home_with_identity(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    Home(home).save(BOB, generate_identity(BOB, now=datetime.now(UTC)))
    return home


@pytest.mark.peer("unshare")
def test_the_namespace_really_makes_the_home_read_only(home_with_identity: Path) -> None:
    # The premise of the tests below, checked with the same mechanism.
    result = _run_read_only(home_with_identity, "touch", str(home_with_identity / "x"))
    assert result.returncode != 0 and "Read-only file system" in result.stderr
    assert not (home_with_identity / "x").exists()


@pytest.mark.peer("unshare")
@pytest.mark.parametrize(
    "command",
    [
        ["enroll", "bob@example.com"],
        ["renew", "bob@example.com", "--force"],
        ["fetch", "bob@example.com", "--cache-ttl", "60"],
    ],
)
def test_read_only_home_is_config_error_before_any_request(
    home_with_identity: Path, listener: socket.socket, tmp_path: Path, command: list[str]
) -> None:
    password = tmp_path / "password"
    password.write_text("bob-secret\n")
    port = listener.getsockname()[1]
    argv = [SIPCERT, *command, "--home", str(home_with_identity), "--timeout", "3"]
    argv += ["--store", f"127.0.0.1:{port}"]
    if command[0] != "fetch":
        argv += ["--password-file", str(password)]
    before = sorted(p.relative_to(home_with_identity) for p in home_with_identity.rglob("*"))
    result = _run_read_only(home_with_identity, *argv)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "not writable" in lines[0] and str(home_with_identity) in lines[0]
    assert "Read-only file system" in lines[0]
    assert _connections(listener) == 0  # not even a TCP connection to the Store
    after = sorted(p.relative_to(home_with_identity) for p in home_with_identity.rglob("*"))
    assert after == before
