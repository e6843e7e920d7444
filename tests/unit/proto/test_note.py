"""C2SP signed-note and tlog-cosignature v1: the Go reference vectors, then edge cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipcert.errors import InputTooLargeError, LogFormatError, ProofError
from sipcert.proto import note

GO = json.loads((Path(__file__).parent / "vectors/tlog/go-note.json").read_text())
TEXT = GO["text"].encode()
SIGNED = TEXT + b"\n" + GO["signature_line"].encode()


def test_go_vkey_parses_and_round_trips() -> None:
    verifier = note.Verifier.parse(GO["vkey"])
    assert verifier.name == "PeterNeumann"
    assert verifier.alg == note.ALG_ED25519
    assert verifier.key_id == 0xC74F20A3
    assert verifier.vkey == GO["vkey"]


def test_go_skey_signs_exactly_the_published_line() -> None:
    signer = note.Signer.parse(GO["skey"])
    assert signer.skey == GO["skey"]
    assert signer.verifier.vkey == GO["vkey"]
    assert "AYEK" not in repr(signer)
    assert note.sign_note(TEXT, [signer]).to_bytes() == SIGNED


def test_go_note_opens() -> None:
    opened = note.open_note(SIGNED, [note.Verifier.parse(GO["vkey"])])
    assert opened.note.text == TEXT
    assert [v.name for v in opened.verified] == ["PeterNeumann"]


def test_tampered_note_is_refused() -> None:
    verifier = note.Verifier.parse(GO["vkey"])
    with pytest.raises(ProofError, match="does not verify"):
        note.open_note(SIGNED.replace(b"cryptography", b"cryptographY"), [verifier])


def test_unknown_keys_are_ignored_and_one_known_is_required() -> None:
    verifier = note.Verifier.parse(GO["vkey"])
    other = note.Signer.generate("example.com/other")
    extra = note.parse_note(SIGNED).with_signatures([other.sign(TEXT)])
    assert note.open_note(extra.to_bytes(), [verifier]).verified == (verifier,)
    with pytest.raises(ProofError, match="no signature by a trusted key"):
        note.open_note(SIGNED, [other.verifier])
    # Same name and ID as a known key but another key: "MUST verify", and it fails.
    forged = note.NoteSignature("PeterNeumann", 0xC74F20A3, other.sign(TEXT).signature)
    with pytest.raises(ProofError):
        note.open_note(note.Note(TEXT, (forged,)), [verifier])


def test_duplicate_known_signature_is_refused() -> None:
    parsed = note.parse_note(SIGNED)
    doubled = note.Note(TEXT, parsed.signatures * 2)
    with pytest.raises(ProofError, match="two signatures"):
        note.open_note(doubled.to_bytes(), [note.Verifier.parse(GO["vkey"])])


def test_cosignature_v1_message_and_verification() -> None:
    # tlog-cosignature §Ed25519 signed message, its example.
    checkpoint = (
        b"example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    )
    assert note.cosignature_message(1679315147, checkpoint) == (
        b"cosignature/v1\ntime 1679315147\n" + checkpoint
    )
    witness = note.Signer.generate("witness.example/w1", note.ALG_COSIGNATURE_V1)
    log = note.Signer.generate("example.com/behind-the-sofa")
    signed = note.sign_note(checkpoint, [log]).with_signatures([witness.sign(checkpoint, 1700)])
    opened = note.open_note(signed.to_bytes(), [log.verifier, witness.verifier])
    assert opened.timestamps == {witness.verifier.vkey: 1700}
    # The key ID uses type 0x04, so a 0x01 verifier of the same key does not match it.
    assert witness.verifier.key_id != note.key_id(
        "witness.example/w1", 1, witness.verifier.public_key
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"no blank line\n\xe2\x80\x94 a AAAA\n", "no blank line"),
        (b"text\n\n\xe2\x80\x94 a AAAAAAAA", "ends with a newline"),
        (b"text\n\n- a AAAAAAAA\n", "em dash"),
        (b"text\n\n\xe2\x80\x94 a+b AAAAAAAA\n", "key name"),
        (b"text\n\n\xe2\x80\x94 a AAAA\n", "key ID and a signature"),
        (b"text\n\n\xe2\x80\x94 a AAAAAAA\n", "base64"),
        (b"text\n\n\xe2\x80\x94 aAAAAAAAA\n", "name"),
        (b"te\x01xt\n\n\xe2\x80\x94 a AAAAAAAA\n", "control character"),
        (b"\xff\n\n\xe2\x80\x94 a AAAAAAAA\n", "UTF-8"),
        (b"text\n\n\xe2\x80\x94 a AAAAAAB=\n", "canonical"),
    ],
)
def test_malformed_notes_are_refused(raw: bytes, message: str) -> None:
    with pytest.raises(LogFormatError, match=message):
        note.parse_note(raw)


def test_oversized_notes_are_refused() -> None:
    with pytest.raises(InputTooLargeError):
        note.parse_note(b"x" * (note.MAX_NOTE_SIZE + 1))
    line = GO["signature_line"].encode()
    with pytest.raises(InputTooLargeError, match="signatures"):
        note.parse_note(TEXT + b"\n" + line * (note.MAX_SIGNATURES + 1))
    # ...but signed-note's minimum of 16 signatures is accepted.
    assert len(note.parse_note(TEXT + b"\n" + line * 16).signatures) == 16


@pytest.mark.parametrize(
    "vkey",
    [
        "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # wrong ID
        "PeterNeumann+c74f20a3+AhpC2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # type 0x02
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10",  # short
        "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # upper hex
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # space
        "PeterNeumann+c74f20a3",
    ],
)
def test_bad_vkeys_are_refused(vkey: str) -> None:
    with pytest.raises(LogFormatError):
        note.Verifier.parse(vkey)


def test_sign_note_refuses_bad_text() -> None:
    signer = note.Signer.generate("a.example")
    for text in (b"no newline", b"\nleading", b"a\n\nb\n"):
        with pytest.raises(LogFormatError):
            note.sign_note(text, [signer])
    with pytest.raises(LogFormatError):
        note.sign_note(b"a\n", [])


names = st.text(st.characters(codec="utf-8", exclude_categories=("Z", "C")), min_size=1).filter(
    lambda s: "+" not in s and not any(c.isspace() for c in s)
)
lines = st.text(st.characters(codec="utf-8", exclude_categories=("C",)), min_size=1).filter(
    lambda s: "\n" not in s
)


@given(name=names, body=st.lists(lines, min_size=1, max_size=4))
def test_signed_notes_round_trip(name: str, body: list[str]) -> None:
    text = ("\n".join(body) + "\n").encode()
    signer = note.Signer.generate(name)
    signed = note.sign_note(text, [signer])
    assert note.parse_note(signed.to_bytes()) == signed
    assert note.open_note(signed.to_bytes(), [signer.verifier]).note.text == text
    assert note.Verifier.parse(signer.verifier.vkey) == signer.verifier


@given(raw=st.binary(max_size=300))
def test_parse_note_never_leaks_a_low_level_error(raw: bytes) -> None:
    try:
        parsed = note.parse_note(raw)
    except LogFormatError:
        return
    assert parsed.to_bytes() == raw


def test_a_remembered_verification_answers_only_for_the_exact_bytes() -> None:
    """issue 13: verifications are memoised by key, text and signature, nothing looser."""
    signer = note.Signer.generate("log.example")
    other = note.Signer.generate("log.example")
    text = b"log.example\n7\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
    signature = note.sign_note(text, [signer]).signatures[0].signature
    assert signer.verifier.verify(text, signature) == 0
    assert signer.verifier.verify(text, signature) == 0  # remembered, same answer
    hits = note._verify.cache_info().hits
    tampered = bytes([signature[0] ^ 1]) + signature[1:]
    assert signer.verifier.verify(text, tampered) is None
    assert signer.verifier.verify(text.replace(b"7", b"8"), signature) is None
    assert other.verifier.verify(text, signature) is None  # same name, another key
    assert note._verify.cache_info().hits == hits  # none of those was a hit
    long_text = text + b"x" * note._MEMO_TEXT + b"\n"
    long_signature = note.sign_note(long_text, [signer]).signatures[0].signature
    assert signer.verifier.verify(long_text, long_signature) == 0  # checked, not kept
    assert signer.verifier.verify(bytearray(text), signature) == 0
