"""HTTP exchanges with a Store: retrieval (draft §4.3, §4.5), enrollment PUT and revocation
DELETE with Digest (draft §5, §5.1), and the parsing of what comes back.

The functions here take an ``httpx.AsyncClient`` whose transport is the strict one of
:mod:`sipcert.client.tls`, and a :class:`~sipcert.client.locate.Location` whose route has
been installed; they never decide trust themselves. Answers are read with a size limit and
every unexpected status becomes a :class:`~sipcert.errors.StoreResponseError` (or the
matching 401/403/404 error), with the Store's reason cleaned up for a terminal.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cryptography import x509

from sipcert.client.http11 import HTTP11Connection
from sipcert.client.locate import Location, Target, search_path
from sipcert.client.tls import TARGET_INFO, StrictTransport
from sipcert.errors import (
    AuthenticationError,
    ForbiddenError,
    InputError,
    InputTooLargeError,
    MIMEError,
    NotFoundError,
    RateLimitedError,
    StoreResponseError,
    StoreUnavailableError,
)
from sipcert.proto.aor import AOR
from sipcert.proto.certs import (
    Discarded,
    RetrievalChecks,
    sha256_fingerprint,
    validate_retrieved,
)
from sipcert.proto.mime import MimeLimits, parse_content_type, parse_multipart
from sipcert.proto.store import (
    PKIX_CERT,
    format_description,
    parse_description,
    parse_enrolled_on,
)

# httpx is a type here: PUT and DELETE take the caller's client, the GET takes the strict
# transport itself, so retrieval runs without importing httpx (issue 13, start-up time).
# DigestAuth, an httpx auth flow, lives in sipcert.client.viahttpx and is found here too.
if TYPE_CHECKING:
    import httpx

    from sipcert.client.viahttpx import DigestAuth

__all__ = [
    "MAX_RESPONSE_SIZE",
    "PKIX_CERT",
    "CertificateNote",
    "CertificatePart",
    "DigestAuth",
    "FetchResult",
    "Retrieved",
    "delete_certificates",
    "get_certificates",
    "parse_certificate_bodies",
    "parse_certificate_parts",
    "put_certificate",
    "request_url",
]

#: Largest Store answer read (a few dozen certificates of a few KiB each).
MAX_RESPONSE_SIZE = 1 << 20
#: Most certificates taken from one multipart answer.
MAX_CERTIFICATES = 64
_MAX_AGE_RE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d{1,10})\"?\s*(?:,|$)", re.IGNORECASE)
_REASON_CODE_RE = re.compile(r"([a-z0-9]+(?:-[a-z0-9]+)*): ")


def request_url(location: Location, **extra: str) -> str:
    """``https://<AOR domain>/search-cgi?...``: the host is the AOR's domain on purpose.

    Pool key, SNI and verification are then all the AOR domain; the routed backend of
    :mod:`sipcert.client.tls` connects to the located target (draft §4.3).
    """
    return f"https://{location.domain}{search_path(location.aor, location.attribute, **extra)}"


@dataclass(frozen=True)
class CertificatePart:
    """One certificate body of a GET answer and what the Store says about it for a person:
    the device label (``Content-Description``) and when it was enrolled (RFC 2183
    ``creation-date``). Both are display text from the Store, ``None`` when absent or
    malformed, and never used to decide anything."""

    der: bytes
    label: str | None = None
    enrolled: datetime | None = None


def _label(value: str | None) -> str | None:
    try:
        return parse_description(value)
    except InputError:
        return None  # a bad label hides nothing: the certificate is still checked and used


def _part(der: bytes, headers: Mapping[str, str] | None) -> CertificatePart:
    if headers is None:
        return CertificatePart(der)
    lowered = {name.lower(): value for name, value in headers.items()}
    return CertificatePart(
        der,
        _label(lowered.get("content-description")),
        parse_enrolled_on(lowered.get("content-disposition")),
    )


def parse_certificate_bodies(content_type: str | None, body: bytes) -> list[bytes]:
    """The certificate bodies of a 200 answer (draft §4.5; RFC 2585 §4.1).

    ``application/pkix-cert`` is one DER certificate; ``multipart/mixed`` holds one
    ``application/pkix-cert`` part per certificate (several devices, draft §4.4). Anything
    else is a :class:`StoreResponseError`. The bytes are not decoded here: undecodable ones
    are discarded with a reason by :func:`~sipcert.proto.certs.validate_retrieved`.
    """
    return [part.der for part in parse_certificate_parts(content_type, body)]


def parse_certificate_parts(
    content_type: str | None, body: bytes, headers: Mapping[str, str] | None = None
) -> list[CertificatePart]:
    """:func:`parse_certificate_bodies` with each body's label and enrolled-on date.

    ``headers`` are the answer's own header fields, which describe a single
    ``application/pkix-cert`` answer; a multipart answer describes each part in the part.
    """
    if content_type is None:
        raise StoreResponseError(200, "the answer has no Content-Type")
    try:
        media_type, _ = parse_content_type(content_type)
    except MIMEError as exc:
        raise StoreResponseError(200, f"unreadable Content-Type: {exc}") from exc
    if media_type == PKIX_CERT:
        return [_part(body, headers)]
    if media_type != "multipart/mixed":
        raise StoreResponseError(
            200, f"the answer is {media_type}, not {PKIX_CERT} or multipart/mixed (draft §4.5)"
        )
    limits = MimeLimits(max_size=MAX_RESPONSE_SIZE, max_parts=MAX_CERTIFICATES, max_depth=1)
    try:
        multipart = parse_multipart(content_type, body, limits=limits)
    except (MIMEError, InputTooLargeError) as exc:
        raise StoreResponseError(200, f"malformed multipart/mixed answer: {exc}") from exc
    parts: list[CertificatePart] = []
    for number, part in enumerate(multipart.parts, start=1):
        if part.media_type != PKIX_CERT:
            raise StoreResponseError(
                200, f"part {number} of the answer is {part.media_type}, not {PKIX_CERT}"
            )
        parts.append(_part(part.body, dict(part.headers)))
    return parts


def _clean_reason(body: bytes, fallback: str) -> str:
    """The first line of an error body, printable ASCII only and short (it reaches a terminal)."""
    text = body.decode("utf-8", "replace").strip().splitlines()
    line = text[0] if text else ""
    line = "".join(c if c.isprintable() else "?" for c in line)[:200]
    return line or fallback


async def _read_limited(response: httpx.Response, limit: int) -> bytes:
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise InputTooLargeError(
            f"the Store's answer is {declared} bytes, over the limit of {limit}"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise InputTooLargeError(f"the Store's answer is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _target_of(stream: object) -> Target | None:
    """The target a verified stream reached (``None`` for a mock transport's)."""
    get_extra_info = getattr(stream, "get_extra_info", None)
    target = get_extra_info(TARGET_INFO) if get_extra_info is not None else None
    return target if isinstance(target, Target) else None


def _max_age(headers: Mapping[str, str]) -> int | None:
    match = _MAX_AGE_RE.search(headers.get("cache-control", ""))
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class Retrieved:
    """A GET answer reduced to what matters: status, certificate bodies, where and how long.

    ``parts`` repeats the bodies with the Store's label and enrolled-on date of each.
    """

    status: int
    bodies: tuple[bytes, ...]
    target: Target | None
    max_age: int | None
    parts: tuple[CertificatePart, ...] = ()
    #: The connection that carried the answer (what the Store said on it before is
    #: remembered there: :meth:`HTTP11Connection.remember`); ``None`` through httpx.
    connection: HTTP11Connection | None = field(default=None, compare=False)


@dataclass(frozen=True)
class CertificateNote:
    """What the Store said about one kept certificate, for a person: its device label and
    when it was enrolled (``None`` when the Store did not say). Display only (draft §5)."""

    sha256: str
    label: str | None
    enrolled: datetime | None


@dataclass(frozen=True)
class FetchResult:
    """The certificates of an AOR after the draft §4.5 checks.

    ``kept`` are all usable (draft §4.4: use every one); ``discarded`` say why the others were
    dropped. ``url`` is the draft-form URL of the target that answered.
    """

    aor: AOR
    url: str
    kept: tuple[x509.Certificate, ...] = ()
    discarded: tuple[Discarded, ...] = ()
    status: int = 200
    max_age: int | None = None
    from_cache: bool = False
    target: Target | None = field(default=None, compare=False)
    #: The Store's label and enrolled-on date of kept certificates (see :meth:`note`).
    notes: tuple[CertificateNote, ...] = field(default=(), compare=False)

    def note(self, certificate: x509.Certificate) -> CertificateNote:
        """The Store's label and enrolled-on date of ``certificate`` (``None`` fields when
        it said nothing); for display only."""
        fingerprint = sha256_fingerprint(certificate)
        return next(
            (n for n in self.notes if n.sha256 == fingerprint),
            CertificateNote(fingerprint, None, None),
        )

    @classmethod
    def from_retrieved(
        cls,
        location: Location,
        retrieved: Retrieved,
        now: datetime,
        *,
        checks: RetrievalChecks | None = None,
    ) -> FetchResult:
        """Apply :func:`~sipcert.proto.certs.validate_retrieved` to a GET answer."""
        result = validate_retrieved(retrieved.bodies, location.aor, now, checks=checks)
        target = retrieved.target or location.targets[0]
        kept = {sha256_fingerprint(c) for c in result.kept}
        notes = []
        for part in retrieved.parts:
            fingerprint = hashlib.sha256(part.der).hexdigest()
            if fingerprint in kept and (part.label is not None or part.enrolled is not None):
                notes.append(CertificateNote(fingerprint, part.label, part.enrolled))
        return cls(
            aor=location.aor,
            url=target.url(location.aor, location.attribute),
            kept=tuple(result.kept),
            discarded=tuple(result.discarded),
            status=retrieved.status,
            max_age=retrieved.max_age,
            target=target,
            notes=tuple(notes),
        )


async def get_certificates(
    client: httpx.AsyncClient | StrictTransport,
    location: Location,
    *,
    max_size: int = MAX_RESPONSE_SIZE,
    timeout: float | None = None,
) -> Retrieved:
    """GET the AOR's certificates (draft §4.5). 404 is "none" (an empty answer, not an error).

    ``client`` is the UA's :class:`StrictTransport` itself (the lean GET of issue 13, with
    ``timeout`` per step) or any httpx client (a test's mock, a caller's own client).
    """
    if isinstance(client, StrictTransport):
        path = search_path(location.aor, location.attribute)
        answer = await client.get(location.domain, path, max_size=max_size, timeout=timeout)
        encoding = answer.headers.get("content-encoding", "identity").strip().lower()
        if encoding != "identity":  # none was asked for: no Accept-Encoding is sent
            raise StoreResponseError(
                answer.status, f"the answer has a Content-Encoding not asked for: {encoding}"
            )
        connection = answer.connection
        return _retrieved(
            answer.status, answer.reason, answer.headers, answer.body, connection.stream, connection
        )
    async with client.stream("GET", request_url(location)) as response:
        stream = response.extensions.get("network_stream")
        if response.status_code == 404:
            await response.aclose()
            return Retrieved(404, (), _target_of(stream), _max_age(response.headers))
        body = await _read_limited(response, max_size)
        return _retrieved(
            response.status_code, response.reason_phrase, dict(response.headers), body, stream
        )


def _retrieved(
    status: int,
    reason: str,
    headers: Mapping[str, str],
    body: bytes,
    stream: object,
    connection: HTTP11Connection | None = None,
) -> Retrieved:
    """A GET answer's status, headers (lower-case names) and body as a :class:`Retrieved`."""
    if status == 404:
        return Retrieved(404, (), _target_of(stream), _max_age(headers), connection=connection)
    if status != 200:
        raise store_error(status, _clean_reason(body, reason))
    parts = parse_certificate_parts(headers.get("content-type"), body, headers)
    return Retrieved(
        200,
        tuple(part.der for part in parts),
        _target_of(stream),
        _max_age(headers),
        tuple(parts),
        connection=connection,
    )


def _refusal(response: httpx.Response, what: str) -> Exception:
    """The error for an unexpected answer to the PUT or DELETE of ``what``."""
    status = response.status_code
    reason = _clean_reason(response.content[:4096], response.reason_phrase)
    if status == 429:
        retry_after = response.headers.get("Retry-After")
        wait = int(retry_after) if retry_after and retry_after.isdigit() else 60
        return RateLimitedError(
            f"the Store is limiting attempts for {what}; retry in {wait} s", retry_after=wait
        )
    if status == 401:
        return AuthenticationError(f"the Store refused the Digest credentials for {what}")
    if status == 403:
        match = _REASON_CODE_RE.match(reason)
        return ForbiddenError(
            f"the Store refused {what}: {reason}", reason=match.group(1) if match else "forbidden"
        )
    if status == 404:
        return NotFoundError(f"the Store has nothing to remove for {what}")
    return store_error(status, reason)


def store_error(status: int, reason: str) -> StoreResponseError:
    """The error for an unexpected status; 503 (database down) has its own exit code, 12."""
    if status == 503:
        return StoreUnavailableError(status, reason)
    return StoreResponseError(status, reason)


async def put_certificate(
    client: httpx.AsyncClient,
    location: Location,
    der: bytes,
    auth: httpx.Auth,
    *,
    label: str | None = None,
) -> int:
    """Enroll ``der`` (draft §5, §5.1): 201 new, 200 already stored; others raise.

    ``label`` names the device for the Subscriber's revocation page; it travels as the
    ``Content-Description`` of the body (RFC 2045 §8), RFC 2047-encoded when not ASCII.
    """
    headers = {"Content-Type": PKIX_CERT}
    if label is not None:
        headers["Content-Description"] = format_description(label)
    response = await client.put(
        request_url(location),
        content=der,
        headers=headers,
        auth=auth,
    )
    if response.status_code in (200, 201):
        return response.status_code
    raise _refusal(response, f"the enrollment of {location.aor}")


async def delete_certificates(
    client: httpx.AsyncClient, location: Location, auth: httpx.Auth, cert_hash: str | None = None
) -> None:
    """Revoke one certificate (RFC 4387 ``certHash``) or, without it, all of the AOR's
    (draft §5). 204 is success; 404 raises :class:`NotFoundError`."""
    extra = {"certHash": cert_hash} if cert_hash is not None else {}
    response = await client.delete(request_url(location, **extra), auth=auth)
    if response.status_code in (200, 204):
        return
    what = f"certificate {cert_hash} of {location.aor}" if cert_hash else str(location.aor)
    raise _refusal(response, what)


def __getattr__(name: str) -> Any:
    """``DigestAuth`` from :mod:`sipcert.client.viahttpx`, imported (with httpx) on first use."""
    if name == "DigestAuth":
        from sipcert.client.viahttpx import DigestAuth

        return DigestAuth
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
