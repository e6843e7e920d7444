"""The TLS server-name rule of draft §4.3.

Self-signed user certificates are only trustworthy because the Store that serves them proves,
in the TLS handshake, that it speaks for the AOR's domain. The draft makes the match
deliberately narrow: a SubjectAltName must equal the AOR's host case-insensitively;
sub-domains do not match and IP addresses do not match host names. We read "SubjectAltName"
literally -- only dNSName entries count, there is no Common Name fallback -- and we do not
honour wildcards, which the draft does not allow for.
"""

from __future__ import annotations

import ipaddress

from cryptography import x509

from sipcert.errors import AORError, CertificateParseError, InputTooLargeError, NameMismatchError
from sipcert.proto.aor import normalize_domain

__all__ = ["check_server_certificate", "dns_name_matches", "server_certificate_names"]


def dns_name_matches(presented: str, domain: str) -> bool:
    """Whether a presented dNSName names exactly ``domain`` (draft §4.3).

    Equal ignoring case, nothing else: a ``*`` anywhere, a sub-domain or parent domain, an IP
    address written as a name, a non-ASCII (U-label) or otherwise malformed name never
    matches. An invalid ``domain`` matches nothing either.
    """
    if "*" in presented or _is_ip(presented):
        return False
    try:
        return normalize_domain(presented) == normalize_domain(domain)
    except (AORError, InputTooLargeError):
        return False


def server_certificate_names(cert: x509.Certificate) -> list[str]:
    """The dNSName SubjectAltNames of a TLS server certificate, in certificate order.

    No SAN extension means no names (the Common Name is deliberately ignored). Raises
    :class:`CertificateParseError` when the extension itself does not decode.
    """
    try:
        extension = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise CertificateParseError(f"server certificate extensions do not decode: {exc}") from exc
    return [str(name) for name in extension.value.get_values_for_type(x509.DNSName)]


def check_server_certificate(cert: x509.Certificate, domain: str) -> None:
    """Raise :class:`NameMismatchError` unless a dNSName SAN names ``domain`` (draft §4.3).

    ``domain`` is the host of the original AOR, never the SRV target (draft §4.3: "the
    original is example.com, not the result of any SRV lookup"). iPAddress SANs and the
    subject Common Name are never considered. An invalid ``domain`` raises
    :class:`sipcert.errors.AORError`.
    """
    expected = normalize_domain(domain)
    presented = server_certificate_names(cert)
    if not any(dns_name_matches(name, expected) for name in presented):
        raise NameMismatchError(expected, presented)


def _is_ip(text: str) -> bool:
    """Whether ``text`` is an IPv4/IPv6 address, with or without brackets."""
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True
