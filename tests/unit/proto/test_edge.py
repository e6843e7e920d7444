"""proto.edge: a Store answer as a path nginx reads back, and the feed cursor."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipcert.proto.aor import AOR
from sipcert.proto.edge import (
    NONE_OBJECT,
    PROXY_OBJECT,
    EdgeObject,
    FeedCursor,
    edge_object,
    file_user,
    map_line,
    parse_map_line,
)
from sipcert.proto.store import MAX_LABEL_LENGTH, certificates_response

ENROLLED = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
FP = ["a" * 64, "b" * 64, "c" * 64]


def _answer(ders: list[bytes], labels: list[str | None]) -> tuple[EdgeObject, object]:
    answer = certificates_response(
        ders,
        FP[: len(ders)],
        max_age=60,
        labels=labels,
        enrolled=[ENROLLED] * len(ders),
    )
    return edge_object(answer), answer


@pytest.mark.parametrize(
    ("ders", "labels"),
    [
        ([b"\x30\x03one"], [None]),
        ([b"\x30\x03one"], ["Desk phone"]),
        ([b"\x30\x03one"], ["Téléphone"]),  # an RFC 2047 encoded-word
        ([b"one", b"two"], [None, "laptop"]),
        ([b"one", b"two", b"three"], [None, None, None]),
    ],
)
def test_headers_read_back_from_the_path_equal_the_store_s(
    ders: list[bytes], labels: list[str | None]
) -> None:
    obj, answer = _answer(ders, labels)
    assert obj.parts[0] not in (NONE_OBJECT, PROXY_OBJECT)
    assert obj.body == answer.body  # type: ignore[attr-defined]
    assert obj.headers(60) == answer.headers  # type: ignore[attr-defined]
    assert all("/" not in part and part not in (".", "..") for part in obj.parts)


def test_a_boundary_with_a_salt_is_kept() -> None:
    etag_hex = certificates_response([b"x", b"y"], FP[:2], max_age=1).headers[1][1].strip('"')
    clash = f"sipcert-{etag_hex}".encode()
    obj, answer = _answer([clash, b"y"], [None, None])
    assert obj.parts[1] == "m1"
    assert obj.headers(60) == answer.headers  # type: ignore[attr-defined]


def test_a_404_and_what_a_path_cannot_spell() -> None:
    assert edge_object(certificates_response([], [], max_age=60)).parts == (NONE_OBJECT,)
    slash, _ = _answer([b"one"], ["home/office"])
    assert slash.parts == (PROXY_OBJECT,)  # nginx proxies: the Store answers with the label
    long_label = "\U0001f600" * MAX_LABEL_LENGTH  # an encoded-word longer than a file name
    assert _answer([b"one"], [long_label])[0].parts == (PROXY_OBJECT,)


@given(st.text(min_size=1, max_size=MAX_LABEL_LENGTH).filter(str.isprintable))
def test_any_label_is_either_exact_or_proxied(label: str) -> None:
    obj, answer = _answer([b"one"], [label.strip() or "x"])
    if obj.parts != (PROXY_OBJECT,):
        assert obj.headers(60) == answer.headers  # type: ignore[attr-defined]


def test_file_users() -> None:
    assert file_user(AOR("alice", "example.com")) == "alice"
    assert file_user(AOR("Alice.Smith-2_~", "example.com")) == "Alice.Smith-2_~"
    for user in (".hidden", "bob+home", "a%20b", "x" * 65, "semi;colon"):
        assert file_user(AOR(user, "example.com")) is None


def test_cursor_waits_for_late_commits_then_gives_up() -> None:
    cursor = FeedCursor(low=10, gap_timeout=5.0)
    assert cursor.take([11, 13], now=0.0) == [11, 13]
    assert cursor.low == 11 and cursor.waiting  # 12 may still commit
    assert cursor.take([13], now=1.0) == []  # handled already
    assert cursor.take([12, 13, 14], now=2.0) == [12, 14]
    assert cursor.low == 14 and not cursor.waiting
    assert cursor.take([16], now=3.0) == [16]
    assert cursor.take([16], now=7.0) == []
    assert cursor.take([16], now=8.5) == []  # 15 never came: given up
    assert cursor.low == 16 and not cursor.waiting


@given(st.text(min_size=1, max_size=MAX_LABEL_LENGTH).filter(str.isprintable))
def test_a_map_line_reads_back_or_is_left_out(label: str) -> None:
    """Whatever the label, the map entry names the same object (or none: the symlink)."""
    obj, _ = _answer([b"one"], [label.strip() or "x"])
    line = map_line("example.com", "alice", obj.path)
    if obj.parts == (PROXY_OBJECT,) or "$" in obj.path:
        assert line is None
        return
    assert line is not None and "\n" not in line
    assert line.startswith('"example.com|email=alice%40example.com" "alice|')
    assert parse_map_line(line) == ("example.com", "alice", obj.path)


def test_map_lines_of_the_markers_and_unreadable_lines() -> None:
    assert map_line("example.com", "bob", NONE_OBJECT) is None
    assert map_line("example.com", "bob", PROXY_OBJECT) is None
    assert map_line("example.com", "bob", "0" * 32 + "-1|_|=$HOME") is None
    quoted = map_line("example.com", "bob", "0" * 32 + '-1|_|=say "hi" \\o/')
    assert quoted == (
        '"example.com|email=bob%40example.com" "bob|' + "0" * 32 + '-1|_|=say \\"hi\\" \\\\o/";'
    )
    for line in ("", "garbage", '"a|email=b%40c" "b|x";', '"a|email=b%40a" "c|x";'):
        assert parse_map_line(line) is None
