"""A generation: one compiled, immutable config with the live objects it needs.

Rule of this room: a generation is built completely beside the live one, then swapped in by
replacing one reference; nothing live is mutated by a reload. Connections keep the generation
they started with. Health state is carried over for backends whose address did not change.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from revproxy.certs.files import LoadedCert
from revproxy.certs.probe import read_certs
from revproxy.certs.store import CertStore, client_auth_of
from revproxy.config.listener import answers_acme
from revproxy.config.model import Config, Listener, Route
from revproxy.config.model import Pool as PoolConfig
from revproxy.content.cache import Cache
from revproxy.edge.rules import ListenerRules, RouteRules, compile_route_rules, listener_rules
from revproxy.edge.tls import ServerTLS
from revproxy.errors import CertificateError, ConfigError, ConfigProblem
from revproxy.ops.accesslog import AccessLog
from revproxy.ops.metrics import RequestMetrics
from revproxy.policy.access import AccessList, compile_access
from revproxy.policy.auth import Authenticator, nonce_key
from revproxy.policy.counters import Counters, LocalCounters
from revproxy.policy.limits import ConnGate, LimitSet, compile_limits
from revproxy.policy.redis_store import RedisCounters
from revproxy.proto.forwarding import HidingPolicy
from revproxy.proto.http1.api import H1ServerAPI, client_class, server_class
from revproxy.proto.http1.exact import H1Server
from revproxy.upstream.backend import Backend
from revproxy.upstream.dialer import Dialer
from revproxy.upstream.pool import Pool
from revproxy.upstream.routing import Router
from revproxy.upstream.tunnel_paths import TunnelPaths

log = logging.getLogger("revproxy.generation")


class Signal:
    """A one-shot notice to the connections that subscribed: "wind down" (a generation was
    retired, a listener stopped accepting). HTTP/2 connections answer it with GOAWAY."""

    __slots__ = ("_next", "_subscribers", "fired")

    def __init__(self) -> None:
        self.fired = False
        self._subscribers: dict[int, Callable[[], None]] = {}
        self._next = 0

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` when fired (at once if it was); returns the unsubscribe."""
        if self.fired:
            callback()
            return _nothing
        key = self._next
        self._next += 1
        self._subscribers[key] = callback

        def unsubscribe() -> None:
            self._subscribers.pop(key, None)

        return unsubscribe

    def fire(self) -> None:
        if self.fired:
            return
        self.fired = True
        callbacks = list(self._subscribers.values())
        self._subscribers.clear()
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("a connection failed to wind down")


def _nothing() -> None:
    return None


@dataclass(eq=False)
class PoolRuntime:
    config: PoolConfig
    pool: Pool
    dialer: Dialer
    hiding: HidingPolicy


class ListenerService(Protocol):
    """How a listener of a mode served beside the edge is served (``mode = "forward"`` and
    ``"socks5"``: egress/; ``"tunnel"``: tunnel/). The edge accepts, reads the PROXY header,
    applies the listener's allow/deny, ``limits`` and ``conn_limit``, then hands the socket
    over; the runtime, which may import both parts, plugs the builders in
    (``build_generation(services=...)``)."""

    async def serve(
        self,
        csock: socket.socket,
        *,
        client: tuple[str, int],
        peer: str,
        authority: str,
        vpce: str,
        access_log: AccessLog,
        metrics: RequestMetrics,
    ) -> None: ...


# (listener, config, the previous generation's service of that listener or None, the Digest
# nonce key) → the service. A builder raises ConfigError for what it cannot compile.
ServiceBuilder = Callable[[Listener, Config, "ListenerService | None", bytes], ListenerService]


