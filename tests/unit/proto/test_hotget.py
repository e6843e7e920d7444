"""The simple-head parser of the hot GET against aiohttp's own parser (issue 13).

Whatever :func:`parse_simple_get` accepts, aiohttp's C parser must read the same way (the
same method, target, HTTP/1.1, no body, no upgrade, the same ``If-None-Match`` and the same
keep-alive decision), and :func:`parse_query` must give the AOR the hot path uses. Anything
it refuses is left to aiohttp, which answers as it always did: tests/integration/store/
test_hot_get.py sends such heads to both paths over TLS.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from unittest import mock

import pytest
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import HttpRequestParser
from hypothesis import given, settings
from hypothesis import strategies as st

from sipcert.errors import SipCertError
from sipcert.proto import hotget
from sipcert.proto.aor import plain_aor
from sipcert.proto.hotget import (
    MAX_SIMPLE_HEAD,
    SimpleGet,
    caching_lines,
    date_tails,
    http_date,
    parse_simple_get,
    render,
    render_one_prefix,
    render_prefix,
)
from sipcert.proto.store import (
    Response,
    certificates_response,
    enrolled_on_header,
    enrolled_on_header_us,
    parse_query,
)
from sipcert.server.http import MAX_FIELD_SIZE, MAX_TARGET_SIZE

HEAD = b"GET /search-cgi?email=alice%40example.com HTTP/1.1\r\nHost: example.com\r\n\r\n"


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def aiohttp_reads(loop: asyncio.AbstractEventLoop, data: bytes) -> list[object] | None:
    """The messages aiohttp's parser (as the Store sets it up) makes of ``data``."""
    parser = HttpRequestParser(
        mock.Mock(), loop, 2**16, max_line_size=MAX_TARGET_SIZE, max_field_size=MAX_FIELD_SIZE
    )
    try:
        messages, upgraded, _ = parser.feed_data(data)
    except HttpProcessingError:
        return None
    return None if upgraded else [message for message, _ in messages]


def test_the_everyday_head() -> None:
    assert parse_simple_get(HEAD) == SimpleGet(
        "GET", "email=alice%40example.com", "alice", "example.com", None, False, len(HEAD)
    )
    closing = HEAD[:-2] + b'Connection: Close\r\nIf-None-Match: W/"x", "y"\r\n\r\n'
    parsed = parse_simple_get(closing + b"GET /next")
    assert parsed is not None and parsed.close and parsed.length == len(closing)
    assert parsed.if_none_match == 'W/"x", "y"'


@pytest.mark.parametrize(
    "data",
    [
        HEAD[:-1],  # not complete yet
        HEAD.replace(b"GET", b"PUT"),
        HEAD.replace(b"GET", b"get"),
        HEAD.replace(b"HTTP/1.1", b"HTTP/1.0"),
        HEAD.replace(b"\r\n", b"\n"),
        HEAD.replace(b"%40", b"@"),
        HEAD.replace(b"email=", b"certHash=x&email="),
        HEAD.replace(b"Host: example.com\r\n", b""),
        HEAD.replace(b"Host: example.com", b"Host: example.com\r\nHost: example.com"),
        HEAD.replace(b"Host: example.com", b"Host: exa mple.com"),
        HEAD.replace(b"Host: example.com", b"Host:"),
        HEAD.replace(b"Host: ", b"Host : "),
        HEAD[:-2] + b"Content-Length: 0\r\n\r\n",
        HEAD[:-2] + b"Transfer-Encoding: chunked\r\n\r\n",
        HEAD[:-2] + b"Expect: 100-continue\r\n\r\n",
        HEAD[:-2] + b"Connection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
        HEAD[:-2] + b"Connection: close, TE\r\n\r\n",
        HEAD[:-2] + b"Connection: close\r\nConnection: close\r\n\r\n",
        HEAD[:-2] + b"If-None-Match: *\r\nIf-None-Match: *\r\n\r\n",
        HEAD[:-2] + b"User-Agent: a\r\nUser-Agent: a\r\n\r\n",  # aiohttp: 400
        HEAD[:-2] + b"Accept: a\r\n b\r\n\r\n",  # obs-fold
        HEAD[:-2] + b"Accept: caf\xc3\xa9\r\n\r\n",
        HEAD[:-2] + b"Accept: a\x00b\r\n\r\n",
        HEAD[:-2] + b"Authorization: Digest x\r\n\r\n",
        HEAD[:-2] + b"Accept: " + b"a" * MAX_SIMPLE_HEAD + b"\r\n\r\n",
    ],
)
def test_anything_unusual_is_left_to_aiohttp(data: bytes) -> None:
    assert parse_simple_get(data) is None


