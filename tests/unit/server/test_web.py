"""The Subscriber's revocation page (draft §5) in-process, over real TLS (memory storage).

Uses the Store harness of test_app.py: Digest-authenticated httpx clients, an injected clock
(for CSRF token expiry) and direct storage access for rows no upload would accept. The real
browser drives the same page in tests/integration/browser.
"""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sipcert.client.fetch import DigestAuth
from sipcert.errors import ForbiddenError, InputError
from sipcert.server.web import (
    MAX_FORM_SIZE,
    CsrfTokens,
    check_same_origin,
    parse_revoke_form,
)
from sipcert.storage import StoredCertificate, cert_hash_of
from tests.factories import make_cert, make_key
from tests.unit.server.test_app import START, Env, alice_cert, run_store

ALICE = "/search-cgi?email=alice%40example.com"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
PAGE_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
    ),
    "x-frame-options": "DENY",
    "cache-control": "no-store",
    "referrer-policy": "same-origin",
    "x-content-type-options": "nosniff",
}


def alice() -> DigestAuth:
    return DigestAuth("alice", "alice-pw")


async def enroll(client: httpx.AsyncClient, env: Env, *slots: int) -> list[str]:
    """Enroll alice's certificates with the PUT of draft §5; their certHashes."""
    hashes = []
    for slot in slots:
        body = alice_cert(slot)
        put = await client.put(env.url("example.com", ALICE), content=body, auth=alice())
        assert put.status_code == 201
        hashes.append(cert_hash_of(body))
    return hashes


async def page(client: httpx.AsyncClient, env: Env, query: str = "") -> httpx.Response:
    answer = await client.get(env.url("example.com", "/account" + query), auth=alice())
    assert answer.status_code == 200, answer.text
    return answer


def token_of(answer: httpx.Response) -> str:
    tokens: set[str] = set(re.findall(r'name="csrf" value="([^"]+)"', answer.text))
    assert len(tokens) == 1
    return tokens.pop()


def origin(env: Env) -> dict[str, str]:
    return {"Origin": f"https://example.com:{env.port}"}


