"""NetworkSet: allow/deny lists looked up by binary search (proto/netset.py)."""

from __future__ import annotations

import ipaddress
import random
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from revproxy.proto.netset import NetworkSet, parse_address


def nets(*texts: str) -> NetworkSet:
    return NetworkSet(ipaddress.ip_network(t) for t in texts)


def test_membership_by_family_and_prefix() -> None:
    s = nets("203.0.113.0/24", "10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32")
    assert "203.0.113.1" in s and "10.255.255.255" in s and "192.0.2.7" in s
    assert "192.0.2.8" not in s and "11.0.0.0" not in s
    assert "2001:db8:1::5" in s and "2001:db9::1" not in s
    assert ipaddress.ip_address("10.1.2.3") in s


def test_ipv4_mapped_clients_are_ipv4() -> None:
    s = nets("10.0.0.0/8")
    assert "::ffff:10.1.2.3" in s
    assert "::ffff:11.1.2.3" not in s
    mapped = nets("::ffff:10.0.0.0/104")
    assert "10.9.9.9" in mapped and "11.0.0.1" not in mapped


@pytest.mark.parametrize("address", ["", "not-an-ip", "/run/x.sock", "10.0.0.256", None, 42])
def test_anything_else_is_in_no_set(address: object) -> None:
    assert address not in nets("0.0.0.0/0", "::/0")


def test_overlapping_and_adjacent_ranges_merge() -> None:
    s = nets("10.0.0.0/25", "10.0.0.128/25", "10.0.0.0/24", "10.0.1.0/24", "10.0.3.0/24")
    assert len(s) == 2  # 10.0.0.0-10.0.1.255 and 10.0.3.0/24
    assert "10.0.1.200" in s and "10.0.2.1" not in s and "10.0.3.1" in s
    assert s.size == 5


def test_empty_set() -> None:
    s = nets()
    assert not s and "10.0.0.1" not in s


def test_memo_gives_the_same_answers_and_stays_bounded() -> None:
    assert parse_address("10.0.0.1") == (4, 167772161) == parse_address("10.0.0.1")
    for i in range(5000):
        parse_address(f"10.0.{i // 256}.{i % 256}")
    from revproxy.proto import netset

    assert len(netset._parsed) <= netset._MEMO_MAX


_v4 = st.builds(
    lambda a, p: ipaddress.IPv4Network((a, p), strict=False),
    st.integers(0, 2**32 - 1),
    st.integers(8, 32),
)


@given(st.lists(_v4, max_size=30), st.lists(st.integers(0, 2**32 - 1), max_size=30))
def test_same_answer_as_a_scan(networks: list[ipaddress.IPv4Network], probes: list[int]) -> None:
    s = NetworkSet(networks)
    for n in networks:
        probes += [int(n.network_address), int(n.broadcast_address)]
    for value in probes:
        ip = ipaddress.IPv4Address(value)
        assert (ip in s) == any(ip in n for n in networks)


def test_a_hundred_thousand_networks_cost_what_ten_do() -> None:
    """Not a timing assertion: the lookups are counted, the seconds only printed."""
    rng = random.Random(7)
    big = [ipaddress.IPv4Network((rng.getrandbits(32), 24), strict=False) for _ in range(100_000)]
    s = NetworkSet(big)
    probes = [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(2000)]
    t0 = time.perf_counter()
    hits = sum(p in s for p in probes)
    per = (time.perf_counter() - t0) / len(probes) * 1e6
    print(f"100,000 networks ({len(s)} ranges): {per:.2f} us per lookup, {hits} hits")
    for n in big[:500]:
        assert n.network_address in s and n.broadcast_address in s
    assert 0 < len(s) <= 100_000
