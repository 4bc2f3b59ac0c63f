"""Backend-side connections: connect (with retry over the pool), PROXY header out, TLS,
keep-alive, and the origin side of an exchange (``OriginStream``).

Rule of this room: a connection attempt that failed sent nothing, so any request may move to
the next server; a pooled keep-alive connection is reused only when the last exchange on it
completed cleanly. Connections that carry a PROXY header belong to one client identity and
are pooled under it, never shared with another client.

TLS to origins (``pool.tls``): the PROXY header (if any) goes first, in clear, then the
handshake; the certificate is verified against ``tls.ca`` or the system's store, for the name
``tls.sni`` or else the server's host name (an IP literal is checked against the certificate's
IP addresses); ``tls.cert``/``tls.key`` is the client certificate shown to an origin that asks
for one. A handshake that fails is a failed connect: the next server is tried and
passive health counts it. ALPN offers ``h2`` to ``protocol = "h2"`` pools, ``http/1.1`` to the
others. HTTP/2 origins (``h2``, ``h2c``) are multiplexed: see ``dial_h2.py``.

A pool's ``source`` binds every connection to its servers (HTTP, HTTP/2, TCP, passthrough)
to one of those local addresses, of the server address's family, in turn (``SourceAddresses``):
the port-mapping recipe of docs/egress.md, where a database allowlists the proxy's static
address. An address of a family with no source is skipped, and a server left with none fails
its connect saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import ipaddress
import logging
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from revproxy.config.model import H2Settings, PoolTLS
from revproxy.errors import (
    BackendUnreachable,
    LocalResourceError,
    NoBackendAvailable,
    is_local_shortage,
)
from revproxy.net.conn_io import ConnIO, Sink
from revproxy.net.relay import ByteReader, ByteWriter
from revproxy.proto.events import Event, Headers, MessageEnded
from revproxy.proto.http1.api import H1ClientAPI
from revproxy.proto.http1.exact import H1Client
from revproxy.upstream.backend import Backend, PickContext
from revproxy.upstream.h2_origins import H2Origins
from revproxy.upstream.pool import Pool
from revproxy.upstream.tunnel_paths import TunnelFlow, TunnelPaths

log = logging.getLogger("revproxy.dial")

# Read size for backend sockets: large enough to move a 1 MiB body in few loop turns.
READ_SIZE = 256 * 1024
# asyncio's default stream limit is 64 KiB; lines are never read with readline here.
STREAM_LIMIT = 1024 * 1024

StreamPair = tuple[asyncio.StreamReader, asyncio.StreamWriter]
# Picks ``pooled_conn`` keeps for the general exchange at most (each is taken a loop turn
# later; more means connections went away between the two).
_KEPT_MAX = 1024
# IP_BIND_ADDRESS_NO_PORT (linux/in.h): Python names it from 3.12 on.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def origin_tls_context(tls: PoolTLS, protocol: str) -> ssl.SSLContext:
    """The client context for a pool's TLS: verification as configured, ALPN by protocol."""
    if tls.verify:
        ctx = ssl.create_default_context(cafile=str(tls.ca) if tls.ca else None)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["h2"] if protocol == "h2" else ["http/1.1"])
    if tls.cert is not None and tls.key is not None:
        # Presented only when an origin asks (CertificateRequest); config/pool.py checked the
        # pair, so a failure here means the files changed since.
        try:
            ctx.load_cert_chain(tls.cert, tls.key)
        except ssl.SSLError as exc:
            raise ValueError(f"OpenSSL refuses {tls.cert} with {tls.key}: {exc.reason}") from None
        except OSError as err:
            raise ValueError(f"{err.filename or tls.cert} cannot be read: {err.strerror}") from None
    return ctx


def describe_failure(exc: BaseException) -> str:
    """A connect failure as operators read it (TLS reasons spelled out)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, SourceAddressError):
        return str(exc)
    return type(exc).__name__


class SourceAddressError(OSError):
    """A connection could not leave from the pool's ``source``: no source address of the
    server's family, or one that cannot be bound (not an address of this host)."""

    def __str__(self) -> str:
        return str(self.strerror)


