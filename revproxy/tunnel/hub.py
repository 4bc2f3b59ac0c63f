"""The proxy's side of the reverse tunnel: the agent connections this process holds, and the
``mode = "tunnel"`` listener's service (docs/tunnel.md).

Rule of this room: a tunnel server (``{ tunnel = "home/web" }``) is an ordinary backend; this
hub is the one writer of its ``linked`` flag — true exactly while a live connection of an agent
enrolled as "home" that exposes "web" is held by this process and, when its pool has
``health``, the checks this process makes through the tunnel pass (``checks``, a
``TunnelMonitor``: its results go to the master through ``report``) — and the way the dialers
reach it (``upstream/tunnel_paths.py``). Agent connections belong to the process that accepted them:
with several workers, the agent keeps its ``connections`` to each (the hello names the worker a
connection reached, and the agent dials again until each worker has its share). Several agents
of one name are balanced inside the one server (fewest streams in flight first), so killing
one moves new streams to the others at once.

A connection is accepted only with a certificate of the tunnel CA whose serial is not revoked
and whose name has a ``[tunnel.NAME]`` in the current configuration; revocation is read again
every ``REVOKE_CHECK`` seconds and ends the live connections it names. A connection that
arrives for the same (certificate, role, slot) as a held one replaces it: a stale registration
ends the moment its agent reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from revproxy.config.model import Config, Listener, Tunnel
from revproxy.config.model import Pool as PoolConfig
from revproxy.errors import ConfigError, ConfigProblem
from revproxy.net.conn_io import ConnIO
from revproxy.ops.accesslog import AccessLog
from revproxy.ops.metrics import RequestMetrics
from revproxy.proto.tunnel import (
    EGRESS_ALPN,
    ENROLL_ALPN,
    TUNNEL_ALPN,
    Role,
    TunnelFormatError,
    decode_enrol_request,
    encode_enrol_reply,
)
from revproxy.tunnel.ca import EnrolmentRefused, TunnelCA, peer_identity
from revproxy.tunnel.egress import EgressDial, serve_egress
from revproxy.tunnel.link import FRAME_SIZE, AgentLink
from revproxy.tunnel.stream import ChannelFlow, StreamTransport
from revproxy.tunnel.wire import LinkProtocol, LinkWriter
from revproxy.upstream.backend import Backend
from revproxy.upstream.health import CheckReport, CheckResult, Health, Target, TunnelMonitor

log = logging.getLogger("revproxy.tunnel")

# An agent has this long for its TLS handshake, and then for the hello.
HANDSHAKE_TIMEOUT = 10.0
# How often revocations are looked at (a stat of one file).
REVOKE_CHECK = 1.0
# Buffer of an agent connection's reader.
STREAM_LIMIT = 1024 * 1024


class Hub:
    """The agent connections of one process, by tunnel name."""

    def __init__(self, current: Callable[[], Config | None]) -> None:
        self.current = current
        # (index, count) of this serving process among the instance's workers.
        self.worker = (0, 1)
        self.links: dict[str, list[AgentLink]] = {}
        self._watched: dict[str, weakref.WeakSet[Backend]] = {}
        # Tunnel servers whose active checks fail in this process (``checks``).
        self._failing: weakref.WeakSet[Backend] = weakref.WeakSet()
        self.checks = TunnelMonitor(tunnels=self, on_check=self._checked_once)
        # Where each check's result goes (the master's monitor, or a worker's channel to it).
        self.report: Callable[[CheckReport], None] | None = None
        self.ca: TunnelCA | None = None
        self._revocation: asyncio.Task[None] | None = None
        # How a forwarded connection leaves through an [egress.NAME] (the runtime's: tunnel/
        # cannot import egress/); None: this process has none, every forward is refused.
        self.egress_dial: EgressDial | None = None
        # The forwarded connections being served: (certificate serial, tunnel, peer) each, so
        # that a revocation or a tunnel removed from the config ends them too (``enforce``).
        self._flows: dict[asyncio.StreamWriter, tuple[str, str, str]] = {}

    # --- backends (upstream/tunnel_paths.py)

    def watch(self, backend: Backend) -> None:
        assert backend.tunnel is not None
        self._watched.setdefault(backend.tunnel, weakref.WeakSet()).add(backend)
        backend.linked = self._live(backend.tunnel) and backend not in self._failing

    def held(self, backend: Backend) -> bool:
        return backend.tunnel is not None and self._live(backend.tunnel)

    def checked(self, backend: Backend, passing: bool) -> None:
        if passing:
            self._failing.discard(backend)
        else:
            self._failing.add(backend)
        if backend.tunnel is not None:
            backend.linked = passing and self._live(backend.tunnel)

    def follow(self, pools: Iterable[tuple[PoolConfig, Iterable[Backend]]]) -> None:
        """The checks follow a new generation's pools (a pool whose ``health`` changed starts
        its checks again; removed ones stop)."""
        self.checks.process = self.worker
        self.checks.adopt(pools)

    def _checked_once(self, t: Target, result: CheckResult) -> None:
        if self.report is not None:
            passing = t.record.health is Health.UP
            self.report(
                CheckReport(
                    t.key, self.worker[0], result.ok, result.detail, result.duration, passing
                )
            )

    def _live(self, path: str) -> bool:
        name, _, expose = path.partition("/")
        return any(
            link.role is Role.MUX and link.usable() and expose in link.exposes
            for link in self.links.get(name, ())
        )

    def _relink(self, name: str) -> None:
        for path, backends in self._watched.items():
            if path.partition("/")[0] == name:
                live = self._live(path)
                for b in list(backends):
                    b.linked = live and b not in self._failing

    def _candidates(self, path: str, role: Role) -> list[AgentLink]:
        name, _, expose = path.partition("/")
        links = [
            link
            for link in self.links.get(name, ())
            if link.role is role and link.usable() and expose in link.exposes
        ]
        links.sort(key=lambda link: len(link.channels))
        return links

    async def open_conn(self, backend: Backend, timeout: float) -> ConnIO:
        path = backend.tunnel
        assert path is not None
        expose = path.partition("/")[2]
        last: Exception = ConnectionRefusedError(f"no agent connection exposes {path}")
        for link in self._candidates(path, Role.MUX):
            try:
                ch = await link.open(expose, timeout)
            except (ConnectionError, OSError) as exc:
                last = exc
                continue
            io = ConnIO(asyncio.get_running_loop())
            StreamTransport(ch, io, {"peername": (link.peer, 0), "tunnel": path})
            return io
        raise last

    async def open_flow(self, backend: Backend, timeout: float) -> ChannelFlow:
        """A stream for one L4 connection: on a spare connection of its own when one is
        ready (closed when the flow is over: the agent opens a new spare in its place), else
        on a shared one. The L4 path relays the client's socket to it directly."""
        path = backend.tunnel
        assert path is not None
        expose = path.partition("/")[2]
        spares = self._candidates(path, Role.SPARE)
        links = spares[:1] + self._candidates(path, Role.MUX)
        last: Exception = ConnectionRefusedError(f"no agent connection exposes {path}")
        for link in links:
            spare = link.role is Role.SPARE
            if spare:
                link.taken = True  # one flow per spare connection
            try:
                ch = await link.open(expose, timeout, claimed=spare)
            except (ConnectionError, OSError) as exc:
                if spare:
                    link.shut()  # the agent opens a new spare in its place
                last = exc
                continue
            extra = {"peername": (link.peer, 0), "tunnel": path}
            return ChannelFlow(ch, extra, spare=spare, on_spare_done=link.retire)
        raise last

    # --- registration

    def _settings(self, name: str) -> Tunnel | None:
        config = self.current()
        return config.tunnel(name) if config is not None else None

    def register(self, link: AgentLink) -> None:
        hello = link.hello
        assert hello is not None
        held = self.links.setdefault(link.name, [])
        for old in list(held):
            stale = old.hello is not None and (old.serial, old.role, old.hello.slot) == (
                link.serial,
                hello.role,
                hello.slot,
            )
            if stale:
                log.info("tunnel=%s peer=%s replaces a stale connection", link.name, link.peer)
                held.remove(old)
                old.on_close = None
                old.shut()
        held.append(link)
        link.on_close = self._forget
        link.on_change = lambda: self._relink(link.name)
        log.info(
            "tunnel=%s peer=%s registered (%s, slot %d, exposes %s)",
            link.name,
            link.peer,
            hello.role.value,
            hello.slot,
            ",".join(sorted(link.exposes)) or "-",
        )
        self._relink(link.name)
        self._watch()

    def _watch(self) -> None:
        """Revocations are looked at from the first connection of an agent on."""
        if self._revocation is None and self.ca is not None:
            self._revocation = asyncio.get_running_loop().create_task(self._watch_revocations())

    def _forget(self, link: AgentLink) -> None:
        held = self.links.get(link.name, [])
        if link in held:
            held.remove(link)
            log.info("tunnel=%s peer=%s connection closed", link.name, link.peer)
        if not held:
            self.links.pop(link.name, None)
        self._relink(link.name)

    async def _watch_revocations(self) -> None:
        while True:
            await asyncio.sleep(REVOKE_CHECK)
            self.enforce()

    def enforce(self) -> None:
        """End connections whose certificate was revoked or whose name left the config."""
        if self.ca is None:
            return
        revoked = self.ca.revoked()
        config = self.current()
        for name, held in list(self.links.items()):
            allowed = config is not None and config.tunnel(name) is not None
            for link in list(held):
                if link.serial in revoked or not allowed:
                    why = "revoked" if link.serial in revoked else "no longer configured"
                    log.warning("tunnel=%s peer=%s %s: connection closed", name, link.peer, why)
                    link.shut()
        for writer, (serial, name, peer) in list(self._flows.items()):
            gone = config is None or config.tunnel(name) is None
            if serial in revoked or gone:
                why = "revoked" if serial in revoked else "no longer configured"
                log.warning("tunnel=%s peer=%s %s: forwarded connection closed", name, peer, why)
                del self._flows[writer]
                writer.transport.abort()  # its relay ends; serve_egress logs the end

    def describe(self) -> list[dict[str, object]]:
        """What ``revproxy ctl show tunnels`` lists: one row per agent connection this process
        holds (JSON-ready: the master gathers the rows of its workers over their channels)."""
        rows: list[dict[str, object]] = []
        for name, held in sorted(self.links.items()):
            for link in held:
                hello = link.hello
                rows.append(
                    {
                        "tunnel": name,
                        # The agent process (its session) and the certificate it holds.
                        "agent": hello.session if hello is not None else "-",
                        "serial": link.serial,
                        "peer": link.peer,
                        "role": link.role.value,
                        "slot": hello.slot if hello is not None else 0,
                        "exposes": sorted(link.exposes),
                        "since": link.since,
                        "streams": len(link.channels),
                        "streams_total": link.streams_total,
                        "bytes_in": link.payload_in,  # from the agent
                        "bytes_out": link.payload_out,  # to the agent
                        "draining": link.draining,
                        "worker": f"{self.worker[0]}/{self.worker[1]}",
                        "pid": os.getpid(),
                    }
                )
        return rows

    def close(self) -> None:
        """Stopping: the checks stop, every agent connection ends now (agents reconnect
        elsewhere)."""
        self.checks.close()
        if self._revocation is not None:
            self._revocation.cancel()
            self._revocation = None
        for held in list(self.links.values()):
            for link in list(held):
                link.shut()

    async def wait_closed(self) -> None:
        """After ``close``: wait for the check loops to be over."""
        await self.checks.wait_closed()

    # --- accepting (the tunnel listener)

    async def accept(self, csock: socket.socket, ca: TunnelCA, ctx: ssl.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        # What the connection is (the ALPN) is known after the handshake: an agent's link
        # reads through the protocol itself, enrolment and egress through a StreamReader.
        protocol = LinkProtocol(max_frame=FRAME_SIZE)
        peer = _peer(csock)
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, csock, ssl=ctx, ssl_handshake_timeout=HANDSHAKE_TIMEOUT
            )
        except (ssl.SSLError, ConnectionError, OSError, TimeoutError) as exc:
            log.info("tunnel listener peer=%s TLS handshake failed: %s", peer, exc)
            return
        sslobj = transport.get_extra_info("ssl_object")
        alpn = sslobj.selected_alpn_protocol() if sslobj is not None else None
        link_writer = LinkWriter(transport, protocol, loop)
        writer: asyncio.StreamWriter = link_writer
        try:
            if alpn == ENROLL_ALPN:
                reader, writer = protocol.as_streams(STREAM_LIMIT)
                await self._enrol(reader, writer, ca, peer)
            elif alpn == TUNNEL_ALPN:
                cert = sslobj.getpeercert() if sslobj is not None else None
                await self._serve_agent(protocol, link_writer, ca, peer, cert)
            elif alpn == EGRESS_ALPN:
                cert = sslobj.getpeercert() if sslobj is not None else None
                reader, writer = protocol.as_streams(STREAM_LIMIT)
                await self._serve_egress(reader, writer, ca, peer, cert)
            else:
                log.info("tunnel listener peer=%s closed: ALPN %r is not a tunnel's", peer, alpn)
        finally:
            writer.close()

    async def _enrol(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ca: TunnelCA, peer: str
    ) -> None:
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                line = await reader.readline()
            name, secret, csr = decode_enrol_request(line)
            if self._settings(name) is None:
                raise EnrolmentRefused(f"no [tunnel.{name}] in the proxy's configuration")
            cert, ca_pem = await asyncio.to_thread(ca.enrol, name, secret, csr)
        except (EnrolmentRefused, TunnelFormatError) as exc:
            log.warning("tunnel listener peer=%s enrolment refused: %s", peer, exc)
            writer.write(encode_enrol_reply(error=str(exc)))
        except (TimeoutError, ValueError, ConnectionError, OSError) as failure:
            log.info("tunnel listener peer=%s enrolment failed: %s", peer, failure)
            return
        else:
            log.info("tunnel=%s peer=%s enrolled", name, peer)
            writer.write(encode_enrol_reply(cert=cert, ca=ca_pem))
        with contextlib.suppress(Exception):
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                await writer.drain()

    def _identify(
        self, ca: TunnelCA, peer: str, cert: dict[str, Any] | None
    ) -> tuple[str, str, Tunnel] | None:
        """(serial, tunnel name, its section) of an enrolled, unrevoked, configured agent
        (``cert``: its certificate as verified, ``getpeercert()``); None (logged) for anyone
        else."""
        if not cert:
            log.warning("tunnel listener peer=%s closed: no client certificate", peer)
            return None
        serial, name = peer_identity(cert)
        if serial in ca.revoked():
            log.warning("tunnel=%s peer=%s refused: certificate revoked", name, peer)
            return None
        settings = self._settings(name)
        if settings is None:
            log.warning("tunnel=%s peer=%s refused: no [tunnel.%s] configured", name, peer, name)
            return None
        return serial, name, settings

    async def _serve_egress(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        ca: TunnelCA,
        peer: str,
        cert: dict[str, Any] | None,
    ) -> None:
        """A forwarded connection of an agent (``[[forward]]``: tunnel/egress.py)."""
        known = self._identify(ca, peer, cert)
        if known is None:
            return
        serial, name, settings = known
        self._flows[writer] = (serial, name, peer)
        self._watch()
        try:
            await serve_egress(
                reader, writer, name=name, peer=peer, allowed=settings.egress, dial=self.egress_dial
            )
        finally:
            self._flows.pop(writer, None)

    async def _serve_agent(
        self,
        wire: LinkProtocol,
        writer: LinkWriter,
        ca: TunnelCA,
        peer: str,
        cert: dict[str, Any] | None,
    ) -> None:
        known = self._identify(ca, peer, cert)
        if known is None:
            return
        serial, name, settings = known
        link = AgentLink(
            wire,
            writer,
            name=name,
            serial=serial,
            peer=peer,
            stream_window=settings.stream_window,
            max_streams=settings.max_streams,
            ping_interval=settings.ping_interval,
            ping_misses=settings.ping_misses,
        )
        link.start()
        try:
            hello = await link.greet(self.worker, HANDSHAKE_TIMEOUT)
        except (TunnelFormatError, ConnectionError, OSError, TimeoutError) as exc:
            log.warning("tunnel=%s peer=%s hello failed: %s", name, peer, exc)
            link.shut()
            return
        if hello.role is Role.SURPLUS or link.closed:
            link.shut()
            return
        self.ca = ca
        self.register(link)
        await link.done.wait()


