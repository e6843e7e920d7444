"""sipcert.cli: the ``sipcert`` command.

:func:`entry` is the console script. It imports the command line only when called, inside
its own ``try``, so that Ctrl-C while the (slow) imports run ends with exit 130 and one line,
never a traceback (README.md, "Exit codes").
"""

import sys

__all__ = ["EXIT_INTERRUPTED", "entry"]

#: Exit code after SIGINT (Ctrl-C): 128 + SIGINT, as shells report it.
EXIT_INTERRUPTED = 130


def entry() -> None:
    """Console-script entry point."""
    try:
        from sipcert.cli.main import main

        code = main()
    except KeyboardInterrupt:
        print("sipcert: interrupted", file=sys.stderr)
        code = EXIT_INTERRUPTED
    sys.exit(code)
