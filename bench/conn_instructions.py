#!/usr/bin/env python3
"""Instructions per GET of ``sipcert serve`` over TLS, transport included, under callgrind.

One command (bench/README.md)::

    .venv/bin/python bench/conn_instructions.py [--baseline main] [--count 200] [--closes 60]

bench/hotget_instructions.py counts the answer alone (no sockets); bench/store_vs_nginx.py
measures CPU per GET under wrk, which moves with the load of the two shared cores. This one
counts what the worker executes for whole requests on real TLS connections: uvloop's
transport, the TLS layer (libssl, libcrypto), the guard and the answer. Each tree's Store
(one worker, the bench's 100k-AOR corpus, access log on) runs under ``valgrind
--tool=callgrind``; after a warm-up the counters are zeroed (``callgrind_control -z``), a
client in another process makes ``count`` keep-alive GETs on one TLS 1.3 connection, the
counters are dumped, then ``closes`` connections with one ``Connection: close`` GET each
(resuming the TLS session with its ticket, as wrk does) and a second dump. Random AORs from
a fixed seed, so every tree answers the same ones. User-space instructions only: the
kernel's system calls are not in it (count them with ``strace -c``).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import store_vs_nginx as sv

AORS = 100_000


def _get(query: str, close: bool) -> bytes:
    extra = "Connection: close\r\n" if close else ""
    return (
        f"GET /search-cgi?{query} HTTP/1.1\r\nHost: {sv.SNI}\r\n{extra}User-Agent: bench\r\n\r\n"
    ).encode()


def _read_answer(tls: ssl.SSLSocket, pending: bytes) -> bytes:
    """Read one answer (head and ``Content-Length`` body); the bytes after it."""
    data = pending
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(65536)
        if not chunk:
            raise SystemExit("the Store closed the connection early")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if status != 200:
        raise SystemExit(f"expected 200, got {status}")
    found = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    size = int(found[1]) if found else 0
    while len(rest) < size:
        chunk = tls.recv(65536)
        if not chunk:
            raise SystemExit("short body")
        rest += chunk
    return rest[size:]


def connect(ctx: ssl.SSLContext, port: int) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=120)
    return ctx.wrap_socket(raw, server_hostname=sv.SNI)


def keep_alive(tls: ssl.SSLSocket, queries: list[str]) -> None:
    """``queries`` one after the other on the open connection ``tls``."""
    pending = b""
    for query in queries:
        tls.sendall(_get(query, False))
        pending = _read_answer(tls, pending)


def closes(
    ctx: ssl.SSLContext, port: int, queries: list[str], session: ssl.SSLSession | None
) -> None:
    """One connection per query, resuming ``session`` (wrk resumes too), closed like wrk."""
    for query in queries:
        with socket.create_connection(("127.0.0.1", port), timeout=120) as raw:
            tls = ctx.wrap_socket(raw, server_hostname=sv.SNI, session=session)
            tls.sendall(_get(query, True))
            _read_answer(tls, b"")
            if not tls.session_reused:
                raise SystemExit("the TLS session was not resumed")
            while tls.recv(65536):  # the server's close_notify ends the stream
                pass
            session = tls.session or session
            try:  # our close_notify, as wrk's SSL_shutdown sends it
                tls.unwrap()
            except (OSError, ValueError):
                pass
            tls.close()


def callgrind_total(out: Path) -> int:
    found = re.search(r"^(?:summary|totals): (\d+)", out.read_text(errors="replace"), re.M)
    return int(found[1]) if found else 0


def dump(pid: int, folder: Path, before: set[Path]) -> int:
    """Dump (and zero) the counters of ``pid``; the instructions since the last zero/dump."""
    subprocess.run(
        ["callgrind_control", "-d", str(pid)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    deadline = time.monotonic() + 120
    while True:
        new = set(folder.glob("callgrind.out*")) - before
        done = [p for p in new if callgrind_total(p)]
        if done:
            before.update(new)
            return sum(callgrind_total(p) for p in done)
        if time.monotonic() > deadline:
            raise SystemExit("no callgrind dump appeared")
        time.sleep(0.5)


def measure(
    root: Path,
    label: str,
    src: Path | None,
    fx: sv.Fixture,
    corpus: sv.Corpus,
    count: int,
    n_close: int,
) -> tuple[float, float]:
    """Instructions per keep-alive GET and per close GET of one Store (``src``) or nginx."""
    folder = root / f"target-{label.strip('`').replace(' ', '-').replace('/', '-')}"
    port = sv.free_port()
    out = folder / "callgrind.out"
    if src is None:  # nginx, one process (no master), the bench's configuration
        config = sv.nginx_config(fx, corpus, folder, 1, port)
        server = [sv.nginx_binary(), "-e", "stderr", "-p", str(folder), "-c", str(config)]
        server += ["-g", "master_process off;"]
    else:
        config = sv.store_config(fx, folder, corpus.db_url, 1, port)
        server = [sys.executable, "-c", "from sipcert.cli.main import entry; entry()"]
        server += ["serve", "--config", str(config)]
    process = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *server],
        env={**os.environ, "PYTHONPATH": str(src or ""), "PYTHONHASHSEED": "0"},
        stdout=open(folder / "server.log", "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        ctx = ssl.create_default_context(cafile=fx.ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        deadline = time.monotonic() + 600
        while True:
            try:
                tls = connect(ctx, port)
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit(
                        f"{label}: the Store under callgrind did not come up"
                    ) from None
                time.sleep(1)
        draw = random.Random(13)  # noqa: S311
        queries = [sv.aor_query(draw.randrange(AORS)) for _ in range(count + n_close + 20)]
        with tls:
            keep_alive(tls, queries[:10])  # warm-up: both paths once
            closes(ctx, port, queries[10:20], tls.session)
            seen: set[Path] = set()
            dump(process.pid, folder, seen)  # the start-up and warm-up, dropped
            keep_alive(tls, queries[20 : 20 + count])  # the handshake is not in it
            per_get = dump(process.pid, folder, seen) / count
            closes(ctx, port, queries[20 + count :], tls.session)
            per_close = dump(process.pid, folder, seen) / n_close
        return per_get, per_close
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", metavar="REF", help="also count the Store of git REF")
    parser.add_argument("--count", type=int, default=200, help="keep-alive GETs (default 200)")
    parser.add_argument("--closes", type=int, default=60, help="close connections (default 60)")
    parser.add_argument("--cache-dir", type=Path, default=sv.CACHE, help="corpus cache")
    parser.add_argument("--keep", action="store_true", help="keep the callgrind dumps")
    parser.add_argument("--nginx", action="store_true", help="also count nginx (1 process)")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="sipcert-conn-instr-", dir="/tmp"))
    try:
        fx = sv.prepare(root)
        corpus = sv.corpus(args.cache_dir, AORS)
        trees: dict[str, Path | None] = {"this tree": sv.ROOT / "src"}
        if args.baseline:
            trees[f"`{args.baseline}`"] = sv.source_tree("base", args.baseline, root)
        if args.nginx:
            trees["nginx"] = None
        print(
            f"| tree | keep-alive GET (of {args.count}) | "
            f"`Connection: close` GET, resumed TLS 1.3 (of {args.closes}) |"
        )
        print("|---|---|---|")
        for label, src in trees.items():
            per_get, per_close = measure(root, label, src, fx, corpus, args.count, args.closes)
            print(f"| {label} | {per_get:,.0f} | {per_close:,.0f} |", flush=True)
    finally:
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            subprocess.run(["rm", "-rf", str(root)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
