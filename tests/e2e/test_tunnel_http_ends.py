"""How an HTTP expose's connections end through the tunnel (the agent's callback relay,
``tunnel.stream.TransportRelay``): an origin that closes after its answer, one that resets
before answering (502) or half-way through a body (the client's response is cut, never
completed), a client that leaves half-way through a long body (the origin's connection is
ended within seconds), and a request body larger than the stream window (paused and resumed,
intact). Every case is followed by ordinary requests on the same tunnel.
"""

from __future__ import annotations

import hashlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import LOOPBACK, free_port, wait_until
from tunnel_peers import Agent, enroll_token, proxy_config, start_proxy

pytestmark = [pytest.mark.e2e]


class EndingOrigin:
    """A raw HTTP/1.1 origin whose path says how the exchange ends."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((LOOPBACK, 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.slow_ended = threading.Event()  # the /slow connection saw its end
        self.upload_digest = ""
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._stop = True
        self.sock.close()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    got = conn.recv(65536)
                    if not got:
                        return
                    buf += got
                head, _, buf = buf.partition(b"\r\n\r\n")
                path = head.split(b" ")[1]
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buf) < length:
                    got = conn.recv(1 << 20)
                    if not got:
                        return
                    buf += got
                body, buf = buf[:length], buf[length:]
                if not self._answer(conn, path, body):
                    return
        except OSError:
            return
        finally:
            conn.close()

    def _answer(self, conn: socket.socket, path: bytes, body: bytes) -> bool:
        """Answer one request; False when the connection is over."""
        if path == b"/close":
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 5\r\n\r\nbye\r\n"
            )
            conn.shutdown(socket.SHUT_WR)
            return False
        if path == b"/reset-early":
            _reset(conn)
            return False
        if path == b"/reset-mid":
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n" + b"x" * 1000)
            time.sleep(0.2)
            _reset(conn)
            return False
        if path == b"/slow":
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 100000000\r\n\r\n" + b"y" * 1000)
            conn.settimeout(0.2)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    conn.sendall(b"y" * 1000)
                    if conn.recv(1) == b"":
                        break
                except TimeoutError:
                    continue
                except OSError:
                    break
                time.sleep(0.05)
            else:
                return False
            self.slow_ended.set()
            return False
        if path == b"/upload":
            self.upload_digest = hashlib.sha256(body).hexdigest()
            reply = self.upload_digest.encode()
        else:
            reply = b"ok"
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(reply), reply))
        return True


def _reset(conn: socket.socket) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def request(port: int, path: str, body: bytes = b"", timeout: float = 10.0) -> tuple[int, bytes]:
    """One request on a connection of its own: (status, body) — status 0 when the response
    was cut (fewer body bytes than its Content-Length)."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as c:
        c.sendall(
            f"POST {path} HTTP/1.1\r\nhost: t\r\ncontent-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        data = b""
        while True:
            try:
                got = c.recv(1 << 20)
            except ConnectionResetError:
                got = b""
            if not got:
                break
            data += got
            head, sep, rest = data.partition(b"\r\n\r\n")
            if sep:
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                if len(rest) >= length:
                    return int(head.split(b" ")[1]), rest[:length]
        return 0, data


@pytest.fixture
def origin() -> Iterator[EndingOrigin]:
    o = EndingOrigin()
    yield o
    o.close()


def test_http_expose_ends(tmp_path: Path, origin: EndingOrigin) -> None:
    http_port, tunnel_port = free_port(), free_port()
    cfg = proxy_config(tmp_path / "state", http_port, tunnel_port)
    proxy = start_proxy(tmp_path / "proxy", cfg, http_port, tunnel_port)
    agent = Agent(tmp_path / "agent", tunnel_port, {"web": (origin.port, "http")})
    try:
        assert agent.enroll(enroll_token(proxy.conf)).returncode == 0
        agent.start(wait_connections=2)
        assert wait_until(lambda: request(http_port, "/ok") == (200, b"ok"), 5)

        assert request(http_port, "/close") == (200, b"bye\r\n")
        assert request(http_port, "/ok") == (200, b"ok")

        status, body = request(http_port, "/reset-early")
        assert status == 502, body
        assert b"127.0.0.1" not in body and str(origin.port).encode() not in body
        assert request(http_port, "/ok") == (200, b"ok")

        status, cut = request(http_port, "/reset-mid")
        assert status == 0 and b"200 OK" in cut  # the head came, the body was cut
        assert request(http_port, "/ok") == (200, b"ok")

        # The client leaves half-way through a long body: the origin's connection ends.
        with socket.create_connection((LOOPBACK, http_port), timeout=10) as c:
            c.sendall(b"GET /slow HTTP/1.1\r\nhost: t\r\n\r\n")
            assert b"200 OK" in c.recv(65536)
        assert origin.slow_ended.wait(10), "the origin's connection outlived the client's"
        assert request(http_port, "/ok") == (200, b"ok")

        # A request body larger than a stream's window: paused, resumed, intact.
        big = bytes(range(256)) * (24 * 1024 * 4)  # 24 MiB
        status, digest = request(http_port, "/upload", big, timeout=60)
        assert status == 200 and digest.decode() == hashlib.sha256(big).hexdigest()
        assert "Traceback" not in agent.text()
        assert "Traceback" not in proxy.stderr()
    finally:
        agent.stop()
        proxy.stop()
