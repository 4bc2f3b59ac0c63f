"""HTTP caching rules (proto/caching.py, RFC 9111) and the HTTP dates they read.

Table-driven: one row per rule, with the RFC's own examples where it gives them. The parsers
(Cache-Control, HTTP dates) are also fuzzed: they never raise, and what we write reads back.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from revproxy.proto.caching import (
    DELTA_MAX,
    Bypass,
    CacheControl,
    Freshness,
    Headers,
    NotStored,
    RequestPolicy,
    answers_not_modified,
    cache_control,
    cache_key,
    current_age,
    invalidates,
    is_fresh,
    not_modified_headers,
    parse_cache_control,
    request_policy,
    revalidation_headers,
    served_headers,
    split_elements,
    storable,
    storable_headers,
    updated_headers,
    vary_key,
    vary_names,
    within_stale_if_error,
    within_swr,
)
from revproxy.proto.httpdate import format_http_date, parse_http_date

# RFC 9110 §5.6.7's example date: Sun, 06 Nov 1994 08:49:37 GMT.
T = 784111777
DATE = b"Sun, 06 Nov 1994 08:49:37 GMT"


def cc(*values: bytes) -> CacheControl:
    return parse_cache_control(values)


# --- Cache-Control ----------------------------------------------------------------------------

CACHE_CONTROL_ROWS: list[tuple[bytes, CacheControl]] = [
    (b"", CacheControl()),
    (b"max-age=60", CacheControl(max_age=60)),
    # RFC 9111 §5.2: "recipients ought to accept both forms": max-age=5 and max-age="5".
    (b'max-age="5"', CacheControl(max_age=5)),
    (b"MAX-AGE=60, Public", CacheControl(max_age=60, public=True)),
    (b"  no-cache ,\tno-store  ", CacheControl(no_cache=True, no_store=True)),
    (b"max-age = 60", CacheControl(max_age=60)),
    # §4.2.1: a repeated directive: the first occurrence counts.
    (b"max-age=60, max-age=0", CacheControl(max_age=60)),
    (b"max-age=0, max-age=60", CacheControl(max_age=0)),
    # Invalid freshness information is read as stale.
    (b"max-age=abc", CacheControl(max_age=0)),
    (b"max-age=-1", CacheControl(max_age=0)),
    (b"max-age=1.5", CacheControl(max_age=0)),
    (b"max-age=", CacheControl(max_age=0)),
    (b"max-age", CacheControl(max_age=0)),
    (b"s-maxage=x", CacheControl(s_maxage=0)),
    (b"max-age=\xd9\xa3", CacheControl(max_age=0)),  # a non-ASCII digit is no digit
    # §1.2.2: values beyond 2^31 are 2^31.
    (b"max-age=2147483649", CacheControl(max_age=DELTA_MAX)),
    (b"max-age=" + b"9" * 5000, CacheControl(max_age=DELTA_MAX)),
    (b"max-age=000060", CacheControl(max_age=60)),
    # The qualified forms of private and no-cache count as the unqualified ones; the comma
    # inside the quoted field list does not split the directive.
    (b'private="set-cookie, x-user", max-age=10', CacheControl(private=True, max_age=10)),
    (b'no-cache="a,b", max-age=10', CacheControl(no_cache=True, max_age=10)),
    (b'no-cache="a\\"b,c", public', CacheControl(no_cache=True, public=True)),
    (
        b"s-maxage=30, stale-while-revalidate=60, stale-if-error=600",
        CacheControl(s_maxage=30, stale_while_revalidate=60, stale_if_error=600),
    ),
    (
        b"only-if-cached, no-transform, must-revalidate, proxy-revalidate, min-fresh=10",
        CacheControl(
            only_if_cached=True,
            no_transform=True,
            must_revalidate=True,
            proxy_revalidate=True,
            min_fresh=10,
        ),
    ),
    (b",, max-age=1 ,,", CacheControl(max_age=1)),
    (b'foo=bar, max-age=1, community="UCI"', CacheControl(max_age=1)),
    (b"no-store=1", CacheControl(no_store=True)),
    (b"max-age=10, no-cache", CacheControl(max_age=10, no_cache=True)),
    (b'max-age="10', CacheControl(max_age=0)),  # an unterminated quote
]


@pytest.mark.parametrize(("value", "expected"), CACHE_CONTROL_ROWS)
def test_cache_control_whole(value: bytes, expected: CacheControl) -> None:
    assert cc(value) == expected


@pytest.mark.parametrize(("value", "expected"), CACHE_CONTROL_ROWS)
def test_cache_control_one_line_per_directive(value: bytes, expected: CacheControl) -> None:
    """RFC 9110 §5.3: field lines combine with commas, so one line per element means the same."""
    lines = split_elements(value)
    assert cc(*lines) == expected


@pytest.mark.parametrize(("value", "expected"), CACHE_CONTROL_ROWS)
def test_cache_control_with_trailing_directives(value: bytes, expected: CacheControl) -> None:
    """Unknown directives after the known ones change nothing."""
    assert cc(value, b"x-ext=1, x-other") == expected


def test_cache_control_lines_combine_first_wins() -> None:
    assert cc(b"max-age=1", b"public", b"max-age=2") == CacheControl(max_age=1, public=True)
    assert cache_control([(b"cache-control", b"no-store"), (b"x", b"max-age=1")]) == CacheControl(
        no_store=True
    )


DIRECTIVES = st.sampled_from(
    [
        "no-store",
        "no-cache",
        "private",
        "public",
        "must-revalidate",
        "proxy-revalidate",
        "only-if-cached",
        "no-transform",
    ]
)
DELTA_NAMES = st.sampled_from(
    ["max-age", "s-maxage", "stale-while-revalidate", "stale-if-error", "min-fresh"]
)


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=80), max_size=4))
def test_cache_control_never_raises(values: list[bytes]) -> None:
    parsed = parse_cache_control(values)
    for seconds in (parsed.max_age, parsed.s_maxage, parsed.stale_while_revalidate):
        assert seconds is None or 0 <= seconds <= DELTA_MAX


@settings(max_examples=300)
@given(
    st.lists(DIRECTIVES, max_size=8),
    st.dictionaries(DELTA_NAMES, st.integers(0, 2**40), max_size=5),
    st.booleans(),
    st.booleans(),
)
def test_cache_control_round_trip(
    flags: list[str], deltas: dict[str, int], quoted: bool, upper: bool
) -> None:
    parts = list(flags)
    for name, seconds in deltas.items():
        parts.append(f'{name}="{seconds}"' if quoted else f"{name}={seconds}")
    text = ", ".join(parts)
    value = (text.upper() if upper else text).encode()
    parsed = cc(value)
    for name in set(flags):
        assert getattr(parsed, name.replace("-", "_")) is True
    for name, seconds in deltas.items():
        assert getattr(parsed, name.replace("-", "_")) == min(seconds, DELTA_MAX)
    assert cc(*split_elements(value)) == parsed


# --- HTTP dates (revproxy/proto/httpdate.py, which the cache reads) ---------------------------


@pytest.mark.parametrize(
    "value",
    [
        # RFC 9110 §5.6.7's three forms of one instant.
        DATE,
        b"Sunday, 06-Nov-94 08:49:37 GMT",
        b"Sun Nov  6 08:49:37 1994",
        b"  Sun, 06 Nov 1994 08:49:37 GMT ",
    ],
)
def test_http_date_forms(value: bytes) -> None:
    assert parse_http_date(value) == T


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"0",
        b"-1",
        b"tomorrow",
        b"Sun, 06 Nov 1994 08:49:37",
        b"Sun, 31 Feb 1994 08:49:37 GMT",
        b"Sun, 06 Nov 1994 25:49:37 GMT",
    ],
)
def test_http_date_invalid(value: bytes) -> None:
    assert parse_http_date(value) is None


@settings(max_examples=300)
@given(st.binary(max_size=64))
def test_http_date_never_raises(value: bytes) -> None:
    parsed = parse_http_date(value)
    assert parsed is None or isinstance(parsed, int)


@settings(max_examples=300)
@given(st.integers(0, 253402300799))  # 1970 to 9999-12-31T23:59:59
def test_http_date_round_trip(seconds: int) -> None:
    formatted = format_http_date(seconds)
    assert len(formatted) == 29
    assert parse_http_date(formatted) == seconds


# --- requests ---------------------------------------------------------------------------------

LOOKUP = RequestPolicy(store=True)
REQUEST_ROWS: list[tuple[bytes, Headers, bool, bool, RequestPolicy]] = [
    (b"GET", [], False, False, LOOKUP),
    (b"HEAD", [], False, False, RequestPolicy(store=False)),
    (b"POST", [], False, False, RequestPolicy(bypass=Bypass.METHOD)),
    (b"PUT", [], True, True, RequestPolicy(bypass=Bypass.METHOD)),
    (b"OPTIONS", [], False, False, RequestPolicy(bypass=Bypass.METHOD)),
    (b"get", [], False, False, RequestPolicy(bypass=Bypass.METHOD)),  # methods are case-sensitive
    (b"GET", [(b"cache-control", b"no-store")], True, True, RequestPolicy(bypass=Bypass.NO_STORE)),
    (b"GET", [(b"cookie", b"a=1")], False, False, RequestPolicy(bypass=Bypass.COOKIE)),
    (b"GET", [(b"cookie", b"a=1")], True, False, LOOKUP),
    (
        b"GET",
        [(b"authorization", b"Basic eDp5")],
        False,
        False,
        RequestPolicy(bypass=Bypass.AUTHORIZATION),
    ),
    (b"GET", [(b"authorization", b"Basic eDp5")], False, True, LOOKUP),
    (b"GET", [(b"range", b"bytes=0-9")], False, False, RequestPolicy(bypass=Bypass.RANGE)),
    (b"GET", [(b"if-range", b'"x"')], False, False, RequestPolicy(bypass=Bypass.RANGE)),
    (b"GET", [(b"upgrade", b"websocket")], False, False, RequestPolicy(bypass=Bypass.UPGRADE)),
    (b"GET", [(b"if-match", b'"x"')], False, False, RequestPolicy(bypass=Bypass.PRECONDITION)),
    (
        b"GET",
        [(b"if-unmodified-since", DATE)],
        False,
        False,
        RequestPolicy(bypass=Bypass.PRECONDITION),
    ),
    (b"GET", [(b"if-none-match", b'"x"')], False, False, LOOKUP),
    (
        b"GET",
        [(b"cache-control", b"no-cache")],
        False,
        False,
        RequestPolicy(store=True, must_revalidate=True),
    ),
    (
        b"GET",
        [(b"cache-control", b"max-age=0")],
        False,
        False,
        RequestPolicy(store=True, must_revalidate=True, max_age=0),
    ),
    (
        b"GET",
        [(b"cache-control", b"max-age=30")],
        False,
        False,
        RequestPolicy(store=True, max_age=30),
    ),
    (
        b"GET",
        [(b"cache-control", b"min-fresh=5")],
        False,
        False,
        RequestPolicy(store=True, min_fresh=5),
    ),
    (
        b"GET",
        [(b"cache-control", b"only-if-cached")],
        False,
        False,
        RequestPolicy(store=True, only_if_cached=True),
    ),
    # §5.4: Pragma: no-cache counts only when there is no Cache-Control.
    (
        b"GET",
        [(b"pragma", b"no-cache")],
        False,
        False,
        RequestPolicy(store=True, must_revalidate=True),
    ),
    (
        b"GET",
        [(b"pragma", b"x, No-Cache")],
        False,
        False,
        RequestPolicy(store=True, must_revalidate=True),
    ),
    (
        b"GET",
        [(b"pragma", b"no-cache"), (b"cache-control", b"max-age=5")],
        False,
        False,
        RequestPolicy(store=True, max_age=5),
    ),
    # The first reason found is given: method, no-store, cookie, authorization.
    (
        b"GET",
        [(b"cookie", b"a"), (b"authorization", b"x")],
        False,
        False,
        RequestPolicy(bypass=Bypass.COOKIE),
    ),
]


@pytest.mark.parametrize(
    ("method", "headers", "cookies", "authorization", "expected"), REQUEST_ROWS
)
def test_request_policy(
    method: bytes, headers: Headers, cookies: bool, authorization: bool, expected: RequestPolicy
) -> None:
    got = request_policy(method, headers, cookies=cookies, authorization=authorization)
    assert got == expected
    assert got.lookup is (expected.bypass is None)


@pytest.mark.parametrize(
    ("method", "status", "expected"),
    [
        (b"POST", 200, True),
        (b"DELETE", 204, True),
        (b"PUT", 301, True),
        (b"PATCH", 200, True),
        (b"POST", 404, False),
        (b"POST", 500, False),
        (b"GET", 200, False),
        (b"HEAD", 200, False),
        (b"OPTIONS", 200, False),
    ],
)
def test_unsafe_methods_invalidate(method: bytes, status: int, expected: bool) -> None:
    assert invalidates(method, status) is expected


# --- storing ----------------------------------------------------------------------------------


def judge(
    status: int,
    headers: Headers,
    request: Headers | None = None,
    *,
    ttl_max: float = 3600,
    request_time: float = T,
    response_time: float = T,
    authorization_allowed: bool = False,
    cookies_allowed: bool = False,
) -> Freshness | NotStored:
    return storable(
        status,
        headers,
        request or [],
        ttl_max=ttl_max,
        now=response_time,
        request_time=request_time,
        response_time=response_time,
        authorization_allowed=authorization_allowed,
        cookies_allowed=cookies_allowed,
    )


def fresh(lifetime: float, initial_age: float = 0.0, **kw: object) -> Freshness:
    return Freshness(lifetime=lifetime, initial_age=initial_age, **kw)  # type: ignore[arg-type]


MAX60: Headers = [(b"date", DATE), (b"cache-control", b"max-age=60")]
AUTH: Headers = [(b"authorization", b"Bearer t")]

STORABLE_ROWS: list[tuple[str, int, Headers, Headers, dict[str, object], object]] = [
    ("max-age", 200, MAX60, [], {}, fresh(60)),
    ("max-age capped at ttl_max", 200, MAX60, [], {"ttl_max": 20}, fresh(20)),
    (
        "swr capped at ttl_max",
        200,
        [(b"cache-control", b"max-age=10, stale-while-revalidate=500")],
        [],
        {"ttl_max": 60},
        fresh(10, swr=60.0),
    ),
    (
        "stale-if-error",
        200,
        [(b"cache-control", b"max-age=10, stale-if-error=30")],
        [],
        {},
        fresh(10, stale_if_error=30.0),
    ),
    (
        "s-maxage wins over max-age and implies proxy-revalidate",
        200,
        [(b"cache-control", b"max-age=100, s-maxage=10")],
        [],
        {},
        fresh(10, must_revalidate=True),
    ),
    (
        "must-revalidate",
        200,
        [(b"cache-control", b"max-age=5, must-revalidate")],
        [],
        {},
        fresh(5, must_revalidate=True),
    ),
    (
        "proxy-revalidate",
        200,
        [(b"cache-control", b"max-age=5, proxy-revalidate")],
        [],
        {},
        fresh(5, must_revalidate=True),
    ),
    # §5.3's example Expires, one hour after its Date.
    (
        "Expires minus Date",
        200,
        [
            (b"date", b"Thu, 01 Dec 1994 15:00:00 GMT"),
            (b"expires", b"Thu, 01 Dec 1994 16:00:00 GMT"),
        ],
        [],
        {"request_time": 786294000, "response_time": 786294000},
        fresh(3600),
    ),
    (
        "Expires without Date: minus the response time",
        200,
        [(b"expires", format_http_date(T + 120))],
        [],
        {},
        fresh(120),
    ),
    (
        "max-age: Expires is ignored",
        200,
        [(b"expires", b"0"), (b"cache-control", b"max-age=9")],
        [],
        {},
        fresh(9),
    ),
    (
        "Expires 0 is expired",
        200,
        [(b"date", DATE), (b"expires", b"0")],
        [],
        {},
        NotStored.NO_FRESHNESS,
    ),
    (
        "Expires before Date",
        200,
        [(b"date", DATE), (b"expires", format_http_date(T - 5))],
        [],
        {},
        NotStored.NO_FRESHNESS,
    ),
    (
        "first Expires counts",
        200,
        [(b"expires", format_http_date(T + 30)), (b"expires", format_http_date(T + 90))],
        [],
        {},
        fresh(30),
    ),
    (
        "no explicit freshness",
        200,
        [(b"date", DATE), (b"last-modified", DATE)],
        [],
        {},
        NotStored.NO_FRESHNESS,
    ),
    ("max-age=0", 200, [(b"cache-control", b"max-age=0")], [], {}, NotStored.NO_FRESHNESS),
    (
        "invalid max-age is stale",
        200,
        [(b"cache-control", b"max-age=soon")],
        [],
        {},
        NotStored.NO_FRESHNESS,
    ),
    ("ttl_max 0", 200, MAX60, [], {"ttl_max": 0}, NotStored.NO_FRESHNESS),
    ("404", 404, MAX60, [], {}, fresh(60)),
    ("301", 301, MAX60, [], {}, fresh(60)),
    ("204", 204, MAX60, [], {}, fresh(60)),
    ("206", 206, MAX60, [], {}, NotStored.STATUS),
    ("302", 302, MAX60, [], {}, NotStored.STATUS),
    ("304", 304, MAX60, [], {}, NotStored.STATUS),
    ("500", 500, MAX60, [], {}, NotStored.STATUS),
    ("503", 503, MAX60, [], {}, NotStored.STATUS),
    ("no-store", 200, [(b"cache-control", b"max-age=60, no-store")], [], {}, NotStored.NO_STORE),
    ("request no-store", 200, MAX60, [(b"cache-control", b"no-store")], {}, NotStored.NO_STORE),
    ("private", 200, [(b"cache-control", b"private, max-age=60")], [], {}, NotStored.PRIVATE),
    (
        "qualified private",
        200,
        [(b"cache-control", b'max-age=60, private="x-user"')],
        [],
        {},
        NotStored.PRIVATE,
    ),
    ("no-cache", 200, [(b"cache-control", b"no-cache, max-age=60")], [], {}, NotStored.NO_CACHE),
    (
        "qualified no-cache",
        200,
        [(b"cache-control", b'max-age=60, no-cache="set-cookie"')],
        [],
        {},
        NotStored.NO_CACHE,
    ),
    ("Set-Cookie", 200, [*MAX60, (b"set-cookie", b"s=1")], [], {}, NotStored.SET_COOKIE),
    (
        "Set-Cookie, even public",
        200,
        [(b"cache-control", b"public, max-age=60"), (b"set-cookie", b"s=1")],
        [],
        {"cookies_allowed": True},
        NotStored.SET_COOKIE,
    ),
    ("Vary: *", 200, [*MAX60, (b"vary", b"accept-encoding, *")], [], {}, NotStored.VARY_STAR),
    ("Vary: accept", 200, [*MAX60, (b"vary", b"accept")], [], {}, fresh(60)),
    # §3.5: Authorization only with public, s-maxage or must-revalidate, and the route's say-so.
    (
        "Authorization, route says no",
        200,
        [(b"cache-control", b"public, max-age=60")],
        AUTH,
        {},
        NotStored.AUTHORIZATION,
    ),
    (
        "Authorization, plain max-age",
        200,
        MAX60,
        AUTH,
        {"authorization_allowed": True},
        NotStored.AUTHORIZATION,
    ),
    (
        "Authorization, public",
        200,
        [(b"cache-control", b"public, max-age=60")],
        AUTH,
        {"authorization_allowed": True},
        fresh(60),
    ),
    (
        "Authorization, s-maxage",
        200,
        [(b"cache-control", b"s-maxage=60")],
        AUTH,
        {"authorization_allowed": True},
        fresh(60, must_revalidate=True),
    ),
    (
        "Authorization, must-revalidate",
        200,
        [(b"cache-control", b"max-age=60, must-revalidate")],
        AUTH,
        {"authorization_allowed": True},
        fresh(60, must_revalidate=True),
    ),
    ("Cookie, route says no", 200, MAX60, [(b"cookie", b"a=1")], {}, NotStored.COOKIE),
    (
        "Cookie, route says yes",
        200,
        MAX60,
        [(b"cookie", b"a=1")],
        {"cookies_allowed": True},
        fresh(60),
    ),
    # §4.2.3: corrected_initial_age = max(apparent_age, age_value + response_delay).
    ("Age", 200, [(b"cache-control", b"max-age=60"), (b"age", b"30")], [], {}, fresh(60, 30.0)),
    (
        "Age plus response delay",
        200,
        [(b"cache-control", b"max-age=60"), (b"age", b"20")],
        [],
        {"request_time": T - 2},
        fresh(60, 22.0),
    ),
    (
        "apparent age wins",
        200,
        [(b"date", format_http_date(T - 10)), (b"age", b"5"), (b"cache-control", b"max-age=60")],
        [],
        {"request_time": T - 2},
        fresh(60, 10.0),
    ),
    (
        "a Date ahead of our clock is no negative age",
        200,
        [(b"date", format_http_date(T + 50)), (b"cache-control", b"max-age=60")],
        [],
        {},
        fresh(60),
    ),
    (
        "invalid Date counts as the response time",
        200,
        [(b"date", b"yesterday"), (b"expires", format_http_date(T + 40))],
        [],
        {},
        fresh(40),
    ),
    (
        "arrives stale",
        200,
        [(b"cache-control", b"max-age=60"), (b"age", b"60")],
        [],
        {},
        NotStored.ARRIVED_STALE,
    ),
    (
        "arrives stale after ttl_max",
        200,
        [(b"cache-control", b"max-age=600"), (b"age", b"100")],
        [],
        {"ttl_max": 60},
        NotStored.ARRIVED_STALE,
    ),
    (
        "invalid Age",
        200,
        [(b"cache-control", b"max-age=60"), (b"age", b"-3")],
        [],
        {},
        NotStored.INVALID_AGE,
    ),
]


@pytest.mark.parametrize(
    ("status", "headers", "request_headers", "options", "expected"),
    [row[1:] for row in STORABLE_ROWS],
    ids=[row[0] for row in STORABLE_ROWS],
)
def test_storable(
    status: int,
    headers: Headers,
    request_headers: Headers,
    options: dict[str, object],
    expected: object,
) -> None:
    assert judge(status, headers, request_headers, **options) == expected  # type: ignore[arg-type]


# --- age and freshness ------------------------------------------------------------------------


def test_current_age_adds_resident_time() -> None:
    f = fresh(60, 7.0)
    assert current_age(f, stored_at=T, now=T) == 7.0
    assert current_age(f, stored_at=T, now=T + 10.5) == 17.5
    assert current_age(f, stored_at=T, now=T - 3) == 7.0  # a clock stepping back adds nothing


@pytest.mark.parametrize(
    ("freshness", "age", "is_fresh_", "swr", "sie"),
    [
        (fresh(60), 0.0, True, False, False),
        (fresh(60), 59.9, True, False, False),
        (fresh(60), 60.0, False, False, False),
        (fresh(60, swr=30.0), 60.0, False, True, False),
        (fresh(60, swr=30.0), 89.9, False, True, False),
        (fresh(60, swr=30.0), 90.0, False, False, False),
        (fresh(60, swr=30.0), 10.0, True, False, False),
        (fresh(60, swr=30.0, must_revalidate=True), 70.0, False, False, False),
        (fresh(60, stale_if_error=100.0), 120.0, False, False, True),
        (fresh(60, stale_if_error=100.0), 160.0, False, False, False),
        (fresh(60, stale_if_error=100.0, must_revalidate=True), 70.0, False, False, False),
    ],
)
def test_freshness(freshness: Freshness, age: float, is_fresh_: bool, swr: bool, sie: bool) -> None:
    assert is_fresh(freshness, age) is is_fresh_
    assert within_swr(freshness, age) is swr
    assert within_stale_if_error(freshness, age) is sie


# --- Vary -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], ()),
        ([(b"vary", b"Accept-Encoding")], (b"accept-encoding",)),
        (
            [(b"vary", b"accept-language, Accept-Encoding")],
            (b"accept-encoding", b"accept-language"),
        ),
        ([(b"vary", b"accept"), (b"vary", b"Accept , cookie,,")], (b"accept", b"cookie")),
        ([(b"vary", b"*")], (b"*",)),
        ([(b"vary", b"")], ()),
    ],
)
def test_vary_names(headers: Headers, expected: tuple[bytes, ...]) -> None:
    assert vary_names(headers) == expected


AE = (b"accept-encoding",)


@pytest.mark.parametrize(
    ("names", "request_headers", "expected"),
    [
        (AE, [], (None,)),
        (AE, [(b"accept-encoding", b"")], (b"",)),  # present but empty is not absent
        (AE, [(b"accept-encoding", b"gzip, br")], (b"gzip,br",)),
        (AE, [(b"accept-encoding", b" gzip ,br ")], (b"gzip,br",)),
        # §4.1: "combining multiple header field lines with the same field name".
        (AE, [(b"accept-encoding", b"gzip"), (b"accept-encoding", b"br")], (b"gzip,br",)),
        (AE, [(b"accept-encoding", b"br, gzip")], (b"br,gzip",)),  # order is meaning
        ((b"x-q",), [(b"x-q", b'"a, b", c')], (b'"a, b",c',)),  # quoted commas kept
        ((b"cookie",), [(b"cookie", b"a=1"), (b"cookie", b"b=2 ;c=3")], (b"a=1; b=2; c=3",)),
        (
            (b"accept", b"accept-language"),
            [(b"accept-language", b"fr"), (b"accept", b"*/*")],
            (b"*/*", b"fr"),
        ),
    ],
)
def test_vary_key(
    names: tuple[bytes, ...], request_headers: Headers, expected: tuple[bytes | None, ...]
) -> None:
    assert vary_key(names, request_headers) == expected


def test_vary_key_differs_between_requests() -> None:
    names = vary_names([(b"vary", b"accept-encoding")])
    gzip = vary_key(names, [(b"accept-encoding", b"gzip")])
    assert gzip == vary_key(names, [(b"accept-encoding", b"gzip"), (b"user-agent", b"x")])
    assert gzip != vary_key(names, [(b"accept-encoding", b"br")])
    assert gzip != vary_key(names, [])


# --- stored, revalidated, served --------------------------------------------------------------


def test_storable_headers_drop_hop_by_hop() -> None:
    """§3.1: Connection, the fields it names, Keep-Alive, TE, Transfer-Encoding, Upgrade."""
    headers = [
        (b"content-type", b"text/plain"),
        (b"connection", b"keep-alive, x-hop"),
        (b"keep-alive", b"timeout=5"),
        (b"x-hop", b"1"),
        (b"transfer-encoding", b"chunked"),
        (b"proxy-connection", b"close"),
        (b"te", b"trailers"),
        (b"upgrade", b"h2c"),
        (b"etag", b'"v1"'),
    ]
    assert storable_headers(headers) == [(b"content-type", b"text/plain"), (b"etag", b'"v1"')]


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        ([], []),
        ([(b"etag", b'"v1"')], [(b"if-none-match", b'"v1"')]),
        ([(b"etag", b'W/"v1"')], [(b"if-none-match", b'W/"v1"')]),
        ([(b"last-modified", DATE)], [(b"if-modified-since", DATE)]),
        ([(b"last-modified", b"garbage")], []),
        (
            [(b"last-modified", DATE), (b"etag", b'"v1"')],
            [(b"if-none-match", b'"v1"'), (b"if-modified-since", DATE)],
        ),
    ],
)
def test_revalidation_headers(stored: Headers, expected: Headers) -> None:
    assert revalidation_headers(stored) == expected


def test_updated_headers_follow_the_304() -> None:
    """§3.2: the 304's fields replace the stored ones; framing and coding are kept."""
    stored: Headers = [
        (b"content-type", b"text/html"),
        (b"content-length", b"120"),
        (b"content-encoding", b"gzip"),
        (b"cache-control", b"max-age=60"),
        (b"etag", b'"v1"'),
        (b"x-a", b"1"),
        (b"x-a", b"2"),
    ]
    from_304: Headers = [
        (b"date", DATE),
        (b"cache-control", b"max-age=120"),
        (b"content-length", b"0"),
        (b"content-encoding", b"identity"),
        (b"connection", b"x-hop"),
        (b"x-hop", b"1"),
        (b"x-a", b"3"),
        (b"etag", b'"v1"'),
    ]
    assert updated_headers(stored, from_304) == [
        (b"content-type", b"text/html"),
        (b"content-length", b"120"),
        (b"content-encoding", b"gzip"),
        (b"date", DATE),
        (b"cache-control", b"max-age=120"),
        (b"x-a", b"3"),
        (b"etag", b'"v1"'),
    ]


