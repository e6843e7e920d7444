"""AOR parsing and comparison (RFC 3261 §19.1.4, draft §4.5, §5.1)."""

from __future__ import annotations

import string
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipcert.errors import AORError, InputTooLargeError
from sipcert.proto.aor import (
    _USER_LITERAL,
    AOR,
    _canonical_user_by_character,
    aor_from_uri,
    canonical_user,
    digest_username,
    escape_user,
    normalize_domain,
    parse_aor,
)

ACCEPTED = [
    ("bob@example.com", "bob", "example.com"),
    ("sip:bob@example.com", "bob", "example.com"),
    ("SIP:bob@example.com", "bob", "example.com"),
    ("sips:bob@example.com", "bob", "example.com"),
    ("im:bob@example.com", "bob", "example.com"),
    ("pres:bob@example.com", "bob", "example.com"),
    ("mailto:bob@example.com", "bob", "example.com"),
    ("MailTo:bob@example.com", "bob", "example.com"),
    ("bob@EXAMPLE.Com", "bob", "example.com"),
    ("Bob@example.com", "Bob", "example.com"),
    ("b%6Fb@example.com", "bob", "example.com"),
    ("b%6fb@example.com", "bob", "example.com"),
    ("%41lice@example.com", "Alice", "example.com"),
    ("a%2fb@example.com", "a%2Fb", "example.com"),
    ("a%40b@example.com", "a%40b", "example.com"),
    ("a%20b@example.com", "a%20b", "example.com"),
    ("+15551234567@example.com", "+15551234567", "example.com"),
    ("a.b-c_d!~*'()@example.com", "a.b-c_d!~*'()", "example.com"),
    ("a&=+$,;?/b@example.com", "a&=+$,;?/b", "example.com"),
    ("bob@sub.example.co.uk", "bob", "sub.example.co.uk"),
    ("bob@xn--bcher-kva.example", "bob", "xn--bcher-kva.example"),
    ("bob@localhost", "bob", "localhost"),
    ("bob@a1-b2.example", "bob", "a1-b2.example"),
    ("bob@123.example.com", "bob", "123.example.com"),
    ("bob@" + "a" * 63 + ".com", "bob", "a" * 63 + ".com"),
]


@pytest.mark.parametrize(("text", "user", "host"), ACCEPTED)
def test_accepted_forms_are_canonical(text: str, user: str, host: str) -> None:
    aor = parse_aor(text)
    assert (aor.user, aor.host) == (user, host)
    assert str(aor) == f"{user}@{host}"


REJECTED = [
    ("", "empty AOR"),
    ("bob", "no '@'"),
    ("sip:", "missing user@host"),
    ("@example.com", "empty user part"),
    ("sip:@example.com", "empty user part"),
    ("bob@", "missing host"),
    ("sip:bob@", "missing host"),
    ("bob@1.2.3.4", "IP address host"),
    ("bob@192.168.0.1", "IP address host"),
    ("bob@[2001:db8::1]", "IP literal host"),
    ("sip:bob@[::1]:5060", "IP literal host"),
    ("sip:bob@example.com:5060", "port is not allowed"),
    ("bob@example.com:", "port is not allowed"),
    ("sip:bob@example.com;transport=tcp", "URI parameters"),
    ("sip:bob@example.com?subject=x", "URI headers"),
    ("bob:secret@example.com", "password"),
    ("sip:bob:secret@example.com", "password"),
    ("<sip:bob@example.com>", "angle brackets"),
    ('"Bob" <sip:bob@example.com>', "whitespace or control"),
    ('"Bob"<sip:bob@example.com>', "angle brackets"),
    ("bob @example.com", "U+0020"),
    ("bob@example.com ", "U+0020"),
    ("\tbob@example.com", "U+0009"),
    ("bob\x00@example.com", "U+0000"),
    ("bob@exa\u200bmple.com", "U+200B"),
    ("bob\r\n@example.com", "U+000D"),
    ("b#b@example.com", "invalid character '#'"),
    ("b%b@example.com", "malformed %-escape"),
    ("b%4@example.com", "malformed %-escape"),
    ("bob%@example.com", "malformed %-escape"),
    ("b%g0@example.com", "malformed %-escape"),
    ("bøb@example.com", "invalid character 'ø'"),
    ("bob@exämple.com", "non-ASCII host"),
    ("bob@ex_ample.com", "invalid character '_'"),
    ("bob@-example.com", "hyphen"),
    ("bob@example-.com", "hyphen"),
    ("bob@example..com", "empty label"),
    ("bob@.example.com", "empty label"),
    ("bob@example.com.", "must not end with a dot"),
    ("bob@example.123", "all-numeric"),
    ("bob@1.2.3", "all-numeric"),
    ("bob@" + "a" * 64 + ".com", "longer than 63"),
    ("bob@" + ".".join(["a" * 60] * 5), "longer than 253"),
    ("a@b@example.com", "more than one '@'"),
    ("tel:+15551234567", "unsupported URI scheme 'tel'"),
    ("http://bob@example.com", "unsupported URI scheme 'http'"),
    ("xmpp:bob@example.com", "unsupported URI scheme ('xmpp')"),
]


