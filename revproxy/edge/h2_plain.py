"""Plain HTTP/2 streams, served from callbacks: no task, coroutine or future per stream.

Rule of this room: one behaviour (as edge/fast_exchange.py for HTTP/1.1). A plain stream sends
the origin and the client the same bytes, writes the same access-log record and counts the
same metrics as the stream's task (h2_connection.py, ``_serve``) would; it runs the exchange's
own code (``Exchange._begin``, ``decide``, ``_finish``) for everything but the wait for the
origin's answer.

A stream is plain when its request ended with its head (no body), the connection's listener
has no HTTP rules, client-certificate header or per-client stream limit, routing answered a
pool (no local answer, no auth, no route rules), the pool speaks HTTP/1.1 without
``send_proxy`` or ``balance = "uri"``, the request is no upgrade, ``Expect`` or gRPC, and the
server the pool picks has an idle connection. The request goes to that connection from the
connection's read loop; the origin's ``data_received`` parses the answer, and a response
whose head and whole body came together and that the stream's window takes is sent (HEADERS
and DATA, queued for the connection's one write of the loop turn), recorded and counted
there. Everything else is handed on, before anything was written to the client, to the
stream's task:

* before the request went (not plain, or no idle connection): ``Exchange.act`` with what
  routing decided — the server already picked is kept for it (dialer.py, ``pooled_conn``);
* after it went (a response in pieces, a streamed or large body, 1xx, an origin that closed,
  failed or did not answer in time): ``Exchange.attempts`` with the request as ``Sent``: the
  exchange reads on from what was parsed, with the same deadline, and answers every failure
  as its own (a stale pooled connection included: the request goes again on a new one).

A stream reset by the client, or a connection that ends, while its origin answers is
abandoned as a cancelled task is (the origin connection is not reused; 499 in the record).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from revproxy.edge.client_side import ClientGone
from revproxy.edge.exchange import (
    STATUS_CLIENT_GONE,
    Exchange,
    Sent,
    _raise,
    _whole_body,
)
from revproxy.edge.fast_exchange import Plan
from revproxy.edge.generation import Generation, ListenerRuntime, PoolRuntime
from revproxy.errors import H2_CANCEL, H2_INTERNAL_ERROR
from revproxy.net.h2_channel import COALESCE_LIMIT
from revproxy.proto.events import MessageEnded, ResponseReceived
from revproxy.proto.forwarding import ClientIdentity
from revproxy.proto.forwarding import response_headers as origin_response_headers
from revproxy.upstream.backend import Backend
from revproxy.upstream.dialer import H1Origin

if TYPE_CHECKING:
    from revproxy.edge.h2_connection import H2ServerStream, Http2Connection

__all__ = ["ENABLED", "PlainStream", "plan_of", "start"]

# False serves every stream by its task (the differential tests compare the two ways with
# it); nothing else sets it.
ENABLED = True

# Request fields that make a request not plain (or say its body's length and kind).
_SPECIAL = frozenset(
    {b"content-length", b"content-type", b"transfer-encoding", b"upgrade", b"expect"}
)


def plan_of(gen: Generation, listener: ListenerRuntime, tls: bool) -> Plan | None:
    """What plain streams of the listener's connections read, or None: never plain."""
    ltls = listener.config.tls
    gate = listener.conn_gate
    if (
        listener.rules is not None  # hsts, error pages
        or (ltls is not None and ltls.client_cert_header)
        or (gate is not None and gate.streams_per_client is not None)
    ):
        return None
    return Plan(gen, listener, tls)


