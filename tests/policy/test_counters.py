"""The counters limits are kept in (policy/counters.py): one process's dicts, and the table
the workers of one instance share (several views over one memfd stand for several workers)."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import struct
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from revproxy.policy.counters import (
    Counters,
    LocalCounters,
    SharedCounters,
    create_region,
    region_size,
    region_slots,
)
from revproxy.proto.ratelimit import Rate, Window, hit

T0 = 1_000_000.0  # a clock far from 0, like time.monotonic() on a machine that is up
KEY = b"api\x00100/10s+20\x00203.0.113.7"
RATES = [Rate(3, 1.0, 1), Rate(5, 2.0), Rate(2, 0.5, 2)]


@pytest.fixture
def region() -> Iterator[int]:
    fd = create_region(4, rate_cells=64, concurrent_cells=64)
    yield fd
    os.close(fd)


def views(fd: int, workers: int) -> list[SharedCounters]:
    return [SharedCounters(fd, slot, workers) for slot in range(workers)]


def key(i: int) -> bytes:
    return b"lim\x00%d" % i


# --- the layout, bytes level


def test_the_region_has_a_header_and_a_page_aligned_sub_table_per_slot() -> None:
    fd = create_region(3, rate_cells=16, concurrent_cells=8)
    try:
        assert os.fstat(fd).st_size == region_size(3, 16, 8) == 4096 + 3 * 4096
        assert os.pread(fd, 20, 0) == struct.pack("<8sIII", b"rpcount1", 3, 16, 8)
        assert region_slots(fd) == 3
        assert os.pread(fd, 3 * 4096, 4096) == bytes(3 * 4096)
    finally:
        os.close(fd)
    sized = create_region(64)
    try:  # the default: 16384 + 16384 cells, 768 KiB per slot
        assert os.fstat(sized).st_size == 4096 + 64 * 768 * 1024
    finally:
        os.close(sized)


def test_a_hit_writes_one_cell_of_the_own_sub_table(region: int) -> None:
    a, b = views(region, 2)
    rate = Rate(10, 10.0)
    assert a.hit(KEY, rate, T0 + 3.0).allowed
    assert b.hit(KEY, rate, T0 + 4.0).allowed
    assert b.hit(KEY, rate, T0 + 4.5).allowed
    digest = hashlib.blake2b(KEY, digest_size=8).digest()
    bucket = int.from_bytes(digest, "little") % (64 // 8)
    index = int((T0 + 3.0) // 10.0)
    for slot, count in ((0, 1), (1, 2)):
        at = 4096 + slot * 4096 + bucket * 256
        raw = os.pread(region, 256, at)
        cell = raw[:64].find(digest) // 8
        assert raw[:64].count(bytes(8)) == 7  # one cell taken, seven empty
        body = struct.unpack_from("<qIId", raw, 64 + cell * 24)
        assert body == (index, count, 0, (index + 2) * 10.0)
    assert b.concurrent(KEY) == 0


def test_a_cell_written_by_another_worker_counts(region: int) -> None:
    """A cell put in slot 1 by hand (as another process would) is read by slot 0."""
    (a,) = views(region, 1)
    a.set_workers(2)
    rate = Rate(4, 1.0)
    digest = hashlib.blake2b(KEY, digest_size=8).digest()
    bucket = int.from_bytes(digest, "little") % 8
    index = int(T0 // 1.0)
    at = 4096 + 4096 + bucket * 256  # slot 1, the key's bucket, cell 5
    os.pwrite(region, struct.pack("<qIId", index, 3, 0, (index + 2) * 1.0), at + 64 + 5 * 24)
    os.pwrite(region, digest, at + 5 * 8)
    assert a.hit(KEY, rate, T0 + 0.1).allowed
    assert not a.hit(KEY, rate, T0 + 0.2).allowed  # 3 there + 1 here = N
    a.set_workers(1)  # slot 1 is no worker now: not read
    assert a.hit(KEY, rate, T0 + 0.3).allowed


# --- one writer decides as proto.ratelimit.hit


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 2), st.floats(0.0, 1.2)), max_size=120))
def test_one_writer_decides_as_the_arithmetic(steps: list[tuple[int, int, float]]) -> None:
    fd = create_region(1, rate_cells=64, concurrent_cells=8)
    shared = SharedCounters(fd, 0, 1)
    os.close(fd)
    local: Counters = LocalCounters()
    reference: dict[tuple[int, int], Window] = {}
    now = T0
    for who, which, gap in steps:
        now += gap
        rate = RATES[which]
        lim = key(who * 10 + which)
        expected = hit(rate, reference.setdefault((who, which), Window()), now)
        assert local.hit(lim, rate, now) == expected
        assert shared.hit(lim, rate, now) == expected
    shared.close()


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 4),
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2), st.floats(0.0, 1.5)), max_size=150),
)
def test_several_workers_allow_what_one_would(
    workers: int, steps: list[tuple[int, int, float]]
) -> None:
    """Views over one region, each writing its own slot, allow exactly what one writer with
    one window per key would (proto's test_several_writers_decide_as_one, in memory)."""
    fd = create_region(4, rate_cells=64, concurrent_cells=8)
    everyone = views(fd, workers)
    os.close(fd)
    reference: dict[int, Window] = {}
    now = T0
    for who, which, gap in steps:
        now += gap
        rate = RATES[which]
        expected = hit(rate, reference.setdefault(which, Window()), now)
        assert everyone[who % workers].hit(key(which), rate, now) == expected
    for view in everyone:
        view.close()


def test_two_workers_together_allow_the_ceiling(region: int) -> None:
    a, b = views(region, 2)
    rate = Rate(10, 60.0, burst=5)
    allowed = sum(view.hit(KEY, rate, T0 + i * 0.01).allowed for i in range(40) for view in (a, b))
    assert allowed == 15
    assert a.hit(KEY, rate, T0 + 120.0).allowed  # two windows later nothing is left


# --- eviction


def test_a_full_bucket_gives_up_the_cell_expiring_first() -> None:
    fd = create_region(1, rate_cells=8, concurrent_cells=8)  # one bucket of 8 cells
    (c,) = views(fd, 1)
    os.close(fd)
    long, short = Rate(2, 100.0), Rate(2, 1.0)
    now = T0 + 0.5
    for i in range(7):
        assert c.hit(key(i), long, now).remaining == 1
    assert c.hit(key(7), short, now).remaining == 1
    # Full: the short window (stale two seconds from now) is given up for a new key.
    assert c.hit(key(8), long, now).remaining == 1
    assert c.hit(key(7), short, now).remaining == 1  # forgotten: counted afresh
    # That took the cell expiring first again: key 0's (the long windows tie; first wins).
    assert c.hit(key(0), long, now).remaining == 1
    assert c.hit(key(1), long, now).remaining == 0  # the others kept their counts
    # Once expired, a cell is taken before any live one.
    later = now + 250.0
    assert c.hit(key(9), short, later).remaining == 1
    c.close()


def test_an_expired_cell_is_reused_before_a_live_one_is_given_up() -> None:
    fd = create_region(1, rate_cells=8, concurrent_cells=8)
    (c,) = views(fd, 1)
    os.close(fd)
    long, short = Rate(3, 100.0), Rate(3, 1.0)
    now = T0 + 0.5
    c.hit(key(0), short, now)
    for i in range(1, 8):
        c.hit(key(i), long, now)
    now += 3.0  # key 0's window is worth nothing now
    assert c.hit(key(8), short, now).remaining == 2
    for i in range(1, 8):  # every live key kept its count
        assert c.hit(key(i), long, now).remaining == 1
    c.close()


def test_a_full_concurrent_bucket_gives_up_a_closed_cell_then_the_fewest() -> None:
    fd = create_region(1, rate_cells=8, concurrent_cells=8)
    (c,) = views(fd, 1)
    os.close(fd)
    for i in range(8):
        for _ in range(i + 1):
            assert c.acquire(key(i), 100)
    c.release(key(0))  # closed: its cell is free
    assert c.acquire(key(8), 100)
    assert [c.concurrent(key(i)) for i in range(9)] == [0, 2, 3, 4, 5, 6, 7, 8, 1]
    assert c.acquire(key(9), 100)  # full: the fewest open (key 8's one) is given up
    assert c.concurrent(key(8)) == 0 and c.concurrent(key(9)) == 1
    c.release(key(8))  # its cell went to another key: nothing to take back
    assert c.concurrent(key(9)) == 1
    c.close()


# --- concurrent connections


def test_acquire_and_release_count_for_the_instance(region: int) -> None:
    a, b, c = views(region, 3)
    assert all(a.acquire(KEY, 5) for _ in range(3))
    assert b.acquire(KEY, 5) and c.acquire(KEY, 5)
    assert not a.acquire(KEY, 5) and not b.acquire(KEY, 5)  # nothing counted
    assert a.concurrent(KEY) == b.concurrent(KEY) == c.concurrent(KEY) == 5
    b.release(KEY)
    assert c.acquire(KEY, 5)
    assert a.concurrent(KEY) == 5
    for _ in range(5):
        c.release(KEY)  # never below 0: c held two
    assert a.concurrent(KEY) == 3
    a.release(b"never acquired")
    assert a.concurrent(b"never acquired") == 0


def test_local_acquire_and_release() -> None:
    c = LocalCounters()
    assert c.acquire(KEY, 2) and c.acquire(KEY, 2) and not c.acquire(KEY, 2)
    assert c.concurrent(KEY) == 2
    c.release(KEY)
    c.release(KEY)
    c.release(KEY)
    assert c.concurrent(KEY) == 0 and len(c) == 0  # a zero count is dropped


def test_a_reattached_worker_starts_from_nothing(region: int) -> None:
    a, b = views(region, 2)
    rate = Rate(3, 60.0)
    for _ in range(2):
        assert a.acquire(KEY, 10) and a.hit(KEY, rate, T0).allowed
    assert b.concurrent(KEY) == 2
    assert not (b.hit(KEY, rate, T0).allowed and b.hit(KEY, rate, T0).allowed)
    a.close()
    SharedCounters(region, 0, 2).close()  # slot 0's worker restarted
    assert b.concurrent(KEY) == 0
    assert b.hit(KEY, rate, T0).allowed and b.hit(KEY, rate, T0).allowed  # 1 of b + 2 new


def test_reattach_moves_to_a_new_region(region: int) -> None:
    a, b = views(region, 2)
    assert a.acquire(KEY, 10)
    bigger = create_region(8, rate_cells=64, concurrent_cells=64)
    try:
        a.reattach(bigger)
        b.reattach(bigger)
        a.set_workers(6)
        assert (a.slots, a.workers) == (8, 6)
        assert a.region == os.fstat(bigger).st_ino != os.fstat(region).st_ino
        assert b.concurrent(KEY) == 0 and b.acquire(KEY, 10) and a.concurrent(KEY) == 1
    finally:
        os.close(bigger)


def test_bad_regions_and_slots_are_refused(region: int) -> None:
    with pytest.raises(ValueError, match="slot 4"):
        SharedCounters(region, 4, 1)
    with pytest.raises(ValueError, match="multiple of 8"):
        create_region(1, rate_cells=12)
    other = os.memfd_create("x")
    try:
        os.ftruncate(other, 8192)
        with pytest.raises(ValueError, match="not a counters region"):
            SharedCounters(other, 0, 1)
    finally:
        os.close(other)


# --- bounded memory


def test_local_memory_is_bounded_whatever_the_addresses() -> None:
    """An attacker cycling through ten times as many source addresses as the table holds, in
    one window: the table never holds more than its cap, and the newest clients are kept."""
    cap = 50_000
    c = LocalCounters(max_entries=cap)
    rate = Rate(100, 10.0)
    started = time.monotonic()
    most = 0
    for i in range(10 * cap):
        c.hit(b"api\x00%d" % i, rate, T0)
        if not i % 1000:
            most = max(most, len(c))
            assert time.monotonic() - started < 60.0
    assert most <= cap and len(c) <= cap
    assert c.hit(b"api\x00%d" % (10 * cap - 1), rate, T0).remaining == 98  # kept
    assert c.hit(b"api\x00%d" % 0, rate, T0).remaining == 99  # evicted long ago


def test_local_sweeps_drop_expired_windows_and_are_amortised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    c = LocalCounters()
    sweeps = 0
    sweep = c._sweep

    def counted(now: float) -> None:
        nonlocal sweeps
        sweeps += 1
        sweep(now)

    monkeypatch.setattr(c, "_sweep", counted)
    rate = Rate(5, 1.0)
    # 100 new clients a second, each seen once: about 200 windows are alive at any time.
    for i in range(100_000):
        c.hit(key(i), rate, T0 + i / 100)
    assert len(c) <= 2048  # 2 seconds of clients, doubled at most, above SWEEP_AT_LEAST
    # A sweep leaves about 200 and the next comes at 1024: one per 800 new keys at most.
    assert sweeps <= 100_000 // 800 + 1


def test_local_windows_move_to_the_back_when_they_advance() -> None:
    c = LocalCounters(max_entries=8)
    rate = Rate(5, 100.0)
    for i in range(8):
        c.hit(key(i), rate, T0)
    c.hit(key(0), rate, T0 + 100.0)  # key 0 is busy in a newer window
    c.hit(key(8), rate, T0 + 100.0)  # full: the oldest eighth goes, key 1 (not key 0)
    assert c.hit(key(0), rate, T0 + 100.0).remaining == 2  # kept: 1 now + 1 before
    assert c.hit(key(1), rate, T0 + 100.0).remaining == 4  # evicted: a fresh window


# --- two real processes


def _hammer(fd: int, slot: int, rate: Rate, start: float, attempts: int, out: Connection) -> None:
    counters = SharedCounters(fd, slot, 2)
    while time.monotonic() < start:
        pass
    allowed = sum(counters.hit(KEY, rate, time.monotonic()).allowed for _ in range(attempts))
    out.send(allowed)
    out.close()


def _hammer_once(rate: Rate) -> list[int]:
    """Two processes hit one key of a fresh region at once; what each was allowed."""
    fd = create_region(2, rate_cells=64, concurrent_cells=64)
    ctx = multiprocessing.get_context("fork")
    start = time.monotonic() + 0.5
    pipes = [ctx.Pipe(duplex=False) for _ in range(2)]
    procs = [
        ctx.Process(target=_hammer, args=(fd, slot, rate, start, 3 * rate.ceiling, pipes[slot][1]))
        for slot in range(2)
    ]
    try:
        for p in procs:
            p.start()
        counts = [recv.recv() if recv.poll(60.0) else -1 for recv, _ in pipes]
    finally:
        for p in procs:
            p.join(10.0)
            if p.is_alive():
                p.kill()
        os.close(fd)
    assert all(p.exitcode == 0 for p in procs)
    return counts


def test_two_processes_hammering_one_key_allow_the_ceiling_once() -> None:
    rate = Rate(2000, 1e6, burst=200)  # one window for the whole test
    # On a loaded machine one process may be scheduled only after the other used the whole
    # ceiling: then the run tested one process, and it is run again (three times at most).
    for _ in range(3):
        counts = _hammer_once(rate)
        assert abs(sum(counts) - rate.ceiling) <= rate.ceiling // 10
        if min(counts) > 0:
            break
    assert min(counts) > 0  # both took part
    assert abs(sum(counts) - rate.ceiling) <= rate.ceiling // 10


@settings(max_examples=150, deadline=None)
@given(st.lists(st.floats(0.0, 0.7, allow_nan=False), max_size=120))
def test_allow_is_hit_allowed(gaps: list[float]) -> None:
    """``allow`` (the fast path every request takes) answers and counts as ``hit`` does."""
    rate = Rate(5, 1.0, 2)
    fast, slow = LocalCounters(), LocalCounters()
    now = 1000.0
    for gap in gaps:
        now += gap
        assert fast.allow(b"k", rate, now) == slow.hit(b"k", rate, now).allowed
    assert fast._windows[b"k"].current == slow._windows[b"k"].current if gaps else True
