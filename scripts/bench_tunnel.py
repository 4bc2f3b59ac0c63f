"""The reverse-tunnel benchmark (issue 16; docs/tunnel.md): a benchmark, never a test.

  scripts/bench tunnel [--size MB] [--duration S]

Against OpenSSH's ``ssh -R`` on the same machine in the same run: bulk TCP MB/s through a
``mode = "tcp"`` expose and through an ``ssh -R`` forward (goal: >= 1.0x ssh); small HTTP
requests (wrk, 16 connections) through the tunnel and to the same origin directly, in interleaved
rounds whose ratios give the median, with the CPU each process spent per request (goal:
>= 0.7x); the proxy's memory per idle agent connection (goal: <= 100 KiB). Everything runs on
loopback; the proxy, the agent, sshd and the origins are real processes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "e2e"), str(REPO), str(REPO / "scripts")]

from bench_sections import provenance, write_section  # noqa: E402
from harness import LOOPBACK, Proxy, free_port, wait_until  # noqa: E402
from tunnel_peers import Agent, Sshd, enroll_token, proxy_config  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
REPLY = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok"


def start_sink() -> int:
    """A TCP server that reads everything, then answers "done"."""
    srv = socket.socket()
    srv.bind((LOOPBACK, 0))
    srv.listen(16)

    def serve() -> None:
        while True:
            conn, _ = srv.accept()

            def drain(c: socket.socket = conn) -> None:
                while c.recv(1 << 20):
                    pass
                c.sendall(b"done")
                c.close()

            threading.Thread(target=drain, daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return int(srv.getsockname()[1])


def start_origin() -> int:
    """A small keep-alive HTTP/1.1 origin (asyncio, in a thread): 2-byte answers."""
    box: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(REPLY)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, LOOPBACK, 0)
        box.append(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    threading.Thread(target=lambda: asyncio.run(main()), daemon=True).start()
    assert wait_until(lambda: bool(box), 5)
    return box[0]


def push(port: int, size: int) -> float:
    """MB/s of ``size`` bytes sent to ``port`` until the sink said it had them all."""
    conn = socket.create_connection((LOOPBACK, port))
    block = b"x" * (1 << 20)
    started = time.monotonic()
    sent = 0
    while sent < size:
        conn.sendall(block)
        sent += len(block)
    conn.shutdown(socket.SHUT_WR)
    assert conn.recv(10) == b"done"
    conn.close()
    return sent / (time.monotonic() - started) / 1e6


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def wrk(port: int, duration: int, pids: dict[str, int]) -> tuple[float, dict[str, float]]:
    """req/s of wrk against ``port``, and the CPU-µs per request of each process in ``pids``
    (the origin is this process's thread: ``origin``)."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    mine = time.process_time()
    out = subprocess.run(
        ["wrk", "-t1", "-c16", f"-d{duration}s", f"http://{LOOPBACK}:{port}/"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    used = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    used["origin"] = time.process_time() - mine
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    count = re.search(r"(\d+) requests in", out)
    assert found and count and "Non-2xx" not in out, out
    n = max(1, int(count.group(1)))
    return float(found.group(1)), {name: cpu / n * 1e6 for name, cpu in used.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", type=int, default=1000, help="MB per bulk transfer")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument(
        "--quick", action="store_true", help="--size 200 --duration 2, 3 rounds (7 otherwise)"
    )
    parser.add_argument(
        "--no-write", dest="write", action="store_false",
        help="print only (by default the figures also go to docs/benchmarks.md)",
    )  # fmt: skip
    args = parser.parse_args()
    size, duration, rounds = args.size * 1000 * 1000, args.duration, 7
    if args.quick:
        size, duration, rounds = 200 * 1000 * 1000, 2, 3
    base = Path(tempfile.mkdtemp(prefix="revproxy-bench-tunnel-"))
    sink, origin = start_sink(), start_origin()
    http_port, tunnel_port, tcp_port, direct_port = (free_port() for _ in range(4))
    extra = f"""
[[listener]]
name = "bulk"
bind = ["{LOOPBACK}:{tcp_port}"]
mode = "tcp"
pool = "bulk"
[pool.bulk]
servers = [{{ tunnel = "home/bulk" }}]
[[listener]]
name = "direct"
bind = ["{LOOPBACK}:{direct_port}"]
[[route]]
listeners = ["direct"]
pool = "direct"
[pool.direct]
servers = ["{LOOPBACK}:{origin}"]
"""
    cfg = proxy_config(base / "state", http_port, tunnel_port, extra=extra)
    cfg = cfg.replace('[[route]]\npool = "web"', '[[route]]\nlisteners = ["web"]\npool = "web"')
    cfg = cfg.replace("[global]", '[global]\naccess_log = "off"')
    proxy = Proxy(base / "proxy", cfg, ports=(http_port, tunnel_port, tcp_port, direct_port))
    proxy.start()
    agents: list[Agent] = []
    sshd: Sshd | None = None
    ssh: subprocess.Popen[bytes] | None = None
    try:
        agent = Agent(base / "agent", tunnel_port, {"web": (origin, "http"), "bulk": (sink, "tcp")})
        agents.append(agent)
        assert agent.enroll(enroll_token(proxy.conf)).returncode == 0
        agent.start(wait_connections=4)
        idle = Agent(base / "idle", tunnel_port, {"web": (origin, "http")}, connections=50, spare=0)
        agents.append(idle)
        assert idle.enroll(enroll_token(proxy.conf)).returncode == 0
        time.sleep(1.0)
        before = proxy.rss_kib()
        idle.start(wait_connections=50)
        time.sleep(2.0)
        per_conn = (proxy.rss_kib() - before) / 50
        idle.stop()
        tunnel_mbs = max(push(tcp_port, size) for _ in range(2))
        sshd = Sshd(base / "sshd").start()
        rport = free_port()
        ssh = subprocess.Popen(
            ["ssh", "-N", "-i", str(sshd.client_key), "-p", str(sshd.port),
             "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             "-o", "LogLevel=ERROR", "-o", "ExitOnForwardFailure=yes",
             "-R", f"{LOOPBACK}:{rport}:{LOOPBACK}:{sink}", f"root@{LOOPBACK}"],
        )  # fmt: skip

        def forwarding() -> bool:
            try:
                socket.create_connection((LOOPBACK, rport), timeout=1).close()
            except OSError:
                return False
            return True

        assert wait_until(forwarding, 10), "ssh -R did not come up"
        ssh_mbs = max(push(rport, size) for _ in range(2))
        # Interleaved rounds (tunnel and direct in turn, each first every other round): a
        # slow moment of the machine falls on both alike; the ratio is the median of the
        # rounds' own ratios.
        assert agent.proc is not None
        pids = {"proxy": proxy.pid, "agent": agent.proc.pid}
        tunnel_runs: list[float] = []
        direct_runs: list[float] = []
        cpu: dict[str, dict[str, list[float]]] = {"tunnel": {}, "direct": {}}
        for rnd in range(rounds):
            order = [("tunnel", http_port), ("direct", direct_port)]
            for way, port in order if rnd % 2 == 0 else order[::-1]:
                rps, per_request = wrk(port, duration, pids)
                (tunnel_runs if way == "tunnel" else direct_runs).append(rps)
                for name, us in per_request.items():
                    cpu[way].setdefault(name, []).append(us)
    finally:
        if ssh is not None:
            ssh.terminate()
        if sshd is not None:
            sshd.stop()
        for a in agents:
            a.stop()
        proxy.stop()
    bulk_ratio = tunnel_mbs / ssh_mbs
    http_ratio = statistics.median(t / d for t, d in zip(tunnel_runs, direct_runs, strict=True))
    tunnel_rps, direct_rps = statistics.median(tunnel_runs), statistics.median(direct_runs)
    rows = [
        (f"bulk TCP, {size // 1000000} MB through a `mode = \"tcp\"` expose vs `ssh -R`",
         f"{tunnel_mbs:,.0f} MB/s", f"{ssh_mbs:,.0f} MB/s", f"{bulk_ratio:.2f}x", ">= 1.0x",
         bulk_ratio >= 1.0),
        (f"small HTTP requests (wrk -c16) through the tunnel vs the same origin direct "
         f"(median of {rounds} interleaved rounds' ratios)",
         f"{tunnel_rps:,.0f} req/s", f"{direct_rps:,.0f} req/s", f"{http_ratio:.2f}x",
         ">= 0.7x", http_ratio >= 0.7),
        ("memory per idle agent connection on the proxy (50 connections)",
         f"{per_conn:.0f} KiB", "", "", "<= 100 KiB", per_conn <= 100),
    ]  # fmt: skip
    table = (
        "| scenario | revproxy | reference | ratio | goal | met |\n|---|---:|---:|---:|---|---|\n"
        + "".join(
            f"| {name} | {ours} | {ref} | {r} | {goal} | {'yes' if ok else 'no'} |\n"
            for name, ours, ref, r, goal, ok in rows
        )
    )
    table += (
        "\nCPU-µs per small request (medians of the rounds; the origin is a Python asyncio "
        "server in the benchmark's own process):\n\n"
        "| path | proxy | agent | origin |\n|---|---:|---:|---:|\n"
        + "".join(
            f"| {way} | {statistics.median(cpu[way]['proxy']):.1f} | "
            + (f"{statistics.median(cpu[way]['agent']):.1f}" if way == "tunnel" else "-")
            + f" | {statistics.median(cpu[way]['origin']):.1f} |\n"
            for way in ("tunnel", "direct")
        )
    )
    print(table)
    if args.write:
        write_section(
            "tunnel",
            "Reverse tunnel against ssh -R (scripts/bench tunnel)",
            f"{provenance(args.quick)}; the proxy, the agent, sshd and the origins are real "
            "processes on loopback; each bulk figure is the better of two transfers.\n\n" + table,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
