"""Health and runtime operations, end to end: origins the tests stop and start flip active
checks; refused connections trip passive checks; backups take over; ``revproxy ctl`` drains,
disables and enables servers; /metrics is parsed and /stats fetched (with basic auth).

Every observation is made the way an operator makes it: requests through the proxy (which
origin answered), ``revproxy ctl show servers``, the log, /metrics and /stats.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import (
    LOOPBACK,
    Origin,
    Proxy,
    Reply,
    Seen,
    closed_port,
    curl,
    curl_http,
    free_port,
    make_cert,
    run_cli,
    toml_path,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("real_peers")]

FAST_CHECKS = (
    'health = { path = "/health", interval = "300ms", timeout = "200ms", rise = 2, fall = 2 }'
)


def config(tmp: Path, port: int, pool: str, *, admin: str = "", extra: str = "") -> str:
    return f"""
[global]
access_log = "off"
watch = false

[admin]
socket = {toml_path(tmp / "admin.sock")}
{admin}

[[listener]]
name = "web"
bind = "{LOOPBACK}:{port}"

[[route]]
pool = "app"

[pool.app]
{pool}
{extra}
"""


def servers(*items: str) -> str:
    return "servers = [" + ", ".join(items) + "]"


class Ops:
    """The proxy as an operator sees it: requests, ctl and the log."""

    def __init__(self, proxy: Proxy, port: int) -> None:
        self.proxy = proxy
        self.port = port

    def ctl(self, *words: str) -> tuple[int, str]:
        res = run_cli("ctl", "-c", str(self.proxy.conf), *words)
        return res.returncode, res.stdout + res.stderr

    def states(self) -> dict[str, str]:
        _, out = self.ctl("show", "servers")
        rows = out.splitlines()[1:]
        return {r.split()[0]: r.split()[1] for r in rows if r.strip()}

    def state_is(self, server: str, state: str, timeout: float = 15.0) -> bool:
        return wait_until(lambda: self.states().get(server) == state, timeout, interval=0.1)

    def who(self, n: int = 10, path: str = "/x") -> Counter[str]:
        """Which origin answered each of ``n`` requests (503 and the like by status)."""
        out: Counter[str] = Counter()
        for _ in range(n):
            r = curl_http(f"http://{LOOPBACK}:{self.port}{path}")
            out[r.body.split()[0].decode() if r.status == 200 else str(r.status)] += 1
        return out


@pytest.fixture
def origins() -> Iterator[tuple[Origin, Origin]]:
    with Origin("a") as a, Origin("b") as b:
        yield a, b


def test_a_stopped_origin_goes_down_comes_back_and_ramps_up(
    tmp_path: Path, origins: tuple[Origin, Origin]
) -> None:
    a, b = origins
    port = free_port()
    pool = servers(f'"{a.address}"', f'"{b.address}"') + f'\n{FAST_CHECKS}\nslow_start = "30s"'
    with Proxy(tmp_path, config(tmp_path, port, pool), ports=[port]) as proxy:
        ops = Ops(proxy, port)
        na, nb = f"app/{a.address}", f"app/{b.address}"
        assert wait_until(lambda: any(s.target == "/health" for s in a.requests()), 10)
        assert ops.states() == {na: "up", nb: "up"}
        assert a.requests()[0].header("user-agent") == "revproxy-health"
        a.stop()
        assert ops.state_is(na, "down")
        assert ops.who(6) == Counter(b=6)
        a.start(a.port)
        assert ops.state_is(na, "up")
        _, out = ops.ctl("show", "servers")
        assert "slow start" in next(line for line in out.splitlines() if line.startswith(na))
        log = proxy.stderr()
        assert f"pool=app backend={na} state up -> down: 2 failed check(s) in a row" in log
        assert f"pool=app backend={na} state down -> up: 2 good check(s) in a row" in log
        _, metrics = ops.ctl("show", "metrics")
        assert (
            f'revproxy_backend_state_changes_total{{pool="app",backend="{na}",to="down"}} 1'
            in metrics
        )
        assert proxy.stop() == 0


def test_passive_failures_take_a_server_out_until_its_cooldown_ends(
    tmp_path: Path, origins: tuple[Origin, Origin]
) -> None:
    _, b = origins
    dead = f"{LOOPBACK}:{closed_port()}"
    port = free_port()
    pool = servers(f'"{dead}"', f'"{b.address}"') + '\npassive = { failures = 2, cooldown = "2s" }'
    with Proxy(tmp_path, config(tmp_path, port, pool), ports=[port]) as proxy:
        ops = Ops(proxy, port)
        # Every request still succeeds: a refused connect moves on to the next server.
        assert ops.who(6) == Counter(b=6)
        assert ops.states()[f"app/{dead}"] == "down"
        assert f"backend=app/{dead} state up -> down: 2 failed connection(s) in a row" in (
            proxy.stderr()
        )
        assert ops.state_is(f"app/{dead}", "up")  # the cooldown ends (no active checks)
        assert "cooldown over" in proxy.stderr()
        assert proxy.stop() == 0


def test_backups_only_when_every_primary_is_down_then_a_local_503(
    tmp_path: Path, origins: tuple[Origin, Origin]
) -> None:
    primary, backup = origins
    port = free_port()
    pool = servers(f'"{primary.address}"', f'{{ address = "{backup.address}", backup = true }}')
    with Proxy(tmp_path, config(tmp_path, port, pool + "\n" + FAST_CHECKS), ports=[port]) as p:
        ops = Ops(p, port)
        assert ops.who(4) == Counter(a=4)
        primary.stop()
        assert ops.state_is(f"app/{primary.address}", "down")
        assert ops.who(4) == Counter(b=4)
        backup.stop()
        assert ops.state_is(f"app/{backup.address}", "down")
        r = curl_http(f"http://{LOOPBACK}:{port}/x")
        assert r.status == 503
        assert r.body == b"503 Service Unavailable\n"  # generated here, names no origin
        assert p.stop() == 0


def test_ctl_drain_disable_enable_are_seen_by_requests(tmp_path: Path) -> None:
    started = threading.Event()

    def handler(name: str) -> object:
        def handle(req: Seen) -> Reply:
            if req.target == "/slow":
                started.set()
                return Reply(body=f"{name} slow\n".encode(), delay=2.0)
            return Reply(body=f"{name} {req.target}\n".encode())

        return handle

    with Origin("a", handler("a")) as a, Origin("b", handler("b")) as b:  # type: ignore[arg-type]
        port = free_port()
        pool = servers(f'{{ address = "{a.address}", name = "alpha" }}', f'"{b.address}"')
        with Proxy(tmp_path, config(tmp_path, port, pool), ports=[port]) as proxy:
            ops = Ops(proxy, port)
            nb = f"app/{b.address}"
            assert ops.who(4) == Counter(a=2, b=2)
            # disable: out of service at once
            assert ops.ctl("disable", "alpha") == (0, "alpha: up -> maint\n")
            assert ops.who(4) == Counter(b=4)
            assert ops.ctl("enable", "app/alpha") == (0, "alpha: maint -> up\n")
            assert ops.who(4) == Counter(a=2, b=2)
            # drain: what is in flight finishes, nothing new arrives
            ops.ctl("disable", "alpha")  # so that the slow request surely lands on b
            answers: list[str] = []
            t = threading.Thread(
                target=lambda: answers.append(
                    curl_http(f"http://{LOOPBACK}:{port}/slow").body.decode()
                )
            )
            t.start()
            assert started.wait(10)
            ops.ctl("enable", "alpha")
            assert ops.ctl("drain", nb) == (0, f"{nb}: up -> drain\n")
            assert ops.who(4) == Counter(a=4)
            t.join(20)
            assert answers == ["b slow\n"]  # finished on the draining server
            _, out = ops.ctl("show", "servers")
            assert re.search(rf"{re.escape(nb)}\s+drain\s+1\s+0\s+", out), out  # none in flight
            assert ops.ctl("enable", nb)[0] == 0
            # unknown names are refused with the list of servers
            code, out = ops.ctl("drain", "app/nope:1")
            assert code == 1 and "no server 'app/nope:1'" in out and "alpha" in out
            assert proxy.stop() == 0


def parse_exposition(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text format → {name: [(labels, value)]}; fails on a malformed line."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    sample = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)")
    label = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if not line or line.startswith("#"):
            assert re.match(r"# (HELP|TYPE) \S+ .+", line) or not line, line
            continue
        m = sample.fullmatch(line)
        assert m, f"malformed sample line: {line!r}"
        labels = dict(label.findall(m[2] or ""))
        out.setdefault(m[1], []).append((labels, float(m[3])))
    return out


def test_metrics_and_stats_with_basic_auth(tmp_path: Path, origins: tuple[Origin, Origin]) -> None:
    a, b = origins
    port, tls_port, admin_port = free_port(), free_port(), free_port()
    cert, key = make_cert(tmp_path, "site", ["site.test"])
    admin = f'bind = "{LOOPBACK}:{admin_port}"\nauth = {{ user = "ops", password = "s3cret" }}'
    extra = f"""
{FAST_CHECKS}

