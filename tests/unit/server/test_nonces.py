"""The shared nonce counter and the nonce secret file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sipcert.errors import ConfigError, StorageError
from sipcert.server.nonces import SECRET_FILE, SqliteNonceCounter, load_or_create_secret


def test_counts_must_increase_per_nonce(tmp_path: Path) -> None:
    counter = SqliteNonceCounter(tmp_path / "n.db")
    try:
        assert counter.advance("a", 1, 100.0)
        assert not counter.advance("a", 1, 100.0)  # replay
        assert counter.advance("a", 3, 101.0)
        assert not counter.advance("a", 2, 101.0)
        assert counter.advance("b", 1, 101.0)
        assert not counter.advance("c", 0, 101.0)
    finally:
        counter.close()


def test_two_processes_share_the_counts(tmp_path: Path) -> None:
    first = SqliteNonceCounter(tmp_path / "n.db")
    second = SqliteNonceCounter(tmp_path / "n.db")
    try:
        assert first.advance("a", 1, 100.0)
        assert not second.advance("a", 1, 100.0)
        assert second.advance("a", 2, 100.0)
        assert not first.advance("a", 2, 100.0)
    finally:
        first.close()
        second.close()


def test_old_nonces_are_pruned(tmp_path: Path) -> None:
    counter = SqliteNonceCounter(tmp_path / "n.db", retention=10)
    try:
        counter.advance("old", 1, 0.0)
        counter.advance("new", 1, 100.0)
        assert len(counter) == 1
        assert stat.S_IMODE(os.stat(tmp_path / "n.db").st_mode) == 0o600
    finally:
        counter.close()
    with pytest.raises(StorageError, match="closed"):
        counter.advance("x", 1, 0.0)


def test_secret_is_made_once_and_private(tmp_path: Path) -> None:
    secret = load_or_create_secret(tmp_path / "data")
    assert len(secret) == 32
    assert load_or_create_secret(tmp_path / "data") == secret
    path = tmp_path / "data" / SECRET_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    path.write_bytes(b"short")
    with pytest.raises(ConfigError, match="shorter than 16 bytes"):
        load_or_create_secret(tmp_path / "data")
