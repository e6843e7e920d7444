"""The UA side of the transparency log: pinned key, consistent views, proofs, monitoring.

A :class:`LogClient` reads one domain's log through ``get(path)`` (the caller's strictly
checked TLS connection to the Store: draft §4.3's trust unit) and keeps what it learnt in a
:class:`PinStore`:

* the log key, learnt on first use and kept: a different key later is a :class:`ProofError`;
* the last checkpoint it accepted: every newer one must be consistent with it, proven from
  the Store's own tiles (RFC 9162 §2.1.4.2); a smaller, or a same-size different one, or an
  inconsistent one is a :class:`ForkError` (exit code 15): the Store showed a split view;
* a policy of witnesses (``quorum`` of ``witnesses`` must cosign);
* for a monitor, how far it has read the entries.

``AsyncUA.fetch`` applies it by default; ``sipcert monitor`` and ``sipcert ua`` monitor.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from sipcert.client.http11 import HTTP11Connection
from sipcert.client.tls import StrictTransport
from sipcert.errors import (
    ConfigError,
    ForkError,
    InputTooLargeError,
    LogFormatError,
    ProofError,
    StoreResponseError,
    TransportError,
)

# httpx's errors are caught only around a client a caller gave (the UA's own GETs use the
# strict transport), so this module loads without httpx. The log's own formats and proofs
# (sipcert.proto.tlog, .note, .merkle, Ed25519) are imported by the steps that read a log:
# a fetch from a Store that publishes none needs none of them (issue 13, start-up time).
if TYPE_CHECKING:
    import httpx

    from sipcert.proto import merkle
    from sipcert.proto.note import Verifier
    from sipcert.proto.tlog import Checkpoint

__all__ = ["LOG_PINS", "NO_LOG_FILE", "Alarm", "LogClient", "LogState", "PinStore", "http_getter"]

#: The pins' file inside the UA's home.
LOG_PINS = "tlog-pins.json"
#: In the UA's cache folder: domains whose Store answered 404 on /log/vkey, until when.
NO_LOG_FILE = "tlog-absent.json"
#: Seconds a UA asks the checkpoint again while it has fewer cosignatures than its quorum
#: (witnesses cosign a new checkpoint in the background, within milliseconds normally),
#: and how often.
COSIGN_WAIT = 3.0
COSIGN_POLL = 0.1

#: ``get(path)``: the body of ``GET https://<domain><path>``, None for a 404.
Getter = Callable[[str], Awaitable[bytes | None]]


def http_getter(
    client: httpx.AsyncClient | StrictTransport,
    domain: str,
    max_size: int,
    *,
    timeout: float | None = None,
    answered_on: list[HTTP11Connection] | None = None,
) -> Getter:
    """A :data:`Getter` on ``https://<domain>``: the AOR domain is the URL's host, so the
    strict transport's SNI and name check apply (draft §4.3).

    ``client`` is the UA's :class:`StrictTransport` (the lean GET) or an httpx client; on
    the former, each answer's connection is appended to ``answered_on`` when given.
    """
    if isinstance(client, StrictTransport):
        transport = client

        async def lean_get(path: str) -> bytes | None:
            # The 404's body is read too (bounded): the connection stays kept alive, so
            # a Store without a log costs one request, not a new TLS connection.
            answer = await transport.get(domain, path, max_size=max_size, timeout=timeout)
            if answered_on is not None:
                answered_on.append(answer.connection)
            if answer.status == 404:
                return None
            if answer.status != 200:
                raise StoreResponseError(answer.status, f"GET {path}")
            return answer.body

        return lean_get

    import httpx  # the caller's client is an httpx one: httpx is loaded already

    async def get(path: str) -> bytes | None:
        try:
            async with client.stream("GET", f"https://{domain}{path}") as response:
                body = bytearray()
                # Read a 404's body too (bounded): the connection then goes back to the pool,
                # so a Store without a log costs one request, not a new TLS connection.
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > max_size:
                        raise InputTooLargeError(f"the Store's {path} is over {max_size} bytes")
                if response.status_code == 404:
                    return None
                if response.status_code != 200:
                    raise StoreResponseError(response.status_code, f"GET {path}")
                return bytes(body)
        except httpx.HTTPError as exc:
            raise TransportError(f"GET https://{domain}{path} failed: {exc}") from exc

    return get


@dataclass(frozen=True, slots=True)
class LogState:
    """What a UA remembers of one domain's log."""

    vkey: str
    size: int
    root: str  # base64
    monitored: int = 0  # entries read by the monitor
    #: AOR -> the commitment (base64) the Store first showed this home for it: a later,
    #: different one is a split view on the commitment (docs/transparency.md).
    commitments: dict[str, str] = field(default_factory=dict)


