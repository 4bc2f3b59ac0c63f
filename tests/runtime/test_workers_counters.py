"""The workers of one instance keep the limits' counters in one table (runtime/workers.py,
policy/counters.py): every worker attaches the master's region in its own slot — restarted
ones too — and hears how many workers there are after a resize."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path
from typing import Any

import pytest

from revproxy.certs.files import generate_default_cert
from revproxy.config.load import load_config_text
from revproxy.edge.listener import bind_socket
from revproxy.runtime import workers
from revproxy.runtime.workers import WorkerPool

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
