from __future__ import annotations

import pytest
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
)

from sipcert.server.http import refusal_reason


@pytest.mark.parametrize(
    ("status", "exc", "reason"),
    [
        (500, RuntimeError("x"), "internal error"),
        (504, None, "the request took too long to answer"),
        (400, BadHttpMethod("G\\xc3T"), "malformed request line: not an HTTP method"),
        (400, InvalidURLError("*"), "malformed request target: the Store answers at /search-cgi"),
        (400, LineTooLong("line", "8190", "9000"), "request line or header too long"),
        (400, InvalidHeader(b"X-A\nb"), "malformed header"),
        (
            400,
            BadHttpMessage("Invalid header token:\n\n  b'Bad Header'\n  ^"),
            "malformed request: invalid header token",
        ),
        (400, BadHttpMessage(""), "malformed request"),
        (413, None, "request entity too large"),
        (499, None, "refused"),
    ],
)
def test_refusal_reason_never_echoes_the_request(
    status: int, exc: BaseException | None, reason: str
) -> None:
    assert refusal_reason(status, exc) == reason
