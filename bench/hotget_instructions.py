#!/usr/bin/env python3
"""Instructions and CPU per hot GET answer, in-process: the Python work the load leaves alone.

One command (bench/README.md)::

    .venv/bin/python bench/hotget_instructions.py --db CORPUS.db [--src OTHER/src] [--count 2000]

The wrk figures of bench/store_vs_nginx.py move with the load of the two shared cores; the
instructions of the same answers do not. The child process opens a copy of a corpus database
(bench/store_vs_nginx.py builds one: ``CACHE/corpus-v1-100000/certificates.db``), makes the
Store's app and hot GET (server.hotget) as ``sipcert serve`` does, with a buffered access log
into ``/dev/null``, and answers ``count`` simple GET heads for uniformly random AORs (a fixed
seed: every tree answers the same AORs) -- no sockets, no TLS. Each figure is (count answers -
0 answers) / count under ``valgrind --tool=callgrind``; ``--cpu`` also prints the process time
per answer of a run outside valgrind (noisy under load).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import asyncio, random, sys, time
sys.path.insert(0, sys.argv[1])
from sipcert.proto.digest import MemoryNonceCounter
from sipcert.proto.hotget import parse_simple_get
from sipcert.proto.store import StorePolicy
from sipcert.server.app import AccessLog, StoreApp
from sipcert.server.credentials import FileCredentials
from sipcert.server.hotget import hot_get_for
from sipcert.server.metrics import Metrics
from sipcert.storage import open_store
db, aors, count, seed = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
draw = random.Random(seed)
heads = [
    f"GET /search-cgi?email=u{draw.randrange(aors):07d}%40example.com HTTP/1.1\r\n"
    "Host: example.com\r\nUser-Agent: sipcert\r\nAccept: */*\r\n\r\n".encode()
    for _ in range(count)
]
async def main():
    storage = open_store(f"sqlite:///{db}")
    app = StoreApp(
        domains={"example.com": object()}, storage=storage,
        credentials=FileCredentials(sys.argv[6]), policy=StorePolicy(max_age=30),
        nonce_secret=b"k" * 32, nonce_counter=MemoryNonceCounter(), metrics=Metrics(),
    )
    sink = AccessLog(open("/dev/null", "w"))
    hot = hot_get_for(app, sink)
    assert hot is not None
    warm = parse_simple_get(heads[0]) if heads else None
    if warm is not None:
        hot.answer(warm, "example.com", "127.0.0.1")
    started = time.process_time()
    for data in heads:
        head = parse_simple_get(data)
        wire = hot.answer(head, "example.com", "127.0.0.1")
        assert wire is not None and wire.startswith(b"HTTP/1.1 200 "), wire[:80]
    spent = time.process_time() - started
    sink.close()
    print(f"cpu {spent / max(count, 1) * 1e6:.1f}")
asyncio.run(main())
"""


def run_child(src: Path, db: Path, users: Path, aors: int, count: int, *, valgrind: bool) -> str:
    command = [sys.executable, "-c", CHILD, str(src), str(db), str(aors), str(count), "13"]
    command.append(str(users))
    if valgrind:
        command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *command]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"the child failed:\n{result.stderr[-4000:]}")
    return result.stdout + result.stderr


def instructions(src: Path, db: Path, users: Path, aors: int, count: int) -> int:
    """Instructions of a child that answers ``count`` GETs, under callgrind."""
    out = run_child(src, db, users, aors, count, valgrind=True)
    match = re.search(r"Collected : (\d+)", out)
    if match is None:
        raise SystemExit(f"no callgrind total in:\n{out}")
    return int(match[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", type=Path, required=True, help="a corpus certificates.db")
    parser.add_argument("--aors", type=int, default=100_000, help="AORs in that corpus")
    parser.add_argument("--src", type=Path, action="append", help="sipcert src/ (repeatable)")
    parser.add_argument("--count", type=int, default=2000, help="answers per figure")
    parser.add_argument("--cpu", action="store_true", help="also process time per answer")
    args = parser.parse_args(argv)
    sources = args.src or [ROOT / "src"]
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "certificates.db"
        shutil.copyfile(args.db, db)
        users = Path(tmp) / "users.json"
        users.write_text("{}")
        for src in sources:
            base = instructions(src, db, users, args.aors, 0)
            total = instructions(src, db, users, args.aors, args.count)
            line = f"{src}: {(total - base) / args.count:,.0f} instructions per answer"
            if args.cpu:
                out = run_child(src, db, users, args.aors, args.count * 10, valgrind=False)
                cpu = re.search(r"cpu ([0-9.]+)", out)
                line += f", {cpu[1] if cpu else '?'} us CPU per answer"
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
