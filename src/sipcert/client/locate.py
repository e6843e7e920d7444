"""Locating a domain's certificate Store with DNS (draft §4.1, §4.5; RFC 2782).

The Caller only has an AOR. Its host gives the SRV name ``_certificates._tcp.<domain>``; the
targets are tried in RFC 2782 priority/weight order, and when the domain publishes no such
record the well-known host ``certificates.<domain>`` on the HTTPS port is used instead.
Every decision is recorded as a line of narration so ``sipcert locate`` can show its work.

A failure of DNS itself (timeout, SERVFAIL, no usable resolver) is a
:class:`~sipcert.errors.LocationError`, never silently taken as "no SRV record": falling back
to ``certificates.<domain>`` because an attacker dropped a DNS answer would be a downgrade.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import quote, urlsplit

from sipcert.errors import ConfigError, InputError, LocationError
from sipcert.proto.aor import AOR

# dnspython (~0.15 s to import) and anyio are imported where a query is made: ``sipcert
# locate --store`` and a fetch from a given Store address make none (issue 13: start-up).
if TYPE_CHECKING:
    import dns.asyncresolver
    import dns.rrset

__all__ = [
    "DEFAULT_HTTPS_PORT",
    "SRV_SERVICE",
    "Attribute",
    "DNSResolver",
    "DeferredResolver",
    "Location",
    "Locator",
    "Target",
    "location_from_url",
    "make_resolver",
    "parse_dns_server",
    "query_string",
    "search_path",
]

#: The SRV service and protocol labels of draft §4.1.
SRV_SERVICE = "_certificates._tcp"
#: Port of the fallback host when there is no SRV record (draft §4.5: "the default port for
#: HTTPS").
DEFAULT_HTTPS_PORT = 443
#: Query attribute naming the AOR: ``email`` (draft §4.1) or ``sip`` (draft §8).
Attribute = Literal["email", "sip"]
#: The one resource of a Store (draft §4.1, §4.5).
SEARCH_CGI = "/search-cgi"

Narrate = Callable[[str], None]


class _Answer(Protocol):
    @property
    def rrset(self) -> dns.rrset.RRset | None: ...


class DNSResolver(Protocol):
    """The part of :class:`dns.asyncresolver.Resolver` we use (tests pass a fake)."""

    async def resolve(self, qname: str, rdtype: str, *, search: bool | None = None) -> Any: ...


@dataclass(frozen=True)
class Target:
    """One place the Store may be reached: a host name (or address) and a port."""

    host: str
    port: int
    priority: int = 0
    weight: int = 0

    def url(self, aor: AOR, attribute: Attribute = "email") -> str:
        """The draft's URL form for this target (draft §4.1)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if self.port == DEFAULT_HTTPS_PORT else f":{self.port}"
        return f"https://{host}{port}{search_path(aor, attribute)}"


@dataclass(frozen=True)
class Location:
    """Where the Store for ``aor`` is: targets in the order to try, and how we got there.

    ``from_srv`` is False when the ``certificates.<domain>`` fallback was used.
    """

    aor: AOR
    targets: tuple[Target, ...]
    from_srv: bool
    attribute: Attribute = "email"
    steps: tuple[str, ...] = field(default=())

    @property
    def domain(self) -> str:
        """The domain the Store must prove in TLS: the AOR's, never a target's (draft §4.3)."""
        return self.aor.host

    @property
    def url(self) -> str:
        """The draft-form URL of the first target (draft §4.1)."""
        return self.targets[0].url(self.aor, self.attribute)


def query_string(aor: AOR, attribute: Attribute = "email", **extra: str) -> str:
    """``email=bob%40example.com`` (draft §4.1), every value fully percent-encoded."""
    if attribute not in ("email", "sip"):
        raise ConfigError(f"query attribute must be 'email' or 'sip', not {attribute!r}")
    pairs = [(attribute, str(aor)), *extra.items()]
    return "&".join(f"{name}={quote(value, safe='')}" for name, value in pairs)


def search_path(aor: AOR, attribute: Attribute = "email", **extra: str) -> str:
    """``/search-cgi?email=...`` -- the request target (draft §4.1, §4.5)."""
    if not extra:
        return _search_path(aor, attribute)
    return f"/search-cgi?{query_string(aor, attribute, **extra)}"


