"""WebSocket through the proxy, end to end: ``websockets`` client (HTTP/1.1 Upgrade over TLS)
and server (plain origin), and an HTTP/2 client doing RFC 8441 extended CONNECT.

Echo both ways, 1 MiB messages, close codes from either side, a tunnel idle for longer than
the request timeouts but within ``tunnel_timeout``, the tunnel timeout itself, and an origin
that refuses the upgrade (its answer is relayed as an ordinary response).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h2.events
import pytest
import websockets
from h2_peers import RawH2
from harness import Proxy, free_port, make_cert, toml_path
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("real_peers")]

# Request timeouts of the pool (idle) and its tunnel timeout: a tunnel outlives the first.
IDLE = 1.0
TUNNEL = 3.0
MIB = 1 << 20
WAIT = 20.0


async def echo(ws: ServerConnection) -> None:
    try:
        async for message in ws:
            if message == "close-4001":
                await ws.close(4001, "origin says bye")
                return
            await ws.send(message)
    except websockets.ConnectionClosed:
        pass


def refuse_some(conn: ServerConnection, request: Request) -> Response | None:
    if request.path == "/forbidden":
        return conn.respond(403, "no websocket for you\n")
    return None


class EchoServer:
    """A websockets origin in a thread of its own (its own event loop)."""

    def __init__(self) -> None:
        self.port = 0
        self.handshakes: list[Headers] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()

        def process_request(conn: ServerConnection, request: Request) -> Response | None:
            self.handshakes.append(request.headers)
            return refuse_some(conn, request)

        async with serve(
            echo, "127.0.0.1", 0, max_size=None, compression=None, process_request=process_request
        ) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> EchoServer:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)


@dataclass
class Site:
    port: int
    cert: Path
    proxy: Proxy
    origin: EchoServer

    def ctx(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))

    def connect(self, path: str = "/chat") -> websockets.asyncio.client.connect:
        return websockets.connect(
            f"wss://site.test:{self.port}{path}",
            ssl=self.ctx(),
            host="127.0.0.1",
            port=self.port,
            server_hostname="site.test",
            max_size=None,
            compression=None,
            open_timeout=WAIT,
        )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    d = tmp_path_factory.mktemp("ws")
    cert, key = make_cert(d, "site", ["site.test"])
    port = free_port()
    with EchoServer() as origin:
        conf = f"""
