"""The reverse tunnel from a host nothing can reach (issue 16, docs/tunnel.md): the agent and
its origin run in a network namespace of their own whose only link is a veth pair to the
proxy's side, with a route to the proxy's address alone and nftables dropping every new inbound
connection. curl → proxy → tunnel → origin works for HTTP and a WebSocket all the same.

The namespace, its veth pair and the 10.200.N.0/30 addresses on it are made by the test and
removed with the namespace; nothing else on the host is touched. Skipped with the reason when
namespaces cannot be made here.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import LOOPBACK, curl_http, free_port, wait_until
from tunnel_peers import Agent, enroll_token, proxy_config, start_proxy

pytestmark = [pytest.mark.e2e]

COMMAND_TIMEOUT = 20.0

# The origin inside the namespace: HTTP on one loopback port, a WebSocket echo on another.
ORIGIN = r"""
import asyncio, sys
import websockets.asyncio.server as ws_server

async def http(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            body = b"inside the namespace: " + head.split(b" ")[1] + b"\n"
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()

async def echo(ws):
    async for msg in ws:
        await ws.send(msg)

async def main():
    h = await asyncio.start_server(http, "127.0.0.1", 0)
    w = await ws_server.serve(echo, "127.0.0.1", 0)
    print(h.sockets[0].getsockname()[1], w.sockets[0].getsockname()[1], flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""

# No new connection into the namespace from outside: only loopback and replies.
RULESET = """
table inet revproxy_agent_fw {
    chain input {
        type filter hook input priority 0; policy drop;
        iif "lo" accept
        ct state established,related accept
    }
}
"""


@dataclass
class Island:
    name: str
    proxy_ip: str  # the host's end of the veth pair
    agent_ip: str  # the namespace's end

    def exec(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.name)


def run(*cmd: str, input: str | None = None) -> None:
    res = subprocess.run(
        list(cmd), capture_output=True, text=True, timeout=COMMAND_TIMEOUT, input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
    )  # fmt: skip
    assert res.returncode == 0, f"{' '.join(cmd)}: {res.stderr}"


@pytest.fixture
def island() -> Iterator[Island]:
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (iproute2, nftables)")
    tag = secrets.token_hex(3)
    name = f"revproxy-agent-{tag}"
    probe = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True,
                           timeout=COMMAND_TIMEOUT)  # fmt: skip
    if probe.returncode != 0:
        pytest.skip(f"network namespaces cannot be made here: {probe.stderr.strip()}")
    net = 100 + secrets.randbelow(150)
    isl = Island(name, f"10.200.{net}.1", f"10.200.{net}.2")
    host_end, ns_end = f"rpa{tag}h", f"rpa{tag}n"
    try:
        try:
            run("ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end,
                "netns", name)  # fmt: skip
        except AssertionError as exc:
            pytest.skip(f"a veth pair cannot be made here: {exc}")
        run("ip", "addr", "add", f"{isl.proxy_ip}/30", "dev", host_end)
        run("ip", "link", "set", host_end, "up")
        run("ip", "-n", name, "addr", "add", f"{isl.agent_ip}/30", "dev", ns_end)
        run("ip", "-n", name, "link", "set", "lo", "up")
        run("ip", "-n", name, "link", "set", ns_end, "up")
        # The /30 is the namespace's only route: the proxy's address and nothing else.
        run(*isl.exec(), "nft", "-f", "-", input=RULESET)
        yield isl
    finally:
        # Deleting the namespace deletes the veth pair (both ends) and its addresses.
        subprocess.run(["ip", "netns", "del", name], capture_output=True,
                       timeout=COMMAND_TIMEOUT)  # fmt: skip


def test_agent_without_inbound_route(tmp_path: Path, island: Island) -> None:
    origin = subprocess.Popen(
        [*island.exec(), sys.executable, "-c", ORIGIN],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    proxy = agent = None
    try:
        assert origin.stdout is not None
        line = origin.stdout.readline().split()
        assert len(line) == 2, origin.stderr.read() if origin.stderr else ""
        http_origin, ws_origin = int(line[0]), int(line[1])
        # Nothing reaches into the namespace: not even its own veth address from the host.
        with pytest.raises(OSError):
            socket.create_connection((island.agent_ip, http_origin), timeout=1.0).close()
        routes = subprocess.run([*island.exec(), "ip", "route"], capture_output=True,
                                text=True, timeout=COMMAND_TIMEOUT).stdout  # fmt: skip
        assert "default" not in routes, routes

        http_port, tunnel_port = free_port(), free_port()
        extra = """
[[route]]
path = "/ws"
pool = "ws"
[pool.ws]
servers = [{ tunnel = "home/ws" }]
"""
        cfg = proxy_config(tmp_path / "state", http_port, tunnel_port, extra=extra)
        cfg = cfg.replace('[[route]]\npool = "web"\n', "") + '\n[[route]]\npool = "web"\n'
        # The tunnel listener on the host's end of the veth pair: the agent's one way out.
        cfg = cfg.replace(f'"{LOOPBACK}:{tunnel_port}"', f'"{island.proxy_ip}:{tunnel_port}"')
        proxy = start_proxy(tmp_path / "proxy", cfg, http_port)
        agent = Agent(
            tmp_path / "agent",
            tunnel_port,
            {"web": (http_origin, "http"), "ws": (ws_origin, "http")},
            wrapper=island.exec(),
            server_host=island.proxy_ip,
        )
        res = agent.enroll(enroll_token(proxy.conf))
        assert res.returncode == 0, res.stderr
        agent.start(wait_connections=2)

        url = f"http://{LOOPBACK}:{http_port}/hello"
        assert wait_until(lambda: curl_http(url).status == 200, 5), agent.text()
        resp = curl_http(url)
        assert resp.status == 200 and resp.body == b"inside the namespace: /hello\n"

        async def ws_round() -> None:
            import websockets.asyncio.client as ws_client

            async with ws_client.connect(f"ws://{LOOPBACK}:{http_port}/ws") as ws:
                for i in range(10):
                    await ws.send(f"from outside {i}")
                    assert await ws.recv() == f"from outside {i}"

        asyncio.run(asyncio.wait_for(ws_round(), 20))
    finally:
        if agent is not None:
            agent.stop()
        if proxy is not None:
            proxy.stop()
        origin.kill()
        origin.wait(timeout=COMMAND_TIMEOUT)
