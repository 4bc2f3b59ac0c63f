"""The counters limits are kept in: one process's dicts, or one table shared by the workers.

Rule of this room: a store counts, ``proto/ratelimit.py`` decides. ``hit`` reads a key's
counters, asks ``decide`` and counts the request when it is allowed; ``acquire`` and
``release`` keep a key's concurrent connections. A key names its limit as well as its client
(the caller builds ``b"api\\x00100/10s+20\\x00203.0.113.7"``), so one table serves every limit
and a reload that keeps a limit keeps its counters. Memory is bounded whatever the clients do:
an attacker cycling source addresses evicts old entries, it never grows the table.

``now`` is ``time.monotonic()``: CLOCK_MONOTONIC is one clock for every process of the
machine, so workers agree on where a window of length T begins (``window_index``).

- ``LocalCounters``: one process (``workers = 1``). Dicts; expired windows and zero counts are
  dropped by an amortised sweep, and past ``max_entries`` the oldest entries are evicted.
- ``SharedCounters``: the workers of one instance, so that a limit holds for the instance and
  not per worker. One shared memory region (a memfd the master creates and hands to every
  worker) holds one sub-table per worker slot; a worker writes only its own sub-table and
  reads everyone's, so there is no lock: one writer per cell (see the class for the layout
  and what a torn read can do).
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
from itertools import islice
from typing import Protocol

from revproxy.proto.ratelimit import Decision, Rate, Window, decide, hit

# LocalCounters keeps at most this many rate windows (about 200 bytes each: ~200 MB at the cap).
MAX_ENTRIES = 1_000_000
# A sweep of expired windows runs when the table doubled since the last one, not below this.
SWEEP_AT_LEAST = 1024
# Shared region: the worker slots it has at least (a reload that changes the number of
# workers up to this needs no new region), and the cells of each slot's two sub-tables.
MIN_SLOTS = 64
RATE_CELLS = 16384
CONCURRENT_CELLS = 16384
# Hashes of recently seen keys kept per process (blake2b costs about a microsecond; a full
# cache is emptied, so it holds a few MB at most).
HASH_CACHE = 16384


class Counters(Protocol):
    """Where the limits' counters are kept (one process, or the workers of an instance)."""

    def hit(self, key: bytes, rate: Rate, now: float) -> Decision:
        """Decide one request of ``key`` at ``now`` (``time.monotonic()``); counted when
        allowed."""
        ...

    def allow(self, key: bytes, rate: Rate, now: float) -> bool:
        """``hit(...).allowed`` without building the decision (the common case of every
        request a limit counts); a refused request is not counted, so ``hit`` with the same
        ``now`` then tells when to come back."""
        ...

    def acquire(self, key: bytes, ceiling: int) -> bool:
        """One more concurrent connection of ``key`` if fewer than ``ceiling`` are open
        (instance-wide); False, counting nothing, otherwise."""
        ...

    def release(self, key: bytes) -> None:
        """One connection of ``key`` fewer (never below 0)."""
        ...

    def concurrent(self, key: bytes) -> int:
        """The connections of ``key`` open now (instance-wide)."""
        ...


# --- one process -------------------------------------------------------------------------------


class _Kept(Window):
    """A window and the period it is counted in (so a sweep knows when it expired)."""

    __slots__ = ("period",)
    period: float


