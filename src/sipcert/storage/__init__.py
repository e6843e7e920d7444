"""Where the certificate Store keeps enrolled certificates (draft §4.4, §5).

Pick a backend with :func:`open_store`; every backend implements
:class:`~sipcert.storage.base.CertificateStore`.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from sipcert.errors import ConfigError
from sipcert.storage.base import (
    CertificateStore,
    SchemaStatus,
    StoredCertificate,
    cert_hash_of,
    sha256_of,
)
from sipcert.storage.memory import MemoryStore
from sipcert.storage.mysql import MysqlStore
from sipcert.storage.postgres import PostgresStore
from sipcert.storage.sqlite import SqliteStore

__all__ = [
    "CertificateStore",
    "MemoryStore",
    "MysqlStore",
    "PostgresStore",
    "SchemaStatus",
    "SqliteStore",
    "StoredCertificate",
    "cert_hash_of",
    "open_store",
    "sha256_of",
    "sqlite_path_of",
]


def sqlite_path_of(url: str, scheme: str) -> str:
    """The file path in ``<scheme>:///PATH``, following SQLAlchemy's convention.

    Everything after the third slash is the path, percent-decoded: ``sqlite:///certs.db`` and
    ``sqlite:///data/certs.db`` are relative to the working directory, ``sqlite:////var/lib/
    sipcert/certs.db`` (four slashes) is absolute. A host, query or fragment is refused.
    """
    prefix = f"{scheme}:///"
    parts = urlsplit(url)
    if not url.startswith(prefix) or parts.query or parts.fragment:
        raise ConfigError(
            f"{url!r}: expected {prefix}relative/path or {prefix}/absolute/path "
            "(no host, query or fragment)"
        )
    path = unquote(url[len(prefix) :])
    if not path or path == ":memory:":
        raise ConfigError(f"{url!r}: no database file path")
    return path


def open_store(url: str, *, migrate: bool = True) -> CertificateStore:
    """Open the certificate storage named by ``url``.

    * ``sqlite:///relative/path.db`` — a file relative to the working directory;
    * ``sqlite:////absolute/path.db`` — four slashes: an absolute path (SQLAlchemy's rule);
    * ``memory://`` — in memory, empty, gone when the process ends (tests, demos);
    * ``postgresql://user[:password]@host[:port]/database[?schema=NAME&max_connections=N]``
      (``postgres://`` too) — PostgreSQL through asyncpg; see
      :meth:`PostgresStore.from_url` and ``docs/storage.md``. Nothing connects until first use.
    * ``mysql://user[:password]@host[:port]/database[?max_connections=N]`` (``mariadb://``
      too) — MariaDB/MySQL, Galera included, through asyncmy (:meth:`MysqlStore.from_url`).

    Anything else raises :class:`ConfigError`. SQLite files and their directories are created
    when the store is opened; PostgreSQL schemas and tables at its first operation, unless
    ``migrate`` is false: then an empty or older schema is left for
    :meth:`~sipcert.storage.base.CertificateStore.upgrade` (``sipcert db upgrade``).
    """
    scheme = url.partition(":")[0].lower()
    if scheme == "sqlite":
        return SqliteStore(sqlite_path_of(url, "sqlite"), migrate=migrate)
    if scheme == "memory":
        if url.lower() not in ("memory://", "memory:"):
            raise ConfigError(f"{url!r}: the in-memory store takes no path; use memory://")
        return MemoryStore()
    if scheme in ("postgresql", "postgres"):
        return PostgresStore.from_url(url, migrate=migrate)
    if scheme in ("mysql", "mariadb"):
        return MysqlStore.from_url(url, migrate=migrate)
    raise ConfigError(
        # Only the scheme is echoed: the rest of a URL may carry a password.
        f"unknown certificate storage URL scheme {scheme!r}: expected sqlite:///path, "
        "sqlite:////absolute/path, memory://, postgresql://user@host/database or "
        "mysql://user@host/database"
    )
