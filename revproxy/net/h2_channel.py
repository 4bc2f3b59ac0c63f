"""The asyncio shell around one HTTP/2 endpoint (``proto/http2.py``), for both roles.

Rule of this room: every HTTP/2 duty goes through one ``flush()`` (as in hypercorn's
``protocol/h2.py``): after any command to the sans-I/O endpoint, ``flush()`` has its bytes
written, in order, by the connection's one writer — coalesced to one write per turn of the
event loop; nothing else writes to the socket. Received DATA is acknowledged when a stream's reader
asks for its next event — the previous chunk has been written to the other side by then —
so a slow reader holds back its own sender only. Sending takes what the windows allow (the
endpoint decides how much), then waits for ``WindowUpdated`` and for the socket to drain.
The connection's reader task is the only one reading its socket; it stops reading while the
peer does not read the replies its own frames made us queue (``read_after_replies``). A
stream is the pacing sink (``conn_io.Sink``) of the origin connection its response comes
from: that origin reads no more than the stream may send at once, so a stream whose window is
shut holds a few KiB, not what its origin sent.

``h2_proxy.py`` (client connections, server role) and ``dial_h2.py`` (origin connections,
client role) build on ``H2Link`` and ``H2Channel``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from revproxy.errors import H2_CANCEL
from revproxy.proto.events import (
    DataReceived,
    Event,
    InformationalReceived,
    MessageEnded,
    ResponseReceived,
    StreamReset,
    WindowUpdated,
)
from revproxy.proto.h2.connection import StreamClosed
from revproxy.proto.h2.engine import H2Endpoint

if TYPE_CHECKING:
    from revproxy.net.conn_io import ConnIO, Sink

# Bytes read from the socket at a time.
READ_SIZE = 256 * 1024
# DATA bytes a turn of the event loop may queue before they are written at once: coalescing
# small frames must not let big ones pile up outside the socket's own backpressure.
COALESCE_LIMIT = 64 * 1024
# Events a stream's reader takes from its inbox.
_DELIVERED = frozenset({DataReceived, MessageEnded, ResponseReceived, InformationalReceived})
# Longest a closing connection waits for the peer to take what is queued before it is dropped.
CLOSE_TIMEOUT = 1.0
# Origin connections: our own frames (SETTINGS and PING acks, WINDOW_UPDATEs, RST_STREAMs)
# buffered unsent beyond this stop the reading of more frames until the peer reads: a peer that
# floods PINGs or SETTINGS and never reads can't make us buffer without bound.
WRITE_BUFFER_LIMIT = 1024 * 1024
# Client connections count those replies themselves (``read_after_replies``): past this many
# bytes of them unwritten since the transport last drained, reading stops until it drains
# again. An honest client makes us queue a few (a PING ACK is 17 bytes, a SETTINGS ACK 9); one
# read of a flood makes thousands. Replies alone are counted, not responses, so that a client
# that downloads slowly keeps being read.
REPLY_BACKLOG_LIMIT = 64 * 1024
# A stream that paces its origin (``H2Channel`` as a ``conn_io.Sink``) while the connection's
# socket is behind takes this much at a time: its task then waits for the socket to drain and
# asks again, so no wake-up is needed from the socket.
PACE_PROBE = 4 * 1024


class H2Link:
    """One HTTP/2 connection: the endpoint, its one writer, and the streams being served."""

    def __init__(
        self, proto: H2Endpoint, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.proto = proto
        self.reader = reader
        self.writer = writer
        self.channels: dict[int, H2Channel] = {}
        self.closed = False
        self.unflushed = 0  # DATA bytes queued since the last write
        self._flush_pending = False
        # Below this the transport is not paused: drain() need not ask asyncio; above the
        # other, it is.
        self._low_water, self._high_water = writer.transport.get_write_buffer_limits()
        self._replies = 0  # bytes of replies written since the transport was last drained
        # The event loop, asked once (Python 3.11's get_running_loop() is a getpid() call).
        self._flush_loop: asyncio.AbstractEventLoop | None = None

    def flush(self) -> None:
        """Write whatever the endpoint queued — at the end of this turn of the event loop, so
        that the frames every stream produced in it leave in one write (one TLS record, one
        system call) instead of one each. What is queued meanwhile is bounded by the windows."""
        if not self._flush_pending and not self.closed:
            self._flush_pending = True
            loop = self._flush_loop
            if loop is None:
                loop = self._flush_loop = asyncio.get_running_loop()
            loop.call_soon(self.flush_now)

    def flush_now(self) -> None:
        """Write what the endpoint queued at once (before a close, say): the one place bytes go
        to the socket."""
        self._flush_pending = False
        self.unflushed = 0
        data = self.proto.data_to_send()
        if data and not self.closed:
            self.writer.write(data)

    @property
    def room(self) -> int:
        """Bytes the connection's socket takes before its transport pauses: its high-water
        mark minus what the endpoint queued and the transport did not write yet (paced streams
        share it, so that the one socket of many streams holds no more than the mark)."""
        transport = self.writer.transport
        return self._high_water - self.proto.queued - transport.get_write_buffer_size()

    @property
    def drain_needed(self) -> bool:
        """Whether ``drain()`` may wait (or raise): the transport is closing, or its write
        buffer is above its low-water mark (below it, the transport is not paused)."""
        transport = self.writer.transport
        return transport.is_closing() or transport.get_write_buffer_size() > self._low_water

    async def drain(self) -> None:
        """Wait while the socket's write buffer is above its limit (or raise once the
        connection is lost). The common case returns without a coroutine of asyncio's."""
        if self.drain_needed:
            await self.writer.drain()

    async def read_after_replies(self, replied: int, timeout: float) -> None:
        """The peer's frames made us queue ``replied`` bytes of replies (SETTINGS and PING
        ACKs, RST_STREAMs, WINDOW_UPDATEs): they are written now, so that the transport's
        backpressure sees them. While the peer does not read — the transport is above its
        low-water mark and over ``REPLY_BACKLOG_LIMIT`` of replies went in since it was last
        below — the reader waits for it to drain before it reads more, so a flood can't make
        us queue replies without bound. TimeoutError after ``timeout``: the peer read nothing
        meanwhile; the connection ends."""
        self.flush_now()
        if not self.drain_needed:
            self._replies = 0  # all of it is in the socket
            return
        self._replies += replied
        if self._replies > REPLY_BACKLOG_LIMIT:
            try:
                async with asyncio.timeout(timeout):
                    await self.writer.drain()
            except TimeoutError:
                raise TimeoutError(f"the peer read none of our replies in {timeout:g} s") from None
            self._replies = 0

    @property
    def write_backlog(self) -> bool:
        transport = self.writer.transport
        return transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT

    def dispatch(self, ev: Event) -> None:
        """Hand a stream-level event to its channel."""
        kind = type(ev)
        if kind in _DELIVERED:
            ch = self.channels.get(ev.stream_id)
            if ch is not None:
                ch.deliver(ev)
            return
        if kind is WindowUpdated:
            if ev.stream_id == 0:
                for each in self.channels.values():
                    each.window_opened()
                return
            ch = self.channels.get(ev.stream_id)
            if ch is not None:
                ch.window_opened()
        elif kind is StreamReset:
            assert isinstance(ev, StreamReset)
            ch = self.channels.get(ev.stream_id)
            if ch is not None:
                ch.reset_received(ev.error_code)

    def connection_lost(self) -> None:
        """The socket is gone (or about to be closed): what is queued goes first, then every
        stream's waits end."""
        self.flush_now()
        self.closed = True
        for ch in list(self.channels.values()):
            ch.wake()


