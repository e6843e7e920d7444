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
import logging
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from aiohttp import web

from sipcert.errors import ConfigError, SipCertError
from sipcert.proto.digest import DEFAULT_MAX_CLOCK_SKEW
from sipcert.server.app import AccessLog, StoreApp, access_log_options
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
from sipcert.server.http import StoreServer
from sipcert.server.limits import SqliteLoginLimiter
from sipcert.server.logsafe import SafeFormatter
from sipcert.server.nonces import SqliteNonceCounter, load_or_create_secret
from sipcert.server.tlog import TransparencyLog, load_or_create_log_keys
from sipcert.server.tls import DomainContext, build_sni_context, load_domain_context
from sipcert.storage import open_store
from sipcert.storage.tlog import open_log

__all__ = ["bind_sockets", "build_tls", "run", "serve_app", "setup_logging"]

log = logging.getLogger("sipcert.server")

_BACKLOG = 1024
_SHUTDOWN_TIMEOUT = 5.0
#: File of the nonce counts inside the data folder.
NONCE_DB = "nonces.db"
#: File of the Digest guessing limiter's state inside the data folder.
LIMITS_DB = "ratelimit.db"


def setup_logging(level: str) -> None:
    """Log lines on standard error: ``time level logger: message``."""
    handler = logging.StreamHandler(sys.stderr)
    # One record, one line of printable ASCII, whatever a request put in it (issue 9).
    handler.setFormatter(SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])


def build_tls(config: StoreConfig) -> ssl.SSLContext:
    """The listening SNI context for every configured domain (:class:`ConfigError`)."""
    now = datetime.now(UTC)
    contexts: dict[str, DomainContext] = {
        d.name: load_domain_context(d.name, d.tls_cert, d.tls_key, now=now) for d in config.domains
    }
    return build_sni_context(contexts)


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
    access_log: bool = True,
    purge_interval: float = 3600.0,
    limits: ConnectionLimits | None = None,
) -> None:
    """Serve ``app`` on ``sockets`` until ``stop`` is set, then shut down cleanly.

    Connections go through a :class:`~sipcert.server.conn.ConnectionGuard` (deadlines, the
    per-worker cap, the request-head limit) before aiohttp sees them.
    """
    limits = limits or ConnectionLimits()
    writer = AccessLog() if access_log else None
    guard = ConnectionGuard(ssl_context, limits)
    server = StoreServer(
        guard.wrap(app), keepalive_timeout=limits.keepalive_timeout, **access_log_options(writer)
    )
    guard.bind(server)
    runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=_SHUTDOWN_TIMEOUT)
    await runner.setup()
    purger: asyncio.Task[None] | None = None
    try:
        for sock in sockets:
            await GuardedSite(runner, sock, guard, _BACKLOG).start()
        purger = asyncio.create_task(app.purge_forever(purge_interval))
        await stop.wait()
    finally:
        if purger is not None:
            purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await purger
        await runner.cleanup()
        if writer is not None:
            writer.close()


async def _worker_main(
    config: StoreConfig,
    ssl_context: ssl.SSLContext,
    sockets: Sequence[socket.socket],
    ready: Callable[[], None] | None = None,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if ready is not None:  # announced only now, so a SIGTERM right after it stops cleanly
        ready()
    secret = config.nonce_secret or load_or_create_secret(config.data_dir)
    storage = open_store(config.db)
    credentials = open_credentials(config.credentials)
    nonces = SqliteNonceCounter(
        config.data_dir / NONCE_DB, retention=config.nonce_lifetime + DEFAULT_MAX_CLOCK_SKEW
    )
    limiter = SqliteLoginLimiter(config.data_dir / LIMITS_DB, config.login_limits)
    tlog = open_transparency(config)
    sequencer: asyncio.Task[None] | None = None
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
            nonce_counter=nonces,
            nonce_lifetime=config.nonce_lifetime,
            auth_failures=config.auth_failures,
            auth_failure_window=config.auth_failure_window,
            limiter=limiter,
            tlog=tlog,
        )
        await serve_app(
            app,
            ssl_context,
            sockets,
            stop,
            access_log=config.access_log,
            purge_interval=config.purge_interval,
            limits=config.connections,
        )
        log.info("worker %d stopped", os.getpid())
    finally:
        if sequencer is not None:
            sequencer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sequencer
        if tlog is not None:
            await tlog.store.close()
        limiter.close()
        nonces.close()
        await credentials.close()
        await storage.close()


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
) -> None:
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_worker_main(config, ssl_context, sockets, ready))


async def _check_sources(config: StoreConfig) -> None:
    """Open storage and local credential sources once, so mistakes show before serving."""
    storage = open_store(config.db)
    await storage.close()
    credentials = open_credentials(config.credentials)
    try:
        if isinstance(credentials, FileCredentials | KamailioSQLiteCredentials):
            await credentials.lookup("sipcert-startup-check", config.domains[0].name)
    finally:
        await credentials.close()
    if config.nonce_secret is None:
        load_or_create_secret(config.data_dir)
    SqliteNonceCounter(config.data_dir / NONCE_DB).close()
    SqliteLoginLimiter(config.data_dir / LIMITS_DB).close()
    tlog = open_transparency(config)  # creates each log's key once, before any fork
    if tlog is not None:
        await tlog.store.close()


def run(config: StoreConfig, *, announce: Callable[[str], None] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; return the exit status (0 after a clean stop)."""
    ssl_context = build_tls(config)
    asyncio.run(_check_sources(config))
    sockets = bind_sockets(config.listen)
    try:
        config = _fit_descriptor_limit(config)
        bound = ", ".join(_address_of(s) for s in sockets)
        message = (
            f"serving {', '.join(config.domain_names)} on {bound} "
            f"(pid {os.getpid()}, {config.workers} worker(s))"
        )

        def ready() -> None:
            if announce is not None:  # the CLI prints it: logging it too showed it twice
                announce(message)
            else:
                log.info("%s", message)

        if config.workers == 1:
            _run_worker(config, ssl_context, sockets, ready)
            return 0
        return _prefork(config, ssl_context, sockets, ready)
    finally:
        for sock in sockets:
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
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _spawn(
    config: StoreConfig, ssl_context: ssl.SSLContext, sockets: Sequence[socket.socket]
) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child; covered by the integration tests
        status = 1
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            _run_worker(config, ssl_context, sockets)
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
) -> int:
    """Run ``config.workers`` processes; restart one that dies, stop all on a signal."""
    stopping = False
    children: set[int] = set()

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    ready()
    restarts: list[float] = []
    status = 0
    try:
        for _ in range(config.workers):
            children.add(_spawn(config, ssl_context, sockets))
        while children:
            try:
                pid, wait_status = os.wait()
            except ChildProcessError:
                break
            children.discard(pid)
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
            children.add(_spawn(config, ssl_context, sockets))
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return status
