"""The real ``sipcert`` program meeting bad input and dead networks: one line, the README's
exit code, no traceback and no library class name (issue 8, "Conformance slips")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.client.conftest import DNSFactory
from tests.integration.client.peers import closed_port

SIPCERT = str(Path(sys.executable).with_name("sipcert"))


def sipcert(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SIPCERT, *args], capture_output=True, text=True, timeout=60, check=False, stdin=None
    )


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The error line; asserts it is the only output and names no Python internals."""
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    return done.stderr


@pytest.mark.parametrize("command", ["fetch", "enroll"])
def test_invalid_idna_host_is_exit_4(command: str, tmp_path: Path) -> None:
    """RFC 5891 §5.4: ``xn--zz`` is no A-label. httpx raised IDNAError on it (exit 70)."""
    password = tmp_path / "password"
    password.write_text("secret\n")
    extra = ["--password-file", str(password)] if command == "enroll" else []
    store = f"127.0.0.1:{closed_port()}"  # never reached: the AOR is refused first
    done = sipcert(
        command, "bob@xn--zz.example.com", "--home", str(tmp_path / "h"), "--store", store, *extra
    )
    assert done.returncode == 4, done.stderr
    assert "'xn--zz'" in one_line(done) and "IDNA2008" in done.stderr
    assert not (tmp_path / "h").exists() or not any((tmp_path / "h").rglob("*.pem"))


def test_misspelled_domain_is_exit_3_with_the_system_resolver(tmp_path: Path) -> None:
    """No --dns: the system resolver. Under the reserved .invalid TLD (RFC 6761 §6.4) the
    name exists nowhere, so whether this machine's resolver answers NXDOMAIN at once or
    not at all (no network: a timeout), the Store is not located: exit 3, not 9."""
    done = sipcert("fetch", "bob@exmaple.invalid", "--home", str(tmp_path / "h"), "--timeout", "3")
    assert done.returncode == 3, done.stderr
    line = one_line(done)
    assert "exmaple.invalid" in line
    assert "Errno" not in line and "Name or service" not in line


@pytest.mark.peer("dnsmasq")
def test_misspelled_domain_is_exit_3_with_a_dns_server(
    dns_server: DNSFactory, tmp_path: Path
) -> None:
    """dnsmasq answers NXDOMAIN for the SRV name and for certificates.<domain>."""
    dns = dns_server([], ["exmaple.com"])
    done = sipcert("fetch", "bob@exmaple.com", "--home", str(tmp_path / "h"), "--dns", dns)
    assert done.returncode == 3, done.stderr
    assert "no address record for certificates.exmaple.com" in one_line(done)
