"""Rate limits and connection limits, compiled once per generation (docs/access-control.md).

Rule of this room: a limit counts under ``identity + key`` (``config.Limit.identity``: its
name, rate, burst and key kind), in the instance's counters (policy/counters.py: one dict in a
single process, a shared-memory table across workers) or in Redis (policy/redis_store.py), so
a reload that keeps a limit keeps its counts, and one that changes it starts afresh. The key
is worked out from the one client identity the rest of the policy uses; IPv6 clients are
counted by their ``global.client_ipv6_prefix`` network (a host owns a whole /64, so counting
single addresses would let it through 2^64 times). Limits of a listener or route are checked
in the order they are named; the first that refuses answers, those before it have counted the
request. ``action = "log"`` refuses nothing: it logs (a few lines per interval) and counts what
it would have refused. A Redis store that fails is ``on_store_error``: "allow" lets the request
through, "deny" answers 503; both are logged and counted.

A limit kept by the instance costs one dict or shared-table lookup per request and needs no
coroutine; a Redis-kept one costs a round trip.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from revproxy.config.model import Limit
from revproxy.ops.log_limit import RateLimitedLog
from revproxy.ops.metrics import RequestMetrics
from revproxy.policy.counters import Counters
from revproxy.policy.redis_store import RedisCounters, StoreError
from revproxy.proto.events import Headers
from revproxy.proto.ratelimit import Decision, Rate

log = logging.getLogger("revproxy.limits")

# Refusal reasons of conn_limit (access log ``refused=``, metrics).
CONN_LIMIT = "limit:conn_limit"
STREAM_LIMIT = "limit:streams_per_client"

# Kinds of key.
_CLIENT, _USER, _CLIENT_ROUTE, _HEADER = range(4)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A limit said no: 429 with when to come back, or 503 when its store failed and
    ``on_store_error = "deny"``."""

    limit: Limit
    decision: Decision | None  # None: the store failed

    @property
    def reason(self) -> str:
        return f"limit:{self.limit.name}"

    @property
    def status(self) -> int:
        return 429 if self.decision is not None else 503

    def headers(self) -> Headers:
        """``Retry-After`` (whole seconds, rounded up, at least 1), and with ``headers =
        true`` the RateLimit-Policy and RateLimit fields of draft-ietf-httpapi-ratelimit-
        headers (-08/-09 form)."""
        decision = self.decision
        if decision is None:
            return [(b"retry-after", b"1")]
        out: Headers = [(b"retry-after", str(_ceil_seconds(decision.retry_after)).encode())]
        limit = self.limit
        if limit.headers:
            name = limit.name.encode()
            window = _ceil_seconds(limit.period)
            quota = limit.requests + limit.burst
            out.append((b"ratelimit-policy", b'"%s";q=%d;w=%d' % (name, quota, window)))
            reset = _ceil_seconds(decision.retry_after)
            out.append((b"ratelimit", b'"%s";r=%d;t=%d' % (name, decision.remaining, reset)))
        return out


def _ceil_seconds(seconds: float) -> int:
    whole = int(seconds)
    return max(whole + (whole < seconds), 1)


class Limiter:
    """One ``[limit.NAME]`` as it applies to requests or connections."""

    __slots__ = ("by_client", "config", "header", "kind", "log_line", "prefix", "rate", "remote")

    def __init__(self, limit: Limit, remote: RedisCounters | None) -> None:
        self.config = limit
        self.rate = Rate(limit.requests, limit.period, limit.burst)
        self.prefix = limit.identity.encode() + b"\0"
        self.by_client = self.prefix + b"c\0"
        self.remote = remote
        self.header = b""
        if limit.key == "client":
            self.kind = _CLIENT
        elif limit.key == "user":
            self.kind = _USER
        elif limit.key == "client+route":
            self.kind = _CLIENT_ROUTE
        else:
            self.kind = _HEADER
            self.header = limit.key.partition(":")[2].encode()
        self.log_line = RateLimitedLog()

    def key(self, client: str, headers: Headers | None, user: str, route: int) -> bytes:
        """What this request is counted under. A request without the header a ``header:``
        limit counts by (or, for ``user``, without a user) is counted by its client."""
        kind = self.kind
        if kind == _HEADER and headers is not None:
            name = self.header
            for n, v in headers:
                if n == name:
                    return self.prefix + b"h\0" + v
        elif kind == _USER and user:
            return self.prefix + b"u\0" + user.encode()
        elif kind == _CLIENT_ROUTE:
            return self.prefix + b"%d\0" % route + client.encode()
        return self.by_client + client.encode()


