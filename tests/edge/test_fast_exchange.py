"""The plain exchange (edge/fast_exchange.py) against the general one, byte for byte.

Each scenario runs twice on loopback — the real ``HttpConnection`` on a real socket, a raw
origin that records every byte it receives and answers from a script, a raw client — once
with the plain path and once with ``fast_exchange.ENABLED = False`` (every request through
``Exchange``). Both runs must give the origin the same bytes on the same connections, the
client the same bytes, and the same access-log records (but for ids and timings) and
metrics. Scenarios of plain requests also require that no request reached the general
exchange (``Exchange.run`` / ``Exchange._proxy``): a feature that lands later and pushes plain
requests off the plain path fails here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import h11
import pytest

from revproxy.config.load import load_config_text
from revproxy.edge import fast_exchange
from revproxy.edge.client_side import ConnInfo
from revproxy.edge.exchange import Exchange
from revproxy.edge.generation import Generation, build_generation
from revproxy.edge.h1_connection import HttpConnection
from revproxy.net import conn_io
from revproxy.net.conn_io import ConnIO
from revproxy.ops.accesslog import AccessRecord

# How long a client waits for more bytes before it takes the answer as whole.
QUIET = 0.25
# Bound of one client's whole exchange.
CLIENT_TIMEOUT = 15.0

CONFIG = """
[global]
access_log = "off"

[[listener]]
name = "web"
bind = "127.0.0.1:1"

[[route]]
host = ["local.test"]
respond = {{ status = 200, body = "local" }}
[[route]]
host = ["app.test"]
pool = "app"

[pool.app]
servers = ["127.0.0.1:{port}"]
keepalive = 8
{pool_extra}
"""

# --- the origin -------------------------------------------------------------------------------

Script = Callable[[int, int, h11.Request, bytes], list[Any]]


class RawOrigin:
    """An origin that records the raw bytes of each connection and answers each request with
    what ``script(conn, nth, request, body)`` returns: bytes to send, floats to sleep, or
    ``None`` to close the connection there."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.received: list[bytearray] = []
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> RawOrigin:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.writers.add(writer)
        raw = bytearray()
        self.received.append(raw)
        number = len(self.received)
        conn = h11.Connection(h11.SERVER)
        nth = 0
        try:
            while True:
                request: h11.Request | None = None
                body = b""
                while True:
                    ev = conn.next_event()
                    if ev is h11.NEED_DATA:
                        data = await reader.read(65536)
                        raw += data
                        conn.receive_data(data)
                        if not data and conn.their_state is h11.IDLE:
                            return
                    elif isinstance(ev, h11.Request):
                        request = ev
                    elif isinstance(ev, h11.Data):
                        body += ev.data
                    elif isinstance(ev, h11.EndOfMessage):
                        break
                    else:
                        return
                assert request is not None
                nth += 1
                for step in self.script(number, nth, request, body):
                    if step is None:
                        return
                    if isinstance(step, float):
                        await asyncio.sleep(step)
                    else:
                        writer.write(step)
                        await writer.drain()
                # The script's bytes are whole responses: h11 is told of them only to go on.
                conn = _next_cycle(conn)
        except (ConnectionError, h11.ProtocolError):
            return
        finally:
            writer.close()
            self.tasks.discard(task)
            self.writers.discard(writer)


def _next_cycle(conn: h11.Connection) -> h11.Connection:
    """A fresh h11 server state holding the bytes already received past the request."""
    fresh = h11.Connection(h11.SERVER)
    leftover, _closed = conn.trailing_data
    if leftover:
        fresh.receive_data(leftover)
    return fresh


def response(
    status: int = 200, body: bytes = b"", headers: list[tuple[str, str]] | None = None
) -> bytes:
    lines = [f"HTTP/1.1 {status} X"]
    lines += [f"{n}: {v}" for n, v in (headers or [])]
    framed = any(n.lower() in ("content-length", "transfer-encoding") for n, _ in headers or [])
    if not framed and status not in (204, 304):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def get(target: str = "/", host: str = "app.test", extra: str = "") -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


