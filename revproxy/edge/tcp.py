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

A plain connection (a tcp listener without ``tls``, or a passthrough route) is a
``TcpSession``: dial, PROXY header, relay and access-log line are driven by event-loop
callbacks, with no task, coroutine or future of its own (``docs/performance.md``: a short
connection costs what its system calls cost, plus little Python). Servers named by their IP
address are connected with a non-blocking ``connect`` on the spot; a pool with a server behind
a name, a tunnel or a ``source`` address is dialled by the dialer's coroutine instead, and the
session carries on from its result. The order of events, the failover, the passive-health
accounting and the log line are the same either way. A tunnel server's connection is a
``TunnelFlow``, not a socket: the tunnel relays the client's socket to its stream itself.

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
import errno
import functools
import ipaddress
import itertools
import logging
import os
import socket
import ssl
import struct
import time
from collections.abc import Callable

from revproxy.edge.generation import Generation, ListenerRuntime, PoolRuntime
from revproxy.edge.h1_connection import ConnInfo, proxy_header_for
from revproxy.edge.handshake import accept_tls
from revproxy.edge.tls import client_subject, server_name_of
from revproxy.errors import (
    BackendError,
    BackendUnreachable,
    LocalResourceError,
    NoBackendAvailable,
    is_local_shortage,
)
from revproxy.net.conn_io import ConnIO
from revproxy.net.relay import (
    COPY_BUFFER,
    FdPoller,
    RelayEnd,
    RelayResult,
    SocketRelay,
    fd_poller,
    relay_streams,
)
from revproxy.ops.accesslog import AccessRecord
from revproxy.proto import proxy_protocol as pp
from revproxy.proto.host import host_matches
from revproxy.upstream.backend import Backend, PickContext
from revproxy.upstream.dialer import Dialer
from revproxy.upstream.tunnel_paths import Relay, TunnelFlow

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
        session = TcpSession(gen, lrt, csock, info, rec)
        session.start()
        await session.wait()
        return
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    conn = ConnIO(loop)
    tls_config = lrt.config.tls
    assert tls_config is not None  # lrt.tls is made from it
    try:
        transport = await accept_tls(
            csock, lambda: conn, lrt.tls.context, tls_config, handshake_timeout
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
        await _serve_tls(gen, lrt, info, rec, conn, sslobj, started)
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
    session = TcpSession(gen, lrt, csock, info, rec)
    session.start()
    await session.wait()


def start_tcp(
    gen: Generation,
    lrt: ListenerRuntime,
    csock: socket.socket,
    info: ConnInfo,
    on_end: Callable[[TcpSession], None],
    loop: asyncio.AbstractEventLoop | None = None,
) -> TcpSession:
    """Serve one connection of a plain ``mode = "tcp"`` listener from callbacks (no task):
    ``on_end(session)`` is called once when it is over, its access-log line written; ``csock``
    stays the caller's to close (then)."""
    rec = _record(lrt, info, METHOD_TCP, lrt.config.pool or "", "")
    session = TcpSession(gen, lrt, csock, info, rec, on_end=on_end, loop=loop)
    session.start()
    return session


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
    # Imported here: only a client certificate (a listener with client_ca) gets this far.
    from cryptography import x509
    from cryptography.x509.oid import NameOID

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


# --- the relay ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _literal_family(host: str) -> int:
    """AF_INET / AF_INET6 for an IP literal, 0 for a name (cached: once per server)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return 0
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


def _targets(backend: Backend) -> tuple[tuple[str, int], ...]:
    return backend.addresses or ((backend.host, backend.port),)


def _dials_directly(dialer: Dialer) -> bool:
    """Whether every server of the pool can be connected from a callback: named by IP
    address, not behind a tunnel, no ``source`` address to bind first."""
    if dialer.source:
        return False
    for b in dialer.pool.backends:
        if b.tunnel is not None:
            return False
        for host, _ in _targets(b):
            if not _literal_family(host):
                return False
    return True


def _connected_now(sock: socket.socket) -> bool:
    """After a non-blocking ``connect`` said EINPROGRESS: whether it completed already
    (loopback and local networks finish the handshake inside the call on Linux), which
    saves a wake-up; False where that can't be told (then the socket is waited on)."""
    try:
        state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)
    except (OSError, AttributeError):
        return False
    return state[0] == _TCP_ESTABLISHED


# Linux TCP state of an open connection (include/net/tcp_states.h).
_TCP_ESTABLISHED = 1

_IDLE, _DIALING, _SENDING, _RELAYING, _ENDED = range(5)


