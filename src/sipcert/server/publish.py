"""The edge publisher (issue 13): every AOR's GET answer as files nginx serves.

The layout and the translation of an answer into it are :mod:`sipcert.proto.edge`; the
answer itself is :func:`sipcert.server.app.answer_for`, the function the Store answers with.
This module writes it, atomically: an object directory is filled before anything points to
it (the body through a temporary file, ``fsync``, ``rename``), then the AOR's symlink is
replaced with ``rename`` — nginx sees the old answer or the new one, never a mix — and the
object it pointed to is removed at once. A request that resolved the old symlink and finds
its body gone is answered by the Store (the generated configuration's ``error_page``).

It also keeps nginx's *map generation* (:mod:`sipcert.proto.edge`): every AOR's object in
one ``map`` file, so that a GET costs no ``realpath()``. A generation names objects, and an
AOR's old object is gone once it changed, so an entry is right or leads nginx to the
symlink: no generation nginx holds can serve a stale answer, whatever it has reloaded. A
new one is written when changed AORs pile up (:data:`MAP_CHANGES`) or have waited
:data:`MAP_INTERVAL`, with ``nginx_pid`` followed by a reload (SIGHUP to nginx's master).

:meth:`Publisher.follow` keeps the tree current: it follows the database's change feed
(:mod:`sipcert.storage.feed`; LISTEN/NOTIFY with PostgreSQL, polling with SQLite) and
republishes each AOR at its certificates' ``notAfter`` (draft §4.4: never an expired
certificate), :data:`EXPIRY_LEAD` seconds early so that nginx never serves one late.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import heapq
import logging
import os
import secrets
import shutil
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from sipcert.errors import ConfigError, SipCertError, StorageError
from sipcert.proto.aor import AOR, parse_aor
from sipcert.proto.edge import (
    BODY_NAME,
    MAP_FILE,
    MAP_FOLDER,
    NONE_OBJECT,
    PROXY_OBJECT,
    EdgeObject,
    FeedCursor,
    distinct,
    edge_object,
    file_user,
    map_line,
    parse_map_line,
)
from sipcert.server.app import answer_for
from sipcert.storage import CertificateStore, StoredCertificate
from sipcert.storage.feed import ChangeFeed

__all__ = [
    "EXPIRY_LEAD",
    "MAP_CHANGES",
    "MAP_INTERVAL",
    "Publisher",
    "feed_of",
    "reload_nginx",
    "take_lock",
]

log = logging.getLogger("sipcert.publish")

#: Seconds before a certificate's notAfter at which its AOR is published without it.
EXPIRY_LEAD = 1.0
#: Polling interval when the backend cannot notify (SQLite), and the check interval of a
#: notifying one (a lost notification costs at most this much).
POLL_INTERVAL = 0.05
_NOTIFIED_INTERVAL = 1.0
_BATCH = 1000
_REREAD = 1000
#: AORs published at once by :meth:`Publisher.publish_all`.
_CONCURRENT = 4
#: Seconds a changed AOR waits at most for the next map generation (its GETs take the
#: symlink meanwhile), and the changed AORs that call for one at once (each reload makes
#: nginx read the whole map again).
MAP_INTERVAL = 60.0
MAP_CHANGES = 5000
#: Seconds to wait for nginx's old workers to be gone after a reload (the generated
#: configuration's worker_shutdown_timeout is 10 s).
RELOAD_TIMEOUT = 30.0
#: A generation: "<domain>/<user>" -> the object nginx serves from the map.
Generation = dict[str, str]


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
    (off only in tests and benchmarks that do not survive a crash anyway). ``nginx_pid``
    (nginx's pid file) has nginx reload each map generation; ``map_interval`` is how long
    a changed AOR may wait for the next one.
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
        nginx_pid: Path | None = None,
        map_interval: float = MAP_INTERVAL,
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
        self._sync_each = durable  # off during publish_all, which syncs once at its end
        self.nginx_pid = nginx_pid
        self.map_interval = map_interval
        self._current: Generation = {}  # what each AOR's symlink points to (or will)
        self._changed: set[str] = set()  # "<domain>/<user>" not as the written map says
        self._refresh: asyncio.Task[bool] | None = None
        self._refreshed_at = clock()
        self.published = 0
        try:
            for domain in sorted(self.domains):
                for sub in ("a", "o"):
                    (root / domain / sub).mkdir(parents=True, exist_ok=True)
                for shared in (NONE_OBJECT, PROXY_OBJECT):
                    (root / domain / "o" / shared).mkdir(exist_ok=True)
                # The markers of an earlier layout (``c/``): nothing reads them now.
                shutil.rmtree(root / domain / "c", ignore_errors=True)
            (root / MAP_FOLDER).mkdir(exist_ok=True)
            for older in (root / MAP_FOLDER).glob("prev-*.txt"):
                older.unlink()
            live = root / MAP_FOLDER / MAP_FILE
            self._mapped = _read_generation(live) if live.exists() else {}
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
        self._note(aor.host, user, obj.path)
        try:
            await asyncio.to_thread(self._write, aor, user, obj)
        except OSError as exc:
            raise _unwritable(self.root, exc) from exc
        self.published += 1
        return True

    def _note(self, domain: str, user: str, path: str) -> None:
        """Record ``path`` as the AOR's object, and whether the written map is behind it.

        Here, on the event loop, in the order of the changes: a generation taken after this
        holds the new object.
        """
        key = f"{domain}/{user}"
        self._current[key] = path
        mapped = path if map_line(domain, user, path) is not None else None
        if self._mapped.get(key) != mapped:
            self._changed.add(key)

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
        if self._sync_each:
            _fsync_dir(base / "a")
        if old is not None and not old.endswith(("/" + NONE_OBJECT, "/" + PROXY_OBJECT)):
            # Only this AOR's link named it (an answer holds certificates of its AOR only):
            # gone, a map generation's entry for it leads nginx to the new link.
            _remove_object(link.parent / old)
            if self._sync_each:
                _fsync_dir(base / "o")

    def _write_object(self, target: Path, body: bytes) -> None:
        final = target / BODY_NAME
        with contextlib.suppress(FileNotFoundError):
            if os.stat(final).st_size == len(body):
                return  # content-addressed: the same path always holds the same bytes
        target.mkdir(parents=True, exist_ok=True)
        temporary = target / f".{BODY_NAME}.{secrets.token_hex(6)}"
        with open(temporary, "wb") as handle:
            handle.write(body)
            if self._sync_each:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temporary, final)
        if self._sync_each:
            _fsync_dir(target)

    # -- everything ------------------------------------------------------------------------

    async def publish_all(self) -> int:
        """Publish every AOR with a certificate; point the others at the 404. How many.

        Nothing is fsynced meanwhile (three fsyncs per AOR made 100,000 AORs take ten
        minutes, and one sync of the file system waits for everyone's dirty pages): the
        tree is made again from the database by the next start's full publication, which
        rewrites an object a crash left short (:meth:`_write_object` checks its size).
        """
        now = self._now()
        aors = [a for a in await self.feed.aors(now) if a.rpartition("@")[2] in self.domains]
        self._expiries.clear()
        self._next.clear()
        count = 0
        live: dict[str, set[str]] = {d: set() for d in self.domains}
        self._sync_each = False
        try:
            # Several AORs at a time: each waits on its database read and its file writes
            # (in threads), and different AORs never share a file.
            for start in range(0, len(aors), _CONCURRENT):
                chunk = aors[start : start + _CONCURRENT]
                done = await asyncio.gather(*(self.publish_aor(aor, now) for aor in chunk))
                for aor, published in zip(chunk, done, strict=True):
                    if published:
                        count += 1
                        live[aor.rpartition("@")[2]].add(aor.rpartition("@")[0])
            for domain, users in live.items():
                await asyncio.to_thread(self._forget_others, domain, users)
        except OSError as exc:
            raise _unwritable(self.root, exc) from exc
        finally:
            self._sync_each = self._durable
        return count

    # -- the map generation ----------------------------------------------------------------

    def _take_generation(self) -> Generation:
        """The current objects as a generation: those nginx can be given in its map.

        nginx compares map keys without case, so of users that differ only in case none is
        mapped (their GETs take the symlink, as unmapped AORs do).
        """
        generation: Generation = {}
        folded: dict[str, int] = {}
        for key, path in self._current.items():
            domain, _, user = key.partition("/")
            if map_line(domain, user, path) is not None:
                generation[key] = path
                folded[key.lower()] = folded.get(key.lower(), 0) + 1
        return {k: p for k, p in generation.items() if folded[k.lower()] == 1}

    def _write_generation(self, generation: Generation) -> None:
        """``map/live.map`` := ``generation``, renamed into place: nginx reads a whole one."""
        folder = self.root / MAP_FOLDER
        temporary = folder / f".{MAP_FILE}.{secrets.token_hex(6)}"
        with open(temporary, "w", encoding="utf-8") as handle:
            for key, path in generation.items():
                domain, _, user = key.partition("/")
                handle.write(f"{map_line(domain, user, path)}\n")
            if self._durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temporary, folder / MAP_FILE)
        if self._durable:
            _fsync_dir(folder)

    async def refresh_map(self) -> bool:
        """Write a new generation and, with ``nginx_pid``, have nginx reload it.

        True when nginx confirmed the reload. Nothing waits on that: whatever generation
        nginx holds, a changed AOR's entry names an object that is gone, and nginx takes
        the symlink for it; a reload only makes those GETs fast again.
        """
        self._refreshed_at = self._clock()
        generation = self._take_generation()
        covered, self._changed = self._changed, set()  # before any await: later ones count
        try:
            await asyncio.to_thread(self._write_generation, generation)
        except OSError as exc:
            log.error("writing the nginx map failed: %s", exc.strerror or exc)
            self._changed |= covered
            return False
        self._mapped = generation
        if self.nginx_pid is None:
            return False
        confirmed = await asyncio.to_thread(reload_nginx, self.nginx_pid, RELOAD_TIMEOUT)
        if confirmed:
            log.info("nginx reloaded a map of %d AOR(s)", len(generation))
        else:
            log.warning(
                "nginx (pid file %s) is not running or did not reload the new map within "
                "%d s; the AORs changed since its map are served through their symlinks",
                self.nginx_pid,
                RELOAD_TIMEOUT,
            )
        return confirmed

    def _map_due(self) -> bool:
        """Whether changed AORs call for a new generation now (never two refreshes at once;
        never without nginx to reload it: ``publish --once`` writes one for a start)."""
        if self.nginx_pid is None or not self._changed:
            return False
        if self._refresh is not None and not self._refresh.done():
            return False
        waited = self._clock() - self._refreshed_at
        return waited >= self.map_interval or (len(self._changed) >= MAP_CHANGES and waited >= 1)

    def _forget_others(self, domain: str, users: set[str]) -> None:
        """Symlinks of AORs that have no certificate any more: the 404 object; and the
        objects no symlink points to (left by an earlier run, perhaps in its map) removed."""
        base = self.root / domain
        referenced: set[str] = set()
        for entry in os.scandir(base / "a"):
            if entry.name.startswith("."):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)  # a temporary symlink of an interrupted run
                continue
            if entry.name not in users:
                self._note(domain, entry.name, NONE_OBJECT)
                self._write(AOR(entry.name, domain), entry.name, EdgeObject((NONE_OBJECT,)))
                continue
            with contextlib.suppress(OSError):
                referenced.add(os.path.normpath(os.readlink(entry.path)))
        for directory, _subdirs, files in os.walk(base / "o"):
            if BODY_NAME not in files:
                continue
            relative = os.path.normpath(os.path.join("..", os.path.relpath(directory, base)))
            if relative not in referenced:
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
            if self.nginx_pid is not None:
                self._refresh = asyncio.create_task(self.refresh_map())
            if ready is not None:
                ready()
            while not stop.is_set():
                await self._catch_up(cursor)
                await self._expire()
                if self._map_due():
                    self._refresh = asyncio.create_task(self.refresh_map())
                timeout = _NOTIFIED_INTERVAL if listener is not None else POLL_INTERVAL
                if cursor.waiting:
                    timeout = POLL_INTERVAL
                if self._expiries:
                    timeout = min(timeout, max(0.0, self._expiries[0][0] - self._clock()))
                if self._changed and self.nginx_pid is not None:
                    due = self._refreshed_at + self.map_interval - self._clock()
                    timeout = min(timeout, max(POLL_INTERVAL, due))
                await _wait_any(stop, wake, timeout)
                wake.clear()
        finally:
            if self._refresh is not None and not self._refresh.done():
                self._refresh.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._refresh
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


def take_lock(root: Path) -> BinaryIO | None:
    """``root``'s publisher lock (``root/.lock``, held while the file stays open), or None
    when another publisher holds it.

    One publisher per folder: each removes the objects no symlink names (an earlier run's,
    which a map may still name), and would remove another's object written but not yet
    linked. Raises :class:`ConfigError` when the folder cannot be used.
    """
    try:
        root.mkdir(parents=True, exist_ok=True)
        handle = open(root / ".lock", "a+b")
    except OSError as exc:
        raise _unwritable(root, exc) from exc
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def _read_generation(path: Path) -> Generation:
    """A generation file read back (lines it cannot read are skipped: they map nothing)."""
    generation: Generation = {}
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            entry = parse_map_line(line)
            if entry is not None:
                domain, user, obj = entry
                generation[f"{domain}/{user}"] = obj
    return generation


def _children(pid: int) -> set[int] | None:
    """The child processes of ``pid`` (nginx's workers), or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return None
    return {int(word) for word in text.split()}


def reload_nginx(pid_file: Path, timeout: float) -> bool:
    """SIGHUP to the nginx master of ``pid_file``; True once no worker of before is left.

    nginx reads its configuration (and so the map) again, starts new workers and lets the
    old ones finish; when every worker that existed before the signal is gone and a new
    one runs, no process holds an older map. False when that cannot be seen in time, or
    when the pid file names no nginx (then nothing can be known about what it holds).
    """
    try:
        pid = int(pid_file.read_text().strip())
        if not Path(f"/proc/{pid}/comm").read_text().startswith("nginx"):
            return False
        before = _children(pid)
        if before is None:
            return False
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError):
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = _children(pid)
        if now is None:
            return False
        if now and not now & before:
            return True
        time.sleep(0.02)
    return False


def _unwritable(root: Path, exc: OSError) -> ConfigError:
    """The one-line error for a publish folder that cannot be written (no traceback)."""
    where = exc.filename if isinstance(exc.filename, str) else root
    return ConfigError(f"edge folder {root}: cannot write {where}: {exc.strerror or exc}")


def _remove_object(obj: Path) -> None:
    """Remove an object directory (gone already is fine) and its now-empty parents up to
    ``o/``; any other failure raises: the object would still be served from a map."""
    try:
        for entry in os.scandir(obj):
            os.unlink(entry.path)
        obj.rmdir()
    except FileNotFoundError:
        return
    parent = obj.parent
    while parent.name != "o":
        try:
            parent.rmdir()
        except OSError:
            break
        parent = parent.parent


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
