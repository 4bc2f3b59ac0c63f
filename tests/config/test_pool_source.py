"""``[pool.NAME] source``: the local addresses connections to a pool's servers leave from (the
port-mapping recipe of docs/egress.md). What the key reads to and every problem it names,
then the dialer binding real loopback connections to those sources — HTTP and raw TCP — in
turn, and refusing clearly a server of a family no source has."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from revproxy.config.load import load_config_text
from revproxy.errors import BackendUnreachable, ConfigError
from revproxy.upstream.backend import Backend, PickContext
from revproxy.upstream.dialer import Dialer, SourceAddressError, SourceAddresses, describe_failure
from revproxy.upstream.pool import Pool

FILE = "conf/10-test.toml"


def pool_config(body: str) -> str:
    return f"""
[[listener]]
name = "db-map"
bind = "10.0.0.1:15432"
mode = "tcp"
pool = "db"

[pool.db]
{body}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config_text([(FILE, text)])
    return [str(problem) for problem in caught.value.problems]


# --- the key ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "read"),
    [
        ("", ()),
        ('source = "203.0.113.7"', ("203.0.113.7",)),
        ('source = ["203.0.113.7", "203.0.113.8"]', ("203.0.113.7", "203.0.113.8")),
        ('source = ["203.0.113.7", "2001:DB8::7"]', ("203.0.113.7", "2001:db8::7")),
    ],
)
def test_source_reads_to_addresses(written: str, read: tuple[str, ...]) -> None:
    config = load_config_text(
        [(FILE, pool_config(f'servers = ["db.example.com:5432"]\n{written}'))]
    )
    pool = config.pool("db")
    assert pool.source_addresses == read
    assert pool.source == FILE  # the file the pool was read from, as before


@pytest.mark.parametrize(
    ("written", "problem"),
    [
        (
            'source = ["db.example.com"]',
            'pool.db.source[0]: "db.example.com" is not an IP address (write the local '
            'address connections to the servers leave from, e.g. "203.0.113.7")',
        ),
        (
            'source = ["203.0.113.7/32"]',
            'pool.db.source[0]: "203.0.113.7/32" is not an IP address',
        ),
        ('source = ["0.0.0.0"]', 'pool.db.source[0]: "0.0.0.0" cannot be a source address'),
        ('source = ["::"]', 'pool.db.source[0]: "::" cannot be a source address'),
        ('source = ["224.0.0.1"]', 'pool.db.source[0]: "224.0.0.1" cannot be a source address'),
        ("source = [7]", "pool.db.source[0]: expected a string, got 7"),
        (
            'source = ["203.0.113.7", "203.0.113.7"]',
            'pool.db.source[1]: "203.0.113.7" is listed twice (also pool.db.source[0])',
        ),
    ],
)
def test_source_problems(written: str, problem: str) -> None:
    found = problems(pool_config(f'servers = ["db.example.com:5432"]\n{written}'))
    assert any(problem in p for p in found), found
    assert all(p.startswith(FILE + ": ") for p in found)


def test_a_server_address_of_a_family_without_source_is_refused() -> None:
    found = problems(
        pool_config(
            'servers = ["[2001:db8::5]:5432", "198.51.100.5:5432"]\nsource = ["203.0.113.7"]'
        )
    )
    assert found == [
        f'{FILE}: pool.db.source: no IPv6 address for server "[2001:db8::5]:5432": '
        "connections leave from a source of the server's family (add an IPv6 source)"
    ]
    # Names are judged when they resolve; a source of each family serves both.
    load_config_text([(FILE, pool_config(
        'servers = ["[2001:db8::5]:5432", "db.example.com:5432"]\n'
        'source = ["203.0.113.7", "2001:db8::7"]'
    ))])  # fmt: skip


@given(st.ip_addresses())
def test_any_unicast_address_is_a_source(address: object) -> None:
    text = str(address)
    config = f'servers = ["db.example.com:5432"]\nsource = ["{text}"]'
    if address.is_unspecified or address.is_multicast:  # type: ignore[attr-defined]
        assert problems(pool_config(config))
    else:
        assert load_config_text([(FILE, pool_config(config))]).pool("db").source_addresses == (
            text,
        )


# --- rotation -------------------------------------------------------------------------------


