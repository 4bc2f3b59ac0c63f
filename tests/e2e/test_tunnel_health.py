"""Active health checks through the reverse tunnel (issue 16, docs/tunnel.md): a real agent
exposes a real origin whose health path the test turns to failing and back; the pool has that
tunnel server and a direct one. The checks go through the tunnel (the origin sees them), the
tunnel server stops taking requests after ``fall`` failed checks and comes back after ``rise``
good ones, and ``revproxy ctl show servers``, /metrics and the log say so — with one process
and with two workers. A reload that changes the checks restarts them; one that removes them
brings the server back.
"""

from __future__ import annotations

import re
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import LOOPBACK, Origin, Proxy, Reply, Seen, free_port, run_cli, toml_path, wait_until
from tunnel_peers import Agent, enroll_token, start_proxy

pytestmark = [pytest.mark.e2e]

TUNNELLED = "web/tunnel:home/web"
CHECKS = 'health = { path = "/health", interval = "400ms", timeout = "300ms", rise = 2, fall = 2 }'


class Switchable:
    """An origin whose health path answers 200, or 503 while ``failing`` is set."""

    def __init__(self, name: str) -> None:
        self.failing = threading.Event()
        self.origin = Origin(name, self.reply)

    def reply(self, req: Seen) -> Reply:
        if req.target.startswith("/health") and self.failing.is_set():
            return Reply(status=503, body=b"sick\n")
        return self.origin.default_reply(req)

    def checks(self, path: str = "/health") -> list[Seen]:
        return [s for s in self.origin.requests() if s.target == path]


@pytest.fixture
def origins() -> Iterator[tuple[Switchable, Origin]]:
    tunnelled = Switchable("tun")
    with tunnelled.origin, Origin("direct") as direct:
        yield tunnelled, direct


def config(
    tmp: Path, http_port: int, tunnel_port: int, direct: Origin, *, workers: int, checks: str
) -> str:
    return f"""
[global]
state_dir = {toml_path(tmp / "state")}
workers = {workers}
access_log = "off"
watch = false
[admin]
socket = {toml_path(tmp / "admin.sock")}
[[listener]]
name = "web"
bind = ["{LOOPBACK}:{http_port}"]
[[listener]]
name = "tunnel"
bind = ["{LOOPBACK}:{tunnel_port}"]
mode = "tunnel"
[[route]]
pool = "web"
[pool.web]
servers = [{{ tunnel = "home/web" }}, "{direct.address}"]
timeouts = {{ connect = "2s" }}
{checks}
[tunnel.home]
"""


