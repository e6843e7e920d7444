"""Edge mode answers exactly as the Python Store does (issue 13).

A real ``sipcert serve`` on TCP and a unix socket, ``sipcert publish --once`` then a
following publisher, and the system nginx on the generated configuration. For a corpus of
queries (every spelling ``parse_query`` accepts, unknown AORs, several certificates, labels
that a path cannot spell, errors, 304s, HEAD) both answer over TLS with SNI: the status,
body and relevant headers must be identical. Then writes go through nginx (enrollment,
revocation) and a short-lived certificate expires: the edge follows, and never serves it
after its notAfter (draft §4.4).
"""

from __future__ import annotations

import os
import socket
import ssl
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sipcert.client.fetch import DigestAuth
from sipcert.proto.edge import map_line
from sipcert.proto.store import format_description
from sipcert.server.publish import reload_nginx
from sipcert.storage import cert_hash_of
from tests.factories import make_cert, make_key
from tests.integration.edge.conftest import EdgeSetup, Endpoint, wait_for
from tests.integration.store.conftest import USERS, StoreProcess

pytestmark = pytest.mark.peer("nginx")

PKIX = "application/pkix-cert"
#: The headers compared; Date, Server, Connection, Keep-Alive and the like are not the
#: answer (and a 401's nonce differs per request by design).
RELEVANT = (
    "content-type",
    "etag",
    "cache-control",
    "content-description",
    "content-disposition",
    "content-length",
    "allow",
    "retry-after",
    "location",
)
#: erin's certificate lives this long after enrollment (seconds).
SHORT_LIFE = 6.0


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


_MADE: dict[tuple[str, int], bytes] = {}


def user_cert(aor: str, slot: int = 0, *, lifetime: timedelta | None = None) -> bytes:
    """The certificate of ``aor``'s device ``slot``: made once, the same bytes afterwards."""
    if (aor, slot) in _MADE:
        return _MADE[aor, slot]
    now = datetime.now(UTC).replace(microsecond=0)
    _MADE[aor, slot] = der(
        make_cert(
            make_key("ec-p256", aor, slot),
            aor,
            not_before=now - timedelta(minutes=5),
            not_after=now + (lifetime or timedelta(days=10)),
        )
    )
    return _MADE[aor, slot]


def canonical(aor: str, attribute: str = "email") -> str:
    return f"/search-cgi?{attribute}={quote(aor, safe='')}"


def put(where: Endpoint, aor: str, body: bytes, label: str | None = None) -> httpx.Response:
    domain = aor.rpartition("@")[2]
    headers = {"Content-Type": PKIX}
    if label is not None:
        headers["Content-Description"] = format_description(label)
    with where.client(domain) as client:
        return client.put(
            where.url(domain, canonical(aor)),
            content=body,
            headers=headers,
            auth=DigestAuth(aor.partition("@")[0], USERS[aor]),
        )


def delete(where: Endpoint, aor: str) -> httpx.Response:
    domain = aor.rpartition("@")[2]
    with where.client(domain) as client:
        return client.delete(
            where.url(domain, canonical(aor)),
            auth=DigestAuth(aor.partition("@")[0], USERS[aor]),
        )


Answer = tuple[int, bytes, dict[str, str]]


def ask(
    where: Endpoint, domain: str, method: str, target: str, headers: dict[str, str] | None = None
) -> Answer:
    with where.client(domain) as client:
        response = client.request(method, where.url(domain, target), headers=headers or {})
    relevant = {name: response.headers[name] for name in RELEVANT if name in response.headers}
    return response.status_code, response.content, relevant


def same(setup: EdgeSetup, domain: str, method: str, target: str, **headers: str) -> Answer:
    """The edge's answer, after checking that it is the Store's."""
    python = ask(setup.python, domain, method, target, headers)
    edge = ask(setup.edge, domain, method, target, headers)
    if edge[0] == 304:
        # The one difference, documented in docs/deploy.md: nginx's `return 304` always
        # writes "Content-Length: 0"; a 304 has no content whatever it says (RFC 9112 §6.3).
        assert edge[2].pop("content-length", "0") == "0"
    assert edge == python, f"{method} {target} {headers}"
    return edge