def test_sources_rotate_per_family() -> None:
    sources = SourceAddresses(["127.0.0.2", "::1", "127.0.0.3"])
    v4 = [sources.pick(socket.AF_INET, "t") for _ in range(4)]
    assert v4 == ["127.0.0.2", "127.0.0.3", "127.0.0.2", "127.0.0.3"]
    assert [sources.pick(socket.AF_INET6, "t") for _ in range(2)] == ["::1", "::1"]
    only_v4 = SourceAddresses(["127.0.0.2"])
    with pytest.raises(SourceAddressError) as info:
        only_v4.pick(socket.AF_INET6, "[::1]:5432")
    assert str(info.value) == (
        "[::1]:5432 is an IPv6 address and the pool has no IPv6 source (source = ['127.0.0.2'])"
    )
    assert describe_failure(info.value) == str(info.value)
    assert not SourceAddresses() and only_v4


# --- the dialer, on real loopback sockets -------------------------------------------------------


class PeerServer:
    """A loopback server that records each connection's peer address and answers it: an HTTP
    response to HTTP, the bytes it read back otherwise."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.peers: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                self.peers.append(str(peer[0]))
                conn.settimeout(5.0)
                with contextlib.suppress(OSError):
                    data = conn.recv(4096)
                    if data.startswith(b"GET "):
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    else:
                        conn.sendall(data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        self.sock.close()


@pytest.fixture
def server() -> Iterator[PeerServer]:
    s = PeerServer()
    try:
        yield s
    finally:
        s.close()


def dialer(port: int, source: list[str], host: str = "127.0.0.1") -> Dialer:
    pool = Pool("db", [Backend("db", host, port)], "roundrobin")
    return Dialer(pool, connect_timeout=2.0, idle_timeout=5.0, keepalive=0, source=source)


async def _http_once(d: Dialer) -> bytes:
    conn = await d.connect(PickContext())
    try:
        conn.io.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while not data.endswith(b"ok"):
            piece = await conn.io.read(4096, asyncio.get_running_loop().time() + 5.0)
            if not piece:
                break
            data += piece
        return data
    finally:
        conn.close()


async def _tcp_once(d: Dialer) -> bytes:
    loop = asyncio.get_running_loop()
    _, sock = await d.connect_socket(PickContext())
    try:
        await loop.sock_sendall(sock, b"ping")
        async with asyncio.timeout(5.0):
            return await loop.sock_recv(sock, 16)
    finally:
        sock.close()


def test_http_connections_leave_from_the_sources_in_turn(server: PeerServer) -> None:
    d = dialer(server.port, ["127.0.0.2", "127.0.0.3"])

    async def main() -> list[bytes]:
        return [await _http_once(d) for _ in range(4)]

    answers = asyncio.run(main())
    assert all(a.endswith(b"ok") for a in answers)
    assert server.peers == ["127.0.0.2", "127.0.0.3", "127.0.0.2", "127.0.0.3"]


def test_tcp_connections_leave_from_the_sources_in_turn(server: PeerServer) -> None:
    d = dialer(server.port, ["127.0.0.3", "127.0.0.2"])

    async def main() -> list[bytes]:
        return [await _tcp_once(d) for _ in range(3)]

    assert asyncio.run(main()) == [b"ping"] * 3
    assert server.peers == ["127.0.0.3", "127.0.0.2", "127.0.0.3"]


def test_without_source_the_host_chooses(server: PeerServer) -> None:
    d = dialer(server.port, [])
    assert asyncio.run(_tcp_once(d)) == b"ping"
    assert server.peers == ["127.0.0.1"]


def test_a_server_of_another_family_fails_saying_why(
    server: PeerServer, caplog: pytest.LogCaptureFixture
) -> None:
    v6 = socket.has_ipv6 and _can_bind("::1")
    if not v6:
        pytest.skip("no IPv6 loopback on this host")
    v6_server = PeerServer("::1")
    try:
        d = dialer(v6_server.port, ["127.0.0.2"], host="::1")
        with pytest.raises(BackendUnreachable):
            asyncio.run(_tcp_once(d))
        with pytest.raises(BackendUnreachable):
            asyncio.run(_http_once(d))
        assert v6_server.peers == []
        assert "has no IPv6 source (source = ['127.0.0.2'])" in caplog.text
    finally:
        v6_server.close()


def test_a_source_that_is_not_local_fails_saying_why(
    server: PeerServer, caplog: pytest.LogCaptureFixture
) -> None:
    d = dialer(server.port, ["192.0.2.77"])  # TEST-NET-1: never an address of this host
    with pytest.raises(BackendUnreachable):
        asyncio.run(_tcp_once(d))
    with pytest.raises(BackendUnreachable):
        asyncio.run(_http_once(d))
    assert server.peers == []
    assert "cannot leave from source 192.0.2.77 toward 127.0.0.1:" in caplog.text


def _can_bind(host: str) -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
    except OSError:
        return False
    return True
