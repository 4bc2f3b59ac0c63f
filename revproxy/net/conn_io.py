"""The bytes of one HTTP/1.1 connection (client side or backend side), as the pipeline reads
and writes them: an ``asyncio.Protocol`` with what ``StreamReader``/``StreamWriter`` offer and
less of their cost.

Rule of this room: one object per connection, nothing allocated per read beyond the bytes and
one future when the read must wait. Timeouts are deadlines (loop time), not timers per read:
a connection owns at most one timer, armed when a read first waits and moved forward lazily —
when it fires before the current deadline it re-arms itself instead — so setting a deadline
costs a float store. Reads stop the transport when more than ``HIGH_WATER`` bytes wait unread
(memory per connection stays bounded); writes wait in ``drain`` while the transport says its
buffer is full. Small writes made in one turn of the event loop go out as one write
(``write_soon``): a response head, its body and its end cost one system call (one TLS record).
The duck-typed reader/writer methods ``relay.relay_streams`` uses are here too. Every
connection is weighed in the process's budget for slow readers (``cut_slowest``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any, cast

# Unread bytes above which the transport stops reading (and resumes below LOW_WATER).
HIGH_WATER = 1024 * 1024
LOW_WATER = 256 * 1024
# Bytes held by ``write_soon`` before they are written at once.
CORK_LIMIT = 64 * 1024
# ``read`` joins received pieces while they are smaller than this.
JOIN_BELOW = 64 * 1024


class ConnIO(asyncio.Protocol):
    """Reads, writes and deadlines of one connection (see the module's rule)."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_closed",
        "_corked",
        "_deadline",
        "_drain_waiter",
        "_eof",
        "_exc",
        "_flush_handle",
        "_over_ssl",
        "_paused_reading",
        "_timer",
        "_waiter",
        "_write_paused",
        "loop",
        "transport",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop or asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._eof = False
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused_reading = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] = self.loop.create_future()
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._over_ssl = False
        self._corked: list[bytes] = []
        self._flush_handle: asyncio.Handle | None = None

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is no asyncio.Transport subclass, but has its methods.
        self.transport = cast(asyncio.Transport, transport)
        self._over_ssl = transport.get_extra_info("sslcontext") is not None
        _live.add(self)

    def set_transport(self, transport: asyncio.Transport) -> None:
        """After ``loop.start_tls``: the TLS transport replaces the plain one."""
        self.transport = transport
        self._over_ssl = True

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        if self._buffered > HIGH_WATER and not self._paused_reading and self.transport:
            self._paused_reading = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        # Keep a plain connection open for writing after the peer's half-close (TLS can't).
        return not self._over_ssl

    def connection_lost(self, exc: Exception | None) -> None:
        _live.discard(self)
        self._eof = True
        if exc is not None:
            self._exc = exc
        self._wake()
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_exception(exc or ConnectionResetError("connection lost"))
            drain.exception()  # nobody may wait for it any more: not "never retrieved"
        self._drain_waiter = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drain = self._drain_waiter
        self._drain_waiter = None
        if drain is not None and not drain.done():
            drain.set_result(None)

    # --- reading ------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    @property
    def buffered(self) -> bool:
        """Bytes were received and not read yet."""
        return self._buffered > 0

    def take_buffered(self) -> bytes:
        """Every byte received and not read yet (the connection changes hands)."""
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if self._paused_reading and self.transport is not None:
            self._paused_reading = False
            self.transport.resume_reading()
        return data

    def as_streams(
        self, limit: int = HIGH_WATER
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The connection handed to code that reads a ``StreamReader`` (HTTP/2): the transport
        changes protocol, with whatever was received and not read yet."""
        assert self.transport is not None
        transport = self.transport
        reader = asyncio.StreamReader(limit=limit, loop=self.loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=self.loop)
        _live.discard(self)  # the connection is no longer ours to account
        self.flush()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        pending = self.take_buffered()
        if pending:
            reader.feed_data(pending)
        if self._eof:
            reader.feed_eof()
        return reader, asyncio.StreamWriter(transport, protocol, reader, self.loop)

    def at_eof(self) -> bool:
        return self._eof and not self._buffered

    async def read(self, n: int = -1, deadline: float | None = None) -> bytes:
        """The bytes received (at most ``n`` when ``n`` > 0), waiting for some; ``b""`` at the
        end of the stream. Raises TimeoutError when nothing came by ``deadline`` (loop time),
        the connection's error when it was lost with one."""
        if not self._chunks:
            if self._eof:
                if self._exc is not None and isinstance(self._exc, OSError):
                    raise self._exc
                return b""
            if self.transport is not None and self.transport.is_closing():
                raise ConnectionResetError("connection closed")
            waiter = self.loop.create_future()
            self._waiter = waiter
            if deadline is not None:
                self._arm(deadline)
            try:
                await waiter
            finally:
                self._waiter = None
                self._deadline = 0.0
            if not self._chunks:
                if self._exc is not None and isinstance(self._exc, OSError):
                    raise self._exc
                return b""
        chunks = self._chunks
        data = chunks.popleft()
        if chunks and len(data) < JOIN_BELOW:
            # Small pieces are joined (a head split over reads); big ones go as they came:
            # joining them would copy every byte once more.
            parts = [data]
            size = len(data)
            while chunks and size < JOIN_BELOW:
                piece = chunks.popleft()
                parts.append(piece)
                size += len(piece)
            data = b"".join(parts)
        if 0 < n < len(data):
            chunks.appendleft(data[n:])
            data = data[:n]
        self._buffered -= len(data)
        if self._paused_reading and self._buffered < LOW_WATER and self.transport is not None:
            self._paused_reading = False
            self.transport.resume_reading()
        return data

    def _arm(self, deadline: float) -> None:
        self._deadline = deadline
        timer = self._timer
        if timer is None:
            self._timer = self.loop.call_at(deadline, self._on_timer)
        elif timer.when() > deadline:
            timer.cancel()
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done() or not self._deadline:
            return  # no read waits: the next one arms the timer again
        if self.loop.time() >= self._deadline:
            self._waiter = None
            waiter.set_exception(TimeoutError())
        else:
            self._timer = self.loop.call_at(self._deadline, self._on_timer)

    # --- writing ------------------------------------------------------------------------

    @property
    def write_paused(self) -> bool:
        return self._write_paused

    def write(self, data: bytes) -> None:
        if self._corked:
            self._flush()
        assert self.transport is not None
        self.transport.write(data)

    def write_soon(self, data: bytes) -> None:
        """Write ``data`` at the end of this turn of the event loop, with whatever else is
        written so (at once when the pending bytes are many)."""
        corked = self._corked
        corked.append(data)
        if len(corked) > 1 and sum(map(len, corked)) > CORK_LIMIT:
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        handle = self._flush_handle
        if handle is not None:
            handle.cancel()
            self._flush_handle = None
        corked = self._corked
        if not corked:
            return
        transport = self.transport
        if transport is not None and not transport.is_closing():
            if len(corked) == 1:
                transport.write(corked[0])
            else:
                transport.writelines(corked)  # one vectored write, nothing copied
        corked.clear()

    def flush(self) -> None:
        """Write what ``write_soon`` holds now."""
        if self._corked:
            self._flush()

    async def drain(self) -> None:
        """Wait while the transport's buffer is full; raise when the connection was lost."""
        if self._corked:
            self._flush()
        if self._closed.done():
            raise ConnectionResetError("connection lost")
        if not self._write_paused:
            return
        drain = self._drain_waiter
        if drain is None:
            drain = self._drain_waiter = self.loop.create_future()
        await drain

    def can_write_eof(self) -> bool:
        return self.transport is not None and self.transport.can_write_eof()

    def write_eof(self) -> None:
        self.flush()
        if self.transport is not None:
            self.transport.write_eof()

    # --- closing ------------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def close(self) -> None:
        self.flush()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if self.transport is None:
            return default
        return self.transport.get_extra_info(name, default)

    async def aclose(self, timeout: float = 1.0) -> None:
        """Close and wait (a bounded time) for the transport to be gone."""
        with contextlib.suppress(Exception):
            self.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(timeout):
                await self.wait_closed()


# --- the process's budget for slow readers -----------------------------------------------------

# Every connection of this process (registered while it is a ConnIO's), for ``cut_slowest``.
_live: set[ConnIO] = set()


def held(io: ConnIO) -> int:
    """The bytes ``io`` holds: received and unread, and written but not yet sent."""
    transport = io.transport
    waiting = 0
    if transport is not None and not transport.is_closing():
        waiting = transport.get_write_buffer_size()
    return io._buffered + waiting + sum(map(len, io._corked))


def cut_slowest(cap: int) -> tuple[int, int]:
    """When the connections of this process hold more than ``cap`` bytes in all, abort those
    holding the most (the slowest readers: what they do not take piles up) until what is left
    is under nine tenths of the cap. Returns (bytes held after, connections cut)."""
    sizes = [(held(io), io) for io in _live]
    total = sum(size for size, _ in sizes)
    if cap <= 0 or total <= cap:
        return total, 0
    cut = 0
    goal = cap * 9 // 10
    sizes.sort(key=lambda pair: pair[0], reverse=True)
    for size, io in sizes:
        if total <= goal or size == 0:
            break
        io.abort()
        _live.discard(io)
        total -= size
        cut += 1
    return total, cut