def _peer(csock: socket.socket) -> str:
    try:
        addr = csock.getpeername()
    except OSError:
        return "-"
    return f"{addr[0]}:{addr[1]}"


class TunnelService:
    """The service of a ``mode = "tunnel"`` listener (``edge/generation.ListenerService``)."""

    def __init__(self, hub: Hub, ca: TunnelCA) -> None:
        self.hub = hub
        self.ca = ca
        self.context = ca.server_context()

    async def serve(
        self,
        csock: socket.socket,
        *,
        client: tuple[str, int],
        peer: str,
        authority: str,
        vpce: str,
        access_log: AccessLog,
        metrics: RequestMetrics,
    ) -> None:
        await self.hub.accept(csock, self.ca, self.context)


def service_builder(hub: Hub) -> Callable[[Listener, Config, object | None, bytes], TunnelService]:
    """The builder ``build_generation`` calls for each tunnel listener (the CA is made under
    ``global.state_dir`` the first time)."""

    def build(lst: Listener, config: Config, previous: object | None, key: bytes) -> TunnelService:
        state_dir = config.global_.state_dir
        if state_dir is None:
            raise ConfigError(
                [ConfigProblem(lst.source, "global.state_dir", "a tunnel listener needs it")]
            )
        if isinstance(previous, TunnelService) and previous.ca.dir == state_dir / "tunnel":
            return previous
        ca = TunnelCA(state_dir)
        try:
            ca.ensure()
            service = TunnelService(hub, ca)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                [
                    ConfigProblem(
                        lst.source,
                        "global.state_dir",
                        f"cannot keep the tunnel CA in {ca.dir}: {exc}",
                    )
                ]
            ) from None
        hub.ca = ca
        return service

    return build


def since_text(since: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
