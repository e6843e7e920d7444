"""What a sender writes through frames (``cms._Frame``) and the one-pass S/MIME writer
equals, octet for octet, what the general builders write from the same values."""

from __future__ import annotations

import datetime
import hashlib
import itertools
import os
from collections.abc import Callable, Iterator

import pytest
from asn1crypto import cms as asn1_cms
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipcert.errors import CMSError, MIMEError
from sipcert.proto import cms, mime, smime
from sipcert.proto.mime import MimePart, build_multipart, format_content_type
from tests.factories import make_identity, rsa_identity

SLOW = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=40)
#: Octets a frame's constant pieces must escape: "%" most of all.
OCTETS = st.binary(min_size=1, max_size=40).map(lambda b: b + b"%")
TIMES = st.datetimes(
    min_value=datetime.datetime(1950, 1, 1),
    max_value=datetime.datetime(2200, 1, 1),
    timezones=st.just(datetime.UTC),
)
CAPABILITIES = st.lists(st.sampled_from(["aes128_gcm", "aes256_cbc", "rsaes_oaep"]), max_size=3)


@given(ias=OCTETS, size=st.integers(1, 600), how=st.sampled_from(["rsa-oaep", "rsa-pkcs1v15"]))
@SLOW
def test_ktri_frame_writes_what_the_builder_writes(ias: bytes, size: int, how: str) -> None:
    value = os.urandom(size)
    assert cms._ktri_frame(ias, how, size).fill(value) == cms._ktri_der(ias, how, value)


@given(
    ias=OCTETS,
    oid=st.sampled_from([cms._OID["ec"], cms._X25519_OID, cms._X448_OID]),
    scheme=st.sampled_from([cms._STD_DH_SHA256, cms._STD_DH_SHA384, cms._HKDF_SHA256]),
    wrap=st.sampled_from(["aes128_wrap", "aes256_wrap"]),
    point=st.binary(min_size=1, max_size=200),
    wrapped=st.binary(min_size=1, max_size=48),
)
@SLOW
def test_kari_frame_writes_what_the_builder_writes(
    ias: bytes, oid: str, scheme: str, wrap: str, point: bytes, wrapped: bytes
) -> None:
    frame = cms._kari_frame(ias, oid, scheme, wrap, (len(point), len(wrapped)))
    assert frame.fill(point, wrapped) == cms._kari_der(ias, oid, scheme, wrap, point, wrapped)


@given(
    nonce=st.binary(min_size=12, max_size=12), name=st.sampled_from(["aes128_gcm", "aes256_gcm"])
)
def test_gcm_algorithm_frame_writes_what_the_builder_writes(nonce: bytes, name: str) -> None:
    assert cms._gcm_algorithm_frame(name).fill(nonce) == cms._gcm_algorithm_der(name, nonce)


@given(
    announced=OCTETS,
    digest=st.sampled_from(["sha256", "sha384", "sha512"]),
    when=st.none() | TIMES,
    data=st.data(),
)
@SLOW
def test_signed_data_frames_write_what_the_builders_write(
    announced: bytes, digest: str, when: datetime.datetime | None, data: st.DataObject
) -> None:
    """signingTime sorts before messageDigest: the frame keeps the values' order."""
    values = [hashlib.new(digest, data.draw(st.binary())).digest()]
    if when is not None:
        values.append(cms._der_time(when))
    sizes = tuple(len(v) for v in values)
    assert cms._attributes_frame(announced, sizes).fill(*values) == cms._signed_attributes(
        announced, *values
    )
    cert_der, ias = data.draw(OCTETS), data.draw(OCTETS)
    signature = data.draw(st.binary(min_size=1, max_size=600))
    kind = data.draw(st.sampled_from(["rsa", "rsa-pss", "ecdsa"]))
    frame = cms._signed_data_frame(cert_der, ias, digest, kind, announced, (*sizes, len(signature)))
    assert frame.fill(*values, signature) == cms._signed_data_der(
        cert_der, ias, digest, kind, announced, *values, signature
    )


def test_a_frame_whose_structure_depends_on_its_values_is_refused() -> None:
    def sorted_pair(a: bytes, b: bytes) -> bytes:
        return b"".join(sorted((b"\x30" + a, b"\x30" + b)))

    with pytest.raises(CMSError, match="depends on its values"):
        cms._Frame(sorted_pair, 2, 2)
    with pytest.raises(CMSError, match="depends on its values"):
        cms._Frame(lambda a: a, 0)
    assert cms._Frame(lambda a, b: b + a + b"%", 1, 2).fill(b"a", b"bc") == b"bca%"


def _general_signed_data(
    content: bytes, key: object, cert: object, digest: str, kind: str, signature: bytes,
    when: datetime.datetime | None, capabilities: list[str] | None,
) -> tuple[bytes, bytes]:  # fmt: skip
    """(SignedData, the attributes signed) as the general builders write them."""
    cert_der, _, ias, _ = cms._recipient(cert)
    announced = cms._OUR_CAPABILITIES if capabilities is None else cms._announce(capabilities)
    values = [hashlib.new(digest, content).digest()]
    if when is not None:
        values.append(cms._der_time(when))
    der = cms._signed_data_der(cert_der, ias, digest, kind, announced, *values, signature)
    return der, cms._signed_attributes(announced, *values)


