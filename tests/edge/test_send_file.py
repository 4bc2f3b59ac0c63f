"""``send_file`` of the client connections, on real loopback sockets: a real file of a few
MiB reaches a real client whole (sha256), by sendfile(2) on a plain HTTP/1.1 connection and in
pieces over TLS and HTTP/2, on asyncio's loop and uvloop, with either HTTP/1.1 implementation;
a slow reader holds neither the loop nor our memory; a stalled one is cut; a file that shrank
ends the response."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from revproxy.certs.files import generate_default_cert
from revproxy.config.load import load_config_text
from revproxy.edge import h1_connection, h2_connection, h2_plain
from revproxy.edge.client_side import FILE_PIECE, ClientGone, ConnInfo, send_file_pieces
from revproxy.edge.generation import build_generation
from revproxy.edge.h1_connection import SENDFILE_MIN, HttpConnection
from revproxy.errors import H2_NO_ERROR, RevproxyError
from revproxy.net import conn_io
from revproxy.net.conn_io import ConnIO

T = TypeVar("T")

LOOPS = ["asyncio", "uvloop"]
PARSERS = ["httptools", "h11"]
SIZE = 3 * 1024 * 1024 + 12345  # a few MiB, not a multiple of any piece
REQUEST = b"GET /f HTTP/1.1\r\nhost: files.test\r\n\r\n"


def run(loop_name: str, coro: Callable[[], Coroutine[Any, Any, T]], timeout: float = 60) -> T:
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop_name == "uvloop":
        factory = pytest.importorskip("uvloop").new_event_loop

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro()

    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(bounded())


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("files") / "big.bin"
    path.write_bytes(os.urandom(SIZE))
    return path


@pytest.fixture(scope="module")
def tls_contexts(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = generate_default_cert()
    (folder / "cert.pem").write_bytes(cert)
    (folder / "key.pem").write_bytes(key)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    return server, client


@dataclass
class Client:
    """A client in a thread: sends the request, reads one response (head, then the body its
    Content-Length announces, or until the end), and hashes the body."""

    sock: socket.socket
    tls: ssl.SSLContext | None = None
    start: threading.Event = field(default_factory=threading.Event)  # when to begin reading
    delay: float = 0.0  # seconds between reads (a slow reader)
    head: bytes = b""
    body_length: int = 0
    digest: str = ""
    ended_early: bool = False
    thread: threading.Thread | None = None

    def begin(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        sock: socket.socket = self.sock
        sock.settimeout(30)
        try:
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock)
            sock.sendall(REQUEST)
            self.start.wait(30)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    self.ended_early = True
                    return
                data += chunk
            self.head, _, rest = data.partition(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in self.head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                1 << 62,  # none: until the connection ends
            )
            digest = hashlib.sha256(rest)
            got = len(rest)
            while got < length:
                if self.delay:
                    time.sleep(self.delay)
                chunk = sock.recv(65536)
                if not chunk:
                    self.ended_early = True
                    break
                digest.update(chunk)
                got += len(chunk)
            self.body_length = got
            self.digest = digest.hexdigest()
        except OSError:
            self.ended_early = True
        finally:
            sock.close()

    def join(self) -> None:
        assert self.thread is not None
        self.thread.join(30)
        assert not self.thread.is_alive()


def sha256_of(path: Path, offset: int, count: int) -> str:
    with path.open("rb") as f:
        f.seek(offset)
        return hashlib.sha256(f.read(count)).hexdigest()


async def connection(
    parser: str,
    tls: ssl.SSLContext | None,
    client_tls: ssl.SSLContext | None,
    rcvbuf: int = 0,
    sndbuf: int = 0,
) -> tuple[HttpConnection, Client]:
    """Our HTTP/1.1 connection and its client, the request read."""
    config = load_config_text(
        [
            (
                "10-test.toml",
                f"""
[global]
access_log = "off"
http1_parser = "{parser}"

[[listener]]
name = "plain"
bind = "127.0.0.1:18080"

