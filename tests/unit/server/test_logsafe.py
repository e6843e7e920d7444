from __future__ import annotations

import logging

import pytest

from sipcert.server.logsafe import RateLimitedLog, SafeFormatter


def test_safe_formatter_keeps_a_record_on_one_line() -> None:
    formatter = SafeFormatter("%(levelname)s %(name)s: %(message)s")
    try:
        raise ValueError("bad\nERROR x: FORGED")
    except ValueError:
        record = logging.LogRecord(
            "sipcert.server", logging.WARNING, __file__, 1, "429 for %s", ("a\nb",), None
        )
        record.exc_info = __import__("sys").exc_info()
    line = formatter.format(record)
    assert "\n" not in line
    assert line.startswith(r"WARNING sipcert.server: 429 for a\x0ab\x0aTraceback")
    assert r"ValueError: bad\x0aERROR x: FORGED" in line


def test_rate_limited_log_summarizes_what_it_left_out(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    limited = RateLimitedLog(
        logging.getLogger("sipcert.test"), "refusals", per_second=3, clock=lambda: now[0]
    )
    with caplog.at_level(logging.WARNING, "sipcert.test"):
        for i in range(10):
            limited.warning("refused %d", i)
        now[0] += 1.0
        limited.warning("refused %d", 10)
        for i in range(11, 13):
            limited.warning("refused %d", i)
        limited.summarize()
    assert [r.getMessage() for r in caplog.records] == [
        "refused 0",
        "refused 1",
        "refused 2",
        "7 more refusals in the last second, not logged one by one (at most 3 a second)",
        "refused 10",
        "refused 11",
        "refused 12",
    ]