def test_a_304_with_set_cookie_makes_the_response_unstorable() -> None:
    merged = updated_headers(MAX60, [(b"set-cookie", b"s=1")])
    assert judge(200, merged) is NotStored.SET_COOKIE


@pytest.mark.parametrize(
    ("stored", "age", "expected"),
    [
        ([(b"a", b"1")], 5, [(b"a", b"1"), (b"age", b"5")]),
        ([(b"age", b"100"), (b"a", b"1")], 0, [(b"age", b"0"), (b"a", b"1")]),
        ([(b"a", b"1"), (b"age", b"1"), (b"age", b"2")], 7, [(b"a", b"1"), (b"age", b"7")]),
        ([], 2**40, [(b"age", b"%d" % DELTA_MAX)]),
        ([], -4, [(b"age", b"0")]),
    ],
)
def test_served_headers_set_age(stored: Headers, age: int, expected: Headers) -> None:
    assert served_headers(stored, age) == expected


STORED_V1: Headers = [(b"etag", b'"v1"'), (b"last-modified", DATE)]


@pytest.mark.parametrize(
    ("request_headers", "stored", "expected"),
    [
        ([], STORED_V1, False),
        ([(b"if-none-match", b'"v1"')], STORED_V1, True),
        ([(b"if-none-match", b'W/"v1"')], STORED_V1, True),  # weak comparison
        ([(b"if-none-match", b'"v0", "v1"')], STORED_V1, True),
        ([(b"if-none-match", b'"v0"'), (b"if-none-match", b'"v1"')], STORED_V1, True),
        ([(b"if-none-match", b'"v2"')], STORED_V1, False),
        ([(b"if-none-match", b"*")], STORED_V1, True),
        ([(b"if-none-match", b'"v1"')], [], False),
        # If-None-Match present: If-Modified-Since is not looked at.
        ([(b"if-none-match", b'"v2"'), (b"if-modified-since", DATE)], STORED_V1, False),
        ([(b"if-modified-since", DATE)], STORED_V1, True),
        ([(b"if-modified-since", format_http_date(T + 1))], STORED_V1, True),
        ([(b"if-modified-since", format_http_date(T - 1))], STORED_V1, False),
        ([(b"if-modified-since", b"garbage")], STORED_V1, False),
        ([(b"if-modified-since", DATE)], [(b"etag", b'"v1"')], False),
    ],
)
def test_answers_not_modified(request_headers: Headers, stored: Headers, expected: bool) -> None:
    assert answers_not_modified(request_headers, stored) is expected


