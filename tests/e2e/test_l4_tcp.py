"""``mode = "tcp"`` listeners end to end: PostgreSQL through the proxy, HAProxy sending PROXY v2
in front of it, 200 MB each way by checksum, half-close, connect retry, balancing,
``max_conns``, idle timeout, resets and the access-log line of every connection.

The proxy is the real revproxy instance in a subprocess (see ``l4_peers.ConfigProxy``); the
peers are PostgreSQL and psql, HAProxy, and raw TCP origins and clients on loopback.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from l4_peers import (
    LOOPBACK,
    ConfigProxy,
    TcpOrigin,
    access_field,
    access_status,
    closed_port,
    drain_sha256,
    expected_sha256,
    free_port,
    haproxy_tcp,
    pool,
    postgres,
    psql,
    read_all,
    read_line,
    send_pattern,
    tcp_listener,
    tunnel_timeouts,
    wait_until,
)

from revproxy.config.model import Config, ProxyProtocolIn

pytestmark = [pytest.mark.e2e]

# 200 MB each way, as the issue asks: large enough that any buffering or copying bug shows.
BIG = 200 * 1000 * 1000


def tcp_config(port: int, *ports: int, **pool_kw: object) -> Config:
    pool_kw.setdefault("timeouts", tunnel_timeouts())
    return Config(listeners=(tcp_listener("l4", port, "p"),), pools=(pool("p", *ports, **pool_kw),))


def read_or_reset(sock: socket.socket) -> bytes:
    """What arrives before the proxy closes; closing with our bytes unread may reset."""
    try:
        return read_all(sock)
    except ConnectionResetError:
        return b""


def connect(port: int, source: str | None = None) -> socket.socket:
    sock = socket.create_connection(
        (LOOPBACK, port), timeout=30, source_address=(source, 0) if source else None
    )
    return sock


# --- PostgreSQL -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_port() -> Iterator[int]:
    with postgres() as port:
        yield port


def test_psql_through_tcp_listener(tmp_path: Path, pg_port: int) -> None:
    port = free_port()
    with ConfigProxy(tmp_path, tcp_config(port, pg_port)) as proxy:
        res = psql(port, "select 6 * 7")
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == "42"
        # A result of some size, and a round trip per statement.
        res = psql(
            port,
            "create table t as select i, md5(i::text) as h from generate_series(1, 50000) i; "
            "select count(*), sum(i) from t; select length(string_agg(h, '')) from t",
        )
        assert res.returncode == 0, res.stderr
        assert res.stdout.split()[-2:] == ["50000|1250025000", "1600000"]
        line = proxy.wait_access(lambda ln: '"TCP -"' in ln and int(access_field(ln, "out")) > 0)
        assert access_status(line) == 0
        assert access_field(line, "listener") == "l4"
        assert access_field(line, "pool") == "p"
        assert access_field(line, "backend") == f"p/{LOOPBACK}:{pg_port}"


# --- bytes, half-close, balancing -------------------------------------------------------------


def test_200mb_each_way_by_checksum(tmp_path: Path) -> None:
    received: dict[str, object] = {}

    def origin(sock: socket.socket, _n: int) -> None:
        def drain() -> None:
            received["up"] = drain_sha256(sock)

        t = threading.Thread(target=drain)
        t.start()
        received["down_sent"] = send_pattern(sock, BIG, b"down")
        sock.shutdown(socket.SHUT_WR)
        t.join(120)

    port = free_port()
    with TcpOrigin(origin) as o, ConfigProxy(tmp_path, tcp_config(port, o.port)) as p:
        sock = connect(port)
        got: dict[str, tuple[int, str]] = {}
        reader = threading.Thread(target=lambda: got.setdefault("down", drain_sha256(sock)))
        reader.start()
        up_sha = send_pattern(sock, BIG, b"up")
        sock.shutdown(socket.SHUT_WR)
        reader.join(180)
        sock.close()
        assert got["down"] == (BIG, expected_sha256(BIG, b"down"))
        assert wait_until(lambda: "up" in received, 30)
        assert received["up"] == (BIG, up_sha)
        line = p.wait_access(lambda ln: '"TCP -"' in ln)
        assert access_field(line, "in") == str(BIG)
        assert access_field(line, "out") == str(BIG)
        assert access_status(line) == 0
        assert not o.errors


@pytest.mark.parametrize("reply_size", [10, 5 * 1024 * 1024])
def test_half_closing_client_receives_full_reply(tmp_path: Path, reply_size: int) -> None:
    """send, shutdown(SHUT_WR), and the whole reply still arrives (the origin answers at EOF)."""
    reply = bytes(range(256)) * (reply_size // 256) + b"x" * (reply_size % 256)

    def origin(sock: socket.socket, _n: int) -> None:
        request = read_all(sock)  # until the client's end of stream reaches the origin
        time.sleep(0.2)
        sock.sendall(str(len(request)).encode() + b"\n" + reply)

    port = free_port()
    with TcpOrigin(origin) as o, ConfigProxy(tmp_path, tcp_config(port, o.port)) as p:
        sock = connect(port)
        sock.sendall(b"q" * 100000)
        sock.shutdown(socket.SHUT_WR)
        got = read_all(sock)
        sock.close()
        assert got == b"100000\n" + reply
        line = p.wait_access(lambda ln: '"TCP -"' in ln)
        assert access_field(line, "in") == "100000"
        assert access_field(line, "out") == str(len(got))


def test_origin_half_close_is_passed_to_client(tmp_path: Path) -> None:
    """The origin ends its side first; the client sees the end and can still send."""
    seen: list[bytes] = []

    def origin(sock: socket.socket, _n: int) -> None:
        sock.sendall(b"banner\n")
        sock.shutdown(socket.SHUT_WR)
        seen.append(read_all(sock))

    port = free_port()
    with TcpOrigin(origin) as o, ConfigProxy(tmp_path, tcp_config(port, o.port)):
        sock = connect(port)
        assert read_all(sock) == b"banner\n"  # end of stream while our side is open
        sock.sendall(b"after the end")
        sock.shutdown(socket.SHUT_WR)
        assert wait_until(lambda: bool(seen), 10)
        sock.close()
        assert seen == [b"after the end"]


def _name_origin(name: bytes) -> TcpOrigin:
    def origin(sock: socket.socket, _n: int) -> None:
        sock.sendall(name)
        sock.shutdown(socket.SHUT_WR)
        read_all(sock)

    return TcpOrigin(origin)


def test_roundrobin_and_one_access_line_per_connection(tmp_path: Path) -> None:
    port = free_port()
    with (
        _name_origin(b"A") as a,
        _name_origin(b"B") as b,
        ConfigProxy(tmp_path, tcp_config(port, a.port, b.port)) as p,
    ):
        names = []
        for _ in range(6):
            sock = connect(port)
            sock.sendall(b"hi")
            sock.shutdown(socket.SHUT_WR)
            names.append(read_all(sock))
            sock.close()
        assert Counter(names) == {b"A": 3, b"B": 3}
        assert wait_until(lambda: len(p.access_lines()) >= 6, 10)
        lines = [ln for ln in p.access_lines() if '"TCP -"' in ln]
        assert len(lines) == 6
        for ln in lines:
            assert ln.split(" ", 1)[1].startswith(f"{LOOPBACK} peer={LOOPBACK} ")  # after the time
            assert access_field(ln, "in") == "2"
            assert access_field(ln, "out") == "1"
            assert access_field(ln, "time").endswith("ms")
            assert access_status(ln) == 0
        backends = Counter(access_field(ln, "backend") for ln in lines)
        assert backends == {f"p/{LOOPBACK}:{a.port}": 3, f"p/{LOOPBACK}:{b.port}": 3}


# --- failures ---------------------------------------------------------------------------------


def test_connect_retry_moves_to_next_server(tmp_path: Path) -> None:
    dead = closed_port()
    port = free_port()
    with _name_origin(b"alive") as alive:
        cfg = tcp_config(port, dead, alive.port)
        with ConfigProxy(tmp_path, cfg) as p:
            for _ in range(3):
                sock = connect(port)
                sock.shutdown(socket.SHUT_WR)
                assert read_all(sock) == b"alive"
                sock.close()
            p.wait_access(lambda ln: '"TCP -"' in ln)
            assert wait_until(lambda: len(p.access_lines()) >= 3, 10)
            lines = p.access_lines()
            assert {access_field(ln, "backend") for ln in lines} == {f"p/{LOOPBACK}:{alive.port}"}
            assert "backend connect failed" in p.stderr()


def test_every_server_down_closes_client_and_logs_502(tmp_path: Path) -> None:
    port = free_port()
    cfg = tcp_config(port, closed_port(), closed_port())
    with ConfigProxy(tmp_path, cfg) as p:
        sock = connect(port)
        sock.sendall(b"anyone?")
        assert read_or_reset(sock) == b""
        sock.close()
        line = p.wait_access(lambda ln: '"TCP -"' in ln)
        assert access_status(line) == 502
        assert access_field(line, "backend") == "-"


def test_origin_reset_resets_client(tmp_path: Path) -> None:
    def origin(sock: socket.socket, _n: int) -> None:
        sock.sendall(b"partial")
        time.sleep(0.2)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    port = free_port()
    with TcpOrigin(origin) as o, ConfigProxy(tmp_path, tcp_config(port, o.port)) as p:
        sock = connect(port)
        got = bytearray()
        with pytest.raises(ConnectionResetError):
            while chunk := sock.recv(100):
                got += chunk
        sock.close()
        assert got == b"partial"  # a truncated stream is never passed on as a clean end
        line = p.wait_access(lambda ln: '"TCP -"' in ln)
        assert access_status(line) == 502


def test_idle_timeout_closes_silent_connection(tmp_path: Path) -> None:
    def origin(sock: socket.socket, _n: int) -> None:
        read_all(sock)

    port = free_port()
    with TcpOrigin(origin) as o:
        cfg = tcp_config(port, o.port, timeouts=tunnel_timeouts(tunnel=0.5))
        with ConfigProxy(tmp_path, cfg) as p:
            sock = connect(port)
            sock.sendall(b"x")
            started = time.monotonic()
            assert read_all(sock) == b""
            assert time.monotonic() - started < 10
            sock.close()
            line = p.wait_access(lambda ln: '"TCP -"' in ln)
            assert access_status(line) == 504
            assert access_field(line, "in") == "1"


def test_max_conns_closes_connections_over_the_limit(tmp_path: Path) -> None:
    release = threading.Event()

    def origin(sock: socket.socket, _n: int) -> None:
        sock.sendall(b"hello")
        release.wait(30)

    port = free_port()
    with TcpOrigin(origin) as o:
        cfg = Config(
            listeners=(tcp_listener("l4", port, "p", max_conns=2),),
            pools=(pool("p", o.port, timeouts=tunnel_timeouts()),),
        )
        with ConfigProxy(tmp_path, cfg) as p:
            held = [connect(port), connect(port)]
            for s in held:
                assert s.recv(5) == b"hello"
            extra = connect(port)
            extra.settimeout(5)
            assert extra.recv(10) == b""  # closed at once, nothing relayed
            extra.close()
            refused = p.wait_access(lambda ln: access_status(ln) == 503)
            assert '"TCP -"' in refused
            assert "max_conns 2" in p.stderr()
            release.set()
            for s in held:
                s.close()
            # Once the two are done, a new connection is served again.
            assert wait_until(
                lambda: sum(access_status(ln) != 503 for ln in p.access_lines()) >= 2, 10
            )
            again = connect(port)
            assert again.recv(5) == b"hello"
            again.close()


# --- PROXY protocol ---------------------------------------------------------------------------


def test_haproxy_proxy_v2_in_send_proxy_v1_out(tmp_path: Path) -> None:
    """HAProxy → (PROXY v2) → revproxy tcp listener → (PROXY v1) → origin: the origin sees the
    address the client connected from (127.0.0.5), not HAProxy's or revproxy's."""
    lines: list[bytes] = []

    def origin(sock: socket.socket, _n: int) -> None:
        lines.append(read_line(sock))
        while data := sock.recv(65536):
            sock.sendall(data)

    rport, hport = free_port(), free_port()
    with TcpOrigin(origin) as o:
        cfg = Config(
            listeners=(
                tcp_listener(
                    "l4",
                    rport,
                    "p",
                    proxy_protocol=ProxyProtocolIn(
                        mode="required", trusted=(ipaddress.ip_network("127.0.0.1/32"),)
                    ),
                ),
            ),
            pools=(pool("p", o.port, timeouts=tunnel_timeouts(), send_proxy="v1"),),
        )
        # HAProxy first: its start-up probe must not reach the origin through revproxy.
        with haproxy_tcp(tmp_path, hport, rport, "send-proxy-v2"), ConfigProxy(tmp_path, cfg) as p:
            sock = connect(hport, source="127.0.0.5")
            client_port = sock.getsockname()[1]
            sock.sendall(b"echo me")
            assert sock.recv(100) == b"echo me"
            sock.shutdown(socket.SHUT_WR)
            assert read_all(sock) == b""
            sock.close()
            assert lines == [f"PROXY TCP4 127.0.0.5 127.0.0.1 {client_port} {hport}\r\n".encode()]
            line = p.wait_access(lambda ln: '"TCP -"' in ln)
            assert line.split(" ", 1)[1].startswith("127.0.0.5 peer=127.0.0.1 ")

            # Straight to revproxy without a PROXY header: refused, the origin sees nothing.
            direct = connect(rport)
            direct.sendall(b"no header here\r\n")
            assert read_or_reset(direct) == b""
            direct.close()
            assert o.connections == 1
