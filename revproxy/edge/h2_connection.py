"""The L7 pipeline for one HTTP/2 client connection (TLS with ALPN ``h2``, or h2c).

Rule of this room: one task reads the connection and turns frames into stream events; each
request stream is served by its own task (an ``Exchange`` over an ``H2ServerStream``), which
ends with the connection, so a slow stream or a slow origin never holds up another — or, when
it is plain (h2_plain.py: no body, an idle pooled HTTP/1.1 connection, an answer whole in one
read), from the origin's callbacks, and by a task from the first thing that is not. Streams
are bounded twice: proto/http2.py enforces our SETTINGS_MAX_CONCURRENT_STREAMS, and a stream
whose task is still winding down (reset by the client, say) still counts — more are refused
with REFUSED_STREAM. That, with the rapid-reset limit of proto/http2.py, is the answer to
CVE-2023-44487: a reset stream's task is cancelled at once and new ones are not started
beyond the limit. Control-frame floods (PING, SETTINGS, ...) are cut by the engine's
``max_control_frames_per_second`` (GOAWAY ENHANCE_YOUR_CALM), and a client that does not read
the replies its frames made us queue is not read either until it does (``read_after_replies``
of net/h2_channel.py), so a flood costs bounded work and memory. All writes go through the one
``flush()`` of h2_conn.py.

Ends of a connection: the client closes it (streams are cancelled); it is idle (no stream)
for ``keepalive_timeout`` (GOAWAY); it stops answering PINGs (a PING after ``ping_interval``
of silence, closed after ``ping_timeout`` more); a connection error (GOAWAY with its code);
the generation is retired by a reload or the listener stops accepting (graceful: GOAWAY with
the last stream id, the streams in flight finish, newer ones are refused and retried by the
client elsewhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Coroutine
from typing import Any

from revproxy.edge import h2_plain
from revproxy.edge.client_side import ClientGone, ConnInfo, send_file_pieces
from revproxy.edge.exchange import Exchange
from revproxy.edge.fast_exchange import Plan
from revproxy.edge.generation import Generation, ListenerRuntime, Signal
from revproxy.edge.h2_plain import PlainStream
from revproxy.errors import (
    H2_CANCEL,
    H2_INTERNAL_ERROR,
    H2_NO_ERROR,
    H2_REFUSED_STREAM,
    RevproxyError,
)
from revproxy.net.h2_channel import (
    COALESCE_LIMIT,
    PACE_PROBE,
    READ_SIZE,
    H2Channel,
    H2Link,
    close_writer,
)
from revproxy.net.relay import StreamPair
from revproxy.policy.limits import STREAM_LIMIT
from revproxy.proto.events import (
    DataReceived,
    Event,
    GoAwayReceived,
    Headers,
    MessageEnded,
    PingAcknowledged,
    RequestReceived,
    StreamReset,
)
from revproxy.proto.forwarding import ClientIdentity
from revproxy.proto.h2.connection import StreamClosed
from revproxy.proto.h2.server import H2Server

log = logging.getLogger("revproxy.http2")

# Longest a stream waits for the client to open its flow-control window (a client that stops
# reading one response must not pin that stream's origin connection for ever).
SEND_STALL_TIMEOUT = 60.0
# How long a client that does not read the replies to its frames may hold up the reading of
# its own (then the connection ends).
BACKLOG_TIMEOUT = 10.0

_pings = itertools.count(1)


class H2ServerStream(H2Channel):
    """One request stream: the ``ClientStream`` of its exchange."""

    __slots__ = (
        "_bytes_counted",
        "conn",
        "ended",
        "plain",
        "request",
        "request_ended",
        "started",
        "task",
    )
    head_out = 0  # HEADERS frames are not counted in bytes_out (DATA only)

    def __init__(self, conn: Http2Connection, req: RequestReceived) -> None:
        super().__init__(conn, req.stream_id, stall_timeout=SEND_STALL_TIMEOUT)
        self.conn = conn
        self.request = req
        self.started = False
        self.ended = False  # our side ended
        self.request_ended = False  # the client's side ended
        self.task: asyncio.Task[None] | None = None
        self.plain: PlainStream | None = None  # served from callbacks (h2_plain.py)
        self._bytes_counted = 0

    def deliver(self, ev: Event) -> None:
        if isinstance(ev, MessageEnded):
            self.request_ended = True
        super().deliver(ev)

    def gone(self) -> Exception:
        return ClientGone()

    def stalled(self) -> Exception:
        return ClientGone()

    def room(self) -> int:
        """As the pacing sink of the response's origin (net/h2_channel.py): the response head
        needs no window, so it is read (in pieces of ``PACE_PROBE``) however shut the window."""
        room = super().room()
        if not self.started and room < PACE_PROBE:
            return PACE_PROBE
        return room

    # --- ClientStream

    @property
    def response_started(self) -> bool:
        return self.started

    @property
    def request_complete(self) -> bool:
        return self.request_ended

    def take_bytes_in(self) -> int:
        n = self.bytes_in - self._bytes_counted
        self._bytes_counted = self.bytes_in
        return n

    def body_end_ready(self) -> MessageEnded | None:
        inbox = self.inbox
        if inbox and isinstance(inbox[0], MessageEnded):
            ev = inbox.popleft()
            assert isinstance(ev, MessageEnded)
            return ev
        return None

    async def next_body_event(self) -> Event:
        ev = await self.next_event()
        if isinstance(ev, DataReceived | MessageEnded):
            return ev
        raise ClientGone()

    def _head(self, status: int, headers: Headers, end: bool) -> None:
        if self.broken:
            raise ClientGone()
        try:
            self.conn.h2.send_response(self.stream_id, status, headers, end)
        except StreamClosed:
            raise ClientGone() from None
        self.started = True
        self.ended = end
        self.conn.flush()

    async def send_informational(self, status: int, headers: Headers) -> None:
        try:
            self.conn.h2.send_informational(self.stream_id, status, headers)
        except StreamClosed:
            raise ClientGone() from None
        self.conn.flush()

    async def send_response(
        self, status: int, headers: Headers, end: bool = False, body: bytes = b""
    ) -> None:
        self._head(status, headers, end and not body)
        if body:
            # The whole body, in the same write as the head when the windows allow (the
            # common case); the rest as they open.
            try:
                taken = self.conn.h2.send_data(self.stream_id, body, end)
            except StreamClosed:
                raise ClientGone() from None
            self.bytes_out += taken
            self.conn.unflushed += taken
            if taken < len(body):
                await self.send_data(memoryview(body)[taken:], end=end)
            self.ended = end
        if self.conn.unflushed >= COALESCE_LIMIT or self.conn.drain_needed:
            await self._drain()

    async def send_end(self, trailers: Headers | None) -> None:
        await super().send_end(trailers)
        self.ended = True

    async def send_file(self, fd: int, offset: int, count: int) -> None:
        # No sendfile(2) on a shared, framed connection: pieces, paced by the windows.
        await send_file_pieces(self.send_data, fd, offset, count)

    async def send_whole(self, status: int, headers: Headers, body: bytes, close: bool) -> bool:
        # No connection-level "close" in HTTP/2: an unread request body is refused by RST_STREAM
        # NO_ERROR when the stream is done (H2Channel.close).
        headers = [(n, v) for n, v in headers if n != b"connection"]
        try:
            self._head(status, headers, not body)
        except RevproxyError:
            return False
        if body:
            await self.send_data(body, end=True)
            self.ended = True
        return True

    async def tunnel(
        self,
        headers: Headers,
        origin: StreamPair,
        leftover: bytes,
        idle_timeout: float,
    ) -> tuple[int, int]:
        """RFC 8441 §5: a 2xx to the extended CONNECT opens the tunnel; DATA frames carry the
        bytes both ways, END_STREAM is the half-close."""
        self._head(200, headers, False)
        if leftover:
            await self.send_data(leftover)
        reader, writer = origin
        counts = [0, len(leftover)]
        activity = [False]

        async def up() -> None:  # client → origin
            while True:
                ev = await self.next_body_event()
                if isinstance(ev, MessageEnded):
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                assert isinstance(ev, DataReceived)
                writer.write(ev.data)
                await writer.drain()
                counts[0] += len(ev.data)
                activity[0] = True

        async def down() -> None:  # origin → client
            while True:
                data = await reader.read(READ_SIZE)
                if not data:
                    await self.send_end(None)
                    return
                await self.send_data(data)
                counts[1] += len(data)
                activity[0] = True

        async def watchdog() -> None:
            while True:
                await asyncio.sleep(idle_timeout)
                if not activity[0]:
                    return
                activity[0] = False

        tasks = [asyncio.ensure_future(c) for c in (up(), down())]
        dog = asyncio.ensure_future(watchdog())
        try:
            pending: set[asyncio.Future[None]] = set(tasks)
            while pending:
                done, pending = await asyncio.wait(
                    pending | {dog}, return_when=asyncio.FIRST_COMPLETED
                )
                pending.discard(dog)
                if dog in done:
                    break
                for t in done:
                    if t.exception() is not None:
                        pending = set()
                        break
        finally:
            for t in (*tasks, dog):
                t.cancel()
            await asyncio.gather(*tasks, dog, return_exceptions=True)
        return counts[0], counts[1]


class Http2Connection(H2Link):
    """Serves one HTTP/2 client connection until it closes."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        generation: Generation,
        listener: ListenerRuntime,
        info: ConnInfo,
        stopping: Signal | None = None,
    ) -> None:
        g = generation.config.global_
        s = g.h2
        self.h2 = H2Server(
            max_concurrent_streams=s.max_concurrent_streams,
            initial_window_size=s.initial_window_size,
            max_frame_size=s.max_frame_size,
            max_header_list_size=s.max_header_list_size,
            max_resets_per_second=s.max_resets_per_second,
            max_control_frames_per_second=s.max_control_frames_per_second,
        )
        super().__init__(self.h2, reader, writer)
        self.gen = generation
        self.listener = listener
        self.info = info
        self.stopping = stopping
        self.max_streams = s.max_concurrent_streams
        self.streams: dict[int, H2ServerStream] = {}
        self.peer_done = False  # the client sent GOAWAY
        self.loop = self._loop = asyncio.get_running_loop()
        # Plain streams (h2_plain.py): what they read of the generation and listener, the
        # streams of the frames just read that may be plain, the client's identity.
        self._plan: Plan | None = None
        self._plan_of: tuple[Generation, ListenerRuntime] | None = None
        self._pending: list[H2ServerStream] = []
        self.plain_client: ClientIdentity | None = None

    # --- connection loop ----------------------------------------------------------------

    async def run(self) -> None:
        unsubscribe = [self.gen.retiring.subscribe(self.go_away)]
        if self.stopping is not None:
            unsubscribe.append(self.stopping.subscribe(self.go_away))
        try:
            self.flush()  # our SETTINGS
            try:
                await self._read_loop()
            except (ConnectionError, OSError, TimeoutError) as exc:
                log.debug("client=%s HTTP/2 connection ended: %s", self.info.client[0], exc)
            finally:
                # The streams end with their connection (as a TaskGroup's would, without its
                # bookkeeping per task).
                for s in [s for s in self.streams.values() if s.plain is not None]:
                    assert s.plain is not None
                    s.plain.cancel()
                tasks = [s.task for s in self.streams.values() if s.task is not None]
                for task in tasks:
                    task.cancel()
                if tasks:
                    await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for u in unsubscribe:
                u()
            self.connection_lost()
            await close_writer(self.writer)

    async def _read_loop(self) -> None:
        loop = asyncio.get_running_loop()
        g = self.gen.config.global_
        s = g.h2
        last_read = loop.time()
        idle_since = last_read
        ping_sent: float | None = None
        first = True
        while not self.closed:
            now = loop.time()
            if self.streams:
                idle_since = now
            # The next thing that must happen if the client stays silent.
            if first:
                deadline = last_read + g.header_timeout  # the preface comes promptly
            else:
                deadline = idle_since + g.keepalive_timeout
                if ping_sent is not None:
                    deadline = min(deadline, ping_sent + s.ping_timeout)
                else:
                    deadline = min(deadline, last_read + s.ping_interval)
            try:
                async with asyncio.timeout_at(deadline):
                    data = await self.reader.read(READ_SIZE)
            except TimeoutError:
                now = loop.time()
                if first:
                    return
                if ping_sent is not None and now >= ping_sent + s.ping_timeout:
                    log.info("client=%s HTTP/2 PING unanswered; closing", self.info.client[0])
                    return
                if not self.streams and now >= idle_since + g.keepalive_timeout:
                    self.go_away()
                    return
                if ping_sent is None and now >= last_read + s.ping_interval:
                    self.h2.ping(next(_pings).to_bytes(8, "big"))
                    self.flush()
                    ping_sent = now
                continue
            if not data:
                return  # the client closed: its streams can't be answered
            first = False
            last_read = loop.time()
            queued = self.h2.queued
            try:
                events = self.h2.receive_data(data, last_read)
            except RevproxyError as exc:
                log.info(
                    "client=%s listener=%s HTTP/2 connection error: %s",
                    self.info.client[0],
                    self.listener.config.name,
                    exc,
                )
                self.flush_now()  # the GOAWAY
                return
            for ev in events:
                if isinstance(ev, PingAcknowledged):
                    ping_sent = None
                else:
                    self._handle(ev)
            if self._pending:
                self._start_pending()
            # What the client's frames made us queue (ACKs, refusals, resets): not reading
            # those while sending more frames must not make us queue without bound.
            replied = self.h2.queued - queued
            self.flush()
            if (self.h2.goaway_sent or self.peer_done) and not self.streams:
                return
            if replied:
                await self.read_after_replies(replied, BACKLOG_TIMEOUT)

    def _handle(self, ev: Event) -> None:
        if isinstance(ev, RequestReceived):
            self._open(ev)
        elif isinstance(ev, StreamReset):
            stream = self.streams.get(ev.stream_id)
            if stream is not None:
                if ev.reason:
                    client = self.info.client[0]
                    log.info("client=%s stream %d reset: %s", client, ev.stream_id, ev.reason)
                stream.reset_received(ev.error_code)
                if stream.task is not None:
                    stream.task.cancel()
                    # A task cancelled before its first step runs none of ``_serve``: the
                    # stream is ended here then (a no-op when ``_serve`` ended it).
                    stream.task.add_done_callback(lambda _: self._reaped(stream))
                elif stream.plain is not None:
                    stream.plain.cancel()
        elif isinstance(ev, GoAwayReceived):
            self.peer_done = True
        else:
            self.dispatch(ev)

    def _open(self, req: RequestReceived) -> None:
        if len(self.streams) >= self.max_streams or self.h2.goaway_sent:
            # Streams still winding down count too (CVE-2023-44487): refuse, the client may
            # retry it (RFC 9113 §8.7).
            self.h2.forget(req.stream_id, H2_REFUSED_STREAM)
            return
        stream = H2ServerStream(self, req)
        self.streams[req.stream_id] = stream
        self.channels[req.stream_id] = stream
        if req.ended and h2_plain.ENABLED:
            # Perhaps plain: decided once the frames of this read are all handled (its
            # END_STREAM, a reset).
            self._pending.append(stream)
            return
        # The stream holds its task (and the connection its streams) until it is served.
        stream.task = self._loop.create_task(self._serve(stream))

    def _start_pending(self) -> None:
        """Serve the streams opened by the frames just read: plain ones from callbacks
        (h2_plain.py), the others by their tasks."""
        pending = self._pending
        self._pending = []
        of = self._plan_of
        if of is None or of[0] is not self.gen or of[1] is not self.listener:
            self._plan_of = (self.gen, self.listener)
            self._plan = h2_plain.plan_of(self.gen, self.listener, self.info.tls)
        plan = self._plan
        for stream in pending:
            if self.streams.get(stream.stream_id) is not stream:
                continue
            if stream.broken:
                # Reset by the frames that opened it: nothing to serve (as a task cancelled
                # before its first step), nothing recorded.
                self.stream_done(stream, H2_CANCEL)
                continue
            if plan is None or not h2_plain.start(self, stream, plan):
                stream.task = self._loop.create_task(self._serve(stream))

    def start_task(self, stream: H2ServerStream, work: Coroutine[Any, Any, bool]) -> None:
        """A stream the plain way handed on: ``work`` serves it in a task of its own."""
        stream.plain = None
        stream.task = self._loop.create_task(self._serve(stream, work))

    async def _serve(
        self, stream: H2ServerStream, work: Coroutine[Any, Any, bool] | None = None
    ) -> None:
        # RST_STREAM code if our side did not end: a response that broke off is INTERNAL_ERROR
        # (gRPC: INTERNAL), a client that went away CANCEL.
        code = H2_INTERNAL_ERROR
        # conn_limit.streams_per_client: the client's streams on all its connections.
        gate = self.listener.conn_gate
        counters = self.gen.counters
        held: bytes | None = None
        if work is None and gate is not None and gate.streams_per_client is not None:
            held = gate.key(self.info.client[0], stream=True)
            if not counters.acquire(held, gate.streams_per_client):
                held = None
        try:
            if work is not None:
                # Begun by h2_plain.py: the rest of the stream's exchange.
                await work
            else:
                # The stream paces the response's origin (H2Channel is a conn_io.Sink).
                exchange = Exchange(
                    stream,
                    generation=self.gen,
                    listener=self.listener,
                    info=self.info,
                    sink=stream,
                )
                if held is None and gate is not None and gate.streams_per_client is not None:
                    await exchange.refuse(stream.request, STREAM_LIMIT)
                else:
                    await exchange.run(stream.request)
        except ClientGone:
            code = H2_CANCEL
        except Exception:
            log.exception("client=%s stream %d failed", self.info.client[0], stream.stream_id)
        finally:
            if held is not None:
                counters.release(held)
            self.stream_done(stream, code)

    def _reaped(self, stream: H2ServerStream) -> None:
        if self.streams.get(stream.stream_id) is stream:
            self.stream_done(stream, H2_CANCEL)

    def stream_done(self, stream: H2ServerStream, code: int) -> None:
        """The stream is served (``code``: its RST_STREAM if our side did not end)."""
        self.streams.pop(stream.stream_id, None)
        stream.close(code)
        if (self.h2.goaway_sent or self.peer_done) and not self.streams:
            # Draining and done: ending the socket ends the read loop.
            self.flush_now()
            with contextlib.suppress(Exception):
                self.writer.close()

    # --- winding down -------------------------------------------------------------------

    def go_away(self) -> None:
        """GOAWAY with the last stream id: the streams in flight finish, then the connection
        closes; the client opens newer requests elsewhere (RFC 9113 §6.8)."""
        if self.closed or self.h2.goaway_sent:
            return
        self.h2.goaway(H2_NO_ERROR)
        self.flush_now()
        if not self.streams:
            with contextlib.suppress(Exception):
                self.writer.close()
