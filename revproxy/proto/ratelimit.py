"""Rate limits: ``rate = "N/T"`` with ``burst = B``, decided from a key's counters and the time.

Rule of this room: pure. A limit's state for one key is two counters (the requests of the
current window of length T and of the one before it) and which window that is; the
caller keeps them (a dict per process, a shared table across workers, or Redis across
instances) and passes the time in. The same arithmetic is used everywhere a limit is kept, so a
limit means the same whatever its store.

What ``rate = "N/T"`` means (as HAProxy's ``http_req_rate(T)``): at most N requests in any
window of length T, counted over a sliding window that is approximated from two fixed ones —
the current window's count plus the previous window's count weighted by the share of the
previous window that still lies within the last T seconds (windows are aligned on multiples
of T of the store's clock, so several writers agree on them):

    estimate = current + previous * (1 - elapsed / T)

A request is allowed while ``estimate + 1 ≤ N + B``. A fresh client may spend all N (and the B
of ``burst``) at once. The approximation counts evenly spread requests exactly; it assumes the
previous window's requests were spread over it, so a client that sent them all at the very end
of that window is credited early: in the worst case a T-long span straddling two windows holds
up to about 2 * (N + B) allowed requests, while any single window holds at most N + B. This is
the trade HAProxy's stick tables make (two counters per key instead of a log of timestamps).
Refused requests are not counted, so a client that keeps hammering is let in again as soon as
its earlier requests age out. ``retry_after`` is the time until one more request would
be allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rate:
    """``N/T`` and the burst allowed on top."""

    requests: int  # N
    period: float  # T, seconds
    burst: int = 0  # B

    @property
    def ceiling(self) -> int:
        """Requests allowed in a window: N + B."""
        return self.requests + self.burst


@dataclass(slots=True)
class Window:
    """One key's counters (what a store keeps per key)."""

    index: int = 0  # which window of length T the counters belong to: floor(now / T)
    current: int = 0  # requests allowed in that window
    previous: int = 0  # requests allowed in the window before it


@dataclass(slots=True)  # not frozen: built once per request, and frozen costs 3x to build
class Decision:
    allowed: bool
    remaining: int  # requests still allowed now (after this one)
    retry_after: float  # seconds until one more request would be allowed (0 when allowed)
    reset: float  # seconds until the estimate has fully decayed (RateLimit-Reset)


