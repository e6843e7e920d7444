"""aiohttp's low-level server with the Store's manners (issue 9).

:class:`StoreServer` is ``aiohttp.web.Server`` with a request handler that

* answers every request aiohttp itself refuses (a malformed request line, ``GET *``, a bad
  header) like the Store's own errors: the status and a ``text/plain`` reason, with one
  WARNING line, rate limited (:class:`~sipcert.server.logsafe.RateLimitedLog`), instead of
  aiohttp's ERROR record with a traceback per request and a body that echoes the bytes;
* logs aiohttp's other internal failures as one line without a traceback;
* names no versions: the ``Server`` header of every answer, aiohttp's own included, is
  :data:`SERVER_NAME`.

It reads two attributes aiohttp's ``Server.__call__`` reads too (``_loop``, ``_kwargs``).
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
)
from aiohttp.web_protocol import RequestHandler
from multidict import CIMultiDict

from sipcert.errors import SipCertError
from sipcert.proto.store import error_response
from sipcert.server.logsafe import RateLimitedLog

__all__ = [
    "MAX_FIELD_SIZE",
    "MAX_TARGET_SIZE",
    "SERVER_NAME",
    "StoreServer",
    "line_too_long_status",
    "refusal_reason",
    "refusal_status",
    "set_client_address",
]

log = logging.getLogger("sipcert.server")

#: The ``Server`` header of every answer: no library, no versions.
SERVER_NAME = "sipcert"
#: WARNING lines about refused requests, per worker and second, before they are summarized.
REFUSALS_PER_SECOND = 10


#: aiohttp's limits on the request-target and on one header field. They differ by one so
#: that a :class:`LineTooLong` tells which it was: RFC 9112 §3 wants 414 for a target too
#: long to parse, RFC 6585 §5 431 for a header field.
MAX_TARGET_SIZE = 8190
MAX_FIELD_SIZE = 8191


#: How aiohttp's parsers (C and Python) begin the error for more than ``max_headers`` fields.
_TOO_MANY_HEADERS = "Too many headers"


def line_too_long_status(exc: LineTooLong) -> int:
    """414 when aiohttp's limit on the request-target was hit, else 431 (a header field)."""
    return 414 if len(exc.args) > 1 and exc.args[1] == MAX_TARGET_SIZE else 431


def refusal_status(status: int, exc: BaseException | None) -> int:
    """The status of an answer aiohttp made, where the RFCs name a closer one than its 400:
    414 for a request-target too long (RFC 9112 §3), 431 for a header field too long or too
    many of them (RFC 6585 §5)."""
    if isinstance(exc, LineTooLong):
        return line_too_long_status(exc)
    if isinstance(exc, BadHttpMessage) and exc.message.startswith(_TOO_MANY_HEADERS):
        return 431
    return status


def refusal_reason(status: int, exc: BaseException | None) -> str:
    """The reason sent with an answer aiohttp made (never the request's bytes)."""
    if status == 500:
        return "internal error"
    if status == 504:
        return "the request took too long to answer"
    if isinstance(exc, SipCertError):  # our own refusal (e.g. the 431 of server.conn): as said
        return str(exc)
    if isinstance(exc, BadHttpMethod):
        return "malformed request line: not an HTTP method"
    if isinstance(exc, InvalidURLError):
        return "malformed request target: the Store answers at /search-cgi"
    if isinstance(exc, LineTooLong):
        if line_too_long_status(exc) == 414:
            return "request target too long (RFC 9112 §3)"
        return "header field too long (RFC 6585 §5)"
    if isinstance(exc, InvalidHeader):
        return "malformed header"
    if isinstance(exc, BadHttpMessage):
        # The C parser's first line is llhttp's description; the bytes follow on later lines.
        first = exc.message.split("\n", 1)[0].strip().rstrip(":").strip()[:80]
        return f"malformed request: {first.lower()}" if first else "malformed request"
    try:
        return HTTPStatus(status).phrase.lower()
    except ValueError:
        return "refused"


class _StoreRequestHandler(RequestHandler):
    refusals: RateLimitedLog
    #: The client behind a trusted load balancer (PROXY protocol, :mod:`sipcert.server.conn`).
    client_address: tuple[str, int] | None = None

    @property
    def peername(self) -> Any:
        """The client's address: from the PROXY header when there was one, else the socket's.

        ``request.remote``, the access log and the limiter all read it from here.
        """
        if self.client_address is not None:
            return self.client_address
        return RequestHandler.peername.__get__(self)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        status = refusal_status(status, exc)
        reason = refusal_reason(status, exc)
        # A 5xx here is aiohttp's (the Store's handler answers its own): say what failed.
        detail = f" ({type(exc).__name__}: {exc})" if status >= 500 and exc is not None else ""
        self.refusals.warning(
            "refused a request from %s: %d %s%s", request.remote or "-", status, reason, detail
        )
        if request.writer.output_size > 0:  # as aiohttp: the answer has begun, drop it
            raise ConnectionError("an answer was already being sent")
        answer = error_response(status, reason)
        response = web.Response(
            status=answer.status, headers=CIMultiDict(answer.headers), body=answer.body
        )
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        what = args[0] % args[1:] if args else "aiohttp failed"
        if isinstance(exc, BaseException):
            log.error("%s: %s: %s", what, type(exc).__name__, exc)
        else:
            log.error("%s", what)

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        if not resp.prepared:
            resp.headers["Server"] = SERVER_NAME
        return await super().finish_response(request, resp, start_time)


def set_client_address(handler: RequestHandler, address: tuple[str, int]) -> None:
    """Make ``address`` the peer of every request of ``handler`` (a trusted PROXY header)."""
    if isinstance(handler, _StoreRequestHandler):
        handler.client_address = address


class StoreServer(web.Server):
    """``aiohttp.web.Server`` whose connections use the Store's request handler (above)."""

    def __init__(self, handler: Any, **kwargs: Any) -> None:
        kwargs.setdefault("max_line_size", MAX_TARGET_SIZE)
        kwargs.setdefault("max_field_size", MAX_FIELD_SIZE)
        super().__init__(handler, **kwargs)
        self.refusals = RateLimitedLog(log, "refused requests", per_second=REFUSALS_PER_SECOND)

    async def shutdown(self, timeout: float | None = None) -> None:
        self.refusals.summarize()  # the lines left out of the last window, before exiting
        await super().shutdown(timeout)

    def __call__(self) -> RequestHandler:
        handler = _StoreRequestHandler(self, loop=self._loop, **self._kwargs)
        handler.refusals = self.refusals
        return handler
