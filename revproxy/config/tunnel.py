"""``[tunnel.NAME]`` tables → ``Tunnel``, the ``{ tunnel = "NAME/EXPOSE" }`` server form, and
what the reverse tunnel needs of the whole configuration (docs/tunnel.md).

Rule of this room: a tunnel section says who may register (agents whose certificate names
NAME); a pool reaches an agent's expose by its path. What needs the whole config — every
tunnel server names a section, a section has somewhere to dial in, the CA has a home — is
``check_tunnels``'s, with the key path of each problem.
"""

from __future__ import annotations

from collections.abc import Sequence

from revproxy.config.model import Egress, Global, Listener, Pool, Tunnel
from revproxy.config.reader import Entry, ReadContext, TableReader, defined
from revproxy.proto.tunnel import TunnelFormatError, check_name

__all__ = [
    "TUNNEL_KEYS",
    "check_tunnels",
    "parse_tunnel_path",
    "read_tunnel",
    "tunnel_egress_problems",
]

TUNNEL_KEYS = ("stream_window", "max_streams", "ping_interval", "ping_misses", "egress")
_TUNNEL = Tunnel(name="")
# RFC 9113 §6.9.1: a window is at most 2^31 - 1.
_MAX_WINDOW = 2**31 - 1


def parse_tunnel_path(value: str) -> tuple[str, str]:
    """ "home/web" → ("home", "web"): the tunnel's name and the expose of its agents."""
    name, sep, expose = value.partition("/")
    if not sep:
        raise ValueError(
            f'"{value}" is not NAME/EXPOSE (write e.g. tunnel = "home/web": the expose "web" '
            'of the agents enrolled as "home")'
        )
    try:
        check_name("tunnel", name)
        check_name("expose", expose)
    except TunnelFormatError as exc:
        raise ValueError(str(exc)) from None
    return name, expose


def read_tunnel(name: str, entry: Entry, ctx: ReadContext) -> Tunnel:
    t = TableReader(entry.data, f"tunnel.{name}", entry.file, ctx, TUNNEL_KEYS)
    try:
        check_name("tunnel", name)
    except TunnelFormatError as exc:
        t.problem_here(f"{exc} (e.g. [tunnel.home])")
    return Tunnel(
        name=name,
        stream_window=t.size("stream_window", _TUNNEL.stream_window, 65535, _MAX_WINDOW),
        max_streams=t.integer("max_streams", _TUNNEL.max_streams, 1, 10000),
        ping_interval=t.duration("ping_interval", _TUNNEL.ping_interval),
        ping_misses=t.integer("ping_misses", _TUNNEL.ping_misses, 1, 100),
        egress=_egress_names(t),
        source=entry.file,
    )


def _egress_names(t: TableReader) -> tuple[str, ...]:
    """``egress = ["partners"]``: the sections its agents' ``[[forward]]``s may use."""
    names = t.strings("egress", _egress_name)
    t.unique("egress", names)
    return tuple(dict.fromkeys(name for _, name in names))


def _egress_name(value: str) -> str:
    if not value:
        raise ValueError('an [egress.NAME] section name, e.g. "partners"')
    return value


def tunnel_egress_problems(
    tunnels: Sequence[Tunnel], egress: Sequence[Egress]
) -> list[tuple[str, str, str]]:
    """(file, key path, reason) for each ``[tunnel.NAME] egress`` naming no ``[egress.*]``."""
    known = [e.name for e in egress]
    out: list[tuple[str, str, str]] = []
    for t in tunnels:
        for i, name in enumerate(t.egress):
            if name not in known:
                out.append(
                    (
                        t.source,
                        f"tunnel.{t.name}.egress[{i}]",
                        f'no egress named "{name}" ({defined("egress", known)})',
                    )
                )
    return out


def check_tunnels(
    global_: Global,
    listeners: Sequence[Listener],
    pools: Sequence[Pool],
    tunnels: Sequence[Tunnel],
    ctx: ReadContext,
    egress: Sequence[Egress] | None = None,
) -> None:
    """What needs the whole configuration (``egress``: the ``[egress.*]`` sections, to check
    the names ``[tunnel.NAME] egress`` lists; None: not checked here)."""
    names = [t.name for t in tunnels]
    if egress is not None:
        for file, key, reason in tunnel_egress_problems(tunnels, egress):
            ctx.add(file, key, reason)
    used = False
    for pool in pools:
        for i, server in enumerate(pool.servers):
            if server.tunnel is None:
                continue
            used = True
            name = server.tunnel.partition("/")[0]
            if name not in names:
                ctx.add(
                    pool.source,
                    f"pool.{pool.name}.servers[{i}].tunnel",
                    f'no tunnel named "{name}" ({defined("tunnel", names)}; '
                    f"add [tunnel.{name}] to let its agents register)",
                )
    dial_in = [lst for lst in listeners if lst.mode == "tunnel" or lst.tunnel]
    if (tunnels or used) and not dial_in:
        ctx.add(
            tunnels[0].source if tunnels else "",
            f"tunnel.{tunnels[0].name}" if tunnels else "listener",
            'agents need a listener to dial in: add [[listener]] with mode = "tunnel" '
            '(e.g. name = "tunnel", bind = [":8443"]), or tunnel = true on the TLS listener '
            "of the sites (agents told apart by ALPN)",
        )
    if dial_in and global_.state_dir is None:
        lst = dial_in[0]
        ctx.add(
            lst.source,
            "global.state_dir",
            f'listener "{lst.name}" is a tunnel listener: its CA and enrolments live under '
            'global.state_dir (write e.g. state_dir = "/var/lib/revproxy")',
        )
