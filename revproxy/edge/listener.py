"""Listeners: bind, accept, PROXY header in, SNI peek, TLS, dispatch by mode.

Rule of this room: a listening socket is bound once and kept for as long as some generation
names it; a reload never closes a socket that stays in the config. Each accepted connection is
served by the generation that was current when it was accepted, to its end.

Accepting is our own loop (not ``start_server``) so that the first bytes of a connection can
be inspected on the raw socket before any stream or TLS layer buffers them: a PROXY header is
consumed exactly (peek, then read just its bytes), and what follows it is left in the kernel
for the TLS handshake or the HTTP parser. Out of file descriptors (EMFILE/ENFILE), accepting
on that socket pauses and retries with a growing back-off. A listening socket is watched for
readiness and drained in batches of up to ``ACCEPT_BATCH`` connections per wake-up (as
HAProxy's ``tune.maxaccept``), not one ``await`` per connection. A connection of a plain tcp
listener (no ``tls``, no ``proxy_protocol``, limits kept by the instance) needs nothing
awaited before its relay starts: it is admitted, judged and handed to ``tcp.TcpSession`` right
in the accept callback, with no task of its own; every other connection gets a task.

Dispatch: a ``mode = "tcp"`` listener relays every connection to its pool (``tcp.py``; with
``tls``, after its own handshake — allow/deny and limits are judged before it). A
TLS listener with passthrough routes first peeks at the ClientHello — never consuming it,
bounded in size and time — and relays connections whose server name matches a passthrough
route to that route's pool undecrypted; every other name (and a ClientHello without one) is
terminated as usual. Bytes that are not TLS close the connection. A TLS listener without
passthrough routes does not peek at all. A listener at its ``max_conns`` closes new
connections at once.

HTTP: a TLS connection whose ALPN chose ``h2`` is served by ``h2_proxy`` (HTTP/2), every
other one by ``http_proxy`` (HTTP/1.1). A plain listener with ``h2c = true`` peeks at the
first bytes: the HTTP/2 connection preface (prior knowledge, RFC 9113 §3.3) means HTTP/2,
anything else HTTP/1.1 — decided on the first byte that differs, so HTTP/1.1 clients wait for
nothing. When an accept loop stops (shutdown, or its address left the config) the connections
it accepted are told to wind down (HTTP/2: GOAWAY).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from revproxy.config.model import Bind, ProxyProtocolIn
from revproxy.edge.client_side import ConnInfo
from revproxy.edge.generation import Generation, ListenerRuntime, Signal
from revproxy.edge.h1_connection import HttpConnection
from revproxy.edge.h2_connection import Http2Connection
from revproxy.edge.handshake import accept_tls
from revproxy.edge.tcp import (
    TcpSession,
    match_passthrough,
    record_denied,
    record_refused,
    serve_passthrough,
    serve_tcp,
    start_tcp,
)
from revproxy.edge.tls import TUNNEL_ALPNS, client_subject, server_name_of
from revproxy.errors import ClientHelloError, ProxyProtocolError, is_local_shortage
from revproxy.net.conn_io import ConnIO
from revproxy.ops.log_limit import RateLimitedLog
from revproxy.policy.access import DENY
from revproxy.policy.limits import CONN_LIMIT
from revproxy.proto import proxy_protocol as pp
from revproxy.proto.clienthello import MAX_CLIENTHELLO, ClientHelloInfo, parse_client_hello
from revproxy.proto.forwarding import is_trusted
from revproxy.proto.h2.frames import PREFACE

log = logging.getLogger("revproxy.listener")

# A TLS client has this long to finish its handshake.
TLS_HANDSHAKE_TIMEOUT = 10.0
# Pending connections the kernel queues per listening socket.
BACKLOG = 1024
# Connections accepted per readiness wake-up of a listening socket before other connections
# get their turn (HAProxy's tune.maxaccept defaults to 64 too).
ACCEPT_BATCH = 64
# Out of file descriptors: first and longest pause before accepting again.
EMFILE_BACKOFF_MIN = 0.05
EMFILE_BACKOFF_MAX = 2.0
# asyncio stream buffer limit (we never read lines, so it only bounds buffering).
STREAM_LIMIT = 1024 * 1024
# Largest PROXY header accepted (v2 with TLVs); HAProxy's own bound is similar.
PROXY_MAX_SIZE = 4096
# A client on a listener with passthrough routes has this long to send its whole ClientHello
# (then the TLS handshake has its own TLS_HANDSHAKE_TIMEOUT).
CLIENT_HELLO_TIMEOUT = 10.0
# Waiting for more of a fragmented ClientHello where SO_RCVLOWAT can't be used: poll period.
CLIENT_HELLO_POLL = 0.01
# "Listener full" warnings: at most one per listener per this many seconds.
REFUSED_LOG_INTERVAL = 1.0
# Access-log status of a connection a limit closed unread (edge/tcp.py's table).
STATUS_LIMITED = 429
# Linux TCP state of an open connection (include/net/tcp_states.h); after the peer's FIN it
# is CLOSE_WAIT or later.
_TCP_ESTABLISHED = 1


def bind_socket(bind: Bind) -> list[socket.socket]:
    """Bind ``bind``; ``":443"`` binds every address (dual-stack where IPv6 exists)."""
    if not bind.host:
        try:
            return [_bind_one(socket.AF_INET6, ("::", bind.port), v6only=False)]
        except OSError as exc:
            if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                raise
            return [_bind_one(socket.AF_INET, ("0.0.0.0", bind.port))]
    infos = socket.getaddrinfo(
        bind.host, bind.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    socks: list[socket.socket] = []
    seen: set[tuple[int, str]] = set()
    try:
        for family, _, _, _, addr in infos:
            key = (family, str(addr[0]))
            if key in seen:
                continue
            seen.add(key)
            socks.append(_bind_one(family, (str(addr[0]), int(addr[1])), v6only=True))
    except OSError:
        for s in socks:
            s.close()
        raise
    return socks


def _bind_one(family: int, addr: tuple[str, int], v6only: bool = True) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if v6only else 0)
        sock.bind(addr)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


@dataclass(eq=False)
class BoundListener:
    """The sockets bound for one address of a listener and the tasks accepting on them."""

    name: str
    binds: tuple[Bind, ...]
    sockets: list[socket.socket]
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def stop_accepting(self) -> None:
        for t in self.tasks:
            t.cancel()

    async def close(self) -> None:
        self.stop_accepting()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=1.0)
        for s in self.sockets:
            s.close()


# --- reading the first bytes without over-reading ------------------------------------------


async def _wait_readable(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await fut
    finally:
        loop.remove_reader(fd)


async def peek(sock: socket.socket, size: int) -> bytes:
    """Up to ``size`` bytes waiting on ``sock``, left in the kernel; b"" at end of stream."""
    while True:
        try:
            return sock.recv(size, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            await _wait_readable(sock)


def _consume(sock: socket.socket, size: int) -> None:
    """Drop ``size`` bytes already seen by ``peek`` (so they are certainly there)."""
    while size > 0:
        got = sock.recv(size)
        if not got:
            raise ProxyProtocolError("connection closed inside a PROXY header")
        size -= len(got)


async def read_proxy_header(
    sock: socket.socket, settings: ProxyProtocolIn, peer_ip: str
) -> pp.ProxyHeader | None:
    """The PROXY header at the start of ``sock``, consuming exactly its bytes.

    Returns None when ``optional`` and the connection starts with something else. Raises
    ProxyProtocolError when the header is required but missing, malformed, truncated,
    oversized, or sent by a peer outside ``trusted`` (such a header is never believed).
    """
    trusted = is_trusted(peer_ip, settings.trusted)
    if not trusted and settings.mode == "required":
        raise ProxyProtocolError(f"PROXY header required but {peer_ip} is not a trusted sender")
    consumed = bytearray()
    async with asyncio.timeout(settings.timeout):
        while True:
            chunk = await peek(sock, PROXY_MAX_SIZE)
            if not chunk:
                if consumed or settings.mode == "required":
                    raise ProxyProtocolError("connection closed before a PROXY header")
                return None
            data = bytes(consumed) + chunk
            kind = pp.detect(data)
            if kind == "none":
                if consumed or settings.mode == "required":
                    raise ProxyProtocolError("connection does not start with a PROXY header")
                return None
            if not trusted and kind != "need_more":
                # "P" or "\r" may still begin a plain request: refuse only a real signature.
                raise ProxyProtocolError(f"PROXY header from untrusted peer {peer_ip} refused")
            header = pp.parse(data, max_size=PROXY_MAX_SIZE) if kind != "need_more" else None
            if header is not None:
                _consume(sock, header.length - len(consumed))
                return header
            if kind == "need_more":
                # Fewer bytes than a signature; they may still turn out not to be one.
                await asyncio.sleep(0.01)
                continue
            # Every byte seen so far belongs to the (incomplete) header: take it.
            _consume(sock, len(chunk))
            consumed += chunk


async def _wait_for_more(sock: socket.socket, have: int) -> bool:
    """Wait until more than ``have`` bytes are waiting; False where that can't be told apart.

    SO_RCVLOWAT makes the socket readable only once ``have + 1`` bytes are queued (or the peer
    closed), so a ClientHello split over several segments costs one wake-up per segment
    instead of a poll loop.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, have + 1)
    except OSError:
        await asyncio.sleep(CLIENT_HELLO_POLL)
        return False
    await _wait_readable(sock)
    return True


