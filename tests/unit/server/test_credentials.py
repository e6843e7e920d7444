"""Credential sources for the Store's Digest check (draft §5: the SIP registration secret)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import stat
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipcert.errors import AORError, ConfigError, InputTooLargeError, NotFoundError, StorageError
from sipcert.proto.aor import digest_username, parse_aor
from sipcert.proto.digest import Algorithm, StoredCredential, compute_ha1
from sipcert.server.credentials import (
    FileCredentials,
    KamailioPostgresCredentials,
    KamailioSQLiteCredentials,
    open_credentials,
    split_aor,
)
from tests.conftest import IN_CI

T = TypeVar("T")
PASSWORD = "correct horse battery staple"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def both_ha1(user: str, realm: str, password: str) -> dict[Algorithm, str]:
    return {alg: compute_ha1(alg, user, realm, password) for alg in Algorithm}


# -- the local AOR check --------------------------------------------------------------------------


def test_split_aor() -> None:
    assert split_aor("alice@Example.COM") == ("alice", "example.com")
    assert split_aor("sip:Alice.Smith+x@example.net") == ("Alice.Smith+x", "example.net")
    assert split_aor("b%6Fb%25x@example.com") == ("bob%x", "example.com")
    for bad in [
        "alice@[2001:db8::1]",  # an AOR needs a domain
        "alice",
        "@example.com",
        "a:b@example.com",
        "a b@example.com",
        "a@b@c",
        "a@",
        "a@-x",
    ]:
        with pytest.raises(AORError):
            split_aor(bad)


# -- FileCredentials ------------------------------------------------------------------------------


@pytest.fixture
def users_path(tmp_path: Path) -> Path:
    return tmp_path / "etc" / "users.json"


def test_file_round_trip(users_path: Path) -> None:
    source = FileCredentials(users_path)
    assert source.list() == []
    source.add("alice@Example.com", PASSWORD)
    source.add("bob@example.org", "other")
    assert source.list() == ["alice@example.com", "bob@example.org"]

    alice = run(source.lookup("alice", "EXAMPLE.com"))
    assert alice == StoredCredential(ha1=both_ha1("alice", "example.com", PASSWORD))
    assert alice.ha1_for(Algorithm.SHA256, "alice", "example.com") == compute_ha1(
        Algorithm.SHA256, "alice", "example.com", PASSWORD
    )
    assert run(source.lookup("alice", "example.org")) is None
    assert run(source.lookup("Alice", "example.com")) is None  # user parts are case-sensitive
    assert run(source.lookup("carol", "example.com")) is None

    source.set_password("alice@example.com", "new secret")
    assert run(source.lookup("alice", "example.com")) == StoredCredential(
        ha1=both_ha1("alice", "example.com", "new secret")
    )
    source.remove("alice@example.com")
    assert source.list() == ["bob@example.org"]
    assert run(source.lookup("alice", "example.com")) is None
    run(source.close())


def test_file_holds_no_password_and_is_private(users_path: Path) -> None:
    source = FileCredentials(users_path)
    source.add("alice@example.com", PASSWORD)
    text = users_path.read_text()
    assert PASSWORD not in text
    assert json.loads(text) == {
        "version": 1,
        "users": {
            "alice@example.com": {
                "MD5": compute_ha1(Algorithm.MD5, "alice", "example.com", PASSWORD),
                "SHA-256": compute_ha1(Algorithm.SHA256, "alice", "example.com", PASSWORD),
            }
        },
    }
    assert stat.S_IMODE(users_path.stat().st_mode) == 0o600
    # No temporary files are left behind; only the file and its lock file.
    assert sorted(p.name for p in users_path.parent.iterdir()) == [".users.json.lock", "users.json"]
    assert PASSWORD not in repr(source)


def test_file_errors(users_path: Path) -> None:
    source = FileCredentials(users_path)
    with pytest.raises(ConfigError, match="does not exist"):
        run(source.lookup("alice", "example.com"))
    source.add("alice@example.com", PASSWORD)
    with pytest.raises(ConfigError, match="already exists") as info:
        source.add("alice@EXAMPLE.com", "x")
    assert PASSWORD not in str(info.value)
    with pytest.raises(NotFoundError):
        source.set_password("bob@example.com", "x")
    with pytest.raises(NotFoundError):
        source.remove("bob@example.com")
    with pytest.raises(ConfigError, match="empty"):
        source.set_password("alice@example.com", "")
    with pytest.raises(AORError):
        source.add("not an aor", "x")
    assert source.list() == ["alice@example.com"]


def test_file_reloads_after_external_change(
    users_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The running server sees `sipcert user add` at once, reading the file only when changed."""
    server = FileCredentials(users_path)
    cli = FileCredentials(users_path)
    cli.add("alice@example.com", PASSWORD)

    loads = 0
    real_load = server._load

    def counting_load(*, missing_ok: bool) -> Any:
        nonlocal loads
        loads += 1
        return real_load(missing_ok=missing_ok)

    monkeypatch.setattr(server, "_load", counting_load)

    async def scenario() -> None:
        assert await server.lookup("bob", "example.com") is None
        assert await server.lookup("alice", "example.com") is not None
        assert loads == 1  # unchanged file: a stat, no re-read
        cli.add("bob@example.com", "bobs")
        assert await server.lookup("bob", "example.com") is not None
        assert loads == 2
        cli.remove("alice@example.com")
        assert await server.lookup("alice", "example.com") is None

    run(scenario())


