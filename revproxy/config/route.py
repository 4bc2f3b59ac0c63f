"""``[[route]]`` tables → ``Route``, and the checks routes need the whole config for.

Rule of this room: a route does exactly one thing. An ordinary route matches a request by
host and path (after TLS ends) and sends it to a pool, redirects it or answers it. A
passthrough route matches a TLS connection by the server name of its ClientHello (``sni``),
before anything is decrypted, and relays the bytes to its pool: it has no host, path, redirect
or response, it only applies to TLS listeners, and it is not part of the host/path match
order — so it neither shadows nor is shadowed by ordinary routes in that order. (It does take
every connection for its names, so an ordinary route only for those names on the same TLS
listeners is never used; that is reported.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from revproxy.config.access import ACCESS_KEYS, read_access
from revproxy.config.limits import read_limit_names
from revproxy.config.model import Auth, Listener, Respond, Route, RouteTimeouts, Users
from revproxy.config.reader import Entry, ReadContext, TableReader, defined
from revproxy.config.rules import (
    read_compress,
    read_edits,
    read_error_pages,
    read_match,
    read_prefix,
    read_route_cache,
    read_static,
)
from revproxy.config.users import AUTH_KEYS, read_auth
from revproxy.config.values import (
    as_str,
    describe,
    header_value,
    no_crlf,
    parse_host_pattern,
    parse_sni_pattern,
)
from revproxy.errors import ClientProtocolError
from revproxy.proto.host import host_matches
from revproxy.proto.target import normalize_path

__all__ = ["RouteRead", "check_routes", "read_route"]

# The TOML keys: the field names of config/model.py minus ``index`` and ``source``.
_ROUTE_KEYS = (
    "host", "path", "pool", "redirect", "redirect_status", "respond", "listeners", "sni",
    "passthrough", "normalize_path", "auth", "max_body_size", "timeouts", "limits", "match",
    "request_headers", "response_headers", "strip_prefix", "add_prefix", "error_pages",
    "compress", "cache", "static", *ACCESS_KEYS,
)  # fmt: skip
_ROUTE_TIMEOUT_KEYS = ("response", "idle")
_RESPOND_KEYS = ("status", "body", "content_type")

_REDIRECT_STATUSES = (301, 302, 303, 307, 308)

_ROUTE = Route()
_RESPOND = Respond()


@dataclass
class RouteRead:
    route: Route
    listener_refs: list[tuple[str, str]]  # (key path, listener name)
    sni_refs: list[tuple[str, str]]  # (key path, server name)
    table: TableReader


def _parse_route_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f'"{value}" must start with "/" (write "/{value}")')
    if "?" in value or "#" in value:
        raise ValueError(f'"{value}": paths match without the query or fragment')
    if any(c.isspace() for c in value):
        raise ValueError(f'"{value}" contains white space (write it percent-encoded)')
    try:
        normal = normalize_path(value.encode("latin-1"), reject_escaped=False).decode("latin-1")
    except (ClientProtocolError, UnicodeEncodeError):
        raise ValueError(f'"{value}" is not a valid path (write it percent-encoded)') from None
    if normal != value:
        raise ValueError(
            f'"{value}" never matches: requests are matched on their normalised path '
            f'(write "{normal}")'
        )
    return value


def _parse_redirect(value: str) -> str:
    no_crlf(value)
    if not value.startswith(("https://", "http://", "/")) or " " in value:
        raise ValueError(
            f'"{value}" is not a redirect target (write an absolute URL like '
            '"https://example.org/" or a path starting with "/")'
        )
    return value


def _parse_redirect_status(value: object) -> int:
    if isinstance(value, bool) or value not in _REDIRECT_STATUSES:
        listed = ", ".join(str(status) for status in _REDIRECT_STATUSES)
        raise ValueError(f"expected one of {listed}, got {describe(value)}")
    assert isinstance(value, int)
    return value


def _read_respond(t: TableReader) -> Respond:
    status = t.integer("status", _RESPOND.status, 200, 599)
    body = t.text("body", _RESPOND.body)
    if body and status in (204, 304):
        t.problem("body", f"a {status} response cannot have a body")
    content_type = t.parsed("content_type", header_value, _RESPOND.content_type)
    return Respond(status=status, body=body, content_type=content_type)


def _check_passthrough_keys(t: TableReader, route: Route) -> None:
    if not t.has("sni"):
        t.problem(
            "sni",
            "required on a passthrough route: the TLS server names it takes "
            '(write e.g. sni = ["legacy.example.com"])',
        )
    elif t.raw("sni") == []:
        t.problem("sni", "must name at least one server name")
    if not t.has("pool"):
        t.problem("pool", "required on a passthrough route (the servers that get the TLS bytes)")
    never = "not on a passthrough route: it never decrypts, so it sees no"
    if t.has("host"):
        t.problem("host", f"{never} Host (name the TLS server names in sni)")
    if t.has("path") and route.path != _ROUTE.path:
        t.problem("path", f"{never} path")
    for key in ("redirect", "respond", "static"):
        if t.has(key):
            t.problem(key, "not on a passthrough route: it relays bytes to its pool, never answers")
    for key in _HTTP_RULE_KEYS:
        if t.has(key):
            t.problem(key, "not on a passthrough route: it never decrypts, so it sees no HTTP")
    for key in ACCESS_KEYS:
        if t.has(key):
            t.problem(
                key,
                "not on a passthrough route: put allow/deny on its listener, where they are "
                "checked before the TLS ClientHello is read",
            )


_HTTP_RULE_KEYS = (
    "match", "request_headers", "response_headers", "strip_prefix", "add_prefix", "error_pages",
    "compress", "cache",
)  # fmt: skip
# Which rule keys suit which action (the others are reported).
_RULES_FOR = {
    "pool": frozenset(_HTTP_RULE_KEYS),
    "static": frozenset({"match", "response_headers", "strip_prefix", "error_pages", "compress"}),
    "respond": frozenset({"match", "response_headers", "error_pages"}),
    "redirect": frozenset({"match", "error_pages"}),
}
_WHY_NOT = {
    "request_headers": "nothing is sent to an origin",
    "add_prefix": "nothing is sent to an origin",
    "cache": "only answers from a pool are cached",
    "compress": "only pool and static answers are compressed",
    "strip_prefix": "it only applies to what a pool or static files get",
    "response_headers": "a redirect's headers are its own",
}


def _check_rule_keys(t: TableReader, route: Route, action: str) -> None:
    allowed = _RULES_FOR[action]
    for key in _HTTP_RULE_KEYS:
        if t.has(key) and key not in allowed:
            t.problem(key, f"not on a route with {action}: {_WHY_NOT.get(key, 'unused')}")
    prefix = route.strip_prefix
    if prefix is not None and not (route.path == prefix or route.path.startswith(prefix + "/")):
        t.problem(
            "strip_prefix",
            f'"{prefix}" is not a prefix of the route\'s path "{route.path}" '
            "(requests it matches would not start with it)",
        )


def read_route(index: int, entry: Entry, ctx: ReadContext) -> RouteRead:
    t = TableReader(entry.data, f"route[{index}]", entry.file, ctx, _ROUTE_KEYS)
    hosts = t.strings("host", parse_host_pattern)
    t.unique("host", hosts)
    snis = t.strings("sni", parse_sni_pattern)
    t.unique("sni", snis)
    listeners = t.strings("listeners", str)
    t.unique("listeners", listeners)
    respond_table = t.table("respond", _RESPOND_KEYS)
    redirect: str | None = t.parsed("redirect", lambda v: _parse_redirect(as_str(v)), None)
    access = read_access(t)
    auth_table = t.table("auth", AUTH_KEYS)
    timeouts_table = t.table("timeouts", _ROUTE_TIMEOUT_KEYS)
    route = Route(
        host=tuple(dict.fromkeys(host for _, host in hosts)),
        path=t.parsed("path", lambda v: _parse_route_path(as_str(v)), _ROUTE.path),
        pool=t.string("pool", _ROUTE.pool),
        redirect=redirect,
        redirect_status=t.parsed("redirect_status", _parse_redirect_status, 308),
        respond=_read_respond(respond_table) if respond_table is not None else None,
        listeners=tuple(dict.fromkeys(name for _, name in listeners)),
        sni=tuple(dict.fromkeys(sni for _, sni in snis)),
        passthrough=t.boolean("passthrough", _ROUTE.passthrough),
        normalize_path=t.boolean("normalize_path", _ROUTE.normalize_path),
        allow=access.allow,
        deny=access.deny,
        allow_file=access.allow_file,
        deny_file=access.deny_file,
        auth=read_auth(auth_table) if auth_table is not None else None,
        max_body_size=t.size("max_body_size", 0) if t.has("max_body_size") else None,
        timeouts=(
            RouteTimeouts(
                response=_optional_duration(timeouts_table, "response"),
                idle=_optional_duration(timeouts_table, "idle"),
            )
            if timeouts_table is not None
            else None
        ),
        limits=read_limit_names(t),
        match=read_match(t),
        request_headers=read_edits(t, "request_headers"),
        response_headers=read_edits(t, "response_headers"),
        strip_prefix=read_prefix(t, "strip_prefix"),
        add_prefix=read_prefix(t, "add_prefix"),
        error_pages=read_error_pages(t),
        compress=read_compress(t),
        cache=read_route_cache(t),
        static=read_static(t),
        index=index,
        source=entry.file,
    )
    if route.passthrough:
        _check_passthrough_keys(t, route)
    else:
        if t.has("sni"):
            t.problem(
                "sni",
                "only for passthrough routes (add passthrough = true to relay TLS connections "
                "for these names undecrypted; routes that end TLS match by host)",
            )
        actions = [key for key in ("pool", "redirect", "respond", "static") if t.has(key)]
        if not actions:
            t.problem_here(
                "needs one of pool, redirect, respond or static (what to do with the request)"
            )
        elif len(actions) > 1:
            t.problem_here(f"has {' and '.join(actions)}; a route does exactly one of them")
        else:
            _check_rule_keys(t, route, actions[0])
    if t.has("redirect_status") and not t.has("redirect"):
        t.problem("redirect_status", "only used with redirect")
    return RouteRead(route, listeners, snis, t)


# --- what needs the whole config ----------------------------------------------------------


def check_routes(
    reads: Sequence[RouteRead],
    listeners: Sequence[Listener],
    pools: Sequence[str],
    users: Sequence[Users] = (),
) -> None:
    by_name = {listener.name: listener for listener in listeners}
    for read in reads:
        if read.route.auth is not None:
            _check_auth(read, read.route.auth, {u.name: u for u in users})
    http_names = frozenset(name for name, lst in by_name.items() if lst.mode == "http")
    tls_names = tuple(lst.name for lst in listeners if lst.mode == "http" and lst.tls is not None)
    for read in reads:
        route, t = read.route, read.table
        if route.pool is not None and route.pool not in pools:
            t.problem("pool", f'no pool named "{route.pool}" ({defined("pool", pools)})')
        for key, name in read.listener_refs:
            reason = _listener_ref_problem(route, name, by_name)
            if reason:
                t.problem_at("listeners", key, reason)
        if route.passthrough and not route.listeners and not tls_names:
            t.problem(
                "passthrough",
                "there is no TLS listener to take connections from "
                "(passthrough routes apply to listeners with tls)",
            )
    passthrough = [read for read in reads if read.route.passthrough]
    _check_sni_clashes(passthrough, tls_names)
    ordinary = [read for read in reads if not read.route.passthrough]
    for later_index, later in enumerate(ordinary):
        for earlier in ordinary[:later_index]:
            what = _shadowed(earlier.route, later.route, http_names)
            if what:
                later.table.problem_here(
                    f'never used for {what} and path "{later.route.path}": '
                    f"route[{earlier.route.index}] ({earlier.route.source}) matches them first"
                )
                break
        else:
            taken = _passed_through(later.route, passthrough, http_names, tls_names)
            if taken:
                host, taker = taken
                later.table.problem_here(
                    f'never used for host "{host}": passthrough route[{taker.index}] '
                    f"({taker.source}) relays every TLS connection for it on its listeners"
                )


def _listener_ref_problem(route: Route, name: str, by_name: dict[str, Listener]) -> str:
    listener = by_name.get(name)
    if listener is None:
        return f'no listener named "{name}" ({defined("listener", list(by_name))})'
    if listener.mode != "http":
        kind = "TLS http listeners" if route.passthrough else "http listeners"
        return f'listener "{name}" is a tcp listener; routes apply to {kind}'
    if route.passthrough and listener.tls is None:
        return (
            f'listener "{name}" has no tls; passthrough routes take TLS connections '
            "(name a listener with tls)"
        )
    return ""


def _check_sni_clashes(passthrough: Sequence[RouteRead], tls_names: Sequence[str]) -> None:
    """Two passthrough routes for one server name on one listener: the later never gets it."""
    taken: dict[tuple[str, str], Route] = {}
    for read in passthrough:
        route = read.route
        on = route.listeners or tls_names
        for key, sni in read.sni_refs:
            for name in on:
                first = taken.get((name, sni))
                if first is not None and first is not route:
                    read.table.problem_at(
                        "sni",
                        key,
                        f'"{sni}" is already passed through on listener "{name}" by '
                        f"route[{first.index}] ({first.source})",
                    )
                    break
            for name in on:
                taken.setdefault((name, sni), route)


def _shadowed(earlier: Route, later: Route, http_names: frozenset[str]) -> str | None:
    """What `later` never gets because `earlier` takes it first, if anything.

    Ties keep config order, so a later route with a host and path of an earlier one, on no
    listener the earlier one lacks, never sees those requests. (The same host on different
    listeners, say a redirect on "http" and a pool elsewhere, is a fine setup.)
    """
    if earlier.path != later.path or earlier.match != later.match:
        return None
    if not set(later.listeners or http_names) <= set(earlier.listeners or http_names):
        return None
    if not earlier.host and not later.host:
        return "any host"
    common = [host for host in later.host if host in earlier.host]
    return f'host "{common[0]}"' if common else None


def _passed_through(
    route: Route,
    passthrough: Sequence[RouteRead],
    http_names: frozenset[str],
    tls_names: Sequence[str],
) -> tuple[str, Route] | None:
    """A host of `route` whose TLS connections a passthrough route takes on every listener
    `route` applies to (so the host route never sees a request for it), and that route."""
    on = route.listeners or sorted(http_names)
    if not on or any(name not in tls_names for name in on):
        return None  # used on a plain listener, or a listener reference already reported
    for host in route.host:
        takers: list[Route] = []
        for name in on:
            taker = next(
                (
                    read.route
                    for read in passthrough
                    if name in (read.route.listeners or tls_names)
                    and any(_takes(pattern, host) for pattern in read.route.sni)
                ),
                None,
            )
            if taker is None:
                break
            takers.append(taker)
        else:
            return host, takers[0]
    return None


def _takes(sni: str, host: str) -> bool:
    """Whether a passthrough for `sni` takes every connection a route for `host` could get."""
    if sni == host:
        return True
    return not host.startswith("*.") and host_matches(sni, host)


def _check_auth(read: RouteRead, auth: Auth, users: dict[str, Users]) -> None:
    """The users an ``auth`` names exist, and their file suits the scheme."""
    table = users.get(auth.users)
    if table is None:
        read.table.problem(
            "auth", f'no users named "{auth.users}" ({defined("users", list(users))})'
        )
        return
    if auth.scheme == "basic" and table.kind != "htpasswd":
        read.table.problem(
            "auth",
            f'users "{auth.users}" come from an htdigest file ({table.file}): '
            'use scheme = "digest", or an htpasswd file for "basic"',
        )
    if auth.scheme == "digest":
        if table.kind != "htdigest":
            read.table.problem(
                "auth",
                f'scheme = "digest" needs an htdigest file (user:realm:HA1); users '
                f'"{auth.users}" come from an htpasswd file ({table.file})',
            )
        elif table.entries and not any(e.realm == auth.realm for e in table.entries):
            realms = sorted({e.realm or "" for e in table.entries})
            read.table.problem(
                "auth",
                f'no user of {table.file} is in realm "{auth.realm}" (its realms: '
                + ", ".join(f'"{r}"' for r in realms)
                + "): set realm to one of them",
            )


def _optional_duration(t: TableReader, name: str) -> float | None:
    """A duration when the key is set, None (the pool's) when not."""
    return t.duration(name, 1.0) if t.has(name) else None
