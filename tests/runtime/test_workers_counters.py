"""The workers of one instance keep the limits' counters in one table (runtime/workers.py,
policy/counters.py): every worker attaches the master's region in its own slot — restarted
ones too — and hears how many workers there are after a resize. And a worker that a reload's
or a log reopen's signal ends before it can catch it (a SIGHUP or SIGUSR1 sent to the whole
process group while its interpreter starts) is started again, not taken for a worker that
cannot start (``WorkerPool._spawn``)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import uvloop

from revproxy.certs.files import generate_default_cert
from revproxy.config.load import load_config_text
from revproxy.edge.listener import bind_socket
from revproxy.runtime import workers
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


async def counters_of(pool: WorkerPool) -> list[dict[str, Any]]:
    answers = await pool.ask_all({"op": "stats"})
    return sorted((a["counters"] for a in answers), key=lambda c: int(c["slot"]))


async def until(pool: WorkerPool, want: list[dict[str, Any]], seconds: float = 20.0) -> None:
    async with asyncio.timeout(seconds):
        while await counters_of(pool) != want:
            await asyncio.sleep(0.1)


def expected(region: int, count: int, slots: int = 64) -> list[dict[str, Any]]:
    return [{"region": region, "slot": s, "workers": count, "slots": slots} for s in range(count)]


def new_pool() -> WorkerPool:
    return WorkerPool(
        default_pem=generate_default_cert(),
        states=lambda: [],
        on_passive=lambda key, ok: None,
        on_restart=lambda: None,
    )


def test_the_workers_of_an_instance_share_one_counters_table(tmp_path: Path) -> None:
    config = load_config_text([("10-test.toml", CONFIG.format(port=free_port()))])
    listeners = {str(b): bind_socket(b) for lst in config.listeners for b in lst.bind}
    pool = new_pool()

    async def run() -> None:
        try:
            await pool.start(2, config, 1, listeners)
            assert pool.counters_fd is not None
            region = os.fstat(pool.counters_fd).st_ino
            assert await counters_of(pool) == expected(region, 2)

            # A worker that dies is started again on the same region, in the same slot.
            first = pool.handles[0].pid
            os.kill(first, signal.SIGKILL)
            await until(pool, expected(region, 2))
            assert pool.handles[0].pid != first

            # More workers (within the region's 64 slots): the same region, told the count.
            await pool.reload(config, 2, listeners, 3)
            await until(pool, expected(region, 3))
            await pool.reload(config, 3, listeners, 1)
            await until(pool, expected(region, 1))
        finally:
            await pool.stop(1.0)
            assert pool.counters_fd is None
            for socks in listeners.values():
                for s in socks:
                    s.close()

    asyncio.run(run())


def test_more_workers_than_slots_move_everyone_to_a_new_region(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workers, "MIN_SLOTS", 2)
    config = load_config_text([("10-test.toml", CONFIG.format(port=free_port()))])
    listeners = {str(b): bind_socket(b) for lst in config.listeners for b in lst.bind}
    pool = new_pool()

    async def run() -> None:
        try:
            await pool.start(2, config, 1, listeners)
            assert pool.counters_fd is not None
            old = os.fstat(pool.counters_fd).st_ino
            assert await counters_of(pool) == expected(old, 2, slots=2)
            await pool.reload(config, 2, listeners, 3)
            region = os.fstat(pool.counters_fd).st_ino
            assert region != old
            await until(pool, expected(region, 3, slots=3))
        finally:
            await pool.stop(1.0)
            for socks in listeners.values():
                for s in socks:
                    s.close()

    asyncio.run(run())


# --- workers killed by a group's signal while they start ------------------------------------


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


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGUSR1])
def test_a_worker_killed_by_an_early_signal_is_started_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sig: signal.Signals
) -> None:
    count = dying_interpreter(tmp_path, 2, sig)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    config = load_config_text([("10-test.toml", CONFIG.format(port=free_port()))])
    listeners = {str(b): bind_socket(b) for lst in config.listeners for b in lst.bind}
    workers = new_pool()

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
    workers = new_pool()

    async def run() -> None:
        with pytest.raises(RuntimeError, match="no worker started: worker 0 was killed by"):
            await workers.start(1, config, 1, listeners)

    uvloop.run(run())  # as revproxy runs: its child watching
    assert count.read_text().strip() == str(START_ATTEMPTS)
