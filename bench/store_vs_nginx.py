#!/usr/bin/env python3
"""Benchmark the Store (``sipcert serve``) against nginx serving the same answers, in one run.

The realistic workload of issue 13 (draft §7.1: callers fetch certificates on every new
call): a store of N AORs (100,000 by default, 1,000,000 with ``--full``), each with its own
self-signed certificate whose SAN names it, and every request asks for a uniformly random
one of them, ``wrk -c64``, TLS 1.3 with SNI, in interleaved rounds. For every target and
scenario it reports requests/s, latency p50/p99 and the **server CPU per request** (the
utime+stime of the server's processes read from /proc before and after each run, divided by
the requests answered). See bench/README.md::

    .venv/bin/python bench/store_vs_nginx.py            # N = 100,000
    .venv/bin/python bench/store_vs_nginx.py --full     # N = 1,000,000, Store RSS 10k vs 1M
    .venv/bin/python bench/store_vs_nginx.py --smoke    # tiny N, 1 s runs, 1 round (CI)

Targets: ``nginx`` (the same N answers as static files, configuration written here),
``store-1w``/``store-2w`` (``sipcert serve`` with 1 or 2 workers), and ``edge`` (nginx in
front of the Store as ``sipcert publish``/``sipcert nginx-config``/``serve --unix-socket``
set it up; skipped with a message when this tree has no ``sipcert nginx-config``).

The corpus (certificates, the SQLite database, nginx's answer files) is built once per N and
kept in ``bench/.cache/`` (git-ignored) for the next runs. Before measuring, every target is
asked for a sample of AORs and an unknown one over TLS with SNI, verified against the test CA:
a different status, ``Content-Type``, ``ETag`` or body stops the run. SNI without touching
/etc/hosts: the wrk Lua script replaces ``wrk.resolve`` so the URL host (the SNI and
``Host``) stays ``example.com`` while the connection goes to 127.0.0.1. Nothing leaves the
loopback interface; every wrk run is bounded by ``--duration`` (at most 10 s).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import random
import re
import shlex
import shutil
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

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sipcert.proto.aor import parse_aor
from sipcert.proto.ca import TestCA
from sipcert.proto.certs import self_signed_certificate
from sipcert.proto.store import certificates_response, error_response, etag_for
from sipcert.server.credentials import FileCredentials
from sipcert.server.nginx import TLS_DIRECTIVES
from sipcert.storage import open_store

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
CACHE = ROOT / "bench" / ".cache"
BEGIN = "<!-- bench:begin (written by bench/store_vs_nginx.py; edits here are overwritten) -->"
END = "<!-- bench:end -->"
#: ``--full`` (1M AORs) writes its own section, so the default run's stays.
BEGIN_FULL = (
    "<!-- bench:full:begin (written by bench/store_vs_nginx.py --full; edits here are "
    "overwritten) -->"
)
END_FULL = "<!-- bench:full:end -->"
DOMAINS = ("example.com", "example.net")
SNI = "example.com"
MAX_AGE = 60
#: Bumped whenever the corpus format changes, so an old cache is rebuilt.
CORPUS_VERSION = 1
#: Lifetime of the corpus certificates; the cache is rebuilt when less than a third is left.
CERT_DAYS = 90
#: Requests each wrk thread draws at start (uniformly, with replacement) and then cycles
#: through: building a request string in Lua per request would slow wrk more than the
#: servers; a cycle this long defeats any cache smaller than the set.
MAX_DRAWN = 250_000
NOT_FOUND = error_response(404, "no certificates for this address of record")


def aor_name(i: int) -> str:
    return f"u{i:07d}@{SNI}"


def aor_query(i: int) -> str:
    """The canonical query a sipcert client sends (client.locate.search_path: ``email``)."""
    return f"email=u{i:07d}%40{SNI}"


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    close: bool


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("get", "keep-alive", False),
        Scenario("get-close", "Connection: close", True),
    )
}


@dataclass(frozen=True)
class TargetSpec:
    name: str
    kind: str  # "store", "nginx" or "edge"
    workers: int
    tree: str | None = None  # label of a --tree; None: this working tree
    cache_mb: int | None = None  # answer_cache_mb; None: the Store's default

    def describe(self, trees: dict[str, str]) -> str:
        if self.kind == "nginx":
            return f"nginx, static files, {self.workers} workers"
        if self.kind == "edge":
            return "edge: nginx (2 workers) + `sipcert serve` on a unix socket"
        code = "`sipcert serve`" if self.tree is None else f"`sipcert serve` {trees[self.tree]}"
        cache = "" if self.cache_mb is None else f", answer cache {self.cache_mb} MiB"
        return f"{code}, {self.workers} worker{'s' * (self.workers > 1)}{cache}"


_STORE_TARGET = re.compile(
    r"(?P<tree>[a-z][a-z0-9_]*)-(?P<workers>[1-9][0-9]?)w(?:-cache(?P<cache>[0-9]{1,5}))?"
)
DEFAULT_TARGETS = ("nginx", "edge", "store-1w", "store-2w")


def target_spec(name: str, trees: dict[str, str]) -> TargetSpec:
    """``nginx``, ``edge`` or ``LABEL-Nw[-cacheM]``: LABEL ``store`` or a --tree label.

    ``-cacheM`` sets the Store's ``answer_cache_mb`` to M (``-cache0``: no cache).
    """
    if name == "nginx":
        return TargetSpec(name, "nginx", 2)
    if name == "edge":
        return TargetSpec(name, "edge", 2)
    found = _STORE_TARGET.fullmatch(name)
    if found is None:
        raise ValueError(f"unknown target {name!r}: nginx, edge or LABEL-Nw")
    tree = found["tree"]
    if tree != "store" and tree not in trees:
        raise ValueError(f"target {name!r}: no --tree {tree}=REF given")
    cache = None if found["cache"] is None else int(found["cache"])
    return TargetSpec(
        name,
        "store",
        int(found["workers"]),
        tree=None if tree == "store" else tree,
        cache_mb=cache,
    )


# -- the corpus ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Corpus:
    """N AORs, each with one certificate, as a Store database and as nginx answer files."""

    folder: Path
    count: int
    db: Path
    answers: Path  # one file per AOR, named by its query value (``u0000001%40example.com``)
    etags: Path  # an nginx ``map`` body: query value -> the Store's ETag

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.db}"


def _certificate(key: ec.EllipticCurvePrivateKey, aor: str, serial: int, now: dt.datetime) -> bytes:
    """A real self-signed certificate for ``aor``, made as ``generate_identity`` makes them.

    One key for all of them (generating a million keys would take hours); each certificate
    has its own subject, serial and SAN URIs, so every answer is the one a Caller checks.
    """
    cert = self_signed_certificate(
        key,
        parse_aor(aor),
        not_before=now - dt.timedelta(minutes=5),
        not_after=now + dt.timedelta(days=CERT_DAYS),
        serial=serial,
    )
    return cert.public_bytes(serialization.Encoding.DER)


def corpus(cache: Path, count: int, *, log: bool = True) -> Corpus:
    """The corpus of ``count`` AORs from ``cache``, built (and kept there) when missing or old.

    The rows are inserted into the Store's own schema (created by ``open_store``) with one
    ``executemany`` in one transaction, as ``SqliteStore.add`` would store them (hashes from
    the DER, times in microseconds); ``meta.json`` is written last and marks a finished build.
    """
    folder = cache / f"corpus-v{CORPUS_VERSION}-{count}"
    found = Corpus(
        folder, count, folder / "certificates.db", folder / "answers", folder / "etags.map"
    )
    meta = folder / "meta.json"
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    with contextlib.suppress(OSError, ValueError, KeyError):
        expires = dt.datetime.fromisoformat(json.loads(meta.read_text())["not_after"])
        if expires - now > dt.timedelta(days=CERT_DAYS * 2 // 3):
            return found
    if folder.exists():
        shutil.rmtree(folder)
    building = folder.with_name(folder.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    (building / "answers").mkdir(parents=True)
    started = time.monotonic()
    if log:
        print(
            f"building a corpus of {count:,} AORs in {folder} (kept for later runs)",
            file=sys.stderr,
        )
    db = building / "certificates.db"
    asyncio.run(_create_schema(f"sqlite:///{db}"))
    key = ec.generate_private_key(ec.SECP256R1())
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

    def us(value: dt.datetime) -> int:
        return (value - epoch) // dt.timedelta(microseconds=1)

    created = us(now)
    not_before = us(now - dt.timedelta(minutes=5))
    not_after = us(now + dt.timedelta(days=CERT_DAYS))
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN")
    with open(building / "etags.map", "w") as etags:
        batch: list[tuple[object, ...]] = []
        for i in range(count):
            aor = aor_name(i)
            der = _certificate(key, aor, i + 1, now)
            sha256 = hashlib.sha256(der).hexdigest()
            cert_hash = base64.b64encode(hashlib.sha1(der, usedforsecurity=False).digest()).decode()
            batch.append((aor, sha256, cert_hash, der, not_before, not_after, created, None))
            value = aor_query(i).partition("=")[2]
            (building / "answers" / value).write_bytes(der)
            etags.write(f"    {value} '{etag_for([sha256])}';\n")
            if len(batch) == 10_000:
                _insert(conn, batch)
                batch = []
                if log and (i + 1) % 100_000 == 0:
                    print(f"  {i + 1:,} certificates", file=sys.stderr)
        _insert(conn, batch)
    conn.execute("COMMIT")
    conn.close()
    (building / "meta.json").write_text(
        json.dumps({"count": count, "not_after": (now + dt.timedelta(days=CERT_DAYS)).isoformat()})
    )
    building.rename(folder)
    if log:
        print(f"  built in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return found


def _insert(conn: sqlite3.Connection, rows: list[tuple[object, ...]]) -> None:
    conn.executemany(
        "INSERT INTO certificates (aor, sha256, cert_hash, der, not_before, not_after, created, "
        "label) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )


async def _create_schema(url: str) -> None:
    store = open_store(url)  # the Store's own schema, at its current version
    await store.close()


# -- set-up ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Fixture:
    root: Path
    ca_file: Path
    tls: dict[str, tuple[Path, Path]]
    users: Path


def prepare(root: Path) -> Fixture:
    """A test CA and ECDSA P-256 TLS certificates for the domains; a users file."""
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
    users = root / "users.json"
    users.unlink(missing_ok=True)  # a reused --workspace holds the last run's
    FileCredentials(users).add(aor_name(0), "bench-password")
    return Fixture(root, ca_file, tls, users)


def source_tree(label: str, ref: str, root: Path) -> Path:
    """The ``src`` folder of ``ref``: a folder holding ``src/``, or a git ref (git archive)."""
    given = Path(ref)
    if (given / "src" / "sipcert").is_dir():
        return given.resolve() / "src"
    archive = root / f"{label}.tar"
    with open(archive, "wb") as out:
        subprocess.run(
            ["git", "-C", str(ROOT), "archive", ref, "src"],
            stdout=out,
            check=True,
        )
    target = root / f"tree-{label}"
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    return target / "src"


def store_config(
    fx: Fixture, folder: Path, db_url: str, workers: int, port: int, cache_mb: int | None = None
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    domains = "".join(
        f'\n[[domain]]\nname = "{d}"\ntls_cert = "{c}"\ntls_key = "{k}"\n'
        for d, (c, k) in fx.tls.items()
    )
    config = folder / "store.toml"
    config.write_text(
        f'listen = ["127.0.0.1:{port}"]\n'
        f'data_dir = "{folder / "data"}"\n'
        f'db = "{db_url}"\n'
        f'credentials = "file://{fx.users}"\n'
        f"workers = {workers}\n"
        "access_log = true\n"
        + ("" if cache_mb is None else f"answer_cache_mb = {cache_mb}\n")
        + 'log_level = "info"\n'
        f"[policy]\nmax_age = {MAX_AGE}\n{domains}"
    )
    return config


def nginx_config(fx: Fixture, corpus_: Corpus, folder: Path, workers: int, port: int) -> Path:
    """nginx serving each AOR's answer file; the Store's ETag and 404 text; SNI as the Store.

    The query value names the file (``try_files`` does not decode ``$arg_email``), the ETag
    comes from a ``map`` of the N values (an unknown value maps to "" and gets the Store's
    404). Only the canonical spelling is served: this is the reference, not the edge mode.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for path in (fx.root, folder, corpus_.folder, corpus_.answers):
        path.chmod(0o755)
    text = NOT_FOUND.body.decode().rstrip("\n")
    servers = "".join(
        f"  server {{ listen 127.0.0.1:{port} ssl; server_name {d};\n"
        f"    ssl_certificate {c}; ssl_certificate_key {k};\n"
        f"    root {corpus_.answers};\n"
        f"    location @missing {{ default_type '{NOT_FOUND.headers[0][1]}';\n"
        f'      return 404 "{text}\\n"; }}\n'
        "    location = /search-cgi {\n"
        "      error_page 404 = @missing;\n"
        "      if ($answer_etag = '') { return 404; }\n"
        "      default_type 'application/pkix-cert'; etag off;\n"
        "      add_header ETag $answer_etag;\n"
        f"      add_header Cache-Control 'max-age={MAX_AGE}';\n"
        "      try_files /$arg_email =404;\n"
        "    }\n"
        "  }\n"
        for d, (c, k) in fx.tls.items()
    )
    config = folder / "nginx.conf"
    config.write_text(
        ""
        # As root, nginx's workers would run as nobody, who may not read the cache folder.
        + ("user root;\n" if os.geteuid() == 0 else "")
        + f"worker_processes {workers};\n"
        "daemon off;\n"
        f"pid {folder / 'nginx.pid'};\n"
        f"error_log {folder / 'error.log'} warn;\n"
        "events { worker_connections 4096; }\n"
        "http {\n"
        f"  access_log {folder / 'access.log'} combined buffer=64k flush=1s;\n"
        "  server_tokens off;\n"
        "  keepalive_requests 1000000;\n"
        # The edge's own TLS lines (protocols, ciphers, the shared session cache): without
        # them the reference was 8-15% slower on close (measured 2026-12-02).
        + "".join(f"  {line}\n" for line in TLS_DIRECTIVES)
        + f"  client_body_temp_path {folder / 'temp-body'};\n"
        f"  proxy_temp_path {folder / 'temp-proxy'};\n"
        f"  fastcgi_temp_path {folder / 'temp-fcgi'};\n"
        f"  uwsgi_temp_path {folder / 'temp-uwsgi'};\n"
        f"  scgi_temp_path {folder / 'temp-scgi'};\n"
        "  types { }\n"
        "  default_type 'text/plain; charset=utf-8';\n"
        "  map_hash_max_size 4194304; map_hash_bucket_size 128;\n"
        f"  map $arg_email $answer_etag {{\n    default '';\n    include {corpus_.etags};\n  }}\n"
        f"  server {{ listen 127.0.0.1:{port} ssl default_server; ssl_reject_handshake on; }}\n"
        f"{servers}"
        "}\n"
    )
    return config


