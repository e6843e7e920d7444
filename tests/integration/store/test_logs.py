"""Issue 9 against a real ``sipcert serve``: logs nobody can forge, malformed HTTP answered
with a reason and one rate-limited WARNING line, and a ``Server`` header without versions.

Requests are written byte by byte over TLS (``raw``), because no HTTP client sends the
control characters these tests are about. Every request comes from its own loopback
address (127.0.0.0/8 is all local on Linux), so the per-address Digest limit never hides a
later request's parameters from the code that logs them.
"""

from __future__ import annotations

import itertools
import re
import signal
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from sipcert.server.http import REFUSALS_PER_SECOND
from tests.integration.store.conftest import StoreFiles, StoreProcess

#: What an attacker would like a log line to say, after a character that ends a line.
FORGED = "2026-12-01 12:00:00,000 ERROR sipcert.server: FORGED"
#: CR, LF, NUL, ESC, U+2028 (plus NEL and a bidi override, for good measure).
BREAKERS = ("\r", "\n", "\x00", "\x1b", "\u2028", "\x85", "\u202e")
LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) [\w.]+: ")


class Addresses:
    """A new loopback source address for every connection."""

    def __init__(self) -> None:
        self._next = 2

    def __call__(self) -> str:
        host = self._next
        self._next += 1
        return f"127.0.{host // 250}.{host % 250 + 2}"


def raw(
    store: StoreProcess, data: bytes, *, source: str = "127.0.0.1", sni: str = "example.com"
) -> bytes:
    """Send ``data`` on a new TLS connection and read the answer until the server closes."""
    context = ssl.create_default_context(cafile=store.files.ca_file)
    with (
        socket.create_connection(
            ("127.0.0.1", store.port), timeout=10, source_address=(source, 0)
        ) as sock,
        context.wrap_socket(sock, server_hostname=sni) as tls,
    ):
        tls.sendall(data)
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
        return answer


