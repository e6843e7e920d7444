"""The ``sipcert demo`` scenario: draft §1's figure, steps 0-5, on loopback, narrated.

Everything the draft needs is started here, in one process and one event loop, in a
temporary folder: a test CA (standing in for the "well known certificate authority" of
§7.1), one Store per domain (``example.com`` is Store A, ``example.net`` Store B; the real
:class:`~sipcert.server.app.StoreApp` behind the real :func:`~sipcert.server.run.serve_app`),
and a DNS responder answering the SRV and A queries of §4.1. The UAs are the real client
(:class:`~sipcert.client.AsyncUA`: SNI and the exact TLS name check against the AOR domain,
Digest, the §4.5 checks) and real SIP user agents talking UDP to each other directly: there
is no proxy, so the figure's steps 2, 3 and 4 are one hop.

Nothing narrated as "ok" is assumed: each is the outcome of a check made on what actually
happened -- DNS questions the responder answered, TLS events of the client, the Digest
headers on the wire, HTTP statuses, certificates the Store served, the RecipientInfos in the
body the callee received, the callee's verification outcome. A check that does not hold
raises :class:`DemoCheckFailedError` (exit code 1) with the step and the reason.

``hooks`` lets tests sabotage a component at named points (see :data:`HOOK_POINTS`) to prove
that a broken check stops the demo; the command line has no such switch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

import httpx
from cryptography import x509

from sipcert.client import AsyncUA, ClientConfig, Credentials, FetchResult
from sipcert.client.tlog import LOG_PINS, PinStore
from sipcert.client.tls import ConnectionEvent
from sipcert.demo.dns import DNSQuery, DNSResponder, Record
from sipcert.errors import AuthenticationError, ConfigError, SipCertError, TransportError
from sipcert.proto import cms
from sipcert.proto.aor import AOR, parse_aor
from sipcert.proto.ca import TestCA
from sipcert.proto.certs import (
    DiscardReason,
    certificate_der,
    generate_identity,
    san_uris,
    sha256_fingerprint,
)
from sipcert.proto.digest import parse_authorization, parse_challenges
from sipcert.proto.mime import MimePart
from sipcert.proto.names import server_certificate_names
from sipcert.proto.sip import body_part
from sipcert.proto.sipsec import Reason, open_protected, split_body
from sipcert.proto.store import StorePolicy
from sipcert.server.app import StoreApp
from sipcert.server.config import ListenAddress
from sipcert.server.credentials import FileCredentials
from sipcert.server.run import bind_sockets, serve_app
from sipcert.server.tlog import LoggedStore, TransparencyLog, load_or_create_log_keys
from sipcert.server.tls import build_sni_context, load_domain_context
from sipcert.sip.secure import Received, SecureUA, Sent
from sipcert.sip.transport import Hop, Transport
from sipcert.sip.ua import UserAgent
from sipcert.storage import CertificateStore, StoredCertificate, open_store
from sipcert.storage.tlog import open_log

__all__ = [
    "HOOK_POINTS",
    "DemoCheckFailedError",
    "Hook",
    "Narrator",
    "World",
    "run_demo",
]

#: Where :func:`run_demo` calls a test's hook, in order.
HOOK_POINTS = (
    "started",
    "enrolled",
    "before-message",
    "before-invite",
    "before-revocation",
    "before-lie",
)


class DemoCheckFailedError(SipCertError):
    """A check of the demo did not hold: the message names the step and the reason."""

    exit_code = 1


# -- narration ------------------------------------------------------------------------------


@dataclass
class _Step:
    key: str
    title: str
    draft: str
    checks: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Narrator:
    """Prints the demo: a heading per draft step, ``ok`` per check, indented facts.

    With ``as_json`` it prints one JSON object per step instead (``step``, ``title``,
    ``draft``, ``ok``, ``checks``, ``notes``; ``error`` on failure), then a final
    ``{"step": "done", ...}`` object.
    """

    def __init__(self, out: TextIO, *, as_json: bool = False) -> None:
        self.out = out
        self.as_json = as_json
        self._step: _Step | None = None
        self.steps: list[_Step] = []

    def title(self, text: str) -> None:
        """The opening line (text output only)."""
        if not self.as_json:
            print(text, file=self.out, flush=True)

    def step(self, key: str, title: str, draft: str) -> None:
        """Start a step; ``draft`` names the sections it follows."""
        self._flush(ok=True)
        self._step = _Step(key, title, draft)
        self.steps.append(self._step)
        if not self.as_json:
            label = (
                key.capitalize()
                if not key[0].isdigit()
                else f"Steps {key}"
                if "-" in key
                else f"Step {key}"
            )
            print(f"\n{label} - {title} ({draft})", file=self.out, flush=True)

    def _current(self) -> _Step:
        if self._step is None:
            raise RuntimeError("no step started")
        return self._step

    def ok(self, check: str, **facts: Any) -> None:
        """A check that held."""
        self._current().checks.append({"check": check, "ok": True, **facts})
        if not self.as_json:
            print(f"  ok  {check}", file=self.out, flush=True)

    def note(self, text: str) -> None:
        """A fact worth showing that is not itself a check (what was sent, where)."""
        self._current().notes.append(text)
        if not self.as_json:
            print(f"      {text}", file=self.out, flush=True)

    def expect(self, condition: bool, check: str, why_not: str, **facts: Any) -> None:
        """``ok(check)`` when ``condition`` holds, else stop the demo with ``why_not``.

        ``why_not`` is the whole reason shown to the user, so it names what was expected.
        """
        if condition:
            self.ok(check, **facts)
            return
        raise self.failure(why_not)

    def failure(self, reason: str) -> DemoCheckFailedError:
        """The exception that stops the demo in the current step, ``reason`` recorded."""
        step = self._step
        where = (
            "demo" if step is None else f"step {step.key}" if step.key[0].isdigit() else step.key
        )
        return DemoCheckFailedError(f"{where} failed: {reason}")

    def failed(self, reason: str) -> None:
        """Record that the current step failed (printed; the CLI prints the error line)."""
        step = self._step
        if step is not None:
            step.checks.append({"check": reason, "ok": False})
        if self.as_json:
            self._flush(ok=False, error=reason)
        else:
            print(f"  FAILED  {reason}", file=self.out, flush=True)
        self._step = None

    def done(self, seconds: float, folder: Path | None) -> None:
        self._flush(ok=True)
        kept = f"; files kept in {folder}" if folder is not None else ""
        if self.as_json:
            line = {"step": "done", "ok": True, "exit_code": 0, "seconds": round(seconds, 2)}
            if folder is not None:
                line["folder"] = str(folder)
            print(json.dumps(line), file=self.out, flush=True)
        else:
            print(f"\ndemo passed: every check held, in {seconds:.1f} s{kept}", file=self.out)

    def _flush(self, *, ok: bool, error: str | None = None) -> None:
        step, self._step = self._step, None
        if step is None or not self.as_json:
            return
        line: dict[str, Any] = {
            "step": step.key,
            "title": step.title,
            "draft": step.draft,
            "ok": ok,
            "checks": step.checks,
            "notes": step.notes,
        }
        if error is not None:
            line["error"] = error
        print(json.dumps(line, default=str), file=self.out, flush=True)


# -- what the client did on the wire ---------------------------------------------------------


@dataclass(frozen=True)
class HttpExchange:
    """One HTTP request of a UA and its answer, as seen by an httpx event hook."""

    method: str
    url: str
    status: int
    offered: tuple[str, ...]  # Digest algorithms of a 401's challenges
    answered: str | None  # Digest algorithm of our Authorization header
    username: str | None


@dataclass
class Device:
    """One SIP device of a user: its own home (keys), Store client and SIP agent."""

    label: str
    aor: AOR
    name: str
    password: str
    client: AsyncUA
    sip: SecureUA
    http: list[HttpExchange] = field(default_factory=list)
    events_seen: int = 0
    #: The draft-form URL this device enrolled at (draft §4.1).
    url: str = ""

    def take_http(self) -> list[HttpExchange]:
        taken, self.http = self.http, []
        return taken

    def take_events(self) -> list[ConnectionEvent]:
        events = self.client.events[self.events_seen :]
        self.events_seen = len(self.client.events)
        return events

    @property
    def credentials(self) -> Credentials:
        return Credentials(self.password)

    @property
    def certificate(self) -> x509.Certificate:
        return self.client.home.certificate(self.aor, self.name)

    @property
    def hop(self) -> Hop:
        """Where this device's SIP agent listens (UDP on loopback)."""
        host, port = self.sip.ua.local_address
        return Hop(Transport.UDP, host, port)

    @property
    def where(self) -> str:
        host, port = self.sip.ua.local_address
        return f"{host}:{port}"

    async def next_received(self, timeout: float = 5.0) -> Received:
        """The next body this device's SIP agent received and judged (draft step 5)."""
        try:
            async with asyncio.timeout(timeout):
                return await self.sip.received.get()
        except TimeoutError:
            raise TransportError(
                f"nothing reached {self.label}'s SIP agent at {self.where} within {timeout:.0f} s"
            ) from None