@functools.lru_cache(maxsize=4096)
def _search_path(aor: AOR, attribute: Attribute) -> str:
    """:func:`search_path` without extra parameters, remembered: a fetch spells it three
    times (the request, the narration, the result's URL), the same way each time."""
    return f"/search-cgi?{query_string(aor, attribute)}"


def parse_dns_server(text: str) -> tuple[str, int]:
    """``HOST[:PORT]`` (IPv6 as ``[addr]:port``) to an address and port; default port 53."""
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ConfigError(f"--dns {text!r}: missing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ConfigError(f"--dns {text!r}: expected ':PORT' after ']'")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    try:
        ipaddress.ip_address(host)
    except ValueError as exc:
        raise ConfigError(f"--dns needs an IP address, not {host!r}") from exc
    if not port_text:
        return host, 53
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"--dns {text!r}: port must be 1-65535")
    return host, int(port_text)


def parse_store_address(text: str) -> Target:
    """``HOST[:PORT]`` of a Store given by the user instead of DNS location; port 443 default.

    The TLS name check is unaffected: it is always against the AOR's domain (draft §4.3).
    """
    host, sep, port_text = text.rpartition(":") if not text.endswith("]") else (text, "", "")
    if not sep:
        host, port_text = text, str(DEFAULT_HTTPS_PORT)
    host = host.removeprefix("[").removesuffix("]")
    if not host or any(c.isspace() or c in "/?#@" for c in host):
        raise ConfigError(f"--store {text!r}: expected HOST[:PORT]")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"--store {text!r}: port must be 1-65535")
    return Target(host.lower(), int(port_text))


