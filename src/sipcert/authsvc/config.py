"""``sipcert authsvc`` configuration: a TOML file (docs/delegated.md).

::

    name = "authsvc.example.com"                 # marks its certificates, signs the header
    fill_url = "https://authsvc.example.com/smime"
    keys = "keys"                                # the key folder (0700, files 0600)
    listen = "tcp:127.0.0.1:5070"                # where the proxy sends requests
    proxy = "tcp:127.0.0.1:5071"                 # where they go back (the proxy's socket)
    trusted_proxies = ["127.0.0.1"]              # the only sources it accepts requests from

    [client]                                     # the Store client, as a UA's
    dns = "127.0.0.1:5353"
    ca_file = "ca.pem"

    [[subscriber]]                               # one per delegating subscriber
    aor = "alice@example.com"
    password = "the SIP password"                # Digest at the Store (draft §5)

The file holds SIP passwords, so it is refused when group or others may read it.
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from sipcert.client.ua import DEFAULT_RENEW_WINDOW, ClientConfig, Credentials
from sipcert.errors import ConfigError, InputError
from sipcert.proto.aor import AOR, parse_aor
from sipcert.proto.indirection import ExternalBody
from sipcert.sip.transport import Hop, Transport

__all__ = ["AuthServiceConfig", "Subscriber", "load_config", "parse_hop"]

_TOP = frozenset(
    {
        "name",
        "fill_url",
        "keys",
        "listen",
        "proxy",
        "trusted_proxies",
        "validity_days",
        "renew_days",
        "client",
        "subscriber",
    }
)
_CLIENT = frozenset({"dns", "ca_file", "store", "timeout", "cache_ttl", "fallback_port"})
_SUBSCRIBER = frozenset({"aor", "password", "username"})


@dataclass(frozen=True)
class Subscriber:
    """A delegating subscriber and the credentials that enroll its delegated certificate."""

    aor: AOR
    credentials: Credentials = field(repr=False)


@dataclass(frozen=True)
class AuthServiceConfig:
    """Everything the service needs; built by :func:`load_config` or directly in tests."""

    name: str
    fill_url: str
    keys: Path
    listen: Hop
    proxy: Hop
    client: ClientConfig
    subscribers: tuple[Subscriber, ...] = ()
    trusted_proxies: frozenset[str] = frozenset({"127.0.0.1"})
    validity: timedelta = timedelta(days=30)
    renew_window: timedelta = DEFAULT_RENEW_WINDOW

    def __post_init__(self) -> None:
        try:
            ExternalBody(self.fill_url)
        except InputError as exc:
            raise ConfigError(f"fill_url: {exc}") from exc
        for what, hop in (("listen", self.listen), ("proxy", self.proxy)):
            if hop.transport is not Transport.TCP:
                # S/MIME bodies are several kilobytes: over the UDP limit (RFC 3261 §18.1.1).
                raise ConfigError(f"{what} must be tcp:HOST:PORT (S/MIME bodies exceed UDP's)")
        if self.validity <= self.renew_window:
            raise ConfigError("validity_days must be longer than renew_days")

    @property
    def delegates(self) -> frozenset[AOR]:
        return frozenset(s.aor for s in self.subscribers)

    def subscriber(self, aor: AOR) -> Subscriber:
        for entry in self.subscribers:
            if entry.aor == aor:
                return entry
        raise ConfigError(f"{aor} does not delegate to this service (no [[subscriber]] entry)")


def parse_hop(text: str, what: str) -> Hop:
    """``udp:HOST:PORT`` or ``tcp:HOST:PORT`` as a :class:`Hop` (the service itself takes
    only TCP, :class:`AuthServiceConfig` says why)."""
    kind, _, rest = text.partition(":")
    host, _, port = rest.rpartition(":")
    try:
        transport = Transport(kind.lower())
        number = int(port)
    except ValueError:
        raise ConfigError(f"{what} {text!r} is not udp:HOST:PORT or tcp:HOST:PORT") from None
    if transport is Transport.TLS or not host or not 0 < number < 65536:
        raise ConfigError(f"{what} {text!r} is not udp:HOST:PORT or tcp:HOST:PORT")
    return Hop(transport, host.strip("[]"), number)


def _get(doc: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = doc.get(key)
    if value is None:
        raise ConfigError(f"{where}{key} is required")
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ConfigError(f"{where}{key} must be a {kind.__name__}")
    return value


def _check_private(path: Path) -> None:
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration file {path}: {exc.strerror}") from exc
    if mode & 0o077:
        raise ConfigError(
            f"{path} holds SIP passwords and is readable by others (mode {mode:o}): chmod 600"
        )


def _client(doc: dict[str, Any], base: Path, keys: Path) -> ClientConfig:
    unknown = set(doc) - _CLIENT
    if unknown:
        raise ConfigError(f"[client]: unknown key(s) {', '.join(sorted(unknown))}")
    options: dict[str, Any] = {"home": keys, "cache_ttl": 60.0}
    for key in ("dns", "store"):
        if key in doc:
            options[key] = _get(doc, key, str, "[client] ")
    if "ca_file" in doc:
        options["ca_file"] = base / _get(doc, "ca_file", str, "[client] ")
    for key in ("timeout", "cache_ttl"):
        if key in doc:
            value = doc[key]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"[client] {key} must be a number")
            options[key] = float(value)
    if "fallback_port" in doc:
        options["fallback_port"] = _get(doc, "fallback_port", int, "[client] ")
    return ClientConfig(**options)


def load_config(path: Path) -> AuthServiceConfig:
    """Read and check the TOML file; relative paths are taken from its folder."""
    _check_private(path)
    try:
        with open(path, "rb") as file:
            doc = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not UTF-8") from exc
    unknown = set(doc) - _TOP
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
    base = path.absolute().parent
    keys = base / _get(doc, "keys", str, "")
    subscribers: list[Subscriber] = []
    entries = doc.get("subscriber", [])
    if not isinstance(entries, list):
        raise ConfigError("[[subscriber]] must be an array of tables")
    for entry in entries:
        if not isinstance(entry, dict):
            raise ConfigError("[[subscriber]] must be an array of tables")
        extra = set(entry) - _SUBSCRIBER
        if extra:
            raise ConfigError(f"[[subscriber]]: unknown key(s) {', '.join(sorted(extra))}")
        try:
            aor = parse_aor(_get(entry, "aor", str, "[[subscriber]] "))
        except InputError as exc:
            raise ConfigError(f"[[subscriber]] aor: {exc}") from exc
        username = entry.get("username")
        if username is not None and not isinstance(username, str):
            raise ConfigError("[[subscriber]] username must be a string")
        password = _get(entry, "password", str, f"[[subscriber]] {aor}: ")
        if aor in {s.aor for s in subscribers}:
            raise ConfigError(f"[[subscriber]] {aor} is listed twice")
        subscribers.append(Subscriber(aor, Credentials(password, username)))
    trusted = doc.get("trusted_proxies", ["127.0.0.1"])
    if not isinstance(trusted, list) or not all(isinstance(t, str) for t in trusted):
        raise ConfigError("trusted_proxies must be a list of addresses")
    days: dict[str, int] = {}
    for key, default in (("validity_days", 30), ("renew_days", 10)):
        value = doc.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{key} must be a positive whole number of days")
        days[key] = value
    client = doc.get("client", {})
    if not isinstance(client, dict):
        raise ConfigError("[client] must be a table")
    return AuthServiceConfig(
        name=_get(doc, "name", str, ""),
        fill_url=_get(doc, "fill_url", str, ""),
        keys=keys,
        listen=parse_hop(_get(doc, "listen", str, ""), "listen"),
        proxy=parse_hop(_get(doc, "proxy", str, ""), "proxy"),
        client=_client(client, base, keys),
        subscribers=tuple(subscribers),
        trusted_proxies=frozenset(trusted),
        validity=timedelta(days=days["validity_days"]),
        renew_window=timedelta(days=days["renew_days"]),
    )