@dataclass(eq=False)
class ListenerRuntime:
    config: Listener
    router: Router
    tls: ServerTLS | None
    redirect_port: int | None
    # TLS passthrough (edge/tcp.py): (SNI pattern, pool) with exact names before wildcards,
    # longer wildcards first. Empty: the listener never peeks at a ClientHello.
    passthrough: tuple[tuple[str, str], ...] = ()
    # Answers ACME HTTP-01 challenges (acme.py) before any redirect or route.
    acme: bool = False
    # allow/deny of the listener (policy/access.py); None: everyone comes in.
    access: AccessList | None = None
    # limits of the listener (policy/limits.py): per request (HTTP) or new connection (TCP).
    limits: LimitSet | None = None
    # conn_limit: concurrent connections / HTTP/2 streams per client.
    conn_gate: ConnGate | None = None
    # mode = "forward" / "socks5": what serves its connections (None: no builder was given).
    service: ListenerService | None = None
    # hsts and error_pages (edge/rules.py); None: the listener has neither.
    rules: ListenerRules | None = None


@dataclass(eq=False)
class Generation:
    number: int
    config: Config
    listeners: dict[str, ListenerRuntime]
    pools: dict[str, PoolRuntime]
    access_log: AccessLog
    # Request counters; the same object is handed from generation to generation.
    metrics: RequestMetrics = field(default_factory=RequestMetrics)
    # allow/deny of the routes that have them, by route index (policy/access.py).
    route_access: dict[int, AccessList] = field(default_factory=dict)
    # auth of the routes that have it, by route index (policy/auth.py).
    route_auth: dict[int, Authenticator] = field(default_factory=dict)
    # limits of the routes that have them, by route index (policy/limits.py): those counted
    # before auth, and those per user (``key = "user"``), counted once the user is known.
    route_limits: dict[int, LimitSet] = field(default_factory=dict)
    route_user_limits: dict[int, LimitSet] = field(default_factory=dict)
    # HTTP rules of the routes that have any, by route index (edge/rules.py).
    route_rules: dict[int, RouteRules] = field(default_factory=dict)
    # The process's response cache (content/cache.py) when a route caches; handed on by a
    # reload that keeps the [cache] settings, so stored responses survive it.
    cache: Cache | None = None
    # Where limits kept by the instance count (policy/counters.py): the process's, handed
    # from generation to generation, shared by the workers of an instance.
    counters: Counters = field(default_factory=LocalCounters)
    # Redis clients of limits with a store, by URL (kept across reloads while named).
    limit_stores: dict[str, RedisCounters] = field(default_factory=dict)
    # Bind address (as written in the config) → name of the listener that owns it.
    bind_owner: dict[str, str] = field(default_factory=dict)
    retired: bool = field(default=False)
    # The generation that replaced this one: keep-alive connections move to it between
    # requests, so that routes, drains and health apply to them too (edge/h1_connection.py).
    successor: Generation | None = field(default=None)
    # Fired on retirement: HTTP/2 connections send GOAWAY and finish their streams
    # (edge/h2_connection.py), HTTP/2 origin connections close once idle (upstream/h2_origins.py).
    retiring: Signal = field(default_factory=Signal)
    # The HTTP/1.1 implementation chosen by global.http1_parser (llhttp or h11).
    h1_server: type[H1ServerAPI] = field(default=H1Server)

    def close(self) -> None:
        self.retired = True
        self.retiring.fire()
        for p in self.pools.values():
            p.dialer.close_idle()
        successor = self.successor
        kept = successor.limit_stores if successor is not None else {}
        for url, store in self.limit_stores.items():
            if kept.get(url) is not store:
                _close_later(store)


# A Redis client no longer named is closed this long after its generation retired (its
# requests in flight may still count with it).
STORE_CLOSE_DELAY = 60.0


def _close_later(store: RedisCounters) -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return  # no loop: nothing was ever connected

    def close() -> None:
        task = loop.create_task(store.close())
        _closing.add(task)
        task.add_done_callback(_closing.discard)

    loop.call_later(STORE_CLOSE_DELAY, close)


_closing: set[asyncio.Task[None]] = set()


