"""A forward listener's service across reloads (egress/service.py, egress/forward.py), in process
on loopback sockets: what a new generation's service takes over from the one it replaces (the
way out and the kept destination connections, only when the ``[egress.NAME]`` section is the
same), the chain ``latest`` follows, and one client connection whose requests — remembered ones
on the plain path included — are judged by the service that replaced the one it was accepted
under, or refused when its listener is gone or no longer lets the client in."""

from __future__ import annotations

import asyncio
import socket

from revproxy.config.load import load_config_text
from revproxy.config.model import Config
from revproxy.egress.origins import DestinationIO, Origin
from revproxy.egress.service import EgressService, build_service
from revproxy.ops.accesslog import AccessLog, AccessRecord
from revproxy.ops.metrics import RequestMetrics
from revproxy.policy.access import compile_access

TIMEOUT = 10.0


def config(destinations: str, *, allow: str = "") -> Config:
    return load_config_text(
        [
            (
                "10.toml",
                f"""
[global]
access_log = "off"

[[listener]]
name = "fwd"
bind = ["127.0.0.1:3128"]
mode = "forward"
egress = "t"
{f"allow = {allow}" if allow else ""}

[egress.t]
destinations = {destinations}
ports = ["1025-65535"]
deny = []
""",
            )
        ]
    )


def service(cfg: Config, previous: EgressService | None = None) -> EgressService:
    svc = build_service(cfg.listeners[0], cfg, previous, b"k" * 32)
    svc.installed(compile_access(cfg.listeners[0].access), Records())
    return svc


class Records(AccessLog):
    def __init__(self) -> None:
        super().__init__("off")
        self.seen: list[AccessRecord] = []

    def record(self, rec: AccessRecord) -> None:
        self.seen.append(rec)


def test_a_new_service_takes_over_the_way_out_only_for_the_same_section() -> None:
    first = service(config('["127.0.0.1"]'))
    same = service(config('["127.0.0.1"]'), first)
    assert same.outbound is first.outbound and same.origins is first.origins
    other = service(config('["127.0.0.2"]'), same)
    assert other.outbound is not same.outbound and other.origins is not same.origins
    assert other.policy.check_request("127.0.0.1", 8080, tunnel=False) == "destination"


def test_latest_follows_the_retired_services_to_the_current_one() -> None:
    a = service(config('["127.0.0.1"]'))
    assert a.latest() is a
    b = service(config('["127.0.0.2"]'), a)
    c = service(config('["127.0.0.3"]'), b)
    a.retire(b)
    b.retire(c)
    assert a.latest() is c and b.latest() is c
    c.retire(None)  # the listener is gone
    assert a.latest() is None


def test_kept_destination_connections_follow_only_an_unchanged_section() -> None:
    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()

        async def origin(svc: EgressService) -> Origin:
            io = DestinationIO(loop)
            await loop.create_connection(lambda: io, "127.0.0.1", port)
            return Origin(("127.0.0.1", port), io, f"127.0.0.1:{port}", svc.new_h1_client())

        try:
            a = service(config('["127.0.0.1"]'))
            a.keep(await origin(a))
            same = service(config('["127.0.0.1"]'), a)
            a.retire(same)
            assert len(same.origins) == 1  # taken over: judged by the same rules
            late = await origin(a)
            a.keep(late)  # left by a connection still on the old service: shared pool
            assert len(same.origins) == 2
            other = service(config('["127.0.0.1", "127.0.0.2"]'), same)
            same.retire(other)
            assert len(same.origins) == 0 and len(other.origins) == 0  # closed
            stale = await origin(a)
            a.keep(stale)  # opened under other rules: closed, not kept
            await asyncio.sleep(0)
            assert len(other.origins) == 0 and stale.io.is_closing()
        finally:
            server.close()

    asyncio.run(main())


# --- one client connection across reloads --------------------------------------------------


async def destination() -> tuple[asyncio.Server, list[str]]:
    paths: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                paths.append(head.split(b" ", 2)[1].decode())
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, OSError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0), paths


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int, path: str
) -> tuple[int, bytes]:
    writer.write(f"GET http://127.0.0.1:{port}{path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )  # fmt: skip
    return int(head.split(b" ", 2)[1]), head + await reader.readexactly(length)


def run_connection(steps: list[tuple[str, Config | None, int]]) -> list[str]:
    """One client connection: for each step, reload to the config given (None: the listener
    is gone) when there is one, then ``GET path`` and check the status. The paths the
    destination saw."""

    async def main() -> list[str]:
        dest, paths = await destination()
        port = dest.sockets[0].getsockname()[1]
        svc = service(config(f'["127.0.0.1:{port}"]'))
        records = Records()
        csock, ssock = socket.socketpair()
        csock.setblocking(False)
        ssock.setblocking(False)
        task = asyncio.create_task(
            svc.serve(ssock, client=("127.0.0.1", 50000), peer="127.0.0.1", authority="",
                      vpce="", access_log=records, metrics=RequestMetrics())
        )  # fmt: skip
        reader, writer = await asyncio.open_connection(sock=csock)
        current = svc
        try:
            async with asyncio.timeout(TIMEOUT):
                for path, new_config, status in steps:
                    if new_config is not None:
                        fresh = service(new_config, current)
                        current.retire(fresh)
                        current = fresh
                    elif path.startswith("gone:"):
                        current.retire(None)
                        path = path[5:]
                    got, _ = await exchange(reader, writer, port, path)
                    assert got == status, (path, got, [r.refused for r in records.seen])
        finally:
            writer.close()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            dest.close()
        return paths

    return asyncio.run(main())


def test_requests_of_a_kept_connection_follow_the_reloads() -> None:
    def dest_config(allowed: bool, allow: str = "") -> Config:
        return config('["127.0.0.1"]' if allowed else '["127.0.0.9"]', allow=allow)

    paths = run_connection(
        [
            ("/a", None, 200),
            ("/same", None, 200),
            ("/same", None, 200),
            ("/same", None, 200),  # remembered: the plain path answers it from memory
            ("/same", dest_config(False), 403),  # the remembered request, refused now
            ("/b", dest_config(True), 200),  # allowed again, on the same connection
            ("/c", dest_config(True, allow='["10.0.0.0/8"]'), 403),  # client not allowed
        ]
    )
    assert paths == ["/a", "/same", "/same", "/same", "/b"]


def test_a_kept_connection_whose_listener_is_gone_is_refused() -> None:
    paths = run_connection([("/a", None, 200), ("gone:/b", None, 403)])
    assert paths == ["/a"]
