"""The Store's transparency log: keys, the sequencer, witnesses and the ``/log/`` resources.

One log per served domain (docs/transparency.md); its origin and key name are the domain.
Each log has an Ed25519 signing key and an AOR commitment key, generated once into a 0600
file of the data folder (``tlog/<domain>.key``), never logged. The sequencer integrates the
pending entries every ``interval`` seconds (``storage.tlog``), then submits each new
checkpoint with its consistency proof to the configured witnesses (c2sp.org/tlog-witness
``add-checkpoint``) and stores the cosignatures they return next to the log's signature.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import re
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
from aiohttp import web

from sipcert.errors import (
    ConfigError,
    LogFormatError,
    NotFoundError,
    ProofError,
    SipCertError,
    StorageError,
)
from sipcert.proto import merkle
from sipcert.proto.note import NoteSignature, Signer, Verifier, open_note, parse_note, sign_note
from sipcert.proto.tlog import (
    TILE_HEIGHT,
    TILE_WIDTH,
    Checkpoint,
    InclusionProof,
    Operation,
    WitnessRequest,
    aor_commitment,
    encode_entry_bundle,
    parse_conflict_size,
    parse_cosignatures,
    parse_tile_path,
    tile_width,
)
from sipcert.storage.base import CertificateStore, SchemaStatus, StoredCertificate
from sipcert.storage.tlog import Batch, LogStore, NodeDict, NodeRecorder, Pending

__all__ = [
    "LOG_PREFIX",
    "PROOF_PATH",
    "LogKeys",
    "LoggedStore",
    "TransparencyConfig",
    "TransparencyLog",
    "Witness",
    "load_or_create_log_keys",
    "parse_transparency",
    "parse_witnesses",
]

log = logging.getLogger("sipcert.server.tlog")

#: Where every served domain publishes its log (tlog-tiles: ``<prefix>/checkpoint`` ...).
LOG_PREFIX = "/log/"
#: The proofs of a GET answer: the same query as ``/search-cgi`` (docs/store.md).
PROOF_PATH = "/log/proof"
_KEY_DIR = "tlog"
_DOMAIN = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?")
_IMMUTABLE = "public, max-age=31536000, immutable"
#: tlog-tiles: the checkpoint's "headers SHOULD prevent caching beyond a few seconds".
_CHECKPOINT_CACHE = "public, max-age=1"


@dataclass(frozen=True, slots=True)
class LogKeys:
    """A domain log's secrets: the checkpoint signer and the AOR commitment key."""

    signer: Signer
    commitment_key: bytes = field(repr=False)