_NAMES = st.sampled_from(
    [
        "Host",
        "host",
        "HOST",
        "User-Agent",
        "Accept",
        "Accept-Encoding",
        "Connection",
        "If-None-Match",
        "Cache-Control",
        "Content-Length",
        "Transfer-Encoding",
        "Upgrade",
        "Expect",
        "X-Other",
        "Bad Name",
        "",
    ]
)
_VALUES = st.one_of(
    st.sampled_from(
        ["example.com", "example.com:443", "close", "keep-alive", "Close", "*", '"a", W/"b"']
    ),
    st.text(st.characters(min_codepoint=0, max_codepoint=0x7F), max_size=12),
    st.text(max_size=6),
)
_SEPARATORS = st.sampled_from([": ", ": ", ":", " : ", ":\t"])
_PRINTABLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=12)
#: A field the hot path may accept: a known name with a value of its kind.
_LIKELY = st.one_of(
    st.tuples(st.sampled_from(["User-Agent", "accept", "Pragma"]), _SEPARATORS, _PRINTABLE),
    st.tuples(st.just("Connection"), _SEPARATORS, st.sampled_from(["close", "Keep-Alive", "TE"])),
    st.tuples(
        st.just("If-None-Match"),
        _SEPARATORS,
        st.sampled_from(["*", '"a"', 'W/"a", "b"', ' "a"\t', ""]),
    ),
)
_FIELDS = st.lists(
    st.one_of(_LIKELY, _LIKELY, _LIKELY, st.tuples(_NAMES, _SEPARATORS, _VALUES)), max_size=4
)
_TARGETS = st.one_of(
    *[
        st.builds(
            "/search-cgi?{}={}%40{}".format,
            st.sampled_from(["email", "sip", "uri", "Email", "certHash"]),
            st.from_regex(r"[A-Za-z0-9._-]{1,12}", fullmatch=True),
            st.from_regex(r"[A-Za-z0-9.-]{1,16}", fullmatch=True),
        )
    ]
    * 4,
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30).map("/".__add__),
)


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    """Request heads, most of them simple or one detail away from it."""
    odd = draw(st.integers(0, 5)) == 0  # one in six: any method, version and line end
    method = draw(st.sampled_from(["GET", "HEAD", "PUT", "GET "] if odd else ["GET", "HEAD"]))
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0"] if odd else ["HTTP/1.1"]))
    eol = draw(st.sampled_from(["\r\n", "\n"])) if odd else "\r\n"
    fields = draw(_FIELDS)
    if draw(st.integers(0, 7)):
        fields.insert(draw(st.integers(0, len(fields))), ("Host", ": ", "example.com"))
    lines = [f"{method} {draw(_TARGETS)} {version}"]
    lines += [f"{name}{sep}{value}" for name, sep, value in fields]
    return (eol.join(lines) + eol + eol).encode("utf-8", "surrogateescape")


@settings(max_examples=1000)
@given(heads())
def test_what_it_accepts_aiohttp_reads_alike(data: bytes) -> None:
    loop = asyncio.new_event_loop()
    try:
        parsed = parse_simple_get(data)
        if parsed is None:
            return
        messages = aiohttp_reads(loop, data)
    finally:
        loop.close()
    assert messages is not None and len(messages) == 1, data
    message = messages[0]
    assert message.method == parsed.method  # type: ignore[attr-defined]
    assert message.path == f"/search-cgi?{parsed.query}"  # type: ignore[attr-defined]
    assert message.version == (1, 1)  # type: ignore[attr-defined]
    assert not message.chunked and not message.upgrade  # type: ignore[attr-defined]
    headers = message.headers  # type: ignore[attr-defined]
    assert "Content-Length" not in headers and "Transfer-Encoding" not in headers
    assert headers.get("If-None-Match") == parsed.if_none_match
    assert message.should_close == parsed.close  # type: ignore[attr-defined]
    assert parsed.length == len(data)
    # The AOR the hot path looks up is the one the Store's query parser finds.
    aor = plain_aor(parsed.user, parsed.host)
    try:
        query = parse_query(parsed.query)
    except SipCertError:
        assert aor is None
        return
    if aor is not None:
        assert query.aor == aor and query.cert_hash is None


_BYTES_LINE = re.compile(
    rb"(GET|HEAD) /search-cgi\?((?:email|sip|uri)=([A-Za-z0-9._-]+)%40([A-Za-z0-9.-]+))"
    rb" HTTP/1\.1\r\n"
)


def _parse_bytes(data: bytes) -> SimpleGet | None:
    """The parse as it was on bytes, without the memo: what the Latin-1 one must equal."""
    line = _BYTES_LINE.match(data)
    if line is None:
        return None
    start = line.end()
    end = data.find(b"\r\n\r\n", start - 2, MAX_SIMPLE_HEAD)
    if end < 0:
        return None
    fields = hotget._read_fields(data[start:end] if end >= start else b"")
    if fields is False:
        return None
    method, query, user, host = (part.decode("ascii") for part in line.groups())
    return SimpleGet(method, query, user, host, fields[0], fields[1], end + 4)


