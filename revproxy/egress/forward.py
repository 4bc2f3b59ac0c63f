"""``mode = "forward"``: HTTP forward proxy (absolute-form) and CONNECT.

Rule of this room: a request is judged before a byte goes anywhere — the target it names
(proto/forward_proxy.py), the user its ``Proxy-Authorization`` proves (407 with
``Proxy-Authenticate`` otherwise), the destination by name and port, then by every resolved
address (egress/dial.py) — and a refusal is a local answer (400, 403, 407, 502, 504) with one
log line. An allowed absolute-form request is relayed as origin-form with hop-by-hop and
identifying headers removed and nothing added; the connection to a destination is kept for
the next request to the same one (keep-alive both sides, egress/origins.py). An allowed
CONNECT is answered ``200`` and both sockets go to the splice relay (net/relay.py: zero copy,
half-close honoured, ``timeouts.idle``): the client's socket is taken back from its transport,
and the bytes the client sent past the CONNECT head go to the destination first.

Both sides are ``net/conn_io.ConnIO`` connections, as the edge's: deadlines instead of a timer
per read, the writes of one loop turn coalesced (a small response is one ``send``), and the
origin read no further ahead than the client takes (pacing) — or the client no further than
the origin takes, for an upload. Heads are read up to ``global.max_header_size`` within
``global.header_timeout`` (431, 408); what a head means is decided by the HTTP/1.1 parser the
generation chose (proto/http1), one per client connection, through ``ForwardRequests``.

The plain path: a request that arrives whole with no body, whose user is already known
(``Authenticator.known``), whose destination is allowed (the verdict is remembered) and that
finds a kept connection to it, for a client that keeps up, is relayed by callbacks — the
client's bytes are parsed in ``data_received``, the request written to the destination, its
response parsed and written back as it arrives — with no coroutine and no task wake-up. Every
other request, and every exchange that leaves the plain course (a response longer than what
arrives at once, a kept connection found closed, a timeout), goes on in the connection's
coroutine, which holds the code for all of them; it hands the connection back to the plain
path once that exchange is over. Both judge, answer, log and count alike: the plain path only
skips the waits that cannot happen.

A reload reaches a kept-alive client connection at its next request: the plain path leaves a
request of a retired service (egress/service.py) to the coroutine, which judges it — and every
later one — by the listener's current service: its destinations, ports, deny, users and the
listener's allow/deny (a client no longer allowed, or a listener gone, is answered 403 and the
connection closes). A destination connection opened under other rules is not used again. What
is in flight (a response, a tunnel) ends on the rules it began with.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from revproxy.egress.dial import CONNECT, Refused
from revproxy.egress.origins import DestinationIO, Origin
from revproxy.errors import BackendError, ClientProtocolError, RevproxyError
from revproxy.net.conn_io import ConnIO
from revproxy.net.relay import RelayEnd, SocketRelay
from revproxy.ops.accesslog import AccessRecord
from revproxy.policy.access import DENY
from revproxy.policy.auth import AUTH
from revproxy.proto.events import (
    ConnectionClosed,
    DataReceived,
    Event,
    Headers,
    InformationalReceived,
    MessageEnded,
    RequestReceived,
    ResponseReceived,
)
from revproxy.proto.forward_proxy import (
    ForwardRequests,
    PlainRequest,
    ProxyTarget,
    destination_headers,
    relayed_reason,
    response_headers,
)
from revproxy.proto.http1.api import H1ServerAPI
from revproxy.proto.socks5 import Reply

if TYPE_CHECKING:
    from revproxy.egress.service import ClientConn, EgressService

__all__ = ["serve_forward"]

# Bytes read from a connection at once.
READ_SIZE = 256 * 1024
# Pieces of a response the plain path writes at once are joined up to this size.
CORK_JOIN = 64 * 1024
# The longest a closing client connection is waited for (seconds).
CLOSE_WAIT = 1.0
# Refusal of a request whose listener a reload removed (or changed to another mode).
LISTENER_GONE = "listener-gone"
# What a client whose connection a reload refused is told.
_FOLLOW_REFUSALS = {
    LISTENER_GONE: "listener no longer configured (reloaded)",
    DENY: "client not allowed (reloaded)",
}
# Access-log status of a tunnel that ended (as edge/tcp.py's table for L4 connections).
_END_STATUS = {
    RelayEnd.CLOSED: 200,
    RelayEnd.IDLE: 504,
    RelayEnd.A_FAILED: 499,
    RelayEnd.B_FAILED: 502,
}


class _Closed(Exception):
    """The client went away or the exchange cannot go on: stop serving the connection."""


class _Stale(Exception):
    """A kept destination connection failed before any byte of its response: the request
    (which had no body) may go again on a new one."""


async def _send(sock: socket.socket, data: bytes) -> None:
    if data:
        await asyncio.get_running_loop().sock_sendall(sock, data)


def _local_answer(
    server: H1ServerAPI | None,
    status: int,
    text: str,
    extra: Headers | None = None,
    *,
    close: bool = False,
) -> bytes:
    body = (text + "\n").encode()
    headers: Headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    if close or server is None:
        headers.append((b"connection", b"close"))
    if server is None:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, '')}".encode()]
        lines += [n + b": " + v for n, v in headers]
        return b"\r\n".join(lines) + b"\r\n\r\n" + body
    try:
        return server.send_response(status, headers) + server.send_data(body) + server.send_end()
    except RevproxyError:
        return b""


_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    504: "Gateway Timeout",
}


class _ClientIO(ConnIO):
    """The client connection's ``ConnIO``: while the plain path serves it (``plain`` set), its
    bytes and its end go to the plain path as they arrive."""

    __slots__ = ("plain",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.plain: _ForwardConnection | None = None

    def data_received(self, data: bytes) -> None:
        plain = self.plain
        if plain is None:
            ConnIO.data_received(self, data)
        else:
            plain.client_data(data)

    def eof_received(self) -> bool:
        keep_open = ConnIO.eof_received(self)
        plain = self.plain
        if plain is not None:
            plain.client_gone()
        return keep_open

    def connection_lost(self, exc: Exception | None) -> None:
        ConnIO.connection_lost(self, exc)
        plain = self.plain
        if plain is not None:
            plain.client_gone()


async def serve_forward(svc: EgressService, csock: socket.socket, conn: ClientConn) -> None:
    """Serve one client connection of a forward listener to its end."""
    loop = asyncio.get_running_loop()
    io = _ClientIO(loop)
    try:
        await loop.connect_accepted_socket(lambda: io, csock)
    except OSError:
        return
    client = _ForwardConnection(svc, conn, io)
    tunnel: _Tunnel | None = None
    try:
        tunnel = await client.run()
    except (OSError, _Closed):
        pass
    finally:
        await client.close()
    svc = client.svc  # the service that allowed the tunnel (the current one, after a reload)
    del client  # a tunnel holds nothing of the HTTP connection it came from
    if tunnel is not None:
        await tunnel.run(svc, conn)


# What the plain path is doing (``_ForwardConnection.state``).
_OFF = 0  # the coroutine serves the connection
_IDLE = 1  # waiting for the next request
_WAIT = 2  # a request went to its destination: waiting for the response

# What the connection's coroutine does next, as the plain path hands it over (the coroutine
# is made by the task itself, so that a cancelled task leaves none unawaited): a function of
# the connection and its arguments, or None when the connection is over.
_Step = tuple[Callable[..., Coroutine[Any, Any, "bool | _Tunnel"]], tuple[Any, ...]] | None


class _Pending:
    """The request the plain path relays: what its response needs."""

    __slots__ = ("dest", "end", "got", "origin", "plain", "rec", "req", "started")

    def __init__(self, req: RequestReceived, end: MessageEnded, dest: ProxyTarget,
                 origin: Origin, rec: AccessRecord, started: float) -> None:  # fmt: skip
        self.req = req
        self.end = end
        self.dest = dest
        self.origin = origin
        self.rec = rec
        self.started = started
        self.got = 0  # bytes received from the destination for this request
        # A remembered request neither parser has read (proto/forward_proxy.py).
        self.plain: PlainRequest | None = None


class _ForwardConnection:
    """One client connection: its requests, one at a time, and the destination connection it
    keeps."""

    __slots__ = (
        "_accounted",
        "_deadline",
        "_handover",
        "_pending",
        "_tick",
        "_timer",
        "bytes_read",
        "conn",
        "eof",
        "events",
        "io",
        "origin",
        "reqs",
        "state",
        "svc",
        "tunnelled",
    )

    def __init__(self, svc: EgressService, conn: ClientConn, io: _ClientIO) -> None:
        self.svc = svc
        self.conn = conn
        self.io = io
        g = svc.global_
        self.reqs = ForwardRequests(svc.new_h1_server, g.max_header_size, svc.plain)
        self.events: deque[Event] = deque()
        self.bytes_read = 0
        self._accounted = 0  # client bytes already counted in an access-log record
        self.eof = False
        self.origin: Origin | None = None  # kept for this client's next request
        self.tunnelled = False  # the client's socket went to a tunnel
        # The plain path: its state, the request in flight, the future the coroutine waits
        # on while the plain path serves, the deadline of the current wait (loop time) and
        # the one timer that watches it: armed at most ``_tick`` ahead (the shortest wait
        # there is), so that a later deadline never needs it moved (see ``_arm``).
        self.state = _OFF
        self._pending: _Pending | None = None
        self._handover: asyncio.Future[_Step] | None = None
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._tick = max(min(g.header_timeout, g.keepalive_timeout, svc.idle_timeout), 0.001)

    async def close(self) -> None:
        self._leave_plain()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending = self._pending
        if pending is not None:  # the task ended while a request waited (cancelled)
            self._pending = None
            pending.origin.io.reader = None
            pending.origin.close()
        origin = self.origin
        self.origin = None
        if origin is not None:
            self.svc.keep(origin)
        if not self.tunnelled:
            await self.io.aclose(CLOSE_WAIT)

    # --- the connection loop ----------------------------------------------------------------

    async def run(self) -> _Tunnel | None:
        """Serve requests until the connection ends, or becomes the tunnel returned: on the
        plain path while it can, here when it cannot."""
        g = self.svc.global_
        idle = g.header_timeout  # a new connection must send its first request promptly
        loop = self.io.loop
        while True:
            handover: asyncio.Future[_Step] = loop.create_future()
            self._handover = handover
            self._enter_plain(idle)
            try:
                step = await handover
            finally:
                self._handover = None
                self._leave_plain()
            if step is None:
                return None
            func, args = step
            keep = await func(self, *args)
            if isinstance(keep, _Tunnel):
                return keep
            if not keep:
                return None
            try:
                self.events.extend(self.reqs.next_cycle())
            except ClientProtocolError as exc:  # a pipelined request that cannot be read
                self._bad_head(exc)
                return None
            idle = g.keepalive_timeout

    async def _one_request(self, idle: float) -> bool | _Tunnel:
        """The next request, read and served here (see ``run``)."""
        req = await self._next_request(idle, self.svc.global_.header_timeout)
        if req is None:
            return False
        return await self._exchange(req)

    async def _next_request(self, idle: float, head_timeout: float) -> RequestReceived | None:
        """The next request head, or None when the client is done (closed, idle, or sent
        what cannot be read: answered then)."""
        io = self.io
        reqs = self.reqs
        events = self.events
        loop = io.loop
        deadline = loop.time() + idle
        head_deadline: float | None = None
        while True:
            try:
                while not events:
                    if head_deadline is None and reqs.has_partial_head:
                        head_deadline = loop.time() + head_timeout
                        deadline = (
                            min(deadline, head_deadline) if idle < head_timeout else head_deadline
                        )
                    if self.eof:
                        return None
                    data = await io.read(READ_SIZE, deadline)
                    if not data:
                        self.eof = True
                    self.bytes_read += len(data)
                    events.extend(reqs.receive_data(data))
            except TimeoutError:
                if reqs.has_partial_head:
                    io.write(_local_answer(None, 408, "timeout"))
                return None
            except ClientProtocolError as exc:
                self._bad_head(exc)
                return None
            ev = events.popleft()
            if type(ev) is RequestReceived:
                return ev
            if isinstance(ev, ConnectionClosed):
                return None

    # --- the plain path -------------------------------------------------------------------

    def _enter_plain(self, idle: float) -> None:
        """The plain path takes the connection: what is already received is looked at now,
        the rest as it arrives."""
        io = self.io
        self.state = _IDLE
        io.plain = self
        loop = io.loop
        self._arm(loop.time() + idle)
        if self.events:
            events = list(self.events)
            self.events.clear()
            self._serve(events, idle)
        elif io.buffered:
            self.client_data(io.take_buffered(), idle)
        elif self.eof or io.at_eof() or io.is_closing():
            self._hand_over(None)

    def _leave_plain(self) -> None:
        self.state = _OFF
        self.io.plain = None

    def _hand_over(self, step: _Step) -> None:
        """The coroutine takes the connection: ``step`` is what it does next (None: end)."""
        self._leave_plain()
        handover = self._handover
        if handover is not None and not handover.done():
            handover.set_result(step)

    def _arm(self, deadline: float) -> None:
        """The plain path's current wait ends at ``deadline`` (loop time, at least ``_tick``
        ahead). The timer fires at most ``_tick`` from when it was armed, so it is never later
        than a deadline set after it; when it finds the deadline still ahead, it re-arms."""
        self._deadline = deadline
        if self._timer is None:
            loop = self.io.loop
            self._timer = loop.call_at(loop.time() + self._tick, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        state = self.state
        if state == _OFF:
            return
        loop = self.io.loop
        now = loop.time()
        if now < self._deadline:
            self._timer = loop.call_at(min(self._deadline, now + self._tick), self._on_timer)
            return
        if state == _IDLE:
            self._hand_over(None)  # keep-alive (or first request) timeout: nothing to answer
            return
        pending = self._pending
        assert pending is not None
        self._pending = None
        self._catch_up(pending)
        origin = pending.origin
        origin.io.reader = None
        origin.close()
        if not self.reqs.parser.response_started:
            pending.rec.status = 504
            self.io.write(_local_answer(self.reqs.parser, 504, "destination failed", close=True))
        self._finish(pending.rec, pending.started)
        self._hand_over(None)

    def client_data(self, data: bytes, idle: float | None = None) -> None:
        """Bytes from the client while the plain path serves it."""
        if self.state != _IDLE:
            # A request is in flight: its successor waits, read after the response.
            ConnIO.data_received(self.io, data)
            return
        self.bytes_read += len(data)
        try:
            events = self.reqs.receive_data(data, True)
        except ClientProtocolError as exc:
            self._bad_head(exc)
            self._hand_over(None)
            return
        self._serve(events, idle)

    def client_gone(self) -> None:
        """The client closed its side or the connection is lost."""
        if self.state == _IDLE:
            # Between requests (a partial head is the coroutine's): nothing to answer.
            self.eof = True
            self._hand_over(None)
        # In flight: the response is relayed (or fails); the end is seen after it.

    def _serve(self, events: list[Event], idle: float | None) -> None:
        """Events of the client's parser, beginning with a request's: relayed here when the
        request is plain, else handed to the coroutine."""
        if (
            len(events) == 2
            and type(events[0]) is RequestReceived
            and type(events[1]) is MessageEnded
            and self._relay_plain(events[0], events[1])
        ):
            return
        self.reqs.catch_up()  # the coroutine's code reads the parser
        if events and type(events[0]) is ConnectionClosed:
            self._hand_over(None)
            return
        self.events.extend(events)
        if idle is None:
            idle = max(self._deadline - self.io.loop.time(), 0.0)
        self._hand_over((_ForwardConnection._one_request, (idle,)))

    def _relay_plain(self, req: RequestReceived, end: MessageEnded) -> bool:
        """Send a whole request without a body to a kept connection to its destination, when
        nothing stands in the way; False when the coroutine must serve it."""
        svc = self.svc
        reqs = self.reqs
        dest = reqs.dest
        io = self.io
        if dest is None or dest.tunnel or io.unproven or io.write_paused or svc.retired:
            return False  # (retired: a reload came; the coroutine judges by the new rules)
        user = svc.known_user(req.headers)
        if user is None:
            return False  # 407, or a password to check: the coroutine's
        if svc.check_request(dest.host, dest.port, False):
            return False  # refused: answered there
        origin = self.origin
        key = (dest.host, dest.port)
        if origin is not None and (origin.key != key or not origin.alive):
            self.origin = None
            svc.origins.give(origin)
            origin = None
        if origin is None:
            origin = svc.origins.take(key)
            if origin is None:
                return False  # a new connection: opened there
        self.origin = None
        started = time.monotonic()
        rec = svc.record(self.conn, reqs.method.decode("latin-1"))
        rec.path = dest.path.decode("latin-1")
        rec.host = dest.host
        rec.destination = dest.shown
        rec.user = user
        rec.resolved = rec.backend = origin.resolved
        rec.upstream_ms = (time.monotonic() - started) * 1000
        pending = self._pending = _Pending(req, end, dest, origin, rec, started)
        plain = reqs.skipped
        if plain is not None:  # what the destination's parser wrote for it, and is again
            pending.plain = plain
            out = plain.outbound
        else:
            parser = origin.parser
            headers = destination_headers(req.headers, dest.authority)
            out = parser.send_request(req.method, dest.path, headers)
            out += parser.send_end(end.trailers or None)
        self.state = _WAIT
        self._arm(io.loop.time() + svc.idle_timeout)
        oio = origin.io
        oio.reader = self
        oio.write(out)
        return True

    def destination_data(self, data: bytes) -> None:
        """Bytes of the response to the plain path's request (``b""``: the destination ended
        its side)."""
        pending = self._pending
        assert pending is not None
        origin = pending.origin
        rec = pending.rec
        plain = pending.plain
        if plain is not None:
            if not pending.got:
                end = data.find(b"\r\n\r\n") + 4
                if end > 3:
                    known = self.svc.plain.response(data[:end])
                    if known is not None and len(data) - end == known.length:
                        # A remembered response, whole: its head as the client's parser
                        # wrote it, its body as it came; both connections stay open.
                        plain.misses = 0
                        whole = known.head + data[end:] if known.length else known.head
                        rec.status = known.status
                        rec.bytes_out += len(whole)
                        self.io.write(whole)
                        origin.reused = True
                        self.origin = origin
                        self._pending = None
                        self._exchanged(pending, True)
                        return
            self.svc.plain.response_missed(plain)
            self._catch_up(pending)
        pending.got += len(data)
        out: list[bytes] = []
        try:
            ended = self._response_events(origin.parser.receive_data(data), origin, rec, out)
        except RevproxyError as exc:
            self._write_out(out)
            self._destination_failed(pending, exc)
            return
        self._write_out(out)
        if ended is not None:
            self._pending = None
            self._exchanged(pending, ended)
            return
        if not data:
            self._destination_failed(
                pending, BackendError("destination closed the connection before its response")
            )
            return
        if self.reqs.parser.response_started:
            # A longer body: the coroutine relays the rest, paced by what the client takes.
            self._pending = None
            origin.io.reader = None
            self._hand_over((_ForwardConnection._rest_of_response, (pending,)))

    def _catch_up(self, pending: _Pending) -> None:
        """Both parsers read the remembered request they skipped: the exchange goes on as
        any other."""
        plain = pending.plain
        if plain is None:
            return
        pending.plain = None
        self.reqs.catch_up()
        parser = pending.origin.parser
        dest = pending.dest
        parser.send_request(plain.method, dest.path,
                            destination_headers(pending.req.headers, dest.authority))  # fmt: skip
        parser.send_end(None)

    def destination_lost(self, exc: Exception | None) -> None:
        pending = self._pending
        if pending is None:
            return
        if exc is None:
            self.destination_data(b"")
        else:
            self._destination_failed(pending, exc)

    def _write_out(self, out: list[bytes]) -> None:
        if not out:
            return
        io = self.io
        if len(out) == 1:
            io.write(out[0])
        elif sum(map(len, out)) <= CORK_JOIN:
            io.write(b"".join(out))
        else:
            for piece in out:
                io.write_soon(piece)
            io.flush()

    def _destination_failed(self, pending: _Pending, exc: Exception) -> None:
        """The destination failed the plain path's request: as ``_response`` does — a kept
        connection that failed before any byte goes again once (the coroutine opens the new
        one), else 502 unless the response began (then the client connection ends)."""
        self._pending = None
        self._catch_up(pending)
        origin = pending.origin
        origin.io.reader = None
        origin.close()
        rec = pending.rec
        if self.reqs.parser.response_started:
            self._finish(rec, pending.started)
            self._hand_over(None)
            return
        if origin.reused and pending.got == 0:
            self._hand_over((_ForwardConnection._send_again, (pending,)))
            return
        rec.status = 502
        self.io.write(_local_answer(self.reqs.parser, 502, "destination failed", close=True))
        self._finish(rec, pending.started)
        self._hand_over(None)

    def _exchanged(self, pending: _Pending, keep: bool) -> None:
        """The plain path's response went whole: its record, then the next request."""
        pending.origin.io.reader = None
        self._finish(pending.rec, pending.started)
        io = self.io
        if not keep or io.is_closing():
            self._hand_over(None)
            return
        self.state = _IDLE
        try:
            events = self.reqs.next_cycle()
        except ClientProtocolError as exc:  # a pipelined request that cannot be read
            self._bad_head(exc)
            self._hand_over(None)
            return
        keepalive = self.svc.global_.keepalive_timeout
        self._arm(io.loop.time() + keepalive)
        if events:
            self._serve(events, keepalive)
        elif io.buffered:
            self.client_data(io.take_buffered(), keepalive)
        elif self.eof or io.at_eof():
            self._hand_over(None)

    async def _rest_of_response(self, pending: _Pending) -> bool:
        """The coroutine's part of a response the plain path began."""
        try:
            return await self._response(pending.origin, pending.rec, retry=False,
                                        got=pending.got)  # fmt: skip
        finally:
            self._finish(pending.rec, pending.started)

    async def _send_again(self, pending: _Pending) -> bool:
        """The plain path's request, on a new connection (the kept one failed before any
        byte of its response)."""
        rec = pending.rec
        try:
            opened = await self._open(pending.dest)
            if isinstance(opened, Refused):
                return self._unreachable(rec, opened)
            return await self._relay(pending.req, pending.dest, opened, rec, pending.end)
        finally:
            self._finish(rec, pending.started)

    # --- answers and records --------------------------------------------------------------

    def _bad_head(self, exc: ClientProtocolError) -> None:
        """A head that cannot be relayed: answered, and the connection closes. Once its
        request line was read, it is a request: it gets its access-log line."""
        self.io.write_soon(_local_answer(None, exc.status, str(exc)))
        reqs = self.reqs
        if not reqs.head_read:
            return
        svc = self.svc
        rec = svc.record(self.conn, reqs.method.decode("latin-1"))
        rec.path = reqs.target.decode("latin-1")
        rec.status = exc.status
        svc.refused(rec, "bad-request", str(exc))
        self._finish(rec, time.monotonic())

    def _finish(self, rec: AccessRecord, started: float) -> None:
        rec.bytes_in += self.bytes_read - self._accounted
        self._accounted = self.bytes_read
        rec.duration_ms = (time.monotonic() - started) * 1000
        self.svc.finish(self.conn, rec, request=rec.method not in ("CONNECT", "-"))

    def _skip_body(self) -> bool:
        """Drop the events of a request that is answered unread; whether it had ended (the
        connection may carry another request)."""
        events = self.events
        while events:
            ev = events.popleft()
            if type(ev) is MessageEnded:
                return True
            if type(ev) is not DataReceived:
                return False
        return self.reqs.parser.request_complete

    def _answer(self, rec: AccessRecord, started: float, status: int, text: str,
                extra: Headers | None = None) -> bool:  # fmt: skip
        """A local answer to an allowed-to-be-read request; whether the connection goes on."""
        rec.status = status
        reqs = self.reqs
        # Bytes sent behind a refused CONNECT were meant for a tunnel: never read as HTTP.
        ended = self._skip_body() and not reqs.tunnel_data
        server = reqs.parser
        out = _local_answer(server, status, text, extra, close=not ended)
        rec.bytes_out += len(out)
        self.io.write_soon(out)
        self._finish(rec, started)
        return ended and server.keep_alive

    # --- reloads --------------------------------------------------------------------------

    def _follow(self) -> str:
        """A reload retired the service this connection was served by: the request just read,
        and the next ones, are judged by the listener's current service. The refusal reason
        when there is none to go to (the listener is gone) or the listener's allow/deny no
        longer lets this client in; "" when the connection goes on."""
        old = self.svc
        svc = old.latest()
        if svc is None:
            return LISTENER_GONE
        access = svc.access
        if access is not None and not access.permits(self.conn.client[0]):
            return DENY
        self.svc = svc
        conn = self.conn
        if svc.access_log is not None:
            conn.access_log = svc.access_log
        g = svc.global_
        # Heads from now on: the new size limit, and the new generation's memory of plain
        # exchanges — none when its parsers are not this connection's.
        same_parsers = svc.h1_server is old.h1_server and svc.h1_client is old.h1_client
        self.reqs.follow(g.max_header_size, svc.plain if same_parsers else None)
        tick = max(min(g.header_timeout, g.keepalive_timeout, svc.idle_timeout), 0.001)
        if tick < self._tick and self._timer is not None:
            self._timer.cancel()  # re-armed by the next wait, at the shorter step
            self._timer = None
        self._tick = tick
        origin = self.origin
        if origin is not None and svc.origins is not old.origins:
            # Opened under other rules (its addresses judged by another deny, from another
            # source): not used again.
            self.origin = None
            origin.close()
        return ""

    # --- one request ----------------------------------------------------------------------

    async def _exchange(self, req: RequestReceived) -> bool | _Tunnel:
        """Judge one request, answer or relay it; whether the client connection goes on, or
        the tunnel it becomes."""
        refusal = self._follow() if self.svc.retired else ""
        svc = self.svc
        reqs = self.reqs
        dest = reqs.dest
        assert dest is not None
        started = time.monotonic()
        rec = svc.record(self.conn, reqs.method.decode("latin-1"))
        rec.path = (reqs.target if dest.tunnel else dest.path).decode("latin-1")
        rec.host = dest.host
        rec.destination = dest.shown
        if refusal:
            # A reload took this client's way: answered, and the connection ends.
            svc.refused(rec, refusal)
            rec.status = 403
            text = _FOLLOW_REFUSALS[refusal]
            out = _local_answer(reqs.parser, 403, text, close=True)
            rec.bytes_out += len(out)
            self.io.write_soon(out)
            self._finish(rec, started)
            return False

        # Who: Proxy-Authorization (RFC 9110 §11.7.2), 407 and Proxy-Authenticate otherwise.
        if svc.authenticator is not None:
            user, challenge = await svc.authenticate(
                req.headers, reqs.method, reqs.target, dest.path
            )
            if user is None:
                svc.refused(rec, AUTH)
                return self._answer(
                    rec, started, 407, "proxy authentication required",
                    [(b"proxy-authenticate", challenge)],
                )  # fmt: skip
            rec.user = user

        # Where: by name and port, then every resolved address.
        reason = svc.check_request(dest.host, dest.port, dest.tunnel)
        if reason:
            svc.refused(rec, reason)
            return self._answer(rec, started, 403, "destination not allowed")
        if dest.tunnel:
            connected = await svc.outbound.open(dest.host, dest.port)
            if isinstance(connected, Refused):
                return self._refused(rec, started, connected)
            rec.upstream_ms = (time.monotonic() - started) * 1000
            rec.resolved = rec.backend = connected.resolved
            try:
                csock, unread = await self._take_socket()
            except (OSError, TimeoutError):
                connected.sock.close()
                rec.status = 499
                self._finish(rec, started)
                return False
            early = self.reqs.tunnel_data + unread
            self.bytes_read += len(unread)
            rec.bytes_in += self.bytes_read - self._accounted
            self._accounted = self.bytes_read
            return _Tunnel(csock, connected.sock, early, rec, started)

        origin = self.origin
        key = (dest.host, dest.port)
        if origin is not None and (origin.key != key or not origin.alive):
            self.origin = None
            svc.origins.give(origin)
            origin = None
        if origin is None:
            origin = svc.origins.take(key)
        if origin is None:
            opened = await self._open(dest)
            if isinstance(opened, Refused):
                return self._refused(rec, started, opened)
            origin = opened
        self.origin = None
        rec.upstream_ms = (time.monotonic() - started) * 1000
        try:
            return await self._relay(req, dest, origin, rec)
        finally:
            self._finish(rec, started)

    def _refused(self, rec: AccessRecord, started: float, refused: Refused) -> bool:
        rec.resolved = refused.resolved
        self.svc.refused(rec, refused.reason, refused.detail)
        text = "destination not allowed"
        if refused.status != 403:
            text = f"cannot reach destination ({refused.reason})"
        return self._answer(rec, started, refused.status, text)

    async def _open(self, dest: ProxyTarget) -> Origin | Refused:
        """A new connection to the destination (resolved, judged, connected)."""
        svc = self.svc
        connected = await svc.outbound.open(dest.host, dest.port)
        if isinstance(connected, Refused):
            return connected
        loop = self.io.loop
        oio = DestinationIO(loop)
        try:
            await loop.create_connection(lambda: oio, sock=connected.sock)
        except OSError as exc:
            connected.sock.close()
            return Refused(CONNECT, 502, Reply.CONNECTION_REFUSED, connected.resolved, str(exc))
        parser = svc.new_h1_client()
        return Origin((dest.host, dest.port), oio, connected.resolved, parser)

    # --- relaying -------------------------------------------------------------------------

    async def _relay(
        self,
        req: RequestReceived,
        dest: ProxyTarget,
        origin: Origin,
        rec: AccessRecord,
        end: MessageEnded | None = None,
    ) -> bool:
        """Send the request (and its body) to the destination, its response back; whether the
        client connection goes on. A kept connection that fails before answering a request
        without a body is replaced once. ``end``: the request ended with its head (taken from
        the events already)."""
        headers = destination_headers(req.headers, dest.authority)
        events = self.events
        if end is None and events and type(events[0]) is MessageEnded:
            end = events.popleft()  # type: ignore[assignment]
        while True:
            rec.resolved = rec.backend = origin.resolved
            parser = origin.parser
            head = parser.send_request(req.method, dest.path, headers)
            try:
                if end is not None:  # the usual GET: head and end in one write
                    origin.io.write_soon(head + parser.send_end(end.trailers or None))
                else:
                    origin.io.write_soon(head)
                    if not await self._upload(origin, rec):
                        origin.close()
                        return False
                return await self._response(origin, rec, retry=end is not None and origin.reused)
            except _Stale:
                origin.close()
                opened = await self._open(dest)
                if isinstance(opened, Refused):
                    return self._unreachable(rec, opened)
                origin = opened

    def _unreachable(self, rec: AccessRecord, refused: Refused) -> bool:
        """No new connection for a request whose kept one failed: answered, and the client
        connection closes."""
        rec.status = refused.status
        rec.resolved = refused.resolved
        self.svc.refused(rec, refused.reason, refused.detail)
        text = f"cannot reach destination ({refused.reason})"
        self.io.write_soon(_local_answer(self.reqs.parser, refused.status, text, close=True))
        return False

    async def _upload(self, origin: Origin, rec: AccessRecord) -> bool:
        """The request body, read no further ahead than the destination takes (pacing);
        whether it went whole (else the client was answered or is gone)."""
        io = self.io
        oio = origin.io
        parser = origin.parser
        reqs = self.reqs
        events = self.events
        loop = io.loop
        idle = self.svc.idle_timeout
        io.follow(oio)
        try:
            while True:
                while events:
                    ev = events.popleft()
                    if type(ev) is DataReceived:
                        oio.write(parser.send_data(ev.data))
                    elif type(ev) is MessageEnded:
                        oio.write_soon(parser.send_end(ev.trailers or None))
                        return True
                    else:
                        return False  # the client closed inside its body
                if oio.write_paused:
                    async with asyncio.timeout(idle):
                        await oio.drain()
                if self.eof:
                    return False
                data = await io.read(READ_SIZE, loop.time() + idle)
                if not data:
                    self.eof = True
                self.bytes_read += len(data)
                events.extend(reqs.receive_data(data))
        except ClientProtocolError as exc:
            rec.status = exc.status
            io.write_soon(_local_answer(None, exc.status, str(exc)))
            return False
        except TimeoutError:
            if io.waiting_for_sink or oio.write_paused:
                rec.status = 504  # the destination did not take the body in time
                io.write_soon(_local_answer(None, 504, "destination did not read the request"))
            else:
                rec.status = 408
            return False
        except OSError:
            rec.status = 502
            io.write_soon(_local_answer(None, 502, "destination failed"))
            return False
        finally:
            io.follow(None)

    def _response_events(
        self, events: list[Event], origin: Origin, rec: AccessRecord, out: list[bytes]
    ) -> bool | None:
        """The destination's events as bytes for the client (appended to ``out``); None until
        the response ended, then whether the client connection goes on (the destination's
        stays in ``self.origin`` when it may carry another exchange)."""
        server = self.reqs.parser
        for ev in events:
            kind = type(ev)
            if kind is ResponseReceived:
                assert isinstance(ev, ResponseReceived)
                rec.status = ev.status
                data = server.send_response(
                    ev.status, response_headers(ev.headers), relayed_reason(ev.status, ev.reason)
                )
            elif kind is DataReceived:
                data = server.send_data(ev.data)  # type: ignore[union-attr]
            elif kind is MessageEnded:
                data = server.send_end(ev.trailers or None)  # type: ignore[union-attr]
                rec.bytes_out += len(data)
                if data:
                    out.append(data)
                parser = origin.parser
                if parser.reusable:
                    parser.start_next_cycle()
                    origin.reused = True
                    self.origin = origin
                else:
                    origin.close()
                return server.keep_alive
            elif kind is InformationalReceived:
                assert isinstance(ev, InformationalReceived)
                data = server.send_informational(ev.status, response_headers(ev.headers))
            else:
                continue
            rec.bytes_out += len(data)
            out.append(data)
        return None

    async def _response(
        self, origin: Origin, rec: AccessRecord, *, retry: bool, got: int = 0
    ) -> bool:
        """Relay the destination's response (or the rest of it: ``got`` bytes of it were
        relayed already); whether the client connection goes on (the destination's stays in
        ``self.origin`` when it may carry another exchange)."""
        io = self.io
        oio = origin.io
        parser = origin.parser
        server = self.reqs.parser
        loop = io.loop
        idle = self.svc.idle_timeout
        started = server.response_started
        if io.unproven or started:
            # A client not known to keep up: the first read (head and body) is already no
            # bigger than what it takes (conn_io.py, pacing); the body, for every client.
            oio.follow(io)
        out: list[bytes] = []
        try:
            while True:
                data = await oio.read(READ_SIZE, loop.time() + idle)
                got += len(data)
                ended = self._response_events(parser.receive_data(data), origin, rec, out)
                for piece in out:
                    io.write_soon(piece)
                out.clear()
                if ended is not None:
                    # Handed to the kernel now (one write with what this turn wrote), so
                    # that the end of pacing sees a client that took everything.
                    io.flush()
                    return ended
                started = server.response_started
                if io.is_closing():
                    raise _Closed
                if io.write_paused:
                    try:
                        await io.drain()
                    except OSError:
                        raise _Closed from None
                if not data:
                    raise BackendError("destination closed the connection before its response")
                if started:
                    oio.follow(io)  # the body: read no further ahead than the client takes
        except (_Closed, _Stale):
            origin.close()
            raise
        except TimeoutError:
            origin.close()
            if server.response_started:
                raise _Closed from None
            rec.status = 504
            io.write_soon(_local_answer(server, 504, "destination failed", close=True))
            return False
        except (OSError, RevproxyError):
            origin.close()
            if server.response_started:
                raise _Closed from None
            if retry and got == 0:
                raise _Stale from None
            rec.status = 502
            io.write_soon(_local_answer(server, 502, "destination failed", close=True))
            return False
        finally:
            oio.follow(None)

    # --- CONNECT ----------------------------------------------------------------------------

    async def _take_socket(self) -> tuple[socket.socket, bytes]:
        """The client's socket, taken back from its transport for the splice relay, and the
        bytes received on it and not read yet. What was written to the client before is sent
        first."""
        io = self.io
        transport = io.transport
        assert transport is not None
        early = io.take_buffered()
        transport.pause_reading()
        io.flush()
        transport.set_write_buffer_limits(high=0, low=0)  # drain() waits until all is sent
        async with asyncio.timeout(self.svc.idle_timeout):
            await io.drain()
        sock = transport.get_extra_info("socket")
        raw = socket.socket(fileno=os.dup(sock.fileno()))
        self.tunnelled = True
        transport.close()
        raw.setblocking(False)
        return raw, early


