"""SIP messages without I/O: parse, build and serialise requests and responses (RFC 3261).

Bytes in, frozen values out, as h11 does for HTTP: the transports in :mod:`sipcert.sip`
feed datagrams to :func:`parse_message` and stream bytes to :class:`StreamParser`, and
serialise with :meth:`Request.to_bytes` / :meth:`Response.to_bytes`.

* Header names are normalised: compact forms (``v f t i m l c k s e`` ...) are expanded and
  known names get their canonical spelling (RFC 3261 §7.3.3, §20); unknown names are kept as
  received. Folded lines are unfolded to one space (§7.3.1). Each header line stays one
  entry; :meth:`Request.values` splits comma-separated lists (§7.3.1).
* ``Content-Length`` is not a header of the model: it is derived from ``body`` when
  serialising and checked when parsing. A stream message must carry it (§18.3, §20.14); a
  datagram may omit it, and bytes beyond it are dropped (§18.3).
* Bodies are ``bytes``, never decoded; :func:`body_part` / :func:`with_body` convert to and
  from :class:`sipcert.proto.mime.MimePart` (§7.4, §23).
* Limits (message size, header count, line length) raise
  :class:`~sipcert.errors.InputTooLargeError`; every other defect raises
  :class:`~sipcert.errors.InputError` naming what is wrong.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import NoReturn, TypeVar

from sipcert.errors import (
    AORError,
    InputError,
    InputTooLargeError,
    SipFramingError,
    SipMessageError,
    SipVersionError,
)
from sipcert.proto.aor import AOR, aor_from_uri
from sipcert.proto.logsafe import log_safe
from sipcert.proto.mime import MimePart, parse_content_type, parse_mime_part

__all__ = [
    "BRANCH_MAGIC",
    "DEFAULT_LIMITS",
    "REASON_PHRASES",
    "Message",
    "NameAddr",
    "Request",
    "Response",
    "SipLimits",
    "SipUri",
    "StreamParser",
    "Via",
    "body_part",
    "canonical_header_name",
    "error_response",
    "make_response",
    "new_branch",
    "new_call_id",
    "new_tag",
    "parse_cseq",
    "parse_message",
    "parse_name_addr",
    "parse_uri",
    "parse_via",
    "split_header_list",
    "with_body",
]

#: RFC 3261 §8.1.1.7: every branch we generate starts with this cookie.
BRANCH_MAGIC = "z9hG4bK"
SIP_VERSION = "SIP/2.0"
CRLF = b"\r\n"


@dataclass(frozen=True)
class SipLimits:
    """Bounds on what the parsers accept; anything beyond raises InputTooLargeError.

    64 KiB is the largest UDP datagram and far above any SIP message with an S/MIME body
    this project sends.
    """

    max_message: int = 65536
    max_headers: int = 128
    max_line: int = 8192


DEFAULT_LIMITS = SipLimits()

# RFC 3261 §25.1 token.
_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_CTL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_DIGITS_RE = re.compile(r"[0-9]{1,10}")

# RFC 3261 §7.3.3 and the SIP parameter registry: compact form → full name.
_COMPACT = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "n": "Identity-Info",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}
_CANONICAL = {
    name.lower(): name
    for name in (
        *_COMPACT.values(),
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Alert-Info",
        "Allow",
        "Authentication-Info",
        "Authorization",
        "CSeq",
        "Call-Info",
        "Content-Description",
        "Content-Disposition",
        "Content-ID",
        "Content-Language",
        "Content-Transfer-Encoding",
        "Date",
        "Error-Info",
        "Expires",
        "In-Reply-To",
        "MIME-Version",
        "Max-Forwards",
        "Min-Expires",
        "Organization",
        "Path",
        "Priority",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Require",
        "RAck",
        "RSeq",
        "Record-Route",
        "Reply-To",
        "Require",
        "Retry-After",
        "Route",
        "Server",
        "Timestamp",
        "Unsupported",
        "User-Agent",
        "WWW-Authenticate",
        "Warning",
    )
}
#: Headers whose value is a comma-separated list (RFC 3261 §7.3.1, §20).
_LIST_HEADERS = frozenset(
    {
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Alert-Info",
        "Allow",
        "Allow-Events",
        "Call-Info",
        "Contact",
        "Content-Encoding",
        "Content-Language",
        "Error-Info",
        "In-Reply-To",
        "Path",
        "Proxy-Require",
        "Record-Route",
        "Require",
        "Route",
        "Supported",
        "Unsupported",
        "Via",
        "Warning",
    }
)
#: Headers describing the body; they travel with it in :func:`body_part` / :func:`with_body`.
_BODY_HEADERS = (
    "Content-Type",
    "Content-Disposition",
    "Content-Transfer-Encoding",
    "Content-ID",
    "Content-Description",
    "Content-Language",
)
_REQUIRED = ("Via", "From", "To", "Call-ID", "CSeq")
_SINGLE = ("From", "To", "Call-ID", "CSeq", "Max-Forwards", "Content-Type")

#: RFC 3261 §21 reason phrases for the codes this project sends.
REASON_PHRASES = {
    100: "Trying",
    180: "Ringing",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    406: "Not Acceptable",
    413: "Request Entity Too Large",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    486: "Busy Here",
    488: "Not Acceptable Here",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "Version Not Supported",
    513: "Message Too Large",
    603: "Decline",
}


def _fail(problem: str) -> NoReturn:
    raise InputError(f"malformed SIP message: {problem}")


def canonical_header_name(name: str) -> str:
    """The full, canonically spelled header name (compact forms expanded, RFC 3261 §7.3.3)."""
    if not name.isascii() or not _TOKEN_RE.fullmatch(name):
        raise InputError(f"malformed SIP message: header name {name!r} is not a token")
    lower = name.lower()
    if lower in _COMPACT:
        return _COMPACT[lower]
    return _CANONICAL.get(lower, name)


def _bare_control(value: str) -> bool:
    """Whether ``value`` has a control character other than inside a quoted-pair.

    RFC 3261 §25.1: ``quoted-pair = "\\" (%x00-09 / %x0B-0C / %x0E-7F)`` inside a quoted
    string, so a display name may carry an escaped NUL, BEL or DEL (RFC 4475 §3.1.1.2);
    anywhere else a control character (other than HTAB) is malformed.
    """
    if not _CTL_RE.search(value):
        return False
    quoted = False
    pos = 0
    while pos < len(value):
        char = value[pos]
        if quoted and char == "\\":
            if value[pos + 1 : pos + 2] in ("", "\r", "\n"):
                return True
            pos += 2
            continue
        if char == '"':
            quoted = not quoted
        elif _CTL_RE.match(char):
            return True
        pos += 1
    return False


def _check_value(name: str, value: str) -> None:
    if _bare_control(value):
        raise InputError(f"malformed SIP message: {name} header contains a control character")
    if value != value.strip(" \t"):
        raise InputError(f"{name} header value has leading or trailing whitespace")


def split_header_list(value: str) -> list[str]:
    """Split ``a, <sip:b,c>, "d,e" <sip:f>`` at top-level commas (RFC 3261 §7.3.1)."""
    items: list[str] = []
    start = 0
    quoted = False
    angle = False
    pos = 0
    while pos < len(value):
        char = value[pos]
        if quoted:
            if char == "\\":
                pos += 1
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == "<":
            angle = True
        elif char == ">":
            angle = False
        elif char == "," and not angle:
            items.append(value[start:pos].strip(" \t"))
            start = pos + 1
        pos += 1
    if quoted or angle:
        raise InputError(f"unbalanced quote or angle bracket in header list {value[:60]!r}")
    items.append(value[start:].strip(" \t"))
    if any(not item for item in items):
        raise InputError(f"empty element in header list {value[:60]!r}")
    return items


# --- the message model -----------------------------------------------------------------------

Headers = tuple[tuple[str, str], ...]
M = TypeVar("M", bound="Message")


@dataclass(frozen=True)
class Message(ABC):
    """What requests and responses share: ordered headers and a binary body.

    ``headers`` are ``(name, value)`` pairs, one per header line, names canonicalised on
    construction. ``Content-Length`` is never among them (it is derived from ``body``).
    """

    headers: Headers = field(default=(), kw_only=True)
    body: bytes = field(default=b"", kw_only=True)

    def __post_init__(self) -> None:
        normalised: list[tuple[str, str]] = []
        for name, value in self.headers:
            canonical = canonical_header_name(name)
            if canonical == "Content-Length":
                raise InputError("Content-Length is derived from the body; do not set it")
            _check_value(canonical, value)
            normalised.append((canonical, value))
        object.__setattr__(self, "headers", tuple(normalised))
        if not isinstance(self.body, bytes):
            raise InputError("a SIP body is bytes")

    def get(self, name: str) -> str | None:
        """The first value of header ``name`` (any spelling, compact forms too), or None."""
        wanted = canonical_header_name(name)
        for key, value in self.headers:
            if key == wanted:
                return value
        return None

    def get_all(self, name: str) -> list[str]:
        """Every header line called ``name``, in order (lists not split)."""
        wanted = canonical_header_name(name)
        return [value for key, value in self.headers if key == wanted]

    def values(self, name: str) -> list[str]:
        """Every value of ``name``: lines in order, list headers split at commas (§7.3.1)."""
        wanted = canonical_header_name(name)
        lines = self.get_all(wanted)
        if wanted not in _LIST_HEADERS:
            return lines
        return [item for line in lines for item in split_header_list(line)]

    def require(self, name: str) -> str:
        """The value of a header the message must have; InputError when it is missing."""
        value = self.get(name)
        if value is None:
            raise InputError(f"SIP message lacks the {canonical_header_name(name)} header")
        return value

    def with_headers(self: M, *pairs: tuple[str, str]) -> M:
        """A copy with ``pairs`` appended."""
        return replace(self, headers=(*self.headers, *pairs))

    def without(self: M, *names: str) -> M:
        """A copy without any header called one of ``names``."""
        unwanted = {canonical_header_name(n) for n in names}
        return replace(self, headers=tuple(h for h in self.headers if h[0] not in unwanted))

    def replacing(self: M, name: str, *values: str) -> M:
        """A copy where ``name`` has exactly ``values``, at the place of its first line."""
        wanted = canonical_header_name(name)
        out: list[tuple[str, str]] = []
        placed = False
        for key, value in self.headers:
            if key == wanted:
                if not placed:
                    out.extend((wanted, v) for v in values)
                    placed = True
                continue
            out.append((key, value))
        if not placed:
            out.extend((wanted, v) for v in values)
        return replace(self, headers=tuple(out))

    @property
    def call_id(self) -> str:
        return self.require("Call-ID")

    @property
    def cseq(self) -> tuple[int, str]:
        """``(number, method)`` of the CSeq header (RFC 3261 §20.16)."""
        return parse_cseq(self.require("CSeq"))

    @property
    def from_(self) -> NameAddr:
        return parse_name_addr(self.require("From"))

    @property
    def to(self) -> NameAddr:
        return parse_name_addr(self.require("To"))

    @property
    def vias(self) -> list[Via]:
        return [parse_via(v) for v in self.values("Via")]

    @property
    def top_via(self) -> Via:
        values = self.values("Via")
        if not values:
            raise InputError("SIP message lacks the Via header")
        return parse_via(values[0])

    @abstractmethod
    def _start_line(self) -> str:
        """The request line or status line (RFC 3261 §7.1, §7.2)."""

    def to_bytes(self) -> bytes:
        """The message on the wire: start line, headers, Content-Length, blank line, body."""
        lines = [self._start_line(), *(f"{k}: {v}" for k, v in self.headers)]
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + self.body


@dataclass(frozen=True)
class Request(Message):
    """A SIP request (RFC 3261 §7.1): method, Request-URI, headers, body."""

    method: str
    uri: str

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.method.isascii() or not _TOKEN_RE.fullmatch(self.method):
            raise InputError(f"malformed SIP message: method {self.method!r} is not a token")
        if (
            not self.uri.isascii()
            or _SCHEME_RE.match(self.uri) is None
            or any(c.isspace() for c in self.uri)
            or _CTL_RE.search(self.uri)
        ):
            raise InputError(
                f"malformed SIP message: Request-URI {self.uri[:80]!r} is not an absolute URI"
            )

    def _start_line(self) -> str:
        return f"{self.method} {self.uri} {SIP_VERSION}"


@dataclass(frozen=True)
class Response(Message):
    """A SIP response (RFC 3261 §7.2): status code, reason phrase, headers, body."""

    status: int
    reason: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 100 <= self.status <= 699:
            raise InputError(f"malformed SIP message: status {self.status} is not 100..699")
        if _CTL_RE.search(self.reason) or "\t" in self.reason:
            raise InputError("malformed SIP message: reason phrase contains a control character")

    def _start_line(self) -> str:
        return f"{SIP_VERSION} {self.status} {self.reason}"


# --- parsing ---------------------------------------------------------------------------------


def _decode(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"malformed SIP message: {what} is not UTF-8") from exc


def _parse_status_line(line: str) -> tuple[int, str]:
    """``SIP/2.0 200 OK`` → ``(200, "OK")`` (RFC 3261 §7.2)."""
    code, _, reason = line[len(SIP_VERSION) + 1 :].partition(" ")
    if len(code) != 3 or not code.isascii() or not code.isdigit():
        _fail(f"status line {line[:80]!r} has no three-digit status code")
    if not 100 <= int(code) <= 699:
        _fail(f"status {code} is not 100..699")
    return int(code), reason


def _parse_request_line(line: str) -> tuple[str, str]:
    """``INVITE sip:bob@example.com SIP/2.0`` → ``("INVITE", "sip:bob@example.com")`` (§7.1).

    Exactly one SP separates the three elements and none ends the line (§25.1
    Request-Line; RFC 4475 §3.1.2.9 "lwsstart", §3.1.2.10 "trws").
    """
    parts = line.split(" ")
    if len(parts) != 3:
        _fail(f"request line {line[:80]!r} is not 'METHOD Request-URI SIP/2.0'")
    method, uri, version = parts
    if version.upper() != SIP_VERSION:
        if re.fullmatch(r"SIP/[0-9]+\.[0-9]+", version, re.IGNORECASE):
            raise SipVersionError(f"unsupported SIP version {version[:20]!r} (only SIP/2.0)")
        _fail(f"request line {line[:80]!r} does not end with the SIP version")
    return method, uri


def _parse_head(head: bytes, limits: SipLimits) -> tuple[str, list[tuple[str, str]]]:
    lines = head.split(b"\n")
    fields: list[tuple[str, list[str]]] = []
    start = ""
    for number, raw in enumerate(lines, start=1):
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if len(line) > limits.max_line:
            raise InputTooLargeError(
                f"SIP line {number} is {len(line)} octets (limit {limits.max_line})"
            )
        if b"\r" in line:
            _fail(f"line {number} contains a bare CR")
        text = _decode(line, f"line {number}")
        if number == 1:
            start = text
            continue
        if text[:1] in (" ", "\t"):
            if not fields:
                _fail("the first header line is a continuation line")
            fields[-1][1].append(text.strip(" \t"))
            continue
        name, colon, value = text.partition(":")
        if not colon:
            _fail(f"header line {number} has no colon: {text[:60]!r}")
        name = name.rstrip(" \t")
        if not _TOKEN_RE.fullmatch(name) or not name.isascii():
            _fail(f"header line {number} has an invalid name {name[:40]!r}")
        fields.append((name, [value.strip(" \t")]))
        if len(fields) > limits.max_headers:
            raise InputTooLargeError(f"more than {limits.max_headers} SIP header fields")
    headers: list[tuple[str, str]] = []
    for name, pieces in fields:
        value = " ".join(p for p in pieces if p)
        if _bare_control(value):
            _fail(f"{name} header contains a control character")
        headers.append((canonical_header_name(name), value))
    return start, headers


def _lenient_fields(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    """Start line and the header fields that can be read, skipping lines that cannot.

    Used only to frame a stream message and to answer one that failed to parse; never to
    build a message.
    """
    text = head.decode("utf-8", "replace").replace("\r\n", "\n")
    lines = text.split("\n")
    fields: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            if fields:
                name, value = fields[-1]
                fields[-1] = (name, (value + " " + line.strip(" \t")).strip(" \t"))
            continue
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        if colon and name.isascii() and _TOKEN_RE.fullmatch(name):
            fields.append((canonical_header_name(name), value.strip(" \t")))
    return lines[0], fields


def _content_length(headers: list[tuple[str, str]]) -> int | None:
    values = [v for k, v in headers if k == "Content-Length"]
    if not values:
        return None
    if len(values) > 1:
        _fail("more than one Content-Length header")
    if not _DIGITS_RE.fullmatch(values[0]):
        _fail(f"Content-Length {values[0][:20]!r} is not a number")
    return int(values[0])


def _validate(message: Request | Response) -> None:
    """Read now every header the UA relies on, so a parsed message is a usable one.

    To, From, Contact, Max-Forwards, Content-Type and a sip:/sips: Request-URI are parsed
    here rather than when first used, so a message is either usable or refused with a
    reason (RFC 3261 §8.2.2, §20).
    """
    message.to  # noqa: B018 - parsed for the error it raises
    message.from_  # noqa: B018
    for contact in message.values("Contact"):
        if contact != "*":
            parse_name_addr(contact)
    max_forwards = message.get("Max-Forwards")
    if max_forwards is not None and (
        not _DIGITS_RE.fullmatch(max_forwards) or int(max_forwards) > 255
    ):
        _fail(f"Max-Forwards {max_forwards[:20]!r} is not 0..255 (RFC 3261 §20.22)")
    content_type = message.get("Content-Type")
    if content_type is not None:
        parse_content_type(content_type)
    elif message.body:
        _fail("a body without Content-Type (RFC 3261 §20.15)")
    if isinstance(message, Request) and message.uri.partition(":")[0].lower() in ("sip", "sips"):
        uri = parse_uri(message.uri)
        if uri.headers is not None:
            _fail("a Request-URI cannot carry headers (RFC 3261 §19.1.5)")


def _build(start: str, headers: list[tuple[str, str]], body: bytes) -> Request | Response:
    is_response = start.upper().startswith(SIP_VERSION + " ")
    status, reason = _parse_status_line(start) if is_response else (0, "")
    method, uri = ("", "") if is_response else _parse_request_line(start)
    names = [k for k, _ in headers]
    for required in _REQUIRED:
        if required not in names:
            _fail(f"the {required} header is missing (RFC 3261 §8.1.1)")
    for single in _SINGLE:
        if names.count(single) > 1:
            _fail(f"more than one {single} header")
    kept = tuple((k, v) for k, v in headers if k != "Content-Length")
    message: Request | Response
    if is_response:
        message = Response(status, reason, headers=kept, body=body)
    else:
        message = Request(method, uri, headers=kept, body=body)
    _, cseq_method = message.cseq
    if isinstance(message, Request) and cseq_method != message.method:
        _fail(f"CSeq method {cseq_method!r} differs from the request method {message.method!r}")
    for via in message.values("Via"):
        parse_via(via)
    _validate(message)
    return message


def _strip_leading_crlf(data: bytes) -> bytes:
    """RFC 3261 §7.5: CRLFs before the start line are ignored (keep-alives, §18.3)."""
    pos = 0
    while data.startswith(b"\r\n", pos) or data.startswith(b"\n", pos):
        pos += 2 if data.startswith(b"\r\n", pos) else 1
    return data[pos:]


def parse_message(
    data: bytes, *, datagram: bool = True, limits: SipLimits = DEFAULT_LIMITS
) -> Request | Response:
    """Parse one complete SIP message.

    ``datagram=True`` (UDP, §18.3): Content-Length may be absent (the body is the rest of
    the datagram); bytes beyond it are dropped; a Content-Length larger than what arrived
    is an error. ``datagram=False``: Content-Length is required and must be exact.

    Raises:
        SipMessageError: once the header section is delimited, for any defect; it carries
            the raw head so that :func:`error_response` can answer (505 for
            :class:`~sipcert.errors.SipVersionError`, else 400).
        InputError: for input that is not even a delimited header section.
    """
    if len(data) > limits.max_message:
        raise InputTooLargeError(f"SIP message is {len(data)} octets (limit {limits.max_message})")
    data = _strip_leading_crlf(data)
    if not data:
        _fail("empty message")
    match = _BLANK_LINE.search(data)
    if match is None:
        # The head is still what it is: a datagram that lost its empty line (RFC 4475
        # §3.1.2.15 baddn) gets its 400 from the fields that can be read.
        raise SipMessageError(
            "malformed SIP message: no empty line ends the header section",
            head=data.removesuffix(b"\r\n"),
        )
    head = data[: match.start()]
    try:
        start, headers = _parse_head(head, limits)
        rest = data[match.end() :]
        length = _content_length(headers)
        if length is None:
            if not datagram:
                _fail("Content-Length is required on a stream transport (RFC 3261 §18.3)")
            body = rest
        elif length > len(rest):
            _fail(f"Content-Length {length} exceeds the {len(rest)} octets of body received")
        elif not datagram and length != len(rest):
            _fail(f"{len(rest) - length} octets follow the {length}-octet body")
        else:
            body = rest[:length]
        return _build(start, headers, body)
    except SipMessageError as error:
        error.head = head
        raise
    except InputTooLargeError:
        raise
    except InputError as error:
        raise SipMessageError(str(error), head=head) from error


def _frame_length(head: bytes) -> int:
    """The body length a stream message announces (§18.3); SipFramingError if unusable."""
    _, fields = _lenient_fields(head)
    values = [v for k, v in fields if k == "Content-Length"]
    if not values:
        raise SipFramingError(
            "malformed SIP message: Content-Length is required on a stream transport "
            "(RFC 3261 §18.3)",
            head=head,
        )
    if len(values) > 1 or not _DIGITS_RE.fullmatch(values[0]):
        raise SipFramingError(
            f"malformed SIP message: Content-Length {', '.join(values)[:40]!r} cannot frame "
            "the message (RFC 3261 §18.3)",
            head=head,
        )
    return int(values[0])


StreamEvent = Request | Response | InputError


class StreamParser:
    """Frames SIP messages on a byte stream (TCP, TLS) by Content-Length (RFC 3261 §18.3).

    Feed received bytes; get back, in order, each complete message and each error. A
    :class:`~sipcert.errors.SipMessageError` that is not a framing error concerns one
    message only: the stream goes on (the UAS answers it with 400). A framing error (no
    usable Content-Length, a header section over the limit) is the last event: the
    framing is lost, :attr:`failed` is set and the caller must close the connection.
    """

    def __init__(self, limits: SipLimits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._buffer = bytearray()
        self._head: tuple[bytes, int] | None = None
        self.failed = False
        #: RFC 5626 §3.5.1 keep-alive pings (CRLFCRLF between messages) not yet answered.
        self.pings = 0

    @property
    def buffered(self) -> int:
        """Octets received but not yet part of a complete message (keep-alive CRLFs are not)."""
        if self._head is None and not self._buffer.strip(b"\r\n"):
            return 0
        return len(self._buffer) + (len(self._head[0]) if self._head is not None else 0)

    def feed(self, data: bytes) -> list[StreamEvent]:
        """Add ``data`` and return the messages and errors it completes, in order."""
        if self.failed:
            raise InputError("the SIP stream already failed to parse")
        self._buffer += data
        out: list[StreamEvent] = []
        try:
            self._drain(out)
        except InputError as error:
            self.failed = True
            out.append(error)
        return out

    def _skip_keepalives(self) -> None:
        """Drop CRLFs before a start line (RFC 3261 §7.5), counting CRLFCRLF pings."""
        buffer = self._buffer
        while True:
            if buffer[:4] == b"\r\n\r\n":
                self.pings += 1
                del buffer[:4]
            elif buffer[:2] == b"\r\n":
                if b"\r\n".startswith(bytes(buffer[2:4])):
                    return  # perhaps the first half of a ping: wait for the rest
                del buffer[:2]  # a pong (RFC 5626 §4.4.1) or a stray CRLF
            elif buffer[:1] == b"\n":
                del buffer[:1]
            else:
                return

    def _drain(self, out: list[StreamEvent]) -> None:
        limits = self._limits
        while True:
            if self._head is None:
                self._skip_keepalives()
                match = _BLANK_LINE.search(self._buffer)
                if match is None:
                    if len(self._buffer) > limits.max_message:
                        raise InputTooLargeError(
                            f"SIP header section over {limits.max_message} octets"
                        )
                    return
                head = bytes(self._buffer[: match.end()])
                length = _frame_length(head[: match.start()])
                if match.end() + length > limits.max_message:
                    raise InputTooLargeError(
                        f"SIP message of {match.end() + length} octets (limit {limits.max_message})"
                    )
                del self._buffer[: match.end()]
                self._head = (head, length)
            head, length = self._head
            if len(self._buffer) < length:
                return
            body = bytes(self._buffer[:length])
            del self._buffer[:length]
            self._head = None
            try:
                out.append(parse_message(head + body, datagram=False, limits=limits))
            except SipMessageError as error:
                out.append(error)


# --- header value grammar --------------------------------------------------------------------

Params = tuple[tuple[str, str | None], ...]


def _parse_params(text: str, what: str) -> Params:
    """``;name[=value]`` pairs (RFC 3261 §25.1 generic-param); values kept as written."""
    params: list[tuple[str, str | None]] = []
    pos = 0
    while pos < len(text):
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        if pos >= len(text):
            break
        if text[pos] != ";":
            raise InputError(f"{what}: expected ';' at {text[pos : pos + 20]!r}")
        pos += 1
        end = pos
        quoted = False
        while end < len(text) and (quoted or text[end] != ";"):
            if text[end] == "\\" and quoted:
                end += 1
            elif text[end] == '"':
                quoted = not quoted
            end += 1
        if quoted:
            raise InputError(f"{what}: unterminated quoted parameter value")
        item = text[pos:end].strip(" \t")
        name, eq, value = item.partition("=")
        name = name.strip(" \t")
        if not _TOKEN_RE.fullmatch(name):
            raise InputError(f"{what}: parameter name {name[:30]!r} is not a token")
        if eq:
            value = value.strip(" \t")
            if not value or (value[0] != '"' and any(c in value for c in ' \t"<>,')):
                raise InputError(f"{what}: parameter {name!r} has an invalid value")
            params.append((name, value))
        else:
            params.append((name, None))
        pos = end
    return tuple(params)


def _format_params(params: Params) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


def _param(params: Params, name: str) -> str | None:
    for key, value in params:
        if key.lower() == name.lower():
            return value if value is not None else ""
    return None


_HOST_RE = re.compile(r"\[[^\]]*\]|[A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9])?\.?")


def _parse_hostport(text: str, what: str) -> tuple[str, int | None]:
    match = _HOST_RE.match(text)
    if match is None:
        raise InputError(f"{what}: {text[:60]!r} does not start with a host")
    host = match.group(0)
    if host.startswith("["):
        host = f"[{_ipv6_reference(host[1:-1], what)}]"
    rest = text[match.end() :]
    if not rest:
        return host, None
    if rest[0] != ":" or not _DIGITS_RE.fullmatch(rest[1:]) or not 0 < int(rest[1:]) < 65536:
        raise InputError(f"{what}: {text[:60]!r} has an invalid port")
    return host, int(rest[1:])


def _ipv6_reference(inner: str, what: str) -> str:
    """The address inside ``[...]``; RFC 5118 §4.10's three-colon form is tolerated.

    RFC 3261's ABNF let ``2001:db8:::192.0.2.1`` through; RFC 5118 asks implementations to
    accept it, so it is read as ``2001:db8::192.0.2.1``.
    """
    for candidate in (inner, inner.replace(":::", "::", 1)):
        try:
            ipaddress.IPv6Address(candidate)
        except ValueError:
            continue
        return candidate
    raise InputError(f"{what}: [{inner[:60]}] is not an IPv6 reference")


@dataclass(frozen=True)
class SipUri:
    """A ``sip:`` or ``sips:`` URI (RFC 3261 §19.1); parameters kept in order."""

    scheme: str
    host: str
    user: str | None = None
    port: int | None = None
    params: Params = ()
    headers: str | None = None

    def param(self, name: str) -> str | None:
        """Value of URI parameter ``name`` ("" for a flag such as ``lr``), or None."""
        return _param(self.params, name)

    @property
    def transport(self) -> str:
        """The ``transport`` parameter lowercased; ``tls`` for sips: (§19.1.2), else udp."""
        value = self.param("transport")
        if value:
            return value.lower()
        return "tls" if self.scheme == "sips" else "udp"

    @property
    def loose_route(self) -> bool:
        """Whether the URI carries ``lr`` (a loose router, RFC 3261 §16.12)."""
        return self.param("lr") is not None

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user is not None else ""
        port = f":{self.port}" if self.port is not None else ""
        headers = f"?{self.headers}" if self.headers is not None else ""
        return f"{self.scheme}:{user}{self.host}{port}{_format_params(self.params)}{headers}"


def parse_uri(text: str) -> SipUri:
    """Parse a SIP or SIPS URI; anything else (``tel:``, ``mailto:``) raises InputError."""
    what = f"SIP URI {text[:80]!r}"
    if not text.isascii() or any(c.isspace() for c in text) or _CTL_RE.search(text):
        raise InputError(f"{what} contains spaces or non-ASCII characters")
    scheme, colon, rest = text.partition(":")
    if not colon or scheme.lower() not in ("sip", "sips"):
        raise InputError(f"{what} is not a sip: or sips: URI")
    # The user part may hold "?", ";" and "," (RFC 3261 §25.1 user-unreserved, RFC 4475
    # §3.1.1.2); "@" can appear only there, so the last "@" ends it.
    user: str | None = None
    if "@" in rest:
        user, _, rest = rest.rpartition("@")
        if not user:
            raise InputError(f"{what} has an empty user part")
    rest, question, headers = rest.partition("?")
    hostport, semicolon, params_text = rest.partition(";")
    host, port = _parse_hostport(hostport, what)
    params = _parse_params(semicolon + params_text, what) if semicolon else ()
    return SipUri(scheme.lower(), host, user, port, params, headers if question else None)


@dataclass(frozen=True)
class NameAddr:
    """A From / To / Contact / Route value: display name, URI, header parameters (§20.10)."""

    uri: str
    display_name: str | None = None
    params: Params = ()

    def param(self, name: str) -> str | None:
        return _param(self.params, name)

    @property
    def tag(self) -> str | None:
        """The ``tag`` parameter (RFC 3261 §19.3), or None."""
        return self.param("tag") or None

    def with_tag(self, tag: str) -> NameAddr:
        """A copy whose tag is ``tag``."""
        kept = tuple(p for p in self.params if p[0].lower() != "tag")
        return replace(self, params=(*kept, ("tag", tag)))

    @property
    def sip_uri(self) -> SipUri:
        return parse_uri(self.uri)

    @property
    def aor(self) -> AOR:
        """The address of record the URI names (draft §4.5 compares certificates to it)."""
        try:
            return aor_from_uri(self.uri)
        except AORError:
            uri = parse_uri(self.uri)  # drop URI parameters such as ;transport=
            if uri.user is None:
                raise
            return aor_from_uri(f"{uri.scheme}:{uri.user}@{uri.host}")

    def __str__(self) -> str:
        display = f"{self.display_name} " if self.display_name else ""
        return f"{display}<{self.uri}>{_format_params(self.params)}"


def parse_name_addr(value: str) -> NameAddr:
    """Parse ``"Alice" <sip:alice@example.com>;tag=x`` or ``sip:alice@example.com;tag=x``."""
    text = value.strip(" \t")
    what = f"address {text[:80]!r}"
    if not text:
        raise InputError("empty address (From/To/Contact)")
    display: str | None = None
    pos = 0
    if text[0] == '"':
        pos = 1
        while pos < len(text) and text[pos] != '"':
            pos += 2 if text[pos] == "\\" else 1
        if pos >= len(text):
            raise InputError(f"{what}: unterminated display name")
        display = text[: pos + 1]
        pos += 1
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        if pos >= len(text) or text[pos] != "<":
            raise InputError(f"{what}: a quoted display name must be followed by <URI>")
    else:
        angle = text.find("<")
        if angle > 0:
            display = text[:angle].strip(" \t")
            if not all(_TOKEN_RE.fullmatch(w) for w in display.split()):
                raise InputError(f"{what}: display name {display!r} is not tokens")
        pos = max(angle, 0)
    if text[pos] == "<":
        close = text.find(">", pos)
        if close < 0:
            raise InputError(f"{what}: '<' without '>'")
        uri = text[pos + 1 : close]
        rest = text[close + 1 :]
    else:
        uri, semicolon, rest = text.partition(";")
        uri = uri.rstrip(" \t")  # "sip:b@example.com ;tag=x" (RFC 4475 §3.1.1.1)
        rest = semicolon + rest
        if any(c in uri for c in ",?"):
            raise InputError(f"{what}: a URI with ',' or '?' must be in <...> (§20.10)")
    if not uri or _SCHEME_RE.match(uri) is None or any(c in uri for c in ' \t<>"'):
        raise InputError(f"{what}: {uri[:60]!r} is not an absolute URI")
    return NameAddr(uri, display or None, _parse_params(rest, what))


_VIA_RE = re.compile(
    r"SIP[ \t]*/[ \t]*2\.0[ \t]*/[ \t]*([A-Za-z0-9\-.!%*_+`'~]+)[ \t]+([^;]+)", re.IGNORECASE
)


@dataclass(frozen=True)
class Via:
    """One Via value (RFC 3261 §20.42): transport, sent-by and parameters."""

    transport: str
    host: str
    port: int | None = None
    params: Params = ()

    def param(self, name: str) -> str | None:
        return _param(self.params, name)

    @property
    def branch(self) -> str | None:
        return self.param("branch") or None

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"SIP/2.0/{self.transport.upper()} {self.host}{port}{_format_params(self.params)}"


def parse_via(value: str) -> Via:
    """Parse one Via value (split lists first with :func:`split_header_list`)."""
    match = _VIA_RE.match(value.strip(" \t"))
    what = f"Via {value[:80]!r}"
    if match is None:
        raise InputError(f"malformed SIP message: {what} is not 'SIP/2.0/TRANSPORT host'")
    sent_by = re.sub(r"[ \t]*:[ \t]*", ":", match.group(2).strip(" \t"))
    host, port = _parse_hostport(sent_by, what)
    params = _parse_params(value.strip(" \t")[match.end() :], what)
    return Via(match.group(1).upper(), host, port, params)


def parse_cseq(value: str) -> tuple[int, str]:
    """``CSeq: 4711 INVITE`` → ``(4711, "INVITE")``; the number is below 2**31 (§8.1.1.5)."""
    number, _, method = value.strip(" \t").partition(" ")
    method = method.strip(" \t")
    if not _DIGITS_RE.fullmatch(number) or int(number) >= 2**31:
        raise InputError(f"malformed SIP message: CSeq {value[:40]!r} has no valid number")
    if not _TOKEN_RE.fullmatch(method) or not method.isascii():
        raise InputError(f"malformed SIP message: CSeq {value[:40]!r} has no method")
    return int(number), method


# --- building --------------------------------------------------------------------------------


def new_branch() -> str:
    """A fresh Via branch with the RFC 3261 magic cookie (§8.1.1.7)."""
    return BRANCH_MAGIC + secrets.token_hex(10)


def new_tag() -> str:
    """A From/To tag with 64 bits of randomness (§19.3)."""
    return secrets.token_hex(8)


def new_call_id(host: str = "") -> str:
    """A globally unique Call-ID (§8.1.1.4)."""
    token = secrets.token_hex(12)
    return f"{token}@{host}" if host else token


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> Response:
    """A response to ``request`` (RFC 3261 §8.2.6): Via, From, Call-ID, CSeq copied, To tagged.

    ``to_tag`` is added to To unless To already has one (§8.2.6.2); it is not added to a 100
    (§8.2.6.1). Record-Route is copied into responses to INVITE other than 100 (§12.1.1).
    """
    to = request.to
    to_value = str(to.with_tag(to_tag)) if to_tag is not None and status != 100 else None
    if to.tag is not None or to_value is None:
        to_value = request.require("To")
    copied: list[tuple[str, str]] = [("Via", v) for v in request.get_all("Via")]
    copied += [("From", request.require("From")), ("To", to_value)]
    copied += [("Call-ID", request.call_id), ("CSeq", request.require("CSeq"))]
    if request.method == "INVITE" and status > 100:
        copied += [("Record-Route", v) for v in request.get_all("Record-Route")]
    phrase = REASON_PHRASES.get(status, "") if reason is None else reason
    return Response(status, phrase, headers=(*copied, *headers), body=body)


def _copyable(value: str) -> bool:
    return not _bare_control(value) and value == value.strip(" \t") and "\ufffd" not in value


def error_response(
    error: SipMessageError, *, to_tag: str | None = None, limit: int = 120
) -> Response | None:
    """The response to a request that could not be parsed (RFC 3261 §8.2.6, §21.4.1).

    The status is the error's (505 for a version other than 2.0, else 400) and the reason
    phrase names the problem in printable ASCII (peer text escaped with
    :func:`~sipcert.proto.logsafe.log_safe`, so it cannot split the line). Via, From, To,
    Call-ID and CSeq are copied as received when they can be; To gets ``to_tag`` only when
    it parses. None for a response or an ACK, which are never answered (§17.1.1.3).
    """
    start, fields = _lenient_fields(error.head)
    words = start.split()
    if not words or words[0].upper().startswith("SIP/") or words[0] == "ACK":
        return None
    status = error.http_status if error.http_status in (400, 505) else 400
    copied: list[tuple[str, str]] = []
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        values = [v for k, v in fields if k == name and v and _copyable(v)]
        if name != "Via":
            values = values[:1]
        if name == "To" and values and to_tag is not None:
            with_tag = _tagged(values[0], to_tag)
            values = [with_tag] if with_tag is not None else values
        copied += [(name, v) for v in values]
    if not any(name == "Via" for name, _ in copied):
        return None  # nowhere to send it (§8.2.6.2 copies the Via; §18.2.2 routes by it)
    problem = str(error).removeprefix("malformed SIP message: ")
    reason = log_safe(f"{REASON_PHRASES[status]} ({problem})")
    if len(reason) > limit:
        reason = reason[: limit - 4] + "...)"
    return Response(status, reason, headers=tuple(copied))


def _tagged(to: str, tag: str) -> str | None:
    try:
        address = parse_name_addr(to)
    except InputError:
        return None
    return to if address.tag is not None else f"{to};tag={tag}"


def body_part(message: Message) -> MimePart | None:
    """The body as a MIME entity (Content-Type and Content-* headers of the message), or None.

    A non-empty body needs a Content-Type (§20.15); a Content-Encoding other than
    ``identity`` is refused (we never compress, §20.12). Raises MIMEError for a malformed
    entity and InputTooLargeError past the MIME limits.
    """
    content_type = message.get("Content-Type")
    if not message.body and content_type is None:
        return None
    if content_type is None:
        raise InputError("SIP message has a body but no Content-Type (RFC 3261 §20.15)")
    encoding = message.get("Content-Encoding")
    if encoding is not None and encoding.lower() != "identity":
        raise InputError(f"unsupported SIP Content-Encoding {encoding[:30]!r}")
    lines = [f"{name}: {value}" for name, value in message.headers if name in _BODY_HEADERS]
    head = "\r\n".join(lines).encode("utf-8")
    return parse_mime_part(head + b"\r\n\r\n" + message.body)


def with_body(message: M, part: MimePart | None) -> M:
    """A copy of ``message`` carrying ``part`` (its Content-* headers become SIP headers)."""
    stripped = message.without(*_BODY_HEADERS)
    if part is None:
        return replace(stripped, body=b"")
    encoded = part.to_bytes()
    _, _, body = encoded.partition(b"\r\n\r\n")
    pairs: Sequence[tuple[str, str]] = (("Content-Type", part.content_type), *part.headers)
    return replace(stripped.with_headers(*pairs), body=body)
