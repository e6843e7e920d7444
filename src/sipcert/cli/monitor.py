"""``sipcert monitor AOR``: the subscriber's own check of the Store's transparency log.

It reads the log entries added since its last run (over the strictly checked TLS
connection, with the log key pinned on first use) and raises an alarm -- one line, a JSON
event, exit code 16 -- for every enrollment of the AOR whose certificate is not one of the
devices this home holds (current or retired). A split view is exit code 15 (ForkError).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from sipcert.client import AsyncUA
from sipcert.client.home import Home, default_home
from sipcert.errors import ConfigError, LogFormatError
from sipcert.proto.aor import parse_aor
from sipcert.proto.note import Verifier

__all__ = ["EXIT_ALARM", "register"]

#: The monitor found an enrollment that is not one of this user's devices (README.md).
EXIT_ALARM = 16


def register(commands: Any) -> None:
    """Add ``monitor``."""
    from sipcert.cli.ua import _common

    text = "alarm on log entries for an AOR that are not this user's devices (issue 14)"
    parser = commands.add_parser(
        "monitor", help=text, description=text, parents=[_common()], allow_abbrev=False
    )
    parser.add_argument("aor")
    parser.add_argument(
        "--witness",
        action="append",
        default=[],
        metavar="VKEY",
        help="a witness's cosignature key (repeatable)",
    )
    parser.add_argument(
        "--quorum", type=int, default=0, help="cosignatures required of the --witness keys"
    )
    parser.set_defaults(run=_monitor)


def _monitor(args: argparse.Namespace) -> int:
    from sipcert.cli.ua import _run

    aor = parse_aor(args.aor)
    try:
        witnesses = [Verifier.parse(v) for v in args.witness]
    except LogFormatError as exc:
        raise ConfigError(f"--witness: {exc}") from exc
    own = Home(args.home or default_home()).known_fingerprints(aor)
    if not own:
        raise ConfigError(f"this home holds no device of {aor}: enroll first, or give --home")

    async def work(ua: AsyncUA) -> tuple[int, list[Any]]:
        client = await ua.log_client(aor, witnesses=witnesses, quorum=args.quorum)
        alarms = await client.monitor(str(aor), sorted(own))
        checkpoint = await client.checkpoint()
        return checkpoint.size, alarms

    size, alarms = _run(args, work)
    for alarm in alarms:
        if args.json:
            event = {"event": "alarm", "aor": str(aor), "index": alarm.index}
            event.update(sha256=alarm.cert_sha256, sequenced_ms=alarm.sequenced_ms)
            print(json.dumps(event), flush=True)
        else:
            print(alarm.line(str(aor)), flush=True)
    code = EXIT_ALARM if alarms else 0
    if args.json:
        summary = {"ok": code == 0, "exit_code": code, "aor": str(aor), "log_size": size}
        summary.update(alarms=len(alarms), own_devices=sorted(own))
        print(json.dumps(summary), flush=True)
    elif not alarms:
        print(f"{aor}: the log (size {size}) holds no enrollment but your {len(own)} device(s)")
    return code
