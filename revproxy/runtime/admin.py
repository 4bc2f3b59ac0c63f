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
import logging
import os
import stat
import time
from pathlib import Path
from typing import Any

import h11

from revproxy.config.model import Admin, BasicAuth, Bind
from revproxy.errors import ConfigError, ConfigProblem
from revproxy.runtime.cache_ctl import cache_command
from revproxy.runtime.control import InstanceView
from revproxy.runtime.stats import (
    RateMeter,
    add_instance_gauges,
    certs_table,
    info_text,
    servers_table,
    stats_page,
)
from revproxy.tunnel.hub import Hub
from revproxy.upstream.backend import BackendState

log = logging.getLogger("revproxy.admin")

# A ctl client has this long to send its command line; an HTTP client its request head.
REQUEST_TIMEOUT = 10.0
# Longest command line accepted on the socket.
MAX_COMMAND = 4096

HELP = """\
commands:
  show servers            every server: state, weight, requests, last check
  show certs              certificates served, with their expiry
  show info               instance: generation, processes, reloads; egress listeners:
                          tunnels open, bytes each way, decisions
  show tunnels            agent connections: tunnel, agent, address, since, streams, bytes
  show cache              the response cache of each process: entries, bytes, hits, misses
  show metrics            the Prometheus exposition (as /metrics)
  cache purge HOST[/PFX]  drop stored responses of HOST (* for all) under a path prefix
  drain POOL/SERVER       no new requests; those in flight finish
  disable POOL/SERVER     out of service (maintenance)
  enable POOL/SERVER      back into service (health decides: up or down)
  reload                  load the configuration from disk (all or nothing)
  reload certs            load certificates from disk now
  add server POOL ADDRESS [weight=N] [--persist]
                          a server more, until the next reload (--persist: for good)
  del server POOL SERVER [--persist]
                          a server less (those in flight finish), until the next reload
  reopen-logs             open the access log file again (after logrotate moved it)
servers are named POOL/host:port, or by their name key"""


class AdminServer:
    """The Unix socket and the HTTP endpoint, following ``[admin]`` across reloads."""

    def __init__(self, instance: InstanceView) -> None:
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
                return True, info_text(inst, await inst.collect())
            if what == "tunnels":
                return True, tunnels_table(await tunnel_rows(inst))
            if what == "cache":
                return await cache_command(inst, [])
            if what == "metrics":
                return True, await self.metrics_text()
        if verb == "cache":
            return await cache_command(inst, args)
        if verb in ("drain", "disable", "enable") and len(args) == 1:
            state = {"drain": BackendState.DRAIN, "disable": BackendState.MAINT}.get(verb)
            ok, text = inst.set_admin_state(args[0], state)
            log.info("admin: %s %s: %s", verb, args[0], text)
            return ok, text
        if verb in ("add", "del") and args[:1] == ["server"]:
            ok, text = await inst.edit_servers(verb, args)
            log.info("admin: %s %s: %s", verb, " ".join(args), text.splitlines()[0])
            return ok, text
        if verb == "reload" and not args:
            problems = await inst.reload()
            if problems:
                return False, "reload rejected; nothing changed:\n" + "\n".join(problems)
            gen = inst.generation
            return True, f"reloaded: generation {gen.number if gen else 0}"
        if verb == "reopen-logs" and not args:
            problems = inst.reopen_logs()
            return (False, "\n".join(problems)) if problems else (True, "access log reopened")
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


# --- show tunnels -----------------------------------------------------------------------------

TUNNEL_COLUMNS = [
    "TUNNEL", "AGENT", "ADDRESS", "ROLE", "EXPOSES", "SINCE", "STREAMS", "TOTAL", "IN", "OUT",
    "PROCESS",
]  # fmt: skip


async def tunnel_rows(inst: InstanceView) -> list[dict[str, Any]]:
    """Every agent connection of the instance (``Hub.describe`` rows): each worker's, asked
    over its channel, or the master's own when it serves alone."""
    rows: list[dict[str, Any]] = []
    if inst.workers is not None:
        for answer in await inst.workers.ask_all({"op": "tunnels"}):
            rows.extend(r for r in answer.get("tunnels") or [] if isinstance(r, dict))
    # The serving side of the master (``supervisor.Instance.frontend``): InstanceView does
    # not name it, and a stand-in instance has none.
    hub = getattr(getattr(inst, "frontend", None), "hub", None)
    if isinstance(hub, Hub):
        rows.extend(hub.describe())
    rows.sort(key=lambda r: (str(r.get("tunnel")), str(r.get("worker")), float(r.get("since", 0))))
    return rows


def tunnels_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no agent connections"
    lines = [TUNNEL_COLUMNS]
    for r in rows:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(r.get("since", 0))))
        role = f"{r.get('role', '-')} {r.get('slot', 0)}" + (
            " (draining)" if r.get("draining") else ""
        )
        lines.append(
            [
                str(r.get("tunnel", "-")),
                str(r.get("agent", "-")),
                str(r.get("peer", "-")),
                role,
                ",".join(str(e) for e in r.get("exposes") or ()) or "-",
                since + " UTC",
                str(r.get("streams", 0)),
                str(r.get("streams_total", 0)),
                _bytes(int(r.get("bytes_in", 0))),
                _bytes(int(r.get("bytes_out", 0))),
                f"worker {r.get('worker', '0/1')} pid {r.get('pid', '-')}",
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(TUNNEL_COLUMNS))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def _bytes(n: int) -> str:
    """1536 → "1.5KiB"."""
    if n < 1024:
        return f"{n}B"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024 or unit == "GiB":
            break
    return f"{size:.1f}{unit}"


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
