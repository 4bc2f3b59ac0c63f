"""Rate-limit counters in Redis (policy/redis_store.py), against a real redis-server.

The store must decide exactly as ``proto.ratelimit`` does, share one budget between instances,
forget its counters, and fail fast (``StoreError``, then a back-off) when Redis is gone.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import pytest
import redis.asyncio
from redis_peer import RedisServer, redis_binary, redis_server

from revproxy.policy import redis_store
from revproxy.policy.redis_store import RedisCounters, StoreError
from revproxy.proto.ratelimit import Rate, decide

T = TypeVar("T")

# Long enough that a test never straddles two windows by chance (a few ms in an hour).
LONG = 3600.0


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with redis_server() as s:
        yield s


@pytest.fixture
def fresh_server() -> Iterator[RedisServer]:
    """A server of the test's own (it is killed or paused)."""
    with redis_server() as s:
        yield s


# What the tests give a store to answer in unless they are about its timeout: the product's
# 0.25 s is about a live site; a suite run loading both cores can take longer than that for a
# first connect, and these tests are about what Redis decides, not how fast.
ANSWER_TIMEOUT = 5.0


def run(
    url: str, body: Callable[[RedisCounters], Awaitable[T]], timeout: float = ANSWER_TIMEOUT
) -> T:
    """``body(store)`` in a fresh event loop, the store closed afterwards."""

    async def main() -> T:
        store = RedisCounters(url, timeout=timeout)
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(main())


async def redis_time(url: str) -> float:
    """Redis's clock, in seconds (the clock the windows are aligned on)."""
    client = redis.asyncio.Redis.from_url(url)
    try:
        sec, usec = await client.time()
        return sec + usec / 1e6
    finally:
        await client.aclose()


async def wait_for_window_position(url: str, period: float, at: float, *, ahead: int = 0) -> None:
    """Sleep until Redis's clock is ``at`` seconds into a window: the nearest one ahead, or
    the ``next``-th window after the current one."""
    into = await redis_time(url) % period
    await asyncio.sleep(ahead * period - into + at if ahead else (at - into) % period)


def test_a_missing_redis_server_fails_and_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(pytest.fail.Exception, match="apt-get install redis-server"):
        redis_binary()


def test_n_plus_b_are_allowed_then_refused_as_proto_ratelimit_decides(
    server: RedisServer,
) -> None:
    rate = Rate(5, LONG, burst=2)

    async def body(store: RedisCounters) -> None:
        counted = [await store.count(b"client-a", rate) for _ in range(9)]
        assert [c.allowed for c in counted] == [True] * 7 + [False] * 2
        assert [c.current for c in counted] == [0, 1, 2, 3, 4, 5, 6, 7, 7]
        assert {c.previous for c in counted} == {0}
        for c in counted:
            d = decide(rate, c.current, c.previous, c.elapsed)
            assert d.allowed == c.allowed
            assert 0 <= c.elapsed_us < LONG * 1e6

        # hit() is the same round trip turned into a Decision by proto.ratelimit.decide.
        decisions = [await store.hit(b"client-b", rate) for _ in range(8)]
        assert [d.allowed for d in decisions] == [True] * 7 + [False]
        assert [d.remaining for d in decisions] == [6, 5, 4, 3, 2, 1, 0, 0]
        refused = decisions[-1]
        assert refused.retry_after > 0
        after = await store.count(b"client-b", rate)  # refused: nothing counted, same window
        assert not after.allowed and after.current == 7
        expected = decide(rate, after.current, after.previous, after.elapsed)
        assert refused.retry_after == pytest.approx(expected.retry_after, abs=1.0)
        assert refused.reset == pytest.approx(expected.reset, abs=1.0)

    run(server.url, body)


def test_keys_are_binary_safe_and_distinct(server: RedisServer) -> None:
    rate = Rate(1, LONG)

    async def body(store: RedisCounters) -> list[bool]:
        keys = [b"k\x00\xff:1", b"k\x00\xff:2", b"k\x00\xff", b"\r\n*1\r\n"]
        return [(await store.hit(k, rate)).allowed for k in keys + keys]

    assert run(server.url, body) == [True] * 4 + [False] * 4


