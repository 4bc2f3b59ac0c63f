"""Balancing policies on hand-built candidates: the config names, and what each name promises.

Policies are driven directly (``policy.pick(candidates, ctx)``) with the candidate list changing
the way health changes it; ``tests/test_pool.py`` covers what the pool hands them.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from collections import Counter
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from revproxy.config.model import BALANCE_NAMES
from revproxy.upstream.backend import Backend, PickContext
from revproxy.upstream.balancing import (
    POLICIES,
    BalancePolicy,
    Candidates,
    LeastConn,
    RandomTwoChoices,
    RoundRobin,
    SourceHash,
    UriHash,
    make_policy,
)

NO_KEY = PickContext()


def weighted(*weights: int) -> list[Backend]:
    return [Backend("web", f"10.0.0.{i + 1}", 8080, weight=w) for i, w in enumerate(weights)]


def run(
    policy: BalancePolicy, candidates: Sequence[Backend], n: int, ctx: PickContext = NO_KEY
) -> list[int]:
    """Indices (into `candidates`) of `n` picks."""
    index = {id(b): i for i, b in enumerate(candidates)}
    return [index[id(policy.pick(candidates, ctx))] for _ in range(n)]


def longest_run(seq: Sequence[int]) -> int:
    return max(len(list(group)) for _, group in itertools.groupby(seq))


# --- the registry ----------------------------------------------------------------------------


def test_registry_keys_are_the_config_names() -> None:
    assert set(POLICIES) == {"roundrobin", "leastconn", "source", "uri", "random"}
    assert set(POLICIES) == set(BALANCE_NAMES)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_policy_name_is_its_registry_key(name: str) -> None:
    policy = make_policy(name, random.Random(0))
    assert type(policy).name == name  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("roundrobin", RoundRobin),
        ("leastconn", LeastConn),
        ("source", SourceHash),
        ("uri", UriHash),
        ("random", RandomTwoChoices),
    ],
)
def test_make_policy_builds_a_fresh_policy(name: str, cls: type) -> None:
    a, b = make_policy(name), make_policy(name)
    assert isinstance(a, cls)
    assert a is not b  # each pool has its own memory


@pytest.mark.parametrize("name", ["", "round-robin", "RoundRobin", "leastconns", "hash"])
def test_unknown_policy_is_a_value_error_listing_the_valid_names(name: str) -> None:
    with pytest.raises(ValueError) as info:
        make_policy(name)
    message = str(info.value)
    assert message.startswith(f"unknown balance policy {name!r}; expected one of ")
    for valid in POLICIES:
        assert f'"{valid}"' in message


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_a_single_candidate_is_always_picked(name: str) -> None:
    policy = make_policy(name, random.Random(0))
    (only,) = weighted(3)
    for ctx in (NO_KEY, PickContext(client_ip="192.0.2.1", uri="/x")):
        assert policy.pick([only], ctx) is only


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_weight_zero_is_never_picked_beside_positive_weights(name: str) -> None:
    policy = make_policy(name, random.Random(0))
    bs = weighted(0, 1, 2)
    for i in range(300):
        ctx = PickContext(client_ip=f"203.0.113.{i % 250}", uri=f"/{i}") if i % 2 else NO_KEY
        assert policy.pick(bs, ctx) is not bs[0]


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_all_weights_zero_counts_as_equal_weights(name: str) -> None:
    policy = make_policy(name, random.Random(0))
    bs = weighted(0, 0)
    assert set(run(policy, bs, 50)) == {0, 1}


# --- roundrobin ------------------------------------------------------------------------------


def test_roundrobin_equal_weights_rotate() -> None:
    assert run(RoundRobin(), weighted(1, 1, 1), 9) == [0, 1, 2] * 3


def test_roundrobin_5_1_1_is_nginx_smooth_sequence() -> None:
    # nginx, ngx_http_upstream_round_robin.c: "for edge case weights like { 5, 1, 1 } we now
    # produce { a, a, b, a, c, a, a } sequence instead of { c, b, a, a, a, a, a }".
    seq = run(RoundRobin(), weighted(5, 1, 1), 70)
    assert seq[:7] == [0, 0, 1, 0, 2, 0, 0]
    assert seq == seq[:7] * 10
    # A plain weighted list would send 5 in a row; wrapping windows give at most 4.
    assert longest_run(seq) <= 4


@pytest.mark.parametrize(
    ("weights", "max_run"),
    [((1, 1), 1), ((2, 1), 2), ((3, 1), 3), ((5, 1, 1), 4), ((4, 4, 1), 1), ((3, 2, 1), 2)],
)
def test_roundrobin_interleaves_instead_of_bursting(weights: tuple[int, ...], max_run: int) -> None:
    seq = run(RoundRobin(), weighted(*weights), 20 * sum(weights))
    assert longest_run(seq) == max_run


@pytest.mark.parametrize(
    "weights", [(1,), (1, 1), (2, 1), (3, 1), (5, 1, 1), (10, 3, 2, 1), (7, 7, 7), (1, 100)]
)
def test_roundrobin_every_window_is_exact(weights: tuple[int, ...]) -> None:
    total = sum(weights)
    seq = run(RoundRobin(), weighted(*weights), 3 * total)
    for start in range(2 * total + 1):
        counts = Counter(seq[start : start + total])
        assert [counts[i] for i in range(len(weights))] == list(weights)


weights_st = st.lists(st.integers(1, 20), min_size=1, max_size=6)


@given(weights=weights_st)
def test_roundrobin_windows_exact_and_counts_close_to_share(weights: list[int]) -> None:
    total = sum(weights)
    seq = run(RoundRobin(), weighted(*weights), 3 * total)
    for start in range(2 * total + 1):
        counts = Counter(seq[start : start + total])
        assert [counts[i] for i in range(len(weights))] == weights
    # Smoothness: after any number of picks each backend is within 2 of its exact share.
    counts = Counter[int]()
    for n, i in enumerate(seq, 1):
        counts[i] += 1
        for j, w in enumerate(weights):
            assert abs(counts[j] - n * w / total) < 2


@given(
    weights=st.lists(st.sampled_from([1, 1, 2, 3, 5, 10, 50, 100]), min_size=2, max_size=6),
    phases=st.lists(
        st.tuples(st.lists(st.booleans(), min_size=6, max_size=6), st.integers(1, 300)),
        min_size=1,
        max_size=4,
    ),
)
def test_roundrobin_stays_fair_while_the_candidate_set_changes(
    weights: list[int], phases: list[tuple[list[bool], int]]
) -> None:
    bs = weighted(*weights)
    policy = RoundRobin()
    policy.pick(bs, NO_KEY)
    for up, picks in phases:
        candidates = [b for b, ok in zip(bs, up, strict=False) if ok] or bs[:1]
        total = sum(b.weight for b in candidates)
        counts = Counter[int]()
        for n, i in enumerate(run(policy, candidates, picks), 1):
            counts[i] += 1
            for j, b in enumerate(candidates):
                # No burst or drought carried over from the previous set.
                assert abs(counts[j] - n * b.weight / total) < 3


@pytest.mark.parametrize("picks_before", [1, 2, 50, 51, 100, 101])
def test_roundrobin_heavy_backend_leaving_does_not_cause_a_burst(picks_before: int) -> None:
    # Beside a weight-100 backend the light ones carry credits of up to about +-100; without
    # clamping, one of them would then be picked ~50 times running once the heavy one is down.
    heavy, b, c = weighted(100, 1, 1)
    policy = RoundRobin()
    run(policy, [heavy, b, c], picks_before)
    seq = run(policy, [b, c], 20)
    assert longest_run(seq) <= 2
    assert abs(seq.count(0) - seq.count(1)) <= 2


def test_roundrobin_others_keep_their_turn_when_one_leaves() -> None:
    a, b, c = weighted(1, 1, 1)
    policy = RoundRobin()
    assert [policy.pick([a, b, c], NO_KEY) for _ in range(2)] == [a, b]
    # c goes down: a and b alternate, no one picked twice running.
    seq = [policy.pick([a, b], NO_KEY) for _ in range(6)]
    assert longest_run([id(x) for x in seq]) == 1
    assert Counter(id(x) for x in seq) == {id(a): 3, id(b): 3}


def test_roundrobin_returning_backend_gets_its_share_and_no_burst() -> None:
    a, b, c = weighted(1, 1, 1)
    policy = RoundRobin()
    run(policy, [a, b, c], 5)
    run(policy, [a, b], 41)  # c down for a while: it earns no credit meanwhile
    seq = run(policy, [a, b, c], 30)
    assert longest_run(seq) <= 2
    assert Counter(seq[:6]) == {0: 2, 1: 2, 2: 2}


def test_roundrobin_memory_is_per_policy_and_per_backend() -> None:
    bs = weighted(2, 1)
    one, two = RoundRobin(), RoundRobin()
    run(one, bs, 1)
    assert run(two, bs, 3) == run(RoundRobin(), bs, 3)
    # The same address in a new generation is a new object and starts fresh.
    fresh = weighted(2, 1)
    assert run(one, fresh, 3) == [0, 1, 0]


# --- leastconn -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("actives", "weights", "expected"),
    [
        ((3, 1, 2), (1, 1, 1), 1),
        ((0, 5, 5), (1, 1, 1), 0),
        ((4, 4, 3), (1, 1, 1), 2),
        ((3, 2), (2, 1), 0),  # 1.5 per weight beats 2
        ((4, 2), (2, 1), 0),  # 2 = 2: tie, first round goes to the first
        ((5, 2), (2, 1), 1),  # 2.5 loses to 2
        ((10, 1), (10, 1), 0),  # 1 = 1: tie
        ((9, 1), (10, 1), 0),
        ((11, 1), (10, 1), 1),
    ],
)
def test_leastconn_fewest_active_per_weight(
    actives: tuple[int, ...], weights: tuple[int, ...], expected: int
) -> None:
    bs = weighted(*weights)
    for b, active in zip(bs, actives, strict=True):
        b.active = active
    assert LeastConn().pick(bs, NO_KEY) is bs[expected]


def test_leastconn_ties_rotate() -> None:
    bs = weighted(1, 1, 1)
    assert run(LeastConn(), bs, 7) == [0, 1, 2, 0, 1, 2, 0]


def test_leastconn_ties_rotate_among_the_tied_only() -> None:
    bs = weighted(1, 1, 1, 1)
    bs[1].active = 1
    assert run(LeastConn(), bs, 6) == [0, 2, 3, 0, 2, 3]


def test_leastconn_tie_rotation_survives_a_backend_leaving() -> None:
    a, b, c = weighted(1, 1, 1)
    policy = LeastConn()
    assert policy.pick([a, b, c], NO_KEY) is a
    assert policy.pick([a, b, c], NO_KEY) is b
    assert policy.pick([a, c], NO_KEY) is c  # b left: the turn after b is c
    assert policy.pick([a, c], NO_KEY) is a


@pytest.mark.parametrize("weights", [(1, 1, 1), (3, 1), (5, 2, 1)])
def test_leastconn_spreads_open_connections_by_weight(weights: tuple[int, ...]) -> None:
    bs = weighted(*weights)
    policy = LeastConn()
    for _ in range(10 * sum(weights)):
        policy.pick(bs, NO_KEY).acquire()  # long-lived connections: nothing is released
    assert [b.active for b in bs] == [10 * w for w in weights]


def test_leastconn_follows_releases() -> None:
    bs = weighted(1, 1)
    policy = LeastConn()
    for _ in range(4):
        policy.pick(bs, NO_KEY).acquire()
    bs[1].release()
    bs[1].release()
    assert policy.pick(bs, NO_KEY) is bs[1]


# --- source and uri: weighted rendezvous hashing ---------------------------------------------

CLIENTS = [f"198.51.100.{i}" for i in range(256)] + [f"2001:db8::{i:x}" for i in range(256)]
PATHS = [f"/static/{i}/app.js" for i in range(512)]


def by_source(ip: str) -> PickContext:
    return PickContext(client_ip=ip)


def by_uri(uri: str) -> PickContext:
    return PickContext(uri=uri)


HASHED = [("source", CLIENTS, by_source), ("uri", PATHS, by_uri)]
hashed = pytest.mark.parametrize(("name", "keys", "ctx_of"), HASHED, ids=["source", "uri"])


def mapping(
    policy: BalancePolicy,
    candidates: Sequence[Backend],
    keys: Sequence[str],
    ctx_of: Callable[[str], PickContext],
) -> dict[str, str]:
    return {k: policy.pick(candidates, ctx_of(k)).label for k in keys}


@hashed
def test_same_key_same_backend(
    name: str, keys: list[str], ctx_of: Callable[[str], PickContext]
) -> None:
    bs = weighted(1, 1, 1, 1)
    first = mapping(make_policy(name), bs, keys, ctx_of)
    assert mapping(make_policy(name), bs, keys, ctx_of) == first
    assert mapping(make_policy(name), list(reversed(bs)), keys, ctx_of) == first  # order-free
    # A new generation builds new Backend objects with the same labels: clients stay put.
    assert mapping(make_policy(name), weighted(1, 1, 1, 1), keys, ctx_of) == first
    assert len(set(first.values())) == 4


@hashed
def test_removing_a_backend_moves_only_its_keys(
    name: str, keys: list[str], ctx_of: Callable[[str], PickContext]
) -> None:
    bs = weighted(1, 1, 1, 1, 1)
    policy = make_policy(name)
    before = mapping(policy, bs, keys, ctx_of)
    gone = bs[2]
    after = mapping(policy, [b for b in bs if b is not gone], keys, ctx_of)
    moved = {k for k in keys if before[k] != after[k]}
    assert moved == {k for k in keys if before[k] == gone.label}
    # Its keys spread over every remaining backend rather than piling onto one.
    assert {after[k] for k in moved} == {b.label for b in bs if b is not gone}
    # It comes back: exactly the original mapping.
    assert mapping(policy, bs, keys, ctx_of) == before


@hashed
def test_adding_a_backend_moves_keys_only_to_it(
    name: str, keys: list[str], ctx_of: Callable[[str], PickContext]
) -> None:
    bs = weighted(1, 1, 1)
    policy = make_policy(name)
    before = mapping(policy, bs, keys, ctx_of)
    extra = Backend("web", "10.0.0.99", 8080)
    after = mapping(policy, [*bs, extra], keys, ctx_of)
    assert {after[k] for k in keys if before[k] != after[k]} == {extra.label}


@hashed
@pytest.mark.parametrize("weights", [(3, 1), (1, 2, 1), (4, 1, 1, 2)])
def test_hash_share_follows_weight(
    name: str, keys: list[str], ctx_of: Callable[[str], PickContext], weights: tuple[int, ...]
) -> None:
    bs = weighted(*weights)
    counts = Counter(mapping(make_policy(name), bs, keys, ctx_of).values())
    for b in bs:
        share = b.weight / sum(weights)
        assert abs(counts[b.label] / len(keys) - share) < 0.08


@given(
    key=st.text(min_size=1, max_size=40),
    weights=st.lists(st.integers(1, 5), min_size=2, max_size=6),
    data=st.data(),
)
def test_source_key_moves_only_if_its_backend_left(
    key: str, weights: list[int], data: st.DataObject
) -> None:
    bs = weighted(*weights)
    policy = SourceHash()
    ctx = PickContext(client_ip=key)
    owner = policy.pick(bs, ctx)
    gone = data.draw(st.sampled_from(bs))
    rest = [b for b in bs if b is not gone]
    now = policy.pick(rest, ctx)
    if owner is not gone:
        assert now is owner
    assert policy.pick(bs, ctx) is owner


def test_hashing_is_stable_across_processes() -> None:
    # Golden values: Python's hash() is salted per process, blake2b is not. If these change,
    # every client of a "source" pool would move on upgrade; change them only on purpose.
    bs = weighted(1, 1, 1, 1)
    source, uri = SourceHash(), UriHash()
    assert source.pick(bs, by_source("192.0.2.1")).label == GOLDEN["192.0.2.1"]
    assert source.pick(bs, by_source("2001:db8::1")).label == GOLDEN["2001:db8::1"]
    assert uri.pick(bs, by_uri("/index.html")).label == GOLDEN["/index.html"]


GOLDEN = {
    "192.0.2.1": "web/10.0.0.2:8080",
    "2001:db8::1": "web/10.0.0.4:8080",
    "/index.html": "web/10.0.0.4:8080",
}


@pytest.mark.parametrize(
    "uris",
    [
        ["/a", "/a?x=1", "/a?y=2&z=3", "/a?"],
        ["/img/logo.png", "/img/logo.png?v=42"],
        ["/", "/?q=search"],
    ],
)
def test_uri_ignores_the_query_string(uris: list[str]) -> None:
    bs = weighted(1, 1, 1, 1, 1, 1)
    policy = UriHash()
    assert len({policy.pick(bs, by_uri(u)).label for u in uris}) == 1


def test_uri_keys_on_path_not_client() -> None:
    bs = weighted(1, 1, 1, 1)
    policy = UriHash()
    picks = {
        policy.pick(bs, PickContext(client_ip=f"192.0.2.{i}", uri="/same")).label for i in range(50)
    }
    assert len(picks) == 1


@pytest.mark.parametrize(
    ("name", "ctx"),
    [
        ("source", PickContext()),
        ("source", PickContext(client_ip="", uri="/x")),
        ("uri", PickContext()),
        ("uri", PickContext(client_ip="192.0.2.1", uri="")),
    ],
)
def test_missing_key_falls_back_to_roundrobin(name: str, ctx: PickContext) -> None:
    bs = weighted(2, 1)
    assert run(make_policy(name), bs, 9, ctx) == run(RoundRobin(), bs, 9)


# --- random: power of two choices ------------------------------------------------------------


def test_random_uses_the_injected_rng() -> None:
    bs = weighted(1, 2, 3, 4)
    seq = run(RandomTwoChoices(random.Random(7)), bs, 50)
    assert run(RandomTwoChoices(random.Random(7)), bs, 50) == seq
    assert run(RandomTwoChoices(random.Random(8)), bs, 50) != seq


def test_random_of_two_the_less_loaded_wins() -> None:
    bs = weighted(1, 1)
    bs[0].active = 5
    assert set(run(RandomTwoChoices(random.Random(1)), bs, 100)) == {1}


def test_random_load_is_per_weight() -> None:
    bs = weighted(10, 1)
    bs[0].active, bs[1].active = 5, 1  # 0.5 per weight beats 1.0
    assert set(run(RandomTwoChoices(random.Random(1)), bs, 100)) == {0}


@pytest.mark.parametrize("weights", [(1, 1), (3, 1), (1, 2, 3, 4)])
def test_random_idle_share_follows_weight(weights: tuple[int, ...]) -> None:
    bs = weighted(*weights)
    n = 20_000
    counts = Counter(run(RandomTwoChoices(random.Random(11)), bs, n))
    for i, w in enumerate(weights):
        assert abs(counts[i] / n - w / sum(weights)) < 0.02


def mean_spread(pick: Callable[[Sequence[Backend]], Backend]) -> float:
    """Mean of (most - fewest in-flight) while 80 requests run and end in random order."""
    bs = weighted(*[1] * 8)
    rng = random.Random(6)
    live: list[Backend] = []
    spreads = 0
    for _ in range(5_000):
        b = pick(bs)
        b.acquire()
        live.append(b)
        if len(live) > 80:
            live.pop(rng.randrange(len(live))).release()
        actives = [x.active for x in bs]
        spreads += max(actives) - min(actives)
    return spreads / 5_000


def test_random_two_choices_keep_load_far_more_even_than_one() -> None:
    policy = RandomTwoChoices(random.Random(5))
    one_choice = random.Random(5)
    two = mean_spread(lambda bs: policy.pick(bs, NO_KEY))
    one = mean_spread(one_choice.choice)
    assert two < one / 2


# --- the pool's cached candidates: a shortcut, never a different answer -----------------------
#
# A pool hands its policy the same `Candidates` object while nothing changed, and policies skip
# work for it (round robin updates its credits in place; weights and hashed labels come
# precomputed). Fed a `Candidates` or a plain list with the same members, every policy must
# answer the same, through candidate-set and weight changes.


def twin_picks(
    name: str,
    bs: Sequence[Backend],
    phases: Sequence[tuple[Sequence[bool], Sequence[int], int]],
    ctx_of: Callable[[int], PickContext],
) -> tuple[list[int], list[int]]:
    """Indices picked by one policy fed `Candidates` (rebuilt per phase, as a pool does after
    a change) and by a twin fed plain lists, phase by phase."""
    cached, plain = make_policy(name, random.Random(9)), make_policy(name, random.Random(9))
    got_cached: list[int] = []
    got_plain: list[int] = []
    index = {id(b): i for i, b in enumerate(bs)}
    for up, weights, picks in phases:
        for b, w in zip(bs, weights, strict=False):
            b.weight = w
        members = [b for b, ok in zip(bs, up, strict=False) if ok] or list(bs[:1])
        candidates = Candidates(members)
        for n in range(picks):
            got_cached.append(index[id(cached.pick(candidates, ctx_of(n)))])
            got_plain.append(index[id(plain.pick(list(members), ctx_of(n)))])
    return got_cached, got_plain


phases_st = st.lists(
    st.tuples(
        st.lists(st.booleans(), min_size=5, max_size=5),
        st.lists(st.integers(0, 7), min_size=5, max_size=5),
        st.integers(1, 40),
    ),
    min_size=1,
    max_size=5,
)


@pytest.mark.parametrize("name", sorted(POLICIES))
@given(phases=phases_st, keyed=st.booleans())
def test_cached_candidates_pick_exactly_as_a_plain_list(
    name: str, phases: list[tuple[list[bool], list[int], int]], keyed: bool
) -> None:
    bs = weighted(1, 1, 1, 1, 1)

    def ctx_of(n: int) -> PickContext:
        if not keyed:
            return NO_KEY
        return PickContext(client_ip=f"198.51.100.{n % 7}", uri=f"/k/{n % 5}?q={n}")

    got_cached, got_plain = twin_picks(name, bs, phases, ctx_of)
    assert got_cached == got_plain


def test_candidates_carry_the_weights_policies_use() -> None:
    bs = weighted(3, 0, 2)
    c = Candidates(bs)
    assert list(c) == bs
    assert (c.weights, c.total) == ((3, 0, 2), 5)
    assert c.labels == (b"web/10.0.0.1:8080", b"web/10.0.0.2:8080", b"web/10.0.0.3:8080")
    assert Candidates(weighted(0, 0)).weights == (1, 1)  # all zero counts as all equal
    assert c.same(bs)
    assert not c.same(bs[:2])
    assert not c.same(list(reversed(bs)))
    bs[1].weight = 1
    assert not c.same(bs)  # same members, another weight: the policies must hear of it


def reference_hrw(key: str, candidates: Sequence[Backend]) -> Backend:
    """The documented score, written out: weight / -ln(u), u from
    blake2b(key, b"\\0", label; 8 bytes, person "revproxy-hrw"), top 53 bits."""

    def score(b: Backend) -> float:
        data = key.encode("utf-8", "surrogatepass") + b"\0" + b.label.encode()
        digest = hashlib.blake2b(data, digest_size=8, person=b"revproxy-hrw").digest()
        u = ((int.from_bytes(digest, "big") >> 11) + 1) / (1 << 53)
        return math.inf if u == 1.0 else b.weight / -math.log(u)

    best = candidates[0]
    for b in candidates:
        if score(b) > score(best):
            best = b
    return best


@pytest.mark.parametrize("weights", [(1, 1, 1, 1), (5, 1, 2)])
def test_hash_is_the_documented_one_so_every_worker_and_restart_agrees(
    weights: tuple[int, ...],
) -> None:
    bs = weighted(*weights)
    policy = UriHash()
    for i in range(200):
        key = f"/item/{i}"
        expected = reference_hrw(key, bs)
        assert policy.pick(bs, PickContext(uri=key)) is expected
        assert policy.pick(Candidates(bs), PickContext(uri=key)) is expected
