"""Plain HTTP/2 streams (edge/h2_plain.py) against streams served by their tasks, byte for byte.

Each scenario runs twice on loopback — the real ``Http2Connection`` on a real socket, a raw
HTTP/1.1 origin that records every byte it receives and answers from a script, an HTTP/2
client (the h2 library) — once with plain streams and once with ``h2_plain.ENABLED = False``
(every stream by its task, through ``Exchange.run``). Both runs must give the origin the same
bytes, the client the same frames' contents (per stream: response head, data, end or reset),
and write the same access-log records (but for ids and timings) and metrics. Scenarios of
plain requests also require that none reached ``Exchange.run`` / ``Exchange._proxy``: a feature
that lands later and pushes plain streams off the plain path fails here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from revproxy.config.load import load_config_text
from revproxy.edge import h2_plain
from revproxy.edge.client_side import ConnInfo
from revproxy.edge.generation import Generation, build_generation
from revproxy.edge.h2_connection import Http2Connection
from tests.edge.test_fast_exchange import (
    CONFIG,
    RawOrigin,
    Recorder,
    Script,
    always,
    counting_general,
    outcome,
    response,
    same_both_ways,
)

QUIET = 0.3
CLIENT_TIMEOUT = 15.0


@dataclasses.dataclass
class Run:
    origin: list[bytes]
    client: list[dict[int, list[Any]]]
    records: list[dict[str, Any]]
    metrics: dict[str, Any]
    general: int  # streams that reached Exchange.run or Exchange._proxy
    handed: int  # plain streams handed on to the exchange after their request went


class InProcessH2:
    """The real HTTP/2 connection code (h2c, prior knowledge) on a loopback socket."""

    def __init__(self, gen: Generation) -> None:
        self.gen = gen
        self.recorder = Recorder()
        gen.access_log = self.recorder  # type: ignore[assignment]
        self.server: asyncio.AbstractServer | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.conns: list[Http2Connection] = []
        self.port = 0

    async def start(self) -> InProcessH2:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self.tasks.add(task)
            peer = writer.get_extra_info("peername")
            local = writer.get_extra_info("sockname")
            info = ConnInfo(
                peer=peer, client=peer, local=local, destination=local,
                local_port=local[1], tls=False,
            )  # fmt: skip
            conn = Http2Connection(
                reader, writer, generation=self.gen, listener=self.gen.listeners["web"], info=info
            )
            self.conns.append(conn)
            try:
                await conn.run()
            finally:
                self.tasks.discard(task)

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


Client = Callable[[int], Awaitable[dict[int, list[Any]]]]


def req(
    target: str = "/",
    host: str = "app.test",
    method: str = "GET",
    extra: list[tuple[str, str]] | None = None,
    body: bytes | None = None,
) -> tuple[str, list[tuple[str, str]], bytes | None]:
    headers = [(":method", method), (":path", target), (":scheme", "http"), (":authority", host)]
    return ("req", headers + (extra or []), body)


def h2_client(*steps: Any, window: int = 65535) -> Client:
    """An HTTP/2 client: ``req(...)`` opens a stream, a float reads answers that long,
    ``("reset", n)`` resets the n-th stream opened; at the end it reads until quiet. What it
    got, per stream (numbered in the order opened): the response head, the data joined, the
    trailers, the end or the reset's code."""

    async def run(port: int) -> dict[int, list[Any]]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        conn = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        conn.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window}
        )
        conn.initiate_connection()
        got: dict[int, list[Any]] = {}
        numbers: dict[int, int] = {}
        ids: list[int] = []

        def take(ev: Any) -> None:
            sid = getattr(ev, "stream_id", None)
            if sid not in numbers:
                return
            out = got[numbers[sid]]
            if isinstance(ev, h2.events.ResponseReceived | h2.events.InformationalResponseReceived):
                out.append(("head", [(bytes(n), bytes(v)) for n, v in ev.headers]))
            elif isinstance(ev, h2.events.TrailersReceived):
                out.append(("trailers", [(bytes(n), bytes(v)) for n, v in ev.headers]))
            elif isinstance(ev, h2.events.DataReceived):
                if out and out[-1][0] == "data":
                    out[-1] = ("data", out[-1][1] + ev.data)
                else:
                    out.append(("data", ev.data))
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                out.append(("end",))
            elif isinstance(ev, h2.events.StreamReset):
                out.append(("reset", ev.error_code))

        async def read_for(quiet: float) -> None:
            while True:
                writer.write(conn.data_to_send())
                try:
                    data = await asyncio.wait_for(reader.read(1 << 20), quiet)
                except TimeoutError:
                    return
                if not data:
                    return
                for ev in conn.receive_data(data):
                    take(ev)

        try:
            async with asyncio.timeout(CLIENT_TIMEOUT):
                for step in steps:
                    if isinstance(step, float):
                        await read_for(step)
                    elif step[0] == "reset":
                        conn.reset_stream(ids[step[1]], 8)
                    else:
                        _, headers, body = step
                        sid = conn.get_next_available_stream_id()
                        numbers[sid] = len(ids)
                        got[len(ids)] = []
                        ids.append(sid)
                        conn.send_headers(sid, headers, end_stream=body is None)
                        if body is not None:
                            conn.send_data(sid, body, end_stream=True)
                    writer.write(conn.data_to_send())
                await read_for(QUIET)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        return got

    return run


