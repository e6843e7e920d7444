"""HTTP Digest, both sides: RFC test vectors, nonce/replay rules, and the header parser."""

from __future__ import annotations

import dataclasses
import itertools
import random
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipcert.errors import (
    AuthenticationError,
    ConfigError,
    DigestHeaderError,
    HeaderTooLargeError,
    InputTooLargeError,
    StaleNonceError,
)
from sipcert.proto import digest
from sipcert.proto.digest import (
    MAX_HEADER_LENGTH,
    Algorithm,
    Challenge,
    DigestClient,
    DigestResponse,
    DigestServer,
    MemoryNonceCounter,
    StoredCredential,
    build_authorization,
    choose_challenge,
    compute_ha1,
    compute_response,
    format_authorization,
    parse_authorization,
    parse_challenges,
    verify_digest,
)

# ---------------------------------------------------------------------------------------------
# RFC vectors
# ---------------------------------------------------------------------------------------------

# RFC 2617 §3.5, with the obs-fold line breaks replaced by SP (RFC 7230 §3.2.4).
RFC2617_AUTHORIZATION = " ".join(
    line.strip()
    for line in """Digest username="Mufasa",
                 realm="testrealm@host.com",
                 nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
                 uri="/dir/index.html",
                 qop=auth,
                 nc=00000001,
                 cnonce="0a4f113b",
                 response="6629fae49393a05397450978507c4ef1",
                 opaque="5ccc069c403ebaf9f0171e9517f40e41\"""".splitlines()
)

RFC7616_REALM = "http-auth@example.org"
RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC7616_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
RFC7616_SHA256 = "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
RFC7616_MD5 = "8ca523f5e9506fed4657c9700eebdbec"

# RFC 7616 §3.9.1, the two challenges (obs-fold unfolded as RFC 7230 §3.2.4 requires).
RFC7616_CHALLENGES = [
    f'Digest realm="{RFC7616_REALM}", qop="auth, auth-int", algorithm={alg}, '
    f'nonce="{RFC7616_NONCE}", opaque="{RFC7616_OPAQUE}"'
    for alg in ("SHA-256", "MD5")
]


def rfc7616_authorization(algorithm: str, response: str) -> str:
    """The §3.9.1 Authorization header, with the line breaks of the RFC."""
    return (
        'Digest username="Mufasa",\n    realm="http-auth@example.org",\n'
        '    uri="/dir/index.html",\n'
        f"    algorithm={algorithm},\n"
        f'    nonce="{RFC7616_NONCE}",\n    nc=00000001,\n    cnonce="{RFC7616_CNONCE}",\n'
        f'    qop=auth,\n    response="{response}",\n    opaque="{RFC7616_OPAQUE}"'
    ).replace("\n", "")


MUFASA = StoredCredential(password="Circle Of Life")
MUFASA_7616 = StoredCredential(password="Circle of Life")


def test_rfc2617_mufasa_response_is_computed() -> None:
    ha1 = compute_ha1(Algorithm.MD5, "Mufasa", "testrealm@host.com", "Circle Of Life")
    assert ha1 == "939e7578ed9e3c518a452acee763bce9"  # RFC 2617 §3.5 (errata: HA1 listed)
    response = compute_response(
        Algorithm.MD5,
        ha1,
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        nc=1,
        cnonce="0a4f113b",
        qop="auth",
        method="GET",
        uri="/dir/index.html",
    )
    assert response == "6629fae49393a05397450978507c4ef1"


def test_rfc2617_mufasa_header_parses_and_verifies() -> None:
    parsed = parse_authorization(RFC2617_AUTHORIZATION)
    assert parsed == DigestResponse(
        username="Mufasa",
        realm="testrealm@host.com",
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        uri="/dir/index.html",
        response="6629fae49393a05397450978507c4ef1",
        algorithm=None,
        cnonce="0a4f113b",
        nc=1,
        qop="auth",
        opaque="5ccc069c403ebaf9f0171e9517f40e41",
    )
    user = verify_digest(
        parsed, MUFASA, method="GET", request_uri="/dir/index.html", realm="testrealm@host.com"
    )
    assert user == "Mufasa"
    with pytest.raises(AuthenticationError):  # the digest covers the method
        verify_digest(
            parsed, MUFASA, method="PUT", request_uri="/dir/index.html", realm="testrealm@host.com"
        )


@pytest.mark.parametrize(
    ("algorithm", "expected"), [(Algorithm.SHA256, RFC7616_SHA256), (Algorithm.MD5, RFC7616_MD5)]
)
def test_rfc7616_responses_are_computed(algorithm: Algorithm, expected: str) -> None:
    ha1 = compute_ha1(algorithm, "Mufasa", RFC7616_REALM, "Circle of Life")
    response = compute_response(
        algorithm,
        ha1,
        nonce=RFC7616_NONCE,
        nc=1,
        cnonce=RFC7616_CNONCE,
        qop="auth",
        method="GET",
        uri="/dir/index.html",
    )
    assert response == expected


