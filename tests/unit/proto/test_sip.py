"""SIP message parsing and serialisation (RFC 3261 §7, §20, §25)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipcert.errors import (
    InputError,
    InputTooLargeError,
    MIMEError,
    SipFramingError,
    SipMessageError,
)
from sipcert.proto.aor import AOR
from sipcert.proto.mime import MimePart
from sipcert.proto.sip import (
    NameAddr,
    Request,
    Response,
    SipLimits,
    StreamParser,
    body_part,
    canonical_header_name,
    make_response,
    new_branch,
    parse_cseq,
    parse_message,
    parse_name_addr,
    parse_uri,
    parse_via,
    split_header_list,
    with_body,
)

# RFC 3261 §24.2 F1 style, with compact forms, a folded header and a two-value Via line.
INVITE = (
    b"INVITE sip:bob@biloxi.com SIP/2.0\r\n"
    b"v: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK776asdhds ,"
    b" SIP/2.0/TCP proxy.atlanta.com:5060;branch=z9hG4bK1;received=192.0.2.1\r\n"
    b"Max-Forwards: 70\r\n"
    b't: "Bob" <sip:bob@biloxi.com>\r\n'
    b"f: Alice <sip:alice@atlanta.com>;tag=1928301774\r\n"
    b"i: a84b4c76e66710@pc33.atlanta.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"m: <sip:alice@pc33.atlanta.com>\r\n"
    b"Subject: lunch\r\n"
    b"  at noon\r\n"
    b"c: application/sdp\r\n"
    b"l: 7\r\n"
    b"\r\n"
    b"v=0\r\n\r\n"
)


def _request(**changes: object) -> Request:
    headers = (
        ("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx"),
        ("From", "<sip:alice@example.com>;tag=a"),
        ("To", "<sip:bob@example.com>"),
        ("Call-ID", "c1"),
        ("CSeq", "1 MESSAGE"),
        ("Content-Type", "text/plain"),
    )
    values: dict[str, object] = {"headers": headers, "body": b"hi"}
    values.update(changes)
    return Request("MESSAGE", "sip:bob@example.com", **values)  # type: ignore[arg-type]


# --- parsing the example -----------------------------------------------------------------------


def test_parses_request_line_compact_headers_folding_and_body() -> None:
    message = parse_message(INVITE, datagram=False)
    assert isinstance(message, Request)
    assert (message.method, message.uri) == ("INVITE", "sip:bob@biloxi.com")
    assert message.get("Subject") == "lunch at noon"  # folded with one space (§7.3.1)
    assert message.get("c") == "application/sdp"  # compact name on lookup too
    assert [name for name, _ in message.headers][:4] == ["Via", "Max-Forwards", "To", "From"]
    assert message.body == b"v=0\r\n\r\n"
    assert message.call_id == "a84b4c76e66710@pc33.atlanta.com"
    assert message.cseq == (314159, "INVITE")
    assert message.from_.tag == "1928301774"
    assert message.from_.display_name == "Alice"
    assert message.to.display_name == '"Bob"'
    assert message.to.tag is None


def test_list_headers_split_at_top_level_commas() -> None:
    message = parse_message(INVITE, datagram=False)
    assert len(message.get_all("Via")) == 1
    vias = message.vias
    assert [(v.transport, v.host, v.port, v.branch) for v in vias] == [
        ("UDP", "pc33.atlanta.com", None, "z9hG4bK776asdhds"),
        ("TCP", "proxy.atlanta.com", 5060, "z9hG4bK1"),
    ]
    assert vias[1].param("received") == "192.0.2.1"
    assert message.top_via == vias[0]


def test_serialisation_uses_full_names_and_round_trips() -> None:
    message = parse_message(INVITE, datagram=False)
    wire = message.to_bytes()
    assert wire.startswith(b"INVITE sip:bob@biloxi.com SIP/2.0\r\nVia: SIP/2.0/UDP")
    assert b"\r\nCall-ID: a84b4c76e66710@pc33.atlanta.com\r\n" in wire
    assert wire.endswith(b"Content-Length: 7\r\n\r\nv=0\r\n\r\n")
    assert parse_message(wire, datagram=False) == message
    assert parse_message(wire) == message


def test_response_parses_and_round_trips() -> None:
    wire = (
        b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKa\r\nFrom: <sip:a@b.c>;tag=1\r\n"
        b"To: <sip:d@e.f>;tag=2\r\nCall-ID: x\r\nCSeq: 2 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    message = parse_message(wire, datagram=False)
    assert isinstance(message, Response)
    assert (message.status, message.reason) == (180, "Ringing")
    assert message.to_bytes() == wire


def test_reason_phrase_may_be_empty_or_utf8() -> None:
    wire = _request().to_bytes().replace(b"MESSAGE sip:bob@example.com SIP/2.0", b"SIP/2.0 200 ")
    message = parse_message(wire)
    assert isinstance(message, Response)
    assert message.reason == ""
    utf8 = Response(486, "Occupé", headers=_request().headers)
    assert parse_message(utf8.to_bytes()) == utf8


def test_bare_lf_line_endings_are_accepted() -> None:
    wire = _request().to_bytes().replace(b"\r\n", b"\n")
    message = parse_message(wire.replace(b"\n\nhi", b"\n\nhi"))
    assert isinstance(message, Request)
    assert message.body == b"hi"


def test_body_is_binary_safe() -> None:
    body = bytes(range(256)) + b"\r\n\r\nSIP/2.0 200 OK\r\n\r\n"
    message = _request(body=body)
    assert parse_message(message.to_bytes(), datagram=False).body == body


# --- Content-Length ---------------------------------------------------------------------------


def _without_length(wire: bytes) -> bytes:
    head, _, body = wire.partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if not line.startswith(b"Content-Length")]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def test_datagram_without_content_length_takes_the_rest() -> None:
    assert parse_message(_without_length(_request().to_bytes())).body == b"hi"


def test_stream_requires_content_length() -> None:
    with pytest.raises(InputError, match="Content-Length is required"):
        parse_message(_without_length(_request().to_bytes()), datagram=False)


def test_datagram_drops_bytes_beyond_content_length() -> None:
    assert parse_message(_request().to_bytes() + b"junk").body == b"hi"


def test_content_length_longer_than_body_is_an_error() -> None:
    with pytest.raises(InputError, match="exceeds the 2 octets"):
        parse_message(_request().to_bytes().replace(b"Content-Length: 2", b"Content-Length: 9"))


@pytest.mark.parametrize("value", [b"-1", b"abc", b"1 2", b"99999999999"])
def test_bad_content_length(value: bytes) -> None:
    with pytest.raises(InputError, match="Content-Length"):
        parse_message(_request().to_bytes().replace(b"Content-Length: 2", b"l: " + value))


def test_duplicate_content_length() -> None:
    wire = _request().to_bytes().replace(b"Content-Length: 2", b"Content-Length: 2\r\nl: 2")
    with pytest.raises(InputError, match="more than one Content-Length"):
        parse_message(wire)


def test_content_length_cannot_be_set_by_hand() -> None:
    with pytest.raises(InputError, match="derived from the body"):
        _request(headers=(("l", "5"),))


# --- malformed input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "problem"),
    [
        (b"", "empty message"),
        (b"\r\n\r\n", "empty message"),
        (b"MESSAGE sip:a@b SIP/2.0\r\nVia: x", "no empty line"),
        (b"MESSAGE sip:a@b SIP/3.0\r\n\r\n", "unsupported SIP version"),
        (b"MESSAGE  sip:a@b SIP/2.0\r\n\r\n", "is not 'METHOD Request-URI SIP/2.0'"),
        (b"SIP/2.0 20 OK\r\n\r\n", "three-digit status"),
        (b"SIP/2.0 099 Low\r\n\r\n", "not 100..699"),
        (b"MESSAGE sip:a@b SIP/2.0\r\n continued\r\n\r\n", "continuation line"),
        (b"MESSAGE sip:a@b SIP/2.0\r\nNoColon\r\n\r\n", "has no colon"),
        (b"MESSAGE sip:a@b SIP/2.0\r\nBad Name: x\r\n\r\n", "invalid name"),
        (b"MESSAGE sip:a@b SIP/2.0\r\nX: a\rb\r\n\r\n", "bare CR"),
        (b"MESSAGE sip:a@b SIP/2.0\r\nX: \xff\r\n\r\n", "not UTF-8"),
        (b"MESSAGE sip:a@b SIP/2.0\r\nX: a\x00b\r\n\r\n", "control character"),
        (b"MESSAGE nocolon SIP/2.0\r\n\r\n", "the Via header is missing"),
    ],
)
def test_malformed_messages_say_what_is_wrong(wire: bytes, problem: str) -> None:
    with pytest.raises(InputError, match=problem):
        parse_message(wire)


def test_request_uri_must_be_absolute() -> None:
    wire = _request().to_bytes().replace(b"MESSAGE sip:bob@example.com", b"MESSAGE bob")
    with pytest.raises(InputError, match="not an absolute URI"):
        parse_message(wire)


@pytest.mark.parametrize("missing", [b"Via", b"From", b"To", b"Call-ID", b"CSeq"])
def test_mandatory_headers(missing: bytes) -> None:
    head, _, body = _request().to_bytes().partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if not line.startswith(missing + b":")]
    with pytest.raises(InputError, match=f"the {missing.decode()} header is missing"):
        parse_message(b"\r\n".join(lines) + b"\r\n\r\n" + body)


def test_cseq_method_must_match_request() -> None:
    wire = _request().to_bytes().replace(b"CSeq: 1 MESSAGE", b"CSeq: 1 INVITE")
    with pytest.raises(InputError, match="CSeq method 'INVITE' differs"):
        parse_message(wire)


def test_single_headers_must_not_repeat() -> None:
    wire = _request().to_bytes().replace(b"Call-ID: c1", b"Call-ID: c1\r\ni: c2")
    with pytest.raises(InputError, match="more than one Call-ID"):
        parse_message(wire)


def test_bad_via_is_rejected() -> None:
    wire = _request().to_bytes().replace(b"SIP/2.0/UDP 127.0.0.1:5060", b"HTTP/1.1 x")
    with pytest.raises(InputError, match="Via"):
        parse_message(wire)


# --- limits -----------------------------------------------------------------------------------


def test_message_size_limit() -> None:
    with pytest.raises(InputTooLargeError, match="limit 100"):
        parse_message(_request(body=b"x" * 200).to_bytes(), limits=SipLimits(max_message=100))


def test_header_count_limit() -> None:
    message = _request(headers=(*_request().headers, *((f"X-{i}", "v") for i in range(10))))
    with pytest.raises(InputTooLargeError, match="more than 8 SIP header fields"):
        parse_message(message.to_bytes(), limits=SipLimits(max_headers=8))


def test_line_length_limit() -> None:
    message = _request(headers=(*_request().headers, ("Subject", "s" * 300)))
    with pytest.raises(InputTooLargeError, match="limit 200"):
        parse_message(message.to_bytes(), limits=SipLimits(max_line=200))


def test_stream_limits_a_header_section_without_end() -> None:
    parser = StreamParser(SipLimits(max_message=64))
    [error] = parser.feed(b"MESSAGE sip:a@b SIP/2.0\r\n" + b"X: y\r\n" * 20)
    assert isinstance(error, InputTooLargeError)
    assert parser.failed


def test_stream_limits_the_announced_body() -> None:
    parser = StreamParser(SipLimits(max_message=300))
    wire = _request().to_bytes().replace(b"Content-Length: 2", b"Content-Length: 5000")
    [error] = parser.feed(wire)
    assert isinstance(error, InputTooLargeError)
    assert "limit 300" in str(error)


# --- stream framing ---------------------------------------------------------------------------


def test_stream_parser_frames_back_to_back_messages_and_keepalives() -> None:
    first = _request(body=b"one")
    second = _request(body=b"two\r\n\r\n")
    parser = StreamParser()
    assert parser.feed(b"\r\n\r\n" + first.to_bytes() + b"\r\n" + second.to_bytes()) == [
        first,
        second,
    ]
    assert parser.buffered == 0


def test_stream_parser_byte_by_byte() -> None:
    message = parse_message(INVITE, datagram=False)
    parser = StreamParser()
    out: list[Request | Response] = []
    for byte in INVITE + INVITE:
        out += parser.feed(bytes([byte]))
    assert out == [message, message]


def test_stream_parser_is_unusable_after_a_framing_error() -> None:
    parser = StreamParser()
    [error] = parser.feed(b"garbage without colon\r\nfoo\r\n\r\n")
    assert isinstance(error, SipFramingError)
    assert "Content-Length is required" in str(error)
    assert parser.failed
    with pytest.raises(InputError, match="already failed"):
        parser.feed(_request().to_bytes())


def test_stream_parser_keeps_messages_framed_before_a_framing_error() -> None:
    """A complete REGISTER followed by junk in the same read is still delivered (issue 12)."""
    first = _request(body=b"one")
    parser = StreamParser()
    events = parser.feed(first.to_bytes() + b"junk\r\nContent-Length: -1\r\n\r\n")
    assert events[0] == first
    assert isinstance(events[1], SipFramingError)
    assert "cannot frame" in str(events[1])
    assert parser.failed


def test_stream_parser_goes_on_after_an_invalid_but_framed_message() -> None:
    """Only framing errors lose the stream; a bad message in between is one 400 (§18.3)."""
    good = _request(body=b"ok")
    bad = good.to_bytes().replace(b"CSeq: 1 MESSAGE", b"CSeq: 1 INVITE")
    parser = StreamParser()
    events = parser.feed(bad + good.to_bytes())
    assert isinstance(events[0], SipMessageError)
    assert "differs from the request method" in str(events[0])
    assert events[0].head.startswith(b"MESSAGE ")
    assert events[1] == good
    assert not parser.failed


# --- header values ----------------------------------------------------------------------------


def test_compact_and_canonical_names() -> None:
    assert [canonical_header_name(n) for n in "vftimlckse"] == [
        "Via",
        "From",
        "To",
        "Call-ID",
        "Contact",
        "Content-Length",
        "Content-Type",
        "Supported",
        "Subject",
        "Content-Encoding",
    ]
    assert canonical_header_name("call-id") == "Call-ID"
    assert canonical_header_name("WWW-AUTHENTICATE") == "WWW-Authenticate"
    assert canonical_header_name("X-Custom") == "X-Custom"
    with pytest.raises(InputError, match="not a token"):
        canonical_header_name("Bad:Name")


def test_split_header_list_respects_quotes_and_brackets() -> None:
    value = '"Doe, J" <sip:a@b;x=1,2>;q=0.5, <sip:c@d> ,sip:e@f'
    assert split_header_list(value) == ['"Doe, J" <sip:a@b;x=1,2>;q=0.5', "<sip:c@d>", "sip:e@f"]
    with pytest.raises(InputError, match="unbalanced"):
        split_header_list('"open, <sip:a@b>')
    with pytest.raises(InputError, match="empty element"):
        split_header_list("<sip:a@b>,,<sip:c@d>")


def test_route_values_from_several_lines() -> None:
    message = _request(
        headers=(*_request().headers, ("Route", "<sip:p1;lr>, <sip:p2;lr>"), ("Route", "<sip:p3>"))
    )
    assert message.values("Route") == ["<sip:p1;lr>", "<sip:p2;lr>", "<sip:p3>"]
    assert message.values("Subject") == []


@pytest.mark.parametrize(
    ("value", "display", "uri", "params"),
    [
        ('"Alice \\"A\\"" <sip:alice@example.com>;tag=88', '"Alice \\"A\\""', None, {"tag": "88"}),
        ("Bob Smith <sip:bob@example.com>", "Bob Smith", "sip:bob@example.com", {}),
        ("<sip:carol@example.com;transport=tcp>;expires=60", None, None, {"expires": "60"}),
        ("sip:dave@example.com;tag=7;lr", None, "sip:dave@example.com", {"tag": "7", "lr": None}),
    ],
)
def test_name_addr_forms(
    value: str, display: str | None, uri: str | None, params: dict[str, str | None]
) -> None:
    parsed = parse_name_addr(value)
    assert parsed.display_name == display
    if uri is not None:
        assert parsed.uri == uri
    assert dict(parsed.params) == params
    assert parse_name_addr(str(parsed)) == parsed


def test_name_addr_aor_and_tags() -> None:
    parsed = parse_name_addr("<sip:Alice@Example.COM;transport=tcp>;tag=1")
    assert parsed.aor == AOR("Alice", "example.com")
    assert parsed.tag == "1"
    assert parsed.with_tag("2").tag == "2"
    assert NameAddr("sip:a@b.c").with_tag("t").params == (("tag", "t"),)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "empty address"),
        ('"unterminated <sip:a@b>', "unterminated display name"),
        ("<sip:a@b", "'<' without '>'"),
        ("sip:a@b?x=y", "must be in <...>"),
        ("<nota uri>", "not an absolute URI"),
        ("<sip:a@b>;=x", "not a token"),
        ('"Bob" sip:bob@b', "must be followed by <URI>"),
    ],
)
def test_name_addr_errors(value: str, problem: str) -> None:
    with pytest.raises(InputError, match=problem):
        parse_name_addr(value)


def test_sip_uri() -> None:
    uri = parse_uri("sip:alice:pw@[2001:db8::1]:5070;transport=TCP;lr?subject=x")
    assert (uri.scheme, uri.user, uri.host, uri.port) == ("sip", "alice:pw", "[2001:db8::1]", 5070)
    assert uri.transport == "tcp"
    assert uri.loose_route
    assert uri.headers == "subject=x"
    assert str(uri) == "sip:alice:pw@[2001:db8::1]:5070;transport=TCP;lr?subject=x"
    assert parse_uri("sips:example.com").transport == "tls"
    assert parse_uri("sip:127.0.0.1").transport == "udp"
    assert not parse_uri("sip:p.example.com").loose_route


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("tel:+123", "not a sip: or sips: URI"),
        ("sip:@host", "empty user part"),
        ("sip:host:0", "invalid port"),
        ("sip:host:99999", "invalid port"),
        ("sip:[zz::1]", "not an IPv6"),
        ("sip:a b", "spaces"),
        ("sip:-bad", "does not start with a host"),
    ],
)
def test_sip_uri_errors(text: str, problem: str) -> None:
    with pytest.raises(InputError, match=problem):
        parse_uri(text)


def test_via_and_cseq() -> None:
    via = parse_via("SIP / 2.0 / tcp 10.0.0.1 : 5061 ;branch=z9hG4bKq;rport")
    assert (via.transport, via.host, via.port, via.branch) == ("TCP", "10.0.0.1", 5061, "z9hG4bKq")
    assert via.param("rport") == ""
    assert str(via) == "SIP/2.0/TCP 10.0.0.1:5061;branch=z9hG4bKq;rport"
    assert parse_cseq("  42   ACK ") == (42, "ACK")
    for bad in ("x INVITE", "1", f"{2**31} INVITE"):
        with pytest.raises(InputError, match="CSeq"):
            parse_cseq(bad)


def test_new_branch_has_the_magic_cookie() -> None:
    assert new_branch().startswith("z9hG4bK")
    assert new_branch() != new_branch()


# --- building responses and bodies ------------------------------------------------------------


def test_make_response_copies_the_right_headers() -> None:
    invite = parse_message(INVITE, datagram=False)
    assert isinstance(invite, Request)
    invite = invite.with_headers(("Record-Route", "<sip:p1;lr>"), ("Record-Route", "<sip:p2;lr>"))
    trying = make_response(invite, 100, to_tag="abc")
    assert trying.reason == "Trying"
    assert trying.to.tag is None  # no tag on 100 (§8.2.6.1)
    assert trying.get_all("Record-Route") == []
    ok = make_response(invite, 200, to_tag="abc", headers=[("Contact", "<sip:b@h>")])
    assert ok.to.tag == "abc"
    assert ok.get_all("Via") == invite.get_all("Via")
    assert ok.get_all("Record-Route") == ["<sip:p1;lr>", "<sip:p2;lr>"]  # §12.1.1
    assert (ok.call_id, ok.cseq, ok.get("From")) == (invite.call_id, invite.cseq, invite.get("f"))
    assert ok.get("Max-Forwards") is None
    assert make_response(invite, 486).reason == "Busy Here"


def test_make_response_keeps_an_existing_to_tag() -> None:
    bye = _request(
        headers=tuple(
            (k, "<sip:bob@example.com>;tag=existing" if k == "To" else v)
            for k, v in _request().headers
        )
    )
    assert make_response(bye, 200, to_tag="new").to.tag == "existing"


def test_body_part_and_with_body_round_trip() -> None:
    part = MimePart(
        "application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m",
        bytes(range(256)),
        (
            ("Content-Disposition", "attachment; handling=required"),
            ("Content-Transfer-Encoding", "base64"),
        ),
    )
    message = with_body(
        _request(headers=(*_request().headers, ("Content-Type", "text/plain"))), part
    )
    assert message.get_all("Content-Type") == [part.content_type]
    assert message.body != part.body  # base64 on the wire
    received = parse_message(message.to_bytes(), datagram=False)
    assert body_part(received) == part
    assert body_part(with_body(received, None)) is None


def test_body_without_content_type_is_refused() -> None:
    untyped = _request().without("Content-Type")
    with pytest.raises(InputError, match="no Content-Type"):
        body_part(untyped)
    with pytest.raises(SipMessageError, match="without Content-Type"):
        parse_message(untyped.to_bytes())


def test_body_part_wraps_mime_errors() -> None:
    bad = _request().replacing("Content-Type", "not a type")
    with pytest.raises(MIMEError):
        body_part(bad)
    gz = _request(headers=(*_request().headers, ("Content-Type", "text/plain"), ("e", "gzip")))
    with pytest.raises(InputError, match="Content-Encoding"):
        body_part(gz)


def test_model_validates_its_fields() -> None:
    with pytest.raises(InputError, match="not a token"):
        Request("BAD METHOD", "sip:a@b")
    with pytest.raises(InputError, match="control character"):
        _request(headers=(("Subject", "a\r\nInjected: yes"),))
    with pytest.raises(InputError, match="whitespace"):
        _request(headers=(("Subject", " padded"),))
    with pytest.raises(InputError, match=r"100\.\.699"):
        Response(700, "no")
    message = _request()
    assert message.without("Call-ID").get("Call-ID") is None
    with pytest.raises(InputError, match="lacks the Call-ID"):
        _ = message.without("i").call_id
    replaced = message.replacing("Via", "SIP/2.0/TCP a;branch=z9hG4bK1", "SIP/2.0/UDP b")
    assert replaced.values("Via") == ["SIP/2.0/TCP a;branch=z9hG4bK1", "SIP/2.0/UDP b"]
    assert [k for k, _ in replaced.headers][:3] == ["Via", "Via", "From"]


# --- property tests ---------------------------------------------------------------------------

_TOKEN = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~",
    min_size=1,
    max_size=12,
)
_VALUE = st.text(
    st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\x7f"), max_size=40
).map(lambda s: s.strip(" \t"))
_KNOWN = {
    "v",
    "f",
    "t",
    "i",
    "m",
    "l",
    "c",
    "k",
    "s",
    "e",
    "a",
    "b",
    "d",
    "j",
    "n",
    "o",
    "r",
    "u",
    "x",
    "y",
}


#: Headers the generator writes itself or whose value the parser checks (RFC 3261 §8.1.1,
#: §20): a generated "extra" header must never be a second one of these.
_RESERVED = {"Via", "From", "To", "Call-ID", "CSeq", "Max-Forwards", "Content-Type", "Contact"}


def _extra_name(name: str) -> bool:
    lower = name.lower()
    canonical = canonical_header_name(name)
    return (
        lower not in _KNOWN
        and canonical == name
        and lower != "content-length"
        and canonical not in _RESERVED
    )


@pytest.mark.parametrize(
    "name", ["CSeq", "Call-ID", "From", "To", "Via", "Max-Forwards", "Content-Type"]
)
def test_generator_adds_no_second_required_header(name: str) -> None:
    # The parser rightly refuses a second From/To/Call-ID/CSeq (RFC 3261 §20); a generator
    # that could add one made test_generated_messages_round_trip fail for some seeds.
    assert canonical_header_name(name) == name
    assert not _extra_name(name)


@st.composite
def messages(draw: st.DrawFn) -> Request | Response:
    method = draw(st.sampled_from(["INVITE", "MESSAGE", "REGISTER", "BYE", "OPTIONS", "X-NEW"]))
    user = draw(_TOKEN)
    headers = [
        ("Via", f"SIP/2.0/UDP 127.0.0.1:{draw(st.integers(1, 65535))};branch=z9hG4bK{user}"),
        ("From", f"<sip:{user}@example.com>;tag={draw(_TOKEN)}"),
        ("To", "<sip:bob@example.net>"),
        ("Call-ID", draw(_TOKEN)),
        ("CSeq", f"{draw(st.integers(0, 2**31 - 1))} {method}"),
    ]
    extra_names = st.one_of(
        st.sampled_from(["Subject", "User-Agent", "Route"]), _TOKEN.filter(_extra_name)
    )
    extras = draw(st.lists(st.tuples(extra_names, _VALUE), max_size=6))
    if draw(st.booleans()):  # Contact is read when parsing, so it must be an address
        extras.append(("Contact", f"<sip:{user}@192.0.2.1:{draw(st.integers(1, 65535))}>"))
    body = draw(st.binary(max_size=300))
    if body:  # a body needs its type (RFC 3261 §20.15)
        extras.append(("Content-Type", "application/octet-stream"))
    order = draw(st.permutations([*headers, *extras]))
    if draw(st.booleans()):
        return Request(method, f"sip:{user}@example.net", headers=tuple(order), body=body)
    reason = draw(_VALUE)
    return Response(draw(st.integers(100, 699)), reason, headers=tuple(order), body=body)


@given(messages())
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
def test_generated_messages_round_trip(message: Request | Response) -> None:
    wire = message.to_bytes()
    assert parse_message(wire) == message
    assert parse_message(wire, datagram=False) == message


@given(messages(), st.lists(st.integers(1, 50), min_size=1, max_size=20))
@settings(max_examples=80, suppress_health_check=[HealthCheck.too_slow])
def test_generated_messages_frame_on_a_stream(message: Request | Response, cuts: list[int]) -> None:
    wire = message.to_bytes() * 2
    parser = StreamParser()
    out: list[object] = []
    pos = 0
    for cut in cuts:
        out += parser.feed(wire[pos : pos + cut])
        pos += cut
    out += parser.feed(wire[pos:])
    assert out == [message, message]


@given(st.binary(max_size=400))
@settings(max_examples=300)
def test_arbitrary_bytes_only_raise_input_errors(data: bytes) -> None:
    for datagram in (True, False):
        try:
            parse_message(data, datagram=datagram)
        except InputError:
            pass
    try:
        StreamParser().feed(data)
    except InputError:
        pass


@given(messages(), st.integers(0, 10_000), st.binary(min_size=1, max_size=8))
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_messages_only_raise_input_errors(
    message: Request | Response, where: int, junk: bytes
) -> None:
    wire = message.to_bytes()
    pos = where % (len(wire) + 1)
    mutated = wire[:pos] + junk + wire[pos + len(junk) :]
    try:
        parsed = parse_message(mutated)
    except InputError:
        return
    assert parse_message(parsed.to_bytes()) == parsed


def test_stream_parser_counts_keepalive_pings_across_reads() -> None:
    """RFC 5626 §3.5.1: CRLFCRLF between messages is a ping (answered with CRLF); a lone
    CRLF is a pong and is not an incomplete message."""
    message = _request()
    parser = StreamParser()
    assert parser.feed(b"\r\n") == []
    assert parser.buffered == 0  # a pong, or half a ping: never "incomplete"
    assert parser.feed(b"\r") == []
    assert parser.feed(b"\n" + message.to_bytes() + b"\r\n\r\n") == [message]
    assert parser.pings == 2
    assert parser.feed(b"\r\n" + message.to_bytes()) == [message]
    assert parser.pings == 2
