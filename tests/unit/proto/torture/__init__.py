"""The RFC 4475 and RFC 5118 torture messages, byte-exact in ``*.dat`` files (see README)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent


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
    def archived(self) -> bytes:
        """The ``.dat`` file's octets: the RFC's Appendix A archive member, untouched."""
        folder = "rfc4475" if self.rfc == "4475" else "rfc5118"
        return (HERE / folder / f"{self.name}.dat").read_bytes()

    @property
    def wire(self) -> bytes:
        """The message as sent: RFC 4475's files are wire bytes already (CRLF, NUL, bare CR);
        RFC 5118's archive ends its lines in bare LF, and its two §4.10 messages stop without
        the empty line, so those get CRLF and the empty line (RFC 3261 §7), nothing else."""
        data = self.archived
        if self.rfc == "4475":
            return data
        data = data.replace(b"\n", b"\r\n")
        return data if b"\r\n\r\n" in data else data + b"\r\n"

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
