"""Where the Store finds the Digest secrets of its Subscribers (draft §5).

Draft §5: "The client MUST authenticate to the server using DIGEST authentication with some
shared secret. The same shared secret that is used for SIP registration SHOULD be used." So
besides a file of its own (managed by ``sipcert user ...``), the Store can read the registrar's
user table directly: Kamailio's ``subscriber`` table in SQLite or PostgreSQL.

A lookup is by Digest ``username`` (the AOR's user part, §5.1) and domain; the realm the Store
challenges with is that domain, so HA1 values are ``H(user:domain:password)``.

Kamailio rows are matched on ``username`` exactly (the user part of a SIP URI is
case-sensitive, RFC 3261 §19.1.4) and on ``domain`` without regard to ASCII case (hosts are
case-insensitive and the Store's domain is canonical lower case); a row whose domain is
exactly the lower-case one wins over other spellings. Kamailio itself (auth_db ``get_ha1``)
compares with the database's ``=``, which is case-sensitive in SQLite and PostgreSQL
(case-insensitive under MySQL's default collations), and compares the domain at all only with
``use_domain=1``; here the domain always counts, so one table can serve several domains.

A non-empty ``password`` gives a plaintext credential (MD5 and SHA-256 work); else a non-empty
``ha1`` gives an MD5-only credential: ``ha1`` = MD5(user:realm:password) and only matches when
Kamailio's realm was this domain. ``ha1b`` (for Digest usernames of the form user@domain) is
not used: the Store's Digest username is the bare user part (draft §5.1).

Secrets never appear in reprs, error messages or logs: only paths, hosts, database names and
user names do.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import re
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlsplit

from sipcert.errors import AORError, ConfigError, InputTooLargeError, NotFoundError, StorageError
from sipcert.proto.aor import AOR, digest_username, escape_user, parse_aor
from sipcert.proto.digest import Algorithm, StoredCredential, compute_ha1
from sipcert.storage import sqlite_path_of
from sipcert.storage.mysql import MysqlStore
from sipcert.storage.sqlite import storage_error

__all__ = [
    "CredentialSource",
    "FileCredentials",
    "KamailioMysqlCredentials",
    "KamailioPostgresCredentials",
    "KamailioSQLiteCredentials",
    "RefusedEntry",
    "open_credentials",
]

log = logging.getLogger("sipcert.server")


class CredentialSource(Protocol):
    """Something that knows each Subscriber's Digest secret (draft §5)."""

    async def lookup(self, username: str, domain: str) -> StoredCredential | None:
        """The credential of ``username`` in ``domain`` (= the realm), or ``None``."""

    async def close(self) -> None:
        """Release connections; the source must not be used afterwards."""


# -- AORs ----------------------------------------------------------------------------------


def split_aor(aor: str) -> tuple[str, str]:
    """``user@domain`` → ``(Digest user name, lowercased domain)``, or :class:`AORError`.

    Parsed with :func:`sipcert.proto.aor.parse_aor`; the user part comes back unescaped by
    :func:`sipcert.proto.aor.digest_username`, because that is the name a client puts in its
    Digest ``username`` (draft §5.1). An AOR no Digest username can name is refused.
    """
    parsed = parse_aor(aor)
    return digest_username(parsed), parsed.host


def _account(text: str) -> tuple[AOR, str]:
    """The canonical AOR of ``text`` and its Digest username (the one rule, proto/aor.py)."""
    parsed = parse_aor(text)
    return parsed, digest_username(parsed)


# -- the file managed by the CLI ------------------------------------------------------------

_FILE_VERSION = 1
_HA1_HEX = {
    Algorithm.MD5: re.compile(r"[0-9a-f]{32}"),
    Algorithm.SHA256: re.compile(r"[0-9a-f]{64}"),
}
_WHITESPACE = re.compile(r"[ \t\n\r]*")

_Users = dict[str, dict[Algorithm, str]]


@dataclass(frozen=True)
class RefusedEntry:
    """An entry of the users file that the loader refused; the others still work."""

    line: int
    key: str
    value: object
    reason: str

    def describe(self, path: Path) -> str:
        """One line for a log or a terminal: where, which user (escaped) and why."""
        reason = self.reason.encode("ascii", "backslashreplace").decode("ascii")
        return f"credentials file {path} line {self.line}: user {self.key!a} refused: {reason}"


