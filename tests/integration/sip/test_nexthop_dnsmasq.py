"""RFC 3263 next-hop location against a real DNS server (dnsmasq) (issue 12).

dnsmasq serves NAPTR (``--naptr-record``), SRV (``--srv-host``) and A (``--host-record``)
records; :func:`sipcert.sip.nexthop.next_hops` must walk them as RFC 3263 §4.1-§4.2 says,
and a UA without an outbound proxy must fail over to the next hop when one is dead (§4.3).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import pytest

from sipcert.client.locate import make_resolver
from sipcert.errors import LocationError
from sipcert.proto.mime import MimePart
from sipcert.proto.sip import parse_uri
from sipcert.sip.nexthop import next_hops
from sipcert.sip.transport import Hop, Transport
from sipcert.sip.ua import IncomingRequest, Timers, UserAgent
from tests.integration.client.conftest import DNSFactory, dns_server  # noqa: F401
from tests.integration.client.peers import free_port

T = TypeVar("T")
TEXT = MimePart("text/plain", b"found by NAPTR and SRV")
FAST = Timers(t1=0.02, t2=0.16, t4=0.2, invite_answer=5.0)

RECORDS = [
    # example.com: TCP preferred by NAPTR order, then UDP; two TCP targets by priority.
    "--naptr-record=example.com,20,10,s,SIP+D2U,,_sip._udp.example.com",
    "--naptr-record=example.com,10,10,s,SIP+D2T,,_sip._tcp.example.com",
    "--naptr-record=example.com,10,20,s,SIPS+D2T,,_sips._tcp.example.com",
    "--naptr-record=example.com,5,10,s,SIP+D2X,,_sip._x.example.com",
    "--srv-host=_sip._tcp.example.com,b.example.com,5071,20,0",
    "--srv-host=_sip._tcp.example.com,a.example.com,5070,10,0",
    "--srv-host=_sip._udp.example.com,c.example.com,5072,10,0",
    "--srv-host=_sips._tcp.example.com,a.example.com,5061,10,0",
    "--host-record=a.example.com,127.0.0.11",
    "--host-record=b.example.com,127.0.0.12",
    "--host-record=c.example.com,127.0.0.13",
    # example.net: no NAPTR, SRV for UDP only.
    "--srv-host=_sip._udp.example.net,d.example.net,5080,10,0",
    "--host-record=d.example.net,127.0.0.14",
    # example.org: neither NAPTR nor SRV, only an address.
    "--host-record=example.org,127.0.0.15",
]


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro, 30)

    return asyncio.run(main())


@pytest.fixture
def dns(dns_server: DNSFactory) -> str:  # noqa: F811
    return dns_server(RECORDS, ("example.com", "example.net", "example.org"))


def _hops(dns: str, uri: str) -> list[Hop]:
    lines: list[str] = []
    hops = run(next_hops(parse_uri(uri), make_resolver(dns, timeout=2), narrate=lines.append))
    assert lines  # every step is narrated
    return hops


@pytest.mark.peer("dnsmasq")
def test_naptr_then_srv_then_a(dns: str) -> None:
    hops = _hops(dns, "sip:bob@example.com")
    assert [(h.transport, h.host, h.port) for h in hops] == [
        (Transport.TCP, "127.0.0.11", 5070),  # NAPTR order 10, SRV priority 10
        (Transport.TCP, "127.0.0.12", 5071),  # SRV priority 20
        (Transport.TLS, "127.0.0.11", 5061),  # NAPTR order 10, preference 20
        (Transport.UDP, "127.0.0.13", 5072),  # NAPTR order 20
    ]
    assert {h.domain for h in hops} == {"example.com"}  # what TLS must verify (RFC 5922)


@pytest.mark.peer("dnsmasq")
def test_sips_uses_only_sips_naptr(dns: str) -> None:
    hops = _hops(dns, "sips:bob@example.com")
    assert [(h.transport, h.host, h.port, h.domain) for h in hops] == [
        (Transport.TLS, "127.0.0.11", 5061, "example.com")
    ]


@pytest.mark.peer("dnsmasq")
def test_srv_without_naptr_and_a_without_srv(dns: str) -> None:
    assert [(h.transport, h.host, h.port) for h in _hops(dns, "sip:bob@example.net")] == [
        (Transport.UDP, "127.0.0.14", 5080)
    ]
    assert [(h.transport, h.host, h.port) for h in _hops(dns, "sip:bob@example.org")] == [
        (Transport.UDP, "127.0.0.15", 5060)
    ]


@pytest.mark.peer("dnsmasq")
def test_a_port_or_transport_in_the_uri_skips_naptr(dns: str) -> None:
    assert [(h.transport, h.host, h.port) for h in _hops(dns, "sip:bob@example.org:5099")] == [
        (Transport.UDP, "127.0.0.15", 5099)
    ]
    hops = _hops(dns, "sip:bob@example.com;transport=tcp")  # SRV _sip._tcp only (§4.1)
    assert [(h.transport, h.port) for h in hops] == [(Transport.TCP, 5070), (Transport.TCP, 5071)]
    assert _hops(dns, "sip:bob@127.0.0.1:5090") == [
        Hop(Transport.UDP, "127.0.0.1", 5090, "127.0.0.1")
    ]


@pytest.mark.peer("dnsmasq")
def test_unknown_domain_and_dead_dns_are_location_errors(dns: str) -> None:
    with pytest.raises(LocationError, match="no A or AAAA"):
        _hops(dns, "sip:bob@nowhere.example.org")
    with pytest.raises(LocationError, match="timed out"):
        run(next_hops(parse_uri("sip:bob@example.com"), make_resolver("127.0.0.1:9", timeout=0.3)))


@pytest.mark.peer("dnsmasq")
def test_ua_without_proxy_fails_over_to_the_next_hop(dns_server: DNSFactory) -> None:  # noqa: F811
    """RFC 3263 §4.3: the first hop (TCP, nobody listening) refuses; the MESSAGE goes to
    the second (UDP), where Bob's UA answers."""

    async def main() -> None:
        received: list[IncomingRequest] = []

        async def on_message(incoming: IncomingRequest) -> int:
            received.append(incoming)
            return 202

        async with UserAgent("bob@example.com", timers=FAST, on_message=on_message) as bob:
            _, port = bob.local_address
            dead = free_port()
            dns = dns_server(
                [
                    "--naptr-record=example.com,10,10,s,SIP+D2T,,_sip._tcp.example.com",
                    "--naptr-record=example.com,20,10,s,SIP+D2U,,_sip._udp.example.com",
                    f"--srv-host=_sip._tcp.example.com,dead.example.com,{dead},10,0",
                    f"--srv-host=_sip._udp.example.com,bob.example.com,{port},10,0",
                    "--host-record=dead.example.com,127.0.0.1",
                    "--host-record=bob.example.com,127.0.0.1",
                ]
            )
            resolver = make_resolver(dns, timeout=2)
            async with UserAgent("alice@example.com", timers=FAST, resolver=resolver) as alice:
                response = await alice.send_message("bob@example.com", TEXT)
        assert response.status == 202
        [incoming] = received
        assert incoming.request.top_via.transport == "UDP"
        assert incoming.request.get("Route") is None  # no outbound proxy, no pre-loaded Route
        assert incoming.body == TEXT

    run(main())
