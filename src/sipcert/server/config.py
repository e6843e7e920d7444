"""The Store's configuration: a TOML file, command-line flags over it, one validated result.

Every setting is documented in ``docs/store.md``. The pipeline is: :func:`read_config_file`
turns the file into a plain document (relative paths resolved against the file's folder),
:func:`apply_flags` lays the flags over it (flags win; paths relative to the working
directory), ``--dev`` may fill in defaults (:mod:`sipcert.server.dev`), and
:meth:`StoreConfig.from_document` validates everything at once, naming the setting at fault.
"""

from __future__ import annotations

import ipaddress
import socket
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from sipcert.errors import AORError, ConfigError, InputTooLargeError
from sipcert.proto.aor import normalize_domain
from sipcert.proto.ratelimit import LoginLimits
from sipcert.proto.store import StorePolicy
from sipcert.server.tlog import TransparencyConfig, parse_transparency

__all__ = [
    "DEFAULT_DATA_DIR",
    "DEFAULT_LISTEN",
    "ConnectionLimits",
    "DomainConfig",
    "Flags",
    "ListenAddress",
    "OpsConfig",
    "StoreConfig",
    "apply_flags",
    "parse_listen",
    "read_config_file",
]

#: Listening address when none is configured (HTTPS default port, all IPv4 interfaces).
DEFAULT_LISTEN = "0.0.0.0:443"
#: Data folder (nonce secret, nonce counts, default database and users file) when not set.
DEFAULT_DATA_DIR = ".sipcert"
_LOG_LEVELS = ("debug", "info", "warning", "error")
#: Largest answer cache per worker (MiB): a typo of a few zeros should not eat the machine.
_MAX_ANSWER_CACHE_MB = 65536
_TOP_KEYS = frozenset(
    {
        "listen",
        "unix_socket",
        "edge",
        "data_dir",
        "db",
        "credentials",
        "workers",
        "log_level",
        "access_log",
        "purge_interval",
        "answer_cache_mb",
        "hot_get",
        "nonce_secret",
        "nonce_lifetime",
        "auth_failures",
        "auth_failure_window",
        "auth_failures_per_user",
        "auth_trust_days",
        "tls_handshake_timeout",
        "header_timeout",
        "keepalive_timeout",
        "max_connections",
        "max_head_size",
        "proxy_protocol_from",
        "policy",
        "domain",
        "admin_listen",
        "log_format",
        "audit_log",
        "frontend_name",
        "db_upgrade",
        "transparency",
    }
)
_LOG_FORMATS = ("text", "json")
_POLICY_KEYS = frozenset({"max_age", "max_per_aor", "max_lifetime_days", "max_certificate_size"})
_DOMAIN_KEYS = frozenset({"name", "tls_cert", "tls_key"})
_MAX_WORKERS = 64
_MAX_TIMEOUT = 3600


@dataclass(frozen=True)
class ListenAddress:
    """One ``HOST:PORT`` to listen on (``[v6addr]:PORT`` for IPv6)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class DomainConfig:
    """A served domain with its TLS certificate chain and key (PEM files)."""

    name: str
    tls_cert: Path
    tls_key: Path


@dataclass(frozen=True)
class ConnectionLimits:
    """Deadlines and caps of client connections, per worker (docs/store.md, "Connections").

    The defaults follow nginx: ``client_header_timeout`` 60 s, ``keepalive_timeout`` 75 s,
    ``worker_connections`` 1024 (its sample configuration). A TLS handshake takes
    milliseconds, so 10 s is generous (nginx bounds it with ``client_header_timeout``).
    """

    tls_handshake_timeout: float = 10.0
    header_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    max_connections: int = 1024
    max_head_size: int = 16384
    #: Load balancers whose connections start with a PROXY protocol header (v1 or v2), which
    #: is then required from them and refused from everyone else (issue 10).
    proxy_protocol_from: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()


@dataclass(frozen=True)
class OpsConfig:
    """The operator's settings: admin listener, log format, audit file, migrations."""

    #: Plain-HTTP listener for /healthz, /readyz and /metrics; ``None``: none.
    admin_listen: ListenAddress | None = None
    log_format: str = "text"
    #: A file the audit records are appended to as well (JSON lines); ``None``: only the log.
    audit_log: Path | None = None
    #: This Store's name in audit records (several frontends share one database).
    frontend_name: str = field(default_factory=socket.gethostname)
    #: Migrate the database schema at start-up (``sipcert db upgrade``); off: refuse an old one.
    db_upgrade: bool = True


