"""Limits as the edge applies them (policy/limits.py): keys, IPv6 networks, refusals and their
headers, dry runs, and a store that fails."""

from __future__ import annotations

import asyncio
import socket

import pytest

from revproxy.config.model import Limit
from revproxy.ops.metrics import RequestMetrics
from revproxy.policy.counters import LocalCounters
from revproxy.policy.limits import ConnGate, Limiter, LimitSet, Refusal, compile_limits
from revproxy.policy.redis_store import RedisCounters
from revproxy.proto.ratelimit import Decision


def limit(**kw: object) -> Limit:
    fields: dict[str, object] = {"name": "api", "requests": 2, "period": 60.0}
    fields.update(kw)
    return Limit(**fields)  # type: ignore[arg-type]


def one(lim: Limit, metrics: RequestMetrics | None = None) -> LimitSet:
    out = compile_limits([lim.name], {lim.name: lim}, {}, metrics or RequestMetrics(), 64)
    assert out is not None
    return out


def test_keys() -> None:
    client = Limiter(limit(), None)
    assert client.key("1.2.3.4", [], "", 0).endswith(b"\0c\x001.2.3.4")
    header = Limiter(limit(key="header:x-api-key"), None)
    assert header.key("1.2.3.4", [(b"x-api-key", b"k1")], "", 0).endswith(b"\0h\0k1")
    # Without the header, the client counts.
    assert header.key("1.2.3.4", [(b"other", b"k1")], "", 0).endswith(b"\0c\x001.2.3.4")
    user = Limiter(limit(key="user"), None)
    assert user.key("1.2.3.4", [], "ann", 0).endswith(b"\0u\0ann")
    per_route = Limiter(limit(key="client+route"), None)
    assert per_route.key("1.2.3.4", [], "", 3) != per_route.key("1.2.3.4", [], "", 4)
    # A changed limit counts under a new prefix; an unchanged one under the same.
    assert Limiter(limit(), None).prefix == client.prefix
    assert Limiter(limit(requests=3), None).prefix != client.prefix


def test_ipv6_clients_count_by_network() -> None:
    s = one(limit())
    assert s.client("2001:db8:0:1::1") == s.client("2001:db8:0:1:ffff::2") == "2001:db8:0:1::/64"
    assert s.client("2001:db8:0:2::1") == "2001:db8:0:2::/64"
    assert s.client("192.0.2.1") == "192.0.2.1"
    assert s.client("fe80::1%eth0") == "fe80::/64"
    narrow = compile_limits(["api"], {"api": limit()}, {}, RequestMetrics(), 128)
    assert narrow is not None and narrow.client("2001:db8::1") == "2001:db8::1/128"


def test_reject_then_counted_in_metrics() -> None:
    metrics = RequestMetrics()
    s, counters = one(limit(), metrics), LocalCounters()
    assert s.local
    assert s.check(counters, "10.0.0.1") is None
    assert s.check(counters, "10.0.0.1") is None
    refusal = s.check(counters, "10.0.0.1")
    assert refusal is not None and refusal.status == 429 and refusal.reason == "limit:api"
    assert s.check(counters, "10.0.0.2") is None
    assert metrics.limit_exceeded.values == {("api", "reject"): 1}


def test_action_log_lets_through_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    metrics = RequestMetrics()
    s, counters = one(limit(action="log"), metrics), LocalCounters()
    assert all(s.check(counters, "10.0.0.1") is None for _ in range(5))
    assert metrics.limit_exceeded.values == {("api", "log"): 3}
    lines = [r.getMessage() for r in caplog.records if r.name == "revproxy.limits"]
    assert lines == ["limit=api client=10.0.0.1 over 2/60s (action log: let through)"]


def test_first_refusing_limit_answers() -> None:
    a, b = limit(name="a", requests=5), limit(name="b", requests=1)
    s = compile_limits(["a", "b"], {"a": a, "b": b}, {}, RequestMetrics(), 64)
    assert s is not None
    counters = LocalCounters()
    assert s.check(counters, "10.0.0.1") is None
    refusal = s.check(counters, "10.0.0.1")
    assert refusal is not None and refusal.limit.name == "b"


def test_refusal_headers() -> None:
    lim = limit(requests=5, burst=2, period=10.0, headers=True)
    refusal = Refusal(lim, Decision(False, 0, 3.2, 12.0))
    assert refusal.headers() == [
        (b"retry-after", b"4"),
        (b"ratelimit-policy", b'"api";q=7;w=10'),
        (b"ratelimit", b'"api";r=0;t=4'),
    ]
    # Never "Retry-After: 0": a client would come back at once.
    assert Refusal(limit(), Decision(False, 0, 0.0001, 1.0)).headers() == [(b"retry-after", b"1")]
    failed = Refusal(lim, None)
    assert failed.status == 503 and failed.headers() == [(b"retry-after", b"1")]


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


@pytest.mark.parametrize("outcome", ["allow", "deny"])
def test_a_failed_store_applies_on_store_error(outcome: str) -> None:
    url = f"redis://127.0.0.1:{_closed_port()}/0"
    lim = limit(store=url, on_store_error=outcome)
    metrics = RequestMetrics()
    stores: dict[str, RedisCounters] = {}
    s = compile_limits(["api"], {"api": lim}, stores, metrics, 64)
    assert s is not None and not s.local and set(stores) == {url}

    async def run() -> Refusal | None:
        try:
            return await s.check_async(LocalCounters(), "10.0.0.1")
        finally:
            await stores[url].close()

    refusal = asyncio.run(run())
    if outcome == "allow":
        assert refusal is None
    else:
        assert refusal is not None and refusal.status == 503
    assert metrics.limit_store_errors.values == {("api", outcome): 1}


def test_conn_gate_keys() -> None:
    gate = ConnGate("web", 2, 10, 64)
    assert gate.key("10.0.0.1") != gate.key("10.0.0.1", stream=True)
    assert gate.key("2001:db8::1") == gate.key("2001:db8::2")
    counters = LocalCounters()
    key = gate.key("10.0.0.1")
    assert counters.acquire(key, 2) and counters.acquire(key, 2)
    assert not counters.acquire(key, 2)
    counters.release(key)
    assert counters.acquire(key, 2)
