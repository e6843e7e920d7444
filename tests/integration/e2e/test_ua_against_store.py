"""The UA (``sipcert`` CLI and :class:`AsyncUA`) against real ``sipcert serve`` and dnsmasq.

Issue 4, "Done when": a real DNS server (dnsmasq on a loopback port, SRV and A records) and
real Store processes for example.com and example.net show

- SRV location with priority/weight failover, and the ``certificates.<domain>`` fallback
  (draft §4.1, §4.5);
- enroll → fetch → revoke → fetch with the CLI, two devices of one AOR, ``status`` and
  ``renew --force`` (draft §5, §5.1), ``--json`` output checked against the issue's schema;
- the refusals, each with its own exit code or discard reason: a Store certificate for
  another domain, for a sub-domain, a wildcard, an IP address (exit 5, and no HTTP request
  reaches the Store), an untrusted CA (exit 13), a certificate with a foreign SAN URI and an
  expired certificate served by a misbehaving Store (``san-mismatch``, ``expired``);
- the draft §5 cache: ``--cache-ttl 60`` answers a second fetch without asking the Store,
  ``--cache-ttl 0`` always asks, expiry with an injected clock, and a certificate seen in
  SIP signaling that the cache does not hold triggers a refresh.

Every AOR belongs to one test, so the tests share one Store and still run in any order.
"""

from __future__ import annotations

import asyncio
import json
import re
import stat
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sipcert.client import AsyncUA, ClientConfig, Credentials
from sipcert.proto.certs import generate_identity, sha256_fingerprint
from sipcert.storage import StoredCertificate, open_store
from tests.factories import make_cert, make_key
from tests.integration.client.peers import closed_port
from tests.integration.e2e.conftest import (
    BAD_TLS,
    UNTRUSTED_DOMAIN,
    AccessLog,
    DNSFactory,
    password,
    sipcert,
    srv,
)
from tests.integration.store.conftest import StoreProcess

pytestmark = pytest.mark.peer("dnsmasq")

ZONES = ("example.com", "example.net", "example.org")
#: Lifetime of enrolled certificates: the test Stores allow at most 30 days in all, and the
#: client's certificates start 5 minutes early (clock skew), so a 30-day validity is refused.
VALIDITY = "20"


def store_dns(dns_server: DNSFactory, store: StoreProcess, *domains: str) -> str:
    """dnsmasq with an SRV record for each of ``domains`` pointing at ``store``."""
    records = ["--host-record=store.example.com,127.0.0.1"]
    records += [srv(domain, "store.example.com", store.port) for domain in domains]
    return dns_server(records, ZONES)


def ua_options(dns: str, store: StoreProcess, home: Path, *more: str) -> list[str]:
    return ["--dns", dns, "--ca-file", str(store.files.ca_file), "--home", str(home), *more]


def ok(done: Any) -> Any:
    """The parsed ``--json`` output of a successful command."""
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def search_url(host: str, port: int, aor: str) -> str:
    return f"https://{host}:{port}/search-cgi?email={aor.replace('@', '%40')}"


# -- the JSON schema of issue 4 ---------------------------------------------------------------

_HEX64 = re.compile(r"[0-9a-f]{64}")
_REASONS = {
    "malformed",
    "no-san-uri",
    "san-malformed",
    "san-mismatch",
    "not-yet-valid",
    "expired",
    "weak-signature-algorithm",
    "bad-self-signature",
}


