"""DNS discovery end to end: ``revproxy run`` with ``[global] resolvers`` naming a DNS server
on loopback whose records the test changes while requests flow.

- ``resolve = "all"`` against pebble-challtestsrv (a real DNS server, A records changed
  through its management API): every address is a server of its own — balanced, health-checked,
  drained by ``ctl`` — and servers join and leave as the record changes, logged; with one
  process and with workers (the master resolves and tells them).
- ``srv`` against the tests' own DNS server (``dns_peer.py``; challtestsrv serves no SRV):
  ports and weights from the records, a higher priority as backup; a DNS server that fails
  keeps the servers it had.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from dns_peer import DnsPeer
from harness import (
    LOOPBACK,
    Origin,
    Proxy,
    Reply,
    curl_http,
    free_port,
    run_cli,
    toml_path,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("real_peers")]

CHECKS = 'health = { path = "/health", interval = "300ms", timeout = "200ms", rise = 1, fall = 1 }'


class HostOrigin(Origin):
    """An origin on a loopback address of its own (127.0.0.N), so that several share a port
    as the addresses of one name do."""

    def __init__(self, name: str, host: str) -> None:
        super().__init__(name)
        self.host = host

    def start(self, port: int = 0) -> Origin:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, port))
        sock.listen(128)
        sock.settimeout(0.2)
        self._sock = sock
        self.port = int(sock.getsockname()[1])
        self._stop.clear()
        t = threading.Thread(target=self._accept_loop, name=f"{self.name}-accept", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class ChallTestSrv:
    """pebble-challtestsrv as a DNS server only; A records set through its management API."""

    def __init__(self, workdir: Path) -> None:
        self.dns_port, self.api_port = free_port(), free_port()
        self.log = workdir / "challtestsrv.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ChallTestSrv:
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                ["pebble-challtestsrv", "-dns01", f"{LOOPBACK}:{self.dns_port}",
                 "-management", f"{LOOPBACK}:{self.api_port}", "-http01", "", "-https01", "",
                 "-tlsalpn01", "", "-defaultIPv4", "", "-defaultIPv6", ""],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        assert wait_until(self._up, 10), self.log.read_text()
        return self

    def _up(self) -> bool:
        try:
            socket.create_connection((LOOPBACK, self.api_port), timeout=0.5).close()
        except OSError:
            return False
        return True

    def set_a(self, name: str, *addresses: str) -> None:
        self._post("clear-a", {"host": name + "."})
        if addresses:
            self._post("add-a", {"host": name + ".", "addresses": list(addresses)})

    def _post(self, what: str, body: dict[str, object]) -> None:
        req = urllib.request.Request(
            f"http://{LOOPBACK}:{self.api_port}/{what}", data=json.dumps(body).encode()
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=5)


def config(tmp: Path, port: int, resolver: str, servers: str, *, workers: int = 1) -> str:
    return f"""
[global]
access_log = "off"
watch = false
workers = {workers}
resolvers = ["{resolver}"]

[admin]
socket = {toml_path(tmp / "admin.sock")}

[[listener]]
name = "web"
bind = "{LOOPBACK}:{port}"

[[route]]
pool = "app"

