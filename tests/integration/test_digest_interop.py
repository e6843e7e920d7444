"""Digest against real clients: curl and httpx talk to a loopback server using DigestServer.

The server is stdlib ``ThreadingHTTPServer`` on 127.0.0.1 (plain HTTP is fine on loopback;
the Store itself runs over HTTPS, draft §5). Its handler is the shape the Store's will have:
401 + challenges, 401 + ``stale=true`` challenges, 400 for malformed headers, 200 otherwise.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from subprocess import run

import httpx
import pytest

from sipcert.errors import AuthenticationError, InputError, StaleNonceError
from sipcert.proto.digest import (
    Algorithm,
    DigestClient,
    DigestResponse,
    DigestServer,
    StoredCredential,
    parse_authorization,
    parse_challenges,
)

REALM = "store.example.com"
SECRET = b"integration-test-secret-32-bytes"
USERS = {"alice": StoredCredential(password="wonderland")}
PATH = "/cert/alice@store.example.com?from=test"


@dataclass
class Exchange:
    """What the server saw and answered for one request."""

    method: str
    authorization: str | None
    status: int
    stale: bool = False
    accepted: DigestResponse | None = None


@dataclass
class Store:
    url: str
    digest: DigestServer
    clock_offset: float = 0.0
    exchanges: list[Exchange] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def statuses(self) -> list[int]:
        with self.lock:
            return [e.status for e in self.exchanges]

    def accepted(self) -> list[DigestResponse]:
        with self.lock:
            return [e.accepted for e in self.exchanges if e.accepted is not None]


class Handler(BaseHTTPRequestHandler):
    server: StoreHTTPServer

    def do_GET(self) -> None:
        self.handle_request()

    def do_PUT(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)  # the certificate, unused here
        self.handle_request()

    def handle_request(self) -> None:
        store = self.server.store
        now = time.time() + store.clock_offset
        header = self.headers.get("Authorization")
        exchange = Exchange(self.command, header, 200)
        challenges: Sequence[str] = ()
        try:
            user = store.digest.authenticate(
                header, USERS.get, method=self.command, request_uri=self.path, now=now
            )
            body = f"hello {user}".encode()
            exchange.accepted = parse_authorization(header or "")
        except StaleNonceError:
            exchange.status, exchange.stale = 401, True
            challenges = store.digest.challenges(now, stale=True)
            body = b"stale nonce"
        except AuthenticationError as exc:
            exchange.status = 401
            challenges = store.digest.challenges(now)
            body = str(exc).encode()
        except InputError as exc:
            exchange.status = exc.http_status
            body = str(exc).encode()
        with store.lock:
            store.exchanges.append(exchange)
        self.send_response(exchange.status)
        for value in challenges:
            self.send_header("WWW-Authenticate", value)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output quiet."""


class StoreHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    store: Store


