"""Independent transparency-log peers: ``aics-witness``, ``aics-tlog`` and ``tlog-scales``
(command ``tlog-tiles``) in their own venv.

They need Python >= 3.12, so ``.ci/run`` installs them into ``.peers/tlog`` (git-ignored)
with pyenv's 3.12 or 3.13. Locally a test skips when they are absent; with ``CI=true`` it fails.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import IN_CI, free_port

PEERS = Path(__file__).resolve().parents[3] / ".peers" / "tlog" / "bin"


def peer(name: str) -> str:
    """Path of an independent peer's command, or skip (locally) / fail (CI)."""
    path = PEERS / name
    if not path.exists():
        message = f"real peer {name!r} is not installed in {PEERS} (see .ci/run)"
        if IN_CI:
            pytest.fail(message + " (CI=true: peers are required)")
        pytest.skip(message)
    return str(path)


@dataclass
class WitnessProcess:
    """A running ``aics-witness serve`` on loopback, with its cosigner vkey."""

    vkey: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path


@contextlib.contextmanager
def run_witness(root: Path, logs: dict[str, str]) -> Iterator[WitnessProcess]:
    """A witness that trusts ``logs`` (origin -> log vkey), stopped afterwards."""
    command = peer("aics-witness")
    root.mkdir(parents=True, exist_ok=True)
    config = root / "witness.json"
    made = subprocess.run(
        [command, "init", "--config", str(config), "--name", "witness.test/w1"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    vkey = made.stdout.split()[0]
    for origin, log_vkey in logs.items():
        subprocess.run(
            [command, "add-log", "--config", str(config), "--origin", origin, "--vkey", log_vkey],
            capture_output=True,
            check=True,
            timeout=60,
        )
    port = free_port()
    log = root / "witness.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [command, "serve", "--config", str(config), "--listen", f"127.0.0.1:{port}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"aics-witness exited:\n{log.read_text()}")
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"aics-witness did not come up:\n{log.read_text()}")
            time.sleep(0.05)
        yield WitnessProcess(vkey, url, process, log)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
