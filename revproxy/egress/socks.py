"""``mode = "socks5"``: RFC 1928 CONNECT with RFC 1929 username/password, on the raw socket.

Rule of this room: the protocol is proto/socks5.py's table; this shell only moves its bytes,
checks the user (the listener's ``auth``, as Basic credentials), judges the destination
(by name or address and port — a tunnel, so ``connect_ports`` applies — then every resolved
address: a domain name, ``socks5h``, is resolved here, on the proxy), connects and hands both
sockets to the splice relay. Refusals are SOCKS5 replies: 0x02 (not allowed by the rules),
0x04 (host unreachable: no such name, or a timeout), 0x05 (connection refused), 0x07 (BIND
and UDP ASSOCIATE are not offered). The whole negotiation is bounded by
``global.header_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from typing import TYPE_CHECKING

from revproxy.egress.dial import Connected, Refused
from revproxy.egress.forward import _END_STATUS, READ_SIZE
from revproxy.net.relay import SocketRelay
from revproxy.ops.accesslog import AccessRecord
from revproxy.policy.auth import AUTH
from revproxy.proto.socks5 import AuthRequested, ConnectRequested, Reply, Socks5Error, Socks5Server

if TYPE_CHECKING:
    from revproxy.egress.service import ClientConn, EgressService

__all__ = ["serve_socks5"]

METHOD = "SOCKS5"


def _shown(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _negotiate(
    svc: EgressService, csock: socket.socket, proto: Socks5Server, rec: AccessRecord
) -> ConnectRequested | None:
    """Read until the client asked for a destination (authenticated when required)."""
    loop = asyncio.get_running_loop()
    while True:
        data = await loop.sock_recv(csock, READ_SIZE)
        if not data:
            return None
        events = proto.receive_data(data)
        while events:
            event = events.pop(0)
            if isinstance(event, AuthRequested):
                ok = await svc.check_password(event.user, event.password)
                events = proto.accept_auth(ok)
                await loop.sock_sendall(csock, proto.data_to_send())
                if not ok:
                    rec.status = 407
                    svc.refused(rec, AUTH)
                    return None
                rec.user = event.user
            else:
                await loop.sock_sendall(csock, proto.data_to_send())
                return event
        out = proto.data_to_send()
        if out:
            await loop.sock_sendall(csock, out)


async def serve_socks5(svc: EgressService, csock: socket.socket, conn: ClientConn) -> None:
    """Serve one client connection of a socks5 listener to its end."""
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    rec = svc.record(conn, METHOD)
    proto = Socks5Server(require_auth=svc.authenticator is not None)
    request: ConnectRequested | None = None
    try:
        try:
            async with asyncio.timeout(svc.global_.header_timeout):
                request = await _negotiate(svc, csock, proto, rec)
        except Socks5Error as exc:
            rec.status = 400
            svc.refused(rec, "bad-request", str(exc))
            with contextlib.suppress(OSError):
                await loop.sock_sendall(csock, exc.reply)
            return
        except (TimeoutError, OSError):
            return
        if request is None:
            return
        rec.host = request.host
        rec.destination = _shown(request.host, request.port)
        reason = svc.policy.check_request(request.host, request.port, tunnel=True)
        result: Connected | Refused = Refused(reason, 403, Reply.NOT_ALLOWED)
        if not reason:
            result = await svc.outbound.open(request.host, request.port)
        if isinstance(result, Refused):
            rec.status = result.status
            rec.resolved = result.resolved
            svc.refused(rec, result.reason, result.detail)
            proto.reply(result.reply)
            with contextlib.suppress(OSError):
                await loop.sock_sendall(csock, proto.data_to_send())
            return
        rec.upstream_ms = (time.monotonic() - started) * 1000
        await _tunnel(svc, conn, csock, proto, result, rec)
    finally:
        rec.duration_ms = (time.monotonic() - started) * 1000
        if rec.status or rec.destination:
            svc.finish(conn, rec, request=False)


async def _tunnel(
    svc: EgressService,
    conn: ClientConn,
    csock: socket.socket,
    proto: Socks5Server,
    connected: Connected,
    rec: AccessRecord,
) -> None:
    loop = asyncio.get_running_loop()
    dsock = connected.sock
    rec.resolved = connected.resolved
    rec.backend = connected.resolved
    relay: SocketRelay | None = None
    early = b""
    try:
        proto.reply(Reply.SUCCEEDED, connected.local)
        early = proto.trailing_data
        await loop.sock_sendall(csock, proto.data_to_send())
        if early:
            await loop.sock_sendall(dsock, early)
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
            rec.bytes_in = relay.a_to_b + len(early)
            rec.bytes_out = relay.b_to_a
        dsock.close()
