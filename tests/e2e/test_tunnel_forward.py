"""Egress over the tunnel (agent.toml ``[[forward]]``, docs/tunnel.md): a local port on the
origin host whose connections leave from the proxy through an ``[egress.NAME]`` section's
rules. A TCP echo server on 127.0.0.7 allowed by the egress is reached through the agent's
port, bytes intact both ways; a destination not listed, one whose resolved address the egress
denies, and an egress the tunnel may not use are refused, and the proxy logs each refusal.
``revproxy tunnel revoke`` ends a forwarded connection already open, as it ends the agent's.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import LOOPBACK, free_port, run_cli, wait_until
from tunnel_peers import Agent, enroll_token, proxy_config, start_proxy

pytestmark = [pytest.mark.e2e]

ECHO_HOST = "127.0.0.7"
IO_TIMEOUT = 10.0


class Echo:
    """A TCP echo server on ``ECHO_HOST``, in a thread of its own."""

    def __init__(self) -> None:
        self.port = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.write_eof()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _main(self) -> None:
        server = await asyncio.start_server(self._echo, ECHO_HOST, 0)
        self.port = server.sockets[0].getsockname()[1]
        while not self._done.is_set():
            await asyncio.sleep(0.05)
        server.close()

    def __enter__(self) -> Echo:
        self._thread.start()
        assert wait_until(lambda: self.port != 0, 5)
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=5)


@pytest.fixture
def echo() -> Iterator[Echo]:
    with Echo() as e:
        yield e


def add_forward(agent: Agent, port: int, egress: str, destination: str) -> None:
    """A ``[[forward]]`` on the agent's loopback ``port``."""
    with agent.conf.open("a") as f:
        f.write(
            f'[[forward]]\nlisten = "{LOOPBACK}:{port}"\negress = "{egress}"\n'
            f'destination = "{destination}"\n'
        )


def round_trip(port: int, data: bytes) -> bytes:
    """Send ``data`` to the agent's local port and read as much back (a forwarded connection
    has no half-close: TLS carries none)."""
    with socket.create_connection((LOOPBACK, port), timeout=IO_TIMEOUT) as s:
        sender = threading.Thread(target=lambda: s.sendall(data))
        sender.start()
        got = bytearray()
        while len(got) < len(data) and (chunk := s.recv(1 << 20)):
            got += chunk
        sender.join(timeout=IO_TIMEOUT)
        return bytes(got)


def refused(port: int) -> bool:
    """The connection is closed without a byte of the destination."""
    with socket.create_connection((LOOPBACK, port), timeout=IO_TIMEOUT) as s:
        try:
            s.sendall(b"hello?\n")
        except OSError:
            return True
        try:
            return s.recv(100) == b""
        except ConnectionResetError:
            return True


def test_forward_through_egress(tmp_path: Path, echo: Echo) -> None:
    http_port, tunnel_port = free_port(), free_port()
    extra = f"""
egress = ["partners"]

[egress.partners]
destinations = ["{ECHO_HOST}", "localhost", "127.0.0.9"]
connect_ports = ["1025-65535"]
deny = ["127.0.0.1/32", "::1/128", "127.0.0.9/32", "metadata"]

[egress.other]
destinations = ["*"]
connect_ports = ["1025-65535"]
deny = []
"""
    # ``egress = [...]`` lands in [tunnel.home]: proxy_config puts ``pools`` right after it.
    cfg = proxy_config(tmp_path / "state", http_port, tunnel_port, pools=extra)
    proxy = start_proxy(tmp_path / "proxy", cfg, http_port, tunnel_port)
    ok, listed, denied, other = (free_port() for _ in range(4))
    agent = Agent(tmp_path / "agent", tunnel_port, {"web": (free_port(), "http")}, spare=0)
    forwards = {
        ok: ("partners", f"{ECHO_HOST}:{echo.port}"),
        listed: ("partners", f"127.0.0.8:{echo.port}"),  # not in destinations
        denied: ("partners", f"localhost:{echo.port}"),  # listed, resolves to a denied address
        other: ("other", f"{ECHO_HOST}:{echo.port}"),  # an egress [tunnel.home] does not name
    }
    for port, (egress, destination) in forwards.items():
        add_forward(agent, port, egress, destination)
    try:
        assert agent.enroll(enroll_token(proxy.conf)).returncode == 0
        agent.start(wait_connections=2)
        assert wait_until(lambda: agent.text().count(": listening") == 4, 5), agent.text()

        assert round_trip(ok, b"ping\n") == b"ping\n"
        data = bytes(range(256)) * 8192  # 2 MiB each way
        back = round_trip(ok, data)
        assert hashlib.sha256(back).hexdigest() == hashlib.sha256(data).hexdigest()
        # Several at once, each on a connection of its own.
        results: list[bytes] = []
        threads = [
            threading.Thread(target=lambda i=i: results.append(round_trip(ok, b"%d" % i * 1000)))
            for i in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert sorted(results) == sorted(b"%d" % i * 1000 for i in range(8))
        log = proxy.stderr()
        assert f"egress=partners destination={ECHO_HOST}:{echo.port} resolved=" in log

        assert refused(listed)
        assert refused(denied)
        assert refused(other)
        assert wait_until(lambda: proxy.stderr().count("refused=") >= 3, 5), proxy.stderr()
        log = proxy.stderr()
        assert f"destination=127.0.0.8:{echo.port} refused=destination" in log, log
        assert f"destination=localhost:{echo.port} refused=deny:" in log, log
        assert "egress=other" in log and "refused=tunnel-not-allowed" in log, log
        assert wait_until(lambda: agent.text().count("the proxy refused") >= 3, 5), agent.text()
    finally:
        agent.stop()
        proxy.stop()


def test_revoke_ends_a_forwarded_connection_already_open(tmp_path: Path, echo: Echo) -> None:
    http_port, tunnel_port = free_port(), free_port()
    extra = f"""
egress = ["partners"]

[egress.partners]
destinations = ["{ECHO_HOST}"]
connect_ports = ["1025-65535"]
"""
    cfg = proxy_config(tmp_path / "state", http_port, tunnel_port, pools=extra)
    proxy = start_proxy(tmp_path / "proxy", cfg, http_port, tunnel_port)
    port = free_port()
    agent = Agent(tmp_path / "agent", tunnel_port, {"web": (free_port(), "http")}, spare=0)
    add_forward(agent, port, "partners", f"{ECHO_HOST}:{echo.port}")
    try:
        assert agent.enroll(enroll_token(proxy.conf)).returncode == 0
        agent.start(wait_connections=2)
        assert wait_until(lambda: ": listening" in agent.text(), 5), agent.text()
        with socket.create_connection((LOOPBACK, port), timeout=IO_TIMEOUT) as s:
            s.sendall(b"before\n")
            assert s.recv(100) == b"before\n"  # the flow is up, and stays open
            res = run_cli("tunnel", "revoke", "home", "-c", str(proxy.conf))
            assert res.returncode == 0, res.stderr
            # Closed within the revocation check (a second) and the relays' ends: the
            # client reads the end (or a reset), and nothing more goes through.
            s.settimeout(5.0)
            with contextlib.suppress(ConnectionResetError):
                assert s.recv(100) == b""
        assert wait_until(lambda: "revoked: forwarded connection closed" in proxy.stderr(), 5), (
            proxy.stderr()
        )
        assert refused(port)  # a new one is refused: the certificate is revoked
    finally:
        agent.stop()
        proxy.stop()
