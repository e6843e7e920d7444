"""MIME entity and multipart parsing (RFC 2045/2046, RFC 3261 §7.4)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipcert.errors import InputTooLargeError, MIMEError
from sipcert.proto import mime
from sipcert.proto.mime import (
    MimeLimits,
    MimePart,
    build_multipart,
    format_content_type,
    parse_content_type,
    parse_mime_entity,
    parse_mime_part,
    parse_multipart,
)

SDP = b"v=0\r\no=alice 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"


# --- Content-Type --------------------------------------------------------------------------


def test_content_type_lowercases_type_and_names_keeps_values() -> None:
    media, params = parse_content_type(
        'Multipart/Signed; Protocol="application/pkcs7-signature"; MICALG=sha-256;'
        ' boundary="a b\\"c"'
    )
    assert media == "multipart/signed"
    assert params == {
        "protocol": "application/pkcs7-signature",
        "micalg": "sha-256",
        "boundary": 'a b"c',
    }


def test_content_type_without_params_and_trailing_semicolon() -> None:
    assert parse_content_type("application/sdp") == ("application/sdp", {})
    assert parse_content_type(" text/plain ; charset=utf-8 ;") == (
        "text/plain",
        {"charset": "utf-8"},
    )


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("text", "not type/subtype"),
        ("text/", "not type/subtype"),
        ("te xt/plain", "not type/subtype"),
        ("text/plain; charset", "has no '='"),
        ('text/plain; charset="utf-8', "unterminated quoted"),
        ("text/plain; a=1; A=2", "given twice"),
        ("text/plain; =x", "bad parameter name"),
        ("text/plain; a=", "has no value"),
        ("text/plain x", "expected ';'"),
        ("text/plain; name=\u00e9", "not US-ASCII"),
    ],
)
def test_content_type_errors_name_the_problem(value: str, fragment: str) -> None:
    with pytest.raises(MIMEError, match=fragment):
        parse_content_type(value)


def test_format_content_type_quotes_non_tokens() -> None:
    value = format_content_type("multipart/signed", {"protocol": "a/b", "x": 'q"s'})
    assert value == 'multipart/signed; protocol="a/b"; x="q\\"s"'
    assert parse_content_type(value)[1] == {"protocol": "a/b", "x": 'q"s'}


# --- single entities -----------------------------------------------------------------------


def test_to_bytes_is_headers_crlf_blank_line_body() -> None:
    part = MimePart("application/sdp", SDP, (("Content-Disposition", "session"),))
    assert part.to_bytes() == (
        b"Content-Type: application/sdp\r\nContent-Disposition: session\r\n\r\n" + SDP
    )
    assert parse_mime_part(part.to_bytes()) == part


def test_binary_body_kept_exactly() -> None:
    body = bytes(range(256)) + b"\r\n\r\n--x\n\r"
    part = MimePart("application/octet-stream", body, (("Content-Transfer-Encoding", "binary"),))
    assert parse_mime_part(part.to_bytes()).body == body


def test_base64_body_is_decoded_and_reencoded() -> None:
    body = bytes(range(200))
    part = MimePart("application/pkcs7-mime", body, (("Content-Transfer-Encoding", "base64"),))
    wire = part.to_bytes()
    assert base64.b64encode(body)[:20] in wire
    assert parse_mime_part(wire).body == body


def test_lf_only_headers_and_folding_are_accepted() -> None:
    data = b"Content-Type: text/plain;\n\tcharset=utf-8\nContent-ID: <x@y>\n\nhi\n"
    part = parse_mime_part(data)
    assert part.params == {"charset": "utf-8"}
    assert part.header("content-id") == "<x@y>"
    assert part.body == b"hi\n"


def test_missing_content_type_is_text_plain() -> None:
    part = parse_mime_part(b"\r\nhello")
    assert part.media_type == "text/plain"
    assert part.body == b"hello"
    assert part.headers == ()


def test_header_lookup() -> None:
    part = MimePart("text/plain", b"", (("Content-ID", "<a>"),))
    assert part.header("CONTENT-TYPE") == "text/plain"
    assert part.header("content-id") == "<a>"
    assert part.header("Content-Disposition") is None


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"Content-Type: a/b\r\nContent-Type: c/d\r\n\r\n", "more than one Content-Type"),
        (b"Content-Type a/b\r\n\r\n", "line 1 is not 'Name: value'"),
        (b" folded: x\r\n\r\n", "continuation line"),
        (b"X-A: \xff\r\n\r\n", "X-A header value is not US-ASCII"),
        (b"X-A: a\rb\r\n\r\n", "bare CR"),
        (b"Content-Transfer-Encoding: quoted-printable\r\n\r\n", "quoted-printable"),
        (
            b"Content-Transfer-Encoding: base64\r\nContent-Transfer-Encoding: binary\r\n\r\n",
            "more than one Content-Transfer-Encoding",
        ),
        (b"Content-Transfer-Encoding: base64\r\n\r\n!!!!", "invalid base64"),
        (b"Content-Type: text\r\n\r\n", "not type/subtype"),
        (
            b"Content-Type: multipart/mixed; boundary=b\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n",
            "must not be base64",
        ),
    ],
)
def test_malformed_entities(data: bytes, fragment: str) -> None:
    with pytest.raises(MIMEError, match=fragment):
        parse_mime_part(data)


def test_constructor_rejects_header_injection() -> None:
    with pytest.raises(MIMEError, match="line break"):
        MimePart("text/plain", b"", (("X-A", "a\r\nX-B: b"),))
    with pytest.raises(MIMEError, match="belongs in content_type"):
        MimePart("text/plain", b"", (("content-type", "text/html"),))
    with pytest.raises(MIMEError, match="invalid header name"):
        MimePart("text/plain", b"", (("Bad Name", "x"),))


def test_size_limits() -> None:
    limits = MimeLimits(max_size=100, max_headers=2, max_header_line=40)
    with pytest.raises(InputTooLargeError, match="limit 100"):
        parse_mime_part(b"\r\n" + b"x" * 100, limits=limits)
    with pytest.raises(InputTooLargeError, match="header line 1"):
        parse_mime_part(b"X-A: " + b"a" * 40 + b"\r\n\r\n", limits=limits)
    with pytest.raises(InputTooLargeError, match="more than 2"):
        parse_mime_part(b"A: 1\r\nB: 2\r\nC: 3\r\n\r\n", limits=limits)


# --- multipart -----------------------------------------------------------------------------


def _parts() -> list[MimePart]:
    return [
        MimePart("application/sdp", SDP),
        MimePart(
            "application/octet-stream",
            b"\x00\xff\r\n--not-a-boundary\r\n\r\n",
            (("Content-ID", "<1@example.com>"), ("Content-Transfer-Encoding", "binary")),
        ),
    ]


def test_build_and_parse_keep_exact_bytes() -> None:
    parts = _parts()
    multipart = build_multipart("mixed", parts)
    parsed = parse_multipart(multipart.content_type, multipart.body)
    assert parsed.subtype == "mixed"
    assert parsed.raw_parts == tuple(p.to_bytes() for p in parts)
    assert parsed.parts == tuple(parts)
    assert parsed.preamble == b""
    assert parsed.epilogue == b""


def test_build_puts_params_before_boundary_and_uses_random_boundary() -> None:
    one = build_multipart("signed", _parts(), params={"protocol": "a/b", "micalg": "sha-256"})
    two = build_multipart("signed", _parts(), params={"protocol": "a/b", "micalg": "sha-256"})
    media, params = parse_content_type(one.content_type)
    assert media == "multipart/signed"
    assert list(params) == ["protocol", "micalg", "boundary"]
    assert params["boundary"] != two.params["boundary"]


def test_explicit_boundary_inside_a_part_is_refused() -> None:
    part = MimePart("text/plain", b"x\r\n--abc\r\n")
    with pytest.raises(MIMEError, match="occurs inside a body part"):
        build_multipart("mixed", [part], boundary="abc")
    with pytest.raises(MIMEError, match="bchars"):
        build_multipart("mixed", [part], boundary="bad\u00e9")
    with pytest.raises(MIMEError, match="at least one part"):
        build_multipart("mixed", [])


def test_preamble_epilogue_padding_and_boundary_prefix_text() -> None:
    body = (
        b"preamble line\r\n\r\n"
        b"--BB \t\r\n"
        b"Content-Type: text/plain\r\n\r\none\r\n--BBnot a delimiter\r\n"
        b"--BB\r\n"
        b"\r\ntwo"
        b"\r\n--BB--  \r\n"
        b"epilogue"
    )
    parsed = parse_multipart('multipart/mixed; boundary="BB"', body)
    assert parsed.preamble == b"preamble line\r\n"
    assert parsed.raw_parts == (
        b"Content-Type: text/plain\r\n\r\none\r\n--BBnot a delimiter",
        b"\r\ntwo",
    )
    assert parsed.parts[1].body == b"two"
    assert parsed.epilogue == b"epilogue"


def test_lf_framed_multipart_is_accepted() -> None:
    body = b"--b\nContent-Type: text/plain\n\nx\n--b--\n"
    parsed = parse_multipart("multipart/mixed; boundary=b", body)
    assert parsed.raw_parts == (b"Content-Type: text/plain\n\nx",)


@pytest.mark.parametrize(
    ("content_type", "body", "fragment"),
    [
        ("text/plain", b"", "is not multipart"),
        ("multipart/mixed", b"--b\r\n\r\n--b--", "no boundary parameter"),
        ('multipart/mixed; boundary=""', b"", "bchars"),
        ("multipart/mixed; boundary=b", b"nothing here", "'b' does not occur"),
        ("multipart/mixed; boundary=b", b"--b\r\n\r\nx\r\n--b\r\n\r\n", "no closing delimiter"),
        ("multipart/mixed; boundary=b", b"--b\r\n\r\nx\r\n--b", "no closing delimiter"),
        ("multipart/mixed; boundary=b", b"--b--\r\n", "has no body parts"),
        ("multipart/mixed; boundary=b", b"--b\r\nBad header\r\n\r\n\r\n--b--", "Name: value"),
    ],
)
def test_malformed_multipart(content_type: str, body: bytes, fragment: str) -> None:
    with pytest.raises(MIMEError, match=fragment):
        parse_multipart(content_type, body)


def test_multipart_limits() -> None:
    many = build_multipart("mixed", [MimePart("text/plain", b"x")] * 5)
    with pytest.raises(InputTooLargeError, match="5 parts"):
        parse_multipart(many.content_type, many.body, limits=MimeLimits(max_parts=4))
    nested = MimePart("text/plain", b"leaf")
    for _ in range(4):
        nested = build_multipart("mixed", [nested])
    parse_mime_part(nested.to_bytes(), limits=MimeLimits(max_depth=4))
    with pytest.raises(InputTooLargeError, match="nested deeper than 3"):
        parse_mime_part(nested.to_bytes(), limits=MimeLimits(max_depth=3))
    with pytest.raises(InputTooLargeError, match="limit 10"):
        parse_multipart(many.content_type, many.body, limits=MimeLimits(max_size=10))


def test_nested_malformed_multipart_is_reported() -> None:
    inner = MimePart("multipart/mixed; boundary=inner", b"--inner\r\n\r\nno close\r\n")
    outer = build_multipart("mixed", [inner])
    with pytest.raises(MIMEError, match="'--inner--'"):
        parse_multipart(outer.content_type, outer.body)


# --- properties ----------------------------------------------------------------------------

_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-+.", min_size=1, max_size=12)
_header_value = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40
)
_part = st.builds(
    MimePart,
    content_type=st.builds(lambda t, s: f"{t}/{s}", _token, _token),
    body=st.binary(max_size=300),
    headers=st.lists(
        st.tuples(st.sampled_from(["Content-ID", "Content-Disposition", "X-Test"]), _header_value),
        max_size=3,
    ).map(tuple),
)


@given(parts=st.lists(_part, min_size=1, max_size=6), subtype=_token)
@settings(max_examples=200)
def test_generated_parts_round_trip(parts: list[MimePart], subtype: str) -> None:
    multipart = build_multipart(subtype, parts)
    parsed = parse_multipart(multipart.content_type, multipart.body)
    assert parsed.raw_parts == tuple(p.to_bytes() for p in parts)
    assert parsed.parts == tuple(parts)
    assert parse_mime_part(multipart.to_bytes()) == multipart


@given(data=st.binary(max_size=600))
@settings(max_examples=400)
def test_arbitrary_bytes_only_raise_mime_errors(data: bytes) -> None:
    try:
        part = parse_mime_part(data)
    except (MIMEError, InputTooLargeError):
        return
    assert isinstance(part.body, bytes)


@given(
    body=st.binary(max_size=400).map(lambda b: b.replace(b"X", b"\r\n--bnd").replace(b"Y", b"--"))
)
@settings(max_examples=400)
def test_multipart_parser_on_delimiter_rich_noise(body: bytes) -> None:
    try:
        parsed = parse_multipart("multipart/mixed; boundary=bnd", body)
    except (MIMEError, InputTooLargeError):
        return
    assert all(part in body for part in parsed.raw_parts)


@given(value=st.text(max_size=80))
def test_arbitrary_content_type_only_raises_mime_error(value: str) -> None:
    try:
        media, _ = parse_content_type(value)
    except MIMEError:
        return
    assert "/" in media


def test_parse_content_type_memo_gives_each_caller_its_own_params() -> None:
    value = 'multipart/signed; protocol="application/pkcs7-signature"; boundary=b1'
    first = parse_content_type(value)
    first[1]["boundary"] = "changed"
    assert parse_content_type(value)[1]["boundary"] == "b1"


def test_parse_mime_entity_returns_the_multipart_parse_multipart_gives() -> None:
    body = b"--b1\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b1--\r\n"
    data = b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n' + body
    part, multipart = parse_mime_entity(data)
    assert part == parse_mime_part(data)
    assert multipart == parse_multipart(part.content_type, part.body)
    assert parse_mime_entity(b"Content-Type: text/plain\r\n\r\nx")[1] is None


@given(value=st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40))
def test_quoted_parameter_values_round_trip(value: str) -> None:
    """Any printable value, quoted and escaped by format_content_type, parses back."""
    content_type = format_content_type("text/plain", {"name": value, "after": "x"})
    assert parse_content_type(content_type) == ("text/plain", {"name": value, "after": "x"})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('a/b; x="\\"q\\\\"', '"q\\'),  # an escaped quote, then an escaped backslash
        ('a/b; x="a;b=c"; y=1', "a;b=c"),  # delimiters inside quotes are text
        ('a/b; x=""', ""),
    ],
)
def test_quoted_strings_unescape(value: str, expected: str) -> None:
    assert parse_content_type(value)[1]["x"] == expected


@pytest.mark.parametrize("value", ['a/b; x="abc', 'a/b; x="abc\\', 'a/b; x="ab\\"'])
def test_unterminated_quoted_string_is_refused(value: str) -> None:
    with pytest.raises(MIMEError, match="unterminated quoted 'x'"):
        parse_content_type(value)


def test_remembered_header_blocks_give_the_same_parts_and_keep_every_refusal() -> None:
    """A header block read once is not read again, but a limit or a bad header still counts."""
    data = b"Content-Type: text/plain\r\nContent-Disposition: inline\r\n\r\nbody"
    first, again = parse_mime_part(data), parse_mime_part(data + b"!")
    assert (first.content_type, first.headers) == (again.content_type, again.headers)
    assert again == MimePart("text/plain", b"body!", (("Content-Disposition", "inline"),))
    with pytest.raises(InputTooLargeError, match="more than 1 MIME header"):
        parse_mime_part(data, limits=MimeLimits(max_headers=1))
    for _ in range(2):  # refused every time, not only the first
        with pytest.raises(MIMEError, match="more than one Content-Transfer-Encoding"):
            parse_mime_part(
                b"Content-Transfer-Encoding: binary\r\nContent-Transfer-Encoding: 7bit\r\n\r\nx"
            )
        with pytest.raises(MIMEError, match="invalid header name"):
            MimePart("text/plain", b"", (("Bad Name", "x"),))


def test_parts_with_unhashable_headers_are_still_checked() -> None:
    headers = [("Content-Disposition", "inline")]
    assert MimePart("text/plain", b"", headers).header("content-disposition") == "inline"  # type: ignore[arg-type]
    with pytest.raises(MIMEError, match="line break"):
        MimePart("text/plain", b"", [("X-A", "a\r\nb")])  # type: ignore[arg-type]


def _content_type_answer(parse: object, value: str) -> object:
    try:
        return parse(value)  # type: ignore[operator]
    except MIMEError as exc:
        return ("error", str(exc))


_CT_PIECES = st.sampled_from(
    ["multipart", "signed", "text", "/", ";", "=", " ", "\t", '"', "\\", "boundary", "Protocol",
     "a", "x-y", "é", "\r\n", "application/pkcs7-signature", "sha-256", "(", "@", ",", "; "]
)  # fmt: skip


@settings(max_examples=2000)
@given(st.lists(_CT_PIECES, max_size=14).map("".join))
def test_content_type_regexes_answer_as_the_loop(value: str) -> None:
    """The two regular expressions accept only what the loop accepts, with its answer;
    everything else (errors included) is the loop's."""
    assert _content_type_answer(mime._parse_content_type, value) == _content_type_answer(
        mime._parse_content_type_slowly, value
    )


