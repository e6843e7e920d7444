"""The Store's everyday request, read and answered as bytes (issue 13, "the hot GET").

Almost every request a Store sees is a sipcert client's ``GET /search-cgi?email=user%40host
HTTP/1.1`` with a handful of headers. Building aiohttp's request and response objects for it
cost more than finding the answer, so :mod:`sipcert.server.conn` offers each complete head to
:func:`parse_simple_get` first. It accepts only what it can judge strictly and cheaply:

* the request line ``GET`` or ``HEAD``, the target ``/search-cgi?`` with the canonical query
  spelling of :func:`~sipcert.proto.store.parse_query` (one ``email``/``sip``/``uri``
  attribute, ``user%40host`` with plain characters), ``HTTP/1.1`` (RFC 9112 §3);
* header fields from :data:`SIMPLE_FIELDS` only, each ``name: value`` with a non-empty value
  of visible ASCII and inner spaces, no obs-fold; exactly one valid ``Host`` (RFC 9112 §3.2);
  each field at most once (aiohttp refuses a repeated ``Host`` or ``User-Agent``); a
  ``Connection`` of ``close`` or ``keep-alive``;
* nothing that frames a body (``Content-Length``, ``Transfer-Encoding``), no ``Expect`` or
  ``Upgrade``: those are not in the list, so such a request is never simple.

:func:`parse_simple_put` reads the other everyday request, an enrollment ``PUT`` whose body
came in the same read (draft §5.1: the first without credentials, answered 401; the second
with one ``Authorization``), by the same rules plus exactly one ``Content-Length``.

Anything else is ``None``, and the caller hands the bytes to aiohttp unchanged, which
answers exactly as before. :func:`render_prefix` and :func:`render` lay out an answer the way
aiohttp 3 writes it for the Store (the app's headers in order, then ``Server``,
``Content-Length`` except for 304, ``Date``, and ``Connection: close`` when closing);
tests/integration/store/test_hot_get.py compares the two byte for byte.
"""

from __future__ import annotations

import functools
import re
from email.utils import formatdate
from http import HTTPStatus
from typing import Literal, NamedTuple

from sipcert.errors import InputError
from sipcert.proto.store import (
    PKIX_CERT,
    Response,
    check_host,
    enrolled_on_header_us,
    etag_for,
    format_description,
)

__all__ = [
    "MAX_SIMPLE_HEAD",
    "SIMPLE_FIELDS",
    "SIMPLE_PUT_FIELDS",
    "SimpleGet",
    "SimplePut",
    "caching_lines",
    "date_tails",
    "http_date",
    "parse_simple_get",
    "parse_simple_put",
    "render",
    "render_one_prefix",
    "render_prefix",
]

#: Longest head judged here; longer ones (rare for a GET) go to aiohttp and its limits.
MAX_SIMPLE_HEAD = 4096
#: Header fields (lower case) a simple request may carry: none changes the answer but
#: ``If-None-Match`` (applied per request) and ``Connection`` (keep-alive or close).
SIMPLE_FIELDS = frozenset(
    {
        b"host",
        b"user-agent",
        b"accept",
        b"accept-encoding",
        b"accept-language",
        b"connection",
        b"if-none-match",
        b"cache-control",
        b"pragma",
    }
)

#: Matched on the head decoded as Latin-1 (one character per byte, so offsets are the bytes'):
#: its groups are then ``str`` already, four ``bytes.decode`` fewer per request (issue 13).
_REQUEST_LINE = re.compile(
    r"(GET|HEAD) /search-cgi\?((?:email|sip|uri)=([A-Za-z0-9._-]+)%40([A-Za-z0-9.-]+))"
    r" HTTP/1\.1\r\n"
)
#: ``name: value`` (RFC 9112 §5): a token name without whitespace before the colon, optional
#: whitespace around a value of visible ASCII with inner spaces or tabs.
_FIELD = re.compile(rb"([A-Za-z0-9-]+):[ \t]*([\x21-\x7e](?:[\x20-\x7e\t]*[\x21-\x7e])?)[ \t]*")


class SimpleGet(NamedTuple):
    """One simple request head: what the answer depends on, and how long the head was."""

    #: ``GET`` or ``HEAD``.
    method: str
    #: The query string, canonical spelling (``email=user%40host``).
    query: str
    #: The user and host parts of the AOR in it, as sent.
    user: str
    host: str
    #: The ``If-None-Match`` value as sent (``None``: absent).
    if_none_match: str | None
    #: The client asked to close after the answer (``Connection: close``).
    close: bool
    #: Bytes of the head, its final empty line included.
    length: int