@dataclass
class Running:
    spec: TargetSpec
    port: int
    processes: list[subprocess.Popen[bytes]]
    log_path: Path
    tls_version: str = "?"

    @property
    def groups(self) -> list[int]:
        """The process groups whose CPU is the target's (each started in its own session)."""
        return [p.pid for p in self.processes]


def sipcert_command(*args: str) -> list[str]:
    return [sys.executable, "-c", "from sipcert.cli.main import entry; entry()", *args]


def _popen(command: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )


def edge_available(env: dict[str, str]) -> bool:
    """Whether this tree has the edge mode's ``sipcert nginx-config`` (issue 13)."""
    result = subprocess.run(
        sipcert_command("nginx-config", "--help"),
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    return result.returncode == 0


def start(fx: Fixture, corpus_: Corpus, spec: TargetSpec, sources: dict[str, Path]) -> Running:
    port = free_port()
    folder = fx.root / spec.name
    log_path = fx.root / f"{spec.name}.log"
    env = dict(os.environ)
    if spec.tree is not None:
        env["PYTHONPATH"] = str(sources[spec.tree])
    if spec.kind == "nginx":
        config = nginx_config(fx, corpus_, folder, spec.workers, port)
        command = [nginx_binary(), "-e", "stderr", "-p", str(folder), "-c", str(config)]
        return Running(spec, port, [_popen(command, log_path, env)], log_path)
    if spec.kind == "store":
        config = store_config(fx, folder, corpus_.db_url, spec.workers, port, spec.cache_mb)
        process = _popen(sipcert_command("serve", "--config", str(config)), log_path, env)
        return Running(spec, port, [process], log_path)
    return start_edge(fx, corpus_, spec, folder, port, log_path, env)


def start_edge(
    fx: Fixture,
    corpus_: Corpus,
    spec: TargetSpec,
    folder: Path,
    port: int,
    log_path: Path,
    env: dict[str, str],
) -> Running:
    """The edge mode per docs of issue 13: publish, generate nginx's config, run both."""
    config = store_config(fx, folder, corpus_.db_url, 1, free_port())
    published, prefix, sock = folder / "published", folder / "nginx", folder / "store.sock"
    prefix.mkdir(exist_ok=True)
    for path in (fx.root, folder, prefix):
        path.chmod(0o755)
    # A --workspace kept from an earlier run of the same corpus holds its publication (1M AORs
    # take ~15 minutes to publish): reuse it. The answers are still compared before measuring.
    done, corpus_key = folder / "published-for", str(corpus_.folder)
    if not (done.is_file() and done.read_text() == corpus_key):
        subprocess.run(
            sipcert_command("publish", str(published), "--config", str(config), "--once"),
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=3600,
        )
        done.write_text(corpus_key)
    text = subprocess.run(
        sipcert_command(
            "nginx-config",
            str(published),
            "--config",
            str(config),
            "--store-socket",
            str(sock),
            "--listen",
            f"127.0.0.1:{port}",
            "--prefix",
            str(prefix),
            "--workers",
            str(spec.workers),
        ),
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout
    nginx_conf = prefix / "nginx.conf"
    nginx_conf.write_text(text)
    store = _popen(
        sipcert_command("serve", "--config", str(config), "--unix-socket", str(sock)), log_path, env
    )
    command = [nginx_binary(), "-e", "stderr", "-p", str(prefix), "-c", str(nginx_conf)]
    if not re.search(r"^\s*daemon\s", text, re.MULTILINE):
        command += ["-g", "daemon off;"]
    return Running(spec, port, [store, _popen(command, log_path, env)], log_path)


def nginx_binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found is None:
        raise SystemExit("nginx not found: apt-get install -y nginx-light")
    return found


def stop(target: Running) -> None:
    for process in target.processes:
        if process.poll() is None:
            # SIGTERM: the Store finishes in-flight requests; nginx does a fast shutdown.
            os.kill(process.pid, signal.SIGTERM)
    for process in target.processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


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


def wait_ready(fx: Fixture, target: Running, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        for process in target.processes:
            if process.poll() is not None:
                raise SystemExit(
                    f"{target.spec.name} exited:\n{target.log_path.read_text(errors='replace')}"
                )
        try:
            answer = fetch(fx, target.port, aor_query(0))
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"{target.spec.name} did not come up on port {target.port}"
                ) from None
            time.sleep(0.2)
            continue
        target.tls_version = answer.tls_version
        return


def sample_aors(count: int, rng: random.Random) -> list[int]:
    """The AORs checked on every target: the first, the last and a few random ones."""
    return sorted({0, count - 1, *rng.sample(range(count), min(count, 8))})


def check_same_answers(fx: Fixture, corpus_: Corpus, targets: Sequence[Running]) -> int:
    """Every target answers the sample (and an unknown AOR) as the Store's answer function.

    The expected answer is computed with ``certificates_response`` from the stored row; the
    status, ``Content-Type``, ``ETag``, ``Cache-Control`` and body must all be equal. Returns
    how many answers were compared.
    """
    conn = sqlite3.connect(f"file:{corpus_.db}?mode=ro", uri=True)
    checked = 0
    try:
        cases: list[tuple[str, int, str | None, str | None, bytes]] = []
        for i in sample_aors(corpus_.count, random.Random(corpus_.count)):  # noqa: S311
            der, sha256 = conn.execute(
                "SELECT der, sha256 FROM certificates WHERE aor = ?", (aor_name(i),)
            ).fetchone()
            want = certificates_response([bytes(der)], [sha256], max_age=MAX_AGE)
            headers = dict(want.headers)
            cases.append(
                (aor_query(i), want.status, headers["Content-Type"], headers["ETag"], want.body)
            )
        unknown = dict(NOT_FOUND.headers)
        cases.append((f"email=nobody%40{SNI}", 404, unknown["Content-Type"], None, NOT_FOUND.body))
    finally:
        conn.close()
    for target in targets:
        for query, status, content_type, etag, body in cases:
            got = fetch(fx, target.port, query)
            problems = []
            if got.status != status:
                problems.append(f"status {got.status} != {status}")
            if got.headers.get("content-type") != content_type:
                problems.append(f"Content-Type {got.headers.get('content-type')!r}")
            if got.body != body:
                problems.append(f"body of {len(got.body)} bytes differs from {len(body)}")
            if got.headers.get("etag") != etag:
                problems.append(f"ETag {got.headers.get('etag')} != {etag}")
            if status == 200 and got.headers.get("cache-control") != f"max-age={MAX_AGE}":
                problems.append(f"Cache-Control {got.headers.get('cache-control')!r}")
            if problems:
                raise SystemExit(f"{target.spec.name} ?{query}: {'; '.join(problems)}")
            checked += 1
    return checked


def system_openssl_tls_version(port: int) -> str:
    """The protocol the system OpenSSL (the one wrk links) negotiates with SNI example.com."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return "?"
    result = subprocess.run(
        [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", SNI, "-brief"],
        input=b"",
        capture_output=True,
        timeout=10,
        check=False,
    )
    found = re.search(rb"Protocol version: (\S+)", result.stdout + result.stderr)
    return found.group(1).decode() if found else "?"


# -- measuring -------------------------------------------------------------------------------


def wrk_script(count: int, seed: int) -> str:
    """Random AOR per request; connect to 127.0.0.1 whatever the URL (and so the SNI) names.

    Each thread draws ``min(count, MAX_DRAWN)`` requests uniformly from the N AORs at start
    and cycles through them; ``wrk.format`` keeps the ``-H`` headers (``Connection: close``).
    """
    drawn = min(count, MAX_DRAWN)
    return f"""\
function wrk.resolve(host, service)
  wrk.addrs = wrk.lookup("127.0.0.1", service)
end
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("seed", {seed} * 1000 + threads)
end
local requests, next_request = {{}}, 0
function init(args)
  math.randomseed(seed or {seed})
  for i = 1, {drawn} do
    local aor = math.random(0, {count - 1})
    requests[i] = wrk.format(nil, string.format("/search-cgi?email=u%07d%%40{SNI}", aor))
  end
end
function request()
  next_request = next_request % {drawn} + 1
  return requests[next_request]
end
"""


def wrk_command(args: argparse.Namespace, lua: Path, port: int, scenario: Scenario) -> list[str]:
    command = [
        args.wrk,
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{args.duration}s",
        "--timeout",
        "5s",
        "--latency",
        "-s",
        str(lua),
    ]
    if scenario.close:
        command += ["-H", "Connection: close"]
    return [*command, f"https://{SNI}:{port}/search-cgi"]


@dataclass
class Sample:
    rps: float
    requests: int
    p50_us: float
    p99_us: float
    non_2xx: int
    socket_errors: str
    bytes_per_response: float
    cpu_us: float  # server CPU (user + system) per request


_SIZES = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}
_TIME_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6}


def _micros(text: str) -> float:
    found = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if found is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(found.group(1)) * _TIME_UNITS[found.group(2)]


def parse_wrk(output: str, cpu_seconds: float) -> Sample:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in [\d.]+\w+, ([\d.]+)(\w+) read", output)
    if rps is None or total is None:
        raise ValueError(f"no Requests/sec in wrk output:\n{output}")
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors:\s+(.*)", output)
    requests = int(total.group(1))
    per_response = 0.0
    if requests:
        per_response = float(total.group(2)) * _SIZES.get(total.group(3), 1) / requests
    return Sample(
        rps=float(rps.group(1)),
        requests=requests,
        p50_us=_micros(p50.group(1)) if p50 else float("nan"),
        p99_us=_micros(p99.group(1)) if p99 else float("nan"),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=errors.group(1).strip() if errors else "",
        bytes_per_response=per_response,
        cpu_us=cpu_seconds * 1e6 / requests if requests else float("nan"),
    )


_TICKS = os.sysconf("SC_CLK_TCK")


def group_cpu_seconds(groups: Sequence[int]) -> float:
    """utime + stime of every live process in ``groups`` (from /proc/PID/stat)."""
    wanted = set(groups)
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as file:
                stat = file.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        # After the command: state ppid pgrp session ... utime (14th field) stime (15th).
        if int(fields[2]) in wanted:
            total += int(fields[11]) + int(fields[12])
    return total / _TICKS


def group_rss_kib(groups: Sequence[int]) -> dict[int, tuple[int, int]]:
    """(VmRSS, RssAnon) in KiB of every process in ``groups``, by pid."""
    wanted = set(groups)
    found: dict[int, tuple[int, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_bytes()
            if int(stat[stat.rindex(b")") + 2 :].split()[2]) not in wanted:
                continue
            status = Path(f"/proc/{entry.name}/status").read_text()
        except (OSError, ValueError):
            continue
        rss = re.search(r"VmRSS:\s+(\d+) kB", status)
        anon = re.search(r"RssAnon:\s+(\d+) kB", status)
        if rss and anon:
            found[int(entry.name)] = (int(rss.group(1)), int(anon.group(1)))
    return found


def run_wrk(args: argparse.Namespace, lua: Path, target: Running, scenario: Scenario) -> Sample:
    command = wrk_command(args, lua, target.port, scenario)
    before = group_cpu_seconds(target.groups)
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=args.duration + 60, check=False
    )
    after = group_cpu_seconds(target.groups)
    if result.returncode != 0:
        raise SystemExit(f"wrk failed ({result.returncode}): {result.stderr or result.stdout}")
    return parse_wrk(result.stdout, after - before)


@dataclass
class Cell:
    samples: list[Sample] = field(default_factory=list)

    @staticmethod
    def _fmt(values: list[float], unit: str = "", digits: int = 0) -> str:
        med = statistics.median(values)
        spec = f",.{digits}f"
        if len(values) == 1:
            return f"{med:{spec}}{unit}"
        return f"{med:{spec}}{unit} ({min(values):{spec}}-{max(values):{spec}})"

    def rps(self) -> str:
        return self._fmt([s.rps for s in self.samples]) if self.samples else "n/a"

    def median_rps(self) -> float:
        return statistics.median(s.rps for s in self.samples)

    def latency(self) -> str:
        if not self.samples:
            return "n/a"
        p50 = statistics.median(s.p50_us for s in self.samples) / 1000
        p99 = statistics.median(s.p99_us for s in self.samples) / 1000
        return f"{p50:.2f} / {p99:.2f} ms"

    def cpu(self) -> str:
        return self._fmt([s.cpu_us for s in self.samples], " µs") if self.samples else "n/a"


def measure_rss(
    args: argparse.Namespace, fx: Fixture, counts: Sequence[int], root: Path
) -> list[tuple[int, dict[int, tuple[int, int]]]]:
    """RSS of a 2-worker Store over a corpus of each size, after a random-AOR load."""
    found = []
    for count in counts:
        corpus_ = corpus(args.cache_dir, count)
        spec = TargetSpec(f"rss-{count}", "store", 2)
        target = start(fx, corpus_, spec, {})
        try:
            wait_ready(fx, target)
            lua = root / f"rss-{count}.lua"
            lua.write_text(wrk_script(count, args.seed))
            run_wrk(args, lua, target, SCENARIOS["get"])
            rss = group_rss_kib(target.groups)
            rss.pop(target.processes[0].pid, None)  # the parent: forks, waits, holds no data
            found.append((count, rss))
            print(
                f"rss {count:>9,} AORs: workers (RSS, anon) {sorted(rss.values())} KiB",
                file=sys.stderr,
            )
        finally:
            stop(target)
    return found


# -- reporting -------------------------------------------------------------------------------


def first_line(command: Sequence[str]) -> str:
    try:
        result = subprocess.run(
            list(command), capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return "?"
    text = (result.stdout + result.stderr).strip()
    return text.splitlines()[0] if text else "?"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def load_average() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "?"


def versions() -> dict[str, str]:
    from importlib.metadata import version

    git = first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    status = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src/sipcert"],
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


@dataclass
class Report:
    args: argparse.Namespace
    command: str
    started: dt.datetime
    loads: list[str]
    targets: list[Running]
    results: dict[tuple[str, str], Cell]
    checked: int
    skipped: list[str]
    rss: list[tuple[int, dict[int, tuple[int, int]]]]


def render(report: Report) -> str:
    args = report.args
    scenarios = [SCENARIOS[name] for name in args.scenarios]
    lines = [
        BEGIN_FULL if args.full else BEGIN,
        "",
        f"Measured {report.started:%Y-%m-%d %H:%M} UTC with:",
        "",
        "```",
        report.command,
        "```",
        "",
        f"{args.aors:,} AORs, one certificate each; every request asks for a uniformly random "
        f"one (`?email=uNNNNNNN%40{SNI}`); `wrk -t{args.threads} -c{args.connections} "
        f"-d{args.duration}s`, TLS with SNI {SNI}, all servers on 127.0.0.1 of the machine wrk "
        f"runs on; {args.rounds} interleaved round{'s' * (args.rounds > 1)}, median "
        "(range). Load average (1, 5, 15 min) at the start and the end: "
        + " and ".join(f"{load}" for load in report.loads)
        + ".",
        "",
    ]
    reference = next((t for t in report.targets if t.spec.kind == "nginx"), None)
    header = ["target"]
    for s in scenarios:
        header += [f"{s.title}: req/s", "x nginx", "p50 / p99", "server CPU per request"]
    lines += ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for target in report.targets:
        row = [target.spec.describe(args.trees)]
        for s in scenarios:
            cell = report.results[(target.spec.name, s.name)]
            ratio = "n/a"
            if reference is not None and cell.samples:
                ref = report.results[(reference.spec.name, s.name)].median_rps()
                ratio = f"{cell.median_rps() / ref:.2f}x"
            row += [cell.rps(), ratio, cell.latency(), cell.cpu()]
        lines.append("| " + " | ".join(row) + " |")
    lines += [""]
    for note in report.skipped:
        lines += [f"Not measured: {note}", ""]
    lines += [
        f"Before measuring, every target gave the same status, `Content-Type`, `ETag`, "
        f"`Cache-Control` and body as the Store's answer function for a sample of AORs and an "
        f"unknown one ({report.checked} answers compared). Server CPU: utime + stime of the "
        "target's processes (/proc, before and after each run) per request answered.",
        "",
        "Per run (requests/s, p50, p99, server CPU per request, bytes per response, errors):",
        "",
        "| target | scenario | runs |",
        "|---|---|---|",
    ]
    for target in report.targets:
        for scenario in scenarios:
            runs = []
            for sample in report.results[(target.spec.name, scenario.name)].samples:
                extra = []
                if sample.non_2xx:
                    extra.append(f"{sample.non_2xx} non-2xx")
                if sample.socket_errors:
                    extra.append(f"socket errors: {sample.socket_errors}")
                note = f" [{'; '.join(extra)}]" if extra else ""
                runs.append(
                    f"{sample.rps:,.0f} / {sample.p50_us / 1000:.2f} ms / "
                    f"{sample.p99_us / 1000:.2f} ms / {sample.cpu_us:.0f} µs / "
                    f"{sample.bytes_per_response:.0f} B{note}"
                )
            lines.append(f"| {target.spec.name} | {scenario.name} | {'; '.join(runs)} |")
    if report.rss:
        lines += [
            "",
            "Store memory (`sipcert serve`, 2 workers, after one random-AOR keep-alive run), "
            "per worker: RSS, and of it the anonymous memory (heap; the rest is mapped files "
            "such as shared libraries):",
            "",
            "| AORs | RSS per worker | anonymous |",
            "|---|---|---|",
        ]
        for count, rss in report.rss:
            values = sorted(rss.values())
            total = ", ".join(f"{r / 1024:.1f} MiB" for r, _ in values)
            anon = ", ".join(f"{a / 1024:.1f} MiB" for _, a in values)
            lines.append(f"| {count:,} | {total} | {anon} |")
    lines += [
        "",
        "Negotiated protocol (system OpenSSL `s_client`, the library wrk uses): "
        + ", ".join(f"{t.spec.name} {t.tls_version}" for t in report.targets)
        + ".",
        "",
        f"Machine: {os.cpu_count()} CPUs (`nproc` {len(os.sched_getaffinity(0))}), {cpu_model()}.",
        "",
        "| component | version |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in versions().items()]
    lines += ["", END_FULL if args.full else END]
    return "\n".join(lines) + "\n"


HEADER = """# Benchmarks: the Store against nginx

How fast `sipcert serve` answers `GET /search-cgi`, next to nginx serving the very same
answers on the same machine in the same run. Reproduce with the command shown below;
bench/README.md explains the set-up.

"""


def write_docs(path: Path, section: str, *, full: bool = False) -> None:
    """Replace the marked section (``--full`` has its own markers); add it when missing."""
    begin, end = (BEGIN_FULL, END_FULL) if full else (BEGIN, END)
    text = path.read_text() if path.exists() else HEADER + begin + "\n" + end + "\n"
    if begin in text and end in text:
        before, rest = text.split(begin, 1)
        after = rest.split(end, 1)[1]
        text = before + section.rstrip("\n") + after
    elif full and END in text:  # right after the default run's section
        before, after = text.split(END, 1)
        text = before + END + "\n\n" + section.rstrip("\n") + after
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--aors", type=int, help="AORs in the store (default 100,000)")
    parser.add_argument(
        "--full", action="store_true", help="1,000,000 AORs, and the Store's RSS at 10k vs 1M"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="300 AORs, 1 s runs, 1 round, no RSS (CI)"
    )
    parser.add_argument("--duration", type=int, help="seconds per wrk run, 1-10 (default 10)")
    parser.add_argument("--rounds", type=int, help="runs per measurement (default 3)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--targets",
        default=",".join(DEFAULT_TARGETS),
        help="comma-separated: nginx, edge, store-Nw[-cacheM] (this working tree; M: "
        "answer_cache_mb), LABEL-Nw[-cacheM] (a --tree); "
        "default: %(default)s",
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
    parser.add_argument("--rss", action=argparse.BooleanOptionalAction, help="measure RSS")
    parser.add_argument("--seed", type=int, default=13, help="seed of the AOR draws")
    parser.add_argument("--cache-dir", type=Path, default=CACHE, help="where corpora are kept")
    parser.add_argument("--output", type=Path, default=DOCS, help="Markdown file to update")
    parser.add_argument("--no-write", action="store_true", help="print the tables only")
    parser.add_argument("--wrk", default="wrk")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument(
        "--workspace",
        type=Path,
        help="work in this folder and keep it; an edge publication made there by an earlier "
        "run for the same corpus is reused instead of published again",
    )
    args = parser.parse_args(argv)
    if args.aors is None:
        args.aors = 300 if args.smoke else 1_000_000 if args.full else 100_000
    args.duration = args.duration or (1 if args.smoke else 10)
    args.rounds = args.rounds or (1 if args.smoke else 3)
    if args.rss is None:
        args.rss = not args.smoke
    if args.aors < 10:
        parser.error("--aors must be at least 10")
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
def workspace(keep: bool, given: Path | None = None) -> Iterator[Path]:
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given.resolve()
        return
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
    given = list(argv) if argv is not None else sys.argv[1:]
    command = ("python bench/store_vs_nginx.py " + shlex.join(given)).rstrip()
    loads = [load_average()]
    skipped: list[str] = []
    specs = list(args.specs)
    if any(s.kind == "edge" for s in specs) and not edge_available(dict(os.environ)):
        skipped.append(
            "`edge`: this tree has no `sipcert nginx-config` (the edge mode of issue 13); "
            "the target runs `sipcert publish --once`, `sipcert nginx-config` and "
            "`sipcert serve --unix-socket` once they exist."
        )
        print(f"skipping edge: {skipped[-1]}", file=sys.stderr)
        specs = [s for s in specs if s.kind != "edge"]
    with workspace(args.keep, args.workspace) as root:
        corpus_ = corpus(args.cache_dir, args.aors)
        fx = prepare(root)
        sources = {label: source_tree(label, ref, root) for label, ref in args.trees.items()}
        running: list[Running] = []
        try:
            for spec in specs:
                running.append(start(fx, corpus_, spec, sources))
            for target in running:
                wait_ready(fx, target)
                target.tls_version = system_openssl_tls_version(target.port)
            checked = check_same_answers(fx, corpus_, running)
            print(f"all targets give identical answers ({checked}); measuring", file=sys.stderr)
            results = {(t.spec.name, s): Cell() for t in running for s in args.scenarios}
            for round_no in range(1, args.rounds + 1):
                for number, scenario_name in enumerate(args.scenarios):
                    # A new draw per round and scenario (the same for every target): a cache
                    # must not meet the AORs of an earlier run again.
                    lua = root / f"random-{round_no}-{scenario_name}.lua"
                    lua.write_text(wrk_script(args.aors, args.seed + 100 * round_no + number))
                    for target in running:
                        sample = run_wrk(args, lua, target, SCENARIOS[scenario_name])
                        results[(target.spec.name, scenario_name)].samples.append(sample)
                        print(
                            f"round {round_no} {scenario_name:10} {target.spec.name:10} "
                            f"{sample.rps:10,.0f} req/s  p50 {sample.p50_us:8.0f} µs  "
                            f"p99 {sample.p99_us:8.0f} µs  cpu {sample.cpu_us:5.0f} µs/req  "
                            f"non-2xx {sample.non_2xx}  {sample.socket_errors}",
                            file=sys.stderr,
                        )
                        time.sleep(0.5 if args.smoke else 1)
            for target in running:
                if any(p.poll() is not None for p in target.processes):
                    raise SystemExit(f"{target.spec.name} died during the run")
        finally:
            for target in running:
                stop(target)
        rss = measure_rss(args, fx, sorted({10_000, args.aors}), root) if args.rss else []
        loads.append(load_average())
        report = Report(args, command, started, loads, running, results, checked, skipped, rss)
        section = render(report)
        print(section)
        if not args.no_write:
            write_docs(args.output, section, full=args.full)
            print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