def check_certificate_json(item: dict[str, Any], aor: str) -> x509.Certificate:
    """``{"sha256", "serial", "san", "not_before", "not_after", "pem"}``, all consistent;
    what the Store said about it (``label``, ``enrolled``) comes along from fetch and status."""
    fields = {"sha256", "serial", "san", "not_before", "not_after", "pem"}
    assert set(item) in (fields, fields | {"label", "enrolled"})
    assert _HEX64.fullmatch(item["sha256"])
    assert re.fullmatch(r"[0-9a-f]+", item["serial"])
    assert isinstance(item["san"], list) and item["san"]
    assert all(isinstance(uri, str) and uri.endswith(aor) for uri in item["san"])
    cert = x509.load_pem_x509_certificate(item["pem"].encode("ascii"))
    assert sha256_fingerprint(cert) == item["sha256"]
    assert int(item["serial"], 16) == cert.serial_number
    assert datetime.fromisoformat(item["not_before"]) == cert.not_valid_before_utc
    assert datetime.fromisoformat(item["not_after"]) == cert.not_valid_after_utc
    return cert


def check_fetch_json(data: dict[str, Any], aor: str) -> tuple[list[str], dict[str, str]]:
    """Check a ``fetch --json`` object; return the kept fingerprints and discarded reasons."""
    assert set(data) == {"ok", "exit_code", "aor", "url", "certificates", "discarded"}
    assert data["ok"] is (data["exit_code"] == 0) and data["ok"] is bool(data["certificates"])
    assert data["aor"] == aor
    assert re.fullmatch(r"https://[a-z0-9.-]+:\d+/search-cgi\?email=[^&]+", data["url"])
    kept = [check_certificate_json(item, aor) for item in data["certificates"]]
    discarded: dict[str, str] = {}
    for item in data["discarded"]:
        assert set(item) == {"sha256", "reason"}
        assert _HEX64.fullmatch(item["sha256"])
        assert item["reason"] in _REASONS
        discarded[item["sha256"]] = item["reason"]
    return [sha256_fingerprint(c) for c in kept], discarded


# -- location ---------------------------------------------------------------------------------


def test_srv_priority_and_weight_failover(
    dns_server: DNSFactory, real_store: StoreProcess, tmp_path: Path
) -> None:
    """Two priority-10 targets (weights 60/40) refuse connections; priority 20 is the Store."""
    aor = "frank@example.com"
    dead = {"a.example.com": closed_port(), "b.example.com": closed_port()}
    dns = dns_server(
        [
            srv("example.com", "c.example.com", real_store.port, priority=20, weight=0),
            srv("example.com", "a.example.com", dead["a.example.com"], priority=10, weight=60),
            srv("example.com", "b.example.com", dead["b.example.com"], priority=10, weight=40),
            *(f"--host-record={host}.example.com,127.0.0.1" for host in ("a", "b", "c")),
        ],
        ZONES,
    )
    log = AccessLog(real_store)
    home = tmp_path / "home"
    options = ua_options(dns, real_store, home)

    located = ok(sipcert("locate", aor, *options, "--json"))
    targets = [(t["host"], t["priority"], t["weight"]) for t in located["targets"]]
    assert located["from_srv"] is True
    assert sorted(targets[:2]) == [("a.example.com", 10, 60), ("b.example.com", 10, 40)]
    assert targets[2] == ("c.example.com", 20, 0)

    enrolled = ok(
        sipcert("enroll", aor, *options, "--validity", VALIDITY, "--json", secret=password(aor))
    )
    assert enrolled["status"] == 201
    fetched = sipcert("fetch", aor, *options, "--json", "-v")
    data = ok(fetched)
    kept, discarded = check_fetch_json(data, aor)
    assert kept == [enrolled["certificate"]["sha256"]] and discarded == {}
    assert data["url"] == search_url("c.example.com", real_store.port, aor)
    # The narration shows both priority-10 targets failing before the Store answered.
    narration = fetched.stderr
    for host, port in dead.items():
        assert f"connect to {host}:{port} (127.0.0.1) failed" in narration
    assert narration.index("failed") < narration.index("TLS for example.com verified")

    # The same through the API: events in order, RFC 2782 failover.
    async def main() -> list[tuple[str, str]]:
        config = ClientConfig(dns=dns, ca_file=real_store.files.ca_file, home=home)
        async with AsyncUA(config) as ua:
            result = await ua.fetch(aor)
            assert [sha256_fingerprint(c) for c in result.kept] == kept
            return [(event.kind, event.target.host) for event in ua.events]

    events = asyncio.run(main())
    assert sorted(events[:2]) == [
        ("connect-failed", "a.example.com"),
        ("connect-failed", "b.example.com"),
    ]
    assert events[2:] == [("connected", "c.example.com"), ("tls-verified", "c.example.com")]
    requests = [(r.method, r.status) for r in log.requests(aor) if r.status != 401]
    assert requests == [("PUT", 201), ("GET", 200), ("GET", 200)]


