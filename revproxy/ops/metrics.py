"""Metrics: counters, gauges and histograms kept in-process, rendered as Prometheus text.

Rule of this room: recording is a dict increment, formatting happens only when ``/metrics`` is
scraped. The request path goes further: ``RequestMetrics.record`` adds each exchange to a
tally keyed on the record's own fields, and works out label values (status class, ``-`` for no
route) and spreads the tally over the families only when the registry is read
(``snapshot``, ``render``), through the registry's ``collectors``.

Label values come from the configuration (listener name, route index, pool name,
backend label) or from small fixed sets (status class, check result, reload result), never
from what a client sent (no paths, no hosts, no addresses), so the number of series is
bounded by the configuration.

Each process keeps its own ``Registry``. Workers send ``snapshot()`` (plain JSON-able data)
to the master, which sums them with ``merge()`` into one exposition. Sans-I/O: no sockets, no
clock; durations are passed in.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

from revproxy.ops.accesslog import AccessRecord

Kind = Literal["counter", "gauge", "histogram"]
Labels = tuple[str, ...]

# Upstream latency and request duration (seconds): from a fast cache hit to a slow report.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0
)  # fmt: skip
# Health check durations (seconds): checks time out after a second or two.
CHECK_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0
)  # fmt: skip

# Status classes are the only status label: "2xx"; anything else (0 = no response) is "none".
_STATUS_CLASS = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


def status_class(status: int) -> str:
    return _STATUS_CLASS.get(status // 100, "none")


class Family:
    """One metric name: its kind, help text, label names and samples by label values."""

    __slots__ = ("buckets", "help", "kind", "labelnames", "name", "values")

    def __init__(
        self,
        name: str,
        kind: Kind,
        help_text: str,
        labelnames: Sequence[str],
        buckets: Sequence[float] = (),
    ) -> None:
        self.name = name
        self.kind: Kind = kind
        self.help = help_text
        self.labelnames: tuple[str, ...] = tuple(labelnames)
        self.buckets: tuple[float, ...] = tuple(buckets)
        # counter/gauge: labels → value; histogram: labels → [count per bucket..., +Inf, sum]
        self.values: dict[Labels, Any] = {}

    def inc(self, labels: Labels, value: float = 1) -> None:
        """Counter (or gauge) increment."""
        self.values[labels] = self.values.get(labels, 0) + value

    def set(self, labels: Labels, value: float) -> None:
        """Gauge value."""
        self.values[labels] = value

    def observe(self, labels: Labels, value: float) -> None:
        """Histogram observation."""
        row = self.values.get(labels)
        if row is None:
            row = self.values[labels] = _empty_row(self.buckets)
        row[bisect_left(self.buckets, value)] += 1
        row[-1] += value

    def add_row(self, labels: Labels, row: Sequence[float]) -> None:
        """Histogram observations tallied elsewhere, as a row in this family's layout."""
        mine = self.values.get(labels)
        if mine is None:
            self.values[labels] = list(row)
        else:
            for i, v in enumerate(row):
                mine[i] += v

    def merge(self, values: Iterable[tuple[Labels, Any]]) -> None:
        """Add other samples of the same family (from another worker) to these."""
        for labels, value in values:
            mine = self.values.get(labels)
            if self.kind == "histogram":
                if mine is None:
                    self.values[labels] = list(value)
                else:
                    for i, v in enumerate(value):
                        mine[i] += v
            else:
                self.values[labels] = (mine or 0) + value

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]
        for labels in sorted(self.values):
            value = self.values[labels]
            pairs = list(zip(self.labelnames, labels, strict=True))
            if self.kind != "histogram":
                lines.append(f"{self.name}{_labels(pairs)} {_number(value)}")
                continue
            # Bucket counts are whole numbers, however a row was summed (rows are lists of
            # floats by type: the last cell is the sum of the observations).
            running = 0
            for bound, count in zip(self.buckets, value, strict=False):
                running += int(count)
                le = [*pairs, ("le", _number(bound))]
                lines.append(f"{self.name}_bucket{_labels(le)} {running}")
            running += int(value[len(self.buckets)])
            lines.append(f"{self.name}_bucket{_labels([*pairs, ('le', '+Inf')])} {running}")
            lines.append(f"{self.name}_sum{_labels(pairs)} {_number(value[-1])}")
            lines.append(f"{self.name}_count{_labels(pairs)} {running}")
        return lines


