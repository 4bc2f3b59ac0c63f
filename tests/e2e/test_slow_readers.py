"""Memory per slow reader is bounded (slowhttptest -X, 1,000 connections).

A slow-read attack opens many connections, asks for a large response and reads it a few bytes
at a time through a tiny TCP window. What the proxy reads from the origin and the client does
not take must be held somewhere; it is bounded per connection (``global.buffer_size`` each way)
and in all (``global.max_buffer_memory``), so resident memory stays flat and is given back.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import hpack
import pytest
from harness import LOOPBACK, Proxy, curl, free_port
from l4_peers import nginx

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("real_peers")]

SLOW_READERS = 1000
ATTACK_SECONDS = 25
# Resident memory the proxy may reach during the attack (the bound).
RSS_LIMIT_KIB = 150 * 1024
BIG = 8 * 1024 * 1024


@contextlib.contextmanager
def nginx_files(directory: Path) -> Iterator[int]:
    """nginx serving ``directory/www`` on a loopback port."""
    with nginx(directory, f"root {directory / 'www'};", http="keepalive_requests 100000;") as port:
        yield port


def test_slow_readers_hold_bounded_memory(tmp_path: Path) -> None:
    tool = shutil.which("slowhttptest")
    if tool is None:
        pytest.fail("slowhttptest not found (apt-get install slowhttptest)")
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "big").write_bytes(bytes(range(256)) * (BIG // 256))
    with nginx_files(tmp_path) as origin:
        port = free_port()
        config = f"""
[[listener]]
name = "web"
bind = ["{LOOPBACK}:{port}"]

[[route]]
pool = "nginx"

