"""SIGHUP's reload in one process, and the start-up schema check (issue 10).

The signals themselves, with real pre-forked workers, are tested in
tests/integration/store/test_ops.py; here the pieces they call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import ssl
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sipcert.errors import ConfigError, StorageError
from sipcert.proto.ca import TestCA
from sipcert.proto.store import StorePolicy
from sipcert.server.app import StoreApp
from sipcert.server.config import StoreConfig
from sipcert.server.credentials import FileCredentials
from sipcert.server.lifecycle import Reloader, load_contexts
from sipcert.server.run import _check_sources
from sipcert.server.tls import build_sni_context, replace_domain_contexts
from sipcert.storage import MemoryStore
from tests.unit.storage.test_labels import _SQLITE_V1


def make_config(tmp_path: Path, **doc: object) -> StoreConfig:
    ca = TestCA.create(now=datetime.now(UTC))
    issued = ca.issue(["example.com"], now=datetime.now(UTC))
    (tmp_path / "c.pem").write_bytes(issued.cert_pem)
    (tmp_path / "c.key").write_bytes(issued.key_pem)
    FileCredentials(tmp_path / "users.json").add("alice@example.com", "pw")
    return StoreConfig.from_document(
        {
            "domain": [
                {
                    "name": "example.com",
                    "tls_cert": str(tmp_path / "c.pem"),
                    "tls_key": str(tmp_path / "c.key"),
                }
            ],
            "data_dir": str(tmp_path / "data"),
            "credentials": f"file:{tmp_path / 'users.json'}",
            "db": f"sqlite:///{tmp_path / 'certs.db'}",
            **doc,
        }
    )


def test_reload_swaps_contexts_and_credentials(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    listener = build_sni_context(load_contexts(config))
    first = FileCredentials(tmp_path / "users.json")
    app = StoreApp(
        domains=config.domain_names,
        storage=MemoryStore(),
        credentials=first,
        policy=StorePolicy(),
        nonce_secret=b"k" * 32,
    )
    reloader = Reloader(config, listener, app, None)
    before = dict(listener.domain_contexts)  # type: ignore[attr-defined]
    assert asyncio.run(reloader.reload())
    assert app.credentials is not first
    assert listener.domain_contexts["example.com"] is not before["example.com"]  # type: ignore[attr-defined]
    assert reloader.reloads == 1


def test_a_failed_reload_changes_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = make_config(tmp_path)
    listener = build_sni_context(load_contexts(config))
    credentials = FileCredentials(tmp_path / "users.json")
    app = StoreApp(
        domains=config.domain_names,
        storage=MemoryStore(),
        credentials=credentials,
        policy=StorePolicy(),
        nonce_secret=b"k" * 32,
    )
    (tmp_path / "c.key").write_text("not a key\n")
    with caplog.at_level(logging.ERROR):
        assert not asyncio.run(Reloader(config, listener, app, None).reload())
    assert app.credentials is credentials
    assert "reload refused, still serving as before" in caplog.text


def test_only_a_listening_context_can_be_replaced(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    with pytest.raises(ConfigError):
        replace_domain_contexts(ssl.create_default_context(), load_contexts(config))
    listener = build_sni_context(load_contexts(config))
    replace_domain_contexts(listener, {"other.example": load_contexts(config)["example.com"]})
    assert set(listener.domain_contexts) == {"example.com"}  # type: ignore[attr-defined]


def _old_database(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        for statement in _SQLITE_V1:
            conn.execute(statement)
    conn.close()


def test_start_up_migrates_by_default(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = make_config(tmp_path)
    _old_database(tmp_path / "certs.db")
    with caplog.at_level(logging.INFO):
        asyncio.run(_check_sources(config))
    assert "schema upgraded from 1 to 3" in caplog.text


def test_start_up_refuses_an_old_schema_with_db_upgrade_off(tmp_path: Path) -> None:
    config = make_config(tmp_path, db_upgrade=False)
    _old_database(tmp_path / "certs.db")
    with pytest.raises(StorageError, match="run `sipcert db upgrade`"):
        asyncio.run(_check_sources(config))


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"log_format": "xml"}, "log_format: 'xml' is not one of text, json"),
        ({"db_upgrade": "yes"}, "db_upgrade: expected true or false"),
        ({"admin_listen": "127.0.0.1:443", "listen": ["127.0.0.1:443"]}, "must not be one of"),
        ({"admin_listen": "nope"}, "expected HOST:PORT"),
    ],
)
def test_operator_settings_are_checked(
    tmp_path: Path, doc: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        make_config(tmp_path, **doc)


def test_operator_settings(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        admin_listen="127.0.0.1:9100",
        log_format="JSON",
        audit_log=str(tmp_path / "audit.jsonl"),
        frontend_name="fe-1",
    )
    assert str(config.ops.admin_listen) == "127.0.0.1:9100"
    assert (config.ops.log_format, config.ops.frontend_name) == ("json", "fe-1")
    assert config.ops.audit_log == tmp_path / "audit.jsonl" and config.ops.db_upgrade
