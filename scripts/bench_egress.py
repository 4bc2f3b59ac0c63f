"""Egress benchmark (a benchmark, never a test): ``scripts/bench egress [--quick]``.

On loopback only, every loop bounded in time and count:

- CONNECT bulk MB/s through revproxy (``mode = "forward"``), through revproxy's L4 path
  (``mode = "tcp"`` to the same source) and through Squid 5.7 (1 worker): a source server sends
  SIZE bytes per connection, a client reads them through the proxy.
- HTTP forward small requests per second, revproxy vs Squid: wrk with absolute-form targets
  to an nginx origin (``return 200``), one connection count, fixed duration; and requests
  per CPU-second of the proxy's own processes (user + system time read from /proc during
  the run), the "per core" figure, since the proxy shares the machine with nginx and wrk, and
  its inverse, CPU-µs per request.
- Memory per idle CONNECT tunnel: RSS of revproxy before and after opening N idle tunnels.

Prints the figures and writes them, with the goals met or not, to their section of
docs/benchmarks.md (``--no-write``: print only).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "e2e")]

from bench_sections import provenance, write_section  # noqa: E402
from egress_peers import squid  # noqa: E402
from harness import LOOPBACK, Proxy, _descendants, free_port  # noqa: E402
from l4_peers import nginx  # noqa: E402

BLOCK = 1 << 20
# A bound on every transfer and load loop (seconds).
RUN_LIMIT = 60.0

SOURCE = r"""
import socket, sys, threading
size = int(sys.argv[2])
block = memoryview(b"x" * (1 << 20))
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1]))); srv.listen(512)
def serve(c):
    try:
        sent = 0
        while sent < size:
            n = min(len(block), size - sent); c.sendall(block[:n]); sent += n
        c.shutdown(socket.SHUT_WR); c.recv(1)
    except OSError:
        pass
    finally:
        c.close()
while True:
    c, _ = srv.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


