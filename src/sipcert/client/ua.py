"""What a SIP user agent embeds: fetch, enroll, status, renew, revoke (draft §4.5, §5, §5.1).

:class:`AsyncUA` is the API; :class:`UA` is the same API for synchronous code (one private
event loop). Both own an HTTP client and close it in ``aclose``/``close`` or at the end of a
``with`` block.

Every Store exchange goes the same way: locate the Store of the AOR's domain (draft §4.5),
install that route in the strict transport, then talk HTTPS to ``https://<AOR domain>/`` so
the TLS check is always against the AOR's domain -- for the Caller's GET and the
Subscriber's PUT and DELETE alike (draft §5: "the same rules as matching in retrieval").
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import ssl
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar
from urllib.parse import unquote

from cryptography import x509

from sipcert import __version__
from sipcert.client.cache import CertificateCache, SignaledCheck
from sipcert.client.defaults import (
    DEFAULT_CACHE_TTL,
    DEFAULT_RENEW_WINDOW,
    DEFAULT_VALIDITY,
)
from sipcert.client.fetch import (
    MAX_RESPONSE_SIZE,
    FetchResult,
    delete_certificates,
    get_certificates,
    put_certificate,
)
from sipcert.client.home import DEFAULT_DEVICE, Home, default_home
from sipcert.client.http11 import HTTP11Connection
from sipcert.client.locate import (
    DEFAULT_HTTPS_PORT,
    Attribute,
    DeferredResolver,
    DNSResolver,
    Location,
    Locator,
    location_from_url,
    parse_store_address,
)
from sipcert.client.tlog import LOG_PINS, NO_LOG_FILE, LogClient, PinStore, http_getter
from sipcert.client.tls import ConnectionEvent, RoutedBackend, StrictTransport, make_ssl_context
from sipcert.errors import (
    ConfigError,
    InputError,
    NotFoundError,
    SipCertError,
    TLSHandshakeError,
    TransportError,
)
from sipcert.proto.aor import AOR, parse_aor
from sipcert.proto.certs import (
    Discarded,
    DiscardReason,
    Identity,
    KeyType,
    RetrievalChecks,
    cert_hash,
    certificate_der,
    generate_identity,
    sha256_fingerprint,
    validate_retrieved,
)
from sipcert.proto.certs import delegated_by as delegation_of
from sipcert.proto.store import CERT_HASH_LENGTH, parse_cert_hash

# httpx carries PUT and DELETE only: the UA's httpx client is made when first used
# (AsyncUA.http), so a process that only fetches never imports it (issue 13).
if TYPE_CHECKING:
    import httpx

    from sipcert.client.viahttpx import DigestAuth
    from sipcert.proto.note import Verifier

__all__ = [
    "DEFAULT_RENEW_WINDOW",
    "DEFAULT_VALIDITY",
    "UA",
    "AsyncUA",
    "ClientConfig",
    "Credentials",
    "Enrollment",
    "Renewal",
    "Revocation",
    "Status",
    "parse_cert_reference",
]

T = TypeVar("T")
Narrate = Callable[[str], None]
#: What a connection remembers after a 404 on ``/log/vkey`` (see ``AsyncUA._check_log``).
NO_LOG = "no transparency log"
#: How long, at most, a connection's 404 on ``/log/vkey`` stands (seconds).
NO_LOG_MEMO = 10.0


@dataclass(frozen=True)
class ClientConfig:
    """Settings of a UA; the CLI's common options map one to one.

    ``fallback_port`` is the port of ``certificates.<domain>`` when there is no SRV record;
    the draft fixes it to 443 and only tests change it. ``persist_cache`` keeps the cache
    under ``home`` so that it outlives the process (the CLI). ``cache_ttl`` defaults to
    :data:`~sipcert.client.cache.DEFAULT_CACHE_TTL` (0: no cache), the same as the CLI's
    ``--cache-ttl``; a long-running UA may set a short TTL (draft §5).
    """

    dns: str | None = None
    ca_file: Path | None = None
    home: Path | None = None
    timeout: float = 10.0
    cache_ttl: float = DEFAULT_CACHE_TTL
    persist_cache: bool = False
    attribute: Attribute = "email"
    fallback_port: int = DEFAULT_HTTPS_PORT
    max_response_size: int = MAX_RESPONSE_SIZE
    #: ``HOST[:PORT]`` of the Store, skipping DNS location (the TLS name rule still applies).
    store: str | None = None
    #: Check every fetched certificate against the Store's transparency log, when it
    #: publishes one (issue 14, docs/transparency.md): the log key is pinned on first use,
    #: ``log_quorum`` of ``log_witnesses`` must cosign, a fork is a ForkError. On by default:
    #: a Store without a log costs one GET of ``/log/vkey`` whose 404 is cached for
    #: ``cache_ttl``; a domain whose log was pinned must keep publishing it (no downgrade).
    transparency: bool = True
    log_witnesses: tuple[Verifier, ...] = ()
    log_quorum: int = 0

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ConfigError(f"timeout must be positive, not {self.timeout}")
        if self.attribute not in ("email", "sip"):
            raise ConfigError(f"attribute must be 'email' or 'sip', not {self.attribute!r}")
        if not 0 <= self.log_quorum <= len(self.log_witnesses):
            raise ConfigError(
                f"a log quorum of {self.log_quorum} needs 0 to {len(self.log_witnesses)} "
                f"cosignatures: give as many --log-witness keys (issue 14, k of n)"
            )
        if len({w.vkey for w in self.log_witnesses}) < len(self.log_witnesses):
            raise ConfigError("the same log witness is given twice (a quorum counts distinct keys)")


@dataclass(frozen=True)
class Credentials:
    """The SIP credentials used for Digest at the Store (draft §5: the registration secret).

    ``username`` defaults to the AOR's user part, unescaped (the Store requires them equal).
    """

    password: str = ""
    username: str | None = None

    def for_aor(self, aor: AOR) -> DigestAuth:
        if not self.password:
            raise ConfigError("an empty password cannot answer a Digest challenge")
        from sipcert.client.viahttpx import DigestAuth

        return DigestAuth(self.username or unquote(aor.user), self.password)


@dataclass(frozen=True)
class Enrollment:
    """A certificate now held by the Store (``status`` 201 new, 200 already there)."""

    aor: AOR
    device: str
    certificate: x509.Certificate
    status: int
    url: str
    directory: Path


@dataclass(frozen=True)
class Status:
    """Start-up check of draft §5, §5.1: is our certificate enrolled, identical, fresh?"""

    aor: AOR
    device: str
    certificate: x509.Certificate | None
    in_store: bool
    unknown: tuple[x509.Certificate, ...]
    fetch: FetchResult
    expires_in: timedelta | None
    warnings: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """Enrolled here and served, identical, by the Store."""
        return self.certificate is not None and self.in_store


@dataclass(frozen=True)
class Renewal:
    """Outcome of :meth:`AsyncUA.renew`; ``revoke_error`` explains an old one left behind."""

    aor: AOR
    renewed: bool
    reason: str
    old: x509.Certificate | None
    new: Enrollment | None
    old_revoked: bool
    revoke_error: str | None = None


@dataclass(frozen=True)
class Revocation:
    """What was revoked: the ``certHash`` values, or every certificate of the AOR."""

    aor: AOR
    cert_hashes: tuple[str, ...]
    sha256: tuple[str, ...]
    everything: bool


def _aor(value: AOR | str) -> AOR:
    return value if isinstance(value, AOR) else parse_aor(value)


def _now() -> datetime:
    return datetime.now(UTC)


class AsyncUA:
    """The UA side of the draft, as an async API.

    ``resolver`` replaces the DNS resolver (tests); ``now`` is the one clock of the UA:
    certificate validity, and cache expiry unless ``cache_clock`` (seconds) is given apart.
    So one injected clock moves both, and a cached certificate that expires while cached
    is dropped on the next :meth:`fetch` (draft §4.5, §5). ``narrate`` receives one line
    per location and connection step.
    """

    def __init__(
        self,
        config: ClientConfig | None = None,
        *,
        resolver: DNSResolver | None = None,
        ssl_context: ssl.SSLContext | None = None,
        now: Callable[[], datetime] = _now,
        cache_clock: Callable[[], float] | None = None,
        narrate: Narrate | None = None,
    ) -> None:
        self.config = config or ClientConfig()
        self._now = now
        if cache_clock is None:

            def cache_clock() -> float:
                return now().timestamp()

        self._cache_clock = cache_clock
        #: Domains whose Store answered 404 on /log/vkey, until when (``cache_clock``).
        self._no_log: dict[str, float] = {}
        self._cache_checked = False
        self._narrate = narrate
        system = resolver is None and self.config.dns is None
        self.locator = Locator(
            resolver
            if resolver is not None
            else DeferredResolver(self.config.dns, timeout=self.config.timeout),
            fallback_port=self.config.fallback_port,
            system_addresses=system,
            store=parse_store_address(self.config.store) if self.config.store else None,
        )
        self.home = Home(self.config.home or default_home())
        #: The transparency log's pins in the home (one object: it keeps the parsed file
        #: while the file is unchanged).
        self._pins = PinStore(self.home.root / LOG_PINS)
        self.cache = CertificateCache(
            self.config.cache_ttl,
            clock=cache_clock,
            directory=self.home.cache_directory if self.config.persist_cache else None,
        )
        #: Decoding, SAN and signature checks of fetched certificates, by DER: a certificate
        #: fetched again is only checked against the clock (issue 13).
        self.checks = RetrievalChecks()
        self.events: list[ConnectionEvent] = []
        self.backend = RoutedBackend(self.locator, on_event=self._on_event)
        self.transport = StrictTransport(
            ssl_context or make_ssl_context(self.config.ca_file), self.backend
        )
        #: The httpx client PUT and DELETE go through (see :attr:`http`); ``None`` until used.
        self._http: httpx.AsyncClient | None = None
        self._own_http: httpx.AsyncClient | None = None

    @property
    def http(self) -> httpx.AsyncClient:
        """The httpx client of PUT and DELETE: the UA's own over :attr:`transport`, made (and
        httpx imported) on first use, or the one a caller installed instead (a test's mock;
        GETs then go through it too)."""
        if self._http is None:
            import httpx

            from sipcert.client.viahttpx import HttpxTransport

            self._http = self._own_http = httpx.AsyncClient(
                transport=HttpxTransport(self.transport),
                timeout=self.config.timeout,
                trust_env=False,  # a proxy from the environment would bypass the routed backend
                follow_redirects=False,
                headers={"User-Agent": f"sipcert/{__version__}"},
            )
        return self._http

    @http.setter
    def http(self, client: httpx.AsyncClient) -> None:
        self._http = client

    async def __aenter__(self) -> AsyncUA:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the httpx client in use, and with the UA's own (or without one) the
        strict transport's connections."""
        if self._http is not None:
            await self._http.aclose()
        if self._own_http is None:
            await self.transport.aclose()

    def _say(self, line: str) -> None:
        if self._narrate is not None:
            self._narrate(line)

    def _on_event(self, event: ConnectionEvent) -> None:
        self.events.append(event)
        where = f"{event.target.host}:{event.target.port} ({event.address})"
        text = {
            "connect-failed": f"connect to {where} failed: {event.detail}; trying the next target",
            "connected": f"TCP connected to {where} for {event.domain}",
            "tls-failed": f"TLS with {where} failed: {event.detail}; trying the next target",
            "tls-verified": f"TLS for {event.domain} verified: {event.detail}",
            "tls-refused": f"TLS for {event.domain} refused: {event.detail}",
        }.get(event.kind, f"{event.kind} {where} {event.detail}")
        self._say(text)

    # -- location ---------------------------------------------------------------------------

    async def locate(self, aor: AOR | str) -> Location:
        """The Store targets of ``aor`` (draft §4.1, §4.5), narrated."""
        return await self.locator.locate(
            _aor(aor), attribute=self.config.attribute, narrate=self._narrate
        )

    async def _route(self, aor: AOR) -> Location:
        location = await self.locate(aor)
        self.backend.set_route(location.domain, location.targets)
        return location

    # -- retrieval --------------------------------------------------------------------------

    async def fetch(self, aor: AOR | str, *, use_cache: bool = True) -> FetchResult:
        """The usable certificates of ``aor`` and the discarded ones (draft §4.4, §4.5).

        Served from the cache while fresh (draft §5); certificates that expired since they
        were cached are dropped on the way out.
        """
        parsed = _aor(aor)
        self._check_cache_writable()
        now = self._now()
        if use_cache:
            cached = self.cache.get(parsed)
            if cached is not None:
                self._say(f"{parsed}: from the cache ({len(cached.kept)} certificates)")
                still = validate_retrieved(cached.kept, parsed, now, checks=self.checks)
                return replace(
                    cached,
                    kept=tuple(still.kept),
                    discarded=cached.discarded + tuple(still.discarded),
                )
        return await self._retrieve(await self._route(parsed), now)

    async def fetch_url(self, aor: AOR | str, url: str) -> FetchResult:
        """The certificates of ``aor`` from a Store URL learnt by SIP location (draft §4.2).

        The alternative to DNS location: an OPTIONS answer (see
        :func:`sipcert.sip.locate.locate_by_sip`) names the Store URL. Retrieval is then
        exactly :meth:`fetch`'s (draft §4.3, §4.5): TLS to the URL's host and port, but SNI
        and the exact name check are the AOR's domain and complete before any HTTP byte;
        the answer goes through :func:`~sipcert.proto.certs.validate_retrieved`. The URL
        must name ``aor`` itself (:func:`~sipcert.client.locate.location_from_url`), else
        :class:`~sipcert.errors.LocationError`. The result is cached like :meth:`fetch`'s;
        the cache is not consulted, since the caller asked for this URL.

        Connections are pooled per AOR domain, as for :meth:`fetch`: one already verified
        for that domain may carry the request. That is the draft's trust unit -- any server
        that proved the AOR's domain may answer for it -- and ``result.url`` names the
        target that actually answered.
        """
        parsed = _aor(aor)
        self._check_cache_writable()
        location = location_from_url(parsed, url)
        for step in location.steps:
            self._say(step)
        self.backend.set_route(location.domain, location.targets)
        return await self._retrieve(location, self._now())

    def _check_cache_writable(self) -> None:
        """A cache kept in the home needs a writable home: say so before any request."""
        if self._cache_checked or not (self.cache.enabled and self.config.persist_cache):
            return
        self.home.ensure_writable(self.home.cache_directory)
        self._cache_checked = True

    def _getter(self) -> httpx.AsyncClient | StrictTransport:
        """What GETs go through: the strict transport itself (the lean GET, issue 13), or
        the httpx client installed in place of the UA's own (a test's mock, for one)."""
        if self._http is None or self._http is self._own_http:
            return self.transport
        return self._http

    async def _retrieve(self, location: Location, now: datetime) -> FetchResult:
        """GET a routed ``location``, check the answer at ``now``, narrate and cache it."""
        retrieved = await get_certificates(
            self._getter(),
            location,
            max_size=self.config.max_response_size,
            timeout=self.config.timeout,
        )
        result = FetchResult.from_retrieved(location, retrieved, now, checks=self.checks)
        if self.config.transparency and result.kept:
            result = await self._check_log(location, result, retrieved.connection)
        self._say(
            f"GET {result.url}: {retrieved.status}, {len(result.kept)} kept, "
            f"{len(result.discarded)} discarded"
        )
        self.cache.put(result)
        return result

    async def _check_log(
        self, location: Location, result: FetchResult, connection: HTTP11Connection | None
    ) -> FetchResult:
        """Keep only the certificates the Store's transparency log proves (issue 14).

        A 404 on ``/log/vkey`` is remembered on the connection it came on for
        :data:`NO_LOG_MEMO` seconds, whatever the cache TTL: the same verified server
        answered the GET on that connection, and it could answer 404 again anyway; a
        pinned domain never consults it (docs/transparency.md).
        """
        answered_on: list[HTTP11Connection] = []
        client = self._log_client(location, answered_on)
        domain = location.domain
        pinned = client.pins.load(domain) is not None
        if not pinned and self._no_log_until(domain) > self._cache_clock():
            self._say(f"{domain} publishes no transparency log (cached)")
            return result
        if not pinned and connection is not None and connection.recalls(NO_LOG, NO_LOG_MEMO):
            self._say(f"{domain} publishes no transparency log (said on this connection)")
            return result
        if not await client.publishes_log():
            if client.answered_404:  # an error or an odd answer is not remembered
                self._remember_no_log(domain)
                for answering in answered_on[-1:]:
                    answering.remember(NO_LOG)
            self._say(f"{domain} publishes no transparency log")
            return result
        ders = [certificate_der(c) for c in result.kept]
        kept, dropped = await client.verify_certificates(str(location.aor), ders)
        still = set(kept)
        self._say(f"transparency log: {len(kept)} proven, {len(dropped)} not")
        return replace(
            result,
            kept=tuple(c for c in result.kept if certificate_der(c) in still),
            discarded=result.discarded
            + tuple(
                Discarded(hashlib.sha256(der).hexdigest(), DiscardReason.NOT_IN_LOG, why)
                for der, why in dropped
            ),
        )

    def _no_log_path(self) -> Path | None:
        if not (self.cache.enabled and self.config.persist_cache):
            return None
        return self.home.cache_directory / NO_LOG_FILE

    def _no_log_until(self, domain: str) -> float:
        """Until when ``domain`` is known to publish no log (0: not known)."""
        if domain in self._no_log:
            return self._no_log[domain]
        path = self._no_log_path()
        if path is None:
            return 0.0
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            until = data.get(domain, 0.0) if isinstance(data, dict) else 0.0
        except (OSError, ValueError):
            return 0.0  # a cache: unreadable is unknown, and the next fetch asks again
        return float(until) if isinstance(until, (int, float)) else 0.0

    def _remember_no_log(self, domain: str) -> None:
        """Cache a 404 on ``/log/vkey`` for the cache lifetime (a cache TTL of 0: not at all)."""
        if not self.cache.enabled:
            return
        now = self._cache_clock()
        until = now + self.config.cache_ttl
        self._no_log[domain] = until
        path = self._no_log_path()
        if path is None:
            return
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                data = {}
        except (OSError, ValueError):
            data = {}
        data = {d: t for d, t in data.items() if isinstance(t, (int, float)) and t > now}
        data[domain] = until
        tmp = path.with_name(path.name + ".tmp")
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data, sort_keys=True), encoding="utf-8")
            os.replace(tmp, path)
        except OSError:
            pass  # a cache: the next process asks again

    def _log_client(
        self, location: Location, answered_on: list[HTTP11Connection] | None = None
    ) -> LogClient:
        return LogClient(
            location.domain,
            http_getter(
                self._getter(),
                location.domain,
                self.config.max_response_size,
                timeout=self.config.timeout,
                answered_on=answered_on,
            ),
            self._pins,
            witnesses=self.config.log_witnesses,
            quorum=self.config.log_quorum,
        )

    async def log_client(
        self, aor: AOR | str, *, witnesses: Sequence[Verifier] = (), quorum: int = 0
    ) -> LogClient:
        """The transparency log of ``aor``'s domain, read over this UA's strict TLS (issue 14).

        Pins live in the home (``tlog-pins.json``); see :mod:`sipcert.client.tlog`.
        """
        location = await self._route(_aor(aor))
        client = self._log_client(location)
        if witnesses or quorum:
            client = LogClient(
                client.domain, client.get, client.pins, witnesses=witnesses, quorum=quorum
            )
        return client

    async def certificate_in_signaling(
        self, aor: AOR | str, certificate: x509.Certificate
    ) -> SignaledCheck:
        """A certificate for ``aor`` arrived in SIP signaling (draft §5): is it really there?"""

        async def refresh(target: AOR) -> FetchResult:
            return await self.fetch(target, use_cache=False)

        return await self.cache.check_signaled(_aor(aor), certificate, refresh)

    # -- enrollment and lifecycle -----------------------------------------------------------

    async def enroll(
        self,
        aor: AOR | str,
        credentials: Credentials,
        *,
        device: str = DEFAULT_DEVICE,
        validity: timedelta = DEFAULT_VALIDITY,
        key_type: KeyType = KeyType.P256,
        passphrase: bytes | None = None,
        delegated_by: str | None = None,
    ) -> Enrollment:
        """Create a key and self-signed certificate and PUT it with Digest (draft §5.1).

        The home is proved writable before any network request (else :class:`ConfigError`)
        and the new key and certificate are durably saved, as pending, before the PUT. They
        become the device's identity once the Store accepted them; the identity they replace
        is retired (see :meth:`renew`). If saving fails after a successful PUT, the
        certificate just enrolled is revoked again (DELETE by ``certHash``) and the error
        says so: the Store never keeps a certificate whose key is lost.
        ``device`` is also sent as the certificate's label (``Content-Description``),
        which the Store shows on its revocation page and in every GET answer, so a renewal
        keeps it. ``delegated_by`` marks the certificate as an authentication service's
        (draft §6, :func:`sipcert.proto.certs.delegated_by`); a renewal keeps that too.
        """
        parsed = _aor(aor)
        auth = credentials.for_aor(parsed)
        directory = self.home.device_directory(parsed, device)
        self.home.ensure_writable(directory)
        identity = generate_identity(
            parsed,
            now=self._now(),
            key_type=key_type,
            validity=validity,
            delegated_by=delegated_by,
        )
        self.home.stage(parsed, identity, device=device, passphrase=passphrase)
        try:
            location = await self._route(parsed)
            status = await put_certificate(
                self.http, location, certificate_der(identity.certificate), auth, label=device
            )
        except SipCertError as exc:
            # A refusal, or a TLS failure before the request went out: the Store does not
            # hold it. After a connection lost mid-request (or a cancellation, not caught
            # here) it may, so the pending key stays; the next enrollment retires it.
            if not isinstance(exc, TransportError) or isinstance(exc, TLSHandshakeError):
                self.home.discard_pending(parsed, device)
            raise
        self._say(f"PUT {location.url}: {status}")
        try:
            self.home.promote(parsed, device)
        except Exception as exc:
            await self._undo_enrollment(parsed, device, location, auth, identity, exc)
        self.cache.invalidate(parsed)
        return Enrollment(parsed, device, identity.certificate, status, location.url, directory)

    async def _undo_enrollment(
        self,
        aor: AOR,
        device: str,
        location: Location,
        auth: DigestAuth,
        identity: Identity,
        failure: Exception,
    ) -> NoReturn:
        """Revoke the certificate just PUT because it could not be kept here, and say so."""
        if isinstance(failure, SipCertError):
            reason = str(failure)
        else:  # never a library class name in a user message
            why = failure.strerror if isinstance(failure, OSError) else None
            reason = f"saving the new identity failed: {why or 'an unexpected error'}"
        target = cert_hash(identity.certificate)
        self._say(f"saving the new identity failed after the PUT: revoking certHash {target}")
        try:
            await delete_certificates(self.http, location, auth, target)
        except SipCertError as exc:
            pending = self.home.device_directory(aor, device) / "pending"
            raise ConfigError(
                f"{reason}; the certificate just enrolled could not be revoked ({exc}): "
                f"its key is kept in {pending}; revoke certHash {target} yourself"
            ) from failure
        self.home.discard_pending(aor, device)
        raise ConfigError(
            f"{reason}; the certificate just enrolled was revoked at the Store again"
        ) from failure

    async def status(
        self,
        aor: AOR | str,
        *,
        device: str = DEFAULT_DEVICE,
        window: timedelta = DEFAULT_RENEW_WINDOW,
    ) -> Status:
        """Fetch our own AOR and check our certificate is there and identical (draft §5.1)."""
        parsed = _aor(aor)
        try:
            ours: x509.Certificate | None = self.home.certificate(parsed, device)
        except NotFoundError:
            ours = None
        fetched = await self.fetch(parsed, use_cache=False)
        served = {sha256_fingerprint(c) for c in fetched.kept}
        known = self.home.known_fingerprints(parsed)
        unknown = tuple(c for c in fetched.kept if sha256_fingerprint(c) not in known)
        warnings: list[str] = []
        in_store = False
        expires_in: timedelta | None = None
        if ours is None:
            warnings.append(f"NOT ENROLLED: device {device!r} has no certificate for {parsed}")
        else:
            fingerprint = sha256_fingerprint(ours)
            in_store = fingerprint in served
            expires_in = ours.not_valid_after_utc - self._now()
            if not in_store:
                reason = next(
                    (
                        f" ({d.reason}: {d.detail})"
                        for d in fetched.discarded
                        if d.sha256 == fingerprint
                    ),
                    "",
                )
                warnings.append(
                    f"NOT ENROLLED: the Store does not serve this device's certificate "
                    f"{fingerprint[:16]}...{reason}; enroll again"
                )
            elif expires_in <= window:
                warnings.append(f"certificate expires in {max(expires_in.days, 0)} days: renew it")
        if unknown:
            listed = ", ".join(sha256_fingerprint(c)[:16] + "..." for c in unknown)
            warnings.append(
                f"the Store holds {len(unknown)} certificate(s) for {parsed} that this home "
                f"does not know: {listed} -- revoke them if they are not your devices"
            )
        return Status(parsed, device, ours, in_store, unknown, fetched, expires_in, tuple(warnings))

    async def renew(
        self,
        aor: AOR | str,
        credentials: Credentials,
        *,
        device: str = DEFAULT_DEVICE,
        window: timedelta = DEFAULT_RENEW_WINDOW,
        validity: timedelta = DEFAULT_VALIDITY,
        passphrase: bytes | None = None,
        force: bool = False,
        key_type: KeyType | None = None,
    ) -> Renewal:
        """Enroll a fresh certificate when ours expires within ``window``, then revoke the
        old one once the new one is stored (draft §5: "enroll a new certificate before the
        old one expires"). The new key has the old one's type unless ``key_type`` says."""
        parsed = _aor(aor)
        old = self.home.certificate(parsed, device)
        remaining = old.not_valid_after_utc - self._now()
        if remaining > window and not force:
            return Renewal(
                parsed,
                False,
                f"certificate expires in {remaining.days} days, outside the "
                f"{window.days}-day renewal window",
                old,
                None,
                False,
            )
        new = await self.enroll(
            parsed,
            credentials,
            device=device,
            validity=validity,
            key_type=KeyType.of(old) if key_type is None else key_type,
            passphrase=passphrase,
            delegated_by=delegation_of(old),
        )
        try:
            await delete_certificates(
                self.http, await self._route(parsed), credentials.for_aor(parsed), cert_hash(old)
            )
        except NotFoundError:
            pass  # already gone (expired and discarded by the Store)
        except SipCertError as exc:
            return Renewal(parsed, True, "renewed", old, new, False, str(exc))
        self.home.forget_retired(parsed, sha256_fingerprint(old), device)
        self.cache.invalidate(parsed)
        return Renewal(parsed, True, "renewed", old, new, True)

    async def revoke(
        self,
        aor: AOR | str,
        credentials: Credentials,
        *,
        sha256: str | None = None,
        cert: str | None = None,
        everything: bool = False,
        device: str = DEFAULT_DEVICE,
    ) -> Revocation:
        """DELETE with Digest (draft §5): one certificate by ``certHash``, or all of them.

        Without ``cert``, ``sha256`` and ``everything`` this device's current certificate is
        revoked. ``cert`` names one by its RFC 4387 certHash or its SHA-256 fingerprint
        (:func:`parse_cert_reference`; ``sha256`` is the older spelling of the latter); it is
        looked up in the home and then at the Store.
        """
        parsed = _aor(aor)
        if sha256 is not None and cert is not None:
            raise ConfigError("give the certificate once: cert or sha256, not both")
        wanted = parse_cert_reference(cert if cert is not None else sha256)
        if wanted is not None and everything:
            raise ConfigError("give a certificate or 'all', not both")
        auth = credentials.for_aor(parsed)
        if everything:
            await delete_certificates(self.http, await self._route(parsed), auth)
            self.cache.invalidate(parsed)
            return Revocation(parsed, (), (), True)
        target = await self._find(parsed, wanted, device)
        location = await self._route(parsed)
        await delete_certificates(self.http, location, auth, cert_hash(target))
        fingerprint = sha256_fingerprint(target)
        for name in self.home.devices(parsed):
            self.home.forget_retired(parsed, fingerprint, name)
        self.cache.invalidate(parsed)
        return Revocation(parsed, (cert_hash(target),), (fingerprint,), False)

    async def _find(
        self, aor: AOR, wanted: tuple[str, str] | None, device: str
    ) -> x509.Certificate:
        if wanted is None:
            return self.home.certificate(aor, device)
        kind, value = wanted
        identify = sha256_fingerprint if kind == "sha256" else cert_hash
        candidates: list[x509.Certificate] = []
        for name in self.home.devices(aor):
            candidates.append(self.home.certificate(aor, name))
            candidates.extend(self.home.retired(aor, name))
        for certificate in candidates:
            if identify(certificate) == value:
                return certificate
        fetched = await self.fetch(aor, use_cache=False)
        for certificate in fetched.kept:
            if identify(certificate) == value:
                return certificate
        shown = "SHA-256" if kind == "sha256" else "certHash"
        raise NotFoundError(f"no certificate with {shown} {value} for {aor} here or at the Store")