def start(conn: Http2Connection, stream: H2ServerStream, plan: Plan) -> bool:
    """Serve ``stream`` (its request ended with its head) as a plain stream, or hand it to a
    task of its own; False when nothing was done (the caller starts ``_serve`` as usual)."""
    req = stream.request
    if not ENABLED or stream.broken or plan.gen is not conn.gen or conn.gen.retired:
        return False
    inbox = stream.inbox
    if len(inbox) != 1:
        return False
    end = inbox[0]
    if type(end) is not MessageEnded or end.trailers:
        return False
    ex = Exchange(stream, generation=conn.gen, listener=conn.listener, info=conn.info, sink=stream)
    started = time.monotonic()
    ex._begin(req)
    action: Any
    try:
        action = ex.decide(req, plan.reject)
        if type(action) is PoolRuntime and _send(conn, stream, ex, action, plan, started):
            return True
    except Exception as failure:
        action = _raise(failure)
    conn.start_task(stream, ex.act(action, started))
    return True


def _send(
    conn: Http2Connection,
    stream: H2ServerStream,
    ex: Exchange,
    pr: PoolRuntime,
    plan: Plan,
    started: float,
) -> bool:
    """``Exchange._proxy`` up to the request sent, for a plain one on an idle connection;
    False when it is not plain (nothing done)."""
    req = stream.request
    if ex.rules is not None or ex.auth_user is not None or req.protocol:
        return False
    if not plan.takes(pr):
        return False
    typed = False
    for name, value in req.headers:
        if name in _SPECIAL:
            if name == b"content-length":
                if value != b"0":
                    return False
            elif name == b"content-type":
                if not typed:  # grpc.is_grpc reads the first one only
                    if value[:16].lower() == b"application/grpc":
                        return False  # a local gRPC error from the exchange
                    typed = True
            else:
                return False  # upgrade, expect, transfer-encoding
    route = ex.route
    assert route is not None
    limits = plan.limits(route, pr)
    dialer = pr.dialer
    backend, oconn = dialer.pooled_conn(ex.pick_context)
    if oconn is None or backend is None:
        return False  # the exchange dials (the server picked is kept for it)
    # From here on the request is ours (Exchange._proxy for a plain one).
    info = conn.info
    client_id = conn.plain_client
    if client_id is None or client_id.host != req.authority:
        client_id = conn.plain_client = ClientIdentity(
            address=info.client[0], scheme=ex.scheme, host=req.authority, port=info.local_port
        )
    headers = plan.send_head(ex, pr, client_id, backend, limits)
    ostream = H1Origin(dialer, oconn, dialer.max_header_size)
    plain = stream.plain = PlainStream(
        conn, stream, ex, pr, ostream, backend, headers, started, plan.scheme
    )
    try:
        # The end stays in the stream's inbox: the exchange takes it if the stream is
        # handed on (``_forward``'s retry rules read it), the answer does otherwise.
        end = stream.inbox[0]
        assert isinstance(end, MessageEnded)
        ostream.send_head(
            req.method, ex.target, ex.origin_authority, plan.scheme, headers, end=end,
            upgrade=False,
        )  # fmt: skip
        # The stream paces the response's origin from its head on (conn_io.py).
        ostream.follow(stream)
        plain.deadline = conn.loop.time() + ex.timeouts.response
        io = oconn.io
        io.push(plain._data, plain._end, plain._timeout)
        io.expect(plain.deadline)
    except Exception as exc:
        plain._hand(exc)
    return True


