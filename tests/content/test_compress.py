"""Response compression codecs (content/compress.py): round trips, flushes that make every
byte decodable, the thread offload, and the CPU governor on a fake clock."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import zlib
from collections.abc import Callable

import brotli
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from revproxy.content import compress as cm
from revproxy.content.compress import (
    DEFAULT_LEVELS,
    FASTEST_LEVELS,
    LEVEL_RANGES,
    LOWER_AT,
    OFFLOAD_MIN,
    PASS_AT,
    BodyEncoder,
    Governor,
    Load,
    compress_async,
    finish_async,
    flush_async,
    level_range,
)
from revproxy.proto.encoding import ENCODINGS


class Decoder:
    """The client's side: an incremental decoder for one coding."""

    def __init__(self, encoding: str) -> None:
        self.out = bytearray()
        if encoding == "gzip":
            z = zlib.decompressobj(wbits=31)
            self._feed: Callable[[bytes], bytes] = z.decompress
            self._ended: Callable[[], bool] = lambda: z.eof
        elif encoding == "br":
            b = brotli.Decompressor()
            self._feed = b.process
            self._ended = b.is_finished
        else:
            d = zstandard.ZstdDecompressor().decompressobj()
            self._feed = d.decompress
            self._ended = lambda: d.eof

    def feed(self, data: bytes) -> bytes:
        self.out += self._feed(data)
        return bytes(self.out)

    @property
    def ended(self) -> bool:
        return self._ended()


def realistic_json(size: int, seed: int = 7) -> bytes:
    """A JSON API response of about ``size`` bytes: records with ids, UUIDs, dates, text."""
    rng = random.Random(seed)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while"]
    words += ["proxies", "compress", "json", "bodies", "for", "mobile", "clients", "on", "slow"]
    items: list[dict[str, object]] = []
    length = 0
    while length < size:
        item = {
            "id": 100000 + len(items),
            "uuid": "-".join(f"{rng.getrandbits(4 * n):0{n}x}" for n in (8, 4, 4, 4, 12)),
            "name": f"{rng.choice(words).title()} {rng.choice(words).title()}",
            "created_at": f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T"
            f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z",
            "balance": round(rng.uniform(-500, 5000), 2),
            "active": rng.random() < 0.8,
            "bio": " ".join(rng.choice(words) for _ in range(rng.randint(5, 20))),
        }
        items.append(item)
        length += len(json.dumps(item)) + 2
    return json.dumps({"items": items}).encode()


def round_trip(encoding: str, level: int | None, chunks: list[bytes]) -> bytes:
    enc = BodyEncoder(encoding, level)
    out = b"".join(enc.compress(c) for c in chunks) + enc.finish()
    dec = Decoder(encoding)
    body = dec.feed(out)
    assert dec.ended
    return body


# --- codecs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_levels(encoding: str) -> None:
    low, high = level_range(encoding)
    assert low <= DEFAULT_LEVELS[encoding] <= high
    assert low <= FASTEST_LEVELS[encoding] <= DEFAULT_LEVELS[encoding]
    assert BodyEncoder(encoding).level == DEFAULT_LEVELS[encoding]
    for bad in (low - 1, high + 1):
        with pytest.raises(ValueError, match=f"{encoding} level {bad} is not in {low}..{high}"):
            BodyEncoder(encoding, bad)


def test_unknown_encoding() -> None:
    with pytest.raises(ValueError, match="unknown encoding 'deflate'"):
        level_range("deflate")
    with pytest.raises(ValueError, match="unknown encoding"):
        BodyEncoder("identity")


