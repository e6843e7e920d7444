"""The CLI imports a subcommand's module only when it runs (issue 13: start-up time).

``sipcert fetch --help`` used to import the Store (aiohttp), the SIP stack and the whole
client just to build the parser. The checks run in a fresh interpreter, where
``sys.modules`` shows exactly what one command line imported.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import subprocess
import sys
from pathlib import Path

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


# A whole ``sipcert fetch AOR --store ...`` in a fresh interpreter, against a TLS server on a
# thread of that same process (stdlib only) that answers the GET with one certificate and
# ``/log/vkey`` with 404, as a Store without a transparency log does.
_FETCH_PROBE = r"""
import json, socket, ssl, sys, threading
tls_cert, tls_key, der_file, ca_file, home = sys.argv[1:6]
der = open(der_file, "rb").read()
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(tls_cert, tls_key)
listener = socket.create_server(("127.0.0.1", 0))
port = listener.getsockname()[1]
targets = []

def serve():
    raw, _ = listener.accept()
    with ctx.wrap_socket(raw, server_side=True) as tls:
        data = b""
        while True:
            while b"\r\n\r\n" not in data:
                chunk = tls.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, data = data.partition(b"\r\n\r\n")
            target = head.split(b" ")[1]
            targets.append(target.decode())
            if target.startswith(b"/search-cgi?"):
                tls.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/pkix-cert\r\n"
                    b"Content-Length: " + str(len(der)).encode() + b"\r\n\r\n" + der
                )
            else:
                tls.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

threading.Thread(target=serve, daemon=True).start()
from sipcert.cli.main import main
code = main(["fetch", "bob@example.com", "--store", f"127.0.0.1:{port}", "--ca-file", ca_file,
             "--home", home])
print(json.dumps({"code": code, "targets": targets, "modules": sorted(sys.modules)}))
"""


def test_a_whole_fetch_imports_no_httpx_httpcore_or_h11(tmp_path: Path) -> None:
    """The Caller's GET (and the log check's) runs on sipcert.client's own HTTP/1.1 reader:
    httpx, httpcore (and trio, which httpcore loads when installed) and h11 cost a third of
    the command's start-up (issue 13) and are for PUT/DELETE and non-plain answers only."""
    from sipcert.proto.aor import parse_aor
    from sipcert.proto.ca import TestCA
    from sipcert.proto.certs import certificate_der, generate_identity

    now = dt.datetime.now(dt.UTC)
    ca = TestCA.create(now=now)
    issued = ca.issue(["example.com"], now=now)
    files = {
        "tls.pem": issued.cert_pem,
        "tls.key": issued.key_pem,
        "bob.der": certificate_der(
            generate_identity(parse_aor("bob@example.com"), now=now).certificate
        ),
        "ca.pem": ca.cert_pem,
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    paths = [str(tmp_path / name) for name in files]
    done = subprocess.run(
        [sys.executable, "-c", _FETCH_PROBE, *paths, str(tmp_path / "home")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    *text, last = done.stdout.rstrip("\n").split("\n")
    report = json.loads(last)
    assert report["code"] == 0, done.stderr
    assert text[0].startswith("bob@example.com: 1 certificate(s) from https://127.0.0.1:")
    assert report["targets"] == ["/search-cgi?email=bob%40example.com", "/log/vkey"]
    modules = set(report["modules"])
    assert _heavy(modules, ("httpx", "httpcore", "h11", "trio", "anyio")) == []
    assert "sipcert.client.viahttpx" not in modules
    # No log was published: its formats and proofs were not needed either.
    assert not {"sipcert.proto.tlog", "sipcert.proto.note", "sipcert.proto.merkle"} & modules
