"""Two-way byte relay: L4 listeners, TLS passthrough, and (later) WebSocket and CONNECT.

Rule of this room: bytes are moved, never looked at. Each direction ends on its own: when one
side's read returns end of stream, the other side's write half is shut down
(``shutdown(SHUT_WR)``) and the other direction keeps flowing until it ends too — a client
that half-closes still receives the whole reply. A reset or failed write on either side ends
both directions at once and the other side is reset too (``SO_LINGER`` 0): a truncated
stream must never look like a clean end. No byte in either direction for ``idle_timeout``
ends the relay. Memory per connection is bounded: per direction, one lent pipe or the bytes
of one read that a full destination has not taken yet.

Two relays live here:

``SocketRelay`` / ``relay()`` moves bytes between two raw non-blocking sockets from event-loop
callbacks (no task switch per chunk); ``SocketRelay.start(on_end)`` runs it with no task or
future at all (a short L4 connection is served from callbacks from accept to close), ``run()``
awaits the same. Each direction copies its first reads through a scratch buffer shared by the
event loop's relays; once one read brings ``SPLICE_FROM`` bytes (bulk), on Linux it splices
through a pipe, so the payload never enters Python (zero copy). Where ``splice`` is missing
or refused by a socket it keeps copying (as HAProxy's ``splice-auto``). A direction's reader
stays registered while data flows and is swapped for a writer only while the other side is
full (the same readiness dance as HAProxy's), so the hot path is one ``epoll_wait`` and two
``splice`` calls per chunk; a short read is taken to have emptied the socket (no read that
could only say EAGAIN).

Readiness comes from an epoll set of our own per event loop (``FdPoller``), itself watched by
the loop as one file descriptor: registering a socket is one ``epoll_ctl`` and leaving is one
more, where the loop's own ``add_reader`` costs seven system calls per descriptor with uvloop
(libuv checks, then re-registers, every descriptor it is given). Where epoll is missing the
loop's ``add_reader``/``add_writer`` are used instead.

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
import select
import socket
import struct
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

__all__ = [
    "COPY_BUFFER",
    "PIPES",
    "SPLICE_AVAILABLE",
    "FdPoller",
    "PipePool",
    "RelayEnd",
    "RelayResult",
    "SocketRelay",
    "StreamPair",
    "fd_poller",
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
# Read size when copying: the scratch buffer of an event loop's relays, and the buffer per
# direction of the stream relay (a TLS/stream side).
COPY_BUFFER = 256 * 1024
# A direction copies until one read brings this much (bulk is flowing), then splices. Short
# exchanges never take a pipe: two copies of a few bytes cost less than splicing them.
SPLICE_FROM = 16 * 1024
# Chunks one direction moves per wake-up before letting other connections run.
MAX_ROUNDS = 8
# A read shorter than this (and than what was asked) emptied the socket: the direction waits
# for readiness instead of trying another read that would only say EAGAIN (HAProxy does the
# same). A splice can stop short of a full pipe for want of pipe slots while more is queued,
# so only a small read counts; epoll is level-triggered, so a wrong guess costs one wake-up.
DRAINED_BELOW = 64 * 1024
# The idle timeout is checked this many times per period (precision: period / IDLE_TICKS).
IDLE_TICKS = 8

_READ = 1
_WRITE = 2
_PRIMED = 4  # live but registered for nothing yet (about to step)
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
    try:  # noqa: SIM105 - once per direction of every connection: no context manager
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


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


# --- readiness ------------------------------------------------------------------------------

# Events one wake-up of a poller handles before the loop runs others (the rest stay ready).
POLL_BATCH = 256
# A poller with nothing to watch for this long gives its epoll back.
POLLER_LINGER = 5.0

_EPOLL = hasattr(select, "epoll")
_IN = select.EPOLLIN if _EPOLL else 1
_OUT = select.EPOLLOUT if _EPOLL else 4
_ERR = (select.EPOLLERR | select.EPOLLHUP) if _EPOLL else 0

Callback = Callable[[], None]


class FdPoller:
    """Readiness of many descriptors on one epoll set, which the event loop watches as one.

    ``set_reader(fd, cb)`` / ``set_writer(fd, cb)`` (``None`` to stop) mirror the loop's
    ``add_reader``/``remove_reader``; a descriptor watched for nothing leaves the set, and
    must leave it before it is closed. Level-triggered, like the loop. Single-threaded: one
    per event loop (``fd_poller``). Without epoll the loop's own methods are used.
    """

    __slots__ = ("_closer", "_ep", "_fds", "loop", "scratch", "scratch_view")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        # The relays' copy buffer: bytes are read into it and written out in the same call.
        self.scratch = bytearray(COPY_BUFFER)
        self.scratch_view = memoryview(self.scratch)
        # fd → [events, reader, writer]
        self._fds: dict[int, list[Any]] = {}
        self._ep: select.epoll | None = None
        self._closer: asyncio.TimerHandle | None = None

    def set_reader(self, fd: int, cb: Callback | None) -> None:
        if self._ep is None and not self._open():
            if cb is None:
                self.loop.remove_reader(fd)
            else:
                self.loop.add_reader(fd, cb)
            return
        self._set(fd, 1, cb)

    def set_writer(self, fd: int, cb: Callback | None) -> None:
        if self._ep is None and not self._open():
            if cb is None:
                self.loop.remove_writer(fd)
            else:
                self.loop.add_writer(fd, cb)
            return
        self._set(fd, 2, cb)

    def _set(self, fd: int, slot: int, cb: Callback | None) -> None:
        ep = self._ep
        assert ep is not None
        entry = self._fds.get(fd)
        if entry is None:
            if cb is None:
                return
            entry = self._fds[fd] = [0, None, None]
            entry[slot] = cb
            entry[0] = _IN if slot == 1 else _OUT
            try:
                ep.register(fd, entry[0])
            except FileExistsError:  # closed while watched, and its number given out again
                ep.modify(fd, entry[0])
            return
        entry[slot] = cb
        events = (_IN if entry[1] is not None else 0) | (_OUT if entry[2] is not None else 0)
        if events == entry[0]:
            return
        entry[0] = events
        if events:
            try:
                ep.modify(fd, events)
            except FileNotFoundError:  # closed while watched (it left the set then)
                ep.register(fd, events)
            return
        del self._fds[fd]
        try:  # noqa: SIM105 - twice per connection: no context manager
            ep.unregister(fd)
        except OSError:  # closed already: it left the set then
            pass
        if not self._fds and self._closer is None:
            self._closer = self.loop.call_later(POLLER_LINGER, self._close_if_idle)

    def _open(self) -> bool:
        if not _EPOLL:
            return False
        try:
            ep = select.epoll()
        except OSError:
            return False
        self._ep = ep
        self.loop.add_reader(ep.fileno(), self._ready)
        return True

    def _close_if_idle(self) -> None:
        self._closer = None
        ep = self._ep
        if self._fds or ep is None:
            return
        self._ep = None
        self.loop.remove_reader(ep.fileno())
        ep.close()
        if _pollers.get(self.loop) is self:
            del _pollers[self.loop]

    def _ready(self) -> None:
        ep = self._ep
        if ep is None:
            return
        fds = self._fds
        for fd, ev in ep.poll(0, POLL_BATCH):
            entry = fds.get(fd)
            if entry is None:
                continue  # left the set earlier in this batch
            try:
                if ev & (_IN | _ERR) and entry[1] is not None:
                    entry[1]()
                    entry = fds.get(fd)
                if entry is not None and ev & (_OUT | _ERR) and entry[2] is not None:
                    entry[2]()
            except Exception as exc:  # a callback's bug must not stall the others
                self.loop.call_exception_handler(
                    {"message": "FdPoller callback failed", "exception": exc}
                )


_pollers: dict[asyncio.AbstractEventLoop, FdPoller] = {}


def fd_poller(loop: asyncio.AbstractEventLoop) -> FdPoller:
    """The poller of ``loop`` (made on first use; it closes its epoll when idle)."""
    poller = _pollers.get(loop)
    if poller is None:
        poller = _pollers[loop] = FdPoller(loop)
    return poller


class _Pump:
    """One direction, src → dst, driven by readiness callbacks.

    Every direction starts by copying through its loop's scratch buffer (``FdPoller.scratch``,
    shared: bytes stay in it only within one call), which costs a short exchange no pipe and
    no buffer of its own; a read of ``SPLICE_FROM`` bytes or more means bulk is flowing, and
    the direction splices from then on (when splicing is allowed). Bytes a full destination
    did not take wait in ``left`` (copying) or in the lent pipe (splicing).
    """

    __slots__ = (
        "count",
        "done",
        "drained",
        "dst",
        "dst_fd",
        "eof",
        "io",
        "left",
        "owner",
        "pending",
        "pipe",
        "proven",
        "spliced",
        "splicing",
        "src",
        "src_fd",
        "src_side",
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
        self.io = owner.io
        self.src = src
        self.dst = dst
        self.src_fd = src.fileno()
        self.dst_fd = dst.fileno()
        self.src_side = src_side
        self.count = 0
        self.pending = 0  # bytes read and not yet written (in the pipe, or ``left``)
        self.left: bytes = b""  # copy path: the bytes a full destination did not take yet
        self.eof = False
        self.done = False
        self.drained = False  # the last read emptied the source (see DRAINED_BELOW)
        self.waiting = 0
        self.pipe: _Pipe | None = None  # lent by PIPES while bytes are in it
        self.splicing = False  # the path this direction is on now (copy first)
        self.spliced = use_splice  # splicing allowed, and never refused or short of pipes
        self.proven = False  # a splice moved bytes here: a later refusal is a real failure

    def _fall_back_to_copy(self) -> None:
        """splice was refused or no pipe could be had: move what the pipe holds to ``left``
        and copy from now on."""
        self.splicing = False
        self.spliced = False
        pipe = self.pipe
        if pipe is not None:
            chunks = []
            got = 0
            while got < self.pending:
                chunk = os.read(pipe.r, self.pending - got)
                chunks.append(chunk)
                got += len(chunk)
            self.left = b"".join(chunks)
            self.pipe = None
            PIPES.give(pipe)

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
            self.io.set_reader(self.src_fd, None)
        elif self.waiting == _WRITE:
            self.io.set_writer(self.dst_fd, None)
        if kind == _READ:
            self.io.set_reader(self.src_fd, self.step)
        elif kind == _WRITE:
            self.io.set_writer(self.dst_fd, self.step)
        self.waiting = kind

    def step(self) -> None:
        if not self.waiting:
            return  # stopped by the other direction's end in this same loop turn
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
                    if exc.errno in _NO_SPLICE and not self.proven:
                        self._fall_back_to_copy()
                        self._copy()
                        return
                    raise _SideFailed(self.owner.other(self.src_side), exc) from None
                self.proven = True
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
            if self.drained:
                self.drained = False
                self.release_pipe()
                self._wait(_READ)
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
                if exc.errno in _NO_SPLICE and not self.proven:
                    self._fall_back_to_copy()
                    self._copy()
                    return
                raise _SideFailed(self.src_side, exc) from None
            if n == 0:
                self.eof = True
            else:
                self.pending = n
                self.drained = n < DRAINED_BELOW and n < pipe.size
        if not self.pending:
            self.release_pipe()
        self._wait(_WRITE if self.pending else _READ)

    def _copy(self) -> None:
        io = self.io
        scratch = io.scratch
        for _ in range(MAX_ROUNDS):
            if self.pending:
                try:
                    n = self.dst.send(self.left)
                except BlockingIOError:
                    self._wait(_WRITE)
                    return
                except OSError as exc:
                    raise _SideFailed(self.owner.other(self.src_side), exc) from None
                self.count += n
                self.owner.active = True
                if n < self.pending:
                    self.left = self.left[n:]
                    self.pending -= n
                    self._wait(_WRITE)
                    return
                self.left = b""
                self.pending = 0
            if self.eof:
                self._finish()
                return
            if self.drained:
                self.drained = False
                if self.waiting != _READ:
                    self._wait(_READ)
                return
            try:
                n = self.src.recv_into(scratch)
            except BlockingIOError:
                if self.waiting != _READ:
                    self._wait(_READ)
                return
            except OSError as exc:
                raise _SideFailed(self.src_side, exc) from None
            if n == 0:
                self.eof = True
                continue
            data = io.scratch_view[:n]
            try:
                sent = self.dst.send(data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                raise _SideFailed(self.owner.other(self.src_side), exc) from None
            if sent:
                self.count += sent
                self.owner.active = True
            if sent < n:
                self.left = bytes(data[sent:])  # the scratch buffer is the next one's
                self.pending = n - sent
            if n >= SPLICE_FROM and self.spliced:
                self.splicing = True  # bulk: splice from now on
                if self.pending:
                    self._wait(_WRITE)
                    return
                self._splice()
                return
            if self.pending:
                self._wait(_WRITE)
                return
            self.drained = n < len(scratch)
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
    """Relays between two connected non-blocking sockets until both directions end.

    ``start(on_end)`` runs it from callbacks and calls ``on_end`` once with the result;
    ``run()`` awaits the result instead (cancelling it stops the relay). ``stop()`` ends it
    early without a result. The sockets stay the caller's to close. ``a_to_b`` and
    ``b_to_a`` can be read at any time, also after the relay was stopped or cancelled (the
    access log wants them then too).
    """

    __slots__ = (
        "_final",
        "_last_active",
        "_on_end",
        "_pumps",
        "_watch",
        "a",
        "active",
        "b",
        "idle_timeout",
        "io",
        "loop",
        "use_splice",
    )

    def __init__(
        self,
        a: socket.socket,
        b: socket.socket,
        *,
        idle_timeout: float,
        splice: bool | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        io: FdPoller | None = None,
    ) -> None:
        self.loop = loop if loop is not None else asyncio.get_running_loop()
        self.io = io if io is not None and io.loop is self.loop else fd_poller(self.loop)
        self.a = a
        self.b = b
        self.idle_timeout = idle_timeout
        self.use_splice = SPLICE_AVAILABLE if splice is None else (splice and SPLICE_AVAILABLE)
        self.active = False  # set by a pump on every chunk; cleared by the idle check
        self._pumps: tuple[_Pump, ...] = ()
        # After the end: (a_to_b, b_to_a, splicing), the pumps being gone.
        self._final = (0, 0, False)
        self._on_end: Callable[[RelayResult], None] | None = None
        self._watch: _IdleWatch | None = None
        self._last_active = 0.0

    @property
    def a_to_b(self) -> int:
        return self._pumps[0].count if self._pumps else self._final[0]

    @property
    def b_to_a(self) -> int:
        return self._pumps[1].count if self._pumps else self._final[1]

    @property
    def splicing(self) -> bool:
        """Whether splice is the bulk path of both directions: allowed, and neither refused
        by a socket nor short of a pipe so far (reads under ``SPLICE_FROM`` are copied)."""
        pumps = self._pumps
        return pumps[0].spliced and pumps[1].spliced if pumps else self._final[2]

    @staticmethod
    def other(side: str) -> str:
        return "b" if side == "a" else "a"

    def start(self, on_end: Callable[[RelayResult], None], *, read_a: bool = False) -> None:
        """Start relaying; ``on_end(result)`` is called once when it ends. ``read_a``: read
        side a at once instead of waiting to be told it is readable (its first bytes are
        likely there already: a client that spoke first); then ``on_end`` may be called
        before ``start`` returns."""
        self._on_end = on_end
        a = _Pump(self, self.a, self.b, "a", self.use_splice)
        b = _Pump(self, self.b, self.a, "b", self.use_splice)
        self._pumps = (a, b)
        self._last_active = self.loop.time()
        self._watch = _IdleWatch.join(self)
        b.start()
        if read_a:
            a.waiting = _PRIMED  # step() moves what is there, then waits for what it needs
            a.step()
        else:
            a.start()

    async def run(self) -> RelayResult:
        fut: asyncio.Future[RelayResult] = self.loop.create_future()

        def ended(result: RelayResult) -> None:
            if not fut.done():
                fut.set_result(result)

        try:
            self.start(ended)
            return await fut
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop both directions now (idempotent); ``on_end`` is not called after this."""
        self._on_end = None
        if self._watch is not None:
            self._watch.leave(self)
            self._watch = None
        pumps = self._pumps
        if not pumps:
            return
        for p in pumps:
            p.stop()
            p.release_pipe()
        a, b = pumps
        self._final = (a.count, b.count, a.spliced and b.spliced)
        self._pumps = ()  # no cycle left: the relay and its pumps go by reference count

    def _end(self, result: RelayResult) -> None:
        on_end = self._on_end
        self.stop()
        if on_end is not None:
            on_end(result)

    def direction_done(self) -> None:
        a, b = self._pumps
        if a.done and b.done:
            self._end(RelayResult(a.count, b.count, RelayEnd.CLOSED))

    def fail(self, side: str, error: OSError) -> None:
        _reset_on_close(self.a)
        _reset_on_close(self.b)
        end = RelayEnd.A_FAILED if side == "a" else RelayEnd.B_FAILED
        self._end(RelayResult(self.a_to_b, self.b_to_a, end, error.strerror or str(error)))

    def idle_check(self, now: float) -> None:
        """One tick of the idle watch: ends the relay after ``idle_timeout`` without a byte."""
        if self.active:
            self.active = False
            self._last_active = now
        elif now - self._last_active >= self.idle_timeout:
            self._end(RelayResult(self.a_to_b, self.b_to_a, RelayEnd.IDLE))


