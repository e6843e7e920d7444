"""A tiny authoritative DNS responder on loopback, for the demo and for tests.

The UA locates a Store with a DNS SRV query for ``_certificates._tcp.<domain>`` and then
an A query for the SRV target (draft §4.1, §4.5). The demo must run with no root and no
preparation, so it cannot edit ``/etc/hosts`` or start dnsmasq; instead this responder
answers those queries from a fixed table, over UDP on ``127.0.0.1``, and the UA is pointed
at it with ``ClientConfig(dns="127.0.0.1:PORT")`` -- the same code path as a real DNS
server, down to dnspython's resolver parsing real wire-format answers.

It is deliberately small: every name in the table is answered authoritatively; a name in
the table without the asked type gets an empty NOERROR answer (NODATA), any other name
NXDOMAIN. Message parsing and building are dnspython's (``dns.message.from_wire``,
``dns.message.make_response``); only the table lookup is ours. Answers are small, so TCP
(for truncated answers) is not needed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

__all__ = ["DNSQuery", "DNSResponder", "Record"]

log = logging.getLogger(__name__)

#: TTL of every answer; irrelevant to the demo (dnspython's resolver does not cache by
#: default) but must be something.
DEFAULT_TTL = 60


@dataclass(frozen=True)
class Record:
    """One resource record in presentation form, e.g. ``Record("example.com", "A", "127.0.0.1")``.

    ``rdata`` is the master-file text of the data: ``"10 0 8443 store.example.com."`` for
    an SRV record. Names are taken as absolute whether or not they end in a dot.
    """

    name: str
    rdtype: str
    rdata: str
    ttl: int = DEFAULT_TTL


@dataclass(frozen=True)
class DNSQuery:
    """A question the responder answered, for narration and tests."""

    name: str
    rdtype: str
    rcode: str
    answers: tuple[str, ...]


def _absolute(name: str) -> dns.name.Name:
    return dns.name.from_text(name if name.endswith(".") else f"{name}.")


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, responder: DNSResponder) -> None:
        self._responder = responder
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not isinstance: CPython's selector datagram transport does not subclass
        # asyncio.DatagramTransport (3.11), though it implements it.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        reply = self._responder.answer(data)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


class DNSResponder:
    """Answers A, AAAA, SRV (any type, really) queries from a fixed set of records.

    Use as an async context manager, or call :meth:`start` and :meth:`aclose`. After
    starting, :attr:`server` is the ``HOST:PORT`` to give the UA as its DNS server and
    :attr:`queries` lists every question answered, in order.
    """

    def __init__(self, records: Iterable[Record] = (), *, host: str = "127.0.0.1") -> None:
        self._host = host
        self._rrsets: dict[tuple[dns.name.Name, dns.rdatatype.RdataType], dns.rrset.RRset] = {}
        self._names: set[dns.name.Name] = set()
        self._transport: asyncio.DatagramTransport | None = None
        self._port = 0
        self.queries: list[DNSQuery] = []
        for record in records:
            self.add(record)

    def add(self, record: Record) -> None:
        """Add a record (several with the same name and type make one RRset)."""
        name = _absolute(record.name)
        rdtype = dns.rdatatype.from_text(record.rdtype)
        new = dns.rrset.from_text(name, record.ttl, dns.rdataclass.IN, rdtype, record.rdata)
        existing = self._rrsets.get((name, rdtype))
        if existing is not None:
            for rdata in existing:
                new.add(rdata)
        self._rrsets[(name, rdtype)] = new
        self._names.add(name)

    def remove(self, name: str, rdtype: str) -> None:
        """Drop the RRset of ``name`` and ``rdtype`` (the name stays known: NODATA)."""
        self._rrsets.pop((_absolute(name), dns.rdatatype.from_text(rdtype)), None)

    # -- life cycle ------------------------------------------------------------------------

    async def start(self, port: int = 0) -> None:
        """Listen on UDP ``host:port`` (``0``: a free port)."""
        if self._transport is not None:
            return
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(self._host, port)
        )
        self._transport = transport
        self._port = int(transport.get_extra_info("sockname")[1])

    async def aclose(self) -> None:
        """Close the socket (idempotent)."""
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()
            await asyncio.sleep(0)  # let the loop run connection_lost and close the socket

    async def __aenter__(self) -> DNSResponder:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def address(self) -> tuple[str, int]:
        if self._transport is None:
            raise RuntimeError("the DNS responder is not started")
        return self._host, self._port

    @property
    def server(self) -> str:
        """``HOST:PORT``, as ``ClientConfig(dns=...)`` and ``--dns`` take it."""
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    # -- answering -------------------------------------------------------------------------

    def answer(self, wire: bytes) -> bytes | None:
        """The wire-format response to a wire-format query; ``None`` for junk (dropped)."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException as exc:
            log.info("dropping an unparsable DNS query: %s", exc)
            return None
        if query.flags & dns.flags.QR:
            return None  # a response, not a query: never answer those (no loops)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        response.flags &= ~dns.flags.RA
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire()
        question = query.question[0]
        rrset = self._rrsets.get((question.name, question.rdtype))
        if rrset is not None:
            response.answer.append(rrset)
            rcode = dns.rcode.NOERROR
        elif question.name in self._names:
            rcode = dns.rcode.NOERROR  # NODATA: the name exists, not with this type
        else:
            rcode = dns.rcode.NXDOMAIN
        response.set_rcode(rcode)
        self.queries.append(
            DNSQuery(
                question.name.to_text(omit_final_dot=True),
                dns.rdatatype.to_text(question.rdtype),
                dns.rcode.to_text(rcode),
                tuple(rd.to_text() for rd in rrset) if rrset is not None else (),
            )
        )
        return response.to_wire()

    def take_queries(self) -> list[DNSQuery]:
        """The questions answered since the last call (for narrating one step's lookups)."""
        taken, self.queries = self.queries, []
        return taken
