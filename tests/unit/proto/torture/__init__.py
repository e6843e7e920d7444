"""The RFC 4475 and RFC 5118 torture messages, kept in the RFCs' own notation (see README)."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent
_TAG = re.compile(r"<hex>([0-9A-Fa-f]*)</hex>|<repeat count=([0-9]+)>(.*?)</repeat>", re.S)


def decode(text: str) -> bytes:
    """RFC 4475 §2 notation to bytes: CRLF line ends, ``<hex>`` octets, ``<repeat>`` runs."""
    out = bytearray()
    pos = 0
    wire = text.replace("\n", "\r\n")
    for match in _TAG.finditer(wire):
        out += wire[pos : match.start()].encode("utf-8")
        if match.group(1) is not None:
            out += bytes.fromhex(match.group(1))
        else:
            out += match.group(3).encode("utf-8") * int(match.group(2))
        pos = match.end()
    out += wire[pos:].encode("utf-8")
    return bytes(out)


@dataclass(frozen=True)
class Case:
    """One torture message and what the RFC says a UAS does with it."""

    name: str
    rfc: str
    section: str
    valid: bool
    udp: tuple[int, ...]
    tcp: tuple[int, ...]
    note: str

    @property
    def wire(self) -> bytes:
        folder = "rfc4475" if self.rfc == "4475" else "rfc5118"
        return decode((HERE / folder / f"{self.name}.txt").read_text(encoding="utf-8"))

    @property
    def is_request(self) -> bool:
        return not self.wire.startswith(b"SIP/")


def cases() -> list[Case]:
    """Every case of ``cases.toml``, in order."""
    table = tomllib.loads((HERE / "cases.toml").read_text(encoding="utf-8"))
    return [
        Case(
            name=entry["name"],
            rfc=str(entry["rfc"]),
            section=entry["section"],
            valid=entry["valid"],
            udp=tuple(entry["udp"]),
            tcp=tuple(entry.get("tcp", entry["udp"])),
            note=entry["note"],
        )
        for entry in table["case"]
    ]