class SimplePut(NamedTuple):
    """A simple enrollment ``PUT``, its whole body in the same read: the request every UA
    sends first, answered 401 with challenges, then the same with its Digest answer (draft
    §5.1)."""

    #: The query string, canonical spelling (``sip=user%40host``).
    query: str
    #: The user and host parts of the AOR in it, as sent.
    user: str
    host: str
    #: The ``Content-Description`` value as sent (``None``: absent).
    description: str | None
    #: ``Content-Length``: the body's size.
    content_length: int
    #: The client asked to close after the answer (``Connection: close``).
    close: bool
    #: Bytes of the head, its final empty line included.
    head_length: int
    #: Bytes of the whole request: head and body.
    length: int
    #: The ``Authorization`` value as sent (``None``: absent, the 401's request).
    authorization: str | None = None
    #: The ``Content-Type`` value as sent (``None``: absent).
    content_type: str | None = None


#: Header fields (lower case) a simple PUT may carry, each at most once. None of them
#: changes a 401 but ``Authorization`` (the caller answers one only without it): the upload's
#: ``Content-Type`` is checked only once the request is authenticated, and
#: ``Content-Description`` is checked (:func:`~sipcert.proto.store.parse_description`) by
#: the caller. ``Expect`` and ``Transfer-Encoding`` are not here.
SIMPLE_PUT_FIELDS = (SIMPLE_FIELDS - {b"if-none-match"}) | {
    b"content-type",
    b"content-length",
    b"content-description",
    b"authorization",
}
_PUT_LINE = re.compile(
    rb"PUT /search-cgi\?((?:email|sip|uri)=([A-Za-z0-9._-]+)%40([A-Za-z0-9.-]+)) HTTP/1\.1\r\n"
)
#: Longest ``Content-Length`` value read here (a certificate upload is a few KiB).
_LENGTH = re.compile(rb"[0-9]{1,7}")


def parse_simple_put(data: bytes) -> SimplePut | None:
    """The simple PUT (head and body) at the start of ``data``, or ``None`` for anything else.

    The rules of :func:`parse_simple_get` for the request line and fields, plus exactly one
    ``Content-Length`` of digits whose body is complete in ``data``; bytes after it (a
    pipelined request) are left to the caller (:attr:`SimplePut.length` says where).
    """
    line = _PUT_LINE.match(data)
    if line is None:
        return None
    end = data.find(b"\r\n\r\n", line.end() - 2, MAX_SIMPLE_HEAD)
    if end < 0:
        return None
    values = _simple_fields(data, line.end(), end, SIMPLE_PUT_FIELDS)
    if values is None:
        return None
    host = values.get(b"host")
    length = values.get(b"content-length")
    connection = values.get(b"connection", b"keep-alive").lower()
    if host is None or not _valid_host(host) or connection not in (b"close", b"keep-alive"):
        return None
    if length is None or _LENGTH.fullmatch(length) is None:
        return None
    head_length = end + 4
    total = head_length + int(length)
    if len(data) < total:
        return None
    description = values.get(b"content-description")
    authorization = values.get(b"authorization")
    content_type = values.get(b"content-type")
    return SimplePut(
        line[1].decode("ascii"),
        line[2].decode("ascii"),
        line[3].decode("ascii"),
        None if description is None else description.decode("ascii"),
        int(length),
        connection == b"close",
        head_length,
        total,
        None if authorization is None else authorization.decode("ascii"),
        None if content_type is None else content_type.decode("ascii"),
    )


def _simple_fields(
    data: bytes, start: int, end: int, allowed: frozenset[bytes]
) -> dict[bytes, bytes] | None:
    """The fields of ``data[start:end]`` by lower-case name, or ``None`` when one is not
    ``allowed``, repeated or malformed."""
    values: dict[bytes, bytes] = {}
    for field in data[start:end].split(b"\r\n") if end >= start else ():
        found = _FIELD.fullmatch(field)
        if found is None:
            return None
        name = found[1].lower()
        if name not in allowed or name in values:
            return None
        values[name] = found[2]
    return values


def parse_simple_get(data: bytes) -> SimpleGet | None:
    """The simple request head at the start of ``data``, or ``None`` for anything else.

    ``None`` also when the head is not complete in ``data``; bytes after the head (a
    pipelined request) are left to the caller (:attr:`SimpleGet.length` says where).
    """
    text = data[:MAX_SIMPLE_HEAD].decode("latin-1")
    line = _REQUEST_LINE.match(text)
    if line is None:
        return None
    start = line.end()
    end = text.find("\r\n\r\n", start - 2)
    if end < 0:
        return None
    block = text[start:end] if end >= start else ""
    fields = _FIELDS_SEEN.get(block)
    if fields is None:
        fields = _read_fields(block.encode("latin-1"))
        if len(_FIELDS_SEEN) >= _FIELDS_KEPT:
            _FIELDS_SEEN.clear()
        _FIELDS_SEEN[block] = fields
    if fields is False:
        return None
    method, query, user, host = line.groups()
    # tuple.__new__ makes the same SimpleGet without the NamedTuple's Python-level __new__.
    return _new(SimpleGet, (method, query, user, host, fields[0], fields[1], end + 4))


