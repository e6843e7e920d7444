#!/usr/bin/env python3
"""Benchmark the Store (``sipcert serve``) against nginx serving the same bytes, in one run.

One command does everything (see bench/README.md)::

    .venv/bin/python bench/store_vs_nginx.py

It builds a test CA and TLS certificates for example.com and example.net
(:class:`sipcert.proto.ca.TestCA`), enrolls certificates into a fresh SQLite database through
the storage API (bob@example.com: one, carol@example.com: two), starts every target on a free
127.0.0.1 port at once, checks that nginx answers exactly what the Store answers (status,
Content-Type, body), then runs ``wrk`` against each target in interleaved rounds and writes
the table into docs/benchmarks.md (between the ``bench:begin``/``bench:end`` markers; the rest
of the file is kept).

SNI without touching /etc/hosts: wrk sends the URL host as SNI and ``Host`` and resolves it
with ``wrk.resolve``. A small Lua script replaces ``wrk.resolve`` so that the connection goes to
127.0.0.1 while the URL, and so the SNI, stays ``https://example.com:PORT/...``.

Nothing leaves the loopback interface; every wrk run is bounded by ``--duration`` (at most 10 s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import platform
import re
import shlex
import shutil
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
from dataclasses import dataclass, field
from pathlib import Path

from sipcert.proto.aor import parse_aor
from sipcert.proto.ca import TestCA
from sipcert.proto.certs import certificate_der, generate_identity
from sipcert.proto.store import certificates_response
from sipcert.server.credentials import FileCredentials
from sipcert.storage import StoredCertificate, open_store

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN = "<!-- bench:begin (written by bench/store_vs_nginx.py; edits here are overwritten) -->"
END = "<!-- bench:end -->"
DOMAINS = ("example.com", "example.net")
SNI = "example.com"
MAX_AGE = 60

RESOLVE_LUA = """\
-- Connect to 127.0.0.1 whatever the URL names: the URL host stays the TLS SNI and Host.
function wrk.resolve(host, service)
  wrk.addrs = wrk.lookup("127.0.0.1", service)
