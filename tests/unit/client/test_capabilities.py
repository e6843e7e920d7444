"""CapabilityMemory: what callees announced (RFC 8551 §2.5.2), bounded, expiring, atomic."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from sipcert.client.cache import CapabilityMemory
from sipcert.errors import ConfigError
from sipcert.proto import cms
from sipcert.proto.aor import parse_aor

CAROL = parse_aor("carol@example.com")
DAVE = parse_aor("dave@example.net")
CBC_ONLY = ("aes256_cbc", "aes128_cbc")
GCM = ("aes128_gcm", "aes128_cbc", "rsaes_oaep")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_remembered_across_processes_per_device(tmp_path: Path) -> None:
    path = tmp_path / "home" / "capabilities.json"
    memory = CapabilityMemory(path)
    assert memory.announced(CAROL, "a" * 64) is None
    memory.remember(CAROL, "a" * 64, CBC_ONLY)
    memory.remember(CAROL, "b" * 64, GCM)
    again = CapabilityMemory(path)  # a new process reads the file
    assert again.announced(CAROL, "a" * 64) == CBC_ONLY
    assert again.announced(CAROL, "b" * 64) == GCM
    assert again.announced(DAVE, "a" * 64) is None
    assert path.stat().st_mode & 0o777 == 0o600


def test_entries_expire(tmp_path: Path) -> None:
    clock = Clock()
    memory = CapabilityMemory(tmp_path / "c.json", lifetime=100, clock=clock)
    memory.remember(CAROL, "a" * 64, CBC_ONLY)
    clock.now += 99
    assert memory.announced(CAROL, "a" * 64) == CBC_ONLY
    clock.now += 1
    assert memory.announced(CAROL, "a" * 64) is None
    memory.remember(DAVE, "d" * 64, GCM)  # a write prunes what expired
    assert "carol" not in (tmp_path / "c.json").read_text()


def test_bounded_to_the_most_recent_aors(tmp_path: Path) -> None:
    clock = Clock()
    memory = CapabilityMemory(tmp_path / "c.json", max_aors=2, clock=clock)
    for number in range(3):
        clock.now += 1
        memory.remember(parse_aor(f"u{number}@example.com"), "a" * 64, GCM)
    reread = CapabilityMemory(tmp_path / "c.json", max_aors=2, clock=clock)
    assert reread.announced(parse_aor("u0@example.com"), "a" * 64) is None
    assert reread.announced(parse_aor("u2@example.com"), "a" * 64) == GCM
    assert len(json.loads((tmp_path / "c.json").read_text())["peers"]) == 2


def test_an_unchanged_announcement_is_not_written_again(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "c.json"
    memory = CapabilityMemory(path, clock=clock)
    memory.remember(CAROL, "a" * 64, GCM)
    before = path.stat().st_ino
    clock.now += 10
    memory.remember(CAROL, "a" * 64, GCM)
    assert path.stat().st_ino == before  # no rename: nothing was written
    memory.remember(CAROL, "a" * 64, CBC_ONLY)
    assert path.stat().st_ino != before


@pytest.mark.parametrize(
    "content",
    [b"not json", b'{"peers": {"not an aor": {}}}', b'{"peers": {"carol@example.com": 5}}',
     b'{"peers": {"carol@example.com": {"x": {"capabilities": [1], "seen": 0}}}}'],
)  # fmt: skip
def test_a_damaged_file_is_an_empty_memory(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "c.json"
    path.write_bytes(content)
    memory = CapabilityMemory(path)
    assert memory.announced(CAROL, "x") is None
    memory.remember(CAROL, "a" * 64, GCM)
    assert CapabilityMemory(path).announced(CAROL, "a" * 64) == GCM


def test_a_failed_write_is_a_config_error_and_leaves_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "home" / "c.json"
    memory = CapabilityMemory(path)
    memory.remember(CAROL, "a" * 64, GCM)
    old = path.read_bytes()

    def full_disk(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(ConfigError, match=r"cannot write .*No space left"):
        memory.remember(CAROL, "a" * 64, CBC_ONLY)
    monkeypatch.undo()
    assert path.read_bytes() == old
    assert [p.name for p in path.parent.iterdir()] == ["c.json"]  # no temporary left


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        CapabilityMemory(tmp_path / "c.json", lifetime=-1)
    with pytest.raises(ConfigError):
        CapabilityMemory(tmp_path / "c.json", max_aors=0)


# --- one envelope for several devices (cms.choose_for_devices) -----------------------------


@pytest.mark.parametrize(
    ("announced", "expected"),
    [
        ([], cms.DEFAULT_ALGORITHMS),
        ([None, None], cms.DEFAULT_ALGORITHMS),
        ([GCM], cms.DEFAULT_ALGORITHMS),
        ([CBC_ONLY], cms.EnvelopeAlgorithms("aes256-cbc", "rsa-pkcs1v15")),
        ([CBC_ONLY, None], cms.EnvelopeAlgorithms("aes128-cbc", "rsa-pkcs1v15")),
        ([GCM, ("aes256_gcm", "rsaes_oaep")], cms.DEFAULT_ALGORITHMS),
        ([("aes256_gcm", "rsaes_oaep")] * 2, cms.EnvelopeAlgorithms("aes256-gcm", "rsa-oaep")),
        ([GCM, ("aes128_gcm",)], cms.EnvelopeAlgorithms("aes128-gcm", "rsa-pkcs1v15")),
    ],
)
def test_the_envelope_uses_what_every_device_opens(
    announced: list[tuple[str, ...] | None], expected: cms.EnvelopeAlgorithms
) -> None:
    assert cms.choose_for_devices(announced) == expected
    assert cms.choose_for_devices(announced, legacy=True) == cms.LEGACY_ALGORITHMS
