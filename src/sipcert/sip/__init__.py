"""SIP transport and user agent (RFC 3261) on top of the sans-IO :mod:`sipcert.proto.sip`.

* :mod:`sipcert.sip.transport` — UDP, TCP and TLS sockets (TLS verified as RFC 5922 says);
* :mod:`sipcert.sip.ua` — a user agent: REGISTER with Digest, MESSAGE, INVITE/ACK/BYE.
"""

from sipcert.sip.transport import Hop, Origin, SipTransport, Transport, client_tls_context
from sipcert.sip.ua import Call, Dialog, IncomingRequest, Timers, UserAgent

__all__ = [
    "Call",
    "Dialog",
    "Hop",
    "IncomingRequest",
    "Origin",
    "SipTransport",
    "Timers",
    "Transport",
    "UserAgent",
    "client_tls_context",
]
