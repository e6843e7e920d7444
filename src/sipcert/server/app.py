"""The Store's HTTP handling: ``/search-cgi`` GET, HEAD, PUT and DELETE (draft §4.3-§5).

The Subscriber's revocation page (draft §5: "some other authenticated, out of band
mechanism for the Subscriber to revoke certificates"), ``/account`` and
``/account/revoke``, is :mod:`sipcert.server.web`; this module only routes to it and lends
it the Store's Digest check, so both paths share the realm, nonces and rate limits.

A thin I/O layer: the decisions are :mod:`sipcert.proto.store` (query, answers, upload
checks) and :mod:`sipcert.proto.digest`; this module reads the request, looks up storage and
credentials, and turns every :class:`~sipcert.errors.SipCertError` into its answer through
:func:`~sipcert.proto.store.error_to_response`, in one place.

Rules that belong to the connection rather than the request:

* the TLS server name (SNI) is the domain the connection speaks for; an AOR of another
  domain, served here or not, is answered 404 (draft §4.3: the Store proves its domain in
  the handshake, so it may only answer for that domain);
* the Digest realm is that domain (draft §5: the same secret as for SIP registration), and
  an unknown user fails exactly like a wrong password;
* the PUT body is read with a size limit, and a declared ``Content-Length`` over it is
  refused (413) without reading anything.

The handler is an ``aiohttp`` low-level handler (``aiohttp.web.Server``): no router or
middleware layer, because the Store has one resource and GET speed matters.

The access log (:class:`AccessLog`) is for the same reason not a :mod:`logging` record per
request: formatting a record and writing it costs more than answering the GET (measured in
docs/benchmarks.md). It writes the same line format to standard error, buffered, at least
once a second, when 64 KiB are waiting and when the server stops.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import quote

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from sipcert.errors import (
    AuthenticationError,
    DigestHeaderError,
    InputError,
    InputTooLargeError,
    NotFoundError,
    RateLimitedError,
    SipCertError,
    StaleNonceError,
    StorageError,
)
from sipcert.proto.aor import AOR
from sipcert.proto.certs import certificate_der
from sipcert.proto.digest import (
    DEFAULT_MAX_CLOCK_SKEW,
    DEFAULT_NONCE_LIFETIME,
    AsyncNonceCounter,
    DigestServer,
    MemoryNonceCounter,
    NonceCounter,
    parse_authorization,
    replay_error,
)
from sipcert.proto.edge import CLIENT_HEADER, DOMAIN_HEADER
from sipcert.proto.logsafe import log_safe
from sipcert.proto.ratelimit import (
    Admission,
    AsyncLoginLimiter,
    LoginLimiter,
    LoginLimits,
    MemoryLoginLimiter,
    address_key,
)
from sipcert.proto.store import (
    Response,
    StorePolicy,
    StoreQuery,
    authorize_delete,
    authorize_upload,
    certificates_response,
    check_host,
    conditional,
    error_response,
    error_to_response,
    parse_description,
    parse_query,
    parse_upload,
)
from sipcert.server.answers import AnswerCache
from sipcert.server.audit import Audit
from sipcert.server.credentials import CredentialSource
from sipcert.server.jsonlog import iso_time, json_line
from sipcert.server.metrics import Metrics, route_of
from sipcert.server.ops import HEALTH_PATH, READY_PATH, Health
from sipcert.server.shared import as_async_counter, as_async_limiter, confirm_for
from sipcert.server.tlog import LOG_PREFIX, PROOF_PATH, LoggedStore, TransparencyLog
from sipcert.server.tls import sni_domain
from sipcert.server.web import ACCOUNT_PATH, REVOKE_PATH, AccountPages, CsrfTokens
from sipcert.storage import CertificateStore, StoredCertificate

__all__ = [
    "ACCESS_LOGGER",
    "ALLOWED_METHODS",
    "SEARCH_PATH",
    "AccessLog",
    "PutFields",
    "StoreAccessLogger",
    "StoreApp",
    "access_log_format",
    "access_log_options",
    "answer_for",
]

log = logging.getLogger("sipcert.server")
#: Logger name of the access log lines (also the name written in front of each line).
ACCESS_LOGGER = "sipcert.access"

#: The one resource (draft §4.5: ``https://host:port/search-cgi?email=aor``).
SEARCH_PATH = "/search-cgi"
ALLOWED_METHODS = ("GET", "HEAD", "PUT", "DELETE")
_ALLOW = ", ".join(ALLOWED_METHODS)


def unauthorized_text(domain: str) -> str:
    """The body of every non-stale 401 of ``domain``: the same for every user, so nothing
    tells unknown users apart, and it says which user name to type.

    The login dialog cannot say it: the realm must stay the domain, because stored HA1 values
    (the users file, Kamailio's ``ha1``) are ``H(user:realm:password)``, and Chromium and
    Firefox (since 93) no longer show the realm anyway. A browser shows this body when its
    dialog is dismissed.
    """
    return (
        f"Digest authentication required (draft §5): the user name is the part of your "
        f"address before @{domain} (for alice@{domain}, type alice), the password your SIP "
        "password"
    )


_STALE = "stale Digest nonce: retry with the new nonce"
_NO_CREDENTIALS = "no Authorization header"
_INTERNAL = "internal error"
#: The ``Content-Type`` of aiohttp's ``web.Response(text=..., content_type="text/plain")``.
_TEXT_PLAIN = "text/plain; charset=utf-8"
#: ``PIPE_BUF`` on Linux: the largest write a pipe never interleaves with other writers'.
_ATOMIC_WRITE = 4096


def access_log_format() -> str:
    """aiohttp access log format: peer, request line, status, size, seconds. No headers.

    The format of aiohttp's own ``AccessLogger``; :class:`StoreAccessLogger` writes the same
    fields without interpreting it.
    """
    return '%a "%r" %s %b %Tf'


def _access_fields(
    request: web.BaseRequest, response: web.StreamResponse, seconds: float
) -> dict[str, Any]:
    """The fields of a JSON access line: those of :func:`access_log_format`, named."""
    version = request.version
    return {
        "remote": request.remote or "-",
        "method": request.method,
        "path": request.path_qs,
        "version": f"HTTP/{version.major}.{version.minor}",
        "status": response.status,
        "bytes": response.body_length,
        "seconds": round(seconds, 6),
    }


def _access_line(request: web.BaseRequest, response: web.StreamResponse, seconds: float) -> str:
    """The fields of :func:`access_log_format`: never a header, so never ``Authorization``."""
    version = request.version
    return (
        f'{request.remote or "-"} "{request.method} {request.path_qs} '
        f'HTTP/{version.major}.{version.minor}" {response.status} {response.body_length} '
        f"{seconds:06f}"
    )


class AccessLog:
    """The access log of one worker: lines buffered in memory, written in batches.

    Each line looks exactly like a :mod:`logging` line of the ``sipcert.access`` logger under
    :func:`sipcert.server.run.setup_logging` (``time level logger: message``), so the log
    reads as before. The buffer is written to ``stream`` (default: the current
    ``sys.stderr``) ``flush_interval`` seconds after its first line, as soon as it holds
    ``max_buffer`` bytes, and by :meth:`close`; a hard crash loses at most that much. Writes
    are whole lines of at most 4 KiB each, so workers sharing standard error never cut into
    each other's lines; one worker's lines stay in order.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        flush_interval: float = 1.0,
        max_buffer: int = 64 * 1024,
        clock: Callable[[], float] = time.time,
        json_lines: bool = False,
    ) -> None:
        self.json_lines = json_lines
        self._stream = stream
        self._flush_interval = flush_interval
        self._max_buffer = max_buffer
        self._clock = clock
        self._lines: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._stamp = ""
        self._closed = False
        self._failed = False

    def write(self, message: str) -> None:
        """Add one line (``message`` without time, level or newline), escaped (issue 9)."""
        self.write_escaped(log_safe(message))

    def write_escaped(self, message: str) -> None:
        """:meth:`write` of a ``message`` that :func:`log_safe` leaves as it is, not scanned
        again: the hot GET builds its line of escaped and known-safe parts (issue 13)."""
        now = self._clock()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        self._add(
            f"{self._stamp},{int((now - second) * 1000):03d} INFO {ACCESS_LOGGER}: {message}\n"
        )

    def write_fields(self, fields: dict[str, Any]) -> None:
        """Add one JSON line (``log_format = "json"``): time, level, logger, then ``fields``."""
        head = {"time": iso_time(self._clock()), "level": "INFO", "logger": ACCESS_LOGGER}
        self._add(json_line({**head, **fields}) + "\n")

    def _add(self, line: str) -> None:
        self._lines.append(line)
        self._size += len(line) if line.isascii() else len(line.encode())
        if self._closed or self._size >= self._max_buffer:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no event loop: nothing would ever flush later
                self.flush()
            else:
                self._timer = loop.call_later(self._flush_interval, self.flush)

    def flush(self) -> None:
        """Write every waiting line now (a few writes of whole lines, see above)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        lines, self._lines, self._size = self._lines, [], 0
        stream = self._stream if self._stream is not None else sys.stderr
        try:
            for chunk in _atomic_chunks(lines):
                stream.write(chunk)
                stream.flush()
        except (OSError, ValueError) as exc:  # a closed or broken stream: drop, say it once
            if not self._failed:
                self._failed = True
                log.error("access log lines lost: cannot write them: %s", exc)

    def close(self) -> None:
        """Write what is waiting; later lines are written one by one."""
        self._closed = True
        self.flush()


def _atomic_chunks(lines: list[str]) -> Iterable[str]:
    """Whole lines joined into writes of at most :data:`_ATOMIC_WRITE` bytes.

    Several workers share standard error; a pipe (or journald's socket) keeps a write up to
    ``PIPE_BUF`` in one piece, so no line of one worker is cut by another worker's lines.
    """
    chunk: list[str] = []
    size = 0
    for line in lines:
        length = len(line) if line.isascii() else len(line.encode())
        if chunk and size + length > _ATOMIC_WRITE:
            yield "".join(chunk)
            chunk, size = [], 0
        chunk.append(line)
        size += length
    if chunk:
        yield "".join(chunk)


class StoreAccessLogger(AbstractAccessLogger):
    """aiohttp's access-log hook for the Store (``access_log_class``).

    aiohttp makes one per connection with the ``access_log`` object given to
    ``web.Server``: an :class:`AccessLog` gets the buffered line, a :class:`logging.Logger`
    gets the same message as one INFO record (slower; for embedding and tests).
    """

    __slots__ = ("_sink",)

    def __init__(self, logger: Any, log_format: str = "") -> None:
        super().__init__(logger, log_format)
        self._sink: AccessLog | logging.Logger = logger

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        sink = self._sink
        try:
            if isinstance(sink, AccessLog) and sink.json_lines:
                sink.write_fields(_access_fields(request, response, time))
                return
            message = _access_line(request, response, time)
            if isinstance(sink, AccessLog):
                sink.write(message)
            else:
                sink.info("%s", message)
        except Exception:
            log.exception("writing the access log failed")

    @property
    def enabled(self) -> bool:
        sink = self._sink
        return isinstance(sink, AccessLog) or sink.isEnabledFor(logging.INFO)


def access_log_options(access_log: AccessLog | logging.Logger | None) -> dict[str, Any]:
    """The ``web.Server`` keyword arguments for this access log (``None``: no access log)."""
    if access_log is None:
        return {"access_log": None}
    return {
        "access_log": access_log,
        "access_log_class": StoreAccessLogger,
        "access_log_format": access_log_format(),
    }


class _RefusalError(Exception):
    """A finished answer that bypasses the normal path (401 with challenges, 405).

    It carries the :class:`~sipcert.proto.store.Response`, so the hot PUT
    (:meth:`StoreApp.answer_put`) renders the same answer as aiohttp; ``close``: the
    connection is closed after it.
    """

    def __init__(self, answer: Response, *, close: bool = False) -> None:
        super().__init__(answer.status)
        self.answer = answer
        self.close = close

    @property
    def response(self) -> web.Response:
        response = _to_web(self.answer)
        if self.close:
            response.force_close()
        return response


@dataclass(frozen=True, slots=True)
class PutFields:
    """What the answer to an enrollment PUT depends on once its head is checked, read from
    aiohttp's request or from the bytes of the hot path (server.hotget, issue 13)."""

    domain: str
    aor: AOR
    #: The device label (``Content-Description``, already checked).
    label: str | None
    authorization: str | None
    content_type: str | None
    #: The request-target as sent (the Digest ``uri`` is compared with it).
    raw_path: str
    #: The client's address (the limiter's key and the audit record's).
    remote: str | None
    #: What the audit record reads the addresses from (``remote``, ``transport``).
    peer: Any


def _to_web(answer: Response) -> web.Response:
    # web.Response copies the headers into its own CIMultiDict: no second copy here.
    return web.Response(status=answer.status, headers=answer.headers, body=answer.body)


def _plain(status: int, text: str) -> web.Response:
    return _to_web(error_response(status, text))


class StoreApp:
    """The request handler of one Store process.

    ``clock`` gives Unix time; tests pass their own to move time (production uses
    :func:`time.time`). ``sni_of`` finds a request's TLS domain (default: the tag set by
    :mod:`sipcert.server.tls`).
    """

    def __init__(
        self,
        *,
        domains: Iterable[str],
        storage: CertificateStore,
        credentials: CredentialSource,
        policy: StorePolicy,
        nonce_secret: bytes,
        nonce_counter: NonceCounter | AsyncNonceCounter | None = None,
        nonce_lifetime: float = DEFAULT_NONCE_LIFETIME,
        auth_failures: int = 20,
        auth_failure_window: float = 60.0,
        limiter: LoginLimiter | AsyncLoginLimiter | None = None,
        clock: Callable[[], float] = time.time,
        sni_of: Callable[[web.BaseRequest], str | None] | None = None,
        metrics: Metrics | None = None,
        audit: Audit | None = None,
        tlog: TransparencyLog | None = None,
        answer_cache: AnswerCache | None = None,
    ) -> None:
        self.domains = frozenset(domains)
        #: Rendered GET answers (issue 13); its change counter must be ``storage``'s.
        self.answer_cache = answer_cache
        self.metrics = metrics or Metrics()
        self.audit = audit
        # Issue 14: every enrollment and revocation (PUT, DELETE, the revocation page) is
        # logged before it is answered (docs/transparency.md).
        self.tlog = tlog
        #: The backend itself, for its synchronous reads (server.hotget): reads pass
        #: through the transparency log's wrapper unchanged.
        self.raw_storage = storage
        if tlog is not None:
            storage = LoggedStore(storage, tlog)
        self.storage = storage
        self.credentials = credentials
        self.policy = policy
        self._clock = clock
        self._sni_of = sni_of or _sni_or_edge_header
        #: Whether the connection's domain is the TLS server name (no test's ``sni_of``).
        self.default_sni = sni_of is None
        self._digest = {
            domain: DigestServer(nonce_secret, domain, nonce_lifetime=nonce_lifetime)
            for domain in self.domains
        }
        # One count per nonce for every realm, awaited: with a shared database it is a
        # round trip (issue 10); without a counter it is this process's own.
        if nonce_counter is None:
            nonce_counter = MemoryNonceCounter(retention=nonce_lifetime + DEFAULT_MAX_CLOCK_SKEW)
        self._nonces = as_async_counter(nonce_counter)
        # Digest is an online password oracle: checked answers and 429s cost tokens per
        # client address, checked answers per user (proto.ratelimit). Workers and frontends
        # pass one shared ``limiter``; without it the state is this process's own.
        if limiter is None:
            limiter = MemoryLoginLimiter(
                LoginLimits(
                    address_failures=auth_failures,
                    user_failures=2 * auth_failures,
                    window=auth_failure_window,
                )
            )
        self._limiter = as_async_limiter(limiter)
        self._confirm = confirm_for(self._nonces, self._limiter)
        # Draft §5 revocation page; its CSRF key is derived from the nonce secret, which
        # every worker shares, so a token of one worker is good at every other.
        self.account_pages = AccountPages(
            storage=storage,
            authenticate=self._authenticate,
            read_body=_read_body,
            csrf=CsrfTokens(nonce_secret),
            clock=clock,
            delete=self._revoke,
        )
        self.health = Health(
            storage=lambda: self.storage,
            credentials=lambda: self.credentials,
            domain=min(self.domains) if self.domains else "invalid",
            metrics=self.metrics,
            clock=clock,
        )

    @property
    def clock(self) -> Callable[[], float]:
        """The Unix time the answers are made at (expiry, nonces)."""
        return self._clock

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        """Answer one request; nothing but a prepared answer ever leaves this method."""
        start = time.perf_counter()
        response = await self._answer(request)
        self.metrics.request(
            route_of(request.path), request.method, response.status, time.perf_counter() - start
        )
        return response

    async def local(self, request: web.BaseRequest) -> web.StreamResponse:
        """The handler of the unix socket (edge mode): the nginx in front names the client.

        Its address is what the guessing limiter and the audit log need; the TLS listeners
        never read the header (their handler is :meth:`__call__`).
        """
        if _on_unix_socket(request):
            client = request.headers.get(CLIENT_HEADER)
            if client:
                request = request.clone(remote=client)
        return await self(request)

    async def _answer(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            return await self._dispatch(request)
        except _RefusalError as refusal:
            return self._finish(request, refusal.response)
        except SipCertError as exc:
            return self._finish(request, self._error(request, exc))
        except Exception:
            log.exception("internal error answering %s %s", request.method, request.path)
            return self._finish(request, _plain(500, _INTERNAL))

    # -- routing -------------------------------------------------------------------------

    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        _check_framing(request)
        if request.path in (HEALTH_PATH, READY_PATH):  # whatever the SNI name (issue 10)
            return await self.health.answer(request)
        if request.path != SEARCH_PATH:
            if self.tlog is not None and request.path.startswith(LOG_PREFIX):
                return await self._log_resource(request, self.tlog)
            if request.path in (ACCOUNT_PATH, REVOKE_PATH):
                return await self.account_pages.handle(request, self._domain_of(request))
            raise NotFoundError(f"no such resource; the Store answers at {SEARCH_PATH}")
        method = request.method
        if method not in ALLOWED_METHODS:
            answer = error_response(405, f"method {method} is not allowed; use {_ALLOW}")
            raise _RefusalError(Response(405, (*answer.headers, ("Allow", _ALLOW)), answer.body))
        domain = self._domain_of(request)
        query = parse_query(request.raw_path.partition("?")[2])
        if method in ("GET", "HEAD"):
            return await self._get(request, query, domain)
        if method == "PUT":
            return await self._put(request, query, domain)
        return await self._delete(request, query, domain)

    async def _log_resource(
        self, request: web.BaseRequest, tlog: TransparencyLog
    ) -> web.StreamResponse:
        """``/log/...``: the domain's tlog-tiles resources (server.tlog)."""
        if request.method not in ("GET", "HEAD"):
            answer = error_response(405, "the log is read-only; use GET")
            raise _RefusalError(
                Response(405, (*answer.headers, ("Allow", "GET, HEAD")), answer.body)
            )
        domain = self._domain_of(request)
        if request.path == PROOF_PATH:
            query = parse_query(request.raw_path.partition("?")[2])
            aor = self._aor_for(query, domain, "GET")
            now = datetime.fromtimestamp(self._clock(), UTC)
            certs = await self.storage.get_by_aor(str(aor), now)
            response = web.Response(body=await tlog.proofs(domain, str(aor), certs))
            response.headers["Content-Type"] = "application/json"
            response.headers["Cache-Control"] = "no-store"
            return response
        return await tlog.handle(request.path, domain)

    def _domain_of(self, request: web.BaseRequest) -> str:
        """The served domain this connection speaks for (TLS SNI), or 404 (draft §4.3)."""
        domain = self._sni_of(request)
        if domain is None or domain not in self.domains:
            raise NotFoundError("this connection names no domain served here (TLS SNI)")
        return domain

    def _aor_for(self, query: StoreQuery, domain: str, method: str) -> AOR:
        if query.aor is None:
            raise InputError(f"{method} needs the AOR: ?email=<aor> or ?sip=<aor>")
        self._check_domain(query.aor, domain)
        return query.aor

    def _check_domain(self, aor: AOR, domain: str) -> None:
        """Draft §4.3: a connection speaks for its SNI domain only."""
        if aor.host == domain:
            return
        if aor.host in self.domains:
            raise NotFoundError(
                f"{aor.host} is not the domain of this connection; connect with SNI {aor.host}"
            )
        raise NotFoundError(f"this Store does not serve the domain {aor.host}")

    # -- GET / HEAD ----------------------------------------------------------------------

    async def _get(
        self, request: web.BaseRequest, query: StoreQuery, domain: str
    ) -> web.StreamResponse:
        now_ts = self._clock()
        if query.aor is not None:
            self._check_domain(query.aor, domain)
        cache = self.answer_cache
        aor = None if query.aor is None else str(query.aor)
        key = (domain, aor, query.cert_hash)
        version = 0
        if cache is not None:
            # Asked before the rows are read: a write committed after this empties it again.
            cached, version = cache.get(key, now_ts)
            if cached is not None:
                return _to_web(conditional(cached, request.headers.get("If-None-Match")))
        now = datetime.fromtimestamp(now_ts, UTC)
        if aor is not None:
            certs = await self.storage.get_by_aor(aor, now)
            if query.cert_hash is not None:
                certs = [c for c in certs if c.cert_hash == query.cert_hash]
        else:
            found = await self.storage.get_by_cert_hash(query.cert_hash or "", now)
            certs = [found] if found is not None and _cert_domain(found) == domain else []
        answer = answer_for(certs, max_age=self.policy.max_age)
        if cache is not None:
            cache.put(key, answer, [c.not_after.timestamp() for c in certs], version)
        return _to_web(conditional(answer, request.headers.get("If-None-Match")))

    # -- PUT -----------------------------------------------------------------------------

    async def _put(
        self, request: web.BaseRequest, query: StoreQuery, domain: str
    ) -> web.StreamResponse:
        aor = self._aor_for(query, domain, "PUT")
        if query.cert_hash is not None:
            raise InputError("PUT takes no certHash: the certificate is the body")
        limit = self.policy.max_certificate_size
        declared = request.content_length
        if declared is not None and declared > limit:
            raise InputTooLargeError(f"certificate upload larger than {limit} bytes")
        descriptions = request.headers.getall("Content-Description", [])
        if len(descriptions) > 1:
            raise InputError("give one Content-Description (the device label), not several")
        # Display text only (the /account page): never logged, never trusted (RFC 2045 §8).
        label = parse_description(descriptions[0] if descriptions else None)
        headers = request.headers
        fields = PutFields(
            domain,
            aor,
            label,
            headers.get("Authorization"),
            headers.get("Content-Type"),
            request.raw_path,
            request.remote,
            request,
        )
        return _to_web(await self.enroll(fields, lambda: _read_body(request, limit)))

    def put_now(
        self,
        aor: AOR,
        domain: str,
        description: str | None,
        declared: int,
        *,
        authorization: str | None,
        content_type: str | None,
        raw_path: str,
        remote: str | None,
        peer: Any,
    ) -> PutFields | None:
        """The checks :meth:`_put` makes before authenticating, made without awaiting
        (server.hotget, issue 13): the fields for :meth:`answer_put`, or ``None`` where
        :meth:`_put` answers at once (another domain's AOR: 404; an upload over the size
        limit: 413; a malformed device label: 400). Nothing has changed any state then.
        """
        if aor.host != domain or declared > self.policy.max_certificate_size:
            return None
        try:
            label = parse_description(description)
        except SipCertError:
            return None
        return PutFields(domain, aor, label, authorization, content_type, raw_path, remote, peer)

    async def answer_put(self, fields: PutFields, body: bytes) -> Response:
        """The answer :meth:`__call__` gives a PUT that passed :meth:`put_now`, its whole
        ``body`` in hand: :meth:`enroll`, and every failure answered as :meth:`_answer`
        answers it (the body is read, so no failure closes the connection)."""
        try:
            return await self.enroll(fields, lambda: _in_hand(body))
        except _RefusalError as refusal:
            return refusal.answer
        except SipCertError as exc:
            return self._error_answer("PUT", SEARCH_PATH, exc)
        except Exception:
            log.exception("internal error answering %s %s", "PUT", SEARCH_PATH)
            return error_response(500, _INTERNAL)

    async def enroll(
        self, fields: PutFields, read_body: Callable[[], Awaitable[bytes]]
    ) -> Response:
        """Draft §5.1 once the head is checked: Digest, then the body, the upload's checks,
        storage, audit; the answer (201 new, 200 already stored). Both paths call it: aiohttp's
        :meth:`_put` and the hot PUT (:meth:`answer_put`); failures are raised."""
        username = await self._authenticate_as(
            fields.domain, fields.authorization, "PUT", fields.raw_path, SEARCH_PATH, fields.remote
        )
        body = await read_body()
        limit = self.policy.max_certificate_size
        cert = parse_upload(body, fields.content_type, max_size=limit)
        now_ts = self._clock()
        now = datetime.fromtimestamp(now_ts, UTC)
        aor = fields.aor
        authorize_upload(
            cert,
            aor,
            digest_username=username,
            tls_domain=fields.domain,
            now=now,
            policy=self.policy,
        )
        stored = StoredCertificate.from_der(
            str(aor),
            certificate_der(cert),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            created=now,
            label=fields.label,
        )
        created = await self.storage.add(stored, max_per_aor=self.policy.max_per_aor, now=now)
        if created:
            self.metrics.enrolled()
        if self.audit is not None:
            self.audit.enrolled(
                fields.peer,
                user=username,
                aor=str(aor),
                sha256=stored.sha256,
                cert_hash=stored.cert_hash,
                new=created,
            )
        what = "enrolled" if created else "already enrolled"
        log.info("%s certificate %s for %s", what, stored.cert_hash, aor)
        location = f"{SEARCH_PATH}?certHash={quote(stored.cert_hash, safe='')}"
        return Response(
            201 if created else 200,
            (("Content-Type", _TEXT_PLAIN), ("Location", location)),
            f"{what}: certHash={stored.cert_hash}\n".encode(),
        )

    # -- DELETE --------------------------------------------------------------------------

    async def _delete(
        self, request: web.BaseRequest, query: StoreQuery, domain: str
    ) -> web.StreamResponse:
        aor = self._aor_for(query, domain, "DELETE")
        username = await self._authenticate(request, domain)
        authorize_delete(aor, digest_username=username)
        removed = await self._revoke(request, username, aor, query.cert_hash, "DELETE")
        if removed == 0:
            what = "that certificate" if query.cert_hash is not None else "any certificate"
            raise NotFoundError(f"{aor} has not {what} here")
        log.info("revoked %d certificate(s) of %s", removed, aor)
        return web.Response(status=204)

    async def _revoke(
        self, request: web.BaseRequest, username: str, aor: AOR, cert_hash: str | None, via: str
    ) -> int:
        """Delete (draft §5) for DELETE and the account page alike, counted and audited."""
        targets: list[StoredCertificate] = []
        if self.audit is not None:  # which ones, for the record: looked up just before
            now = datetime.fromtimestamp(self._clock(), UTC)
            targets = [
                c
                for c in await self.storage.get_by_aor(str(aor), now)
                if cert_hash is None or c.cert_hash == cert_hash
            ]
        removed = await self.storage.delete(str(aor), cert_hash)
        if removed:
            self.metrics.revoked(removed)
            if self.audit is not None:
                self.audit.revoked(
                    request,
                    user=username,
                    aor=str(aor),
                    sha256=[c.sha256 for c in targets],
                    cert_hash=[c.cert_hash for c in targets],
                    removed=removed,
                    via=via,
                )
        return removed

    # -- Digest (RFC 7616; draft §5) ------------------------------------------------------

    async def _authenticate(self, request: web.BaseRequest, domain: str) -> str:
        """:meth:`_authenticate_as` with the fields of ``request``."""
        return await self._authenticate_as(
            domain,
            request.headers.get("Authorization"),
            request.method,
            request.raw_path,
            request.path,
            request.remote,
        )

    async def _authenticate_as(
        self,
        domain: str,
        header: str | None,
        method: str,
        raw_path: str,
        path: str,
        remote: str | None,
    ) -> str:
        """The Digest username of a correct answer; else a 401 with fresh challenges.

        The limiter decides first, from the address, the user name and the time only
        (never the password, before any credential lookup): 429 with ``Retry-After``, and
        the refusal is charged to the address. An admitted answer has reserved its tokens;
        a success (or an answer that guessed nothing) gets them back.
        """
        server = self._digest[domain]
        now = self._clock()
        address = address_key(remote)
        try:
            if header is None or not header.strip():
                raise AuthenticationError(_NO_CREDENTIALS)
            if header.split(None, 1)[0].lower() != "digest":
                raise AuthenticationError("Authorization is not Digest")
            answer = parse_authorization(header)
        except AuthenticationError as exc:
            await self._check_rate(address, None, now)
            raise self._challenge(method, path, server, domain, now, exc) from exc
        except DigestHeaderError:
            await self._check_rate(address, None, now)
            raise
        user_key = f"{answer.username}@{domain}"
        admission = await self._check_rate(address, user_key, now)
        try:
            credential = await self.credentials.lookup(answer.username, domain)
            checked = server.check(answer, credential, method=method, request_uri=raw_path, now=now)
        except StaleNonceError as exc:  # only claimed for a correct answer: not a guess
            await self._limiter.release(address, user_key, admission, now, trust=False)
            raise self._challenge(method, path, server, domain, now, exc) from exc
        except AuthenticationError as exc:  # a failed guess keeps its reserved tokens
            self.metrics.auth_failed()
            raise self._challenge(method, path, server, domain, now, exc) from exc
        except BaseException:  # storage, malformed answer: nothing was guessed
            await self._limiter.release(address, user_key, admission, now, trust=False)
            raise
        # Last, once the answer is right: RFC 7616 §3.4 (one count per nonce, everywhere);
        # the release (trusted) rides along only when the count advanced (shared.Confirm).
        if not await self._confirm(checked.nonce, checked.nc, now, address, user_key, admission):
            replay = replay_error(checked.nc)  # a replay keeps its reserved tokens
            self.metrics.auth_failed()
            raise self._challenge(method, path, server, domain, now, replay) from replay
        return checked.username

    def challenge_now(
        self, aor: AOR, domain: str, description: str | None, declared: int, remote: str | None
    ) -> Response | None:
        """The 401 :meth:`_put` answers a PUT of ``aor`` without credentials, decided without
        awaiting anything (server.hotget, issue 13), or ``None`` when only :meth:`_put` can
        tell: another domain's AOR, an upload over the size limit (413), a malformed device
        label (400), or a limiter that cannot admit a challenge by a read alone.

        The same checks in the same order, the same challenges (a fresh nonce) and log line.
        """
        if aor.host != domain or declared > self.policy.max_certificate_size:
            return None
        try:
            parse_description(description)
        except SipCertError:
            return None
        now = self._clock()
        quick = getattr(self._limiter, "admit_challenge_now", None)
        if quick is None or not quick(address_key(remote), now):
            return None  # a refusal (429) is charged and logged by the full path
        log.info("401 for PUT %s: %s", SEARCH_PATH, _NO_CREDENTIALS)
        answer = error_response(401, unauthorized_text(domain))
        challenges = [("WWW-Authenticate", v) for v in self._digest[domain].challenges(now)]
        return Response(401, (*answer.headers, *challenges), answer.body)

    @staticmethod
    def _challenge(
        method: str, path: str, server: DigestServer, domain: str, now: float, exc: Exception
    ) -> _RefusalError:
        """A 401 with fresh challenges (``stale`` for an expired nonce), to raise."""
        stale = isinstance(exc, StaleNonceError)
        log.info("401 for %s %s: %s", method, path, exc)
        answer = error_response(401, _STALE if stale else unauthorized_text(domain))
        challenges = [("WWW-Authenticate", v) for v in server.challenges(now, stale=stale)]
        return _RefusalError(Response(401, (*answer.headers, *challenges), answer.body))

    async def _check_rate(self, address: str, user: str | None, now: float) -> Admission:
        """429 unless the limiter admits the request (a refusal is charged to ``address``)."""
        admission = await self._limiter.admit(address, user, now)
        if not admission.admitted:
            self.metrics.rate_limited()
            by_user = admission.reason == "user"
            log.warning(
                "429 for %s: too many failed Digest answers %s",
                user if by_user else address,
                "for this user" if by_user else "from this address",
            )
            raise RateLimitedError(
                f"too many failed authentication attempts; retry in {admission.retry_after} s",
                admission.retry_after,
            )
        return admission

    # -- errors --------------------------------------------------------------------------

    def _error(self, request: web.BaseRequest, exc: SipCertError) -> web.Response:
        return _to_web(self._error_answer(request.method, request.path, exc))

    def _error_answer(self, method: str, path: str, exc: SipCertError) -> Response:
        if isinstance(exc, StorageError):
            self.metrics.database_error()
        if exc.http_status >= 500:
            # Storage and configuration failures name paths and hosts: log them, say little.
            log.error("%s %s failed: %s", method, path, exc)
            return error_response(
                exc.http_status, "service unavailable" if exc.http_status == 503 else _INTERNAL
            )
        return error_to_response(exc)

    @staticmethod
    def _finish(request: web.BaseRequest, response: web.Response) -> web.Response:
        """Close the connection when a request body was left unread and may never come."""
        if request.can_read_body and (
            response.status == 413 or request.headers.get("Expect", "").lower() == "100-continue"
        ):
            response.force_close()
        return response

    # -- housekeeping --------------------------------------------------------------------

    async def purge_forever(self, interval: float) -> None:
        """Discard expired certificates every ``interval`` seconds (draft §5.1 "may discard")."""
        while True:
            try:
                removed = await self.storage.purge_expired(
                    datetime.fromtimestamp(self._clock(), UTC)
                )
            except SipCertError as exc:
                self.metrics.database_error()
                log.error("purging expired certificates failed: %s", exc)
            else:
                if removed:
                    log.info("purged %d expired certificate(s)", removed)
            await asyncio.sleep(interval)


def _refuse_and_close(status: int, text: str) -> _RefusalError:
    # The framing of what follows cannot be trusted.
    return _RefusalError(error_response(status, text), close=True)


def _check_framing(request: web.BaseRequest) -> None:
    """What aiohttp's parser lets through but RFC 9112 refuses, before anything else.

    * no HTTP-version (an HTTP/0.9 "simple request"): the request-line is malformed (§3);
    * a major version other than 1: 505 (RFC 9110 §15.6.6);
    * a Host field with an invalid value (§3.2, :func:`~sipcert.proto.store.check_host`);
    * Transfer-Encoding in HTTP/1.0 (§6.1: the framing is faulty) or a transfer coding
      other than ``chunked``, which the Store does not implement: 501 (§6.1 SHOULD).
    """
    version = request.version
    if version.major == 0:
        raise _refuse_and_close(400, "malformed request line: no HTTP version (RFC 9112 §3)")
    if version.major != 1:
        raise _refuse_and_close(
            505, f"HTTP/{version.major}.{version.minor} is not supported here; use HTTP/1.1"
        )
    hosts = request.headers.getall("Host", [])
    if version >= (1, 1) or hosts:
        check_host(hosts)
    codings = [
        coding.strip().lower()
        for value in request.headers.getall("Transfer-Encoding", [])
        for coding in value.split(",")
    ]
    if codings and version < (1, 1):
        raise _refuse_and_close(400, "Transfer-Encoding in an HTTP/1.0 request (RFC 9112 §6.1)")
    if codings and codings != ["chunked"]:
        raise _refuse_and_close(501, "the only transfer coding accepted is chunked")


def _on_unix_socket(request: web.BaseRequest) -> bool:
    """True for a connection on the unix socket (edge mode), never for TCP listeners."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    return sock is not None and sock.family == socket.AF_UNIX


def _sni_or_edge_header(request: web.BaseRequest) -> str | None:
    """The TLS server name; on the unix socket only, the one nginx names in a header.

    On a TCP listener the header is never read: only the handshake speaks for a domain
    (draft §4.3). nginx passes the client's SNI as sent, so it is compared as the SNI
    callback compares (lower case, no trailing dot).
    """
    domain = sni_domain(request.transport)
    if domain is not None or not _on_unix_socket(request):
        return domain
    named = request.headers.get(DOMAIN_HEADER)
    return named.lower().rstrip(".") if named else None


def answer_for(
    certs: Sequence[StoredCertificate], *, max_age: int, if_none_match: str | None = None
) -> Response:
    """The GET answer for these stored certificates: the one rendering the Store answers
    with and the edge publisher writes to files (:mod:`sipcert.server.publish`)."""
    return certificates_response(
        [c.der for c in certs],
        [c.sha256 for c in certs],
        max_age=max_age,
        if_none_match=if_none_match,
        labels=[c.label for c in certs],
        enrolled=[c.created for c in certs],
    )


def _cert_domain(cert: StoredCertificate) -> str:
    return cert.aor.rpartition("@")[2]


async def _in_hand(body: bytes) -> bytes:
    """A body the hot path read whole, as :func:`_read_body` gives one."""
    return body


async def _read_body(request: web.BaseRequest, limit: int) -> bytes:
    """The request body, refusing (413) as soon as it grows past ``limit`` bytes."""
    if request.headers.get("Expect", "").lower() == "100-continue" and request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the 100 is not part of the answer's size
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            chunk = await request.content.readany()
        except ConnectionError as exc:  # the client went away mid-upload: not our error
            raise InputError("the connection closed before the upload was complete") from exc
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise InputTooLargeError(f"certificate upload larger than {limit} bytes")
        chunks.append(chunk)
