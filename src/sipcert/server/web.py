"""The Subscriber's revocation page: ``GET /account`` and ``POST /account/revoke`` (draft §5).

Draft §5: "The Service MUST provide some other authenticated, out of band mechanism for the
Subscriber to revoke certificates. A web page accessed over HTTPS with digest authentication
would work fine for this." ``DELETE /search-cgi`` already revokes for programs that know the
certHash; this page is the mechanism for a person with a browser and nothing but the SIP
password, who needs to *see* which certificates are enrolled (one per device, §5) to pick
the one to revoke.

Authentication is the Store's Digest (realm = the TLS SNI domain, the same secret as for SIP
registration, the same per-address and per-user rate limiting): :class:`AccountPages` is
given :meth:`StoreApp._authenticate <sipcert.server.app.StoreApp>` rather than a copy of it.
A user only ever sees and revokes the certificates of ``user@<SNI domain>``.

Because a browser resends cached Digest credentials on *every* request to the origin,
including a form POST that another site makes it send, Digest alone does not show that the
Subscriber meant to revoke. ``POST /account/revoke`` is therefore also protected against
cross-site request forgery:

* a token (:class:`CsrfTokens`): an HMAC, keyed from the Store's nonce secret, over the
  domain, the Digest username and a time bucket; it is embedded in the page's forms, which
  another site can neither read (no CORS, ``frame-ancestors 'none'``) nor compute, and
  checked in constant time for the current and the previous bucket;
* the ``Origin`` header (``Referer`` when ``Origin`` is absent) and ``Sec-Fetch-Site``, when
  the browser sends them, must name this very origin (:func:`check_same_origin`).

The page is plain server-rendered HTML without JavaScript; every piece of data in it goes
through :func:`html.escape` (a SAN URI is chosen by whoever made the certificate and may hold
``<script>``), and a strict Content-Security-Policy forbids scripts anyway.
"""

from __future__ import annotations

import base64
import hmac
import html
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

from aiohttp import web
from cryptography import x509

from sipcert.errors import (
    AORError,
    CertificateParseError,
    ForbiddenError,
    InputError,
    InputTooLargeError,
    NotFoundError,
    UnsupportedMediaTypeError,
)
from sipcert.proto.aor import AOR, escape_user
from sipcert.proto.certs import san_uris
from sipcert.proto.store import parse_cert_hash, percent_decode
from sipcert.storage import CertificateStore, StoredCertificate

__all__ = [
    "ACCOUNT_PATH",
    "CSRF_BUCKET_SECONDS",
    "MAX_FORM_SIZE",
    "PAGE_HEADERS",
    "REVOKE_PATH",
    "AccountPages",
    "CertificateView",
    "CsrfTokens",
    "RevokeForm",
    "check_same_origin",
    "describe",
    "parse_flash",
    "parse_revoke_form",
    "render_account_page",
]

log = logging.getLogger("sipcert.server")

#: The page listing the Subscriber's certificates.
ACCOUNT_PATH = "/account"
#: Where its forms post to.
REVOKE_PATH = "/account/revoke"
#: Largest form body accepted: a certHash, a token and the field names fit many times over.
MAX_FORM_SIZE = 4096
#: Width of a CSRF token's time bucket; a token is accepted for 1 to 2 buckets after issue.
CSRF_BUCKET_SECONDS = 3600
FORM_TYPE = "application/x-www-form-urlencoded"

#: Headers of every page and redirect of the account pages.
#:
#: No script may run, nothing may load but the inline style, forms may only post here, and no
#: other site may frame the page (clickjacking a "Revoke" button); the page is never cached
#: (it lists what a Subscriber holds and carries a CSRF token).
#:
#: ``Referrer-Policy`` is ``same-origin``, not ``no-referrer``: under ``no-referrer`` the Fetch
#: standard ("append a request Origin header") makes browsers send ``Origin: null`` on the
#: page's own POST, which would make the Origin check useless. ``same-origin`` still sends no
#: referrer to any other origin (the page links nowhere anyway).
PAGE_HEADERS: tuple[tuple[str, str], ...] = (
    (
        "Content-Security-Policy",
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
    ),
    ("X-Frame-Options", "DENY"),
    ("Cache-Control", "no-store"),
    ("Referrer-Policy", "same-origin"),
    ("X-Content-Type-Options", "nosniff"),
)

