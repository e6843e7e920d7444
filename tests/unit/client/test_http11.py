"""The lean GET's HTTP/1.1 reading (client/http11.py) over a real loopback TCP connection
(client/net.py), against a server that answers each request with scripted bytes: every
malformed answer is a precise :mod:`sipcert.errors` error, never an h11 or socket one."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from sipcert.client.http11 import MAX_HEAD_SIZE, Answer, ClosedBeforeAnswerError, HTTP11Connection
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