def _peer_closed(sock: socket.socket) -> bool:
    """Whether the peer sent its FIN (we may still hold unread bytes from it)."""
    try:
        state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)
    except OSError:
        return True
    return state[0] != _TCP_ESTABLISHED


async def peek_client_hello(
    sock: socket.socket,
    *,
    timeout: float = CLIENT_HELLO_TIMEOUT,
    max_size: int = MAX_CLIENTHELLO,
) -> ClientHelloInfo:
    """The ClientHello at the start of ``sock``, every byte of it left in the kernel.

    Raises ClientHelloError for bytes that are not a ClientHello (plain HTTP is refused on
    its first byte), one over ``max_size``, or a connection closed before it was complete;
    TimeoutError when it took longer than ``timeout``.
    """
    lowat_set = False
    try:
        async with asyncio.timeout(timeout):
            seen = 0
            while True:
                data = await peek(sock, max_size)
                if not data:
                    raise ClientHelloError("connection closed before a ClientHello")
                hello = parse_client_hello(data, max_size=max_size)
                if hello is not None:
                    return hello
                if len(data) >= max_size:
                    raise ClientHelloError(f"ClientHello larger than {max_size} bytes")
                if len(data) == seen and _peer_closed(sock):
                    raise ClientHelloError("connection closed inside the ClientHello")
                seen = len(data)
                lowat_set = await _wait_for_more(sock, seen) or lowat_set
    finally:
        if lowat_set:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)


