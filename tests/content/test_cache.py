"""The cache's store (content/cache.py): bytes and LRU, Vary variants, purge, revalidation,
recordings, and coalescing — one origin fetch for many concurrent misses.

The exchange's part is played by ``serve`` below: the same calls, in the same order, that the
request path makes (policy, lookup, flight, storable, record, commit, finish), with a counting
fake origin; so the tests count origin requests and see who is served what.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from revproxy.content.cache import (
    ENTRY_OVERHEAD,
    FIELD_OVERHEAD,
    MAX_VARIANTS,
    Cache,
    Entry,
    LookupKind,
)
from revproxy.proto.caching import (
    Freshness,
    Headers,
    cache_key,
    request_policy,
    served_headers,
    storable,
)
from revproxy.proto.httpdate import format_http_date

T0 = 1_700_000_000.0
KEY = b"https://a.example/x"
WAIT = 5.0  # a follower's wait for its leader in these tests


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def fresh(lifetime: float = 60.0, **kw: float | bool | None) -> Freshness:
    return Freshness(lifetime=lifetime, initial_age=0.0, **kw)  # type: ignore[arg-type]


def put(
    cache: Cache,
    key: bytes = KEY,
    body: bytes = b"body",
    *,
    headers: Headers | None = None,
    request: Headers | None = None,
    freshness: Freshness | None = None,
    host: str = "a.example",
    path: str = "/x",
) -> Entry | None:
    return cache.store(
        key,
        200,
        headers if headers is not None else [(b"content-type", b"text/plain")],
        body,
        freshness or fresh(),
        request_headers=request or [],
        host=host,
        path=path,
    )


# --- bytes and eviction -----------------------------------------------------------------------


def test_entry_cost_counts_key_fields_body_and_overhead() -> None:
    cache = Cache(size=1 << 20, max_object=1 << 16, clock=Clock())
    headers = [(b"content-type", b"text/plain"), (b"connection", b"close")]
    entry = put(cache, body=b"x" * 1000, headers=headers)
    assert entry is not None
    # Connection is hop-by-hop (RFC 9111 §3.1): not stored, not counted.
    assert entry.headers == [(b"content-type", b"text/plain")]
    expected = ENTRY_OVERHEAD + len(KEY) + (12 + 10 + FIELD_OVERHEAD) + 1000
    assert entry.cost == expected
    assert cache.bytes == expected
    assert cache.describe()["bytes"] == expected
    assert cache.purge("*", "") == 1
    assert cache.bytes == 0


def test_lru_evicts_the_least_recently_used_first() -> None:
    clock = Clock()
    one = put(Cache(1 << 20, 1 << 16, clock), b"k", b"x" * 1000)
    assert one is not None
    cache = Cache(size=3 * one.cost + one.cost // 2, max_object=1 << 16, clock=clock)
    for name in (b"a", b"b", b"c"):
        assert put(cache, name, b"x" * 1000) is not None
    assert len(cache) == 3
    assert cache.lookup(b"a", []).kind is LookupKind.FRESH  # a is now the most recent
    assert put(cache, b"d", b"x" * 1000) is not None
    kinds = {k: cache.lookup(k, []).kind for k in (b"a", b"b", b"c", b"d")}
    assert kinds == {
        b"a": LookupKind.FRESH,
        b"b": LookupKind.MISS,
        b"c": LookupKind.FRESH,
        b"d": LookupKind.FRESH,
    }
    assert cache.stats.evictions == 1
    assert cache.bytes == 3 * one.cost
    assert cache.bytes <= cache.size


def test_one_big_entry_evicts_several_small_ones() -> None:
    clock = Clock()
    cache = Cache(size=10_000, max_object=10_000, clock=clock)
    small = [put(cache, b"k%d" % i, b"x" * 1000) for i in range(5)]
    assert len(cache) == 5
    big = put(cache, b"big", b"y" * 8000)
    assert big is not None and small[4] is not None
    # 8000 bytes of body leave room for one small entry: the four oldest go.
    assert big.cost + small[4].cost <= cache.size < big.cost + 2 * small[4].cost
    assert cache.stats.evictions == 4
    assert [cache.lookup(b"k%d" % i, []).kind for i in range(5)] == [LookupKind.MISS] * 4 + [
        LookupKind.FRESH
    ]
    assert cache.bytes == big.cost + small[4].cost


def lookup_entry(cache: Cache, key: bytes, request: Headers | None = None) -> Entry | None:
    return cache.lookup(key, request or []).entry


def test_too_big_is_not_stored() -> None:
    cache = Cache(size=2000, max_object=100, clock=Clock())
    assert put(cache, body=b"x" * 101) is None
    assert put(cache, body=b"x" * 100) is not None
    tiny = Cache(size=ENTRY_OVERHEAD, max_object=100, clock=Clock())
    assert put(tiny, body=b"x") is None  # the entry's cost exceeds the whole cache
    assert cache.stats.too_big == 1
    assert tiny.stats.too_big == 1
    assert tiny.bytes == 0


def test_replacing_a_response_keeps_the_byte_count() -> None:
    cache = Cache(size=1 << 20, max_object=1 << 16, clock=Clock())
    put(cache, body=b"one")
    second = put(cache, body=b"second")
    assert second is not None
    assert len(cache) == 1
    assert cache.bytes == second.cost
    assert lookup_entry(cache, KEY) is second


# --- lookups ----------------------------------------------------------------------------------


def test_lookup_kinds_follow_the_clock() -> None:
    clock = Clock()
    cache = Cache(size=1 << 20, max_object=1 << 16, clock=clock)
    entry = put(cache, freshness=fresh(60.0, swr=30.0))
    assert entry is not None
    steps = [
        (0.0, LookupKind.FRESH, 0),
        (59.5, LookupKind.FRESH, 59),
        (60.0, LookupKind.STALE_WHILE_REVALIDATE, 60),
        (89.0, LookupKind.STALE_WHILE_REVALIDATE, 89),
        (90.0, LookupKind.STALE, 90),
    ]
    for offset, kind, age in steps:
        clock.now = T0 + offset
        found = cache.lookup(KEY, [])
        assert (found.kind, found.entry, found.age) == (kind, entry, age)
    assert cache.lookup(b"other", []).kind is LookupKind.MISS
    s = cache.stats
    assert (s.hits, s.stale, s.expired, s.misses) == (2, 2, 1, 1)


def test_initial_age_counts() -> None:
    clock = Clock()
    cache = Cache(size=1 << 20, max_object=1 << 16, clock=clock)
    put(cache, freshness=Freshness(lifetime=60.0, initial_age=50.0))
    assert cache.lookup(KEY, []).age == 50
    clock.now = T0 + 10
    assert cache.lookup(KEY, []).kind is LookupKind.STALE


def test_must_revalidate_entries_are_never_served_stale() -> None:
    clock = Clock()
    cache = Cache(size=1 << 20, max_object=1 << 16, clock=clock)
    put(cache, freshness=fresh(10.0, swr=60.0, must_revalidate=True))
    clock.now = T0 + 11
    assert cache.lookup(KEY, []).kind is LookupKind.STALE


@pytest.mark.parametrize(
    ("request_headers", "age", "kind"),
    [
        ([], 10.0, LookupKind.FRESH),
        ([(b"cache-control", b"no-cache")], 10.0, LookupKind.STALE),
        ([(b"cache-control", b"max-age=0")], 10.0, LookupKind.STALE),
        ([(b"pragma", b"no-cache")], 10.0, LookupKind.STALE),
        ([(b"cache-control", b"max-age=20")], 10.0, LookupKind.FRESH),
        ([(b"cache-control", b"max-age=5")], 10.0, LookupKind.STALE),
        ([(b"cache-control", b"min-fresh=40")], 10.0, LookupKind.FRESH),
        ([(b"cache-control", b"min-fresh=55")], 10.0, LookupKind.STALE),
        # A client's no-cache also refuses the stale-while-revalidate shortcut.
        ([(b"cache-control", b"no-cache")], 70.0, LookupKind.STALE),
        ([], 70.0, LookupKind.STALE_WHILE_REVALIDATE),
    ],
)
def test_lookup_honours_the_request(request_headers: Headers, age: float, kind: LookupKind) -> None:
    clock = Clock()
    cache = Cache(size=1 << 20, max_object=1 << 16, clock=clock)
    put(cache, freshness=fresh(60.0, swr=30.0))
    clock.now = T0 + age
    policy = request_policy(b"GET", request_headers, cookies=False, authorization=False)
    assert cache.lookup(KEY, request_headers, policy).kind is kind


# --- Vary -------------------------------------------------------------------------------------

VARY_AE: Headers = [(b"vary", b"Accept-Encoding"), (b"content-type", b"text/plain")]


def ae(value: bytes) -> Headers:
    return [(b"accept-encoding", value)]


def test_vary_variants_are_kept_side_by_side() -> None:
    cache = Cache(size=1 << 20, max_object=1 << 16, clock=Clock())
    gz = put(cache, body=b"gzip", headers=VARY_AE, request=ae(b"gzip"))
    br = put(cache, body=b"br", headers=VARY_AE, request=ae(b"br"))
    plain = put(cache, body=b"plain", headers=VARY_AE, request=[])
    assert gz is not None and br is not None and plain is not None
    assert len(cache) == 3
    assert lookup_entry(cache, KEY, ae(b"gzip")) is gz
    assert lookup_entry(cache, KEY, [(b"accept-encoding", b" gzip ")]) is gz  # normalised
    assert lookup_entry(cache, KEY, ae(b"br")) is br
    assert lookup_entry(cache, KEY, []) is plain
    assert cache.lookup(KEY, ae(b"gzip, br")).kind is LookupKind.MISS
    assert cache.describe()["keys"] == 1


def test_a_new_response_replaces_the_variant_its_request_selects() -> None:
    cache = Cache(size=1 << 20, max_object=1 << 16, clock=Clock())
    put(cache, body=b"old", headers=VARY_AE, request=ae(b"gzip"))
    br = put(cache, body=b"br", headers=VARY_AE, request=ae(b"br"))
    new = put(cache, body=b"new", headers=VARY_AE, request=ae(b"gzip"))
    assert len(cache) == 2
    assert lookup_entry(cache, KEY, ae(b"gzip")) is new
    assert lookup_entry(cache, KEY, ae(b"br")) is br
    # A response without Vary is selected by every request: it supersedes all variants.
    everyone = put(cache, body=b"one for all", request=ae(b"gzip"))
    assert len(cache) == 2  # br is kept: the gzip request would not have selected it
    assert lookup_entry(cache, KEY, ae(b"gzip")) is everyone
    assert lookup_entry(cache, KEY, []) is everyone
    assert lookup_entry(cache, KEY, ae(b"br")) is everyone  # newest first (RFC 9111 §4.1)
    assert cache.bytes == sum(e.cost for e in (br, everyone) if e is not None)


def test_variants_per_key_are_bounded() -> None:
    cache = Cache(size=1 << 20, max_object=1 << 16, clock=Clock())
    entries = [
        put(cache, body=b"v%d" % i, headers=VARY_AE, request=ae(b"x%d" % i))
        for i in range(MAX_VARIANTS + 3)
    ]
    assert len(cache) == MAX_VARIANTS
    assert cache.stats.evictions == 3
    for i, entry in enumerate(entries):
        found = lookup_entry(cache, KEY, ae(b"x%d" % i))
        assert found is (entry if i >= 3 else None)
    assert cache.bytes == sum(e.cost for e in entries[3:] if e is not None)


# --- purge and invalidation -------------------------------------------------------------------


def fill_hosts(cache: Cache) -> None:
    for host in ("a.example", "a.example:8443", "b.example", "[::1]", "[::1]:8443"):
        for path in ("/", "/img/1.png", "/img/2.png", "/imgx", "/api/v1?q=1"):
            key = cache_key(b"https", host.encode(), path.encode())
            assert put(cache, key, host=host.upper(), path=path) is not None


@pytest.mark.parametrize(
    ("host", "prefix", "purged", "left"),
    [
        ("a.example", "/img/", 4, 21),  # both ports of a.example
        ("a.example:8443", "/img/", 2, 23),
        ("A.EXAMPLE", "/img", 6, 19),  # "/img" is a prefix of "/imgx" too
        ("b.example", "", 5, 20),
        ("b.example", "/", 5, 20),
        ("*", "/api/", 5, 20),
        ("*", "", 25, 0),
        ("c.example", "", 0, 25),
        ("a.example:80", "", 0, 25),
        ("example", "", 0, 25),
        ("[::1]", "/img/", 4, 21),  # an IPv6 literal's colons are no port
        ("[::1]:8443", "", 5, 20),
        ("[::1]:8", "", 0, 25),
    ],
)
def test_purge_by_host_and_prefix(host: str, prefix: str, purged: int, left: int) -> None:
    cache = Cache(size=1 << 20, max_object=1 << 16, clock=Clock())
    fill_hosts(cache)
    before = cache.bytes
    assert cache.purge(host, prefix) == purged
    assert len(cache) == left
    assert cache.stats.purged == purged
    assert (cache.bytes == 0) is (left == 0)
    assert cache.bytes <= before


def test_purge_removes_from_lookups() -> None:
    cache = Cache(size=1 << 20, max_object=1 << 16, clock=Clock())
    fill_hosts(cache)
    cache.purge("a.example", "/img/")
    assert cache.lookup(cache_key(b"https", b"a.example", b"/img/1.png"), []).kind is (
        LookupKind.MISS
    )
    assert cache.lookup(cache_key(b"https", b"a.example", b"/imgx"), []).kind is LookupKind.FRESH
    assert cache.lookup(cache_key(b"https", b"b.example", b"/img/1.png"), []).kind is (
        LookupKind.FRESH
    )


def test_invalidate_drops_every_variant() -> None:
    cache = Cache(size=1 << 20, max_object=1 << 16, clock=Clock())
    put(cache, headers=VARY_AE, request=ae(b"gzip"))
    put(cache, headers=VARY_AE, request=ae(b"br"))
    put(cache, b"other")
    assert cache.invalidate(KEY) == 2
    assert cache.invalidate(KEY) == 0
    assert len(cache) == 1
    assert cache.stats.invalidated == 2


# --- revalidation -----------------------------------------------------------------------------

STORED: Headers = [
    (b"content-type", b"text/plain"),
    (b"content-length", b"4"),
    (b"cache-control", b"max-age=60"),
    (b"etag", b'"v1"'),
]


def refresh(cache: Cache, entry: Entry, from_304: Headers, now: float) -> Entry | None:
    return cache.refresh(
        entry,
        from_304,
        request_headers=[],
        ttl_max=3600,
        request_time=now,
        response_time=now,
        authorization_allowed=False,
    )


def test_refresh_updates_fields_and_freshness() -> None:
    clock = Clock()
    cache = Cache(size=1 << 20, max_object=1 << 16, clock=clock)
    old = put(cache, headers=STORED)
    assert old is not None
    clock.now = T0 + 100
    assert cache.lookup(KEY, []).kind is LookupKind.STALE
    new = refresh(
        cache,
        old,
        [(b"cache-control", b"max-age=120"), (b"content-length", b"0"), (b"x-new", b"1")],
        clock.now,
    )
    assert new is not None and new is not old
    assert new.body == old.body
    assert new.freshness.lifetime == 120
    assert (b"x-new", b"1") in new.headers
    assert (b"content-length", b"4") in new.headers
    found = cache.lookup(KEY, [])
    assert (found.kind, found.entry, found.age) == (LookupKind.FRESH, new, 0)
    assert len(cache) == 1
    assert cache.bytes == new.cost
    assert cache.stats.revalidated == 1


@pytest.mark.parametrize(
    "from_304",
    [
        [(b"set-cookie", b"session=1")],
        [(b"cache-control", b"no-store")],
        [(b"cache-control", b"private, max-age=60")],
        [(b"vary", b"accept-encoding")],
        [(b"cache-control", b"max-age=0")],
    ],
)
def test_refresh_drops_what_may_no_longer_be_stored(from_304: Headers) -> None:
    cache = Cache(size=1 << 20, max_object=1 << 16, clock=Clock())
    old = put(cache, headers=STORED)
    assert old is not None
    assert refresh(cache, old, from_304, T0 + 5) is None
    assert len(cache) == 0
    assert cache.bytes == 0


def test_refresh_does_not_undo_a_purge() -> None:
    cache = Cache(size=1 << 20, max_object=1 << 16, clock=Clock())
    old = put(cache, headers=STORED)
    assert old is not None
    cache.purge("a.example", "/")
    assert refresh(cache, old, [(b"cache-control", b"max-age=60")], T0 + 5) is None
    assert len(cache) == 0


def test_only_one_background_refresh_per_key() -> None:
    cache = Cache(size=1 << 20, max_object=1 << 16, clock=Clock())
    assert cache.begin_refresh(KEY)
    assert not cache.begin_refresh(KEY)
    assert cache.begin_refresh(b"other")
    assert cache.describe()["refreshing"] == 2
    cache.end_refresh(KEY)
    assert cache.begin_refresh(KEY)


# --- recordings -------------------------------------------------------------------------------


def test_recording_stores_the_whole_body() -> None:
    cache = Cache(size=1 << 20, max_object=10, clock=Clock())
    rec = cache.record(KEY, 200, STORED, fresh(), request_headers=[], host="a.example", path="/x")
    assert rec.add(b"abc")
    assert rec.add(memoryview(b"defg"))
    assert rec.add(b"hij")  # exactly max_object
    entry = rec.commit()
    assert entry is not None
    assert entry.body == b"abcdefghij"
    assert lookup_entry(cache, KEY) is entry
    assert rec.commit() is None  # once
    assert not rec.add(b"k")


def test_recording_past_max_object_is_abandoned() -> None:
    cache = Cache(size=1 << 20, max_object=10, clock=Clock())
    rec = cache.record(KEY, 200, STORED, fresh(), request_headers=[], host="a.example", path="/")
    assert rec.add(b"x" * 6)
    assert not rec.add(b"x" * 6)
    assert rec.abandoned
    assert not rec.add(b"x")
    assert rec.commit() is None
    assert len(cache) == 0
    assert cache.stats.too_big == 1
    assert cache.stats.stores == 0


def test_recording_keeps_its_own_copy_of_the_fields() -> None:
    cache = Cache(size=1 << 20, max_object=100, clock=Clock())
    headers = list(VARY_AE)
    request = ae(b"gzip")
    rec = cache.record(KEY, 200, headers, fresh(), request_headers=request, host="h", path="/")
    headers.append((b"set-cookie", b"late"))
    request[0] = (b"accept-encoding", b"br")
    rec.add(b"x")
    entry = rec.commit()
    assert entry is not None
    assert (b"set-cookie", b"late") not in entry.headers
    assert entry.vary_key == (b"gzip",)


# --- describe ---------------------------------------------------------------------------------


def test_describe_shows_sizes_and_counters() -> None:
    cache = Cache(size=5000, max_object=1000, clock=Clock())
    put(cache)
    cache.lookup(KEY, [])
    cache.lookup(b"none", [])
    cache.note_bypass()
    shown = cache.describe()
    for name in (
        "entries", "bytes", "size", "max_object", "hits", "misses", "bypasses", "stores",
        "evictions", "coalesced",
    ):  # fmt: skip
        assert name in shown
    assert (shown["entries"], shown["size"], shown["max_object"]) == (1, 5000, 1000)
    assert (shown["hits"], shown["misses"], shown["bypasses"], shown["stores"]) == (1, 1, 1, 1)
    assert shown["bytes"] == cache.bytes > 0


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["store", "lookup", "purge", "invalidate"]),
            st.integers(0, 5),  # key
            st.integers(0, 3),  # variant
            st.integers(0, 3000),  # body length
        ),
        max_size=60,
    )
)
def test_byte_accounting_holds_under_any_sequence(ops: list[tuple[str, int, int, int]]) -> None:
    cache = Cache(size=8000, max_object=2500, clock=Clock())
    for op, k, variant, length in ops:
        key = b"https://h/%d" % k
        if op == "store":
            request = ae(b"%d" % variant)
            put(cache, key, b"x" * length, headers=VARY_AE, request=request, path=f"/{k}")
        elif op == "lookup":
            cache.lookup(key, ae(b"%d" % variant))
        elif op == "purge":
            cache.purge("a.example", f"/{k}")
        else:
            cache.invalidate(key)
        entries = list(cache._lru)
        assert cache.bytes == sum(e.cost for e in entries) <= cache.size
        assert sum(len(v) for v in cache._by_key.values()) == len(entries)
        assert all(0 < len(v) <= MAX_VARIANTS for v in cache._by_key.values())


# --- coalescing -------------------------------------------------------------------------------


@dataclass
class Origin:
    """A counting fake origin: one response for every request, after a delay."""

    headers: Headers
    body: bytes = b"hello"
    delay: float = 0.05
    requests: list[Headers] = field(default_factory=list)

    async def fetch(self, request: Headers) -> tuple[int, Headers, bytes]:
        self.requests.append(request)
        await asyncio.sleep(self.delay)
        return 200, self.headers, self.body


@dataclass
class Served:
    source: str  # "hit", "coalesced", "origin", "bypass"
    headers: Headers
    body: bytes


async def serve(
    cache: Cache,
    origin: Origin,
    request: Headers,
    *,
    cookies: bool = False,
    authorization: bool = False,
    key: bytes = KEY,
) -> Served:
    """What the request path does with the cache, in order."""
    policy = request_policy(b"GET", request, cookies=cookies, authorization=authorization)
    if not policy.lookup:
        cache.note_bypass()
        _, headers, body = await origin.fetch(request)
        return Served("bypass", headers, body)
    found = cache.lookup(key, request, policy)
    if found.kind is LookupKind.FRESH and found.entry is not None:
        return Served("hit", served_headers(found.entry.headers, found.age), found.entry.body)
    with cache.flight(key, request) as flight:
        if not flight.leader:
            entry = await flight.wait(WAIT)
            if entry is not None:
                return Served("coalesced", served_headers(entry.headers, 0), entry.body)
            _, headers, body = await origin.fetch(request)
            return Served("origin", headers, body)
        now = cache.clock()
        status, headers, body = await origin.fetch(request)
        freshness = storable(
            status, headers, request, ttl_max=60, now=now, request_time=now,
            response_time=now, authorization_allowed=authorization, cookies_allowed=cookies,
        )  # fmt: skip
        if isinstance(freshness, Freshness):
            rec = cache.record(
                key, status, headers, freshness, request_headers=request, host="a.example",
                path="/x",
            )  # fmt: skip
            half = len(body) // 2
            if rec.add(body[:half]) and rec.add(body[half:]):
                flight.finish(rec.commit())
        return Served("origin", headers, body)


CACHEABLE: Headers = [(b"date", format_http_date(int(T0))), (b"cache-control", b"max-age=60")]


def test_100_concurrent_misses_make_one_origin_request() -> None:
    async def main() -> tuple[list[Served], Origin, Cache]:
        cache = Cache(size=1 << 20, max_object=1 << 16, clock=Clock())
        origin = Origin(CACHEABLE)
        async with asyncio.timeout(10):
            served = await asyncio.gather(*(serve(cache, origin, []) for _ in range(100)))
        return served, origin, cache

    served, origin, cache = asyncio.run(main())
    assert len(origin.requests) == 1
    assert all(s.body == b"hello" for s in served)
    sources = [s.source for s in served]
    assert sources.count("origin") == 1
    assert sources.count("coalesced") == 99
    assert cache.stats.coalesced == 99
    assert cache.stats.misses == 100
    assert cache.stats.stores == 1
    assert cache.describe()["flights"] == 0
    assert all((b"age", b"0") in s.headers for s in served if s.source == "coalesced")


def test_100_concurrent_flights_have_exactly_one_leader() -> None:
    async def main() -> tuple[int, list[Entry | None]]:
        cache = Cache(size=1 << 20, max_object=1 << 16, clock=Clock())
        flights = [cache.flight(KEY, []) for _ in range(100)]
        leaders = [f for f in flights if f.leader]
        waiting = [asyncio.create_task(f.wait(WAIT)) for f in flights if not f.leader]
        await asyncio.sleep(0)
        entry = put(cache)
        with leaders[0]:
            leaders[0].finish(entry)
        async with asyncio.timeout(5):
            results = await asyncio.gather(*waiting)
        assert all(r is entry for r in results)
        return len(leaders), results

    leaders, results = asyncio.run(main())
    assert leaders == 1
    assert len(results) == 99


def test_a_cancelled_leader_releases_its_followers_at_once() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        cache = Cache(size=1 << 20, max_object=1 << 16, clock=Clock())
        origin = Origin(CACHEABLE, delay=30.0)  # an origin that never answers in time
        leader = asyncio.create_task(serve(cache, origin, []))
        await asyncio.sleep(0.01)
        assert cache.describe()["flights"] == 1
        flights = [cache.flight(KEY, []) for _ in range(20)]
        assert not any(f.leader for f in flights)
        waiting = [asyncio.create_task(f.wait(30.0)) for f in flights]
        await asyncio.sleep(0.01)
        started = loop.time()
        leader.cancel()
        async with asyncio.timeout(2):
            results = await asyncio.gather(*waiting)
        assert results == [None] * 20
        assert loop.time() - started < 0.5
        assert leader.cancelled()
        assert cache.describe()["flights"] == 0
        assert cache.flight(KEY, []).leader  # the next caller leads a new flight

    asyncio.run(main())


def test_a_failing_leader_ends_its_flight() -> None:
    async def main() -> None:
        cache = Cache(size=1 << 20, max_object=1 << 16, clock=Clock())
        follower = None
        with pytest.raises(ConnectionError), cache.flight(KEY, []) as flight:
            assert flight.leader
            follower = cache.flight(KEY, [])
            raise ConnectionError("origin went away")
        assert follower is not None
        async with asyncio.timeout(1):
            assert await follower.wait(30.0) is None
        assert cache.describe()["flights"] == 0

    asyncio.run(main())


def test_followers_of_an_unstorable_response_go_to_the_origin() -> None:
    async def main() -> tuple[list[Served], Origin]:
        cache = Cache(size=1 << 20, max_object=1 << 16, clock=Clock())
        origin = Origin([(b"cache-control", b"private, max-age=60")])
        async with asyncio.timeout(10):
            served = await asyncio.gather(*(serve(cache, origin, []) for _ in range(10)))
        assert len(cache) == 0
        return served, origin

    served, origin = asyncio.run(main())
    assert len(origin.requests) == 10
    assert all(s.source == "origin" for s in served)


def test_a_follower_stops_waiting_after_its_timeout() -> None:
    async def main() -> None:
        cache = Cache(size=1 << 20, max_object=1 << 16, clock=Clock())
        with cache.flight(KEY, []) as leader:
            assert leader.leader
            follower = cache.flight(KEY, [])
            async with asyncio.timeout(2):
                assert await follower.wait(0.02) is None
            assert cache.stats.lock_timeouts == 1
            leader.finish(put(cache))
        assert cache.stats.coalesced == 0

    asyncio.run(main())


def test_a_follower_with_other_varied_fields_gets_nothing() -> None:
    async def main() -> None:
        cache = Cache(size=1 << 20, max_object=1 << 16, clock=Clock())
        with cache.flight(KEY, ae(b"gzip")) as leader:
            same = cache.flight(KEY, ae(b" gzip"))
            other = cache.flight(KEY, ae(b"br"))
            none = cache.flight(KEY, [])
            tasks = [asyncio.create_task(f.wait(WAIT)) for f in (same, other, none)]
            await asyncio.sleep(0)
            entry = put(cache, headers=VARY_AE, request=ae(b"gzip"))
            leader.finish(entry)
        async with asyncio.timeout(2):
            results = await asyncio.gather(*tasks)
        assert results == [entry, None, None]

    asyncio.run(main())


def test_flight_roles_are_enforced() -> None:
    async def main() -> None:
        cache = Cache(size=1 << 20, max_object=1 << 16, clock=Clock())
        with cache.flight(KEY, []) as leader:
            follower = cache.flight(KEY, [])
            with pytest.raises(RuntimeError):
                await leader.wait(1.0)
            with pytest.raises(RuntimeError):
                follower.finish(None)
            leader.finish(None)
            leader.finish(None)  # a second finish does nothing
            with follower:  # a follower's with block ends nothing
                pass
        async with asyncio.timeout(1):
            assert await follower.wait(1.0) is None

    asyncio.run(main())


# --- nothing personal is ever shared ----------------------------------------------------------


def test_a_set_cookie_response_is_never_served_to_another_client() -> None:
    async def main() -> tuple[list[Served], Origin, Cache]:
        cache = Cache(size=1 << 20, max_object=1 << 16, clock=Clock())
        origin = Origin([*CACHEABLE, (b"set-cookie", b"session=alice")])
        async with asyncio.timeout(10):
            first = await asyncio.gather(*(serve(cache, origin, []) for _ in range(20)))
            later = await serve(cache, origin, [], cookies=True)
        return [*first, later], origin, cache

    served, origin, cache = asyncio.run(main())
    assert len(cache) == 0
    assert cache.stats.coalesced == 0
    assert len(origin.requests) == len(served)  # every client had its own origin response
    assert all(s.source == "origin" for s in served)


@pytest.mark.parametrize(
    ("request_headers", "cookies", "authorization"),
    [
        ([(b"cookie", b"session=alice")], False, False),
        ([(b"authorization", b"Bearer alice")], False, False),
        # The route allows them, but a plain max-age response to an Authorization request is
        # not shared (RFC 9111 §3.5).
        ([(b"authorization", b"Bearer alice")], False, True),
    ],
)
def test_a_personal_request_is_never_served_to_another_client(
    request_headers: Headers, cookies: bool, authorization: bool
) -> None:
    async def main() -> tuple[Served, Served, Origin]:
        cache = Cache(size=1 << 20, max_object=1 << 16, clock=Clock())
        origin = Origin(CACHEABLE, body=b"for alice")
        async with asyncio.timeout(10):
            alice = await serve(
                cache, origin, request_headers, cookies=cookies, authorization=authorization
            )
            assert len(cache) == 0  # nothing of Alice's was kept
            origin.body = b"for anyone"
            bob = await serve(cache, origin, [], cookies=cookies, authorization=authorization)
        return alice, bob, origin

    alice, bob, origin = asyncio.run(main())
    assert alice.body == b"for alice"
    assert bob.body == b"for anyone"
    assert bob.source == "origin"
    assert len(origin.requests) == 2


def test_a_route_that_allows_cookies_shares_only_what_varies_on_them() -> None:
    async def main() -> tuple[Served, Served, Served, Origin]:
        cache = Cache(size=1 << 20, max_object=1 << 16, clock=Clock())
        origin = Origin([*CACHEABLE, (b"vary", b"cookie")], body=b"for alice")
        async with asyncio.timeout(10):
            alice = await serve(cache, origin, [(b"cookie", b"u=alice")], cookies=True)
            origin.body = b"for bob"
            bob = await serve(cache, origin, [(b"cookie", b"u=bob")], cookies=True)
            again = await serve(cache, origin, [(b"cookie", b"u=alice")], cookies=True)
        return alice, bob, again, origin

    alice, bob, again, origin = asyncio.run(main())
    assert (alice.body, bob.body, again.body) == (b"for alice", b"for bob", b"for alice")
    assert (alice.source, bob.source, again.source) == ("origin", "origin", "hit")
    assert len(origin.requests) == 2
