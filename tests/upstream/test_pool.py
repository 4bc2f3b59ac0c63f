"""Pool and backend state: what `available` means, backups, exclusion for retries.

Backends are hand-built and their state flipped the way health checks and the admin would;
the pool must only ever hand out available backends, and backups only when no primary is left.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Collection

import pytest
from hypothesis import given
from hypothesis import strategies as st

from revproxy.config.model import Passive, Server
from revproxy.config.model import Pool as PoolConfig
from revproxy.upstream.backend import Backend, BackendState, PickContext
from revproxy.upstream.balancing import POLICIES
from revproxy.upstream.health import HealthMonitor
from revproxy.upstream.pool import Pool

CTX = PickContext(client_ip="192.0.2.7", uri="/index.html?x=1")


def backends(n: int, *, pool: str = "web", backup: int = 0) -> list[Backend]:
    """`n` primaries followed by `backup` backups, ports 8001, 8002, ..."""
    return [Backend(pool, "10.0.0.1", 8001 + i, backup=i >= n) for i in range(n + backup)]


# --- Backend ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backend", "label"),
    [
        (Backend("web", "10.0.0.1", 8080), "web/10.0.0.1:8080"),
        (Backend("web", "app.internal", 80), "web/app.internal:80"),
        (Backend("web", "2001:db8::1", 443), "web/[2001:db8::1]:443"),
        (Backend("web", "10.0.0.1", 8080, name="alpha"), "alpha"),
    ],
)
def test_label(backend: Backend, label: str) -> None:
    assert backend.label == label


@pytest.mark.parametrize(
    ("state", "max_conns", "active", "available"),
    [
        (BackendState.UP, None, 0, True),
        (BackendState.UP, None, 10_000, True),
        (BackendState.UP, 2, 1, True),
        (BackendState.UP, 2, 2, False),  # full
        (BackendState.UP, 2, 3, False),  # over full (max_conns lowered by a reload)
        (BackendState.UP, 0, 0, False),
        (BackendState.DOWN, None, 0, False),
        (BackendState.DRAIN, None, 0, False),
        (BackendState.MAINT, None, 0, False),
        (BackendState.DOWN, 5, 0, False),
    ],
)
def test_available(
    state: BackendState, max_conns: int | None, active: int, available: bool
) -> None:
    b = Backend("web", "10.0.0.1", 8080, max_conns=max_conns, state=state, active=active)
    assert b.available is available


def test_state_values_are_the_words_operators_type() -> None:
    assert [s.value for s in BackendState] == ["up", "down", "drain", "maint"]


def test_acquire_and_release_count_in_flight_and_total() -> None:
    b = Backend("web", "10.0.0.1", 8080, max_conns=2)
    b.acquire()
    b.acquire()
    assert (b.active, b.total, b.available) == (2, 2, False)
    b.release()
    assert (b.active, b.total, b.available) == (1, 2, True)
    b.release()
    b.release()  # an extra release never drives the count negative
    assert (b.active, b.total) == (0, 2)


def test_effective_weight_is_the_weight() -> None:
    assert Backend("web", "h", 1, weight=7).effective_weight == 7


def test_backends_compare_by_identity() -> None:
    a, b = Backend("web", "h", 1), Backend("web", "h", 1)
    assert a != b
    assert len({a, b}) == 2


# --- Pool ------------------------------------------------------------------------------------


def test_pool_holds_its_config_names() -> None:
    bs = backends(2)
    pool = Pool("web", bs, "leastconn")
    assert pool.name == "web"
    assert pool.balance == "leastconn"
    assert pool.backends == tuple(bs)
    assert type(pool.policy) is POLICIES["leastconn"]


def test_unknown_balance_is_an_error_naming_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown balance policy 'least_conn'.*leastconn"):
        Pool("web", backends(1), "least_conn")


def test_backend_of_another_pool_is_refused() -> None:
    with pytest.raises(ValueError, match="belongs to pool 'api'"):
        Pool("web", [Backend("api", "h", 1)], "roundrobin")


def test_duplicate_labels_are_refused() -> None:
    with pytest.raises(ValueError, match="two backends are named 'alpha'"):
        Pool(
            "web",
            [Backend("web", "h", 1, name="alpha"), Backend("web", "h", 2, name="alpha")],
            "roundrobin",
        )


def test_find_by_label() -> None:
    bs = [Backend("web", "10.0.0.1", 80), Backend("web", "10.0.0.2", 80, name="beta")]
    pool = Pool("web", bs, "roundrobin")
    assert pool.find("web/10.0.0.1:80") is bs[0]
    assert pool.find("beta") is bs[1]
    assert pool.find("web/10.0.0.2:80") is None  # a named backend answers to its name only
    assert pool.find("nope") is None


@pytest.mark.parametrize("balance", sorted(POLICIES))
@pytest.mark.parametrize("state", [BackendState.DOWN, BackendState.DRAIN, BackendState.MAINT])
def test_unavailable_backends_are_never_picked(balance: str, state: BackendState) -> None:
    bs = backends(3)
    bs[0].state = state
    bs[1].max_conns, bs[1].active = 1, 1  # full
    pool = Pool("web", bs, balance, rng=random.Random(1))
    for i in range(50):
        ctx = PickContext(client_ip=f"192.0.2.{i}", uri=f"/{i}")
        assert pool.pick(ctx) is bs[2]


@pytest.mark.parametrize("balance", sorted(POLICIES))
def test_nothing_available_picks_none(balance: str) -> None:
    bs = backends(2, backup=1)
    for b, state in zip(
        bs, [BackendState.DOWN, BackendState.MAINT, BackendState.DRAIN], strict=True
    ):
        b.state = state
    pool = Pool("web", bs, balance)
    assert pool.pick(CTX) is None
    assert Pool("web", [], balance).pick(CTX) is None


@pytest.mark.parametrize("balance", sorted(POLICIES))
def test_backups_only_when_every_primary_is_unavailable(balance: str) -> None:
    bs = backends(2, backup=2)
    primaries, spares = bs[:2], bs[2:]
    pool = Pool("web", bs, balance, rng=random.Random(2))

    def picks() -> set[Backend | None]:
        return {
            pool.pick(PickContext(client_ip=f"198.51.100.{i}", uri=f"/p{i}")) for i in range(40)
        }

    assert picks() <= set(primaries)
    primaries[0].state = BackendState.DOWN
    assert picks() == {primaries[1]}
    primaries[1].max_conns, primaries[1].active = 4, 4  # full counts as unavailable
    assert picks() == set(spares)
    primaries[1].active = 3  # a slot frees up: back to the primary at once
    assert picks() == {primaries[1]}
    primaries[1].state = BackendState.DRAIN
    spares[0].state = BackendState.MAINT
    assert picks() == {spares[1]}


@pytest.mark.parametrize("balance", sorted(POLICIES))
def test_exclude_skips_backends_already_tried(balance: str) -> None:
    bs = backends(3, backup=1)
    pool = Pool("web", bs, balance, rng=random.Random(3))
    tried: list[Backend] = []
    for _ in range(3):
        b = pool.pick(CTX, exclude=tried)
        assert b is not None
        assert b not in tried
        assert not b.backup  # primaries left untried come before the backup
        tried.append(b)
    assert set(tried) == set(bs[:3])
    # Every available primary has been tried: a retry may fall to the backup.
    assert pool.pick(CTX, exclude=tried) is bs[3]
    assert pool.pick(CTX, exclude=bs) is None


def test_excluded_primary_does_not_open_the_backups_while_others_are_up() -> None:
    bs = backends(2, backup=1)
    bs[1].state = BackendState.DOWN
    pool = Pool("web", bs, "roundrobin")
    assert pool.pick(CTX, exclude={bs[0]}) is bs[2]  # the only available primary was tried
    bs[1].state = BackendState.UP
    assert pool.pick(CTX, exclude={bs[0]}) is bs[1]


def test_pick_reads_state_and_never_writes_it() -> None:
    bs = backends(2, backup=1)
    bs[0].state = BackendState.DRAIN
    before = [(b.state, b.active, b.total, b.failures) for b in bs]
    pool = Pool("web", bs, "leastconn")
    for _ in range(10):
        pool.pick(CTX)
    assert [(b.state, b.active, b.total, b.failures) for b in bs] == before


# --- property: whatever health did, the pick is legal ----------------------------------------

backend_spec = st.tuples(
    st.booleans(),  # backup
    st.sampled_from(list(BackendState)),
    st.one_of(st.none(), st.integers(0, 3)),  # max_conns
    st.integers(0, 4),  # active
    st.integers(0, 5),  # weight
    st.booleans(),  # excluded
)


@given(
    specs=st.lists(backend_spec, max_size=8),
    balance=st.sampled_from(sorted(POLICIES)),
    client=st.one_of(st.none(), st.ip_addresses().map(str)),
    uri=st.one_of(st.none(), st.text(max_size=20)),
    seed=st.integers(0, 2**32),
    rounds=st.integers(1, 5),
)
def test_pick_is_always_legal(
    specs: list[tuple[bool, BackendState, int | None, int, int, bool]],
    balance: str,
    client: str | None,
    uri: str | None,
    seed: int,
    rounds: int,
) -> None:
    bs = [
        Backend(
            "web",
            "10.0.0.1",
            8000 + i,
            backup=backup,
            state=state,
            max_conns=mc,
            active=active,
            weight=weight,
        )
        for i, (backup, state, mc, active, weight, _) in enumerate(specs)
    ]
    exclude = {b for b, spec in zip(bs, specs, strict=True) if spec[5]}
    pool = Pool("web", bs, balance, rng=random.Random(seed))
    usable = [b for b in bs if b.available and b not in exclude]
    primaries = [b for b in usable if not b.backup]
    for _ in range(rounds):
        picked = pool.pick(PickContext(client_ip=client, uri=uri), exclude=exclude)
        if not usable:
            assert picked is None
            continue
        assert picked in usable
        assert picked is not None
        if primaries:
            assert not picked.backup


# --- the candidate cache: every write that changes `available` or a weight is seen -----------
#
# The pool keeps its candidates between picks and rebuilds them when health, the admin or a
# reload writes a watched attribute; `active` is checked at each pick. Each test warms the
# cache with picks first, then changes one thing the way its writer does.


def spread(pool: Pool, n: int, **kw: Collection[Backend]) -> Counter[int]:
    """Ports picked over `n` picks (None counts as port 0)."""
    return Counter(getattr(pool.pick(CTX, **kw), "port", 0) for _ in range(n))


@pytest.mark.parametrize("balance", sorted(POLICIES))
@pytest.mark.parametrize("state", [BackendState.DOWN, BackendState.DRAIN, BackendState.MAINT])
def test_cache_follows_state_flips(balance: str, state: BackendState) -> None:
    bs = backends(3)
    pool = Pool("web", bs, balance, rng=random.Random(4))

    def picks() -> set[Backend | None]:
        return {pool.pick(PickContext(client_ip=f"192.0.2.{i}", uri=f"/{i}")) for i in range(60)}

    assert picks() == set(bs)
    bs[1].state = state
    assert picks() == {bs[0], bs[2]}
    bs[0].state = bs[2].state = state
    assert picks() == {None}
    bs[1].state = BackendState.UP
    assert picks() == {bs[1]}
    bs[0].state = bs[2].state = BackendState.UP
    assert picks() == set(bs)


def test_cache_follows_health_and_admin_through_the_monitor() -> None:
    cfg = PoolConfig(
        name="web",
        servers=(Server(address="10.0.0.1", port=8001), Server(address="10.0.0.1", port=8002)),
        passive=Passive(failures=1, cooldown=5.0),
    )
    now = [100.0]
    mon = HealthMonitor(clock=lambda: now[0])
    bs = backends(2)
    pool = Pool("web", bs, "roundrobin")
    mon.adopt([(cfg, bs)])
    assert spread(pool, 4) == {8001: 2, 8002: 2}
    mon.observe(bs[0], False)  # passive: one failed connection trips it
    assert spread(pool, 4) == {8002: 4}
    now[0] += 5.0
    mon.tick()  # cooldown over
    assert spread(pool, 4) == {8001: 2, 8002: 2}
    t = mon.find("web/10.0.0.1:8002")
    assert t is not None
    mon.set_admin(t, BackendState.DRAIN)
    assert spread(pool, 4) == {8001: 4}
    mon.set_admin(t, BackendState.MAINT)
    assert spread(pool, 4) == {8001: 4}
    mon.set_admin(t, None)
    assert spread(pool, 4) == {8001: 2, 8002: 2}


@pytest.mark.parametrize("balance", sorted(POLICIES))
def test_cache_follows_max_conns_reached_and_freed(balance: str) -> None:
    bs = backends(2, backup=1)
    bs[0].max_conns = 1
    pool = Pool("web", bs, balance, rng=random.Random(5))
    assert spread(pool, 20).keys() <= {8001, 8002}
    bs[0].acquire()  # full: the way the exchange counts a request in flight
    assert spread(pool, 20) == {8002: 20}
    bs[1].state = BackendState.DOWN
    assert spread(pool, 20) == {8003: 20}  # the only primary left is full: the backup
    bs[0].release()  # a slot frees up: back at once, no write to anything watched
    assert spread(pool, 20) == {8001: 20}
    bs[0].max_conns = 0  # lowered by hand: full at 0
    assert spread(pool, 20) == {8003: 20}
    bs[0].max_conns = None  # and the limit lifted
    assert spread(pool, 20) == {8001: 20}
    bs[2].max_conns, bs[2].active = 2, 2
    bs[0].state = BackendState.MAINT
    assert spread(pool, 20) == {0: 20}  # nothing left: the backup is full too


def test_cache_follows_weight_changes() -> None:
    bs = backends(2)
    pool = Pool("web", bs, "roundrobin")
    assert spread(pool, 10) == {8001: 5, 8002: 5}
    bs[0].weight = 4
    assert spread(pool, 50) == {8001: 40, 8002: 10}
    bs[0].weight = 0  # weight 0 beside a positive weight: never picked
    assert spread(pool, 10) == {8002: 10}


def test_cache_follows_slow_start_weight_changes() -> None:
    bs = backends(2)
    for b in bs:
        b.weight_scale = 100  # as a reload sets it in a slow-start pool
    pool = Pool("web", bs, "roundrobin")
    assert spread(pool, 200) == {8001: 100, 8002: 100}
    bs[0].weight_factor = 0.0  # just came back up: a trickle of 1 in 101
    assert spread(pool, 101 * 3) == {8001: 3, 8002: 300}
    bs[0].weight_factor = 0.5  # ramping: 50 in 150
    assert spread(pool, 150 * 2) == {8001: 100, 8002: 200}
    bs[0].weight_factor = 1.0
    assert spread(pool, 200) == {8001: 100, 8002: 100}


def test_cache_follows_backup_flag_changes() -> None:
    bs = backends(2)
    pool = Pool("web", bs, "roundrobin")
    assert spread(pool, 4) == {8001: 2, 8002: 2}
    bs[1].backup = True
    assert spread(pool, 4) == {8001: 4}
    bs[0].state = BackendState.DOWN
    assert spread(pool, 4) == {8002: 4}
    bs[1].backup = False
    bs[0].state = BackendState.UP
    assert spread(pool, 4) == {8001: 2, 8002: 2}


@pytest.mark.parametrize("balance", sorted(POLICIES))
def test_exclude_does_not_leak_into_later_picks(balance: str) -> None:
    bs = backends(3, backup=1)
    pool = Pool("web", bs, balance, rng=random.Random(6))
    before = spread(pool, 30)
    assert before.keys() <= {8001, 8002, 8003}
    for excluded in ({bs[0]}, [bs[0], bs[1]], set(bs[:3]), frozenset(bs)):
        got = spread(pool, 30, exclude=excluded)
        assert not got.keys() & {b.port for b in excluded}
        assert spread(pool, 30).keys() <= {8001, 8002, 8003}  # a retry changed nothing
    assert spread(pool, 30, exclude=set(bs[:3])) == {8004: 30}
    assert spread(pool, 30, exclude=bs) == {0: 30}


def test_roundrobin_rotation_continues_across_retries_and_rewrites() -> None:
    bs = backends(3)
    pool = Pool("web", bs, "roundrobin")
    assert [pool.pick(CTX) for _ in range(3)] == bs
    assert pool.pick(CTX, exclude={bs[0]}) in bs[1:]
    # Rewriting what is already there (workers apply the master's states every half second)
    # is not a change: the rotation and the cached candidates stay as they were.
    cached = pool._primaries
    for b in bs:
        b.state, b.weight_factor, b.max_conns = BackendState.UP, 1.0, None
    assert pool.pick(CTX) is not None
    assert pool._primaries is cached
    assert Counter(pool.pick(CTX) for _ in range(30)) == {b: 10 for b in bs}


def test_only_real_changes_rebuild_the_cache() -> None:
    bs = backends(2)
    pool = Pool("web", bs, "roundrobin")
    pool.pick(CTX)
    first = pool._primaries
    bs[0].state = BackendState.UP  # the same value
    bs[0].acquire()  # `active` is never watched
    bs[0].release()
    pool.pick(CTX)
    assert pool._primaries is first
    bs[0].weight_factor = 0.5  # no effect on the effective weight (scale 1, weight 1)...
    pool.pick(CTX)
    assert pool._primaries is first  # ...so the candidates are the same object
    bs[0].weight_factor = 1.0
    bs[0].weight = 3
    pool.pick(CTX)
    assert pool._primaries is not first
    assert pool._primaries.weights == (3, 1)


def test_backends_still_behave_as_plain_dataclasses() -> None:
    b = Backend("web", "10.0.0.1", 8080, weight=3, state=BackendState.DRAIN, max_conns=2)
    assert (b.weight, b.state, b.max_conns, b.backup) == (3, BackendState.DRAIN, 2, False)
    assert "state=<BackendState.DRAIN" in repr(b)
    assert "weight=3" in repr(b)
    plain = Backend("web", "10.0.0.1", 8080)
    assert (plain.weight, plain.state, plain.weight_factor, plain.weight_scale) == (
        1,
        BackendState.UP,
        1.0,
        1,
    )