# --- the proxy --------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.records: list[AccessRecord] = []

    def record(self, rec: AccessRecord) -> None:
        self.records.append(rec)


@dataclasses.dataclass
class Run:
    """What one run of a scenario produced."""

    origin: list[bytes]
    client: list[bytes]
    records: list[dict[str, Any]]
    metrics: dict[str, Any]
    general: int  # requests that reached Exchange.run or Exchange._proxy


class InProcessProxy:
    """The real HTTP/1.1 connection code on a loopback socket, a generation built from
    ``CONFIG``."""

    def __init__(self, gen: Generation) -> None:
        self.gen = gen
        self.recorder = Recorder()
        gen.access_log = self.recorder  # type: ignore[assignment]
        self.server: asyncio.AbstractServer | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> InProcessProxy:
        loop = asyncio.get_running_loop()
        proxy = self

        class Accepted(ConnIO):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                super().connection_made(transport)
                sock = transport.get_extra_info("socket")
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                peer = transport.get_extra_info("peername")
                local = transport.get_extra_info("sockname")
                info = ConnInfo(
                    peer=peer,
                    client=peer,
                    local=local,
                    destination=local,
                    local_port=local[1],
                    tls=False,
                )
                lrt = proxy.gen.listeners["web"]
                conn = HttpConnection(self, generation=proxy.gen, listener=lrt, info=info)
                task = loop.create_task(conn.run())
                proxy.tasks.add(task)
                task.add_done_callback(proxy.tasks.discard)

        self.server = await loop.create_server(lambda: Accepted(loop), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


Client = Callable[[int], Awaitable[bytes]]


async def read_quiet(reader: asyncio.StreamReader, quiet: float = QUIET) -> bytes:
    """Bytes until the peer closes or sends nothing for ``quiet`` seconds."""
    out = bytearray()
    while True:
        try:
            data = await asyncio.wait_for(reader.read(1 << 20), quiet)
        except TimeoutError:
            return bytes(out)
        if not data:
            return bytes(out)
        out += data


def client(*steps: bytes | float, close: bool = True) -> Client:
    """A raw client: bytes are sent, a float waits that long for answers (and keeps them);
    at the end it reads until the proxy is quiet or closes."""

    async def run(port: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        out = bytearray()
        try:
            async with asyncio.timeout(CLIENT_TIMEOUT):
                for step in steps:
                    if isinstance(step, float):
                        out += await read_quiet(reader, step)
                    else:
                        writer.write(step)
                        await writer.drain()
                out += await read_quiet(reader)
        finally:
            if close:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        return bytes(out)

    return run


def normalised(rec: AccessRecord) -> dict[str, Any]:
    fields = dataclasses.asdict(rec)
    for name in ("id", "duration_ms", "upstream_ms", "time", "request", "conn"):
        fields.pop(name)
    return fields


def counters(gen: Generation) -> dict[str, Any]:
    """The metrics, histograms reduced to their counts (their sums are timings)."""
    out: dict[str, Any] = {}
    for name, data in gen.metrics.registry.snapshot().items():
        values = data["values"]
        if data["kind"] == "histogram":
            values = [[labels, sum(row[:-1])] for labels, row in values]
        out[name] = sorted(values)
    return out


@contextlib.contextmanager
def counting_general() -> Iterator[list[int]]:
    """Counts the requests that reach the general exchange."""
    count = [0]
    run, proxy = Exchange.run, Exchange._proxy

    async def counted_run(self: Exchange, req: Any) -> bool:
        count[0] += 1
        return await run(self, req)

    async def counted_proxy(self: Exchange, pr: Any) -> bool:
        count[0] += 1
        return await proxy(self, pr)

    Exchange.run = counted_run  # type: ignore[method-assign]
    Exchange._proxy = counted_proxy  # type: ignore[method-assign]
    try:
        yield count
    finally:
        Exchange.run = run  # type: ignore[method-assign]
        Exchange._proxy = proxy  # type: ignore[method-assign]


async def play(
    script: Script,
    clients: list[Client],
    *,
    fast: bool,
    pool_extra: str = "",
    during: Callable[[], None] | None = None,
) -> Run:
    origin = await RawOrigin(script).start()
    config = load_config_text(
        [("10-test.toml", CONFIG.format(port=origin.port, pool_extra=pool_extra))]
    )
    gen = build_generation(config, number=1, default_pem=(b"", b""))
    proxy = await InProcessProxy(gen).start()
    fast_exchange.ENABLED = fast
    answers = []
    try:
        with counting_general() as general:
            # A first request opens the pooled connection (dialing is the general
            # exchange's); what comes after is what is compared.
            await client(get("/warm"))(proxy.port)
            general[0] = 0
            for run in clients:
                answers.append(await run(proxy.port))
                await asyncio.sleep(0.05)  # the proxy records what it just did
    finally:
        fast_exchange.ENABLED = True
        await proxy.stop()
        await origin.stop()
    seen, records, metrics = outcome(proxy.port, origin, proxy.recorder.records, gen)
    return Run(origin=seen, client=answers, records=records, metrics=metrics, general=general[0])


def outcome(
    proxy_port: int, origin: RawOrigin, records: list[AccessRecord], gen: Generation
) -> tuple[list[bytes], list[dict[str, Any]], dict[str, Any]]:
    """What the origin received, the records and the metrics of a run, with what differs
    from run to run taken out: ids, timings, the proxy's port (X-Forwarded-Port) and the
    origin's (backend)."""
    port = b"%d" % proxy_port
    backend = str(origin.port)
    rows = [normalised(r) for r in records]
    for rec in rows:
        rec["backend"] = rec["backend"].replace(backend, "ORIGIN")
    metrics = json.loads(json.dumps(counters(gen)).replace(backend, "ORIGIN"))
    return [bytes(b).replace(port, b"PORT") for b in origin.received], rows, metrics


def differential(
    script: Script,
    clients: list[Client],
    *,
    plain: bool,
    pool_extra: str = "",
) -> tuple[Run, Run]:
    """Both runs, compared; ``plain``: every request must take the plain path."""

    async def both() -> tuple[Run, Run]:
        slow = await play(script, clients, fast=False, pool_extra=pool_extra)
        quick = await play(script, clients, fast=True, pool_extra=pool_extra)
        return slow, quick

    slow, quick = asyncio.run(both())
    same_both_ways(slow, quick, plain)
    return slow, quick


def same_both_ways(slow: Any, quick: Any, plain: bool) -> None:
    """The two runs of a differential (HTTP/1.1 here, HTTP/2 in test_h2_plain.py) gave the
    origin, the client, the log and the metrics the same; ``plain``: none of the quick run's
    requests reached the general exchange."""
    assert quick.origin == slow.origin
    assert quick.client == slow.client
    assert quick.records == slow.records
    assert quick.metrics == slow.metrics
    if plain:
        assert quick.general == 0, "a plain request reached the general exchange"


def always(*steps: Any) -> Script:
    return lambda conn, nth, req, body: list(steps)


# --- scenarios --------------------------------------------------------------------------------


def test_keep_alive_requests_reuse_one_origin_connection() -> None:
    ok = response(200, b"hello\n", [("Content-Type", "text/plain"), ("Server", "origin/1")])
    slow, _ = differential(
        always(ok), [client(get("/a"), 0.3, get("/b"), 0.3, get("/c?x=1"))], plain=True
    )
    assert len(slow.origin) == 1 and slow.client[0].count(b"HTTP/1.1 200") == 3
    assert b"server:" not in slow.client[0].lower()  # the origin's name is hidden


def test_pipelined_requests() -> None:
    ok = response(200, b"pipelined")
    slow, _ = differential(always(ok), [client(get("/1") + get("/2") + get("/3"))], plain=True)
    assert slow.client[0].count(b"pipelined") == 3


def test_head_204_and_304() -> None:
    def script(conn: int, nth: int, req: h11.Request, body: bytes) -> list[Any]:
        if req.method == b"HEAD":
            return [b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"]
        if req.target == b"/empty":
            return [response(204)]
        return [response(304, headers=[("ETag", '"v1"')])]

    head = b"HEAD /h HTTP/1.1\r\nHost: app.test\r\n\r\n"
    slow, _ = differential(
        script,
        [client(head, 0.3, get("/empty"), 0.3, get("/cond", extra='If-None-Match: "v1"\r\n'))],
        plain=True,
    )
    assert b"content-length: 1234" in slow.client[0].lower()


def test_content_length_bodies_up_and_down() -> None:
    def script(conn: int, nth: int, req: h11.Request, body: bytes) -> list[Any]:
        return [response(201, b"got %d" % len(body) + b"." * 300_000)]

    small = b"POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: 11\r\n\r\nhello world"
    big_body = b"b" * 40_000  # streamed by the general exchange (over FAST_BODY_MAX)
    big = b"PUT /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: 40000\r\n\r\n" + big_body
    differential(script, [client(small, 0.3)], plain=True)
    slow, _ = differential(script, [client(small, 0.3, big, 0.3, small)], plain=False)
    assert slow.client[0].count(b"got 11") == 2 and b"got 40000" in slow.client[0]


def test_chunked_response_and_early_hints() -> None:
    chunked = (
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\nServer: x\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Powered-By: php\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    slow, _ = differential(always(chunked), [client(get("/c"), 0.3, get("/d"))], plain=True)
    assert slow.client[0].count(b"HTTP/1.1 103") == 2


def test_response_in_pieces() -> None:
    ok = response(200, b"z" * 5000)
    steps: list[Any] = [ok[:30], 0.02, ok[30:2000], 0.02, ok[2000:]]
    differential(always(*steps), [client(get("/p"), 0.5, get("/q"))], plain=True)


def test_origin_closes_a_pooled_connection_before_answering() -> None:
    ok = response(200, b"fresh")

    def script(conn: int, nth: int, req: h11.Request, body: bytes) -> list[Any]:
        if conn == 1 and nth == 3:  # (the first is the warm-up)
            return [None]  # took the request, closed without a byte
        return [ok]

    clients = [client(get("/1"), 0.3, get("/2"), 0.3, get("/3"))]
    slow, _ = differential(script, clients, plain=True)
    # The second request went again, on a fresh connection, whole: the client's connection
    # and the fresh one both carry the third.
    assert len(slow.origin) == 2
    assert slow.client[0].count(b"fresh") == 3


def test_origin_that_does_not_answer_in_time() -> None:
    ok = response(200, b"late" * 100)

    def script(conn: int, nth: int, req: h11.Request, body: bytes) -> list[Any]:
        if req.target == b"/warm":
            return [ok]
        if req.target == b"/stall":  # the head and some body, then nothing (timeouts.idle)
            return [ok[:60], 1.0, ok[60:]]
        return [1.0, ok]  # no head in time (timeouts.response)

    slow, _ = differential(
        script,
        [client(get("/1"), 1.5, get("/2"), 1.5), client(get("/warm")), client(get("/stall"), 1.5)],
        plain=False,
        pool_extra='timeouts = { response = "300ms", idle = "300ms" }',
    )
    assert slow.client[0].count(b"HTTP/1.1 504") == 2
    assert slow.client[2].startswith(b"HTTP/1.1 200") and len(slow.client[2]) < len(ok)


def test_origin_errors_after_the_request_went() -> None:
    def script(conn: int, nth: int, req: h11.Request, body: bytes) -> list[Any]:
        if req.target == b"/bad":
            return [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nBad Header\r\n\r\nhello"]
        if req.target == b"/short":
            return [b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nonly part", None]
        return [response(200, b"fine")]

    differential(
        script,
        [
            client(get("/warm"), 0.3, get("/bad")),
            client(get("/warm"), 0.3, get("/short")),
            client(get("/after")),
        ],
        plain=False,
    )


def test_requests_the_general_exchange_serves() -> None:
    ok = response(200, b"origin")
    differential(
        always(ok),
        [
            client(get("/", host="local.test"), 0.3, get("/")),  # a local answer, then plain
            client(get("/", host="nowhere.test")),  # 404
            client(b"GET /x HTTP/1.1\r\nHost: app.test\r\nUpgrade: websocket\r\n\r\n"),
            client(
                b"POST /c HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n0\r\n\r\n"
            ),
            client(b"GET /10 HTTP/1.0\r\nHost: app.test\r\n\r\n"),
            client(b"GET /half HTTP/1.1\r\nHo", 0.1, b"st: app.test\r\n\r\n", 0.3, get("/next")),
            client(b"\x16\x03\x01 not http\r\n"),  # 400
            client(get("/a") + b"GET /bad\x01 HTTP/1.1\r\n\r\n"),  # a pipelined 400
        ],
        plain=False,
    )


def test_client_that_disconnects_mid_response() -> None:
    big = response(200, b"d" * 8_000_000)

    async def leave_early(port: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(get("/big"))
        got = await reader.readexactly(100_000)
        writer.transport.abort()
        return got[:20]

    slow, quick = asyncio.run(_both(always(big), [leave_early, client(get("/after"))]))
    assert quick.client == slow.client
    # How much went out before the proxy noticed depends on timing: the rest is the same.
    for rec in slow.records + quick.records:
        rec.pop("bytes_out")
    assert quick.records == slow.records
    assert [r["status"] for r in quick.records] == [200, 200, 200]
    # The cut response's connection was closed: the next request dials (general exchange).
    assert quick.general == 1
    assert len(quick.origin) == len(slow.origin) == 2


def test_slow_client_reading_a_big_body_is_paced() -> None:
    size = 16_000_000
    big = response(200, b"s" * size)
    peaks: dict[bool, int] = {}

    async def slow_reader(port: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        writer.write(get("/big"))
        got = 0
        peak = 0
        async with asyncio.timeout(60):
            while got < size:
                data = await reader.read(256 * 1024)
                if not data:
                    break
                got += len(data)
                peak = max(peak, sum(conn_io.held(io) for io in conn_io._live))
                await asyncio.sleep(0.002)
        writer.close()
        peaks[fast_exchange.ENABLED] = peak
        return b"%d" % got

    slow, quick = asyncio.run(_both(always(big), [slow_reader]))
    assert quick.client == slow.client and int(quick.client[0]) > size
    assert quick.records == slow.records
    assert quick.general == 0
    # What a slow reader has not taken waits in the kernels' buffers, not in ours.
    assert peaks[True] < 2 * 1024 * 1024, peaks


async def _both(script: Script, clients: list[Client]) -> tuple[Run, Run]:
    slow = await play(script, clients, fast=False)
    quick = await play(script, clients, fast=True)
    return slow, quick


@pytest.mark.parametrize("n", [1, 7])
def test_plain_requests_never_reach_the_general_exchange(n: int) -> None:
    """The guard for later features: plain GETs, HEADs and small POSTs stay on the plain path."""

    def script(conn: int, nth: int, req: h11.Request, body: bytes) -> list[Any]:
        if req.method == b"HEAD":
            return [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"]
        return [response(200, b"ok")]

    post = b"POST /f HTTP/1.1\r\nHost: app.test\r\nContent-Type: text/plain\r\n"
    post += b"Content-Length: 2\r\n\r\nhi"
    head = b"HEAD /h HTTP/1.1\r\nHost: app.test\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n"
    steps: list[bytes | float] = []
    for _ in range(n):
        steps += [get("/g?q=1", extra="Accept-Encoding: gzip\r\nCookie: a=b\r\n"), 0.1, post, 0.1]
        steps += [head, 0.1]
    run = asyncio.run(play(script, [client(*steps)], fast=True))
    assert run.general == 0
    assert len(run.records) == 1 + 3 * n  # and the warm-up
