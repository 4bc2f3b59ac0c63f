"""Signals that come while ``revproxy run`` starts, end to end: SIGHUP (``systemctl reload``),
SIGUSR1 (a log rotation) and SIGTERM (a stop) sent from the first moment the process catches
them — right after its interpreter runs revproxy's first line — and then at later moments of
its start (imports, configuration, binding, workers starting). The process stays up and serves,
a SIGHUP that came after the configuration was read is honoured by a reload once the handlers
are in, a SIGTERM ends it cleanly (exit 0, nothing left listening, no worker left); the same
with ``workers = 2`` and the signals sent to the whole process group (the workers too, as a
terminal hangup or ``systemctl kill`` does). And ``revproxy reload --pid`` waits until the
process catches SIGHUP before it sends one, instead of ending a process still starting."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from harness import (
    LOOPBACK,
    REPO,
    Origin,
    curl_http,
    free_port,
    run_cli,
    toml_path,
    wait_until,
)

from revproxy.cli.main import handles_signal

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("real_peers")]

TIMEOUT = 30.0
# Moments after the process first catches SIGHUP (seconds) at which a signal is sent: the
# first instant, then into the imports, the configuration, the binding and (with workers) the
# workers' own start.
DELAYS = (0.0, 0.02, 0.08, 0.25, 0.6)


def config(tmp: Path, port: int, origin: Origin, workers: int) -> str:
    return f"""
[global]
workers = {workers}
access_log = "off"
watch = false
shutdown_timeout = "2s"

[admin]
socket = {toml_path(tmp / "conf" / "admin.sock")}

[[listener]]
name = "web"
bind = "{LOOPBACK}:{port}"

[[route]]
pool = "app"

[pool.app]
servers = ["{origin.address}"]
"""


class Starting:
    """``revproxy run`` just spawned (its own process group), output in files."""

    def __init__(self, tmp: Path, text: str) -> None:
        self.conf = tmp / "conf"
        self.conf.mkdir(parents=True, exist_ok=True)
        (self.conf / "10-test.toml").write_text(text)
        self.err_path = tmp / "proxy.stderr"
        self.spawned = time.monotonic()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        with open(tmp / "proxy.stdout", "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "revproxy", "run", "-c", str(self.conf)],
                stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=tmp, env=env,
                start_new_session=True,
            )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait_catching(self, port: int) -> float:
        """Until the process catches SIGHUP (polled every millisecond: the first moment); how
        long that took from the spawn. It catches it before it binds anything (the admin
        socket, the listener): from its first line, not once it has started."""
        deadline = time.monotonic() + TIMEOUT
        while not handles_signal(self.pid, signal.SIGHUP):
            assert self.proc.poll() is None, f"exited {self.proc.returncode}:\n{self.stderr()}"
            assert time.monotonic() < deadline, "never caught SIGHUP"
            time.sleep(0.001)
        took = time.monotonic() - self.spawned
        assert not (self.conf / "admin.sock").exists(), "caught SIGHUP only once started"
        with socket.socket() as probe:
            assert probe.connect_ex((LOOPBACK, port)) != 0, "caught SIGHUP only once bound"
        return took

    def ctl(self, *words: str) -> str:
        res = run_cli("ctl", "-c", str(self.conf), *words)
        return res.stdout if res.returncode == 0 else ""

    def generation(self) -> int:
        m = re.search(r"generation: (\d+)", self.ctl("show", "info"))
        return int(m[1]) if m else 0

    def workers(self) -> list[int]:
        m = re.search(r"processes: \d+ workers \[([\d, ]*)\]", self.ctl("show", "info"))
        return [int(x) for x in m[1].split(",") if x.strip()] if m else []

    def stop(self) -> int:
        """SIGTERM, then the exit status (SIGKILL to the group if it hangs)."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
            raise AssertionError("did not stop on SIGTERM:\n" + self.stderr()) from None

    def group_left(self) -> list[int]:
        """Processes of its group still alive (the workers it started)."""
        left = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == self.pid and fields[0] != "Z":
                left.append(int(stat.parent.name))
        return left


@contextmanager
def starting(tmp: Path, text: str) -> Iterator[Starting]:
    proxy = Starting(tmp, text)
    try:
        yield proxy
    finally:
        if proxy.proc.poll() is None:
            with_group = proxy.group_left()
            proxy.proc.kill()
            proxy.proc.wait(timeout=5)
            for pid in with_group:
                if pid != proxy.pid:
                    with suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    with Origin("app") as o:
        yield o


def serves(port: int) -> bool:
    try:
        return curl_http(f"http://{LOOPBACK}:{port}/x", timeout=5.0).status == 200
    except Exception:
        return False


@pytest.mark.parametrize("delay", DELAYS)
def test_sighup_while_starting_is_held_then_honoured(
    tmp_path: Path, origin: Origin, delay: float
) -> None:
    port = free_port()
    with starting(tmp_path, config(tmp_path, port, origin, workers=1)) as proxy:
        proxy.wait_catching(port)
        time.sleep(delay)
        os.kill(proxy.pid, signal.SIGHUP)
        os.kill(proxy.pid, signal.SIGUSR1)
        assert wait_until(lambda: serves(port), TIMEOUT), proxy.stderr()
        assert proxy.proc.poll() is None

        # The SIGHUP was accounted for: honoured by a reload (held while starting, or
        # handled as any later one), or found older than the configuration read.
        def accounted() -> bool:
            err = proxy.stderr()
            return "reload done: generation 2" in err or "nothing to reload" in err

        assert wait_until(accounted, TIMEOUT), proxy.stderr()
        err = proxy.stderr()
        if "after the configuration was read: reloading" in err:
            assert wait_until(lambda: proxy.generation() == 2, TIMEOUT), err
        assert serves(port)
        assert proxy.stop() == 0, proxy.stderr()


