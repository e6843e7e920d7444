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

An enrollment's first PUT (no ``Authorization``, its whole body in the read,
:func:`~sipcert.proto.hotget.parse_simple_put`) is answered here too: the 401 with fresh
challenges that :meth:`StoreApp._put <sipcert.server.app.StoreApp._put>` gives it, decided
by :meth:`~sipcert.server.app.StoreApp.challenge_now` (the same checks in the same order;
``None`` where only aiohttp's path can tell: 404, 413, 400, a 429 to charge), with the same
metrics and access line. The body is read and dropped, as aiohttp drains it for keep-alive.

The second PUT of an enrollment (one ``Authorization``, the whole body in the read) is
answered here too, but not at once: :meth:`HotGet.enroll` makes the checks
:meth:`StoreApp._put <sipcert.server.app.StoreApp._put>` makes before authenticating
(:meth:`~sipcert.server.app.StoreApp.put_now`; ``None``, nothing changed, where it answers
404, 413 or 400 itself), and gives the connection a coroutine that awaits the answer of
:meth:`~sipcert.server.app.StoreApp.answer_put`: the same :meth:`StoreApp.enroll
<sipcert.server.app.StoreApp.enroll>` aiohttp's handler calls (the same limiter, nonce
count and storage calls, audit record and log lines), every failure answered as aiohttp's
path answers it. The connection holds its reads until that answer is written.

With ``answer_cache_mb`` set, answers come from and go to the app's own answer cache
(:class:`~sipcert.server.answers.AnswerCache`, keyed by domain and AOR, emptied whenever
``data_version`` moves), which the aiohttp path shares.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from sipcert.errors import SipCertError
from sipcert.proto.aor import plain_aor, plain_aor_text
from sipcert.proto.hotget import (
    SimpleGet,
    SimplePut,
    caching_lines,
    date_tails,
    http_date,
    render,
    render_one_prefix,
    render_prefix,
)
from sipcert.proto.logsafe import log_safe
from sipcert.proto.store import Response, certificates_response, conditional
from sipcert.server.app import SEARCH_PATH, AccessLog, PutFields, StoreApp, answer_for
from sipcert.server.http import SERVER_NAME
from sipcert.storage import StoredCertificate

__all__ = ["HotGet", "SyncRead", "SyncRows", "hot_get_for"]

log = logging.getLogger("sipcert.server")

