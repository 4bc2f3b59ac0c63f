"""The reverse tunnel end to end (issue 16, docs/tunnel.md): enrolment with the real commands,
an agent that dials out and serves a pool through the tunnel, 503 at once when the only agent
is gone and recovery when it returns, ssh to a real sshd through a ``mode = "tcp"`` expose, a
WebSocket and large bodies intact, revocation, wrong and reused tokens, two agents with one
stopped, and workers = 2.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import LOOPBACK, Origin, Proxy, free_port, run_cli, wait_until
from tunnel_peers import Agent, Sshd, enroll_token, poll_statuses, proxy_config, start_proxy

pytestmark = [pytest.mark.e2e]


def get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """(status, body); status 0 when the response was cut (a request in flight when its
    tunnel connection was revoked or its agent killed: a response under way is cut, as with
    any origin that dies mid-response)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (http.client.HTTPException, ConnectionError):
        return 0, b""


@pytest.fixture
def origin() -> Iterator[Origin]:
    with Origin("home-origin") as o:
        yield o


def setup(tmp_path: Path, origin: Origin, workers: int = 1) -> tuple[Proxy, Agent, int, int]:
    http_port, tunnel_port = free_port(), free_port()
    proxy = start_proxy(
        tmp_path / "proxy",
        proxy_config(tmp_path / "state", http_port, tunnel_port, workers=workers),
        http_port,
        tunnel_port,
    )
    agent = Agent(tmp_path / "agent", tunnel_port, {"web": (origin.port, "http")})
    try:
        res = agent.enroll(enroll_token(proxy.conf))
        assert res.returncode == 0, res.stderr
    except BaseException:
        proxy.stop()  # the test's own cleanup is not reached
        raise
    return proxy, agent, http_port, tunnel_port


def test_enrol_serve_503_and_recover(tmp_path: Path, origin: Origin) -> None:
    proxy, agent, http_port, _ = setup(tmp_path, origin)
    try:
        creds = tmp_path / "agent" / "creds"
        assert (creds / "key.pem").stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "state" / "tunnel").stat().st_mode & 0o777 == 0o700
        agent.start(wait_connections=2)
        url = f"http://{LOOPBACK}:{http_port}/hello"
        assert wait_until(lambda: get(url)[0] == 200, 5)
        for _ in range(20):
            status, body = get(url)
            assert status == 200 and b"home-origin" in body
        seen = origin.requests()[-1]
        assert seen.header("x-forwarded-for") == LOOPBACK
        # The only agent dies: 503 within a second.
        agent.kill()
        started = time.monotonic()
        assert wait_until(lambda: get(url)[0] == 503, 1.0)
        assert time.monotonic() - started <= 1.0
        # It comes back: served again within 2 s of its return.
        agent.start(wait_connections=0)
        started = time.monotonic()
        assert wait_until(lambda: get(url)[0] == 200, 2.0), agent.text()
        assert time.monotonic() - started <= 2.0
    finally:
        agent.stop()
        proxy.stop()


def test_wrong_and_reused_tokens(tmp_path: Path, origin: Origin) -> None:
    proxy, _agent, _, tunnel_port = setup(tmp_path, origin)
    try:
        token = enroll_token(proxy.conf)
        first = Agent(tmp_path / "a1", tunnel_port, {"web": (origin.port, "http")})
        assert first.enroll(token).returncode == 0
        again = Agent(tmp_path / "a2", tunnel_port, {"web": (origin.port, "http")})
        res = again.enroll(token)
        assert res.returncode == 1 and "already used" in res.stderr
        bad = token[:-6] + ("AAAAAA" if not token.endswith("AAAAAA") else "BBBBBB")
        res = again.enroll(bad)
        assert res.returncode != 0
        res = run_cli("tunnel", "enroll", "nobody", "-c", str(proxy.conf))
        assert res.returncode == 2 and "no [tunnel.nobody]" in res.stderr
    finally:
        proxy.stop()


