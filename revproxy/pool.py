"""Runtime state of a pool's backends, and the one question balancing asks of it.

Rule of this room: health writes backend state; balancing only reads ``available``.
``Backend.state`` is written by health checks (``health.py``) and the operator (``admin.py``)
and by nothing else; the balancing policies (``balancing.py``) only ever see backends whose
``available`` is true and never write back. ``Pool.pick`` chooses, it does not reserve: the
caller does ``acquire()`` when it sends to the backend and ``release()`` when the exchange ends.

Sans-I/O: no sockets, no asyncio, no clock. Everything here is plain state the asyncio layer
reads and updates; any time-dependent behaviour (rise/fall, slow start) is computed elsewhere
with time passed in.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from revproxy.balancing import BalancePolicy, make_policy


class BackendState(enum.Enum):
    """Administrative and health state of one backend."""

    UP = "up"  # healthy: takes new requests
    DOWN = "down"  # failed its health checks: takes nothing
    DRAIN = "drain"  # finishes what it has, takes nothing new
    MAINT = "maint"  # disabled by the operator


@dataclass(eq=False)
class Backend:
    """One origin ``host:port`` of a pool, with its live counters.

    Compared and hashed by identity (``eq=False``): two backends with the same address in two
    generations are two objects, and the balancing policies key their memory on the object.
    """

    pool: str
    host: str
    port: int
    weight: int = 1
    backup: bool = False
    max_conns: int | None = None
    name: str | None = None
    # Written by health checks and the admin only.
    state: BackendState = BackendState.UP
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
    weight_factor: float = 1.0
    weight_scale: int = 1

    @property
    def label(self) -> str:
        """The name operators, logs and metrics use: ``name``, else ``pool/host:port``."""
        if self.name:
            return self.name
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.pool}/{host}:{self.port}"

    @property
    def available(self) -> bool:
        """Healthy, enabled and not full: the only thing balancing looks at."""
        return self.state is BackendState.UP and (
            self.max_conns is None or self.active < self.max_conns
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


class Pool:
    """Backends plus the balancing policy named by ``balance`` in the config."""

    def __init__(
        self,
        name: str,
        backends: Sequence[Backend],
        balance: str,
        *,
        rng: random.Random | None = None,
    ) -> None:
        labels: set[str] = set()
        for backend in backends:
            if backend.pool != name:
                raise ValueError(
                    f"backend {backend.label!r} belongs to pool {backend.pool!r}, not {name!r}"
                )
            if backend.label in labels:
                raise ValueError(f"pool {name!r}: two backends are named {backend.label!r}")
            labels.add(backend.label)
        self.name = name
        self.backends: tuple[Backend, ...] = tuple(backends)
        self.balance = balance
        self.policy: BalancePolicy = make_policy(balance, rng)

    def __repr__(self) -> str:
        return f"Pool({self.name!r}, {len(self.backends)} backends, balance={self.balance!r})"

    def pick(self, ctx: PickContext, *, exclude: Collection[Backend] = ()) -> Backend | None:
        """Choose a backend for one request or connection, or None if none is available.

        Candidates are the available primaries not in ``exclude`` (the backends a retry already
        tried). Backups are candidates only when no such primary is left. The pick is not
        counted: the caller calls ``acquire()`` on the backend it actually uses.
        """
        candidates = [b for b in self.backends if not b.backup and b.available and b not in exclude]
        if not candidates:
            candidates = [b for b in self.backends if b.backup and b.available and b not in exclude]
            if not candidates:
                return None
        return self.policy.pick(candidates, ctx)

    def find(self, label: str) -> Backend | None:
        """The backend with this label (as shown by the admin and in logs), if any."""
        for backend in self.backends:
            if backend.label == label:
                return backend
        return None
