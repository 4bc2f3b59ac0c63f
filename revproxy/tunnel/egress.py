"""Egress over the tunnel (agent.toml ``[[forward]]``): a local port on the origin host whose
connections leave from the proxy, through the rules of an ``[egress.NAME]`` section
(docs/tunnel.md; the wire is in ``proto/tunnel.py``).

Rule of this room: the proxy decides. A forwarded connection is accepted only with an enrolled,
unrevoked certificate whose tunnel section names the egress (``[tunnel.home] egress =
["partners"]``); the destination is then judged by that section's rules exactly as a CONNECT
through a forward listener is — by name and port first, then every address it resolves to
against ``deny``, and the connection leaves from the section's ``source`` — by the runtime's
``EgressDial`` (``tunnel`` and ``egress`` are sibling parts: the runtime hands the one to the
other). Every refusal is logged with the tunnel, the agent's address, the egress, the
destination and the reason; the agent logs it too. The agent only relays: one listening socket
per ``[[forward]]``, one connection to the proxy per connection accepted there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from revproxy.config.agent import Forward
from revproxy.proto.tunnel import (
    TunnelFormatError,
    decode_egress_reply,
    decode_egress_request,
    encode_egress_reply,
    encode_egress_request,
)
from revproxy.tunnel.ca import SERVER_NAME

__all__ = ["EgressDial", "EgressOpened", "Forwarder", "relay", "serve_egress"]

log = logging.getLogger("revproxy.tunnel")
agent_log = logging.getLogger("revproxy.agent")

# The agent's request line has this long to arrive; the proxy's answer as long to come back
# (it includes resolving and connecting, each bounded by the egress's own timeouts.connect).
REQUEST_TIMEOUT = 10.0
REPLY_TIMEOUT = 30.0
CONNECT_TIMEOUT = 10.0
# Bytes moved at a time each way.
CHUNK = 256 * 1024
# Idle flows on the agent's side end after this long (the proxy's side follows the egress's
# timeouts.idle).
AGENT_IDLE = 3600.0


@dataclass(frozen=True, slots=True)
class EgressOpened:
    """What the runtime's dial gave: a connected socket, or why not."""

    sock: socket.socket | None
    resolved: str = ""  # "ip:port" connected to (or refused)
    reason: str = ""  # "" when connected; else "deny:loopback", "not-listed", "connect", ...
    detail: str = ""
    idle: float = 300.0  # the egress's timeouts.idle


# (egress section, host, port) → a socket through that section's rules, or why not.
EgressDial = Callable[[str, str, int], Awaitable[EgressOpened]]


async def relay(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    b: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    idle: float,
    *,
    tls: int,
) -> tuple[int, int]:
    """Bytes both ways until each side has ended or either fails or nothing moved for
    ``idle`` seconds: (bytes a → b, bytes b → a). An end is passed on as a half-close where
    the other side can take one; TLS (asyncio's) cannot, so an end toward or from the
    agent's TLS connection (side ``tls``: 0 for ``a``, 1 for ``b``) ends the flow both ways,
    as a close."""
    counts = [0, 0]
    moved = asyncio.Event()

    async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, i: int) -> bool:
        """True when the end was passed on as a half-close (the flow goes on the other way)."""
        while data := await src.read(CHUNK):
            counts[i] += len(data)
            moved.set()
            dst.write(data)
            await dst.drain()
        if i == tls or not dst.can_write_eof():
            return False  # from TLS, or toward it: a close
        with contextlib.suppress(OSError, RuntimeError):
            dst.write_eof()
        return True

    async def watch() -> None:
        while True:
            moved.clear()
            try:
                async with asyncio.timeout(idle):
                    await moved.wait()
            except TimeoutError:
                return

    pumps: set[asyncio.Future[Any]] = {
        asyncio.ensure_future(pump(a[0], b[1], 0)),
        asyncio.ensure_future(pump(b[0], a[1], 1)),
    }
    watcher: asyncio.Future[Any] = asyncio.ensure_future(watch())
    try:
        pending: set[asyncio.Future[Any]] = set(pumps)
        while pending:
            done, pending = await asyncio.wait(
                pending | {watcher}, return_when=asyncio.FIRST_COMPLETED
            )
            pending.discard(watcher)
            if watcher in done:
                break
            if any(t.cancelled() or t.exception() or not t.result() for t in done):
                break
    finally:
        for t in (*pumps, watcher):
            t.cancel()
        for t in (*pumps, watcher):
            with contextlib.suppress(BaseException):
                await t
    return counts[0], counts[1]


