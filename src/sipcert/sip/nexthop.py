"""Locating the next hop of a SIP or SIPS URI with DNS (RFC 3263 §4).

Without an outbound proxy a UA sends a request to the server the Request-URI's domain
names: NAPTR (RFC 3263 §4.1) picks the transport, SRV (RFC 2782) the targets in
priority/weight order, A and AAAA their addresses. The result is every hop in the order to
try, so the caller fails over to the next on a connection failure or a timeout (§4.3), as
the Store location of :mod:`sipcert.client.locate` does. Each hop carries the URI's domain:
TLS verifies that name, not the SRV target's (RFC 5922 §4).

As for the Store, a failure of DNS itself is a :class:`~sipcert.errors.LocationError`,
never taken as "no such record".
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence

import dns.exception
import dns.name
import dns.resolver
from dns.rdtypes.IN.NAPTR import NAPTR
from dns.rdtypes.IN.SRV import SRV

from sipcert.client.locate import DNSResolver, Locator
from sipcert.errors import LocationError
from sipcert.proto.sip import SipUri
from sipcert.sip.transport import DEFAULT_PORTS, Hop, Transport

__all__ = ["NAPTR_SERVICES", "SRV_PREFIXES", "next_hops"]

#: RFC 3263 §4.1 NAPTR services and the transport each one means.
NAPTR_SERVICES = {"SIP+D2U": Transport.UDP, "SIP+D2T": Transport.TCP, "SIPS+D2T": Transport.TLS}
#: RFC 3263 §4.1 SRV names per transport, for a domain without NAPTR records.
SRV_PREFIXES = {Transport.UDP: "_sip._udp", Transport.TCP: "_sip._tcp", Transport.TLS: "_sips._tcp"}

Narrate = Callable[[str], None]


def _failure(name: str, rdtype: str, exc: dns.exception.DNSException) -> LocationError:
    if isinstance(exc, dns.resolver.LifetimeTimeout):
        return LocationError(f"DNS {rdtype} lookup of {name} timed out")
    return LocationError(f"DNS {rdtype} lookup of {name} failed ({exc})")


async def _records(resolver: DNSResolver, name: str, rdtype: str) -> list[object]:
    try:
        answer = await resolver.resolve(f"{name}.", rdtype, search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.DNSException as exc:
        raise _failure(name, rdtype, exc) from exc
    rrset = answer.rrset
    if rrset is None:
        return []
    if rdtype == "SRV":
        return list(rrset.processing_order())
    return list(rrset)


async def next_hops(
    uri: SipUri,
    resolver: DNSResolver,
    *,
    transports: Sequence[Transport] = (Transport.UDP, Transport.TCP, Transport.TLS),
    narrate: Narrate | None = None,
) -> list[Hop]:
    """Every hop for ``uri`` in the order to try them (RFC 3263 §4.1-§4.2).

    ``transports`` are those we can use, in our preference order (used when the domain has
    no NAPTR). Raises LocationError on a DNS failure or when nothing is found.
    """

    def say(line: str) -> None:
        if narrate is not None:
            narrate(line)

    host = uri.host.strip("[]")
    domain = host.lower().rstrip(".")
    sips = uri.scheme == "sips"
    usable = [t for t in transports if t is Transport.TLS or not sips]
    explicit = uri.param("transport")
    numeric = _is_address(host)
    if explicit or numeric or uri.port is not None:
        # §4.1: a transport parameter, a numeric host or a port decide without NAPTR.
        if explicit:
            transport = (
                Transport(explicit.lower()) if explicit.lower() in ("udp", "tcp", "tls") else None
            )
            if transport is None:
                raise LocationError(f"{uri}: transport {explicit!r} is not udp, tcp or tls")
        else:
            transport = Transport.TLS if sips else Transport.UDP
        if numeric or uri.port is not None:
            port = uri.port if uri.port is not None else DEFAULT_PORTS[transport]
            say(f"{uri}: {transport} to {host} port {port} (RFC 3263 §4.2, no SRV)")
            return await _addressed(resolver, host, port, transport, domain, say)
        return await _by_srv(resolver, domain, [transport], say)
    say(f"DNS NAPTR query {domain} (RFC 3263 §4.1)")
    naptrs = [r for r in await _records(resolver, domain, "NAPTR") if isinstance(r, NAPTR)]
    chosen: list[tuple[Transport, str]] = []
    for record in sorted(naptrs, key=lambda r: (r.order, r.preference)):
        service = record.service.decode("ascii", "replace").upper()
        transport = NAPTR_SERVICES.get(service)
        if transport is None or transport not in usable or record.flags.lower() != b"s":
            say(f"  {service} ({record.flags.decode('ascii', 'replace')}): not usable, skipped")
            continue
        target = record.replacement.to_text(omit_final_dot=True)
        say(f"  order {record.order} preference {record.preference}: {service} -> {target}")
        chosen.append((transport, target))
    hops: list[Hop] = []
    if chosen:
        for transport, srv_name in chosen:
            hops += await _srv_targets(resolver, srv_name, transport, domain, say)
        if hops:
            return hops
        raise LocationError(f"{domain}: the NAPTR records lead to no reachable SRV target")
    return await _by_srv(resolver, domain, usable, say)


async def _by_srv(
    resolver: DNSResolver, domain: str, transports: Sequence[Transport], say: Narrate
) -> list[Hop]:
    """§4.1 without NAPTR: SRV per transport we support, else A/AAAA at the default port."""
    hops: list[Hop] = []
    for transport in transports:
        hops += await _srv_targets(
            resolver, f"{SRV_PREFIXES[transport]}.{domain}", transport, domain, say
        )
    if hops:
        return hops
    transport = transports[0]
    port = DEFAULT_PORTS[transport]
    say(f"no SRV record: {transport} to {domain} port {port} (RFC 3263 §4.2)")
    return await _addressed(resolver, domain, port, transport, domain, say)


async def _srv_targets(
    resolver: DNSResolver, name: str, transport: Transport, domain: str, say: Narrate
) -> list[Hop]:
    say(f"DNS SRV query {name}")
    hops: list[Hop] = []
    for record in await _records(resolver, name, "SRV"):
        if not isinstance(record, SRV) or record.target == dns.name.root:
            continue
        target = record.target.to_text(omit_final_dot=True).lower()
        say(f"  priority {record.priority} weight {record.weight}: {target} port {record.port}")
        try:
            hops += await _addressed(resolver, target, int(record.port), transport, domain, say)
        except LocationError as error:
            say(f"  {error}: next target")
    return hops


async def _addressed(
    resolver: DNSResolver, host: str, port: int, transport: Transport, domain: str, say: Narrate
) -> list[Hop]:
    addresses = await Locator(resolver).addresses(host)
    if not addresses:
        raise LocationError(f"{host} has no A or AAAA record")
    say(f"  {host}: {', '.join(addresses)}")
    return [Hop(transport, address, port, domain) for address in addresses]


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
