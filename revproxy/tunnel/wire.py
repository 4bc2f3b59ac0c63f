"""Reading an agent connection: the protocol under its TLS transport, for both ends.

Rule of this room: a read goes from TLS straight into the HTTP/2 endpoint, in whole frames.
The transport decrypts into a buffer of the connection's own (``asyncio.BufferedProtocol``:
no joined chunks, no ``StreamReader`` buffer and no copy out of it), and what is handed to the
endpoint ends on a frame boundary, so the endpoint never holds a partial frame and never
glues it to the next read (each such glue copied the whole read). A partial frame stays
where it is and the next read lands after it; the buffer is compacted only when little room
is left, and dropped when the connection goes quiet (an idle connection holds none).

Until ``attach`` the bytes read are kept (the TLS handshake is done, the ALPN not yet looked
at): ``attach(sink)`` hands them to the link first, ``as_streams()`` hands the connection to
a ``StreamReader`` for the other ALPNs (enrolment, egress), whose protocol it then is. Writing
goes through ``LinkWriter``, a ``StreamWriter`` whose ``drain`` and ``wait_closed`` are this
protocol's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

__all__ = ["LinkProtocol", "LinkWriter"]

# The buffer a busy connection reads into: room for several reads and a frame of the largest
# size we accept (``link.FRAME_SIZE``) whatever the buffer holds of a partial one.
BUFFER_SIZE = 768 * 1024
# Less room than this after the bytes held: they move to the front first.
COMPACT_BELOW = 64 * 1024
# A read that brought less than this and left nothing held: the connection is quiet, its
# buffer is let go (the next read makes a new one).
KEEP_FROM = 16 * 1024
# Before ``attach``: bytes kept; beyond this the transport stops reading until a decision.
EARLY_LIMIT = 64 * 1024
# A read of no more than this, with nothing held, lands in a buffer the connections of the
# process share (what it brought is taken out before the next read): a quiet connection,
# or one that mostly sends, needs no buffer of its own.
SMALL_READ = 16 * 1024
_SHARED = bytearray(SMALL_READ)


class LinkProtocol(asyncio.BufferedProtocol):
    """The protocol of one agent connection's TLS transport (see the module docstring).

    ``preamble``: bytes at the start that are no frame (the client preface the agent, an
    HTTP/2 server, receives). ``max_frame``: a frame header announcing more than this is
    handed on as it is, for the endpoint to refuse.
    """

    def __init__(self, *, preamble: int = 0, max_frame: int = 256 * 1024) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.preamble = preamble
        self.max_frame = max_frame
        self._early: bytearray | None = bytearray()
        self._lent = False  # the last buffer lent was the shared one
        self._held_back = False  # we paused reading (too much before attach, or the end)
        self._sink: Callable[[bytes], None] | None = None
        self._buf: bytearray | None = None
        self._start = 0
        self._end = 0
        self._eof = False
        self._lost = False
        self._lost_exc: Exception | None = None
        self._paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._draining: asyncio.Task[None] | None = None
        self.closed: asyncio.Future[None] = self.loop.create_future()
        # Done when the link must end: None for the peer's end, else the failure (a sink's
        # exception, the connection's error).
        self.finished: asyncio.Future[Exception | None] = self.loop.create_future()

    # --- deciding what the connection is

    def attach(self, sink: Callable[[bytes], None]) -> None:
        """From now on every read goes to ``sink`` in whole frames (what was read already
        first). A sink that raises ends the link (``finished``)."""
        early, self._early = self._early or bytearray(), None
        self._sink = sink
        if early:
            buf = self._buf = bytearray(max(BUFFER_SIZE, len(early) + COMPACT_BELOW))
            buf[: len(early)] = early
            self._start, self._end = 0, 0
            self._taken(len(early))
        if self._eof or self._lost:
            self._finish(self._lost_exc)
        else:
            self._resume()

    def as_streams(self, limit: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The connection as a reader and a writer (the other ALPNs): a ``StreamReader``'s
        protocol takes over the transport, with what was read already."""
        assert self.transport is not None and self._sink is None
        early, self._early = self._early or bytearray(), None
        reader = asyncio.StreamReader(limit=limit, loop=self.loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=self.loop)
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        if early:
            reader.feed_data(bytes(early))
        if self._paused:
            protocol.pause_writing()
        if self._lost:
            protocol.connection_lost(self._lost_exc)
        elif self._eof:
            reader.feed_eof()
        else:
            self._resume()
        return reader, asyncio.StreamWriter(self.transport, protocol, reader, self.loop)

    # --- asyncio.BufferedProtocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is no asyncio.Transport subclass, but has its methods.
        self.transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        buf = self._buf
        if self._sink is None or (buf is None and sizehint <= SMALL_READ):
            self._lent = True  # a short read: the process's shared buffer
            return memoryview(_SHARED)
        self._lent = False
        if buf is None:
            buf = self._buf = bytearray(BUFFER_SIZE)
            self._start = self._end = 0
        elif len(buf) - self._end < COMPACT_BELOW:
            held = self._end - self._start
            view = memoryview(buf)
            view[:held] = view[self._start : self._end]
            self._start, self._end = 0, held
        return memoryview(buf)[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        if self._sink is None:
            early = self._early
            if early is None:
                return  # handed to a StreamReader meanwhile (not called then)
            early += memoryview(_SHARED)[:nbytes]
            if len(early) > EARLY_LIMIT and self.transport is not None and not self._held_back:
                self._held_back = True  # nobody has decided yet what this connection is
                self.transport.pause_reading()
            return
        if self._lent:
            self._lent = False
            cut = self._boundary(_SHARED, 0, nbytes)
            if cut < nbytes:  # the start of a frame: it is kept until the rest comes
                rest = nbytes - cut
                buf = self._buf = bytearray(max(BUFFER_SIZE, rest + COMPACT_BELOW))
                buf[:rest] = memoryview(_SHARED)[cut:nbytes]
                self._start, self._end = 0, rest
            if cut:
                self._deliver(bytes(memoryview(_SHARED)[:cut]))
            return
        self._taken(nbytes)

    def _taken(self, nbytes: int) -> None:
        buf = self._buf
        assert buf is not None
        self._end += nbytes
        end = self._end
        cut = self._boundary(buf, self._start, end)
        if cut == self._start:
            return
        data = bytes(memoryview(buf)[self._start : cut])
        self._start = cut
        if cut == end:
            self._start = self._end = 0
            if nbytes < KEEP_FROM:
                self._buf = None  # quiet: an idle connection holds no buffer
        self._deliver(data)

    def _boundary(self, buf: bytearray, start: int, end: int) -> int:
        """Where the whole frames from ``start`` end (the preamble counts as whole)."""
        i = start
        if self.preamble:
            skip = min(self.preamble, end - i)
            self.preamble -= skip
            i += skip
        while end - i >= 9:
            length = (buf[i] << 16) | (buf[i + 1] << 8) | buf[i + 2]
            if length > self.max_frame:
                return end  # the endpoint refuses it: it gets everything now
            if i + 9 + length > end:
                break
            i += 9 + length
        return i

    def _deliver(self, data: bytes) -> None:
        try:
            assert self._sink is not None
            self._sink(data)
        except Exception as exc:  # the link's decision (a protocol error): it ends
            self._finish(exc)

    def eof_received(self) -> bool:
        self._eof = True
        if self._sink is not None:
            self._finish(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._lost_exc = exc
        if not self.closed.done():
            self.closed.set_result(None)
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_exception(exc or ConnectionResetError("connection lost"))
        if self._sink is not None:
            self._finish(exc)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)

    # --- the link's side

    async def drained(self) -> None:
        """Return once the transport takes more (at once when it is not paused)."""
        if self._lost:
            raise ConnectionResetError("connection lost")
        if not self._paused:
            return
        waiter: asyncio.Future[None] = self.loop.create_future()
        self._drain_waiters.append(waiter)
        try:
            await waiter
        finally:
            self._drain_waiters.remove(waiter)

    def hold_until_drained(self, timeout: float) -> None:
        """Read no more until the transport took what is queued for the peer (a peer that
        does not read the replies its frames made us queue must not make us buffer without
        bound); after ``timeout`` the link ends."""
        if self._draining is not None or self.finished.done():
            return
        if self.transport is not None and not self._held_back:
            self._held_back = True
            self.transport.pause_reading()
        self._draining = self.loop.create_task(self._drain(timeout))

    async def _drain(self, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self.drained()
        except (ConnectionError, OSError, TimeoutError) as exc:
            self._finish(exc)
            return
        finally:
            self._draining = None
        self._resume()

    def stop(self) -> None:
        """The link is over: a drain still awaited is not."""
        if self._draining is not None:
            self._draining.cancel()

    def _resume(self) -> None:
        if self.finished.done():
            return
        if self._held_back and self.transport is not None:
            self._held_back = False
            self.transport.resume_reading()

    def _finish(self, exc: Exception | None) -> None:
        if self.transport is not None and not self._lost and not self._held_back:
            self._held_back = True
            self.transport.pause_reading()
        if not self.finished.done():
            self.finished.set_result(exc)


class LinkWriter(asyncio.StreamWriter):
    """The writer of an agent connection read by a ``LinkProtocol``."""

    def __init__(
        self,
        transport: asyncio.Transport,
        protocol: LinkProtocol,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(transport, protocol, None, loop)
        self.link_protocol = protocol

    async def drain(self) -> None:
        if self.transport.is_closing():
            await asyncio.sleep(0)  # let the connection's loss be learnt (as StreamWriter)
        await self.link_protocol.drained()

    async def wait_closed(self) -> None:
        await asyncio.shield(self.link_protocol.closed)
