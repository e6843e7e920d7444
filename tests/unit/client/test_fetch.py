"""Store answers (draft §4.5), enrollment and revocation statuses (draft §5), and the Digest
auth flow, against ``httpx.MockTransport``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import pytest

from sipcert.client.fetch import (
    DigestAuth,
    FetchResult,
    delete_certificates,
    get_certificates,
    parse_certificate_bodies,
    put_certificate,
    request_url,
)
from sipcert.client.locate import Location, Target
from sipcert.errors import (
    AuthenticationError,
    ForbiddenError,
    InputTooLargeError,
    NotFoundError,
    RateLimitedError,
    StoreResponseError,
    StoreUnavailableError,
)
from sipcert.proto.aor import parse_aor
from sipcert.proto.certs import DiscardReason, certificate_der, generate_identity
from sipcert.proto.digest import Algorithm, DigestServer, StoredCredential, compute_ha1
from sipcert.proto.store import certificates_response

NOW = datetime.now(UTC)
BOB = parse_aor("bob@example.com")
LOCATION = Location(BOB, (Target("a.example.com", 7000),), True)
PHONE = certificate_der(generate_identity(BOB, now=NOW).certificate)
LAPTOP = certificate_der(generate_identity(BOB, now=NOW).certificate)
ALICE = certificate_der(generate_identity(parse_aor("alice@example.com"), now=NOW).certificate)


def run(
    handler: Callable[[httpx.Request], httpx.Response], work: Callable[[httpx.AsyncClient], object]
) -> object:
    async def main() -> object:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await work(client)  # type: ignore[misc]

    return asyncio.run(main())


def test_request_url_uses_the_aor_domain() -> None:
    assert request_url(LOCATION) == "https://example.com/search-cgi?email=bob%40example.com"


def test_single_certificate_answer() -> None:
    assert parse_certificate_bodies("application/pkix-cert", PHONE) == [PHONE]


def test_multipart_answer_from_the_core() -> None:
    answer = certificates_response([PHONE, LAPTOP], ["a" * 64, "b" * 64], max_age=60)
    content_type = dict(answer.headers)["Content-Type"]
    assert parse_certificate_bodies(content_type, answer.body) == [PHONE, LAPTOP]


@pytest.mark.parametrize(
    ("content_type", "body", "text"),
    [
        (None, PHONE, "no Content-Type"),
        ("text/html", b"<html>", "text/html"),
        ("multipart/mixed; boundary=x", b"junk without delimiters", "malformed multipart"),
        (
            "multipart/mixed; boundary=x",
            b"--x\r\nContent-Type: text/plain\r\n\r\nhi\r\n--x--\r\n",
            "part 1",
        ),
        ("not a type", b"", "unreadable Content-Type"),
    ],
)
def test_junk_answers_are_clear_errors(content_type: str | None, body: bytes, text: str) -> None:
    with pytest.raises(StoreResponseError, match=text):
        parse_certificate_bodies(content_type, body)


def test_get_keeps_and_discards_with_reasons() -> None:
    answer = certificates_response([PHONE, ALICE, b"\x30\x03junk"], ["a", "b", "c"], max_age=30)

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.raw_path == b"/search-cgi?email=bob%40example.com"
        return httpx.Response(200, headers=list(answer.headers), content=answer.body)

    retrieved = run(handler, lambda c: get_certificates(c, LOCATION))
    result = FetchResult.from_retrieved(LOCATION, retrieved, NOW)  # type: ignore[arg-type]
    assert [certificate_der(c) for c in result.kept] == [PHONE]
    assert [d.reason for d in result.discarded] == [
        DiscardReason.SAN_MISMATCH,
        DiscardReason.MALFORMED,
    ]
    assert result.max_age == 30
    assert result.url == "https://a.example.com:7000/search-cgi?email=bob%40example.com"


def test_404_is_an_empty_answer_not_an_error() -> None:
    retrieved = run(
        lambda r: httpx.Response(404, text="none"), lambda c: get_certificates(c, LOCATION)
    )
    assert retrieved.status == 404 and retrieved.bodies == ()  # type: ignore[attr-defined]


def test_other_statuses_and_oversized_answers() -> None:
    with pytest.raises(StoreResponseError, match="502: busy") as caught:
        run(
            lambda r: httpx.Response(502, text="busy\x1b[31m\nmore"),
            lambda c: get_certificates(c, LOCATION),
        )
    assert "\x1b" not in str(caught.value)  # no terminal escapes from a Store reach the user
    assert caught.value.status == 502
    assert caught.value.exit_code == 11
    big = httpx.Response(
        200, headers={"Content-Type": "application/pkix-cert"}, content=b"x" * 2000
    )
    with pytest.raises(InputTooLargeError):
        run(lambda r: big, lambda c: get_certificates(c, LOCATION, max_size=1000))


def digest_handler(
    password: str,
    statuses: list[int],
    *,
    stale_first: bool = False,
    success: int = 201,
    credential: StoredCredential | None = None,
) -> Callable[[httpx.Request], httpx.Response]:
    server = DigestServer(b"0123456789abcdef0123456789abcdef", "example.com")
    state = {"stale": stale_first}
    stored = credential or StoredCredential(password=password)

    def handler(request: httpx.Request) -> httpx.Response:
        now = time.time()
        try:
            user = server.authenticate(
                request.headers.get("authorization"),
                lambda name: stored if name == "bob" else None,
                method=request.method,
                request_uri=request.url.raw_path.decode(),
                now=now,
            )
        except AuthenticationError:
            statuses.append(401)
            headers = [("WWW-Authenticate", c) for c in server.challenges(now)]
            return httpx.Response(401, headers=headers)
        if state["stale"]:
            state["stale"] = False
            statuses.append(401)
            headers = [("WWW-Authenticate", c) for c in server.challenges(now, stale=True)]
            return httpx.Response(401, headers=headers)
        assert user == "bob"
        statuses.append(success)
        return httpx.Response(success)

    return handler


def test_digest_put_answers_the_challenge_then_reuses_the_nonce() -> None:
    statuses: list[int] = []
    handler = digest_handler("pw", statuses)
    auth = DigestAuth("bob", "pw")

    async def work(client: httpx.AsyncClient) -> None:
        assert await put_certificate(client, LOCATION, PHONE, auth) == 201
        assert await put_certificate(client, LOCATION, LAPTOP, auth) == 201

    run(handler, work)
    assert statuses == [401, 201, 201]  # the second PUT was authorised pre-emptively (nc=2)


def test_digest_stale_nonce_is_answered_once_more() -> None:
    statuses: list[int] = []
    run(
        digest_handler("pw", statuses, stale_first=True),
        lambda c: put_certificate(c, LOCATION, PHONE, DigestAuth("bob", "pw")),
    )
    assert statuses == [401, 401, 201]


def test_digest_wrong_password_is_an_authentication_error() -> None:
    statuses: list[int] = []
    with pytest.raises(AuthenticationError):
        run(
            digest_handler("pw", statuses),
            lambda c: put_certificate(c, LOCATION, PHONE, DigestAuth("bob", "nope")),
        )
    assert statuses == [401, 401, 401]  # SHA-256 refused, then MD5 refused: no more tries


def test_digest_falls_back_to_md5_for_an_md5_only_credential() -> None:
    """A registrar row with only an MD5 HA1 (Kamailio's ``ha1``) cannot check SHA-256."""
    statuses: list[int] = []
    md5_only = StoredCredential(
        ha1={Algorithm.MD5: compute_ha1(Algorithm.MD5, "bob", "example.com", "pw")}
    )
    run(
        digest_handler("pw", statuses, credential=md5_only),
        lambda c: put_certificate(c, LOCATION, PHONE, DigestAuth("bob", "pw")),
    )
    assert statuses == [401, 401, 201]


def test_put_refusals() -> None:
    forbidden = httpx.Response(403, text="san-user-mismatch: certificate names alice\n")
    with pytest.raises(ForbiddenError) as caught:
        run(
            lambda r: forbidden,
            lambda c: put_certificate(c, LOCATION, PHONE, DigestAuth("bob", "pw")),
        )
    assert caught.value.reason == "san-user-mismatch"
    for status in (400, 413, 500):
        with pytest.raises(StoreResponseError) as error:
            answer = httpx.Response(status, text="why")

            def handler(request: httpx.Request, answer: httpx.Response = answer) -> httpx.Response:
                return answer

            run(
                handler,
                lambda c: put_certificate(c, LOCATION, PHONE, DigestAuth("bob", "pw")),
            )
        assert error.value.status == status
        assert error.value.reason == "why"  # the Store's reason reaches the user


def test_delete_with_cert_hash_and_404() -> None:
    seen: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path)
        return httpx.Response(204 if len(seen) == 1 else 404)

    auth = DigestAuth("bob", "pw")

    async def work(client: httpx.AsyncClient) -> None:
        await delete_certificates(client, LOCATION, auth, "q+/=")
        with pytest.raises(NotFoundError):
            await delete_certificates(client, LOCATION, auth)

    run(handler, work)
    assert seen == [
        b"/search-cgi?email=bob%40example.com&certHash=q%2B%2F%3D",
        b"/search-cgi?email=bob%40example.com",
    ]