class Ops:
    """The proxy as an operator sees it."""

    def __init__(self, proxy: Proxy, port: int) -> None:
        self.proxy = proxy
        self.port = port

    def ctl(self, *words: str) -> str:
        res = run_cli("ctl", "-c", str(self.proxy.conf), *words)
        assert res.returncode == 0, res.stdout + res.stderr
        return res.stdout

    def row(self, server: str) -> str:
        rows = [r for r in self.ctl("show", "servers").splitlines() if r.startswith(server + " ")]
        return rows[0] if rows else ""

    def state_is(self, server: str, state: str, timeout: float = 15.0) -> bool:
        return wait_until(lambda: self.row(server).split()[1:2] == [state], timeout, 0.1)

    def metric(self, line_start: str) -> float:
        for line in self.ctl("show", "metrics").splitlines():
            if line.startswith(line_start + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def who(self, n: int) -> Counter[str]:
        """Which origin answered each of ``n`` requests."""
        out: Counter[str] = Counter()
        for _ in range(n):
            try:
                with urllib.request.urlopen(f"http://{LOOPBACK}:{self.port}/x", timeout=10) as r:
                    out[r.read().split()[0].decode()] += 1
            except urllib.error.HTTPError as exc:
                out[str(exc.code)] += 1
        return out


def start(
    tmp_path: Path, origins: tuple[Switchable, Origin], workers: int, checks: str = CHECKS
) -> tuple[Proxy, Agent, Ops]:
    tunnelled, direct = origins
    http_port, tunnel_port = free_port(), free_port()
    proxy = start_proxy(
        tmp_path / "proxy",
        config(tmp_path, http_port, tunnel_port, direct, workers=workers, checks=checks),
        http_port,
        tunnel_port,
    )
    agent = Agent(tmp_path / "agent", tunnel_port, {"web": (tunnelled.origin.port, "http")})
    try:
        assert agent.enroll(enroll_token(proxy.conf)).returncode == 0
        # Every worker holds the agent's shared connections and its spares.
        agent.start(wait_connections=4 * workers)
    except BaseException:
        agent.stop()
        proxy.stop()
        raise
    return proxy, agent, Ops(proxy, http_port)


@pytest.mark.parametrize("workers", [1, 2])
def test_checks_go_through_the_tunnel_and_take_the_server_out_and_back(
    tmp_path: Path, origins: tuple[Switchable, Origin], workers: int
) -> None:
    tunnelled, _ = origins
    proxy, agent, ops = start(tmp_path, origins, workers)
    up = f'revproxy_backend_up{{pool="web",backend="{TUNNELLED}"}}'
    fails = f'revproxy_health_checks_total{{pool="web",backend="{TUNNELLED}",result="fail"}}'
    downs = f'revproxy_backend_state_changes_total{{pool="web",backend="{TUNNELLED}",to="down"}}'
    try:
        # The checks reach the origin through the agent, from every serving process.
        assert wait_until(lambda: len(tunnelled.checks()) >= 2 * workers, 10)
        check = tunnelled.checks()[0]
        assert check.header("user-agent") == "revproxy-health"
        assert check.header("host") == "web"  # the expose's name: its address is the agent's
        assert wait_until(lambda: " ok 200 " in ops.row(TUNNELLED), 10), ops.row(TUNNELLED)
        assert ops.row(TUNNELLED).split()[1] == "up"
        assert wait_until(lambda: set(ops.who(8)) == {"tun", "direct"}, 10)

        tunnelled.failing.set()
        assert ops.state_is(TUNNELLED, "down"), ops.row(TUNNELLED)
        assert "FAIL status 503 (expected 2xx)" in ops.row(TUNNELLED)
        assert ops.who(8) == Counter(direct=8)
        assert ops.metric(up) == 0
        assert ops.metric(downs) == 1
        assert ops.metric(fails) >= 2
        log = proxy.stderr()
        assert re.search(
            rf"backend={re.escape(TUNNELLED)} through the tunnel \(process \d/{workers}\): "
            r"up -> down: 2 failed check\(s\) in a row, last: status 503",
            log,
        ), log
        assert (
            f"pool=web backend={TUNNELLED} state up -> down: the checks through the tunnel "
            "fail, last: status 503 (expected 2xx)" in log
        )

        tunnelled.failing.clear()
        assert ops.state_is(TUNNELLED, "up"), ops.row(TUNNELLED)
        assert ops.metric(up) == 1
        # Each process takes it back after its own `rise` good checks.
        assert wait_until(lambda: ops.who(8)["tun"] >= 2, 10)
        assert wait_until(lambda: ops.who(16)["tun"] >= 4 * workers / 2, 10)
        assert f"pool=web backend={TUNNELLED} state down -> up" in proxy.stderr()
    finally:
        agent.stop()
        assert proxy.stop() == 0


def test_checks_are_made_only_while_an_agent_connection_exposes_the_server(
    tmp_path: Path, origins: tuple[Switchable, Origin]
) -> None:
    tunnelled, _ = origins
    proxy, agent, ops = start(tmp_path, origins, 1)
    try:
        assert wait_until(lambda: " ok 200 " in ops.row(TUNNELLED), 10)
        agent.stop()
        # No connection, no check: the server is out (unlinked) but not marked down, and it
        # is served again as soon as its agent is back.
        assert ops.who(6) == Counter(direct=6)
        seen = len(tunnelled.checks())
        assert not wait_until(lambda: ops.row(TUNNELLED).split()[1:2] == ["down"], 1.5)
        assert len(tunnelled.checks()) == seen
        agent.start(wait_connections=0)
        assert wait_until(lambda: "tun" in ops.who(6), 5)
        assert wait_until(lambda: len(tunnelled.checks()) > seen, 5)
    finally:
        agent.stop()
        assert proxy.stop() == 0


def test_a_reload_restarts_changed_checks_and_one_without_checks_brings_it_back(
    tmp_path: Path, origins: tuple[Switchable, Origin]
) -> None:
    tunnelled, direct = origins
    proxy, agent, ops = start(tmp_path, origins, 1)
    conf = proxy.conf / "10-test.toml"
    try:
        assert wait_until(lambda: len(tunnelled.checks()) >= 1, 10)
        # A new path: the checks through the tunnel ask it from then on.
        conf.write_text(conf.read_text().replace('path = "/health"', 'path = "/health/v2"'))
        assert ops.ctl("reload").startswith("reloaded: generation 2")
        assert wait_until(lambda: len(tunnelled.checks("/health/v2")) >= 2, 10)
        before = len(tunnelled.checks())
        tunnelled.failing.set()
        assert ops.state_is(TUNNELLED, "down")
        assert len(tunnelled.checks()) == before  # the old path is asked no more
        # No checks at all: nothing could bring it back, so it is up (and used) again.
        conf.write_text(conf.read_text().replace(CHECKS.replace("/health", "/health/v2"), ""))
        assert ops.ctl("reload").startswith("reloaded: generation 3")
        assert ops.state_is(TUNNELLED, "up")
        assert wait_until(lambda: "tun" in ops.who(6), 5)
        asked = len(tunnelled.checks("/health/v2"))
        assert not wait_until(lambda: len(tunnelled.checks("/health/v2")) > asked, 1.0)
        assert direct.requests()  # the direct server took its share meanwhile
    finally:
        agent.stop()
        assert proxy.stop() == 0