@contextlib.contextmanager
def counting_hands() -> Iterator[list[int]]:
    """Counts the plain streams handed on to the exchange after their request went."""
    count = [0]
    hand = h2_plain.PlainStream._hand

    def counted_hand(self: h2_plain.PlainStream, failure: BaseException | None) -> None:
        count[0] += 1
        hand(self, failure)

    h2_plain.PlainStream._hand = counted_hand  # type: ignore[method-assign]
    try:
        yield count
    finally:
        h2_plain.PlainStream._hand = hand  # type: ignore[method-assign]


async def play(script: Script, clients: list[Client], *, plain: bool, pool_extra: str) -> Run:
    origin = await RawOrigin(script).start()
    config = load_config_text(
        [("10-test.toml", CONFIG.format(port=origin.port, pool_extra=pool_extra))]
    )
    gen = build_generation(config, number=1, default_pem=(b"", b""))
    proxy = await InProcessH2(gen).start()
    h2_plain.ENABLED = plain
    answers = []
    try:
        with counting_general() as general, counting_hands() as handed:
            # A first request opens the pooled connection (dialing is the exchange's).
            await h2_client(req("/warm"))(proxy.port)
            general[0] = handed[0] = 0
            for run in clients:
                answers.append(await run(proxy.port))
                await asyncio.sleep(0.05)  # the proxy records what it just did
    finally:
        h2_plain.ENABLED = True
        await proxy.stop()
        await origin.stop()
    seen, records, metrics = outcome(proxy.port, origin, proxy.recorder.records, gen)
    return Run(
        origin=seen,
        client=answers,
        records=records,
        metrics=metrics,
        general=general[0],
        handed=handed[0],
    )


def differential(
    script: Script, clients: list[Client], *, plain: bool, pool_extra: str = ""
) -> tuple[Run, Run]:
    """Both runs, compared; ``plain``: every stream must be plain."""

    async def both() -> tuple[Run, Run]:
        slow = await play(script, clients, plain=False, pool_extra=pool_extra)
        quick = await play(script, clients, plain=True, pool_extra=pool_extra)
        return slow, quick

    slow, quick = asyncio.run(both())
    same_both_ways(slow, quick, plain)
    return slow, quick


def status_of(got: dict[int, list[Any]], n: int) -> bytes:
    head = got[n][0]
    assert head[0] == "head"
    return dict(head[1])[b":status"]


# --- scenarios ----------------------------------------------------------------------------------


def test_streams_one_after_another_reuse_one_origin_connection() -> None:
    ok = response(200, b"hello\n", [("Content-Type", "text/plain"), ("Server", "origin/1")])
    slow, quick = differential(
        always(ok),
        [h2_client(req("/a"), 0.2, req("/b?x=1"), 0.2, req("/c", extra=[("accept", "*/*")]))],
        plain=True,
    )
    assert len(slow.origin) == 1  # the warm-up's connection, reused
    assert [status_of(quick.client[0], n) for n in range(3)] == [b"200"] * 3
    assert quick.client[0][0][1:] == [("data", b"hello\n"), ("end",)]
    assert [r["status"] for r in quick.records] == [200] * 4


