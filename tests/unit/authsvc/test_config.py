"""``sipcert authsvc`` configuration: what it accepts and what it refuses, in one line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sipcert.authsvc import load_config
from sipcert.cli.main import main
from sipcert.errors import ConfigError
from sipcert.proto.aor import parse_aor
from sipcert.sip.transport import Transport

GOOD = """
name = "authsvc.example.com"
fill_url = "https://authsvc.example.com/smime"
keys = "keys"
listen = "tcp:127.0.0.1:5070"
proxy = "tcp:127.0.0.1:5071"
trusted_proxies = ["127.0.0.1", "::1"]
validity_days = 20

[client]
dns = "127.0.0.1:5353"
ca_file = "ca.pem"
cache_ttl = 5

[[subscriber]]
aor = "alice@example.com"
password = "alice-Secret-1"
"""


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "authsvc.toml"
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_a_good_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert config.keys == tmp_path / "keys"
    assert config.client.home == tmp_path / "keys"
    assert config.client.ca_file == tmp_path / "ca.pem"
    assert config.client.cache_ttl == 5.0
    assert config.listen.transport is Transport.TCP and config.listen.port == 5070
    assert config.delegates == {parse_aor("alice@example.com")}
    assert config.validity.days == 20
    subscriber = config.subscriber(parse_aor("alice@example.com"))
    assert subscriber.credentials.password == "alice-Secret-1"
    assert "alice-Secret-1" not in repr(config)  # no password in a log line or traceback
    with pytest.raises(ConfigError, match="does not delegate"):
        config.subscriber(parse_aor("bob@example.com"))


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (('keys = "keys"', 'keys = "keys"\nflavour = 1'), "unknown key"),
        (('listen = "tcp:127.0.0.1:5070"', 'listen = "tls:127.0.0.1:5070"'), "listen"),
        (('listen = "tcp:127.0.0.1:5070"', 'listen = "tcp:127.0.0.1:x"'), "listen"),
        (('proxy = "tcp:127.0.0.1:5071"', 'proxy = "udp:127.0.0.1:5071"'), "exceed UDP"),
        (("https://authsvc", "http://authsvc"), "fill_url"),
        (("validity_days = 20", "validity_days = 5"), "renew_days"),
        (("validity_days = 20", "validity_days = true"), "validity_days"),
        (('password = "alice-Secret-1"', ""), "password is required"),
        (('aor = "alice@example.com"', 'aor = "not an aor"'), "aor"),
        (("cache_ttl = 5", 'cache_ttl = "5"'), "cache_ttl"),
        (("[client]", "[client]\nproxy = 1"), "unknown key"),
        (('name = "authsvc.example.com"', ""), "name is required"),
    ],
)
def test_refusals(tmp_path: Path, change: tuple[str, str], words: str) -> None:
    old, new = change
    assert old in GOOD
    with pytest.raises(ConfigError, match=words):
        load_config(write(tmp_path, GOOD.replace(old, new, 1)))


def test_a_subscriber_twice(tmp_path: Path) -> None:
    twice = GOOD + '\n[[subscriber]]\naor = "alice@example.com"\npassword = "x"\n'
    with pytest.raises(ConfigError, match="twice"):
        load_config(write(tmp_path, twice))


def test_a_file_others_can_read_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="chmod 600"):
        load_config(write(tmp_path, GOOD, 0o644))


def test_the_cli_says_it_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "not toml [")
    assert main(["authsvc", "sync", str(path)]) == ConfigError.exit_code
    err = capsys.readouterr().err
    assert err.startswith("sipcert: error: configuration file") and err.count("\n") == 1
