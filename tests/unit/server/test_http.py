from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus

import pytest
from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
)

from sipcert.errors import HeaderTooLargeError
from sipcert.server.http import (
    MAX_FIELD_SIZE,
    MAX_TARGET_SIZE,
    StoreServer,
    line_too_long_status,
    refusal_reason,
    refusal_status,
)


@pytest.mark.parametrize(
    ("status", "exc", "reason"),
    [
        (500, RuntimeError("x"), "internal error"),
        (504, None, "the request took too long to answer"),
        (400, BadHttpMethod("G\\xc3T"), "malformed request line: not an HTTP method"),
        (400, InvalidURLError("*"), "malformed request target: the Store answers at /search-cgi"),
        (400, LineTooLong("line", 8190, "9000"), "request target too long (RFC 9112 §3)"),
        (400, LineTooLong("line", 8191, "9000"), "header field too long (RFC 6585 §5)"),
        (400, InvalidHeader(b"X-A\nb"), "malformed header"),
        (
            400,
            BadHttpMessage("Invalid header token:\n\n  b'Bad Header'\n  ^"),
            "malformed request: invalid header token",
        ),
        (400, BadHttpMessage(""), "malformed request"),
        # The standard phrase: "Request Entity Too Large" until Python 3.12, RFC 9110's
        # "Content Too Large" from 3.13.
        (413, None, HTTPStatus(413).phrase.lower()),
        (499, None, "refused"),
    ],
)
def test_refusal_reason_never_echoes_the_request(
    status: int, exc: BaseException | None, reason: str
) -> None:
    assert refusal_reason(status, exc) == reason


def test_a_failure_inside_aiohttp_is_one_line_with_what_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(request: web.BaseRequest) -> web.StreamResponse:
        raise RuntimeError("boom")

    async def exchange() -> bytes:
        runner = web.ServerRunner(StoreServer(broken), handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            port = runner.addresses[0][1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = await reader.read()
            writer.close()
            return answer
        finally:
            await runner.cleanup()

    with caplog.at_level(logging.WARNING, "sipcert.server"):
        answer = asyncio.run(exchange())
    assert answer.startswith(b"HTTP/1.1 500 ")
    assert b"\r\nServer: sipcert\r\n" in answer
    assert answer.endswith(b"\r\n\r\ninternal error\n")
    [record] = [r for r in caplog.records if r.name == "sipcert.server"]
    assert record.getMessage() == (
        "refused a request from 127.0.0.1: 500 internal error (RuntimeError: boom)"
    )
    assert record.exc_info is None


def test_our_own_refusal_keeps_its_reason() -> None:
    """The 431 of server.conn reaches the client with its own words, not the status phrase."""
    exc = HeaderTooLargeError("request head over the limit of 16384 bytes")
    assert refusal_reason(431, exc) == "request head over the limit of 16384 bytes"


def test_a_line_too_long_is_414_for_the_target_and_431_for_a_header() -> None:
    """RFC 9112 §3 (414) and RFC 6585 §5 (431): the limits differ so the error tells."""
    assert MAX_TARGET_SIZE != MAX_FIELD_SIZE
    assert line_too_long_status(LineTooLong(b"/x", MAX_TARGET_SIZE)) == 414
    assert line_too_long_status(LineTooLong(b"X-A", MAX_FIELD_SIZE)) == 431


def test_too_many_header_fields_is_431_and_other_refusals_keep_their_status() -> None:
    """RFC 6585 §5: aiohttp's "Too many headers received" (400) becomes 431."""
    assert refusal_status(400, BadHttpMessage("Too many headers received")) == 431
    assert refusal_status(400, LineTooLong(b"/x", MAX_TARGET_SIZE)) == 414
    assert refusal_status(400, BadHttpMessage("Invalid header token")) == 400
    assert refusal_status(500, RuntimeError("x")) == 500
