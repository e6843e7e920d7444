"""``sipcert serve`` argument handling and ``--dev`` preparation; ``sipcert user``."""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import pytest

from sipcert.cli import main as cli
from sipcert.cli.serve import build_config
from sipcert.server.credentials import FileCredentials


def run(argv: list[str]) -> int:
    return cli.main(argv)


def test_user_add_list_passwd_remove(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"file:{tmp_path / 'users.json'}"
    monkeypatch.setattr("sys.stdin", io.StringIO("first-pw\n"))
    assert run(["user", "add", "alice@Example.com", "--credentials", url]) == 0
    doc = json.loads((tmp_path / "users.json").read_text())
    assert set(doc["users"]["alice@example.com"]) == {"MD5", "SHA-256"}
    assert "first-pw" not in (tmp_path / "users.json").read_text()
    assert stat.S_IMODE(os.stat(tmp_path / "users.json").st_mode) == 0o600
    monkeypatch.setattr("sys.stdin", io.StringIO("second-pw\n"))
    before = doc["users"]["alice@example.com"]
    assert run(["user", "passwd", "alice@example.com", "--credentials", url]) == 0
    after = json.loads((tmp_path / "users.json").read_text())["users"]["alice@example.com"]
    assert after != before
    capsys.readouterr()
    assert run(["user", "list", "--credentials", url]) == 0
    assert capsys.readouterr().out == "alice@example.com\n"
    assert run(["user", "remove", "alice@example.com", "--credentials", url]) == 0
    assert FileCredentials(tmp_path / "users.json").list() == []
    assert run(["user", "remove", "alice@example.com", "--credentials", url]) == 1
    assert "no user alice@example.com" in capsys.readouterr().err


def test_user_refuses_empty_mismatched_and_kamailio(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"file:{tmp_path / 'users.json'}"
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert run(["user", "add", "alice@example.com", "--credentials", url]) == 2
    assert "empty password" in capsys.readouterr().err

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    answers = iter(["one", "two"])
    monkeypatch.setattr("sys.stdin", Terminal())
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    assert run(["user", "add", "alice@example.com", "--credentials", url]) == 2
    assert "differ" in capsys.readouterr().err
    assert not (tmp_path / "users.json").exists()

    kamailio = f"kamailio+sqlite:///{tmp_path / 'k.db'}"
    assert run(["user", "list", "--credentials", kamailio]) == 2
    assert "Kamailio" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--domain", "example.com"], "needs its --tls-cert and --tls-key"),
        (["--domain", "a.example", "--tls-cert", "c"], "as many --tls-key as --tls-cert"),
        (
            ["--domain", "a.example", "--domain", "b.example", "--tls-cert", "c", "--tls-key", "k"],
            "pair them in order",
        ),
        (["--config", "/nonexistent/store.toml"], "cannot read the configuration file"),
        ([], "no domain to serve"),
        (
            ["--domain", "example.com", "--tls-cert", "/nonexistent.pem", "--tls-key", "/x.key"],
            "cannot read the TLS certificate file /nonexistent.pem",
        ),
        (["--dev", "--listen", "nonsense"], "expected HOST:PORT"),
    ],
)
def test_serve_usage_errors_are_one_line(
    argv: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def _dev_args(*extra: str) -> object:
    return cli.build_parser().parse_args(["serve", "--dev", *extra])


def test_dev_prepares_a_folder_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config, notes = build_config(_dev_args())  # type: ignore[arg-type]
    folder = tmp_path / ".sipcert-dev"
    assert config.domain_names == ("example.com", "example.net")
    assert config.data_dir == folder
    assert str(config.listen[0]) == "127.0.0.1:8443"
    assert config.db == f"sqlite:///{folder / 'certificates.db'}"
    assert any(str(folder / "ca.pem") in line for line in notes)
    assert any("curl" in line and "--digest" in line for line in notes)
    assert stat.S_IMODE(os.stat(folder / "ca.key").st_mode) == 0o600
    assert (folder / ".gitignore").read_text().strip().endswith("*")
    assert FileCredentials(folder / "users.json").list() == []
    ca = (folder / "ca.pem").read_bytes()
    tls = (folder / "tls" / "example.com.pem").read_bytes()
    (folder / "tls" / "example.net.pem").unlink()

    build_config(_dev_args())  # type: ignore[arg-type]
    assert (folder / "ca.pem").read_bytes() == ca  # the CA is kept
    assert (folder / "tls" / "example.com.pem").read_bytes() == tls  # still good: kept
    assert (folder / "tls" / "example.net.pem").exists()  # missing: re-issued
    other, _ = build_config(_dev_args("--domain", "example.org"))  # type: ignore[arg-type]
    assert other.domain_names == ("example.org",)
    assert (folder / "tls" / "example.org.pem").exists()


def test_help_lists_the_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in (
        "--config",
        "--listen",
        "--domain",
        "--tls-cert",
        "--tls-key",
        "--db",
        "--credentials",
        "--dev",
        "--data-dir",
        "--workers",
        "--max-age",
        "--max-per-aor",
        "--max-lifetime-days",
    ):
        assert flag in out


def test_user_list_of_a_missing_file_is_an_error_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "typo.json"
    assert run(["user", "list", "--credentials", f"file:{missing}"]) == 2
    assert capsys.readouterr().err == (
        f"sipcert: error: credentials file {missing} does not exist "
        "(add users with `sipcert user add`)\n"
    )


@pytest.mark.parametrize(
    "credentials",
    ["kamailio+sqlite:///kamailio.db", "kamailio+postgresql://kam:S3cret@db.example/kamailio"],
)
def test_dev_banner_with_kamailio_credentials_says_how_to_add_a_user(
    credentials: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _, notes = build_config(_dev_args("--credentials", credentials))  # type: ignore[arg-type]
    text = "\n".join(notes)
    assert "sipcert user add" not in text  # it would refuse a Kamailio table
    assert "kamctl add alice@example.com" in text
    assert "S3cret" not in text  # a database password is never shown


def test_dev_banner_first_command_and_store_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The banner's first command works as printed; it shows --store as well as --dns."""
    monkeypatch.chdir(tmp_path)
    _, notes = build_config(_dev_args())  # type: ignore[arg-type]
    first = next(line.split() for line in notes if line.startswith("       sipcert "))
    assert first[:3] == ["sipcert", "user", "add"]
    monkeypatch.setattr("sys.stdin", io.StringIO("pw\n"))
    assert run(first[1:]) == 0
    assert "added alice@example.com" in capsys.readouterr().out
    text = "\n".join(notes)
    assert "--store 127.0.0.1:8443" in text
    assert "--dns" in text


# -- issue 9: what `user add` accepts loads back; a bad entry does not take the file down ----


def test_user_add_of_escaped_names_lists_and_removes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"file:{tmp_path / 'users.json'}"
    for aor in ["zo%C3%AB@example.com", "a%20b@example.com", "alice@example.com"]:
        monkeypatch.setattr("sys.stdin", io.StringIO("pw\n"))
        assert run(["user", "add", aor, "--credentials", url]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        f"added zo%C3%AB@example.com to {tmp_path / 'users.json'}"
    )
    assert run(["user", "list", "--credentials", url]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        "a%20b@example.com",
        "alice@example.com",
        "zo%C3%AB@example.com",
    ]
    assert captured.err == ""
    assert run(["user", "remove", "zo%c3%ab@example.com", "--credentials", url]) == 0
    assert capsys.readouterr().out == "removed zo%C3%AB@example.com\n"
    assert run(["user", "remove", "a%20b@example.com", "--credentials", url]) == 0
    assert FileCredentials(tmp_path / "users.json").list() == ["alice@example.com"]


@pytest.mark.parametrize(
    ("aor", "fragment"),
    [
        ("%FF@example.com", "does not unescape to UTF-8"),
        ("a%0Ab@example.com", "U+000A"),
        ("a%3Bb@example.com", "names a;b@example.com"),
    ],
)
def test_user_add_refuses_a_name_no_digest_username_names(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    aor: str,
    fragment: str,
) -> None:
    url = f"file:{tmp_path / 'users.json'}"
    monkeypatch.setattr("sys.stdin", io.StringIO("pw\n"))
    assert run(["user", "add", aor, "--credentials", url]) == 4
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1
    assert not (tmp_path / "users.json").exists()


def test_user_commands_work_on_a_file_with_a_bad_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "users.json"
    url = f"file:{path}"
    monkeypatch.setattr("sys.stdin", io.StringIO("pw\n"))
    assert run(["user", "add", "alice@example.com", "--credentials", url]) == 0
    doc = json.loads(path.read_text())
    # What the old `user add 'zo%C3%AB@example.com'` wrote: the user part unescaped.
    doc["users"]["zoë@example.com"] = doc["users"]["alice@example.com"]
    path.write_text(json.dumps(doc, indent=2))
    capsys.readouterr()
    assert run(["user", "list", "--credentials", url]) == 0
    captured = capsys.readouterr()
    assert captured.out == "alice@example.com\n"
    assert captured.err == (
        f"sipcert: warning: credentials file {path} line 8: user 'zo\\xeb@example.com' "
        "refused: not an AOR that a Digest username can name: invalid character '\\xeb' in "
        "user part (RFC 3261 user grammar); if it means the Digest username 'zo\\xeb', "
        "rename the key to zo%C3%AB@example.com\n"
    )
    monkeypatch.setattr("sys.stdin", io.StringIO("pw\n"))
    assert run(["user", "add", "bob@example.com", "--credentials", url]) == 0
    assert run(["user", "remove", "alice@example.com", "--credentials", url]) == 0
    assert FileCredentials(path).list() == ["bob@example.com"]
    capsys.readouterr()
    assert run(["user", "remove", "zoë@example.com", "--credentials", url]) == 0
    captured = capsys.readouterr()
    assert captured.out == "removed 'zo\\xeb@example.com'\n"
    assert captured.err == ""
    assert json.loads(path.read_text())["users"].keys() == {"bob@example.com"}
