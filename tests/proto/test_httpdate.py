"""HTTP dates: the three formats of RFC 9110 §5.6.7, against the standard library's reading."""

from __future__ import annotations

import calendar
import email.utils

import pytest
from hypothesis import given
from hypothesis import strategies as st

from revproxy.proto.httpdate import format_http_date, parse_http_date

RFC_EXAMPLE = 784111777  # Sun, 06 Nov 1994 08:49:37 GMT


@pytest.mark.parametrize(
    "value",
    [
        b"Sun, 06 Nov 1994 08:49:37 GMT",
        b"Sunday, 06-Nov-94 08:49:37 GMT",
        b"Sun Nov  6 08:49:37 1994",
        b"  Sun, 06 Nov 1994 08:49:37 GMT  ",
        b"sun, 06 nov 1994 08:49:37 GMT",
    ],
)
def test_the_three_formats(value: bytes) -> None:
    assert parse_http_date(value) == RFC_EXAMPLE


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"yesterday",
        b"Sun, 06 Nov 1994 08:49:37",  # no GMT
        b"Sun, 06 Nov 1994 08:49:37 UTC",
        b"Sun, 31 Feb 1994 08:49:37 GMT",  # no such day
        b"Sun, 06 Nox 1994 08:49:37 GMT",
        b"Sun, 06 Nov 1994 24:00:00 GMT",
        b"Sun, 6 Nov 1994 08:49:37 GMT",  # IMF-fixdate has two-digit days
        b"Sunday, 06-Nov-1994 08:49:37 GMT",
        b"Sun Nov  6 08:49 1994",
        b"Funday, 06-Nov-94 08:49:37 GMT",
        b"0",
        b"-1",
    ],
)
def test_not_a_date(value: bytes) -> None:
    assert parse_http_date(value) is None


def test_two_digit_years_follow_now() -> None:
    now_2026 = parse_http_date(b"Mon, 07 Dec 2026 00:00:00 GMT")
    assert now_2026 is not None
    got = parse_http_date(b"Monday, 01-Jan-80 00:00:00 GMT", now=now_2026)
    assert got == parse_http_date(b"Tue, 01 Jan 1980 00:00:00 GMT")
    got = parse_http_date(b"Monday, 01-Jan-30 00:00:00 GMT", now=now_2026)
    assert got == parse_http_date(b"Tue, 01 Jan 2030 00:00:00 GMT")


def test_format() -> None:
    assert format_http_date(RFC_EXAMPLE) == b"Sun, 06 Nov 1994 08:49:37 GMT"
    assert format_http_date(0) == b"Thu, 01 Jan 1970 00:00:00 GMT"
    assert format_http_date(951782400) == b"Tue, 29 Feb 2000 00:00:00 GMT"


@given(st.integers(min_value=0, max_value=253402300799))  # up to 9999-12-31
def test_round_trip_and_standard_library(seconds: int) -> None:
    text = format_http_date(seconds)
    assert parse_http_date(text) == seconds
    assert text.decode() == email.utils.formatdate(seconds, usegmt=True)
    parsed = email.utils.parsedate_tz(text.decode())
    assert parsed is not None
    assert calendar.timegm(parsed[:9]) == seconds


@given(st.binary(max_size=40))
def test_never_raises(value: bytes) -> None:
    parse_http_date(value)