class Registry:
    """The families of one process, by name."""

    def __init__(self) -> None:
        self.families: dict[str, Family] = {}
        # Called before the families are read: recorders that keep tallies of their own
        # (``RequestMetrics``) add them to the families here.
        self.collectors: list[Callable[[], None]] = []

    def collect(self) -> None:
        """Bring the families up to date with every recorder's tallies."""
        for collector in self.collectors:
            collector()

    def family(
        self,
        name: str,
        kind: Kind,
        help_text: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = (),
    ) -> Family:
        fam = self.families.get(name)
        if fam is None:
            fam = self.families[name] = Family(name, kind, help_text, labelnames, buckets)
        elif fam.kind != kind or fam.labelnames != tuple(labelnames):
            raise ValueError(f"metric {name} registered twice with different kinds or labels")
        return fam

    def counter(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> Family:
        return self.family(name, "counter", help_text, labelnames)

    def gauge(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> Family:
        return self.family(name, "gauge", help_text, labelnames)

    def histogram(
        self, name: str, help_text: str, labelnames: Sequence[str], buckets: Sequence[float]
    ) -> Family:
        return self.family(name, "histogram", help_text, labelnames, buckets)

    def snapshot(self) -> dict[str, Any]:
        """Plain JSON-able data another process can ``merge``."""
        self.collect()
        return {
            f.name: {
                "kind": f.kind,
                "help": f.help,
                "labels": list(f.labelnames),
                "buckets": list(f.buckets),
                "values": [[list(k), v] for k, v in f.values.items()],
            }
            for f in self.families.values()
        }

    def merge(self, snapshot: Mapping[str, Any]) -> None:
        for name, data in snapshot.items():
            fam = self.family(name, data["kind"], data["help"], data["labels"], data["buckets"])
            fam.merge((tuple(k), v) for k, v in data["values"])

    def render(self) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        self.collect()
        lines: list[str] = []
        for name in sorted(self.families):
            fam = self.families[name]
            if fam.values or fam.kind != "histogram":
                lines.extend(fam.render())
        return "\n".join(lines) + "\n"


def merged(snapshots: Iterable[Mapping[str, Any]]) -> Registry:
    out = Registry()
    for snap in snapshots:
        out.merge(snap)
    return out


# listener, route, status, pool, backend: the fields of an access record labels come from.
_TallyKey = tuple[str, str, int, str, str]


class _Tally:
    """Exchanges with the same ``_TallyKey``: counts, byte sums, and histogram rows in the
    layout ``Family`` keeps (a count per bucket, +Inf, then the sum)."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "duration",
        "duration_buckets",
        "requests",
        "upstream",
        "upstream_buckets",
    )

    def __init__(self, duration: tuple[float, ...], upstream: tuple[float, ...]) -> None:
        self.requests = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.duration_buckets = duration
        self.duration: list[float] = _empty_row(duration)
        self.upstream_buckets = upstream
        self.upstream: list[float] = _empty_row(upstream)


def _empty_row(buckets: tuple[float, ...]) -> list[float]:
    return [0] * (len(buckets) + 1) + [0.0]


class RequestMetrics:
    """What the request path records: one call per exchange, fed the access-log record."""

    def __init__(self, registry: Registry | None = None) -> None:
        self.registry = registry if registry is not None else Registry()
        r = self.registry
        self.requests = r.counter(
            "revproxy_requests_total",
            "Requests answered, by listener, route index (- when none matched) and status class.",
            ("listener", "route", "code"),
        )
        self.received = r.counter(
            "revproxy_received_bytes_total", "Bytes received from clients.", ("listener",)
        )
        self.sent = r.counter("revproxy_sent_bytes_total", "Bytes sent to clients.", ("listener",))
        self.duration = r.histogram(
            "revproxy_request_duration_seconds",
            "Time from request head to the end of the response, by listener.",
            ("listener",),
            LATENCY_BUCKETS,
        )
        self.backend_responses = r.counter(
            "revproxy_backend_responses_total",
            "Requests sent to a backend, by pool, backend and status class.",
            ("pool", "backend", "code"),
        )
        self.upstream = r.histogram(
            "revproxy_upstream_latency_seconds",
            "Time a backend took to answer (connect to end of response), by pool.",
            ("pool",),
            LATENCY_BUCKETS,
        )
        self.tcp = r.counter(
            "revproxy_tcp_connections_total",
            "L4 connections (mode tcp, TLS passthrough) by listener, pool and the status class "
            "of how they ended (as in the access log).",
            ("listener", "pool", "code"),
        )
        self.refused = r.counter(
            "revproxy_refused_total",
            "Requests (HTTP) or connections (TCP) the edge policy refused, by listener and "
            'reason ("deny", "auth", "limit:NAME").',
            ("listener", "reason"),
        )
        self.limit_exceeded = r.counter(
            "revproxy_limit_exceeded_total",
            "Requests or connections over a [limit.NAME], by limit and action (reject: refused "
            "with 429; log: let through and counted).",
            ("limit", "action"),
        )
        self.limit_store_errors = r.counter(
            "revproxy_limit_store_errors_total",
            "Requests a limit could not count because its Redis store failed, by limit and "
            "what on_store_error did (allow, deny).",
            ("limit", "outcome"),
        )
        self.egress = r.counter(
            "revproxy_egress_total",
            "Forward-proxy requests, CONNECT and SOCKS5 tunnels (mode forward, socks5) by "
            'listener, user ("-" when none) and decision ("allow", or why refused: "auth", '
            '"destination", "port", "connect-port", "deny:CLASS", "resolve", "connect", ...).',
            ("listener", "user", "decision"),
        )
        self.cache = r.counter(
            "revproxy_cache_total",
            "Requests of caching routes by listener and what the cache did (hit, miss, "
            "coalesced, stale, revalidated, bypass, refresh).",
            ("listener", "result"),
        )
        self.compression = r.counter(
            "revproxy_compression_total",
            "Responses of compressing routes by listener and outcome (the encoding, "
            '"skip:REASON", or "passed:saturated" when the worker had no CPU to spare).',
            ("listener", "outcome"),
        )
        self.slow_readers_cut = r.counter(
            "revproxy_slow_readers_cut_total",
            "Connections cut because this process held more than global.max_buffer_memory "
            "for readers that did not take their bytes (the slowest first).",
            (),
        )

        # Exchanges recorded since the families were last brought up to date, by what
        # their labels are made of; see ``record`` and ``collect``.
        self._tallies: dict[_TallyKey, _Tally] = {}
        self.registry.collectors.append(self.collect)

    def record(self, rec: AccessRecord) -> None:
        """Count one finished exchange (it runs for every request: one dict lookup, a few
        increments, no label worked out; ``collect`` does that when the metrics are read)."""
        if rec.refused:
            self.refused.inc((rec.listener, rec.refused))
        if rec.cache:
            self.cache.inc((rec.listener, rec.cache))
        if rec.encoding:
            self.compression.inc((rec.listener, rec.encoding))
        key = (rec.listener, rec.route, rec.status, rec.pool, rec.backend)
        tally = self._tallies.get(key)
        if tally is None:
            tally = self._tallies[key] = _Tally(self.duration.buckets, self.upstream.buckets)
        tally.requests += 1
        tally.bytes_in += rec.bytes_in
        tally.bytes_out += rec.bytes_out
        seconds = rec.duration_ms / 1000.0
        row = tally.duration
        row[bisect_left(tally.duration_buckets, seconds)] += 1
        row[-1] += seconds
        if rec.backend != "-":
            seconds = rec.upstream_ms / 1000.0
            row = tally.upstream
            row[bisect_left(tally.upstream_buckets, seconds)] += 1
            row[-1] += seconds

    def collect(self) -> None:
        """Add the exchanges recorded since the last call to the families."""
        tallies, self._tallies = self._tallies, {}
        for (listener, route, status, pool, backend), tally in tallies.items():
            code = status_class(status)
            self.requests.inc((listener, route or "-", code), tally.requests)
            self.received.inc((listener,), tally.bytes_in)
            self.sent.inc((listener,), tally.bytes_out)
            self.duration.add_row((listener,), tally.duration)
            if backend != "-":
                self.backend_responses.inc((pool, backend, code), tally.requests)
                self.upstream.add_row((pool,), tally.upstream)

    def connection(self, rec: AccessRecord) -> None:
        """Count one finished L4 connection (its access-log record)."""
        listener = rec.listener
        if rec.refused:
            self.refused.inc((listener, rec.refused))
        self.tcp.inc((listener, rec.pool or "-", status_class(rec.status)))
        self.received.inc((listener,), rec.bytes_in)
        self.sent.inc((listener,), rec.bytes_out)

    def egress_decision(self, rec: AccessRecord) -> None:
        """Count one forward request or tunnel (its access-log record): the decision, and
        for a tunnel its bytes (a relayed request's are counted by ``record``)."""
        self.egress.inc((rec.listener, rec.user or "-", rec.refused or "allow"))
        if rec.method in ("CONNECT", "SOCKS5"):
            if rec.refused:
                self.refused.inc((rec.listener, rec.refused))
            self.received.inc((rec.listener,), rec.bytes_in)
            self.sent.inc((rec.listener,), rec.bytes_out)


class InstanceMetrics:
    """What the master records: reloads, health checks, state changes, worker restarts."""

    def __init__(self, registry: Registry | None = None) -> None:
        self.registry = registry if registry is not None else Registry()
        r = self.registry
        self.reloads = r.counter(
            "revproxy_reloads_total", "Configuration reloads, by result (ok, error).", ("result",)
        )
        self.last_reload = r.gauge(
            "revproxy_reload_last_success_timestamp_seconds",
            "Unix time of the last configuration (re)load that succeeded.",
        )
        self.checks = r.counter(
            "revproxy_health_checks_total",
            "Active health checks, by pool, backend and result (ok, fail).",
            ("pool", "backend", "result"),
        )
        self.check_duration = r.histogram(
            "revproxy_health_check_duration_seconds",
            "Time an active health check took, by pool.",
            ("pool",),
            CHECK_BUCKETS,
        )
        self.state_changes = r.counter(
            "revproxy_backend_state_changes_total",
            "Backend state changes, by pool, backend and the state entered.",
            ("pool", "backend", "to"),
        )
        self.worker_restarts = r.counter(
            "revproxy_worker_restarts_total", "Worker processes restarted after they died."
        )


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape_value(v)}"' for k, v in pairs) + "}"


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)