def test_revoke_drops_live_connections(tmp_path: Path, origin: Origin) -> None:
    proxy, agent, http_port, _ = setup(tmp_path, origin)
    try:
        agent.start(wait_connections=2)
        url = f"http://{LOOPBACK}:{http_port}/"
        assert wait_until(lambda: get(url)[0] == 200, 5)
        res = run_cli("tunnel", "revoke", "home", "-c", str(proxy.conf))
        assert res.returncode == 0, res.stderr
        assert wait_until(lambda: get(url)[0] == 503, 3)
        time.sleep(1.0)
        assert get(url)[0] == 503  # its reconnects are refused
        assert "revoked" in proxy.stderr()
    finally:
        agent.stop()
        proxy.stop()


def test_big_bodies_and_websocket(tmp_path: Path) -> None:
    import websockets.asyncio.server as ws_server

    size = 200 * 1000 * 1000
    blob = hashlib.sha256()
    done = threading.Event()
    port_box: list[int] = []

    async def echo(ws: ws_server.ServerConnection) -> None:
        async for msg in ws:
            await ws.send(msg)

    async def serve_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if head.startswith(b"POST"):
            length = int(
                next(
                    line.split(b":")[1]
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
            )
            digest = hashlib.sha256()
            left = length
            while left:
                chunk = await reader.read(min(left, 1 << 20))
                digest.update(chunk)
                left -= len(chunk)
            body = digest.hexdigest().encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        else:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
            block = bytes(range(256)) * 4096
            left = size
            while left:
                piece = block[: min(left, len(block))]
                writer.write(piece)
                await writer.drain()
                left -= len(piece)
        await writer.drain()
        writer.close()

    def run_origins() -> None:
        async def main() -> None:
            http = await asyncio.start_server(serve_http, LOOPBACK, 0)
            wss = await ws_server.serve(echo, LOOPBACK, 0)
            port_box.extend([http.sockets[0].getsockname()[1], wss.sockets[0].getsockname()[1]])
            while not done.is_set():
                await asyncio.sleep(0.1)
            http.close()
            wss.close()

        asyncio.run(main())

    thread = threading.Thread(target=run_origins, daemon=True)
    thread.start()
    assert wait_until(lambda: len(port_box) == 2, 5)
    http_origin, ws_origin = port_box
    http_port, tunnel_port = free_port(), free_port()
    extra = """
[[route]]
path = "/ws"
pool = "ws"
[pool.ws]
servers = [{ tunnel = "home/ws" }]
"""
    cfg = proxy_config(tmp_path / "state", http_port, tunnel_port, extra=extra)
    # The /ws route first: routes match in order.
    cfg = cfg.replace('[[route]]\npool = "web"\n', "") + '\n[[route]]\npool = "web"\n'
    proxy = start_proxy(tmp_path / "proxy", cfg, http_port, tunnel_port)
    agent = Agent(
        tmp_path / "agent", tunnel_port, {"web": (http_origin, "http"), "ws": (ws_origin, "http")}
    )
    try:
        assert agent.enroll(enroll_token(proxy.conf)).returncode == 0
        agent.start(wait_connections=2)
        block = bytes(range(256)) * 4096
        expected = hashlib.sha256()
        left = size
        while left:
            piece = block[: min(left, len(block))]
            expected.update(piece)
            left -= len(piece)
        started = time.monotonic()
        with urllib.request.urlopen(f"http://{LOOPBACK}:{http_port}/big", timeout=120) as resp:
            while chunk := resp.read(1 << 20):
                blob.update(chunk)
        down = time.monotonic() - started
        assert blob.hexdigest() == expected.hexdigest()

        def body() -> Iterator[bytes]:
            left = size
            while left:
                piece = block[: min(left, len(block))]
                left -= len(piece)
                yield piece

        req = urllib.request.Request(
            f"http://{LOOPBACK}:{http_port}/up",
            data=body(),
            method="POST",
            headers={"content-length": str(size)},
        )
        started = time.monotonic()
        with urllib.request.urlopen(req, timeout=120) as resp:
            assert resp.read().decode() == expected.hexdigest()
        up = time.monotonic() - started
        rates = f"down {size / down / 1e6:.0f} MB/s, up {size / up / 1e6:.0f} MB/s"
        print(f"200 MB through the tunnel: {rates}")

        async def ws_round() -> None:
            import websockets.asyncio.client as ws_client

            async with ws_client.connect(f"ws://{LOOPBACK}:{http_port}/ws") as ws:
                for i in range(20):
                    await ws.send(f"ping {i}")
                    assert await ws.recv() == f"ping {i}"
                big = b"x" * (1 << 20)
                await ws.send(big)
                assert await ws.recv() == big

        asyncio.run(ws_round())
    finally:
        done.set()
        agent.stop()
        proxy.stop()


def test_ssh_through_tcp_expose(tmp_path: Path) -> None:
    sshd = Sshd(tmp_path / "sshd").start()
    http_port, tunnel_port, ssh_port = free_port(), free_port(), free_port()
    extra = f"""
[[listener]]
name = "ssh"
bind = ["{LOOPBACK}:{ssh_port}"]
mode = "tcp"
pool = "home-ssh"
[pool.home-ssh]
servers = [{{ tunnel = "home/ssh" }}]
"""
    proxy = start_proxy(
        tmp_path / "proxy",
        proxy_config(tmp_path / "state", http_port, tunnel_port, extra=extra),
        http_port,
        tunnel_port,
        ssh_port,
    )
    agent = Agent(tmp_path / "agent", tunnel_port, {"ssh": (sshd.port, "tcp")})
    try:
        assert agent.enroll(enroll_token(proxy.conf)).returncode == 0
        agent.start(wait_connections=4)
        assert sshd.ssh(ssh_port, "echo tunnel-ok").strip() == b"tunnel-ok"
        data = bytes(range(256)) * 40000  # 10 MB through ssh, both ways
        out = sshd.ssh(ssh_port, "sha256sum", stdin=data)
        assert out.split()[0].decode() == hashlib.sha256(data).hexdigest()
        # Each flow took a spare connection of its own; the agent opened new ones.
        assert wait_until(lambda: agent.connected() >= 6, 5), agent.text() + proxy.stderr()
    finally:
        agent.stop()
        proxy.stop()
        sshd.stop()


def test_two_agents_one_stopped_no_failure(tmp_path: Path, origin: Origin) -> None:
    proxy, agent, http_port, tunnel_port = setup(tmp_path, origin)
    second = Agent(tmp_path / "agent2", tunnel_port, {"web": (origin.port, "http")})
    try:
        assert second.enroll(enroll_token(proxy.conf)).returncode == 0
        agent.start(wait_connections=2)
        second.start(wait_connections=2)
        url = f"http://{LOOPBACK}:{http_port}/"
        assert wait_until(lambda: get(url)[0] == 200, 5)
        statuses: list[int] = []
        poller = threading.Thread(target=lambda: statuses.extend(poll_statuses(url, 3.0)))
        poller.start()
        time.sleep(1.0)
        agent.stop()  # SIGTERM: GOAWAY, streams in flight finish
        poller.join()
        assert statuses and all(s == 200 for s in statuses), statuses
    finally:
        agent.stop()
        second.stop()
        proxy.stop()


def test_workers_two(tmp_path: Path, origin: Origin) -> None:
    proxy, agent, http_port, _ = setup(tmp_path, origin, workers=2)
    try:
        # Two shared connections to each of the two workers (the hello names the worker).
        agent.start(wait_connections=2)
        assert wait_until(lambda: "worker 1/2, mux 1" in agent.text(), 10), agent.text()
        assert wait_until(lambda: "worker 0/2, mux 1" in agent.text(), 10), agent.text()
        url = f"http://{LOOPBACK}:{http_port}/"
        statuses = [get(url)[0] for _ in range(40)]  # new connections land on either worker
        assert all(s == 200 for s in statuses), statuses
    finally:
        agent.stop()
        proxy.stop()