@dataclass(frozen=True)
class StoreConfig:
    """Everything ``sipcert serve`` needs, validated."""

    domains: tuple[DomainConfig, ...]
    listen: tuple[ListenAddress, ...]
    db: str
    credentials: str
    data_dir: Path
    policy: StorePolicy = field(default_factory=StorePolicy)
    workers: int = 1
    log_level: str = "info"
    access_log: bool = True
    purge_interval: float = 3600.0
    #: MiB of rendered GET answers each worker keeps (server.answers, issue 13); 0: off.
    answer_cache_mb: int = 0
    #: Answer simple GETs without aiohttp (issue 13, server.hotget); false: aiohttp answers all.
    hot_get: bool = True
    nonce_secret: bytes | None = field(default=None, repr=False)
    nonce_lifetime: float = 300.0
    #: Checked Digest answers allowed per client address in each window (proto.ratelimit).
    auth_failures: int = 20
    auth_failure_window: float = 60.0
    #: The per-user bucket across all addresses (refilled at the same rate); by default
    #: twice ``auth_failures``, so one address alone can never empty it.
    auth_failures_per_user: int = 40
    #: Days a (user, address) pair that succeeded is not refused for the user's bucket.
    auth_trust_days: int = 30
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)
    #: Operating it (issue 10, docs/store.md "Operating it").
    ops: OpsConfig = field(default_factory=lambda: OpsConfig())
    #: The transparency log (issue 14, docs/transparency.md); None: no log is published.
    transparency: TransparencyConfig | None = None
    #: Edge mode (issue 13): a plain-HTTP unix socket for the nginx in front, which names
    #: the TLS domain in a header trusted on this socket only (docs/deploy.md "Edge mode").
    unix_socket: Path | None = None
    #: Edge mode: the folder ``sipcert publish`` writes, kept current by the Store itself.
    edge_publish_dir: Path | None = None
    #: Edge mode: nginx's pid file, so that the publisher can reload its map generation.
    edge_nginx_pid: Path | None = None

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> StoreConfig:
        """Validate a merged document (file + flags + dev defaults); :class:`ConfigError`."""
        _no_unknown(doc, _TOP_KEYS, "")
        data_dir = Path(_str(doc, "data_dir", DEFAULT_DATA_DIR))
        domains = _domains(doc.get("domain", []))
        listen_raw = doc.get("listen", [DEFAULT_LISTEN])
        if not isinstance(listen_raw, list) or not listen_raw:
            raise ConfigError("listen: expected a non-empty list of HOST:PORT strings")
        listen = tuple(parse_listen(_as_str(item, "listen")) for item in listen_raw)
        if len(set(listen)) != len(listen):
            raise ConfigError("listen: the same address is given twice")
        db = _str(doc, "db", f"sqlite:///{data_dir / 'certificates.db'}")
        credentials = _str(doc, "credentials", f"file:{data_dir / 'users.json'}")
        workers = _int(doc, "workers", 1, minimum=1)
        if workers > _MAX_WORKERS:
            raise ConfigError(f"workers: {workers} is over the limit of {_MAX_WORKERS}")
        log_level = _str(doc, "log_level", "info").lower()
        if log_level not in _LOG_LEVELS:
            raise ConfigError(f"log_level: {log_level!r} is not one of {', '.join(_LOG_LEVELS)}")
        access_log = doc.get("access_log", True)
        if not isinstance(access_log, bool):
            raise ConfigError("access_log: expected true or false")
        purge_interval = _int(doc, "purge_interval", 3600, minimum=1)
        answer_cache_mb = _int(doc, "answer_cache_mb", 0, minimum=0)
        if answer_cache_mb > _MAX_ANSWER_CACHE_MB:
            raise ConfigError(f"answer_cache_mb: {answer_cache_mb} is over {_MAX_ANSWER_CACHE_MB}")
        hot_get = doc.get("hot_get", True)
        if not isinstance(hot_get, bool):
            raise ConfigError("hot_get: expected true or false")
        secret_text = doc.get("nonce_secret")
        nonce_secret = None
        if secret_text is not None:
            nonce_secret = _as_str(secret_text, "nonce_secret").encode("utf-8")
            if len(nonce_secret) < 16:
                raise ConfigError("nonce_secret: must be at least 16 bytes (better 32 random ones)")
        nonce_lifetime = _int(doc, "nonce_lifetime", 300, minimum=1)
        auth_failures = _int(doc, "auth_failures", 20, minimum=1)
        auth_failure_window = _int(doc, "auth_failure_window", 60, minimum=1)
        auth_failures_per_user = _int(doc, "auth_failures_per_user", 2 * auth_failures, minimum=1)
        auth_trust_days = _int(doc, "auth_trust_days", 30, minimum=0)
        ops = _ops(doc)
        if ops.admin_listen is not None and ops.admin_listen in listen:
            raise ConfigError("admin_listen: must not be one of the listen addresses")
        return cls(
            ops=ops,
            connections=_connection_limits(doc),
            domains=domains,
            listen=listen,
            db=db,
            credentials=credentials,
            data_dir=data_dir,
            policy=_policy(doc.get("policy", {})),
            workers=workers,
            log_level=log_level,
            access_log=access_log,
            purge_interval=float(purge_interval),
            answer_cache_mb=answer_cache_mb,
            hot_get=hot_get,
            nonce_secret=nonce_secret,
            nonce_lifetime=float(nonce_lifetime),
            auth_failures=auth_failures,
            auth_failure_window=float(auth_failure_window),
            auth_failures_per_user=auth_failures_per_user,
            auth_trust_days=auth_trust_days,
            transparency=parse_transparency(doc.get("transparency")),
            unix_socket=_optional_path(doc, "unix_socket"),
            edge_publish_dir=_edge(doc.get("edge"), "publish_dir"),
            edge_nginx_pid=_edge(doc.get("edge"), "nginx_pid"),
        )

    @property
    def login_limits(self) -> LoginLimits:
        """The Digest guessing limiter's numbers."""
        return LoginLimits(
            address_failures=self.auth_failures,
            user_failures=self.auth_failures_per_user,
            window=self.auth_failure_window,
            trust_period=self.auth_trust_days * 86400.0,
        )

    @property
    def domain_names(self) -> tuple[str, ...]:
        """The served domains, in configuration order."""
        return tuple(d.name for d in self.domains)


