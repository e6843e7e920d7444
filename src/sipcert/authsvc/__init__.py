"""``sipcert authsvc``: the authentication service of draft §6 (docs/delegated.md).

An I/O layer on the ``sip/`` stack and the Store client; the decisions and the header are in
:mod:`sipcert.proto.delegation`.
"""

from sipcert.authsvc.config import AuthServiceConfig, Subscriber, load_config
from sipcert.authsvc.service import DEVICE, AuthService, Handled, SyncResult

__all__ = [
    "DEVICE",
    "AuthService",
    "AuthServiceConfig",
    "Handled",
    "Subscriber",
    "SyncResult",
    "load_config",
]
