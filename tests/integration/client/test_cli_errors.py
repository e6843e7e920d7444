"""The real ``sipcert`` program meeting bad input and dead networks: one line, the README's
exit code, no traceback and no library class name (issue 8, "Conformance slips")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.client.peers import closed_port

SIPCERT = str(Path(sys.executable).with_name("sipcert"))


def sipcert(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SIPCERT, *args], capture_output=True, text=True, timeout=60, check=False, stdin=None
    )


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The error line; asserts it is the only output and names no Python internals."""
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    return done.stderr


@pytest.mark.parametrize("command", ["fetch", "enroll"])
def test_invalid_idna_host_is_exit_4(command: str, tmp_path: Path) -> None:
    """RFC 5891 §5.4: ``xn--zz`` is no A-label. httpx raised IDNAError on it (exit 70)."""
    password = tmp_path / "password"
    password.write_text("secret\n")
    extra = ["--password-file", str(password)] if command == "enroll" else []
    store = f"127.0.0.1:{closed_port()}"  # never reached: the AOR is refused first
    done = sipcert(
        command, "bob@xn--zz.example.com", "--home", str(tmp_path / "h"), "--store", store, *extra
    )
    assert done.returncode == 4, done.stderr
    assert "'xn--zz'" in one_line(done) and "IDNA2008" in done.stderr
    assert not (tmp_path / "h").exists() or not any((tmp_path / "h").rglob("*.pem"))