@settings(max_examples=1000)
@given(heads(), st.binary(max_size=8), st.sampled_from([0, 1, MAX_SIMPLE_HEAD]))
def test_the_latin_1_parse_is_the_bytes_parse(data: bytes, tail: bytes, pad: int) -> None:
    """Matching the head as Latin-1 text (issue 13) reads every head as the bytes did,
    with what follows it and around the MAX_SIMPLE_HEAD bound."""
    padded = data[:-2] + b"Accept: " + b"a" * pad + b"\r\n\r\n" if pad else data
    for sample in (data, data + tail, padded):
        assert parse_simple_get(sample) == _parse_bytes(sample)
        assert parse_simple_get(sample) == _parse_bytes(sample)  # the memo's answer too


@given(
    st.binary(max_size=40),
    st.binary(max_size=40),
    st.booleans(),
    st.booleans(),
)
def test_the_date_tails_are_renders(prefix: bytes, body: bytes, close: bool, head: bool) -> None:
    """``render`` puts a ``date_tails`` tail between the prefix and the body."""
    date = http_date(1_764_633_600)
    keep, closing = date_tails(date)
    wire = render(prefix, body, closing if close else keep, head=head)
    assert wire == prefix + (closing if close else keep) + (b"" if head else body)
    assert wire.startswith(prefix + b"Date: " + date + b"\r\n")


def test_the_layout_of_an_answer() -> None:
    answer = Response(200, (("Content-Type", "application/pkix-cert"), ("ETag", '"e"')), b"DER")
    prefix = render_prefix(answer, "sipcert")
    assert prefix == (
        b'HTTP/1.1 200 OK\r\nContent-Type: application/pkix-cert\r\nETag: "e"\r\n'
        b"Server: sipcert\r\nContent-Length: 3\r\n"
    )
    date = http_date(0)
    assert date == b"Thu, 01 Jan 1970 00:00:00 GMT"
    keep, closing = date_tails(date)
    assert render(prefix, b"DER", keep, head=False).endswith(b"GMT\r\n\r\nDER")
    assert render(prefix, b"DER", closing, head=True).endswith(b"GMT\r\nConnection: close\r\n\r\n")
    not_modified = render_prefix(Response(304, (("ETag", '"e"'),), b""), "sipcert")
    assert b"Content-Length" not in not_modified and not_modified.startswith(b"HTTP/1.1 304 ")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LABELS = st.one_of(
    st.none(),
    st.just(""),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=64),
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20),
)


@settings(max_examples=500)
@given(
    st.binary(min_size=32, max_size=32).map(bytes.hex),
    st.binary(max_size=2000),
    st.integers(min_value=0, max_value=253_402_300_799_999_999),  # up to 9999-12-31
    _LABELS,
    st.integers(min_value=0, max_value=86_400 * 365),
)
def test_one_certificate_is_laid_out_as_certificates_response_would(
    sha256: str, der: bytes, created_us: int, label: str | None, max_age: int
) -> None:
    """The hot GET's row renderer gives the bytes of the shared renderer (issue 13)."""
    created = _EPOCH + timedelta(microseconds=created_us)
    assert enrolled_on_header_us(created_us) == enrolled_on_header(created)
    shared = certificates_response(
        [der], [sha256], max_age=max_age, labels=[label], enrolled=[created]
    )
    caching = caching_lines(max_age, "sipcert")
    assert render_one_prefix(sha256, len(der), created_us, label, caching) == render_prefix(
        shared, "sipcert"
    )


def test_the_field_verdicts_are_kept_bounded_and_agree_with_a_fresh_read() -> None:
    """The memo of header blocks (issue 13) answers as the parse does, and stays small."""
    good = b"GET /search-cgi?email=a%40example.com HTTP/1.1\r\nHost: example.com\r\n"
    for i in range(hotget._FIELDS_KEPT * 2 + 3):
        etag = f'If-None-Match: "{i}"\r\n'.encode()
        head = parse_simple_get(good + etag + b"\r\n")
        assert head is not None and head.if_none_match == f'"{i}"'
        assert len(hotget._FIELDS_SEEN) <= hotget._FIELDS_KEPT
    refused = good + b"Content-Length: 0\r\n\r\n"
    assert parse_simple_get(refused) is None and parse_simple_get(refused) is None
    block = b"Host: example.com\r\nConnection: close"
    assert hotget._read_fields(block) == (None, True)
    closing = parse_simple_get(good.replace(b"Host: example.com\r\n", block + b"\r\n") + b"\r\n")
    assert closing is not None and closing.close
    assert hotget._FIELDS_SEEN[block.decode("latin-1")] == (None, True)
