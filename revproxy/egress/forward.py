"""``mode = "forward"``: HTTP forward proxy (absolute-form) and CONNECT, on the raw socket.

Rule of this room: a request is judged before a byte goes anywhere — the target it names
(proto/forward_proxy.py), the user its ``Proxy-Authorization`` proves (407 with
``Proxy-Authenticate`` otherwise), the destination by name and port, then by every resolved
address (egress/dial.py) — and a refusal is a local answer (400, 403, 407, 502, 504) with one
log line. An allowed CONNECT is answered ``200`` and both sockets go to the splice relay
(net/relay.py: zero copy, half-close honoured, ``timeouts.idle``); bytes the client sent past
the CONNECT head go to the destination first. An allowed absolute-form request is relayed as
origin-form with hop-by-hop and identifying headers removed and nothing added; the connection
to a destination is kept for the next request to the same one (keep-alive both sides).

Heads are read here up to ``global.max_header_size`` within ``global.header_timeout`` (431,
408); what a head means is decided by the HTTP/1.1 parser the generation chose
(proto/http1), one parser per request so that each request line is seen raw first.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from typing import TYPE_CHECKING

from revproxy.egress.dial import Connected, Refused
from revproxy.errors import (
    BackendError,
    ClientProtocolError,
    HeaderTooLarge,
    RevproxyError,
)
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
    ProxyTarget,
    destination_headers,
    proxy_target,
    request_line,
    response_headers,
)
from revproxy.proto.http1.api import H1ClientAPI, H1ServerAPI

if TYPE_CHECKING:
    from revproxy.egress.service import ClientConn, EgressService

__all__ = ["serve_forward"]

# Bytes read from a socket at once.
READ_SIZE = 256 * 1024
# Access-log status of a tunnel that ended (as edge/tcp.py's table for L4 connections).
_END_STATUS = {
    RelayEnd.CLOSED: 200,
    RelayEnd.IDLE: 504,
    RelayEnd.A_FAILED: 499,
    RelayEnd.B_FAILED: 502,
}


class _Closed(Exception):
    """The client went away or was too slow: stop serving the connection."""


async def _recv(sock: socket.socket, timeout: float) -> bytes:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            return await loop.sock_recv(sock, READ_SIZE)
    except ConnectionError:
        return b""


async def _send(sock: socket.socket, data: bytes) -> None:
    if data:
        await asyncio.get_running_loop().sock_sendall(sock, data)


async def _read_head(sock: socket.socket, buf: bytearray, max_size: int, timeout: float) -> int:
    """The length of the request head at the start of ``buf`` (reading more as needed);
    -1 when the client closed before sending one. Raises HeaderTooLarge, TimeoutError."""
    async with asyncio.timeout(timeout):
        while True:
            while buf.startswith(b"\r\n"):
                del buf[:2]
            end = buf.find(b"\r\n\r\n")
            if end != -1:
                if end + 4 > max_size:
                    raise HeaderTooLarge("request head too large")
                return end + 4
            if len(buf) > max_size:
                raise HeaderTooLarge("request head too large")
            chunk = await asyncio.get_running_loop().sock_recv(sock, READ_SIZE)
            if not chunk:
                if buf:
                    raise ClientProtocolError("connection closed inside a request head")
                return -1
            buf += chunk


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


class _Origin:
    """A kept connection to one destination and its response parser."""

    def __init__(self, key: tuple[str, int], connected: Connected, parser: H1ClientAPI) -> None:
        self.key = key
        self.sock = connected.sock
        self.resolved = connected.resolved
        self.parser = parser

    def close(self) -> None:
        self.sock.close()


async def serve_forward(svc: EgressService, csock: socket.socket, conn: ClientConn) -> None:
    """Serve one client connection of a forward listener to its end."""
    buf = bytearray()
    origin: _Origin | None = None
    first = True
    g = svc.global_
    try:
        while True:
            timeout = g.header_timeout if first else g.keepalive_timeout + g.header_timeout
            first = False
            try:
                head_len = await _read_head(csock, buf, g.max_header_size, timeout)
            except (ClientProtocolError, TimeoutError) as exc:
                status = exc.status if isinstance(exc, ClientProtocolError) else 408
                if buf:
                    with contextlib.suppress(OSError):
                        await _send(csock, _local_answer(None, status, str(exc) or "timeout"))
                return
            if head_len < 0:
                return
            keep, origin = await _exchange(svc, csock, conn, buf, head_len, origin)
            if not keep:
                return
    except (OSError, _Closed):
        return
    finally:
        if origin is not None:
            origin.close()


async def _exchange(
    svc: EgressService,
    csock: socket.socket,
    conn: ClientConn,
    buf: bytearray,
    head_len: int,
    origin: _Origin | None,
) -> tuple[bool, _Origin | None]:
    """One request: judge it, answer or relay it. (keep the client connection?, the kept
    destination connection). ``buf`` holds what was read past this request afterwards."""
    started = time.monotonic()
    rec = svc.record(conn, "-")
    server = svc.h1_server(max_header_size=svc.global_.max_header_size)
    try:
        method, target = request_line(bytes(buf[:head_len]))
        rec.method = method.decode("latin-1")
        rec.path = target.decode("latin-1")
        dest = proxy_target(method, target)
        rec.host = dest.host
        rec.destination = _shown(dest.host, dest.port)
        if dest.tunnel:  # the bytes past a CONNECT head are the tunnel's, not HTTP
            events = server.receive_data(bytes(buf[:head_len]))
            del buf[:head_len]
        else:
            events = server.receive_data(bytes(buf))
            buf.clear()
            rec.path = dest.path.decode("latin-1")
        rec.bytes_in = head_len
        request = next((e for e in events if isinstance(e, RequestReceived)), None)
        if request is None:
            raise ClientProtocolError("incomplete request head")
    except ClientProtocolError as exc:
        rec.status = exc.status
        svc.refused(rec, "bad-request", str(exc))
        with contextlib.suppress(OSError):
            await _send(csock, _local_answer(None, exc.status, str(exc)))
        _finish(svc, conn, rec, started)
        return False, origin

    # Who: Proxy-Authorization (RFC 9110 §11.7.2), 407 and Proxy-Authenticate otherwise.
    user, challenge = await svc.authenticate(request.headers, method, target, dest.path)
    if user is None:
        rec.status = 407
        svc.refused(rec, AUTH)
        ended = any(isinstance(e, MessageEnded) for e in events)
        await _send(
            csock,
            _local_answer(
                server,
                407,
                "proxy authentication required",
                [(b"proxy-authenticate", challenge)],
                close=not ended,
            ),
        )
        _finish(svc, conn, rec, started)
        return _next_cycle(server, buf, ended), origin
    rec.user = user

    # Where: by name and port, then every resolved address.
    reason = svc.policy.check_request(dest.host, dest.port, tunnel=dest.tunnel)
    connected: Connected | Refused | None = None
    key = (dest.host, dest.port)
    if not reason and not dest.tunnel and origin is not None and origin.key == key:
        connected = None  # the kept connection serves it
    elif not reason:
        if origin is not None:
            origin.close()
            origin = None
        connected = await svc.outbound.open(dest.host, dest.port)
        if isinstance(connected, Refused):
            reason = connected.reason
            rec.resolved = connected.resolved
    if reason:
        status = connected.status if isinstance(connected, Refused) else 403
        detail = connected.detail if isinstance(connected, Refused) else ""
        rec.status = status
        svc.refused(rec, reason, detail)
        ended = any(isinstance(e, MessageEnded) for e in events)
        text = "destination not allowed"
        if status != 403:
            text = f"cannot reach destination ({reason})"
        await _send(csock, _local_answer(server, status, text, close=not ended))
        _finish(svc, conn, rec, started)
        return _next_cycle(server, buf, ended), origin
    rec.upstream_ms = (time.monotonic() - started) * 1000

    if dest.tunnel:
        assert isinstance(connected, Connected)
        await _tunnel(svc, csock, connected, bytes(buf), rec)
        _finish(svc, conn, rec, started)
        return False, origin

    if isinstance(connected, Connected):
        origin = _Origin(key, connected, svc.h1_client(max_header_size=svc.global_.max_header_size))
    assert origin is not None
    rec.resolved = origin.resolved
    rec.backend = origin.resolved
    keep_origin = False
    try:
        keep_origin = await _relay_request(svc, csock, server, request, events, dest, origin, rec)
    finally:
        _finish(svc, conn, rec, started)
        if not keep_origin:
            origin.close()
            origin = None
    return _next_cycle(server, buf, True), origin


def _next_cycle(server: H1ServerAPI, buf: bytearray, ended: bool) -> bool:
    """Whether the client connection carries another request; its bytes go to ``buf``."""
    if not ended or not server.keep_alive:
        return False
    buf[:0] = server.trailing_data
    return True


def _finish(svc: EgressService, conn: ClientConn, rec: AccessRecord, started: float) -> None:
    rec.duration_ms = (time.monotonic() - started) * 1000
    svc.finish(conn, rec, request=rec.method not in ("CONNECT", "-"))


def _shown(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _tunnel(
    svc: EgressService, csock: socket.socket, connected: Connected, early: bytes, rec: AccessRecord
) -> None:
    dsock = connected.sock
    rec.resolved = connected.resolved
    rec.backend = connected.resolved
    relay: SocketRelay | None = None
    try:
        await _send(csock, b"HTTP/1.1 200 Connection established\r\n\r\n")
        if early:
            await _send(dsock, early)
        relay = SocketRelay(csock, dsock, idle_timeout=svc.idle_timeout)
        result = await relay.run()
        rec.status = _END_STATUS[result.end]
    except OSError:
        rec.status = 499
    finally:
        if relay is not None:
            rec.bytes_in += relay.a_to_b + len(early)
            rec.bytes_out = relay.b_to_a
        dsock.close()


async def _relay_request(
    svc: EgressService,
    csock: socket.socket,
    server: H1ServerAPI,
    request: RequestReceived,
    events: list[Event],
    dest: ProxyTarget,
    origin: _Origin,
    rec: AccessRecord,
) -> bool:
    """Send the request and its body to the destination, its response back; whether the
    destination connection may carry another request."""
    idle = svc.idle_timeout
    parser = origin.parser
    headers = destination_headers(request.headers)
    try:
        await _send(origin.sock, parser.send_request(request.method, dest.path, headers))
        ended = False
        pending = events[events.index(request) + 1 :]
        while not ended:
            for ev in pending:
                if isinstance(ev, DataReceived):
                    await _send(origin.sock, parser.send_data(ev.data))
                elif isinstance(ev, MessageEnded):
                    await _send(origin.sock, parser.send_end(ev.trailers or None))
                    ended = True
                elif isinstance(ev, ConnectionClosed):
                    raise _Closed
            if ended:
                break
            data = await _recv(csock, idle)
            rec.bytes_in += len(data)
            pending = server.receive_data(data)
    except ClientProtocolError as exc:
        rec.status = exc.status
        with contextlib.suppress(OSError):
            await _send(csock, _local_answer(None, exc.status, str(exc)))
        return False
    except (OSError, TimeoutError) as exc:
        if isinstance(exc, TimeoutError):
            rec.status = 408
            return False
        rec.status = 502
        with contextlib.suppress(OSError):
            await _send(csock, _local_answer(server, 502, "destination failed", close=True))
        return False
    return await _relay_response(svc, csock, server, origin, rec)


async def _relay_response(
    svc: EgressService,
    csock: socket.socket,
    server: H1ServerAPI,
    origin: _Origin,
    rec: AccessRecord,
) -> bool:
    parser = origin.parser
    started = False
    try:
        while True:
            data = await _recv(origin.sock, svc.idle_timeout)
            for ev in parser.receive_data(data):
                if isinstance(ev, InformationalReceived):
                    out = server.send_informational(ev.status, response_headers(ev.headers))
                elif isinstance(ev, ResponseReceived):
                    started = True
                    rec.status = ev.status
                    out = server.send_response(ev.status, response_headers(ev.headers), ev.reason)
                elif isinstance(ev, DataReceived):
                    out = server.send_data(ev.data)
                elif isinstance(ev, MessageEnded):
                    out = server.send_end(ev.trailers or None)
                    rec.bytes_out += len(out)
                    await _send(csock, out)
                    if parser.reusable:
                        parser.start_next_cycle()
                        return True
                    return False
                else:
                    continue
                rec.bytes_out += len(out)
                await _send(csock, out)
            if not data:
                raise BackendError("destination closed the connection before its response")
    except (BackendError, TimeoutError) as exc:
        if started:
            raise _Closed from None
        status = 504 if isinstance(exc, TimeoutError) else 502
        rec.status = status
        with contextlib.suppress(OSError):
            await _send(csock, _local_answer(server, status, "destination failed", close=True))
        raise _Closed from None