def test_head_204_and_304() -> None:
    def script(conn: int, nth: int, request: Any, body: bytes) -> list[Any]:
        if request.method == b"HEAD":
            return [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"]
        if request.target == b"/none":
            return [response(204)]
        if request.target == b"/same":
            return [response(304, headers=[("ETag", '"x"')])]
        return [response(200, b"x")]

    _, quick = differential(
        script,
        [h2_client(req("/h", method="HEAD"), 0.2, req("/none"), 0.2, req("/same"))],
        plain=True,
    )
    assert [status_of(quick.client[0], n) for n in range(3)] == [b"200", b"204", b"304"]


def test_streams_at_once() -> None:
    """Six streams in one read: which origin connection takes which request, and the order
    they end in, is timing, so requests and records are compared as sets."""
    ok = response(200, b"y" * 100)
    clients = [h2_client(*(req(f"/{i}") for i in range(6)))]

    async def both() -> tuple[Run, Run]:
        slow = await play(always(ok), clients, plain=False, pool_extra="")
        quick = await play(always(ok), clients, plain=True, pool_extra="")
        return slow, quick

    slow, quick = asyncio.run(both())

    def requests(run: Run) -> list[bytes]:
        return sorted(r for conn in run.origin for r in conn.split(b"\r\n\r\n") if r)

    assert requests(quick) == requests(slow)
    assert quick.client == slow.client
    key = json.dumps
    assert sorted(map(key, quick.records)) == sorted(map(key, slow.records))
    assert quick.metrics == slow.metrics
    for run in (slow, quick):
        assert all(run.client[0][n][1:] == [("data", b"y" * 100), ("end",)] for n in range(6))


def test_responses_handed_on() -> None:
    """Answers the plain way hands to the exchange after the request went: a head in pieces,
    a body in pieces, chunked, 103 Early Hints, a body bigger than the stream's window."""

    def script(conn: int, nth: int, request: Any, body: bytes) -> list[Any]:
        target = request.target
        if target == b"/pieces":
            whole = response(200, b"abcdef")
            return [whole[:10], 0.05, whole[10:-3], 0.05, whole[-3:]]
        if target == b"/chunked":
            return [
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
                0.05,
                b"0\r\nx-t: 1\r\n\r\n",
            ]
        if target == b"/hints":
            return [b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n", response(200, b"z")]
        if target == b"/big":
            return [response(200, b"b" * 100_000)]
        return [response(200, b"ok")]

    steps = [req("/pieces"), 0.3, req("/chunked"), 0.3, req("/hints"), 0.3, req("/big"), 0.3]
    _, quick = differential(script, [h2_client(*steps, window=16_384)], plain=False)
    assert quick.handed == 4 and quick.general == 0
    got = quick.client[0]
    assert got[0][1:] == [("data", b"abcdef"), ("end",)]
    assert got[3][1:] == [("data", b"b" * 100_000), ("end",)]


def test_origin_closes_a_pooled_connection_before_answering() -> None:
    """The request goes again on a new connection (GET is idempotent), both ways."""

    def script(conn: int, nth: int, request: Any, body: bytes) -> list[Any]:
        if conn == 1 and nth == 2:
            return [None]
        return [response(200, b"fine")]

    slow, quick = differential(script, [h2_client(req("/again"), 0.2, req("/then"))], plain=False)
    assert quick.handed == 1
    # The new connection carries the next request too: the retry sent the whole request.
    assert len(quick.origin) == len(slow.origin) == 2
    assert status_of(quick.client[0], 0) == b"200"


def test_origin_that_does_not_answer_in_time() -> None:
    def script(conn: int, nth: int, request: Any, body: bytes) -> list[Any]:
        if request.target == b"/slow":
            return [1.5, response(200, b"late")]
        return [response(200, b"ok")]

    _, quick = differential(
        script,
        [h2_client(req("/slow"), 1.0)],
        plain=False,
        pool_extra="timeouts = { response = 0.5 }",
    )
    assert quick.handed == 1
    assert status_of(quick.client[0], 0) == b"504"


@pytest.mark.parametrize(
    "answer",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nab",
    ],
)
def test_origin_errors_after_the_request_went(answer: bytes) -> None:
    def script(conn: int, nth: int, request: Any, body: bytes) -> list[Any]:
        if request.target == b"/bad":
            return [answer, None]
        return [response(200, b"ok")]

    _, quick = differential(script, [h2_client(req("/bad"), 0.3)], plain=False)
    assert quick.handed == 1 and quick.general == 0


def test_streams_the_exchange_serves() -> None:
    """Not plain: a body, gRPC to an HTTP/1.1 pool, a local answer, an unknown host, a
    websocket (extended CONNECT is not enabled: refused)."""
    ok = response(200, b"ok")
    steps = [
        req("/post", method="POST", body=b"payload"),
        0.2,
        req("/g", extra=[("content-type", "application/grpc")]),
        0.2,
        req("/", host="local.test"),
        0.2,
        req("/", host="nobody.test"),
        0.2,
        # A content type first, then what makes a request not plain (HTTP/2 forbids the
        # connection-specific upgrade header; expect is legal).
        req("/e", extra=[("content-type", "text/plain"), ("expect", "100-continue")]),
        0.2,
    ]
    _, quick = differential(always(ok), [h2_client(*steps)], plain=False)
    # Exchange.run and ._proxy both count the POST; _proxy counts the gRPC and the Expect
    # ones (handed on with their pool); local answers reach neither.
    assert quick.general == 4 and quick.handed == 0
    assert status_of(quick.client[0], 0) == b"200"
    assert status_of(quick.client[0], 2) == b"200"


def test_client_resets_a_stream_while_the_origin_answers() -> None:
    def script(conn: int, nth: int, request: Any, body: bytes) -> list[Any]:
        if request.target == b"/slow":
            return [0.5, response(200, b"late")]
        return [response(200, b"ok")]

    _slow, quick = differential(
        script, [h2_client(req("/slow"), 0.1, ("reset", 0), 0.8, req("/next"))], plain=False
    )
    assert [r["status"] for r in quick.records][1:] == [499, 200]
    # The reset stream's origin connection is not reused: the next stream dials (the
    # exchange's).
    assert quick.general == 1 and quick.handed == 0
    assert quick.client[0][1][0][0] == "head"


def test_a_client_gone_while_the_origin_answers() -> None:
    def script(conn: int, nth: int, request: Any, body: bytes) -> list[Any]:
        if request.target == b"/x":
            return [0.4, response(200, b"late")]
        return [response(200, b"ok")]

    async def gone(port: int) -> dict[int, list[Any]]:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.send_headers(1, req("/x")[1], end_stream=True)
        writer.write(conn.data_to_send())
        await asyncio.sleep(0.1)
        writer.close()
        await asyncio.sleep(0.6)
        return {}

    _, quick = differential(script, [gone], plain=False)
    assert [r["status"] for r in quick.records][1:] == [499]
    assert quick.general == 0 and quick.handed == 0


@pytest.mark.parametrize("plain", [True, False])
def test_streams_reset_in_the_read_that_opened_them_are_not_served(plain: bool) -> None:
    """HEADERS and RST_STREAM in one read (a rapid reset): the stream is not served — no
    request reaches the origin, nothing is recorded — and leaves the connection's table (it
    would count against max_concurrent_streams), with or without a body to come."""

    async def main() -> None:
        origin = await RawOrigin(always(response(200, b"ok"))).start()
        config = load_config_text(
            [("10-test.toml", CONFIG.format(port=origin.port, pool_extra=""))]
        )
        gen = build_generation(config, number=1, default_pem=(b"", b""))
        proxy = await InProcessH2(gen).start()
        h2_plain.ENABLED = plain
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            conn.send_headers(1, req("/reset-ended")[1], end_stream=True)
            conn.reset_stream(1, 8)
            conn.send_headers(3, req("/reset-body", method="POST")[1], end_stream=False)
            conn.reset_stream(3, 8)
            conn.send_headers(5, req("/served")[1], end_stream=True)
            writer.write(conn.data_to_send())
            ended = False
            async with asyncio.timeout(CLIENT_TIMEOUT):
                while not ended:
                    data = await reader.read(65536)
                    assert data
                    for ev in conn.receive_data(data):
                        ended = ended or (
                            isinstance(ev, h2.events.StreamEnded) and ev.stream_id == 5
                        )
                    writer.write(conn.data_to_send())
            await asyncio.sleep(0.1)
            (served,) = proxy.conns
            assert served.streams == {}
            assert [r.path for r in proxy.recorder.records] == ["/served"]
            seen = b"".join(bytes(b) for b in origin.received)
            assert b"/served" in seen and b"/reset" not in seen
            writer.close()
        finally:
            h2_plain.ENABLED = True
            await proxy.stop()
            await origin.stop()

    asyncio.run(main())
