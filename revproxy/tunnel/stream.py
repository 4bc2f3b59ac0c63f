"""One connection's bytes carried by one HTTP/2 stream of an agent connection, both ways.

Rule of this room: a stream is a byte stream and nothing more — DATA frames are its bytes,
END_STREAM its half-close, RST_STREAM its reset. Flow control is HTTP/2's: received DATA is
acknowledged (WINDOW_UPDATE) only as it is handed on, so a slow reader holds back its own
sender and no other stream. Two shapes of the same thing:

- ``StreamTransport``: the stream as an ``asyncio.Transport``, so the proxy's dialer
  (``upstream/dialer.py``) keeps its own connection object (``ConnIO``) on it — HTTP/1.1
  keep-alive, h2c, WebSocket take-over and PROXY headers work unchanged over a tunnel.
- ``relay_channel``: the stream joined to a pair of asyncio streams (the agent's connection to
  its target; the proxy's end of a socket pair for TCP listeners).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

from revproxy.errors import H2_CANCEL, H2_NO_ERROR
from revproxy.net.h2_channel import H2Channel, H2Link
from revproxy.proto.events import DataReceived, MessageEnded
from revproxy.proto.h2.engine import H2Endpoint

__all__ = ["READ_SIZE", "CountedLink", "StreamTransport", "TunnelChannel", "relay_channel"]

# Bytes read from a local socket at a time before they go out as DATA.
READ_SIZE = 256 * 1024
# A stream whose peer keeps its window shut this long is given up.
STALL_TIMEOUT = 300.0
# Write buffer limits of a StreamTransport (bytes queued for the stream, not yet sent).
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


class CountedLink(H2Link):
    """An agent connection that keeps the bytes its streams carried, both ways (``revproxy ctl
    show tunnels``): the streams that ended are added up as they close, the open ones are
    read live."""

    def __init__(
        self, proto: H2Endpoint, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        super().__init__(proto, reader, writer)
        self.ended_in = 0
        self.ended_out = 0

    @property
    def payload_in(self) -> int:
        """Stream bytes received on this connection."""
        return self.ended_in + sum(ch.bytes_in for ch in self.channels.values())

    @property
    def payload_out(self) -> int:
        """Stream bytes sent on this connection."""
        return self.ended_out + sum(ch.bytes_out for ch in self.channels.values())


class TunnelChannel(H2Channel):
    """One stream of an agent connection."""

    __slots__ = ()

    def close(self, code: int) -> None:
        link = self.link
        if isinstance(link, CountedLink) and link.channels.get(self.stream_id) is self:
            link.ended_in += self.bytes_in
            link.ended_out += self.bytes_out
        super().close(code)

    def gone(self) -> Exception:
        if self.link.closed:
            return ConnectionResetError("tunnel connection lost")
        return ConnectionResetError(f"tunnel stream reset (error code {self.reset_code})")

    def stalled(self) -> Exception:
        return TimeoutError("tunnel peer kept its window closed")


def open_channel(link: H2Link, stream_id: int) -> TunnelChannel:
    ch = TunnelChannel(link, stream_id, STALL_TIMEOUT)
    link.channels[stream_id] = ch
    return ch


class StreamTransport(asyncio.Transport):
    """A tunnel stream as a transport (the proxy side of a stream to an expose)."""

    def __init__(
        self, channel: TunnelChannel, protocol: asyncio.BaseProtocol, extra: dict[str, Any]
    ) -> None:
        super().__init__(extra)
        self._ch = channel
        self._protocol = protocol
        self._out: deque[bytes] = deque()
        self._queued = 0
        self._high, self._low = HIGH_WATER, LOW_WATER
        self._write_paused = False
        self._eof_wanted = False
        self._closing = False
        self._lost = False
        self._reading = asyncio.Event()
        self._reading.set()
        self._has_out = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._tasks = (loop.create_task(self._read()), loop.create_task(self._write()))
        protocol.connection_made(self)

    # --- reading

    async def _read(self) -> None:
        ch = self._ch
        try:
            while True:
                if not self._reading.is_set():
                    await self._reading.wait()
                ev = await ch.next_event()
                if isinstance(ev, DataReceived):
                    if ev.data:
                        self._deliver(ev.data)
                elif isinstance(ev, MessageEnded):
                    ch.acknowledge()
                    keep = self._protocol.eof_received()  # type: ignore[attr-defined]
                    if not keep:
                        self.close()
                    return
        except (ConnectionError, OSError, TimeoutError) as exc:
            self._lose(exc)
        except asyncio.CancelledError:
            pass

    def _deliver(self, data: bytes) -> None:
        protocol = self._protocol
        if isinstance(protocol, asyncio.BufferedProtocol):
            view = memoryview(data)
            while view:
                buf = memoryview(protocol.get_buffer(len(view))).cast("B")
                n = min(len(buf), len(view))
                buf[:n] = view[:n]
                protocol.buffer_updated(n)
                view = view[n:]
        else:
            protocol.data_received(data)  # type: ignore[attr-defined]

    def pause_reading(self) -> None:
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    def is_reading(self) -> bool:
        return self._reading.is_set()

    # --- writing

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._eof_wanted or not data:
            return
        self._out.append(bytes(data))
        self._queued += len(data)
        self._has_out.set()
        if not self._write_paused and self._queued > self._high:
            self._write_paused = True
            self._protocol.pause_writing()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    async def _write(self) -> None:
        ch = self._ch
        try:
            while True:
                while self._out:
                    data = self._out.popleft()
                    await ch.send_data(data)
                    self._queued -= len(data)
                    if self._write_paused and self._queued <= self._low:
                        self._write_paused = False
                        self._protocol.resume_writing()
                if self._eof_wanted or self._closing:
                    with contextlib.suppress(ConnectionError, OSError):
                        await ch.send_end(None)
                    if self._closing:
                        self._finish(None)
                    return
                self._has_out.clear()
                await self._has_out.wait()
        except (ConnectionError, OSError, TimeoutError) as exc:
            self._lose(exc)
        except asyncio.CancelledError:
            pass

    def get_write_buffer_size(self) -> int:
        return self._queued

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = HIGH_WATER if high is None else high
        self._low = (self._high // 4 if low is None else low) if high is not None else LOW_WATER
        if not self._write_paused and self._queued > self._high:
            self._write_paused = True
            self._protocol.pause_writing()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self._eof_wanted = True
        self._has_out.set()

    # --- the end

    def is_closing(self) -> bool:
        return self._closing or self._lost

    def close(self) -> None:
        """What is queued goes, then END_STREAM; then the stream is done."""
        if self._closing or self._lost:
            return
        self._closing = True
        self._has_out.set()

    def abort(self) -> None:
        self._finish(None)

    def _lose(self, exc: BaseException | None) -> None:
        self._finish(exc if isinstance(exc, Exception) else None)

    def _finish(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._ch.close(H2_NO_ERROR if exc is None else H2_CANCEL)
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        loop = asyncio.get_running_loop()
        loop.call_soon(self._protocol.connection_lost, exc)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol


async def relay_channel(
    ch: TunnelChannel,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    idle_timeout: float | None = None,
) -> tuple[int, int]:
    """Join ``ch`` and a local connection until both directions end (or either fails):
    (bytes from the stream to the local side, bytes the other way)."""
    counts = [0, 0]

    async def inward() -> None:
        while True:
            ev = await ch.next_event()
            if isinstance(ev, DataReceived):
                if ev.data:
                    writer.write(ev.data)
                    counts[0] += len(ev.data)
                    await writer.drain()
            elif isinstance(ev, MessageEnded):
                ch.acknowledge()
                if writer.can_write_eof():
                    writer.write_eof()
                return

    async def outward() -> None:
        while True:
            async with asyncio.timeout(idle_timeout):
                data = await reader.read(READ_SIZE)
            if not data:
                await ch.send_end(None)
                return
            counts[1] += len(data)
            await ch.send_data(data)

    tasks = [asyncio.ensure_future(inward()), asyncio.ensure_future(outward())]
    try:
        pending: set[asyncio.Future[None]] = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if any(t.exception() is not None for t in done if not t.cancelled()):
                break
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        ch.close(
            H2_NO_ERROR
            if all(t.done() and not t.cancelled() and t.exception() is None for t in tasks)
            else H2_CANCEL
        )
        with contextlib.suppress(Exception):
            writer.close()
    return counts[0], counts[1]
