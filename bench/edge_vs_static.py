#!/usr/bin/env python3
"""Edge mode against plain nginx serving the same file, for one fixed AOR (issue 13).

One command (bench/README.md)::

    .venv/bin/python bench/edge_vs_static.py [--rounds 3] [--duration 5]

A real ``sipcert serve`` (unix socket), ``sipcert publish --once`` and nginx on the
``sipcert nginx-config`` configuration (tests/integration/edge/conftest.py), next to a
second nginx, one worker each, serving the same body as a static file with the same
certificate. ``wrk -t1 -c64`` with keep-alive and with ``Connection: close``, in
interleaved rounds; for each run the requests per second and the nginx worker's CPU time
per request (utime + stime from /proc, so other load on the machine counts less). The
realistic workload (random AORs of 100k) is bench/'s other harness.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from tests.integration.edge.conftest import EdgeSetup  # noqa: E402
from tests.integration.edge.test_edge_equivalence import canonical, put, user_cert  # noqa: E402
from tests.integration.store.conftest import StoreProcess, free_port, make_store_files  # noqa: E402

RESOLVE_LUA = (
    'function wrk.resolve(host, service)\n  wrk.addrs = wrk.lookup("127.0.0.1", service)\nend\n'
)


def workers_of(master: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            command = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == master and command.startswith(b"nginx: worker"):
            found.append(int(entry))
    return found


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def static_config(prefix: Path, port: int, cert: Path, key: Path, body: Path) -> str:
    return f"""user {"root" if os.geteuid() == 0 else "nobody"};
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    client_body_temp_path {prefix}/temp/body; proxy_temp_path {prefix}/temp/proxy;
    fastcgi_temp_path {prefix}/temp/fastcgi; uwsgi_temp_path {prefix}/temp/uwsgi;
    scgi_temp_path {prefix}/temp/scgi;
    access_log {prefix}/access.log combined buffer=64k flush=1s;
    sendfile on; tcp_nopush on; keepalive_requests 100000; server_tokens off;
    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:static:10m;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name example.com;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location = /search-cgi {{
            alias {body};
            default_type application/pkix-cert;
            add_header Cache-Control "max-age=60";
        }}
    }}
}}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="sipcert-edge-bench-"))
    files = make_store_files(root)
    store = StoreProcess(files, extra=["--unix-socket", str(root / "store.sock")])
    store.start()
    setup = EdgeSetup(files, root, store)
    static: subprocess.Popen[bytes] | None = None
    try:
        aor = "alice@example.com"
        if put(setup.python, aor, user_cert(aor), None).status_code != 201:
            raise SystemExit("enrollment failed")
        setup.publish_once()
        setup.start_nginx()
        body = root / "alice.der"
        body.write_bytes((setup.publish_dir / "example.com/a/alice/body").read_bytes())
        port = free_port()
        prefix = root / "static"
        (prefix / "temp").mkdir(parents=True)
        config = root / "static.conf"
        config.write_text(static_config(prefix, port, *files.tls["example.com"], body))
        static = subprocess.Popen(
            ["nginx", "-p", str(prefix), "-c", str(config), "-g", "daemon off;"]
        )
        time.sleep(0.5)
        assert setup.nginx is not None
        targets = {"nginx static": (port, static.pid), "edge": (setup.nginx_port, setup.nginx.pid)}
        lua = root / "resolve.lua"
        lua.write_text(RESOLVE_LUA)
        rps: dict[tuple[str, str], list[float]] = {}
        cpu: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for name, (target_port, master) in targets.items():
                for mode in ("keep-alive", "close"):
                    command = ["wrk", "-t1", "-c64", f"-d{args.duration}s", "-s", str(lua)]
                    if mode == "close":
                        command += ["-H", "Connection: close"]
                    command.append(f"https://example.com:{target_port}{canonical(aor)}")
                    workers = workers_of(master)
                    before = cpu_seconds(workers)
                    out = subprocess.run(command, capture_output=True, text=True, check=True)
                    used = cpu_seconds(workers) - before
                    if "Non-2xx" in out.stdout:
                        raise SystemExit(f"{name}: errors\n{out.stdout}")
                    count = int(re.search(r"(\d+) requests in", out.stdout).group(1))  # type: ignore[union-attr]
                    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out.stdout).group(1))  # type: ignore[union-attr]
                    rps.setdefault((name, mode), []).append(rate)
                    cpu.setdefault((name, mode), []).append(used / count * 1e6)
        print("| | req/s (median, range) | worker CPU µs/request (median) | × nginx static |")
        print("|---|---|---|---|")
        for mode in ("keep-alive", "close"):
            base = statistics.median(rps[("nginx static", mode)])
            for name in targets:
                values = rps[(name, mode)]
                median = statistics.median(values)
                print(
                    f"| {name}, {mode} | {median:,.0f} ({min(values):,.0f}–{max(values):,.0f}) "
                    f"| {statistics.median(cpu[(name, mode)]):.1f} | {median / base:.2f} |"
                )
    finally:
        if static is not None:
            static.terminate()
            static.wait(10)
        setup.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