class H2Channel:
    """One stream of an ``H2Link``: an inbox of received events and flow-controlled sending."""

    __slots__ = (
        "_source",
        "_stall",
        "_unacked",
        "_waiter",
        "_window",
        "bytes_in",
        "bytes_out",
        "inbox",
        "link",
        "listener",
        "reset_code",
        "stall_timeout",
        "stream_id",
    )

    def __init__(self, link: H2Link, stream_id: int, stall_timeout: float) -> None:
        self.link = link
        self.stream_id = stream_id
        self.inbox: deque[Event] = deque()
        self.reset_code: int | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        # Longest wait for the peer to open a window before the stream is given up.
        self.stall_timeout = stall_timeout
        self._unacked = 0
        self._waiter: asyncio.Future[None] | None = None
        self._window: asyncio.Future[None] | None = None
        # As a pacing sink: the origin connection relayed to this stream, and the timer that
        # gives the stream up when its window stays shut for ``stall_timeout``.
        self._source: ConnIO | None = None
        self._stall: asyncio.TimerHandle | None = None
        # A reader that takes events from callbacks (``take_event``) instead of awaiting
        # ``next_event``: called when an event arrives and when the stream breaks.
        self.listener: Callable[[], None] | None = None

    # --- what the link calls

    def deliver(self, ev: Event) -> None:
        self.inbox.append(ev)
        if type(ev) is DataReceived:
            self.bytes_in += len(ev.data)
        listener = self.listener
        if listener is not None:
            listener()
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def reset_received(self, code: int) -> None:
        self.reset_code = code
        self.wake()

    def window_opened(self) -> None:
        self._wake(self._window)
        source = self._source
        if source is not None:
            source.room_changed()

    def wake(self) -> None:
        self._wake(self._waiter)
        self._wake(self._window)
        source = self._source
        if source is not None:
            source.room_changed()  # it reads on: the exchange learns the stream is gone
        if self.listener is not None:
            self.listener()

    @staticmethod
    def _wake(fut: asyncio.Future[None] | None) -> None:
        if fut is not None and not fut.done():
            fut.set_result(None)

    # --- as a pacing sink (``conn_io.Sink``): the origin connection whose response is sent
    # on this stream reads no more than the stream may send at once — what the windows allow,
    # at most ``limit`` (global.buffer_size), and no more than the connection's socket takes —
    # and waits, its deadline paused, until a WINDOW_UPDATE (or the stream's end) wakes it.

    @property
    def unproven(self) -> bool:
        return True  # paced from the response head on (``room`` lets the head through)

    @property
    def probes(self) -> bool:
        return False  # every opened window is reported (``window_opened``)

    @property
    def closing(self) -> bool:
        return self.broken

    @property
    def holding(self) -> bool:
        return False  # the stream's task holds what the windows did not take, and waits

    def lead(self, source: ConnIO) -> bool:
        if self.broken:
            return False
        self._source = source
        return True

    def unlead(self) -> None:
        self._source = None
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def room(self) -> int:
        link = self.link
        window = link.proto.window(self.stream_id)
        if window <= 0:
            # Shut (or closed): wait for a WINDOW_UPDATE, at most ``stall_timeout``.
            if self._stall is None and not self.broken:
                loop = asyncio.get_running_loop()
                self._stall = loop.call_later(self.stall_timeout, self._stalled)
            return 0
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        source = self._source
        if source is not None and window > source.limit:
            window = source.limit
        free = link.room
        if free < window:
            # The socket is behind (other streams filled it): a small piece, after which the
            # stream's task waits for the socket to drain and the origin's next read asks again.
            return free if free >= PACE_PROBE else min(window, PACE_PROBE)
        return window

    def _stalled(self) -> None:
        """The peer kept the stream's window shut for ``stall_timeout``: give the stream up."""
        self._stall = None
        if not self.broken:
            self.reset_received(H2_CANCEL)

    # --- what the stream's task calls

    def gone(self) -> Exception:
        """The exception a wait on a reset (or lost) stream raises; subclasses choose."""
        return ConnectionResetError("HTTP/2 stream reset")

    def stalled(self) -> Exception:
        return TimeoutError("HTTP/2 peer kept its window closed")

    @property
    def broken(self) -> bool:
        return self.reset_code is not None or self.link.closed

    def acknowledge(self) -> None:
        """The last chunk taken was consumed: give its bytes back to the peer's window."""
        if self._unacked:
            self.link.proto.acknowledge(self.stream_id, self._unacked)
            self._unacked = 0
            self.link.flush()

    def take_event(self) -> Event | None:
        """``next_event`` without a wait: None when nothing is in the inbox (``listener`` is
        called when something comes, or the stream breaks: ``broken``)."""
        self.acknowledge()
        inbox = self.inbox
        if not inbox:
            return None
        ev = inbox.popleft()
        if type(ev) is DataReceived:
            self._unacked = len(ev.data)
        return ev

    async def next_event(self) -> Event:
        """The next received event; the chunk taken before is acknowledged first."""
        self.acknowledge()
        while not self.inbox:
            if self.broken:
                raise self.gone()
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiter = fut
            try:
                await fut
            finally:
                self._waiter = None
        ev = self.inbox.popleft()
        if isinstance(ev, DataReceived):
            self._unacked = len(ev.data)
        return ev

    def send_now(self, data: bytes) -> int:
        """As much of ``data`` as the windows take at once, with no wait: the bytes taken (0
        when the stream is broken, or when the socket is behind or has a block of DATA queued
        already — ``send_data`` then waits, as a caller that got less than all must)."""
        link = self.link
        if self.broken or link.unflushed + len(data) >= COALESCE_LIMIT or link.drain_needed:
            return 0
        try:
            taken = link.proto.send_data(self.stream_id, data, False)
        except StreamClosed:
            return 0
        if taken:
            link.flush()
            link.unflushed += taken
            self.bytes_out += taken
        return taken

    async def send_data(self, data: bytes | memoryview, end: bool = False) -> None:
        """Send ``data`` as the windows allow, waiting for them to open (RFC 9113 §5.2)."""
        link = self.link
        view: bytes | memoryview = data
        while True:
            if self.broken:
                raise self.gone()
            try:
                taken = link.proto.send_data(self.stream_id, view, end)
            except StreamClosed:
                raise self.gone() from None
            link.flush()
            link.unflushed += taken
            self.bytes_out += taken
            if taken == len(view):
                break
            view = memoryview(view)[taken:]
            if taken:
                await self._drain()
            else:
                await self._wait_window()
        if link.unflushed >= COALESCE_LIMIT or link.drain_needed:
            await self._drain()

    async def _drain(self) -> None:
        link = self.link
        if link.unflushed >= COALESCE_LIMIT:
            link.flush_now()  # let the socket's backpressure see it
        try:
            await link.drain()
        except (ConnectionError, OSError, RuntimeError):
            raise self.gone() from None

    async def _wait_window(self) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._window = fut
        try:
            async with asyncio.timeout(self.stall_timeout):
                await fut
        except TimeoutError:
            raise self.stalled() from None
        finally:
            self._window = None

    async def send_end(self, trailers: list[tuple[bytes, bytes]] | None) -> None:
        try:
            self.link.proto.send_end(self.stream_id, trailers or None)
        except StreamClosed:
            raise self.gone() from None
        self.link.flush()
        await self._drain()

    def close(self, code: int) -> None:
        """Done with the stream: credit back unread data, reset it if still open."""
        self.unlead()
        self.link.channels.pop(self.stream_id, None)
        self.link.proto.forget(self.stream_id, code)
        self.link.flush()
        self.reset_code = code if self.reset_code is None else self.reset_code
        self.inbox.clear()


async def close_writer(writer: asyncio.StreamWriter) -> None:
    """Close the connection, what is queued written first if the peer takes it within
    ``CLOSE_TIMEOUT``; else it is dropped: a transport closes only once its buffer is written,
    so a peer that reads nothing (a flooder) would keep the socket open for ever."""
    with contextlib.suppress(Exception):
        writer.close()
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await writer.wait_closed()
    except TimeoutError:
        writer.transport.abort()
    except Exception:  # lost already: nothing left to close
        pass


if TYPE_CHECKING:

    def _a_channel_is_a_sink(channel: H2Channel) -> Sink:
        return channel  # mypy checks that H2Channel keeps conn_io.Sink's contract
