"""The reverse tunnel in operation (issue 16, docs/tunnel.md): ``revproxy ctl show tunnels``
with one process and with workers, gRPC to an h2c origin behind an agent, and one of two agents
SIGKILLed under load with no failed request.
"""

from __future__ import annotations

import asyncio
import http.client
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import pytest
from harness import LOOPBACK, Origin, Proxy, free_port, run_cli, toml_path, wait_until
from tunnel_peers import Agent, enroll_token, proxy_config, start_proxy

pytestmark = [pytest.mark.e2e]

# Bound of every gRPC call (the library's own deadline).
CALL_TIMEOUT = 10.0


def get(url: str, timeout: float = 10.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        return int(exc.code)
    except (OSError, http.client.HTTPException):
        return 0  # no response, or one cut short


def admin(tmp_path: Path) -> str:
    return f"[admin]\nsocket = {toml_path(tmp_path / 'admin.sock')}\n"


def ctl(proxy: Proxy, *words: str) -> str:
    res = run_cli("ctl", "-c", str(proxy.conf), *words)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def table(text: str) -> list[dict[str, str]]:
    """``show tunnels`` → one dict per row, by column (columns are split on 2+ spaces)."""
    import re

    lines = [line for line in text.splitlines() if line.strip()]
    head = re.split(r"\s{2,}", lines[0].strip())
    return [dict(zip(head, re.split(r"\s{2,}", line.strip()), strict=True)) for line in lines[1:]]


@pytest.fixture
def origin() -> Iterator[Origin]:
    with Origin("home-origin") as o:
        yield o


@pytest.mark.parametrize("workers", [1, 2])
def test_ctl_show_tunnels(tmp_path: Path, origin: Origin, workers: int) -> None:
    http_port, tunnel_port = free_port(), free_port()
    proxy = start_proxy(
        tmp_path / "proxy",
        proxy_config(
            tmp_path / "state", http_port, tunnel_port, workers=workers, extra=admin(tmp_path)
        ),
        http_port,
        tunnel_port,
    )
    agent = Agent(tmp_path / "agent", tunnel_port, {"web": (origin.port, "http")}, spare=1)
    try:
        assert "no agent connections" in ctl(proxy, "show", "tunnels")
        assert agent.enroll(enroll_token(proxy.conf)).returncode == 0
        agent.start(wait_connections=3 * workers)
        url = f"http://{LOOPBACK}:{http_port}/"
        assert wait_until(lambda: get(url) == 200, 5)
        for _ in range(10):
            assert get(url) == 200
        # Every process's connections: 2 shared + 1 spare, to each serving process.
        assert wait_until(lambda: len(table(ctl(proxy, "show", "tunnels"))) == 3 * workers, 10)
        rows = table(ctl(proxy, "show", "tunnels"))
        assert {r["TUNNEL"] for r in rows} == {"home"}
        assert len({r["AGENT"] for r in rows}) == 1  # one agent process
        assert all(r["ADDRESS"].startswith(f"{LOOPBACK}:") for r in rows)
        assert all(r["EXPOSES"] == "web" for r in rows)
        assert sorted(r["ROLE"] for r in rows) == sorted(["mux 0", "mux 1", "spare 0"] * workers), (
            rows
        )
        assert all(r["SINCE"].endswith("UTC") for r in rows)
        processes = {r["PROCESS"].split(" pid ")[0] for r in rows}
        assert processes == {f"worker {i}/{workers}" for i in range(workers)}
        assert len({r["PROCESS"].split(" pid ")[1] for r in rows}) == workers
        # The requests went over the shared connections: streams and bytes each way.
        mux = [r for r in rows if r["ROLE"].startswith("mux")]
        assert sum(int(r["TOTAL"]) for r in mux) >= 1
        used = [r for r in mux if r["IN"] != "0B"]
        assert used and all(r["OUT"] != "0B" for r in used), rows
        # A second agent is a second AGENT; killing it takes its rows away.
        second = Agent(tmp_path / "agent2", tunnel_port, {"web": (origin.port, "http")}, spare=0)
        assert second.enroll(enroll_token(proxy.conf)).returncode == 0
        second.start(wait_connections=2 * workers)
        assert wait_until(lambda: len(table(ctl(proxy, "show", "tunnels"))) == 5 * workers, 10)
        assert len({r["AGENT"] for r in table(ctl(proxy, "show", "tunnels"))}) == 2
        second.kill()
        assert wait_until(lambda: len(table(ctl(proxy, "show", "tunnels"))) == 3 * workers, 5)
        assert "show tunnels" in ctl(proxy, "help")
    finally:
        agent.stop()
        proxy.stop()


# --- gRPC through the tunnel ---------------------------------------------------------------------


def _ident(b: bytes) -> bytes:
    return b


def _echo(req: bytes, ctx: object) -> bytes:
    return b"echo:" + req


def _count(req: bytes, ctx: object) -> Iterator[bytes]:
    for i in range(int(req or b"5")):
        yield b"%d" % i


def _shout(it: Iterator[bytes], ctx: object) -> Iterator[bytes]:
    for m in it:
        yield m.upper()


def grpc_server() -> tuple[object, int]:
    import grpc

    handler = grpc.method_handlers_generic_handler(
        "svc",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(_echo, _ident, _ident),
            "Count": grpc.unary_stream_rpc_method_handler(_count, _ident, _ident),
            "Shout": grpc.stream_stream_rpc_method_handler(_shout, _ident, _ident),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(f"{LOOPBACK}:0")
    server.start()
    return server, port


def test_grpc_through_tunnel(tmp_path: Path) -> None:
    import grpc

    server, grpc_port = grpc_server()
    http_port, tunnel_port, h2c_port = free_port(), free_port(), free_port()
    extra = f"""
[[listener]]
name = "grpc"
bind = ["{LOOPBACK}:{h2c_port}"]
h2c = true
[[route]]
listeners = ["grpc"]
pool = "grpc"
[pool.grpc]
servers = [{{ tunnel = "home/grpc" }}]
protocol = "h2c"
"""
    cfg = proxy_config(tmp_path / "state", http_port, tunnel_port, extra=extra)
    # The web route only on the web listener: routes match in order.
    cfg = cfg.replace('[[route]]\npool = "web"\n', '[[route]]\nlisteners = ["web"]\npool = "web"\n')
    proxy = start_proxy(tmp_path / "proxy", cfg, http_port, tunnel_port, h2c_port)
    agent = Agent(tmp_path / "agent", tunnel_port, {"grpc": (grpc_port, "http")})
    try:
        assert agent.enroll(enroll_token(proxy.conf)).returncode == 0
        agent.start(wait_connections=2)
        with grpc.insecure_channel(f"{LOOPBACK}:{h2c_port}") as channel:
            echo = channel.unary_unary("/svc/Echo")
            assert echo(b"hi", timeout=CALL_TIMEOUT) == b"echo:hi"
            count = channel.unary_stream("/svc/Count")
            assert list(count(b"50", timeout=CALL_TIMEOUT)) == [b"%d" % i for i in range(50)]
            shout = channel.stream_stream("/svc/Shout")
            words = [b"a", b"bc", b"def" * 10000]
            assert list(shout(iter(words), timeout=CALL_TIMEOUT)) == [w.upper() for w in words]
            # Many calls at once share the tunnel's streams.
            with futures.ThreadPoolExecutor(max_workers=8) as pool:
                got = list(pool.map(lambda i: echo(b"%d" % i, timeout=CALL_TIMEOUT), range(64)))
            assert got == [b"echo:%d" % i for i in range(64)]
    finally:
        agent.stop()
        proxy.stop()
        server.stop(0)  # type: ignore[attr-defined]


# --- one of two agents SIGKILLed ------------------------------------------------------------------


class WholeOrigin:
    """An HTTP/1.1 keep-alive origin that writes each response in one piece (one read on the
    agent's side): a response is either not started or whole when an agent dies, so every
    failure the test could see is one a retry must cover."""

    def __init__(self) -> None:
        self.port = 0
        self.served = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                self.served += 1
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nwhole\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _main(self) -> None:
        server = await asyncio.start_server(self._serve, LOOPBACK, 0)
        self.port = server.sockets[0].getsockname()[1]
        while not self._done.is_set():
            await asyncio.sleep(0.05)
        server.close()

    def __enter__(self) -> WholeOrigin:
        self._thread.start()
        assert wait_until(lambda: self.port != 0, 5)
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=5)


# Without keep-alive every request opens a tunnel stream of its own: one the dying agent got
# no answer byte for is retried as a reused keep-alive connection would be (dialer.py).
@pytest.mark.parametrize("keepalive", [True, False])
def test_sigkill_one_of_two_agents_no_failure(tmp_path: Path, keepalive: bool) -> None:
    with WholeOrigin() as origin:
        sigkill_one_of_two(tmp_path, origin.port, keepalive)


def sigkill_one_of_two(tmp_path: Path, origin_port: int, keepalive: bool) -> None:
    http_port, tunnel_port = free_port(), free_port()
    # Without keep-alive toward the origin every request opens a new tunnel stream.
    pools = "" if keepalive else "keepalive = 0\n"
    cfg = proxy_config(tmp_path / "state", http_port, tunnel_port)
    cfg = cfg.replace('timeouts = { connect = "2s" }\n', 'timeouts = { connect = "2s" }\n' + pools)
    proxy = start_proxy(tmp_path / "proxy", cfg, http_port, tunnel_port)
    first = Agent(tmp_path / "a1", tunnel_port, {"web": (origin_port, "http")}, spare=0)
    second = Agent(tmp_path / "a2", tunnel_port, {"web": (origin_port, "http")}, spare=0)
    try:
        for agent in (first, second):
            assert agent.enroll(enroll_token(proxy.conf)).returncode == 0
            agent.start(wait_connections=2)
        url = f"http://{LOOPBACK}:{http_port}/"
        assert wait_until(lambda: get(url) == 200, 5)
        statuses: list[int] = []
        stop = threading.Event()

        def load(count: int, pace: float) -> None:
            # Count-bounded: at most ``count`` requests, about one every ``pace`` seconds.
            for _ in range(count):
                if stop.is_set():
                    return
                statuses.append(get(url, timeout=5.0))
                time.sleep(pace)

        loaders = [threading.Thread(target=load, args=(100, 0.01)) for _ in range(4)]
        for t in loaders:
            t.start()
        time.sleep(1.0)
        first.kill()  # SIGKILL: no GOAWAY, its connections just end
        for t in loaders:
            t.join(timeout=60)
        stop.set()
        assert len(statuses) == 400
        failed = [s for s in statuses if s != 200]
        assert not failed, f"{len(failed)} failed: {sorted(set(failed))}\n" + proxy.stderr()[-3000:]
        # The other agent alone: killed too, 503 within a second; back, 200 within 2 s.
        second.kill()
        started = time.monotonic()
        assert wait_until(lambda: get(url) == 503, 1.0)
        assert time.monotonic() - started <= 1.0
        second.start(wait_connections=0)
        started = time.monotonic()
        assert wait_until(lambda: get(url) == 200, 2.0), second.text()
        assert time.monotonic() - started <= 2.0
    finally:
        stop.set()
        first.stop()
        second.stop()
        proxy.stop()
