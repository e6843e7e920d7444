"""``sipcert db upgrade [--check]``: bring the certificate database's schema up to date.

The database is the one ``sipcert serve`` would use: ``--db URL``, else the ``db`` setting
of ``--config FILE``, else ``certificates.db`` in the data folder. Upgrading is idempotent
and safe while other Stores run on the same database (each backend migrates under its own
lock). ``sipcert serve`` does the same at start-up unless ``db_upgrade = false``; then run
this before starting the new version. ``--check`` changes nothing and exits 1 when an
upgrade is needed (0 when the schema is current).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from sipcert.errors import ConfigError
from sipcert.server.config import DEFAULT_DATA_DIR, read_config_file
from sipcert.storage import SchemaStatus, open_store

__all__ = ["register"]


def register(commands: Any) -> None:
    """Add the ``db`` subcommand and its ``upgrade`` action."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "db",
        help="manage the Store's certificate database (schema migrations)",
        description=__doc__,
        allow_abbrev=False,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    upgrade = actions.add_parser(
        "upgrade",
        help="create or migrate the schema to this sipcert's version",
        description=__doc__,
        allow_abbrev=False,
    )
    upgrade.add_argument("--config", type=Path, metavar="FILE", help="TOML configuration file")
    upgrade.add_argument(
        "--db", metavar="URL", help="sqlite:///path or postgresql://... (wins over --config)"
    )
    upgrade.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help=f"data folder of the default database (default: {DEFAULT_DATA_DIR})",
    )
    upgrade.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if an upgrade is needed"
    )
    upgrade.set_defaults(run=run)


def database_url(args: argparse.Namespace) -> str:
    """The database ``sipcert serve`` would open with the same file and flags."""
    if args.db:
        return str(args.db)
    doc: dict[str, Any] = read_config_file(args.config) if args.config is not None else {}
    db = doc.get("db")
    if db is not None:
        if not isinstance(db, str) or not db:
            raise ConfigError("db: expected a non-empty string")
        return db
    data_dir = args.data_dir.absolute() if args.data_dir is not None else None
    if data_dir is None:
        configured = doc.get("data_dir", DEFAULT_DATA_DIR)
        if not isinstance(configured, str):
            raise ConfigError("data_dir: expected a string")
        data_dir = Path(configured).absolute()
    return f"sqlite:///{data_dir / 'certificates.db'}"


async def _upgrade(url: str, check: bool) -> tuple[SchemaStatus, SchemaStatus]:
    store = open_store(url, migrate=False)
    try:
        before = await store.schema_status()
        after = before if check or before.up_to_date else await store.upgrade()
        return before, after
    finally:
        await store.close()


def run(args: argparse.Namespace) -> int:
    """Print one line saying what the schema was and is; the exit status."""
    before, after = asyncio.run(_upgrade(database_url(args), args.check))
    if args.check:
        if before.up_to_date:
            print(f"schema version {before.current} is current")
            return 0
        print(
            f"schema version {before.current} needs an upgrade to {before.latest}: "
            "run sipcert db upgrade",
            file=sys.stderr,
        )
        return 1
    if before == after:
        print(f"schema version {after.current} is current; nothing to do")
    else:
        print(f"schema upgraded from version {before.current} to {after.current}")
    return 0
