"""The demo's DNS responder, queried with dnspython's real resolver over UDP on loopback.

The UA's Locator treats NXDOMAIN and NODATA as "no SRV record" (fallback, draft §4.1) and any
other failure as an error, so the responder must answer both correctly, not just the happy
path.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import dns.asyncresolver
import dns.flags
import dns.message
import dns.rcode
import dns.resolver
import pytest
from dns.rdtypes.IN.SRV import SRV

from sipcert.client.locate import Locator, make_resolver
from sipcert.demo.dns import DNSResponder, Record
from sipcert.proto.aor import parse_aor

RECORDS = [
    Record("_certificates._tcp.example.com", "SRV", "10 0 7000 a.example.com."),
    Record("_certificates._tcp.example.com", "SRV", "20 0 7001 b.example.com."),
    Record("a.example.com", "A", "127.0.0.1"),
    Record("b.example.com.", "A", "127.0.0.2"),
]


def with_responder(
    test: Callable[[DNSResponder, dns.asyncresolver.Resolver], Awaitable[None]],
) -> None:
    async def main() -> None:
        async with DNSResponder(RECORDS) as responder:
            await test(responder, make_resolver(responder.server, timeout=2.0))

    asyncio.run(main())


def test_srv_answer_lists_every_record() -> None:
    async def test(responder: DNSResponder, resolver: dns.asyncresolver.Resolver) -> None:
        answer = await resolver.resolve("_certificates._tcp.example.com.", "SRV", search=False)
        assert answer.response.flags & dns.flags.AA
        records = sorted(
            (r.priority, r.port, r.target.to_text()) for r in answer if isinstance(r, SRV)
        )
        assert records == [(10, 7000, "a.example.com."), (20, 7001, "b.example.com.")]
        assert [(q.name, q.rdtype, q.rcode) for q in responder.queries] == [
            ("_certificates._tcp.example.com", "SRV", "NOERROR")
        ]

    with_responder(test)


def test_a_answer_and_case_insensitive_names() -> None:
    async def test(responder: DNSResponder, resolver: dns.asyncresolver.Resolver) -> None:
        answer = await resolver.resolve("B.Example.COM.", "A", search=False)
        assert [r.address for r in answer] == ["127.0.0.2"]

    with_responder(test)


def test_unknown_name_is_nxdomain() -> None:
    async def test(responder: DNSResponder, resolver: dns.asyncresolver.Resolver) -> None:
        with pytest.raises(dns.resolver.NXDOMAIN):
            await resolver.resolve("_certificates._tcp.example.net.", "SRV", search=False)
        assert responder.take_queries()[-1].rcode == "NXDOMAIN"
        assert responder.queries == []

    with_responder(test)


def test_known_name_without_that_type_is_nodata() -> None:
    async def test(responder: DNSResponder, resolver: dns.asyncresolver.Resolver) -> None:
        with pytest.raises(dns.resolver.NoAnswer):
            await resolver.resolve("a.example.com.", "AAAA", search=False)
        assert responder.queries[-1].rcode == "NOERROR"

    with_responder(test)


def test_locator_follows_srv_then_a() -> None:
    """The UA's own Locator, end to end against the responder (draft §4.5)."""

    async def test(responder: DNSResponder, resolver: dns.asyncresolver.Resolver) -> None:
        locator = Locator(resolver)
        location = await locator.locate(parse_aor("bob@example.com"))
        assert location.from_srv
        assert [(t.host, t.port) for t in location.targets] == [
            ("a.example.com", 7000),
            ("b.example.com", 7001),
        ]
        assert await locator.addresses("a.example.com") == ["127.0.0.1"]
        fallback = await locator.locate(parse_aor("bob@example.org"))
        assert not fallback.from_srv
        assert fallback.targets[0].host == "certificates.example.org"

    with_responder(test)


def test_junk_and_responses_are_dropped() -> None:
    responder = DNSResponder(RECORDS)
    assert responder.answer(b"\x00\x01junk") is None
    query = dns.message.make_query("a.example.com.", "A")
    reply = responder.answer(query.to_wire())
    assert reply is not None
    assert responder.answer(reply) is None  # a response is never answered
    parsed = dns.message.from_wire(reply)
    assert parsed.rcode() == dns.rcode.NOERROR
    assert parsed.answer[0].to_text() == "a.example.com. 60 IN A 127.0.0.1"


def test_socket_is_closed_after_exit() -> None:
    async def main() -> int:
        async with DNSResponder(RECORDS) as responder:
            port = responder.address[1]
        with pytest.raises(RuntimeError):
            _ = responder.server
        return port

    port = asyncio.run(main())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", port))  # free again