def test_not_modified_headers() -> None:
    stored: Headers = [
        (b"content-type", b"text/html"),
        (b"content-length", b"120"),
        (b"date", DATE),
        (b"etag", b'"v1"'),
        (b"cache-control", b"max-age=60"),
        (b"vary", b"accept-encoding"),
        (b"x-custom", b"1"),
    ]
    assert not_modified_headers(stored, 3) == [
        (b"date", DATE),
        (b"etag", b'"v1"'),
        (b"cache-control", b"max-age=60"),
        (b"vary", b"accept-encoding"),
        (b"age", b"3"),
    ]


@pytest.mark.parametrize(
    ("scheme", "host", "target", "expected"),
    [
        (b"https", b"Example.COM", b"/a?b=C", b"https://example.com/a?b=C"),
        (b"http", b"example.com:8080", b"/", b"http://example.com:8080/"),
        (b"HTTPS", b"x", b"/P", b"https://x/P"),
    ],
)
def test_cache_key(scheme: bytes, host: bytes, target: bytes, expected: bytes) -> None:
    assert cache_key(scheme, host, target) == expected


def test_cache_key_separates_schemes_and_hosts() -> None:
    keys = {
        cache_key(b"http", b"a.example", b"/x"),
        cache_key(b"https", b"a.example", b"/x"),
        cache_key(b"https", b"b.example", b"/x"),
        cache_key(b"https", b"a.example", b"/x?"),
    }
    assert len(keys) == 4


