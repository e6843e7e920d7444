"""The ``sipcert`` command line: argument parsing and output only.

Every subcommand is a function ``(args) -> int``; :func:`main` is the one place where errors
become one line on standard error and a documented exit code (README.md, "Exit codes").
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Sequence

from sipcert import __version__
from sipcert.errors import SipCertError

Command = Callable[[argparse.Namespace], int]

#: Exit code for an unexpected internal error (a bug): EX_SOFTWARE from sysexits.h.
EXIT_INTERNAL = 70


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser; subcommands register themselves here."""
    from sipcert.cli import demo, selftest, serve, sipua, user
    from sipcert.cli import ua as ua_commands

    parser = argparse.ArgumentParser(
        prog="sipcert",
        description="Certificate Discovery for SIP (draft-jennings-sipping-certs-02).",
    )
    parser.add_argument("--version", action="version", version=f"sipcert {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show a traceback on errors (for bug reports)"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo.register(commands)
    selftest.register(commands)
    ua_commands.register(commands)
    sipua.register(commands)
    serve.register(commands)
    user.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code instead of exiting (testable in-process)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or usage error (2)
        return int(exc.code or 0)
    run: Command = args.run
    try:
        return run(args)
    except SipCertError as exc:
        if args.debug:
            raise
        print(f"sipcert: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("sipcert: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (``sipcert demo | head``): stop quietly, as other tools do.
        with contextlib.suppress(OSError, ValueError):  # no real stdout: nothing to silence
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:
        if args.debug:
            raise
        print(
            f"sipcert: internal error ({type(exc).__name__}); rerun with --debug and report it",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
