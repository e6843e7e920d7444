"""README.md's "Run a Store and enroll a certificate" session, run as written (issue 8).

The shell block is taken from README.md itself and run with bash in a scratch clone, with
an empty temporary HOME and TMPDIR. Only two things are changed, both to run beside other
tests: the installed ``sipcert`` is put on PATH instead of ``. .venv/bin/activate`` (a fresh
clone has no .venv), and port 8443 becomes a free port. Afterwards the clone has nothing
untracked and HOME is still empty (no ``~/.local/share/sipcert``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port, require_program

ROOT = Path(__file__).resolve().parents[3]


def readme_session() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Run a Store and enroll a certificate", 1)[1]
    match = re.search(r"^```\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)
    assert match is not None, "no shell block in the README section"
    return match.group(1)


@pytest.mark.peer("openssl", "curl", "git")
def test_readme_session_runs_in_a_scratch_folder(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    git = require_program("git")
    subprocess.run([git, "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
    home, scratch = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    scratch.mkdir()
    port = str(free_port())
    session = readme_session()
    assert session.startswith(". .venv/bin/activate\n")
    assert "sipcert serve --dev &" in session and "sleep 2" not in session
    script = (
        session.replace(". .venv/bin/activate\n", "", 1)
        .replace("sipcert serve --dev &", f"sipcert serve --dev --listen 127.0.0.1:{port} &")
        .replace("8443", port)
    )
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("XDG_", "SIPCERT")) and key != "VIRTUAL_ENV"
    }
    env.update(
        HOME=str(home),
        TMPDIR=str(scratch),
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
    )
    done = subprocess.run(
        ["bash", "-e", "-c", script],
        cwd=clone,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "201" in lines, done.stdout  # the curl PUT
    assert any(line.startswith("enrolled alice@example.com (device default): ") for line in lines)
    assert "alice@example.com: 2 certificate(s) from https://" in done.stdout
    assert "Traceback" not in done.stderr
    status = subprocess.run(
        [git, "status", "--porcelain", "--ignored"],
        cwd=clone,
        capture_output=True,
        text=True,
        check=True,
    )
    assert status.stdout == ""  # nothing written into the clone, not even ignored files
    assert list(home.iterdir()) == []  # nor into the home (~/.local/share/sipcert)
    (folder,) = scratch.iterdir()  # the mktemp folder holds everything
    assert (folder / "home").is_dir() and (folder / ".sipcert-dev" / "ca.pem").is_file()
