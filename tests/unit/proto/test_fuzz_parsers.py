"""Every parser of ``sipcert.proto`` fed mutated input: only a SipCertError may come out,
and no warning (issue 8: "audit every parser for exceptions that escape the error tree").

Each test starts from a valid input -- a protected SIP body (draft §4.5 step 5), a Digest
``Authorization`` (RFC 7616 §3.4), an RFC 4483 reference, an upload (draft §5.1) -- and
applies a few byte edits (overwrite, insert, delete, truncate) drawn by Hypothesis. The
parsers' own per-module property tests stay beside them; these cover the paths that
reach deepest: a valid envelope around a damaged inner body, a valid signature beside a
damaged signer certificate, and the whole ``open_protected`` chain.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipcert.errors import SipCertError
from sipcert.proto import cms, mime, sipsec, smime
from sipcert.proto import indirection as ind
from sipcert.proto import store as store_core
from sipcert.proto.aor import parse_aor
from sipcert.proto.certs import certificate_der
from sipcert.proto.digest import (
    DigestServer,
    StoredCredential,
    build_authorization,
    parse_challenges,
)
from sipcert.proto.mime import MimePart
from tests.factories import rsa_identity

NOW = datetime.now(UTC)
ALICE = parse_aor("alice@example.com")
ALICE_KEY, ALICE_CERT = rsa_identity("alice@example.com")
BOB_KEY, BOB_CERT = rsa_identity("bob@example.com")
CONTENT = MimePart(content_type="text/plain", body=b"hello Bob")
SIGNED = smime.sign(CONTENT, ALICE_KEY, ALICE_CERT)
SIGNATURE = mime.parse_multipart(SIGNED.content_type, SIGNED.body).parts[1].body
STORE_URL = "https://example.com/search-cgi?email=alice%40example.com"
PROTECTED = sipsec.protect(CONTENT, ALICE_KEY, ALICE_CERT, [BOB_CERT], certificate_url=STORE_URL)
REFERENCE = next(
    p
    for p in mime.parse_multipart(PROTECTED.content_type, PROTECTED.body).parts
    if p.media_type == "message/external-body"
)
SERVER = DigestServer(b"k" * 32, "example.com")
CHALLENGES = SERVER.challenges(1000.0)
AUTHORIZATION = build_authorization(
    parse_challenges(CHALLENGES)[0],
    method="PUT",
    uri="/search-cgi?email=bob%40example.com",
    username="bob",
    password="pw",
    nc=1,
    cnonce="0a4f113b",
)
#: The example count comes from the profile (tests/conftest.py): 100 derandomized in
#: ``make test``, 500 fresh ones per run in ``make test-random``.
FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: Half the edits land in the first 64 bytes, where DER puts the version, serial and the
#: lengths that everything after depends on; half change a single byte.
_position = st.one_of(st.integers(0, 63), st.integers(0))
_edit = st.tuples(
    st.sampled_from(["set", "insert", "delete", "truncate"]),
    _position,
    st.one_of(st.binary(min_size=1, max_size=1), st.binary(min_size=1, max_size=8)),
)
edits = st.lists(_edit, min_size=1, max_size=4)


def mutate(data: bytes, changes: list[tuple[str, int, bytes]]) -> bytes:
    """``data`` with ``changes`` applied, positions taken modulo the current length."""
    out = bytearray(data)
    for kind, where, junk in changes:
        at = where % (len(out) + 1)
        if kind == "set":
            out[at : at + len(junk)] = junk
        elif kind == "insert":
            out[at:at] = junk
        elif kind == "delete":
            del out[at : at + len(junk)]
        else:
            del out[at:]
    return bytes(out)


def only_sipcert_errors(work: Callable[[], object]) -> None:
    """Run ``work``: it may succeed or raise a SipCertError, nothing else, and never warn."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            work()
        except SipCertError:
            pass
    assert [str(w.message) for w in caught] == []


