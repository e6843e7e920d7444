"""The hot GET: a simple request answered on the TLS transport without aiohttp (issue 13).

:class:`~sipcert.server.conn.ConnectionGuard` hands every read of a connection that is
between requests to :meth:`HotGet.answer` when it starts with a complete simple head
(:func:`~sipcert.proto.hotget.parse_simple_get`). The answer is the one the Store's aiohttp
handler gives (:meth:`~sipcert.server.app.StoreApp._get`): the same rows, the same
:func:`~sipcert.server.app.answer_for`, the same ``If-None-Match`` rule, laid out as aiohttp
lays it out. ``None`` means "not here": the caller passes the bytes to aiohttp, which then
answers as it always did. That covers an AOR of another domain than the connection's SNI
name (draft §4.3: the 404 and its text stay aiohttp's), an unparsable query and a storage
failure (aiohttp reads again and answers 503 with its log line).

What stays the same per request: the metrics counter and latency, the access log line
(peer, request line, status, bytes, seconds; never a header value), the expiry rule (draft
§4.4: the rows are read at the app's clock, and a rendered answer is used only until the
first ``notAfter`` in it).

Rendered answers are kept per worker when ``answer_cache_mb`` is set (the same budget as the
answer cache of :mod:`sipcert.server.answers`, counted separately), keyed by domain and query
string, and emptied whenever the database's change counter moves (``data_version``: a write
through any worker or process), read before the rows as the answer cache does.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from sipcert.errors import SipCertError
from sipcert.proto.aor import plain_aor
from sipcert.proto.hotget import SimpleGet, http_date, render, render_prefix
from sipcert.proto.store import Response, conditional
from sipcert.server.answers import ENTRY_OVERHEAD, version_source
from sipcert.server.app import SEARCH_PATH, AccessLog, StoreApp, answer_for
from sipcert.server.http import SERVER_NAME
from sipcert.storage import StoredCertificate

__all__ = ["HotGet", "SyncRead", "hot_get_for"]

log = logging.getLogger("sipcert.server")

#: A synchronous read of an AOR's valid certificates at a Unix time in microseconds.
SyncRead = Callable[[str, int], list[StoredCertificate]]
#: ``(prefix, body, status, headers, valid_until, size)``: only atoms in tuples, which the
#: cyclic garbage collector stops tracking (see server.answers).
_Entry = tuple[bytes, bytes, int, tuple[tuple[str, str], ...], float, int]


class HotGet:
    """Answers the simple GETs and HEADs of one worker (see the module docstring)."""

    def __init__(
        self,
        app: StoreApp,
        read: SyncRead,
        *,
        version: Callable[[], int] | None = None,
        max_bytes: int = 0,
        access_log: AccessLog | logging.Logger | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.domains = app.domains
        self._app = app
        self._read = read
        self._clock = app.clock
        self._wall_clock = wall_clock
        #: Rendered answers: only with a change counter and a budget.
        self._version = version if max_bytes > 0 else None
        self.max_bytes = max_bytes
        self.size = 0
        self._seen: int | None = None
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._access_log = access_log
        self._second = -1
        self._date = b""
        #: Requests answered here (the rest went to aiohttp).
        self.answered = 0

    def answer(self, head: SimpleGet, domain: str, remote: str) -> bytes | None:
        """The whole answer to ``head`` on a connection for ``domain``, or ``None``."""
        start = time.perf_counter()
        entry = self._entry(head, domain, self._clock())
        if entry is None:
            return None
        prefix, body, status, headers, _, _ = entry
        if head.if_none_match is not None and status == 200:
            checked = conditional(Response(status, headers, body), head.if_none_match)
            if checked.status == 304:
                status, prefix, body = 304, render_prefix(checked, SERVER_NAME), b""
        second = int(self._wall_clock())
        if second != self._second:
            self._second, self._date = second, http_date(second)
        wire = render(prefix, body, self._date, close=head.close, head=head.method == "HEAD")
        self.answered += 1
        seconds = time.perf_counter() - start
        self._app.metrics.request(SEARCH_PATH, head.method, status, seconds)
        if self._access_log is not None:
            self._log(head, remote, status, len(wire), seconds)
        return wire

    def _entry(self, head: SimpleGet, domain: str, now: float) -> _Entry | None:
        key = (domain, head.query)
        try:
            if self._version is not None:
                # Read before the rows, as the answer cache does: a later commit empties it.
                version = self._version()
                if version != self._seen:
                    self.clear()
                    self._seen = version
                entry = self._entries.get(key)
                if entry is not None and now <= entry[4]:
                    return entry
            # What parse_query makes of the canonical spelling (None: aiohttp's path decides).
            aor = plain_aor(head.user, head.host)
            if aor is None or aor.host != domain:
                return None  # draft §4.3: another domain's 404 is aiohttp's, with its reason
            certs = self._read(str(aor), int(now * 1_000_000))
        except SipCertError:  # aiohttp's path meets it again and answers 503, logged
            return None
        answer = answer_for(certs, max_age=self._app.policy.max_age)
        valid_until = min((c.not_after.timestamp() for c in certs), default=math.inf)
        prefix = render_prefix(answer, SERVER_NAME)
        size = len(prefix) + len(answer.body) + ENTRY_OVERHEAD
        entry = (prefix, answer.body, answer.status, answer.headers, valid_until, size)
        if self._version is not None and size <= self.max_bytes:
            self._keep(key, entry)
        return entry

    def _keep(self, key: tuple[str, str], entry: _Entry) -> None:
        entries = self._entries
        old = entries.pop(key, None)
        if old is not None:
            self.size -= old[5]
        while entries and self.size + entry[5] > self.max_bytes:
            self.size -= entries.pop(next(iter(entries)))[5]  # the oldest first
        entries[key] = entry
        self.size += entry[5]

    def clear(self) -> None:
        """Forget every rendered answer."""
        self._entries.clear()
        self.size = 0

    def _log(self, head: SimpleGet, remote: str, status: int, size: int, seconds: float) -> None:
        """The access line aiohttp's path writes (server.app.StoreAccessLogger)."""
        sink = self._access_log
        try:
            if isinstance(sink, AccessLog) and sink.json_lines:
                sink.write_fields(
                    {
                        "remote": remote,
                        "method": head.method,
                        "path": f"{SEARCH_PATH}?{head.query}",
                        "version": "HTTP/1.1",
                        "status": status,
                        "bytes": size,
                        "seconds": round(seconds, 6),
                    }
                )
                return
            message = (
                f'{remote} "{head.method} {SEARCH_PATH}?{head.query} HTTP/1.1" {status} {size} '
                f"{seconds:06f}"
            )
            if isinstance(sink, AccessLog):
                sink.write(message)
            elif sink is not None:
                sink.info("%s", message)
        except Exception:
            log.exception("writing the access log failed")


def hot_get_for(
    app: StoreApp, access_log: AccessLog | logging.Logger | None, *, max_bytes: int = 0
) -> HotGet | None:
    """The hot GET of ``app``'s worker, or ``None`` where it cannot give the same answers.

    It needs a storage backend with synchronous reads (SQLite) and the app's own SNI rule
    (a test's ``sni_of`` would be bypassed).
    """
    read = getattr(app.raw_storage, "read_by_aor", None)
    if not callable(read) or not app.default_sni:
        return None
    return HotGet(
        app,
        read,
        version=version_source(app.raw_storage),
        max_bytes=max_bytes,
        access_log=access_log,
    )
