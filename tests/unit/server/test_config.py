"""StoreConfig: TOML file, flags over it, precise ConfigError messages."""

# ruff: noqa: S104 (0.0.0.0 is the documented default listen address)

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sipcert.errors import ConfigError
from sipcert.proto.ca import TestCA
from sipcert.server.config import (
    ConnectionLimits,
    Flags,
    ListenAddress,
    StoreConfig,
    apply_flags,
    parse_listen,
    read_config_file,
)
from sipcert.server.tls import build_sni_context, load_domain_context

TOML = """
listen = ["127.0.0.1:8443", "[::1]:8443"]
data_dir = "data"
db = "sqlite:///certs.db"
credentials = "kamailio+sqlite:///kamailio.db"
workers = 2
log_level = "DEBUG"
nonce_lifetime = 120
nonce_secret = "0123456789abcdef0123"

[policy]
max_age = 0
max_per_aor = 4
max_lifetime_days = 30

[[domain]]
name = "Example.COM"
tls_cert = "tls/example.com.pem"
tls_key = "tls/example.com.key"
"""


def write(tmp_path: Path, text: str = TOML) -> Path:
    path = tmp_path / "store.toml"
    path.write_text(text)
    return path


def test_file_settings_and_relative_paths(tmp_path: Path) -> None:
    config = StoreConfig.from_document(read_config_file(write(tmp_path)))
    assert config.listen == (ListenAddress("127.0.0.1", 8443), ListenAddress("::1", 8443))
    assert config.domains[0].name == "example.com"
    assert config.domains[0].tls_cert == tmp_path / "tls/example.com.pem"
    assert config.data_dir == tmp_path / "data"
    assert config.db == f"sqlite:///{tmp_path}/certs.db"
    assert config.credentials == f"kamailio+sqlite:///{tmp_path}/kamailio.db"
    assert (config.workers, config.log_level, config.nonce_lifetime) == (2, "debug", 120.0)
    assert config.policy.max_age == 0
    assert config.policy.max_per_aor == 4
    assert config.policy.max_lifetime == timedelta(days=30)
    assert config.nonce_secret == b"0123456789abcdef0123"
    assert "0123456789" not in repr(config)


def test_flags_override_the_file(tmp_path: Path) -> None:
    doc = read_config_file(write(tmp_path))
    flags = Flags(
        listen=["0.0.0.0:9443"],
        domains=[
            ("example.com", Path("a.pem"), Path("a.key")),
            ("example.net", Path("n.pem"), Path("n.key")),
        ],
        db="sqlite:////tmp/x.db",
        workers=1,
        max_age=5,
        max_per_aor=1,
        max_lifetime_days=7,
    )
    config = StoreConfig.from_document(apply_flags(doc, flags))
    assert config.listen == (ListenAddress("0.0.0.0", 9443),)
    assert config.domain_names == ("example.com", "example.net")
    assert config.domains[0].tls_cert == Path("a.pem").absolute()
    assert config.db == "sqlite:////tmp/x.db"
    assert config.workers == 1
    assert (config.policy.max_age, config.policy.max_per_aor) == (5, 1)
    assert config.policy.max_lifetime == timedelta(days=7)
    assert config.credentials.startswith("kamailio+sqlite:")  # not overridden


