"""Real HTTP/2 peers on loopback for the end-to-end tests (HTTP/2, gRPC, WebSocket).

Rule of this room, as in harness.py: nothing here is a mock. ``H2Origin`` is an origin server
speaking HTTP/2 (h2c, or TLS with ALPN ``h2`` — and HTTP/1.1 when a TLS client asks for it)
that records what reached it; ``RawH2`` is a client that speaks HTTP/2 through the ``h2``
library over a real socket and can also write raw frames, for the tests that must misbehave
on purpose. Every wait is bounded; every socket and thread is closed on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.settings
import h11

LOOPBACK = "127.0.0.1"
# Default bound of a client wait in a test.
CLIENT_TIMEOUT = 20.0
# Longest an origin holds a reply for a test's gate.
GATE_TIMEOUT = 30.0


@dataclass
class H2Seen:
    """One request as the HTTP/2 origin received it."""

    conn: int  # the origin's connection number (1-based): shows multiplexing
    protocol: str  # "h2" or "http/1.1"
    method: str
    path: str
    authority: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None


@dataclass
class H2Reply:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    trailers: list[tuple[str, str]] = field(default_factory=list)
    gate: threading.Event | None = None  # wait for it (at most GATE_TIMEOUT) before answering


H2Handler = Callable[[H2Seen], H2Reply]


class H2Origin:
    """An HTTP/2 origin on an ephemeral loopback port (asyncio in a thread of its own)."""

    def __init__(
        self,
        name: str = "h2origin",
        handler: H2Handler | None = None,
        *,
        tls: tuple[Path, Path] | None = None,
        max_streams: int = 100,
    ) -> None:
        self.name = name
        self.handler: H2Handler = handler or self.default_reply
        self.tls = tls
        self.max_streams = max_streams
        self.seen: list[H2Seen] = []
        self.connections = 0
        self.port = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()

    def default_reply(self, req: H2Seen) -> H2Reply:
        body = f"{self.name} {req.method} {req.path} {len(req.body)}\n".encode()
        return H2Reply(headers=[("x-origin", self.name), ("content-type", "text/plain")], body=body)

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def requests(self) -> list[H2Seen]:
        with self._lock:
            return list(self.seen)

    # --- lifecycle

    def start(self) -> H2Origin:
        self._thread = threading.Thread(target=self._run, name=f"{self.name}", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("H2Origin did not start")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is not None and self._server is not None:
            loop.call_soon_threadsafe(self._server.close)
            for task in list(asyncio.all_tasks(loop)):
                loop.call_soon_threadsafe(task.cancel)
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> H2Origin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        ctx = None
        if self.tls is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(self.tls[0]), str(self.tls[1]))
            ctx.set_alpn_protocols(["h2", "http/1.1"])
        self._server = loop.run_until_complete(
            asyncio.start_server(self._serve, LOOPBACK, 0, ssl=ctx)
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    # --- serving

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self.connections += 1
            number = self.connections
        sslobj = writer.get_extra_info("ssl_object")
        alpn = sslobj.selected_alpn_protocol() if sslobj is not None else None
        try:
            if alpn == "http/1.1":
                await self._serve_h1(reader, writer, number)
            else:
                await _H2ServerConn(self, reader, writer, number).run()
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _serve_h1(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int
    ) -> None:
        conn = h11.Connection(h11.SERVER)
        seen: H2Seen | None = None
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                if not data:
                    return
                continue
            if isinstance(ev, h11.Request):
                headers = [(n.decode(), v.decode("latin-1")) for n, v in ev.headers]
                host = next((v for n, v in headers if n == "host"), "")
                seen = H2Seen(
                    number, "http/1.1", ev.method.decode(), ev.target.decode(), host, headers
                )
            elif isinstance(ev, h11.Data):
                assert seen is not None
                seen.body += bytes(ev.data)
            elif isinstance(ev, h11.EndOfMessage):
                assert seen is not None
                with self._lock:
                    self.seen.append(seen)
                reply = await self._reply(seen)
                headers = [*reply.headers, ("content-length", str(len(reply.body)))]
                out = conn.send(h11.Response(status_code=reply.status, headers=headers))
                out += conn.send(h11.Data(data=reply.body)) if reply.body else b""
                out += conn.send(h11.EndOfMessage())
                writer.write(out)
                await writer.drain()
                conn.start_next_cycle()
            else:
                return

    async def _reply(self, seen: H2Seen) -> H2Reply:
        reply = await asyncio.get_running_loop().run_in_executor(None, self.handler, seen)
        if reply.gate is not None:
            gate = reply.gate
            await asyncio.get_running_loop().run_in_executor(None, gate.wait, GATE_TIMEOUT)
        return reply


class _H2ServerConn:
    def __init__(
        self,
        origin: H2Origin,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        number: int,
    ) -> None:
        self.origin = origin
        self.reader = reader
        self.writer = writer
        self.number = number
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: origin.max_streams},
        )
        self.streams: dict[int, H2Seen] = {}
        self.window = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)

    async def run(self) -> None:
        self.conn.initiate_connection()
        self.flush()
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    return
                for ev in self.conn.receive_data(data):
                    self._event(ev)
                self.flush()
        finally:
            for task in self.tasks:
                task.cancel()

    def _event(self, ev: h2.events.Event) -> None:
        if isinstance(ev, h2.events.RequestReceived):
            pseudo = {n.decode(): v.decode() for n, v in ev.headers or [] if n.startswith(b":")}
            regular = [
                (n.decode(), v.decode("latin-1"))
                for n, v in ev.headers or []
                if not n.startswith(b":")
            ]
            self.streams[ev.stream_id or 0] = H2Seen(
                self.number,
                "h2",
                pseudo.get(":method", ""),
                pseudo.get(":path", ""),
                pseudo.get(":authority", ""),
                regular,
            )
        elif isinstance(ev, h2.events.DataReceived):
            sid = ev.stream_id or 0
            self.streams[sid].body += ev.data or b""
            self.conn.acknowledge_received_data(ev.flow_controlled_length or 0, sid)
        elif isinstance(ev, h2.events.StreamEnded):
            sid = ev.stream_id or 0
            seen = self.streams.pop(sid)
            with self.origin._lock:
                self.origin.seen.append(seen)
            task = asyncio.get_running_loop().create_task(self._respond(sid, seen))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        elif isinstance(ev, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self.window.set()
        elif isinstance(ev, h2.events.StreamReset):
            self.streams.pop(ev.stream_id or 0, None)

    async def _respond(self, sid: int, seen: H2Seen) -> None:
        reply = await self.origin._reply(seen)
        headers = [(":status", str(reply.status)), *reply.headers]
        if not reply.trailers:
            headers.append(("content-length", str(len(reply.body))))
        conn = self.conn
        try:
            conn.send_headers(sid, headers, end_stream=not reply.body and not reply.trailers)
            self.flush()
            body = reply.body
            while body:
                room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if room <= 0:
                    self.window.clear()
                    await asyncio.wait_for(self.window.wait(), CLIENT_TIMEOUT)
                    continue
                chunk, body = body[:room], body[room:]
                conn.send_data(sid, chunk, end_stream=not body and not reply.trailers)
                self.flush()
                await self.writer.drain()
            if reply.trailers:
                conn.send_headers(sid, reply.trailers, end_stream=True)
            self.flush()
        except h2.exceptions.StreamClosedError:
            pass


# --- a client that can misbehave ------------------------------------------------------------


@dataclass(frozen=True)
class GoAway:
    last_stream_id: int
    error_code: int


class RawH2:
    """An HTTP/2 client over a real socket (TLS with ALPN h2, or prior-knowledge h2c)."""

    def __init__(
        self,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        validate: bool = True,
    ) -> None:
        sock = socket.create_connection((LOOPBACK, port), timeout=CLIENT_TIMEOUT)
        if tls is not None:
            tls.set_alpn_protocols(["h2"])
            sock = tls.wrap_socket(sock, server_hostname=server_hostname)
            assert sock.selected_alpn_protocol() == "h2"
        self.sock = sock
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=validate,
            normalize_outbound_headers=validate,
        )
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.initiate_connection()
        self.closed = False
        self.received: list[h2.events.Event] = []
        self.bodies: dict[int, bytes] = {}
        self.goaways: list[GoAway] = []
        self._buffer = b""
        self.send()

    def send(self, raw: bytes = b"") -> None:
        data = self.conn.data_to_send() + raw
        if data:
            self.sock.sendall(data)

    def request(
        self,
        headers: list[tuple[bytes, bytes]],
        body: bytes | None = None,
        *,
        end: bool = True,
    ) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, headers, end_stream=end and body is None)
        if body is not None:
            self.conn.send_data(sid, body, end_stream=end)
        self.send()
        return sid

    def read_once(self, timeout: float) -> list[h2.events.Event]:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (TimeoutError, ssl.SSLError):
            return []
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            self.closed = True
            return []
        events = self.conn.receive_data(self._take_goaways(data))
        for ev in events:
            if isinstance(ev, h2.events.DataReceived):
                sid = ev.stream_id or 0
                self.bodies[sid] = self.bodies.get(sid, b"") + (ev.data or b"")
                self.conn.acknowledge_received_data(ev.flow_controlled_length or 0, sid)
        self.received.extend(events)
        with contextlib.suppress(OSError):
            self.send()
        return events

    def _take_goaways(self, data: bytes) -> bytes:
        """GOAWAY frames are kept from h2, which would refuse the frames of the streams that
        a graceful GOAWAY lets finish; they are recorded in ``goaways``."""
        buf = self._buffer + data
        out = b""
        while len(buf) >= 9:
            length = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + length:
                break
            frame, buf = buf[: 9 + length], buf[9 + length :]
            if frame[3] == 0x7:
                payload = frame[9:]
                self.goaways.append(
                    GoAway(
                        int.from_bytes(payload[:4], "big") & 0x7FFFFFFF,
                        int.from_bytes(payload[4:8], "big"),
                    )
                )
            else:
                out += frame
        self._buffer = buf
        return out

    def wait_for(
        self, predicate: Callable[[list[h2.events.Event]], bool], timeout: float = CLIENT_TIMEOUT
    ) -> bool:
        """Read until ``predicate(all events so far)`` or the peer closes or time runs out."""
        deadline = time.monotonic() + timeout
        while not predicate(self.received):
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                return predicate(self.received)
            self.read_once(min(left, 0.5))
        return True

    def ended(self, sid: int) -> bool:
        return any(
            isinstance(e, h2.events.StreamEnded | h2.events.StreamReset) and e.stream_id == sid
            for e in self.received
        )

    def response(self, sid: int) -> tuple[int, dict[bytes, bytes], bytes]:
        """(status, headers, body) of a finished stream."""
        assert self.wait_for(lambda _: self.ended(sid)), f"stream {sid} did not end"
        for ev in self.received:
            if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                headers = dict(ev.headers or [])
                return int(headers[b":status"]), headers, self.bodies.get(sid, b"")
        raise AssertionError(f"no response on stream {sid}: {self.received}")

    def trailers(self, sid: int) -> dict[bytes, bytes]:
        for ev in self.received:
            if isinstance(ev, h2.events.TrailersReceived) and ev.stream_id == sid:
                return dict(ev.headers or [])
        return {}

    def resets(self) -> dict[int, int]:
        return {
            e.stream_id or 0: int(e.error_code or 0)
            for e in self.received
            if isinstance(e, h2.events.StreamReset)
        }

    def goaway(self) -> GoAway | None:
        return self.goaways[0] if self.goaways else None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RawH2:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def get(
    authority: str, path: str = "/", method: str = "GET", scheme: str = "https"
) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", method.encode()),
        (b":scheme", scheme.encode()),
        (b":authority", authority.encode()),
        (b":path", path.encode()),
    ]
