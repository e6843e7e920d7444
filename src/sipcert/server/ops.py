"""Health checks and the admin listener: ``/healthz``, ``/readyz``, ``/metrics`` (issue 10).

``/healthz`` answers 200 while the process serves at all (a load balancer's liveness
probe). ``/readyz`` answers 200 only when the certificate database answers an indexed
lookup and the credential source answers a lookup (both are needed for GET and for PUT and
DELETE, draft §4.5 and §5); otherwise 503 naming which one failed, never why (the reason,
which may name hosts and paths, goes to the log). Both are answered on every served domain
of the TLS listener, whatever the SNI name, and on the optional plain-HTTP admin listener
(``admin_listen``), which also serves ``/metrics`` (:mod:`sipcert.server.metrics`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from aiohttp import web

from sipcert.errors import SipCertError, StorageError
from sipcert.server.credentials import CredentialSource
from sipcert.server.metrics import CONTENT_TYPE, Metrics, PrometheusMetrics
from sipcert.storage import CertificateStore

__all__ = ["HEALTH_PATH", "READY_PATH", "Health", "admin_handler"]

log = logging.getLogger("sipcert.server")

HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
METRICS_PATH = "/metrics"
#: A well-formed certHash no certificate has (27 base64 characters): an indexed miss.
_PROBE_HASH = "A" * 27
#: A Digest user name no Subscriber has; the lookup answers "no such user".
_PROBE_USER = "sipcert-readiness-probe"


def _text(status: int, text: str) -> web.Response:
    response = web.Response(status=status, text=text + "\n", content_type="text/plain")
    response.headers["Cache-Control"] = "no-store"
    return response


class Health:
    """Answers the probes for one Store process.

    ``storage`` and ``credentials`` are read through callables, so a SIGHUP that replaced
    the credential source is seen at once. ``domain`` is the realm the credential probe
    asks in (the first served domain).
    """

    def __init__(
        self,
        *,
        storage: Callable[[], CertificateStore],
        credentials: Callable[[], CredentialSource],
        domain: str,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._storage = storage
        self._credentials = credentials
        self._domain = domain
        self._metrics = metrics
        self._clock = clock

    async def answer(self, request: web.BaseRequest) -> web.Response:
        """The answer to a GET or HEAD of :data:`HEALTH_PATH` or :data:`READY_PATH`."""
        if request.method not in ("GET", "HEAD"):
            response = _text(405, f"method {request.method} is not allowed; use GET, HEAD")
            response.headers["Allow"] = "GET, HEAD"
            return response
        if request.path == HEALTH_PATH:
            return _text(200, "ok")
        failed = await self.problems()
        if failed:
            return _text(503, "not ready: " + ", ".join(failed) + " unavailable")
        return _text(200, "ready")

    async def problems(self) -> list[str]:
        """The names of the sources that failed their probe (empty: ready)."""
        failed: list[str] = []
        now = datetime.fromtimestamp(self._clock(), UTC)
        try:
            await self._storage().get_by_cert_hash(_PROBE_HASH, now)
        except SipCertError as exc:
            self._metrics.database_error()
            log.error("readiness: the certificate database failed: %s", exc)
            failed.append("database")
        try:
            await self._credentials().lookup(_PROBE_USER, self._domain)
        except SipCertError as exc:
            log.error("readiness: the credential source failed: %s", exc)
            failed.append("credentials")
        return failed

    async def count_certificates(self) -> int | None:
        """Unexpired certificates stored, or ``None`` when the database fails."""
        try:
            return await self._storage().count(datetime.fromtimestamp(self._clock(), UTC))
        except StorageError as exc:
            self._metrics.database_error()
            log.error("metrics: counting certificates failed: %s", exc)
            return None


def admin_handler(
    health: Health, metrics: Metrics
) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    """The request handler of the plain-HTTP admin listener."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        try:
            if request.path in (HEALTH_PATH, READY_PATH):
                response = await health.answer(request)
            elif request.path == METRICS_PATH and request.method in ("GET", "HEAD"):
                if isinstance(metrics, PrometheusMetrics):
                    count = await health.count_certificates()
                    response = web.Response(body=metrics.render(count))
                    response.headers["Content-Type"] = CONTENT_TYPE
                else:
                    response = _text(404, "metrics are off")
            else:
                response = _text(404, "the admin listener answers /healthz, /readyz, /metrics")
        except Exception:
            log.exception("internal error answering %s on the admin listener", request.path)
            response = _text(500, "internal error")
        return response  # not counted in the request metrics: those are the Store's own

    return handle
