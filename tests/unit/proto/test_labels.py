"""Device labels and "enrolled on" in the Store's answers (draft §5; RFC 2045 §8, RFC 2183).

The label is display text chosen by whoever enrolls: it is checked hard (length, printable
characters only, 400 otherwise) and it must come back exactly as sent, in the PUT's
``Content-Description`` and in every GET answer.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipcert.client.fetch import parse_certificate_parts
from sipcert.errors import InputError
from sipcert.proto.store import (
    MAX_LABEL_LENGTH,
    _parse_enrolled_on_email,
    certificates_response,
    enrolled_on_header,
    format_description,
    parse_description,
    parse_enrolled_on,
)

WHEN = datetime(2026, 12, 1, 10, 15, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "label"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        ("laptop", "laptop"),
        ("  desk phone ", "desk phone"),
        ("=?utf-8?q?caf=C3=A9?=", "café"),  # RFC 2047 §5(1): encoded-words are allowed here
        ("Alice's phone \N{MOBILE PHONE}", "Alice's phone \N{MOBILE PHONE}"),  # raw UTF-8
        ("x" * MAX_LABEL_LENGTH, "x" * MAX_LABEL_LENGTH),
    ],
)
def test_labels_that_are_accepted(value: str | None, label: str | None) -> None:
    assert parse_description(value) == label


@pytest.mark.parametrize(
    "value",
    [
        "x" * (MAX_LABEL_LENGTH + 1),
        "tab\there",
        "bell\x07",
        "nul\x00",
        "del\x7f",
        "rlo\u202eenohp",  # a bidi override would make the page lie about the label
        "escape\x1b[31m",
        "=?utf-8?q?new=0Aline?=",  # a control character hidden in an encoded-word
        "=?x-no-such-charset?q?abc?=",
        "y" * 600,
    ],
)
def test_labels_that_are_refused_without_echoing_them(value: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_description(value)
    assert value not in str(caught.value)
    assert caught.value.http_status == 400


@given(
    st.text(
        st.characters(codec="utf-8", categories=("L", "M", "N", "P", "S", "Zs")),
        min_size=1,
        max_size=MAX_LABEL_LENGTH,
    ).filter(lambda t: t.strip() == t and t.isprintable())
)
def test_every_valid_label_round_trips_through_the_header(label: str) -> None:
    value = format_description(label)
    assert value.isascii() and value.isprintable()
    assert parse_description(value) == label


def test_answers_carry_label_and_enrolled_on() -> None:
    """One certificate: header fields of the answer; several: of each part (RFC 2046 §5.1)."""
    one = certificates_response(
        [b"der-1"], ["a" * 64], max_age=60, labels=["café"], enrolled=[WHEN]
    )
    headers = dict(one.headers)
    parts = parse_certificate_parts(headers["Content-Type"], one.body, headers)
    assert [(p.der, p.label, p.enrolled) for p in parts] == [(b"der-1", "café", WHEN)]

    many = certificates_response(
        [b"der-1", b"der-2"],
        ["a" * 64, "b" * 64],
        max_age=60,
        labels=["laptop", None],
        enrolled=[WHEN, WHEN],
    )
    content_type = dict(many.headers)["Content-Type"]
    parts = parse_certificate_parts(content_type, many.body)
    assert [(p.der, p.label, p.enrolled) for p in parts] == [
        (b"der-1", "laptop", WHEN),
        (b"der-2", None, WHEN),
    ]


def test_a_bad_label_from_a_store_is_dropped_not_fatal() -> None:
    """A Store's label is display text: a malformed one is ignored, the certificate kept."""
    body = (
        b"--b\r\nContent-Type: application/pkix-cert\r\nContent-Description: "
        + b"z" * 100
        + b'\r\nContent-Disposition: attachment; creation-date="never"\r\n\r\nder\r\n--b--\r\n'
    )
    parts = parse_certificate_parts('multipart/mixed; boundary="b"', body)
    assert [(p.der, p.label, p.enrolled) for p in parts] == [(b"der", None, None)]
    assert parse_enrolled_on(None) is None


@given(st.datetimes(timezones=st.just(UTC)))
def test_enrolled_on_as_the_store_writes_it_reads_as_the_email_package_reads_it(
    when: datetime,
) -> None:
    """The direct reading of the Store's own spelling (issue 13) agrees with RFC 5322's."""
    value = enrolled_on_header(when)
    assert parse_enrolled_on(value) == _parse_enrolled_on_email(value)
    if when.year >= 1000:
        assert parse_enrolled_on(value) == when.replace(microsecond=0)


@pytest.mark.parametrize(
    "date",
    [
        "Mon, 31 Feb 2026 10:00:00 +0000",  # no such day
        "Mon, 00 Dec 2026 10:00:00 +0000",
        "Mon, 01 Dec 2026 24:00:00 +0000",
        "Mon, 01 Dec 2026 23:59:60 +0000",
        "Mon, 01 Dec 0099 10:00:00 +0000",  # RFC 5322 reads a two-digit year its own way
        "Xyz, 01 Dec 2026 10:00:00 +0000",
        "Mon, 01 Dec 2026 10:00:00 +0100",
        "Mon, 1 Dec 2026 10:00:00 +0000",
    ],
)
def test_odd_enrolled_on_dates_read_as_the_email_package_reads_them(date: str) -> None:
    value = f'attachment; creation-date="{date}"'
    assert parse_enrolled_on(value) == _parse_enrolled_on_email(value)
