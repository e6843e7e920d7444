"""The Store's request → decision logic, without I/O (draft §4.3-§5, RFC 4387).

The HTTP server parses bytes into a method, a query string and a few headers, and hands
them here; this module says what the request asks for (:func:`parse_query`), whether an
upload is acceptable (:func:`parse_upload`, :func:`authorize_upload`) and what exactly to
answer (:func:`certificates_response`, :func:`error_response`). Database and credential
look-ups stay in the server, so the same rules serve every server and every test.
"""

from __future__ import annotations

import base64
import email.errors
import email.header
import email.message
import email.utils
import functools
import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import unquote_to_bytes

from cryptography import x509

from sipcert.errors import (
    AORError,
    ForbiddenError,
    InputError,
    InputTooLargeError,
    RateLimitedError,
    SipCertError,
    UnsupportedMediaTypeError,
    URITooLongError,
)
from sipcert.proto.aor import AOR, escape_user, parse_aor, plain_aor
from sipcert.proto.certs import check_enrollment, format_cert_hash, load_certificate

__all__ = [
    "AOR_ATTRIBUTES",
    "CERT_HASH_LENGTH",
    "MAX_LABEL_LENGTH",
    "MAX_QUERY_LENGTH",
    "Response",
    "StorePolicy",
    "StoreQuery",
    "authorize_delete",
    "authorize_upload",
    "certificates_response",
    "check_host",
    "conditional",
    "enrolled_on_header",
    "enrolled_on_header_us",
    "error_response",
    "error_to_response",
    "etag_for",
    "format_description",
    "parse_cert_hash",
    "parse_description",
    "parse_enrolled_on",
    "parse_query",
    "parse_query_full",
    "parse_upload",
    "percent_decode",
]

#: The query attributes that name an AOR: ``email`` and ``sip`` from the draft (§4.1, §8),
#: ``uri`` from RFC 4387 §3.2.
AOR_ATTRIBUTES = ("email", "sip", "uri")
#: Longest query string looked at (an AOR is at most 512 characters, escaped up to 3x).
MAX_QUERY_LENGTH = 2048
_CERT_HASH_BYTES = 20  # RFC 4387 §2.2: certHash is derived from the certificate's SHA-1
#: Length of an RFC 4387 §2.1 certHash: 20 bytes in base64 without the ``=`` padding.
CERT_HASH_LENGTH = 27
_CERT_HASH_RE = re.compile(r"[A-Za-z0-9+/]+")

#: Longest device label kept (characters, after RFC 2047 decoding): a name, not a note.
MAX_LABEL_LENGTH = 64
#: Longest ``Content-Description`` value looked at (an encoded-word triples the length).
_MAX_DESCRIPTION_FIELD = 512

PKIX_CERT = "application/pkix-cert"
#: Upload media types taken as a certificate; the body may be DER or PEM either way.
_UPLOAD_TYPES = frozenset(
    {
        PKIX_CERT,
        "application/x-x509-user-cert",
        "application/x-pem-file",
        "application/octet-stream",
    }
)


@dataclass(frozen=True)
class StorePolicy:
    """What the Store accepts and how it answers; one per served domain if need be."""

    #: ``Cache-Control: max-age`` of GET answers, in seconds (0 allowed: draft §5 caching).
    max_age: int = 60
    #: Largest certificate upload accepted, in bytes.
    max_certificate_size: int = 16 * 1024
    #: Longest ``not_after - not_before`` accepted (draft §5: "fairly short-lived").
    max_lifetime: timedelta = timedelta(days=92)
    #: Most unexpired certificates one AOR may hold (one per device, draft §4.4).
    max_per_aor: int = 10

    def __post_init__(self) -> None:
        if self.max_age < 0:
            raise ValueError("max_age must not be negative")
        if self.max_certificate_size <= 0 or self.max_per_aor <= 0:
            raise ValueError("size and count limits must be positive")
        if self.max_lifetime <= timedelta(0):
            raise ValueError("max_lifetime must be positive")


