"""Starting and stopping the Store: sockets, worker processes, signals, clean shutdown.

Design (measured before the project, FIELD-NOTES "Speed of HTTPS servers"): aiohttp's
low-level server on uvloop, one listening socket per ``listen`` address with one SNI
context (:mod:`sipcert.server.tls`). ``workers`` > 1 pre-forks: the parent binds every
socket once, forks the workers, which all accept on them, and forwards SIGTERM/SIGINT to
them. Everything that can be wrong with the configuration is checked in the parent before
anything is forked, so a mistake is one clear error, not N crashing workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web

from sipcert.errors import ConfigError, SipCertError, StorageError
from sipcert.proto.digest import DEFAULT_MAX_CLOCK_SKEW
from sipcert.server.answers import AnswerCache, version_source
from sipcert.server.app import AccessLog, StoreApp, access_log_options
from sipcert.server.audit import AUDIT_LOGGER, Audit
from sipcert.server.config import ConnectionLimits, ListenAddress, StoreConfig
from sipcert.server.conn import (
    ConnectionGuard,
    GuardedSite,
    connection_cap,
    fix_malloc_mmap_threshold,
    raise_nofile_limit,
)
from sipcert.server.credentials import (
    FileCredentials,
    KamailioSQLiteCredentials,
    open_credentials,
)
from sipcert.server.hotget import hot_get_for
from sipcert.server.http import StoreServer
from sipcert.server.jsonlog import JsonFormatter
from sipcert.server.lifecycle import Reloader, die_with_parent
from sipcert.server.logsafe import SafeFormatter
from sipcert.server.metrics import (
    Metrics,
    mark_process_dead,
    prepare_multiprocess_dir,
)
from sipcert.server.nonces import load_or_create_secret
from sipcert.server.ops import admin_handler
from sipcert.server.shared import LIMITS_DB as LIMITS_DB  # where they were before issue 10
from sipcert.server.shared import NONCE_DB as NONCE_DB
from sipcert.server.shared import open_shared_state
from sipcert.server.tlog import TransparencyLog, load_or_create_log_keys
from sipcert.server.tls import DomainContext, build_sni_context, load_domain_context
from sipcert.storage import CertificateStore, open_store
from sipcert.storage.tlog import open_log

__all__ = ["bind_sockets", "build_tls", "run", "serve_app", "setup_logging"]

log = logging.getLogger("sipcert.server")

_BACKLOG = 1024
_SHUTDOWN_TIMEOUT = 5.0
#: Folder of the workers' metric files inside the data folder (emptied at each start).
METRICS_DIR = "metrics"
#: How often a worker publishes its open-connection count (seconds).
_CONNECTIONS_EVERY = 1.0
#: Reads the configuration again for SIGHUP (the CLI passes its own).
ReadConfig = Callable[[], StoreConfig]


def setup_logging(level: str, log_format: str = "text", audit_log: Path | None = None) -> None:
    """Log lines on standard error: ``time level logger: message``, or JSON objects.

    ``audit_log`` also appends the audit records (:mod:`sipcert.server.audit`) to that
    file, one JSON object per line whatever the format of the other logs.
    """
    handler = logging.StreamHandler(sys.stderr)
    # One record, one line of printable ASCII, whatever a request put in it (issue 9).
    formatter: logging.Formatter = (
        JsonFormatter()
        if log_format == "json"
        else SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    handler.setFormatter(formatter)
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])
    if audit_log is not None:
        try:
            audit_file = logging.FileHandler(audit_log, encoding="ascii")
        except OSError as exc:
            raise ConfigError(f"audit_log: cannot open {audit_log}: {exc.strerror}") from exc
        audit_file.setFormatter(JsonFormatter())
        logging.getLogger(AUDIT_LOGGER).addHandler(audit_file)


def build_tls(config: StoreConfig) -> ssl.SSLContext:
    """The listening SNI context for every configured domain (:class:`ConfigError`)."""
    now = datetime.now(UTC)
    contexts: dict[str, DomainContext] = {
        d.name: load_domain_context(d.name, d.tls_cert, d.tls_key, now=now) for d in config.domains
    }
    return build_sni_context(contexts)


def bind_unix_socket(path: Path) -> socket.socket:
    """The listening unix socket for the nginx in front (edge mode, issue 13).

    A stale socket file of an earlier run is replaced; any other file there is an error.
    Mode 0660: whoever can connect may name the domain and client address in headers, so
    only the Store's group (nginx's user joins it) may.
    """
    try:
        if path.is_socket():
            path.unlink()
        elif path.exists():
            raise ConfigError(f"unix_socket {path}: exists and is not a socket")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old_umask = os.umask(0o117)
            try:
                sock.bind(str(path))
            finally:
                os.umask(old_umask)
            sock.listen(_BACKLOG)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
    except OSError as exc:
        raise ConfigError(f"cannot listen on unix:{path}: {exc.strerror or exc}") from exc
    return sock


def bind_sockets(addresses: Sequence[ListenAddress]) -> list[socket.socket]:
    """Bound, listening sockets (SO_REUSEADDR; IPv6 sockets are IPv6-only)."""
    sockets: list[socket.socket] = []
    try:
        for address in addresses:
            try:
                infos = socket.getaddrinfo(
                    address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
                )
                family, kind, proto, _, sockaddr = infos[0]
                sock = socket.socket(family, kind, proto)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(sockaddr)
                sock.listen(_BACKLOG)
                sock.setblocking(False)
            except OSError as exc:
                raise ConfigError(f"cannot listen on {address}: {exc.strerror or exc}") from exc
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def serve_app(
    app: StoreApp,
    ssl_context: ssl.SSLContext,
    sockets: Sequence[socket.socket],
    stop: asyncio.Event,
    *,
    access_log: bool | AccessLog | logging.Logger = True,
    purge_interval: float = 3600.0,
    limits: ConnectionLimits | None = None,
    admin_sockets: Sequence[socket.socket] = (),
    json_access_log: bool = False,
    unix_sockets: Sequence[socket.socket] = (),
    hot_get: bool = True,
) -> None:
    """Serve ``app`` on ``sockets`` until ``stop`` is set, then shut down cleanly.

    Connections go through a :class:`~sipcert.server.conn.ConnectionGuard` (deadlines, the
    per-worker cap, the request-head limit) before aiohttp sees them. ``admin_sockets`` serve
    plain HTTP: the probes and ``/metrics`` (:mod:`sipcert.server.ops`). ``unix_sockets``
    serve the Store in plain HTTP to the nginx in front (edge mode, docs/deploy.md).
    ``access_log``: on or off, or where the lines go (an :class:`AccessLog` or a logger).
    ``hot_get``: answer simple GETs on the TLS listeners without aiohttp
    (:mod:`sipcert.server.hotget`; rendered answers kept within the answer cache's budget).
    """
    limits = limits or ConnectionLimits()
    writer: AccessLog | logging.Logger | None
    if isinstance(access_log, (AccessLog, logging.Logger)):  # embedding and tests
        writer = access_log
    else:
        writer = AccessLog(json_lines=json_access_log) if access_log else None
    guard = ConnectionGuard(ssl_context, limits)
    if hot_get:
        guard.hot = hot_get_for(app, writer)
    server = StoreServer(
        guard.wrap(app), keepalive_timeout=limits.keepalive_timeout, **access_log_options(writer)
    )
    guard.bind(server)
    runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=_SHUTDOWN_TIMEOUT)
    await runner.setup()
    admin = web.ServerRunner(
        web.Server(admin_handler(app.health, app.metrics), access_log=None),
        handle_signals=False,
        shutdown_timeout=1.0,
    )
    await admin.setup()
    local = web.ServerRunner(
        StoreServer(
            app.local, keepalive_timeout=limits.keepalive_timeout, **access_log_options(writer)
        ),
        handle_signals=False,
        shutdown_timeout=_SHUTDOWN_TIMEOUT,
    )
    await local.setup()
    tasks: list[asyncio.Task[None]] = []
    try:
        for sock in sockets:
            await GuardedSite(runner, sock, guard, _BACKLOG).start()
        for sock in unix_sockets:
            await web.SockSite(local, sock, backlog=_BACKLOG).start()
        for sock in admin_sockets:
            await web.SockSite(admin, sock, backlog=_BACKLOG).start()
        tasks.append(asyncio.create_task(app.purge_forever(purge_interval)))
        if admin_sockets:
            tasks.append(asyncio.create_task(_publish_connections(app.metrics, guard)))
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await admin.cleanup()
        await local.cleanup()
        await runner.cleanup()
        app.metrics.set_connections(0)
        if isinstance(writer, AccessLog):
            writer.close()


async def _publish_connections(metrics: Metrics, guard: ConnectionGuard) -> None:
    """Publish this worker's open connections for ``/metrics`` (a live-summed gauge)."""
    while True:
        metrics.set_connections(guard.count)
        await asyncio.sleep(_CONNECTIONS_EVERY)


def _metrics_for(config: StoreConfig) -> Metrics:
    if config.ops.admin_listen is None:
        return Metrics()
    from sipcert.server.metrics import PrometheusMetrics

    return PrometheusMetrics()


async def _worker_main(
    config: StoreConfig,
    ssl_context: ssl.SSLContext,
    sockets: Sequence[socket.socket],
    ready: Callable[[], None] | None = None,
    admin_sockets: Sequence[socket.socket] = (),
    read_config: ReadConfig | None = None,
) -> None:
    # The unix socket (edge mode) travels with the TCP ones through the pre-fork.
    unix_sockets = [s for s in sockets if s.family == socket.AF_UNIX]
    sockets = [s for s in sockets if s.family != socket.AF_UNIX]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    reloader: Reloader | None = None
    reloading: set[asyncio.Task[bool]] = set()

    def on_hangup() -> None:
        if reloader is not None:
            task = loop.create_task(reloader.reload())
            reloading.add(task)
            task.add_done_callback(reloading.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    if ready is not None:  # announced only now, so a SIGTERM right after it stops cleanly
        ready()
    secret = config.nonce_secret or load_or_create_secret(config.data_dir)
    storage = open_store(config.db, migrate=config.ops.db_upgrade)
    credentials = open_credentials(config.credentials)
    shared = open_shared_state(
        storage,
        config.data_dir,
        retention=config.nonce_lifetime + DEFAULT_MAX_CLOCK_SKEW,
        limits=config.login_limits,
    )
    tlog = open_transparency(config)
    sequencer: asyncio.Task[None] | None = None
    publisher: asyncio.Task[None] | None = None
    try:
        if tlog is not None:
            await tlog.start()
            sequencer = asyncio.create_task(tlog.run_forever())
        app = StoreApp(
            domains=config.domain_names,
            storage=storage,
            credentials=credentials,
            policy=config.policy,
            nonce_secret=secret,
            nonce_counter=shared.nonces,
            nonce_lifetime=config.nonce_lifetime,
            auth_failures=config.auth_failures,
            auth_failure_window=config.auth_failure_window,
            limiter=shared.limiter,
            metrics=_metrics_for(config),
            audit=Audit(config.ops.frontend_name),
            tlog=tlog,
            answer_cache=answer_cache_for(config, storage),
        )
        reloader = Reloader(config, ssl_context, app, read_config)
        if config.edge_publish_dir is not None:
            publisher = asyncio.create_task(_publish_forever(config, storage, stop))
        # What start-up made (modules, TLS contexts, the users file) lives as long as the
        # worker: out of the collector's sight, each full collection is cheaper (issue 13).
        # Its garbage is collected first, so none of it is kept for good.
        gc.collect()
        gc.freeze()
        await serve_app(
            app,
            ssl_context,
            sockets,
            stop,
            access_log=config.access_log,
            hot_get=config.hot_get,
            purge_interval=config.purge_interval,
            limits=config.connections,
            admin_sockets=admin_sockets,
            json_access_log=config.ops.log_format == "json",
            unix_sockets=unix_sockets,
        )
        log.info("worker %d stopped", os.getpid())
    finally:
        if publisher is not None:
            publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publisher
        if sequencer is not None:
            sequencer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sequencer
        if tlog is not None:
            await tlog.store.close()
        shared.close()
        await (app.credentials if reloader is not None else credentials).close()
        await storage.close()


async def _publish_forever(
    config: StoreConfig, storage: CertificateStore, stop: asyncio.Event
) -> None:
    """Edge mode's publisher inside ``sipcert serve``: in one worker only (a lock file).

    The worker holding the lock publishes; when it dies the lock is released and the
    worker started in its place takes it.
    """
    from sipcert.server.publish import Publisher, take_lock

    root = config.edge_publish_dir
    if root is None:
        return
    try:
        handle = take_lock(root)
    except SipCertError as exc:
        log.error("edge publisher: %s", exc)
        return
    if handle is None:
        return  # another worker (or a `sipcert publish`) publishes
    try:
        try:
            publisher = Publisher(
                root,
                storage,
                domains=config.domain_names,
                max_age=config.policy.max_age,
                nginx_pid=config.edge_nginx_pid,
            )
            await publisher.follow(stop)
        except SipCertError as exc:
            log.error("edge publisher stopped: %s", exc)
    finally:
        handle.close()


def answer_cache_for(config: StoreConfig, storage: object) -> AnswerCache | None:
    """The worker's answer cache (issue 13), when configured and the backend can tell changes.

    Only a backend with a cheap change counter (SQLite's ``data_version``) can keep the
    cache exact across workers; for the others every GET reads the database.
    """
    version = version_source(storage)
    if config.answer_cache_mb == 0 or version is None:
        return None
    return AnswerCache(version, max_bytes=config.answer_cache_mb << 20)


def open_transparency(config: StoreConfig) -> TransparencyLog | None:
    """The transparency log of ``config`` (one per served domain), or None when it is off."""
    if config.transparency is None:
        return None
    keys = {d: load_or_create_log_keys(config.data_dir, d) for d in config.domain_names}
    return TransparencyLog(
        open_log(config.db, config.data_dir),
        keys,
        interval=config.transparency.interval,
        witnesses=config.transparency.witnesses,
    )


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _run_worker(
    config: StoreConfig,
    ssl_context: ssl.SSLContext,
    sockets: Sequence[socket.socket],
    ready: Callable[[], None] | None = None,
    admin_sockets: Sequence[socket.socket] = (),
    read_config: ReadConfig | None = None,
) -> None:
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_worker_main(config, ssl_context, sockets, ready, admin_sockets, read_config))


async def _check_sources(config: StoreConfig) -> None:
    """Open storage and local credential sources once, so mistakes show before serving.

    The database schema is migrated here, once, before any worker starts (``db_upgrade``,
    on by default); with ``db_upgrade = false`` an outdated schema stops the start.
    """
    storage = open_store(config.db, migrate=False)
    try:
        status = await storage.schema_status()
        if not status.up_to_date:
            if not config.ops.db_upgrade:
                raise StorageError(
                    f"the certificate database has schema version {status.current}, this "
                    f"sipcert needs {status.latest}: run `sipcert db upgrade` (db_upgrade is off)"
                )
            after = await storage.upgrade()
            # Creating the tables of a new database is routine; a migration is news.
            log.log(
                logging.INFO if status.current else logging.DEBUG,
                "certificate database schema upgraded from %d to %d",
                status.current,
                after.current,
            )
    finally:
        await storage.close()
    credentials = open_credentials(config.credentials)
    try:
        if isinstance(credentials, FileCredentials | KamailioSQLiteCredentials):
            await credentials.lookup("sipcert-startup-check", config.domains[0].name)
    finally:
        await credentials.close()
    if config.nonce_secret is None:
        load_or_create_secret(config.data_dir)
    open_shared_state(
        storage, config.data_dir, retention=config.nonce_lifetime, limits=config.login_limits
    ).close()
    tlog = open_transparency(config)  # creates each log's key once, before any fork
    if tlog is not None:
        await tlog.store.close()


def run(
    config: StoreConfig,
    *,
    announce: Callable[[str], None] | None = None,
    read_config: ReadConfig | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT; return the exit status (0 after a clean stop).

    SIGHUP reloads TLS files and credentials (:mod:`sipcert.server.lifecycle`), reading the
    configuration again with ``read_config`` when given.
    """
    ssl_context = build_tls(config)
    asyncio.run(_check_sources(config))
    if config.ops.admin_listen is not None:  # before anything imports prometheus_client
        prepare_multiprocess_dir(config.data_dir / METRICS_DIR)
    admin_sockets = bind_sockets([config.ops.admin_listen] if config.ops.admin_listen else [])
    try:
        sockets = bind_sockets(config.listen)
        if config.unix_socket is not None:
            try:
                sockets.append(bind_unix_socket(config.unix_socket))
            except BaseException:
                for sock in sockets:
                    sock.close()
                raise
    except BaseException:
        for sock in admin_sockets:
            sock.close()
        raise
    sockets_to_close = [*sockets, *admin_sockets]
    try:
        config = _fit_descriptor_limit(config)
        bound = ", ".join(_address_of(s) for s in sockets)
        admin = "".join(f", admin on http://{_address_of(s)}" for s in admin_sockets)
        message = (
            f"serving {', '.join(config.domain_names)} on {bound} "
            f"(pid {os.getpid()}, {config.workers} worker(s){admin})"
        )

        def ready() -> None:
            if announce is not None:  # the CLI prints it: logging it too showed it twice
                announce(message)
            else:
                log.info("%s", message)

        if config.workers == 1:
            _run_worker(config, ssl_context, sockets, ready, admin_sockets, read_config)
            return 0
        return _prefork(config, ssl_context, sockets, ready, admin_sockets, read_config)
    finally:
        for sock in sockets_to_close:
            sock.close()


def _fit_descriptor_limit(config: StoreConfig) -> StoreConfig:
    """Raise the soft descriptor limit to the hard one; lower the connection cap to fit it."""
    nofile = raise_nofile_limit()
    fix_malloc_mmap_threshold()  # inherited by the forked workers
    limits = config.connections
    cap = connection_cap(limits.max_connections, nofile)
    if cap < limits.max_connections:
        log.warning(
            "max_connections lowered from %d to %d per worker: the descriptor limit is %d",
            limits.max_connections,
            cap,
            nofile,
        )
    log.debug("at most %d connections per worker (descriptor limit %d)", cap, nofile)
    return dataclasses.replace(config, connections=dataclasses.replace(limits, max_connections=cap))


def _address_of(sock: socket.socket) -> str:
    if sock.family == socket.AF_UNIX:
        return f"unix:{sock.getsockname()}"
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _spawn(
    config: StoreConfig,
    ssl_context: ssl.SSLContext,
    sockets: Sequence[socket.socket],
    admin_sockets: Sequence[socket.socket],
    read_config: ReadConfig | None,
) -> int:
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child; covered by the integration tests
        status = 1
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the worker's loop handles it
            die_with_parent(parent)
            _run_worker(config, ssl_context, sockets, None, admin_sockets, read_config)
            status = 0
        except SipCertError as exc:
            log.error("worker %d: %s", os.getpid(), exc)
        except BaseException:
            log.exception("worker %d crashed", os.getpid())
        finally:
            logging.shutdown()
            os._exit(status)
    return pid


def _prefork(
    config: StoreConfig,
    ssl_context: ssl.SSLContext,
    sockets: Sequence[socket.socket],
    ready: Callable[[], None],
    admin_sockets: Sequence[socket.socket] = (),
    read_config: ReadConfig | None = None,
) -> int:
    """Run ``config.workers`` processes; restart one that dies, stop all on a signal.

    SIGHUP is checked here first (the new configuration and TLS files must load), then
    passed to every worker, which reloads in place; a worker started later forks from the
    reloaded state.
    """
    stopping = False
    children: set[int] = set()

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def hangup(_signum: int, _frame: object) -> None:
        nonlocal config, ssl_context
        try:
            new_config = read_config() if read_config is not None else config
            new_context = build_tls(new_config)
        except SipCertError as exc:
            log.error("reload refused, still serving as before: %s", exc)
            return
        # Workers started from now on fork with the new files; what needs a restart stays.
        config = dataclasses.replace(
            new_config, workers=config.workers, connections=config.connections
        )
        ssl_context = new_context
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, hangup)
    ready()
    restarts: list[float] = []
    status = 0

    def spawn() -> int:
        return _spawn(config, ssl_context, sockets, admin_sockets, read_config)

    try:
        for _ in range(config.workers):
            children.add(spawn())
        while children:
            try:
                pid, wait_status = os.wait()
            except ChildProcessError:
                break
            children.discard(pid)
            mark_process_dead(pid)
            if stopping:
                continue
            code = os.waitstatus_to_exitcode(wait_status)
            log.error("worker %d exited unexpectedly (%d); starting a new one", pid, code)
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < 10] + [now]
            if len(restarts) > 2 * config.workers:
                log.error("workers keep dying; stopping the Store")
                status = 1
                forward(signal.SIGTERM, None)
                continue
            children.add(spawn())
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return status
