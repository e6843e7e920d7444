"""Text from the network made safe for a log line (issue 9, "logs that cannot be forged").

A request value written raw into a log can end the line (CR, LF, NEL, U+2028) and start a
forged one, or hide text behind terminal escapes (ESC) and bidirectional overrides. Every
log line of the Store therefore passes through :func:`log_safe` once: printable ASCII stays
as it is, and everything else, including the backslash itself, is written as a Python-style
escape (``\\xNN``, ``\\uNNNN``, ``\\UNNNNNNNN``), so the line reads unambiguously and a
reader can recover the original code points.
"""

from __future__ import annotations

__all__ = ["log_safe"]


def _escape(char: str) -> str:
    code = ord(char)
    if char == "\\":
        return "\\\\"
    if 0x20 <= code < 0x7F:
        return char
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def log_safe(text: str) -> str:
    """``text`` with every character outside printable ASCII, and ``\\``, escaped.

    The result is printable ASCII only, so it is one line whatever ``text`` holds (control
    characters, C1, U+2028/U+2029, lone surrogates from undecodable bytes).
    """
    if text.isascii() and text.isprintable() and "\\" not in text:
        return text
    return "".join(map(_escape, text))
