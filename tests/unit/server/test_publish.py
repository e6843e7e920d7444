"""server.publish on the in-memory store: files, symlinks, revocation, expiry, clean-up.

What nginx does with the tree is tested against a real nginx in tests/integration/edge.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sipcert.proto.edge import BODY_NAME, NONE_OBJECT, parse_map_line
from sipcert.server import publish
from sipcert.server.app import answer_for
from sipcert.server.publish import EXPIRY_LEAD, MAP_INTERVAL, Publisher
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
        # Revocation: the symlink now names the 404, and the old object is gone at once
        # (a map generation that names it then leads nginx to the symlink).
        old = resolved(tmp_path, "alice@example.com")
        await store.delete("alice@example.com", None)
        assert await publisher.publish_aor("alice@example.com")
        assert resolved(tmp_path, "alice@example.com").name == NONE_OBJECT
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


def test_a_change_removes_the_old_object_and_the_map_follows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A changed AOR's old object goes with the change (whatever map nginx holds, its entry
    then leads to the symlink); the next generation maps the new object, confirmed or not;
    a restart reads the written map back and drops the markers of the earlier layout."""
    reloads: list[bool] = []
    monkeypatch.setattr(publish, "reload_nginx", lambda _pid, _timeout: reloads.pop(0))

    async def scenario() -> None:
        store = MemoryStore()
        await store.add(cert("alice@example.com", 0), max_per_aor=5, now=NOW)
        await store.add(cert("bob@example.com", 0), max_per_aor=5, now=NOW)
        clock = Clock()
        pid = tmp_path / "nginx.pid"

        def publisher_() -> Publisher:
            return Publisher(
                tmp_path,
                store,
                domains=["example.com"],
                max_age=60,
                clock=clock,
                durable=False,
                nginx_pid=pid,
            )

        publisher = publisher_()
        await publisher.publish_all()
        reloads.append(True)
        assert await publisher.refresh_map()
        live = tmp_path / "map" / "live.map"
        assert [parse_map_line(line) for line in live.read_text().splitlines()] == [
            ("example.com", "alice", resolved(tmp_path, "alice@example.com").name),
            ("example.com", "bob", resolved(tmp_path, "bob@example.com").name),
        ]
        assert not publisher._map_due()
        first = resolved(tmp_path, "alice@example.com")
        # alice changes: her old object is gone with the change; the map is behind for her.
        await store.add(cert("alice@example.com", 1), max_per_aor=5, now=NOW)
        await publisher.publish_aor("alice@example.com")
        second = resolved(tmp_path, "alice@example.com")
        assert second != first and (second / BODY_NAME).exists() and not first.exists()
        assert publisher._changed == {"example.com/alice"} and not publisher._map_due()
        clock.now += MAP_INTERVAL
        assert publisher._map_due()
        # nginx does not confirm the reload: the map on disk is new all the same.
        reloads.append(False)
        assert not await publisher.refresh_map()
        assert parse_map_line(live.read_text().splitlines()[0]) == (
            "example.com",
            "alice",
            second.name,
        )
        assert not publisher._changed
        # A restart: the map on disk is what it compares with; the old layout's markers and
        # kept generations go.
        (tmp_path / "example.com" / "c").mkdir()
        (tmp_path / "example.com" / "c" / "alice").touch()
        (tmp_path / "map" / "prev-1.txt").write_text("")
        again = publisher_()
        assert not (tmp_path / "example.com" / "c").exists()
        assert list((tmp_path / "map").glob("prev-*.txt")) == []
        await store.delete("bob@example.com", None)
        bob = resolved(tmp_path, "bob@example.com")
        await again.publish_all()
        assert not bob.exists() and resolved(tmp_path, "bob@example.com").name == NONE_OBJECT
        assert again._changed == {"example.com/bob"}
        reloads.append(True)
        assert await again.refresh_map()
        assert [parse_map_line(line)[1] for line in live.read_text().splitlines()] == ["alice"]  # type: ignore[index]

    asyncio.run(scenario())


def test_a_failed_removal_is_an_error_not_a_stale_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old object must go (a map generation may name it): if it cannot, the
    publication fails with the folder's one-line error, not silently."""
    from sipcert.errors import ConfigError

    async def scenario() -> None:
        store = MemoryStore()
        await store.add(cert("alice@example.com", 0), max_per_aor=5, now=NOW)
        publisher = Publisher(
            tmp_path, store, domains=["example.com"], max_age=60, clock=Clock(), durable=False
        )
        await publisher.publish_all()
        old = resolved(tmp_path, "alice@example.com")

        def refuse(obj: Path) -> None:
            raise PermissionError(13, "Permission denied", str(obj / BODY_NAME))

        monkeypatch.setattr(publish, "_remove_object", refuse)
        await store.add(cert("alice@example.com", 1), max_per_aor=5, now=NOW)
        with pytest.raises(ConfigError, match=r"cannot write .*body: Permission denied"):
            await publisher.publish_aor("alice@example.com")
        assert resolved(tmp_path, "alice@example.com") != old  # the symlink moved first

    asyncio.run(scenario())


def test_users_that_differ_in_case_stay_out_of_the_map(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = MemoryStore()
        for aor in ("alice@example.com", "Bob@example.com", "bob@example.com"):
            await store.add(cert(aor, 0), max_per_aor=5, now=NOW)
        clock = Clock()
        publisher = Publisher(
            tmp_path, store, domains=["example.com"], max_age=60, clock=clock, durable=False
        )
        await publisher.publish_all()
        assert not await publisher.refresh_map()  # no nginx yet: the map it will start with
        lines = (tmp_path / "map" / "live.map").read_text().splitlines()
        assert [parse_map_line(line)[1] for line in lines] == ["alice"]  # type: ignore[index]
        # The users left out do not call for one map after another.
        assert not publisher._changed

    asyncio.run(scenario())


def test_one_publisher_per_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each publisher removes the objects no symlink names: a second one on the same folder
    could remove the first one's object written but not yet linked, so it is refused."""
    from sipcert.cli.main import main
    from sipcert.server.publish import take_lock

    held = take_lock(tmp_path / "edge")
    assert held is not None
    try:
        assert take_lock(tmp_path / "edge") is None
        code = main(["publish", str(tmp_path / "edge"), "--once", "--dev"])
        assert code != 0
        err = capsys.readouterr().err
        assert "another publisher is using it" in err and "Traceback" not in err
    finally:
        held.close()
    again = take_lock(tmp_path / "edge")  # released with its file
    assert again is not None
    again.close()
