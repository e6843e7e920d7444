"""The fast paths of ``parse_query``, ``aor_from_uri``, ``normalize_domain`` and
``address_key`` (issue 13) give exactly what the full computations give.

``parse_query`` answers the canonical spelling ``email=user%40host`` with
:func:`~sipcert.proto.aor.plain_aor` instead of the full grammar; for every query the two
must agree: the same :class:`StoreQuery` (same AOR, same attribute), or, when the fast path
declines, the full parser's answer or error.
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipcert.errors import InputTooLargeError, SipCertError
from sipcert.proto.aor import (
    AOR,
    MAX_AOR_LENGTH,
    _aor_from_uri,
    _aor_from_uri_remembered,
    _check_host,
    _check_text,
    normalize_domain,
    parse_aor,
    plain_aor,
    plain_aor_text,
)
from sipcert.proto.ratelimit import _address_key, address_key
from sipcert.proto.store import StoreQuery, enrolled_on_header, parse_query, parse_query_full

_USER = st.text(alphabet="abcXYZ019._-%~+;:@ ", min_size=0, max_size=12)
_HOST = st.one_of(
    st.sampled_from(["example.com", "EXAMPLE.com", "a-b.example.net", "x", "1.2.3.4"]),
    st.text(alphabet="abcXYZ019.-_:;[]", min_size=0, max_size=20),
)


def _full(query: str) -> StoreQuery | str:
    try:
        return parse_query_full.__wrapped__(query)
    except SipCertError as exc:
        return f"{type(exc).__name__}: {exc}"


def _fast(query: str) -> StoreQuery | str:
    try:
        return parse_query(query)
    except SipCertError as exc:
        return f"{type(exc).__name__}: {exc}"


@given(
    attribute=st.sampled_from(["email", "sip", "uri", "certHash", "mail"]), user=_USER, host=_HOST
)
def test_parse_query_agrees_with_the_full_grammar(attribute: str, user: str, host: str) -> None:
    query = f"{attribute}={user}%40{host}"
    assert _fast(query) == _full(query)


@given(user=_USER, host=_HOST)
def test_plain_aor_is_parse_aor_or_declines(user: str, host: str) -> None:
    fast = plain_aor(user, host)
    if fast is None:
        return
    assert fast == parse_aor(f"{user}@{host}")
    assert (fast.user, fast.host) == (
        parse_aor(f"{user}@{host}").user,
        parse_aor(f"{user}@{host}").host,
    )


@given(user=st.one_of(_USER, st.just("u" * 300)), host=_HOST)
def test_plain_aor_text_is_plain_aors_text_and_host(user: str, host: str) -> None:
    """The hot GET's text-only fast path (issue 13) gives what ``plain_aor`` gives, on the
    first call (which may remember the host) and on a later one (which uses it)."""
    aor = plain_aor(user, host)
    expected = None if aor is None else (str(aor), aor.host)
    assert plain_aor_text(user, host) == expected
    assert plain_aor_text(user, host) == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("email=bob%40example.com", StoreQuery(AOR("bob", "example.com"), "email", None)),
        (
            "sip=Bob.Smith_1-2%40Example.COM",
            StoreQuery(AOR("Bob.Smith_1-2", "example.com"), "sip", None),
        ),
    ],
)
def test_canonical_queries_take_the_fast_path(query: str, expected: StoreQuery) -> None:
    before = parse_query_full.cache_info().misses
    assert parse_query(query) == expected
    assert parse_query_full.cache_info().misses == before  # the full parser was not asked


@pytest.mark.parametrize(
    "query",
    [
        "email=bob%40-bad-.example.com",  # an invalid host: the full parser's error
        "email=b%6fb%40example.com",  # an escape in the user part
        "email=" + "u" * 300 + "%40example.com",  # longer than a user part may be
        "email=bob%40example.com&certHash=x",
    ],
)
def test_other_spellings_get_the_full_parsers_answer(query: str) -> None:
    assert _fast(query) == _full(query)


@given(
    st.datetimes(
        min_value=datetime(1970, 1, 1),
        max_value=datetime(9999, 12, 31),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=-7)), timezone(timedelta(hours=5, minutes=30))]
        ),
    )
)
def test_enrolled_on_header_spells_dates_as_email_utils(when: datetime) -> None:
    """The directly formatted date (issue 13) is ``email.utils.format_datetime``'s, in UTC."""
    expected = email.utils.format_datetime(when.astimezone(UTC))
    assert enrolled_on_header(when) == f'attachment; creation-date="{expected}"'


def _outcome(parse: Callable[[str], AOR], text: str) -> tuple[str, str] | str:
    try:
        found = parse(text)
    except SipCertError as exc:
        return f"{type(exc).__name__}: {exc}"
    return found.user, found.host


_SCHEME = st.sampled_from(["sip", "SIPS", "im", "pres", "mailto", "x-y.z+1", "1x", "", "sip:"])


@given(scheme=_SCHEME, user=_USER, host=_HOST, tail=st.sampled_from(["", ":5060", ";a=b", "/"]))
def test_aor_from_uri_fast_path_agrees_with_the_full_parser(
    scheme: str, user: str, host: str, tail: str
) -> None:
    """A SAN URI read by the plain-spelling fast path (issue 13) gives the full parser's
    AOR, or the fast path declines and the full parser's error stands."""
    uri = f"{scheme}:{user}@{host}{tail}" if scheme else f"{user}@{host}{tail}"
    fast = _outcome(_aor_from_uri_remembered.__wrapped__, uri)
    assert fast == _outcome(_aor_from_uri, uri)


def test_aor_from_uri_fast_path_keeps_the_length_limit() -> None:
    uri = "sip:" + "a" * MAX_AOR_LENGTH + "@example.com"
    with pytest.raises(InputTooLargeError):
        _aor_from_uri_remembered.__wrapped__(uri)
    assert _aor_from_uri_remembered.__wrapped__("im:Bob.x@Example.COM") == AOR(
        "Bob.x", "example.com"
    )


@given(text=st.one_of(_HOST, st.text(max_size=12)))
def test_normalize_domain_remembered_is_the_full_check(text: str) -> None:
    def full(value: str) -> str:
        _check_text(value, "domain")
        return _check_host(value)

    def outcome(check: Callable[[str], str]) -> str:
        try:
            return check(text)
        except SipCertError as exc:
            return f"{type(exc).__name__}: {exc}"

    assert outcome(normalize_domain) == outcome(full)
    assert outcome(normalize_domain) == outcome(normalize_domain)  # remembered: the same


@given(
    address=st.one_of(
        st.ip_addresses().map(str),
        st.sampled_from(["::ffff:192.0.2.1", "fe80::1%eth0", "not an address", "x" * 80]),
    )
)
def test_address_key_remembered_is_the_full_computation(address: str) -> None:
    assert address_key(address) == _address_key.__wrapped__(address) == address_key(address)