def _observe(device: Device) -> None:
    """Record every request and answer of the device's Store client (Digest included)."""

    async def on_response(response: httpx.Response) -> None:
        offered: tuple[str, ...] = ()
        if response.status_code == 401:
            with contextlib.suppress(SipCertError):
                offered = tuple(
                    c.algorithm
                    for c in parse_challenges(response.headers.get_list("www-authenticate"))
                )
        answered = username = None
        header = response.request.headers.get("authorization")
        if header:
            with contextlib.suppress(SipCertError):
                answer = parse_authorization(header)
                answered, username = answer.algorithm or "MD5", answer.username
        device.http.append(
            HttpExchange(
                response.request.method,
                str(response.request.url),
                response.status_code,
                offered,
                answered,
                username,
            )
        )

    device.client.http.event_hooks["response"].append(on_response)


# -- the running pieces ----------------------------------------------------------------------


@dataclass
class RunningStore:
    """A Store served in this process until :meth:`stop`."""

    label: str
    domain: str
    port: int
    tls_names: tuple[str, ...]
    storage: CertificateStore
    credentials: FileCredentials
    task: asyncio.Task[None]
    stop_event: asyncio.Event
    tlog: TransparencyLog
    sequencer: asyncio.Task[None]

    async def stop(self) -> None:
        self.stop_event.set()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await self.task
        self.sequencer.cancel()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await self.sequencer
        await self.tlog.store.close()
        await self.credentials.close()
        await self.storage.close()


