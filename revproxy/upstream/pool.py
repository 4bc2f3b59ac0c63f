"""Runtime state of a pool's backends, and the one question balancing asks of it.

Rule of this room: health writes backend state; balancing only reads ``available``.
``Backend.state`` is written by health checks (``health.py``) and the operator (``admin.py``)
and by nothing else; the balancing policies (``balancing.py``) only ever see backends whose
``available`` is true and never write back. ``Pool.pick`` chooses, it does not reserve: the
caller does ``acquire()`` when it sends to the backend and ``release()`` when the exchange ends.

Selection is cached, not rebuilt per request: a pool keeps its candidates (primaries and
backups whose state is UP, with their weights) and rebuilds them only when something they were
built from changed. Every attribute that feeds ``available`` or ``effective_weight`` except
``active`` (``state``, ``weight``, ``weight_factor``, ``weight_scale``, ``backup``,
``max_conns``) counts its writes of a new value in one change counter, which each pool compares
with the count it built from; so health and the admin keep writing plain attributes, and
selection notices. ``active`` moves on every request and is not counted: pools with
``max_conns`` check fullness at pick time.

Sans-I/O: no sockets, no asyncio, no clock. Everything here is plain state the asyncio layer
reads and updates; any time-dependent behaviour (rise/fall, slow start) is computed elsewhere
with time passed in.
"""

from __future__ import annotations

import enum
import functools
import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar, overload

from revproxy.upstream.balancing import BalancePolicy, Candidates, make_policy

_T = TypeVar("_T")

# Writes of a new value to a watched Backend attribute, in this process, ever. A pool whose
# candidates were built at another count rebuilds them. One counter for all backends: such
# writes are rare (health changes, slow-start steps every half second), and a pool rebuilding
# for another pool's change costs a few microseconds.
_changes = 0


class BackendState(enum.Enum):
    """Administrative and health state of one backend."""

    UP = "up"  # healthy: takes new requests
    DOWN = "down"  # failed its health checks: takes nothing
    DRAIN = "drain"  # finishes what it has, takes nothing new
    MAINT = "maint"  # disabled by the operator


class _Watched(Generic[_T]):
    """A ``Backend`` attribute selection depends on: writing a value different from the one
    held counts as a change (``_changes``); reads return the value held."""

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
        global _changes
        held = obj.__dict__
        if self.slot not in held or held[self.slot] != value:
            _changes += 1
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

    @functools.cached_property
    def label(self) -> str:
        """The name operators, logs and metrics use: ``name``, else ``pool/host:port``.

        Computed once (every forwarded request logs it): the fields it is made of are fixed."""
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


# Backends with a ``max_conns``, and that limit.
_Caps = tuple[tuple[Backend, int], ...]


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
        # The candidates as of ``_built_at`` (a ``_changes`` count): UP primaries and UP
        # backups in pool order, and those of them with a ``max_conns`` (fullness is checked
        # at each pick: ``active`` is not watched).
        self._built_at = -1
        self._primaries = self._backups = Candidates(())
        self._primary_caps: _Caps = ()
        self._backup_caps: _Caps = ()

    def __repr__(self) -> str:
        return f"Pool({self.name!r}, {len(self.backends)} backends, balance={self.balance!r})"

    def pick(self, ctx: PickContext, *, exclude: Collection[Backend] = ()) -> Backend | None:
        """Choose a backend for one request or connection, or None if none is available.

        Candidates are the available primaries not in ``exclude`` (the backends a retry already
        tried). Backups are candidates only when no such primary is left. The pick is not
        counted: the caller calls ``acquire()`` on the backend it actually uses.
        """
        if self._built_at != _changes:
            self._rebuild()
        candidates: Sequence[Backend] = self._primaries
        if exclude or self._primary_caps:
            candidates = _usable(self._primaries, self._primary_caps, exclude)
        if not candidates:
            candidates = self._backups
            if exclude or self._backup_caps:
                candidates = _usable(self._backups, self._backup_caps, exclude)
            if not candidates:
                return None
        return self.policy.pick(candidates, ctx)

    def _rebuild(self) -> None:
        self._built_at = _changes
        up = [b for b in self.backends if b.state is BackendState.UP]
        primaries = [b for b in up if not b.backup]
        backups = [b for b in up if b.backup]
        # Keep the same object when nothing selection sees changed: policies remember it.
        if not self._primaries.same(primaries):
            self._primaries = Candidates(primaries)
        if not self._backups.same(backups):
            self._backups = Candidates(backups)
        self._primary_caps = _caps(primaries)
        self._backup_caps = _caps(backups)

    def find(self, label: str) -> Backend | None:
        """The backend with this label (as shown by the admin and in logs), if any."""
        for backend in self.backends:
            if backend.label == label:
                return backend
        return None


def _caps(backends: Sequence[Backend]) -> _Caps:
    return tuple((b, b.max_conns) for b in backends if b.max_conns is not None)


def _usable(group: Candidates, caps: _Caps, exclude: Collection[Backend]) -> Sequence[Backend]:
    """The members of ``group`` neither full nor in ``exclude``: ``group`` itself when that
    is all of them (the object the policy may have seen before, with its weights)."""
    full = [b for b, limit in caps if b.active >= limit]
    if not full and not exclude:
        return group
    kept = [b for b in group if b not in full and b not in exclude]
    return group if len(kept) == len(group) else kept
