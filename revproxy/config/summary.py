"""What `revproxy check` prints about a loaded ``Config``.

Rule of this room: it shows what the proxy will do, not what the files say — defaults filled
in, routes in the order the router tries them, listeners with what they actually answer
(ACME challenges on a plain port-80 listener even when the file does not say so). It reads a
valid ``Config`` and never judges it; judging is ``config/load.py``'s.
"""

from __future__ import annotations

import json

from revproxy.config.listener import answers_acme
from revproxy.config.model import Config, Listener, Pool, Route
from revproxy.config.values import format_duration, format_size

__all__ = ["summary"]


def _global_lines(config: Config) -> list[str]:
    g = config.global_
    line = (
        f"global: workers {g.workers}; access log {g.access_log} ({g.access_log_format}); "
        f"http1 parser {g.http1_parser}; header timeout {format_duration(g.header_timeout)}; "
        f"keepalive timeout {format_duration(g.keepalive_timeout)}; "
        f"max header size {format_size(g.max_header_size)}; max body size "
        f"{format_size(g.max_body_size) if g.max_body_size else 'unlimited'}; "
        f"watch conf: {'on' if g.watch else 'off'}"
    )
    if g.pid_file is not None:
        line += f"; pid file {g.pid_file}"
    lines = [line]
    offers_h2 = any(
        lst.h2c or (lst.tls is not None and "h2" in lst.tls.alpn) for lst in config.listeners
    )
    if offers_h2:
        h2 = g.h2
        lines.append(
            f"http/2 to clients: max {h2.max_concurrent_streams} streams; "
            f"window {format_size(h2.initial_window_size)}; "
            f"max frame {format_size(h2.max_frame_size)}; "
            f"max header list {format_size(h2.max_header_list_size)}; "
            f"GOAWAY over {h2.max_resets_per_second} resets/s "
            f"or {h2.max_control_frames_per_second} control frames/s; "
            f"ping after {format_duration(h2.ping_interval)} idle, "
            f"timeout {format_duration(h2.ping_timeout)}"
        )
    return lines


def _admin_line(config: Config) -> str:
    admin = config.admin
    facts = [f"socket {admin.socket}"] if admin.socket is not None else []
    if admin.bind is not None:
        auth = f"basic auth, user {json.dumps(admin.auth.user)}" if admin.auth else "no auth"
        facts.append(f"http on {admin.bind} ({auth})")
    return "admin: " + ("; ".join(facts) or "off")


def _acme_line(config: Config) -> str:
    acme = config.acme
    names = [lst.name for lst in config.listeners if answers_acme(lst)]
    if not names:
        return "acme: no listener answers HTTP-01 challenges"
    facts = [f"challenges answered on {', '.join(names)}"]
    if acme.forward is not None:
        facts.append(f"forwarded to certbot --standalone on {acme.forward}")
    else:
        facts.append(f"webroot {acme.webroot}")
    facts.append(f"certbot {acme.certbot}")
    if acme.email:
        facts.append(f"email {acme.email}")
    facts.append(f"server {acme.server or 'certbot default'}")
    return "acme: " + "; ".join(facts)


def _listener_line(listener: Listener, config: Config) -> str:
    facts = [f"{listener.mode} on {', '.join(str(bind) for bind in listener.bind)}"]
    if listener.tls is not None:
        tls = listener.tls
        sources = [f"certificates in {tls.cert_dir}"] if tls.cert_dir else []
        sources += [f"certificate {pair.cert}" for pair in tls.certs]
        facts.append(
            f"tls ({'; '.join(sources) or 'generated certificate only'}; "
            f"unknown sni: {tls.unknown_sni}; alpn: {', '.join(tls.alpn) or 'none'})"
        )
    if listener.h2c:
        facts.append("h2c (HTTP/2 without TLS)")
    if answers_acme(listener):
        default = "" if listener.acme is not None else " (port 80)"
        facts.append(f"answers ACME challenges{default}")
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
    if listener.max_conns is not None:
        facts.append(f"max {listener.max_conns} connections")
    if listener.pool:
        facts.append(f"to pool {listener.pool}")
    return f"  {listener.name}: " + "; ".join(facts)


def _match_order(route: Route, host: str) -> tuple[int, int, int, int, int]:
    """Exact hosts, then wildcards (longer first), then any host; then longer paths; then
    more match conditions; then config order. routing.py owns matching; this mirrors its
    order for the summary."""
    kind = 2 if not host else 1 if host.startswith("*.") else 0
    conditions = route.match.conditions if route.match is not None else 0
    return (kind, -len(host), -len(route.path), -conditions, route.index)


def _route_action(route: Route) -> str:
    if route.pool is not None:
        return f"pool {route.pool}"
    if route.redirect is not None:
        return f"redirect {route.redirect_status} {route.redirect}"
    if route.static is not None:
        return f"static {route.static.root}"
    assert route.respond is not None
    return f"respond {route.respond.status}"


def _route_conditions(route: Route) -> str:
    m = route.match
    if m is None:
        return ""
    parts = []
    if m.methods:
        parts.append("method " + "|".join(m.methods))
    for kind, fields in (("header", m.headers), ("query", m.query)):
        for f in fields:
            options = [*f.values, *(f"~{p}" for p in f.patterns)]
            parts.append(f"{kind} {f.name}=" + "|".join(options))
    if m.src:
        parts.append("src " + ",".join(str(n) for n in m.src))
    return " if " + " and ".join(parts)


_RULE_KEYS = (
    "request_headers", "response_headers", "strip_prefix", "add_prefix", "error_pages",
    "compress", "cache",
)  # fmt: skip


def _route_rules(route: Route) -> str:
    names = [key for key in _RULE_KEYS if getattr(route, key)]
    return f" ({', '.join(names)})" if names else ""


