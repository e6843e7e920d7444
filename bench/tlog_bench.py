"""Transparency-log figures for docs/benchmarks.md (issue 14).

1. Proof size and verification time per certificate at 1k, 100k and 1M entries: a real
   c2sp.org/tlog-proof@v1 as /log/proof serves it (entry in ``extra``, a checkpoint signed by
   the log and cosigned by one witness), verified with ``proto.tlog.verify_certificate_proof``.
2. Enrollment rate through the Store's write path with the log on and off, same run: the
   SQLite certificate store alone, then the same adds through ``server.tlog.LoggedStore``
   with the sequencer running (interval 0.05 s), ``--concurrency`` adds in flight.

Run: ``.venv/bin/python bench/tlog_bench.py [--sizes 1000,100000,1000000] [--adds 400]``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sipcert.proto import merkle, note, tlog
from sipcert.server.tlog import LoggedStore, TransparencyLog, load_or_create_log_keys
from sipcert.storage import SqliteStore, StoredCertificate
from sipcert.storage.tlog import SqliteLog


def proof_figures(size: int) -> tuple[int, float]:
    log = note.Signer.generate("example.com")
    witness = note.Signer.generate("w.example/1", note.ALG_COSIGNATURE_V1)
    commitment = tlog.aor_commitment(b"k" * 32, "bob@example.com")
    cert = b"x" * 600
    index = size // 3
    tree = merkle.MemoryTree()
    chunk = 65536
    target = b""
    for start in range(0, size, chunk):
        entries = []
        for i in range(start, min(size, start + chunk)):
            sha = hashlib.sha256(cert if i == index else i.to_bytes(8, "big")).digest()
            data = tlog.Entry(tlog.Operation.ENROLL, commitment, sha, i).to_bytes()
            if i == index:
                target = data
            entries.append(merkle.leaf_hash(data))
        tree.append_hashes(entries)
    cp = tlog.Checkpoint("example.com", size, tree.root())
    signed = note.sign_note(cp.text(), [log]).with_signatures([witness.sign(cp.text(), 1)])
    proof = tlog.InclusionProof(
        index, tuple(merkle.inclusion_proof(tree, index, size)), signed.to_bytes(), target
    ).to_bytes()
    runs = 200
    began = time.perf_counter()
    for _ in range(runs):
        tlog.verify_certificate_proof(
            proof,
            log_key=log.verifier,
            cert_der=cert,
            aor_commitment=commitment,
            witnesses=[witness.verifier],
            quorum=1,
        )
    return len(proof), (time.perf_counter() - began) / runs


async def enroll_rate(folder: Path, adds: int, concurrency: int, logged: bool) -> float:
    store = SqliteStore(folder / f"certs-{logged}.db")
    tlog_service = None
    if logged:
        keys = {"example.com": load_or_create_log_keys(folder, "example.com")}
        tlog_service = TransparencyLog(SqliteLog(store.path), keys, interval=0.05)
        await tlog_service.start()
        sequencer = asyncio.create_task(tlog_service.run_forever())
    target = LoggedStore(store, tlog_service) if tlog_service else store
    now = datetime.now(UTC)
    queue = list(range(adds))

    async def worker() -> None:
        while queue:
            i = queue.pop()
            cert = StoredCertificate.from_der(
                f"u{i}@example.com",
                b"DER %d" % i,
                not_before=now,
                not_after=now + timedelta(days=1),
                created=now,
            )
            await target.add(cert, max_per_aor=10, now=now)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    rate = adds / (time.perf_counter() - began)
    if tlog_service is not None:
        sequencer.cancel()
        await tlog_service.store.close()
    await store.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,100000,1000000")
    parser.add_argument("--adds", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    print("| entries | proof bytes | verify µs/cert |")
    print("|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        length, seconds = proof_figures(size)
        print(f"| {size:,} | {length} | {seconds * 1e6:.0f} |")
    with tempfile.TemporaryDirectory() as tmp:
        off = asyncio.run(enroll_rate(Path(tmp), args.adds, args.concurrency, False))
        on = asyncio.run(enroll_rate(Path(tmp), args.adds, args.concurrency, True))
    print(f"\nenrollments/s, log off: {off:.0f}; log on: {on:.0f} ({on / off:.2f}x)")


if __name__ == "__main__":
    main()
