#!/usr/bin/env python3
"""L4 throughput and connection rate: revproxy's tcp listener against HAProxy in mode tcp.

Starts, on loopback only: a sink origin, HAProxy (``mode tcp``, one thread) and revproxy (a
``mode = "tcp"`` listener, ``python -m revproxy run``), each proxy pinned to CPU 0 with
``taskset -c 0``; the sink and the client run pinned to CPU 1. For each proxy it then

* streams ``--size`` bytes (default 1 GiB) client → proxy → sink and reports MB/s (wall
  clock, from connect until the sink confirmed every byte) and MB per CPU-second the proxy
  process used (from /proc/PID/stat): on a small or shared machine the client and sink may be
  the bottleneck, and the CPU figure still compares the proxies' own cost;
* opens short connections (send 5 bytes, read the 2-byte answer, close) with
  ``--concurrency`` clients for ``--seconds`` and reports connections/s and the proxy's CPU
  per connection (CPU-µs, user + system): on a shared machine the rate is noisy, the CPU cost
  much less so.

HAProxy is measured twice: as configured by default (16 KiB buffers, no splicing) and with
``option splice-auto`` and ``tune.pipesize 1048576`` (splicing through pipes as large as
revproxy's). Everything is bounded in time; the result is one JSON object on stdout.
Usage: ``scripts/bench_l4.py [--size BYTES] [--seconds S] [--concurrency N]``; for an A/B of
revproxy alone, ``--targets revproxy --no-bulk --revproxy-root OTHER_CHECKOUT``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
PROXY_CPU = "0"
PEER_CPU = "1"
# Bounds: start-up of any process, one bulk transfer, the whole run.
START_TIMEOUT = 20.0
TRANSFER_TIMEOUT = 120.0
TOTAL_TIMEOUT = 600.0
BLOCK = 1 << 20
TARGETS = ("haproxy", "haproxy_splice", "revproxy")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {timeout}s")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def pinned(cpu: str, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv] if shutil.which("taskset") else argv


@contextlib.contextmanager
def process(argv: list[str], **kw: object) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


# --- peers (run as subprocesses of this script, pinned to PEER_CPU) ----------------------------


def run_sink(bulk_port: int, short_port: int) -> None:
    """Bulk: read to end of stream (blocking recv_into, a thread per connection), answer the
    byte count. Short: read 5 bytes, answer "ok", close (asyncio)."""

    def bulk_conn(conn: socket.socket) -> None:
        buf = bytearray(4 * BLOCK)
        total = 0
        with conn:
            while n := conn.recv_into(buf):
                total += n
            conn.sendall(str(total).encode())

    def bulk_accept() -> None:
        with socket.socket() as lsock:
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            lsock.bind((LOOPBACK, bulk_port))
            lsock.listen(16)
            while True:
                conn, _ = lsock.accept()
                threading.Thread(target=bulk_conn, args=(conn,), daemon=True).start()

    async def short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            await reader.readexactly(5)
            writer.write(b"ok")
            await writer.drain()
        writer.close()

    async def main() -> None:
        threading.Thread(target=bulk_accept, daemon=True).start()
        server = await asyncio.start_server(short, LOOPBACK, short_port, backlog=1024)
        async with server:
            await asyncio.Event().wait()

    _run(main())


def run_client_bulk(port: int, size: int) -> None:
    sock = socket.create_connection((LOOPBACK, port), timeout=TRANSFER_TIMEOUT)
    block = memoryview(os.urandom(BLOCK))
    started = time.monotonic()
    sent = 0
    while sent < size:
        n = min(BLOCK, size - sent)
        sock.sendall(block[:n])
        sent += n
    sock.shutdown(socket.SHUT_WR)
    answer = b""
    while chunk := sock.recv(100):
        answer += chunk
    elapsed = time.monotonic() - started
    sock.close()
    print(json.dumps({"bytes": int(answer or b"0"), "seconds": elapsed}))


def run_client_short(port: int, seconds: float, concurrency: int) -> None:
    async def worker(deadline: float, counts: list[int]) -> None:
        loop = asyncio.get_running_loop()
        while loop.time() < deadline:
            try:
                reader, writer = await asyncio.open_connection(LOOPBACK, port)
                writer.write(b"hello")
                got = await reader.read(10)
                writer.close()
                counts[0 if got == b"ok" else 1] += 1
            except OSError:
                counts[1] += 1

    async def main() -> None:
        counts = [0, 0]
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + seconds
        await asyncio.gather(*(worker(deadline, counts) for _ in range(concurrency)))
        elapsed = loop.time() - started
        print(json.dumps({"ok": counts[0], "failed": counts[1], "seconds": elapsed}))

    _run(main())


def _run(coro: Coroutine[Any, Any, None]) -> None:
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    with contextlib.suppress(ImportError):
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(coro)


# --- the measurement -----------------------------------------------------------------------------


def _client(args: list[str], timeout: float) -> dict[str, float]:
    out = subprocess.run(
        pinned(PEER_CPU, [sys.executable, __file__, *args]),
        capture_output=True,
        timeout=timeout,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout)
    return result


def measure(
    name: str,
    proxy: subprocess.Popen[bytes],
    bulk_port: int,
    short_port: int,
    opts: argparse.Namespace,
) -> dict[str, object]:
    """Bulk MB/s through ``bulk_port`` and connections/s through ``short_port`` of ``proxy``."""
    out: dict[str, object] = {}
    if not opts.no_bulk:
        mb = opts.size / 1e6
        cpu0 = cpu_seconds(proxy.pid)
        bulk = _client(["--client-bulk", str(bulk_port), str(opts.size)], TRANSFER_TIMEOUT)
        cpu_bulk = cpu_seconds(proxy.pid) - cpu0
        if bulk["bytes"] != opts.size:
            raise RuntimeError(f"{name}: the sink received {bulk['bytes']} of {opts.size} bytes")
        out["bulk_MB_per_s"] = round(mb / bulk["seconds"], 1)
        out["bulk_seconds"] = round(bulk["seconds"], 3)
        out["bulk_proxy_cpu_seconds"] = round(cpu_bulk, 3)
        out["bulk_MB_per_cpu_second"] = round(mb / cpu_bulk, 1) if cpu_bulk > 0 else None
    cpu1 = cpu_seconds(proxy.pid)
    short = _client(
        ["--client-short", str(short_port), str(opts.seconds), str(opts.concurrency)],
        opts.seconds + 60,
    )
    cpu_short = cpu_seconds(proxy.pid) - cpu1
    ok = int(short["ok"])
    out["short_conns_per_s"] = round(ok / short["seconds"], 1)
    out["short_failed"] = int(short["failed"])
    out["short_proxy_cpu_seconds"] = round(cpu_short, 3)
    out["short_cpu_us_per_conn"] = round(cpu_short / ok * 1e6, 1) if ok else None
    return out


def haproxy_config(bulk: tuple[int, int], short: tuple[int, int], splice: bool) -> str:
    """(listen port, sink port) for the bulk and the short-connection frontends; with
    ``splice``, kernel splicing through pipes as large as revproxy's (1 MiB)."""
    return f"""global
    nbthread 1
    maxconn 4000
{"    tune.pipesize 1048576" if splice else ""}
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
{"    option splice-auto" if splice else ""}
listen bulk
    bind {LOOPBACK}:{bulk[0]}
    server s {LOOPBACK}:{bulk[1]}
listen short
    bind {LOOPBACK}:{short[0]}
    server s {LOOPBACK}:{short[1]}
"""


