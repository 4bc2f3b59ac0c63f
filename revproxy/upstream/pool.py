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

import ipaddress
import random
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from revproxy.upstream import backend as watched
from revproxy.upstream.backend import Backend, BackendState, PickContext
from revproxy.upstream.balancing import BalancePolicy, Candidates, make_policy

# Backends with a ``max_conns``, and that limit.
_Caps = tuple[tuple[Backend, int], ...]
# What makes two servers of one pool the same server: host (an address or a name) and port.
Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Member:
    """A server a pool gains at run time: one address of a name (``resolve = "all"``, an SRV
    record: ``discovery.py``) or one the operator added (``revproxy ctl add server``)."""

    host: str  # an IP address, or (ctl) a name resolved like any configured server's
    port: int
    weight: int = 1
    backup: bool = False
    max_conns: int | None = None
    hostname: str | None = None  # the name it was found under (SNI, checks' Host)


Changes = tuple[list[Backend], list[Backend]]  # (added, removed)


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
        # The configured servers (``backends`` at build), those of them taken out until the
        # next reload (``ctl del server``), and the members found at run time by each source
        # (``Backend.found_by``). ``backends`` is always the first two composed with the third.
        self.fixed = self.backends
        self.removed: frozenset[Address] = frozenset()
        self.found: dict[str, tuple[Member, ...]] = {}
        # Members' weights are scaled as the configured servers' are (slow start).
        self.member_scale = 1
        self.balance = balance
        self.policy: BalancePolicy = make_policy(balance, rng)
        # The candidates as of ``_built_at`` (a ``watched.changes`` count): UP primaries and UP
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
        if self._built_at != watched.changes:
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
        self._built_at = watched.changes
        up = [b for b in self.backends if b.state is BackendState.UP and b.linked]
        primaries = [b for b in up if not b.backup]
        backups = [b for b in up if b.backup]
        # Keep the same object when nothing selection sees changed: policies remember it.
        if not self._primaries.same(primaries):
            self._primaries = Candidates(primaries)
        if not self._backups.same(backups):
            self._backups = Candidates(backups)
        self._primary_caps = _caps(primaries)
        self._backup_caps = _caps(backups)

    def set_found(
        self,
        found: Mapping[str, Sequence[Member]],
        removed: Collection[Address] | None = None,
    ) -> Changes:
        """Make the run-time part of the pool ``found`` (every source's members: a source
        not named has none) and, when given, ``removed``; returns the backends added and
        those gone. A member already here keeps its object (and so its counters and health);
        one whose address another server of the pool already has is left out."""
        if removed is not None:
            self.removed = frozenset(removed)
        old = {(b.found_by, b.host, b.port): b for b in self.backends if b.found_by}
        out = [b for b in self.fixed if (b.host, b.port) not in self.removed]
        taken = {(b.host, b.port) for b in out}
        kept: dict[str, tuple[Member, ...]] = {}
        for source, members in found.items():
            listed = []
            for m in members:
                if (m.host, m.port) in taken:
                    continue
                taken.add((m.host, m.port))
                listed.append(m)
                b = old.pop((source, m.host, m.port), None) or self._member(source, m)
                b.weight, b.backup, b.max_conns = m.weight, m.backup, m.max_conns
                out.append(b)
            if listed:
                kept[source] = tuple(listed)
        self.found = kept
        previous, self.backends = self.backends, tuple(out)
        watched.count_change()
        before, after = set(previous), set(out)
        return [b for b in out if b not in before], [b for b in previous if b not in after]

    def _member(self, source: str, m: Member) -> Backend:
        b = Backend(pool=self.name, host=m.host, port=m.port, found_by=source)
        b.hostname = m.hostname
        b.weight_scale = self.member_scale
        try:
            ipaddress.ip_address(m.host)
            b.addresses = ((m.host, m.port),)
        except ValueError:
            pass  # a name: resolved as a configured server's is (runtime/frontend.py)
        return b

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