def test_defaults_from_the_data_dir() -> None:
    doc = apply_flags({}, Flags(domains=[("example.com", Path("c"), Path("k"))]))
    config = StoreConfig.from_document(doc)
    assert config.listen == (ListenAddress("0.0.0.0", 443),)
    assert config.db == "sqlite:///.sipcert/certificates.db"
    assert config.credentials == "file:.sipcert/users.json"
    assert config.workers == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour = 1\n", "unknown setting 'colour'"),
        ("listen = 'x'\n", "listen: expected a non-empty list"),
        ("listen = ['nohost']\n", "expected HOST:PORT"),
        ("listen = ['::1:80']\n", "[ADDRESS]:PORT"),
        ("listen = ['a:99999']\n", "port must be a number"),
        ("workers = 0\n", "workers: 0 is below the minimum of 1"),
        ("workers = 'two'\n", "workers: expected a whole number"),
        ("log_level = 'loud'\n", "log_level: 'loud' is not one of"),
        ("nonce_secret = 'short'\n", "at least 16 bytes"),
        ("[policy]\nmax_age = -1\n", "policy.max_age: -1 is below the minimum of 0"),
        ("[policy]\nmax_per_aor = true\n", "policy.max_per_aor: expected a whole number"),
        ("[policy]\ncolour = 1\n", "policy: unknown setting 'colour'"),
        ("[[domain]]\nname = 'bad_name!'\ntls_cert = 'c'\ntls_key = 'k'\n", "domain #1"),
        ("[[domain]]\nname = 'example.com'\ntls_cert = 'c'\n", "no tls_key"),
        (
            "[[domain]]\nname = 'a.example'\ntls_cert = 'c'\ntls_key = 'k'\n"
            "[[domain]]\nname = 'A.example'\ntls_cert = 'c'\ntls_key = 'k'\n",
            "configured twice",
        ),
        ("x = [\n", "not valid TOML"),
        ("header_timeout = 0\n", "header_timeout: 0 is not between 0 and 3600 seconds"),
        ("keepalive_timeout = 'long'\n", "keepalive_timeout: expected a number of seconds"),
        ("tls_handshake_timeout = 7200\n", "tls_handshake_timeout: 7200 is not between"),
        ("max_connections = 0\n", "max_connections: 0 is below the minimum of 1"),
        ("max_head_size = 100\n", "max_head_size: 100 is below the minimum of 1024"),
    ],
)
def test_errors_name_the_setting(tmp_path: Path, text: str, message: str) -> None:
    if "[[domain]]" not in text:
        text += "[[domain]]\nname = 'example.com'\ntls_cert = 'c'\ntls_key = 'k'\n"
    with pytest.raises(ConfigError) as info:
        StoreConfig.from_document(read_config_file(write(tmp_path, text)))
    assert message in str(info.value)


def test_connection_limits_from_the_file_and_flags(tmp_path: Path) -> None:
    domain = Flags(domains=[("example.com", Path("c"), Path("k"))])
    assert StoreConfig.from_document(apply_flags({}, domain)).connections == ConnectionLimits(
        tls_handshake_timeout=10.0,
        header_timeout=60.0,
        keepalive_timeout=75.0,
        max_connections=1024,
        max_head_size=16384,
    )
    text = "tls_handshake_timeout = 2.5\nheader_timeout = 5\nmax_connections = 100\n"
    doc = read_config_file(write(tmp_path, text))
    flags = Flags(
        domains=domain.domains, header_timeout=1.5, keepalive_timeout=9.0, max_head_size=4096
    )
    limits = StoreConfig.from_document(apply_flags(doc, flags)).connections
    assert limits == ConnectionLimits(2.5, 1.5, 9.0, 100, 4096)


def test_no_domain_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no domain to serve"):
        StoreConfig.from_document({})
    with pytest.raises(ConfigError, match="cannot read the configuration file"):
        read_config_file(tmp_path / "absent.toml")


def test_parse_listen_forms() -> None:
    assert parse_listen(":443") == ListenAddress("0.0.0.0", 443)
    assert str(parse_listen("[::]:8443")) == "[::]:8443"


