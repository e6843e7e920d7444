"""Per-user storage of a UA's own keys and certificates (draft §5, §5.1).

Layout under the home directory (default ``$XDG_DATA_HOME/sipcert``, i.e.
``~/.local/share/sipcert``)::

    identities/<aor>/<device>/key.pem         private key, mode 0600, PKCS#8 PEM
                                              (encrypted when a passphrase is given)
    identities/<aor>/<device>/cert.pem        the enrolled self-signed certificate
    identities/<aor>/<device>/retired/<sha256>.{pem,key}
                                              replaced by renewal, kept until revoked
    identities/<aor>/<device>/pending/{key,cert}.pem
                                              a new identity saved before its PUT
    cache/                                    the Caller's certificate cache (draft §5)
    capabilities.json                         what callees announced (RFC 8551 §2.5.2)

Several AORs and several devices per AOR (draft §4.4, §5: "upload a different certificate
for each UA") live side by side. Directories are 0700; files are written atomically and
durably (temporary file, fsync, rename, fsync of the directory), so a private key is on disk
before the Store ever sees its certificate: enrollment never leaves a certificate at the
Store whose key was lost.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

from cryptography import x509

from sipcert.client.defaults import DEFAULT_DEVICE, default_home
from sipcert.errors import ConfigError, InputError, NotFoundError
from sipcert.proto.aor import AOR, parse_aor
from sipcert.proto.certs import (
    Identity,
    load_certificate,
    load_private_key,
    serialize_private_key,
    sha256_fingerprint,
)

__all__ = ["DEFAULT_DEVICE", "Home", "default_home"]

_DEVICE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_KEY = "key.pem"
_CERT = "cert.pem"
_PENDING = "pending"


def _check_device(device: str) -> str:
    if not _DEVICE_RE.fullmatch(device):
        raise ConfigError(
            f"device name {device!r} must be 1-64 letters, digits, '.', '_' or '-' "
            "(starting with a letter or digit)"
        )
    return device


def _fsync_directory(path: Path) -> None:
    """Make renames and new entries in ``path`` survive a crash (POSIX needs the dir fsync)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` so that ``path`` is either the old or the new file, created ``mode``,
    and still there after a crash: temporary file, fsync, rename, fsync of the directory."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_directory(path.parent)


def _not_writable(path: Path, exc: OSError) -> ConfigError:
    reason = exc.strerror or "the write failed"
    return ConfigError(f"the sipcert home is not writable: {path}: {reason}")


@dataclass(frozen=True)
class Home:
    """The per-user directory holding this user's identities (and the cache)."""

    root: Path

    @classmethod
    def default(cls) -> Home:
        return cls(default_home())

    @property
    def cache_directory(self) -> Path:
        return self.root / "cache"

    @property
    def capabilities_path(self) -> Path:
        """What callees announced in SMIMECapabilities (client.cache.CapabilityMemory)."""
        return self.root / "capabilities.json"

    def _aor_directory(self, aor: AOR) -> Path:
        return self.root / "identities" / quote(str(aor), safe="@.-_+")

    def device_directory(self, aor: AOR, device: str = DEFAULT_DEVICE) -> Path:
        return self._aor_directory(aor) / _check_device(device)

    def _make_directory(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        for parent in (path, *path.parents):
            if parent == self.root.parent:
                break
            if parent.is_relative_to(self.root):
                parent.chmod(0o700)
                _fsync_directory(parent.parent)

    def ensure_writable(self, directory: Path | None = None) -> None:
        """Prove with a real write that ``directory`` (default: the root) can hold files.

        Called before any network request, so a read-only or missing home (or a home whose
        parent is a file) is a :class:`ConfigError` naming the path, never a certificate
        enrolled at the Store that could not be saved here. ``os.access`` is not enough:
        it says yes to root on a read-only mount.
        """
        target = self.root if directory is None else directory
        # Probe the deepest folder that exists, so that a check creates nothing.
        while not target.exists() and target.parent != target:
            target = target.parent
        try:
            fd, probe = tempfile.mkstemp(dir=target, prefix=".probe-")
            try:
                os.write(fd, b"x")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(probe)
        except OSError as exc:
            raise _not_writable(target, exc) from exc

    def has_identity(self, aor: AOR, device: str = DEFAULT_DEVICE) -> bool:
        return (self.device_directory(aor, device) / _CERT).is_file()

    def save(
        self,
        aor: AOR,
        identity: Identity,
        *,
        device: str = DEFAULT_DEVICE,
        passphrase: bytes | None = None,
    ) -> Path:
        """Store ``identity`` as the device's current one; the replaced one is retired."""
        self.stage(aor, identity, device=device, passphrase=passphrase)
        return self.promote(aor, device)

    def stage(
        self,
        aor: AOR,
        identity: Identity,
        *,
        device: str = DEFAULT_DEVICE,
        passphrase: bytes | None = None,
    ) -> Path:
        """Durably save ``identity`` as the device's pending one, before its PUT (draft §5.1).

        The current identity is untouched until :meth:`promote`; :meth:`discard_pending`
        drops a pending one the Store refused. A pending identity left by an enrollment
        whose outcome was unknown (connection lost during the PUT) is retired first, so
        its key stays known and revocable.
        """
        from cryptography.hazmat.primitives.serialization import Encoding

        key = serialize_private_key(identity.key, passphrase)
        cert = identity.certificate.public_bytes(Encoding.PEM)
        pending = self.device_directory(aor, device) / _PENDING
        try:
            self._make_directory(pending)
            if (pending / _CERT).is_file():
                self._retire(pending.parent, pending)
            _write_atomic(pending / _KEY, key, 0o600)
            _write_atomic(pending / _CERT, cert, 0o644)
        except OSError as exc:
            raise _not_writable(pending, exc) from exc
        return pending

    def promote(self, aor: AOR, device: str = DEFAULT_DEVICE) -> Path:
        """Make the pending identity the current one; the one it replaces is retired."""
        directory = self.device_directory(aor, device)
        pending = directory / _PENDING
        try:
            if (directory / _CERT).is_file():
                self._retire(directory)
            os.replace(pending / _KEY, directory / _KEY)
            os.replace(pending / _CERT, directory / _CERT)
            _fsync_directory(directory)
            pending.rmdir()
            _fsync_directory(directory)
        except OSError as exc:
            raise _not_writable(directory, exc) from exc
        return directory

    def discard_pending(self, aor: AOR, device: str = DEFAULT_DEVICE) -> None:
        """Forget a pending identity whose certificate the Store does not hold, and the
        folders made only for it: a refused enrollment leaves the home as it was."""
        pending = self.device_directory(aor, device) / _PENDING
        with contextlib.suppress(OSError):
            for name in (_KEY, _CERT):
                with contextlib.suppress(FileNotFoundError):
                    (pending / name).unlink()
            for empty in (pending, pending.parent, pending.parent.parent, self.root / "identities"):
                empty.rmdir()  # OSError once a folder is not empty: stop there

    def _retire(self, directory: Path, source: Path | None = None) -> None:
        """Copy the identity in ``source`` (default: the device's current one) to retired/."""
        source = directory if source is None else source
        retired = directory / "retired"
        self._make_directory(retired)
        cert_pem = (source / _CERT).read_bytes()
        fingerprint = sha256_fingerprint(load_certificate(cert_pem))
        _write_atomic(retired / f"{fingerprint}.pem", cert_pem, 0o644)
        if (source / _KEY).is_file():
            _write_atomic(retired / f"{fingerprint}.key", (source / _KEY).read_bytes(), 0o600)

    def certificate(self, aor: AOR, device: str = DEFAULT_DEVICE) -> x509.Certificate:
        """The device's current certificate; :class:`NotFoundError` when not enrolled."""
        path = self.device_directory(aor, device) / _CERT
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise NotFoundError(
                f"no certificate for {aor} (device {device!r}) in {self.root}"
            ) from exc
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
        try:
            return load_certificate(data)
        except InputError as exc:
            raise ConfigError(f"{path} is damaged: {exc}") from exc

    def identity(
        self, aor: AOR, device: str = DEFAULT_DEVICE, *, passphrase: bytes | None = None
    ) -> Identity:
        """The device's key and certificate (the key decrypted with ``passphrase``)."""
        certificate = self.certificate(aor, device)
        path = self.device_directory(aor, device) / _KEY
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise NotFoundError(f"no private key for {aor} (device {device!r})") from exc
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
        return Identity(key=load_private_key(data, passphrase), certificate=certificate)

    def retired(self, aor: AOR, device: str = DEFAULT_DEVICE) -> list[x509.Certificate]:
        """Certificates replaced by renewal and not yet confirmed revoked."""
        directory = self.device_directory(aor, device) / "retired"
        if not directory.is_dir():
            return []
        return [load_certificate(p.read_bytes()) for p in sorted(directory.glob("*.pem"))]

    def forget_retired(self, aor: AOR, fingerprint: str, device: str = DEFAULT_DEVICE) -> None:
        """Drop a retired certificate and key once the Store no longer holds it."""
        directory = self.device_directory(aor, device) / "retired"
        for suffix in (".pem", ".key"):
            with contextlib.suppress(FileNotFoundError):
                (directory / f"{fingerprint}{suffix}").unlink()

    def remove(self, aor: AOR, device: str = DEFAULT_DEVICE) -> None:
        """Delete the device's current identity (after revoking everything)."""
        directory = self.device_directory(aor, device)
        for name in (_KEY, _CERT):
            with contextlib.suppress(FileNotFoundError):
                (directory / name).unlink()

    def devices(self, aor: AOR) -> list[str]:
        """Devices holding an identity for ``aor``."""
        directory = self._aor_directory(aor)
        if not directory.is_dir():
            return []
        return sorted(p.name for p in directory.iterdir() if (p / _CERT).is_file())

    def aors(self) -> list[AOR]:
        """Every AOR with at least one device identity here."""
        directory = self.root / "identities"
        if not directory.is_dir():
            return []
        found = []
        for entry in sorted(directory.iterdir()):
            try:
                aor = parse_aor(unquote(entry.name))
            except InputError:
                continue
            if self.devices(aor):
                found.append(aor)
        return found

    def known_fingerprints(self, aor: AOR) -> set[str]:
        """SHA-256 of every certificate of ``aor`` held here: all devices, current and retired."""
        known: set[str] = set()
        for device in self.devices(aor):
            known.add(sha256_fingerprint(self.certificate(aor, device)))
            known.update(sha256_fingerprint(c) for c in self.retired(aor, device))
        return known
