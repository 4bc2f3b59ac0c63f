"""The two-way relay on real sockets: both directions, half-close, idle, resets, big data.

Each test runs the relay on an event loop (asyncio's and uvloop's) between two sockets whose
other ends are driven by plain blocking peers in threads; every path is run both spliced and
copied, over socketpairs and over loopback TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from revproxy.net import relay as tunnel
from revproxy.net.relay import RelayEnd, RelayResult, SocketRelay, relay, relay_streams

T = TypeVar("T")

LOOPS = ["asyncio", "uvloop"]
PATHS = ["splice", "copy"]
KINDS = ["unix", "tcp"]


def run(loop_name: str, coro: Callable[[], Coroutine[Any, Any, T]], timeout: float = 60) -> T:
    if loop_name == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    else:
        factory = None

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro()

    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(bounded())


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """(peer, ours): a connected loopback TCP pair."""
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        peer = socket.create_connection(lsock.getsockname())
        ours, _ = lsock.accept()
    return peer, ours


def make_pair(kind: str) -> tuple[socket.socket, socket.socket]:
    if kind == "tcp":
        return tcp_pair()
    peer, ours = socket.socketpair()
    return peer, ours


@contextlib.contextmanager
def sockets(
    kind: str,
) -> Iterator[tuple[socket.socket, socket.socket, socket.socket, socket.socket]]:
    """(a_peer, a, b, b_peer): the relay runs between a and b."""
    a_peer, a = make_pair(kind)
    b_peer, b = make_pair(kind)
    a.setblocking(False)
    b.setblocking(False)
    for s in (a_peer, b_peer):
        s.settimeout(30)
    try:
        yield a_peer, a, b, b_peer
    finally:
        for s in (a_peer, a, b, b_peer):
            s.close()


def read_all(sock: socket.socket) -> bytes:
    out = bytearray()
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return bytes(out)
        out += chunk


class Thread(threading.Thread):
    """A peer thread whose result (or exception) is collected by ``result()``."""

    def __init__(self, fn: Callable[[], object]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.value: object = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.value = self.fn()
        except BaseException as exc:  # handed to the test
            self.error = exc

    def result(self, timeout: float = 60) -> object:
        self.join(timeout)
        assert not self.is_alive(), "peer thread did not finish"
        if self.error is not None:
            raise self.error
        return self.value


def splice_arg(path: str) -> bool:
    if path == "splice" and not tunnel.SPLICE_AVAILABLE:
        pytest.skip("no os.splice on this platform")
    return path == "splice"


# --- both directions and half-close -----------------------------------------------------------


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", KINDS)
def test_both_directions_then_close(loop_name: str, path: str, kind: str) -> None:
    use_splice = splice_arg(path)
    with sockets(kind) as (a_peer, a, b, b_peer):

        def a_side() -> bytes:
            a_peer.sendall(b"hello from a")
            a_peer.shutdown(socket.SHUT_WR)
            return read_all(a_peer)

        def b_side() -> bytes:
            got = read_all(b_peer)  # a's end of stream arrives as b's end of stream
            b_peer.sendall(b"reply from b")
            b_peer.shutdown(socket.SHUT_WR)
            return got

        ta, tb = Thread(a_side), Thread(b_side)

        async def go() -> tuple[RelayResult, bool]:
            r = SocketRelay(a, b, idle_timeout=10, splice=use_splice)
            result = await r.run()
            return result, r.splicing

        result, spliced = run(loop_name, go)
        assert tb.result() == b"hello from a"
        assert ta.result() == b"reply from b"
        assert result == RelayResult(12, 12, RelayEnd.CLOSED)
        assert spliced == use_splice


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("closer", ["a", "b"])
def test_half_close_keeps_other_direction(loop_name: str, path: str, closer: str) -> None:
    """The side that half-closes first still receives everything the other side sends after."""
    use_splice = splice_arg(path)
    reply = os.urandom(3 * 1024 * 1024)
    with sockets("tcp") as (a_peer, a, b, b_peer):
        first, second = (a_peer, b_peer) if closer == "a" else (b_peer, a_peer)

        def closing_side() -> bytes:
            first.sendall(b"request")
            first.shutdown(socket.SHUT_WR)
            return read_all(first)

        def answering_side() -> bytes:
            got = read_all(second)
            time.sleep(0.2)  # the answer comes well after the request side's end of stream
            second.sendall(reply)
            second.close()
            return got

        t1, t2 = Thread(closing_side), Thread(answering_side)
        result = run(loop_name, lambda: relay(a, b, idle_timeout=10, splice=use_splice))
        assert t2.result() == b"request"
        assert t1.result() == reply
        assert result.end is RelayEnd.CLOSED
        sent_by_closer = result.a_to_b if closer == "a" else result.b_to_a
        sent_by_other = result.b_to_a if closer == "a" else result.a_to_b
        assert (sent_by_closer, sent_by_other) == (7, len(reply))


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("path", PATHS)
def test_half_closed_side_sees_end_of_stream_while_other_direction_stays_open(
    loop_name: str, path: str
) -> None:
    use_splice = splice_arg(path)
    with sockets("tcp") as (a_peer, a, b, b_peer):

        def scenario() -> list[bytes]:
            a_peer.shutdown(socket.SHUT_WR)
            seen = [read_all(b_peer)]  # b sees the end at once, the relay still running
            for i in range(3):  # the other direction goes on, in pieces
                b_peer.sendall(b"piece%d" % i)
                seen.append(a_peer.recv(100))
            b_peer.shutdown(socket.SHUT_WR)
            seen.append(read_all(a_peer))
            return seen

        t = Thread(scenario)
        result = run(loop_name, lambda: relay(a, b, idle_timeout=10, splice=use_splice))
        assert t.result() == [b"", b"piece0", b"piece1", b"piece2", b""]
        assert result == RelayResult(0, 18, RelayEnd.CLOSED)


# --- idle timeout and failures ----------------------------------------------------------------


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("path", PATHS)
def test_idle_timeout_ends_relay(loop_name: str, path: str) -> None:
    use_splice = splice_arg(path)
    with sockets("tcp") as (_a_peer, a, b, _b_peer):
        started = time.monotonic()
        result = run(loop_name, lambda: relay(a, b, idle_timeout=0.3, splice=use_splice))
        elapsed = time.monotonic() - started
        assert result.end is RelayEnd.IDLE
        assert 0.25 <= elapsed < 5


@pytest.mark.parametrize("loop_name", LOOPS)
def test_traffic_in_one_direction_keeps_relay_alive(loop_name: str) -> None:
    """Idle means no byte either way: a steady trickle one way keeps both open."""
    with sockets("tcp") as (a_peer, a, b, b_peer):

        def trickle() -> None:
            for _ in range(8):
                b_peer.sendall(b".")
                time.sleep(0.1)
            b_peer.shutdown(socket.SHUT_WR)
            a_peer.shutdown(socket.SHUT_WR)

        t = Thread(trickle)
        result = run(loop_name, lambda: relay(a, b, idle_timeout=0.4))
        t.result()
        assert result.end is RelayEnd.CLOSED
        assert result.b_to_a == 8


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("path", PATHS)
def test_reset_on_one_side_resets_the_other(loop_name: str, path: str) -> None:
    use_splice = splice_arg(path)
    with sockets("tcp") as (a_peer, a, b, b_peer):

        def reset_b() -> None:
            a_peer.sendall(b"x" * 10)
            assert b_peer.recv(10) == b"x" * 10
            b_peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            b_peer.close()

        t = Thread(reset_b)

        async def go() -> RelayResult:
            result = await relay(a, b, idle_timeout=10, splice=use_splice)
            a.close()  # with SO_LINGER 0 set by the relay: an RST
            b.close()
            return result

        result = run(loop_name, go)
        t.result()
        assert result.end is RelayEnd.B_FAILED
        assert result.error
        with pytest.raises(ConnectionResetError):
            while a_peer.recv(100):
                pass


@pytest.mark.parametrize("loop_name", LOOPS)
def test_cancelled_relay_unregisters_and_keeps_counts(loop_name: str) -> None:
    with sockets("unix") as (a_peer, a, b, b_peer):
        a_peer.sendall(b"12345")

        async def go() -> tuple[int, bool]:
            r = SocketRelay(a, b, idle_timeout=10)
            task = asyncio.ensure_future(r.run())
            while r.a_to_b < 5:
                await asyncio.sleep(0.01)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            # The sockets can be watched again: nothing of the relay is left registered.
            loop = asyncio.get_running_loop()
            loop.add_reader(a.fileno(), lambda: None)
            loop.remove_reader(a.fileno())
            return r.a_to_b, all(p.pipe is None for p in r._pumps)

        count, pipes_released = run(loop_name, go)
        assert count == 5
        assert pipes_released
        assert b_peer.recv(10) == b"12345"


# --- large data -------------------------------------------------------------------------------


def _stream(sock: socket.socket, total: int, seed: bytes) -> str:
    digest = hashlib.sha256()
    block = hashlib.sha256(seed).digest() * 4096  # 128 KiB, different per direction
    sent = 0
    while sent < total:
        chunk = block[: min(len(block), total - sent)]
        sock.sendall(chunk)
        digest.update(chunk)
        sent += len(chunk)
    sock.shutdown(socket.SHUT_WR)
    return digest.hexdigest()


def _drain(sock: socket.socket) -> tuple[int, str]:
    digest = hashlib.sha256()
    n = 0
    buf = bytearray(1 << 20)
    while True:
        got = sock.recv_into(buf)
        if not got:
            return n, digest.hexdigest()
        digest.update(memoryview(buf)[:got])
        n += got


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", KINDS)
def test_large_transfer_both_ways_by_checksum(loop_name: str, path: str, kind: str) -> None:
    use_splice = splice_arg(path)
    total = 48 * 1024 * 1024
    with sockets(kind) as (a_peer, a, b, b_peer):
        send_a = Thread(lambda: _stream(a_peer, total, b"a"))
        send_b = Thread(lambda: _stream(b_peer, total + 12345, b"b"))
        recv_a = Thread(lambda: _drain(a_peer))
        recv_b = Thread(lambda: _drain(b_peer))
        result = run(loop_name, lambda: relay(a, b, idle_timeout=20, splice=use_splice))
        assert result == RelayResult(total, total + 12345, RelayEnd.CLOSED)
        assert recv_b.result() == (total, send_a.result())
        assert recv_a.result() == (total + 12345, send_b.result())


def test_copy_fallback_when_splice_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A splice refused with EINVAL moves that direction to the copy path, losing nothing
    (what the pipe held included). Bulk is needed: short reads are copied anyway."""
    if not tunnel.SPLICE_AVAILABLE:
        pytest.skip("no os.splice on this platform")
    real = os.splice
    calls = {"n": 0}

    def refusing(src: int, dst: int, count: int, *args: Any, **kw: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 2:  # the first write out of the pipe
            raise OSError(22, "Invalid argument")
        return real(src, dst, count, *args, **kw)

    monkeypatch.setattr(tunnel.os, "splice", refusing)
    payload = os.urandom(4 << 20)
    with sockets("tcp") as (a_peer, a, b, b_peer):

        def scenario() -> bytes:
            a_peer.sendall(payload)
            a_peer.shutdown(socket.SHUT_WR)
            b_peer.shutdown(socket.SHUT_WR)
            return read_all(b_peer)

        t = Thread(scenario)

        async def go() -> tuple[RelayResult, bool]:
            r = SocketRelay(a, b, idle_timeout=10, splice=True)
            return await r.run(), r.splicing  # b moved nothing: a's path decides

        result, a_splicing = run("asyncio", go)
        assert t.result() == payload
        assert result == RelayResult(len(payload), 0, RelayEnd.CLOSED)
        assert calls["n"] >= 2  # bulk went to splice, and the refusal was met
        assert not a_splicing


@pytest.mark.parametrize("loop_name", LOOPS)
def test_short_exchange_copies_and_bulk_splices(loop_name: str) -> None:
    """A few bytes are copied (no pipe is taken); a read of SPLICE_FROM bytes or more turns
    that direction to splicing, the other direction keeps copying."""
    if not tunnel.SPLICE_AVAILABLE:
        pytest.skip("no os.splice on this platform")
    payload = os.urandom(2 << 20)
    looked = threading.Event()
    with sockets("tcp") as (a_peer, a, b, b_peer):

        def scenario() -> tuple[bytes, bytes]:
            a_peer.sendall(b"ping")
            assert b_peer.recv(10) == b"ping"
            assert looked.wait(30)
            b_peer.sendall(payload)
            b_peer.shutdown(socket.SHUT_WR)
            got = read_all(a_peer)
            a_peer.shutdown(socket.SHUT_WR)
            return got, read_all(b_peer)

        t = Thread(scenario)

        async def go() -> tuple[RelayResult, list[bool]]:
            r = SocketRelay(a, b, idle_timeout=10, splice=True)
            task = asyncio.ensure_future(r.run())
            while r.a_to_b < 4:
                await asyncio.sleep(0.005)
            pumps = r._pumps  # gone from the relay once it ended
            paths = [p.splicing for p in pumps]  # "ping" was copied
            looked.set()
            result = await task
            return result, paths + [p.splicing for p in pumps]

        result, paths = run(loop_name, go)
        assert t.result() == (payload, b"")
        assert result == RelayResult(4, len(payload), RelayEnd.CLOSED)
        assert paths == [False, False, False, True]


# --- stream variant ---------------------------------------------------------------------------


@pytest.mark.parametrize("loop_name", LOOPS)
def test_streams_relay_with_half_close_and_checksum(loop_name: str) -> None:
    total = 8 * 1024 * 1024
    with sockets("tcp") as (a_peer, a, b, b_peer):
        send_a = Thread(lambda: _stream(a_peer, total, b"sa"))
        recv_b = Thread(lambda: _drain(b_peer))

        def answer() -> tuple[int, str]:
            # b answers only after a's end of stream reached it (half-close through streams)
            out = recv_b.result()
            b_peer.sendall(b"done")
            b_peer.shutdown(socket.SHUT_WR)
            return out

        t_answer = Thread(answer)
        recv_a = Thread(lambda: read_all(a_peer))

        async def go() -> RelayResult:
            pair = await asyncio.open_connection(sock=a)
            try:
                return await relay_streams(pair, b, idle_timeout=10)
            finally:
                pair[1].close()

        result = run(loop_name, go)
        assert t_answer.result() == (total, send_a.result())
        assert recv_a.result() == b"done"
        assert result == RelayResult(total, 4, RelayEnd.CLOSED)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_streams_relay_idle_and_buffered_bytes(loop_name: str) -> None:
    """Bytes a parser already buffered in the StreamReader are relayed first."""
    with sockets("tcp") as (a_peer, a, b, b_peer):

        async def go() -> RelayResult:
            reader, writer = await asyncio.open_connection(sock=a)
            a_peer.sendall(b"early")
            assert await reader.readexactly(2) == b"ea"  # a parser consumed these
            try:
                return await relay_streams((reader, writer), b, idle_timeout=0.3)
            finally:
                writer.close()

        result = run(loop_name, go)
        assert result.end is RelayEnd.IDLE
        assert result.a_to_b == 3
        b_peer.settimeout(2)
        assert b_peer.recv(10) == b"rly"


# --- the pipe pool ----------------------------------------------------------------------------


def _idle_pipes_are_empty() -> bool:
    for pipe in tunnel.PIPES._idle:
        try:
            os.read(pipe.r, 1)
        except BlockingIOError:
            continue
        return False
    return True


def test_pipes_are_reused_across_connections() -> None:
    if not tunnel.SPLICE_AVAILABLE:
        pytest.skip("no os.splice on this platform")

    async def one() -> RelayResult:
        with sockets("tcp") as (a_peer, a, b, b_peer):
            a_peer.sendall(b"x" * 100000)
            a_peer.shutdown(socket.SHUT_WR)
            b_peer.sendall(b"y" * 1000)
            b_peer.shutdown(socket.SHUT_WR)
            result = await relay(a, b, idle_timeout=10, splice=True)
            assert read_all(b_peer) == b"x" * 100000
            assert read_all(a_peer) == b"y" * 1000
            return result

    async def many() -> int:
        await one()
        created = tunnel.PIPES.created
        for _ in range(20):
            assert (await one()).end is RelayEnd.CLOSED
        return tunnel.PIPES.created - created

    assert run("asyncio", many) == 0  # every relay after the first used pooled pipes
    assert _idle_pipes_are_empty()
    assert len(tunnel.PIPES._idle) <= tunnel.PIPES.keep


def test_idle_connection_holds_no_pipe() -> None:
    if not tunnel.SPLICE_AVAILABLE:
        pytest.skip("no os.splice on this platform")
    with sockets("tcp") as (a_peer, a, b, b_peer):

        async def go() -> list[bool]:
            r = SocketRelay(a, b, idle_timeout=10, splice=True)
            task = asyncio.ensure_future(r.run())
            await asyncio.sleep(0.05)
            held = [p.pipe is not None for p in r._pumps]  # nothing sent yet
            a_peer.sendall(b"z")
            while r.a_to_b < 1:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            held += [p.pipe is not None for p in r._pumps]  # moved, then given back
            a_peer.shutdown(socket.SHUT_WR)
            b_peer.shutdown(socket.SHUT_WR)
            await task
            return held

        assert run("asyncio", go) == [False, False, False, False]


def test_pipe_left_with_bytes_is_closed_not_pooled() -> None:
    """A relay that ends (here: cancelled) while the other side is full must not hand a pipe
    that still holds bytes to the next connection."""
    if not tunnel.SPLICE_AVAILABLE:
        pytest.skip("no os.splice on this platform")
    with sockets("tcp") as (a_peer, a, b, _b_peer):
        b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

        def flood() -> None:
            with contextlib.suppress(OSError):
                a_peer.sendall(b"f" * (8 << 20))

        t = Thread(flood)

        async def go() -> bool:
            r = SocketRelay(a, b, idle_timeout=10, splice=True)
            task = asyncio.ensure_future(r.run())
            while not (r._pumps and r._pumps[0].pending):  # b_peer reads nothing: b fills up
                await asyncio.sleep(0.01)
            pump = r._pumps[0]
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return pump.pipe is None

        assert run("asyncio", go)
        a_peer.shutdown(socket.SHUT_RDWR)  # wakes the flooding thread
        t.result()
        assert _idle_pipes_are_empty()


def test_no_pipe_to_be_had_copies_instead(monkeypatch: pytest.MonkeyPatch) -> None:
    if not tunnel.SPLICE_AVAILABLE:
        pytest.skip("no os.splice on this platform")
    monkeypatch.setattr(tunnel.PIPES, "take", lambda: None)  # as when out of descriptors
    payload = os.urandom(2 << 20)  # bulk: a direction asks for a pipe only then
    with sockets("tcp") as (a_peer, a, b, b_peer):

        def scenario() -> bytes:
            a_peer.sendall(payload)
            a_peer.shutdown(socket.SHUT_WR)
            b_peer.shutdown(socket.SHUT_WR)
            return read_all(b_peer)

        t = Thread(scenario)

        async def go() -> tuple[RelayResult, bool]:
            r = SocketRelay(a, b, idle_timeout=10, splice=True)
            return await r.run(), r.splicing

        result, spliced = run("asyncio", go)
        assert result == RelayResult(len(payload), 0, RelayEnd.CLOSED)
        assert not spliced
        assert t.result() == payload