[pool.nginx]
servers = ["{LOOPBACK}:{origin}"]
"""
        with Proxy(tmp_path, config, ports=[port]) as proxy:
            assert curl("-o", "/dev/null", f"http://{LOOPBACK}:{port}/big").returncode == 0
            idle = proxy.rss_kib()
            peak = [idle]
            done = threading.Event()

            def sample() -> None:
                while not done.wait(0.2):
                    with contextlib.suppress(OSError, ValueError):
                        peak[0] = max(peak[0], proxy.rss_kib())

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            attack = subprocess.run(
                [
                    tool, "-X", "-c", str(SLOW_READERS), "-r", "500", "-l", str(ATTACK_SECONDS),
                    "-w", "512", "-y", "1024", "-n", "5", "-z", "32", "-k", "3", "-p", "5",
                    "-u", f"http://{LOOPBACK}:{port}/big",
                ],
                capture_output=True, text=True, timeout=ATTACK_SECONDS + 60,
            )  # fmt: skip
            done.set()
            sampler.join()
            # Once the readers are gone, what they held is given back.
            after = proxy.rss_kib()
            deadline = time.monotonic() + 15
            while after > idle + 40 * 1024 and time.monotonic() < deadline:
                time.sleep(0.5)
                after = proxy.rss_kib()
            summary = (
                f"idle {idle // 1024} MiB, peak {peak[0] // 1024} MiB, after {after // 1024} MiB"
            )
            print(summary)
            print(attack.stdout[-1500:])
            assert peak[0] < RSS_LIMIT_KIB, summary
            assert after < idle + 40 * 1024, summary
            assert curl("-o", "/dev/null", f"http://{LOOPBACK}:{port}/big").returncode == 0


# --- HTTP/2: one client connection, many streams, a window kept shut ---------------------------

H2_STREAMS = 100
# Resident memory the proxy may add while those streams wait for their window (+130 MiB in
# the issue; +15 MiB with the origin's unread bytes bounded but streams not paced; +1 MiB
# paced).
H2_GROWTH_LIMIT_KIB = 6 * 1024
# How long the window stays shut while the proxy's memory is watched.
H2_STALL_SECONDS = 4.0
# Longest the whole transfer may take once the window opens.
H2_TRANSFER_TIMEOUT = 90.0
_DATA, _HEADERS, _RST, _SETTINGS, _PING, _GOAWAY, _WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
_END_STREAM, _ACK = 0x1, 0x1
_INITIAL_WINDOW_SIZE = 0x4
_MAX_WINDOW = 2**31 - 1


def _frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return struct.pack(">BHBBL", n >> 16, n & 0xFFFF, ftype, flags, sid) + payload


class ShutWindowClient:
    """A prior-knowledge HTTP/2 client whose streams start with a window of 0 (SETTINGS), so
    nothing of a response's body can be sent to it until it opens them (``open_windows``)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((LOOPBACK, port), timeout=10)
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.buf = b""
        self.status: dict[int, int] = {}
        self.size: dict[int, int] = {}
        self.digest: dict[int, hashlib._Hash] = {}
        self.ended: set[int] = set()
        self.resets: dict[int, int] = {}
        self.goaway = False
        settings = struct.pack(">HL", _INITIAL_WINDOW_SIZE, 0)
        self.sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(_SETTINGS, 0, 0, settings))

    def get(self, sid: int, authority: str, path: str) -> None:
        block = self.encoder.encode(
            [(":method", "GET"), (":scheme", "http"), (":authority", authority), (":path", path)]
        )
        self.sock.sendall(_frame(_HEADERS, 0x4 | _END_STREAM, sid, block))
        self.size[sid] = 0
        self.digest[sid] = hashlib.sha256()

    def open_windows(self) -> None:
        """Every stream's window and the connection's to 2^31-1: nothing is acknowledged
        after this, none is needed."""
        settings = struct.pack(">HL", _INITIAL_WINDOW_SIZE, _MAX_WINDOW)
        increment = struct.pack(">L", _MAX_WINDOW - 65535)
        self.sock.sendall(
            _frame(_SETTINGS, 0, 0, settings) + _frame(_WINDOW_UPDATE, 0, 0, increment)
        )

    def read(self, timeout: float) -> bool:
        """Read and handle what came within ``timeout``; False once the proxy closed."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            return True
        if not data:
            return False
        buf = self.buf + data if self.buf else data
        view = memoryview(buf)
        i = 0
        replies = b""
        while len(buf) - i >= 9:
            hi, lo, ftype, flags, sid = struct.unpack_from(">BHBBL", buf, i)
            n = (hi << 16) | lo
            if len(buf) - i - 9 < n:
                break
            payload = view[i + 9 : i + 9 + n]
            i += 9 + n
            sid &= 0x7FFFFFFF
            if ftype == _DATA:
                self.size[sid] += n
                self.digest[sid].update(payload)
            elif ftype == _HEADERS:
                fields = dict(self.decoder.decode(bytes(payload)))
                if ":status" in fields:
                    self.status[sid] = int(fields[":status"])
            elif ftype == _SETTINGS and not flags & _ACK:
                replies += _frame(_SETTINGS, _ACK, 0)
            elif ftype == _PING and not flags & _ACK:
                replies += _frame(_PING, _ACK, 0, bytes(payload))
            elif ftype == _RST:
                self.resets[sid] = struct.unpack(">L", payload)[0]
            elif ftype == _GOAWAY:
                self.goaway = True
            if ftype in (_DATA, _HEADERS) and flags & _END_STREAM:
                self.ended.add(sid)
        self.buf = buf[i:]
        if replies:
            self.sock.sendall(replies)
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def test_h2_streams_with_shut_window_hold_bounded_memory(tmp_path: Path) -> None:
    """One HTTP/2 client opens 100 streams of an 8 MiB file (real nginx behind) with every
    stream's window at 0: each stream's origin is read no further than the stream may send,
    so the proxy's memory hardly grows; once the windows open, every byte arrives intact."""
    body = bytes(range(256)) * (BIG // 256)
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "big").write_bytes(body)
    expected = hashlib.sha256(body).hexdigest()
    with nginx_files(tmp_path) as origin:
        port = free_port()
        config = f"""
[[listener]]
name = "web"
bind = ["{LOOPBACK}:{port}"]
h2c = true

[[route]]
pool = "nginx"

[pool.nginx]
servers = ["{LOOPBACK}:{origin}"]
"""
        with Proxy(tmp_path, config, ports=[port]) as proxy:
            assert curl("-o", "/dev/null", f"http://{LOOPBACK}:{port}/big").returncode == 0
            idle = proxy.rss_kib()
            client = ShutWindowClient(port)
            try:
                sids = [1 + 2 * k for k in range(H2_STREAMS)]
                for sid in sids:
                    client.get(sid, f"{LOOPBACK}:{port}", "/big")
                peak = idle
                stall_end = time.monotonic() + H2_STALL_SECONDS
                while time.monotonic() < stall_end:
                    assert client.read(0.2), "the proxy closed the connection"
                    peak = max(peak, proxy.rss_kib())
                heads = sum(1 for sid in sids if client.status.get(sid) == 200)
                sent = sum(client.size.values())
                summary = (
                    f"{H2_STREAMS} streams, window 0: idle {idle // 1024} MiB, "
                    f"peak {peak // 1024} MiB (+{(peak - idle) // 1024} MiB), "
                    f"{heads} heads, {sent} body bytes before the windows opened"
                )
                print(summary)
                assert sent == 0, summary
                assert peak - idle < H2_GROWTH_LIMIT_KIB, summary
                client.open_windows()
                deadline = time.monotonic() + H2_TRANSFER_TIMEOUT
                while len(client.ended) < H2_STREAMS and time.monotonic() < deadline:
                    if not client.read(1.0):
                        break
                    if client.resets or client.goaway:
                        break
                assert not client.resets and not client.goaway, (client.resets, client.goaway)
                assert client.ended == set(sids), f"{len(client.ended)} of {H2_STREAMS} ended"
                for sid in sids:
                    assert client.status[sid] == 200
                    assert client.size[sid] == BIG, (sid, client.size[sid])
                    assert client.digest[sid].hexdigest() == expected, sid
            finally:
                client.close()


