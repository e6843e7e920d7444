#!/usr/bin/env python3
"""Enrollments per second through ``sipcert serve`` (401 + authenticated PUT), in one run.

One command does everything (see bench/README.md)::

    .venv/bin/python bench/enroll_bench.py --baseline main

Each enrollment is what a UA does (draft §5.1): ``PUT /search-cgi?sip=<aor>`` with a new
self-signed certificate and no credentials, the Store's ``401`` with a fresh Digest nonce,
then the same PUT with an ``Authorization`` answer (SHA-256), answered ``201``. The clients
are ``--clients`` asyncio tasks spread over ``--procs`` processes, each task on one
keep-alive TLS 1.3 connection with SNI ``example.com``, verified against the test CA. The
certificates (P-256, one per enrollment, ``--users`` different AORs in turn) are made before
the clock starts, so the client's crypto is not measured.

Targets, measured in interleaved rounds, each on its own fresh database in a temporary
folder on the same disk:

* ``store``: ``sipcert serve`` of this working tree, SQLite, ``synchronous=FULL``;
* ``store-tlog``: the same with the transparency log on (each enrollment also logs);
* ``base``: the same server from git ``--baseline REF`` (``git archive``), when given;
* ``fsync``: the reference: one process committing one-row transactions (the same table
  and pragmas, ``synchronous=FULL``, WAL) as fast as it can on the same disk: what one
  fsync per enrollment allows.

The server's CPU per enrollment (user + system of the parent and its workers, from
``/proc``) is reported next to the rate. The table goes into docs/benchmarks.md between the
``bench:enroll:begin`` and ``bench:enroll:end`` markers. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import pickle
import platform
import shlex
import signal
import socket
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN = "<!-- bench:enroll:begin (written by bench/enroll_bench.py; edits here are overwritten) -->"
END = "<!-- bench:enroll:end -->"
DOMAIN = "example.com"
PASSWORD = "bench-password"  # noqa: S105 (a throw-away test user's)
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- set-up ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_users(path: Path, users: int) -> None:
    """A users file with ``users`` AORs sharing one password (FileCredentials' format)."""
    from sipcert.proto.digest import Algorithm, compute_ha1

    entries = {
        f"u{i}@{DOMAIN}": {
            str(alg): compute_ha1(alg, f"u{i}", DOMAIN, PASSWORD)
            for alg in (Algorithm.MD5, Algorithm.SHA256)
        }
        for i in range(users)
    }
    path.write_text(json.dumps({"version": 1, "users": entries}))
    path.chmod(0o600)
    from sipcert.server.credentials import FileCredentials

    if len(FileCredentials(path).list()) != users:  # the Store must read what we wrote
        raise SystemExit("the users file was not read back")


def make_certificates(count: int, users: int, offset: int) -> list[tuple[str, bytes]]:
    """``count`` (AOR user, DER) pairs, a new P-256 key and certificate each."""
    from sipcert.proto.aor import parse_aor
    from sipcert.proto.certs import certificate_der, generate_identity

    now = dt.datetime.now(dt.UTC)
    out = []
    for n in range(offset, offset + count):
        user = f"u{n % users}"
        identity = generate_identity(parse_aor(f"{user}@{DOMAIN}"), now=now)
        out.append((user, certificate_der(identity.certificate)))
    return out


@dataclass
class Target:
    name: str
    tree: Path | None = None  # PYTHONPATH for a --baseline tree
    tlog: bool = False
    profile: Path | None = None  # cProfile output of a one-worker Store
    stored: int = 0  # enrollments answered 201 so far
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    folder: Path = Path()
    rates: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # server CPU µs per enrollment
    client_cpu: list[float] = field(default_factory=list)  # the clients' CPU µs per enrollment
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)


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


