"""One origin server of a pool (``Backend``) with its live state and counters, and what a
balancing policy may key on (``PickContext``).

Rule of this room: ``Backend.state`` is written by health checks (``health.py``) and the
operator (the admin endpoint) and by nothing else; a tunnel server's ``linked`` by the tunnel
hub of the process (whether an agent connection exposing it is live here and its checks
through the tunnel, if any, pass here). Every attribute
that feeds ``available`` or ``effective_weight`` except ``active`` counts its writes of a new
value in one change counter (``changes``), which each pool compares with the count it built
its candidates from (``pool.py``); so health and the admin keep writing plain attributes, and
selection notices.

Sans-I/O: plain state the asyncio layer reads and updates; no sockets, no clock.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from typing import Generic, TypeVar, overload

_T = TypeVar("_T")

# Writes of a new value to a watched Backend attribute, in this process, ever. A pool whose
# candidates were built at another count rebuilds them. One counter for all backends: such
# writes are rare (health changes, slow-start steps every half second), and a pool rebuilding
# for another pool's change costs a few microseconds.
changes = 0


def count_change() -> None:
    """A pool's list of backends changed (``Pool.set_found``): selection must rebuild."""
    global changes
    changes += 1


class BackendState(enum.Enum):
    """Administrative and health state of one backend."""

    UP = "up"  # healthy: takes new requests
    DOWN = "down"  # failed its health checks: takes nothing
    DRAIN = "drain"  # finishes what it has, takes nothing new
    MAINT = "maint"  # disabled by the operator


class _Watched(Generic[_T]):
    """A ``Backend`` attribute selection depends on: writing a value different from the one
    held counts as a change (``changes``); reads return the value held."""

    __slots__ = ("default", "slot")

    def __init__(self, default: _T) -> None:
        self.default = default
        self.slot = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = "_" + name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> _T: ...
    @overload
    def __get__(self, obj: Backend, owner: type | None = None) -> _T: ...
    def __get__(self, obj: Backend | None, owner: type | None = None) -> _T:
        if obj is None:
            return self.default  # what @dataclass takes as the field's default
        value: _T = obj.__dict__[self.slot]
        return value

    def __set__(self, obj: Backend, value: _T) -> None:
        global changes
        held = obj.__dict__
        if self.slot not in held or held[self.slot] != value:
            changes += 1
        held[self.slot] = value


@dataclass(eq=False)
class Backend:
    """One origin ``host:port`` of a pool, with its live counters.

    Compared and hashed by identity (``eq=False``): two backends with the same address in two
    generations are two objects, and the balancing policies key their memory on the object.
    ``pool``, ``host``, ``port`` and ``name`` are fixed for the object's life (a reload makes
    new backends). The ``_Watched`` attributes tell the pools when they change (see above).
    """

    pool: str
    host: str
    port: int
    weight: _Watched[int] = _Watched(1)
    backup: _Watched[bool] = _Watched(False)
    max_conns: _Watched[int | None] = _Watched(None)
    name: str | None = None
    # Written by health checks and the admin only.
    state: _Watched[BackendState] = _Watched(BackendState.UP)
    # In-flight requests (L7) or connections (L4) sent to this backend.
    active: int = 0
    # Requests or connections ever sent to this backend.
    total: int = 0
    # Consecutive connect failures (passive health).
    failures: int = 0
    # Resolved (ip, port) pairs; set by the resolver in the I/O layer.
    addresses: tuple[tuple[str, int], ...] = ()
    # Slow start (written by health only): the share of its weight a backend that came back
    # up gets while it ramps, 0.0 to 1.0. Pools with slow start scale every weight by
    # ``weight_scale`` so that a weight-1 backend can ramp in small steps.
    weight_factor: _Watched[float] = _Watched(1.0)
    weight_scale: _Watched[int] = _Watched(1)
    # A tunnel server (``{ tunnel = "home/web" }``): its path, and whether this process holds
    # a live agent connection exposing it whose checks (if any) pass here (written by the
    # tunnel hub only; ``TunnelPaths``).
    tunnel: str | None = None
    linked: _Watched[bool] = _Watched(True)
    # A server the pool gained at run time (``pool.Member``): what found it — the configured
    # server it is an address of ("app.internal:8080", "srv:_http._tcp.app.internal") or
    # "ctl" (``revproxy ctl add server``) — and the name it was found under (TLS SNI and the
    # health check's Host when ``host`` is one of that name's addresses).
    found_by: str | None = None
    hostname: str | None = None

    @functools.cached_property
    def label(self) -> str:
        """The name operators, logs and metrics use: ``name``, else ``pool/host:port``.

        Computed once (every forwarded request logs it): the fields it is made of are fixed."""
        if self.name:
            return self.name
        if self.tunnel is not None:
            return f"{self.pool}/tunnel:{self.tunnel}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.pool}/{host}:{self.port}"

    @property
    def server_name(self) -> str:
        """The name TLS and health checks present to it: the name its address was found
        under, else ``host``."""
        return self.hostname or self.host

    @property
    def available(self) -> bool:
        """Healthy, enabled and not full: the only thing balancing looks at."""
        return (
            self.state is BackendState.UP
            and self.linked
            and (self.max_conns is None or self.active < self.max_conns)
        )

    @property
    def effective_weight(self) -> int:
        """The weight balancing uses: ``weight``, scaled and ramped in slow-start pools.

        A ramping backend never drops below 1 so that it is still sent a trickle.
        """
        if self.weight_scale == 1 and self.weight_factor >= 1.0:
            return self.weight
        if self.weight <= 0:
            return self.weight
        factor = min(max(self.weight_factor, 0.0), 1.0)
        return max(1, round(self.weight * self.weight_scale * factor))

    def acquire(self) -> None:
        """Count one request or connection sent to this backend."""
        self.active += 1
        self.total += 1

    def release(self) -> None:
        """Count one request or connection to this backend as finished."""
        if self.active > 0:
            self.active -= 1


@dataclass(frozen=True, slots=True, kw_only=True)
class PickContext:
    """What a policy may key on, established once per request or connection."""

    client_ip: str | None = None  # for "source"
    uri: str | None = None  # request path and query, for "uri"
