"""Log lines nobody can forge, and warnings nobody can flood (issue 9).

:class:`SafeFormatter` is the formatter of every log record of ``sipcert serve``: it passes
the whole formatted line (arguments, exception text and all) through
:func:`~sipcert.proto.logsafe.log_safe`, so whatever a request carried, and whichever logger
wrote it (ours, aiohttp's, asyncio's), one record is one line of printable ASCII. The access
log, which bypasses :mod:`logging` for speed, escapes its lines the same way
(:class:`sipcert.server.app.AccessLog`).

:class:`RateLimitedLog` writes at most ``per_second`` lines of one kind a second and then one
summary line, so a client sending garbage in a loop cannot fill the disk through the log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from sipcert.proto.logsafe import log_safe

__all__ = ["RateLimitedLog", "SafeFormatter"]


class SafeFormatter(logging.Formatter):
    """A :class:`logging.Formatter` whose output is always one line of printable ASCII.

    A traceback, if a record carries one, is kept but escaped onto the record's line.
    """

    def format(self, record: logging.LogRecord) -> str:
        return log_safe(super().format(record))


class RateLimitedLog:
    """WARNING lines of one kind, at most ``per_second`` in any one-second window.

    The lines over the limit are counted, and one line says how many were left out when the
    window ends (from the event loop, so it comes even if nothing else happens).
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        per_second: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._what = what
        self._limit = per_second
        self._clock = clock
        self._start = clock()
        self._count = 0
        self._suppressed = 0
        self._timer: asyncio.TimerHandle | None = None

    def warning(self, message: str, *args: object) -> None:
        """Log ``message % args`` as WARNING, unless this window's lines are used up."""
        now = self._clock()
        if now - self._start >= 1.0:
            self.summarize()
        if self._count < self._limit:
            self._count += 1
            self._logger.warning(message, *args)
            return
        self._suppressed += 1
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop: the next line or summarize() reports them
                return
            self._timer = loop.call_later(max(0.0, self._start + 1.0 - now), self.summarize)

    def summarize(self) -> None:
        """Say how many lines the window left out, if any, and start a new window."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._suppressed:
            self._logger.warning(
                "%d more %s in the last second, not logged one by one (at most %d a second)",
                self._suppressed,
                self._what,
                self._limit,
            )
        self._start = self._clock()
        self._count = 0
        self._suppressed = 0
