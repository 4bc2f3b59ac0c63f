"""conf/*.toml → one frozen ``Config``, with every validation.

Rule of this room: nothing invalid leaves this module, and every problem is reported at once,
named by file and key path with what to write instead
(``conf/20-sites.toml: pool.web.servers[1]: "10.0.0.5" has no port (write "10.0.0.5:8080")``).
A reader never stops at the first problem: it records it, carries on with the default, and
``ConfigError`` is raised at the end carrying all of them.

Files are read in name order. ``[global]`` merges key by key (a key set in two files is an
error naming both), ``[[listener]]`` and ``[[route]]`` concatenate in file order, and a
``[pool.NAME]`` belongs to exactly one file. Indexes in key paths (``route[3]``) are positions
in the merged lists, the same numbers the router and the logs use. Problems that name other
objects (dangling pool or listener names, clashing binds, shadowed routes, no listener at all)
are only looked for when every file parsed: a syntax error in the file defining pool "web"
should not also be reported as routes naming a missing pool.

Relative paths (certificates, ``cert_dir``, ``state_dir``, an access log file) are resolved
against the configuration directory, so a config means the same whatever the working directory.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from revproxy.config import (
    BALANCE_NAMES,
    Bind,
    CertPair,
    Config,
    Global,
    Listener,
    ListenerTLS,
    Pool,
    ProxyProtocolIn,
    Respond,
    Route,
    Server,
    Timeouts,
)
from revproxy.config_values import (
    MISSING,
    ReadContext,
    TableReader,
    describe,
    parse_bind,
    parse_duration,
    parse_host_pattern,
    parse_network,
    parse_server,
    parse_size,
    unknown_key,
)
from revproxy.errors import CertificateError, ConfigError, ConfigProblem

__all__ = [
    "load_config",
    "load_config_text",
    "parse_bind",
    "parse_duration",
    "parse_server",
    "parse_size",
    "summary",
]


# The TOML keys of each table: the field names of config.py, minus what the loader fills in
# itself (``source``, ``index``, a pool's ``name``, a server's ``port``).
_TOP_KEYS = ("global", "listener", "route", "pool")
_GLOBAL_KEYS = (
    "workers", "access_log", "access_log_format", "http1_parser", "shutdown_timeout",
    "header_timeout", "keepalive_timeout", "max_header_size", "max_body_size", "state_dir",
)  # fmt: skip
_LISTENER_KEYS = (
    "name", "bind", "mode", "tls", "redirect_https", "redirect_port", "trusted_proxies",
    "proxy_protocol", "forwarded", "pool",
)  # fmt: skip
_TLS_KEYS = ("cert_dir", "certs", "unknown_sni", "alpn")
_CERT_KEYS = ("cert", "key")
_PROXY_PROTOCOL_KEYS = ("mode", "trusted", "timeout")
_ROUTE_KEYS = (
    "host", "path", "pool", "redirect", "redirect_status", "respond", "listeners",
)  # fmt: skip
_RESPOND_KEYS = ("status", "body", "content_type")
_POOL_KEYS = (
    "servers", "balance", "timeouts", "send_proxy", "hide_headers", "server_header",
    "resolve_interval", "keepalive",
)  # fmt: skip
_SERVER_KEYS = ("address", "weight", "backup", "name", "max_conns")
_TIMEOUT_KEYS = ("connect", "response", "idle")

_MODES: tuple[Literal["http", "tcp"], ...] = ("http", "tcp")
_LOG_FORMATS: tuple[Literal["text", "json"], ...] = ("text", "json")
_HTTP1_PARSERS: tuple[Literal["auto", "httptools", "h11"], ...] = ("auto", "httptools", "h11")
_UNKNOWN_SNI: tuple[Literal["generated", "reject"], ...] = ("generated", "reject")
_PROXY_MODES: tuple[Literal["off", "optional", "required"], ...] = ("off", "optional", "required")
_SEND_PROXY: tuple[Literal["v1", "v2"], ...] = ("v1", "v2")
_ALPN = ("h2", "http/1.1")
_REDIRECT_STATUSES = (301, 302, 303, 307, 308)
_MAX_WEIGHT = 256
# Below this a browser's ordinary request head (cookies included) no longer fits.
_MIN_HEADER_SIZE = 1024

# Defaults come from the dataclasses themselves, so config.py stays the one place for them.
_GLOBAL = Global()
_LISTENER = Listener(name="", bind=())
_TLS = ListenerTLS()
_PROXY_PROTOCOL = ProxyProtocolIn()
_ROUTE = Route()
_RESPOND = Respond()
_POOL = Pool(name="", servers=())
_SERVER = Server(address="", port=0)
_TIMEOUTS = Timeouts()

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 field-name


def _no_crlf(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError("must not contain line breaks (it is sent in a header)")
    return value


# --- merging the files --------------------------------------------------------------------


@dataclass
class _Entry:
    """One [[listener]], [[route]] or [pool.NAME] table and the file it came from."""

    file: str
    data: Mapping[str, object]


@dataclass
class _Merged:
    global_: dict[str, object] = field(default_factory=dict)
    global_files: dict[str, str] = field(default_factory=dict)
    listeners: list[_Entry] = field(default_factory=list)
    routes: list[_Entry] = field(default_factory=list)
    pools: dict[str, _Entry] = field(default_factory=dict)


def _merge(documents: Sequence[tuple[str, Mapping[str, object]]], ctx: ReadContext) -> _Merged:
    merged = _Merged()
    for file, document in documents:
        for top, value in document.items():
            if top == "global":
                if not isinstance(value, dict):
                    ctx.add(file, top, f"expected a table ([global]), got {describe(value)}")
                    continue
                for name, item in value.items():
                    if name in merged.global_:
                        first = merged.global_files[name]
                        ctx.add(file, f"global.{name}", f"set again (first set in {first})")
                        continue
                    merged.global_[name] = item
                    merged.global_files[name] = file
            elif top in ("listener", "route"):
                into = merged.listeners if top == "listener" else merged.routes
                if not isinstance(value, list):
                    reason = f"expected an array of tables ([[{top}]]), got {describe(value)}"
                    ctx.add(file, top, reason)
                    continue
                for item in value:
                    if isinstance(item, dict):
                        into.append(_Entry(file, item))
                    else:
                        reason = f"expected a table ([[{top}]]), got {describe(item)}"
                        ctx.add(file, f"{top}[{len(into)}]", reason)
            elif top == "pool":
                if not isinstance(value, dict):
                    ctx.add(file, top, f"expected tables ([pool.NAME]), got {describe(value)}")
                    continue
                for name, body in value.items():
                    if not isinstance(body, dict):
                        reason = f"expected a table ([pool.{name}]), got {describe(body)}"
                        ctx.add(file, f"pool.{name}", reason)
                    elif name in merged.pools:
                        first = merged.pools[name].file
                        ctx.add(file, f"pool.{name}", f"pool defined again (first in {first})")
                    else:
                        merged.pools[name] = _Entry(file, body)
            else:
                ctx.add(file, top, unknown_key(top, _TOP_KEYS))
    return merged


# --- [global] -----------------------------------------------------------------------------


def _read_global(merged: _Merged, ctx: ReadContext) -> Global:
    t = TableReader(merged.global_, "global", "", ctx, _GLOBAL_KEYS, merged.global_files)
    workers = t.raw("workers")
    if workers is MISSING:
        workers = _GLOBAL.workers
    elif workers != "auto" and (
        not isinstance(workers, int) or isinstance(workers, bool) or workers < 1
    ):
        t.problem("workers", f'expected an integer >= 1 or "auto", got {describe(workers)}')
        workers = _GLOBAL.workers
    access_log = t.string("access_log", _GLOBAL.access_log)
    if access_log not in ("stdout", "off"):
        access_log = str(ctx.resolve(access_log))
    return Global(
        workers=workers if isinstance(workers, int) else "auto",
        access_log=access_log,
        access_log_format=t.choice("access_log_format", _LOG_FORMATS, _GLOBAL.access_log_format),
        http1_parser=t.choice("http1_parser", _HTTP1_PARSERS, _GLOBAL.http1_parser),
        shutdown_timeout=t.duration("shutdown_timeout", _GLOBAL.shutdown_timeout, positive=False),
        header_timeout=t.duration("header_timeout", _GLOBAL.header_timeout),
        keepalive_timeout=t.duration("keepalive_timeout", _GLOBAL.keepalive_timeout),
        max_header_size=t.size("max_header_size", _GLOBAL.max_header_size, _MIN_HEADER_SIZE),
        max_body_size=t.size("max_body_size", _GLOBAL.max_body_size),
        state_dir=t.path("state_dir", _GLOBAL.state_dir),
    )


# --- [[listener]] -------------------------------------------------------------------------


@dataclass
class _ListenerRead:
    listener: Listener
    binds: list[tuple[str, Bind]]  # key path of each bind, for clash messages
    table: TableReader


def _read_tls(t: TableReader, ctx: ReadContext) -> ListenerTLS:
    cert_dir = t.path("cert_dir", None)
    if cert_dir is not None and cert_dir.exists() and not cert_dir.is_dir():
        t.problem("cert_dir", f"{cert_dir} is not a directory")
    pairs: list[CertPair] = []
    for ct in t.tables("certs", _CERT_KEYS):
        cert = ct.path("cert", None, required='the certificate chain file, e.g. "fullchain.pem"')
        key = ct.path("key", None, required='the private key file, e.g. "privkey.pem"')
        if cert is None or key is None:
            continue
        pairs.append(CertPair(cert=cert, key=key))
        reason = _check_cert_pair(cert, key)
        if reason:
            ct.problem_here(reason)
    alpn = t.strings("alpn", _parse_alpn)
    t.unique("alpn", alpn)
    if t.raw("alpn") == []:
        t.problem("alpn", f"must name at least one protocol ({', '.join(_ALPN)})")
    return ListenerTLS(
        cert_dir=cert_dir,
        certs=tuple(pairs),
        unknown_sni=t.choice("unknown_sni", _UNKNOWN_SNI, _TLS.unknown_sni),
        alpn=tuple(name for _, name in alpn) or _TLS.alpn,
    )


def _check_cert_pair(cert: Path, key: Path) -> str:
    """Why the pair cannot serve, or "" if it can. tls.py owns reading certificates."""
    from revproxy.tls import load_cert_pair  # imported late: tls.py pulls in ssl machinery

    try:
        load_cert_pair(cert, key)
    except CertificateError as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot read: {exc}"
    return ""


def _parse_alpn(value: str) -> str:
    if value not in _ALPN:
        listed = ", ".join(f'"{name}"' for name in _ALPN)
        raise ValueError(f"expected one of {listed}, got {describe(value)}")
    return value


def _read_proxy_protocol(t: TableReader) -> ProxyProtocolIn:
    mode = t.choice("mode", _PROXY_MODES, _PROXY_PROTOCOL.mode)
    trusted = t.strings("trusted", parse_network)
    if mode != "off" and t.raw("trusted") in (MISSING, []):
        t.problem(
            "trusted",
            f'mode "{mode}" needs the addresses allowed to send PROXY headers '
            '(write e.g. trusted = ["10.0.0.0/8"])',
        )
    return ProxyProtocolIn(
        mode=mode,
        trusted=tuple(network for _, network in trusted),
        timeout=t.duration("timeout", _PROXY_PROTOCOL.timeout),
    )


def _read_listener(index: int, entry: _Entry, ctx: ReadContext) -> _ListenerRead:
    t = TableReader(entry.data, f"listener[{index}]", entry.file, ctx, _LISTENER_KEYS)
    name = t.string("name", "", required='e.g. name = "https"')
    binds = t.strings("bind", parse_bind)
    if t.raw("bind") in (MISSING, []):
        t.problem("bind", 'needs at least one address (write e.g. bind = [":443"])')
    t.unique("bind", binds)
    mode = t.choice("mode", _MODES, _LISTENER.mode)
    tls_table = t.table("tls", _TLS_KEYS)
    tls = _read_tls(tls_table, ctx) if tls_table is not None else None
    proxy_table = t.table("proxy_protocol", _PROXY_PROTOCOL_KEYS)
    trusted = t.strings("trusted_proxies", parse_network)
    listener = Listener(
        name=name,
        bind=tuple(bind for _, bind in binds),
        mode=mode,
        tls=tls,
        redirect_https=t.boolean("redirect_https", _LISTENER.redirect_https),
        redirect_port=t.integer("redirect_port", _LISTENER.redirect_port, 1, 65535),
        trusted_proxies=tuple(network for _, network in trusted),
        proxy_protocol=(
            _read_proxy_protocol(proxy_table) if proxy_table is not None else _PROXY_PROTOCOL
        ),
        forwarded=t.boolean("forwarded", _LISTENER.forwarded),
        pool=t.string("pool", _LISTENER.pool),
        source=entry.file,
    )
    if mode == "tcp":
        if not t.has("pool"):
            t.problem("pool", "required on a tcp listener (the pool its connections go to)")
        http_only = {
            "tls": tls_table is not None,
            "redirect_https": listener.redirect_https,
            "redirect_port": t.has("redirect_port"),
            "trusted_proxies": bool(listener.trusted_proxies),
            "forwarded": listener.forwarded,
        }
        for key, present in http_only.items():
            if present:
                t.problem(key, 'only for mode = "http" (a tcp listener relays bytes untouched)')
    else:
        if t.has("pool"):
            t.problem("pool", 'only for mode = "tcp"; http listeners reach pools through routes')
        if tls is not None and listener.redirect_https:
            t.problem(
                "redirect_https",
                "a TLS listener already serves HTTPS; set redirect_https on the plain listener",
            )
    return _ListenerRead(listener, binds, t)


# --- [[route]] ----------------------------------------------------------------------------


@dataclass
class _RouteRead:
    route: Route
    listener_refs: list[tuple[str, str]]  # (key path, listener name)
    table: TableReader


def _parse_route_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f'"{value}" must start with "/" (write "/{value}")')
    if "?" in value or "#" in value:
        raise ValueError(f'"{value}": paths match without the query or fragment')
    if any(c.isspace() for c in value):
        raise ValueError(f'"{value}" contains white space (write it percent-encoded)')
    return value


def _parse_redirect(value: str) -> str:
    _no_crlf(value)
    if not value.startswith(("https://", "http://", "/")) or " " in value:
        raise ValueError(
            f'"{value}" is not a redirect target (write an absolute URL like '
            '"https://example.org/" or a path starting with "/")'
        )
    return value


def _read_respond(t: TableReader) -> Respond:
    status = t.integer("status", _RESPOND.status, 200, 599)
    body = t.text("body", _RESPOND.body)
    if body and status in (204, 304):
        t.problem("body", f"a {status} response cannot have a body")
    content_type = t.parsed("content_type", _header_value, _RESPOND.content_type)
    return Respond(status=status, body=body, content_type=content_type)


def _header_value(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {describe(value)}")
    return _no_crlf(value)


def _read_route(index: int, entry: _Entry, ctx: ReadContext) -> _RouteRead:
    t = TableReader(entry.data, f"route[{index}]", entry.file, ctx, _ROUTE_KEYS)
    hosts = t.strings("host", parse_host_pattern)
    t.unique("host", hosts)
    listeners = t.strings("listeners", str)
    t.unique("listeners", listeners)
    respond_table = t.table("respond", _RESPOND_KEYS)
    redirect: str | None = t.parsed("redirect", lambda v: _parse_redirect(_as_str(v)), None)
    route = Route(
        host=tuple(dict.fromkeys(host for _, host in hosts)),
        path=t.parsed("path", lambda v: _parse_route_path(_as_str(v)), _ROUTE.path),
        pool=t.string("pool", _ROUTE.pool),
        redirect=redirect,
        redirect_status=t.parsed("redirect_status", _parse_redirect_status, 308),
        respond=_read_respond(respond_table) if respond_table is not None else None,
        listeners=tuple(dict.fromkeys(name for _, name in listeners)),
        index=index,
        source=entry.file,
    )
    actions = [key for key in ("pool", "redirect", "respond") if t.has(key)]
    if not actions:
        t.problem_here("needs one of pool, redirect or respond (what to do with the request)")
    elif len(actions) > 1:
        t.problem_here(f"has {' and '.join(actions)}; a route does exactly one of them")
    if t.has("redirect_status") and not t.has("redirect"):
        t.problem("redirect_status", "only used with redirect")
    return _RouteRead(route, listeners, t)


def _as_str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {describe(value)}")
    return value


def _parse_redirect_status(value: object) -> int:
    if isinstance(value, bool) or value not in _REDIRECT_STATUSES:
        listed = ", ".join(str(status) for status in _REDIRECT_STATUSES)
        raise ValueError(f"expected one of {listed}, got {describe(value)}")
    assert isinstance(value, int)
    return value


# --- [pool.NAME] --------------------------------------------------------------------------


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
    raw = t.string("address", None, required='write e.g. address = "10.0.0.10:8080"')
    weight = t.integer("weight", _SERVER.weight, 1, _MAX_WEIGHT)
    backup = t.boolean("backup", _SERVER.backup)
    name = t.string("name", _SERVER.name)
    max_conns = t.integer("max_conns", _SERVER.max_conns, 1)
    if raw is None:
        return None
    try:
        address, port = parse_server(raw)
    except ValueError as exc:
        t.problem("address", str(exc))
        return None
    return Server(
        address=address, port=port, weight=weight, backup=backup, name=name, max_conns=max_conns
    )


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


def _parse_header_name(value: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise ValueError(f'"{value}" is not a header name (letters, digits and "-", no ":")')
    return value.lower()


def _read_pool(name: str, entry: _Entry, ctx: ReadContext) -> Pool:
    t = TableReader(entry.data, f"pool.{name}", entry.file, ctx, _POOL_KEYS)
    if not _NAME.fullmatch(name):
        t.problem_here('pool names are letters, digits, "_", "-" and "." (e.g. [pool.web])')
    timeouts_table = t.table("timeouts", _TIMEOUT_KEYS)
    timeouts = _TIMEOUTS
    if timeouts_table is not None:
        timeouts = Timeouts(
            connect=timeouts_table.duration("connect", _TIMEOUTS.connect),
            response=timeouts_table.duration("response", _TIMEOUTS.response),
            idle=timeouts_table.duration("idle", _TIMEOUTS.idle),
        )
    hide = t.strings("hide_headers", _parse_header_name)
    t.unique("hide_headers", hide)
    return Pool(
        name=name,
        servers=_read_servers(t, ctx),
        balance=t.choice("balance", BALANCE_NAMES, _POOL.balance),
        timeouts=timeouts,
        send_proxy=t.choice("send_proxy", _SEND_PROXY, _POOL.send_proxy),
        hide_headers=tuple(dict.fromkeys(header for _, header in hide)),
        server_header=t.parsed("server_header", _header_value, _POOL.server_header),
        resolve_interval=t.duration("resolve_interval", _POOL.resolve_interval),
        keepalive=t.integer("keepalive", _POOL.keepalive, 0),
        source=entry.file,
    )


# --- what needs the whole config ----------------------------------------------------------


def _defined(kind: str, names: Sequence[str]) -> str:
    if not names:
        return f"no {kind}s are defined"
    return f"defined {kind}s: {', '.join(names)}"


def _covers(wide: str, narrow: str) -> bool:
    """Whether binding `wide` takes the port on address `narrow` too."""
    if wide == "":
        return True
    if wide == "0.0.0.0":
        return narrow.count(".") == 3 and narrow.replace(".", "").isdigit()
    # asyncio binds IPv6 sockets IPV6_V6ONLY, so "::" takes only IPv6 addresses.
    return wide == "::" and ":" in narrow


def _check_listeners(
    reads: Sequence[_ListenerRead], pools: Sequence[str], ctx: ReadContext
) -> None:
    first_name: dict[str, int] = {}
    bound: list[tuple[int, str, Bind]] = []
    for index, read in enumerate(reads):
        listener, t = read.listener, read.table
        if listener.name in first_name:
            other = first_name[listener.name]
            t.problem(
                "name",
                f'duplicate listener name "{listener.name}" '
                f"(first used by listener[{other}] in {reads[other].listener.source})",
            )
        elif listener.name:
            first_name[listener.name] = index
        for key, bind in read.binds:
            for other, other_key, taken in bound:
                if (
                    other != index
                    and bind.port == taken.port
                    and (
                        bind.host == taken.host
                        or _covers(bind.host, taken.host)
                        or _covers(taken.host, bind.host)
                    )
                ):
                    clash = reads[other].listener
                    ctx.add(
                        t.file,
                        key,
                        f'{bind} clashes with {taken} of listener "{clash.name}" '
                        f"({other_key} in {clash.source})",
                    )
                    break
            bound.append((index, key, bind))
        if listener.mode == "tcp" and listener.pool and listener.pool not in pools:
            t.problem("pool", f'no pool named "{listener.pool}" ({_defined("pool", pools)})')
    has_tls = any(read.listener.tls is not None for read in reads)
    for read in reads:
        listener = read.listener
        if (
            listener.mode == "http"
            and listener.redirect_https
            and listener.redirect_port is None
            and not has_tls
        ):
            read.table.problem(
                "redirect_https",
                "there is no TLS listener to redirect to (add one, or set redirect_port)",
            )


def _check_routes(
    reads: Sequence[_RouteRead], listeners: Sequence[Listener], pools: Sequence[str]
) -> None:
    modes = {listener.name: listener.mode for listener in listeners}
    http_names = frozenset(name for name, mode in modes.items() if mode == "http")
    for read in reads:
        route, t = read.route, read.table
        if route.pool is not None and route.pool not in pools:
            t.problem("pool", f'no pool named "{route.pool}" ({_defined("pool", pools)})')
        for key, name in read.listener_refs:
            if name not in modes:
                reason = f'no listener named "{name}" ({_defined("listener", list(modes))})'
                t.ctx.add(t.file, key, reason)
            elif modes[name] != "http":
                reason = f'listener "{name}" is a tcp listener; routes apply to http listeners'
                t.ctx.add(t.file, key, reason)
    for later_index, later in enumerate(reads):
        for earlier in reads[:later_index]:
            what = _shadowed(earlier.route, later.route, http_names)
            if what:
                later.table.problem_here(
                    f'never used for {what} and path "{later.route.path}": '
                    f"route[{earlier.route.index}] ({earlier.route.source}) matches them first"
                )
                break


def _shadowed(earlier: Route, later: Route, http_names: frozenset[str]) -> str | None:
    """What `later` never gets because `earlier` takes it first, if anything.

    Ties keep config order, so a later route with a host and path of an earlier one, on no
    listener the earlier one lacks, never sees those requests. (The same host on different
    listeners, say a redirect on "http" and a pool elsewhere, is a fine setup.)
    """
    if earlier.path != later.path:
        return None
    if not set(later.listeners or http_names) <= set(earlier.listeners or http_names):
        return None
    if not earlier.host and not later.host:
        return "any host"
    common = [host for host in later.host if host in earlier.host]
    return f'host "{common[0]}"' if common else None


def _load(
    files: Sequence[tuple[str, str]],
    ctx: ReadContext,
    paths: tuple[Path, ...],
    *,
    complete: bool = True,
) -> Config:
    documents: list[tuple[str, Mapping[str, object]]] = []
    for name, text in files:
        try:
            documents.append((name, tomllib.loads(text)))
        except tomllib.TOMLDecodeError as exc:
            ctx.add(name, "", f"TOML syntax error: {exc}")
            complete = False
    merged = _merge(documents, ctx)
    global_ = _read_global(merged, ctx)
    listener_reads = [_read_listener(i, e, ctx) for i, e in enumerate(merged.listeners)]
    route_reads = [_read_route(i, e, ctx) for i, e in enumerate(merged.routes)]
    pools = tuple(_read_pool(name, entry, ctx) for name, entry in merged.pools.items())
    listeners = tuple(read.listener for read in listener_reads)
    if complete:
        pool_names = [pool.name for pool in pools]
        _check_listeners(listener_reads, pool_names, ctx)
        _check_routes(route_reads, listeners, pool_names)
        if not listeners:
            ctx.add(
                "", "listener",
                'no listeners are defined (add one: [[listener]] name = "http", bind = [":80"])',
            )  # fmt: skip
    if ctx.problems:
        # Grouped by file, in file order (problems about no file in particular last), each
        # file's in the order they were found.
        order = {name: index for index, (name, _) in enumerate(files)}
        ctx.problems.sort(key=lambda problem: order.get(problem.file, len(order)))
        raise ConfigError(ctx.problems)
    return Config(
        global_=global_,
        listeners=listeners,
        routes=tuple(read.route for read in route_reads),
        pools=pools,
        files=paths,
    )


def load_config_text(files: Sequence[tuple[str, str]], *, base_dir: Path | None = None) -> Config:
    """(file name, TOML text) pairs, already in order → Config; raises ConfigError.

    Relative paths in the config are resolved against `base_dir` when it is given.
    """
    return _load(files, ReadContext(base_dir), tuple(Path(name) for name, _ in files))


def load_config(conf_dir: Path) -> Config:
    """Read conf_dir/*.toml in name order → Config; raises ConfigError with every problem.

    Problems name files as "<conf dir name>/<file name>", e.g. "conf/20-sites.toml".
    """
    conf_dir = conf_dir.resolve()
    ctx = ReadContext(conf_dir)
    if not conf_dir.is_dir():
        raise ConfigError([ConfigProblem(str(conf_dir), "", "not a directory")])
    paths = sorted(
        (p for p in conf_dir.glob("*.toml") if not p.name.startswith(".") and p.is_file()),
        key=lambda p: p.name,
    )
    if not paths:
        raise ConfigError([ConfigProblem(str(conf_dir), "", "no *.toml files in it")])
    files: list[tuple[str, str]] = []
    complete = True
    for path in paths:
        shown = f"{conf_dir.name}/{path.name}"
        try:
            files.append((shown, path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            ctx.add(shown, "", f"cannot read: {exc}")
            complete = False
    return _load(files, ctx, tuple(paths), complete=complete)


# --- summary for `revproxy check` ---------------------------------------------------------


def _duration(seconds: float) -> str:
    if seconds < 1 and seconds != 0:
        return f"{seconds * 1000:g}ms"
    minutes, rest = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else ""]
    parts.append(f"{rest:g}s" if rest or not (hours or minutes) else "")
    return "".join(parts)


def _size(size: int) -> str:
    for unit, factor in (("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def _listener_line(listener: Listener, config: Config) -> str:
    facts = [f"{listener.mode} on {', '.join(str(bind) for bind in listener.bind)}"]
    if listener.tls is not None:
        tls = listener.tls
        sources = [f"certificates in {tls.cert_dir}"] if tls.cert_dir else []
        sources += [f"certificate {pair.cert}" for pair in tls.certs]
        facts.append(
            f"tls ({'; '.join(sources) or 'generated certificate only'}; "
            f"unknown sni: {tls.unknown_sni}; alpn: {', '.join(tls.alpn)})"
        )
    if listener.redirect_https:
        port = listener.redirect_port
        if port is None:
            tls_ports = (lst.bind[0].port for lst in config.listeners if lst.tls and lst.bind)
            port = next(tls_ports, None)
        facts.append("redirects to https" + (f" on port {port}" if port else ""))
    if listener.proxy_protocol.mode != "off":
        trusted = ", ".join(str(net) for net in listener.proxy_protocol.trusted)
        facts.append(f"PROXY protocol {listener.proxy_protocol.mode} from {trusted}")
    if listener.trusted_proxies:
        trusted = ", ".join(str(net) for net in listener.trusted_proxies)
        facts.append(f"trusts X-Forwarded-For from {trusted}")
    if listener.forwarded:
        facts.append("adds Forwarded")
    if listener.pool:
        facts.append(f"to pool {listener.pool}")
    return f"  {listener.name}: " + "; ".join(facts)


def _match_order(route: Route, host: str) -> tuple[int, int, int, int]:
    """Exact hosts, then wildcards (longer first), then any host; then longer paths; then
    config order. routing.py owns matching; this mirrors its order for the summary."""
    kind = 2 if not host else 1 if host.startswith("*.") else 0
    return (kind, -len(host), -len(route.path), route.index)


def _route_action(route: Route) -> str:
    if route.pool is not None:
        return f"pool {route.pool}"
    if route.redirect is not None:
        return f"redirect {route.redirect_status} {route.redirect}"
    assert route.respond is not None
    return f"respond {route.respond.status}"


def summary(config: Config) -> str:
    """What `revproxy check` prints: listeners, routes in match order, pools with servers."""
    g = config.global_
    lines = [
        f"files: {', '.join(str(path) for path in config.files)}",
        f"global: workers {g.workers}; access log {g.access_log} ({g.access_log_format}); "
        f"http1 parser {g.http1_parser}; header timeout {_duration(g.header_timeout)}; "
        f"keepalive timeout {_duration(g.keepalive_timeout)}; "
        f"max header size {_size(g.max_header_size)}; max body size "
        f"{_size(g.max_body_size) if g.max_body_size else 'unlimited'}",
        f"listeners ({len(config.listeners)}):",
    ]
    lines += [_listener_line(listener, config) for listener in config.listeners]
    entries = sorted(
        ((route, host) for route in config.routes for host in route.host or ("",)),
        key=lambda entry: _match_order(*entry),
    )
    lines.append(
        f"routes ({len(config.routes)}; one line per host, in match order: exact hosts, "
        "wildcards, any host; longer paths first; then config order):"
    )
    for number, (route, host) in enumerate(entries, 1):
        only = f" (listeners: {', '.join(route.listeners)})" if route.listeners else ""
        lines.append(
            f"  {number}. {host or '(any host)'} {route.path} -> {_route_action(route)}"
            f"{only}  [route[{route.index}] in {route.source}]"
        )
    used = {route.pool for route in config.routes} | {lst.pool for lst in config.listeners}
    lines.append(f"pools ({len(config.pools)}):")
    for pool in config.pools:
        extra = "" if pool.name in used else "; not used by any route or listener"
        send = f"; sends PROXY {pool.send_proxy}" if pool.send_proxy else ""
        lines.append(f"  {pool.name}: {pool.balance}{send}{extra}")
        for server in pool.servers:
            facts = [f"weight {server.weight}"]
            if server.backup:
                facts.append("backup")
            if server.max_conns is not None:
                facts.append(f"max_conns {server.max_conns}")
            name = f" ({server.name})" if server.name else ""
            lines.append(f"    {server}{name}: {', '.join(facts)}")
    return "\n".join(lines)
