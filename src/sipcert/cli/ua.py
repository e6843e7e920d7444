"""``sipcert locate|fetch|enroll|status|renew|revoke``: the UA side on the command line.

Argument parsing and output only; the work is :class:`sipcert.client.AsyncUA`. Exit codes:
0 success, 1 a negative answer (no usable certificate, not enrolled, nothing to revoke),
2 usage, and the ``exit_code`` of the error class otherwise (3 DNS/location, 5 TLS name
mismatch, 6 authentication, 7 refused by the Store, 9 network/TLS, 11 unexpected Store
answer, ...). Passwords come from ``--password-file``, else standard input when it is not a
terminal, else a prompt -- never from a flag (it would show in ``ps`` and shell history).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable, Coroutine
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sipcert.client.defaults import (
    DEFAULT_CACHE_TTL,
    DEFAULT_DEVICE,
    DEFAULT_KEY_TYPE,
    DEFAULT_RENEW_WINDOW,
    DEFAULT_VALIDITY,
    KEY_TYPES,
    default_home,
)
from sipcert.errors import ConfigError, LogFormatError
from sipcert.proto.aor import AOR, parse_aor

# The client (httpx, dnspython, cryptography) is imported by the commands that run, not to
# build the parser: ``sipcert fetch --help`` stays fast (issue 13).
if TYPE_CHECKING:
    from cryptography import x509

    from sipcert.client.fetch import FetchResult
    from sipcert.client.locate import Location
    from sipcert.client.ua import AsyncUA, ClientConfig, Credentials
    from sipcert.proto.note import Verifier

__all__ = ["register"]

T = TypeVar("T")
_MAX_SECRET_FILE = 4096


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("common options")
    group.add_argument("--dns", metavar="HOST[:PORT]", help="DNS server to use (default: system)")
    group.add_argument(
        "--store",
        metavar="HOST[:PORT]",
        help="use this Store address instead of DNS location (TLS must still name the AOR domain)",
    )
    group.add_argument(
        "--ca-file", type=Path, metavar="FILE", help="trust only these CAs (PEM) for the Store"
    )
    group.add_argument(
        "--home",
        type=Path,
        metavar="DIR",
        help=f"key and certificate home (default {default_home()})",
    )
    group.add_argument(
        "--cache-ttl",
        type=float,
        default=DEFAULT_CACHE_TTL,
        metavar="SECONDS",
        help="cache fetched certificates under the home this long (default 0: no cache, draft §5)",
    )
    group.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for each network step",
    )
    group.add_argument(
        "--sip", action="store_true", help="query with sip= instead of email= (draft §8)"
    )
    group.add_argument("--json", action="store_true", help="print one JSON object")
    group.add_argument("-v", "--verbose", action="store_true", help="narrate each step on stderr")
    group.add_argument(
        "--fallback-port",
        type=int,
        default=443,
        help=argparse.SUPPRESS,  # for tests only: certificates.<domain> is on 443 (draft §4.5)
    )
    return common


def _window_option(parser: argparse.ArgumentParser, text: str) -> None:
    """``--window DAYS``: how close to expiry a certificate is renewed (draft §5)."""
    parser.add_argument(
        "--window", type=float, default=DEFAULT_RENEW_WINDOW.days, metavar="DAYS", help=text
    )


def _credential_options(
    parser: argparse.ArgumentParser, *, key: bool, existing_key: bool = False
) -> None:
    """Password, user name and device; with ``key`` the options of a key this command may
    create (its passphrase, its certificate's lifetime); with ``existing_key`` only the
    passphrase that unlocks this device's key."""
    group = parser.add_argument_group("credentials")
    group.add_argument(
        "--password-file",
        type=Path,
        metavar="FILE",
        help="file holding the SIP password (else standard input, else a prompt)",
    )
    group.add_argument("--username", help="Digest user name (default: the AOR's user part)")
    group.add_argument("--device", default=DEFAULT_DEVICE, help="this device's name in the home")
    if key or existing_key:
        group.add_argument(
            "--key-passphrase-file",
            type=Path,
            metavar="FILE",
            help="encrypt the private key with the passphrase in FILE"
            if key
            else "the passphrase of this device's private key, when it is encrypted",
        )
    if key:
        group.add_argument(
            "--validity",
            type=float,
            default=DEFAULT_VALIDITY.days,
            metavar="DAYS",
            help=f"certificate lifetime (default {DEFAULT_VALIDITY.days})",
        )


def register(commands: Any) -> None:
    """Add the UA subcommands."""
    common = _common()

    def add(name: str, help_text: str, run: Callable[[argparse.Namespace], int]) -> Any:
        parser = commands.add_parser(
            name, help=help_text, description=help_text, parents=[common], allow_abbrev=False
        )
        parser.set_defaults(run=run)
        return parser

    parser = add("locate", "show how the Store of an AOR is found (draft §4.1, §4.5)", _locate)
    parser.add_argument("aor")

    parser = add("fetch", "retrieve and check an AOR's certificates (draft §4.3, §4.5)", _fetch)
    parser.add_argument("aor")
    parser.add_argument("--out", type=Path, metavar="DIR", help="write each as <sha256>.pem")
    log_options(parser)

    parser = add("enroll", "create a certificate and store it at the Store (draft §5.1)", _enroll)
    parser.add_argument("aor")
    _credential_options(parser, key=True)
    parser.add_argument(
        "--key-type",
        choices=list(KEY_TYPES),
        default=DEFAULT_KEY_TYPE,
        help="the device key: p256 (default: small bodies, fast signing), p384, or rsa2048/"
        "rsa3072 for peers that only do RSA key transport (RFC 3261 §23)",
    )

    parser = add("status", "check this device's certificate at the Store (draft §5.1)", _status)
    parser.add_argument("aor", nargs="?")
    parser.add_argument("--device", default=DEFAULT_DEVICE, help="this device's name in the home")
    _window_option(parser, "a certificate expiring within DAYS is due for renewal (draft §5)")

    parser = add("renew", "enroll a new certificate near expiry, revoke the old (draft §5)", _renew)
    parser.add_argument("aor", nargs="?")
    _credential_options(parser, key=True)
    _window_option(parser, "a certificate expiring within DAYS is due for renewal (draft §5)")
    parser.add_argument("--force", action="store_true", help="renew even outside the window")

    parser = add("revoke", "remove certificates from the Store (draft §5)", _revoke)
    parser.add_argument("aor")
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--cert",
        metavar="HASH",
        help="the certificate's certHash (RFC 4387, 27 characters) or SHA-256 fingerprint",
    )
    which.add_argument("--all", action="store_true", help="every certificate of the AOR")
    _credential_options(parser, key=False)


