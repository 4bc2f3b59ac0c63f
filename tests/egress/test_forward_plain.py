"""The forward proxy's plain path (egress/forward.py), in process on loopback sockets: requests
served by callbacks and from what the parsers remembered, and each way off that course — a
response in pieces, a kept connection closed under a request, a destination that does not
answer, a refusal, a password to check — with the counts that show which course was taken.
(tests/e2e/test_egress_plain.py runs the same cases against the real process.)"""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import bcrypt
import pytest

from revproxy.config.load import load_config_text
from revproxy.egress.service import EgressService, build_service
from revproxy.ops.accesslog import AccessLog, AccessRecord
from revproxy.ops.metrics import RequestMetrics
from revproxy.proto.forward_proxy import PlainExchanges, PlainResponse

HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
TIMEOUT = 10.0


class CountingExchanges(PlainExchanges):
    """PlainExchanges that counts the responses it answered from memory."""

    __slots__ = ("hits",)

    def __init__(self, base: PlainExchanges) -> None:
        super().__init__(base._new_server, base._new_client)
        self.hits = 0

    def response(self, head: bytes) -> PlainResponse | None:
        found = super().response(head)
        self.hits += found is not None
        return found


class Records(AccessLog):
    def __init__(self) -> None:
        super().__init__("off")
        self.seen: list[AccessRecord] = []

    def record(self, rec: AccessRecord) -> None:
        self.seen.append(rec)


Answer = Callable[[asyncio.StreamWriter, str, int], Awaitable[bool]]


async def _plain(writer: asyncio.StreamWriter, path: str, n: int) -> bool:
    writer.write(HEAD + b"hello")
    return True


async def _destination(answer: Answer) -> tuple[asyncio.Server, list[bytes]]:
    heads: list[bytes] = []
    counts: dict[str, int] = {}

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                heads.append(head)
                path = head.split(b" ", 2)[1].decode()
                n = counts[path] = counts.get(path, 0) + 1
                if not await answer(writer, path, n):
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, heads


def _service(tmp: Path, auth: bool = False, idle: str = "5m") -> EgressService:
    users = ""
    if auth:
        pw = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
        (tmp / "users").write_text(f"app:{pw}\n")
        users = f'[users.apps]\nfile = "{tmp / "users"}"\n'
    config = load_config_text(
        [
            (
                "10.toml",
                f"""
[global]
access_log = "off"
{users}
[[listener]]
name = "plain"
bind = ["127.0.0.1:3128"]
mode = "forward"
egress = "t"
{'auth = { users = "apps" }' if auth else ""}

[egress.t]
destinations = ["127.0.0.1"]
ports = ["1025-65535"]
deny = []
timeouts = {{ idle = "{idle}" }}
""",
            )
        ]
    )
    svc = build_service(config.listeners[0], config, None, b"k" * 32)
    svc.plain = CountingExchanges(svc.plain)
    return svc


async def _proxy(
    svc: EgressService, records: Records
) -> tuple[socket.socket, list[asyncio.Task[None]]]:
    loop = asyncio.get_running_loop()
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    lsock.setblocking(False)
    tasks: list[asyncio.Task[None]] = []

    async def accept() -> None:
        while True:
            csock, addr = await loop.sock_accept(lsock)
            tasks.append(
                asyncio.create_task(
                    svc.serve(
                        csock,
                        client=addr,
                        peer=addr[0],
                        authority="",
                        vpce="",
                        access_log=records,
                        metrics=RequestMetrics(),
                    )
                )
            )

    tasks.append(asyncio.create_task(accept()))
    return lsock, tasks


def _request(port: int, path: str, extra: bytes = b"") -> bytes:
    return (
        f"GET http://127.0.0.1:{port}{path} HTTP/1.1\r\nHost: x\r\n".encode()
        + b"Via: 1.1 other\r\n"
        + extra
        + b"\r\n"
    )


