"""The L7 pipeline for one client connection (HTTP/1.1).

Rule of this room: this is the one place that turns errors into responses. A request is
parsed, routed, then either answered locally (404, redirect, fixed response, 4xx for bad
input) or forwarded to a server of its pool. Bodies stream both ways with backpressure; a
request that was not fully read or forwarded ends the client connection. Every wait has a
timeout; every backend connection is released or closed in ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus

from revproxy.accesslog import AccessRecord
from revproxy.acme import challenge_answer
from revproxy.dial import READ_SIZE, BackendConnection
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
from revproxy.generation import Generation, ListenerRuntime, PoolRuntime
from revproxy.pool import PickContext
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
from revproxy.proto.forwarding import (
    ClientIdentity,
    interim_headers,
    request_headers,
    response_headers,
)
from revproxy.proto.http1 import H1Client, H1Server
from revproxy.proto.proxy_protocol import ProxyHeader, build_v1, build_v2
from revproxy.routing import normalise_host

log = logging.getLogger("revproxy.http")

_ids = itertools.count(1)
_ID_PREFIX = os.urandom(3).hex()


class ClientGone(Exception):
    """The client closed or reset its connection; nothing can be sent to it any more."""


class _Source:
    """Events from one side of an exchange: bytes read from a stream, fed to a parser."""

    __slots__ = ("bytes_read", "eof", "events", "parse", "reader")

    def __init__(self, reader: asyncio.StreamReader, parse: Callable[[bytes], list[Event]]) -> None:
        self.reader = reader
        self.parse = parse
        self.events: deque[Event] = deque()
        self.bytes_read = 0
        self.eof = False

    async def next(self) -> Event:
        while not self.events:
            if self.eof:
                raise ConnectionResetError("peer closed the connection")
            data = await self.reader.read(READ_SIZE)
            if not data:
                self.eof = True
            self.bytes_read += len(data)
            self.events.extend(self.parse(data))
        return self.events.popleft()


@dataclass(slots=True, kw_only=True)
class ConnInfo:
    """Facts about a client connection, established once when it is accepted."""

    peer: tuple[str, int]  # TCP peer
    client: tuple[str, int]  # the client (PROXY header from a trusted peer, else the peer)
    local: tuple[str, int]  # our socket's address
    destination: tuple[str, int]  # what the client connected to (PROXY header, else local)
    local_port: int
    tls: bool
    sni: str | None = None
    alpn: str = ""
    proxy: ProxyHeader | None = None
    authority: str = ""  # PROXY v2 AUTHORITY TLV
    vpce: str = ""  # PROXY v2 AWS VPC endpoint id


def _body_expected(headers: Headers) -> int:
    """-1 for chunked, else the Content-Length (0 when absent)."""
    for name, value in headers:
        if name == b"transfer-encoding":
            return -1
        if name == b"content-length":
            return int(value)
    return 0


class HttpConnection:
    """Serves one HTTP/1.1 client connection until it closes."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        generation: Generation,
        listener: ListenerRuntime,
        info: ConnInfo,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.gen = generation
        self.listener = listener
        self.info = info
        g = generation.config.global_
        self.h1 = H1Server(max_header_size=g.max_header_size)
        self.client = _Source(reader, self.h1.receive_data)
        self.scheme = "https" if info.tls else "http"
        self.bytes_out = 0
        self._accounted_in = 0  # client bytes already counted in an access-log record

    # --- connection loop ----------------------------------------------------------------

    async def run(self) -> None:
        g = self.gen.config.global_
        wait = g.header_timeout  # a new connection must send its first request promptly
        try:
            while True:
                req = await self._next_request(wait, g.header_timeout)
                if req is None:
                    return
                keep = await self._exchange(req)
                if not keep or not self.h1.keep_alive:
                    return
                self.client.events.extend(self.h1.start_next_cycle())
                wait = g.keepalive_timeout
        except ClientGone:
            return
        except (ConnectionError, OSError):
            return
        finally:
            await self._close()

    async def _close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await self.writer.wait_closed()

    async def _next_request(self, idle: float, head_timeout: float) -> RequestReceived | None:
        """The next request head, or None when the client is done (closed or idle)."""
        loop = asyncio.get_running_loop()
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
                    async with asyncio.timeout_at(deadline):
                        data = await self.reader.read(READ_SIZE)
                    if not data:
                        self.client.eof = True
                    self.client.bytes_read += len(data)
                    self.client.events.extend(self.h1.receive_data(data))
            except TimeoutError:
                if self.h1.has_partial_head:
                    await self._fail(RequestTimeout("request head not received in time"), None)
                return None
            except ClientProtocolError as exc:
                await self._fail(exc, None)
                return None
            ev = self.client.events.popleft()
            if isinstance(ev, RequestReceived):
                return ev
            if isinstance(ev, ConnectionClosed):
                return None

    # --- one exchange -------------------------------------------------------------------

    async def _exchange(self, req: RequestReceived) -> bool:
        if self.gen.retired:
            self._follow_reload()
        started = time.monotonic()
        rid = f"{_ID_PREFIX}{next(_ids):x}"
        rec = AccessRecord(
            id=rid,
            client=self.info.client[0],
            peer=self.info.peer[0],
            listener=self.listener.config.name,
            sni=self.info.sni or "",
            host=req.authority.decode("latin-1"),
            method=req.method.decode("latin-1"),
            path=req.target.decode("latin-1"),
            status=0,
            bytes_in=0,
            bytes_out=self.bytes_out,
            route="",
            pool="",
            backend="-",
            duration_ms=0.0,
            upstream_ms=0.0,
            authority=self.info.authority,
            vpce=self.info.vpce,
        )
        try:
            return await self._route(req, rec)
        finally:
            rec.duration_ms = (time.monotonic() - started) * 1000
            rec.bytes_in = self.client.bytes_read - self._accounted_in
            self._accounted_in = self.client.bytes_read
            rec.bytes_out = self.bytes_out - rec.bytes_out
            self.gen.access_log.record(rec)
            self.gen.metrics.record(rec)

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

    async def _route(self, req: RequestReceived, rec: AccessRecord) -> bool:
        host = normalise_host(req.authority)
        lst = self.listener
        try:
            self._check_authority(host)
        except MisdirectedRequest as exc:
            return await self._local_error(exc, req, rec)
        if req.method == b"CONNECT":
            return await self._local(req, rec, 405, close=True)
        if lst.acme:  # ACME HTTP-01 challenges come before any redirect or route
            answer = await challenge_answer(self.gen.config.acme, req.method, req.target, host)
            if answer is not None:
                rec.route = "acme"
                return await self._local(
                    req, rec, answer.status, headers=list(answer.headers), body=answer.body
                )
        if lst.config.redirect_https:
            port = lst.redirect_port
            authority = host if ":" not in host else f"[{host}]"
            if port and port != 443:
                authority += f":{port}"
            location = f"https://{authority}".encode() + req.target
            return await self._local(req, rec, 308, headers=[(b"location", location)], body=b"")
        path = req.target.split(b"?", 1)[0].decode("latin-1")
        route = lst.router.match(host, path)
        if route is None:
            return await self._local(req, rec, 404)
        rec.route = str(route.index)
        if route.redirect is not None:
            return await self._local(
                req,
                rec,
                route.redirect_status,
                headers=[(b"location", route.redirect.encode())],
                body=b"",
            )
        if route.respond is not None:
            r = route.respond
            return await self._local(
                req,
                rec,
                r.status,
                body=r.body.encode(),
                headers=[(b"content-type", r.content_type.encode())],
            )
        assert route.pool is not None
        rec.pool = route.pool
        return await self._proxy(req, rec, self.gen.pools[route.pool])

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

    # --- forwarding ---------------------------------------------------------------------

    async def _proxy(self, req: RequestReceived, rec: AccessRecord, pr: PoolRuntime) -> bool:
        g = self.gen.config.global_
        expected = _body_expected(req.headers)
        if g.max_body_size and expected > g.max_body_size:
            return await self._local_error(BodyTooLarge("request body too large"), req, rec)
        client_id = ClientIdentity(
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
        )
        if expected == -1:
            # Transfer-Encoding is hop-by-hop and was removed above, but a chunked body is
            # still relayed chunked: without this the origin would read no body at all.
            headers.append((b"transfer-encoding", b"chunked"))
        ctx = PickContext(client_ip=self.info.client[0], uri=req.target.decode("latin-1"))
        identity = proxy_header_for(pr.config.send_proxy, self.info)
        fresh = False
        while True:
            try:
                conn = await pr.dialer.connect(ctx, fresh=fresh, identity=identity)
            except BackendError as exc:
                return await self._local_error(exc, req, rec)
            rec.backend = conn.backend.label
            conn.backend.acquire()
            t0 = time.monotonic()
            try:
                return await self._forward(req, rec, headers, conn, pr, expected)
            except _StaleConnection:
                fresh = True  # the origin closed a pooled connection; nothing was lost
                continue
            finally:
                conn.backend.release()
                rec.upstream_ms = (time.monotonic() - t0) * 1000

    async def _forward(
        self,
        req: RequestReceived,
        rec: AccessRecord,
        headers: Headers,
        conn: BackendConnection,
        pr: PoolRuntime,
        expected: int,
    ) -> bool:
        g = self.gen.config.global_
        timeouts = pr.config.timeouts
        b1 = H1Client(max_header_size=g.max_header_size)
        backend = _Source(conn.reader, b1.receive_data)
        conn.writer.write(b1.send_request(req.method, req.target, headers))
        upload: asyncio.Task[None] | None = None
        reusable = False
        # A pooled connection the origin had closed is retried on a fresh one, but only for a
        # request that is whole in hand and idempotent: the origin may have acted on it.
        retry_ok = conn.reused and req.method in _IDEMPOTENT
        try:
            if self.client.events and isinstance(self.client.events[0], MessageEnded):
                ev = self.client.events.popleft()
                assert isinstance(ev, MessageEnded)
                conn.writer.write(b1.send_end(ev.trailers))
            else:
                retry_ok = False
                upload = asyncio.get_running_loop().create_task(
                    self._upload(b1, conn, timeouts.idle, g.max_body_size)
                )
            try:
                await self._relay_response(req, rec, b1, backend, pr, upload)
            except BaseException:
                if upload is not None and not upload.done():
                    upload.cancel()
                raise
            if upload is not None:
                if not upload.done():
                    # The origin answered before the request body was complete: the rest
                    # of that body can't be read, so neither connection carries another.
                    upload.cancel()
                    with contextlib.suppress(BaseException):
                        await upload
                    return False
                upload.result()
            reusable = b1.reusable
            return True
        except _UploadFailed as exc:
            # The client's body broke off or was malformed.
            return await self._aborted(exc.__cause__ or exc, req, rec)
        except ClientGone:
            raise
        except TimeoutError:
            # Before the OSError clause: TimeoutError is an OSError since Python 3.3.
            return await self._aborted(BackendTimeout("origin did not answer in time"), req, rec)
        except (ConnectionError, OSError) as exc:
            if self.h1.response_started:
                raise ClientGone() from exc
            if backend.bytes_read == 0 and retry_ok:
                raise _StaleConnection() from exc
            return await self._local_error(
                BackendProtocolError("origin closed the connection"), req, rec
            )
        except RevproxyError as exc:
            if isinstance(exc, BackendProtocolError) and backend.bytes_read == 0 and retry_ok:
                raise _StaleConnection() from exc
            return await self._aborted(exc, req, rec)
        finally:
            pr.dialer.release(conn, reusable)

    async def _relay_response(
        self,
        req: RequestReceived,
        rec: AccessRecord,
        b1: H1Client,
        backend: _Source,
        pr: PoolRuntime,
        upload: asyncio.Task[None] | None,
    ) -> None:
        timeouts = pr.config.timeouts
        async with asyncio.timeout(timeouts.response):
            resp = await self._response_head(backend, upload, pr)
        rec.status = resp.status
        out_headers = response_headers(
            resp.headers,
            pr.hiding,
            scheme=self.scheme.encode(),
            host=req.authority,
        )
        # The origin's reason phrase is not relayed: it is free text that may name it.
        await self._send(self.h1.send_response(resp.status, out_headers))
        idle = timeouts.idle
        while True:
            async with asyncio.timeout(idle):
                ev = await backend.next()
            if isinstance(ev, DataReceived):
                await self._send(self.h1.send_data(ev.data))
            elif isinstance(ev, MessageEnded):
                await self._send(self.h1.send_end(interim_headers(ev.trailers, pr.hiding)))
                return
            else:
                raise BackendProtocolError("origin closed inside the response body")

    async def _response_head(
        self, backend: _Source, upload: asyncio.Task[None] | None, pr: PoolRuntime
    ) -> ResponseReceived:
        """The origin's final response head, relaying 1xx; a failed upload ends the wait."""
        while True:
            if upload is not None and not upload.done():
                waiter = asyncio.ensure_future(backend.next())
                try:
                    await asyncio.wait({waiter, upload}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    if not waiter.done():
                        waiter.cancel()
                        with contextlib.suppress(BaseException):
                            await waiter
                if upload.done() and upload.exception() is not None:
                    raise _UploadFailed() from upload.exception()
                ev = waiter.result() if not waiter.cancelled() else await backend.next()
            else:
                if upload is not None and upload.exception() is not None:
                    raise _UploadFailed() from upload.exception()
                ev = await backend.next()
            if isinstance(ev, InformationalReceived):
                if ev.status != 101:
                    headers = interim_headers(ev.headers, pr.hiding)
                    await self._send(self.h1.send_informational(ev.status, headers))
                continue
            if isinstance(ev, ResponseReceived):
                return ev
            raise BackendProtocolError("origin sent no response head")

    async def _upload(self, b1: H1Client, conn: BackendConnection, idle: float, limit: int) -> None:
        sent = 0
        while True:
            try:
                async with asyncio.timeout(idle):
                    ev = await self.client.next()
            except TimeoutError:
                raise RequestTimeout("request body not received in time") from None
            if isinstance(ev, DataReceived):
                sent += len(ev.data)
                if limit and sent > limit:
                    raise BodyTooLarge("request body too large")
                conn.writer.write(b1.send_data(ev.data))
                await conn.writer.drain()
            elif isinstance(ev, MessageEnded):
                conn.writer.write(b1.send_end(ev.trailers))
                await conn.writer.drain()
                return
            else:
                raise ClientGone()

    # --- local answers ------------------------------------------------------------------

    async def _send(self, data: bytes) -> None:
        if not data:
            return
        self.bytes_out += len(data)
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, OSError) as exc:
            raise ClientGone() from exc

    async def _aborted(self, exc: BaseException, req: RequestReceived, rec: AccessRecord) -> bool:
        """An exchange failed after forwarding began: answer if we still can, else hang up."""
        if isinstance(exc, ClientGone):
            raise exc
        err = exc if isinstance(exc, RevproxyError) else BackendProtocolError(str(exc))
        if self.h1.response_started:
            log.warning("id=%s response aborted: %s", rec.id, err)
            return False
        return await self._local_error(err, req, rec)

    async def _local_error(
        self, exc: RevproxyError, req: RequestReceived | None, rec: AccessRecord | None
    ) -> bool:
        if rec is not None:
            log.info("id=%s %s: %s", rec.id, type(exc).__name__, exc)
        close = isinstance(exc, ClientProtocolError) or not self.h1.request_complete
        if req is None or rec is None:
            await self._fail(exc, None)
            return False
        return await self._local(req, rec, exc.status, close=close)

    async def _fail(self, exc: RevproxyError, _req: None) -> None:
        """Answer a request whose head could not be parsed, then the connection closes.

        It is still a request the client sent, so it gets its access-log line (method and
        path "-": they could not be read)."""
        rid = f"{_ID_PREFIX}{next(_ids):x}"
        log.info(
            "id=%s client=%s listener=%s %s: %s",
            rid,
            self.info.client[0],
            self.listener.config.name,
            type(exc).__name__,
            exc,
        )
        status = exc.status
        body = _error_body(status)
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
            bytes_in=self.client.bytes_read - self._accounted_in,
            bytes_out=self.bytes_out - sent,
            route="",
            pool="",
            backend="-",
            duration_ms=0.0,
            upstream_ms=0.0,
            authority=self.info.authority,
            vpce=self.info.vpce,
        )
        self._accounted_in = self.client.bytes_read
        self.gen.access_log.record(rec)
        self.gen.metrics.record(rec)

    async def _local(
        self,
        req: RequestReceived,
        rec: AccessRecord,
        status: int,
        *,
        headers: Headers | None = None,
        body: bytes | None = None,
        close: bool = False,
    ) -> bool:
        rec.status = status
        if self.h1.response_started:
            return False
        if body is None:
            body = _error_body(status)
        out: Headers = list(headers or [])
        if not any(n == b"content-type" for n, _ in out) and body:
            out.append((b"content-type", b"text/plain; charset=utf-8"))
        out.append((b"content-length", str(len(body)).encode()))
        out.append((b"cache-control", b"no-store"))
        close = close or not self.h1.request_complete
        if close:
            out.append((b"connection", b"close"))
        try:
            data = self.h1.send_response(status, out)
            if req.method != b"HEAD" and body:
                data += self.h1.send_data(body)
            data += self.h1.send_end()
        except RevproxyError:
            return False
        await self._send(data)
        return not close


def proxy_header_for(version: str | None, info: ConnInfo) -> bytes | None:
    """The PROXY header a backend connection for this client starts with, if its pool wants one."""
    if version == "v1":
        return build_v1(info.client, info.destination)
    if version == "v2":
        # What is known of the client's connection: our own TLS handshake, else the TLVs of
        # the PROXY header a trusted load balancer sent with it.
        upstream = info.proxy
        alpn = info.alpn.encode() if info.alpn else (upstream.alpn if upstream else None)
        return build_v2(
            info.client,
            info.destination,
            alpn=alpn,
            authority=info.sni or info.authority or None,
        )
    return None


# RFC 9110 §9.2.2: "A proxy MUST NOT automatically retry non-idempotent requests."
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


class _StaleConnection(Exception):
    """A reused keep-alive connection turned out closed before any response byte."""


class _UploadFailed(Exception):
    """The request body could not be relayed; the cause says why."""


def _error_body(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"{status} {phrase}\n".encode()


def _raw_head(status: int, length: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {length}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n"
    ).encode()
