"""CLI conventions of the UA commands: password sources, usage errors, exit codes."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest

from sipcert.cli import main as cli
from sipcert.cli.ua import read_password
from sipcert.errors import ConfigError
from sipcert.proto.aor import parse_aor

BOB = parse_aor("bob@example.com")


class FakeStdin(io.StringIO):
    def __init__(self, text: str, tty: bool) -> None:
        super().__init__(text)
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_password_from_file_then_stdin_then_prompt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "pw"
    path.write_text("from file\n")
    assert read_password(argparse.Namespace(password_file=path), BOB) == "from file"
    monkeypatch.setattr("sys.stdin", FakeStdin("from stdin\nignored\n", tty=False))
    assert read_password(argparse.Namespace(password_file=None), BOB) == "from stdin"
    monkeypatch.setattr("sys.stdin", FakeStdin("", tty=True))
    prompts: list[str] = []

    def getpass(prompt: str) -> str:
        prompts.append(prompt)
        return "typed"

    monkeypatch.setattr("getpass.getpass", getpass)
    assert read_password(argparse.Namespace(password_file=None), BOB) == "typed"
    assert prompts == ["SIP password for bob@example.com: "]
    path.write_text("")
    with pytest.raises(ConfigError, match="empty password"):
        read_password(argparse.Namespace(password_file=path), BOB)


@pytest.mark.parametrize(
    "argv",
    [
        ["revoke", "bob@example.com", "--cert", "ab", "--all"],
        ["fetch"],
        ["enroll", "bob@example.com", "--password", "x"],  # never a flag
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    assert "usage" in capsys.readouterr().err


def test_bad_aor_and_dns_option_are_one_line_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert cli.main(["fetch", "not-an-aor", "--home", str(tmp_path)]) == 4
    err = capsys.readouterr().err
    assert err.startswith("sipcert: error:") and err.count("\n") == 1
    assert cli.main(["locate", "bob@example.com", "--dns", "dns.example.com"]) == 2
    assert "--dns needs an IP address" in capsys.readouterr().err


def test_status_without_aor_needs_exactly_one_in_home(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["status", "--home", str(tmp_path)]) == 2
    assert "give the AOR" in capsys.readouterr().err
