"""Processes, end to end: workers that die are restarted, health state reaches every worker,
SIGTERM finishes what is in flight and exits 0, and systemd hears READY / RELOADING /
STOPPING on a real datagram socket."""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
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
    curl_http,
    free_port,
    run_cli,
    toml_path,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("real_peers")]


def config(tmp: Path, port: int, origins: list[Origin], *, workers: int, body: str = "one") -> str:
    servers = ", ".join(f'"{o.address}"' for o in origins)
    return f"""
[global]
workers = {workers}
access_log = "off"
watch = false
shutdown_timeout = "20s"

[admin]
socket = {toml_path(tmp / "admin.sock")}

[[listener]]
name = "web"
bind = "{LOOPBACK}:{port}"

[[route]]
path = "/fixed"
respond = {{ status = 200, body = "{body}" }}

[[route]]
pool = "app"

[pool.app]
servers = [{servers}]
"""


def ctl(proxy: Proxy, *words: str) -> str:
    res = run_cli("ctl", "-c", str(proxy.conf), *words)
    assert res.returncode == 0, res.stderr
    return res.stdout


def worker_pids(proxy: Proxy) -> list[int]:
    m = re.search(r"processes: \d+ workers \[([\d, ]*)\]", ctl(proxy, "show", "info"))
    assert m, "no worker list in show info"
    return [int(x) for x in m[1].split(",") if x.strip()]


def slow_origin(started: threading.Event) -> Origin:
    def handle(req: Seen) -> Reply:
        if req.target == "/slow":
            started.set()
            return Reply(body=b"finished\n", delay=2.0)
        return Reply(body=f"a {req.target}\n".encode())

    return Origin("a", handle)


@pytest.fixture
def origin() -> Iterator[Origin]:
    with Origin("a") as o:
        yield o


def test_a_killed_worker_is_restarted_and_the_reason_logged(tmp_path: Path, origin: Origin) -> None:
    port = free_port()
    with Proxy(tmp_path, config(tmp_path, port, [origin], workers=2), ports=[port]) as proxy:
        assert wait_until(lambda: len(worker_pids(proxy)) == 2, 20)  # both accepting
        before = worker_pids(proxy)
        os.kill(before[0], signal.SIGKILL)
        assert wait_until(
            lambda: len(pids := worker_pids(proxy)) == 2 and before[0] not in pids, 20
        )
        assert f"(pid {before[0]}) was killed by signal SIGKILL" in proxy.stderr()
        for _ in range(6):
            assert curl_http(f"http://{LOOPBACK}:{port}/x").status == 200
        metrics = ctl(proxy, "show", "metrics")
        assert "revproxy_worker_restarts_total 1" in metrics
        assert "revproxy_workers 2" in metrics
        # the restarted worker serves the current config, reloads included
        (proxy.conf / "10-test.toml").write_text(
            config(tmp_path, port, [origin], workers=2, body="two")
        )
        assert run_cli("reload", "-c", str(proxy.conf)).returncode == 0
        assert {curl_http(f"http://{LOOPBACK}:{port}/fixed").body for _ in range(8)} == {b"two"}
        assert proxy.stop() == 0


def test_health_state_reaches_every_worker(tmp_path: Path) -> None:
    with Origin("a") as a, Origin("b") as b:
        port = free_port()
        with Proxy(tmp_path, config(tmp_path, port, [a, b], workers=2), ports=[port]) as proxy:
            ctl(proxy, "disable", f"app/{a.address}")
            # each curl is a new connection, accepted by whichever worker gets there first
            seen = Counter(curl_http(f"http://{LOOPBACK}:{port}/x").body[:1] for _ in range(16))
            assert seen == Counter({b"b": 16})
            ctl(proxy, "enable", f"app/{a.address}")
            assert wait_until(lambda: curl_http(f"http://{LOOPBACK}:{port}/x").body[:1] == b"a", 10)
            out = ctl(proxy, "show", "servers")
            total = sum(int(line.split()[4]) for line in out.splitlines()[1:])
            assert total >= 17  # requests counted in both workers, summed by the master
            assert proxy.stop() == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_finishes_the_request_in_flight_then_exits_0(tmp_path: Path, workers: int) -> None:
    started = threading.Event()
    with slow_origin(started) as a:
        port = free_port()
        with Proxy(tmp_path, config(tmp_path, port, [a], workers=workers), ports=[port]) as p:
            answers: list[tuple[int, bytes]] = []

            def fetch() -> None:
                r = curl_http(f"http://{LOOPBACK}:{port}/slow")
                answers.append((r.status, r.body))

            t = threading.Thread(target=fetch)
            t.start()
            assert started.wait(10)
            assert p.proc is not None
            p.proc.send_signal(signal.SIGTERM)
            assert p.proc.wait(30) == 0
            t.join(10)
            assert answers == [(200, b"finished\n")]
            # it stopped accepting: nothing listens any more
            with pytest.raises(OSError):
                socket.create_connection((LOOPBACK, port), timeout=1.0).close()
            assert not (tmp_path / "admin.sock").exists()


class NotifySocket:
    """What systemd would read on $NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.path = path
        self.got: list[dict[str, str]] = []

    def next(self, key: str, timeout: float = 20.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {key} in {self.got}")
            self.sock.settimeout(left)
            data = self.sock.recv(4096).decode()
            msg = dict(line.split("=", 1) for line in data.splitlines())
            self.got.append(msg)
            if key in msg:
                return msg

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_sd_notify_ready_reloading_stopping(
    tmp_path: Path, origin: Origin, workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify.path))
    port = free_port()
    proxy = Proxy(tmp_path, config(tmp_path, port, [origin], workers=workers), ports=[])
    try:
        proxy.start()
        ready = notify.next("READY")
        assert ready["READY"] == "1"
        assert "generation 1" in ready["STATUS"]
        # READY came after the listeners were bound (and the workers accept)
        assert curl_http(f"http://{LOOPBACK}:{port}/fixed").body == b"one"
        ctl(proxy, "reload")
        reloading = notify.next("RELOADING")
        assert reloading["RELOADING"] == "1"
        assert (
            int(reloading["MONOTONIC_USEC"]) <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        )
        assert "generation 2" in notify.next("READY")["STATUS"]
        assert proxy.proc is not None
        proxy.proc.send_signal(signal.SIGTERM)
        assert notify.next("STOPPING")["STOPPING"] == "1"
        assert proxy.proc.wait(30) == 0
        if workers > 1:  # only the master talks to systemd
            assert sum("READY" in m for m in notify.got) == 2
    finally:
        proxy.stop()
        notify.close()


def test_workers_ignore_a_revproxy_folder_in_the_working_directory(
    tmp_path: Path, origin: Origin
) -> None:
    """Workers are started with -P: a folder named revproxy in the service's working directory
    (a checkout, say) is not imported instead of the installed package."""
    port = free_port()
    shadow = tmp_path / "revproxy"
    shadow.mkdir()
    (shadow / "__init__.py").write_text('raise SystemExit("the working directory was imported")\n')
    # The master as the installed `revproxy` command runs: the working directory not on its path.
    with Proxy(
        tmp_path, config(tmp_path, port, [origin], workers=2), ports=[port], python_flags=["-P"]
    ) as proxy:
        assert wait_until(lambda: len(worker_pids(proxy)) == 2, 10), proxy.stderr()
        assert curl_http(f"http://{LOOPBACK}:{port}/x").status == 200
        assert "working directory was imported" not in proxy.stderr()
