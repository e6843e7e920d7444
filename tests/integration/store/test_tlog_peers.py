"""A real ``sipcert serve`` publishing its log, checked by peers we did not write (issue 14).

* ``aics-witness`` (C2SP tlog-witness) on loopback is configured with the Store's log key; the
  Store submits each checkpoint to it with a consistency proof, and serves its cosignature.
  The witness refuses a checkpoint signed by the same key that forks the log.
* ``aics-tlog`` (C2SP tlog-tiles/checkpoint/signed-note/cosignature verifier) checks the
  checkpoint, tiles, entry bundles, an inclusion and a consistency proof, on a byte-exact
  mirror of what the Store served over HTTPS with SNI.
* ``tlog-scales`` (another tiles reader and proof builder) reads the same mirror and builds
  the same proofs as ours.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from sipcert.client.fetch import DigestAuth
from sipcert.errors import ProofError
from sipcert.proto import merkle
from sipcert.proto.note import Verifier, open_note, parse_note, sign_note
from sipcert.proto.tlog import (
    TILE_HEIGHT,
    Checkpoint,
    Entry,
    InclusionProof,
    Operation,
    TileNodes,
    TilePath,
    WitnessRequest,
    aor_commitment,
    decode_entry_bundle,
    tile_width,
    verify_certificate_proof,
)
from sipcert.server.tlog import LogKeys, TransparencyLog, load_or_create_log_keys
from sipcert.storage import SqliteStore, StoredCertificate
from sipcert.storage.tlog import SqliteLog
from tests.integration.store.conftest import (
    NONCE_LIFETIME,
    SIPCERT,
    StoreFiles,
    StoreProcess,
    make_store_files,
)
from tests.integration.store.test_store_e2e import der, get, put, target, user_cert
from tests.integration.store.tlog_peers import WitnessProcess, peer, run_witness

DOMAIN = "example.com"


@dataclass
class LoggedStore:
    store: StoreProcess
    files: StoreFiles
    keys: LogKeys
    witness: WitnessProcess


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoggedStore]:
    peer("aics-tlog")
    root = tmp_path_factory.mktemp("tlog")
    files = make_store_files(root)
    # The log key exists before the Store starts, so the witness can be told to trust it.
    keys = load_or_create_log_keys(files.data_dir, DOMAIN)
    with run_witness(root / "witness", {DOMAIN: keys.signer.verifier.vkey}) as witness:
        config = root / "store.toml"
        config.write_text(
            f"nonce_lifetime = {NONCE_LIFETIME}\n"
            "[transparency]\ninterval = 0.1\n"
            f'witnesses = [{{vkey = "{witness.vkey}", url = "{witness.url}"}}]\n'
        )
        store = StoreProcess(files, extra=["--config", str(config)])
        store.start()
        try:
            yield LoggedStore(store, files, keys, witness)
        finally:
            store.stop()


def fetch(logged: LoggedStore, path: str) -> httpx.Response:
    response = get(logged.store, DOMAIN, path)
    assert response.status_code == 200, (path, response.status_code, response.text)
    return response


def cosigned_checkpoint(logged: LoggedStore, size: int, timeout: float = 20.0) -> bytes:
    """The served checkpoint once it is at ``size`` and carries the witness's cosignature."""
    verifiers = [logged.keys.signer.verifier, Verifier.parse(logged.witness.vkey)]
    deadline = time.monotonic() + timeout
    while True:
        note = fetch(logged, "/log/checkpoint").content
        opened = open_note(note, verifiers)
        if Checkpoint.parse(opened.note.text).size >= size and len(opened.verified) == 2:
            return note
        if time.monotonic() > deadline:
            raise AssertionError(f"no cosigned checkpoint of size {size}:\n{note.decode()}")
        time.sleep(0.05)


