"""A real HAProxy (Debian ``haproxy``) in TCP mode in front of ``sipcert serve`` processes.

TLS passes through (SNI and all): HAProxy only adds a PROXY header (``send-proxy`` v1 or
``send-proxy-v2``) before the client's bytes and balances connections round robin.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

from tests.conftest import free_port, require_program, wait_for
from tests.integration.store.conftest import StoreFiles, StoreProcess, _Redirected

#: Where direct (not balanced) test clients connect from: not a trusted balancer.
DIRECT = "127.0.0.9"


def tls_handshake(port: int, source: str, files: StoreFiles, first: bytes = b"") -> bool:
    """Whether a TLS handshake (after ``first`` raw bytes) from ``source`` succeeds.

    Driven through memory BIOs over a plain socket, so a refused connection leaves no
    half-made ``SSLSocket`` behind (that leaked one now and then, a ResourceWarning).
    """
    context = ssl.create_default_context(cafile=files.ca_file)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="example.com")
    try:
        with socket.create_connection(
            ("127.0.0.1", port), timeout=5, source_address=(source, 0)
        ) as raw:
            raw.sendall(first)
            while True:
                try:
                    tls.do_handshake()
                except ssl.SSLWantReadError:
                    raw.sendall(outgoing.read())
                    data = raw.recv(65536)
                    if not data:
                        return False
                    incoming.write(data)
                    continue
                raw.sendall(outgoing.read())
                return True
    except (ssl.SSLError, OSError):
        return False


def proxied(process: StoreProcess) -> StoreProcess:
    """``process``, whose readiness check connects directly from :data:`DIRECT` (from
    127.0.0.1, a trusted balancer, a handshake needs a PROXY header first)."""

    def ready(timeout: float = 20.0) -> None:
        def up() -> bool:
            assert process.process is not None
            if process.process.poll() is not None:
                raise RuntimeError(f"sipcert serve exited early:\n{process.output()}")
            return tls_handshake(process.port, DIRECT, process.files)

        wait_for(up, "the Store to accept TLS", timeout)

    process.wait_ready = ready  # type: ignore[method-assign]
    return process


@contextlib.contextmanager
def client_via(files: StoreFiles, port: int, source: str) -> Iterator[httpx.Client]:
    """An httpx client for example.com to ``port``, leaving from ``source``, one connection
    per request (so that each is balanced anew)."""
    verify = ssl.create_default_context(cafile=files.ca_file)
    inner = httpx.HTTPTransport(verify=verify, local_address=source)
    mounts = {"all://example.com": _Redirected(inner, port)}
    headers = {"Connection": "close"}
    with httpx.Client(mounts=mounts, timeout=10, headers=headers) as client:
        yield client


def access_lines(store: StoreProcess) -> list[str]:
    return [line for line in store.output().splitlines() if "sipcert.access" in line]


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
