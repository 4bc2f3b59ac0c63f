"""The admin endpoints: a Unix socket for ``revproxy ctl``, and HTTP ``/metrics`` and ``/stats``.

Rule of this room: the admin reads the instance and asks it to act; it never edits a
generation itself. Backend states change through the health monitor (``set_admin_state``),
configurations through ``Instance.reload``. The socket (``[admin] socket``, mode 0660) takes
one command line per connection and answers ``ok`` or ``error`` on the first line, then text.
The HTTP side (``[admin] bind``, optional basic auth) answers GET only, one request per
connection. Label values on /metrics come from the configuration, never from clients.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import html
import logging
import os
import stat
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import h11

from revproxy.config import Admin, BasicAuth, Bind
from revproxy.errors import ConfigError, ConfigProblem
from revproxy.metrics import Registry
from revproxy.pool import BackendState

if TYPE_CHECKING:
    from revproxy.supervisor import Collected, Instance

log = logging.getLogger("revproxy.admin")

# A ctl client has this long to send its command line; an HTTP client its request head.
REQUEST_TIMEOUT = 10.0
# Longest command line accepted on the socket.
MAX_COMMAND = 4096
# The stats page reloads itself this often (seconds).
STATS_REFRESH = 5
# Request rates are measured over at most this long (seconds).
RATE_WINDOW = 60.0

HELP = """\
commands:
  show servers            every server: state, weight, requests, last check
  show certs              certificates served, with their expiry
  show info               instance: generation, processes, reloads
  show metrics            the Prometheus exposition (as /metrics)
  drain POOL/SERVER       no new requests; those in flight finish
  disable POOL/SERVER     out of service (maintenance)
  enable POOL/SERVER      back into service (health decides: up or down)
  reload                  load the configuration from disk (all or nothing)
  reload certs            load certificates from disk now
