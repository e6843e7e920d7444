"""The realistic GET benchmark (bench/store_vs_nginx.py, issue 13) runs and reports sanely.

``--smoke`` is the whole benchmark in small: a corpus of a few hundred AORs, each with its
own certificate, nginx and the Store on loopback with TLS and SNI, the answers compared
before measuring, one 1 s round per target and scenario. Nothing here asserts a speed
(speed is the benchmark's business, measured against nginx in the same run); the test
checks that the run succeeded, that every target answered what the Store's answer function
gives, and that the table is well formed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import require_program

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "bench" / "store_vs_nginx.py"
_NUMBER = r"[\d,]+(?:\.\d+)?"


def test_smoke_run_compares_answers_and_writes_a_well_formed_table(tmp_path: Path) -> None:
    require_program("wrk")
    require_program("nginx")
    output = tmp_path / "benchmarks.md"
    output.write_text("# hand-written\n\nkept\n")
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--smoke",
            "--aors",
            "120",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    text = output.read_text()
    assert text.startswith("# hand-written\n\nkept\n")  # the hand-written part is kept
    section = text.split("<!-- bench:begin", 1)[1].split("<!-- bench:end -->", 1)[0]
    assert "python bench/store_vs_nginx.py --smoke --aors 120" in section

    # nginx and the Store answered the same sample: status, Content-Type, ETag, body.
    compared = re.search(r"\((\d+) answers compared\)", section)
    assert compared is not None
    targets = 3  # nginx, store-1w, store-2w (+ edge when this tree has it)
    edge_row = "| edge: nginx" in section
    if not edge_row:
        assert "Not measured: `edge`" in section
    assert int(compared.group(1)) >= (targets + edge_row) * 3

    rows = [line for line in section.splitlines() if line.startswith("| ")]
    header = rows[0]
    assert header.count("req/s") == 2 and header.count("server CPU per request") == 2
    columns = header.count("|") - 1
    summary = [r for r in rows[1:] if r.startswith(("| nginx,", "| `sipcert serve`", "| edge:"))]
    assert [r.split("|")[1].strip() for r in summary][:1] == ["nginx, static files, 2 workers"]
    assert len(summary) == targets + edge_row
    cell = re.compile(
        rf"{_NUMBER}( \({_NUMBER}-{_NUMBER}\))?"  # req/s
    )
    for row in summary:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        assert len(cells) == columns, row
        for rps, ratio, latency, cpu in (cells[1:5], cells[5:9]):
            assert cell.fullmatch(rps), row
            assert re.fullmatch(r"\d+\.\d\dx", ratio), row
            assert re.fullmatch(r"\d+\.\d\d / \d+\.\d\d ms", latency), row
            assert re.fullmatch(rf"{_NUMBER} µs", cpu), row
    assert summary[0].split("|")[3].strip() == "1.00x"

    # Every request asked for an enrolled AOR: no errors, no non-2xx answers in any run.
    per_run = [r for r in rows if re.match(r"\| (nginx|store-\dw|edge) \| get", r)]
    assert len(per_run) == 2 * (targets + edge_row)
    for row in per_run:
        assert "non-2xx" not in row and "socket errors" not in row, row
    assert "TLSv1.3" in section
