#!/usr/bin/env python3
"""The UA side's speed: ``AsyncUA.fetch`` per second, and the ``sipcert`` CLI's start-up.

One command does everything (see bench/README.md)::

    .venv/bin/python bench/client_bench.py --baseline main

It starts one real ``sipcert serve`` (TLS 1.3, SNI ``example.com``, SQLite) holding one
certificate for each of ``--aors`` AORs, then measures, in interleaved rounds, for this
working tree and (with ``--baseline REF``) the tree of git ``REF``, each in its own process:

* **sequential**: one ``AsyncUA`` (``store=`` the server, so no DNS; the CLI's defaults
  otherwise: no cache, transparency check on, which costs one ``GET /log/vkey`` per fetch
  of a Store without a log) fetches and validates every AOR once, one after the other, on
  reused connections; ``--no-verify-log`` variant too;
* **concurrent**: the same with ``--concurrency`` fetches in flight at once;
* **CLI start-up**: wall-clock of ``sipcert fetch --help``, ``sipcert locate AOR --store
  ...`` and a whole ``sipcert fetch AOR --store ...`` (one GET and its checks) as new
  processes (median of ``--cli-runs`` after one untimed run, with bytecode caching on as
  in an installed sipcert), next to ``python -c pass`` and to the imports every fetch needs
  whatever sipcert does (``asyncio`` and ``cryptography.x509``).

Every fetch must keep exactly the one certificate enrolled (or the run stops). The table
goes into docs/benchmarks.md between the ``bench:client:begin``/``bench:client:end`` markers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN = "<!-- bench:client:begin (written by bench/client_bench.py; edits here are overwritten) -->"
END = "<!-- bench:client:end -->"
DOMAIN = "example.com"

# Run in a child process with the tree under test on PYTHONPATH: fetch every AOR, report.
_FETCHER = r"""
import asyncio, json, sys, time
from pathlib import Path
from sipcert.client import AsyncUA, ClientConfig

port, ca, home, count, concurrency, verify_log = sys.argv[1:7]
count, concurrency = int(count), int(concurrency)
aors = [f"u{i}@example.com" for i in range(count)]

async def main():
    config = ClientConfig(
        store=f"127.0.0.1:{port}", ca_file=Path(ca), home=Path(home),
        transparency=verify_log == "1",
    )
    async with AsyncUA(config) as ua:
        await ua.fetch(aors[0])  # connect and warm up outside the clock
        passes = []
        for _ in range(2):  # the first pass sees each certificate for the first time
            start = time.perf_counter()
            cpu = time.process_time()
            if concurrency == 1:
                results = [await ua.fetch(a) for a in aors]
            else:
                sem = asyncio.Semaphore(concurrency)
                async def one(a):
                    async with sem:
                        return await ua.fetch(a)
                results = await asyncio.gather(*(one(a) for a in aors))
            elapsed = time.perf_counter() - start
            cpu = time.process_time() - cpu
            bad = [str(r.aor) for r in results if len(r.kept) != 1]
            passes.append({"rate": count / elapsed, "cpu_us": cpu / count * 1e6, "bad": bad[:5]})
        connections = len(getattr(ua.transport, "connections", []))
    print(json.dumps({"passes": passes, "connections": connections}))

asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def source_tree(ref: str, root: Path) -> Path:
    given = Path(ref)
    if (given / "src" / "sipcert").is_dir():
        return given.resolve() / "src"
    archive = root / "base.tar"
    with open(archive, "wb") as out:
        subprocess.run(
            ["git", "-C", str(ROOT), "archive", ref, "src"],
            stdout=out,
            check=True,
        )
    target = root / "tree-base"
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    return target / "src"


