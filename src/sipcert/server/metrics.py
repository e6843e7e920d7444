"""What the Store counts, for ``GET /metrics`` on the admin listener (issue 10).

:class:`Metrics` is the interface the request handler calls; it does nothing, so a Store
without an admin listener (and every unit test that does not care) pays nothing.
:class:`PrometheusMetrics` keeps the numbers with ``prometheus_client`` and renders the
Prometheus text format (version 0.0.4).

Pre-forked workers each count their own requests, and a scrape reaches one of them. The
library's multiprocess mode fits that model: every process writes its values to memory-mapped
files in one folder (``PROMETHEUS_MULTIPROC_DIR``) and a scrape sums the files of all
processes. The library picks its value class when it is first imported, so the parent calls
:func:`prepare_multiprocess_dir` (which empties the folder of an earlier run) *before*
anything imports ``prometheus_client``; the workers, forked after that, notice their new pid
at their first write and open files of their own. Open connections are a ``livesum`` gauge:
the parent calls :func:`mark_process_dead` for a worker that exited, so its last value stops
counting; counters of a dead worker keep counting (they are totals since the start).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

__all__ = [
    "CONTENT_TYPE",
    "MULTIPROC_ENV",
    "ROUTES",
    "Metrics",
    "PrometheusMetrics",
    "mark_process_dead",
    "prepare_multiprocess_dir",
]

#: The environment variable prometheus_client reads at import to choose multiprocess mode.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Content type of the Prometheus text exposition format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Paths counted under their own ``route`` label; any other path counts as ``other``, so a
#: client cannot grow the number of series by asking for made-up paths.
ROUTES = frozenset({"/search-cgi", "/account", "/account/revoke", "/healthz", "/readyz"})
_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "POST", "OPTIONS"})
#: Latency buckets (seconds): a cached GET takes well under a millisecond, an enrollment a
#: few (one fdatasync), a slow database seconds.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def prepare_multiprocess_dir(path: Path) -> None:
    """Empty (or create) ``path`` and make it this process tree's metrics folder.

    Must run before the first import of ``prometheus_client`` in the process: the library
    reads :data:`MULTIPROC_ENV` once, at import.
    """
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(mode=0o700, parents=True)
    os.environ[MULTIPROC_ENV] = str(path)


def mark_process_dead(pid: int) -> None:
    """Drop the live gauges of worker ``pid`` (it exited); no-op outside multiprocess mode."""
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


def route_of(path: str) -> str:
    """The ``route`` label of a request path (see :data:`ROUTES`)."""
    return path if path in ROUTES else "other"


class Metrics:
    """The events the Store counts; this base class counts nothing."""

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        """One answered request."""

    def enrolled(self) -> None:
        """A new certificate was stored (draft §5.1)."""

    def revoked(self, count: int) -> None:
        """``count`` certificates were deleted by their Subscriber (draft §5)."""

    def auth_failed(self) -> None:
        """A Digest answer was checked and was wrong."""

    def rate_limited(self) -> None:
        """A 429 was answered (the guessing limiter refused)."""

    def database_error(self) -> None:
        """A storage operation failed."""

    def set_connections(self, count: int) -> None:
        """This process has ``count`` open client connections."""


class PrometheusMetrics(Metrics):
    """:class:`Metrics` kept by ``prometheus_client``.

    In multiprocess mode (:data:`MULTIPROC_ENV` set before the import) :meth:`render` sums
    every process's files; otherwise it renders this process's own registry.
    """

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess_dir = os.environ.get(MULTIPROC_ENV) or None
        # In multiprocess mode the values live in the files; registering them as well
        # would count each twice.
        own = None if self.multiprocess_dir else CollectorRegistry(auto_describe=True)
        self._own_registry = own
        kw: dict[str, Any] = {"registry": own}
        self._requests = Counter(
            "sipcert_http_requests",
            "HTTP requests answered, by route, method and status",
            ["route", "method", "status"],
            **kw,
        )
        self._latency = Histogram(
            "sipcert_http_request_duration_seconds",
            "Time to answer a request, by route",
            ["route"],
            buckets=BUCKETS,
            **kw,
        )
        self._enrollments = Counter(
            "sipcert_enrollments", "Certificates newly stored (draft 5.1)", **kw
        )
        self._revocations = Counter(
            "sipcert_revocations", "Certificates deleted by their Subscriber (draft 5)", **kw
        )
        self._auth_failures = Counter(
            "sipcert_auth_failures", "Digest answers checked and found wrong", **kw
        )
        self._rate_limited = Counter(
            "sipcert_rate_limited", "Requests refused with 429 by the guessing limiter", **kw
        )
        #: The labelled children of each (route, method, status), made once (issue 13:
        #: ``labels()`` per answer was a lock and a dict of tuples per request).
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._db_errors = Counter("sipcert_database_errors", "Storage operations that failed", **kw)
        self._connections = Gauge(
            "sipcert_open_connections",
            "Open client connections (all live workers)",
            multiprocess_mode="livesum",
            **kw,
        )

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        method = method if method in _METHODS else "other"
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:  # routes, methods and statuses are few: kept for every request
            children = (
                self._requests.labels(route, method, str(status)),
                self._latency.labels(route),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def enrolled(self) -> None:
        self._enrollments.inc()

    def revoked(self, count: int) -> None:
        self._revocations.inc(count)

    def auth_failed(self) -> None:
        self._auth_failures.inc()

    def rate_limited(self) -> None:
        self._rate_limited.inc()

    def database_error(self) -> None:
        self._db_errors.inc()

    def set_connections(self, count: int) -> None:
        self._connections.set(count)

    def render(self, certificates_stored: int | None) -> bytes:
        """The text exposition of every process's metrics, plus the stored-certificate count.

        ``certificates_stored`` is counted in the database at scrape time (it is the same for
        every worker); ``None`` (the database failed) leaves the metric out.
        """
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.core import GaugeMetricFamily
        from prometheus_client.multiprocess import MultiProcessCollector

        if self._own_registry is not None:
            registry = self._own_registry
            text = generate_latest(registry)
        else:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, self.multiprocess_dir)  # type: ignore[no-untyped-call]
            text = generate_latest(registry)
        if certificates_stored is None:
            return text
        family = GaugeMetricFamily(
            "sipcert_certificates_stored", "Unexpired certificates in the database"
        )
        family.add_metric([], float(certificates_stored))
        extra = CollectorRegistry()
        extra.register(_Fixed(family))
        return text + generate_latest(extra)


class _Fixed:
    """A collector that yields one prepared metric family."""

    def __init__(self, family: Any) -> None:
        self._family = family

    def collect(self) -> list[Any]:
        return [self._family]

    def describe(self) -> list[Any]:
        return []
