"""sipcert: Certificate Discovery for SIP (draft-jennings-sipping-certs-02).

The sans-IO protocol core lives in :mod:`sipcert.proto`; the Store, the UA client, storage
and the SIP layer are thin I/O layers on top of it. Errors: :mod:`sipcert.errors`.
"""

__version__ = "0.1.0"