class _IdleWatch:
    """The idle checks of every relay of one event loop with the same timeout, on one timer
    ticking ``IDLE_TICKS`` times per period: a relay joins and leaves with a set operation
    instead of arming and cancelling a timer of its own (a short connection's relay is over
    long before its first tick). The watch stops when its last relay leaves."""

    __slots__ = ("key", "loop", "period", "relays", "timer")

    _watches: dict[tuple[asyncio.AbstractEventLoop, float], _IdleWatch] = {}

    def __init__(self, loop: asyncio.AbstractEventLoop, idle_timeout: float) -> None:
        self.loop = loop
        self.key = (loop, idle_timeout)
        self.period = max(idle_timeout / IDLE_TICKS, 0.01)
        self.relays: dict[SocketRelay, None] = {}
        self.timer: asyncio.TimerHandle | None = None

    @classmethod
    def join(cls, relay: SocketRelay) -> _IdleWatch:
        key = (relay.loop, relay.idle_timeout)
        watch = cls._watches.get(key)
        if watch is None:
            watch = cls._watches[key] = cls(relay.loop, relay.idle_timeout)
        watch.relays[relay] = None
        if watch.timer is None:
            watch.timer = watch.loop.call_later(watch.period, watch.tick)
        return watch

    def leave(self, relay: SocketRelay) -> None:
        self.relays.pop(relay, None)
        if not self.relays:
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            if self._watches.get(self.key) is self:
                del self._watches[self.key]

    def tick(self) -> None:
        self.timer = None
        now = self.loop.time()
        for relay in list(self.relays):
            relay.idle_check(now)  # may leave (ends the relay)
        if self.relays and self.timer is None:
            self.timer = self.loop.call_later(self.period, self.tick)


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
