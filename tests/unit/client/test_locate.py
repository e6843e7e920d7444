"""Location (draft §4.1, §4.5) with a fake resolver holding real dnspython records."""

from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace
from typing import Any

import anyio
import dns.exception
import dns.resolver
import dns.rrset
import pytest

from sipcert.client.locate import (
    DeferredResolver,
    Locator,
    Target,
    parse_dns_server,
    parse_store_address,
    query_string,
    search_path,
)
from sipcert.demo.dns import DNSResponder, Record
from sipcert.errors import ConfigError, LocationError
from sipcert.proto.aor import parse_aor

BOB = parse_aor("bob@example.com")
SRV_NAME = "_certificates._tcp.example.com."


class FakeResolver:
    def __init__(self, answers: dict[tuple[str, str], Any]) -> None:
        self.answers = answers
        self.queries: list[tuple[str, str]] = []

    async def resolve(self, qname: str, rdtype: str, *, search: bool | None = None) -> Any:
        self.queries.append((qname, rdtype))
        answer = self.answers.get((qname, rdtype), dns.resolver.NXDOMAIN())
        if isinstance(answer, Exception):
            raise answer
        return SimpleNamespace(rrset=answer)


def srv(*records: str) -> dns.rrset.RRset:
    return dns.rrset.from_text(SRV_NAME, 60, "IN", "SRV", *records)


def locate(resolver: FakeResolver, **kwargs: Any) -> Any:
    return asyncio.run(Locator(resolver, **kwargs).locate(BOB))


def test_srv_targets_in_priority_order_with_draft_url() -> None:
    resolver = FakeResolver(
        {(SRV_NAME, "SRV"): srv("20 0 7001 b.example.com.", "10 0 7000 A.Example.com.")}
    )
    location = locate(resolver)
    assert location.from_srv
    assert [(t.host, t.port) for t in location.targets] == [
        ("a.example.com", 7000),
        ("b.example.com", 7001),
    ]
    # The draft's own example URL (draft §4.1).
    assert location.url == "https://a.example.com:7000/search-cgi?email=bob%40example.com"
    assert location.domain == "example.com"
    assert any("priority 10 weight 0: a.example.com port 7000" in s for s in location.steps)


def test_weights_only_reorder_within_a_priority() -> None:
    records = [f"10 {w} {7000 + w} t{w}.example.com." for w in (1, 50, 100)]
    records.append("5 0 6000 first.example.com.")
    resolver = FakeResolver({(SRV_NAME, "SRV"): srv(*records)})
    seen_second = set()
    for _ in range(40):
        targets = locate(resolver).targets
        assert targets[0].host == "first.example.com"
        assert {t.host for t in targets[1:]} == {
            "t1.example.com",
            "t50.example.com",
            "t100.example.com",
        }
        seen_second.add(targets[1].host)
    assert "t100.example.com" in seen_second


@pytest.mark.parametrize("missing", [dns.resolver.NXDOMAIN(), dns.resolver.NoAnswer()])
def test_no_srv_falls_back_to_certificates_host(missing: Exception) -> None:
    location = locate(FakeResolver({(SRV_NAME, "SRV"): missing}))
    assert not location.from_srv
    assert location.targets == (Target("certificates.example.com", 443),)
    assert location.url == "https://certificates.example.com/search-cgi?email=bob%40example.com"


def test_fallback_port_is_injectable_for_tests() -> None:
    location = locate(FakeResolver({}), fallback_port=8443)
    assert location.targets == (Target("certificates.example.com", 8443),)
    with pytest.raises(ConfigError):
        Locator(FakeResolver({}), fallback_port=0)


def test_dot_target_means_service_not_available() -> None:
    with pytest.raises(LocationError, match="offers no certificate Store"):
        locate(FakeResolver({(SRV_NAME, "SRV"): srv("0 0 0 .")}))


def test_dot_target_among_real_ones_is_skipped() -> None:
    location = locate(FakeResolver({(SRV_NAME, "SRV"): srv("0 0 0 .", "10 0 7000 a.example.com.")}))
    assert [t.host for t in location.targets] == ["a.example.com"]


@pytest.mark.parametrize(
    ("failure", "text"),
    [
        (dns.resolver.LifetimeTimeout(timeout=1.0, errors={}), "timed out"),
        (dns.resolver.NoNameservers(), "SERVFAIL"),
        (dns.exception.DNSException("odd"), "failed"),
    ],
)
def test_dns_failures_are_location_errors_not_fallback(failure: Exception, text: str) -> None:
    resolver = FakeResolver({(SRV_NAME, "SRV"): failure})
    with pytest.raises(LocationError, match=text):
        locate(resolver)
    assert resolver.queries == [(SRV_NAME, "SRV")]  # no fallback lookups after a failure


def test_addresses_via_resolver_and_system() -> None:
    a = dns.rrset.from_text("a.example.com.", 60, "IN", "A", "192.0.2.1")
    aaaa = dns.rrset.from_text("a.example.com.", 60, "IN", "AAAA", "2001:db8::1")
    resolver = FakeResolver({("a.example.com.", "A"): a, ("a.example.com.", "AAAA"): aaaa})
    locator = Locator(resolver)
    assert asyncio.run(locator.addresses("a.example.com")) == ["192.0.2.1", "2001:db8::1"]
    assert asyncio.run(locator.addresses("none.example.com")) == []
    assert asyncio.run(locator.addresses("198.51.100.7")) == ["198.51.100.7"]
    system = Locator(resolver, system_addresses=True)
    assert "127.0.0.1" in asyncio.run(system.addresses("localhost"))  # /etc/hosts
    failing = FakeResolver({("x.example.com.", "A"): dns.resolver.NoNameservers()})
    with pytest.raises(LocationError):
        asyncio.run(Locator(failing).addresses("x.example.com"))


