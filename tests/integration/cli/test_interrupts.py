"""Ctrl-C and SIGTERM reach the real ``sipcert`` console script: exit 130, one line, never a
traceback (README.md, "Exit codes")."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.cli.lines import LineReader
from tests.integration.kamailio.conftest import sipcert_program

# Installed through PYTHONPATH as ``sitecustomize``: the first import of ``MODULE`` announces
# itself on stderr and then blocks, so the test interrupts the start-up exactly there.
_BLOCKER = """
import importlib.abc, os, sys, time

class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == os.environ["SIPCERT_TEST_BLOCK_IMPORT"]:
            sys.meta_path.remove(self)
            sys.stderr.write("import blocked\\n")
            sys.stderr.flush()
            time.sleep(120)  # SIGINT turns this into KeyboardInterrupt inside the import
        return None

sys.meta_path.insert(0, _Block())
"""


def _default_sigint() -> None:
    """Run in the child before exec: SIGINT as a terminal's Ctrl-C finds it. A shell starts
    background jobs with SIGINT ignored, a child inherits that, and Python then installs no
    KeyboardInterrupt handler, so a suite run from such a job would wait here for nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(
    "module",
    [
        "sipcert.cli.main",  # the command line itself, imported by the console script
        "cryptography",  # a heavy dependency, imported while the parser is built
    ],
)
def test_ctrl_c_during_start_up_is_exit_130_without_traceback(module: str, tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(_BLOCKER)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path]),
        "SIPCERT_TEST_BLOCK_IMPORT": module,
    }
    process = subprocess.Popen(
        [sipcert_program(), "selftest"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )
    assert process.stderr is not None and process.stdout is not None
    lines = LineReader(process.stderr)
    try:
        assert lines.next(60) == "import blocked\n"
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        err = lines.rest()
        with process.stdout:
            out = process.stdout.read()
    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert err == "sipcert: interrupted\n"
    assert out == ""
