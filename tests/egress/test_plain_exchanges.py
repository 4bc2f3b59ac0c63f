"""What the parsers remembered (proto/forward_proxy.py ``PlainExchanges``): a request head
answered from memory gives the events, the destination's bytes and — once caught up — the
parser state the parsers give; a remembered response head gives the client's bytes the
parsers write; and nothing that is not plain is remembered. Both HTTP/1.1 implementations,
whole, byte by byte and with hypothesis."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from revproxy.proto.events import (
    DataReceived,
    Event,
    MessageEnded,
    RequestReceived,
    ResponseReceived,
)
from revproxy.proto.forward_proxy import (
    PLAIN_BODY_MAX,
    PLAIN_KEPT,
    PLAIN_MISSES_MAX,
    ForwardRequests,
    PlainExchanges,
    destination_headers,
    relayed_reason,
    response_headers,
)
from revproxy.proto.http1.api import H1ClientAPI, H1ServerAPI
from revproxy.proto.http1.exact import H1Client as ExactClient
from revproxy.proto.http1.exact import H1Server as ExactServer
from revproxy.proto.http1.fast import H1Server as FastServer
from revproxy.proto.http1.fast_client import H1Client as FastClient

KINDS = [(FastServer, FastClient), (ExactServer, ExactClient)]
IDS = ["llhttp", "h11"]
MAX = 8192

GET = (
    b"GET http://api.example:8080/v1/items?page=2 HTTP/1.1\r\nHost: api.example:8080\r\n"
    b"User-Agent: client/1.0\r\nAccept: */*\r\nProxy-Connection: Keep-Alive\r\n"
    b"X-Forwarded-For: 192.0.2.1\r\n\r\n"
)
RESPONSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: application/json\r\n"
    b"Content-Length: 7\r\nConnection: keep-alive\r\n\r\n"
)
BODY = b'{"a":1}'

Kind = tuple[type[H1ServerAPI], type[H1ClientAPI]]
# Request fields that keep a head from being remembered.
NOT_PLAIN = {b"connection", b"content-length", b"expect", b"keep-alive", b"te",
             b"transfer-encoding", b"upgrade"}  # fmt: skip


def _memo(kind: Kind) -> PlainExchanges:
    server, client = kind
    return PlainExchanges(lambda: server(max_header_size=MAX), lambda: client(max_header_size=MAX))


def _requests(kind: Kind, memo: PlainExchanges | None) -> ForwardRequests:
    server = kind[0]
    return ForwardRequests(lambda: server(max_header_size=MAX), MAX, memo)


def _shape(events: list[Event]) -> list[object]:
    out: list[object] = []
    for ev in events:
        if isinstance(ev, RequestReceived):
            out.append((ev.method, ev.target, ev.authority, ev.headers, ev.http_version))
        elif isinstance(ev, MessageEnded):
            out.append(("end", ev.trailers))
        else:
            out.append(ev)
    return out


def _exchange(
    reqs: ForwardRequests, client: H1ClientAPI, head: bytes, response: bytes, *, plain: bool
) -> tuple[list[object], bytes, bytes]:
    """One exchange as egress/forward.py does it: (events, bytes to the destination, bytes to
    the client). A skipped request is caught up before the response goes through the
    parsers (the course every non-remembered response takes)."""
    events = reqs.receive_data(head, plain)
    req = events[0]
    assert isinstance(req, RequestReceived) and reqs.dest is not None
    dest = reqs.dest
    out = client.send_request(
        req.method, dest.path, destination_headers(req.headers, dest.authority)
    )
    out += client.send_end(None)
    skipped = reqs.skipped
    if skipped is not None:
        assert skipped.outbound == out
        reqs.catch_up()
    to_client = b""
    server = reqs.parser
    for ev in client.receive_data(response):
        if isinstance(ev, ResponseReceived):
            reason = relayed_reason(ev.status, ev.reason)
            to_client += server.send_response(ev.status, response_headers(ev.headers), reason)
        elif isinstance(ev, DataReceived):
            to_client += server.send_data(ev.data)
        elif isinstance(ev, MessageEnded):
            to_client += server.send_end(None)
    assert client.reusable and server.keep_alive
    client.start_next_cycle()
    assert reqs.next_cycle() == []
    return _shape(events), out, to_client


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_a_head_is_remembered_the_second_time(kind: Kind) -> None:
    memo = _memo(kind)
    reqs = _requests(kind, memo)
    client = kind[1](max_header_size=MAX)
    first = _exchange(reqs, client, GET, RESPONSE_HEAD + BODY, plain=True)
    assert GET not in memo.requests and reqs.skipped is None
    second = _exchange(reqs, client, GET, RESPONSE_HEAD + BODY, plain=True)
    assert GET in memo.requests
    # From the third on: the same events without the parser, the same bytes both ways once
    # the parser caught up.
    events = reqs.receive_data(GET, True)
    assert reqs.skipped is memo.requests[GET]
    assert (reqs.method, reqs.target) == (b"GET", b"http://api.example:8080/v1/items?page=2")
    assert reqs.dest is not None and reqs.dest.shown == "api.example:8080"
    assert _shape(events) == first[0]
    reqs.catch_up()
    assert reqs.skipped is None
    reqs.parser.send_response(200, [(b"content-length", b"0")])
    reqs.parser.send_end()
    assert reqs.next_cycle() == []
    third = _exchange(reqs, client, GET, RESPONSE_HEAD + BODY, plain=True)
    assert first == second == third
    # Without ``plain`` the memory is not consulted.
    reqs.receive_data(GET)
    assert reqs.skipped is None


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_a_skipped_request_leaves_the_parser_as_it_was(kind: Kind) -> None:
    memo = _memo(kind)
    reqs = _requests(kind, memo)
    client = kind[1](max_header_size=MAX)
    for _ in range(2):
        _exchange(reqs, client, GET, RESPONSE_HEAD + BODY, plain=True)
    parser = reqs.parser
    assert reqs.receive_data(GET, True) and reqs.skipped is not None
    # The exchange ended from memory: the parser never saw it, and reads the next request.
    assert reqs.next_cycle() == []
    assert reqs.parser is parser and reqs.skipped is None
    post = b"POST http://api.example/up HTTP/1.1\r\nHost: api.example\r\nContent-Length: 2\r\n\r\n"
    post += b"hi"
    events = reqs.receive_data(post, True)
    assert [type(ev).__name__ for ev in events] == [
        "RequestReceived",
        "DataReceived",
        "MessageEnded",
    ]


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
@pytest.mark.parametrize(
    "head",
    [
        GET.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"),
        GET.replace(b"\r\n\r\n", b"\r\nContent-Length: 0\r\n\r\n"),
        GET.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n"),
        GET.replace(b"\r\n\r\n", b"\r\nTE: trailers\r\n\r\n"),
        GET.replace(b"GET ", b"HEAD "),
        GET.replace(b"HTTP/1.1", b"HTTP/1.0"),
        b"CONNECT api.example:443 HTTP/1.1\r\nHost: api.example:443\r\n\r\n",
    ],
    ids=["close", "length", "expect", "te", "head", "http10", "connect"],
)
def test_what_is_never_remembered(kind: Kind, head: bytes) -> None:
    memo = _memo(kind)
    for _ in range(3):
        reqs = _requests(kind, memo)
        reqs.receive_data(head, True)
        assert reqs.skipped is None
    assert not memo.requests


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_heads_in_pieces_or_with_more_behind(kind: Kind) -> None:
    memo = _memo(kind)
    for _ in range(2):
        _requests(kind, memo).receive_data(GET, True)
    assert GET in memo.requests
    # Byte by byte, or pipelined: read by the parser, the same events.
    expected = _shape(_requests(kind, None).receive_data(GET))
    reqs = _requests(kind, memo)
    events: list[Event] = []
    for i in range(len(GET)):
        events += reqs.receive_data(GET[i : i + 1], True)
    assert reqs.skipped is None and _shape(events) == expected
    reqs = _requests(kind, memo)
    events = reqs.receive_data(GET + GET, True)
    assert reqs.skipped is None and _shape(events) == expected


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_responses_remembered_and_judged(kind: Kind) -> None:
    memo = _memo(kind)
    assert memo.response(RESPONSE_HEAD) is None  # seen once
    known = memo.response(RESPONSE_HEAD)
    assert known is not None and memo.response(RESPONSE_HEAD) is known
    assert (known.length, known.status) == (7, 200)
    # What the parsers write for it after a plain request.
    reqs = _requests(kind, None)
    client = kind[1](max_header_size=MAX)
    _, _, to_client = _exchange(reqs, client, GET, RESPONSE_HEAD + BODY, plain=False)
    assert to_client == known.head + BODY


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",  # delimited by the end of the connection
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (PLAIN_BODY_MAX + 1),
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nBad Header: x\r\n\r\n",
        b"garbage\r\n\r\n",
    ],
)
def test_responses_never_remembered(kind: Kind, head: bytes) -> None:
    memo = _memo(kind)
    assert memo.response(head) is None
    assert memo.response(head) is None and memo.response(head) is None


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_a_request_whose_responses_vary_is_forgotten(kind: Kind) -> None:
    memo = _memo(kind)
    for _ in range(2):
        _requests(kind, memo).receive_data(GET, True)
    known = memo.requests[GET]
    for _ in range(PLAIN_MISSES_MAX - 1):
        memo.response_missed(known)
    known.misses = 0  # a response remembered in between: the count starts again
    for _ in range(PLAIN_MISSES_MAX - 1):
        memo.response_missed(known)
    assert memo.requests[GET] is known
    memo.response_missed(known)
    assert GET not in memo.requests
    for _ in range(2):  # seen twice again: remembered again
        _requests(kind, memo).receive_data(GET, True)
    assert memo.requests[GET] is not known


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_memory_is_bounded(kind: Kind) -> None:
    memo = _memo(kind)
    for i in range(PLAIN_KEPT * 2 + 10):
        head = b"HTTP/1.1 200 OK\r\nX-N: %d\r\nContent-Length: 0\r\n\r\n" % i
        memo.response(head)
        memo.response(head)
        assert len(memo.responses) <= PLAIN_KEPT
    reqs_memo = _memo(kind)
    for i in range(PLAIN_KEPT + 10):
        head = GET.replace(b"page=2", b"page=%d" % i)
        for _ in range(2):
            _requests(kind, reqs_memo).receive_data(head, True)
        assert len(reqs_memo.requests) <= PLAIN_KEPT


# --- hypothesis: remembered or not, the same bytes ----------------------------------------

_token = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12).map(str.encode)
_value = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ;,=/:._-*", max_size=30
).map(lambda s: s.strip().encode())
_field = st.tuples(_token, _value)
_path = st.text("abcdefghijklmnopqrstuvwxyz0123456789/?=&._-", max_size=20).map(lambda s: "/" + s)


def _head(path: str, fields: list[tuple[bytes, bytes]]) -> bytes:
    lines = [f"GET http://api.example{path} HTTP/1.1".encode(), b"Host: api.example"]
    lines += [n + b": " + v for n, v in fields]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _response(status: int, fields: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    lines = [b"HTTP/1.1 %d X" % status, b"Content-Length: %d" % len(body)]
    lines += [n + b": " + v for n, v in fields]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
@settings(max_examples=60, deadline=None)
@given(
    path=_path,
    fields=st.lists(_field, max_size=6),
    status=st.sampled_from([200, 201, 202, 203, 206, 301, 302, 400, 403, 404, 500, 503]),
    res_fields=st.lists(_field, max_size=5),
    body=st.binary(max_size=40),
)
def test_remembered_exchanges_match_the_parsers(
    kind: Kind,
    path: str,
    fields: list[tuple[bytes, bytes]],
    status: int,
    res_fields: list[tuple[bytes, bytes]],
    body: bytes,
) -> None:
    head = _head(path, fields)
    response = _response(status, res_fields, body)
    memo = _memo(kind)
    new_client: Callable[[], H1ClientAPI] = lambda: kind[1](max_header_size=MAX)  # noqa: E731
    reference_reqs = _requests(kind, None)
    reference_client = new_client()
    reqs = _requests(kind, memo)
    client = new_client()
    try:
        expected = _exchange(reference_reqs, reference_client, head, response, plain=False)
    except Exception:
        # The parsers refuse it (or it is not plain): never remembered as a success.
        for _ in range(3):
            try:
                _requests(kind, memo).receive_data(head, True)
            except Exception:
                break
        if head in memo.requests:
            assert memo.requests[head].req.method == b"GET"
        return
    for _ in range(4):
        assert _exchange(reqs, client, head, response, plain=True) == expected
    if not {n for n, _ in fields} & NOT_PLAIN:
        assert head in memo.requests  # the last two exchanges were answered from memory
    split = response.index(b"\r\n\r\n") + 4
    known = memo.response(response[:split])
    known = memo.response(response[:split]) if known is None else known
    if known is not None:
        assert known.head + response[split:] == expected[2]
        assert known.length == len(body) and known.status == status
