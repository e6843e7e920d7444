"""SIPp, the real SIP peer of the integration tests: start one run, collect its verdict."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from sipcert.sip.transport import Transport
from tests.conftest import require_program

#: The prologue of every SIPp scenario file.
HEADER = '<?xml version="1.0" encoding="ISO-8859-1" ?>\n<!DOCTYPE scenario SYSTEM "sipp.dtd">\n'


def free_port() -> int:
    """A port free for UDP and TCP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


@dataclass
class Sipp:
    """One SIPp run: the process, its port and the files it writes."""

    process: asyncio.subprocess.Process
    command: list[str]
    port: int
    folder: Path
    name: str

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
    run = Sipp(process, command, port, folder, name)
    try:
        yield run
    finally:
        if process.returncode is None:
            process.kill()
            await process.communicate()
