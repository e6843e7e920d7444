#!/usr/bin/env python3
"""Instructions per enrollment in ``sipcert serve`` under callgrind: what the load leaves alone.

One command (bench/README.md)::

    .venv/bin/python bench/enroll_instructions.py --baseline main [--counts 20,60]

CPU time per enrollment (bench/enroll_bench.py) moves with the load of the two shared cores;
the instructions the Store executes for the same requests do not. Each tree's Store runs
with one worker under ``valgrind --tool=callgrind`` (every thread counted) and one client
connection sends its requests one after the other, so no batch of the group commits holds
more than one call; the figure is (instructions with N2 requests - with N1) / (N2 - N1), so
start-up and shutdown cancel out. ``enroll`` is the whole draft §5.1 exchange (PUT, 401,
PUT with Digest, 201); ``401`` is the first PUT alone. User-space instructions only: the
kernel's share (system calls, about a quarter of the CPU time under the bench) is not in it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))
import enroll_bench as eb


async def _requests(port: int, ca_file: Path, jobs: list[tuple[str, bytes]], mode: str) -> None:
    from sipcert.proto.digest import DigestClient

    ctx = ssl.create_default_context(cafile=ca_file)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname=eb.DOMAIN
    )
    for user, der in jobs:
        target = f"/search-cgi?sip={quote(f'{user}@{eb.DOMAIN}', safe='')}"
        head = (
            f"PUT {target} HTTP/1.1\r\nHost: {eb.DOMAIN}\r\n"
            f"Content-Type: application/pkix-cert\r\nContent-Length: {len(der)}\r\n"
        )
        writer.write(f"{head}\r\n".encode() + der)
        status, headers, _ = await eb._read_response(reader)
        if status != 401:
            raise SystemExit(f"expected 401, got {status}")
        if mode == "401":
            continue
        answer = DigestClient(user, eb.PASSWORD).answer(
            [v for k, v in headers if k == "www-authenticate"], method="PUT", uri=target
        )
        writer.write(f"{head}Authorization: {answer}\r\n\r\n".encode() + der)
        status, _, _ = await eb._read_response(reader)
        if status != 201:
            raise SystemExit(f"expected 201, got {status}")
    writer.close()


def _serve(folder: Path, src: Path, tls: tuple[Path, Path], users: Path) -> tuple[int, Path]:
    """Start one Store (one worker) under callgrind; its port and callgrind output file."""
    port = eb.free_port()
    config = folder / "store.toml"
    config.write_text(
        f'listen = ["127.0.0.1:{port}"]\ndata_dir = "{folder / "data"}"\n'
        f'db = "sqlite:///{folder / "certificates.db"}"\ncredentials = "file://{users}"\n'
        'workers = 1\naccess_log = true\nlog_level = "warning"\nauth_failures = 100000\n'
        "[policy]\nmax_per_aor = 1000\n"
        f'[[domain]]\nname = "{eb.DOMAIN}"\ntls_cert = "{tls[0]}"\ntls_key = "{tls[1]}"\n'
    )
    out = folder / "callgrind.out"
    process = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-c",
            "from sipcert.cli import entry; entry()",
            "serve",
            "--config",
            str(config),
        ],
        # A fixed hash seed: start-up's dict work would otherwise vary by millions of
        # instructions between runs, more than a few dozen requests make.
        env={**os.environ, "PYTHONPATH": str(src), "PYTHONHASHSEED": "0"},
        stdout=open(folder / "server.log", "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    folder.joinpath("pid").write_text(str(process.pid))
    return port, out


def _wait(port: int, ca_file: Path, timeout: float = 600.0) -> None:
    ctx = ssl.create_default_context(cafile=ca_file)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                with ctx.wrap_socket(raw, server_hostname=eb.DOMAIN):
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit("the Store under callgrind did not come up") from None
            time.sleep(1)


def instructions(
    root: Path, src: Path, count: int, mode: str, tls: tuple[Path, Path], users: Path, ca: Path
) -> int:
    """All instructions of one Store run answering ``count`` requests of ``mode``."""
    folder = Path(tempfile.mkdtemp(prefix=f"{mode}-{count}-", dir=root))
    port, _ = _serve(folder, src, tls, users)
    pid = int(folder.joinpath("pid").read_text())
    try:
        _wait(port, ca)
        jobs = eb.make_certificates(count, 2048, 0)
        asyncio.run(_requests(port, ca, jobs, mode))
    finally:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
    total = 0
    for path in folder.glob("callgrind.out*"):
        found = re.search(r"^(?:summary|totals): (\d+)", path.read_text(errors="replace"), re.M)
        total += int(found[1]) if found else 0
    if not total:
        raise SystemExit(f"no callgrind totals in {folder}")
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", metavar="REF", help="also count the Store of git REF")
    parser.add_argument("--counts", default="20,60", help="N1,N2 requests (default 20,60)")
    parser.add_argument("--modes", default="enroll,401")
    args = parser.parse_args(argv)
    n1, n2 = (int(n) for n in args.counts.split(","))
    from sipcert.proto.ca import TestCA

    root = Path(tempfile.mkdtemp(prefix="sipcert-enroll-instr-"))
    try:
        now = dt.datetime.now(dt.UTC)
        ca = TestCA.create(now=now, name="sipcert enroll instructions CA")
        ca_file = root / "ca.pem"
        ca_file.write_bytes(ca.cert_pem)
        issued = ca.issue([eb.DOMAIN], now=now, days=7)
        tls = (root / "tls.pem", root / "tls.key")
        tls[0].write_bytes(issued.cert_pem)
        tls[1].write_bytes(issued.key_pem)
        tls[1].chmod(0o600)
        users = root / "users.json"
        eb.write_users(users, 2048)
        trees = {"this tree": eb.ROOT / "src"}
        if args.baseline:
            trees[f"`{args.baseline}`"] = eb.source_tree(args.baseline, root)
        print(f"| tree | request | instructions per request (N = {n1} → {n2}) |")
        print("|---|---|---|")
        for mode in args.modes.split(","):
            for label, src in trees.items():
                low = instructions(root, src, n1, mode, tls, users, ca_file)
                high = instructions(root, src, n2, mode, tls, users, ca_file)
                what = "enrollment (PUT, 401, PUT, 201)" if mode == "enroll" else "first PUT (401)"
                print(f"| {label} | {what} | {(high - low) / (n2 - n1):,.0f} |", flush=True)
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
