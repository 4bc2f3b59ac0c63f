"""Egress over SOCKS5, end to end: curl ``--socks5-hostname`` (RFC 1929 username/password,
names resolved on the proxy), a real PostgreSQL reached by ``psql`` through ``proxychains4``,
the refusals as SOCKS5 replies (0x02 not allowed, 0x07 UDP ASSOCIATE), the access log.
Destinations are servers on 127.0.0.1, allowed explicitly."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from egress_peers import PASSWORD, USER, json_lines, users_files, users_tables
from harness import LOOPBACK, Origin, Proxy, curl, free_port, wait_until
from l4_peers import postgres

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("real_peers")]


@dataclass
class Socks:
    proxy: Proxy
    origin: Origin
    port: int
    pg: int
    dir: Path


@pytest.fixture(scope="module")
def socks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Socks]:
    d = tmp_path_factory.mktemp("socks")
    basic, digest = users_files(d)
    port = free_port()
    with Origin("dest") as origin, postgres() as pg:
        config = f"""
[global]
access_log_format = "json"
{users_tables(basic, digest)}
[[listener]]
name = "socks"
bind = ["{LOOPBACK}:{port}"]
mode = "socks5"
egress = "db"
auth = {{ users = "apps", scheme = "basic" }}

[egress.db]
destinations = ["127.0.0.1:{pg}", "localhost:{origin.port}", "127.0.0.1:{origin.port}"]
connect_ports = [443, {pg}, {origin.port}]
deny = []          # the destinations are on loopback, which the default denies
"""
        with Proxy(d, config, ports=[port]) as proxy:
            yield Socks(proxy, origin, port, pg, d)


def _records(s: Socks) -> list[dict[str, object]]:
    return [r for r in json_lines(s.proxy.stdout()) if r.get("listener") == "socks"]


def test_socks5h_resolves_on_the_proxy(socks: Socks) -> None:
    proxy = f"socks5h://{USER}:{PASSWORD}@{LOOPBACK}:{socks.port}"
    res = curl("--proxy", proxy, f"http://localhost:{socks.origin.port}/via-socks")
    assert res.returncode == 0, res.stderr
    assert b"via-socks" in res.stdout
    assert wait_until(lambda: any(r["destination"] == f"localhost:{socks.origin.port}"
                                  for r in _records(socks)), 10.0)  # fmt: skip
    rec = next(r for r in _records(socks) if r["destination"] == f"localhost:{socks.origin.port}")
    assert rec["user"] == USER and rec["method"] == "SOCKS5" and rec["status"] == 200
    assert rec["resolved"] == f"127.0.0.1:{socks.origin.port}"
    assert int(str(rec["bytes_out"])) > 0 and int(str(rec["bytes_in"])) > 0
    # --socks5-hostname is the same thing spelt as curl's option.
    res = curl("--socks5-hostname", f"{USER}:{PASSWORD}@{LOOPBACK}:{socks.port}",
               f"http://127.0.0.1:{socks.origin.port}/opt")  # fmt: skip
    assert res.returncode == 0, res.stderr


def test_wrong_password_and_not_allowed(socks: Socks) -> None:
    res = curl("--proxy", f"socks5h://{USER}:nope@{LOOPBACK}:{socks.port}",
               f"http://127.0.0.1:{socks.origin.port}/")  # fmt: skip
    assert res.returncode != 0
    other = free_port()
    res = curl("--proxy", f"socks5h://{USER}:{PASSWORD}@{LOOPBACK}:{socks.port}",
               f"http://127.0.0.1:{other}/")  # fmt: skip
    assert res.returncode != 0
    assert res.stderr.rstrip().endswith(b"(2)"), res.stderr  # reply 0x02: not allowed
    assert wait_until(lambda: any(r.get("refused") == "connect-port" for r in _records(socks)),
                      10.0)  # fmt: skip
    assert wait_until(lambda: any(r.get("refused") == "auth" for r in _records(socks)), 10.0)


def _greet(s: socket.socket) -> None:
    s.sendall(b"\x05\x01\x02")
    assert s.recv(2) == b"\x05\x02"
    s.sendall(bytes([1, len(USER)]) + USER.encode() + bytes([len(PASSWORD)]) + PASSWORD.encode())
    assert s.recv(2) == b"\x01\x00"


def test_udp_associate_and_no_auth_refused(socks: Socks) -> None:
    with socket.create_connection((LOOPBACK, socks.port), timeout=10) as s:
        _greet(s)
        s.sendall(b"\x05\x03\x00\x01" + socket.inet_aton("0.0.0.0") + struct.pack(">H", 0))
        reply = s.recv(10)
        assert reply[:2] == b"\x05\x07"  # command not supported
    with socket.create_connection((LOOPBACK, socks.port), timeout=10) as s:
        s.sendall(b"\x05\x01\x00")  # only "no authentication" offered
        assert s.recv(2) == b"\x05\xff"


def test_optimistic_data_reaches_destination(socks: Socks) -> None:
    """Bytes sent right behind the CONNECT request go to the destination first."""
    with socket.create_connection((LOOPBACK, socks.port), timeout=10) as s:
        _greet(s)
        request = (b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1")
                   + struct.pack(">H", socks.origin.port))  # fmt: skip
        http = b"GET /early HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        s.sendall(request + http)
        reply = s.recv(10)
        assert reply[:2] == b"\x05\x00"
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        assert b"/early" in data


def test_psql_through_proxychains(socks: Socks) -> None:
    tool = shutil.which("proxychains4")
    if tool is None:
        pytest.fail("proxychains4 not found (apt-get install proxychains4)")
    conf = socks.dir / "proxychains.conf"
    conf.write_text(
        "strict_chain\nproxy_dns\nquiet_mode\ntcp_read_time_out 15000\n"
        "tcp_connect_time_out 8000\n[ProxyList]\n"
        f"socks5 {LOOPBACK} {socks.port} {USER} {PASSWORD}\n"
    )
    res = subprocess.run(
        [tool, "-f", str(conf), "psql", "-h", "127.0.0.1", "-p", str(socks.pg), "-U", "postgres",
         "-d", "postgres", "-At", "-c", "select 6 * 7"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        env={**os.environ, "PGCONNECT_TIMEOUT": "10", "PGSSLMODE": "disable"},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "42"
    dest = f"127.0.0.1:{socks.pg}"
    assert wait_until(
        lambda: any(r["destination"] == dest and r["status"] == 200 for r in _records(socks)),
        10.0,
    )
