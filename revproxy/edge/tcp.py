"""TCP mode (``mode = "tcp"``, with or without ``tls``) and TLS passthrough: one client
connection, one backend one.

Rule of this room: bytes are relayed, never read. The client's identity was established once
by the listener (socket, or a trusted PROXY header); it picks the server (``balance =
"source"``), it is what a PROXY header toward the origin says (``send_proxy``), and it is what
the access log shows. A connect that fails moves on to the next server (nothing was sent
yet); once bytes flow, nothing is retried. Every connection writes exactly one access-log
line, also when it was refused or never reached a server.

A tcp listener with ``tls`` terminates TLS first (its certificates, its ``client_ca`` /
``client_cert``) and relays the plain bytes; nothing is dialled before the handshake
succeeded, so a client without a required certificate never reaches a server. Its access-log
line names the TLS version and the verified client subject (``ConnInfo``), and a pool's
``send_proxy = "v2"`` carries the TLS facts as a PP2_TYPE_SSL TLV (HAProxy's
proxy-protocol.txt section 2.2.6): the client byte (SSL, and a certificate on this connection /
in its session), verify 0 only for a verified certificate, the version, cipher and the
certificate's CN. The TLS side cannot be half-closed (asyncio): when the server ends its
direction, the client's connection is closed (``relay_streams``).

Access-log ``status`` for a connection (method ``TCP`` or ``TLS-PASSTHROUGH``): 0 when both
directions ended normally; otherwise the marker the failure implies —

=====  ===================================================================================
400    the TLS handshake of a tcp listener with ``tls`` failed (no or a refused client
       certificate, not TLS, too slow): nothing was dialled
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

import asyncio
import itertools
import logging
import os
import socket
import ssl
import struct
import time

from cryptography import x509
from cryptography.x509.oid import NameOID

from revproxy.edge.generation import Generation, ListenerRuntime
from revproxy.edge.h1_connection import ConnInfo, proxy_header_for
from revproxy.edge.tls import client_subject, server_name_of
from revproxy.errors import BackendError
from revproxy.net.conn_io import ConnIO
from revproxy.net.relay import COPY_BUFFER, RelayEnd, RelayResult, SocketRelay, relay_streams
from revproxy.ops.accesslog import AccessRecord
from revproxy.proto import proxy_protocol as pp
from revproxy.proto.host import host_matches
from revproxy.upstream.backend import PickContext

log = logging.getLogger("revproxy.tcp")

METHOD_TCP = "TCP"
METHOD_PASSTHROUGH = "TLS-PASSTHROUGH"

# Access-log status markers (see the module docstring).
STATUS_OK = 0
STATUS_HANDSHAKE_FAILED = 400
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
    gen: Generation,
    lrt: ListenerRuntime,
    csock: socket.socket,
    info: ConnInfo,
    *,
    handshake_timeout: float,
) -> None:
    """Relay one connection of a ``mode = "tcp"`` listener to its pool (after our own TLS
    handshake when the listener has ``tls``)."""
    pool = lrt.config.pool or ""
    rec = _record(lrt, info, METHOD_TCP, pool, "")
    if lrt.tls is None:
        await _serve(gen, lrt, csock, info, rec)
        return
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    conn = ConnIO(loop)
    try:
        transport, _ = await loop.connect_accepted_socket(
            lambda: conn, csock, ssl=lrt.tls.context, ssl_handshake_timeout=handshake_timeout
        )
    except (ssl.SSLError, ConnectionError, OSError, TimeoutError) as exc:
        log.info(
            "id=%s listener=%s client=%s TLS handshake failed: %s",
            rec.id,
            lrt.config.name,
            info.client[0],
            _reason(exc),
        )
        rec.status = STATUS_HANDSHAKE_FAILED
        rec.duration_ms = (time.monotonic() - started) * 1000
        gen.access_log.record(rec)
        gen.metrics.connection(rec)
        return
    try:
        sslobj: ssl.SSLObject | None = transport.get_extra_info("ssl_object")
        if sslobj is not None:
            info.sni = server_name_of(sslobj)
            info.tls_version = sslobj.version() or ""
            if lrt.tls.store.client_auth is not None:
                info.client_subject = client_subject(sslobj)
            rec.sni = info.sni or ""
        await _serve(gen, lrt, csock, info, rec, tls=(conn, sslobj), started=started)
    finally:
        await conn.aclose()


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


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc)
    return str(exc) or type(exc).__name__


# --- PROXY v2 with the TLS facts ------------------------------------------------------------


def ssl_tlv(sslobj: ssl.SSLObject) -> bytes:
    """The value of a PP2_TYPE_SSL TLV for our side of a terminated TLS connection.

    Section 2.2.6: ``client`` has PP2_CLIENT_SSL, PP2_CLIENT_CERT_CONN when the client sent a
    certificate on this connection and PP2_CLIENT_CERT_SESS when it did so in the session
    (a resumed session: only the latter); ``verify`` "will be zero if the client presented a
    certificate and it was successfully verified, and non-zero otherwise". Sub-TLVs: the
    version, the CN of the client certificate, the cipher.
    """
    der = sslobj.getpeercert(binary_form=True)
    client = pp.PP2_CLIENT_SSL
    if der:
        client |= pp.PP2_CLIENT_CERT_SESS
        if not sslobj.session_reused:
            client |= pp.PP2_CLIENT_CERT_CONN
    value = bytearray(struct.pack("!BI", client, 0 if der else 1))
    version = sslobj.version()
    if version:
        value += _sub_tlv(pp.PP2_SUBTYPE_SSL_VERSION, version.encode("ascii"))
    cn = _common_name(der) if der else ""
    if cn:
        value += _sub_tlv(pp.PP2_SUBTYPE_SSL_CN, cn.encode("utf-8"))
    cipher = sslobj.cipher()
    if cipher is not None:
        value += _sub_tlv(pp.PP2_SUBTYPE_SSL_CIPHER, cipher[0].encode("ascii"))
    return bytes(value)


def _sub_tlv(sub_type: int, value: bytes) -> bytes:
    return struct.pack("!BH", sub_type, len(value)) + value


def _common_name(der: bytes) -> str:
    try:
        names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(
            NameOID.COMMON_NAME
        )
    except ValueError:
        return ""
    value = names[0].value if names else ""
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _proxy_header(
    version: str | None, info: ConnInfo, sslobj: ssl.SSLObject | None
) -> bytes | None:
    """``proxy_header_for``, plus the SSL TLV in v2 when we terminated the client's TLS."""
    if version != "v2" or sslobj is None:
        return proxy_header_for(version, info)
    return pp.build_v2(
        info.client,
        info.destination,
        authority=info.sni or info.authority or None,
        extra_tlvs=[(pp.PP2_TYPE_SSL, ssl_tlv(sslobj))],
    )