def start_store(
    target: Target, root: Path, tls: tuple[Path, Path], users: Path, workers: int
) -> None:
    folder = root / target.name
    folder.mkdir()
    target.folder = folder
    target.port = free_port()
    cert, key = tls
    config = folder / "store.toml"
    text = (
        f'listen = ["127.0.0.1:{target.port}"]\n'
        f'data_dir = "{folder / "data"}"\n'
        f'db = "sqlite:///{folder / "certificates.db"}"\n'
        f'credentials = "file://{users}"\n'
        f"workers = {workers}\n"
        "access_log = true\n"
        'log_level = "warning"\n'
        # One address sends every enrollment: the guessing limiter must not refuse it
        # (every answer here is right, so it never charges; the numbers only make sure).
        "auth_failures = 100000\n"
    )
    if target.tlog:
        text += "transparency = true\n"
    text += (
        "[policy]\nmax_per_aor = 1000\n"
        f'[[domain]]\nname = "{DOMAIN}"\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
    )
    config.write_text(text)
    env = dict(os.environ)
    if target.tree is not None:
        env["PYTHONPATH"] = str(target.tree)
    log = open(folder / "server.log", "wb")
    target.process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _launcher(target.profile),
            "serve",
            "--config",
            str(config),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    log.close()


def _launcher(profile: Path | None) -> str:
    if profile is None:
        return "from sipcert.cli import entry; entry()"
    return (
        "import cProfile, sys, time; sys.argv[0] = 'sipcert'; from sipcert.cli import entry; "
        "p = cProfile.Profile(time.thread_time)\n"
        f"try:\n p.runcall(entry)\nfinally:\n p.dump_stats({str(profile)!r})"
    )


def wait_ready(target: Target, ca_file: Path, timeout: float = 30.0) -> None:
    ctx = ssl.create_default_context(cafile=ca_file)
    deadline = time.monotonic() + timeout
    assert target.process is not None
    while True:
        if target.process.poll() is not None:
            raise SystemExit(f"{target.name} exited:\n{(target.folder / 'server.log').read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", target.port), timeout=2) as raw:
                with ctx.wrap_socket(raw, server_hostname=DOMAIN):
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"{target.name} did not come up") from None
            time.sleep(0.2)


def stop(target: Target) -> None:
    process = target.process
    if process is not None and process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def tree_cpu(pid: int) -> float:
    """User + system seconds of ``pid`` and its live children (the Store's workers)."""
    total = 0.0
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except (OSError, IndexError, ValueError):
            continue
        todo += [int(c) for c in children]
    return total


# -- the reference: one fsync per enrollment -------------------------------------------------


def fsync_rate(folder: Path, count: int) -> float:
    """One-row ``BEGIN IMMEDIATE``/``COMMIT`` transactions per second, synchronous=FULL, WAL."""
    path = folder / f"fsync-{time.monotonic_ns()}.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute(
        "CREATE TABLE certificates (id INTEGER PRIMARY KEY, aor TEXT, sha256 TEXT, der BLOB, "
        "UNIQUE (aor, sha256))"
    )
    blob = os.urandom(400)
    start = time.perf_counter()
    for n in range(count):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT INTO certificates (aor, sha256, der) VALUES (?, ?, ?)",
            (f"u{n}@{DOMAIN}", os.urandom(16).hex(), blob),
        )
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")
    return count / elapsed


# -- the storage alone: SqliteStore.add from concurrent tasks (this tree or a --baseline one) --

_STORAGE = r"""
import asyncio, json, os, sys, time
from datetime import UTC, datetime, timedelta
from sipcert.storage import SqliteStore, StoredCertificate

path, count, tasks = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
now = datetime.now(UTC)
certs = [
    StoredCertificate.from_der(f"u{i % 2048}@example.com", os.urandom(400),
        not_before=now - timedelta(days=1), not_after=now + timedelta(days=30), created=now)
    for i in range(count)
]

async def main():
    store = SqliteStore(path)
    position = 0
    async def one():
        nonlocal position
        while position < count:
            cert = certs[position]
            position += 1
            assert await store.add(cert, max_per_aor=1000, now=now)
    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(tasks)))
    elapsed = time.perf_counter() - start
    adds = getattr(store, "adds", None)
    await store.close()
    batch = adds.batched / adds.commits if adds is not None and adds.commits else 1.0
    print(json.dumps({"rate": count / elapsed, "batch": batch}))

asyncio.run(main())
"""