# -- helpers -------------------------------------------------------------------------------


def log_options(parser: argparse.ArgumentParser) -> None:
    """The transparency-log policy of every command that fetches certificates (``fetch``,
    ``ua``, ``message send``; issue 14): on by default, ``k`` of ``n`` witnesses."""
    group = parser.add_argument_group("transparency log (docs/transparency.md)")
    group.add_argument(
        "--verify-log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep only certificates the Store's transparency log proves, when it publishes "
        "one (the default; --no-verify-log trusts the Store alone, docs/transparency.md)",
    )
    group.add_argument(
        "--log-witness",
        action="append",
        default=[],
        metavar="VKEY",
        help="a witness's cosignature key, name+keyid+base64 (repeatable: the n of k-of-n)",
    )
    group.add_argument(
        "--log-quorum",
        type=int,
        default=0,
        metavar="K",
        help="cosignatures of distinct --log-witness keys every checkpoint needs (default 0)",
    )


def _config(args: argparse.Namespace) -> ClientConfig:
    from sipcert.client.ua import ClientConfig

    return ClientConfig(
        dns=args.dns,
        ca_file=args.ca_file,
        home=args.home,
        timeout=args.timeout,
        cache_ttl=args.cache_ttl,
        persist_cache=True,
        attribute="sip" if args.sip else "email",
        fallback_port=args.fallback_port,
        store=args.store,
        transparency=getattr(args, "verify_log", True),
        log_witnesses=_witness_keys(getattr(args, "log_witness", [])),
        log_quorum=getattr(args, "log_quorum", 0),
    )


