"""The L7 pipeline for one HTTP/1.1 client connection: the connection loop.

Rule of this room: requests are read one at a time, each served by the connection's
``Exchange`` (exchange.py: routing, local answers, forwarding — the one place errors become
responses), for which this connection is the ``ClientStream``. Plain requests are served
without this loop, from callbacks (fast_exchange.py: ``FastPath``); it hands the loop back
whatever it does not serve, at a point where the loop (or the exchange) can go on from.
Here live what only HTTP/1.1 has: keep-alive and its timeouts, following a reload between
requests, the 400/408/431 of a head that could not be parsed, and the switch to a byte
tunnel after a 101. Nothing is allocated per request beyond what the parser and the exchange
need.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from http import HTTPStatus

from revproxy.edge import fast_exchange
from revproxy.edge.client_side import ClientGone, ConnInfo, proxy_header_for, send_file_pieces
from revproxy.edge.exchange import Exchange, error_body, log, request_id
from revproxy.edge.generation import Generation, ListenerRuntime
from revproxy.errors import ClientProtocolError, RequestTimeout, RevproxyError
from revproxy.net.conn_io import ConnIO
from revproxy.net.relay import StreamPair, relay_streams
from revproxy.ops.accesslog import AccessRecord
from revproxy.proto.events import (
    ConnectionClosed,
    DataReceived,
    Event,
    Headers,
    MessageEnded,
    RequestReceived,
)
from revproxy.proto.http1.head import START_CHECKED, impossible_request_start
from revproxy.upstream.dialer import READ_SIZE

__all__ = ["ClientGone", "ConnInfo", "HttpConnection", "proxy_header_for"]

# How long a client may take no byte of a file we send (``send_file``) before its connection
# is aborted: a reader that stalls must not hold a connection and a file for ever.
FILE_STALL_TIMEOUT = 60.0
# File bodies up to this size are read and written with their head (one write); longer ones
# go by sendfile(2) on a plain connection.
SENDFILE_MIN = 32 * 1024
# Zeros that stand in for bytes sent by sendfile(2) when the state machine counts them.
_BLANK = bytes(256 * 1024)


class _Source:
    """Events from the client: bytes read from its connection, fed to a parser."""

    __slots__ = ("bytes_read", "conn", "eof", "events", "parse")

    def __init__(self, conn: ConnIO, parse: Callable[[bytes], list[Event]]) -> None:
        self.conn = conn
        self.parse = parse
        self.events: deque[Event] = deque()
        self.bytes_read = 0
        self.eof = False

    async def next(self) -> Event:
        while not self.events:
            if self.eof:
                raise ConnectionResetError("peer closed the connection")
            data = await self.conn.read(READ_SIZE)
            if not data:
                self.eof = True
            self.bytes_read += len(data)
            self.events.extend(self.parse(data))
        return self.events.popleft()


class HttpConnection:
    """Serves one HTTP/1.1 client connection until it closes (a ``ClientStream``)."""

    def __init__(
        self,
        conn: ConnIO,
        *,
        generation: Generation,
        listener: ListenerRuntime,
        info: ConnInfo,
    ) -> None:
        self.conn = conn
        self.gen = generation
        self.listener = listener
        self.info = info
        g = generation.config.global_
        self.h1 = generation.h1_server(max_header_size=g.max_header_size)
        self.client = _Source(conn, self.h1.receive_data)
        self.bytes_out = 0
        self.head_out = 0
        self._accounted_in = 0  # client bytes already counted in an access-log record
        self.exchange = Exchange(
            self, generation=generation, listener=listener, info=info, sink=conn
        )
        self.fast = fast_exchange.FastPath(self)

    # --- connection loop ----------------------------------------------------------------

    async def run(self) -> None:
        g = self.gen.config.global_
        wait = g.header_timeout  # a new connection must send its first request promptly
        fast = self.fast
        try:
            while True:
                if fast.ready():
                    # Plain requests are served from callbacks until one is not.
                    kind, value = await fast.serve(wait, g.header_timeout, g.keepalive_timeout)
                    if kind == fast_exchange.CLOSED:
                        return
                    if kind == fast_exchange.FAILED:
                        await self._fail(value)
                        return
                    if kind == fast_exchange.RAISED:
                        raise value
                    if kind == fast_exchange.ACTION:
                        keep = await fast.general(*value)
                    elif kind == fast_exchange.ABORTED:
                        keep = await fast.aborted(value)
                    else:
                        if kind == fast_exchange.READ:
                            idle, deadline, start = value
                            req = await self._next_request(
                                idle, g.header_timeout, deadline=deadline, start=start
                            )
                        else:
                            req = value
                        keep = await self._serve(req)
                else:
                    req = await self._next_request(wait, g.header_timeout)
                    keep = await self._serve(req)
                if not keep or not self.h1.keep_alive:
                    return
                try:
                    self.client.events.extend(self.h1.start_next_cycle())
                except ClientProtocolError as exc:  # a pipelined request that cannot be read
                    await self._fail(exc)
                    return
                wait = g.keepalive_timeout
        except ClientGone:
            return
        except (ConnectionError, OSError):
            return
        finally:
            fast.stop()
            await self._close()

    async def _serve(self, req: RequestReceived | None) -> bool:
        """The general exchange for ``req`` (None: the client is done)."""
        if req is None:
            return False
        if self.gen.retired:
            self._follow_reload()
        return await self.exchange.run(req)

    async def _close(self) -> None:
        await self.conn.aclose()

    async def _next_request(
        self,
        idle: float,
        head_timeout: float,
        *,
        deadline: float | None = None,
        start: bytes = b"",
    ) -> RequestReceived | None:
        """The next request head, or None when the client is done (closed or idle).
        ``deadline`` and ``start``: a wait the fast path began (its deadline, and the first
        bytes of the head it read)."""
        loop = self.conn.loop
        if deadline is None:
            deadline = loop.time() + idle
        head_deadline: float | None = None
        while True:
            try:
                while not self.client.events:
                    if head_deadline is None and self.h1.has_partial_head:
                        head_deadline = loop.time() + head_timeout
                        deadline = (
                            min(deadline, head_deadline) if idle < head_timeout else head_deadline
                        )
                    if self.client.eof:
                        return None
                    data = await self.conn.read(READ_SIZE, deadline)
                    if not data:
                        self.client.eof = True
                    self.client.bytes_read += len(data)
                    self.client.events.extend(self.h1.receive_data(data))
                    if not self.client.events and len(start) < START_CHECKED:
                        # Bytes that can never become a request line are answered now, not
                        # when the head timeout ends a wait for a line end.
                        start += data[: START_CHECKED - len(start)]
                        if self.h1.has_partial_head and impossible_request_start(start):
                            raise ClientProtocolError("bytes that cannot begin a request")
            except TimeoutError:
                if self.h1.has_partial_head:
                    await self._fail(RequestTimeout("request head not received in time"))
                return None
            except ClientProtocolError as exc:
                await self._fail(exc)
                return None
            ev = self.client.events.popleft()
            if isinstance(ev, RequestReceived):
                return ev
            if isinstance(ev, ConnectionClosed):
                return None

    def _follow_reload(self) -> None:
        """A reload happened since the last request: serve the next one with the current
        generation (the one in flight finished on its own), if it still has this listener."""
        gen = self.gen
        while gen.successor is not None:
            gen = gen.successor
        lrt = gen.listeners.get(self.listener.config.name)
        same_kind = lrt is not None and (lrt.tls is None) == (not self.info.tls)
        if lrt is not None and same_kind and lrt.config.mode == "http":
            self.gen, self.listener = gen, lrt
            self.exchange.gen, self.exchange.listener = gen, lrt

    # --- the client stream of the exchange ----------------------------------------------

    @property
    def response_started(self) -> bool:
        return self.h1.response_started

    @property
    def request_complete(self) -> bool:
        return self.h1.request_complete

    def take_bytes_in(self) -> int:
        n = self.client.bytes_read - self._accounted_in
        self._accounted_in = self.client.bytes_read
        return n

    def body_end_ready(self) -> MessageEnded | None:
        events = self.client.events
        if events and isinstance(events[0], MessageEnded):
            ev = events.popleft()
            assert isinstance(ev, MessageEnded)
            return ev
        return None

    async def next_body_event(self) -> Event:
        try:
            ev = await self.client.next()
        except (ConnectionError, OSError) as exc:
            raise ClientGone() from exc
        if isinstance(ev, DataReceived | MessageEnded):
            return ev
        raise ClientGone()

    async def send_informational(self, status: int, headers: Headers) -> None:
        await self._send(self.h1.send_informational(status, headers))

    async def send_response(
        self, status: int, headers: Headers, end: bool = False, body: bytes = b""
    ) -> None:
        h1 = self.h1
        head = h1.send_response(status, headers)
        self.head_out += len(head)
        full = self._put(head)
        if body:
            full = self._put(h1.send_data(body))  # not joined: written with the head
        if end:
            full = self._put(h1.send_end())
        if full:
            await self._drain()

    async def send_data(self, data: bytes) -> None:
        if self._put(self.h1.send_data(data)):
            await self._drain()

    async def send_end(self, trailers: Headers) -> None:
        if self._put(self.h1.send_end(trailers)):
            await self._drain()

    async def send_file(self, fd: int, offset: int, count: int) -> None:
        if count <= 0:
            return
        conn = self.conn
        if count <= SENDFILE_MIN or not conn.can_sendfile:
            await send_file_pieces(self._send_piece, fd, offset, count)
            return
        self._count_body(count)
        try:
            sent = await conn.sendfile(fd, offset, count, FILE_STALL_TIMEOUT, self._count_out)
        except TimeoutError:
            conn.abort()
            raise ClientGone() from None
        except OSError as exc:
            raise ClientGone() from exc
        if sent < count:
            raise RevproxyError("the file ended before the length the response announced")

    async def _send_piece(self, piece: bytes) -> None:
        """One piece of a file's body: written when the client takes it."""
        if self._put(self.h1.send_data(piece)):
            try:
                async with asyncio.timeout(FILE_STALL_TIMEOUT):
                    await self._drain()
            except TimeoutError:
                self.conn.abort()
                raise ClientGone() from None

    def _count_body(self, n: int) -> None:
        """The state machine is told of ``n`` body bytes sent another way (sendfile(2)), so
        it checks them against the head's Content-Length as it does what ``send_data`` gives
        it. Zeros stand in for them and what comes back is dropped: it is those same bytes,
        since a body with a length is not framed (anything else is refused here)."""
        h1 = self.h1
        blank = _BLANK
        while n:
            size = min(n, len(blank))
            if len(h1.send_data(blank if size == len(blank) else blank[:size])) != size:
                raise RevproxyError("send_file needs a response head with Content-Length")
            n -= size

    def _count_out(self, n: int) -> None:
        self.bytes_out += n

    async def send_whole(self, status: int, headers: Headers, body: bytes, close: bool) -> bool:
        if close:
            headers.append((b"connection", b"close"))
        try:
            data = self.h1.send_response(status, headers)
            self.head_out += len(data)
            if body:
                data += self.h1.send_data(body)
            data += self.h1.send_end()
        except RevproxyError:
            return False
        await self._send(data)
        return not close

    async def tunnel(
        self,
        headers: Headers,
        origin: StreamPair,
        leftover: bytes,
        idle_timeout: float,
    ) -> tuple[int, int]:
        """RFC 9110 §15.2.2 / RFC 6455 §4: the 101 switches this connection to a tunnel."""
        await self._send(self.h1.send_informational(101, headers) + leftover)
        early = self.h1.trailing_data  # bytes the client sent after its request
        _reader, writer = origin
        if early:
            writer.write(early)
            self.client.bytes_read += len(early)
        self.conn.flush()
        result = await relay_streams((self.conn, self.conn), origin, idle_timeout=idle_timeout)
        self.client.bytes_read += result.a_to_b
        self.bytes_out += result.b_to_a
        return result.a_to_b + len(early), result.b_to_a + len(leftover)

    async def _send(self, data: bytes) -> None:
        """Send ``data`` with what else this turn of the loop sends (one write for a small
        response's head, body and end); wait only while the client's buffer is full."""
        if self._put(data):
            await self._drain()

    def _put(self, data: bytes) -> bool:
        """``_send`` without the wait: True when the caller must ``_drain`` before more."""
        if not data:
            return False
        self.bytes_out += len(data)
        conn = self.conn
        if conn.is_closing():
            raise ClientGone()
        conn.write_soon(data)
        return conn.write_paused

    async def _drain(self) -> None:
        try:
            await self.conn.drain()
        except (ConnectionError, OSError) as exc:
            raise ClientGone() from exc

    # --- a head that could not be parsed ------------------------------------------------

    async def _fail(self, exc: RevproxyError) -> None:
        """Answer a request whose head could not be parsed, then the connection closes.

        It is still a request the client sent, so it gets its access-log line (method and
        path "-": they could not be read)."""
        rid = request_id()
        log.info(
            "id=%s client=%s listener=%s %s: %s",
            rid,
            self.info.client[0],
            self.listener.config.name,
            type(exc).__name__,
            exc,
        )
        status = exc.status
        body = error_body(status)
        head = _raw_head(status, len(body))
        sent = self.bytes_out
        with contextlib.suppress(ClientGone):
            await self._send(head + body)
        rec = AccessRecord(
            id=rid,
            client=self.info.client[0],
            peer=self.info.peer[0],
            listener=self.listener.config.name,
            sni=self.info.sni or "",
            host="",
            method="-",
            path="-",
            status=status,
            bytes_in=self.take_bytes_in(),
            bytes_out=self.bytes_out - sent,
            route="",
            pool="",
            backend="-",
            duration_ms=0.0,
            upstream_ms=0.0,
            authority=self.info.authority,
            vpce=self.info.vpce,
        )
        self.gen.access_log.record(rec)
        self.gen.metrics.record(rec)


def _raw_head(status: int, length: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {length}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n"
    ).encode()