class _Tunnel:
    """A CONNECT that was allowed: the client's socket (taken from its transport), the
    destination's, the bytes the client sent past its head, and the request's record."""

    __slots__ = ("csock", "dsock", "early", "rec", "started")

    def __init__(
        self,
        csock: socket.socket,
        dsock: socket.socket,
        early: bytes,
        rec: AccessRecord,
        started: float,
    ) -> None:
        self.csock = csock
        self.dsock = dsock
        self.early = early
        self.rec = rec
        self.started = started

    async def run(self, svc: EgressService, conn: ClientConn) -> None:
        """Answer 200 and splice both sockets until the tunnel ends; then its record."""
        csock, dsock, rec = self.csock, self.dsock, self.rec
        relay: SocketRelay | None = None
        try:
            await _send(csock, b"HTTP/1.1 200 Connection established\r\n\r\n")
            if self.early:
                await _send(dsock, self.early)
            self.early = b""
            relay = SocketRelay(csock, dsock, idle_timeout=svc.idle_timeout)
            svc.tunnels_open(conn, 1)
            try:
                result = await relay.run()
            finally:
                svc.tunnels_open(conn, -1)
            rec.status = _END_STATUS[result.end]
        except OSError:
            rec.status = 499
        finally:
            if relay is not None:
                rec.bytes_in += relay.a_to_b
                rec.bytes_out = relay.b_to_a
            dsock.close()
            csock.close()
            rec.duration_ms = (time.monotonic() - self.started) * 1000
            svc.finish(conn, rec, request=False)
