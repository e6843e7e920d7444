"""The CLI imports a subcommand's module only when it runs (issue 13: start-up time).

``sipcert fetch --help`` used to import the Store (aiohttp), the SIP stack and the whole
client just to build the parser. The checks run in a fresh interpreter, where
``sys.modules`` shows exactly what one command line imported.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys

import pytest

from sipcert.cli import main as cli
from sipcert.client import defaults
from sipcert.proto.certs import KeyType

_PROBE = """
import json, sys
from sipcert.cli.main import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def _imported(*argv: str) -> tuple[int, set[str], str]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    *text, last = done.stdout.rstrip("\n").split("\n")
    report = json.loads(last)
    return report["code"], set(report["modules"]), "\n".join(text)


def _heavy(modules: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in prefixes or m.startswith(prefixes))


@pytest.mark.parametrize("command", ["fetch", "locate", "enroll"])
def test_client_help_imports_neither_server_nor_client(command: str) -> None:
    code, modules, text = _imported(command, "--help")
    assert code == 0
    assert text.startswith(f"usage: sipcert {command}")
    assert _heavy(modules, ("aiohttp", "uvloop", "sipcert.server", "sipcert.sip")) == []
    # Not even the client itself: the defaults in --help come from sipcert.client.defaults.
    assert _heavy(modules, ("httpx", "httpcore", "dns", "sipcert.client.ua")) == []
    assert "sipcert.cli.serve" not in modules and "sipcert.cli.sipua" not in modules


def test_client_help_starts_no_event_loop() -> None:
    code, modules, _ = _imported("fetch", "--help")
    assert code == 0
    assert "asyncio" not in modules


def test_locate_with_a_store_address_imports_no_dns_http_or_crypto() -> None:
    # Nothing is asked of DNS for a given address, so dnspython is not even imported.
    code, modules, text = _imported("locate", "bob@example.com", "--store", "127.0.0.1:8443")
    assert code == 0
    assert "URL https://127.0.0.1:8443/search-cgi?email=bob%40example.com" in text
    assert _heavy(modules, ("dns", "anyio", "httpx", "httpcore", "cryptography", "h11")) == []


def test_top_level_help_imports_no_subcommand() -> None:
    code, modules, text = _imported("--help")
    assert code == 0
    assert "COMMAND" in text
    loaded = {m for m in modules if m.startswith("sipcert.cli.")} - {"sipcert.cli.main"}
    assert loaded == set()


def test_a_command_loads_only_its_own_module() -> None:
    code, modules, _ = _imported("user", "--help")
    assert code == 0
    assert "sipcert.cli.user" in modules
    assert not {"sipcert.cli.ua", "sipcert.cli.sipua", "sipcert.cli.demo"} & modules


def _registered(module: str) -> list[tuple[str, str | None]]:
    parser = argparse.ArgumentParser(prog="sipcert")
    commands = parser.add_subparsers(dest="command")
    importlib.import_module(f"sipcert.cli.{module}").register(commands)
    return [(a.dest, a.help) for a in commands._choices_actions]


def test_the_command_table_matches_each_module() -> None:
    """The names and helps of COMMANDS are those each module registers, in order."""
    modules = list(dict.fromkeys(module for _, module, _ in cli.COMMANDS))
    expected = [entry for module in modules for entry in _registered(module)]
    assert [(name, text) for name, _, text in cli.COMMANDS] == expected
    for name, module, _ in cli.COMMANDS:
        assert (name, module) in {(n, module) for n, _ in _registered(module)}


def test_listing_every_parser_loads_them_all() -> None:
    parser = cli.build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    subs = dict(action.choices.items())
    assert list(subs) == [name for name, _, _ in cli.COMMANDS]
    # Real parsers, not placeholders: each has its positional or its own options.
    assert any(a.dest == "aor" for a in subs["fetch"]._actions)
    assert any("--config" in a.option_strings for a in subs["serve"]._actions)


def test_key_types_match_the_enum() -> None:
    assert defaults.KEY_TYPES == tuple(k.value for k in KeyType)
    assert KeyType(defaults.DEFAULT_KEY_TYPE) is KeyType.P256