@pytest.mark.parametrize(
    ("algorithm", "expected"), [(Algorithm.SHA256, RFC7616_SHA256), (Algorithm.MD5, RFC7616_MD5)]
)
def test_rfc7616_client_builds_the_rfc_header(algorithm: Algorithm, expected: str) -> None:
    challenges = parse_challenges(RFC7616_CHALLENGES)
    challenge = next(c for c in challenges if c.supported_algorithm is algorithm)
    assert challenge.qop == ("auth", "auth-int")
    header = build_authorization(
        challenge,
        method="GET",
        uri="/dir/index.html",
        username="Mufasa",
        password="Circle of Life",
        nc=1,
        cnonce=RFC7616_CNONCE,
    )
    assert parse_authorization(header) == parse_authorization(
        rfc7616_authorization(algorithm.value, expected)
    )


@pytest.mark.parametrize(
    ("algorithm", "expected"), [("SHA-256", RFC7616_SHA256), ("MD5", RFC7616_MD5)]
)
def test_rfc7616_header_verifies(algorithm: str, expected: str) -> None:
    parsed = parse_authorization(rfc7616_authorization(algorithm, expected))
    assert parsed.algorithm == algorithm
    assert parsed.opaque == RFC7616_OPAQUE
    user = verify_digest(
        parsed, MUFASA_7616, method="GET", request_uri="/dir/index.html", realm=RFC7616_REALM
    )
    assert user == "Mufasa"
    with pytest.raises(AuthenticationError, match="wrong username or password"):
        verify_digest(
            parsed,
            StoredCredential(password="Circle Of Life"),
            method="GET",
            request_uri="/dir/index.html",
            realm=RFC7616_REALM,
        )


def test_client_prefers_sha256_from_rfc7616_challenges_in_either_order() -> None:
    for values in (RFC7616_CHALLENGES, RFC7616_CHALLENGES[::-1]):
        assert choose_challenge(parse_challenges(values)).supported_algorithm is Algorithm.SHA256


def test_verify_digest_does_not_accept_an_unoffered_algorithm() -> None:
    parsed = parse_authorization(rfc7616_authorization("SHA-256", RFC7616_SHA256))
    with pytest.raises(AuthenticationError, match="not offered"):
        verify_digest(
            parsed,
            MUFASA_7616,
            method="GET",
            request_uri="/dir/index.html",
            realm=RFC7616_REALM,
            algorithms=(Algorithm.MD5,),
        )


# ---------------------------------------------------------------------------------------------
# Server: challenges, nonces, verification
# ---------------------------------------------------------------------------------------------

SECRET = b"0123456789abcdef0123456789abcdef"
REALM = "store.example.com"
NOW = 1_700_000_000.0
USERS = {"alice": StoredCredential(password="wonderland")}


def make_server(**kwargs: object) -> DigestServer:
    return DigestServer(SECRET, REALM, **kwargs)  # type: ignore[arg-type]


def answer(
    server: DigestServer,
    *,
    now: float = NOW,
    username: str = "alice",
    password: str = "wonderland",  # noqa: S107
    method: str = "PUT",
    uri: str = "/cert/alice@store.example.com",
    nc: int = 1,
    algorithm: Algorithm | None = None,
) -> str:
    challenges = parse_challenges(server.challenges(now))
    if algorithm is None:
        challenge = choose_challenge(challenges)
    else:
        challenge = next(c for c in challenges if c.supported_algorithm is algorithm)
    return build_authorization(
        challenge,
        method=method,
        uri=uri,
        username=username,
        password=password,
        nc=nc,
        cnonce="c0ffee",
    )


def check(
    server: DigestServer,
    header: str,
    *,
    now: float = NOW + 1,
    method: str = "PUT",
    uri: str = "/cert/alice@store.example.com",
) -> str:
    return server.authenticate(header, USERS.get, method=method, request_uri=uri, now=now)


def test_challenges_offer_sha256_first_with_one_shared_nonce() -> None:
    values = make_server().challenges(NOW)
    assert len(values) == 2
    assert values[0].startswith(f'Digest realm="{REALM}", qop="auth", algorithm=SHA-256, nonce="')
    parsed = parse_challenges(values)
    assert [c.algorithm for c in parsed] == ["SHA-256", "MD5"]
    assert parsed[0].nonce == parsed[1].nonce
    assert parsed[0].opaque == parsed[1].opaque is not None
    assert not any(c.stale for c in parsed)
    assert all("stale" not in v for v in values)


def test_stale_challenges_carry_stale_true() -> None:
    values = make_server(algorithms=(Algorithm.MD5,)).challenges(NOW, stale=True)
    assert len(values) == 1
    assert values[0].endswith(", stale=true")
    assert parse_challenges(values)[0].stale


@given(
    realm=st.text(alphabet='ab.é"\\ ', min_size=1, max_size=8),
    algorithms=st.permutations(list(Algorithm)).flatmap(
        lambda order: st.integers(1, len(order)).map(lambda n: tuple(order[:n]))
    ),
    stale=st.booleans(),
)
def test_challenges_are_the_text_they_were_spelled_as(
    realm: str, algorithms: tuple[Algorithm, ...], stale: bool
) -> None:
    """The challenges made from remembered heads (issue 13) are the values spelled in full,
    also after the realm changes."""
    server = DigestServer(b"s" * 32, realm, algorithms=algorithms, random_bytes=lambda n: b"r" * n)
    for _ in range(2):
        nonce = server.new_nonce(NOW)
        spelled = [
            f'Digest realm={digest._quote(server.realm, "realm")}, qop="auth", '
            f'algorithm={a.value}, nonce="{nonce}", opaque="{server.opaque}"'
            + (", stale=true" if stale else "")
            for a in server.algorithms
        ]
        assert server.challenges(NOW, stale=stale) == spelled
        server.realm = realm + "x"


