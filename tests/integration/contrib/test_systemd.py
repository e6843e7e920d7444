"""contrib/systemd/sipcert.service passes ``systemd-analyze verify`` with no warning (issue 10).

``verify`` works offline on a unit file but checks that each command exists, so the test
points the unit at this virtual environment's ``sipcert``. It prints unknown or misspelt
directives as warnings with exit status 0, so any output fails the test too.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_program

UNIT = Path(__file__).parents[3] / "contrib" / "systemd" / "sipcert.service"
SIPCERT = Path(sys.executable).with_name("sipcert")


def directives() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


@pytest.mark.peer("systemd-analyze")
def test_the_unit_verifies_without_a_warning(tmp_path: Path) -> None:
    analyze = require_program("systemd-analyze")
    unit = tmp_path / "sipcert.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/sipcert", str(SIPCERT)))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.peer("systemd-analyze")
def test_verify_catches_a_misspelt_directive(tmp_path: Path) -> None:
    """The check above would see a typo: ``verify`` reports it (a negative control)."""
    analyze = require_program("systemd-analyze")
    unit = tmp_path / "sipcert.service"
    text = UNIT.read_text().replace("/usr/local/bin/sipcert", str(SIPCERT))
    unit.write_text(text.replace("NoNewPrivileges=", "NoNewPrivilege="))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert "Unknown key 'NoNewPrivilege'" in result.stderr


def test_the_unit_runs_unprivileged_and_reloads_with_sighup() -> None:
    found = directives()
    assert found["User"] == ["sipcert"]
    assert found["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert found["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert int(found["LimitNOFILE"][0]) >= 65536
    assert found["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert found["KillSignal"] == ["SIGTERM"]
    assert found["ExecStart"] == ["/usr/local/bin/sipcert serve --config /etc/sipcert/store.toml"]
    for sandbox in ("NoNewPrivileges", "ProtectSystem", "PrivateTmp", "ProtectHome"):
        assert sandbox in found
