"""Plain TCP (``mode = "tcp"``) and TLS passthrough: one client connection, one backend one.

Rule of this room: bytes are relayed, never read. The client's identity was established once
by the listener (socket, or a trusted PROXY header); it picks the server (``balance =
"source"``), it is what a PROXY header toward the origin says (``send_proxy``), and it is what
the access log shows. A connect that fails moves on to the next server (nothing was sent
yet); once bytes flow, nothing is retried. Every connection writes exactly one access-log
line, also when it was refused or never reached a server.

Access-log ``status`` for a connection (method ``TCP`` or ``TLS-PASSTHROUGH``): 0 when both
directions ended normally; otherwise the marker the failure implies —

=====  ===================================================================================
499    the client reset or failed the connection
403    the listener's allow/deny refused the client (closed before any byte was relayed)
429    a limit refused the connection: the listener's ``limits`` (new connections per client)
       or ``conn_limit.per_client`` (closed before any byte was read or relayed)
502    no server of the pool could be connected, or the server reset the connection
503    no server available in the pool, or the listener was at ``max_conns``
504    no byte either way for ``timeouts.tunnel`` (idle)
=====  ===================================================================================
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import time

from revproxy.edge.generation import Generation, ListenerRuntime
from revproxy.edge.h1_connection import ConnInfo, proxy_header_for
from revproxy.errors import BackendError
from revproxy.net.relay import RelayEnd, SocketRelay
from revproxy.ops.accesslog import AccessRecord
from revproxy.proto.host import host_matches
from revproxy.upstream.backend import PickContext

log = logging.getLogger("revproxy.tcp")

METHOD_TCP = "TCP"
METHOD_PASSTHROUGH = "TLS-PASSTHROUGH"

# Access-log status markers (see the module docstring).
STATUS_OK = 0
STATUS_CLIENT_FAILED = 499
STATUS_BACKEND_FAILED = 502
STATUS_FULL = 503
STATUS_DENIED = 403
STATUS_IDLE = 504

_END_STATUS = {
    RelayEnd.CLOSED: STATUS_OK,
    RelayEnd.IDLE: STATUS_IDLE,
    RelayEnd.A_FAILED: STATUS_CLIENT_FAILED,  # side a is the client
    RelayEnd.B_FAILED: STATUS_BACKEND_FAILED,
}

_ids = itertools.count(1)
_ID_PREFIX = os.urandom(3).hex()


def connection_id() -> str:
    return f"{_ID_PREFIX}t{next(_ids):x}"


def match_passthrough(
    table: tuple[tuple[str, str], ...], server_name: str
) -> tuple[str, str] | None:
    """The (pattern, pool) entry for ``server_name``; the table is already in matching order."""
    for pattern, pool in table:
        if host_matches(pattern, server_name):
            return pattern, pool
    return None


def _record(
    lrt: ListenerRuntime, info: ConnInfo, method: str, pool: str, route: str
) -> AccessRecord:
    return AccessRecord(
        id=connection_id(),
        client=info.client[0],
        peer=info.peer[0],
        listener=lrt.config.name,
        sni=info.sni or "",
        host="",
        method=method,
        path="",
        status=STATUS_OK,
        bytes_in=0,
        bytes_out=0,
        route=route,
        pool=pool,
        backend="-",
        duration_ms=0.0,
        upstream_ms=0.0,
        authority=info.authority,
        vpce=info.vpce,
        conn=info,
    )


def record_refused(gen: Generation, lrt: ListenerRuntime, info: ConnInfo) -> None:
    """The access-log line of a connection closed at once because the listener was full."""
    method = METHOD_TCP if lrt.config.mode == "tcp" else "-"
    rec = _record(lrt, info, method, lrt.config.pool or "", "")
    rec.status = STATUS_FULL
    gen.access_log.record(rec)
    gen.metrics.connection(rec)


def record_denied(
    gen: Generation,
    lrt: ListenerRuntime,
    info: ConnInfo,
    reason: str,
    *,
    status: int = STATUS_DENIED,
    method: str | None = None,
) -> None:
    """The access-log line of a connection closed unread because the edge policy refused it
    (allow/deny: 403; a limit: 429)."""
    if method is None:
        method = METHOD_TCP if lrt.config.mode == "tcp" else METHOD_PASSTHROUGH
    rec = _record(lrt, info, method, lrt.config.pool or "", "")
    rec.status = status
    rec.refused = reason
    gen.access_log.record(rec)
    gen.metrics.connection(rec)


async def serve_tcp(
    gen: Generation, lrt: ListenerRuntime, csock: socket.socket, info: ConnInfo
) -> None:
    """Relay one connection of a ``mode = "tcp"`` listener to its pool."""
    pool = lrt.config.pool or ""
    await _serve(gen, lrt, csock, info, _record(lrt, info, METHOD_TCP, pool, ""))


async def serve_passthrough(
    gen: Generation,
    lrt: ListenerRuntime,
    csock: socket.socket,
    info: ConnInfo,
    *,
    pattern: str,
    pool: str,
) -> None:
    """Relay one TLS connection, ClientHello still unread in the kernel, to ``pool``."""
    rec = _record(lrt, info, METHOD_PASSTHROUGH, pool, pattern)
    await _serve(gen, lrt, csock, info, rec)


async def _serve(
    gen: Generation,
    lrt: ListenerRuntime,
    csock: socket.socket,
    info: ConnInfo,
    rec: AccessRecord,
) -> None:
    started = time.monotonic()
    relay: SocketRelay | None = None
    try:
        pr = gen.pools.get(rec.pool)
        if pr is None:  # config_load prevents it; a generation built by hand may not
            rec.status = STATUS_FULL
            log.error("listener=%s pool %r does not exist", lrt.config.name, rec.pool)
            return
        identity = proxy_header_for(pr.config.send_proxy, info)
        try:
            backend, bsock = await pr.dialer.connect_socket(
                PickContext(client_ip=info.client[0]), identity=identity
            )
        except BackendError as exc:
            rec.status = exc.status
            log.info("id=%s listener=%s %s: %s", rec.id, lrt.config.name, type(exc).__name__, exc)
            return
        rec.upstream_ms = (time.monotonic() - started) * 1000
        rec.backend = backend.label
        backend.acquire()
        try:
            relay = SocketRelay(csock, bsock, idle_timeout=pr.config.timeouts.tunnel)
            result = await relay.run()
            rec.status = _END_STATUS[result.end]
            if result.error:
                log.info("id=%s %s: %s", rec.id, result.end.value, result.error)
        finally:
            backend.release()
            bsock.close()
    finally:
        if relay is not None:
            rec.bytes_in = relay.a_to_b
            rec.bytes_out = relay.b_to_a
        rec.duration_ms = (time.monotonic() - started) * 1000
        gen.access_log.record(rec)
        gen.metrics.connection(rec)
