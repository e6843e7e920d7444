"""The Store's device labels and enrolled-on dates survive the CLI's on-disk cache (draft §5).

``sipcert fetch`` run twice within the TTL answers the second time from the cache under the
home; the labels must not vanish then.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sipcert.client.cache import CertificateCache
from sipcert.client.fetch import CertificateNote, FetchResult
from sipcert.proto.aor import parse_aor
from sipcert.proto.certs import generate_identity, sha256_fingerprint

NOW = datetime.now(UTC)
BOB = parse_aor("bob@example.com")
PHONE = generate_identity(BOB, now=NOW).certificate
LAPTOP = generate_identity(BOB, now=NOW).certificate


def test_notes_are_kept_by_the_persistent_cache(tmp_path: Path) -> None:
    when = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    notes = (CertificateNote(sha256_fingerprint(PHONE), "Téléphone", when),)
    fetched = FetchResult(BOB, "https://x/", (PHONE, LAPTOP), notes=notes)
    CertificateCache(60, clock=lambda: 1000.0, directory=tmp_path).put(fetched)

    again = CertificateCache(60, clock=lambda: 1001.0, directory=tmp_path).get(BOB)
    assert again is not None and again.from_cache
    assert again.note(PHONE) == CertificateNote(sha256_fingerprint(PHONE), "Téléphone", when)
    assert again.note(LAPTOP) == CertificateNote(sha256_fingerprint(LAPTOP), None, None)
