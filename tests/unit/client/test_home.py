"""The per-user home of keys and certificates (draft §5, §5.1)."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sipcert.client.home import Home, default_home
from sipcert.errors import ConfigError, CryptoError, NotFoundError
from sipcert.proto.aor import parse_aor
from sipcert.proto.certs import generate_identity, sha256_fingerprint

NOW = datetime.now(UTC)
BOB = parse_aor("bob@example.com")
ODD = parse_aor("sip:a/b@example.org")  # '/' is legal in a user part; must not be a path


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_default_home_follows_xdg() -> None:
    assert default_home({"XDG_DATA_HOME": "/data"}) == Path("/data/sipcert")
    assert default_home({"XDG_DATA_HOME": "relative"}) == Path.home() / ".local/share/sipcert"
    assert default_home({}) == Path.home() / ".local/share/sipcert"


def test_save_and_load_with_modes(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    identity = generate_identity(BOB, now=NOW)
    directory = home.save(BOB, identity, device="phone", passphrase=b"pass")
    assert mode(directory / "key.pem") == 0o600
    assert mode(directory) == 0o700 and mode(home.root) == 0o700
    assert b"ENCRYPTED" in (directory / "key.pem").read_bytes()
    loaded = home.identity(BOB, "phone", passphrase=b"pass")
    assert loaded.certificate == identity.certificate
    assert loaded.key.private_numbers() == identity.key.private_numbers()
    with pytest.raises(CryptoError):
        home.identity(BOB, "phone", passphrase=b"wrong")
    with pytest.raises(ConfigError):
        home.identity(BOB, "phone")


def test_several_aors_and_devices(tmp_path: Path) -> None:
    home = Home(tmp_path)
    phone = generate_identity(BOB, now=NOW)
    laptop = generate_identity(BOB, now=NOW)
    other = generate_identity(ODD, now=NOW)
    home.save(BOB, phone, device="phone")
    home.save(BOB, laptop, device="laptop")
    home.save(ODD, other)
    assert home.devices(BOB) == ["laptop", "phone"]
    assert set(home.aors()) == {BOB, ODD}
    assert home.certificate(ODD) == other.certificate
    assert home.known_fingerprints(BOB) == {
        sha256_fingerprint(phone.certificate),
        sha256_fingerprint(laptop.certificate),
    }
    assert mode(home.device_directory(BOB, "phone") / "key.pem") == 0o600
    with pytest.raises(NotFoundError):
        home.certificate(BOB, "tablet")


def test_replaced_identity_is_retired_until_forgotten(tmp_path: Path) -> None:
    home = Home(tmp_path)
    old = generate_identity(BOB, now=NOW)
    new = generate_identity(BOB, now=NOW)
    home.save(BOB, old)
    home.save(BOB, new)
    assert home.certificate(BOB) == new.certificate
    assert home.retired(BOB) == [old.certificate]
    fingerprint = sha256_fingerprint(old.certificate)
    assert mode(home.device_directory(BOB) / "retired" / f"{fingerprint}.key") == 0o600
    assert fingerprint in home.known_fingerprints(BOB)
    home.forget_retired(BOB, fingerprint)
    assert home.retired(BOB) == []


@pytest.mark.parametrize("device", ["", "../x", ".hidden", "a/b", "x" * 65])
def test_device_names_are_checked(tmp_path: Path, device: str) -> None:
    with pytest.raises(ConfigError):
        Home(tmp_path).device_directory(BOB, device)
