"""The forward proxy's request rules: targets it relays, refuses, and the headers it strips."""

from __future__ import annotations

import pytest

from revproxy.errors import ClientProtocolError, HeaderTooLarge
from revproxy.proto.events import (
    ConnectionClosed,
    DataReceived,
    Event,
    RequestReceived,
)
from revproxy.proto.forward_proxy import (
    ForwardRequests,
    NotAProxyRequest,
    ProxyTarget,
    destination_headers,
    proxy_target,
    relayed_reason,
    request_line,
)
from revproxy.proto.http1.api import H1ServerAPI
from revproxy.proto.http1.exact import H1Server as ExactServer
from revproxy.proto.http1.fast import H1Server as FastServer


@pytest.mark.parametrize(
    ("method", "target", "expected"),
    [
        (b"CONNECT", b"api.example:443", ProxyTarget(True, "api.example", 443, b"")),
        (b"CONNECT", b"[2001:db8::1]:443", ProxyTarget(True, "2001:db8::1", 443, b"")),
        (b"GET", b"http://Example.com/a?b",
         ProxyTarget(False, "example.com", 80, b"/a?b", b"Example.com")),
        (b"GET", b"http://example.com:8080",
         ProxyTarget(False, "example.com", 8080, b"/", b"example.com:8080")),
        (b"GET", b"HTTP://example.com?q",
         ProxyTarget(False, "example.com", 80, b"/?q", b"example.com")),
        (b"GET", b"http://example.com/p#frag",
         ProxyTarget(False, "example.com", 80, b"/p", b"example.com")),
    ],
)  # fmt: skip
def test_targets(method: bytes, target: bytes, expected: ProxyTarget) -> None:
    assert proxy_target(method, target) == expected


@pytest.mark.parametrize(
    ("method", "target", "reason"),
    [
        (b"CONNECT", b"api.example", "host:port"),
        (b"GET", b"https://api.example/", "CONNECT"),
        (b"GET", b"/origin-form", "absolute-form"),
        (b"GET", b"http://user@example.com/", "invalid host"),
        (b"GET", b"http:///nohost", "invalid host"),
        (b"GET", b"http://exa\x01mple.com/", "invalid request target"),
        (b"GET", b"http://example.com/\xff", "invalid request target"),
    ],
)
def test_refused_targets(method: bytes, target: bytes, reason: str) -> None:
    with pytest.raises(NotAProxyRequest, match=reason):
        proxy_target(method, target)
    assert NotAProxyRequest.status == 400