#: A synchronous read of an AOR's valid certificates at a Unix time in microseconds.
SyncRead = Callable[[str, int], list[StoredCertificate]]
#: The same read, as the answer's columns: ``(sha256, der, not_after_us, created_us, label)``
#: (``SqliteStore.read_answer_rows``).
SyncRows = Callable[[str, int], list[tuple[str, bytes, int, int, str | None]]]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: The plain access line of a hot answer (``_log``'s message; ``%f`` is ``{:06f}`` for any
#: finite time that is not negative, tests/unit/server/test_hotget.py).
_ACCESS_LINE = f'%s "%s {SEARCH_PATH}?%s HTTP/1.1" %d %d %f'
#: Peers whose escaped spelling is kept (emptied when full).
_PEERS_KEPT = 1024


class HotGet:
    """Answers the simple GETs and HEADs of one worker (see the module docstring)."""

    def __init__(
        self,
        app: StoreApp,
        read: SyncRead,
        *,
        rows: SyncRows | None = None,
        access_log: AccessLog | logging.Logger | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.domains = app.domains
        self._app = app
        self._read = read
        self._rows = rows
        self._clock = app.clock
        self._wall_clock = wall_clock
        self._access_log = access_log
        #: The plain-text AccessLog, whose line is written inline (the other sinks: _log).
        self._lines = (
            access_log if isinstance(access_log, AccessLog) and not access_log.json_lines else None
        )
        self._caching = caching_lines(app.policy.max_age, SERVER_NAME)
        #: The second of the Date lines below, and the ends of a head with them.
        self._second = -1
        self._tail = self._close_tail = b""
        #: One clock read serves the rows (draft §4.4) and ``Date`` when both are one clock.
        self._one_clock = self._wall_clock is self._clock
        #: Peers as given -> as the access line spells them (log_safe).
        self._peers: dict[str, str] = {}
        #: Requests answered here (the rest went to aiohttp).
        self.answered = 0

    def answer(self, head: SimpleGet, domain: str, remote: str) -> bytes | None:
        """The whole answer to ``head`` on a connection for ``domain``, or ``None``."""
        start = time.perf_counter()
        now = self._clock()
        try:
            # What parse_query makes of the canonical spelling (None: aiohttp's path decides).
            aor = plain_aor_text(head.user, head.host)
            if aor is None or aor[1] != domain:
                return None  # draft §4.3: another domain's 404 is aiohttp's, with its reason
            if self._rows is not None and self._app.answer_cache is None:
                status, prefix, body = self._from_rows(aor[0], head.if_none_match, now)
            else:
                status, prefix, body = self._from_certs(domain, aor[0], head.if_none_match, now)
        except SipCertError:  # aiohttp's path meets it again and answers 503, logged
            return None
        second = int(now) if self._one_clock else int(self._wall_clock())
        method = head.method
        wire = render(prefix, body, self._date_tail(second, head.close), head=method == "HEAD")
        self.answered += 1
        seconds = time.perf_counter() - start
        self._app.metrics.request(SEARCH_PATH, method, status, seconds)
        lines = self._lines
        if lines is not None:  # the line of _log, without its dispatch
            try:
                # Escaped as write() would: log_safe works character by character, and but
                # for the peer every part is printable ASCII without "\\" (the method and
                # query as _REQUEST_LINE matched them, numbers; "%f" is "{:06f}" for them).
                peer = self._peers.get(remote)
                if peer is None:  # log_safe of a peer, once per peer
                    if len(self._peers) >= _PEERS_KEPT:
                        self._peers.clear()
                    peer = self._peers[remote] = log_safe(remote)
                fields = (peer, method, head.query, status, len(wire), seconds)
                lines.write_escaped(_ACCESS_LINE % fields)
            except Exception:
                log.exception("writing the access log failed")
        elif self._access_log is not None:
            self._log(method, head.query, remote, status, len(wire), seconds)
        return wire

    def challenge(self, head: SimplePut, domain: str, remote: str) -> bytes | None:
        """The whole 401 answer to a simple PUT without credentials, or ``None``
        (:meth:`StoreApp.challenge_now` says when)."""
        start = time.perf_counter()
        try:
            aor = plain_aor(head.user, head.host)
            answer = (
                None
                if aor is None or head.authorization is not None
                else self._app.challenge_now(
                    aor, domain, head.description, head.content_length, remote
                )
            )
        except SipCertError:  # the limiter's storage failed: aiohttp answers 503, logged
            return None
        if answer is None:
            return None
        return self._put_answered(head, answer, remote, start)

    def enroll(
        self, head: SimplePut, data: bytes, domain: str, remote: str, transport: Any
    ) -> Coroutine[Any, Any, bytes] | None:
        """The answer to a simple PUT with credentials (``data`` holds it whole), to await,
        or ``None``, decided at once without changing anything (:meth:`StoreApp.put_now`)."""
        start = time.perf_counter()
        aor = plain_aor(head.user, head.host)
        if aor is None or head.authorization is None:
            return None
        fields = self._app.put_now(
            aor,
            domain,
            head.description,
            head.content_length,
            authorization=head.authorization,
            content_type=head.content_type,
            raw_path=f"{SEARCH_PATH}?{head.query}",
            remote=remote,
            peer=_Peer(remote, transport),
        )
        if fields is None:
            return None
        return self._enrolled(head, fields, data[head.head_length : head.length], remote, start)

    async def _enrolled(
        self, head: SimplePut, fields: PutFields, body: bytes, remote: str, start: float
    ) -> bytes:
        answer = await self._app.answer_put(fields, body)
        return self._put_answered(head, answer, remote, start)

    def _put_answered(self, head: SimplePut, answer: Response, remote: str, start: float) -> bytes:
        """The bytes of a PUT's ``answer``, counted and logged as aiohttp's path does."""
        tail = self._date_tail(int(self._wall_clock()), head.close)
        wire = render(render_prefix(answer, SERVER_NAME), answer.body, tail, head=False)
        self.answered += 1
        seconds = time.perf_counter() - start
        self._app.metrics.request(SEARCH_PATH, "PUT", answer.status, seconds)
        if self._access_log is not None:
            self._log("PUT", head.query, remote, answer.status, len(wire), seconds)
        return wire

    def _date_tail(self, second: int, close: bool) -> bytes:
        """The end of a head from ``Date`` on (:func:`date_tails`), made once a second."""
        if second != self._second:
            self._second = second
            self._tail, self._close_tail = date_tails(http_date(second))
        return self._close_tail if close else self._tail

    def _from_rows(
        self, aor: str, if_none_match: str | None, now: float
    ) -> tuple[int, bytes, bytes]:
        """Status, prefix and body from the answer's columns (no StoredCertificate).

        The rows are read at the app's clock, so an expired certificate is never in them
        (draft §4.4). One certificate and no condition, the everyday GET, is laid out from
        its row directly (:func:`render_one_prefix`); anything else goes through the same
        :func:`certificates_response` that :func:`answer_for` calls, with the same inputs.
        """
        rows = self._rows(aor, int(now * 1_000_000)) if self._rows is not None else []
        if len(rows) == 1 and if_none_match is None:
            sha256, der, _not_after, created, label = rows[0]
            return 200, render_one_prefix(sha256, len(der), created, label, self._caching), der
        answer = certificates_response(
            [row[1] for row in rows],
            [row[0] for row in rows],
            max_age=self._app.policy.max_age,
            labels=[row[4] for row in rows],
            enrolled=[_EPOCH + timedelta(microseconds=row[3]) for row in rows],
        )
        answer = conditional(answer, if_none_match)
        return answer.status, render_prefix(answer, SERVER_NAME), answer.body

    def _from_certs(
        self, domain: str, aor: str, if_none_match: str | None, now: float
    ) -> tuple[int, bytes, bytes]:
        """Status, prefix and body as :meth:`StoreApp._get` makes them, through the app's
        answer cache when it has one."""
        cache = self._app.answer_cache
        key = (domain, aor, None)
        version = 0
        answer: Response | None = None
        if cache is not None:
            answer, version = cache.get(key, now)
        if answer is None:
            certs = self._read(aor, int(now * 1_000_000))
            answer = answer_for(certs, max_age=self._app.policy.max_age)
            if cache is not None:
                cache.put(key, answer, [c.not_after.timestamp() for c in certs], version)
        answer = conditional(answer, if_none_match)
        return answer.status, render_prefix(answer, SERVER_NAME), answer.body

    def _log(
        self, method: str, query: str, remote: str, status: int, size: int, seconds: float
    ) -> None:
        """The access line aiohttp's path writes (server.app.StoreAccessLogger)."""
        sink = self._access_log
        try:
            if isinstance(sink, AccessLog) and sink.json_lines:
                sink.write_fields(
                    {
                        "remote": remote,
                        "method": method,
                        "path": f"{SEARCH_PATH}?{query}",
                        "version": "HTTP/1.1",
                        "status": status,
                        "bytes": size,
                        "seconds": round(seconds, 6),
                    }
                )
                return
            message = (
                f'{remote} "{method} {SEARCH_PATH}?{query} HTTP/1.1" {status} {size} {seconds:06f}'
            )
            if isinstance(sink, AccessLog):
                sink.write(message)
            elif sink is not None:
                sink.info("%s", message)
        except Exception:
            log.exception("writing the access log failed")


class _Peer(NamedTuple):
    """What the audit record reads of aiohttp's request: the client and the transport."""

    remote: str
    transport: Any


def hot_get_for(app: StoreApp, access_log: AccessLog | logging.Logger | None) -> HotGet | None:
    """The hot GET of ``app``'s worker, or ``None`` where it cannot give the same answers.

    It needs a storage backend with synchronous reads (SQLite) and the app's own SNI rule
    (a test's ``sni_of`` would be bypassed).
    """
    read = getattr(app.raw_storage, "read_by_aor", None)
    if not callable(read) or not app.default_sni:
        return None
    rows = getattr(app.raw_storage, "read_answer_rows", None)
    return HotGet(app, read, rows=rows if callable(rows) else None, access_log=access_log)
