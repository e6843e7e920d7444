"""The regex fast path of the Digest header parser (issue 13) answers exactly as the
step-by-step parser it skips: same values, same errors."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipcert.errors import DigestHeaderError
from sipcert.proto import digest

_TOKEN = st.text(alphabet="abcXYZ019!#$%&'*+-.^_`|~", min_size=1, max_size=8)
_QDTEXT = st.text(
    alphabet=st.sampled_from([*"\t !#az[]~", '"', "\\", "\x7f", "é", "\x00", ","]),
    max_size=10,
)
_OWS = st.sampled_from(["", " ", "\t", "  "])


@st.composite
def headers(draw: st.DrawFn) -> str:
    parts = []
    for _ in range(draw(st.integers(1, 6))):
        name = draw(_TOKEN)
        if draw(st.booleans()):
            value = draw(_TOKEN)
        else:
            raw = draw(_QDTEXT)
            escaped = draw(st.booleans())
            value = '"' + (re.sub(r'(["\\])', r"\\\1", raw) if escaped else raw) + '"'
        parts.append(f"{name}{draw(_OWS)}={draw(_OWS)}{value}{draw(_OWS)}")
    separator = draw(st.sampled_from([",", ", ", " ,", ",,", ", ,"]))
    scheme = draw(st.sampled_from(["Digest ", "digest\t", " Digest  ", "Basic ", "Digest"]))
    return scheme + separator.join(parts) + draw(st.sampled_from(["", ",", " ", ", "]))


def _outcome(text: str) -> object:
    try:
        items = digest._parse_items(text, "Authorization")
    except DigestHeaderError as exc:
        return ("error", str(exc))
    return [(i.scheme, i.token68, dict(i.params)) for i in items]


@given(headers())
def test_fast_and_slow_paths_agree(text: str) -> None:
    fast = _outcome(text)
    assert fast == _slow_outcome(text)


def _slow_outcome(text: str) -> object:
    """:func:`_outcome` with every fast path off: the step-by-step parser alone."""
    saved = digest._PLAIN_DIRECTIVE, digest._PLAIN_QUOTED_REST, digest._PLAIN_ITEM
    never = re.compile(r"(?!)")
    digest._PLAIN_DIRECTIVE, digest._PLAIN_QUOTED_REST, digest._PLAIN_ITEM = never, never, never
    try:
        return _outcome(text)
    finally:
        digest._PLAIN_DIRECTIVE, digest._PLAIN_QUOTED_REST, digest._PLAIN_ITEM = saved


@given(headers())
def test_the_whole_header_path_is_taken_for_the_usual_spelling(text: str) -> None:
    """Where the one-regex path reads a header, the general parser reads the same item."""
    item = digest._parse_plain_item(text)
    if item is not None:
        assert _slow_outcome(text) == [(item.scheme, None, item.params)]


_PIECES = st.sampled_from([*'Digest a=b", \t\\,=x', "é", "\n", "Digest ", "a=b, "])


@given(st.lists(_PIECES, max_size=20).map("".join))
def test_any_text_reads_alike(text: str) -> None:
    assert _outcome(text) == _slow_outcome(text)


def test_what_clients_send_takes_the_whole_header_path() -> None:
    sent = (
        'Digest username="u1", realm="example.com", uri="/search-cgi?sip=u1%40example.com", '
        'algorithm=SHA-256, nonce="AAABojO_z7ZMU_moUlsCx8iuRU2A0ITEcsn8wbp0-M-Enf9khxJP2g", '
        'nc=00000001, cnonce="dad074891d681ce27b5400a3f5a5785a", qop=auth, '
        'response="c182c0331a2e46be9ae6927b9cae58b3fa274236a454ffa027c6b7c5e09b24a3", '
        'opaque="1GomQQxpwYaX1FoDvCWRkM3v"'
    )
    item = digest._parse_plain_item(sent)
    assert item is not None and item.params["nc"] == "00000001" and len(item.params) == 10
    assert digest._parse_plain_item("Digest a=1, A=2") is None  # duplicate: the general path
    assert digest._parse_plain_item('Digest a="x\\"y"') is None  # a quoted-pair


@pytest.mark.parametrize(
    "text",
    [
        'Digest username="a\\"b", realm="r"',  # a quoted-pair: the slow path reads it
        'Digest username="a',  # unterminated
        'Digest username="a\x01b"',  # a control character
        "Digest a=1, a=2",  # duplicate
    ],
)
def test_unusual_spellings_still_parse_or_fail_as_before(text: str) -> None:
    outcome = _outcome(text)
    if text.startswith('Digest username="a\\"'):
        assert outcome == [("Digest", None, {"username": 'a"b', "realm": "r"})]
    else:
        assert isinstance(outcome, tuple) and outcome[0] == "error"
