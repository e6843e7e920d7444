"""``log_format = "json"``: one JSON object per line, for log collectors (issue 10).

Every object has ``time`` (ISO 8601, UTC, milliseconds), ``level``, ``logger``, ``pid`` and
``message``; audit records (:mod:`sipcert.server.audit`) add their fields at the top level,
access lines (:class:`sipcert.server.app.AccessLog`) carry the request's fields instead of a
message. ``json.dumps`` with ``ensure_ascii`` escapes every quote, backslash, control and
non-ASCII character, so whatever a request put in a field, a line cannot be broken or forged
into two objects. An exception is named by its type and message, never its traceback.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import UTC, datetime
from typing import Any

__all__ = ["JsonFormatter", "json_line", "json_record"]


def json_line(fields: dict[str, Any]) -> str:
    """``fields`` as one line of ASCII JSON (no newline)."""
    return json.dumps(fields, ensure_ascii=True, separators=(",", ":"), default=str)


def iso_time(timestamp: float) -> str:
    """``timestamp`` (Unix seconds) as ISO 8601 in UTC with milliseconds."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def json_record(logger: str, message: str, level: str = "INFO") -> str:
    """One JSON line for a message written outside :mod:`logging` (the CLI's banner)."""
    return json_line(
        {
            "time": iso_time(time.time()),
            "level": level,
            "logger": logger,
            "pid": os.getpid(),
            "message": message,
        }
    )


class JsonFormatter(logging.Formatter):
    """A :class:`logging.Formatter` writing each record as one JSON object."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "time": iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "pid": os.getpid(),
            "message": record.getMessage(),
        }
        audit = getattr(record, "audit", None)
        if isinstance(audit, dict):
            fields.update({k: v for k, v in audit.items() if k not in fields})
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            fields["error"] = f"{type(exc).__name__}: {exc}"
        return json_line(fields)
