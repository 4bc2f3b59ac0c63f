"""Health of tunnel servers: the TUNNEL_UP/TUNNEL_DOWN rows (pure), the master following the
reports of the processes that check (``HealthMonitor.report``, ``CheckReport``), and the
``TunnelMonitor`` of such a process checking through its ``TunnelPaths`` against a real
loopback origin (the paths open a plain connection to it: the agent's part, relaying, is
tests/e2e/test_tunnel_health.py's)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from revproxy.config.model import Health as HealthConfig
from revproxy.config.model import Passive, Server
from revproxy.config.model import Pool as PoolConfig
from revproxy.net.conn_io import ConnIO
from revproxy.ops.metrics import InstanceMetrics
from revproxy.upstream.backend import Backend, BackendState
from revproxy.upstream.health import (
    CheckReport,
    Event,
    HealthMonitor,
    HealthRecord,
    Thresholds,
    TunnelMonitor,
    check_once,
    step,
)

UP, DOWN = BackendState.UP, BackendState.DOWN
T_UP, T_DOWN = Event.TUNNEL_UP, Event.TUNNEL_DOWN
ACTIVE = Thresholds(rise=2, fall=3, failures=2, cooldown=10.0, active=True)
KEY = ("web", "home/web", 0)


def asynctest(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return wrapper


def tunnel_pool(
    health: HealthConfig | None = None, name: str = "web", **kw: Any
) -> tuple[PoolConfig, Backend]:
    cfg = PoolConfig(
        name=name,
        servers=(Server(address="home/web", port=0, tunnel="home/web"),),
        health=health,
        **kw,
    )
    return cfg, Backend(name, "home/web", 0, tunnel="home/web")


# --- the rows ----------------------------------------------------------------------------------


def test_the_master_follows_the_processes_verdict_at_once() -> None:
    rec = HealthRecord.new(ACTIVE, 0.0)
    assert step(rec, T_UP, ACTIVE, 1.0) is None
    change = step(rec, T_DOWN, ACTIVE, 2.0, "status 503 (expected 2xx)")
    assert change is not None and (change.before, change.after) == (UP, DOWN)
    assert change.reason == "the checks through the tunnel fail, last: status 503 (expected 2xx)"
    assert step(rec, T_DOWN, ACTIVE, 3.0) is None
    change = step(rec, T_UP, ACTIVE, 4.0)
    assert change is not None and change.after is UP
    assert change.reason == "the checks through the tunnel pass"
    assert rec.up_since == 4.0  # slow start ramps from here


def test_while_cooling_passing_reports_count_toward_the_rise() -> None:
    rec = HealthRecord.new(ACTIVE, 0.0)
    step(rec, Event.CONNECT_FAIL, ACTIVE, 0.0)
    step(rec, Event.CONNECT_FAIL, ACTIVE, 0.0)
    assert rec.state is DOWN  # cooling
    step(rec, T_UP, ACTIVE, 1.0)
    step(rec, T_DOWN, ACTIVE, 2.0)  # a failure starts the count again
    step(rec, T_UP, ACTIVE, 3.0)
    step(rec, T_UP, ACTIVE, 4.0)
    change = step(rec, Event.COOLDOWN_OVER, ACTIVE, 11.0)
    assert change is not None and change.after is UP


# --- the master hearing reports ----------------------------------------------------------------


def report(source: int, passing: bool, ok: bool | None = None) -> CheckReport:
    ok = passing if ok is None else ok
    return CheckReport(KEY, source, ok, "200" if ok else "status 503 (expected 2xx)", 0.01, passing)


def test_a_report_round_trips_through_a_message_and_a_bad_one_is_refused() -> None:
    rep = report(1, False)
    msg = rep.message()
    assert msg["op"] == "check"
    assert CheckReport.of(msg) == rep
    for broken in ({**msg, "key": ["web", "home/web"]}, {**msg, "source": "x"}, {"op": "check"}):
        with pytest.raises((KeyError, TypeError, ValueError)):
            CheckReport.of(broken)


@asynctest
async def test_the_master_is_up_while_one_process_passes_and_forgets_silent_ones() -> None:
    now = [100.0]
    metrics = InstanceMetrics()
    mon = HealthMonitor(metrics=metrics, clock=lambda: now[0])
    cfg, b = tunnel_pool(HealthConfig(interval=1.0, timeout=0.5, fall=2, rise=2))
    mon.adopt([(cfg, [b])])
    t = mon.targets[KEY]
    assert t.task is None  # the master makes no check of a tunnel server itself
    mon.report(report(0, True))
    mon.report(report(1, False))
    assert b.state is UP  # process 0 still passes
    assert t.record.last_check is not None and not t.record.last_check.ok
    mon.report(report(0, False))
    assert b.state is DOWN
    mon.report(report(1, True))
    assert b.state is UP
    # Process 1 falls silent (its agent connections are gone): after REPORT_LIFETIME
    # intervals its word no longer counts, and process 0's failing checks take it down.
    now[0] += 10.0
    mon.report(report(0, False))
    assert b.state is DOWN
    assert metrics.checks.values[("web", b.label, "fail")] == 3
    assert metrics.checks.values[("web", b.label, "ok")] == 2
    assert metrics.state_changes.values[("web", b.label, "down")] == 2
    mon.close()


@asynctest
async def test_reports_on_servers_not_checked_are_ignored() -> None:
    mon = HealthMonitor()
    unchecked, b = tunnel_pool(passive=Passive())
    mon.adopt([(unchecked, [b])])
    mon.report(report(0, False))
    mon.report(CheckReport(("web", "10.0.0.1", 80), 0, False, "refused", 0.0, False))
    assert b.state is UP
    assert mon.targets[KEY].record.last_check is None


# --- a process's TunnelMonitor -----------------------------------------------------------------


class Loopback:
    """What a ``TunnelMonitor`` uses of ``TunnelPaths``: streams that are plain connections to
    a loopback port (the agent's relaying left out), and the verdicts it is given."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.linked = True
        self.verdicts: list[tuple[str, bool]] = []
        self.opened = 0

    def watch(self, backend: Backend) -> None:
        backend.linked = self.linked

    def held(self, backend: Backend) -> bool:
        return self.linked

    def checked(self, backend: Backend, passing: bool) -> None:
        self.verdicts.append((backend.label, passing))
        backend.linked = passing and self.linked

    async def open_conn(self, backend: Backend, timeout: float) -> ConnIO:
        self.opened += 1
        loop = asyncio.get_running_loop()
        io = ConnIO(loop)
        await loop.create_connection(lambda: io, "127.0.0.1", self.port)
        return io


class Health:
    """A loopback origin whose /health answers ``status``; it records the request heads."""

    def __init__(self) -> None:
        self.status = 200
        self.heads: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            self.heads.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(f"HTTP/1.1 {self.status} X\r\ncontent-length: 0\r\n\r\n".encode())
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def wait_for(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.02)


@asynctest
async def test_a_tunnel_server_is_checked_through_its_paths_and_reported() -> None:
    origin = Health()
    srv = await asyncio.start_server(origin.handle, "127.0.0.1", 0)
    paths = Loopback(srv.sockets[0].getsockname()[1])
    reports: list[tuple[bool, bool]] = []
    mon = TunnelMonitor(tunnels=paths, process=(1, 2))
    mon.on_check = lambda t, result: reports.append((result.ok, t.record.health.value == "up"))
    health = HealthConfig(path="/health", interval=0.05, timeout=0.5, rise=2, fall=2)
    cfg, b = tunnel_pool(health)
    plain = Backend("web", "127.0.0.1", 1)
    unchecked_cfg, unchecked = tunnel_pool(name="other")
    try:
        mon.adopt([(cfg, [b, plain]), (unchecked_cfg, [unchecked])])
        assert list(mon.targets) == [KEY]  # tunnel servers of pools with checks only
        await wait_for(lambda: len(reports) >= 2)
        assert b"GET /health HTTP/1.1\r\n" in origin.heads[0]
        assert b"host: web\r\n" in origin.heads[0].lower()
        assert b.state is UP  # the master's to write: untouched
        origin.status = 503
        await wait_for(lambda: (b.label, False) in paths.verdicts)
        assert not b.linked and b.state is UP
        assert reports[-1] == (False, False)
        # No agent connection: no check is made, the verdict stays.
        paths.linked = False
        await asyncio.sleep(0.1)
        opened = paths.opened
        await asyncio.sleep(0.3)
        assert paths.opened == opened
        paths.linked = True
        origin.status = 200
        await wait_for(lambda: paths.verdicts[-1] == (b.label, True))
        assert b.linked
        # A reload without checks: no more checking, the server is used while linked.
        origin.status = 503
        await wait_for(lambda: paths.verdicts[-1] == (b.label, False))
        task = mon.targets[KEY].task
        b2 = Backend("web", "home/web", 0, tunnel="home/web")
        mon.adopt([(PoolConfig(name="web", servers=cfg.servers), [b2])])
        assert mon.targets == {}
        assert paths.verdicts[-1] == (b.label, True)
        await mon.wait_closed()
        assert task is not None and task.done()
    finally:
        mon.close()
        await mon.wait_closed()
        srv.close()
        await srv.wait_closed()
    assert all(t.task is None for t in mon.targets.values())


@asynctest
async def test_closing_stops_every_check_loop() -> None:
    origin = Health()
    srv = await asyncio.start_server(origin.handle, "127.0.0.1", 0)
    paths = Loopback(srv.sockets[0].getsockname()[1])
    mon = TunnelMonitor(tunnels=paths)
    cfg, b = tunnel_pool(HealthConfig(interval=0.05, timeout=0.5))
    mon.adopt([(cfg, [b])])
    await wait_for(lambda: len(origin.heads) >= 1)
    tasks = [t.task for t in mon.targets.values()]
    mon.close()
    await mon.wait_closed()
    assert all(t is not None and t.done() for t in tasks)
    srv.close()
    await srv.wait_closed()


@asynctest
async def test_a_tunnel_server_without_paths_fails_its_check() -> None:
    _, b = tunnel_pool()
    cfg = PoolConfig(name="web", servers=(), health=HealthConfig(timeout=0.5))
    ok, detail = await check_once(b, cfg)
    assert not ok
    assert "no agent connection" in detail
