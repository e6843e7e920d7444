"""The ``sipcert`` command line: argument parsing and output only.

Every subcommand is a function ``(args) -> int``; :func:`main` is the one place where errors
become one line on standard error (one JSON object on standard output with ``--json``) and a
documented exit code (README.md, "Exit codes"). Usage errors never echo a value the user
typed: a mistyped ``--password S3cret`` must not land in a terminal scroll-back or a CI log.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, cast

from sipcert import __version__
from sipcert.cli import EXIT_INTERRUPTED
from sipcert.errors import SipCertError

Command = Callable[[argparse.Namespace], int]

#: Exit code for an unexpected internal error (a bug): EX_SOFTWARE from sysexits.h.
EXIT_INTERNAL = 70
#: Exit code of a usage error (argparse's own).
EXIT_USAGE = 2

#: Options that look like a password given on the command line (never accepted: ``ps`` and
#: shell history show them). Compared without leading dashes, case-insensitively.
_SECRET_OPTIONS = re.compile(
    r"^(p|pw|pwd|pass|passwd|password|secret|sip-password|key-passphrase)$"
)

_REST_ROLE = re.compile(r":(?:mod|class|func|meth|attr|data|exc|obj):`~?([^`]+)`")


def plain(text: str) -> str:
    """``text`` without reST markup: argparse shows docstrings raw in ``--help``."""
    return _REST_ROLE.sub(r"\1", text).replace("``", "")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Plain text, with each option's default shown unless its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default in (None, False, [], argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)

    def _format_text(self, text: str) -> str:
        return super()._format_text(plain(text))

    def _expand_help(self, action: argparse.Action) -> str:
        return plain(super()._expand_help(action))


class UsageError(Exception):
    """A command line that does not parse; ``message`` holds no value the user typed."""

    def __init__(self, prog: str, usage: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog
        self.usage = usage
        self.message = message


# argparse messages that quote a value from the command line, and what to keep of them.
_VALUE_MESSAGES = (
    re.compile(r"(invalid choice): .*?( \(choose from .*\))?$"),
    re.compile(r"(invalid [\w ]+ value): .*()$"),
    re.compile(r"(ignored explicit argument) .*()$"),
)


def _redact(message: str) -> str:
    for pattern in _VALUE_MESSAGES:
        message = pattern.sub(r"\1\2", message)
    return message


def _option_name(token: str) -> str | None:
    """The option a command-line token names (``--a=b`` -> ``--a``, ``-pX`` -> ``-p``)."""
    if not token.startswith("-") or token in ("-", "--") or re.fullmatch(r"-[\d.]+", token):
        return None
    return token.split("=", 1)[0] if token.startswith("--") else token[:2]


def secret_option(argv: Sequence[str]) -> str | None:
    """The first option in ``argv`` that looks like a password given as a flag, if any."""
    for arg in argv:
        if arg == "--":
            return None
        name = _option_name(arg)
        if name is not None and _SECRET_OPTIONS.match(name.lstrip("-").lower()):
            return name
    return None


def describe_unrecognized(extras: Sequence[str]) -> str:
    """``unrecognized arguments`` naming options only; values are counted, never shown."""
    names = [n for n in map(_option_name, extras) if n is not None]
    values = len(extras) - len(names)
    parts = [", ".join(dict.fromkeys(names))] if names else []
    if values:
        parts.append(f"{values} value(s) not shown")
    return "unrecognized arguments: " + "; ".join(parts)


class Parser(argparse.ArgumentParser):
    """argparse with plain help, no abbreviations and errors that echo no values."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(describe_unrecognized(extras))
        return parsed

    def error(self, message: str) -> NoReturn:
        raise UsageError(self.prog, self.format_usage(), _redact(message))


#: Every subcommand in the order ``sipcert --help`` lists them: (name, the ``sipcert.cli``
#: module whose ``register`` adds it, its one-line help). The help is repeated here so that
#: ``sipcert --help`` needs no subcommand module; tests/unit/cli checks it against each module.
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("demo", "demo", "run the whole draft on loopback (Stores, DNS, enrollment, S/MIME over SIP)"),
    (
        "selftest",
        "selftest",
        "walk through the protocol core (certificates, Digest, S/MIME) offline",
    ),
    ("locate", "ua", "show how the Store of an AOR is found (draft §4.1, §4.5)"),
    ("fetch", "ua", "retrieve and check an AOR's certificates (draft §4.3, §4.5)"),
    ("enroll", "ua", "create a certificate and store it at the Store (draft §5.1)"),
    ("status", "ua", "check this device's certificate at the Store (draft §5.1)"),
    ("renew", "ua", "enroll a new certificate near expiry, revoke the old (draft §5)"),
    ("revoke", "ua", "remove certificates from the Store (draft §5)"),
    (
        "monitor",
        "monitor",
        "alarm on log entries for an AOR that are not this user's devices (issue 14)",
    ),
    (
        "ua",
        "sipua",
        "run a SIP UA that verifies and answers protected MESSAGE and INVITE (draft §1)",
    ),
    ("message", "sipua", "send SIP MESSAGEs"),
    (
        "authsvc",
        "authsvc",
        "the authentication service that signs and verifies for phones (draft §6)",
    ),
    ("serve", "serve", "run the certificate Store (HTTPS, one certificate per domain by SNI)"),
    ("publish", "edge", "write every AOR's answer as files for nginx (edge mode)"),
    ("nginx-config", "edge", "print an nginx configuration for edge mode"),
    ("user", "user", "manage the Store's users file (Digest credentials for enrollment)"),
    ("db", "db", "manage the Store's certificate database (schema migrations)"),
)


