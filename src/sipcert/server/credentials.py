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
import os
import re
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlsplit

from sipcert.errors import AORError, ConfigError, NotFoundError, StorageError
from sipcert.proto.aor import parse_aor
from sipcert.proto.digest import Algorithm, StoredCredential, compute_ha1
from sipcert.storage import sqlite_path_of
from sipcert.storage.sqlite import storage_error

__all__ = [
    "CredentialSource",
    "FileCredentials",
    "KamailioPostgresCredentials",
    "KamailioSQLiteCredentials",
    "open_credentials",
]


class CredentialSource(Protocol):
    """Something that knows each Subscriber's Digest secret (draft §5)."""

    async def lookup(self, username: str, domain: str) -> StoredCredential | None:
        """The credential of ``username`` in ``domain`` (= the realm), or ``None``."""

    async def close(self) -> None:
        """Release connections; the source must not be used afterwards."""


# -- AORs ----------------------------------------------------------------------------------


def split_aor(aor: str) -> tuple[str, str]:
    """``user@domain`` → ``(Digest user name, lowercased domain)``, or :class:`AORError`.

    Parsed with :func:`sipcert.proto.aor.parse_aor`; the user part comes back unescaped,
    because that is the name a client puts in its Digest ``username`` (draft §5.1).
    """
    parsed = parse_aor(aor)
    return unquote(parsed.user), parsed.host


# -- the file managed by the CLI ------------------------------------------------------------

_FILE_VERSION = 1
_HA1_HEX = {
    Algorithm.MD5: re.compile(r"[0-9a-f]{32}"),
    Algorithm.SHA256: re.compile(r"[0-9a-f]{64}"),
}

_Users = dict[str, dict[Algorithm, str]]


class FileCredentials:
    """Per-user HA1 values (MD5 and SHA-256, never the password) in a JSON file.

    Format (``version`` lets the format evolve)::

        {"version": 1,
         "users": {"alice@example.com": {"MD5": "<32 hex>", "SHA-256": "<64 hex>"}}}

    The server notices when ``sipcert user add`` replaced the file: each lookup costs one
    ``stat`` and re-reads only when inode, size or mtime changed. Writes go to a temporary file
    in the same directory, are fsynced and renamed over the old one, so a reader sees the old or
    the new file, never half of one; the file is 0600. Writers serialise on a lock file beside
    it (``.NAME.lock``) so that two concurrent ``sipcert user`` commands lose no update.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).absolute()
        self._users: _Users = {}
        self._signature: tuple[int, int, int, int] | None = None

    def __repr__(self) -> str:
        return f"FileCredentials({str(self.path)!r})"

    # -- server side ----------------------------------------------------------------------

    async def lookup(self, username: str, domain: str) -> StoredCredential | None:
        entry = self._current().get(f"{username}@{domain.lower()}")
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
        return self._users

    # -- CLI side -------------------------------------------------------------------------

    def list(self) -> list[str]:
        """Every AOR in the file, sorted."""
        users, _ = self._load(missing_ok=True)
        return sorted(users)

    def add(self, aor: str, password: str) -> None:
        """Add a user; :class:`ConfigError` if the AOR is already there."""
        user, domain = split_aor(aor)

        def change(users: _Users) -> None:
            key = f"{user}@{domain}"
            if key in users:
                raise ConfigError(f"user {key} already exists; change the password instead")
            users[key] = _ha1_values(user, domain, password)

        self._modify(change)

    def set_password(self, aor: str, password: str) -> None:
        """Replace a user's HA1 values; :class:`NotFoundError` if the AOR is not there."""
        user, domain = split_aor(aor)

        def change(users: _Users) -> None:
            key = f"{user}@{domain}"
            if key not in users:
                raise NotFoundError(f"no user {key} in {self.path}")
            users[key] = _ha1_values(user, domain, password)

        self._modify(change)

    def remove(self, aor: str) -> None:
        """Remove a user; :class:`NotFoundError` if the AOR is not there."""
        user, domain = split_aor(aor)

        def change(users: _Users) -> None:
            key = f"{user}@{domain}"
            if users.pop(key, None) is None:
                raise NotFoundError(f"no user {key} in {self.path}")

        self._modify(change)

    # -- reading and writing ----------------------------------------------------------------

    def _load(self, *, missing_ok: bool) -> tuple[_Users, tuple[int, int, int, int] | None]:
        try:
            with open(self.path, "rb") as file:
                st = os.fstat(file.fileno())
                data = file.read()
        except FileNotFoundError as exc:
            if missing_ok:
                return {}, None
            raise ConfigError(f"credentials file {self.path} does not exist") from exc
        except OSError as exc:
            raise ConfigError(f"credentials file {self.path}: {exc.strerror or exc}") from exc
        return self._parse(data), (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def _malformed(self, what: str) -> ConfigError:
        return ConfigError(f"credentials file {self.path} is malformed: {what}")

    def _parse(self, data: bytes) -> _Users:
        try:
            doc = json.loads(data)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise self._malformed(f"not UTF-8 JSON ({exc})") from exc
        if not isinstance(doc, dict):
            raise self._malformed("the top level is not an object")
        if doc.get("version") != _FILE_VERSION:
            raise self._malformed(f'"version" is not {_FILE_VERSION}')
        entries = doc.get("users")
        if not isinstance(entries, dict):
            raise self._malformed('"users" is missing or not an object')
        users: _Users = {}
        for key, value in entries.items():
            try:
                user, domain = split_aor(key)
            except AORError as exc:
                raise self._malformed(f"user {key!r} is not user@domain") from exc
            if key != f"{user}@{domain}":
                raise self._malformed(f"user {key!r} has upper-case letters in its domain")
            if not isinstance(value, dict) or not value:
                raise self._malformed(f"user {key}: expected an object of HA1 values")
            ha1: dict[Algorithm, str] = {}
            for name, digest in value.items():
                try:
                    algorithm = Algorithm(name)
                except ValueError:
                    raise self._malformed(f"user {key}: unknown algorithm {name!r}") from None
                if not isinstance(digest, str) or not _HA1_HEX[algorithm].fullmatch(digest):
                    raise self._malformed(f"user {key}: {name} is not a lowercase hex HA1")
                ha1[algorithm] = digest
            users[key] = ha1
        return users

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
            self._write(users)

    def _write(self, users: _Users) -> None:
        doc = {
            "version": _FILE_VERSION,
            "users": {
                key: {str(alg): users[key][alg] for alg in sorted(users[key])}
                for key in sorted(users)
            },
        }
        text = json.dumps(doc, indent=2) + "\n"
        tmp: str | None = None
        try:
            # mkstemp creates the file 0600.
            fd, tmp = tempfile.mkstemp(
                dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp"
            )
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
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
      too) — any libpq-style query options are passed on to asyncpg.

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
    # Only the scheme is echoed: the rest of a URL may carry a password.
    raise ConfigError(
        f"unknown credentials URL scheme {scheme!r}: expected file:///path, "
        "kamailio+sqlite:///path or kamailio+postgresql://user@host/db"
    )
