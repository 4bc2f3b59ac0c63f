"""HTTP/2 origins: ``protocol = "h2"`` (TLS, ALPN ``h2``) and ``"h2c"`` (in clear).

Rule of this room: one multiplexed connection per server (and per client identity when the
pool sends PROXY headers), another one only when the server's MAX_CONCURRENT_STREAMS is
reached; exchanges that arrive while a connection is being made wait for it instead of
opening their own. A new connection is used once the server's SETTINGS arrived (within the
connect timeout): until then its limits are unknown. A stream the server refused (RST_STREAM
REFUSED_STREAM, or above the last stream id of its GOAWAY) was not processed and may go
again, whatever its method. A connection with no stream for ``timeouts.idle`` is closed with
GOAWAY, and so is every connection of a retired generation once its streams are done.

Each connection has one reader task; it is owned by the pool's dialer (``H2Origins.tasks``),
not by a client connection, because a connection serves the streams of many clients. It
ends when the socket does, and the generation's retirement ends the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from typing import Protocol

from revproxy.config.model import H2Settings
from revproxy.errors import (
    H2_CANCEL,
    H2_REFUSED_STREAM,
    BackendProtocolError,
    BackendUnreachable,
    LocalResourceError,
    NoBackendAvailable,
    RevproxyError,
)
from revproxy.net.conn_io import Sink
from revproxy.net.h2_channel import READ_SIZE, H2Channel, H2Link, close_writer
from revproxy.proto.events import (
    DataReceived,
    Event,
    GoAwayReceived,
    Headers,
    InformationalReceived,
    MessageEnded,
    ResponseReceived,
)
from revproxy.proto.h2.client import H2Client
from revproxy.proto.h2.connection import StreamClosed
from revproxy.upstream.backend import Backend, PickContext
from revproxy.upstream.pool import Pool

log = logging.getLogger("revproxy.dial")

# How long a connection whose own frames pile up unsent waits for the origin to read them.
BACKLOG_TIMEOUT = 10.0

_Key = tuple[int, bytes | None]


class H2OriginStream(H2Channel):
    """The backend side of one exchange: one stream on an ``H2Origin``."""

    __slots__ = (
        "backend",
        "bytes_read",
        "deadline",
        "events",
        "origin",
        "refused",
        "reused",
        "upgrading",
    )

    def __init__(self, origin: H2Origin, reused: bool) -> None:
        super().__init__(origin, 0, stall_timeout=origin.origins.dialer.idle_timeout)
        self.origin = origin
        self.backend = origin.backend
        self.reused = reused
        self.refused = False
        self.upgrading = False  # WebSocket goes to HTTP/1.1 origins only
        self.bytes_read = 0
        self.events = self.inbox
        self.deadline: float | None = None  # see dial.OriginStream

    def gone(self) -> Exception:
        if self.refused:
            return ConnectionResetError("origin refused the stream unprocessed")
        if self.reset_code is not None and not self.link.closed:
            return BackendProtocolError(f"origin reset the stream (error code {self.reset_code})")
        return ConnectionResetError("origin connection lost")

    def stalled(self) -> Exception:
        return TimeoutError("origin kept its flow-control window closed")

    def reset_received(self, code: int) -> None:
        if code == H2_REFUSED_STREAM and self.bytes_read == 0:
            self.refused = True
        super().reset_received(code)

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
        origin = self.origin
        origin.reserved -= 1
        # RFC 9113 §8.3.1: :authority instead of Host; :scheme as the origin is reached.
        fields = [h for h in headers if h[0] != b"host"]  # keeps never-indexed marks
        trailers = end.trailers if end is not None else []
        sid = origin.h2.send_request(
            method,
            origin.scheme,
            authority,
            target,
            fields,
            end=end is not None and not trailers,
        )
        self.stream_id = sid
        origin.channels[sid] = self
        if trailers:
            origin.proto.send_end(sid, trailers)
        origin.flush()

    async def next(self) -> Event:
        if self.inbox or self.deadline is None:
            ev = await self.next_event()
        else:
            async with asyncio.timeout_at(self.deadline):
                ev = await self.next_event()
        if isinstance(ev, DataReceived):
            self.bytes_read += len(ev.data)
        elif isinstance(ev, ResponseReceived | InformationalReceived):
            self.bytes_read += 1  # something came back: the request was processed
        return ev

    def follow(self, sink: Sink) -> None:
        """Nothing to do: an HTTP/2 origin sends a stream no more than the window we give back
        as the exchange takes each chunk (``next``)."""

    def finish(self, complete: bool) -> None:
        if self.stream_id == 0:
            self.origin.reserved -= 1  # never sent
        else:
            self.close(H2_CANCEL)
        self.origin.stream_done()

    def take_over(self) -> None:
        return None


class H2Origin(H2Link):
    """One multiplexed connection to one server."""

    def __init__(
        self,
        origins: H2Origins,
        backend: Backend,
        key: _Key,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        proto: H2Client,
    ) -> None:
        super().__init__(proto, reader, writer)
        self.h2: H2Client = proto
        self.origins = origins
        self.backend = backend
        self.key = key
        self.scheme = b"https" if origins.dialer.ssl is not None else b"http"
        self.reserved = 0  # streams handed out whose head is not sent yet
        self.served = 0
        self.draining = False
        self.last_used = time.monotonic()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ready.add_done_callback(_retrieve)

    def has_room(self) -> bool:
        if self.closed or self.draining or not self.h2.can_open_stream:
            return False
        return len(self.channels) + self.reserved < self.h2.peer_max_concurrent_streams

    def reserve(self) -> H2OriginStream:
        self.reserved += 1
        self.served += 1
        return H2OriginStream(self, reused=self.served > 1)

    def stream_done(self) -> None:
        self.last_used = time.monotonic()
        if self.draining and not self.channels and not self.reserved:
            self.shut()

    def drain_away(self) -> None:
        """No new streams; close once the running ones are done."""
        self.draining = True
        if not self.channels and not self.reserved:
            self.shut()

    def shut(self) -> None:
        if self.closed:
            return
        with contextlib.suppress(Exception):
            self.proto.goaway()
            self.flush_now()
        self.closed = True
        with contextlib.suppress(Exception):
            self.writer.close()

    async def run(self) -> None:
        """Read frames until the connection ends; every stream learns of the end."""
        loop = asyncio.get_running_loop()
        idle = self.origins.dialer.idle_timeout
        try:
            while not self.closed:
                quiet = not self.channels and not self.reserved
                try:
                    async with asyncio.timeout(idle if quiet else None):
                        data = await self.reader.read(READ_SIZE)
                except TimeoutError:
                    if not self.channels and not self.reserved:
                        self.shut()
                        break
                    continue
                if not data:
                    break
                try:
                    events = self.proto.receive_data(data, loop.time())
                except RevproxyError as exc:
                    log.warning(
                        "pool=%s backend=%s HTTP/2 connection error: %s",
                        self.backend.pool,
                        self.backend.label,
                        exc,
                    )
                    self.flush_now()
                    break
                for ev in events:
                    if isinstance(ev, GoAwayReceived):
                        self._goaway(ev)
                    else:
                        self.dispatch(ev)
                self.flush()
                if not self.ready.done() and self.proto.settings_received:
                    self.ready.set_result(None)
                if self.write_backlog:
                    async with asyncio.timeout(BACKLOG_TIMEOUT):
                        await self.writer.drain()
        except (ConnectionError, OSError, TimeoutError) as conn_error:
            log.debug("backend=%s HTTP/2 connection ended: %s", self.backend.label, conn_error)
        finally:
            self.connection_lost()
            self.origins.forget(self)
            if not self.ready.done():
                self.ready.set_exception(ConnectionResetError("origin closed before SETTINGS"))
            await close_writer(self.writer)

    def _goaway(self, ev: GoAwayReceived) -> None:
        self.draining = True
        for sid, ch in list(self.channels.items()):
            if sid > ev.last_stream_id:
                # RFC 9113 §6.8: not processed; "can be safely retried".
                ch.reset_received(H2_REFUSED_STREAM)
        if not self.channels and not self.reserved:
            self.shut()


class _ConnectorGone(Exception):
    """The exchange making a connection was cancelled; those waiting for it try again."""


def _retrieve(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()


class Connector(Protocol):
    """What HTTP/2 origins need of their pool's dialer (``dialer.Dialer``): the pool, the
    timeouts and TLS settings, connecting, and passive health's account of each connect."""

    pool: Pool
    ssl: ssl.SSLContext | None
    connect_timeout: float
    idle_timeout: float

    async def open(
        self, backend: Backend, identity: bytes | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]: ...

    def failed(self, backend: Backend, exc: BaseException) -> None: ...

    def connected(self, backend: Backend) -> None: ...


