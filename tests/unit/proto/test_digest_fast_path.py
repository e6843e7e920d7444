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
    return "Digest " + separator.join(parts) + draw(st.sampled_from(["", ",", " "]))


def _outcome(text: str) -> object:
    try:
        items = digest._parse_items(text, "Authorization")
    except DigestHeaderError as exc:
        return ("error", str(exc))
    return [(i.scheme, i.token68, dict(i.params)) for i in items]


@given(headers())
def test_fast_and_slow_paths_agree(text: str) -> None:
    fast = _outcome(text)
    saved = digest._PLAIN_DIRECTIVE, digest._PLAIN_QUOTED_REST
    never = re.compile(r"(?!)")
    digest._PLAIN_DIRECTIVE, digest._PLAIN_QUOTED_REST = never, never
    try:
        slow = _outcome(text)
    finally:
        digest._PLAIN_DIRECTIVE, digest._PLAIN_QUOTED_REST = saved
    assert fast == slow


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
