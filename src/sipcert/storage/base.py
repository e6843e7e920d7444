"""What the certificate Store keeps, and the interface every storage backend implements.

The Store (draft §4.4, §5) keeps, per address of record, the certificates its Subscribers
enrolled with an HTTPS PUT, hands out every one that is still valid on GET ("A certificate
Store SHOULD not provide certificates that have become invalid", §4.4), and lets a Subscriber
revoke them (§5: "The Service MUST provide some other authenticated, out of band mechanism for
the Subscriber to revoke certificates"). Certificates are named by the RFC 4387 ``certHash``
so that one of several certificates of an AOR can be picked out for a DELETE.

The methods are ``async`` because the Store's HTTP server is asyncio and some backends
(PostgreSQL through asyncpg) can only be driven asynchronously; the SQLite backend answers reads
synchronously inside them so that the hot GET path never hops threads.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from sipcert.errors import ConfigError, ForbiddenError, InputError, StorageError
from sipcert.proto.certs import format_cert_hash

__all__ = [
    "CertificateStore",
    "SchemaStatus",
    "StoredCertificate",
    "cert_hash_column",
    "cert_hash_from_column",
    "cert_hash_of",
    "check_limit",
    "ensure_utc",
    "schema_refusal",
    "sha256_of",
    "too_many",
]

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# RFC 4387 §2.1: certHash is the base64 SHA-1 of the DER without the '=' padding: 27 chars.
_CERT_HASH = re.compile(r"[A-Za-z0-9+/]{27}")


def sha256_of(der: bytes) -> str:
    """Lowercase hex SHA-256 of a DER certificate: the Store's internal identity of it."""
    return hashlib.sha256(der).hexdigest()


def cert_hash_of(der: bytes) -> str:
    """RFC 4387 §2.1 ``certHash`` of a DER certificate: base64 SHA-1 without ``=`` (27 chars)."""
    return format_cert_hash(hashlib.sha1(der, usedforsecurity=False).digest())


def cert_hash_column(cert_hash: str) -> str:
    """The ``cert_hash`` column's spelling: the padded base64 sipcert 0.1 wrote (28 chars).

    The backends keep that spelling and translate at their edge, so databases written by
    0.1 need no migration and old and new workers can share one during an upgrade.
    """
    return cert_hash + "="


def cert_hash_from_column(value: str) -> str:
    """The RFC 4387 §2.1 certHash of a ``cert_hash`` column value (see :func:`cert_hash_column`)."""
    return value.removesuffix("=")


