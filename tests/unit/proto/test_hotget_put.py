"""The simple enrollment PUT the hot path answers without aiohttp (issue 13): the 401 of
the first, and the answer to the second's Digest credentials.

Anything it does not accept goes to aiohttp, which answers as before; what it accepts, aiohttp's
parser reads as the same request with the same body.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from unittest import mock

import pytest
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import HttpRequestParser
from hypothesis import given
from hypothesis import strategies as st

from sipcert.proto.hotget import parse_simple_put
from sipcert.server.http import MAX_FIELD_SIZE, MAX_TARGET_SIZE

BODY = b"0\x82\x01\x00" + bytes(range(256))
TARGET = b"PUT /search-cgi?sip=alice%40example.com HTTP/1.1\r\n"


def put(extra: bytes = b"", *, body: bytes = BODY, length: bytes | None = None) -> bytes:
    size = str(len(body)).encode() if length is None else length
    return (
        TARGET
        + b"Host: example.com\r\nContent-Type: application/pkix-cert\r\n"
        + b"Content-Length: "
        + size
        + b"\r\n"
        + extra
        + b"\r\n"
        + body
    )


def test_the_first_put_of_an_enrollment() -> None:
    data = put()
    found = parse_simple_put(data)
    assert found is not None
    assert (found.query, found.user, found.host) == (
        "sip=alice%40example.com",
        "alice",
        "example.com",
    )
    assert found.content_length == len(BODY) and found.length == len(data)
    assert found.head_length == len(data) - len(BODY)
    assert found.description is None and not found.close
    labelled = parse_simple_put(put(b"Content-Description: phone\r\nConnection: close\r\n"))
    assert labelled is not None and labelled.description == "phone" and labelled.close
    # A pipelined request after the body is the caller's.
    assert parse_simple_put(data + b"GET / HTTP/1.1\r\n\r\n") == found
    empty = parse_simple_put(put(body=b""))
    assert empty is not None and empty.content_length == 0
    assert found.authorization is None and found.content_type == "application/pkix-cert"


def test_the_second_put_carries_its_digest_answer() -> None:
    value = (
        'Digest username="alice", realm="example.com", nonce="n-1", '
        'uri="/search-cgi?sip=alice%40example.com", response="ab12", qop=auth, nc=00000001, '
        'cnonce="c0", algorithm=SHA-256'
    )
    found = parse_simple_put(put(f"Authorization:  {value} \r\n".encode()))
    assert found is not None and found.authorization == value
    # Each field once: two answers are aiohttp's to refuse or read.
    assert (
        parse_simple_put(put(b"Authorization: Digest a=b\r\nAuthorization: Digest c=d\r\n")) is None
    )


@pytest.mark.parametrize(
    "data",
    [
        put(b"Authorization: Digest caf\xc3\xa9\r\n"),  # not visible ASCII
        put(b"Expect: 100-continue\r\n"),
        put(b"Transfer-Encoding: chunked\r\n"),
        put(b"Content-Length: 3\r\n"),  # twice
        put(b"Content-Description: a\r\nContent-Description: b\r\n"),
        put(b"Connection: upgrade\r\n"),
        put(b"X-Other: 1\r\n"),
        put(length=b"+3"),
        put(length=b"12345678"),
        put(length=b""),
        put()[:-1],  # the body is not all here yet
        put(body=b"", length=b"1"),
        put().replace(b"Host: example.com\r\n", b""),
        put().replace(b"Host: example.com", b"Host: exa mple.com"),
        put().replace(b"Content-Length: ", b"Content-Length : "),
        put().replace(b"HTTP/1.1", b"HTTP/1.0", 1),
        put().replace(b"PUT ", b"POST ", 1),
        put().replace(b"%40", b"@", 1),
        put().replace(b"sip=", b"certHash=", 1),
        put().replace(b"\r\n", b"\n"),
        put(b"X-Folded: a\r\n b\r\n"),
        b"PUT /search-cgi?sip=alice%40example.com HTTP/1.1\r\nHost: example.com\r\n",
    ],
)
def test_anything_else_is_left_to_aiohttp(data: bytes) -> None:
    assert parse_simple_put(data) is None


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


_FIELDS = st.lists(
    st.sampled_from(
        [
            b"User-Agent: sipcert/0.2\r\n",
            b"Accept: */*\r\n",
            b"Content-Description: desk =?utf-8?q?caf=C3=A9?=\r\n",
            b"connection: Keep-Alive\r\n",
            b"Connection: close\r\n",
            b"Authorization: Digest a=b\r\n",
            b"Content-Length: 7\r\n",
            b"Expect: 100-continue\r\n",
            b"Cache-Control:  no-cache \r\n",
        ]
    ),
    max_size=4,
)


@given(extra=_FIELDS, body=st.binary(max_size=64), cut=st.integers(0, 8))
def test_what_it_accepts_aiohttp_reads_alike(
    loop: asyncio.AbstractEventLoop, extra: list[bytes], body: bytes, cut: int
) -> None:
    data = put(b"".join(extra), body=body)
    data = data[: len(data) - cut] if cut else data
    found = parse_simple_put(data)
    if found is None:
        return
    parser = HttpRequestParser(
        mock.Mock(), loop, 2**16, max_line_size=MAX_TARGET_SIZE, max_field_size=MAX_FIELD_SIZE
    )
    try:
        messages, upgraded, tail = parser.feed_data(data)
    except HttpProcessingError as exc:
        raise AssertionError(f"aiohttp refuses what the hot path accepts: {data!r}") from exc
    assert not upgraded and len(messages) == 1 and not tail
    message, payload = messages[0]
    assert message.method == "PUT" and message.path == "/search-cgi?" + found.query
    assert message.headers.get("Content-Description") == found.description
    assert message.headers.get("Authorization") == found.authorization
    assert message.headers.get("Content-Type") == found.content_type
    assert message.should_close == found.close
    assert payload.is_eof() and b"".join(getattr(payload, "_buffer", ())) == body
    assert "Expect" not in message.headers
