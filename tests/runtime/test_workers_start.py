"""A worker that a reload's or a log reopen's signal ends before it can catch it (a SIGHUP or
SIGUSR1 sent to the whole process group while the worker's interpreter starts) is started
again, not taken for a worker that cannot start (runtime/workers.py, ``_spawn``)."""

from __future__ import annotations

import signal
import socket
import sys
from pathlib import Path

import pytest
import uvloop

from revproxy.certs.files import generate_default_cert
from revproxy.config.load import load_config_text
from revproxy.edge.listener import bind_socket
from revproxy.runtime.workers import START_ATTEMPTS, WorkerPool

CONFIG = """
[global]
access_log = "off"
watch = false
shutdown_timeout = "1s"

[[listener]]
name = "web"
bind = "127.0.0.1:{port}"

[[route]]
respond = {{ status = 200, body = "ok" }}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dying_interpreter(tmp_path: Path, deaths: int, sig: signal.Signals) -> Path:
    """An interpreter that is killed by ``sig`` the first ``deaths`` times it is started (as
    an early SIGHUP kills a worker), then runs the real one."""
    script = tmp_path / "python"
    count = tmp_path / "count"
    count.write_text("0")
    script.write_text(
        "#!/bin/sh\n"
        f'n=$(cat "{count}")\n'
        f'echo $((n + 1)) > "{count}"\n'
        f'if [ "$n" -lt {deaths} ]; then kill -{sig.name[3:]} $$; fi\n'
        f'exec "{sys.executable}" "$@"\n'
    )
    script.chmod(0o755)
    return count


def pool() -> WorkerPool:
    return WorkerPool(
        default_pem=generate_default_cert(),
        states=lambda: [],
        on_passive=lambda key, ok: None,
        on_restart=lambda: None,
    )


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGUSR1])
def test_a_worker_killed_by_an_early_signal_is_started_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sig: signal.Signals
) -> None:
    count = dying_interpreter(tmp_path, 2, sig)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    config = load_config_text([("10-test.toml", CONFIG.format(port=free_port()))])
    listeners = {str(b): bind_socket(b) for lst in config.listeners for b in lst.bind}
    workers = pool()

    async def run() -> None:
        try:
            await workers.start(1, config, 1, listeners)
            assert len(workers.pids) == 1
        finally:
            await workers.stop(1.0)

    uvloop.run(run())  # as revproxy runs: its child watching
    assert count.read_text().strip() == "3"  # two deaths, then the worker that serves


def test_a_worker_that_keeps_dying_is_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    count = dying_interpreter(tmp_path, START_ATTEMPTS, signal.SIGHUP)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    config = load_config_text([("10-test.toml", CONFIG.format(port=free_port()))])
    listeners = {str(b): bind_socket(b) for lst in config.listeners for b in lst.bind}
    workers = pool()

    async def run() -> None:
        with pytest.raises(RuntimeError, match="no worker started: worker 0 was killed by"):
            await workers.start(1, config, 1, listeners)

    uvloop.run(run())  # as revproxy runs: its child watching
    assert count.read_text().strip() == str(START_ATTEMPTS)