async def serve_egress(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    name: str,
    peer: str,
    allowed: Sequence[str],
    dial: EgressDial | None,
) -> None:
    """The proxy's side of one forwarded connection (an agent of tunnel ``name`` whose
    certificate was checked already; ``allowed``: its section's ``egress``)."""
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            line = await reader.readline()
        egress, host, port = decode_egress_request(line)
    except (TunnelFormatError, TimeoutError, ValueError, ConnectionError, OSError) as exc:
        log.warning("tunnel=%s peer=%s egress request refused: %s", name, peer, exc)
        with contextlib.suppress(Exception):
            writer.write(encode_egress_reply(error=f"bad request: {exc}", reason="request"))
            await writer.drain()
        return
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if egress not in allowed or dial is None:
        why = f"tunnel {name} may not use egress {egress} (add it to [tunnel.{name}] egress)"
        opened = EgressOpened(None, reason="tunnel-not-allowed", detail=why)
    else:
        opened = await dial(egress, host, port)
    if opened.sock is None:
        log.warning(
            "tunnel=%s peer=%s egress=%s destination=%s refused=%s%s%s",
            name, peer, egress, shown, opened.reason,
            f" resolved={opened.resolved}" if opened.resolved else "",
            f": {opened.detail}" if opened.detail else "",
        )  # fmt: skip
        error = opened.detail or f"destination {shown} refused by egress {egress}"
        with contextlib.suppress(Exception):
            writer.write(encode_egress_reply(error=error, reason=opened.reason))
            await writer.drain()
        return
    sock = opened.sock
    try:
        dreader, dwriter = await asyncio.open_connection(sock=sock, limit=CHUNK)
    except OSError as os_error:
        sock.close()
        log.warning("tunnel=%s peer=%s egress=%s destination=%s lost: %s",
                    name, peer, egress, shown, os_error)  # fmt: skip
        return
    log.info(
        "tunnel=%s peer=%s egress=%s destination=%s resolved=%s connected",
        name, peer, egress, shown, opened.resolved,
    )  # fmt: skip
    try:
        writer.write(encode_egress_reply(resolved=opened.resolved))
        await writer.drain()
        up, down = await relay((reader, writer), (dreader, dwriter), opened.idle, tls=0)
        log.info(
            "tunnel=%s peer=%s egress=%s destination=%s closed: %d bytes out, %d bytes in",
            name, peer, egress, shown, up, down,
        )  # fmt: skip
    except (ConnectionError, OSError) as conn_error:
        log.info("tunnel=%s peer=%s egress=%s destination=%s ended: %s",
                 name, peer, egress, shown, conn_error)  # fmt: skip
    finally:
        dwriter.close()
        with contextlib.suppress(Exception):
            await dwriter.wait_closed()


class Forwarder:
    """The agent's ``[[forward]]`` listeners: each connection accepted goes to the proxy on a
    connection of its own and on through the egress there."""

    def __init__(
        self,
        forwards: Sequence[Forward],
        servers: Sequence[tuple[str, int]],
        context: ssl.SSLContext,
    ) -> None:
        self.forwards = tuple(forwards)
        self.servers = tuple(servers)
        self.context = context
        self._servers: list[asyncio.AbstractServer] = []
        self._flows: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen on every ``listen`` (OSError if one cannot be bound; none stays open)."""
        try:
            for fwd in self.forwards:
                host, port = fwd.address

                async def accepted(
                    r: asyncio.StreamReader, w: asyncio.StreamWriter, fwd: Forward = fwd
                ) -> None:
                    task = asyncio.current_task()
                    assert task is not None
                    self._flows.add(task)
                    try:
                        await self._flow(fwd, r, w)
                    finally:
                        self._flows.discard(task)

                server = await asyncio.start_server(accepted, host, port, reuse_address=True)
                self._servers.append(server)
                agent_log.info(
                    "forward %s -> egress %s destination %s: listening",
                    fwd.listen, fwd.egress, fwd.destination,
                )  # fmt: skip
        except BaseException:
            await self.stop()
            raise

    async def _dial(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        last: Exception = ConnectionRefusedError("no proxy to dial")
        for host, port in self.servers:
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    return await asyncio.open_connection(
                        host, port, ssl=self.context, server_hostname=SERVER_NAME, limit=CHUNK
                    )
            except (OSError, TimeoutError) as exc:
                last = exc
        raise last

    async def _flow(
        self, fwd: Forward, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            try:
                preader, pwriter = await self._dial()
            except (OSError, TimeoutError) as exc:
                agent_log.warning("forward %s: cannot reach the proxy: %s", fwd.listen, exc)
                return
            try:
                pwriter.write(encode_egress_request(fwd.egress, fwd.destination))
                await pwriter.drain()
                async with asyncio.timeout(REPLY_TIMEOUT):
                    line = await preader.readline()
                resolved = decode_egress_reply(line)
            except (TunnelFormatError, TimeoutError, ValueError, ConnectionError, OSError) as err:
                agent_log.warning(
                    "forward %s -> %s via egress %s: %s",
                    fwd.listen, fwd.destination, fwd.egress, err,
                )  # fmt: skip
                pwriter.close()
                return
            agent_log.debug("forward %s -> %s (%s)", fwd.listen, fwd.destination, resolved)
            try:
                await relay((reader, writer), (preader, pwriter), AGENT_IDLE, tls=1)
            except (ConnectionError, OSError) as conn_error:
                agent_log.debug("forward %s ended: %s", fwd.listen, conn_error)
            finally:
                pwriter.close()
        finally:
            writer.close()

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        self._servers.clear()
        for task in list(self._flows):
            task.cancel()
        if self._flows:
            await asyncio.wait(set(self._flows), timeout=1.0)