ENROLLED = {
    # aor: [(slot, label)]
    "alice@example.com": [(0, "Desk phone")],
    "bob@example.com": [(0, None), (1, "Téléphone")],  # two: multipart; an encoded-word
    "dave@example.com": [(0, "home/office")],  # a label no path can spell: proxied
    "carol@example.net": [(0, None)],
    "label@example.com": [(0, 'the "red" one; {a\\b}')],  # quoted in the map
}


@pytest.fixture(scope="module")
def edge(setup: EdgeSetup) -> Iterator[EdgeSetup]:
    """Certificates enrolled through the Store, published once, a follower, nginx up."""
    for aor, devices in ENROLLED.items():
        for slot, label in devices:
            assert put(setup.python, aor, user_cert(aor, slot), label).status_code == 201
    output = setup.publish_once()
    assert "published 5 AOR(s)" in output  # alice, bob, dave, carol and label
    setup.start_follower()
    setup.start_nginx()
    yield setup


def etag_of(setup: EdgeSetup, aor: str) -> str:
    status, _, headers = ask(setup.python, aor.rpartition("@")[2], "GET", canonical(aor))
    assert status == 200
    return headers["etag"]


def spellings(aor: str) -> list[str]:
    """Every way ``parse_query`` reads the same AOR (tests/unit/proto/test_store.py)."""
    user, _, host = aor.partition("@")
    escaped_first = "%" + format(ord(user[0]), "02X") + user[1:]
    return [
        canonical(aor),
        canonical(aor, "sip"),
        f"/search-cgi?email={aor}",
        f"/search-cgi?email={user}%40{host.upper()}",
        f"/search-cgi?sip={quote('sip:' + aor, safe='')}",
        f"/search-cgi?uri={quote('sip:' + aor, safe='')}",
        f"/search-cgi?email=sips:{user}@{host}",
        f"/search-cgi?email={escaped_first}%40{host}",
        f"/search-cgi?email={quote(escaped_first, safe='')}%40{host}",
    ]


