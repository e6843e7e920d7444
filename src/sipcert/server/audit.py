"""The audit log: one record per enrollment and per revocation (issue 10).

Who (the Digest user and the AOR), which certificate (its SHA-256 fingerprint and RFC 4387
certHash), from which address (what the request handler sees as the client; behind HAProxy
the PROXY-protocol address) and through which frontend (this Store's ``frontend_name`` and
the local address that took the connection). Never a password, a Digest response or a
nonce: the record is built from these fields only, never from request headers.

The records go to the ``sipcert.audit`` logger: with ``log_format = "json"`` each is one JSON
object with these fields at the top level; in the text format they follow the event as
``key=value`` pairs. ``audit_log`` in the configuration also appends them to a file.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

__all__ = ["AUDIT_LOGGER", "Audit"]

#: Logger name of the audit records.
AUDIT_LOGGER = "sipcert.audit"


def _listener(request: Any) -> str:
    transport = getattr(request, "transport", None)
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        host, port = sockname[0], sockname[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return "-"


class Audit:
    """Writes the audit records of one Store process (``frontend`` names this Store)."""

    def __init__(self, frontend: str, logger: logging.Logger | None = None) -> None:
        self.frontend = frontend
        self._log = logger or logging.getLogger(AUDIT_LOGGER)

    def enrolled(
        self,
        request: Any,
        *,
        user: str,
        aor: str,
        sha256: str,
        cert_hash: str,
        new: bool,
    ) -> None:
        """A PUT stored a certificate (``new``) or found it already stored (draft §5.1)."""
        self._emit(
            "enroll" if new else "enroll-again",
            request,
            user=user,
            aor=aor,
            sha256=[sha256],
            cert_hash=[cert_hash],
        )

    def revoked(
        self,
        request: Any,
        *,
        user: str,
        aor: str,
        sha256: Sequence[str],
        cert_hash: Sequence[str],
        removed: int,
        via: str,
    ) -> None:
        """``removed`` certificates deleted (draft §5) through ``via`` (DELETE, account page).

        ``sha256``/``cert_hash`` list the unexpired certificates that matched just before the
        deletion (an expired one is removed too, and counted, but not listed).
        """
        self._emit(
            "revoke",
            request,
            user=user,
            aor=aor,
            sha256=list(sha256),
            cert_hash=list(cert_hash),
            removed=removed,
            via=via,
        )

    def _emit(self, event: str, request: Any, **fields: Any) -> None:
        if not self._log.isEnabledFor(logging.INFO):
            return  # what logging would do with the record, without building it first
        record: dict[str, Any] = {
            "event": event,
            **fields,
            "address": getattr(request, "remote", None) or "-",
            "frontend": self.frontend,
            "listener": _listener(request),
        }
        text = " ".join(
            f"{key}={','.join(map(str, value)) if isinstance(value, list) else value}"
            for key, value in record.items()
            if key != "event"
        )
        self._log.info("%s %s", event, text, extra={"audit": record})
