"""TLS session tickets of one Store worker resume on the others (issue 13).

The listening SSL context is built in the parent before the workers fork, so every worker
holds the same session-ticket key (OpenSSL makes it when the context is created; the SNI
callback switches the certificate, not the context tickets are sealed with). A Caller that
resumes a session therefore skips the full handshake whichever worker accepts its next
connection. Checked with a real client across two workers: one is frozen (SIGSTOP) while
the other issues the ticket, then the roles swap.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.integration.store.conftest import StoreFiles, StoreProcess, only_worker

REQUEST = (
    b"GET /search-cgi?email=nobody%40example.com HTTP/1.1\r\nHost: example.com\r\n"
    b"Connection: close\r\n\r\n"
)


@pytest.fixture
def two_workers(store_files: StoreFiles) -> Iterator[StoreProcess]:
    process = StoreProcess(store_files, extra=["--workers", "2"])
    process.start()
    try:
        yield process
    finally:
        process.stop()


@dataclass(frozen=True)
class Connection:
    version: str | None
    reused: bool
    session: ssl.SSLSession | None


def _get(port: int, context: ssl.SSLContext, session: ssl.SSLSession | None) -> Connection:
    """One GET over a new connection (offering ``session``): what TLS made of it."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    tls = context.wrap_socket(raw, server_hostname="example.com", session=session)
    with tls:
        tls.sendall(REQUEST)
        answer = b""
        while chunk := tls.recv(65536):  # the tickets arrive before the answer's bytes
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 404 ")
        return Connection(tls.version(), tls.session_reused, tls.session)


def test_a_ticket_from_one_worker_resumes_on_the_other(
    two_workers: StoreProcess, store_files: StoreFiles
) -> None:
    context = ssl.create_default_context(cafile=store_files.ca_file)
    first, second = two_workers.workers()
    with only_worker(first, [second]):
        issued = _get(two_workers.port, context, None)
    assert issued.version == "TLSv1.3"
    assert not issued.reused
    session = issued.session
    assert session is not None and session.has_ticket
    with only_worker(second, [first]):
        resumed = _get(two_workers.port, context, session)
    assert resumed.reused
    # And a ticket nobody issued is not accepted: a full handshake, not an error.
    with only_worker(first, [second]):
        fresh = _get(two_workers.port, ssl.create_default_context(cafile=store_files.ca_file), None)
    assert not fresh.reused
