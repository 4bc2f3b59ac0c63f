"""Balancing policies, registered under the name the config uses (``balance = "leastconn"``).

Rule of this room: balancing only reads. A policy is handed the candidates the pool found
``available`` (health and the operator decided that, in ``health.py`` and ``admin.py``) and
returns one of them; it reads ``effective_weight`` and ``active`` and never writes backend
state. The only state a policy keeps is its own memory (round-robin credits, a tie-break
cursor), keyed on the ``Backend`` object.

Sans-I/O: no sockets, no clock, no global randomness. Randomness comes from the injected
``random.Random``; hashing uses ``hashlib.blake2b`` so the same client goes to the same backend
in every worker and after every restart (Python's ``hash()`` is salted per process).
"""

from __future__ import annotations

import hashlib
import math
import random
import types
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import ClassVar, Protocol

from revproxy.upstream.backend import Backend, PickContext


class BalancePolicy(Protocol):
    """Chooses one backend among available candidates."""

    def pick(self, candidates: Sequence[Backend], ctx: PickContext) -> Backend:
        """Return one of ``candidates`` (never empty, all available, in pool order)."""
        ...


class Candidates(tuple["Backend", ...]):
    """Candidates as a pool caches them between changes, with what policies derive from
    them computed once: ``weights`` (as ``_weights`` gives them), their ``total`` and the
    ``labels`` the hashing policies hash.

    A pool hands the same object for as long as none of these changed, and a new one when
    they did; so a policy may treat "the same object as last time" as "the same candidates,
    with the same weights" and skip the work that established them. Any other sequence is
    taken at face value, every time.
    """

    weights: tuple[int, ...]
    total: int
    labels: tuple[bytes, ...]

    def __new__(cls, backends: Iterable[Backend]) -> Candidates:
        self = super().__new__(cls, backends)
        self.weights = tuple(_compute_weights(self))
        self.total = sum(self.weights)
        self.labels = tuple(b.label.encode("utf-8", "surrogatepass") for b in self)
        return self

    def same(self, backends: Sequence[Backend]) -> bool:
        """Whether ``backends`` are these candidates, in this order, with these weights."""
        return (
            len(self) == len(backends)
            and all(a is b for a, b in zip(self, backends, strict=True))
            and self.weights == tuple(_compute_weights(backends))
        )


def _weights(candidates: Sequence[Backend]) -> Sequence[int]:
    """Effective weights, with zero for negative ones; all ones if every weight is zero."""
    if type(candidates) is Candidates:
        return candidates.weights
    return _compute_weights(candidates)


def _compute_weights(candidates: Sequence[Backend]) -> list[int]:
    weights = [max(b.effective_weight, 0) for b in candidates]
    if not any(weights):
        return [1] * len(candidates)
    return weights


class RoundRobin:
    """Smooth weighted round robin, nginx's algorithm (``ngx_http_upstream_get_peer``).

    Each pick adds every candidate's weight to its credit, takes the candidate with the most
    credit and charges it the total weight. From a fresh start, over any ``sum(weights)``
    consecutive picks each backend is picked exactly ``weight`` times, interleaved rather than
    in bursts. Credits belong to the ``Backend`` object, so when a backend leaves
    the candidates the others keep their place; a backend that leaves is forgotten and comes
    back with no credit and no debt.

    Unlike nginx, when the candidate set changes the credits carried over are clamped to plus
    or minus the new total weight. Credits scale with the total weight, so without this a
    light backend holding credit earned beside a heavy one that just went down would take
    dozens of picks in a row; with it, counts stay within about two picks of the weights.
    """

    name: ClassVar[str] = "roundrobin"

    def __init__(self, rng: random.Random | None = None) -> None:
        # Credits of the candidates of the last pick. While those are a pool's cached
        # ``Candidates`` (``_built_from``: the per-request case), they live in ``_credits``, a
        # list in candidate order; otherwise in ``_credit``, by backend.
        self._credit: dict[Backend, int] = {}
        self._credits: list[int] = []
        self._built_from: Candidates | None = None

    def pick(self, candidates: Sequence[Backend], ctx: PickContext) -> Backend:
        if candidates is self._built_from:
            return self._advance(self._built_from)
        weights = _weights(candidates)
        total = sum(weights)
        old = self._credit
        if self._built_from is not None:
            old = dict(zip(self._built_from, self._credits, strict=True))
        changed = len(old) != len(candidates) or any(b not in old for b in candidates)
        # Rebuilding the map from the candidates forgets the ones that left.
        credit: dict[Backend, int] = {}
        for backend, weight in zip(candidates, weights, strict=True):
            carried = old.get(backend, 0)
            if changed:
                carried = min(max(carried, -total), total)
            credit[backend] = carried + weight
        best = max(credit, key=credit.__getitem__)  # first of equals, like nginx
        credit[best] -= total
        if type(candidates) is Candidates:
            self._built_from, self._credits, self._credit = candidates, list(credit.values()), {}
        else:
            self._built_from, self._credits, self._credit = None, [], credit
        return best

    def _advance(self, candidates: Candidates) -> Backend:
        """``pick`` among the candidates of the last pick, the same object: same members in
        the same order with the same weights (``changed`` is false), so the credit list is
        updated in place."""
        credits = self._credits
        weights = candidates.weights
        best = 0
        most = credits[0] = credits[0] + weights[0]
        for i in range(1, len(weights)):
            credit = credits[i] = credits[i] + weights[i]
            if credit > most:  # strictly: the first of equals wins, as max() does above
                best, most = i, credit
        credits[best] = most - candidates.total
        return candidates[best]


