"""Issue 9, "Keep it that way": the malformed-input corpus against a real ``sipcert serve``.

Each case of :mod:`tests.integration.store.malformed_corpus` is written byte for byte on its
own TLS connection (SNI = the served domain), so malformed request lines and headers really
reach the server; no HTTP client normalises them. For each case: the exact status (never a
5xx the RFCs do not prescribe), the reason text, and no ``Server`` header naming a version.
At the end: the Store's log has no traceback and no ERROR line, and what it stores is what
it stored before (the seeded AOR's GET answer and ETag, and every row of its database).
"""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.store.conftest import StoreFiles, StoreProcess
from tests.integration.store.malformed_corpus import (
    ALICE_Q,
    PIPELINED,
    PKIX,
    Case,
    Env,
    all_cases,
    der,
    good_cert,
    raw,
)

SECRET = b"malformed-corpus-nonce-secret-0123456789"
#: 5xx answers the RFCs prescribe for a request the Store does not implement.
PRESCRIBED_5XX = {501, 505}
CASES = all_cases()


@pytest.fixture(scope="module")
def corpus_store(store_files: StoreFiles) -> Iterator[StoreProcess]:
    config = store_files.root / "corpus.toml"
    config.write_text(
        f'nonce_secret = "{SECRET.decode()}"\naccess_log = true\nlog_level = "info"\n'
        "auth_failures = 100000\nauth_failures_per_user = 200000\n"
    )
    process = StoreProcess(store_files, extra=["--config", str(config)])
    process.start()
    try:
        yield process
    finally:
        process.stop()


class Answer:
    def __init__(self, status: int, headers: dict[str, list[str]], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    @property
    def reason(self) -> str:
        return self.body.decode("utf-8", "replace").split("\n", 1)[0]

    def header(self, name: str) -> str:
        return ", ".join(self.headers.get(name, []))


def _read_answer(tls: ssl.SSLSocket, buffer: bytearray, head_request: bool) -> Answer:
    """One HTTP/1.x answer framed by Content-Length (the Store never sends chunked)."""
    while b"\r\n\r\n" not in buffer:
        chunk = tls.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before an answer: {bytes(buffer)!r}")
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    length = 0 if head_request else int(headers.get("content-length", ["0"])[0])
    body = bytearray(rest)
    while len(body) < length:
        chunk = tls.recv(65536)
        if not chunk:
            break
        body += chunk
    buffer[:] = body[length:]
    return Answer(int(status_line.split()[1]), headers, bytes(body[:length]))


def send(store: StoreProcess, data: bytes, *, sni: str = "example.com", answers: int = 1) -> Answer:
    """``data`` on a new TLS connection; the last of ``answers`` answers."""
    context = ssl.create_default_context(cafile=store.files.ca_file)
    with (
        socket.create_connection(("127.0.0.1", store.port), timeout=10) as sock,
        context.wrap_socket(sock, server_hostname=sni) as tls,
    ):
        # The Store may answer and close before it has read everything (413, 431): that
        # is the point, so a reset while sending is not a failure; the answer is read next.
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            tls.sendall(data)
        buffer = bytearray()
        head_request = data.startswith(b"HEAD ")
        answer = _read_answer(tls, buffer, head_request)
        for _ in range(answers - 1):
            answer = _read_answer(tls, buffer, head_request)
        return answer


def state(store: StoreProcess) -> tuple[object, ...]:
    """What the Store holds: alice's GET answer and ETag, and every database row."""
    answer = send(store, raw())
    with contextlib.closing(sqlite3.connect(f"file:{store.files.db_path}?mode=ro", uri=True)) as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        rows = {}
        for table in tables:
            query = f'SELECT * FROM "{table}"'  # noqa: S608 - names from sqlite_master
            rows[table] = sorted(map(repr, db.execute(query)))
    return answer.status, answer.header("etag"), answer.body, rows


def test_the_corpus_has_over_400_distinct_cases() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids)), [i for i in ids if ids.count(i) > 1]
    env = Env(SECRET)
    requests = {case.build(env) for case in CASES if isinstance(case.request, bytes)}
    assert len(requests) == sum(isinstance(case.request, bytes) for case in CASES)
    assert len(CASES) >= 400


def test_every_malformed_request_gets_its_answer_and_changes_nothing(
    corpus_store: StoreProcess,
) -> None:
    env = Env(SECRET)
    enrolled = der(good_cert(slot=1))
    auth = env.authorization("PUT", ALICE_Q)
    seeded = send(corpus_store, raw("PUT", ALICE_Q, [*PKIX, ("Authorization", auth)], enrolled))
    assert seeded.status in (200, 201), seeded.reason
    before = state(corpus_store)
    assert before[0] == 200 and before[2] == enrolled

    wrong: list[str] = []
    for case in CASES:
        answer = send(
            corpus_store, case.build(env), sni=case.sni, answers=PIPELINED.get(case.id, 1)
        )
        problems = _check(case, answer)
        if problems:
            wrong.append(f"{case.id}: {problems}")
    assert not wrong, "\n".join(wrong)

    assert state(corpus_store) == before
    corpus_store.stop()
    log = Path(corpus_store.log_path or "").read_text(errors="replace")
    assert "Traceback" not in log
    assert not [line for line in log.splitlines() if " ERROR " in line]


def _check(case: Case, answer: Answer) -> str:
    if answer.status >= 500 and answer.status not in PRESCRIBED_5XX:
        return f"a server error: {answer.status} {answer.reason!r}"
    if answer.status != case.status:
        return f"status {answer.status} (expected {case.status}), reason {answer.reason!r}"
    if case.reason and case.reason.lower() not in answer.reason.lower():
        return f"reason {answer.reason!r} does not say {case.reason!r}"
    if answer.header("server") != "sipcert":
        return f"Server header {answer.header('server')!r}"
    if case.header is not None:
        name, part = case.header
        if part not in answer.header(name):
            return f"{name} {answer.header(name)!r} lacks {part!r}"
    return ""
