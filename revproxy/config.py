"""Configuration as frozen, typed data.

Rule of this room: a field name is the TOML key it comes from (``global`` is the one exception,
spelt ``global_`` because it is a Python keyword). Objects here are immutable and hold no live
state; ``config_load.py`` builds them and validates everything, ``generation.py`` turns them
into live objects. Durations are seconds (``float``); sizes are bytes (``int``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

BalanceName = Literal["roundrobin", "leastconn", "source", "uri", "random"]
BALANCE_NAMES: tuple[BalanceName, ...] = ("roundrobin", "leastconn", "source", "uri", "random")


@dataclass(frozen=True, slots=True, kw_only=True)
class Global:
    workers: int | Literal["auto"] = 1
    access_log: str = "stdout"  # "stdout" | "off" | a file path
    access_log_format: Literal["text", "json"] = "text"
    http1_parser: Literal["auto", "httptools", "h11"] = "auto"
    shutdown_timeout: float = 30.0
    # Time a client has to send a whole request head before it gets 408 (slowloris defence).
    header_timeout: float = 10.0
    # Time an idle client keep-alive connection is kept open between requests.
    keepalive_timeout: float = 60.0
    # Largest request or response head accepted (request over it: 431).
    max_header_size: int = 16384
    # Largest request body accepted (0 = no limit; bodies are streamed, never buffered).
    max_body_size: int = 0
    # Where generated state lives (the generated default certificate of the demo, ...).
    state_dir: Path | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Bind:
    host: str  # "" = every address
    port: int

    def __str__(self) -> str:
        if not self.host:
            return f":{self.port}"
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyProtocolIn:
    mode: Literal["off", "optional", "required"] = "off"
    trusted: tuple[Network, ...] = ()
    timeout: float = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class CertPair:
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerTLS:
    cert_dir: Path | None = None
    certs: tuple[CertPair, ...] = ()
    unknown_sni: Literal["generated", "reject"] = "generated"
    alpn: tuple[str, ...] = ("http/1.1",)


@dataclass(frozen=True, slots=True, kw_only=True)
class Listener:
    name: str
    bind: tuple[Bind, ...]
    mode: Literal["http", "tcp"] = "http"
    tls: ListenerTLS | None = None
    redirect_https: bool = False
    # Port named in redirects to HTTPS; default: the first port of the first TLS listener.
    redirect_port: int | None = None
    trusted_proxies: tuple[Network, ...] = ()
    proxy_protocol: ProxyProtocolIn = field(default_factory=ProxyProtocolIn)
    # Add an RFC 7239 Forwarded header toward origins (X-Forwarded-* are always set).
    forwarded: bool = False
    pool: str | None = None  # mode = "tcp" only
    source: str = ""  # file it was read from


@dataclass(frozen=True, slots=True, kw_only=True)
class Respond:
    status: int = 200
    body: str = ""
    content_type: str = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    host: tuple[str, ...] = ()  # lower-case names, "*.example.com" wildcards; empty = any host
    path: str = "/"
    pool: str | None = None
    redirect: str | None = None
    redirect_status: int = 308
    respond: Respond | None = None
    listeners: tuple[str, ...] = ()  # empty = every http listener
    index: int = 0  # position in the merged config, for messages and stable ordering
    source: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Server:
    address: str  # host name or IP literal, no brackets
    port: int
    weight: int = 1
    backup: bool = False
    name: str | None = None
    max_conns: int | None = None

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    connect: float = 5.0
    response: float = 60.0
    idle: float = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Pool:
    name: str
    servers: tuple[Server, ...]
    balance: BalanceName = "roundrobin"
    timeouts: Timeouts = field(default_factory=Timeouts)
    send_proxy: Literal["v1", "v2"] | None = None
    # Response headers removed before the client sees them (lower-case), on top of the
    # built-in origin identity headers.
    hide_headers: tuple[str, ...] = ()
    server_header: str = "remove"  # "keep" | "remove" | a replacement value
    # How often host names in `servers` are resolved again.
    resolve_interval: float = 30.0
    # Idle keep-alive connections kept per server.
    keepalive: int = 32
    source: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    global_: Global = field(default_factory=Global)
    listeners: tuple[Listener, ...] = ()
    routes: tuple[Route, ...] = ()
    pools: tuple[Pool, ...] = ()
    files: tuple[Path, ...] = ()

    def pool(self, name: str) -> Pool:
        for p in self.pools:
            if p.name == name:
                return p
        raise KeyError(name)

    def listener(self, name: str) -> Listener:
        for lst in self.listeners:
            if lst.name == name:
                return lst
        raise KeyError(name)