def hiding_for(cfg: PoolConfig, found: Iterable[tuple[str, int]] = ()) -> HidingPolicy:
    """What a pool's responses must not name: its configured servers, and ``found`` — the
    servers it has at run time (DNS discovery, ``ctl add server``), so a ``Location`` naming
    a discovered address is rewritten like a configured one."""
    authorities: set[bytes] = set()
    hosts: set[bytes] = set()
    servers = [(s.address, s.port) for s in cfg.servers if s.address]
    for address, port in [*servers, *found]:
        host = address.lower()
        hosts.add(host.encode())
        shown = f"[{host}]" if ":" in host else host
        authorities.add(f"{shown}:{port}".encode())
        authorities.add(shown.encode())
    if cfg.host_header:
        # The name the origin is sent (pool host_header) is the origin's: hidden like them.
        named = cfg.host_header
        authorities.add(named.encode())
        if named.startswith("["):
            hosts.add(named[1 : named.index("]")].encode())
        else:
            hosts.add(named.split(":", 1)[0].encode())
    return HidingPolicy(
        origin_authorities=frozenset(authorities),
        origin_hosts=frozenset(hosts),
        hide=frozenset(h.encode() for h in cfg.hide_headers),
        server_header=cfg.server_header,
    )


def _backends(cfg: PoolConfig, previous: Pool | None) -> list[Backend]:
    old = {}
    if previous is not None:
        old = {(b.host, b.port): b for b in previous.backends}
    out = []
    for s in cfg.servers:
        if s.discovered:
            continue  # its servers are found at run time (upstream/discovery.py)
        b = Backend(
            pool=cfg.name,
            host=s.address,
            port=s.port,
            weight=s.weight,
            backup=s.backup,
            max_conns=s.max_conns,
            name=s.name,
            tunnel=s.tunnel,
        )
        try:
            ipaddress.ip_address(s.address)
            b.addresses = ((s.address, s.port),)
        except ValueError:
            pass
        prev = old.get((s.address, s.port))
        if prev is not None:
            b.state = prev.state
            b.failures = prev.failures
            b.total = prev.total
            b.weight_factor = prev.weight_factor
            if prev.addresses:
                b.addresses = prev.addresses
        if cfg.slow_start > 0 and cfg.balance in SLOW_START_BALANCE:
            b.weight_scale = SLOW_START_SCALE
        out.append(b)
    return out


# Slow start ramps weights in these policies; the hashing ones keep their keys where they are.
SLOW_START_BALANCE = ("roundrobin", "leastconn", "random")
# Weights in slow-start pools are scaled by this so that a weight-1 backend ramps in 1% steps.
SLOW_START_SCALE = 100


def passthrough_table(lst: Listener, routes: Sequence[Route]) -> tuple[tuple[str, str], ...]:
    """The passthrough routes of a TLS listener as (SNI pattern, pool), in matching order.

    An exact name beats a wildcard; among wildcards the longest suffix wins; ties keep the
    configuration order, and a name listed twice keeps its first route.
    """
    if lst.tls is None:
        return ()
    exact: list[tuple[str, str]] = []
    wild: list[tuple[str, str]] = []
    seen: set[str] = set()
    for r in routes:
        if not r.passthrough or r.pool is None:
            continue
        for name in (n.lower().rstrip(".") for n in r.sni):
            if name in seen:
                continue
            seen.add(name)
            (wild if name.startswith("*.") else exact).append((name, r.pool))
    wild.sort(key=lambda entry: -len(entry[0]))
    return (*exact, *wild)


def _cert_sources(listeners: Iterable[Listener]) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """The certificate pairs and cert_dirs of the TLS listeners among ``listeners``."""
    pairs: list[tuple[Path, Path]] = []
    cert_dirs: list[Path] = []
    for lst in listeners:
        if lst.tls is not None:
            pairs.extend((pair.cert, pair.key) for pair in lst.tls.certs)
            if lst.tls.cert_dir is not None:
                cert_dirs.append(Path(lst.tls.cert_dir))
    return pairs, cert_dirs


def read_listener_certs(config: Config) -> None:
    """Read every TLS listener's certificates now (one child process for what changed), so
    that ``build_generation`` finds them read: for a caller that can do it off the event loop
    (a worker's reload, in a thread)."""
    read_certs(*_cert_sources(config.listeners))