end
"""


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    query: str
    close: bool = False
    expect_status: int = 200


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("get", "GET 1 cert, keep-alive", "email=bob%40example.com"),
        Scenario("get-close", "GET 1 cert, Connection: close", "email=bob%40example.com", True),
        Scenario("multipart", "GET 2 certs (multipart), keep-alive", "email=carol%40example.com"),
        Scenario(
            "404", "GET unknown AOR (404), keep-alive", "email=nobody%40example.com", False, 404
        ),
    )
}


@dataclass(frozen=True)
class TargetSpec:
    name: str
    kind: str  # "store" or "nginx"
    workers: int
    access_log: bool
    tree: str | None = None  # label of a --tree; None: this working tree

    def describe(self, trees: dict[str, str]) -> str:
        if self.kind == "nginx":
            log = "access log buffered 64k/1s" if self.access_log else "access log off"
            return f"nginx, {self.workers} workers, {log}"
        code = "sipcert (working tree)" if self.tree is None else f"sipcert {trees[self.tree]}"
        log = "access log on" if self.access_log else "access log off"
        return f"{code}, {self.workers} worker{'s' * (self.workers > 1)}, {log}"


_STORE_TARGET = re.compile(r"(?P<tree>[a-z][a-z0-9_]*)-(?P<workers>[1-9][0-9]?)w(?P<nolog>-nolog)?")
DEFAULT_TARGETS = ("nginx", "store-1w", "store-2w", "store-2w-nolog")


def target_spec(name: str, trees: dict[str, str]) -> TargetSpec:
    """``nginx``, ``nginx-log``, or ``LABEL-Nw[-nolog]``: LABEL ``store`` or a --tree label."""
    if name in ("nginx", "nginx-log"):
        return TargetSpec(name, "nginx", 2, name == "nginx-log")
    found = _STORE_TARGET.fullmatch(name)
    if found is None:
        raise ValueError(f"unknown target {name!r}: nginx, nginx-log or LABEL-Nw[-nolog]")
    tree = found["tree"]
    if tree != "store" and tree not in trees:
        raise ValueError(f"target {name!r}: no --tree {tree}=REF given")
    return TargetSpec(
        name,
        "store",
        int(found["workers"]),
        access_log=not found["nolog"],
        tree=None if tree == "store" else tree,
    )


@dataclass
class Running:
    spec: TargetSpec
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    tls_version: str = "?"


@dataclass
class Sample:
    rps: float
    latency: str
    non_2xx: int
    socket_errors: str
    bytes_per_response: float


@dataclass
class Cell:
    samples: list[Sample] = field(default_factory=list)

    def summary(self) -> str:
        rates = [s.rps for s in self.samples]
        if not rates:
            return "n/a"
        med = statistics.median(rates)
        return f"{med:,.0f} ({min(rates):,.0f} to {max(rates):,.0f})"


# -- set-up ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Expected:
    """What the Store answers for one scenario, computed with its own answer function."""

    status: int
    content_type: str
    etag: str | None
    body: bytes


@dataclass
class Fixture:
    root: Path
    ca_file: Path
    tls: dict[str, tuple[Path, Path]]
    db_url: str
    users: Path
    answers: dict[str, Expected]  # by scenario name


def prepare(root: Path) -> Fixture:
    """CA, TLS certificates, the certificate database, and the answers nginx will serve."""
    now = dt.datetime.now(dt.UTC)
    ca = TestCA.create(now=now, name="sipcert bench CA")
    ca_file = root / "ca.pem"
    ca_file.write_bytes(ca.cert_pem)
    tls: dict[str, tuple[Path, Path]] = {}
    for domain in DOMAINS:
        issued = ca.issue([domain], now=now, days=7)
        cert, key = root / f"{domain}.pem", root / f"{domain}.key"
        cert.write_bytes(issued.cert_pem)
        key.write_bytes(issued.key_pem)
        key.chmod(0o600)
        tls[domain] = (cert, key)

    enrolled: dict[str, list[StoredCertificate]] = {}
    for aor, count in (("bob@example.com", 1), ("carol@example.com", 2)):
        for _ in range(count):
            user_cert = generate_identity(parse_aor(aor), now=now).certificate
            enrolled.setdefault(aor, []).append(
                StoredCertificate.from_der(
                    aor,
                    certificate_der(user_cert),
                    not_before=user_cert.not_valid_before_utc,
                    not_after=user_cert.not_valid_after_utc,
                    created=now,
                )
            )
    db_url = f"sqlite:///{root / 'certificates.db'}"

    async def enroll() -> None:
        store = open_store(db_url)
        try:
            for aor, certs in enrolled.items():
                for cert in certs:
                    if not await store.add(cert, max_per_aor=10, now=now):
                        raise SystemExit(f"could not enroll a certificate for {aor}")
                # In the order the Store will serve them.
                enrolled[aor] = await store.get_by_aor(aor, now)
        finally:
            await store.close()

    asyncio.run(enroll())
    users = root / "users.json"
    FileCredentials(users).add("bob@example.com", "bench-password")

    answers: dict[str, Expected] = {}
    for scenario in SCENARIOS.values():
        aor = scenario.query.partition("=")[2].replace("%40", "@")
        certs = enrolled.get(aor, [])
        answer = certificates_response(
            [c.der for c in certs], [c.sha256 for c in certs], max_age=MAX_AGE
        )
        headers = dict(answer.headers)
        answers[scenario.name] = Expected(
            answer.status, headers["Content-Type"], headers.get("ETag"), answer.body
        )
    return Fixture(root, ca_file, tls, db_url, users, answers)


def source_tree(label: str, ref: str, root: Path) -> Path:
    """The ``src`` folder of ``ref``: a folder holding ``src/``, or a git ref (git archive)."""
    given = Path(ref)
    if (given / "src" / "sipcert").is_dir():
        return given.resolve() / "src"
    archive = root / f"{label}.tar"
    with open(archive, "wb") as out:
        subprocess.run(  # noqa: S603
            ["git", "-C", str(ROOT), "archive", ref, "src"],  # noqa: S607
            stdout=out,
            check=True,
        )
    target = root / f"tree-{label}"
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    return target / "src"


def store_config(fx: Fixture, spec: TargetSpec, port: int) -> Path:
    folder = fx.root / spec.name
    folder.mkdir()
    domains = "".join(
        f'\n[[domain]]\nname = "{d}"\ntls_cert = "{c}"\ntls_key = "{k}"\n'
        for d, (c, k) in fx.tls.items()
    )
    config = folder / "store.toml"
    config.write_text(
        f'listen = ["127.0.0.1:{port}"]\n'
        f'data_dir = "{folder / "data"}"\n'
        f'db = "{fx.db_url}"\n'
        f'credentials = "file://{fx.users}"\n'
        f"workers = {spec.workers}\n"
        f"access_log = {'true' if spec.access_log else 'false'}\n"
        f'log_level = "info"\n'
        f"[policy]\nmax_age = {MAX_AGE}\n{domains}"
    )
    return config


def nginx_config(fx: Fixture, spec: TargetSpec, port: int) -> Path:
    folder = fx.root / spec.name
    (folder / "html").mkdir(parents=True)
    folder.chmod(0o755)
    (folder / "html").chmod(0o755)
    fx.root.chmod(0o755)
    locations = []
    for scenario in SCENARIOS.values():
        want = fx.answers[scenario.name]
        name = f"_{scenario.name}"
        if want.status == 200:
            path = folder / "html" / f"{scenario.name}.bin"
            path.write_bytes(want.body)
            path.chmod(0o644)
            locations.append(
                f"    location = /{name} {{ internal; alias {path};\n"
                f"      default_type '{want.content_type}'; etag off;\n"
                f"      add_header ETag '{want.etag}';\n"
                f"      add_header Cache-Control 'max-age={MAX_AGE}'; }}\n"
            )
        else:
            text = want.body.decode().rstrip("\n").replace('"', '\\"')
            locations.append(
                f"    location = /{name} {{ internal; default_type '{want.content_type}';\n"
                f'      return {want.status} "{text}\\n"; }}\n'
            )
    first = {s.query: s.name for s in reversed(SCENARIOS.values()) if s.expect_status == 200}
    mapping = "".join(f'    "{query}" /_{name};\n' for query, name in first.items())
    servers = "".join(
        f"  server {{ listen 127.0.0.1:{port} ssl; server_name {d};\n"
        f"    ssl_certificate {c}; ssl_certificate_key {k};\n"
        f"    location = /search-cgi {{ rewrite ^ $answer last; }}\n" + "".join(locations) + "  }\n"
        for d, (c, k) in fx.tls.items()
    )
    log = (
        f"access_log {folder / 'access.log'} combined buffer=64k flush=1s;"
        if spec.access_log
        else "access_log off;"
    )
    config = folder / "nginx.conf"
    config.write_text(
        f"worker_processes {spec.workers};\n"
        "daemon off;\n"
        f"pid {folder / 'nginx.pid'};\n"
        f"error_log {folder / 'error.log'} warn;\n"
        "events { worker_connections 4096; }\n"
        "http {\n"
        f"  {log}\n"
        "  server_tokens off;\n"
        "  keepalive_requests 1000000;\n"
        "  ssl_protocols TLSv1.2 TLSv1.3;\n"
        f"  client_body_temp_path {folder / 'temp-body'};\n"
        f"  proxy_temp_path {folder / 'temp-proxy'};\n"
        f"  fastcgi_temp_path {folder / 'temp-fcgi'};\n"
        f"  uwsgi_temp_path {folder / 'temp-uwsgi'};\n"
        f"  scgi_temp_path {folder / 'temp-scgi'};\n"
        "  types { }\n"
        f"  map $args $answer {{\n{mapping}    default /_404;\n  }}\n"
        f"  server {{ listen 127.0.0.1:{port} ssl default_server; ssl_reject_handshake on; }}\n"
        f"{servers}"
        "}\n"
    )
    return config


def start(fx: Fixture, spec: TargetSpec, sources: dict[str, Path]) -> Running:
    port = free_port()
    folder_log = fx.root / f"{spec.name}.log"
    log = open(folder_log, "wb")
    env = dict(os.environ)
    if spec.kind == "nginx":
        config = nginx_config(fx, spec, port)
        command = [nginx_binary(), "-e", "stderr", "-p", str(config.parent), "-c", str(config)]
    else:
        config = store_config(fx, spec, port)
        command = [sys.executable, "-c", "from sipcert.cli.main import entry; entry()"]
        command += ["serve", "--config", str(config)]
        if spec.tree is not None:
            env["PYTHONPATH"] = str(sources[spec.tree])
    process = subprocess.Popen(  # noqa: S603
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    log.close()
    return Running(spec, port, process, folder_log)


def nginx_binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found is None:
        raise SystemExit("nginx not found: apt-get install -y nginx-light")
    return found


def stop(target: Running) -> None:
    if target.process.poll() is None:
        # SIGTERM: the Store finishes in-flight requests; nginx does a fast shutdown.
        os.kill(target.process.pid, signal.SIGTERM)
        try:
            target.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(target.process.pid, signal.SIGKILL)
            target.process.wait()


# -- checking --------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    tls_version: str


def fetch(fx: Fixture, port: int, query: str, *, sni: str = SNI) -> Answer:
    """One GET over a fresh TLS connection with SNI ``sni``, verified against the test CA."""
    ctx = ssl.create_default_context(cafile=fx.ca_file)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni) as tls:
            tls.sendall(
                f"GET /search-cgi?{query} HTTP/1.1\r\nHost: {sni}:{port}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            chunks = []
            while chunk := tls.recv(65536):
                chunks.append(chunk)
            version = tls.version() or "?"
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return Answer(status, headers, body, version)


def wait_ready(fx: Fixture, target: Running, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if target.process.poll() is not None:
            raise SystemExit(
                f"{target.spec.name} exited:\n{target.log_path.read_text(errors='replace')}"
            )
        try:
            answer = fetch(fx, target.port, SCENARIOS["get"].query)
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"{target.spec.name} did not come up on port {target.port}"
                ) from None
            time.sleep(0.2)
            continue
        target.tls_version = answer.tls_version
        return


def check_same_answers(fx: Fixture, targets: Sequence[Running]) -> None:
    """Every target answers every scenario with the same status, Content-Type and body."""
    for scenario in SCENARIOS.values():
        want = fx.answers[scenario.name]
        for target in targets:
            got = fetch(fx, target.port, scenario.query)
            problems = []
            if got.status != want.status:
                problems.append(f"status {got.status} != {want.status}")
            if got.headers.get("content-type") != want.content_type:
                problems.append(f"Content-Type {got.headers.get('content-type')!r}")
            if got.body != want.body:
                problems.append(f"body of {len(got.body)} bytes differs from {len(want.body)}")
            if got.headers.get("etag") != want.etag:
                problems.append(f"ETag {got.headers.get('etag')} != {want.etag}")
            if problems:
                raise SystemExit(f"{target.spec.name} {scenario.name}: {'; '.join(problems)}")


def system_openssl_tls_version(port: int) -> str:
    """The protocol the system OpenSSL (the one wrk links) negotiates with SNI example.com."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return "?"
    result = subprocess.run(  # noqa: S603
        [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", SNI, "-brief"],
        input=b"",
        capture_output=True,
        timeout=10,
        check=False,
    )
    found = re.search(rb"Protocol version: (\S+)", result.stdout + result.stderr)
    return found.group(1).decode() if found else "?"


# -- measuring -------------------------------------------------------------------------------


def wrk_command(args: argparse.Namespace, lua: Path, port: int, scenario: Scenario) -> list[str]:
    command = [
        args.wrk,
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{args.duration}s",
        "--timeout",
        "5s",
        "-s",
        str(lua),
    ]
    if scenario.close:
        command += ["-H", "Connection: close"]
    return [*command, f"https://{SNI}:{port}/search-cgi?{scenario.query}"]


_SIZES = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}