def _route_lines(config: Config) -> list[str]:
    routes = [route for route in config.routes if not route.passthrough]
    entries = sorted(
        ((route, host) for route in routes for host in route.host or ("",)),
        key=lambda entry: _match_order(*entry),
    )
    lines = [
        f"routes ({len(routes)}; one line per host, in match order: exact hosts, "
        "wildcards, any host; longer paths first; more match conditions first; then config "
        "order):"
    ]
    for number, (route, host) in enumerate(entries, 1):
        only = f" (listeners: {', '.join(route.listeners)})" if route.listeners else ""
        lines.append(
            f"  {number}. {host or '(any host)'} {route.path}{_route_conditions(route)} -> "
            f"{_route_action(route)}{_route_rules(route)}{only}  "
            f"[route[{route.index}] in {route.source}]"
        )
    passthrough = [route for route in config.routes if route.passthrough]
    if passthrough:
        # Exact names before wildcards, as for hosts; they are looked up before TLS ends.
        by_sni = sorted(
            ((route, sni) for route in passthrough for sni in route.sni),
            key=lambda entry: _match_order(entry[0], entry[1]),
        )
        every_tls = ", ".join(lst.name for lst in config.listeners if lst.tls is not None)
        lines.append(
            f"passthrough (by SNI; {len(passthrough)} route{'s' if len(passthrough) > 1 else ''}"
            "; TLS relayed undecrypted, before any host route):"
        )
        for route, sni in by_sni:
            on = ", ".join(route.listeners) or every_tls
            lines.append(
                f"  {sni} -> pool {route.pool} (listeners: {on})"
                f"  [route[{route.index}] in {route.source}]"
            )
    return lines


def _pool_lines(pool: Pool, used: bool) -> list[str]:
    facts: list[str] = [pool.balance]
    if pool.protocol != "http1" or pool.tls is not None:
        facts.append(f"{pool.protocol} {'over TLS' if pool.tls else 'in clear text'}")
    if pool.tls is not None:
        tls = pool.tls
        checks = f"verify with {tls.ca or 'system CAs'}" if tls.verify else "verify off"
        shown = f"; client certificate {tls.cert}" if tls.cert else ""
        facts.append(f"tls (sni {tls.sni or 'from the server address'}; {checks}{shown})")
    if pool.send_proxy:
        facts.append(f"sends PROXY {pool.send_proxy}")
    if pool.slow_start:
        facts.append(f"slow start {format_duration(pool.slow_start)}")
    if not used:
        facts.append("not used by any route or listener")
    lines = [f"  {pool.name}: {'; '.join(facts)}"]
    health = pool.health
    if health is not None:
        what = (
            "tcp connect"
            if health.tcp
            else f"GET {health.path}{f' (Host {health.host})' if health.host else ''} "
            f"expecting {health.expect}"
        )
        lines.append(
            f"    health: {what} every {format_duration(health.interval)}, "
            f"timeout {format_duration(health.timeout)}; "
            f"up after {health.rise}, down after {health.fall}"
        )
    passive = pool.passive
    if passive is None:
        lines.append("    passive checks: off")
    else:
        lines.append(
            f"    passive checks: down after {passive.failures} failures in a row, "
            f"for {format_duration(passive.cooldown)}"
        )
    for server in pool.servers:
        server_facts = [f"weight {server.weight}"]
        if server.backup:
            server_facts.append("backup")
        if server.max_conns is not None:
            server_facts.append(f"max_conns {server.max_conns}")
        name = f" ({server.name})" if server.name else ""
        lines.append(f"    {server}{name}: {', '.join(server_facts)}")
    return lines


def summary(config: Config) -> str:
    """What `revproxy check` prints: global settings, admin and ACME, listeners, routes in
    match order, passthrough routes by SNI, pools with their checks and servers."""
    lines = [f"files: {', '.join(str(path) for path in config.files)}"]
    lines += _global_lines(config)
    lines += [_admin_line(config), _acme_line(config)]
    lines.append(f"listeners ({len(config.listeners)}):")
    lines += [_listener_line(listener, config) for listener in config.listeners]
    lines += _route_lines(config)
    used = {route.pool for route in config.routes} | {lst.pool for lst in config.listeners}
    lines.append(f"pools ({len(config.pools)}):")
    for pool in config.pools:
        lines += _pool_lines(pool, pool.name in used)
    lines += _limit_lines(config)
    return "\n".join(lines)


def _limit_lines(config: Config) -> list[str]:
    """Each ``[limit.NAME]`` with what it means and where it applies."""
    if not config.limits:
        return []
    lines = [f"limits ({len(config.limits)}):"]
    for lim in config.limits:
        where = [f"listener {lst.name}" for lst in config.listeners if lim.name in lst.limits]
        where += [f"route[{r.index}]" for r in config.routes if lim.name in r.limits]
        facts = [
            f"{lim.requests} per {format_duration(lim.period)}"
            + (f" + burst {lim.burst}" if lim.burst else ""),
            f"per {lim.key}",
            "refuses with 429" if lim.action == "reject" else "logs only (dry run)",
            f"counted in {_without_password(lim.store)} (on store error: {lim.on_store_error})"
            if lim.store
            else "counted by this instance",
            f"on {', '.join(where)}" if where else "not used by any listener or route",
        ]
        lines.append(f"  {lim.name}: {'; '.join(facts)}")
    return lines


def _without_password(url: str) -> str:
    """A store URL as printed: any user and password before "@" left out."""
    scheme, sep, rest = url.partition("://")
    at = rest.rfind("@")
    return f"{scheme}{sep}{rest[at + 1 :]}" if at >= 0 else url
