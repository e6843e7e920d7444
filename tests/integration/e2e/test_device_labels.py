"""A person with several devices tells them apart (draft §5: one certificate per device).

``sipcert enroll --device NAME`` sends the name as the certificate's label
(``Content-Description``, RFC 2045 §8); the real Store keeps it with the enrollment date and
hands both back in every GET answer, so ``fetch --json`` and ``status`` show them, and
``renew`` keeps the label. Everything runs through the installed CLI against ``sipcert
serve`` (tests/integration/store), located with ``--store`` (the TLS name rule still holds).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.integration.e2e.conftest import password, sipcert
from tests.integration.store.conftest import StoreProcess

AOR = "dave@example.com"


def options(store: StoreProcess, home: Path) -> list[str]:
    return [
        "--store",
        f"127.0.0.1:{store.port}",
        "--ca-file",
        str(store.files.ca_file),
        "--home",
        str(home),
    ]


def ok(*args: str, secret: str | None = None) -> Any:
    done = sipcert(*args, "--json", secret=secret)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_device_label_and_enrolled_on_in_fetch_status_and_after_renew(
    store: StoreProcess, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    common = options(store, home)
    sipcert("revoke", AOR, "--all", *common, secret=password(AOR))  # a clean start
    before = datetime.now(UTC).replace(microsecond=0)
    for device in ("laptop", "desk-phone"):
        ok("enroll", AOR, "--device", device, "--validity", "20", *common, secret=password(AOR))
    after = datetime.now(UTC) + timedelta(seconds=1)

    fetched = ok("fetch", AOR, *common)
    labels = {item["label"]: item for item in fetched["certificates"]}
    assert sorted(labels) == ["desk-phone", "laptop"]
    for item in labels.values():
        assert before <= datetime.fromisoformat(item["enrolled"]) <= after

    status = ok("status", AOR, "--device", "laptop", *common)
    assert status["enrolled"] is True
    assert status["certificate"]["label"] == "laptop"
    assert status["certificate"]["sha256"] == labels["laptop"]["sha256"]
    text = sipcert("status", AOR, "--device", "laptop", *common)
    assert text.returncode == 0, text.stderr
    assert "label laptop" in text.stdout and "enrolled on " in text.stdout

    renewed = ok(
        "renew",
        AOR,
        "--device",
        "laptop",
        "--force",
        "--validity",
        "20",
        *common,
        secret=password(AOR),
    )
    assert renewed["renewed"] and renewed["old_revoked"]
    after_renewal = ok("fetch", AOR, *common)
    by_label = {item["label"]: item["sha256"] for item in after_renewal["certificates"]}
    assert sorted(by_label) == ["desk-phone", "laptop"]
    assert by_label["laptop"] == renewed["new"]["sha256"] != labels["laptop"]["sha256"]
