"""In-memory certificate storage: the :class:`CertificateStore` contract without a database.

For unit tests of the Store logic and for throw-away demo servers; nothing survives the
process. A lock makes each operation atomic even when one instance is shared across threads
(the asyncio loop alone would already serialise them, as no method awaits in between).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from datetime import datetime

from sipcert.errors import StorageError
from sipcert.storage.base import (
    SchemaStatus,
    StoredCertificate,
    check_limit,
    ensure_utc,
    too_many,
)
from sipcert.storage.feed import Change

__all__ = ["MemoryStore"]


class MemoryStore:
    """Certificates in a dict keyed by AOR then sha256."""

    def __init__(self) -> None:
        self._by_aor: dict[str, dict[str, StoredCertificate]] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._changes: list[Change] = []
        self._waiters: list[asyncio.Event] = []

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
            self._record(cert.aor)
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
            if doomed:
                self._record(aor)
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

    # -- the change feed (storage.feed.ChangeFeed) ----------------------------------------

    def _record(self, aor: str) -> None:
        seq = self._changes[-1].seq + 1 if self._changes else 1
        self._changes.append(Change(seq, aor))
        for event in self._waiters:
            event.set()

    async def aors(self, now: datetime) -> list[str]:
        now = ensure_utc(now, "now")
        with self._lock:
            self._check_open()
            return sorted(
                aor
                for aor, certs in self._by_aor.items()
                if any(not c.is_expired(now) for c in certs.values())
            )

    async def changes_since(self, seq: int, limit: int = 1000) -> list[Change]:
        with self._lock:
            self._check_open()
            return [c for c in self._changes if c.seq > seq][:limit]

    async def feed_bounds(self) -> tuple[int, int]:
        with self._lock:
            self._check_open()
            if not self._changes:
                return 0, 0
            return self._changes[0].seq, self._changes[-1].seq

    def wake_ups(self) -> AsyncIterator[None] | None:
        return self._wake_ups()

    async def _wake_ups(self) -> AsyncIterator[None]:
        event = asyncio.Event()
        self._waiters.append(event)
        try:
            yield None  # listening from here on
            while True:
                await event.wait()
                event.clear()
                yield None
        finally:
            self._waiters.remove(event)

    async def close(self) -> None:
        with self._lock:
            self._closed = True
            self._by_aor.clear()