def location_from_url(aor: AOR, url: str) -> Location:
    """The :class:`Location` of a Store URL learnt in signaling instead of DNS (draft §4.2).

    Location with SIP hands the Caller a URL (an RFC 4483 reference in an OPTIONS answer);
    retrieval from it must follow the same rules as HTTP location (draft §4.3, §4.5). So the
    URL only contributes *where* to connect -- one :class:`Target` from its host and port --
    while *whom* TLS must prove stays the AOR's domain, never the URL's host. The request
    itself is rebuilt from ``aor``, so the URL must say exactly what that request would:
    ``https``, no user information or fragment, the path ``/search-cgi`` and a query that
    names ``aor`` with ``email`` or ``sip`` and nothing else. A URL naming another AOR or
    domain is refused rather than followed: a reference handed out for bob@example.com must
    not make us fetch, and cache as Bob's, what the Store says about someone else.

    Raises :class:`LocationError` naming the problem.
    """
    shown = url[:120]
    if len(url) > 2048 or not url.isascii() or any(c.isspace() or ord(c) < 0x21 for c in url):
        raise LocationError(f"Store URL {shown!r} is too long or contains invalid characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise LocationError(f"Store URL {shown!r} does not parse: {exc}") from exc
    if parts.scheme.lower() != "https":
        raise LocationError(f"Store URL {shown!r} is not https (draft §4.3: HTTPS is a MUST)")
    host = (parts.hostname or "").lower()
    if not host:
        raise LocationError(f"Store URL {shown!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise LocationError(f"Store URL {shown!r} carries user information")
    if parts.fragment:
        raise LocationError(f"Store URL {shown!r} has a fragment")
    if port == 0:
        raise LocationError(f"Store URL {shown!r} has port 0")
    if parts.path != SEARCH_CGI:
        raise LocationError(
            f"Store URL {shown!r}: the path must be {SEARCH_CGI} (draft §4.1), "
            f"not {parts.path[:40] or '/'!r}"
        )
    from sipcert.proto.store import parse_query  # cryptography: only for a URL from SIP

    try:
        query = parse_query(parts.query)
    except InputError as exc:
        raise LocationError(f"Store URL {shown!r}: {exc}") from exc
    if query.cert_hash is not None or query.attribute not in ("email", "sip"):
        raise LocationError(
            f"Store URL {shown!r} must name the AOR with email= or sip= and nothing else"
        )
    if query.aor != aor:
        raise LocationError(
            f"Store URL {shown!r} names {query.aor}, not {aor}: refusing a certificate "
            "location for another AOR"
        )
    attribute: Attribute = "sip" if query.attribute == "sip" else "email"
    target = Target(host, port if port is not None else DEFAULT_HTTPS_PORT)
    steps = (
        f"AOR {aor}: Store URL given in signaling (draft §4.2): {url}",
        f"target {target.host} port {target.port}; its TLS certificate must name "
        f"{aor.host}, not the URL's host (draft §4.3)",
    )
    return Location(aor, (target,), False, attribute, steps)


def make_resolver(server: str | None = None, *, timeout: float = 5.0) -> dns.asyncresolver.Resolver:
    """A dnspython async resolver: the system's, or one DNS server ``HOST[:PORT]``."""
    import dns.asyncresolver
    import dns.exception

    if server is None:
        try:
            resolver = dns.asyncresolver.Resolver()
        except dns.exception.DNSException as exc:
            raise LocationError(f"no usable system DNS configuration: {exc}") from exc
    else:
        host, port = parse_dns_server(server)
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [host]
        resolver.port = port
    resolver.lifetime = timeout
    resolver.timeout = timeout
    return resolver


class DeferredResolver:
    """:func:`make_resolver`'s resolver, made (and dnspython imported) on the first query.

    A UA given the Store's address (``--store``) never queries DNS for an IP literal, so it
    does not pay for dnspython or for reading the system's DNS configuration. ``server`` is
    checked at once (a bad ``--dns`` is a :class:`ConfigError` before anything runs); a
    system configuration that cannot be used is the first query's :class:`LocationError`.
    """

    def __init__(self, server: str | None = None, *, timeout: float = 5.0) -> None:
        if server is not None:
            parse_dns_server(server)
        self.server = server
        self.timeout = timeout
        self._resolver: dns.asyncresolver.Resolver | None = None

    @property
    def resolver(self) -> dns.asyncresolver.Resolver:
        """The dnspython resolver (made now if it was not yet)."""
        if self._resolver is None:
            self._resolver = make_resolver(self.server, timeout=self.timeout)
        return self._resolver

    async def resolve(self, qname: str, rdtype: str, *, search: bool | None = None) -> Any:
        return await self.resolver.resolve(qname, rdtype, search=search)


def _dns_failure(name: str, rdtype: str, exc: Exception) -> LocationError:
    import dns.resolver

    if isinstance(exc, dns.resolver.LifetimeTimeout):
        what = "timed out"
    elif isinstance(exc, dns.resolver.NoNameservers):
        what = "failed (SERVFAIL or refused by every server)"
    else:
        what = f"failed ({str(exc).rstrip('.') or 'no usable answer'})"
    return LocationError(f"DNS {rdtype} lookup of {name} {what}")


async def system_addresses(host: str) -> list[str]:
    """The operating system's addresses of ``host`` (``/etc/hosts`` included), A and AAAA.

    A name that does not exist gives ``[]`` as with our own resolver, so a misspelled domain
    is a location failure (exit 3) with either; a resolver failure is a
    :class:`LocationError`.
    """
    import anyio

    try:
        infos = await anyio.getaddrinfo(host.encode("ascii"), None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno in _NO_SUCH_NAME:
            return []
        raise LocationError(
            f"the system resolver could not look up {host}: {exc.strerror or 'failed'}"
        ) from exc
    except (OSError, UnicodeError) as exc:
        raise LocationError(f"the system resolver could not look up {host!r}") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


# getaddrinfo's "no such name" and "no address for that name" (glibc EAI_NODATA).
_NO_SUCH_NAME = frozenset(
    code for code in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None)) if code is not None
)


class Locator:
    """Finds Store targets (draft §4.1, §4.5) and the addresses of a target.

    ``fallback_port`` is the port of ``certificates.<domain>`` when there is no SRV record;
    it is 443 as the draft requires and only tests change it (they cannot bind 443).
    ``system_addresses`` resolves target names with the operating system (``/etc/hosts``
    included) instead of ``resolver``; it is the default when no DNS server was given.
    """

    def __init__(
        self,
        resolver: DNSResolver,
        *,
        fallback_port: int = DEFAULT_HTTPS_PORT,
        system_addresses: bool = False,
        store: Target | None = None,
    ) -> None:
        if not 0 < fallback_port < 65536:
            raise ConfigError(f"fallback port {fallback_port} is not 1-65535")
        self.resolver = resolver
        self.fallback_port = fallback_port
        self.system_addresses = system_addresses
        self.store = store

    async def locate(
        self, aor: AOR, *, attribute: Attribute = "email", narrate: Narrate | None = None
    ) -> Location:
        """The targets of ``aor``'s Store, in the order to try them.

        Raises :class:`LocationError` on a DNS failure or when the domain says the service
        is not available (an SRV target of ``.``, RFC 2782).
        """
        steps: list[str] = []

        def say(line: str) -> None:
            steps.append(line)
            if narrate is not None:
                narrate(line)

        qname = f"{SRV_SERVICE}.{aor.host}."
        say(f"AOR {aor}: domain {aor.host} (draft §4.5)")
        if self.store is not None:
            say(f"Store address given: {self.store.host} port {self.store.port} (no DNS query)")
            say(f"its TLS certificate must still name {aor.host} (draft §4.3)")
            say(f"URL {self.store.url(aor, attribute)}")
            return Location(aor, (self.store,), False, attribute, tuple(steps))
        import dns.exception
        import dns.name
        import dns.resolver
        from dns.rdtypes.IN.SRV import SRV

        say(f"DNS SRV query {qname.rstrip('.')}")
        try:
            answer = await self.resolver.resolve(qname, "SRV", search=False)
            rrset: dns.rrset.RRset | None = answer.rrset
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer) as exc:
            reason = "no such name" if isinstance(exc, dns.resolver.NXDOMAIN) else "no SRV record"
            rrset = None
            say(f"  {reason}")
        except dns.exception.DNSException as exc:
            error = _dns_failure(qname.rstrip("."), "SRV", exc)
            say(f"  {error}")
            raise error from exc
        if rrset is None or len(rrset) == 0:
            target = Target(f"certificates.{aor.host}", self.fallback_port)
            say(f"no SRV record: fall back to {target.host} port {target.port} (draft §4.1)")
            say(f"URL {target.url(aor, attribute)}")
            return Location(aor, (target,), False, attribute, tuple(steps))
        targets: list[Target] = []
        for record in rrset.processing_order():
            if not isinstance(record, SRV):
                continue
            if record.target == dns.name.root:
                say(f"  priority {record.priority} weight {record.weight}: target '.' (skipped)")
                continue
            host = record.target.to_text(omit_final_dot=True).lower()
            target = Target(host, int(record.port), int(record.priority), int(record.weight))
            targets.append(target)
            say(
                f"  priority {target.priority} weight {target.weight}: "
                f"{target.host} port {target.port}"
            )
        if not targets:
            error = LocationError(
                f"{aor.host} says it offers no certificate Store "
                f"(SRV target '.' for {qname.rstrip('.')}, RFC 2782)"
            )
            say(str(error))
            raise error
        say("targets are tried in this order (RFC 2782 priority/weight), next on failure")
        say(f"URL {targets[0].url(aor, attribute)}")
        return Location(aor, tuple(targets), True, attribute, tuple(steps))

    async def addresses(self, host: str) -> list[str]:
        """IP addresses of a target host (A then AAAA), from our resolver or the OS's.

        An IP literal is returned as is. A name with neither record gives ``[]``; a DNS
        failure raises :class:`LocationError` unless the other address family resolved.
        """
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            return [host]
        if self.system_addresses:
            return await system_addresses(host)
        import dns.exception
        import dns.resolver

        found: list[str] = []
        failed: tuple[LocationError, Exception] | None = None
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self.resolver.resolve(f"{host}.", rdtype, search=False)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except dns.exception.DNSException as exc:
                # A refused or failed AAAA (or A) query must not discard the other family's
                # answer: only when neither gave an address is it this target's failure.
                failed = failed or (_dns_failure(host, rdtype, exc), exc)
                continue
            rrset: dns.rrset.RRset | None = answer.rrset
            if rrset is not None:
                found.extend(record.address for record in rrset)
        if not found and failed is not None:
            raise failed[0] from failed[1]
        return found
