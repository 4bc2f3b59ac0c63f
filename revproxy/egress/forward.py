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
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections import deque
from typing import TYPE_CHECKING

from revproxy.egress.dial import CONNECT, Refused
from revproxy.egress.origins import Origin
from revproxy.errors import BackendError, ClientProtocolError, RevproxyError
from revproxy.net.conn_io import ConnIO
from revproxy.net.relay import RelayEnd, SocketRelay
from revproxy.ops.accesslog import AccessRecord
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
# The longest a closing client connection is waited for (seconds).
CLOSE_WAIT = 1.0
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


async def serve_forward(svc: EgressService, csock: socket.socket, conn: ClientConn) -> None:
    """Serve one client connection of a forward listener to its end."""
    loop = asyncio.get_running_loop()
    io = ConnIO(loop)
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
    del client  # a tunnel holds nothing of the HTTP connection it came from
    if tunnel is not None:
        await tunnel.run(svc, conn)


def _shown(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _ForwardConnection:
    """One client connection: its requests, one at a time, and the destination connection it
    keeps."""

    __slots__ = (
        "_accounted",
        "bytes_read",
        "conn",
        "eof",
        "events",
        "io",
        "origin",
        "reqs",
        "svc",
        "tunnelled",
    )

    def __init__(self, svc: EgressService, conn: ClientConn, io: ConnIO) -> None:
        self.svc = svc
        self.conn = conn
        self.io = io
        g = svc.global_
        self.reqs = ForwardRequests(svc.new_h1_server, g.max_header_size)
        self.events: deque[Event] = deque()
        self.bytes_read = 0
        self._accounted = 0  # client bytes already counted in an access-log record
        self.eof = False
        self.origin: Origin | None = None  # kept for this client's next request
        self.tunnelled = False  # the client's socket went to a tunnel

    async def close(self) -> None:
        origin = self.origin
        self.origin = None
        if origin is not None:
            self.svc.origins.give(origin)
        if not self.tunnelled:
            await self.io.aclose(CLOSE_WAIT)

    # --- the connection loop ----------------------------------------------------------------

    async def run(self) -> _Tunnel | None:
        """Serve requests until the connection ends, or becomes the tunnel returned."""
        g = self.svc.global_
        idle = g.header_timeout  # a new connection must send its first request promptly
        while True:
            req = await self._next_request(idle, g.header_timeout)
            if req is None:
                return None
            keep = await self._exchange(req)
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

    # --- one request ----------------------------------------------------------------------

    async def _exchange(self, req: RequestReceived) -> bool | _Tunnel:
        """Judge one request, answer or relay it; whether the client connection goes on, or
        the tunnel it becomes."""
        svc = self.svc
        reqs = self.reqs
        dest = reqs.dest
        assert dest is not None
        started = time.monotonic()
        rec = svc.record(self.conn, reqs.method.decode("latin-1"))
        rec.path = (reqs.target if dest.tunnel else dest.path).decode("latin-1")
        rec.host = dest.host
        rec.destination = _shown(dest.host, dest.port)

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
        oio = ConnIO(loop)
        try:
            await loop.create_connection(lambda: oio, sock=connected.sock)
        except OSError as exc:
            connected.sock.close()
            return Refused(CONNECT, 502, Reply.CONNECTION_REFUSED, connected.resolved, str(exc))
        parser = svc.new_h1_client()
        return Origin((dest.host, dest.port), oio, connected.resolved, parser)

    # --- relaying -------------------------------------------------------------------------

    async def _relay(
        self, req: RequestReceived, dest: ProxyTarget, origin: Origin, rec: AccessRecord
    ) -> bool:
        """Send the request (and its body) to the destination, its response back; whether the
        client connection goes on. A kept connection that fails before answering a request
        without a body is replaced once."""
        headers = destination_headers(req.headers, dest.authority)
        events = self.events
        end: MessageEnded | None = None
        if events and type(events[0]) is MessageEnded:
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
                    rec.status = opened.status
                    rec.resolved = opened.resolved
                    self.svc.refused(rec, opened.reason, opened.detail)
                    text = f"cannot reach destination ({opened.reason})"
                    answer = _local_answer(self.reqs.parser, opened.status, text, close=True)
                    self.io.write_soon(answer)
                    return False
                origin = opened

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

    async def _response(self, origin: Origin, rec: AccessRecord, *, retry: bool) -> bool:
        """Relay the destination's response; whether the client connection goes on (the
        destination's stays in ``self.origin`` when it may carry another exchange)."""
        io = self.io
        oio = origin.io
        parser = origin.parser
        server = self.reqs.parser
        loop = io.loop
        idle = self.svc.idle_timeout
        got = 0
        started = False
        if io.unproven:
            # A client not known to keep up: the first read (head and body) is already no
            # bigger than what it takes (conn_io.py, pacing).
            oio.follow(io)
        try:
            while True:
                data = await oio.read(READ_SIZE, loop.time() + idle)
                got += len(data)
                for ev in parser.receive_data(data):
                    kind = type(ev)
                    if kind is ResponseReceived:
                        assert isinstance(ev, ResponseReceived)
                        started = True
                        rec.status = ev.status
                        out = server.send_response(
                            ev.status,
                            response_headers(ev.headers),
                            relayed_reason(ev.status, ev.reason),
                        )
                    elif kind is DataReceived:
                        out = server.send_data(ev.data)  # type: ignore[union-attr]
                    elif kind is MessageEnded:
                        out = server.send_end(ev.trailers or None)  # type: ignore[union-attr]
                        rec.bytes_out += len(out)
                        io.write_soon(out)
                        # Handed to the kernel now (one write with what this turn wrote),
                        # so that the end of pacing sees a client that took everything.
                        io.flush()
                        if parser.reusable:
                            parser.start_next_cycle()
                            origin.reused = True
                            self.origin = origin
                        else:
                            origin.close()
                        return server.keep_alive
                    elif kind is InformationalReceived:
                        assert isinstance(ev, InformationalReceived)
                        out = server.send_informational(ev.status, response_headers(ev.headers))
                    else:
                        continue
                    rec.bytes_out += len(out)
                    io.write_soon(out)
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
            if started:
                raise _Closed from None
            rec.status = 504
            io.write_soon(_local_answer(server, 504, "destination failed", close=True))
            return False
        except (OSError, RevproxyError):
            origin.close()
            if started:
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