def test_file_concurrent_writers_lose_nothing(users_path: Path) -> None:
    def add(n: int) -> None:
        FileCredentials(users_path).add(f"user{n}@example.com", f"pw{n}")

    threads = [threading.Thread(target=add, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(FileCredentials(users_path).list()) == 8


MD5_HEX = "0" * 32


@pytest.mark.parametrize(
    ("content", "what"),
    [
        (b"{not json", "not JSON .line 1"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[]", "top level"),
        (b'{"users": {}}', "version"),
        (b'{"version": 1}', "users"),
    ],
)
def test_file_malformed(users_path: Path, content: bytes, what: str) -> None:
    users_path.parent.mkdir()
    users_path.write_bytes(content)
    source = FileCredentials(users_path)
    with pytest.raises(ConfigError, match=what) as info:
        run(source.lookup("a", "example.com"))
    assert str(users_path) in str(info.value)
    with pytest.raises(ConfigError, match=what):
        source.add("b@example.com", "x")  # a CLI write never clobbers a broken file
    assert users_path.read_bytes() == content


def _poisoned(entry: bytes) -> bytes:
    """A users file: alice on line 4, then the bad entry on line 5, then bob."""
    good = {alg: ha1 for alg, ha1 in both_ha1("alice", "example.com", PASSWORD).items()}
    bob = both_ha1("bob", "example.com", "bobs")
    return (
        b'{\n  "version": 1,\n  "users": {\n'
        + b"    %s,\n" % json.dumps({"alice@example.com": good}).encode()[1:-1]
        + b"    %s,\n" % entry
        + b"    %s\n  }\n}\n" % json.dumps({"bob@example.com": bob}).encode()[1:-1]
    )


HA1S = json.dumps({str(a): h for a, h in both_ha1("x", "example.com", "x").items()}).encode()


@pytest.mark.parametrize(
    ("entry", "what"),
    [
        # What the old `user add 'zo%C3%AB@example.com'` / 'a%20b@...' wrote (issue 9).
        (b'"zo\\u00eb@example.com": ' + HA1S, "rename the key to zo%C3%AB@example.com"),
        (b'"a b@example.com": ' + HA1S, "rename the key to a%20b@example.com"),
        (b'"a%0Ab@example.com": ' + HA1S, "control or format character U.000A"),
        (b'"%FF@example.com": ' + HA1S, "UTF-8"),
        (b'"a%3Bb@example.com": ' + HA1S, "names a;b@example.com"),
        (b'"alice": ' + HA1S, "not user@"),
        (b'"a@Example.com": ' + HA1S, "canonical spelling .* a@example.com"),
        (b'"b%6Fb@example.com": ' + HA1S, "canonical spelling .* bob@example.com"),
        (b'"a@example.com": {}', "HA1 values"),
        (b'"a@example.com": []', "HA1 values"),
        (b'"a@example.com": {"SHA-1": "00"}', "unknown algorithm"),
        (b'"a@example.com": {"MD5": "xyz"}', "lowercase hex"),
        (b'"a@example.com": {"SHA-256": "%s"}' % MD5_HEX.encode(), "hex"),
        (b'"alice@example.com": ' + HA1S, "second entry .*line 4"),
    ],
)
def test_file_bad_entry_is_refused_alone(
    users_path: Path, entry: bytes, what: str, caplog: pytest.LogCaptureFixture
) -> None:
    users_path.parent.mkdir()
    content = _poisoned(entry)
    users_path.write_bytes(content)
    source = FileCredentials(users_path)
    alice, bob = (
        run(source.lookup("alice", "example.com")),
        run(source.lookup("bob", "example.com")),
    )
    assert alice is not None and bob is not None
    assert alice.ha1_for(Algorithm.SHA256, "alice", "example.com") == compute_ha1(
        Algorithm.SHA256, "alice", "example.com", PASSWORD
    )
    [refused] = source.refused
    line = 5
    assert refused.line == line
    assert re.search(what, refused.reason), refused.reason
    [record] = [r for r in caplog.records if "refused" in r.getMessage()]
    assert record.levelname == "WARNING"
    assert f"{users_path} line {line}: user " in record.getMessage()
    assert re.search(what, record.getMessage())
    assert source.list() == ["alice@example.com", "bob@example.com"]
    # A CLI write keeps the refused entry as it was and loses nobody.
    source.add("carol@example.com", "carols")
    again = FileCredentials(users_path)
    assert again.list() == ["alice@example.com", "bob@example.com", "carol@example.com"]
    assert [(e.key, e.value, e.reason) for e in again.refused] == [
        (refused.key, refused.value, refused.reason)
    ]


# -- Kamailio's subscriber table --------------------------------------------------------------

# Kamailio 5.x utils/kamctl/sqlite/auth_db-create.sql and postgres/auth_db-create.sql.
KAMAILIO_SQLITE_SCHEMA = """
CREATE TABLE subscriber (
    id INTEGER PRIMARY KEY NOT NULL,
    username VARCHAR(64) DEFAULT '' NOT NULL,
    domain VARCHAR(64) DEFAULT '' NOT NULL,
    password VARCHAR(64) DEFAULT '' NOT NULL,
    ha1 VARCHAR(128) DEFAULT '' NOT NULL,
    ha1b VARCHAR(128) DEFAULT '' NOT NULL,
    CONSTRAINT subscriber_account_idx UNIQUE (username, domain)
);
CREATE INDEX subscriber_username_idx ON subscriber (username);
"""
KAMAILIO_POSTGRES_SCHEMA = """
CREATE TABLE subscriber (
    id SERIAL PRIMARY KEY NOT NULL,
    username VARCHAR(64) DEFAULT '' NOT NULL,
    domain VARCHAR(64) DEFAULT '' NOT NULL,
    password VARCHAR(64) DEFAULT '' NOT NULL,
    ha1 VARCHAR(128) DEFAULT '' NOT NULL,
    ha1b VARCHAR(128) DEFAULT '' NOT NULL,
    CONSTRAINT subscriber_account_idx UNIQUE (username, domain)
);
CREATE INDEX subscriber_username_idx ON subscriber (username);
"""

BOB_HA1 = compute_ha1(Algorithm.MD5, "bob", "example.com", "bobs secret")
ROWS = [
    # username, domain, password, ha1, ha1b
    ("alice", "example.com", PASSWORD, "", ""),
    ("bob", "example.com", "", BOB_HA1, "ignored"),
    ("carol", "example.com", "", "", ""),
    ("dave", "Example.NET", "daves", "", ""),
    ("erin", "Example.ORG", "upper", "", ""),
    ("erin", "example.org", "lower", "", ""),
]


async def check_kamailio_semantics(
    lookup: Callable[[str, str], Awaitable[StoredCredential | None]],
) -> None:
    """The same expectations for every Kamailio backend (see the module doc of credentials)."""
    alice = await lookup("alice", "example.com")
    assert alice == StoredCredential(password=PASSWORD)
    for alg in Algorithm:  # plaintext: MD5 and SHA-256 both work
        assert alice.ha1_for(alg, "alice", "example.com") == compute_ha1(
            alg, "alice", "example.com", PASSWORD
        )
    bob = await lookup("bob", "example.com")
    assert bob == StoredCredential(ha1={Algorithm.MD5: BOB_HA1})  # ha1 only: MD5 only
    assert bob.ha1_for(Algorithm.SHA256, "bob", "example.com") is None
    assert await lookup("carol", "example.com") is None  # neither password nor ha1
    assert await lookup("nobody", "example.com") is None
    assert await lookup("alice", "example.org") is None  # the domain counts
    assert await lookup("Alice", "example.com") is None  # usernames: exact
    assert await lookup("alice", "EXAMPLE.com") == alice  # domains: any ASCII case
    assert await lookup("dave", "example.net") == StoredCredential(password="daves")
    # Two spellings of one domain: the lower-case row wins.
    assert await lookup("erin", "example.org") == StoredCredential(password="lower")


@pytest.fixture
def kamailio_db(tmp_path: Path) -> Path:
    path = tmp_path / "kamailio.db"
    conn = sqlite3.connect(path)
    try:
        conn.executescript(KAMAILIO_SQLITE_SCHEMA)
        conn.executemany(
            "INSERT INTO subscriber (username, domain, password, ha1, ha1b) VALUES (?, ?, ?, ?, ?)",
            ROWS,
        )
        conn.commit()
    finally:
        conn.close()
    return path


def test_kamailio_sqlite(kamailio_db: Path) -> None:
    before = kamailio_db.read_bytes(), kamailio_db.stat().st_mtime_ns
    source = KamailioSQLiteCredentials(kamailio_db)
    run(check_kamailio_semantics(source.lookup))
    run(source.close())
    assert (kamailio_db.read_bytes(), kamailio_db.stat().st_mtime_ns) == before  # read-only
    assert sorted(os.listdir(kamailio_db.parent)) == ["kamailio.db"]
    assert PASSWORD not in repr(source)


def test_kamailio_sqlite_errors(tmp_path: Path) -> None:
    missing = KamailioSQLiteCredentials(tmp_path / "missing.db")
    with pytest.raises(StorageError, match="cannot be opened"):
        run(missing.lookup("alice", "example.com"))
    assert not (tmp_path / "missing.db").exists()  # mode=ro never creates it

    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    with pytest.raises(StorageError, match="no such table"):
        run(KamailioSQLiteCredentials(empty).lookup("alice", "example.com"))

    with pytest.raises(ConfigError):
        KamailioSQLiteCredentials(empty, table="subscriber; DROP TABLE x")


# -- PostgreSQL ----------------------------------------------------------------------------------

ADMIN_DSN = os.environ.get("SIPCERT_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def kamailio_pg_dsn() -> Iterator[str]:
    """A DSN whose search_path is a fresh schema holding Kamailio's subscriber table."""
    import asyncpg  # type: ignore[import-untyped]

    schema = f"sipcert_test_{uuid.uuid4().hex[:12]}"

    async def admin(*statements: str, rows: Sequence[tuple[str, ...]] = ()) -> None:
        conn = await asyncpg.connect(ADMIN_DSN, timeout=5)
        try:
            for statement in statements:
                await conn.execute(statement)
            if rows:
                await conn.executemany(
                    "INSERT INTO subscriber (username, domain, password, ha1, ha1b) "
                    "VALUES ($1, $2, $3, $4, $5)",
                    rows,
                )
        finally:
            await conn.close()

    try:
        run(
            admin(
                f"CREATE SCHEMA {schema}",
                f"SET search_path = {schema}",
                KAMAILIO_POSTGRES_SCHEMA,
                rows=ROWS,
            )
        )
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        message = f"PostgreSQL at {ADMIN_DSN} is not usable: {exc}"
        if IN_CI:
            pytest.fail(message + " (CI=true: peers are required)")
        pytest.skip(message)
    try:
        yield f"{ADMIN_DSN}?search_path={schema}"
    finally:
        run(admin(f"DROP SCHEMA {schema} CASCADE"))


@pytest.mark.peer("psql")
def test_kamailio_postgres(kamailio_pg_dsn: str) -> None:
    source = KamailioPostgresCredentials(kamailio_pg_dsn)

    async def scenario() -> None:  # one event loop for the pool's whole life
        try:
            concurrent = [source.lookup("alice", "example.com") for _ in range(8)]
            assert len({c.password for c in await asyncio.gather(*concurrent) if c}) == 1
            await check_kamailio_semantics(source.lookup)
        finally:
            await source.close()

    run(scenario())


def test_kamailio_postgres_unreachable_hides_the_password() -> None:
    source = KamailioPostgresCredentials("postgresql://kam:s3cr3t@127.0.0.1:1/kamailio", timeout=2)
    assert "s3cr3t" not in repr(source)

    async def scenario() -> None:
        try:
            with pytest.raises(StorageError, match=re.escape("127.0.0.1:1/kamailio")) as info:
                await source.lookup("alice", "example.com")
            assert "s3cr3t" not in str(info.value)
        finally:
            await source.close()

    run(scenario())


# -- open_credentials -------------------------------------------------------------------------


def test_open_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    source = open_credentials(f"file://{tmp_path}/users%20file.json")
    assert isinstance(source, FileCredentials) and source.path == tmp_path / "users file.json"
    source = open_credentials("file:rel/users.json")
    assert isinstance(source, FileCredentials) and source.path == tmp_path / "rel" / "users.json"
    source = open_credentials("kamailio+sqlite:////var/lib/kamailio/kamailio.db")
    assert isinstance(source, KamailioSQLiteCredentials)
    assert source.path == Path("/var/lib/kamailio/kamailio.db")
    source = open_credentials("kamailio+sqlite:///kamailio.db")
    assert isinstance(source, KamailioSQLiteCredentials)
    assert source.path == tmp_path / "kamailio.db"
    for url in ("kamailio+postgresql://kam:s3cr3t@db:5433/kamailio", "kamailio+postgres://db/k"):
        pg = open_credentials(url)
        assert isinstance(pg, KamailioPostgresCredentials)
        assert "s3cr3t" not in repr(pg)
        run(pg.close())


@pytest.mark.parametrize(
    "url",
    [
        "ldap://admin:s3cr3t@ldap/users",
        "users.json",
        "file://otherhost/users.json",
        "file:///users.json?x=1",
        "kamailio+sqlite://host/kamailio.db",
    ],
)
def test_open_credentials_refuses(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        open_credentials(url)
    assert "s3cr3t" not in str(info.value)


# -- the users file's one rule: what `user add` accepts loads back (issue 9) ----------------


def test_file_escaped_user_parts_load_back(users_path: Path) -> None:
    writer = FileCredentials(users_path)
    for aor, password in [
        ("zo%C3%AB@example.com", "zoes"),
        ("a%20b@example.com", "spaces"),
        ("b%6Fb%25x@Example.com", "percent"),
        ("alice@example.com", PASSWORD),
    ]:
        writer.add(aor, password)
    reader = FileCredentials(users_path)
    assert reader.list() == [
        "a%20b@example.com",
        "alice@example.com",
        "bob%25x@example.com",
        "zo%C3%AB@example.com",
    ]
    assert reader.refused == []
    # Looked up by the Digest username a UA sends (the user part unescaped), HA1 over it.
    for username, password in [("zoë", "zoes"), ("a b", "spaces"), ("bob%x", "percent")]:
        found = run(reader.lookup(username, "example.com"))
        assert found is not None, username
        assert found.ha1 == both_ha1(username, "example.com", password)
    assert run(reader.lookup("zo%C3%AB", "example.com")) is None  # that is another name
    assert run(reader.lookup("a\nb", "example.com")) is None
    assert run(reader.lookup("x" * 300, "example.com")) is None
    reader.set_password("zo%c3%ab@example.com", "new")
    reader.remove("a%20b@example.com")
    assert FileCredentials(users_path).list() == [
        "alice@example.com",
        "bob%25x@example.com",
        "zo%C3%AB@example.com",
    ]


@pytest.mark.parametrize(
    ("aor", "fragment"),
    [
        ("%FF@example.com", "UTF-8"),
        ("a%0Ab@example.com", "U+000A"),
        ("a%3Bb@example.com", "names a;b@example.com"),
        ("zoë@example.com", "invalid character"),
    ],
)
def test_file_add_refuses_what_no_digest_username_names(
    users_path: Path, aor: str, fragment: str
) -> None:
    source = FileCredentials(users_path)
    source.add("alice@example.com", PASSWORD)
    before = users_path.read_bytes()
    with pytest.raises(AORError, match=re.escape(fragment)):
        source.add(aor, "x")
    assert users_path.read_bytes() == before


@given(
    user=st.lists(
        st.one_of(
            st.sampled_from([*"aZ09-_.!~*'()&=+$,;?/%@ ", "%20", "%25", "%3B", "%C3%AB"]),
            st.integers(0, 255).map(lambda b: f"%{b:02X}"),
            st.characters(),
        ),
        min_size=1,
        max_size=12,
    ).map("".join),
    host=st.sampled_from(["example.com", "Example.NET", "xn--bcher-kva.example", "bad host"]),
)
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
def test_every_name_user_add_accepts_loads_back(user: str, host: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "users.json"
        try:
            FileCredentials(path).add(f"{user}@{host}", "pw")
        except (AORError, InputTooLargeError):
            assert not path.exists()
            return
        reader = FileCredentials(path)
        [key] = reader.list()
        assert reader.refused == []
        aor = parse_aor(f"{user}@{host}")
        assert key == str(aor)
        username = digest_username(aor)
        found = run(reader.lookup(username, host))
        assert found is not None
        assert found.ha1 == both_ha1(username, aor.host, "pw")


def test_file_remove_takes_a_refused_entry_by_its_exact_key(users_path: Path) -> None:
    users_path.parent.mkdir()
    users_path.write_bytes(_poisoned(b'"zo\\u00eb@example.com": ' + HA1S))
    source = FileCredentials(users_path)
    with pytest.raises(NotFoundError):
        source.remove("zo%C3%AB@example.com")  # not what the file says
    source.remove("zoë@example.com")
    again = FileCredentials(users_path)
    assert again.list() == ["alice@example.com", "bob@example.com"]
    assert again.refused == []
    with pytest.raises(AORError):
        again.remove("zoë@example.com")


def test_file_write_is_read_back_before_the_rename(
    users_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = FileCredentials(users_path)
    source.add("alice@example.com", PASSWORD)
    before = users_path.read_bytes()
    real = FileCredentials._serialize

    def lossy(self: FileCredentials, users: Any, refused: Any) -> str:
        return real(self, {}, refused)  # e.g. a bug that drops every user

    monkeypatch.setattr(FileCredentials, "_serialize", lossy)
    with pytest.raises(StorageError, match="does not read back"):
        source.add("bob@example.com", "bobs")
    monkeypatch.setattr(FileCredentials, "_serialize", lambda *_: "{")
    with pytest.raises(StorageError, match=r"not replaced.*not JSON"):
        source.add("bob@example.com", "bobs")
    assert users_path.read_bytes() == before
    assert sorted(p.name for p in users_path.parent.iterdir()) == [".users.json.lock", "users.json"]


# -- MariaDB / MySQL -------------------------------------------------------------------------------

# Kamailio 5.6 utils/kamctl/mysql/auth_db-create.sql (the table in the server's default
# collation, case-insensitive: the two spellings of erin's domain cannot both be stored).
KAMAILIO_MYSQL_SCHEMA = """CREATE TABLE `subscriber` (
    `id` INT(10) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL,
    `username` VARCHAR(64) DEFAULT '' NOT NULL,
    `domain` VARCHAR(64) DEFAULT '' NOT NULL,
    `password` VARCHAR(64) DEFAULT '' NOT NULL,
    `ha1` VARCHAR(128) DEFAULT '' NOT NULL,
    `ha1b` VARCHAR(128) DEFAULT '' NOT NULL,
    CONSTRAINT account_idx UNIQUE (`username`, `domain`)
)"""


@pytest.mark.peer("mysql")
def test_kamailio_mysql() -> None:
    from sipcert.server.credentials import KamailioMysqlCredentials
    from tests.unit.storage.test_storage import mysql_admin, mysql_database

    with mysql_database() as url:
        database = url.rsplit("/", 1)[1]
        rows = ", ".join(
            "(" + ", ".join(f"'{v}'" for v in row) + ")" for row in ROWS if row[2] != "upper"
        )
        mysql_admin(
            f"USE `{database}`",
            KAMAILIO_MYSQL_SCHEMA,
            f"INSERT INTO subscriber (username, domain, password, ha1, ha1b) VALUES {rows}",  # noqa: S608
        )
        source = open_credentials("kamailio+" + url)
        assert isinstance(source, KamailioMysqlCredentials)

        async def scenario() -> None:
            try:
                await check_kamailio_semantics(source.lookup)
            finally:
                await source.close()

        run(scenario())
        # The Store's schema is not created in Kamailio's database.
        tables = subprocess.run(
            [
                "mysql",
                "-h",
                "127.0.0.1",
                "-u",
                "root",
                "-N",
                "-e",
                f"SHOW TABLES FROM `{database}`",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert tables == ["subscriber"]


@pytest.mark.peer("mysql")
def test_kamailio_mysql_unreachable_hides_the_password() -> None:
    source = open_credentials("kamailio+mysql://kam:s3cr3t@127.0.0.1:1/kamailio?timeout=2")

    async def scenario() -> None:
        try:
            with pytest.raises(StorageError) as caught:
                await source.lookup("alice", "example.com")
            message = str(caught.value)
            assert "Kamailio credentials database 127.0.0.1:1/kamailio" in message
            assert "s3cr3t" not in message
        finally:
            await source.close()

    run(scenario())