def test_fallback_to_certificates_domain(
    dns_server: DNSFactory, real_store: StoreProcess, tmp_path: Path
) -> None:
    """No SRV record for example.net: the UA uses certificates.example.net (draft §4.5)."""
    aor = "carol@example.net"
    dns = dns_server(["--host-record=certificates.example.net,127.0.0.1"], ZONES)
    options = ua_options(
        dns, real_store, tmp_path / "home", "--fallback-port", str(real_store.port)
    )

    located = ok(sipcert("locate", aor, *options, "--json"))
    assert located["from_srv"] is False
    assert located["url"] == search_url("certificates.example.net", real_store.port, aor)

    enrolled = ok(
        sipcert("enroll", aor, *options, "--validity", VALIDITY, "--json", secret=password(aor))
    )
    assert enrolled["url"] == search_url("certificates.example.net", real_store.port, aor)
    data = ok(sipcert("fetch", aor, *options, "--json"))
    kept, _ = check_fetch_json(data, aor)
    assert kept == [enrolled["certificate"]["sha256"]]
    assert data["url"] == search_url("certificates.example.net", real_store.port, aor)


# -- enrollment and lifecycle with the CLI --------------------------------------------------------


def test_cli_enroll_fetch_revoke_fetch(
    dns_server: DNSFactory, real_store: StoreProcess, tmp_path: Path
) -> None:
    """Two devices of bob in one home (``--device``), each enrolled, fetched and revoked."""
    aor = "bob@example.com"
    dns = store_dns(dns_server, real_store, "example.com")
    home = tmp_path / "home"
    options = ua_options(dns, real_store, home)
    log = AccessLog(real_store)
    secret = password(aor)

    phone = ok(sipcert("enroll", aor, *options, "--validity", VALIDITY, "--json", secret=secret))
    assert set(phone) == {
        "ok",
        "exit_code",
        "aor",
        "device",
        "url",
        "status",
        "home",
        "certificate",
    }
    assert phone["aor"] == aor and phone["status"] == 201
    assert phone["url"] == search_url("store.example.com", real_store.port, aor)
    check_certificate_json(phone["certificate"], aor)
    phone_sha = phone["certificate"]["sha256"]
    key_file = Path(phone["home"]) / "key.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    desk = ok(
        sipcert(
            "enroll",
            aor,
            *options,
            *("--device", "desk", "--validity", VALIDITY, "--json"),
            secret=secret,
        )
    )
    assert desk["device"] == "desk" and desk["status"] == 201
    desk_sha = desk["certificate"]["sha256"]

    out = tmp_path / "out"
    kept, discarded = check_fetch_json(
        ok(sipcert("fetch", aor, *options, "--json", "--out", str(out))), aor
    )
    assert sorted(kept) == sorted([phone_sha, desk_sha]) and discarded == {}
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}.pem" for s in kept)

    revoked = ok(sipcert("revoke", aor, *options, "--cert", desk_sha, "--json", secret=secret))
    assert revoked["revoked"] == [desk_sha] and revoked["all"] is False
    kept, _ = check_fetch_json(ok(sipcert("fetch", aor, *options, "--json")), aor)
    assert kept == [phone_sha]

    revoked = ok(sipcert("revoke", aor, *options, "--json", secret=secret))  # this device's
    assert revoked["revoked"] == [phone_sha]
    empty = sipcert("fetch", aor, *options, "--json")
    assert empty.returncode == 1, empty.stderr  # no certificates: a negative answer
    assert check_fetch_json(json.loads(empty.stdout), aor) == ([], {})
    nothing = sipcert("revoke", aor, *options, "--all", secret=secret)
    assert nothing.returncode == 1 and "nothing to remove" in nothing.stderr

    requests = [(r.method, r.status) for r in log.requests(aor) if r.status != 401]
    assert requests == [
        ("PUT", 201),
        ("PUT", 201),
        ("GET", 200),
        ("DELETE", 204),
        ("GET", 200),
        ("DELETE", 204),
        ("GET", 404),
        ("DELETE", 404),
    ]


