"""What the admin endpoints show: servers, certificates, the instance, the /stats page, and
the gauges /metrics reads at scrape time.

Rule of this room: read only. Everything here is computed from the instance and what its
serving processes reported (``Instance.collect``) at the moment someone looks; nothing is
kept between looks except the request totals the rates are measured from.
"""

from __future__ import annotations

import html
import os
import time
from collections import deque
from datetime import UTC, datetime

from revproxy.egress.service import TUNNELS_OPEN
from revproxy.ops.metrics import Registry
from revproxy.runtime.control import Collected, InstanceView
from revproxy.upstream.backend import BackendState

# The stats page reloads itself this often (seconds).
STATS_REFRESH = 5
# Request rates are measured over at most this long (seconds).
RATE_WINDOW = 60.0


class RateMeter:
    """Requests per second per key, from totals sampled whenever someone looks."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, dict[str, float]]] = deque()

    def update(self, totals: dict[str, float], now: float | None = None) -> dict[str, float]:
        now = time.monotonic() if now is None else now
        while self._samples and now - self._samples[0][0] > RATE_WINDOW:
            self._samples.popleft()
        rates: dict[str, float] = {}
        if self._samples and now - self._samples[0][0] >= 1.0:
            then, old = self._samples[0]
            for key, value in totals.items():
                rates[key] = max(value - old.get(key, 0.0), 0.0) / (now - then)
        self._samples.append((now, dict(totals)))
        return rates


def _totals(inst: InstanceView, collected: Collected) -> dict[str, float]:
    totals: dict[str, float] = {}
    fam = collected.registry.families.get("revproxy_requests_total")
    if fam is not None:
        for labels, value in fam.values.items():
            key = "listener:" + labels[0]
            totals[key] = totals.get(key, 0.0) + float(value)
    for t in inst.monitor.targets.values():
        live = collected.live.get(t.key)
        if live is not None:
            totals["backend:" + t.backend.label] = float(live[1])
    return totals


def _since(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def _rate(rates: dict[str, float], key: str) -> str:
    return f"{rates[key]:.1f}/s" if key in rates else "-"


def server_rows(
    inst: InstanceView, collected: Collected, rates: dict[str, float]
) -> list[list[str]]:
    now = time.monotonic()
    rows = []
    for t in inst.monitor.targets.values():
        b, rec = t.backend, t.record
        active, total = collected.live.get(t.key, [b.active, b.total])
        check = "-"
        if rec.last_check is not None:
            lc = rec.last_check
            check = f"{'ok' if lc.ok else 'FAIL'} {lc.detail} ({lc.duration * 1000:.0f}ms, "
            check += f"{_since(now - lc.at)} ago)"
        elif t.pool.health is None:
            check = "no active check"
        weight = str(b.weight)
        if b.weight_factor < 1.0:
            weight += f" ({b.weight_factor:.0%} slow start)"
        rows.append(
            [
                b.label,
                rec.state.value + (" (backup)" if b.backup else ""),
                weight,
                str(active),
                str(total),
                _rate(rates, "backend:" + b.label),
                _since(now - rec.changed_at),
                check,
            ]
        )
    return rows


SERVER_COLUMNS = ["SERVER", "STATE", "WEIGHT", "ACTIVE", "TOTAL", "RATE", "SINCE", "LAST CHECK"]


def servers_table(inst: InstanceView, collected: Collected, meter: RateMeter) -> str:
    rates = meter.update(_totals(inst, collected))
    rows = server_rows(inst, collected, rates)
    if not rows:
        return "no servers"
    return _table([SERVER_COLUMNS, *rows])


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def cert_rows(inst: InstanceView) -> list[list[str]]:
    """[listener, names, not after, days left, file] for every certificate served."""
    gen = inst.generation
    rows: list[list[str]] = []
    if gen is None:
        return rows
    now = datetime.now(UTC)
    for name, lrt in gen.listeners.items():
        if lrt.tls is None:
            continue
        for cert in lrt.tls.store.certs:
            days = (cert.not_after - now).total_seconds() / 86400
            rows.append(
                [
                    name,
                    ",".join(cert.names),
                    cert.not_after.strftime("%Y-%m-%d %H:%M UTC"),
                    f"{days:.0f}" if days >= 0 else "EXPIRED",
                    str(cert.cert_path),
                ]
            )
    return rows


def certs_table(inst: InstanceView) -> str:
    rows = cert_rows(inst)
    if not rows:
        return "no certificates"
    return _table([["LISTENER", "NAMES", "NOT AFTER", "DAYS LEFT", "FILE"], *rows])


EGRESS_COLUMNS = [
    "LISTENER", "MODE", "EGRESS", "TUNNELS", "BYTES IN", "BYTES OUT", "ALLOWED", "DENIED",
    "AUTH REFUSED",
]  # fmt: skip
# The egress decisions counted apart from "denied" (revproxy_egress_total's decision label).
_ALLOWED, _AUTH = "allow", "auth"


def egress_rows(inst: InstanceView, collected: Collected) -> list[list[str]]:
    """A row per forward or socks5 listener: its [egress.NAME], tunnels open, bytes from and
    to its clients (requests and tunnels, counted as each ends) and its decisions, summed
    over the serving processes (their metrics, merged in ``collected``)."""
    gen = inst.generation
    if gen is None:
        return []
    families = collected.registry.families

    def values(name: str) -> dict[tuple[str, ...], float]:
        fam = families.get(name)
        return fam.values if fam is not None else {}

    tunnels = values(TUNNELS_OPEN)
    received = values("revproxy_received_bytes_total")
    sent = values("revproxy_sent_bytes_total")
    decisions: dict[str, list[float]] = {}
    for (listener, _user, decision), n in values("revproxy_egress_total").items():
        row = decisions.setdefault(listener, [0, 0, 0])
        row[0 if decision == _ALLOWED else 2 if decision == _AUTH else 1] += n
    rows = []
    for name, lrt in gen.listeners.items():
        lst = lrt.config
        if lst.egress is None:
            continue
        allowed, denied, auth = decisions.get(name, [0, 0, 0])
        rows.append(
            [
                name,
                lst.mode,
                lst.egress,
                f"{tunnels.get((name,), 0):.0f}",
                f"{received.get((name,), 0):.0f}",
                f"{sent.get((name,), 0):.0f}",
                f"{allowed:.0f}",
                f"{denied:.0f}",
                f"{auth:.0f}",
            ]
        )
    return rows


def info_text(inst: InstanceView, collected: Collected | None = None) -> str:
    """The instance; with ``collected``, its egress listeners too (``ctl show info``)."""
    gen = inst.generation
    lines = [
        f"pid: {os.getpid()}",
        f"generation: {gen.number if gen else 0}",
        f"uptime: {_since(time.time() - inst.started_at)}",
        f"processes: {len(inst.workers.pids)} workers {inst.workers.pids}"
        if inst.workers
        else "processes: 1 (no workers)",
        f"reloads: {inst.reloads}",
    ]
    if inst.last_reload is not None:
        when, problems = inst.last_reload
        ago = _since(time.time() - when)
        lines.append(f"last reload: {'rejected' if problems else 'ok'}, {ago} ago")
        lines.extend(f"  {p}" for p in problems)
    rows = egress_rows(inst, collected) if collected is not None else []
    if rows:
        lines.append("egress listeners:")
        lines.extend("  " + line for line in _table([EGRESS_COLUMNS, *rows]).splitlines())
    return "\n".join(lines)


def add_instance_gauges(registry: Registry, inst: InstanceView, collected: Collected) -> None:
    """The gauges read at scrape time: backend states and weights, connections, certs."""
    up = registry.gauge(
        "revproxy_backend_up", "1 when the backend takes new requests.", ("pool", "backend")
    )
    state = registry.gauge(
        "revproxy_backend_state",
        "1 for the state the backend is in (up, down, drain, maint).",
        ("pool", "backend", "state"),
    )
    weight = registry.gauge(
        "revproxy_backend_weight",
        "Weight balancing uses (ramping during slow start).",
        ("pool", "backend"),
    )
    active = registry.gauge(
        "revproxy_backend_active_requests",
        "Requests in flight to the backend.",
        ("pool", "backend"),
    )
    for t in inst.monitor.targets.values():
        labels = (t.pool.name, t.backend.label)
        s = t.record.state
        up.set(labels, 1 if s is BackendState.UP else 0)
        for each in BackendState:
            state.set((*labels, each.value), 1 if each is s else 0)
        weight.set(labels, round(t.backend.weight * min(t.backend.weight_factor, 1.0), 3))
        active.set(labels, collected.live.get(t.key, [0, 0])[0])
    conns = registry.gauge(
        "revproxy_connections_active", "Client connections open, by listener.", ("listener",)
    )
    gen = inst.generation
    if gen is not None:
        for name in gen.listeners:
            conns.set((name,), collected.connections.get(name, 0))
        registry.gauge("revproxy_config_generation", "Number of the configuration serving.").set(
            (), gen.number
        )
        certs = registry.gauge(
            "revproxy_certificate_not_after_seconds",
            "Unix time a served certificate expires, by listener and name.",
            ("listener", "name"),
        )
        for lname, lrt in gen.listeners.items():
            if lrt.tls is None:
                continue
            store = lrt.tls.store
            for cert in store.certs:
                for host in cert.names:
                    if store.lookup(host) is cert:
                        certs.set((lname, host), cert.not_after.timestamp())
    registry.gauge("revproxy_workers", "Worker processes serving (1 = the master serves).").set(
        (), len(inst.workers.pids) if inst.workers else 1
    )
    registry.gauge("revproxy_start_time_seconds", "Unix time the instance started.").set(
        (), inst.started_at
    )


def stats_page(inst: InstanceView, collected: Collected, meter: RateMeter) -> str:
    rates = meter.update(_totals(inst, collected))
    e = html.escape
    gen = inst.generation
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<meta http-equiv='refresh' content='{STATS_REFRESH}'>",
        "<title>revproxy stats</title><style>",
        "body{font:14px system-ui,sans-serif;margin:1.5em}table{border-collapse:collapse;"
        "margin-bottom:1.5em}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}"
        "th{background:#f3f3f3}.up{background:#dfd}.down{background:#fdd}.drain{background:#ffd}"
        ".maint{background:#ddd}.EXPIRED{background:#fdd}",
        "</style></head><body><h1>revproxy</h1>",
        "<pre>" + e(info_text(inst)) + "</pre>",
    ]

    def table(title: str, head: list[str], rows: list[list[str]], cls: int | None = None) -> None:
        parts.append(f"<h2>{e(title)}</h2><table><tr>")
        parts.extend(f"<th>{e(h)}</th>" for h in head)
        parts.append("</tr>")
        for r in rows:
            klass = e(r[cls].split()[0]) if cls is not None and r[cls] else ""
            parts.append(f"<tr class='{klass}'>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>")
        parts.append("</table>")

    if gen is not None:
        lrows = [
            [
                name,
                ", ".join(str(b) for b in lrt.config.bind),
                lrt.config.mode + (" tls" if lrt.tls else ""),
                str(collected.connections.get(name, 0)),
                _rate(rates, "listener:" + name),
            ]
            for name, lrt in gen.listeners.items()
        ]
        table("Listeners", ["LISTENER", "BIND", "MODE", "CONNECTIONS", "REQUESTS"], lrows)
        erows = egress_rows(inst, collected)
        if erows:
            table("Egress", EGRESS_COLUMNS, erows)
        rrows = []
        for r in gen.config.routes:
            target = (r.pool and f"pool {r.pool}") or (r.redirect and f"redirect {r.redirect}")
            rrows.append(
                [
                    str(r.index),
                    ", ".join(r.host) or "*",
                    r.path,
                    target or (f"respond {r.respond.status}" if r.respond else "-"),
                    ", ".join(r.listeners) or "all",
                ]
            )
        table("Routes", ["#", "HOST", "PATH", "TARGET", "LISTENERS"], rrows)
        prow = [
            [
                name,
                pr.config.balance,
                "http " + pr.config.health.path
                if pr.config.health and not pr.config.health.tcp
                else ("tcp" if pr.config.health else "-"),
                str(sum(1 for b in pr.pool.backends if b.available)),
                str(len(pr.pool.backends)),
            ]
            for name, pr in gen.pools.items()
        ]
        table("Pools", ["POOL", "BALANCE", "CHECK", "AVAILABLE", "SERVERS"], prow)
    table("Servers", SERVER_COLUMNS, server_rows(inst, collected, rates), cls=1)
    table("Certificates", ["LISTENER", "NAMES", "NOT AFTER", "DAYS LEFT", "FILE"],
          cert_rows(inst), cls=3)  # fmt: skip
    parts.append("</body></html>")
    return "".join(parts)