class SourceAddresses:
    """A pool's ``source``: the local address of each new connection, by the family of the
    address it goes to, rotating round-robin when a family has several."""

    __slots__ = ("_by_family", "_turn", "addresses")

    def __init__(self, addresses: Sequence[str] = ()) -> None:
        self.addresses = tuple(addresses)
        self._by_family: dict[int, tuple[str, ...]] = {}
        for address in self.addresses:
            version = ipaddress.ip_address(address).version
            family = int(socket.AF_INET6 if version == 6 else socket.AF_INET)
            self._by_family[family] = (*self._by_family.get(family, ()), address)
        self._turn = dict.fromkeys(self._by_family, 0)

    def __bool__(self) -> bool:
        return bool(self.addresses)

    def has(self, family: int) -> bool:
        return int(family) in self._by_family

    def pick(self, family: int, target: str) -> str:
        """The next source of ``family`` (SourceAddressError when there is none; ``target``
        names the server address for the message)."""
        options = self._by_family.get(int(family))
        if not options:
            raise self.missing(family, target)
        turn = self._turn[int(family)]
        self._turn[int(family)] = turn + 1
        return options[turn % len(options)]

    def missing(self, family: int, target: str) -> SourceAddressError:
        """The error of a connection to ``target`` whose family has no source."""
        version = 6 if family == socket.AF_INET6 else 4
        return SourceAddressError(
            errno.EAFNOSUPPORT,
            f"{target} is an IPv{version} address and the pool has no IPv{version} source "
            f"(source = {list(self.addresses)})",
        )

    def bind(self, sock: socket.socket, family: int, target: str) -> str:
        """Bind ``sock`` (of ``family``) to the next source; the address bound."""
        source = self.pick(family, target)
        # The port is chosen at connect time, for the 4-tuple: a bound source is not limited
        # to one set of ephemeral ports shared by every server (Linux 4.2+; else ignored).
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        try:
            sock.bind((source, 0))
        except OSError as exc:
            raise SourceAddressError(
                exc.errno or errno.EADDRNOTAVAIL,
                f"cannot leave from source {source} toward {target}: {exc.strerror or exc}",
            ) from None
        return source


class OriginStream(Protocol):
    """The backend side of one exchange (HTTP/1.1: ``H1Origin``; HTTP/2: dial_h2.py)."""

    backend: Backend
    reused: bool  # on a connection that served before: it may have closed meanwhile
    refused: bool  # the origin refused it unprocessed (HTTP/2): any request may go again
    upgrading: bool  # the request asked to switch to WebSocket
    bytes_read: int  # response bytes received (0: nothing came back yet)
    events: deque[Event]  # parsed and not yet taken
    # When ``next`` must wait, it waits until this loop time at most, then raises
    # TimeoutError (None: no limit).
    deadline: float | None

    def send_head(
        self,
        method: bytes,
        target: bytes,
        authority: bytes,
        scheme: bytes,
        headers: Headers,
        *,
        end: MessageEnded | None,
        upgrade: bool,
    ) -> None:
        """Send the request head (and its end, when ``end`` says the body is empty)."""
        ...

    async def next(self) -> Event:
        """The next response event; the chunk taken before is taken as consumed."""
        ...

    async def send_data(self, data: bytes) -> None: ...

    async def send_end(self, trailers: Headers) -> None: ...

    def follow(self, sink: Sink) -> None:
        """The response is relayed to ``sink``, the client's connection: read from the origin
        no further ahead than it takes (conn_io.py, pacing) until ``finish``."""
        ...

    def finish(self, complete: bool) -> None:
        """The exchange is over (``complete``: both messages ended cleanly)."""
        ...

    def take_over(self) -> tuple[ByteReader, ByteWriter, bytes] | None:
        """After a 101: the raw connection and the bytes read past the 101 head."""
        ...


