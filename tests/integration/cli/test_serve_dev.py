"""``sipcert serve --dev`` as a person starts it: the banner once it serves, the "serving"
line once, and a failed start as its one error line (issue 8)."""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

from tests.conftest import free_port
from tests.integration.cli.lines import LineReader
from tests.integration.kamailio.conftest import sipcert_program


def test_port_in_use_is_one_error_line_without_the_banner(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sipcert_program(), "serve", "--dev", "--listen", f"127.0.0.1:{port}"],
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 2
    assert done.stderr.startswith(f"sipcert: error: cannot listen on 127.0.0.1:{port}: ")
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stdout == ""


def test_serving_line_once_after_the_banner(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sipcert_program(), "serve", "--dev", "--listen", f"127.0.0.1:{port}"],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    lines = LineReader(process.stderr)
    try:
        banner = []
        while not (line := lines.next(60)).startswith("sipcert: serving"):
            banner.append(line)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        rest = lines.rest()
    assert process.returncode == 0, rest
    assert banner[0].startswith("sipcert dev Store: data in ")
    assert any("--store 127.0.0.1:" in line for line in banner)
    assert ": serving example.com" not in "".join(banner) + rest  # once: the line above