def parse_cert_reference(text: str | None) -> tuple[str, str] | None:
    """``("certHash", h)`` or ``("sha256", hex)`` for a certificate named by the user.

    Two spellings name one certificate: the RFC 4387 §2.1 certHash the Store speaks
    (27 base64 characters, no ``=``) and our SHA-256 fingerprint (64 hex digits, any case,
    ``:`` separators allowed). Anything else is malformed input (:class:`InputError`, exit
    4), said before any prompt or network traffic rather than as "not found" after it.
    """
    if text is None:
        return None
    hex_form = text.replace(":", "").lower()
    if len(hex_form) == 64 and all(c in "0123456789abcdef" for c in hex_form):
        return ("sha256", hex_form)
    if len(text) == CERT_HASH_LENGTH or text.endswith("="):
        return ("certHash", parse_cert_hash(text))
    raise InputError(
        f"{text[:80]!r} names no certificate: give its certHash (27 base64 characters, "
        "RFC 4387 §2.1) or its SHA-256 fingerprint (64 hex digits)"
    )


class UA:
    """Synchronous facade over :class:`AsyncUA` for code without an event loop."""

    def __init__(self, config: ClientConfig | None = None, **options: Any) -> None:
        self._runner = asyncio.Runner()

        async def build() -> AsyncUA:
            return AsyncUA(config, **options)

        try:
            self._ua = self._runner.run(build())
        except BaseException:
            self._runner.close()
            raise

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self._runner.run(coroutine)

    @property
    def api(self) -> AsyncUA:
        """The underlying async UA (its cache, home and events)."""
        return self._ua

    def __enter__(self) -> UA:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._run(self._ua.aclose())
        self._runner.close()

    def locate(self, aor: AOR | str) -> Location:
        return self._run(self._ua.locate(aor))

    def fetch(self, aor: AOR | str, *, use_cache: bool = True) -> FetchResult:
        return self._run(self._ua.fetch(aor, use_cache=use_cache))

    def fetch_url(self, aor: AOR | str, url: str) -> FetchResult:
        return self._run(self._ua.fetch_url(aor, url))

    def certificate_in_signaling(
        self, aor: AOR | str, certificate: x509.Certificate
    ) -> SignaledCheck:
        return self._run(self._ua.certificate_in_signaling(aor, certificate))

    def enroll(self, aor: AOR | str, credentials: Credentials, **options: Any) -> Enrollment:
        return self._run(self._ua.enroll(aor, credentials, **options))

    def status(self, aor: AOR | str, **options: Any) -> Status:
        return self._run(self._ua.status(aor, **options))

    def renew(self, aor: AOR | str, credentials: Credentials, **options: Any) -> Renewal:
        return self._run(self._ua.renew(aor, credentials, **options))

    def revoke(self, aor: AOR | str, credentials: Credentials, **options: Any) -> Revocation:
        return self._run(self._ua.revoke(aor, credentials, **options))