Serve = Callable[..., Store]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start servers on demand; ``serve(algorithms)`` returns a running :class:`Store`."""
    started: list[tuple[StoreHTTPServer, threading.Thread]] = []

    def start(algorithms: Sequence[Algorithm] = (Algorithm.SHA256, Algorithm.MD5)) -> Store:
        httpd = StoreHTTPServer(("127.0.0.1", 0), Handler)
        host, port = httpd.server_address[:2]
        httpd.store = Store(
            url=f"http://{host!s}:{port}",
            digest=DigestServer(SECRET, REALM, nonce_lifetime=300, algorithms=algorithms),
        )
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        started.append((httpd, thread))
        return httpd.store

    yield start
    for httpd, thread in started:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


ALGORITHM_CASES = [
    pytest.param((Algorithm.SHA256, Algorithm.MD5), "SHA-256", id="sha256-offered-first"),
    pytest.param((Algorithm.MD5,), "MD5", id="md5-only"),
    # Clients take the first challenge, hence DigestServer's SHA-256-first default.
    pytest.param((Algorithm.MD5, Algorithm.SHA256), "MD5", id="md5-offered-first"),
]


# ---------------------------------------------------------------------------------------------
# curl
# ---------------------------------------------------------------------------------------------


def curl(url: str, user: str, *extra: str) -> tuple[int, str]:
    result = run(
        [
            "curl",
            "--silent",
            "--show-error",
            "--noproxy",
            "*",
            "--max-time",
            "20",
            "--digest",
            "--user",
            user,
            "--write-out",
            "\n%{http_code}",
            *extra,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    body, _, status = result.stdout.rpartition("\n")
    return int(status), body


@pytest.mark.peer("curl")
@pytest.mark.parametrize(("algorithms", "expected"), ALGORITHM_CASES)
def test_curl_digest_right_password(
    serve: Serve, algorithms: tuple[Algorithm, ...], expected: str
) -> None:
    store = serve(algorithms)
    status, body = curl(store.url + PATH, "alice:wonderland")
    assert (status, body) == (200, "hello alice")
    assert store.statuses() == [401, 200]
    (accepted,) = store.accepted()
    assert accepted.algorithm == expected  # curl answers the first challenge it is offered
    assert accepted.uri == PATH
    assert (accepted.qop, accepted.nc) == ("auth", 1)


@pytest.mark.peer("curl")
@pytest.mark.parametrize(("algorithms", "expected"), ALGORITHM_CASES)
def test_curl_digest_wrong_password(
    serve: Serve, algorithms: tuple[Algorithm, ...], expected: str
) -> None:
    store = serve(algorithms)
    status, body = curl(store.url + PATH, "alice:not-wonderland")
    assert status == 401
    assert body == "Digest authentication failed: wrong username or password"
    assert store.statuses() == [401, 401]
    assert store.accepted() == []
    sent = parse_authorization(store.exchanges[-1].authorization or "")
    assert sent.algorithm == expected


@pytest.mark.peer("curl")
def test_curl_digest_put_like_enrollment(serve: Serve) -> None:
    store = serve()
    status, body = curl(
        store.url + PATH,
        "alice:wonderland",
        "--request",
        "PUT",
        "--header",
        "Content-Type: application/pkix-cert",
        "--data-binary",
        "not really DER",
    )
    assert (status, body) == (200, "hello alice")
    assert [e.method for e in store.exchanges] == ["PUT", "PUT"]
    assert store.accepted()[0].algorithm == "SHA-256"


@pytest.mark.peer("curl")
def test_curl_unknown_user_is_refused(serve: Serve) -> None:
    store = serve()
    status, body = curl(store.url + PATH, "mallory:wonderland")
    assert status == 401
    assert body == "Digest authentication failed: wrong username or password"


# ---------------------------------------------------------------------------------------------
# httpx
# ---------------------------------------------------------------------------------------------


def client() -> httpx.Client:
    return httpx.Client(trust_env=False, timeout=20)


@pytest.mark.parametrize(("algorithms", "expected"), ALGORITHM_CASES)
def test_httpx_digest_right_and_wrong_password(
    serve: Serve, algorithms: tuple[Algorithm, ...], expected: str
) -> None:
    store = serve(algorithms)
    with client() as http:
        ok = http.get(store.url + PATH, auth=httpx.DigestAuth("alice", "wonderland"))
        bad = http.get(store.url + PATH, auth=httpx.DigestAuth("alice", "wrong"))
    assert (ok.status_code, ok.text) == (200, "hello alice")
    assert bad.status_code == 401
    assert store.statuses() == [401, 200, 401, 401]
    (accepted,) = store.accepted()
    assert accepted.algorithm == expected
    assert accepted.uri == PATH


def test_httpx_reuses_the_nonce_with_increasing_nc(serve: Serve) -> None:
    store = serve()
    auth = httpx.DigestAuth("alice", "wonderland")
    with client() as http:
        for _ in range(3):
            assert http.put(store.url + PATH, content=b"cert", auth=auth).status_code == 200
    assert store.statuses() == [401, 200, 200, 200]  # one challenge, then pre-emptive answers
    accepted = store.accepted()
    assert [r.nc for r in accepted] == [1, 2, 3]
    assert len({r.nonce for r in accepted}) == 1


def test_replayed_authorization_is_refused(serve: Serve) -> None:
    store = serve()
    with client() as http:
        ok = http.get(store.url + PATH, auth=httpx.DigestAuth("alice", "wonderland"))
        assert ok.status_code == 200
        captured = store.exchanges[-1].authorization
        assert captured is not None
        replay = http.get(store.url + PATH, headers={"Authorization": captured})
    assert replay.status_code == 401
    assert "already used" in replay.text
    assert not store.exchanges[-1].stale  # a replay is refused, not merely re-challenged
    assert len(store.accepted()) == 1


def test_httpx_recovers_from_a_stale_nonce(serve: Serve) -> None:
    store = serve()
    auth = httpx.DigestAuth("alice", "wonderland")
    with client() as http:
        assert http.get(store.url + PATH, auth=auth).status_code == 200
        store.clock_offset = 301.0  # the nonce httpx holds is now past its lifetime
        again = http.get(store.url + PATH, auth=auth)
    assert again.status_code == 200
    assert store.statuses() == [401, 200, 401, 200]
    assert [e.stale for e in store.exchanges] == [False, False, True, False]
    first, second = store.accepted()
    assert first.nonce != second.nonce
    assert second.nc == 1


def test_malformed_and_foreign_authorization_headers(serve: Serve) -> None:
    store = serve()
    with client() as http:
        malformed = http.get(store.url + PATH, headers={"Authorization": 'Digest username="x'})
        basic = http.get(store.url + PATH, headers={"Authorization": "Basic YWxpY2U6d29uZGVy"})
        huge = http.get(store.url + PATH, headers={"Authorization": "Digest a=" + "x" * 5000})
    assert malformed.status_code == 400
    assert "unterminated quoted-string" in malformed.text
    assert basic.status_code == 401
    assert parse_challenges(basic.headers.get_list("www-authenticate"))[0].realm == REALM
    assert huge.status_code == 431  # a header too large (RFC 6585 §5), not a body (issue 9)


# ---------------------------------------------------------------------------------------------
# our own client against the same server, over a real socket
# ---------------------------------------------------------------------------------------------


def test_digest_client_over_http(serve: Serve) -> None:
    store = serve()
    ua = DigestClient("alice", "wonderland")
    with client() as http:
        challenge = http.put(store.url + PATH, content=b"cert")
        assert challenge.status_code == 401
        header = ua.answer(challenge.headers.get_list("www-authenticate"), method="PUT", uri=PATH)
        assert (
            http.put(
                store.url + PATH, content=b"cert", headers={"Authorization": header}
            ).status_code
            == 200
        )
        following = ua.authorization(method="GET", uri=PATH)
        assert following is not None
        assert http.get(store.url + PATH, headers={"Authorization": following}).status_code == 200
    assert [r.nc for r in store.accepted()] == [1, 2]
    assert store.accepted()[0].algorithm == "SHA-256"