@dataclass(frozen=True)
class Flags:
    """The command-line settings of ``sipcert serve``; ``None``/empty means "not given"."""

    listen: Sequence[str] = ()
    domains: Sequence[tuple[str, Path | None, Path | None]] = ()
    db: str | None = None
    credentials: str | None = None
    data_dir: Path | None = None
    workers: int | None = None
    max_age: int | None = None
    max_per_aor: int | None = None
    max_lifetime_days: int | None = None
    tls_handshake_timeout: float | None = None
    header_timeout: float | None = None
    keepalive_timeout: float | None = None
    max_connections: int | None = None
    max_head_size: int | None = None
    unix_socket: Path | None = None


def read_config_file(path: Path) -> dict[str, Any]:
    """The TOML file as a document; relative paths in it are taken from the file's folder."""
    try:
        with open(path, "rb") as file:
            doc = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not UTF-8") from exc
    base = path.absolute().parent
    _no_unknown(doc, _TOP_KEYS, f"{path}: ")
    for key in ("data_dir", "audit_log"):
        if isinstance(doc.get(key), str):
            doc[key] = str(base / doc[key])
    domains = doc.get("domain")
    if isinstance(domains, list):
        for entry in domains:
            if isinstance(entry, dict):
                for key in ("tls_cert", "tls_key"):
                    if isinstance(entry.get(key), str):
                        entry[key] = str(base / entry[key])
    for key in ("db", "credentials"):
        value = doc.get(key)
        if isinstance(value, str):
            doc[key] = _anchor_url(value, base)
    return doc


def _anchor_url(url: str, base: Path) -> str:
    """Make a relative ``sqlite:///x`` / ``file:x`` / ``kamailio+sqlite:///x`` path absolute."""
    for prefix in ("sqlite:///", "kamailio+sqlite:///"):
        if url.startswith(prefix) and not url[len(prefix) :].startswith("/"):
            return f"{prefix}{base / url[len(prefix) :]}"
    if url.startswith("file:") and not url.startswith("file:/"):
        return f"file:{base / url[len('file:') :]}"
    return url


