"""One fuzz target per parser of ``sipcert.proto`` (issue 9, "Keep it that way").

Each target takes the fuzzer's bytes and feeds them to one parser the way the Store, the
client or the SIP stack would (after the parser, the values it returned are used the way
callers use them). It may succeed or raise a :class:`~sipcert.errors.SipCertError`; any
other exception, or a warning, is a finding: :func:`only_sipcert_errors` lets it escape so
that libFuzzer (atheris) reports it with the input that caused it.

The keys and certificates the CMS and upload targets need are fixed files in
``fuzz/keys/`` (test keys, made by ``fuzz/make_seeds.py``), so a run with a fixed ``-seed``
over the committed seed corpus is the same run every time.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sipcert.errors import SipCertError
from sipcert.proto import cms, mime, sip, smime
from sipcert.proto import store as store_core
from sipcert.proto.aor import parse_aor
from sipcert.proto.certs import check_enrollment, load_certificate, validate_retrieved
from sipcert.proto.digest import (
    DigestServer,
    MemoryNonceCounter,
    StoredCredential,
    parse_authorization,
    parse_challenges,
)

KEYS = Path(__file__).with_name("keys")
#: A fixed "now" inside the validity of the committed certificates.
NOW = datetime(2026, 6, 1, tzinfo=UTC)
NOW_TS = NOW.timestamp()
ALICE = parse_aor("alice@example.com")
#: The message the committed signature seeds sign (``fuzz/make_seeds.py``).
CONTENT = mime.MimePart(content_type="text/plain", body=b"hello Bob")
#: The nonce secret of the Digest seeds: the committed Authorization values verify.
DIGEST_SECRET = b"fuzz-nonce-secret-0123456789abcd"
DIGEST_URI = "/search-cgi?sip=alice%40example.com"


def _cert(name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((KEYS / f"{name}.pem").read_bytes())


def _key(name: str) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key((KEYS / f"{name}.key").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


ALICE_CERT = _cert("alice")
BOB_CERT = _cert("bob")
BOB_KEY = _key("bob")


def only_sipcert_errors(work: Callable[[], object]) -> None:
    """Run ``work``; a :class:`SipCertError` is an answer, anything else escapes (a finding).

    Warnings are errors too: a parser that warns on input (``BytesWarning``, a
    ``DeprecationWarning`` from a library) would end up in a log line.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            work()
        except SipCertError:
            pass


def _text(data: bytes) -> str:
    """Bytes as the servers see header text (aiohttp decodes heads as UTF-8, with
    surrogates for bytes that are not)."""
    return data.decode("utf-8", "surrogateescape")


# -- query string (draft §4.1, §4.5, §8; RFC 4387 §2.1, §3.2) -------------------------------


def query(data: bytes) -> None:
    """``proto.store.parse_query``: its fast path (issue 13) must give what the full grammar
    (unmemoised) gives, result or error; and the other request-header parsers."""
    text = _text(data)

    def outcome(parse: Callable[[str], store_core.StoreQuery]) -> object:
        try:
            return parse(text)
        except SipCertError as exc:
            return (type(exc), str(exc))

    def work() -> None:
        full = outcome(store_core.parse_query_full.__wrapped__)
        fast = outcome(store_core.parse_query)
        if fast != full:
            raise AssertionError(f"parse_query {fast!r} != the full grammar's {full!r}")
        if isinstance(full, store_core.StoreQuery) and full.aor is not None:
            _ = (str(full.aor), full.aor.host, full.aor.user)

    only_sipcert_errors(work)
    only_sipcert_errors(lambda: store_core.parse_cert_hash(text))
    only_sipcert_errors(lambda: store_core.parse_description(text))
    only_sipcert_errors(lambda: parse_aor(text))
    store_core.parse_enrolled_on(text)  # never raises: display only


# -- Digest Authorization (RFC 7616 §3.4, §3.5) --------------------------------------------

_DIGEST = DigestServer(DIGEST_SECRET, "example.com", nonce_counter=MemoryNonceCounter())


def digest(data: bytes) -> None:
    """``parse_authorization`` then the server's whole check, and the client's challenge
    parser (a Store's ``WWW-Authenticate`` is input to the client)."""
    text = _text(data)

    def work() -> None:
        answer = parse_authorization(text)
        _DIGEST.verify(
            answer,
            StoredCredential(password="alice-secret"),
            method="PUT",
            request_uri=DIGEST_URI,
            now=NOW_TS + 1,
        )

    only_sipcert_errors(work)
    only_sipcert_errors(lambda: parse_challenges(text.split("\n")))


# -- DER/PEM upload (draft §5.1) and retrieval (draft §4.5) ----------------------------------

_POLICY = store_core.StorePolicy(max_lifetime=timedelta(days=36500))
_UPLOAD_TYPES = (None, "application/pkix-cert", "application/x-pem-file", "text/plain")


def upload(data: bytes) -> None:
    """What the Store does with a PUT body, and what a caller does with a GET answer."""
    content_type = _UPLOAD_TYPES[data[0] % len(_UPLOAD_TYPES)] if data else None
    body = data[1:]

    def work() -> None:
        cert = store_core.parse_upload(body, content_type, max_size=16384)
        check_enrollment(
            cert,
            digest_username="alice",
            tls_domain="example.com",
            now=NOW,
            max_lifetime=_POLICY.max_lifetime,
        )

    only_sipcert_errors(work)
    only_sipcert_errors(lambda: validate_retrieved([body], ALICE, NOW))
    only_sipcert_errors(lambda: load_certificate(body))


