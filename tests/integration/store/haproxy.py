"""A real HAProxy (Debian ``haproxy``) in TCP mode in front of ``sipcert serve`` processes.

TLS passes through (SNI and all): HAProxy only adds a PROXY header (``send-proxy`` v1 or
``send-proxy-v2``) before the client's bytes and balances connections round robin.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.conftest import free_port, require_program


@contextlib.contextmanager
def haproxy(
    root: Path, backends: Sequence[tuple[int, str]], *, check: bool = False
) -> Iterator[int]:
    """HAProxy on a free port balancing over ``(port, "send-proxy"|"send-proxy-v2")``.

    ``check`` turns on fast health checks (every 100 ms, down after 2 failures) and retries
    of refused connections on another server, as a production balancer would have.
    """
    binary = require_program("haproxy")
    port = free_port()
    servers = "\n".join(
        f"    server s{n} 127.0.0.1:{backend} {mode}"
        + (" check inter 100 fall 2 rise 1" if check else "")
        for n, (backend, mode) in enumerate(backends)
    )
    config = root / f"haproxy-{port}.cfg"
    config.write_text(
        f"""global
    maxconn 1000
defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    retries 3
    option redispatch
frontend store
    bind 127.0.0.1:{port}
    default_backend stores
backend stores
    balance roundrobin
{servers}
"""
    )
    log = open(root / f"haproxy-{port}.log", "wb")
    process = subprocess.Popen(
        [binary, "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    log.close()
    try:
        deadline = time.monotonic() + 10
        while True:
            if process.poll() is not None:
                raise RuntimeError((root / f"haproxy-{port}.log").read_text())
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        yield port
    finally:
        process.kill()
        process.wait(5)