def test_tls_files_are_checked_with_clear_messages(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    ca = TestCA.create(now=now)
    good = ca.issue(["example.com"], now=now)
    other = ca.issue(["example.com"], now=now)
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_bytes(good.cert_pem)
    key.write_bytes(good.key_pem)
    ctx = load_domain_context("example.com", cert, key, now=now)
    assert ctx.sni_domain == "example.com"
    assert build_sni_context({"example.com": ctx}).minimum_version.name == "TLSv1_2"
    with pytest.raises(ConfigError, match=r"names example\.com, not the AOR domain 'example\.net'"):
        load_domain_context("example.net", cert, key, now=now)
    with pytest.raises(ConfigError, match="cannot read the TLS key file"):
        load_domain_context("example.com", cert, tmp_path / "none.pem", now=now)
    with pytest.raises(ConfigError, match="expired"):
        load_domain_context("example.com", cert, key, now=now + timedelta(days=400))
    key.write_bytes(other.key_pem)
    with pytest.raises(ConfigError, match="the key does not belong to the certificate"):
        load_domain_context("example.com", cert, key, now=now)
    key.write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="no usable PEM private key"):
        load_domain_context("example.com", cert, key, now=now)
    cert.write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="holds no PEM certificate"):
        load_domain_context("example.com", cert, key, now=now)
    with pytest.raises(ConfigError, match="no domain to serve"):
        build_sni_context({})


def test_guessing_limits() -> None:
    base = apply_flags({}, Flags(domains=[("example.com", Path("c"), Path("k"))]))
    default = StoreConfig.from_document(base).login_limits
    assert (default.address_failures, default.user_failures, default.window) == (20, 40, 60.0)
    assert default.trust_period == 30 * 86400.0
    doc = {**base, "auth_failures": 5, "auth_failure_window": 30}
    assert StoreConfig.from_document(doc).login_limits.user_failures == 10  # 2 x by default
    doc = {**doc, "auth_failures_per_user": 7, "auth_trust_days": 0}
    limits = StoreConfig.from_document(doc).login_limits
    assert (limits.user_failures, limits.trust_period, limits.interval) == (7, 0.0, 6.0)
    with pytest.raises(ConfigError, match="auth_failures_per_user"):
        StoreConfig.from_document({**base, "auth_failures_per_user": 0})


def test_the_hot_get_is_on_unless_turned_off() -> None:
    base = apply_flags({}, Flags(domains=[("example.com", Path("c"), Path("k"))]))
    assert StoreConfig.from_document(base).hot_get is True
    assert StoreConfig.from_document({**base, "hot_get": False}).hot_get is False
    with pytest.raises(ConfigError, match="hot_get: expected true or false"):
        StoreConfig.from_document({**base, "hot_get": "no"})


def test_proxy_protocol_sources(tmp_path: Path) -> None:
    """Issue 10: the balancers trusted to send a PROXY header; none by default."""
    import ipaddress

    from sipcert.server.conn import ConnectionGuard

    domain = Flags(domains=[("example.com", Path("c"), Path("k"))])
    text = 'proxy_protocol_from = ["127.0.0.1/32", "10.1.0.0/16", "fd00::1"]\n'
    doc = read_config_file(write(tmp_path, text))
    limits = StoreConfig.from_document(apply_flags(doc, domain)).connections
    assert limits.proxy_protocol_from == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("10.1.0.0/16"),
        ipaddress.ip_network("fd00::1/128"),
    )
    guard = ConnectionGuard(None, limits)  # type: ignore[arg-type]
    assert guard.trusts("10.1.200.3") and guard.trusts("::ffff:127.0.0.1")
    assert guard.trusts("fd00::1") and not guard.trusts("fd00::2")
    assert not guard.trusts("127.0.0.2") and not guard.trusts("not an address")
    assert not ConnectionGuard(None, ConnectionLimits()).trusts("127.0.0.1")  # type: ignore[arg-type]
    for bad, message in (
        ('proxy_protocol_from = "127.0.0.1"', "expected a list"),
        ('proxy_protocol_from = ["10.0.0.1/8"]', "has host bits set"),
        ('proxy_protocol_from = ["balancer"]', "does not appear to be"),
    ):
        with pytest.raises(ConfigError, match=message):
            StoreConfig.from_document(apply_flags(read_config_file(write(tmp_path, bad)), domain))
