"""A generation: one compiled, immutable config with the live objects it needs.

Rule of this room: a generation is built completely beside the live one, then swapped in by
replacing one reference; nothing live is mutated by a reload. Connections keep the generation
they started with. Health state is carried over for backends whose address did not change.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from pathlib import Path

from revproxy.accesslog import AccessLog
from revproxy.config import Config, Listener
from revproxy.config import Pool as PoolConfig
from revproxy.dial import Dialer
from revproxy.errors import CertificateError, ConfigError, ConfigProblem
from revproxy.pool import Backend, Pool
from revproxy.proto.forwarding import HidingPolicy
from revproxy.routing import Router
from revproxy.tls import CertStore, LoadedCert, ServerTLS, load_cert_pair, scan_cert_dir

log = logging.getLogger("revproxy.generation")


@dataclass(eq=False)
class PoolRuntime:
    config: PoolConfig
    pool: Pool
    dialer: Dialer
    hiding: HidingPolicy


@dataclass(eq=False)
class ListenerRuntime:
    config: Listener
    router: Router
    tls: ServerTLS | None
    redirect_port: int | None


@dataclass(eq=False)
class Generation:
    number: int
    config: Config
    listeners: dict[str, ListenerRuntime]
    pools: dict[str, PoolRuntime]
    access_log: AccessLog
    # Bind address (as written in the config) → name of the listener that owns it.
    bind_owner: dict[str, str] = field(default_factory=dict)
    retired: bool = field(default=False)

    def close(self) -> None:
        self.retired = True
        for p in self.pools.values():
            p.dialer.close_idle()


def _hiding(cfg: PoolConfig) -> HidingPolicy:
    authorities: set[bytes] = set()
    hosts: set[bytes] = set()
    for s in cfg.servers:
        host = s.address.lower()
        hosts.add(host.encode())
        shown = f"[{host}]" if ":" in host else host
        authorities.add(f"{shown}:{s.port}".encode())
        authorities.add(shown.encode())
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
        b = Backend(
            pool=cfg.name,
            host=s.address,
            port=s.port,
            weight=s.weight,
            backup=s.backup,
            max_conns=s.max_conns,
            name=s.name,
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
            if prev.addresses:
                b.addresses = prev.addresses
        out.append(b)
    return out


def listener_certs(lst: Listener) -> tuple[list[LoadedCert], list[ConfigProblem]]:
    """Every certificate a TLS listener serves, and what is wrong with the rest."""
    certs: list[LoadedCert] = []
    problems: list[ConfigProblem] = []
    if lst.tls is None:
        return certs, problems
    for i, pair in enumerate(lst.tls.certs):
        try:
            certs.append(load_cert_pair(pair.cert, pair.key))
        except CertificateError as exc:
            problems.append(
                ConfigProblem(lst.source, f"listener.{lst.name}.tls.certs[{i}]", str(exc))
            )
    if lst.tls.cert_dir is not None:
        found, errors = scan_cert_dir(Path(lst.tls.cert_dir))
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
) -> Generation:
    """Compile ``config`` into live objects; raises ConfigError and leaves nothing behind."""
    problems: list[ConfigProblem] = []
    pools: dict[str, PoolRuntime] = {}
    for pc in config.pools:
        prev_pool = previous.pools[pc.name].pool if previous and pc.name in previous.pools else None
        pool = Pool(pc.name, _backends(pc, prev_pool), pc.balance)
        dialer = Dialer(
            pool,
            connect_timeout=pc.timeouts.connect,
            idle_timeout=pc.timeouts.idle,
            keepalive=pc.keepalive,
        )
        pools[pc.name] = PoolRuntime(config=pc, pool=pool, dialer=dialer, hiding=_hiding(pc))

    first_tls_port = next(
        (b.port for lst in config.listeners if lst.tls is not None for b in lst.bind), None
    )
    listeners: dict[str, ListenerRuntime] = {}
    for lst in config.listeners:
        routes = [r for r in config.routes if not r.listeners or lst.name in r.listeners]
        server_tls = None
        if lst.tls is not None:
            certs, cert_problems = listener_certs(lst)
            problems.extend(cert_problems)
            store = CertStore(certs, alpn=lst.tls.alpn)
            server_tls = ServerTLS(
                store, unknown_sni=lst.tls.unknown_sni, alpn=lst.tls.alpn, default_pem=default_pem
            )
        listeners[lst.name] = ListenerRuntime(
            config=lst,
            router=Router(routes),
            tls=server_tls,
            redirect_port=lst.redirect_port or first_tls_port,
        )
    if problems:
        raise ConfigError(problems)
    if access_log is None:
        access_log = AccessLog(config.global_.access_log, config.global_.access_log_format)
    return Generation(
        number=number, config=config, listeners=listeners, pools=pools, access_log=access_log
    )
