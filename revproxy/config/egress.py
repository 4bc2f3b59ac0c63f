"""``[egress.NAME]`` tables → ``Egress``, and the keys of forward and socks5 listeners.

Rule of this room: an egress section says where the origin's outbound calls may go; nothing
is allowed that ``destinations`` does not name (proto/destinations.py holds the rules and
their parsing, so a pattern means the same here and at run time). A ``mode = "forward"`` or
``"socks5"`` listener names one section (``egress``) and may name users (``auth``, the route
key: Proxy-Authorization and 407 on a forward listener; RFC 1929 on a socks5 one, which sends
the password itself and so needs ``scheme = "basic"`` over an htpasswd file).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Literal

from revproxy.config.model import Egress, EgressTimeouts, Listener, Users
from revproxy.config.reader import MISSING, Entry, ReadContext, TableReader, defined
from revproxy.config.values import describe
from revproxy.proto.destinations import parse_deny, parse_port_range, parse_rule

__all__ = ["EGRESS_KEYS", "EGRESS_MODES", "check_egress_listener", "read_egress"]

EGRESS_KEYS = (
    "destinations", "ports", "connect_ports", "deny", "source", "balance", "timeouts",
)  # fmt: skip
_TIMEOUT_KEYS = ("connect", "idle")
_BALANCE: tuple[Literal["first", "roundrobin"], ...] = ("first", "roundrobin")
EGRESS_MODES = ("forward", "socks5")

_EGRESS = Egress(name="")
_TIMEOUTS = EgressTimeouts()


def _ports(
    t: TableReader, name: str, default: tuple[tuple[int, int], ...]
) -> tuple[tuple[int, int], ...]:
    if not t.has(name):
        return default
    out: list[tuple[int, int]] = []
    for key, item in t.items(name):
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            t.problem_at(name, key, f'expected a port or "LOW-HIGH", got {describe(item)}')
            continue
        try:
            out.append(parse_port_range(item))
        except ValueError as exc:
            t.problem_at(name, key, str(exc))
    return tuple(out)


def _source(value: str) -> str:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(
            f"{describe(value)} is not an IP address (write the local address outbound "
            'connections leave from, e.g. "203.0.113.7")'
        ) from None
    if address.is_unspecified or address.is_multicast:
        raise ValueError(f"{describe(value)} cannot be a source address")
    return str(address)


def read_egress(name: str, entry: Entry, ctx: ReadContext) -> Egress:
    t = TableReader(entry.data, f"egress.{name}", entry.file, ctx, EGRESS_KEYS)
    rules = t.strings("destinations", parse_rule)
    t.unique("destinations", rules)
    deny = t.strings("deny", parse_deny)
    t.unique("deny", deny)
    sources = t.strings("source", _source)
    t.unique("source", sources)
    timeouts_table = t.table("timeouts", _TIMEOUT_KEYS)
    timeouts = _TIMEOUTS
    if timeouts_table is not None:
        timeouts = EgressTimeouts(
            connect=timeouts_table.duration("connect", _TIMEOUTS.connect),
            idle=timeouts_table.duration("idle", _TIMEOUTS.idle),
        )
    balance = t.choice("balance", _BALANCE, _EGRESS.balance)
    if t.has("balance") and len(sources) < 2 and t.valid("balance"):
        t.problem(
            "balance",
            "rotates outbound connections over several source addresses; "
            "list them in source (or leave balance out)",
        )
    return Egress(
        name=name,
        destinations=tuple(rule for _, rule in rules),
        ports=_ports(t, "ports", _EGRESS.ports),
        connect_ports=_ports(t, "connect_ports", _EGRESS.connect_ports),
        deny=tuple(d for _, d in deny) if t.has("deny") else _EGRESS.deny,
        source=tuple(s for _, s in sources),
        balance=balance,
        timeouts=timeouts,
        file=entry.file,
    )


def check_egress_listener(
    t: TableReader, lst: Listener, sections: Sequence[str], users: Sequence[Users]
) -> None:
    """A forward or socks5 listener names an [egress.NAME] that exists and users that suit
    its protocol; other listeners name neither."""
    if lst.mode not in EGRESS_MODES:
        for key in ("egress", "auth"):
            if t.has(key):
                where = "http listeners take auth on routes; " if key == "auth" else ""
                t.problem(key, f'only for mode = "forward" or "socks5" ({where}see docs/egress.md)')
        return
    if t.raw("egress") is MISSING:
        t.problem(
            "egress",
            f"required on a {lst.mode} listener: the [egress.NAME] its clients may reach "
            '(write e.g. egress = "partners")',
        )
    elif lst.egress is not None and lst.egress not in sections:
        t.problem("egress", f'no egress named "{lst.egress}" ({defined("egress", sections)})')
    auth = lst.auth
    if auth is None:
        return
    table = next((u for u in users if u.name == auth.users), None)
    if table is None:
        names = [u.name for u in users]
        t.problem("auth", f'no users named "{auth.users}" ({defined("users", names)})')
        return
    if lst.mode == "socks5" and auth.scheme != "basic":
        t.problem(
            "auth",
            'a socks5 listener checks RFC 1929 username/password: use scheme = "basic" with '
            "an htpasswd users file",
        )
    elif auth.scheme == "basic" and table.kind != "htpasswd":
        t.problem(
            "auth",
            f'users "{auth.users}" come from an htdigest file ({table.file}): '
            'use scheme = "digest", or an htpasswd file for "basic"',
        )
    elif auth.scheme == "digest" and table.kind != "htdigest":
        t.problem(
            "auth",
            f'scheme = "digest" needs an htdigest file (user:realm:HA1); users '
            f'"{auth.users}" come from an htpasswd file ({table.file})',
        )
    elif (
        auth.scheme == "digest"
        and table.entries
        and not any(e.realm == auth.realm for e in table.entries)
    ):
        realms = ", ".join(sorted(f'"{e.realm or ""}"' for e in table.entries))
        t.problem(
            "auth", f'no user of {table.file} is in realm "{auth.realm}" (its realms: {realms})'
        )
    raw = t.raw("auth")
    for key in ("pass_credentials", "user_header"):
        if isinstance(raw, dict) and key in raw:
            t.problem(
                "auth",
                f"{key} is for routes; a proxy never passes credentials or adds headers",
            )