class LimitSet:
    """The limits of one listener or route, in the order they are named."""

    __slots__ = ("limiters", "local", "metrics", "v6_prefix")

    def __init__(
        self, limiters: Sequence[Limiter], metrics: RequestMetrics, v6_prefix: int = 64
    ) -> None:
        self.limiters = tuple(limiters)
        # All kept by the instance: decided without a coroutine.
        self.local = all(lim.remote is None for lim in self.limiters)
        self.metrics = metrics
        self.v6_prefix = v6_prefix

    def client(self, address: str) -> str:
        """The client as limits count it (IPv6: its network)."""
        if ":" not in address:
            return address
        return _v6_network(address, self.v6_prefix)

    def check(
        self,
        counters: Counters,
        address: str,
        headers: Headers | None = None,
        user: str = "",
        route: int = -1,
    ) -> Refusal | None:
        """Count one request (or connection) against limits kept by the instance (``local``
        must be true); the refusal, if one refuses."""
        client = address if ":" not in address else _v6_network(address, self.v6_prefix)
        now = time.monotonic()
        for lim in self.limiters:
            key = (
                lim.by_client + client.encode()
                if lim.kind == _CLIENT
                else lim.key(client, headers, user, route)
            )
            if counters.allow(key, lim.rate, now):
                continue
            # Refused, not counted: the same question again says when to come back.
            decision = counters.hit(key, lim.rate, now)
            if not decision.allowed and self._refuses(lim, address):
                return Refusal(lim.config, decision)
        return None

    async def check_async(
        self,
        counters: Counters,
        address: str,
        headers: Headers | None = None,
        user: str = "",
        route: int = -1,
    ) -> Refusal | None:
        """``check`` for sets with at least one Redis-kept limit."""
        client = self.client(address)
        for lim in self.limiters:
            key = lim.key(client, headers, user, route)
            remote = lim.remote
            if remote is None:
                decision = counters.hit(key, lim.rate, time.monotonic())
            else:
                try:
                    decision = await remote.hit(key, lim.rate)
                except StoreError as exc:
                    if self._store_failed(lim, exc):
                        return Refusal(lim.config, None)
                    continue
            if not decision.allowed and self._refuses(lim, address):
                return Refusal(lim.config, decision)
        return None

    def _refuses(self, lim: Limiter, address: str) -> bool:
        """A limit was exceeded: whether it refuses (``action = "reject"``), or only says so."""
        limit = lim.config
        self.metrics.limit_exceeded.inc((limit.name, limit.action))
        if limit.action == "reject":
            return True
        lim.log_line.warn(
            log, "limit=%s client=%s over %d/%gs (action log: let through)",
            limit.name, address, limit.requests, limit.period,
        )  # fmt: skip
        return False

    def _store_failed(self, lim: Limiter, exc: StoreError) -> bool:
        limit = lim.config
        outcome = limit.on_store_error
        self.metrics.limit_store_errors.inc((limit.name, outcome))
        lim.log_line.warn(
            log, "limit=%s store %s failed (%s): on_store_error=%s",
            limit.name, _redacted(limit.store or ""), exc, outcome,
        )  # fmt: skip
        return outcome == "deny"


@functools.lru_cache(maxsize=65536)
def _v6_network(address: str, prefix: int) -> str:
    try:
        net = ipaddress.IPv6Network((address.partition("%")[0], prefix), strict=False)
    except ValueError:
        return address
    mapped = net.network_address.ipv4_mapped
    if mapped is not None and prefix >= 96:
        return str(mapped)
    return f"{net.network_address}/{prefix}"


def _redacted(url: str) -> str:
    """A store URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    at = rest.rfind("@")
    return f"{scheme}{sep}{rest[at + 1 :]}" if at >= 0 else url


def compile_limits(
    names: Sequence[str],
    limits: dict[str, Limit],
    stores: dict[str, RedisCounters],
    metrics: RequestMetrics,
    v6_prefix: int,
) -> LimitSet | None:
    """The ``limits`` of a listener or route (None when it names none: one ``is None`` per
    request). ``stores``: one Redis client per store URL, shared by the limits naming it and
    kept across reloads by the generation builder."""
    if not names:
        return None
    limiters = []
    for name in names:
        limit = limits[name]
        remote = None
        if limit.store is not None:
            remote = stores.get(limit.store)
            if remote is None:
                remote = stores[limit.store] = RedisCounters(limit.store)
        limiters.append(Limiter(limit, remote))
    return LimitSet(limiters, metrics, v6_prefix)


class ConnGate:
    """``conn_limit``: concurrent connections (and HTTP/2 streams) per client, for the whole
    instance (the counters are shared by the workers)."""

    __slots__ = ("per_client", "prefix", "stream_prefix", "streams_per_client", "v6_prefix")

    def __init__(
        self, listener: str, per_client: int | None, streams: int | None, v6_prefix: int
    ) -> None:
        self.per_client = per_client
        self.streams_per_client = streams
        self.prefix = b"conn\0" + listener.encode() + b"\0"
        self.stream_prefix = b"streams\0" + listener.encode() + b"\0"
        self.v6_prefix = v6_prefix

    def key(self, address: str, *, stream: bool = False) -> bytes:
        client = address if ":" not in address else _v6_network(address, self.v6_prefix)
        return (self.stream_prefix if stream else self.prefix) + client.encode()