def storage_rate(folder: Path, tree: Path | None, count: int, tasks: int) -> tuple[float, float]:
    """``SqliteStore.add`` calls per second from ``tasks`` concurrent tasks, and the mean batch."""
    path = folder / f"storage-{time.monotonic_ns()}.db"
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    done = subprocess.run(
        [sys.executable, "-c", _STORAGE, str(path), str(count), str(tasks)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")
    return float(result["rate"]), float(result["batch"])


# -- the client (runs in --procs child processes) --------------------------------------------


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, list[tuple[str, str]], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = []
    length = 0
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        headers.append((name.strip().lower(), value.strip()))
        if name.strip().lower() == "content-length":
            length = int(value)
    body = await reader.readexactly(length) if length else b""
    return status, headers, body


async def _client_main(
    port: int, ca_file: str, jobs: list[tuple[str, bytes]], clients: int
) -> dict[str, object]:
    from sipcert.proto.digest import DigestClient

    ctx = ssl.create_default_context(cafile=ca_file)
    connections = []
    for _ in range(clients):
        connections.append(
            await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=DOMAIN)
        )
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    position = 0

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal position
        while position < len(jobs):
            user, der = jobs[position]
            position += 1
            target = f"/search-cgi?sip={quote(f'{user}@{DOMAIN}', safe='')}"
            head = (
                f"PUT {target} HTTP/1.1\r\nHost: {DOMAIN}\r\n"
                f"Content-Type: application/pkix-cert\r\nContent-Length: {len(der)}\r\n"
            )
            began = time.perf_counter()
            writer.write(f"{head}\r\n".encode() + der)
            status, headers, _ = await _read_response(reader)
            if status != 401:
                statuses[status] = statuses.get(status, 0) + 1
                continue
            digest = DigestClient(user, PASSWORD)
            answer = digest.answer(
                [v for k, v in headers if k == "www-authenticate"], method="PUT", uri=target
            )
            writer.write(f"{head}Authorization: {answer}\r\n\r\n".encode() + der)
            status, _, _ = await _read_response(reader)
            latencies.append(time.perf_counter() - began)
            statuses[status] = statuses.get(status, 0) + 1

    start = time.perf_counter()
    cpu = time.process_time()
    await asyncio.gather(*(one(r, w) for r, w in connections))
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    for _, writer in connections:
        writer.close()
    return {"elapsed": elapsed, "cpu": cpu, "statuses": statuses, "latencies": latencies}


def client_process(argv: Sequence[str]) -> int:
    port, ca_file, jobs_file, clients = argv[0], argv[1], argv[2], int(argv[3])
    with open(jobs_file, "rb") as file:
        jobs = pickle.load(file)  # noqa: S301 (our own file, written by the parent)
    result = asyncio.run(_client_main(int(port), ca_file, jobs, clients))
    print(json.dumps(result), flush=True)
    return 0


# -- one round against one target ------------------------------------------------------------


def run_round(args: argparse.Namespace, target: Target, ca_file: Path, jobs: list[Path]) -> None:
    assert target.process is not None
    per_proc = [
        args.clients // args.procs + (1 if i < args.clients % args.procs else 0)
        for i in range(args.procs)
    ]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--client",
                str(target.port),
                str(ca_file),
                str(jobs[i]),
                str(n),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i, n in enumerate(per_proc)
    ]
    for proc in procs:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit("a client process failed to connect")
    cpu_before = tree_cpu(target.process.pid)
    start = time.perf_counter()
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        results.append(json.loads(out.strip().splitlines()[-1]))
    elapsed = time.perf_counter() - start
    cpu = tree_cpu(target.process.pid) - cpu_before
    statuses: dict[str, int] = {}
    latencies: list[float] = []
    for result in results:
        for status, n in result["statuses"].items():
            statuses[status] = statuses.get(status, 0) + n
        latencies += result["latencies"]
    done = statuses.get("201", 0)
    target.client_cpu.append(sum(r["cpu"] for r in results) / max(done, 1) * 1e6)
    if done != sum(statuses.values()):
        raise SystemExit(f"{target.name}: not every enrollment was a 201: {statuses}")
    target.rates.append(done / elapsed)
    target.cpu.append(cpu / done * 1e6)
    latencies.sort()
    target.p50.append(latencies[len(latencies) // 2] * 1e3)
    target.p99.append(latencies[int(len(latencies) * 0.99)] * 1e3)
    print(
        f"  {target.name}: {done / elapsed:,.0f} enrollments/s, server CPU "
        f"{cpu / done * 1e6:,.0f} µs each (clients {target.client_cpu[-1]:,.0f} µs), "
        f"p50 {target.p50[-1]:.1f} ms, p99 {target.p99[-1]:.1f} ms",
        flush=True,
    )


def check_stored(target: Target, expected: int) -> None:
    """Every 201 really is in the database, durably committed."""
    conn = sqlite3.connect(f"file:{target.folder / 'certificates.db'}?mode=ro", uri=True)
    try:
        (count,) = conn.execute("SELECT count(*) FROM certificates").fetchone()
    finally:
        conn.close()
    if count != expected:
        raise SystemExit(f"{target.name}: {count} certificates stored, {expected} answered 201")


# -- the report ------------------------------------------------------------------------------


def spread(values: Sequence[float], fmt: str = ",.0f") -> str:
    if not values:
        return "—"
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


def render(
    args: argparse.Namespace,
    targets: Sequence[Target],
    fsync: list[float],
    storage: dict[str, list[tuple[float, float]]],
    command: str,
) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    ref = statistics.median(fsync)
    rows = [
        "| target | enrollments/s | × one-fsync-per-enrollment | server CPU per enrollment | "
        "clients' CPU per enrollment | p50 latency | p99 latency |",
        "|---|---|---|---|---|---|---|",
        f"| `fsync` reference: one SQLite commit per row, synchronous=FULL | {spread(fsync)} | "
        "1.00 | — | — | — | — |",
    ]
    for t in targets:
        ratio = statistics.median(t.rates) / ref
        rows.append(
            f"| `{t.name}` | {spread(t.rates)} | {ratio:.2f} | {spread(t.cpu)} µs | "
            f"{spread(t.client_cpu)} µs | "
            f"{spread(t.p50, '.1f')} ms | {spread(t.p99, '.1f')} ms |"
        )
    return (
        f"Measured {now} on {os.cpu_count()} × {cpu_model()}, Python {platform.python_version()}, "
        f"{args.rounds} interleaved rounds of {args.count:,} enrollments per target "
        f"({args.tlog_count:,} for `store-tlog`) "
        f"({args.clients} clients in {args.procs} processes, one keep-alive TLS connection each; "
        f"`sipcert serve` with {args.workers} workers, SQLite `synchronous=FULL`). "
        "Median (range). Command:\n\n"
        f"    {command}\n\n" + "\n".join(rows) + "\n" + storage_rows(args, storage, fsync)
    )


def storage_rows(
    args: argparse.Namespace, storage: dict[str, list[tuple[float, float]]], fsync: list[float]
) -> str:
    ref = statistics.median(fsync)
    rows = [
        "",
        f"The storage alone in the same rounds: `SqliteStore.add` from {args.clients} "
        "concurrent tasks in one process, same disk, `synchronous=FULL`:",
        "",
        "| tree | adds/s | × one-fsync-per-enrollment | mean adds per commit |",
        "|---|---|---|---|",
    ]
    for label, values in storage.items():
        rates = [r for r, _ in values]
        batches = [b for _, b in values]
        rows.append(
            f"| {label} | {spread(rates)} | {statistics.median(rates) / ref:.2f} | "
            f"{spread(batches, '.1f')} |"
        )
    return "\n".join(rows) + "\n"


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


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=6000, help="enrollments per round and target")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument("--workers", type=int, default=2, help="workers of each sipcert serve")
    parser.add_argument("--users", type=int, default=2048, help="different AORs enrolled in turn")
    parser.add_argument("--baseline", metavar="REF", help="also measure the Store of git REF")
    parser.add_argument("--no-tlog", action="store_true", help="skip the store-tlog target")
    parser.add_argument(
        "--tlog-count",
        type=int,
        default=640,
        help="enrollments per round for store-tlog (it is slower: see docs/benchmarks.md)",
    )
    parser.add_argument("--no-write", action="store_true", help="leave docs/benchmarks.md alone")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="measure only `store`, with one worker under cProfile, and write its stats to FILE",
    )
    return parser.parse_args(argv)