def mirror(logged: LoggedStore, note: bytes, folder: Path) -> Checkpoint:
    """Copy the checkpoint and every tile and bundle it needs, byte for byte, to ``folder``."""
    checkpoint = Checkpoint.from_note(note)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "checkpoint").write_bytes(note)
    for level in [*range(4), None]:
        tree_level = 0 if level is None else level
        for index in range(checkpoint.size // (256 ** (tree_level + 1)) + 1):
            width = tile_width(tree_level, index, checkpoint.size)
            if not width:
                continue
            path = TilePath(level, index, width).path()
            response = fetch(logged, "/log/" + path)
            assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            (folder / path).write_bytes(response.content)
    return checkpoint


def aics_tlog(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [peer("aics-tlog"), *args], capture_output=True, text=True, timeout=120, check=False
    )


def enroll(logged: LoggedStore, aor: str, slot: int) -> bytes:
    body = der(user_cert(aor, slot=slot))
    response = put(logged.store, aor, body)
    assert response.status_code == 201, response.text
    return body


def test_enrollments_are_logged_cosigned_and_verify_with_aics_tlog(
    logged: LoggedStore, tmp_path: Path
) -> None:
    vkey = fetch(logged, "/log/vkey")
    assert vkey.text == logged.keys.signer.verifier.vkey + "\n"
    checkpoint_response = fetch(logged, "/log/checkpoint")
    assert checkpoint_response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert checkpoint_response.headers["Cache-Control"] == "public, max-age=1"

    alice = enroll(logged, "alice@example.com", 0)
    first = cosigned_checkpoint(logged, 1)
    (tmp_path / "old.note").write_bytes(first)
    bobs = [enroll(logged, "bob@example.com", slot) for slot in range(2)]
    revoked = put(logged.store, "bob@example.com", bobs[0])  # a retried PUT is logged again
    assert revoked.status_code == 200
    with logged.store.client(DOMAIN) as client:
        gone = client.delete(
            logged.store.url(DOMAIN, target("bob@example.com")),
            auth=DigestAuth("bob", "bob-secret"),
        )
    assert gone.status_code == 204
    note = cosigned_checkpoint(logged, 6)
    checkpoint = mirror(logged, note, tmp_path / "mirror")
    assert checkpoint.origin == DOMAIN
    assert parse_note(note).signatures[0].name == DOMAIN

    # Our own reading of the served bytes first.
    tiles = tmp_path / "mirror"
    reader = TileNodes(
        checkpoint.size,
        lambda level, index, width: (tiles / TilePath(level, index, width).path()).read_bytes(),
    )
    assert merkle.root(reader, checkpoint.size) == checkpoint.root
    bundle = (tiles / TilePath(None, 0, checkpoint.size).path()).read_bytes()
    entries = [Entry.parse(e) for e in decode_entry_bundle(bundle, checkpoint.size)]
    alice_c = aor_commitment(logged.keys.commitment_key, "alice@example.com")
    bob_c = aor_commitment(logged.keys.commitment_key, "bob@example.com")
    assert [(e.operation, e.aor_commitment, e.cert_sha256) for e in entries[-6:]] == [
        (Operation.ENROLL, alice_c, hashlib.sha256(alice).digest()),
        (Operation.ENROLL, bob_c, hashlib.sha256(bobs[0]).digest()),
        (Operation.ENROLL, bob_c, hashlib.sha256(bobs[1]).digest()),
        (Operation.ENROLL, bob_c, hashlib.sha256(bobs[0]).digest()),
        (Operation.REVOKE, bob_c, hashlib.sha256(bobs[0]).digest()),
        (Operation.REVOKE, bob_c, hashlib.sha256(bobs[1]).digest()),
    ]  # the DELETE revokes in the Store's order: enrollment time, then sha256
    assert all(b"bob" not in e.to_bytes() for e in entries)  # no AOR in the clear

    # The proofs a GET can ask for (docs/store.md): Alice's certificate, checked as a UA would.
    document = json.loads(fetch(logged, "/log/proof?sip=alice@example.com").content)
    assert document["aor_commitment"] == base64.b64encode(alice_c).decode()
    (item,) = document["proofs"]
    assert item["sha256"] == hashlib.sha256(alice).hexdigest()
    checked = verify_certificate_proof(
        item["proof"].encode(),
        log_key=logged.keys.signer.verifier,
        cert_der=alice,
        aor_commitment=alice_c,
        witnesses=[Verifier.parse(logged.witness.vkey)],
        quorum=1,
    )
    assert checked.index == checkpoint.size - 6
    assert get(logged.store, DOMAIN, "/log/proof?sip=alice@example.net").status_code == 404

    # Then the independent verifier, on the same bytes.
    log_key, witness_key = logged.keys.signer.verifier.vkey, logged.witness.vkey
    common = ["--tiles", tiles.as_uri() + "/", "--log-key", log_key]
    verified = aics_tlog(
        "verify-checkpoint",
        *common,
        "--witness-key",
        witness_key,
        "--quorum",
        "1",
        "--max-age",
        "600",
        "--origin",
        DOMAIN,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    index = checkpoint.size - 6
    entry_out = tmp_path / "entry.bin"
    included = aics_tlog(
        "verify-inclusion", *common, "--index", str(index), "--entry-out", str(entry_out)
    )
    assert included.returncode == 0, included.stdout + included.stderr
    assert Entry.parse(entry_out.read_bytes()).cert_sha256 == hashlib.sha256(alice).digest()
    consistent = aics_tlog(
        "verify-consistency", *common, "--old-checkpoint", str(tmp_path / "old.note")
    )
    assert consistent.returncode == 0, consistent.stdout + consistent.stderr


def test_witness_refuses_a_fork_signed_with_the_log_key(logged: LoggedStore) -> None:
    """A split view: the Store's own key signs a second history; the witness will not cosign."""
    enroll(logged, "dave@example.com", 0)
    note = cosigned_checkpoint(logged, 1)
    honest = Checkpoint.from_note(note)
    witnessed = honest.size  # the witness cosigned this one
    url = logged.witness.url + "/add-checkpoint"

    def submit(checkpoint: Checkpoint, proof: tuple[bytes, ...]) -> httpx.Response:
        signed = sign_note(checkpoint.text(), [logged.keys.signer]).to_bytes()
        body = WitnessRequest(witnessed, proof, signed).to_bytes()
        return httpx.post(url, content=body, timeout=10)

    same_size = Checkpoint(DOMAIN, witnessed, hashlib.sha256(b"another history").digest())
    answer = submit(same_size, ())
    assert answer.status_code in (409, 422), answer.text  # 409 in v1.0.0, 422 in v1.1.0
    bigger = Checkpoint(DOMAIN, witnessed + 1, hashlib.sha256(b"forked").digest())
    forged_proof = (base64.b64decode(base64.b64encode(hashlib.sha256(b"x").digest())),)
    answer = submit(bigger, forged_proof)
    assert answer.status_code == 422, answer.text
    # The Store's own next checkpoint is still accepted: the refusal changed nothing.
    enroll(logged, "erin@example.com", 0)
    cosigned_checkpoint(logged, witnessed + 1)


def test_tiles_that_do_not_exist_are_404(logged: LoggedStore) -> None:
    size = Checkpoint.from_note(fetch(logged, "/log/checkpoint").content).size
    for path in (
        f"/log/tile/0/000.p/{min(size + 1, 255)}",
        f"/log/tile/{TILE_HEIGHT}/000",
        "/log/tile/0/0",
        "/log/nothing",
    ):
        assert get(logged.store, DOMAIN, path).status_code == 404, path
    with logged.store.client(DOMAIN) as client:
        answer = client.post(logged.store.url(DOMAIN, "/log/checkpoint"))
    assert answer.status_code == 405


def sipcert_cli(logged: LoggedStore, *args: str, home: Path) -> subprocess.CompletedProcess[str]:
    """The real ``sipcert`` program against the Store, TLS checked against the test CA."""
    command = [SIPCERT, *args, "--home", str(home), "--timeout", "10"]
    command += ["--store", f"127.0.0.1:{logged.store.port}", "--ca-file", str(logged.files.ca_file)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_bobs_monitor_catches_a_certificate_he_never_enrolled(
    logged: LoggedStore, tmp_path: Path
) -> None:
    """Issue 14: the Store gives Alice a certificate for Bob that no device of Bob enrolled;
    it must be logged (or Alice's proof check discards it), and Bob's ``sipcert monitor``
    alarms on it at its next run: one line, exit code 16, a JSON event. (The AOR is one no
    other test of the module enrolls: their enrollments are, rightly, alarms too.)"""
    home = tmp_path / "home"
    password = tmp_path / "password"
    password.write_text("hash-secret\n")
    enrolled = sipcert_cli(
        logged, "enroll", "hash@example.com", "--password-file", str(password), home=home
    )
    assert enrolled.returncode == 0, enrolled.stderr
    witness = ["--witness", logged.witness.vkey, "--quorum", "1"]
    cosigned_checkpoint(logged, 1)
    quiet = sipcert_cli(logged, "monitor", "hash@example.com", *witness, home=home)
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    assert "holds no enrollment but your 1 device(s)" in quiet.stdout

    injected = der(user_cert("hash@example.com", slot=42))  # not from Bob's home
    assert put(logged.store, "hash@example.com", injected).status_code == 201
    size = Checkpoint.from_note(fetch(logged, "/log/checkpoint").content).size
    cosigned_checkpoint(logged, size)
    caught = sipcert_cli(logged, "monitor", "hash@example.com", *witness, "--json", home=home)
    assert caught.returncode == 16, caught.stdout + caught.stderr
    event, summary = (json.loads(line) for line in caught.stdout.splitlines())
    assert event["event"] == "alarm"
    assert event["sha256"] == hashlib.sha256(injected).hexdigest()
    assert summary["exit_code"] == 16 and summary["alarms"] == 1
    again = sipcert_cli(logged, "monitor", "hash@example.com", *witness, home=home)
    assert again.returncode == 0, again.stdout + again.stderr  # each entry is read once
    assert (home / "tlog-pins.json").exists()


def test_fetch_verify_log_keeps_proven_certificates_and_discards_an_unlogged_one(
    logged: LoggedStore, tmp_path: Path
) -> None:
    """``sipcert fetch`` (the log check is the default): a certificate the Store serves without
    logging it (here written straight into its database, as a Store that lies would) is
    discarded with a reason, like an expired one; the logged one is kept."""
    aor = "alice@example.com"
    logged_cert = enroll(logged, aor, 5)
    sneaked = user_cert(aor, slot=6)
    now = datetime.now(UTC)
    database = SqliteStore(logged.files.db_path)
    try:
        asyncio.run(
            database.add(
                StoredCertificate.from_der(
                    aor,
                    der(sneaked),
                    not_before=sneaked.not_valid_before_utc,
                    not_after=sneaked.not_valid_after_utc,
                    created=now,
                ),
                max_per_aor=10,
                now=now,
            )
        )
    finally:
        asyncio.run(database.close())
    cosigned_checkpoint(logged, 1)
    witness = ["--log-witness", logged.witness.vkey, "--log-quorum", "1"]
    home = tmp_path / "alice-home"
    fetched = sipcert_cli(logged, "fetch", aor, "--verify-log", *witness, "--json", home=home)
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    answer = json.loads(fetched.stdout)
    kept = {c["sha256"] for c in answer["certificates"]}
    assert hashlib.sha256(logged_cert).hexdigest() in kept
    assert {"sha256": hashlib.sha256(der(sneaked)).hexdigest(), "reason": "not-in-log"} in (
        answer["discarded"]
    )
    assert json.loads((home / "tlog-pins.json").read_text())[DOMAIN]["vkey"] == (
        logged.keys.signer.verifier.vkey
    )
    # The check is the default: a plain fetch, from a home that never saw this log, too.
    default = sipcert_cli(logged, "fetch", aor, "--json", home=tmp_path / "bob-home")
    assert default.returncode == 0, default.stdout + default.stderr
    assert {"sha256": hashlib.sha256(der(sneaked)).hexdigest(), "reason": "not-in-log"} in (
        json.loads(default.stdout)["discarded"]
    )
    # --no-verify-log trusts the Store alone: both certificates.
    plain = sipcert_cli(logged, "fetch", aor, "--no-verify-log", "--json", home=home)
    assert hashlib.sha256(der(sneaked)).hexdigest() in {
        c["sha256"] for c in json.loads(plain.stdout)["certificates"]
    }


def tlog_tiles(*args: str) -> subprocess.CompletedProcess[bytes]:
    """tlog-scales' CLI (``tlog-tiles``), output as bytes (``get-leaf`` prints raw entries)."""
    return subprocess.run(
        [peer("tlog-tiles"), *args], capture_output=True, timeout=120, check=False
    )


def test_tlog_scales_reads_our_tiles_and_builds_the_same_proofs(
    logged: LoggedStore, tmp_path: Path
) -> None:
    """tlog-scales 0.0.3 (PyPI, its own tile reader and RFC 9162 proofs) on a byte-exact
    mirror of what the Store served: it verifies the log's signature and the witness's
    cosignature, rebuilds the root from our tiles, reads every entry back with its inclusion
    checked, builds the consistency proof from an older checkpoint, and prints for a
    certificate the same c2sp.org/tlog-proof@v1 as our ``/log/proof`` (ours adds the entry
    as ``extra``, which tlog-proof allows)."""
    aor = "erin@example.com"
    enroll(logged, "dave@example.com", 4)
    old_note = cosigned_checkpoint(logged, 1)
    old = Checkpoint.from_note(old_note)
    erin = enroll(logged, aor, 3)
    note = cosigned_checkpoint(logged, old.size + 1)
    checkpoint = mirror(logged, note, tmp_path / "mirror")
    folder = str(tmp_path / "mirror")

    # The library: signatures, root, consistency (its CLI checks no signature at all).
    checked = subprocess.run(
        [
            str(Path(peer("tlog-tiles")).parent / "python"),
            str(Path(__file__).with_name("tlog_scales_check.py")),
            folder,
            logged.keys.signer.verifier.vkey,
            logged.witness.vkey,
            str(old.size),
            base64.b64encode(old.root).decode(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    theirs = json.loads(checked.stdout)
    root = base64.b64encode(checkpoint.root).decode()
    assert (theirs["origin"], theirs["size"], theirs["root"]) == (DOMAIN, checkpoint.size, root)
    assert theirs["root_from_tiles"] == root
    assert theirs["cosignatures"] == 1
    reader = TileNodes(
        checkpoint.size,
        lambda level, index, width: (
            tmp_path / "mirror" / TilePath(level, index, width).path()
        ).read_bytes(),
    )
    ours = merkle.consistency_proof(reader, old.size, checkpoint.size)
    assert theirs["consistency"] == [base64.b64encode(h).decode() for h in ours]

    # The CLI: every entry read back with its inclusion checked against the checkpoint.
    bundle = (tmp_path / "mirror" / TilePath(None, 0, checkpoint.size).path()).read_bytes()
    entries = decode_entry_bundle(bundle, checkpoint.size)
    for index, entry in enumerate(entries):
        leaf = tlog_tiles("get-leaf", "--check", folder, str(index))
        assert leaf.returncode == 0, leaf.stderr.decode()
        assert leaf.stdout == entry, index

    # The same tlog-proof for Erin's certificate as /log/proof serves (ours has `extra`).
    document = json.loads(fetch(logged, f"/log/proof?sip={aor}").content)
    (served,) = [p for p in document["proofs"] if p["sha256"] == hashlib.sha256(erin).hexdigest()]
    parsed = InclusionProof.parse(served["proof"].encode())
    assert parsed.checkpoint == note  # nothing was sequenced since the mirror
    built = tlog_tiles("gen-proof", folder, str(parsed.index))
    assert built.returncode == 0, built.stderr.decode()
    assert built.stdout == replace(parsed, extra=None).to_bytes()
    # And -1 is the last entry, Erin's enrollment.
    last = tlog_tiles("gen-proof", folder, "-1")
    assert InclusionProof.parse(last.stdout).index == checkpoint.size - 1 == parsed.index


def test_tlog_scales_on_a_log_of_66000_entries(tmp_path: Path) -> None:
    """Past one level-1 tile and into level 2 (256**2 = 65,536 entries): the tiles the
    Store's own handler serves, every tile boundary, read by tlog-scales."""
    peer("tlog-tiles")
    size = 66_000
    keys = load_or_create_log_keys(tmp_path / "data", DOMAIN)
    folder = tmp_path / "mirror"

    async def build() -> tuple[bytes, bytes]:
        store = SqliteLog(tmp_path / "log.db")
        log = TransparencyLog(store, {DOMAIN: keys}, max_batch=size)
        try:
            await log.start()
            commitment = aor_commitment(keys.commitment_key, "big@example.com")
            old_note = b""
            for start in range(0, size, 16_500):  # four batches: four checkpoints
                await store.submit_many(
                    DOMAIN,
                    [
                        (Operation.ENROLL, commitment, hashlib.sha256(b"%d" % i).digest())
                        for i in range(start, start + 16_500)
                    ],
                )
                old_note = await store.checkpoint(DOMAIN) or b""
                assert await log.integrate_now()
            note = await store.checkpoint(DOMAIN) or b""
            final = Checkpoint.from_note(note)
            for level in [None, 0, 1, 2]:
                tree_level = 0 if level is None else level
                for index in range(final.size // 256 ** (tree_level + 1) + 1):
                    width = tile_width(tree_level, index, final.size)
                    if not width:
                        continue
                    path = TilePath(level, index, width).path()
                    response = await log.handle("/log/" + path, DOMAIN)
                    assert isinstance(response.body, bytes)
                    (folder / path).parent.mkdir(parents=True, exist_ok=True)
                    (folder / path).write_bytes(response.body)
            (folder / "checkpoint").write_bytes(note)
            return old_note, note
        finally:
            await store.close()

    old_note, note = asyncio.run(build())
    old, checkpoint = Checkpoint.from_note(old_note), Checkpoint.from_note(note)
    assert (old.size, checkpoint.size) == (49_500, size)
    reader = TileNodes(
        size,
        lambda level, index, width: (folder / TilePath(level, index, width).path()).read_bytes(),
    )
    checked = subprocess.run(
        [
            str(Path(peer("tlog-tiles")).parent / "python"),
            str(Path(__file__).with_name("tlog_scales_check.py")),
            str(folder),
            keys.signer.verifier.vkey,
            keys.signer.verifier.vkey,  # no witness here: the log's own key counts none
            str(old.size),
            base64.b64encode(old.root).decode(),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    theirs = json.loads(checked.stdout)
    assert theirs["root_from_tiles"] == base64.b64encode(checkpoint.root).decode()
    assert theirs["consistency"] == [
        base64.b64encode(h).decode() for h in merkle.consistency_proof(reader, old.size, size)
    ]
    for index in (0, 255, 256, 65_535, 65_536, size - 1):
        built = tlog_tiles("gen-proof", str(folder), str(index))
        assert built.returncode == 0, built.stderr.decode()
        proof = InclusionProof.parse(built.stdout)
        assert proof.checkpoint == note
        assert list(proof.hashes) == merkle.inclusion_proof(reader, index, size), index
        leaf = tlog_tiles("get-leaf", "--check", str(folder), str(index))
        assert leaf.returncode == 0, leaf.stderr.decode()
        assert Entry.parse(leaf.stdout).cert_sha256 == hashlib.sha256(b"%d" % index).digest()
    # Past the end: RFC 9162 §2.1.3.1 has no proof for index >= size. tlog-scales 0.0.3
    # prints one anyway (its check is `idx <= size`, docs/transparency.md); ours refuses it.
    beyond = tlog_tiles("gen-proof", str(folder), str(size))
    if beyond.returncode == 0:
        proof = InclusionProof.parse(beyond.stdout)
        with pytest.raises(ProofError, match="not in a tree"):
            merkle.verify_inclusion(bytes(32), proof.index, size, proof.hashes, checkpoint.root)
