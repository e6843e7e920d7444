"""``sipcert serve``: run the certificate Store (draft §4.3-§5).

Settings come from ``--config FILE`` (TOML) with the flags laid over it; ``--dev`` fills in
everything else (a local test CA, SQLite and a users file in ./.sipcert-dev). Every setting
is described in docs/store.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sipcert.errors import ConfigError
from sipcert.proto.store import StorePolicy
from sipcert.server.config import (
    DEFAULT_DATA_DIR,
    DEFAULT_LISTEN,
    ConnectionLimits,
    Flags,
    StoreConfig,
    apply_flags,
    read_config_file,
)

__all__ = ["add_store_arguments", "build_config", "register"]


def register(commands: Any) -> None:
    """Add the ``serve`` subcommand (defaults shown are the built-in ones, under the file's)."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "serve",
        help="run the certificate Store (HTTPS, one certificate per domain by SNI)",
        description=__doc__,
        allow_abbrev=False,
    )
    add_store_arguments(parser)
    parser.add_argument(
        "--unix-socket",
        type=Path,
        metavar="PATH",
        help="also serve plain HTTP on this unix socket, for the nginx in front (edge mode); "
        "the domain of a request there comes from nginx's X-Sipcert-Domain header",
    )
    parser.set_defaults(run=run)


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that say which Store is meant (shared by ``serve``, ``publish`` and
    ``nginx-config``, so all three read the same configuration the same way)."""
    policy = StorePolicy()
    parser.add_argument("--config", type=Path, metavar="FILE", help="TOML configuration file")
    parser.add_argument(
        "--listen",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="address to listen on; repeatable ([ADDR]:PORT for IPv6); replaces the file's list "
        f"(default: {DEFAULT_LISTEN}; with --dev 127.0.0.1:8443)",
    )
    parser.add_argument(
        "--domain", action="append", default=[], metavar="NAME", help="a served domain; repeatable"
    )
    parser.add_argument(
        "--tls-cert",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="PEM certificate chain of the n-th --domain",
    )
    parser.add_argument(
        "--tls-key",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="PEM private key of the n-th --domain",
    )
    parser.add_argument(
        "--db",
        metavar="URL",
        help="certificate storage: sqlite:///path or postgresql://... (default in the data dir)",
    )
    parser.add_argument(
        "--credentials",
        metavar="URL",
        help="file:///users.json, kamailio+sqlite:///path or kamailio+postgresql://...",
    )
    parser.add_argument(
        "--dev", action="store_true", help="run on embedded defaults with a local test CA"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help=f"data folder (default: {DEFAULT_DATA_DIR}; with --dev .sipcert-dev)",
    )
    parser.add_argument("--workers", type=int, metavar="N", help="worker processes (default: 1)")
    parser.add_argument(
        "--max-age",
        type=int,
        metavar="SECONDS",
        help=f"Cache-Control max-age (default: {policy.max_age})",
    )
    parser.add_argument(
        "--max-per-aor",
        type=int,
        metavar="N",
        help=f"most valid certificates per AOR (default: {policy.max_per_aor})",
    )
    parser.add_argument(
        "--max-lifetime-days",
        type=int,
        metavar="DAYS",
        help=f"longest certificate lifetime accepted (default: {policy.max_lifetime.days})",
    )
    limits = ConnectionLimits()
    for flag, kind, metavar, default, what in (
        (
            "--tls-handshake-timeout",
            float,
            "SECONDS",
            limits.tls_handshake_timeout,
            "deadline of a TLS handshake",
        ),
        ("--header-timeout", float, "SECONDS", limits.header_timeout, "deadline of a request head"),
        (
            "--keepalive-timeout",
            float,
            "SECONDS",
            limits.keepalive_timeout,
            "idle time before a kept-alive connection is closed",
        ),
        (
            "--max-connections",
            int,
            "N",
            limits.max_connections,
            "connections per worker (lowered to fit the descriptor limit)",
        ),
        (
            "--max-head-size",
            int,
            "BYTES",
            limits.max_head_size,
            "largest request head; larger ones get 431",
        ),
    ):
        parser.add_argument(flag, type=kind, metavar=metavar, help=f"{what} (default: {default:g})")


def _domain_flags(args: argparse.Namespace) -> list[tuple[str, Path | None, Path | None]]:
    """Pair ``--domain``/``--tls-cert``/``--tls-key`` in order (``--dev`` may omit the files)."""
    names: list[str] = args.domain
    certs: list[Path] = args.tls_cert
    keys: list[Path] = args.tls_key
    if len(certs) != len(keys):
        raise ConfigError("give as many --tls-key as --tls-cert flags (one pair per --domain)")
    if certs and len(certs) != len(names):
        raise ConfigError(
            f"{len(names)} --domain but {len(certs)} --tls-cert/--tls-key pairs: pair them in order"
        )
    if not certs and names and not args.dev:
        raise ConfigError("each --domain needs its --tls-cert and --tls-key (or use --dev)")
    return [
        (name, certs[i] if certs else None, keys[i] if keys else None)
        for i, name in enumerate(names)
    ]


def build_config(args: argparse.Namespace) -> tuple[StoreConfig, list[str]]:
    """The validated configuration and, with ``--dev``, the lines to show the user."""
    from sipcert.server.dev import apply_dev_defaults

    doc: dict[str, Any] = read_config_file(args.config) if args.config is not None else {}
    flags = Flags(
        listen=args.listen,
        domains=_domain_flags(args),
        db=args.db,
        credentials=args.credentials,
        data_dir=args.data_dir,
        workers=args.workers,
        max_age=args.max_age,
        max_per_aor=args.max_per_aor,
        max_lifetime_days=args.max_lifetime_days,
        tls_handshake_timeout=args.tls_handshake_timeout,
        header_timeout=args.header_timeout,
        keepalive_timeout=args.keepalive_timeout,
        max_connections=args.max_connections,
        max_head_size=args.max_head_size,
        unix_socket=getattr(args, "unix_socket", None),
    )
    doc = apply_flags(doc, flags)
    notes: list[str] = []
    if args.dev:
        doc, notes = apply_dev_defaults(doc)
    return StoreConfig.from_document(doc), notes


def run(args: argparse.Namespace) -> int:
    """Validate the configuration, print the dev notes, serve until a signal."""
    from sipcert.server.run import run as run_store
    from sipcert.server.run import setup_logging

    config, notes = build_config(args)
    setup_logging(config.log_level, config.ops.log_format, config.ops.audit_log)

    def announce(message: str) -> None:
        # Only once the sockets are bound: a failed start is its one error line, no banner.
        if config.ops.log_format == "json":  # one object per line, the banner included
            from sipcert.server.jsonlog import json_record

            for line in (*notes, message):
                print(json_record("sipcert.cli", line), file=sys.stderr, flush=True)
            return
        for line in notes:
            print(line, file=sys.stderr)
        print(f"sipcert: {message}", file=sys.stderr, flush=True)

    def read_config() -> StoreConfig:  # SIGHUP: the same file and flags, read again
        return build_config(args)[0]

    return run_store(config, announce=announce, read_config=read_config)
