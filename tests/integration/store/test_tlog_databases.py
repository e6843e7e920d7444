"""The transparency log end to end on a database server (issue 14): PostgreSQL and MariaDB.

Two real ``sipcert serve`` frontends, two workers each, on one database (so four processes
race for the sequencer lease), ``[transparency]`` on, a real ``aics-witness`` cosigning. Bob
enrolls with ``sipcert enroll`` through one frontend; the Store (through the other) enrolls
a certificate for Bob that no device of his made; ``sipcert fetch`` verifies the proofs of
both (they are logged, so Alice keeps both); Bob's ``sipcert monitor`` raises the alarm; the
injected certificate is revoked; the revocation is in the log, ``aics-tlog`` verifies the
served checkpoint and an inclusion proof, and the next monitor run is quiet.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipcert.client.fetch import DigestAuth
from sipcert.proto.certs import cert_hash
from sipcert.proto.tlog import Checkpoint, Entry, Operation, TilePath, decode_entry_bundle
from sipcert.server.tlog import load_or_create_log_keys
from tests.integration.store.conftest import NONCE_LIFETIME, StoreProcess, make_store_files
from tests.integration.store.test_store_e2e import der, put, target, user_cert
from tests.integration.store.test_tlog_peers import (
    DOMAIN,
    LoggedStore,
    aics_tlog,
    cosigned_checkpoint,
    fetch,
    mirror,
    sipcert_cli,
)
from tests.integration.store.tlog_peers import peer, run_witness
from tests.unit.storage.test_storage import mysql_database, postgres_schema, postgres_url

BOB = "bob@example.com"


@contextlib.contextmanager
def database(kind: str) -> Iterator[str]:
    if kind == "postgresql":
        with postgres_schema() as schema:
            yield postgres_url(schema)
    else:
        with mysql_database() as url:
            yield url


@pytest.fixture(params=["postgresql", "mysql"])
def frontends(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[LoggedStore]]:
    peer("aics-tlog")
    files = make_store_files(tmp_path)
    # The frontends share the log's key file (as frontends of one domain must: one log
    # identity); the database holds everything else.
    keys = load_or_create_log_keys(files.data_dir, DOMAIN)
    with (
        database(request.param) as url,
        run_witness(tmp_path / "witness", {DOMAIN: keys.signer.verifier.vkey}) as witness,
    ):
        config = tmp_path / "store.toml"
        config.write_text(
            f"nonce_lifetime = {NONCE_LIFETIME}\n"
            "[transparency]\ninterval = 0.1\n"
            f'witnesses = [{{vkey = "{witness.vkey}", url = "{witness.url}"}}]\n'
        )
        stores = [
            StoreProcess(files, db=url, extra=["--config", str(config), "--workers", "2"])
            for _ in range(2)
        ]
        with contextlib.ExitStack() as stack:
            for store in stores:
                store.start()
                stack.callback(store.stop)
            yield [LoggedStore(store, files, keys, witness) for store in stores]


def test_enroll_fetch_revoke_and_monitor_through_two_frontends(
    frontends: list[LoggedStore], tmp_path: Path
) -> None:
    one, two = frontends
    witness = [one.witness.vkey]
    home = tmp_path / "bob-home"
    password = tmp_path / "password"
    password.write_text("bob-secret\n")
    enrolled = sipcert_cli(one, "enroll", BOB, "--password-file", str(password), home=home)
    assert enrolled.returncode == 0, enrolled.stdout + enrolled.stderr
    cosigned_checkpoint(two, 1)
    quiet = sipcert_cli(two, "monitor", BOB, "--witness", *witness, "--quorum", "1", home=home)
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr

    # The Store lies: an enrollment for Bob that no device of his made, through frontend two.
    injected_cert = user_cert(BOB, slot=7)
    injected = der(injected_cert)
    assert put(two.store, BOB, injected).status_code == 201
    injected_sha = hashlib.sha256(injected).hexdigest()

    # Alice's fetch verifies every certificate's proof, 1 of 1 witness cosigning.
    alice = tmp_path / "alice-home"
    log_options = ["--log-witness", *witness, "--log-quorum", "1"]
    fetched = sipcert_cli(one, "fetch", BOB, *log_options, "--json", home=alice)
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    answer = json.loads(fetched.stdout)
    assert answer["discarded"] == []
    assert injected_sha in {c["sha256"] for c in answer["certificates"]}
    assert len(answer["certificates"]) == 2

    # Bob's monitor, through the other frontend, catches it.
    monitor = ["monitor", BOB, "--witness", *witness, "--quorum", "1", "--json"]
    caught = sipcert_cli(two, *monitor, home=home)
    assert caught.returncode == 16, caught.stdout + caught.stderr
    event, summary = (json.loads(line) for line in caught.stdout.splitlines())
    assert (event["event"], event["sha256"]) == ("alarm", injected_sha)
    assert summary["alarms"] == 1

    # The injected certificate is revoked; the revocation is logged and sequenced.
    with one.store.client(DOMAIN) as client:
        gone = client.delete(
            one.store.url(DOMAIN, target(BOB, certHash=cert_hash(injected_cert))),
            auth=DigestAuth("bob", "bob-secret"),
        )
    assert gone.status_code == 204, gone.text
    note = cosigned_checkpoint(one, 3)
    # Both frontends serve the one log.
    assert Checkpoint.from_note(fetch(two, "/log/checkpoint").content) == Checkpoint.from_note(note)
    checkpoint = mirror(two, note, tmp_path / "mirror")
    bundle = (tmp_path / "mirror" / TilePath(None, 0, checkpoint.size).path()).read_bytes()
    entries = [Entry.parse(e) for e in decode_entry_bundle(bundle, checkpoint.size)]
    assert [(e.operation, e.cert_sha256.hex()) for e in entries[1:]] == [
        (Operation.ENROLL, injected_sha),
        (Operation.REVOKE, injected_sha),
    ]
    again = sipcert_cli(one, *monitor, home=home)
    assert again.returncode == 0, again.stdout + again.stderr  # a revocation is no alarm
    after = sipcert_cli(two, "fetch", BOB, *log_options, "--json", home=alice)
    assert after.returncode == 0, after.stdout + after.stderr
    remaining = [c["sha256"] for c in json.loads(after.stdout)["certificates"]]
    assert len(remaining) == 1 and injected_sha not in remaining

    # An implementation we did not write checks what was served.
    common = [
        "--tiles",
        (tmp_path / "mirror").as_uri() + "/",
        "--log-key",
        one.keys.signer.verifier.vkey,
    ]
    verified = aics_tlog(
        "verify-checkpoint",
        *common,
        "--witness-key",
        one.witness.vkey,
        "--quorum",
        "1",
        "--max-age",
        "600",
        "--origin",
        DOMAIN,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    included = aics_tlog(
        "verify-inclusion", *common, "--index", "1", "--entry-out", str(tmp_path / "entry")
    )
    assert included.returncode == 0, included.stdout + included.stderr
    assert (tmp_path / "entry").read_bytes() == entries[1].to_bytes()
