"""Read a child's output line by line with a deadline per line (no sleeps)."""

from __future__ import annotations

import queue
import threading
from typing import IO

import pytest


class LineReader:
    """A thread copies the lines of ``stream`` into a queue; :meth:`next` waits for one."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.lines: queue.Queue[str] = queue.Queue()
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        for line in self.stream:
            self.lines.put(line)

    def next(self, timeout: float) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no line within {timeout} s")

    def rest(self, timeout: float = 60.0) -> str:
        """Everything after the lines already read, once the child closed the stream."""
        self.thread.join(timeout)
        found = []
        while not self.lines.empty():
            found.append(self.lines.get_nowait())
        self.stream.close()
        return "".join(found)
