"""The HTTP cache's store: responses in memory, LRU by bytes, one origin fetch per miss.

Rule of this room: this file keeps and finds responses; whether one may be stored or served
is decided by ``proto/caching.py`` (RFC 9111), and the exchange asks it before calling here.
Nothing here does I/O; the only waits are followers waiting for a leader, each with a timeout.

**Per worker process.** Each worker has its own ``Cache``. A store shared by the workers of an
instance would need a lock-free allocator for bodies of any size in shared memory; per worker
it is a dict. What it costs: memory up to N times ``size`` for N workers (an object popular in
every worker is held N times), and up to N origin fetches for one object (one miss per worker;
coalescing works within a worker), and a hit ratio that warms N times slower. ``ctl cache
purge`` must be sent to every worker.

- **Entries** are keyed by ``proto.caching.cache_key`` and, within a key, by the request
  fields the response varies on: up to ``MAX_VARIANTS`` variants per key, newest first (RFC
  9111 §4.1: "the most recent response ... is used"). A new response replaces every variant
  its request would have selected.
- **Bytes**: an entry costs its body, its key, its fields and a fixed estimate of the Python
  objects around them (``ENTRY_OVERHEAD``, ``FIELD_OVERHEAD``); entries are evicted least
  recently used first until the total is within ``size``. A body over ``max_object`` is
  never stored (a ``Recording`` drops it as soon as it passes the limit).
- **Coalescing** (as nginx's ``proxy_cache_lock``): ``flight(key)`` makes the first caller of
  a key the leader, which fetches from the origin; later callers are followers and wait for
  its outcome with a timeout. They get the stored entry, or None when the response was not
  stored, the leader failed or was cancelled, the wait timed out, or their request differs in
  the fields the response varies on — then they go to the origin themselves. A leader ends its
  flight when its ``with`` block ends, whatever the way out.
- **stale-while-revalidate**: ``lookup`` says when a stale entry may be served while one
  background revalidation runs; ``begin_refresh`` lets only one run per key.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, fields
from types import TracebackType
from typing import Final

from revproxy.proto.caching import (
    Freshness,
    Headers,
    RequestPolicy,
    current_age,
    is_fresh,
    storable,
    storable_headers,
    updated_headers,
    vary_key,
    vary_names,
    within_swr,
)

__all__ = [
    "ENTRY_OVERHEAD",
    "FIELD_OVERHEAD",
    "MAX_VARIANTS",
    "Cache",
    "CacheStats",
    "Entry",
    "Flight",
    "Lookup",
    "LookupKind",
    "Recording",
]

# Estimates of what CPython spends around the bytes we count: the Entry object and its
# tuples, the OrderedDict node and the variant list slot (~300 bytes); per header line,
# a tuple and two bytes objects' headers (~100 bytes). Measured with sys.getsizeof on 3.11.
ENTRY_OVERHEAD: Final = 320
FIELD_OVERHEAD: Final = 100
MAX_VARIANTS: Final = 8  # responses kept per key when Vary differs


class LookupKind(enum.Enum):
    FRESH = "fresh"  # serve it
    STALE_WHILE_REVALIDATE = "stale-while-revalidate"  # serve it, revalidate in background
    STALE = "stale"  # revalidate with the origin before serving (or fetch anew)
    MISS = "miss"  # nothing stored for this request


@dataclass(frozen=True, eq=False, slots=True, kw_only=True)
class Entry:
    """One stored response. Never changed once built (a 304 makes a new one), so a response
    being served from it is not disturbed by a refresh, an eviction or a purge."""

    key: bytes
    status: int
    headers: Headers  # as stored: hop-by-hop fields removed; the Age is set when served
    body: bytes
    freshness: Freshness
    stored_at: float  # the response time, seconds since the epoch
    vary_names: tuple[bytes, ...]
    vary_key: tuple[bytes | None, ...]
    host: str  # lower case, as routed (may carry a port)
    path: str  # the target as routed
    cost: int  # bytes counted against the cache's size

    def age(self, now: float) -> float:
        return current_age(self.freshness, self.stored_at, now)

    def selected_by(self, request_headers: Headers) -> bool:
        """RFC 9111 §4.1: the request's varied fields match the ones this was stored for."""
        return vary_key(self.vary_names, request_headers) == self.vary_key


@dataclass(frozen=True, slots=True)
class Lookup:
    kind: LookupKind
    entry: Entry | None = None
    age: int = 0  # whole seconds, for the Age field


