"""Response compression: the streaming codecs (zstd, br, gzip), the thread they run big chunks
in, and the governor that backs off when the process runs out of CPU.

Rule of this room: one ``BodyEncoder`` per response, used by one thread at a time; what it has
been given becomes decodable by the client at each ``flush()`` (server-sent events, long polls
and streamed JSON must not wait in our buffers). Which response is compressed and how its head
changes is decided in ``revproxy/proto/encoding.py``.

Threads. A chunk of ``OFFLOAD_MIN`` bytes or more is compressed in a small dedicated pool, so a
large body does not stall the event loop; smaller chunks are compressed inline, where the
hop to a thread would cost more than the work. All three codecs release the GIL while they
work (measured: a Python loop on the main thread keeps 87-100 % of its speed while a worker
compresses with zlib, brotli or zstandard; a call that holds the GIL drops it to 7 %), so the
pool gives real parallelism.

Libraries. ``brotli`` and ``zstandard`` are imported by the first encoder that needs them
(zstandard alone is 1.1 MiB and 12 ms per process): an instance that compresses nothing does
not pay for them (docs/architecture.md, "Libraries for one feature").

Windows. RFC 9659 §3: "a decoder MAY ... reject a zstd frame with a Window_Size greater than 8
MB" for the "zstd" content coding, so its levels stop at 19 (window 8 MiB when the size is
unknown, as it is for a stream); levels 20-22 would need 32-128 MiB.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import zstandard

log = logging.getLogger("revproxy.compress")

# Chunks at least this long are compressed in a worker thread. Measured: a hop to the pool and
# back costs the event loop ~40 us of CPU under uvloop (~60 us asyncio) and ~70-130 us of
# latency; 64 KiB compressed inline costs it 0.25 ms (zstd 3), 0.5 ms (br 4), 1.1 ms (gzip 5).
# So smaller chunks (most reads from an origin) stall the loop at most about a millisecond;
# on CPU alone the hop would pay from ~8 KiB (gzip) or ~16 KiB (zstd).
OFFLOAD_MIN = 64 * 1024

# Threads of the compression pool, per process. Each worker process has its own; two let one
# big body compress while another does, without the pool outgrowing the process's CPU share.
COMPRESS_THREADS = 2

# Levels used when a route names none. Measured on a 100 KiB JSON API response (260 records,
# ids, UUIDs, dates, text), each gives ~23 % of the original:
#   zstd 3 0.25 ms (the goal is <= 0.5 ms), br 4 0.9 ms, gzip 5 1.4 ms of CPU.
# Higher levels buy 1-2 % of size for 2-6x the CPU (zstd 6: 21.7 % in 0.9 ms; br 6: 21.3 % in
# 1.9 ms; gzip 6: 22.8 % in 1.9 ms; br 11: 18.5 % in 120 ms).
DEFAULT_LEVELS: dict[str, int] = {"zstd": 3, "br": 4, "gzip": 5}

# Levels a route may configure. zstd stops at 19 (RFC 9659 window, above); gzip 0 would be
# stored blocks, bigger than the body.
LEVEL_RANGES: dict[str, tuple[int, int]] = {"zstd": (1, 19), "br": (0, 11), "gzip": (1, 9)}

# The level the governor drops to when the process is busy: the fastest that still
# compresses text well (br 0 is barely faster than br 1 and gives 29 % instead of 25 %;
# zstd's negative levels save a third of the CPU for 10-15 % more bytes). From the default
# levels this saves half the CPU for br and gzip, little for zstd 3 (whose window, and so
# memory, it halves); from higher configured levels it saves 2-6x.
FASTEST_LEVELS: dict[str, int] = {"zstd": 1, "br": 1, "gzip": 1}

# zstd compressors kept for reuse, per level: a new one costs 40 us (its context is 1.2 MiB
# at level 3), a reused one 1.6 us, for a 2 KiB response. Kept few, since each holds memory.
ZSTD_SPARE = 4

# The governor: the process's CPU time over wall time is measured over windows of
# GOVERNOR_WINDOW seconds (1.0 = one CPU kept busy; the compression threads count too).
GOVERNOR_WINDOW = 1.0
# At or above this share, responses get their codec's fastest level: the event loop is close
# to saturation and compression is the cost we can shed without refusing anyone.
LOWER_AT = 0.85
# At or above this share for PASS_AFTER windows in a row, bodies pass through uncompressed:
# one busy second may be a burst, two mean compressing is now what starves the clients.
PASS_AT = 0.95
PASS_AFTER = 2


def level_range(encoding: str) -> tuple[int, int]:
    """The levels ``encoding`` accepts (inclusive), for the configuration reader to check
    against; ValueError for a coding we cannot produce."""
    try:
        return LEVEL_RANGES[encoding]
    except KeyError:
        raise ValueError(f"unknown encoding {encoding!r}") from None


class _Codec(Protocol):
    def compress(self, data: bytes) -> bytes: ...
    def flush(self) -> bytes: ...
    def finish(self) -> bytes: ...


class _Gzip:
    """zlib with a gzip wrapper (wbits 31: 15-bit window + 16 for the gzip header)."""

    __slots__ = ("_z",)

    def __init__(self, level: int) -> None:
        self._z = zlib.compressobj(level, zlib.DEFLATED, 31)

    def compress(self, data: bytes) -> bytes:
        return self._z.compress(data)

    def flush(self) -> bytes:
        return self._z.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._z.flush(zlib.Z_FINISH)


class _Brotli:
    __slots__ = ("_b",)

    def __init__(self, level: int) -> None:
        import brotli

        self._b: Any = brotli.Compressor(quality=level)

    def compress(self, data: bytes) -> bytes:
        out: bytes = self._b.process(data)
        return out

    def flush(self) -> bytes:
        out: bytes = self._b.flush()
        return out

    def finish(self) -> bytes:
        out: bytes = self._b.finish()
        return out


_zstd_spare: dict[int, list[zstandard.ZstdCompressor]] = {}


class _Zstd:
    """A zstd frame of one response; the compressor goes back to the spares when the frame
    is finished (an abandoned one is left to the garbage collector)."""

    __slots__ = ("_cctx", "_level", "_obj")

    def __init__(self, level: int) -> None:
        import zstandard

        spare = _zstd_spare.get(level)
        try:
            cctx = spare.pop() if spare else zstandard.ZstdCompressor(level=level)
        except IndexError:  # emptied by another thread between the test and the pop
            cctx = zstandard.ZstdCompressor(level=level)
        self._cctx = cctx
        self._level = level
        self._obj = cctx.compressobj()

    def compress(self, data: bytes) -> bytes:
        return self._obj.compress(data)

    def flush(self) -> bytes:
        import zstandard

        return self._obj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)

    def finish(self) -> bytes:
        out = self._obj.flush()  # COMPRESSOBJ_FLUSH_FINISH: the frame's last block
        spare = _zstd_spare.setdefault(self._level, [])
        if len(spare) < ZSTD_SPARE:
            spare.append(self._cctx)
        return out


_CODECS: dict[str, Callable[[int], _Codec]] = {"zstd": _Zstd, "br": _Brotli, "gzip": _Gzip}


class BodyEncoder:
    """The compressed body of one response: ``compress`` each chunk, ``flush`` when the client
    must see what it has so far, ``finish`` once at the end. The output of every call is
    sent, in order.

    Two threads inside one encoder at once would corrupt its stream; that is a bug in the
    caller and raises RuntimeError rather than waiting (``compress_async`` and its siblings
    order their callers, so the exchange never meets it).
    """

    __slots__ = (
        "_broken",
        "_codec",
        "_done",
        "_guard",
        "_order",
        "_since_flush",
        "encoding",
        "level",
    )

    def __init__(self, encoding: str, level: int | None = None) -> None:
        low, high = level_range(encoding)
        if level is None:
            level = DEFAULT_LEVELS[encoding]
        if not low <= level <= high:
            raise ValueError(f"{encoding} level {level} is not in {low}..{high}")
        self.encoding = encoding
        self.level = level
        self._codec = _CODECS[encoding](level)
        self._guard = threading.Lock()
        self._order = asyncio.Lock()  # binds to a loop on first contended use only
        self._since_flush = 0  # bytes given since the last flush (what a flush has to do)
        self._done = False
        self._broken = False  # a cancelled offload lost a chunk's output

    @property
    def pending(self) -> int:
        """Bytes given since the last ``flush`` (or the start)."""
        return self._since_flush

    def _enter(self) -> None:
        if self._broken:
            raise RuntimeError("BodyEncoder lost a chunk to a cancelled compress_async")
        if self._done:
            raise RuntimeError("BodyEncoder used after finish()")
        if not self._guard.acquire(blocking=False):
            raise RuntimeError("BodyEncoder used by two threads at once")

    def compress(self, data: bytes) -> bytes:
        """Compressed bytes for ``data`` (often empty: codecs buffer until a block is full)."""
        self._enter()
        try:
            out = self._codec.compress(data)
            self._since_flush += len(data)
            return out
        finally:
            self._guard.release()

    def flush(self) -> bytes:
        """Bytes that make everything given so far decodable by the client."""
        self._enter()
        try:
            if self._since_flush == 0:  # the last flush already did
                return b""
            out = self._codec.flush()
            self._since_flush = 0
            return out
        finally:
            self._guard.release()

    def finish(self) -> bytes:
        """The end of the compressed body; the encoder is spent."""
        self._enter()
        try:
            out = self._codec.finish()
            self._done = True
            self._since_flush = 0
            return out
        finally:
            self._guard.release()


_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        with _executor_lock:
            if _executor is None:
                _executor = ThreadPoolExecutor(
                    max_workers=COMPRESS_THREADS, thread_name_prefix="revproxy-compress"
                )
    return _executor


def shutdown_pool() -> None:
    """Stop the compression threads (waiting for the chunks they hold); a later offload
    starts a new pool. For a process's orderly exit and for tests."""
    global _executor
    with _executor_lock:
        pool, _executor = _executor, None
    if pool is not None:
        pool.shutdown(wait=True)