def test_two_homes_status_and_renew(
    dns_server: DNSFactory, real_store: StoreProcess, tmp_path: Path
) -> None:
    """Two devices of alice in two homes; ``status`` warnings; ``renew --force``."""
    aor = "alice@example.com"
    dns = store_dns(dns_server, real_store, "example.com")
    laptop = ua_options(dns, real_store, tmp_path / "laptop")
    phone = ua_options(dns, real_store, tmp_path / "phone")
    secret = password(aor)

    first = ok(sipcert("enroll", aor, *laptop, "--validity", VALIDITY, "--json", secret=secret))
    first_sha = first["certificate"]["sha256"]

    # The phone is not enrolled, and the Store holds a certificate it does not know.
    status = sipcert("status", aor, *phone, "--json")
    assert status.returncode == 1
    report = json.loads(status.stdout)
    assert report["enrolled"] is False and report["certificate"] is None
    assert report["unknown"] == [first_sha]
    assert "sipcert: warning: NOT ENROLLED" in status.stderr
    assert "does not know" in status.stderr
    text = sipcert("status", aor, *phone)
    assert text.returncode == 1 and "not enrolled" in text.stdout

    second = ok(sipcert("enroll", aor, *phone, "--validity", VALIDITY, "--json", secret=secret))
    second_sha = second["certificate"]["sha256"]
    kept, _ = check_fetch_json(ok(sipcert("fetch", aor, *laptop, "--json")), aor)
    assert sorted(kept) == sorted([first_sha, second_sha])

    # Each device is enrolled, and warns about the other device's certificate.
    status = sipcert("status", *laptop, "--json")  # the AOR is the one the home holds
    report = ok(status)
    assert report["enrolled"] is True and report["in_store"] is True
    assert report["certificate"]["sha256"] == first_sha
    assert report["unknown"] == [second_sha]
    assert "the Store holds 1 certificate(s)" in status.stderr

    renewed = ok(
        sipcert("renew", *laptop, "--force", "--validity", VALIDITY, "--json", secret=secret)
    )
    assert renewed["renewed"] is True and renewed["old_revoked"] is True
    assert renewed["old"] == first_sha
    check_certificate_json(renewed["new"], aor)
    new_sha = renewed["new"]["sha256"]
    assert new_sha != first_sha
    kept, _ = check_fetch_json(ok(sipcert("fetch", aor, *phone, "--json")), aor)
    assert sorted(kept) == sorted([new_sha, second_sha])  # old revoked, new served

    report = ok(sipcert("status", aor, *laptop, "--json"))
    assert report["certificate"]["sha256"] == new_sha and report["in_store"] is True
    assert report["unknown"] == [second_sha]

    not_due = ok(sipcert("renew", *laptop, "--validity", VALIDITY, "--json", secret=secret))
    assert not_due["renewed"] is False and "outside" in not_due["reason"]


# -- refusals: the Store's TLS certificate (draft §4.3) ------------------------------------------

MISMATCHES = {
    # case: (AOR, SRV target)
    "wrong-domain": ("carol@example.net", "store.example.net"),
    "sub-domain": ("bob@example.org", "certificates.example.org"),
    "wildcard": ("bob@sip.example.com", "store.example.com"),
    "ip-only": ("bob@ip.example.org", "store.example.org"),
}


