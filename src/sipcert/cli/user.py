"""``sipcert user add|passwd|remove|list``: the Store's own users file (draft §5 Digest secrets).

The file keeps HA1 values per Digest algorithm (MD5, SHA-256), never the password. The
password is read from standard input when it is not a terminal, else prompted twice; it is
never a flag (flags show in ``ps`` and shell history). Only ``file:`` credentials URLs can be
managed here: a Kamailio table is managed with Kamailio's own tools (``kamctl``).

Users are named by their AOR, stored in its canonical spelling (RFC 3261 escapes in the user
part: ``zo%C3%AB@example.com``); a UA authenticates with the user part unescaped (``zoë``) as
its Digest username. An AOR that no Digest username can name is refused.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import Any

from sipcert.errors import ConfigError
from sipcert.server.credentials import FileCredentials, open_credentials
from sipcert.server.dev import DEFAULT_DEV_DIR

__all__ = ["register"]

_MAX_PASSWORD = 1024


def _default_credentials() -> str:
    return f"file:{(DEFAULT_DEV_DIR / 'users.json').absolute()}"


def register(commands: Any) -> None:
    """Add the ``user`` subcommand and its actions."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "user",
        help="manage the Store's users file (Digest credentials for enrollment)",
        description=__doc__,
        allow_abbrev=False,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--credentials",
        metavar="URL",
        help=f"file:///path/users.json (default: the --dev one, {_default_credentials()})",
    )
    common.add_argument("--json", action="store_true", help="print one JSON object")
    for name, help_text in (
        ("add", "add a user; the password comes from standard input or a prompt"),
        ("passwd", "change a user's password"),
        ("remove", "remove a user"),
    ):
        action = actions.add_parser(name, help=help_text, parents=[common], allow_abbrev=False)
        action.add_argument("aor", help="the user's address of record, user@domain")
        action.set_defaults(run=run)
    listing = actions.add_parser("list", help="list the users", parents=[common])
    listing.set_defaults(run=run)


def _source(args: argparse.Namespace) -> FileCredentials:
    url = args.credentials or _default_credentials()
    source = open_credentials(url)
    if not isinstance(source, FileCredentials):
        raise ConfigError(
            "only file: credentials can be managed by sipcert; manage Kamailio's subscriber "
            "table with Kamailio's tools"
        )
    return source


def read_new_password(aor: str) -> str:
    """The new password: one line of standard input, or typed twice at a prompt."""
    if not sys.stdin.isatty():
        password = sys.stdin.readline(_MAX_PASSWORD + 2).removesuffix("\n").removesuffix("\r")
    else:
        password = getpass.getpass(f"password for {aor}: ")
        if getpass.getpass("again: ") != password:
            raise ConfigError("the two passwords differ")
    if not password:
        raise ConfigError("empty password")
    if len(password) > _MAX_PASSWORD:
        raise ConfigError(f"password longer than {_MAX_PASSWORD} characters")
    return password


def _done(args: argparse.Namespace, line: str, **fields: object) -> int:
    """One line, or with ``--json`` one object (README.md, "JSON output")."""
    if args.json:
        print(json.dumps({"ok": True, "exit_code": 0, "action": args.action, **fields}))
    else:
        print(line)
    return 0


def run(args: argparse.Namespace) -> int:
    """Carry out one action; print one line about what changed.

    Entries of the file that do not load are named on standard error, one warning each
    (line number and reason); they do not stop the action and are kept as they are.
    """
    source = _source(args)
    try:
        return _run(args, source)
    finally:
        for refused in source.refused:
            print(f"sipcert: warning: {refused.describe(source.path)}", file=sys.stderr)


def _run(args: argparse.Namespace, source: FileCredentials) -> int:
    path = str(source.path)
    if args.action == "list":
        if not source.path.exists():  # a typo in --credentials is not "no users"
            raise ConfigError(
                f"credentials file {source.path} does not exist (add users with `sipcert user add`)"
            )
        users = source.list()
        if args.json:
            return _done(args, "", credentials=path, users=users)
        for listed in users:
            print(listed)
        return 0
    aor: str = args.aor
    if args.action == "remove":
        key = source.remove(aor)
        shown = key if key.isascii() and key.isprintable() else ascii(key)
        return _done(args, f"removed {shown}", aor=key, credentials=path)
    password = read_new_password(aor)
    if args.action == "add":
        key = source.add(aor, password)
        return _done(args, f"added {key} to {source.path}", aor=key, credentials=path)
    key = source.set_password(aor, password)
    return _done(args, f"changed the password of {key}", aor=key, credentials=path)