def test_request_line() -> None:
    assert request_line(b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n") == (b"GET", b"http://x/")


def test_nothing_identifying_goes_on() -> None:
    headers = [
        (b"host", b"x"),
        (b"proxy-authorization", b"Basic eA=="),
        (b"proxy-connection", b"keep-alive"),
        (b"connection", b"close, x-secret"),
        (b"x-secret", b"1"),
        (b"via", b"1.1 app"),
        (b"forwarded", b"for=1.2.3.4"),
        (b"x-forwarded-for", b"1.2.3.4"),
        (b"x-real-ip", b"1.2.3.4"),
        (b"te", b"trailers"),
        (b"x-app", b"kept"),
    ]
    assert destination_headers(headers) == [(b"host", b"x"), (b"x-app", b"kept")]


def test_host_is_the_targets_authority() -> None:
    """RFC 9112 §3.2.2: the Host sent on is made from the target, first; other X-Forwarded-*
    go too."""
    headers = [
        (b"user-agent", b"t"),
        (b"host", b"elsewhere.example"),
        (b"x-forwarded-scheme", b"https"),
        (b"x-forwarded-ssl", b"on"),
        (b"accept", b"*/*"),
    ]
    assert destination_headers(headers, b"Example.com:8080") == [
        (b"host", b"Example.com:8080"),
        (b"user-agent", b"t"),
        (b"accept", b"*/*"),
    ]


def test_relayed_reason() -> None:
    assert relayed_reason(200, b"OK") == b""
    assert relayed_reason(404, b"Not Found") == b""
    assert relayed_reason(200, b"Fine") == b"Fine"


# --- ForwardRequests: bytes in, events out, three ways (whole, byte by byte, trailing) ----


PARSERS = [pytest.param(FastServer, id="llhttp"), pytest.param(ExactServer, id="h11")]

GET = b"GET http://Example.com:8080/a?b#f HTTP/1.1\r\nHost: x\r\nVia: 1.1 app\r\n\r\n"
POST = b"POST http://example.com/up HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nhello"
CONNECT = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"


def _requests(kind: type[H1ServerAPI]) -> ForwardRequests:
    return ForwardRequests(lambda: kind(max_header_size=4096), 4096)


def _feed(reqs: ForwardRequests, data: bytes, *, bytewise: bool = False) -> list[Event]:
    if not bytewise:
        return reqs.receive_data(data)
    out: list[Event] = []
    for i in range(len(data)):
        out += reqs.receive_data(data[i : i + 1])
    return out


def _plain(events: list[Event]) -> list[object]:
    """Events with the body pieces joined (byte by byte gives one per byte)."""
    out: list[object] = []
    for ev in events:
        if isinstance(ev, DataReceived) and out and isinstance(out[-1], bytes):
            out[-1] += ev.data
        elif isinstance(ev, DataReceived):
            out.append(ev.data)
        elif isinstance(ev, RequestReceived):
            out.append((ev.method, ev.target, ev.headers))
        else:
            out.append(type(ev).__name__)
    return out


@pytest.mark.parametrize("kind", PARSERS)
@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_requests_read_raw_then_origin_form(kind: type[H1ServerAPI], bytewise: bool) -> None:
    reqs = _requests(kind)
    events = _feed(reqs, GET, bytewise=bytewise)
    assert _plain(events) == [
        (b"GET", b"/a?b", [(b"host", b"x"), (b"via", b"1.1 app")]),
        "MessageEnded",
    ]
    assert (reqs.method, reqs.target) == (b"GET", b"http://Example.com:8080/a?b#f")
    assert reqs.dest == ProxyTarget(False, "example.com", 8080, b"/a?b", b"Example.com:8080")
    reqs.parser.send_response(200, [(b"content-length", b"0")])
    reqs.parser.send_end()
    assert reqs.next_cycle() == []
    # The same parser reads the next request, and its line raw again.
    events = _feed(reqs, POST, bytewise=bytewise)
    assert _plain(events) == [
        (b"POST", b"/up", [(b"host", b"example.com"), (b"content-length", b"5")]),
        b"hello",
        "MessageEnded",
    ]
    assert reqs.dest is not None and reqs.dest.host == "example.com"


@pytest.mark.parametrize("kind", PARSERS)
def test_pipelined_requests_are_read_raw(kind: type[H1ServerAPI]) -> None:
    reqs = _requests(kind)
    events = reqs.receive_data(GET + POST + b"\r\n" + GET[:10])  # trailing data, partial
    assert _plain(events)[-1] == "MessageEnded" and len(events) == 2
    reqs.parser.send_response(204, [])
    reqs.parser.send_end()
    events = reqs.next_cycle()
    assert reqs.target == b"http://example.com/up"
    assert _plain(events)[1:] == [b"hello", "MessageEnded"]
    reqs.parser.send_response(204, [])
    reqs.parser.send_end()
    assert reqs.next_cycle() == []
    assert reqs.has_partial_head
    events = reqs.receive_data(GET[10:])
    assert reqs.target == b"http://Example.com:8080/a?b#f" and len(events) == 2


@pytest.mark.parametrize("kind", PARSERS)
def test_connect_keeps_the_tunnels_bytes(kind: type[H1ServerAPI]) -> None:
    reqs = _requests(kind)
    events = reqs.receive_data(CONNECT + b"\x16\x03\x01")
    assert isinstance(events[0], RequestReceived) and events[0].method == b"CONNECT"
    assert reqs.dest == ProxyTarget(True, "example.com", 443, b"")
    assert reqs.tunnel_data == b"\x16\x03\x01"
    assert reqs.receive_data(b"more") == []
    assert reqs.tunnel_data == b"\x16\x03\x01more"


@pytest.mark.parametrize("kind", PARSERS)
def test_requests_refused(kind: type[H1ServerAPI]) -> None:
    with pytest.raises(NotAProxyRequest, match="absolute-form"):
        _requests(kind).receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    reqs = _requests(kind)
    with pytest.raises(NotAProxyRequest, match="CONNECT"):
        reqs.receive_data(b"GET https://x/ HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reqs.head_read and reqs.method == b"GET"  # a request: it is logged
    with pytest.raises(ClientProtocolError, match="malformed request line"):
        _requests(kind).receive_data(b"GET  http://x/ HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises(ClientProtocolError, match="cannot begin a request"):
        _requests(kind).receive_data(b"\x16\x03\x01\x02\x00")
    with pytest.raises(HeaderTooLarge):
        _requests(kind).receive_data(b"GET http://x/ HTTP/1.1\r\nA: " + b"a" * 5000)
    reqs = _requests(kind)
    assert reqs.receive_data(b"GET http://x/ HTTP/1.1\r\n") == []
    assert not reqs.head_read
    with pytest.raises(ClientProtocolError, match="closed inside a request head"):
        reqs.receive_data(b"")
    # The parser's own checks still hold on the head it is handed.
    with pytest.raises(ClientProtocolError):
        _requests(kind).receive_data(b"GET http://x/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")


@pytest.mark.parametrize("kind", PARSERS)
def test_end_of_stream_between_requests(kind: type[H1ServerAPI]) -> None:
    reqs = _requests(kind)
    assert reqs.receive_data(b"\r\n") == []
    events = reqs.receive_data(b"")
    assert len(events) == 1 and isinstance(events[0], ConnectionClosed)


def test_memo_gives_the_same_answers() -> None:
    first = proxy_target(b"GET", b"http://memo.example/x")
    assert proxy_target(b"GET", b"http://memo.example/x") is first
    for _ in range(2):
        with pytest.raises(NotAProxyRequest):
            proxy_target(b"GET", b"https://memo.example/x")
