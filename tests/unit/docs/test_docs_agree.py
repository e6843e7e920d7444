"""The documentation and the code say the same thing (issue 8, "The library, documented").

Each test reads a statement out of ``docs/`` and checks it against the object it describes,
so that changing one without the other fails here.
"""

from __future__ import annotations

from pathlib import Path

from sipcert.cli.main import build_parser
from sipcert.client import ClientConfig

DOCS = Path(__file__).parents[3] / "docs"


def _cli_default(command: str, dest: str) -> object:
    parser = build_parser()
    parsed = parser.parse_args([command, "alice@example.com"])
    return getattr(parsed, dest)


def test_library_and_cli_default_to_the_same_cache_ttl() -> None:
    """Draft §5: the cache TTL is "short but configurable"; one default for both entry points."""
    assert ClientConfig().cache_ttl == _cli_default("fetch", "cache_ttl")