_Refused = list[RefusedEntry]


class FileCredentials:
    """Per-user HA1 values (MD5 and SHA-256, never the password) in a JSON file.

    Format (``version`` lets the format evolve)::

        {"version": 1,
         "users": {"alice@example.com": {"MD5": "<32 hex>", "SHA-256": "<64 hex>"},
                   "zo%C3%AB@example.com": {...}}}

    Each key is a canonical AOR (:func:`~sipcert.proto.aor.parse_aor` gives it back
    unchanged: RFC 3261 escapes in the user part, lower-case host), the spelling of the
    certificate's SAN URI and of ``sipcert user list``; the HA1 values are over its Digest
    username, the user part unescaped (:func:`~sipcert.proto.aor.digest_username`: ``zoë``),
    and the domain as realm. A lookup escapes the Digest username it is given
    (:func:`~sipcert.proto.aor.escape_user`) to find the key.

    An entry that breaks this rule (or has bad HA1 values, or repeats a key) is refused on
    its own, with a warning naming its line; the other users keep working. ``sipcert user``
    keeps refused entries as they are when it rewrites the file (fix them by hand, or
    remove one by its exact key with ``sipcert user remove``). A file that is not such a
    JSON document at all is a :class:`ConfigError`.

    The server notices when ``sipcert user add`` replaced the file: each lookup costs one
    ``stat`` and re-reads only when inode, size or mtime changed. Writes go to a temporary file
    in the same directory, are fsynced, read back and parsed (they must give exactly the
    users written), renamed over the old one and the directory fsynced, so a reader sees the
    old or the new file, never half of one; the file is 0600. Writers serialise on a lock file
    beside it (``.NAME.lock``) so that two concurrent ``sipcert user`` commands lose no update.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).absolute()
        self._users: _Users = {}
        self._signature: tuple[int, int, int, int] | None = None
        #: The entries refused by the last read of the file.
        self.refused: _Refused = []

    def __repr__(self) -> str:
        return f"FileCredentials({str(self.path)!r})"

    # -- server side ----------------------------------------------------------------------

    async def lookup(self, username: str, domain: str) -> StoredCredential | None:
        users = self._current()
        try:
            key = str(AOR(escape_user(username), domain))
        except (AORError, InputTooLargeError):
            return None  # no AOR has this Digest username
        entry = users.get(key)
        return StoredCredential(ha1=dict(entry)) if entry else None

    async def close(self) -> None:
        """Nothing to release: the file is opened only while it is read."""

    def _current(self) -> _Users:
        try:
            st = os.stat(self.path)
        except FileNotFoundError as exc:
            raise ConfigError(
                f"credentials file {self.path} does not exist (add users with `sipcert user add`)"
            ) from exc
        except OSError as exc:
            raise ConfigError(f"credentials file {self.path}: {exc.strerror or exc}") from exc
        if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != self._signature:
            self._users, self._signature = self._load(missing_ok=False)
            for refused in self.refused:
                log.warning("%s", refused.describe(self.path))
        return self._users

    # -- CLI side -------------------------------------------------------------------------

    def list(self) -> list[str]:
        """Every AOR in the file that loads, sorted (refused ones are in :attr:`refused`)."""
        users, _ = self._load(missing_ok=True)
        return sorted(users)

    def add(self, aor: str, password: str) -> str:
        """Add a user and return its key; :class:`ConfigError` if the AOR is already there."""
        parsed, user = _account(aor)

        def change(users: _Users) -> None:
            key = str(parsed)
            if key in users:
                raise ConfigError(f"user {key} already exists; change the password instead")
            users[key] = _ha1_values(user, parsed.host, password)

        self._modify(change)
        return str(parsed)

    def set_password(self, aor: str, password: str) -> str:
        """Replace a user's HA1 values and return its key; :class:`NotFoundError` if absent."""
        parsed, user = _account(aor)

        def change(users: _Users) -> None:
            key = str(parsed)
            if key not in users:
                raise NotFoundError(f"no user {key} in {self.path}")
            users[key] = _ha1_values(user, parsed.host, password)

        self._modify(change)
        return str(parsed)

    def remove(self, aor: str) -> str:
        """Remove a user, or refused entries whose key is exactly ``aor``; return the key.

        Raises :class:`NotFoundError` if there is neither.
        """
        try:
            key: str | None = str(parse_aor(aor))
        except (AORError, InputTooLargeError):
            key = None

        removed = key

        def change(users: _Users) -> None:
            nonlocal removed
            if key is not None and users.pop(key, None) is not None:
                return
            kept = [entry for entry in self.refused if entry.key != aor]
            if len(kept) == len(self.refused):
                if key is None:
                    parse_aor(aor)  # raises the AORError that says what is wrong
                raise NotFoundError(f"no user {key} in {self.path}")
            self.refused, removed = kept, aor

        self._modify(change)
        return removed or aor

    # -- reading and writing ----------------------------------------------------------------

    def _load(self, *, missing_ok: bool) -> tuple[_Users, tuple[int, int, int, int] | None]:
        try:
            with open(self.path, "rb") as file:
                st = os.fstat(file.fileno())
                data = file.read()
        except FileNotFoundError as exc:
            if missing_ok:
                self.refused = []
                return {}, None
            raise ConfigError(f"credentials file {self.path} does not exist") from exc
        except OSError as exc:
            raise ConfigError(f"credentials file {self.path}: {exc.strerror or exc}") from exc
        users, self.refused = self._parse(data)
        return users, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def _malformed(self, what: str) -> ConfigError:
        return ConfigError(f"credentials file {self.path} is malformed: {what}")

    def _parse(self, data: bytes) -> tuple[_Users, _Refused]:
        """The users that load, and the entries refused (each with its line and reason)."""
        try:
            text = data.decode("utf-8")
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise self._malformed(f"not JSON (line {exc.lineno}: {exc.msg})") from exc
        except ValueError as exc:  # UnicodeDecodeError
            raise self._malformed(f"not UTF-8 ({exc})") from exc
        if not isinstance(doc, dict):
            raise self._malformed("the top level is not an object")
        if doc.get("version") != _FILE_VERSION:
            raise self._malformed(f'"version" is not {_FILE_VERSION}')
        if not isinstance(doc.get("users"), dict):
            raise self._malformed('"users" is missing or not an object')
        users: _Users = {}
        refused: _Refused = []
        first_line: dict[str, int] = {}
        for line, key, value in _user_entries(text):
            if key in first_line:
                reason = f"a second entry for this user (the first is on line {first_line[key]})"
                refused.append(RefusedEntry(line, key, value, reason))
                continue
            first_line[key] = line
            try:
                users[key] = _entry(key, value)
            except ValueError as exc:
                refused.append(RefusedEntry(line, key, value, str(exc)))
        return users, refused

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock_path = self.path.with_name(f".{self.path.name}.lock")
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StorageError(f"credentials file {self.path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _modify(self, change: Callable[[_Users], None]) -> None:
        with self._locked():
            users, _ = self._load(missing_ok=True)
            change(users)
            self._write(users, self.refused)

    def _serialize(self, users: _Users, refused: _Refused) -> str:
        """The file's text: loadable users sorted, then refused entries kept as they were."""
        members: list[tuple[str, object]] = [
            (key, {str(alg): users[key][alg] for alg in sorted(users[key])})
            for key in sorted(users)
        ]
        members += [(entry.key, entry.value) for entry in refused]
        body = ",\n".join(f"    {json.dumps(key)}: {json.dumps(value)}" for key, value in members)
        inner = f"{{\n{body}\n  }}" if members else "{}"
        return f'{{\n  "version": {_FILE_VERSION},\n  "users": {inner}\n}}\n'

    def _write(self, users: _Users, refused: _Refused) -> None:
        data = self._serialize(users, refused).encode("utf-8")
        tmp: str | None = None
        try:
            # mkstemp creates the file 0600.
            fd, tmp = tempfile.mkstemp(
                dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp"
            )
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            self._check_written(Path(tmp), users, refused)
            os.replace(tmp, self.path)
            tmp = None
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)  # make the rename itself durable
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise StorageError(
                f"credentials file {self.path}: cannot write it: {exc.strerror or exc}"
            ) from exc
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def _check_written(self, tmp: Path, users: _Users, refused: _Refused) -> None:
        """Read the new file back before it replaces the old: it must load as meant."""
        try:
            loaded, again = self._parse(tmp.read_bytes())
        except ConfigError as exc:
            raise StorageError(f"credentials file {self.path}: not replaced: {exc}") from exc
        if loaded != users or [e.key for e in again] != [e.key for e in refused]:
            raise StorageError(
                f"credentials file {self.path}: not replaced: the new file does not read "
                "back as the users written"
            )


