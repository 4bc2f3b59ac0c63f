"""Range requests (proto/ranges.py): ``bytes=`` ranges read whole, coalesced, refused or
ignored — tables, then hypothesis against a model that counts the bytes asked for."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from revproxy.proto.httpdate import format_http_date
from revproxy.proto.ranges import (
    MAX_RANGES,
    ByteRange,
    Unsatisfiable,
    if_range_allows,
    parse_range,
    parse_range_set,
)

SIZE = 10_000


@pytest.mark.parametrize(
    ("value", "first", "last"),
    [
        (b"bytes=0-499", 0, 499),
        (b"bytes=500-999", 500, 999),
        (b"bytes=-500", 9500, 9999),  # the final 500 bytes (§14.1.2's examples)
        (b"bytes=9500-", 9500, 9999),
        (b"bytes=0-0", 0, 0),
        (b"bytes=-1", 9999, 9999),
        (b"bytes=0-", 0, 9999),
        (b"bytes=0-99999", 0, 9999),  # last-pos beyond the end: clamped
        (b"bytes=-99999", 0, 9999),  # suffix longer than the representation: all of it
        (b"bytes=9999-9999", 9999, 9999),
        (b"BYTES=1-2", 1, 2),  # units compare case-insensitively
        (b"bytes=0001-0002", 1, 2),
        (b"bytes=1-2,", 1, 2),
        (b"bytes=, 1-2 ,\t,", 1, 2),
        (b" bytes=1-2 ", 1, 2),
        (b"bytes=0-99999999999999999999999999", 0, 9999),  # a huge last-pos is just big
        # Several ranges that coalesce into one.
        (b"bytes=0-10,5-20", 0, 20),
        (b"bytes=0-10,11-20", 0, 20),  # adjacent
        (b"bytes=11-20,0-10", 0, 20),  # out of order
        (b"bytes=0-0,-1,1-9998", 0, 9999),
        (b"bytes=5-9,0-4,10-", 0, 9999),
        (b"bytes=100-200,150-160", 100, 200),  # contained
        (b"bytes=0-1,20000-30000", 0, 1),  # unsatisfiable members are dropped
        (b"bytes=-0,5-6", 5, 6),
    ],
)
def test_one_range(value: bytes, first: int, last: int) -> None:
    found = parse_range(value, SIZE)
    assert found == ByteRange(first, last, SIZE)
    assert isinstance(found, ByteRange)
    assert found.length == last - first + 1
    assert found.content_range == b"bytes %d-%d/%d" % (first, last, SIZE)


@pytest.mark.parametrize(
    "value",
    [
        b"bytes=10000-",  # first-pos at the length
        b"bytes=10000-10005",
        b"bytes=-0",  # an empty suffix
        b"bytes=20000-30000,-0",
        b"bytes=99999999999999999999999-",
    ],
)
def test_unsatisfiable(value: bytes) -> None:
    found = parse_range(value, SIZE)
    assert found == Unsatisfiable(SIZE)
    assert isinstance(found, Unsatisfiable)
    assert found.content_range == b"bytes */10000"


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"bytes",
        b"bytes=",
        b"bytes=,",
        b"items=0-1",  # a unit we do not know
        b"bytes =0-1",
        b"bytes= 0 -1",
        b"bytes=1",
        b"bytes=-",
        b"bytes=5-4",  # last before first: invalid
        b"bytes=0-1,5-4",  # one invalid member makes the whole field invalid
        b"bytes=a-b",
        b"bytes=0x1-2",
        b"bytes=+1-2",
        b"bytes=1-2-3",
        b"bytes=--1",
        b"bytes=\xd9\xa1-2",  # only ASCII digits
        b"bytes=0-1;q=1",
        # Several ranges that stay several: no multipart/byteranges, the whole representation.
        b"bytes=0-0,2-2",
        b"bytes=0-10,-10",
    ],
)
def test_ignored(value: bytes) -> None:
    assert parse_range(value, SIZE) is None


def test_several_ranges_are_found_in_order() -> None:
    assert parse_range_set(b"bytes=-10,0-0,2-3,3-5", SIZE) == (
        ByteRange(0, 0, SIZE),
        ByteRange(2, 5, SIZE),
        ByteRange(9990, 9999, SIZE),
    )


def test_too_many_ranges_are_ignored() -> None:
    many = b"bytes=" + b",".join(b"%d-%d" % (i, i) for i in range(MAX_RANGES))
    assert parse_range(many, SIZE) == ByteRange(0, MAX_RANGES - 1, SIZE)
    assert parse_range(many + b",100-100", SIZE) is None
    # Empty members do not count.
    assert parse_range(many + b"," * 100, SIZE) == ByteRange(0, MAX_RANGES - 1, SIZE)


def test_an_empty_representation_is_sent_whole() -> None:
    for value in (b"bytes=0-", b"bytes=-5", b"bytes=0-0"):
        assert parse_range(value, 0) is None


def test_one_byte_representation() -> None:
    assert parse_range(b"bytes=0-", 1) == ByteRange(0, 0, 1)
    assert parse_range(b"bytes=-5", 1) == ByteRange(0, 0, 1)
    assert parse_range(b"bytes=1-", 1) == Unsatisfiable(1)


# --- If-Range (§13.1.5) ----------------------------------------------------------------------

ETAG = b'"5f1e-2a"'
MTIME = 784111777


@pytest.mark.parametrize(
    ("value", "allows"),
    [
        (ETAG, True),
        (b" " + ETAG + b" ", True),
        (b'"other"', False),
        (b"W/" + ETAG, False),  # weak tags never match strongly
        (b'"5f1e-2a", "x"', False),  # one validator, not a list
        (b'"5f1e', False),
        (format_http_date(MTIME), True),
        (b"Sunday, 06-Nov-94 08:49:37 GMT", True),
        (format_http_date(MTIME + 1), False),  # exactly the date, not "not after"
        (format_http_date(MTIME - 1), False),
        (b"*", False),
        (b"", False),
        (b"yesterday", False),
    ],
)
def test_if_range(value: bytes, allows: bool) -> None:
    assert if_range_allows(value, ETAG, MTIME) is allows


def test_if_range_without_validators() -> None:
    assert not if_range_allows(ETAG, None, MTIME)
    assert not if_range_allows(format_http_date(MTIME), ETAG, None)
    assert not if_range_allows(ETAG, b"W/" + ETAG, MTIME)  # our own weak tag neither


# --- hypothesis: against a model -------------------------------------------------------------

_spec = st.one_of(
    st.tuples(st.integers(0, 300), st.none()),  # first-
    st.tuples(st.integers(0, 300), st.integers(0, 300)),  # first-last (maybe invalid)
    st.tuples(st.none(), st.integers(0, 300)),  # -suffix
)


def _render(spec: tuple[int | None, int | None]) -> bytes:
    first, last = spec
    return (
        (b"" if first is None else b"%d" % first) + b"-" + (b"" if last is None else b"%d" % last)
    )


@given(specs=st.lists(_spec, min_size=1, max_size=MAX_RANGES + 2), size=st.integers(0, 250))
def test_against_a_model(specs: list[tuple[int | None, int | None]], size: int) -> None:
    value = b"bytes=" + b", ".join(map(_render, specs))
    found = parse_range_set(value, size)
    invalid = any(f is not None and la is not None and la < f for f, la in specs)
    if invalid or len(specs) > MAX_RANGES or size == 0:
        assert found is None
        return
    wanted: set[int] = set()
    for first, last in specs:
        if first is None:
            assert last is not None
            wanted.update(range(max(size - last, 0), size))
        else:
            wanted.update(range(first, min(size, (last if last is not None else size) + 1)))
    if not wanted:
        assert found == Unsatisfiable(size)
        return
    assert isinstance(found, tuple)
    covered: list[int] = []
    for r in found:
        covered.extend(range(r.first, r.last + 1))
    assert covered == sorted(wanted)  # every byte once, in order
    # Coalesced: a gap of at least one byte between any two ranges.
    assert all(a.last + 1 < b.first for a, b in itertools.pairwise(found))
    one = parse_range(value, size)
    assert one == (found[0] if len(found) == 1 else None)


@given(value=st.binary(max_size=40), size=st.integers(0, 1 << 40))
def test_any_bytes_are_an_answer(value: bytes, size: int) -> None:
    found = parse_range(b"bytes=" + value, size)
    if isinstance(found, ByteRange):
        assert 0 <= found.first <= found.last < size
    else:
        assert found is None or found == Unsatisfiable(size)
    assert parse_range(value, size) is None or value.strip(b" \t")[:6].lower() == b"bytes="
