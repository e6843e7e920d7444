"""The UA side of draft-jennings-sipping-certs-02: locate, retrieve, cache, enroll.

Start with :class:`AsyncUA` (or :class:`UA` for synchronous code). The layers under it:
:mod:`.locate` (DNS SRV, draft §4.1), :mod:`.tls` (the strict TLS connection, draft §4.3),
:mod:`.fetch` (HTTP exchanges, draft §4.5, §5), :mod:`.cache` (draft §5) and :mod:`.home`
(the user's own keys and certificates).

The names below are imported on first use (PEP 562): ``sipcert fetch --help`` and the
lighter submodules (:mod:`.defaults`) then do not pay for httpx, dnspython and the rest.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sipcert.client.cache import CertificateCache, SignaledCheck
    from sipcert.client.fetch import DigestAuth, FetchResult, parse_certificate_bodies
    from sipcert.client.home import Home, default_home
    from sipcert.client.locate import Location, Locator, Target, make_resolver
    from sipcert.client.tls import (
        RoutedBackend,
        StrictTransport,
        make_ssl_context,
    )
    from sipcert.client.ua import (
        UA,
        AsyncUA,
        ClientConfig,
        Credentials,
        Enrollment,
        Renewal,
        Revocation,
        Status,
    )

__all__ = [
    "UA",
    "AsyncUA",
    "CertificateCache",
    "ClientConfig",
    "Credentials",
    "DigestAuth",
    "Enrollment",
    "FetchResult",
    "Home",
    "Location",
    "Locator",
    "Renewal",
    "Revocation",
    "RoutedBackend",
    "SignaledCheck",
    "Status",
    "StrictTransport",
    "Target",
    "default_home",
    "make_resolver",
    "make_ssl_context",
    "parse_certificate_bodies",
]

#: Where each public name lives.
_WHERE = {
    "CertificateCache": "cache",
    "SignaledCheck": "cache",
    "DigestAuth": "fetch",
    "FetchResult": "fetch",
    "parse_certificate_bodies": "fetch",
    "Home": "home",
    "default_home": "home",
    "Location": "locate",
    "Locator": "locate",
    "Target": "locate",
    "make_resolver": "locate",
    "RoutedBackend": "tls",
    "StrictTransport": "tls",
    "make_ssl_context": "tls",
    "UA": "ua",
    "AsyncUA": "ua",
    "ClientConfig": "ua",
    "Credentials": "ua",
    "Enrollment": "ua",
    "Renewal": "ua",
    "Revocation": "ua",
    "Status": "ua",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'sipcert.client' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"sipcert.client.{module}"), name)
    globals()[name] = value
    return value