@contextlib.contextmanager
def workspace(keep: bool) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="sipcert-enroll-bench-"))
    try:
        yield folder
    finally:
        if keep:
            print(f"kept {folder}")
        else:
            subprocess.run(["rm", "-rf", str(folder)], check=False)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python bench/enroll_bench.py " + shlex.join(sys.argv[1:])
    from sipcert.proto.ca import TestCA

    with workspace(args.keep) as root:
        now = dt.datetime.now(dt.UTC)
        ca = TestCA.create(now=now, name="sipcert enroll bench CA")
        ca_file = root / "ca.pem"
        ca_file.write_bytes(ca.cert_pem)
        issued = ca.issue([DOMAIN], now=now, days=7)
        tls = (root / "tls.pem", root / "tls.key")
        tls[0].write_bytes(issued.cert_pem)
        tls[1].write_bytes(issued.key_pem)
        tls[1].chmod(0o600)
        users = root / "users.json"
        write_users(users, args.users)

        targets = [Target("store", profile=args.profile)]
        if args.profile is not None:
            args.workers, args.no_tlog, args.baseline, args.no_write = 1, True, None, True
        if not args.no_tlog:
            targets.append(Target("store-tlog", tlog=True))
        if args.baseline:
            targets.append(Target("base", tree=source_tree(args.baseline, root)))
        for target in targets:
            start_store(target, root, tls, users, args.workers)
        fsync: list[float] = []
        storage: dict[str, list[tuple[float, float]]] = {}
        trees: dict[str, Path | None] = {"this tree": None}
        for target in targets:
            if target.tree is not None:
                trees[f"`{args.baseline}`"] = target.tree
        try:
            for target in targets:
                wait_ready(target, ca_file)
            offset = 0
            for number in range(1, args.rounds + 1):
                print(f"round {number}/{args.rounds}", flush=True)
                fsync.append(fsync_rate(root, 2000))
                print(f"  fsync reference: {fsync[-1]:,.0f} commits/s", flush=True)
                for label, tree in trees.items():
                    measured = storage_rate(root, tree, 4000, args.clients)
                    storage.setdefault(label, []).append(measured)
                    print(f"  storage, {label}: {measured[0]:,.0f} adds/s", flush=True)
                for target in targets:
                    jobs = []
                    share = (args.tlog_count if target.tlog else args.count) // args.procs
                    for i in range(args.procs):
                        path = root / f"jobs-{target.name}-{number}-{i}.pickle"
                        with open(path, "wb") as file:
                            pickle.dump(make_certificates(share, args.users, offset), file)
                        offset += share
                        jobs.append(path)
                    run_round(args, target, ca_file, jobs)
                    target.stored += share * args.procs
                    check_stored(target, target.stored)
        finally:
            for target in targets:
                stop(target)
        section = render(args, targets, fsync, storage, command)
        print(section)
        if not args.no_write:
            write_docs(section)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        sys.exit(client_process(sys.argv[2:]))
    sys.exit(main())