@dataclass(slots=True)
class CacheStats:
    """The counters ``/metrics`` exports (all only go up)."""

    hits: int = 0  # fresh entries served
    stale: int = 0  # stale entries served under stale-while-revalidate
    expired: int = 0  # entries found stale: revalidation needed
    misses: int = 0
    bypasses: int = 0  # requests the cache did not look up (proto.caching.Bypass)
    stores: int = 0
    evictions: int = 0  # entries removed to make room (LRU or variant limit)
    coalesced: int = 0  # followers served by a leader's fetch
    lock_timeouts: int = 0  # followers that stopped waiting for a leader
    revalidated: int = 0  # entries refreshed by a 304
    purged: int = 0
    invalidated: int = 0  # removed by an unsafe method's response (RFC 9111 §4.4)
    too_big: int = 0  # bodies dropped for passing max_object


def entry_cost(key: bytes, headers: Headers, body: bytes, vkey: tuple[bytes | None, ...]) -> int:
    fields_cost = sum(len(n) + len(v) + FIELD_OVERHEAD for n, v in headers)
    vary_cost = sum(len(v) for v in vkey if v is not None)
    return ENTRY_OVERHEAD + len(key) + fields_cost + len(body) + vary_cost


class Cache:
    """One worker's cache: ``size`` bytes in all, bodies up to ``max_object`` bytes."""

    def __init__(self, size: int, max_object: int, clock: Callable[[], float] = time.time) -> None:
        self.size = size
        self.max_object = max_object
        self.clock = clock
        self.stats = CacheStats()
        self.bytes = 0
        self._lru: OrderedDict[Entry, None] = OrderedDict()  # oldest first
        self._by_key: dict[bytes, list[Entry]] = {}  # newest variant first
        self._flights: dict[bytes, _Pending] = {}
        self._refreshing: set[bytes] = set()

    def __len__(self) -> int:
        return len(self._lru)

    # --- finding ------------------------------------------------------------------------------

    def lookup(
        self, key: bytes, request_headers: Headers, policy: RequestPolicy | None = None
    ) -> Lookup:
        """The stored response for this request and what may be done with it. ``policy``
        (from ``proto.caching.request_policy``) adds the client's constraints: no-cache,
        max-age and min-fresh make an otherwise fresh entry need revalidation."""
        entry = self._select(key, request_headers)
        if entry is None:
            self.stats.misses += 1
            return Lookup(LookupKind.MISS)
        self._lru.move_to_end(entry)
        age = entry.age(self.clock())
        whole = int(age)
        constrained = policy is not None and (
            policy.must_revalidate
            or (policy.max_age is not None and age > policy.max_age)
            or (policy.min_fresh is not None and entry.freshness.lifetime - age < policy.min_fresh)
        )
        if not constrained and is_fresh(entry.freshness, age):
            self.stats.hits += 1
            return Lookup(LookupKind.FRESH, entry, whole)
        if not constrained and within_swr(entry.freshness, age):
            self.stats.stale += 1
            return Lookup(LookupKind.STALE_WHILE_REVALIDATE, entry, whole)
        self.stats.expired += 1
        return Lookup(LookupKind.STALE, entry, whole)

    def _select(self, key: bytes, request_headers: Headers) -> Entry | None:
        for entry in self._by_key.get(key, ()):
            if entry.selected_by(request_headers):
                return entry
        return None

    def note_bypass(self) -> None:
        """Count a request the cache did not look up."""
        self.stats.bypasses += 1

    # --- storing ------------------------------------------------------------------------------

    def store(
        self,
        key: bytes,
        status: int,
        headers: Headers,
        body: bytes,
        freshness: Freshness,
        *,
        request_headers: Headers,
        host: str,
        path: str,
        stored_at: float | None = None,
    ) -> Entry | None:
        """Keep a response ``proto.caching.storable`` accepted (its ``Freshness``); None when
        it is too big for this cache. ``stored_at`` is the response time (default: now)."""
        if len(body) > self.max_object:
            self.stats.too_big += 1
            return None
        kept = storable_headers(headers)
        names = vary_names(kept)
        if b"*" in names:  # storable refuses these; never keep one that always fails to match
            return None
        vkey = vary_key(names, request_headers)
        cost = entry_cost(key, kept, body, vkey)
        if cost > self.size:
            self.stats.too_big += 1
            return None
        entry = Entry(
            key=key,
            status=status,
            headers=kept,
            body=body,
            freshness=freshness,
            stored_at=self.clock() if stored_at is None else stored_at,
            vary_names=names,
            vary_key=vkey,
            host=host.lower(),
            path=path,
            cost=cost,
        )
        # The new response supersedes every variant this request would have selected.
        for old in [e for e in self._by_key.get(key, ()) if e.selected_by(request_headers)]:
            self._remove(old)
        self._insert(entry)
        self.stats.stores += 1
        return entry

    def record(
        self,
        key: bytes,
        status: int,
        headers: Headers,
        freshness: Freshness,
        *,
        request_headers: Headers,
        host: str,
        path: str,
        stored_at: float | None = None,
    ) -> Recording:
        """A body collector for a response being relayed; ``commit()`` stores it."""
        return Recording(
            self, key, status, list(headers), freshness, list(request_headers), host, path,
            stored_at,
        )  # fmt: skip

    def refresh(
        self,
        entry: Entry,
        headers_from_304: Headers,
        *,
        request_headers: Headers,
        ttl_max: float,
        request_time: float,
        response_time: float,
        authorization_allowed: bool,
        cookies_allowed: bool = False,
    ) -> Entry | None:
        """A successful revalidation (RFC 9111 §4.3.4): the stored entry with the 304's fields
        (``proto.caching.updated_headers``) and a new freshness, in its place. None, and the
        entry dropped, when the updated response may no longer be stored (the 304 brought
        ``no-store``, ``private``, ``Set-Cookie``, a different ``Vary`` ...); None too when the
        entry left the cache meanwhile (evicted or purged: a purge is not undone). The client
        that asked is answered with ``updated_headers`` and the old body either way."""
        merged = updated_headers(entry.headers, headers_from_304)
        freshness = storable(
            entry.status, merged, request_headers,
            ttl_max=ttl_max, now=response_time, request_time=request_time,
            response_time=response_time, authorization_allowed=authorization_allowed,
            cookies_allowed=cookies_allowed,
        )  # fmt: skip
        live = entry in self._lru
        if live:
            self._remove(entry)
        if not live or not isinstance(freshness, Freshness):
            return None
        if vary_names(merged) != entry.vary_names:
            return None
        fresh = Entry(
            key=entry.key,
            status=entry.status,
            headers=merged,
            body=entry.body,
            freshness=freshness,
            stored_at=response_time,
            vary_names=entry.vary_names,
            vary_key=entry.vary_key,
            host=entry.host,
            path=entry.path,
            cost=entry_cost(entry.key, merged, entry.body, entry.vary_key),
        )
        if fresh.cost > self.size:
            return None
        self._insert(fresh)
        self.stats.revalidated += 1
        return fresh

    def _insert(self, entry: Entry) -> None:
        variants = self._by_key.setdefault(entry.key, [])
        variants.insert(0, entry)
        self._lru[entry] = None
        self.bytes += entry.cost
        while len(variants) > MAX_VARIANTS:
            self._remove(variants[-1])
            self.stats.evictions += 1
        while self.bytes > self.size and self._lru:
            oldest = next(iter(self._lru))
            self._remove(oldest)
            self.stats.evictions += 1

    def _remove(self, entry: Entry) -> None:
        if self._lru.pop(entry, False) is False:
            return
        self.bytes -= entry.cost
        variants = self._by_key.get(entry.key)
        if variants is not None:
            variants[:] = [e for e in variants if e is not entry]
            if not variants:
                del self._by_key[entry.key]

    # --- removing -----------------------------------------------------------------------------

    def invalidate(self, key: bytes) -> int:
        """Drop every variant of ``key`` (RFC 9111 §4.4, after an unsafe method succeeded)."""
        gone = list(self._by_key.get(key, ()))
        for entry in gone:
            self._remove(entry)
        self.stats.invalidated += len(gone)
        return len(gone)

    def purge(self, host: str, path_prefix: str) -> int:
        """Drop the entries of ``host`` whose path starts with ``path_prefix``; the number
        dropped. ``host`` is matched without case; one without a port matches every port of
        that name; ``*`` matches every host. An empty prefix matches every path."""
        wanted = host.lower()
        wanted_has_port = _port_split(wanted)[1] is not None

        def host_matches(entry_host: str) -> bool:
            if wanted in ("*", entry_host):
                return True
            name, port = _port_split(entry_host)
            return not wanted_has_port and port is not None and name == wanted

        gone = [e for e in self._lru if host_matches(e.host) and e.path.startswith(path_prefix)]
        for entry in gone:
            self._remove(entry)
        self.stats.purged += len(gone)
        return len(gone)

    # --- coalescing and background revalidation -----------------------------------------------

    def flight(self, key: bytes, request_headers: Headers) -> Flight:
        """Join the fetch of ``key``: the first caller leads (fetches, then ``finish``),
        the others follow (``await wait(timeout)``). Use as ``with cache.flight(...) as f:``
        so a leader always ends its flight."""
        pending = self._flights.get(key)
        if pending is not None:
            return Flight(self, key, list(request_headers), pending, leader=False)
        pending = _Pending()
        self._flights[key] = pending
        return Flight(self, key, list(request_headers), pending, leader=True)

    def begin_refresh(self, key: bytes) -> bool:
        """True when the caller may start the one background revalidation of ``key``; it
        must call ``end_refresh(key)`` when done (in a ``finally``)."""
        if key in self._refreshing:
            return False
        self._refreshing.add(key)
        return True

    def end_refresh(self, key: bytes) -> None:
        self._refreshing.discard(key)

    # --- showing ------------------------------------------------------------------------------

    def describe(self) -> dict[str, int]:
        """What ``ctl show cache`` prints: the sizes and every counter."""
        shown = {
            "entries": len(self._lru),
            "bytes": self.bytes,
            "size": self.size,
            "max_object": self.max_object,
            "keys": len(self._by_key),
            "flights": len(self._flights),
            "refreshing": len(self._refreshing),
        }
        shown.update({f.name: getattr(self.stats, f.name) for f in fields(self.stats)})
        return shown