def _witness_keys(values: list[str]) -> tuple[Verifier, ...]:
    if not values:
        return ()  # the log's note formats are loaded for a log that is read (issue 13)
    from sipcert.proto.note import Verifier

    try:
        return tuple(Verifier.parse(v) for v in values)
    except LogFormatError as exc:
        raise ConfigError(f"--log-witness: {exc}") from exc


def _run(args: argparse.Namespace, work: Callable[[AsyncUA], Coroutine[Any, Any, T]]) -> T:
    import asyncio  # here, not at the top: ``--help`` needs no event loop (issue 13)

    from sipcert.client.ua import AsyncUA

    def narrate(line: str) -> None:
        print(f"  {line}", file=sys.stderr)

    async def main() -> T:
        async with AsyncUA(_config(args), narrate=narrate if args.verbose else None) as ua:
            return await work(ua)

    return asyncio.run(main())


def _read_secret_file(path: Path, what: str) -> str:
    try:
        data = path.read_bytes()[: _MAX_SECRET_FILE + 1]
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} file {path}: {exc.strerror}") from exc
    if len(data) > _MAX_SECRET_FILE:
        raise ConfigError(f"the {what} file {path} is too large")
    return data.decode("utf-8").removesuffix("\n").removesuffix("\r")


def read_password(args: argparse.Namespace, aor: AOR) -> str:
    """``--password-file``, else standard input when not a terminal, else a prompt."""
    if args.password_file is not None:
        password = _read_secret_file(args.password_file, "password")
    elif not sys.stdin.isatty():
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    else:
        password = getpass.getpass(f"SIP password for {aor}: ")
    if not password:
        raise ConfigError("empty password")
    return password


def _passphrase(args: argparse.Namespace) -> bytes | None:
    if args.key_passphrase_file is None:
        return None
    text = _read_secret_file(args.key_passphrase_file, "key passphrase")
    if not text:
        raise ConfigError("the key passphrase file is empty")
    return text.encode("utf-8")


def _credentials(args: argparse.Namespace, aor: AOR) -> Credentials:
    from sipcert.client.ua import Credentials

    return Credentials(password=read_password(args, aor), username=args.username)


def _own_aor(args: argparse.Namespace) -> AOR:
    from sipcert.client.home import Home

    if args.aor is not None:
        return parse_aor(args.aor)
    home = Home(args.home or default_home())
    aors = home.aors()
    if len(aors) != 1:
        found = ", ".join(map(str, aors)) or "none"
        raise ConfigError(f"give the AOR: the home {home.root} holds {found}")
    return aors[0]


def _cert_json(cert: x509.Certificate) -> dict[str, Any]:
    from cryptography.hazmat.primitives import serialization

    from sipcert.proto.certs import san_uris, sha256_fingerprint

    return {
        "sha256": sha256_fingerprint(cert),
        "serial": format(cert.serial_number, "x"),
        "san": san_uris(cert),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "pem": cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
    }


def _noted(cert: x509.Certificate, fetched: FetchResult) -> dict[str, Any]:
    """:func:`_cert_json` plus the Store's device label and enrolled-on date (display only)."""
    note = fetched.note(cert)
    enrolled = note.enrolled.isoformat() if note.enrolled is not None else None
    return {**_cert_json(cert), "label": note.label, "enrolled": enrolled}


def _note_lines(cert: x509.Certificate, fetched: FetchResult) -> list[str]:
    note = fetched.note(cert)
    lines = [f"    label {note.label}"] if note.label is not None else []
    if note.enrolled is not None:
        lines.append(f"    enrolled on {note.enrolled.isoformat()}")
    return lines


