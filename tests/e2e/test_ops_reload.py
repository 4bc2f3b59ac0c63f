"""Reloads, end to end: hitless under load (wrk), all-or-nothing, sockets kept, added and
removed, requests in flight finishing on their config, health state kept, config watch.

The proxy is the real ``revproxy run``; reloads go through ``revproxy reload`` (the admin
socket), SIGHUP and the config watch, as an operator's would.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import threading
import time
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

# wrk's run: bounded, and long enough for ten reloads in a row.
WRK_SECONDS = 10
RELOADS = 10


def config(
    tmp: Path,
    port: int,
    origins: list[Origin],
    *,
    workers: int = 1,
    extra_port: int | None = None,
    body: str = "one",
    watch: bool = False,
    health: str = "",
) -> str:
    servers = ", ".join(f'"{o.address}"' for o in origins)
    text = f"""
[global]
workers = {workers}
access_log = "off"
watch = {str(watch).lower()}
shutdown_timeout = "10s"

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
{health}
"""
    if extra_port is not None:
        text += f"""
[[listener]]
name = "extra"
bind = "{LOOPBACK}:{extra_port}"
"""
    return text


def write(proxy: Proxy, text: str) -> None:
    path = proxy.conf / "10-test.toml"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def reload(proxy: Proxy) -> subprocess.CompletedProcess[str]:
    return run_cli("reload", "-c", str(proxy.conf))


def refused(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1.0):
            return False
    except OSError:
        return True


@pytest.fixture
def origin() -> Iterator[Origin]:
    with Origin("a") as o:
        yield o


def parse_wrk(out: str) -> tuple[int, int, int]:
    """(requests, non-2xx/3xx responses, socket errors) from wrk's report."""
    m = re.search(r"(\d+) requests in", out)
    assert m, out
    requests = int(m[1])
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return (
        requests,
        int(non2xx[1]) if non2xx else 0,
        sum(int(x) for x in errors.groups()) if errors else 0,
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_ten_reloads_under_load_fail_no_request(
    tmp_path: Path, origin: Origin, workers: int
) -> None:
    port, extra = free_port(), free_port()
    text = [
        config(tmp_path, port, [origin], workers=workers, body="one"),
        config(tmp_path, port, [origin], workers=workers, body="two", extra_port=extra),
    ]
    with Proxy(tmp_path, text[0], ports=[port]) as proxy:
        # Two loads at once: one proxied to the pool, one answered by a local route (fast, so
        # that many requests are in flight across every swap).
        wrks = [
            subprocess.Popen(
                ["wrk", "-t1", "-c8", f"-d{WRK_SECONDS}s", f"http://{LOOPBACK}:{port}{path}"],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for path in ("/", "/fixed")
        ]
        try:
            time.sleep(1.0)  # let wrk's connections settle in before the first reload
            results = []
            for i in range(RELOADS):
                write(proxy, text[(i + 1) % 2])
                results.append(reload(proxy))
                # Each reload is real: the added listener appears and goes with it.
                assert refused(extra) is (i % 2 == 1)
                time.sleep(0.3)
            outs = [w.communicate(timeout=WRK_SECONDS + 30)[0] for w in wrks]
        finally:
            for w in wrks:
                if w.poll() is None:
                    w.kill()
                    w.wait()
        for r in results:
            assert r.returncode == 0, r.stderr
        proxied, local = (parse_wrk(out) for out in outs)
        print(
            f"workers={workers}: {proxied[0]} proxied + {local[0]} local requests during "
            f"{RELOADS} reloads; non-2xx: {proxied[1] + local[1]}, "
            f"socket errors: {proxied[2] + local[2]}"
        )
        assert proxied[0] > 500 and local[0] > 5000, outs
        assert (proxied[1:], local[1:]) == ((0, 0), (0, 0)), outs
        assert "generation 11" in results[-1].stdout
        assert curl_http(f"http://{LOOPBACK}:{port}/fixed").body == b"one"
        assert proxy.stop() == 0


def test_an_invalid_config_changes_nothing_and_reload_prints_every_error(
    tmp_path: Path, origin: Origin
) -> None:
    port, extra = free_port(), free_port()
    with Proxy(tmp_path, config(tmp_path, port, [origin]), ports=[port]) as proxy:
        bad = config(tmp_path, port, [origin], extra_port=extra, body="two")
        bad = bad.replace('pool = "app"', 'pool = "nope"') + '\n[pool.app2]\nservers = ["x"]\n'
        write(proxy, bad)
        res = reload(proxy)
        assert res.returncode == 2
        assert "nothing changed" in res.stderr
        assert 'no pool named "nope"' in res.stderr
        assert "pool.app2.servers[0]" in res.stderr  # every error, not the first
        # Nothing changed: the old routes answer, the new listener was never opened.
        assert curl_http(f"http://{LOOPBACK}:{port}/fixed").body == b"one"
        assert curl_http(f"http://{LOOPBACK}:{port}/x").status == 200
        assert refused(extra)
        assert "reload rejected" in proxy.stderr()
        # A bind that fails is a rejected reload too.
        with socket.socket() as taken:
            taken.bind((LOOPBACK, 0))
            taken.listen(1)
            busy = taken.getsockname()[1]
            write(proxy, config(tmp_path, port, [origin], extra_port=busy, body="two"))
            res = reload(proxy)
        assert res.returncode == 2
        assert "cannot bind" in res.stderr
        assert curl_http(f"http://{LOOPBACK}:{port}/fixed").body == b"one"
        # SIGHUP with a broken file: logged, nothing changes.
        write(proxy, bad)
        proxy.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        assert wait_until(lambda: proxy.stderr().count('no pool named "nope"') >= 2, 10)
        assert curl_http(f"http://{LOOPBACK}:{port}/fixed").body == b"one"
        # Metrics count the rejected reloads.
        metrics = run_cli("ctl", "-c", str(proxy.conf), "show", "metrics").stdout
        assert 'revproxy_reloads_total{result="error"} 3' in metrics
        assert proxy.stop() == 0


def test_requests_in_flight_finish_on_the_config_they_started_with(
    tmp_path: Path,
) -> None:
    started = threading.Event()

    def slow(req: Seen) -> Reply:
        if req.target == "/slow":
            started.set()
            return Reply(body=b"old config\n", delay=2.0)
        return Reply(body=b"fast\n")

    port = free_port()
    with (
        Origin("a", slow) as a,
        Origin("b") as b,
        Proxy(tmp_path, config(tmp_path, port, [a]), ports=[port]) as proxy,
    ):
        answers: list[bytes] = []
        t = threading.Thread(
            target=lambda: answers.append(curl_http(f"http://{LOOPBACK}:{port}/slow").body)
        )
        t.start()
        assert started.wait(10)
        write(proxy, config(tmp_path, port, [b]))  # the pool now has only b
        assert reload(proxy).returncode == 0
        assert curl_http(f"http://{LOOPBACK}:{port}/x").body.startswith(b"b ")
        t.join(20)
        assert answers == [b"old config\n"]
        assert proxy.stop() == 0


def test_health_and_drain_survive_a_reload_for_unchanged_servers(tmp_path: Path) -> None:
    port = free_port()
    health = 'health = { path = "/", interval = "300ms", timeout = "200ms", rise = 3, fall = 1 }'
    dead = Origin("dead").start()
    dead_port = dead.port
    dead.stop()  # its port now refuses connections
    with Origin("a") as a:
        dead.port = dead_port
        text = config(tmp_path, port, [a, dead], health=health)
        with Proxy(tmp_path, text, ports=[port]) as proxy:
            ctl = ["ctl", "-c", str(proxy.conf)]

            def state_of(name: str) -> str:
                out = run_cli(*ctl, "show", "servers").stdout
                line = next(x for x in out.splitlines() if x.startswith(name))
                return line.split()[1]

            dead_name = f"app/{dead.address}"
            a_name = f"app/{a.address}"
            assert wait_until(lambda: state_of(dead_name) == "down", 15)
            assert run_cli(*ctl, "drain", a_name).returncode == 0
            write(proxy, text.replace('body = "one"', 'body = "two"'))
            assert reload(proxy).returncode == 0
            assert curl_http(f"http://{LOOPBACK}:{port}/fixed").body == b"two"
            # Straight after the reload: still down and still draining, nothing re-learnt.
            assert (state_of(dead_name), state_of(a_name)) == ("down", "drain")
            assert curl_http(f"http://{LOOPBACK}:{port}/x").status == 503
            assert run_cli(*ctl, "enable", a_name).returncode == 0
            assert curl_http(f"http://{LOOPBACK}:{port}/x").body.startswith(b"a ")
            assert proxy.stop() == 0


def test_config_watch_reloads_when_a_toml_file_changes(tmp_path: Path, origin: Origin) -> None:
    port = free_port()
    with Proxy(tmp_path, config(tmp_path, port, [origin], watch=True), ports=[port]) as proxy:

        def served() -> bool:
            return curl_http(f"http://{LOOPBACK}:{port}/fixed").body == b"watched"

        def edit_and_check() -> bool:
            # (Rewritten until seen: the watch may still be starting when the first lands.)
            write(proxy, config(tmp_path, port, [origin], watch=True, body="watched"))
            return wait_until(served, 3)

        assert wait_until(edit_and_check, 20)
        assert "configuration changed (10-test.toml); reloading" in proxy.stderr()
        # Other files are not watched; a broken TOML is rejected and the old config stays.
        (proxy.conf / "notes.txt").write_text("hello")
        write(proxy, "[global\n")
        assert wait_until(lambda: "reload rejected" in proxy.stderr(), 15)
        assert served()
        assert proxy.stop() == 0


def test_reload_without_an_admin_socket_checks_then_signals_the_pid_file(
    tmp_path: Path, origin: Origin
) -> None:
    port = free_port()
    pid_file = tmp_path / "revproxy.pid"

    def text(body: str) -> str:
        t = config(tmp_path, port, [origin], body=body)
        t = t.replace(f"[admin]\nsocket = {toml_path(tmp_path / 'admin.sock')}\n", "")
        return t.replace("[global]\n", f"[global]\npid_file = {toml_path(pid_file)}\n")

    with Proxy(tmp_path, text("one"), ports=[port]) as proxy:
        assert wait_until(pid_file.exists, 10)
        assert pid_file.read_text().strip() == str(proxy.pid)
        write(proxy, text("two").replace('pool = "app"', 'pool = "nope"'))
        res = reload(proxy)
        assert res.returncode == 2
        assert "reload not sent" in res.stderr and 'no pool named "nope"' in res.stderr
        assert "reload rejected" not in proxy.stderr()  # it was never asked
        write(proxy, text("two"))
        res = reload(proxy)
        assert res.returncode == 0, res.stderr
        assert f"sent SIGHUP to pid {proxy.pid}" in res.stdout

        def served() -> bool:
            return curl_http(f"http://{LOOPBACK}:{port}/fixed").body == b"two"

        assert wait_until(served, 10)
        assert proxy.stop() == 0
    assert not pid_file.exists()