def ensure_utc(value: datetime, what: str) -> datetime:
    """``value`` converted to UTC; a naive datetime is refused (its meaning is a guess)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise InputError(f"{what} must be a timezone-aware datetime, not naive")
    return value.astimezone(UTC)


def check_limit(max_per_aor: int) -> None:
    """Refuse a limit that would forbid every enrollment (a configuration mistake)."""
    if max_per_aor < 1:
        raise ConfigError(f"max_per_aor must be at least 1, not {max_per_aor}")


def too_many(aor: str, max_per_aor: int) -> ForbiddenError:
    """The error for an AOR at its certificate limit (draft §5 allows several, not unbounded)."""
    return ForbiddenError(
        f"{aor} already has {max_per_aor} valid certificates; delete one first",
        reason="too-many-certificates",
    )


def schema_refusal(where: str, current: int, latest: int, *, migrate: bool) -> StorageError | None:
    """Why a database at schema ``current`` may not be used by this sipcert (``latest``):
    a newer schema always, an older one unless it is being migrated; None when usable."""
    if current > latest:
        return StorageError(
            f"certificate database {where}: schema version {current} is "
            f"newer than the version {latest} this sipcert uses"
        )
    if current < latest and not migrate:
        return StorageError(
            f"certificate database {where}: schema version {current} is "
            f"older than version {latest}: run `sipcert db upgrade`"
        )
    return None


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    """A database's schema version and the one this sipcert uses (``sipcert db upgrade``).

    ``current`` is 0 for a database without sipcert's tables yet.
    """

    current: int
    latest: int

    @property
    def up_to_date(self) -> bool:
        """True when the database needs no migration."""
        return self.current == self.latest


@dataclass(frozen=True, slots=True)
class StoredCertificate:
    """One enrolled certificate of one AOR, as a backend stores and returns it.

    ``aor`` is the canonical ``user@host`` (the caller canonicalises it); ``sha256`` is the
    lowercase hex SHA-256 of ``der`` and, with the AOR, identifies the row; ``cert_hash`` is
    the RFC 4387 certHash (base64 SHA-1 of ``der``) used in URLs. Datetimes are aware and UTC;
    ``created`` is when the Store accepted it ("enrolled on"). ``label`` is the device label
    sent with the PUT (``Content-Description``), checked by
    :func:`~sipcert.proto.store.parse_description` and kept for display only: nothing looks a
    row up by it or trusts it. Build one with :meth:`from_der` so that the hashes always
    match the bytes.
    """

    aor: str
    sha256: str
    cert_hash: str
    der: bytes = field(repr=False)
    not_before: datetime
    not_after: datetime
    created: datetime
    label: str | None = None

    def __post_init__(self) -> None:
        if not self.aor:
            raise InputError("a stored certificate needs an AOR")
        if not _SHA256_HEX.fullmatch(self.sha256):
            raise InputError("sha256 must be 64 lowercase hex digits")
        if not _CERT_HASH.fullmatch(self.cert_hash):
            raise InputError("cert_hash must be a base64 SHA-1 (RFC 4387 certHash)")
        for name in ("not_before", "not_after", "created"):
            object.__setattr__(self, name, ensure_utc(getattr(self, name), name))

    @classmethod
    def from_der(
        cls,
        aor: str,
        der: bytes,
        *,
        not_before: datetime,
        not_after: datetime,
        created: datetime,
        label: str | None = None,
    ) -> StoredCertificate:
        """A record for ``der`` with both hashes computed from it."""
        return cls(
            aor=aor,
            sha256=sha256_of(der),
            cert_hash=cert_hash_of(der),
            der=der,
            not_before=not_before,
            not_after=not_after,
            created=created,
            label=label,
        )

    @classmethod
    def from_row(
        cls,
        aor: str,
        sha256: str,
        cert_hash: str,
        der: bytes,
        not_before: datetime,
        not_after: datetime,
        created: datetime,
        label: str | None,
    ) -> StoredCertificate:
        """A record read back by a backend, without the checks of ``__post_init__`` again.

        Issue 13: every GET reads its rows, and re-validating hashes and datetimes per row
        was a sixth of the Store's time. The checks ran when the row was built for writing
        (:meth:`from_der` in the PUT); the backend must pass aware UTC datetimes.
        """
        self = object.__new__(cls)
        setattr_ = object.__setattr__
        setattr_(self, "aor", aor)
        setattr_(self, "sha256", sha256)
        setattr_(self, "cert_hash", cert_hash)
        setattr_(self, "der", der)
        setattr_(self, "not_before", not_before)
        setattr_(self, "not_after", not_after)
        setattr_(self, "created", created)
        setattr_(self, "label", label)
        return self

    def is_expired(self, now: datetime) -> bool:
        """True once ``now`` is past notAfter (RFC 5280 §4.1.2.5: the bound is inclusive)."""
        return self.not_after < now


class CertificateStore(Protocol):
    """Storage of enrolled certificates; every backend passes ``tests/unit/storage``.

    "Unexpired" means ``now <= not_after``. A certificate that is not yet valid is still
    returned: the Store hands out what it holds, the UA checks validity (draft §4.5).
    Every database failure raises :class:`~sipcert.errors.StorageError` and leaves the store as
    it was.
    """

    async def get_by_aor(self, aor: str, now: datetime) -> list[StoredCertificate]:
        """The AOR's unexpired certificates, ordered by ``created`` then ``sha256`` (§4.4)."""

    async def get_by_cert_hash(self, cert_hash: str, now: datetime) -> StoredCertificate | None:
        """The unexpired certificate with this RFC 4387 certHash, or ``None``."""

    async def add(self, cert: StoredCertificate, *, max_per_aor: int, now: datetime) -> bool:
        """Store ``cert``; True if new, False if the AOR already had it (same sha256).

        Atomically refuses with ``ForbiddenError(reason="too-many-certificates")`` when the
        AOR already holds ``max_per_aor`` unexpired certificates, even against concurrent adds
        from other connections or processes. Expired ones do not count.
        """

    async def delete(self, aor: str, cert_hash: str | None) -> int:
        """Remove the AOR's certificate with ``cert_hash`` (or all of them if ``None``).

        Returns how many were removed; expired ones are removed too (draft §5 revocation).
        """

    async def purge_expired(self, now: datetime) -> int:
        """Remove every expired certificate ("The Store may discard", draft §5.1)."""

    async def count(self, now: datetime) -> int:
        """How many unexpired certificates are stored, all AORs together (``/metrics``)."""

    async def schema_status(self) -> SchemaStatus:
        """The database's schema version against this sipcert's; changes nothing.

        A backend opened with ``migrate=False`` answers this even for an old schema (that is
        what ``sipcert db upgrade --check`` reads); its other operations then refuse.
        """

    async def upgrade(self) -> SchemaStatus:
        """Create or migrate the schema to this sipcert's version; the status afterwards.

        Idempotent, and safe when several processes upgrade at once (each backend takes its
        own lock). A schema newer than this sipcert's raises :class:`StorageError`.
        """

    async def close(self) -> None:
        """Release connections; the store must not be used afterwards."""
