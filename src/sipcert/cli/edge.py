"""``sipcert publish`` and ``sipcert nginx-config``: edge mode (issue 13, docs/deploy.md).

``publish DIR`` writes every AOR's GET answer as files (:mod:`sipcert.server.publish`) and,
without ``--once``, keeps them current from the database's change feed until SIGTERM.
``nginx-config DIR`` prints the nginx configuration that serves those files and proxies
everything else to the Store's unix socket (:mod:`sipcert.server.nginx`). Both read the
Store's configuration with the same flags as ``sipcert serve``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

from sipcert.cli.serve import add_store_arguments, build_config

__all__ = ["register"]


def register(commands: Any) -> None:
    """Add ``publish`` and ``nginx-config``."""
    publish: argparse.ArgumentParser = commands.add_parser(
        "publish",
        help="write every AOR's answer as files for nginx (edge mode)",
        description=__doc__,
        allow_abbrev=False,
    )
    publish.add_argument("dir", type=Path, metavar="DIR", help="folder nginx serves from")
    publish.add_argument(
        "--once", action="store_true", help="publish everything and exit (default: follow)"
    )
    publish.add_argument(
        "--nginx-pid",
        type=Path,
        metavar="FILE",
        help="nginx's pid file: keep nginx's map of every AOR current by reloading it "
        "(GETs then cost no symlink resolution; default: [edge] nginx_pid, else no map)",
    )
    publish.add_argument(
        "--map-interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="longest wait of a changed AOR for the next map (default: 60)",
    )
    add_store_arguments(publish)
    publish.set_defaults(run=run_publish)

    nginx: argparse.ArgumentParser = commands.add_parser(
        "nginx-config",
        help="print an nginx configuration for edge mode",
        description=__doc__,
        allow_abbrev=False,
    )
    nginx.add_argument("dir", type=Path, metavar="DIR", help="the folder `sipcert publish` writes")
    nginx.add_argument(
        "--store-socket",
        type=Path,
        required=True,
        metavar="PATH",
        help="the Store's unix socket (sipcert serve --unix-socket)",
    )
    nginx.add_argument(
        "--prefix",
        type=Path,
        default=Path("/var/lib/sipcert/nginx"),
        metavar="DIR",
        help="nginx's own files: pid, error and access logs, temporary files "
        "(default: /var/lib/sipcert/nginx)",
    )
    nginx.add_argument(
        "--user",
        metavar="'USER [GROUP]'",
        help="who nginx's workers run as when started by root (they must read DIR and be "
        "in the group of the Store's socket)",
    )
    add_store_arguments(nginx)  # --listen and --workers are nginx's here
    nginx.set_defaults(run=run_nginx_config)


def run_publish(args: argparse.Namespace) -> int:
    """Publish once, or publish then follow the change feed until SIGTERM/SIGINT."""
    from sipcert.errors import ConfigError
    from sipcert.server.publish import MAP_INTERVAL, Publisher, take_lock
    from sipcert.server.run import setup_logging
    from sipcert.storage import open_store

    config, _notes = build_config(args)  # the dev notes are about serving: not shown here
    setup_logging(config.log_level, config.ops.log_format)

    lock = take_lock(args.dir)
    if lock is None:
        raise ConfigError(
            f"edge folder {args.dir}: another publisher is using it ({args.dir}/.lock is "
            "held: a `sipcert publish` or a `sipcert serve` with [edge] publish_dir)"
        )

    async def main() -> int:
        storage = open_store(config.db, migrate=config.ops.db_upgrade)
        try:
            publisher = Publisher(
                args.dir,
                storage,
                domains=config.domain_names,
                max_age=config.policy.max_age,
                nginx_pid=args.nginx_pid or config.edge_nginx_pid,
                map_interval=MAP_INTERVAL if args.map_interval is None else args.map_interval,
            )
            if args.once:
                count = await publisher.publish_all()
                print(f"sipcert: published {count} AOR(s) to {args.dir}", file=sys.stderr)
                await publisher.refresh_map()  # the map, and a reload with a pid file
                return 0
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)

            def ready() -> None:
                print(
                    f"sipcert: published {publisher.published} AOR(s) to {args.dir}; "
                    "following changes",
                    file=sys.stderr,
                    flush=True,
                )

            await publisher.follow(stop, ready=ready)
            return 0
        finally:
            await storage.close()

    with lock:
        return asyncio.run(main())


def run_nginx_config(args: argparse.Namespace) -> int:
    """Print the configuration (nothing is written or started)."""
    from sipcert.server.nginx import EdgeDomain, render

    config, _notes = build_config(args)
    text = render(
        [EdgeDomain(d.name, d.tls_cert, d.tls_key) for d in config.domains],
        publish_dir=args.dir,
        store_socket=args.store_socket,
        listen=config.listen,
        prefix=args.prefix,
        workers=config.workers,
        max_age=config.policy.max_age,
        user=args.user,
    )
    sys.stdout.write(text)
    return 0