# --- request_policy against the field-by-field reading it replaced ----------------------------


def _reference_policy(
    method: bytes, headers: list[tuple[bytes, bytes]], *, cookies: bool, authorization: bool
) -> RequestPolicy:
    """request_policy as first written: one scan of the fields per question."""

    def has(name: bytes) -> bool:
        return any(n == name for n, _ in headers)

    if method not in (b"GET", b"HEAD"):
        return RequestPolicy(bypass=Bypass.METHOD)
    cc_values = [v for n, v in headers if n == b"cache-control"]
    cc = parse_cache_control(cc_values)
    if cc.no_store:
        return RequestPolicy(bypass=Bypass.NO_STORE)
    if not cookies and has(b"cookie"):
        return RequestPolicy(bypass=Bypass.COOKIE)
    if not authorization and has(b"authorization"):
        return RequestPolicy(bypass=Bypass.AUTHORIZATION)
    if has(b"range") or has(b"if-range"):
        return RequestPolicy(bypass=Bypass.RANGE)
    if has(b"upgrade"):
        return RequestPolicy(bypass=Bypass.UPGRADE)
    if has(b"if-match") or has(b"if-unmodified-since"):
        return RequestPolicy(bypass=Bypass.PRECONDITION)
    pragmas = [e.lower() for n, v in headers if n == b"pragma" for e in split_elements(v)]
    return RequestPolicy(
        must_revalidate=cc.no_cache
        or cc.max_age == 0
        or (not cc_values and b"no-cache" in pragmas),
        only_if_cached=cc.only_if_cached,
        store=method == b"GET",
        max_age=cc.max_age,
        min_fresh=cc.min_fresh,
    )


