"""Health: active checks and passive observation write backend state; they never pick.

Rule of this room: a backend's health changes only through ``TABLE``, one row per (health
state, event); a pair the table lacks is an error, not a silent no-op. Health has three states:
``UP``; ``DOWN`` (failed ``fall`` active checks in a row, back after ``rise`` good ones); and
``COOLING`` (``failures`` connection attempts in a row failed — passive — so it rests for
``cooldown``; then it is up again if active checks agree, or there are none). The operator's
``drain`` and ``disable`` sit above health as an admin state (DRAIN, MAINT) that health never
overrides: checks go on underneath, and ``enable`` reveals whatever health found meanwhile.
What balancing sees, ``Backend.state``, is the admin state if set, else UP or DOWN.

A new backend starts UP but unconfirmed (as in HAProxy): its first failed check takes it down.
A backend that comes back up ramps its weight over ``slow_start`` (``weight_factor``).

Tunnel servers (``{ tunnel = "home/web" }``) are checked where their agent connections are:
each serving process that holds some runs a ``TunnelMonitor``, which checks them through those
connections with the same ``check_once`` and the same table, and writes its verdict with the
hub's ``TunnelPaths.checked`` (a server is used only while it is linked and passes); the
master, which may hold none, hears of every check (``CheckReport``) and moves its own record by
the ``TUNNEL_UP``/``TUNNEL_DOWN`` rows: up while the checks pass in any process checking it.

The first half of this file is pure (time is passed in). The second half is the I/O shell:
``check_once`` (an HTTP GET or a TCP connect, over TLS when the pool uses TLS, with a PROXY
LOCAL header first when the pool sends PROXY headers, from the pool's ``source`` when it has
one) and ``HealthMonitor``, which runs one jittered check loop per backend, once per instance
(in the master), and reports every change.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import random
import re
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from revproxy.config.model import Health as HealthConfig
from revproxy.config.model import Pool as PoolConfig
from revproxy.errors import LocalResourceError, is_local_shortage
from revproxy.ops.log_limit import RateLimitedLog
from revproxy.ops.metrics import InstanceMetrics
from revproxy.proto.events import ResponseReceived
from revproxy.proto.http1.exact import H1Client
from revproxy.proto.proxy_protocol import build_local_v2, build_v1
from revproxy.upstream.backend import Backend, BackendState
from revproxy.upstream.dialer import SourceAddressError, SourceAddresses, connect_from_source
from revproxy.upstream.tunnel_paths import TunnelPaths

log = logging.getLogger("revproxy.health")

# --- the state machine (pure) --------------------------------------------------------------


class Health(enum.Enum):
    UP = "up"
    DOWN = "down"  # active checks failed
    COOLING = "cooling"  # passive: too many failed connections; resting for `cooldown`


class Event(enum.Enum):
    CHECK_OK = "check ok"
    CHECK_FAIL = "check failed"
    CONNECT_OK = "connect ok"  # passive: a connection succeeded after failures
    CONNECT_FAIL = "connect failed"  # passive: a connection attempt failed or timed out
    COOLDOWN_OVER = "cooldown over"
    # A tunnel server, in the master: the processes checking it through their agent
    # connections report it passing in one of them at least (UP), or failing in all (DOWN).
    TUNNEL_UP = "checks through the tunnel pass"
    TUNNEL_DOWN = "checks through the tunnel fail"


@dataclass(frozen=True, slots=True)
class Thresholds:
    rise: int = 2
    fall: int = 3
    failures: int = 3  # passive
    cooldown: float = 10.0
    active: bool = False  # the pool has active checks

    @property
    def rise_after_cooldown(self) -> int:
        """Good checks needed to leave COOLING: ``rise`` with active checks, else none."""
        return self.rise if self.active else 0

    @classmethod
    def of(cls, pool: PoolConfig) -> Thresholds:
        h, p = pool.health, pool.passive
        return cls(
            rise=h.rise if h else 2,
            fall=h.fall if h else 3,
            failures=p.failures if p else 0,
            cooldown=p.cooldown if p else 0.0,
            active=h is not None,
        )


@dataclass(frozen=True, slots=True)
class Rule:
    """One row: bump or clear a counter; on reaching ``limit``, enter ``to`` (else
    ``otherwise``). Without ``bump``, the counter named by ``of`` is compared as it is."""

    bump: str = ""  # counter this event adds one to: "fails", "passes" or "passive"
    clear: str = ""  # counter this event sets to zero
    limit: str = ""  # a Thresholds attribute
    of: str = ""  # the counter compared with ``limit`` when nothing is bumped
    to: Health | None = None
    otherwise: Health | None = None
    why: str = ""  # reason logged with the change ({n}: the counter, {detail}: the event's)


_IGNORE = Rule()
U, D, C = Health.UP, Health.DOWN, Health.COOLING
E = Event

TABLE: dict[tuple[Health, Event], Rule] = {
    (U, E.CHECK_OK): Rule(clear="fails"),
    (U, E.CHECK_FAIL): Rule(
        bump="fails", limit="fall", to=D, why="{n} failed check(s) in a row, last: {detail}"
    ),
    (U, E.CONNECT_OK): Rule(clear="passive"),
    (U, E.CONNECT_FAIL): Rule(
        bump="passive", limit="failures", to=C, why="{n} failed connection(s) in a row"
    ),
    (U, E.COOLDOWN_OVER): _IGNORE,
    (U, E.TUNNEL_UP): _IGNORE,
    (U, E.TUNNEL_DOWN): Rule(to=D, why="the checks through the tunnel fail, last: {detail}"),
    (D, E.CHECK_OK): Rule(bump="passes", limit="rise", to=U, why="{n} good check(s) in a row"),
    (D, E.CHECK_FAIL): Rule(clear="passes"),
    (D, E.CONNECT_OK): _IGNORE,  # a connection opened just before it went down
    (D, E.CONNECT_FAIL): _IGNORE,
    (D, E.COOLDOWN_OVER): _IGNORE,
    (D, E.TUNNEL_UP): Rule(to=U, why="the checks through the tunnel pass"),
    (D, E.TUNNEL_DOWN): _IGNORE,
    (C, E.CHECK_OK): Rule(bump="passes"),  # counts toward coming back when the rest is over
    (C, E.CHECK_FAIL): Rule(clear="passes"),
    (C, E.CONNECT_OK): _IGNORE,
    (C, E.CONNECT_FAIL): _IGNORE,
    (C, E.COOLDOWN_OVER): Rule(
        limit="rise_after_cooldown",
        of="passes",
        to=U,
        otherwise=D,
        why="cooldown over ({n} good check(s) since)",
    ),
    (C, E.TUNNEL_UP): Rule(bump="passes"),  # as a good check: counts toward the rest's end
    (C, E.TUNNEL_DOWN): Rule(clear="passes"),
}

ADMIN_STATES = (BackendState.DRAIN, BackendState.MAINT)


@dataclass(frozen=True, slots=True)
class CheckResult:
    ok: bool
    detail: str  # "200", "connection refused", "timed out", "status 503 (expected 2xx)"
    duration: float  # seconds
    at: float  # monotonic time it finished


@dataclass(slots=True)
class Change:
    """A change of the state balancing sees."""

    before: BackendState
    after: BackendState
    reason: str


@dataclass(slots=True)
class HealthRecord:
    """Everything health knows about one backend; survives reloads while its address does."""

    health: Health = Health.UP
    admin: BackendState | None = None  # DRAIN or MAINT, set by the operator
    fails: int = 0  # failed active checks in a row while UP
    passes: int = 0  # good active checks in a row while DOWN or COOLING
    passive: int = 0  # failed connection attempts in a row while UP
    cooldown_until: float = 0.0
    up_since: float | None = None  # when it last came (back) up: slow start ramps from here
    changed_at: float = 0.0
    last_check: CheckResult | None = None

    @classmethod
    def new(cls, t: Thresholds, now: float) -> HealthRecord:
        """Up but unconfirmed: with active checks, the first failure takes it down."""
        return cls(fails=max(t.fall - 1, 0) if t.active else 0, changed_at=now)

    @property
    def state(self) -> BackendState:
        if self.admin is not None:
            return self.admin
        return BackendState.UP if self.health is Health.UP else BackendState.DOWN


def step(
    rec: HealthRecord, event: Event, t: Thresholds, now: float, detail: str = ""
) -> Change | None:
    """Apply ``event`` to ``rec`` by the table; the visible change, if any."""
    rule = TABLE[(rec.health, event)]
    if rule.clear:
        setattr(rec, rule.clear, 0)
    n = 0
    if rule.bump:
        n = getattr(rec, rule.bump) + 1
        setattr(rec, rule.bump, n)
    elif rule.of:
        n = getattr(rec, rule.of)
    target = None
    if rule.limit:
        target = rule.to if n >= getattr(t, rule.limit) else rule.otherwise
    elif rule.to is not None:
        target = rule.to
    if target is None or target is rec.health:
        return None
    before = rec.state
    _enter(rec, target, t, now)
    after = rec.state
    reason = rule.why.format(n=n, detail=detail or "-") if rule.why else event.value
    if after is before:
        return None  # under an admin state: health moved, what balancing sees did not
    return Change(before, after, reason)


def _enter(rec: HealthRecord, health: Health, t: Thresholds, now: float) -> None:
    rec.health = health
    rec.changed_at = now
    rec.fails = 0
    if health is Health.UP:
        rec.passes = rec.passive = 0
        rec.up_since = now
    elif health is Health.COOLING:
        rec.passes = 0
        rec.cooldown_until = now + t.cooldown
    # Entering DOWN from COOLING keeps the good checks counted during the rest.


def set_admin(rec: HealthRecord, admin: BackendState | None, now: float) -> Change | None:
    """The operator's ``drain`` (DRAIN), ``disable`` (MAINT) or ``enable`` (None)."""
    if admin is not None and admin not in ADMIN_STATES:
        raise ValueError(f"{admin} is not an admin state")
    before = rec.state
    if admin is None and rec.admin is not None and rec.health is Health.UP:
        rec.up_since = now  # back into service: slow start ramps from now
    rec.admin = admin
    after = rec.state
    if after is before:
        return None
    verb = {BackendState.DRAIN: "drained", BackendState.MAINT: "disabled"}.get(after, "enabled")
    return Change(before, after, f"{verb} by the operator")