def window_index(rate: Rate, now: float) -> int:
    """The window holding ``now``: windows are aligned on multiples of T of the clock, so
    every process reading the same clock (workers: CLOCK_MONOTONIC; Redis: its TIME) agrees
    on where a window begins without telling each other."""
    return int(now // rate.period)


def shifted(rate: Rate, window: Window, now: float) -> tuple[int, int]:
    """``(current, previous)`` of ``window`` as seen from the window holding ``now``, without
    changing it (a store reading other writers' counters)."""
    passed = window_index(rate, now) - window.index
    if passed <= 0:  # the same window (or a clock behind the writer's): as it is
        return window.current, window.previous
    if passed == 1:
        return 0, window.current
    return 0, 0


def advance(rate: Rate, window: Window, now: float) -> None:
    """Move ``window`` to the window holding ``now`` (one back becomes ``previous``; more
    leave nothing). A clock that went back keeps what is there."""
    index = window_index(rate, now)
    if index <= window.index:
        return
    window.current, window.previous = shifted(rate, window, now)
    window.index = index


def elapsed_in_window(rate: Rate, now: float) -> float:
    """Seconds since the window holding ``now`` began."""
    return now - window_index(rate, now) * rate.period


def estimate(rate: Rate, window: Window, now: float) -> float:
    """The sliding-window count at ``now``."""
    current, previous = shifted(rate, window, now)
    return sliding(rate, current, previous, elapsed_in_window(rate, now))


def sliding(rate: Rate, current: int, previous: int, elapsed: float) -> float:
    """``current + previous * (1 - elapsed / T)``, ``elapsed`` clamped to the window."""
    elapsed = min(max(elapsed, 0.0), rate.period)
    return current + previous * (1.0 - elapsed / rate.period)


def decide(rate: Rate, current: int, previous: int, elapsed: float) -> Decision:
    """Decide one request from the counters of the window holding it (all writers' summed)
    and how far into that window it is. ``current`` does not include the request; when the
    answer is "allowed" the caller counts it."""
    count = sliding(rate, current, previous, elapsed)
    ceiling = rate.ceiling
    if count + 1 <= ceiling:
        return Decision(
            True, int(ceiling - count - 1), 0.0, _reset(rate, current + 1, previous, elapsed)
        )
    return Decision(
        False,
        0,
        retry_after(rate, current, previous, elapsed),
        _reset(rate, current, previous, elapsed),
    )


def hit(rate: Rate, window: Window, now: float) -> Decision:
    """Decide one request at ``now`` against one writer's counters and count it when
    allowed. (``advance`` + ``decide`` written out: this runs for every request a limit
    counts, and the allowed case is the common one.)"""
    period = rate.period
    index = int(now // period)
    passed = index - window.index
    if passed > 0:
        window.previous = window.current if passed == 1 else 0
        window.current = 0
        window.index = index
    elapsed = now - index * period
    current, previous = window.current, window.previous
    count = current + previous * (1.0 - elapsed / period) if previous else current
    ceiling = rate.requests + rate.burst
    if count + 1 <= ceiling:
        window.current = current + 1
        return Decision(True, int(ceiling - count - 1), 0.0, (period - elapsed) + period)
    return decide(rate, current, previous, elapsed)


def retry_after(rate: Rate, current: int, previous: int, elapsed: float) -> float:
    """Seconds until ``estimate + 1 ≤ N + B`` holds again, from the counters of the window
    ``elapsed`` seconds old."""
    room = rate.ceiling - 1  # the estimate must fall to this
    period = rate.period
    elapsed = min(max(elapsed, 0.0), period)
    # Within this window only the previous window's share decays.
    if current <= room and previous > 0:
        # current + previous * (1 - e/T) ≤ room  ⇔  e ≥ T * (1 - (room - current)/previous)
        needed = period * (1.0 - (room - current) / previous)
        if needed <= period:
            return max(needed - elapsed, 0.0)
    if current <= room:
        return max(period - elapsed, 0.0) if previous else 0.0
    # The next window: ``current`` becomes the previous one and decays from its start.
    needed = period * (1.0 - room / current) if current else 0.0
    return (period - elapsed) + max(needed, 0.0)


def _reset(rate: Rate, current: int, previous: int, elapsed: float) -> float:
    """Seconds until nothing of what was counted is left in the estimate."""
    elapsed = min(max(elapsed, 0.0), rate.period)
    if current:
        return (rate.period - elapsed) + rate.period
    if previous:
        return rate.period - elapsed
    return 0.0


def parse_rate(text: str) -> tuple[int, float]:
    """``"100/10s"`` → (100, 10.0); ``"5/s"``, ``"300/m"``, ``"1000/1h"``. ValueError with the
    reason otherwise (the configuration puts the key path in front)."""
    count, sep, span = text.partition("/")
    if not sep or not count.strip().isdigit():
        raise ValueError(f'"{text}": write requests/period, e.g. "100/10s"')
    n = int(count)
    if n < 1:
        raise ValueError(f'"{text}": at least 1 request per period')
    span = span.strip()
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    for unit in ("ms", "s", "m", "h", "d"):
        if span.endswith(unit):
            number = span[: -len(unit)] or "1"
            try:
                seconds = float(number) * units[unit]
            except ValueError:
                break
            if not math.isfinite(seconds) or seconds <= 0:
                break
            return n, seconds
    raise ValueError(f'"{text}": the period is a duration like "10s", "1m" or "1h"')