class _LazyChoices(dict[str, argparse.ArgumentParser]):
    """The subcommand parsers; looking one up (or listing them all) loads its module first."""

    def __init__(self) -> None:
        super().__init__()
        self.load: Callable[[str], None] = lambda name: None
        self.load_all: Callable[[], None] = lambda: None

    def __getitem__(self, name: str) -> argparse.ArgumentParser:
        self.load(name)
        return super().__getitem__(name)

    def get(self, name: str, default: Any = None) -> Any:
        self.load(name)
        return super().get(name, default)

    def values(self) -> Any:
        self.load_all()
        return super().values()

    def items(self) -> Any:
        self.load_all()
        return super().items()


if TYPE_CHECKING:
    _SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]
else:  # not subscriptable at run time
    _SubParsers = argparse._SubParsersAction


class _LazySubcommands(_SubParsers):
    """Subcommands whose arguments are defined only once one of them is chosen.

    Importing every subcommand module (the Store, the SIP stack, aiohttp, ...) took most of
    ``sipcert fetch``'s 0.45 s start-up (issue 13). The names and one-line helps come from
    :data:`COMMANDS`; a module's ``register`` runs when argparse reaches its command (or when
    all parsers are listed), replacing the placeholders it registers.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        choices = _LazyChoices()
        choices.load = self._load
        choices.load_all = self._load_all
        self._name_parser_map = choices
        self.choices = choices
        self._modules: dict[str, str] = {}
        self._loading = False

    def add_lazy(self, name: str, module: str, help_text: str) -> None:
        self.add_parser(name, help=help_text)
        self._modules[name] = module

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        if self._loading:
            # The module's real parser replaces the placeholder; the help listing stays.
            dict.pop(self._name_parser_map, name, None)
            kwargs.pop("help", None)
        return super().add_parser(name, **kwargs)

    def _load(self, name: str) -> None:
        module = self._modules.get(name)
        if module is None:
            return
        for other in [n for n, m in self._modules.items() if m == module]:
            del self._modules[other]
        self._loading = True
        try:
            importlib.import_module(f"sipcert.cli.{module}").register(self)
        finally:
            self._loading = False

    def _load_all(self) -> None:
        for name in list(self._modules):
            self._load(name)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        self._load(values[0])
        super().__call__(parser, namespace, values, option_string)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser; a subcommand's module is imported only when it is chosen."""
    parser = Parser(
        prog="sipcert",
        description="Certificate Discovery for SIP (draft-jennings-sipping-certs-02).",
    )
    parser.add_argument("--version", action="version", version=f"sipcert {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show a traceback on errors (for bug reports)"
    )
    commands = cast(
        "_LazySubcommands",
        parser.add_subparsers(
            dest="command", metavar="COMMAND", required=True, action=_LazySubcommands
        ),
    )
    for name, module, help_text in COMMANDS:
        commands.add_lazy(name, module, help_text)
    return parser


def _wants_json(argv: Sequence[str]) -> bool:
    return "--json" in argv[: argv.index("--")] if "--" in argv else "--json" in argv


def fail(message: str, code: int, *, as_json: bool, event: bool = False) -> int:
    """Report a failure once: one JSON object on stdout with ``--json``, else one line on
    stderr. ``event`` adds ``"event": "error"`` for commands that print JSON lines."""
    if as_json:
        shown: dict[str, Any] = {"event": "error"} if event else {}
        shown.update(ok=False, error=message, exit_code=code)
        print(json.dumps(shown), flush=True)
    else:
        print(f"sipcert: error: {message}", file=sys.stderr, flush=True)
    return code


def _interrupted(*, as_json: bool, event: bool = False) -> int:
    """Ctrl-C: ``sipcert: interrupted`` (the same line :func:`sipcert.cli.entry` prints)."""
    if as_json:
        return fail("interrupted", EXIT_INTERRUPTED, as_json=True, event=event)
    print("sipcert: interrupted", file=sys.stderr, flush=True)
    return EXIT_INTERRUPTED


def _usage_failure(exc: UsageError, as_json: bool) -> int:
    if not as_json:
        sys.stderr.write(exc.usage)
        print(f"{exc.prog}: error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    return fail(exc.message, EXIT_USAGE, as_json=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code instead of exiting (testable in-process)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    as_json = _wants_json(arguments)
    try:
        parser = build_parser()
        secret = secret_option(arguments)
        if secret is not None:
            parser.error(
                f"{secret}: a password is never given as an option (ps and shell history "
                "show it); use --password-file FILE, standard input or the prompt"
            )
        args = parser.parse_args(arguments)
    except UsageError as exc:
        return _usage_failure(exc, as_json)
    except SystemExit as exc:  # --help, --version
        return int(exc.code or 0)
    except KeyboardInterrupt:
        return _interrupted(as_json=as_json)
    run: Command = args.run
    as_json = bool(getattr(args, "json", False))
    event = bool(getattr(args, "json_events", False))
    try:
        return run(args)
    except SipCertError as exc:
        if args.debug:
            raise
        return fail(str(exc), exc.exit_code, as_json=as_json, event=event)
    except KeyboardInterrupt:
        return _interrupted(as_json=as_json, event=event)
    except BrokenPipeError:
        # The reader went away (``sipcert demo | head``): stop quietly, as other tools do.
        with contextlib.suppress(OSError, ValueError):  # no real stdout: nothing to silence
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception:
        if args.debug:
            raise
        return fail(
            "internal error (a bug in sipcert); rerun with --debug and report it",
            EXIT_INTERNAL,
            as_json=as_json,
            event=event,
        )


def entry() -> None:
    """Console-script entry point (kept for installs made before :func:`sipcert.cli.entry`)."""
    from sipcert.cli import entry as cli_entry

    cli_entry()