# --- accepting -----------------------------------------------------------------------------


def _served_from_callbacks(lrt: ListenerRuntime) -> bool:
    """A plain tcp listener whose admission needs no wait (no TLS handshake, no PROXY header
    to read, no limit kept in Redis): its connections are served without a task."""
    config = lrt.config
    if config.mode != "tcp" or lrt.tls is not None or config.proxy_protocol.mode != "off":
        return False
    return lrt.limits is None or lrt.limits.local


# socket.socket._accept: (file descriptor, address); typeshed does not list it.
_RawAccept = Callable[[], tuple[int, tuple[str, int]]]


class _Accepting:
    """Accepting on one listening socket: a reader callback that takes up to
    ``ACCEPT_BATCH`` connections per wake-up and hands each to ``Acceptor.dispatch``.

    ``run()`` returns only by cancellation (stop accepting) or raises the accept error that
    is neither a shortage nor a connection that died in the queue (as ``sock_accept`` did)."""

    __slots__ = (
        "accept_raw",
        "acceptor",
        "addr",
        "backoff",
        "done",
        "family",
        "local",
        "loop",
        "lsock",
        "proto",
        "shortage",
        "stopping",
        "timer",
        "type",
    )

    def __init__(
        self, acceptor: Acceptor, addr: str, lsock: socket.socket, stopping: Signal
    ) -> None:
        self.acceptor = acceptor
        self.addr = addr
        self.lsock = lsock
        self.stopping = stopping
        self.loop = asyncio.get_running_loop()
        # socket.accept() converts these to enums for every connection; once is enough, and
        # the raw accept (file descriptor, address) is socket.accept() without that.
        self.accept_raw: _RawAccept = lsock._accept  # type: ignore[attr-defined]
        self.family = int(lsock.family)
        self.type = int(lsock.type)
        self.proto = lsock.proto
        # Bound to one address: every connection's local address is it (no getsockname).
        local = lsock.getsockname()
        host = str(local[0])
        specific = host not in ("0.0.0.0", "::") and not host.startswith("::ffff:")
        self.local: tuple[str, int] | None = (host, int(local[1])) if specific else None
        self.backoff = EMFILE_BACKOFF_MIN
        self.shortage = RateLimitedLog()
        self.timer: asyncio.TimerHandle | None = None
        self.done: asyncio.Future[None] = self.loop.create_future()

    async def run(self) -> None:
        self.loop.add_reader(self.lsock.fileno(), self.ready)
        await self.done

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        else:
            self.loop.remove_reader(self.lsock.fileno())
        if not self.done.done():
            self.done.cancel()

    def ready(self) -> None:
        lsock = self.lsock
        accept = self.accept_raw
        dispatch = self.acceptor.dispatch
        for _ in range(ACCEPT_BATCH):
            try:
                fd, peer = accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if is_local_shortage(exc):
                    self.shortage.warn(
                        log, "listener %s: out of resources accepting (%s); pausing", self.addr, exc
                    )
                    self.loop.remove_reader(lsock.fileno())
                    self.timer = self.loop.call_later(self.backoff, self.resume)
                    self.backoff = min(self.backoff * 2, EMFILE_BACKOFF_MAX)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EINTR):
                    continue
                self.loop.remove_reader(lsock.fileno())
                self.timer = None
                if not self.done.done():
                    self.done.set_exception(exc)
                return
            self.backoff = EMFILE_BACKOFF_MIN
            csock = socket.socket(self.family, self.type, self.proto, fd)
            try:
                csock.setblocking(False)
            except OSError:
                csock.close()
                continue
            dispatch(
                self.addr, csock, (str(peer[0]), int(peer[1])), self.stopping, self.loop, self.local
            )

    def resume(self) -> None:
        self.timer = None
        self.loop.add_reader(self.lsock.fileno(), self.ready)
        self.ready()