class H2Origins:
    """A pool's HTTP/2 connections, per server (and client identity for PROXY headers)."""

    def __init__(self, dialer: Connector, settings: H2Settings) -> None:
        self.dialer = dialer
        self.settings = settings
        self.conns: dict[_Key, list[H2Origin]] = {}
        self._connecting: dict[_Key, asyncio.Future[H2Origin]] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    async def open_stream(
        self, ctx: PickContext, *, identity: bytes | None = None, fresh: bool = False
    ) -> H2OriginStream:
        """A stream on a connection with room, to a server the pool picks; connect failures
        move on to the next server (same rules as ``Dialer.connect``)."""
        pool = self.dialer.pool
        tried: set[Backend] = set()
        attempts = 0
        while True:
            backend = pool.pick(ctx, exclude=tried)
            if backend is None:
                if attempts == 0 and not tried:
                    raise NoBackendAvailable(f"pool {pool.name}: no server available")
                raise BackendUnreachable(f"pool {pool.name}: every server failed")
            key = (id(backend), identity)
            if not fresh:
                for held in self.conns.get(key, ()):
                    if held.has_room():
                        return held.reserve()
                pending = self._connecting.get(key)
                if pending is not None:
                    try:
                        await asyncio.shield(pending)
                    except _ConnectorGone:
                        pass  # its exchange was cancelled: connect anew
                    except LocalResourceError:
                        raise
                    except Exception:
                        tried.add(backend)  # its connector logged and counted the failure
                    continue
            attempts += 1
            fut: asyncio.Future[H2Origin] = asyncio.get_running_loop().create_future()
            fut.add_done_callback(_retrieve_origin)
            self._connecting[key] = fut
            origin = None
            try:
                origin = await self._connect(backend, key, identity)
            except LocalResourceError as exc:  # ours, not the server's: not counted
                fut.set_exception(exc)
                raise
            except (OSError, TimeoutError, RevproxyError) as failure:
                self.dialer.failed(backend, failure)
                tried.add(backend)
                fut.set_exception(failure)
            except BaseException:
                fut.set_exception(_ConnectorGone())
                raise
            finally:
                if self._connecting.get(key) is fut:
                    del self._connecting[key]
            if origin is None:
                continue  # that server failed: the next one
            self.dialer.connected(backend)
            fut.set_result(origin)
            return origin.reserve()

    async def _connect(self, backend: Backend, key: _Key, identity: bytes | None) -> H2Origin:
        dialer = self.dialer
        reader, writer = await dialer.open(backend, identity)
        try:
            if dialer.ssl is not None:
                sslobj = writer.get_extra_info("ssl_object")
                alpn = sslobj.selected_alpn_protocol() if sslobj is not None else None
                if alpn != "h2":
                    raise BackendProtocolError(f"origin did not agree to h2 (ALPN {alpn!r})")
            s = self.settings
            proto = H2Client(
                max_concurrent_streams=s.max_concurrent_streams,
                initial_window_size=s.initial_window_size,
                max_frame_size=s.max_frame_size,
                max_header_list_size=s.max_header_list_size,
            )
            origin = H2Origin(self, backend, key, reader, writer, proto)
            origin.flush()  # preface and SETTINGS
            task = asyncio.get_running_loop().create_task(origin.run())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            self.conns.setdefault(key, []).append(origin)
            async with asyncio.timeout(dialer.connect_timeout):
                await asyncio.shield(origin.ready)
        except BaseException:
            writer.close()
            raise
        return origin

    def forget(self, origin: H2Origin) -> None:
        conns = self.conns.get(origin.key)
        if conns is not None and origin in conns:
            conns.remove(origin)
            if not conns:
                del self.conns[origin.key]

    def close_idle(self) -> None:
        """The generation was retired: every connection goes once its streams are done."""
        for conns in list(self.conns.values()):
            for origin in list(conns):
                origin.drain_away()


def _retrieve_origin(fut: asyncio.Future[H2Origin]) -> None:
    if not fut.cancelled():
        fut.exception()


__all__ = ["H2Origin", "H2OriginStream", "H2Origins", "StreamClosed"]
