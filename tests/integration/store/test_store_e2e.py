"""``sipcert serve`` end to end, driven by curl, openssl s_client and httpx (issue 3).

Every status code of the HTTP interface and every refusal reason of draft §5.1 is
exercised against the real process; see docs/store.md for the interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from sipcert.client.fetch import DigestAuth, parse_certificate_bodies
from sipcert.proto.digest import (
    Algorithm,
    build_authorization,
    parse_challenges,
)
from sipcert.proto.names import server_certificate_names
from sipcert.storage import SqliteStore, StoredCertificate, cert_hash_of
from tests.conftest import wait_for
from tests.factories import make_cert, make_key, resign_with_sha1
from tests.integration.store.conftest import (
    MAX_LIFETIME_DAYS,
    MAX_PER_AOR,
    NONCE_LIFETIME,
    USERS,
    StoreFiles,
    StoreProcess,
    is_running,
    make_store_files,
    only_worker,
)

PKIX = "application/pkix-cert"


def pw(aor: str) -> str:
    return USERS[aor]


def user_cert(
    aor: str,
    *,
    slot: int = 0,
    uris: list[str] | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> x509.Certificate:
    now = datetime.now(UTC)
    key = make_key("ec-p256", aor, slot)
    return make_cert(
        key,
        aor,
        uris=uris,
        not_before=not_before or now - timedelta(minutes=5),
        not_after=not_after or now + timedelta(days=10),
    )


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def target(aor: str, attribute: str = "email", **extra: str) -> str:
    query = f"{attribute}={quote(aor, safe='')}"
    for name, value in extra.items():
        query += f"&{name}={quote(value, safe='')}"
    return f"/search-cgi?{query}"


def put(
    store: StoreProcess, aor: str, body: bytes, *, user: str | None = None, password: str = ""
) -> httpx.Response:
    domain = aor.rpartition("@")[2]
    name = user or aor.partition("@")[0]
    with store.client(domain) as client:
        return client.put(
            store.url(domain, target(aor)),
            content=body,
            headers={"Content-Type": PKIX},
            auth=DigestAuth(name, password or pw(aor)),
        )


def get(store: StoreProcess, domain: str, path: str, **kwargs: object) -> httpx.Response:
    with store.client(domain) as client:
        return client.get(store.url(domain, path), **kwargs)  # type: ignore[arg-type]


# -- curl ------------------------------------------------------------------------------------


def curl(
    store: StoreProcess, domain: str, path: str, *args: str, tmp: Path
) -> tuple[int, dict[str, list[str]], bytes]:
    """Run curl; the final status, its headers (lower-case names) and the body."""
    headers_file, body_file = tmp / "curl.headers", tmp / "curl.body"
    for file in (headers_file, body_file):
        file.unlink(missing_ok=True)
    done = subprocess.run(
        [
            *store.curl_args(domain),
            "-D",
            str(headers_file),
            "-o",
            str(body_file),
            "-w",
            "%{http_code}",
            *args,
            store.url(domain, path),
        ],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    blocks = headers_file.read_bytes().decode("latin-1").strip().split("\r\n\r\n")
    headers: dict[str, list[str]] = {}
    for line in blocks[-1].split("\r\n")[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    body = body_file.read_bytes() if body_file.exists() else b""
    return int(done.stdout), headers, body


# -- SNI ---------------------------------------------------------------------------------------


def s_client(
    store: StoreProcess, *args: str, send: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{store.port}",
            "-CAfile",
            str(store.files.ca_file),
            *args,
        ],
        input=send,
        capture_output=True,
        timeout=30,
        check=False,
    )


@pytest.mark.peer("openssl")
def test_sni_chooses_the_domain_certificate_and_refuses_unknown_names(
    store: StoreProcess,
) -> None:
    for domain in ("example.com", "example.net"):
        done = s_client(store, "-servername", domain, "-verify_return_error")
        assert done.returncode == 0, done.stderr
        leaf = x509.load_pem_x509_certificate(done.stdout)
        assert server_certificate_names(leaf) == [domain]
        assert b"Verify return code: 0 (ok)" in done.stdout
        assert b"TLSv1.3" in done.stdout
    for args in (("-servername", "example.org"), ("-noservername",)):
        done = s_client(store, *args)
        assert done.returncode != 0
        assert b"BEGIN CERTIFICATE" not in done.stdout
        assert b"no peer certificate available" in done.stdout


@pytest.mark.peer("openssl")
def test_tls_versions_and_suites(store: StoreProcess) -> None:
    old = s_client(store, "-servername", "example.com", "-tls1_1")
    assert old.returncode != 0
    legacy = s_client(
        store, "-servername", "example.com", "-tls1_2", "-cipher", "AES128-SHA:DES-CBC3-SHA"
    )
    assert legacy.returncode != 0  # draft §5 suites deliberately not offered (docs/store.md)
    modern = s_client(store, "-servername", "example.com", "-tls1_2")
    assert modern.returncode == 0
    assert b"ECDHE" in modern.stdout


@pytest.mark.peer("openssl")
def test_get_over_openssl(store: StoreProcess) -> None:
    cert = user_cert("alice@example.com", slot=7)
    assert put(store, "alice@example.com", der(cert)).status_code == 201
    request = (
        f"GET {target('alice@example.com', 'sip')} HTTP/1.1\r\nHost: example.com\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    done = s_client(store, "-servername", "example.com", "-quiet", "-ign_eof", send=request)
    head, _, body = done.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"Content-Type: application/pkix-cert" in head
    assert body == der(cert)
    nothing = request.replace(b"alice", b"nobody")
    done = s_client(store, "-servername", "example.com", "-quiet", "-ign_eof", send=nothing)
    assert done.stdout.startswith(b"HTTP/1.1 404")
    assert _delete_all(store, "alice@example.com").status_code == 204


def _delete_all(store: StoreProcess, aor: str) -> httpx.Response:
    domain = aor.rpartition("@")[2]
    with store.client(domain) as client:
        return client.delete(
            store.url(domain, target(aor)),
            auth=httpx.DigestAuth(aor.partition("@")[0], pw(aor)),
        )


# -- curl --digest lifecycle ----------------------------------------------------------------------


@pytest.mark.peer("curl")
def test_curl_digest_enroll_get_head_304_delete(store: StoreProcess, tmp_path: Path) -> None:
    aor = "alice@example.com"
    path = target(aor)
    cert_file = tmp_path / "alice.der"
    cert = user_cert(aor)
    cert_file.write_bytes(der(cert))
    upload = ("-T", str(cert_file), "-H", f"Content-Type: {PKIX}")

    # 401: no credentials, wrong password, unknown user -- the same body each time.
    status, headers, no_auth = curl(store, "example.com", path, *upload, tmp=tmp_path)
    assert status == 401
    challenges = headers["www-authenticate"]
    assert [c.split("algorithm=")[1].split(",")[0] for c in challenges] == ["SHA-256", "MD5"]
    assert all('realm="example.com"' in c for c in challenges)
    bodies = {no_auth}
    for credentials in ("alice:wrong", "mallory:alice-secret"):
        status, _, body = curl(
            store, "example.com", path, "--digest", "-u", credentials, *upload, tmp=tmp_path
        )
        assert status == 401
        bodies.add(body)
    assert len(bodies) == 1

    auth = ("--digest", "-u", f"alice:{pw(aor)}")
    status, headers, body = curl(store, "example.com", path, *auth, *upload, tmp=tmp_path)
    assert status == 201, body
    cert_hash = cert_hash_of(der(cert))
    assert headers["location"] == [f"/search-cgi?certHash={quote(cert_hash, safe='')}"]
    status, _, _ = curl(store, "example.com", path, *auth, *upload, tmp=tmp_path)
    assert status == 200  # already stored

    status, headers, body = curl(store, "example.com", path, tmp=tmp_path)
    assert status == 200
    assert headers["content-type"] == [PKIX]
    assert headers["cache-control"] == ["max-age=60"]
    assert body == der(cert)
    etag = headers["etag"][0]

    status, headers, body = curl(store, "example.com", path, "-I", tmp=tmp_path)
    assert status == 200
    assert headers["content-length"] == [str(len(der(cert)))]
    assert body.endswith(b"\r\n\r\n")  # curl -I writes the head as output: no body after it
    assert der(cert) not in body

    status, headers, body = curl(
        store, "example.com", path, "-H", f"If-None-Match: {etag}", tmp=tmp_path
    )
    assert status == 304
    assert body == b""
    assert headers["etag"] == [etag]

    by_hash = target(aor, certHash=cert_hash)
    status, _, body = curl(
        store, "example.com", f"/search-cgi?certHash={quote(cert_hash, safe='')}", tmp=tmp_path
    )
    assert (status, body) == (200, der(cert))

    delete = ("--digest", "-u", f"alice:{pw(aor)}", "-X", "DELETE")
    status, _, body = curl(store, "example.com", by_hash, *delete, tmp=tmp_path)
    assert status == 204, body
    status, _, body = curl(store, "example.com", by_hash, *delete, tmp=tmp_path)
    assert status == 404
    status, _, body = curl(store, "example.com", path, tmp=tmp_path)
    assert status == 404
    assert body == b"no certificates for this address of record\n"


@pytest.mark.peer("curl")
def test_curl_rfc_4387_cert_hash_spellings(store: StoreProcess, tmp_path: Path) -> None:
    """RFC 4387 §2.1: certHash is 27 characters of base64 without '='; GET and DELETE take it
    as curl sends it, '+' and '/' bare or %-escaped; the padded form is refused (400)."""
    aor = "hash@example.com"
    # A certificate whose certHash holds both '+' and '/' (a third of them do).
    cert = next(
        c
        for c in (user_cert(aor, slot=slot) for slot in range(200))
        if {"+", "/"} <= set(cert_hash_of(der(c)))
    )
    cert_hash = cert_hash_of(der(cert))
    assert len(cert_hash) == 27 and "=" not in cert_hash
    cert_file = tmp_path / "hash.der"
    cert_file.write_bytes(der(cert))
    auth = ("--digest", "-u", f"hash:{pw(aor)}")
    status, headers, body = curl(
        store,
        "example.com",
        target(aor),
        *auth,
        "-T",
        str(cert_file),
        "-H",
        f"Content-Type: {PKIX}",
        tmp=tmp_path,
    )
    assert status == 201, body
    assert body == f"enrolled: certHash={cert_hash}\n".encode()
    assert headers["location"] == [f"/search-cgi?certHash={quote(cert_hash, safe='')}"]

    bare = f"/search-cgi?certHash={cert_hash}"  # curl sends '+' and '/' as typed
    assert curl(store, "example.com", bare, tmp=tmp_path)[::2] == (200, der(cert))
    encoded = ("-G", "--data-urlencode", f"certHash={cert_hash}")  # %2B and %2F
    status, _, body = curl(store, "example.com", "/search-cgi", *encoded, tmp=tmp_path)
    assert (status, body) == (200, der(cert))
    for padded in (f"{bare}=", f"{bare}%3D"):
        status, _, body = curl(store, "example.com", padded, tmp=tmp_path)
        assert status == 400
        assert b"must not end with '='" in body

    delete = (*auth, "-X", "DELETE")
    with_aor = f"{target(aor)}&certHash={cert_hash}"
    status, _, body = curl(store, "example.com", f"{with_aor}=", *delete, tmp=tmp_path)
    assert status == 400, body
    status, _, body = curl(store, "example.com", with_aor, *delete, tmp=tmp_path)
    assert status == 204, body
    assert curl(store, "example.com", bare, tmp=tmp_path)[0] == 404


# -- httpx: both Digest implementations, several certificates ------------------------------------


def test_httpx_digest_two_devices_multipart_and_delete_all(store: StoreProcess) -> None:
    aor = "bob@example.com"
    phone, laptop = user_cert(aor, slot=0), user_cert(aor, slot=1)
    with store.client("example.com") as client:
        url = store.url("example.com", target(aor, "sip"))
        first = client.put(
            url,
            content=der(phone),
            headers={"Content-Type": PKIX},
            auth=httpx.DigestAuth("bob", pw(aor)),
        )
        assert first.status_code == 201, first.text
        pem = laptop.public_bytes(serialization.Encoding.PEM)
        second = client.put(url, content=pem, auth=DigestAuth("bob", pw(aor)))
        assert second.status_code == 201, second.text
        answer = client.get(store.url("example.com", target(aor)))
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("multipart/mixed")
        bodies = parse_certificate_bodies(answer.headers["content-type"], answer.content)
        assert sorted(bodies) == sorted([der(phone), der(laptop)])
        head = client.head(store.url("example.com", target(aor)))
        assert head.status_code == 200
        assert head.content == b""
        assert head.headers["content-length"] == str(len(answer.content))
        removed = client.delete(url, auth=DigestAuth("bob", pw(aor)))
        assert removed.status_code == 204
        assert client.get(url).status_code == 404
        again = client.delete(url, auth=httpx.DigestAuth("bob", pw(aor)))
        assert again.status_code == 404


# -- every other status ---------------------------------------------------------------------------


def test_400_404_405_413_415(store: StoreProcess) -> None:
    with store.client("example.com") as client:

        def at(path: str) -> str:
            return store.url("example.com", path)

        for bad in ("/search-cgi?foo=bar", "/search-cgi?email=%zz", "/search-cgi?email=nobody"):
            answer = client.get(at(bad))
            assert answer.status_code == 400, bad
            assert answer.headers["content-type"] == "text/plain; charset=utf-8"
        assert client.get(at("/search-cgi")).status_code == 400
        assert client.get(at("/elsewhere?email=alice%40example.com")).status_code == 404
        other = client.get(at(target("carol@example.net")))
        assert other.status_code == 404
        assert "SNI example.net" in other.text
        unserved = client.get(at(target("x@example.org")))
        assert unserved.status_code == 404
        assert "does not serve" in unserved.text
        assert client.get(at(target("nobody@example.com"))).status_code == 404

        refused = client.post(at(target("alice@example.com")), content=b"x")
        assert refused.status_code == 405
        assert refused.headers["allow"] == "GET, HEAD, PUT, DELETE"

        auth = DigestAuth("alice", pw("alice@example.com"))
        url = at(target("alice@example.com"))
        # 413 on the declared length, before any authentication or reading.
        big = client.put(url, content=b"\x30" * 17000, headers={"Content-Type": PKIX})
        assert big.status_code == 413
        # 413 while reading a chunked body (pre-emptive Digest after a first exchange).
        warm = client.delete(at(target("alice@example.com", certHash="A" * 27)), auth=auth)
        assert warm.status_code == 404

        def chunks() -> Iterator[bytes]:
            for _ in range(20):
                yield b"\x30" * 1000

        streamed = client.put(url, content=chunks(), headers={"Content-Type": PKIX}, auth=auth)
        assert streamed.status_code == 413

        garbage = client.put(
            url, content=b"not a certificate", headers={"Content-Type": PKIX}, auth=auth
        )
        assert garbage.status_code == 400
        typed = client.put(
            url,
            content=der(user_cert("alice@example.com")),
            headers={"Content-Type": "text/plain"},
            auth=auth,
        )
        assert typed.status_code == 415
        with_hash = client.put(
            at(target("alice@example.com", certHash="A" * 27)),
            content=der(user_cert("alice@example.com")),
            auth=auth,
        )
        assert with_hash.status_code == 400


def test_401_stale_nonce_then_retry(store: StoreProcess) -> None:
    aor = "alice@example.com"
    body = der(user_cert(aor, slot=3))
    url = store.url("example.com", target(aor))
    with store.client("example.com") as client:
        first = client.put(url, content=body, headers={"Content-Type": PKIX})
        assert first.status_code == 401
        challenge = next(
            c
            for c in parse_challenges(first.headers.get_list("www-authenticate"))
            if c.algorithm == Algorithm.SHA256.value
        )
        time.sleep(NONCE_LIFETIME + 0.5)

        def answer(chosen: object) -> httpx.Response:
            value = build_authorization(
                chosen,  # type: ignore[arg-type]
                method="PUT",
                uri=target(aor),
                username="alice",
                password=pw(aor),
                nc=1,
                cnonce="0a4f113b",
            )
            return client.put(
                url, content=body, headers={"Content-Type": PKIX, "Authorization": value}
            )

        stale = answer(challenge)
        assert stale.status_code == 401
        offered = parse_challenges(stale.headers.get_list("www-authenticate"))
        assert offered and all(c.stale for c in offered)
        assert stale.text.startswith("stale Digest nonce")
        fresh = answer(offered[0])
        assert fresh.status_code == 201
        replay = answer(offered[0])  # the same nc again
        assert replay.status_code == 401
        assert _delete_all(store, aor).status_code == 204


# -- 403: every refusal reason -------------------------------------------------------------------


def _rsa1024_cert(aor: str) -> x509.Certificate:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 (the point)
    now = datetime.now(UTC)
    return make_cert(
        key, aor, not_before=now - timedelta(minutes=5), not_after=now + timedelta(days=5)
    )


def _no_san_cert(aor: str) -> x509.Certificate:
    key = make_key("ec-p256", aor, 9)
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, aor)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(12345)
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=5))
        .sign(key, hashes.SHA256())
    )


def _foreign_signature(aor: str) -> x509.Certificate:
    now = datetime.now(UTC)
    return make_cert(
        make_key("ec-p256", aor, 4),
        aor,
        not_before=now - timedelta(minutes=5),
        not_after=now + timedelta(days=5),
        issuer_key=make_key("ec-p256", "someone@else.example", 0),
    )


def _sha1_signed(aor: str) -> x509.Certificate:
    """A certificate correctly self-signed with SHA-1 (issue 9: not "bad-self-signature")."""
    now = datetime.now(UTC)
    key = make_key("rsa2048", aor, 7)
    assert isinstance(key, rsa.RSAPrivateKey)
    cert = make_cert(
        key, aor, not_before=now - timedelta(minutes=5), not_after=now + timedelta(days=5)
    )
    return resign_with_sha1(cert, key)


REFUSALS = {
    "aor-user-mismatch": (
        "bob@example.com",
        "alice",
        "alice@example.com",
        lambda: user_cert("bob@example.com"),
    ),
    "san-user-mismatch": (
        "alice@example.com",
        "alice",
        "alice@example.com",
        lambda: user_cert("alice@example.com", uris=["sip:bob@example.com"]),
    ),
    "san-domain-mismatch": (
        "carol@example.net",
        "carol",
        "carol@example.net",
        lambda: user_cert("carol@example.com", uris=["sip:carol@example.com"]),
    ),
    "bad-self-signature": (
        "alice@example.com",
        "alice",
        "alice@example.com",
        lambda: _foreign_signature("alice@example.com"),
    ),
    "expired": (
        "alice@example.com",
        "alice",
        "alice@example.com",
        lambda: user_cert(
            "alice@example.com",
            not_before=datetime.now(UTC) - timedelta(days=10),
            not_after=datetime.now(UTC) - timedelta(days=1),
        ),
    ),
    "not-yet-valid": (
        "alice@example.com",
        "alice",
        "alice@example.com",
        lambda: user_cert(
            "alice@example.com",
            not_before=datetime.now(UTC) + timedelta(days=1),
            not_after=datetime.now(UTC) + timedelta(days=10),
        ),
    ),
    "lifetime-too-long": (
        "alice@example.com",
        "alice",
        "alice@example.com",
        lambda: user_cert(
            "alice@example.com", not_after=datetime.now(UTC) + timedelta(days=MAX_LIFETIME_DAYS + 5)
        ),
    ),
    "weak-key": (
        "alice@example.com",
        "alice",
        "alice@example.com",
        lambda: _rsa1024_cert("alice@example.com"),
    ),
    "weak-signature-algorithm": (
        "alice@example.com",
        "alice",
        "alice@example.com",
        lambda: _sha1_signed("alice@example.com"),
    ),
    "no-san-uri": (
        "alice@example.com",
        "alice",
        "alice@example.com",
        lambda: _no_san_cert("alice@example.com"),
    ),
}


@pytest.mark.parametrize("reason", sorted(REFUSALS))
def test_403_refusal_reasons(store: StoreProcess, reason: str) -> None:
    aor, user, login, build = REFUSALS[reason]
    answer = put(store, aor, der(build()), user=user, password=pw(login))
    assert answer.status_code == 403, answer.text
    assert answer.text.startswith(f"{reason}: ")
    domain = aor.rpartition("@")[2]
    assert get(store, domain, target(aor)).status_code == 404  # nothing was stored


def test_403_too_many_certificates(store: StoreProcess) -> None:
    aor = "dave@example.com"
    certs = [user_cert(aor, slot=slot) for slot in range(MAX_PER_AOR)]
    for cert in certs:
        assert put(store, aor, der(cert)).status_code == 201
    refused = put(store, aor, der(user_cert(aor, slot=MAX_PER_AOR)))
    assert refused.status_code == 403
    assert refused.text.startswith("too-many-certificates: ")
    assert put(store, aor, der(certs[0])).status_code == 200  # re-PUT of a stored one is fine
    assert _delete_all(store, aor).status_code == 204


# -- expiry -----------------------------------------------------------------------------------


def test_expired_certificates_are_never_served(store: StoreProcess) -> None:
    aor = "erin@example.com"
    now = datetime.now(UTC)
    cert = user_cert(aor, not_after=now + timedelta(seconds=3))
    assert put(store, aor, der(cert)).status_code == 201
    by_hash = f"/search-cgi?certHash={quote(cert_hash_of(der(cert)), safe='')}"
    assert get(store, "example.com", target(aor)).content == der(cert)
    assert get(store, "example.com", by_hash).status_code == 200
    time.sleep(max(0.0, (cert.not_valid_after_utc - datetime.now(UTC)).total_seconds()) + 1.2)
    assert get(store, "example.com", target(aor)).status_code == 404
    assert get(store, "example.com", by_hash).status_code == 404


def test_expired_row_inserted_before_start_is_not_served(tmp_path: Path) -> None:
    files = make_store_files(tmp_path)
    aor = "old@example.com"
    now = datetime.now(UTC)
    cert = user_cert(aor, not_before=now - timedelta(days=10), not_after=now - timedelta(days=1))

    async def insert() -> None:
        storage = SqliteStore(files.db_path)
        try:
            record = StoredCertificate.from_der(
                aor,
                der(cert),
                not_before=cert.not_valid_before_utc,
                not_after=cert.not_valid_after_utc,
                created=now - timedelta(days=10),
            )
            assert await storage.add(record, max_per_aor=5, now=now - timedelta(days=5))
        finally:
            await storage.close()

    asyncio.run(insert())
    process = StoreProcess(files)
    process.start()
    try:
        assert get(process, "example.com", target(aor)).status_code == 404
        by_hash = f"/search-cgi?certHash={quote(cert_hash_of(der(cert)), safe='')}"
        assert get(process, "example.com", by_hash).status_code == 404
    finally:
        process.stop()


# -- durability, signals, workers, Kamailio --------------------------------------------------------


@pytest.fixture
def fresh_files(tmp_path: Path) -> StoreFiles:
    return make_store_files(tmp_path)


def test_201_survives_kill_9(fresh_files: StoreFiles) -> None:
    aor = "alice@example.com"
    cert = user_cert(aor, slot=5)
    process = StoreProcess(fresh_files)
    process.start()
    try:
        assert put(process, aor, der(cert)).status_code == 201
        process.kill(signal.SIGKILL)
        process.start()
        answer = get(process, "example.com", target(aor))
        assert (answer.status_code, answer.content) == (200, der(cert))
        assert process.kill(signal.SIGTERM) == 0  # a clean stop on SIGTERM
        assert "stopped" in process.output()
    finally:
        process.stop()


def test_two_workers_both_serve_share_nonces_and_stop_on_sigterm(
    fresh_files: StoreFiles,
) -> None:
    """Both workers serve, and a nonce count one worker saw is refused by the other.

    Which worker accepts a connection is up to the kernel, so each request is steered: the
    other worker is frozen (SIGSTOP) while it is made, on a new connection. No request can
    reach a frozen process, so the worker that answered is known, not guessed.
    """
    process = StoreProcess(fresh_files, extra=["--workers", "2"])
    process.start()
    try:
        wait_for(lambda: len(process.workers()) == 2, "two workers")
        one, two = process.workers()
        aor = "bob@example.com"
        url = process.url("example.com", target(aor))
        body = der(user_cert(aor))
        close = {"Connection": "close"}
        with process.client("example.com") as client:
            with only_worker(one, [two]):
                first = client.put(url, content=body, headers=close)
            assert first.status_code == 401
            sha256 = next(
                c
                for c in parse_challenges(first.headers.get_list("www-authenticate"))
                if c.algorithm == "SHA-256"
            )
            value = build_authorization(
                sha256,
                method="PUT",
                uri=target(aor),
                username="bob",
                password=pw(aor),
                nc=1,
                cnonce="feedface",
            )
            headers = {"Authorization": value, **close}
            with only_worker(two, [one]):  # worker two accepts the nonce worker one issued
                assert client.put(url, content=body, headers=headers).status_code == 201
            for worker, other in ((one, two), (two, one)):  # a replay on either is refused
                with only_worker(worker, [other]):
                    assert client.put(url, content=body, headers=headers).status_code == 401
            with only_worker(one, [two]):
                answer = client.get(url, headers=close)
            assert (answer.status_code, answer.content) == (200, body)
            with only_worker(two, [one]):
                deleted = client.delete(url, headers=close, auth=DigestAuth("bob", pw(aor)))
            assert deleted.status_code == 204
        assert process.kill(signal.SIGTERM) == 0
        for pid in (one, two):
            assert f"worker {pid} stopped" in process.output()
    finally:
        process.stop()


def test_a_failed_store_test_leaves_no_worker_running(tmp_path: Path) -> None:
    """A deliberately failing test with a two-worker Store: after its run, no process of
    that Store is left (StoreProcess.stop kills the whole process group)."""
    pids = tmp_path / "pids"
    failing = tmp_path / "test_deliberately_failing.py"
    failing.write_text(
        "from pathlib import Path\n"
        "from tests.integration.store.conftest import StoreProcess, make_store_files\n\n"
        "def test_fails(tmp_path):\n"
        "    process = StoreProcess(make_store_files(tmp_path), extra=['--workers', '2'])\n"
        "    process.start()\n"
        "    try:\n"
        "        import time\n"
        "        while len(process.workers()) < 2:\n"
        "            time.sleep(0.02)\n"
        "        pids = [process.process.pid, *process.workers()]\n"
        f"        Path({str(pids)!r}).write_text(' '.join(map(str, pids)))\n"
        "        assert False, 'deliberately failing'\n"
        "    finally:\n"
        "        process.stop()\n"
    )
    root = Path(__file__).resolve().parents[3]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(failing)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1 and "deliberately failing" in result.stdout, result.stdout
    started = [int(p) for p in pids.read_text().split()]
    assert len(started) == 3  # the parent and its two workers
    wait_for(lambda: not any(is_running(pid) for pid in started), "the Store to be gone")


def _kamailio_db(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "CREATE TABLE subscriber (id INTEGER PRIMARY KEY, username TEXT, domain TEXT, "
            "password TEXT, ha1 TEXT, ha1b TEXT)"
        )
        ha1 = hashlib.md5(b"gina:example.com:gina-pw", usedforsecurity=False).hexdigest()
        db.execute(
            "INSERT INTO subscriber (username, domain, password, ha1, ha1b) VALUES "
            "('frank', 'example.com', 'frank-pw', '', ''), ('gina', 'example.com', '', ?, '')",
            (ha1,),
        )
    db.close()


def test_kamailio_sqlite_credentials(fresh_files: StoreFiles) -> None:
    kamailio = fresh_files.root / "kamailio.db"
    _kamailio_db(kamailio)
    process = StoreProcess(fresh_files, credentials=f"kamailio+sqlite:///{kamailio}")
    process.start()
    try:
        frank = "frank@example.com"
        with process.client("example.com") as client:
            url = process.url("example.com", target(frank))
            ok = client.put(
                url, content=der(user_cert(frank)), auth=httpx.DigestAuth("frank", "frank-pw")
            )
            assert ok.status_code == 201, ok.text
            wrong = client.delete(url, auth=httpx.DigestAuth("frank", "nope"))
            assert wrong.status_code == 401
            # Only Kamailio's MD5 ha1 column is filled for gina: the MD5 challenge works.
            gina = "gina@example.com"
            url = process.url("example.com", target(gina))
            body = der(user_cert(gina))
            first = client.put(url, content=body)
            md5 = next(
                c
                for c in parse_challenges(first.headers.get_list("www-authenticate"))
                if c.algorithm == "MD5"
            )
            value = build_authorization(
                md5,
                method="PUT",
                uri=target(gina),
                username="gina",
                password="gina-pw",
                nc=1,
                cnonce="c0ffee",
            )
            answer = client.put(url, content=body, headers={"Authorization": value})
            assert answer.status_code == 201, answer.text
    finally:
        process.stop()