@pytest.mark.parametrize("case", list(MISMATCHES))
def test_store_certificate_not_naming_the_domain(
    case: str, dns_server: DNSFactory, misconfigured_store: StoreProcess, tmp_path: Path
) -> None:
    """Exit 5 naming both names; the Store sees a handshake but never an HTTP request."""
    aor, target = MISMATCHES[case]
    domain = aor.partition("@")[2]
    names, addresses = BAD_TLS[domain]
    dns = dns_server(
        [srv(domain, target, misconfigured_store.port), f"--host-record={target},127.0.0.1"],
        ZONES,
    )
    options = ua_options(dns, misconfigured_store, tmp_path / "home")
    log = AccessLog(misconfigured_store)

    fetched = sipcert("fetch", aor, *options, "--json", "-v")
    assert fetched.returncode == 5, fetched.stderr
    failure = json.loads(fetched.stdout)  # --json: the error is one object on stdout
    assert (failure["ok"], failure["exit_code"]) == (False, 5)
    shown = f"names {', '.join(names)}" if names else "presents no DNS name"
    assert failure["error"] == (
        f"server certificate {shown}, not the AOR domain '{domain}' (draft §4.3)"
        f" -- at {target} port {misconfigured_store.port} (127.0.0.1)"  # the target refused
    )
    error = f"sipcert: error: {failure['error']}"
    assert f"TCP connected to {target}:{misconfigured_store.port}" in fetched.stderr
    assert f"TLS for {domain} refused" in fetched.stderr
    for address in addresses:
        # An iPAddress SAN is never a name (draft §4.3); the target's own address may show.
        assert address not in error.split(" -- at ")[0]

    # Enrollment follows the same rule: the PUT (and its Digest answer) is never sent.
    enrolled = sipcert("enroll", aor, *options, secret="never-sent")
    assert enrolled.returncode == 5 and enrolled.stderr.splitlines()[-1] == error
    assert not (tmp_path / "home" / "identities").exists()

    assert log.requests() == []


def test_store_certificate_from_an_untrusted_ca(
    dns_server: DNSFactory, untrusted_store: StoreProcess, tmp_path: Path
) -> None:
    """The name is right but the chain does not verify: exit 13, no request."""
    aor = f"carol@{UNTRUSTED_DOMAIN}"
    dns = store_dns(dns_server, untrusted_store, UNTRUSTED_DOMAIN)
    options = ua_options(dns, untrusted_store, tmp_path / "home")
    log = AccessLog(untrusted_store)

    fetched = sipcert("fetch", aor, *options, "--json")
    assert fetched.returncode == 13, fetched.stderr
    failure = json.loads(fetched.stdout)
    assert (failure["ok"], failure["exit_code"]) == (False, 13)
    assert "does not verify" in failure["error"]
    assert "unable to get local issuer certificate" in failure["error"]
    enrolled = sipcert("enroll", aor, *options, secret="never-sent")
    assert enrolled.returncode == 13 and "does not verify" in enrolled.stderr
    assert log.requests() == []


def test_store_that_does_not_serve_the_domain(
    dns_server: DNSFactory, real_store: StoreProcess, tmp_path: Path
) -> None:
    """SRV for example.org points at a Store serving only example.com/.net: SNI refused."""
    aor = "bob@example.org"
    dns = store_dns(dns_server, real_store, "example.org")
    log = AccessLog(real_store)
    fetched = sipcert("fetch", aor, *ua_options(dns, real_store, tmp_path / "home"))
    assert fetched.returncode == 9, fetched.stderr
    assert "TLS server name refused" in fetched.stderr
    assert log.requests() == []


# -- refusals: what a misbehaving Store serves (draft §4.5) ----------------------------------