def test_round_trip_through_server_and_client() -> None:
    server = make_server()
    header = answer(server)
    assert parse_authorization(header).algorithm == "SHA-256"
    assert check(server, header) == "alice"


def test_md5_answer_is_accepted_when_offered() -> None:
    server = make_server()
    assert check(server, answer(server, algorithm=Algorithm.MD5)) == "alice"


def test_algorithm_not_offered_is_refused() -> None:
    header = answer(make_server(), algorithm=Algorithm.SHA256)
    with pytest.raises(AuthenticationError, match="'SHA-256' was not offered"):
        check(make_server(algorithms=(Algorithm.MD5,)), header)


def test_nonces_include_randomness() -> None:
    server = make_server()
    nonces = {server.new_nonce(NOW) for _ in range(50)}
    assert len(nonces) == 50
    assert all(server.nonce_issued_at(n) == NOW for n in nonces)


def test_injected_random_bytes_make_nonces_deterministic() -> None:
    one = make_server(random_bytes=lambda n: b"\x01" * n)
    two = make_server(random_bytes=lambda n: b"\x01" * n)
    assert one.new_nonce(NOW) == two.new_nonce(NOW)
    assert one.new_nonce(NOW) != one.new_nonce(NOW + 0.001)


def test_nonce_from_another_process_with_the_same_secret_is_accepted() -> None:
    header = answer(make_server())
    assert check(make_server(), header) == "alice"


def tamper(nonce: str, index: int) -> str:
    replacement = "A" if nonce[index] != "A" else "B"
    return nonce[:index] + replacement + nonce[index + 1 :]


@pytest.mark.parametrize("index", [0, 7, 12, 30, 53])  # timestamp, random, MAC
def test_forged_nonce_is_refused(index: int) -> None:
    server = make_server()
    nonce = server.new_nonce(NOW)
    with pytest.raises(AuthenticationError, match="not issued by this server"):
        server.nonce_issued_at(tamper(nonce, index))
    # A client that answers correctly for the forged nonce still fails.
    challenge = Challenge(realm=REALM, nonce=tamper(nonce, index), algorithm="MD5", qop=("auth",))
    header = build_authorization(
        challenge,
        method="PUT",
        uri="/x",
        username="alice",
        password="wonderland",
        nc=1,
        cnonce="abc",
    )
    with pytest.raises(AuthenticationError, match="not issued by this server"):
        check(server, header, uri="/x")


@pytest.mark.parametrize(
    "nonce",
    ["", "abc", "x" * 54, "dcd98b7102dd2f0e8b11d0f600bfb0c093", "é" * 54, "+" * 54, "A" * 55],
)
def test_nonce_of_wrong_shape_is_refused(nonce: str) -> None:
    with pytest.raises(AuthenticationError, match="not issued by this server"):
        make_server().nonce_issued_at(nonce)


def test_non_canonical_nonce_encoding_is_refused() -> None:
    server = make_server()
    nonce = server.new_nonce(NOW)
    # 40 bytes end in 2 base64 characters whose last one carries 4 unused bits.
    last = nonce[-1]
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
    sibling = alphabet[alphabet.index(last) ^ 1]
    with pytest.raises(AuthenticationError, match="not issued"):
        server.nonce_issued_at(nonce[:-1] + sibling)


def test_nonce_from_another_secret_is_refused() -> None:
    other = DigestServer(b"another secret, also 32 bytes!!!", REALM)
    header = answer(other)
    with pytest.raises(AuthenticationError, match="not issued by this server"):
        check(make_server(), header)


def test_nonce_from_another_realm_with_the_same_secret_is_refused() -> None:
    other = DigestServer(SECRET, "other.example.com")
    nonce = parse_challenges(other.challenges(NOW))[0].nonce
    # The client answers for our realm but with the other realm's nonce.
    challenge = Challenge(realm=REALM, nonce=nonce, algorithm="SHA-256", qop=("auth",))
    header = build_authorization(
        challenge,
        method="PUT",
        uri="/x",
        username="alice",
        password="wonderland",
        nc=1,
        cnonce="abc",
    )
    with pytest.raises(AuthenticationError, match="not issued by this server"):
        check(make_server(), header, uri="/x")
    with pytest.raises(AuthenticationError, match="not issued"):
        make_server().nonce_issued_at(nonce)


def test_expired_nonce_with_right_password_is_stale() -> None:
    server = make_server(nonce_lifetime=300)
    header = answer(server)
    assert check(make_server(nonce_lifetime=300), header, now=NOW + 300) == "alice"
    with pytest.raises(StaleNonceError, match="expired"):
        check(server, header, now=NOW + 301)


def test_expired_nonce_with_wrong_password_is_not_stale() -> None:
    server = make_server(nonce_lifetime=300)
    header = answer(server, password="wrong")
    with pytest.raises(AuthenticationError) as caught:
        check(server, header, now=NOW + 301)
    assert not isinstance(caught.value, StaleNonceError)
    assert str(caught.value) == digest._BAD_CREDENTIALS


def test_nonce_from_the_future_is_refused() -> None:
    server = make_server(max_clock_skew=60)
    header = answer(server, now=NOW + 100)
    with pytest.raises(AuthenticationError, match="future"):
        check(server, header, now=NOW)
    assert check(server, answer(server, now=NOW + 50), now=NOW) == "alice"