async def _run(enc: BodyEncoder, work: Callable[[], bytes], offload: bool) -> bytes:
    async with enc._order:
        if not offload:
            return work()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(_pool(), work)
        except asyncio.CancelledError:
            # The thread goes on with the chunk, and its output goes nowhere: the stream
            # is broken, and the encoder refuses to go on rather than send a corrupt body.
            enc._broken = True
            raise


async def compress_async(enc: BodyEncoder, data: bytes) -> bytes:
    """``enc.compress(data)``, in the compression pool when ``data`` is ``OFFLOAD_MIN`` bytes or
    more; calls on one encoder run one at a time, in the order they were made."""
    return await _run(enc, lambda: enc.compress(data), len(data) >= OFFLOAD_MIN)


async def flush_async(enc: BodyEncoder) -> bytes:
    """``enc.flush()``, in the pool when ``OFFLOAD_MIN`` bytes or more wait in the codec
    (brotli and zlib keep much of their work for the flush)."""
    return await _run(enc, enc.flush, enc.pending >= OFFLOAD_MIN)


async def finish_async(enc: BodyEncoder) -> bytes:
    """``enc.finish()``, in the pool when ``OFFLOAD_MIN`` bytes or more wait in the codec."""
    return await _run(enc, enc.finish, enc.pending >= OFFLOAD_MIN)


