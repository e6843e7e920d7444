"""The edge publisher (issue 13): every AOR's GET answer as files nginx serves.

The layout and the translation of an answer into it are :mod:`sipcert.proto.edge`; the
answer itself is :func:`sipcert.server.app.answer_for`, the function the Store answers with.
This module writes it, atomically: an object directory is filled before anything points to
it (the body through a temporary file, ``fsync``, ``rename``), then the AOR's symlink is
replaced with ``rename`` — nginx sees the old answer or the new one, never a mix. Objects
that no symlink points to any more are removed after :data:`GRACE` seconds (a request that
resolved the old symlink may still be reading it).

:meth:`Publisher.follow` keeps the tree current: it follows the database's change feed
(:mod:`sipcert.storage.feed`; LISTEN/NOTIFY with PostgreSQL, polling with SQLite) and
republishes each AOR at its certificates' ``notAfter`` (draft §4.4: never an expired
certificate), :data:`EXPIRY_LEAD` seconds early so that nginx never serves one late.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sipcert.errors import ConfigError, SipCertError, StorageError
from sipcert.proto.aor import AOR, parse_aor
from sipcert.proto.edge import (
    BODY_NAME,
    NONE_OBJECT,
    PROXY_OBJECT,
    EdgeObject,
    FeedCursor,
    distinct,
    edge_object,
    file_user,
)
from sipcert.server.app import answer_for
from sipcert.storage import CertificateStore, StoredCertificate
from sipcert.storage.feed import ChangeFeed

__all__ = ["EXPIRY_LEAD", "GRACE", "Publisher", "feed_of"]

log = logging.getLogger("sipcert.publish")

#: Seconds an unreferenced object is kept before it is removed.
GRACE = 30.0
#: Seconds before a certificate's notAfter at which its AOR is published without it.
EXPIRY_LEAD = 1.0
#: Polling interval when the backend cannot notify (SQLite), and the check interval of a
#: notifying one (a lost notification costs at most this much).
POLL_INTERVAL = 0.05
_NOTIFIED_INTERVAL = 1.0
_BATCH = 1000
_REREAD = 1000


def feed_of(storage: CertificateStore) -> ChangeFeed:
    """``storage`` as a change feed, or :class:`ConfigError` for a backend without one."""
    if not isinstance(storage, ChangeFeed):
        name = type(storage).__name__
        raise ConfigError(
            f"the edge publisher follows a change feed, which the {name} storage does not "
            "have: use SQLite, PostgreSQL or MariaDB/MySQL storage for edge mode"
        )
    return storage


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Publisher:
    """Keeps ``root`` holding the answer of every AOR of ``domains`` (one tree per domain).

    ``clock`` gives Unix time (tests move it); ``durable`` fsyncs files and directories
    (off only in tests and benchmarks that do not survive a crash anyway).
    """

    def __init__(
        self,
        root: Path,
        storage: CertificateStore,
        *,
        domains: Iterable[str],
        max_age: int,
        clock: Callable[[], float] = time.time,
        durable: bool = True,
        expiry_lead: float = EXPIRY_LEAD,
    ) -> None:
        self.root = root
        self.storage = storage
        self.feed = feed_of(storage)
        self.domains = frozenset(domains)
        self.max_age = max_age
        self._clock = clock
        self._durable = durable
        self._expiry_lead = expiry_lead
        self._expiries: list[tuple[float, str]] = []  # (publish again at, aor), a heap
        self._next: dict[str, float] = {}  # the live entry of each AOR in the heap
        self._doomed: list[tuple[float, Path, Path]] = []  # (remove at, object, link)
        self.published = 0
        try:
            for domain in sorted(self.domains):
                for sub in ("a", "o"):
                    (root / domain / sub).mkdir(parents=True, exist_ok=True)
                for marker in (NONE_OBJECT, PROXY_OBJECT):
                    (root / domain / "o" / marker).mkdir(exist_ok=True)
        except OSError as exc:
            raise _unwritable(root, exc) from exc

    # -- one AOR ---------------------------------------------------------------------------

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    async def publish_aor(self, aor_text: str, now: datetime | None = None) -> bool:
        """Publish ``aor_text``'s answer as of ``now``; False when it is not served from files."""
        try:
            aor = parse_aor(aor_text)
        except SipCertError:
            return False
        user = file_user(aor)
        if user is None or aor.host not in self.domains:
            return False
        when = now or self._now()
        certs = await self.storage.get_by_aor(str(aor), when)
        obj = edge_object(answer_for(certs, max_age=self.max_age))
        self._schedule(str(aor), certs)
        try:
            await asyncio.to_thread(self._write, aor, user, obj)
        except OSError as exc:
            raise _unwritable(self.root, exc) from exc
        self.published += 1
        return True

    def _schedule(self, aor: str, certs: Sequence[StoredCertificate]) -> None:
        """Remember when ``aor`` must be published again (its earliest notAfter, early).

        One live entry per AOR: the heap may hold stale ones, skipped when popped, so it
        stays as large as the number of AORs however often they change.
        """
        if not certs:
            self._next.pop(aor, None)
            return
        at = min(c.not_after for c in certs).timestamp() - self._expiry_lead
        if self._next.get(aor) != at:
            self._next[aor] = at
            heapq.heappush(self._expiries, (at, aor))

    def _write(self, aor: AOR, user: str, obj: EdgeObject) -> None:
        base = self.root / aor.host
        target = base / "o" / obj.path
        if obj.body or obj.parts[0] not in (NONE_OBJECT, PROXY_OBJECT):
            self._write_object(target, obj.body)
        link = base / "a" / user
        relative = os.path.join("..", "o", obj.path)
        try:
            old = os.readlink(link)
        except FileNotFoundError:
            old = None
        if old == relative:
            return
        temporary = base / "a" / f".{user}.{secrets.token_hex(6)}"
        os.symlink(relative, temporary)
        os.replace(temporary, link)
        if self._durable:
            _fsync_dir(base / "a")
        if old is not None and not old.endswith(("/" + NONE_OBJECT, "/" + PROXY_OBJECT)):
            self._doomed.append((self._clock() + GRACE, (link.parent / old), link))

    def _write_object(self, target: Path, body: bytes) -> None:
        final = target / BODY_NAME
        if final.exists():
            return  # content-addressed: the same path always holds the same bytes
        target.mkdir(parents=True, exist_ok=True)
        temporary = target / f".{BODY_NAME}.{secrets.token_hex(6)}"
        with open(temporary, "wb") as handle:
            handle.write(body)
            if self._durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temporary, final)
        if self._durable:
            _fsync_dir(target)

    def collect_garbage(self, *, everything_due: bool = False) -> int:
        """Remove the objects due for removal that no symlink points to; how many."""
        now = self._clock()
        keep: list[tuple[float, Path, Path]] = []
        removed = 0
        for due, obj, link in self._doomed:
            if due > now and not everything_due:
                keep.append((due, obj, link))
                continue
            try:
                current = (link.parent / os.readlink(link)).resolve()
            except OSError:
                current = None
            if current == obj.resolve():
                continue  # pointed to again meanwhile
            removed += _remove_object(obj)
        self._doomed = keep
        return removed

    # -- everything ------------------------------------------------------------------------

    async def publish_all(self) -> int:
        """Publish every AOR with a certificate; point the others at the 404. How many."""
        now = self._now()
        aors = [a for a in await self.feed.aors(now) if a.rpartition("@")[2] in self.domains]
        self._expiries.clear()
        self._next.clear()
        count = 0
        live: dict[str, set[str]] = {d: set() for d in self.domains}
        for aor in aors:
            if await self.publish_aor(aor, now):
                count += 1
                live[aor.rpartition("@")[2]].add(aor.rpartition("@")[0])
        for domain, users in live.items():
            try:
                await asyncio.to_thread(self._forget_others, domain, users)
            except OSError as exc:
                raise _unwritable(self.root, exc) from exc
        return count

    def _forget_others(self, domain: str, users: set[str]) -> None:
        """Symlinks of AORs that have no certificate any more: the 404 object; and old
        unreferenced objects (left by an earlier run) removed."""
        base = self.root / domain
        referenced: set[str] = set()
        for entry in os.scandir(base / "a"):
            if entry.name.startswith("."):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)  # a temporary symlink of an interrupted run
                continue
            if entry.name not in users:
                self._write(AOR(entry.name, domain), entry.name, EdgeObject((NONE_OBJECT,)))
                continue
            with contextlib.suppress(OSError):
                referenced.add(os.path.normpath(os.readlink(entry.path)))
        cutoff = time.time() - GRACE  # file times are the wall clock's
        for directory, _subdirs, files in os.walk(base / "o"):
            if BODY_NAME not in files:
                continue
            relative = os.path.normpath(os.path.join("..", os.path.relpath(directory, base)))
            if relative in referenced:
                continue
            body = Path(directory) / BODY_NAME
            with contextlib.suppress(OSError):
                if body.stat().st_mtime < cutoff:
                    _remove_object(Path(directory))

    async def follow(self, stop: asyncio.Event, *, ready: Callable[[], None] | None = None) -> None:
        """Publish everything, then keep up with the change feed and expiries until ``stop``."""
        wake = asyncio.Event()
        wake_ups = self.feed.wake_ups()
        listener: asyncio.Task[None] | None = None
        if wake_ups is not None:
            await anext(wake_ups)  # listening before the position is read: nothing is missed
            listener = asyncio.create_task(_relay(wake_ups, wake))
        try:
            low, high = await self.feed.feed_bounds()
            # A little before the newest row: a transaction that took a smaller number but
            # had not committed yet is then still seen (handling a row twice is harmless).
            cursor = FeedCursor(low=max(low - 1, high - _REREAD, 0))
            count = await self.publish_all()
            log.info(
                "published %d AOR(s) to %s; following changes after %d", count, self.root, high
            )
            if ready is not None:
                ready()
            while not stop.is_set():
                await self._catch_up(cursor)
                await self._expire()
                self.collect_garbage()
                timeout = _NOTIFIED_INTERVAL if listener is not None else POLL_INTERVAL
                if cursor.waiting:
                    timeout = POLL_INTERVAL
                if self._expiries:
                    timeout = min(timeout, max(0.0, self._expiries[0][0] - self._clock()))
                if self._doomed:
                    timeout = min(timeout, max(0.0, self._doomed[0][0] - self._clock()))
                await _wait_any(stop, wake, timeout)
                wake.clear()
        finally:
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
            with contextlib.suppress(Exception):
                await wake_ups.aclose()  # type: ignore[union-attr]

    async def _catch_up(self, cursor: FeedCursor) -> None:
        while True:
            try:
                rows = await self.feed.changes_since(cursor.low, _BATCH)
            except StorageError as exc:
                log.error("reading the change feed failed: %s", exc)
                return
            new = set(cursor.take([r.seq for r in rows], self._clock()))
            for aor in distinct([r.aor for r in rows if r.seq in new]):
                try:
                    await self.publish_aor(aor)
                except (SipCertError, OSError) as exc:
                    log.error("publishing %s failed: %s", aor, exc)
            if len(rows) < _BATCH or not new:
                return

    async def _expire(self) -> None:
        """Publish again each AOR whose earliest notAfter is (nearly) here."""
        due: list[tuple[float, str]] = []
        while self._expiries and self._expiries[0][0] <= self._clock():
            at, aor = heapq.heappop(self._expiries)
            if self._next.get(aor) == at:  # else superseded by a later publication
                del self._next[aor]
                due.append((at, aor))
        for at, aor in due:
            # As of just after the notAfter: the certificate is dropped, even if this clock
            # is a little behind the Store's.
            when = datetime.fromtimestamp(at + self._expiry_lead, UTC) + timedelta(microseconds=1)
            try:
                await self.publish_aor(aor, max(when, self._now()))
            except (SipCertError, OSError) as exc:
                log.error("publishing %s at expiry failed: %s", aor, exc)


def _unwritable(root: Path, exc: OSError) -> ConfigError:
    """The one-line error for a publish folder that cannot be written (no traceback)."""
    where = exc.filename if isinstance(exc.filename, str) else root
    return ConfigError(f"edge folder {root}: cannot write {where}: {exc.strerror or exc}")


def _remove_object(obj: Path) -> int:
    """Remove an object directory and its now-empty parents up to ``o/``; 1 if removed."""
    try:
        for entry in os.scandir(obj):
            os.unlink(entry.path)
        obj.rmdir()
    except OSError:
        return 0
    parent = obj.parent
    while parent.name != "o":
        try:
            parent.rmdir()
        except OSError:
            break
        parent = parent.parent
    return 1


async def _relay(wake_ups: AsyncIterator[None], wake: asyncio.Event) -> None:
    async for _ in wake_ups:
        wake.set()


async def _wait_any(stop: asyncio.Event, wake: asyncio.Event, timeout: float) -> None:
    waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(wake.wait())]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waiters:
            task.cancel()
