"""The exchange (route, local answer or forward) played against scripted peers.

Like mitmproxy's Playbook: the client side is a scripted ``ClientStream`` that records what
the exchange sends, the origin side a scripted ``OriginStream`` handed out by a fake dialer;
the generation is built from real configuration text. No sockets: each test is one request
and its exact consequences on both sides.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

import pytest

from revproxy.config.load import load_config_text
from revproxy.edge.client_side import ClientGone, ConnInfo
from revproxy.edge.exchange import Exchange
from revproxy.edge.generation import Generation, build_generation
from revproxy.errors import BackendUnreachable, NoBackendAvailable
from revproxy.ops.accesslog import AccessRecord
from revproxy.proto.events import (
    DataReceived,
    Event,
    Headers,
    InformationalReceived,
    MessageEnded,
    RequestReceived,
    ResponseReceived,
)
from revproxy.upstream.backend import Backend

CONFIG = """
[global]
access_log = "off"

[[listener]]
name = "plain"
bind = "127.0.0.1:18080"

[[route]]
host = ["www.test"]
pool = "web"
[[route]]
host = ["grpc.test"]
pool = "grpc"
[[route]]
host = ["h1grpc.test"]
pool = "web"
[[route]]
host = ["hello.test"]
respond = { status = 200, body = "hi" }