@pytest.mark.parametrize(
    ("encoding", "level"),
    [(e, lv) for e in ENCODINGS for lv in sorted({*LEVEL_RANGES[e], DEFAULT_LEVELS[e]})],
)
def test_round_trip_at_each_end_of_the_range(encoding: str, level: int) -> None:
    body = realistic_json(50_000)
    assert round_trip(encoding, level, [body[:1000], body[1000:30_000], body[30_000:]]) == body


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_default_levels_compress_json_well(encoding: str) -> None:
    body = realistic_json(100 * 1024)
    enc = BodyEncoder(encoding)
    out = enc.compress(body) + enc.finish()
    assert len(out) < 0.3 * len(body)  # measured 25-26 % on this body
    assert Decoder(encoding).feed(out) == body


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_empty_body(encoding: str) -> None:
    enc = BodyEncoder(encoding)
    assert enc.flush() == b""  # nothing given: nothing to make decodable
    out = enc.compress(b"") + enc.flush() + enc.finish()
    dec = Decoder(encoding)
    assert dec.feed(out) == b""
    assert dec.ended


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_many_small_chunks(encoding: str) -> None:
    body = realistic_json(20_000)
    chunks = [body[i : i + 7] for i in range(0, len(body), 7)]
    assert round_trip(encoding, None, chunks) == body


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_each_flush_makes_everything_so_far_decodable(encoding: str) -> None:
    """Server-sent events: every event reaches the client as soon as it is flushed."""
    enc, dec = BodyEncoder(encoding), Decoder(encoding)
    sent = b""
    for i in range(200):
        event = f'id: {i}\nevent: tick\ndata: {{"n": {i}, "text": "{"x" * (i % 17)}"}}\n\n'
        sent += event.encode()
        piece = enc.compress(event.encode()) + enc.flush()
        assert piece, "a flush after new data always produces bytes"
        assert dec.feed(piece) == sent
    assert enc.flush() == b""  # a second flush has nothing to add
    assert dec.feed(enc.finish()) == sent
    assert dec.ended


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(ENCODINGS),
    st.lists(st.tuples(st.binary(max_size=3000), st.booleans()), max_size=25),
)
def test_any_chunks_and_flushes(encoding: str, steps: list[tuple[bytes, bool]]) -> None:
    enc, dec = BodyEncoder(encoding, FASTEST_LEVELS[encoding]), Decoder(encoding)
    given_so_far = b""
    for data, flush in steps:
        given_so_far += data
        out = dec.feed(enc.compress(data))
        assert given_so_far.startswith(out)  # never more than given, never different
        if flush:
            assert dec.feed(enc.flush()) == given_so_far
    assert dec.feed(enc.finish()) == given_so_far
    assert dec.ended


@pytest.mark.parametrize("level", [1, 3, 19])
def test_zstd_window_fits_rfc_9659(level: int) -> None:
    """RFC 9659: decoders of the "zstd" content coding may refuse windows above 8 MiB."""
    enc = BodyEncoder("zstd", level)
    frame = enc.compress(b"a" * 100_000) + enc.finish()
    params = zstandard.get_frame_parameters(frame)
    assert params.content_size == zstandard.CONTENTSIZE_UNKNOWN  # a stream: size not known
    assert 0 < params.window_size <= 8 * 1024 * 1024


def test_zstd_compressors_are_reused_and_stay_correct() -> None:
    first = BodyEncoder("zstd", 4)
    body = realistic_json(10_000)
    out1 = first.compress(body) + first.finish()
    second = BodyEncoder("zstd", 4)  # takes the compressor the first gave back
    out2 = second.compress(body) + second.finish()
    assert out1 == out2  # a reused compressor starts a fresh frame
    assert Decoder("zstd").feed(out2) == body
    assert len(cm._zstd_spare[4]) >= 1
    abandoned = BodyEncoder("zstd", 4)  # never finished: nothing goes back
    abandoned.compress(body)
    spares = len(cm._zstd_spare[4])
    for _ in range(cm.ZSTD_SPARE + 3):
        e = BodyEncoder("zstd", 4)
        e.finish()
    assert spares <= len(cm._zstd_spare[4]) <= cm.ZSTD_SPARE


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_use_after_finish_is_refused(encoding: str) -> None:
    enc = BodyEncoder(encoding)
    enc.finish()
    calls: list[Callable[[], bytes]] = [lambda: enc.compress(b"x"), enc.flush, enc.finish]
    for call in calls:
        with pytest.raises(RuntimeError, match="after finish"):
            call()


