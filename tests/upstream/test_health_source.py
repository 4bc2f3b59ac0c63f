"""Active health checks leave from the pool's ``source``, as its connections do: ``check_once``
against real loopback servers that record the peer address of each check — one source, several
in turn, a family with no source, a source that is not an address of the host, a refused check
that says which source it left from — and the monitor binding a pool's checks to its source."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from revproxy.config.model import Health as HealthConfig
from revproxy.config.model import Pool as PoolConfig
from revproxy.config.model import Server
from revproxy.upstream.backend import Backend
from revproxy.upstream.dialer import SourceAddresses
from revproxy.upstream.health import HealthMonitor, check_once

CHECK = HealthConfig(path="/healthz", timeout=2.0, interval=0.1)


@contextlib.asynccontextmanager
async def recording_origin() -> AsyncIterator[tuple[int, list[str]]]:
    """An HTTP server on 127.0.0.1 answering 200; yields (port, peer address of each request)."""
    peers: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            peers.append(writer.get_extra_info("peername")[0])
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1], peers
    finally:
        srv.close()
        await srv.wait_closed()


def pool(port: int, source: tuple[str, ...] = ()) -> tuple[PoolConfig, Backend]:
    cfg = PoolConfig(
        name="db",
        servers=(Server(address="127.0.0.1", port=port),),
        health=CHECK,
        source_addresses=source,
    )
    return cfg, Backend("db", "127.0.0.1", port)


def test_a_check_leaves_from_the_source() -> None:
    async def main() -> None:
        async with recording_origin() as (port, peers):
            cfg, backend = pool(port)
            assert await check_once(backend, cfg) == (True, "200")
            source = SourceAddresses(["127.0.0.2"])
            assert await check_once(backend, cfg, source=source) == (True, "200")
        assert peers == ["127.0.0.1", "127.0.0.2"]

    asyncio.run(main())


def test_several_sources_are_used_in_turn() -> None:
    async def main() -> None:
        async with recording_origin() as (port, peers):
            cfg, backend = pool(port)
            source = SourceAddresses(["127.0.0.2", "127.0.0.3"])
            for _ in range(4):
                assert (await check_once(backend, cfg, source=source))[0]
        assert peers == ["127.0.0.2", "127.0.0.3", "127.0.0.2", "127.0.0.3"]

    asyncio.run(main())


def test_a_family_without_a_source_fails_the_check_saying_so() -> None:
    async def main() -> None:
        async with recording_origin() as (port, peers):
            cfg, backend = pool(port)
            ok, detail = await check_once(backend, cfg, source=SourceAddresses(["::1"]))
        assert not ok
        assert detail == (
            f"127.0.0.1:{port} is an IPv4 address and the pool has no IPv4 source "
            "(source = ['::1'])"
        )
        assert peers == []

    asyncio.run(main())


def test_a_source_that_is_not_an_address_of_the_host_fails_the_check_saying_so() -> None:
    async def main() -> None:
        async with recording_origin() as (port, peers):
            cfg, backend = pool(port)
            source = SourceAddresses(["192.0.2.77"])  # TEST-NET-1: no host has it
            ok, detail = await check_once(backend, cfg, source=source)
        assert not ok
        assert detail.startswith(f"cannot leave from source 192.0.2.77 toward 127.0.0.1:{port}: ")
        assert peers == []

    asyncio.run(main())


def test_a_refused_check_names_its_source() -> None:
    async def main() -> None:
        async with recording_origin() as (port, _):
            pass  # closed: nothing listens on the port any more
        cfg, backend = pool(port)
        ok, detail = await check_once(backend, cfg, source=SourceAddresses(["127.0.0.2"]))
        assert (ok, detail) == (False, "connection refused (from 127.0.0.2)")

    asyncio.run(main())


def test_the_monitor_checks_from_the_pool_source_and_follows_a_change() -> None:
    async def main() -> None:
        async with recording_origin() as (port, peers):
            monitor = HealthMonitor()
            cfg, backend = pool(port, ("127.0.0.2",))
            monitor.adopt([(cfg, [backend])])
            try:
                for _ in range(100):
                    if len(peers) >= 2:
                        break
                    await asyncio.sleep(0.05)
                assert set(peers) == {"127.0.0.2"}, peers
                # A reload that changes the source restarts the checks from the new one.
                moved, _ = pool(port, ("127.0.0.3",))
                monitor.adopt([(moved, [backend])])
                seen = len(peers)
                for _ in range(100):
                    if len(peers) >= seen + 3:
                        break
                    await asyncio.sleep(0.05)
                assert set(peers[seen + 1 :]) == {"127.0.0.3"}, peers
            finally:
                monitor.close()

    asyncio.run(main())
