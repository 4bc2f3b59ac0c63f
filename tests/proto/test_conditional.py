"""Conditional requests (proto/conditional.py): RFC 9110 §13.2.2's order, the two comparisons
of entity tags, and the lists they come in — tables, then hypothesis against a plain model."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from revproxy.proto.conditional import MAX_TAGS, etag_matches, evaluate, parse_etag_list
from revproxy.proto.httpdate import format_http_date

ETAG = b'"5f1e-2a"'
MTIME = 784111777  # Sun, 06 Nov 1994 08:49:37 GMT
AT = format_http_date(MTIME)
BEFORE = format_http_date(MTIME - 1)
AFTER = format_http_date(MTIME + 1)


def ev(
    method: bytes = b"GET",
    fields: dict[str, bytes] | None = None,
    *,
    etag: bytes | None = ETAG,
    mtime: int | None = MTIME,
) -> int | None:
    headers = [(name.replace("_", "-").encode(), value) for name, value in (fields or {}).items()]
    return evaluate(method, headers, etag=etag, last_modified=mtime)


# --- the comparisons (RFC 9110 §8.8.3.2's table) -------------------------------------------


@pytest.mark.parametrize(
    ("theirs", "ours", "strong", "weak"),
    [
        (b'W/"1"', b'W/"1"', False, True),
        (b'W/"1"', b'W/"2"', False, False),
        (b'W/"1"', b'"1"', False, True),
        (b'"1"', b'"1"', True, True),
        (b'"1"', b'W/"1"', False, True),
        (b'"1"', b'"2"', False, False),
    ],
)
def test_the_rfc_comparison_table(theirs: bytes, ours: bytes, strong: bool, weak: bool) -> None:
    assert etag_matches(theirs, ours, weak=False) is strong
    assert etag_matches(theirs, ours, weak=True) is weak


@pytest.mark.parametrize(
    ("value", "matches"),
    [
        (b"*", True),
        (b"  *\t", True),
        (b'"x", "5f1e-2a"', True),
        (b'"x","5f1e-2a"', True),
        (b'"x" ,\t"5f1e-2a" ,', True),
        (b', , "5f1e-2a"', True),  # empty members are ignored (§5.6.1)
        (b'"x", "y"', False),
        (b'"5f1e-2A"', False),  # opaque tags compare byte by byte
        (b'"5f1e-2a', False),  # unterminated
        (b"5f1e-2a", False),  # no quotes
        (b'"x" "5f1e-2a"', False),  # no comma between members: malformed, matches nothing
        (b'"x", 5f1e-2a, "5f1e-2a"', False),
        (b'w/"5f1e-2a"', False),  # the weak prefix is case-sensitive ("W/")
        (b'"x", *', False),  # "*" is the whole value or nothing
        (b"", False),
        (b" , ", False),
    ],
)
def test_lists(value: bytes, matches: bool) -> None:
    assert etag_matches(value, ETAG, weak=True) is matches


def test_a_comma_inside_an_opaque_tag_is_part_of_it() -> None:
    assert etag_matches(b'"a,b"', b'"a,b"', weak=False)
    assert not etag_matches(b'"a,b"', b'"a"', weak=True)
    assert parse_etag_list(b'"a,b", W/"c"') == [(False, b'"a,b"'), (True, b'"c"')]


@pytest.mark.parametrize("bad", [b'"a"b"', b'"a\x00"', b'"a b"', b'"\x7f"', b'W/ "a"'])
def test_bytes_outside_etagc_are_refused(bad: bytes) -> None:
    assert parse_etag_list(bad) is None
    assert not etag_matches(bad, b'"a"', weak=True)


def test_obs_text_is_etagc() -> None:
    assert etag_matches(b'"caf\xc3\xa9"', b'"caf\xc3\xa9"', weak=False)


def test_a_malformed_own_etag_matches_nothing_but_star() -> None:
    assert not etag_matches(b'"a"', b"a", weak=True)
    assert etag_matches(b"*", b"a", weak=True)


def test_long_lists_are_refused() -> None:
    value = b", ".join(b'"%d"' % i for i in range(MAX_TAGS))
    assert etag_matches(value, b'"0"', weak=True)
    assert not etag_matches(value + b', "x"', b'"0"', weak=True)


# --- the evaluation order (§13.2.2) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "fields", "status"),
    [
        (b"GET", {}, None),
        # Step 1: If-Match, strong comparison.
        (b"GET", {"if_match": ETAG}, None),
        (b"GET", {"if_match": b'"other"'}, 412),
        (b"GET", {"if_match": b"W/" + ETAG}, 412),  # weak tags never match strongly
        (b"GET", {"if_match": b"*"}, None),
        (b"PUT", {"if_match": b'"other"'}, 412),
        (b"GET", {"if_match": b"garbage"}, 412),
        # Step 2 only without If-Match.
        (b"GET", {"if_unmodified_since": AT}, None),
        (b"GET", {"if_unmodified_since": AFTER}, None),
        (b"GET", {"if_unmodified_since": BEFORE}, 412),
        (b"GET", {"if_match": ETAG, "if_unmodified_since": BEFORE}, None),
        (b"GET", {"if_unmodified_since": b"not a date"}, None),
        # Step 3: If-None-Match, weak comparison; 304 for GET and HEAD, 412 for the others.
        (b"GET", {"if_none_match": ETAG}, 304),
        (b"HEAD", {"if_none_match": ETAG}, 304),
        (b"GET", {"if_none_match": b"W/" + ETAG}, 304),
        (b"GET", {"if_none_match": b'"a", ' + ETAG}, 304),
        (b"GET", {"if_none_match": b"*"}, 304),
        (b"POST", {"if_none_match": ETAG}, 412),
        (b"DELETE", {"if_none_match": b"*"}, 412),
        (b"GET", {"if_none_match": b'"other"'}, None),
        (b"GET", {"if_none_match": b"garbage"}, None),
        # Step 4 only without If-None-Match, only for GET and HEAD.
        (b"GET", {"if_modified_since": AT}, 304),
        (b"GET", {"if_modified_since": AFTER}, 304),
        (b"HEAD", {"if_modified_since": AT}, 304),
        (b"GET", {"if_modified_since": BEFORE}, None),
        (b"POST", {"if_modified_since": AT}, None),
        (b"GET", {"if_modified_since": b"yesterday"}, None),
        (b"GET", {"if_modified_since": b"Sunday, 06-Nov-94 08:49:37 GMT"}, 304),
        (b"GET", {"if_modified_since": b"Sun Nov  6 08:49:37 1994"}, 304),
        (b"GET", {"if_none_match": b'"other"', "if_modified_since": AT}, None),
        (b"GET", {"if_none_match": ETAG, "if_modified_since": BEFORE}, 304),
        # Step 1 comes before step 3.
        (b"GET", {"if_match": b'"other"', "if_none_match": ETAG}, 412),
        (b"GET", {"if_unmodified_since": BEFORE, "if_none_match": ETAG}, 412),
        (b"GET", {"if_match": ETAG, "if_none_match": ETAG}, 304),
    ],
)
def test_evaluation_order(method: bytes, fields: dict[str, bytes], status: int | None) -> None:
    assert ev(method, fields) == status


def test_field_names_are_case_insensitive() -> None:
    headers = [(b"If-None-Match", ETAG)]
    assert evaluate(b"GET", headers, etag=ETAG, last_modified=None) == 304
    headers = [(b"IF-MATCH", b'"x"')]
    assert evaluate(b"GET", headers, etag=ETAG, last_modified=None) == 412


def test_list_fields_may_come_in_several_lines() -> None:
    headers = [(b"if-none-match", b'"a"'), (b"if-none-match", ETAG)]
    assert evaluate(b"GET", headers, etag=ETAG, last_modified=MTIME) == 304
    headers = [(b"if-match", b'"a"'), (b"if-match", ETAG)]
    assert evaluate(b"GET", headers, etag=ETAG, last_modified=MTIME) is None


def test_a_date_field_sent_twice_is_ignored() -> None:
    headers = [(b"if-modified-since", AT), (b"if-modified-since", AT)]
    assert evaluate(b"GET", headers, etag=ETAG, last_modified=MTIME) is None
    headers = [(b"if-unmodified-since", BEFORE), (b"if-unmodified-since", BEFORE)]
    assert evaluate(b"GET", headers, etag=ETAG, last_modified=MTIME) is None


def test_without_validators() -> None:
    # No entity tag: a list matches nothing, "*" still matches the representation.
    assert ev(b"GET", {"if_match": ETAG}, etag=None) == 412
    assert ev(b"GET", {"if_match": b"*"}, etag=None) is None
    assert ev(b"GET", {"if_none_match": ETAG}, etag=None) is None
    assert ev(b"GET", {"if_none_match": b"*"}, etag=None) == 304
    # No modification date: the date conditions are ignored (§13.1.3, §13.1.4).
    assert ev(b"GET", {"if_modified_since": AT}, mtime=None) is None
    assert ev(b"GET", {"if_unmodified_since": BEFORE}, mtime=None) is None


def test_other_fields_are_ignored() -> None:
    headers = [(b"if-range", ETAG), (b"ifmatch", b'"x"'), (b"range", b"bytes=0-1")]
    assert evaluate(b"GET", headers, etag=ETAG, last_modified=MTIME) is None


# --- hypothesis: lists against a model -------------------------------------------------------

_etagc = st.binary(min_size=0, max_size=6).map(
    lambda b: bytes(c for c in b if c not in (0x22, 0x7F) and c > 0x20)
)
_tag = st.tuples(st.booleans(), _etagc)
_ows = st.sampled_from([b"", b" ", b"\t", b"  "])


@given(
    tags=st.lists(_tag, min_size=1, max_size=8),
    ours=_tag,
    seps=st.lists(st.tuples(_ows, _ows), min_size=8, max_size=8),
    weak=st.booleans(),
)
def test_lists_against_a_model(
    tags: list[tuple[bool, bytes]],
    ours: tuple[bool, bytes],
    seps: list[tuple[bytes, bytes]],
    weak: bool,
) -> None:
    def render(tag: tuple[bool, bytes]) -> bytes:
        return (b'W/"' if tag[0] else b'"') + tag[1] + b'"'

    value = b"".join(
        (b"," if i else b"") + before + render(tag) + after
        for i, (tag, (before, after)) in enumerate(zip(tags, seps, strict=False))
    )
    if weak:
        expected = any(t == ours[1] for _, t in tags)
    else:
        expected = not ours[0] and any(not w and t == ours[1] for w, t in tags)
    assert etag_matches(value, render(ours), weak=weak) is expected
    assert parse_etag_list(value) == [(w, b'"' + t + b'"') for w, t in tags]


@given(st.binary(max_size=40))
def test_any_bytes_are_an_answer(value: bytes) -> None:
    result = parse_etag_list(value)
    assert result is None or all(tag[:1] == b'"' for _, tag in result)
    assert etag_matches(value, ETAG, weak=True) in (True, False)
    headers = [(b"if-match", value), (b"if-none-match", value), (b"if-modified-since", value)]
    assert evaluate(b"GET", headers, etag=ETAG, last_modified=MTIME) in (None, 304, 412)