async def _response(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


def _run(
    tmp: Path,
    answer: Answer,
    client: Callable[[int, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    **kw: object,
) -> tuple[EgressService, Records, list[bytes]]:
    svc = _service(tmp, **kw)  # type: ignore[arg-type]
    records = Records()

    async def main() -> list[bytes]:
        dest, heads = await _destination(answer)
        port = dest.sockets[0].getsockname()[1]
        lsock, tasks = await _proxy(svc, records)
        try:
            reader, writer = await asyncio.open_connection(*lsock.getsockname())
            async with asyncio.timeout(TIMEOUT):
                await client(port, reader, writer)
            writer.close()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            lsock.close()
            dest.close()
            svc.origins.clear()
        return heads

    heads = asyncio.run(main())
    return svc, records, heads


def _hits(svc: EgressService) -> int:
    assert isinstance(svc.plain, CountingExchanges)
    return svc.plain.hits


def test_repeated_requests_from_memory(tmp_path: Path) -> None:
    answers: list[bytes] = []

    async def client(port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(6):
            writer.write(_request(port, "/a"))
            answers.append(await _response(reader))

    svc, records, heads = _run(tmp_path, _plain, client)
    assert (
        len(set(answers)) == 1
        and answers[0] == b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"
    )
    assert len(set(heads)) == 1 and b"via" not in heads[0].lower()
    assert _hits(svc) == 3  # the 1st is a new connection, the 2nd and 3rd teach the memory
    assert [r.status for r in records.seen] == [200] * 6
    assert {r.bytes_out for r in records.seen} == {len(answers[0])}


def test_response_in_pieces_after_memory(tmp_path: Path) -> None:
    async def answer(writer: asyncio.StreamWriter, path: str, n: int) -> bool:
        if n < 4:
            writer.write(HEAD + b"hello")
            return True
        writer.write(HEAD + b"he")  # the remembered head, and part of the body
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"llo")
        return True

    answers: list[bytes] = []

    async def client(port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(6):
            writer.write(_request(port, "/b"))
            answers.append(await _response(reader))

    svc, records, _ = _run(tmp_path, answer, client)
    assert len(set(answers)) == 1 and answers[0].endswith(b"\r\n\r\nhello")
    assert _hits(svc) == 3  # known heads, but never whole: the parsers read them
    assert [r.status for r in records.seen] == [200] * 6


def test_kept_connection_closed_under_a_remembered_request(tmp_path: Path) -> None:
    async def answer(writer: asyncio.StreamWriter, path: str, n: int) -> bool:
        if n == 4:
            return False  # closed without an answer
        writer.write(HEAD + b"hello")
        return True

    async def client(port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(5):
            writer.write(_request(port, "/c"))
            assert (await _response(reader)).endswith(b"hello")

    _, records, heads = _run(tmp_path, answer, client)
    assert len(heads) == 6  # the 4th went twice
    assert [r.status for r in records.seen] == [200] * 5


def test_destination_that_does_not_answer(tmp_path: Path) -> None:
    async def answer(writer: asyncio.StreamWriter, path: str, n: int) -> bool:
        if n == 4:
            await asyncio.sleep(3)
            return False
        writer.write(HEAD + b"hello")
        return True

    async def client(port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(3):
            writer.write(_request(port, "/d"))
            await _response(reader)
        writer.write(_request(port, "/d"))
        assert (await _response(reader)).startswith(b"HTTP/1.1 504 ")
        assert await reader.read() == b""

    _, records, _ = _run(tmp_path, answer, client, idle="0.3s")
    assert [r.status for r in records.seen] == [200, 200, 200, 504]


def test_refusals_and_users_take_the_long_way(tmp_path: Path) -> None:
    token = base64.b64encode(b"app:pw")

    async def client(port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_request(port, "/e"))  # no credentials: 407
        assert (await _response(reader)).startswith(b"HTTP/1.1 407 ")
        for _ in range(4):
            writer.write(_request(port, "/e", b"Proxy-Authorization: Basic " + token + b"\r\n"))
            assert (await _response(reader)).endswith(b"hello")
        writer.write(
            b"GET http://127.0.0.1:80/ HTTP/1.1\r\nHost: x\r\n"
            b"Proxy-Authorization: Basic " + token + b"\r\n\r\n"
        )
        assert (await _response(reader)).startswith(b"HTTP/1.1 403 ")  # port 80 not allowed

    svc, records, heads = _run(tmp_path, _plain, client, auth=True)
    assert [(r.status, r.user, r.refused) for r in records.seen] == [
        (407, "", "auth"),
        *[(200, "app", "")] * 4,
        (403, "app", "port"),
    ]
    assert all(b"proxy-authorization" not in h.lower() for h in heads)
    assert _hits(svc) >= 1


def test_pipelined_and_closing_requests(tmp_path: Path) -> None:
    async def client(port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(3):
            writer.write(_request(port, "/f"))
            await _response(reader)
        writer.write(_request(port, "/f") + _request(port, "/g") + _request(port, "/f"))
        for _ in range(3):
            assert (await _response(reader)).endswith(b"hello")
        writer.write(_request(port, "/f", b"Connection: close\r\n"))
        last = await _response(reader)
        assert b"connection: close" in last.lower()
        assert await reader.read() == b""

    _, records, heads = _run(tmp_path, _plain, client)
    assert [r.path for r in records.seen] == ["/f"] * 4 + ["/g", "/f", "/f"]
    assert len(heads) == 7


@pytest.mark.parametrize("close", [False, True])
def test_client_gone_while_waiting(tmp_path: Path, close: bool) -> None:
    async def answer(writer: asyncio.StreamWriter, path: str, n: int) -> bool:
        if n == 4:
            await asyncio.sleep(0.1)
        writer.write(HEAD + b"hello")
        return True

    async def client(port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(3):
            writer.write(_request(port, "/h"))
            await _response(reader)
        writer.write(_request(port, "/h"))
        if close:
            writer.transport.abort()
            await asyncio.sleep(0.3)
            return
        writer.write_eof()
        assert (await _response(reader)).endswith(b"hello")
        assert await reader.read() == b""

    _, records, _ = _run(tmp_path, answer, client)
    assert [r.status for r in records.seen] == [200] * 4  # the 4th recorded all the same