def apply_flags(doc: Mapping[str, Any], flags: Flags) -> dict[str, Any]:
    """``doc`` with the flags laid over it (flags win).

    ``--listen`` replaces the file's list; each ``--domain`` replaces the file's entry of the
    same name or is added; the other flags replace single settings.
    """
    merged = dict(doc)
    if flags.listen:
        merged["listen"] = list(flags.listen)
    if flags.domains:
        existing = merged.get("domain", [])
        entries = (
            [dict(e) if isinstance(e, dict) else e for e in existing]
            if isinstance(existing, list)
            else existing
        )
        for name, cert, key in flags.domains:
            entry: dict[str, Any] = {"name": name}
            if cert is not None:
                entry["tls_cert"] = str(cert.absolute())
            if key is not None:
                entry["tls_key"] = str(key.absolute())
            if isinstance(entries, list):
                entries = [e for e in entries if not (isinstance(e, dict) and _same_name(e, name))]
                entries.append(entry)
        merged["domain"] = entries
    for setting, value in (
        ("db", flags.db),
        ("credentials", flags.credentials),
        ("workers", flags.workers),
        ("tls_handshake_timeout", flags.tls_handshake_timeout),
        ("header_timeout", flags.header_timeout),
        ("keepalive_timeout", flags.keepalive_timeout),
        ("max_connections", flags.max_connections),
        ("max_head_size", flags.max_head_size),
    ):
        if value is not None:
            merged[setting] = value
    if flags.data_dir is not None:
        merged["data_dir"] = str(flags.data_dir.absolute())
    if flags.unix_socket is not None:
        merged["unix_socket"] = str(flags.unix_socket.absolute())
    policy_flags = {
        "max_age": flags.max_age,
        "max_per_aor": flags.max_per_aor,
        "max_lifetime_days": flags.max_lifetime_days,
    }
    if any(v is not None for v in policy_flags.values()):
        policy = merged.get("policy", {})
        policy = dict(policy) if isinstance(policy, dict) else policy
        if isinstance(policy, dict):
            policy.update({k: v for k, v in policy_flags.items() if v is not None})
        merged["policy"] = policy
    return merged


def _optional_path(doc: Mapping[str, Any], key: str) -> Path | None:
    value = doc.get(key)
    return None if value is None else Path(_as_str(value, key))


def _edge(raw: object, key: str) -> Path | None:
    """A path of the ``[edge]`` table: ``publish_dir`` (the folder nginx serves GETs from)
    or ``nginx_pid`` (nginx's pid file, for reloading the publisher's map)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError('edge: expected a table, e.g. [edge] publish_dir = "/var/lib/..."')
    _no_unknown(raw, frozenset({"publish_dir", "nginx_pid"}), "edge.")
    return _optional_path(raw, key)


def _same_name(entry: Mapping[str, Any], name: str) -> bool:
    other = entry.get("name")
    return isinstance(other, str) and other.lower().rstrip(".") == name.lower().rstrip(".")


def parse_listen(text: str) -> ListenAddress:
    """``HOST:PORT`` or ``[IPv6]:PORT`` (an empty host means all IPv4 interfaces)."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ConfigError(f"listen address {text!r}: expected HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ConfigError(f"listen address {text!r}: write IPv6 addresses as [ADDRESS]:PORT")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"listen address {text!r}: port must be a number 0-65535")
    return ListenAddress(host or "0.0.0.0", int(port_text))  # noqa: S104 (documented default)


def _no_unknown(doc: Mapping[str, Any], known: frozenset[str], where: str) -> None:
    unknown = sorted(set(doc) - known)
    if unknown:
        raise ConfigError(
            f"{where}unknown setting {unknown[0]!r} (known: {', '.join(sorted(known))})"
        )


def _as_str(value: object, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name}: expected a non-empty string")
    return value


def _str(doc: Mapping[str, Any], key: str, default: str) -> str:
    return _as_str(doc[key], key) if key in doc else default


def _int(doc: Mapping[str, Any], key: str, default: int, *, minimum: int, where: str = "") -> int:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}{key}: expected a whole number")
    if value < minimum:
        raise ConfigError(f"{where}{key}: {value} is below the minimum of {minimum}")
    return value


def _seconds(doc: Mapping[str, Any], key: str, default: float) -> float:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{key}: expected a number of seconds")
    if not 0 < value <= _MAX_TIMEOUT:
        raise ConfigError(f"{key}: {value} is not between 0 and {_MAX_TIMEOUT} seconds")
    return float(value)


