"""Kept destination connections: reused by destination only, while alive, bounded, expired."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from revproxy.egress import origins
from revproxy.egress.origins import Origin, OriginPool


class _FakeIO:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.buffered = False
        self.eof = False
        self.closed = False

    def at_eof(self) -> bool:
        return self.eof

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def _origin(loop: asyncio.AbstractEventLoop, key: tuple[str, int]) -> tuple[Origin, _FakeIO]:
    io = _FakeIO(loop)
    return Origin(key, cast(Any, io), "127.0.0.1:80", cast(Any, None)), io


def test_reused_by_destination_while_alive() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        pool = OriginPool(300.0)
        a, _ = _origin(loop, ("a.example", 80))
        b, b_io = _origin(loop, ("a.example", 80))
        pool.give(a)
        pool.give(b)
        assert len(pool) == 2
        assert pool.take(("other.example", 80)) is None
        b_io.eof = True  # the destination closed it meanwhile: closed, not handed out
        assert pool.take(("a.example", 80)) is a
        assert b_io.closed and len(pool) == 0
        assert pool.take(("a.example", 80)) is None

    asyncio.run(main())


def test_bounded_and_expired(monkeypatch: Any) -> None:
    monkeypatch.setattr(origins, "KEEP_PER_DESTINATION", 2)
    monkeypatch.setattr(origins, "KEEP_IDLE", 0.05)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        pool = OriginPool(300.0)
        kept = [_origin(loop, ("a.example", 80)) for _ in range(3)]
        for origin, _ in kept:
            pool.give(origin)
        assert len(pool) == 2 and kept[2][1].closed  # no room: closed
        await asyncio.sleep(0.2)
        assert len(pool) == 0 and all(io.closed for _, io in kept)
        one, io = _origin(loop, ("b.example", 80))
        pool.give(one)
        pool.clear()
        assert io.closed and len(pool) == 0

    asyncio.run(main())