@given(
    content=st.binary(max_size=300),
    digest=st.sampled_from(["sha256", "sha384", "sha512"]),
    when=st.none() | TIMES,
    capabilities=st.none() | CAPABILITIES,
)
@SLOW
def test_sign_detached_is_the_general_builder_octet_for_octet(
    content: bytes,
    digest: cms.DigestName,
    when: datetime.datetime | None,
    capabilities: list[str] | None,
) -> None:
    """RSA PKCS#1 v1.5 is deterministic: the same signature on both sides; ECDSA's is
    random, so the general builder gets the one the output carries, which must verify."""
    key, cert = rsa_identity("alice@example.com")
    der = cms.sign_detached(
        content, key, cert, digest=digest, signing_time=when, capabilities=capabilities
    )
    rsa_hash = cms._DIGESTS[digest]()
    _, signed = _general_signed_data(content, key, cert, digest, "rsa", b"", when, capabilities)
    signature = key.sign(signed, padding.PKCS1v15(), rsa_hash)
    expected, _ = _general_signed_data(
        content, key, cert, digest, "rsa", signature, when, capabilities
    )
    assert der == expected
    ec_key, ec_cert = make_identity("bob@example.com", "ec-p256")
    assert isinstance(ec_key, ec.EllipticCurvePrivateKey)
    der = cms.sign_detached(
        content, ec_key, ec_cert, digest=digest, signing_time=when, capabilities=capabilities
    )
    info = asn1_cms.ContentInfo.load(der)["content"]["signer_infos"][0]
    signature = info["signature"].native
    expected, signed = _general_signed_data(
        content, ec_key, ec_cert, digest, "ecdsa", signature, when, capabilities
    )
    assert der == expected
    ec_key.public_key().verify(signature, signed, ec.ECDSA(cms._DIGESTS[digest]()))


@pytest.mark.parametrize("kinds", [("rsa2048",), ("ec-p256", "ec-p384", "rsa2048")])
@pytest.mark.parametrize("algorithms", [cms.DEFAULT_ALGORITHMS, cms.LEGACY_ALGORITHMS])
def test_each_recipient_info_is_the_general_builder_on_its_values(
    kinds: tuple[str, ...], algorithms: cms.EnvelopeAlgorithms
) -> None:
    """The fresh values (encrypted key; ephemeral point and wrapped key) read back from
    the envelope give the same RecipientInfo through the general builders."""
    certs = [make_identity("carol@example.com", kind, slot)[1] for slot, kind in enumerate(kinds)]
    der = cms.encrypt_enveloped(b"hello", certs, algorithms=algorithms)
    envelope = asn1_cms.ContentInfo.load(der)["content"]
    written = {bytes(info.dump()) for info in envelope["recipient_infos"]}
    expected = set()
    for info in envelope["recipient_infos"]:
        chosen = info.chosen
        if info.name == "ktri":
            ias = bytes(chosen["rid"].chosen.dump())
            expected.add(cms._ktri_der(ias, algorithms.rsa, chosen["encrypted_key"].native))
        else:
            rek = chosen["recipient_encrypted_keys"][0]
            point = chosen["originator"].chosen["public_key"].native
            algorithm = chosen["key_encryption_algorithm"]
            expected.add(
                cms._kari_der(
                    bytes(rek["rid"].chosen.dump()),
                    cms._OID["ec"],
                    algorithm["algorithm"].dotted,
                    "aes128_wrap",
                    point,
                    rek["encrypted_key"].native,
                )
            )
    assert written == expected
    assert len(written) == len(kinds)


def _counter(prefix: str) -> Callable[[], str]:
    numbers = itertools.count()
    return lambda: f"{prefix}{next(numbers):032x}"


@pytest.fixture
def fixed_randomness(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], None]]:
    """Makes every fresh value of sending repeat when ``reset()`` is called: the CEK and
    nonce, the ephemeral EC key, the boundary (the RSA PKCS#1 v1.5 signature repeats)."""
    ephemeral = ec.derive_private_key(12345, ec.SECP256R1())

    def reset() -> None:
        stream = hashlib.shake_256(b"seed").digest(4096)
        offset = itertools.count(0, 64)
        boundary = _counter("sipcert-")
        monkeypatch.setattr(cms, "_random", lambda n: stream[next(offset) :][:n])
        monkeypatch.setattr(cms.ec, "generate_private_key", lambda curve: ephemeral)
        monkeypatch.setattr(mime, "new_boundary", boundary)
        monkeypatch.setattr(smime, "new_boundary", boundary)

    yield reset


