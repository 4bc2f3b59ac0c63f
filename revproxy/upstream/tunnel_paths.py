"""What the dialers need of the reverse tunnel (``tunnel/hub.py``), as a protocol: the
backend side reaches a tunnel server (``{ tunnel = "home/web" }``) through the agent
connections its process holds instead of a TCP connect.

Rule of this room: ``upstream`` never imports ``tunnel`` (a part above it); the runtime hands
the hub to the generation, which hands it to each pool's dialer. An open that fails raises
``OSError``/``TimeoutError`` like a failed connect, so passive health and retries treat a
tunnel server as any other.
"""

from __future__ import annotations

import socket
from typing import Protocol

from revproxy.net.conn_io import ConnIO
from revproxy.upstream.backend import Backend


class TunnelPaths(Protocol):
    def watch(self, backend: Backend) -> None:
        """Keep ``backend.linked`` true exactly while an agent connection of this process
        exposes ``backend.tunnel``."""
        ...

    async def open_conn(self, backend: Backend, timeout: float) -> ConnIO:
        """A byte stream to the expose's target, on a shared agent connection."""
        ...

    async def open_socket(self, backend: Backend, timeout: float) -> socket.socket:
        """A connected socket whose bytes go to the expose's target (L4: TCP listeners),
        on an agent connection of its own when a spare one is ready."""
        ...
