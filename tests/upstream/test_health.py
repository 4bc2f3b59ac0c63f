"""Health: the rise/fall/passive table (pure, time passed in), slow start, expect patterns,
and the check runner against real loopback servers (HTTP, TCP, TLS, PROXY LOCAL first)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from revproxy.certs.files import generate_self_signed
from revproxy.config.model import Health as HealthConfig
from revproxy.config.model import Passive, PoolTLS, Server
from revproxy.config.model import Pool as PoolConfig
from revproxy.ops.metrics import InstanceMetrics
from revproxy.proto.proxy_protocol import build_local_v2
from revproxy.upstream.backend import Backend, BackendState
from revproxy.upstream.health import (
    TABLE,
    Change,
    Event,
    Health,
    HealthMonitor,
    HealthRecord,
    Thresholds,
    check_once,
    set_admin,
    slow_start_factor,
    status_matches,
    step,
)

UP, DOWN, DRAIN, MAINT = (
    BackendState.UP,
    BackendState.DOWN,
    BackendState.DRAIN,
    BackendState.MAINT,
)
OK, FAIL = Event.CHECK_OK, Event.CHECK_FAIL
CFAIL, COK, OVER = Event.CONNECT_FAIL, Event.CONNECT_OK, Event.COOLDOWN_OVER

ACTIVE = Thresholds(rise=2, fall=3, failures=3, cooldown=10.0, active=True)
PASSIVE_ONLY = Thresholds(rise=2, fall=3, failures=3, cooldown=10.0, active=False)


def run(rec: HealthRecord, events: list[Event], t: Thresholds, now: float = 0.0) -> list[str]:
    """Feed events one second apart; the visible state after each."""
    out = []
    for i, ev in enumerate(events):
        step(rec, ev, t, now + i)
        out.append(rec.state.value)
    return out


def asynctest(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test function to completion in a fresh event loop."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return wrapper


# --- the table ---------------------------------------------------------------------------------


def test_the_table_has_a_row_for_every_state_and_event() -> None:
    assert set(TABLE) == {(h, e) for h in Health for e in Event}


def test_a_new_backend_is_up_but_its_first_failed_check_takes_it_down() -> None:
    rec = HealthRecord.new(ACTIVE, 0.0)
    assert rec.state is UP
    change = step(rec, FAIL, ACTIVE, 1.0, "connection refused")
    assert change == Change(UP, DOWN, "3 failed check(s) in a row, last: connection refused")


def test_once_confirmed_it_takes_fall_failures_in_a_row() -> None:
    rec = HealthRecord.new(ACTIVE, 0.0)
    assert run(rec, [OK, FAIL, FAIL, OK, FAIL, FAIL, FAIL], ACTIVE) == [
        "up", "up", "up", "up", "up", "up", "down"
    ]  # fmt: skip


def test_down_takes_rise_good_checks_in_a_row() -> None:
    rec = HealthRecord.new(ACTIVE, 0.0)
    assert run(rec, [FAIL, OK, FAIL, OK, OK], ACTIVE) == ["down", "down", "down", "down", "up"]
    assert rec.up_since == 4.0


@pytest.mark.parametrize(
    ("t", "events", "states"),
    [
        # passive: three failed connections in a row
        (PASSIVE_ONLY, [CFAIL, CFAIL, CFAIL], ["up", "up", "down"]),
        (PASSIVE_ONLY, [CFAIL, CFAIL, COK, CFAIL, CFAIL], ["up"] * 5),
        # without active checks the cooldown's end brings it back
        (PASSIVE_ONLY, [CFAIL, CFAIL, CFAIL, OVER], ["up", "up", "down", "up"]),
        # with active checks it must also pass `rise` of them, during or after the rest
        (ACTIVE, [OK, CFAIL, CFAIL, CFAIL, OK, OK, OVER], ["up"] * 3 + ["down"] * 3 + ["up"]),
        (ACTIVE, [OK, CFAIL, CFAIL, CFAIL, OK, OVER, OK], ["up"] * 3 + ["down"] * 3 + ["up"]),
        (ACTIVE, [OK, CFAIL, CFAIL, CFAIL, OVER, FAIL, OK, OK], ["up"] * 3 + ["down"] * 4 + ["up"]),
        # connections that fail while down change nothing
        (ACTIVE, [FAIL, CFAIL, CFAIL, CFAIL, COK, OK, OK], ["down"] * 6 + ["up"]),
        # a cooldown tick while up or down is nothing
        (ACTIVE, [OVER, FAIL, OVER], ["up", "down", "down"]),
    ],
)
def test_scenarios(t: Thresholds, events: list[Event], states: list[str]) -> None:
    assert run(HealthRecord.new(t, 0.0), events, t) == states


def test_cooling_sets_the_end_of_the_rest() -> None:
    rec = HealthRecord.new(PASSIVE_ONLY, 0.0)
    run(rec, [CFAIL, CFAIL, CFAIL], PASSIVE_ONLY, now=100.0)
    assert rec.health is Health.COOLING
    assert rec.cooldown_until == 112.0


def test_passive_change_reason_names_the_count() -> None:
    rec = HealthRecord.new(PASSIVE_ONLY, 0.0)
    step(rec, CFAIL, PASSIVE_ONLY, 0.0)
    step(rec, CFAIL, PASSIVE_ONLY, 0.0)
    change = step(rec, CFAIL, PASSIVE_ONLY, 0.0)
    assert change is not None
    assert change.reason == "3 failed connection(s) in a row"


# --- admin states ---------------------------------------------------------------------------


def test_health_never_overrides_drain_or_maint() -> None:
    for admin in (DRAIN, MAINT):
        rec = HealthRecord.new(ACTIVE, 0.0)
        assert set_admin(rec, admin, 0.0) == Change(
            UP, admin, "drained by the operator" if admin is DRAIN else "disabled by the operator"
        )
        # health goes down and up underneath; nothing visible changes
        for ev in [FAIL, OK, OK, CFAIL, FAIL, FAIL, FAIL]:
            assert step(rec, ev, ACTIVE, 1.0) is None
            assert rec.state is admin
        assert rec.health is Health.DOWN
        assert set_admin(rec, None, 2.0) == Change(admin, DOWN, "enabled by the operator")


def test_enable_reveals_up_and_restarts_the_slow_start_ramp() -> None:
    rec = HealthRecord.new(ACTIVE, 0.0)
    set_admin(rec, MAINT, 5.0)
    assert set_admin(rec, None, 50.0) == Change(MAINT, UP, "enabled by the operator")
    assert rec.up_since == 50.0


def test_drain_then_disable_then_enable() -> None:
    rec = HealthRecord.new(ACTIVE, 0.0)
    set_admin(rec, DRAIN, 0.0)
    assert set_admin(rec, MAINT, 1.0) == Change(DRAIN, MAINT, "disabled by the operator")
    assert set_admin(rec, MAINT, 1.0) is None
    assert set_admin(rec, None, 2.0) == Change(MAINT, UP, "enabled by the operator")
    assert set_admin(rec, None, 2.0) is None


def test_admin_state_must_be_drain_or_maint() -> None:
    with pytest.raises(ValueError):
        set_admin(HealthRecord(), DOWN, 0.0)


# --- slow start and expect ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("up_since", "now", "slow", "factor"),
    [
        (None, 10.0, 30.0, 1.0),
        (0.0, 10.0, 0.0, 1.0),
        (0.0, 0.0, 30.0, 0.0),
        (0.0, 15.0, 30.0, 0.5),
        (0.0, 30.0, 30.0, 1.0),
        (0.0, 99.0, 30.0, 1.0),
        (10.0, 5.0, 30.0, 0.0),  # clock before the change: never negative
    ],
)
def test_slow_start_factor(up_since: float | None, now: float, slow: float, factor: float) -> None:
    assert slow_start_factor(up_since, now, slow) == factor


def test_effective_weight_ramps_in_a_scaled_pool() -> None:
    b = Backend("web", "10.0.0.1", 80, weight=2)
    b.weight_scale = 100
    assert [setattr(b, "weight_factor", f) or b.effective_weight for f in (0.0, 0.1, 0.5, 1.0)] == [
        1, 20, 100, 200
    ]  # fmt: skip
    b.weight_scale, b.weight_factor = 1, 1.0
    assert b.effective_weight == 2


@pytest.mark.parametrize(
    ("expect", "status", "ok"),
    [
        ("2xx", 200, True),
        ("2xx", 204, True),
        ("2xx", 301, False),
        ("200", 200, True),
        ("200", 201, False),
        ("200-399", 302, True),
        ("200-399", 404, False),
        ("2xx,3xx", 302, True),
        ("2xx, 404", 404, True),
        ("2xx,3xx", 500, False),
    ],
)
def test_status_matches(expect: str, status: int, ok: bool) -> None:
    assert status_matches(expect, status) is ok


# --- the check runner against real servers ---------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def server(
    handler: Handler, ssl_ctx: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[int, list[bytes]]]:
    """A loopback server; yields (port, first bytes of every connection)."""
    firsts: list[bytes] = []

    async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(wrapped, "127.0.0.1", 0, ssl=ssl_ctx)
    port = srv.sockets[0].getsockname()[1]
    try:
        yield port, firsts
    finally:
        srv.close()
        await srv.wait_closed()


def http_reply(status: int, seen: list[bytes] | None = None) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if seen is not None:
            seen.append(head)
        writer.write(f"HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n".encode())
        await writer.drain()

    return handle


def pool_for(port: int, **kw: object) -> tuple[PoolConfig, Backend]:
    health = kw.pop("health", HealthConfig(path="/healthz", timeout=1.0))
    cfg = PoolConfig(
        name="web",
        servers=(Server(address="127.0.0.1", port=port),),
        health=health,  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )
    return cfg, Backend("web", "127.0.0.1", port)


@asynctest
async def test_http_check_passes_on_expected_status_and_sends_a_host() -> None:
    seen: list[bytes] = []
    async with server(http_reply(200, seen)) as (port, _):
        cfg, b = pool_for(port)
        assert await check_once(b, cfg) == (True, "200")
    assert seen[0].startswith(b"GET /healthz HTTP/1.1\r\n")
    assert f"host: 127.0.0.1:{port}".encode() in seen[0].lower()
    assert b"user-agent: revproxy-health" in seen[0].lower()


@asynctest
async def test_http_check_fails_on_unexpected_status() -> None:
    async with server(http_reply(503)) as (port, _):
        cfg, b = pool_for(port)
        assert await check_once(b, cfg) == (False, "status 503 (expected 2xx)")
        cfg2, _ = pool_for(port, health=HealthConfig(expect="2xx,503"))
        assert await check_once(b, cfg2) == (True, "503")


@asynctest
async def test_check_fails_when_refused() -> None:
    async with server(http_reply(200)) as (port, _):
        pass
    cfg, b = pool_for(port)
    ok, detail = await check_once(b, cfg)
    assert not ok
    assert "refused" in detail


@asynctest
async def test_check_times_out_on_a_silent_server() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100_000)
        await asyncio.sleep(5)

    async with server(silent) as (port, _):
        cfg, b = pool_for(port, health=HealthConfig(timeout=0.2))
        assert await check_once(b, cfg) == (False, "timed out")


@asynctest
async def test_check_fails_on_garbage() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()

    async with server(garbage) as (port, _):
        cfg, b = pool_for(port)
        ok, detail = await check_once(b, cfg)
        assert not ok
        assert "malformed" in detail


@asynctest
async def test_tcp_check_only_connects() -> None:
    async def nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(10)

    async with server(nothing) as (port, _):
        cfg, b = pool_for(port, health=HealthConfig(tcp=True))
        assert await check_once(b, cfg) == (True, "connected")


@asynctest
async def test_a_pool_that_sends_proxy_v2_gets_a_local_header_first() -> None:
    firsts: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        firsts.append(await reader.readexactly(16))
        await http_reply(200)(reader, writer)

    async with server(handle) as (port, _):
        cfg, b = pool_for(port, send_proxy="v2")
        assert await check_once(b, cfg) == (True, "200")
        cfg1, _ = pool_for(port, send_proxy="v1")
        assert await check_once(b, cfg1) == (True, "200")
    assert firsts[0] == build_local_v2()
    assert firsts[1][:15] == b"PROXY UNKNOWN\r\n"


@asynctest
async def test_tls_check_uses_the_pool_sni_and_verifies(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "c.key"
    generate_self_signed(["app.internal"], cert, key)
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(cert, key)
    names: list[str | None] = []
    sctx.sni_callback = lambda obj, name, ctx: names.append(name)  # type: ignore[assignment,func-returns-value]
    seen: list[bytes] = []
    async with server(http_reply(204, seen), sctx) as (port, _):
        good, b = pool_for(port, tls=PoolTLS(sni="app.internal", ca=cert))
        from revproxy.upstream.health import client_context

        assert await check_once(b, good, client_context(good)) == (True, "204")
        bad, _ = pool_for(port, tls=PoolTLS(sni="other.internal", ca=cert))
        ok, detail = await check_once(b, bad, client_context(bad))
        assert not ok
        assert detail.startswith("TLS")
        noverify, _ = pool_for(port, tls=PoolTLS(sni="other.internal", verify=False))
        assert (await check_once(b, noverify, client_context(noverify)))[0]
    assert names[0] == "app.internal"
    assert b"host: app.internal" in seen[0].lower()


# --- the monitor ---------------------------------------------------------------------------


async def wait_for(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.02)


@asynctest
async def test_monitor_takes_a_stopped_origin_down_and_brings_it_back() -> None:
    changes: list[tuple[str, Change]] = []
    metrics = InstanceMetrics()
    mon = HealthMonitor(
        on_change=lambda t, c: changes.append((t.backend.label, c)), metrics=metrics
    )
    health = HealthConfig(interval=0.05, timeout=0.5, rise=2, fall=2)
    async with server(http_reply(200)) as (port, _):
        cfg, b = pool_for(port, health=health)
        mon.adopt([(cfg, [b])])
        mon.start()
        await wait_for(lambda: metrics.checks.values.get(("web", b.label, "ok"), 0) >= 2)
        assert b.state is UP
    await wait_for(lambda: b.state is DOWN)
    assert changes[0][1].before is UP
    assert "failed check" in changes[0][1].reason
    async with server(http_reply(200)) as (_, _):
        pass  # (a different port; the original stays closed)
    # a reload that keeps the backend keeps its record: still down, same record object
    record = mon.targets[("web", "127.0.0.1", port)].record
    b2 = Backend("web", "127.0.0.1", port)
    mon.adopt([(cfg, [b2])])
    assert b2.state is DOWN
    assert mon.targets[("web", "127.0.0.1", port)].record is record
    assert metrics.state_changes.values[("web", b.label, "down")] == 1
    # a reload that drops it stops watching it
    mon.adopt([])
    assert mon.targets == {}
    mon.close()


@asynctest
async def test_monitor_passive_trip_and_cooldown_with_slow_start() -> None:
    now = [1000.0]
    mon = HealthMonitor(clock=lambda: now[0])
    cfg = PoolConfig(
        name="web",
        servers=(Server(address="127.0.0.1", port=1),),
        passive=Passive(failures=2, cooldown=5.0),
        slow_start=10.0,
    )
    b = Backend("web", "127.0.0.1", 1)
    b.weight_scale = 100
    mon.adopt([(cfg, [b])])
    assert (b.state, b.weight_factor) == (UP, 1.0)  # no ramp at start
    mon.observe(b, False)
    mon.observe(b, False)
    assert b.state is DOWN
    now[0] += 4.0
    mon.tick()
    assert b.state is DOWN
    now[0] += 1.0
    mon.tick()
    assert (b.state, b.weight_factor, b.effective_weight) == (UP, 0.0, 1)
    now[0] += 5.0
    mon.tick()
    assert (b.weight_factor, b.effective_weight) == (0.5, 50)
    now[0] += 10.0
    mon.tick()
    assert b.effective_weight == 100


@asynctest
async def test_monitor_finds_backends_by_the_names_operators_use() -> None:
    mon = HealthMonitor()
    cfg = PoolConfig(
        name="web",
        servers=(Server(address="10.0.0.1", port=80), Server(address="::1", port=81, name="b")),
    )
    b1, b2 = Backend("web", "10.0.0.1", 80), Backend("web", "::1", 81, name="b")
    mon.adopt([(cfg, [b1, b2])])
    assert mon.find("web/10.0.0.1:80") is mon.targets[("web", "10.0.0.1", 80)]
    assert mon.find("b") is mon.find("web/b") is mon.find("web/[::1]:81")
    assert mon.find("web/10.0.0.1:81") is None
    t = mon.find("b")
    assert t is not None
    mon.set_admin(t, DRAIN)
    assert b2.state is DRAIN
    assert not b2.available


@asynctest
async def test_a_reload_that_removes_active_checks_brings_their_downs_back() -> None:
    mon = HealthMonitor()
    checked = PoolConfig(
        name="web", servers=(Server(address="127.0.0.1", port=1),), health=HealthConfig()
    )
    b = Backend("web", "127.0.0.1", 1)
    mon.adopt([(checked, [b])])
    t = mon.targets[("web", "127.0.0.1", 1)]
    mon.feed(t, FAIL, "connection refused")
    assert b.state is DOWN
    unchecked = PoolConfig(name="web", servers=checked.servers)
    b2 = Backend("web", "127.0.0.1", 1)
    mon.adopt([(unchecked, [b2])])
    assert b2.state is UP
    assert t.task is None
    mon.close()
