"""The PROXY protocol between a real HAProxy and a real ``sipcert serve`` (issue 10).

HAProxy (TCP mode, TLS passed through) connects from 127.0.0.1, the one trusted source;
clients connect to it from other loopback addresses (all of 127/8 is local on Linux), so
the Store must see those, not HAProxy's, in its access log and its guessing limiter. The
two HAProxy servers are the same Store, one with ``send-proxy`` (v1), one with
``send-proxy-v2``: round robin alternates the versions.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sipcert.proto.proxy import build_v1, build_v2
from tests.integration.store.conftest import (
    StoreFiles,
    StoreProcess,
    make_store_files,
)
from tests.integration.store.haproxy import (
    access_lines,
    client_via,
    haproxy,
    proxied,
    tls_handshake,
    wait_for,
)
from tests.integration.store.test_guessing import wrong_answer

pytestmark = pytest.mark.peer("haproxy")

ACCOUNT = "/account"


@pytest.fixture
def files(tmp_path: Path) -> StoreFiles:
    return make_store_files(tmp_path)


@pytest.fixture
def store(files: StoreFiles) -> Iterator[StoreProcess]:
    config = files.root / "proxied.toml"
    config.write_text(
        'access_log = true\nproxy_protocol_from = ["127.0.0.1/32"]\ntls_handshake_timeout = 2\n'
    )
    process = proxied(StoreProcess(files, extra=["--config", str(config)]))
    try:
        process.start()
        yield process
    finally:
        process.stop()


def test_the_store_sees_the_client_behind_haproxy_v1_and_v2(
    files: StoreFiles, store: StoreProcess
) -> None:
    backends = [(store.port, "send-proxy"), (store.port, "send-proxy-v2")]
    with haproxy(files.root, backends) as port:
        with client_via(files, port, "127.0.0.5") as client:
            for n in range(4):
                response = client.get(
                    f"https://example.com:{port}/search-cgi?email=v{n}@example.com"
                )
                assert response.status_code == 404  # reached the Store: nothing enrolled
        wait_for(lambda: len(access_lines(store)) >= 4, "the access log lines")
        lines = [line for line in access_lines(store) if "@example.com" in line]
        assert len(lines) == 4
        assert all(": 127.0.0.5 " in line for line in lines), lines

        # The limiter counts the real client: 20 checked wrong guesses from 127.0.0.5, then
        # 429 for it while 127.0.0.6, behind the same balancer, is still only challenged.
        with client_via(files, port, "127.0.0.5") as client:
            answer = wrong_answer_via(client, port)
            statuses = [guess_via(client, port, answer) for _ in range(21)]
        assert statuses[:20] == [401] * 20 and statuses[20] == 429, statuses
        with client_via(files, port, "127.0.0.6") as client:
            assert guess_via(client, port, wrong_answer_via(client, port)) == 401
        assert "429 for 127.0.0.5" in store.output()


def wrong_answer_via(client: httpx.Client, port: int) -> str:
    class _At:  # the store-like object wrong_answer() wants: URLs to the balancer
        @staticmethod
        def url(domain: str, target: str) -> str:
            return f"https://{domain}:{port}{target}"

    return wrong_answer(client, _At, "alice")  # type: ignore[arg-type]


def guess_via(client: httpx.Client, port: int, answer: str) -> int:
    url = f"https://example.com:{port}{ACCOUNT}"
    return client.get(url, headers={"Authorization": answer}).status_code


def test_only_trusted_sources_may_send_a_header_and_they_must(
    files: StoreFiles, store: StoreProcess
) -> None:
    v1 = build_v1(("203.0.113.9", 4000), ("127.0.0.1", store.port))
    v2 = build_v2(("203.0.113.9", 4000), ("127.0.0.1", store.port))
    # An untrusted client claiming another address is refused, whichever version it uses.
    assert not tls_handshake(store.port, "127.0.0.2", files, v1)
    assert not tls_handshake(store.port, "127.0.0.2", files, v2)
    # The balancer without a header is refused (it must always send one)...
    assert not tls_handshake(store.port, "127.0.0.1", files)
    assert not tls_handshake(store.port, "127.0.0.1", files, b"PROXY TCP4 1.2.3.4\r\n")
    # ...and with one it is served; a direct client without one is served as itself.
    assert tls_handshake(store.port, "127.0.0.1", files, v1)
    with client_via(files, store.port, "127.0.0.2") as client:
        assert client.get(f"https://example.com:{store.port}/search-cgi?email=d@example.com")
    wait_for(lambda: any("d@example.com" in line for line in access_lines(store)), "the log")
    assert any(": 127.0.0.2 " in line for line in access_lines(store) if "d@example.com" in line)
    output = store.output()
    assert "a PROXY header from 127.0.0.2, which is not trusted" in output
    assert "does not start with a PROXY protocol header" in output
    assert "Traceback" not in output
