"""A 3-node MariaDB Galera cluster on loopback for tests (Debian ``mariadb-server``, ``galera-4``).

Each node has its own ports (client, group communication, IST, SST) and data folder in a
temporary folder owned by ``mysql``: rsync SST fails as root (FIELD-NOTES), so the servers run
with ``user=mysql``. The first node bootstraps the cluster (``--wsrep-new-cluster``); the
others join by SST. :meth:`GaleraCluster.stop` kills every node and removes the folder.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import free_port, require_program

PROVIDER = "/usr/lib/galera/libgalera_smm.so"
USER, PASSWORD, DATABASE = "sipcert", "galera-test-password", "sipcert"


@dataclass
class GaleraNode:
    root: Path
    index: int
    port: int = field(default_factory=free_port)
    gcomm: int = field(default_factory=free_port)
    ist: int = field(default_factory=free_port)
    sst: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def datadir(self) -> Path:
        return self.root / f"node{self.index}"

    @property
    def socket(self) -> Path:
        return self.root / f"node{self.index}.sock"

    @property
    def config(self) -> Path:
        return self.root / f"node{self.index}.cnf"

    @property
    def url(self) -> str:
        return f"mysql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{DATABASE}"

    def sql(self, statement: str) -> str:
        """Run one statement over the node's socket as root; its output (tab-separated)."""
        done = subprocess.run(
            ["mysql", "-S", str(self.socket), "-u", "root", "-N", "-B", "-e", statement],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            raise OSError(done.stderr.strip())
        return done.stdout.strip()

    def status(self, name: str) -> str:
        try:
            return self.sql(f"SHOW STATUS LIKE '{name}'").partition("\t")[2]
        except OSError:
            return ""

    def error_log(self) -> str:
        path = self.root / f"node{self.index}.err"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


class GaleraCluster:
    """Three nodes; ``start`` bootstraps and joins them, ``kill``/``restart`` one of them."""

    def __init__(self, size: int = 3) -> None:
        require_program("mariadbd")
        require_program("mariadb-install-db")
        require_program("rsync")
        if not Path(PROVIDER).exists():
            require_program("galera-4-is-not-installed")  # skips, or fails in CI
        self.root = Path(tempfile.mkdtemp(prefix="sipcert-galera-", dir="/tmp"))
        mysql = pwd.getpwnam("mysql")
        os.chown(self.root, mysql.pw_uid, mysql.pw_gid)
        self.nodes = [GaleraNode(self.root, n) for n in range(size)]
        addresses = ",".join(f"127.0.0.1:{node.gcomm}" for node in self.nodes)
        for node in self.nodes:
            node.config.write_text(
                f"""[mysqld]
user=mysql
datadir={node.datadir}
socket={node.socket}
port={node.port}
bind-address=127.0.0.1
pid-file={self.root}/node{node.index}.pid
log-error={self.root}/node{node.index}.err
skip-name-resolve
innodb_buffer_pool_size=32M
innodb_log_file_size=16M
binlog_format=ROW
default_storage_engine=InnoDB
innodb_autoinc_lock_mode=2
wsrep_on=ON
wsrep_provider={PROVIDER}
wsrep_cluster_name=sipcert_test
wsrep_cluster_address=gcomm://{addresses}
wsrep_node_address=127.0.0.1:{node.gcomm}
wsrep_provider_options="gmcast.listen_addr=tcp://127.0.0.1:{node.gcomm};ist.recv_addr=127.0.0.1:{node.ist};gcache.size=64M"
wsrep_sst_method=rsync
wsrep_sst_receive_address=127.0.0.1:{node.sst}
"""
            )

    def start(self) -> None:
        first = self.nodes[0]
        subprocess.run(
            [
                "mariadb-install-db",
                f"--defaults-file={first.config}",
                "--user=mysql",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
            ],
            capture_output=True,
            check=True,
            timeout=120,
            env=self._env(),
        )
        self._launch(first, "--wsrep-new-cluster")
        self.wait_synced(first)
        first.sql(
            f"CREATE USER '{USER}'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}'; "
            f"GRANT ALL ON *.* TO '{USER}'@'127.0.0.1'; CREATE DATABASE {DATABASE}"
        )
        for node in self.nodes[1:]:
            self._launch(node)
            self.wait_synced(node)
        self.wait_size(len(self.nodes))

    def _env(self) -> dict[str, str]:
        """The servers run as ``mysql``: their temporary files go to the cluster's folder
        (a TMPDIR of the test run's may not be writable for that user)."""
        return {**os.environ, "TMPDIR": str(self.root)}

    def _launch(self, node: GaleraNode, *extra: str) -> None:
        node.datadir.mkdir(exist_ok=True)
        mysql = pwd.getpwnam("mysql")
        os.chown(node.datadir, mysql.pw_uid, mysql.pw_gid)
        node.process = subprocess.Popen(
            ["mariadbd", f"--defaults-file={node.config}", *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env=self._env(),
        )

    def wait_synced(self, node: GaleraNode, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while node.status("wsrep_local_state_comment") != "Synced":
            assert node.process is not None
            if node.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Galera node {node.index} did not sync:\n{node.error_log()}")
            time.sleep(0.2)

    def wait_size(self, size: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        live = [n for n in self.nodes if n.process is not None and n.process.poll() is None]
        while not all(n.status("wsrep_cluster_size") == str(size) for n in live):
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster size never became {size}")
            time.sleep(0.2)

    def kill(self, node: GaleraNode) -> None:
        """SIGKILL, no shutdown: as a crashed host."""
        assert node.process is not None
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(10)

    def restart(self, node: GaleraNode) -> float:
        """Start a killed node again; seconds until it is Synced (IST or SST)."""
        started = time.monotonic()
        self._launch(node)
        self.wait_synced(node)
        return time.monotonic() - started

    def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.process.pid, signal.SIGKILL)
                node.process.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def galera_cluster() -> Iterator[GaleraCluster]:
    cluster = GaleraCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