class Acceptor:
    """Serves accepted connections with the current generation; tracks them for shutdown."""

    def __init__(self, current: Callable[[], Generation]) -> None:
        self.current = current
        self._tasks: set[asyncio.Task[None]] = set()
        # Connections served from callbacks (tcp.TcpSession) → (listener name, conn_limit key).
        self._sessions: dict[TcpSession, tuple[str, bytes | None]] = {}
        # Connections being served per listener name (across generations), for max_conns.
        self.active: dict[str, int] = {}
        self._refused: dict[str, tuple[float, int]] = {}  # name → (last warning, refused since)

    @property
    def connections(self) -> set[asyncio.Future[None]]:
        """Every connection being served, as something to wait for (shutdown): the tasks, and
        for each connection served from callbacks a future cancelling which cuts it."""
        live: set[asyncio.Future[None]] = set(self._tasks)
        live.update(s.wait() for s in self._sessions)
        return live

    def start(self, addr: str, socks: list[socket.socket]) -> list[asyncio.Task[None]]:
        """Accept on ``socks``; each connection is served by the listener owning ``addr``."""
        loop = asyncio.get_running_loop()
        return [loop.create_task(self._accept_loop(addr, s)) for s in socks]

    async def _accept_loop(self, addr: str, lsock: socket.socket) -> None:
        # Fired when this loop ends (it is cancelled to stop accepting).
        stopping = Signal()
        accepting = _Accepting(self, addr, lsock, stopping)
        try:
            await accepting.run()
        finally:
            accepting.close()
            stopping.fire()

    def dispatch(
        self,
        addr: str,
        csock: socket.socket,
        peer: tuple[str, int],
        stopping: Signal | None,
        loop: asyncio.AbstractEventLoop,
        local: tuple[str, int] | None = None,
    ) -> None:
        """Serve one accepted (non-blocking) connection: from callbacks when nothing needs
        awaiting before its relay starts, else in a task of its own. ``peer``: the address
        accept() returned; ``local``: ours, when the listening socket has only one."""
        try:
            gen = self.current()
            lrt = gen.listeners.get(gen.bind_owner.get(addr, ""))
            if lrt is not None and _served_from_callbacks(lrt):
                self._serve_now(gen, lrt, csock, peer, loop, local)
                return
        except Exception:
            log.exception("listener=%s connection failed", addr)
            csock.close()
            return
        task = loop.create_task(self.serve(addr, csock, stopping))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _serve_now(
        self,
        gen: Generation,
        lrt: ListenerRuntime,
        csock: socket.socket,
        peer: tuple[str, int],
        loop: asyncio.AbstractEventLoop,
        local: tuple[str, int] | None,
    ) -> None:
        """``serve`` for a plain tcp listener, in the accept callback: the same admission
        (max_conns, conn_limit, allow/deny, limits) in the same order, then a TcpSession."""
        name = lrt.config.name
        limit = lrt.config.max_conns
        active = self.active.get(name, 0)
        if limit is not None and active >= limit:
            try:
                self._refuse(gen, lrt, csock)
            finally:
                csock.close()
            return
        self.active[name] = active + 1
        key: bytes | None = None
        started = False
        try:
            try:  # noqa: SIM105 - every connection: no context manager
                csock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            info = _conn_info(csock, lrt, peer, local)
            gate = lrt.conn_gate
            if gate is not None and gate.per_client is not None:
                k = gate.key(info.client[0])
                if not gen.counters.acquire(k, gate.per_client):
                    self._limited(gen, lrt, info, CONN_LIMIT)
                    return
                key = k
            if self._denied(gen, lrt, info) or self._over_limit_now(gen, lrt, info):
                return
            session = start_tcp(gen, lrt, csock, info, self._session_ended, loop)
            if not session.ended:  # else it is over already: released below
                self._sessions[session] = (name, key)
                started = True
        except Exception:
            log.exception("listener=%s connection failed", name)
        finally:
            if not started:
                self._release(gen, name, key, csock)

    def _session_ended(self, session: TcpSession) -> None:
        entry = self._sessions.pop(session, None)
        if entry is None:  # ended inside start_tcp: _serve_now releases it
            return
        self._release(session.gen, entry[0], entry[1], session.csock)

    def _release(self, gen: Generation, name: str, key: bytes | None, csock: socket.socket) -> None:
        self.active[name] -= 1
        if key is not None:
            gen.counters.release(key)
        csock.close()

    async def serve(self, addr: str, csock: socket.socket, stopping: Signal | None = None) -> None:
        name = addr
        try:
            gen = self.current()
            name = gen.bind_owner.get(addr, "")
            lrt = gen.listeners.get(name)
            if lrt is None:
                return
            limit = lrt.config.max_conns
            if limit is not None and self.active.get(name, 0) >= limit:
                self._refuse(gen, lrt, csock)
                return
            self.active[name] = self.active.get(name, 0) + 1
            try:
                await self._serve_admitted(gen, lrt, csock, stopping)
            finally:
                self.active[name] -= 1
        except Exception:
            log.exception("listener=%s connection failed", name)
        finally:
            csock.close()

    async def _serve_admitted(
        self,
        gen: Generation,
        lrt: ListenerRuntime,
        csock: socket.socket,
        stopping: Signal | None = None,
    ) -> None:
        name = lrt.config.name
        with contextlib.suppress(OSError):
            csock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        info = _conn_info(csock, lrt)
        settings = lrt.config.proxy_protocol
        if settings.mode != "off":
            try:
                header = await read_proxy_header(csock, settings, info.peer[0])
            except (ProxyProtocolError, TimeoutError, OSError) as exc:
                reason = str(exc) or "PROXY header not received in time"
                log.warning("listener=%s peer=%s closed: %s", name, info.peer[0], reason)
                return
            if header is not None:
                _apply_proxy_header(info, header)
        gate = lrt.conn_gate
        if gate is None or gate.per_client is None:
            await self._serve_client(gen, lrt, csock, info, stopping)
            return
        # conn_limit.per_client: for the instance, keyed on the client the PROXY header named.
        counters = gen.counters
        key = gate.key(info.client[0])
        if not counters.acquire(key, gate.per_client):
            self._limited(gen, lrt, info, CONN_LIMIT, "-" if lrt.config.mode == "http" else None)
            return
        try:
            await self._serve_client(gen, lrt, csock, info, stopping)
        finally:
            counters.release(key)

    async def _serve_client(
        self,
        gen: Generation,
        lrt: ListenerRuntime,
        csock: socket.socket,
        info: ConnInfo,
        stopping: Signal | None,
    ) -> None:
        name = lrt.config.name
        if lrt.config.mode == "tcp":
            if self._denied(gen, lrt, info) or await self._over_limit(gen, lrt, info):
                return
            # Refused before the TLS handshake (tls on a tcp listener: edge/tcp.py).
            await serve_tcp(gen, lrt, csock, info, handshake_timeout=TLS_HANDSHAKE_TIMEOUT)
            return
        if lrt.config.mode in SERVICE_MODES:
            await self._serve_egress(gen, lrt, csock, info)
            return
        if lrt.tls is not None and (lrt.passthrough or lrt.config.tunnel):
            try:
                hello = await peek_client_hello(csock)
            except (ClientHelloError, TimeoutError, OSError) as exc:
                reason = str(exc) or "no ClientHello in time"
                log.info("listener=%s client=%s closed: %s", name, info.client[0], reason)
                return
            if lrt.config.tunnel and not TUNNEL_ALPNS.isdisjoint(hello.alpn):
                # An agent on the sites' port (``tunnel = true``): the tunnel's own TLS (its
                # CA, a client certificate required), so no site client is asked for one.
                await self._serve_egress(gen, lrt, csock, info)
                return
            if hello.server_name is not None and lrt.passthrough:
                entry = match_passthrough(lrt.passthrough, hello.server_name)
                if entry is not None:
                    info.sni = hello.server_name
                    if self._denied(gen, lrt, info) or await self._over_limit(gen, lrt, info):
                        return
                    pattern, pool = entry
                    await serve_passthrough(gen, lrt, csock, info, pattern=pattern, pool=pool)
                    return
        await self._serve_http(gen, lrt, csock, info, stopping)

    async def _serve_egress(
        self, gen: Generation, lrt: ListenerRuntime, csock: socket.socket, info: ConnInfo
    ) -> None:
        """``mode = "forward"`` / ``"socks5"`` / ``"tunnel"``: the edge policy of the listener,
        then the service the runtime plugged in (egress/, tunnel/)."""
        if self._denied(gen, lrt, info) or await self._over_limit(gen, lrt, info):
            return
        service = lrt.service
        if service is None:
            log.error("listener=%s mode %s has no service", lrt.config.name, lrt.config.mode)
            return
        await service.serve(
            csock,
            client=info.client,
            peer=info.peer[0],
            authority=info.authority,
            vpce=info.vpce,
            access_log=gen.access_log,
            metrics=gen.metrics,
        )

    @staticmethod
    def _denied(gen: Generation, lrt: ListenerRuntime, info: ConnInfo) -> bool:
        """allow/deny of a connection relayed unread (TCP mode, TLS passthrough): refused
        ones are closed before any byte goes anywhere. HTTP requests are checked one by one
        in the exchange (a trusted X-Forwarded-For may name the client)."""
        acl = lrt.access
        if acl is None or acl.permits(info.client[0]):
            return False
        log.info("listener=%s client=%s closed: %s", lrt.config.name, info.client[0], DENY)
        record_denied(gen, lrt, info, DENY, method=_refused_method(lrt))
        return True

    async def _over_limit(self, gen: Generation, lrt: ListenerRuntime, info: ConnInfo) -> bool:
        """The listener's ``limits`` on a connection relayed unread (TCP mode, TLS
        passthrough): new connections per client; over the limit it is closed unread."""
        limits = lrt.limits
        if limits is None or limits.local:
            return self._over_limit_now(gen, lrt, info)
        refusal = await limits.check_async(gen.counters, info.client[0])
        if refusal is None:
            return False
        self._limited(gen, lrt, info, refusal.reason)
        return True

    def _over_limit_now(self, gen: Generation, lrt: ListenerRuntime, info: ConnInfo) -> bool:
        """``_over_limit`` for limits the instance keeps (no wait)."""
        limits = lrt.limits
        if limits is None:
            return False
        refusal = limits.check(gen.counters, info.client[0])
        if refusal is None:
            return False
        self._limited(gen, lrt, info, refusal.reason)
        return True

    @staticmethod
    def _limited(
        gen: Generation,
        lrt: ListenerRuntime,
        info: ConnInfo,
        reason: str,
        method: str | None = None,
    ) -> None:
        log.info("listener=%s client=%s closed: %s", lrt.config.name, info.client[0], reason)
        if method is None:
            method = _refused_method(lrt)
        record_denied(gen, lrt, info, reason, status=STATUS_LIMITED, method=method)

    def _refuse(self, gen: Generation, lrt: ListenerRuntime, csock: socket.socket) -> None:
        """Close a connection over ``max_conns`` at once: one access-log line, few warnings."""
        name = lrt.config.name
        record_refused(gen, lrt, _conn_info(csock, lrt))
        now = time.monotonic()
        last, count = self._refused.get(name, (0.0, 0))
        count += 1
        if now - last >= REFUSED_LOG_INTERVAL:
            log.warning(
                "listener=%s full (max_conns %s): %d connection(s) refused",
                name,
                lrt.config.max_conns,
                count,
            )
            self._refused[name] = (now, 0)
        else:
            self._refused[name] = (last, count)

    async def _serve_http(
        self,
        gen: Generation,
        lrt: ListenerRuntime,
        csock: socket.socket,
        info: ConnInfo,
        stopping: Signal | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        h2c = False
        if lrt.tls is None and lrt.config.h2c:
            try:
                h2c = await peek_preface(csock, timeout=gen.config.global_.header_timeout)
            except (TimeoutError, OSError):
                return
        conn = ConnIO(loop)
        ctx = lrt.tls.context if lrt.tls is not None else None
        tls_config = lrt.config.tls
        try:
            if ctx is not None and tls_config is not None:
                transport = await accept_tls(
                    csock, lambda: conn, ctx, tls_config, TLS_HANDSHAKE_TIMEOUT
                )
            else:
                transport, _ = await loop.connect_accepted_socket(lambda: conn, csock)
        except (ssl.SSLError, ConnectionError, OSError, TimeoutError) as exc:
            log.debug(
                "listener=%s client=%s TLS handshake failed: %s",
                lrt.config.name,
                info.client[0],
                exc,
            )
            return
        if ctx is not None:
            sslobj = transport.get_extra_info("ssl_object")
            if sslobj is not None:
                info.sni = server_name_of(sslobj)
                info.alpn = sslobj.selected_alpn_protocol() or ""
                info.tls_version = sslobj.version() or ""
                if lrt.tls is not None and lrt.tls.store.client_auth is not None:
                    info.client_subject = client_subject(sslobj)
        if h2c or info.alpn == "h2":
            reader, writer = conn.as_streams(STREAM_LIMIT)
            await Http2Connection(
                reader, writer, generation=gen, listener=lrt, info=info, stopping=stopping
            ).run()
            return
        await HttpConnection(conn, generation=gen, listener=lrt, info=info).run()


async def peek_preface(sock: socket.socket, *, timeout: float) -> bool:
    """Whether the connection starts with the HTTP/2 preface (prior knowledge h2c), decided on
    the first byte that differs from it; nothing is consumed. False at end of stream."""
    lowat_set = False
    try:
        async with asyncio.timeout(timeout):
            seen = 0
            while True:
                data = await peek(sock, len(PREFACE))
                if not data or not PREFACE.startswith(data):
                    return False
                if len(data) == len(PREFACE):
                    return True
                if len(data) == seen and _peer_closed(sock):
                    return False
                seen = len(data)
                lowat_set = await _wait_for_more(sock, seen) or lowat_set
    finally:
        if lowat_set:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)


