"""HTTP/1.1 sans-I/O adapters: bytes in, events out; commands in, bytes out.

Every input is fed three ways (h11's ``tr()`` habit): whole, one byte at a time, and followed
by the bytes of a next message. All three must give the same events; a malformed input must
raise the error carrying its reply (400, 431 toward clients; 502 toward origins) by the time
its last byte arrives, whichever way it came.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from revproxy.errors import BackendProtocolError, ClientProtocolError, HeaderTooLarge
from revproxy.proto.events import (
    ConnectionClosed,
    DataReceived,
    Event,
    InformationalReceived,
    MessageEnded,
    RequestReceived,
    ResponseReceived,
)
from revproxy.proto.http1.exact import H1Client, H1Server

NEXT_REQUEST = b"GET /next HTTP/1.1\r\nHost: app.test\r\n\r\n"
NEXT_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext"


def merged(events: list[Event]) -> list[Event]:
    """Join adjacent DataReceived: how bytes are split must not matter to the consumer."""
    out: list[Event] = []
    for ev in events:
        if isinstance(ev, DataReceived) and out and isinstance(out[-1], DataReceived):
            out[-1] = DataReceived(stream_id=ev.stream_id, data=out[-1].data + ev.data)
        else:
            out.append(ev)
    return out


def feed(parser: H1Server | H1Client, data: bytes, *, bytewise: bool = False) -> list[Event]:
    if not bytewise:
        return parser.receive_data(data)
    events: list[Event] = []
    for i in range(len(data)):
        events += parser.receive_data(data[i : i + 1])
    return events


def three_ways(
    make: Callable[[], H1Server | H1Client], data: bytes, trailing: bytes
) -> list[Event]:
    """Events for ``data`` fed whole, byte by byte, and followed by ``trailing``; all agree."""
    whole = merged(feed(make(), data))
    assert merged(feed(make(), data, bytewise=True)) == whole
    assert merged(feed(make(), data + trailing)) == whole
    return whole


def raises_three_ways(
    make: Callable[[], H1Server | H1Client],
    data: bytes,
    trailing: bytes,
    error: type[Exception],
    status: int,
) -> None:
    """``data`` is refused whole, byte by byte (by its last byte), and with trailing bytes."""
    for bytewise, extra in ((False, b""), (True, b""), (False, trailing)):
        parser = make()
        with pytest.raises(error) as info:
            feed(parser, data + extra, bytewise=bytewise)
        assert getattr(info.value, "status", None) == status


def server() -> H1Server:
    return H1Server(max_header_size=1024)


def request_events(data: bytes) -> list[Event]:
    return three_ways(server, data, NEXT_REQUEST)


# --- requests: good ------------------------------------------------------------------------


def test_simple_get() -> None:
    events = request_events(b"GET /a?b=1 HTTP/1.1\r\nHost: App.Test:8080\r\nAccept: */*\r\n\r\n")
    assert events == [
        RequestReceived(
            stream_id=1,
            method=b"GET",
            target=b"/a?b=1",
            authority=b"App.Test:8080",
            headers=[(b"host", b"App.Test:8080"), (b"accept", b"*/*")],
            http_version=b"1.1",
        ),
        MessageEnded(stream_id=1, trailers=[]),
    ]


def test_content_length_body() -> None:
    events = request_events(
        b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world"
    )
    assert isinstance(events[0], RequestReceived)
    assert events[1:] == [
        DataReceived(stream_id=1, data=b"hello world"),
        MessageEnded(stream_id=1, trailers=[]),
    ]


def test_chunked_body_with_trailers() -> None:
    events = request_events(
        b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Sum: 42\r\n\r\n"
    )
    assert events[1:] == [
        DataReceived(stream_id=1, data=b"hello world"),
        MessageEnded(stream_id=1, trailers=[(b"x-sum", b"42")]),
    ]


def test_empty_lines_before_the_request_line_are_ignored() -> None:
    events = request_events(b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert isinstance(events[0], RequestReceived) and events[0].target == b"/"


@pytest.mark.parametrize(
    ("target", "authority", "path"),
    [
        (b"http://app.test/p?q=1", b"app.test", b"/p?q=1"),
        (b"HTTPS://App.Test:8443/p", b"App.Test:8443", b"/p"),
        (b"http://app.test", b"app.test", b"/"),
        (b"http://app.test?q", b"app.test", b"/?q"),
        (b"http://[::1]:8080/x", b"[::1]:8080", b"/x"),
    ],
)
def test_absolute_form_is_reduced_to_origin_form(
    target: bytes, authority: bytes, path: bytes
) -> None:
    """RFC 9112 §3.2.2: accept absolute-form, and ignore the Host header it came with."""
    events = request_events(b"GET " + target + b" HTTP/1.1\r\nHost: wrong.test\r\nX: 1\r\n\r\n")
    req = events[0]
    assert isinstance(req, RequestReceived)
    assert req.target == path
    assert req.authority == authority
    assert [v for n, v in req.headers if n == b"host"] == [authority]
    assert (b"x", b"1") in req.headers


def test_asterisk_and_authority_forms() -> None:
    (req, _) = request_events(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
    assert isinstance(req, RequestReceived) and req.target == b"*"
    (req, *_) = request_events(b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n")
    assert isinstance(req, RequestReceived) and req.target == b"a.test:443"


def test_http10_request() -> None:
    # HTTP/1.0 without keep-alive ends the connection: no next request may follow.
    (req, end) = three_ways(server, b"GET / HTTP/1.0\r\nHost: a\r\n\r\n", b"")
    assert isinstance(req, RequestReceived) and req.http_version == b"1.0"
    assert isinstance(end, MessageEnded)


def test_head_exactly_at_the_limit_is_accepted() -> None:
    start = b"GET / HTTP/1.1\r\nHost: a\r\nX: "
    head = start + b"v" * (1024 - len(start) - 4) + b"\r\n\r\n"
    assert len(head) == 1024
    events = request_events(head)
    assert isinstance(events[0], RequestReceived)


def test_pipelined_requests_and_keep_alive() -> None:
    h1 = server()
    events = h1.receive_data(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n" + NEXT_REQUEST)
    assert [type(e) for e in events] == [RequestReceived, MessageEnded]
    assert h1.request_complete and not h1.response_started
    out = h1.send_response(200, [(b"content-length", b"2")])
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert h1.response_started
    out += h1.send_data(b"ok") + h1.send_end()
    assert h1.keep_alive
    events = h1.start_next_cycle()
    assert isinstance(events[0], RequestReceived)
    assert events[0].target == b"/next" and events[0].stream_id == 2
    assert isinstance(events[1], MessageEnded)


def test_clean_close_between_requests() -> None:
    h1 = server()
    assert h1.receive_data(b"") == [ConnectionClosed(stream_id=0)]


def test_partial_head_is_reported() -> None:
    h1 = server()
    assert not h1.has_partial_head
    assert h1.receive_data(b"GET / HT") == []
    assert h1.has_partial_head


# --- requests: malformed -----------------------------------------------------------------------

MALFORMED_REQUESTS = {
    "cl-and-te": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n"
    ),
    "te-and-cl": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
    ),
    "conflicting-cl": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"
    ),
    "cl-list": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n",
    "cl-not-a-number": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: five\r\n\r\n",
    "te-not-chunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n 2\r\n\r\n",
    "obs-fold-tab": b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n\t2\r\n\r\n",
    "obs-fold-first-line": b"GET / HTTP/1.1\r\n Host: a\r\n\r\n",
    "bare-lf": b"GET / HTTP/1.1\nHost: a\n\n",
    "bare-lf-one-line": b"GET / HTTP/1.1\r\nHost: a\nX: 1\r\n\r\n",
    "bare-lf-end": b"GET / HTTP/1.1\r\nHost: a\r\n\n",
    "lone-cr": b"GET / HTTP/1.1\r\nHost: a\rX: 1\r\n\r\n",
    "lone-cr-request-line": b"GET /\r HTTP/1.1\r\nHost: a\r\n\r\n",
    "double-cr": b"GET / HTTP/1.1\r\nHost: a\r\r\n\r\n",
    "absolute-form-userinfo": b"GET http://user@a/ HTTP/1.1\r\nHost: a\r\n\r\n",
    "absolute-form-empty-authority": b"GET http:///p HTTP/1.1\r\nHost: a\r\n\r\n",
    "relative-target": b"GET index.html HTTP/1.1\r\nHost: a\r\n\r\n",
    "space-before-colon": b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    "space-in-name": b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: 1\r\n\r\n",
    "control-in-name": b"GET / HTTP/1.1\r\nHost: a\r\nX-\x01: 1\r\n\r\n",
    "nul-in-value": b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
    "no-host": b"GET / HTTP/1.1\r\n\r\n",
    "two-hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "no-version": b"GET /\r\nHost: a\r\n\r\n",
    "garbage": b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
}

MALFORMED_BODIES = {
    "bad-chunk-size": b"zz\r\nhello\r\n0\r\n\r\n",
    "absurd-chunk-size": b"f" * 64 + b"\r\nhello\r\n0\r\n\r\n",
    "negative-chunk-size": b"-5\r\nhello\r\n0\r\n\r\n",
    "chunk-without-crlf": b"5\r\nhelloXX0\r\n\r\n",
    "chunk-size-bare-lf": b"5\nhello\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(MALFORMED_REQUESTS))
def test_malformed_request_head_gets_400(name: str) -> None:
    raises_three_ways(server, MALFORMED_REQUESTS[name], NEXT_REQUEST, ClientProtocolError, 400)


@pytest.mark.parametrize("name", sorted(MALFORMED_BODIES))
def test_malformed_chunked_body_gets_400(name: str) -> None:
    head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    raises_three_ways(server, head + MALFORMED_BODIES[name], NEXT_REQUEST, ClientProtocolError, 400)


def test_eof_inside_a_head_gets_400() -> None:
    h1 = server()
    assert h1.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n") == []
    with pytest.raises(ClientProtocolError):
        h1.receive_data(b"")


def test_eof_inside_a_body_is_an_error() -> None:
    h1 = server()
    h1.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
    with pytest.raises(ClientProtocolError):
        h1.receive_data(b"")


def test_oversized_head_whole_gets_431() -> None:
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 1100 + b"\r\n\r\n"
    raises_three_ways(server, head, NEXT_REQUEST, HeaderTooLarge, 431)


def test_head_one_byte_over_the_limit_gets_431() -> None:
    start = b"GET / HTTP/1.1\r\nHost: a\r\nX: "
    head = start + b"v" * (1025 - len(start) - 4) + b"\r\n\r\n"
    assert len(head) == 1025
    raises_three_ways(server, head, NEXT_REQUEST, HeaderTooLarge, 431)


def test_oversized_head_in_pieces_gets_431_before_it_ends() -> None:
    """A head that never ends is refused once it passes the limit, not when it completes."""
    h1 = server()
    h1.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n")
    with pytest.raises(HeaderTooLarge):
        for _ in range(200):
            h1.receive_data(b"X-Many: 0123456789\r\n")


def test_many_small_headers_over_the_limit_get_431() -> None:
    head = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Many: 0123456789\r\n" * 60 + b"\r\n"
    raises_three_ways(server, head, NEXT_REQUEST, HeaderTooLarge, 431)


def test_errors_raised_for_a_second_request_too() -> None:
    h1 = server()
    h1.receive_data(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n" + MALFORMED_REQUESTS["cl-and-te"])
    h1.send_response(200, [(b"content-length", b"0")])
    h1.send_end()
    with pytest.raises(ClientProtocolError):
        h1.start_next_cycle()


# --- responses (backend side) ------------------------------------------------------------------


def client(method: bytes = b"GET") -> H1Client:
    c = H1Client(max_header_size=1024)
    c.send_request(method, b"/", [(b"host", b"origin")])
    c.send_end()
    return c


def response_events(data: bytes, method: bytes = b"GET") -> list[Event]:
    return three_ways(lambda: client(method), data, NEXT_RESPONSE)


def test_response_with_content_length() -> None:
    events = response_events(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: x\r\n\r\nhello")
    assert events == [
        ResponseReceived(
            stream_id=1,
            status=200,
            headers=[(b"content-length", b"5"), (b"server", b"x")],
            reason=b"OK",
            http_version=b"1.1",
        ),
        DataReceived(stream_id=1, data=b"hello"),
        MessageEnded(stream_id=1, trailers=[]),
    ]


def test_chunked_response_with_trailers() -> None:
    events = response_events(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n"
    )
    assert events[1:] == [
        DataReceived(stream_id=1, data=b"abcde"),
        MessageEnded(stream_id=1, trailers=[(b"x-t", b"1")]),
    ]


def test_informational_responses_come_first() -> None:
    events = response_events(
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 204 No Content\r\n\r\n"
    )
    assert events == [
        InformationalReceived(stream_id=1, status=100, headers=[]),
        InformationalReceived(
            stream_id=1, status=103, headers=[(b"link", b"</a.css>; rel=preload")]
        ),
        ResponseReceived(
            stream_id=1, status=204, headers=[], reason=b"No Content", http_version=b"1.1"
        ),
        MessageEnded(stream_id=1, trailers=[]),
    ]


def test_response_to_head_has_no_body() -> None:
    events = response_events(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", method=b"HEAD")
    assert [type(e) for e in events] == [ResponseReceived, MessageEnded]


def test_response_delimited_by_close() -> None:
    c = client()
    events = c.receive_data(b"HTTP/1.1 200 OK\r\n\r\nsome bytes")
    assert [type(e) for e in events] == [ResponseReceived, DataReceived]
    assert c.receive_data(b"") == [
        MessageEnded(stream_id=1, trailers=[]),
        ConnectionClosed(stream_id=1),
    ]
    assert not c.reusable


def test_complete_response_leaves_the_connection_reusable() -> None:
    c = client()
    c.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert c.response_complete and c.reusable
    c = client()
    c.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    assert not c.reusable


MALFORMED_RESPONSES = {
    "garbage": b"this is not HTTP\r\n\r\n",
    "bad-status": b"HTTP/1.1 2000 OK\r\n\r\n",
    "conflicting-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    "bad-chunk-size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
    "space-in-name": b"HTTP/1.1 200 OK\r\nBad Name: 1\r\nContent-Length: 0\r\n\r\n",
    "oversized-head": b"HTTP/1.1 200 OK\r\nX: " + b"v" * 2000 + b"\r\n\r\n",
    "oversized-informational": b"HTTP/1.1 103 Early Hints\r\nX: " + b"v" * 2000 + b"\r\n\r\n",
}


def test_response_head_at_the_limit_is_accepted() -> None:
    start = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX: "
    head = start + b"v" * (1024 - len(start) - 4) + b"\r\n\r\n"
    events = response_events(head)
    assert [type(e) for e in events] == [ResponseReceived, MessageEnded]
    # Many heads in a row are each measured on their own.
    hint = b"HTTP/1.1 103 Early Hints\r\nX: " + b"v" * 900 + b"\r\n\r\n"
    events = response_events(hint * 3 + head)
    assert [type(e) for e in events] == [InformationalReceived] * 3 + [
        ResponseReceived,
        MessageEnded,
    ]


@pytest.mark.parametrize("name", sorted(MALFORMED_RESPONSES))
def test_malformed_response_is_a_backend_error(name: str) -> None:
    raises_three_ways(client, MALFORMED_RESPONSES[name], NEXT_RESPONSE, BackendProtocolError, 502)


def test_eof_before_any_response_is_a_backend_error() -> None:
    c = client()
    with pytest.raises(BackendProtocolError):
        c.receive_data(b"")


# --- sending --------------------------------------------------------------------------------------


def test_request_serialisation() -> None:
    c = H1Client()
    out = c.send_request(b"POST", b"/p", [(b"host", b"a"), (b"transfer-encoding", b"chunked")])
    assert out == b"POST /p HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n"
    assert c.send_data(b"abc") == b"3\r\nabc\r\n"
    assert c.send_data(b"") == b""
    assert c.send_end([(b"x-t", b"1")]) == b"0\r\nx-t: 1\r\n\r\n"


def test_request_body_beyond_its_length_is_refused() -> None:
    c = H1Client()
    c.send_request(b"POST", b"/", [(b"host", b"a"), (b"content-length", b"2")])
    with pytest.raises(ClientProtocolError):
        c.send_data(b"abc")


def test_response_without_length_goes_out_chunked() -> None:
    h1 = server()
    h1.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    head = h1.send_response(200, [(b"content-type", b"text/plain")])
    assert b"transfer-encoding: chunked\r\n" in head.lower()
    assert h1.send_data(b"hello") == b"5\r\nhello\r\n"
    assert h1.send_end() == b"0\r\n\r\n"
    assert h1.keep_alive


def test_response_to_http10_without_length_closes() -> None:
    h1 = server()
    h1.receive_data(b"GET / HTTP/1.0\r\nHost: a\r\n\r\n")
    head = h1.send_response(200, [])
    assert b"connection: close" in head.lower()
    assert h1.send_data(b"hello") == b"hello"
    h1.send_end()
    assert not h1.keep_alive


def test_response_to_head_sends_no_body() -> None:
    h1 = server()
    h1.receive_data(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
    head = h1.send_response(200, [(b"content-length", b"5")])
    assert head.endswith(b"\r\n\r\n") and b"content-length: 5" in head
    assert h1.send_end() == b""
    assert h1.keep_alive


def test_informational_and_reason() -> None:
    h1 = server()
    h1.receive_data(
        b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n"
    )
    assert h1.send_informational(100, []).startswith(b"HTTP/1.1 100 ")
    assert h1.send_response(404, [(b"content-length", b"0")]).startswith(
        b"HTTP/1.1 404 Not Found\r\n"
    )


def test_response_body_beyond_its_length_is_a_backend_error() -> None:
    h1 = server()
    h1.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    h1.send_response(200, [(b"content-length", b"1")])
    with pytest.raises(BackendProtocolError):
        h1.send_data(b"too long")
