"""``sipcert ua`` and ``sipcert message send``: protected SIP from the command line.

Argument parsing and output only; the work is :class:`sipcert.sip.secure.SecureUA`. The
common options (``--dns``, ``--store``, ``--ca-file``, ``--home``, ``--json``, ...) and the
password rules (``--password-file``, else standard input when it is not a terminal, else a
prompt; never a flag) are those of ``sipcert enroll`` (:mod:`sipcert.cli.ua`).

``--json`` prints one JSON object per line and per event (``certificate``, ``registered``,
``message``, ``invite``, ``bye``, ``unregistered``, ``sent``, ``error``, ``alarm``), so a
program can follow a running UA line by line.

``sipcert ua`` also monitors its own AOR in the Store's transparency log every
``--log-monitor SECONDS`` (default 60, 0: off; issue 14, docs/transparency.md): the check of
``sipcert monitor``. An alarm is one ``ALARM ...`` line on stderr (and an ``alarm`` event with
``--json``); the UA keeps running.

Exit codes: 0 success (``message send``: a 2xx), 1 a negative SIP answer (``message send``:
any other final status, e.g. 493 when no device of the callee could decrypt), 6 the
registrar refused the credentials, and the error classes' codes otherwise (README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import signal
import sys
from collections.abc import Coroutine, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from sipcert.cli.ua import (
    _common,
    _config,
    _credential_options,
    _credentials,
    _passphrase,
    _window_option,
    log_options,
    read_password,
)
from sipcert.client.locate import make_resolver
from sipcert.client.ua import AsyncUA, Credentials
from sipcert.errors import (
    AuthenticationError,
    ConfigError,
    ForkError,
    InputError,
    LocationError,
    NotFoundError,
    SipCertError,
    TransportError,
)
from sipcert.proto.aor import AOR, parse_aor
from sipcert.proto.certs import sha256_fingerprint
from sipcert.proto.sip import Response, parse_uri
from sipcert.sip.secure import Received, SecureUA, Sent, StartupCheck, ensure_enrolled
from sipcert.sip.transport import (
    Hop,
    Transport,
    cancel_and_wait,
    client_tls_context,
    server_tls_context,
)
from sipcert.sip.ua import Call, UserAgent

__all__ = ["parse_proxy", "register"]

#: Re-register when this share of the granted expiry has passed (RFC 3261 §10.2.4).
_REFRESH_SHARE = 0.8
#: Seconds without an answer before each "still trying" line: over UDP a dead proxy is only
#: given up after Timer F, 64*T1 = 32 s (RFC 3261 §17.1.2.2), far too long to stay silent.
PROGRESS_EVERY = 3.0

T = TypeVar("T")


class StoppedError(SipCertError):
    """SIGINT or SIGTERM arrived before the proxy answered (exit 130, as for Ctrl-C)."""

    exit_code = 130


def register(commands: Any) -> None:
    """Add ``ua`` and ``message send``."""
    common = _common()

    parser = commands.add_parser(
        "ua",
        help="run a SIP UA that verifies and answers protected MESSAGE and INVITE (draft §1)",
        description=(
            "Register AOR at the proxy (without --proxy: at the registrar DNS names for its "
            "domain, RFC 3263), keep its certificate enrolled (draft §5.1), print every "
            "received MESSAGE with its verification outcome and answer INVITEs with a protected "
            "SDP, until SIGINT or SIGTERM; then unregister."
        ),
        parents=[common],
        allow_abbrev=False,
    )
    parser.set_defaults(run=_ua, json_events=True)
    parser.add_argument("aor")
    _sip_options(parser)
    _credential_options(parser, key=True)
    _window_option(parser, "renew the certificate when it expires within DAYS (draft §5)")
    parser.add_argument("--expires", type=int, default=300, help="registration expiry (seconds)")
    parser.add_argument(
        "--tls-certificate",
        metavar="PEM",
        help="certificate chain of the TLS listener (with a transport=tls proxy; it should "
        "name the --listen host as a DNS SubjectAltName, RFC 5922)",
    )
    parser.add_argument("--tls-key", metavar="PEM", help="private key of --tls-certificate")
    parser.add_argument(
        "--keepalive",
        type=float,
        default=95.0,
        metavar="SECONDS",
        help="CRLF keep-alive interval on a TCP/TLS flow to the proxy; 0 turns it off "
        "(RFC 5626 §4.4.1, default 95)",
    )
    parser.add_argument(
        "--incomplete-timeout",
        type=float,
        default=32.0,
        metavar="SECONDS",
        help="close a TCP/TLS connection whose message stays incomplete this long (default 32)",
    )
    log_options(parser)
    parser.add_argument(
        "--log-monitor",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="check the Store's transparency log for enrollments of AOR that are not this "
        "home's devices every SECONDS, when it publishes one; 0 turns it off (default 60)",
    )
    parser.add_argument(
        "--accept-unverified",
        action="store_true",
        help="answer INVITEs whose signer is not confirmed by its Store (default: 603)",
    )

    message = commands.add_parser(
        "message", help="send SIP MESSAGEs", description="Send SIP MESSAGEs (RFC 3428)."
    )
    actions = message.add_subparsers(dest="message_command", metavar="ACTION", required=True)
    send = actions.add_parser(
        "send",
        help="send one signed and encrypted MESSAGE (draft §4.4, RFC 3261 §23)",
        description=(
            "Fetch every certificate of TO-AOR, sign TEXT with this device's key, encrypt it "
            "for all of them and send it as one MESSAGE through the proxy (without --proxy: to "
            "the server DNS names for TO-AOR's domain, RFC 3263). No REGISTER: the proxy "
            "authenticates the MESSAGE itself (407)."
        ),
        parents=[common],
        allow_abbrev=False,
    )
    send.set_defaults(run=_send, json_events=True)
    send.add_argument("from_aor", metavar="FROM-AOR")
    send.add_argument("to_aor", metavar="TO-AOR")
    send.add_argument("--text", required=True, help="the message text (UTF-8)")
    _sip_options(send)
    _credential_options(send, key=False, existing_key=True)
    log_options(send)


def _sip_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("SIP")
    group.add_argument(
        "--proxy",
        metavar="URI",
        help="outbound proxy and registrar, sip:HOST[:PORT][;transport=udp|tcp|tls]; without "
        "it each request goes to the next hop RFC 3263 locates for its domain (NAPTR, SRV, "
        "A/AAAA, with failover), asking --dns",
    )
    group.add_argument(
        "--listen",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="local address for SIP (default 127.0.0.1; it is also the Contact)",
    )


def _located(work: Coroutine[Any, Any, T], domain: str) -> Coroutine[Any, Any, T]:
    """``work``, with a hint added when no next hop was found for ``domain`` (RFC 3263)."""

    async def run() -> T:
        try:
            return await work
        except LocationError as error:
            raise LocationError(
                f"{error} (give --proxy URI, or --dns a server that knows {domain})"
            ) from error

    return run()


def _next_hop_label(proxy: Hop | None, domain: str) -> str:
    if proxy is not None:
        return f"{proxy.host}:{proxy.port}"
    return f"the next hop of {domain} (RFC 3263)"


def parse_proxy(text: str, aor: AOR) -> Hop:
    """``sip:HOST[:PORT][;transport=...]`` to a hop; TLS verifies HOST, or the AOR's domain
    when HOST is an address (RFC 5922 §4: the domain the UA meant to reach)."""
    try:
        uri = parse_uri(text if ":" in text.partition(";")[0] else f"sip:{text}")
    except InputError as exc:
        raise ConfigError(f"--proxy {text!r}: {exc}") from exc
    if uri.user is not None:
        raise ConfigError(f"--proxy {text!r} names a user; give sip:HOST[:PORT][;transport=...]")
    host = uri.host.strip("[]")
    try:
        ipaddress.ip_address(host)
        domain = aor.host
    except ValueError:
        domain = host
    return Hop.from_uri(uri, domain=domain)


# -- output ----------------------------------------------------------------------------------


class _Printer:
    """One line per event: JSON with ``--json``, else a short human form."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def emit(self, event: str, line: str, /, **fields: Any) -> None:
        if self.as_json:
            print(json.dumps({"event": event, **fields}), flush=True)
        else:
            print(line, flush=True)