def _entry(key: str, value: object) -> dict[Algorithm, str]:
    """One user's HA1 values, or ValueError saying why the entry is refused."""
    try:
        aor, _ = _account(key)
    except (AORError, InputTooLargeError) as exc:
        raise ValueError(f"not an AOR that a Digest username can name: {exc}{_hint(key)}") from None
    if str(aor) != key:
        raise ValueError(f"not the canonical spelling of its AOR (write it as {aor})")
    if not isinstance(value, dict) or not value:
        raise ValueError("expected an object of HA1 values")
    ha1: dict[Algorithm, str] = {}
    for name, digest in value.items():
        try:
            algorithm = Algorithm(name)
        except ValueError:
            raise ValueError(f"unknown algorithm {name!a}") from None
        if not isinstance(digest, str) or not _HA1_HEX[algorithm].fullmatch(digest):
            raise ValueError(f"{name} is not a lowercase hex HA1")
        ha1[algorithm] = digest
    return ha1


def _hint(key: str) -> str:
    """Older ``sipcert user add`` wrote the user part unescaped: name the spelling to use."""
    user, _, host = key.rpartition("@")
    try:
        spelling = str(AOR(escape_user(user), host))
        digest_username(AOR(spelling.rpartition("@")[0], host))
    except (AORError, InputTooLargeError):
        return ""
    return f"; if it means the Digest username {user!a}, rename the key to {spelling}"


