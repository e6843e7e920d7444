#!/usr/bin/env python3
"""Instructions per ``AsyncUA.fetch`` under callgrind: the client's cost that load leaves alone.

One command (bench/README.md)::

    .venv/bin/python bench/client_instructions.py [--baseline main] [--count 50]

bench/client_bench.py's CPU per fetch moves with the load of the two shared cores; the
instructions the client process executes for the same fetches do not. This starts one real
``sipcert serve`` (as client_bench.py does), then runs the fetching client under
``valgrind --tool=callgrind`` twice per figure -- with ``--count`` fetches and with none,
both after the same connection and warm-up -- and divides the difference by ``--count``:

* **first pass**: ``--count`` AORs the client has not seen (decoding, SAN rule, the
  self-signature check), no log check;
* **second pass**: the same AORs again (only the validity period is checked anew).

``--baseline REF`` measures the client of git ``REF`` too, in the same run.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import client_bench

CHILD = r"""
import asyncio, sys
from pathlib import Path
from sipcert.client import AsyncUA, ClientConfig
port, ca, home, mode, count = sys.argv[1:6]
count = int(count)
aors = [f"u{i}@example.com" for i in range(1, 401)]

async def main():
    config = ClientConfig(store=f"127.0.0.1:{port}", ca_file=Path(ca), home=Path(home),
                          transparency=False)
    async with AsyncUA(config) as ua:
        await ua.fetch("u0@example.com")
        if mode == "second":
            for aor in aors[: int(sys.argv[6])]:
                await ua.fetch(aor)
        for aor in aors[:count]:
            assert len((await ua.fetch(aor)).kept) == 1

asyncio.run(main())
"""


def instructions(env: dict[str, str], argv: list[str], out: Path) -> int:
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *argv],
        capture_output=True,
        text=True,
        env={**env, "PYTHONHASHSEED": "0"},
        check=False,
    )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"the client failed under callgrind:\n{done.stderr[-3000:]}")
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=50, help="fetches per figure (<= 400)")
    parser.add_argument("--baseline", metavar="REF", help="also measure the client of git REF")
    args = parser.parse_args()
    count = min(args.count, 400)
    with client_bench.workspace(False) as root:
        ca_file, config, port_path = client_bench.prepare(root, 401)
        port = int(str(port_path))
        trees: dict[str, Path | None] = {"this tree": None}
        if args.baseline:
            trees[f"`{args.baseline}`"] = client_bench.source_tree(args.baseline, root)
        process = client_bench.start_store(config, root)
        rows = []
        try:
            client_bench.wait_ready(process, port, ca_file, root)
            for label, tree in trees.items():
                env = client_bench.env_for(tree)
                home = Path(tempfile.mkdtemp(dir=root))
                for mode in ("first", "second"):
                    base = [sys.executable, "-c", CHILD, str(port), str(ca_file), str(home), mode]
                    warm = [str(count)] if mode == "second" else []
                    none = instructions(env, [*base, "0", *warm], root / "cg.none")
                    some = instructions(env, [*base, str(count), *warm], root / "cg.some")
                    per = (some - none) / count
                    rows.append(f"| {label} | {mode} pass | {per / 1e3:,.0f}k |")
                    print(rows[-1], flush=True)
        finally:
            client_bench.stop(process)
    print("\n| client | pass | instructions per fetch |\n|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
