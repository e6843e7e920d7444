"""Delegated crypto with content indirection (draft §6), sans-IO: docs/delegated.md.

A phone that cannot do S/MIME asks its domain's authentication service to protect a request
by sending ``multipart/mixed`` of the plain content and an RFC 4483 placeholder: a
``message/external-body; access-type=URL`` whose URL is the service's fill-in URL and whose
encapsulated ``Content-Type`` is ``application/pkcs7-mime``. :func:`decide` says what the
service does with a request (pass it on, protect it as the sender, open it for the callee,
annotate it, or refuse it with a status); :class:`Verification` is the
``Sipcert-Verification`` header a delegating callee receives instead of the S/MIME body.
Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sipcert.errors import InputError
from sipcert.proto.aor import AOR
from sipcert.proto.indirection import EXTERNAL_BODY, ExternalBody, parse_external_body
from sipcert.proto.mime import MimePart, parse_multipart
from sipcert.proto.sipsec import Outcome, split_body

__all__ = [
    "MAX_CONTENT",
    "PROTECTABLE_TYPES",
    "SMIME_TYPE",
    "VERIFICATION_HEADER",
    "Action",
    "Decision",
    "RefusedError",
    "Verification",
    "decide",
    "parse_request_body",
    "parse_verification",
    "verification_of",
]

#: The header a delegating callee receives with the result of step 5 (docs/delegated.md §4).
VERIFICATION_HEADER = "Sipcert-Verification"
#: What a phone's placeholder may ask for: the signed-then-encrypted body (draft §4.4).
SMIME_TYPE = "application/pkcs7-mime"
#: The content types the service protects: a MESSAGE's text, an INVITE's offer.
PROTECTABLE_TYPES = frozenset({"text/plain", "application/sdp"})
#: Largest plain content the service signs for a phone (the S/MIME body is about 2x + 2 KB).
MAX_CONTENT = 16 * 1024
#: Methods whose body the service handles; everything else (and in-dialog requests) passes.
_METHODS = frozenset({"MESSAGE", "INVITE"})

_WORD = r"[A-Za-z0-9.!%*_+`'~-]+"
_HOST = r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?"
_PARAM = re.compile(
    rf"[ \t]*;[ \t]*(?P<name>{_WORD})"
    rf'(?:[ \t]*=[ \t]*(?P<value>{_WORD}|"(?P<quoted>[^"\\\r\n]*)"))?'
)
_RESULT = re.compile(rf"[ \t]*(?P<result>{_WORD})")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class Action(StrEnum):
    """What the service does with one request (docs/delegated.md §2, §4)."""

    #: Not ours to touch: forward unchanged (the Sipcert-Verification header still removed).
    FORWARD = "forward"
    #: The sender delegates and asked: sign as the sender, encrypt for the callee.
    PROTECT = "protect"
    #: The callee delegates and the body is S/MIME: decrypt and verify for the callee.
    OPEN = "open"
    #: The callee delegates but the body is not protected: forward with "not-protected".
    ANNOTATE = "annotate"
    #: Answer with ``status`` and do not forward.
    REFUSE = "refuse"


@dataclass(frozen=True)
class Decision:
    """The service's answer to "what to do with this request": action, whose key, why."""

    action: Action
    detail: str = ""
    status: int = 0
    #: The delegating subscriber whose key is used (the sender to PROTECT, the callee to OPEN).
    subscriber: AOR | None = None
    #: PROTECT: the plain content to sign and the phone's placeholder.
    content: MimePart | None = None
    placeholder: ExternalBody | None = None