def _open(body: MimePart) -> None:
    outcome = sipsec.open_protected(body, BOB_KEY, BOB_CERT, ALICE, NOW)
    _ = (outcome.text, outcome.signer_sha256, outcome.verified, outcome.needs_store_check)
    if not outcome.needs_store_check:
        sipsec.response_status(outcome, "MESSAGE")


def _envelope(inner: bytes) -> MimePart:
    """A valid envelope for Bob around ``inner`` (whatever it is)."""
    enveloped = cms.encrypt_enveloped(inner, [BOB_CERT])
    return MimePart(content_type=smime.ENVELOPED_CONTENT_TYPE, body=enveloped)


@given(edits)
@FUZZ
def test_mutated_protected_body(changes: list[tuple[str, int, bytes]]) -> None:
    body = MimePart(content_type=PROTECTED.content_type, body=mutate(PROTECTED.body, changes))
    only_sipcert_errors(lambda: _open(body))


@given(edits, st.booleans())
@FUZZ
def test_valid_envelope_around_a_mutated_signed_body(
    changes: list[tuple[str, int, bytes]], whole: bool
) -> None:
    if whole:  # headers and body of the inner entity
        inner = mutate(SIGNED.to_bytes(), changes)
    else:  # a well-formed header, a damaged multipart/signed body
        header = f"Content-Type: {SIGNED.content_type}\r\n\r\n".encode()
        inner = header + mutate(SIGNED.body, changes)
    only_sipcert_errors(lambda: _open(_envelope(inner)))


@given(edits)
@FUZZ
def test_valid_signature_beside_a_mutated_signer_certificate(
    changes: list[tuple[str, int, bytes]],
) -> None:
    """The embedded certificate is outside the CMS signature: a sender controls it."""
    der = certificate_der(ALICE_CERT)
    signature = SIGNATURE.replace(der, mutate(der, changes))
    body = SIGNED.body.replace(SIGNATURE, signature)
    inner = MimePart(content_type=SIGNED.content_type, body=body).to_bytes()
    only_sipcert_errors(lambda: _open(_envelope(inner)))
    only_sipcert_errors(lambda: cms.verify_detached(signature, CONTENT.to_bytes()))


@given(edits)
@FUZZ
def test_mutated_enveloped_data(changes: list[tuple[str, int, bytes]]) -> None:
    enveloped = mutate(cms.encrypt_enveloped(CONTENT.to_bytes(), [BOB_CERT]), changes)
    only_sipcert_errors(lambda: cms.recipient_identifiers(enveloped))
    only_sipcert_errors(lambda: cms.decrypt_enveloped(enveloped, BOB_KEY, BOB_CERT))


@given(edits, edits)
@FUZZ
def test_mutated_content_indirection(
    type_changes: list[tuple[str, int, bytes]], body_changes: list[tuple[str, int, bytes]]
) -> None:
    content_type = mutate(REFERENCE.content_type.encode(), type_changes).decode("latin-1")

    def work() -> None:
        part = MimePart(
            content_type=content_type,
            body=mutate(REFERENCE.body, body_changes),
            headers=REFERENCE.headers,
        )
        reference = ind.parse_external_body(part)
        reference.expired(NOW)
        _ = reference.host

    only_sipcert_errors(work)


@given(edits)
@FUZZ
def test_mutated_digest_authorization(changes: list[tuple[str, int, bytes]]) -> None:
    value = mutate(AUTHORIZATION.encode(), changes).decode("latin-1")
    only_sipcert_errors(
        lambda: SERVER.authenticate(
            value,
            lambda name: StoredCredential(password="pw"),
            method="PUT",
            request_uri="/search-cgi?email=bob%40example.com",
            now=1001.0,
        )
    )
    only_sipcert_errors(lambda: parse_challenges([value, *CHALLENGES]))


@given(edits, st.sampled_from(["application/pkix-cert", "application/x-x509-user-cert", None]))
@FUZZ
def test_mutated_upload(changes: list[tuple[str, int, bytes]], content_type: str | None) -> None:
    body = mutate(certificate_der(ALICE_CERT), changes)
    only_sipcert_errors(lambda: store_core.parse_upload(body, content_type, max_size=16384))