class TcpSession:
    """One relayed connection, from the dial to its access-log line, driven by callbacks.

    ``start()`` picks a server and connects; a connect that fails (refused, timed out) moves
    on to the next address, then the next server the pool picks, then the backups, exactly
    as ``Dialer.connect_socket`` does and with the same passive-health accounting. Once
    connected (and the PROXY header sent) the sockets are joined by a ``SocketRelay``; when
    it ends the server's socket is closed, the line is written and ``on_end(self)`` called.
    The client's socket stays the caller's. ``wait()`` is a future for the end (created
    only when asked for: the task of a passthrough connection, or a shutdown); cancelling it
    stops the session (``abort``).
    """

    __slots__ = (
        "_fut",
        "_last",
        "_relay",
        "_state",
        "_target",
        "_task",
        "_timer",
        "_tried",
        "backend",
        "bsock",
        "csock",
        "ctx",
        "dialled",
        "flow",
        "gen",
        "identity",
        "info",
        "io",
        "loop",
        "lrt",
        "on_end",
        "pr",
        "rec",
        "started",
        "unsent",
    )

    def __init__(
        self,
        gen: Generation,
        lrt: ListenerRuntime,
        csock: socket.socket,
        info: ConnInfo,
        rec: AccessRecord,
        *,
        on_end: Callable[[TcpSession], None] | None = None,
        started: float | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.loop = loop if loop is not None else asyncio.get_running_loop()
        self.io: FdPoller = fd_poller(self.loop)
        self.gen = gen
        self.lrt = lrt
        self.csock = csock
        self.info = info
        self.rec = rec
        self.on_end = on_end
        self.started = time.monotonic() if started is None else started
        self.dialled = self.started
        self.pr: PoolRuntime | None = None
        self.ctx: PickContext | None = None
        self.identity: bytes | None = None
        self.backend: Backend | None = None
        self.bsock: socket.socket | None = None
        self.flow: TunnelFlow | None = None  # a tunnel server's, instead of bsock
        self.unsent = b""  # the rest of the PROXY header, when one send did not take it all
        self._state = _IDLE
        self._tried: set[Backend] | None = None
        self._target = 0  # index of the address of ``backend`` being connected
        self._last: BaseException | None = None  # the last failure on ``backend``
        self._timer: asyncio.TimerHandle | None = None
        self._relay: Relay | None = None
        self._task: asyncio.Task[None] | None = None
        self._fut: asyncio.Future[None] | None = None

    @property
    def ended(self) -> bool:
        return self._state == _ENDED

    def wait(self) -> asyncio.Future[None]:
        """A future done when the session has ended; cancelling it aborts the session."""
        fut = self._fut
        if fut is None:
            fut = self._fut = self.loop.create_future()
            if self._state == _ENDED:
                fut.set_result(None)
            else:
                fut.add_done_callback(self._waiter_done)
        return fut

    def _waiter_done(self, fut: asyncio.Future[None]) -> None:
        if fut.cancelled():
            self.abort()

    # --- dialling --------------------------------------------------------------------------

    def start(self) -> None:
        try:
            pr = self.gen.pools.get(self.rec.pool)
            if pr is None:  # config_load prevents it; a generation built by hand may not
                self.rec.status = STATUS_FULL
                log.error("listener=%s pool %r does not exist", self.lrt.config.name, self.rec.pool)
                self._finish()
                return
            self.pr = pr
            self.identity = proxy_header_for(pr.config.send_proxy, self.info)
            self.ctx = PickContext(client_ip=self.info.client[0])
            self.dialled = time.monotonic()
            self._state = _DIALING
            if _dials_directly(pr.dialer):
                self._pick()
            else:
                self._task = self.loop.create_task(self._dial_by_dialer(pr.dialer))
        except Exception:
            self._crashed()

    async def _dial_by_dialer(self, dialer: Dialer) -> None:
        """The dialer's coroutine does it all (names, tunnels, source addresses)."""
        assert self.ctx is not None
        try:
            backend, bsock = await dialer.connect_socket(self.ctx, identity=self.identity)
        except BackendError as exc:
            self._task = None
            self._dial_failed(exc)
            return
        self._task = None
        if self._state != _DIALING:  # aborted meanwhile
            bsock.close()
            return
        self.backend = backend
        try:
            self._relay_to(bsock, observed=True)
        except Exception:
            self._crashed()

    def _pick(self) -> None:
        """The next server (``_tried`` is what failed so far), and its first address."""
        pr = self.pr
        assert pr is not None and self.ctx is not None
        backend = pr.pool.pick(self.ctx, exclude=self._tried or ())
        if backend is None:
            if self._tried is None:
                self._dial_failed(NoBackendAvailable(f"pool {pr.pool.name}: no server available"))
            else:
                self._dial_failed(BackendUnreachable(f"pool {pr.pool.name}: every server failed"))
            return
        self.backend = backend
        self._target = 0
        self._last = None
        self._connect_next()

    def _connect_next(self) -> None:
        """Connect to the next address of ``backend``; when none is left, it failed."""
        backend, pr = self.backend, self.pr
        assert backend is not None and pr is not None
        targets = _targets(backend)
        while self._target < len(targets):
            host, port = targets[self._target]
            self._target += 1
            family = _literal_family(host)
            try:
                sock = socket.socket(family, socket.SOCK_STREAM)
            except OSError as exc:
                if self._local_shortage(exc):
                    return
                self._last = exc
                continue
            try:
                sock.setblocking(False)
                err = sock.connect_ex((host, port))
            except OSError as exc:
                sock.close()
                if self._local_shortage(exc):
                    return
                self._last = exc
                continue
            if err == 0 or (err == errno.EINPROGRESS and _connected_now(sock)):
                self._connected(sock)
                return
            if err == errno.EINPROGRESS:
                self.bsock = sock
                self.io.set_writer(sock.fileno(), self._on_connect)
                self._timer = self.loop.call_later(
                    pr.dialer.connect_timeout, self._on_connect_timeout
                )
                return
            sock.close()
            failure = OSError(err, os.strerror(err))
            if self._local_shortage(failure):
                return
            self._last = failure
        self._server_failed(self._last or OSError("no address"))

    def _on_connect(self) -> None:
        sock = self.bsock
        assert sock is not None
        try:
            self._stop_waiting()
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err == 0:
                self._connected(sock)
                return
            self.bsock = None
            sock.close()
            exc = OSError(err, os.strerror(err))
            if not self._local_shortage(exc):
                self._last = exc
                self._connect_next()
        except Exception:
            self._crashed()

    def _on_connect_timeout(self) -> None:
        self._timer = None
        sock, self.bsock = self.bsock, None
        try:
            if sock is not None:
                self.io.set_writer(sock.fileno(), None)
                sock.close()
            self._last = TimeoutError()
            self._connect_next()
        except Exception:
            self._crashed()

    def _stop_waiting(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.bsock is not None:
            self.io.set_writer(self.bsock.fileno(), None)

    def _local_shortage(self, exc: OSError) -> bool:
        """Out of our own resources (EMFILE, ...): no server is at fault, none is tried."""
        if not is_local_shortage(exc):
            return False
        self._dial_failed(LocalResourceError(f"out of resources connecting to origins: {exc}"))
        return True

    def _server_failed(self, exc: BaseException) -> None:
        """Every address of ``backend`` failed: passive health hears of it; the next one."""
        backend = self.backend
        assert backend is not None and self.pr is not None
        self.backend = None
        self.pr.dialer.failed(backend, exc)
        if self._tried is None:
            self._tried = set()
        self._tried.add(backend)
        self._pick()

    def _connected(self, sock: socket.socket) -> None:
        """TCP is up: the PROXY header goes first (nothing else was sent yet)."""
        try:  # noqa: SIM105 - every connection: no context manager
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        identity = self.identity
        if identity:
            try:
                n = sock.send(identity)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                self._send_failed(sock, exc)
                return
            if n < len(identity):
                # A fresh connection's send buffer takes a PROXY header whole; if it does not,
                # the rest goes when it can, within the connect timeout.
                assert self.pr is not None
                self.unsent = identity[n:]
                self.bsock = sock
                self._state = _SENDING
                self.io.set_writer(sock.fileno(), self._on_send)
                self._timer = self.loop.call_later(
                    self.pr.dialer.connect_timeout, self._on_send_timeout
                )
                return
        self._relay_to(sock, observed=False)

    def _on_send(self) -> None:
        sock = self.bsock
        assert sock is not None
        try:
            try:
                n = sock.send(self.unsent)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._stop_waiting()
                self.bsock = None
                self._send_failed(sock, exc)
                return
            self.unsent = self.unsent[n:]
            if self.unsent:
                return
            self._stop_waiting()
            self.bsock = None
            self._state = _DIALING
            self._relay_to(sock, observed=False)
        except Exception:
            self._crashed()

    def _on_send_timeout(self) -> None:
        self._timer = None
        sock, self.bsock = self.bsock, None
        try:
            if sock is not None:
                self.io.set_writer(sock.fileno(), None)
                self._state = _DIALING
                self._send_failed(sock, TimeoutError())
        except Exception:
            self._crashed()

    def _send_failed(self, sock: socket.socket, exc: BaseException) -> None:
        """The PROXY header could not be sent: that server failed (the next one is tried)."""
        sock.close()
        self.unsent = b""
        self._server_failed(exc)

    def _dial_failed(self, exc: BackendError) -> None:
        self.rec.status = exc.status
        log.info(
            "id=%s listener=%s %s: %s", self.rec.id, self.lrt.config.name, type(exc).__name__, exc
        )
        self._finish()

    # --- relaying --------------------------------------------------------------------------

    def _relay_to(self, bsock: socket.socket | TunnelFlow, *, observed: bool) -> None:
        backend, pr, rec = self.backend, self.pr, self.rec
        assert backend is not None and pr is not None
        if not observed:
            pr.dialer.connected(backend)
        rec.upstream_ms = (time.monotonic() - self.dialled) * 1000
        rec.backend = backend.label
        backend.acquire()
        self._state = _RELAYING
        idle = pr.config.timeouts.tunnel
        relay: Relay
        if isinstance(bsock, socket.socket):
            self.bsock = bsock
            relay = SocketRelay(self.csock, bsock, idle_timeout=idle, loop=self.loop, io=self.io)
        else:
            self.flow = bsock
            relay = bsock.relay(self.csock, idle_timeout=idle)
        self._relay = relay
        # Most clients speak first, and their first bytes are in by now: read them at once
        # rather than after another trip through the event loop.
        relay.start(self._relayed, read_a=True)

    def _relayed(self, result: RelayResult) -> None:
        try:
            self.rec.status = _END_STATUS[result.end]
            if result.error:
                log.info("id=%s %s: %s", self.rec.id, result.end.value, result.error)
        finally:
            self._finish()

    # --- the end -----------------------------------------------------------------------------

    def abort(self) -> None:
        """Stop now (shutdown's deadline): both sockets are let go as they are, the line is
        written with what was relayed so far."""
        if self._state in (_IDLE, _ENDED):
            return
        if self._state in (_DIALING, _SENDING):
            self._stop_waiting()
            if self._task is not None:
                self._task.cancel()
                self._task = None
        self._finish()

    def _crashed(self) -> None:
        log.exception("listener=%s connection failed", self.lrt.config.name)
        self._finish()

    def _finish(self) -> None:
        if self._state == _ENDED:
            return
        relaying = self._state == _RELAYING
        self._state = _ENDED
        rec = self.rec
        relay = self._relay
        if relay is not None:
            relay.stop()
            rec.bytes_in = relay.a_to_b
            rec.bytes_out = relay.b_to_a
        try:
            if relaying and self.backend is not None:
                self.backend.release()
            if self.bsock is not None:
                self.bsock.close()
                self.bsock = None
            if self.flow is not None:
                self.flow.close()
                self.flow = None
            rec.duration_ms = (time.monotonic() - self.started) * 1000
            self.gen.access_log.record(rec)
            self.gen.metrics.connection(rec)
        finally:
            fut = self._fut
            if fut is not None and not fut.done():
                fut.set_result(None)
            on_end = self.on_end
            if on_end is not None:
                self.on_end = None
                on_end(self)


async def _serve_tls(
    gen: Generation,
    lrt: ListenerRuntime,
    info: ConnInfo,
    rec: AccessRecord,
    conn: ConnIO,
    sslobj: ssl.SSLObject | None,
    started: float,
) -> None:
    """Dial the pool and relay our TLS connection with the client (as a stream) to it until
    both directions end."""
    result: RelayResult | None = None
    try:
        pr = gen.pools.get(rec.pool)
        if pr is None:  # config_load prevents it; a generation built by hand may not
            rec.status = STATUS_FULL
            log.error("listener=%s pool %r does not exist", lrt.config.name, rec.pool)
            return
        identity = _proxy_header(pr.config.send_proxy, info, sslobj)
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
        try:
            result = await _relay_tls(conn, bsock, pr.config.timeouts.tunnel)
            rec.status = _END_STATUS[result.end]
            if result.error:
                log.info("id=%s %s: %s", rec.id, result.end.value, result.error)
        finally:
            backend.release()
            bsock.close()
    finally:
        if result is not None:
            rec.bytes_in = result.a_to_b
            rec.bytes_out = result.b_to_a
        rec.duration_ms = (time.monotonic() - started) * 1000
        gen.access_log.record(rec)
        gen.metrics.connection(rec)


async def _relay_tls(client: ConnIO, bsock: socket.socket | TunnelFlow, idle: float) -> RelayResult:
    """The client's TLS stream and the server's socket (or tunnel stream), joined both ways."""
    if not isinstance(bsock, socket.socket):
        return await relay_streams((client, client), bsock.streams(), idle_timeout=idle)
    reader, writer = await asyncio.open_connection(sock=bsock, limit=COPY_BUFFER)
    try:
        return await relay_streams((client, client), (reader, writer), idle_timeout=idle)
    finally:
        writer.close()