[pool.web]
servers = ["10.0.0.1:8080"]
[pool.grpc]
servers = ["10.0.0.2:50051"]
protocol = "h2c"
"""


class Recorder:
    """Access records, as the access log would get them."""

    def __init__(self) -> None:
        self.records: list[AccessRecord] = []

    def record(self, rec: AccessRecord) -> None:
        self.records.append(rec)


def generation() -> tuple[Generation, Recorder]:
    config = load_config_text([("10-test.toml", CONFIG)])
    gen = build_generation(config, number=1, default_pem=(b"", b""))
    recorder = Recorder()
    gen.access_log = recorder  # type: ignore[assignment]
    return gen, recorder


class Client:
    """A scripted ClientStream: the request body to hand out, and everything sent back."""

    def __init__(self, body: list[Event] | None = None, *, http2: bool = False) -> None:
        self.body: deque[Event] = deque(body if body is not None else [])
        self.http2 = http2
        self.sent: list[tuple[Any, ...]] = []
        self.bytes_out = 0
        self.head_out = 0
        self.started = False
        self.taken: list[bytes] = []  # body chunks handed out, in order
        self.origin: Origin | None = None  # to check acknowledgements against

    @property
    def response_started(self) -> bool:
        return self.started

    @property
    def request_complete(self) -> bool:
        return all(isinstance(ev, MessageEnded) for ev in self.body)

    def take_bytes_in(self) -> int:
        return sum(len(c) for c in self.taken)

    def body_end_ready(self) -> MessageEnded | None:
        if self.body and isinstance(self.body[0], MessageEnded):
            ev = self.body.popleft()
            assert isinstance(ev, MessageEnded)
            return ev
        return None

    async def next_body_event(self) -> Event:
        # Asking for the next chunk means the previous one was consumed: it must have
        # reached the origin by now (HTTP/2 acknowledges it at this point).
        if self.taken and self.origin is not None:
            assert self.origin.uploaded[-1] == self.taken[-1]
        if not self.body:
            await asyncio.sleep(3600)
        ev = self.body.popleft()
        if isinstance(ev, DataReceived):
            self.taken.append(ev.data)
        return ev

    async def send_informational(self, status: int, headers: Headers) -> None:
        self.sent.append(("1xx", status, headers))

    async def send_response(
        self, status: int, headers: Headers, end: bool = False, body: bytes = b""
    ) -> None:
        self.started = True
        if not body:
            self.sent.append(("head", status, headers, end))
            return
        # Recorded as the separate calls it stands for.
        self.sent += [("head", status, headers, False), ("data", body)]
        if end:
            self.sent.append(("end", []))

    async def send_data(self, data: bytes) -> None:
        self.sent.append(("data", data))

    async def send_end(self, trailers: Headers) -> None:
        self.sent.append(("end", trailers))

    async def send_whole(self, status: int, headers: Headers, body: bytes, close: bool) -> bool:
        self.started = True
        self.sent.append(("whole", status, headers, body, close))
        return not close

    async def tunnel(self, *args: Any) -> tuple[int, int]:
        raise AssertionError("no tunnel expected")


class Origin:
    """A scripted OriginStream: the response events to hand out; what it was sent."""

    def __init__(
        self,
        response: list[Event | BaseException],
        *,
        reused: bool = False,
        refused: bool = False,
    ) -> None:
        self.backend = Backend(pool="web", host="10.0.0.1", port=8080)
        self.reused = reused
        self.refused = refused
        self.upgrading = False
        self.bytes_read = 0
        self.deadline: float | None = None  # waits end there (TimeoutError), as OriginStream's
        self.events: deque[Event] = deque()
        self.script: deque[Event | BaseException] = deque(response)
        self.head: tuple[Any, ...] | None = None
        self.uploaded: list[bytes] = []
        self.ended_with: Headers | None = None
        self.finished: bool | None = None

    def send_head(
        self,
        method: bytes,
        target: bytes,
        authority: bytes,
        scheme: bytes,
        headers: Headers,
        *,
        end: MessageEnded | None,
        upgrade: bool,
    ) -> None:
        self.head = (method, target, authority, scheme, headers)
        self.upgrading = upgrade
        if end is not None:
            self.ended_with = end.trailers
        # What the origin "answers" is readable at once for events already known.
        while self.script and isinstance(self.script[0], Event.__args__):  # type: ignore[attr-defined]
            ev = self.script.popleft()
            assert not isinstance(ev, BaseException)
            self.events.append(ev)

    async def next(self) -> Event:
        if self.events:
            self.bytes_read += 1
            return self.events.popleft()
        if not self.script:
            if self.deadline is None:
                await asyncio.sleep(3600)
            async with asyncio.timeout_at(self.deadline):
                await asyncio.sleep(3600)
        item = self.script.popleft()
        if isinstance(item, BaseException):
            raise item
        self.bytes_read += 1
        return item

    async def send_data(self, data: bytes) -> None:
        self.uploaded.append(data)

    async def send_end(self, trailers: Headers) -> None:
        self.ended_with = trailers

    def finish(self, complete: bool) -> None:
        self.finished = complete

    def take_over(self) -> None:
        return None


class Dialer:
    """Hands out scripted origin streams (or raises), recording how it was asked."""

    def __init__(self, *streams: Origin | BaseException) -> None:
        self.streams = deque(streams)
        self.calls: list[bool] = []  # the ``fresh`` of each call

    def pooled_stream(self, ctx: Any, identity: bytes | None) -> tuple[None, None]:
        return None, None  # never a pooled connection: every stream comes from open_stream

    async def open_stream(
        self, ctx: Any, *, identity: bytes | None, fresh: bool, first: Any = None
    ) -> Origin:
        self.calls.append(fresh)
        item = self.streams.popleft()
        if isinstance(item, BaseException):
            raise item
        return item


def request(
    host: str = "www.test",
    path: str = "/p",
    method: str = "GET",
    headers: Headers | None = None,
    *,
    http2: bool = False,
    ended: bool = True,
) -> RequestReceived:
    fields: Headers = [(b"host", host.encode()), *(headers or [])]
    return RequestReceived(
        stream_id=1,
        method=method.encode(),
        target=path.encode(),
        authority=host.encode(),
        headers=fields,
        http_version=b"2" if http2 else b"1.1",
        ended=ended and http2,
    )


INFO = ConnInfo(
    peer=("192.0.2.7", 5000),
    client=("192.0.2.7", 5000),
    local=("127.0.0.1", 18080),
    destination=("127.0.0.1", 18080),
    local_port=18080,
    tls=False,
)


RECORDS: list[AccessRecord] = []


def play(
    req: RequestReceived,
    client: Client,
    dialers: dict[str, Dialer] | None = None,
    *,
    configure: Callable[[Generation], None] | None = None,
) -> tuple[bool, list[AccessRecord]]:
    gen, recorder = generation()
    for name, dialer in (dialers or {}).items():
        gen.pools[name].dialer = dialer  # type: ignore[assignment]
    if configure is not None:
        configure(gen)
    exchange = Exchange(client, generation=gen, listener=gen.listeners["plain"], info=INFO)
    RECORDS[:] = []
    try:
        keep = asyncio.run(asyncio.wait_for(exchange.run(req), 10))
    finally:
        RECORDS.extend(recorder.records)
    return keep, recorder.records


OK = ResponseReceived(stream_id=1, status=200, headers=[(b"content-length", b"2")])


# --- local answers ------------------------------------------------------------------------


def test_no_route_is_a_local_404_and_no_origin_is_asked() -> None:
    client = Client([MessageEnded(stream_id=1, trailers=[])])
    keep, records = play(request("nowhere.test"), client)
    assert keep
    (kind, status, headers, body, close) = client.sent[0]
    assert (kind, status, body, close) == ("whole", 404, b"404 Not Found\n", False)
    assert (b"cache-control", b"no-store") in headers
    assert records[0].status == 404 and records[0].backend == "-"


def test_respond_route() -> None:
    client = Client([MessageEnded(stream_id=1, trailers=[])])
    play(request("hello.test"), client)
    assert client.sent[0][1] == 200 and client.sent[0][3] == b"hi"


def test_local_answer_to_an_unread_body_closes_the_connection() -> None:
    client = Client([DataReceived(stream_id=1, data=b"x")])
    keep, _ = play(request("nowhere.test", method="POST"), client)
    assert not keep and client.sent[0][4] is True


# --- forwarding ---------------------------------------------------------------------------


def test_forward_relays_head_body_and_trailers() -> None:
    origin = Origin(
        [
            InformationalReceived(stream_id=1, status=103, headers=[(b"link", b"</a>")]),
            ResponseReceived(
                stream_id=1, status=200, headers=[(b"x-powered-by", b"php"), (b"a", b"1")]
            ),
            DataReceived(stream_id=1, data=b"he"),
            DataReceived(stream_id=1, data=b"y"),
            MessageEnded(stream_id=1, trailers=[(b"x-sum", b"3")]),
        ]
    )
    client = Client([MessageEnded(stream_id=1, trailers=[])])
    keep, records = play(request(), client, {"web": Dialer(origin)})
    assert keep
    assert origin.head is not None
    method, target, _, _, headers = origin.head
    assert (method, target) == (b"GET", b"/p")
    assert (b"x-forwarded-for", b"192.0.2.7") in headers
    assert origin.ended_with == []  # the whole request went with its head
    assert client.sent == [
        ("1xx", 103, [(b"link", b"</a>")]),
        ("head", 200, [(b"a", b"1")], False),  # identity header hidden
        ("data", b"he"),
        ("data", b"y"),
        ("end", [(b"x-sum", b"3")]),
    ]
    assert origin.finished is True
    assert (records[0].status, records[0].pool) == (200, "web")


def test_empty_response_goes_in_one_block() -> None:
    origin = Origin(
        [
            ResponseReceived(stream_id=1, status=204, headers=[]),
            MessageEnded(stream_id=1, trailers=[]),
        ]
    )
    client = Client([MessageEnded(stream_id=1, trailers=[])])
    play(request(), client, {"web": Dialer(origin)})
    assert client.sent == [("head", 204, [], True)]


def test_upload_asks_for_a_chunk_only_once_the_previous_reached_the_origin() -> None:
    chunks = [b"a" * 10, b"b" * 20, b"c" * 30]
    body: list[Event] = [DataReceived(stream_id=1, data=c) for c in chunks]
    body.append(MessageEnded(stream_id=1, trailers=[(b"x-t", b"1")]))

    class SlowOrigin(Origin):
        async def next(self) -> Event:
            # The response waits for the whole body (as an origin reading it first would).
            while self.ended_with is None:
                await asyncio.sleep(0)
            return await super().next()

    origin = SlowOrigin(
        [OK, DataReceived(stream_id=1, data=b"ok"), MessageEnded(stream_id=1, trailers=[])]
    )
    client = Client(body, http2=True)
    client.origin = origin
    keep, records = play(
        request(method="POST", http2=True, ended=False), client, {"web": Dialer(origin)}
    )
    assert keep
    assert origin.uploaded == chunks
    assert origin.ended_with == [(b"x-t", b"1")]
    # An HTTP/2 body without content-length goes to an HTTP/1.1 origin chunked.
    assert origin.head is not None and (b"transfer-encoding", b"chunked") in origin.head[4]
    assert records[0].bytes_in == 60


def test_stale_pooled_connection_is_retried_once_for_an_idempotent_request() -> None:
    stale = Origin([ConnectionResetError("closed while idle")], reused=True)
    fresh = Origin(
        [OK, DataReceived(stream_id=1, data=b"ok"), MessageEnded(stream_id=1, trailers=[])]
    )
    dialer = Dialer(stale, fresh)
    client = Client([MessageEnded(stream_id=1, trailers=[])])
    play(request(), client, {"web": dialer})
    assert dialer.calls == [False, True]
    assert client.sent[0][:2] == ("head", 200)


def test_stale_connection_is_not_retried_for_post() -> None:
    stale = Origin([ConnectionResetError("closed while idle")], reused=True)
    dialer = Dialer(stale)
    client = Client([MessageEnded(stream_id=1, trailers=[])])
    play(request(method="POST"), client, {"web": dialer})
    assert dialer.calls == [False]
    assert client.sent[0][:2] == ("whole", 502)


def test_stream_refused_unprocessed_is_retried_whatever_the_method() -> None:
    refused = Origin([ConnectionResetError("refused")], refused=True)
    ok = Origin([OK, DataReceived(stream_id=1, data=b"ok"), MessageEnded(stream_id=1, trailers=[])])
    dialer = Dialer(refused, ok)
    client = Client([MessageEnded(stream_id=1, trailers=[])])
    play(request("grpc.test", method="POST"), client, {"grpc": dialer})
    assert dialer.calls == [False, True]
    assert client.sent[0][:2] == ("head", 200)


def test_unrequested_switching_protocols_is_not_relayed() -> None:
    origin = Origin(
        [
            InformationalReceived(stream_id=1, status=101, headers=[]),
            OK,
            DataReceived(stream_id=1, data=b"ok"),
            MessageEnded(stream_id=1, trailers=[]),
        ]
    )
    client = Client([MessageEnded(stream_id=1, trailers=[])])
    play(request(), client, {"web": Dialer(origin)})
    assert client.sent[0][:2] == ("head", 200)


@pytest.mark.parametrize(
    ("error", "status"), [(NoBackendAvailable("none"), 503), (BackendUnreachable("down"), 502)]
)
def test_backend_errors_are_local_pages(error: Exception, status: int) -> None:
    client = Client([MessageEnded(stream_id=1, trailers=[])])
    play(request(), client, {"web": Dialer(error)})
    assert client.sent[0][:2] == ("whole", status)


def test_client_gone_before_any_answer_is_logged_as_499() -> None:
    class GoneClient(Client):
        async def next_body_event(self) -> Event:
            raise ClientGone()

    origin = Origin([])  # still waiting for the body
    client = GoneClient([DataReceived(stream_id=1, data=b"x")])
    with pytest.raises(ClientGone):
        play(request(method="POST"), client, {"web": Dialer(origin)})
    assert client.sent == []
    assert origin.finished is False
    assert RECORDS[0].status == 499


# --- gRPC -----------------------------------------------------------------------------------

GRPC = [(b"content-type", b"application/grpc"), (b"te", b"trailers")]


def grpc_status(client: Client) -> tuple[int, dict[bytes, bytes]]:
    kind, status, headers, body, _ = client.sent[0]
    assert kind == "whole" and body == b""
    return status, dict(headers)


def test_grpc_over_an_http1_pool_is_unavailable() -> None:
    client = Client([MessageEnded(stream_id=1, trailers=[])], http2=True)
    play(request("h1grpc.test", "/svc/M", "POST", GRPC, http2=True), client)
    status, headers = grpc_status(client)
    assert status == 200
    assert headers[b"grpc-status"] == b"14"
    assert b"HTTP/1.1" in headers[b"grpc-message"]


def test_grpc_to_an_unreachable_origin_is_unavailable() -> None:
    client = Client([MessageEnded(stream_id=1, trailers=[])], http2=True)
    dialer = Dialer(BackendUnreachable("every server failed"))
    play(request("grpc.test", "/svc/M", "POST", GRPC, http2=True), client, {"grpc": dialer})
    status, headers = grpc_status(client)
    assert (status, headers[b"grpc-status"]) == (200, b"14")


def test_grpc_timeout_bounds_the_wait_for_an_answer() -> None:
    origin = Origin([])  # never answers
    client = Client([MessageEnded(stream_id=1, trailers=[])], http2=True)
    head = [*GRPC, (b"grpc-timeout", b"50m")]
    play(request("grpc.test", "/svc/M", "POST", head, http2=True), client, {"grpc": Dialer(origin)})
    status, headers = grpc_status(client)
    assert (status, headers[b"grpc-status"]) == (200, b"4")
    assert origin.finished is False


def test_grpc_requests_keep_te_trailers_toward_h2_origins_and_lose_host() -> None:
    origin = Origin(
        [
            ResponseReceived(stream_id=1, status=200, headers=GRPC[:1], ended=True),
            MessageEnded(stream_id=1, trailers=[]),
        ]
    )
    client = Client([MessageEnded(stream_id=1, trailers=[])], http2=True)
    play(request("grpc.test", "/svc/M", "POST", GRPC, http2=True), client, {"grpc": Dialer(origin)})
    assert origin.head is not None
    headers = origin.head[4]
    assert (b"te", b"trailers") in headers
    assert client.sent == [("head", 200, GRPC[:1], True)]  # Trailers-Only stays one block
