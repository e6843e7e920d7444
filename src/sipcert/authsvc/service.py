"""The authentication service: a stateless SIP proxy element next to Kamailio (draft §6).

Kamailio sends it the initial MESSAGE and INVITE requests of delegating subscribers; it
decides with :func:`sipcert.proto.delegation.decide`, then

* **protect** (the sender delegates and asked with a placeholder): fetch every certificate of
  the callee (draft §4.4), sign with the subscriber's delegated key and encrypt for all of
  them (:func:`sipcert.proto.sipsec.protect`, the body a ``sipcert ua`` sends);
* **open** (the callee delegates, the body is S/MIME): decrypt with the callee's delegated
  key, verify, and ask the caller's Store whether the signer is enrolled (draft step 5);
  forward the plain content with a ``Sipcert-Verification`` header;
* **annotate**, **forward** or **refuse** otherwise.

It adds its own Via, sends the request back to the proxy (``config.proxy``) and passes the
responses back the way the request came (RFC 3261 §16.11 with a table of its own branches,
so a response goes back over the connection the request arrived on). Keys live in the key
folder, one Home device ``authsvc`` per subscriber; :meth:`AuthService.sync` enrolls and
renews them, :meth:`AuthService.revoke` ends a delegation.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sipcert.authsvc.config import AuthServiceConfig
from sipcert.client.ua import AsyncUA, Revocation
from sipcert.errors import InputError, NotFoundError, SipCertError
from sipcert.proto.aor import AOR
from sipcert.proto.certs import Identity, delegated_by, sha256_fingerprint
from sipcert.proto.cms import choose_algorithms
from sipcert.proto.delegation import (
    VERIFICATION_HEADER,
    Action,
    Decision,
    Verification,
    decide,
    verification_of,
)
from sipcert.proto.logsafe import log_safe
from sipcert.proto.mime import MimePart
from sipcert.proto.sip import (
    BRANCH_MAGIC,
    Request,
    Response,
    body_part,
    make_response,
    new_tag,
    split_header_list,
    with_body,
)
from sipcert.proto.sipsec import Outcome, Reason, open_protected, protect, response_status
from sipcert.sip.transport import Origin, SipTransport, cancel_and_wait

__all__ = ["DEVICE", "AuthService", "Handled", "SyncResult"]

log = logging.getLogger(__name__)

#: The Home device name of every delegated identity (also the Store label, docs/delegated.md).
DEVICE = "authsvc"
#: How long a branch is remembered after its final response (RFC 3261 Timer J, 64*T1).
_LINGER = 32.0


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Handled:
    """What the service did with one request (for logs and tests)."""

    method: str
    call_id: str
    decision: Decision
    #: The status we answered ourselves (a refusal), 0 when the request was forwarded.
    status: int = 0
    outcome: Outcome | None = None
    verification: Verification | None = None


@dataclass(frozen=True)
class SyncResult:
    """The start-up check of one delegating subscriber (draft §5.1)."""

    aor: AOR
    action: Literal["ok", "enrolled", "renewed"]
    sha256: str


@dataclass
class _Pending:
    origin: Origin
    method: str
    #: The delegating caller of an INVITE we protected: its 2xx answer is opened for it.
    answer_for: AOR | None = None
    #: The delegating callee of an INVITE we opened: its plain 2xx answer is protected as it.
    answer_as: AOR | None = None


class AuthService:
    """The SIP element; ``client`` is the Store client whose home is the key folder."""

    def __init__(
        self,
        config: AuthServiceConfig,
        client: AsyncUA,
        *,
        now: Callable[[], datetime] = _now,
    ) -> None:
        self.config = config
        self.client = client
        self._now = now
        self.transport = SipTransport(self._on_received)
        self._pending: dict[str, _Pending] = {}
        self._busy: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._secret = secrets.token_bytes(16)
        self._algorithms = choose_algorithms(legacy=False)
        #: Every request handled, in order (observability and tests).
        self.handled: asyncio.Queue[Handled] = asyncio.Queue()

    # -- life cycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> AuthService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> tuple[str, int]:
        hop = self.config.listen
        return await self.transport.listen(hop.transport, hop.host, hop.port)

    async def aclose(self) -> None:
        await cancel_and_wait(list(self._tasks))
        await self.transport.aclose()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the delegated certificates (draft §5, §5.1) ------------------------------------------

    def identity(self, aor: AOR) -> Identity:
        return self.client.home.identity(aor, DEVICE)

    async def sync(self) -> list[SyncResult]:
        """Enroll a missing delegated certificate, renew one inside the window (draft §5.1)."""
        results = []
        for subscriber in self.config.subscribers:
            aor = subscriber.aor
            status = await self.client.status(aor, device=DEVICE, window=self.config.renew_window)
            if not status.ok or status.certificate is None:
                enrolled = await self.client.enroll(
                    aor,
                    subscriber.credentials,
                    device=DEVICE,
                    validity=self.config.validity,
                    delegated_by=self.config.name,
                )
                results.append(
                    SyncResult(aor, "enrolled", sha256_fingerprint(enrolled.certificate))
                )
                continue
            renewal = await self.client.renew(
                aor,
                subscriber.credentials,
                device=DEVICE,
                window=self.config.renew_window,
                validity=self.config.validity,
            )
            if renewal.new is not None:
                new = sha256_fingerprint(renewal.new.certificate)
                results.append(SyncResult(aor, "renewed", new))
            else:
                results.append(SyncResult(aor, "ok", sha256_fingerprint(status.certificate)))
        return results

    async def revoke(self, aor: AOR) -> Revocation:
        """End a delegation: DELETE the delegated certificate at the Store, forget the key."""
        revoked = await self.client.revoke(
            aor, self.config.subscriber(aor).credentials, device=DEVICE
        )
        self.client.home.remove(aor, DEVICE)
        return revoked

    # -- SIP ----------------------------------------------------------------------------------

    def _on_received(self, message: Request | Response, origin: Origin) -> None:
        if isinstance(message, Response):
            self._spawn(self._relay_response(message))
        else:
            self._spawn(self._on_request(message, origin))

    def _branch(self, incoming: str) -> str:
        """Our branch for a request: derived from the incoming one, so a retransmission of
        it (or the ACK of a non-2xx, §17.1.1.3) gets the same branch downstream."""
        digest: str = hmac.new(self._secret, incoming.encode(), hashlib.sha256).hexdigest()
        return BRANCH_MAGIC + digest[:32]

    async def _on_request(self, request: Request, origin: Origin) -> None:
        try:
            await self._serve(request, origin)
        except Exception as error:  # every request gets an answer; no traceback to a peer
            log.info(
                "%s %s failed: %s",
                request.method,
                log_safe(request.call_id),
                log_safe(str(error)),
                exc_info=not isinstance(error, SipCertError),
            )
            if request.method != "ACK":
                with contextlib.suppress(SipCertError):
                    await self._refuse(request, origin, 500, "Authentication service error")

    async def _refuse(self, request: Request, origin: Origin, status: int, why: str) -> None:
        reason = {403: "Forbidden", 400: "Bad Request"}.get(status)
        # RFC 3261 §20.43 warn-text is a quoted-string: printable ASCII, no quote, no escape.
        printable = "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in why)
        warning = printable[:200]
        response = make_response(
            request,
            status,
            reason,
            to_tag=new_tag(),
            headers=[("Warning", f'399 {self.config.name} "{warning}"')],
        )
        await self.transport.reply(response, origin)

    async def _serve(self, request: Request, origin: Origin) -> None:
        if origin.host not in self.config.trusted_proxies:
            log.info("refusing %s from untrusted %s", request.method, log_safe(origin.host))
            if request.method != "ACK":
                await self._refuse(request, origin, 403, "not a trusted proxy")
            return
        incoming = request.top_via.branch or ""
        key = f"{incoming}|{request.method}"
        if key in self._busy:
            return  # a retransmission while we are still working on the first copy
        self._busy.add(key)
        try:
            await self._process(request, origin)
        finally:
            self._busy.discard(key)

    async def _process(self, request: Request, origin: Origin) -> None:
        # The trust boundary (RFC 3325 §5): only this service asserts the header.
        request = request.without(VERIFICATION_HEADER)
        body: MimePart | None = None
        problem = ""
        try:
            body = body_part(request)
        except InputError as exc:
            problem = str(exc)
        try:
            sender, callee = request.from_.aor, request.to.aor
        except InputError as exc:  # e.g. a tel: URI: no AOR of ours, nothing to sign or open
            await self._forward(request, origin)
            log.info("forwarding %s untouched: %s", request.method, log_safe(str(exc)))
            return
        decision = decide(
            request.method,
            sender,
            callee,
            body,
            delegates=self.config.delegates,
            fill_url=self.config.fill_url,
            now=self._now(),
            in_dialog=request.to.tag is not None,
            body_problem=problem,
        )
        handled = Handled(request.method, request.call_id, decision)
        if decision.action is Action.REFUSE:
            log.info(
                "refusing %s %s: %s",
                request.method,
                log_safe(request.call_id),
                log_safe(decision.detail),
            )
            await self._refuse(request, origin, decision.status, decision.detail)
            self.handled.put_nowait(
                Handled(request.method, request.call_id, decision, decision.status)
            )
            return
        if decision.action is Action.PROTECT:
            refused = await self._protect(request, decision)
            if isinstance(refused, tuple):
                status, why = refused
                await self._refuse(request, origin, status, why)
                self.handled.put_nowait(Handled(request.method, request.call_id, decision, status))
                return
            request = refused
        elif decision.action in (Action.OPEN, Action.ANNOTATE):
            outcome, verification, status, request = await self._open(request, body, decision)
            handled = Handled(request.method, request.call_id, decision, 0, outcome, verification)
            if status != 200:
                await self._refuse(request, origin, status, str(outcome))
                self.handled.put_nowait(
                    Handled(
                        request.method, request.call_id, decision, status, outcome, verification
                    )
                )
                return
        invite = request.method == "INVITE"
        protected, opened = decision.action is Action.PROTECT, decision.action is Action.OPEN
        await self._forward(
            request,
            origin,
            answer_for=decision.subscriber if invite and protected else None,
            answer_as=decision.subscriber if invite and opened else None,
        )
        self.handled.put_nowait(handled)

    async def _protect(self, request: Request, decision: Decision) -> Request | tuple[int, str]:
        """The request with the phone's content signed and encrypted (draft §4.4)."""
        sender = decision.subscriber
        content = decision.content
        if sender is None or content is None:
            return 500, "nothing to protect"
        callee = request.to.aor
        try:
            identity = self.identity(sender)
        except NotFoundError:
            return 480, f"no delegated certificate for {sender} yet"
        try:
            fetched = await self.client.fetch(callee)
        except SipCertError as exc:
            return 480, f"cannot fetch the certificates of {callee}: {exc}"
        if not fetched.kept:
            return 480, f"{callee} has no usable certificate at {fetched.url}"
        try:
            url: str | None = (await self.client.locate(sender)).url
        except SipCertError:
            url = None
        body = protect(
            content,
            identity.key,
            identity.certificate,
            fetched.kept,
            certificate_url=url,
            domain=sender.host,
            algorithms=self._algorithms,
            now=self._now(),
        )
        log.info(
            "%s %s: signed as %s (placeholder %s), encrypted for %d certificate(s) of %s",
            request.method,
            log_safe(request.call_id),
            sender,
            log_safe(decision.placeholder.content_id if decision.placeholder else ""),
            len(fetched.kept),
            callee,
        )
        return with_body(request, body)

    async def _open(
        self, request: Request, body: MimePart | None, decision: Decision
    ) -> tuple[Outcome, Verification, int, Request]:
        """Draft step 5 for the callee: the plain content and the header, or a refusal."""
        callee = decision.subscriber
        sender = request.from_.aor
        if decision.action is Action.ANNOTATE or callee is None:
            outcome = Outcome(Reason.NOT_PROTECTED, sender, "the body is not S/MIME", content=body)
        else:
            try:
                identity = self.identity(callee)
            except NotFoundError:
                outcome = Outcome(Reason.NOT_A_RECIPIENT, sender, f"no delegated key for {callee}")
            else:
                outcome = await self._verify(body, identity, sender)
        verification = verification_of(outcome, self.config.name)
        # A plain request to a delegating phone goes on, marked (the phone may take plain
        # calls, where a sipcert ua would answer an unprotected INVITE 488).
        if outcome.reason is Reason.NOT_PROTECTED:
            status = 200
        else:
            status = response_status(outcome, request.method)
        content = outcome.content
        if decision.action is Action.OPEN and status == 200 and content is not None:
            request = with_body(request, content)
        request = request.with_headers((VERIFICATION_HEADER, str(verification)))
        log.info(
            "%s %s for %s: %s%s",
            request.method,
            log_safe(request.call_id),
            callee,
            log_safe(str(outcome)),
            f" (signer held by {delegated_by(outcome.signer)})"
            if outcome.signer is not None and delegated_by(outcome.signer)
            else "",
        )
        return outcome, verification, status, request

    async def _forward(
        self,
        request: Request,
        origin: Origin,
        *,
        answer_for: AOR | None = None,
        answer_as: AOR | None = None,
    ) -> None:
        """Our Via on top, Max-Forwards counted down, and back to the proxy (§16.6, §16.11)."""
        forwards = request.get("Max-Forwards")
        remaining = int(forwards) - 1 if forwards is not None and forwards.isdigit() else 69
        if remaining < 0:
            await self._refuse(request, origin, 483, "Too Many Hops")
            return
        proxy = self.config.proxy
        host, port = self.transport.local_address(self.config.listen.transport)
        branch = self._branch(request.top_via.branch or request.call_id)
        via = f"SIP/2.0/{proxy.transport.via_name} {host}:{port};branch={branch}"
        vias = request.get_all("Via")
        out = request.replacing("Via", via, *vias).replacing("Max-Forwards", str(remaining))
        if request.method != "ACK":
            self._pending[branch] = _Pending(origin, request.method, answer_for, answer_as)
        await self.transport.send(out, proxy)

    async def _verify(self, body: MimePart | None, identity: Identity, sender: AOR) -> Outcome:
        """Draft step 5 with ``identity``: decrypt, verify, the Store check of the signer."""
        outcome = open_protected(body, identity.key, identity.certificate, sender, self._now())
        if outcome.needs_store_check and outcome.signer is not None:
            try:
                check = await self.client.certificate_in_signaling(sender, outcome.signer)
            except SipCertError as exc:
                return outcome.after_store_check(None, f"the Store check failed: {exc}")
            return outcome.after_store_check(check.in_store)
        return outcome

    async def _open_answer(self, response: Response, caller: AOR) -> Response:
        """The callee's protected answer SDP, opened for the delegating caller (RFC 3261
        §23.2): the plain SDP and the header; an answer we cannot open keeps its body and
        the header says why, so the phone never takes it for verified."""
        try:
            body = body_part(response)
            outcome = await self._verify(body, self.identity(caller), response.to.aor)
        except (InputError, NotFoundError) as exc:
            outcome = Outcome(Reason.UNDECIPHERABLE, response.to.aor, str(exc))
        if outcome.content is not None and outcome.reason is not Reason.NOT_PROTECTED:
            response = with_body(response, outcome.content)
        verification = verification_of(outcome, self.config.name)
        log.info(
            "answer to %s's INVITE %s: %s",
            caller,
            log_safe(response.call_id),
            log_safe(str(outcome)),
        )
        return response.with_headers((VERIFICATION_HEADER, str(verification)))

    async def _protect_answer(self, response: Response, callee: AOR) -> Response:
        """The phone's plain answer SDP, signed as the delegating callee and encrypted for
        the caller's certificates at the caller's Store (RFC 3261 §23.2, draft §4.4). An
        answer that cannot be protected goes on as it is: the caller's UA sees it is not."""
        try:
            body = body_part(response)
        except InputError:
            return response
        if body is None or body.media_type not in ("application/sdp", "text/plain"):
            return response
        caller = response.from_.aor
        try:
            identity = self.identity(callee)
            fetched = await self.client.fetch(caller)
            if not fetched.kept:
                return response
            url = (await self.client.locate(callee)).url
        except SipCertError as exc:
            log.info("cannot protect %s's answer to %s: %s", callee, caller, log_safe(str(exc)))
            return response
        sealed = protect(
            body,
            identity.key,
            identity.certificate,
            fetched.kept,
            certificate_url=url,
            domain=callee.host,
            algorithms=self._algorithms,
            now=self._now(),
        )
        return with_body(response, sealed)

    async def _relay_response(self, response: Response) -> None:
        vias = [v for line in response.get_all("Via") for v in split_header_list(line)]
        branch = response.top_via.branch or ""
        pending = self._pending.get(branch)
        if pending is None or len(vias) < 2:
            log.info("dropping a response for unknown branch %s", log_safe(branch[:40]))
            return
        back = response.replacing("Via", *vias[1:]).without(VERIFICATION_HEADER)
        if pending.answer_for is not None and 200 <= response.status < 300:
            back = await self._open_answer(back, pending.answer_for)
        if pending.answer_as is not None and 200 <= response.status < 300:
            back = await self._protect_answer(back, pending.answer_as)
        if response.status >= 200:
            asyncio.get_running_loop().call_later(_LINGER, self._pending.pop, branch, None)
        try:
            await self.transport.reply(back, pending.origin)
        except SipCertError as exc:
            log.info("cannot pass a %s back: %s", response.status, log_safe(str(exc)))