def checks_removed(rec: HealthRecord, now: float) -> Change | None:
    """A reload removed the pool's active checks: nothing could bring a server that they
    took down back, so it is up again (passive checks, if any, still watch it)."""
    if rec.health is not Health.DOWN:
        return None
    before = rec.state
    rec.health, rec.changed_at, rec.up_since = Health.UP, now, now
    rec.fails = rec.passes = rec.passive = 0
    if rec.state is before:
        return None
    return Change(before, rec.state, "active checks removed from the configuration")


def slow_start_factor(up_since: float | None, now: float, slow_start: float) -> float:
    """Share of its weight a backend gets ``now``: ramps 0 → 1 over ``slow_start`` seconds."""
    if up_since is None or slow_start <= 0:
        return 1.0
    return min(max((now - up_since) / slow_start, 0.0), 1.0)


_EXPECT = re.compile(r"([1-5])xx|(\d{3})(?:-(\d{3}))?")


def status_matches(expect: str, status: int) -> bool:
    """``expect`` is "2xx", "200", "200-399" or a comma list of those."""
    for item in expect.split(","):
        m = _EXPECT.fullmatch(item.strip().lower())
        if m is None:
            raise ValueError(f"bad expect item {item!r}")
        if m[1] is not None:
            if status // 100 == int(m[1]):
                return True
        elif int(m[2]) <= status <= int(m[3] or m[2]):
            return True
    return False


