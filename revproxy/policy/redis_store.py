"""Rate-limit counters kept in Redis (or Valkey), so several instances share one budget.

Rule of this room: Redis keeps the counters and the clock, ``proto/ratelimit.py`` keeps the
arithmetic. One decision is one round trip: EVALSHA of one Lua script, atomic on the server.

The algorithm is the one of ``proto.ratelimit`` (``rate = "N/T"``, ``burst = B``): windows of
length T aligned on multiples of T of the clock, a count per window, and a request allowed
while ``current + previous * (1 - elapsed / T) + 1 ≤ N + B``. The script

- reads the clock from Redis ``TIME`` (µs), so instances on different machines agree on the
  windows whatever their own clocks say; the window index is ``floor(now_µs / T_µs)``, computed
  exactly in integers below 2^53 (Lua numbers are doubles);
- reads the counters of this window and the one before (one MGET) from the keys
  ``<prefix><key>:<index>`` (binary-safe: the key is passed as bytes, the index in decimal);
- decides with exactly the float operations of ``proto.ratelimit.sliding``/``decide``, in the
  same order, so both sides reach the same answer bit for bit;
- when allowed, INCRs this window's counter and sets its expiry to 2T + 1 s (the counter is
  read as "previous" during the next window, and then never again): nothing stays in Redis;
- returns whether it counted, the current and previous counters before this request and the
  time into the window in µs (integers: Redis truncates Lua numbers to integers). The Python
  side builds the ``Decision`` with ``proto.ratelimit.decide`` so ``remaining``,
  ``retry_after`` and ``reset`` are computed in one place for every store.

Failures: any failure — connection refused, no answer within ``timeout`` seconds for the whole
call, a Redis error — raises ``StoreError``, and nothing else escapes. After a failure the
store is "down" for a back-off (1 s, doubling to 10 s): calls then raise ``StoreError`` at once
instead of each request waiting for a connect timeout; when the back-off is over, one call
probes Redis (the others keep failing fast) and the first success clears it. What a refusal to
decide means (``on_store_error = "allow" | "deny"``), and its logging and metrics, are the
caller's (``policy/limits.py``).

The window keys are built inside the script, so they are not declared in KEYS: this holds for a
single Redis or Valkey server (and its replicas), not for a Redis Cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from revproxy.proto.ratelimit import Decision, Rate, decide

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["Counted", "RedisCounters", "StoreError"]

# A failed store is not asked again before this long; doubled per failed probe, up to the cap.
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 10.0
# A window's counter is read until its next window ends, at most 2T after its first write;
# this margin (ms) keeps it from vanishing at that edge whatever the rounding.
EXPIRE_MARGIN_MS = 1000

# KEYS[1]: <prefix><key>:   ARGV: T in µs, T as the float text Python gives, N + B, expiry (ms).
# Returns {counted (0/1), current, previous, elapsed µs}.
_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local period_us = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local ceiling = tonumber(ARGV[3])
local elapsed_us = math.fmod(now, period_us)
local index = (now - elapsed_us) / period_us
local here = KEYS[1] .. string.format('%d', index)
local got = redis.call('MGET', here, KEYS[1] .. string.format('%d', index - 1))
local current = tonumber(got[1]) or 0
local previous = tonumber(got[2]) or 0
local elapsed = elapsed_us / 1e6
if elapsed > period then elapsed = period end
local count = current + previous * (1.0 - elapsed / period)
if count + 1 <= ceiling then
  redis.call('INCR', here)
  redis.call('PEXPIRE', here, ARGV[4])
  return {1, current, previous, elapsed_us}
end
return {0, current, previous, elapsed_us}
"""


class StoreError(Exception):
    """The counters could not be read or written (Redis down, slow or refusing): no decision
    was made. The caller applies ``on_store_error``."""


@dataclass(frozen=True, slots=True)
class Counted:
    """One round trip's answer: whether the script counted the request, and the counters of
    all instances it decided from (``current`` before this request)."""

    allowed: bool
    current: int
    previous: int
    elapsed_us: int  # µs since the window began, by Redis's clock

    @property
    def elapsed(self) -> float:
        """Seconds, as ``proto.ratelimit.decide`` takes them (the script divides alike)."""
        return self.elapsed_us / 1e6


