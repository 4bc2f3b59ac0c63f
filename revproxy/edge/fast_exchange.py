"""The plain HTTP/1.1 exchange, served from protocol callbacks: no task, coroutine or future per
request.

Rule of this room: one behaviour. A plain exchange sends the origin and the client the same
bytes, writes the same access-log record and counts the same metrics as the general exchange
(exchange.py) would; it runs the exchange's own code for everything but the relay. The edge
policy and routing are the exchange's (its ``_begin``, ``_permits``, ``_route``... called in
the order ``Exchange.run`` calls them), and so are records (``_finish``) and error answers
(``_aborted``, ``_local_error``); what is here is the relay in between — the request head
(and a small body in hand) to a pooled keep-alive connection, the response back with the same
parser calls, the same timeouts (``timeouts.response`` for the head, ``timeouts.idle`` per
wait in the body, on each connection's one timer: conn_io.py, ``expect``) and the same pacing
(the origin is read no further ahead than the client takes: ``ConnIO.follow``, and nothing
more is relayed while the client's transport is full, as ``drain`` waits).

A request is plain when its head took the llhttp parser's plain path (HTTP/1.1, nothing to
switch to), routing answered a pool (no local answer, no coroutine: a route with auth, rules,
or limits kept elsewhere is not), the route has no HTTP rules and the listener no ``hsts`` or
``error_pages``, the pool speaks HTTP/1.1 without ``send_proxy`` or ``balance = "uri"``, the
request asks for no upgrade, no ``Expect``, no gRPC and no chunked body, any body is whole in
hand and small (``FAST_BODY_MAX``), and the server the pool picks has an idle connection.
Everything else is handed to the connection loop (h1_connection.py) at one of these points,
never half-way through writing:

* ``REQUEST``: before anything was done for it (a reload to follow): ``Exchange.run``.
* ``ACTION``: after routing, before anything was sent anywhere: what routing decided (a pool:
  ``Exchange._proxy``, which takes the server picked here: dialer.py, ``pooled_conn``; or the
  local answer to await).
* ``ABORTED``: the request went to the origin and something failed before the response ended
  (a timeout, an origin that closed or answered wrongly, a client gone): the exchange's own
  answers, and an idempotent request whose reused connection had been closed goes again on a
  fresh one, as ``Exchange._proxy`` does it.
* ``READ`` / ``FAILED`` / ``CLOSED``: a head that is not whole in one read, one that cannot be
  parsed (400/431), or a connection that is done.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from revproxy.config.model import Route, Timeouts
from revproxy.edge.client_side import ClientGone
from revproxy.edge.exchange import (
    _IDEMPOTENT,
    STATUS_CLIENT_GONE,
    Exchange,
    _overridden,
    _raise,
    _whole_body,
)
from revproxy.edge.generation import Generation, ListenerRuntime, PoolRuntime
from revproxy.errors import (
    BackendError,
    BackendProtocolError,
    BackendTimeout,
    ClientProtocolError,
    RequestTimeout,
    RevproxyError,
)
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
from revproxy.proto.forwarding import ClientIdentity, interim_headers, request_headers
from revproxy.proto.forwarding import response_headers as origin_response_headers
from revproxy.proto.http1.api import H1ClientAPI
from revproxy.proto.http1.fast import H1Server as FastServer
from revproxy.proto.http1.head import START_CHECKED, impossible_request_start
from revproxy.upstream.backend import Backend
from revproxy.upstream.dialer import READ_SIZE, BackendConnection

if TYPE_CHECKING:
    from revproxy.edge.h1_connection import HttpConnection

__all__ = [
    "ABORTED",
    "ACTION",
    "CLOSED",
    "ENABLED",
    "FAILED",
    "FAST_BODY_MAX",
    "RAISED",
    "READ",
    "REQUEST",
    "FastPath",
    "Handover",
]

# False sends every request through the general exchange (the differential tests compare the
# two paths with it); nothing else sets it.
ENABLED = True

# A request body is relayed here only when it is whole in hand and no longer than this: it is
# written with the head to an idle connection, whose socket takes it at once (the general
# exchange streams longer bodies, paced by the origin).
FAST_BODY_MAX = 16 * 1024

# What the connection loop is handed (``FastPath.serve``), with its value.
CLOSED = 0  # the connection is done (None)
FAILED = 1  # a head that cannot be read: answer it and close (the error)
READ = 2  # a head not whole yet: read the rest ((idle, deadline, start))
REQUEST = 3  # a request to serve from the start (the RequestReceived)
ACTION = 4  # a routed request: what routing decided ((action, started))
ABORTED = 5  # the plain exchange failed on the way (the exception)
RAISED = 6  # a fault of this module's own: raised by the connection loop (the exception)

Handover = tuple[int, Any]

# Request fields that make a request not plain (or say its body's length and kind).
_SPECIAL = frozenset(
    {b"content-length", b"content-type", b"transfer-encoding", b"upgrade", b"expect"}
)

# Where the relay of a response is.
_HEAD, _BODY, _DONE = range(3)


class Plan:
    """What a plain request reads of its generation and listener, looked up once (the plain
    paths of HTTP/1.1, here, and of HTTP/2, h2_plain.py)."""

    __slots__ = ("forwarded", "gen", "listener", "pools", "reject", "routes", "scheme", "trusted",
                 "underscores")  # fmt: skip

    def __init__(self, gen: Generation, listener: ListenerRuntime, tls: bool) -> None:
        g = gen.config.global_
        self.gen = gen
        self.listener = listener
        self.reject = g.path_escaped_slashes == "reject"
        self.underscores = g.underscores_in_headers == "keep"
        self.trusted = listener.config.trusted_proxies
        self.forwarded = listener.config.forwarded
        self.scheme = b"https" if tls else b"http"
        # Per pool: whether it can take a plain request; per route: its timeouts and body limit.
        self.pools: dict[PoolRuntime, bool] = {}
        self.routes: dict[int, tuple[Timeouts, int]] = {}

    def takes(self, pr: PoolRuntime) -> bool:
        """Whether ``pr`` can take a plain request: HTTP/1.1, no PROXY header, no balancing by
        URI (the exchange picks by the rewritten target)."""
        ok = self.pools.get(pr)
        if ok is None:
            c = pr.config
            ok = self.pools[pr] = c.protocol == "http1" and c.balance != "uri" and not c.send_proxy
        return ok

    def limits(self, route: Route, pr: PoolRuntime) -> tuple[Timeouts, int]:
        """The timeouts and body limit of a request of ``route`` to ``pr`` (``_proxy``'s)."""
        limits = self.routes.get(id(route))
        if limits is None:
            timeouts = pr.config.timeouts
            max_body = self.gen.config.global_.max_body_size
            if route.max_body_size is not None:
                max_body = route.max_body_size
            if route.timeouts is not None:
                timeouts = _overridden(timeouts, route.timeouts)
            limits = self.routes[id(route)] = (timeouts, max_body)
        return limits

    def send_head(
        self,
        ex: Exchange,
        pr: PoolRuntime,
        client_id: ClientIdentity,
        backend: Backend,
        limits: tuple[Timeouts, int],
    ) -> Headers:
        """A plain request is taken on (``Exchange._proxy`` for it): the exchange's state
        for it, the server acquired; the headers the origin is sent."""
        ex.timeouts, ex.max_body = limits
        ex.client_id = client_id
        headers = request_headers(
            ex.req.headers,
            client_id,
            trusted=self.trusted,
            forwarded=self.forwarded,
            underscores=self.underscores,
        )
        headers = ex.with_origin_host(pr, headers)
        ex.ws_accept = None
        ex.rec.backend = backend.label
        backend.acquire()
        return headers


class FastPath:
    """The plain exchanges of one HTTP/1.1 client connection (see the module's rule)."""

    __slots__ = (
        "backend",
        "bytes_read",
        "conn",
        "deadline",
        "draining",
        "end",
        "eof",
        "events",
        "ex",
        "hc",
        "head_deadline",
        "head_timeout",
        "headers",
        "idle",
        "keepalive",
        "loop",
        "oconn",
        "on_client",
        "on_origin",
        "on_resumed",
        "parser",
        "phase",
        "plan",
        "plan_of",
        "pr",
        "pushing",
        "retry_ok",
        "source",
        "start",
        "started",
        "t0",
        "underscores",
        "waiter",
    )

    def __init__(self, hc: HttpConnection) -> None:
        self.hc = hc
        self.conn = hc.conn
        self.ex = hc.exchange
        self.source = hc.client
        self.loop = hc.conn.loop
        self.waiter: asyncio.Future[Handover] | None = None
        self.plan: Plan | None = None
        self.plan_of: tuple[Generation, ListenerRuntime] | None = None
        # The wait for the next request: its idle timeout, deadline, the first bytes of a
        # head (h1_connection.py, ``_next_request``); the timeouts of the waits after it.
        self.idle = 0.0
        self.deadline = 0.0
        self.start = b""
        self.head_timeout = 0.0
        self.keepalive = 0.0
        # The exchange in flight: when it started, its pool, server and connection, the
        # origin's parser and parsed events, what it was sent (for a retry), its state.
        self.started = 0.0
        self.t0 = 0.0
        self.pr: PoolRuntime | None = None
        self.backend: Backend | None = None
        self.oconn: BackendConnection | None = None
        self.parser: H1ClientAPI | None = None
        self.events: deque[Event] = deque()
        self.headers: Headers = []
        self.end: MessageEnded | None = None
        self.bytes_read = 0
        self.eof = False
        self.retry_ok = False
        self.phase = _HEAD
        self.head_deadline = 0.0
        self.pushing = False
        self.draining = False
        # The callbacks, bound once (a bound method made per request costs an allocation).
        self.on_client = (self._client_data, self._client_end, self._client_timeout)
        self.on_origin = (self._origin_data, self._origin_end, self._origin_timeout)
        self.on_resumed = self._resumed

    # --- the connection loop's side -------------------------------------------------------

    def ready(self) -> bool:
        """Whether requests of this connection may take the plain path now (its generation
        and listener allow it)."""
        if not ENABLED:
            return False
        hc = self.hc
        of = self.plan_of
        if of is None or of[0] is not hc.gen or of[1] is not hc.listener:
            self.plan_of = (hc.gen, hc.listener)
            self.plan = self._make_plan(hc.gen, hc.listener)
        return self.plan is not None

    def _make_plan(self, gen: Generation, listener: ListenerRuntime) -> Plan | None:
        tls = listener.config.tls
        if (
            listener.rules is not None  # hsts, error pages
            or (tls is not None and tls.client_cert_header)
            or type(self.hc.h1) is not FastServer
        ):
            return None
        return Plan(gen, listener, self.hc.info.tls)

    def serve(self, idle: float, head_timeout: float, keepalive: float) -> asyncio.Future[Handover]:
        """Serve plain requests from callbacks until one is not (or the connection ends);
        the future says what the connection loop does next. ``idle``: how long the client may
        take to start its next request; then ``keepalive`` between requests."""
        waiter = self.waiter = self.loop.create_future()
        self.idle = idle
        self.deadline = self.loop.time() + idle
        self.start = b""
        self.head_timeout = head_timeout
        self.keepalive = keepalive
        self._next()
        return waiter

    def stop(self) -> None:
        """The connection loop ends (closed, or cancelled while it waited for us): no more
        callbacks; an exchange in flight ends as a cancelled ``Exchange.run`` does."""
        self.waiter = None
        conn = self.conn
        conn.push(None)
        conn.on_resume(None)
        if self.oconn is not None:
            self._release(False)
            rec = self.ex.rec
            if rec.status == 0:
                rec.status = STATUS_CLIENT_GONE
            self.ex._finish(self.started)

    def _hand(self, kind: int, value: Any = None) -> None:
        waiter = self.waiter
        assert waiter is not None
        self.waiter = None
        waiter.set_result((kind, value))

    async def general(
        self, action: PoolRuntime | Coroutine[Any, Any, bool], started: float
    ) -> bool:
        """A routed request handed on (``ACTION``): the rest of ``Exchange.run``."""
        return await self.ex.act(action, started)

    async def aborted(self, exc: BaseException) -> bool:
        """The plain exchange failed after the request went out (``ABORTED``): what
        ``Exchange._forward``, ``_proxy`` and ``run`` do with the same failure."""
        ex = self.ex
        rec = ex.rec
        try:
            try:
                if isinstance(exc, ClientGone):
                    raise exc
                if isinstance(exc, TimeoutError):
                    return await ex._aborted(BackendTimeout("origin did not answer in time"))
                stale = self.bytes_read == 0 and self.retry_ok
                if isinstance(exc, OSError):
                    if self.hc.response_started:
                        raise ClientGone() from exc
                    if not stale:
                        return await ex._local_error(
                            BackendProtocolError("origin closed the connection")
                        )
                elif isinstance(exc, RevproxyError):
                    if not (stale and isinstance(exc, BackendProtocolError)):
                        return await ex._aborted(exc)
                else:
                    raise exc
            finally:
                self._release(False)
            # The origin closed a pooled connection before any answer: nothing was lost,
            # and an idempotent request whole in hand goes again on a fresh one.
            return await self._fresh()
        except BaseException:
            if rec.status == 0:
                rec.status = STATUS_CLIENT_GONE
            raise
        finally:
            ex._finish(self.started)

    async def _fresh(self) -> bool:
        """``Exchange._proxy``'s second turn: a new connection, no retry after it."""
        ex = self.ex
        rec = ex.rec
        pr = self.pr
        assert pr is not None and self.end is not None
        try:
            ostream = await pr.dialer.open_stream(ex.pick_context, fresh=True)
        except BackendError as exc:
            return await ex._local_error(exc)
        backend = ostream.backend
        rec.backend = backend.label
        backend.acquire()
        t0 = time.monotonic()
        try:
            return await ex._forward(ostream, pr, self.headers, False, retry=False, ended=self.end)
        finally:
            backend.release()
            rec.upstream_ms = (time.monotonic() - t0) * 1000

    # --- waiting for a request ------------------------------------------------------------

    def _next(self) -> None:
        """The client's next request: one already parsed, bytes already received, or the
        bytes it sends next (``_client_data``)."""
        source = self.source
        events = source.events
        conn = self.conn
        while True:
            if events:
                ev = events.popleft()
                if type(ev) is RequestReceived:
                    self._request(ev)
                    return
                if isinstance(ev, ConnectionClosed):
                    self._hand(CLOSED)
                    return
                continue
            if source.eof:
                self._hand(CLOSED)
                return
            try:
                data = conn.take_now(READ_SIZE)
            except OSError:
                self._hand(CLOSED)
                return
            if data is None:
                conn.push(*self.on_client)
                conn.expect(self.deadline)
                return
            if not self._feed(data):
                return

    def _feed(self, data: bytes) -> bool:
        """Parse what the client sent; False when the connection loop was handed on."""
        source = self.source
        if not data:
            source.eof = True
        source.bytes_read += len(data)
        h1 = self.hc.h1
        try:
            events = h1.receive_data(data)
        except ClientProtocolError as exc:
            self._hand(FAILED, exc)
            return False
        if events:
            source.events.extend(events)
            return True
        if len(self.start) < START_CHECKED:
            # Bytes that can never become a request line are answered now (_next_request).
            self.start += data[: START_CHECKED - len(self.start)]
            if h1.has_partial_head and impossible_request_start(self.start):
                self._hand(FAILED, ClientProtocolError("bytes that cannot begin a request"))
                return False
        if h1.has_partial_head:
            # A head in pieces: the connection loop reads the rest, under the head timeout.
            self._hand(READ, (self.idle, self.deadline, self.start))
            return False
        return True

    def _client_data(self, data: bytes) -> None:
        self.conn.push(None)
        try:
            if self._feed(data):
                self._next()
        except Exception as exc:
            if self.waiter is None:
                raise
            self._hand(RAISED, exc)

    def _client_end(self, exc: BaseException | None) -> None:
        self.conn.push(None)
        if isinstance(exc, OSError):
            self._hand(CLOSED)
        elif self._feed(b""):
            self._next()

    def _client_timeout(self) -> None:
        self.conn.push(None)
        if self.hc.h1.has_partial_head:
            self._hand(FAILED, RequestTimeout("request head not received in time"))
        else:
            self._hand(CLOSED)

    # --- one request ------------------------------------------------------------------------

    def _request(self, req: RequestReceived) -> None:
        """``Exchange.run`` up to the pool, then the plain exchange or a hand-over."""
        hc = self.hc
        plan = self.plan
        if hc.gen.retired or plan is None or plan.gen is not hc.gen:
            self._hand(REQUEST, req)  # the connection loop follows the reload first
            return
        ex = self.ex
        started = self.started = time.monotonic()
        ex._begin(req)
        action: PoolRuntime | Coroutine[Any, Any, bool]
        try:
            action = ex.decide(req, plan.reject)
            if type(action) is PoolRuntime and self._forward(action, req, plan):
                return
        except Exception as failure:
            action = _raise(failure)
        self._hand(ACTION, (action, started))

    def _forward(self, pr: PoolRuntime, req: RequestReceived, plan: Plan) -> bool:
        """Send a plain request to an idle connection of ``pr`` (``Exchange._proxy`` and
        ``_forward`` for it); False when it is not plain, nothing done."""
        ex = self.ex
        if ex.rules is not None or ex.auth_user is not None or req.http_version != b"1.1":
            return False
        if not plan.takes(pr):
            return False
        expected = 0
        length = grpc_checked = False
        for name, value in req.headers:
            if name in _SPECIAL:
                if name == b"content-length":
                    if not length:  # the first framing field decides (_body_expected)
                        expected = int(value)
                        length = True
                elif name == b"content-type":
                    if not grpc_checked:  # grpc.is_grpc reads the first one
                        if value[:16].lower() == b"application/grpc":
                            return False
                        grpc_checked = True
                else:
                    return False  # upgrade, expect, a chunked body
        route = ex.route
        assert route is not None
        limits = plan.limits(route, pr)
        timeouts, max_body = limits
        if expected > FAST_BODY_MAX or (max_body and expected > max_body):
            return False
        events = self.source.events
        body: list[bytes] = []
        if not events:
            return False
        first = events[0]
        if type(first) is not MessageEnded:
            last = events[-1]
            if type(last) is not MessageEnded or last.trailers:
                return False  # a body not whole in hand: streamed by the general exchange
            for ev in events:
                if type(ev) is DataReceived:
                    body.append(ev.data)
                elif ev is not last:
                    return False
        info = self.hc.info
        client_id = ex.client_id
        if client_id is None or client_id.host != req.authority:
            client_id = ex.client_id = ClientIdentity(
                address=info.client[0],
                scheme=ex.scheme,
                host=req.authority,
                port=info.local_port,
            )
        dialer = pr.dialer
        backend, oconn = dialer.pooled_conn(ex.pick_context)
        if oconn is None or backend is None:
            return False  # the general exchange dials (the server picked is kept for it)
        # From here on the request is ours (Exchange._proxy for a plain one).
        headers = plan.send_head(ex, pr, client_id, backend, limits)
        self.t0 = time.monotonic()
        self.pr = pr
        self.backend = backend
        self.oconn = oconn
        self.headers = headers
        parser = oconn.parser
        if parser is None:
            parser = dialer.h1_client(max_header_size=dialer.max_header_size)
        else:
            oconn.parser = None
        self.parser = parser
        self.events.clear()
        self.bytes_read = 0
        self.eof = False
        self.phase = _HEAD
        self.draining = False
        end = events.popleft() if not body else None
        assert end is None or isinstance(end, MessageEnded)
        self.end = end
        self.retry_ok = oconn.reused and req.method in _IDEMPOTENT and end is not None
        io = oconn.io
        try:
            data = parser.send_request(req.method, ex.target, headers)
            if end is not None:
                data += parser.send_end(end.trailers)
                io.write_soon(data)
            else:
                io.write_soon(data)
                while events:
                    ev = events.popleft()
                    if type(ev) is DataReceived:
                        io.write_soon(parser.send_data(ev.data))
                    else:
                        assert isinstance(ev, MessageEnded)
                        io.write_soon(parser.send_end(ev.trailers))
            if self.conn.unproven:
                # A client not known to keep up: the origin's first read (the head and the
                # body after it) is no bigger than what the client takes (conn_io.py).
                io.follow(self.conn)
            self.head_deadline = self.loop.time() + timeouts.response
            self.pushing = False
            self._pump()
        except Exception as exc:
            self._abort(exc)
        return True

    # --- the response -------------------------------------------------------------------

    def _pump(self) -> None:
        """Relay the origin's parsed events while the client takes them; then read on (or
        finish, or wait for the client)."""
        events = self.events
        oconn = self.oconn
        parser = self.parser
        assert oconn is not None and parser is not None
        io = oconn.io
        while True:
            while events and not self.draining:
                self._relay(events.popleft())
            if self.draining:
                return
            if self.phase == _DONE:
                self._complete()
                return
            if self.eof:
                raise ConnectionResetError("peer closed the connection")
            if not self.pushing:
                data = io.take_now(READ_SIZE)
                if data is not None:
                    if not data:
                        self.eof = True
                    self.bytes_read += len(data)
                    events.extend(parser.receive_data(data))
                    continue
                io.push(*self.on_origin)
                self.pushing = True
            if self.phase == _HEAD:
                io.expect(self.head_deadline)
            else:
                io.expect(self.loop.time() + self.ex.timeouts.idle)
            return

    def _relay(self, ev: Event) -> None:
        """One event of the origin's response, as ``Exchange._relay_response`` handles it."""
        h1 = self.hc.h1
        pr = self.pr
        assert pr is not None
        if self.phase == _BODY:
            if type(ev) is DataReceived:
                self._send(h1.send_data(ev.data))
            elif type(ev) is MessageEnded:
                self.phase = _DONE
                self._send(h1.send_end(interim_headers(ev.trailers, pr.hiding)))
            else:
                raise BackendProtocolError("origin closed inside the response body")
        elif type(ev) is ResponseReceived:
            self._head(ev, pr)
        elif isinstance(ev, InformationalReceived):
            if ev.status != 101:  # a switch nobody asked for is not relayed
                headers = interim_headers(ev.headers, pr.hiding)
                self._send(h1.send_informational(ev.status, headers))
        else:
            raise BackendProtocolError("origin sent no response head")

    def _head(self, resp: ResponseReceived, pr: PoolRuntime) -> None:
        ex = self.ex
        hc = self.hc
        h1 = hc.h1
        ex.rec.status = resp.status
        plan = self.plan
        assert plan is not None
        out_headers = origin_response_headers(
            resp.headers, pr.hiding, scheme=plan.scheme, host=ex.req.authority
        )
        # The origin's reason phrase is not relayed: it is free text that may name it.
        events = self.events
        body = _whole_body(events)
        head = h1.send_response(resp.status, out_headers)
        hc.head_out += len(head)
        if body is not None:
            # The whole response is in hand: head, body and end go out in one block.
            events.clear()
            if body:
                head += h1.send_data(body)
            end = h1.send_end()
            # An empty end waits for nothing (HttpConnection.send_response: _put(b"")).
            full = hc._put(head + end) and bool(end)
            self.phase = _DONE
        else:
            full = hc._put(head)
            self.phase = _BODY
            oconn = self.oconn
            assert oconn is not None
            # The origin is read no further ahead than the client takes (conn_io.py).
            oconn.io.follow(self.conn)
        if full:
            self._drain()

    def _send(self, data: bytes) -> None:
        if self.hc._put(data):
            self._drain()

    def _drain(self) -> None:
        """``HttpConnection._drain`` as a callback: the origin's bytes wait (bounded by
        the pacing or the connection's limit) while the client's transport is full."""
        conn = self.conn
        conn.flush()
        if conn.lost:
            raise ClientGone()
        if not conn.write_paused:
            return
        self.draining = True
        oconn = self.oconn
        assert oconn is not None
        if self.pushing:
            oconn.io.push(None)
            self.pushing = False
        conn.on_resume(self.on_resumed)

    def _resumed(self) -> None:
        self.draining = False
        try:
            if self.conn.lost:
                raise ClientGone()
            self._pump()
        except Exception as exc:
            self._abort(exc)

    def _origin_data(self, data: bytes) -> None:
        self.bytes_read += len(data)
        try:
            parser = self.parser
            assert parser is not None
            self.events.extend(parser.receive_data(data))
            self._pump()
        except Exception as exc:
            self._abort(exc)

    def _origin_end(self, exc: BaseException | None) -> None:
        oconn = self.oconn
        assert oconn is not None
        oconn.io.push(None)
        self.pushing = False
        if isinstance(exc, OSError):
            self._abort(exc)
            return
        try:
            self.eof = True
            parser = self.parser
            assert parser is not None
            self.events.extend(parser.receive_data(b""))
            self._pump()
        except Exception as exc2:
            self._abort(exc2)

    def _origin_timeout(self) -> None:
        self._abort(TimeoutError())

    def _abort(self, exc: BaseException) -> None:
        """Stop relaying; the connection loop answers as the general exchange would."""
        oconn = self.oconn
        if oconn is not None and self.pushing:
            oconn.io.push(None)
        self.pushing = False
        self.conn.on_resume(None)
        self._hand(ABORTED, exc)

    def _release(self, complete: bool) -> None:
        """``H1Origin.finish`` and the end of ``Exchange._proxy``'s turn."""
        oconn = self.oconn
        parser = self.parser
        backend = self.backend
        assert oconn is not None and parser is not None and backend is not None
        self.oconn = None
        self.parser = None
        io = oconn.io
        io.push(None)
        io.follow(None)
        reusable = complete and parser.reusable
        if reusable:
            parser.start_next_cycle()
            oconn.parser = parser
        assert self.pr is not None
        self.pr.dialer.release(oconn, reusable)
        backend.release()
        self.ex.rec.upstream_ms = (time.monotonic() - self.t0) * 1000

    def _complete(self) -> None:
        """The response ended and the client took it: record, then the next request."""
        self.pushing = False
        self._release(True)
        self.ex._finish(self.started)
        h1 = self.hc.h1
        if not h1.keep_alive:
            self._hand(CLOSED)
            return
        try:
            self.source.events.extend(h1.start_next_cycle())
        except ClientProtocolError as exc:  # a pipelined request that cannot be read
            self._hand(FAILED, exc)
            return
        self.idle = self.keepalive
        self.deadline = self.loop.time() + self.keepalive
        self.start = b""
        self._next()