def parse_wrk(output: str) -> Sample:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if rps is None:
        raise ValueError(f"no Requests/sec in wrk output:\n{output}")
    latency = re.search(r"Latency\s+(\S+)", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors:\s+(.*)", output)
    total = re.search(r"(\d+) requests in [\d.]+\w+, ([\d.]+)(\w+) read", output)
    per_response = 0.0
    if total and int(total.group(1)):
        per_response = float(total.group(2)) * _SIZES.get(total.group(3), 1) / int(total.group(1))
    return Sample(
        rps=float(rps.group(1)),
        latency=latency.group(1) if latency else "?",
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=errors.group(1).strip() if errors else "",
        bytes_per_response=per_response,
    )


def run_wrk(args: argparse.Namespace, lua: Path, target: Running, scenario: Scenario) -> Sample:
    command = wrk_command(args, lua, target.port, scenario)
    result = subprocess.run(  # noqa: S603
        command, capture_output=True, text=True, timeout=args.duration + 30, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"wrk failed ({result.returncode}): {result.stderr or result.stdout}")
    return parse_wrk(result.stdout)


# -- reporting -------------------------------------------------------------------------------


def first_line(command: Sequence[str]) -> str:
    try:
        result = subprocess.run(  # noqa: S603
            list(command), capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return "?"
    return (
        (result.stdout + result.stderr).strip().splitlines()[0]
        if (result.stdout + result.stderr).strip()
        else "?"
    )


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def versions() -> dict[str, str]:
    from importlib.metadata import version

    git = first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    status = subprocess.run(  # noqa: S603
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src/sipcert/server"],  # noqa: S607
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()
    changed = ", ".join(line[3:] for line in status)
    return {
        "sipcert": f"git {git}" + (f" + uncommitted changes in {changed}" if changed else ""),
        "Python": platform.python_version(),
        "aiohttp": version("aiohttp"),
        "uvloop": version("uvloop"),
        "Python's OpenSSL": ssl.OPENSSL_VERSION,
        "system OpenSSL (wrk, nginx)": first_line(["openssl", "version"]),
        "nginx": first_line([nginx_binary(), "-v"]).replace("nginx version: ", ""),
        "wrk": first_line(["wrk", "-v"]).split(" [")[0],
        "kernel": f"{platform.system()} {platform.release()}",
    }


def render(
    args: argparse.Namespace,
    targets: Sequence[Running],
    results: dict[tuple[str, str], Cell],
    command: str,
    trees: dict[str, str],
    started: dt.datetime,
) -> str:
    scenarios = [SCENARIOS[name] for name in args.scenarios]
    lines = [
        BEGIN,
        "",
        f"Measured {started:%Y-%m-%d %H:%M} UTC with:",
        "",
        "```",
        command,
        "```",
        "",
        f"Requests per second: median of {args.rounds} runs (range), "
        f"`wrk -t{args.threads} -c{args.connections} -d{args.duration}s`, SNI {SNI}, "
        "all servers on 127.0.0.1 of the same machine as wrk, rounds interleaved.",
        "",
        "| target | " + " | ".join(s.title for s in scenarios) + " |",
        "|---|" + "---|" * len(scenarios),
    ]
    for target in targets:
        cells = [results[(target.spec.name, s.name)].summary() for s in scenarios]
        lines.append(f"| {target.spec.describe(trees)} | " + " | ".join(cells) + " |")
    lines += ["", "Per run (requests/s, average latency, bytes per response, errors):", ""]
    lines += ["| target | scenario | runs |", "|---|---|---|"]
    for target in targets:
        for scenario in scenarios:
            runs = []
            for sample in results[(target.spec.name, scenario.name)].samples:
                extra = []
                if sample.non_2xx and scenario.expect_status == 200:
                    extra.append(f"{sample.non_2xx} non-2xx")
                if sample.socket_errors:
                    extra.append(f"socket errors: {sample.socket_errors}")
                note = f" [{'; '.join(extra)}]" if extra else ""
                size = f"{sample.bytes_per_response:.0f} B"
                runs.append(f"{sample.rps:,.0f} / {sample.latency} / {size}{note}")
            lines.append(f"| {target.spec.name} | {scenario.name} | {'; '.join(runs)} |")
    lines += [
        "",
        "Negotiated protocol (system OpenSSL `s_client`, the library wrk uses): "
        + ", ".join(f"{t.spec.name} {t.tls_version}" for t in targets)
        + ".",
        "",
        f"Machine: {os.cpu_count()} CPUs (`nproc` {len(os.sched_getaffinity(0))}), {cpu_model()}.",
        "",
        "| component | version |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in versions().items()]
    lines += ["", END]
    return "\n".join(lines) + "\n"


HEADER = """# Benchmarks: the Store against nginx

How fast `sipcert serve` answers `GET /search-cgi`, next to nginx serving the very same bytes
(same path, same `Content-Type`, same body, checked before measuring) on the same machine in
the same run. Reproduce with the command shown below; bench/README.md explains the set-up.

"""


def write_docs(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else HEADER + BEGIN + "\n" + END + "\n"
    if BEGIN in text and END in text:
        before, rest = text.split(BEGIN, 1)
        after = rest.split(END, 1)[1]
        text = before + section.rstrip("\n") + after
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (1-10)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per measurement")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--targets",
        default=",".join(DEFAULT_TARGETS),
        help="comma-separated: nginx, nginx-log, store-Nw, store-Nw-nolog (this working tree), "
        "LABEL-Nw[-nolog] (a --tree); default: %(default)s",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated, of: {', '.join(SCENARIOS)} (default: %(default)s)",
    )
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="LABEL=REF",
        help="also measure the Store of git REF (or of folder REF holding src/) as targets "
        "LABEL-1w and LABEL-2w (unless --targets names LABEL-* targets)",
    )
    parser.add_argument("--baseline", metavar="REF", help="short for --tree base=REF")
    parser.add_argument("--output", type=Path, default=DOCS, help="Markdown file to update")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--wrk", default="wrk")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 10:
        parser.error("--duration must be 1..10 seconds")
    args.trees = {}
    for item in [*args.tree, *([f"base={args.baseline}"] if args.baseline else [])]:
        label, sep, ref = item.partition("=")
        if not sep or not ref or not re.fullmatch(r"[a-z][a-z0-9_]*", label) or label == "store":
            parser.error(f"--tree {item!r}: expected LABEL=REF, LABEL in [a-z0-9_], not 'store'")
        args.trees[label] = ref
    args.targets = [t for t in args.targets.split(",") if t]
    for label in args.trees:
        if not any(t.startswith(f"{label}-") for t in args.targets):
            args.targets += [f"{label}-1w", f"{label}-2w"]
    try:
        args.specs = [target_spec(name, args.trees) for name in args.targets]
    except ValueError as exc:
        parser.error(str(exc))
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    for name in args.scenarios:
        if name not in SCENARIOS:
            parser.error(f"unknown scenario {name}")
    if shutil.which(args.wrk) is None:
        parser.error("wrk not found: apt-get install -y wrk")
    return args


@contextlib.contextmanager
def workspace(keep: bool) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="sipcert-bench-"))
    try:
        yield root
    finally:
        if keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    command = "python bench/store_vs_nginx.py " + shlex.join(
        list(argv) if argv is not None else sys.argv[1:]
    )
    command = command.rstrip()
    with workspace(args.keep) as root:
        fx = prepare(root)
        sources = {label: source_tree(label, ref, root) for label, ref in args.trees.items()}
        lua = root / "resolve.lua"
        lua.write_text(RESOLVE_LUA)
        running: list[Running] = []
        try:
            for spec in args.specs:
                running.append(start(fx, spec, sources))
            for target in running:
                wait_ready(fx, target)
                target.tls_version = system_openssl_tls_version(target.port)
            check_same_answers(fx, running)
            print("all targets give identical answers; measuring", file=sys.stderr)
            results = {(t.spec.name, s): Cell() for t in running for s in args.scenarios}
            for round_no in range(1, args.rounds + 1):
                for scenario_name in args.scenarios:
                    for target in running:
                        sample = run_wrk(args, lua, target, SCENARIOS[scenario_name])
                        results[(target.spec.name, scenario_name)].samples.append(sample)
                        print(
                            f"round {round_no} {scenario_name:10} {target.spec.name:15} "
                            f"{sample.rps:10,.0f} req/s  {sample.latency:>8}  "
                            f"non-2xx {sample.non_2xx}  {sample.socket_errors}",
                            file=sys.stderr,
                        )
                        time.sleep(1)
            for target in running:
                if target.process.poll() is not None:
                    raise SystemExit(f"{target.spec.name} died during the run")
        finally:
            for target in running:
                stop(target)
        section = render(args, running, results, command, args.trees, started)
        print(section)
        if not args.no_write:
            write_docs(args.output, section)
            print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
