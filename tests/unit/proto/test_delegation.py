"""The authentication service's decisions and header (draft §6, docs/delegated.md)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipcert.errors import InputError
from sipcert.proto.aor import parse_aor
from sipcert.proto.certs import DELEGATED_PREFIX, delegated_by, generate_identity
from sipcert.proto.delegation import (
    Action,
    Verification,
    decide,
    parse_request_body,
    parse_verification,
    verification_of,
)
from sipcert.proto.mime import MimePart, build_multipart, parse_mime_part
from sipcert.proto.sipsec import open_protected, protect

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
FILL = "https://authsvc.example.com/smime"
ALICE = parse_aor("alice@example.com")
BOB = parse_aor("bob@example.net")
TEXT = MimePart("text/plain", b"Hello Bob")


def placeholder(
    url: str = FILL,
    *,
    inner: str = "application/pkcs7-mime; smime-type=enveloped-data",
    content_id: str | None = "<p1@example.com>",
    expiration: str | None = None,
) -> MimePart:
    params = f'access-type="URL"; URL="{url}"'
    if expiration is not None:
        params += f'; expiration="{expiration}"'
    head = f"Content-Type: {inner}\r\n"
    if content_id is not None:
        head += f"Content-ID: {content_id}\r\n"
    return MimePart(f"message/external-body; {params}", (head + "\r\n").encode())


def request_body(*parts: MimePart) -> MimePart:
    return build_multipart("mixed", list(parts or (TEXT, placeholder())))


def test_a_phone_asks_and_the_service_protects() -> None:
    decision = decide(
        "MESSAGE", ALICE, BOB, request_body(), delegates={ALICE}, fill_url=FILL, now=NOW
    )
    assert decision.action is Action.PROTECT
    assert decision.subscriber == ALICE
    assert decision.content == TEXT
    assert decision.placeholder is not None
    assert decision.placeholder.content_id == "<p1@example.com>"


def test_the_url_is_compared_case_insensitively_in_scheme_and_host_only() -> None:
    body = request_body(TEXT, placeholder("HTTPS://AuthSvc.Example.com/smime"))
    content, _ = parse_request_body(body, FILL, NOW)
    assert content == TEXT
    with pytest.raises(InputError) as info:
        parse_request_body(request_body(TEXT, placeholder(FILL + "/x")), FILL, NOW)
    assert getattr(info.value, "status", None) == 403


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (request_body(TEXT, placeholder("https://evil.example.org/smime")), 403, "fetches nothing"),
        (request_body(TEXT, placeholder("http://authsvc.example.com/smime")), 403, "fills in only"),
        (request_body(TEXT, placeholder(content_id=None)), 400, "Content-ID"),
        (request_body(TEXT, placeholder(inner="text/html")), 400, "application/pkcs7-mime"),
        (
            request_body(TEXT, placeholder(expiration="Tue, 01 Dec 2026 11:00:00 GMT")),
            400,
            "expiration",
        ),
        (request_body(placeholder()), 400, "one content part"),
        (request_body(TEXT, TEXT, placeholder()), 400, "one content part"),
        (request_body(MimePart("text/html", b"<b>x</b>"), placeholder()), 400, "text/html"),
        (request_body(MimePart("text/plain", b"x" * 20000), placeholder()), 413, "limit"),
        (placeholder(), 400, "multipart/mixed"),
        (
            MimePart("multipart/mixed; boundary=zz", b"--zz\r\nbroken"),
            400,
            "malformed",
        ),
    ],
)
def test_phone_bodies_the_service_refuses(body: MimePart, status: int, words: str) -> None:
    decision = decide("MESSAGE", ALICE, BOB, body, delegates={ALICE}, fill_url=FILL, now=NOW)
    assert decision.action is Action.REFUSE
    assert decision.status == status, decision.detail
    assert words in decision.detail


def test_a_placeholder_from_someone_who_does_not_delegate_is_refused() -> None:
    decision = decide(
        "MESSAGE", ALICE, BOB, request_body(), delegates=set(), fill_url=FILL, now=NOW
    )
    assert (decision.action, decision.status) == (Action.REFUSE, 403)


def test_what_passes_untouched() -> None:
    common = {"delegates": {ALICE}, "fill_url": FILL, "now": NOW}
    # in a dialog, another method, no placeholder from a delegating user, nobody delegates
    assert (
        decide("MESSAGE", ALICE, BOB, request_body(), in_dialog=True, **common).action
        is Action.FORWARD
    )
    assert decide("OPTIONS", ALICE, BOB, request_body(), **common).action is Action.FORWARD
    assert decide("MESSAGE", ALICE, BOB, TEXT, **common).action is Action.FORWARD
    assert decide("MESSAGE", BOB, BOB, TEXT, **common).action is Action.FORWARD
    unparsed = decide("MESSAGE", BOB, BOB, None, body_problem="bad", **common)
    assert unparsed.action is Action.FORWARD
    refused = decide("MESSAGE", ALICE, BOB, None, body_problem="bad", **common)
    assert (refused.action, refused.status) == (Action.REFUSE, 400)


def test_to_a_delegating_callee_open_or_annotate() -> None:
    common = {"delegates": {ALICE}, "fill_url": FILL, "now": NOW}
    me = generate_identity(ALICE, now=NOW, delegated_by="authsvc.example.com")
    bob = generate_identity(BOB, now=NOW)
    body = protect(TEXT, bob.key, bob.certificate, [me.certificate], now=NOW)
    assert decide("MESSAGE", BOB, ALICE, body, **common).action is Action.OPEN
    assert decide("INVITE", BOB, ALICE, body, **common).action is Action.OPEN
    annotate = decide("MESSAGE", BOB, ALICE, TEXT, **common)
    assert (annotate.action, annotate.subscriber) == (Action.ANNOTATE, ALICE)


def test_the_delegation_marker_is_read_back_and_reported() -> None:
    mine = generate_identity(ALICE, now=NOW, delegated_by="AuthSvc.example.com")
    device = generate_identity(BOB, now=NOW)
    assert delegated_by(mine.certificate) == "authsvc.example.com"
    assert delegated_by(device.certificate) is None
    body = protect(TEXT, mine.key, mine.certificate, [device.certificate], now=NOW)
    outcome = open_protected(body, device.key, device.certificate, ALICE, NOW + timedelta(1))
    outcome = outcome.after_store_check(True)
    assert outcome.delegated_by == "authsvc.example.com"
    assert str(outcome) == "verified as alice@example.com (signed for them by authsvc.example.com)"
    header = verification_of(outcome, "authsvc.example.net")
    assert header.delegated and header.verified
    assert str(header).startswith('verified;sender="sip:alice@example.com";signer=')
    assert str(header).endswith(";by=authsvc.example.net;delegated")
    assert parse_verification(str(header)) == header


def test_a_marker_that_is_not_a_host_is_refused_or_ignored() -> None:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    from sipcert.errors import ConfigError

    with pytest.raises(ConfigError):
        generate_identity(ALICE, now=NOW, delegated_by="evil host")
    cert = generate_identity(ALICE, now=NOW).certificate
    forged = x509.Name(
        [
            *cert.subject,
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, DELEGATED_PREFIX + "a b"),
        ]
    )
    assert delegated_by(_with_subject(cert, forged)) is None


def _with_subject(cert, name):  # type: ignore[no-untyped-def]
    """A throw-away certificate with ``name`` as subject (its signature is not the point)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
        .sign(key, hashes.SHA256())
    )


