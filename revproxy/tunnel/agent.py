"""``revproxy agent``: the origin host's side of the reverse tunnel (docs/tunnel.md).

Rule of this room: the agent only ever dials out. For each proxy instance in ``server`` it
keeps, to each serving process there (the proxy's hello names the worker a connection
reached), ``connections`` shared connections and ``spare`` connections ready for one TCP flow
each; a connection that reached a process which has its share already is closed and dialled
again. Over each connection the agent is the HTTP/2 server: every stream the proxy opens names
an expose, and its bytes are relayed to that expose's target. A connection that fails is
dialled again after a capped, jittered back-off that never gives up; every change of state is
logged. Stopping (SIGTERM) sends GOAWAY first, lets the streams in flight finish and closes
idle ones, so that the proxy moves new requests to other agents without a failure. Its
``[[forward]]`` ports (egress over the tunnel) are ``tunnel/egress.py``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import secrets
import socket
import ssl
import time
from dataclasses import dataclass, field

from revproxy.config.agent import AgentConfig
from revproxy.errors import H2_NO_ERROR, RevproxyError
from revproxy.net.h2_channel import H2Link, close_writer
from revproxy.proto.events import GoAwayReceived, PingAcknowledged, RequestReceived
from revproxy.proto.h2.frames import PREFACE
from revproxy.proto.h2.server import H2Server
from revproxy.proto.tunnel import (
    EGRESS_ALPN,
    HELLO_PATH,
    STREAM_PROTOCOL,
    Expose,
    Hello,
    Liveness,
    Role,
    TunnelFormatError,
    backoff,
    expose_of_path,
    parse_worker,
)
from revproxy.tunnel.ca import SERVER_NAME
from revproxy.tunnel.egress import Forwarder
from revproxy.tunnel.enrol import Credentials
from revproxy.tunnel.link import FRAME_SIZE
from revproxy.tunnel.stream import (
    ChannelRelay,
    TransportRelay,
    TunnelChannel,
    frames_in,
    open_channel,
)
from revproxy.tunnel.wire import LinkProtocol, LinkWriter

log = logging.getLogger("revproxy.agent")

CONNECT_TIMEOUT = 10.0
TARGET_TIMEOUT = 5.0
# Stopping: streams in flight have this long to finish.
DRAIN_TIMEOUT = 10.0
# Stopping: a stream with no byte either way for this long is idle and closed.
IDLE_AT_STOP = 0.3
# A connection that reached a process with its share: dial again after about this long.
SURPLUS_DELAY = 0.2


@dataclass
class _Shares:
    """The connections held to each serving process of one proxy instance."""

    workers: int = 1
    held: dict[tuple[int, Role], set[int]] = field(default_factory=dict)

    def take(self, worker: int, role: Role, want: int) -> int | None:
        slots = self.held.setdefault((worker, role), set())
        for slot in range(want):
            if slot not in slots:
                slots.add(slot)
                return slot
        return None

    def give_back(self, worker: int, role: Role, slot: int) -> None:
        self.held.get((worker, role), set()).discard(slot)


class AgentConnection(H2Link):
    """One connection to the proxy, the agent as the HTTP/2 server."""

    def __init__(
        self,
        agent: Agent,
        shares: _Shares,
        server: str,
        wire: LinkProtocol,
        writer: LinkWriter,
    ) -> None:
        cfg = agent.config
        proto = H2Server(
            max_concurrent_streams=1000,
            initial_window_size=cfg.stream_window,
            max_frame_size=FRAME_SIZE,
            max_resets_per_second=10000,
            max_control_frames_per_second=100000,
        )
        # H2Link keeps a reader for the links that read one; this one's reads are the wire's.
        super().__init__(proto, asyncio.StreamReader(), writer)
        self.wire = wire
        self.h2: H2Server = proto
        self.agent = agent
        self.shares = shares
        self.server = server
        self.role: Role | None = None
        self.worker = 0
        self.slot = 0
        self.liveness = Liveness(cfg.ping_interval, cfg.ping_misses, time.monotonic())
        self.tasks: set[asyncio.Task[None]] = set()
        self.activity: dict[int, float] = {}

    async def run(self) -> None:
        """Every read is handled as it arrives (``_received``, called by the wire); this waits
        for the end of the connection."""
        self.flush()
        pinger = asyncio.get_running_loop().create_task(self._ping())
        try:
            self.wire.attach(self._received)
            failure = await self.wire.finished
            if isinstance(failure, RevproxyError):
                log.warning("server=%s HTTP/2 error: %s", self.server, failure)
            elif isinstance(failure, (ConnectionError, OSError, TimeoutError)):
                log.debug("server=%s connection ended: %s", self.server, failure)
            elif failure is not None:
                log.error("server=%s connection failed", self.server, exc_info=failure)
        finally:
            self.wire.stop()
            pinger.cancel()
            self.connection_lost()
            for task in list(self.tasks):
                task.cancel()
            if self.role is not None and self.role is not Role.SURPLUS:
                self.shares.give_back(self.worker, self.role, self.slot)
            await close_writer(self.writer)

    def _received(self, data: bytes) -> None:
        """Whole frames from the proxy (a RevproxyError ends the connection, its GOAWAY
        written first)."""
        for ev in frames_in(self, self.liveness, data):
            if isinstance(ev, RequestReceived):
                self._request(ev)
            elif isinstance(ev, GoAwayReceived):
                self.agent.note(f"server={self.server} the proxy is closing a connection")
            elif not isinstance(ev, PingAcknowledged):
                self.dispatch(ev)
                if ev.stream_id:
                    self.activity[ev.stream_id] = time.monotonic()
        self.flush()

    async def _ping(self) -> None:
        live = self.liveness
        while not self.closed:
            await asyncio.sleep(min(1.0, live.interval / 2))
            if live.due(time.monotonic()):
                self.proto.ping(os.urandom(8))
                self.flush()
            if live.dead:
                log.warning(
                    "server=%s no answer to %d pings: reconnecting", self.server, live.misses
                )
                self.abort()
                return

    def abort(self) -> None:
        self.connection_lost()
        with contextlib.suppress(Exception):
            self.writer.transport.abort()

    def _request(self, ev: RequestReceived) -> None:
        sid = ev.stream_id
        if ev.target == HELLO_PATH and ev.method == b"GET":
            self._hello(ev)
            return
        if ev.method != b"CONNECT" or ev.protocol != STREAM_PROTOCOL:
            self.h2.send_response(sid, 400, [], end=True)
            return
        ch = open_channel(self, sid)
        self.activity[sid] = time.monotonic()
        task = asyncio.get_running_loop().create_task(self._stream(ch, ev.target))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _hello(self, ev: RequestReceived) -> None:
        try:
            worker, count = parse_worker(ev.headers)
        except TunnelFormatError as exc:
            log.warning("server=%s bad hello: %s", self.server, exc)
            self.h2.send_response(ev.stream_id, 400, [], end=True)
            return
        cfg = self.agent.config
        self.shares.workers = count
        role, slot = Role.SURPLUS, 0
        if not self.agent.stopping:
            taken = self.shares.take(worker, Role.MUX, cfg.connections)
            if taken is not None:
                role, slot = Role.MUX, taken
            else:
                taken = self.shares.take(worker, Role.SPARE, cfg.spare)
                if taken is not None:
                    role, slot = Role.SPARE, taken
        self.role, self.worker, self.slot = role, worker, slot
        exposes = tuple(Expose(e.name, e.mode) for e in cfg.exposes)
        hello = Hello(role, slot, self.agent.session, exposes)
        self.h2.send_response(ev.stream_id, 200, hello.headers(), end=True)
        self.flush()
        self.agent.grow(self.server)
        if role is not Role.SURPLUS:
            self.agent.note(
                f"server={self.server} connected (worker {worker}/{count}, {role.value} {slot})"
            )

    async def _stream(self, ch: TunnelChannel, target: bytes) -> None:
        sid = ch.stream_id
        try:
            try:
                expose = self.agent.config.expose(expose_of_path(target))
            except TunnelFormatError:
                expose = None
            if expose is None:
                self.h2.send_response(sid, 404, [], end=True)
                self.flush()
                return
            try:
                async with asyncio.timeout(TARGET_TIMEOUT):
                    sock = await _connect(expose.host, expose.port)
            except (OSError, TimeoutError) as exc:
                log.warning("expose=%s cannot reach %s:%d: %s", expose.name, expose.host,
                            expose.port, _reason(exc))  # fmt: skip
                self.h2.send_response(sid, 502, [], end=True)
                self.flush()
                return
            try:
                self.h2.send_response(sid, 200, [])
                self.flush()
            except BaseException:
                sock.close()
                raise
            if expose.mode == "tcp":
                try:
                    result = await ChannelRelay(sock, ch, idle_timeout=None).run()
                finally:
                    sock.close()
            else:
                # Small exchanges, relayed from callbacks. The socket is the relay's transport's
                # from here on, closed by it: closing it here too could close a descriptor the
                # transport has not let go of yet (or one reused since).
                result = await TransportRelay(ch, {"tunnel": target}).run(sock)
            if result.error:
                log.debug("stream %d ended: %s: %s", sid, result.end.value, result.error)
        except (ConnectionError, OSError, TimeoutError) as conn_error:
            log.debug("stream %d ended: %s", sid, conn_error)
        finally:
            self.activity.pop(sid, None)
            ch.close(H2_NO_ERROR)

    async def wind_down(self) -> None:
        """Stopping: GOAWAY, then streams in flight finish and idle ones are closed."""
        with contextlib.suppress(Exception):
            self.h2.goaway()
            self.flush_now()
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while self.channels and time.monotonic() < deadline and not self.closed:
            await asyncio.sleep(IDLE_AT_STOP / 3)
            now = time.monotonic()
            for sid, ch in list(self.channels.items()):
                last = max(self.activity.get(sid, 0.0), 0.0)
                if now - last >= IDLE_AT_STOP and not ch.inbox:
                    ch.close(H2_NO_ERROR)
        self.abort()


class Agent:
    """Keeps the connections of one agent to every proxy instance it names."""

    def __init__(self, config: AgentConfig, creds: Credentials) -> None:
        self.config = config
        self.creds = creds
        self.session = secrets.token_hex(8)
        self.stopping = False
        self.connections: set[AgentConnection] = set()
        self._keepers: dict[str, set[asyncio.Task[None]]] = {}
        self._shares: dict[str, _Shares] = {}
        self._rng = random.Random()
        self._last_note = ""
        self._ctx: ssl.SSLContext | None = None
        self.forwarder: Forwarder | None = None

    def note(self, message: str) -> None:
        """A change of state, logged once (not again while it repeats)."""
        if message != self._last_note:
            log.info("%s", message)
            self._last_note = message

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the connections until ``stop``; OSError if a ``[[forward]]`` cannot listen."""
        self._ctx = self.creds.client_context()
        if self.config.forwards:
            self.forwarder = Forwarder(
                self.config.forwards, self.config.servers, self.creds.client_context(EGRESS_ALPN)
            )
            await self.forwarder.start()
        for host, port in self.config.servers:
            server = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            self._shares[server] = _Shares()
            self._keepers[server] = set()
            self.grow(server)
        await stop.wait()
        await self.stop()

    def _wanted(self, server: str) -> int:
        shares = self._shares[server]
        return shares.workers * (self.config.connections + self.config.spare)

    def grow(self, server: str) -> None:
        """As many keepers as connections are wanted (the hello told how many workers)."""
        keepers = self._keepers[server]
        loop = asyncio.get_running_loop()
        while len(keepers) < self._wanted(server) and not self.stopping:
            task = loop.create_task(self._keep(server))
            keepers.add(task)
            task.add_done_callback(keepers.discard)

    async def _keep(self, server: str) -> None:
        host, _, port = server.rpartition(":")
        attempt = 0
        shares = self._shares[server]
        while not self.stopping:
            if len(self._keepers[server]) > self._wanted(server):
                return  # fewer workers than before: one keeper less
            loop = asyncio.get_running_loop()
            wire = LinkProtocol(preamble=len(PREFACE), max_frame=FRAME_SIZE)
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    transport, _ = await loop.create_connection(
                        functools.partial(_same, wire), host.strip("[]"), int(port),
                        ssl=self._ctx, server_hostname=SERVER_NAME,
                    )  # fmt: skip
            except (OSError, TimeoutError) as exc:
                delay = backoff(attempt, self._rng.random())
                attempt += 1
                self.note(
                    f"server={server} cannot connect ({_reason(exc)}); retrying in {delay:.1f} s"
                )
                await asyncio.sleep(delay)
                continue
            writer = LinkWriter(transport, wire, loop)
            conn = AgentConnection(self, shares, server, wire, writer)
            self.connections.add(conn)
            started = time.monotonic()
            try:
                await conn.run()
            finally:
                self.connections.discard(conn)
            if conn.role is Role.SURPLUS:
                await asyncio.sleep(SURPLUS_DELAY * (0.5 + self._rng.random()))
                continue
            if conn.role is None:
                self.note(f"server={server} refused the connection (revoked or not configured?)")
            elif not self.stopping and conn.role is Role.MUX:
                self.note(f"server={server} connection lost; reconnecting")
            if conn.role is not None and time.monotonic() - started > 5.0:
                attempt = 0  # it served a while: start the back-off again
            if conn.role is None or time.monotonic() - started < 1.0:
                delay = backoff(attempt, self._rng.random())
                attempt += 1
                await asyncio.sleep(delay)

    async def stop(self) -> None:
        self.stopping = True
        if self.forwarder is not None:
            await self.forwarder.stop()
        drains = [c.wind_down() for c in list(self.connections)]
        if drains:
            await asyncio.gather(*drains, return_exceptions=True)
        for keepers in self._keepers.values():
            for task in list(keepers):
                task.cancel()
        log.info("agent stopped")


def _same(wire: LinkProtocol) -> LinkProtocol:
    """The protocol factory of a connection whose protocol exists already."""
    return wire


async def _connect(host: str, port: int) -> socket.socket:
    """A connected non-blocking socket to an expose's target (each of its addresses in turn)."""
    loop = asyncio.get_running_loop()
    last: OSError | None = None
    for family, kind, proto, _, addr in await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, addr)
        except BaseException as exc:
            sock.close()
            if not isinstance(exc, OSError):
                raise
            last = exc
            continue
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise last or OSError(f"{host}: no address")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
