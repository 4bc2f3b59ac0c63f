"""One connection's bytes carried by one HTTP/2 stream of an agent connection, both ways.

Rule of this room: a stream is a byte stream and nothing more — DATA frames are its bytes,
END_STREAM its half-close, RST_STREAM its reset. Flow control is HTTP/2's: received DATA is
acknowledged (WINDOW_UPDATE) only as it is handed on, so a slow reader holds back its own
sender and no other stream. Two shapes of the same thing:

- ``StreamTransport``: the stream as an ``asyncio.Transport``, so the proxy's dialer
  (``upstream/dialer.py``) keeps its own connection object (``ConnIO``) on it — HTTP/1.1
  keep-alive, h2c, WebSocket take-over and PROXY headers work unchanged over a tunnel.
- ``ChannelRelay``: the stream joined to a raw non-blocking socket, both ways — the agent's
  connection to its target, and on the proxy the client of a ``mode = "tcp"`` listener
  (``ChannelFlow``, the ``upstream.tunnel_paths.TunnelFlow`` the dialer hands the L4 path).
  Bytes go from one to the other with no socket pair or stream buffer between: a read of the
  socket goes into a buffer of the relay's own and from there into the stream's frames; a
  DATA payload goes to the socket as it came. Half-close, resets and the idle timeout are
  ``net/relay.py``'s rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from revproxy.errors import H2_CANCEL, H2_NO_ERROR, RevproxyError
from revproxy.net.conn_io import ConnIO
from revproxy.net.h2_channel import H2Channel, H2Link
from revproxy.net.relay import IDLE_TICKS, RelayEnd, RelayResult, fd_poller
from revproxy.proto.events import DataReceived, Event, MessageEnded
from revproxy.proto.h2.engine import H2Endpoint
from revproxy.proto.tunnel import Liveness
from revproxy.tunnel.wire import LinkProtocol, LinkWriter

__all__ = [
    "READ_SIZE",
    "ChannelFlow",
    "ChannelRelay",
    "CountedLink",
    "StreamTransport",
    "TransportRelay",
    "TunnelChannel",
]

# Bytes read from a local socket at a time before they go out as DATA (a bulk flow's reads;
# a relay's first reads, and those after it was quiet, are of FIRST_READ).
READ_SIZE = 256 * 1024
FIRST_READ = 16 * 1024
# Reads one direction of a ChannelRelay makes in a row, when none had to wait, before it lets
# the other tasks of the event loop run (the agent connection's reader, its pinger).
MAX_ROUNDS = 4
# A stream whose peer keeps its window shut this long is given up.
STALL_TIMEOUT = 300.0
# Write buffer limits of a StreamTransport (bytes queued for the stream, not yet sent).
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


def frames_in(link: H2Link, liveness: Liveness, data: bytes) -> list[Event]:
    """The events of whole frames received on an agent connection (either end), the peer
    heard from; a RevproxyError ends the connection, with its GOAWAY written first."""
    now = time.monotonic()
    liveness.heard(now)
    try:
        return link.proto.receive_data(data, now)
    except RevproxyError:
        link.flush_now()
        raise


class CountedLink(H2Link):
    """An agent connection, read by its ``LinkProtocol`` (``wire.py``), that keeps the bytes
    its streams carried, both ways (``revproxy ctl show tunnels``): the streams that ended are
    added up as they close, the open ones are read live."""

    def __init__(self, proto: H2Endpoint, wire: LinkProtocol, writer: LinkWriter) -> None:
        # H2Link keeps a reader for the links that read one; this one's reads are the wire's.
        super().__init__(proto, asyncio.StreamReader(), writer)
        self.wire = wire
        self.ended_in = 0
        self.ended_out = 0

    @property
    def payload_in(self) -> int:
        """Stream bytes received on this connection."""
        return self.ended_in + sum(ch.bytes_in for ch in self.channels.values())

    @property
    def payload_out(self) -> int:
        """Stream bytes sent on this connection."""
        return self.ended_out + sum(ch.bytes_out for ch in self.channels.values())


class TunnelChannel(H2Channel):
    """One stream of an agent connection."""

    __slots__ = ("_broken",)

    def __init__(self, link: H2Link, stream_id: int, stall_timeout: float) -> None:
        super().__init__(link, stream_id, stall_timeout)
        self._broken: asyncio.Future[None] | None = None

    def broken_future(self) -> asyncio.Future[None]:
        """Done once the peer reset the stream or the connection is lost."""
        if self._broken is None:
            self._broken = asyncio.get_running_loop().create_future()
            if self.broken:
                self._broken.set_result(None)
        return self._broken

    def wake(self) -> None:
        super().wake()
        fut = self._broken
        if fut is not None and self.broken and not fut.done():
            fut.set_result(None)

    @property
    def ended_by_peer(self) -> bool:
        """The peer ended the stream whole (RST_STREAM NO_ERROR): no failure of its bytes."""
        return self.reset_code == H2_NO_ERROR and not self.link.closed

    def close(self, code: int) -> None:
        link = self.link
        if isinstance(link, CountedLink) and link.channels.get(self.stream_id) is self:
            link.ended_in += self.bytes_in
            link.ended_out += self.bytes_out
        super().close(code)

    def gone(self) -> Exception:
        if self.link.closed:
            return ConnectionResetError("tunnel connection lost")
        return ConnectionResetError(f"tunnel stream reset (error code {self.reset_code})")

    def stalled(self) -> Exception:
        return TimeoutError("tunnel peer kept its window closed")


def open_channel(link: H2Link, stream_id: int) -> TunnelChannel:
    ch = TunnelChannel(link, stream_id, STALL_TIMEOUT)
    link.channels[stream_id] = ch
    return ch


class StreamTransport(asyncio.Transport):
    """A tunnel stream as a transport (the proxy side of a stream to an expose)."""

    def __init__(
        self,
        channel: TunnelChannel,
        protocol: asyncio.BaseProtocol,
        extra: dict[str, Any],
        *,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(extra)
        self._ch = channel
        self._protocol = protocol
        self._on_lost = on_lost  # told once the stream is done (its spare connection is free)
        self._out: deque[bytes] = deque()
        self._queued = 0
        self._high, self._low = HIGH_WATER, LOW_WATER
        self._write_paused = False
        self._eof_wanted = False
        self._closing = False
        self._lost = False
        # Received events are handed on from the link's callback (``_pump_in``), no task:
        # while reading is on, until the stream's end (``_in_done``).
        self._reading = True
        self._in_done = False
        self._has_out = asyncio.Event()
        # Whether the writer task waits for bytes with none queued: ``write`` may then send
        # itself (nothing can be ahead of its bytes).
        self._writer_idle = False
        self._loop = loop = asyncio.get_running_loop()
        self._tasks = (loop.create_task(self._write()),)
        protocol.connection_made(self)
        channel.listener = self._pump_in
        loop.call_soon(self._pump_in)  # what came before this transport did

    # --- reading

    def _pump_in(self) -> None:
        """Hand the protocol what the stream received while reading is on: each DATA payload
        (its bytes given back to the peer's window when the next event is taken), then
        ``eof_received`` at the stream's end; a broken stream loses the connection."""
        if self._in_done or self._lost:
            return
        ch = self._ch
        try:
            while self._reading:
                ev = ch.take_event()
                if ev is None:
                    if ch.broken:
                        raise ch.gone()
                    return
                if type(ev) is DataReceived:
                    if ev.data:
                        self._deliver(ev.data)
                elif type(ev) is MessageEnded:
                    ch.acknowledge()
                    self._in_done = True
                    ch.listener = None
                    keep = self._protocol.eof_received()  # type: ignore[attr-defined]
                    if not keep:
                        self.close()
                    return
        except Exception as exc:
            self._in_done = True
            ch.listener = None
            self._lose(exc)

    def _deliver(self, data: bytes) -> None:
        protocol = self._protocol
        if isinstance(protocol, asyncio.BufferedProtocol):
            view = memoryview(data)
            while view:
                buf = memoryview(protocol.get_buffer(len(view))).cast("B")
                n = min(len(buf), len(view))
                buf[:n] = view[:n]
                protocol.buffer_updated(n)
                view = view[n:]
        else:
            protocol.data_received(data)  # type: ignore[attr-defined]

    def pause_reading(self) -> None:
        self._reading = False

    def resume_reading(self) -> None:
        if not self._reading:
            self._reading = True
            self._loop.call_soon(self._pump_in)  # as a transport resumes: not from this call

    def is_reading(self) -> bool:
        return self._reading

    # --- writing

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._eof_wanted or not data:
            return
        data = bytes(data)
        if not self._out and self._writer_idle:
            # Nothing queued before it: what the windows take goes now, from this call; the
            # writer task wakes only for what has to wait (a window, a socket behind).
            taken = self._ch.send_now(data)
            if taken == len(data):
                return
            data = data[taken:]
        self._out.append(data)
        self._queued += len(data)
        self._has_out.set()
        if not self._write_paused and self._queued > self._high:
            self._write_paused = True
            self._protocol.pause_writing()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    async def _write(self) -> None:
        ch = self._ch
        try:
            while True:
                while self._out:
                    data = self._out.popleft()
                    await ch.send_data(data)
                    self._queued -= len(data)
                    if self._write_paused and self._queued <= self._low:
                        self._write_paused = False
                        self._protocol.resume_writing()
                if self._eof_wanted or self._closing:
                    with contextlib.suppress(ConnectionError, OSError):
                        await ch.send_end(None)
                    if self._closing:
                        self._finish(None)
                    return
                self._has_out.clear()
                self._writer_idle = True
                try:
                    await self._has_out.wait()
                finally:
                    self._writer_idle = False
        except (ConnectionError, OSError, TimeoutError) as exc:
            self._lose(exc)
        except asyncio.CancelledError:
            pass

    def get_write_buffer_size(self) -> int:
        return self._queued

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = HIGH_WATER if high is None else high
        self._low = (self._high // 4 if low is None else low) if high is not None else LOW_WATER
        if not self._write_paused and self._queued > self._high:
            self._write_paused = True
            self._protocol.pause_writing()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self._eof_wanted = True
        self._has_out.set()

    # --- the end

    def is_closing(self) -> bool:
        return self._closing or self._lost

    def close(self) -> None:
        """What is queued goes, then END_STREAM; then the stream is done."""
        if self._closing or self._lost:
            return
        self._closing = True
        if self._tasks[0].done():  # END_STREAM went already (write_eof): nothing is left
            self._finish(None)
            return
        self._has_out.set()

    def abort(self) -> None:
        self._finish(None)

    def reset(self, exc: BaseException) -> None:
        """End the stream as failed (RST_STREAM CANCEL): the other end of a relay failed."""
        self._lose(exc)

    def _lose(self, exc: BaseException | None) -> None:
        self._finish(exc if isinstance(exc, Exception) else None)

    def _finish(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._ch.listener = None
        self._ch.close(H2_NO_ERROR if exc is None else H2_CANCEL)
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        loop = asyncio.get_running_loop()
        loop.call_soon(self._protocol.connection_lost, exc)
        on_lost, self._on_lost = self._on_lost, None
        if on_lost is not None:
            on_lost()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol


class _Failed(Exception):
    """One side of a relay failed: "a" the socket, "b" the stream."""

    def __init__(self, side: str, error: BaseException) -> None:
        super().__init__(side, error)
        self.side = side
        self.error = error


class ChannelRelay:
    """A connected non-blocking socket (side a) and a tunnel stream (side b), joined both ways
    until both directions end, one side fails, or nothing moved for ``idle_timeout``.

    Each direction is a task: socket → stream reads into the relay's buffer (the stream's
    frames take a copy) and sends as the windows allow; stream → socket writes each DATA
    payload as it came, and asks for the next one (acknowledging this one) only once the
    socket took it, so a slow socket holds back its own stream and no other. The end of
    one direction is passed on (END_STREAM, ``shutdown(SHUT_WR)``) while the other goes on; a
    failure of either side ends both: the stream is reset (CANCEL), and the socket too
    (``SO_LINGER`` 0) when the stream failed or its connection was lost, so a cut stream
    never looks like an end. A stream the peer ended whole (RST_STREAM NO_ERROR: its side's
    idle timeout, a response complete) ends the socket cleanly once what it sent is written;
    the idle timeout here ends the stream that way too. The socket stays the caller's to
    close; the stream is closed here. ``start(on_end)`` runs it and calls ``on_end(result)``
    once (the L4 session's way), ``run()`` awaits the result; ``stop()`` ends it early
    without one.
    """

    def __init__(
        self,
        sock: socket.socket,
        ch: TunnelChannel,
        *,
        idle_timeout: float | None,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.io = fd_poller(self.loop)
        self.sock = sock
        self.fd = sock.fileno()
        self.ch = ch
        self.idle_timeout = idle_timeout
        self.a_to_b = 0  # bytes from the socket into the stream
        self.b_to_a = 0  # bytes from the stream to the socket
        self.active = False  # something moved since the idle check last looked
        self._on_done = on_done  # told once when the relay is over (ChannelFlow frees a spare)
        self._on_end: Callable[[RelayResult], None] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._tasks: tuple[asyncio.Task[None], ...] = ()
        self._idle: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last = 0.0
        self._over = False

    # --- running

    def start(self, on_end: Callable[[RelayResult], None], *, read_a: bool = False) -> None:
        """Relay; ``on_end(result)`` is called once when it is over. (The socket is read at
        once either way: ``read_a`` is for ``SocketRelay``'s shape.)"""
        self._on_end = on_end
        self._runner = self.loop.create_task(self._report())

    async def _report(self) -> None:
        result = await self.run()
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            on_end(result)

    async def run(self) -> RelayResult:
        """Relay until it is over; cancelling it stops both directions (the socket is reset
        unless the peer had ended the stream whole: the stream's connection was lost)."""
        outward = self.loop.create_task(self._outward())
        inward = self.loop.create_task(self._inward())
        self._tasks = (outward, inward)
        waits: set[asyncio.Future[None]] = {outward, inward}
        broken: asyncio.Future[None] | None = self.ch.broken_future()
        if self.idle_timeout is not None and self.idle_timeout > 0:
            self._idle = self.loop.create_future()
            self._last = self.loop.time()
            self._tick()
        end, error = RelayEnd.CLOSED, ""
        over = False
        try:
            while waits:
                watched = set(waits)
                if self._idle is not None:
                    watched.add(self._idle)
                if broken is not None:
                    watched.add(broken)
                done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
                if self._idle is not None and self._idle in done:
                    end = RelayEnd.IDLE
                    break
                if broken is not None and broken in done:
                    broken = None
                    if not self.ch.ended_by_peer:
                        end, error = RelayEnd.B_FAILED, str(self.ch.gone())
                        break
                    # Ended whole: what it sent still goes to the socket (then its end);
                    # nothing more can go to it.
                    outward.cancel()
                waits -= done
                failed = [e for t in done if not t.cancelled() and (e := t.exception())]
                if failed:
                    exc = failed[0]
                    if not isinstance(exc, _Failed):
                        raise exc
                    end = RelayEnd.A_FAILED if exc.side == "a" else RelayEnd.B_FAILED
                    error = str(exc.error) or type(exc.error).__name__
                    break
            over = True
        finally:
            if not over:  # cancelled (the stream's connection is gone), or a fault of ours
                end = RelayEnd.CLOSED if self.ch.ended_by_peer else RelayEnd.B_FAILED
            self._wind_up(end)
            await asyncio.gather(*self._tasks, return_exceptions=True)
        return RelayResult(self.a_to_b, self.b_to_a, end, error)

    def stop(self) -> None:
        """End now (idempotent); ``on_end`` is not called after this. The stream is reset,
        the socket left as it is for the caller to close."""
        self._on_end = None
        self._wind_up(RelayEnd.A_FAILED)
        if self._runner is not None and self._runner is not asyncio.current_task():
            self._runner.cancel()

    def _wind_up(self, end: RelayEnd) -> None:
        """Both directions stop, the descriptor leaves the poller (the caller may close the
        socket right after), the stream is closed: at once, not when the tasks next run."""
        if self._over:
            return
        self._over = True
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.io.set_reader(self.fd, None)
        self.io.set_writer(self.fd, None)
        # Ended, or idle (the other side ends its connection as cleanly as this one): NO_ERROR.
        clean = end in (RelayEnd.CLOSED, RelayEnd.IDLE)
        self.ch.close(H2_NO_ERROR if clean else H2_CANCEL)
        if end is RelayEnd.B_FAILED:
            _reset_on_close(self.sock)  # a cut stream must not look like an end to the client
        on_done, self._on_done = self._on_done, None
        if on_done is not None:
            on_done()

    def _tick(self) -> None:
        assert self.idle_timeout is not None
        now = self.loop.time()
        if self.active:
            self.active = False
            self._last = now
        elif now - self._last >= self.idle_timeout:
            self._timer = None
            if self._idle is not None and not self._idle.done():
                self._idle.set_result(None)
            return
        self._timer = self.loop.call_later(max(self.idle_timeout / IDLE_TICKS, 0.01), self._tick)

    # --- readiness of the socket (the loop's poller: one epoll_ctl to watch, one to stop)

    async def _ready(self, writing: bool) -> None:
        fut: asyncio.Future[None] = self.loop.create_future()
        watch = self.io.set_writer if writing else self.io.set_reader

        def ready() -> None:
            watch(self.fd, None)
            if not fut.done():
                fut.set_result(None)

        watch(self.fd, ready)
        try:
            await fut
        finally:
            if not fut.done():
                watch(self.fd, None)

    # --- the two directions

    async def _outward(self) -> None:
        """Socket → stream. Reads start small; one that fills its buffer means bulk, and
        the buffer grows to ``READ_SIZE``. A flow that goes quiet lets its buffer go while
        it waits (an idle connection holds none)."""
        sock, ch = self.sock, self.ch
        buf: bytearray | None = None
        last = 0
        rounds = 0
        while True:
            if buf is None:
                buf = bytearray(FIRST_READ)
            try:
                n = sock.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                if last < FIRST_READ:
                    buf = None
                rounds = 0
                await self._ready(writing=False)
                continue
            except OSError as read_error:
                raise _Failed("a", read_error) from None
            try:
                if not n:
                    await ch.send_end(None)
                    return
                # The frames take a copy: the buffer is free again once this returns.
                await ch.send_data(memoryview(buf)[:n])
            except (ConnectionError, OSError, TimeoutError) as exc:
                if ch.ended_by_peer:
                    return  # it takes no more: not a failure
                raise _Failed("b", exc) from None
            self.a_to_b += n
            self.active = True
            last = n
            if n == len(buf) < READ_SIZE:
                buf = bytearray(READ_SIZE)
            rounds += 1
            if rounds >= MAX_ROUNDS:
                rounds = 0
                await asyncio.sleep(0)

    async def _inward(self) -> None:
        """Stream → socket."""
        sock, ch = self.sock, self.ch
        while True:
            try:
                ev = await ch.next_event()  # acknowledges the payload the socket took before
            except (ConnectionError, OSError, TimeoutError) as exc:
                if ch.ended_by_peer:  # all it sent was written: its end is the socket's end
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_WR)
                    return
                raise _Failed("b", exc) from None
            if isinstance(ev, DataReceived):
                data = ev.data
                if data:
                    await self._send(sock, data)
                    self.b_to_a += len(data)
                    self.active = True
            elif isinstance(ev, MessageEnded):
                ch.acknowledge()
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)
                return

    async def _send(self, sock: socket.socket, data: bytes) -> None:
        sent = 0
        view: memoryview | None = None
        while sent < len(data):
            try:
                sent += sock.send(data if view is None else view[sent:])
            except (BlockingIOError, InterruptedError):
                await self._ready(writing=True)
            except OSError as exc:
                raise _Failed("a", exc) from None
            if view is None and sent < len(data):
                view = memoryview(data)


class _Side(asyncio.Protocol):
    """One side of a ``TransportRelay``: what it receives goes to the other side's transport."""

    def __init__(self, relay: TransportRelay, name: str) -> None:
        self.relay = relay
        self.name = name  # "a" the socket, "b" the stream
        self.other: asyncio.Transport | None = None  # set once both transports exist
        self.held: list[bytes] = []  # received before the other side existed
        self.transport: asyncio.BaseTransport | None = None

    def data_received(self, data: bytes) -> None:
        relay = self.relay
        if self.name == "a":
            relay.a_to_b += len(data)
        else:
            relay.b_to_a += len(data)
        other = self.other
        if other is None:
            self.held.append(data)
        elif not other.is_closing():
            other.write(data)

    def eof_received(self) -> bool:
        self.relay.ended(self.name)
        return True  # half-close: the other direction goes on

    def pause_writing(self) -> None:
        peer = self.relay.side("b" if self.name == "a" else "a")
        if peer.transport is not None:
            peer.transport.pause_reading()  # type: ignore[attr-defined]  # hold back the side that feeds this one

    def resume_writing(self) -> None:
        peer = self.relay.side("b" if self.name == "a" else "a")
        if peer.transport is not None:
            peer.transport.resume_reading()  # type: ignore[attr-defined]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.lost(self.name, exc)


class TransportRelay:
    """A connected socket (side a: the agent's connection to an HTTP target) and a tunnel
    stream (side b) joined from callbacks: the socket is the loop's own transport, the stream
    a ``StreamTransport``; what one side receives is written to the other, and a side whose
    writes back up pauses the reading of the side that feeds it. No task per direction and no
    re-arming of the socket's readiness per response, which is what a small exchange through
    the tunnel costs most on the agent (``ChannelRelay`` keeps long TCP flows: its reads go
    straight into a buffer of its own).

    The same rules as ``ChannelRelay``: an end of one direction is passed on (END_STREAM,
    ``shutdown(SHUT_WR)``) while the other goes on; the socket's failure resets the stream
    (CANCEL); the stream's failure resets the socket (RST), while a stream the peer ended whole
    (RST_STREAM NO_ERROR) ends the socket cleanly once what it sent is written. The socket is
    the relay's once ``run`` starts (its transport closes it)."""

    def __init__(self, ch: TunnelChannel, extra: dict[str, Any]) -> None:
        self.loop = asyncio.get_running_loop()
        self.ch = ch
        self.extra = extra
        self.a = _Side(self, "a")
        self.b = _Side(self, "b")
        self.a_to_b = 0
        self.b_to_a = 0
        self._ended: set[str] = set()
        self._lost: set[str] = set()
        self._end = RelayEnd.CLOSED
        self._error = ""
        self._over: asyncio.Future[None] = self.loop.create_future()

    def side(self, name: str) -> _Side:
        return self.a if name == "a" else self.b

    async def run(self, sock: socket.socket) -> RelayResult:
        try:
            sock_tr, _ = await self.loop.create_connection(lambda: self.a, sock=sock)
        except BaseException:
            sock.close()
            self.ch.close(H2_CANCEL)
            raise
        stream_tr = StreamTransport(self.ch, self.b, self.extra)
        self.a.other, self.b.other = stream_tr, sock_tr
        for data in self.a.held:  # read before the stream's transport was made
            stream_tr.write(data)
        self.a.held.clear()
        if "a" in self._ended:
            stream_tr.write_eof()
        try:
            await self._over
        except asyncio.CancelledError:
            # The agent connection is going: the stream goes with it, the socket is reset.
            self._fail("b", ConnectionResetError("tunnel connection lost"))
            raise
        return RelayResult(self.a_to_b, self.b_to_a, self._end, self._error)

    def ended(self, name: str) -> None:
        """Side ``name`` ended its direction: the other side's transport is told (FIN or
        END_STREAM once what is queued went); both ended, both close."""
        self._ended.add(name)
        other = self.side(name).other
        if other is not None and not other.is_closing():
            other.write_eof()
        if len(self._ended) == 2:
            for s in (self.a, self.b):
                if s.transport is not None:
                    s.transport.close()

    def lost(self, name: str, exc: Exception | None) -> None:
        self._lost.add(name)
        if name == "b" and exc is not None and self.ch.ended_by_peer:
            exc = None  # ended whole: what it sent is written, then the socket's end
        if exc is not None:
            self._fail(name, exc)
        else:
            other = self.side(name).other
            if other is not None and not other.is_closing():
                other.close()  # what is queued still goes
        if len(self._lost) == 2 and not self._over.done():
            self._over.set_result(None)

    def _fail(self, name: str, exc: BaseException) -> None:
        if self._end is RelayEnd.CLOSED:
            self._end = RelayEnd.A_FAILED if name == "a" else RelayEnd.B_FAILED
            self._error = str(exc) or type(exc).__name__
        sock_tr, stream_tr = self.b.other, self.a.other
        if stream_tr is not None and isinstance(stream_tr, StreamTransport):
            stream_tr.reset(exc)
        if sock_tr is not None and not sock_tr.is_closing():
            sock = sock_tr.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock_tr.abort()
        for s in "ab":
            self._lost.add(s)
        if not self._over.done():
            self._over.set_result(None)


def _reset_on_close(sock: socket.socket) -> None:
    """Make ``close()`` send RST instead of FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class ChannelFlow:
    """One stream to an expose that carries one L4 connection (``TunnelFlow``): on a spare
    agent connection taken for it, or on a shared one; a spare is closed once the flow is
    over (the agent opens a new one in its place)."""

    def __init__(
        self,
        ch: TunnelChannel,
        extra: dict[str, Any],
        *,
        spare: bool,
        on_spare_done: Callable[[], None],
    ) -> None:
        self.ch = ch
        self.extra = extra  # what the stream's transport says of itself (peer, tunnel path)
        self.spare = spare
        self._on_spare_done = on_spare_done
        self._transport: StreamTransport | None = None
        self._closed = False

    async def send(self, data: bytes) -> None:
        """Bytes toward the target before the relay starts (the PROXY header)."""
        await self.ch.send_data(data)

    def relay(self, sock: socket.socket, *, idle_timeout: float) -> ChannelRelay:
        """The relay between ``sock`` (the client's) and the stream."""
        return ChannelRelay(sock, self.ch, idle_timeout=idle_timeout, on_done=self.close)

    def streams(self) -> tuple[ConnIO, ConnIO]:
        """The stream as a reader and writer (a client that is itself a stream: TLS)."""
        io = ConnIO(asyncio.get_running_loop())
        self._transport = StreamTransport(self.ch, io, self.extra, on_lost=self._done)
        return io, io

    def close(self) -> None:
        """Done with the flow: what a writer queued still goes (then the stream ends); the
        stream is reset if it is still open otherwise."""
        if self._closed:
            return
        self._closed = True
        if self._transport is not None:
            self._transport.close()  # _done follows once it has gone
            return
        self.ch.close(H2_CANCEL)
        self._done()

    def _done(self) -> None:
        if self.spare:
            self.spare = False
            self._on_spare_done()