# --- one check (I/O) ----------------------------------------------------------------------

# Check requests carry this User-Agent so that origins can leave them out of their logs.
USER_AGENT = b"revproxy-health"
# Largest response head a check reads.
CHECK_MAX_HEAD = 16384
# Each check waits `interval` times a random factor in [1 - JITTER, 1 + JITTER], so that the
# checks of many backends (and instances) do not fall into step.
JITTER = 0.15
# How often cooldowns are ended and slow-start weights updated.
TICK = 0.5


def client_context(pool: PoolConfig) -> ssl.SSLContext | None:
    """The TLS context checks (and connections) to ``pool``'s servers use, if it uses TLS."""
    if pool.tls is None:
        return None
    if pool.tls.verify:
        ctx = ssl.create_default_context(cafile=str(pool.tls.ca) if pool.tls.ca else None)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _host_header(backend: Backend, pool: PoolConfig, health: HealthConfig) -> str:
    if health.host:
        return health.host
    if pool.tls is not None and pool.tls.sni:
        return pool.tls.sni
    if backend.tunnel is not None:
        return _expose(backend)  # the proxy does not know the target's address; its name
    name = backend.server_name
    host = f"[{name}]" if ":" in name else name
    return f"{host}:{backend.port}"


def _expose(backend: Backend) -> str:
    """A tunnel server's expose name ("web" of "home/web")."""
    return (backend.tunnel or "").partition("/")[2]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SourceAddressError):
        return str(exc)  # which source, toward which address
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