def test_two_instances_share_one_budget(server: RedisServer) -> None:
    rate = Rate(20, LONG, burst=5)

    async def body() -> list[bool]:
        one = RedisCounters(server.url, timeout=ANSWER_TIMEOUT)
        two = RedisCounters(server.url, timeout=ANSWER_TIMEOUT)
        try:
            # Sequential, alternating, then concurrent: the script is atomic either way.
            first = [await (one if i % 2 else two).hit(b"shared", rate) for i in range(10)]
            rest = await asyncio.gather(
                *((one if i % 2 else two).hit(b"shared", rate) for i in range(40))
            )
            return [d.allowed for d in [*first, *rest]]
        finally:
            await one.close()
            await two.close()

    allowed = asyncio.run(body())
    assert allowed[:10] == [True] * 10
    assert sum(allowed) == 25


def test_the_previous_window_decays(server: RedisServer) -> None:
    rate = Rate(4, 1.0)

    async def body(store: RedisCounters) -> None:
        # Spend all 4 early in a window, then come back 0.62 s into the next one: the 4
        # count as 4 * (1 - 0.62) = 1.52, so 2 more fit (j + 1.52 + 1 ≤ 4 for j = 0, 1).
        await wait_for_window_position(server.url, 1.0, 0.05)
        spent = [await store.count(b"decay", rate) for _ in range(5)]
        assert [c.allowed for c in spent] == [True] * 4 + [False]
        await wait_for_window_position(server.url, 1.0, 0.62, ahead=1)
        later = [await store.count(b"decay", rate) for _ in range(3)]
        assert [c.previous for c in later] == [4, 4, 4]
        assert [c.current for c in later] == [0, 1, 2]
        assert [c.allowed for c in later] == [True, True, False]
        for c in later:
            assert 0.55 < c.elapsed < 0.75
            assert decide(rate, c.current, c.previous, c.elapsed).allowed == c.allowed
        # Two windows on, nothing of the first is left: the whole budget again.
        await wait_for_window_position(server.url, 1.0, 0.05, ahead=2)
        fresh = [await store.count(b"decay", rate) for _ in range(5)]
        assert fresh[0].previous == 0 and fresh[0].current == 0
        assert [c.allowed for c in fresh] == [True] * 4 + [False]

    run(server.url, body)


def test_the_script_and_proto_ratelimit_agree_at_every_boundary(server: RedisServer) -> None:
    # Windows of 0.03 s (not a binary fraction) hammered for ~1 s: many windows, estimates
    # landing at every distance from the ceiling. The script's answer must be decide()'s.
    rate = Rate(3, 0.03, burst=1)

    async def body(store: RedisCounters) -> tuple[int, int]:
        allowed = refused = 0
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            c = await store.count(b"boundary", rate)
            assert decide(rate, c.current, c.previous, c.elapsed).allowed == c.allowed, c
            assert c.elapsed_us < 30_000
            allowed, refused = allowed + c.allowed, refused + (not c.allowed)
        return allowed, refused

    allowed, refused = run(server.url, body)
    assert allowed > 50 and refused > 50


def test_counters_expire(server: RedisServer) -> None:
    rate = Rate(5, 0.1)

    async def body(store: RedisCounters) -> None:
        client = redis.asyncio.Redis.from_url(server.url)
        try:
            await store.hit(b"expiring", rate)
            keys = await client.keys(b"revproxy:rl:expiring:*")
            assert len(keys) == 1
            key = keys[0]
            assert isinstance(key, bytes)
            index = int(key.rsplit(b":", 1)[1])
            assert abs(index - int(await redis_time(server.url) / 0.1)) <= 1
            ttl = await client.pttl(key)
            assert 0 < ttl <= 2 * 100 + redis_store.EXPIRE_MARGIN_MS
            deadline = time.monotonic() + 5.0
            while await client.exists(key) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert not await client.exists(key)
            assert await client.keys(b"revproxy:rl:expiring:*") == []
        finally:
            await client.aclose()

    run(server.url, body)


