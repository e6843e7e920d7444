"""``sipcert nginx-config``: an nginx configuration for edge mode (issue 13), as text.

nginx answers the GET and HEAD of the canonical query spelling from the files of
:mod:`sipcert.server.publish` (layout: :mod:`sipcert.proto.edge`) and proxies everything
else to the Store over its unix socket (``sipcert serve --unix-socket``), naming the TLS
server name in :data:`DOMAIN_HEADER`, which the Store trusts on that socket only.

What keeps nginx's answers equal to the Store's:

* the routing key is the TLS server name (``$ssl_server_name``), never ``Host``: draft
  §4.3, a connection speaks only for the domain its handshake proved; unknown or missing
  SNI fails the handshake (``ssl_reject_handshake``), as the Store's SNI callback does;
* nginx's own ETag, Last-Modified, ranges and If-Modified-Since are off; ETag,
  Content-Type and the per-certificate headers come from the object's resolved path
  (``$realpath_root``, read once, then the body is served from that same directory), and
  ``If-None-Match`` is compared as :func:`sipcert.proto.store.certificates_response` does
  (``*``, a list, weak comparison). A value with unusual bytes goes to the Store;
* a map generation's entry names the object, and its headers come from that name: the
  body opened is that object's or none (an AOR's old object is removed once it changed),
  and then the symlink is taken as above;
* the 404 of an AOR without certificates is :func:`sipcert.proto.store.error_response`'s,
  written into the configuration from that function.

Nothing here does I/O: :func:`render` returns the text; the CLI prints it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sipcert.errors import ConfigError
from sipcert.proto.edge import (
    ABSENT_FIELD,
    BODY_NAME,
    CLIENT_HEADER,
    DOMAIN_HEADER,
    FILE_USER_PATTERN,
    LABEL_MARK,
    MAP_FOLDER,
    NONE_OBJECT,
    PROXY_OBJECT,
)
from sipcert.proto.store import certificates_response
from sipcert.server.config import ListenAddress

__all__ = ["CLIENT_HEADER", "DOMAIN_HEADER", "TLS_DIRECTIVES", "EdgeDomain", "render"]

_SAFE_PATH = re.compile(r"[A-Za-z0-9_./+-]+")
_NOT_FOUND = certificates_response([], [], max_age=0)
#: An object's resolved path: the ETag's hex, the kind (1: one certificate, m[N]: several,
#: N the boundary's salt), Content-Disposition and ``=``Content-Description (``_``: none).
_OBJECT = (
    r'"/o/(?<sipcert_t>[0-9a-f]{32})-(?<sipcert_k>1|m[0-9]*)'
    r'\|(?<sipcert_d>[^/|]+)\|(?<sipcert_l>[^/]+)$"'
)
#: A map generation's value (proto.edge.map_line): the user, then the object's path.
_HIT = (
    r'"^(?<sipcert_u>[^|]+)\|(?<sipcert_n>(?<sipcert_t>[0-9a-f]{32})-(?<sipcert_k>1|m[0-9]*)'
    r'\|(?<sipcert_d>[^/|]+)\|(?<sipcert_l>[^/]+))$"'
)
#: Hash table limits of the map generation: room for millions of AORs (nginx sizes the
#: table to its entries; the maximum only bounds its search), and keys up to ~200 bytes.
#: The edge's TLS settings (the Store's protocols; ECDHE only; a session cache shared by the
#: workers, so a returning client resumes whichever worker it reaches). bench/ gives its
#: reference nginx the same lines, so that a comparison measures the edge, not TLS tuning.
TLS_DIRECTIVES = (
    "ssl_protocols TLSv1.2 TLSv1.3;",
    "ssl_ciphers ECDHE+AESGCM:ECDHE+CHACHA20;",
    "ssl_prefer_server_ciphers on;",
    "ssl_session_cache shared:sipcert:10m;",
)
_MAP_HASH = ("map_hash_max_size 16777216;", "map_hash_bucket_size 256;")
#: ``"<etag>|<If-None-Match>"`` when the list names the ETag (weak comparison, RFC 9110
#: §13.1.2), as :func:`sipcert.proto.store.certificates_response` decides.
_INM_MATCH = r'"^(\"[0-9a-f]{32}\")\|(?:.*,)?\s*(?:W/)?\1\s*(?:,.*)?$"'


def _body_headers(max_age: int) -> list[str]:
    """Serving an object's body with the headers its path spells (both ways to a body)."""
    return [
        "            etag off;",
        "            if_modified_since off;",
        "            max_ranges 0;",
        '            default_type "";',
        "            add_header Content-Type $sipcert_type;",
        "            add_header Content-Description $sipcert_description;",
        "            add_header Content-Disposition $sipcert_disposition;",
        "            add_header ETag $sipcert_etag;",
        f'            add_header Cache-Control "max-age={max_age}";',
        '            add_header Last-Modified "";',
    ]


