"""DNS discovery against a DNS server on loopback whose records the tests change
(``dns_peer.DnsPeer``): the members a ``resolve = "all"`` or ``srv`` server stands for, what a
name without records and a failing server mean, and how a pool takes members in."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from dns_peer import DnsPeer

from revproxy.config.model import Server
from revproxy.upstream.backend import Backend, BackendState, PickContext
from revproxy.upstream.discovery import DiscoveryError, Lookup, members
from revproxy.upstream.pool import Member, Pool


@pytest.fixture
def dns() -> Iterator[DnsPeer]:
    with DnsPeer() as peer:
        yield peer


def lookup(dns: DnsPeer) -> Lookup:
    return Lookup([dns.address], timeout=2.0)


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


ALL = Server(address="app.internal", port=8080, resolve="all", weight=3, max_conns=7)
SRV = Server(address="_http._tcp.app.internal", port=0, srv="_http._tcp.app.internal")


def test_every_address_of_the_name_is_a_member_with_the_servers_settings(dns: DnsPeer) -> None:
    dns.set("app.internal", "A", "10.0.0.2", "10.0.0.1")
    dns.set("app.internal", "AAAA", "fd00::1")
    found = run(members(ALL, lookup(dns)))
    assert found == (
        Member("10.0.0.1", 8080, 3, False, 7, "app.internal"),
        Member("10.0.0.2", 8080, 3, False, 7, "app.internal"),
        Member("fd00::1", 8080, 3, False, 7, "app.internal"),
    )
    # The record changes: the next lookup says so (no cache in between).
    dns.set("app.internal", "A", "10.0.0.3")
    dns.set("app.internal", "AAAA")
    assert [m.host for m in run(members(ALL, lookup(dns)))] == ["10.0.0.3"]  # type: ignore[attr-defined]


def test_a_name_without_records_has_no_members_and_a_failing_server_raises(
    dns: DnsPeer,
) -> None:
    assert run(members(ALL, lookup(dns))) == ()  # NXDOMAIN
    dns.set("app.internal", "TXT", '"x"')
    assert run(members(ALL, lookup(dns))) == ()  # the name exists, no A/AAAA
    dns.servfail = True
    with pytest.raises(DiscoveryError, match="SERVFAIL"):
        run(members(ALL, lookup(dns)))


def test_srv_targets_give_ports_and_weights_and_higher_priorities_are_backups(
    dns: DnsPeer,
) -> None:
    dns.set(
        "_http._tcp.app.internal",
        "SRV",
        "10 60 8001 a.app.internal.",
        "10 20 8002 b.app.internal.",
        "20 0 8003 c.app.internal.",
    )
    dns.set("a.app.internal", "A", "10.0.0.1")
    dns.set("b.app.internal", "A", "10.0.0.2", "10.0.0.3")
    dns.set("c.app.internal", "A", "10.0.0.4")
    found = run(members(SRV, lookup(dns)))
    assert found == (
        Member("10.0.0.1", 8001, 60, False, None, "a.app.internal"),
        Member("10.0.0.2", 8002, 20, False, None, "b.app.internal"),
        Member("10.0.0.3", 8002, 20, False, None, "b.app.internal"),
        Member("10.0.0.4", 8003, 1, True, None, "c.app.internal"),  # weight 0 → 1
    )


def test_srv_weights_past_the_largest_server_weight_are_scaled_and_dot_means_none(
    dns: DnsPeer,
) -> None:
    dns.set("_http._tcp.app.internal", "SRV", "1 1000 80 a.x.", "1 500 80 b.x.", "1 0 80 .")
    dns.set("a.x", "A", "10.0.0.1")
    dns.set("b.x", "A", "10.0.0.2")
    found = run(members(SRV, lookup(dns)))
    assert [(m.host, m.weight) for m in found] == [("10.0.0.1", 256), ("10.0.0.2", 128)]  # type: ignore[attr-defined]


def test_no_dns_server_answering_is_a_failure_not_an_empty_record() -> None:
    silent = Lookup([("127.0.0.1", 9)], timeout=0.5)  # discard port: nothing answers
    with pytest.raises(DiscoveryError):
        run(silent.addresses("app.internal"))


# --- the pool's side ---------------------------------------------------------------------


def test_a_pool_takes_members_in_keeps_their_objects_and_drops_duplicates() -> None:
    fixed = Backend(pool="app", host="10.0.0.9", port=80)
    pool = Pool("app", [fixed], "roundrobin")
    m1, m2 = Member("10.0.0.1", 80, 2, hostname="app.internal"), Member("10.0.0.2", 80)
    added, gone = pool.set_found({"app.internal:80": (m1, m2, Member("10.0.0.9", 80))})
    assert [b.label for b in added] == ["app/10.0.0.1:80", "app/10.0.0.2:80"] and gone == []
    first = pool.backends[1]
    assert (first.weight, first.found_by, first.server_name) == (
        2,
        "app.internal:80",
        "app.internal",
    )
    assert first.addresses == (("10.0.0.1", 80),)
    picked = {pool.pick(PickContext()) for _ in range(8)}
    assert picked == set(pool.backends)  # selection saw the change
    added, gone = pool.set_found({"app.internal:80": (Member("10.0.0.1", 80, 5),)})
    assert added == [] and [b.label for b in gone] == ["app/10.0.0.2:80"]
    assert pool.backends[1] is first and first.weight == 5
    # A configured server taken out until the next reload, then the run-time part emptied.
    added, gone = pool.set_found({}, removed={("10.0.0.9", 80)})
    assert pool.backends == () and {b.label for b in gone} == {"app/10.0.0.9:80", "app/10.0.0.1:80"}
    assert pool.pick(PickContext()) is None
    pool.set_found({}, removed=())
    assert pool.backends == (fixed,) and fixed.state is BackendState.UP
