"""Kamailio with ``db_mysql`` and the Store sharing one MariaDB ``subscriber`` table (issue 10).

Kamailio deployments keep their subscribers in MySQL/MariaDB more often than anywhere else.
A real Kamailio (contrib/kamailio/kamailio.cfg with ``WITH_MYSQL``) and a real ``sipcert
serve --credentials kamailio+mysql://…`` read the table created from Kamailio's own MySQL
schema files (``/usr/share/kamailio/mysql``); SIPp registers, the project's client enrolls,
and a password change in the table applies to both at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sipcert.client import ClientConfig
from sipcert.errors import AuthenticationError
from sipcert.proto.ca import TestCA
from tests.conftest import require_program
from tests.integration.kamailio.conftest import ALICE, BOB, sipcert_program
from tests.integration.kamailio.peers import Kamailio, SipcertStore, SipEndpoint, sipp_register
from tests.integration.kamailio.test_enroll_with_sip_secret import enroll
from tests.unit.storage.test_storage import mysql_admin, mysql_database

pytestmark = [pytest.mark.peer("kamailio"), pytest.mark.peer("sipp"), pytest.mark.peer("mysql")]

SCHEMA = Path("/usr/share/kamailio/mysql")
DB_MYSQL = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules/db_mysql.so")


@pytest.fixture
def database() -> Iterator[str]:
    """A fresh MariaDB database with Kamailio's ``version`` and ``subscriber`` tables."""
    if not DB_MYSQL.exists() or not (SCHEMA / "auth_db-create.sql").exists():
        require_program("kamailio-mysql-modules-is-not-installed")  # skips, or fails in CI
    with mysql_database() as url:
        name = url.rsplit("/", 1)[1]
        statements = [f"USE `{name}`"]
        for file in ("standard-create.sql", "auth_db-create.sql"):
            statements.append((SCHEMA / file).read_text())
        for who in (ALICE, BOB):
            statements.append(
                "INSERT INTO subscriber (username, domain, password) VALUES "  # noqa: S608
                f"('{who.username}', '{who.domain}', '{who.password}')"
            )
        mysql_admin(*statements)
        yield url


@pytest.fixture
def kamailio_mysql(database: str, tmp_path: Path) -> Iterator[Kamailio]:
    server = Kamailio(
        require_program("kamailio"),
        tmp_path / "unused.sqlite",
        tmp_path,
        defines=["WITH_MYSQL"],
        db_url=database,
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture
def store(database: str, tmp_path: Path) -> Iterator[tuple[SipcertStore, ClientConfig]]:
    ca = TestCA.create(now=datetime.now(UTC))
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    issued = ca.issue(["example.com"], now=datetime.now(UTC))
    cert, key = tmp_path / "example.com.crt", tmp_path / "example.com.key"
    cert.write_bytes(issued.cert_pem)
    key.write_bytes(issued.key_pem)
    server = SipcertStore(
        sipcert_program(),
        tmp_path,
        domain="example.com",
        tls_cert=cert,
        tls_key=key,
        credentials="kamailio+" + database,
    )
    try:
        server.wait_ready()
        config = ClientConfig(
            store=f"127.0.0.1:{server.port}",
            ca_file=tmp_path / "ca.pem",
            home=tmp_path / "home",
            cache_ttl=0,
        )
        yield server, config
    finally:
        server.stop()


def test_one_mysql_subscriber_table_for_kamailio_and_the_store(
    kamailio_mysql: Kamailio,
    store: tuple[SipcertStore, ClientConfig],
    database: str,
    tmp_path: Path,
) -> None:
    sipp = require_program("sipp")
    server, config = store
    with SipEndpoint() as device:
        sipp_register(
            sipp,
            kamailio_mysql,
            tmp_path,
            ALICE,
            password=ALICE.password,
            contact=device.contact,
            final=200,
        )
    assert enroll(config, ALICE, ALICE.password) == 201, server.describe()
    with pytest.raises(AuthenticationError):
        enroll(config, ALICE, "not-" + ALICE.password)

    # kamctl passwd is an UPDATE of the shared table: both servers use the new secret at once.
    new = "bob-New-Mysql-Secret-6"
    name = database.rsplit("/", 1)[1]
    mysql_admin(
        f"UPDATE `{name}`.subscriber SET password = '{new}' WHERE username = 'bob'"  # noqa: S608
    )
    with SipEndpoint() as device:
        sipp_register(
            sipp,
            kamailio_mysql,
            tmp_path,
            BOB,
            password=BOB.password,
            contact=device.contact,
            final=403,
        )
        sipp_register(
            sipp, kamailio_mysql, tmp_path, BOB, password=new, contact=device.contact, final=200
        )
    with pytest.raises(AuthenticationError):
        enroll(config, BOB, BOB.password)
    assert enroll(config, BOB, new) == 201
    assert "WITH_MYSQL" in kamailio_mysql.command and database in " ".join(kamailio_mysql.command)