class LeastConn:
    """Fewest in-flight requests per unit of weight (``active / effective_weight``).

    Ties are broken round-robin: the first tied candidate after the last one picked, in pool
    order (from its place, if it has left the candidates), so an idle pool is not funnelled to
    its first backend.
    """

    name: ClassVar[str] = "leastconn"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._last: Backend | None = None
        self._last_index = -1

    def pick(self, candidates: Sequence[Backend], ctx: PickContext) -> Backend:
        weights = _weights(candidates)
        last = self._last
        # Resume after the last pick; if it has left, its successor took its place.
        start = self._last_index - 1
        least = math.inf
        tied: list[int] = []
        for i, (b, w) in enumerate(zip(candidates, weights, strict=True)):
            if b is last:
                start = i
            # Float division is correctly rounded, so equal ratios of ints compare equal.
            load = b.active / w if w else math.inf
            if load < least:
                least, tied = load, [i]
            elif load == least:
                tied.append(i)
        index = next((i for i in tied if i > start), tied[0])
        self._last, self._last_index = candidates[index], index
        return candidates[index]


class _HashPolicy(ABC):
    """Weighted rendezvous (highest random weight) hashing on a key taken from the context.

    Every candidate scores ``weight / -ln(u)`` with ``u`` a uniform draw in (0, 1] derived from
    ``blake2b(key, backend label)``; the highest score wins. The label (``name``, else
    ``pool/host:port``) is what makes a backend the same one across reloads and workers; a
    renamed backend is a new one to the hash. A key's backend changes only when
    that backend leaves the candidates (then its keys spread over the others in proportion to
    weight) or when a backend joins and outscores it. Requests without a key are balanced round
    robin.
    """

    name: ClassVar[str]

    def __init__(self, rng: random.Random | None = None) -> None:
        self._fallback = RoundRobin(rng)

    @abstractmethod
    def key(self, ctx: PickContext) -> str | None:
        """What this policy hashes (client address, path); None when the request has none."""

    def pick(self, candidates: Sequence[Backend], ctx: PickContext) -> Backend:
        key = self.key(ctx)
        if key is None:
            return self._fallback.pick(candidates, ctx)
        if len(candidates) == 1:
            return candidates[0]
        weights = _weights(candidates)
        if type(candidates) is Candidates:
            labels: Sequence[bytes] = candidates.labels
        else:
            labels = [b.label.encode("utf-8", "surrogatepass") for b in candidates]
        # Hash the key once; each candidate continues from a copy of that state.
        keyed = hashlib.blake2b(
            key.encode("utf-8", "surrogatepass"), digest_size=8, person=b"revproxy-hrw"
        )
        keyed.update(b"\0")
        best = candidates[0]
        best_score = -1.0
        for backend, weight, label in zip(candidates, weights, labels, strict=True):
            score = _rendezvous_score(keyed, label, weight)
            if score > best_score:
                best, best_score = backend, score
        return best


def _rendezvous_score(keyed: hashlib.blake2b, label: bytes, weight: int) -> float:
    """``weight / -ln(u)``, ``u`` from ``blake2b(key, b"\\0", label)`` (``keyed`` holds
    the state after the key and the separator)."""
    if weight <= 0:
        return 0.0
    h = keyed.copy()
    h.update(label)
    bits53 = int.from_bytes(h.digest(), "big") >> 11
    u = (bits53 + 1) / (1 << 53)  # in (0, 1], exact in a float
    if u == 1.0:
        return math.inf
    return weight / -math.log(u)


class SourceHash(_HashPolicy):
    """``balance = "source"``: the same client address goes to the same backend."""

    name: ClassVar[str] = "source"

    def key(self, ctx: PickContext) -> str | None:
        return ctx.client_ip or None


class UriHash(_HashPolicy):
    """``balance = "uri"``: the same path goes to the same backend (query string ignored,
    as HAProxy's ``balance uri`` does by default), which keeps origin caches warm."""

    name: ClassVar[str] = "uri"

    def key(self, ctx: PickContext) -> str | None:
        if not ctx.uri:
            return None
        return ctx.uri.partition("?")[0]


class RandomTwoChoices:
    """Power of two choices: draw two distinct candidates with probability proportional to
    weight, keep the one with less load (``active / effective_weight``; the first drawn on a
    tie). Needs no shared memory, so it spreads well across workers."""

    name: ClassVar[str] = "random"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng if rng is not None else random.Random()

    def pick(self, candidates: Sequence[Backend], ctx: PickContext) -> Backend:
        if len(candidates) == 1:
            return candidates[0]
        weights = _weights(candidates)
        first = self._draw(weights)
        rest = list(weights)
        rest[first] = 0
        second = self._draw(rest) if any(rest) else first
        a, b = candidates[first], candidates[second]
        # a.active / wa <= b.active / wb, without division (weights are non-negative ints).
        if a.active * weights[second] <= b.active * weights[first]:
            return a
        return b

    def _draw(self, weights: Sequence[int]) -> int:
        point = self._rng.randrange(sum(weights))
        for i, w in enumerate(weights):
            if point < w:
                return i
            point -= w
        raise AssertionError("unreachable: point < sum(weights)")


POLICIES: Mapping[str, Callable[[random.Random], BalancePolicy]] = types.MappingProxyType(
    {
        policy.name: policy
        for policy in (RoundRobin, LeastConn, SourceHash, UriHash, RandomTwoChoices)
    }
)


def make_policy(name: str, rng: random.Random | None = None) -> BalancePolicy:
    """A fresh policy for one pool, by its config name; ValueError names the valid ones."""
    factory = POLICIES.get(name)
    if factory is None:
        expected = ", ".join(f'"{n}"' for n in POLICIES)
        raise ValueError(f"unknown balance policy {name!r}; expected one of {expected}")
    return factory(rng if rng is not None else random.Random())
