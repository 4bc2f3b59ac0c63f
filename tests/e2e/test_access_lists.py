"""allow/deny lists end to end: curl from different loopback addresses (``--interface``),
HAProxy in front sending PROXY v2, a TCP listener that closes before any byte, a list file
changed while the proxy runs, and a list of 100,000 networks."""

from __future__ import annotations

import contextlib
import random
import socket
import time
from pathlib import Path

import pytest
from harness import LOOPBACK, Origin, Proxy, curl, curl_http, free_port, toml_path, wait_until
from l4_peers import haproxy_tcp

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("real_peers")]

ALLOWED = "127.0.0.2"
DENIED = "127.0.0.3"
OTHER = "127.0.0.4"


def status_from(port: int, source: str, path: str = "/") -> int:
    res = curl("--interface", source, "-o", "/dev/null", "-w", "%{http_code}",
               f"http://{LOOPBACK}:{port}{path}")  # fmt: skip
    return int(res.stdout or b"0")


def test_listener_and_route_lists(tmp_path: Path) -> None:
    with Origin() as origin:
        port, admin = free_port(), free_port()
        (tmp_path / "admins.txt").write_text(f"# the office\n{ALLOWED}/32\n")
        config = f"""
[admin]
bind = "{LOOPBACK}:{admin}"

[[listener]]
name = "web"
bind = ["{LOOPBACK}:{port}"]
allow = ["127.0.0.0/8"]
deny = ["{DENIED}"]

[[route]]
path = "/admin/"
pool = "o"
allow_file = {toml_path(tmp_path / "admins.txt")}

[[route]]
pool = "o"

[pool.o]
servers = ["{origin.address}"]
"""
        with Proxy(tmp_path, config, ports=[port, admin]) as proxy:
            assert status_from(port, ALLOWED) == 200
            assert status_from(port, OTHER) == 200
            assert status_from(port, DENIED) == 403  # deny wins over the allow list
            assert status_from(port, ALLOWED, "/admin/x") == 200
            assert status_from(port, OTHER, "/admin/x") == 403
            assert status_from(port, OTHER, "//admin/x") == 403  # normalised first
            line = proxy.wait_access(lambda s: Proxy.client_of(s) == DENIED)
            assert '" 403 ' in line and "refused=deny" in line and "backend=-" in line
            metrics = curl_http(f"http://{LOOPBACK}:{admin}/metrics").body.decode()
            assert 'revproxy_refused_total{listener="web",reason="deny"} 3' in metrics
            refused = curl_http(f"http://{LOOPBACK}:{port}/admin/x", "--interface", OTHER).body
            assert refused == b"403 Forbidden\n"  # a local page: nothing of the origin

            # The list file changes: the configuration follows it (watch = true).
            (tmp_path / "admins.txt").write_text(f"{OTHER}\n")
            assert wait_until(lambda: status_from(port, OTHER, "/admin/x") == 200, 15)
            assert status_from(port, ALLOWED, "/admin/x") == 403
        seen = {r.target for r in origin.requests()}
        assert "/admin/x" in seen and all("admin" not in t or t == "/admin/x" for t in seen)


def test_tcp_listener_closes_before_any_byte(tmp_path: Path) -> None:
    server = socket.socket()
    server.bind((LOOPBACK, 0))
    server.listen(8)
    server.settimeout(0.5)
    port = free_port()
    config = f"""
[[listener]]
name = "db"
bind = ["{LOOPBACK}:{port}"]
mode = "tcp"
pool = "db"
deny = ["{DENIED}"]

[pool.db]
servers = ["{LOOPBACK}:{server.getsockname()[1]}"]
"""
    try:
        with Proxy(tmp_path, config, ports=[port]) as proxy:
            # The harness's readiness probe came from 127.0.0.1 and was relayed: take it.
            with contextlib.suppress(TimeoutError):
                while True:
                    server.accept()[0].close()
            with socket.create_connection((LOOPBACK, port), source_address=(DENIED, 0)) as c:
                c.sendall(b"hello")
                c.settimeout(5)
                try:
                    answer = c.recv(100)
                except ConnectionResetError:  # closed with our bytes unread: a reset
                    answer = b""
                assert answer == b""  # closed, nothing relayed
            with pytest.raises(TimeoutError):
                server.accept()  # the pool's server never saw a connection
            with socket.create_connection((LOOPBACK, port), source_address=(ALLOWED, 0)):
                conn, _ = server.accept()
                conn.close()
            line = proxy.wait_access(lambda s: Proxy.client_of(s) == DENIED)
            assert '"TCP -" 403 ' in line and "refused=deny" in line
    finally:
        server.close()


def test_the_real_client_behind_haproxy_proxy_v2(tmp_path: Path) -> None:
    """HAProxy connects from 127.0.0.1; the list decides on the client it names."""
    with Origin() as origin:
        port, front = free_port(), free_port()
        config = f"""
[[listener]]
name = "web"
bind = ["{LOOPBACK}:{port}"]
proxy_protocol = {{ mode = "required", trusted = ["127.0.0.1/32"] }}
deny = ["{DENIED}"]

[[route]]
pool = "o"

[pool.o]
servers = ["{origin.address}"]
"""
        with (
            Proxy(tmp_path, config, ports=[port]),
            haproxy_tcp(tmp_path, front, port, "send-proxy-v2"),
        ):
            assert status_from(front, ALLOWED) == 200
            assert status_from(front, DENIED) == 403


def test_a_hundred_thousand_networks(tmp_path: Path) -> None:
    rng = random.Random(3)
    lines = [f"{rng.randrange(1, 223)}.{rng.randrange(256)}.{rng.randrange(256)}.0/24"
             for _ in range(100_000)]  # fmt: skip
    (tmp_path / "deny.txt").write_text("\n".join([*lines, f"{DENIED}/32"]) + "\n")
    with Origin() as origin:
        port = free_port()
        config = f"""
[[listener]]
name = "web"
bind = ["{LOOPBACK}:{port}"]
deny_file = {toml_path(tmp_path / "deny.txt")}

[[route]]
pool = "o"

[pool.o]
servers = ["{origin.address}"]
"""
        started = time.monotonic()
        with Proxy(tmp_path, config, ports=[port]):
            print(f"started with 100,001 networks in {time.monotonic() - started:.1f} s")
            assert status_from(port, DENIED) == 403
            assert status_from(port, ALLOWED) == 200
        assert len(origin.requests()) == 1