def test_replayed_nc_is_refused() -> None:
    server = make_server()
    header = answer(server)
    assert check(server, header) == "alice"
    with pytest.raises(AuthenticationError, match="replay") as caught:
        check(server, header)
    assert not isinstance(caught.value, StaleNonceError)


def test_increasing_nc_is_accepted_and_going_backwards_is_refused() -> None:
    server = make_server()
    challenge = choose_challenge(parse_challenges(server.challenges(NOW)))

    def with_nc(nc: int) -> str:
        return build_authorization(
            challenge,
            method="PUT",
            uri="/x",
            username="alice",
            password="wonderland",
            nc=nc,
            cnonce=f"cn{nc}",
        )

    assert check(server, with_nc(1), uri="/x") == "alice"
    assert check(server, with_nc(3), uri="/x") == "alice"
    for nc in (3, 2):
        with pytest.raises(AuthenticationError, match="already used"):
            check(server, with_nc(nc), uri="/x")
    assert check(server, with_nc(4), uri="/x") == "alice"


def test_nc_zero_is_refused() -> None:
    server = make_server()
    response = parse_authorization(answer(server))
    zero = DigestResponse(**{**response.__dict__, "nc": 0})
    challenge = choose_challenge(parse_challenges(server.challenges(NOW)))
    ha1 = compute_ha1(Algorithm.SHA256, "alice", REALM, "wonderland")
    digest_value = compute_response(
        Algorithm.SHA256,
        ha1,
        nonce=challenge.nonce,
        nc=0,
        cnonce="c",
        qop="auth",
        method="PUT",
        uri=zero.uri,
    )
    zero = DigestResponse(
        **{**zero.__dict__, "nonce": challenge.nonce, "cnonce": "c", "response": digest_value}
    )
    with pytest.raises(AuthenticationError, match="already used"):
        server.verify(zero, USERS["alice"], method="PUT", request_uri=zero.uri, now=NOW)


def test_wrong_uri_is_a_bad_request() -> None:
    server = make_server()
    header = answer(server, uri="/cert/alice@store.example.com")
    with pytest.raises(DigestHeaderError, match="does not match the request target"):
        check(server, header, uri="/cert/bob@store.example.com")


def test_uri_compare_includes_the_query() -> None:
    server = make_server()
    header = answer(server, uri="/cert/alice?x=1")
    with pytest.raises(DigestHeaderError, match="request target"):
        check(server, header, uri="/cert/alice")
    assert check(server, header, uri="/cert/alice?x=1") == "alice"


def test_wrong_realm_is_refused() -> None:
    server = make_server()
    challenge = choose_challenge(parse_challenges(server.challenges(NOW)))
    header = build_authorization(
        Challenge(**{**challenge.__dict__, "realm": "evil.example.com"}),
        method="PUT",
        uri="/x",
        username="alice",
        password="wonderland",
        nc=1,
        cnonce="c",
    )
    with pytest.raises(
        AuthenticationError, match=r"'evil\.example\.com' is not this server's realm"
    ):
        check(server, header, uri="/x")


def test_changed_opaque_is_refused_and_missing_opaque_tolerated() -> None:
    server = make_server()
    challenge = choose_challenge(parse_challenges(server.challenges(NOW)))

    def with_opaque(opaque: str | None) -> str:
        return build_authorization(
            Challenge(**{**challenge.__dict__, "opaque": opaque}),
            method="PUT",
            uri="/x",
            username="alice",
            password="wonderland",
            nc=1,
            cnonce="c",
        )

    with pytest.raises(AuthenticationError, match="opaque"):
        check(server, with_opaque("other"), uri="/x")
    assert check(server, with_opaque(None), uri="/x") == "alice"  # RFC 7616: SHOULD return


def test_unknown_user_and_wrong_password_are_indistinguishable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = make_server()
    calls: list[str] = []
    real_hash = digest._hash

    def counting_hash(algorithm: Algorithm, data: str) -> str:
        calls.append(algorithm.value)
        return real_hash(algorithm, data)

    def failure(username: str, password: str) -> tuple[type[BaseException], str, int]:
        header = answer(server, username=username, password=password)
        calls.clear()
        with monkeypatch.context() as patch:
            patch.setattr(digest, "_hash", counting_hash)
            with pytest.raises(AuthenticationError) as caught:
                check(server, header)
        return type(caught.value), str(caught.value), len(calls)

    wrong_password = failure("alice", "not-wonderland")
    unknown_user = failure("mallory", "wonderland")
    assert wrong_password == unknown_user
    assert wrong_password[0] is AuthenticationError
    assert wrong_password[2] == 3  # HA1 (dummy or real), HA2, KD


def test_unknown_user_never_authenticates_even_with_the_dummy_password() -> None:
    server = make_server()
    header = answer(server, username="mallory", password=digest._DUMMY_PASSWORD)
    with pytest.raises(AuthenticationError, match="wrong username or password"):
        check(server, header)


def test_ha1_only_credential_serves_md5_but_not_sha256() -> None:
    server = make_server()
    ha1 = compute_ha1(Algorithm.MD5, "alice", REALM, "wonderland")
    credential = StoredCredential(ha1={Algorithm.MD5: ha1})

    def run(algorithm: Algorithm) -> str:
        response = parse_authorization(answer(server, algorithm=algorithm))
        return server.verify(
            response, credential, method="PUT", request_uri=response.uri, now=NOW + 1
        )

    assert run(Algorithm.MD5) == "alice"
    with pytest.raises(AuthenticationError) as caught:
        run(Algorithm.SHA256)
    assert str(caught.value) == digest._BAD_CREDENTIALS  # same as an unknown user


