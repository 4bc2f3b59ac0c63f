"""The bytes of one HTTP/1.1 connection (client side or backend side), as the pipeline reads
and writes them: an ``asyncio.Protocol`` with what ``StreamReader``/``StreamWriter`` offer and
less of their cost.

Rule of this room: one object per connection, nothing allocated per read beyond the bytes and
one future when the read must wait. Timeouts are deadlines (loop time), not timers per read:
a connection owns at most one timer, armed when a read first waits and moved forward lazily —
when it fires before the current deadline it re-arms itself instead — so setting a deadline
costs a float store. Reads stop the transport when more than ``limit`` bytes
(``global.buffer_size``) wait unread (memory per connection stays bounded); writes wait in
``drain`` while the transport says its buffer is full. Small writes made in one turn of the
event loop go out as one write (``write_soon``): a response head, its body and its end cost one
system call (one TLS record). The duck-typed reader/writer methods ``relay.relay_streams`` uses
are here too. Every connection is weighed in the process's budget for slow readers
(``cut_slowest``).

Pacing (``follow``): while a response is relayed from an origin connection to a client
connection (its *sink*), the origin is read no further ahead than the client's socket takes at
once, so what a slow reader has not taken stays in the kernels' buffers, not in ours (uvloop
keeps a partly written ``bytes`` whole until its last byte is sent, so a write the socket does
not take pins all of it). The sink's socket may hold ``TCP_NOTSENT_LOWAT`` bytes unsent — a
per-client limit, from ``LOWAT_START`` up to two full reads for a client that keeps up, halved
whenever the socket refused bytes — and its room is that limit minus what the kernel
(``SIOCOUTQNSD``) and the transport have not sent yet: one ioctl per read of the origin. While
the room holds a full read of the transport (``READ_MAX``), reads are the transport's own and
nothing else changes; below that they are sized to the room (a ``BufferedProtocol`` takes the
transport's reads, at most ``limit`` each); with none left, reading waits until the sink's
transport has passed on what it holds (``resume_writing``: its write limit is one byte while
paced), and the time it waits does not count against the origin's deadline. A client that took
nothing is sent a small probe, which its transport holds until it is sent (a TLS transport
hands it to the one beneath without a word: after two, the room is looked at again later). A
client not known to keep up is paced from the origin's first read, the response head; a known
one from its body.

A file (a static response) goes out by ``sendfile``: sendfile(2) from the page cache to a
plain socket, on a duplicate of its descriptor, once the transport has written what it held;
the socket is waited for while full (the loop runs on, nothing is read ahead of the client),
and a socket that takes nothing for a while ends it.

Callbacks (``push``): the plain HTTP/1.1 exchange (edge/fast_exchange.py) takes the bytes as
they arrive instead of reading them — ``data_received`` hands each piece to the callback, then
paces as the next ``read`` would; the end of the stream and the lost connection are told to
it, and ``expect`` sets the deadline the connection's one timer holds it to (the time its
reading waits for a sink does not count, as for a read). ``push(None)`` goes back to reading:
what arrives is kept, bounded by ``limit`` or the sink's room, until ``read`` or ``take_now``
takes it. ``on_resume`` is the callback form of ``drain``.

A sink is anything that keeps ``Sink``'s contract: a client's ``ConnIO`` (above), an HTTP/2
stream (``h2_channel.py``: its room is what its windows and its connection's socket let it
send, and it calls ``room_changed`` on WINDOW_UPDATE, so it is never probed), or an origin's
``ConnIO`` when an HTTP/1.1 upload follows it (the exchange's ``_upload``).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import socket
import sys
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, cast

_ioctl: Callable[..., Any] | None
try:
    import fcntl

    _ioctl = fcntl.ioctl
except ImportError:  # not on this platform: rooms are not measured (``_can_measure``)
    _ioctl = None

# Unread bytes above which the transport stops reading, by default (``global.buffer_size``);
# reading resumes once the reader has taken all but a quarter of the limit.
HIGH_WATER = 64 * 1024
# The most one read of a transport brings (asyncio: 256 KiB; uvloop: 256,000 bytes).
READ_MAX = 256 * 1024
# Unsent bytes a paced client's socket may hold (TCP_NOTSENT_LOWAT): a new client starts at
# LOWAT_START; the limit doubles each time the client has taken as much since it was set and
# holds no more than half of it unsent, up to two full reads (a client that keeps up is read
# for in whole reads), and halves each time our transport must hold what the socket would not
# take, down to LOWAT_MIN.
LOWAT_START = 16 * 1024
LOWAT_MIN = 4 * 1024
LOWAT_MAX = 2 * READ_MAX
# The least a paced origin reads when its client has (almost) no room and nothing is waiting:
# what the client's socket does not take waits in its transport, which says when it is sent.
PROBE = 4 * 1024
# After two probes in a row that the client's transport did not hold (TLS), the room is
# looked at again after RETRY_FIRST seconds, then twice as long each time, up to RETRY_MAX.
RETRY_FIRST = 0.05
RETRY_MAX = 2.0
# ioctl(2) request for a TCP socket's bytes not yet sent (linux/sockios.h).
SIOCOUTQNSD = 0x894B
_TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)
# Bytes held by ``write_soon`` before they are written at once.
CORK_LIMIT = 64 * 1024
# ``read`` joins received pieces while they are smaller than this.
JOIN_BELOW = 64 * 1024
# The most one sendfile(2) call is asked to send: the loop runs others between pieces.
SENDFILE_PIECE = 1024 * 1024


class Sink(Protocol):
    """Where a paced connection's bytes are relayed to (``ConnIO.follow``): a client's
    connection (``ConnIO``), or one HTTP/2 stream (``net/h2_channel.py``). The source asks it,
    before each read, how much it takes now; the sink calls the source's ``room_changed`` when
    that may have grown (and ``hold`` when it is full), so that reading goes on."""

    @property
    def unproven(self) -> bool:
        """Pace the source from its first read (the response head), not from the body on."""
        ...

    @property
    def probes(self) -> bool:
        """Whether the sink may not say when its room grows: the source then reads a small
        probe when the sink has (almost) no room (see ``ConnIO``)."""
        ...

    @property
    def closing(self) -> bool:
        """The sink is closing: the source reads on, the next write to the sink says so."""
        ...

    @property
    def holding(self) -> bool:
        """The sink holds bytes it could not pass on: nothing is read until it says."""
        ...

    def lead(self, source: ConnIO) -> bool:
        """``source`` follows us from now on; False when our room cannot be measured (the
        source is then not paced)."""
        ...

    def unlead(self) -> None:
        """The relay to us is over."""
        ...

    def room(self) -> int:
        """Bytes we take now without holding any."""
        ...


class ConnIO(asyncio.Protocol):
    """Reads, writes and deadlines of one connection (see the module's rule)."""

    __slots__ = (
        "_allow",
        "_buffered",
        "_chunks",
        "_closed",
        "_corked",
        "_deadline",
        "_drain_waiter",
        "_eof",
        "_exc",
        "_fd",
        "_floor",
        "_flush_handle",
        "_held_at",
        "_lagging",
        "_lowat",
        "_on_data",
        "_on_end",
        "_on_resume",
        "_on_timeout",
        "_over_ssl",
        "_paused_reading",
        "_probes",
        "_retry",
        "_sink",
        "_sized",
        "_sock",
        "_source",
        "_taken",
        "_timer",
        "_waiter",
        "_write_paused",
        "_written",
        "limit",
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
        # Unread bytes above which reading stops (when not paced by a sink).
        self.limit = _buffer_size
        # Pacing (``follow``): the connection our bytes are relayed to, or the one relayed to
        # us; the bytes we may still read; the allowance below which reading stops (a full
        # read, or 1 while reads are sized); the BufferedProtocol taking our transport's reads
        # while they are sized.
        self._sink: Sink | None = None
        self._source: ConnIO | None = None
        self._allow = 0
        self._floor = READ_MAX
        self._sized: _SizedReads | None = None
        # Since when reading has waited for the sink (loop time; 0.0: it does not); probes in
        # a row that the sink's transport did not hold, and the timer that paces us again
        # when they are too many.
        self._held_at = 0.0
        self._probes = 0
        self._retry: asyncio.TimerHandle | None = None
        # As a sink: our socket's TCP_NOTSENT_LOWAT (0: not set yet, -1: cannot), the socket
        # and its fd.
        self._lowat = 0
        self._sock: Any = None
        self._fd = -1
        # Bytes written while an origin followed us, and how many of them the client had
        # taken when our unsent limit last changed; whether it had not taken everything when
        # the last relay ended.
        self._written = 0
        self._taken = 0
        self._lagging = False
        # Callbacks (``push``): the bytes, the end of the stream (with the error the
        # connection was lost with, if any), the deadline passed; ``on_resume``'s callback.
        self._on_data: Callable[[bytes], None] | None = None
        self._on_end: Callable[[BaseException | None], None] | None = None
        self._on_timeout: Callable[[], None] | None = None
        self._on_resume: Callable[[], None] | None = None

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
        on_data = self._on_data
        if on_data is not None:
            if self._sink is None:
                on_data(data)
                return
            self._allow -= len(data)
            if self._allow < self._floor:
                self._stop_reading()
            on_data(data)
            if self._sink is not None:
                self._pace()  # as the next read would
            return
        self._chunks.append(data)
        self._buffered += len(data)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        if self._sink is None:
            if self._buffered > self.limit and not self._paused_reading and self.transport:
                self._paused_reading = True
                self.transport.pause_reading()
        else:
            self._allow -= len(data)
            if self._allow < self._floor:  # the next read may not fit in the sink's room
                self._stop_reading()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        on_end = self._on_end
        if on_end is not None and self._on_data is not None:
            on_end(None)
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
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if not self._closed.done():
            self._closed.set_result(None)
        if self._source is not None:
            self._source._pace()  # an origin held for us reads on: its exchange learns of it
        resumed = self._on_resume
        if resumed is not None:
            self._on_resume = None
            resumed()
        on_end = self._on_end
        if on_end is not None and self._on_data is not None:
            on_end(exc)

    def pause_writing(self) -> None:
        self._write_paused = True
        source = self._source
        if source is not None:
            source._hold()  # our transport holds bytes: the origin waits until they are sent
            if self._lowat > LOWAT_MIN:
                self._taken = self._written
                self._set_lowat(max(self._lowat >> 1, LOWAT_MIN))

    def resume_writing(self) -> None:
        self._write_paused = False
        drain = self._drain_waiter
        self._drain_waiter = None
        if drain is not None and not drain.done():
            drain.set_result(None)
        source = self._source
        if source is not None:
            source._pace()
        resumed = self._on_resume
        if resumed is not None:
            self._on_resume = None
            resumed()

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
        if self._paused_reading and self._sink is None and self.transport is not None:
            self._paused_reading = False
            self.transport.resume_reading()
        return data

    def as_streams(
        self, limit: int = 1024 * 1024
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
        if self._sink is not None:
            self._pace()
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
        return self._take(n)

    def take_now(self, n: int = -1) -> bytes | None:
        """``read`` without the wait: None when ``read`` would wait."""
        if self._sink is not None:
            self._pace()
        if self._chunks:
            return self._take(n)
        if self._eof:
            if self._exc is not None and isinstance(self._exc, OSError):
                raise self._exc
            return b""
        if self.transport is not None and self.transport.is_closing():
            raise ConnectionResetError("connection closed")
        return None

    def _take(self, n: int) -> bytes:
        """What ``read`` returns when bytes are there (at most ``n`` when ``n`` > 0)."""
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
        if (
            self._paused_reading
            and self._sink is None
            and self._buffered <= self.limit >> 2
            and self.transport is not None
        ):
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
        if not self._deadline:
            return
        if (waiter is None or waiter.done()) and (
            self._on_timeout is None or self._on_data is None
        ):
            return  # no read waits (nor a callback): the next one arms the timer again
        if self._held_at:
            return  # reading waits for our sink: armed again when it goes on (_released)
        if self.loop.time() >= self._deadline:
            if waiter is not None and not waiter.done():
                self._waiter = None
                waiter.set_exception(TimeoutError())
            else:
                self._deadline = 0.0
                timed_out = self._on_timeout
                assert timed_out is not None
                timed_out()
        else:
            self._timer = self.loop.call_at(self._deadline, self._on_timer)

    # --- callbacks (``push``) -------------------------------------------------------------

    def push(
        self,
        on_data: Callable[[bytes], None] | None,
        on_end: Callable[[BaseException | None], None] | None = None,
        on_timeout: Callable[[], None] | None = None,
    ) -> None:
        """Hand what arrives to ``on_data`` from now on (see the module's rule); the end of
        the stream to ``on_end`` (with the error the connection was lost with, or None), a
        passed ``expect`` deadline to ``on_timeout``. ``push(None)``: back to reading. What
        was received before is not handed on: take it first (``take_now``)."""
        self._on_data = on_data
        self._on_end = on_end
        self._on_timeout = on_timeout
        if on_data is None:
            self._deadline = 0.0
        elif self._sink is None:
            self._own_pace()

    def expect(self, deadline: float) -> None:
        """While pushing: call ``on_timeout`` when nothing arrives by ``deadline`` (loop time;
        0: no deadline). Moving it later costs a float store (the timer re-arms itself)."""
        self._deadline = deadline
        if deadline:
            self._arm(deadline)

    def on_resume(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` once, when the transport takes writes again or the connection
        is lost (``drain``'s wait, as a callback); None: forget it."""
        self._on_resume = callback

    @property
    def lost(self) -> bool:
        """The connection is gone (``drain`` would raise)."""
        return self._closed.done()

    # --- pacing -------------------------------------------------------------------------

    def follow(self, sink: Sink | None) -> None:
        """Relay to ``sink`` from now on: read no further ahead than it can take (see the
        module's rule; a sink whose room cannot be measured changes nothing: reading stops
        past ``limit`` unread bytes). ``follow(None)`` when the relay is over."""
        old = self._sink
        if old is sink:
            return
        if old is not None:
            self._unfollow(old)
        transport = self.transport
        if sink is None or transport is None or transport.is_closing() or not sink.lead(self):
            self._own_pace()
            return
        self._sink = sink
        self._floor = READ_MAX
        self._pace()

    @property
    def waiting_for_sink(self) -> bool:
        """As a source: reading waits for our sink to take what it was given (a read that
        times out now waited for the sink, not for our peer)."""
        return self._held_at != 0.0

    def room_changed(self) -> None:
        """As a source: our sink's room may have grown (or it is gone): read accordingly."""
        self._pace()

    def hold(self) -> None:
        """As a source: our sink holds bytes: read nothing until ``room_changed``."""
        self._hold()

    # --- as a sink (``Sink``) ---------------------------------------------------------------

    @property
    def unproven(self) -> bool:
        """As a sink: a new client, or one that had not taken everything when the last relay
        to it ended: an origin relaying to us is paced from its first read (the response head
        and the body after it), not from the body loop on."""
        return self._lowat == 0 or self._lagging

    @property
    def probes(self) -> bool:
        return True  # the kernel sends what we hold without a word

    @property
    def closing(self) -> bool:
        transport = self.transport
        return transport is None or transport.is_closing()

    @property
    def holding(self) -> bool:
        return self._write_paused

    def lead(self, source: ConnIO) -> bool:
        transport = self.transport
        if transport is None or not self._can_measure():
            return False
        self._source = source
        # The source's reads wait on our transport as soon as it holds anything (high=1: TLS
        # transports pause at the high mark itself, others above it; 0 would pause an empty
        # TLS transport for ever).
        transport.set_write_buffer_limits(high=1, low=0)
        return True

    def unlead(self) -> None:
        self._source = None
        transport = self.transport
        if transport is not None and not transport.is_closing():
            # What we hold corked goes out at the end of this loop turn: not the client's lag.
            self._lagging = self._write_paused or self._unsent(corked=False) > 0
            transport.set_write_buffer_limits()

    # --- as a source ----------------------------------------------------------------------

    def _unfollow(self, sink: Sink) -> None:
        sink.unlead()
        self._sink = None
        self._probes = 0
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        transport = self.transport
        if self._sized is not None and transport is not None and not transport.is_closing():
            self._stop_reading()
            transport.set_protocol(self)
        self._sized = None
        self._released()
        self._own_pace()

    def _own_pace(self) -> None:
        """Reading by our own limit (no sink)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._buffered > self.limit:
            self._stop_reading()
        elif self._paused_reading:
            self._paused_reading = False
            transport.resume_reading()

    def _stop_reading(self) -> None:
        if not self._paused_reading and self.transport is not None:
            self._paused_reading = True
            self.transport.pause_reading()
            if self._sink is not None and not self._held_at:
                self._held_at = self.loop.time()

    def _released(self) -> None:
        """Reading held for our sink goes on: the time it waited does not count against our
        peer's deadline (the client was slow, not the origin)."""
        held_at = self._held_at
        if held_at:
            self._held_at = 0.0
            if self._deadline:
                self._deadline += self.loop.time() - held_at
                if self._waiter is not None or self._on_timeout is not None:
                    self._arm(self._deadline)

    def _hold(self) -> None:
        """Our sink's transport holds bytes: read nothing until it has written them."""
        self._allow = 0
        self._probes = 0
        self._stop_reading()

    def _retried(self) -> None:
        self._retry = None
        self._pace()

    def _pace(self) -> None:
        """Measure the sink's room and read accordingly (see the module's rule)."""
        sink = self._sink
        transport = self.transport
        if sink is None or transport is None or transport.is_closing():
            return
        if sink.closing:
            allow = PROBE  # the client is gone: read on, the next write to it says so
        elif sink.holding:
            allow = 0  # it says when it has passed its bytes on (room_changed)
        else:
            allow = sink.room() - self._buffered
            if allow >= PROBE:
                self._probes = 0
            elif not self._buffered and sink.probes:
                # Nothing to write and (almost) no room: a small read all the same. What our
                # sink's transport cannot pass on at once it holds, and tells us when it is sent.
                # Unless probes went out and none was held: a TLS transport hands its bytes to
                # one beneath it, which holds them without a word; then look again later.
                self._probes += 1
                if self._probes <= 2:
                    allow = PROBE
                elif self._retry is None:
                    delay = min(RETRY_FIRST * (1 << (self._probes - 3)), RETRY_MAX)
                    self._retry = self.loop.call_later(delay, self._retried)
        self._allow = allow
        sized = self._sized is not None
        want_sized = allow < (READ_MAX * 3 // 2 if sized else READ_MAX)
        if want_sized != sized:
            self._stop_reading()
            if want_sized:
                reads = _SizedReads(self)
                self._sized = reads
                self._floor = 1
                transport.set_protocol(reads)
            else:
                self._sized = None
                self._floor = READ_MAX
                transport.set_protocol(self)
        if allow >= self._floor:
            if self._paused_reading:
                self._paused_reading = False
                transport.resume_reading()
                self._released()
        else:
            self._stop_reading()

    def _can_measure(self) -> bool:
        """Whether our room can be measured (a TCP socket on Linux); the first time, our
        socket's TCP_NOTSENT_LOWAT is set."""
        if self._lowat == 0:
            self._lowat = -1
            sock = self.get_extra_info("socket")
            if sock is not None and sys.platform == "linux" and _ioctl is not None:
                with contextlib.suppress(OSError, ValueError, AttributeError):
                    if sock.family in (socket.AF_INET, socket.AF_INET6):
                        fd = sock.fileno()
                        _outq(fd)
                        self._sock = sock
                        self._fd = fd
                        self._set_lowat(LOWAT_START)
        return self._lowat > 0

    def _set_lowat(self, lowat: int) -> None:
        try:
            self._sock.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, lowat)
        except OSError:
            return
        self._lowat = lowat

    def _unsent(self, corked: bool = True) -> int:
        """As a sink: what our transport and the kernel have not sent yet (-1: unknown);
        ``corked``: with what we hold until the end of the loop turn."""
        transport = self.transport
        if transport is None or transport.is_closing() or self._lowat <= 0:
            return -1
        unsent = transport.get_write_buffer_size()
        if corked and self._corked:
            unsent += sum(map(len, self._corked))
        try:
            return unsent + _outq(self._fd)
        except OSError:
            return -1

    def room(self) -> int:
        """As a sink: bytes our socket takes now without any being held by us — its unsent
        limit minus what the kernel and our transport have not sent yet (0 once closing). A
        client that took what it had (half of the limit or more) may hold twice as much."""
        unsent = self._unsent()
        if unsent < 0:
            return 0
        lowat = self._lowat
        if lowat < LOWAT_MAX and unsent <= lowat >> 1:
            taken = self._written - unsent
            if taken - self._taken >= lowat:  # the client took a whole limit since it was set
                self._taken = taken
                self._set_lowat(min(lowat * 2, LOWAT_MAX))
        return self._lowat - unsent

    # --- writing ------------------------------------------------------------------------

    @property
    def write_paused(self) -> bool:
        return self._write_paused

    def write(self, data: bytes) -> None:
        if self._corked:
            self._flush()
        assert self.transport is not None
        if self._source is not None:
            self._written += len(data)
        self.transport.write(data)

    def write_soon(self, data: bytes) -> None:
        """Write ``data`` at the end of this turn of the event loop, with whatever else is
        written so (at once when the pending bytes are many: a big piece is in the kernel's
        hands before the next read is paced)."""
        corked = self._corked
        corked.append(data)
        if len(data) >= CORK_LIMIT or (len(corked) > 1 and sum(map(len, corked)) > CORK_LIMIT):
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
            if self._source is not None:
                self._written += sum(map(len, corked))
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

    # --- sending a file (sendfile(2)) -----------------------------------------------------

    @property
    def can_sendfile(self) -> bool:
        """Whether ``sendfile`` can be used: an open stream socket without TLS."""
        transport = self.transport
        if self._over_ssl or transport is None or transport.is_closing():
            return False
        sock = transport.get_extra_info("socket")
        return hasattr(os, "sendfile") and sock is not None and sock.type == socket.SOCK_STREAM

    async def sendfile(
        self,
        fd: int,
        offset: int,
        count: int,
        stall_timeout: float,
        sent: Callable[[int], None],
    ) -> int:
        """Send ``count`` bytes of the regular file ``fd`` from ``offset`` with sendfile(2):
        from the kernel's page cache to the socket, never through our memory (``can_sendfile``
        must hold). What was written before goes first: our transport is emptied before. The
        socket is given what it takes without blocking and waited for while it is full, so
        the loop runs on and a slow reader costs no memory of ours; ``sent(n)`` is told of
        each piece it took. Returns the bytes sent: ``count``, or fewer when the file ended
        first. Raises TimeoutError when the socket took nothing for ``stall_timeout`` seconds,
        ConnectionError when the connection was lost (or another OSError of sendfile(2))."""
        transport = self.transport
        assert transport is not None and self.can_sendfile
        await self._emptied(stall_timeout)
        # Our own descriptor of the socket: the transport may close its own meanwhile (an
        # abort), and that number could then name another connection.
        out = os.dup(transport.get_extra_info("socket").fileno())
        done = 0
        try:
            while done < count:
                if transport.is_closing():
                    raise ConnectionResetError("connection closed")
                try:
                    n = os.sendfile(out, fd, offset + done, min(count - done, SENDFILE_PIECE))
                except BlockingIOError:
                    await self._writable(out, stall_timeout)
                    continue
                if n == 0:
                    break  # the file ended before count bytes
                done += n
                sent(n)
                if done < count:
                    await asyncio.sleep(0)  # a fast reader must not keep the loop to itself
        finally:
            os.close(out)
        return done

    async def _emptied(self, timeout: float) -> None:
        """Wait until our transport has written all it holds (the write limits are set to
        zero meanwhile, so ``resume_writing`` says when)."""
        self.flush()
        transport = self.transport
        assert transport is not None
        if not transport.get_write_buffer_size():
            return
        low, high = transport.get_write_buffer_limits()
        transport.set_write_buffer_limits(high=0, low=0)
        try:
            async with asyncio.timeout(timeout):
                await self.drain()
        finally:
            if not transport.is_closing():
                transport.set_write_buffer_limits(high=high, low=low)

    async def _writable(self, fd: int, timeout: float) -> None:
        """Wait until socket ``fd`` takes bytes again; ConnectionResetError when the
        connection is lost meanwhile, TimeoutError after ``timeout`` seconds."""
        loop = self.loop
        ready: asyncio.Future[None] = loop.create_future()

        def wake(*_: object) -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_writer(fd, wake)
        self._closed.add_done_callback(wake)
        try:
            async with asyncio.timeout(timeout):
                await ready
        finally:
            loop.remove_writer(fd)
            self._closed.remove_done_callback(wake)
        if self._closed.done():
            raise ConnectionResetError("connection lost")

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


class _SizedReads(asyncio.BufferedProtocol):
    """The protocol of a paced connection's transport while its reads must be smaller than the
    transport's own: each read takes at most the bytes its sink has room for (and at most the
    connection's ``limit``), into one buffer shared by every connection (reads never overlap)."""

    __slots__ = ("io", "view")

    def __init__(self, io: ConnIO) -> None:
        self.io = io
        self.view: memoryview | None = None

    def get_buffer(self, sizehint: int) -> memoryview:
        io = self.io
        n = min(max(io._allow, 1), io.limit)
        global _read_buffer
        if len(_read_buffer) < n:
            _read_buffer = bytearray(n)
        self.view = view = memoryview(_read_buffer)[:n]
        return view

    def buffer_updated(self, nbytes: int) -> None:
        view = self.view
        assert view is not None
        self.view = None
        self.io.data_received(bytes(view[:nbytes]))

    def eof_received(self) -> bool:
        return self.io.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.io.connection_lost(exc)

    def pause_writing(self) -> None:
        self.io.pause_writing()

    def resume_writing(self) -> None:
        self.io.resume_writing()


_read_buffer = bytearray(HIGH_WATER)
_unsent = array.array("i", [0])


def _outq(fd: int) -> int:
    """Bytes the kernel holds for socket ``fd`` and has not sent yet."""
    assert _ioctl is not None  # callers check _can_measure first
    _ioctl(fd, SIOCOUTQNSD, _unsent, True)
    return _unsent[0]


# --- process settings -----------------------------------------------------------------------------

# The ``limit`` of new connections (``global.buffer_size``).
_buffer_size = HIGH_WATER


def set_buffer_size(size: int) -> None:
    """``global.buffer_size`` of the current configuration: the limit of new connections."""
    global _buffer_size
    _buffer_size = size


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


def live_connections() -> int:
    """How many connections this process has (those a ConnIO reads and writes)."""
    return len(_live)


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
