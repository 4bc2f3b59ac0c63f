"""A real redis-server on a loopback port, for the tests of the shared rate-limit store.

Rule of this room: nothing here is a mock, every wait is bounded, and every process started
here is stopped by the context manager that started it (by its own pid, never by name).
tests/e2e is on pytest's ``pythonpath``, so tests in any folder write
``from redis_peer import redis_server``.

A missing ``redis-server`` fails the test (CI installs it: scripts/test), never skips it.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import LOOPBACK, START_TIMEOUT, STOP_TIMEOUT, free_port, wait_until


def redis_binary() -> str:
    """The path of redis-server, or the test fails saying how to install it."""
    found = shutil.which("redis-server")
    if found is None:
        pytest.fail("redis-server not found (apt-get install redis-server)")
    return found


def ping(port: int, timeout: float = 1.0) -> bool:
    """Whether a Redis server answers PING on ``port`` (raw RESP, no client library)."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process on a fixed loopback port: started, stopped, killed, paused and
    started again on the same port (what the store's failure tests need)."""

    def __init__(self, port: int, directory: Path) -> None:
        self.port = port
        self.url = f"redis://{LOOPBACK}:{port}/0"
        self._dir = directory
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None, "redis-server is not running"
        return self._proc.pid

    def start(self) -> None:
        """Start redis-server and wait (bounded) until it answers PING."""
        assert self._proc is None or self._proc.poll() is not None, "already running"
        log = self._dir / "redis.log"
        self._proc = subprocess.Popen(
            [
                redis_binary(),
                "--port",
                str(self.port),
                "--bind",
                LOOPBACK,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self._dir),
                "--logfile",
                str(log),
                "--daemonize",
                "no",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        proc = self._proc
        if not wait_until(lambda: ping(self.port) or proc.poll() is not None, START_TIMEOUT):
            self.stop()
            raise AssertionError(f"redis-server did not answer on {self.port}: {self._log()}")
        if proc.poll() is not None:
            raise AssertionError(f"redis-server exited ({proc.returncode}): {self._log()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it by its pid (SIGKILL after STOP_TIMEOUT); ``sig=SIGKILL`` is a crash."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)  # a paused server could not act on SIGTERM
            proc.send_signal(sig)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)

    def pause(self) -> None:
        """SIGSTOP: connections stay open and nothing answers (a hung server)."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def command(self, *args: str, timeout: float = 5.0) -> bytes:
        """One command in raw RESP; the raw reply (small replies: one read)."""
        parts = [f"${len(a.encode())}\r\n{a}\r\n" for a in args]
        request = f"*{len(args)}\r\n{''.join(parts)}".encode()
        with socket.create_connection((LOOPBACK, self.port), timeout=timeout) as s:
            s.sendall(request)
            return s.recv(65536)

    def _log(self) -> str:
        try:
            return (self._dir / "redis.log").read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    """A throwaway redis-server (no persistence) on a free loopback port, stopped on exit."""
    redis_binary()
    with tempfile.TemporaryDirectory(prefix="revproxy-redis-") as directory:
        server = RedisServer(free_port(), Path(directory))
        server.start()
        try:
            yield server
        finally:
            server.stop()