def load_or_create_log_keys(data_dir: Path, domain: str) -> LogKeys:
    """``data_dir/tlog/<domain>.key``: an skey line and a hex commitment key, made once (0600)."""
    if not _DOMAIN.fullmatch(domain):
        raise ConfigError(f"{domain!r} cannot name a log key file")
    folder = data_dir / _KEY_DIR
    path = folder / f"{domain}.key"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            try:
                text = f"{Signer.generate(domain).skey}\n{secrets.token_hex(32)}\n"
                os.write(fd, text.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        lines = path.read_text(encoding="ascii").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not ASCII"
        raise ConfigError(f"log key {path}: {reason or exc}") from exc
    try:
        signer = Signer.parse(lines[0])
        commitment_key = bytes.fromhex(lines[1])
    except (LogFormatError, IndexError, ValueError) as exc:
        raise ConfigError(f"log key {path} is damaged; restore it from a backup") from exc
    if signer.name != domain or len(commitment_key) < 32:
        raise ConfigError(f"log key {path} is not the key of the log of {domain}")
    return LogKeys(signer, commitment_key)


@dataclass(frozen=True, slots=True)
class Witness:
    """A configured witness: its cosigner key (type 0x04 vkey) and submission prefix URL."""

    verifier: Verifier
    url: str

    @property
    def add_checkpoint_url(self) -> str:
        return self.url.rstrip("/") + "/add-checkpoint"


def _text(status: int, body: bytes | str, cache: str, kind: str = "text/plain") -> web.Response:
    data = body.encode() if isinstance(body, str) else body
    response = web.Response(status=status, body=data)
    response.headers["Content-Type"] = (
        f"{kind}; charset=utf-8" if kind.startswith("text/") else kind
    )
    response.headers["Cache-Control"] = cache
    return response


class TransparencyLog:
    """The logs of every served domain, driven by one sequencer task per process.

    Every process runs :meth:`run_forever`; the database lease lets one of them sequence at a
    time (``storage.tlog``), and the others take over when it stops renewing it. Tests call
    :meth:`integrate_now` instead of waiting for the interval.
    """

    def __init__(
        self,
        store: LogStore,
        keys: Mapping[str, LogKeys],
        *,
        interval: float = 1.0,
        witnesses: Sequence[Witness] = (),
        clock: Callable[[], float] = time.time,
        lease: float = 10.0,
        max_batch: int = 4096,
        record_timeout: float = 30.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        if not interval > 0:
            raise ConfigError("the log's batch interval must be positive")
        self.store = store
        self.keys = dict(keys)
        self.interval = interval
        self.witnesses = tuple(witnesses)
        self._clock = clock
        self._lease_ms = int(lease * 1000)
        self._max_batch = max_batch
        self._record_timeout = record_timeout
        self._holder = f"{os.getpid()}-{uuid.uuid4().hex}"
        self._wake = asyncio.Event()
        self._batch_done = asyncio.Event()
        self._http = http
        self._witness_sizes: dict[tuple[str, str], int] = {}
        self._witness_next: dict[str, Batch] = {}
        self._witness_task: asyncio.Task[None] | None = None

    # -- keys and entries ------------------------------------------------------------------

    def vkey(self, domain: str) -> str:
        return self._keys_of(domain).signer.verifier.vkey

    def _keys_of(self, domain: str) -> LogKeys:
        try:
            return self.keys[domain]
        except KeyError:
            raise NotFoundError(f"no transparency log for {domain}") from None

    def commitment(self, domain: str, aor: str) -> bytes:
        """The AOR's commitment in the domain's log (revealed only with the AOR's answers)."""
        return aor_commitment(self._keys_of(domain).commitment_key, aor)

    def _sign(self, domain: str, checkpoint: Checkpoint) -> bytes:
        return sign_note(checkpoint.text(), [self._keys_of(domain).signer]).to_bytes()

    async def start(self) -> None:
        """Make sure every domain serves a checkpoint, even an empty one."""
        for domain in self.keys:
            await self.store.ensure_checkpoint(domain, self._sign)

    async def record(
        self, domain: str, operation: Operation, aor: str, cert_sha256_hex: str
    ) -> int:
        """Log one enrollment or revocation; returns its index once it is durably sequenced.

        Raises:
            StorageError: the database failed, or no sequencer integrated it in time.
        """
        pending = await self.store.submit(
            domain, operation, self.commitment(domain, aor), bytes.fromhex(cert_sha256_hex)
        )
        self._wake.set()
        return await self.wait_sequenced(pending)

    async def wait_sequenced(self, pending: Pending) -> int:
        """Wait for ``pending``'s index: woken by this process's batches, else polled."""
        deadline = asyncio.get_running_loop().time() + self._record_timeout
        while True:
            index = await self.store.sequenced(pending)
            if index is not None:
                return index
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise StorageError("the transparency log did not sequence the entry in time")
            # Woken by each batch of this process; another process may be the sequencer, so
            # look again at least once per interval (one read per waiter per batch, not a spin).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(self.interval, remaining)):
                    await self._batch_done.wait()

    # -- the sequencer -----------------------------------------------------------------------

    async def integrate_now(self) -> list[Batch] | None:
        """One sequencing batch (witnesses follow in the background); None if another
        process holds the lease."""
        now_ms = int(self._clock() * 1000)
        batches = await self.store.integrate(
            self._holder, now_ms, self._lease_ms, self._sign, self._max_batch
        )
        done, self._batch_done = self._batch_done, asyncio.Event()
        done.set()
        for batch in batches or ():
            log.info("log %s: sequenced %d..%d", batch.domain, batch.old_size, batch.new_size)
            self._witness_next[batch.domain] = batch
        if self._witness_next and self.witnesses:
            # In the background: a slow witness must not hold back the next batch (and the
            # PUTs waiting for it). Only each domain's latest checkpoint is submitted.
            if self._witness_task is None or self._witness_task.done():
                self._witness_task = asyncio.create_task(self._witness_loop())
        else:
            self._witness_next.clear()
        return batches

    async def _witness_loop(self) -> None:
        while self._witness_next:
            _, batch = self._witness_next.popitem()
            try:
                await self._witness(batch)
            except SipCertError as exc:
                log.warning("witnesses of %s: %s", batch.domain, exc)

    async def run_forever(self) -> None:
        """Integrate every ``interval`` seconds (sooner work waits for the interval's end)."""
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.interval):
                        await self._wake.wait()
                self._wake.clear()
                try:
                    await self.integrate_now()
                except SipCertError as exc:
                    log.error("transparency log: %s", exc)
                except Exception as exc:  # a bug must not stop every later PUT
                    log.error("transparency log: internal error (%s)", type(exc).__name__)
                await asyncio.sleep(self.interval)
        finally:
            if self._witness_task is not None:
                self._witness_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._witness_task

    # -- witnesses (c2sp.org/tlog-witness) ---------------------------------------------------

    async def proof(
        self, domain: str, compute: Callable[[merkle.NodeReader], list[bytes]]
    ) -> list[bytes]:
        """Run a proof generator on the nodes it needs, fetched in one go from the database."""
        recorder = NodeRecorder()
        compute(recorder)
        return compute(NodeDict(await self.store.nodes(domain, recorder.keys)))

    async def consistency(self, domain: str, old: int, new: int) -> list[bytes]:
        """RFC 9162 §2.1.4.1 consistency proof between two sizes of the domain's log."""
        return await self.proof(domain, lambda nodes: merkle.consistency_proof(nodes, old, new))

    async def _witness(self, batch: Batch) -> None:
        note = parse_note(batch.checkpoint)
        added = []
        for witness in self.witnesses:
            try:
                lines = await self._submit(witness, batch)
            except SipCertError as exc:
                log.warning("witness %s refused %s: %s", witness.verifier.name, batch.domain, exc)
                continue
            candidate = note.with_signatures(lines)
            try:
                open_note(candidate, [witness.verifier])
            except ProofError as exc:
                log.warning("witness %s answered a bad cosignature: %s", witness.verifier.name, exc)
                continue
            added += [s for s in lines if s.name == witness.verifier.name]
        if added:
            merged = note.with_signatures(added).to_bytes()
            await self.store.add_cosignatures(batch.domain, batch.new_size, merged)

    async def _submit(self, witness: Witness, batch: Batch) -> list[NoteSignature]:
        key = (witness.verifier.vkey, batch.domain)
        old = self._witness_sizes.get(key, batch.old_size)
        client = self._http or httpx.AsyncClient(timeout=10.0)
        try:
            for _attempt in range(2):
                proof = await self.consistency(batch.domain, old, batch.new_size) if old else []
                body = WitnessRequest(old, tuple(proof), batch.checkpoint).to_bytes()
                try:
                    answer = await client.post(witness.add_checkpoint_url, content=body)
                except httpx.HTTPError as exc:
                    raise StorageError(f"cannot reach the witness: {exc}") from exc
                if answer.status_code == 200:
                    self._witness_sizes[key] = batch.new_size
                    return parse_cosignatures(answer.content)
                if answer.status_code == 409 and "x.tlog.size" in answer.headers.get(
                    "content-type", ""
                ):
                    size = parse_conflict_size(answer.content)
                    if size > batch.new_size:
                        raise ProofError(
                            f"the witness holds size {size}, larger than our {batch.new_size}"
                        )
                    old = size
                    continue
                raise ProofError(f"the witness answered {answer.status_code}")
            raise ProofError("the witness kept answering 409")
        finally:
            if self._http is None:
                await client.aclose()

    # -- proofs with GET answers (docs/store.md "Proofs") -------------------------------------

    async def proofs(self, domain: str, aor: str, certs: Sequence[StoredCertificate]) -> bytes:
        """``/log/proof?sip=<aor>``: a c2sp.org/tlog-proof@v1 per certificate, as JSON.

        Each proof's ``extra`` is the entry itself, so a client recomputes the leaf hash from
        the operation, the AOR's commitment and the certificate's SHA-256 it checks.
        """
        size, note = await self._size(domain)
        commitment = self.commitment(domain, aor)
        items = []
        for cert in certs:
            sha256 = bytes.fromhex(cert.sha256)
            index = await self.store.latest_enrollment(domain, commitment, sha256)
            if index is None or index >= size:
                items.append({"sha256": cert.sha256, "proof": None})
                continue
            entries = await self.store.entries(domain, index, 1)
            hashes = await self.proof(domain, _inclusion(index, size))
            proof = InclusionProof(index, tuple(hashes), note, extra=entries[0])
            items.append({"sha256": cert.sha256, "proof": proof.to_bytes().decode()})
        document = {
            "origin": domain,
            "aor_commitment": base64.b64encode(commitment).decode(),
            "proofs": items,
        }
        return json.dumps(document, indent=1).encode() + b"\n"

    # -- /log/ resources (c2sp.org/tlog-tiles) -----------------------------------------------

    async def _size(self, domain: str) -> tuple[int, bytes]:
        note = await self.store.checkpoint(domain)
        if note is None:
            raise NotFoundError(f"the log of {domain} has no checkpoint yet")
        return Checkpoint.from_note(note).size, note

    async def handle(self, path: str, domain: str) -> web.Response:
        """Answer ``GET /log/...`` for ``domain`` (the TLS SNI name)."""
        self._keys_of(domain)
        rest = path[len(LOG_PREFIX) :]
        if rest == "checkpoint":
            _, note = await self._size(domain)
            return _text(200, note, _CHECKPOINT_CACHE)
        if rest == "vkey":
            return _text(200, self.vkey(domain) + "\n", "public, max-age=3600")
        try:
            tile = parse_tile_path(rest)
        except LogFormatError:
            raise NotFoundError("no such log resource") from None
        size, _ = await self._size(domain)
        level = 0 if tile.level is None else tile.level
        available = tile_width(level, tile.index, size)
        # A full tile exists once complete; a partial one of width W once W hashes exist
        # (its bytes never change: they are the tile's first W hashes).
        if available < tile.width:
            raise NotFoundError("that tile is not in the log (yet)")
        start = tile.index * TILE_WIDTH
        if tile.level is None:
            entries = await self.store.entries(domain, start, tile.width)
            body = encode_entry_bundle(entries)
        else:
            hashes = await self.store.hashes(domain, TILE_HEIGHT * tile.level, start, tile.width)
            if len(hashes) != tile.width:
                raise StorageError(f"the log of {domain} is missing tile hashes")
            body = b"".join(hashes)
        return _text(200, body, _IMMUTABLE, "application/octet-stream")


def _inclusion(index: int, size: int) -> Callable[[merkle.NodeReader], list[bytes]]:
    return lambda nodes: merkle.inclusion_proof(nodes, index, size)


class LoggedStore:
    """A :class:`~sipcert.storage.base.CertificateStore` that logs what it changes.

    Wrapping the store (rather than each handler) logs every way in: PUT, DELETE and the
    revocation page. A call returns only once its entries are sequenced. Expiry purges are
    not logged: a certificate's notAfter is already in its DER, which the log commits to.
    """

    def __init__(self, inner: CertificateStore, tlog: TransparencyLog) -> None:
        self.inner = inner
        self.tlog = tlog

    async def get_by_aor(self, aor: str, now: datetime) -> list[StoredCertificate]:
        return await self.inner.get_by_aor(aor, now)

    async def get_by_cert_hash(self, cert_hash: str, now: datetime) -> StoredCertificate | None:
        return await self.inner.get_by_cert_hash(cert_hash, now)

    async def add(self, cert: StoredCertificate, *, max_per_aor: int, now: datetime) -> bool:
        created = await self.inner.add(cert, max_per_aor=max_per_aor, now=now)
        # Logged even when it was already there: a retried PUT whose first answer was lost
        # may be the only one that reaches the log.
        await self.tlog.record(_domain(cert.aor), Operation.ENROLL, cert.aor, cert.sha256)
        return created

    async def delete(self, aor: str, cert_hash: str | None) -> int:
        before = await self.inner.get_by_aor(aor, _EPOCH)
        removed = await self.inner.delete(aor, cert_hash)
        if removed:
            for cert in before:
                if cert_hash is None or cert.cert_hash == cert_hash:
                    await self.tlog.record(_domain(aor), Operation.REVOKE, aor, cert.sha256)
        return removed

    async def purge_expired(self, now: datetime) -> int:
        return await self.inner.purge_expired(now)

    async def count(self, now: datetime) -> int:
        return await self.inner.count(now)

    async def schema_status(self) -> SchemaStatus:
        return await self.inner.schema_status()

    async def upgrade(self) -> SchemaStatus:
        return await self.inner.upgrade()

    async def close(self) -> None:
        await self.inner.close()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _domain(aor: str) -> str:
    """The log of an AOR is its domain's (the Store serves ``user@host`` on SNI ``host``)."""
    return aor.rpartition("@")[2]


@dataclass(frozen=True, slots=True)
class TransparencyConfig:
    """The ``transparency`` section of the Store's configuration."""

    interval: float = 1.0
    witnesses: tuple[Witness, ...] = ()


def parse_transparency(raw: object) -> TransparencyConfig | None:
    """``{"interval": 1.0, "witnesses": [{"vkey": ..., "url": ...}]}``; absent or false: None."""
    if raw is None or raw is False:
        return None
    if raw is True:
        return TransparencyConfig()
    if not isinstance(raw, Mapping):
        raise ConfigError("transparency: expected true, false or a table")
    unknown = set(raw) - {"interval", "witnesses"}
    if unknown:
        raise ConfigError(f"transparency: unknown key(s) {', '.join(sorted(unknown))}")
    interval = raw.get("interval", 1.0)
    if isinstance(interval, bool) or not isinstance(interval, int | float):
        raise ConfigError("transparency.interval: expected seconds")
    if not 0 < interval <= 3600:
        raise ConfigError("transparency.interval: between 0 and 3600 seconds")
    witnesses = raw.get("witnesses", [])
    if not isinstance(witnesses, list):
        raise ConfigError("transparency.witnesses: expected a list")
    return TransparencyConfig(float(interval), parse_witnesses(witnesses))


def parse_witnesses(raw: Iterable[Mapping[str, str]]) -> tuple[Witness, ...]:
    """Witnesses from the configuration: ``[{"vkey": ..., "url": ...}]``."""
    out = []
    for item in raw:
        try:
            verifier = Verifier.parse(item["vkey"])
            url = item["url"]
        except (KeyError, TypeError, LogFormatError) as exc:
            raise ConfigError(f"a witness needs a cosignature vkey and a url: {exc}") from exc
        if not re.match(r"https?://", url):
            raise ConfigError(f"witness url {url!r} is not http(s)")
        out.append(Witness(verifier, url))
    return tuple(out)