async def check_once(
    backend: Backend,
    pool: PoolConfig,
    tls: ssl.SSLContext | None = None,
    *,
    tunnels: TunnelPaths | None = None,
    source: SourceAddresses | None = None,
) -> tuple[bool, str]:
    """One active check of ``backend``: (passed, detail). Never raises for the origin's faults.

    A tunnel server is checked through a stream that ``tunnels`` (the hub of this process)
    opens to its expose: the agent connects to the target, and the same bytes go over it.
    With ``source`` (the pool's), the check leaves from the next of its addresses, as the
    pool's connections do; a failure then says from which."""
    health = pool.health
    assert health is not None
    writer: asyncio.StreamWriter | None = None
    bound: list[str] = []  # the source address the check left from
    try:
        async with asyncio.timeout(health.timeout):
            if backend.tunnel is not None:
                if tunnels is None:
                    raise ConnectionRefusedError("no agent connection in this process")
                io = await tunnels.open_conn(backend, health.timeout)
                reader, writer = io.as_streams(CHECK_MAX_HEAD * 2)
            else:
                host, port = (backend.addresses or ((backend.host, backend.port),))[0]
                if source:
                    sock = await connect_from_source(source, host, port, bound=bound)
                    reader, writer = await asyncio.open_connection(
                        sock=sock, limit=CHECK_MAX_HEAD * 2
                    )
                else:
                    reader, writer = await asyncio.open_connection(
                        host, port, limit=CHECK_MAX_HEAD * 2
                    )
            if pool.send_proxy == "v2":
                writer.write(build_local_v2())
            elif pool.send_proxy == "v1":
                writer.write(build_v1(None, None))
            if tls is not None:
                named = _expose(backend) if backend.tunnel is not None else backend.server_name
                sni = (pool.tls.sni if pool.tls else None) or health.host or named
                await writer.start_tls(tls, server_hostname=sni)
            if health.tcp:
                return True, "connected"
            client = H1Client(max_header_size=CHECK_MAX_HEAD)
            headers = [
                (b"host", _host_header(backend, pool, health).encode("idna")),
                (b"user-agent", USER_AGENT),
                (b"connection", b"close"),
            ]
            writer.write(client.send_request(b"GET", health.path.encode(), headers))
            writer.write(client.send_end())
            await writer.drain()
            while True:
                data = await reader.read(65536)
                for ev in client.receive_data(data):
                    if isinstance(ev, ResponseReceived):
                        if status_matches(health.expect, ev.status):
                            return True, str(ev.status)
                        return False, f"status {ev.status} (expected {health.expect})"
                if not data:
                    return False, "closed without a response"
    except LocalResourceError:
        raise  # ours, not the server's (connect_from_source): no result
    except Exception as exc:  # every failure of the origin is a failed check
        if is_local_shortage(exc):  # ... but not our own want of descriptors or memory
            raise LocalResourceError(f"out of resources checking {backend.label}: {exc}") from exc
        detail = _describe(exc)
        if bound and not isinstance(exc, SourceAddressError):
            detail += f" (from {bound[-1]})"
        return False, detail
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()


# --- the monitor (I/O) --------------------------------------------------------------------

Key = tuple[str, str, int]  # pool name, host, port: what makes a backend "the same" on reload

# A process's report on a tunnel server counts for the master this many check intervals (plus
# a timeout) after it came: a worker that stopped checking it (no agent connection left, gone)
# no longer keeps it up or down.
REPORT_LIFETIME = 3


@dataclass(eq=False)
class Target:
    """One backend under watch: its record, its current Backend object and pool config."""

    key: Key
    record: HealthRecord
    backend: Backend
    pool: PoolConfig
    task: asyncio.Task[None] | None = None
    tls: ssl.SSLContext | None = None
    # The pool's ``source``: checks leave from its addresses, in turn, as connections do.
    source: SourceAddresses | None = None
    # A tunnel server, in the master: by serving process, whether its checks pass there and
    # when that process said so (``HealthMonitor.report``).
    reports: dict[int, tuple[bool, float]] = field(default_factory=dict)

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds.of(self.pool)


