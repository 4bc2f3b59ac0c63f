"""Passthrough routing and the ClientHello peek, on real loopback sockets.

Table-driven: which (pattern, pool) a server name reaches; how a listener's passthrough table
is ordered; and that ``peek_client_hello`` leaves every byte in the kernel, waits for a
fragmented ClientHello, and refuses plain text, oversize, early close and slow clients.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from revproxy.config.model import Bind, Listener, ListenerTLS, Route
from revproxy.edge.generation import passthrough_table
from revproxy.edge.listener import peek_client_hello
from revproxy.edge.tcp import match_passthrough
from revproxy.errors import ClientHelloError

TLS = ListenerTLS(cert_dir=Path("/nonexistent"))


def listener(tls: ListenerTLS | None = TLS) -> Listener:
    return Listener(name="l", bind=(Bind(host="127.0.0.1", port=443),), tls=tls)


ROUTES = (
    Route(sni=("*.example.com",), passthrough=True, pool="wild"),
    Route(sni=("a.b.example.com", "*.b.example.com"), passthrough=True, pool="deep"),
    Route(sni=("legacy.example.com", "Other.Example.COM."), passthrough=True, pool="legacy"),
    Route(sni=("legacy.example.com",), passthrough=True, pool="shadowed"),
    Route(host=("www.example.com",), pool="web"),
)


def test_passthrough_table_order() -> None:
    assert passthrough_table(listener(), ROUTES) == (
        ("a.b.example.com", "deep"),
        ("legacy.example.com", "legacy"),
        ("other.example.com", "legacy"),
        ("*.b.example.com", "deep"),
        ("*.example.com", "wild"),
    )


def test_no_table_without_tls() -> None:
    assert passthrough_table(listener(tls=None), ROUTES) == ()
    assert passthrough_table(listener(), ROUTES[-1:]) == ()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("legacy.example.com", ("legacy.example.com", "legacy")),
        ("other.example.com", ("other.example.com", "legacy")),
        ("a.b.example.com", ("a.b.example.com", "deep")),
        ("c.b.example.com", ("*.b.example.com", "deep")),
        ("x.example.com", ("*.example.com", "wild")),
        ("example.com", None),  # a wildcard needs one more label
        ("x.y.z.example.com", None),  # ... exactly one
        ("www.example.org", None),
    ],
)
def test_match_passthrough(name: str, expected: tuple[str, str] | None) -> None:
    assert match_passthrough(passthrough_table(listener(), ROUTES), name) == expected


# --- peeking -----------------------------------------------------------------------------------


def client_hello(server_name: str | None = "legacy.example.com") -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(client, server side as accepted by a listener: non-blocking)."""
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        client = socket.create_connection(lsock.getsockname())
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        server, _ = lsock.accept()
    server.setblocking(False)
    try:
        yield client, server
    finally:
        client.close()
        server.close()


def send_later(sock: socket.socket, pieces: list[bytes], pause: float) -> threading.Thread:
    def go() -> None:
        for piece in pieces:
            time.sleep(pause)
            sock.sendall(piece)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def test_peek_leaves_bytes_in_kernel(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    hello = client_hello()
    client.sendall(hello + b"more")
    info = asyncio.run(peek_client_hello(server, timeout=5))
    assert info.server_name == "legacy.example.com"
    server.setblocking(True)
    server.settimeout(5)
    got = b""
    while len(got) < len(hello) + 4:
        got += server.recv(65536)
    assert got == hello + b"more"
    # SO_RCVLOWAT is back to 1: a single byte makes the socket readable again.
    assert server.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 1


@pytest.mark.parametrize("pieces", [3, 40])
def test_peek_waits_for_fragments(pair: tuple[socket.socket, socket.socket], pieces: int) -> None:
    client, server = pair
    hello = client_hello("a.example.com")
    size = len(hello) // pieces + 1
    t = send_later(client, [hello[i : i + size] for i in range(0, len(hello), size)], 0.02)

    async def go() -> str | None:
        loop = asyncio.get_running_loop()
        wakeups = 0
        original = loop.add_reader

        def counting(fd: int, cb: object, *args: object) -> None:
            nonlocal wakeups
            wakeups += 1
            original(fd, cb, *args)  # type: ignore[arg-type]

        loop.add_reader = counting  # type: ignore[method-assign]
        info = await peek_client_hello(server, timeout=10)
        assert wakeups <= pieces + 1  # one wake-up per piece, no busy polling
        return info.server_name

    assert asyncio.run(go()) == "a.example.com"
    t.join()


def test_peek_without_sni(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    client.sendall(client_hello(None))
    assert asyncio.run(peek_client_hello(server, timeout=5)).server_name is None


@pytest.mark.parametrize(
    "data", [b"GET / HTTP/1.1\r\n\r\n", b"\x00", b"PRI * HTTP/2.0\r\n", b"SSH-2.0-x\r\n"]
)
def test_peek_refuses_non_tls(pair: tuple[socket.socket, socket.socket], data: bytes) -> None:
    client, server = pair
    client.sendall(data)
    with pytest.raises(ClientHelloError):
        asyncio.run(peek_client_hello(server, timeout=5))


def test_peek_refuses_close_inside_hello(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    client.sendall(client_hello()[:50])
    client.shutdown(socket.SHUT_WR)
    started = time.monotonic()
    with pytest.raises(ClientHelloError):
        asyncio.run(peek_client_hello(server, timeout=5))
    assert time.monotonic() - started < 2


def test_peek_refuses_close_before_anything(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    client.shutdown(socket.SHUT_WR)
    with pytest.raises(ClientHelloError):
        asyncio.run(peek_client_hello(server, timeout=5))


def test_peek_is_bounded_in_time(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    client.sendall(client_hello()[:20])
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        asyncio.run(peek_client_hello(server, timeout=0.3))
    assert time.monotonic() - started < 3


def test_peek_is_bounded_in_size(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    # A handshake record announcing a ClientHello far larger than the bound.
    body_len = 200_000
    record = b"\x16\x03\x01" + (16384).to_bytes(2, "big") + b"\x01" + body_len.to_bytes(3, "big")
    client.sendall(record + b"\x03\x03" + b"\x00" * 2000)
    with pytest.raises(ClientHelloError):
        asyncio.run(peek_client_hello(server, timeout=5, max_size=4096))