class H1Origin:
    """An HTTP/1.1 exchange on one backend connection."""

    __slots__ = (
        "backend",
        "bytes_read",
        "conn",
        "deadline",
        "dialer",
        "eof",
        "events",
        "parser",
        "refused",
        "reused",
        "upgrading",
    )

    def __init__(self, dialer: Dialer, conn: BackendConnection, max_header_size: int) -> None:
        self.dialer = dialer
        self.conn = conn
        self.backend = conn.backend
        self.reused = conn.reused
        self.refused = False
        self.upgrading = False
        # A pooled connection keeps its parser from one exchange to the next.
        parser = conn.parser
        if parser is None:
            parser = dialer.h1_client(max_header_size=max_header_size)
        else:
            conn.parser = None
        self.parser = parser
        self.events: deque[Event] = deque()
        self.bytes_read = 0
        self.eof = False
        self.deadline: float | None = None  # see OriginStream

    def send_head(
        self,
        method: bytes,
        target: bytes,
        authority: bytes,
        scheme: bytes,
        headers: Headers,
        *,
        end: MessageEnded | None,
        upgrade: bool,
    ) -> None:
        self.upgrading = upgrade
        if upgrade and method == b"CONNECT":
            method = b"GET"  # RFC 8441 extended CONNECT, as the HTTP/1.1 handshake (RFC 6455)
        data = self.parser.send_request(method, target, headers)
        if end is not None:
            data += self.parser.send_end(end.trailers)
        self.conn.io.write_soon(data)  # with the other writes of this loop turn

    async def next(self) -> Event:
        while not self.events:
            if self.eof:
                raise ConnectionResetError("peer closed the connection")
            data = await self.conn.io.read(READ_SIZE, self.deadline)
            if not data:
                self.eof = True
            self.bytes_read += len(data)
            self.events.extend(self.parser.receive_data(data))
        return self.events.popleft()

    async def send_data(self, data: bytes) -> None:
        io = self.conn.io
        io.write(self.parser.send_data(data))
        await io.drain()

    async def send_end(self, trailers: Headers) -> None:
        io = self.conn.io
        io.write(self.parser.send_end(trailers))
        await io.drain()

    def follow(self, sink: Sink) -> None:
        self.conn.io.follow(sink)

    def finish(self, complete: bool) -> None:
        self.conn.io.follow(None)
        reusable = complete and self.parser.reusable
        if reusable:
            self.parser.start_next_cycle()
            self.conn.parser = self.parser
        self.dialer.release(self.conn, reusable)

    def take_over(self) -> tuple[ConnIO, ConnIO, bytes] | None:
        # finish(False) closes the connection once the tunnel is over: it is never pooled.
        io = self.conn.io
        io.follow(None)  # a tunnel reads by its own rule
        return io, io, self.parser.trailing_data


@dataclass(eq=False, slots=True)
class BackendConnection:
    """An HTTP/1.1 connection to a backend, kept in the dialer's pool between exchanges."""

    backend: Backend
    io: ConnIO
    identity: bytes | None  # PROXY header it was opened with (None: shareable)
    reused: bool = False
    last_used: float = field(default_factory=time.monotonic)
    parser: H1ClientAPI | None = None  # ready for the next exchange

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.io.close()

    @property
    def alive(self) -> bool:
        # Bytes from the origin between exchanges answer nothing: the connection is not reused.
        io = self.io
        return not (io.buffered or io.at_eof() or io.is_closing())