@pytest.mark.parametrize(
    "value",
    [
        'multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256; '
        "boundary=sipcert-0123",
        'Multipart/Mixed ; BOUNDARY = "a \\"b\\" c" ;',
        "text/plain; a=1; A=2",
        'text/plain; a="unterminated',
        "text/plain;",
    ],
)
def test_content_type_regexes_on_the_usual_values(value: str) -> None:
    assert _content_type_answer(mime._parse_content_type, value) == _content_type_answer(
        mime._parse_content_type_slowly, value
    )


_CT_SPACE = st.sampled_from(["", " ", "\t", "  "])
_CT_TOKEN = st.sampled_from(["a", "Multipart", "x-y", "sha-256", "B"])
_CT_QUOTED = st.sampled_from(
    ['""', '"a b"', '"x\\"y"', '"\\\\"', '"a;b=c"', '"é"', '"unterminated', '"\r\n"', '"a\\']
)


@st.composite
def _content_types(draw: st.DrawFn) -> str:
    """Mostly well-formed values (spaces, quoting, case, trailing ";"), some broken."""
    value = draw(_CT_SPACE) + draw(_CT_TOKEN) + "/" + draw(_CT_TOKEN)
    for _ in range(draw(st.integers(0, 4))):
        value += f"{draw(_CT_SPACE)};{draw(_CT_SPACE)}{draw(_CT_TOKEN)}{draw(_CT_SPACE)}="
        value += draw(_CT_SPACE) + draw(_CT_TOKEN | _CT_QUOTED)
    value += draw(st.sampled_from(["", ";", " ; "])) + draw(_CT_SPACE)
    if draw(st.booleans()):
        at = draw(st.integers(0, len(value)))
        value = value[:at] + draw(st.sampled_from(list(';="/\\x\n '))) + value[at:]
    return value


@settings(max_examples=2000)
@given(_content_types())
def test_content_type_regexes_answer_as_the_loop_on_likely_values(value: str) -> None:
    assert _content_type_answer(mime._parse_content_type, value) == _content_type_answer(
        mime._parse_content_type_slowly, value
    )