def listener_certs(lst: Listener) -> tuple[list[LoadedCert], list[ConfigProblem]]:
    """Every certificate a TLS listener serves, and what is wrong with the rest."""
    certs: list[LoadedCert] = []
    problems: list[ConfigProblem] = []
    if lst.tls is None:
        return certs, problems
    # Read by a child process (certs/probe.py): this process does not load cryptography.
    reading = read_certs(*_cert_sources([lst]))
    for i, pair in enumerate(lst.tls.certs):
        try:
            certs.append(reading.pair(pair.cert, pair.key))
        except CertificateError as exc:
            problems.append(
                ConfigProblem(lst.source, f"listener.{lst.name}.tls.certs[{i}]", str(exc))
            )
    if lst.tls.cert_dir is not None:
        try:
            found, errors = reading.cert_dir(Path(lst.tls.cert_dir))
        except CertificateError as unread:  # the child failed: not a folder's fault
            problems.append(
                ConfigProblem(lst.source, f"listener.{lst.name}.tls.cert_dir", str(unread))
            )
            return certs, problems
        certs.extend(found)
        # A broken folder in cert_dir is logged, not fatal: certbot may be mid-issuance.
        for e in errors:
            log.error("listener=%s cert_dir: %s", lst.name, e)
    return certs, problems


def build_generation(
    config: Config,
    *,
    number: int,
    default_pem: tuple[bytes, bytes],
    previous: Generation | None = None,
    access_log: AccessLog | None = None,
    metrics: RequestMetrics | None = None,
    counters: Counters | None = None,
    services: Mapping[str, ServiceBuilder] | None = None,
    tunnels: TunnelPaths | None = None,
) -> Generation:
    """Compile ``config`` into live objects; raises ConfigError and leaves nothing behind."""
    problems: list[ConfigProblem] = []
    pools: dict[str, PoolRuntime] = {}
    # global.http1_parser: resolved once here, not per connection.
    h1_server = server_class(config.global_.http1_parser)
    h1_client = client_class(config.global_.http1_parser)
    for pc in config.pools:
        prev_pool = previous.pools[pc.name].pool if previous and pc.name in previous.pools else None
        pool = Pool(pc.name, _backends(pc, prev_pool), pc.balance)
        try:
            dialer = Dialer(
                pool,
                connect_timeout=pc.timeouts.connect,
                idle_timeout=pc.timeouts.idle,
                keepalive=pc.keepalive,
                protocol=pc.protocol,
                tls=pc.tls,
                h2=config.global_.h2,
                max_header_size=config.global_.max_header_size,
                h1_client=h1_client,
                tunnels=tunnels,
                source=pc.source_addresses,
            )
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            key = "cert" if isinstance(exc, ValueError) else "ca"  # origin_tls_context's way
            problems.append(ConfigProblem(pc.source, f"pool.{pc.name}.tls.{key}", str(exc)))
            continue
        pools[pc.name] = PoolRuntime(config=pc, pool=pool, dialer=dialer, hiding=hiding_for(pc))

    first_tls_port = next(
        (
            b.port
            for lst in config.listeners
            if lst.mode == "http" and lst.tls is not None
            for b in lst.bind
        ),
        None,
    )
    # Counters continue across reloads: the previous generation's objects are handed on.
    metrics = metrics or (previous.metrics if previous is not None else RequestMetrics())
    if counters is None:
        counters = previous.counters if previous is not None else LocalCounters()
    stores = _limit_stores(config, previous)
    v6_prefix = config.global_.client_ipv6_prefix
    by_name = {lim.name: lim for lim in config.limits}

    def limit_set(names: Sequence[str]) -> LimitSet | None:
        return compile_limits(names, by_name, stores, metrics, v6_prefix)

    listeners: dict[str, ListenerRuntime] = {}
    digest_key = nonce_key(default_pem[1])
    # Every listener's certificates read at once (one child process, none when the config
    # check just read the same files); listener_certs below finds them read.
    read_certs(*_cert_sources(config.listeners))
    for lst in config.listeners:
        routes = [r for r in config.routes if not r.listeners or lst.name in r.listeners]
        server_tls = None
        if lst.tls is not None:
            certs, cert_problems = listener_certs(lst)
            problems.extend(cert_problems)
            try:
                store = CertStore(certs, alpn=lst.tls.alpn, client_auth=client_auth_of(lst.tls))
            except CertificateError as err:
                problems.append(ConfigProblem(lst.source, f"listener.{lst.name}.tls", str(err)))
                continue
            server_tls = ServerTLS(
                store, unknown_sni=lst.tls.unknown_sni, alpn=lst.tls.alpn, default_pem=default_pem
            )
        listeners[lst.name] = ListenerRuntime(
            config=lst,
            router=Router([r for r in routes if not r.passthrough]),
            tls=server_tls,
            redirect_port=lst.redirect_port or first_tls_port,
            passthrough=passthrough_table(lst, routes),
            acme=answers_acme(lst),
            access=compile_access(lst.access),
            limits=limit_set(lst.limits),
            conn_gate=_conn_gate(lst, v6_prefix),
            rules=listener_rules(lst),
        )
        builder = (services or {}).get("tunnel" if lst.tunnel else lst.mode)
        if builder is not None:
            prev_lrt = previous.listeners.get(lst.name) if previous is not None else None
            prev_service = prev_lrt.service if prev_lrt is not None else None
            try:
                listeners[lst.name].service = builder(lst, config, prev_service, digest_key)
            except ConfigError as config_error:
                problems.extend(config_error.problems)
    if problems:
        raise ConfigError(problems)
    if access_log is None:
        g = config.global_
        access_log = AccessLog(
            g.access_log, g.access_log_format, log_time=g.log_time, facility=g.facility
        )
    return Generation(
        number=number,
        config=config,
        listeners=listeners,
        pools=pools,
        access_log=access_log,
        h1_server=h1_server,
        route_access={
            r.index: acl for r in config.routes if (acl := compile_access(r.access)) is not None
        },
        route_auth=_authenticators(config, digest_key, previous),
        route_limits={
            r.index: ls
            for r in config.routes
            if (ls := limit_set([n for n in r.limits if by_name[n].key != "user"])) is not None
        },
        route_user_limits={
            r.index: ls
            for r in config.routes
            if (ls := limit_set([n for n in r.limits if by_name[n].key == "user"])) is not None
        },
        route_rules=compile_route_rules(config.routes),
        cache=_cache(config, previous),
        metrics=metrics,
        counters=counters,
        limit_stores=stores,
    )


