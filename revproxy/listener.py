"""Listeners: bind, accept, PROXY header in, TLS, dispatch by mode.

Rule of this room: a listening socket is bound once and kept for as long as some generation
names it; a reload never closes a socket that stays in the config. Each accepted connection is
served by the generation that was current when it was accepted, to its end. Out of file
descriptors (EMFILE), asyncio pauses accepting on that socket for a second and logs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from revproxy.config import Bind
from revproxy.generation import Generation
from revproxy.http_proxy import ConnInfo, HttpConnection
from revproxy.tls import server_name_of

log = logging.getLogger("revproxy.listener")

# A TLS client has this long to finish its handshake.
TLS_HANDSHAKE_TIMEOUT = 10.0
# Pending connections the kernel queues per listening socket.
BACKLOG = 1024


def bind_socket(bind: Bind) -> list[socket.socket]:
    """Bind ``bind``; ``":443"`` binds every address (dual-stack where IPv6 exists)."""
    if not bind.host:
        try:
            sock = _bind_one(socket.AF_INET6, ("::", bind.port), v6only=False)
            return [sock]
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


def _bind_one(family: int, addr: tuple[str | int, ...], v6only: bool = True) -> socket.socket:
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
    """One listener name's sockets and the asyncio servers accepting on them."""

    name: str
    binds: tuple[Bind, ...]
    sockets: list[socket.socket]
    servers: list[asyncio.Server]

    async def close(self) -> None:
        for srv in self.servers:
            srv.close()
        for srv in self.servers:
            with contextlib.suppress(Exception):
                await srv.wait_closed()


class Acceptor:
    """Serves accepted connections with the current generation; tracks them for shutdown."""

    def __init__(self, current: Callable[[], Generation]) -> None:
        self.current = current
        self.connections: set[asyncio.Task[None]] = set()

    async def start(self, addr: str, socks: list[socket.socket]) -> list[asyncio.Server]:
        """Accept on ``socks``; each connection is served by the listener owning ``addr``."""
        servers = []
        for sock in socks:

            async def handle(
                reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _addr: str = addr
            ) -> None:
                await self.serve(_addr, reader, writer)

            srv = await asyncio.start_server(handle, sock=sock, limit=1024 * 1024, backlog=BACKLOG)
            servers.append(srv)
        return servers

    async def serve(
        self, addr: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.connections.add(task)
        name = addr
        try:
            gen = self.current()
            name = gen.bind_owner.get(addr, "")
            lrt = gen.listeners.get(name)
            if lrt is None:
                return
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer = writer.get_extra_info("peername") or ("", 0)
            local = writer.get_extra_info("sockname") or ("", 0)
            info = ConnInfo(
                peer=(str(peer[0]), int(peer[1])),
                client=(str(peer[0]), int(peer[1])),
                local_port=int(local[1]),
                tls=lrt.tls is not None,
            )
            if lrt.tls is not None:
                try:
                    await writer.start_tls(
                        lrt.tls.context, ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT
                    )
                except (ssl.SSLError, ConnectionError, OSError, TimeoutError) as exc:
                    log.debug(
                        "listener=%s client=%s TLS handshake failed: %s", name, info.client[0], exc
                    )
                    return
                sslobj = writer.get_extra_info("ssl_object")
                if sslobj is not None:
                    info.sni = server_name_of(sslobj)
            await HttpConnection(reader, writer, generation=gen, listener=lrt, info=info).run()
        except Exception:
            log.exception("listener=%s connection failed", name)
        finally:
            with contextlib.suppress(Exception):
                writer.close()
            if task is not None:
                self.connections.discard(task)
