"""The UA side of the log against the Store's real log code (server.tlog on SQLite), in process.

The Store's resources are read through ``TransparencyLog.handle``/``proofs`` (the code that
``sipcert serve`` runs); only the TLS connection is left out.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import unquote

import pytest

from sipcert.client.tlog import LogClient, LogState, PinStore
from sipcert.errors import ConfigError, ForkError, NotFoundError, ProofError
from sipcert.proto.note import ALG_COSIGNATURE_V1, Signer, parse_note
from sipcert.server.tlog import LoggedStore, TransparencyLog, load_or_create_log_keys
from sipcert.storage import StoredCertificate
from sipcert.storage.memory import MemoryStore
from sipcert.storage.tlog import SqliteLog

DOMAIN = "example.com"
BOB = f"bob@{DOMAIN}"
NOW = datetime.now(UTC)


def cert(aor: str, n: int) -> StoredCertificate:
    return StoredCertificate.from_der(
        aor,
        b"DER of device %d" % n,
        not_before=NOW,
        not_after=NOW + timedelta(days=1),
        created=NOW + timedelta(seconds=n),
    )


class FakeStore:
    """The Store's log and certificates; ``serve`` can be pointed at another log (a lie)."""

    def __init__(self, keys_dir: Path, db: Path) -> None:
        keys = {DOMAIN: load_or_create_log_keys(keys_dir, DOMAIN)}
        self.tlog = TransparencyLog(SqliteLog(db), keys, interval=0.01, record_timeout=10)
        self.store = LoggedStore(MemoryStore(), self.tlog)
        self.serve = self

    async def get(self, path: str) -> bytes | None:
        served = self.serve
        try:
            if path.startswith("/log/proof?sip="):
                aor = unquote(path.partition("=")[2])
                certs = await served.store.get_by_aor(aor, NOW)
                return await served.tlog.proofs(DOMAIN, aor, certs)
            response = await served.tlog.handle(path, DOMAIN)
        except NotFoundError:
            return None
        assert isinstance(response.body, bytes)
        return response.body


@contextlib.asynccontextmanager
async def running(*stores: FakeStore) -> AsyncIterator[None]:
    tasks = []
    for store in stores:
        await store.tlog.start()
        tasks.append(asyncio.create_task(store.tlog.run_forever()))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for store in stores:
            await store.tlog.store.close()


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(main())  # type: ignore[arg-type]


def test_logged_certificates_are_kept_and_others_discarded(tmp_path: Path) -> None:
    async def main() -> None:
        store = FakeStore(tmp_path, tmp_path / "db")
        async with running(store):
            await store.store.add(cert(BOB, 1), max_per_aor=5, now=NOW)
            await store.store.add(cert(BOB, 2), max_per_aor=5, now=NOW)
            client = LogClient(DOMAIN, store.get, PinStore(tmp_path / "pins.json"))
            unlogged = b"a certificate the Store hands out but never logged"
            kept, discarded = await client.verify_certificates(
                BOB, [cert(BOB, 1).der, cert(BOB, 2).der, unlogged]
            )
            assert kept == [cert(BOB, 1).der, cert(BOB, 2).der]
            assert discarded == [(unlogged, "not in the transparency log")]
            assert (tmp_path / "pins.json").stat().st_mode & 0o777 == 0o600

    run(main)


def test_a_changed_log_key_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        honest = FakeStore(tmp_path / "a", tmp_path / "a.db")
        other = FakeStore(tmp_path / "b", tmp_path / "b.db")
        async with running(honest, other):
            client = LogClient(DOMAIN, honest.get, PinStore(tmp_path / "pins.json"))
            await client.checkpoint()
            honest.serve = other
            with pytest.raises(ProofError, match="changed"):
                await client.checkpoint()

    run(main)