def test_429_is_a_rate_limit_error_with_retry_after() -> None:
    limited = httpx.Response(429, headers={"Retry-After": "17"}, text="too many attempts\n")
    with pytest.raises(RateLimitedError) as caught:
        run(
            lambda r: limited,
            lambda c: put_certificate(c, LOCATION, PHONE, DigestAuth("bob", "pw")),
        )
    assert caught.value.retry_after == 17
    assert caught.value.exit_code == 14


@pytest.mark.parametrize("verb", ["GET", "PUT", "DELETE"])
def test_a_store_answering_503_is_exit_12_for_every_request(verb: str) -> None:
    """Our Store answers 503 when its database fails (StorageError): one client code, 12."""
    work: dict[str, Callable[[httpx.AsyncClient], object]] = {
        "GET": lambda c: get_certificates(c, LOCATION),
        "PUT": lambda c: put_certificate(c, LOCATION, PHONE, httpx.BasicAuth("bob", "x")),
        "DELETE": lambda c: delete_certificates(c, LOCATION, httpx.BasicAuth("bob", "x")),
    }
    with pytest.raises(StoreUnavailableError) as caught:
        run(lambda r: httpx.Response(503, text="service unavailable"), work[verb])
    assert caught.value.exit_code == 12
    assert caught.value.status == 503
    assert str(caught.value) == (
        "the Store is unavailable (it answered 503: service unavailable); try again later"
    )
