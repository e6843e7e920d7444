"""``sipcert ua`` and ``sipcert message send`` without ``--proxy`` (issue 12, RFC 3263).

dnsmasq serves, besides the Stores' SRV records, NAPTR ``SIP+D2T`` -> SRV
``_sip._tcp.example.net`` -> ``sip.example.net`` (A 127.0.0.1) at the port of a real
Kamailio. Bob's ``sipcert ua`` is given only ``--dns``: its REGISTER (Request-URI
``sip:example.net``, RFC 3261 §10.2) must reach Kamailio over TCP, pass its Digest and be
answered 200; Alice's ``message send`` must find the same server for the callee's domain and
Bob's UA must print the verified MESSAGE. A domain without SIP records is one error line
with LocationError's exit code (3).
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from sipcert.errors import LocationError
from tests.integration.client.peers import srv
from tests.integration.kamailio.peers import SipcertStore
from tests.integration.secure.conftest import (
    ALICE,
    BOB,
    DOMAINS,
    DNSFactory,
    KamailioFactory,
    sipcert_program,
)
from tests.integration.secure.test_secure_e2e import Events

pytestmark = [pytest.mark.peer("kamailio"), pytest.mark.peer("dnsmasq")]


def _store_records(stores: dict[str, SipcertStore]) -> list[str]:
    records: list[str] = []
    for domain, server in stores.items():
        records.append(srv(domain, f"certs.{domain}", server.port))
        records.append(f"--host-record=certs.{domain},127.0.0.1")
    return records


def _run(command: list[str], secret: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        input=f"{secret}\n" if secret is not None else None,
        stdin=subprocess.DEVNULL if secret is None else None,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def test_cli_without_proxy_registers_and_sends_where_dns_says(
    start_kamailio: KamailioFactory,
    dns_server: DNSFactory,
    stores: dict[str, SipcertStore],
    ca_file: Path,
    tmp_path: Path,
) -> None:
    kamailio = start_kamailio(())
    dns = dns_server(
        [
            *_store_records(stores),
            "--naptr-record=example.net,10,10,s,SIP+D2T,,_sip._tcp.example.net",
            f"--srv-host=_sip._tcp.example.net,sip.example.net,{kamailio.port},10,0",
            "--host-record=sip.example.net,127.0.0.1",
        ],
        DOMAINS,
    )
    program = sipcert_program()
    common = ["--dns", dns, "--ca-file", str(ca_file), "--json"]
    alice_home, bob_home = tmp_path / "alice-home", tmp_path / "bob-home"
    enrolled = _run(
        [program, "enroll", ALICE.aor, "--home", str(alice_home), "--validity", "20", *common],
        secret=ALICE.password,
    )
    assert enrolled.returncode == 0, enrolled.stderr
    secret = tmp_path / "bob.password"
    secret.write_text(BOB.password + "\n")
    bob = subprocess.Popen(
        [
            *(program, "ua", BOB.aor, "--home", str(bob_home), "--password-file", str(secret)),
            *("--validity", "20", *common),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        events = Events(bob)
        assert events.next()["event"] == "certificate"
        registered = events.next()
        assert (registered["event"], registered["status"]) == ("registered", 200), (
            registered,
            kamailio.describe(),
        )
        # The 200 is Kamailio's, after its Digest challenge: the REGISTER arrived there.
        assert f"REGISTER sip:{BOB.aor} from 127.0.0.1:" in kamailio.log(), kamailio.describe()

        sent = _run(
            [
                *(program, "message", "send", ALICE.aor, BOB.aor, "--text", "found by NAPTR"),
                *("--home", str(alice_home), *common),
            ],
            secret=ALICE.password,
        )
        assert sent.returncode == 0, (sent.stdout, sent.stderr, kamailio.describe())
        result = json.loads(sent.stdout)
        assert (result["event"], result["status"]) == ("sent", 200)
        message = events.next()
        assert (message["event"], message["verified"]) == ("message", True), message
        assert message["text"] == "found by NAPTR"
    finally:
        if bob.poll() is None:
            bob.send_signal(signal.SIGTERM)
        try:
            bob.wait(timeout=30)
        except subprocess.TimeoutExpired:
            bob.kill()
            bob.wait(timeout=10)
        assert bob.stderr is not None
        errors = bob.stderr.read()
        bob.stderr.close()
    assert bob.returncode == 0, errors
    unregistered = events.next(timeout=10)
    assert (unregistered["event"], unregistered["status"]) == ("unregistered", 200), errors


def test_cli_without_proxy_and_no_sip_records_is_one_location_error(
    dns_server: DNSFactory,
    stores: dict[str, SipcertStore],
    ca_file: Path,
    tmp_path: Path,
) -> None:
    """The Store of example.net is found, its SIP server is not: exit 3, one line."""
    dns = dns_server(_store_records(stores), DOMAINS)
    secret = tmp_path / "bob.password"
    secret.write_text(BOB.password + "\n")
    done = _run(
        [
            *(sipcert_program(), "ua", BOB.aor, "--home", str(tmp_path / "home")),
            *("--password-file", str(secret), "--validity", "20"),
            *("--dns", dns, "--ca-file", str(ca_file)),
        ]
    )
    assert done.returncode == LocationError.exit_code == 3, (done.stdout, done.stderr)
    assert done.stdout.startswith("certificate enrolled: ")
    assert "registered" not in done.stdout
    [line] = done.stderr.splitlines()
    assert line.startswith("sipcert: error: no next hop for example.net in DNS (RFC 3263): ")
    assert "example.net has no A or AAAA record" in line
    assert line.endswith("(give --proxy URI, or --dns a server that knows example.net)")
