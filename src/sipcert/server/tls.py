"""The Store's TLS set-up: one listening context, one certificate per domain chosen by SNI.

Draft §4.3/§4.5: the client sends the AOR's domain in the TLS server name indication and the
Store "MUST return a certificate with a SubjectAltName that matches the domain portion of the
original AOR". So one listener serves several domains: the listening context holds no
certificate of its own, and its ``sni_callback`` switches the connection to the context of
the named domain. A handshake naming no served domain (or none at all) is refused before any
certificate is sent; the callback asks OpenSSL to send ``unrecognized_name``, which uvloop
does not deliver (CPython gh-98078 has the same bug in asyncio): the client just sees the
connection closed.

Each per-domain context is tagged with its domain, so after the handshake the HTTP handler
reads the connection's domain with :func:`sni_domain` (``server_hostname`` is ``None`` on a
server-side ``SSLObject``).

Protocols and suites: TLS 1.2 and 1.3 only; for TLS 1.2 only ECDHE with AEAD ciphers
(forward secrecy). The draft's §5 "MUST support TLS_RSA_WITH_AES_128_CBC_SHA or
TLS_RSA_WITH_3DES_CBC_SHA" is deliberately not followed: both lack forward secrecy, CBC with
SHA-1 MAC is fragile and 3DES is broken (Sweet32, RFC 7525 §4.2).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sipcert.errors import CertificateParseError, ConfigError, NameMismatchError
from sipcert.proto.names import check_server_certificate

__all__ = [
    "TLS12_CIPHERS",
    "DomainContext",
    "build_sni_context",
    "load_domain_context",
    "replace_domain_contexts",
    "sni_domain",
]

#: OpenSSL cipher string for TLS 1.2: ECDHE key exchange, AEAD only. TLS 1.3 suites are all AEAD.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
_MAX_PEM_SIZE = 1 << 20


class DomainContext(ssl.SSLContext):
    """A server context for one domain; :attr:`sni_domain` tells the handler which one."""

    sni_domain: str


def _base_context(cls: type[ssl.SSLContext] = ssl.SSLContext) -> Any:
    ctx = cls(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _read_pem(path: Path, what: str, domain: str) -> bytes:
    try:
        with open(path, "rb") as file:
            data = file.read(_MAX_PEM_SIZE + 1)
    except OSError as exc:
        raise ConfigError(
            f"domain {domain}: cannot read the TLS {what} file {path}: {exc.strerror or exc}"
        ) from exc
    if len(data) > _MAX_PEM_SIZE:
        raise ConfigError(f"domain {domain}: the TLS {what} file {path} is over 1 MiB")
    return data


def load_domain_context(
    domain: str, cert_file: Path, key_file: Path, *, now: datetime
) -> DomainContext:
    """A context presenting ``cert_file`` (PEM chain, leaf first) with ``key_file`` (PEM).

    Checks what would otherwise only show up as refused clients: the files are PEM, the key is
    unencrypted and belongs to the certificate, the leaf names ``domain`` exactly as the draft
    §4.3 rule requires, and it is valid at ``now``. Raises :class:`ConfigError`.
    """
    cert_pem = _read_pem(cert_file, "certificate", domain)
    key_pem = _read_pem(key_file, "key", domain)
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as exc:
        raise ConfigError(f"domain {domain}: {cert_file} holds no PEM certificate ({exc})") from exc
    try:
        serialization.load_pem_private_key(key_pem, password=None)
    except TypeError as exc:
        raise ConfigError(
            f"domain {domain}: the TLS key {key_file} is encrypted; give an unencrypted key"
        ) from exc
    except ValueError as exc:
        raise ConfigError(f"domain {domain}: {key_file} holds no usable PEM private key") from exc
    leaf = chain[0]
    try:
        check_server_certificate(leaf, domain)
    except (NameMismatchError, CertificateParseError) as exc:
        raise ConfigError(f"domain {domain}: TLS certificate {cert_file}: {exc}") from exc
    if now > leaf.not_valid_after_utc:
        raise ConfigError(
            f"domain {domain}: TLS certificate {cert_file} expired at "
            f"{leaf.not_valid_after_utc.isoformat()}"
        )
    if now < leaf.not_valid_before_utc:
        raise ConfigError(
            f"domain {domain}: TLS certificate {cert_file} is not valid before "
            f"{leaf.not_valid_before_utc.isoformat()}"
        )
    ctx: DomainContext = _base_context(DomainContext)
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:
        reason = "the key does not belong to the certificate" if "MISMATCH" in str(exc) else exc
        raise ConfigError(f"domain {domain}: {cert_file} / {key_file}: {reason}") from exc
    ctx.sni_domain = domain
    return ctx


class _SniContext(ssl.SSLContext):
    """The listening context; :attr:`domain_contexts` is what its SNI callback picks from."""

    domain_contexts: dict[str, DomainContext]


def replace_domain_contexts(
    listener: ssl.SSLContext, contexts: Mapping[str, DomainContext]
) -> None:
    """Present ``contexts`` from the next handshake on (SIGHUP after a certificate renewal).

    Connections already open keep the certificate they were made with; nothing is dropped.
    Only the domains ``listener`` already serves are replaced (adding one needs a restart).
    """
    if not isinstance(listener, _SniContext):
        raise ConfigError("not a listening context made by build_sni_context")
    current = listener.domain_contexts
    current.update({name: ctx for name, ctx in contexts.items() if name in current})


def build_sni_context(contexts: Mapping[str, DomainContext]) -> ssl.SSLContext:
    """The listening context: picks ``contexts[sni]``, refuses unknown or missing SNI.

    ``contexts`` is keyed by lower-case domain; the SNI name is compared case-insensitively
    and without a trailing dot (RFC 6066 §3 names are DNS names).
    """
    if not contexts:
        raise ConfigError("no domain to serve: configure at least one domain with its TLS files")
    per_domain = dict(contexts)
    listener: _SniContext = _base_context(_SniContext)
    listener.domain_contexts = per_domain

    def choose(sslobj: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> int | None:
        ctx = per_domain.get(server_name.lower().rstrip(".")) if server_name else None
        if ctx is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        sslobj.context = ctx
        return None

    listener.sni_callback = choose
    return listener


def sni_domain(transport: Any) -> str | None:
    """The served domain a connection's TLS handshake named, or ``None`` (no TLS)."""
    if transport is None:
        return None
    sslobj = transport.get_extra_info("ssl_object")
    domain = getattr(getattr(sslobj, "context", None), "sni_domain", None)
    return domain if isinstance(domain, str) else None