def _port_split(host: str) -> tuple[str, str | None]:
    """``name:port`` → (name, port); a bracketed IPv6 literal's colons are not a port's."""
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit() and not name.endswith(":"):
        return name, port
    return host, None


class Recording:
    """Collects a response body chunk by chunk while it is relayed to the client.

    ``add`` returns False once the body passes ``max_object``: the recording is abandoned,
    its chunks dropped, and ``commit`` stores nothing. ``commit`` once the body ended whole;
    a body cut short must not be committed (drop the Recording instead)."""

    __slots__ = ("_cache", "_chunks", "_done", "_length", "_meta", "abandoned")

    def __init__(
        self,
        cache: Cache,
        key: bytes,
        status: int,
        headers: Headers,
        freshness: Freshness,
        request_headers: Headers,
        host: str,
        path: str,
        stored_at: float | None,
    ) -> None:
        self._cache = cache
        self._meta = (key, status, headers, freshness, request_headers, host, path, stored_at)
        self._chunks: list[bytes] = []
        self._length = 0
        self._done = False
        self.abandoned = False

    def add(self, data: bytes | bytearray | memoryview) -> bool:
        if self.abandoned or self._done:
            return False
        self._length += len(data)
        if self._length > self._cache.max_object:
            self.abandoned = True
            self._chunks = []
            self._cache.stats.too_big += 1
            return False
        self._chunks.append(bytes(data))
        return True

    def commit(self) -> Entry | None:
        """Store the collected response; None when abandoned, committed before, or refused."""
        if self.abandoned or self._done:
            return None
        self._done = True
        key, status, headers, freshness, request_headers, host, path, stored_at = self._meta
        body = b"".join(self._chunks)
        self._chunks = []
        return self._cache.store(
            key, status, headers, body, freshness,
            request_headers=request_headers, host=host, path=path, stored_at=stored_at,
        )  # fmt: skip