@dataclass
class World:
    """Everything the demo runs; hooks receive it (tests reach in to break things)."""

    folder: Path
    ca: TestCA
    dns: DNSResponder
    stores: dict[str, RunningStore] = field(default_factory=dict)
    devices: dict[str, Device] = field(default_factory=dict)


Hook = Callable[[World], Awaitable[None]]

ALICE = parse_aor("alice@example.com")
BOB = parse_aor("bob@example.net")
_STORE_LABELS = {"example.com": "Store A", "example.net": "Store B"}


def _write(path: Path, data: bytes, mode: int = 0o600) -> None:
    path.write_bytes(data)
    path.chmod(mode)


async def _start_store(world: World, domain: str, users: Mapping[str, str]) -> RunningStore:
    """Issue the Store's TLS certificate from the test CA and serve it on a free port."""
    now = datetime.now(UTC)
    folder = world.folder / "stores" / domain
    folder.mkdir(parents=True, mode=0o700)
    issued = world.ca.issue([domain], now=now, days=2)
    cert_file, key_file = folder / "tls.pem", folder / "tls.key"
    _write(cert_file, issued.cert_pem + world.ca.cert_pem, 0o644)
    _write(key_file, issued.key_pem)
    # load_domain_context refuses a certificate that does not name the domain (draft §4.3).
    ssl_context = build_sni_context(
        {domain: load_domain_context(domain, cert_file, key_file, now=now)}
    )
    credentials = FileCredentials(folder / "users.json")
    for aor, password in users.items():
        credentials.add(aor, password)
    url = f"sqlite:///{folder / 'certificates.db'}"
    storage = open_store(url)
    # The Store publishes its transparency log (issue 14), batches every 20 ms for speed.
    tlog = TransparencyLog(
        open_log(url, folder), {domain: load_or_create_log_keys(folder, domain)}, interval=0.02
    )
    await tlog.start()
    sequencer = asyncio.get_running_loop().create_task(tlog.run_forever())
    app = StoreApp(
        domains=[domain],
        storage=storage,
        credentials=credentials,
        policy=StorePolicy(max_age=0),
        nonce_secret=secrets.token_bytes(32),
        tlog=tlog,
    )
    sockets = bind_sockets([ListenAddress("127.0.0.1", 0)])
    port = int(sockets[0].getsockname()[1])
    stop = asyncio.Event()

    async def serve() -> None:
        try:
            await serve_app(app, ssl_context, sockets, stop, access_log=False)
        finally:
            for sock in sockets:
                sock.close()

    task = asyncio.get_running_loop().create_task(serve())
    return RunningStore(
        _STORE_LABELS.get(domain, f"Store {domain}"),
        domain,
        port,
        tuple(server_certificate_names(issued.certificate)),
        storage,
        credentials,
        task,
        stop,
        tlog,
        sequencer,
    )


def _describe_dns(queries: list[DNSQuery]) -> Iterator[str]:
    for query in queries:
        answers = ", ".join(query.answers) if query.answers else query.rcode
        if query.rdtype == "AAAA" and not query.answers:
            continue  # the Locator asks AAAA after A; "no AAAA" is noise here
        yield f"DNS {query.rdtype} {query.name} -> {answers}"