def revproxy_config(bulk: tuple[int, int], short: tuple[int, int]) -> str:
    out = '[global]\naccess_log = "off"\n'
    for name, (port, server_port) in (("bulk", bulk), ("short", short)):
        out += f"""
[[listener]]
name = "{name}"
bind = ["{LOOPBACK}:{port}"]
mode = "tcp"
pool = "{name}"

[pool.{name}]
servers = ["{LOOPBACK}:{server_port}"]
"""
    return out


def ratios(rev: dict[str, object], ref: dict[str, object]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key in ("bulk_MB_per_s", "bulk_MB_per_cpu_second", "short_conns_per_s"):
        a, b = rev.get(key), ref.get(key)
        ok = isinstance(a, int | float) and isinstance(b, int | float) and b
        out[key] = round(a / b, 2) if ok else None  # type: ignore[operator]
    # CPU per connection: how many times HAProxy's cost revproxy's is (lower is better).
    a, b = rev.get("short_cpu_us_per_conn"), ref.get("short_cpu_us_per_conn")
    ok = isinstance(a, int | float) and isinstance(b, int | float) and b
    out["short_cpu_per_conn_times"] = round(a / b, 2) if ok else None  # type: ignore[operator]
    return out


def _measure_revproxy(
    d: Path, sink_bulk: int, sink_short: int, opts: argparse.Namespace
) -> dict[str, object]:
    conf = d / "revproxy"
    conf.mkdir()
    bulk, short = (free_port(), sink_bulk), (free_port(), sink_short)
    (conf / "10-bench.toml").write_text(revproxy_config(bulk, short))
    argv = pinned(PROXY_CPU, [sys.executable, "-m", "revproxy", "run", "-c", str(conf)])
    env = {**os.environ, "PYTHONPATH": str(opts.revproxy_root.resolve())}
    with (
        open(d / "revproxy.log", "wb") as log,
        process(argv, stdout=subprocess.DEVNULL, stderr=log, env=env, cwd=d) as rp,
    ):
        try:
            wait_port(bulk[0], rp)
            wait_port(short[0], rp)
        except RuntimeError:
            sys.stderr.write((d / "revproxy.log").read_text())
            raise
        return measure("revproxy", rp, bulk[0], short[0], opts)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=int, default=1 << 30, help="bytes per bulk transfer")
    ap.add_argument("--seconds", type=float, default=5.0, help="short-connection run time")
    ap.add_argument("--concurrency", type=int, default=32, help="short-connection clients")
    ap.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help="comma-separated proxies to measure (default: all of %(default)s)",
    )
    ap.add_argument("--no-bulk", action="store_true", help="short connections only")
    ap.add_argument(
        "--revproxy-root",
        type=Path,
        default=REPO,
        help="the checkout whose revproxy runs (A/B against another tree)",
    )
    ap.add_argument("--sink", nargs=2, type=int, help=argparse.SUPPRESS)
    ap.add_argument("--client-bulk", nargs=2, type=int, help=argparse.SUPPRESS)
    ap.add_argument("--client-short", nargs=3, help=argparse.SUPPRESS)
    opts = ap.parse_args()
    if opts.sink:
        run_sink(*opts.sink)
        return 0
    if opts.client_bulk:
        run_client_bulk(*opts.client_bulk)
        return 0
    if opts.client_short:
        p, s, c = opts.client_short
        run_client_short(int(p), float(s), int(c))
        return 0

    targets = [t for t in opts.targets.split(",") if t]
    unknown = set(targets) - set(TARGETS)
    if unknown:
        ap.error(f"--targets: unknown {', '.join(sorted(unknown))} (one of {', '.join(TARGETS)})")
    signal.alarm(int(TOTAL_TIMEOUT))
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    results: dict[str, object] = {
        "size_bytes": opts.size,
        "cpus": os.cpu_count(),
        "proxy_cpu": PROXY_CPU,
        "peer_cpu": PEER_CPU,
        "note": "loopback on a shared, noisy machine: compare the ratios, not the values",
    }
    sink_bulk, sink_short = free_port(), free_port()
    sink_argv = [sys.executable, __file__, "--sink", str(sink_bulk), str(sink_short)]
    with (
        tempfile.TemporaryDirectory(prefix="bench-l4-") as tmp,
        process(pinned(PEER_CPU, sink_argv)) as sink,
    ):
        wait_port(sink_short, sink)
        wait_port(sink_bulk, sink)
        d = Path(tmp)
        for label, splice in (("haproxy", False), ("haproxy_splice", True)):
            if label not in targets:
                continue
            if not os.path.exists(haproxy):
                results[label] = "haproxy not installed"
                continue
            bulk, short = (free_port(), sink_bulk), (free_port(), sink_short)
            cfg = d / f"{label}.cfg"
            cfg.write_text(haproxy_config(bulk, short, splice))
            argv = pinned(PROXY_CPU, [haproxy, "-db", "-f", str(cfg)])
            with process(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as hp:
                wait_port(bulk[0], hp)
                wait_port(short[0], hp)
                results[label] = measure(label, hp, bulk[0], short[0], opts)
        rev: dict[str, object] | None = None
        if "revproxy" in targets:
            rev = results["revproxy"] = _measure_revproxy(d, sink_bulk, sink_short, opts)
    for label in ("haproxy", "haproxy_splice"):
        ref = results.get(label)
        if rev is not None and isinstance(ref, dict):
            results[f"revproxy_vs_{label}"] = ratios(rev, ref)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
