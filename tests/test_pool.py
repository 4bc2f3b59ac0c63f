"""Pool and backend state: what `available` means, backups, exclusion for retries.

Backends are hand-built and their state flipped the way health checks and the admin would;
the pool must only ever hand out available backends, and backups only when no primary is left.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from revproxy.balancing import POLICIES
from revproxy.pool import Backend, BackendState, PickContext, Pool

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
