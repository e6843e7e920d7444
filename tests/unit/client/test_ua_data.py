"""A user's data is never lost or stranded (issue 8): enroll/renew save durably before the
PUT and revoke what they enrolled when saving fails after it (draft §5, §5.1); an unwritable
home is a configuration error before any request; the UA's one clock expires cached
certificates (draft §4.5, §5).

The Store here is an ``httpx.MockTransport`` that records every request, so "no request was
made" and "the DELETE named this certHash" are checked, not assumed.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from cryptography import x509

from sipcert.client import home as home_module
from sipcert.client.tlog import LOG_PINS, LogState, PinStore
from sipcert.client.ua import AsyncUA, ClientConfig, Credentials
from sipcert.errors import ConfigError, ForbiddenError, ProofError
from sipcert.proto.aor import parse_aor
from sipcert.proto.certs import (
    DiscardReason,
    cert_hash,
    certificate_der,
    generate_identity,
    load_private_key,
    sha256_fingerprint,
)
from sipcert.proto.store import certificates_response

BOB = parse_aor("bob@example.com")
NOW = datetime.now(UTC).replace(microsecond=0)
CREDENTIALS = Credentials(password="pw")


@dataclass
class FakeStore:
    """Answers PUT 201 (or ``put_status``), DELETE 204, GET with what was PUT; publishes no
    transparency log (404 on ``/log/``: the UA's default check asks once, docs/transparency.md)."""

    put_status: int = 201
    delete_status: int = 204
    requests: list[httpx.Request] = field(default_factory=list)
    stored: list[bytes] = field(default_factory=list)
    on_put: Callable[[bytes], None] | None = None
    log_status: int = 404

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path.startswith("/log/"):
            return httpx.Response(self.log_status, text="no log\n")
        if request.method == "PUT":
            body = request.read()
            if self.on_put is not None:
                self.on_put(body)
            if self.put_status == 201:
                self.stored.append(body)
            return httpx.Response(self.put_status, text="refused\n")
        if request.method == "DELETE":
            return httpx.Response(self.delete_status, text="no\n")
        if not self.stored:
            return httpx.Response(404)
        answer = certificates_response(self.stored, ["x"] * len(self.stored), max_age=3600)
        return httpx.Response(200, headers=list(answer.headers), content=answer.body)

    def methods(self) -> list[str]:
        return [r.method for r in self.requests]

    def paths(self) -> list[str]:
        return [r.url.path for r in self.requests]

    def deleted_hashes(self) -> list[str]:
        return [
            parse_qs(urlsplit(str(r.url)).query)["certHash"][0]
            for r in self.requests
            if r.method == "DELETE"
        ]


def make_ua(
    home: Path,
    store: FakeStore,
    *,
    now: Callable[[], datetime] = lambda: NOW,
    cache_ttl: float = 0,
    transparency: bool = True,
) -> AsyncUA:
    config = ClientConfig(
        home=home,
        store="127.0.0.1:7000",
        cache_ttl=cache_ttl,
        persist_cache=True,
        transparency=transparency,
    )
    ua = AsyncUA(config, now=now)
    ua.http = httpx.AsyncClient(transport=httpx.MockTransport(store.handler))
    return ua


def run(ua: AsyncUA, work: Callable[[AsyncUA], object]) -> object:
    async def main() -> object:
        async with ua:
            return await work(ua)  # type: ignore[misc]

    return asyncio.run(main())


@pytest.fixture
def enrolled(tmp_path: Path) -> Iterator[tuple[Path, x509.Certificate]]:
    """A home that already holds an identity for bob (the case of issue 8)."""
    home = tmp_path / "home"
    store = FakeStore()
    result = run(make_ua(home, store), lambda ua: ua.enroll(BOB, CREDENTIALS))
    yield home, result.certificate  # type: ignore[attr-defined]


# -- durable before the PUT -----------------------------------------------------------------


def test_key_and_certificate_are_on_disk_and_fsynced_before_the_put(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(home_module.os, "fsync", recording_fsync)
    seen: dict[str, object] = {}

    def on_put(body: bytes) -> None:
        # At the moment the Store receives the certificate, its key is already saved.
        certificate = x509.load_der_x509_certificate(body)
        keys = list(home.rglob("key.pem"))
        assert len(keys) == 1
        key = load_private_key(keys[0].read_bytes(), None)
        seen["match"] = key.public_key() == certificate.public_key()
        certs = [x509.load_pem_x509_certificate(p.read_bytes()) for p in home.rglob("cert.pem")]
        seen["cert"] = certs == [certificate]
        # The file was fsynced under its temporary name, then its directory after the rename.
        directory = str(keys[0].parent)
        files = [p for p in synced if p.startswith(directory + "/.tmp-")]
        seen["synced"] = len(files) >= 2 and directory in synced

    store = FakeStore(on_put=on_put)
    enrollment = run(make_ua(home, store), lambda ua: ua.enroll(BOB, CREDENTIALS))
    assert seen == {"match": True, "cert": True, "synced": True}
    identity = home_module.Home(home).identity(BOB)
    assert identity.certificate == enrollment.certificate  # type: ignore[attr-defined]
    assert not (home_module.Home(home).device_directory(BOB) / "pending").exists()


def test_a_refused_put_keeps_the_old_identity_and_no_pending_key(
    enrolled: tuple[Path, x509.Certificate],
) -> None:
    home, old = enrolled
    store = FakeStore(put_status=403)
    with pytest.raises(ForbiddenError):
        run(make_ua(home, store), lambda ua: ua.enroll(BOB, CREDENTIALS))
    assert home_module.Home(home).certificate(BOB) == old
    assert not (home_module.Home(home).device_directory(BOB) / "pending").exists()
    assert store.methods() == ["PUT"]


# -- a failure after a successful PUT revokes what was enrolled --------------------------------


def _fail_after_put(
    monkeypatch: pytest.MonkeyPatch, store: FakeStore, function: str
) -> list[bytes]:
    """Make ``home_module.<function>`` fail with EROFS once the Store has taken a PUT."""
    put: list[bytes] = []
    store.on_put = put.append
    real = getattr(home_module, function) if hasattr(home_module, function) else None
    target = home_module if real is not None else home_module.os
    real = getattr(target, function)

    def failing(*args: object, **kwargs: object) -> object:
        if put:
            raise OSError(errno.EROFS, "Read-only file system", str(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(target, function, failing)
    return put


@pytest.mark.parametrize("function", ["_write_atomic", "replace"])
def test_saving_failing_after_the_put_revokes_the_new_certificate(
    enrolled: tuple[Path, x509.Certificate], monkeypatch: pytest.MonkeyPatch, function: str
) -> None:
    home, old = enrolled
    store = FakeStore()
    put = _fail_after_put(monkeypatch, store, function)
    with pytest.raises(ConfigError, match="revoked at the Store again") as caught:
        run(make_ua(home, store), lambda ua: ua.enroll(BOB, CREDENTIALS))
    assert caught.value.exit_code == 2
    assert "Read-only file system" in str(caught.value)
    [body] = put
    new = x509.load_der_x509_certificate(body)
    assert store.methods() == ["PUT", "DELETE"]
    assert store.deleted_hashes() == [cert_hash(new)]  # exactly the one just enrolled
    monkeypatch.undo()
    assert home_module.Home(home).certificate(BOB) == old  # the old identity is intact


def test_renew_revokes_the_new_certificate_when_saving_fails(
    enrolled: tuple[Path, x509.Certificate], monkeypatch: pytest.MonkeyPatch
) -> None:
    home, old = enrolled
    store = FakeStore()
    put = _fail_after_put(monkeypatch, store, "_write_atomic")
    with pytest.raises(ConfigError, match="revoked at the Store again"):
        run(make_ua(home, store), lambda ua: ua.renew(BOB, CREDENTIALS, force=True))
    new = x509.load_der_x509_certificate(put[0])
    # The new one is revoked; the old one, whose key is still here, is NOT revoked.
    assert store.deleted_hashes() == [cert_hash(new)]
    monkeypatch.undo()
    assert home_module.Home(home).certificate(BOB) == old


def test_when_the_revocation_fails_too_the_key_is_kept_and_the_error_says_where(
    enrolled: tuple[Path, x509.Certificate], monkeypatch: pytest.MonkeyPatch
) -> None:
    home, _ = enrolled
    store = FakeStore(delete_status=503)
    put = _fail_after_put(monkeypatch, store, "replace")
    with pytest.raises(ConfigError, match="could not be revoked") as caught:
        run(make_ua(home, store), lambda ua: ua.enroll(BOB, CREDENTIALS))
    new = x509.load_der_x509_certificate(put[0])
    pending = home_module.Home(home).device_directory(BOB) / "pending"
    assert str(pending) in str(caught.value) and cert_hash(new) in str(caught.value)
    key = load_private_key((pending / "key.pem").read_bytes(), None)
    assert key.public_key() == new.public_key()


def test_a_pending_identity_of_an_unknown_outcome_is_retired_not_overwritten(
    tmp_path: Path,
) -> None:
    home = home_module.Home(tmp_path / "home")
    first = generate_identity(BOB, now=NOW)
    home.stage(BOB, first)  # an enrollment interrupted during its PUT
    second = generate_identity(BOB, now=NOW)
    home.stage(BOB, second)
    home.promote(BOB)
    assert home.certificate(BOB) == second.certificate
    assert sha256_fingerprint(first.certificate) in home.known_fingerprints(BOB)
    [retired] = home.retired(BOB)
    assert retired == first.certificate


# -- an unwritable home is a configuration error before any request ------------------------


def test_enroll_into_a_home_under_a_regular_file_is_config_error_before_any_request(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    store = FakeStore()
    with pytest.raises(ConfigError) as caught:
        run(make_ua(blocker / "home", store), lambda ua: ua.enroll(BOB, CREDENTIALS))
    message = str(caught.value)
    assert caught.value.exit_code == 2
    assert "\n" not in message and "not writable" in message and str(blocker) in message
    assert store.requests == []


def test_fetch_with_a_cache_in_an_unwritable_home_is_config_error_before_any_request(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    store = FakeStore()
    with pytest.raises(ConfigError, match="not writable") as caught:
        run(make_ua(blocker / "home", store, cache_ttl=60), lambda ua: ua.fetch(BOB))
    assert str(blocker) in str(caught.value)
    assert store.requests == []
    # Without a cache nothing is written to the home, so nothing needs to be writable.
    run(make_ua(blocker / "home", store, cache_ttl=0), lambda ua: ua.fetch(BOB))
    assert store.methods() == ["GET"]


def test_ensure_writable_probes_with_a_real_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # os.access says yes to root on a read-only mount; only a write tells.
    monkeypatch.setattr(home_module.os, "access", lambda *a, **k: True)
    real_write = os.write

    def read_only(fd: int, data: bytes) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1].startswith(".probe-"):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_write(fd, data)

    monkeypatch.setattr(home_module.os, "write", read_only)
    with pytest.raises(ConfigError, match="Read-only file system"):
        home_module.Home(tmp_path).ensure_writable()
    assert [p.name for p in tmp_path.iterdir()] == []  # the probe cleaned up after itself


def test_an_unreadable_identity_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    home = home_module.Home(tmp_path)
    directory = home.device_directory(BOB)
    directory.mkdir(parents=True)
    (directory / "cert.pem").mkdir()  # a folder where the certificate should be
    with pytest.raises(ConfigError, match=r"cannot read .*cert\.pem"):
        home.certificate(BOB)
    (directory / "cert.pem").rmdir()
    home.save(BOB, generate_identity(BOB, now=NOW))
    (directory / "key.pem").unlink()
    (directory / "key.pem").mkdir()
    with pytest.raises(ConfigError, match=r"cannot read .*key\.pem"):
        home.identity(BOB)


# -- one clock: a certificate that expires while cached is dropped (draft §4.5, §5) -------------


def test_a_cached_certificate_that_expires_is_dropped_on_the_next_fetch(tmp_path: Path) -> None:
    clock = [NOW]
    identity = generate_identity(BOB, now=NOW, validity=timedelta(hours=1))
    not_after = identity.certificate.not_valid_after_utc
    store = FakeStore(stored=[certificate_der(identity.certificate)])

    async def work(ua: AsyncUA) -> None:
        clock[0] = not_after - timedelta(seconds=30)
        first = await ua.fetch(BOB)
        assert first.kept == (identity.certificate,) and not first.from_cache
        clock[0] = not_after  # still valid at notAfter itself (RFC 5280 §4.1.2.5)
        assert (await ua.fetch(BOB)).kept == (identity.certificate,)
        clock[0] = not_after + timedelta(microseconds=1)
        later = await ua.fetch(BOB)
        assert later.from_cache  # within the cache TTL: the Store is not asked again ...
        assert later.kept == ()  # ... but the expired certificate is not served
        assert [d.reason for d in later.discarded] == [DiscardReason.EXPIRED]
        assert later.discarded[0].sha256 == sha256_fingerprint(identity.certificate)

    run(make_ua(tmp_path, store, now=lambda: clock[0], cache_ttl=3600), work)
    # The certificates, then whether the Store publishes a log (404, cached with them).
    assert store.paths() == ["/search-cgi", "/log/vkey"]


def test_the_ua_clock_also_expires_cache_entries(tmp_path: Path) -> None:
    clock = [NOW]
    identity = generate_identity(BOB, now=NOW)
    store = FakeStore(stored=[certificate_der(identity.certificate)])

    async def work(ua: AsyncUA) -> None:
        await ua.fetch(BOB)
        clock[0] = NOW + timedelta(seconds=59)
        assert (await ua.fetch(BOB)).from_cache
        clock[0] = NOW + timedelta(seconds=61)
        assert not (await ua.fetch(BOB)).from_cache

    run(make_ua(tmp_path, store, now=lambda: clock[0], cache_ttl=60), work)
    # The "no log" answer expires with the cache entry: both are asked again.
    assert store.paths() == ["/search-cgi", "/log/vkey"] * 2


# -- the transparency log by default (issue 14, docs/transparency.md) ----------------------


def test_a_store_without_a_log_costs_one_cached_request(tmp_path: Path) -> None:
    """Verification is on by default; a 404 on /log/vkey is remembered for the cache
    lifetime, in memory and (persist_cache) in the home, so a fresh process does not ask."""
    identity = generate_identity(BOB, now=NOW)
    store = FakeStore(stored=[certificate_der(identity.certificate)])

    async def twice(ua: AsyncUA) -> None:
        for _ in range(2):
            assert (await ua.fetch(BOB, use_cache=False)).kept == (identity.certificate,)

    run(make_ua(tmp_path, store, cache_ttl=3600), twice)
    run(make_ua(tmp_path, store, cache_ttl=3600), twice)
    assert store.paths() == ["/search-cgi", "/log/vkey", *["/search-cgi"] * 3]


def test_a_pinned_log_that_disappears_is_an_error_not_a_downgrade(tmp_path: Path) -> None:
    identity = generate_identity(BOB, now=NOW)
    store = FakeStore(stored=[certificate_der(identity.certificate)])
    pinned = LogState(vkey="example.com+00000000+AQ==", size=1, root="AA==")
    PinStore(tmp_path / LOG_PINS).save(BOB.host, pinned)

    async def fetch(ua: AsyncUA) -> None:
        await ua.fetch(BOB)

    with pytest.raises(ProofError, match="no longer publishes its log"):
        run(make_ua(tmp_path, store, cache_ttl=3600), fetch)
    with pytest.raises(ProofError, match="no longer publishes its log"):
        run(make_ua(tmp_path, store, cache_ttl=3600), fetch)  # nothing cached the 404
    assert store.paths() == ["/search-cgi", "/log/vkey"] * 2


def test_verification_turned_off_asks_nothing_of_the_log(tmp_path: Path) -> None:
    identity = generate_identity(BOB, now=NOW)
    store = FakeStore(stored=[certificate_der(identity.certificate)])

    async def fetch(ua: AsyncUA) -> None:
        assert (await ua.fetch(BOB)).kept == (identity.certificate,)

    run(make_ua(tmp_path, store, transparency=False), fetch)
    assert store.paths() == ["/search-cgi"]


def test_only_a_404_is_remembered_as_no_log(tmp_path: Path) -> None:
    """A failing /log/vkey on first use is treated as no log for this fetch, but asked again
    on the next one (only a 404 says the Store publishes none)."""
    identity = generate_identity(BOB, now=NOW)
    store = FakeStore(stored=[certificate_der(identity.certificate)], log_status=503)

    async def twice(ua: AsyncUA) -> None:
        for _ in range(2):
            assert (await ua.fetch(BOB, use_cache=False)).kept == (identity.certificate,)

    run(make_ua(tmp_path, store, cache_ttl=3600), twice)
    assert store.paths() == ["/search-cgi", "/log/vkey"] * 2


def test_a_renewal_keeps_the_delegation_marker(tmp_path: Path) -> None:
    """A delegated certificate (draft §6, docs/delegated.md §5) stays marked when renewed,
    so a renewal never silently turns the service's key into what looks like a device's."""
    from sipcert.proto.certs import delegated_by

    home, store = tmp_path / "home", FakeStore()
    enrolled = run(
        make_ua(home, store),
        lambda ua: ua.enroll(BOB, CREDENTIALS, device="authsvc", delegated_by="svc.example.com"),
    )
    assert delegated_by(enrolled.certificate) == "svc.example.com"  # type: ignore[attr-defined]
    renewal = run(
        make_ua(home, store),
        lambda ua: ua.renew(BOB, CREDENTIALS, device="authsvc", force=True),
    )
    new = renewal.new.certificate  # type: ignore[attr-defined]
    assert new != enrolled.certificate  # type: ignore[attr-defined]
    assert delegated_by(new) == "svc.example.com"
    plain = run(make_ua(home, store), lambda ua: ua.enroll(BOB, CREDENTIALS, device="phone"))
    assert delegated_by(plain.certificate) is None  # type: ignore[attr-defined]
