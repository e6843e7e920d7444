"""contrib/haproxy/haproxy.cfg in front of two real ``sipcert serve`` processes (issue 10).

The example file is used as it is, with only its addresses, ports and stats-socket path
replaced. Through HAProxy a client gets each domain's own certificate (SNI passed through in
TCP mode), enrolls on one Store and reads it back from the other (one shared database);
HAProxy's checks of the admin listeners' ``/readyz`` mark both Stores UP, and a Store
whose credentials fail goes DOWN.

The file's ``send-proxy-v2`` stays: the Stores trust HAProxy's address (127.0.0.1) for the
PROXY protocol, so the audit record of an enrollment names the client's own loopback address
(all of 127/8 is local), and a client from another address still reaches a Store directly.
"""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipcert.client.fetch import DigestAuth
from tests.conftest import require_program, wait_for
from tests.integration.store.conftest import StoreFiles, StoreProcess, free_port, make_store_files
from tests.integration.store.haproxy import DIRECT, client_via, proxied
from tests.integration.store.test_store_e2e import PKIX, der, pw, target, user_cert

CONFIG = Path(__file__).parents[3] / "contrib" / "haproxy" / "haproxy.cfg"
#: The client's own address behind HAProxy (DIRECT reaches the Stores without it).
CLIENT = "127.0.0.7"


class AdminStore(StoreProcess):
    """A Store with an admin listener on ``admin`` (for HAProxy's checks)."""

    admin: int = 0


def start_store(files: StoreFiles, name: str, taken: set[int]) -> AdminStore:
    """A Store on ports none of ``taken`` (which it adds its two to)."""
    port = free_port()
    while port in taken:
        port = free_port()
    admin = free_port()
    while admin in taken | {port}:
        admin = free_port()
    taken |= {port, admin}
    config = files.root / f"{name}.toml"
    config.write_text(
        f'admin_listen = "127.0.0.1:{admin}"\nfrontend_name = "{name}"\n'
        'proxy_protocol_from = ["127.0.0.1/32"]\n'
    )
    store = AdminStore(files, port=port, extra=["--config", str(config), "--workers", "2"])
    proxied(store)  # its readiness check comes from an address not trusted for PROXY
    store.admin = admin
    store.start()
    return store


def haproxy_config(port: int, socket_path: Path, stores: list[AdminStore]) -> str:
    text = CONFIG.read_text()
    text = text.replace("bind :443", f"bind 127.0.0.1:{port}")
    text = text.replace("/run/haproxy/sipcert.sock", str(socket_path))
    text = text.replace("inter 2s", "inter 200ms")  # faster UP/DOWN, same logic
    for name, store in zip(("store-a", "store-b"), stores, strict=True):
        text, count = re.subn(
            rf"server {name} 192\.0\.2\.\d+:443 check port 9100",
            f"server {name} 127.0.0.1:{store.port} check port {store.admin}",
            text,
        )
        assert count == 1, f"{name} not found in {CONFIG}"
    return text


def server_states(socket_path: Path) -> dict[str, str]:
    """HAProxy's ``show stat``: each server's status (UP, DOWN...)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(socket_path))
        sock.sendall(b"show stat\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    lines = data.decode().splitlines()
    header = lines[0].lstrip("# ").split(",")
    rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
    return {
        r["svname"]: r["status"]
        for r in rows
        if r.get("pxname") == "sipcert_stores" and r["svname"] not in ("FRONTEND", "BACKEND")
    }


class Proxied(StoreProcess):
    """Clients of :class:`StoreProcess`, pointed at HAProxy's port instead of a Store's."""


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Proxied, list[AdminStore], Path]]:
    haproxy = require_program("haproxy")
    files = make_store_files(tmp_path)
    stores: list[AdminStore] = []
    process: subprocess.Popen[bytes] | None = None
    try:
        taken: set[int] = set()
        stores = [start_store(files, "store-a", taken), start_store(files, "store-b", taken)]
        port = free_port()
        while port in taken:
            port = free_port()
        socket_path = tmp_path / "haproxy.sock"
        config = tmp_path / "haproxy.cfg"
        config.write_text(haproxy_config(port, socket_path, stores))
        check = subprocess.run(
            [haproxy, "-c", "-f", str(config)], capture_output=True, text=True, check=False
        )
        assert check.returncode == 0, check.stdout + check.stderr
        log = open(tmp_path / "haproxy.log", "wb")
        process = subprocess.Popen(
            [haproxy, "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        started = process

        def listening() -> bool:
            assert started.poll() is None, (tmp_path / "haproxy.log").read_text()
            return socket_path.exists()

        wait_for(listening, "HAProxy's stats socket")
        yield Proxied(files, port=port), stores, socket_path
    finally:
        if process is not None:
            process.terminate()
            process.wait(10)
        for store in stores:
            store.stop()


@pytest.mark.peer("haproxy")
def test_haproxy_passes_sni_through_to_both_stores(
    setup: tuple[Proxied, list[AdminStore], Path],
) -> None:
    proxied, stores, socket_path = setup
    wait_for(
        lambda: server_states(socket_path) == {"store-a": "UP", "store-b": "UP"},
        "both Stores UP by their /readyz checks",
    )
    context = ssl.create_default_context(cafile=proxied.files.ca_file)
    for domain in ("example.com", "example.net"):
        expected = proxied.files.tls[domain][0].read_bytes()
        with (
            socket.create_connection(("127.0.0.1", proxied.port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=domain) as tls,
        ):
            cert = tls.getpeercert(binary_form=True)
        assert cert == ssl.PEM_cert_to_DER_cert(expected.decode())
    alice = der(user_cert("alice@example.com"))
    with client_via(proxied.files, proxied.port, CLIENT) as client:
        enrolled = client.put(
            f"https://example.com:{proxied.port}{target('alice@example.com')}",
            content=alice,
            headers={"Content-Type": PKIX},
            auth=DigestAuth("alice", pw("alice@example.com")),
        )
    assert enrolled.status_code == 201
    # send-proxy-v2: the Store that took it audits the client's address, not HAProxy's.
    wait_for(
        lambda: any(f"address={CLIENT} " in s.output() for s in stores),
        "the audit record with the client's address",
    )
    for store in stores:  # from each Store directly, from an address not trusted for PROXY
        with client_via(proxied.files, store.port, DIRECT) as client:
            answer = client.get(f"https://example.com:{store.port}{target('alice@example.com')}")
        assert answer.status_code == 200
        assert answer.content == alice

    # A Store whose credential source fails is taken out of rotation by the check.
    files = proxied.files
    files.users_file.rename(files.users_file.with_suffix(".away"))
    try:
        wait_for(lambda: set(server_states(socket_path).values()) == {"DOWN"}, "both DOWN")
    finally:
        files.users_file.with_suffix(".away").rename(files.users_file)
    wait_for(lambda: set(server_states(socket_path).values()) == {"UP"}, "both UP again")