class _Scenario:
    """The demo's steps; each method is one heading of the narration."""

    def __init__(self, world: World, say: Narrator, hooks: Mapping[str, Hook]) -> None:
        self.world = world
        self.say = say
        self.hooks = hooks

    async def hook(self, point: str) -> None:
        hook = self.hooks.get(point)
        if hook is not None:
            await hook(self.world)

    # -- observation helpers ----------------------------------------------------------------

    def narrate_location(self, device: Device, domain: str, *, dns: bool = True) -> None:
        """DNS questions answered and the TLS check of the last Store exchange (§4.1, §4.3).

        ``dns`` is False once several UAs query at once (a MESSAGE makes the receiver look
        up the sender during the sender's request): the responder cannot tell them apart.
        """
        self.check_stores()
        queries = self.world.dns.take_queries()
        if dns:
            for line in _describe_dns(queries):
                self.say.note(line)
        events = device.take_events()
        verified = [e for e in events if e.kind == "tls-verified" and e.domain == domain]
        refused = [e for e in events if e.kind == "tls-refused"]
        if refused:
            raise self.say.failure(f"TLS refused: {refused[0].detail}")
        if not verified:
            # A pooled connection, verified when it was opened, carried this request.
            self.say.note(
                f"{device.label}: TLS connection to the {domain} Store reused "
                "(verified when opened)"
            )
            return
        event = verified[-1]
        store = self.world.stores[domain]
        self.say.expect(
            event.target.port == store.port,
            f"{device.label}: TLS with SNI {domain}; the Store at {event.target.host}:"
            f"{event.target.port} presented a certificate chaining to the test CA and naming "
            f"{domain} ({event.detail}): checked against the AOR domain, not the SRV target "
            f"{event.target.host} (§4.3)",
            f"{device.label} reached port {event.target.port} for {domain}, but "
            f"{store.label} is on port {store.port}",
        )

    def check_stores(self) -> None:
        """A Store that stopped serving is a failure of its own, not a client time-out."""
        for store in self.world.stores.values():
            if store.task.done():
                error = None if store.task.cancelled() else store.task.exception()
                raise self.say.failure(f"{store.label} stopped: {error or 'cancelled'}")

    def narrate_digest(
        self, exchanges: list[HttpExchange], method: str, expect: int, url: str, meaning: str = ""
    ) -> None:
        challenged = [x for x in exchanges if x.method == method and x.status == 401]
        final = [x for x in exchanges if x.method == method and x.status != 401]
        if not final:
            raise self.say.failure(f"no final answer to {method}")
        answer = final[-1]
        offered = challenged[0].offered if challenged else ()
        self.say.expect(
            bool(challenged) and answer.answered is not None,
            f"Digest: the Store challenged the {method} (401, offering "
            f"{', '.join(offered)}); answered with {answer.answered} as user "
            f"{answer.username!r} (§5)",
            f"the Store did not challenge the {method} with Digest, or no Digest answer was sent "
            "(draft §5: the server MUST digest challenge)",
            algorithm=answer.answered,
        )
        self.say.expect(
            answer.status == expect,
            f"{method} {url} -> {answer.status}{meaning}",
            f"{method} {url} answered {answer.status}, not {expect}",
        )

    def check_fetch(
        self, result: FetchResult, aor: AOR, expected: list[x509.Certificate], who: str
    ) -> None:
        """The §4.5 outcome, and that it is exactly what was enrolled."""
        reasons = "; ".join(f"{d.reason}: {d.detail}" for d in result.discarded)
        for cert in result.kept:
            uris = ", ".join(san_uris(cert))
            self.say.note(
                f"kept {sha256_fingerprint(cert)[:16]}...: SAN {uris}, valid until "
                f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
            )
        for dropped in result.discarded:
            self.say.note(
                f"discarded {dropped.sha256[:16]}...: {dropped.reason} ({dropped.detail})"
            )
        self.say.expect(
            {sha256_fingerprint(c) for c in result.kept}
            == {sha256_fingerprint(c) for c in expected},
            f"GET -> {result.status}; SAN URI check: every URI names {aor}; "
            f"{len(result.kept)} kept, {len(result.discarded)} discarded -- exactly {who} (§4.5)",
            f"GET for {aor}: kept {len(result.kept)} certificate(s), discarded "
            f"{len(result.discarded)} ({reasons or 'none'}); expected exactly {who}",
            kept=len(result.kept),
            discarded=len(result.discarded),
        )

    # -- set-up ------------------------------------------------------------------------------

    async def setup(self) -> None:
        world, say = self.world, self.say
        say.title(
            "sipcert demo: draft-jennings-sipping-certs-02 on loopback -- Alice "
            f"({ALICE}, a phone and a laptop) and Bob ({BOB}, a phone)"
        )
        say.step("set-up", "a test CA, a Store per domain, DNS, SIP user agents", "draft §1, §7.1")
        say.note(f"folder {world.folder}")
        say.note(
            "the test CA stands in for the well-known CA that signs each Store's TLS "
            "certificate (§7.1); clients trust only it"
        )
        passwords = {str(ALICE): secrets.token_urlsafe(12), str(BOB): secrets.token_urlsafe(12)}
        for domain, aor in (("example.com", ALICE), ("example.net", BOB)):
            store = await _start_store(world, domain, {str(aor): passwords[str(aor)]})
            world.stores[domain] = store
            world.dns.add(
                Record(f"_certificates._tcp.{domain}", "SRV", f"10 0 {store.port} store.{domain}.")
            )
            world.dns.add(Record(f"store.{domain}", "A", "127.0.0.1"))
            say.expect(
                domain in store.tls_names,
                f"{store.label} serves {domain} on 127.0.0.1:{store.port}; its TLS certificate "
                f"names {', '.join(store.tls_names)} (§4.3)",
                f"{store.label}'s TLS certificate names {', '.join(store.tls_names)}, not {domain}",
            )
            say.note(
                f"{aor}'s SIP secret is in {store.label}'s users file (§5: the registration secret)"
            )
        await world.dns.start()
        say.note(
            f"DNS responder on {world.dns.server}: _certificates._tcp.<domain> SRV -> "
            "store.<domain>, store.<domain> A 127.0.0.1 (§4.1)"
        )
        for label, aor, device in (
            ("Alice's phone", ALICE, "phone"),
            ("Alice's laptop", ALICE, "laptop"),
            ("Bob's phone", BOB, "phone"),
        ):
            client = AsyncUA(
                ClientConfig(
                    dns=world.dns.server,
                    ca_file=world.folder / "ca.pem",
                    home=world.folder / "homes" / f"{aor.user}-{device}",
                    timeout=10.0,
                    cache_ttl=0.0,
                )
            )
            # No proxy and no registrar: each request goes straight to the peer's address,
            # set per request in ``ua.proxy`` (the figure's steps 2, 3 and 4 become one hop).
            secure = SecureUA(UserAgent(aor, transport=Transport.UDP), client, device=device)
            entry = Device(label, aor, device, passwords[str(aor)], client, secure)
            world.devices[f"{aor.user}-{device}"] = entry  # closed on shutdown from here on
            _observe(entry)
            await secure.start()
            say.note(f"{label}: SIP user agent for {aor} on UDP {entry.where}")
        say.note(
            "Store clients: DNS via the responder, CA file of the test CA, certificate cache "
            "time 0 (§5: it MUST be possible to configure it to zero)"
        )
        await self.hook("started")

    # -- step 0 ------------------------------------------------------------------------------

    async def enroll(self) -> None:
        say = self.say
        say.step(
            "0",
            "each UA makes a self-signed certificate and PUTs it to its own domain's Store",
            "draft §1 step 0, §5, §5.1",
        )
        for device in self.world.devices.values():
            say.note(f"{device.label} ({device.aor}, device {device.name!r}):")
            enrollment = await device.client.enroll(
                device.aor, device.credentials, device=device.name
            )
            device.url = enrollment.url
            self.narrate_location(device, device.aor.host)
            self.narrate_digest(
                device.take_http(),
                "PUT",
                201,
                enrollment.url,
                ": the Store found that every SAN URI of the certificate "
                f"({', '.join(san_uris(enrollment.certificate))}) has the Digest user "
                f"{device.aor.user!r} and the TLS domain {device.aor.host} (§5.1)",
            )
            status = await device.client.status(device.aor, device=device.name)
            device.take_http()
            self.world.dns.take_queries()
            device.take_events()
            say.expect(
                status.ok,
                "start-up check: GET of its own AOR serves this device's certificate, "
                "identical (§5.1)",
                f"start-up check of {device.label}: "
                + ("; ".join(status.warnings) or "its certificate is not served"),
            )
        alice = self.world.devices["alice-phone"]
        try:
            await alice.client.enroll(ALICE, Credentials("not-alices-secret"), device="intruder")
        except AuthenticationError as exc:
            refused = [x for x in alice.take_http() if x.method == "PUT"]
            self.world.dns.take_queries()
            alice.take_events()
            say.expect(
                bool(refused) and refused[-1].status == 401,
                f"a PUT for {ALICE} with a wrong secret is refused: 401 ({exc})",
                f"a PUT for {ALICE} with a wrong secret was refused, but not with 401",
            )
        else:
            raise say.failure(f"the Store enrolled a certificate for {ALICE} with a wrong secret")
        await self.hook("enrolled")

    # -- step 1 ------------------------------------------------------------------------------

    async def fetch(self, device: Device, aor: AOR) -> FetchResult:
        """A Caller's retrieval (draft §4.5), narrated: DNS, TLS, then the §4.5 checks."""
        result = await device.client.fetch(aor, use_cache=False)
        self.narrate_location(device, aor.host)
        device.take_http()
        return result

    def certificates_of(self, aor: AOR) -> list[x509.Certificate]:
        """What the devices of ``aor`` hold right now (their homes)."""
        return [d.certificate for d in self.world.devices.values() if d.aor == aor]

    async def retrieve(self) -> None:
        say = self.say
        say.step(
            "1",
            "Alice's UA fetches Bob's certificates from Bob's Store, Store B, over HTTPS",
            "draft §1 step 1, §4.1, §4.3, §4.5",
        )
        alice = self.world.devices["alice-phone"]
        result = await self.fetch(alice, BOB)
        self.check_fetch(
            result, BOB, self.certificates_of(BOB), "the certificate Bob's phone enrolled"
        )
        pinned = PinStore(alice.client.home.root / LOG_PINS).load(BOB.host)
        self.say.expect(
            pinned is not None and bool(result.kept),
            f"{BOB.host} publishes a transparency log: Alice's UA pinned its key "
            f"({pinned.vkey.split('+')[0] if pinned else '?'}, trust on first use) and every "
            f"kept certificate has an inclusion proof in its signed checkpoint (size "
            f"{pinned.size if pinned else '?'}) (issue 14, docs/transparency.md)",
            f"Alice's UA did not verify {BOB}'s certificates against Store B's log",
        )

    # -- sending and receiving -----------------------------------------------------------

    def check_sent(
        self, sent: Sent, sender: Device, expected: list[x509.Certificate], who: str
    ) -> None:
        """What the caller did (draft §4.4): fetched, signed, encrypted for every certificate."""
        self.narrate_location(sender, sent.to.host, dns=False)
        sender.take_http()
        store = self.world.stores[sent.to.host].label
        count = len(sent.recipients)
        self.say.expect(
            {sha256_fingerprint(c) for c in sent.recipients}
            == {sha256_fingerprint(c) for c in expected}
            and not sent.fetch.from_cache,
            f"{sender.label} fetched {sent.to} from {store} (cache time 0): "
            f"{count} certificate{'' if count == 1 else 's'} kept, {who}; signed with its own "
            f"key, content-encryption key wrapped for every kept certificate (§4.4, "
            "RFC 3261 §23.3)",
            f"{sender.label} encrypted for {count} certificate(s) of {sent.to}"
            f"{' from its cache' if sent.fetch.from_cache else ''}; expected {who}",
            recipients=count,
        )
        if sent.reference_url is not None:
            self.say.note(
                f"the body also carries a message/external-body reference to {sender.label}'s "
                f"certificate: {sent.reference_url} (§4.2, RFC 4483)"
            )

    def check_on_wire(
        self, received: Received, expected: list[x509.Certificate], who: str
    ) -> MimePart:
        """The body as it arrived: whom its RecipientInfos name (issuer and serial, §4.5)."""
        body = body_part(received.message)
        enveloped, _, problem = split_body(body)
        if enveloped is None:
            raise self.say.failure(f"the received body is not S/MIME: {problem}")
        recipients = cms.recipient_identifiers(enveloped.body)
        matched = [c for c in expected if any(r.matches(c) for r in recipients)]
        parts = "" if body is None or body is enveloped else f" inside {body.media_type}"
        self.say.expect(
            len(recipients) == len(expected) == len(matched),
            f"as received: application/pkcs7-mime "
            f"{enveloped.params.get('smime-type', 'enveloped-data')}{parts} ({len(enveloped.body)} "
            f"bytes) with {len(recipients)} RecipientInfo{'' if len(recipients) == 1 else 's'}, "
            f"naming by issuer and serial exactly {who}",
            f"the received body has {len(recipients)} RecipientInfo(s); {len(matched)} of them "
            f"name {who} (expected exactly {len(expected)})",
            recipients=len(recipients),
        )
        if body is None:  # split_body found an enveloped part, so there is a body
            raise self.say.failure("the received request has no body")
        return body

    def check_received(self, received: Received, receiver: Device, sender: AOR) -> None:
        """Draft step 5 at the receiver: decrypt, verify, signer enrolled at the sender's Store."""
        say = self.say
        outcome = received.outcome
        say.expect(
            outcome.reason not in (Reason.NOT_A_RECIPIENT, Reason.UNDECIPHERABLE),
            f"{receiver.label} found its RecipientInfo by issuer and serial and decrypted (§4.5)",
            f"{receiver.label} could not decrypt: {outcome.reason} ({outcome.detail})",
        )
        signer = outcome.signer
        say.expect(
            signer is not None
            and outcome.reason not in (Reason.BAD_SIGNATURE, Reason.SIGNER_NOT_SENDER),
            "signature verified; the signer certificate's SAN URIs "
            f"({', '.join(san_uris(signer)) if signer is not None else '-'}) match the "
            f"sender {sender} (§4.5)",
            f"{receiver.label} could not verify the signature as {sender}: {outcome.reason} "
            f"({outcome.detail})",
        )
        self.narrate_location(receiver, sender.host, dns=False)
        receiver.take_http()
        check = received.check
        say.expect(
            outcome.verified and check is not None and check.in_store,
            f"step 5: {receiver.label} fetched {sender}'s certificates from "
            f"{self.world.stores[sender.host].label} ({sender.host}); the signer certificate "
            f"is enrolled there -> {outcome} (§1 step 5, §5)",
            f"{receiver.label} checked the signer at {self.world.stores[sender.host].label} "
            f"({sender.host}): {outcome}",
            outcome=str(outcome.reason),
        )

    async def message(self) -> None:
        say = self.say
        alice, bob = self.world.devices["alice-phone"], self.world.devices["bob-phone"]
        text = "Hello Bob, it's Alice. Call me?"
        await self.hook("before-message")
        say.step(
            "2-4",
            "Alice's UA signs a MESSAGE with her key, encrypts it to Bob's certificate and sends "
            "it over SIP",
            "draft §1 steps 2-4, §4.4; RFC 3428",
        )
        alice.sip.ua.proxy = bob.hop
        sent = await alice.sip.send_message(BOB, text)
        self.check_sent(sent, alice, self.certificates_of(BOB), "Bob's phone")
        say.expect(
            sent.ok,
            f"MESSAGE sip:{BOB} over UDP {alice.where} -> {bob.where}, straight to Bob's UA "
            f"(no proxies here: steps 2, 3 and 4 are one hop) -> {sent.status}",
            f"Alice's MESSAGE to Bob was answered {sent}",
        )
        received = await bob.next_received()
        say.step(
            "5",
            "Bob's UA decrypts, verifies the signature and checks the signer at Alice's Store",
            "draft §1 step 5, §4.5, §5",
        )
        self.check_on_wire(received, self.certificates_of(BOB), "Bob's certificate")
        self.check_received(received, bob, ALICE)
        say.expect(
            received.text == text,
            f"Bob reads: {received.text!r}",
            f"Bob decrypted {received.text!r}, not {text!r}",
        )

    async def invite(self) -> None:
        say = self.say
        alice, laptop = self.world.devices["alice-phone"], self.world.devices["alice-laptop"]
        bob = self.world.devices["bob-phone"]
        await self.hook("before-invite")
        say.step(
            "invite",
            "Bob calls Alice: the SDP offer is encrypted for both of her devices' certificates",
            "draft §1 steps 1-5, §4.4, §5; RFC 3261 §23.3",
        )
        offer = MimePart(
            "application/sdp",
            (
                "v=0\r\no=bob 1 1 IN IP4 127.0.0.1\r\ns=sipcert demo\r\n"
                "c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n"
            ).encode("ascii"),
        )
        bob.sip.ua.proxy = alice.hop
        call = await bob.sip.invite(ALICE, offer)
        self.check_sent(call.sent, bob, self.certificates_of(ALICE), "her phone and her laptop")
        say.expect(
            call.established,
            f"INVITE sip:{ALICE} over UDP {bob.where} -> {alice.where} (Alice's phone): "
            f"{', '.join(str(r.status) for r in call.call.provisional)}, "
            f"{call.sent.status}, ACK",
            f"the call was not established: {call.sent}",
        )
        received = await alice.next_received()
        body = self.check_on_wire(received, self.certificates_of(ALICE), "Alice's two devices")
        self.check_received(received, alice, BOB)
        say.expect(
            received.outcome.content is not None and received.outcome.content.body == offer.body,
            "Alice's phone recovered Bob's SDP offer byte for byte",
            "the SDP offer Alice's phone decrypted differs from what Bob sent",
        )
        other = open_protected(
            body, laptop.sip.identity.key, laptop.sip.identity.certificate, BOB, datetime.now(UTC)
        )
        say.expect(
            other.content is not None and other.content.body == offer.body,
            "the same body opened with Alice's laptop's key gives the same offer: whichever "
            "of her devices answers can decrypt (§5)",
            f"Alice's laptop's key cannot open the offer: {other.reason} ({other.detail})",
        )
        answer = call.answer
        self.narrate_location(bob, ALICE.host, dns=False)
        bob.take_http()
        say.expect(
            answer is not None and answer.verified,
            f"Bob's UA opened the SDP answer in the 200: encrypted for Bob, "
            f"{answer.outcome if answer is not None else 'missing'} (RFC 3261 §23.2)",
            "the SDP answer in Alice's 200 is "
            f"{answer.outcome if answer is not None else 'missing'}",
        )
        bye = await call.bye()
        say.expect(
            200 <= bye.status < 300, f"BYE -> {bye.status}", f"Bob's BYE was answered {bye.status}"
        )

    async def revoke(self) -> None:
        say = self.say
        alice, laptop = self.world.devices["alice-phone"], self.world.devices["alice-laptop"]
        bob = self.world.devices["bob-phone"]
        await self.hook("before-revocation")
        say.step(
            "revocation",
            "Alice revokes her laptop's certificate; Bob's next MESSAGE is encrypted only to "
            "her phone",
            "draft §5, §7.1",
        )
        gone = laptop.certificate
        revocation = await laptop.client.revoke(ALICE, laptop.credentials, device=laptop.name)
        self.narrate_location(laptop, ALICE.host)
        hashes = "&".join(f"certHash={quote(h, safe='')}" for h in revocation.cert_hashes)
        self.narrate_digest(laptop.take_http(), "DELETE", 204, f"{laptop.url}&{hashes}")
        text = "Bob here: did the laptop get this?"
        bob.sip.ua.proxy = alice.hop
        sent = await bob.sip.send_message(ALICE, text)
        self.check_sent(sent, bob, [alice.certificate], "her phone only")
        say.expect(
            all(sha256_fingerprint(c) != sha256_fingerprint(gone) for c in sent.recipients),
            "the revoked certificate is no longer served, so it is not a recipient: revocation "
            "takes effect on the next fetch (§7.1)",
            "Bob still encrypted for the laptop's revoked certificate",
        )
        say.expect(
            sent.ok,
            f"MESSAGE sip:{ALICE} to Alice's phone at {alice.where} -> {sent.status}",
            f"Bob's MESSAGE to Alice's phone was answered {sent}",
        )
        received = await alice.next_received()
        body = self.check_on_wire(received, [alice.certificate], "Alice's phone")
        self.check_received(received, alice, BOB)
        say.expect(
            received.text == text,
            f"Alice's phone reads: {received.text!r}",
            f"Alice's phone decrypted {received.text!r}, not {text!r}",
        )
        # A forking proxy would deliver the same request to every registered device.
        bob.sip.ua.proxy = laptop.hop
        response = await bob.sip.ua.send_message(str(ALICE), body)
        refused = await laptop.next_received()
        say.expect(
            response.status == 493 and refused.outcome.reason is Reason.NOT_A_RECIPIENT,
            f"the same body delivered to Alice's laptop ({laptop.where}), as a forking proxy "
            f"would: no RecipientInfo names its certificate ({refused.outcome.reason}), so it "
            "cannot decrypt and answers 493 Undecipherable (RFC 3261 §21.4.27, §23.2)",
            f"the revoked laptop answered {response.status} to a body not encrypted for it "
            f"(outcome: {refused.outcome}); expected 493, not a recipient",
        )

    async def lie(self) -> None:
        """Store B lies about Bob (draft §7.1): the log makes the lie visible (issue 14)."""
        say = self.say
        alice, bob = self.world.devices["alice-phone"], self.world.devices["bob-phone"]
        store = self.world.stores[BOB.host]
        await self.hook("before-lie")
        say.step(
            "log",
            "Store B lies about Bob: its transparency log shows it",
            "draft §7.1; issue 14",
        )
        now = datetime.now(UTC)

        def forged(slot: int) -> StoredCertificate:
            cert = generate_identity(BOB, now=now).certificate  # a key Bob never had
            return StoredCertificate.from_der(
                str(BOB),
                certificate_der(cert),
                not_before=cert.not_valid_before_utc,
                not_after=cert.not_valid_after_utc,
                created=now,
                label=f"forged-{slot}",
            )

        hidden = forged(1)
        await store.storage.add(hidden, max_per_aor=10, now=now)  # the database, not the log
        result = await self.fetch(alice, BOB)
        dropped = {d.sha256: d for d in result.discarded}
        say.expect(
            hidden.sha256 in dropped
            and dropped[hidden.sha256].reason is DiscardReason.NOT_IN_LOG
            and hidden.sha256 not in {sha256_fingerprint(c) for c in result.kept},
            f"a certificate for {BOB} written straight into Store B's database, not logged: "
            f"Alice's fetch discards {hidden.sha256[:16]}... as not-in-log; she keeps "
            f"{len(result.kept)}, Bob's phone's",
            f"Alice's UA used a certificate that is not in Store B's log: {result}",
        )
        await store.storage.delete(str(BOB), hidden.cert_hash)
        logged = forged(2)
        await LoggedStore(store.storage, store.tlog).add(logged, max_per_aor=10, now=now)
        result = await self.fetch(alice, BOB)
        say.expect(
            logged.sha256 in {sha256_fingerprint(c) for c in result.kept},
            f"the same lie, logged as an enrollment Store B never got: it has a valid proof, "
            f"so Alice's UA cannot tell it from Bob's ({len(result.kept)} kept) ...",
            "a logged certificate was not kept by Alice's UA",
        )
        log = await bob.client.log_client(BOB)
        own = sorted(bob.client.home.known_fingerprints(BOB))
        alarms = await log.monitor(str(BOB), own)
        bob.take_http()
        say.expect(
            [a.cert_sha256 for a in alarms] == [logged.sha256],
            f"... but Bob's monitor reads every new entry of the log and catches it: "
            f"{alarms[0].line(str(BOB)) if alarms else 'no alarm'}",
            f"Bob's monitor raised {len(alarms)} alarm(s), expected one for {logged.sha256}",
        )
        say.note(
            "`sipcert monitor AOR` and `sipcert ua --log-monitor` run this check; a Store that "
            "shows Alice and Bob different histories is a ForkError (exit 15)"
        )