def _connection_limits(doc: Mapping[str, Any]) -> ConnectionLimits:
    defaults = ConnectionLimits()
    return ConnectionLimits(
        tls_handshake_timeout=_seconds(
            doc, "tls_handshake_timeout", defaults.tls_handshake_timeout
        ),
        header_timeout=_seconds(doc, "header_timeout", defaults.header_timeout),
        keepalive_timeout=_seconds(doc, "keepalive_timeout", defaults.keepalive_timeout),
        max_connections=_int(doc, "max_connections", defaults.max_connections, minimum=1),
        max_head_size=_int(doc, "max_head_size", defaults.max_head_size, minimum=1024),
        proxy_protocol_from=_networks(doc.get("proxy_protocol_from", [])),
    )


def _networks(raw: object) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """``proxy_protocol_from``: a list of addresses or networks ("10.0.0.0/8", "::1")."""
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise ConfigError('proxy_protocol_from: expected a list such as ["127.0.0.1/32"]')
    try:
        return tuple(ipaddress.ip_network(item) for item in raw)
    except ValueError as exc:
        raise ConfigError(f"proxy_protocol_from: {exc}") from exc


def _ops(doc: Mapping[str, Any]) -> OpsConfig:
    admin = doc.get("admin_listen")
    log_format = _str(doc, "log_format", "text").lower()
    if log_format not in _LOG_FORMATS:
        raise ConfigError(f"log_format: {log_format!r} is not one of {', '.join(_LOG_FORMATS)}")
    audit = doc.get("audit_log")
    db_upgrade = doc.get("db_upgrade", True)
    if not isinstance(db_upgrade, bool):
        raise ConfigError("db_upgrade: expected true or false")
    defaults = OpsConfig()
    return OpsConfig(
        admin_listen=parse_listen(_as_str(admin, "admin_listen")) if admin is not None else None,
        log_format=log_format,
        audit_log=Path(_as_str(audit, "audit_log")) if audit is not None else None,
        frontend_name=_str(doc, "frontend_name", defaults.frontend_name),
        db_upgrade=db_upgrade,
    )


def _domains(raw: object) -> tuple[DomainConfig, ...]:
    if not isinstance(raw, list):
        raise ConfigError("domain: expected [[domain]] tables with name, tls_cert and tls_key")
    domains: list[DomainConfig] = []
    seen: set[str] = set()
    for number, entry in enumerate(raw, start=1):
        where = f"domain #{number}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a table with name, tls_cert and tls_key")
        _no_unknown(entry, _DOMAIN_KEYS, f"{where}: ")
        try:
            name = normalize_domain(_as_str(entry.get("name"), f"{where} name"))
        except (AORError, InputTooLargeError) as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        where = f"domain {name}"
        if name in seen:
            raise ConfigError(f"{where} is configured twice")
        seen.add(name)
        for key, flag in (("tls_cert", "--tls-cert"), ("tls_key", "--tls-key")):
            if key not in entry:
                raise ConfigError(f"{where}: no {key} (TOML) / {flag} (flag) given")
        domains.append(
            DomainConfig(
                name=name,
                tls_cert=Path(_as_str(entry["tls_cert"], f"{where} tls_cert")),
                tls_key=Path(_as_str(entry["tls_key"], f"{where} tls_key")),
            )
        )
    if not domains:
        raise ConfigError(
            "no domain to serve: give --domain NAME --tls-cert FILE --tls-key FILE, "
            "[[domain]] tables in --config, or use --dev"
        )
    return tuple(domains)


def _policy(raw: object) -> StorePolicy:
    if not isinstance(raw, dict):
        raise ConfigError("policy: expected a table")
    _no_unknown(raw, _POLICY_KEYS, "policy: ")
    defaults = StorePolicy()
    return StorePolicy(
        max_age=_int(raw, "max_age", defaults.max_age, minimum=0, where="policy."),
        max_per_aor=_int(raw, "max_per_aor", defaults.max_per_aor, minimum=1, where="policy."),
        max_lifetime=timedelta(
            days=_int(
                raw,
                "max_lifetime_days",
                defaults.max_lifetime.days,
                minimum=1,
                where="policy.",
            )
        ),
        max_certificate_size=_int(
            raw,
            "max_certificate_size",
            defaults.max_certificate_size,
            minimum=256,
            where="policy.",
        ),
    )
