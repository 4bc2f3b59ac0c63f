"""Pacing (conn_io.py): an origin connection relayed to a client connection is read no further
ahead than the client's socket takes, on real loopback sockets, on asyncio's loop and uvloop.

The origin is a server that answers a request line with a large body, written as fast as it
can; the client is a plain socket with a small receive buffer, read by a thread (at once, or
only later: a slow reader). The relay is the exchange in small: follow the client, ask, read
the origin, write the client, drain.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from revproxy.net import conn_io
from revproxy.net.conn_io import ConnIO

T = TypeVar("T")

LOOPS = ["asyncio", "uvloop"]
BODY = bytes(range(256)) * (6 * 1024 * 1024 // 256)


def run(loop_name: str, coro: Callable[[], Coroutine[Any, Any, T]], timeout: float = 60) -> T:
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop_name == "uvloop":
        factory = pytest.importorskip("uvloop").new_event_loop

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro()

    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(bounded())


def client_pair(rcvbuf: int) -> tuple[socket.socket, socket.socket]:
    """(client, ours): a loopback TCP pair whose client end has a small receive buffer."""
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        client.connect(lsock.getsockname())
        ours, _ = lsock.accept()
    ours.setblocking(False)
    return client, ours


def read_all(client: socket.socket, out: list[bytes], start: threading.Event) -> None:
    start.wait()
    while chunk := client.recv(65536):
        out.append(chunk)


async def origin_server() -> tuple[asyncio.Server, int]:
    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readline()
        w.write(BODY)
        await w.drain()
        w.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def relay(src: ConnIO, sink: ConnIO, idle: float | None = None) -> int:
    """The exchange: what ``src`` reads goes to ``sink``, with backpressure (each read of the
    origin waits ``idle`` seconds at most, as the exchange's)."""
    loop = asyncio.get_running_loop()
    sent = 0
    src.follow(sink)
    src.write(b"GET\n")
    try:
        while data := await src.read(256 * 1024, None if idle is None else loop.time() + idle):
            sink.write_soon(data)
            sent += len(data)
            if sink.write_paused:
                await sink.drain()
    finally:
        src.follow(None)
    sink.write_eof()
    return sent


async def connect(
    client_rcvbuf: int,
) -> tuple[asyncio.Server, ConnIO, ConnIO, socket.socket]:
    loop = asyncio.get_running_loop()
    server, port = await origin_server()
    src = ConnIO(loop)
    await loop.create_connection(lambda: src, "127.0.0.1", port)
    client, ours = client_pair(client_rcvbuf)
    sink = ConnIO(loop)
    await loop.connect_accepted_socket(lambda: sink, ours)
    return server, src, sink, client


def held(src: ConnIO, sink: ConnIO) -> int:
    """Bytes of the body in our hands: read and unread, or waiting in the client's transport."""
    assert sink.transport is not None
    return conn_io.held(src) + sink.transport.get_write_buffer_size()


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_slow_reader_leaves_the_body_in_the_kernels(loop_name: str) -> None:
    async def main() -> tuple[int, list[int], bytes]:
        server, src, sink, client = await connect(4096)
        got: list[bytes] = []
        start = threading.Event()
        reader = threading.Thread(target=read_all, args=(client, got, start), daemon=True)
        reader.start()
        # The origin's idle timeout is shorter than the client's pause: the time the origin
        # is held for the client is not the origin's silence.
        task = asyncio.ensure_future(relay(src, sink, idle=0.2))
        samples = []
        for _ in range(10):  # the client reads nothing for a second
            await asyncio.sleep(0.1)
            samples.append(held(src, sink))
        start.set()  # then everything
        sent = await task
        await asyncio.to_thread(reader.join, 30)
        client.close()
        sink.close()
        server.close()
        return sent, samples, b"".join(got)

    sent, samples, got = run(loop_name, main)
    assert sent == len(BODY)
    assert hashlib.sha256(got).digest() == hashlib.sha256(BODY).digest()
    # A read sized to the room, and the bytes of a probe: nowhere near the 6 MiB the origin
    # sent (or the 1 MiB a connection once held).
    assert max(samples) <= conn_io.HIGH_WATER + conn_io.PROBE, samples


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_client_that_keeps_up_is_read_for_in_whole_reads(loop_name: str) -> None:
    async def main() -> tuple[int, bytes, ConnIO, ConnIO]:
        server, src, sink, client = await connect(1024 * 1024)
        got: list[bytes] = []
        start = threading.Event()
        start.set()
        reader = threading.Thread(target=read_all, args=(client, got, start), daemon=True)
        reader.start()
        sent = await relay(src, sink)
        await asyncio.to_thread(reader.join, 30)
        assert src.transport is not None and sink.transport is not None
        # Once the relay is over, both transports are as they were.
        assert src.transport.get_protocol() is src
        assert sink.transport.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        client.close()
        sink.close()
        server.close()
        return sent, b"".join(got), src, sink

    sent, got, src, sink = run(loop_name, main)
    assert sent == len(BODY)
    assert hashlib.sha256(got).digest() == hashlib.sha256(BODY).digest()
    assert sink._lowat >= conn_io.READ_MAX  # its socket may hold whole reads now
    assert src._sink is None and sink._source is None


@pytest.mark.parametrize("loop_name", LOOPS)
def test_bytes_held_to_the_end_of_the_turn_are_not_the_clients_lag(loop_name: str) -> None:
    """A relay that ends with the response's last bytes corked (written at the end of the
    loop turn) leaves a client that keeps up proven: its next response is not paced from
    the head (that costs system calls on every small keep-alive request)."""

    async def main() -> tuple[bool, bool]:
        server, src, sink, client = await connect(1024 * 1024)
        src.follow(sink)
        first = sink.unproven  # lowat set now: measured
        sink.write_soon(b"x" * 100)  # the whole small response, corked
        src.follow(None)
        after = sink.unproven
        sink.flush()
        client.close()
        sink.close()
        src.close()
        server.close()
        return first, after

    first, after = run(loop_name, main)
    assert not first
    assert not after


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_slow_reader_that_goes_away_ends_the_relay(loop_name: str) -> None:
    async def main() -> BaseException | int:
        server, src, sink, client = await connect(4096)
        task = asyncio.ensure_future(relay(src, sink))
        await asyncio.sleep(0.3)  # the origin is held for the client
        assert not task.done()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        client.close()  # a reset
        async with asyncio.timeout(5):
            outcome = (await asyncio.gather(task, return_exceptions=True))[0]
        assert src._sink is None and sink._source is None
        sink.close()
        src.close()
        server.close()
        return outcome

    outcome = run(loop_name, main)
    assert isinstance(outcome, OSError)


def test_a_sink_without_a_socket_changes_nothing() -> None:
    async def main() -> None:
        src, sink = ConnIO(), ConnIO()
        for io in (src, sink):
            io.connection_made(NoSocket())  # type: ignore[arg-type]
        assert sink.unproven  # not measured yet
        src.follow(sink)
        assert src._sink is None and not sink.unproven  # cannot be measured: never paced
        src.data_received(b"x" * (src.limit + 1))
        assert src._paused_reading  # its own limit still holds
        for io in (src, sink):  # out of the process's list of live connections
            io.connection_lost(None)

    asyncio.run(main())


class NoSocket:
    """A transport with nothing under it (get_extra_info knows no socket)."""

    def __init__(self) -> None:
        self.paused = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default
