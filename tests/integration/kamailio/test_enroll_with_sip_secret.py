"""One secret for SIP registration and for enrollment (draft §5): Kamailio and the Store share
Kamailio's ``subscriber`` table.

A real Kamailio (contrib/kamailio/kamailio.cfg) and a real ``sipcert serve`` with
``--credentials kamailio+sqlite:////<db>`` read the same SQLite file. SIPp registers at
Kamailio; the project's client (``sipcert enroll`` and the ``AsyncUA`` API) enrolls at the
Store with the same password. The ``ha1``-only row (MD5(user:realm:password), no plaintext)
works with MD5 at both and with SHA-256 at neither.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import ssl
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from sipcert.client import AsyncUA, ClientConfig, Credentials
from sipcert.errors import AuthenticationError
from sipcert.proto.aor import parse_aor
from sipcert.proto.certs import certificate_der, generate_identity
from sipcert.proto.digest import Algorithm, build_authorization, parse_challenges
from tests.integration.kamailio.conftest import ALICE, BOB, CAROL_HA1, sipcert_program
from tests.integration.kamailio.peers import (
    Kamailio,
    SipcertStore,
    SipEndpoint,
    Subscriber,
    sipp_register,
)

pytestmark = [pytest.mark.peer("kamailio"), pytest.mark.peer("sipp")]


def enroll(config: ClientConfig, who: Subscriber, password: str) -> int:
    async def main() -> int:
        async with AsyncUA(config) as ua:
            return (await ua.enroll(who.aor, Credentials(password))).status

    return asyncio.run(main())


def stored(config: ClientConfig, who: Subscriber) -> int:
    """How many certificates of ``who`` the Store serves."""

    async def main() -> int:
        async with AsyncUA(config) as ua:
            return len((await ua.fetch(who.aor, use_cache=False)).kept)

    return asyncio.run(main())


def sipcert_enroll_cli(
    store: SipcertStore, ca_file: Path, home: Path, who: Subscriber, password: str
) -> subprocess.CompletedProcess[str]:
    """``sipcert enroll AOR --store ... --json``, the password on standard input."""
    return subprocess.run(
        [
            sipcert_program(),
            "enroll",
            who.aor,
            "--store",
            f"127.0.0.1:{store.port}",
            "--ca-file",
            str(ca_file),
            "--home",
            str(home),
            "--json",
        ],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_registration_password_enrolls_at_the_store(
    sipp: str,
    kamailio_md5: Kamailio,
    store: SipcertStore,
    ca_file: Path,
    ua_config: ClientConfig,
    tmp_path: Path,
) -> None:
    with SipEndpoint() as device:
        sipp_register(
            sipp,
            kamailio_md5,
            tmp_path,
            ALICE,
            password=ALICE.password,
            contact=device.contact,
            final=200,
        )
    result = sipcert_enroll_cli(store, ca_file, tmp_path / "cli-home", ALICE, ALICE.password)
    assert result.returncode == 0, result.stderr + "\n" + store.describe()
    answer = json.loads(result.stdout)
    assert answer["status"] == 201
    assert answer["aor"] == ALICE.aor
    assert set(answer["certificate"]["san"]) >= {f"sip:{ALICE.aor}"}
    # The Store now serves it, and the log shows whose credentials were used.
    assert stored(ua_config, ALICE) == 1
    assert f"for {ALICE.aor}" in store.log()


def test_a_wrong_password_fails_at_kamailio_and_at_the_store(
    sipp: str,
    kamailio_md5: Kamailio,
    store: SipcertStore,
    ca_file: Path,
    ua_config: ClientConfig,
    tmp_path: Path,
) -> None:
    wrong = "not-" + ALICE.password
    with SipEndpoint() as device:
        sipp_register(
            sipp, kamailio_md5, tmp_path, ALICE, password=wrong, contact=device.contact, final=403
        )
    with pytest.raises(AuthenticationError):
        enroll(ua_config, ALICE, wrong)
    result = sipcert_enroll_cli(store, ca_file, tmp_path / "cli-home", ALICE, wrong)
    assert result.returncode == AuthenticationError.exit_code, result.stdout + result.stderr
    assert "Digest" in json.loads(result.stdout)["error"]  # --json: the error on stdout
    # Unknown users fail the same way as wrong passwords (nothing to tell them apart).
    with pytest.raises(AuthenticationError):
        enroll(ua_config, Subscriber("ghost", "example.com", "x"), "x")
    assert stored(ua_config, ALICE) == 0


def test_a_password_change_in_the_table_applies_to_both_at_once(
    sipp: str,
    kamailio_md5: Kamailio,
    store: SipcertStore,
    subscriber_db: Path,
    ua_config: ClientConfig,
    tmp_path: Path,
) -> None:
    """Neither server caches the secret: ``kamctl passwd`` (an UPDATE) takes effect at once."""
    new = "bob-New-Secret-5"
    conn = sqlite3.connect(subscriber_db)
    with conn:
        conn.execute(
            "UPDATE subscriber SET password = ? WHERE username = ? AND domain = ?",
            (new, BOB.username, BOB.domain),
        )
    conn.close()
    with SipEndpoint() as device:
        sipp_register(
            sipp,
            kamailio_md5,
            tmp_path,
            BOB,
            password=BOB.password,
            contact=device.contact,
            final=403,
        )
        sipp_register(
            sipp, kamailio_md5, tmp_path, BOB, password=new, contact=device.contact, final=200
        )
    with pytest.raises(AuthenticationError):
        enroll(ua_config, BOB, BOB.password)
    assert enroll(ua_config, BOB, new) == 201


# -- the ha1-only subscriber: MD5 only ---------------------------------------------------------


def put_answering(
    store: SipcertStore, ca_file: Path, who: Subscriber, algorithm: Algorithm
) -> tuple[list[str], int, str]:
    """PUT a fresh certificate for ``who``, answering the Store's challenge for ``algorithm``.

    Returns the algorithms the Store offered, the final status and the response body.
    """
    identity = generate_identity(parse_aor(who.aor), now=datetime.now(UTC))
    body = certificate_der(identity.certificate)
    target = f"/search-cgi?email={quote(who.aor, safe='')}"
    url = f"https://127.0.0.1:{store.port}{target}"
    headers = {"Content-Type": "application/pkix-cert", "Host": who.domain}
    extensions = {"sni_hostname": who.domain}
    context = ssl.create_default_context(cafile=str(ca_file))
    with httpx.Client(verify=context, timeout=10) as http:
        first = http.put(url, content=body, headers=headers, extensions=extensions)
        assert first.status_code == 401, first.text
        challenges = parse_challenges(first.headers.get_list("www-authenticate"))
        offered = [c.algorithm for c in challenges]
        chosen = next(c for c in challenges if c.supported_algorithm is algorithm)
        authorization = build_authorization(
            chosen,
            method="PUT",
            uri=target,
            username=who.username,
            password=who.password,
            nc=1,
            cnonce="0a4f113b",
        )
        second = http.put(
            url,
            content=body,
            headers={**headers, "Authorization": authorization},
            extensions=extensions,
        )
    return offered, second.status_code, second.text


def test_ha1_only_subscriber_registers_and_enrolls_with_md5_only(
    sipp: str,
    kamailio_md5: Kamailio,
    store: SipcertStore,
    ca_file: Path,
    ua_config: ClientConfig,
    tmp_path: Path,
) -> None:
    with SipEndpoint() as device:
        sipp_register(
            sipp,
            kamailio_md5,
            tmp_path,
            CAROL_HA1,
            password=CAROL_HA1.password,
            contact=device.contact,
            final=200,
        )
    offered, status, text = put_answering(store, ca_file, CAROL_HA1, Algorithm.SHA256)
    assert set(offered) >= {"SHA-256", "MD5"}
    assert status == 401, text  # the stored HA1 is MD5: a SHA-256 answer cannot be checked
    _, status, text = put_answering(store, ca_file, CAROL_HA1, Algorithm.MD5)
    assert status == 201, text + "\n" + store.describe()
    assert stored(ua_config, CAROL_HA1) == 1


def test_the_ua_enrolls_an_ha1_only_subscriber(ua_config: ClientConfig) -> None:
    assert enroll(ua_config, CAROL_HA1, CAROL_HA1.password) == 201