# -- MIME (RFC 2045, RFC 2046) ---------------------------------------------------------------


def mime_entity(data: bytes) -> None:
    """``parse_mime_part`` on the whole input; ``parse_multipart`` with the first line as
    the Content-Type and the rest as the body."""
    only_sipcert_errors(lambda: mime.parse_mime_part(data).to_bytes())
    first, _, rest = data.partition(b"\n")
    content_type = _text(first.rstrip(b"\r"))

    def work() -> None:
        parts = mime.parse_multipart(content_type, rest).parts
        for part in parts:
            _ = (part.media_type, part.to_bytes())

    only_sipcert_errors(work)
    only_sipcert_errors(lambda: mime.parse_content_type(content_type))


# -- CMS / S/MIME (RFC 5652, RFC 8551) -------------------------------------------------------


def cms_der(data: bytes) -> None:
    """A CMS structure as a signature over :data:`CONTENT`, as an envelope for Bob, and
    inside the S/MIME entities that carry them."""
    content = CONTENT.to_bytes()
    only_sipcert_errors(lambda: cms.verify_detached(data, content, certificates=[ALICE_CERT]))
    only_sipcert_errors(lambda: cms.recipient_identifiers(data))
    only_sipcert_errors(lambda: cms.decrypt_enveloped(data, BOB_KEY, BOB_CERT))
    envelope = mime.MimePart(content_type=smime.ENVELOPED_CONTENT_TYPE, body=data)
    only_sipcert_errors(lambda: smime.decrypt(envelope, BOB_KEY, BOB_CERT))
    signed = mime.MimePart(
        content_type='multipart/signed; protocol="application/pkcs7-signature"; '
        'micalg=sha-256; boundary="b"',
        body=b"--b\r\n" + content + b"\r\n--b\r\nContent-Type: application/pkcs7-signature\r\n"
        b"Content-Transfer-Encoding: binary\r\n\r\n" + data + b"\r\n--b--\r\n",
    )
    only_sipcert_errors(lambda: smime.verify(signed))


# -- SIP messages (RFC 3261 §7, §18.3) -------------------------------------------------------

_SIP_LIMITS = sip.SipLimits(max_message=16384)


def _use(message: sip.Request | sip.Response) -> None:
    """Read a parsed message the way the UA does (sip/ua.py)."""
    for name in ("Via", "From", "To", "Contact"):
        for value in message.values(name):
            if name == "Via":
                sip.parse_via(value)
            else:
                sip.parse_name_addr(value)
    cseq = message.get("CSeq")
    if cseq is not None:
        sip.parse_cseq(cseq)
    if isinstance(message, sip.Request):
        sip.parse_uri(message.uri)
    sip.body_part(message)
    message.to_bytes()


def sip_message(data: bytes) -> None:
    """``parse_message`` as a datagram and as one stream message, and ``StreamParser`` fed
    the same bytes in pieces whose sizes come from the first byte."""

    def datagram(stream: bool) -> None:
        _use(sip.parse_message(data, datagram=not stream, limits=_SIP_LIMITS))

    only_sipcert_errors(lambda: datagram(False))
    only_sipcert_errors(lambda: datagram(True))

    def streamed() -> None:
        parser = sip.StreamParser(_SIP_LIMITS)
        step = (data[0] % 64 + 1) if data else 1
        for at in range(0, len(data), step):
            for event in parser.feed(data[at : at + step]):
                if isinstance(event, SipCertError):  # refused in order, as the UA answers it
                    raise event
                _use(event)

    only_sipcert_errors(streamed)


# -- delegation (draft §6, docs/delegated.md) --------------------------------------------------

#: The fill-in URL the delegation seeds name.
FILL_URL = "https://authsvc.example.com/smime"
_DELEGATES = frozenset({ALICE})


def delegation(data: bytes) -> None:
    """A phone's body as the authentication service decides on it (``proto.delegation``),
    and a ``Sipcert-Verification`` value as a phone reads it: the first line is the
    header, the rest the MIME entity."""
    from sipcert.proto.delegation import decide, parse_verification

    first, _, rest = data.partition(b"\n")
    only_sipcert_errors(lambda: str(parse_verification(_text(first.rstrip(b"\r")))))
    bob = parse_aor("bob@example.net")

    def work() -> None:
        body = mime.parse_mime_part(rest)
        for sender, callee in ((ALICE, bob), (bob, ALICE)):
            decision = decide(
                "MESSAGE", sender, callee, body, delegates=_DELEGATES, fill_url=FILL_URL, now=NOW
            )
            if decision.content is not None:
                decision.content.to_bytes()

    only_sipcert_errors(work)


#: Target name -> function; the names are the folders of ``fuzz/corpus/``.
TARGETS: dict[str, Callable[[bytes], None]] = {
    "query": query,
    "digest": digest,
    "upload": upload,
    "mime": mime_entity,
    "cms": cms_der,
    "sip": sip_message,
    "delegation": delegation,
}
