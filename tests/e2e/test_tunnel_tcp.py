"""TCP flows through the reverse tunnel (issue 16, docs/tunnel.md): a ``mode = "tcp"`` listener
whose pool is a tunnel server. The client's socket is relayed to the tunnel stream directly
(no socket pair between), so every L4 rule is checked here through a real agent: bytes both
ways by checksum with half-close, on a spare connection and on a shared one; the access-log
line and its byte counts; a PROXY header toward the target; a target's reset reaching the
client as a reset and a client's the target; the idle timeout (both connections end cleanly);
a tcp listener that terminates TLS.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import struct
import threading
import time
from pathlib import Path

import pytest
from harness import LOOPBACK, Proxy, free_port, make_cert, toml_path, wait_until
from l4_peers import (
    TcpOrigin,
    access_field,
    access_status,
    pattern_block,
    read_all,
    send_pattern,
)
from tunnel_peers import Agent, enroll_token, proxy_config, start_proxy

pytestmark = [pytest.mark.e2e]

BIG = 20 * 1000 * 1000
LABEL = "bulk/tunnel:home/bulk"


def start(
    tmp_path: Path, target: int, *, pool: str = "", listener: str = "", spare: int = 2
) -> tuple[Proxy, Agent, int]:
    http_port, tunnel_port, tcp_port = free_port(), free_port(), free_port()
    extra = f"""
