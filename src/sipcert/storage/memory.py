"""In-memory certificate storage: the :class:`CertificateStore` contract without a database.

For unit tests of the Store logic and for throw-away demo servers; nothing survives the
process. A lock makes each operation atomic even when one instance is shared across threads
(the asyncio loop alone would already serialise them, as no method awaits in between).
"""

from __future__ import annotations

import threading
from datetime import datetime

from sipcert.errors import StorageError
from sipcert.storage.base import (
    SchemaStatus,
    StoredCertificate,
    check_limit,
    ensure_utc,
    too_many,
)

__all__ = ["MemoryStore"]


class MemoryStore:
    """Certificates in a dict keyed by AOR then sha256."""

    def __init__(self) -> None:
        self._by_aor: dict[str, dict[str, StoredCertificate]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return "MemoryStore()"

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("the in-memory certificate store is closed")

    async def get_by_aor(self, aor: str, now: datetime) -> list[StoredCertificate]:
        now = ensure_utc(now, "now")
        with self._lock:
            self._check_open()
            certs = [c for c in self._by_aor.get(aor, {}).values() if not c.is_expired(now)]
        return sorted(certs, key=lambda c: (c.created, c.sha256))

    async def get_by_cert_hash(self, cert_hash: str, now: datetime) -> StoredCertificate | None:
        now = ensure_utc(now, "now")
        with self._lock:
            self._check_open()
            found = [
                c
                for certs in self._by_aor.values()
                for c in certs.values()
                if c.cert_hash == cert_hash and not c.is_expired(now)
            ]
        return min(found, key=lambda c: (c.created, c.aor), default=None)

    async def add(self, cert: StoredCertificate, *, max_per_aor: int, now: datetime) -> bool:
        check_limit(max_per_aor)
        now = ensure_utc(now, "now")
        with self._lock:
            self._check_open()
            certs = self._by_aor.get(cert.aor, {})
            if cert.sha256 in certs:
                return False
            if sum(1 for c in certs.values() if not c.is_expired(now)) >= max_per_aor:
                raise too_many(cert.aor, max_per_aor)
            self._by_aor.setdefault(cert.aor, {})[cert.sha256] = cert
            return True

    async def delete(self, aor: str, cert_hash: str | None) -> int:
        with self._lock:
            self._check_open()
            certs = self._by_aor.get(aor, {})
            doomed = [k for k, c in certs.items() if cert_hash is None or c.cert_hash == cert_hash]
            for key in doomed:
                del certs[key]
            if not certs:
                self._by_aor.pop(aor, None)
            return len(doomed)

    async def purge_expired(self, now: datetime) -> int:
        now = ensure_utc(now, "now")
        removed = 0
        with self._lock:
            self._check_open()
            for aor in list(self._by_aor):
                certs = self._by_aor[aor]
                for key in [k for k, c in certs.items() if c.is_expired(now)]:
                    del certs[key]
                    removed += 1
                if not certs:
                    del self._by_aor[aor]
        return removed

    async def count(self, now: datetime) -> int:
        now = ensure_utc(now, "now")
        with self._lock:
            self._check_open()
            return sum(
                not c.is_expired(now) for certs in self._by_aor.values() for c in certs.values()
            )

    async def schema_status(self) -> SchemaStatus:
        """Always current: a dict has no schema to migrate."""
        self._check_open()
        return SchemaStatus(1, 1)

    async def upgrade(self) -> SchemaStatus:
        return await self.schema_status()

    async def close(self) -> None:
        with self._lock:
            self._closed = True
            self._by_aor.clear()
