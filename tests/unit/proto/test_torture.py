"""The RFC 4475 and RFC 5118 torture messages at the parser (issue 12).

Each message's verdict comes from the RFC text (``torture/cases.toml``): a valid one
parses and round-trips, an invalid request is refused with a :class:`SipMessageError` whose
:func:`error_response` is the 400 or 505 the RFC expects, and a stream frames each message
or loses its framing exactly where Content-Length is unusable (RFC 3261 §18.3).
"""

from __future__ import annotations

import pytest

from sipcert.errors import InputError, SipFramingError, SipMessageError
from sipcert.proto.sip import (
    Request,
    Response,
    StreamParser,
    error_response,
    parse_message,
    parse_name_addr,
    parse_uri,
)
from tests.unit.proto.torture import Case, cases

CASES = cases()
#: Stream messages whose Content-Length cannot frame them (RFC 3261 §18.3); dblreq's
#: INVITE announces 150 octets of its 155, so its last 5 start a message that cannot be.
FRAMING = {"ncl", "mcl01", "inv2543", "dblreq"}
#: Stream messages that never complete: more body announced than sent, or no empty line.
INCOMPLETE = {"clerr", "ipv6-in-sdp", "baddn"}
#: RFC 5118 Content-Lengths that count the archive's LF line ends: on the CRLF wire the
#: message is framed short, and its last octets start a message that never completes.
SHORT = {"mult-ip-in-sdp", "ipv4-mapped-ipv6"}


def test_the_corpus_is_complete() -> None:
    names = {case.name for case in CASES}
    assert len(names) == len(CASES) == 61
    assert all(case.wire for case in CASES)


@pytest.mark.parametrize("case", [c for c in CASES if c.valid], ids=lambda c: c.name)
def test_valid_messages_parse_and_round_trip(case: Case) -> None:
    message = parse_message(case.wire)
    assert parse_message(message.to_bytes()) == message
    assert isinstance(message, Response) is not case.is_request


@pytest.mark.parametrize("case", [c for c in CASES if not c.valid], ids=lambda c: c.name)
def test_invalid_messages_are_refused_at_parse_time(case: Case) -> None:
    with pytest.raises(InputError) as caught:
        parse_message(case.wire)
    error = caught.value
    assert isinstance(error, SipMessageError), error
    response = error_response(error, to_tag="t1")
    if not case.is_request:
        assert response is None
        return
    assert response is not None
    assert (response.status,) == case.udp
    assert response.reason.startswith(("Bad Request (", "Version Not Supported ("))
    assert response.reason.isascii() and response.reason.isprintable()
    assert response.get_all("Via"), "the Via must be copied so the response can be routed"


@pytest.mark.parametrize("case", [c for c in CASES if c.is_request], ids=lambda c: c.name)
def test_each_request_frames_on_a_stream(case: Case) -> None:
    parser = StreamParser()
    events = parser.feed(case.wire)
    if case.name in INCOMPLETE | SHORT:  # e.g. clerr's 9999 octets: wait for them (§3.1.2.2)
        assert [type(e) for e in events] == ([Request] if case.name in SHORT else [])
        assert parser.buffered > 0 and not parser.failed
        return
    if case.name in FRAMING:
        assert isinstance(events[-1], SipFramingError)
        assert parser.failed
        if case.name == "dblreq":  # on a stream the INVITE after the REGISTER is a message too
            assert [e.method for e in events if isinstance(e, Request)] == ["REGISTER", "INVITE"]
        else:
            assert len(events) == 1
        return
    assert not parser.failed
    if case.valid:
        assert isinstance(events[0], Request)
    else:
        assert isinstance(events[0], SipMessageError)


def _case(name: str) -> Case:
    return next(c for c in CASES if c.name == name)


def test_the_rfc5118_archive_differs_from_the_wire_only_in_line_ends() -> None:
    for case in (c for c in CASES if c.rfc == "5118"):
        assert b"\r" not in case.archived
        assert case.wire.replace(b"\r\n", b"\n").rstrip(b"\n") == case.archived.rstrip(b"\n")
        assert case.wire.count(b"\r\n\r\n") == 1