def _print_json(value: dict[str, Any], code: int = 0) -> int:
    """Print a command's one JSON object, with ``ok`` and ``exit_code`` (README.md, "JSON")."""
    print(json.dumps({"ok": code == 0, "exit_code": code, **value}, indent=2))
    return code


# -- commands ------------------------------------------------------------------------------


def _locate(args: argparse.Namespace) -> int:
    # The locator alone, as AsyncUA.locate uses it: no HTTP stack or home to load for a
    # command that only asks DNS (issue 13: start-up time).
    import asyncio

    from sipcert.client.locate import DeferredResolver, Locator, parse_store_address

    aor = parse_aor(args.aor)
    if not args.timeout > 0:
        raise ConfigError(f"timeout must be positive, not {args.timeout}")

    def narrate(line: str) -> None:
        print(f"  {line}", file=sys.stderr)

    async def locate() -> Location:
        locator = Locator(
            DeferredResolver(args.dns, timeout=args.timeout),
            fallback_port=args.fallback_port,
            system_addresses=args.dns is None,
            store=parse_store_address(args.store) if args.store else None,
        )
        return await locator.locate(
            aor, attribute="sip" if args.sip else "email", narrate=narrate if args.verbose else None
        )

    location = asyncio.run(locate())
    if args.json:
        _print_json(
            {
                "aor": str(aor),
                "url": location.url,
                "from_srv": location.from_srv,
                "targets": [
                    {"host": t.host, "port": t.port, "priority": t.priority, "weight": t.weight}
                    for t in location.targets
                ],
                "steps": list(location.steps),
            }
        )
    else:
        for step in location.steps:
            print(step)
    return 0


def _fetch_json(result: FetchResult) -> dict[str, Any]:
    return {
        "aor": str(result.aor),
        "url": result.url,
        "certificates": [_noted(c, result) for c in result.kept],
        "discarded": [{"sha256": d.sha256, "reason": d.reason.value} for d in result.discarded],
    }


def _fetch(args: argparse.Namespace) -> int:
    from sipcert.proto.certs import san_uris, sha256_fingerprint

    aor = parse_aor(args.aor)
    result = _run(args, lambda ua: ua.fetch(aor))
    if args.out is not None:
        from cryptography.hazmat.primitives import serialization  # PEM only for --out

        args.out.mkdir(parents=True, exist_ok=True)
        for cert in result.kept:
            path = args.out / f"{sha256_fingerprint(cert)}.pem"
            path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    code = 0 if result.kept else 1
    if args.json:
        return _print_json(_fetch_json(result), code)
    else:
        source = " (cached)" if result.from_cache else ""
        print(f"{aor}: {len(result.kept)} certificate(s) from {result.url}{source}")
        for cert in result.kept:
            print(f"  sha256 {sha256_fingerprint(cert)}")
            print(f"    serial {format(cert.serial_number, 'x')}")
            print(f"    san {', '.join(san_uris(cert))}")
            print(f"    not after {cert.not_valid_after_utc.isoformat()}")
            for line in _note_lines(cert, result):
                print(line)
        for item in result.discarded:
            print(f"  discarded {item.sha256}: {item.reason.value} ({item.detail})")
    return code