@dataclass(frozen=True)
class StoreQuery:
    """What a ``search-cgi`` query string asks for.

    ``attribute`` is the name that carried the AOR (``email``, ``sip`` or ``uri``);
    ``cert_hash`` is the RFC 4387 §2.1 ``certHash`` (27-character base64 SHA-1).
    """

    aor: AOR | None
    attribute: str | None
    cert_hash: str | None


@dataclass(frozen=True)
class Response:
    """A complete HTTP answer: status, headers (without framing ones) and body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


def percent_decode(raw: str, what: str, *, plus_is_space: bool = False) -> str:
    """Strict percent-decoding: a bad escape or a non-UTF-8 result is an :class:`InputError`.

    In ``search-cgi`` queries ``+`` stays ``+``: it is a legal character of an AOR user part
    (RFC 3261 ``user-unreserved``) and of base64 ``certHash`` values. HTML forms
    (``application/x-www-form-urlencoded``) encode a space as ``+``: ``plus_is_space``.
    ``what`` names the value in error messages (e.g. ``query parameter 'email'``).
    """
    if plus_is_space:
        raw = raw.replace("+", " ")
    i = raw.find("%")
    while i != -1:
        pair = raw[i + 1 : i + 3]
        if len(pair) != 2 or any(c not in "0123456789abcdefABCDEF" for c in pair):
            raise InputError(f"{what} has a malformed %-escape at {i}")
        i = raw.find("%", i + 3)
    try:
        return unquote_to_bytes(raw).decode("utf-8")
    except UnicodeError as exc:  # a byte that was not UTF-8 on the wire: a surrogate here
        raise InputError(f"{what} is not UTF-8 after %-decoding") from exc


def parse_cert_hash(value: str) -> str:
    """An RFC 4387 certHash as the RFC spells it, or :class:`InputError` (400).

    RFC 4387 §2.1 turns the 20-byte SHA-1 into base64 and drops the trailing ``=``: 27
    characters, and a value with any character outside ``A-Za-z0-9+/`` MUST be rejected.
    So the padded 28-character form (our 0.1 spelling) is refused too: its ``=`` is such a
    character, and the values are compared exactly (§2.2). The last character must leave
    the unused low bits zero (RFC 4648 §3.5), so one digest has exactly one spelling.
    """
    if len(value) != CERT_HASH_LENGTH or not _CERT_HASH_RE.fullmatch(value):
        if value.endswith("=") and _CERT_HASH_RE.fullmatch(value.rstrip("=")):
            raise InputError("certHash must not end with '=': RFC 4387 §2.1 drops the padding")
        raise InputError(
            f"certHash must be {CERT_HASH_LENGTH} characters of A-Za-z0-9+/ "
            "(base64 SHA-1 without '=', RFC 4387 §2.1)"
        )
    digest = base64.b64decode(value + "=")
    if len(digest) != _CERT_HASH_BYTES or format_cert_hash(digest) != value:
        raise InputError("certHash is not the canonical base64 of a SHA-1 (RFC 4387 §2.1)")
    return value


def parse_description(value: str | None) -> str | None:
    """The device label of a PUT's ``Content-Description`` (RFC 2045 §8), or None.

    The label is what a person reads on the revocation page to tell their devices apart
    (draft §5: one certificate per device); it is display text and nothing else. RFC 2047
    encoded-words (allowed in Content-Description, RFC 2047 §5(1)) are decoded, so any
    printable Unicode can be sent in an ASCII header. Surrounding white space is dropped;
    an empty value is no label. Raises :class:`InputError` (400) for a label longer than
    :data:`MAX_LABEL_LENGTH` characters or holding a control, format or unassigned
    character; the message never repeats the value.
    """
    if value is None:
        return None
    if len(value) > _MAX_DESCRIPTION_FIELD:
        raise InputError(f"Content-Description longer than {_MAX_DESCRIPTION_FIELD} characters")
    try:
        label = str(email.header.make_header(email.header.decode_header(value)))
    except (ValueError, LookupError, email.errors.MessageError) as exc:  # CharsetError too
        raise InputError("Content-Description has a malformed RFC 2047 encoded-word") from exc
    label = label.strip()
    if not label:
        return None
    if len(label) > MAX_LABEL_LENGTH:
        raise InputError(f"the device label is longer than {MAX_LABEL_LENGTH} characters")
    if not label.isprintable():
        raise InputError("the device label holds control or other non-printable characters")
    return label


def format_description(label: str) -> str:
    """``label`` as a ``Content-Description`` value: as is when printable ASCII, else one
    RFC 2047 encoded-word (UTF-8, base64), which :func:`parse_description` reverses."""
    if label.isascii() and label.isprintable() and "=?" not in label:
        return label
    return email.header.Header(label, "utf-8").encode(maxlinelen=10_000)


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def enrolled_on_header(created: datetime) -> str:
    """The ``Content-Disposition`` of one certificate: RFC 2183 §2.4 ``creation-date``, the
    moment the Store accepted it ("enrolled on")."""
    # email.utils.format_datetime's RFC 5322 spelling, formatted directly: it is in every
    # GET answer, and the library's time-tuple round trip was a tenth of the GET (issue 13).
    t = created.astimezone(UTC)
    date = (
        f"{_DAYS[t.weekday()]}, {t.day:02d} {_MONTHS[t.month - 1]} {t.year:04d} "
        f"{t.hour:02d}:{t.minute:02d}:{t.second:02d} +0000"
    )
    return f'attachment; creation-date="{date}"'


def enrolled_on_header_us(created_us: int) -> str:
    """:func:`enrolled_on_header` of a time in Unix microseconds (as SQLite stores it),
    without making a datetime: the hot GET renders every answer from its row (issue 13)."""
    days, second = divmod(created_us // 1_000_000, 86_400)
    hour, second = divmod(second, 3_600)
    minute, second = divmod(second, 60)
    two = _TWO_DIGITS
    return f'{_day_of(days)}{two[hour]}:{two[minute]}:{two[second]} +0000"'


_TWO_DIGITS = tuple(f"{n:02d}" for n in range(60))


@functools.lru_cache(maxsize=4096)
def _day_of(days: int) -> str:
    """The ``attachment; creation-date="Tue, 01 Dec 2026 `` start of the value for a day
    (days since the Unix epoch): enrolments of a Store fall on a few thousand days."""
    t = time.gmtime(days * 86_400)
    return (
        f'attachment; creation-date="{_DAYS[t.tm_wday]}, {t.tm_mday:02d} '
        f"{_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
    )


#: :func:`enrolled_on_header`'s exact spelling (the weekday is not checked, as RFC 5322
#: parsers do not).
_ENROLLED_ON = re.compile(
    r'attachment; creation-date="(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), (\d\d) '
    r'(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) ([1-9]\d{3}) (\d\d):(\d\d):(\d\d) \+0000"'
)


def parse_enrolled_on(value: str | None) -> datetime | None:
    """The ``creation-date`` of a ``Content-Disposition`` (RFC 2183 §2.4), or None when absent
    or unreadable: it is shown to a person and never decides anything.

    The spelling a sipcert Store writes is read directly (the email package's parameter
    parser was a tenth of a client's fetch, issue 13); any other goes through that parser.
    """
    if not value or len(value) > _MAX_DESCRIPTION_FIELD:
        return None
    found = _ENROLLED_ON.fullmatch(value)
    if found is not None:
        day, month, year, hour, minute, second = found.groups()
        try:
            return datetime(
                int(year),
                _MONTHS.index(month) + 1,
                int(day),
                int(hour),
                int(minute),
                int(second),
                tzinfo=UTC,
            )
        except ValueError:
            return None  # 31 Feb: the email package refuses it too
    return _parse_enrolled_on_email(value)


def _parse_enrolled_on_email(value: str) -> datetime | None:
    """:func:`parse_enrolled_on` for any spelling, with the email package."""
    message = email.message.Message()
    try:
        message["Content-Disposition"] = value
        date = message.get_param("creation-date", header="content-disposition")
        if not isinstance(date, str):
            return None
        parsed = email.utils.parsedate_to_datetime(date)
    except (ValueError, TypeError, IndexError, email.errors.MessageError):
        return None
    return parsed if parsed.tzinfo is not None else None


#: ``email=user%40host`` (or ``sip=``/``uri=``) as sipcert clients send it (issue 13).
_CANONICAL_QUERY = re.compile(r"(email|sip|uri)=([A-Za-z0-9._-]+)%40([A-Za-z0-9.-]+)")


def parse_query(query: str) -> StoreQuery:
    """Parse a ``search-cgi`` query string (draft §4.1, §4.5, §8; RFC 4387 §3.2).

    The canonical spelling a sipcert client sends (one attribute, ``user%40host`` with a
    plain user part) is parsed directly with :func:`~sipcert.proto.aor.plain_aor`, which
    gives the very same :class:`StoreQuery` (a Store of many AORs is asked for a different
    one each time, so a memo of query strings misses: issue 13); every other spelling goes
    through :func:`parse_query_full`.
    """
    found = _CANONICAL_QUERY.fullmatch(query) if len(query) <= MAX_QUERY_LENGTH else None
    if found is not None:
        aor = plain_aor(found[2], found[3])
        if aor is not None:
            return StoreQuery(aor=aor, attribute=found[1], cert_hash=None)
    return parse_query_full(query)


@functools.lru_cache(maxsize=1024)  # at most ~2 MiB: queries are <= 2048 characters
def parse_query_full(query: str) -> StoreQuery:
    """Parse any ``search-cgi`` query string (the whole grammar of :func:`parse_query`).

    Memoised: a few AORs may be asked for again and again, and the answer is an immutable
    value of the string alone (errors are not cached).

    Exactly one of ``email``/``sip``/``uri`` may name the AOR, in any form
    :func:`~sipcert.proto.aor.parse_aor` accepts; ``certHash`` may come with it or alone.
    Repeated, empty or unknown parameters are errors rather than guesses.

    Raises :class:`InputError` (400) or :class:`~sipcert.errors.URITooLongError` (414, RFC
    9112 §3: a request-target longer than the server parses).
    """
    if len(query) > MAX_QUERY_LENGTH:
        raise URITooLongError(f"query string longer than {MAX_QUERY_LENGTH} characters")
    if not query:
        raise InputError("missing query: expected ?email=<aor>, ?sip=<aor> or ?certHash=<hash>")
    seen: dict[str, str] = {}
    for item in query.split("&"):
        name, sep, raw = item.partition("=")
        if not sep:
            raise InputError(f"query parameter {name[:40]!r} has no value")
        if name not in (*AOR_ATTRIBUTES, "certHash"):
            raise InputError(f"unsupported search attribute {name[:40]!r}")
        if name in seen:
            raise InputError(f"query parameter {name!r} given twice")
        value = percent_decode(raw, f"query parameter {name!r}")
        if not value:
            raise InputError(f"query parameter {name!r} is empty")
        seen[name] = value
    attributes = [a for a in AOR_ATTRIBUTES if a in seen]
    if len(attributes) > 1:
        raise InputError(f"give one of email, sip or uri, not {' and '.join(attributes)}")
    aor: AOR | None = None
    attribute = attributes[0] if attributes else None
    if attribute is not None:
        try:
            aor = parse_aor(seen[attribute])
        except InputTooLargeError as exc:  # a part of the target, not content: 414, not 413
            raise URITooLongError(str(exc)) from exc
    cert_hash = parse_cert_hash(seen["certHash"]) if "certHash" in seen else None
    return StoreQuery(aor=aor, attribute=attribute, cert_hash=cert_hash)


#: RFC 9110 §7.2 / RFC 3986 §3.2.2-3.2.3: ``uri-host [ ":" port ]``; reg-name characters
#: (unreserved, pct-encoded, sub-delims), an IPv4 address or an IP-literal in brackets.
_HOST_RE = re.compile(
    r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]+)(?::[0-9]*)?",
)


def check_host(values: Sequence[str]) -> None:
    """The ``Host`` field of an HTTP/1.1 request: exactly one, with a valid value.

    RFC 9112 §3.2: a server MUST answer 400 to a request "that contains more than one Host
    header field line or a Host header field with an invalid field value" (aiohttp's parser
    refuses a missing or repeated one itself). An https URI always has an authority (RFC
    9110 §4.2.2), so an empty value is invalid too. Raises :class:`InputError` (400).
    """
    if len(values) != 1:
        raise InputError("give exactly one Host header (RFC 9112 §3.2)")
    if not _HOST_RE.fullmatch(values[0].strip()):
        raise InputError("the Host header is not a valid host[:port] (RFC 9112 §3.2)")


def etag_for(fingerprints: Sequence[str]) -> str:
    """A strong ETag for an answer made of certificates with these SHA-256 fingerprints."""
    digest = hashlib.sha256("\n".join(fingerprints).encode("ascii")).hexdigest()
    return f'"{digest[:32]}"'


def _etag_matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110 §13.1.2: ``*`` or any listed tag equal under weak comparison."""
    value = if_none_match.strip()
    if value == "*":
        return True
    opaque = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == opaque for tag in value.split(","))