def test_a_failed_aaaa_query_keeps_the_a_answer() -> None:
    """A REFUSED/SERVFAIL AAAA (dnspython: NoNameservers) must not discard a resolved A."""
    a = dns.rrset.from_text("a.example.com.", 60, "IN", "A", "192.0.2.1")
    refused = dns.resolver.NoNameservers()
    resolver = FakeResolver({("a.example.com.", "A"): a, ("a.example.com.", "AAAA"): refused})
    assert asyncio.run(Locator(resolver).addresses("a.example.com")) == ["192.0.2.1"]
    both = FakeResolver({("b.example.com.", "A"): refused, ("b.example.com.", "AAAA"): refused})
    with pytest.raises(LocationError, match=r"DNS A lookup of b\.example\.com failed"):
        asyncio.run(Locator(both).addresses("b.example.com"))


@pytest.mark.parametrize(
    ("errno", "expected"),
    [(socket.EAI_NONAME, "none"), (socket.EAI_AGAIN, "error"), (socket.EAI_FAIL, "error")],
)
def test_system_addresses_no_such_name_is_empty_else_location_error(
    monkeypatch: pytest.MonkeyPatch, errno: int, expected: str
) -> None:
    """As with our resolver: a name that does not exist has no address (the caller makes
    that a location failure, exit 3); a resolver that fails is a LocationError."""

    async def getaddrinfo(*args: object, **kwargs: object) -> list[object]:
        raise socket.gaierror(errno, "from the test")

    monkeypatch.setattr(anyio, "getaddrinfo", getaddrinfo)
    locator = Locator(FakeResolver({}), system_addresses=True)
    if expected == "none":
        assert asyncio.run(locator.addresses("nowhere.invalid")) == []
    else:
        with pytest.raises(LocationError, match="system resolver could not look up"):
            asyncio.run(locator.addresses("nowhere.invalid"))


def test_url_forms() -> None:
    odd = parse_aor("sip:b%20o+b@Example.COM")
    assert query_string(odd) == "email=b%2520o%2Bb%40example.com"
    assert search_path(BOB, "sip") == "/search-cgi?sip=bob%40example.com"
    assert (
        search_path(BOB, certHash="ab+c/=")
        == "/search-cgi?email=bob%40example.com&certHash=ab%2Bc%2F%3D"
    )
    assert (
        Target("2001:db8::1", 8443).url(BOB)
        == "https://[2001:db8::1]:8443/search-cgi?email=bob%40example.com"
    )
    with pytest.raises(ConfigError):
        query_string(BOB, "uri")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1", ("127.0.0.1", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("[::1]:53", ("::1", 53)),
        ("::1", ("::1", 53)),
    ],
)
def test_parse_dns_server(text: str, expected: tuple[str, int]) -> None:
    assert parse_dns_server(text) == expected


@pytest.mark.parametrize(
    "text", ["dns.example.com", "127.0.0.1:0", "127.0.0.1:x", "[::1", "[::1]x"]
)
def test_parse_dns_server_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_dns_server(text)


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:8443", "127.0.0.1", 8443),
        ("Store.Example.com", "store.example.com", 443),
        ("[::1]:7000", "::1", 7000),
        ("[::1]", "::1", 443),
    ],
)
def test_store_address_forms(text: str, host: str, port: int) -> None:
    assert parse_store_address(text) == Target(host, port)


@pytest.mark.parametrize("text", ["", ":80", "host:0", "host:99999", "host:x", "a/b:1"])
def test_store_address_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="--store"):
        parse_store_address(text)


def test_given_store_skips_dns_but_not_the_tls_domain() -> None:
    resolver = FakeResolver({})
    location = locate(resolver, store=Target("127.0.0.1", 8443))
    assert resolver.queries == []
    assert location.targets == (Target("127.0.0.1", 8443),)
    assert location.domain == "example.com"
    assert any("must still name example.com" in step for step in location.steps)


def test_a_deferred_resolver_makes_the_real_one_at_its_first_query() -> None:
    records = [
        Record("_certificates._tcp.example.com", "SRV", "10 0 7000 a.example.com."),
        Record("_certificates._tcp.example.com", "SRV", "20 0 7001 b.example.com."),
    ]

    async def main() -> None:
        async with DNSResponder(records) as responder:
            deferred = DeferredResolver(responder.server, timeout=2.0)
            assert deferred._resolver is None  # nothing made (nor imported) for a --store UA
            location = await Locator(deferred).locate(BOB)
            assert [(t.host, t.port) for t in location.targets] == [
                ("a.example.com", 7000),
                ("b.example.com", 7001),
            ]
            assert deferred.resolver.nameservers == [responder.address[0]]
            assert len(responder.queries) == 1

    asyncio.run(main())


@pytest.mark.parametrize("server", ["not-an-address", "127.0.0.1:0", "[::1"])
def test_a_deferred_resolver_refuses_a_bad_server_at_once(server: str) -> None:
    with pytest.raises(ConfigError):
        DeferredResolver(server)