class RefusedError(InputError):
    """A phone-side body the service will not fill in, with the SIP status it gets."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _same_url(url: str, fill_url: str) -> bool:
    """The placeholder names our fill-in URL: scheme and host case-insensitive, rest exact."""
    scheme, _, rest = url.partition("://")
    want_scheme, _, want_rest = fill_url.partition("://")
    host, slash, path = rest.partition("/")
    want_host, want_slash, want_path = want_rest.partition("/")
    return (
        scheme.lower() == want_scheme.lower()
        and host.lower() == want_host.lower()
        and (slash, path) == (want_slash, want_path)
    )


def _placeholder(part: MimePart, fill_url: str, now: datetime) -> ExternalBody:
    url = part.params.get("url")
    if url is not None and not _same_url(url, fill_url):
        raise RefusedError(
            403,
            f"the placeholder names {url[:80]!r}: this service fills in only {fill_url} "
            "and fetches nothing on a phone's behalf (RFC 4483 §5.3)",
        )
    try:
        ref = parse_external_body(part, accept=frozenset({SMIME_TYPE}), max_size=1 << 20)
    except InputError as exc:
        raise RefusedError(400, f"the content-indirection placeholder is refused: {exc}") from exc
    if ref.expired(now):
        raise RefusedError(400, "the placeholder is past its expiration (RFC 4483 §5.7)")
    return ref


def parse_request_body(
    body: MimePart, fill_url: str, now: datetime
) -> tuple[MimePart, ExternalBody]:
    """The phone's content and placeholder (docs/delegated.md §2), or InputError.

    The error carries ``status``: 403 for a URL other than ``fill_url`` (the service fetches
    nothing), 413 for content over :data:`MAX_CONTENT`, 400 for anything malformed.
    """
    if body.media_type != "multipart/mixed":
        raise RefusedError(400, f"a delegation request is multipart/mixed, not {body.media_type}")
    try:
        parts = parse_multipart(body.content_type, body.body).parts
    except InputError as exc:
        raise RefusedError(400, f"malformed multipart/mixed: {exc}") from exc
    placeholders = [p for p in parts if p.media_type == EXTERNAL_BODY]
    contents = [p for p in parts if p.media_type != EXTERNAL_BODY]
    if len(placeholders) != 1 or len(contents) != 1:
        raise RefusedError(
            400,
            f"a delegation request holds one content part and one placeholder, not "
            f"{len(contents)} and {len(placeholders)}",
        )
    content = contents[0]
    if content.media_type not in PROTECTABLE_TYPES:
        raise RefusedError(400, f"the service does not protect {content.media_type}")
    if len(content.body) > MAX_CONTENT:
        raise RefusedError(413, f"content of {len(content.body)} octets (limit {MAX_CONTENT})")
    return content, _placeholder(placeholders[0], fill_url, now)


def _asks_for_delegation(body: MimePart) -> bool:
    """Whether ``body`` holds a content-indirection placeholder at all (well formed or not)."""
    if body.media_type == EXTERNAL_BODY:
        return True
    if body.media_type != "multipart/mixed":
        return False
    try:
        parts = parse_multipart(body.content_type, body.body).parts
    except InputError:
        return True  # a malformed multipart from a delegating phone is refused, not passed
    return any(p.media_type == EXTERNAL_BODY for p in parts) and not any(
        p.media_type in ("application/pkcs7-mime", "application/x-pkcs7-mime") for p in parts
    )


def decide(
    method: str,
    sender: AOR,
    callee: AOR,
    body: MimePart | None,
    *,
    delegates: Collection[AOR],
    fill_url: str,
    now: datetime,
    in_dialog: bool = False,
    body_problem: str = "",
) -> Decision:
    """What the service does with one request (docs/delegated.md §2, §4, §6).

    ``body_problem`` is why the SIP body did not parse as MIME (then ``body`` is None).
    The sender's side comes first: a phone's placeholder is filled in even when the callee
    delegates too (the service then opens what it made on the next pass). In-dialog
    requests and methods other than MESSAGE and INVITE pass untouched.
    """
    if in_dialog or method not in _METHODS:
        return Decision(Action.FORWARD, f"{method} {'in a dialog ' if in_dialog else ''}passes")
    sender_delegates = sender in delegates
    if body_problem:
        if sender_delegates:
            return Decision(Action.REFUSE, f"malformed body: {body_problem}", 400, sender)
        return Decision(Action.FORWARD, f"body not parsed ({body_problem}): not ours")
    if body is not None and _asks_for_delegation(body):
        if not sender_delegates:
            return Decision(
                Action.REFUSE, f"{sender} does not delegate to this service", 403, sender
            )
        try:
            content, placeholder = parse_request_body(body, fill_url, now)
        except RefusedError as exc:
            return Decision(Action.REFUSE, str(exc), exc.status, sender)
        except InputError as exc:
            return Decision(Action.REFUSE, str(exc), 400, sender)
        return Decision(
            Action.PROTECT,
            f"sign as {sender}, encrypt for {callee}",
            subscriber=sender,
            content=content,
            placeholder=placeholder,
        )
    if callee in delegates:
        enveloped, _, _ = split_body(body)
        if enveloped is not None:
            return Decision(Action.OPEN, f"open for {callee}", subscriber=callee)
        return Decision(Action.ANNOTATE, "not protected", subscriber=callee)
    return Decision(Action.FORWARD, "neither side delegates, or the phone did not ask")


@dataclass(frozen=True)
class Verification:
    """One ``Sipcert-Verification`` value (docs/delegated.md §4)::

    verified;sender="sip:bob@example.net";signer=<sha256 hex>;by=authsvc.example.com;delegated
    """

    result: str
    sender: str | None = None
    signer: str | None = None
    by: str | None = None
    delegated: bool = False

    def __post_init__(self) -> None:
        if not re.fullmatch(_WORD, self.result):
            raise InputError(f"verification result {self.result[:40]!r} is not a token")
        if self.sender is not None and re.search(r'["\\\r\n]', self.sender):
            raise InputError("the sender of a verification cannot be quoted")
        if self.signer is not None and not _SHA256.fullmatch(self.signer):
            raise InputError("the signer of a verification is a lower-case SHA-256 in hex")
        if self.by is not None and not re.fullmatch(_HOST, self.by):
            raise InputError(f"{self.by[:70]!r} is not a host name")

    @property
    def verified(self) -> bool:
        return self.result == "verified"

    def __str__(self) -> str:
        out = [self.result]
        if self.sender is not None:
            out.append(f'sender="{self.sender}"')
        if self.signer is not None:
            out.append(f"signer={self.signer}")
        if self.by is not None:
            out.append(f"by={self.by}")
        if self.delegated:
            out.append("delegated")
        return ";".join(out)


def verification_of(outcome: Outcome, by: str) -> Verification:
    """The header value for a finished draft step 5 (``outcome`` past the Store check)."""
    return Verification(
        str(outcome.reason),
        sender=outcome.sender.sip_uri,
        signer=outcome.signer_sha256,
        by=by,
        delegated=outcome.delegated_by is not None,
    )


def parse_verification(value: str) -> Verification:
    """Read a ``Sipcert-Verification`` value strictly; unknown parameters are ignored
    (RFC 3261 ``generic-param``), a repeated known one is an InputError."""
    match = _RESULT.match(value)
    if match is None:
        raise InputError(f"{value[:60]!r} does not start with a verification result")
    found: dict[str, str | None] = {}
    position = match.end()
    while position < len(value.rstrip(" \t")):
        param = _PARAM.match(value, position)
        if param is None:
            raise InputError(f"malformed verification parameter at {value[position:][:40]!r}")
        name = param["name"].lower()
        if name in found:
            raise InputError(f"verification parameter {name!r} repeated")
        given = param["quoted"] if param["quoted"] is not None else param["value"]
        if name in ("sender", "signer", "by") and given is None:
            raise InputError(f"verification parameter {name!r} needs a value")
        if name == "delegated" and given is not None:
            raise InputError("verification parameter 'delegated' takes no value")
        found[name] = given
        position = param.end()
    return Verification(
        match["result"],
        sender=found.get("sender"),
        signer=found.get("signer"),
        by=found.get("by"),
        delegated="delegated" in found,
    )
