"""The reverse-tunnel benchmark (issue 16; docs/tunnel.md): a benchmark, never a test.

  scripts/bench tunnel [--size MB] [--duration S]

Against OpenSSH's ``ssh -R`` on the same machine in the same run: bulk TCP MB/s through a
``mode = "tcp"`` expose and through an ``ssh -R`` forward (goal: >= 1.0x ssh); small HTTP
requests (wrk, 16 connections) through the tunnel and to the same origin directly (goal:
>= 0.7x); the proxy's memory per idle agent connection (goal: <= 100 KiB). Everything runs on
loopback; the proxy, the agent, sshd and the origins are real processes.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
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


def wrk(port: int, duration: int) -> float:
    out = subprocess.run(
        ["wrk", "-t1", "-c16", f"-d{duration}s", f"http://{LOOPBACK}:{port}/"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert found and "Non-2xx" not in out, out
    return float(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", type=int, default=1000, help="MB per bulk transfer")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--quick", action="store_true", help="--size 200 --duration 2")
    parser.add_argument(
        "--no-write", dest="write", action="store_false",
        help="print only (by default the figures also go to docs/benchmarks.md)",
    )  # fmt: skip
    args = parser.parse_args()
    size, duration = args.size * 1000 * 1000, args.duration
    if args.quick:
        size, duration = 200 * 1000 * 1000, 2
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
        tunnel_rps, direct_rps = wrk(http_port, duration), wrk(direct_port, duration)
    finally:
        if ssh is not None:
            ssh.terminate()
        if sshd is not None:
            sshd.stop()
        for a in agents:
            a.stop()
        proxy.stop()
    bulk_ratio, http_ratio = tunnel_mbs / ssh_mbs, tunnel_rps / direct_rps
    rows = [
        (f"bulk TCP, {size // 1000000} MB through a `mode = \"tcp\"` expose vs `ssh -R`",
         f"{tunnel_mbs:,.0f} MB/s", f"{ssh_mbs:,.0f} MB/s", f"{bulk_ratio:.2f}x", ">= 1.0x",
         bulk_ratio >= 1.0),
        ("small HTTP requests (wrk -c16) through the tunnel vs the same origin direct",
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
