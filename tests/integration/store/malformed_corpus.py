"""The malformed-input corpus of issue 9: each case's raw request and the answer it must get.

Every case is data: an id, the request (bytes, or a builder that needs the run's
:class:`Env` for a Digest answer or a certificate made now), the exact status and a
substring of the reason (the first line of the ``text/plain`` body). The statuses come from
the RFCs and the draft, cited per family:

* RFC 9112 §2.2, §3, §3.2, §5, §6 (request line, Host, field syntax, framing and smuggling),
  RFC 9110 §15.5.6, §15.6.6 and RFC 6585 §5 (405, 505, 431), RFC 9112 §3 (414);
* draft §4.1, §4.5, §8 and RFC 4387 §2.1, §3.2 (the ``search-cgi`` query string);
* draft §5, §5.1 (uploads: 413, 415, 400 for what is not a certificate, 403 for one the
  Store must refuse);
* RFC 7616 §3.3-§3.5 (Digest: 400 for a malformed header, 401 with fresh challenges for a
  wrong or stale answer, 431 for an oversized one).

The runner (test_malformed_corpus.py) sends each case on its own TLS connection, with SNI
``example.com`` unless the case says otherwise.
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sipcert.proto.digest import (
    Algorithm,
    DigestServer,
    compute_ha1,
    compute_response,
)
from tests.factories import PrivateKey, make_cert, make_key, resign_with_sha1

SEARCH = "/search-cgi"
ALICE_Q = "/search-cgi?sip=alice@example.com"
PASSWORDS = {"alice": "alice-secret", "bob": "bob-secret"}
#: The reason of every non-stale 401 starts with this (server/app.py ``unauthorized_text``).
UNAUTHORIZED = "Digest authentication required"
STALE = "stale Digest nonce"


@dataclass
class Env:
    """What builders need from the run: the nonce secret, the clock, fresh nonce counts."""

    secret: bytes
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    _counts: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _cnonces: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def server(self) -> DigestServer:
        return DigestServer(self.secret, "example.com")

    def nonce(self, age: float = 0.0) -> str:
        return self.server().new_nonce(self.now.timestamp() - age)

    def authorization(
        self,
        method: str,
        target: str,
        *,
        user: str = "alice",
        password: str | None = None,
        algorithm: Algorithm = Algorithm.SHA256,
        nonce: str | None = None,
        nc: int | None = None,
        uri: str | None = None,
        realm: str = "example.com",
        opaque: str | None = None,
        extra: str = "",
    ) -> str:
        """A correct answer for ``method target`` unless an argument says otherwise."""
        nonce = nonce if nonce is not None else self.nonce()
        nc = nc if nc is not None else 1
        cnonce = f"c{next(self._cnonces):08x}"
        ha1 = compute_ha1(algorithm, user, realm, password or PASSWORDS.get(user, "x"))
        response = compute_response(
            algorithm,
            ha1,
            nonce=nonce,
            nc=nc,
            cnonce=cnonce,
            qop="auth",
            method=method,
            uri=uri if uri is not None else target,
        )
        return (
            f'Digest username="{user}", realm="{realm}", nonce="{nonce}", '
            f'uri="{uri if uri is not None else target}", algorithm={algorithm.value}, '
            f'qop=auth, nc={nc:08x}, cnonce="{cnonce}", response="{response}", '
            f'opaque="{opaque if opaque is not None else self.server().opaque}"{extra}'
        )


Build = bytes | Callable[[Env], bytes]


@dataclass(frozen=True)
class Case:
    id: str
    request: Build
    status: int
    reason: str
    sni: str = "example.com"
    #: A header the answer must carry, and a substring of its value.
    header: tuple[str, str] | None = None

    def build(self, env: Env) -> bytes:
        return self.request if isinstance(self.request, bytes) else self.request(env)


def raw(
    method: str = "GET",
    target: str = ALICE_Q,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    *,
    version: str = "HTTP/1.1",
    host: str | None = "example.com",
    length: bool | None = None,
) -> bytes:
    """A request written out byte for byte (text as UTF-8 with surrogates kept as bytes)."""
    lines = [f"{method} {target}" + (f" {version}" if version else "")]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{name}: {value}" for name, value in headers or []]
    if length or (length is None and body):
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")
    return head + body


# -- certificates for uploads (draft §5.1) ---------------------------------------------------

PKIX = [("Content-Type", "application/pkix-cert")]


def _now() -> datetime:
    return datetime.now(UTC)


def good_cert(
    aor: str = "alice@example.com",
    *,
    slot: int = 0,
    key: PrivateKey | None = None,
    uris: list[str] | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> x509.Certificate:
    """A certificate the Store would enroll for ``aor``, unless an argument spoils it."""
    now = _now()
    return make_cert(
        key or make_key("ec-p256", aor, slot=slot),
        aor,
        uris=uris,
        not_before=not_before or now - timedelta(hours=1),
        not_after=not_after or now + timedelta(days=10),
    )


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _sha1_signed() -> x509.Certificate:
    key = make_key("rsa2048", "alice@example.com", slot=7)
    assert isinstance(key, rsa.RSAPrivateKey)
    return resign_with_sha1(good_cert(key=key), key)


def _weak_rsa() -> x509.Certificate:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    now = _now()
    return make_cert(
        key,
        "alice@example.com",
        not_before=now - timedelta(hours=1),
        not_after=now + timedelta(days=5),
    )


def _ca_issued() -> x509.Certificate:
    issuer_key = make_key("ec-p256", "ca@example.com")
    now = _now()
    return make_cert(
        make_key("ec-p256", "alice@example.com", slot=8),
        "alice@example.com",
        issuer=x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "Some CA")]),
        issuer_key=issuer_key,
        not_before=now - timedelta(hours=1),
        not_after=now + timedelta(days=5),
    )


def put(
    body: bytes | Callable[[], bytes],
    headers: list[tuple[str, str]] | None = None,
    *,
    user: str = "alice",
) -> Build:
    """A PUT of ``body`` for alice, authenticated as ``user`` (so the body is looked at)."""

    def build(env: Env) -> bytes:
        data = body() if callable(body) else body
        auth = env.authorization("PUT", ALICE_Q, user=user)
        extra = PKIX if headers is None else headers
        return raw("PUT", ALICE_Q, [*extra, ("Authorization", auth)], data, length=True)

    return build


def put_chunked(chunks: bytes) -> Build:
    def build(env: Env) -> bytes:
        auth = env.authorization("PUT", ALICE_Q)
        return raw(
            "PUT",
            ALICE_Q,
            [*PKIX, ("Transfer-Encoding", "chunked"), ("Authorization", auth)],
            chunks,
            length=False,
        )

    return build


def with_auth(method: str, target: str, **kw: object) -> Build:
    """``method target`` with an Authorization made by :meth:`Env.authorization` (``kw``)."""

    def build(env: Env) -> bytes:
        headers = [("Authorization", env.authorization(method, target, **kw))]  # type: ignore[arg-type]
        return raw(method, target, headers, length=method == "PUT")

    return build


def authorization(value: str | Callable[[Env], str], method: str = "PUT") -> Build:
    """A request whose Authorization header is exactly ``value``."""

    def build(env: Env) -> bytes:
        text = value(env) if callable(value) else value
        return raw(method, ALICE_Q, [("Authorization", text)], length=method == "PUT")

    return build


# -- the cases ---------------------------------------------------------------------------------


def request_lines() -> list[Case]:
    """RFC 9112 §3: request-line = method SP request-target SP HTTP-version."""
    cases: list[Case] = []
    # Methods that are tokens but not this resource's: 405 with Allow (RFC 9110 §15.5.6).
    for method in ("POST", "PATCH", "OPTIONS", "TRACE", "PROPFIND", "MKCOL", "LINK", "PURGE"):
        cases.append(
            Case(
                f"method-{method.lower()}",
                raw(method),
                405,
                f"method {method} is not allowed",
                header=("allow", "GET, HEAD, PUT, DELETE"),
            )
        )
    # Methods are case-sensitive (RFC 9110 §9.1). An unrecognised one SHOULD be 501 (§9.1);
    # aiohttp's parser (llhttp) knows the registered methods by name and refuses any other
    # as a malformed request line, 400, which a SHOULD allows; the Store keeps that.
    for method in (
        "FOO",
        "FROB",
        "get",
        "Get",
        "put",
        "dElEtE",
        "GE\x00T",
        "GET\x7f",
        "G(T",
        "G/T",
        "ÄGET",
    ):
        cases.append(
            Case(
                f"method-bad-{method.encode('unicode_escape').decode()}",
                raw(method),
                400,
                "malformed request",
            )
        )
    cases.append(Case("method-missing", b" /search-cgi HTTP/1.1\r\n\r\n", 400, "malformed"))
    # Versions (RFC 9112 §2.3): HTTP/1.x only; another major version is 505 (RFC 9110
    # §15.6.6); a version that is not HTTP-name "/" DIGIT "." DIGIT is a bad request line.
    cases.append(Case("version-HTTP/2.0", raw(version="HTTP/2.0"), 505, "is not supported"))
    # llhttp refuses other versions as a bad request line (400): 505 is a "can" (§2.3).
    for version in (
        "HTTP/3.0",
        "HTTP/9.9",
        "HTTP/1.2",
        "HTTP/1.9",
        "HTTP/1",
        "HTTP/1.1.1",
        "http/1.1",
        "HTTP/11",
        "HTTP/a.b",
        "HTTPS/1.1",
        "HTTP/1.1x",
        "HTTP /1.1",
        "HTTP/-1.1",
        "HTTP/1.1 ",
    ):
        cases.append(
            Case(f"version-bad-{version.strip()}", raw(version=version), 400, "malformed request")
        )
    cases.append(
        Case(
            "version-missing-0.9",
            raw(version=""),
            400,
            "no HTTP version",
        )
    )
    # Request targets (RFC 9112 §3.2): origin-form for this resource; anything else is
    # another resource (404) or not a target at all (400).
    for target in ("*", "search-cgi?sip=alice@example.com", "?sip=alice@example.com"):
        cases.append(Case(f"target-form-{target[:12]}", raw(target=target), 400, "malformed"))
    for target in (
        "/",
        "/search-cgi/",
        "//search-cgi",
        "/Search-cgi",
        "/SEARCH-CGI",
        "/search-cgi.php",
        "/search-cgi;x=1",
        "/search-cg",
        "/search-cgii",
        "/%2e%2e/search-cgi",
        "/../search-cgi",
        "/search-cgi/../x",
        "/cgi-bin/search-cgi",
        "/search-cgi%00",
        "/search-cgi%2f",
        "/.well-known/search-cgi",
    ):
        cases.append(Case(f"target-path-{target}", raw(target=target), 404, "no such resource"))
    cases.append(
        Case(
            "target-fragment",
            raw(target=ALICE_Q + "#frag"),
            400,
            "invalid character '#'",
        )
    )
    for byte in (0x00, 0x01, 0x09, 0x0B, 0x0C, 0x7F, 0xFF, 0x80):
        target = f"/search-cgi?sip=alice@exa{chr(byte)}mple.com".encode("latin-1")
        cases.append(
            Case(
                f"target-byte-{byte:02x}",
                b"GET " + target + b" HTTP/1.1\r\nHost: example.com\r\n\r\n",
                400,
                "malformed",
            )
        )
    # Too long to parse: 414 (RFC 9112 §3), whether aiohttp's line limit or our query's.
    cases.append(
        Case("target-over-line-limit", raw(target=ALICE_Q + "&x=" + "a" * 9000), 414, "too long")
    )
    cases.append(
        Case(
            "target-query-over-2048",
            raw(target="/search-cgi?sip=" + "a" * 2100 + "@example.com"),
            414,
            "query string longer than 2048",
        )
    )
    cases.append(
        Case(
            "target-aor-over-limit",
            raw(target="/search-cgi?sip=" + "a" * 600 + "@example.com"),
            414,
            "more than the limit of 512",
        )
    )
    # Absolute-form must be accepted (RFC 9112 §3.2.2): the seeded certificate comes back.
    cases.append(
        Case(
            "target-absolute-form",
            raw(target="https://example.com" + ALICE_Q),
            200,
            "",
        )
    )
    cases.append(Case("target-empty-query", raw(target=SEARCH + "?"), 400, "missing query"))
    cases.append(Case("target-no-query", raw(target=SEARCH), 400, "missing query"))
    cases.append(Case("line-lf-only", raw().replace(b"\r\n", b"\n"), 400, "malformed request"))
    cases.append(Case("line-cr-only", raw().replace(b"\r\n", b"\r"), 400, "malformed request"))
    return cases


def headers() -> list[Case]:
    """RFC 9110 §5, RFC 9112 §5 (field syntax), §3.2 (Host), §6 (framing), RFC 6585 §5."""
    cases: list[Case] = []
    # A field name is a token (RFC 9110 §5.1); whitespace before the colon MUST be 400
    # (RFC 9112 §5.1).
    for name in ("X Y", "X\tY", "X(", "X)", "X<", "X>", "X@", "X,", "X;", "X\\", 'X"', "X/"):
        cases.append(
            Case(
                f"field-name-{name.encode('unicode_escape').decode()}",
                raw(headers=[(name, "v")]),
                400,
                "malformed request",
            )
        )
    for name in ("X[", "X]", "X?", "X=", "X{", "X}", "Host ", "X\x00", "X\x7f", "\xff"):
        cases.append(
            Case(
                f"field-name2-{name.encode('unicode_escape').decode()}",
                raw(headers=[(name, "v")]),
                400,
                "malformed request",
            )
        )
    cases.append(
        Case(
            "field-no-colon", b"GET / HTTP/1.1\r\nHost: example.com\r\nNoColon\r\n\r\n", 400, "mal"
        )
    )
    cases.append(Case("field-empty-name", raw(headers=[("", "v")]), 400, "malformed request"))
    # Obsolete line folding: a server MUST reject it or unfold it (RFC 9112 §5.2); aiohttp
    # rejects.
    for fold in (" b", "\tb", "  b", "\t\tb"):
        data = raw(headers=[("X-A", "a\r\n" + fold)])
        cases.append(
            Case(f"obs-fold-{fold.encode('unicode_escape').decode()}", data, 400, "malformed")
        )
    cases.append(
        Case(
            "obs-fold-first-line",
            b"GET / HTTP/1.1\r\n Host: example.com\r\n\r\n",
            400,
            "malformed",
        )
    )
    # CR, LF and NUL are never allowed in a field value (RFC 9110 §5.5).
    for char in ("\x00", "\r", "\n", "\x01", "\x1f", "\x7f", "\x08", "\x0b"):
        data = raw(headers=[("X-A", f"a{char}b")])
        cases.append(Case(f"value-ctl-{ord(char):02x}", data, 400, "malformed request"))
    # Host (RFC 9112 §3.2): missing in 1.1, repeated, or invalid: 400.
    cases.append(Case("host-missing", raw(host=None), 400, "host"))
    cases.append(
        Case("host-twice", raw(headers=[("Host", "example.com")]), 400, "duplicate 'host'")
    )
    cases.append(
        Case("host-twice-differ", raw(headers=[("Host", "example.net")]), 400, "duplicate")
    )
    for host in (
        "",
        "exa mple.com",
        "example.com:x",
        "example.com:443:1",
        "ex/ample.com",
        "user@example.com",
        "example.com/",
        "[::1",
        "example.com?",
        'exa"mple.com',
        "example.com#",
        "<example.com>",
    ):
        cases.append(
            Case(f"host-invalid-{host or 'empty'}", raw(host=host), 400, "Host header is not")
        )
    cases.append(Case("host-http10-absent-is-fine", raw(version="HTTP/1.0", host=None), 200, ""))
    # Content-Length (RFC 9112 §6.3): a value that is not 1*DIGIT, or several different
    # values, make the framing unreliable: 400 and close.
    for value in ("-1", "+1", "0x10", "1.0", "1 2", "abc", "", "1,2", "99999999999999999999999"):
        data = raw("GET", headers=[("Content-Length", value)])
        cases.append(Case(f"content-length-{value or 'empty'}", data, 400, "malformed request"))
    cases.append(
        Case(
            "content-length-twice",
            raw(
                headers=[("Content-Length", "1"), ("Content-Length", "1")], body=b"x", length=False
            ),
            400,
            "duplicate content-length",
        )
    )
    cases.append(
        Case(
            "content-length-differ",
            raw(
                headers=[("Content-Length", "1"), ("Content-Length", "2")], body=b"xx", length=False
            ),
            400,
            "content-length",
        )
    )
    # Request smuggling (RFC 9112 §6.1, §6.3, §11.2).
    te_cl = [("Content-Length", "4"), ("Transfer-Encoding", "chunked")]
    cases.append(
        Case(
            "smuggle-cl-te", raw("PUT", headers=te_cl, body=b"0\r\n\r\n"), 400, "transfer-encoding"
        )
    )
    cases.append(
        Case(
            "smuggle-te-cl",
            raw("PUT", headers=te_cl[::-1], body=b"0\r\n\r\n"),
            400,
            "transfer-encoding",
        )
    )
    for value, status, reason in (
        ("chunked, gzip", 400, "transfer-encoding"),  # chunked not last: §6.3 MUST 400
        ("gzip", 400, "transfer-encoding"),
        ("identity", 400, "transfer-encoding"),
        ("xchunked", 400, "transfer-encoding"),
        ("chunkedx", 400, "transfer-encoding"),
        ("chunked;x", 400, "transfer-encoding"),
        ("gzip, chunked", 501, "only transfer coding accepted is chunked"),  # §6.1 SHOULD 501
        ("deflate, chunked", 501, "only transfer coding accepted is chunked"),
        ("compress,chunked", 501, "only transfer coding accepted is chunked"),
    ):
        data = raw("PUT", headers=[("Transfer-Encoding", value)], body=b"0\r\n\r\n", length=False)
        cases.append(Case(f"te-{value}", data, status, reason))
    cases.append(
        Case(
            "te-twice",
            raw(
                "PUT",
                headers=[("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")],
                body=b"0\r\n\r\n",
                length=False,
            ),
            400,
            "transfer-encoding",
        )
    )
    cases.append(
        Case(
            "te-space-before-colon",
            raw("PUT", headers=[("Transfer-Encoding ", "chunked")], body=b"0\r\n\r\n"),
            400,
            "malformed request",
        )
    )
    cases.append(
        Case(
            "te-in-http10",
            raw(
                "GET",
                version="HTTP/1.0",
                headers=[("Transfer-Encoding", "chunked")],
                body=b"0\r\n\r\n",
                length=False,
            ),
            400,
            "Transfer-Encoding in an HTTP/1.0 request",
        )
    )
    for chunks, name in (
        (b"zz\r\n\r\n", "size-not-hex"),
        (b"-1\r\nx\r\n0\r\n\r\n", "size-negative"),
        (b"1\r\nxy\r\n0\r\n\r\n", "data-longer"),
        (b"fffffffffffffffffffff\r\n", "size-overflow"),
        (b"1 ;\x00\r\nx\r\n0\r\n\r\n", "ext-nul"),
        (b"0x1\r\nx\r\n0\r\n\r\n", "size-0x"),
        (b"1\nx\n0\n\n", "bare-lf"),
    ):
        data = raw("PUT", headers=[("Transfer-Encoding", "chunked")], body=chunks, length=False)
        cases.append(Case(f"chunk-{name}", data, 400, "malformed request"))
    # Heads over the limits: 431 (RFC 6585 §5), a whole head or one field.
    cases.append(
        Case(
            "head-over-16k",
            raw(headers=[(f"X-{i}", "v" * 200) for i in range(100)]),
            431,
            "request head over the limit",
        )
    )
    cases.append(
        Case(
            "field-value-over-8k", raw(headers=[("X-A", "v" * 9000)]), 431, "header field too long"
        )
    )
    cases.append(
        Case("field-name-over-8k", raw(headers=[("X" * 9000, "v")]), 431, "header field too long")
    )
    cases.append(
        Case(
            "too-many-fields",
            raw(headers=[(f"X-{i}", "v") for i in range(200)]),
            431,
            "too many headers",
        )
    )
    # Content-Description: display text, checked before authentication (RFC 2045 §8).
    for n, (value, reason) in enumerate(
        (
            ("x" * 600, "longer than 512"),
            ("x" * 80, "longer than 64"),
            ("=?utf-8?b?AAE=?=", "non-printable"),
            ("=?utf-8?q?a=00b?=", "non-printable"),
            ("=?x-unknown?b?YQ==?=", "encoded-word"),
            ("=?utf-a\udcff\udcffce?b?YQ==?=", "encoded-word"),
            ("=?utf-8?b?w6?=", "encoded-word"),
            ("=?utf-8?b?4oCu?=", "non-printable"),
        )
    ):
        data = raw("PUT", headers=[("Content-Description", value)], body=b"", length=True)
        cases.append(Case(f"description-{n}-{value[:20]}", data, 400, reason))
    cases.append(
        Case(
            "description-twice",
            raw(
                "PUT",
                headers=[("Content-Description", "a"), ("Content-Description", "b")],
                length=True,
            ),
            400,
            "one Content-Description",
        )
    )
    return cases


_BAD_AORS: list[tuple[str, str]] = [
    ("alice", "no '@'"),
    ("alice@@example.com", "more than one '@'"),
    ("a@b@example.com", "more than one '@'"),
    ("@example.com", "empty user part"),
    ("alice@", "missing host"),
    ("alice@127.0.0.1", "not allowed"),
    ("alice@[::1]", "not allowed"),
    ("alice@example.com:5060", "a port is not allowed"),
    ("alice@example.com;transport=tls", "URI parameters are not allowed"),
    ("sip:alice@example.com;user=phone", "URI parameters are not allowed"),
    ("sip:alice@example.com?subject=x", "URI headers are not allowed"),
    ("alice:pw@example.com", "password"),
    ("sip:alice:pw@example.com", "password"),
    ("<sip:alice@example.com>", "angle brackets"),
    ('"Alice" <sip:alice@example.com>', "whitespace or control character"),
    ('"Alice"<sip:alice@example.com>', "display names"),
    ("alice@example.com.", "must not end with a dot"),
    ("alice@example..com", "empty label"),
    ("alice@.example.com", "empty label"),
    ("alice@" + "a" * 64 + ".com", "longer than 63"),
    ("alice@-example.com", "hyphen"),
    ("alice@example-.com", "hyphen"),
    ("alice@example.123", "all-numeric"),
    ("alice@exa_mple.com", "invalid character"),
    ("alice@exa!mple.com", "invalid character"),
    ("alice@bücher.example", "A-label"),
    ("alice@例え.jp", "A-label"),
    ("alice@xn--zz.example", "xn--zz"),
    ("alice@xn--.example", "xn--"),
    ("alice@xn--a.example", "xn--a"),
    ("alice@xn--bcher-kva-.example", "hyphen"),
    ("ali ce@example.com", "whitespace or control character"),
    ("ali\tce@example.com", "whitespace or control character"),
    ("ali\x00ce@example.com", "whitespace or control character"),
    ("ali<ce@example.com", "angle brackets"),
    ("tel:+15551234", "unsupported URI scheme"),
    ("http://alice@example.com", "unsupported URI scheme"),
    ("ftp:alice@example.com", "unsupported URI scheme"),
    ("sip:", "missing user@host"),
    (":alice@example.com", "password"),
    ("alice%zz@example.com", "malformed %-escape"),
    ("alice%4@example.com", "malformed %-escape"),
    ("alice@" + "a." * 130 + "com", "longer than 253"),
    ("alice@exa\u200bmple.com", "whitespace or control character"),
]


def query_strings() -> list[Case]:
    """draft §4.1, §4.5, §8 and RFC 4387 §2.1, §3.2: the ``search-cgi`` query string."""
    cases: list[Case] = []
    for query, reason in (
        ("sip", "has no value"),
        ("sip=", "is empty"),
        ("email=", "is empty"),
        ("certHash=", "is empty"),
        ("sip=alice@example.com&", "has no value"),
        ("&sip=alice@example.com", "has no value"),
        ("sip=alice@example.com&&certHash=x", "has no value"),
        ("sip=alice@example.com&sip=alice@example.com", "given twice"),
        ("sip=alice@example.com&sip=bob@example.com", "given twice"),
        ("email=alice@example.com&email=bob@example.com", "given twice"),
        ("sip=alice@example.com&email=alice@example.com", "give one of email, sip or uri"),
        ("uri=sip:alice@example.com&sip=alice@example.com", "give one of"),
        ("email=a@example.com&sip=a@example.com&uri=a@example.com", "give one of"),
        ("SIP=alice@example.com", "unsupported search attribute"),
        ("Email=alice@example.com", "unsupported search attribute"),
        ("certhash=" + "A" * 27, "unsupported search attribute"),
        ("name=alice", "unsupported search attribute"),
        ("iHash=" + "A" * 27, "unsupported search attribute"),
        ("sip%3Dalice@example.com", "has no value"),
        ("=alice@example.com", "unsupported search attribute"),
        ("sip=%", "malformed %-escape"),
        ("sip=%4", "malformed %-escape"),
        ("sip=%zz", "malformed %-escape"),
        ("sip=%G1", "malformed %-escape"),
        ("sip=alice%", "malformed %-escape"),
        ("sip=%%41", "malformed %-escape"),
        ("sip=alice%40example.com%2", "malformed %-escape"),
        ("sip=%ff", "not UTF-8"),
        ("sip=%c3%28", "not UTF-8"),
        ("sip=%ed%a0%80", "not UTF-8"),
        ("sip=%c0%af", "not UTF-8"),
        ("sip=%e2%82", "not UTF-8"),
        ("sip=%f8%88%80%80%80", "not UTF-8"),
        ("sip=alice%40example.com%fe", "not UTF-8"),
    ):
        cases.append(Case(f"query-{query}", raw(target=f"{SEARCH}?{query}"), 400, reason))
    for aor, reason in _BAD_AORS:
        target = f"{SEARCH}?sip={quote(aor, safe='@:')}"
        cases.append(Case(f"aor-{aor[:40]}", raw(target=target), 400, reason))
    # RFC 4387 §2.1: 27 characters of A-Za-z0-9+/, canonical, no padding.
    for value, reason in (
        ("A" * 26, "27 characters"),
        ("A" * 28, "27 characters"),
        ("A" * 26 + "=", "must not end with '='"),
        ("A" * 27 + "=", "must not end with '='"),
        ("A" * 26 + "E=", "must not end with '='"),
        ("A" * 26 + "-", "27 characters"),
        ("A" * 26 + "_", "27 characters"),
        ("A" * 26 + ".", "27 characters"),
        ("A" * 26 + "B", "canonical"),
        ("A" * 26 + "Z", "canonical"),
        ("A" * 26 + "/", "canonical"),
        ("A" * 200, "27 characters"),
        ("2jmj7l5rSw0yVb_vlWAYkK_YBwk", "27 characters"),
        ("2jmj7l5rSw0yVb/vlWAYkK/YBwk%00", "27 characters"),
        ("2jmj7l5rSw0yVb/vlWAYkK/YBw ", "27 characters"),
        ("da39a3ee5e6b4b0d3255bfef95601890afd80709", "27 characters"),
    ):
        target = f"{SEARCH}?certHash={quote(value, safe='/+=')}"
        cases.append(Case(f"certhash-{value[:30]}", raw(target=target), 400, reason))
    # Well-formed but nothing there: 404 (draft §4.3 answers only for its own domain).
    for query, reason in (
        ("certHash=2jmj7l5rSw0yVb/vlWAYkK/YBwk", "no certificates"),
        ("sip=bob@example.com", "no certificates"),
        ("sip=alice@example.net", "not the domain of this connection"),
        ("sip=alice@example.org", "does not serve the domain example.org"),
        ("email=alice@EXAMPLE.ORG", "does not serve the domain example.org"),
        ("uri=sip:alice@example.org", "does not serve"),
    ):
        cases.append(Case(f"nothing-{query}", raw(target=f"{SEARCH}?{query}"), 404, reason))
    # Odd but valid spellings of alice's AOR (RFC 3261 §19.1.4: the host is case-blind; a
    # user part may start with "//"; mailto: and im: name the same AOR, draft §4.5).
    for query, status in (
        ("sip=mailto:alice@example.com", 200),
        ("sip=im:alice@EXAMPLE.com", 200),
        ("uri=sip%3Aalice%40example.com", 200),
        ("email=alice%40example.com", 200),
        ("sip=sip://alice@example.com", 404),
        ("sip=%61lice@example.com", 200),
    ):
        cases.append(Case(f"odd-{query}", raw(target=f"{SEARCH}?{query}"), status, ""))
    # The same rules for DELETE and PUT, before any authentication.
    for method in ("DELETE", "PUT"):
        for query, status, reason in (
            ("certHash=2jmj7l5rSw0yVb/vlWAYkK/YBwk", 400, f"{method} needs the AOR"),
            ("sip=alice@example.org", 404, "does not serve"),
            ("sip=alice@example.net", 404, "not the domain of this connection"),
            ("sip=%zz", 400, "malformed %-escape"),
            ("sip=alice", 400, "no '@'"),
        ):
            data = raw(method, f"{SEARCH}?{query}", length=method == "PUT")
            cases.append(Case(f"{method.lower()}-{query}", data, status, reason))
    cases.append(
        Case(
            "put-with-certhash",
            raw("PUT", ALICE_Q + "&certHash=2jmj7l5rSw0yVb/vlWAYkK/YBwk", length=True),
            400,
            "PUT takes no certHash",
        )
    )
    cases.append(
        Case(
            "sni-other-domain",
            raw(target=ALICE_Q, host="example.net"),
            404,
            "not the domain of this connection",
            sni="example.net",
        )
    )
    return cases


def _trunc(n: int) -> Callable[[], bytes]:
    return lambda: der(good_cert(slot=3))[:n]


FLIPS = (
    (4, 400, "malformed certificate"),
    (8, 400, "malformed certificate"),
    (15, 400, "malformed certificate"),
    (30, 403, "bad-self-signature"),
    (60, 400, "malformed certificate"),
    (90, 400, "malformed certificate"),
)


def bodies() -> list[Case]:
    """draft §5, §5.1 and RFC 2585 §3: what a PUT's body may be."""
    cases: list[Case] = []
    cert_der = lambda: der(good_cert(slot=3))  # noqa: E731
    cert_pem = lambda: pem(good_cert(slot=3))  # noqa: E731
    # Content-Type: a certificate type or nothing; anything else is 415 (RFC 9110 §15.5.16).
    for media_type in (
        "text/plain",
        "application/json",
        "multipart/form-data; boundary=x",
        "application/pkcs7-mime",
        "application/pkcs10",
        "application/pkix-cert-x",
        "application/x-www-form-urlencoded",
        "image/png",
        "application",
        "pkix-cert",
        ";;;",
        "text/html; charset=utf-8",
    ):
        cases.append(
            Case(
                f"content-type-{media_type}",
                put(cert_der, [("Content-Type", media_type)]),
                415,
                "is not a certificate",
            )
        )
    # Over the limit: declared (413 before reading, before authentication) or read.
    cases.append(
        Case(
            "body-declared-over-limit",
            raw("PUT", headers=[("Content-Length", "16385")]),
            413,
            "larger than 16384",
        )
    )
    cases.append(
        Case(
            "body-declared-huge",
            raw("PUT", headers=[("Content-Length", "999999999999")]),
            413,
            "larger than 16384",
        )
    )
    cases.append(
        Case(
            "body-chunked-over-limit",
            put_chunked(b"4001\r\n" + b"\x30" * 0x4001 + b"\r\n0\r\n\r\n"),
            413,
            "larger than 16384",
        )
    )
    cases.append(Case("body-empty", put(b""), 400, "empty certificate"))
    cases.append(Case("body-spaces", put(b"   \r\n "), 400, "empty certificate"))
    cases.append(Case("body-empty-chunked", put_chunked(b"0\r\n\r\n"), 400, "empty certificate"))
    # Truncated DER: every cut names the truncation or the broken inner encoding.
    for n in (1, 2, 3, 4, 5, 10, 50, 100, 200, 300):
        reason = "not a DER certificate" if n < 2 else "truncated"
        cases.append(Case(f"der-truncated-{n}", put(_trunc(n)), 400, reason))
    cases.append(Case("der-trailing-byte", put(lambda: cert_der() + b"\x00"), 400, "trailing data"))
    cases.append(Case("der-trailing-cert", put(lambda: cert_der() * 2), 400, "trailing data"))
    for name, data, reason in (
        ("not-sequence", b"\x31\x03\x02\x01\x01", "no outer SEQUENCE"),
        ("indefinite", b"\x30\x80\x02\x01\x01\x00\x00", "bad outer length"),
        ("length-5-octets", b"\x30\x85\x00\x00\x00\x00\x01\x00", "bad outer length"),
        ("length-cut", b"\x30\x82\x01", "outer length cut short"),
        ("empty-sequence", b"\x30\x00", "malformed certificate"),
        ("int-inside", b"\x30\x03\x02\x01\x01", "malformed certificate"),
        ("nested-empty", b"\x30\x02\x30\x00", "malformed certificate"),
        ("zeros", b"\x30\x10" + b"\x00" * 16, "malformed certificate"),
        ("ones", b"\x30\x10" + b"\xff" * 16, "malformed certificate"),
        (
            "deep",
            b"\x30\x0c"
            + b"\x30\x0a"
            + b"\x30\x08"
            + b"\x30\x06"
            + b"\x30\x04"
            + b"\x30\x02"
            + b"\x30\x00",
            "malformed certificate",
        ),
        ("random", bytes(range(256)), "not a DER certificate"),
        ("text", b"hello, this is not a certificate", "no outer SEQUENCE"),
        ("text-with-pem-word", b"hello -----BEGIN", "text before the PEM block"),
        ("gzip", b"\x1f\x8b\x08\x00\x00\x00\x00\x00", "not a DER certificate"),
    ):
        cases.append(Case(f"der-{name}", put(data), 400, reason))
    # DER whose inner fields are damaged: flip a byte at several places of a real one, all
    # inside version, serial, signature algorithm and issuer (the part of the DER that is
    # the same every run). A field that no longer decodes is 400; a decodable change breaks
    # the self-signature, 403 (draft §5.1: the proof of possession).
    for at, status, reason in FLIPS:

        def flipped(at: int = at) -> bytes:
            data = bytearray(cert_der())
            data[at] ^= 0xFF
            return bytes(data)

        cases.append(Case(f"der-flip-{at}", put(flipped), status, reason))
    # PEM.
    for name, data, reason in (
        ("two-blocks", lambda: cert_pem() * 2, "2 PEM blocks"),
        (
            "private-key",
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "not a CERTIFICATE",
        ),
        (
            "csr",
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            "not a CERTIFICATE",
        ),
        ("text-before", lambda: b"hello\n" + cert_pem(), "text before the PEM block"),
        ("trailing", lambda: cert_pem() + b"junk", "trailing data"),
        ("no-end", lambda: cert_pem().split(b"-----END")[0], "malformed PEM block"),
        (
            "bad-base64",
            b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
            "malformed PEM block",
        ),
        ("empty", b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n", "not a DER"),
        (
            "garbage-der",
            b"-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n",
            "malformed certificate",
        ),
        (
            "truncated-der",
            lambda: (
                b"-----BEGIN CERTIFICATE-----\n"
                + base64.encodebytes(cert_der()[:300])
                + b"-----END CERTIFICATE-----\n"
            ),
            "truncated",
        ),
        (
            "lowercase-label",
            lambda: cert_pem().replace(b"CERTIFICATE", b"certificate"),
            "not a CERTIFICATE",
        ),
    ):
        cases.append(Case(f"pem-{name}", put(data, PKIX), 400, reason))
    # Certificates the Store must refuse (draft §5.1): 403 with the machine-readable reason.
    now = _now()
    for name, make, reason in (
        ("san-other-user", lambda: der(good_cert("bob@example.com")), "san-user-mismatch"),
        ("san-other-domain", lambda: der(good_cert("alice@example.net")), "san-domain-mismatch"),
        (
            "san-two-one-wrong",
            lambda: der(
                good_cert(uris=["sip:alice@example.com", "sip:alice@evil.example"], slot=4)
            ),
            "san-domain-mismatch",
        ),
        ("san-tel", lambda: der(good_cert(uris=["tel:+15551234"], slot=5)), "san-malformed"),
        (
            "san-with-port",
            lambda: der(good_cert(uris=["sip:alice@example.com:5060"], slot=6)),
            "san-malformed",
        ),
        (
            "expired",
            lambda: der(
                good_cert(not_before=now - timedelta(days=10), not_after=now - timedelta(days=1))
            ),
            "expired",
        ),
        (
            "not-yet-valid",
            lambda: der(
                good_cert(not_before=now + timedelta(days=1), not_after=now + timedelta(days=5))
            ),
            "not-yet-valid",
        ),
        (
            "lifetime-too-long",
            lambda: der(good_cert(not_after=now + timedelta(days=400))),
            "lifetime-too-long",
        ),
        ("weak-rsa-1024", lambda: der(_weak_rsa()), "weak-key"),
        ("sha1-signature", lambda: der(_sha1_signed()), "weak-signature-algorithm"),
        ("ca-issued", lambda: der(_ca_issued()), "bad-self-signature"),
    ):
        cases.append(Case(f"cert-{name}", put(make), 403, reason))
    return cases


def _bad(env: Env, **kw: object) -> str:
    return env.authorization("PUT", ALICE_Q, **kw)  # type: ignore[arg-type]


def digest_headers() -> list[Case]:
    """RFC 7616 §3.4 (credentials), §3.3 (challenges in every 401), §3.4.6 (uri)."""
    cases: list[Case] = []
    challenge = ("www-authenticate", 'Digest realm="example.com"')
    # Not Digest at all: a 401 with challenges (RFC 9110 §11.6.1).
    for value in ("", "Basic YWxpY2U6eA==", "Bearer", "Negotiate x", "digestx a=b", "Digest, x"):
        cases.append(
            Case(
                f"auth-scheme-{value[:10] or 'empty'}",
                authorization(value),
                401,
                UNAUTHORIZED,
                header=challenge,
            )
        )
    # Malformed Digest: 400 with what is wrong (RFC 7616 §3.4, RFC 9110 §11.4 grammar).
    base = 'Digest username="alice", realm="example.com", nonce="n", uri="/x", response="r"'
    for n, (value, reason) in enumerate(
        (
            ("Digest", "carry no directives"),
            ("Digest abc==", "not a token68"),
            ('Digest username="alice', "unterminated quoted-string"),
            ('Digest username="al\\', "backslash at end"),
            ("Digest username", "token68"),
            ("Digest username=", "token68"),
            ('Digest a="b", username=', "expected a token or quoted-string"),
            ("Digest username x", "expected '='"),
            ('Digest username="a" realm="b"', "expected ','"),
            ('Digest username="a", username="b"', "duplicate directive"),
            ('Digest username="a", USERNAME="b"', "duplicate directive"),
            ("Digest =x", "expected a directive name"),
            ('Digest username="a\x01"', "malformed request"),  # llhttp: a CTL in a value
            ('Digest username="a\x7f"', "malformed request"),
            ("Digest a=b, Basic x", "carries 2 credentials"),
            ('Digest realm="example.com"', "lacks the 'username'"),
            (base.replace('username="alice", ', ""), "lacks the 'username'"),
            (base.replace('realm="example.com", ', ""), "lacks the 'realm'"),
            (base.replace('nonce="n", ', ""), "lacks the 'nonce'"),
            (base.replace('uri="/x", ', ""), "lacks the 'uri'"),
            (base.replace(', response="r"', ""), "lacks the 'response'"),
            (base + ", username*=UTF-8''alice", "both username and username*"),
            (base.replace('username="alice"', "username*=ISO-8859-1''al%E9"), "requires UTF-8"),
            (base.replace('username="alice"', "username*=alice"), "not an RFC 8187 ext-value"),
            (base.replace('username="alice"', "username*=UTF-8''al%ff"), "valid UTF-8"),
            (base.replace('username="alice"', "username*=UTF-8''al%zz"), "ext-value"),
            (base + ", userhash=true", "userhash=true is not supported"),
            (base + ", userhash=maybe", "userhash must be true or false"),
            (base + ', qop=auth, nc=1, cnonce="c"', "8 lowercase hex digits"),
            (base + ', qop=auth, nc=0000000G, cnonce="c"', "8 lowercase hex digits"),
            (base + ', qop=auth, nc=0000000A, cnonce="c"', "8 lowercase hex digits"),
            (base + ', qop=auth, nc=000000001, cnonce="c"', "8 lowercase hex digits"),
            (base + ', qop=auth, cnonce="c"', "lacks the 'nc'"),
            (base + ", qop=auth, nc=00000001", "lacks the 'cnonce'"),
            (base + ', nc=00000001, cnonce="c"', "no qop directive"),
            (base + ', cnonce="c"', "no qop directive"),
            ("Digest " + "a" * 5000, "over the 4096 limit"),
        )
    ):
        status = 431 if "limit" in reason else 400
        cases.append(Case(f"digest-malformed-{n}-{reason}", authorization(value), status, reason))
    # Well-formed answers that are wrong: 401 with fresh challenges, never which part was
    # wrong in the body (unknown user and wrong password look the same, RFC 7616 §5.7).
    for name, build in (
        ("wrong-password", lambda env: _bad(env, password="nope")),
        ("unknown-user", lambda env: _bad(env, user="mallory", password="x")),
        ("other-realm", lambda env: _bad(env, realm="example.net")),
        ("forged-nonce", lambda env: _bad(env, nonce="A" * 43)),
        ("short-nonce", lambda env: _bad(env, nonce="abc")),
        (
            "nonce-other-secret",
            lambda env: _bad(
                env, nonce=DigestServer(b"x" * 32, "example.com").new_nonce(env.now.timestamp())
            ),
        ),
        ("nonce-altered", lambda env: _bad(env, nonce=_altered(env.nonce()))),
        ("nonce-from-future", lambda env: _bad(env, nonce=env.nonce(age=-3600))),
        ("opaque-changed", lambda env: _bad(env, opaque="bad")),
        (
            "algorithm-sha512",
            lambda env: _bad(env).replace("algorithm=SHA-256", "algorithm=SHA-512"),
        ),
        (
            "algorithm-md5-sess",
            lambda env: _bad(env).replace("algorithm=SHA-256", "algorithm=MD5-sess"),
        ),
        (
            "algorithm-unknown",
            lambda env: _bad(env).replace("algorithm=SHA-256", "algorithm=ROT13"),
        ),
        ("qop-auth-int", lambda env: _bad(env).replace("qop=auth", "qop=auth-int")),
        ("qop-token-list", lambda env: _bad(env).replace("qop=auth", 'qop="auth,auth-int"')),
        ("response-wrong", lambda env: _re_response(_bad(env), "0" * 64)),
        ("response-short", lambda env: _re_response(_bad(env), "abc")),
        ("response-md5-length", lambda env: _re_response(_bad(env), "0" * 32)),
        ("method-mixed", lambda env: env.authorization("GET", ALICE_Q)),
        ("nc-zero", lambda env: _bad(env, nc=0)),
    ):
        cases.append(
            Case(f"digest-wrong-{name}", authorization(build), 401, UNAUTHORIZED, header=challenge)
        )
    # No qop: RFC 2069 compatibility is not offered (RFC 7616 §3.4: qop is required).
    cases.append(
        Case(
            "digest-no-qop",
            authorization(
                lambda env: (
                    f'Digest username="alice", realm="example.com", nonce="{env.nonce()}", '
                    f'uri="{ALICE_Q}", response="{"0" * 64}", algorithm=SHA-256'
                )
            ),
            401,
            UNAUTHORIZED,
        )
    )
    # The uri directive must be the request target (RFC 7616 §3.4.6: 400).
    for uri in ("/search-cgi?sip=bob@example.com", "/search-cgi", "*", ALICE_Q + "&x"):
        cases.append(
            Case(
                f"digest-uri-{uri}",
                authorization(lambda env, uri=uri: _bad(env, uri=uri)),
                400,
                "does not match the request target",
            )
        )
    # A correct answer whose nonce is past its lifetime: 401 stale=true (RFC 7616 §3.3).
    cases.append(
        Case(
            "digest-stale",
            authorization(lambda env: _bad(env, nonce=env.nonce(age=3600))),
            401,
            STALE,
            header=("www-authenticate", "stale=true"),
        )
    )
    # A replayed nonce count (RFC 7616 §3.4: the server may check nc): the first use is
    # consumed by an ordinary DELETE of bob (404, nothing there), the same nc again is 401.
    cases.append(Case("digest-nc-replay", _replay, 401, UNAUTHORIZED, header=challenge))
    # Authenticated, but not as the AOR's user: 403 (draft §5).
    cases.append(
        Case(
            "digest-delete-as-bob",
            with_auth("DELETE", ALICE_Q, user="bob"),
            403,
            "aor-user-mismatch",
        )
    )
    cases.append(
        Case(
            "digest-put-as-bob",
            put(lambda: der(good_cert(slot=3)), user="bob"),
            403,
            "aor-user-mismatch",
        )
    )
    # Authenticated DELETEs that find nothing: 404 and nothing removed.
    cases.append(
        Case(
            "delete-other-certhash",
            with_auth("DELETE", ALICE_Q + "&certHash=2jmj7l5rSw0yVb/vlWAYkK/YBwk"),
            404,
            "has not that certificate",
        )
    )
    cases.append(
        Case(
            "delete-bob-nothing",
            with_auth("DELETE", "/search-cgi?sip=bob@example.com", user="bob"),
            404,
            "has not any certificate",
        )
    )
    return cases


def _altered(nonce: str) -> str:
    return ("B" if nonce[5] != "B" else "C").join((nonce[:5], nonce[6:]))


def _re_response(value: str, response: str) -> str:
    head, _, rest = value.partition('response="')
    return head + f'response="{response}"' + rest.partition('"')[2]


def _replay(env: Env) -> bytes:
    """Two pipelined DELETEs of bob with the same nonce and nc: the runner reads both
    answers and checks the last (the first is 404: bob has nothing)."""
    target = "/search-cgi?sip=bob@example.com"
    nonce = env.nonce()
    first = env.authorization("DELETE", target, user="bob", nonce=nonce, nc=1)
    again = env.authorization("DELETE", target, user="bob", nonce=nonce, nc=1)
    return raw("DELETE", target, [("Authorization", first)]) + raw(
        "DELETE", target, [("Authorization", again)]
    )


#: Cases whose request holds several pipelined requests: answers to read before the last.
PIPELINED = {"digest-nc-replay": 2}


def all_cases() -> list[Case]:
    return [*request_lines(), *headers(), *query_strings(), *bodies(), *digest_headers()]