# --- the relay ----------------------------------------------------------------------------


async def _serve(
    gen: Generation,
    lrt: ListenerRuntime,
    csock: socket.socket,
    info: ConnInfo,
    rec: AccessRecord,
    *,
    tls: tuple[ConnIO, ssl.SSLObject | None] | None = None,
    started: float | None = None,
) -> None:
    """Dial the pool and relay until both directions end; ``tls``: the client side is our
    TLS connection (relayed as a stream), else ``csock`` is spliced as it is."""
    if started is None:
        started = time.monotonic()
    relay: SocketRelay | None = None
    result: RelayResult | None = None
    try:
        pr = gen.pools.get(rec.pool)
        if pr is None:  # config_load prevents it; a generation built by hand may not
            rec.status = STATUS_FULL
            log.error("listener=%s pool %r does not exist", lrt.config.name, rec.pool)
            return
        identity = _proxy_header(pr.config.send_proxy, info, tls[1] if tls else None)
        dialled = time.monotonic()  # upstream time leaves our own handshake out
        try:
            backend, bsock = await pr.dialer.connect_socket(
                PickContext(client_ip=info.client[0]), identity=identity
            )
        except BackendError as exc:
            rec.status = exc.status
            log.info("id=%s listener=%s %s: %s", rec.id, lrt.config.name, type(exc).__name__, exc)
            return
        rec.upstream_ms = (time.monotonic() - dialled) * 1000
        rec.backend = backend.label
        backend.acquire()
        idle = pr.config.timeouts.tunnel
        try:
            if tls is None:
                relay = SocketRelay(csock, bsock, idle_timeout=idle)
                result = await relay.run()
            else:
                result = await _relay_tls(tls[0], bsock, idle)
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
        elif result is not None:
            rec.bytes_in = result.a_to_b
            rec.bytes_out = result.b_to_a
        rec.duration_ms = (time.monotonic() - started) * 1000
        gen.access_log.record(rec)
        gen.metrics.connection(rec)


async def _relay_tls(client: ConnIO, bsock: socket.socket, idle: float) -> RelayResult:
    """The client's TLS stream and the server's socket, joined both ways."""
    reader, writer = await asyncio.open_connection(sock=bsock, limit=COPY_BUFFER)
    try:
        return await relay_streams((client, client), (reader, writer), idle_timeout=idle)
    finally:
        writer.close()
