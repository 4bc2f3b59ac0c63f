"""The reverse-tunnel benchmark (issue 16; docs/tunnel.md): a benchmark, never a test.

  scripts/bench tunnel [--size MB] [--duration S]

Against OpenSSH's ``ssh -R`` on the same machine in the same run: bulk TCP MB/s through a
``mode = "tcp"`` expose and through an ``ssh -R`` forward (goal: >= 1.0x ssh); small HTTP
requests through the tunnel and to the same origin directly — the main benchmark's scenario
(wrk -t1 -c50, pools keeping 256 idle connections), and again with 16 clients — in
interleaved rounds whose ratios give the median, with the CPU each process spent per request
(goal: >= 0.7x); the same small requests, in the same rounds, through what an operator would do
without the agent: clients at sshd's ``ssh -R`` forwarded port (the seed's ``ssh -g -R``),
and revproxy in front of that forward; the proxy's memory per idle agent connection (goal:
<= 100 KiB). Everything runs on loopback; the proxy, the agent, sshd, ssh and the origins are
real processes.
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
# Clients of the small-request runs: the main benchmark's (scripts/benchlib.py, wrk -c50).
CLIENTS = 50
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


def site(name: str, port: int, server: int) -> str:
    """A listener of its own whose requests all go to ``server`` (a pool keeping 256 idle
    connections, as the main benchmark's)."""
    return f"""
[[listener]]
name = "{name}"
bind = ["{LOOPBACK}:{port}"]
[[route]]
listeners = ["{name}"]
pool = "{name}"
[pool.{name}]
servers = ["{LOOPBACK}:{server}"]
keepalive = 256
"""


def descendants(pid: int) -> list[int]:
    """The processes below ``pid``, parents before children."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += [int(child), *descendants(int(child))]
    return found


def wrk(
    port: int, clients: int, duration: int, pids: dict[str, int]
) -> tuple[float, dict[str, float]]:
    """req/s of wrk with ``clients`` connections against ``port``, and the CPU-µs per request
    of each process in ``pids`` (the origin is this process's thread: ``origin``)."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    mine = time.process_time()
    out = subprocess.run(
        ["wrk", "-t1", f"-c{clients}", f"-d{duration}s", f"http://{LOOPBACK}:{port}/"],
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
    http_port, tunnel_port, tcp_port, direct_port, viassh_port = (free_port() for _ in range(5))
    # ssh -R forwards, on sshd's side: the sink (bulk) and the origin (small requests).
    ssh_sink, ssh_origin = free_port(), free_port()
    extra = (
        f"""
[[listener]]
name = "bulk"
bind = ["{LOOPBACK}:{tcp_port}"]
mode = "tcp"
pool = "bulk"
[pool.bulk]
servers = [{{ tunnel = "home/bulk" }}]
"""
        + site("direct", direct_port, origin)
        + site("viassh", viassh_port, ssh_origin)
    )
    cfg = proxy_config(base / "state", http_port, tunnel_port, extra=extra)
    cfg = cfg.replace('[[route]]\npool = "web"', '[[route]]\nlisteners = ["web"]\npool = "web"')
    cfg = cfg.replace("[global]", '[global]\naccess_log = "off"')
    cfg = cfg.replace("[pool.web]\n", "[pool.web]\nkeepalive = 256\n")
    ports = (http_port, tunnel_port, tcp_port, direct_port, viassh_port)
    proxy = Proxy(base / "proxy", cfg, ports=ports)
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
        ssh = subprocess.Popen(
            ["ssh", "-N", "-i", str(sshd.client_key), "-p", str(sshd.port),
             "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             "-o", "LogLevel=ERROR", "-o", "ExitOnForwardFailure=yes",
             "-R", f"{LOOPBACK}:{ssh_sink}:{LOOPBACK}:{sink}",
             "-R", f"{LOOPBACK}:{ssh_origin}:{LOOPBACK}:{origin}", f"root@{LOOPBACK}"],
        )  # fmt: skip

        def forwarding() -> bool:
            try:
                for port in (ssh_sink, ssh_origin):
                    socket.create_connection((LOOPBACK, port), timeout=1).close()
            except OSError:
                return False
            return True

        assert wait_until(forwarding, 10), "ssh -R did not come up"
        ssh_mbs = max(push(ssh_sink, size) for _ in range(2))
        # Interleaved rounds (every way in turn, the order reversed every other round): a
        # slow moment of the machine falls on all alike; each ratio is the median of the
        # rounds' own ratios.
        assert agent.proc is not None
        assert sshd.proc is not None
        # sshd's process for the session is the last one it forked (privilege separation).
        session = descendants(sshd.proc.pid)[-1]
        pids = {"proxy": proxy.pid, "agent": agent.proc.pid, "ssh": ssh.pid, "sshd": session}
        # The main benchmark's small-request scenario (wrk -t1 -c50, pools keeping 256 idle
        # connections), and tunnel and direct again with 16 clients (fewer requests in
        # flight: each hand-off between the processes shows more).
        ways = {"tunnel": (http_port, CLIENTS), "direct": (direct_port, CLIENTS),
                "ssh": (ssh_origin, CLIENTS), "viassh": (viassh_port, CLIENTS),
                "tunnel16": (http_port, 16), "direct16": (direct_port, 16)}  # fmt: skip
        runs: dict[str, list[float]] = {way: [] for way in ways}
        cpu: dict[str, dict[str, list[float]]] = {way: {} for way in ways}
        for rnd in range(rounds):
            order = list(ways.items())
            for way, (port, clients) in order if rnd % 2 == 0 else order[::-1]:
                per_second, per_request = wrk(port, clients, duration, pids)
                runs[way].append(per_second)
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

    def ratio(way: str, reference: str) -> float:
        pairs = zip(runs[way], runs[reference], strict=True)
        return statistics.median(t / r for t, r in pairs)

    def rps(way: str) -> str:
        return f"{statistics.median(runs[way]):,.0f} req/s"

    def proxy_us(way: str) -> float:
        return statistics.median(cpu[way]["proxy"])

    http_ratio = ratio("tunnel", "direct")
    rows = [
        (f"bulk TCP, {size // 1000000} MB through a `mode = \"tcp\"` expose vs `ssh -R`",
         f"{tunnel_mbs:,.0f} MB/s", f"{ssh_mbs:,.0f} MB/s", f"{bulk_ratio:.2f}x", ">= 1.0x",
         bulk_ratio >= 1.0),
        (f"small HTTP requests (wrk -t1 -c{CLIENTS}) through the tunnel vs the same origin "
         f"direct (median of {rounds} interleaved rounds' ratios)",
         rps("tunnel"), rps("direct"), f"{http_ratio:.2f}x", ">= 0.7x", http_ratio >= 0.7),
        ("the same with 16 clients",
         rps("tunnel16"), rps("direct16"), f"{ratio('tunnel16', 'direct16'):.2f}x", "", None),
        ("the same requests through the tunnel vs clients at sshd's `ssh -R` forwarded port "
         "(`ssh -g -R`, no proxy)",
         rps("tunnel"), rps("ssh"), f"{ratio('tunnel', 'ssh'):.2f}x", "", None),
        ("the same requests through revproxy in front of that `ssh -R` forward vs direct",
         rps("viassh"), rps("direct"), f"{ratio('viassh', 'direct'):.2f}x", "", None),
        ("the proxy's own CPU per request, direct vs through the tunnel (derived: the bound "
         "on the ratio when the agent and the origin have a host of their own)",
         f"{proxy_us('tunnel'):.1f} µs", f"{proxy_us('direct'):.1f} µs",
         f"{proxy_us('direct') / proxy_us('tunnel'):.2f}x", "", None),
        ("memory per idle agent connection on the proxy (50 connections)",
         f"{per_conn:.0f} KiB", "", "", "<= 100 KiB", per_conn <= 100),
    ]  # fmt: skip

    def met(ok: bool | None) -> str:
        return "" if ok is None else "yes" if ok else "no"

    table = (
        "| scenario | revproxy | reference | ratio | goal | met |\n|---|---:|---:|---:|---|---|\n"
        + "".join(
            f"| {name} | {ours} | {ref} | {r} | {goal} | {met(ok)} |\n"
            for name, ours, ref, r, goal, ok in rows
        )
    )
    table += (
        f"\nCPU-µs per small request ({CLIENTS} clients unless said; medians of the rounds; "
        "the origin is a Python asyncio server in the benchmark's own process):\n\n"
        "| path | proxy | agent | sshd | ssh | origin |\n|---|---:|---:|---:|---:|---:|\n"
        + "".join(
            f"| {label} | "
            + " | ".join(
                f"{statistics.median(cpu[way][name]):.1f}" if name in used else "-"
                for name in ("proxy", "agent", "sshd", "ssh", "origin")
            )
            + " |\n"
            for way, label, used in (
                ("tunnel", "through the tunnel", ("proxy", "agent", "origin")),
                ("direct", "direct", ("proxy", "origin")),
                ("tunnel16", "through the tunnel, 16 clients", ("proxy", "agent", "origin")),
                ("direct16", "direct, 16 clients", ("proxy", "origin")),
                ("ssh", "`ssh -R` alone", ("sshd", "ssh", "origin")),
                ("viassh", "revproxy in front of `ssh -R`", ("proxy", "sshd", "ssh", "origin")),
            )
        )
    )
    print(table)
    if args.write:
        write_section(
            "tunnel",
            "Reverse tunnel against ssh -R (scripts/bench tunnel)",
            f"{provenance(args.quick)}; the proxy, the agent, sshd, ssh and the origins are real "
            "processes on loopback; each bulk figure is the better of two transfers.\n\n" + table,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