def _boundary(etag: str, parts: Sequence[bytes]) -> str:
    """A multipart boundary that occurs in no part (RFC 2046 §5.1.1)."""
    base = "sipcert-" + etag.strip('"')
    boundary, salt = base, 0
    while any(boundary.encode("ascii") in part for part in parts):
        salt += 1
        boundary = f"{base}-{salt}"
    return boundary


def _about(
    labels: Sequence[str | None], enrolled: Sequence[datetime], i: int
) -> tuple[tuple[str, str], ...]:
    """The descriptive headers of certificate ``i``: its device label and enrolled on."""
    headers: list[tuple[str, str]] = []
    label = labels[i] if i < len(labels) else None
    if label:
        headers.append(("Content-Description", format_description(label)))
    if i < len(enrolled):
        headers.append(("Content-Disposition", enrolled_on_header(enrolled[i])))
    return tuple(headers)


def certificates_response(
    ders: Sequence[bytes],
    fingerprints: Sequence[str],
    *,
    max_age: int,
    if_none_match: str | None = None,
    labels: Sequence[str | None] = (),
    enrolled: Sequence[datetime] = (),
) -> Response:
    """The answer to a GET for these certificates (draft §4.3, §4.5; RFC 2585 §4.1).

    None: 404. One: ``application/pkix-cert`` with the DER bytes. Several:
    ``multipart/mixed`` with one binary ``application/pkix-cert`` part each. Every answer
    carries an ETag and ``Cache-Control: max-age`` (draft §5: callers may cache briefly), and
    a matching ``If-None-Match`` gives 304. ``labels`` and ``enrolled`` (parallel to
    ``ders``) describe each certificate for a person: ``Content-Description`` (RFC 2045 §8)
    and ``Content-Disposition: attachment; creation-date`` (RFC 2183 §2.4), as headers of
    the single answer or of each part. A certificate's label cannot change while it is
    stored, so the ETag still depends on the fingerprints alone.
    """
    if not ders:
        return error_response(404, "no certificates for this address of record")
    etag = etag_for(fingerprints)
    caching = (("ETag", etag), ("Cache-Control", f"max-age={max_age}"))
    if if_none_match is not None and _etag_matches(if_none_match, etag):
        return Response(304, caching, b"")
    if len(ders) == 1:
        headers = (("Content-Type", PKIX_CERT), *_about(labels, enrolled, 0), *caching)
        return Response(200, headers, bytes(ders[0]))
    boundary = _boundary(etag, ders)
    chunks: list[bytes] = []
    for i, der in enumerate(ders):
        part = "".join(f"{name}: {value}\r\n" for name, value in _about(labels, enrolled, i))
        chunks.append(
            f"--{boundary}\r\nContent-Type: {PKIX_CERT}\r\n{part}"
            "Content-Transfer-Encoding: binary\r\n\r\n".encode("ascii")
        )
        chunks.append(der)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode("ascii"))
    content_type = f'multipart/mixed; boundary="{boundary}"'
    return Response(200, (("Content-Type", content_type), *caching), b"".join(chunks))


