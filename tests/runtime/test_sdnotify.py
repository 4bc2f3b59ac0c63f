"""sd_notify against a real AF_UNIX datagram socket, as systemd listens for it."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from revproxy.runtime.sdnotify import Notifier


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2.0)
    try:
        yield path, sock
    finally:
        sock.close()


def fields(data: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in data.decode().splitlines())


def test_ready_reloading_stopping_reach_the_socket(listener: tuple[str, socket.socket]) -> None:
    path, sock = listener
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("serving 2 listeners")
    assert fields(sock.recv(4096)) == {"READY": "1", "STATUS": "serving 2 listeners"}
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.reloading()
    got = fields(sock.recv(4096))
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert got["RELOADING"] == "1"
    assert before <= int(got["MONOTONIC_USEC"]) <= after
    assert n.ready()
    assert fields(sock.recv(4096)) == {"READY": "1"}
    assert n.stopping()
    assert fields(sock.recv(4096))["STOPPING"] == "1"
    n.close()


def test_abstract_socket_names(tmp_path: Path) -> None:
    name = f"revproxy-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2.0)
    try:
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.status("hello")
        assert sock.recv(4096) == b"STATUS=hello"
        n.close()
    finally:
        sock.close()


def test_without_notify_socket_nothing_is_sent() -> None:
    n = Notifier({})
    assert not n.enabled
    assert not n.ready()
    assert not n.stopping()


def test_a_vanished_socket_is_not_an_error(tmp_path: Path) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert not n.ready()


def test_watchdog_pings_at_half_the_interval(listener: tuple[str, socket.socket]) -> None:
    path, sock = listener
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
    assert n.watchdog_interval == 0.1
    pings: list[bytes] = []
    sock.setblocking(False)

    async def main() -> None:
        n.start_watchdog()
        async with asyncio.timeout(10):  # a bound, not a timing assertion
            while len(pings) < 3:
                try:
                    pings.append(sock.recv(4096))
                except BlockingIOError:
                    await asyncio.sleep(0.01)
        n.close()

    asyncio.run(main())
    assert set(pings) == {b"WATCHDOG=1"}


def test_watchdog_for_another_pid_is_ignored() -> None:
    n = Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert n.watchdog_interval is None
