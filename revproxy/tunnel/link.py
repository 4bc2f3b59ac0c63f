"""One agent connection on the proxy: an HTTP/2 origin connection whose socket the agent
dialled (the proxy is the HTTP/2 client, the agent the server).

Rule of this room: one reader task per connection reads every frame and hands stream events
to their channels (``net/h2_channel.py``); one pinger sends a PING every ``ping_interval`` and
declares the agent dead after ``ping_misses`` unanswered in a row (anything received counts as
an answer: ``proto/tunnel.Liveness``). The hello is the first stream: until its answer came
the connection serves nothing. When the connection ends, for whatever reason, every stream
learns it at once and the hub forgets the link (``on_close``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable

from revproxy.errors import RevproxyError
from revproxy.net.h2_channel import CLOSE_TIMEOUT, close_writer
from revproxy.proto.events import GoAwayReceived, PingAcknowledged, ResponseReceived
from revproxy.proto.h2.client import H2Client
from revproxy.proto.tunnel import (
    HELLO_PATH,
    STREAM_PROTOCOL,
    Hello,
    Liveness,
    Role,
    TunnelFormatError,
    path_of_expose,
    worker_header,
)
from revproxy.tunnel.stream import CountedLink, TunnelChannel, frames_in, open_channel
from revproxy.tunnel.wire import LinkProtocol, LinkWriter

log = logging.getLogger("revproxy.tunnel")

# DATA frames we accept (RFC 9113 §4.2 allows up to 16 MiB - 1): large frames cost less framing
# work per byte on bulk flows; a stream still never gets more than its window.
FRAME_SIZE = 256 * 1024
# Our frames piling up unread by the agent beyond this stop our reading (h2_channel.py).
BACKLOG_TIMEOUT = 10.0


class AgentLink(CountedLink):
    """One connection from one agent."""

    def __init__(
        self,
        wire: LinkProtocol,
        writer: LinkWriter,
        *,
        name: str,
        serial: str,
        peer: str,
        stream_window: int,
        max_streams: int,
        ping_interval: float,
        ping_misses: int,
    ) -> None:
        proto = H2Client(
            max_concurrent_streams=max_streams,
            initial_window_size=stream_window,
            max_frame_size=FRAME_SIZE,
            max_header_list_size=16384,
        )
        super().__init__(proto, wire, writer)
        self.h2: H2Client = proto
        self.name = name
        self.serial = serial
        self.peer = peer
        self.hello: Hello | None = None
        self.since = time.time()
        self.streams_total = 0
        self.taken = False  # a spare connection handed to one TCP flow
        self.draining = False
        self.on_close: Callable[[AgentLink], None] | None = None
        self.on_change: Callable[[], None] | None = None
        self.liveness = Liveness(ping_interval, ping_misses, time.monotonic())
        self._tasks: list[asyncio.Task[None]] = []
        self.done = asyncio.Event()  # set once the connection has ended

    @property
    def role(self) -> Role:
        return self.hello.role if self.hello is not None else Role.SURPLUS

    @property
    def exposes(self) -> frozenset[str]:
        return frozenset(e.name for e in self.hello.exposes) if self.hello else frozenset()

    def usable(self) -> bool:
        return not (self.closed or self.draining or self.taken) and self.h2.can_open_stream

    # --- running

    def start(self) -> None:
        """The reader and the pinger; the preface and SETTINGS go out now."""
        self.flush()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read()), loop.create_task(self._ping())]

    async def greet(self, worker: tuple[int, int], timeout: float) -> Hello:
        """The hello exchange (the first stream): what the agent exposes and the role."""
        sid = self.h2.send_request(
            b"GET", b"https", self.name.encode(), HELLO_PATH, [worker_header(*worker)], end=True
        )
        ch = open_channel(self, sid)
        self.flush()
        try:
            async with asyncio.timeout(timeout):
                ev = await ch.next_event()
        finally:
            ch.close(0)
        if not isinstance(ev, ResponseReceived) or ev.status != 200:
            raise TunnelFormatError("the agent did not answer the hello")
        self.hello = Hello.parse(ev.headers)
        return self.hello

    async def open(self, expose: str, timeout: float, *, claimed: bool = False) -> TunnelChannel:
        """A stream to ``expose``'s target, once the agent has connected to it (``claimed``:
        this spare connection was taken for this one flow)."""
        if not (claimed or self.usable()) or self.closed or not self.h2.can_open_stream:
            raise ConnectionResetError("tunnel connection closing")
        sid = self.h2.send_request(
            b"CONNECT",
            b"https",
            self.name.encode(),
            path_of_expose(expose),
            [],
            protocol=STREAM_PROTOCOL,
        )
        ch = open_channel(self, sid)
        self.streams_total += 1
        self.flush()
        try:
            async with asyncio.timeout(timeout):
                ev = await ch.next_event()
        except BaseException:
            ch.close(0x8)
            raise
        if not isinstance(ev, ResponseReceived):
            ch.close(0x8)
            raise ConnectionResetError("tunnel stream: no answer from the agent")
        if ev.status != 200:
            ch.close(0x8)
            raise ConnectionRefusedError(f"the agent could not reach {expose} ({ev.status})")
        return ch

    async def _read(self) -> None:
        """Every read is handled as it arrives (``_received``, called by the wire); this task
        waits for the end and ends the link."""
        try:
            self.wire.attach(self._received)
            failure = await self.wire.finished
            if isinstance(failure, RevproxyError):
                log.warning("tunnel=%s peer=%s HTTP/2 error: %s", self.name, self.peer, failure)
            elif isinstance(failure, (ConnectionError, OSError, TimeoutError)):
                log.debug("tunnel=%s peer=%s connection ended: %s", self.name, self.peer, failure)
            elif failure is not None:
                log.error(
                    "tunnel=%s peer=%s connection failed", self.name, self.peer, exc_info=failure
                )
        except asyncio.CancelledError:
            pass
        finally:
            self.wire.stop()
            self.connection_lost()
            self._ended()
            await close_writer(self.writer)

    def _received(self, data: bytes) -> None:
        """Whole frames from the agent (a RevproxyError ends the connection, its GOAWAY
        written first)."""
        for ev in frames_in(self, self.liveness, data):
            if isinstance(ev, GoAwayReceived):
                self.draining = True  # the agent stops: no new stream here
                if self.on_change is not None:
                    self.on_change()
            elif not isinstance(ev, PingAcknowledged):
                self.dispatch(ev)
        self.flush()
        if self.write_backlog:
            self.wire.hold_until_drained(BACKLOG_TIMEOUT)

    async def _ping(self) -> None:
        live = self.liveness
        while not self.closed:
            await asyncio.sleep(min(1.0, live.interval / 2))
            now = time.monotonic()
            if live.due(now):
                self.proto.ping(os.urandom(8))
                self.flush()
            if live.dead:
                log.warning(
                    "tunnel=%s peer=%s dead: %d pings unanswered",
                    self.name,
                    self.peer,
                    live.unanswered - 1,
                )
                self.shut()
                return

    def _ended(self) -> None:
        self.done.set()
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        callback, self.on_close = self.on_close, None
        if callback is not None:
            callback(self)

    def retire(self) -> None:
        """Close once what is queued has gone (a spare connection whose one flow is over: the
        flow's last bytes must not be dropped); ``shut`` after ``CLOSE_TIMEOUT`` at most."""
        if self.closed:
            return
        self.draining = True
        with contextlib.suppress(Exception):
            self.proto.goaway()
            self.flush_now()
            self.writer.close()  # the transport writes what it holds, then closes
        asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self.shut)

    def shut(self) -> None:
        """Close now (revoked, dead, replaced, or stopping): streams learn it at once."""
        if self.closed:
            return
        with contextlib.suppress(Exception):
            self.proto.goaway()
            self.flush_now()
        self.connection_lost()
        with contextlib.suppress(Exception):
            self.writer.transport.abort()
