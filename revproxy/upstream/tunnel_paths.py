"""What the dialers need of the reverse tunnel (``tunnel/hub.py``), as a protocol: the
backend side reaches a tunnel server (``{ tunnel = "home/web" }``) through the agent
connections its process holds instead of a TCP connect.

Rule of this room: ``upstream`` never imports ``tunnel`` (a part above it); the runtime hands
the hub to the generation, which hands it to each pool's dialer. An open that fails raises
``OSError``/``TimeoutError`` like a failed connect, so passive health and retries treat a
tunnel server as any other. A tunnel server is used while it is linked (an agent connection
of this process exposes it) and, in a pool with ``health``, its checks through the tunnel
pass in this process (``health.TunnelMonitor`` tells the hub, ``checked``).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Protocol

from revproxy.net.conn_io import ConnIO
from revproxy.net.relay import RelayResult, StreamPair
from revproxy.upstream.backend import Backend


class Relay(Protocol):
    """What an L4 session drives (``net.relay.SocketRelay``'s shape): bytes from side a (the
    client) to side b and back, counted as they go."""

    @property
    def a_to_b(self) -> int: ...

    @property
    def b_to_a(self) -> int: ...

    def start(self, on_end: Callable[[RelayResult], None], *, read_a: bool = False) -> None:
        """Relay until both directions end (or one side fails, or idle); ``on_end`` once."""
        ...

    def stop(self) -> None:
        """End now; ``on_end`` is not called after this."""
        ...


class TunnelFlow(Protocol):
    """One L4 connection's way to a tunnel server: a stream to the expose's target, which the
    tunnel relays to the client's socket itself (no socket of ours in between)."""

    async def send(self, data: bytes) -> None:
        """Bytes toward the target before the relay starts (the PROXY header)."""
        ...

    def relay(self, sock: socket.socket, *, idle_timeout: float) -> Relay:
        """The relay between the client's connected non-blocking ``sock`` (side a) and the
        stream (side b); the socket stays the caller's to close."""
        ...

    def streams(self) -> StreamPair:
        """The stream as a reader and a writer (``relay_streams``: a client that is itself a
        stream, behind TLS)."""
        ...

    def close(self) -> None:
        """Done with the flow (what a writer queued still goes)."""
        ...


class TunnelPaths(Protocol):
    def watch(self, backend: Backend) -> None:
        """Keep ``backend.linked`` true exactly while an agent connection of this process
        exposes ``backend.tunnel`` and its active checks (if any) pass here."""
        ...

    def held(self, backend: Backend) -> bool:
        """Whether an agent connection of this process exposes ``backend.tunnel`` (the checks
        have a way to it)."""
        ...

    def checked(self, backend: Backend, passing: bool) -> None:
        """The active checks of ``backend`` in this process pass (or fail): it is used only
        while they pass."""
        ...

    async def open_conn(self, backend: Backend, timeout: float) -> ConnIO:
        """A byte stream to the expose's target, on a shared agent connection."""
        ...

    async def open_flow(self, backend: Backend, timeout: float) -> TunnelFlow:
        """A stream to the expose's target for one L4 connection (TCP listeners), on an agent
        connection of its own when a spare one is ready."""
        ...
