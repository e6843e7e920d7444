"""The documentation and the code say the same thing (issue 8, "The library, documented").

Each test reads a statement out of ``docs/`` and checks it against the object it describes,
so that changing one without the other fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

from sipcert.cli.main import build_parser
from sipcert.client import ClientConfig
from sipcert.proto.sipsec import Reason

DOCS = Path(__file__).parents[3] / "docs"


def _cli_default(command: str, dest: str) -> object:
    parser = build_parser()
    parsed = parser.parse_args([command, "alice@example.com"])
    return getattr(parsed, dest)


def test_library_and_cli_default_to_the_same_cache_ttl() -> None:
    """Draft §5: the cache TTL is "short but configurable"; one default for both entry points."""
    assert ClientConfig().cache_ttl == _cli_default("fetch", "cache_ttl")


def _bold_outcomes(text: str) -> set[str]:
    return set(re.findall(r"\*\*([a-z-]+)\*\*", text))


def test_docs_list_every_open_protected_outcome_and_no_other() -> None:
    """docs/api.md lists what ``open_protected``/``after_store_check`` return: the enum."""
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    section = text.split("<!-- outcomes -->")[1].split("<!-- /outcomes -->")[0]
    assert _bold_outcomes(section) == {reason.value for reason in Reason}


def test_sip_md_outcome_table_names_every_final_reason() -> None:
    """docs/sip.md's "What a UA answers" table covers every reason a UA can answer for."""
    text = (DOCS / "sip.md").read_text(encoding="utf-8")
    table = text.split("## What a UA answers")[1].split("\n\n")[2]
    named = set()
    for line in table.splitlines()[2:]:
        first = line.split("|")[1]
        named.update(name.strip() for name in first.split(","))
    assert named == {reason.value for reason in Reason} - {Reason.UNCHECKED.value}