def test_a_split_view_is_a_fork_error(tmp_path: Path) -> None:
    """The same log key, two histories: the UA that saw one refuses the other (exit 15)."""

    async def main() -> None:
        keys = tmp_path / "keys"
        seen = FakeStore(keys, tmp_path / "seen.db")
        shown = FakeStore(keys, tmp_path / "shown.db")  # what the Store shows Alice later
        async with running(seen, shown):
            await seen.store.add(cert(BOB, 1), max_per_aor=5, now=NOW)
            await seen.store.add(cert(BOB, 2), max_per_aor=5, now=NOW)
            for n in (1, 3, 4):
                await shown.store.add(cert(BOB, n), max_per_aor=5, now=NOW)
            client = LogClient(DOMAIN, seen.get, PinStore(tmp_path / "pins.json"))
            assert (await client.checkpoint()).size == 2
            seen.serve = shown
            with pytest.raises(ForkError, match="does not extend") as caught:
                await client.checkpoint()
            assert caught.value.exit_code == 15
            # Nor can it roll the UA back to a smaller tree.
            rollback = FakeStore(keys, tmp_path / "rollback.db")
            async with running(rollback):
                await rollback.store.add(cert(BOB, 9), max_per_aor=5, now=NOW)
                seen.serve = rollback
                with pytest.raises(ForkError, match="went back"):
                    await client.checkpoint()
            # The honest log, grown, is still consistent with what the UA pinned.
            seen.serve = seen
            await seen.store.add(cert(BOB, 5), max_per_aor=5, now=NOW)
            assert (await client.checkpoint()).size == 3

    run(main)


def test_witness_quorum_is_required(tmp_path: Path) -> None:
    async def main() -> None:
        store = FakeStore(tmp_path, tmp_path / "db")
        witness = Signer.generate("witness.test/w1", ALG_COSIGNATURE_V1).verifier
        async with running(store):
            client = LogClient(
                DOMAIN,
                store.get,
                PinStore(tmp_path / "p.json"),
                witnesses=[witness],
                quorum=1,
                cosign_wait=0.3,
            )
            with pytest.raises(ProofError, match="0 of the 1 witness cosignatures"):
                await client.checkpoint()
        with pytest.raises(ConfigError):
            LogClient(DOMAIN, store.get, PinStore(tmp_path / "p.json"), quorum=1)

    run(main)


def test_a_checkpoint_is_asked_again_while_its_cosignature_is_on_its_way(
    tmp_path: Path,
) -> None:
    """The Store serves a new checkpoint before its witnesses cosign it: the UA asks again."""
    witness = Signer.generate("witness.test/w1", ALG_COSIGNATURE_V1)
    asked: list[str] = []

    async def main() -> None:
        store = FakeStore(tmp_path, tmp_path / "db")

        async def get(path: str) -> bytes | None:
            body = await store.get(path)
            if path != "/log/checkpoint" or body is None:
                return body
            asked.append(path)
            if len(asked) < 3:
                return body  # not cosigned yet
            note = parse_note(body)
            return note.with_signatures([witness.sign(note.text, 1)]).to_bytes()

        async with running(store):
            client = LogClient(
                DOMAIN, get, PinStore(tmp_path / "p.json"), witnesses=[witness.verifier], quorum=1
            )
            assert (await client.checkpoint()).origin == DOMAIN

    run(main)
    assert len(asked) == 3


def test_bobs_monitor_catches_a_certificate_injected_for_alice(tmp_path: Path) -> None:
    """Issue 14: the Store logs (it must, or Alice discards it) a certificate Bob never
    enrolled; Bob's monitor, which knows his own devices, raises one alarm, once."""

    async def main() -> None:
        store = FakeStore(tmp_path, tmp_path / "db")
        async with running(store):
            own = [cert(BOB, 1), cert(BOB, 2)]
            for c in own:
                await store.store.add(c, max_per_aor=5, now=NOW)
            await store.store.add(cert(f"alice@{DOMAIN}", 7), max_per_aor=5, now=NOW)
            monitor = LogClient(DOMAIN, store.get, PinStore(tmp_path / "bob-pins.json"))
            mine = [c.sha256 for c in own]
            assert await monitor.monitor(BOB, mine) == []
            injected = cert(BOB, 666)
            await store.store.add(injected, max_per_aor=5, now=NOW)
            # Alice's UA accepts it: it is logged. That is what makes the lie visible.
            alice = LogClient(DOMAIN, store.get, PinStore(tmp_path / "alice-pins.json"))
            kept, _ = await alice.verify_certificates(BOB, [injected.der])
            assert kept == [injected.der]
            alarms = await monitor.monitor(BOB, mine)
            assert [a.cert_sha256 for a in alarms] == [injected.sha256]
            assert alarms[0].index == 3
            assert "not one of your devices" in alarms[0].line(BOB)
            assert await monitor.monitor(BOB, mine) == []  # read once

    run(main)


