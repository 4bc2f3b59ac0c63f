"""``[limit.NAME]`` tables, the ``limits`` key of listeners and routes, and ``conn_limit``
(docs/access-control.md).

Rule of this room: a limit is defined once and named where it applies; every name is checked
against the definitions, and a key that cannot be known where the limit applies is a problem
(``key = "user"`` needs a route with ``auth``; a TCP listener knows nothing but the client).
A Redis store is checked for its form only: whether Redis answers is a matter of the running
proxy, which applies ``on_store_error`` — so ``check`` accepting a config still means ``run``
starts with it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import urlsplit

from revproxy.config.model import ConnLimit, Limit, LimitAction, Listener, StoreErrorAction
from revproxy.config.reader import Entry, ReadContext, TableReader, defined
from revproxy.config.values import describe
from revproxy.proto.ratelimit import parse_rate

LIMIT_KEYS = ("rate", "burst", "key", "action", "headers", "store", "on_store_error")
CONN_LIMIT_KEYS = ("per_client", "streams_per_client")
_ACTIONS: tuple[LimitAction, ...] = ("reject", "log")
_STORE_ERRORS: tuple[StoreErrorAction, ...] = ("allow", "deny")
_KEYS = ("client", "user", "client+route")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_STORE_SCHEMES = ("redis", "rediss", "unix")


def read_limit(name: str, entry: Entry, ctx: ReadContext) -> Limit:
    t = TableReader(entry.data, f"limit.{name}", entry.file, ctx, LIMIT_KEYS)
    rate = t.parsed("rate", lambda v: parse_rate(_text(v)), None)
    if not t.has("rate"):
        t.problem("rate", 'required: requests per period, e.g. rate = "100/10s"')
    requests, period = rate if rate is not None else (1, 1.0)
    key = t.parsed("key", lambda v: _parse_key(_text(v)), "client")
    store = t.parsed("store", lambda v: _parse_store(_text(v)), None)
    if t.has("on_store_error") and not t.has("store"):
        t.problem("on_store_error", 'only used with store = "redis://…"')
    return Limit(
        name=name,
        requests=requests,
        period=period,
        burst=t.integer("burst", 0, 0),
        key=key,
        action=t.choice("action", _ACTIONS, "reject"),
        headers=t.boolean("headers", False),
        store=store,
        on_store_error=t.choice("on_store_error", _STORE_ERRORS, "allow"),
        source=entry.file,
    )


def read_conn_limit(t: TableReader) -> ConnLimit:
    limit = ConnLimit(
        per_client=t.integer("per_client", None, 1),
        streams_per_client=t.integer("streams_per_client", None, 1),
    )
    if limit.per_client is None and limit.streams_per_client is None and not t.failed:
        t.problem_here("set per_client and/or streams_per_client (e.g. per_client = 50)")
    return limit


def read_limit_names(t: TableReader) -> tuple[str, ...]:
    """``limits = ["api", …]`` (the names are checked once every table is read)."""
    names = t.strings("limits", str)
    t.unique("limits", names)
    return tuple(dict.fromkeys(name for _, name in names))


def check_limit_refs(
    t: TableReader,
    names: Sequence[str],
    limits: dict[str, Limit],
    *,
    where: str,
    has_auth: bool = False,
) -> None:
    """The ``limits`` of a listener (``where`` = "http listener" | "tcp listener") or a
    route ("route") name defined limits whose key can be known there."""
    for index, name in enumerate(names):
        key = f"{t.key('limits')}[{index}]"
        limit = limits.get(name)
        if limit is None:
            known = defined("limit", list(limits))
            t.problem_at("limits", key, f'no limit named "{name}" ({known})')
            continue
        if limit.key == "user" and not has_auth:
            reason = (
                "has no auth: nobody is known by name here (use it on a route with auth, or "
                'key = "client")'
                if where == "route"
                else 'is a listener: users are known on routes with auth only (key = "client")'
            )
            t.problem_at("limits", key, f'limit "{name}" counts per user, and this {reason}')
        elif where == "tcp listener" and limit.key != "client":
            t.problem_at(
                "limits",
                key,
                f'limit "{name}" counts per {limit.key}; a tcp listener counts new connections '
                'per client address only (key = "client")',
            )
        elif where != "route" and limit.key == "client+route":
            t.problem_at(
                "limits",
                key,
                f'limit "{name}" counts per client and route; on a listener no route is '
                'chosen yet (use it on routes, or key = "client")',
            )


def check_conn_limit(t: TableReader, listener: Listener) -> None:
    lim = listener.conn_limit
    if lim is not None and lim.streams_per_client is not None and listener.mode == "tcp":
        t.problem_at(
            "conn_limit",
            t.key("conn_limit.streams_per_client"),
            "HTTP/2 streams exist on http listeners only (per_client counts connections)",
        )


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {describe(value)}")
    return value


def _parse_key(text: str) -> str:
    if text in _KEYS:
        return text
    if text.startswith("header:"):
        name = text[len("header:") :].strip()
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f'"{text}": write header:NAME, e.g. "header:X-Api-Key"')
        return "header:" + name.lower()
    raise ValueError(f'"{text}": one of "client", "user", "client+route" or "header:NAME"')


def _parse_store(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in _STORE_SCHEMES:
        raise ValueError(
            f'"{text}": a Redis URL, e.g. "redis://127.0.0.1:6379/0" (rediss:// for TLS, '
            "unix:///path/redis.sock for a socket)"
        )
    if parts.scheme != "unix":
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f'"{text}": the port is not a number from 1 to 65535') from None
        if not parts.hostname:
            raise ValueError(f'"{text}": name the host, e.g. "redis://127.0.0.1:6379/0"')
        if port == 0:
            raise ValueError(f'"{text}": the port is not a number from 1 to 65535')
        db = parts.path.lstrip("/")
        if db and not db.isdigit():
            raise ValueError(f'"{text}": the database after the "/" is a number, e.g. /0')
    elif not parts.path:
        raise ValueError(f'"{text}": name the socket, e.g. "unix:///run/redis/redis.sock"')
    return text