def test_uppercase_stored_ha1_is_accepted() -> None:
    server = make_server()
    ha1 = compute_ha1(Algorithm.MD5, "alice", REALM, "wonderland").upper()
    response = parse_authorization(answer(server, algorithm=Algorithm.MD5))
    credential = StoredCredential(ha1={Algorithm.MD5: ha1})
    assert server.verify(credential=credential, response=response, method="PUT",
                         request_uri=response.uri, now=NOW) == "alice"  # fmt: skip


def test_missing_qop_is_refused() -> None:
    server = make_server()
    nonce = server.new_nonce(NOW)
    ha1 = compute_ha1(Algorithm.MD5, "alice", REALM, "wonderland")
    # RFC 2069 digest: KD(HA1, nonce:HA2); well-formed, but we require qop=auth.
    ha2 = digest._hash(Algorithm.MD5, "PUT:/x")
    legacy = digest._hash(Algorithm.MD5, f"{ha1}:{nonce}:{ha2}")
    header = (
        f'Digest username="alice", realm="{REALM}", nonce="{nonce}", uri="/x", response="{legacy}"'
    )
    with pytest.raises(AuthenticationError, match="lacks qop"):
        check(server, header, uri="/x")


def test_auth_int_is_refused() -> None:
    server = make_server()
    header = answer(server).replace("qop=auth", "qop=auth-int")
    with pytest.raises(AuthenticationError, match="'auth-int' was not offered"):
        check(server, header)


def test_authenticate_without_header_or_with_other_scheme() -> None:
    server = make_server()
    for value in (None, "", "  "):
        with pytest.raises(AuthenticationError, match="no Authorization header"):
            check(server, value)  # type: ignore[arg-type]
    with pytest.raises(AuthenticationError, match="'Basic' is not accepted"):
        check(server, "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")
    with pytest.raises(AuthenticationError, match="'\"' is not accepted"):
        check(server, '"Digest" username="alice"')
    with pytest.raises(DigestHeaderError, match="expected a space after auth-scheme"):
        check(server, 'Digest,username="alice"')  # Digest, but malformed: 400, not 401


def test_username_star_authenticates() -> None:
    server = make_server()
    header = answer(server, username="Jäsøn Doe", password="Secret, or not?")
    assert "username*=UTF-8''J%C3%A4s%C3%B8n%20Doe" in header
    users = {"Jäsøn Doe": StoredCredential(password="Secret, or not?")}
    assert (
        server.authenticate(
            header, users.get, method="PUT", request_uri="/cert/alice@store.example.com", now=NOW
        )
        == "Jäsøn Doe"
    )


def test_server_configuration_is_checked() -> None:
    with pytest.raises(ConfigError, match="16 bytes"):
        DigestServer(b"short", REALM)
    for realm in ("", "bad\nrealm"):
        with pytest.raises(ConfigError, match="realm"):
            DigestServer(SECRET, realm)
    assert (
        DigestServer(SECRET, 'Zürich "office"')
        .challenges(NOW)[0]
        .startswith('Digest realm="Z\xc3\xbcrich \\"office\\"", ')
    )
    with pytest.raises(ConfigError, match="repetitions"):
        DigestServer(SECRET, REALM, algorithms=(Algorithm.MD5, Algorithm.MD5))
    with pytest.raises(ConfigError, match="nonce_lifetime"):
        DigestServer(SECRET, REALM, nonce_lifetime=0)
    with pytest.raises(ConfigError, match="Unix time"):
        make_server().new_nonce(float("nan"))


# ---------------------------------------------------------------------------------------------
# Replay cache
# ---------------------------------------------------------------------------------------------


def test_memory_nonce_counter_is_strictly_increasing() -> None:
    counter = MemoryNonceCounter()
    assert counter.advance("n", 1, NOW)
    assert not counter.advance("n", 1, NOW)
    assert counter.advance("n", 5, NOW)
    assert not counter.advance("n", 4, NOW)
    assert counter.advance("m", 1, NOW)  # counts are per nonce
    assert not counter.advance("z", 0, NOW)


def test_memory_nonce_counter_forgets_old_nonces() -> None:
    counter = MemoryNonceCounter(retention=10)
    assert counter.advance("old", 1, NOW)
    assert counter.advance("new", 1, NOW + 5)
    assert len(counter) == 2
    assert counter.advance("newer", 1, NOW + 11)  # "old" goes, "new" stays
    assert len(counter) == 2
    assert not counter.advance("new", 1, NOW + 11)


def test_memory_nonce_counter_fails_closed_when_full() -> None:
    counter = MemoryNonceCounter(retention=10, max_entries=2)
    assert counter.advance("a", 1, NOW)
    assert counter.advance("b", 1, NOW)
    assert not counter.advance("c", 1, NOW)  # no eviction of live nonces
    assert counter.advance("a", 2, NOW)  # known nonces still count
    assert counter.advance("c", 1, NOW + 11)  # room again once the old ones expire