class BlockingCodec:
    """Stands in for a codec: compress waits until released, and says which thread ran it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.threads: list[str] = []

    def compress(self, data: bytes) -> bytes:
        self.threads.append(threading.current_thread().name)
        self.entered.set()
        assert self.release.wait(10)
        return data

    def flush(self) -> bytes:
        self.threads.append(threading.current_thread().name)
        return b""

    def finish(self) -> bytes:
        self.threads.append(threading.current_thread().name)
        return b""


def test_two_threads_in_one_encoder_are_refused() -> None:
    enc = BodyEncoder("gzip")
    codec = BlockingCodec()
    enc._codec = codec
    worker = threading.Thread(target=enc.compress, args=(b"first",))
    worker.start()
    try:
        assert codec.entered.wait(10)
        with pytest.raises(RuntimeError, match="two threads at once"):
            enc.compress(b"second")
        with pytest.raises(RuntimeError, match="two threads at once"):
            enc.flush()
    finally:
        codec.release.set()
        worker.join(10)
    assert enc.compress(b"third") == b"third"  # free again


# --- off the event loop ------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_one_mebibyte_through_compress_async(encoding: str) -> None:
    body = realistic_json(1024 * 1024)
    chunks = [body[i : i + 256 * 1024] for i in range(0, len(body), 256 * 1024)]
    chunks += [b'{"tail": 1}'] * 3  # small ones, inline

    async def main() -> bytes:
        enc = BodyEncoder(encoding)
        out = b""
        for chunk in chunks:
            out += await compress_async(enc, chunk)
        out += await flush_async(enc)
        return out + await finish_async(enc)

    out = asyncio.run(main())
    dec = Decoder(encoding)
    assert dec.feed(out) == b"".join(chunks)
    assert dec.ended


def test_big_chunks_go_to_the_pool_small_ones_stay() -> None:
    async def main() -> list[str]:
        enc = BodyEncoder("gzip")
        codec = BlockingCodec()
        codec.release.set()
        enc._codec = codec
        await compress_async(enc, b"x" * (OFFLOAD_MIN - 1))
        await compress_async(enc, b"x" * OFFLOAD_MIN)
        await flush_async(enc)  # OFFLOAD_MIN + more pending: in the pool
        await compress_async(enc, b"x")
        await finish_async(enc)  # 1 byte pending: inline
        return codec.threads

    loop_thread = threading.current_thread().name
    threads = asyncio.run(main())
    assert threads[0] == loop_thread
    assert threads[1].startswith("revproxy-compress")
    assert threads[2].startswith("revproxy-compress")
    assert threads[3] == loop_thread
    assert threads[4] == loop_thread


def test_calls_on_one_encoder_keep_their_order() -> None:
    """A small chunk made while a big one is in a thread waits its turn."""
    big1, small, big2 = b"A" * (OFFLOAD_MIN * 2), b"tiny", b"B" * OFFLOAD_MIN

    async def main() -> tuple[bytes, ...]:
        enc = BodyEncoder("zstd")
        parts = await asyncio.gather(
            compress_async(enc, big1),
            compress_async(enc, small),
            compress_async(enc, big2),
            flush_async(enc),
        )
        return (*parts, await finish_async(enc))

    out = b"".join(asyncio.run(main()))
    assert Decoder("zstd").feed(out) == big1 + small + big2


def test_a_cancelled_offload_breaks_the_encoder() -> None:
    async def main() -> None:
        enc = BodyEncoder("gzip")
        codec = BlockingCodec()
        enc._codec = codec
        task = asyncio.create_task(compress_async(enc, b"x" * OFFLOAD_MIN))
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, codec.entered.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        codec.release.set()
        with pytest.raises(RuntimeError, match="cancelled"):
            await finish_async(enc)

    asyncio.run(main())


def test_shutdown_pool_and_start_again() -> None:
    async def once() -> bytes:
        enc = BodyEncoder("br")
        return await compress_async(enc, b"y" * OFFLOAD_MIN) + await finish_async(enc)

    first = asyncio.run(once())
    cm.shutdown_pool()
    cm.shutdown_pool()  # twice is harmless
    assert asyncio.run(once()) == first


# --- the governor ------------------------------------------------------------------------------


class FakeClock:
    """Wall time and the process's CPU time, moved by the test."""

    def __init__(self) -> None:
        self.now = 100.0
        self.cpu = 5.0

    def run(self, seconds: float, share: float) -> None:
        self.now += seconds
        self.cpu += seconds * share