def _connect_through(proxy_port: int, dest_port: int) -> socket.socket:
    s = socket.create_connection((LOOPBACK, proxy_port), timeout=RUN_LIMIT)
    s.sendall(f"CONNECT 127.0.0.1:{dest_port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        if not chunk:
            raise RuntimeError("proxy closed the CONNECT")
        head += chunk
    if not head.startswith(b"HTTP/1.1 200") and not head.startswith(b"HTTP/1.0 200"):
        raise RuntimeError(head.decode(errors="replace"))
    return s


def _drain(s: socket.socket, size: int) -> float:
    buf = bytearray(BLOCK)
    got = 0
    started = time.monotonic()
    while got < size and time.monotonic() - started < RUN_LIMIT:
        n = s.recv_into(buf)
        if not n:
            break
        got += n
    elapsed = time.monotonic() - started
    s.close()
    return got / elapsed / 1e6


def bulk(ways: list[tuple[int, bool]], dest_port: int, size: int, rounds: int) -> list[list[float]]:
    """The MB/s of each way (a proxy port, and whether it takes a CONNECT first), one figure
    per round: the ways take turns in every round, so that a noisy moment of the machine
    falls on all of them alike and figures of one round compare (``paired``)."""
    runs: list[list[float]] = [[] for _ in ways]
    for _ in range(rounds):
        for i, (proxy_port, tunnel) in enumerate(ways):
            if tunnel:
                s = _connect_through(proxy_port, dest_port)
            else:
                s = socket.create_connection((LOOPBACK, proxy_port), timeout=RUN_LIMIT)
            runs[i].append(_drain(s, size))
    return runs


def paired(a: list[float], b: list[float]) -> float:
    """The median of the rounds' ratios a/b (the same round's figures side by side)."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True) if y)


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of ``pids`` so far (seconds)."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def _pids_named(name: str) -> list[int]:
    pids = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == name:
                pids.append(int(comm.parent.name))
        except OSError:
            continue
    return pids


def wrk_rps(
    proxy_port: int, origin_port: int, seconds: int, directory: Path, pids: list[int]
) -> tuple[float, float]:
    """(requests per second, requests per CPU-second of ``pids``)."""
    script = directory / "absolute.lua"
    script.write_text(
        f'request = function() return wrk.format("GET", "http://127.0.0.1:{origin_port}/") end\n'
    )
    cpu = _cpu_seconds(pids)
    res = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", "-c32", f"-d{seconds}s", "-s", str(script),
         f"http://{LOOPBACK}:{proxy_port}/"],
        capture_output=True, text=True, timeout=seconds + 30,
    )  # fmt: skip
    cpu = _cpu_seconds(pids) - cpu
    for line in res.stdout.splitlines():
        if line.startswith("Requests/sec:"):
            rps = float(line.split()[1])
            return rps, (rps * seconds / cpu if cpu > 0 else 0.0)
    raise RuntimeError(res.stdout + res.stderr)


def idle_tunnel_kib(proxy: Proxy, proxy_port: int, dest_port: int, count: int) -> float:
    time.sleep(0.5)
    before = proxy.rss_kib()
    socks = [_connect_through(proxy_port, dest_port) for _ in range(count)]
    time.sleep(1.0)
    after = proxy.rss_kib()
    for s in socks:
        s.close()
    return (after - before) / count


def ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, short runs")
    parser.add_argument(
        "--no-write", dest="write", action="store_false",
        help="print only (by default the figures also go to docs/benchmarks.md)",
    )  # fmt: skip
    args = parser.parse_args()
    size = (256 if args.quick else 1024) * BLOCK
    rounds = 3 if args.quick else 7
    seconds = 3 if args.quick else 10
    idle = 200 if args.quick else 1000
    if shutil.which("wrk") is None or shutil.which("squid") is None:
        print("bench egress needs wrk and squid (apt-get install wrk squid)", file=sys.stderr)
        return 2
    directory = Path(tempfile.mkdtemp(prefix="revproxy-bench-egress-"))
    src_port, fwd, tcp = free_port(), free_port(), free_port()
    source = subprocess.Popen([sys.executable, "-c", SOURCE, str(src_port), str(size)])
    try:
        with nginx(directory, "location / { return 200 'ok'; }") as origin:
            config = f"""
[global]
access_log = "off"

[[listener]]
name = "egress"
bind = ["{LOOPBACK}:{fwd}"]
mode = "forward"
egress = "bench"

[[listener]]
name = "l4"
bind = ["{LOOPBACK}:{tcp}"]
mode = "tcp"
pool = "source"

[pool.source]
servers = ["127.0.0.1:{src_port}"]
timeouts = {{ tunnel = "5m" }}

[egress.bench]
destinations = ["127.0.0.1"]
connect_ports = ["1025-65535"]
"""
            acls = (
                "acl SSL_ports port 1025-65535\nacl CONNECT method CONNECT\n"
                "http_access deny CONNECT !SSL_ports\nhttp_access allow all\n"
            )
            proxy = Proxy(directory, config, ports=[fwd, tcp],
                          extra_args=[])  # fmt: skip
            with proxy, squid(acls) as squid_port:
                time.sleep(0.5)
                ours = [proxy.pid, *_descendants(proxy.pid)]
                rps, per_cpu = wrk_rps(fwd, origin, seconds, directory, ours)
                squid_rps, squid_per_cpu = wrk_rps(
                    squid_port, origin, seconds, directory, _pids_named("squid")
                )
                connect_runs, l4_runs, squid_runs = bulk(
                    [(fwd, True), (tcp, False), (squid_port, True)], src_port, size, rounds
                )
                vs_l4, vs_squid = paired(connect_runs, l4_runs), paired(connect_runs, squid_runs)
                rows = [
                    ("CONNECT bulk, revproxy forward (MB/s, median)",
                     statistics.median(connect_runs)),
                    ("L4 TCP bulk, revproxy mode tcp (MB/s, median)", statistics.median(l4_runs)),
                    ("CONNECT bulk, Squid 5.7 1 worker (MB/s, median)",
                     statistics.median(squid_runs)),
                    ("HTTP forward small, revproxy (req/s, wrk -c32)", rps),
                    ("HTTP forward small, Squid 5.7 1 worker (req/s, wrk -c32)", squid_rps),
                    ("HTTP forward small, revproxy (req per CPU-second)", per_cpu),
                    ("HTTP forward small, Squid 5.7 1 worker (req per CPU-second)",
                     squid_per_cpu),
                    ("HTTP forward small, revproxy (CPU-us per request)",
                     1e6 / per_cpu if per_cpu else 0.0),
                    ("HTTP forward small, Squid 5.7 1 worker (CPU-us per request)",
                     1e6 / squid_per_cpu if squid_per_cpu else 0.0),
                    (f"memory per idle CONNECT tunnel, revproxy ({idle} tunnels, KiB)",
                     idle_tunnel_kib(proxy, fwd, origin, idle)),
                ]  # fmt: skip
    finally:
        source.kill()
        source.wait(timeout=5)
        shutil.rmtree(directory, ignore_errors=True)
    table = "| scenario | result |\n|---|---|\n" + "".join(
        f"| {name} | {value:,.1f} |\n" for name, value in rows
    )
    per_core = per_cpu / squid_per_cpu if squid_per_cpu else 0.0
    kib = rows[-1][1]
    goals = [
        (f"CONNECT bulk MB/s vs our L4 TCP path (median of {rounds} rounds' ratios)", vs_l4,
         ">= 0.95x", vs_l4 >= 0.95),
        (f"CONNECT bulk MB/s vs Squid (median of {rounds} rounds' ratios)", vs_squid,
         ">= 1.0x", vs_squid >= 1.0),
        ("HTTP forward small, req per CPU-second vs Squid", per_core, ">= 2x",
         per_core >= 2.0),
        ("HTTP forward small, req/s vs Squid", ratio(rps, squid_rps), "(not a goal)", None),
    ]  # fmt: skip
    verdicts = "| goal | measured | target | met |\n|---|---:|---|---|\n" + "".join(
        f"| {name} | {value:.2f}x | {target} | {'-' if ok is None else 'yes' if ok else 'no'} |\n"
        for name, value, target, ok in goals
    )
    verdicts += f"| memory per idle CONNECT tunnel | {kib:.1f} KiB | <= 10 KiB | " + (
        "yes |\n" if kib <= 10 else "no |\n"
    )
    print(table)
    print(verdicts)
    if args.write:
        write_section(
            "egress",
            "Egress: CONNECT, HTTP forward and idle tunnels against Squid (scripts/bench egress)",
            f"{provenance(args.quick)}; wrk pinned to CPU 1, Squid 5.7 with one worker, "
            f"the same revproxy process serving the forward and the L4 listener.\n\n"
            f"{verdicts}\n{table}",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