def _enroll(args: argparse.Namespace) -> int:
    from sipcert.proto.certs import KeyType, sha256_fingerprint

    aor = parse_aor(args.aor)
    credentials = _credentials(args, aor)
    passphrase = _passphrase(args)
    enrollment = _run(
        args,
        lambda ua: ua.enroll(
            aor,
            credentials,
            device=args.device,
            validity=timedelta(days=args.validity),
            key_type=KeyType(args.key_type),
            passphrase=passphrase,
        ),
    )
    cert = enrollment.certificate
    if args.json:
        _print_json(
            {
                "aor": str(aor),
                "device": enrollment.device,
                "url": enrollment.url,
                "status": enrollment.status,
                "home": str(enrollment.directory),
                "certificate": _cert_json(cert),
            }
        )
    else:
        state = "new" if enrollment.status == 201 else "already stored"
        print(f"enrolled {aor} (device {enrollment.device}): {sha256_fingerprint(cert)} ({state})")
        print(f"  not after {cert.not_valid_after_utc.isoformat()}; key in {enrollment.directory}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from sipcert.proto.certs import sha256_fingerprint

    aor = _own_aor(args)
    status = _run(
        args, lambda ua: ua.status(aor, device=args.device, window=timedelta(days=args.window))
    )
    for warning in status.warnings:
        print(f"sipcert: warning: {warning}", file=sys.stderr)
    if args.json:
        return _print_json(
            {
                "aor": str(aor),
                "device": status.device,
                "url": status.fetch.url,
                "enrolled": status.ok,
                "certificate": _noted(status.certificate, status.fetch)
                if status.certificate
                else None,
                "in_store": status.in_store,
                "expires_in_days": status.expires_in.days if status.expires_in else None,
                "unknown": [sha256_fingerprint(c) for c in status.unknown],
                "warnings": list(status.warnings),
            },
            0 if status.ok else 1,
        )
    elif status.certificate is not None:
        state = "enrolled" if status.in_store else "NOT at the Store"
        print(f"{aor} (device {status.device}): {state}")
        print(f"  sha256 {sha256_fingerprint(status.certificate)}")
        print(f"  not after {status.certificate.not_valid_after_utc.isoformat()}")
        for line in _note_lines(status.certificate, status.fetch):
            print(line[2:])
        print(f"  the Store serves {len(status.fetch.kept)} certificate(s) for {aor}")
    else:
        print(f"{aor} (device {status.device}): not enrolled")
    return 0 if status.ok else 1


def _renew(args: argparse.Namespace) -> int:
    from sipcert.proto.certs import sha256_fingerprint

    aor = _own_aor(args)
    credentials = _credentials(args, aor)
    passphrase = _passphrase(args)
    renewal = _run(
        args,
        lambda ua: ua.renew(
            aor,
            credentials,
            device=args.device,
            window=timedelta(days=args.window),
            validity=timedelta(days=args.validity),
            passphrase=passphrase,
            force=args.force,
        ),
    )
    if renewal.revoke_error:
        print(
            f"sipcert: warning: old certificate not revoked: {renewal.revoke_error}",
            file=sys.stderr,
        )
    if args.json:
        _print_json(
            {
                "aor": str(aor),
                "renewed": renewal.renewed,
                "reason": renewal.reason,
                "old": sha256_fingerprint(renewal.old) if renewal.old else None,
                "new": _cert_json(renewal.new.certificate) if renewal.new else None,
                "old_revoked": renewal.old_revoked,
            }
        )
    elif renewal.new is None:
        print(f"{aor}: not renewed: {renewal.reason}")
    else:
        print(f"{aor}: renewed, new certificate {sha256_fingerprint(renewal.new.certificate)}")
        if renewal.old is not None:
            state = "revoked" if renewal.old_revoked else "still at the Store"
            print(f"  old certificate {sha256_fingerprint(renewal.old)} {state}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from sipcert.client.ua import parse_cert_reference

    aor = parse_aor(args.aor)
    parse_cert_reference(args.cert)  # malformed --cert is exit 4, before any password prompt
    credentials = _credentials(args, aor)
    revocation = _run(
        args,
        lambda ua: ua.revoke(
            aor, credentials, cert=args.cert, everything=args.all, device=args.device
        ),
    )
    if args.json:
        _print_json(
            {
                "aor": str(aor),
                "all": revocation.everything,
                "revoked": list(revocation.sha256),
                "cert_hashes": list(revocation.cert_hashes),
            }
        )
    elif revocation.everything:
        print(f"{aor}: every certificate revoked")
    else:
        print(f"{aor}: revoked {', '.join(revocation.sha256)}")
    return 0
