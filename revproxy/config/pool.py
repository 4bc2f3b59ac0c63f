"""``[pool.NAME]`` tables → ``Pool``: servers, timeouts, health checks, TLS to origins (with
a client certificate for origins that ask for one).

Rule of this room: one pool table is judged on its own — every key read, every problem
recorded under ``pool.NAME.…`` with what to write instead. Whether anything uses the pool, or
names one that does not exist, needs the whole config and is ``config/load.py``'s.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

from revproxy.config.model import (
    BALANCE_NAMES,
    Health,
    Passive,
    Pool,
    PoolTLS,
    Server,
    Timeouts,
)
from revproxy.config.reader import MISSING, Entry, ReadContext, TableReader
from revproxy.config.tunnel import parse_tunnel_path
from revproxy.config.values import (
    as_str,
    describe,
    format_duration,
    header_value,
    parse_check_path,
    parse_expect,
    parse_host_name,
    parse_server,
    parse_sni_name,
)
from revproxy.proto.host import valid_authority

__all__ = ["add_servers", "read_pool"]

# The TOML keys of each table: the field names of config/model.py, minus what the loader fills in
# itself (a pool's ``name`` and ``source``, a server's ``port``).
_POOL_KEYS = (
    "servers", "balance", "timeouts", "send_proxy", "hide_headers", "server_header",
    "resolve_interval", "keepalive", "health", "passive", "slow_start", "protocol", "tls",
    "host_header", "source",
)  # fmt: skip
_SERVER_KEYS = ("address", "weight", "backup", "name", "max_conns", "tunnel", "resolve", "srv")
_TIMEOUT_KEYS = ("connect", "response", "idle", "tunnel")
_HEALTH_KEYS = ("path", "interval", "timeout", "rise", "fall", "expect", "tcp", "host")
_PASSIVE_KEYS = ("failures", "cooldown")
_POOL_TLS_KEYS = ("sni", "verify", "ca", "cert", "key")

_SEND_PROXY: tuple[Literal["v1", "v2"], ...] = ("v1", "v2")
_PROTOCOLS: tuple[Literal["http1", "h2", "h2c"], ...] = ("http1", "h2", "h2c")
_MAX_WEIGHT = 256
_RESOLVE: tuple[Literal["one", "all"], ...] = ("one", "all")

# Defaults come from the dataclasses themselves, so config/model.py stays the one place for them.
_POOL = Pool(name="", servers=())
_SERVER = Server(address="", port=0)
_TIMEOUTS = Timeouts()
_HEALTH = Health()
_PASSIVE = Passive()
_POOL_TLS = PoolTLS()

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 field-name


def _read_server(key: str, item: object, file: str, ctx: ReadContext) -> Server | None:
    if isinstance(item, str):
        try:
            address, port = parse_server(item)
        except ValueError as exc:
            ctx.add(file, key, str(exc))
            return None
        return Server(address=address, port=port)
    if not isinstance(item, dict):
        reason = f'expected "HOST:PORT" or a table with address, got {describe(item)}'
        ctx.add(file, key, reason)
        return None
    t = TableReader(item, key, file, ctx, _SERVER_KEYS)
    tunnel = t.parsed("tunnel", lambda v: parse_tunnel_path(as_str(v)), None)
    if t.has("tunnel") and t.has("address"):
        t.problem("address", "a tunnel server has no address: its agent dials in")
    srv = _read_discovery(t)
    required = "" if t.has("tunnel") or t.has("srv") else 'write e.g. address = "10.0.0.10:8080"'
    raw = t.string("address", None, required=required)
    weight = t.integer("weight", _SERVER.weight, 1, _MAX_WEIGHT)
    backup = t.boolean("backup", _SERVER.backup)
    name = t.string("name", _SERVER.name)
    max_conns = t.integer("max_conns", _SERVER.max_conns, 1)
    if t.has("tunnel"):
        if tunnel is None:
            return None
        path = "/".join(tunnel)
        return Server(
            address=path,
            port=0,
            weight=weight,
            backup=backup,
            name=name,
            max_conns=max_conns,
            tunnel=path,
        )
    if t.has("srv"):
        if srv is None:
            return None
        return Server(
            address=srv, port=0, weight=weight, backup=backup, max_conns=max_conns, srv=srv
        )
    if raw is None:
        return None
    try:
        address, port = parse_server(raw)
    except ValueError as exc:
        t.problem("address", str(exc))
        return None
    resolve = t.choice("resolve", _RESOLVE, _SERVER.resolve)
    if resolve == "all" and _is_ip(address):
        t.problem("resolve", f"{address} is an IP address: there is nothing to resolve")
        resolve = "one"
    return Server(
        address=address,
        port=port,
        weight=weight,
        backup=backup,
        name=name,
        max_conns=max_conns,
        resolve=resolve,
    )


def _read_discovery(t: TableReader) -> str | None:
    """``srv`` (the SRV name, or None) after the checks shared with ``resolve``: servers found
    at run time have no one name, and an SRV record gives both address and port."""
    srv = t.parsed("srv", lambda v: _parse_srv_name(as_str(v)), None)
    if t.has("srv"):
        for other in ("address", "tunnel", "resolve"):
            if t.has(other):
                t.problem(other, "an srv server takes its addresses and ports from the record")
    if (t.has("srv") or t.raw("resolve") == "all") and t.has("name"):
        t.problem(
            "name",
            "each address found is a server of its own, named POOL/ADDRESS:PORT "
            "(a name would be shared by all of them)",
        )
    return srv


def _parse_srv_name(value: str) -> str:
    name = parse_host_name(value)
    labels = name.split(".")
    if len(labels) < 3 or not labels[0].startswith("_") or labels[1] != "_tcp":
        raise ValueError(
            f'"{value}" is not an SRV name: write "_SERVICE._tcp.DOMAIN" '
            '(e.g. "_http._tcp.app.internal")'
        )
    return name


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def _read_servers(t: TableReader, ctx: ReadContext) -> tuple[Server, ...]:
    raw = t.raw("servers")
    if raw is MISSING or raw == []:
        t.problem("servers", 'a pool needs at least one server (write servers = ["HOST:PORT"])')
        return ()
    servers: list[Server] = []
    by_address: dict[str, str] = {}
    by_name: dict[str, str] = {}
    for key, item in t.items("servers", single=False):
        server = _read_server(key, item, t.file, ctx)
        if server is None:
            continue
        servers.append(server)
        short = key.rpartition(".")[2]
        if str(server) in by_address:
            ctx.add(t.file, key, f"{server} is listed twice (also {by_address[str(server)]})")
        else:
            by_address[str(server)] = short
        if server.name is not None:
            if server.name in by_name:
                reason = f'server name "{server.name}" is used twice (also {by_name[server.name]})'
                ctx.add(t.file, f"{key}.name", reason)
            else:
                by_name[server.name] = short
    if servers and all(server.backup for server in servers):
        t.problem(
            "servers",
            "every server is a backup; at least one must not be "
            "(backups take traffic only when every other server is down)",
        )
    return tuple(servers)


def _read_timeouts(t: TableReader) -> Timeouts:
    return Timeouts(
        connect=t.duration("connect", _TIMEOUTS.connect),
        response=t.duration("response", _TIMEOUTS.response),
        idle=t.duration("idle", _TIMEOUTS.idle),
        tunnel=t.duration("tunnel", _TIMEOUTS.tunnel),
    )


def _read_health(t: TableReader) -> Health:
    tcp = t.boolean("tcp", _HEALTH.tcp)
    interval = t.duration("interval", _HEALTH.interval)
    timeout = t.duration("timeout", _HEALTH.timeout)
    if t.valid("timeout") and t.valid("interval") and timeout >= interval:
        overlap = "a check still waiting when the next is due would overlap it"
        if t.has("timeout"):
            default = "" if t.has("interval") else ", the default"
            shown = f"{format_duration(interval)}{default}"
            t.problem("timeout", f"must be shorter than interval ({shown}): {overlap}")
        else:
            shown = f"{format_duration(timeout)}, the default; or set a shorter timeout"
            t.problem("interval", f"must be longer than timeout ({shown}): {overlap}")
    health = Health(
        path=t.parsed("path", lambda v: parse_check_path(as_str(v)), _HEALTH.path),
        interval=interval,
        timeout=timeout,
        rise=t.integer("rise", _HEALTH.rise, 1),
        fall=t.integer("fall", _HEALTH.fall, 1),
        expect=t.parsed("expect", lambda v: parse_expect(as_str(v)), _HEALTH.expect),
        tcp=tcp,
        host=t.parsed("host", lambda v: parse_host_name(as_str(v)), _HEALTH.host),
    )
    if tcp:
        for key in ("path", "expect", "host"):
            if t.has(key):
                t.problem(key, "only for HTTP checks (tcp = true only opens a connection)")
    return health


def _read_passive(t: TableReader) -> Passive | None:
    """``passive = { failures = 3, cooldown = "10s" }``, ``true`` (the defaults) or ``false``
    (no passive checks)."""
    raw = t.raw("passive")
    if raw is MISSING or raw is True:
        return _POOL.passive
    if raw is False:
        return None
    table = t.table("passive", _PASSIVE_KEYS) if isinstance(raw, dict) else None
    if table is None:
        t.problem(
            "passive",
            'expected a table (e.g. passive = { failures = 3, cooldown = "10s" }) or false '
            f"(no passive checks), got {describe(raw)}",
        )
        return _POOL.passive
    return Passive(
        failures=table.integer("failures", _PASSIVE.failures, 1),
        cooldown=table.duration("cooldown", _PASSIVE.cooldown),
    )


def _read_pool_tls(t: TableReader) -> PoolTLS:
    verify = t.boolean("verify", _POOL_TLS.verify)
    ca = t.path("ca", _POOL_TLS.ca)
    if ca is not None:
        reason = _check_ca(ca)
        if reason:
            t.problem("ca", reason)
        elif not verify:
            t.problem("ca", "only used with verify = true (verify = false checks no certificate)")
    cert = t.path("cert", _POOL_TLS.cert)
    key = t.path("key", _POOL_TLS.key)
    if (cert is None) != (key is None) and t.valid("cert") and t.valid("key"):
        if cert is None:
            t.problem("key", 'needs cert (the client certificate chain, e.g. cert = "client.pem")')
        else:
            t.problem("cert", 'needs key (its private key, e.g. key = "client.key")')
    elif cert is not None and key is not None:
        check = t.ctx.check_cert_pair
        reason = check(cert, key) if check is not None else ""
        if reason:
            t.problem("key" if reason.startswith("private key file") else "cert", reason)
    return PoolTLS(
        sni=t.parsed("sni", lambda v: parse_sni_name(as_str(v)), _POOL_TLS.sni),
        verify=verify,
        ca=ca,
        cert=cert if key is not None else None,
        key=key if cert is not None else None,
    )


def _check_ca(ca: Path) -> str:
    """Why `ca` cannot be the trust store for origin certificates, or "" if it can."""
    import ssl  # imported late, as the certificate checks of listeners are

    if not ca.exists():
        return f"{ca} does not exist (name a PEM file of CA certificates)"
    if ca.is_dir():
        return f"{ca} is a directory (name a PEM file of CA certificates)"
    try:
        with ca.open("rb"):
            pass
        ssl.create_default_context(cafile=str(ca))
    except ssl.SSLError as exc:  # before OSError, which it subclasses
        reason = str(exc.reason).lower().replace("_", " ") if exc.reason else str(exc)
        return f"{ca} holds no usable PEM certificate ({reason})"
    except OSError as os_error:
        return f"cannot read {ca}: {os_error.strerror or os_error}"
    return ""


def _parse_header_name(value: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise ValueError(f'"{value}" is not a header name (letters, digits and "-", no ":")')
    return value.lower()


def read_pool(name: str, entry: Entry, ctx: ReadContext) -> Pool:
    t = TableReader(entry.data, f"pool.{name}", entry.file, ctx, _POOL_KEYS)
    if not _NAME.fullmatch(name):
        t.problem_here('pool names are letters, digits, "_", "-" and "." (e.g. [pool.web])')
    timeouts_table = t.table("timeouts", _TIMEOUT_KEYS)
    health_table = t.table("health", _HEALTH_KEYS)
    tls_table = t.table("tls", _POOL_TLS_KEYS)
    tls = _read_pool_tls(tls_table) if tls_table is not None else None
    protocol = t.choice("protocol", _PROTOCOLS, _POOL.protocol)
    if protocol == "h2" and tls is None and t.valid("tls"):
        t.problem(
            "protocol",
            '"h2" to origins runs over TLS: add tls = {} (or write "h2c" for HTTP/2 without TLS)',
        )
    elif protocol == "h2c" and tls is not None:
        t.problem("protocol", '"h2c" is HTTP/2 without TLS, but this pool has tls (write "h2")')
    hide = t.strings("hide_headers", _parse_header_name)
    t.unique("hide_headers", hide)
    servers = _read_servers(t, ctx)
    return Pool(
        name=name,
        servers=servers,
        balance=t.choice("balance", BALANCE_NAMES, _POOL.balance),
        timeouts=_read_timeouts(timeouts_table) if timeouts_table is not None else _TIMEOUTS,
        send_proxy=t.choice("send_proxy", _SEND_PROXY, _POOL.send_proxy),
        hide_headers=tuple(dict.fromkeys(header for _, header in hide)),
        server_header=t.parsed("server_header", header_value, _POOL.server_header),
        resolve_interval=t.duration("resolve_interval", _POOL.resolve_interval),
        keepalive=t.integer("keepalive", _POOL.keepalive, 0),
        health=_read_health(health_table) if health_table is not None else _POOL.health,
        passive=_read_passive(t),
        slow_start=t.duration("slow_start", _POOL.slow_start, positive=False),
        protocol=protocol,
        tls=tls,
        host_header=t.parsed("host_header", _parse_host_header, None),
        source_addresses=_read_source(t, servers),
        source=entry.file,
    )


def _read_source(t: TableReader, servers: Sequence[Server]) -> tuple[str, ...]:
    """``source``: IP literals connections to the servers leave from (the key of
    ``[egress.NAME] source``). A server written as an address of a family no source has
    could never be reached: refused here; names are matched when they resolve."""
    sources = t.strings("source", _parse_source)
    t.unique("source", sources)
    if not sources:
        return ()
    families = {ipaddress.ip_address(s).version for _, s in sources}
    for server in servers:
        if server.tunnel is not None or not _is_ip(server.address):
            continue
        version = ipaddress.ip_address(server.address).version
        if version not in families:
            t.problem(
                "source",
                f'no IPv{version} address for server "{server}": connections leave from a '
                f"source of the server's family (add an IPv{version} source)",
            )
    return tuple(s for _, s in sources)


def _parse_source(value: str) -> str:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(
            f"{describe(value)} is not an IP address (write the local address connections to "
            'the servers leave from, e.g. "203.0.113.7")'
        ) from None
    if address.is_unspecified or address.is_multicast:
        raise ValueError(f"{describe(value)} cannot be a source address")
    return str(address)


def _parse_host_header(value: object) -> str:
    """``host_header``: a host name or IP literal, optionally with a port (what Host holds)."""
    text = as_str(value).strip().lower()
    if not text or text.startswith(":") or not valid_authority(text.encode("latin-1", "replace")):
        raise ValueError(
            f'"{value}" is not a host[:port] for the Host header (e.g. "origin.internal")'
        )
    return text


def add_servers(pools: Sequence[Pool], entries: Sequence[Entry], ctx: ReadContext) -> list[Pool]:
    """``[[server]]`` tables (``pool = "web"`` plus a server's keys): servers added to pools
    defined elsewhere — the form ``revproxy ctl add server --persist`` writes, in a file of its
    own, since a ``[pool.NAME]`` table belongs to one file."""
    by_name = {pool.name: pool for pool in pools}
    added: dict[str, list[Server]] = {}
    for i, entry in enumerate(entries):
        key = f"server[{i}]"
        body = dict(entry.data)
        pool_name = body.pop("pool", MISSING)
        if pool_name is MISSING:
            ctx.add(entry.file, f"{key}.pool", 'required (write e.g. pool = "web")')
            continue
        pool = by_name.get(pool_name) if isinstance(pool_name, str) else None
        if pool is None:
            known = ", ".join(sorted(by_name)) or "none"
            ctx.add(
                entry.file,
                f"{key}.pool",
                f"no pool named {describe(pool_name)} (defined pools: {known})",
            )
            continue
        server = _read_server(key, body, entry.file, ctx)
        if server is None:
            continue
        listed = [*pool.servers, *added.get(pool.name, [])]
        if any(str(s) == str(server) for s in listed):
            ctx.add(
                entry.file, f"{key}.address", f'{server} is already a server of pool "{pool.name}"'
            )
            continue
        if server.name is not None and any(s.name == server.name for s in listed):
            ctx.add(entry.file, f"{key}.name", f'server name "{server.name}" is used twice')
            continue
        added.setdefault(pool.name, []).append(server)
    return [
        replace(pool, servers=(*pool.servers, *added[pool.name])) if pool.name in added else pool
        for pool in pools
    ]
