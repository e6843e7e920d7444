"""The client's defaults, in a module that imports nothing heavy.

``sipcert fetch --help`` shows them; importing :mod:`sipcert.client.ua` (httpx, dnspython,
cryptography) only to print a default cost most of the CLI's start-up (issue 13). The
modules that use them import them from here, under the names they always had.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path

__all__ = [
    "DEFAULT_CACHE_TTL",
    "DEFAULT_DEVICE",
    "DEFAULT_KEY_TYPE",
    "DEFAULT_RENEW_WINDOW",
    "DEFAULT_VALIDITY",
    "KEY_TYPES",
    "default_home",
]

#: Default TTL (seconds) of ``ClientConfig`` and of ``--cache-ttl``: the draft §5 zero, so a
#: revocation is seen at once unless the embedder or the user asks for a cache.
DEFAULT_CACHE_TTL = 0.0
#: The device name of a home when none is given.
DEFAULT_DEVICE = "default"
#: Default lifetime of an enrolled certificate (draft §5: "days to months").
DEFAULT_VALIDITY = timedelta(days=30)
#: Renew when the current certificate expires within this window (draft §5.1).
DEFAULT_RENEW_WINDOW = timedelta(days=10)
#: The values of :class:`sipcert.proto.certs.KeyType` (a test keeps them equal), for
#: ``--key-type`` without importing cryptography.
KEY_TYPES = ("p256", "p384", "rsa2048", "rsa3072")
DEFAULT_KEY_TYPE = "p256"


def default_home(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_DATA_HOME/sipcert``, else ``~/.local/share/sipcert`` (XDG base directories)."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_DATA_HOME", "")
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".local" / "share"
    return root / "sipcert"