class Load(enum.Enum):
    """What the governor lets compression do."""

    NORMAL = "normal"  # the configured level
    LOWERED = "lowered"  # the codec's fastest level
    PASSING = "passing"  # no compression: bodies pass through


class Governor:
    """One per process: the level each response is compressed with, given how busy the
    process has been (see LOWER_AT, PASS_AT, PASS_AFTER).

    ``level_for`` is asked once per response about to be compressed; the window is closed and
    the share measured by the first call after it ends (an idle process measures a long, idle
    window, and is back to NORMAL). The counters ``lowered`` and ``passed`` count responses.
    """

    __slots__ = (
        "_clock",
        "_cpu",
        "_cpu_start",
        "_hot",
        "_start",
        "load",
        "lowered",
        "passed",
        "share",
        "window",
    )

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        cpu_time: Callable[[], float] = time.process_time,
        window: float = GOVERNOR_WINDOW,
    ) -> None:
        self._clock = clock
        self._cpu = cpu_time
        self.window = window
        self._start = clock()
        self._cpu_start = cpu_time()
        self._hot = 0  # windows in a row at or above PASS_AT
        self.load = Load.NORMAL
        self.share = 0.0  # the CPU share of the last window measured
        self.lowered = 0  # responses given a lower level than configured
        self.passed = 0  # responses sent uncompressed for want of CPU

    def _measure(self) -> None:
        now = self._clock()
        elapsed = now - self._start
        if elapsed < self.window:
            return
        cpu = self._cpu()
        share = (cpu - self._cpu_start) / elapsed
        self._start, self._cpu_start = now, cpu
        self.share = share
        self._hot = self._hot + 1 if share >= PASS_AT else 0
        if self._hot >= PASS_AFTER:
            load = Load.PASSING
        elif share >= LOWER_AT:
            load = Load.LOWERED
        else:
            load = Load.NORMAL
        if load is not self.load:
            level = logging.INFO if load is Load.NORMAL else logging.WARNING
            log.log(
                level,
                "compression %s: the process used %.0f %% of a CPU over the last %.1f s "
                "(responses lowered so far: %d, passed uncompressed: %d)",
                load.value,
                share * 100,
                elapsed,
                self.lowered,
                self.passed,
            )
            self.load = load

    def level_for(self, encoding: str, configured: int) -> int | None:
        """The level to compress this response with, or None to send it uncompressed."""
        self._measure()
        if self.load is Load.NORMAL:
            return configured
        if self.load is Load.PASSING:
            self.passed += 1
            return None
        fastest = FASTEST_LEVELS[encoding]
        if fastest < configured:
            self.lowered += 1
            return fastest
        return configured