def conditional(answer: Response, if_none_match: str | None) -> Response:
    """``answer`` (a GET answer made without ``If-None-Match``) for a request that sent one.

    The same rule as :func:`certificates_response`: a 200 whose ETag matches becomes a 304
    with the caching headers and no body (RFC 9110 §13.1.2); anything else is unchanged. The
    Store's answer cache (issue 13) keeps answers made without the condition and applies it
    per request with this.
    """
    if if_none_match is None or answer.status != 200:
        return answer
    headers = dict(answer.headers)
    etag = headers.get("ETag")
    if etag is None or not _etag_matches(if_none_match, etag):
        return answer
    return Response(304, (("ETag", etag), ("Cache-Control", headers["Cache-Control"])), b"")


def error_response(status: int, reason: str) -> Response:
    """A short ``text/plain`` error answer; ``reason`` must be fit for any client to read."""
    body = (reason.strip().replace("\r", " ").replace("\n", " ")[:300] + "\n").encode()
    return Response(status, (("Content-Type", "text/plain; charset=utf-8"),), body)


def error_to_response(exc: SipCertError) -> Response:
    """Map any sipcert error to its answer, in one place (the status comes from the class)."""
    reason = str(exc)
    if isinstance(exc, ForbiddenError):
        reason = f"{exc.reason}: {exc}"
    response = error_response(exc.http_status, reason)
    if isinstance(exc, RateLimitedError):  # RFC 6585 §4
        response = Response(
            response.status,
            (*response.headers, ("Retry-After", str(exc.retry_after))),
            response.body,
        )
    return response


