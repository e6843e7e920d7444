"""server.publish on the in-memory store: files, symlinks, revocation, expiry, clean-up.

What nginx does with the tree is tested against a real nginx in tests/integration/edge.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sipcert.proto.edge import BODY_NAME, NONE_OBJECT, parse_map_line
from sipcert.server import publish
from sipcert.server.app import answer_for
from sipcert.server.publish import EXPIRY_LEAD, GRACE, Publisher
from sipcert.storage import MemoryStore, StoredCertificate

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def cert(aor: str, n: int, *, days: float = 10, label: str | None = None) -> StoredCertificate:
    return StoredCertificate.from_der(
        aor,
        f"DER {aor} {n}".encode(),
        not_before=NOW - timedelta(days=1),
        not_after=NOW + timedelta(days=days),
        created=NOW + timedelta(seconds=n),
        label=label,
    )


class Clock:
    def __init__(self) -> None:
        self.now = NOW.timestamp()

    def __call__(self) -> float:
        return self.now


def resolved(root: Path, aor: str) -> Path:
    user, _, domain = aor.partition("@")
    return (root / domain / "a" / user).resolve()


def test_publish_all_writes_the_store_s_answers(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = MemoryStore()
        for c in (cert("alice@example.com", 0), cert("bob@example.com", 0, label="desk")):
            await store.add(c, max_per_aor=5, now=NOW)
        await store.add(cert("bob@example.com", 1), max_per_aor=5, now=NOW)
        await store.add(cert("bob+home@example.com", 0), max_per_aor=5, now=NOW)
        await store.add(cert("carol@example.org", 0), max_per_aor=5, now=NOW)  # not served
        clock = Clock()
        publisher = Publisher(
            tmp_path, store, domains=["example.com"], max_age=60, clock=clock, durable=False
        )
        assert await publisher.publish_all() == 2  # bob+home is proxied, carol not served
        for aor in ("alice@example.com", "bob@example.com"):
            answer = answer_for(await store.get_by_aor(aor, NOW), max_age=60)
            target = resolved(tmp_path, aor)
            assert (target / BODY_NAME).read_bytes() == answer.body
            assert target.relative_to(tmp_path / "example.com" / "o")
        assert not (tmp_path / "example.com" / "a" / "bob+home").exists()
        assert not (tmp_path / "example.org").exists()
        # Revocation: the symlink now names the 404; the old object goes after the grace.
        old = resolved(tmp_path, "alice@example.com")
        await store.delete("alice@example.com", None)
        assert await publisher.publish_aor("alice@example.com")
        assert resolved(tmp_path, "alice@example.com").name == NONE_OBJECT
        assert old.exists()
        assert publisher.collect_garbage() == 0
        clock.now += GRACE + 1
        assert publisher.collect_garbage() == 1
        assert not old.exists()
        assert not any(name.startswith(".") for name in os.listdir(tmp_path / "example.com/a"))

    asyncio.run(scenario())


def test_a_full_publication_forgets_aors_without_certificates(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = MemoryStore()
        await store.add(cert("alice@example.com", 0), max_per_aor=5, now=NOW)
        clock = Clock()
        publisher = Publisher(
            tmp_path, store, domains=["example.com"], max_age=60, clock=clock, durable=False
        )
        await publisher.publish_all()
        old = resolved(tmp_path, "alice@example.com")
        await store.delete("alice@example.com", None)  # missed by this publisher
        an_hour_ago = time.time() - 3600  # file times are the wall clock's
        os.utime(old / BODY_NAME, (an_hour_ago, an_hour_ago))
        again = Publisher(
            tmp_path, store, domains=["example.com"], max_age=60, clock=clock, durable=False
        )
        assert await again.publish_all() == 0
        assert resolved(tmp_path, "alice@example.com").name == NONE_OBJECT
        assert not old.exists()  # an earlier run's object nobody points to

    asyncio.run(scenario())


def test_follow_publishes_changes_and_expiries(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = MemoryStore()
        clock = Clock()
        short = cert("erin@example.com", 0, days=1)
        await store.add(short, max_per_aor=5, now=NOW)
        await store.add(cert("erin@example.com", 1), max_per_aor=5, now=NOW)
        publisher = Publisher(
            tmp_path, store, domains=["example.com"], max_age=60, clock=clock, durable=False
        )
        stop = asyncio.Event()
        ready = asyncio.Event()
        task = asyncio.create_task(publisher.follow(stop, ready=ready.set))
        await asyncio.wait_for(ready.wait(), 5)
        two = (resolved(tmp_path, "erin@example.com") / BODY_NAME).read_bytes()
        assert two == answer_for(await store.get_by_aor("erin@example.com", NOW), max_age=60).body

        await store.add(cert("frank@example.com", 0), max_per_aor=5, now=NOW)
        for _ in range(500):  # woken by the store; wait on the file, not a timer
            if (tmp_path / "example.com/a/frank").exists():
                break
            await asyncio.sleep(0.01)
        assert (resolved(tmp_path, "frank@example.com") / BODY_NAME).exists()

        # The short certificate's notAfter comes: published without it, EXPIRY_LEAD early.
        clock.now = short.not_after.timestamp() - EXPIRY_LEAD
        expected = answer_for(
            await store.get_by_aor("erin@example.com", short.not_after + timedelta(seconds=1)),
            max_age=60,
        ).body
        for _ in range(500):
            body = resolved(tmp_path, "erin@example.com") / BODY_NAME
            if body.exists() and body.read_bytes() == expected:
                break
            await asyncio.sleep(0.01)
        assert (resolved(tmp_path, "erin@example.com") / BODY_NAME).read_bytes() == expected
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())


def test_the_expiry_schedule_stays_one_entry_per_aor(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = MemoryStore()
        await store.add(cert("alice@example.com", 0), max_per_aor=5, now=NOW)
        publisher = Publisher(
            tmp_path, store, domains=["example.com"], max_age=60, clock=Clock(), durable=False
        )
        for _ in range(100):  # a busy AOR: published again and again
            await publisher.publish_aor("alice@example.com")
        assert len(publisher._expiries) == 1
        await store.add(cert("alice@example.com", 1, days=2), max_per_aor=5, now=NOW)
        await publisher.publish_aor("alice@example.com")  # an earlier notAfter now
        assert publisher._next == {
            "alice@example.com": (NOW + timedelta(days=2)).timestamp() - EXPIRY_LEAD
        }

    asyncio.run(scenario())


def test_an_unwritable_folder_is_one_configuration_error(tmp_path: Path) -> None:
    from sipcert.errors import ConfigError

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="cannot write"):
        Publisher(blocker / "edge", MemoryStore(), domains=["example.com"], max_age=60)


def test_markers_follow_the_map_generations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change to a mapped AOR gets a marker before its link moves; a confirmed reload
    retires the older generations, the markers the new one covers and their objects."""
    reloads: list[bool] = []
    monkeypatch.setattr(publish, "reload_nginx", lambda _pid, _timeout: reloads.pop(0))

    async def scenario() -> None:
        store = MemoryStore()
        await store.add(cert("alice@example.com", 0), max_per_aor=5, now=NOW)
        await store.add(cert("bob@example.com", 0), max_per_aor=5, now=NOW)
        clock = Clock()
        pid = tmp_path / "nginx.pid"
        publisher = Publisher(
            tmp_path,
            store,
            domains=["example.com"],
            max_age=60,
            clock=clock,
            durable=False,
            nginx_pid=pid,
        )
        await publisher.publish_all()
        reloads.append(True)
        assert await publisher.refresh_map()
        live = (tmp_path / "map" / "live.map").read_text().splitlines()
        assert [parse_map_line(line)[1] for line in live] == ["alice", "bob"]  # type: ignore[index]
        first = resolved(tmp_path, "alice@example.com")
        marker = tmp_path / "example.com" / "c" / "alice"
        # alice changes: her marker comes with the change; bob, unchanged, has none.
        await store.add(cert("alice@example.com", 1), max_per_aor=5, now=NOW)
        await publisher.publish_aor("alice@example.com")
        assert marker.exists() and not (tmp_path / "example.com" / "c" / "bob").exists()
        # A reload nginx does not confirm: both generations may be live, the marker stays,
        # and the first generation's object is kept past the grace period.
        reloads.append(False)
        assert not await publisher.refresh_map()
        assert len(list((tmp_path / "map").glob("prev-*.txt"))) == 1
        reloads.append(False)  # asked again: the same pending generation, no new one
        assert not await publisher.refresh_map()
        assert len(list((tmp_path / "map").glob("prev-*.txt"))) == 1
        clock.now += GRACE + 1
        assert publisher.collect_garbage() == 0 and first.exists()
        assert marker.exists()
        # A new publisher (a restart) knows both generations from the disk.
        again = Publisher(
            tmp_path,
            store,
            domains=["example.com"],
            max_age=60,
            clock=clock,
            durable=False,
            nginx_pid=pid,
        )
        await store.delete("bob@example.com", None)
        await again.publish_all()
        assert (tmp_path / "example.com" / "c" / "bob").exists()
        # Confirmed: one generation left, which has alice's new object and no bob.
        reloads.append(True)
        assert await again.refresh_map()
        assert not marker.exists() and not (tmp_path / "example.com" / "c" / "bob").exists()
        assert list((tmp_path / "map").glob("prev-*.txt")) == []
        live = (tmp_path / "map" / "live.map").read_text().splitlines()
        assert [parse_map_line(line)[1] for line in live] == ["alice"]  # type: ignore[index]

    asyncio.run(scenario())


def test_users_that_differ_in_case_stay_out_of_the_map(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = MemoryStore()
        for aor in ("alice@example.com", "Bob@example.com", "bob@example.com"):
            await store.add(cert(aor, 0), max_per_aor=5, now=NOW)
        publisher = Publisher(
            tmp_path, store, domains=["example.com"], max_age=60, clock=Clock(), durable=False
        )
        await publisher.publish_all()
        await publisher.write_first_map()  # no nginx yet: the map it will start with
        lines = (tmp_path / "map" / "live.map").read_text().splitlines()
        assert [parse_map_line(line)[1] for line in lines] == ["alice"]  # type: ignore[index]
        await publisher.write_first_map()  # one is on disk: without a pid, no second
        assert list((tmp_path / "map").glob("prev-*.txt")) == []

    asyncio.run(scenario())
