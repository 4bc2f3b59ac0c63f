"""The agent connection's reading protocol (tunnel/wire.py): reads handed on in whole frames
whatever the reads' sizes, the preface that is no frame, a frame over the maximum handed on
for the endpoint to refuse, bytes read before the connection was attached, the hand-over to
a StreamReader (enrolment, egress), no buffer held by a quiet connection, the end — over real
loopback connections, and by calling the protocol as a transport would to cut reads where a
test wants them."""

from __future__ import annotations

import asyncio
import functools
import random
import struct
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from revproxy.proto.h2.frames import PREFACE
from revproxy.tunnel.wire import BUFFER_SIZE, SMALL_READ, LinkProtocol, LinkWriter


def asynctest(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return wrapper


def frame(length: int, kind: int = 0, sid: int = 1, fill: int = 0x61) -> bytes:
    return (
        struct.pack("!BHBBI", length >> 16, length & 0xFFFF, kind, 0, sid) + bytes([fill]) * length
    )


def frames_of(data: bytes, start: int = 0) -> list[int]:
    """The frame lengths ``data`` is made of; AssertionError if it ends inside one."""
    out, i = [], start
    while i < len(data):
        length = int.from_bytes(data[i : i + 3], "big")
        assert i + 9 + length <= len(data), "a partial frame was handed on"
        out.append(length)
        i += 9 + length
    return out


def feed(proto: LinkProtocol, data: bytes, cuts: list[int]) -> None:
    """Hand ``data`` to ``proto`` as a transport would, in reads of the sizes in ``cuts``."""
    i = 0
    for size in cuts:
        chunk = data[i : i + size]
        if not chunk:
            break
        hint = len(data) - i + 256  # as uvloop's TLS transport: what is pending, and a little
        buf = proto.get_buffer(hint)
        n = min(len(buf), len(chunk))
        buf[:n] = chunk[:n]
        proto.buffer_updated(n)
        i += n
    while i < len(data):  # what the cuts did not cover
        buf = proto.get_buffer(len(data) - i + 256)
        n = min(len(buf), len(data) - i)
        buf[:n] = data[i : i + n]
        proto.buffer_updated(n)
        i += n


@asynctest
async def test_reads_are_handed_on_in_whole_frames_whatever_their_cuts() -> None:
    rng = random.Random(7)
    sizes = [0, 1, 9, 4000, 16384, 70000, 262144, 5, 131072, 262144, 3]
    stream = b"".join(frame(n, sid=k + 1, fill=k) for k, n in enumerate(sizes))
    for _ in range(30):
        got: list[bytes] = []
        proto = LinkProtocol()
        proto.attach(got.append)
        cuts = [rng.choice([1, 7, 9, 100, 5000, 16384, 65536, 262144, 300000]) for _ in range(60)]
        feed(proto, stream, cuts)
        for piece in got:
            frames_of(piece)  # each piece ends on a frame boundary
        assert b"".join(got) == stream
        assert frames_of(b"".join(got)) == sizes


@asynctest
async def test_the_preface_is_no_frame() -> None:
    got: list[bytes] = []
    proto = LinkProtocol(preamble=len(PREFACE))
    proto.attach(got.append)
    stream = PREFACE + frame(6, kind=4, sid=0) + frame(20)
    feed(proto, stream, [10, 20, 3, 8, 30])
    assert b"".join(got) == stream
    assert frames_of(b"".join(got), len(PREFACE)) == [6, 20]


@asynctest
async def test_a_frame_over_the_maximum_is_handed_on_for_the_endpoint_to_refuse() -> None:
    got: list[bytes] = []
    proto = LinkProtocol(max_frame=16384)
    proto.attach(got.append)
    head = frame(100) + struct.pack("!BHBBI", 0x01, 0, 0, 0, 1)  # announces 65536 bytes
    feed(proto, head + b"x" * 50, [len(head) + 50])
    assert b"".join(got) == head + b"x" * 50  # nothing is held waiting for it


@asynctest
async def test_a_quiet_connection_holds_no_buffer_and_short_reads_share_one() -> None:
    got: list[bytes] = []
    proto = LinkProtocol()
    proto.attach(got.append)
    buf = proto.get_buffer(300)
    assert len(buf) == SMALL_READ  # the process's shared buffer
    ping = frame(8, kind=6, sid=0)
    buf[: len(ping)] = ping
    proto.buffer_updated(len(ping))
    assert got == [ping]
    big = frame(200000)
    feed(proto, big[:1000], [1000])  # the start of a big frame: kept, in a buffer of its own
    buf = proto.get_buffer(300000)
    assert len(buf) == BUFFER_SIZE - 1000
    buf[: len(big) - 1000] = big[1000:]
    proto.buffer_updated(len(big) - 1000)
    assert got[-1] == big
    feed(proto, ping, [len(ping)])  # quiet again: the buffer is let go
    assert len(proto.get_buffer(300)) == SMALL_READ


@asynctest
async def test_a_sink_that_raises_ends_the_link() -> None:
    proto = LinkProtocol()

    def refuse(data: bytes) -> None:
        raise ValueError("protocol error")

    proto.attach(refuse)
    feed(proto, frame(10), [19])
    failure = await proto.finished
    assert isinstance(failure, ValueError)


# --- over real connections --------------------------------------------------------------------


@asynctest
async def test_bytes_read_before_attach_come_first_and_the_end_is_told() -> None:
    sent = PREFACE + b"".join(frame(n) for n in (10, 70000, 3))
    arrived = asyncio.Event()

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(sent)
        await writer.drain()
        await arrived.wait()
        writer.close()

    srv = await asyncio.start_server(peer, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    proto = LinkProtocol(preamble=len(PREFACE))
    transport, _ = await loop.create_connection(lambda: proto, "127.0.0.1", port)
    await asyncio.sleep(0.2)  # it is all read, nobody attached yet
    got: list[bytes] = []
    proto.attach(got.append)
    assert b"".join(got) == sent
    arrived.set()
    assert await asyncio.wait_for(proto.finished, 5) is None  # the peer's end
    writer = LinkWriter(transport, proto, loop)  # type: ignore[arg-type]
    writer.close()
    await asyncio.wait_for(writer.wait_closed(), 5)
    srv.close()
    await srv.wait_closed()


@asynctest
async def test_the_other_alpns_get_a_stream_reader_with_what_was_read() -> None:
    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b'{"egress": "partners"}\nafter')
        await writer.drain()
        line = await reader.readline()
        writer.write(b"echo:" + line)
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(peer, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    proto = LinkProtocol()
    await loop.create_connection(lambda: proto, "127.0.0.1", port)
    await asyncio.sleep(0.1)
    reader, writer = proto.as_streams(1 << 16)
    assert await reader.readline() == b'{"egress": "partners"}\n'
    writer.write(b"hello\n")
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b"afterecho:hello\n"
    writer.close()
    await writer.wait_closed()
    srv.close()
    await srv.wait_closed()


@asynctest
async def test_a_link_that_never_reads_our_replies_is_held_then_ended() -> None:
    hold = asyncio.Event()

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hold.wait()  # reads nothing: our writes pile up
        writer.close()

    srv = await asyncio.start_server(peer, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    proto = LinkProtocol()
    transport, _ = await loop.create_connection(lambda: proto, "127.0.0.1", port)
    proto.attach(lambda data: None)
    writer = LinkWriter(transport, proto, loop)  # type: ignore[arg-type]
    for _ in range(64):
        writer.write(b"x" * (1 << 20))
    proto.hold_until_drained(0.3)
    failure = await asyncio.wait_for(proto.finished, 5)
    assert isinstance(failure, TimeoutError)
    transport.abort()
    hold.set()
    srv.close()
    await srv.wait_closed()
    with pytest.raises(ConnectionResetError):
        await proto.drained()
