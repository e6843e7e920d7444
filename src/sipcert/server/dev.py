"""``sipcert serve --dev``: a Store that runs with no preparation, for development and demos.

Everything lives in one data folder (default ``./.sipcert-dev/``, which git ignores through
a ``.gitignore`` of its own): a local test CA created once and kept (``ca.pem`` and a 0600
``ca.key``), TLS certificates it issues for the served domains (default ``example.com`` and
``example.net``; re-issued when missing, expiring within a week or not from this CA), an
SQLite database and an empty users file. Clients trust ``ca.pem`` (draft §7.1 expects a
well-known CA; this one stands in for it).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from sipcert.errors import ConfigError, InputError, SipCertError
from sipcert.proto.ca import TestCA
from sipcert.proto.names import check_server_certificate
from sipcert.server.config import parse_listen

__all__ = ["DEFAULT_DEV_DIR", "DEFAULT_DEV_DOMAINS", "DEFAULT_DEV_LISTEN", "apply_dev_defaults"]

DEFAULT_DEV_DIR = Path(".sipcert-dev")
DEFAULT_DEV_DOMAINS = ("example.com", "example.net")
DEFAULT_DEV_LISTEN = "127.0.0.1:8443"
_RENEW_BEFORE = timedelta(days=7)
_TLS_DAYS = 90
_EMPTY_USERS = '{\n  "version": 1,\n  "users": {}\n}\n'


def _write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` atomically with ``mode`` (keys must never be readable by others)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _load_or_create_ca(folder: Path, now: datetime) -> TestCA:
    cert_path, key_path = folder / "ca.pem", folder / "ca.key"
    if cert_path.exists() and key_path.exists():
        try:
            ca = TestCA.load(cert_path.read_bytes(), key_path.read_bytes())
        except (OSError, InputError) as exc:
            raise ConfigError(
                f"dev CA in {folder} is unreadable ({exc}); delete ca.pem and ca.key to start over"
            ) from exc
        if ca.certificate.not_valid_after_utc > now + _RENEW_BEFORE:
            return ca
    ca = TestCA.create(now=now, name="sipcert dev CA")
    _write_private(key_path, ca.key_pem)
    _write_private(cert_path, ca.cert_pem, 0o644)
    return ca


def _tls_is_usable(ca: TestCA, domain: str, cert_path: Path, key_path: Path, now: datetime) -> bool:
    if not (cert_path.exists() and key_path.exists()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        check_server_certificate(cert, domain)
        cert.verify_directly_issued_by(ca.certificate)
    except (OSError, ValueError, TypeError, InvalidSignature, SipCertError):
        return False
    return cert.not_valid_after_utc > now + _RENEW_BEFORE


def apply_dev_defaults(
    doc: Mapping[str, Any], *, default_dir: Path = DEFAULT_DEV_DIR
) -> tuple[dict[str, Any], list[str]]:
    """``doc`` completed for ``--dev``, and the lines that tell the user how to use it.

    Settings already in ``doc`` (from ``--config`` or flags) are kept; domains given without
    TLS files get ones issued by the dev CA.
    """
    merged = dict(doc)
    now = datetime.now(UTC)
    folder = Path(merged.get("data_dir") or default_dir).absolute()
    merged["data_dir"] = str(folder)
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        ignore = folder / ".gitignore"
        if not ignore.exists():
            ignore.write_text("# sipcert --dev data: keys and databases, never commit\n*\n")
        (folder / "tls").mkdir(mode=0o700, exist_ok=True)
        ca = _load_or_create_ca(folder, now)
        raw_domains = merged.get("domain") or [{"name": name} for name in DEFAULT_DEV_DOMAINS]
        if not isinstance(raw_domains, list):
            raise ConfigError("domain: expected [[domain]] tables")
        domains: list[dict[str, Any]] = []
        for entry in raw_domains:
            entry = dict(entry) if isinstance(entry, dict) else entry
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                if "tls_cert" not in entry and "tls_key" not in entry:
                    name = entry["name"].lower().rstrip(".")
                    cert_path = folder / "tls" / f"{name}.pem"
                    key_path = folder / "tls" / f"{name}.key"
                    if not _tls_is_usable(ca, name, cert_path, key_path, now):
                        issued = ca.issue([name], now=now, days=_TLS_DAYS)
                        _write_private(key_path, issued.key_pem)
                        _write_private(cert_path, issued.cert_pem + ca.cert_pem, 0o644)
                    entry["tls_cert"] = str(cert_path)
                    entry["tls_key"] = str(key_path)
            domains.append(entry)
        merged["domain"] = domains
        merged.setdefault("listen", [DEFAULT_DEV_LISTEN])
        merged.setdefault("db", f"sqlite:///{folder / 'certificates.db'}")
        users = folder / "users.json"
        if "credentials" not in merged:
            merged["credentials"] = f"file:{users}"
            if not users.exists():
                _write_private(users, _EMPTY_USERS.encode())
    except OSError as exc:
        raise ConfigError(f"dev data folder {folder}: {exc.strerror or exc}") from exc
    return merged, _instructions(merged, folder)


def _instructions(doc: Mapping[str, Any], folder: Path) -> list[str]:
    ca_file = folder / "ca.pem"
    names = [e["name"] for e in doc["domain"] if isinstance(e, dict) and "name" in e]
    first = names[0] if names else "example.com"
    listen = doc["listen"][0] if doc.get("listen") else DEFAULT_DEV_LISTEN
    try:
        address = parse_listen(str(listen))
    except ConfigError:
        address = parse_listen(DEFAULT_DEV_LISTEN)
    host = "127.0.0.1" if address.host in ("0.0.0.0", "") else address.host  # noqa: S104
    port = address.port
    credentials = str(doc.get("credentials", ""))
    url = f"https://{first}:{port}/search-cgi?email=alice%40{first}"
    curl = f"curl --cacert {ca_file} --resolve {first}:{port}:{host}"
    store = f"--store {host}:{port} --ca-file {ca_file}"
    return [
        f"sipcert dev Store: data in {folder}",
        f"  trust this CA:   {ca_file}",
        f"  domains:         {', '.join(names)} on {host}:{port}",
        f"  credentials:     {_without_password(credentials)}",
        "",
        *_add_user_lines(credentials, first),
        "  2. make a self-signed certificate for alice:",
        "       openssl req -x509 -newkey rsa:2048 -nodes -days 30 -keyout alice.key"
        f" -out alice.pem -subj /CN=alice@{first} -addext subjectAltName=URI:sip:alice@{first}",
        "  3. enroll it (draft §5):",
        f"       {curl} --digest -u alice -T alice.pem '{url}'",
        "  4. fetch it (draft §4.3):",
        f"       {curl} -o alice.der '{url}'",
        "  5. or let sipcert do both (--store connects here; TLS must still name the domain):",
        f"       sipcert enroll alice@{first} {store}",
        f"       sipcert fetch alice@{first} {store}",
        f"     without --store, sipcert finds a Store by DNS SRV (_certificates._tcp.{first}):"
        " --dns HOST:PORT picks the DNS server",
    ]


def _without_password(url: str) -> str:
    """``url`` with any password in it replaced (a PostgreSQL URL may hold one)."""
    return re.sub(r"^([a-z+]+://[^:/@]*):[^@/]*@", r"\1:***@", url)


def _add_user_lines(credentials: str, domain: str) -> list[str]:
    """Step 1 for this credentials source: sipcert manages only users files."""
    if credentials.startswith("file:"):
        return [
            "  1. add a user (the password is read from standard input or prompted):",
            f"       sipcert user add alice@{domain} --credentials {credentials}",
        ]
    return [
        "  1. add the user in Kamailio's subscriber table, which this Store reads",
        "     (sipcert user manages only file: credentials), e.g.:",
        f"       kamctl add alice@{domain} PASSWORD",
    ]
