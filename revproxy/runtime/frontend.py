"""One process's serving side: the current generation, the listening sockets it holds and
the connections accepted on them, and the resolver of backend host names.

Rule of this room: the master (``supervisor.py``, ``accept=False`` with workers) and each
worker (``workers.py``) serve through a ``Frontend``; it builds a generation beside the current
one and swaps one reference, so both kinds of process reload the same way.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import socket
from collections.abc import Callable

from revproxy.config.model import Bind, Config, Egress
from revproxy.config.tunnel import tunnel_egress_problems
from revproxy.edge.generation import (
    SLOW_START_BALANCE,
    SLOW_START_SCALE,
    Generation,
    PoolRuntime,
    ServiceBuilder,
    build_generation,
    hiding_for,
)
from revproxy.edge.listener import Acceptor, BoundListener
from revproxy.egress.dial import Outbound, Refused
from revproxy.egress.service import SERVICES as EGRESS_SERVICES
from revproxy.egress.service import EgressService
from revproxy.errors import ConfigError, ConfigProblem
from revproxy.net.conn_io import cut_slowest, live_connections, set_buffer_size
from revproxy.ops.log_limit import RateLimitedLog
from revproxy.ops.metrics import RequestMetrics
from revproxy.policy.counters import Counters, LocalCounters
from revproxy.runtime.allocator import give_back
from revproxy.tunnel.egress import EgressOpened
from revproxy.tunnel.hub import Hub, service_builder
from revproxy.upstream.discovery import DiscoveryError, Lookup, members
from revproxy.upstream.pool import Address, Member

log = logging.getLogger("revproxy")

# Name resolution of backend host names gives up after this long.
RESOLVE_TIMEOUT = 5.0
# How often the bytes held for slow readers are weighed against global.max_buffer_memory.
BUDGET_INTERVAL = 1.0
# When the connections fell to half their recent peak, and by this many at least, the cycles
# they left (transports, TLS state) are collected at once and the heap given back, instead of
# whenever the collector's thresholds say: resident memory returns near idle after a burst.
COLLECT_AFTER = 512

OpenSockets = Callable[[Bind, str], list[socket.socket]]
# A pool's run-time servers changed (the generation, the pool): the master watches their
# health and tells its workers.
MembersHook = Callable[[Generation, PoolRuntime], None]


class Frontend:
    """One process's serving side: the current generation, the listening sockets it holds,
    and the connections it accepted on them (``accept=False``: a master that only holds
    sockets for its workers)."""

    def __init__(
        self, default_pem: tuple[bytes, bytes], *, accept: bool, counters: Counters | None = None
    ) -> None:
        self.default_pem = default_pem
        self.accept = accept
        # Where the limits count: this process's own, or (a worker) the instance's table.
        self.counters: Counters = counters if counters is not None else LocalCounters()
        self.generation: Generation | None = None
        self.bound: dict[str, BoundListener] = {}  # bind address → sockets and accept tasks
        self.acceptor = Acceptor(self._current)
        self.metrics = RequestMetrics()
        self._resolver: asyncio.Task[None] | None = None
        # DNS discovery runs in one process, the master (``discovers``); workers are told.
        self.discovers = False
        self.on_members: MembersHook | None = None
        self._lookup = Lookup()
        self._budget: asyncio.Task[None] | None = None
        # The agent connections this process accepted (tunnel/hub.py); ``hub.worker`` says
        # which serving process this is (workers.py sets it). A serving process checks the
        # tunnel servers through them (``hub.checks``) and reports each check with
        # ``hub.report`` (the master's monitor, or a worker's channel to it).
        self.hub = Hub(lambda: self.generation.config if self.generation is not None else None)
        # Forwarded connections of agents (``[[forward]]``) leave through the egress rules.
        self.hub.egress_dial = TunnelEgress(lambda: self.hub.current())
        self._services: dict[str, ServiceBuilder] = {
            **EGRESS_SERVICES,
            "tunnel": service_builder(self.hub),
        }

    def _current(self) -> Generation:
        assert self.generation is not None
        return self.generation

    def build(self, config: Config, number: int | None = None) -> Generation:
        """Compile ``config`` beside the current generation (raises ConfigError)."""
        # [tunnel.NAME] egress names [egress.*] sections (config/load.py does not hand
        # those to check_tunnels yet).
        problems = tunnel_egress_problems(config.tunnels, config.egress)
        if problems:
            raise ConfigError([ConfigProblem(*p) for p in problems])
        old = self.generation
        gen = build_generation(
            config,
            number=number if number is not None else (old.number + 1 if old else 1),
            default_pem=self.default_pem,
            previous=old,
            access_log=old.access_log if old and _same_log(old.config, config) else None,
            metrics=self.metrics,
            counters=self.counters,
            services=self._services,
            tunnels=self.hub,
        )
        if old is not None:
            self._carry_members(old, gen)
        return gen

    def _carry_members(self, old: Generation, gen: Generation) -> None:
        """Servers DNS found for entries the new configuration still has stay until the next
        lookup says otherwise (a reload while DNS fails empties nothing); those ``ctl add
        server`` added end with the reload."""
        for name, pr in gen.pools.items():
            before = old.pools.get(name)
            if before is None:
                continue
            sources = {str(s) for s in pr.config.servers if s.discovered}
            kept = {k: v for k, v in before.pool.found.items() if k in sources}
            if kept:
                self.set_members(gen, pr, kept, quiet=True)

    def bind_new(self, gen: Generation, open_sockets: OpenSockets) -> dict[str, BoundListener]:
        """Open the addresses ``gen`` names that are not bound yet (ConfigError if one fails;
        then nothing stays open)."""
        wanted: dict[str, str] = {}  # bind address → listener name
        for lst in gen.config.listeners:
            for b in lst.bind:
                wanted[str(b)] = lst.name
        new: dict[str, BoundListener] = {}
        try:
            for addr, name in wanted.items():
                if addr in self.bound:
                    continue
                lst = gen.config.listener(name)
                bind = next(b for b in lst.bind if str(b) == addr)
                try:
                    socks = open_sockets(bind, addr)
                except OSError as exc:
                    raise ConfigError(
                        [
                            ConfigProblem(
                                lst.source,
                                f"listener {name!r} bind {addr}",
                                f"cannot bind: {exc.strerror or exc}",
                            )
                        ]
                    ) from None
                new[addr] = BoundListener(name=name, binds=(bind,), sockets=socks)
        except BaseException:
            for bl in new.values():
                for s in bl.sockets:
                    s.close()
            raise
        gen.bind_owner = wanted
        return new

    def listeners_after(
        self, gen: Generation, new: dict[str, BoundListener]
    ) -> dict[str, list[socket.socket]]:
        """Every listening socket once ``gen`` is in: those kept plus ``new``."""
        out = {a: bl.sockets for a, bl in self.bound.items() if a in gen.bind_owner}
        out.update({a: bl.sockets for a, bl in new.items()})
        return out

    async def swap(self, gen: Generation, new: dict[str, BoundListener]) -> None:
        """Make ``gen`` current: accept on new sockets, close removed ones, retire the old."""
        old = self.generation
        self.generation = gen  # the swap
        set_buffer_size(gen.config.global_.buffer_size)  # for the connections from now on
        for addr, bl in new.items():
            if self.accept:
                bl.tasks = self.acceptor.start(addr, bl.sockets)
            self.bound[addr] = bl
            log.info("listener=%s on %s", bl.name, addr)
        for addr in [a for a in self.bound if a not in gen.bind_owner]:
            bl = self.bound.pop(addr)
            await bl.close()
            log.info("listener=%s closed %s", bl.name, addr)
        _link_egress(old, gen)
        if old is not None:
            old.successor = gen
            old.close()
        self.hub.enforce()  # a tunnel no longer configured loses its agents
        if self.accept:  # a master that only holds sockets for its workers has no agents
            self.hub.follow((pr.config, pr.pool.backends) for pr in gen.pools.values())

    # --- name resolution

    def lookup(self, gen: Generation) -> Lookup:
        """The resolver ``gen`` names (``[global] resolvers``; none: the system's)."""
        named = gen.config.global_.resolvers
        if self._lookup.named != named:
            self._lookup = Lookup(named, RESOLVE_TIMEOUT)
        return self._lookup

    async def discover(self, gen: Generation) -> None:
        """``resolve = "all"`` and ``srv`` servers: ask DNS, and make each address found a
        server of its pool (upstream/discovery.py). A lookup that fails keeps what it had."""
        jobs = [(pr, s) for pr in gen.pools.values() for s in pr.config.servers if s.discovered]
        if not jobs:
            return
        lookup = self.lookup(gen)
        results = await asyncio.gather(
            *(members(s, lookup) for _, s in jobs), return_exceptions=True
        )
        pools: dict[str, tuple[PoolRuntime, dict[str, tuple[Member, ...]]]] = {}
        for (pr, server), result in zip(jobs, results, strict=True):
            found = pools.setdefault(pr.config.name, (pr, dict(pr.pool.found)))[1]
            source = str(server)
            if isinstance(result, DiscoveryError):
                had = len(found.get(source, ()))
                log.warning(
                    "pool=%s server %s cannot be resolved: %s; keeping its %d server(s)",
                    pr.config.name,
                    source,
                    result,
                    had,
                )
                continue
            if isinstance(result, BaseException):
                raise result
            if not result and found.get(source):
                log.warning("pool=%s server %s resolves to no address", pr.config.name, source)
            found[source] = result
        for pr, found in pools.values():
            self.set_members(gen, pr, found)

    def set_members(
        self,
        gen: Generation,
        pr: PoolRuntime,
        found: dict[str, tuple[Member, ...]],
        removed: frozenset[Address] | None = None,
        *,
        quiet: bool = False,
    ) -> bool:
        """Make ``found`` (and ``removed``) the run-time servers of a pool of ``gen``; log
        (unless ``quiet``) and report what changed. False when nothing did."""
        pool = pr.pool
        slow = pr.config.slow_start > 0 and pr.config.balance in SLOW_START_BALANCE
        pool.member_scale = SLOW_START_SCALE if slow else 1
        found = {source: ms for source, ms in found.items() if ms}
        if found == pool.found and (removed is None or removed == pool.removed):
            return False
        added, gone = pool.set_found(found, removed)
        if self.discovers and not quiet:
            for b in added:
                how = "ctl add server" if b.found_by == "ctl" else f"an address of {b.found_by}"
                log.info("pool=%s backend=%s added: %s", pool.name, b.label, how)
            for b in gone:
                rest = f"; {b.active} request(s) in flight finish" if b.active else ""
                log.info("pool=%s backend=%s removed%s", pool.name, b.label, rest)
        # What the pool's responses must not name follows its servers.
        pr.hiding = hiding_for(pr.config, ((b.host, b.port) for b in pool.backends))
        if self.on_members is not None:
            self.on_members(gen, pr)
        return True

    async def resolve(self, gen: Generation) -> None:
        """Discovery (in the master), then the names of the other servers: each such server
        tries its name's addresses in turn."""
        if self.discovers:
            await self.discover(gen)
        loop = asyncio.get_running_loop()
        lookup = self.lookup(gen)
        for pr in gen.pools.values():
            for b in pr.pool.backends:
                if b.tunnel is not None:
                    continue  # its agent dials in
                try:
                    ipaddress.ip_address(b.host)
                    continue
                except ValueError:
                    pass
                if lookup.named:
                    try:
                        found = await lookup.addresses(b.host)
                    except DiscoveryError as exc:
                        found, why = (), str(exc)
                    else:
                        why = "no address"
                    if not found:
                        log.warning(
                            "pool=%s backend=%s cannot resolve: %s", pr.config.name, b.label, why
                        )
                        continue
                    addrs = tuple((address, b.port) for address in found)
                    if addrs != b.addresses:
                        b.addresses = addrs
                    continue
                try:
                    async with asyncio.timeout(RESOLVE_TIMEOUT):
                        infos = await loop.getaddrinfo(b.host, b.port, type=socket.SOCK_STREAM)
                except (OSError, TimeoutError) as failure:
                    log.warning(
                        "pool=%s backend=%s cannot resolve: %s", pr.config.name, b.label, failure
                    )
                    continue
                addrs = tuple(dict.fromkeys((str(i[4][0]), int(i[4][1])) for i in infos))
                if addrs != b.addresses:
                    b.addresses = addrs

    def start_background(self) -> None:
        """The resolver of backend names, and the budget for slow readers."""
        loop = asyncio.get_running_loop()
        if self._resolver is None:
            self._resolver = loop.create_task(self._resolve_forever())
        if self._budget is None:
            self._budget = loop.create_task(self._keep_budget())

    async def _keep_budget(self) -> None:
        """``global.max_buffer_memory``: past it, the slowest readers are cut (conn_io.py)."""
        shortage = RateLimitedLog()
        peak = 0
        while True:
            await asyncio.sleep(BUDGET_INTERVAL)
            gen = self.generation
            if gen is None:
                return
            cap = gen.config.global_.max_buffer_memory
            left, cut = cut_slowest(cap)
            live = live_connections()
            if peak - live >= COLLECT_AFTER and live <= peak // 2:
                gc.collect()
                peak = live
            peak = max(peak, live)
            give_back()
            if cut:
                self.metrics.slow_readers_cut.inc((), cut)
                shortage.warn(
                    log,
                    "max_buffer_memory (%d bytes) reached: cut %d slowest connections; %d left",
                    cap,
                    cut,
                    left,
                )

    async def _resolve_forever(self) -> None:
        while True:
            gen = self.generation
            if gen is None:
                return
            await self.resolve(gen)
            interval = min((p.config.resolve_interval for p in gen.pools.values()), default=30.0)
            await asyncio.sleep(max(interval, 1.0))

    # --- stopping

    def stop_accepting(self) -> None:
        for bl in self.bound.values():
            bl.stop_accepting()
        for task in (self._resolver, self._budget):
            if task is not None:
                task.cancel()
        self._resolver = self._budget = None

    async def shutdown(self, timeout: float) -> None:
        """Stop accepting, let connections finish for up to ``timeout``, close everything."""
        self.stop_accepting()
        self.hub.close()  # agents reconnect to another instance at once
        await self.hub.wait_closed()
        pending = set(self.acceptor.connections)
        if pending:
            log.info("stopping: waiting for %d connection(s)", len(pending))
            _, still = await asyncio.wait(pending, timeout=timeout)
            for t in still:
                t.cancel()
            if still:
                log.warning("stopping: %d connection(s) cut at shutdown_timeout", len(still))
                await asyncio.wait(still, timeout=1.0)
        for bl in self.bound.values():
            await bl.close()
        self.bound.clear()
        if self.generation is not None:
            self.generation.close()
            self.generation.access_log.close()


class TunnelEgress:
    """``Hub.egress_dial``: an agent's forwarded connection judged and dialled by the egress
    section it names, the way a CONNECT through a forward listener is (``egress/dial.py``:
    the destination by name and port with ``connect_ports``, then each resolved address
    against ``deny``, from the section's ``source``)."""

    def __init__(self, current: Callable[[], Config | None]) -> None:
        self.current = current
        # One Outbound per section, kept while the section is the same object (its
        # round-robin turn of sources carries on); a reload that changes it makes a new one.
        self._ways: dict[str, tuple[Egress, Outbound]] = {}

    def way(self, name: str) -> Outbound | None:
        config = self.current()
        section = next((e for e in config.egress if e.name == name), None) if config else None
        if section is None:
            self._ways.pop(name, None)
            return None
        kept = self._ways.get(name)
        if kept is None or kept[0] is not section:
            kept = (section, Outbound(section))
            self._ways[name] = kept
        return kept[1]

    async def __call__(self, egress: str, host: str, port: int) -> EgressOpened:
        way = self.way(egress)
        if way is None:
            return EgressOpened(None, reason="no-egress", detail=f"no [egress.{egress}] here")
        idle = way.egress.timeouts.idle
        reason = way.policy.check_request(host, port, tunnel=True)
        if reason:
            return EgressOpened(None, reason=reason, idle=idle)
        result = await way.open(host, port)
        if isinstance(result, Refused):
            return EgressOpened(None, result.resolved, result.reason, result.detail, idle)
        return EgressOpened(result.sock, result.resolved, idle=idle)


def _link_egress(old: Generation | None, gen: Generation) -> None:
    """The forward and socks5 services of ``gen`` learn their listener's allow/deny (as the
    edge applies it) and the access log; those of ``old`` are retired toward ``gen``'s service
    of the same listener and mode (none: the listener is gone), so that a kept-alive forward
    connection judges its next request by the new rules (egress/forward.py)."""
    for lrt in gen.listeners.values():
        if isinstance(lrt.service, EgressService):
            lrt.service.installed(lrt.access, gen.access_log)
    if old is None:
        return
    for name, lrt in old.listeners.items():
        service = lrt.service
        if not isinstance(service, EgressService):
            continue
        now = gen.listeners.get(name)
        successor = now.service if now is not None and now.config.mode == lrt.config.mode else None
        service.retire(successor if isinstance(successor, EgressService) else None)


def _same_log(a: Config, b: Config) -> bool:
    x, y = a.global_, b.global_
    return (x.access_log, x.access_log_format, x.log_time, x.facility) == (
        y.access_log,
        y.access_log_format,
        y.log_time,
        y.facility,
    )