[[listener]]
name = "secure"
bind = "{LOOPBACK}:{tls_port}"
tls = {{ certs = [{{ cert = {toml_path(cert)}, key = {toml_path(key)} }}] }}
"""
    pool = servers(f'"{a.address}"', f'"{b.address}"')
    with Proxy(tmp_path, config(tmp_path, port, pool, admin=admin, extra=extra),
               ports=[port, tls_port, admin_port]) as proxy:  # fmt: skip
        base = f"http://{LOOPBACK}:{admin_port}"
        # clients send paths and hosts the labels must never carry
        for i in range(20):
            curl("-o", "/dev/null", "-H", f"Host: h{i}.example", f"http://{LOOPBACK}:{port}/p/{i}")
        curl("-o", "/dev/null", f"http://{LOOPBACK}:{port}/404-please", "-H", "Host: x")
        assert wait_until(lambda: len([s for s in a.requests() if s.target == "/health"]) >= 2, 10)
        assert curl_http(f"{base}/metrics").status == 401
        assert curl_http(f"{base}/metrics", "-u", "ops:wrong").status == 401
        r = curl_http(f"{base}/metrics", "-u", "ops:s3cret")
        assert r.status == 200
        assert r.header(
            "content-type",
        ).startswith("text/plain; version=0.0.4")  # type: ignore[union-attr]
        m = parse_exposition(r.body.decode())
        requests = {
            (x["listener"], x["route"], x["code"]): v for x, v in m["revproxy_requests_total"]
        }
        assert requests[("web", "0", "2xx")] == 21, requests
        assert set(m) >= {
            "revproxy_upstream_latency_seconds_bucket",
            "revproxy_upstream_latency_seconds_count",
            "revproxy_connections_active",
            "revproxy_sent_bytes_total",
            "revproxy_received_bytes_total",
            "revproxy_backend_up",
            "revproxy_health_check_duration_seconds_bucket",
            "revproxy_health_checks_total",
            "revproxy_certificate_not_after_seconds",
            "revproxy_config_generation",
        }
        count = {x["pool"]: v for x, v in m["revproxy_upstream_latency_seconds_count"]}
        assert count["app"] == 21
        ups = {x["backend"]: v for x, v in m["revproxy_backend_up"]}
        assert ups == {f"app/{a.address}": 1.0, f"app/{b.address}": 1.0}
        certs = {
            (x["listener"], x["name"]): v for x, v in m["revproxy_certificate_not_after_seconds"]
        }
        assert list(certs) == [("secure", "site.test")]
        values = {v for samples in m.values() for labels, _ in samples for v in labels.values()}
        assert not any("example" in v or v.startswith("/") for v in values), values
        # /stats: every section, the servers with their state, the certificate's expiry
        page = curl_http(f"{base}/stats", "-u", "ops:s3cret")
        assert page.status == 200
        html = page.body.decode()
        assert "http-equiv='refresh'" in html
        for needle in ("Listeners", "Routes", "Pools", "Servers", "Certificates",
                       f"app/{a.address}", "site.test", "LAST CHECK", "ok 200"):  # fmt: skip
            assert needle in html
        assert proxy.stop() == 0


def test_show_certs_and_unknown_commands(tmp_path: Path, origins: tuple[Origin, Origin]) -> None:
    a, _ = origins
    port, tls_port = free_port(), free_port()
    cert, key = make_cert(tmp_path, "site", ["one.test", "two.test"])
    extra = f"""
[[listener]]
name = "secure"
bind = "{LOOPBACK}:{tls_port}"
tls = {{ certs = [{{ cert = {toml_path(cert)}, key = {toml_path(key)} }}] }}
"""
    text = config(tmp_path, port, servers(f'"{a.address}"'), extra=extra)
    with Proxy(tmp_path, text, ports=[port, tls_port]) as proxy:
        ops = Ops(proxy, port)
        assert (tmp_path / "admin.sock").stat().st_mode & 0o777 == 0o660
        code, out = ops.ctl("show", "certs")
        assert code == 0
        assert re.search(
            r"secure\s+one\.test,two\.test\s+\d{4}-\d\d-\d\d \d\d:\d\d UTC\s+\d+\s", out
        )
        assert str(cert) in out
        code, out = ops.ctl("frobnicate")
        assert code == 1 and "unknown command" in out and "show servers" in out
        code, out = ops.ctl("reload", "certs")
        assert code == 0, out
        assert proxy.stop() == 0