_CSRF_LABEL = b"sipcert account-page csrf key v1"
_FORM_FIELDS = frozenset({"certHash", "all", "csrf"})
#: Largest ``?revoked=N`` shown: more than any per-AOR limit, small enough to read.
_MAX_FLASH = 1000


# -- CSRF tokens --------------------------------------------------------------------------


class CsrfTokens:
    """Stateless CSRF tokens bound to (domain, Digest username, time bucket).

    The key is derived from the Store's nonce secret with a label of its own, so the token
    MAC and the Digest nonce MAC never share a key, and every worker process (which all share
    the nonce secret) accepts the tokens of the others without shared state. A token is valid
    while its bucket is the current or the previous one: at least ``bucket`` seconds, at most
    twice that, enough for a page left open a while; an older page must be reloaded.
    """

    def __init__(self, secret: bytes, *, bucket: int = CSRF_BUCKET_SECONDS) -> None:
        if bucket < 1:
            raise ValueError("the CSRF time bucket must be at least one second")
        self._key = hmac.digest(secret, _CSRF_LABEL, "sha256")
        self.bucket = bucket

    def _mac(self, domain: str, username: str, bucket: int) -> bytes:
        # Length-prefixed fields: no (domain, username) pair can be re-split into another.
        parts = [domain.encode("utf-8"), username.encode("utf-8"), str(bucket).encode("ascii")]
        data = b"".join(len(part).to_bytes(4, "big") + part for part in parts)
        return hmac.digest(self._key, data, "sha256")

    def _token(self, domain: str, username: str, bucket: int) -> bytes:
        return base64.urlsafe_b64encode(self._mac(domain, username, bucket)).rstrip(b"=")

    def issue(self, domain: str, username: str, now: float) -> str:
        """The token for the forms of a page shown at ``now``."""
        return self._token(domain, username, int(now // self.bucket)).decode("ascii")

    def verify(self, token: str, domain: str, username: str, now: float) -> bool:
        """Whether ``token`` was issued for this user and domain in this or the last bucket.

        Both buckets are always compared, with :func:`hmac.compare_digest`, so the time taken
        tells nothing about which part of a forged token was right.
        """
        presented = token.encode("ascii", "replace")
        current = int(now // self.bucket)
        results = [
            hmac.compare_digest(presented, self._token(domain, username, bucket))
            for bucket in (current, current - 1)
        ]
        return any(results)


# -- the form -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RevokeForm:
    """A parsed revocation form: one certificate by certHash, or all of them."""

    cert_hash: str | None
    revoke_all: bool
    csrf: str | None


def parse_revoke_form(body: bytes) -> RevokeForm:
    """Parse the revocation form strictly: no guessing what a malformed request meant.

    Only ``certHash``, ``all`` and ``csrf`` are known; each at most once; ``all`` must be
    ``1``; exactly one of ``certHash`` and ``all`` must be given. The CSRF token is *not*
    checked here (a missing one is returned as ``None`` and refused with 403 by the caller).
    Raises :class:`InputError` (400).
    """
    if len(body) > MAX_FORM_SIZE:
        raise InputTooLargeError(f"form larger than {MAX_FORM_SIZE} bytes")
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError as exc:
        raise InputError("a url-encoded form is ASCII; this body is not") from exc
    fields: dict[str, str] = {}
    for item in text.split("&") if text else []:
        raw_name, sep, raw_value = item.partition("=")
        name = percent_decode(raw_name, "a form field name", plus_is_space=True)
        if not sep or name not in _FORM_FIELDS:
            raise InputError(f"unknown or malformed form field {name[:40]!r}")
        if name in fields:
            raise InputError(f"form field {name!r} given twice")
        fields[name] = percent_decode(raw_value, f"form field {name!r}", plus_is_space=True)
    revoke_all = False
    if "all" in fields:
        if fields["all"] != "1":
            raise InputError("form field 'all' must be 1")
        revoke_all = True
    cert_hash = None
    if "certHash" in fields:
        # Browsers send '+' as %2B; a hand-made form (curl -d certHash=a+b) sends it bare,
        # which form decoding turns into a space. base64 has no space: it can only be '+'.
        cert_hash = parse_cert_hash(fields["certHash"].replace(" ", "+"))
    if revoke_all == (cert_hash is not None):
        raise InputError("give either certHash or all=1")
    return RevokeForm(cert_hash=cert_hash, revoke_all=revoke_all, csrf=fields.get("csrf"))


def check_same_origin(
    *, origin: str | None, referer: str | None, fetch_site: str | None, domain: str, host: str
) -> None:
    """Refuse (403) a POST that the browser says came from another origin.

    Checked when present (a non-browser client such as curl sends none of them, and then the
    CSRF token alone decides):

    * ``Origin`` must be ``https://<domain>`` with the port of the ``Host`` header (or no
      port for 443); ``Origin: null`` (a sandboxed or privacy-stripped context) is refused;
    * without ``Origin``, the ``Referer``'s scheme, host and port must be the same;
    * ``Sec-Fetch-Site``, when sent, must be ``same-origin``.

    The ``Host`` port is taken because the Store may listen on several ports and a browser
    sends the port it used; its host must be the SNI domain, otherwise nothing matches.
    """
    allowed = _allowed_origins(domain, host)
    if origin is not None:
        if origin.strip().lower() not in allowed:
            raise ForbiddenError(
                "the form was not sent from this site's page (Origin)", reason="cross-origin"
            )
    elif referer is not None:
        parts = urlsplit(referer.strip())
        if f"{parts.scheme}://{parts.netloc}".lower() not in allowed:
            raise ForbiddenError(
                "the form was not sent from this site's page (Referer)", reason="cross-origin"
            )
    if fetch_site is not None and fetch_site.strip().lower() != "same-origin":
        raise ForbiddenError(
            "the form was not sent from this site's page (Sec-Fetch-Site)", reason="cross-origin"
        )


def _allowed_origins(domain: str, host: str) -> frozenset[str]:
    name, _, port = host.strip().lower().rpartition(":")
    if not name or not port.isdigit():
        name, port = host.strip().lower(), ""
    if name != domain:
        return frozenset()
    if port in ("", "443"):
        return frozenset({f"https://{domain}", f"https://{domain}:443"})
    return frozenset({f"https://{domain}:{int(port)}"})


def parse_flash(query: str) -> int | None:
    """The ``?revoked=N`` of the redirect after a revocation; nothing else is accepted."""
    if not query:
        return None
    name, sep, value = query.partition("=")
    if name != "revoked" or not sep or not value.isdigit() or not value.isascii():
        raise InputError("the account page takes no query but ?revoked=N")
    if len(value) > 4 or int(value) > _MAX_FLASH:
        raise InputError(f"revoked must be at most {_MAX_FLASH}")
    return int(value)


# -- the page -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CertificateView:
    """What the page shows of one stored certificate (all text, not yet escaped)."""

    cert_hash: str
    sha256: str
    serial: str
    san_uris: tuple[str, ...]
    not_before: datetime
    not_after: datetime
    expires_in_days: int
    not_yet_valid: bool
    #: The device label sent with the PUT (display only), or None.
    label: str | None = None
    #: When the Store accepted it.
    enrolled: datetime | None = None


def describe(stored: StoredCertificate, now: datetime) -> CertificateView:
    """The page's view of ``stored``; a certificate that no longer decodes is still listed.

    Stored certificates passed the upload checks, but a row may come from elsewhere (another
    version, a direct insert): the Subscriber must be able to revoke it even then.
    """
    serial = "?"
    uris: tuple[str, ...] = ()
    try:
        cert = x509.load_der_x509_certificate(stored.der)
        serial = f"{cert.serial_number:X}"
        uris = tuple(san_uris(cert))
    except (ValueError, CertificateParseError):
        uris = ("(the certificate does not decode)",)
    return CertificateView(
        cert_hash=stored.cert_hash,
        sha256=stored.sha256,
        serial=serial,
        san_uris=uris,
        not_before=stored.not_before,
        not_after=stored.not_after,
        expires_in_days=max(0, (stored.not_after - now).days),
        not_yet_valid=stored.not_before > now,
        label=stored.label,
        enrolled=stored.created,
    )


#: One column of cards, whatever the width: a phone (390 px) never scrolls sideways, a
#: fingerprint or a label wraps anywhere, and every Revoke button sits in its card.
_STYLE = """
*{box-sizing:border-box}
body{font:16px/1.45 system-ui,sans-serif;margin:0 auto;max-width:48rem;padding:1rem;
color:#1d1d1f;overflow-wrap:anywhere}
h1{font-size:1.35rem;margin:.2rem 0 .8rem}
ul.certs{list-style:none;margin:0;padding:0}
li.cert{border:1px solid #ccc;border-radius:8px;margin:0 0 1rem;padding:.75rem 1rem}
h2.label{font-size:1.1rem;margin:0 0 .4rem}
dl{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:.2rem .8rem;margin:0}
dt{color:#555}dd{margin:0;min-width:0}
code{font-size:.85rem;word-break:break-all;overflow-wrap:anywhere}
.flash{background:#e7f5e7;border:1px solid #9c9;padding:.5rem 1rem}
button{cursor:pointer;font:inherit}
.danger{color:#fff;background:#b3261e;border:0;padding:.5rem 1rem;border-radius:4px;
margin-top:.6rem;min-height:44px}
.note{color:#555;font-size:.9rem}
@media (max-width:30rem){dl{grid-template-columns:minmax(0,1fr)}dd{margin-bottom:.3rem}}
""".strip()


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _expiry(view: CertificateView) -> str:
    if view.expires_in_days == 0:
        return "expires in less than a day"
    unit = "day" if view.expires_in_days == 1 else "days"
    return f"expires in {view.expires_in_days} {unit}"


def _hidden(name: str, value: str) -> str:
    return f'<input type="hidden" name="{_e(name)}" value="{_e(value)}">'


def _flash(revoked: int | None) -> str:
    if revoked is None:
        return ""
    if revoked == 0:
        text = "No certificate was revoked."
    else:
        text = f"{revoked} certificate{'' if revoked == 1 else 's'} revoked."
    return f'<p class="flash" role="status">{_e(text)}</p>\n'


def _when(value: datetime) -> str:
    return _e(value.astimezone(UTC).strftime("%Y-%m-%d %H:%M")) + " UTC"


def _card(view: CertificateView, csrf_token: str) -> str:
    """One certificate: its label as the heading, then what tells it apart, then Revoke.

    The label is whatever the enrolling device sent: escaped like everything else, and
    shown as the device's own name for itself, not as something the Store vouches for.
    """
    uris = "<br>".join(f"<code>{_e(uri)}</code>" for uri in view.san_uris) or "(none)"
    heading = _e(view.label) if view.label else '<span class="note">(no device label)</span>'
    name = view.label or view.sha256[:16]
    enrolled = (
        f"<dt>Enrolled on</dt><dd>{_when(view.enrolled)}</dd>" if view.enrolled is not None else ""
    )
    return (
        f'<li class="cert" data-cert-hash="{_e(view.cert_hash)}">'
        f'<h2 class="label">{heading}</h2><dl>'
        f'<dt>SHA-256</dt><dd><code class="fingerprint">{_e(view.sha256)}</code></dd>'
        f"{enrolled}"
        f"<dt>Valid</dt><dd>{_when(view.not_before)} &ndash; {_when(view.not_after)}<br>"
        f'<span class="note">{_e(_expiry(view))}'
        f"{' (not yet valid)' if view.not_yet_valid else ''}</span></dd>"
        f"<dt>Addresses</dt><dd>{uris}</dd>"
        f"<dt>Serial</dt><dd><code>{_e(view.serial)}</code></dd></dl>"
        f'<form method="post" action="{REVOKE_PATH}">'
        f"{_hidden('certHash', view.cert_hash)}{_hidden('csrf', csrf_token)}"
        f'<button type="submit" class="danger revoke" aria-label="Revoke {_e(name)}">'
        "Revoke</button></form></li>"
    )


def render_account_page(
    *,
    aor: str,
    certs: Sequence[CertificateView],
    csrf_token: str,
    revoked: int | None = None,
) -> str:
    """The whole page; every value from a certificate, the AOR or the token is escaped.

    Fingerprints are spelled as everywhere else a person sees one (``sipcert status``,
    ``fetch --json``): lowercase hex SHA-256 of the DER
    (:func:`~sipcert.proto.certs.sha256_fingerprint`).
    """
    if certs:
        body = (
            '<ul class="certs">\n'
            + "\n".join(_card(view, csrf_token) for view in certs)
            + "\n</ul>\n"
            f'<form method="post" action="{REVOKE_PATH}">'
            f"{_hidden('all', '1')}{_hidden('csrf', csrf_token)}"
            '<p><button type="submit" class="danger revoke-all">Revoke all</button> '
            '<span class="note">Removes every certificate of this address.</span></p></form>\n'
        )
    else:
        body = "<p>No certificates are enrolled for this address.</p>\n"
    count = len(certs)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>Certificates of {_e(aor)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>Certificates of {_e(aor)}</h1>\n"
        + _flash(revoked)
        + f'<p class="note">{count} certificate{"" if count == 1 else "s"} enrolled, one per '
        "device. Callers fetch these to encrypt to you; revoke the certificate of a device you "
        "no longer use or have lost (draft-jennings-sipping-certs-02 &sect;5). Device labels "
        "are the names the devices gave themselves when they enrolled.</p>\n"
        + body
        + "</body>\n</html>\n"
    )


# -- the handler --------------------------------------------------------------------------

Authenticate = Callable[[web.BaseRequest, str], Awaitable[str]]
ReadBody = Callable[[web.BaseRequest, int], Awaitable[bytes]]
#: ``delete(request, username, aor, cert_hash, via)``: how many certificates were revoked.
Delete = Callable[[web.BaseRequest, str, AOR, str | None, str], Awaitable[int]]


def _headers(response: web.Response) -> web.Response:
    for name, value in PAGE_HEADERS:
        response.headers[name] = value
    return response


def _method_not_allowed(method: str, allow: str) -> web.Response:
    response = web.Response(
        status=405, text=f"method {method} is not allowed; use {allow}\n", content_type="text/plain"
    )
    response.headers["Allow"] = allow
    return response


class AccountPages:
    """``GET /account`` and ``POST /account/revoke`` for one Store process.

    ``authenticate(request, domain)`` is the Store's Digest check (401/429 raised by it);
    ``read_body(request, limit)`` reads a body with a size limit (413); ``clock`` gives Unix
    time; ``delete``, when given, revokes instead of ``storage.delete`` (the Store passes its
    counted and audited one). Errors are raised as :class:`~sipcert.errors.SipCertError`
    and answered by the Store in its one place.
    """

    def __init__(
        self,
        *,
        storage: CertificateStore,
        authenticate: Authenticate,
        read_body: ReadBody,
        csrf: CsrfTokens,
        clock: Callable[[], float],
        delete: Delete | None = None,
    ) -> None:
        self.storage = storage
        self._delete = delete
        self._authenticate = authenticate
        self._read_body = read_body
        self.csrf = csrf
        self._clock = clock

    async def handle(self, request: web.BaseRequest, domain: str) -> web.StreamResponse:
        """Answer a request for :data:`ACCOUNT_PATH` or :data:`REVOKE_PATH` on ``domain``."""
        if request.path == ACCOUNT_PATH:
            if request.method not in ("GET", "HEAD"):
                return _method_not_allowed(request.method, "GET, HEAD")
            return await self._page(request, domain)
        if request.method != "POST":
            return _method_not_allowed(request.method, "POST")
        return await self._revoke(request, domain)

    @staticmethod
    def _aor(username: str, domain: str) -> AOR:
        """The AOR whose certificates the Digest user may see: ``user@<SNI domain>`` only."""
        try:
            return AOR(escape_user(username), domain)
        except (AORError, InputTooLargeError) as exc:
            raise ForbiddenError(
                "this Digest user name is not the user part of an address of record",
                reason="aor-user-mismatch",
            ) from exc

    async def _page(self, request: web.BaseRequest, domain: str) -> web.Response:
        revoked = parse_flash(request.raw_path.partition("?")[2])
        username = await self._authenticate(request, domain)
        aor = self._aor(username, domain)
        now_ts = self._clock()
        now = datetime.fromtimestamp(now_ts, UTC)
        certs = await self.storage.get_by_aor(str(aor), now)
        page = render_account_page(
            aor=str(aor),
            certs=[describe(c, now) for c in certs],
            csrf_token=self.csrf.issue(domain, username, now_ts),
            revoked=revoked,
        )
        return _headers(web.Response(text=page, content_type="text/html", charset="utf-8"))

    async def _revoke(self, request: web.BaseRequest, domain: str) -> web.Response:
        if request.raw_path != REVOKE_PATH:
            raise InputError(f"{REVOKE_PATH} takes no query; the form is the body")
        declared = request.content_length
        if declared is not None and declared > MAX_FORM_SIZE:
            raise InputTooLargeError(f"form larger than {MAX_FORM_SIZE} bytes")
        username = await self._authenticate(request, domain)
        check_same_origin(
            origin=request.headers.get("Origin"),
            referer=request.headers.get("Referer"),
            fetch_site=request.headers.get("Sec-Fetch-Site"),
            domain=domain,
            host=request.headers.get("Host", ""),
        )
        media_type = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if media_type != FORM_TYPE:
            raise UnsupportedMediaTypeError(f"the revocation form is sent as {FORM_TYPE}")
        try:
            body = await self._read_body(request, MAX_FORM_SIZE)
        except InputTooLargeError as exc:
            raise InputTooLargeError(f"form larger than {MAX_FORM_SIZE} bytes") from exc
        form = parse_revoke_form(body)
        now = self._clock()
        if form.csrf is None or not self.csrf.verify(form.csrf, domain, username, now):
            raise ForbiddenError(
                "the form's token is missing, wrong or expired: reload the account page",
                reason="csrf",
            )
        aor = self._aor(username, domain)
        if self._delete is not None:  # the Store's own: counted and audited (issue 10)
            removed = await self._delete(request, username, aor, form.cert_hash, "account page")
        else:
            removed = await self.storage.delete(str(aor), form.cert_hash)
        if removed == 0 and form.cert_hash is not None:
            # Another AOR's certHash looks exactly like one that does not exist.
            raise NotFoundError(f"{aor} has no such certificate here")
        log.info("revoked %d certificate(s) of %s on the account page", removed, aor)
        response = web.Response(status=303, text=f"{removed} revoked\n", content_type="text/plain")
        response.headers["Location"] = f"{ACCOUNT_PATH}?revoked={removed}"
        return _headers(response)