@pytest.mark.parametrize(
    "value",
    [
        "",
        ";by=x",
        "verified;by",  # by without a value is not a host
        'verified;sender="a"b',
        "verified;signer=ABC",
        "verified;by=a;by=b",
        "verified;;",
        "ver ified",
    ],
)
def test_malformed_verification_values(value: str) -> None:
    with pytest.raises(InputError):
        parse_verification(value)


def test_unknown_verification_parameters_are_ignored() -> None:
    parsed = parse_verification('signer-not-enrolled ; sender = "sip:b@x" ; future=1')
    assert parsed == Verification("signer-not-enrolled", sender="sip:b@x")
    assert not parsed.verified


@given(
    result=st.sampled_from(["verified", "not-protected", "signer-not-enrolled", "bad-signature"]),
    sender=st.one_of(
        st.none(), st.from_regex(r"sip:[a-z0-9]{1,10}@[a-z]{1,10}\.com", fullmatch=True)
    ),
    signer=st.one_of(st.none(), st.from_regex(r"[0-9a-f]{64}", fullmatch=True)),
    by=st.one_of(st.none(), st.from_regex(r"[a-z]{1,10}(\.[a-z]{1,10}){0,3}", fullmatch=True)),
    delegated=st.booleans(),
)
def test_verification_round_trips(
    result: str, sender: str | None, signer: str | None, by: str | None, delegated: bool
) -> None:
    value = Verification(result, sender, signer, by, delegated)
    assert parse_verification(str(value)) == value


def test_a_content_part_as_the_phone_sent_it_parses() -> None:
    """The exact bytes SIPp sends in the end-to-end test (LF line ends, as SIPp writes them)."""
    raw = (
        b"Content-Type: multipart/mixed;boundary=sipcert-b1\r\n\r\n"
        b"--sipcert-b1\r\nContent-Type: text/plain\r\n\r\nHello Bob\r\n--sipcert-b1\r\n"
        b'Content-Type: message/external-body; access-type="URL"; URL="'
        + FILL.encode()
        + b'"\r\n\r\n'
        b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n"
        b"Content-ID: <p1@example.com>\r\n\r\n--sipcert-b1--\r\n"
    )
    content, ref = parse_request_body(parse_mime_part(raw), FILL, NOW)
    assert content.body == b"Hello Bob"
    assert ref.content_id == "<p1@example.com>"
