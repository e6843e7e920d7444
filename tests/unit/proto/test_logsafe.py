from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipcert.proto.logsafe import log_safe


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("alice@example.com", "alice@example.com"),
        ("a\r\nb", r"a\x0d\x0ab"),
        ("\x00\x1b[31m\x7f", r"\x00\x1b[31m\x7f"),
        ("\x85\u2028\u2029\u202e", r"\x85\u2028\u2029\u202e"),
        ("zoë", r"zo\xeb"),
        ("\U0001f600", r"\U0001f600"),
        ("\udcff", r"\udcff"),  # an undecodable byte (surrogateescape)
        ("a\\x0ab", r"a\\x0ab"),  # a literal backslash cannot pass for an escape
    ],
)
def test_log_safe(text: str, expected: str) -> None:
    assert log_safe(text) == expected


@pytest.mark.hypothesis
@given(st.text())
def test_log_safe_is_one_line_of_printable_ascii_and_reversible(text: str) -> None:
    safe = log_safe(text)
    assert safe.isascii() and safe.isprintable()
    assert safe.splitlines() in ([safe], [])
    assert safe.encode().decode("unicode_escape") == text