@pytest.mark.parametrize(("text", "fragment"), REJECTED)
def test_rejects_with_precise_message(text: str, fragment: str) -> None:
    with pytest.raises(AORError) as info:
        parse_aor(text)
    assert fragment in str(info.value)


def test_password_is_not_echoed() -> None:
    for text in ("bob:hunter2@example.com", "sip:bob:hunter2@example.com"):
        with pytest.raises(AORError) as info:
            parse_aor(text)
        assert "hunter2" not in str(info.value)


def test_over_long_input_is_too_large() -> None:
    with pytest.raises(InputTooLargeError, match="limit of 512"):
        parse_aor("a" * 300 + "@" + "b" * 300 + ".com")


def test_over_long_user_is_too_large() -> None:
    with pytest.raises(InputTooLargeError, match="user part"):
        parse_aor("u" * 257 + "@example.com")
    assert parse_aor("u" * 256 + "@example.com").user == "u" * 256


def test_non_text_is_an_aor_error() -> None:
    with pytest.raises(AORError, match="must be text"):
        parse_aor(b"bob@example.com")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("left", "right", "equal"),
    [
        ("bob@example.com", "sip:bob@EXAMPLE.COM", True),
        ("b%6Fb@example.com", "bob@example.com", True),
        ("a%2fb@example.com", "a%2Fb@example.com", True),
        ("im:alice@example.com", "sips:alice@example.com", True),
        ("Bob@example.com", "bob@example.com", False),
        ("a%2Fb@example.com", "a/b@example.com", False),  # '/' is reserved: not equivalent
        ("bob@example.com", "bob@sub.example.com", False),
        ("bob@example.com", "bob@example.org", False),
    ],
)
def test_equality_follows_rfc3261(left: str, right: str, equal: bool) -> None:
    assert (parse_aor(left) == parse_aor(right)) is equal
    assert (hash(parse_aor(left)) == hash(parse_aor(right))) or not equal


def test_direct_construction_canonicalises_and_validates() -> None:
    assert AOR("b%6fb", "Example.COM") == AOR("bob", "example.com")
    with pytest.raises(AORError, match="IP address"):
        AOR("bob", "10.0.0.1")
    with pytest.raises(AORError, match="empty user"):
        AOR("", "example.com")