_FIELD = st.sampled_from(
    [
        (b"cache-control", b"no-store"),
        (b"cache-control", b"no-cache"),
        (b"cache-control", b"max-age=0"),
        (b"cache-control", b"max-age=30, min-fresh=5"),
        (b"cache-control", b"only-if-cached"),
        (b"pragma", b"no-cache"),
        (b"pragma", b"x"),
        (b"cookie", b"a=1"),
        (b"authorization", b"Basic eDp5"),
        (b"range", b"bytes=0-1"),
        (b"if-range", b'"e"'),
        (b"upgrade", b"websocket"),
        (b"if-match", b'"e"'),
        (b"if-unmodified-since", b"Sun, 22 Nov 2026 02:00:00 GMT"),
        (b"if-none-match", b'"e"'),
        (b"accept", b"*/*"),
        (b"host", b"example.com"),
    ]
)


@settings(max_examples=400)
@given(
    method=st.sampled_from([b"GET", b"HEAD", b"POST"]),
    headers=st.lists(_FIELD, max_size=6),
    cookies=st.booleans(),
    authorization=st.booleans(),
)
def test_request_policy_equals_the_field_by_field_reading(
    method: bytes, headers: list[tuple[bytes, bytes]], cookies: bool, authorization: bool
) -> None:
    got = request_policy(method, headers, cookies=cookies, authorization=authorization)
    want = _reference_policy(method, headers, cookies=cookies, authorization=authorization)
    assert got == want