[global]
access_log = "stdout"
[[listener]]
name = "tls"
bind = "127.0.0.1:{port}"
tls = {{ certs = [{{ cert = {toml_path(cert)}, key = {toml_path(key)} }}] }}
[[route]]
pool = "ws"
[pool.ws]
servers = ["127.0.0.1:{origin.port}"]
timeouts = {{ idle = "{IDLE}s", tunnel = "{TUNNEL}s" }}
"""
        with Proxy(d, conf, ports=[port]) as proxy:
            yield Site(port, cert, proxy, origin)


def run(coro: object) -> None:
    asyncio.run(asyncio.wait_for(coro, WAIT * 2))  # type: ignore[arg-type]


def test_echo_both_ways(site: Site) -> None:
    async def go() -> None:
        async with site.connect() as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
            await ws.send(b"\x00\x01binary")
            assert await ws.recv() == b"\x00\x01binary"

    run(go())
    line = site.proxy.wait_access(lambda s: '"GET /chat"' in s)
    assert " 101 " in line


def test_handshake_reaches_the_origin_as_an_upgrade(site: Site) -> None:
    async def go() -> None:
        async with site.connect("/hs") as ws:
            assert ws.response is not None
            assert ws.response.headers["Upgrade"].lower() == "websocket"
            assert "Sec-WebSocket-Accept" in ws.response.headers
            assert "Server" not in ws.response.headers  # identity still hidden

    run(go())
    headers = site.origin.handshakes[-1]
    assert headers["Upgrade"].lower() == "websocket"
    assert "upgrade" in headers["Connection"].lower()
    assert headers["X-Forwarded-For"] == "127.0.0.1"


def test_one_mebibyte_messages(site: Site) -> None:
    async def go() -> None:
        async with site.connect() as ws:
            for _ in range(3):
                payload = os.urandom(MIB)
                await ws.send(payload)
                assert await ws.recv() == payload

    run(go())


def test_origin_close_code_reaches_the_client(site: Site) -> None:
    async def go() -> None:
        async with site.connect() as ws:
            await ws.send("close-4001")
            with pytest.raises(websockets.ConnectionClosed) as err:
                await asyncio.wait_for(ws.recv(), WAIT)
            assert err.value.rcvd is not None
            assert (err.value.rcvd.code, err.value.rcvd.reason) == (4001, "origin says bye")

    run(go())


def test_client_close_code_reaches_the_origin(site: Site) -> None:
    async def go() -> None:
        async with site.connect() as ws:
            await ws.close(4002, "client says bye")
            assert ws.close_code == 4002  # the origin echoed the close frame back

    run(go())


def test_tunnel_outlives_the_request_idle_timeout(site: Site) -> None:
    async def go() -> None:
        async with site.connect() as ws:
            await asyncio.sleep(IDLE * 2)  # longer than the pool's idle, within its tunnel
            await ws.send("still here")
            assert await ws.recv() == "still here"

    run(go())


def test_tunnel_timeout_ends_a_silent_tunnel(site: Site) -> None:
    async def go() -> None:
        async with site.connect() as ws:
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), TUNNEL * 4)

    run(go())


def test_refused_upgrade_is_an_ordinary_response(site: Site) -> None:
    async def go() -> None:
        with pytest.raises(websockets.InvalidStatus) as err:
            async with site.connect("/forbidden"):
                pass
        assert err.value.response.status_code == 403
        assert err.value.response.body == b"no websocket for you\n"

    run(go())


# --- RFC 8441: WebSocket over HTTP/2 ----------------------------------------------------------


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (RFC 6455 §5.2), FIN set."""
    mask = os.urandom(4)
    head = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def ws_unframe(data: bytes) -> tuple[int, bytes, bytes] | None:
    """(opcode, payload, rest) of one unmasked server frame, or None when incomplete."""
    if len(data) < 2:
        return None
    opcode, n, i = data[0] & 0x0F, data[1] & 0x7F, 2
    if n == 126:
        n, i = struct.unpack("!H", data[2:4])[0], 4
    elif n == 127:
        n, i = struct.unpack("!Q", data[2:10])[0], 10
    if len(data) < i + n:
        return None
    return opcode, data[i : i + n], data[i + n :]


def test_extended_connect_over_h2(site: Site) -> None:
    with RawH2(site.port, tls=site.ctx(), server_hostname="site.test") as c:
        assert c.wait_for(
            lambda evs: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in evs)
        )
        assert c.conn.remote_settings.enable_connect_protocol == 1
        head = [
            (b":method", b"CONNECT"),
            (b":protocol", b"websocket"),
            (b":scheme", b"https"),
            (b":authority", b"site.test"),
            (b":path", b"/h2chat"),
            (b"sec-websocket-version", b"13"),
        ]
        sid = c.conn.get_next_available_stream_id()
        c.conn.send_headers(sid, head)
        c.send()

        def responded(evs: list[h2.events.Event]) -> bool:
            return any(isinstance(e, h2.events.ResponseReceived) for e in evs)

        assert c.wait_for(responded)
        resp = next(e for e in c.received if isinstance(e, h2.events.ResponseReceived))
        assert dict(resp.headers or [])[b":status"] == b"200"
        payload = os.urandom(50_000)  # within the stream's first window
        frame = ws_frame(0x2, payload)
        for i in range(0, len(frame), 16384):
            c.conn.send_data(sid, frame[i : i + 16384])
        c.send()

        def echoed(_: list[h2.events.Event]) -> bool:
            frame = ws_unframe(c.bodies.get(sid, b""))
            return frame is not None

        assert c.wait_for(echoed)
        got = ws_unframe(c.bodies[sid])
        assert got is not None and got[:2] == (0x2, payload)
        c.conn.send_data(sid, ws_frame(0x8, struct.pack("!H", 1000)), end_stream=True)
        c.send()
        assert c.wait_for(lambda _: c.ended(sid))
    handshake = site.origin.handshakes[-1]
    assert "Sec-WebSocket-Key" in handshake  # the proxy made the HTTP/1.1 handshake
