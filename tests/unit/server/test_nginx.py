"""server.nginx renders a configuration; a real nginx runs it in tests/integration/edge."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipcert.errors import ConfigError
from sipcert.server.config import ListenAddress, StoreConfig
from sipcert.server.nginx import EdgeDomain, render


def _render(**overrides: object) -> str:
    options: dict[str, object] = {
        "publish_dir": Path("/srv/edge"),
        "store_socket": Path("/run/sipcert/store.sock"),
        "listen": [ListenAddress("127.0.0.1", 8443), ListenAddress("::1", 8443)],
        "prefix": Path("/var/lib/sipcert/nginx"),
    }
    options.update(overrides)
    domains = [
        EdgeDomain("example.com", Path("/etc/a.pem"), Path("/etc/a.key")),
        EdgeDomain("example.net", Path("/etc/b.pem"), Path("/etc/b.key")),
    ]
    return render(domains, **options)  # type: ignore[arg-type]


def test_one_server_per_domain_and_a_refusing_default() -> None:
    text = _render(workers=3, max_age=30, user="www-data sipcert")
    assert text.count("server_name ") == 2
    assert "ssl_certificate /etc/b.pem;" in text
    assert text.count("ssl_reject_handshake on;") == 1
    assert "listen 127.0.0.1:8443 ssl default_server;" in text
    assert "listen [::1]:8443 ssl;" in text
    assert "worker_processes 3;" in text and "user www-data sipcert;" in text
    assert 'add_header Cache-Control "max-age=30";' in text
    assert "server unix:/run/sipcert/store.sock;" in text
    assert text.count("{") == text.count("}")
    # The routing key is the TLS server name; the domain's dots are literal in the regex.
    assert '"~^example\\.com\\|(?:GET|HEAD)\\|(?:email|sip)=' in text


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"publish_dir": Path("/srv/my edge")}, "publish directory"),
        ({"store_socket": Path("/run/a;b")}, "--store-socket"),
        ({"listen": []}, "--listen"),
        ({"workers": 0}, "--workers"),
        ({"user": "root; daemon off"}, "--user"),
    ],
)
def test_what_nginx_could_misread_is_refused(override: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _render(**override)


def test_config_reads_the_unix_socket_and_the_edge_table() -> None:
    doc = {
        "domain": [{"name": "example.com", "tls_cert": "/a.pem", "tls_key": "/a.key"}],
        "unix_socket": "/run/sipcert/store.sock",
        "edge": {"publish_dir": "/srv/edge"},
    }
    config = StoreConfig.from_document(doc)
    assert config.unix_socket == Path("/run/sipcert/store.sock")
    assert config.edge_publish_dir == Path("/srv/edge")
    with pytest.raises(ConfigError, match=r"edge\.unknown setting 'dir'"):
        StoreConfig.from_document({**doc, "edge": {"dir": "/x"}})