def _insert(store: StoreProcess, aor: str, cert: x509.Certificate, not_after: datetime) -> str:
    """Put ``cert`` straight into the Store's database, as a misbehaving Store would hold it."""
    der = cert.public_bytes(serialization.Encoding.DER)
    record = StoredCertificate.from_der(
        aor,
        der,
        not_before=cert.not_valid_before_utc,
        not_after=not_after,  # the row may lie about the certificate
        created=datetime.now(UTC),
    )

    async def add() -> None:
        storage = open_store(store.files.db_url)
        try:
            assert await storage.add(record, max_per_aor=100, now=datetime.now(UTC))
        finally:
            await storage.close()

    asyncio.run(add())
    return sha256_fingerprint(cert)


def test_misbehaving_store_foreign_san_and_expired(
    dns_server: DNSFactory, real_store: StoreProcess, tmp_path: Path
) -> None:
    """The Store serves a certificate of another AOR and an expired one: both discarded."""
    aor = "erin@example.com"
    now = datetime.now(UTC)
    dns = store_dns(dns_server, real_store, "example.com")
    options = ua_options(dns, real_store, tmp_path / "home")
    genuine = ok(
        sipcert("enroll", aor, *options, "--validity", VALIDITY, "--json", secret=password(aor))
    )["certificate"]["sha256"]

    foreign = make_cert(
        make_key("ec-p256", aor, 1),
        aor,
        uris=["sip:mallory@example.com"],
        not_before=now - timedelta(days=1),
        not_after=now + timedelta(days=10),
    )
    expired = make_cert(
        make_key("ec-p256", aor, 2),
        aor,
        not_before=now - timedelta(days=20),
        not_after=now - timedelta(days=1),
    )
    foreign_sha = _insert(real_store, aor, foreign, foreign.not_valid_after_utc)
    expired_sha = _insert(real_store, aor, expired, now + timedelta(days=10))

    data = ok(sipcert("fetch", aor, *options, "--json"))
    kept, discarded = check_fetch_json(data, aor)
    assert kept == [genuine]
    assert discarded == {foreign_sha: "san-mismatch", expired_sha: "expired"}

    text = sipcert("fetch", aor, *options)
    assert text.returncode == 0, text.stderr
    assert f"discarded {foreign_sha}: san-mismatch" in text.stdout
    assert f"discarded {expired_sha}: expired" in text.stdout

    # With nothing usable left the answer is negative, and the discards are still listed.
    lone = "zoe@example.com"
    lone_expired = make_cert(
        make_key("ec-p256", lone, 0),
        lone,
        not_before=now - timedelta(days=20),
        not_after=now - timedelta(days=1),
    )
    lone_sha = _insert(real_store, lone, lone_expired, now + timedelta(days=10))
    negative = sipcert("fetch", lone, *options, "--json")
    assert negative.returncode == 1, negative.stderr
    assert check_fetch_json(json.loads(negative.stdout), lone) == ([], {lone_sha: "expired"})


# -- the cache (draft §5) -------------------------------------------------------------------------


def test_cli_cache_ttl(dns_server: DNSFactory, real_store: StoreProcess, tmp_path: Path) -> None:
    """``--cache-ttl 60``: one GET for two fetches; ``--cache-ttl 0``: one GET per fetch;
    an entry cached under a longer TTL is not served past a shorter one."""
    aor = "dave@example.com"
    dns = store_dns(dns_server, real_store, "example.com")
    options = ua_options(dns, real_store, tmp_path / "home")
    enrolled = ok(
        sipcert("enroll", aor, *options, "--validity", VALIDITY, "--json", secret=password(aor))
    )["certificate"]["sha256"]
    log = AccessLog(real_store)

    first = sipcert("fetch", aor, *options, "--cache-ttl", "60")
    second = sipcert("fetch", aor, *options, "--cache-ttl", "60")
    assert first.returncode == second.returncode == 0
    assert "(cached)" not in first.stdout and "(cached)" in second.stdout
    assert enrolled in second.stdout
    assert log.gets(aor) == 1

    for _ in range(2):
        done = sipcert("fetch", aor, *options, "--cache-ttl", "0")
        assert done.returncode == 0 and "(cached)" not in done.stdout
    assert log.gets(aor) == 3

    # The entry kept under the home was cached with TTL 60 more than a second ago: a UA
    # configured with TTL 1 must not use it ("never serve past the TTL").
    time.sleep(1.1)
    shorter = sipcert("fetch", aor, *options, "--cache-ttl", "1")
    assert shorter.returncode == 0 and "(cached)" not in shorter.stdout
    assert log.gets(aor) == 4


