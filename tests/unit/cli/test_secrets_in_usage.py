"""A secret typed on the command line is refused without being echoed (issue 8).

argparse's own errors quote what was typed ("unrecognized arguments: --password S3cret",
"invalid choice: 'S3cret'"): that lands in terminal scroll-back and CI logs. Every usage
error names options only; values are counted, never shown.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from sipcert.cli import main as cli
from tests.integration.kamailio.conftest import sipcert_program

SECRET = "S3cret-xyzzy"


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["enroll", "alice@example.com", "--password", SECRET], "--password"),
        (["enroll", "alice@example.com", f"--password={SECRET}"], "--password"),
        (["enroll", "-p", SECRET, "alice@example.com"], "-p"),
        (["enroll", f"-p{SECRET}", "alice@example.com"], "-p"),
        (["--password", SECRET, "enroll", "alice@example.com"], "--password"),
        (["revoke", "alice@example.com", "--all", "--passwd", SECRET], "--passwd"),
        (["fetch", "alice@example.com", "--token", SECRET], "--token"),
        ([f"--token={SECRET}", "selftest"], "--token"),
        (["--token", SECRET, "selftest"], "invalid choice"),
        (["locate", "alice@example.com", SECRET], "1 value(s) not shown"),
        (["fetch", "alice@example.com", "--timeout", SECRET], "invalid float value"),
        (["user", "list", f"--json={SECRET}"], "ignored explicit argument"),
        ([SECRET], "invalid choice"),
    ],
)
def test_usage_errors_never_echo_values(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert SECRET not in out + err
    assert named in err
    assert "usage: sipcert" in err


def test_the_password_flag_says_where_passwords_come_from(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["enroll", "alice@example.com", f"--password={SECRET}"]) == 2
    err = capsys.readouterr().err
    assert "--password-file" in err
    assert SECRET not in err


def test_json_usage_error_is_one_object_without_the_value(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["fetch", "alice@example.com", "--json", "--password", SECRET]) == 2
    out, err = capsys.readouterr()
    assert SECRET not in out + err
    result = json.loads(out)
    assert result["ok"] is False
    assert result["exit_code"] == 2
    assert "--password" in result["error"]


def test_real_console_script_does_not_echo_the_password() -> None:
    done = subprocess.run(
        [sipcert_program(), "enroll", "alice@example.com", "--password", SECRET],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert SECRET not in done.stdout + done.stderr
    assert "--password" in done.stderr
