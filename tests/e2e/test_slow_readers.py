"""Memory per slow reader is bounded (slowhttptest -X, 1,000 connections).

A slow-read attack opens many connections, asks for a large response and reads it a few bytes
at a time through a tiny TCP window. What the proxy reads from the origin and the client does
not take must be held somewhere; it is bounded per connection (``global.buffer_size`` each way)
and in all (``global.max_buffer_memory``), so resident memory stays flat and is given back.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import LOOPBACK, Proxy, curl, free_port
from l4_peers import nginx

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("real_peers")]

SLOW_READERS = 1000
ATTACK_SECONDS = 25
# Resident memory the proxy may reach during the attack (the bound).
RSS_LIMIT_KIB = 150 * 1024
BIG = 8 * 1024 * 1024


@contextlib.contextmanager
def nginx_files(directory: Path) -> Iterator[int]:
    """nginx serving ``directory/www`` on a loopback port."""
    with nginx(directory, f"root {directory / 'www'};", http="keepalive_requests 100000;") as port:
        yield port


def test_slow_readers_hold_bounded_memory(tmp_path: Path) -> None:
    tool = shutil.which("slowhttptest")
    if tool is None:
        pytest.fail("slowhttptest not found (apt-get install slowhttptest)")
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "big").write_bytes(bytes(range(256)) * (BIG // 256))
    with nginx_files(tmp_path) as origin:
        port = free_port()
        config = f"""
[[listener]]
name = "web"
bind = ["{LOOPBACK}:{port}"]

[[route]]
pool = "nginx"

[pool.nginx]
servers = ["{LOOPBACK}:{origin}"]
"""
        with Proxy(tmp_path, config, ports=[port]) as proxy:
            assert curl("-o", "/dev/null", f"http://{LOOPBACK}:{port}/big").returncode == 0
            idle = proxy.rss_kib()
            peak = [idle]
            done = threading.Event()

            def sample() -> None:
                while not done.wait(0.2):
                    with contextlib.suppress(OSError, ValueError):
                        peak[0] = max(peak[0], proxy.rss_kib())

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            attack = subprocess.run(
                [
                    tool, "-X", "-c", str(SLOW_READERS), "-r", "500", "-l", str(ATTACK_SECONDS),
                    "-w", "512", "-y", "1024", "-n", "5", "-z", "32", "-k", "3", "-p", "5",
                    "-u", f"http://{LOOPBACK}:{port}/big",
                ],
                capture_output=True, text=True, timeout=ATTACK_SECONDS + 60,
            )  # fmt: skip
            done.set()
            sampler.join()
            # Once the readers are gone, what they held is given back.
            after = proxy.rss_kib()
            deadline = time.monotonic() + 15
            while after > idle + 40 * 1024 and time.monotonic() < deadline:
                time.sleep(0.5)
                after = proxy.rss_kib()
            summary = (
                f"idle {idle // 1024} MiB, peak {peak[0] // 1024} MiB, after {after // 1024} MiB"
            )
            print(summary)
            print(attack.stdout[-1500:])
            assert peak[0] < RSS_LIMIT_KIB, summary
            assert after < idle + 40 * 1024, summary
            assert curl("-o", "/dev/null", f"http://{LOOPBACK}:{port}/big").returncode == 0
