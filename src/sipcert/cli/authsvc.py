"""``sipcert authsvc``: run the authentication service of draft §6 (docs/delegated.md).

``run CONFIG`` enrolls or renews every delegating subscriber's certificate, then serves
until SIGINT or SIGTERM, checking the certificates again once a day; ``sync CONFIG`` does
the enrollment check once; ``revoke CONFIG AOR`` ends a subscriber's delegation (the
certificate is deleted at the Store and the key forgotten).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
from pathlib import Path
from typing import Any

from sipcert.authsvc import AuthService, load_config
from sipcert.client import AsyncUA
from sipcert.errors import SipCertError
from sipcert.proto.aor import parse_aor

__all__ = ["register"]

#: How often ``run`` repeats the draft §5.1 start-up check (renewal inside the window).
_RESYNC_SECONDS = 24 * 3600.0


def register(commands: Any) -> None:
    """Add ``authsvc`` with ``run``, ``sync`` and ``revoke``."""
    text = "the authentication service that signs and verifies for phones (draft §6)"
    parser = commands.add_parser("authsvc", help=text, description=text, allow_abbrev=False)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, help_text, function in (
        ("run", "enroll/renew, then serve until SIGINT or SIGTERM", _run),
        ("sync", "enroll or renew every delegated certificate once", _sync),
        ("revoke", "end one subscriber's delegation at the Store", _revoke),
    ):
        sub = actions.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("config", type=Path, help="the TOML file (mode 0600)")
        if name == "revoke":
            sub.add_argument("aor", help="the subscriber, user@domain")
        sub.add_argument("--json", action="store_true", help="JSON lines on standard output")
        sub.set_defaults(run=function)


def _say(args: argparse.Namespace, event: dict[str, Any], line: str) -> None:
    print(json.dumps(event) if args.json else line, flush=True)


async def _synced(args: argparse.Namespace, service: AuthService) -> None:
    for result in await service.sync():
        _say(
            args,
            {"event": result.action, "aor": str(result.aor), "sha256": result.sha256},
            f"{result.aor}: {result.action} (certificate {result.sha256[:16]}...)",
        )


def _sync(args: argparse.Namespace) -> int:
    config = load_config(args.config)

    async def main() -> None:
        async with AsyncUA(config.client) as client:
            await _synced(args, AuthService(config, client))

    asyncio.run(main())
    return 0


def _revoke(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    aor = parse_aor(args.aor)

    async def main() -> None:
        async with AsyncUA(config.client) as client:
            revoked = await AuthService(config, client).revoke(aor)
        _say(
            args,
            {"event": "revoked", "aor": str(aor), "sha256": list(revoked.sha256)},
            f"{aor}: delegated certificate revoked ({', '.join(revoked.cert_hashes)})",
        )

    asyncio.run(main())
    return 0


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        async with AsyncUA(config.client) as client, AuthService(config, client) as service:
            await _synced(args, service)
            host, port = service.transport.local_address(config.listen.transport)
            where = f"{config.listen.transport}:{host}:{port}"
            _say(args, {"event": "listening", "address": where}, f"authsvc listening on {where}")
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_RESYNC_SECONDS):
                        await stop.wait()
                if not stop.is_set():
                    try:
                        await _synced(args, service)
                    except SipCertError as exc:  # the Store may be down for a while
                        _say(args, {"event": "sync-failed", "error": str(exc)}, f"sync: {exc}")

    asyncio.run(main())
    return 0
