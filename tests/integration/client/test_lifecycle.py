"""The client's side of enrollment, status, renewal and revocation over real TLS and DNS
(draft §5, §5.1), and the CLI on top, against a stand-in Store built from the protocol core
whose every request can be inspected. The same flows against a real ``sipcert serve`` are
in ``tests/integration/e2e``."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sipcert.cli import main as cli
from sipcert.client import UA, AsyncUA, ClientConfig, Credentials
from sipcert.errors import AuthenticationError, ForbiddenError
from sipcert.proto.aor import parse_aor
from sipcert.proto.ca import TestCA
from sipcert.proto.certs import (
    cert_hash,
    certificate_der,
    generate_identity,
    sha256_fingerprint,
)
from tests.integration.client.conftest import DNSFactory
from tests.integration.client.peers import FakeStore, TLSServer, server_context, srv

pytestmark = pytest.mark.peer("dnsmasq")

BOB = parse_aor("bob@example.com")
PASSWORD = "correct horse battery"


@pytest.fixture
def store() -> FakeStore:
    return FakeStore({"bob": PASSWORD})


@pytest.fixture
def config(
    dns_server: DNSFactory, ca: TestCA, ca_file: Path, tmp_path: Path, store: FakeStore
) -> Iterator[ClientConfig]:
    context = server_context(ca.issue(["example.com"], now=datetime.now(UTC)), tmp_path)
    server = TLSServer(context, {}, store)
    try:
        dns = dns_server(
            [
                srv("example.com", "a.example.com", server.port),
                "--host-record=a.example.com,127.0.0.1",
            ],
            ["example.com"],
        )
        yield ClientConfig(dns=dns, ca_file=ca_file, home=tmp_path / "home", cache_ttl=0)
    finally:
        server.close()


def test_enroll_status_renew_revoke(config: ClientConfig, store: FakeStore) -> None:
    credentials = Credentials(PASSWORD)

    async def main() -> None:
        async with AsyncUA(config) as ua:
            phone = await ua.enroll(BOB, credentials, device="phone")
            assert phone.status == 201
            laptop = await ua.enroll(BOB, credentials, device="laptop", passphrase=b"s3cret")
            assert laptop.status == 201
            fetched = await ua.fetch(BOB)
            assert {sha256_fingerprint(c) for c in fetched.kept} == {
                sha256_fingerprint(phone.certificate),
                sha256_fingerprint(laptop.certificate),
            }
            key = phone.directory / "key.pem"
            assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
            assert b"ENCRYPTED" in (laptop.directory / "key.pem").read_bytes()

            status = await ua.status(BOB, device="phone")
            assert status.ok and status.unknown == () and status.warnings == ()

            # Someone else enrolled a certificate: status warns about it.
            intruder = generate_identity(BOB, now=datetime.now(UTC))
            store.certificates[str(BOB)].append(certificate_der(intruder.certificate))
            status = await ua.status(BOB, device="phone")
            assert [sha256_fingerprint(c) for c in status.unknown] == [
                sha256_fingerprint(intruder.certificate)
            ]
            assert any("does not know" in w for w in status.warnings)
            await ua.revoke(BOB, credentials, sha256=sha256_fingerprint(intruder.certificate))

            outside = await ua.renew(BOB, credentials, device="phone")
            assert not outside.renewed
            renewal = await ua.renew(BOB, credentials, device="phone", window=timedelta(days=60))
            assert renewal.renewed and renewal.old_revoked and renewal.new is not None
            served = {sha256_fingerprint(c) for c in (await ua.fetch(BOB)).kept}
            assert served == {
                sha256_fingerprint(renewal.new.certificate),
                sha256_fingerprint(laptop.certificate),
            }
            assert ua.home.retired(BOB, "phone") == []

            await ua.revoke(BOB, credentials, device="laptop")
            assert len((await ua.fetch(BOB)).kept) == 1
            await ua.revoke(BOB, credentials, everything=True)
            assert (await ua.fetch(BOB)).kept == ()
            status = await ua.status(BOB, device="phone")
            assert not status.ok
            assert any("NOT ENROLLED" in w for w in status.warnings)

    asyncio.run(main())


def test_stale_nonce_is_answered_again(config: ClientConfig, store: FakeStore) -> None:
    store.stale_once = True

    async def main() -> None:
        async with AsyncUA(config) as ua:
            assert (await ua.enroll(BOB, Credentials(PASSWORD))).status == 201

    asyncio.run(main())
    assert store.statuses == [401, 401, 201]


def test_wrong_password_and_foreign_aor(config: ClientConfig, store: FakeStore) -> None:
    async def main() -> None:
        async with AsyncUA(config) as ua:
            with pytest.raises(AuthenticationError):
                await ua.enroll(BOB, Credentials("wrong"))
            # bob authenticates but asks to store a certificate for alice's AOR
            with pytest.raises(ForbiddenError) as caught:
                await ua.enroll("alice@example.com", Credentials(PASSWORD, username="bob"))
            assert caught.value.reason == "aor-user-mismatch"
            assert not ua.home.has_identity(BOB)

    asyncio.run(main())


def cli_args(config: ClientConfig, *rest: str) -> list[str]:
    return [
        *rest[:1],
        "--dns",
        str(config.dns),
        "--ca-file",
        str(config.ca_file),
        "--home",
        str(config.home),
        *rest[1:],
    ]


def test_cli_enroll_fetch_revoke(
    config: ClientConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    assert cli.main(cli_args(config, "fetch", str(BOB))) == 1  # nothing enrolled yet
    capsys.readouterr()
    assert (
        cli.main(cli_args(config, "enroll", str(BOB), "--password-file", str(password_file))) == 0
    )
    assert "enrolled bob@example.com" in capsys.readouterr().out
    out_dir = tmp_path / "out"
    code = cli.main(cli_args(config, "fetch", str(BOB), "--json", "--out", str(out_dir)))
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    assert set(document) == {"ok", "exit_code", "aor", "url", "certificates", "discarded"}
    assert document["aor"] == "bob@example.com"
    (certificate,) = document["certificates"]
    assert set(certificate) == {
        "sha256",
        "serial",
        "san",
        "not_before",
        "not_after",
        "pem",
        "label",
        "enrolled",
    }
    # This stand-in Store sends no label or date (certificates_response's defaults).
    assert certificate["label"] is None and certificate["enrolled"] is None
    assert certificate["san"] == ["sip:bob@example.com", "im:bob@example.com"]
    assert (out_dir / f"{certificate['sha256']}.pem").read_text() == certificate["pem"]
    assert cli.main(cli_args(config, "status", "--json")) == 0
    assert json.loads(capsys.readouterr().out)["enrolled"] is True
    code = cli.main(
        cli_args(config, "revoke", str(BOB), "--all", "--password-file", str(password_file))
    )
    assert code == 0
    assert cli.main(cli_args(config, "status")) == 1
    captured = capsys.readouterr()
    assert "NOT ENROLLED" in captured.err


def test_cli_revoke_by_cert_hash_or_sha256_and_malformed_is_4(
    config: ClientConfig, store: FakeStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``revoke --cert`` takes the RFC 4387 §2.1 certHash the Store speaks (27 characters)
    or our SHA-256; anything else is malformed input (exit 4) and reaches no Store."""
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    enroll = ("--password-file", str(password_file))
    revoke = (*enroll, "--json")
    with UA(config) as ua:
        first = ua.enroll(BOB, Credentials(PASSWORD), device="one").certificate
        second = ua.enroll(BOB, Credentials(PASSWORD), device="two").certificate
    served = len(store.statuses)
    for bad in ("zz", cert_hash(first) + "=", cert_hash(first)[:-1] + "-", "ab" * 31):
        assert cli.main(cli_args(config, "revoke", str(BOB), "--cert", bad, *enroll)) == 4
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
    assert len(store.statuses) == served  # refused before any request

    rfc_hash = cert_hash(first)
    assert len(rfc_hash) == 27 and "=" not in rfc_hash
    assert cli.main(cli_args(config, "revoke", str(BOB), "--cert", rfc_hash, *revoke)) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["cert_hashes"] == [rfc_hash]
    assert document["revoked"] == [sha256_fingerprint(first)]
    fingerprint = sha256_fingerprint(second).upper()
    assert cli.main(cli_args(config, "revoke", str(BOB), "--cert", fingerprint, *revoke)) == 0
    assert json.loads(capsys.readouterr().out)["cert_hashes"] == [cert_hash(second)]
    assert store.certificates[str(BOB)] == []


def test_cli_locate_narrates(config: ClientConfig, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(cli_args(config, "locate", "bob@example.com")) == 0
    out = capsys.readouterr().out
    assert "DNS SRV query _certificates._tcp.example.com" in out
    assert "URL https://a.example.com:" in out


def test_synchronous_facade(config: ClientConfig) -> None:
    from sipcert.client import UA

    with UA(config) as ua:
        enrollment = ua.enroll(BOB, Credentials(PASSWORD))
        result = ua.fetch(BOB)
        assert [sha256_fingerprint(c) for c in result.kept] == [
            sha256_fingerprint(enrollment.certificate)
        ]
        assert ua.status(BOB).ok
        check = ua.certificate_in_signaling(BOB, enrollment.certificate)
        assert check.in_store and check.refreshed  # cache_ttl=0: always asks the Store