def _cache(config: Config, previous: Generation | None) -> Cache | None:
    if not any(r.cache is not None for r in config.routes):
        return None
    settings = config.cache
    old = previous.cache if previous is not None else None
    if old is not None and (old.size, old.max_object) == (settings.size, settings.max_object):
        return old
    return Cache(settings.size, settings.max_object)


def _limit_stores(config: Config, previous: Generation | None) -> dict[str, RedisCounters]:
    """The Redis clients the previous generation has for stores still named (a store no
    longer named is closed when that generation retires)."""
    kept = previous.limit_stores if previous is not None else {}
    named = {lim.store for lim in config.limits if lim.store is not None}
    return {url: client for url, client in kept.items() if url in named}


def _conn_gate(lst: Listener, v6_prefix: int) -> ConnGate | None:
    cl = lst.conn_limit
    if cl is None:
        return None
    return ConnGate(lst.name, cl.per_client, cl.streams_per_client, v6_prefix)


def _authenticators(
    config: Config, key: bytes, previous: Generation | None
) -> dict[int, Authenticator]:
    """One per route with ``auth``. A route whose auth and users did not change keeps its
    authenticator across a reload, with the passwords it has verified and the nonce counts."""
    users = {u.name: u for u in config.users}
    kept = previous.route_auth if previous is not None else {}
    out: dict[int, Authenticator] = {}
    for r in config.routes:
        if r.auth is None or r.auth.users not in users:
            continue
        table = users[r.auth.users]
        old = kept.get(r.index)
        if old is not None and old.auth == r.auth and old.users == table:
            out[r.index] = old
        else:
            out[r.index] = Authenticator(r.auth, table, key)
    return out