_new = tuple.__new__


#: The header fields of a simple head (as Latin-1 text) -> ``(If-None-Match, close)``, or
#: ``False`` when they make the request not simple. A client sends the same fields with
#: every request (only the request line names another AOR), so judging them once per
#: spelling saves most of the parse (issue 13). The verdict depends on the bytes alone; at
#: most ``_FIELDS_KEPT`` kept.
_FIELDS_SEEN: dict[str, tuple[str | None, bool] | Literal[False]] = {}
_FIELDS_KEPT = 256


def _read_fields(block: bytes) -> tuple[str | None, bool] | Literal[False]:
    """The verdict on the header fields between the request line and the empty line."""
    values = _simple_fields(block, 0, len(block), SIMPLE_FIELDS)
    if values is None:
        return False
    host = values.get(b"host")
    connection = values.get(b"connection", b"keep-alive").lower()
    if host is None or not _valid_host(host) or connection not in (b"close", b"keep-alive"):
        return False
    if_none_match = values.get(b"if-none-match")
    return (
        None if if_none_match is None else if_none_match.decode("ascii"),
        connection == b"close",
    )


#: Host values found valid: a Store sees a few (its domains, with or without a port).
_GOOD_HOSTS: dict[bytes, None] = {}
_GOOD_HOSTS_KEPT = 64


def _valid_host(value: bytes) -> bool:
    """:func:`~sipcert.proto.store.check_host` of one value, memoised for valid ones."""
    if value in _GOOD_HOSTS:
        return True
    try:
        check_host([value.decode("ascii")])
    except InputError:
        return False
    if len(_GOOD_HOSTS) < _GOOD_HOSTS_KEPT:
        _GOOD_HOSTS[value] = None
    return True


def render_prefix(answer: Response, server: str) -> bytes:
    """The status line and headers of ``answer`` up to (not including) ``Date``.

    aiohttp's order: the answer's own headers, ``Server``, then ``Content-Length`` (not for
    304, RFC 9110 §8.6; the Store's other answers always have a body).
    """
    status = answer.status
    fields = "".join([f"{name}: {value}\r\n" for name, value in answer.headers])
    length = "" if status == 304 else f"Content-Length: {len(answer.body)}\r\n"
    return f"HTTP/1.1 {status} {_phrase(status)}\r\n{fields}Server: {server}\r\n{length}".encode()


def render_one_prefix(
    sha256: str, length: int, created_us: int, label: str | None, caching: str
) -> bytes:
    """:func:`render_prefix` of the 200 answer with one certificate, made from its row.

    The same bytes as ``render_prefix(certificates_response([der], [sha256], ...), server)``
    (tests/unit/proto/test_hotget.py compares them), without the :class:`Response` and its
    header tuples: one certificate per AOR is the everyday answer (issue 13). ``length`` is
    the DER's; ``caching`` the ``Cache-Control`` and ``Server`` lines (:func:`caching_lines`).
    """
    about = f"Content-Description: {format_description(label)}\r\n" if label else ""
    return (
        f"{_ONE_START}{about}Content-Disposition: {enrolled_on_header_us(created_us)}\r\n"
        f"ETag: {etag_for((sha256,))}\r\n{caching}Content-Length: {length}\r\n"
    ).encode()


_ONE_START = f"HTTP/1.1 200 OK\r\nContent-Type: {PKIX_CERT}\r\n"


def caching_lines(max_age: int, server: str) -> str:
    """The ``Cache-Control`` line every certificate answer has, then ``Server``."""
    return f"Cache-Control: max-age={max_age}\r\nServer: {server}\r\n"


@functools.cache
def _phrase(status: int) -> str:
    return HTTPStatus(status).phrase


def render(prefix: bytes, body: bytes, tail: bytes, *, head: bool) -> bytes:
    """A whole answer on the wire: ``prefix`` (:func:`render_prefix`), ``tail`` (the head's
    end from ``Date`` on, one of :func:`date_tails`), body.

    ``head``: a HEAD request, answered with the GET's headers and no body (RFC 9110 §9.3.2).
    """
    if head or not body:
        return prefix + tail
    return b"".join((prefix, tail, body))


def date_tails(date: bytes) -> tuple[bytes, bytes]:
    """The end of a head from ``Date`` on: to keep the connection, and to close it.

    The same for every answer within a second, so the hot GET makes them once a second.
    """
    line = b"Date: " + date
    return line + b"\r\n\r\n", line + b"\r\nConnection: close\r\n\r\n"


def http_date(unix_second: int) -> bytes:
    """RFC 9110 §5.6.7 IMF-fixdate of a Unix time, as aiohttp writes ``Date``."""
    return formatdate(unix_second, usegmt=True).encode("ascii")
