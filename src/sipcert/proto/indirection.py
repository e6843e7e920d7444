"""Content indirection bodies (RFC 4483) that point at a certificate (draft §4.2).

Draft §4.2 lets a proxy answer OPTIONS, and a caller decorate its requests, with a body that
does not carry the certificate but says where to fetch it: ``message/external-body`` with
``access-type=URL`` (RFC 4483 §4, RFC 2017) whose encapsulated headers name the type
``application/pkix-cert`` (RFC 2585). For example::

    Content-Type: message/external-body; access-type="URL";
        URL="https://certs.example.com/search-cgi?email=alice%40example.com";
        expiration="Sat, 20 Jun 2026 12:00:00 GMT"; size=812

    Content-Type: application/pkix-cert
    Content-ID: <5b1f0c7a9e2d@example.com>

Parameters are those RFC 4483 uses: ``URL`` (required), ``expiration`` (RFC 2046 §5.2.3.1,
an RFC 5322 date) and ``size`` (octets). RFC 4483 defines no hash parameter; integrity comes
from fetching over TLS with the draft §4.3 name rule and validating what is fetched.
The encapsulated headers must carry a Content-ID (RFC 2046 §5.2.3, used by RFC 4483 §4.3 to
version the content).

Parsing is strict because the URL is followed: only ``https`` URLs without user
information, a bounded URL length and a bounded announced size.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from urllib.parse import SplitResult, urlsplit

from sipcert.errors import InputTooLargeError, MIMEError
from sipcert.proto.mime import MimePart, format_content_type, parse_mime_part

__all__ = [
    "CERTIFICATE_TYPE",
    "EXTERNAL_BODY",
    "MAX_REFERENCED_SIZE",
    "MAX_URL_LENGTH",
    "ExternalBody",
    "build_external_body",
    "certificate_reference",
    "parse_external_body",
]

EXTERNAL_BODY = "message/external-body"
CERTIFICATE_TYPE = "application/pkix-cert"
#: Longest URL accepted (RFC 9110 §4.1 recommends supporting at least 8000; ours are short).
MAX_URL_LENGTH = 2048
#: Largest ``size`` accepted by default: a DER certificate is a few kilobytes.
MAX_REFERENCED_SIZE = 64 * 1024
#: Largest external-body entity (the encapsulated headers and any phantom body).
MAX_BODY = 4096

_CONTENT_ID = re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]+@[\x21-\x3b\x3d\x3f-\x7e]+>")
_HAS_CONTENT_TYPE = re.compile(rb"(?im)^content-type[ \t]*:")


def _check_url(url: str) -> SplitResult:
    """An absolute ``https`` URL with a host and without credentials, or MIMEError."""
    if len(url) > MAX_URL_LENGTH:
        raise InputTooLargeError(f"content indirection URL is {len(url)} characters")
    if not url.isascii() or any(c.isspace() or ord(c) < 0x21 for c in url):
        raise MIMEError("content indirection URL contains spaces or non-ASCII characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise MIMEError(f"content indirection URL {url[:80]!r} does not parse: {exc}") from exc
    if parts.scheme.lower() != "https":
        raise MIMEError(
            f"content indirection URL {url[:80]!r} is not https (draft §4.2 requires https)"
        )
    if not parts.hostname:
        raise MIMEError(f"content indirection URL {url[:80]!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise MIMEError("content indirection URL must not carry user information")
    if port == 0:
        raise MIMEError(f"content indirection URL {url[:80]!r} has port 0")
    return parts


@dataclass(frozen=True)
class ExternalBody:
    """A reference to content at an https URL (RFC 4483): what, where, until when, how big."""

    url: str
    content_type: str = CERTIFICATE_TYPE
    content_id: str = ""
    expiration: datetime | None = None
    size: int | None = None

    def __post_init__(self) -> None:
        _check_url(self.url)
        if self.content_id and not _CONTENT_ID.fullmatch(self.content_id):
            raise MIMEError(f"Content-ID {self.content_id[:80]!r} is not <id@domain>")
        if self.size is not None and self.size < 0:
            raise MIMEError("size must not be negative")
        if self.expiration is not None and self.expiration.tzinfo is None:
            raise MIMEError("expiration must be timezone-aware")

    @property
    def host(self) -> str:
        """The host the URL names (lower-case), e.g. for the draft §4.3 name check."""
        return (urlsplit(self.url).hostname or "").lower()

    def expired(self, now: datetime) -> bool:
        """Whether the reference is past its ``expiration`` at ``now`` (RFC 2046 §5.2.3)."""
        return self.expiration is not None and now >= self.expiration


def build_external_body(ref: ExternalBody, *, domain: str = "sipcert.invalid") -> MimePart:
    """The ``message/external-body`` entity for ``ref`` (a new Content-ID if it has none)."""
    params = {"access-type": "URL", "URL": ref.url}
    if ref.expiration is not None:
        params["expiration"] = format_datetime(ref.expiration.astimezone(UTC), usegmt=True)
    if ref.size is not None:
        params["size"] = str(ref.size)
    content_id = ref.content_id or f"<{secrets.token_hex(12)}@{domain}>"
    inner = f"Content-Type: {ref.content_type}\r\nContent-ID: {content_id}\r\n\r\n"
    return MimePart(format_content_type(EXTERNAL_BODY, params), inner.encode("ascii"))


def certificate_reference(
    url: str,
    *,
    content_id: str = "",
    expiration: datetime | None = None,
    size: int | None = None,
    domain: str = "sipcert.invalid",
) -> MimePart:
    """The draft §4.2 body: a URL reference to an ``application/pkix-cert``."""
    ref = ExternalBody(url, CERTIFICATE_TYPE, content_id, expiration, size)
    return build_external_body(ref, domain=domain)


def parse_external_body(
    part: MimePart,
    *,
    accept: frozenset[str] = frozenset({CERTIFICATE_TYPE}),
    max_size: int = MAX_REFERENCED_SIZE,
) -> ExternalBody:
    """Read a content-indirection entity strictly (RFC 4483 §4, RFC 2017, RFC 2046 §5.2.3).

    Raises :class:`MIMEError` for another media type, access-type other than URL, a URL
    that is not https, a referenced type outside ``accept`` or a missing Content-ID, and
    :class:`InputTooLargeError` for an announced ``size`` over ``max_size`` or an oversized
    entity.
    """
    if part.media_type != EXTERNAL_BODY:
        raise MIMEError(f"expected {EXTERNAL_BODY}, got {part.media_type}")
    params = part.params
    access = params.get("access-type")
    if access is None or access.lower() != "url":
        raise MIMEError(f"access-type {access!r} is not URL (RFC 4483 §4)")
    url = params.get("url")
    if url is None:
        raise MIMEError("message/external-body with access-type URL lacks the URL parameter")
    size: int | None = None
    if "size" in params:
        if not params["size"].isdigit() or not params["size"].isascii():
            raise MIMEError(f"size {params['size'][:20]!r} is not a number of octets")
        size = int(params["size"])
        if size > max_size:
            raise InputTooLargeError(f"referenced content of {size} octets (limit {max_size})")
    expiration: datetime | None = None
    if "expiration" in params:
        try:
            expiration = parsedate_to_datetime(params["expiration"])
        except (TypeError, ValueError, IndexError) as exc:
            raise MIMEError(f"expiration {params['expiration'][:40]!r} is not a date") from exc
        if expiration.tzinfo is None:
            raise MIMEError(f"expiration {params['expiration'][:40]!r} has no time zone")
    if len(part.body) > MAX_BODY:
        raise InputTooLargeError(f"external-body entity is {len(part.body)} octets")
    head = part.body.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    if not _HAS_CONTENT_TYPE.search(head):
        raise MIMEError("the encapsulated headers do not name a Content-Type (RFC 4483 §4)")
    inner = parse_mime_part(part.body)
    if inner.media_type not in accept:
        wanted = ", ".join(sorted(accept))
        raise MIMEError(f"the reference is to {inner.media_type}, expected {wanted}")
    content_id = inner.header("Content-ID")
    if content_id is None:
        raise MIMEError("the encapsulated headers lack a Content-ID (RFC 2046 §5.2.3)")
    return ExternalBody(url, inner.content_type, content_id.strip(), expiration, size)