def _prepare_folder(keep: Path | None) -> Path:
    """A fresh temporary folder, or ``keep`` when it is absent or empty (never clobbered)."""
    if keep is None:
        return Path(tempfile.mkdtemp(prefix="sipcert-demo-"))
    folder = keep.absolute()
    try:
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise ConfigError(f"--keep {keep}: not an empty folder; give a new or empty one")
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ConfigError(f"--keep {keep}: {exc.strerror or exc}") from exc
    return folder


async def run_demo(
    say: Narrator,
    *,
    keep: Path | None = None,
    hooks: Mapping[str, Hook] | None = None,
) -> Path:
    """Run the whole scenario and return its folder.

    Raises :class:`DemoCheckFailedError` (or another :class:`SipCertError`) when something does
    not hold. Everything started is stopped, and the folder removed unless ``keep`` names
    it, whatever happens. ``hooks`` maps points of :data:`HOOK_POINTS` to coroutines called
    there with the :class:`World` (tests use them to break a component).
    """
    hooks = dict(hooks or {})
    unknown = set(hooks) - set(HOOK_POINTS)
    if unknown:
        raise ValueError(f"unknown hook points: {', '.join(sorted(unknown))}")
    folder = _prepare_folder(keep)
    try:
        ca = TestCA.create(now=datetime.now(UTC), name="sipcert demo CA", days=2)
        _write(folder / "ca.pem", ca.cert_pem, 0o644)
        world = World(folder, ca, DNSResponder())
        scenario = _Scenario(world, say, hooks)
        try:
            await scenario.setup()
            await scenario.enroll()
            await scenario.retrieve()
            await scenario.message()
            await scenario.invite()
            await scenario.revoke()
            await scenario.lie()
        finally:
            await _shutdown(world)
    finally:
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    return folder


