"""A strict, minimal DER reader (X.690 §10) for the lean CMS paths of :mod:`sipcert.proto.cms`.

asn1crypto builds a Python object per node of every structure it reads; for the few CMS
shapes a SIP UA receives in every message that cost most of the time of opening a body
(docs/benchmarks.md, "S/MIME"). This reader only *slices*: it returns the tag and the
content bounds of each TLV and never builds anything. It accepts DER alone -- single-octet
tags, definite and minimal lengths, nothing past the end -- and raises :class:`NotLean`
for anything else (BER indefinite lengths, long-form tags, a length that runs past its
parent); the caller then reads the input with asn1crypto, so an unusual encoding costs time,
never correctness. :class:`NotLean` never leaves :mod:`sipcert.proto.cms`.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["TLV", "NotLean", "children", "expect", "integer", "one", "read_tlv"]


class NotLean(Exception):  # noqa: N818 - a signal to fall back, not an error for anyone
    """The input is not in a shape the lean reader reads; read it the general way."""


class TLV(NamedTuple):
    """One encoding: its tag, where it starts, where its content starts, where it ends."""

    tag: int
    start: int
    content: int
    end: int


#: TLV's constructor without the keyword handling of NamedTuple's (this is the hot loop).
_new_tlv = tuple.__new__

#: Longest length field we read: 4 octets (a CMS body is far below 4 GiB, and the caller
#: has already bounded the input size).
_MAX_LENGTH_OCTETS = 4


def read_tlv(data: bytes, pos: int, end: int) -> TLV:
    """The TLV at ``pos``, which must end by ``end`` (X.690 §8.1, DER's §10.1)."""
    if pos + 2 > end:
        raise NotLean
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise NotLean  # high tag number form: no CMS shape we read uses it
    length = data[pos + 1]
    content = pos + 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > _MAX_LENGTH_OCTETS or content + count > end:
            raise NotLean  # indefinite length (BER) or absurd
        if data[content] == 0:
            raise NotLean  # leading zero: not minimal (X.690 §10.1)
        length = int.from_bytes(data[content : content + count], "big")
        if length < 0x80:
            raise NotLean  # long form where the short one fits: not DER
        content += count
    stop = content + length
    if stop > end:
        raise NotLean
    return _new_tlv(TLV, (tag, pos, content, stop))


def children(data: bytes, parent: TLV) -> list[TLV]:
    """The TLVs inside a constructed ``parent``, which they must fill exactly."""
    if not parent[0] & 0x20:
        raise NotLean  # a primitive encoding has no children
    found: list[TLV] = []
    append = found.append
    pos, end = parent[2], parent[3]
    while pos < end:
        # the short form and one or two length octets inline (every TLV of the usual
        # shapes), the rest through read_tlv
        if pos + 2 <= end:
            tag, length = data[pos], data[pos + 1]
            if tag & 0x1F != 0x1F:
                if length < 0x80:
                    content = pos + 2
                elif length == 0x81 and pos + 3 <= end and data[pos + 2] >= 0x80:
                    length, content = data[pos + 2], pos + 3
                elif length == 0x82 and pos + 4 <= end and data[pos + 2]:
                    length, content = (data[pos + 2] << 8) | data[pos + 3], pos + 4
                else:
                    content = 0
                if content:
                    stop = content + length
                    if stop > end:
                        raise NotLean
                    append(_new_tlv(TLV, (tag, pos, content, stop)))
                    pos = stop
                    continue
        item = read_tlv(data, pos, end)
        append(item)
        pos = item[3]
    return found


def one(data: bytes, parent: TLV, tag: int) -> TLV:
    """The single TLV inside ``parent`` (an EXPLICIT tag's content), of tag ``tag``."""
    inner = children(data, parent)
    if len(inner) != 1 or inner[0].tag != tag:
        raise NotLean
    return inner[0]


def expect(item: TLV, tag: int) -> TLV:
    """``item`` if it has tag ``tag``."""
    if item.tag != tag:
        raise NotLean
    return item


def integer(data: bytes, item: TLV) -> int:
    """The value of a DER INTEGER (X.690 §8.3: minimal two's complement)."""
    if item.tag != 0x02:
        raise NotLean
    body = data[item.content : item.end]
    if not body:
        raise NotLean
    if len(body) > 1 and (
        (body[0] == 0x00 and body[1] < 0x80) or (body[0] == 0xFF and body[1] >= 0x80)
    ):
        raise NotLean  # not minimal
    return int.from_bytes(body, "big", signed=True)