class PinStore:
    """Per-domain :class:`LogState` in one JSON file, replaced atomically (mode 0600).

    The parsed file is kept with the identity ``os.stat`` gives it (device, inode, size,
    modification time in ns) and read again whenever that changes: every save, by this or
    another process (a monitor, a second UA on the same home), is an ``os.replace``, so a
    new inode. A fetch then costs one ``stat`` instead of reading and parsing the file
    (issue 13); what is loaded is always what the file holds.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cached: tuple[tuple[int, int, int, int], dict[str, dict[str, object]]] | None = None

    def _read(self) -> dict[str, dict[str, object]]:
        """The file's contents (do not modify: it is the cached object)."""
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            self._cached = None
            return {}
        except OSError as exc:
            raise ConfigError(f"log pins {self.path}: cannot be read: {exc}") from exc
        identity = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
        if self._cached is not None and self._cached[0] == identity:
            return self._cached[1]
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"log pins {self.path}: cannot be read: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"log pins {self.path}: not a JSON object")
        self._cached = (identity, data)
        return data

    def load(self, domain: str) -> LogState | None:
        raw = self._read().get(domain)
        if raw is None:
            return None
        try:
            state = LogState(**raw)  # type: ignore[arg-type]
        except TypeError as exc:
            raise ConfigError(f"log pins {self.path}: the entry of {domain} is damaged") from exc
        # A copy of the cached dict, so that no caller can change what the file says.
        return replace(state, commitments=dict(state.commitments))

    def save(self, domain: str, state: LogState) -> None:
        """Write ``state`` for ``domain`` (durably); nothing is written when it is already
        exactly what the file holds."""
        data = dict(self._read())
        if data.get(domain) == asdict(state):
            return
        data[domain] = asdict(state)
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(data, out, indent=1, sort_keys=True)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            raise ConfigError(f"log pins {self.path}: cannot be written: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Alarm:
    """An enrollment for the monitored AOR of a certificate that is not one of its own."""

    index: int
    cert_sha256: str
    sequenced_ms: int

    def line(self, aor: str) -> str:
        return (
            f"ALARM {aor}: the log holds an enrollment (entry {self.index}) of a certificate "
            f"that is not one of your devices: SHA-256 {self.cert_sha256}"
        )


class LogClient:
    """One domain's log as a UA checks it (see the module docstring)."""

    def __init__(
        self,
        domain: str,
        get: Getter,
        pins: PinStore,
        *,
        witnesses: Sequence[Verifier] = (),
        quorum: int = 0,
        cosign_wait: float = COSIGN_WAIT,
    ) -> None:
        if quorum > len(witnesses):
            raise ConfigError(f"a quorum of {quorum} needs at least {quorum} witnesses")
        self.domain = domain
        self.get = get
        self.pins = pins
        self.witnesses = tuple(witnesses)
        self.quorum = quorum
        self.cosign_wait = cosign_wait
        #: Whether the last :meth:`publishes_log` got a 404 (the only answer a UA may cache as
        #: "no log"; an error is asked again next time).
        self.answered_404 = False
        #: ``/log/vkey`` as :meth:`publishes_log` just read it, for the next :meth:`log_key`
        #: only: a fetch's check reads it once, not once per step (issue 13).
        self._vkey: bytes | None = None

    async def _fetch(self, path: str) -> bytes:
        body = await self.get(path)
        if body is None:
            raise StoreResponseError(404, f"the Store has no {path}")
        return body

    async def publishes_log(self) -> bool:
        """Whether the Store serves a log (a vkey at ``/log/vkey``); one that stops after it
        was pinned is refused.

        Raises:
            ProofError: this UA pinned the domain's log, and the Store now serves none.
        """
        pinned = self.pins.load(self.domain) is not None
        self.answered_404 = False
        try:
            served = await self.get("/log/vkey")
            self.answered_404 = served is None
            self._vkey = served
        except (TransportError, StoreResponseError, InputTooLargeError):
            if pinned:
                raise
            served = None  # first use: a Store that cannot answer this has no log for us
        if served is not None and _is_vkey(served):
            return True
        if pinned:
            raise ProofError(f"the Store of {self.domain} no longer publishes its log")
        return False

    async def log_key(self) -> Verifier:
        """The log's key: learnt on first use, then pinned (a change is a ProofError)."""
        from sipcert.proto.note import Verifier

        body, self._vkey = self._vkey, None
        if body is None:
            body = await self._fetch("/log/vkey")
        served = body.decode("ascii", "replace").strip()
        key = Verifier.parse(served)
        if key.name != self.domain:
            raise ProofError(f"the log key is named {key.name!r}, not {self.domain!r}")
        pinned = self.pins.load(self.domain)
        if pinned is not None and pinned.vkey != key.vkey:
            raise ProofError(f"the log key of {self.domain} changed since it was pinned")
        return key

    async def _proof_from_tiles(
        self, size: int, compute: Callable[[merkle.NodeReader], list[bytes]]
    ) -> list[bytes]:
        """Run ``compute`` on the Store's tiles, fetching the tiles it reads first."""
        from sipcert.proto.tlog import TileNodes, TilePath, tile_width

        needed: set[tuple[int, int, int]] = set()

        class Recorder:
            def node(self, level: int, index: int) -> bytes:
                tile_level, height = divmod(level, 8)
                tile_index = (index << height) // 256
                needed.add((tile_level, tile_index, tile_width(tile_level, tile_index, size)))
                return bytes(32)

        compute(Recorder())
        tiles: dict[tuple[int, int, int], bytes] = {}
        for level, index, width in sorted(needed):
            tiles[(level, index, width)] = await self._fetch(
                "/log/" + TilePath(level, index, width).path()
            )
        return compute(TileNodes(size, lambda lv, ix, w: tiles[(lv, ix, w)]))

    async def checkpoint(self) -> Checkpoint:
        """The latest checkpoint, verified and consistent with the pinned one, then pinned.

        Raises:
            ProofError: bad signatures, too few cosignatures, or another origin.
            ForkError: it cannot extend the checkpoint this UA saw before (a split view).
        """
        return (await self._checkpoint())[0]

    async def _checkpoint(self) -> tuple[Checkpoint, Verifier]:
        """:meth:`checkpoint`, and the log key it was verified with."""
        from sipcert.proto.note import open_note
        from sipcert.proto.tlog import Checkpoint

        key = await self.log_key()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cosign_wait
        while True:
            note = await self._fetch("/log/checkpoint")
            opened = open_note(note, [key, *self.witnesses])
            if key not in opened.verified:
                raise ProofError(f"the checkpoint of {self.domain} is not signed by its log key")
            cosigned = [v for v in opened.verified if v in self.witnesses]
            # The Store publishes a checkpoint as soon as it signs it and adds cosignatures
            # as its witnesses return them: one made a moment ago (by this UA's own
            # enrollment, say) is worth asking for again for a short while.
            if len(cosigned) >= self.quorum or loop.time() >= deadline:
                break
            await asyncio.sleep(COSIGN_POLL)
        if len(cosigned) < self.quorum:
            raise ProofError(
                f"the checkpoint of {self.domain} has {len(cosigned)} of the {self.quorum} "
                "witness cosignatures required"
            )
        checkpoint = Checkpoint.parse(opened.note.text)
        if checkpoint.origin != self.domain:
            raise ProofError(f"the checkpoint's origin is {checkpoint.origin!r}")
        pinned = self.pins.load(self.domain)
        monitored = 0
        if pinned is not None:
            monitored = pinned.monitored
            old_root = base64.b64decode(pinned.root)
            await self._check_consistent(pinned.size, old_root, checkpoint)
        self.pins.save(
            self.domain,
            LogState(
                key.vkey,
                checkpoint.size,
                base64.b64encode(checkpoint.root).decode(),
                monitored,
                dict(pinned.commitments) if pinned is not None else {},
            ),
        )
        return checkpoint, key

    def _pinned_commitment(self, aor: str, document: dict[str, object]) -> bytes:
        """The AOR's commitment from a proof document, pinned on first sight.

        An HMAC commitment is not publicly verifiable, so the Store could show this home
        another one for the same AOR later (and log an injected certificate under it, out of
        the AOR owner's monitor's sight). Pinning makes that a :class:`ForkError` unless the
        Store equivocated from this home's very first answer, and holds it to that choice.
        """
        try:
            served = base64.b64decode(str(document["aor_commitment"]), validate=True)
        except (KeyError, ValueError) as exc:
            raise LogFormatError("the Store's proof document is malformed") from exc
        if len(served) != 32:
            raise LogFormatError("the Store's AOR commitment is not 32 bytes")
        state = self.pins.load(self.domain)
        if state is None:
            return served  # checkpoint() pins the domain first; nothing to hold yet
        known = state.commitments.get(aor)
        if known is None:
            self.pins.save(
                self.domain, replace(state, commitments={**state.commitments, aor: _b64(served)})
            )
        elif not hmac.compare_digest(base64.b64decode(known), served):
            raise ForkError(
                f"the Store of {self.domain} shows another log commitment for {aor} than it "
                "showed this home before: a split view"
            )
        return served

    async def _check_consistent(self, old_size: int, old_root: bytes, new: Checkpoint) -> None:
        from sipcert.proto import merkle

        if new.size < old_size:
            raise ForkError(
                f"the log of {self.domain} went back from size {old_size} to {new.size}"
            )
        if old_size == 0:
            return
        size = new.size
        proof = await self._proof_from_tiles(size, _consistency(old_size, size))
        try:
            merkle.verify_consistency(old_size, size, proof, old_root, new.root)
        except ProofError as exc:
            raise ForkError(
                f"the log of {self.domain} at size {size} does not extend the checkpoint of "
                f"size {old_size} seen before: {exc}"
            ) from exc

    async def verify_certificates(
        self, aor: str, certificates: Sequence[bytes]
    ) -> tuple[list[bytes], list[tuple[bytes, str]]]:
        """Split ``certificates`` (DER) into logged ones and ones discarded with a reason."""
        from sipcert.proto.tlog import verify_certificate_proof

        checkpoint, key = await self._checkpoint()
        document = _proof_document(await self._fetch(_proof_path(aor)))
        commitment = self._pinned_commitment(aor, document)
        items: dict[str, str] = {}
        proofs = document.get("proofs")
        for item in proofs if isinstance(proofs, list) else [None]:
            if not (
                isinstance(item, dict)
                and isinstance(item.get("sha256"), str)
                and (item.get("proof") is None or isinstance(item.get("proof"), str))
            ):
                raise LogFormatError("the Store's proof document is malformed")
            items[item["sha256"]] = item["proof"] or ""  # null: the Store has no entry for it
        kept: list[bytes] = []
        discarded: list[tuple[bytes, str]] = []
        for der in certificates:
            proof = items.get(hashlib.sha256(der).hexdigest())
            if not proof:
                discarded.append((der, "not in the transparency log"))
                continue
            try:
                verified = verify_certificate_proof(
                    proof.encode(),
                    log_key=key,
                    cert_der=der,
                    aor_commitment=commitment,
                    witnesses=self.witnesses,
                    quorum=self.quorum,
                )
                if verified.checkpoint.size > checkpoint.size:
                    raise ProofError("its proof names a checkpoint newer than the log's")
                if verified.checkpoint.size < checkpoint.size or (
                    verified.checkpoint.root != checkpoint.root
                ):
                    await self._check_consistent(
                        verified.checkpoint.size, verified.checkpoint.root, checkpoint
                    )
            except ForkError:
                raise
            except (ProofError, LogFormatError) as exc:
                discarded.append((der, f"its transparency proof fails: {exc}"))
                continue
            kept.append(der)
        return kept, discarded

    async def monitor(self, aor: str, own_sha256: Sequence[str]) -> list[Alarm]:
        """Read the entries added since the last run; alarm on foreign enrollments of ``aor``.

        Every entry read is proven to be in the verified checkpoint (RFC 9162 §2.1.3.2).
        """
        from sipcert.proto import merkle
        from sipcert.proto.tlog import Entry, Operation, TilePath, decode_entry_bundle, tile_width

        checkpoint = await self.checkpoint()
        commitment = self._pinned_commitment(
            aor, _proof_document(await self._fetch(_proof_path(aor)))
        )
        state = self.pins.load(self.domain)
        start = state.monitored if state is not None else 0
        size = checkpoint.size
        own = set(own_sha256)
        alarms: list[Alarm] = []
        bundles: dict[int, list[bytes]] = {}
        for index in range(start, size):
            bundle_index = index // 256
            if bundle_index not in bundles:
                width = tile_width(0, bundle_index, size)
                data = await self._fetch("/log/" + TilePath(None, bundle_index, width).path())
                bundles[bundle_index] = decode_entry_bundle(data, width)
            raw = bundles[bundle_index][index % 256]
            proof = await self._proof_from_tiles(size, _inclusion(index, size))
            merkle.verify_inclusion(merkle.leaf_hash(raw), index, size, proof, checkpoint.root)
            entry = Entry.parse(raw)
            if entry.aor_commitment != commitment or entry.operation != Operation.ENROLL:
                continue
            if entry.cert_sha256.hex() not in own:
                alarms.append(Alarm(index, entry.cert_sha256.hex(), entry.sequenced_ms))
        if state is not None:
            self.pins.save(
                self.domain,
                replace(state, monitored=max(start, size)),
            )
        return alarms


def _is_vkey(body: bytes) -> bool:
    """Whether ``body`` is one verifier-key line (anything else: the Store has no log)."""
    from sipcert.proto.note import Verifier

    try:
        Verifier.parse(body.decode("ascii").strip())
    except (UnicodeDecodeError, LogFormatError):
        return False
    return True


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _proof_document(body: bytes) -> dict[str, object]:
    """The JSON object of ``/log/proof`` (docs/store.md), or LogFormatError."""
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise LogFormatError("the Store's proof document is not JSON") from exc
    if not isinstance(document, dict):
        raise LogFormatError("the Store's proof document is not a JSON object")
    return document


def _proof_path(aor: str) -> str:
    return "/log/proof?sip=" + quote(aor, safe="@")


def _inclusion(index: int, size: int) -> Callable[[merkle.NodeReader], list[bytes]]:
    from sipcert.proto import merkle

    return lambda nodes: merkle.inclusion_proof(nodes, index, size)


def _consistency(old: int, new: int) -> Callable[[merkle.NodeReader], list[bytes]]:
    from sipcert.proto import merkle

    return lambda nodes: merkle.consistency_proof(nodes, old, new)