def test_server_uses_a_custom_nonce_counter() -> None:
    seen: list[tuple[str, int]] = []

    class Recording:
        def advance(self, nonce: str, nc: int, now: float) -> bool:
            seen.append((nonce, nc))
            return len(seen) == 1

    server = make_server(nonce_counter=Recording())
    header = answer(server, nc=7)
    assert check(server, header) == "alice"
    with pytest.raises(AuthenticationError, match="replay"):
        check(server, header)
    assert seen[0][1] == 7
    assert seen[0][0] == parse_authorization(header).nonce


# ---------------------------------------------------------------------------------------------
# Client
# ---------------------------------------------------------------------------------------------


def test_parse_challenges_skips_other_schemes_in_one_value() -> None:
    value = (
        'Basic realm="x", Negotiate, NTLM abc123==, Digest realm="r", nonce="n1", '
        'qop="auth,auth-int", algorithm=MD5, Newauth realm="y", title="Login"'
    )
    challenges = parse_challenges([value, 'Digest realm="r", nonce="n2", algorithm=SHA-256'])
    assert challenges == [
        Challenge(realm="r", nonce="n1", algorithm="MD5", qop=("auth", "auth-int")),
        Challenge(realm="r", nonce="n2", algorithm="SHA-256", qop=()),
    ]


def test_parse_challenges_accepts_a_single_string() -> None:
    assert parse_challenges('Digest realm="r", nonce="n"')[0].nonce == "n"


def test_choose_ignores_unsupported_algorithms_and_missing_qop() -> None:
    challenges = parse_challenges(
        [
            'Digest realm="r", nonce="a", algorithm=SHA-512-256, qop="auth"',
            'Digest realm="r", nonce="b", algorithm=SHA-256, qop="auth-int"',
            'Digest realm="r", nonce="c", algorithm=MD5-sess, qop="auth"',
            'Digest realm="r", nonce="d", algorithm=FOO, qop="auth"',
            'Digest realm="r", nonce="e", algorithm=md5, qop="auth"',
            'Digest realm="r", nonce="f", algorithm=SHA-256',
        ]
    )
    chosen = choose_challenge(challenges)
    assert chosen.nonce == "e"
    assert chosen.supported_algorithm is Algorithm.MD5
    with pytest.raises(AuthenticationError, match="no usable Digest challenge"):
        choose_challenge(challenges[:4])
    with pytest.raises(AuthenticationError, match="got none"):
        choose_challenge([])