def prepare(root: Path, aors: int) -> tuple[Path, Path, Path]:
    """CA, the Store's TLS certificate, and a database with one certificate per AOR."""
    from sipcert.proto.aor import parse_aor
    from sipcert.proto.ca import TestCA
    from sipcert.proto.certs import certificate_der, generate_identity
    from sipcert.storage import StoredCertificate, open_store

    now = dt.datetime.now(dt.UTC)
    ca = TestCA.create(now=now, name="sipcert client bench CA")
    ca_file = root / "ca.pem"
    ca_file.write_bytes(ca.cert_pem)
    issued = ca.issue([DOMAIN], now=now, days=7)
    (root / "tls.pem").write_bytes(issued.cert_pem)
    (root / "tls.key").write_bytes(issued.key_pem)
    (root / "tls.key").chmod(0o600)
    db = root / "certificates.db"

    async def enroll() -> None:
        store = open_store(f"sqlite:///{db}")
        try:
            for i in range(aors):
                aor = f"u{i}@{DOMAIN}"
                cert = generate_identity(parse_aor(aor), now=now).certificate
                stored = StoredCertificate.from_der(
                    aor,
                    certificate_der(cert),
                    not_before=cert.not_valid_before_utc,
                    not_after=cert.not_valid_after_utc,
                    created=now,
                )
                await store.add(stored, max_per_aor=10, now=now)
        finally:
            await store.close()

    asyncio.run(enroll())
    from sipcert.server.credentials import FileCredentials

    FileCredentials(root / "users.json").add(f"u0@{DOMAIN}", "bench-password")
    config = root / "store.toml"
    port = free_port()
    config.write_text(
        f'listen = ["127.0.0.1:{port}"]\n'
        f'data_dir = "{root / "data"}"\n'
        f'db = "sqlite:///{db}"\n'
        f'credentials = "file://{root / "users.json"}"\n'
        'workers = 2\naccess_log = false\nlog_level = "warning"\n'
        f'[[domain]]\nname = "{DOMAIN}"\ntls_cert = "{root / "tls.pem"}"\n'
        f'tls_key = "{root / "tls.key"}"\n'
    )
    return ca_file, config, Path(str(port))