PARTS = st.builds(
    MimePart,
    content_type=st.sampled_from(["text/plain; charset=utf-8", "application/sdp", "message/cpim"]),
    body=st.binary(max_size=200) | st.just(b"--sipcert-" + b"0" * 32 + b"\r\n"),
    headers=st.sampled_from([(), (("Content-Transfer-Encoding", "base64"),)]),
)


@given(
    part=PARTS,
    digest=st.sampled_from(["sha256", "sha384", "sha512"]),
    when=st.none() | TIMES,
    gcm=st.booleans(),
)
@settings(deadline=None, max_examples=30, suppress_health_check=list(HealthCheck))
def test_sign_and_encrypt_is_encrypt_of_sign_octet_for_octet(
    fixed_randomness: Callable[[], None],
    part: MimePart,
    digest: cms.DigestName,
    when: datetime.datetime | None,
    gcm: bool,
) -> None:
    """With the same fresh values, the one-pass writer gives what the general path (a
    multipart/signed object, build_multipart, then its bytes) gives; a boundary that
    occurs in the part (the body above holds the first one drawn) is drawn again."""
    key, cert = rsa_identity("alice@example.com")
    to = [make_identity("carol@example.com", "ec-p256", 0)[1]]
    algorithms = cms.DEFAULT_ALGORITHMS if gcm else cms.LEGACY_ALGORITHMS
    fixed_randomness()
    fast = smime.sign_and_encrypt(
        part, key, cert, to, digest=digest, signing_time=when, algorithms=algorithms
    )
    fixed_randomness()
    signed = smime.sign(part, key, cert, digest=digest, signing_time=when)
    assert fast == smime.encrypt(signed, to, algorithms=algorithms)


@given(part=PARTS, signature=st.binary(max_size=200), collide=st.booleans())
def test_signed_bytes_are_those_of_the_multipart_sign_builds(
    part: MimePart, signature: bytes, collide: bool
) -> None:
    """A first boundary that occurs in the signature is drawn again, as build_multipart does."""
    first, second = "sipcert-" + "1" * 32, "sipcert-" + "f" * 32
    if collide:
        signature += b"--" + first.encode()
    draws = iter([first, second])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(smime, "new_boundary", lambda: next(draws))
        fast = smime._signed_bytes(part.to_bytes(), signature, "sha384")
    signature_part = MimePart(smime.SIGNATURE_CONTENT_TYPE, signature, smime._SIGNATURE_HEADERS)
    general = build_multipart(
        "signed",
        [part, signature_part],
        boundary=second if collide or b"--" + first.encode() in part.to_bytes() else first,
        params=smime._signed_params("sha384"),
    )
    assert fast == general.to_bytes()


def _reference_build_multipart(
    subtype: str, parts: list[MimePart], boundary: str, params: dict[str, str]
) -> MimePart:
    """build_multipart as it was before its Content-Type check was memoized."""
    encoded = [part.to_bytes() for part in parts]
    mime._check_boundary(boundary)
    all_params = {k.lower(): v for k, v in params.items()}
    if "boundary" in all_params:
        raise MIMEError("pass the boundary as the boundary argument, not in params")
    all_params["boundary"] = boundary
    dash = b"--" + boundary.encode("ascii")
    body = dash + b"\r\n" + (b"\r\n" + dash + b"\r\n").join(encoded) + b"\r\n" + dash + b"--\r\n"
    return MimePart(format_content_type(f"multipart/{subtype.lower()}", all_params), body)


NAMES = st.text(alphabet=st.characters(codec="ascii"), min_size=0, max_size=8)


@given(
    subtype=st.sampled_from(["signed", "mixed", "Signed"]),
    params=st.dictionaries(NAMES | st.sampled_from(["protocol", "micalg", "x "]), NAMES, max_size=3)
    | st.dictionaries(st.sampled_from(["protocol", "micalg"]), st.text(max_size=6), max_size=2),
    boundary=st.from_regex(mime._BOUNDARY_RE, fullmatch=True),
)
@settings(max_examples=400)
def test_build_multipart_checks_as_the_general_path(
    subtype: str, params: dict[str, str], boundary: str
) -> None:
    """Through the memoized Content-Type or not, the same part or the same error."""
    parts = [MimePart("text/plain", b"hello")]
    try:
        expected: MimePart | str = _reference_build_multipart(subtype, parts, boundary, params)
    except MIMEError as exc:
        expected = f"MIMEError: {exc}"
    try:
        got: MimePart | str = build_multipart(subtype, parts, boundary=boundary, params=params)
    except MIMEError as exc:
        got = f"MIMEError: {exc}"
    assert got == expected
    if isinstance(got, MimePart):
        assert got.params["boundary"] == boundary


def test_rsa_public_key_encrypt_is_one_modulus_long() -> None:
    """The ktri frame is per length: OAEP output is always the modulus length (RFC 8017)."""
    _, cert = rsa_identity("carol@example.com")
    key = cert.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    sizes = {len(cms._ktri(b"\x30\x00", key, os.urandom(16), "rsa-oaep")) for _ in range(20)}
    assert len(sizes) == 1