# Listener modes served by egress/ (through ``ListenerRuntime.service``).
EGRESS_MODES = ("forward", "socks5")
# Every mode served beside the edge: egress/'s, and tunnel/'s agents dialling in.
SERVICE_MODES = (*EGRESS_MODES, "tunnel")


def _refused_method(lrt: ListenerRuntime) -> str | None:
    """The access-log method of a connection the edge policy closed unread: the mode's name
    on an egress listener, else edge/tcp.py's default (TCP, TLS-PASSTHROUGH)."""
    mode = lrt.config.mode
    return mode.upper() if mode in SERVICE_MODES else None


def _conn_info(
    csock: socket.socket,
    lrt: ListenerRuntime,
    peer: tuple[str, int] | None = None,
    local: tuple[str, int] | None = None,
) -> ConnInfo:
    """The facts of an accepted connection; ``peer``, ``local``: the addresses when known."""
    try:
        if local is None:
            local = csock.getsockname()
        if peer is None:
            peer = csock.getpeername()
    except OSError:
        peer = local = ("", 0)
    p = (str(peer[0]), int(peer[1]))
    d = (str(local[0]), int(local[1]))
    return ConnInfo(
        peer=p, client=p, local=d, destination=d, local_port=d[1], tls=lrt.tls is not None
    )


def _apply_proxy_header(info: ConnInfo, header: pp.ProxyHeader) -> None:
    """The header's source becomes the client identity (DESIGN decision 5)."""
    if (
        header.command is pp.Command.PROXY
        and header.family in (pp.Family.TCP4, pp.Family.TCP6)
        and header.source is not None
    ):
        src_ip = header.source[0]
        if src_ip.startswith("::ffff:") and "." in src_ip:
            src_ip = src_ip[7:]
        info.client = (src_ip, header.source[1])
        if header.destination is not None:
            info.destination = header.destination
    info.proxy = header
    info.authority = header.authority or ""
    info.vpce = header.aws_vpce_id or ""
