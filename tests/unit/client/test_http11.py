"""The lean GET's HTTP/1.1 reading (client/http11.py) over a real loopback TCP connection
(client/net.py), against a server that answers each request with scripted bytes: every
malformed answer is a precise :mod:`sipcert.errors` error, never an h11 or socket one."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipcert.client.http11 import (
    MAX_HEAD_SIZE,
    Answer,
    ClosedBeforeAnswerError,
    HTTP11Connection,
    _Plain,
    _plain_answer,
    _plain_request,
)
from sipcert.client.net import AsyncioBackend
from sipcert.errors import InputTooLargeError, SipCertError, TransportError

HEADERS = [(b"Host", b"example.com"), (b"User-Agent", b"test")]
#: The server's step for a request: bytes to answer, then whether to close the connection.
Step = tuple[bytes, bool]


async def with_server(
    steps: list[Step], work: Callable[[HTTP11Connection], Awaitable[object]]
) -> tuple[object, list[bytes]]:
    """Run ``work`` on a connection to a server that plays ``steps``, one per request."""
    received: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for answer, close in steps:
                received.append(await reader.readuntil(b"\r\n\r\n"))
                writer.write(answer)
                await writer.drain()
                if close:
                    return
            await reader.read()  # keep the connection until the client closes it
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    stream = await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=5)
    connection = HTTP11Connection(stream, "example.com")
    try:
        result = await work(connection)
    finally:
        await connection.aclose()
        server.close()
        await server.wait_closed()
    return result, received


def get(limit: int = 1000, timeout: float = 5) -> Callable[[HTTP11Connection], Awaitable[Answer]]:
    async def work(connection: HTTP11Connection) -> Answer:
        return await connection.exchange(b"GET", b"/search-cgi?sip=a", HEADERS, limit, timeout)

    return work


def answer(steps: list[Step], **options: float) -> Answer:
    result, _ = asyncio.run(with_server(steps, get(**options)))  # type: ignore[arg-type]
    assert isinstance(result, Answer)
    return result


def failure(steps: list[Step], **options: float) -> SipCertError:
    with pytest.raises(SipCertError) as caught:
        answer(steps, **options)
    return caught.value


OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"


def test_a_content_length_answer_and_the_connection_is_kept_alive() -> None:
    async def twice(connection: HTTP11Connection) -> list[Answer]:
        first = await get()(connection)
        assert connection.reusable and connection.answered == 1
        return [first, await get()(connection)]

    result, received = asyncio.run(with_server([(OK, False), (OK, False)], twice))
    assert [(a.status, a.reason, a.body) for a in result] == [(200, "OK", b"hello")] * 2  # type: ignore[attr-defined]
    assert result[0].headers == {"content-type": "text/plain", "content-length": "5"}  # type: ignore[index]
    assert (
        received[0]
        == b"GET /search-cgi?sip=a HTTP/1.1\r\nHost: example.com\r\nUser-Agent: test\r\n\r\n"
    )


def test_a_chunked_answer_is_joined_and_repeated_fields_are_joined() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nVia: a\r\nVia: b\r\n\r\n"
        b"3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n"
    )
    result = answer([(chunked, False)])
    assert result.body == b"hello"
    assert result.headers["via"] == "a, b"
    assert result.connection.answered == 1


def test_a_connection_close_answer_is_not_reused() -> None:
    closing = b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 4\r\n\r\nnone"
    result = answer([(closing, True)])
    assert (result.status, result.body) == (404, b"none")
    assert result.connection.closed and not result.connection.reusable


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n", "illegal status line"),
        (b"ICY 200 OK\r\n\r\n", "illegal status line"),
        (b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n", "illegal header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n", "bad Content-Length"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            "conflicting Content-Length",
        ),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "Transfer-Encoding"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk header"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_HEAD_SIZE + b"\r\n\r\n", "head is over 16384"),
    ],
)
def test_malformed_answers_say_what_was_wrong(raw: bytes, words: str) -> None:
    error = failure([(raw, True)])
    assert type(error) is TransportError
    assert str(error).startswith("the Store of example.com broke the HTTP/1.1 protocol: ")
    assert words.lower() in str(error).lower()


def test_a_truncated_body_says_how_much_came() -> None:
    error = failure([(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", True)])
    assert type(error) is TransportError
    assert "received 5 bytes, expected 10" in str(error)


def test_a_truncated_chunked_body_is_an_error() -> None:
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"
    assert type(failure([(raw, True)])) is TransportError


def test_bodies_over_the_limit_declared_or_not() -> None:
    declared = b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n" + b"x" * 2000
    error = failure([(declared, True)])
    assert isinstance(error, InputTooLargeError)
    assert "2000 bytes, over the limit of 1000" in str(error)
    chunk = b"3e8\r\n" + b"x" * 1000 + b"\r\n"
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 2 + b"0\r\n\r\n"
    error = failure([(chunked, True)])
    assert isinstance(error, InputTooLargeError)
    assert "over the limit of 1000 bytes" in str(error)


def test_a_close_before_any_answer_byte_is_its_own_error() -> None:
    error = failure([(b"", True)])
    assert isinstance(error, ClosedBeforeAnswerError)
    assert "closed the connection without answering" in str(error)


def test_a_silent_server_times_out() -> None:
    error = failure([(b"HTTP/1.1 200 OK\r\n", False)], timeout=0.2)
    assert type(error) is TransportError
    assert "timed out" in str(error)


def test_an_informational_answer_is_skipped() -> None:
    result = answer([(b"HTTP/1.1 100 Continue\r\n\r\n" + OK, False)])
    assert (result.status, result.body) == (200, b"hello")


def test_remembered_facts_belong_to_the_connection_and_age() -> None:
    async def work(connection: HTTP11Connection) -> None:
        assert not connection.recalls("no log", 10)
        connection.remember("no log")
        assert connection.recalls("no log", 10)
        assert not connection.recalls("no log", -1)  # older than a negative age

    asyncio.run(with_server([], work))


# -- answers read without h11 (issue 13) ----------------------------------------------------


def _h11_reading(
    raw: bytes, limit: int
) -> tuple[int, bytes, list[tuple[bytes, bytes]], bytes, bool]:
    """What h11 itself makes of ``raw`` as the answer to a GET (raises on what it refuses)."""
    connection = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_SIZE)
    connection.send(h11.Request(method=b"GET", target=b"/x", headers=HEADERS))
    connection.send(h11.EndOfMessage())
    connection.receive_data(raw)
    head = connection.next_event()
    assert isinstance(head, h11.Response)
    body = b""
    while True:
        event = connection.next_event()
        if isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            break
        else:
            raise AssertionError(f"h11 did not read a whole answer: {event!r}")
    assert len(body) <= limit
    assert connection.trailing_data == (b"", False)
    close = connection.their_state is h11.MUST_CLOSE
    return head.status_code, head.reason, list(head.headers), body, close


_NAMES = st.sampled_from(
    [b"Content-Type", b"ETag", b"Cache-Control", b"Connection", b"X-A", b"Via", b"Bad Name"]
)
_VALUES = st.sampled_from(
    [b"close", b"keep-alive, close", b"application/pkix-cert", b" padded ", b"a\tb", b""]
) | st.binary(max_size=12).map(lambda v: v.replace(b"\r\n", b""))


@settings(max_examples=300)
@given(
    status=st.sampled_from([b"200 OK", b"404 Not Found", b"200 ", b"200", b"302 Found"] * 2),
    version=st.sampled_from([b"HTTP/1.1"] * 3 + [b"HTTP/1.0"]),
    fields=st.lists(st.tuples(_NAMES, _VALUES), max_size=4),
    body=st.binary(max_size=20),
    declared=st.sampled_from(["right"] * 5 + ["none", "short", "long", "twice", "text"]),
    tail=st.sampled_from([b""] * 4 + [b"H", b"HTTP/1.1 200 OK\r\n"]),
    limit=st.sampled_from([5, 1000]),
)
def test_an_answer_read_without_h11_is_read_as_h11_reads_it(
    status: bytes,
    version: bytes,
    fields: list[tuple[bytes, bytes]],
    body: bytes,
    declared: str,
    tail: bytes,
    limit: int,
) -> None:
    """Whatever the plain reader accepts, h11 reads identically; the rest it leaves to h11."""
    lengths = {
        "right": [str(len(body)).encode()],
        "none": [],
        "short": [str(max(len(body) - 1, 0)).encode()],
        "long": [str(len(body) + 1).encode()],
        "twice": [str(len(body)).encode()] * 2,
        "text": [b"x"],
    }[declared]
    head = [version + b" " + status] + [n + b": " + v for n, v in fields]
    head += [b"Content-Length: " + length for length in lengths]
    raw = b"\r\n".join(head) + b"\r\n\r\n" + body + tail
    plain = _plain_answer(raw, limit)
    if not isinstance(plain, _Plain):
        return  # h11 reads it (tests above: its errors are ours)
    assert _h11_reading(raw, limit) == (
        plain.status,
        plain.reason,
        plain.headers,
        plain.body,
        plain.close,
    )


def test_the_plain_request_is_the_bytes_h11_writes() -> None:
    connection = h11.Connection(h11.CLIENT)
    headers = [(b"User-Agent", b"sipcert/1"), (b"Host", b"example.com")]
    written = connection.send(h11.Request(method=b"GET", target=b"/s?a=%40", headers=headers))
    assert _plain_request(b"/s?a=%40", headers) == written + (
        connection.send(h11.EndOfMessage()) or b""
    )
    assert _plain_request(b"/s a", HEADERS) is None  # h11 frames (refuses) the odd ones
    assert _plain_request(b"/s", [(b"Host", b"a"), (b"Host", b"b")]) is None
    assert _plain_request(b"/s", [(b"Host", b"a\r\nX: y")]) is None
    assert _plain_request(b"/s", [(b"Host", b"a"), (b"Connection", b"close")]) is None


def test_plain_and_h11_answers_share_one_kept_alive_connection() -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"

    async def thrice(connection: HTTP11Connection) -> list[Answer]:
        return [await get()(connection) for _ in range(3)]

    result, received = asyncio.run(
        with_server([(OK, False), (chunked, False), (OK, False)], thrice)  # type: ignore[arg-type]
    )
    assert [(a.status, a.body) for a in result] == [(200, b"hello")] * 3  # type: ignore[attr-defined]
    assert len(set(received)) == 1  # the same request bytes whichever reads the answer
    assert all(a.connection.answered == 3 for a in result)  # type: ignore[attr-defined]