[pool.app]
servers = [{servers}]
resolve_interval = "1s"
{CHECKS}
"""


class Ops:
    def __init__(self, proxy: Proxy, port: int) -> None:
        self.proxy, self.port = proxy, port

    def ctl(self, *words: str) -> tuple[int, str]:
        res = run_cli("ctl", "-c", str(self.proxy.conf), *words)
        return res.returncode, res.stdout + res.stderr

    def rows(self) -> dict[str, list[str]]:
        _, out = self.ctl("show", "servers")
        return {r.split()[0]: r.split() for r in out.splitlines()[1:] if r.strip()}

    def states(self) -> dict[str, str]:
        return {name: row[1] for name, row in self.rows().items()}

    def who(self, n: int) -> Counter[str]:
        out: Counter[str] = Counter()
        for _ in range(n):
            r = curl_http(f"http://{LOOPBACK}:{self.port}/x")
            out[r.body.split()[0].decode() if r.status == 200 else str(r.status)] += 1
        return out


def spread(seen: Counter[str], workers: int) -> Counter[str] | set[str]:
    """What a run of requests shows of the balancing: with one worker its exact round robin;
    with several, each worker keeps its own turn and new connections land on either, so only
    which servers answered."""
    return seen if workers == 1 else set(seen)


@pytest.fixture
def challtestsrv(tmp_path: Path) -> Iterator[ChallTestSrv]:
    if not shutil.which("pebble-challtestsrv"):
        pytest.skip("pebble-challtestsrv is not installed (Debian package pebble)")
    with ChallTestSrv(tmp_path) as srv:
        yield srv


@pytest.mark.parametrize("workers", [1, 2])
def test_resolve_all_balances_checks_and_follows_a_changing_a_record(
    tmp_path: Path, challtestsrv: ChallTestSrv, workers: int
) -> None:
    a = HostOrigin("a", "127.0.0.2").start()
    b = HostOrigin("b", "127.0.0.3").start(a.port)
    c = HostOrigin("c", "127.0.0.4").start(a.port)
    try:
        na, nb, nc = (f"app/{o.address}" for o in (a, b, c))
        challtestsrv.set_a("app.internal", "127.0.0.2", "127.0.0.3")
        port = free_port()
        server = f'{{ address = "app.internal:{a.port}", resolve = "all" }}'
        resolver = f"{LOOPBACK}:{challtestsrv.dns_port}"
        text = config(tmp_path, port, resolver, server, workers=workers)
        with Proxy(tmp_path, text, ports=[port]) as proxy:
            ops = Ops(proxy, port)
            # Both addresses are servers from the start, each checked and balanced.
            assert wait_until(lambda: ops.states() == {na: "up", nb: "up"}, 10)
            assert wait_until(lambda: any(s.target == "/health" for s in b.requests()), 10)
            assert spread(ops.who(4), workers) == spread(Counter(a=2, b=2), workers)
            # The record changes: .2 leaves, .4 joins, and requests follow.
            challtestsrv.set_a("app.internal", "127.0.0.3", "127.0.0.4")
            assert wait_until(lambda: ops.states() == {nb: "up", nc: "up"}, 10), ops.rows()
            assert spread(ops.who(4), workers) == spread(Counter(b=2, c=2), workers)
            log = proxy.stderr()
            assert f"pool=app backend={nc} added: an address of app.internal:{a.port}" in log
            assert f"pool=app backend={na} removed" in log
            # A member is health-checked like any server: c stops, it goes down.
            c.stop()
            assert wait_until(lambda: ops.states().get(nc) == "down", 10)
            assert ops.who(3) == Counter(b=3)
            # ... and drained by name like any server.
            assert ops.ctl("drain", nb)[0] == 0
            assert ops.states()[nb] == "drain"
            assert ops.who(1) == Counter({"503": 1})
            assert ops.ctl("enable", nb)[0] == 0
            assert wait_until(lambda: ops.who(1) == Counter(b=1), 10)
            # The name loses every address: the pool is empty, a local 503.
            challtestsrv.set_a("app.internal")
            assert wait_until(lambda: ops.states() == {}, 10)
            assert "pool=app server app.internal:" in proxy.stderr()
            assert ops.who(1) == Counter({"503": 1})
            assert proxy.stop() == 0
    finally:
        for origin in (a, b, c):
            origin.stop()


def test_srv_records_give_ports_and_weights_and_a_failing_dns_keeps_the_servers(
    tmp_path: Path,
) -> None:
    with DnsPeer() as dns, Origin("a") as a, Origin("b") as b, Origin("c") as c:
        dns.set(
            "_http._tcp.app.internal",
            "SRV",
            f"10 3 {a.port} a.app.internal.",
            f"10 1 {b.port} b.app.internal.",
            f"20 1 {c.port} c.app.internal.",
        )
        for name in ("a", "b", "c"):
            dns.set(f"{name}.app.internal", "A", LOOPBACK)
        port = free_port()
        server = '{ srv = "_http._tcp.app.internal" }'
        with Proxy(tmp_path, config(tmp_path, port, dns.resolver, server), ports=[port]) as proxy:
            ops = Ops(proxy, port)
            na, nb, nc = (f"app/{o.address}" for o in (a, b, c))
            assert wait_until(lambda: set(ops.states()) == {na, nb, nc}, 10)
            rows = ops.rows()
            assert (rows[na][2], rows[nb][2]) == ("3", "1")  # WEIGHT from the records
            assert ops.who(8) == Counter(a=6, b=2)  # c (priority 20) is a backup
            # Primaries gone from the record: the backup serves.
            dns.set("_http._tcp.app.internal", "SRV", f"20 1 {c.port} c.app.internal.")
            assert wait_until(lambda: set(ops.states()) == {nc}, 10)
            assert wait_until(lambda: ops.who(2) == Counter(c=2), 10)
            # The DNS server fails: the servers found last stay.
            dns.servfail = True
            assert wait_until(lambda: "cannot be resolved" in proxy.stderr(), 10)
            assert "keeping its 1 server(s)" in proxy.stderr()
            assert set(ops.states()) == {nc}
            assert ops.who(2) == Counter(c=2)
            # ... across a reload too.
            assert ops.ctl("reload")[0] == 0
            assert set(ops.states()) == {nc}
            assert ops.who(2) == Counter(c=2)
            assert proxy.stop() == 0


def test_a_discovered_address_is_hidden_like_a_configured_one(
    tmp_path: Path, challtestsrv: ChallTestSrv
) -> None:
    """An origin redirecting to its own address (found by DNS, written nowhere in the
    configuration): the client's Location names the client's host, not the origin."""
    a = HostOrigin("a", "127.0.0.2")
    # Its health checks pass: a 302 there would take it out (fall = 1) as soon as the first
    # check ran, and the client would get 503 from then on (seen in CI).
    a.handler = lambda req: (
        Reply(status=200)
        if req.target == "/health"
        else Reply(status=302, headers=[("Location", f"http://127.0.0.2:{a.port}/next")])
    )
    a.start()
    try:
        challtestsrv.set_a("app.internal", "127.0.0.2")
        port = free_port()
        server = f'{{ address = "app.internal:{a.port}", resolve = "all" }}'
        text = config(tmp_path, port, f"{LOOPBACK}:{challtestsrv.dns_port}", server, workers=1)
        with Proxy(tmp_path, text, ports=[port]):

            def location() -> str:
                r = curl_http(f"http://{LOOPBACK}:{port}/x")
                return (r.header("location") or "") if r.status == 302 else ""

            assert wait_until(lambda: location() != "", 10)
            assert location() == f"http://{LOOPBACK}:{port}/next"
    finally:
        a.stop()
