"""Binary-safe MIME entities and multipart bodies for SIP (RFC 3261 §7.4, §23; RFC 2045/2046).

SIP carries S/MIME bodies with ``Content-Transfer-Encoding: binary`` (RFC 3261 §23.3), so this
module works on ``bytes`` throughout and never touches line endings inside a body. The
multipart parser keeps every body part's bytes exactly as received, because a
``multipart/signed`` signature covers the exact bytes of its first part (RFC 1847 §2.1,
RFC 8551 §3.5.3).

Every limit that protects the parser from hostile input raises
:class:`~sipcert.errors.InputTooLargeError`; every other defect raises
:class:`~sipcert.errors.MIMEError` naming the header or boundary at fault.
"""

from __future__ import annotations

import base64
import binascii
import functools
import itertools
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sipcert.errors import InputTooLargeError, MIMEError

__all__ = [
    "DEFAULT_LIMITS",
    "MimeLimits",
    "MimePart",
    "Multipart",
    "build_multipart",
    "format_content_type",
    "new_boundary",
    "parse_content_type",
    "parse_mime_entity",
    "parse_mime_part",
    "parse_multipart",
]

CRLF = b"\r\n"

#: RFC 2045 §5.1 ``token``: any US-ASCII except SPACE, CTLs and tspecials.
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
#: RFC 5322 §3.6.8 ``field-name``: printable US-ASCII except colon.
_FIELD_NAME_RE = re.compile(rb"[\x21-\x39\x3b-\x7e]+")
#: RFC 2046 §5.1.1 ``bcharsnospace`` plus space (which must not be last).
_BOUNDARY_RE = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_BASE64_WHITESPACE = re.compile(rb"[ \t\r\n]")
#: RFC 5322 §3.2.4 quoted-string (without folding): up to the first unescaped quote.
_QUOTED_RE = re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL)
_QUOTED_PAIR_RE = re.compile(r"\\(.)", re.DOTALL)
_IDENTITY_ENCODINGS = frozenset({"7bit", "8bit", "binary"})


@dataclass(frozen=True)
class MimeLimits:
    """Bounds on what the parsers accept; anything beyond raises InputTooLargeError.

    ``max_header_line`` defaults to the 998-octet line limit of RFC 5322 §2.1.1.
    """

    max_size: int = 1 << 20
    max_parts: int = 32
    max_headers: int = 64
    max_header_line: int = 998
    max_depth: int = 4  # nested multipart levels


DEFAULT_LIMITS = MimeLimits()


def _check_header_value(name: str, value: str) -> None:
    if "\r" in value or "\n" in value:
        raise MIMEError(f"{name} header value contains a line break")
    if not value.isascii():
        raise MIMEError(f"{name} header value is not US-ASCII")


def _check_fields(content_type: str, headers: Sequence[tuple[str, str]]) -> None:
    """What :class:`MimePart` requires of its Content-Type and other headers."""
    _check_header_value("Content-Type", content_type)
    parse_content_type(content_type)
    for name, value in headers:
        if not name.isascii() or not _FIELD_NAME_RE.fullmatch(name.encode("ascii")):
            raise MIMEError(f"invalid header name {name!r}")
        if name.lower() == "content-type":
            raise MIMEError("Content-Type belongs in content_type, not in headers")
        _check_header_value(name, value)
    _transfer_encoding(headers)


@functools.lru_cache(maxsize=256)
def _check_fields_cached(content_type: str, headers: tuple[tuple[str, str], ...]) -> None:
    """:func:`_check_fields`, memoized: a UA makes parts with the same few header sets
    again and again (an S/MIME body three per message); errors are not cached."""
    _check_fields(content_type, headers)


