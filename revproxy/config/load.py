"""conf/*.toml → one frozen ``Config``, with every validation.

Rule of this room: nothing invalid leaves this module, and every problem is reported at once,
named by file and key path with what to write instead
(``conf/20-sites.toml: pool.web.servers[1]: "10.0.0.5" has no port (write "10.0.0.5:8080")``).
A reader never stops at the first problem: it records it, carries on with the default, and
``ConfigError`` is raised at the end carrying all of them.

Files are read in name order. ``[global]``, ``[admin]`` and ``[acme]`` merge key by key (a key
set in two files is an error naming both), ``[[listener]]`` and ``[[route]]`` concatenate in
file order, and a ``[pool.NAME]`` belongs to exactly one file. Indexes in key paths
(``route[3]``) are positions in the merged lists, the same numbers the router and the logs
use. Problems that name other objects (dangling pool or listener names, clashing binds,
shadowed routes, passthrough routes without a TLS listener, no listener at all) are only
looked for when every file parsed: a syntax error in the file defining pool "web" should not
also be reported as routes naming a missing pool.

This module merges the files, reads the single tables and ties everything together; each
kind of array or named table has its own reader (``config_listener.py``, ``config_route.py``,
``config_pool.py``), and ``revproxy check``'s summary is ``config_summary.py``'s.

Relative paths (certificates, ``cert_dir``, ``state_dir``, ``pid_file``, the admin socket, an
access log file, ACME directories, a certbot path with a "/") are resolved against the
configuration directory, so a config means the same whatever the working directory.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from revproxy.config.accesslog import LOG_TIMES, read_access_log, read_facility, read_format
from revproxy.config.egress import EGRESS_MODES, check_egress_listener, read_egress
from revproxy.config.limits import check_conn_limit, check_limit_refs, read_limit
from revproxy.config.listener import ListenerRead, bound_by, check_listeners, read_listener
from revproxy.config.model import (
    Acme,
    Admin,
    BasicAuth,
    Bind,
    Config,
    Egress,
    Global,
    H2Settings,
    Limit,
    Users,
)
from revproxy.config.pool import add_servers, read_pool
from revproxy.config.reader import (
    MISSING,
    CertPairCheck,
    Entry,
    ReadContext,
    TableReader,
    unknown_key,
)
from revproxy.config.route import RouteRead, check_routes, read_route
from revproxy.config.rules import CACHE_KEYS, read_cache_settings
from revproxy.config.summary import summary
from revproxy.config.tunnel import check_tunnels, read_tunnel
from revproxy.config.users import read_users
from revproxy.config.values import (
    as_str,
    describe,
    parse_acme_server,
    parse_bind,
    parse_duration,
    parse_email,
    parse_server,
    parse_size,
)
from revproxy.errors import ConfigError, ConfigProblem

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
# itself. Listeners, routes and pools keep theirs in their own modules.
_TOP_KEYS = (
    "global", "listener", "route", "pool", "admin", "acme", "users", "limit", "egress", "tunnel",
    "server", "cache",
)  # fmt: skip
_SINGLE_TABLES = ("global", "admin", "acme", "cache")  # merged key by key across files
_GLOBAL_KEYS = (
    "workers", "access_log", "access_log_format", "http1_parser", "shutdown_timeout",
    "header_timeout", "keepalive_timeout", "max_header_size", "max_body_size", "state_dir",
    "watch", "pid_file", "h2", "path_escaped_slashes", "underscores_in_headers",
    "max_buffer_memory", "buffer_size", "client_ipv6_prefix", "log_time", "facility",
    "resolvers",
)  # fmt: skip
_H2_KEYS = (
    "max_concurrent_streams", "initial_window_size", "max_frame_size", "max_header_list_size",
    "max_resets_per_second", "max_control_frames_per_second", "ping_interval", "ping_timeout",
)  # fmt: skip
_ADMIN_KEYS = ("socket", "bind", "auth")
_AUTH_KEYS = ("user", "password")
_ACME_KEYS = (
    "webroot", "forward", "email", "certbot", "config_dir", "work_dir", "logs_dir", "server",
)  # fmt: skip

_ESCAPED_SLASHES: tuple[Literal["reject", "keep"], ...] = ("reject", "keep")
_UNDERSCORES: tuple[Literal["drop", "keep"], ...] = ("drop", "keep")
_HTTP1_PARSERS: tuple[Literal["auto", "httptools", "h11"], ...] = ("auto", "httptools", "h11")
# Below this a browser's ordinary request head (cookies included) no longer fits.
_MIN_HEADER_SIZE = 1024
# global.buffer_size: below 4 KiB every read is a system call for a few packets; above 16 MiB
# it is no longer a bound on a slow reader.
_MIN_BUFFER_SIZE = 4 * 1024
_MAX_BUFFER_SIZE = 16 * 1024 * 1024
# RFC 9113 section 6.5.2: flow-control windows and stream counts are 31-bit; "the value
# advertised by an endpoint MUST be between this initial value [2^14] and the maximum allowed
# frame size (2^24-1 or 16,777,215 octets), inclusive"; SETTINGS values are 32-bit.
_H2_MAX_31 = (1 << 31) - 1
_H2_MIN_FRAME, _H2_MAX_FRAME = 1 << 14, (1 << 24) - 1
_H2_MAX_32 = (1 << 32) - 1
# Linux sun_path holds 108 bytes, the last one the terminating NUL.
_MAX_SOCKET_PATH = 107

# Defaults come from the dataclasses themselves, so config.py stays the one place for them.
_GLOBAL = Global()
_H2 = H2Settings()
_ACME = Acme()


# --- merging the files --------------------------------------------------------------------


@dataclass
class _Merged:
    # [global], [admin], [acme], [cache]: each key's value, and the file that set it.
    tables: dict[str, dict[str, object]] = field(
        default_factory=lambda: {name: {} for name in _SINGLE_TABLES}
    )
    table_files: dict[str, dict[str, str]] = field(
        default_factory=lambda: {name: {} for name in _SINGLE_TABLES}
    )
    listeners: list[Entry] = field(default_factory=list)
    routes: list[Entry] = field(default_factory=list)
    servers: list[Entry] = field(default_factory=list)  # [[server]]: added to a pool
    pools: dict[str, Entry] = field(default_factory=dict)
    users: dict[str, Entry] = field(default_factory=dict)
    limits: dict[str, Entry] = field(default_factory=dict)
    egress: dict[str, Entry] = field(default_factory=dict)
    tunnels: dict[str, Entry] = field(default_factory=dict)

    def reader(self, name: str, ctx: ReadContext, allowed: Sequence[str]) -> TableReader:
        return TableReader(self.tables[name], name, "", ctx, allowed, self.table_files[name])


def _merge(documents: Sequence[tuple[str, Mapping[str, object]]], ctx: ReadContext) -> _Merged:
    merged = _Merged()
    for file, document in documents:
        for top, value in document.items():
            if top in _SINGLE_TABLES:
                if not isinstance(value, dict):
                    ctx.add(file, top, f"expected a table ([{top}]), got {describe(value)}")
                    continue
                into, files = merged.tables[top], merged.table_files[top]
                for name, item in value.items():
                    if name in into:
                        ctx.add(file, f"{top}.{name}", f"set again (first set in {files[name]})")
                        continue
                    into[name] = item
                    files[name] = file
            elif top in ("listener", "route", "server"):
                entries = {
                    "listener": merged.listeners,
                    "route": merged.routes,
                    "server": merged.servers,
                }[top]
                if not isinstance(value, list):
                    reason = f"expected an array of tables ([[{top}]]), got {describe(value)}"
                    ctx.add(file, top, reason)
                    continue
                for item in value:
                    if isinstance(item, dict):
                        entries.append(Entry(file, item))
                    else:
                        reason = f"expected a table ([[{top}]]), got {describe(item)}"
                        ctx.add(file, f"{top}[{len(entries)}]", reason)
            elif top in ("pool", "users", "limit", "egress", "tunnel"):
                named = {
                    "pool": merged.pools,
                    "users": merged.users,
                    "limit": merged.limits,
                    "egress": merged.egress,
                    "tunnel": merged.tunnels,
                }[top]
                if not isinstance(value, dict):
                    ctx.add(file, top, f"expected tables ([{top}.NAME]), got {describe(value)}")
                    continue
                for name, body in value.items():
                    if not isinstance(body, dict):
                        reason = f"expected a table ([{top}.{name}]), got {describe(body)}"
                        ctx.add(file, f"{top}.{name}", reason)
                    elif name in named:
                        first = named[name].file
                        ctx.add(file, f"{top}.{name}", f"{top} defined again (first in {first})")
                    else:
                        named[name] = Entry(file, body)
            else:
                ctx.add(file, top, unknown_key(top, _TOP_KEYS))
    return merged


def _file_path(t: TableReader, name: str, default: Path | None, example: str) -> Path | None:
    """A path where a file is written: anything but a directory."""
    path = t.path(name, default)
    if t.has(name) and path is not None and path.is_dir():
        t.problem(name, f"{path} is a directory (name the file, e.g. {example})")
    return path


def _dir_path(t: TableReader, name: str, default: Path) -> Path:
    """A directory that may not exist yet, but is not something else."""
    path = t.path(name, default)
    if t.has(name) and path.exists() and not path.is_dir():
        t.problem(name, f"{path} is not a directory")
    return path


# --- [global] -----------------------------------------------------------------------------


def _read_global(merged: _Merged, ctx: ReadContext) -> Global:
    t = merged.reader("global", ctx, _GLOBAL_KEYS)
    workers = t.raw("workers")
    if workers is MISSING:
        workers = _GLOBAL.workers
    elif workers != "auto" and (
        not isinstance(workers, int) or isinstance(workers, bool) or workers < 1
    ):
        t.problem("workers", f'expected an integer >= 1 or "auto", got {describe(workers)}')
        workers = _GLOBAL.workers
    access_log = read_access_log(t, ctx, _GLOBAL.access_log)
    h2_table = t.table("h2", _H2_KEYS)
    return Global(
        workers=workers if isinstance(workers, int) else "auto",
        access_log=access_log,
        access_log_format=read_format(t, _GLOBAL.access_log_format),
        log_time=t.choice("log_time", LOG_TIMES, _GLOBAL.log_time),
        facility=read_facility(t, _GLOBAL.facility),
        http1_parser=t.choice("http1_parser", _HTTP1_PARSERS, _GLOBAL.http1_parser),
        shutdown_timeout=t.duration("shutdown_timeout", _GLOBAL.shutdown_timeout, positive=False),
        header_timeout=t.duration("header_timeout", _GLOBAL.header_timeout),
        keepalive_timeout=t.duration("keepalive_timeout", _GLOBAL.keepalive_timeout),
        max_header_size=t.size("max_header_size", _GLOBAL.max_header_size, _MIN_HEADER_SIZE),
        max_body_size=t.size("max_body_size", _GLOBAL.max_body_size),
        max_buffer_memory=t.size("max_buffer_memory", _GLOBAL.max_buffer_memory),
        buffer_size=t.size("buffer_size", _GLOBAL.buffer_size, _MIN_BUFFER_SIZE, _MAX_BUFFER_SIZE),
        path_escaped_slashes=t.choice(
            "path_escaped_slashes", _ESCAPED_SLASHES, _GLOBAL.path_escaped_slashes
        ),
        underscores_in_headers=t.choice(
            "underscores_in_headers", _UNDERSCORES, _GLOBAL.underscores_in_headers
        ),
        state_dir=t.path("state_dir", _GLOBAL.state_dir),
        watch=t.boolean("watch", _GLOBAL.watch),
        pid_file=_file_path(t, "pid_file", _GLOBAL.pid_file, '"/run/revproxy.pid"'),
        h2=_read_h2(h2_table) if h2_table is not None else _GLOBAL.h2,
        client_ipv6_prefix=t.integer("client_ipv6_prefix", _GLOBAL.client_ipv6_prefix, 1, 128),
        resolvers=tuple(dict.fromkeys(r for _, r in t.strings("resolvers", _parse_resolver))),
    )


def _parse_resolver(value: str) -> tuple[str, int]:
    """``"10.0.0.2:53"``, ``"10.0.0.2"`` (port 53), ``"[fd00::2]:53"``, ``"fd00::2"``."""
    host, port = value, 53
    if value.startswith("[") or value.count(":") == 1:
        host, port = parse_server(value)
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        raise ValueError(
            f'"{value}" is not an IP address with an optional port (write e.g. '
            '"10.0.0.2:53": a resolver named by a host name would need a resolver itself)'
        ) from None


def _read_h2(t: TableReader) -> H2Settings:
    return H2Settings(
        max_concurrent_streams=t.integer(
            "max_concurrent_streams", _H2.max_concurrent_streams, 1, _H2_MAX_31
        ),
        initial_window_size=t.integer(
            "initial_window_size", _H2.initial_window_size, 0, _H2_MAX_31
        ),
        max_frame_size=t.integer(
            "max_frame_size", _H2.max_frame_size, _H2_MIN_FRAME, _H2_MAX_FRAME
        ),
        max_header_list_size=t.size(
            "max_header_list_size", _H2.max_header_list_size, _MIN_HEADER_SIZE, _H2_MAX_32
        ),
        max_resets_per_second=t.integer("max_resets_per_second", _H2.max_resets_per_second, 1),
        max_control_frames_per_second=t.integer(
            "max_control_frames_per_second", _H2.max_control_frames_per_second, 1
        ),
        ping_interval=t.duration("ping_interval", _H2.ping_interval),
        ping_timeout=t.duration("ping_timeout", _H2.ping_timeout),
    )


# --- [admin] and [acme] -------------------------------------------------------------------


def _read_admin(merged: _Merged, ctx: ReadContext) -> tuple[Admin, TableReader]:
    t = merged.reader("admin", ctx, _ADMIN_KEYS)
    socket = _file_path(t, "socket", None, '"/run/revproxy/admin.sock"')
    if socket is not None and len(str(socket).encode()) > _MAX_SOCKET_PATH:
        t.problem(
            "socket",
            f"{socket} is {len(str(socket).encode())} bytes long; a Unix socket path holds at "
            f"most {_MAX_SOCKET_PATH} (pick a shorter one, e.g. /run/revproxy/admin.sock)",
        )
    bind = t.parsed("bind", lambda v: parse_bind(as_str(v)), None)
    auth_table = t.table("auth", _AUTH_KEYS)
    auth = _read_auth(auth_table) if auth_table is not None else None
    if t.has("auth") and not t.has("bind"):
        t.problem(
            "auth",
            "protects the HTTP address, and there is none (set bind, e.g. "
            'bind = "127.0.0.1:8404"; the socket is guarded by its file mode)',
        )
    return Admin(socket=socket, bind=bind, auth=auth), t


def _read_auth(t: TableReader) -> BasicAuth | None:
    user = t.string("user", None, required='write e.g. user = "ops"')
    password = t.string("password", None, required="the password HTTP clients send")
    if user is not None and ":" in user:
        t.problem(
            "user",
            'must not contain ":" (RFC 7617: "a user-id containing a colon character is invalid")',
        )
    if user is None or password is None:
        return None
    return BasicAuth(user=user, password=password)


def _parse_forward(value: object) -> str:
    address, port = parse_server(as_str(value))
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _read_acme(merged: _Merged, ctx: ReadContext) -> tuple[Acme, TableReader]:
    t = merged.reader("acme", ctx, _ACME_KEYS)
    forward = t.parsed("forward", _parse_forward, _ACME.forward)
    webroot = t.path("webroot", _ACME.webroot)
    if t.has("webroot") and webroot is not None and webroot.exists() and not webroot.is_dir():
        t.problem("webroot", f"{webroot} is not a directory")
    if t.has("webroot") and t.has("forward"):
        t.problem(
            "forward",
            "set one of webroot or forward, not both (webroot: challenge answers are files "
            "certbot --webroot writes there; forward: challenges go to certbot --standalone)",
        )
    certbot = t.string("certbot", _ACME.certbot)
    if "/" in certbot:
        certbot = str(ctx.resolve(certbot))
    elif any(c.isspace() for c in certbot):
        t.problem("certbot", f"{describe(certbot)}: write a command name or path, no arguments")
    acme = Acme(
        # With forward set, challenges go to certbot --standalone and webroot is not used.
        webroot=None if t.has("forward") else webroot,
        forward=forward,
        email=t.parsed("email", lambda v: parse_email(as_str(v)), _ACME.email),
        certbot=certbot,
        config_dir=_dir_path(t, "config_dir", _ACME.config_dir),
        work_dir=_dir_path(t, "work_dir", _ACME.work_dir),
        logs_dir=_dir_path(t, "logs_dir", _ACME.logs_dir),
        server=t.parsed("server", lambda v: parse_acme_server(as_str(v)), _ACME.server),
    )
    return acme, t


def _check_admin_and_acme(
    admin: tuple[Admin, TableReader],
    acme: tuple[Acme, TableReader],
    reads: Sequence[ListenerRead],
) -> None:
    (admin_config, admin_t), (acme_config, acme_t) = admin, acme
    if admin_config.bind is not None:
        taken = bound_by(admin_config.bind, reads)
        if taken:
            admin_t.problem("bind", f"{admin_config.bind} clashes with {taken}")
    if acme_config.forward is not None:
        address, port = parse_server(acme_config.forward)
        taken = bound_by(Bind(host=address, port=port), reads)
        if taken:
            acme_t.problem(
                "forward",
                f"{acme_config.forward} is revproxy's own {taken}: challenges would come back "
                'here (certbot --standalone must listen elsewhere, e.g. "127.0.0.1:8081")',
            )


def _check_limits(
    listeners: Sequence[ListenerRead], routes: Sequence[RouteRead], limits: Sequence[Limit]
) -> None:
    by_name = {limit.name: limit for limit in limits}
    for lread in listeners:
        lst = lread.listener
        check_limit_refs(lread.table, lst.limits, by_name, where=f"{lst.mode} listener")
        check_conn_limit(lread.table, lst)
        if lst.mode in EGRESS_MODES:
            _check_egress_limits(lread, by_name)
    for rread in routes:
        route = rread.route
        if route.passthrough and route.limits:
            rread.table.problem(
                "limits",
                "not on a passthrough route: put limits on its listener, where new "
                "connections are counted before the TLS ClientHello is read",
            )
            continue
        check_limit_refs(
            rread.table, route.limits, by_name, where="route", has_auth=route.auth is not None
        )


def _check_egress(
    reads: Sequence[ListenerRead], egress: Sequence[Egress], users: Sequence[Users]
) -> None:
    names = [section.name for section in egress]
    for read in reads:
        check_egress_listener(read.table, read.listener, names, users)


def _check_egress_limits(read: ListenerRead, by_name: Mapping[str, Limit]) -> None:
    """A forward or socks5 listener counts new connections per client, as a tcp one does."""
    lst, t = read.listener, read.table
    for index, name in enumerate(lst.limits):
        limit = by_name.get(name)
        if limit is not None and limit.key.startswith("header:"):
            t.problem_at(
                "limits",
                f"{t.key('limits')}[{index}]",
                f'limit "{name}" counts per {limit.key}; a {lst.mode} listener counts new '
                'connections per client address (key = "client")',
            )
    cl = lst.conn_limit
    if cl is not None and cl.streams_per_client is not None:
        t.problem_at(
            "conn_limit",
            t.key("conn_limit.streams_per_client"),
            "HTTP/2 streams exist on http listeners only (per_client counts connections)",
        )


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
    admin = _read_admin(merged, ctx)
    acme = _read_acme(merged, ctx)
    cache = read_cache_settings(merged.reader("cache", ctx, CACHE_KEYS))
    listener_reads = [read_listener(i, e, ctx) for i, e in enumerate(merged.listeners)]
    route_reads = [read_route(i, e, ctx) for i, e in enumerate(merged.routes)]
    pools = tuple(read_pool(name, entry, ctx) for name, entry in merged.pools.items())
    pools = tuple(add_servers(pools, merged.servers, ctx))
    users = tuple(read_users(name, entry, ctx) for name, entry in merged.users.items())
    limits = tuple(read_limit(name, entry, ctx) for name, entry in merged.limits.items())
    egress = tuple(read_egress(name, entry, ctx) for name, entry in merged.egress.items())
    tunnels = tuple(read_tunnel(name, entry, ctx) for name, entry in merged.tunnels.items())
    listeners = tuple(read.listener for read in listener_reads)
    if complete:
        pool_names = [pool.name for pool in pools]
        check_listeners(listener_reads, pool_names, ctx)
        check_routes(route_reads, listeners, pool_names, users)
        _check_admin_and_acme(admin, acme, listener_reads)
        _check_limits(listener_reads, route_reads, limits)
        _check_egress(listener_reads, egress, users)
        check_tunnels(global_, listeners, pools, tunnels, ctx, egress=egress)
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
        admin=admin[0],
        acme=acme[0],
        users=users,
        limits=limits,
        egress=egress,
        tunnels=tunnels,
        cache=cache,
        files=paths,
    )


def load_config_text(
    files: Sequence[tuple[str, str]],
    *,
    base_dir: Path | None = None,
    check_cert_pair: CertPairCheck | None = None,
) -> Config:
    """(file name, TOML text) pairs, already in order → Config; raises ConfigError.

    Relative paths in the config are resolved against `base_dir` when it is given;
    `check_cert_pair` reads each certificate/key pair (``certs.files.cert_pair_problem``).
    """
    ctx = ReadContext(base_dir, check_cert_pair=check_cert_pair)
    return _load(files, ctx, tuple(Path(name) for name, _ in files))


def load_config(conf_dir: Path, *, check_cert_pair: CertPairCheck | None = None) -> Config:
    """Read conf_dir/*.toml in name order → Config; raises ConfigError with every problem.

    Problems name files as "<conf dir name>/<file name>", e.g. "conf/20-sites.toml".
    `check_cert_pair` reads each certificate/key pair (``certs.files.cert_pair_problem``).
    """
    conf_dir = conf_dir.resolve()
    ctx = ReadContext(conf_dir, check_cert_pair=check_cert_pair)
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