def parse_upload(body: bytes, content_type: str | None, *, max_size: int) -> x509.Certificate:
    """The certificate of a PUT body: DER (``application/pkix-cert``) or PEM (draft §5).

    Raises :class:`InputTooLargeError` (413), :class:`UnsupportedMediaTypeError` (415) or
    :class:`~sipcert.errors.CertificateParseError` (400).
    """
    if len(body) > max_size:
        raise InputTooLargeError(f"certificate upload larger than {max_size} bytes")
    if content_type is not None:
        media_type = content_type.split(";", 1)[0].strip().lower()
        if media_type not in _UPLOAD_TYPES:
            raise UnsupportedMediaTypeError(
                f"Content-Type {media_type[:60]!r} is not a certificate; send {PKIX_CERT}"
            )
    return load_certificate(body, max_size=max_size)


def _check_user(digest_username: str, aor: AOR) -> None:
    try:
        user = escape_user(digest_username)
    except (AORError, InputTooLargeError):
        user = None
    if user != aor.user:
        raise ForbiddenError(
            f"authenticated as {digest_username!r}, which is not the user of {aor}",
            reason="aor-user-mismatch",
        )


def authorize_delete(aor: AOR, *, digest_username: str) -> None:
    """Decide whether ``digest_username`` may revoke ``aor``'s certificates (draft §5).

    Only the AOR's own user may: raises :class:`ForbiddenError` (``aor-user-mismatch``).
    """
    _check_user(digest_username, aor)


def authorize_upload(
    cert: x509.Certificate,
    aor: AOR,
    *,
    digest_username: str,
    tls_domain: str,
    now: datetime,
    policy: StorePolicy,
) -> None:
    """Decide whether ``digest_username`` may enroll ``cert`` for ``aor`` (draft §5, §5.1).

    The Digest user must be the AOR's user, and the certificate must pass
    :func:`~sipcert.proto.certs.check_enrollment` for that user and the TLS (SNI) domain.
    Raises :class:`ForbiddenError` with a machine-readable ``reason``.
    """
    _check_user(digest_username, aor)
    check_enrollment(
        cert,
        digest_username=digest_username,
        tls_domain=tls_domain,
        now=now,
        max_lifetime=policy.max_lifetime,
    )