class LocalCounters:
    """The counters of one process.

    Rate windows live in a dict in the order their current window began (a key moves to the
    end when its window advances, once per window), so the front holds the entries that were
    busy longest ago. When the dict doubled since the last sweep, expired windows (older than
    the window before the current one: they count for nothing) are dropped; at
    ``max_entries`` the oldest eighth goes as well, so a full table costs one sweep per
    ``max_entries / 8`` new keys. Concurrent counts are dropped when they fall to 0: there are
    never more of them than open connections.
    """

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        if max_entries < 8:
            raise ValueError("max_entries: at least 8")
        self.max_entries = max_entries
        self._windows: dict[bytes, _Kept] = {}
        self._open: dict[bytes, int] = {}
        self._sweep_at = min(SWEEP_AT_LEAST, max_entries)

    def hit(self, key: bytes, rate: Rate, now: float) -> Decision:
        windows = self._windows
        kept = windows.get(key)
        if kept is None:
            if len(windows) >= self._sweep_at:
                self._sweep(now)
            kept = _Kept()
            kept.period = rate.period
            windows[key] = kept
        elif kept.index < int(now // rate.period):  # a new window: to the back of the line
            del windows[key]
            windows[key] = kept
        return hit(rate, kept, now)

    def allow(self, key: bytes, rate: Rate, now: float) -> bool:
        kept = self._windows.get(key)
        if kept is None:
            return self.hit(key, rate, now).allowed
        period = rate.period
        index = int(now // period)
        passed = index - kept.index
        if passed > 0:  # a new window: to the back of the line (as hit)
            windows = self._windows
            del windows[key]
            windows[key] = kept
            kept.previous = kept.current if passed == 1 else 0
            kept.current = 0
            kept.index = index
        current, previous = kept.current, kept.previous
        if previous:
            count = current + previous * (1.0 - (now - index * period) / period)
        else:
            count = current
        if count + 1 <= rate.requests + rate.burst:
            kept.current = current + 1
            return True
        return False

    def _sweep(self, now: float) -> None:
        windows = self._windows
        expired = [k for k, w in windows.items() if w.index < int(now // w.period) - 1]
        for k in expired:
            del windows[k]
        room = self.max_entries - self.max_entries // 8
        if len(windows) > room:  # still full: the oldest go
            for k in list(islice(windows, len(windows) - room)):
                del windows[k]
        self._sweep_at = min(max(2 * len(windows), SWEEP_AT_LEAST), self.max_entries)

    def acquire(self, key: bytes, ceiling: int) -> bool:
        count = self._open.get(key, 0)
        if count >= ceiling:
            return False
        self._open[key] = count + 1
        return True

    def release(self, key: bytes) -> None:
        count = self._open.get(key)
        if count is None:
            return
        if count <= 1:
            del self._open[key]
        else:
            self._open[key] = count - 1

    def concurrent(self, key: bytes) -> int:
        return self._open.get(key, 0)

    def __len__(self) -> int:
        """Entries held (rate windows and concurrent counts)."""
        return len(self._windows) + len(self._open)


# --- the workers of one instance ---------------------------------------------------------------

_MAGIC = b"rpcount1"
_HEADER = struct.Struct("<8sIII")  # magic, slots, rate cells, concurrent cells per slot
_PAGE = 4096  # the header's page; every sub-table starts on a page of its own
_BUCKET = 8  # the cells a key may live in (its probe sequence): one bucket, the same in each slot
_KEYS = struct.Struct("8s" * _BUCKET)  # a bucket's hashes, first
_RATE_BODY = struct.Struct("<qIId")  # window index, current, previous, stale_at
_RATE_BODIES = struct.Struct("<" + "qIId" * _BUCKET)
_RATE_BUCKET = _KEYS.size + _RATE_BODIES.size  # 256 bytes
_COUNT = struct.Struct("<q")
_unpack_rate, _pack_rate = _RATE_BODY.unpack_from, _RATE_BODY.pack_into
_unpack_count, _pack_count = _COUNT.unpack_from, _COUNT.pack_into
_COUNTS = struct.Struct("<" + "q" * _BUCKET)
_CONCURRENT_BUCKET = _KEYS.size + _COUNTS.size  # 128 bytes
_EMPTY = bytes(8)
_U32 = 0xFFFFFFFF


def _slot_bytes(rate_cells: int, concurrent_cells: int) -> int:
    size = (rate_cells * _RATE_BUCKET + concurrent_cells * _CONCURRENT_BUCKET) // _BUCKET
    return -(-size // _PAGE) * _PAGE


def region_size(
    slots: int, rate_cells: int = RATE_CELLS, concurrent_cells: int = CONCURRENT_CELLS
) -> int:
    """Bytes of a region. Pages are backed by memory only once touched: each worker's own
    sub-table (768 KiB with the default cells), not the slots no worker uses."""
    return _PAGE + slots * _slot_bytes(rate_cells, concurrent_cells)


def create_region(
    slots: int, rate_cells: int = RATE_CELLS, concurrent_cells: int = CONCURRENT_CELLS
) -> int:
    """A new zeroed region for ``slots`` workers (the master's part): its memfd, to pass to
    every worker. The caller closes it."""
    if slots < 1:
        raise ValueError("slots: at least 1")
    for cells in (rate_cells, concurrent_cells):
        if cells < _BUCKET or cells % _BUCKET:
            raise ValueError(f"cells: a multiple of {_BUCKET}")
    fd = os.memfd_create("revproxy-counters", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, region_size(slots, rate_cells, concurrent_cells))
        os.pwrite(fd, _HEADER.pack(_MAGIC, slots, rate_cells, concurrent_cells), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def region_slots(fd: int) -> int:
    """The worker slots of the region ``fd``."""
    magic, slots, _, _ = _HEADER.unpack(os.pread(fd, _HEADER.size, 0))
    if magic != _MAGIC:
        raise ValueError("not a counters region")
    return int(slots)


def _cell(mm: mmap.mmap, start: int, digest: bytes) -> int:
    """The cell of ``digest`` in the bucket at ``start``, or -1: one ``find`` in the bucket's
    first cache line (the 8 hashes), exact unless it matched across two hashes."""
    at = mm.find(digest, start, start + 64) - start
    if at < 0:
        return -1
    return at >> 3 if not at & 7 else _exact(mm, start, digest)


def _exact(mm: mmap.mmap, start: int, digest: bytes) -> int:
    """The cell of ``digest`` in the bucket at ``start``, or -1 (when ``find`` matched across
    two hashes)."""
    keys = _KEYS.unpack_from(mm, start)
    return keys.index(digest) if digest in keys else -1


class SharedCounters:
    """One worker's view of the instance's counters (a region from ``create_region``).

    Layout: a header page (``_HEADER``), then one sub-table per slot, page aligned: the rate
    buckets, then the concurrent buckets. A key's hash is the first 8 bytes of its blake2b
    (the same in every process; 0 is an empty cell) and it lives in one bucket of 8 cells,
    ``hash % buckets``, the same in every sub-table. A rate bucket is the 8 hashes, then 8
    bodies ``<qIId``: window index, current, previous, and ``stale_at`` = ``(index + 2) * T``,
    when its counts are worth nothing (so any worker can judge a cell of any limit expired).
    A concurrent bucket is the 8 hashes, then 8 counts ``<q``. A lookup is one ``find`` of 8
    bytes in the bucket's first cache line and one small unpack, per worker.

    A worker writes only its own sub-table, so there is one writer per cell and no lock. It
    reads the first ``workers`` sub-tables and decides on the sums (the ``shifted`` counters
    of a rate, as ``test_several_writers_decide_as_one``). Reads race with the owner's writes,
    and what a torn read can do is bounded:

    - Taking a cell over, the owner writes the body first and the hash last, so a reader that
      finds the new key's hash reads its body whole. A reader of the evicted key may read the
      new body under the old hash: it sees that key's counts gone a moment before they are
      (they are being given up anyway). A hash read half written matches no key: absent.
    - Within a cell it keeps, a reader may see a write half done (the new window index with
      the old counts, or the reverse): that reader misjudges one request by at most that
      worker's counts of one window, and its next read is whole again.
    - Two workers deciding on one key at the same instant both see the counts before either
      counted: the ceiling may be passed by one per worker at most (never lost: each count
      has one writer).

    New keys take an empty or expired cell of their bucket; a full bucket gives up its least
    valuable cell (rate: the one expiring first; concurrent: the smallest count — a live one
    given up is forgotten, its releases find nothing). Attaching zeroes the worker's own
    sub-table: a restarted worker's connections are gone, and its requests are forgotten (a
    client may get up to one worker's share again).
    """

    def __init__(self, fd: int, slot: int, workers: int) -> None:
        """Attach to the region ``fd`` as ``slot`` (the fd is not taken: close it after)."""
        self.slot = slot
        self.workers = workers
        self._hashes: dict[bytes, tuple[bytes, int]] = {}
        self._attach(fd)

    def _attach(self, fd: int) -> None:
        magic, slots, rate_cells, concurrent_cells = _HEADER.unpack(os.pread(fd, _HEADER.size, 0))
        if magic != _MAGIC:
            raise ValueError("not a counters region")
        if not 0 <= self.slot < slots:
            raise ValueError(f"slot {self.slot}: the region has {slots}")
        self.slots = int(slots)
        self.region = os.fstat(fd).st_ino  # names the region (tests, stats)
        self._rate_buckets = rate_cells // _BUCKET
        self._concurrent_buckets = concurrent_cells // _BUCKET
        self._stride = _slot_bytes(rate_cells, concurrent_cells)
        self._rate_bytes = self._rate_buckets * _RATE_BUCKET
        self._mm = mmap.mmap(fd, region_size(slots, rate_cells, concurrent_cells))
        own = _PAGE + self.slot * self._stride
        self._own_rate = own
        self._own_concurrent = own + self._rate_bytes
        self._mm[own : own + self._stride] = bytes(self._stride)
        self.set_workers(self.workers)

    def reattach(self, fd: int) -> None:
        """Move to a new region (more workers than the old one has slots): the counts start
        again from nothing."""
        old = self._mm
        self._attach(fd)
        old.close()

    def set_workers(self, workers: int) -> None:
        """Read the sub-tables of the first ``workers`` slots (the instance's workers now)."""
        self.workers = workers = max(1, min(workers, self.slots))
        bases = [_PAGE + s * self._stride for s in range(workers)]
        if self._own_rate not in bases:  # a worker on its way out still counts itself
            bases.append(self._own_rate)
        self._rate_bases = tuple(bases)
        self._concurrent_bases = tuple(b + self._rate_bytes for b in bases)

    def close(self) -> None:
        self._mm.close()

    def _hash(self, key: bytes) -> tuple[bytes, int]:
        found = self._hashes.get(key)
        if found is None:
            digest = hashlib.blake2b(key, digest_size=8).digest()
            if digest == _EMPTY:
                digest = b"\x01" + _EMPTY[1:]
            found = digest, int.from_bytes(digest, "little")
            if len(self._hashes) >= HASH_CACHE:
                self._hashes.clear()
            self._hashes[key] = found
        return found

    # --- rates

    def allow(self, key: bytes, rate: Rate, now: float) -> bool:
        return self.hit(key, rate, now).allowed

    def hit(self, key: bytes, rate: Rate, now: float) -> Decision:
        digest, number = self._hashes.get(key) or self._hash(key)
        period = rate.period
        index = int(now // period)
        offset = (number % self._rate_buckets) * _RATE_BUCKET
        mm = self._mm
        own_start = self._own_rate + offset
        current = previous = 0
        own = -1
        mine: tuple[int, int, int, float] = (0, 0, 0, 0.0)
        for base in self._rate_bases:
            start = base + offset
            at = _cell(mm, start, digest)
            if at < 0:
                continue
            cell = _unpack_rate(mm, start + 64 + at * 24)
            passed = index - cell[0]
            if passed <= 0:
                current += cell[1]
                previous += cell[2]
            elif passed == 1:
                previous += cell[1]
            if start == own_start:
                own, mine = at, cell
        decision = decide(rate, current, previous, now - index * period)
        if not decision.allowed:
            return decision
        if own < 0:
            self._take_rate_cell(own_start, digest, index, (index + 2) * period, now)
            return decision
        was, current, previous, stale_at = mine
        at = own_start + 64 + own * 24
        if was >= index:  # the same window (one process's clock does not go back)
            if current < _U32:
                _pack_rate(mm, at, was, current + 1, previous, stale_at)
        elif was == index - 1:
            _pack_rate(mm, at, index, 1, current, (index + 2) * period)
        else:
            _pack_rate(mm, at, index, 1, 0, (index + 2) * period)
        return decision

    def _take_rate_cell(
        self, start: int, digest: bytes, index: int, stale_at: float, now: float
    ) -> None:
        """A cell of the own bucket at ``start`` for a new key: empty, expired, or the one
        expiring first."""
        mm = self._mm
        keys = _KEYS.unpack_from(mm, start)
        stale = _RATE_BODIES.unpack_from(mm, start + 64)[3::4]
        victim = 0
        for i in range(_BUCKET):
            if keys[i] == _EMPTY or stale[i] <= now:
                victim = i
                break
            if stale[i] < stale[victim]:
                victim = i
        _RATE_BODY.pack_into(mm, start + 64 + victim * 24, index, 1, 0, stale_at)
        mm[start + victim * 8 : start + victim * 8 + 8] = digest  # last: the body is whole

    # --- concurrent connections

    def _open(self, digest: bytes, number: int) -> tuple[int, int, int]:
        """The instance-wide count of a key; its own cell (-1: none) and that cell's count."""
        offset = (number % self._concurrent_buckets) * _CONCURRENT_BUCKET
        mm = self._mm
        own_start = self._own_concurrent + offset
        total, own, mine = 0, -1, 0
        for base in self._concurrent_bases:
            start = base + offset
            at = _cell(mm, start, digest)
            if at < 0:
                continue
            n = _unpack_count(mm, start + 64 + at * 8)[0]
            total += n
            if start == own_start:
                own, mine = at, n
        return total, own, mine

    def acquire(self, key: bytes, ceiling: int) -> bool:
        digest, number = self._hashes.get(key) or self._hash(key)
        total, own, mine = self._open(digest, number)
        if total >= ceiling:
            return False
        start = self._own_concurrent + (number % self._concurrent_buckets) * _CONCURRENT_BUCKET
        if own >= 0:
            _pack_count(self._mm, start + 64 + own * 8, mine + 1)
            return True
        counts = _COUNTS.unpack_from(self._mm, start + 64)
        victim = counts.index(min(counts))  # an empty or closed cell (0), or the fewest open
        _pack_count(self._mm, start + 64 + victim * 8, 1)
        self._mm[start + victim * 8 : start + victim * 8 + 8] = digest  # last
        return True

    def release(self, key: bytes) -> None:
        digest, number = self._hashes.get(key) or self._hash(key)
        start = self._own_concurrent + (number % self._concurrent_buckets) * _CONCURRENT_BUCKET
        mm = self._mm
        at = _cell(mm, start, digest)
        if at < 0:  # its cell was given up to another key: nothing to take back
            return
        n = _unpack_count(mm, start + 64 + at * 8)[0]
        if n > 0:
            _pack_count(mm, start + 64 + at * 8, n - 1)

    def concurrent(self, key: bytes) -> int:
        return self._open(*(self._hashes.get(key) or self._hash(key)))[0]
