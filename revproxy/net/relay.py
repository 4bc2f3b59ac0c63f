"""Two-way byte relay: L4 listeners, TLS passthrough, and (later) WebSocket and CONNECT.

Rule of this room: bytes are moved, never looked at. Each direction ends on its own: when one
side's read returns end of stream, the other side's write half is shut down
(``shutdown(SHUT_WR)``) and the other direction keeps flowing until it ends too — a client
that half-closes still receives the whole reply. A reset or failed write on either side ends
both directions at once and the other side is reset too (``SO_LINGER`` 0): a truncated
stream must never look like a clean end. No byte in either direction for ``idle_timeout``
ends the relay. Memory per connection is bounded: one pipe or one buffer per direction.

Two relays live here:

``SocketRelay`` / ``relay()`` moves bytes between two raw non-blocking sockets from event-loop
callbacks (no task switch per chunk). On Linux it splices through a pipe, so the payload
never enters Python (zero copy); where ``splice`` is missing or refused by a socket it copies
through a 256 KiB buffer instead. A direction's reader stays registered while data flows and
is swapped for a writer only while the other side is full (the same readiness dance as
HAProxy's), so the hot path is one ``epoll_wait`` and two ``splice`` calls per chunk.

Pipes are lent, not owned (``PipePool``, as HAProxy's pipe pool): a direction holds one only
while bytes are in flight and gives it back, empty, when its source has nothing more to read.
An idle or short connection therefore holds no pipe, a busy process reuses a few instead of
creating two per connection, and the kernel's per-user pipe allowance
(``/proc/sys/fs/pipe-user-pages-soft``) lasts for the connections that actually move data.
When no pipe can be had (out of descriptors), that direction copies instead.

``relay_streams()`` moves bytes between asyncio stream pairs (a TLS-terminated side, a
WebSocket after the upgrade, bytes already buffered by a parser) or a stream pair and a raw
socket. A TLS stream cannot be half-closed through asyncio: when the other direction ends
toward it, closing it is the only end it can be told of, so the whole relay ends there (a
WebSocket origin that closes its connection closes the client's too, at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import fcntl
import os
import socket
import struct
from typing import Any, NamedTuple, Protocol

__all__ = [
    "COPY_BUFFER",
    "PIPES",
    "SPLICE_AVAILABLE",
    "PipePool",
    "RelayEnd",
    "RelayResult",
    "SocketRelay",
    "StreamPair",
    "relay",
    "relay_streams",
]

# os.splice exists on Linux with Python 3.10+; anywhere else the copy path is used.
SPLICE_AVAILABLE = hasattr(os, "splice")
# Pipe capacity asked for with F_SETPIPE_SZ: bytes moved per splice pair. 1 MiB is Linux's
# default /proc/sys/fs/pipe-max-size; a refusal (over the per-user pipe allowance) keeps the
# kernel's default (64 KiB), which only costs more system calls per byte.
PIPE_SIZE = 1024 * 1024
# Empty pipes a process keeps for reuse. Each counts its capacity against the user's pipe
# allowance (16384 pages, 64 MiB, by default) even while empty: 16 pipes of 1 MiB are a quarter.
PIPES_KEPT = 16
# Buffer per direction when copying (no splice, or a TLS/stream side).
COPY_BUFFER = 256 * 1024
# Chunks one direction moves per wake-up before letting other connections run.
MAX_ROUNDS = 8
# The idle timeout is checked this many times per period (precision: period / IDLE_TICKS).
IDLE_TICKS = 8

_READ = 1
_WRITE = 2
_SPLICE_FLAGS = (os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK) if SPLICE_AVAILABLE else 0
# errno values meaning "this fd pair can't be spliced": fall back to copying.
_NO_SPLICE = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF})


class RelayEnd(enum.Enum):
    """Why a relay ended."""

    CLOSED = "closed"  # both directions reached end of stream
    IDLE = "idle"  # no byte either way for idle_timeout
    A_FAILED = "a-failed"  # side a reset or failed (b was reset in turn)
    B_FAILED = "b-failed"  # side b reset or failed (a was reset in turn)


class RelayResult(NamedTuple):
    a_to_b: int  # bytes read from a and written to b
    b_to_a: int  # bytes read from b and written to a
    end: RelayEnd
    error: str = ""  # the failure, when end is A_FAILED or B_FAILED


class _Socketish(Protocol):
    def setsockopt(self, level: int, option: int, value: bytes, /) -> None: ...


def _reset_on_close(sock: _Socketish) -> None:
    """Make ``close()`` send RST instead of FIN (the peer must not mistake it for an end)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _shutdown_write(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)


class _Pipe:
    __slots__ = ("r", "size", "w")

    def __init__(self, r: int, w: int, size: int) -> None:
        self.r = r
        self.w = w
        self.size = size

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