class RedisCounters:
    """The counters of every limit that names one ``store = "redis://…"`` URL.

    ``key`` is the caller's: it must name the limit as well as the client (two limits with the
    same period would otherwise share counters).
    """

    def __init__(self, url: str, *, timeout: float = 0.25, prefix: bytes = b"revproxy:rl:") -> None:
        self.url = _without_credentials(url)  # what errors name (they are logged)
        self.timeout = timeout
        self.prefix = prefix
        # Imported here, not with the module: an instance without a Redis store never loads
        # the client (about 10 MiB of resident memory per process).
        import redis.asyncio
        import redis.exceptions
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self._redis_error: type[Exception] = redis.exceptions.RedisError
        try:
            # Lazy: no connection is opened before the first ``hit``. A connection that broke
            # while idle in the pool (Redis restarted) is replaced once, at once (should the
            # script have run before the connection broke, one request is counted twice: a
            # limit errs on the strict side); otherwise nothing is retried within a call: the
            # back-off below takes over.
            self._redis: redis.asyncio.Redis = redis.asyncio.Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 1, (redis.exceptions.ConnectionError,)),
                retry_on_timeout=False,
                decode_responses=False,
            )
        except (ValueError, redis.exceptions.RedisError) as exc:
            raise StoreError(f"{self.url}: not a Redis URL ({exc})") from exc
        self._script = self._redis.register_script(_SCRIPT)
        self._down_until = 0.0  # time.monotonic() before which calls fail fast
        self._backoff = 0.0  # the last back-off (0: Redis answered last time)
        self._probing = False  # a call is testing Redis after a back-off

    async def hit(self, key: bytes, rate: Rate) -> Decision:
        """Decide one request of ``key`` under ``rate`` and count it when allowed.

        Raises ``StoreError`` when Redis cannot decide (within ``timeout`` seconds, or at once
        during a back-off)."""
        counted = await self.count(key, rate)
        decision = decide(rate, counted.current, counted.previous, counted.elapsed)
        if decision.allowed != counted.allowed:  # cannot be: both compute the same doubles
            raise StoreError(f"{self.url}: the script and proto.ratelimit disagree")
        return decision

    async def count(self, key: bytes, rate: Rate) -> Counted:
        """The round trip behind ``hit``: what the script decided and counted, and the
        counters it decided from (``hit`` turns them into a ``Decision``)."""
        probe = False
        if self._backoff:
            now = time.monotonic()
            if now < self._down_until or self._probing:
                raise StoreError(
                    f"{self.url}: unavailable, next try in {max(self._down_until - now, 0):.1f} s"
                )
            self._probing = probe = True
        try:
            async with asyncio.timeout(self.timeout):
                reply = await self._script(keys=[self.prefix + key + b":"], args=_args(rate))
            counted = _counted(reply)
        except (self._redis_error, OSError, TimeoutError, StoreError) as exc:
            self._failed()
            if isinstance(exc, StoreError):
                raise StoreError(f"{self.url}: {exc}") from exc
            raise StoreError(f"{self.url}: {_describe(exc, self._redis_error)}") from exc
        finally:
            if probe:
                self._probing = False
        self._backoff = 0.0
        return counted

    async def close(self) -> None:
        """Close the connections (the pool is this object's own)."""
        with contextlib.suppress(self._redis_error, OSError):
            await self._redis.aclose()

    def _failed(self) -> None:
        self._backoff = min(self._backoff * 2, BACKOFF_MAX) if self._backoff else BACKOFF_FIRST
        self._down_until = time.monotonic() + self._backoff


def _args(rate: Rate) -> tuple[int, str, int, int]:
    """The script's ARGV for ``rate``: T in µs (window alignment), T as the exact float text
    (``repr`` round-trips, and Lua's ``tonumber`` reads it back to the same double), N + B,
    and the expiry in ms."""
    period_us = max(round(rate.period * 1e6), 1)
    expire_ms = 2 * -(-period_us // 1000) + EXPIRE_MARGIN_MS
    return period_us, repr(float(rate.period)), rate.ceiling, expire_ms


def _counted(reply: Any) -> Counted:
    """The script's reply, checked."""
    if (
        not isinstance(reply, list)
        or len(reply) != 4
        or not all(isinstance(v, int) and v >= 0 for v in reply)
    ):
        raise StoreError(f"unexpected reply from the rate-limit script: {reply!r:.80}")
    counted, current, previous, elapsed_us = reply
    return Counted(bool(counted), current, previous, elapsed_us)


def _without_credentials(url: str) -> str:
    """``redis://user:secret@host:6379/0?password=x`` → ``redis://host:6379/0``."""
    scheme, sep, rest = url.partition("?")[0].partition("://")
    authority, slash, path = rest.partition("/")
    return f"{scheme}{sep}{authority.rpartition('@')[2]}{slash}{path}"


def _describe(exc: BaseException, redis_error: type[Exception]) -> str:
    if isinstance(exc, TimeoutError) and not isinstance(exc, redis_error):
        return "no answer in time"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
