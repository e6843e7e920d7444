"""A short, deterministic atheris run of every fuzz target (issue 9); ``make fuzz`` runs long.

Each target of :mod:`fuzz.targets` runs under libFuzzer in its own process (atheris's
``Fuzz()`` never returns) with ``-seed=1`` and a fixed number of runs over the committed
seed corpus, so the run is the same every time: a failure is a finding with the input that
caused it, never bad luck. New inputs go to a temporary folder, not to ``fuzz/corpus``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fuzz.targets import TARGETS

ROOT = Path(__file__).parents[3]
#: Runs per target: a few seconds each here (CMS decrypts with RSA, so fewer).
RUNS = {"cms": 500}
DEFAULT_RUNS = 3000


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_a_short_fuzz_run_finds_nothing(target: str, tmp_path: Path) -> None:
    corpus = ROOT / "fuzz" / "corpus" / target
    assert any(corpus.iterdir()), f"no seed inputs in {corpus}"
    command = [
        sys.executable,
        "-m",
        "fuzz.run",
        target,
        f"-runs={RUNS.get(target, DEFAULT_RUNS)}",
        "-seed=1",
        f"-artifact_prefix={tmp_path}/",
        str(tmp_path / "new"),
        str(corpus),
    ]
    (tmp_path / "new").mkdir()
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert f"#{RUNS.get(target, DEFAULT_RUNS)}\tDONE" in output, output[-2000:]
    assert not list(tmp_path.glob("crash-*"))