@dataclass(frozen=True)
class EdgeDomain:
    """One served domain: its name and TLS files."""

    name: str
    tls_cert: Path
    tls_key: Path


def _path(path: Path, what: str) -> str:
    """An absolute path fit for the configuration without quoting surprises."""
    text = str(path.absolute())
    if not _SAFE_PATH.fullmatch(text):
        raise ConfigError(f"{what} {text!r}: use a path of letters, digits and _ . / + - for nginx")
    return text


def _quoted(text: str) -> str:
    """A double-quoted nginx string of constant text (``$`` would start a variable)."""
    if "$" in text:
        raise ConfigError("a constant nginx string cannot hold '$'")
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def render(
    domains: Sequence[EdgeDomain],
    *,
    publish_dir: Path,
    store_socket: Path,
    listen: Sequence[ListenAddress],
    prefix: Path,
    workers: int = 1,
    max_age: int = 60,
    user: str | None = None,
) -> str:
    """The complete nginx main configuration (``nginx -p PREFIX -c FILE``).

    ``user`` ("USER [GROUP]") is who nginx's workers run as when started by root; they must
    read ``publish_dir`` and connect to ``store_socket`` (mode 0660: be in its group).
    """
    if not domains:
        raise ConfigError("no domain to serve: configure at least one domain")
    if not listen:
        raise ConfigError("give at least one --listen HOST:PORT for nginx")
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, not {workers}")
    root = _path(publish_dir, "publish directory")
    socket = _path(store_socket, "--store-socket")
    pre = _path(prefix, "--prefix")
    not_found = _quoted(_NOT_FOUND.body.decode())
    not_found_type = dict(_NOT_FOUND.headers)["Content-Type"]
    to_store = "rewrite ^ /_sipcert_store last;"
    if user is not None and not re.fullmatch(
        r"[A-Za-z0-9_][A-Za-z0-9_.-]*( [A-Za-z0-9_][A-Za-z0-9_.-]*)?", user
    ):
        raise ConfigError(f"--user {user!r}: expected USER or 'USER GROUP'")
    # The request's own location: a mapped AOR (the hash lookup of $sipcert_hit) is served
    # right here; anything else takes the symlink (/_sipcert_slow). So does a mapped AOR
    # whose object is gone: it changed after this map generation (server.publish).
    slow = "rewrite ^ /_sipcert_slow last;"
    hot = [
        "        location = /search-cgi {",
        f"            if ($sipcert_read = 0) {{ {to_store} }}",
        f"            if ($sipcert_conditional) {{ {slow} }}",
        f"            if ($sipcert_hit !~ {_HIT}) {{ {slow} }}",
        # The map compares keys without case: the user must be the one the query names.
        f'            if ($args != "email=$sipcert_u%40$ssl_server_name") {{ {slow} }}',
        # Not $sipcert_e: nginx keeps a map's value for the whole request, and after the
        # redirect below /_sipcert_slow would send this object's ETag with another body.
        '            set $sipcert_etag "\\"$sipcert_t\\"";',
        "            error_page 404 = @sipcert_changed;",
        "            log_not_found off;",
        f"            alias {root}/$ssl_server_name/o/$sipcert_n/{BODY_NAME};",
        *_body_headers(max_age),
        "        }",
    ]
    routing = [
        "        proxy_http_version 1.1;",
        '        proxy_set_header Connection "";',
        "        proxy_set_header Host $host;",
        f"        proxy_set_header {DOMAIN_HEADER} $ssl_server_name;",
        f"        proxy_set_header {CLIENT_HEADER} $remote_addr;",
        # A map entry's object gone, then the symlink's too: two error_page redirects.
        "        recursive_error_pages on;",
        *hot,
        f"        location @sipcert_changed {{ {slow} }}",
        "        location = /_sipcert_slow {",
        "            internal;",
        f"            default_type {_quoted(not_found_type)};",
        '            if ($sipcert_key = "") { rewrite ^ /_sipcert_store last; }',
        "            if ($sipcert_inm_plain = 0) { rewrite ^ /_sipcert_store last; }",
        f"            root {root}/$sipcert_key;",
        f"            if (!-d {root}/$sipcert_key) {{ return 404 {not_found}; }}",
        "            set $sipcert_obj $sipcert_real;",
        f"            if ($sipcert_obj ~ /o/{PROXY_OBJECT}$) {{ {to_store} }}",
        f"            if ($sipcert_obj ~ /o/{NONE_OBJECT}$) {{ return 404 {not_found}; }}",
        f"            if ($sipcert_obj !~ {_OBJECT}) {{ {to_store} }}",
        "            set $sipcert_etag $sipcert_e;",
        '            set $sipcert_inm "$sipcert_etag|$http_if_none_match";',
        f"            if ($sipcert_inm ~ {_INM_MATCH}) {{ rewrite ^ /_sipcert_304 last; }}",
        '            if ($http_if_none_match ~ "^\\s*\\*\\s*$") {',
        "                rewrite ^ /_sipcert_304 last;",
        "            }",
        "            rewrite ^ /_sipcert_body last;",
        "        }",
        "        location = /_sipcert_body {",
        "            internal;",
        # The object was removed after its symlink was read: the Store answers instead.
        "            error_page 404 = @sipcert_store;",
        "            log_not_found off;",
        f"            alias $sipcert_obj/{BODY_NAME};",
        *_body_headers(max_age),
        "        }",
        "        location = /_sipcert_304 {",
        "            internal;",
        '            default_type "";',
        "            add_header ETag $sipcert_etag;",
        f'            add_header Cache-Control "max-age={max_age}";',
        "            return 304;",
        "        }",
        f"        location @sipcert_store {{ {to_store} }}",
        "        location = /_sipcert_store {",
        "            internal;",
        "            proxy_pass http://sipcert_store$request_uri;",
        "        }",
        "        location / {",
        "            proxy_pass http://sipcert_store;",
        "        }",
    ]
    lines = [
        "# sipcert edge mode (issue 13): generated by `sipcert nginx-config`; do not edit.",
        *([f"user {user};"] if user else []),
        f"worker_processes {workers};",
        f"pid {pre}/nginx.pid;",
        f"error_log {pre}/error.log warn;",
        "pcre_jit on;",
        # A reload (the publisher's, for a new map generation) is complete once the old
        # workers are gone: they finish what they are sending, for at most this long.
        "worker_shutdown_timeout 10s;",
        "events { worker_connections 4096; }",
        "http {",
        *(f"    {line}" for line in _MAP_HASH),
        f"    client_body_temp_path {pre}/body_temp;",
        f"    proxy_temp_path {pre}/proxy_temp;",
        f"    fastcgi_temp_path {pre}/fastcgi_temp;",
        f"    uwsgi_temp_path {pre}/uwsgi_temp;",
        f"    scgi_temp_path {pre}/scgi_temp;",
        "    # $upstream_addr is '-' for an answer from the files: it shows what reached Python;",
        "    # $uri how nginx answered: /search-cgi from the map, /_sipcert_* otherwise.",
        '    log_format sipcert \'$remote_addr [$time_local] "$request" $status '
        '$body_bytes_sent $request_time "$ssl_server_name" "$uri" "$upstream_addr"\';',
        f"    access_log {pre}/access.log sipcert buffer=64k flush=1s;",
        "    server_tokens off;",
        "    sendfile on;",
        "    tcp_nopush on;",
        "    keepalive_timeout 75s;",
        "    keepalive_requests 100000;",
        # No open_file_cache: it keeps a descriptor per cached file, and once a worker runs
        # out of them (100,000 AORs against a soft limit of 1,024 to 20,000) its `-d` test
        # fails and an enrolled AOR got the "no certificates" 404. Without it `-d` is a
        # stat() and each body is opened for its request only.
        "    types { }",
        "    default_type application/octet-stream;",
        *(f"    {line}" for line in TLS_DIRECTIVES),
        "    client_max_body_size 1m;  # the Store applies its own, smaller limit",
        "    upstream sipcert_store {",
        f"        server unix:{socket};",
        "        keepalive 32;",
        "    }",
        "    # The canonical query of an AOR whose answer is a file (proto.edge).",
        '    map "$ssl_server_name|$request_method|$args" $sipcert_key {',
        '        default "";',
    ]
    user = FILE_USER_PATTERN
    for domain in domains:
        host = re.escape(domain.name)
        lines.append(
            f'        "~^{host}\\|(?:GET|HEAD)\\|(?:email|sip)=(?<sipcert_user>{user})'
            f'%40{host}$" "{domain.name}/a/$sipcert_user";'
        )
    lines += [
        "    }",
        "    # The map generation the publisher wrote (none yet: every AOR takes its symlink).",
        '    map "$ssl_server_name|$args" $sipcert_hit {',
        '        default "";',
        f"        include {root}/{MAP_FOLDER}/*.map;",
        "    }",
        "    map $request_method $sipcert_read {",
        "        GET 1;",
        "        HEAD 1;",
        "        default 0;",
        "    }",
        "    map $http_if_none_match $sipcert_conditional {",
        '        "" 0;',
        "        default 1;",
        "    }",
        "    # If-None-Match is compared here only when made of printable ASCII.",
        "    map $http_if_none_match $sipcert_inm_plain {",
        '        "" 1;',
        '        "~^[\\x20-\\x7e\\t]*$" 1;',
        "        default 0;",
        "    }",
        "    # realpath() once: `set $x $realpath_root` would resolve it twice (lengths, values).",
        "    map $realpath_root $sipcert_real {",
        '        "~^(?<sipcert_p>/.*)$" "$sipcert_p";',
        '        default "";',
        "    }",
        "    # The headers of an object, read from its resolved path (proto.edge).",
        "    map $sipcert_k $sipcert_type {",
        '        "1" "application/pkix-cert";',
        '        "m" "multipart/mixed; boundary=\\"sipcert-$sipcert_t\\"";',
        '        "~^m(?<sipcert_s>[0-9]+)$" '
        '"multipart/mixed; boundary=\\"sipcert-$sipcert_t-$sipcert_s\\"";',
        '        default "";',
        "    }",
        "    map $sipcert_t $sipcert_e {",
        '        "" "";',
        '        default "\\"$sipcert_t\\"";',
        "    }",
        "    map $sipcert_d $sipcert_disposition {",
        f'        "{ABSENT_FIELD}" "";',
        '        default "$sipcert_d";',
        "    }",
        "    map $sipcert_l $sipcert_description {",
        f'        "{ABSENT_FIELD}" "";',  # no label, the usual answer: no regex run
        f'        "~^{LABEL_MARK}(?<sipcert_x>.+)$" "$sipcert_x";',
        '        default "";',
        "    }",
        "    # Draft §4.3: no answer without a served domain's name in the handshake.",
        "    server {",
    ]
    for address in listen:
        lines.append(f"        listen {address} ssl default_server;")
    lines += [
        "        ssl_reject_handshake on;",
        # Reached by a request whose Host names no domain (the handshake did): it is
        # routed on the TLS server name like the others, as the Store ignores Host.
        *routing,
        "    }",
    ]
    for domain in domains:
        cert = _path(domain.tls_cert, f"domain {domain.name}: TLS certificate")
        key = _path(domain.tls_key, f"domain {domain.name}: TLS key")
        lines.append("    server {")
        for address in listen:
            lines.append(f"        listen {address} ssl;")
        lines += [
            f"        server_name {domain.name};",
            f"        ssl_certificate {cert};",
            f"        ssl_certificate_key {key};",
            *routing,
            "    }",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"
