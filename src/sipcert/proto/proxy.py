"""The PROXY protocol, versions 1 and 2 (haproxy ``doc/proxy-protocol.txt``), without I/O.

Behind an L4 load balancer every connection comes from the balancer's address; HAProxy's
``send-proxy`` (v1, one text line) and ``send-proxy-v2`` (binary) put the client's address in
a header in front of the connection's first byte, before the TLS ClientHello. The Store reads
it only from configured balancers (:mod:`sipcert.server.conn`), so that rate limits and logs
see the real client (issue 10).

The reader is told the bytes seen so far and answers with the header's length once it is
complete (:func:`header_length`), so the caller never consumes a byte of TLS by mistake;
:func:`parse_header` then decodes it. Anything that is not a well-formed header raises
:class:`~sipcert.errors.ProxyProtocolError`.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass

from sipcert.errors import ProxyProtocolError

__all__ = [
    "V1_MAX_LENGTH",
    "V2_SIGNATURE",
    "ProxyHeader",
    "build_v1",
    "build_v2",
    "header_length",
    "may_be_proxy",
    "parse_header",
]

#: The longest v1 line, CRLF included (spec §2.1: 107 bytes).
V1_MAX_LENGTH = 107
_V1_PREFIX = b"PROXY "
#: The 12 bytes that start every v2 header (spec §2.2).
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_FIXED = 16
_PORT = re.compile(rb"0|[1-9][0-9]{0,4}")

_LOCAL, _PROXY = 0x0, 0x1
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0x0, 0x1, 0x2, 0x3
_UNSPEC, _STREAM = 0x0, 0x1
_ADDRESS_BYTES = {_AF_INET: 12, _AF_INET6: 36, _AF_UNIX: 216}

Address = tuple[str, int]


@dataclass(frozen=True)
class ProxyHeader:
    """One decoded header.

    ``source`` and ``destination`` are ``(address, port)`` of the client's connection to the
    balancer, or ``None`` when the header carries none (v1 ``UNKNOWN``, v2 ``LOCAL`` such as a
    health check, or a family without IP addresses): the connection's own endpoints apply.
    """

    version: int
    source: Address | None
    destination: Address | None
    length: int


def may_be_proxy(prefix: bytes) -> bool:
    """Whether the first bytes of a connection can start a PROXY header (either version)."""
    n = min(len(prefix), len(V2_SIGNATURE))
    return bool(prefix) and (
        prefix[:n] == V2_SIGNATURE[:n] or prefix[: len(_V1_PREFIX)] == _V1_PREFIX[:n]
    )


def header_length(data: bytes) -> int | None:
    """The length of the header at the start of ``data``; ``None`` while it is incomplete.

    Raises :class:`ProxyProtocolError` as soon as ``data`` cannot start a header.
    """
    if not data:
        return None
    if not may_be_proxy(data[: len(V2_SIGNATURE)]):
        raise ProxyProtocolError("the connection does not start with a PROXY protocol header")
    if data[:1] == b"P":
        end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
        if end >= 0:
            return end + 2
        if len(data) >= V1_MAX_LENGTH:
            raise ProxyProtocolError("PROXY v1 line longer than 107 bytes")
        if b"\n" in data or b"\r" in data[:-1]:
            raise ProxyProtocolError("PROXY v1 line does not end with CRLF")
        return None
    if len(data) < _V2_FIXED:
        return None
    (length,) = struct.unpack_from("!H", data, 14)
    total = _V2_FIXED + length
    return total if len(data) >= total else None


def parse_header(data: bytes) -> ProxyHeader | None:
    """The header at the start of ``data``, or ``None`` while it is incomplete."""
    length = header_length(data)
    if length is None:
        return None
    raw = data[:length]
    if raw[:1] == b"P":
        return _parse_v1(raw)
    return _parse_v2(raw)


def _parse_v1(line: bytes) -> ProxyHeader:
    fields = line[len(_V1_PREFIX) : -2].split(b" ")
    if fields[0] == b"UNKNOWN":  # the rest of the line is to be ignored (spec §2.1)
        return ProxyHeader(1, None, None, len(line))
    if fields[0] not in (b"TCP4", b"TCP6") or len(fields) != 5:
        raise ProxyProtocolError("PROXY v1 line: expected TCP4|TCP6 src dst sport dport")
    kind = ipaddress.IPv4Address if fields[0] == b"TCP4" else ipaddress.IPv6Address
    try:
        source, destination = (str(kind(f.decode("ascii"))) for f in fields[1:3])
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProxyProtocolError(f"PROXY v1 line: not {fields[0].decode()} addresses") from exc
    ports = []
    for field in fields[3:]:
        if _PORT.fullmatch(field) is None or int(field) > 65535:
            raise ProxyProtocolError("PROXY v1 line: a port is not a number from 0 to 65535")
        ports.append(int(field))
    return ProxyHeader(1, (source, ports[0]), (destination, ports[1]), len(line))


def _parse_v2(raw: bytes) -> ProxyHeader:
    version, command = raw[12] >> 4, raw[12] & 0xF
    family, transport = raw[13] >> 4, raw[13] & 0xF
    if version != 2 or command not in (_LOCAL, _PROXY):
        raise ProxyProtocolError(f"PROXY v2 header: unknown version/command byte {raw[12]:#04x}")
    if family > _AF_UNIX or transport not in (_UNSPEC, _STREAM):
        raise ProxyProtocolError(f"PROXY v2 header: not a stream family ({raw[13]:#04x})")
    body = raw[_V2_FIXED:]
    needed = _ADDRESS_BYTES.get(family, 0)
    if len(body) < needed:
        raise ProxyProtocolError("PROXY v2 header: shorter than its address block")
    # LOCAL (health checks) and families without IP addresses keep the real endpoints;
    # TLVs after the addresses are skipped (spec §2.2.7).
    if command == _LOCAL or family not in (_AF_INET, _AF_INET6):
        return ProxyHeader(2, None, None, len(raw))
    size = 4 if family == _AF_INET else 16
    kind = ipaddress.IPv4Address if family == _AF_INET else ipaddress.IPv6Address
    source, destination = str(kind(body[:size])), str(kind(body[size : 2 * size]))
    sport, dport = struct.unpack_from("!HH", body, 2 * size)
    return ProxyHeader(2, (source, sport), (destination, dport), len(raw))


def build_v1(source: Address, destination: Address) -> bytes:
    """A v1 line for two TCP endpoints of one family (tests, and clients that need one)."""
    kind = "TCP6" if ":" in source[0] else "TCP4"
    return f"PROXY {kind} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n".encode()


def build_v2(source: Address | None, destination: Address | None, tlvs: bytes = b"") -> bytes:
    """A v2 header: PROXY over TCP for two endpoints, LOCAL when they are ``None``."""
    if source is None or destination is None:
        return V2_SIGNATURE + struct.pack("!BBH", 0x20, 0x00, len(tlvs)) + tlvs
    a, b = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    family = _AF_INET if a.version == 4 else _AF_INET6
    block = a.packed + b.packed + struct.pack("!HH", source[1], destination[1])
    fam = family << 4 | _STREAM
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, fam, len(block) + len(tlvs)) + block + tlvs