class _Pending:
    """One key's fetch in flight: its outcome, and the event followers wait on."""

    __slots__ = ("done", "entry")

    def __init__(self) -> None:
        self.done = asyncio.Event()
        self.entry: Entry | None = None


class Flight:
    """One caller's part in a key's fetch: ``leader`` fetches, followers ``wait``."""

    __slots__ = ("_cache", "_finished", "_pending", "_request_headers", "key", "leader")

    def __init__(
        self,
        cache: Cache,
        key: bytes,
        request_headers: Headers,
        pending: _Pending,
        *,
        leader: bool,
    ) -> None:
        self._cache = cache
        self.key = key
        self._request_headers = request_headers
        self._pending = pending
        self.leader = leader
        self._finished = False

    def finish(self, entry: Entry | None) -> None:
        """The leader's outcome: the stored entry, or None (not storable, failed). Wakes every
        follower; later calls do nothing."""
        if not self.leader:
            raise RuntimeError("only the leader of a flight finishes it")
        if self._finished:
            return
        self._finished = True
        self._pending.entry = entry
        self._pending.done.set()
        if self._cache._flights.get(self.key) is self._pending:
            del self._cache._flights[self.key]

    async def wait(self, timeout: float) -> Entry | None:
        """A follower's wait: the leader's entry when it fits this request, else None (go to
        the origin yourself)."""
        if self.leader:
            raise RuntimeError("the leader of a flight fetches; it does not wait")
        try:
            async with asyncio.timeout(timeout):
                await self._pending.done.wait()
        except TimeoutError:
            self._cache.stats.lock_timeouts += 1
            return None
        entry = self._pending.entry
        if entry is None or not entry.selected_by(self._request_headers):
            return None
        self._cache.stats.coalesced += 1
        return entry

    def __enter__(self) -> Flight:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.leader:
            self.finish(None)  # nothing when finished already
