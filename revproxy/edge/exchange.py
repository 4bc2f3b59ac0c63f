"""One exchange: a request routed, then answered locally or forwarded to a server of its pool.

Rule of this room: this is the one place that turns errors into responses, for both client
protocols. The client side of an exchange is a ``ClientStream`` (client_side.py): an HTTP/1.1
connection (http_proxy.py) or one HTTP/2 stream (h2_proxy.py). Its backend side is an
``OriginStream`` from the pool's dialer (HTTP/1.1 or HTTP/2: dial.py, dial_h2.py). The exchange
never knows which: protocol differences live behind those two interfaces. Bodies stream both
ways with backpressure: a chunk is asked for only once the previous one was written to the
other side (which is when HTTP/2 acknowledges it). A request that was not fully read or
forwarded ends the client connection (HTTP/1.1) or its stream (HTTP/2). Every wait has a
timeout; every origin stream is finished in ``finally``.

gRPC (grpc/doc/PROTOCOL-HTTP2.md): a gRPC call that cannot reach its service — no server
available or reachable, an origin error before any answer, a pool that speaks HTTP/1.1 — is
answered Trailers-Only with ``grpc-status`` UNAVAILABLE (14); one whose ``grpc-timeout``
elapses before the answer gets DEADLINE_EXCEEDED (4).

WebSocket (RFC 6455 §4, RFC 8441): an HTTP/1.1 ``Upgrade: websocket`` request, or an HTTP/2
extended CONNECT with ``:protocol = websocket``, goes to an HTTP/1.1 origin as an Upgrade
request; on its 101 the client gets the switch (101, or 200 on HTTP/2) and both sides become a
byte tunnel with ``timeouts.tunnel`` as idle timeout. Any other answer is relayed as usual.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Coroutine
from http import HTTPStatus
from typing import Any

from revproxy.certs.acme import challenge_answer
from revproxy.config.model import Auth, ErrorPage, Route, RouteCache, RouteTimeouts, Timeouts
from revproxy.content.cache import Cache, Entry, LookupKind
from revproxy.content.static import Forbidden, Missing, Redirect, StaticSite, plan_response
from revproxy.edge.client_side import ClientGone, ClientStream, ConnInfo, proxy_header_for
from revproxy.edge.content import CacheFill, CaptureStream, ResponseCoder, plan_compression
from revproxy.edge.generation import Generation, ListenerRuntime, PoolRuntime
from revproxy.edge.rules import ListenerRules, RouteRules, with_hsts
from revproxy.edge.tls import with_client_cert
from revproxy.errors import (
    BackendError,
    BackendProtocolError,
    BackendTimeout,
    BodyTooLarge,
    ClientProtocolError,
    MisdirectedRequest,
    RequestTimeout,
    RevproxyError,
)
from revproxy.net.conn_io import ConnIO, Sink
from revproxy.ops.accesslog import AccessRecord
from revproxy.policy.access import DENY, AccessList
from revproxy.policy.auth import AUTH, Authenticator
from revproxy.policy.limits import LimitSet, Refusal
from revproxy.proto import grpc
from revproxy.proto.caching import (
    answers_not_modified,
    cache_key,
    not_modified_headers,
    request_policy,
    revalidation_headers,
    served_headers,
)
from revproxy.proto.encoding import accept_encoding, negotiate, strip_etag_suffixes
from revproxy.proto.events import (
    DataReceived,
    Event,
    Headers,
    InformationalReceived,
    MessageEnded,
    RequestReceived,
    ResponseReceived,
)
from revproxy.proto.forwarding import (
    ClientIdentity,
    interim_headers,
    policy_client,
    request_headers,
    response_headers,
)
from revproxy.proto.host import normalise_host, valid_authority
from revproxy.proto.rewrite import apply_edits, rewrite_prefix
from revproxy.proto.target import normalize_target, path_of
from revproxy.upstream.backend import PickContext
from revproxy.upstream.dialer import H1Origin, OriginStream

log = logging.getLogger("revproxy.http")

_ids = itertools.count(1)
_ID_PREFIX = os.urandom(3).hex()

# Background revalidations (stale-while-revalidate) in flight: held so they are not collected.
_background: set[asyncio.Task[None]] = set()
# Conditional request fields a cache fill does not pass on (RFC 9111 §4.3.1: the cache asks
# with its own validators, and answers the client's from the stored response).
_CONDITIONAL = frozenset(
    {b"if-none-match", b"if-modified-since", b"if-match", b"if-unmodified-since", b"if-range"}
)

# Access-log status of a request whose client went away before any answer (nginx's 499).
STATUS_CLIENT_GONE = 499


def request_id() -> str:
    return f"{_ID_PREFIX}{next(_ids):x}"


def _body_expected(req: RequestReceived) -> int:
    """-1 for a body of unknown length (chunked, or HTTP/2 without content-length), else the
    Content-Length (0 when there is no body)."""
    for name, value in req.headers:
        if name == b"transfer-encoding":
            return -1
        if name == b"content-length":
            return int(value)
    if req.http_version == b"2" and not req.ended:
        return -1
    return 0


def _wants_websocket(req: RequestReceived) -> bool:
    """RFC 6455 §4.1 (``Upgrade: websocket`` with ``Connection: Upgrade``) or RFC 8441 §4."""
    if req.protocol:
        return req.method == b"CONNECT" and req.protocol.lower() == b"websocket"
    if req.method != b"GET":
        return False
    upgrade = connection = False
    for name, value in req.headers:
        if name == b"upgrade":
            upgrade = upgrade or b"websocket" in value.lower()
        elif name == b"connection":
            connection = connection or b"upgrade" in value.lower()
    return upgrade and connection


# RFC 9110 §9.2.2: "A proxy MUST NOT automatically retry non-idempotent requests."
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
# The WebSocket handshake headers an origin's 101 carries to the client (RFC 6455 §4.2.2).
_UPGRADE_HEADERS = [(b"upgrade", b"websocket"), (b"connection", b"Upgrade")]


# What routing decided: the pool to forward to, or the local answer to await.
_Action = PoolRuntime | Coroutine[Any, Any, bool]


class _StaleConnection(Exception):
    """A reused keep-alive connection turned out closed before any response byte (or an
    HTTP/2 origin refused the stream unprocessed): the request may go again. ``end``: the
    request's end, taken from the client stream by the turn that failed (the next turn sends
    it again: without it the request would look as if its body were still to come)."""

    def __init__(self, end: MessageEnded) -> None:
        super().__init__()
        self.end = end


class Sent:
    """A request an HTTP/2 plain stream (edge/h2_plain.py) sent to a pooled HTTP/1.1
    connection and handed on to ``Exchange.attempts`` before its response could be answered
    from callbacks: its origin stream (what the origin sent so far parsed into its events),
    the server it holds (acquired), when the turn began (``t0``), when the response head is
    due, and what reading the origin failed with (raised where the exchange reads it)."""

    __slots__ = ("deadline", "failure", "ostream", "t0")

    def __init__(
        self, ostream: OriginStream, t0: float, deadline: float, failure: BaseException | None
    ) -> None:
        self.ostream = ostream
        self.t0 = t0
        self.deadline = deadline
        self.failure = failure


class _UploadFailed(Exception):
    """The request body could not be relayed; the cause says why."""


class Exchange:
    """Routes and serves the requests of one client stream, one at a time.

    An HTTP/1.1 connection keeps one for all its requests (nothing is allocated per request
    for it); an HTTP/2 connection makes one per stream."""

    __slots__ = (
        "auth_user",
        "client_id",
        "deadline",
        "encoding",
        "fill",
        "gen",
        "grpc",
        "info",
        "listener",
        "max_body",
        "origin_authority",
        "permitted",
        "pick_context",
        "rec",
        "req",
        "route",
        "rules",
        "scheme",
        "sink",
        "stream",
        "target",
        "timeouts",
        "ws_accept",
    )

    def __init__(
        self,
        stream: ClientStream,
        *,
        generation: Generation,
        listener: ListenerRuntime,
        info: ConnInfo,
        sink: Sink | None = None,
    ) -> None:
        self.stream = stream
        # The client's connection when its room can pace the origin (HTTP/1.1; conn_io.py).
        self.sink = sink
        self.gen = generation
        self.listener = listener
        self.info = info
        self.scheme = "https" if info.tls else "http"
        self.grpc = False
        self.deadline: float | None = None  # grpc-timeout, seconds
        self.pick_context = PickContext(client_ip=info.client[0])
        self.client_id: ClientIdentity | None = None
        self.ws_accept: bytes | None = None
        # allow/deny answers for this connection's client (the same on every request of a
        # keep-alive connection unless a trusted X-Forwarded-For names another).
        self.permitted: dict[tuple[AccessList, str], bool] = {}
        self.auth_user: tuple[Auth, str] | None = None  # the route's auth and who passed it
        self.route: Route | None = None  # the route the request matched
        self.rules: RouteRules | None = None  # its HTTP rules, if it has any (edge/rules.py)
        self.origin_authority = b""  # the Host the origin is sent (_proxy)
        self.encoding: str | None = None  # the client's choice among the route's encodings
        self.fill: CacheFill | None = None  # a caching route's request to the origin
        self.timeouts = Timeouts()  # the pool's, with the route's overrides (_proxy)
        self.max_body = 0  # global.max_body_size, or the route's (_proxy)

    async def run(self, req: RequestReceived) -> bool:
        """Serve ``req``; True when the client connection may carry another request."""
        started = time.monotonic()
        self._begin(req)
        try:
            action = self.decide(req, self.gen.config.global_.path_escaped_slashes == "reject")
        except Exception as exc:
            action = _raise(exc)
        return await self.act(action, started)

    def decide(self, req: RequestReceived, reject: bool) -> _Action:
        """What ``req`` gets, without waiting: a pool to proxy to, or the answer to await
        (a local error, a refusal, a route's local answer). ``reject``: escaped slashes in
        the path are refused (global.path_escaped_slashes). Sets ``target``."""
        try:
            authority = req.authority
            # An HTTP/1.0 request may come without Host; any other needs a valid one.
            if not valid_authority(authority) and (authority or req.http_version != b"1.0"):
                raise ClientProtocolError("invalid Host")
            self.target = normalize_target(req.method, req.target, reject_escaped=reject)
        except ClientProtocolError as exc:
            return self._local_error(exc)
        lst = self.listener
        acl = lst.access
        if acl is not None and not self._permits(acl, req):
            return self._refuse(DENY)
        if lst.limits is None:
            return self._route(req, normalise_host(req.authority))
        return self._listener_limits(lst.limits, req)

    async def act(self, action: _Action, started: float) -> bool:
        """Carry out what ``decide`` answered, then write the record (``started``: when the
        request began)."""
        rec = self.rec
        try:
            if isinstance(action, PoolRuntime):
                return await self._proxy(action)
            return await action
        except BaseException:
            if rec.status == 0:
                rec.status = STATUS_CLIENT_GONE
            raise
        finally:
            self._finish(started)

    async def refuse(self, req: RequestReceived, reason: str) -> bool:
        """Answer ``req`` 429 at once, unrouted (a limit counted before the request was read:
        ``conn_limit.streams_per_client``), logged and counted like any refusal."""
        started = time.monotonic()
        rec = self._begin(req)
        try:
            self.target = req.target
            rec.refused = reason
            log.info("id=%s client=%s refused: %s", rec.id, self.info.client[0], reason)
            return await self._local(429, headers=[(b"retry-after", b"1")])
        except BaseException:
            if rec.status == 0:
                rec.status = STATUS_CLIENT_GONE
            raise
        finally:
            self._finish(started)

    def _begin(self, req: RequestReceived) -> AccessRecord:
        """The access-log record of ``req``, and the per-request state reset."""
        stream = self.stream
        rec = AccessRecord(
            id=request_id(),
            client=self.info.client[0],
            peer=self.info.peer[0],
            listener=self.listener.config.name,
            sni=self.info.sni or "",
            host=req.authority.decode("latin-1"),
            method=req.method.decode("latin-1"),
            path=req.target.decode("latin-1"),
            status=0,
            bytes_in=0,
            bytes_out=stream.bytes_out,
            route="",
            pool="",
            backend="-",
            duration_ms=0.0,
            upstream_ms=0.0,
            authority=self.info.authority,
            vpce=self.info.vpce,
            request=req,
            conn=self.info,
            head_out=stream.head_out,
        )
        self.req = req
        self.rec = rec
        self.grpc = False
        self.deadline = None
        self.auth_user = None
        self.route = None
        self.rules = None
        self.encoding = None
        self.fill = None
        return rec

    def _finish(self, started: float) -> None:
        """Write the request's access-log line and count it."""
        rec = self.rec
        stream = self.stream
        rec.duration_ms = (time.monotonic() - started) * 1000
        rec.bytes_in = stream.take_bytes_in()
        rec.bytes_out = stream.bytes_out - rec.bytes_out
        rec.head_out = stream.head_out - rec.head_out
        self.gen.access_log.record(rec)
        self.gen.metrics.record(rec)

    # --- routing ---------------------------------------------------------------------------

    def _route(self, req: RequestReceived, host: str, *, acme_done: bool = False) -> _Action:
        """Where the request goes: a pool, or the local answer to await (nothing is awaited
        here, so a proxied request costs no coroutine of its own)."""
        lst = self.listener
        try:
            self._check_authority(host)
        except MisdirectedRequest as exc:
            return self._local_error(exc)
        if req.method == b"CONNECT" and not _wants_websocket(req):
            return self._local(405, close=True)
        if lst.acme and not acme_done:  # ACME HTTP-01 challenges come before anything else
            return self._acme(req, host)
        if lst.config.redirect_https:
            port = lst.redirect_port
            authority = host if ":" not in host else f"[{host}]"
            if port and port != 443:
                authority += f":{port}"
            location = f"https://{authority}".encode() + self.target
            return self._local(308, headers=[(b"location", location)], body=b"")
        path = path_of(self.target).decode("latin-1")
        router = lst.router
        if router.conditions:
            route = router.match_request(
                host, path, req.method, req.headers, self.target, self._policy_client(req)
            )
        else:
            route = router.match(host, path)
        if route is None:
            return self._local(404)
        self.rec.route = str(route.index)
        self.route = route
        gen = self.gen
        if gen.route_rules:
            self.rules = gen.route_rules.get(route.index)
        route_access = gen.route_access
        if route_access:
            acl = route_access.get(route.index)
            if acl is not None and not self._permits(acl, req):
                return self._refuse(DENY)
        if not route.normalize_path:
            self.target = req.target  # matched normalised, forwarded as the client wrote it
        if gen.route_limits:
            limits = gen.route_limits.get(route.index)
            if limits is not None:
                if not limits.local:
                    return self._limits_then(limits, route, self._authorised)
                refusal = limits.check(
                    gen.counters, self._policy_client(req), req.headers, "", route.index
                )
                if refusal is not None:
                    return self._limited(refusal)
        if gen.route_auth or gen.route_user_limits:
            return self._authorised(route)
        return self._route_action(route)

    def _authorised(self, route: Route) -> _Action:
        """The route's auth, then its limits counted per user, then what it does."""
        gen = self.gen
        auth = gen.route_auth.get(route.index) if gen.route_auth else None
        if auth is not None:
            user = auth.known(self.req.headers)
            if user is None:
                return self._authenticated(auth, route)
            self.rec.user = user  # proved before by the same credentials: no coroutine
            self.auth_user = (auth.auth, user)
        if gen.route_user_limits and route.index in gen.route_user_limits:
            return self._user_limited(route)
        return self._route_action(route)

    def _user_limited(self, route: Route) -> _Action:
        """Limits with ``key = "user"``: counted once the user is known."""
        gen = self.gen
        if gen.route_user_limits:
            limits = gen.route_user_limits.get(route.index)
            if limits is not None:
                if not limits.local:
                    return self._limits_then(limits, route, self._route_action)
                req = self.req
                user = self.rec.user
                refusal = limits.check(
                    gen.counters, self._policy_client(req), req.headers, user, route.index
                )
                if refusal is not None:
                    return self._limited(refusal)
        return self._route_action(route)

    def _route_action(self, route: Route) -> _Action:
        """What a matched route does: redirect, answer, serve files, or the pool to forward
        to."""
        rules = self.rules
        if rules is not None and rules.static is not None:
            return self._static(rules, rules.static)
        if route.redirect is not None:
            return self._local(
                route.redirect_status, headers=[(b"location", route.redirect.encode())], body=b""
            )
        if route.respond is not None:
            r = route.respond
            return self._local(
                r.status, body=r.body.encode(), headers=[(b"content-type", r.content_type.encode())]
            )
        assert route.pool is not None
        self.rec.pool = route.pool
        pr = self.gen.pools[route.pool]
        rules = self.rules
        if rules is not None and rules.cache is not None and self.gen.cache is not None:
            return self._cached(pr, rules.cache, self.gen.cache)
        return pr

    async def _authenticated(self, auth: Authenticator, route: Route) -> bool:
        """The route's users only: 401 with a challenge, or on with the user known."""
        req = self.req
        verdict = await auth.check(req.headers, req.method, req.target)
        if verdict.user is None:
            self.rec.refused = AUTH
            return await self._local(401, headers=[(b"www-authenticate", verdict.challenge)])
        self.rec.user = verdict.user
        self.auth_user = (auth.auth, verdict.user)
        action = self._user_limited(route)
        return await (self._proxy(action) if isinstance(action, PoolRuntime) else action)

    async def _acme(self, req: RequestReceived, host: str) -> bool:
        answer = await challenge_answer(self.gen.config.acme, req.method, req.target, host)
        if answer is not None:
            self.rec.route = "acme"
            return await self._local(answer.status, headers=list(answer.headers), body=answer.body)
        action = self._route(req, host, acme_done=True)
        return await (self._proxy(action) if isinstance(action, PoolRuntime) else action)

    def _check_authority(self, host: str) -> None:
        """RFC 9110 §7.4: a request for a name this TLS connection does not serve gets 421."""
        sni = self.info.sni
        tls = self.listener.tls
        if tls is None or sni is None or host == sni:
            return
        store = tls.store
        cert = store.lookup(sni)
        if cert is None or store.lookup(host) is not cert:
            raise MisdirectedRequest(f"host {host!r} does not match TLS server name {sni!r}")

    # --- forwarding ------------------------------------------------------------------------

    async def _proxy(self, pr: PoolRuntime) -> bool:
        req = self.req
        g = self.gen.config.global_
        route = self.route
        self.timeouts = pr.config.timeouts
        max_body = self.max_body = g.max_body_size
        if route is not None:
            if route.max_body_size is not None:
                max_body = self.max_body = route.max_body_size
            if route.timeouts is not None:
                self.timeouts = _overridden(self.timeouts, route.timeouts)
        expected = _body_expected(req)
        if max_body and expected > max_body:
            return await self._local_error(BodyTooLarge("request body too large"))
        self.grpc = grpc.is_grpc(req.headers)
        protocol = pr.config.protocol
        if self.grpc:
            self.deadline = grpc.timeout_seconds(req.headers)
            if protocol == "http1":
                return await self._grpc_local(
                    grpc.UNAVAILABLE, f"pool {pr.config.name} speaks HTTP/1.1; gRPC needs HTTP/2"
                )
        client_id = self.client_id
        if client_id is None or client_id.host != req.authority:
            # Built once per connection and authority (a client sends the same one each time).
            client_id = self.client_id = ClientIdentity(
                address=self.info.client[0],
                scheme=self.scheme,
                host=req.authority,
                port=self.info.local_port,
            )
        headers = request_headers(
            req.headers,
            client_id,
            trusted=self.listener.config.trusted_proxies,
            forwarded=self.listener.config.forwarded,
            underscores=g.underscores_in_headers == "keep",
        )
        if self.auth_user is not None:
            headers = _with_user(headers, *self.auth_user)
        ltls = self.listener.config.tls
        if ltls is not None and ltls.client_cert_header:
            headers = with_client_cert(
                headers, ltls.client_cert_header.encode(), self.info.client_subject
            )
        headers = self.with_origin_host(pr, headers)
        rules = self.rules
        if rules is not None:
            if rules.request_edits is not None:
                headers = apply_edits(headers, rules.request_edits, self._template_values())
            if rules.rewrites_target:
                self.target = rewrite_prefix(self.target, rules.strip_prefix, rules.add_prefix)
            if rules.compress is not None:
                self.encoding = negotiate(accept_encoding(req.headers), rules.compress.encodings)
                headers = strip_etag_suffixes(headers, rules.compress.encodings)
            fill = self.fill
            if fill is not None:
                # The origin is asked for the whole response (the client's own conditions
                # are answered from the stored one), or to confirm the stale one.
                headers = [h for h in headers if h[0] not in _CONDITIONAL]
                if fill.stale is not None:
                    headers.extend(revalidation_headers(fill.stale.headers))
        websocket = False
        self.ws_accept = None
        if protocol == "http1":
            if _wants_websocket(req):
                websocket = True
                headers.extend(_UPGRADE_HEADERS)
                if req.http_version == b"2":
                    # RFC 8441 §5: the HTTP/1.1 handshake the origin expects of a client.
                    headers.append((b"sec-websocket-key", _websocket_key()))
                self.ws_accept = _websocket_accept(headers)
            elif expected == -1:
                # Transfer-Encoding is hop-by-hop and was removed above, but a body of unknown
                # length is still relayed chunked: without this the origin would read none.
                headers.append((b"transfer-encoding", b"chunked"))
        elif grpc.wants_trailers(req.headers):
            # TE is hop-by-hop, but "te: trailers" is what an HTTP/2 origin (gRPC) requires.
            headers.append((b"te", b"trailers"))
        if pr.config.balance == "uri":
            ctx = PickContext(client_ip=self.info.client[0], uri=self.target.decode("latin-1"))
        else:
            ctx = self.pick_context  # the same for every request of this client
        identity = proxy_header_for(pr.config.send_proxy, self.info)
        return await self.attempts(pr, headers, websocket, ctx, identity, None)

    def with_origin_host(self, pr: PoolRuntime, headers: Headers) -> Headers:
        """``headers`` with the Host the origin is sent (``origin_authority``): the pool's
        ``host_header`` (the origin's own name; the client's stays in X-Forwarded-Host), or
        the client's."""
        host_header = pr.config.host_header
        if host_header:
            self.origin_authority = host_header.encode()
            return [(b"host", self.origin_authority), *(h for h in headers if h[0] != b"host")]
        self.origin_authority = self.req.authority
        return headers

    async def attempts(
        self,
        pr: PoolRuntime,
        headers: Headers,
        websocket: bool,
        ctx: PickContext,
        identity: bytes | None,
        sent: Sent | None,
    ) -> bool:
        """The turns of ``_proxy``: the request on a pooled connection (or a new one), and
        once more on a new one when the origin had closed the pooled one. ``sent``: the
        first turn's request already went (an HTTP/2 plain stream handed on before its
        answer, edge/h2_plain.py): its stream, the server acquired, when it began."""
        fresh = False
        ended: MessageEnded | None = None  # a stale turn's request end, for the next
        while True:
            if sent is not None:
                ostream = sent.ostream
                t0 = sent.t0
            else:
                dialer = pr.dialer
                first = None
                pooled: OriginStream | None = None
                if not fresh:
                    first, pooled = dialer.pooled_stream(ctx, identity)
                try:
                    if pooled is None:
                        pooled = await dialer.open_stream(
                            ctx, fresh=fresh, identity=identity, first=first
                        )
                except BackendError as exc:
                    return await self._local_error(exc)
                ostream = pooled
                self.rec.backend = ostream.backend.label
                ostream.backend.acquire()
                t0 = time.monotonic()
            try:
                return await self._forward(
                    ostream, pr, headers, websocket, retry=not fresh, sent=sent, ended=ended
                )
            except _StaleConnection as stale:
                fresh = True  # the origin closed a pooled connection; nothing was lost
                ended = stale.end
            finally:
                sent = None
                ostream.backend.release()
                self.rec.upstream_ms = (time.monotonic() - t0) * 1000

    async def _forward(
        self,
        ostream: OriginStream,
        pr: PoolRuntime,
        headers: Headers,
        websocket: bool,
        *,
        retry: bool,
        sent: Sent | None = None,
        ended: MessageEnded | None = None,
    ) -> bool:
        """One turn of ``attempts``. ``ended``: the request's end, when an earlier turn took
        it from the client stream (``_StaleConnection``)."""
        req = self.req
        stream = self.stream
        timeouts = self.timeouts
        end = ended if ended is not None else stream.body_end_ready()
        upload: asyncio.Task[None] | None = None
        complete = False
        # A pooled connection the origin had closed is retried on a fresh one (once), but only
        # for a request that is whole in hand and idempotent: the origin may have acted on it.
        # A stream an HTTP/2 origin refused unprocessed may go again whatever its method.
        retry_ok = retry and ostream.reused and req.method in _IDEMPOTENT and end is not None
        refused_ok = retry and end is not None
        try:
            if sent is None:
                ostream.send_head(
                    req.method,
                    self.target,
                    self.origin_authority,
                    self.scheme.encode(),
                    headers,
                    end=end,
                    upgrade=websocket,
                )
                if end is None:
                    upload = asyncio.get_running_loop().create_task(
                        self._upload(ostream, timeouts.idle, self.max_body)
                    )
            elif sent.failure is not None:
                raise sent.failure  # what the origin's answer broke with, handled below
            try:
                complete = await self._relay_response(
                    ostream, pr, upload, None if sent is None else sent.deadline
                )
            except BaseException:
                if upload is not None and not upload.done():
                    upload.cancel()
                raise
            if upload is not None:
                if not upload.done():
                    # The origin answered before the request body was complete: the rest
                    # of that body can't be read, so neither connection carries another.
                    complete = False
                    upload.cancel()
                    with contextlib.suppress(BaseException):
                        await upload
                    return False
                upload.result()
            return complete
        except _UploadFailed as exc:
            # The client's body broke off or was malformed.
            return await self._aborted(exc.__cause__ or exc)
        except ClientGone:
            raise
        except TimeoutError:
            # Before the OSError clause: TimeoutError is an OSError since Python 3.3.
            return await self._aborted(BackendTimeout("origin did not answer in time"))
        except (ConnectionError, OSError) as conn_error:
            if stream.response_started:
                raise ClientGone() from conn_error
            if ostream.bytes_read == 0 and (retry_ok or (refused_ok and ostream.refused)):
                assert end is not None
                raise _StaleConnection(end) from conn_error
            return await self._local_error(BackendProtocolError("origin closed the connection"))
        except RevproxyError as failure:
            stale = ostream.bytes_read == 0 and (retry_ok or (refused_ok and ostream.refused))
            if isinstance(failure, BackendProtocolError) and stale:
                assert end is not None
                raise _StaleConnection(end) from failure
            return await self._aborted(failure)
        finally:
            ostream.finish(complete)

    async def _relay_response(
        self,
        ostream: OriginStream,
        pr: PoolRuntime,
        upload: asyncio.Task[None] | None,
        deadline: float | None = None,
    ) -> bool:
        """Relay the origin's response; True when it ended cleanly. ``deadline``: when the
        response head is due, if the wait for it began before (``Sent``)."""
        timeouts = self.timeouts
        wait = timeouts.response
        if self.deadline is not None:
            wait = min(wait, self.deadline)
        # Waits end at the stream's deadline (no timer armed per wait on HTTP/1.1).
        loop = asyncio.get_running_loop()
        sink = self.sink
        if sink is not None and sink.unproven:
            # A client not known to keep up: the origin's first read (the head and the body
            # after it) is already no bigger than what the client takes (conn_io.py, pacing).
            ostream.follow(sink)
        resp: ResponseReceived | InformationalReceived | None = None
        if upload is None:
            ostream.deadline = loop.time() + wait if deadline is None else deadline
            ev = await ostream.next()  # the common case, awaited here: one coroutine less
            if type(ev) is ResponseReceived:
                resp = ev
            else:
                ostream.events.appendleft(ev)
        else:
            # The response timer starts once the whole request went to the origin; while the
            # client uploads, the upload's idle timeouts bound the wait (_upload).
            ostream.deadline = None
        if resp is None:
            resp = await self._response_head(ostream, upload, pr, wait)
        stream = self.stream
        self.rec.status = resp.status
        if resp.status == 101:
            self._check_switch(ostream, resp)
            await self._tunnel(ostream, resp, pr)
            return False
        out_headers = response_headers(
            resp.headers,
            pr.hiding,
            scheme=self.scheme.encode(),
            host=self.req.authority,
        )
        if self.rules is not None and self.rules.response_edits is not None:
            out_headers = apply_edits(
                out_headers, self.rules.response_edits, self._template_values()
            )
        fill = self.fill
        if fill is not None:
            if resp.status == 304 and fill.stale is not None:
                return await self._confirmed(ostream, fill, resp.headers)
            fill.begin(resp.status, out_headers, self.target.decode("latin-1"))
        lrules = self.listener.rules
        if lrules is not None and lrules.hsts is not None:
            out_headers = with_hsts(out_headers, lrules.hsts)
        coder: ResponseCoder | None = None
        rules = self.rules
        if rules is not None and rules.compress is not None:
            req = self.req
            out_headers, coder, self.rec.encoding = plan_compression(
                rules.compress, self.encoding, req.method, req.headers, resp.status, out_headers
            )
        # The origin's reason phrase is not relayed: it is free text that may name it.
        events = ostream.events
        body = _whole_body(events)
        if body is not None:
            # The whole response is in hand (HTTP/2: or a gRPC "Trailers-Only" answer): head,
            # body and end go out in one block.
            events.clear()
            if fill is not None:
                fill.add(body)
                fill.end()
            if coder is not None:
                body = await coder.whole(body)
                out_headers.append((b"content-length", b"%d" % len(body)))
            await stream.send_response(resp.status, out_headers, end=True, body=body)
            return True
        await stream.send_response(resp.status, out_headers)
        if coder is not None or fill is not None:
            # A body of unknown length may be a stream of events (SSE, long polls): what was
            # compressed goes out whenever the origin pauses. One of known length arrives as
            # fast as the origin sends it; flushing at every read would cost a block per read.
            streamed = not any(n == b"content-length" for n, _ in resp.headers)
            return await self._relay_body(ostream, pr, coder, fill, streamed)
        if sink is not None:
            # The origin is read no further ahead than the client takes (conn_io.py,
            # pacing); ``finish`` ends it.
            ostream.follow(sink)
        idle = timeouts.idle
        queued = ostream.events
        while True:
            if not queued:
                ostream.deadline = loop.time() + idle
            ev = await ostream.next()
            if isinstance(ev, DataReceived):
                await stream.send_data(ev.data)
            elif isinstance(ev, MessageEnded):
                await stream.send_end(interim_headers(ev.trailers, pr.hiding))
                return True
            else:
                raise BackendProtocolError("origin closed inside the response body")

    async def _relay_body(
        self,
        ostream: OriginStream,
        pr: PoolRuntime,
        coder: ResponseCoder | None,
        fill: CacheFill | None,
        streamed: bool,
    ) -> bool:
        """The body of a response that is compressed or recorded for the cache: each chunk
        through the coder (flushed whenever the origin pauses, when ``streamed``) and into the
        recording."""
        stream = self.stream
        sink = self.sink
        if sink is not None:
            ostream.follow(sink)
        loop = asyncio.get_running_loop()
        idle = self.timeouts.idle
        queued = ostream.events
        while True:
            if not queued:
                if coder is not None and streamed:
                    flushed = await coder.pause()
                    if flushed:
                        await stream.send_data(flushed)
                ostream.deadline = loop.time() + idle
            ev = await ostream.next()
            if isinstance(ev, DataReceived):
                if fill is not None:
                    fill.add(ev.data)
                data = await coder.data(ev.data) if coder is not None else ev.data
                if data:
                    await stream.send_data(data)
            elif isinstance(ev, MessageEnded):
                if coder is not None:
                    tail = await coder.end()
                    if tail:
                        await stream.send_data(tail)
                if fill is not None:
                    fill.end()
                await stream.send_end(interim_headers(ev.trailers, pr.hiding))
                return True
            else:
                raise BackendProtocolError("origin closed inside the response body")

    async def _cached(self, pr: PoolRuntime, rule: RouteCache, cache: Cache) -> bool:
        """A caching route (content/cache.py): a stored response, or the origin's stored."""
        req = self.req
        rec = self.rec
        policy = request_policy(
            req.method, req.headers, cookies=rule.cookies, authorization=rule.authorization
        )
        if policy.bypass is not None:
            cache.note_bypass()
            rec.cache = "bypass"
            return await self._proxy(pr)
        key = cache_key(self.scheme.encode(), req.authority, self.target)
        found = cache.lookup(key, req.headers, policy)
        entry = found.entry
        if entry is not None and found.kind is LookupKind.FRESH:
            rec.cache = "hit"
            return await self._serve_entry(entry, found.age)
        host = req.authority.decode("latin-1").lower()
        if entry is not None and found.kind is LookupKind.STALE_WHILE_REVALIDATE:
            rec.cache = "stale"
            self._revalidate_later(pr, rule, cache, key, host, entry)
            return await self._serve_entry(entry, found.age)
        if policy.only_if_cached:
            rec.cache = "miss"
            return await self._local(504)
        if entry is not None:  # stale: ask the origin to confirm it
            rec.cache = "revalidated"
            self.fill = CacheFill(cache, rule, key, host, req.headers, stale=entry)
            return await self._proxy(pr)
        with cache.flight(key, req.headers) as flight:
            if not flight.leader:
                waited = await flight.wait(self.timeouts.response)
                if waited is not None:
                    rec.cache = "coalesced"
                    return await self._serve_entry(waited, int(waited.age(time.time())))
                rec.cache = "miss"
                self.fill = CacheFill(cache, rule, key, host, req.headers)
                return await self._proxy(pr)
            rec.cache = "miss"
            self.fill = CacheFill(cache, rule, key, host, req.headers, flight=flight)
            return await self._proxy(pr)

    async def _confirmed(
        self, ostream: OriginStream, fill: CacheFill, headers_304: Headers
    ) -> bool:
        """The origin answered our revalidation 304: the stored response, refreshed."""
        while not isinstance(await ostream.next(), MessageEnded):
            pass  # a 304 has no body; its end keeps the origin connection reusable
        entry = fill.refreshed(headers_304)
        stale = fill.stale
        assert stale is not None
        if entry is None:  # no longer storable: this client still gets the confirmed answer
            entry = stale
        self.rec.status = 200
        return await self._serve_entry(entry, 0)

    async def _serve_entry(self, entry: Entry, age: int) -> bool:
        """Answer from a stored response: 304 to the client's own matching conditions."""
        req = self.req
        stream = self.stream
        if answers_not_modified(req.headers, entry.headers):
            status, headers, body = 304, not_modified_headers(entry.headers, age), b""
        else:
            status, body = entry.status, entry.body
            headers = [h for h in served_headers(entry.headers, age) if h[0] != b"content-length"]
        rules = self.rules
        if rules is not None and rules.compress is not None:
            self.encoding = negotiate(accept_encoding(req.headers), rules.compress.encodings)
            headers, coder, self.rec.encoding = plan_compression(
                rules.compress, self.encoding, req.method, req.headers, status, headers
            )
            if coder is not None:
                body = await coder.whole(body)
        lrules = self.listener.rules
        if lrules is not None and lrules.hsts is not None:
            headers = with_hsts(headers, lrules.hsts)
        if status != 304:
            headers.append((b"content-length", b"%d" % len(body)))
        self.rec.status = status
        if req.method == b"HEAD":
            body = b""
        return await stream.send_whole(status, headers, body, not stream.request_complete)

    def _revalidate_later(
        self, pr: PoolRuntime, rule: RouteCache, cache: Cache, key: bytes, host: str, entry: Entry
    ) -> None:
        """stale-while-revalidate: one background request per key confirms or replaces it."""
        if not cache.begin_refresh(key):
            return
        background = Exchange(
            CaptureStream(), generation=self.gen, listener=self.listener, info=self.info
        )
        req = self.req
        target = self.target

        async def run() -> None:
            try:
                background._begin(req)
                background.target = target
                background.route = self.route
                background.rules = self.rules
                background.rec.route = self.rec.route
                background.rec.pool = self.rec.pool
                background.rec.cache = "refresh"
                background.fill = CacheFill(cache, rule, key, host, req.headers, stale=entry)
                started = time.monotonic()
                try:
                    await background._proxy(pr)
                finally:
                    background._finish(started)
            except Exception:
                log.exception("id=%s background revalidation failed", self.rec.id)
            finally:
                cache.end_refresh(key)

        task = asyncio.get_running_loop().create_task(run())
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def _static(self, rules: RouteRules, site: StaticSite) -> bool:
        """A ``static`` route: a file under its root (content/static.py), sendfile where the
        connection allows it."""
        req = self.req
        rec = self.rec
        rec.pool = "static"
        target = self.target
        if rules.strip_prefix is not None:
            target = rewrite_prefix(target, rules.strip_prefix, None)
        resolved = site.resolve(path_of(target))
        if isinstance(resolved, Missing):
            log.info("id=%s static: %s", rec.id, resolved.reason)
            return await self._local(404)
        if isinstance(resolved, Forbidden):
            log.info("id=%s static: %s", rec.id, resolved.reason)
            return await self._local(403)
        if isinstance(resolved, Redirect):
            cut = target.find(b"?")
            query = target[cut:] if cut >= 0 else b""
            location = (rules.strip_prefix or b"") + resolved.location + query
            return await self._local(301, headers=[(b"location", location)], body=b"")
        stream = self.stream
        with resolved as found:
            plan = plan_response(req.method, req.headers, found)
            status, headers = plan.status, plan.headers
            if rules.response_edits is not None:
                headers = apply_edits(headers, rules.response_edits, self._template_values())
            lrules = self.listener.rules
            if lrules is not None and lrules.hsts is not None:
                headers = with_hsts(headers, lrules.hsts)
            coder: ResponseCoder | None = None
            if rules.compress is not None:
                self.encoding = negotiate(accept_encoding(req.headers), rules.compress.encodings)
                headers, coder, rec.encoding = plan_compression(
                    rules.compress, self.encoding, req.method, req.headers, status, headers
                )
            rec.status = status
            if plan.count == 0:
                return await stream.send_whole(status, headers, b"", not stream.request_complete)
            await stream.send_response(status, headers)
            try:
                if coder is None:
                    await stream.send_file(found.fd, plan.offset, plan.count)
                else:
                    await _send_compressed(stream, coder, found.fd, plan.offset, plan.count)
                await stream.send_end([])
            except RevproxyError as exc:
                log.warning("id=%s static response aborted: %s", rec.id, exc)
                return False
        return stream.request_complete

    async def _response_head(
        self,
        ostream: OriginStream,
        upload: asyncio.Task[None] | None,
        pr: PoolRuntime,
        wait: float,
    ) -> ResponseReceived | InformationalReceived:
        """The origin's final response head (or its 101 to an upgrade), relaying other 1xx;
        a failed upload ends the wait, a finished one starts the response timer (``wait``)."""
        while True:
            if upload is not None and not upload.done():
                waiter = asyncio.ensure_future(ostream.next())
                try:
                    await asyncio.wait({waiter, upload}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    if not waiter.done():
                        waiter.cancel()
                        with contextlib.suppress(BaseException):
                            await waiter
                if upload.done():
                    if upload.exception() is not None:
                        raise _UploadFailed() from upload.exception()
                    ostream.deadline = asyncio.get_running_loop().time() + wait
                ev = waiter.result() if not waiter.cancelled() else await ostream.next()
            else:
                if upload is not None:
                    if upload.exception() is not None:
                        raise _UploadFailed() from upload.exception()
                    if ostream.deadline is None:
                        ostream.deadline = asyncio.get_running_loop().time() + wait
                ev = await ostream.next()
            if isinstance(ev, InformationalReceived):
                if ev.status == 101:
                    if ostream.upgrading:
                        return ev
                    continue  # a switch nobody asked for is not relayed
                headers = interim_headers(ev.headers, pr.hiding)
                await self.stream.send_informational(ev.status, headers)
                continue
            if isinstance(ev, ResponseReceived):
                return ev
            raise BackendProtocolError("origin sent no response head")

    async def _upload(self, ostream: OriginStream, idle: float, limit: int) -> None:
        stream = self.stream
        sent = 0
        # HTTP/1.1 on both sides: the client is read no further ahead than the origin's socket
        # takes (conn_io.py, pacing), so a fast upload to a slow origin waits in the kernels'
        # buffers, not in ours. (HTTP/2 clients: their stream's window, given back only as
        # each chunk is forwarded, bounds what they send.)
        client = self.sink if isinstance(self.sink, ConnIO) else None
        if client is not None and isinstance(ostream, H1Origin):
            client.follow(ostream.conn.io)
        else:
            client = None
        try:
            while True:
                try:
                    async with asyncio.timeout(idle):
                        ev = await stream.next_body_event()
                except TimeoutError:
                    if client is not None and client.waiting_for_sink:
                        raise BackendTimeout(
                            "origin did not read the request body in time"
                        ) from None
                    raise RequestTimeout("request body not received in time") from None
                if isinstance(ev, DataReceived):
                    sent += len(ev.data)
                    if limit and sent > limit:
                        raise BodyTooLarge("request body too large")
                    try:
                        async with asyncio.timeout(idle):
                            await ostream.send_data(ev.data)
                    except TimeoutError:
                        raise BackendTimeout(
                            "origin did not read the request body in time"
                        ) from None
                elif isinstance(ev, MessageEnded):
                    await ostream.send_end(ev.trailers)
                    return
                else:
                    raise ClientGone()
        finally:
            if client is not None:
                client.follow(None)

    def _check_switch(
        self, ostream: OriginStream, resp: ResponseReceived | InformationalReceived
    ) -> None:
        """RFC 6455 §4.1: a 101 switches only in answer to the WebSocket upgrade we sent, with
        the Sec-WebSocket-Accept that our key implies; any other 101 is the origin's error."""
        if not ostream.upgrading or self.ws_accept is None:
            self.rec.status = 502
            raise BackendProtocolError("origin switched protocols unasked")
        accept = next((v for n, v in resp.headers if n == b"sec-websocket-accept"), None)
        if accept is None or accept.strip() != self.ws_accept:
            self.rec.status = 502
            raise BackendProtocolError("origin's Sec-WebSocket-Accept does not match the key")

    async def _tunnel(
        self, ostream: OriginStream, resp: ResponseReceived | InformationalReceived, pr: PoolRuntime
    ) -> None:
        """The origin switched to WebSocket: switch the client too and relay bytes."""
        origin = ostream.take_over()
        if origin is None:
            raise BackendProtocolError("origin switched protocols on a stream that cannot")
        reader, writer, leftover = origin
        headers = response_headers(
            resp.headers, pr.hiding, scheme=self.scheme.encode(), host=self.req.authority
        )
        if self.req.http_version == b"2":
            # RFC 8441 §5: the HTTP/1.1 handshake fields mean nothing on an HTTP/2 stream.
            headers = [(n, v) for n, v in headers if n != b"sec-websocket-accept"]
        else:
            headers.extend(_UPGRADE_HEADERS)
        try:
            up, down = await self.stream.tunnel(
                headers, (reader, writer), leftover, pr.config.timeouts.tunnel
            )
        finally:
            with contextlib.suppress(Exception):
                writer.close()
        log.debug("id=%s tunnel closed up=%d down=%d", self.rec.id, up, down)

    # --- the edge policy -------------------------------------------------------------------

    def _policy_client(self, req: RequestReceived) -> str:
        """The address allow/deny lists and limits decide on (forwarding.policy_client)."""
        trusted = self.listener.config.trusted_proxies
        if not trusted:  # the common case: the connection's client, no header read
            return self.info.client[0]
        return policy_client(req.headers, self.info.client[0], trusted)

    def _listener_limits(self, limits: LimitSet, req: RequestReceived) -> _Action:
        """The listener's limits, counted per request before any route is chosen."""
        if not limits.local:
            return self._listener_limits_async(limits, req)
        refusal = limits.check(self.gen.counters, self._policy_client(req), req.headers)
        if refusal is not None:
            return self._limited(refusal)
        return self._route(req, normalise_host(req.authority))

    async def _listener_limits_async(self, limits: LimitSet, req: RequestReceived) -> bool:
        client = self._policy_client(req)
        refusal = await limits.check_async(self.gen.counters, client, req.headers)
        if refusal is not None:
            return await self._limited(refusal)
        action = self._route(req, normalise_host(req.authority))
        return await (self._proxy(action) if isinstance(action, PoolRuntime) else action)

    async def _limits_then(
        self, limits: LimitSet, route: Route, then: Callable[[Route], _Action]
    ) -> bool:
        """A route's limits with one kept in Redis (a round trip), then ``then``."""
        req = self.req
        refusal = await limits.check_async(
            self.gen.counters, self._policy_client(req), req.headers, self.rec.user, route.index
        )
        if refusal is not None:
            return await self._limited(refusal)
        action = then(route)
        return await (self._proxy(action) if isinstance(action, PoolRuntime) else action)

    def _limited(self, refusal: Refusal) -> Coroutine[Any, Any, bool]:
        """429 (or 503 when the limit's store failed and it denies), logged and counted."""
        reason = refusal.reason
        self.rec.refused = reason
        log.info("id=%s client=%s refused: %s", self.rec.id, self.info.client[0], reason)
        return self._local(refusal.status, headers=refusal.headers())

    def _permits(self, acl: AccessList, req: RequestReceived) -> bool:
        """``acl.permits`` for the request's client, remembered for the connection."""
        key = (acl, self._policy_client(req))
        permitted = self.permitted
        ok = permitted.get(key)
        if ok is None:
            if len(permitted) >= 16:  # other clients through a trusted proxy, or old lists
                permitted.clear()
            ok = permitted[key] = acl.permits(key[1])
        return ok

    def _refuse(self, reason: str) -> Coroutine[Any, Any, bool]:
        """A local 403 that names nothing of the origin, logged and counted with ``reason``."""
        self.rec.refused = reason
        log.info("id=%s client=%s refused: %s", self.rec.id, self.info.client[0], reason)
        return self._local(403)

    # --- local answers ---------------------------------------------------------------------

    async def _aborted(self, exc: BaseException) -> bool:
        """An exchange failed after forwarding began: answer if we still can, else hang up."""
        if isinstance(exc, ClientGone):
            raise exc
        err = exc if isinstance(exc, RevproxyError) else BackendProtocolError(str(exc))
        if self.stream.response_started:
            log.warning("id=%s response aborted: %s", self.rec.id, err)
            return False
        return await self._local_error(err)

    async def _local_error(self, exc: RevproxyError) -> bool:
        log.info("id=%s %s: %s", self.rec.id, type(exc).__name__, exc)
        if self.grpc and isinstance(exc, BackendError):
            if isinstance(exc, BackendTimeout) and self.deadline is not None:
                return await self._grpc_local(grpc.DEADLINE_EXCEEDED, "deadline exceeded")
            return await self._grpc_local(grpc.UNAVAILABLE, f"upstream unavailable ({exc.status})")
        close = isinstance(exc, ClientProtocolError) or not self.stream.request_complete
        return await self._local(exc.status, close=close)

    async def _grpc_local(self, status: int, message: str) -> bool:
        """A gRPC Trailers-Only answer: HTTP 200, ``grpc-status`` in the only header block."""
        stream = self.stream
        self.rec.status = 200
        if stream.response_started:
            return False
        headers = grpc.trailers_only(status, message)
        return await stream.send_whole(200, headers, b"", not stream.request_complete)

    def _template_values(self) -> dict[str, bytes]:
        """What ``{client_ip}``, ``{request_id}``, ``{host}`` and ``{user}`` stand for."""
        rec = self.rec
        return {
            "client_ip": self.info.client[0].encode(),
            "request_id": rec.id.encode(),
            "host": self.req.authority,
            "user": rec.user.encode("utf-8"),
        }

    def _error_page(self, status: int, lrules: ListenerRules | None) -> ErrorPage | None:
        """The configured page for a local error ``status``: the route's, else the listener's."""
        if status < 400:
            return None
        rules = self.rules
        if rules is not None and rules.error_pages:
            page = rules.error_pages.get(status)
            if page is not None:
                return page
        if lrules is not None and lrules.error_pages:
            return lrules.error_pages.get(status)
        return None

    async def _local(
        self,
        status: int,
        *,
        headers: Headers | None = None,
        body: bytes | None = None,
        close: bool = False,
    ) -> bool:
        stream = self.stream
        self.rec.status = status
        if stream.response_started:
            return False
        out: Headers = list(headers or [])
        lrules = self.listener.rules
        if body is None:
            page = self._error_page(status, lrules)
            if page is not None:
                body = page.body
                out.append((b"content-type", page.content_type.encode()))
            else:
                body = _error_body(status)
        if lrules is not None and lrules.hsts is not None:
            out.append((b"strict-transport-security", lrules.hsts))
        if not any(n == b"content-type" for n, _ in out) and body:
            out.append((b"content-type", b"text/plain; charset=utf-8"))
        out.append((b"content-length", str(len(body)).encode()))
        out.append((b"cache-control", b"no-store"))
        close = close or not stream.request_complete
        if self.req.method == b"HEAD":
            body = b""
        return await stream.send_whole(status, out, body, close)


# Pieces a compressed static file is read in.
_STATIC_PIECE = 64 * 1024


async def _send_compressed(
    stream: ClientStream, coder: ResponseCoder, fd: int, offset: int, count: int
) -> None:
    end = offset + count
    while offset < end:
        piece = os.pread(fd, min(_STATIC_PIECE, end - offset), offset)
        if not piece:
            raise BackendProtocolError("static file shrank while it was sent")
        offset += len(piece)
        data = await coder.data(piece)
        if data:
            await stream.send_data(data)
    tail = await coder.end()
    if tail:
        await stream.send_data(tail)


def _whole_body(events: deque[Event]) -> bytes | None:
    """The body, when ``events`` hold the rest of a response: data, then an end without
    trailers; else None."""
    if not events:
        return None
    last = events[-1]
    if type(last) is not MessageEnded or last.trailers:
        return None
    n = len(events)
    if n == 1:
        return b""
    first = events[0]
    if n == 2:
        return first.data if type(first) is DataReceived else None
    chunks = []
    for ev in itertools.islice(events, n - 1):
        if type(ev) is not DataReceived:
            return None
        chunks.append(ev.data)
    return b"".join(chunks)


def _overridden(timeouts: Timeouts, route: RouteTimeouts) -> Timeouts:
    """The pool's timeouts with those a route sets instead."""
    return dataclasses.replace(
        timeouts,
        response=route.response if route.response is not None else timeouts.response,
        idle=route.idle if route.idle is not None else timeouts.idle,
    )


def _with_user(headers: Headers, auth: Auth, user: str) -> Headers:
    """Toward the origin after ``auth`` passed: the credentials removed (unless
    ``pass_credentials``), the user named in ``user_header`` (a client's own removed)."""
    named = auth.user_header.encode() if auth.user_header else None
    strip = b"authorization" if not auth.pass_credentials else None
    if named is None:  # the common case: only the credentials go
        return headers if strip is None else [h for h in headers if h[0] != strip]
    i = len(headers)
    while i:  # in place: ``headers`` is the list request_headers just built
        i -= 1
        name = headers[i][0]
        if name in (strip, named):
            del headers[i]
    if named is not None:
        headers.append((named, user.encode("utf-8")))
    return headers


def _websocket_key() -> bytes:
    """RFC 6455 §4.1: "a nonce consisting of a randomly selected 16-byte value" in base64."""
    return base64.b64encode(os.urandom(16))


# RFC 6455 §1.3: the GUID the server appends to the key before hashing it.
_WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _websocket_accept(headers: Headers) -> bytes | None:
    """The Sec-WebSocket-Accept an origin must answer the request's key with (§4.2.2)."""
    key = next((v for n, v in headers if n == b"sec-websocket-key"), None)
    if key is None:
        return None
    return base64.b64encode(hashlib.sha1(key.strip() + _WEBSOCKET_GUID).digest())


def _error_body(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"{status} {phrase}\n".encode()


def error_body(status: int) -> bytes:
    """The body of a locally generated error page: "404 Not Found"."""
    return _error_body(status)


async def _raise(exc: BaseException) -> bool:
    """An error met while deciding, raised where the answer is awaited (so the record is
    written as for any failed exchange)."""
    raise exc
