"""The lean DER reader of proto.cms answers exactly as the asn1crypto path, or defers to it.

The corpus (tests/unit/proto/vectors/cms, README there) is every envelope and signature the
four peers (openssl, gpgsm, NSS cmsutil, BouncyCastle) made in tests/integration/cms; our own
output is made here. On every input, and on Hypothesis mutations of them (truncation, bit
flips, changed octets, inserted and removed octets -- lengths included), the lean reader's
answer is the asn1crypto path's success or "defer"; it never accepts what that path refuses,
and the public functions keep that path's precise errors (tests/cmslean.py).
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipcert.errors import NotRecipientError, SignatureError
from sipcert.proto import cms, der, smime
from sipcert.proto.mime import MimePart, parse_multipart
from tests.cmslean import DEFER, Vector, check_envelope, check_signed, lean_decrypt, load_corpus
from tests.factories import KeyKind, make_identity

CORPUS = load_corpus(Path(__file__).parent / "vectors" / "cms")
ENVELOPES = [v for v in CORPUS if v.kind == "envelope"]
SIGNED = [v for v in CORPUS if v.kind == "signed"]
INNER = MimePart("text/plain; charset=utf-8", b"lean and general agree\r\n")


def _is_ber(data: bytes) -> bool:
    return data[1] == 0x80


def test_the_corpus_holds_every_peer() -> None:
    for peer in ("openssl", "gpgsm", "nss", "bc"):
        assert any(v.name.startswith(f"{peer}-env") for v in ENVELOPES), peer
        assert any(v.name.startswith(f"{peer}-sig") for v in SIGNED), peer
    assert len(ENVELOPES) > 150


@pytest.mark.parametrize("vector", ENVELOPES, ids=lambda v: v.name)
def test_peer_envelopes_agree_and_der_ones_are_read_lean(vector: Vector) -> None:
    assert vector.cert is not None
    lean = check_envelope(vector.der, vector.key, vector.cert)
    if _is_ber(vector.der):
        assert lean == DEFER  # BER (streamed) is the asn1crypto path's
    else:
        assert lean != DEFER, "a DER envelope of a peer was not read by the lean reader"


@pytest.mark.parametrize("vector", SIGNED, ids=lambda v: v.name)
def test_peer_signatures_agree_and_der_ones_are_read_lean(vector: Vector) -> None:
    lean = check_signed(vector.der, vector.content, vector.certificates)
    if _is_ber(vector.der):
        assert lean == DEFER
    else:
        assert lean != DEFER, "a DER SignedData of a peer was not read by the lean reader"


def _ours(kind: KeyKind, algorithms: cms.EnvelopeAlgorithms) -> tuple[MimePart, list]:  # type: ignore[type-arg]
    key, cert = make_identity("alice@example.com", kind)
    devices = [make_identity("carol@example.com", k, 3) for k in ("rsa2048", "ec-p256", "ec-p384")]
    body = smime.sign_and_encrypt(
        INNER,
        key,
        cert,
        [c for _, c in devices],
        algorithms=algorithms,  # type: ignore[arg-type]
    )
    return body, devices


@pytest.mark.parametrize("kind", ["rsa2048", "ec-p256"])
@pytest.mark.parametrize(
    "algorithms",
    [cms.DEFAULT_ALGORITHMS, cms.LEGACY_ALGORITHMS, cms.EnvelopeAlgorithms("aes256-gcm")],
    ids=["gcm-oaep", "cbc-pkcs1v15", "aes256-gcm"],
)
def test_our_own_bodies_are_read_lean(kind: KeyKind, algorithms: cms.EnvelopeAlgorithms) -> None:
    body, devices = _ours(kind, algorithms)
    for key, cert in devices:
        inner = check_envelope(body.body, key, cert)
        assert inner != DEFER
        inner_part = smime.decrypt(body, key, cert)
        signed = parse_multipart(inner_part.content_type, inner_part.body)
        assert check_signed(signed.parts[1].body, signed.raw_parts[0]) != DEFER


def test_not_a_recipient_is_the_general_paths_precise_error() -> None:
    vector = next(v for v in ENVELOPES if not _is_ber(v.der))
    key, cert = make_identity("eve@example.com", "ec-p256")
    assert lean_decrypt(vector.der, key, cert) == DEFER
    with pytest.raises(NotRecipientError, match="not a recipient"):
        cms.decrypt_enveloped(vector.der, key, cert)


def test_an_entry_after_ours_of_no_recipient_kind_defers() -> None:
    """asn1crypto resolves the kind of every RecipientInfo: so must the lean reader."""
    vector = OUR_ENVELOPES[0]
    data = bytearray(vector.der)
    body = der.one(vector.der, der.children(vector.der, der.read_tlv(data, 0, len(data)))[1], 0x30)
    infos = der.children(vector.der, body)[1]
    last = der.children(vector.der, infos)[-1]
    data[last.start] = 0x18  # GeneralizedTime: no RecipientInfo alternative
    assert vector.cert is not None
    assert check_envelope(vector.der, vector.key, vector.cert) != DEFER
    assert check_envelope(bytes(data), vector.key, vector.cert) == DEFER


# --- the DER reader itself -----------------------------------------------------------------


@pytest.mark.parametrize(
    "encoding",
    [
        b"\x30\x80\x00\x00",  # indefinite length (BER)
        b"\x04\x81\x05abcde",  # long form for a short length
        b"\x04\x82\x00\x85" + b"a" * 0x85,  # a leading zero length octet
        b"\x1f\x22\x01\x00",  # high tag number form
        b"\x04\x05abc",  # runs past the end
        b"\x04",  # no length
        b"\x04\x85\x01\x00\x00\x00\x00",  # a length field longer than 4 octets
    ],
)
def test_the_der_reader_defers_on_anything_but_der(encoding: bytes) -> None:
    with pytest.raises(der.NotLean):
        der.read_tlv(encoding, 0, len(encoding))


def test_the_der_reader_reads_lengths_and_children() -> None:
    long = b"\x04\x81\x80" + b"x" * 0x80
    assert der.read_tlv(long, 0, len(long)) == der.TLV(0x04, 0, 3, 0x83)
    seq = b"\x30\x06\x02\x01\x05\x04\x01\xff"
    kids = der.children(seq, der.read_tlv(seq, 0, len(seq)))
    assert [k.tag for k in kids] == [0x02, 0x04]
    assert der.integer(seq, kids[0]) == 5
    with pytest.raises(der.NotLean):
        der.children(seq, kids[1])  # primitive


@pytest.mark.parametrize(
    ("content", "value"), [(b"\x00\x80", 128), (b"\xff\x7f", -129), (b"\x7f", 127), (b"\x80", -128)]
)
def test_der_integers(content: bytes, value: int) -> None:
    encoding = bytes([0x02, len(content)]) + content
    assert der.integer(encoding, der.read_tlv(encoding, 0, len(encoding))) == value


@pytest.mark.parametrize("content", [b"", b"\x00\x01", b"\xff\x80"])
def test_der_integers_not_minimal_defer(content: bytes) -> None:
    encoding = bytes([0x02, len(content)]) + content
    with pytest.raises(der.NotLean):
        der.integer(encoding, der.read_tlv(encoding, 0, len(encoding)))


# --- mutations -----------------------------------------------------------------------------


def _headers(data: bytes) -> list[int]:
    """Offsets of every TLV header of a DER structure (tag octet), depth first."""
    found: list[int] = []

    def walk(item: der.TLV) -> None:
        found.append(item.start)
        if item.tag & 0x20:
            for child in der.children(data, item):
                walk(child)

    walk(der.read_tlv(data, 0, len(data)))
    return found


#: Tags of the CMS structures read (universal and context-specific, both forms).
_TAGS = [0x02, 0x03, 0x04, 0x05, 0x06, 0x17, 0x18, 0x30, 0x31, 0x80, 0x81, 0xA0, 0xA1, 0xA2,
         0xA3, 0xA4, 0xA5]  # fmt: skip


@st.composite
def _mutated(draw: st.DrawFn, vectors: list[Vector]) -> tuple[Vector, bytes]:
    vector = draw(st.sampled_from(vectors))
    data = bytearray(vector.der)
    how = draw(st.sampled_from(["truncate", "flip", "set", "insert", "delete", "tag", "length"]))
    if how == "tag":
        # the structure, not the ciphertext: another tag, mostly one that CMS uses somewhere
        at = draw(st.sampled_from(_headers(vector.der)))
        data[at] = draw(st.sampled_from(_TAGS) | st.integers(0, 255))
        return vector, bytes(data)
    if how == "length":
        at = draw(st.sampled_from(_headers(vector.der))) + 1
        how = "set"
    else:
        at = draw(st.integers(0, len(data) - 1))
    if how == "truncate":
        del data[at:]
    elif how == "flip":
        data[at] ^= 1 << draw(st.integers(0, 7))
    elif how == "set":
        data[at] = draw(st.integers(0, 255))
    elif how == "insert":
        data.insert(at, draw(st.integers(0, 255)))
    else:
        del data[at]
    return vector, bytes(data)


def _our_vectors() -> tuple[list[Vector], list[Vector]]:
    """Envelopes and SignedData we make (RSA and EC, GCM and CBC, PSS), as vectors."""
    envelopes, signed = [], []
    for kind in ("rsa2048", "ec-p256"):
        for algorithms in (cms.DEFAULT_ALGORITHMS, cms.LEGACY_ALGORITHMS):
            body, devices = _ours(kind, algorithms)  # type: ignore[arg-type]
            for key, cert in devices:
                envelopes.append(Vector(f"ours-{kind}", "envelope", body.body, key=key, cert=cert))
        key, cert = make_identity("alice@example.com", kind)  # type: ignore[arg-type]
        for pss in (False, True) if kind == "rsa2048" else (False,):
            part = smime.sign(INNER, key, cert, rsa_pss=pss)  # type: ignore[arg-type]
            split = parse_multipart(part.content_type, part.body)
            signed.append(
                Vector(f"ours-{kind}", "signed", split.parts[1].body, content=split.raw_parts[0])
            )
    return envelopes, signed


OUR_ENVELOPES, OUR_SIGNED = _our_vectors()

_MUTATION_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@_MUTATION_SETTINGS
@given(_mutated([v for v in ENVELOPES if not _is_ber(v.der)] + OUR_ENVELOPES))
def test_mutated_envelopes_are_never_accepted_by_the_lean_reader_alone(
    case: tuple[Vector, bytes],
) -> None:
    vector, data = case
    assert vector.cert is not None
    check_envelope(data, vector.key, vector.cert)


@_MUTATION_SETTINGS
@given(_mutated([v for v in SIGNED if not _is_ber(v.der)] + OUR_SIGNED))
def test_mutated_signatures_are_never_accepted_by_the_lean_reader_alone(
    case: tuple[Vector, bytes],
) -> None:
    vector, data = case
    check_signed(data, vector.content, vector.certificates)


# --- SignedData read through the layout of one read before (cms._SignedLayout) -------------

#: Detached DER SignedData whose signer is found without extra certificates.
_LAYOUT_VECTORS = [
    v for v in SIGNED + OUR_SIGNED if not _is_ber(v.der) and v.content and not v.certificates
]


def _fresh_reading(data: bytes) -> object:
    """What the lean reader answers with no layout remembered (and remembers nothing)."""
    with mock.patch.object(cms, "_signed_layouts", cms._LRU(8)):
        try:
            return cms._lean_parse_signed(data, ())
        except cms._LEAN_FALLBACK:
            return DEFER


def _holes(data: bytes) -> list[tuple[int, int]]:
    layout = cms._signed_layouts.get(cms._layout_key(data))
    assert layout is not None, "no layout was remembered"
    ends = [offset + len(octets) for offset, octets in layout.segments]
    return list(zip(ends, [offset for offset, _ in layout.segments[1:]], strict=False))


def test_layouts_are_remembered_for_peers_and_ours() -> None:
    assert any(v.name.startswith("ours") for v in _LAYOUT_VECTORS)
    assert any(not v.name.startswith("ours") for v in _LAYOUT_VECTORS)
    for vector in _LAYOUT_VECTORS:
        cms._signed_layouts.clear()
        cms._lean_parse_signed(vector.der, ())
        holes = _holes(vector.der)
        assert len(holes) >= 2, vector.name  # at least a messageDigest and a signature
        assert cms._from_layout(vector.der) is not None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_layout_reads_what_a_fresh_reading_reads(data: st.DataObject) -> None:
    """Other octets in the holes, and sometimes one octet changed anywhere: the answer
    through the remembered layout is the answer of a reading without it."""
    vector = data.draw(st.sampled_from(_LAYOUT_VECTORS))
    cms._signed_layouts.clear()
    cms._lean_parse_signed(vector.der, ())
    mutated = bytearray(vector.der)
    for start, end in _holes(vector.der):
        mutated[start:end] = data.draw(st.binary(min_size=end - start, max_size=end - start))
    if data.draw(st.booleans()):
        at = data.draw(st.integers(0, len(mutated) - 1))
        mutated[at] = data.draw(st.integers(0, 255))
    candidate = bytes(mutated)
    try:
        through_layout: object = cms._lean_parse_signed(candidate, ())
    except cms._LEAN_FALLBACK:
        through_layout = DEFER
    assert through_layout == _fresh_reading(candidate)
    check_signed(candidate, vector.content)  # and the asn1crypto path agrees


@pytest.mark.parametrize("kind", ["rsa2048", "ec-p256"])
def test_a_layout_still_checks_every_message(kind: KeyKind) -> None:
    """Another message of the same sender goes through the layout, and its digest and
    signature are its own: a swapped content, a flipped signature bit are refused.

    ECDSA signs with RFC 6979 nonces here (the key is a fixed one too), so which messages
    give a signature of the first one's length is the same on every run: with random nonces
    a few tries found none about one run in four.
    """
    key, cert = make_identity("alice@example.com", kind)
    cms._signed_layouts.clear()
    deterministic = {
        name: ec.ECDSA(digest(), deterministic_signing=True)
        for name, digest in cms._DIGESTS.items()
    }
    with mock.patch.dict(cms._ECDSA, deterministic):
        first = cms.sign_detached(b"first message", key, cert)
        others = [cms.sign_detached(b"message %d" % n, key, cert) for n in range(16)]
    assert cms.verify_detached(first, b"first message") == cert
    for n, again in enumerate(others):
        text = b"message %d" % n
        if len(again) != len(first):
            continue  # an ECDSA signature one octet longer or shorter: another layout
        assert cms._from_layout(again) is not None
        assert cms.verify_detached(again, text) == cert
        with pytest.raises(SignatureError, match="messageDigest does not match"):
            cms.verify_detached(again, b"first message")
        flipped = bytearray(again)
        flipped[-1] ^= 1  # the last octet of the signature value
        with pytest.raises(SignatureError, match="does not verify"):
            cms.verify_detached(bytes(flipped), text)
        break
    else:
        pytest.fail("no second signature of the same length")


def test_no_layout_is_used_with_extra_certificates() -> None:
    key, cert = make_identity("alice@example.com", "ec-p256")
    signed = cms.sign_detached(b"content", key, cert)
    cms._signed_layouts.clear()
    cms._lean_parse_signed(signed, (cert,))
    assert cms._signed_layouts.get(cms._layout_key(signed)) is None
    with mock.patch.object(cms, "_from_layout", side_effect=AssertionError):
        cms._lean_parse_signed(signed, (cert,))