class Dialer:
    """Opens and keeps connections to the servers of one pool."""

    def __init__(
        self,
        pool: Pool,
        *,
        connect_timeout: float,
        idle_timeout: float,
        keepalive: int,
        protocol: str = "http1",
        tls: PoolTLS | None = None,
        h2: H2Settings | None = None,
        max_header_size: int = 16384,
        h1_client: type[H1ClientAPI] = H1Client,
        tunnels: TunnelPaths | None = None,
        source: Sequence[str] = (),
    ) -> None:
        self.pool = pool
        # pool.source: the local addresses connections to the servers leave from.
        self.source = SourceAddresses(source)
        # Tunnel servers are reached through the agent connections of this process.
        self.tunnels = tunnels
        for backend in pool.backends:
            if backend.tunnel is not None:
                if tunnels is None:
                    backend.linked = False
                else:
                    tunnels.watch(backend)
        self.h1_client = h1_client
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.keepalive = keepalive
        self.protocol = protocol
        self.max_header_size = max_header_size
        self.tls = tls
        self.ssl = origin_tls_context(tls, protocol) if tls is not None else None
        self._idle: dict[tuple[int, bytes | None], deque[BackendConnection]] = {}
        # Servers picked by ``pooled_conn`` that had no idle connection, by the id of the
        # pick context: the exchange the request goes to next takes them (``pooled_stream``).
        self._kept: dict[int, tuple[PickContext, Backend]] = {}
        # Passive health (health.py): told of every failed connect, and of the first success
        # after failures; None when nobody listens.
        self.observer: Callable[[Backend, bool], None] | None = None
        self.h2: H2Origins | None = None
        if protocol != "http1":
            self.h2 = H2Origins(self, h2 or H2Settings())

    def _observe(self, backend: Backend, ok: bool) -> None:
        """Count a connect result on ``backend`` and tell passive health about it."""
        if ok:
            had_failures = backend.failures > 0
            backend.failures = 0
            if had_failures and self.observer is not None:
                self.observer(backend, True)
            return
        backend.failures += 1
        if self.observer is not None:
            self.observer(backend, False)

    def _take_idle(self, backend: Backend, identity: bytes | None) -> BackendConnection | None:
        q = self._idle.get((id(backend), identity))
        now = time.monotonic()
        while q:
            conn = q.pop()
            if conn.alive and now - conn.last_used < self.idle_timeout:
                conn.reused = True
                return conn
            conn.close()
        return None

    def release(self, conn: BackendConnection, reusable: bool) -> None:
        """Give a connection back after an exchange; it is closed unless it can carry another."""
        if not reusable or not conn.alive or self.keepalive <= 0:
            conn.close()
            return
        key = (id(conn.backend), conn.identity)
        q = self._idle.setdefault(key, deque())
        if len(q) >= self.keepalive:
            q.popleft().close()
        conn.last_used = time.monotonic()
        q.append(conn)

    async def open(
        self, backend: Backend, identity: bytes | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """``open_conn``, as streams (HTTP/2 origins read a ``StreamReader``)."""
        io = await self.open_conn(backend, identity)
        return io.as_streams(STREAM_LIMIT)

    async def open_conn(self, backend: Backend, identity: bytes | None = None) -> ConnIO:
        """A connection to ``backend`` (each resolved address in turn): TCP, the PROXY
        header, then TLS when the pool has it (a tunnel server: a stream to its agent)."""
        loop = asyncio.get_running_loop()
        targets = backend.addresses or ((backend.host, backend.port),)
        if backend.tunnel is not None:
            targets = (("", 0),)
        last: Exception | None = None
        for host, port in targets:
            io = ConnIO(loop)
            try:
                if backend.tunnel is not None:
                    io = await self._tunnel_conn(backend)
                    transport = io.transport
                    assert transport is not None
                elif self.source:
                    async with asyncio.timeout(self.connect_timeout):
                        sock = await connect_from_source(self.source, host, port)
                        factory = functools.partial(_same, io)
                        try:
                            transport, _ = await loop.create_connection(factory, sock=sock)
                        except BaseException:
                            sock.close()
                            raise
                else:
                    async with asyncio.timeout(self.connect_timeout):
                        factory = functools.partial(_same, io)
                        transport, _ = await loop.create_connection(factory, host, port)
            except (OSError, TimeoutError) as exc:
                _raise_if_local(exc)
                last = exc
                continue
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if identity:
                io.write(identity)
            if self.ssl is not None:
                sni = (self.tls.sni if self.tls is not None else None) or backend.server_name
                try:
                    async with asyncio.timeout(self.connect_timeout):
                        tls = await loop.start_tls(transport, io, self.ssl, server_hostname=sni)
                except BaseException:
                    transport.close()
                    raise
                if tls is None:
                    transport.close()
                    raise ConnectionResetError("TLS handshake: connection closed")
                io.set_transport(tls)
            return io
        raise last or OSError("no address")

    async def _tunnel_conn(self, backend: Backend) -> ConnIO:
        if self.tunnels is None:
            raise ConnectionRefusedError("no tunnel hub in this process")
        return await self.tunnels.open_conn(backend, self.connect_timeout)

    def failed(self, backend: Backend, exc: BaseException) -> None:
        """A connect to ``backend`` failed: passive health hears of it, operators too."""
        self._observe(backend, False)
        log.warning(
            "backend connect failed pool=%s backend=%s reason=%s",
            self.pool.name,
            backend.label,
            describe_failure(exc),
        )

    def connected(self, backend: Backend) -> None:
        self._observe(backend, True)

    def pooled_stream(
        self, ctx: PickContext, identity: bytes | None = None
    ) -> tuple[Backend | None, H1Origin | None]:
        """HTTP/1.1 pools: the server the pool picks, and an exchange on its pooled
        connection when it has one (no coroutine, no wait); else pass the server to
        ``open_stream`` as ``first``. HTTP/2 pools: (None, None), ``open_stream`` does it all."""
        if self.h2 is not None:
            return None, None
        kept = self._kept.pop(id(ctx), None) if self._kept else None
        backend = kept[1] if kept is not None and kept[0] is ctx else self.pool.pick(ctx)
        if backend is None:
            return None, None
        conn = self._take_idle(backend, identity)
        if conn is None:
            return backend, None
        return backend, H1Origin(self, conn, self.max_header_size)

    def pooled_conn(
        self, ctx: PickContext, identity: bytes | None = None
    ) -> tuple[Backend | None, BackendConnection | None]:
        """``pooled_stream`` for a caller that drives the connection itself (the plain
        exchange, edge/fast_exchange.py; HTTP/1.1 pools only): the server the pool picks and
        its idle connection (a tunnel server's: a kept-alive stream). A server picked without
        one is kept for ``ctx``: the next ``pooled_stream(ctx)`` takes it instead of picking
        again, so a request handed on to the general exchange is balanced once."""
        backend = self.pool.pick(ctx)
        if backend is None:
            return None, None
        conn = self._take_idle(backend, identity)
        if conn is None:
            kept = self._kept
            if len(kept) >= _KEPT_MAX:  # picks nobody came for (a connection torn down)
                kept.clear()
            kept[id(ctx)] = (ctx, backend)
        return backend, conn

    async def open_stream(
        self,
        ctx: PickContext,
        *,
        identity: bytes | None = None,
        fresh: bool = False,
        first: Backend | None = None,
    ) -> OriginStream:
        """The backend side of one exchange, on a server the pool picks (connect retries
        move to the next server; ``fresh`` skips pooled connections; ``first``: the server
        already picked)."""
        if self.h2 is not None:
            return await self.h2.open_stream(ctx, identity=identity, fresh=fresh)
        conn = await self.connect(ctx, fresh=fresh, identity=identity, first=first)
        return H1Origin(self, conn, self.max_header_size)

    async def connect(
        self,
        ctx: PickContext,
        *,
        identity: bytes | None = None,
        exclude: set[Backend] | None = None,
        fresh: bool = False,
        first: Backend | None = None,
    ) -> BackendConnection:
        """A connection to an available server, trying the next one when a connect fails
        (``first``: the server to try first, already picked)."""
        tried: set[Backend] = set(exclude or ())
        attempts = 0
        while True:
            backend: Backend | None = first
            if backend is not None:
                first = None
            else:
                backend = self.pool.pick(ctx, exclude=tried)
            if backend is None:
                if attempts == 0 and not tried:
                    raise NoBackendAvailable(f"pool {self.pool.name}: no server available")
                raise BackendUnreachable(f"pool {self.pool.name}: every server failed")
            if not fresh:
                idle = self._take_idle(backend, identity)
                if idle is not None:
                    return idle
            attempts += 1
            try:
                io = await self.open_conn(backend, identity)
            except (OSError, TimeoutError) as exc:
                self.failed(backend, exc)
                tried.add(backend)
                continue
            self._observe(backend, True)
            # A tunnel server's stream rides an agent connection that was already open and
            # may have died since (SIGKILLed agent): like a reused keep-alive connection, an
            # idempotent request that got no answer byte may go again (RFC 9110 §9.2.2).
            return BackendConnection(backend, io, identity, reused=backend.tunnel is not None)

    # --- raw sockets (L4 tunnels, TLS passthrough) --------------------------------------------

    async def _open_socket(self, backend: Backend) -> socket.socket | TunnelFlow:
        """A connected non-blocking socket to ``backend`` (each resolved address in turn; a
        tunnel server: a stream to its expose, which the tunnel relays itself)."""
        if backend.tunnel is not None:
            if self.tunnels is None:
                raise ConnectionRefusedError("no tunnel hub in this process")
            return await self.tunnels.open_flow(backend, self.connect_timeout)
        targets = backend.addresses or ((backend.host, backend.port),)
        last: Exception | None = None
        for host, port in targets:
            try:
                async with asyncio.timeout(self.connect_timeout):
                    sock = await connect_from_source(self.source, host, port)
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return sock
            except (OSError, TimeoutError) as failure:
                _raise_if_local(failure)
                last = failure
        raise last or OSError("no address")

    async def connect_socket(
        self,
        ctx: PickContext,
        *,
        identity: bytes | None = None,
        exclude: set[Backend] | None = None,
    ) -> tuple[Backend, socket.socket | TunnelFlow]:
        """A raw connected socket to an available server, trying the next one on failure (a
        tunnel server: its ``TunnelFlow``, which relays the client's socket itself).

        Same retry and passive-failure accounting as ``connect``; the connection is never
        pooled. ``identity`` (a PROXY header) is sent before anything else. The caller owns
        the socket (or flow) and counts it on the backend (``acquire``/``release``).
        """
        tried: set[Backend] = set(exclude or ())
        attempts = 0
        loop = asyncio.get_running_loop()
        while True:
            backend = self.pool.pick(ctx, exclude=tried)
            if backend is None:
                if attempts == 0 and not tried:
                    raise NoBackendAvailable(f"pool {self.pool.name}: no server available")
                raise BackendUnreachable(f"pool {self.pool.name}: every server failed")
            attempts += 1
            try:
                sock = await self._open_socket(backend)
                if identity:
                    try:
                        async with asyncio.timeout(self.connect_timeout):
                            if isinstance(sock, socket.socket):
                                await loop.sock_sendall(sock, identity)
                            else:
                                await sock.send(identity)
                    except BaseException:
                        sock.close()
                        raise
            except (OSError, TimeoutError) as exc:
                self._observe(backend, False)
                log.warning(
                    "backend connect failed pool=%s backend=%s reason=%s",
                    self.pool.name,
                    backend.label,
                    describe_failure(exc),
                )
                tried.add(backend)
                continue
            self._observe(backend, True)
            return backend, sock

    def close_idle(self) -> None:
        """Close idle connections (HTTP/2 ones once their streams are done): the generation
        this dialer belongs to was retired."""
        for q in self._idle.values():
            while q:
                q.pop().close()
        self._idle.clear()
        if self.h2 is not None:
            self.h2.close_idle()


def _same(io: ConnIO) -> ConnIO:
    """The protocol factory of a connection whose protocol exists already."""
    return io


def _shown(addr: tuple[str, int]) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@functools.lru_cache(maxsize=1024)
def _ip_family(host: str) -> int | None:
    """AF_INET / AF_INET6 for an IP literal, None for a name (cached: once per backend)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


async def connect_from_source(
    source: SourceAddresses, host: str, port: int, *, bound: list[str] | None = None
) -> socket.socket:
    """A socket bound to the next ``source`` address of the family of each address of
    ``host`` in turn (not bound when ``source`` is empty), connected (non-blocking): the rule
    of a pool's connections, raw ones and its health checks. Each source bound is appended to
    ``bound``; a connect that failed for want of our own resources raises LocalResourceError
    at once. The caller bounds the wait."""
    loop = asyncio.get_running_loop()
    last: OSError | None = None
    for family, addr in await _socket_addresses(loop, host, port):
        if source and not source.has(family):
            last = last or source.missing(family, _shown(addr))
            continue
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if source:
                chosen = source.bind(sock, family, _shown(addr))
                if bound is not None:
                    bound.append(chosen)
            await loop.sock_connect(sock, addr)
        except BaseException as exc:
            sock.close()
            if not isinstance(exc, OSError):
                raise
            _raise_if_local(exc)
            last = exc
            continue
        return sock
    raise last or OSError(f"{host}: no address")


async def _socket_addresses(
    loop: asyncio.AbstractEventLoop, host: str, port: int
) -> list[tuple[int, tuple[str, int]]]:
    """(family, address) pairs to connect to; IP literals skip the resolver's thread."""
    family = _ip_family(host)
    if family is None:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return [(int(i[0]), (str(i[4][0]), int(i[4][1]))) for i in infos]
    return [(family, (host, port))]


def _raise_if_local(exc: BaseException) -> None:
    """A connect that failed for want of our own resources (EMFILE, ...) says nothing about
    the server: it is not counted against it, and no other server is tried (they would fail
    alike)."""
    if is_local_shortage(exc):
        raise LocalResourceError(f"out of resources connecting to origins: {exc}") from exc
