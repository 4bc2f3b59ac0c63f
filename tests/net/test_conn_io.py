"""ConnIO: reads, deadlines, flow control and coalesced writes, over a recording transport."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from revproxy.net import conn_io as conn_io
from revproxy.net.conn_io import ConnIO


class Transport:
    """Records what is written and whether reading is paused."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.paused = False
        self.closing = False
        self.eof_written = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def writelines(self, parts: list[bytes]) -> None:
        self.writes.append(b"".join(parts))

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_write_buffer_size(self) -> int:
        return 0


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def made() -> tuple[ConnIO, Transport]:
    io = ConnIO()
    t = Transport()
    io.connection_made(t)  # type: ignore[arg-type]
    return io, t


def test_read_returns_what_came_and_joins_small_pieces() -> None:
    async def main() -> None:
        io, _ = await made()
        io.data_received(b"GET / HT")
        io.data_received(b"TP/1.1\r\n\r\n")
        assert await io.read(1024) == b"GET / HTTP/1.1\r\n\r\n"
        assert not io.buffered

    run(main())


def test_big_pieces_are_handed_on_as_they_came() -> None:
    async def main() -> None:
        io, _ = await made()
        big = b"x" * conn_io.JOIN_BELOW
        io.data_received(big)
        io.data_received(b"tail")
        first = await io.read(10 * len(big))
        assert first is big  # not copied
        assert await io.read(100) == b"tail"

    run(main())


def test_read_honours_its_size_and_keeps_the_rest() -> None:
    async def main() -> None:
        io, _ = await made()
        io.data_received(b"abcdef")
        assert await io.read(4) == b"abcd"
        assert await io.read(4) == b"ef"

    run(main())


def test_read_waits_for_data() -> None:
    async def main() -> None:
        io, _ = await made()
        waiting = asyncio.ensure_future(io.read(100))
        await asyncio.sleep(0)
        assert not waiting.done()
        io.data_received(b"late")
        assert await waiting == b"late"

    run(main())


def test_a_deadline_ends_a_read_that_got_nothing() -> None:
    async def main() -> None:
        io, _ = await made()
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(TimeoutError):
            await io.read(100, loop.time() + 0.05)
        assert 0.04 <= loop.time() - start < 1.0

    run(main())


def test_a_deadline_moved_later_is_honoured_by_the_same_timer() -> None:
    async def main() -> None:
        io, _ = await made()
        loop = asyncio.get_running_loop()
        # A first read arms the timer for +0.05 s and is answered at once.
        first = asyncio.ensure_future(io.read(100, loop.time() + 0.05))
        await asyncio.sleep(0)
        io.data_received(b"a")
        assert await first == b"a"
        # The next read may wait until +0.3 s: the early timer re-arms instead of failing it.
        second = asyncio.ensure_future(io.read(100, loop.time() + 0.3))
        await asyncio.sleep(0.15)
        assert not second.done()
        io.data_received(b"b")
        assert await second == b"b"

    run(main())


def test_a_deadline_moved_earlier_is_honoured() -> None:
    async def main() -> None:
        io, _ = await made()
        loop = asyncio.get_running_loop()
        first = asyncio.ensure_future(io.read(100, loop.time() + 30))
        await asyncio.sleep(0)
        io.data_received(b"a")
        await first
        with pytest.raises(TimeoutError):
            await io.read(100, loop.time() + 0.05)

    run(main())


def test_end_of_stream_and_lost_connections() -> None:
    async def main() -> None:
        io, _ = await made()
        io.data_received(b"last")
        assert io.eof_received() is True  # a plain connection stays open for writing
        assert await io.read(100) == b"last"
        assert await io.read(100) == b""
        assert io.at_eof()

        io2, _ = await made()
        waiting = asyncio.ensure_future(io2.read(100))
        await asyncio.sleep(0)
        io2.connection_lost(ConnectionResetError("reset"))
        with pytest.raises(ConnectionResetError):
            await waiting

    run(main())


def test_reading_pauses_above_the_high_water_mark() -> None:
    async def main() -> None:
        io, t = await made()
        piece = b"x" * (conn_io.HIGH_WATER // 2 + 1)
        io.data_received(piece)
        assert not t.paused
        io.data_received(piece)
        assert t.paused
        await io.read(len(piece))
        assert t.paused  # still above the low-water mark
        await io.read(len(piece))
        assert not t.paused

    run(main())


def test_writes_of_one_loop_turn_go_out_as_one() -> None:
    async def main() -> None:
        io, t = await made()
        io.write_soon(b"HTTP/1.1 200 OK\r\n\r\n")
        io.write_soon(b"body")
        assert t.writes == []
        await asyncio.sleep(0)
        assert t.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]

    run(main())


def test_many_pending_bytes_go_out_at_once() -> None:
    async def main() -> None:
        io, t = await made()
        io.write_soon(b"head")
        io.write_soon(b"x" * conn_io.CORK_LIMIT)
        assert t.writes == [b"head" + b"x" * conn_io.CORK_LIMIT]

    run(main())


def test_a_direct_write_keeps_the_order() -> None:
    async def main() -> None:
        io, t = await made()
        io.write_soon(b"first ")
        io.write(b"second")
        assert t.writes == [b"first ", b"second"]
        io.write_soon(b"third")
        io.close()  # flushes before closing
        assert t.writes[-1] == b"third" and t.closing

    run(main())


def test_drain_waits_while_the_transport_is_full() -> None:
    async def main() -> None:
        io, _ = await made()
        await io.drain()  # not paused: returns at once
        io.pause_writing()
        waiting = asyncio.ensure_future(io.drain())
        await asyncio.sleep(0)
        assert not waiting.done()
        io.resume_writing()
        await waiting

        io.pause_writing()
        waiting = asyncio.ensure_future(io.drain())
        await asyncio.sleep(0)
        io.connection_lost(None)
        with pytest.raises(ConnectionResetError):
            await waiting
        with pytest.raises(ConnectionResetError):
            await io.drain()

    run(main())


def test_take_buffered_hands_everything_over() -> None:
    async def main() -> None:
        io, t = await made()
        big = b"y" * conn_io.HIGH_WATER
        io.data_received(big)
        io.data_received(b"z")
        assert t.paused
        assert io.take_buffered() == big + b"z"
        assert not t.paused and not io.buffered

    run(main())


def test_as_streams_hands_over_what_was_not_read() -> None:
    async def main() -> None:
        io, t = await made()
        io.write_soon(b"pending ")
        io.data_received(b"PRI * HTTP/2.0")
        io.eof_received()
        reader, writer = io.as_streams()
        assert t.writes == [b"pending "]  # written before the transport changed hands
        assert isinstance(t.protocol, asyncio.StreamReaderProtocol)
        assert await reader.read() == b"PRI * HTTP/2.0"  # then the end of the stream
        writer.write(b"after")
        assert t.writes[-1] == b"after"

    run(main())