def test_api_cache_expiry_and_certificate_in_signaling(
    dns_server: DNSFactory, real_store: StoreProcess, tmp_path: Path
) -> None:
    """Injected clock: served from the cache within the TTL, refreshed for an unknown
    certificate seen in SIP signaling (it was enrolled after the cache was filled)."""
    aor = "grace@example.com"
    dns = store_dns(dns_server, real_store, "example.com")
    credentials = Credentials(password=password(aor))
    validity = timedelta(days=int(VALIDITY))
    config = ClientConfig(
        dns=dns, ca_file=real_store.files.ca_file, home=tmp_path / "caller", cache_ttl=60
    )
    device_config = replace(config, home=tmp_path / "devices", cache_ttl=0)
    clock = [1_000_000.0]
    log = AccessLog(real_store)

    async def main() -> None:
        async with (
            AsyncUA(config, cache_clock=lambda: clock[0]) as caller,
            AsyncUA(device_config) as devices,
            AsyncUA(replace(config, cache_ttl=0)) as uncached,
        ):
            first = await devices.enroll(aor, credentials, device="one", validity=validity)
            log.mark()
            fetched = await caller.fetch(aor)
            assert not fetched.from_cache
            assert fetched.kept == (first.certificate,)
            assert (await caller.fetch(aor)).from_cache
            assert log.gets(aor) == 1

            # Cached already: nothing to ask.
            check = await caller.certificate_in_signaling(aor, first.certificate)
            assert (check.cached, check.refreshed, check.in_store) == (True, False, True)
            assert log.gets(aor) == 1

            # A new device enrolls after the cache was filled; its certificate shows up in
            # signaling: the cache does not hold it, so the Store is asked, and holds it.
            second = await devices.enroll(aor, credentials, device="two", validity=validity)
            cached = await caller.fetch(aor)
            assert cached.from_cache
            assert sha256_fingerprint(second.certificate) not in {
                sha256_fingerprint(c) for c in cached.kept
            }
            check = await caller.certificate_in_signaling(aor, second.certificate)
            assert (check.cached, check.refreshed, check.in_store) == (False, True, True)
            assert log.gets(aor) == 2
            refreshed = await caller.fetch(aor)  # the cache was updated by the check
            assert refreshed.from_cache
            assert sha256_fingerprint(second.certificate) in {
                sha256_fingerprint(c) for c in refreshed.kept
            }

            # A certificate the Store does not hold: asked, and reported as not there.
            stranger = generate_identity(
                first.aor, now=datetime.now(UTC), validity=validity
            ).certificate
            check = await caller.certificate_in_signaling(aor, stranger)
            assert (check.cached, check.refreshed, check.in_store) == (False, True, False)
            assert log.gets(aor) == 3

            # Never served past the TTL (60 s; the Store's max-age is 60 too).
            clock[0] += 59
            assert (await caller.fetch(aor)).from_cache
            clock[0] += 2
            assert not (await caller.fetch(aor)).from_cache
            assert log.gets(aor) == 4

            # TTL 0: every fetch and every signaled certificate goes to the Store.
            for _ in range(2):
                assert not (await uncached.fetch(aor)).from_cache
            check = await uncached.certificate_in_signaling(aor, second.certificate)
            assert (check.cached, check.refreshed, check.in_store) == (False, True, True)
            assert log.gets(aor) == 7

    asyncio.run(main())