async def _shutdown(world: World) -> None:
    """Stop every UA, then the Stores, then DNS: clients first, so no request is cut off."""
    for device in world.devices.values():
        await device.sip.aclose()
        await device.client.aclose()
    for store in world.stores.values():
        await store.stop()
    await world.dns.aclose()


def main(
    out: TextIO,
    *,
    as_json: bool = False,
    keep: Path | None = None,
    hooks: Mapping[str, Hook] | None = None,
) -> int:
    """Run the demo on a fresh event loop; 0 when every check held.

    A failure is printed in the narration and raised for the CLI to turn into its error
    line and exit code; an error of a component (TLS refused, DNS failed ...) is raised as a
    :class:`DemoCheckFailedError` naming the step, with that error's exit code.
    """
    say = Narrator(out, as_json=as_json)
    started = time.monotonic()
    try:
        folder = asyncio.run(run_demo(say, keep=keep, hooks=hooks))
    except DemoCheckFailedError as exc:
        say.failed(str(exc))
        raise
    except SipCertError as exc:
        if not say.steps:  # nothing ran yet (``--keep`` on a full folder): the message says it
            raise
        failure = say.failure(str(exc))
        failure.exit_code = exc.exit_code
        say.failed(str(failure))
        raise failure from exc
    say.done(time.monotonic() - started, folder if keep is not None else None)
    return 0
