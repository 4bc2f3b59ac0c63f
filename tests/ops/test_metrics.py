"""Metrics: recording, the Prometheus text format, merging workers' snapshots, bounded labels;
and the channel that carries snapshots, states and sockets between master and workers."""

from __future__ import annotations

import asyncio
import json
import re
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from revproxy.ops.accesslog import AccessRecord
from revproxy.ops.metrics import (
    LATENCY_BUCKETS,
    InstanceMetrics,
    Registry,
    RequestMetrics,
    merged,
    status_class,
)
from revproxy.runtime.channel import Channel
from revproxy.runtime.stats import RateMeter
from revproxy.runtime.workers import describe_exit, worker_count


def record(**kw: object) -> AccessRecord:
    base: dict[str, object] = dict(
        id="1", client="192.0.2.1", peer="192.0.2.1", listener="web", sni="", host="a.example",
        method="GET", path="/secret/path?q=1", status=200, bytes_in=100, bytes_out=2000,
        route="0", pool="app", backend="app/10.0.0.1:80", duration_ms=12.0, upstream_ms=10.0,
    )  # fmt: skip
    base.update(kw)
    return AccessRecord(**base)  # type: ignore[arg-type]


def samples(text: str) -> dict[str, float]:
    """'name{labels}' → value, for every sample line."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (101, "1xx"),
        (200, "2xx"),
        (308, "3xx"),
        (404, "4xx"),
        (503, "5xx"),
        (0, "none"),
        (999, "none"),
    ],
)
def test_status_class(status: int, cls: str) -> None:
    assert status_class(status) == cls


def test_a_request_is_counted_by_listener_route_and_class() -> None:
    m = RequestMetrics()
    m.record(record())
    m.record(record(status=502))
    m.record(record(route="", backend="-", pool="", status=404, upstream_ms=0.0))
    s = samples(m.registry.render())
    assert s['revproxy_requests_total{listener="web",route="0",code="2xx"}'] == 1
    assert s['revproxy_requests_total{listener="web",route="0",code="5xx"}'] == 1
    assert s['revproxy_requests_total{listener="web",route="-",code="4xx"}'] == 1
    assert (
        s['revproxy_backend_responses_total{pool="app",backend="app/10.0.0.1:80",code="2xx"}'] == 1
    )
    assert s['revproxy_received_bytes_total{listener="web"}'] == 300
    assert s['revproxy_sent_bytes_total{listener="web"}'] == 6000
    # Local answers have no upstream latency: two observations, not three.
    assert s['revproxy_upstream_latency_seconds_count{pool="app"}'] == 2
    assert s['revproxy_upstream_latency_seconds_sum{pool="app"}'] == pytest.approx(0.02)


def test_labels_never_carry_what_the_client_sent() -> None:
    m = RequestMetrics()
    for i in range(500):
        m.record(record(host=f"h{i}.example", path=f"/p/{i}", client=f"192.0.2.{i % 250}"))
    text = m.registry.render()
    assert "example" not in text and "/p/" not in text and "192.0.2" not in text
    assert len([x for x in text.splitlines() if x.startswith("revproxy_requests_total")]) == 1


def test_histogram_buckets_are_cumulative_and_end_in_inf() -> None:
    r = Registry()
    h = r.histogram("t_seconds", "help", ("pool",), (0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 2.0, 30.0):
        h.observe(("p",), v)
    s = samples(r.render())
    assert s['t_seconds_bucket{pool="p",le="0.1"}'] == 2  # le is inclusive
    assert s['t_seconds_bucket{pool="p",le="1"}'] == 3
    assert s['t_seconds_bucket{pool="p",le="+Inf"}'] == 5
    assert s['t_seconds_count{pool="p"}'] == 5
    assert s['t_seconds_sum{pool="p"}'] == pytest.approx(32.65)


def test_exposition_format() -> None:
    r = Registry()
    r.counter("a_total", 'says "hi"\nthere', ("x",)).inc(('q"uote\\back\nline',), 2)
    r.gauge("b", "a gauge").set((), 1.5)
    text = r.render()
    assert text.endswith("\n")
    assert '# HELP a_total says "hi"\\nthere\n# TYPE a_total counter\n' in text
    assert 'a_total{x="q\\"uote\\\\back\\nline"} 2\n' in text
    assert "# TYPE b gauge\nb 1.5\n" in text
    line = re.compile(r'[a-z_]+(\{([a-z]+="([^"\\]|\\.)*",?)*\})? -?[0-9.e+Inf]+')
    for x in text.splitlines():
        assert x.startswith("# ") or line.fullmatch(x), x


def test_a_name_cannot_change_kind() -> None:
    r = Registry()
    r.counter("x_total", "h", ("a",))
    assert r.counter("x_total", "h", ("a",)) is r.families["x_total"]
    with pytest.raises(ValueError):
        r.gauge("x_total", "h", ("a",))


def test_worker_snapshots_sum_in_the_master() -> None:
    w1, w2 = RequestMetrics(), RequestMetrics()
    w1.record(record())
    w2.record(record())
    w2.record(record(listener="tls", status=301, upstream_ms=3000.0))
    # what crosses the channel is JSON
    snaps = [json.loads(json.dumps(w.registry.snapshot())) for w in (w1, w2)]
    total = merged(snaps)
    inst = InstanceMetrics(total)
    inst.reloads.inc(("ok",))
    s = samples(total.render())
    assert s['revproxy_requests_total{listener="web",route="0",code="2xx"}'] == 2
    assert s['revproxy_requests_total{listener="tls",route="0",code="3xx"}'] == 1
    assert s['revproxy_upstream_latency_seconds_count{pool="app"}'] == 3
    assert s['revproxy_upstream_latency_seconds_bucket{pool="app",le="0.01"}'] == 2
    assert s['revproxy_upstream_latency_seconds_bucket{pool="app",le="2.5"}'] == 2
    assert s['revproxy_upstream_latency_seconds_bucket{pool="app",le="5"}'] == 3
    assert s['revproxy_reloads_total{result="ok"}'] == 1


@given(st.lists(st.floats(min_value=0, max_value=1e4, allow_nan=False), max_size=50))
def test_histogram_count_is_the_number_of_observations(values: list[float]) -> None:
    m = RequestMetrics()
    for v in values:
        m.upstream.observe(("p",), v)
    if not values:
        return
    row = m.upstream.values[("p",)]
    assert sum(row[:-1]) == len(values)
    assert len(row) == len(LATENCY_BUCKETS) + 2


def test_rate_meter() -> None:
    meter = RateMeter()
    assert meter.update({"a": 10}, now=100.0) == {}
    assert meter.update({"a": 30}, now=110.0) == {"a": 2.0}
    assert meter.update({"a": 30, "b": 5}, now=120.0) == {"a": 1.0, "b": 0.25}
    # samples older than the window are forgotten
    assert meter.update({"a": 40}, now=200.0) == {}


def test_worker_count_and_exit_descriptions() -> None:
    assert worker_count(3) == 3
    assert worker_count("auto") >= 1
    assert describe_exit(-9) == "was killed by signal SIGKILL"
    assert describe_exit(1) == "exited with status 1"


def test_the_channel_carries_messages_and_sockets_in_order() -> None:
    async def main() -> None:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        master, worker = Channel(a), Channel(b)
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        big = "x" * 300_000  # larger than one read
        master.post({"op": "one"})
        master.post({"op": "init", "blob": big}, [listener.fileno()])
        master.post({"op": "two"})
        got = [await worker.recv() for _ in range(3)]
        assert [m["op"] for m, _ in got] == ["one", "init", "two"]
        assert got[1][0]["blob"] == big
        assert got[0][1] == got[2][1] == []
        (fd,) = got[1][1]
        listener.close()  # the worker's copy keeps the socket listening
        received = socket.socket(fileno=fd)
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            conn, _ = received.accept()
            conn.close()
        received.close()
        await master.close()
        with pytest.raises(EOFError):
            await worker.recv()
        await worker.close()

    asyncio.run(main())


def test_an_l4_connection_is_counted_apart_from_requests() -> None:
    m = RequestMetrics()
    m.connection(record(listener="db", method="TCP", path="", status=200, bytes_in=5, bytes_out=7))
    m.connection(record(listener="db", method="TCP", path="", status=502, pool=""))
    s = samples(m.registry.render())
    assert s['revproxy_tcp_connections_total{listener="db",pool="app",code="2xx"}'] == 1
    assert s['revproxy_tcp_connections_total{listener="db",pool="-",code="5xx"}'] == 1
    assert s['revproxy_received_bytes_total{listener="db"}'] == 105
    assert not any(k.startswith("revproxy_requests_total") for k in s)


# --- tallies: `record` defers the labels to when the metrics are read ------------------------


def direct_record(m: RequestMetrics, rec: AccessRecord) -> None:
    """What `record` used to do on every request: the labels and increments at once."""
    code = status_class(rec.status)
    m.requests.inc((rec.listener, rec.route or "-", code))
    m.received.inc((rec.listener,), rec.bytes_in)
    m.sent.inc((rec.listener,), rec.bytes_out)
    m.duration.observe((rec.listener,), rec.duration_ms / 1000.0)
    if rec.backend != "-":
        m.backend_responses.inc((rec.pool, rec.backend, code))
        m.upstream.observe((rec.pool,), rec.upstream_ms / 1000.0)


records_st = st.lists(
    st.builds(
        record,
        listener=st.sampled_from(["web", "tls"]),
        route=st.sampled_from(["", "-", "0", "1", "acme"]),
        status=st.sampled_from([0, 101, 200, 204, 301, 404, 499, 502, 503, 999]),
        pool=st.sampled_from(["", "app", "api"]),
        backend=st.sampled_from(["-", "app/10.0.0.1:80", "b2"]),
        bytes_in=st.integers(0, 10_000),
        bytes_out=st.integers(0, 10_000),
        duration_ms=st.floats(0, 70_000, allow_nan=False),
        upstream_ms=st.floats(0, 70_000, allow_nan=False),
    ),
    max_size=40,
)


@given(records=records_st, reads=st.lists(st.integers(0, 40), max_size=4))
def test_tallied_records_read_as_if_counted_at_once(
    records: list[AccessRecord], reads: list[int]
) -> None:
    tallied, direct = RequestMetrics(), RequestMetrics()
    for i, rec in enumerate(records):
        if i in reads:  # a worker's snapshot in between: nothing lost, nothing counted twice
            tallied.registry.snapshot()
        tallied.record(rec)
        direct_record(direct, rec)
    got, want = samples(tallied.registry.render()), samples(direct.registry.render())
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key  # histogram sums add up in another order


def test_a_snapshot_holds_everything_recorded_before_it() -> None:
    m = RequestMetrics()
    m.record(record())
    first = m.registry.snapshot()
    m.record(record(status=503))
    second = m.registry.snapshot()
    requests = {tuple(k): v for k, v in second["revproxy_requests_total"]["values"]}
    assert requests == {("web", "0", "2xx"): 1, ("web", "0", "5xx"): 1}
    assert first["revproxy_requests_total"]["values"] == [[["web", "0", "2xx"], 1]]
    m.registry.snapshot()  # reading again adds nothing
    assert (
        samples(m.registry.render())['revproxy_request_duration_seconds_count{listener="web"}'] == 2
    )


def test_two_recorders_can_share_a_registry() -> None:
    registry = Registry()
    a, b = RequestMetrics(registry), RequestMetrics(registry)
    a.record(record())
    b.record(record())
    s = samples(registry.render())
    assert s['revproxy_requests_total{listener="web",route="0",code="2xx"}'] == 2
