"""``log_format = "json"``: one object per line that no request value can break (issue 10)."""

from __future__ import annotations

import json
import logging
import sys

from sipcert.server.app import AccessLog
from sipcert.server.jsonlog import JsonFormatter


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("sipcert.server", logging.WARNING, __file__, 1, message, args, None)
    for key, value in extra.items():
        setattr(made, key, value)
    return made


def test_a_hostile_value_stays_inside_its_string() -> None:
    hostile = 'x"}\n{"level":"ERROR","message":"forged\u2028\x1b[2J'
    line = JsonFormatter().format(record("401 for %s", hostile))
    assert "\n" not in line and line.isascii()
    parsed = json.loads(line)
    assert parsed["message"] == f"401 for {hostile}"
    assert (parsed["level"], parsed["logger"]) == ("WARNING", "sipcert.server")
    assert parsed["time"].endswith("+00:00") and isinstance(parsed["pid"], int)


def test_audit_fields_are_top_level_and_cannot_replace_the_base_ones() -> None:
    audit = {"event": "enroll", "user": "alice", "level": "DEBUG"}
    parsed = json.loads(JsonFormatter().format(record("enroll", audit=audit)))
    assert (parsed["event"], parsed["user"], parsed["level"]) == ("enroll", "alice", "WARNING")


def test_an_exception_is_named_without_its_traceback() -> None:
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        made = record("failed")
        made.exc_info = sys.exc_info()
    parsed = json.loads(JsonFormatter().format(made))
    assert parsed["error"] == "ValueError: bad\nvalue"
    assert "Traceback" not in json.dumps(parsed)


class Sink:
    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass


def test_access_log_json_lines() -> None:
    sink = Sink()
    log = AccessLog(sink, json_lines=True, clock=lambda: 1_800_000_000.25)  # type: ignore[arg-type]
    log.write_fields({"path": '/a"\nb', "status": 404})
    log.close()
    [line] = sink.text.splitlines()
    assert json.loads(line) == {
        "time": "2027-01-15T08:00:00.250+00:00",
        "level": "INFO",
        "logger": "sipcert.access",
        "path": '/a"\nb',
        "status": 404,
    }