def test_build_refuses_what_it_cannot_answer() -> None:
    kwargs: dict[str, object] = {
        "method": "GET",
        "uri": "/",
        "username": "u",
        "password": "p",
        "nc": 1,
        "cnonce": "c",
    }
    with pytest.raises(AuthenticationError, match="not supported"):
        unsupported = Challenge(realm="r", nonce="n", algorithm="SHA-512-256", qop=("auth",))
        build_authorization(unsupported, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(AuthenticationError, match="qop=auth"):
        build_authorization(Challenge(realm="r", nonce="n"), **kwargs)  # type: ignore[arg-type]
    ok = Challenge(realm="r", nonce="n", qop=("auth",))
    with pytest.raises(DigestHeaderError, match="nc"):
        build_authorization(ok, **{**kwargs, "nc": 0})  # type: ignore[arg-type]
    with pytest.raises(DigestHeaderError, match="cnonce"):
        build_authorization(ok, **{**kwargs, "cnonce": ""})  # type: ignore[arg-type]


def test_digest_client_counts_nc_per_nonce() -> None:
    server = make_server()
    cnonces = (f"cnonce{i}" for i in itertools.count())
    client = DigestClient("alice", "wonderland", cnonce_factory=lambda: next(cnonces))
    assert client.authorization(method="PUT", uri="/x") is None
    first = client.answer(server.challenges(NOW), method="PUT", uri="/x")
    second = client.authorization(method="PUT", uri="/x")
    assert second is not None
    assert [parse_authorization(h).nc for h in (first, second)] == [1, 2]
    assert check(server, first, uri="/x") == "alice"
    assert check(server, second, uri="/x") == "alice"
    # Re-answering the same nonce keeps counting (the server would refuse nc=1 again).
    assert client.challenge is not None
    same = next(v for v in server.challenges(NOW) if "SHA-256" in v)
    same = same.replace(parse_challenges(same)[0].nonce, client.challenge.nonce)
    third = client.answer([same], method="PUT", uri="/x")
    assert parse_authorization(third).nc == 3
    assert check(server, third, uri="/x") == "alice"
    # A new nonce (e.g. after stale=true) starts again at 1.
    with pytest.raises(StaleNonceError):
        check(server, client.authorization(method="PUT", uri="/x") or "", uri="/x", now=NOW + 999)
    fresh = client.answer(server.challenges(NOW + 999, stale=True), method="PUT", uri="/x")
    assert parse_authorization(fresh).nc == 1
    assert check(server, fresh, uri="/x", now=NOW + 999) == "alice"


# ---------------------------------------------------------------------------------------------
# Header parser
# ---------------------------------------------------------------------------------------------

VALID = (
    'Digest username="alice", realm="r", nonce="n", uri="/x", response="abc", '
    'qop=auth, nc=00000001, cnonce="c"'
)


def test_quoted_strings_with_escapes_commas_and_whitespace() -> None:
    parsed = parse_authorization(
        'digest  USERNAME = "a\\"l\\\\i,c e" ,REALM="r, with comma",nonce=n,\t uri="/x?a=1,2", '
        ', response=abc , qop="auth", nc=0000000a, cnonce="", extra=ignored,'
    )
    assert parsed.username == 'a"l\\i,c e'
    assert parsed.realm == "r, with comma"
    assert parsed.nonce == "n"
    assert parsed.uri == "/x?a=1,2"
    assert parsed.qop == "auth"
    assert parsed.nc == 10
    assert parsed.cnonce == ""


def test_obs_text_is_read_as_utf8() -> None:
    wire = "Jäsøn".encode().decode("latin-1")
    parsed = parse_authorization(VALID.replace('"alice"', f'"{wire}"'))
    assert parsed.username == "Jäsøn"
    latin1_only = parse_authorization(VALID.replace('"alice"', '"J\xe4s"'))
    assert latin1_only.username == "J\xe4s"  # not UTF-8: kept as received


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        (", ,", "empty"),
        ("Digest", "no directives"),
        ("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==", "scheme is 'Basic'"),
        ("Digest abcdef==", "token68"),
        (VALID + ', realm="s"', "duplicate directive 'realm'"),
        (VALID + ', Realm="s"', "duplicate directive 'Realm'"),
        (VALID + ", userhash=true", "userhash=true is not supported"),
        (VALID + ", userhash=maybe", "userhash must be true or false"),
        (VALID + ", username*=\"UTF-8''a\"", "both username and username"),
        (VALID.replace('username="alice"', "username*=ISO-8859-1''a"), "requires UTF-8"),
        (VALID.replace('username="alice"', "username*=UTF-8''%FF"), "valid UTF-8"),
        (VALID.replace('username="alice"', "username*=alice"), "ext-value"),
        (VALID.replace('username="alice", ', ""), "lacks the 'username' directive"),
        (VALID.replace('realm="r", ', ""), "lacks the 'realm' directive"),
        (VALID.replace('nonce="n", ', ""), "lacks the 'nonce' directive"),
        (VALID.replace('uri="/x", ', ""), "lacks the 'uri' directive"),
        (VALID.replace('response="abc", ', ""), "lacks the 'response' directive"),
        (VALID.replace("nc=00000001, ", ""), "lacks the 'nc' directive"),
        (VALID.replace(', cnonce="c"', ""), "lacks the 'cnonce' directive"),
        (VALID.replace("qop=auth, ", ""), "no qop directive"),
        (VALID.replace("00000001", "1"), "8 lowercase hex digits"),
        (VALID.replace("00000001", "0000000A"), "8 lowercase hex digits"),
        (VALID.replace("00000001", "000000001"), "8 lowercase hex digits"),
        ('Digest username="alice', "unterminated quoted-string in directive 'username'"),
        ('Digest username="alice\\', "backslash at end"),
        ('Digest username="a\\\nb"', "cannot be escaped"),
        ('Digest username="a\x00b"', "not allowed in quoted-string"),
        ('Digest username="a\u0100b"', "not allowed in quoted-string"),
        ("Digest username", "token68"),  # "username" is a legal token68 (RFC 7235 §2.1)
        ("Digest username=", "token68"),
        ('Digest username "alice"', "expected '=' after directive 'username'"),
        ("Digest username=;", "expected a token or quoted-string value"),
        ('Digest username="a" realm="r"', "expected ',' after directive 'username'"),
        ('Digest username="a",, =x', "expected a directive name"),
        ('Digest,username="a"', "expected a space after auth-scheme 'username'"),
        ('Digest\x00 username="a"', "expected a space after auth-scheme"),
        ('"Digest" username="a"', "expected an auth-scheme"),
        (VALID + ", Basic abc", "2 credentials"),
    ],
)
def test_malformed_authorization_is_refused_precisely(value: str, message: str) -> None:
    with pytest.raises(DigestHeaderError, match=message.replace("*", r"\*")):
        parse_authorization(value)


def test_error_names_the_offset() -> None:
    with pytest.raises(DigestHeaderError, match=r"at offset 16\)"):
        parse_authorization('Digest username="alice')


def test_oversized_headers_are_refused() -> None:
    big = VALID + ", pad=" + "x" * MAX_HEADER_LENGTH
    with pytest.raises(InputTooLargeError, match="over the 4096 limit") as info:
        parse_authorization(big)
    assert isinstance(info.value, HeaderTooLargeError)
    assert info.value.http_status == 431  # a header too large, not a body (issue 9)
    with pytest.raises(InputTooLargeError, match="WWW-Authenticate"):
        parse_challenges([big])
    with pytest.raises(InputTooLargeError, match="values"):
        parse_challenges(['Digest realm="r", nonce="n"'] * 33)
    just_fits = VALID + ", pad=" + "x" * (MAX_HEADER_LENGTH - len(VALID) - 6)
    assert len(just_fits) == MAX_HEADER_LENGTH
    assert parse_authorization(just_fits).username == "alice"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('Digest realm="r"', "lacks the 'nonce' directive"),
        ('Digest nonce="n"', "lacks the 'realm' directive"),
        ("Digest abc=", "token68"),
        ('Digest realm="r", realm="s", nonce="n"', "duplicate"),
        ('Basic realm="x" Digest realm="r"', "expected ','"),
    ],
)
def test_malformed_challenges_are_refused(value: str, message: str) -> None:
    with pytest.raises(DigestHeaderError, match=message):
        parse_challenges([value])


