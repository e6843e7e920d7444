"""``--help`` is plain text with defaults: argparse prints docstrings raw, so reST markup
(double backquotes, :mod: roles) must not reach it (issue 8)."""

from __future__ import annotations

import argparse

import pytest

from sipcert.cli import main as cli


def _commands(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> list[tuple[str, ...]]:
    found = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _commands(sub, (*prefix, name))
    return found


COMMANDS = _commands(cli.build_parser())


def test_every_command_is_listed() -> None:
    assert {("ua",), ("message", "send"), ("user", "list"), ("serve",), ("demo",)} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "sipcert")
def test_help_is_plain_text(command: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([*command, "--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: sipcert")
    for markup in ("``", ":mod:", ":class:", ":func:", ":meth:"):
        assert markup not in text


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        (["fetch"], "(default: 10.0)"),  # --timeout
        (["enroll"], "(default: default)"),  # --device
        (["ua", "x@example.com", "--proxy", "sip:x"], "(default: 300)"),  # --expires
        (["status"], "(default: 10"),  # --window
        (["serve"], "(default: 0.0.0.0:443"),  # --listen
    ],
)
def test_help_shows_defaults(
    command: list[str], shown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([command[0], "--help"]) == 0
    assert shown in capsys.readouterr().out
