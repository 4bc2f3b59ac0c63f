"""Kept connections to destinations: the HTTP forward proxy's keep-alive toward them.

Rule of this room: a connection to a destination is kept only when its last response ended
cleanly and said nothing against it (``H1ClientAPI.reusable``); it is reused only for the
same destination as the client asked for it (name and port: the addresses it resolved to
were judged when it was opened), and only while nothing arrived on it between exchanges
(bytes or its end mean the destination closed it or is confused). A client connection keeps
the one it last used (its next request usually goes to the same destination); what a client
connection leaves behind goes to its service's ``OriginPool``, bounded per destination and in
all, for ``KEEP_IDLE`` seconds at most (``timeouts.idle`` when shorter). Nothing identifying a
client goes on a connection, so connections are shared by the clients of one listener.

While a request of the plain path (egress/forward.py) waits for its response, what arrives on
the connection goes to that request's ``DestinationReader`` as it comes, not into the
connection's buffer: ``DestinationIO.reader`` is set for the exchange and cleared when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Protocol

from revproxy.net.conn_io import ConnIO
from revproxy.proto.http1.api import H1ClientAPI

__all__ = ["KEEP_IDLE", "DestinationIO", "DestinationReader", "Origin", "OriginPool"]

# Idle connections kept per destination, and by one service in all.
KEEP_PER_DESTINATION = 32
KEEP_TOTAL = 512
# The longest an unused connection is kept (seconds): many origins close idle keep-alive
# connections after 5 to 75 s, and one closed while we reuse it costs a retry.
KEEP_IDLE = 30.0

Key = tuple[str, int]


class DestinationReader(Protocol):
    """Who takes a destination connection's bytes as they arrive (the plain path)."""

    def destination_data(self, data: bytes) -> None:
        """Bytes from the destination; ``b""`` when it ended its side."""

    def destination_lost(self, exc: Exception | None) -> None:
        """The connection is gone."""


class DestinationIO(ConnIO):
    """A destination connection's ``ConnIO``, whose bytes go straight to ``reader`` while one
    is set (nothing is buffered then), and into the buffer ``read`` takes them from else."""

    __slots__ = ("reader",)

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(loop)
        self.reader: DestinationReader | None = None

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        if reader is None:
            ConnIO.data_received(self, data)
        else:
            reader.destination_data(data)

    def eof_received(self) -> bool:
        keep_open = ConnIO.eof_received(self)
        reader = self.reader
        if reader is not None:
            reader.destination_data(b"")
        return keep_open

    def connection_lost(self, exc: Exception | None) -> None:
        ConnIO.connection_lost(self, exc)
        reader = self.reader
        if reader is not None:
            self.reader = None
            reader.destination_lost(exc)


class Origin:
    """One connection to a destination, with its response parser (kept between exchanges)."""

    __slots__ = ("_expiry", "io", "key", "parser", "resolved", "reused")

    def __init__(self, key: Key, io: DestinationIO, resolved: str, parser: H1ClientAPI) -> None:
        self.key = key
        self.io = io
        self.resolved = resolved
        self.parser = parser
        self.reused = False  # it carried an exchange before this one
        self._expiry: asyncio.TimerHandle | None = None

    @property
    def alive(self) -> bool:
        """Nothing arrived since the last exchange and the connection is open."""
        io = self.io
        return not io.buffered and not io.at_eof() and not io.is_closing()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.io.close()


class OriginPool:
    """Idle connections of one service, by destination (see the module's rule)."""

    __slots__ = ("_count", "_idle", "_keep")

    def __init__(self, idle_timeout: float) -> None:
        self._idle: dict[Key, deque[Origin]] = {}
        self._count = 0
        self._keep = min(idle_timeout, KEEP_IDLE)

    def __len__(self) -> int:
        return self._count

    def take(self, key: Key) -> Origin | None:
        """A live idle connection to ``key`` (the most recently used first), or None."""
        kept = self._idle.get(key)
        while kept:
            origin = kept.pop()
            self._count -= 1
            if not kept:
                del self._idle[key]
            if origin._expiry is not None:
                origin._expiry.cancel()
                origin._expiry = None
            if origin.alive:
                return origin
            origin.close()
        return None

    def give(self, origin: Origin) -> None:
        """Keep ``origin`` for a later client, or close it when there is no room."""
        if not origin.alive or self._keep <= 0:
            origin.close()
            return
        kept = self._idle.setdefault(origin.key, deque())
        if len(kept) >= KEEP_PER_DESTINATION or self._count >= KEEP_TOTAL:
            if not kept:
                del self._idle[origin.key]
            origin.close()
            return
        kept.append(origin)
        self._count += 1
        origin._expiry = origin.io.loop.call_later(self._keep, self._expire, origin)

    def _expire(self, origin: Origin) -> None:
        origin._expiry = None
        kept = self._idle.get(origin.key)
        if kept is not None:
            with contextlib.suppress(ValueError):
                kept.remove(origin)
                self._count -= 1
            if not kept:
                del self._idle[origin.key]
        origin.close()

    def clear(self) -> None:
        """Close every idle connection."""
        for kept in self._idle.values():
            for origin in kept:
                if origin._expiry is not None:
                    origin._expiry.cancel()
                origin.close()
        self._idle.clear()
        self._count = 0