@dataclass(frozen=True)
class MimePart:
    """One MIME entity: its Content-Type, other headers and its (decoded) body.

    ``body`` is always the decoded content; :meth:`to_bytes` applies the
    Content-Transfer-Encoding named in ``headers`` (default: none, i.e. binary, as
    RFC 3261 §23.3 prefers for SIP).
    """

    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        try:
            _check_fields_cached(self.content_type, self.headers)
        except TypeError:  # headers not hashable (a list, say): checked without the cache
            _check_fields(self.content_type, self.headers)

    @classmethod
    def _checked(
        cls, content_type: str, body: bytes, headers: tuple[tuple[str, str], ...]
    ) -> MimePart:
        """A part whose ``content_type`` and ``headers`` already passed these checks
        (:func:`_read_head`): the body is not checked, so they need not run again."""
        part = object.__new__(cls)
        object.__setattr__(part, "content_type", content_type)
        object.__setattr__(part, "body", body)
        object.__setattr__(part, "headers", headers)
        return part

    def header(self, name: str) -> str | None:
        """The value of the first header called ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        if wanted == "content-type":
            return self.content_type
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None

    @property
    def media_type(self) -> str:
        """``type/subtype`` lowercased, without parameters."""
        return parse_content_type(self.content_type)[0]

    @property
    def params(self) -> dict[str, str]:
        """The Content-Type parameters, names lowercased."""
        return parse_content_type(self.content_type)[1]

    def to_bytes(self) -> bytes:
        """Serialize as headers, CRLF each, a blank line, then the encoded body."""
        lines = [f"Content-Type: {self.content_type}".encode("ascii")]
        lines += [f"{name}: {value}".encode("ascii") for name, value in self.headers]
        body = self.body
        if _transfer_encoding(self.headers) == "base64":
            body = base64.encodebytes(body).replace(b"\n", CRLF)
        return CRLF.join(lines) + CRLF + CRLF + body


@dataclass(frozen=True)
class Multipart:
    """A parsed multipart body (RFC 2046 §5.1).

    ``raw_parts[i]`` is the exact byte string between the delimiters around part ``i``
    (what a multipart/signed signature covers); ``parts[i]`` is its parsed form.
    """

    subtype: str
    params: Mapping[str, str]
    raw_parts: tuple[bytes, ...]
    parts: tuple[MimePart, ...]
    preamble: bytes = b""
    epilogue: bytes = b""


def _transfer_encoding(headers: Sequence[tuple[str, str]]) -> str:
    """The Content-Transfer-Encoding, lowercased; only identity encodings and base64."""
    values = [v for k, v in headers if k.lower() == "content-transfer-encoding"]
    if len(values) > 1:
        raise MIMEError("more than one Content-Transfer-Encoding header")
    if not values:
        return "binary"
    encoding = values[0].strip().lower()
    if encoding not in _IDENTITY_ENCODINGS and encoding != "base64":
        raise MIMEError(
            f"unsupported Content-Transfer-Encoding {values[0].strip()!r} "
            "(accepted: binary, 7bit, 8bit, base64)"
        )
    return encoding


# --- Content-Type ------------------------------------------------------------------------


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    return pos


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """Split a Content-Type value into lowercased ``type/subtype`` and its parameters.

    Parameter names are case-insensitive (lowercased here); values may be tokens or
    quoted strings with backslash escapes (RFC 2045 §5.1, RFC 5322 §3.2.4).
    """
    media_type, params = _parse_content_type_cached(value)
    return media_type, dict(params)  # a fresh dict: callers may change theirs


@functools.lru_cache(maxsize=256)
def _parse_content_type_cached(value: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """:func:`parse_content_type`, memoized: a received S/MIME body reads its few
    Content-Type values about twenty times (``media_type``, ``params``, the checks of
    ``MimePart``); a pure function of the string, and errors are not cached."""
    media_type, params = _parse_content_type(value)
    return media_type, tuple(params.items())


_TOKEN = _TOKEN_RE.pattern
#: One parameter as :func:`_parse_content_type` reads it: name, then a token or the
#: inside of a quoted string.
_PARAMETER = rf'[ \t]*;[ \t]*({_TOKEN})[ \t]*=[ \t]*(?:({_TOKEN})|"((?:[^"\\]|\\.)*)")'
_PARAMETER_RE = re.compile(_PARAMETER, re.DOTALL)
#: A whole Content-Type that :func:`_parse_content_type` accepts, when no parameter is
#: given twice: ``type/subtype``, parameters, perhaps a trailing ";".
_CONTENT_TYPE_RE = re.compile(
    rf"({_TOKEN})/({_TOKEN})(?:{_PARAMETER})*[ \t]*(?:;[ \t]*)?", re.DOTALL
)


def _parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """Two regular expressions for the usual value (a multipart one's boundary is new in
    every message, so no cache helps), the loop below for the rest and for every error."""
    if value.isascii():
        whole = _CONTENT_TYPE_RE.fullmatch(value.strip(" \t"))
        if whole is not None:
            found: dict[str, str] = {}
            for name, token, quoted in _PARAMETER_RE.findall(whole[0], whole.end(2)):
                key = name.lower()
                if key in found:
                    break  # the loop below names the duplicate
                found[key] = token or (
                    _QUOTED_PAIR_RE.sub(r"\1", quoted) if "\\" in quoted else quoted
                )
            else:
                return f"{whole[1]}/{whole[2]}".lower(), found
    return _parse_content_type_slowly(value)


def _parse_content_type_slowly(value: str) -> tuple[str, dict[str, str]]:
    if not value.isascii():
        raise MIMEError("Content-Type is not US-ASCII")
    text = value.strip(" \t")
    match = re.match(r"([^\s/;]+)/([^\s/;]+)", text)
    if (
        match is None
        or not _TOKEN_RE.fullmatch(match.group(1))
        or not _TOKEN_RE.fullmatch(match.group(2))
    ):
        raise MIMEError(f"Content-Type {value!r} is not type/subtype")
    media_type = f"{match.group(1)}/{match.group(2)}".lower()
    params: dict[str, str] = {}
    pos = _skip_ws(text, match.end())
    while pos < len(text):
        if text[pos] != ";":
            raise MIMEError(f"Content-Type {value!r}: expected ';' at offset {pos}")
        pos = _skip_ws(text, pos + 1)
        if pos == len(text):
            break  # a trailing ';' is common and harmless
        name_match = _TOKEN_RE.match(text, pos)
        if name_match is None:
            raise MIMEError(f"Content-Type {value!r}: bad parameter name at offset {pos}")
        name = name_match.group(0).lower()
        pos = _skip_ws(text, pos + len(name))
        if pos >= len(text) or text[pos] != "=":
            raise MIMEError(f"Content-Type {value!r}: parameter {name!r} has no '='")
        pos = _skip_ws(text, pos + 1)
        if pos < len(text) and text[pos] == '"':
            quoted = _QUOTED_RE.match(text, pos)
            if quoted is None:
                raise MIMEError(f"Content-Type {value!r}: unterminated quoted {name!r}")
            param_value = _QUOTED_PAIR_RE.sub(r"\1", quoted.group(1))
            pos = quoted.end()
        else:
            value_match = _TOKEN_RE.match(text, pos)
            if value_match is None:
                raise MIMEError(f"Content-Type {value!r}: parameter {name!r} has no value")
            param_value = value_match.group(0)
            pos = value_match.end()
        if name in params:
            raise MIMEError(f"Content-Type {value!r}: parameter {name!r} given twice")
        params[name] = param_value
        pos = _skip_ws(text, pos)
    return media_type, params


def format_content_type(media_type: str, params: Mapping[str, str] | None = None) -> str:
    """Build a Content-Type value, quoting parameter values that are not tokens."""
    parts = [media_type]
    for name, value in (params or {}).items():
        if _TOKEN_RE.fullmatch(value):
            parts.append(f"{name}={value}")
        else:
            escaped = value.replace("\\", "\\\\").replace('"', '\\"')
            parts.append(f'{name}="{escaped}"')
    return "; ".join(parts)


# --- entities ----------------------------------------------------------------------------


_BLANK_LINE = re.compile(rb"\n\r?\n")


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    """Split at the first empty line; header lines may end in CRLF or (leniently) LF.

    Without an empty line the whole entity is headers and the body is empty, which
    RFC 2046 §5.1.1 allows for a body part (``MIME-part-headers [CRLF *OCTET]``).
    """
    if data.startswith(CRLF):
        return b"", data[2:]
    if data.startswith(b"\n"):
        return b"", data[1:]
    match = _BLANK_LINE.search(data)
    if match is None:
        head = data[:-1] if data.endswith(b"\n") else data
        return head, b""
    return data[: match.start()], data[match.end() :]


def _parse_headers(head: bytes, limits: MimeLimits) -> list[tuple[str, str]]:
    """Parse header fields, unfolding continuation lines (RFC 5322 §2.2.3)."""
    if not head:
        return []
    fields: list[tuple[str, list[bytes]]] = []  # value pieces, joined once (no O(n^2))
    for number, raw_line in enumerate(head.split(b"\n"), start=1):
        line = raw_line[:-1] if raw_line.endswith(b"\r") else raw_line
        if len(line) > limits.max_header_line:
            raise InputTooLargeError(
                f"MIME header line {number} is {len(line)} octets (limit {limits.max_header_line})"
            )
        if b"\r" in line:
            raise MIMEError(f"MIME header line {number} contains a bare CR")
        if line[:1] in (b" ", b"\t"):
            if not fields:
                raise MIMEError("MIME headers start with a continuation line")
            fields[-1][1].append(line.strip(b" \t"))
            continue
        name_bytes, colon, value_bytes = line.partition(b":")
        name_bytes = name_bytes.rstrip(b" \t")
        if not colon or not _FIELD_NAME_RE.fullmatch(name_bytes):
            shown = line[:40].decode("ascii", "replace")
            raise MIMEError(f"MIME header line {number} is not 'Name: value': {shown!r}")
        fields.append((name_bytes.decode("ascii"), [value_bytes.strip(b" \t")]))
        if len(fields) > limits.max_headers:
            raise InputTooLargeError(f"more than {limits.max_headers} MIME header fields")
    headers: list[tuple[str, str]] = []
    for name, pieces in fields:
        try:
            headers.append((name, b" ".join(pieces).decode("ascii")))
        except UnicodeDecodeError as exc:
            raise MIMEError(f"{name} header value is not US-ASCII") from exc
    return headers


#: Header blocks up to this size are remembered (:func:`_read_head_cached`).
_MAX_REMEMBERED_HEAD = 2048


def _read_head(
    head: bytes, limits: MimeLimits
) -> tuple[str, tuple[tuple[str, str], ...], str, str]:
    """(Content-Type, the other headers, transfer encoding, media type) of a header block.

    Everything :class:`MimePart` checks is checked here too, so a part made of the result
    needs no second check (:meth:`MimePart._checked`).
    """
    headers = _parse_headers(head, limits)
    content_types = [v for k, v in headers if k.lower() == "content-type"]
    if len(content_types) > 1:
        raise MIMEError("more than one Content-Type header")
    content_type = content_types[0] if content_types else "text/plain"
    media_type, _ = parse_content_type(content_type)
    extra = tuple((k, v) for k, v in headers if k.lower() != "content-type")
    encoding = _transfer_encoding(extra)
    MimePart(content_type=content_type, body=b"", headers=extra)  # its checks, or its error
    return content_type, extra, encoding, media_type


@functools.lru_cache(maxsize=256)
def _read_head_cached(
    head: bytes, limits: MimeLimits
) -> tuple[str, tuple[tuple[str, str], ...], str, str]:
    """:func:`_read_head`, memoized: the body parts of a sender's multipart/signed have
    the same header blocks in every message; a pure function of the bytes and limits, and
    errors are not cached."""
    return _read_head(head, limits)


def parse_mime_part(
    data: bytes, *, limits: MimeLimits = DEFAULT_LIMITS, _depth: int = 0
) -> MimePart:
    """Parse one MIME entity (headers, empty line, body) into a :class:`MimePart`.

    A missing Content-Type means ``text/plain`` (RFC 2045 §5.2). A base64 body is decoded;
    ``binary``/``7bit``/``8bit`` bodies are kept byte for byte. A multipart body is parsed
    too (to enforce the nesting limit) but kept as bytes in ``body``.
    """
    return parse_mime_entity(data, limits=limits, _depth=_depth)[0]


def parse_mime_entity(
    data: bytes, *, limits: MimeLimits = DEFAULT_LIMITS, _depth: int = 0
) -> tuple[MimePart, Multipart | None]:
    """:func:`parse_mime_part`, also returning the parsed multipart body (None if not one).

    The multipart is what ``parse_multipart(part.content_type, part.body, limits=limits)``
    returns, so a reader that goes on into the parts (S/MIME verification) need not split
    the body a second time.
    """
    if len(data) > limits.max_size:
        raise InputTooLargeError(f"MIME entity is {len(data)} octets (limit {limits.max_size})")
    head, body = _split_head(data)
    if len(head) <= _MAX_REMEMBERED_HEAD:
        content_type, extra, encoding, media_type = _read_head_cached(head, limits)
    else:
        content_type, extra, encoding, media_type = _read_head(head, limits)
    if encoding == "base64":
        if media_type.startswith("multipart/"):
            raise MIMEError("a multipart entity must not be base64 encoded (RFC 2045 §6.4)")
        try:
            body = binascii.a2b_base64(_BASE64_WHITESPACE.sub(b"", body), strict_mode=True)
        except binascii.Error as exc:
            raise MIMEError(f"invalid base64 body: {exc}") from exc
    part = MimePart._checked(content_type, body, extra)
    multipart = None
    if media_type.startswith("multipart/"):
        multipart = parse_multipart(content_type, body, limits=limits, _depth=_depth)
    return part, multipart


# --- multipart ---------------------------------------------------------------------------


def new_boundary() -> str:
    """A fresh multipart boundary: a token, 128 random bits, that no sender repeats."""
    return "sipcert-" + secrets.token_hex(16)


def _check_boundary(boundary: str) -> None:
    if not _BOUNDARY_RE.fullmatch(boundary):
        raise MIMEError(f"boundary {boundary!r} is not 1-70 characters of RFC 2046 §5.1.1 bchars")


def build_multipart(
    subtype: str,
    parts: Sequence[MimePart],
    boundary: str | None = None,
    params: Mapping[str, str] | None = None,
) -> MimePart:
    """Build a ``multipart/<subtype>`` entity (RFC 2046 §5.1.1) from ``parts``.

    Without a ``boundary`` a random one is drawn and redrawn until ``--boundary`` occurs in
    no part, so no delimiter can appear inside a part. An explicit boundary that occurs in
    a part raises :class:`MIMEError`. ``params`` (e.g. ``protocol`` and ``micalg`` for
    multipart/signed, RFC 1847 §2.1) come before ``boundary`` in the Content-Type.
    """
    if not parts:
        raise MIMEError("a multipart body needs at least one part (RFC 2046 §5.1.1)")
    if not _TOKEN_RE.fullmatch(subtype):
        raise MIMEError(f"multipart subtype {subtype!r} is not a token")
    encoded = [part.to_bytes() for part in parts]
    if boundary is None:
        boundary = new_boundary()
        while any(b"--" + boundary.encode("ascii") in chunk for chunk in encoded):
            boundary = new_boundary()  # pragma: no cover - 2**-128 chance per part
    else:
        _check_boundary(boundary)
        if any(b"--" + boundary.encode("ascii") in chunk for chunk in encoded):
            raise MIMEError(f"boundary {boundary!r} occurs inside a body part")
    all_params = {k.lower(): v for k, v in (params or {}).items()}
    if "boundary" in all_params:
        raise MIMEError("pass the boundary as the boundary argument, not in params")
    dash = b"--" + boundary.encode("ascii")
    body = dash + CRLF + (CRLF + dash + CRLF).join(encoded) + CRLF + dash + b"--" + CRLF
    media_type = f"multipart/{subtype.lower()}"
    if _TOKEN_RE.fullmatch(boundary):
        try:
            head = _checked_multipart_type(media_type, tuple(all_params.items()))
        except (MIMEError, TypeError):
            pass  # the general path below raises the precise error
        else:
            return MimePart._checked(f"{head}; boundary={boundary}", body, ())
    all_params["boundary"] = boundary
    return MimePart(content_type=format_content_type(media_type, all_params), body=body)


@functools.lru_cache(maxsize=64)
def _checked_multipart_type(media_type: str, params: tuple[tuple[str, str], ...]) -> str:
    """The Content-Type of a multipart entity up to its boundary, checked as
    :class:`MimePart` checks a Content-Type: a sender's multipart/signed repeats all of it
    in every message but the boundary, which is fresh.

    Appending ``; boundary=TOKEN`` to a value that passes keeps it passing (it ends in a
    token or a quoted string, and ``boundary`` is not among ``params``), so
    :func:`build_multipart` checks only the boundary per message. Errors are not cached.
    """
    content_type = format_content_type(media_type, dict(params))
    _check_fields(content_type, ())
    return content_type


def _line_break_before(body: bytes, index: int) -> int:
    """Start of the line break that precedes ``index`` (CRLF, or leniently LF)."""
    if index >= 2 and body[index - 2 : index] == CRLF:
        return index - 2
    return index - 1


def _delimiters(body: bytes, dash: bytes) -> list[tuple[int, int, bool]]:
    """Find delimiter lines as (start of line, end of line incl. break, is_close).

    A delimiter is ``--boundary`` at the start of a line followed by ``--`` (close) or by
    optional transport padding and a line break (RFC 2046 §5.1.1). Anything else that
    merely starts with ``--boundary`` is ordinary body text.
    """
    found: list[tuple[int, int, bool]] = []
    pos = 0
    while True:
        index = body.find(dash, pos)
        if index < 0:
            return found
        pos = index + 1
        if index > 0 and body[index - 1 : index] != b"\n":
            continue
        after = index + len(dash)
        if body[after : after + 2] == b"--":
            end = after + 2
            while end < len(body) and body[end] in b" \t":
                end += 1
            if body[end : end + 2] == CRLF:
                end += 2
            elif body[end : end + 1] == b"\n":
                end += 1
            found.append((index, end, True))
            return found
        end = after
        while end < len(body) and body[end] in b" \t":
            end += 1
        if body[end : end + 2] == CRLF:
            found.append((index, end + 2, False))
        elif body[end : end + 1] == b"\n":
            found.append((index, end + 1, False))


def parse_multipart(
    content_type: str,
    body: bytes,
    *,
    limits: MimeLimits = DEFAULT_LIMITS,
    _depth: int = 0,
) -> Multipart:
    """Split a multipart body into its parts, keeping each part's bytes exactly.

    The line break before each delimiter belongs to the delimiter (RFC 2046 §5.1.1), so
    ``raw_parts`` are exactly the bytes a multipart/signed signature covers (RFC 1847).
    The closing delimiter is required; the preamble and epilogue are returned, not parsed.
    """
    if len(body) > limits.max_size:
        raise InputTooLargeError(f"multipart body is {len(body)} octets (limit {limits.max_size})")
    if _depth >= limits.max_depth:
        raise InputTooLargeError(f"multipart bodies nested deeper than {limits.max_depth}")
    media_type, params = parse_content_type(content_type)
    if not media_type.startswith("multipart/"):
        raise MIMEError(f"Content-Type {media_type!r} is not multipart")
    boundary = params.get("boundary")
    if boundary is None:
        raise MIMEError(f"Content-Type {media_type} has no boundary parameter")
    _check_boundary(boundary)
    dash = b"--" + boundary.encode("ascii")
    delimiters = _delimiters(body, dash)
    if not delimiters:
        raise MIMEError(f"boundary {boundary!r} does not occur in the multipart body")
    if not delimiters[-1][2]:
        raise MIMEError(f"multipart body has no closing delimiter '--{boundary}--'")
    if len(delimiters) == 1:
        raise MIMEError(f"multipart body with boundary {boundary!r} has no body parts")
    if len(delimiters) - 1 > limits.max_parts:
        raise InputTooLargeError(
            f"multipart body has {len(delimiters) - 1} parts (limit {limits.max_parts})"
        )
    first_start = delimiters[0][0]
    preamble = body[: _line_break_before(body, first_start)] if first_start > 0 else b""
    raw_parts: list[bytes] = []
    for (_, content_start, _), (next_start, _, _) in itertools.pairwise(delimiters):
        content_end = max(content_start, _line_break_before(body, next_start))
        raw_parts.append(body[content_start:content_end])
    parts = tuple(parse_mime_part(raw, limits=limits, _depth=_depth + 1) for raw in raw_parts)
    return Multipart(
        subtype=media_type.split("/", 1)[1],
        params=params,
        raw_parts=tuple(raw_parts),
        parts=parts,
        preamble=preamble,
        epilogue=body[delimiters[-1][1] :],
    )