def test_wsinv_reads_every_tortuous_header() -> None:
    """RFC 4475 §3.1.1.1: folding, LWS around ':' ';' '=' '/', compact forms."""
    message = parse_message(_case("wsinv").wire)
    assert isinstance(message, Request)
    assert message.to.tag == "1918181833n"
    assert message.to.uri == "sip:vivekg@chair-dnrc.example.com"
    assert message.from_.display_name == '"J Rosenberg \\\\\\""'
    assert message.from_.tag == "98asjd8"
    assert message.cseq == (9, "INVITE")
    assert [v.branch for v in message.vias] == ["390skdjuw", "z9hG4bK9ikj8", "z9hG4bK30239"]
    assert message.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert parse_name_addr(message.values("Contact")[0]).param("q") == "0.33"
    assert len(message.body) == 150


def test_intmeth_keeps_escaped_controls_and_odd_user_parts() -> None:
    """RFC 4475 §3.1.1.2: quoted-pair NUL/BEL/DEL in a display name; '?' in the user part."""
    message = parse_message(_case("intmeth").wire)
    assert isinstance(message, Request)
    assert message.to.display_name == '"BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f"'
    uri = parse_uri(message.uri)
    assert uri.host == "example.com"
    assert uri.user is not None and uri.user.startswith("1_unusual.URI~(to-be!sure)&isn't+it$/")
    assert uri.headers is None
    assert message.from_.param("fromParam''~+*_!.-%") == '"работающий"'


def test_three_colon_ipv6_reference_is_tolerated() -> None:
    """RFC 5118 §4.10: ``[2001:db8:::192.0.2.1]`` is read as ``[2001:db8::192.0.2.1]``."""
    for name in ("ipv6-bug-abnf-3-colons", "ipv6-correct-abnf-2-colons"):
        message = parse_message(_case(name).wire)
        assert isinstance(message, Request)
        assert parse_uri(message.uri).host == "[2001:db8::192.0.2.1]"
        assert parse_uri(message.to.uri).host == "[2001:db8::192.0.2.1]"


def test_longreq_and_mpart01_keep_their_long_and_binary_parts() -> None:
    """RFC 4475 §3.1.1.7 and §3.1.1.11, now in the corpus byte for byte."""
    longreq = parse_message(_case("longreq").wire)
    assert isinstance(longreq, Request)
    assert len(longreq.vias) == 34
    assert len(longreq.body) == 150
    mpart = _case("mpart01").wire
    message = parse_message(mpart)
    assert isinstance(message, Request)
    assert len(message.body) == 553
    assert mpart.endswith(message.body) and b"\x00" in message.body


def test_a_datagram_without_its_empty_line_still_gets_a_400() -> None:
    """RFC 4475 §3.1.2.15: baddn ends after ``l: 0`` with no empty line; answer 400."""
    with pytest.raises(SipMessageError) as caught:
        parse_message(_case("baddn").wire)
    response = error_response(caught.value, to_tag="t1")
    assert response is not None
    assert response.status == 400
    assert response.get("Call-ID") == "baddn.31415@c.example.com"


def test_a_bare_control_character_outside_quotes_is_still_refused() -> None:
    wire = _case("lwsdisp").wire.replace(b"caller<sip", b"cal\x07ler<sip")
    with pytest.raises(SipMessageError, match="control character"):
        parse_message(wire)


def test_the_400_copies_what_it_can() -> None:
    """To/From that do not parse still get a 400 with Via, Call-ID and CSeq (issue 12)."""
    with pytest.raises(SipMessageError) as caught:
        parse_message(_case("quotbal").wire)
    response = error_response(caught.value, to_tag="t1")
    assert response is not None
    assert response.status == 400
    assert "unterminated display name" in response.reason
    assert response.get("Call-ID") == "quotbal.aksdj"
    assert response.get("CSeq") == "8 INVITE"
    assert response.get("To") == '"Mr. J. User <sip:j.user@example.com>'  # copied, untagged
    assert response.get("From") == "sip:caller@example.net;tag=93334"


def test_the_400_reason_cannot_forge_a_line() -> None:
    wire = _case("mismatch01").wire.replace(b"CSeq: 8 INVITE", "CSeq: 8 I\u2028NV".encode())
    with pytest.raises(SipMessageError) as caught:
        parse_message(wire)
    response = error_response(caught.value)
    assert response is not None
    assert response.reason.isascii() and response.reason.isprintable()
    assert b"\r\n" not in response.reason.encode()


def test_no_answer_to_an_ack() -> None:
    wire = _case("mismatch01").wire.replace(b"OPTIONS sip:", b"ACK sip:")
    with pytest.raises(SipMessageError) as caught:
        parse_message(wire)
    assert error_response(caught.value) is None
