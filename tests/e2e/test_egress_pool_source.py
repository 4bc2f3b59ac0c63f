"""The port-mapping recipe of docs/egress.md with active health checks, end to end: a ``mode =
"tcp"`` listener whose pool leaves from ``source = ["127.0.0.2"]``, toward a partner that only
serves that address (as its firewall would). The checks leave from the source as the traffic
does: the server is up, and the partner saw every check and every connection from 127.0.0.2.
A reload that moves the source to an address the partner refuses takes the server down — the
checks say what the traffic would meet — and names the source in the log."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from harness import (
    LOOPBACK,
    Origin,
    Proxy,
    Reply,
    Seen,
    free_port,
    read_response,
    run_cli,
    split_response,
    toml_path,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("real_peers")]

STATIC = "127.0.0.2"  # the address the partner allowlists
OTHER = "127.0.0.3"
TIMEOUT = 20.0


def partner(seen: Seen) -> Reply:
    """Serves the allowlisted address only (a firewall on loopback, without root)."""
    if seen.peer[0] != STATIC:
        return Reply(status=403, body=b"not allowlisted\n")
    return Reply(body=f"partner {seen.target}\n".encode())


def config(tmp: Path, port: int, dest: int, source: str) -> str:
    return f"""
[global]
watch = false

[admin]
socket = {toml_path(tmp / "admin.sock")}

[[listener]]
name = "db-map"
bind = "{LOOPBACK}:{port}"
mode = "tcp"
pool = "partner"

[pool.partner]
servers = ["{LOOPBACK}:{dest}"]
source = ["{source}"]
health = {{ path = "/health", interval = "300ms", timeout = "250ms", rise = 1, fall = 1 }}
"""


def state(proxy: Proxy, server: str) -> str:
    res = run_cli("ctl", "-c", str(proxy.conf), "show", "servers")
    for row in res.stdout.splitlines()[1:]:
        cells = row.split()
        if cells and cells[0] == server:
            return cells[1]
    return ""


def checks(origin: Origin) -> list[Seen]:
    return [s for s in origin.requests() if s.target == "/health"]


def test_health_checks_leave_from_the_pool_source(tmp_path: Path) -> None:
    port = free_port()
    with Origin("partner", handler=partner) as origin:
        server = f"partner/{origin.address}"
        with Proxy(tmp_path, config(tmp_path, port, origin.port, STATIC), ports=[port]) as proxy:
            assert wait_until(lambda: len(checks(origin)) >= 3, TIMEOUT), proxy.stderr()
            assert {s.peer[0] for s in checks(origin)} == {STATIC}
            assert wait_until(lambda: state(proxy, server) == "up", TIMEOUT), proxy.stderr()

            # The traffic through the port mapping leaves from the same address.
            with socket.create_connection((LOOPBACK, port), timeout=TIMEOUT) as sock:
                sock.sendall(b"GET /data HTTP/1.1\r\nHost: partner\r\nConnection: close\r\n\r\n")
                status, _, body, _ = split_response(read_response(sock))
            assert (status, body) == (200, b"partner /data\n")
            data = [s for s in origin.requests() if s.target == "/data"]
            assert [s.peer[0] for s in data] == [STATIC]

            # The source moves to an address the partner refuses: the checks leave from it
            # too, and the server goes down, as its traffic would fail.
            (proxy.conf / "10-test.toml").write_text(config(tmp_path, port, origin.port, OTHER))
            res = run_cli("reload", "-c", str(proxy.conf))
            assert res.returncode == 0, res.stderr
            assert wait_until(lambda: state(proxy, server) == "down", TIMEOUT), proxy.stderr()
            assert OTHER in {s.peer[0] for s in checks(origin)}
            assert "status 403 (expected 2xx)" in proxy.stderr()