def test_a_flushed_script_is_loaded_again(server: RedisServer) -> None:
    rate = Rate(3, LONG)

    async def body(store: RedisCounters) -> list[bool]:
        client = redis.asyncio.Redis.from_url(server.url)
        try:
            first = await store.hit(b"flush", rate)
            await client.script_flush()
            assert await client.script_exists(store._script.sha) == [False]
            second = await store.hit(b"flush", rate)
            assert await client.script_exists(store._script.sha) == [True]
            return [first.allowed, second.allowed, (await store.hit(b"flush", rate)).allowed]
        finally:
            await client.aclose()

    assert run(server.url, body) == [True, True, True]


def test_a_bad_url_or_a_closed_port_is_a_store_error(server: RedisServer) -> None:
    with pytest.raises(StoreError):
        RedisCounters("http://127.0.0.1:1/")

    async def body(store: RedisCounters) -> float:
        start = time.monotonic()
        with pytest.raises(StoreError, match="ConnectionError"):
            await store.hit(b"x", Rate(1, 1.0))
        return time.monotonic() - start

    # Port 1 on loopback: refused at once, not after the store's timeout (5 s here).
    assert run("redis://127.0.0.1:1/0", body) < ANSWER_TIMEOUT / 2

    async def secret(store: RedisCounters) -> str:
        with pytest.raises(StoreError) as caught:
            await store.hit(b"x", Rate(1, 1.0))
        return str(caught.value)

    # Errors are logged: they name the server, never its password.
    message = run("redis://user:hunter2@127.0.0.1:1/0?password=hunter3", secret)
    assert "127.0.0.1:1" in message
    assert "hunter" not in message


def test_a_killed_server_fails_fast_then_recovers(
    fresh_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_store, "BACKOFF_FIRST", 0.5)
    rate = Rate(1000, LONG)
    timeout = 0.25

    async def body(store: RedisCounters) -> None:
        assert (await store.hit(b"k", rate)).allowed  # a pooled connection now exists
        fresh_server.stop(signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(StoreError):
            await store.hit(b"k", rate)
        assert time.monotonic() - start < timeout + 0.1
        # During the back-off: at once, without a connect.
        for _ in range(20):
            start = time.monotonic()
            with pytest.raises(StoreError, match="unavailable"):
                await store.hit(b"k", rate)
            assert time.monotonic() - start < 0.005
        fresh_server.start()  # the same port
        deadline = time.monotonic() + 5.0
        while True:
            try:
                decision = await store.hit(b"k", rate)
                break
            except StoreError:
                assert time.monotonic() < deadline, "no recovery within 5 s"
                await asyncio.sleep(0.05)
        assert decision.allowed
        assert decision.remaining == 999  # a new server: the counters went with the old one
        assert store._backoff == 0.0

    run(fresh_server.url, body, timeout=timeout)


def test_a_hung_server_times_out_and_the_back_off_doubles(
    fresh_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_store, "BACKOFF_FIRST", 0.3)
    monkeypatch.setattr(redis_store, "BACKOFF_MAX", 0.5)
    rate = Rate(1000, LONG)
    timeout = 0.2

    async def failing_hit(store: RedisCounters) -> float:
        start = time.monotonic()
        with pytest.raises(StoreError):
            await store.hit(b"k", rate)
        return time.monotonic() - start

    async def body(store: RedisCounters) -> None:
        assert (await store.hit(b"k", rate)).allowed
        fresh_server.pause()
        try:
            took = await failing_hit(store)
            assert timeout - 0.02 < took < timeout + 0.15  # the whole call is bounded
            assert store._backoff == 0.3
            assert await failing_hit(store) < 0.005
            await asyncio.sleep(0.35)
            # One probe at a time after the back-off: the others fail at once meanwhile.
            probe = asyncio.ensure_future(failing_hit(store))
            await asyncio.sleep(0.02)
            assert await failing_hit(store) < 0.005
            assert await probe > timeout - 0.02
            assert store._backoff == 0.5  # 0.6, capped
            await asyncio.sleep(0.55)
            await failing_hit(store)
            assert store._backoff == 0.5
        finally:
            fresh_server.resume()
        await asyncio.sleep(0.55)
        assert (await store.hit(b"k", rate)).allowed
        assert store._backoff == 0.0

    run(fresh_server.url, body, timeout=timeout)