@dataclass(frozen=True, slots=True)
class CheckReport:
    """One check of a tunnel server by a process that holds agent connections, as the master
    hears of it (directly, or over a worker's channel as ``message()``)."""

    key: Key
    source: int  # the serving process: the worker's slot (0 for a single process)
    ok: bool
    detail: str
    duration: float
    passing: bool  # the server's state by that process's checks, this one included

    def message(self) -> dict[str, Any]:
        return {
            "op": "check",
            "key": list(self.key),
            "source": self.source,
            "ok": self.ok,
            "detail": self.detail,
            "duration": self.duration,
            "passing": self.passing,
        }

    @classmethod
    def of(cls, msg: Mapping[str, Any]) -> CheckReport:
        """The report a ``message()`` carries (KeyError, TypeError, ValueError if malformed)."""
        pool, host, port = msg["key"]
        return cls(
            (str(pool), str(host), int(port)),
            int(msg["source"]),
            bool(msg["ok"]),
            str(msg["detail"]),
            float(msg["duration"]),
            bool(msg["passing"]),
        )


ChangeHook = Callable[[Target, Change], None]


@dataclass(eq=False)
class HealthMonitor:
    """Runs the checks of one instance and writes every backend's state and weight factor."""

    on_change: ChangeHook | None = None
    metrics: InstanceMetrics | None = None
    rng: random.Random = field(default_factory=random.Random)
    clock: Callable[[], float] = time.monotonic
    targets: dict[Key, Target] = field(default_factory=dict)
    shortage_log: RateLimitedLog = field(default_factory=RateLimitedLog)
    # Told of every check's result (a tunnel process reports them to the master).
    on_check: Callable[[Target, CheckResult], None] | None = None
    _ticker: asyncio.Task[None] | None = None
    # Loops cancelled and not over yet (``wait_closed``).
    _stopped: set[asyncio.Task[None]] = field(default_factory=set)

    # --- following the configuration

    def adopt(self, pools: Iterable[tuple[PoolConfig, Iterable[Backend]]]) -> None:
        """Watch these backends (a new generation's): keep the records of unchanged ones,
        start checks for new ones, stop those that left; write state into every Backend."""
        seen: set[Key] = set()
        for pool, backends in pools:
            seen |= self._watch(pool, backends)
        self._forget([k for k in self.targets if k not in seen])

    def follow(self, pool: PoolConfig, backends: Iterable[Backend]) -> None:
        """One pool's servers changed at run time (DNS discovery, ``ctl add/del server``):
        watch the new ones, stop those that left, keep the rest as they are."""
        seen = self._watch(pool, backends)
        self._forget([k for k in self.targets if k[0] == pool.name and k not in seen])

    def _watch(self, pool: PoolConfig, backends: Iterable[Backend]) -> set[Key]:
        now = self.clock()
        seen: set[Key] = set()
        for b in backends:
            key = (pool.name, b.host, b.port)
            seen.add(key)
            t = self.targets.get(key)
            if t is None:
                t = Target(key, HealthRecord.new(Thresholds.of(pool), now), b, pool)
                self.targets[key] = t
                restart = True
            else:
                restart = _check_settings(t.pool) != _check_settings(pool)
                t.backend, t.pool = b, pool
            if restart:
                self._restart(t)
                if pool.health is None:
                    self._apply(t, checks_removed(t.record, now))
            self._write(t, now)
        return seen

    def _forget(self, keys: Iterable[Key]) -> None:
        for key in keys:
            t = self.targets.pop(key)
            self._cancel(t)

    def _cancel(self, t: Target) -> None:
        if t.task is not None:
            self._stop(t.task)
            t.task = None

    def _stop(self, task: asyncio.Task[None]) -> None:
        task.cancel()
        if not task.done():
            self._stopped.add(task)
            task.add_done_callback(self._stopped.discard)

    def _restart(self, t: Target) -> None:
        self._cancel(t)
        t.reports.clear()
        # A tunnel server is checked through its agent connections by each process holding
        # some (``TunnelMonitor``), not from here: the master may hold none of them.
        if self._checks(t):
            t.tls = client_context(t.pool)
            addresses = t.pool.source_addresses
            t.source = SourceAddresses(addresses) if addresses else None
            t.task = asyncio.get_running_loop().create_task(self._check_loop(t))

    def _checks(self, t: Target) -> bool:
        """Whether this monitor runs active checks of ``t``."""
        return t.pool.health is not None and t.backend.tunnel is None

    def _write(self, t: Target, now: float) -> None:
        t.backend.state = t.record.state
        t.backend.weight_factor = slow_start_factor(t.record.up_since, now, t.pool.slow_start)

    # --- events

    def _apply(self, t: Target, change: Change | None) -> None:
        self._write(t, self.clock())
        if change is None:
            return
        log.warning(
            "pool=%s backend=%s state %s -> %s: %s",
            t.pool.name,
            t.backend.label,
            change.before.value,
            change.after.value,
            change.reason,
        )
        if self.metrics is not None:
            self.metrics.state_changes.inc((t.pool.name, t.backend.label, change.after.value))
        if self.on_change is not None:
            self.on_change(t, change)

    def feed(self, t: Target, event: Event, detail: str = "") -> Change | None:
        change = step(t.record, event, t.thresholds, self.clock(), detail)
        self._apply(t, change)
        return change

    def observe(self, backend: Backend, ok: bool) -> None:
        """Passive health: a connection attempt to ``backend`` succeeded or failed."""
        self.observe_key((backend.pool, backend.host, backend.port), ok)

    def observe_key(self, key: Key, ok: bool) -> None:
        t = self.targets.get(key)
        if t is None or t.pool.passive is None:
            return
        self.feed(t, Event.CONNECT_OK if ok else Event.CONNECT_FAIL)

    def report(self, rep: CheckReport) -> None:
        """A process holding agent connections checked a tunnel server through them: the
        check is shown and counted here, and the server is up while its checks pass in one
        process at least of those that reported lately (``REPORT_LIFETIME``)."""
        t = self.targets.get(rep.key)
        health = t.pool.health if t is not None else None
        if t is None or health is None or t.backend.tunnel is None:
            return  # a report on a server a reload just removed, or no longer checked
        now = self.clock()
        t.record.last_check = CheckResult(rep.ok, rep.detail, rep.duration, now)
        self._count(t, rep.ok, rep.duration)
        t.reports[rep.source] = (rep.passing, now)
        lifetime = REPORT_LIFETIME * health.interval + health.timeout
        passing = any(p for p, at in t.reports.values() if now - at <= lifetime)
        self.feed(t, Event.TUNNEL_UP if passing else Event.TUNNEL_DOWN, rep.detail)

    def _count(self, t: Target, ok: bool, duration: float) -> None:
        if self.metrics is not None:
            self.metrics.checks.inc((t.pool.name, t.backend.label, "ok" if ok else "fail"))
            self.metrics.check_duration.observe((t.pool.name,), duration)

    def set_admin(self, t: Target, admin: BackendState | None) -> Change | None:
        change = set_admin(t.record, admin, self.clock())
        self._apply(t, change)
        return change

    def find(self, spec: str) -> Target | None:
        """The backend an operator names: its label, ``POOL/NAME`` or ``POOL/host:port``."""
        for t in self.targets.values():
            b = t.backend
            host = f"[{b.host}]" if ":" in b.host else b.host
            names = {b.label, f"{b.pool}/{host}:{b.port}"}
            if b.name:
                names.add(f"{b.pool}/{b.name}")
            if spec in names:
                return t
        return None

    # --- running

    def start(self) -> None:
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick_loop())

    def close(self) -> None:
        if self._ticker is not None:
            self._stop(self._ticker)
            self._ticker = None
        for t in self.targets.values():
            self._cancel(t)

    async def wait_closed(self) -> None:
        """Wait for the check loops stopped so far (``close``, reloads) to be over."""
        if self._stopped:
            await asyncio.gather(*self._stopped, return_exceptions=True)

    def tick(self) -> None:
        """End cooldowns that are over; move slow-start weights along."""
        now = self.clock()
        for t in list(self.targets.values()):
            rec = t.record
            if rec.health is Health.COOLING and now >= rec.cooldown_until:
                self.feed(t, Event.COOLDOWN_OVER)
            elif t.backend.weight_factor < 1.0 or t.pool.slow_start > 0:
                self._write(t, now)

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self.tick()

    async def _check_loop(self, t: Target) -> None:
        # The first check comes soon, at a random point, so that a fresh start learns quickly
        # without every backend being checked in the same instant.
        assert t.pool.health is not None
        await asyncio.sleep(self.rng.uniform(0.0, min(t.pool.health.interval, 1.0)))
        while True:
            health = t.pool.health
            if health is None:
                return
            started = time.monotonic()
            try:
                result = await self._check(t)
            except LocalResourceError as exc:
                # Says nothing of the server: no result is recorded, the state stays.
                self.shortage_log.warn(log, "pool=%s check skipped: %s", t.pool.name, exc)
                await asyncio.sleep(health.interval)
                continue
            if result is None:  # nothing to check it through now: the state stays
                await asyncio.sleep(health.interval * self.rng.uniform(1 - JITTER, 1 + JITTER))
                continue
            ok, detail = result
            duration = time.monotonic() - started
            t.record.last_check = CheckResult(ok, detail, duration, self.clock())
            self._count(t, ok, duration)
            if not ok:
                # News while it is up; while it is down, every interval would say the same.
                log.log(
                    logging.INFO if t.record.health is Health.UP else logging.DEBUG,
                    "pool=%s backend=%s check failed: %s",
                    t.pool.name,
                    t.backend.label,
                    detail,
                )
            self.feed(t, Event.CHECK_OK if ok else Event.CHECK_FAIL, detail)
            if self.on_check is not None:
                self.on_check(t, t.record.last_check)
            await asyncio.sleep(health.interval * self.rng.uniform(1 - JITTER, 1 + JITTER))

    async def _check(self, t: Target) -> tuple[bool, str] | None:
        """One check of ``t``: (passed, detail), or None when it cannot be made now."""
        return await check_once(t.backend, t.pool, t.tls, source=t.source)