# --- uploads: a client sending fast to an origin that reads slowly ----------------------------

UPLOADS = 100
UPLOAD_SIZE = 12 * 1024 * 1024
# Resident memory the proxy may add while the uploads wait for the origin: +45 MiB unpaced
# (~0.45 MiB each, read from the client ahead of what the origin takes), +15 MiB paced (what
# is left is mostly the client's first read, head and body together, before the body is
# paced).
UPLOAD_GROWTH_LIMIT_KIB = 25 * 1024
UPLOAD_STALL_SECONDS = 4.0
UPLOAD_TIMEOUT = 90.0
_SMALL_BUFFER = 64 * 1024


def _upload_body(k: int) -> bytes:
    return bytes((k + i) % 256 for i in range(256)) * (UPLOAD_SIZE // 256)


class StalledOrigin:
    """An HTTP/1.1 origin that reads request heads at once and request bodies only once
    ``release`` is set; it counts and hashes every body and answers 200."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SMALL_BUFFER)
        self.listener.bind((LOOPBACK, 0))
        self.listener.listen(UPLOADS + 10)
        self.port = self.listener.getsockname()[1]
        self.release = threading.Event()
        self.stop = threading.Event()
        self.bodies: dict[str, tuple[int, str]] = {}
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self.threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(UPLOAD_TIMEOUT)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            head, _, rest = head.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split()[1]
            length = next(
                int(line.split(":", 1)[1])
                for line in lines
                if line.lower().startswith("content-length")
            )
            self.release.wait(UPLOAD_TIMEOUT)
            digest = hashlib.sha256(rest)
            got = len(rest)
            while got < length:
                chunk = conn.recv(min(1 << 20, length - got))
                if not chunk:
                    break
                digest.update(chunk)
                got += len(chunk)
            self.bodies[path] = (got, digest.hexdigest())
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")

    def close(self) -> None:
        self.release.set()
        self.stop.set()
        with contextlib.suppress(OSError):
            self.listener.close()


def _uploader(port: int, k: int, statuses: dict[int, bytes]) -> None:
    body = _upload_body(k)
    with socket.create_connection((LOOPBACK, port), timeout=UPLOAD_TIMEOUT) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SMALL_BUFFER)
        head = (
            f"POST /up/{k} HTTP/1.1\r\nHost: up\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        sock.sendall(head)
        view = memoryview(body)
        for i in range(0, len(body), 1 << 18):
            sock.sendall(view[i : i + (1 << 18)])
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
        statuses[k] = answer.split(b"\r\n", 1)[0]


def test_uploads_to_a_slow_origin_hold_bounded_memory(tmp_path: Path) -> None:
    """100 HTTP/1.1 clients upload 12 MiB each as fast as they can to an origin that reads
    nothing for a while: the proxy reads each client no further ahead than the origin's socket
    takes, so its memory hardly grows; once the origin reads, every body arrives intact."""
    origin = StalledOrigin()
    try:
        port = free_port()
        config = f"""
[[listener]]
name = "web"
bind = ["{LOOPBACK}:{port}"]

[[route]]
pool = "slow"

[pool.slow]
servers = ["{LOOPBACK}:{origin.port}"]
"""
        with Proxy(tmp_path, config, ports=[port]) as proxy:
            idle = proxy.rss_kib()
            statuses: dict[int, bytes] = {}
            clients = [
                threading.Thread(target=_uploader, args=(port, k, statuses), daemon=True)
                for k in range(UPLOADS)
            ]
            for t in clients:
                t.start()
            peak = idle
            stall_end = time.monotonic() + UPLOAD_STALL_SECONDS
            while time.monotonic() < stall_end:
                time.sleep(0.2)
                peak = max(peak, proxy.rss_kib())
            summary = (
                f"{UPLOADS} uploads, origin stalled: idle {idle // 1024} MiB, "
                f"peak {peak // 1024} MiB (+{(peak - idle) // 1024} MiB)"
            )
            print(summary)
            origin.release.set()
            deadline = time.monotonic() + UPLOAD_TIMEOUT
            for t in clients:
                t.join(max(0.1, deadline - time.monotonic()))
            assert peak - idle < UPLOAD_GROWTH_LIMIT_KIB, summary
            assert all(statuses.get(k, b"").endswith(b" 200 OK") for k in range(UPLOADS)), statuses
            for k in range(UPLOADS):
                expected = hashlib.sha256(_upload_body(k)).hexdigest()
                assert origin.bodies[f"/up/{k}"] == (UPLOAD_SIZE, expected), k
    finally:
        origin.close()