servers are named POOL/host:port, or by their name key"""


class AdminServer:
    """The Unix socket and the HTTP endpoint, following ``[admin]`` across reloads."""

    def __init__(self, instance: Instance) -> None:
        self.instance = instance
        self.config = Admin()
        self._socket: tuple[Path, asyncio.AbstractServer] | None = None
        self._http: tuple[Bind, asyncio.AbstractServer] | None = None
        self._retire: list[tuple[asyncio.AbstractServer, Path | None]] = []
        self.rates = RateMeter()

    # --- following the configuration

    async def prepare(self, cfg: Admin) -> None:
        """Open what ``cfg`` adds or moves (ConfigError if it cannot, and then nothing
        changed); what it replaces or drops is closed by ``commit``."""
        opened_socket: tuple[Path, asyncio.AbstractServer] | None = None
        opened_http: tuple[Bind, asyncio.AbstractServer] | None = None
        try:
            if cfg.socket is not None and (self._socket is None or self._socket[0] != cfg.socket):
                opened_socket = (cfg.socket, await self._open_socket(cfg.socket))
            if cfg.bind is not None and (self._http is None or self._http[0] != cfg.bind):
                opened_http = (cfg.bind, await self._open_http(cfg.bind))
        except BaseException:
            if opened_socket is not None:
                await _close_server(opened_socket[1], opened_socket[0])
            raise
        if self._socket is not None and (cfg.socket is None or opened_socket is not None):
            self._retire.append((self._socket[1], self._socket[0]))
            self._socket = None
        if self._http is not None and (cfg.bind is None or opened_http is not None):
            self._retire.append((self._http[1], None))
            self._http = None
        self._socket = opened_socket or self._socket
        self._http = opened_http or self._http
        self.config = cfg
        if self.instance.generation is None:
            self.commit()  # at start there is nothing to keep serving meanwhile

    def commit(self) -> None:
        retire, self._retire = self._retire, []
        for server, path in retire:
            asyncio.get_running_loop().create_task(_close_server(server, path))

    async def _open_http(self, bind: Bind) -> asyncio.AbstractServer:
        try:
            server = await asyncio.start_server(
                self._serve_http, bind.host or None, bind.port, reuse_address=True
            )
        except OSError as exc:
            raise _problem("admin.bind", f"cannot bind {bind}: {exc.strerror or exc}") from None
        log.info("admin HTTP on %s (/metrics, /stats)", bind)
        return server

    async def _open_socket(self, path: Path) -> asyncio.AbstractServer:
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise _problem("admin.socket", f"{path} exists and is not a socket")
            if await _socket_answers(path):
                raise _problem("admin.socket", f"{path} is in use by another running instance")
            path.unlink()  # left behind by an instance that died
        try:
            server = await asyncio.start_unix_server(self._serve_ctl, path=str(path))
            os.chmod(path, 0o660)
        except OSError as exc:
            raise _problem(
                "admin.socket", f"cannot listen on {path}: {exc.strerror or exc}"
            ) from None
        log.info("admin socket %s", path)
        return server

    async def close(self) -> None:
        self.commit()
        if self._socket is not None:
            await _close_server(self._socket[1], self._socket[0])
        if self._http is not None:
            await _close_server(self._http[1], None)
        self._socket = self._http = None

    # --- the ctl socket

    async def _serve_ctl(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                line = await reader.readline()
            if len(line) > MAX_COMMAND:
                ok, text = False, "command too long"
            else:
                ok, text = await self.execute(line.decode("utf-8", "replace").strip())
            writer.write((("ok" if ok else "error") + "\n" + text.rstrip("\n") + "\n").encode())
            await writer.drain()
        except (TimeoutError, ConnectionError, ValueError):
            pass
        except Exception:
            log.exception("admin command failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def execute(self, line: str) -> tuple[bool, str]:
        """Run one command line; (succeeded, text for the operator)."""
        words = line.split()
        if not words or words[0] in ("help", "?"):
            return True, HELP
        verb, args = words[0].lower(), words[1:]
        inst = self.instance
        if verb == "show" and args:
            what = args[0].lower()
            if what == "servers":
                return True, servers_table(inst, await inst.collect(), self.rates)
            if what == "certs":
                return True, certs_table(inst)
            if what == "info":
                return True, info_text(inst)
            if what == "metrics":
                return True, await self.metrics_text()
        if verb in ("drain", "disable", "enable") and len(args) == 1:
            state = {"drain": BackendState.DRAIN, "disable": BackendState.MAINT}.get(verb)
            ok, text = inst.set_admin_state(args[0], state)
            log.info("admin: %s %s: %s", verb, args[0], text)
            return ok, text
        if verb == "reload" and not args:
            problems = await inst.reload()
            if problems:
                return False, "reload rejected; nothing changed:\n" + "\n".join(problems)
            gen = inst.generation
            return True, f"reloaded: generation {gen.number if gen else 0}"
        if verb == "reload" and args == ["certs"]:
            problems = await inst.reload_certs()
            if problems:
                return False, "\n".join(problems)
            return True, "certificates reloaded"
        return False, f"unknown command {line!r}\n{HELP}"

    # --- HTTP: /metrics and /stats

    async def _serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16384)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                request = await _read_request(conn, reader)
            if request is None:
                return
            status, headers, body = await self._answer(request)
            headers = [
                *headers,
                ("content-length", str(len(body))),
                ("cache-control", "no-store"),
                ("connection", "close"),
            ]
            out = conn.send(h11.Response(status_code=status, headers=headers))
            if request.method != b"HEAD":
                out += conn.send(h11.Data(data=body))
            out += conn.send(h11.EndOfMessage())
            writer.write(out)
            await writer.drain()
        except (TimeoutError, ConnectionError, h11.ProtocolError):
            pass
        except Exception:
            log.exception("admin HTTP request failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, req: h11.Request) -> tuple[int, list[tuple[str, str]], bytes]:
        auth = self.config.auth
        if auth is not None and not _authorized(req, auth):
            return (
                401,
                [
                    ("www-authenticate", 'Basic realm="revproxy admin"'),
                    ("content-type", "text/plain"),
                ],
                b"401 Unauthorized\n",
            )
        if req.method not in (b"GET", b"HEAD"):
            return 405, [("allow", "GET, HEAD"), ("content-type", "text/plain")], b"405\n"
        path = req.target.split(b"?", 1)[0]
        if path == b"/metrics":
            text = await self.metrics_text()
            return (
                200,
                [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                text.encode(),
            )
        if path in (b"/stats", b"/stats/"):
            page = stats_page(self.instance, await self.instance.collect(), self.rates)
            return 200, [("content-type", "text/html; charset=utf-8")], page.encode()
        if path == b"/":
            return 302, [("location", "/stats"), ("content-type", "text/plain")], b"/stats\n"
        return 404, [("content-type", "text/plain")], b"404 Not Found\n"

    async def metrics_text(self) -> str:
        collected = await self.instance.collect()
        add_instance_gauges(collected.registry, self.instance, collected)
        return str(collected.registry.render())


# --- what the endpoints show -------------------------------------------------------------------


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


def _totals(inst: Instance, collected: Collected) -> dict[str, float]:
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


def server_rows(inst: Instance, collected: Collected, rates: dict[str, float]) -> list[list[str]]:
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


def servers_table(inst: Instance, collected: Collected, meter: RateMeter) -> str:
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


def cert_rows(inst: Instance) -> list[list[str]]:
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


def certs_table(inst: Instance) -> str:
    rows = cert_rows(inst)
    if not rows:
        return "no certificates"
    return _table([["LISTENER", "NAMES", "NOT AFTER", "DAYS LEFT", "FILE"], *rows])


def info_text(inst: Instance) -> str:
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
    return "\n".join(lines)


def add_instance_gauges(registry: Registry, inst: Instance, collected: Collected) -> None:
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


def stats_page(inst: Instance, collected: Collected, meter: RateMeter) -> str:
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


# --- small pieces ------------------------------------------------------------------------------


def _problem(key: str, reason: str) -> ConfigError:
    return ConfigError([ConfigProblem("", key, reason)])


async def _socket_answers(path: Path) -> bool:
    try:
        async with asyncio.timeout(1.0):
            _, writer = await asyncio.open_unix_connection(str(path))
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


async def _close_server(server: asyncio.AbstractServer, path: Path | None) -> None:
    server.close()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(1.0):
            await server.wait_closed()
    if path is not None:
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(path.lstat().st_mode):
                path.unlink()


async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Request | None:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(65536)
            conn.receive_data(data)
            if not data and conn.their_state is h11.IDLE:
                return None
            continue
        if isinstance(event, h11.Request):
            return event
        return None


def _authorized(req: h11.Request, auth: BasicAuth) -> bool:
    for name, value in req.headers:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() != b"basic":
                return False
            try:
                user, _, password = base64.b64decode(token.strip(), validate=True).partition(b":")
            except ValueError:
                return False
            ok_user = hmac.compare_digest(user, auth.user.encode())
            ok_password = hmac.compare_digest(password, auth.password.encode())
            return ok_user and ok_password
    return False


# --- the client side: revproxy ctl / reload ------------------------------------------------------


async def send_command(path: Path, line: str, timeout: float = 120.0) -> tuple[bool, str]:
    """Send one command to a running instance's socket; (ok, text). OSError if none answers."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_unix_connection(str(path))
        try:
            writer.write(line.encode() + b"\n")
            await writer.drain()
            data = await reader.read()
        finally:
            writer.close()
    status, _, text = data.decode("utf-8", "replace").partition("\n")
    return status == "ok", text.rstrip("\n")