@dataclass(eq=False)
class TunnelMonitor(HealthMonitor):
    """The active checks of tunnel servers in a process that holds agent connections.

    It watches the tunnel servers of the pools with ``health`` only, checks each through the
    agent connections of this process (``tunnels``, the hub) while one exposes it — no
    connection, no check, and the state stays — and writes the verdict with
    ``tunnels.checked`` instead of ``Backend.state`` (the master's, which it broadcasts to the
    workers). ``on_check`` carries each result to the master (``CheckReport``); passive
    health and the operator's states stay the master's.
    """

    tunnels: TunnelPaths | None = None
    # Which serving process this is, for the log: (index, count).
    process: tuple[int, int] = (0, 1)

    def adopt(self, pools: Iterable[tuple[PoolConfig, Iterable[Backend]]]) -> None:
        super().adopt(
            (pool, [b for b in backends if b.tunnel is not None])
            for pool, backends in pools
            if pool.health is not None
        )

    def _forget(self, keys: Iterable[Key]) -> None:
        keys = list(keys)
        for key in keys:
            t = self.targets[key]
            if self.tunnels is not None:
                self.tunnels.checked(t.backend, True)  # no checks: used while linked
        super()._forget(keys)

    def _checks(self, t: Target) -> bool:
        return t.pool.health is not None and self.tunnels is not None

    def _write(self, t: Target, now: float) -> None:
        if self.tunnels is not None:
            self.tunnels.checked(t.backend, t.record.health is Health.UP)

    def _apply(self, t: Target, change: Change | None) -> None:
        self._write(t, self.clock())
        if change is None:
            return
        index, count = self.process
        log.info(
            "pool=%s backend=%s through the tunnel (process %d/%d): %s -> %s: %s",
            t.pool.name,
            t.backend.label,
            index,
            count,
            change.before.value,
            change.after.value,
            change.reason,
        )
        if self.on_change is not None:
            self.on_change(t, change)

    async def _check(self, t: Target) -> tuple[bool, str] | None:
        if self.tunnels is None or not self.tunnels.held(t.backend):
            return None
        return await check_once(t.backend, t.pool, t.tls, tunnels=self.tunnels)


def _check_settings(pool: PoolConfig) -> tuple[object, ...]:
    """What a check loop depends on: when it changes on reload, the loop restarts."""
    return (pool.health, pool.tls, pool.send_proxy, pool.source_addresses)