class PlainStream:
    """A plain stream waiting for its origin's answer (see the module's rule)."""

    __slots__ = ("backend", "conn", "deadline", "ex", "headers", "ostream", "pr", "scheme",
                 "started", "stream", "t0")  # fmt: skip

    def __init__(
        self,
        conn: Http2Connection,
        stream: H2ServerStream,
        ex: Exchange,
        pr: PoolRuntime,
        ostream: H1Origin,
        backend: Backend,
        headers: list[tuple[bytes, bytes]],
        started: float,
        scheme: bytes,
    ) -> None:
        self.conn = conn
        self.scheme = scheme
        self.stream = stream
        self.ex = ex
        self.pr = pr
        self.ostream = ostream
        self.backend = backend
        self.headers = headers
        self.started = started
        self.t0 = time.monotonic()
        self.deadline = 0.0

    # --- the origin's callbacks

    def _data(self, data: bytes) -> None:
        ostream = self.ostream
        ostream.bytes_read += len(data)
        try:
            ostream.events.extend(ostream.parser.receive_data(data))
        except Exception as exc:
            self._hand(exc)
            return
        self._answer()

    def _end(self, exc: BaseException | None) -> None:
        if exc is not None:
            self._hand(None)  # the exchange's read raises the connection's error
            return
        ostream = self.ostream
        ostream.eof = True
        try:
            ostream.events.extend(ostream.parser.receive_data(b""))
        except Exception as failure:
            self._hand(failure)
            return
        self._answer()

    def _timeout(self) -> None:
        self._hand(None)  # the exchange's read times out at the same deadline

    # --- the answer

    def _answer(self) -> None:
        """Send the response if it is whole in hand and the window takes it; wait for the
        rest of a head; hand everything else on."""
        ostream = self.ostream
        events = ostream.events
        if not events:
            if ostream.eof:
                self._hand(None)
            return  # a head in pieces: its next bytes come to ``_data``
        resp = events[0]
        if type(resp) is not ResponseReceived:
            self._hand(None)  # 1xx, a switch nobody asked for, nothing parseable
            return
        events.popleft()
        body = _whole_body(events)
        stream = self.stream
        conn = self.conn
        h2 = conn.h2
        sid = stream.stream_id
        if body is None or (body and h2.window(sid) < len(body)):
            events.appendleft(resp)
            self._hand(None)  # the exchange relays it as it comes (or as the window opens)
            return
        events.clear()
        ostream.conn.io.push(None)
        ex = self.ex
        rec = ex.rec
        rec.status = resp.status
        out_headers = origin_response_headers(
            resp.headers, self.pr.hiding, scheme=self.scheme, host=ex.req.authority
        )
        stream.body_end_ready()  # the request's end (left for a hand-over)
        # The origin's reason phrase is not relayed: it is free text that may name it.
        try:
            stream._head(resp.status, out_headers, not body)
            if body:
                taken = h2.send_data(sid, body, True)
                stream.bytes_out += taken
                conn.unflushed += taken
                stream.ended = True
        except ClientGone:
            self._done(False, H2_CANCEL)
            return
        if conn.unflushed >= COALESCE_LIMIT or conn.drain_needed:
            # A client behind on reading: the stream ends once the socket drained, as
            # ``send_response`` waits for it.
            self._release(True)
            conn.start_task(stream, self._drained())
            return
        self._done(True, H2_INTERNAL_ERROR)

    async def _drained(self) -> bool:
        ex = self.ex
        try:
            await self.stream._drain()
        except BaseException:
            if ex.rec.status == 0:
                ex.rec.status = STATUS_CLIENT_GONE
            raise
        finally:
            ex._finish(self.started)
        return True

    # --- the ends

    def _hand(self, failure: BaseException | None) -> None:
        """The stream's task takes over from the wait for the answer (``Sent``)."""
        ostream = self.ostream
        ostream.conn.io.push(None)
        ex = self.ex
        sent = Sent(ostream, self.t0, self.deadline, failure)
        work = ex.attempts(self.pr, self.headers, False, ex.pick_context, None, sent)
        self.conn.start_task(self.stream, ex.act(work, self.started))

    def cancel(self) -> None:
        """The client reset the stream, or the connection ends: as a cancelled task."""
        ostream = self.ostream
        ostream.conn.io.push(None)
        rec = self.ex.rec
        if rec.status == 0:
            rec.status = STATUS_CLIENT_GONE
        self._done(False, H2_INTERNAL_ERROR)

    def _release(self, complete: bool) -> None:
        """``_forward``'s and ``_proxy``'s ends: the connection back to the pool (or
        closed), the server released."""
        self.ostream.finish(complete)
        self.backend.release()
        self.ex.rec.upstream_ms = (time.monotonic() - self.t0) * 1000

    def _done(self, complete: bool, code: int) -> None:
        self.stream.plain = None
        self._release(complete)
        self.ex._finish(self.started)
        self.conn.stream_done(self.stream, code)
