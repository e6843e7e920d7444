"""Location with SIP (draft §4.2): ask the callee's proxy with OPTIONS where the certificates are.

Draft §4.2 offers an alternative to the DNS location of §4.1: "The Caller would send an
OPTIONS message to the Subscriber proxy. The reply to this would contain a content
indirection body [RFC 4483] or message/external type as defined in RFC 2017 that references
a MIME type of application/pkix-cert that could be retrieved using an https URL." Each
domain can then put its Store wherever it likes, with no well-known name.

What the answer says is only *where* to look. Retrieval keeps every rule of HTTP location
(draft §4.3, §4.5): the TLS certificate must name the AOR's domain -- not the URL's host --
before any HTTP byte, and every certificate is validated against the AOR. So an attacker who
forges the OPTIONS answer can at worst point us at a server that cannot prove the domain,
and the fetch fails. :func:`locate_by_sip` does the SIP half strictly
(:func:`~sipcert.proto.indirection.parse_external_body`: https only, the referenced type
``application/pkix-cert``, a Content-ID, bounded sizes; expired references dropped; a URL
naming another AOR dropped); :func:`fetch_by_sip` then retrieves with
:meth:`sipcert.client.AsyncUA.fetch_url`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Protocol

from cryptography import x509

from sipcert.client.fetch import FetchResult
from sipcert.client.locate import location_from_url
from sipcert.client.ua import AsyncUA
from sipcert.errors import InputError, LocationError
from sipcert.proto.aor import AOR, parse_aor
from sipcert.proto.certs import sha256_fingerprint
from sipcert.proto.indirection import EXTERNAL_BODY, ExternalBody, parse_external_body
from sipcert.proto.mime import MimeLimits, MimePart, parse_multipart
from sipcert.proto.sip import Response, body_part

__all__ = ["OptionsSender", "SipLocation", "fetch_by_sip", "locate_by_sip", "references_in"]

#: Most references read from one answer (a few devices or Stores, draft §4.4).
MAX_REFERENCES = 16
_MULTIPART_LIMITS = MimeLimits(max_size=64 * 1024, max_parts=MAX_REFERENCES, max_depth=1)


class OptionsSender(Protocol):
    """What :func:`locate_by_sip` needs of a UA (:class:`sipcert.sip.ua.UserAgent` has it)."""

    async def options(self, to: str) -> Response:
        """Send OPTIONS to ``to`` through the proxy and return the final response."""


@dataclass(frozen=True)
class SipLocation:
    """What the OPTIONS answer said about where ``aor``'s certificates are.

    ``references`` are the usable ones (in the order of the answer, duplicates removed);
    ``problems`` say why the answer, or one of its bodies, gave nothing usable.
    """

    aor: AOR
    status: int
    reason: str
    references: tuple[ExternalBody, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def found(self) -> bool:
        return bool(self.references)

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(ref.url for ref in self.references)

    def explain(self) -> str:
        """One line for a user: the URLs, or why there is no certificate location."""
        if self.found:
            return f"certificates of {self.aor} at " + ", ".join(self.urls)
        why = "; ".join(self.problems) or "no reference"
        return f"no certificate location for {self.aor} by SIP (draft §4.2): {why}"


def references_in(
    part: MimePart | None, aor: AOR, now: datetime
) -> tuple[list[ExternalBody], list[str]]:
    """The usable certificate references in an OPTIONS answer's body, and the problems.

    The body is one ``message/external-body`` or a ``multipart/mixed`` of them (one per
    device or Store, draft §4.4). A reference is usable when RFC 4483 parsing accepts it
    (https, ``application/pkix-cert``, Content-ID), it has not expired (RFC 2046
    §5.2.3.1 ``expiration``) and its URL names ``aor`` (see
    :func:`~sipcert.client.locate.location_from_url`).
    """
    if part is None:
        return [], ["the answer has no body (no content indirection, RFC 4483)"]
    entities: list[MimePart]
    if part.media_type == "multipart/mixed":
        try:
            entities = list(
                parse_multipart(part.content_type, part.body, limits=_MULTIPART_LIMITS).parts
            )
        except InputError as exc:
            return [], [f"unreadable multipart/mixed body: {exc}"]
    else:
        entities = [part]
    found: list[ExternalBody] = []
    problems: list[str] = []
    for number, entity in enumerate(entities, start=1):
        where = f"body part {number}: " if len(entities) > 1 else ""
        if entity.media_type != EXTERNAL_BODY:
            problems.append(f"{where}{entity.media_type} is not {EXTERNAL_BODY} (RFC 4483)")
            continue
        try:
            ref = parse_external_body(entity)
            location_from_url(aor, ref.url)
        except (InputError, LocationError) as exc:
            problems.append(f"{where}{exc}")
            continue
        if ref.expired(now):
            assert ref.expiration is not None  # noqa: S101 - expired() implies it
            problems.append(f"{where}the reference to {ref.url} expired at {ref.expiration}")
            continue
        if all(ref.url != seen.url for seen in found):
            found.append(ref)
    return found, problems


async def locate_by_sip(
    ua: OptionsSender, aor: AOR | str, *, now: Callable[[], datetime] | None = None
) -> SipLocation:
    """Send OPTIONS to ``aor`` and read where its certificates are (draft §4.2).

    Never raises for what the far end answered: a 404 (no such user), another failure or a
    200 without a usable reference is a :class:`SipLocation` with ``found`` false and the
    reasons in ``problems``. SIP transport failures raise as :class:`UserAgent` raises them.
    """
    parsed = aor if isinstance(aor, AOR) else parse_aor(aor)
    response = await ua.options(parsed.sip_uri)
    status = f"OPTIONS answered {response.status} {response.reason}".rstrip()
    if not 200 <= response.status < 300:
        why = "no such user" if response.status == 404 else "not a success"
        return SipLocation(parsed, response.status, response.reason, (), (f"{status}: {why}",))
    try:
        part = body_part(response)
    except InputError as exc:
        return SipLocation(parsed, response.status, response.reason, (), (f"{status}: {exc}",))
    clock = now() if now is not None else datetime.now(UTC)
    found, problems = references_in(part, parsed, clock)
    return SipLocation(parsed, response.status, response.reason, tuple(found), tuple(problems))


async def fetch_by_sip(
    sip_ua: OptionsSender,
    client: AsyncUA,
    aor: AOR | str,
    *,
    now: Callable[[], datetime] | None = None,
) -> tuple[SipLocation, FetchResult]:
    """Locate ``aor``'s Store by SIP, then retrieve from it with the strict rules.

    Every usable reference is fetched with :meth:`AsyncUA.fetch_url` and the certificates
    are pooled, duplicates removed (draft §4.4: use every valid certificate); the pooled
    result replaces the per-URL ones in the client's cache. A reference whose server fails
    the TLS name rule, or any other retrieval error, raises: that is what a forged answer
    looks like, and the caller must see it rather than a quietly shorter list. No usable
    reference raises :class:`LocationError` with :meth:`SipLocation.explain`.
    """
    location = await locate_by_sip(sip_ua, aor, now=now)
    if not location.found:
        raise LocationError(location.explain())
    results = [await client.fetch_url(location.aor, url) for url in location.urls]
    seen: set[str] = set()
    kept: list[x509.Certificate] = []
    for result in results:
        for certificate in result.kept:
            fingerprint = sha256_fingerprint(certificate)
            if fingerprint not in seen:
                seen.add(fingerprint)
                kept.append(certificate)
    ages = [r.max_age for r in results if r.max_age is not None]
    merged = replace(
        results[0],
        kept=tuple(kept),
        discarded=tuple(d for r in results for d in r.discarded),
        status=200 if any(r.status == 200 for r in results) else results[0].status,
        max_age=min(ages) if ages else None,
    )
    if len(results) > 1:
        client.cache.put(merged)
    return location, merged