def governor(clock: FakeClock) -> Governor:
    return Governor(clock=lambda: clock.now, cpu_time=lambda: clock.cpu)


def test_governor_steps(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="revproxy.compress")
    clock = FakeClock()
    gov = governor(clock)
    steps = [
        # (CPU share over the next second, zstd level given for configured 6)
        (0.50, 6),
        (LOWER_AT - 0.01, 6),
        # At a threshold (a hair above: the fake clock's float sums are off by ~1e-16).
        (LOWER_AT + 1e-9, FASTEST_LEVELS["zstd"]),
        (PASS_AT + 1e-9, FASTEST_LEVELS["zstd"]),  # one hot window: lowered, not passing
        (PASS_AT + 0.02, None),  # two in a row: pass through
        (1.30, None),  # the compression threads count: above one CPU
        (0.90, FASTEST_LEVELS["zstd"]),
        (0.97, FASTEST_LEVELS["zstd"]),  # the hot streak starts again
        (0.20, 6),
    ]
    loads = []
    for share, level in steps:
        clock.run(1.0, share)
        assert gov.level_for("zstd", 6) == level
        assert gov.share == pytest.approx(share)
        loads.append(gov.load)
    assert loads == [
        Load.NORMAL,
        Load.NORMAL,
        Load.LOWERED,
        Load.LOWERED,
        Load.PASSING,
        Load.PASSING,
        Load.LOWERED,
        Load.LOWERED,
        Load.NORMAL,
    ]
    assert (gov.lowered, gov.passed) == (4, 2)
    # One line per change of load, none while it stays.
    lines = [r for r in caplog.records if r.name == "revproxy.compress"]
    assert [r.getMessage().split(":")[0] for r in lines] == [
        "compression lowered",
        "compression passing",
        "compression lowered",
        "compression normal",
    ]
    assert [r.levelno for r in lines] == [logging.WARNING] * 3 + [logging.INFO]
    assert "85 % of a CPU over the last 1.0 s" in lines[0].getMessage()
    assert "97 % of a CPU" in lines[1].getMessage()


def test_governor_measures_once_per_window() -> None:
    clock = FakeClock()
    gov = governor(clock)
    clock.run(1.0, 0.9)
    assert gov.level_for("gzip", 5) == 1
    # Within the next window the decision holds, whatever happens meanwhile.
    for _ in range(10):
        clock.run(0.05, 0.0)
        assert gov.level_for("gzip", 5) == 1
    assert gov.lowered == 11
    clock.run(0.6, 0.0)  # the window (1.0 s since the last measure) is over: idle
    assert gov.level_for("gzip", 5) == 5
    assert gov.load is Load.NORMAL


def test_governor_counts_only_real_lowering() -> None:
    clock = FakeClock()
    gov = governor(clock)
    clock.run(1.0, 0.9)
    assert gov.level_for("br", 0) == 0  # already below the fastest level: kept
    assert gov.level_for("br", 1) == 1
    assert gov.level_for("br", 4) == FASTEST_LEVELS["br"]
    assert gov.lowered == 1


def test_governor_after_a_long_idle_spell() -> None:
    clock = FakeClock()
    gov = governor(clock)
    clock.run(1.0, 1.0)
    gov.level_for("zstd", 3)
    clock.run(1.0, 1.0)
    assert gov.level_for("zstd", 3) is None
    clock.run(60.0, 0.02)  # a quiet minute is one long window
    assert gov.level_for("zstd", 3) == 3
    assert gov.share == pytest.approx(0.02)


def test_governor_defaults_read_the_process_clocks() -> None:
    gov = Governor(window=0.0)
    assert gov.level_for("zstd", 3) in (3, FASTEST_LEVELS["zstd"], None)
    assert gov.share >= 0.0