def _user_entries(text: str) -> Iterator[tuple[int, str, object]]:
    """``(line, key, value)`` of each member of the top-level ``"users"`` object, in order.

    ``text`` is known to be JSON with objects at both levels; this walks it again with the
    json module's own decoder to learn where each member starts (``json.loads`` keeps only
    the last of repeated keys and no positions). Like it, the last ``"users"`` counts.
    """
    decoder = json.JSONDecoder()
    users_at = 0
    for _, value_at, key, _ in _members(text, 0, decoder):
        if key == "users":
            users_at = value_at
    line, counted = 1, 0
    for key_at, _, user, entry in _members(text, users_at, decoder):
        line += text.count("\n", counted, key_at)  # counted once: a big file stays linear
        counted = key_at
        yield line, user, entry


def _skip(text: str, position: int) -> int:
    match = _WHITESPACE.match(text, position)
    return match.end() if match else position


def _members(
    text: str, start: int, decoder: json.JSONDecoder
) -> Iterator[tuple[int, int, str, object]]:
    """``(key position, value position, key, value)`` of the object at ``start`` (valid JSON)."""
    position = _skip(text, start) + 1  # past "{"
    while True:
        position = _skip(text, position)
        if text[position] == "}":
            return
        if text[position] == ",":
            position = _skip(text, position + 1)
        key_at = position
        key, position = decoder.raw_decode(text, position)
        value_at = _skip(text, _skip(text, position) + 1)  # past ":"
        value, position = decoder.raw_decode(text, value_at)
        yield key_at, value_at, key, value


def _ha1_values(user: str, domain: str, password: str) -> dict[Algorithm, str]:
    if not password:
        raise ConfigError("the password must not be empty")
    return {alg: compute_ha1(alg, user, domain, password) for alg in _HA1_HEX}


# -- Kamailio's subscriber table --------------------------------------------------------------

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?")


def _check_table(table: str) -> str:
    if not _IDENTIFIER.fullmatch(table):
        raise ConfigError(f"{table!r} is not a table name")
    return table