def _received_fields(received: Received) -> dict[str, Any]:
    outcome = received.outcome
    fields: dict[str, Any] = {
        "from": str(outcome.sender),
        "device": received.device,
        "verified": outcome.verified,
        "outcome": str(outcome.reason),
        "detail": outcome.detail,
        "status": received.status,
        "call_id": received.message.call_id,
        "signer": outcome.signer_sha256,
        # The authentication service that holds the signer's key (draft §6), or null.
        "delegated_by": outcome.delegated_by,
        "reference": outcome.reference.url if outcome.reference is not None else None,
    }
    if received.check is not None:
        fields["store_check"] = {
            "cached": received.check.cached,
            "in_store": received.check.in_store,
        }
    if received.kind == "message":
        fields["text"] = outcome.text
    elif outcome.content is not None:
        fields["sdp"] = outcome.content.body.decode("utf-8", "replace")
    return fields


def _describe(received: Received) -> str:
    label = {"message": "MESSAGE", "invite": "INVITE", "answer": "answer"}[received.kind]
    line = f"{label} from {received.sender}: {received.outcome} -> {received.status}"
    if received.kind == "message" and received.text is not None:
        line += "\n  " + received.text.replace("\n", "\n  ")
    return line


def _startup_fields(check: StartupCheck, warnings: Sequence[str]) -> dict[str, Any]:
    return {
        "aor": str(check.aor),
        "device": check.device,
        "action": check.action,
        "sha256": sha256_fingerprint(check.certificate),
        "not_after": check.certificate.not_valid_after_utc.isoformat(),
        "warnings": list(warnings),
    }


