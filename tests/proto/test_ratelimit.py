"""Rate limits (proto/ratelimit.py): the sliding-window estimate, Retry-After, rates."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from revproxy.proto.ratelimit import (
    Rate,
    Window,
    decide,
    elapsed_in_window,
    estimate,
    hit,
    parse_rate,
    shifted,
)

T0 = 1000.0


def test_a_fresh_client_may_spend_everything_at_once() -> None:
    rate, w = Rate(10, 10.0, burst=2), Window()
    decisions = [hit(rate, w, T0) for _ in range(13)]
    assert [d.allowed for d in decisions] == [True] * 12 + [False]
    assert [d.remaining for d in decisions[:3]] == [11, 10, 9]
    assert decisions[-1].retry_after == pytest.approx(10.0 + 10.0 * (1 - 11 / 12))


def test_the_previous_window_decays() -> None:
    rate, w = Rate(10, 10.0), Window()
    for _ in range(10):
        assert hit(rate, w, T0).allowed
    # Half way through the next window, half of the previous ten still count.
    assert estimate(rate, w, T0) == 10
    decisions = [hit(rate, w, T0 + 15.0) for _ in range(6)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    # Retry when previous * (1 - e/T) + 5 ≤ 9: e ≥ 6 s into the window, 1 s from now.
    assert decisions[-1].retry_after == pytest.approx(1.0)
    assert hit(rate, w, T0 + 16.0 + 1e-9).allowed


def test_refused_requests_are_not_counted() -> None:
    rate, w = Rate(2, 1.0), Window()
    assert hit(rate, w, T0).allowed and hit(rate, w, T0).allowed
    for i in range(100):
        assert not hit(rate, w, T0 + i * 0.001).allowed
    assert w.current == 2
    assert hit(rate, w, T0 + 2.0).allowed  # two windows later nothing is left


def test_retry_after_is_when_the_next_request_passes() -> None:
    rate, w = Rate(5, 2.0), Window()
    now = T0
    for step in range(300):
        d = hit(rate, w, now)
        if not d.allowed:
            assert d.retry_after > 0
            assert not hit(rate, w, now + d.retry_after * 0.98).allowed
            now += d.retry_after + 1e-9
            assert hit(rate, w, now).allowed
        now += 0.05 * (step % 7)


@settings(max_examples=300)
@given(
    st.integers(1, 20),
    st.integers(0, 5),
    st.lists(st.floats(0.0, 3.0, allow_nan=False), min_size=1, max_size=200),
)
def test_no_window_holds_more_than_its_ceiling(n: int, burst: int, gaps: list[float]) -> None:
    """Within one fixed window never more than N + B are allowed; across any T-long span,
    never more than twice that (the documented bound of the approximation)."""
    rate, w = Rate(n, 1.0, burst), Window()
    now, allowed = T0, []
    for gap in gaps:
        now += gap
        if hit(rate, w, now).allowed:
            allowed.append(now)
    # The limiter's windows are aligned on multiples of T of the clock.
    per_window: dict[int, int] = {}
    for t in allowed:
        key = int(t // 1.0)
        per_window[key] = per_window.get(key, 0) + 1
    assert max(per_window.values(), default=0) <= rate.ceiling
    for i, t in enumerate(allowed):
        span = sum(1 for u in allowed[i:] if u < t + 1.0)
        assert span <= 2 * rate.ceiling


@settings(max_examples=200)
@given(
    st.integers(1, 4),
    st.lists(st.tuples(st.integers(0, 3), st.floats(0.0, 1.5, allow_nan=False)), max_size=150),
)
def test_several_writers_decide_as_one(writers: int, steps: list[tuple[int, float]]) -> None:
    """Writers that each keep their own counters and decide on the sum of everyone's
    (the shared-memory store) allow exactly what one writer with one window would."""
    rate = Rate(7, 1.0, 2)
    cells = [Window() for _ in range(writers)]
    single = Window()
    now = T0
    for who, gap in steps:
        now += gap
        own = cells[who % writers]
        current = previous = 0
        for cell in cells:
            c, p = shifted(rate, cell, now)
            current, previous = current + c, previous + p
        together = decide(rate, current, previous, elapsed_in_window(rate, now))
        if together.allowed:
            c, p = shifted(rate, own, now)
            own.current, own.previous, own.index = c + 1, p, int(now // rate.period)
        assert together == hit(rate, single, now)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("100/10s", (100, 10.0)), ("5/s", (5, 1.0)), ("300/m", (300, 60.0)),
     ("1000/1h", (1000, 3600.0)), ("10/500ms", (10, 0.5)), ("1/1d", (1, 86400.0))],
)  # fmt: skip
def test_rates(text: str, parsed: tuple[int, float]) -> None:
    assert parse_rate(text) == parsed


@pytest.mark.parametrize("text", ["100", "x/10s", "0/10s", "10/", "10/0s", "10/-1s", "10/1w"])
def test_bad_rates(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rate(text)