def request(
    method: str = "GET",
    target: str = "/search-cgi?email=alice@example.com",
    headers: dict[str, str] | None = None,
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: example.com", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


def digest(**params: str) -> str:
    fields = {
        "realm": '"example.com"',
        "nonce": '"bm9uY2U"',
        "uri": '"/search-cgi?email=alice@example.com"',
        "response": '"' + "0" * 64 + '"',
        "algorithm": "SHA-256",
        "qop": "auth",
        "nc": "00000001",
        "cnonce": '"abc"',
    }
    fields.update(params)
    return "Digest " + ", ".join(f"{k}={v}" for k, v in fields.items())


def check_log(path: Path) -> list[str]:
    """Every line of the Store's log is one record of printable ASCII, none forged."""
    data = path.read_bytes()
    assert all(b == 0x0A or 0x20 <= b < 0x7F for b in data), "a log byte is not printable ASCII"
    lines = data.decode().split("\n")
    assert lines.pop() == ""
    for line in lines:
        if line.startswith("sipcert: serving "):  # the CLI's start-up line (stdout)
            continue
        match = LINE.match(line)
        assert match is not None, f"not a log record: {line!r}"
        assert not line[match.end() :].startswith("FORGED"), f"forged: {line!r}"
        assert "Traceback" not in line
    return lines


@pytest.fixture
def store(store_files: StoreFiles, tmp_path: Path) -> Iterator[StoreProcess]:
    config = tmp_path / "store.toml"
    config.write_text(
        'access_log = true\nauth_failures = 2\nauth_failures_per_user = 2\nlog_level = "info"\n'
    )
    process = StoreProcess(store_files, extra=["--config", str(config)])
    process.start()
    try:
        yield process
    finally:
        process.stop()


_users = itertools.count()


def feeds(breaker: str) -> Iterator[bytes]:
    """One request per header or parameter that reaches a log, carrying ``breaker``."""
    evil = f"a{breaker}{FORGED}"
    pct = quote(evil, safe="")
    yield request(method=f"GE{breaker}T")
    yield request(target=f"/search-cgi{evil}")
    yield request(target=f"/search-cgi{pct}")
    yield request(target=f"/account{pct}")
    yield request(target=f"/search-cgi?email={evil}@example.com")
    yield request(target=f"/search-cgi?email={pct}@example.com")
    yield request(target=f"/search-cgi?email=alice@example.com&{pct}={pct}")
    for name in ("User-Agent", "Referer", "Host", "X-Forwarded-For", "If-None-Match"):
        yield request(headers={name: evil})
    for name in ("Content-Type", "Content-Description"):
        yield request("PUT", headers={name: evil, "Content-Length": "0"})
    for params in (
        {"username": f'"{evil}"'},
        {"username*": f"UTF-8''{pct}"},
        {"realm": f'"{evil}"'},
        {"nonce": f'"{evil}"'},
        {"uri": f'"{evil}"'},
        {"algorithm": f'"{evil}"'},
        {"qop": f'"{evil}"'},
        {"cnonce": f'"{evil}"'},
        {"nc": evil},
    ):
        for method in ("PUT", "DELETE"):
            # A user of its own each time, so no per-user limit stops the parameter early.
            fresh = {"username": f'"user{next(_users)}"', **params}
            if "username*" in params:
                del fresh["username"]
            headers = {"Authorization": digest(**fresh), "Content-Length": "0"}
            yield request(method, headers=headers)


def test_no_request_value_can_forge_a_log_line(store: StoreProcess) -> None:
    source = Addresses()
    for breaker in BREAKERS:
        for data in feeds(breaker):
            answer = raw(store, data, source=source())
            assert answer.startswith(b"HTTP/1.1 4") or answer.startswith(b"HTTP/1.0 4"), answer
        # A TLS server name the Store does not serve is refused in the handshake.
        if breaker in "\r\n\x1b":  # Python's ssl sends no others
            with pytest.raises(ssl.SSLError):
                raw(store, request(), source=source(), sni=f"a{breaker}.example.com")
        # The same invented user from several addresses: its bucket empties and the 429
        # WARNING names it (the line of the original report).
        user = quote(f"mallory{breaker}{FORGED}", safe="")
        for _ in range(4):
            headers = {"Authorization": digest(**{"username*": f"UTF-8''{user}"})}
            raw(store, request("DELETE", headers=headers), source=source())
    assert store.kill(signal.SIGTERM) == 0  # flushes the access log
    lines = check_log(store.log_path)  # type: ignore[arg-type]
    # The feeds did reach the log, escaped: the 429 WARNING names every invented user.
    for escaped in (r"\x0d", r"\x0a", r"\x00", r"\x1b", r"\u2028", r"\x85", r"\u202e"):
        assert any(f"mallory{escaped}{FORGED}" in line for line in lines), escaped


#: Requests aiohttp's parser refuses, and the reason the Store gives for each.
MALFORMED = [
    (b"GET * HTTP/1.1\r\nHost: example.com\r\n\r\n", "malformed request target"),
    (b"GARBAGE\r\n\r\n", "malformed request line: not an HTTP method"),
    (b"G\xc3\xa9T / HTTP/1.1\r\n\r\n", "malformed request line: not an HTTP method"),
    (b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", "malformed request: invalid header token"),
    (b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n", "malformed request target"),
    (b"GET / HTTP/1.1\r\nUser-Agent: a\x1bb\r\n\r\n", "malformed request: invalid header value"),
    (b"GET / HTTP/9.9\r\n\r\n", "malformed request"),
    (b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n", "malformed request"),
]


def parse_answer(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def test_malformed_http_is_answered_with_a_reason_and_one_rate_limited_line(
    store: StoreProcess,
) -> None:
    context = ssl.create_default_context(cafile=store.files.ca_file)
    # Handshakes first, then every request at once: far more refusals in a second than
    # the log takes one by one.
    count = 12 * REFUSALS_PER_SECOND
    connections = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", store.port), timeout=10)
            connections.append(context.wrap_socket(sock, server_hostname="example.com"))
        for i, tls in enumerate(connections):
            tls.sendall(MALFORMED[i % len(MALFORMED)][0])
        for i, tls in enumerate(connections):
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
            status, headers, body = parse_answer(answer)
            expected = MALFORMED[i % len(MALFORMED)][1]
            assert status == 400, answer
            assert headers["server"] == "sipcert"
            assert headers["content-type"] == "text/plain; charset=utf-8"
            assert body.decode().startswith(expected), (MALFORMED[i % len(MALFORMED)][0], body)
            assert body.endswith(b"\n") and body.count(b"\n") == 1  # one line, no echo
    finally:
        for tls in connections:
            tls.close()
    assert store.kill(signal.SIGTERM) == 0
    lines = check_log(store.log_path)  # type: ignore[arg-type]
    logged = [line for line in lines if "refused a request from" in line]
    summaries = [
        int(m.group(1))
        for line in lines
        if (m := re.search(r"WARNING sipcert.server: (\d+) more refused requests", line))
    ]
    assert all(" WARNING sipcert.server: " in line for line in logged)
    assert len(logged) + sum(summaries) == count  # every refusal is counted, once
    assert summaries and sum(summaries) >= count - 11 * REFUSALS_PER_SECOND
    assert not [line for line in lines if " ERROR " in line or "aiohttp" in line]


def test_no_answer_names_a_version(store: StoreProcess) -> None:
    for data in (
        request(),  # our own 200
        request(target="/nowhere"),  # our own 404
        request("PUT", headers={"Content-Length": "0"}),  # our own 401
        b"GET * HTTP/1.1\r\n\r\n",  # aiohttp's parser
    ):
        status, headers, _ = parse_answer(raw(store, data))
        assert headers["server"] == "sipcert", (status, headers)