def _registered(printer: _Printer, event: str, response: Response, contact: str) -> None:
    printer.emit(
        event,
        f"{event} {contact}: {response.status} {response.reason}",
        status=response.status,
        reason=response.reason,
        contact=contact,
    )


class _Waiting:
    """Await one SIP transaction, saying every few seconds that it is still unanswered."""

    def __init__(self, printer: _Printer, doing: str, proxy: str) -> None:
        self.printer = printer
        self.doing = doing
        self.proxy = proxy

    async def until(self, work: Coroutine[Any, Any, T], stop: asyncio.Event) -> T:
        """The result of ``work``; :class:`StoppedError` when ``stop`` is set first."""
        task = asyncio.ensure_future(work)
        stopped = asyncio.ensure_future(stop.wait())
        waited = 0.0
        try:
            while True:
                done, _ = await asyncio.wait(
                    {task, stopped}, timeout=PROGRESS_EVERY, return_when=asyncio.FIRST_COMPLETED
                )
                if task in done:
                    return task.result()
                if stopped in done:
                    raise StoppedError(f"stopped while trying to {self.doing} {self.proxy}")
                waited += PROGRESS_EVERY
                self.printer.emit(
                    "progress",
                    f"still trying to {self.doing} {self.proxy} (no answer for {waited:.0f} s)",
                    proxy=self.proxy,
                    waiting=waited,
                )
        finally:
            await cancel_and_wait([task, stopped])


def _check_registration(response: Response) -> None:
    if response.status in (401, 403, 407):
        raise AuthenticationError(f"the registrar refused the credentials: {response.status}")
    if not 200 <= response.status < 300:
        raise TransportError(f"registration failed: {response.status} {response.reason}")


# -- sipcert ua ------------------------------------------------------------------------------


def _ua(args: argparse.Namespace) -> int:
    aor = parse_aor(args.aor)
    proxy = parse_proxy(args.proxy, aor) if args.proxy is not None else None
    if (
        proxy is not None
        and proxy.transport is Transport.TLS
        and not (args.tls_certificate and args.tls_key)
    ):
        raise ConfigError(
            "sipcert ua receives requests, and a TLS listener needs a certificate of its own: "
            "give --tls-certificate and --tls-key (or use transport=tcp or udp)"
        )
    _config(args)  # a usage error (e.g. a log quorum above the witnesses) before any prompt
    credentials = _credentials(args, aor)
    passphrase = _passphrase(args)
    printer = _Printer(args.json)
    return asyncio.run(_run_ua(args, aor, proxy, credentials, passphrase, printer))