def _credential(password: object, ha1: object) -> StoredCredential | None:
    if isinstance(password, str) and password:
        return StoredCredential(password=password)
    if isinstance(ha1, str) and ha1:
        return StoredCredential(ha1={Algorithm.MD5: ha1})
    return None


class KamailioSQLiteCredentials:
    """Kamailio's ``subscriber`` table in an SQLite file, opened read-only (``mode=ro``).

    Each lookup opens the file anew in a worker thread: lookups happen only on PUT/DELETE, a
    replaced file is picked up at once, and a registrar holding a write lock (rollback
    journal) delays only that request, never the event loop. Matching: see the module doc.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, table: str = "subscriber", busy_timeout: float = 2.0
    ) -> None:
        self.path = Path(path).absolute()
        self._table = _check_table(table)
        self._busy_timeout = busy_timeout
        self._subject = f"Kamailio credentials database {self.path}"

    def __repr__(self) -> str:
        return f"KamailioSQLiteCredentials({str(self.path)!r})"

    async def lookup(self, username: str, domain: str) -> StoredCredential | None:
        return await asyncio.to_thread(self._lookup, username, domain.lower())

    async def close(self) -> None:
        """Nothing to release: each lookup opens and closes its own connection."""

    def _lookup(self, username: str, domain: str) -> StoredCredential | None:
        sql = (
            f"SELECT password, ha1 FROM {self._table} "  # noqa: S608 (checked identifier)
            "WHERE username = ? AND domain = ? COLLATE NOCASE "
            "ORDER BY domain = ? DESC, domain LIMIT 1"
        )
        try:
            conn = sqlite3.connect(
                f"file:{quote(str(self.path))}?mode=ro",
                uri=True,
                timeout=self._busy_timeout,
                isolation_level=None,
            )
        except sqlite3.Error as exc:
            raise storage_error(self._subject, "opening", exc) from exc
        try:
            row = conn.execute(sql, (username, domain, domain)).fetchone()
        except sqlite3.Error as exc:
            raise storage_error(self._subject, "looking up a user", exc) from exc
        finally:
            conn.close()
        return _credential(*row) if row else None


def _import_asyncpg() -> Any:
    try:
        import asyncpg  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ConfigError("kamailio+postgresql needs the asyncpg package") from exc
    return asyncpg


class KamailioPostgresCredentials:
    """Kamailio's ``subscriber`` table in PostgreSQL, through an asyncpg pool.

    The pool is created on the first lookup (so constructing the source never blocks and an
    unreachable server fails the request, not the start) and closed by :meth:`close`. Use one
    instance within one event loop. Connection errors and timeouts become
    :class:`StorageError` naming host and database only, never the DSN's password. Matching:
    see the module doc.
    """

    def __init__(
        self,
        dsn: str,
        *,
        table: str = "subscriber",
        max_connections: int = 4,
        timeout: float = 5.0,
    ) -> None:
        self._asyncpg = _import_asyncpg()
        self._dsn = dsn
        self._table = _check_table(table)
        self._max_connections = max_connections
        self._timeout = timeout
        self._pool: Any = None
        self._pool_lock = asyncio.Lock()
        self._where = _redacted(dsn)

    def __repr__(self) -> str:
        return f"KamailioPostgresCredentials({self._where!r})"

    async def lookup(self, username: str, domain: str) -> StoredCredential | None:
        sql = (
            f"SELECT password, ha1 FROM {self._table} "  # noqa: S608 (checked identifier)
            "WHERE username = $1 AND lower(domain) = $2 "
            "ORDER BY domain = $2 DESC, domain LIMIT 1"
        )
        errors = (self._asyncpg.PostgresError, self._asyncpg.InterfaceError, OSError, TimeoutError)
        try:
            pool = await self._get_pool()
            row = await pool.fetchrow(sql, username, domain.lower(), timeout=self._timeout)
        except errors as exc:
            raise StorageError(
                f"Kamailio credentials database {self._where}: looking up a user failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        return _credential(row["password"], row["ha1"]) if row is not None else None

    async def _get_pool(self) -> Any:
        async with self._pool_lock:
            if self._pool is None:
                self._pool = await self._asyncpg.create_pool(
                    self._dsn,
                    min_size=0,
                    max_size=self._max_connections,
                    timeout=self._timeout,
                )
            return self._pool

    async def close(self) -> None:
        async with self._pool_lock:
            if self._pool is not None:
                await self._pool.close()
                self._pool = None


class KamailioMysqlCredentials:
    """Kamailio's ``subscriber`` table in MariaDB/MySQL (``db_mysql``), through asyncmy.

    The same matching as the other Kamailio sources: the user name exactly (``BINARY``, as
    MySQL's default collations would fold case), the domain in any ASCII case with an exact
    spelling preferred. The pool is created on the first lookup; errors become
    :class:`StorageError` naming host and database only.
    """

    def __init__(self, url: str, *, table: str = "subscriber") -> None:
        # The certificate store's URL parsing, pool and retries, for this one SELECT only
        # (``?max_connections=N&timeout=S`` as for mysql:// storage).
        self._db = MysqlStore.from_url(url, create_schema=False)
        self._table = _check_table(table)
        self._where = self._db.where

    def __repr__(self) -> str:
        return f"KamailioMysqlCredentials({self._where!r})"

    async def lookup(self, username: str, domain: str) -> StoredCredential | None:
        sql = (
            f"SELECT password, ha1 FROM {self._table} "  # noqa: S608 (checked identifier)
            "WHERE username = BINARY %s AND LOWER(domain) = %s "
            "ORDER BY domain = BINARY %s DESC, domain LIMIT 1"
        )
        domain = domain.lower()

        async def work(conn: Any) -> Any:
            async with conn.cursor() as cur:
                await cur.execute(sql, (username, domain, domain))
                return await cur.fetchone()

        try:
            row = await self._db.run("looking up a user", work)
        except StorageError as exc:
            raise StorageError(
                str(exc).replace("certificate database", "Kamailio credentials database", 1)
            ) from exc
        return _credential(row[0], row[1]) if row is not None else None

    async def close(self) -> None:
        await self._db.close()


def _redacted(dsn: str) -> str:
    """``host:port/database`` of a DSN, for messages: no user, password or options."""
    try:
        parts = urlsplit(dsn)
        host = parts.hostname or "localhost"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparsable DSN>"
    return f"{host}{port}{parts.path or '/'}"


# -- choosing one -------------------------------------------------------------------------------


def open_credentials(url: str) -> CredentialSource:
    """The credential source named by ``url``.

    * ``file:///absolute/users.json`` (RFC 8089: three slashes, absolute path) or
      ``file:relative/users.json`` — a :class:`FileCredentials` file;
    * ``kamailio+sqlite:///relative.db`` / ``kamailio+sqlite:////absolute/kamailio.db`` —
      SQLite paths follow the same rule as the certificate store's ``sqlite:`` URLs
      (SQLAlchemy's: four slashes for an absolute path);
    * ``kamailio+postgresql://user[:password]@host[:port]/database`` (``kamailio+postgres``
      too) — any libpq-style query options are passed on to asyncpg;
    * ``kamailio+mysql://user[:password]@host[:port]/database`` (``kamailio+mariadb`` too) —
      Kamailio's ``db_mysql`` database, through asyncmy.

    Anything else raises :class:`ConfigError`.
    """
    scheme, _, rest = url.partition(":")
    scheme = scheme.lower()
    if scheme == "file":
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise ConfigError(f"{url!r}: expected file:///absolute/path or file:relative/path")
        path = unquote(parts.path)
        if not path:
            raise ConfigError(f"{url!r}: no file path")
        return FileCredentials(path)
    if scheme == "kamailio+sqlite":
        return KamailioSQLiteCredentials(sqlite_path_of(url, "kamailio+sqlite"))
    if scheme in ("kamailio+postgresql", "kamailio+postgres"):
        return KamailioPostgresCredentials("postgresql:" + rest)
    if scheme in ("kamailio+mysql", "kamailio+mariadb"):
        return KamailioMysqlCredentials("mysql:" + rest)
    # Only the scheme is echoed: the rest of a URL may carry a password.
    raise ConfigError(
        f"unknown credentials URL scheme {scheme!r}: expected file:///path, "
        "kamailio+sqlite:///path, kamailio+postgresql://user@host/db or "
        "kamailio+mysql://user@host/db"
    )