def test_damaged_pins_are_a_config_error(tmp_path: Path) -> None:
    pins = tmp_path / "pins.json"
    pins.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="not a JSON object"):
        PinStore(pins).load(DOMAIN)
    pins.write_text('{"example.com": {"nope": 1}}')
    with pytest.raises(ConfigError, match="damaged"):
        PinStore(pins).load(DOMAIN)
    pins.write_text("{")
    with pytest.raises(ConfigError, match="cannot be read"):
        PinStore(pins).load(DOMAIN)


def test_publishes_log_and_a_pinned_log_that_disappears(tmp_path: Path) -> None:
    async def main() -> None:
        store = FakeStore(tmp_path, tmp_path / "db")
        answers: dict[str, bytes | None] = {"/log/vkey": b"<html>not a key</html>"}

        async def other(path: str) -> bytes | None:
            return answers.get(path)

        pins = PinStore(tmp_path / "pins.json")
        assert not await LogClient(DOMAIN, other, pins).publishes_log()  # not a vkey: no log
        async with running(store):
            client = LogClient(DOMAIN, store.get, pins)
            assert await client.publishes_log()
            await client.checkpoint()  # pins it
        answers["/log/vkey"] = None
        with pytest.raises(ProofError, match="no longer publishes"):
            await LogClient(DOMAIN, other, pins).publishes_log()

    run(main)


def test_client_config_checks_the_witness_policy() -> None:
    """k of n (issue 14): k between 0 and the number of distinct witness keys given."""
    from sipcert.client.ua import ClientConfig

    one, two = (Signer.generate(f"w{i}.example", alg=ALG_COSIGNATURE_V1).verifier for i in (1, 2))
    assert ClientConfig(log_witnesses=(one, two), log_quorum=2).log_quorum == 2
    assert ClientConfig(log_witnesses=(one,), log_quorum=0).log_quorum == 0
    for witnesses, quorum in (((one,), 2), ((), 1), ((one, two), -1)):
        with pytest.raises(ConfigError, match="log quorum"):
            ClientConfig(log_witnesses=witnesses, log_quorum=quorum)
    with pytest.raises(ConfigError, match="given twice"):
        ClientConfig(log_witnesses=(one, one), log_quorum=1)


def test_a_changed_aor_commitment_is_a_split_view_and_what_remains(tmp_path: Path) -> None:
    """The HMAC commitment's gap (docs/transparency.md): a Store can log an injected
    certificate for Bob under another commitment C' (here: that of a shadow AOR) and show
    Alice C' instead of Bob's C. A home that saw C for Bob refuses C' (ForkError, exit 15);
    a home that never asked for Bob is given C' from its first answer and cannot tell, and
    Bob's monitor, watching C, sees nothing: that is what a VRF commitment would close."""

    async def main() -> None:
        store = FakeStore(tmp_path, tmp_path / "db")
        shadow = f"shadow-bob@{DOMAIN}"
        async with running(store):
            genuine, injected = cert(BOB, 1), cert(shadow, 666)
            await store.store.add(genuine, max_per_aor=5, now=NOW)
            await store.store.add(injected, max_per_aor=5, now=NOW)
            lying = False

            async def get(path: str) -> bytes | None:
                if lying and path == f"/log/proof?sip={BOB}":
                    path = f"/log/proof?sip={shadow}"
                return await store.get(path)

            alice = LogClient(DOMAIN, get, PinStore(tmp_path / "alice-pins.json"))
            assert await alice.verify_certificates(BOB, [genuine.der]) == ([genuine.der], [])
            lying = True
            with pytest.raises(ForkError, match="another log commitment for bob@") as caught:
                await alice.verify_certificates(BOB, [injected.der])
            assert caught.value.exit_code == 15
            with pytest.raises(ForkError, match="another log commitment"):
                await alice.monitor(BOB, [genuine.sha256])
            # The limit of trust on first use of the commitment:
            carol = LogClient(DOMAIN, get, PinStore(tmp_path / "carol-pins.json"))
            assert await carol.verify_certificates(BOB, [injected.der]) == ([injected.der], [])
            lying = False
            bob = LogClient(DOMAIN, get, PinStore(tmp_path / "bob-pins.json"))
            assert await bob.monitor(BOB, [genuine.sha256]) == []

    run(main)


