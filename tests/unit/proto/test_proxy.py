"""The PROXY protocol parser (haproxy doc/proxy-protocol.txt, v1 §2.1 and v2 §2.2)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipcert.errors import InputError, ProxyProtocolError
from sipcert.proto.proxy import (
    V1_MAX_LENGTH,
    V2_SIGNATURE,
    ProxyHeader,
    build_v1,
    build_v2,
    header_length,
    may_be_proxy,
    parse_header,
)

CLIENT_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"

# The spec's own examples (§2.1) and HAProxy's v2 bytes for 172.19.0.1:42578 -> 172.19.0.3:80.
V1_EXAMPLES = [
    (
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
        ProxyHeader(1, ("192.168.0.1", 56324), ("192.168.0.11", 443), 47),
    ),
    (
        b"PROXY TCP6 ffff:f::ffff ::1 65535 0\r\n",
        ProxyHeader(1, ("ffff:f::ffff", 65535), ("::1", 0), 37),
    ),
    (b"PROXY UNKNOWN\r\n", ProxyHeader(1, None, None, 15)),
    (
        b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
        ProxyHeader(1, None, None, 59),
    ),
]
HAPROXY_V2 = bytes.fromhex("0d0a0d0a000d0a515549540a2111000cac130001ac130003a6520050")


@pytest.mark.parametrize(("line", "expected"), V1_EXAMPLES)
def test_v1_examples_of_the_spec(line: bytes, expected: ProxyHeader) -> None:
    assert parse_header(line + CLIENT_HELLO) == expected
    assert header_length(line + CLIENT_HELLO) == len(line)


def test_v2_bytes_as_haproxy_sends_them() -> None:
    header = parse_header(HAPROXY_V2 + CLIENT_HELLO)
    assert header == ProxyHeader(2, ("172.19.0.1", 42578), ("172.19.0.3", 80), 28)


def test_v2_local_and_tlvs_and_other_families() -> None:
    # LOCAL (a health check): the connection's own endpoints apply.
    assert parse_header(build_v2(None, None)) == ProxyHeader(2, None, None, 16)
    # TLVs after the addresses are skipped (here PP2_TYPE_AUTHORITY = the SNI).
    tlv = b"\x02\x00\x0bexample.com"
    header = parse_header(build_v2(("10.0.0.1", 1), ("10.0.0.2", 443), tlv) + CLIENT_HELLO)
    assert header is not None and header.source == ("10.0.0.1", 1)
    assert header.length == 16 + 12 + len(tlv)
    # AF_UNIX over a stream: no IP address, so none is claimed.
    unix = V2_SIGNATURE + b"\x21\x31" + (216).to_bytes(2, "big") + b"\x00" * 216
    assert parse_header(unix) == ProxyHeader(2, None, None, 232)


def test_incomplete_headers_ask_for_more_without_consuming_tls() -> None:
    for whole in (V1_EXAMPLES[0][0], HAPROXY_V2, build_v2(("::1", 5), ("::2", 6))):
        for cut in range(1, len(whole)):
            assert header_length(whole[:cut]) is None
            assert parse_header(whole[:cut]) is None
        assert header_length(whole) == len(whole)
    assert header_length(b"") is None


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (CLIENT_HELLO, "does not start with a PROXY"),
        (b"GET / HTTP/1.1\r\n\r\n", "does not start with a PROXY"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2", None),  # incomplete: more is needed
        (b"PROXY " + b"A" * V1_MAX_LENGTH, "longer than 107"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "CRLF"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "expected TCP4"),
        (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "expected TCP4"),
        (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "not TCP4 addresses"),
        (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "not TCP6 addresses"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "port"),
        (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "expected TCP4"),
        (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "not TCP4 addresses"),
        (V2_SIGNATURE + b"\x31\x11\x00\x0c" + b"\x00" * 12, "version/command"),
        (V2_SIGNATURE + b"\x22\x11\x00\x0c" + b"\x00" * 12, "version/command"),
        (V2_SIGNATURE + b"\x21\x12\x00\x0c" + b"\x00" * 12, "not a stream"),
        (V2_SIGNATURE + b"\x21\x41\x00\x00", "not a stream"),
        (V2_SIGNATURE + b"\x21\x21\x00\x0c" + b"\x00" * 12, "shorter than its address"),
        (V2_SIGNATURE[:5] + b"X", "does not start with a PROXY"),
    ],
)
def test_malformed_headers_are_refused(data: bytes, reason: str | None) -> None:
    if reason is None:
        assert parse_header(data) is None
        return
    with pytest.raises(ProxyProtocolError, match=reason) as caught:
        parse_header(data)
    assert isinstance(caught.value, InputError)  # a 400-class input error, never a crash


def test_may_be_proxy_tells_a_header_from_tls() -> None:
    assert may_be_proxy(b"P") and may_be_proxy(b"PROXY TCP4 ") and may_be_proxy(b"\r\n\r\n")
    assert may_be_proxy(HAPROXY_V2)
    assert not may_be_proxy(CLIENT_HELLO) and not may_be_proxy(b"") and not may_be_proxy(b"PUT")


ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
port = st.integers(0, 65535)


@given(st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6)), port, port, st.binary())
def test_if_it_is_built_it_parses_back(
    addresses: tuple[str, str], sport: int, dport: int, rest: bytes
) -> None:
    source, destination = (addresses[0], sport), (addresses[1], dport)
    for version, header in ((1, build_v1(source, destination)), (2, build_v2(source, destination))):
        parsed = parse_header(header + rest)
        assert parsed == ProxyHeader(version, source, destination, len(header))
        assert len(header) <= (V1_MAX_LENGTH if version == 1 else 52)


@given(st.binary(max_size=64))
def test_arbitrary_bytes_parse_or_raise_the_one_error(data: bytes) -> None:
    try:
        header = parse_header(data)
    except ProxyProtocolError:
        return
    if header is not None and header.source is not None:
        ipaddress.ip_address(header.source[0])
        assert header.length <= len(data)