# ---------------------------------------------------------------------------------------------
# Property tests
# ---------------------------------------------------------------------------------------------

# Values a quoted-string can carry: printable ASCII, tab, and any non-control Unicode
# (non-ASCII travels as UTF-8 obs-text).
quotable = st.text(
    st.characters(exclude_categories=("Cc", "Cs"), include_characters="\t"), max_size=30
)
tokens = st.text(
    st.sampled_from(sorted("!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits)),
    min_size=1,
    max_size=12,
)
usernames = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)


@st.composite
def digest_responses(draw: st.DrawFn) -> DigestResponse:
    with_qop = draw(st.booleans())
    return DigestResponse(
        username=draw(usernames),
        realm=draw(quotable),
        nonce=draw(quotable),
        uri=draw(quotable),
        response=draw(quotable),
        algorithm=draw(st.none() | st.sampled_from(["MD5", "SHA-256", "SHA-512-256"]) | tokens),
        cnonce=draw(quotable) if with_qop else None,
        nc=draw(st.integers(0, 0xFFFFFFFF)) if with_qop else None,
        qop=draw(st.sampled_from(["auth", "auth-int"]) | tokens) if with_qop else None,
        opaque=draw(st.none() | quotable),
    )


@settings(deadline=None)  # shared CI machines: no timing flakiness
@given(digest_responses())
def test_format_then_parse_round_trips(response: DigestResponse) -> None:
    assert parse_authorization(format_authorization(response)) == response


def _wire_quote(value: str) -> str:
    wire = value.encode("utf-8").decode("latin-1")
    return '"' + "".join("\\" + c if c in '"\\' else c for c in wire) + '"'


@settings(deadline=None)
@given(
    digest_responses(),
    st.randoms(use_true_random=False),
    st.lists(st.tuples(tokens, quotable), max_size=3),
)
def test_parser_accepts_any_legal_spelling(
    response: DigestResponse, rnd: random.Random, extra: list[tuple[str, str]]
) -> None:
    """Directive order, name case, BWS, token-vs-quoted and empty list elements are free."""

    def ows() -> str:
        return rnd.choice(["", " ", "\t", "  "])

    def separator() -> str:
        return ows() + "," + rnd.choice(["", ",", ", ,"]) + ows()

    directives: dict[str, str] = {
        "realm": response.realm,
        "nonce": response.nonce,
        "uri": response.uri,
        "response": response.response,
    }
    if response.username.isascii() and response.username.isprintable():
        directives["username"] = response.username
    else:
        directives["username*"] = "UTF-8''" + "".join(
            f"%{b:02X}" for b in response.username.encode()
        )
    for name in ("algorithm", "cnonce", "qop", "opaque"):
        value = getattr(response, name)
        if value is not None:
            directives[name] = value
    if response.nc is not None:
        directives["nc"] = f"{response.nc:08x}"
    known = {f.name for f in dataclasses.fields(DigestResponse)} | {"username*", "userhash"}
    for name, value in extra:
        if name.lower() not in known and name.lower() not in {n.lower() for n in directives}:
            directives[name] = value  # unknown directives are ignored (RFC 7616 §3.4)
    names = list(directives)
    rnd.shuffle(names)
    parts = []
    for name in names:
        value = directives[name]
        if value and all(c in digest._TCHAR for c in value) and rnd.random() < 0.5:
            spelled = value
        elif name == "username*":
            spelled = value
        else:
            spelled = _wire_quote(value)
        shown = "".join(c.upper() if rnd.random() < 0.3 else c for c in name)
        parts.append(f"{shown}{ows()}={ows()}{spelled}")
    header = rnd.choice(["Digest", "digest", "DIGEST"]) + " " + ows()
    header += "".join(p + separator() for p in parts[:-1]) + parts[-1] + ows()
    if len(header) <= MAX_HEADER_LENGTH:
        assert parse_authorization(header) == response


header_alphabet = st.sampled_from("Digest Basic ,=\"\\\t=aun*'%é\x00\x7f\u0100")


def assert_parses_or_refuses_cleanly(text: str) -> None:
    """Either a result that survives a round trip, or a header error with a message."""
    try:
        parsed = parse_authorization(text)
    except (DigestHeaderError, InputTooLargeError) as exc:
        assert str(exc)
    else:
        assert parse_authorization(format_authorization(parsed)) == parsed
    try:
        challenges = parse_challenges([text])
    except (DigestHeaderError, InputTooLargeError) as exc:
        assert str(exc)
    else:
        assert all(isinstance(c, Challenge) and c.realm is not None for c in challenges)


@settings(max_examples=300, deadline=None)
@given(st.text() | st.text(header_alphabet, max_size=60) | st.text(max_size=5000))
def test_arbitrary_text_raises_only_header_errors(text: str) -> None:
    assert_parses_or_refuses_cleanly(text)


@settings(max_examples=300, deadline=None)
@given(st.text(header_alphabet, max_size=40), st.text(header_alphabet, max_size=40))
def test_mangled_valid_headers_raise_only_header_errors(prefix: str, suffix: str) -> None:
    assert_parses_or_refuses_cleanly(prefix + VALID + suffix)
    assert_parses_or_refuses_cleanly(VALID[: len(prefix)] + suffix)
    assert_parses_or_refuses_cleanly('Digest realm="r", nonce="n", ' + suffix)
