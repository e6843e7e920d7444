"""``sipcert demo``: draft-jennings-sipping-certs-02 end to end on loopback, narrated.

In a temporary folder: a test CA, a certificate Store for example.com and one for
example.net, a DNS responder for their SRV and A records; Alice (two devices) and Bob enroll
with Digest, Alice sends Bob a signed and encrypted MESSAGE, Bob calls Alice with an
encrypted SDP offer, Alice revokes one device and Bob's next message is encrypted only to
the other. Each step of the draft (§1, steps 0-5) is printed with what was checked. No root,
no preparation, no network beyond 127.0.0.1. Exit code 0 when every check held; 1 (and the
reason) when one did not.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(commands: Any) -> None:
    """Add the ``demo`` subcommand."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "demo",
        help="run the whole draft on loopback (Stores, DNS, enrollment, S/MIME over SIP)",
        description=__doc__,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object per step instead of text"
    )
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="keep the demo's files (CA, Store databases, UA homes) in DIR (absent or empty)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from sipcert.demo.run import main

    return main(sys.stdout, as_json=args.json, keep=args.keep)