[[route]]
respond = {{ status = 200, body = "hi" }}
""",
            )
        ]
    )
    gen = build_generation(config, number=1, default_pem=(b"", b""))
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        csock = socket.socket()
        if rcvbuf:
            csock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        csock.connect(lsock.getsockname())
        ours, _ = lsock.accept()
    ours.setblocking(False)
    if sndbuf:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    client = Client(csock, client_tls)
    client.begin()
    loop = asyncio.get_running_loop()
    conn = ConnIO(loop)
    await loop.connect_accepted_socket(lambda: conn, ours, ssl=tls)
    addr = ("127.0.0.1", 1)
    info = ConnInfo(
        peer=addr, client=addr, local=addr, destination=addr, local_port=1, tls=tls is not None
    )
    http = HttpConnection(conn, generation=gen, listener=gen.listeners["plain"], info=info)
    request = b""
    while b"\r\n\r\n" not in request:
        request += await conn.read(65536, loop.time() + 10)
    assert request == REQUEST
    http.h1.receive_data(request)
    return http, client


def count_sendfile(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the sendfile(2) calls ConnIO makes."""
    calls: list[int] = []
    real = os.sendfile

    def spy(out: int, fd: int, offset: int | None, count: int) -> int:
        n = real(out, fd, offset, count)
        calls.append(n)
        return n

    monkeypatch.setattr(os, "sendfile", spy)
    return calls


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize("use_tls", [False, True], ids=["plain", "tls"])
@pytest.mark.parametrize(("offset", "count"), [(0, SIZE), (1000, SIZE - 5000)])
def test_the_file_arrives_whole(
    loop_name: str,
    parser: str,
    use_tls: bool,
    offset: int,
    count: int,
    big_file: Path,
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = count_sendfile(monkeypatch)
    server_tls, client_tls = tls_contexts if use_tls else (None, None)

    async def main() -> tuple[Client, int, int]:
        http, client = await connection(parser, server_tls, client_tls)
        client.start.set()
        fd = os.open(big_file, os.O_RDONLY)
        try:
            await http.send_response(200, [(b"content-length", b"%d" % count)])
            await http.send_file(fd, offset, count)
            await http.send_end([])
        finally:
            os.close(fd)
        await asyncio.to_thread(client.join)
        await http.conn.aclose()
        return client, http.bytes_out, http.head_out

    client, bytes_out, head_out = run(loop_name, main)
    assert not client.ended_early
    assert client.body_length == count
    assert client.digest == sha256_of(big_file, offset, count)
    assert bytes_out == head_out + count
    if use_tls:
        assert calls == []  # TLS: read and sent in pieces
    else:
        assert sum(calls) == count
        assert max(calls) <= conn_io.SENDFILE_PIECE


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_small_file_goes_with_its_head(
    loop_name: str, big_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_sendfile(monkeypatch)
    writes: list[int] = []

    async def main() -> Client:
        http, client = await connection("httptools", None, None)
        transport = http.conn.transport
        assert transport is not None
        real_write = transport.write

        def spy(data: bytes) -> None:
            writes.append(len(data))
            real_write(data)

        http.conn.transport = _Spy(transport, spy)  # type: ignore[assignment]
        client.start.set()
        fd = os.open(big_file, os.O_RDONLY)
        try:
            await http.send_response(200, [(b"content-length", b"%d" % SENDFILE_MIN)])
            await http.send_file(fd, 7, SENDFILE_MIN)
            await http.send_end([])
            http.conn.flush()
        finally:
            os.close(fd)
        await asyncio.to_thread(client.join)
        await http.conn.aclose()
        return client

    client = run(loop_name, main)
    assert client.digest == sha256_of(big_file, 7, SENDFILE_MIN)
    assert calls == []
    assert len(writes) == 1  # head and body in one write
    assert writes[0] > SENDFILE_MIN


class _Spy:
    """A transport whose writes are seen (``writelines`` joined into one)."""

    def __init__(self, transport: Any, write: Callable[[bytes], None]) -> None:
        self._transport = transport
        self._write = write

    def write(self, data: bytes) -> None:
        self._write(data)

    def writelines(self, parts: list[bytes]) -> None:
        self._write(b"".join(parts))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("use_tls", [False, True], ids=["plain", "tls"])
def test_a_slow_reader_holds_neither_the_loop_nor_memory(
    loop_name: str,
    use_tls: bool,
    big_file: Path,
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_tls, client_tls = tls_contexts if use_tls else (None, None)
    count = 1024 * 1024 + 17

    async def main() -> tuple[Client, float, int, int]:
        http, client = await connection(
            "httptools", server_tls, client_tls, rcvbuf=4096, sndbuf=4096
        )
        transport = http.conn.transport
        assert transport is not None
        _, high = transport.get_write_buffer_limits()
        client.delay = 0.002  # about 8 MiB/s at most through a 4 KiB window: a second or so
        loop = asyncio.get_running_loop()
        gaps = [0.0]
        most_held = [0]
        sending = True

        async def heartbeat() -> None:
            last = loop.time()
            while sending:
                await asyncio.sleep(0.01)
                now = loop.time()
                gaps.append(now - last)
                most_held[0] = max(most_held[0], conn_io.held(http.conn))
                last = now

        beat = asyncio.ensure_future(heartbeat())
        client.start.set()
        fd = os.open(big_file, os.O_RDONLY)
        try:
            await http.send_response(200, [(b"content-length", b"%d" % count)])
            await http.send_file(fd, 0, count)
            await http.send_end([])
        finally:
            os.close(fd)
            sending = False
            await beat
        await asyncio.to_thread(client.join)
        await http.conn.aclose()
        return client, max(gaps), most_held[0], high

    client, gap, held, high = run(loop_name, main)
    assert client.digest == sha256_of(big_file, 0, count)
    assert gap < 0.25  # the loop ran on while the client read slowly
    # What waits in our hands: nothing with sendfile(2); over TLS, what the transport holds
    # before it pauses us (its high mark) and one piece more.
    assert held <= (0 if not use_tls else high + FILE_PIECE)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_what_was_written_before_goes_first(loop_name: str, big_file: Path) -> None:
    """Bytes waiting in the transport (the client did not read yet) go before the file's."""
    before = bytes(range(256)) * 8192  # 2 MiB: more than the socket takes at once

    async def main() -> tuple[Client, int]:
        http, client = await connection("httptools", None, None, rcvbuf=4096, sndbuf=4096)
        fd = os.open(big_file, os.O_RDONLY)
        total = len(before) + SIZE
        try:
            await http.send_response(200, [(b"content-length", b"%d" % total)])
            http._put(http.h1.send_data(before))
            http.conn.flush()
            transport = http.conn.transport
            assert transport is not None
            waiting = transport.get_write_buffer_size()
            asyncio.get_running_loop().call_later(0.2, client.start.set)
            await http.send_file(fd, 0, SIZE)
            await http.send_end([])
        finally:
            os.close(fd)
        await asyncio.to_thread(client.join)
        await http.conn.aclose()
        return client, waiting

    client, waiting = run(loop_name, main)
    assert waiting > 0  # the transport did hold bytes when send_file began
    with big_file.open("rb") as f:
        expected = hashlib.sha256(before + f.read()).hexdigest()
    assert client.digest == expected


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("use_tls", [False, True], ids=["plain", "tls"])
def test_a_stalled_reader_is_cut(
    loop_name: str,
    use_tls: bool,
    big_file: Path,
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(h1_connection, "FILE_STALL_TIMEOUT", 0.3)
    server_tls, client_tls = tls_contexts if use_tls else (None, None)

    async def main() -> tuple[float, bool, int]:
        http, client = await connection(
            "httptools", server_tls, client_tls, rcvbuf=4096, sndbuf=4096
        )
        fd = os.open(big_file, os.O_RDONLY)
        started = time.monotonic()
        try:
            await http.send_response(200, [(b"content-length", b"%d" % SIZE)])
            with pytest.raises(ClientGone):
                await http.send_file(fd, 0, SIZE)
        finally:
            os.close(fd)
        took = time.monotonic() - started
        closing = http.conn.is_closing()
        client.start.set()  # now it reads, and finds the connection cut
        await asyncio.to_thread(client.join)
        await http.conn.aclose()
        return took, closing, client.body_length

    took, closing, got = run(loop_name, main)
    assert took < 5
    assert closing
    assert got < SIZE


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("use_tls", [False, True], ids=["plain", "tls"])
def test_a_file_that_shrank_ends_the_response(
    loop_name: str,
    use_tls: bool,
    tmp_path: Path,
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_tls, client_tls = tls_contexts if use_tls else (None, None)
    path = tmp_path / "short.bin"
    path.write_bytes(b"x" * (512 * 1024))
    promised = 2 * 1024 * 1024

    async def main() -> tuple[int, int, Client]:
        http, client = await connection("httptools", server_tls, client_tls)
        client.start.set()
        fd = os.open(path, os.O_RDONLY)
        try:
            await http.send_response(200, [(b"content-length", b"%d" % promised)])
            with pytest.raises(RevproxyError, match="ended"):
                await http.send_file(fd, 0, promised)
        finally:
            os.close(fd)
        await http.conn.aclose()  # the exchange closes a response it could not finish
        await asyncio.to_thread(client.join)
        return http.bytes_out, http.head_out, client

    bytes_out, head_out, client = run(loop_name, main)
    assert bytes_out - head_out == 512 * 1024  # what did go out is counted
    assert client.ended_early
    assert client.body_length == 512 * 1024


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("parser", PARSERS)
def test_sendfile_needs_a_content_length(
    loop_name: str, parser: str, big_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_sendfile(monkeypatch)

    async def main() -> None:
        http, client = await connection(parser, None, None)
        client.start.set()
        fd = os.open(big_file, os.O_RDONLY)
        try:
            await http.send_response(200, [])  # chunked
            with pytest.raises(RevproxyError, match="Content-Length"):
                await http.send_file(fd, 0, SIZE)
        finally:
            os.close(fd)
        await http.conn.aclose()
        await asyncio.to_thread(client.join)

    run(loop_name, main)
    assert calls == []  # refused before a byte of the file went out


@pytest.mark.parametrize("parser", PARSERS)
def test_more_than_the_length_is_refused(
    parser: str, big_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_sendfile(monkeypatch)

    async def main() -> None:
        http, client = await connection(parser, None, None)
        client.start.set()
        fd = os.open(big_file, os.O_RDONLY)
        try:
            await http.send_response(200, [(b"content-length", b"%d" % (SIZE - 1))])
            with pytest.raises(RevproxyError):
                await http.send_file(fd, 0, SIZE)
        finally:
            os.close(fd)
        await http.conn.aclose()
        await asyncio.to_thread(client.join)

    run("asyncio", main)
    assert calls == []


# --- HTTP/2: pieces through the stream's windows ----------------------------------------------


def h2_client(sock: socket.socket, window: int, result: dict[str, Any]) -> None:
    """A client (the h2 library) that asks for one file and reads it, giving back the window
    as data arrives; a stream window of ``window`` bytes."""
    sock.settimeout(30)
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    conn.local_settings = h2.settings.Settings(
        client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window}
    )
    conn.initiate_connection()
    headers = [(":method", "GET"), (":path", "/f"), (":scheme", "http"), (":authority", "x")]
    conn.send_headers(1, headers, end_stream=True)
    digest = hashlib.sha256()
    got = 0
    try:
        sock.sendall(conn.data_to_send())
        ended = False
        while not ended:
            data = sock.recv(65536)
            if not data:
                break
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    result["status"] = dict(ev.headers)[b":status"]
                elif isinstance(ev, h2.events.DataReceived):
                    digest.update(ev.data)
                    got += len(ev.data)
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded | h2.events.StreamReset):
                    ended = True
                    result["reset"] = isinstance(ev, h2.events.StreamReset)
            sock.sendall(conn.data_to_send())
        conn.close_connection()
        sock.sendall(conn.data_to_send())
    finally:
        sock.close()
        result["length"] = got
        result["digest"] = digest.hexdigest()


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize(("offset", "count"), [(0, SIZE), (3, 70_000)])
def test_http2_sends_the_file_in_pieces(
    loop_name: str, offset: int, count: int, big_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_sendfile(monkeypatch)
    sent: dict[str, int] = {}

    async def serve(self: h2_connection.Http2Connection, stream: Any) -> None:
        fd = os.open(big_file, os.O_RDONLY)
        try:
            await stream.send_response(200, [(b"content-length", b"%d" % count)])
            await stream.send_file(fd, offset, count)
            await stream.send_end(None)
            sent["bytes_out"] = stream.bytes_out
        finally:
            os.close(fd)
            self.streams.pop(stream.stream_id, None)
            stream.close(H2_NO_ERROR)

    monkeypatch.setattr(h2_connection.Http2Connection, "_serve", serve)
    monkeypatch.setattr(h2_plain, "ENABLED", False)  # every stream to the ``_serve`` above
    result: dict[str, Any] = {}

    async def main() -> None:
        config = load_config_text(
            [
                (
                    "10-test.toml",
                    """
[global]
access_log = "off"

[[listener]]
name = "plain"
bind = "127.0.0.1:18080"

[[route]]
respond = { status = 200, body = "hi" }
""",
                )
            ]
        )
        gen = build_generation(config, number=1, default_pem=(b"", b""))
        client_sock, ours = socket.socketpair()
        ours.setblocking(False)
        # A small window: the file goes out as the client gives it back.
        thread = threading.Thread(
            target=h2_client, args=(client_sock, 32 * 1024, result), daemon=True
        )
        thread.start()
        reader, writer = await asyncio.open_connection(sock=ours)
        addr = ("127.0.0.1", 1)
        info = ConnInfo(
            peer=addr, client=addr, local=addr, destination=addr, local_port=1, tls=False
        )
        conn = h2_connection.Http2Connection(
            reader, writer, generation=gen, listener=gen.listeners["plain"], info=info
        )
        await conn.run()
        await asyncio.to_thread(thread.join, 30)
        assert not thread.is_alive()

    run(loop_name, main)
    assert result["status"] == b"200"
    assert not result["reset"]
    assert result["length"] == count
    assert result["digest"] == sha256_of(big_file, offset, count)
    assert sent["bytes_out"] == count
    assert calls == []


def test_pieces_are_bounded_and_a_short_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    data = os.urandom(3 * FILE_PIECE + 5)
    path.write_bytes(data)
    pieces: list[bytes] = []

    async def send(piece: bytes) -> None:
        pieces.append(piece)

    async def main() -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            await send_file_pieces(send, fd, 2, len(data) - 2)
            assert b"".join(pieces) == data[2:]
            assert max(map(len, pieces)) == FILE_PIECE
            pieces.clear()
            with pytest.raises(RevproxyError, match="ended"):
                await send_file_pieces(send, fd, FILE_PIECE, len(data))
            assert b"".join(pieces) == data[FILE_PIECE:]
        finally:
            os.close(fd)

    run("asyncio", main)