def test_uri_properties() -> None:
    aor = parse_aor("sips:Alice@Example.com")
    assert aor.sip_uri == "sip:Alice@example.com"
    assert aor.im_uri == "im:Alice@example.com"
    assert str(aor) == "Alice@example.com"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sip:alice@example.com", "alice@example.com"),
        ("im:alice@example.com", "alice@example.com"),
        ("xmpp:alice@example.com", "alice@example.com"),
        ("x-custom+v1.2:alice@EXAMPLE.com", "alice@example.com"),
        ("mailto:al%69ce@example.com", "alice@example.com"),
    ],
)
def test_aor_from_uri_accepts_any_scheme(uri: str, expected: str) -> None:
    assert str(aor_from_uri(uri)) == expected


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        ("alice@example.com", "no scheme"),
        ("https://alice@example.com/", "authority"),
        ("sip:alice@example.com:5060", "port"),
        ("sip:alice@example.com;user=phone", "parameters"),
        ("sip:alice:pw@example.com", "password"),
        ("urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6", "no '@'"),
        ("sip:alice@127.0.0.1", "IP address"),
        ("1sip:alice@example.com", "no scheme"),
    ],
)
def test_aor_from_uri_rejects(uri: str, fragment: str) -> None:
    with pytest.raises(AORError) as info:
        aor_from_uri(uri)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Example.COM", "example.com"), ("a-b.c0", "a-b.c0"), ("xn--p1ai", "xn--p1ai")],
)
def test_normalize_domain(text: str, expected: str) -> None:
    assert normalize_domain(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty domain"),
        ("1.2.3.4", "IP address"),
        ("::1", "IP address"),
        ("[::1]", "IP address"),
        ("*.example.com", "invalid character '*'"),
        ("example.com.", "end with a dot"),
        ("ex ample.com", "U+0020"),
        ("bücher.de", "non-ASCII"),
        ("a" * 64, "longer than 63"),
    ],
)
def test_normalize_domain_rejects(text: str, fragment: str) -> None:
    with pytest.raises(AORError) as info:
        normalize_domain(text)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("host", "fragment"),
    [
        ("xn--zz.example.com", "'xn--zz' of host name"),  # Punycode of nothing valid
        ("a.xn--a.example", "'xn--a' of host name"),  # decodes to U+0080, not PVALID
        ("xn--ls8h.example", "'xn--ls8h' of host name"),  # an emoji: not IDNA2008
        ("xn--bcher-kva0.example", "'xn--bcher-kva0' of host name"),
        ("xn--bcher-kva.ab--cd.example", "not a valid IDNA2008 domain name"),
    ],
)
def test_invalid_a_labels_are_aor_errors(host: str, fragment: str) -> None:
    """RFC 5891 §5.4: an xn-- label must decode to a valid U-label and encode back to itself.

    httpx decodes such hosts with ``idna`` and raised from deep inside (exit 70): the AOR
    parser is where a bad one must stop, as input (exit 4).
    """
    for parse in (parse_aor, aor_from_uri):
        with pytest.raises(AORError, match="IDNA2008") as info:
            parse(f"sip:bob@{host}")
        assert fragment in str(info.value)
        assert info.value.exit_code == 4
    with pytest.raises(AORError, match="IDNA2008"):
        normalize_domain(host)


def test_valid_a_labels_and_plain_double_hyphens_stay_accepted() -> None:
    assert parse_aor("bob@XN--Bcher-KVA.example").host == "xn--bcher-kva.example"
    assert normalize_domain("sip.xn--fiqs8s") == "sip.xn--fiqs8s"  # 中国
    assert normalize_domain("r3---sn-4g5e.example") == "r3---sn-4g5e.example"  # no A-label


def test_canonical_user_and_escape_user() -> None:
    assert canonical_user("%61%62%2f") == "ab%2F"
    assert escape_user("alice") == "alice"
    assert escape_user("al ice%") == "al%20ice%25"
    assert escape_user("jörg") == "j%C3%B6rg"
    assert escape_user("a+b") == "a+b"
    assert parse_aor(f"{escape_user('al ice')}@example.com").user == "al%20ice"


# --- property tests -------------------------------------------------------------------------

_USER_CHARS = string.ascii_letters + string.digits + "-_.!~*'()&=+$,;?/"
# Without "xn--": a random one is almost never a valid A-label (RFC 5891 §5.4).
_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True).filter(
    lambda label: not label.startswith("xn--")
)
_TLD = st.from_regex(r"[a-z]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True).filter(
    lambda label: not label.startswith("xn--")
)
_ESCAPE = st.integers(0, 255).map(lambda b: f"%{b:02x}")
_USER = st.lists(
    st.one_of(st.sampled_from(list(_USER_CHARS)), _ESCAPE), min_size=1, max_size=40
).map("".join)


@st.composite
def aors(draw: st.DrawFn) -> AOR:
    labels = draw(st.lists(_LABEL, min_size=0, max_size=3))
    host = ".".join([*labels, draw(_TLD)])
    cased = "".join(c.upper() if draw(st.booleans()) else c for c in host)
    return AOR(draw(_USER), cased)


@given(aors())
def test_valid_aors_round_trip(aor: AOR) -> None:
    assert parse_aor(str(aor)) == aor
    assert parse_aor(aor.sip_uri) == aor
    assert parse_aor(aor.im_uri) == aor
    for scheme in ("sips", "pres", "mailto", "SIP"):
        assert parse_aor(f"{scheme}:{aor}") == aor
        assert aor_from_uri(f"{scheme}:{aor}") == aor
    assert aor.host == aor.host.lower()


@pytest.mark.parametrize("scheme", ["sip", "sips", "im", "SIP"])
def test_user_starting_with_slashes_is_not_an_authority(scheme: str) -> None:
    # Found by `make test-random`: "/" is user-unreserved (RFC 3261 §25.1), so the SAN URI
    # of AOR "//x@a.example" is "sip://x@a.example" and must name that AOR (draft §4.5).
    aor = AOR("//x", "a.example")
    assert parse_aor(str(aor)) == aor
    assert aor_from_uri(f"{scheme}:{aor}") == aor
    assert aor_from_uri(aor.sip_uri) == aor