def test_nginx_presents_each_domain_s_certificate_and_refuses_other_names(
    edge: EdgeSetup,
) -> None:
    """Draft §4.3 unchanged: the handshake proves the AOR's domain, or fails."""
    context = ssl.create_default_context(cafile=edge.files.ca_file)
    for domain in ("example.com", "example.net"):
        with (
            socket.create_connection(("127.0.0.1", edge.nginx_port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=domain) as tls,
        ):
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
    lax = ssl.create_default_context(cafile=edge.files.ca_file)
    lax.check_hostname = False
    for where in (edge.edge, edge.python):
        for name in ("unknown.example", None):
            with (
                socket.create_connection(("127.0.0.1", where.port), timeout=5) as raw,
                pytest.raises(ssl.SSLError),
                lax.wrap_socket(raw, server_hostname=name),
            ):
                pass


def test_every_spelling_unknown_aors_and_errors_answer_the_same(edge: EdgeSetup) -> None:
    targets: list[tuple[str, str]] = []
    for aor in (*ENROLLED, "erin@example.com"):
        targets += [(aor.rpartition("@")[2], t) for t in spellings(aor)]
    alice_hash = cert_hash_of(user_cert("alice@example.com"))
    for target in (
        canonical("nobody@example.com"),  # unknown: the 404 from nginx, no Python
        canonical("nobody@example.com", "sip"),
        "/search-cgi?email=nobody@example.com",
        canonical("bob+home@example.com"),  # a user the files do not cover: proxied
        canonical(".hidden@example.com"),
        canonical("x" * 65 + "@example.com"),
        canonical("carol@example.net"),  # another served domain on this connection
        canonical("zed@example.org"),  # a domain not served here
        canonical("alice@example.com") + f"&certHash={quote(alice_hash, safe='')}",
        f"/search-cgi?certHash={quote(alice_hash, safe='')}",
        "/search-cgi",
        "/search-cgi?",
        "/search-cgi?email=",
        "/search-cgi?email=a%40example.com&email=b%40example.com",
        "/search-cgi?email=a%40example.com&sip=a%40example.com",
        "/search-cgi?bogus=1",
        "/search-cgi?email=bob%zz%40example.com",
        "/search-cgi?email=bob%ff%40example.com",
        "/search-cgi?email=" + "a" * 3000,
        "/search-cgi/",
        "/elsewhere",
        "/account",
    ):
        targets.append(("example.com", target))
    for domain, target in targets:
        for method in ("GET", "HEAD"):
            same(edge, domain, method, target)
    for method in ("POST", "OPTIONS", "PATCH"):
        same(edge, "example.com", method, canonical("alice@example.com"))


def test_canonical_queries_never_reach_python(edge: EdgeSetup) -> None:
    """The answers nginx has files for: no upstream in its access log ($upstream_addr)."""
    targets = [canonical("alice@example.com"), canonical("bob@example.com", "sip")]
    targets += [canonical("nobody@example.com"), canonical("dave@example.com")]
    targets += [canonical("label@example.com")]
    since = edge.log_mark()
    for target in targets:
        ask(edge.edge, "example.com", "GET", target)
    routes = edge.routes(since, targets)
    # alice from the map; bob's sip= spelling through his symlink; nobody's 404 from the
    # files too; dave's label has no path: the Store answers.
    assert routes[0] == ("/search-cgi", "-"), routes
    assert routes[1] == ("/_sipcert_body", "-"), routes
    assert routes[2] == ("/_sipcert_slow", "-"), routes
    assert routes[3][1].startswith("unix:"), routes
    assert routes[4] == ("/search-cgi", "-"), routes  # label's quotes, braces, backslash
    same(edge, "example.com", "GET", canonical("label@example.com"))


def test_the_map_serves_a_change_at_once_and_again_after_its_reload(edge: EdgeSetup) -> None:
    """A change removes the AOR's old object as its symlink moves (nginx, finding no body
    where its map says, takes the symlink), then the next map generation maps the new one:
    nginx reloaded, the answer the same."""
    aor, target = "alice@example.com", canonical("alice@example.com")
    before = (edge.publish_dir / "example.com" / "a" / "alice").resolve()
    reloads = edge.follower_output().count("nginx reloaded")
    try:
        assert put(edge.python, aor, user_cert(aor, 7)).status_code == 201
        expected = ask(edge.python, "example.com", "GET", target)
        assert expected[2]["content-type"].startswith("multipart/mixed")
        wait_for(lambda: ask(edge.edge, "example.com", "GET", target) == expected, "alice")
        assert not before.exists()
        wait_for(lambda: edge.follower_output().count("nginx reloaded") > reloads, "a reload")
        since = edge.log_mark()
        assert ask(edge.edge, "example.com", "GET", target) == expected
        assert edge.routes(since, [target]) == [("/search-cgi", "-")]  # from the new map
    finally:
        with edge.python.client("example.com") as client:
            client.delete(
                edge.python.url(
                    "example.com",
                    target + f"&certHash={quote(cert_hash_of(user_cert(aor, 7)), safe='')}",
                ),
                auth=DigestAuth("alice", USERS[aor]),
            )
    single = ask(edge.python, "example.com", "GET", target)
    wait_for(lambda: ask(edge.edge, "example.com", "GET", target) == single, "alice again")


def test_a_map_entry_whose_object_is_gone_takes_the_symlink(edge: EdgeSetup) -> None:
    """What a map nginx still holds says of an AOR changed since: an object that is gone.
    nginx then serves what the symlink names, with that answer's own ETag and headers (nginx
    keeps a map's value for the whole request: the entry's must not leak into it), and the
    Store's answer when the symlink's object has no body either (removed meanwhile)."""
    base = edge.publish_dir / "example.com"
    link, extra = base / "a" / "ghost", edge.publish_dir / "map" / "stale.map"
    empty = base / "o" / ("e" * 32 + "-1|_|_")
    target = canonical("ghost@example.com")
    alice = ask(edge.python, "example.com", "GET", canonical("alice@example.com"))
    entry = map_line("example.com", "ghost", "f" * 32 + "-1|_|_")  # an object that is gone
    assert entry is not None and alice[2]["etag"] != '"' + "f" * 32 + '"'
    try:
        os.symlink(os.path.join("..", "o", (base / "a" / "alice").resolve().name), link)
        extra.write_text(entry + "\n")
        assert reload_nginx(edge.prefix / "nginx.pid", 30)
        since = edge.log_mark()
        assert ask(edge.edge, "example.com", "GET", target) == alice
        assert edge.routes(since, [target]) == [("/_sipcert_body", "-")]
        # The symlink names an object without a body: the Store answers (ghost has none).
        empty.mkdir()
        os.replace(link, base / "a" / ".ghost")
        os.symlink(os.path.join("..", "o", empty.name), link)
        since = edge.log_mark()
        assert ask(edge.edge, "example.com", "GET", target) == ask(
            edge.python, "example.com", "GET", target
        )
        assert edge.routes(since, [target])[0][1].startswith("unix:")
    finally:
        for path in (link, base / "a" / ".ghost", extra):
            path.unlink(missing_ok=True)
        if empty.exists():
            empty.rmdir()
        assert reload_nginx(edge.prefix / "nginx.pid", 30)


@pytest.mark.parametrize("user", ["Alice", "ALICE", "alicE"])
def test_a_user_that_differs_in_case_is_another_aor(edge: EdgeSetup, user: str) -> None:
    """nginx's map compares keys without case; the user part of an AOR has case."""
    target = f"/search-cgi?email={user}%40example.com"
    same(edge, "example.com", "GET", target)
    since = edge.log_mark()
    assert ask(edge.edge, "example.com", "GET", target)[0] == 404
    assert edge.routes(since, [target])[0][0] != "/search-cgi"


def test_not_modified_and_head(edge: EdgeSetup) -> None:
    for aor in ("alice@example.com", "bob@example.com"):
        etag = etag_of(edge, aor)
        target = canonical(aor)
        for value in (
            etag,
            "W/" + etag,
            f'"0123", {etag}',
            f'"nope" ,\tW/{etag}',
            "*",
            "*, *",
            '"00000000000000000000000000000000"',
            etag.upper(),
            etag + ",",
            f"{etag[:-1]}",
        ):
            for method in ("GET", "HEAD"):
                status, _, _ = same(edge, "example.com", method, target, **{"If-None-Match": value})
                assert status in (200, 304)
        assert same(edge, "example.com", "GET", target, **{"If-None-Match": etag})[0] == 304
        # What nginx handles itself for static files must not change the answer either.
        same(edge, "example.com", "GET", target, Range="bytes=0-3")
        same(
            edge,
            "example.com",
            "GET",
            target,
            **{"If-Modified-Since": "Sun, 01 Jan 2090 00:00:00 GMT"},
        )
    same(edge, "example.com", "GET", canonical("nobody@example.com"), **{"If-None-Match": "*"})


def test_writes_through_nginx_reach_the_edge(edge: EdgeSetup) -> None:
    """PUT and DELETE go to the Store over the unix socket; the follower republishes."""
    aor = "hash@example.com"
    target = canonical(aor)
    assert same(edge, "example.com", "GET", target)[0] == 404
    created = put(edge.edge, aor, user_cert(aor), "via nginx")
    assert created.status_code == 201, created.text
    expected = ask(edge.python, "example.com", "GET", target)
    assert expected[0] == 200
    wait_for(lambda: ask(edge.edge, "example.com", "GET", target) == expected, "the enrollment")
    # Revocation through nginx, then the edge answers 404 again.
    assert delete(edge.edge, aor).status_code == 204
    wait_for(lambda: ask(edge.edge, "example.com", "GET", target)[0] == 404, "the revocation")
    same(edge, "example.com", "GET", target)
    # One of bob's two certificates revoked through the Store directly: multipart -> single.
    bob = "bob@example.com"
    bob_hash = cert_hash_of(user_cert(bob, 0))
    with edge.python.client("example.com") as client:
        gone = client.delete(
            edge.python.url(
                "example.com", canonical(bob) + f"&certHash={quote(bob_hash, safe='')}"
            ),
            auth=DigestAuth("bob", USERS[bob]),
        )
    assert gone.status_code == 204
    single = ask(edge.python, "example.com", "GET", canonical(bob))
    assert single[2]["content-type"] == PKIX
    wait_for(lambda: ask(edge.edge, "example.com", "GET", canonical(bob)) == single, "bob")
    # A connection that proved example.net may not answer for example.com, through nginx too.
    with edge.edge.client("example.net") as client:
        other = client.put(
            edge.edge.url("example.net", canonical("alice@example.com")),
            content=user_cert("alice@example.com", 3),
            headers={"Content-Type": PKIX},
            auth=DigestAuth("alice", USERS["alice@example.com"]),
        )
    assert other.status_code == 404


def test_the_domain_header_is_ignored_on_tcp(edge: EdgeSetup) -> None:
    """Only nginx, on the unix socket, may name the domain; a TLS client cannot."""
    headers = {"X-Sipcert-Domain": "example.net"}
    target = canonical("carol@example.net")
    assert ask(edge.python, "example.com", "GET", target, headers)[0] == 404
    assert ask(edge.edge, "example.com", "GET", target, headers)[0] == 404
    assert ask(edge.edge, "example.net", "GET", target)[0] == 200


def test_an_expired_certificate_is_never_served(edge: EdgeSetup) -> None:
    """Draft §4.4: the edge drops erin's certificate at (just before) its notAfter."""
    aor = "erin@example.com"
    target = canonical(aor)
    short = user_cert(aor, 5, lifetime=timedelta(seconds=SHORT_LIFE))
    assert put(edge.python, aor, short).status_code == 201
    not_after = x509.load_der_x509_certificate(short).not_valid_after_utc.timestamp()
    wait_for(lambda: ask(edge.edge, "example.com", "GET", target)[0] == 200, "erin at the edge")
    late: list[float] = []

    def dropped() -> bool:
        status = ask(edge.edge, "example.com", "GET", target)[0]
        if status == 200 and time.time() > not_after:
            late.append(time.time() - not_after)
        return status == 404

    wait_for(dropped, "the expiry at the edge", timeout=not_after - time.time() + 15)
    assert late == [], f"served {max(late):.3f} s after notAfter"
    wait_for(lambda: time.time() > not_after + 0.01, "the notAfter", timeout=SHORT_LIFE + 15)
    same(edge, "example.com", "GET", target)
    same(edge, "example.com", "HEAD", target)


def test_serve_publishes_itself_with_an_edge_table(edge: EdgeSetup) -> None:
    """``[edge] publish_dir``: one worker of ``sipcert serve`` keeps the folder current."""
    folder = edge.scratch / "served-edge"
    config = edge.scratch / "edge.toml"
    config.write_text(f'[edge]\npublish_dir = "{folder}"\n')
    store = StoreProcess(
        edge.files,
        extra=["--config", str(config), "--workers", "2"],
        data_dir=edge.scratch / "served-data",
    )
    store.start()
    try:
        aor = "alice@example.com"
        expected = ask(edge.python, "example.com", "GET", canonical(aor))[1]
        link = folder / "example.com" / "a" / "alice" / "body"
        wait_for(lambda: link.exists() and link.read_bytes() == expected, "the served edge")
        assert (folder / ".lock").exists()
    finally:
        store.stop()


def raw(where: Endpoint, sni: str, request: bytes) -> tuple[bytes, bytes]:
    """One request as bytes over TLS with ``sni``: the status line and the body."""
    context = ssl.create_default_context(cafile=where.files.ca_file)
    with (
        socket.create_connection(("127.0.0.1", where.port), timeout=10) as sock,
        context.wrap_socket(sock, server_hostname=sni) as tls,
    ):
        tls.sendall(request)
        chunks = []
        while chunk := tls.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0], body


@pytest.mark.parametrize("host", ["other.example", "example.net", "127.0.0.1"])
@pytest.mark.parametrize("aor", ["alice@example.com", "nobody@example.com", "bob+x@example.com"])
def test_the_handshake_not_host_names_the_domain(edge: EdgeSetup, host: str, aor: str) -> None:
    """Draft §4.3: Host may name anything; both answer for the TLS server name only."""
    request = f"GET {canonical(aor)} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    assert raw(edge.edge, "example.com", request) == raw(edge.python, "example.com", request)