async def revoke(
    client: httpx.AsyncClient,
    env: Env,
    data: dict[str, str],
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return await client.post(
        env.url("example.com", "/account/revoke"),
        data=data,
        headers=headers if headers is not None else origin(env),
        auth=alice(),
    )


async def served(client: httpx.AsyncClient, env: Env) -> int:
    """How many certificates a Caller's GET gets (draft §4.3)."""
    answer = await client.get(env.url("example.com", ALICE))
    if answer.status_code == 404:
        return 0
    content_type = answer.headers["content-type"]
    return answer.content.count(b"application/pkix-cert") if "multipart" in content_type else 1


def test_account_is_digest_challenged_like_put(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        async with env.client("example.com") as client:
            bare = await client.get(env.url("example.com", "/account"))
            assert bare.status_code == 401
            challenges = bare.headers.get_list("www-authenticate")
            assert [c.split("algorithm=")[1].split(",")[0] for c in challenges] == [
                "SHA-256",
                "MD5",
            ]
            assert all('realm="example.com"' in c for c in challenges)
            # The realm stays the domain (HA1 depends on it); the body says what to type.
            assert "user name is the part of your address before @example.com" in bare.text
            assert "for alice@example.com, type alice" in bare.text
            wrong = await client.get(
                env.url("example.com", "/account"), auth=DigestAuth("alice", "nope")
            )
            assert wrong.status_code == 401
            unknown = await client.get(
                env.url("example.com", "/account"), auth=DigestAuth("nobody", "nope")
            )
            assert wrong.text == unknown.text == bare.text  # nothing tells users apart
            post = await client.post(env.url("example.com", "/account/revoke"), data={"all": "1"})
            assert post.status_code == 401
        async with env.client("example.net") as client:  # the realm follows the SNI domain
            net = await client.get(env.url("example.net", "/account"))
            assert 'realm="example.net"' in net.headers["www-authenticate"]
            assert "before @example.net (for alice@example.net, type alice)" in net.text

    run_store(tmp_path, scenario)


def test_failed_answers_on_the_page_share_the_stores_rate_limit(
    tmp_path: Path,
) -> None:
    async def scenario(env: Env) -> None:
        async with env.client("example.com") as client:
            url = env.url("example.com", "/account")
            for _ in range(2):  # DigestAuth tries SHA-256, then MD5: 2 failures each
                wrong = await client.get(url, auth=DigestAuth("alice", "wrong"))
                assert wrong.status_code == 401
            assert (await client.get(url, auth=alice())).status_code == 429
            # The same limiter as PUT/DELETE on /search-cgi: the user is blocked there too.
            put = await client.put(
                env.url("example.com", ALICE), content=alice_cert(), auth=alice()
            )
            assert put.status_code == 429

    run_store(tmp_path, scenario, auth_failures=4)


def test_page_lists_both_certificates_with_headers(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        ders = [alice_cert(0), alice_cert(1)]  # ECDSA: every call signs anew, other bytes
        labels = ["laptop", "=?utf-8?q?T=C3=A9l=C3=A9phone?="]  # RFC 2047 §5(1)
        async with env.client("example.com") as client:
            for der, label in zip(ders, labels, strict=True):
                put = await client.put(
                    env.url("example.com", ALICE),
                    content=der,
                    auth=alice(),
                    headers={"Content-Description": label},
                )
                assert put.status_code == 201
            answer = await page(client, env)
        assert answer.headers["content-type"] == "text/html; charset=utf-8"
        for name, value in PAGE_HEADERS.items():
            assert answer.headers[name] == value
        text = answer.text
        assert "<title>Certificates of alice@example.com</title>" in text
        assert "2 certificates enrolled" in text
        assert "<script" not in text
        for der in ders:
            cert_hash = cert_hash_of(der)
            cert = x509.load_der_x509_certificate(der)
            fingerprint = hashlib.sha256(der).hexdigest()  # the one spelling: lowercase hex
            assert f'<code class="fingerprint">{fingerprint}</code>' in text
            assert f"<code>{cert.serial_number:X}</code>" in text
            assert f'name="certHash" value="{cert_hash}"' in text
        assert text.count("<code>sip:alice@example.com</code>") == 2
        assert text.count("expires in 10 days") == 2  # alice_cert: START + 10 days, now START
        assert "2029-12-31 23:59 UTC" in text  # notBefore = START - 1 minute
        assert '<h2 class="label">laptop</h2>' in text
        assert '<h2 class="label">Téléphone</h2>' in text
        assert text.count("<dt>Enrolled on</dt><dd>2030-01-01 00:00 UTC</dd>") == 2
        assert text.count('class="danger revoke"') == 2
        assert 'name="all" value="1"' in text
        assert "Revoke all" in text

    run_store(tmp_path, scenario)


def test_hostile_label_is_escaped_and_bad_labels_are_400(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The label is chosen by whoever enrolls: escaped on the page, refused when it is not a
    short printable name, and never written to a log line."""
    hostile = "<script>alert(1)</script> & co"

    async def scenario(env: Env) -> None:
        async with env.client("example.com") as client:
            url = env.url("example.com", ALICE)
            for bad in ("tab\there", "x" * 65, "=?utf-8?q?a=1B[2J?="):
                put = await client.put(
                    url, content=alice_cert(2), auth=alice(), headers={"Content-Description": bad}
                )
                assert put.status_code == 400, put.text
                assert bad not in put.text
            two = await client.put(
                url,
                content=alice_cert(2),
                auth=alice(),
                headers=[("Content-Description", "a"), ("Content-Description", "b")],
            )
            assert two.status_code == 400
            put = await client.put(
                url, content=alice_cert(0), auth=alice(), headers={"Content-Description": hostile}
            )
            assert put.status_code == 201
            text = (await page(client, env)).text
        assert hostile not in text
        assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in text
        assert "<script" not in text

    with caplog.at_level("DEBUG"):
        run_store(tmp_path, scenario)
    assert "alert(1)" not in caplog.text


def test_hostile_san_is_escaped(tmp_path: Path) -> None:
    """A SAN URI is whatever the certificate's maker wrote; it must never become markup."""

    async def scenario(env: Env) -> None:
        key = make_key("ec-p256", "alice@example.com", 7)
        hostile = [
            'sip:"><script>alert(1)</script>@example.com',
            "im:<img src=x onerror=alert(2)>&amp;'@example.com",
        ]
        cert = make_cert(
            key,
            "alice@example.com",
            uris=hostile,
            not_before=START - timedelta(days=1),
            not_after=START + timedelta(days=5),
        )
        der = cert.public_bytes(serialization.Encoding.DER)
        stored = StoredCertificate.from_der(
            "alice@example.com",
            der,
            not_before=START - timedelta(days=1),
            not_after=START + timedelta(days=5),
            created=START,
        )
        assert await env.app.storage.add(stored, max_per_aor=5, now=START)
        async with env.client("example.com") as client:
            text = (await page(client, env)).text
        assert "<script" not in text
        assert "<img" not in text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
        assert "sip:&quot;&gt;&lt;script&gt;" in text
        assert "&lt;img src=x onerror=alert(2)&gt;&amp;amp;&#x27;@example.com" in text

    run_store(tmp_path, scenario)


def test_revoke_one_then_all(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        async with env.client("example.com") as client:
            first, second = await enroll(client, env, 0, 1)
            token = token_of(await page(client, env))
            done = await revoke(client, env, {"certHash": first, "csrf": token})
            assert done.status_code == 303
            assert done.headers["location"] == "/account?revoked=1"
            for name, value in PAGE_HEADERS.items():
                assert done.headers[name] == value
            assert await served(client, env) == 1
            # The redirect target: the Digest uri is path + query (request.raw_path).
            after = await page(client, env, "?revoked=1")
            assert "1 certificate revoked." in after.text
            assert first not in after.text
            assert second in after.text
            assert "1 certificate enrolled" in after.text

            everything = await revoke(client, env, {"all": "1", "csrf": token})
            assert everything.status_code == 303
            assert everything.headers["location"] == "/account?revoked=1"
            assert await served(client, env) == 0
            empty = await page(client, env, "?revoked=0")
            assert "No certificate was revoked." in empty.text
            assert "No certificates are enrolled" in empty.text
            assert "Revoke all" not in empty.text
            # Revoking all of nothing is harmless: a double submit lands on the page again.
            again = await revoke(client, env, {"all": "1", "csrf": token})
            assert (again.status_code, again.headers["location"]) == (303, "/account?revoked=0")
            # A certHash that is gone is 404, like DELETE.
            gone = await revoke(client, env, {"certHash": second, "csrf": token})
            assert gone.status_code == 404

    run_store(tmp_path, scenario)


def test_revoke_all_removes_every_certificate(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        async with env.client("example.com") as client:
            await enroll(client, env, 0, 1)
            token = token_of(await page(client, env))
            done = await revoke(client, env, {"all": "1", "csrf": token})
            assert (done.status_code, done.headers["location"]) == (303, "/account?revoked=2")
            assert await served(client, env) == 0
            assert "2 certificates revoked." in (await page(client, env, "?revoked=2")).text

    run_store(tmp_path, scenario)


def test_csrf_token_missing_forged_other_user_or_expired_is_403(
    tmp_path: Path,
) -> None:
    async def scenario(env: Env) -> None:
        async with env.client("example.com") as client:
            (cert_hash,) = await enroll(client, env, 0)
            token = token_of(await page(client, env))
            tokens = env.app.account_pages.csrf
            refused = [
                {"certHash": cert_hash},
                {"certHash": cert_hash, "csrf": ""},
                {"certHash": cert_hash, "csrf": "A" * len(token)},
                {"certHash": cert_hash, "csrf": token[:-1]},
                {"certHash": cert_hash, "csrf": tokens.issue("example.com", "bob", env.clock())},
                {"certHash": cert_hash, "csrf": tokens.issue("example.net", "alice", env.clock())},
                {"certHash": cert_hash, "csrf": "é" + token},
            ]
            for data in refused:
                answer = await revoke(client, env, data)
                assert answer.status_code == 403, data
                assert answer.text.startswith("csrf: ")
            # Still good in the next bucket (a page left open a while) ...
            env.clock.advance(tokens.bucket)
            assert await served(client, env) == 1
            fresh = token_of(await page(client, env))
            env.clock.advance(tokens.bucket)
            # ... but not two buckets later.
            expired = await revoke(client, env, {"certHash": cert_hash, "csrf": token})
            assert expired.status_code == 403
            assert await served(client, env) == 1
            ok = await revoke(client, env, {"certHash": cert_hash, "csrf": fresh})
            assert ok.status_code == 303

    run_store(tmp_path, scenario)


def test_cross_origin_posts_are_403(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        async with env.client("example.com") as client:
            (cert_hash,) = await enroll(client, env, 0)
            data = {"certHash": cert_hash, "csrf": token_of(await page(client, env))}
            own = f"https://example.com:{env.port}"
            for headers in (
                {"Origin": "https://evil.example"},
                {"Origin": "null"},
                {"Origin": "http://example.com:" + str(env.port)},
                {"Origin": "https://example.com"},  # another port: another origin
                {"Origin": f"https://example.net:{env.port}"},
                {"Referer": "https://evil.example/page"},
                {"Origin": own, "Sec-Fetch-Site": "cross-site"},
                {"Origin": own, "Sec-Fetch-Site": "same-site"},
            ):
                answer = await revoke(client, env, data, headers)
                assert answer.status_code == 403, headers
                assert answer.text.startswith("cross-origin: ")
            assert await served(client, env) == 1
            referer = {"Referer": f"{own}/account", "Sec-Fetch-Site": "same-origin"}
            assert (await revoke(client, env, data, referer)).status_code == 303

    run_store(tmp_path, scenario)


def test_no_origin_at_all_relies_on_the_token(tmp_path: Path) -> None:
    """Non-browser clients send neither Origin nor Referer: the token alone decides."""

    async def scenario(env: Env) -> None:
        async with env.client("example.com") as client:
            (cert_hash,) = await enroll(client, env, 0)
            token = token_of(await page(client, env))
            answer = await revoke(client, env, {"certHash": cert_hash, "csrf": token}, {})
            assert answer.status_code == 303

    run_store(tmp_path, scenario)


def test_another_users_cert_hash_is_404_like_a_missing_one(
    tmp_path: Path,
) -> None:
    async def scenario(env: Env) -> None:
        key = make_key("ec-p256", "bob@example.com", 0)
        der = make_cert(
            key,
            "bob@example.com",
            not_before=START - timedelta(days=1),
            not_after=START + timedelta(days=5),
        ).public_bytes(serialization.Encoding.DER)
        bobs = StoredCertificate.from_der(
            "bob@example.com",
            der,
            not_before=START - timedelta(days=1),
            not_after=START + timedelta(days=5),
            created=START,
        )
        assert await env.app.storage.add(bobs, max_per_aor=5, now=START)
        async with env.client("example.com") as client:
            await enroll(client, env, 0)
            token = token_of(await page(client, env))
            theirs = await revoke(client, env, {"certHash": bobs.cert_hash, "csrf": token})
            missing = await revoke(client, env, {"certHash": "A" * 27, "csrf": token})
            assert theirs.status_code == missing.status_code == 404
            assert theirs.text == missing.text
            assert bobs.cert_hash not in (await page(client, env)).text
        assert await env.app.storage.get_by_aor("bob@example.com", START) == [bobs]

    run_store(tmp_path, scenario)


def test_oversized_and_malformed_forms(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        async with env.client("example.com") as client:
            (cert_hash,) = await enroll(client, env, 0)
            token = token_of(await page(client, env))
            url = env.url("example.com", "/account/revoke")
            headers = {**FORM, **origin(env)}
            big = f"certHash={cert_hash}&csrf={token}&".encode() + b"x" * MAX_FORM_SIZE
            too_big = await client.post(url, content=big, headers=headers, auth=alice())
            assert too_big.status_code == 413
            bad_forms = [
                f"certHash={cert_hash}&certHash={cert_hash}&csrf={token}",
                f"certHash={cert_hash}&csrf={token}&csrf={token}",
                f"certHash={cert_hash}&csrf={token}&extra=1",
                f"certHash={cert_hash}&all=1&csrf={token}",
                f"all=2&csrf={token}",
                f"csrf={token}",
                f"certHash=not-base64&csrf={token}",
                f"certHash={cert_hash}&csrf={token}&",
                f"certHash={cert_hash}&csrf=%zz",
            ]
            for body in bad_forms:
                answer = await client.post(url, content=body, headers=headers, auth=alice())
                assert answer.status_code == 400, body
            as_json = await client.post(
                url,
                json={"all": "1", "csrf": token},
                headers=origin(env),
                auth=alice(),
            )
            assert as_json.status_code == 415
            with_query = await client.post(
                url + "?all=1", data={"all": "1", "csrf": token}, headers=origin(env), auth=alice()
            )
            assert with_query.status_code == 400
            assert await served(client, env) == 1

    run_store(tmp_path, scenario)


def test_methods_queries_and_domains(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        async with env.client("example.com") as client:
            put = await client.put(env.url("example.com", "/account"), content=b"x")
            assert (put.status_code, put.headers["allow"]) == (405, "GET, HEAD")
            get = await client.get(env.url("example.com", "/account/revoke"))
            assert (get.status_code, get.headers["allow"]) == (405, "POST")
            for query in ("?x=1", "?revoked=abc", "?revoked=1&revoked=2", "?revoked=99999"):
                answer = await client.get(env.url("example.com", "/account" + query), auth=alice())
                assert answer.status_code == 400, query
            assert (await client.get(env.url("example.com", "/account/"))).status_code == 404
        async with env.client("example.net") as client:
            # Alice of example.com is nobody in example.net: the realm is the SNI domain.
            other = await client.get(env.url("example.net", "/account"), auth=alice())
            assert other.status_code == 401
            bob = await client.get(
                env.url("example.net", "/account"), auth=DigestAuth("bob", "bob-pw")
            )
            assert bob.status_code == 200
            assert "Certificates of bob@example.net" in bob.text

    run_store(tmp_path, scenario)


# -- pure functions ------------------------------------------------------------------------


def test_csrf_tokens_bind_domain_user_and_time() -> None:
    tokens = CsrfTokens(b"s" * 32, bucket=100)
    token = tokens.issue("example.com", "alice", 1050.0)
    assert tokens.verify(token, "example.com", "alice", 1099.0)
    assert tokens.verify(token, "example.com", "alice", 1199.9)  # previous bucket
    assert not tokens.verify(token, "example.com", "alice", 1200.0)
    assert not tokens.verify(token, "example.com", "alice", 999.0)  # not from the future
    assert not tokens.verify(token, "example.com", "bob", 1050.0)
    assert not tokens.verify(token, "example.net", "alice", 1050.0)
    # Length-prefixed fields: moving a character from the domain to the user changes the MAC.
    assert tokens.issue("a.b", "c", 0) != tokens.issue("a.", "bc", 0)
    assert not CsrfTokens(b"t" * 32, bucket=100).verify(token, "example.com", "alice", 1050.0)
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)


def test_parse_revoke_form() -> None:
    form = parse_revoke_form(b"certHash=z3my9lWNSXk5OcWsbg5QV43fIC0&csrf=abc")
    assert (form.cert_hash, form.revoke_all, form.csrf) == (
        "z3my9lWNSXk5OcWsbg5QV43fIC0",  # RFC 4387 §2.1: no trailing '='
        False,
        "abc",
    )
    plus = parse_revoke_form(b"certHash=AAAAAAAAAAAAAAAAAAAAAAAA%2BAA")
    assert plus.cert_hash == "AAAAAAAAAAAAAAAAAAAAAAAA+AA"
    # A bare '+' (curl -d) arrives as a space after form decoding; base64 has no space.
    bare = parse_revoke_form(b"certHash=AAAAAAAAAAAAAAAAAAAAAAAA+AA&csrf=abc")
    assert bare.cert_hash == "AAAAAAAAAAAAAAAAAAAAAAAA+AA"
    with pytest.raises(InputError, match="must not end with '='"):
        parse_revoke_form(b"certHash=z3my9lWNSXk5OcWsbg5QV43fIC0%3D&csrf=abc")
    assert parse_revoke_form(b"all=1").revoke_all
    for body in (b"", b"all", b"all=1&all=1", b"\xff=1", b"all=1&=", b"certHash=AAAA"):
        with pytest.raises(InputError):
            parse_revoke_form(body)


@pytest.mark.parametrize(
    ("origin", "referer", "site", "host", "ok"),
    [
        ("https://example.com:8443", None, "same-origin", "example.com:8443", True),
        ("https://EXAMPLE.com:8443", None, None, "example.com:8443", True),
        ("https://example.com", None, None, "example.com", True),
        ("https://example.com:443", None, None, "example.com", True),
        (None, "https://example.com:8443/account", None, "example.com:8443", True),
        (None, None, None, "example.com:8443", True),
        ("https://example.com:8443", None, None, "evil.example:8443", False),
        ("https://example.com:9443", None, None, "example.com:8443", False),
        (None, "https://example.com:9443/account", None, "example.com:8443", False),
        (None, "not a url", None, "example.com:8443", False),
        (None, None, "cross-site", "example.com:8443", False),
        ("null", None, None, "example.com:8443", False),
    ],
)
def test_check_same_origin(
    origin: str | None, referer: str | None, site: str | None, host: str, ok: bool
) -> None:
    def check() -> None:
        check_same_origin(
            origin=origin, referer=referer, fetch_site=site, domain="example.com", host=host
        )

    if ok:
        check()
    else:
        with pytest.raises(ForbiddenError):
            check()