[[listener]]
name = "bulk"
bind = ["{LOOPBACK}:{tcp_port}"]
mode = "tcp"
pool = "bulk"
{listener}
[pool.bulk]
servers = [{{ tunnel = "home/bulk" }}]
{pool}
"""
    cfg = proxy_config(tmp_path / "state", http_port, tunnel_port, extra=extra)
    proxy = start_proxy(tmp_path / "proxy", cfg, http_port, tunnel_port, tcp_port)
    agent = Agent(tmp_path / "agent", tunnel_port, {"bulk": (target, "tcp")}, spare=spare)
    try:
        assert agent.enroll(enroll_token(proxy.conf)).returncode == 0
        agent.start(wait_connections=2 + spare)
    except BaseException:
        agent.stop()
        proxy.stop()
        raise
    return proxy, agent, tcp_port


def flowed(line: str) -> bool:
    """An access-log line of a flow that reached the tunnel server (the harness's readiness
    probe of the listener gets a line of its own, 503)."""
    return '"TCP -"' in line and f"backend={LABEL}" in line


def pattern_sha256(total: int, seed: bytes) -> str:
    """The sha256 of what ``send_pattern(sock, total, seed)`` sends."""
    block, digest, done = pattern_block(seed), hashlib.sha256(), 0
    while done < total:
        chunk = block[: min(len(block), total - done)]
        digest.update(chunk)
        done += len(chunk)
    return digest.hexdigest()


def read_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(min(n - len(out), 1 << 20))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def sha_of_stream(sock: socket.socket) -> tuple[int, str]:
    digest, total = hashlib.sha256(), 0
    while chunk := sock.recv(1 << 20):
        digest.update(chunk)
        total += len(chunk)
    return total, digest.hexdigest()


@pytest.mark.parametrize("spare", [2, 0], ids=["spare", "shared"])
def test_bytes_both_ways_with_half_close_and_the_access_line(tmp_path: Path, spare: int) -> None:
    received: dict[str, tuple[int, str]] = {}

    def origin(sock: socket.socket, _n: int) -> None:
        received["up"] = sha_of_stream(sock)  # until the client's end reaches the target
        sock.sendall(b"%d\n" % received["up"][0])
        send_pattern(sock, BIG, b"down")
        sock.shutdown(socket.SHUT_WR)

    with TcpOrigin(origin) as target:
        proxy, agent, port = start(tmp_path, target.port, spare=spare)
        try:
            sock = socket.create_connection((LOOPBACK, port))
            up_sha = send_pattern(sock, BIG, b"up")
            sock.shutdown(socket.SHUT_WR)  # half-close: the reply still comes whole
            got = read_all(sock)
            sock.close()
            head, _, body = got.partition(b"\n")
            assert head == b"%d" % BIG
            assert len(body) == BIG
            assert hashlib.sha256(body).hexdigest() == pattern_sha256(BIG, b"down")
            assert received["up"] == (BIG, up_sha)
            line = proxy.wait_access(flowed)
            assert access_status(line) == 0
            assert access_field(line, "in") == str(BIG)
            assert access_field(line, "out") == str(len(got))
            assert access_field(line, "backend") == LABEL
            assert not target.errors
            if spare:  # the flow had a spare connection of its own; the agent made another
                assert wait_until(lambda: agent.connected() >= 2 + spare + 1, 5), agent.text()
        finally:
            agent.stop()
            proxy.stop()


def test_a_proxy_header_reaches_the_target_through_the_tunnel(tmp_path: Path) -> None:
    lines: list[bytes] = []

    def origin(sock: socket.socket, _n: int) -> None:
        head = bytearray()
        while not head.endswith(b"\r\n"):
            head += sock.recv(1)
        lines.append(bytes(head))
        sock.sendall(b"hello " + read_all(sock))

    with TcpOrigin(origin) as target:
        proxy, agent, port = start(tmp_path, target.port, pool='send_proxy = "v1"')
        try:
            sock = socket.create_connection((LOOPBACK, port))
            client_port = sock.getsockname()[1]
            sock.sendall(b"world")
            sock.shutdown(socket.SHUT_WR)
            assert read_all(sock) == b"hello world"
            sock.close()
            assert lines == [f"PROXY TCP4 {LOOPBACK} {LOOPBACK} {client_port} {port}\r\n".encode()]
        finally:
            agent.stop()
            proxy.stop()


def test_a_target_reset_resets_the_client(tmp_path: Path) -> None:
    def origin(sock: socket.socket, _n: int) -> None:
        sock.sendall(b"partial")
        time.sleep(0.3)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    with TcpOrigin(origin) as target:
        proxy, agent, port = start(tmp_path, target.port)
        try:
            sock = socket.create_connection((LOOPBACK, port))
            sock.settimeout(10)
            got = bytearray()
            with pytest.raises(ConnectionResetError):
                while chunk := sock.recv(100):
                    got += chunk
            sock.close()
            assert got == b"partial"  # a cut stream is never passed on as a clean end
            line = proxy.wait_access(flowed)
            assert access_status(line) == 502
        finally:
            agent.stop()
            proxy.stop()


def test_a_silent_flow_ends_after_the_idle_timeout(tmp_path: Path) -> None:
    ended = threading.Event()

    def origin(sock: socket.socket, _n: int) -> None:
        read_all(sock)  # the end comes from the proxy when the flow is idle
        ended.set()

    with TcpOrigin(origin) as target:
        pool = 'timeouts = { tunnel = "1s" }'
        proxy, agent, port = start(tmp_path, target.port, pool=pool)
        try:
            sock = socket.create_connection((LOOPBACK, port))
            sock.sendall(b"x")
            started = time.monotonic()
            sock.settimeout(10)
            assert read_all(sock) == b""
            assert 0.8 <= time.monotonic() - started < 5
            sock.close()
            line = proxy.wait_access(flowed)
            assert access_status(line) == 504
            assert access_field(line, "in") == "1"
            assert ended.wait(5)  # the target's connection ended too
        finally:
            agent.stop()
            proxy.stop()


def test_a_tcp_listener_with_tls_relays_through_the_tunnel(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, "db", ["db.test"])

    def origin(sock: socket.socket, _n: int) -> None:
        (size,) = struct.unpack("!Q", read_exactly(sock, 8))
        sock.sendall(hashlib.sha256(read_exactly(sock, size)).hexdigest().encode())

    listener = f"tls = {{ certs = [{{ cert = {toml_path(cert)}, key = {toml_path(key)} }}] }}"
    with TcpOrigin(origin) as target:
        proxy, agent, port = start(tmp_path, target.port, listener=listener)
        try:
            ctx = ssl.create_default_context(cafile=str(cert))
            payload = bytes(range(256)) * 20000  # 5 MB
            with (
                socket.create_connection((LOOPBACK, port)) as raw,
                ctx.wrap_socket(raw, server_hostname="db.test") as tls,
            ):
                # TLS is not half-closed: the target answers once it has it all.
                tls.sendall(struct.pack("!Q", len(payload)) + payload)
                got = read_exactly(tls, 64)
            assert got == hashlib.sha256(payload).hexdigest().encode()
            line = proxy.wait_access(flowed)
            assert access_field(line, "backend") == LABEL
            assert access_field(line, "in") == str(8 + len(payload))
            assert access_field(line, "out") == "64"
        finally:
            agent.stop()
            proxy.stop()


def test_a_client_reset_resets_the_target(tmp_path: Path) -> None:
    seen: list[str] = []
    got_first = threading.Event()

    def origin(sock: socket.socket, _n: int) -> None:
        assert sock.recv(5) == b"first"
        got_first.set()
        try:
            while sock.recv(100):
                pass
            seen.append("end")
        except ConnectionResetError:
            seen.append("reset")

    with TcpOrigin(origin) as target:
        proxy, agent, port = start(tmp_path, target.port)
        try:
            sock = socket.create_connection((LOOPBACK, port))
            sock.sendall(b"first")
            assert got_first.wait(5)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # RST: the target must not take it for a clean end
            assert wait_until(lambda: bool(seen), 5)
            assert seen == ["reset"]
            line = proxy.wait_access(flowed)
            assert access_status(line) == 499
        finally:
            agent.stop()
            proxy.stop()