def test_signals_to_the_whole_group_while_workers_start(tmp_path: Path, origin: Origin) -> None:
    port = free_port()
    with starting(tmp_path, config(tmp_path, port, origin, workers=2)) as proxy:
        proxy.wait_catching(port)
        # SIGHUP and SIGUSR1 to the master and every worker, every 50 ms, from the first
        # moment until both workers serve: every phase of every process's start is met.
        sent = 0
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            os.killpg(proxy.pid, signal.SIGHUP)
            os.killpg(proxy.pid, signal.SIGUSR1)
            sent += 1
            assert proxy.proc.poll() is None, proxy.stderr()
            if len(proxy.workers()) == 2 and serves(port):
                break
            time.sleep(0.05)
        assert len(proxy.workers()) == 2, proxy.stderr()
        for _ in range(3):  # and once every process is up
            os.killpg(proxy.pid, signal.SIGHUP)
            os.killpg(proxy.pid, signal.SIGUSR1)
            time.sleep(0.1)
        assert sent > 1
        assert wait_until(lambda: "reload done" in proxy.stderr(), TIMEOUT), proxy.stderr()
        assert serves(port)
        err = proxy.stderr()
        # A worker that a signal ended before its interpreter ran its first line is started
        # again at once (runtime/workers.py); no other death is allowed.
        deaths = [
            line
            for line in err.splitlines()
            if "killed by signal" in line
            and not re.search(r"killed by signal SIG(HUP|USR1) at start: starting it again", line)
        ]
        assert not deaths and "Traceback" not in err, err
        metrics = proxy.ctl("show", "metrics")
        assert "revproxy_workers 2" in metrics, metrics
        assert not re.search(r"^revproxy_worker_restarts_total [1-9]", metrics, re.M), metrics
        assert proxy.stop() == 0, proxy.stderr()
        assert wait_until(lambda: not proxy.group_left(), TIMEOUT), proxy.group_left()


@pytest.mark.parametrize(("workers", "delay"), [(1, d) for d in DELAYS] + [(2, 0.4), (2, 1.0)])
def test_sigterm_while_starting_stops_cleanly(
    tmp_path: Path, origin: Origin, workers: int, delay: float
) -> None:
    port = free_port()
    with starting(tmp_path, config(tmp_path, port, origin, workers=workers)) as proxy:
        proxy.wait_catching(port)
        time.sleep(delay)
        os.kill(proxy.pid, signal.SIGTERM)
        assert proxy.proc.wait(timeout=TIMEOUT) == 0, proxy.stderr()
        assert "Traceback" not in proxy.stderr(), proxy.stderr()
        assert wait_until(lambda: not proxy.group_left(), TIMEOUT), proxy.group_left()
        assert not serves(port)


# --- revproxy reload --pid -----------------------------------------------------------------

# A process that catches SIGHUP only after a while (as one still starting), then says so.
LATE_CATCHER = """
import signal, sys, time
time.sleep(2.0)
signal.signal(signal.SIGHUP, lambda *_: (print("hup", flush=True), sys.exit(0)))
print("catching", flush=True)
time.sleep(60)
sys.exit(3)
"""


def valid_conf(tmp: Path, origin: Origin) -> Path:
    """A configuration ``revproxy reload`` accepts, with no admin socket (so: a signal)."""
    conf = tmp / "conf"
    conf.mkdir()
    (conf / "10-test.toml").write_text(f"""
[[listener]]
name = "web"
bind = "{LOOPBACK}:{free_port()}"

[[route]]
pool = "app"

[pool.app]
servers = ["{origin.address}"]
""")
    return conf


def test_reload_by_pid_waits_until_the_process_catches_sighup(
    tmp_path: Path, origin: Origin
) -> None:
    conf = valid_conf(tmp_path, origin)
    late = subprocess.Popen(
        [sys.executable, "-c", LATE_CATCHER], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    try:
        assert not handles_signal(late.pid, signal.SIGHUP)
        res = run_cli("reload", "-c", str(conf), "--pid", str(late.pid))
        assert res.returncode == 0, res.stderr
        assert f"sent SIGHUP to pid {late.pid}" in res.stdout
        out, _ = late.communicate(timeout=TIMEOUT)
        assert late.returncode == 0  # its handler ran: not killed by the signal
        assert out.decode().split() == ["catching", "hup"]
    finally:
        if late.poll() is None:
            late.kill()
            late.wait(timeout=5)


def test_reload_by_pid_refuses_a_process_that_would_die_of_sighup(
    tmp_path: Path, origin: Origin
) -> None:
    conf = valid_conf(tmp_path, origin)
    sleeper = subprocess.Popen(["sleep", "60"], stdin=subprocess.DEVNULL)
    try:
        res = run_cli("reload", "-c", str(conf), "--pid", str(sleeper.pid))
        assert res.returncode == 1
        assert f"pid {sleeper.pid} does not handle SIGHUP" in res.stderr
        assert "reload not sent" in res.stderr
        assert sleeper.poll() is None  # still alive
    finally:
        sleeper.kill()
        sleeper.wait(timeout=5)
