"""The Caller's cache of retrieved certificates (draft §5).

"The Caller MAY cache the certificates ... This cached result MUST expire after some short
but configurable amount of time so that certificate revocation works. It MUST be possible
to configure this time to be zero. If the Caller is using cached information and receives a
certificate in the SIP signaling that is not cached, the Caller MUST update the cache and
check that the certificate was not recently added to the Service." (draft §5)

So: one entry per AOR, kept for the configured TTL or the Store's ``max-age`` if shorter,
never served after that; TTL 0 stores nothing at all. The clock is injected, and an optional
directory keeps entries across processes (the CLI runs one command per process).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cryptography import x509

from sipcert.client.defaults import DEFAULT_CACHE_TTL
from sipcert.client.fetch import CertificateNote, FetchResult
from sipcert.client.home import _write_atomic
from sipcert.errors import ConfigError, InputError
from sipcert.proto.aor import AOR, parse_aor
from sipcert.proto.certs import Discarded, DiscardReason, load_certificate, sha256_fingerprint
from sipcert.proto.store import parse_description

__all__ = [
    "DEFAULT_CACHE_TTL",
    "DEFAULT_CAPABILITY_AORS",
    "DEFAULT_CAPABILITY_LIFETIME",
    "CapabilityMemory",
    "CertificateCache",
    "SignaledCheck",
]

Clock = Callable[[], float]


@dataclass(frozen=True)
class _Entry:
    result: FetchResult
    expires: float
    #: When it was cached: an entry kept on disk under a longer TTL is not served past the
    #: TTL of the cache reading it.
    stored: float


@dataclass(frozen=True)
class SignaledCheck:
    """Outcome of "a certificate for this AOR arrived in SIP signaling" (draft §5).

    ``cached``: a fresh cache entry already held it, nothing was asked. Otherwise the Store
    was asked (``refreshed``) and ``in_store`` says whether it really holds the certificate
    now; ``result`` is the fresh answer.
    """

    aor: AOR
    sha256: str
    cached: bool
    refreshed: bool
    in_store: bool
    result: FetchResult | None


class CertificateCache:
    """Per-AOR cache with a TTL in seconds (draft §5); ``ttl=0`` disables it entirely.

    ``clock`` gives the current time in seconds (``time.time`` by default, so entries kept
    in ``directory`` stay meaningful across processes).
    """

    def __init__(
        self, ttl: float, *, clock: Clock = time.time, directory: Path | None = None
    ) -> None:
        if not math.isfinite(ttl) or ttl < 0:
            raise ConfigError(f"cache TTL must be a finite number of seconds >= 0, not {ttl}")
        self.ttl = ttl
        self._clock = clock
        self._directory = directory
        self._entries: dict[AOR, _Entry] = {}

    @property
    def enabled(self) -> bool:
        """False when the TTL is zero: nothing is ever stored or served."""
        return self.ttl > 0

    def get(self, aor: AOR) -> FetchResult | None:
        """The cached result for ``aor`` while it is fresh, else ``None`` (and it is dropped)."""
        if not self.enabled:
            return None
        entry = self._entries.get(aor) or self._load(aor)
        if entry is None:
            return None
        if self._clock() >= min(entry.expires, entry.stored + self.ttl):
            self.invalidate(aor)
            return None
        self._entries[aor] = entry
        return replace(entry.result, from_cache=True)

    def put(self, result: FetchResult) -> None:
        """Remember ``result`` for the TTL, or for the Store's ``max-age`` if that is shorter."""
        if not self.enabled or result.from_cache:
            return
        lifetime = self.ttl if result.max_age is None else min(self.ttl, result.max_age)
        if lifetime <= 0:
            self.invalidate(result.aor)
            return
        now = self._clock()
        entry = _Entry(result, now + lifetime, now)
        self._entries[result.aor] = entry
        self._save(entry)

    def invalidate(self, aor: AOR) -> None:
        """Forget ``aor`` (in memory and on disk)."""
        self._entries.pop(aor, None)
        path = self._path(aor)
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def clear(self) -> None:
        """Forget everything held in memory."""
        self._entries.clear()

    async def check_signaled(
        self,
        aor: AOR,
        certificate: x509.Certificate,
        refresh: Callable[[AOR], Awaitable[FetchResult]],
    ) -> SignaledCheck:
        """Handle a certificate for ``aor`` seen in SIP signaling (draft §5).

        If a fresh entry holds it, that is the answer. Otherwise ``refresh`` asks the Store,
        the cache is updated, and ``in_store`` tells whether the Store holds it.
        """
        fingerprint = sha256_fingerprint(certificate)
        cached = self.get(aor)
        if cached is not None and any(sha256_fingerprint(c) == fingerprint for c in cached.kept):
            return SignaledCheck(aor, fingerprint, True, False, True, cached)
        fresh = await refresh(aor)
        self.put(fresh)
        in_store = any(sha256_fingerprint(c) == fingerprint for c in fresh.kept)
        return SignaledCheck(aor, fingerprint, False, True, in_store, fresh)

    # -- persistence ------------------------------------------------------------------------

    def _path(self, aor: AOR) -> Path | None:
        if self._directory is None:
            return None
        return self._directory / (quote(str(aor), safe="@.-_+") + ".json")

    def _save(self, entry: _Entry) -> None:
        path = self._path(entry.result.aor)
        if path is None:
            return
        # Here, not at the top: a fetch without a cache file needs no PEM (issue 13).
        from cryptography.hazmat.primitives.serialization import Encoding

        result = entry.result
        data: dict[str, Any] = {
            "aor": str(result.aor),
            "url": result.url,
            "status": result.status,
            "expires": entry.expires,
            "stored": entry.stored,
            "certificates": [c.public_bytes(Encoding.PEM).decode("ascii") for c in result.kept],
            "discarded": [
                {"sha256": d.sha256, "reason": d.reason.value, "detail": d.detail}
                for d in result.discarded
            ],
            "notes": [
                {
                    "sha256": n.sha256,
                    "label": n.label,
                    "enrolled": n.enrolled.isoformat() if n.enrolled else None,
                }
                for n in result.notes
            ],
        }
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".cache-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise

    def _load(self, aor: AOR) -> _Entry | None:
        path = self._path(aor)
        if path is None:
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if parse_aor(data["aor"]) != aor:
                return None
            kept = tuple(load_certificate(pem.encode("ascii")) for pem in data["certificates"])
            discarded = tuple(
                Discarded(d["sha256"], DiscardReason(d["reason"]), d["detail"])
                for d in data["discarded"]
            )
            notes = tuple(
                CertificateNote(
                    str(n["sha256"]),
                    parse_description(n["label"]),
                    datetime.fromisoformat(n["enrolled"]) if n["enrolled"] else None,
                )
                for n in data.get("notes", ())
            )
            result = FetchResult(
                aor=aor,
                url=str(data["url"]),
                kept=kept,
                discarded=discarded,
                status=int(data["status"]),
                notes=notes,
            )
            return _Entry(result, float(data["expires"]), float(data["stored"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, InputError):
            # A damaged cache file is only a missed cache hit: drop it.
            with contextlib.suppress(OSError):
                path.unlink()
            return None


# -- what callees announced (RFC 8551 §2.5.2) ------------------------------------------------

#: How long an announcement is used: RFC 8551 sets no limit, but a device upgraded since
#: must not be held to its old list for ever.
DEFAULT_CAPABILITY_LIFETIME = 90 * 86400.0
#: AORs remembered at most (the least recently heard from are forgotten first).
DEFAULT_CAPABILITY_AORS = 1024
#: Devices (signer certificates) remembered per AOR.
_DEVICES_PER_AOR = 16
#: An unchanged announcement is written again (its time refreshed) at most this often.
_REWRITE_AFTER = 86400.0
#: A file larger than this is not ours: it is ignored (and replaced on the next write).
_MAX_FILE = 4 << 20
_MAX_CAPABILITIES = 64


class CapabilityMemory:
    """The SMIMECapabilities callees announced in their signed messages, per AOR and device.

    RFC 8551 §2.5.2: a receiving agent keeps a sender's announced list so that what it
    sends that sender later uses the first capability it can (§2.7.1.1); without one it
    sends the S/MIME 4.0 defaults (§2.7.1.2). Entries are keyed by AOR and the SHA-256 of
    the signer certificate (each device announces for itself, draft §4.4), bounded to
    ``max_aors`` AORs and ``lifetime`` seconds, and kept in one JSON file written
    atomically (temporary file, fsync, rename), so a failed write leaves the old file.
    The caller records only confirmed signers (sip.secure), so a forged message cannot
    downgrade what we send. ``path`` None keeps them in memory only.
    """

    def __init__(
        self,
        path: Path | None,
        *,
        lifetime: float = DEFAULT_CAPABILITY_LIFETIME,
        max_aors: int = DEFAULT_CAPABILITY_AORS,
        clock: Clock = time.time,
    ) -> None:
        if not math.isfinite(lifetime) or lifetime < 0:
            raise ConfigError(f"capability lifetime must be >= 0 seconds, not {lifetime}")
        if max_aors < 1:
            raise ConfigError(f"capability memory must hold at least one AOR, not {max_aors}")
        self.path = path
        self.lifetime = lifetime
        self.max_aors = max_aors
        self._clock = clock
        self._peers: dict[str, dict[str, tuple[tuple[str, ...], float]]] | None = None

    def announced(self, aor: AOR, certificate_sha256: str) -> tuple[str, ...] | None:
        """What the device with that certificate announced, or None if unknown or expired."""
        peers = self._load() if self._peers is None else self._peers
        entry = peers.get(str(aor), {}).get(certificate_sha256)
        if entry is None or self._clock() - entry[1] >= self.lifetime:
            return None
        return entry[0]

    def remember(self, aor: AOR, certificate_sha256: str, capabilities: Sequence[str]) -> None:
        """Keep what a confirmed signer announced; written when it changed (or daily).

        Raises :class:`~sipcert.errors.ConfigError` when the home cannot be written.
        """
        capabilities = tuple(str(c) for c in capabilities[:_MAX_CAPABILITIES])
        now = self._clock()
        peers = self._load() if self._peers is None else self._peers
        old = peers.get(str(aor), {}).get(certificate_sha256)
        unchanged = old is not None and old[0] == capabilities and now - old[1] < _REWRITE_AFTER
        if unchanged:
            return
        if self.path is not None:
            peers = self._load()  # another process may have written since: merge into that
        devices = peers.setdefault(str(aor), {})
        devices[certificate_sha256] = (capabilities, now)
        self._prune(peers, now)
        self._peers = peers
        self._write(peers)

    def _prune(
        self, peers: dict[str, dict[str, tuple[tuple[str, ...], float]]], now: float
    ) -> None:
        for name in list(peers):
            devices = peers[name]
            for sha256, (_, seen) in list(devices.items()):
                if now - seen >= self.lifetime:
                    del devices[sha256]
            for sha256, _ in sorted(devices.items(), key=lambda kv: kv[1][1])[:-_DEVICES_PER_AOR]:
                del devices[sha256]
            if not devices:
                del peers[name]
        newest = sorted(peers, key=lambda n: max(seen for _, seen in peers[n].values()))
        for name in newest[: -self.max_aors]:
            del peers[name]

    def _write(self, peers: dict[str, dict[str, tuple[tuple[str, ...], float]]]) -> None:
        if self.path is None:
            return
        data = {
            "version": 1,
            "peers": {
                name: {sha: {"capabilities": list(c), "seen": t} for sha, (c, t) in dev.items()}
                for name, dev in peers.items()
            },
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            _write_atomic(self.path, json.dumps(data, sort_keys=True).encode(), 0o600)
        except OSError as exc:
            raise ConfigError(
                f"cannot write {self.path}: {exc.strerror or 'the write failed'}"
            ) from exc

    def _load(self) -> dict[str, dict[str, tuple[tuple[str, ...], float]]]:
        """The file's entries; a missing, damaged or foreign file is an empty memory."""
        peers: dict[str, dict[str, tuple[tuple[str, ...], float]]] = {}
        if self.path is None:
            return self._peers if self._peers is not None else peers
        try:
            with self.path.open("rb") as handle:
                raw = handle.read(_MAX_FILE + 1)
            if len(raw) > _MAX_FILE:
                raise ValueError("too large")
            data = json.loads(raw)
            for name, devices in data["peers"].items():
                aor = str(parse_aor(name))
                for sha256, entry in devices.items():
                    caps = entry["capabilities"]
                    seen = float(entry["seen"])
                    if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
                        raise ValueError("capabilities are not strings")
                    if not isinstance(sha256, str) or not math.isfinite(seen):
                        raise ValueError("bad entry")
                    peers.setdefault(aor, {})[sha256] = (tuple(caps[:_MAX_CAPABILITIES]), seen)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError, AttributeError, InputError):
            peers = {}  # a damaged file is only a lost hint: the defaults apply
        self._peers = peers
        return peers