async def _run_ua(
    args: argparse.Namespace,
    aor: AOR,
    proxy: Hop | None,
    credentials: Credentials,
    passphrase: bytes | None,
    printer: _Printer,
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await _serve(args, aor, proxy, credentials, passphrase, printer, stop)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return 0


async def _serve(
    args: argparse.Namespace,
    aor: AOR,
    proxy: Hop | None,
    credentials: Credentials,
    passphrase: bytes | None,
    printer: _Printer,
    stop: asyncio.Event,
) -> None:
    """Start-up check, register, serve until ``stop``, unregister."""
    async with AsyncUA(_config(args)) as client:
        check = await ensure_enrolled(
            client,
            aor,
            credentials,
            device=args.device,
            window=timedelta(days=args.window),
            validity=timedelta(days=args.validity),
            passphrase=passphrase,
        )
        status = check.status
        if check.action != "ok":  # the warnings that led to enrolling no longer hold
            status = await client.status(
                aor, device=args.device, window=timedelta(days=args.window)
            )
        printer.emit(
            "certificate",
            f"certificate {check.action}: {sha256_fingerprint(check.certificate)} "
            f"(not after {check.certificate.not_valid_after_utc.isoformat()})",
            **_startup_fields(check, status.warnings),
        )
        if not printer.as_json:
            for warning in status.warnings:
                print(f"sipcert: warning: {warning}", file=sys.stderr, flush=True)

        async def on_received(received: Received) -> None:
            printer.emit(received.kind, _describe(received), **_received_fields(received))

        # Without a proxy the UA listens on UDP (RFC 3261 §18: every UA does) and reaches
        # whatever hop DNS names; TLS there verifies the domain (RFC 5922 §4).
        tls = proxy is not None and proxy.transport is Transport.TLS
        ua = UserAgent(
            aor,
            password=credentials.password,
            username=credentials.username,
            proxy=proxy,
            transport=proxy.transport if proxy is not None else Transport.UDP,
            host=args.listen,
            incomplete_timeout=args.incomplete_timeout,
            keepalive=args.keepalive or None,
            resolver=make_resolver(args.dns, timeout=args.timeout) if proxy is None else None,
            tls_context=client_tls_context(args.ca_file) if tls or proxy is None else None,
            server_tls_context=(
                server_tls_context(args.tls_certificate, args.tls_key) if tls else None
            ),
        )
        secure = SecureUA(
            ua,
            client,
            device=args.device,
            passphrase=passphrase,
            on_received=on_received,
            accept_unverified=args.accept_unverified,
        )
        async with secure:
            where = args.proxy or _next_hop_label(None, aor.host)
            registering = _Waiting(printer, "register with", where)
            response = await registering.until(
                _located(secure.register(args.expires), aor.host), stop
            )
            _check_registration(response)  # a refusal is the error, never "registered"
            _registered(printer, "registered", response, ua.contact)
            watchers: set[asyncio.Task[None]] = set()
            calls = asyncio.create_task(_watch_calls(ua, printer, watchers))
            if args.log_monitor > 0:
                monitor = _monitor_log(client, aor, args.log_monitor, printer, stop)
                watchers.add(asyncio.create_task(monitor))
            try:
                await _refresh_until(stop, secure, args.expires, response)
            finally:
                await cancel_and_wait([calls, *watchers])
            stop.clear()  # a second signal abandons the unregistration
            unregistering = _Waiting(printer, "unregister from", where)
            response = await unregistering.until(secure.unregister(), stop)
            _registered(printer, "unregistered", response, ua.contact)


async def _monitor_log(
    client: AsyncUA, aor: AOR, every: float, printer: _Printer, stop: asyncio.Event
) -> None:
    """``sipcert monitor``'s check of ``aor`` every ``every`` seconds, until ``stop``.

    An alarm (a foreign enrollment, or a split view) is one line on stderr and an ``alarm``
    event with ``--json``; any other failure is a warning, and the next round tries again.
    """
    config = client.config
    while True:
        try:
            log = await client.log_client(
                aor, witnesses=config.log_witnesses, quorum=config.log_quorum
            )
            if await log.publishes_log():
                own = sorted(client.home.known_fingerprints(aor))
                for alarm in await log.monitor(str(aor), own):
                    _alarm(
                        printer,
                        alarm.line(str(aor)),
                        aor,
                        index=alarm.index,
                        sha256=alarm.cert_sha256,
                        sequenced_ms=alarm.sequenced_ms,
                    )
        except ForkError as exc:
            _alarm(printer, f"ALARM {aor}: {exc}", aor, fork=True)
        except SipCertError as exc:
            print(f"sipcert: warning: log monitor: {exc}", file=sys.stderr, flush=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(every):
                await stop.wait()
            return


def _alarm(printer: _Printer, line: str, aor: AOR, **fields: Any) -> None:
    print(line, file=sys.stderr, flush=True)
    if printer.as_json:
        printer.emit("alarm", line, aor=str(aor), **fields)


def _granted(response: Response, asked: int) -> int:
    """The expiry the registrar granted (Expires header), else what we asked."""
    value = response.get("Expires")
    return int(value) if value is not None and value.isdigit() else asked


async def _refresh_until(
    stop: asyncio.Event, secure: SecureUA, expires: int, response: Response
) -> None:
    """Wait for ``stop``, re-registering before the binding expires (RFC 3261 §10.2.4)."""
    while True:
        interval = max(1.0, _granted(response, expires) * _REFRESH_SHARE)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                await stop.wait()
            return
        response = await secure.register(expires)
        _check_registration(response)


async def _watch_calls(ua: UserAgent, printer: _Printer, watchers: set[asyncio.Task[None]]) -> None:
    """Print ``bye`` when a call this UA answered ends."""

    async def watch(call: Call) -> None:
        await call.ended.wait()
        printer.emit(
            "bye",
            f"call {call.invite.call_id} ended ({call.ended_by})",
            call_id=call.invite.call_id,
            ended_by=call.ended_by,
        )

    while True:
        call = await ua.incoming_calls.get()
        task = asyncio.create_task(watch(call))
        watchers.add(task)
        task.add_done_callback(watchers.discard)


# -- sipcert message send --------------------------------------------------------------------


def _send(args: argparse.Namespace) -> int:
    sender = parse_aor(args.from_aor)
    target = parse_aor(args.to_aor)
    proxy = parse_proxy(args.proxy, sender) if args.proxy is not None else None
    config = _config(args)  # usage errors before any prompt
    password = read_password(args, sender)
    passphrase = _passphrase(args)
    printer = _Printer(args.json)

    async def main() -> Sent:
        async with AsyncUA(config) as client:
            if not client.home.has_identity(sender, args.device):
                raise NotFoundError(
                    f"no certificate for {sender} (device {args.device!r}) in {client.home.root}: "
                    f"run `sipcert enroll {sender}` first"
                )
            tls = proxy is None or proxy.transport is Transport.TLS
            ua = UserAgent(
                sender,
                password=password,
                username=args.username,
                proxy=proxy,
                transport=proxy.transport if proxy is not None else Transport.UDP,
                host=args.listen,
                resolver=make_resolver(args.dns, timeout=args.timeout) if proxy is None else None,
                tls_context=client_tls_context(args.ca_file) if tls else None,
            )
            async with SecureUA(ua, client, device=args.device, passphrase=passphrase) as secure:
                where = args.proxy or _next_hop_label(None, target.host)
                sending = _Waiting(printer, "send the MESSAGE through", where)
                work = _located(secure.send_message(target, args.text), target.host)
                return await sending.until(work, asyncio.Event())

    sent = asyncio.run(main())
    if sent.status in (401, 403, 407):
        # Kamailio answers a wrong password with 403 (contrib/kamailio/kamailio.cfg): the same
        # refusal as a REGISTER's in `sipcert ua`, so the same exit code (6). The answer came
        # through our proxy, not necessarily from the callee: name the proxy.
        reason = sent.response.reason if sent.response is not None else ""
        via = (
            f"the proxy {proxy.host}:{proxy.port} ({proxy.transport})"
            if proxy is not None
            else _next_hop_label(None, target.host)
        )
        raise AuthenticationError(
            f"{via} answered the MESSAGE to "
            f"{target} with {sent.status} {reason}: wrong SIP credentials for {sender}, "
            "or not allowed to send it"
        )
    code = 0 if sent.ok else 1
    _print_sent(printer, sent, sender, proxy, code)
    return code


def _print_sent(printer: _Printer, sent: Sent, sender: AOR, proxy: Hop | None, code: int) -> None:
    response = sent.response
    hint = (
        " -- no device of the callee could decrypt it (493, RFC 3261 §21.4.27)"
        if sent.undecipherable
        else ""
    )
    reason = f" {response.reason}" if response is not None else ""
    printer.emit(
        "sent",
        f"MESSAGE {sender} -> {sent.to}: {sent.status}{reason} through "
        f"{_next_hop_label(proxy, sent.to.host)} "
        f"(encrypted for {len(sent.recipients)} certificate(s)){hint}",
        **{
            "ok": code == 0,
            "exit_code": code,
            "from": str(sender),
            "to": str(sent.to),
            "status": sent.status,
            "reason": response.reason if response is not None else "",
            "recipients": [sha256_fingerprint(c) for c in sent.recipients],
            "reference": sent.reference_url,
            "retried": sent.retried,
        },
    )
