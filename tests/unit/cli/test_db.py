"""``sipcert db upgrade [--check]`` on SQLite and PostgreSQL (issue 10)."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from sipcert.cli import main as cli
from sipcert.storage import postgres as pg_backend
from tests.unit.storage.test_labels import _SQLITE_V1
from tests.unit.storage.test_postgres import pg_fetch
from tests.unit.storage.test_storage import pg_admin, postgres_schema, postgres_url, run


def _v1(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        for statement in _SQLITE_V1:
            conn.execute(statement)
    conn.close()


def _version(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    conn.close()
    return version


def test_sqlite_check_then_upgrade_then_nothing_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "certs.db"
    _v1(path)
    url = f"sqlite:///{path}"
    assert cli.main(["db", "upgrade", "--check", "--db", url]) == 1
    assert "needs an upgrade to 3" in capsys.readouterr().err
    assert _version(path) == 1  # --check changed nothing
    assert cli.main(["db", "upgrade", "--db", url]) == 0
    assert capsys.readouterr().out == "schema upgraded from version 1 to 3\n"
    assert _version(path) == 3
    assert cli.main(["db", "upgrade", "--db", url]) == 0  # idempotent
    assert "nothing to do" in capsys.readouterr().out
    assert cli.main(["db", "upgrade", "--check", "--db", url]) == 0


def test_the_database_comes_from_the_config_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "data").mkdir()
    _v1(tmp_path / "data" / "certificates.db")
    config = tmp_path / "store.toml"
    config.write_text('data_dir = "data"\n')
    assert cli.main(["db", "upgrade", "--config", str(config)]) == 0
    assert _version(tmp_path / "data" / "certificates.db") == 3
    other = tmp_path / "other.db"
    config.write_text(f'db = "sqlite:///{other.name}"\n')  # relative to the file's folder
    assert cli.main(["db", "upgrade", "--config", str(config)]) == 0
    assert "from version 0 to 3" in capsys.readouterr().out
    assert _version(other) == 3


def test_a_newer_schema_is_a_database_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "certs.db"
    _v1(path)
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("PRAGMA user_version = 7")
    conn.close()
    assert cli.main(["db", "upgrade", "--db", f"sqlite:///{path}"]) == 12
    assert "schema version 7" in capsys.readouterr().err


def test_postgres_check_upgrade_idempotent(capsys: pytest.CaptureFixture[str]) -> None:
    with postgres_schema() as schema:
        run(
            pg_admin(
                f'CREATE SCHEMA "{schema}"',
                f'SET search_path = "{schema}"',
                *pg_backend._MIGRATIONS[1],
                "UPDATE sipcert_schema_version SET version = 1",
            )
        )
        url = postgres_url(schema)
        assert cli.main(["db", "upgrade", "--check", "--db", url]) == 1
        assert cli.main(["db", "upgrade", "--db", url]) == 0
        assert f"from version 1 to {pg_backend.SCHEMA_VERSION}" in capsys.readouterr().out
        assert cli.main(["db", "upgrade", "--db", url]) == 0
        assert cli.main(["db", "upgrade", "--check", "--db", url]) == 0
        [[version]] = run(pg_fetch("SELECT version FROM sipcert_schema_version", schema=schema))
        assert version == pg_backend.SCHEMA_VERSION
