"""What the Store's processes do on signals besides stopping (issue 10).

* Workers never outlive their parent: each asks the kernel for a SIGTERM when the parent
  dies (``prctl(PR_SET_PDEATHSIG)``, Linux), and exits at once if the parent died before it
  asked. SIGTERM is the graceful stop, so an orphan finishes its requests and goes.
* SIGHUP reloads, without dropping a connection: the configuration is read again, the TLS
  certificate and key of every served domain are loaded from their (possibly new) files and
  presented from the next handshake on (open connections keep theirs), and the credential
  source is opened again from the (possibly new) ``credentials`` setting. Anything that fails
  to load leaves everything as it was, with one ERROR line. Other settings (listen
  addresses, domains, workers...) need a restart; a reload that changes them says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import ssl
import sys
from collections.abc import Callable
from datetime import UTC, datetime

from sipcert.errors import SipCertError
from sipcert.server.app import StoreApp
from sipcert.server.config import StoreConfig
from sipcert.server.credentials import open_credentials
from sipcert.server.tls import DomainContext, load_domain_context, replace_domain_contexts

__all__ = ["Reloader", "die_with_parent", "load_contexts"]

log = logging.getLogger("sipcert.server")

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent: int) -> None:
    """Have the kernel send this process SIGTERM when ``parent`` dies (Linux only)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            log.warning(
                "worker %d: PR_SET_PDEATHSIG failed (errno %d)", os.getpid(), ctypes.get_errno()
            )
    if os.getppid() != parent:  # the parent died before we asked: nothing will tell us
        os._exit(0)


def load_contexts(config: StoreConfig) -> dict[str, DomainContext]:
    """Every served domain's TLS context from its files (:class:`ConfigError`)."""
    now = datetime.now(UTC)
    return {
        d.name: load_domain_context(d.name, d.tls_cert, d.tls_key, now=now) for d in config.domains
    }


class Reloader:
    """A worker's SIGHUP: reload TLS files and the credential source into a running Store.

    ``target`` is the request handler whose credential source is replaced; ``read_config``
    reads the configuration again (``None``: the one the process started with, so only the
    files are read again).
    """

    def __init__(
        self,
        config: StoreConfig,
        listener: ssl.SSLContext,
        target: StoreApp,
        read_config: Callable[[], StoreConfig] | None,
    ) -> None:
        self.config = config
        self._listener = listener
        self._target = target
        self._read_config = read_config
        #: Successful reloads so far (tests and logs).
        self.reloads = 0

    def new_config(self) -> StoreConfig:
        """The configuration to reload from (:class:`SipCertError` if it does not read)."""
        return self._read_config() if self._read_config is not None else self.config

    async def reload(self) -> bool:
        """Reload; False (and one ERROR line) if anything failed, leaving all as it was."""
        try:
            config = self.new_config()
            contexts = load_contexts(config)
            credentials = open_credentials(config.credentials)
        except SipCertError as exc:
            log.error("reload refused, still serving as before: %s", exc)
            return False
        if config.domain_names != self.config.domain_names or config.listen != self.config.listen:
            log.warning("reload: domains and listen addresses change only with a restart")
        replace_domain_contexts(self._listener, contexts)
        old, self._target.credentials = self._target.credentials, credentials
        try:
            await old.close()
        except SipCertError as exc:
            log.warning("reload: closing the old credential source failed: %s", exc)
        self.config = config
        self.reloads += 1
        log.info(
            "reloaded TLS certificates of %d domain(s) and the credential source (pid %d)",
            len(contexts),
            os.getpid(),
        )
        return True