@given(_USER)
def test_canonical_user_is_idempotent(user: str) -> None:
    once = canonical_user(user)
    assert canonical_user(once) == once


@given(st.text(max_size=600))
def test_arbitrary_text_only_raises_aor_errors(text: str) -> None:
    for parse in (parse_aor, aor_from_uri):
        try:
            result = parse(text)
        except (AORError, InputTooLargeError):
            continue
        assert "@" in text
        assert parse_aor(str(result)) == result


@given(st.text(alphabet=string.printable, max_size=80))
def test_printable_text_only_raises_aor_errors(text: str) -> None:
    try:
        normalize_domain(text)
    except (AORError, InputTooLargeError):
        pass
    try:
        result = parse_aor(text)
    except (AORError, InputTooLargeError):
        return
    assert parse_aor(str(result)) == result


# -- the Digest username of an AOR (the users file's rule, issue 9) ----------------------------


@pytest.mark.parametrize(
    ("aor", "username"),
    [
        ("alice@example.com", "alice"),
        ("zo%C3%AB@example.com", "zoë"),
        ("zo%c3%ab@example.com", "zoë"),
        ("a%20b@example.com", "a b"),
        ("b%6Fb%25x@example.com", "bob%x"),
        ("a%40b@example.com", "a@b"),
        ("a;b@example.com", "a;b"),
        ("%F0%9F%98%80@example.com", "\U0001f600"),
    ],
)
def test_digest_username(aor: str, username: str) -> None:
    parsed = parse_aor(aor)
    assert digest_username(parsed) == username
    assert escape_user(username) == parsed.user


@pytest.mark.parametrize(
    ("aor", "fragment"),
    [
        ("%FF@example.com", "does not unescape to UTF-8"),
        ("zo%C3@example.com", "does not unescape to UTF-8"),
        ("a%0Ab@example.com", "U+000A"),
        ("a%00b@example.com", "U+0000"),
        ("a%E2%80%A8b@example.com", "U+2028"),
        ("a%E2%80%8Bb@example.com", "U+200B"),
        ("a%3Bb@example.com", "names a;b@example.com"),
        ("a%2Fb@example.com", "names a/b@example.com"),
    ],
)
def test_digest_username_refuses(aor: str, fragment: str) -> None:
    with pytest.raises(AORError) as info:
        digest_username(parse_aor(aor))
    assert fragment in str(info.value)


@given(aors())
def test_digest_username_inverts_escape_user(aor: AOR) -> None:
    try:
        name = digest_username(aor)
    except AORError:
        return
    assert AOR(escape_user(name), aor.host) == aor
    assert digest_username(parse_aor(str(aor))) == name


@given(st.text(min_size=1, max_size=60))
def test_every_digest_username_names_one_aor(name: str) -> None:
    try:
        aor = AOR(escape_user(name), "example.com")
    except (AORError, InputTooLargeError):
        return
    try:
        assert digest_username(aor) == name
    except AORError as exc:  # only a control or format character has no AOR account
        assert "control or format character" in str(exc)


def _outcome(function: Callable[[str], str], text: str) -> str | tuple[type, str]:
    try:
        return function(text)
    except (AORError, InputTooLargeError) as exc:
        return type(exc), str(exc)


# Literal characters, escapes, characters the grammar refuses, non-ASCII; lengths around
# MAX_USER_LENGTH (256).
_USER_TEXT = st.text(
    alphabet=st.sampled_from(list("aZ09-_.!~*'()&=+$,;?/%2fA@ :\x00é€")), max_size=300
) | st.text(alphabet="ab", min_size=250, max_size=260)


@given(_USER_TEXT)
def test_canonical_user_shortcut_is_the_grammar(text: str) -> None:
    # A literal-only user part is returned as it is (canonical_user's shortcut): the same
    # value or error as the character-by-character reading.
    assert _outcome(canonical_user, text) == _outcome(_canonical_user_by_character, text)


@given(_USER_TEXT)
def test_escape_user_shortcut_is_the_escaping(text: str) -> None:
    def by_character(raw: str) -> str:
        return _canonical_user_by_character(
            "".join(
                c if c in _USER_LITERAL else "".join(f"%{b:02X}" for b in c.encode()) for c in raw
            )
        )

    assert _outcome(escape_user, text) == _outcome(by_character, text)
