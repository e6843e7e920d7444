"""``sipcert demo``: the installed command passes quickly, and a broken component fails it.

The command runs as a subprocess, exactly as the README tells users to run it. The failure
tests call the scenario in-process with a hook that breaks one component at a named point
(:data:`sipcert.demo.run.HOOK_POINTS`): the demo must stop at the step whose check no longer
holds, say why, and still shut everything down (``-W error`` turns a leaked socket or task
into a test failure).
"""

from __future__ import annotations

import io
import json
import subprocess
import time
from pathlib import Path

import pytest

from sipcert.demo.dns import Record
from sipcert.demo.run import DemoCheckFailedError, World, main
from sipcert.proto.certs import cert_hash
from tests.integration.store.conftest import SIPCERT

#: Generous for a loaded CI machine; the demo takes about a second on a laptop.
LIMIT = 30.0
HEADINGS = (
    "Set-up - ",
    "Step 0 - ",
    "Step 1 - ",
    "Steps 2-4 - ",
    "Step 5 - ",
    "Invite - ",
    "Revocation - ",
    "Log - ",
)


def run_cli(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(
        [SIPCERT, "demo", *args], capture_output=True, text=True, timeout=LIMIT * 2, check=False
    )
    return result, time.monotonic() - started


def test_demo_passes_and_narrates_every_step() -> None:
    result, elapsed = run_cli()
    assert result.returncode == 0, result.stdout + result.stderr
    assert elapsed < LIMIT
    assert result.stderr == ""
    out = result.stdout
    positions = [out.index(heading) for heading in HEADINGS]
    assert positions == sorted(positions), "steps out of order"
    assert "FAILED" not in out
    assert out.rstrip().splitlines()[-1].startswith("demo passed: every check held")
    for what in (
        "TLS with SNI example.net",  # step 1: the Store proves the AOR's domain
        "answered with SHA-256 as user 'alice'",  # step 0: Digest
        "1 kept, 0 discarded",  # step 1: the §4.5 checks
        "2 RecipientInfos",  # INVITE to Alice's two devices
        "verified as alice@example.com",  # step 5 at Bob
        "verified as bob@example.net",
        "DELETE https://store.example.com:",  # revocation
        "493 Undecipherable",  # the revoked device
        "publishes a transparency log: Alice's UA pinned its key",  # step 1 verifies proofs
        "discards",  # the unlogged certificate Store B slipped in ...
        "as not-in-log",
        "ALARM bob@example.net: the log holds an enrollment",  # ... and the logged one
    ):
        assert what in out, what


def test_json_prints_one_object_per_step_and_keep_keeps_the_files(tmp_path: Path) -> None:
    folder = tmp_path / "kept"
    result, _ = run_cli("--json", "--keep", str(folder))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["step"] for line in lines] == [
        "set-up",
        "0",
        "1",
        "2-4",
        "5",
        "invite",
        "revocation",
        "log",
        "done",
    ]
    assert all(line["ok"] for line in lines)
    assert all(check["ok"] for line in lines[:-1] for check in line["checks"])
    step4 = next(line for line in lines if line["step"] == "invite")
    assert any(check.get("recipients") == 2 for check in step4["checks"])
    assert lines[-1]["folder"] == str(folder)
    assert (folder / "ca.pem").is_file()
    assert (folder / "stores" / "example.com" / "certificates.db").is_file()
    assert (folder / "homes" / "alice-phone").is_dir()

    again, _ = run_cli("--keep", str(folder))  # never clobbers a folder with files in it
    assert again.returncode == 2
    assert again.stderr == (
        f"sipcert: error: --keep {folder}: not an empty folder; give a new or empty one\n"
    )  # the message, once, and no error class name ("demo failed: ConfigError")
    assert again.stdout == ""


def test_a_store_that_cannot_prove_the_domain_stops_step_1() -> None:
    """Point example.net's SRV record at Store A: TLS for example.net must be refused."""

    async def misdirect(world: World) -> None:
        port = world.stores["example.com"].port
        world.dns.remove("_certificates._tcp.example.net", "SRV")
        world.dns.add(Record("_certificates._tcp.example.net", "SRV", f"10 0 {port} evil.test."))
        world.dns.add(Record("evil.test", "A", "127.0.0.1"))

    out = io.StringIO()
    with pytest.raises(DemoCheckFailedError) as failed:
        main(out, hooks={"enrolled": misdirect})
    reason = str(failed.value)
    # Store A refuses the server name example.net: the handshake fails, said in words.
    assert reason.startswith("step 1 failed: no TLS handshake with a Store of example.net: ")
    assert "Error" not in reason  # no class name
    assert failed.value.exit_code != 0
    assert "FAILED  step 1 failed" in out.getvalue()
    assert "Step 5" not in out.getvalue()


def test_a_signer_not_enrolled_at_its_store_fails_step_5() -> None:
    """Remove Alice's phone certificate from Store A behind her back: Bob must notice."""

    async def forget_alice(world: World) -> None:
        store = world.stores["example.com"]
        phone = world.devices["alice-phone"]
        assert await store.storage.delete(str(phone.aor), cert_hash(phone.certificate)) == 1

    out = io.StringIO()
    with pytest.raises(DemoCheckFailedError) as failed:
        main(out, as_json=True, hooks={"before-message": forget_alice})
    assert failed.value.exit_code == 1
    assert "step 5 failed" in str(failed.value)
    assert "signer-not-enrolled" in str(failed.value)
    last = json.loads(out.getvalue().splitlines()[-1])
    assert last["step"] == "5"
    assert last["ok"] is False
    assert "signer-not-enrolled" in last["error"]