class PipePool:
    """Empty pipes for splicing, lent to a direction while it has bytes in flight.

    Single-threaded by design (one per process, used from the event loop's thread). A pipe
    is given back only empty; one that still holds bytes is closed instead.
    """

    def __init__(self, size: int = PIPE_SIZE, keep: int = PIPES_KEPT) -> None:
        self.size = size
        self.keep = keep
        self._idle: list[_Pipe] = []
        self.created = 0  # pipes ever opened (tests and metrics: reuse works)

    def take(self) -> _Pipe | None:
        """An empty pipe, or None when none can be opened (the caller copies instead)."""
        if self._idle:
            return self._idle.pop()
        try:
            r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            size = fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, self.size)
        except OSError:
            size = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
        self.created += 1
        return _Pipe(r, w, size)

    def give(self, pipe: _Pipe) -> None:
        """Return an empty pipe."""
        if len(self._idle) < self.keep:
            self._idle.append(pipe)
        else:
            pipe.close()

    def clear(self) -> None:
        while self._idle:
            self._idle.pop().close()


PIPES = PipePool()


class _Pump:
    """One direction, src → dst, driven by readiness callbacks."""

    __slots__ = (
        "buf",
        "count",
        "done",
        "dst",
        "dst_fd",
        "eof",
        "loop",
        "offset",
        "owner",
        "pending",
        "pipe",
        "spliced",
        "splicing",
        "src",
        "src_fd",
        "src_side",
        "view",
        "waiting",
    )

    def __init__(
        self,
        owner: SocketRelay,
        src: socket.socket,
        dst: socket.socket,
        src_side: str,
        use_splice: bool,
    ) -> None:
        self.owner = owner
        self.loop = owner.loop
        self.src = src
        self.dst = dst
        self.src_fd = src.fileno()
        self.dst_fd = dst.fileno()
        self.src_side = src_side
        self.count = 0
        self.pending = 0  # bytes read and not yet written (in the pipe or the buffer)
        self.offset = 0  # start of the pending bytes in the buffer (copy path)
        self.eof = False
        self.done = False
        self.waiting = 0
        self.pipe: _Pipe | None = None  # lent by PIPES while bytes are in it
        self.buf: bytearray | None = None
        self.view: memoryview | None = None
        self.splicing = use_splice  # the path this direction is on now
        self.spliced = use_splice  # stays true while this direction never left the splice path
        if not use_splice:
            self._use_copy()

    def _use_copy(self) -> None:
        self.splicing = False
        self.buf = bytearray(COPY_BUFFER)
        self.view = memoryview(self.buf)

    def _fall_back_to_copy(self) -> None:
        """splice was refused or no pipe could be had: move what the pipe holds to a buffer
        and copy from now on."""
        self._use_copy()
        self.spliced = False
        assert self.buf is not None
        pipe = self.pipe
        if pipe is not None:
            got = 0
            while got < self.pending:
                chunk = os.read(pipe.r, self.pending - got)
                self.buf[got : got + len(chunk)] = chunk
                got += len(chunk)
            self.pipe = None
            PIPES.give(pipe)
        self.offset = 0

    def release_pipe(self) -> None:
        """Give the pipe back if empty; close it if bytes were left in it (relay ended)."""
        pipe, self.pipe = self.pipe, None
        if pipe is None:
            return
        if self.pending and self.splicing:
            pipe.close()
        else:
            PIPES.give(pipe)

    # --- readiness -------------------------------------------------------------------------

    def start(self) -> None:
        self._wait(_READ)

    def stop(self) -> None:
        self._wait(0)

    def _wait(self, kind: int) -> None:
        if kind == self.waiting:
            return
        if self.waiting == _READ:
            self.loop.remove_reader(self.src_fd)
        elif self.waiting == _WRITE:
            self.loop.remove_writer(self.dst_fd)
        if kind == _READ:
            self.loop.add_reader(self.src_fd, self.step)
        elif kind == _WRITE:
            self.loop.add_writer(self.dst_fd, self.step)
        self.waiting = kind

    def step(self) -> None:
        try:
            if self.splicing:
                self._splice()
            else:
                self._copy()
        except _SideFailed as exc:
            self.owner.fail(exc.side, exc.error)

    # --- moving bytes ----------------------------------------------------------------------

    def _splice(self) -> None:
        for _ in range(MAX_ROUNDS):
            pipe = self.pipe
            if self.pending:
                assert pipe is not None
                try:
                    n = os.splice(pipe.r, self.dst_fd, self.pending, flags=_SPLICE_FLAGS)
                except BlockingIOError:
                    self._wait(_WRITE)
                    return
                except OSError as exc:
                    if exc.errno in _NO_SPLICE and not self.count:
                        self._fall_back_to_copy()
                        self._copy()
                        return
                    raise _SideFailed(self.owner.other(self.src_side), exc) from None
                self.pending -= n
                self.count += n
                self.owner.active = True
                if self.pending:
                    self._wait(_WRITE)  # a short write: the other side's buffer is full
                    return
            if self.eof:
                self.release_pipe()
                self._finish()
                return
            if pipe is None:
                pipe = self.pipe = PIPES.take()
                if pipe is None:
                    self._fall_back_to_copy()
                    self._copy()
                    return
            try:
                n = os.splice(self.src_fd, pipe.w, pipe.size, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                self.release_pipe()  # nothing in flight: the pipe goes back to the pool
                self._wait(_READ)
                return
            except OSError as exc:
                if exc.errno in _NO_SPLICE and not self.count:
                    self._fall_back_to_copy()
                    self._copy()
                    return
                raise _SideFailed(self.src_side, exc) from None
            if n == 0:
                self.eof = True
            else:
                self.pending = n
        if not self.pending:
            self.release_pipe()
        self._wait(_WRITE if self.pending else _READ)

    def _copy(self) -> None:
        view = self.view
        assert view is not None
        for _ in range(MAX_ROUNDS):
            if self.pending:
                try:
                    n = self.dst.send(view[self.offset : self.offset + self.pending])
                except BlockingIOError:
                    self._wait(_WRITE)
                    return
                except OSError as exc:
                    raise _SideFailed(self.owner.other(self.src_side), exc) from None
                self.pending -= n
                self.offset += n
                self.count += n
                self.owner.active = True
                if self.pending:
                    self._wait(_WRITE)
                    return
            if self.eof:
                self._finish()
                return
            try:
                n = self.src.recv_into(view)
            except BlockingIOError:
                self._wait(_READ)
                return
            except OSError as exc:
                raise _SideFailed(self.src_side, exc) from None
            if n == 0:
                self.eof = True
            else:
                self.pending = n
                self.offset = 0
        self._wait(_WRITE if self.pending else _READ)

    def _finish(self) -> None:
        """src reached end of stream and everything read was written: pass the end on."""
        self.stop()
        _shutdown_write(self.dst)
        self.done = True
        self.owner.direction_done()


class _SideFailed(Exception):
    def __init__(self, side: str, error: OSError) -> None:
        super().__init__(side, error)
        self.side = side
        self.error = error


class SocketRelay:
    """Relays between two connected non-blocking sockets; ``run()`` returns when it ends.

    The sockets stay the caller's to close. ``a_to_b`` and ``b_to_a`` can be read at any
    time, also after ``run()`` was cancelled (the access log wants them then too).
    """

    def __init__(
        self,
        a: socket.socket,
        b: socket.socket,
        *,
        idle_timeout: float,
        splice: bool | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.a = a
        self.b = b
        self.idle_timeout = idle_timeout
        self.use_splice = SPLICE_AVAILABLE if splice is None else (splice and SPLICE_AVAILABLE)
        self.active = False  # set by a pump on every chunk; cleared by the idle check
        self._pumps: list[_Pump] = []
        self._result: asyncio.Future[RelayResult] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_active = 0.0

    @property
    def a_to_b(self) -> int:
        return self._pumps[0].count if self._pumps else 0

    @property
    def b_to_a(self) -> int:
        return self._pumps[1].count if len(self._pumps) > 1 else 0

    @property
    def splicing(self) -> bool:
        """Whether both directions moved every byte by splice (so far)."""
        return bool(self._pumps) and all(p.spliced for p in self._pumps)

    @staticmethod
    def other(side: str) -> str:
        return "b" if side == "a" else "a"

    async def run(self) -> RelayResult:
        self._result = self.loop.create_future()
        try:
            self._pumps = [
                _Pump(self, self.a, self.b, "a", self.use_splice),
                _Pump(self, self.b, self.a, "b", self.use_splice),
            ]
            self._last_active = self.loop.time()
            self._schedule_idle_check()
            for p in self._pumps:
                p.start()
            return await self._result
        finally:
            self._stop()

    def _stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for p in self._pumps:
            p.stop()
            p.release_pipe()

    def _end(self, result: RelayResult) -> None:
        if self._result is not None and not self._result.done():
            self._result.set_result(result)
        for p in self._pumps:
            p.stop()

    def direction_done(self) -> None:
        if all(p.done for p in self._pumps):
            self._end(RelayResult(self.a_to_b, self.b_to_a, RelayEnd.CLOSED))

    def fail(self, side: str, error: OSError) -> None:
        _reset_on_close(self.a)
        _reset_on_close(self.b)
        end = RelayEnd.A_FAILED if side == "a" else RelayEnd.B_FAILED
        self._end(RelayResult(self.a_to_b, self.b_to_a, end, error.strerror or str(error)))

    def _schedule_idle_check(self) -> None:
        period = max(self.idle_timeout / IDLE_TICKS, 0.01)
        self._timer = self.loop.call_later(period, self._idle_check)

    def _idle_check(self) -> None:
        now = self.loop.time()
        if self.active:
            self.active = False
            self._last_active = now
        elif now - self._last_active >= self.idle_timeout:
            self._timer = None
            self._end(RelayResult(self.a_to_b, self.b_to_a, RelayEnd.IDLE))
            return
        self._schedule_idle_check()


async def relay(
    a: socket.socket,
    b: socket.socket,
    *,
    idle_timeout: float,
    splice: bool | None = None,
) -> RelayResult:
    """Relay between two connected non-blocking sockets until both directions end.

    ``splice=None`` splices where the platform can; ``False`` forces the copy path.
    """
    return await SocketRelay(a, b, idle_timeout=idle_timeout, splice=splice).run()


# --- streams ------------------------------------------------------------------------------


class ByteReader(Protocol):
    """What a relay reads from: ``asyncio.StreamReader`` or ``conn_io.ConnIO``."""

    async def read(self, n: int = -1) -> bytes: ...


class ByteWriter(Protocol):
    """What a relay writes to: ``asyncio.StreamWriter`` or ``conn_io.ConnIO``."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def can_write_eof(self) -> bool: ...

    def write_eof(self) -> None: ...

    def get_extra_info(self, name: str, default: Any = None) -> Any: ...

    def close(self) -> None: ...


StreamPair = tuple[ByteReader, ByteWriter]


async def _as_streams(side: StreamPair | socket.socket) -> StreamPair:
    if isinstance(side, socket.socket):
        return await asyncio.open_connection(sock=side, limit=COPY_BUFFER)
    return side


class _CannotHalfClose(Exception):
    """A direction ended toward a side that cannot be half-closed (TLS)."""


class _StreamFailed(Exception):
    def __init__(self, side: str, error: BaseException) -> None:
        super().__init__(side, error)
        self.side = side
        self.error = error


async def relay_streams(
    a: StreamPair | socket.socket,
    b: StreamPair | socket.socket,
    *,
    idle_timeout: float,
    read_size: int = COPY_BUFFER,
) -> RelayResult:
    """Relay between stream pairs (or a stream pair and a socket) until both directions end.

    A socket given here is taken over by an asyncio transport and closed with it. Writers
    are not closed: the caller owns both connections and closes them after the relay.
    """
    ra, wa = await _as_streams(a)
    rb, wb = await _as_streams(b)
    counts = [0, 0]
    activity = [False]

    async def pump(index: int, src_side: str, reader: ByteReader, writer: ByteWriter) -> None:
        dst_side = "b" if src_side == "a" else "a"
        while True:
            try:
                data = await reader.read(read_size)
            except (ConnectionError, OSError) as exc:
                raise _StreamFailed(src_side, exc) from None
            if not data:
                if not writer.can_write_eof():
                    raise _CannotHalfClose()
                with contextlib.suppress(OSError, RuntimeError):
                    writer.write_eof()
                return
            try:
                writer.write(data)
                await writer.drain()
            except (ConnectionError, OSError) as exc:
                raise _StreamFailed(dst_side, exc) from None
            counts[index] += len(data)
            activity[0] = True

    async def watchdog() -> None:
        period = max(idle_timeout / IDLE_TICKS, 0.01)
        last = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(period)
            now = asyncio.get_running_loop().time()
            if activity[0]:
                activity[0] = False
                last = now
            elif now - last >= idle_timeout:
                return

    pumps = {
        asyncio.ensure_future(pump(0, "a", ra, wb)),
        asyncio.ensure_future(pump(1, "b", rb, wa)),
    }
    dog = asyncio.ensure_future(watchdog())
    end = RelayEnd.CLOSED
    error = ""
    try:
        pending = set(pumps)
        while pending:
            done, pending = await asyncio.wait(pending | {dog}, return_when=asyncio.FIRST_COMPLETED)
            pending.discard(dog)
            if dog in done:
                end = RelayEnd.IDLE
                break
            errors = [e for e in (t.exception() for t in done) if e is not None]
            if any(isinstance(e, _CannotHalfClose) for e in errors):
                break  # the end reached a side that can only be closed whole: close both
            if errors:
                exc = errors[0]
                if not isinstance(exc, _StreamFailed):
                    raise exc
                end = RelayEnd.A_FAILED if exc.side == "a" else RelayEnd.B_FAILED
                error = str(exc.error) or type(exc.error).__name__
                for w in (wa, wb):
                    sock = w.get_extra_info("socket")
                    if sock is not None:
                        _reset_on_close(sock)
                break
    finally:
        for t in (*pumps, dog):
            t.cancel()
        await asyncio.gather(*pumps, dog, return_exceptions=True)
    return RelayResult(counts[0], counts[1], end, error)
