"""agent.toml → one frozen ``AgentConfig`` for ``revproxy agent`` (docs/tunnel.md).

Rule of this room: as for the proxy's configuration — every key read, every problem recorded
with the file, the key path and what to write instead, all of them reported at once
(``ConfigError``); reading starts nothing.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from revproxy.config.reader import MISSING, ReadContext, TableReader
from revproxy.config.values import describe, parse_server
from revproxy.errors import ConfigError, ConfigProblem
from revproxy.proto.tunnel import TunnelFormatError, check_name, parse_destination

__all__ = ["AgentConfig", "Expose", "Forward", "load_agent_config", "read_agent_config"]

_KEYS = (
    "server", "name", "credentials", "connections", "spare", "stream_window", "expose",
    "forward", "ping_interval", "ping_misses",
)  # fmt: skip
_EXPOSE_KEYS = ("name", "target", "mode")
_FORWARD_KEYS = ("listen", "egress", "destination")
_MODES: tuple[Literal["http", "tcp"], ...] = ("http", "tcp")


@dataclass(frozen=True, slots=True, kw_only=True)
class Expose:
    """``[[expose]]``: a local service the proxy's pools may reach as ``NAME/EXPOSE``."""

    name: str
    host: str
    port: int
    # "http": HTTP/1.1 or h2c origin, its streams share the agent's connections; "tcp": any
    # TCP service, each connection gets a tunnel connection of its own.
    mode: str = "http"  # "http" | "tcp"


@dataclass(frozen=True, slots=True, kw_only=True)
class Forward:
    """``[[forward]]``: egress over the tunnel. Connections to ``listen`` on the origin host
    leave from the proxy toward ``destination``, through the proxy's ``[egress.EGRESS]``
    rules (the tunnel's section on the proxy must allow that egress: docs/tunnel.md)."""

    listen: str  # as written
    host: str  # where the agent listens
    port: int
    egress: str
    destination: str  # "HOST:PORT", checked by the proxy

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    servers: tuple[tuple[str, int], ...]  # the proxy instances to keep connections to
    name: str
    credentials: Path  # key, certificate and pinned CA from enrolment
    # Connections kept open to each serving process of each proxy instance.
    connections: int = 2
    # Connections kept ready for mode = "tcp" exposes (each flow takes one), per process.
    spare: int = 2
    stream_window: int = 4 * 1024 * 1024
    ping_interval: float = 10.0
    ping_misses: int = 3
    exposes: tuple[Expose, ...] = ()
    forwards: tuple[Forward, ...] = field(default=())
    source: str = ""

    def expose(self, name: str) -> Expose | None:
        for e in self.exposes:
            if e.name == name:
                return e
        return None


_DEFAULT = AgentConfig(servers=(), name="", credentials=Path())


def _servers(t: TableReader) -> tuple[tuple[str, int], ...]:
    raw = t.raw("server")
    if raw is MISSING:
        t.problem(
            "server", 'required: the proxy to dial (write e.g. server = "edge.example.com:8443")'
        )
        return ()
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items:
        t.problem("server", f'expected "HOST:PORT" or a list of them, got {describe(raw)}')
        return ()
    out: list[tuple[str, int]] = []
    for i, item in enumerate(items):
        key = "server" if isinstance(raw, str) else f"server[{i}]"
        if not isinstance(item, str):
            t.ctx.add(t.file, key, f'expected "HOST:PORT", got {describe(item)}')
            continue
        try:
            out.append(parse_server(item))
        except ValueError as exc:
            t.ctx.add(t.file, key, str(exc))
    return tuple(out)


def _exposes(t: TableReader) -> tuple[Expose, ...]:
    out: list[Expose] = []
    seen: set[str] = set()
    for e in t.tables("expose", _EXPOSE_KEYS):
        name = e.string("name", "", required='e.g. name = "web"')
        target = e.string("target", "", required='e.g. target = "127.0.0.1:8080"')
        mode = e.choice("mode", _MODES, "http")
        if name:
            try:
                check_name("expose", name)
            except TunnelFormatError as exc:
                e.problem("name", str(exc))
            if name in seen:
                e.problem("name", f'expose "{name}" is declared twice')
            seen.add(name)
        if not target:
            continue
        try:
            host, port = parse_server(target)
        except ValueError as value_error:
            e.problem("target", str(value_error))
            continue
        out.append(Expose(name=name, host=host, port=port, mode=mode))
    return tuple(out)


def _forwards(t: TableReader) -> tuple[Forward, ...]:
    out: list[Forward] = []
    seen: set[tuple[str, int]] = set()
    for f in t.tables("forward", _FORWARD_KEYS):
        listen = f.string("listen", "", required='e.g. listen = "127.0.0.1:5432"')
        egress = f.string("egress", "", required='the proxy\'s [egress.NAME], e.g. "partners"')
        destination = f.string("destination", "", required='e.g. "db.example.com:5432"')
        ok = bool(listen and egress and destination)
        if egress:
            try:
                check_name("egress", egress)
            except TunnelFormatError as exc:
                f.problem("egress", str(exc))
                ok = False
        if destination:
            try:
                parse_destination(destination)
            except TunnelFormatError as exc:
                f.problem("destination", str(exc))
                ok = False
        host, port = "", 0
        if listen:
            try:
                host, port = parse_server(listen)
            except ValueError as value_error:
                f.problem("listen", str(value_error))
                ok = False
            else:
                if (host, port) in seen:
                    f.problem("listen", f'"{listen}" is used by another [[forward]]')
                    ok = False
                seen.add((host, port))
        if ok:
            out.append(
                Forward(listen=listen, host=host, port=port, egress=egress, destination=destination)
            )
    return tuple(out)


def read_agent_config(data: dict[str, object], file: str, ctx: ReadContext) -> AgentConfig:
    t = TableReader(data, "", file, ctx, _KEYS)
    name = t.string("name", "", required='the tunnel this agent is enrolled as, e.g. name = "home"')
    if name:
        try:
            check_name("tunnel", name)
        except TunnelFormatError as exc:
            t.problem("name", str(exc))
    credentials = t.path(
        "credentials",
        None,
        required='where enrolment keeps the key (e.g. "/var/lib/revproxy-agent")',
    )
    exposes = _exposes(t)
    if not exposes and t.raw("expose") is MISSING and t.raw("forward") is MISSING:
        t.problem(
            "expose",
            'nothing to expose or forward (add [[expose]] name = "web", target = "127.0.0.1:8080")',
        )
    return AgentConfig(
        servers=_servers(t),
        name=name,
        credentials=credentials or Path(),
        connections=t.integer("connections", _DEFAULT.connections, 1, 64),
        spare=t.integer("spare", _DEFAULT.spare, 0, 64),
        stream_window=t.size("stream_window", _DEFAULT.stream_window, 65535, 2**31 - 1),
        ping_interval=t.duration("ping_interval", _DEFAULT.ping_interval),
        ping_misses=t.integer("ping_misses", _DEFAULT.ping_misses, 1, 100),
        exposes=exposes,
        forwards=_forwards(t),
        source=file,
    )


def load_agent_config(path: Path) -> AgentConfig:
    """Read agent.toml; relative paths are resolved against its folder. Raises ConfigError
    with every problem."""
    shown = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigProblem(shown, "", f"cannot read: {exc}")]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as toml_error:
        raise ConfigError([ConfigProblem(shown, "", f"TOML syntax error: {toml_error}")]) from None
    ctx = ReadContext(path.resolve().parent)
    config = read_agent_config(data, shown, ctx)
    if ctx.problems:
        raise ConfigError(ctx.problems)
    return config
