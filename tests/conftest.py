"""Shared test configuration.

Tests that need a real peer program carry ``@pytest.mark.peer("openssl")`` (any number of
names). Locally such a test skips when the program is absent; with ``CI=true`` it fails
instead, so CI can never pass by skipping the interoperability tests.

Hypothesis runs under one of two profiles, chosen by ``HYPOTHESIS_PROFILE``:

- ``default`` (``make test``, the README's command): derandomized, no example database, so
  every machine and every run tries exactly the same examples -- a failure reproduces
  everywhere and a clone never replays an example it found once -- and no per-example
  deadline, so a loaded machine cannot fail an example by its wall-clock time;
- ``random`` (``make test-random``): a fresh random seed and five times the examples, to go
  looking for new failures; a failure prints its ``@reproduce_failure`` blob.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Callable

import pytest
from hypothesis import settings

settings.register_profile(
    "default", derandomize=True, database=None, print_blob=True, deadline=None
)
settings.register_profile(
    "random",
    derandomize=False,
    database=None,
    print_blob=True,
    max_examples=500,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

IN_CI = os.environ.get("CI", "").lower() == "true"


def require_program(name: str) -> str:
    """Return the path of ``name``, or skip (locally) / fail (in CI) when it is absent."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        message = f"real peer {name!r} is not installed"
        if IN_CI:
            pytest.fail(message + " (CI=true: peers are required)")
        pytest.skip(message)
    return path


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (dnsmasq, Kamailio and SIPp bind both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


def wait_for(condition: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    """Poll ``condition()`` every 20 ms until it is true; fail naming ``what`` after
    ``timeout`` seconds. Tests wait on a condition like this, never on a fixed sleep."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers(name="peer"):
        for name in marker.args:
            require_program(name)
