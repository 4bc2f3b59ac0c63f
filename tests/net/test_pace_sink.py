"""Pacing against any sink (conn_io.Sink), on real loopback sockets, asyncio's loop and uvloop:
an origin connection reads no more than its sink's room, waits (its deadline paused) while the
sink has none, and reads on when the sink says its room changed — the contract an HTTP/2
stream (net/h2_channel.py) keeps as the sink of its response's origin.

The sink here is a plain object whose room the test sets; the origin writes a large body as
fast as it can.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from revproxy.net.conn_io import ConnIO, Sink

T = TypeVar("T")

LOOPS = ["asyncio", "uvloop"]
BODY = bytes(range(256)) * (1024 * 1024 // 256)
ROOM = 64 * 1024


def run(loop_name: str, coro: Callable[[], Coroutine[Any, Any, T]], timeout: float = 30) -> T:
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop_name == "uvloop":
        factory = pytest.importorskip("uvloop").new_event_loop

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro()

    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(bounded())


class RoomSink:
    """A sink whose room the test sets (``open``); it wakes its source as an HTTP/2 stream does
    on WINDOW_UPDATE, and never asks for probes."""

    def __init__(self) -> None:
        self.free = 0
        self.source: ConnIO | None = None
        self.closed = False
        self.asked = 0

    unproven = True
    probes = False
    holding = False

    @property
    def closing(self) -> bool:
        return self.closed

    def lead(self, source: ConnIO) -> bool:
        self.source = source
        return True

    def unlead(self) -> None:
        self.source = None

    def room(self) -> int:
        self.asked += 1
        return self.free

    def open(self, free: int) -> None:
        self.free = free
        if self.source is not None:
            self.source.room_changed()


async def origin() -> tuple[asyncio.Server, ConnIO]:
    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(BODY)
        await w.drain()
        w.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    src = ConnIO(loop)
    await loop.create_connection(lambda: src, "127.0.0.1", port)
    return server, src


@pytest.mark.parametrize("loop_name", LOOPS)
def test_no_room_no_read_then_reads_sized_to_the_room(loop_name: str) -> None:
    async def main() -> tuple[list[int], int, bytes]:
        server, src = await origin()
        sink: Sink = RoomSink()
        assert isinstance(sink, RoomSink)
        src.follow(sink)
        await asyncio.sleep(0.3)  # the origin has written all it could: none of it is read
        before = src.buffered
        reads: list[int] = []
        got = bytearray()
        loop = asyncio.get_running_loop()
        sink.open(ROOM)
        while True:
            data = await src.read(-1, loop.time() + 0.1)
            if not data:
                break
            reads.append(len(data))
            got += data
            # The sink is full a while, then opens again: the read waits longer than its
            # deadline, which does not count the time spent waiting for the sink.
            sink.free = 0
            loop.call_later(0.15, sink.open, ROOM)
        src.follow(None)
        src.close()
        server.close()
        return reads, int(before), bytes(got)

    reads, before, got = run(loop_name, main)
    assert before == 0
    assert hashlib.sha256(got).digest() == hashlib.sha256(BODY).digest()
    assert max(reads) <= ROOM, max(reads)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_closing_sink_lets_the_source_read_on(loop_name: str) -> None:
    async def main() -> int:
        server, src = await origin()
        sink = RoomSink()
        src.follow(sink)
        await asyncio.sleep(0.1)
        assert not src.buffered
        sink.closed = True
        sink.open(0)  # woken: the exchange must learn its client is gone
        data = await src.read(-1, asyncio.get_running_loop().time() + 5)
        src.follow(None)
        assert sink.source is None  # unled
        src.close()
        server.close()
        return len(data)

    assert run(loop_name, main) > 0