def test_a_certificate_the_store_never_logged_has_a_null_proof_and_is_discarded(
    tmp_path: Path,
) -> None:
    """Written straight into the certificate database (not through the log): the Store's
    proof document lists it with ``"proof": null``; the UA discards it, keeps the rest."""

    async def main() -> None:
        store = FakeStore(tmp_path, tmp_path / "db")
        async with running(store):
            logged, sneaked = cert(BOB, 1), cert(BOB, 2)
            await store.store.add(logged, max_per_aor=5, now=NOW)
            await store.store.inner.add(sneaked, max_per_aor=5, now=NOW)
            document = await store.get(f"/log/proof?sip={BOB}")
            assert b'"proof": null' in (document or b"")
            client = LogClient(DOMAIN, store.get, PinStore(tmp_path / "pins.json"))
            kept, discarded = await client.verify_certificates(BOB, [logged.der, sneaked.der])
            assert (kept, discarded) == (
                [logged.der],
                [(sneaked.der, "not in the transparency log")],
            )

    run(main)


def test_a_fetch_reads_the_log_key_once_and_rewrites_no_unchanged_pin(tmp_path: Path) -> None:
    """issue 13: /log/vkey once per check (not three times), no fsync'd write of equal pins."""

    async def main() -> None:
        store = FakeStore(tmp_path, tmp_path / "db")
        asked: list[str] = []

        async def get(path: str) -> bytes | None:
            asked.append(path.partition("?")[0])
            return await store.get(path)

        async with running(store):
            await store.store.add(cert(BOB, 1), max_per_aor=5, now=NOW)
            pins = PinStore(tmp_path / "pins.json")
            for _ in range(2):
                client = LogClient(DOMAIN, get, pins)
                assert await client.publishes_log()
                kept, _ = await client.verify_certificates(BOB, [cert(BOB, 1).der])
                assert kept == [cert(BOB, 1).der]
                if len(asked) == 3:
                    first = (tmp_path / "pins.json").stat()
            assert asked == ["/log/vkey", "/log/checkpoint", "/log/proof"] * 2
            again = (tmp_path / "pins.json").stat()
            assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)

    run(main)


def test_pins_saved_by_another_process_are_read_again(tmp_path: Path) -> None:
    """The parsed file is kept only while the file is the same one (its inode, size, mtime)."""
    path = tmp_path / "pins.json"
    mine, theirs = PinStore(path), PinStore(path)
    state = LogState("example.com+1234abcd+AAAA", 1, "cm9vdA==")
    mine.save(DOMAIN, state)
    assert mine.load(DOMAIN) == state
    grown = LogState(state.vkey, 2, "cm9vdDI=", commitments={BOB: "Yw=="})
    theirs.save(DOMAIN, grown)
    assert mine.load(DOMAIN) == grown
    loaded = mine.load(DOMAIN)
    assert loaded is not None
    loaded.commitments["mallory@example.com"] = "eA=="  # a caller's change stays its own
    assert mine.load(DOMAIN) == grown
    path.unlink()
    assert mine.load(DOMAIN) is None
