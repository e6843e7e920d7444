"""The Store's log service: key files, record-then-answer, the /log/ resources, LoggedStore."""

from __future__ import annotations

import asyncio
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sipcert.errors import ConfigError, NotFoundError
from sipcert.proto import merkle
from sipcert.proto.note import open_note
from sipcert.proto.tlog import Checkpoint, Entry, Operation, TileNodes, decode_entry_bundle
from sipcert.server.tlog import (
    LoggedStore,
    TransparencyLog,
    load_or_create_log_keys,
    parse_transparency,
)
from sipcert.storage.base import StoredCertificate
from sipcert.storage.memory import MemoryStore
from sipcert.storage.tlog import SqliteLog

DOMAIN = "example.com"


def test_log_keys_are_made_once_0600(tmp_path: Path) -> None:
    keys = load_or_create_log_keys(tmp_path, DOMAIN)
    path = tmp_path / "tlog" / f"{DOMAIN}.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_or_create_log_keys(tmp_path, DOMAIN)
    assert again.signer.verifier == keys.signer.verifier
    assert again.commitment_key == keys.commitment_key
    assert keys.signer.name == DOMAIN
    assert "PRIVATE" not in repr(keys)
    path.write_text("garbage\n")
    with pytest.raises(ConfigError, match="damaged"):
        load_or_create_log_keys(tmp_path, DOMAIN)
    with pytest.raises(ConfigError):
        load_or_create_log_keys(tmp_path, "../evil")


def test_parse_transparency() -> None:
    assert parse_transparency(None) is None
    assert parse_transparency(True) is not None
    assert parse_transparency({"interval": 0.5}).interval == 0.5  # type: ignore[union-attr]
    for bad in ({"interval": 0}, {"nope": 1}, {"witnesses": [{"vkey": "x", "url": "y"}]}, 3):
        with pytest.raises(ConfigError):
            parse_transparency(bad)


def _log(tmp_path: Path) -> TransparencyLog:
    keys = {DOMAIN: load_or_create_log_keys(tmp_path, DOMAIN)}
    return TransparencyLog(SqliteLog(tmp_path / "db"), keys, interval=0.01, record_timeout=5)


def test_record_answers_only_once_sequenced_and_resources_serve_it(tmp_path: Path) -> None:
    async def main() -> None:
        tlog = _log(tmp_path)
        await tlog.start()
        response = await tlog.handle("/log/checkpoint", DOMAIN)
        assert Checkpoint.from_note(response.body).size == 0  # type: ignore[arg-type]
        sequencer = asyncio.create_task(tlog.run_forever())
        try:
            indexes = await asyncio.gather(
                *(
                    tlog.record(DOMAIN, Operation.ENROLL, f"u{i}@{DOMAIN}", f"{i:064x}")
                    for i in range(40)
                )
            )
        finally:
            sequencer.cancel()
        assert sorted(indexes) == list(range(40))
        note = (await tlog.handle("/log/checkpoint", DOMAIN)).body
        assert isinstance(note, bytes)
        vkey = (await tlog.handle("/log/vkey", DOMAIN)).body
        assert isinstance(vkey, bytes)
        from sipcert.proto.note import Verifier

        open_note(note, [Verifier.parse(vkey.decode())])
        cp = Checkpoint.from_note(note)
        assert cp.size == 40

        async def tile(level: int, index: int, width: int) -> bytes:
            suffix = "" if width == 256 else f".p/{width}"
            response = await tlog.handle(f"/log/tile/{level}/{index:03d}{suffix}", DOMAIN)
            assert response.headers["Cache-Control"].endswith("immutable")
            assert isinstance(response.body, bytes)
            return response.body

        tiles = {(0, 0, 40): await tile(0, 0, 40)}
        assert await tile(0, 0, 7) == tiles[(0, 0, 40)][: 7 * 32]  # an older partial
        reader = TileNodes(40, lambda level, index, width: tiles[(level, index, width)])
        assert merkle.root(reader, 40) == cp.root
        bundle = (await tlog.handle("/log/tile/entries/000.p/40", DOMAIN)).body
        assert isinstance(bundle, bytes)
        entries = [Entry.parse(e) for e in decode_entry_bundle(bundle, 40)]
        entry = entries[indexes[39]]
        assert entry.aor_commitment == tlog.commitment(DOMAIN, f"u39@{DOMAIN}")
        assert entry.cert_sha256 == bytes.fromhex(f"{39:064x}")
        for missing in ("/log/tile/0/000", "/log/tile/0/000.p/41", "/log/tile/1/000.p/1", "/log/x"):
            with pytest.raises(NotFoundError):
                await tlog.handle(missing, DOMAIN)
        with pytest.raises(NotFoundError):
            await tlog.handle("/log/checkpoint", "other.example")
        await tlog.store.close()

    asyncio.run(main())


def test_logged_store_logs_enrollments_and_revocations(tmp_path: Path) -> None:
    async def main() -> None:
        tlog = _log(tmp_path)
        await tlog.start()
        sequencer = asyncio.create_task(tlog.run_forever())
        store = LoggedStore(MemoryStore(), tlog)
        now = datetime.now(UTC)
        cert = StoredCertificate.from_der(
            f"bob@{DOMAIN}",
            b"not really DER",
            not_before=now,
            not_after=now + timedelta(days=1),
            created=now,
        )
        try:
            assert await store.add(cert, max_per_aor=3, now=now)
            assert [c.sha256 for c in await store.get_by_aor(cert.aor, now)] == [cert.sha256]
            assert await store.get_by_cert_hash(cert.cert_hash, now) == cert
            assert await store.delete(cert.aor, None) == 1
            assert await store.purge_expired(now) == 0
        finally:
            sequencer.cancel()
        bundle = (await tlog.handle("/log/tile/entries/000.p/2", DOMAIN)).body
        assert isinstance(bundle, bytes)
        enroll, revoke = (Entry.parse(e) for e in decode_entry_bundle(bundle, 2))
        assert (enroll.operation, revoke.operation) == (Operation.ENROLL, Operation.REVOKE)
        assert enroll.cert_sha256.hex() == cert.sha256 == revoke.cert_sha256.hex()
        assert enroll.aor_commitment == tlog.commitment(DOMAIN, cert.aor)
        await store.close()
        await tlog.store.close()

    asyncio.run(main())