def start_store(config: Path, root: Path) -> subprocess.Popen[bytes]:
    log = open(root / "server.log", "wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from sipcert.cli import entry; entry()",
            "serve",
            "--config",
            str(config),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    return process


def wait_ready(process: subprocess.Popen[bytes], port: int, ca_file: Path, root: Path) -> None:
    ctx = ssl.create_default_context(cafile=ca_file)
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise SystemExit(f"the Store exited:\n{(root / 'server.log').read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
                with ctx.wrap_socket(raw, server_hostname=DOMAIN):
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit("the Store did not come up") from None
            time.sleep(0.2)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def env_for(tree: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    return env


def cli_env(tree: Path | None) -> dict[str, str]:
    """``env_for`` with bytecode caching on: an installed sipcert runs from its ``.pyc``
    files (pip compiles them), so the start-up figures must not include compiling every
    module from source, which ``PYTHONDONTWRITEBYTECODE`` in the caller's environment
    would make each run do (main's whole ``sipcert fetch``: 666 against 465 ms at load ~2.5,
    hyperfine, issue 13)."""
    env = env_for(tree)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def fetch_run(
    tree: Path | None, port: int, ca_file: Path, home: Path, count: int, concurrency: int, log: bool
) -> dict[str, Any]:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _FETCHER,
            str(port),
            str(ca_file),
            str(home),
            str(count),
            str(concurrency),
            "1" if log else "0",
        ],
        capture_output=True,
        text=True,
        env=env_for(tree),
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"the fetcher failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    for one in result["passes"]:
        if one["bad"]:
            raise SystemExit(f"fetches did not keep exactly one certificate: {one['bad']}")
    return result


def wall(command: Sequence[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, capture_output=True, check=True, timeout=60)
    return time.perf_counter() - start


def spread(values: Sequence[float], fmt: str = ",.0f") -> str:
    median = statistics.median(values)
    if len(values) == 1:
        return format(median, fmt)
    return f"{format(median, fmt)} ({format(min(values), fmt)}–{format(max(values), fmt)})"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def write_docs(section: str) -> None:
    text = DOCS.read_text()
    block = f"{BEGIN}\n{section}{END}"
    if BEGIN in text and END in text:
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    DOCS.write_text(text)


@contextlib.contextmanager
def workspace(keep: bool) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="sipcert-client-bench-"))
    try:
        yield folder
    finally:
        if keep:
            print(f"kept {folder}")
        else:
            subprocess.run(["rm", "-rf", str(folder)], check=False)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--aors", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--cli-runs", type=int, default=7, help="new processes per CLI figure")
    parser.add_argument("--baseline", metavar="REF", help="also measure the client of git REF")
    parser.add_argument("--no-write", action="store_true", help="leave docs/benchmarks.md alone")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python bench/client_bench.py " + shlex.join(sys.argv[1:])
    with workspace(args.keep) as root:
        ca_file, config, port_path = prepare(root, args.aors)
        port = int(str(port_path))
        trees: dict[str, Path | None] = {"this tree": None}
        if args.baseline:
            trees[f"`{args.baseline}`"] = source_tree(args.baseline, root)
        kinds = {
            "sequential, log check on (CLI default)": (1, True),
            "sequential, --no-verify-log": (1, False),
            f"{args.concurrency} concurrent, --no-verify-log": (args.concurrency, False),
            f"{args.concurrency} concurrent, log check on": (args.concurrency, True),
        }
        rates: dict[tuple[str, str], list[float]] = {}
        cpus: dict[tuple[str, str], list[float]] = {}
        conns: dict[tuple[str, str], int] = {}
        cli: dict[tuple[str, str], list[float]] = {}
        process = start_store(config, root)
        try:
            wait_ready(process, port, ca_file, root)
            for number in range(1, args.rounds + 1):
                print(f"round {number}/{args.rounds}", flush=True)
                for label, tree in trees.items():
                    home = root / f"home-{abs(hash(label))}"
                    for kind, (concurrency, log) in kinds.items():
                        result = fetch_run(tree, port, ca_file, home, args.aors, concurrency, log)
                        for name, one in zip(("first", "second"), result["passes"], strict=True):
                            key = (label, f"{kind}, {name} pass")
                            rates.setdefault(key, []).append(float(one["rate"]))
                            cpus.setdefault(key, []).append(float(one["cpu_us"]))
                            conns[key] = int(result["connections"])
                            print(f"  {label}, {key[1]}: {one['rate']:,.0f} fetches/s", flush=True)
                    env = cli_env(tree)
                    entry = [sys.executable, "-c", "from sipcert.cli import entry; entry()"]
                    figures = {
                        "python -c pass": [sys.executable, "-c", "pass"],
                        # What every fetch must import, sipcert or not: the floor under it.
                        "python -c 'import asyncio; from cryptography import x509'": [
                            sys.executable,
                            "-c",
                            "import asyncio; from cryptography import x509",
                        ],
                        "sipcert fetch --help": [*entry, "fetch", "--help"],
                        "sipcert locate AOR --store": [
                            *entry,
                            "locate",
                            f"u1@{DOMAIN}",
                            "--store",
                            f"127.0.0.1:{port}",
                        ],
                        "sipcert fetch AOR --store": [
                            *entry,
                            "fetch",
                            f"u1@{DOMAIN}",
                            "--store",
                            f"127.0.0.1:{port}",
                            "--ca-file",
                            str(ca_file),
                            "--home",
                            str(root / "cli-home"),
                        ],
                    }
                    for name, argv_ in figures.items():
                        wall(argv_, env)  # writes the tree's .pyc files, warms the page cache
                        runs = [wall(argv_, env) * 1e3 for _ in range(args.cli_runs)]
                        cli.setdefault((label, name), []).append(statistics.median(runs))
        finally:
            stop(process)
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        lines = [
            f"Measured {now} on {os.cpu_count()} × {cpu_model()}, Python "
            f"{platform.python_version()}, {args.rounds} interleaved rounds, {args.aors} AORs "
            "(one P-256 certificate each) on one `sipcert serve` (2 workers, TLS 1.3). Median "
            "(range). Command:\n",
            f"    {command}\n",
            "| client | fetches+validations/s | client CPU per fetch | connections used |",
            "|---|---|---|---|",
        ]
        for (label, kind), values in rates.items():
            lines.append(
                f"| {label}: {kind} | {spread(values)} | {spread(cpus[(label, kind)])} µs | "
                f"{conns[(label, kind)]} |"
            )
        lines += [
            "",
            f"CLI start-up, a new process each time (median of {args.cli_runs} runs per round "
            "after one untimed run, bytecode cached as installed; then median and range over "
            "the rounds):",
            "",
            "| tree | command | wall-clock |",
            "|---|---|---|",
        ]
        for (label, name), values in cli.items():
            lines.append(f"| {label} | `{name}` | {spread(values)} ms |")
        section = "\n".join(lines) + "\n"
        print(section)
        if not args.no_write:
            write_docs(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
