"""The CLI's error handling and the selftest command, run in-process."""

from __future__ import annotations

import argparse

import pytest

from sipcert.cli import main as cli
from sipcert.errors import AuthenticationError


def test_selftest_passes_and_narrates(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["selftest"]) == 0
    out = capsys.readouterr().out
    assert "Step 0" in out
    assert "Step 5" in out
    assert "signature verified as alice@example.com" in out
    assert out.rstrip().endswith("selftest passed")


def test_usage_error_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["no-such-command"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("sipcert ")


def _parser_running(action: object) -> argparse.ArgumentParser:
    def run(args: argparse.Namespace) -> int:
        raise action  # type: ignore[misc]

    parser = argparse.ArgumentParser()
    parser.add_argument("--debug", action="store_true")
    parser.set_defaults(run=run)
    return parser


def test_sipcert_error_is_one_line_and_its_exit_code(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        cli, "build_parser", lambda: _parser_running(AuthenticationError("wrong password"))
    )
    assert cli.main([]) == AuthenticationError.exit_code
    err = capsys.readouterr().err
    assert err == "sipcert: error: wrong password\n"


def test_unexpected_error_hides_the_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "build_parser", lambda: _parser_running(KeyError("secret")))
    assert cli.main([]) == cli.EXIT_INTERNAL
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "secret" not in err
    assert "KeyError" not in err  # issue 8: no library class name in a user message
    assert "--debug" in err


def test_debug_shows_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "build_parser", lambda: _parser_running(KeyError("boom")))
    with pytest.raises(KeyError):
        cli.main(["--debug"])


def test_broken_pipe_ends_quietly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "build_parser", lambda: _parser_running(BrokenPipeError()))
    assert cli.main([]) == 141
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("argv", "has_validity"),
    [
        (["enroll", "alice@example.com"], True),
        (["renew"], True),
        (["ua", "alice@example.com", "--proxy", "sip:127.0.0.1"], True),
        (["message", "send", "alice@example.com", "bob@example.net"], False),
    ],
)
def test_commands_with_a_key_take_its_passphrase_file(argv: list[str], has_validity: bool) -> None:
    extra = ["--text", "hi", "--proxy", "sip:127.0.0.1"] if argv[0] == "message" else []
    args = cli.build_parser().parse_args([*argv, *extra, "--key-passphrase-file", "pass.txt"])
    assert str(args.key_passphrase_file) == "pass.txt"
    assert hasattr(args, "validity") is has_validity


def test_revoke_takes_no_key_options(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["revoke", "alice@example.com", "--key-passphrase-file", "pass.txt"]
    assert cli.main(argv) == 2
    assert "--key-passphrase-file" in capsys.readouterr().err


def test_enroll_key_type_defaults_to_p256() -> None:
    """Issue 11: new devices get P-256 keys; RSA stays available for old peers."""
    from sipcert.cli.main import UsageError, build_parser
    from sipcert.proto.certs import KeyType

    parser = build_parser()
    assert KeyType(parser.parse_args(["enroll", "alice@example.com"]).key_type) is KeyType.P256
    for choice in ("p256", "p384", "rsa2048", "rsa3072"):
        args = parser.parse_args(["enroll", "alice@example.com", "--key-type", choice])
        assert KeyType(args.key_type).value == choice
    with pytest.raises(UsageError, match="invalid choice"):
        parser.parse_args(["enroll", "alice@example.com", "--key-type", "ed25519"])


@pytest.mark.parametrize(
    "argv",
    [
        ["ua", "alice@example.com"],
        ["message", "send", "a@example.com", "b@example.net", "--text", "x"],
    ],
)
def test_sip_commands_need_no_proxy(argv: list[str]) -> None:
    """Without --proxy the next hop is located with RFC 3263, asking --dns (issue 12)."""
    args = cli.build_parser().parse_args([*argv, "--dns", "127.0.0.1:5353"])
    assert args.proxy is None
    assert args.dns == "127.0.0.1:5353"
