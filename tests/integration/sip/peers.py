"""SIPp, the real SIP peer of the integration tests: start one run, collect its verdict."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from sipcert.errors import TransportError
from sipcert.sip.transport import Transport
from tests.conftest import free_port, require_program

T = TypeVar("T")

#: The prologue of every SIPp scenario file.
HEADER = '<?xml version="1.0" encoding="ISO-8859-1" ?>\n<!DOCTYPE scenario SYSTEM "sipp.dtd">\n'

#: Scenario steps, SIPp as UAS: a 200 OK (with SIPp's To tag, no body) to the request received.
SEND_200 = """  <send>
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

    ]]>
  </send>
"""

#: Scenario steps, SIPp as UAS after an INVITE: answer 200 OK with SIPp's own SDP (``o=sipp 2
#: 2``), expect the ACK, then the caller's BYE, and confirm it with 200 OK.
ANSWER_SDP_THEN_BYE = """  <send retrans="500">
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
Content-Type: application/sdp
Content-Length: [len]

v=0
o=sipp 2 2 IN IP[local_ip_type] [local_ip]
s=sipp
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0

    ]]>
  </send>
  <recv request="ACK" crlf="true"/>
  <recv request="BYE"/>
  <send>
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

    ]]>
  </send>
"""


@dataclass
class Sipp:
    """One SIPp run: the process, its port and the files it writes."""

    process: asyncio.subprocess.Process
    command: list[str]
    port: int
    folder: Path
    name: str
    transport: Transport

    async def reach(self, send: Callable[[], Awaitable[T]], attempts: int = 50) -> T:
        """``await send()``, retried while SIPp's TCP socket is not listening yet.

        Over UDP there is no connection to refuse, so a transport error fails at once.
        """
        for _ in range(attempts):
            try:
                return await send()
            except TransportError:
                if self.transport is Transport.UDP:
                    raise
                await asyncio.sleep(0.1)
        pytest.fail("SIPp did not start listening")

    async def finish(self, timeout: float = 20.0) -> tuple[int, str]:
        """Wait for SIPp to exit; its exit code and a description for failure messages."""
        try:
            stdout, _ = await asyncio.wait_for(self.process.communicate(), timeout)
        except TimeoutError:
            self.process.kill()
            stdout, _ = await self.process.communicate()
        errors = self.folder / f"{self.name}-errors.log"
        messages = self.folder / f"{self.name}-messages.log"
        text = (
            f"$ {' '.join(self.command)}\nexit {self.process.returncode}\n"
            f"--- stdout ---\n{stdout.decode(errors='replace')[-2500:]}\n"
            f"--- errors ---\n{errors.read_text(errors='replace') if errors.exists() else ''}\n"
            f"--- messages ---\n{messages.read_text(errors='replace') if messages.exists() else ''}"
        )
        return self.process.returncode or 0, text


@contextlib.asynccontextmanager
async def sipp(
    scenario: str,
    folder: Path,
    name: str,
    *,
    transport: Transport = Transport.UDP,
    remote: tuple[str, int] | None = None,
) -> AsyncIterator[Sipp]:
    """Start SIPp with ``scenario`` for one call (UAS when ``remote`` is None)."""
    binary = require_program("sipp")
    path = folder / f"{name}.xml"
    path.write_text(scenario, encoding="iso-8859-1")
    port = free_port()
    command = [
        binary,
        *([f"{remote[0]}:{remote[1]}"] if remote else []),
        "-sf",
        str(path),
        "-i",
        "127.0.0.1",
        "-p",
        str(port),
        "-t",
        "u1" if transport is Transport.UDP else "t1",
        "-m",
        "1",
        "-timeout",
        "15s",
        "-timeout_error",
        "-nostdin",
        "-trace_err",
        "-error_file",
        str(folder / f"{name}-errors.log"),
        "-trace_msg",
        "-message_file",
        str(folder / f"{name}-messages.log"),
    ]
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=folder,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    run = Sipp(process, command, port, folder, name, transport)
    try:
        yield run
    finally:
        if process.returncode is None:
            process.kill()
            await process.communicate()
