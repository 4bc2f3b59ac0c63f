"""HTTP/2 sans-I/O adapters: frames in, events out; commands in, frames out.

A well-behaved peer is an ``h2`` connection; a misbehaving one writes raw frames with
``hyperframe`` (h2spec is not available here: these are the RFC 9113 rules it would check).
Inputs are fed three ways (whole, one byte at a time, followed by the next stream's bytes) and
must give the same events. Malformed requests are stream errors (RST_STREAM PROTOCOL_ERROR,
the connection lives on); floods and window violations are connection errors (GOAWAY with
their code, and the error raised carries it).
"""

from __future__ import annotations

import random

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest
from h2.utilities import HeaderValidationFlags, normalize_outbound_headers, validate_headers
from hpack import Decoder, Encoder, NeverIndexedHeaderTuple
from hpack.exceptions import HPACKDecodingError, OversizedHeaderListError
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
    WindowUpdateFrame,
)

from revproxy.errors import (
    H2_CANCEL,
    H2_ENHANCE_YOUR_CALM,
    H2_NO_ERROR,
    H2_PROTOCOL_ERROR,
    H2_REFUSED_STREAM,
    BackendProtocolError,
    ClientProtocolError,
)
from revproxy.proto.events import (
    DataReceived,
    Event,
    GoAwayReceived,
    InformationalReceived,
    MessageEnded,
    PingAcknowledged,
    RequestReceived,
    ResponseReceived,
    StreamReset,
    WindowUpdated,
)
from revproxy.proto.h2 import check as check
from revproxy.proto.h2 import hpack_codec as hpack_codec
from revproxy.proto.h2.client import H2Client
from revproxy.proto.h2.frames import PREFACE
from revproxy.proto.h2.server import H2Server

FLOW_CONTROL_ERROR = 0x3
FRAME_SIZE_ERROR = 0x6

GET = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"app.test"), (b":path", b"/")]


def post(length: int | None = None, path: bytes = b"/up") -> list[tuple[bytes, bytes]]:
    head = [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":authority", b"app.test"),
        (b":path", path),
    ]
    if length is not None:
        head.append((b"content-length", str(length).encode()))
    return head


def frames(data: bytes) -> list[Frame]:
    """Parse the frames a side sent (after its preface, if a client's)."""
    if data.startswith(PREFACE):
        data = data[len(PREFACE) :]
    out: list[Frame] = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        out.append(frame)
        data = data[9 + length :]
    return out


def of(kind: type[Frame], data: bytes) -> list[Frame]:
    return [f for f in frames(data) if isinstance(f, kind)]


def useful(events: list[Event]) -> list[Event]:
    """Events minus window notices (their number depends on how bytes were split), with
    adjacent DATA joined."""
    out: list[Event] = []
    for ev in events:
        if isinstance(ev, WindowUpdated):
            continue
        if isinstance(ev, DataReceived) and out and isinstance(out[-1], DataReceived):
            out[-1] = DataReceived(stream_id=ev.stream_id, data=out[-1].data + ev.data)
        else:
            out.append(ev)
    return out


class Peer:
    """A client that speaks through h2 (validation of what it sends is off on purpose)."""

    def __init__(self) -> None:
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.initiate_connection()
        self.encoder = Encoder()

    def bytes(self) -> bytes:
        return self.conn.data_to_send()

    def raw_headers(
        self, sid: int, headers: list[tuple[bytes, bytes]], *, end: bool = True
    ) -> bytes:
        """A HEADERS frame encoded outside h2's state machine (h2 would refuse to send it)."""
        f = HeadersFrame(sid)
        f.data = self.encoder.encode(headers)
        f.flags.add("END_HEADERS")
        if end:
            f.flags.add("END_STREAM")
        return f.serialize()

    def trailers(self, sid: int, headers: list[tuple[bytes, bytes]]) -> bytes:
        f = HeadersFrame(sid)
        f.data = self.encoder.encode(headers)
        f.flags.add("END_HEADERS")
        f.flags.add("END_STREAM")
        return f.serialize()


def connected(**settings: int) -> tuple[H2Server, Peer]:
    server = H2Server(**settings)
    peer = Peer()
    server.receive_data(peer.bytes())
    peer.conn.receive_data(server.data_to_send())
    server.receive_data(peer.bytes())  # the SETTINGS ack
    return server, peer


def feed(server: H2Server, data: bytes, *, bytewise: bool = False, now: float = 0.0) -> list[Event]:
    if not bytewise:
        return server.receive_data(data, now)
    events: list[Event] = []
    for i in range(len(data)):
        events += server.receive_data(data[i : i + 1], now)
    return events


def three_ways(data: bytes, trailing: bytes) -> list[Event]:
    """Events for a client's preface + ``data``, fed whole, bytewise and with ``trailing``
    (the events of ``trailing`` are dropped); all three agree."""
    results = []
    for mode in ("whole", "bytewise", "trailing"):
        server = H2Server()
        peer = Peer()
        wire = peer.bytes() + data
        if mode == "trailing":
            events = useful(feed(server, wire + trailing))
            sid_limit = max(getattr(e, "stream_id", 0) for e in useful(feed(H2Server(), wire)))
            events = [e for e in events if getattr(e, "stream_id", 0) <= sid_limit]
        else:
            events = useful(feed(server, wire, bytewise=mode == "bytewise"))
        results.append(events)
    assert results[0] == results[1] == results[2]
    return results[0]


# --- requests -----------------------------------------------------------------------------


def test_request_with_body_and_trailers_three_ways() -> None:
    peer = Peer()
    peer.bytes()
    data = peer.raw_headers(1, [*post(5), (b"te", b"trailers")], end=False)
    data += DataFrame(1, data=b"hel").serialize() + DataFrame(1, data=b"lo").serialize()
    data += peer.trailers(1, [(b"x-checksum", b"abc")])
    events = three_ways(data, peer.raw_headers(3, GET))
    req, body, end = events
    assert isinstance(req, RequestReceived)
    assert (req.method, req.target, req.authority, req.http_version) == (
        b"POST",
        b"/up",
        b"app.test",
        b"2",
    )
    assert req.headers[0] == (b"host", b"app.test")  # :authority becomes Host for HTTP/1.1
    assert (b"te", b"trailers") in req.headers
    assert not req.ended
    assert body == DataReceived(stream_id=1, data=b"hello")
    assert end == MessageEnded(stream_id=1, trailers=[(b"x-checksum", b"abc")])


def test_request_without_body_is_ended_with_its_head() -> None:
    peer = Peer()
    peer.bytes()
    data = peer.raw_headers(1, GET)
    events = three_ways(data, peer.raw_headers(3, GET))
    assert isinstance(events[0], RequestReceived) and events[0].ended
    assert events[1] == MessageEnded(stream_id=1, trailers=[])


def test_split_cookies_are_joined() -> None:
    server, peer = connected()
    head = [*GET, (b"cookie", b"a=1"), (b"cookie", b"b=2")]
    (req, _) = useful(server.receive_data(peer.raw_headers(1, head)))
    assert isinstance(req, RequestReceived)
    assert (b"cookie", b"a=1; b=2") in req.headers


def test_host_stands_in_for_a_missing_authority() -> None:
    server, peer = connected()
    head = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"), (b"host", b"h.test")]
    (req, _) = useful(server.receive_data(peer.raw_headers(1, head)))
    assert isinstance(req, RequestReceived) and req.authority == b"h.test"


# --- malformed requests are stream errors -------------------------------------------------

MALFORMED = {
    "no-path": [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a.test")],
    "no-method": [(b":scheme", b"https"), (b":authority", b"a.test"), (b":path", b"/")],
    "custom-pseudo": [*GET, (b":foo", b"bar")],
    "pseudo-after-regular": [
        (b":method", b"GET"),
        (b"accept", b"*/*"),
        (b":scheme", b"https"),
        (b":path", b"/"),
        (b":authority", b"a.test"),
    ],
    "duplicate-method": [(b":method", b"GET"), *GET],
    "status-in-request": [*GET[:1], (b":status", b"200"), *GET[1:]],
    "empty-path": [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"")],
    "relative-path": [*GET[:3], (b":path", b"index.html")],
    "uppercase-name": [*GET, (b"Accept", b"*/*")],
    "connection": [*GET, (b"connection", b"keep-alive")],
    "keep-alive": [*GET, (b"keep-alive", b"timeout=5")],
    "proxy-connection": [*GET, (b"proxy-connection", b"keep-alive")],
    "transfer-encoding": [*GET, (b"transfer-encoding", b"chunked")],
    "upgrade": [*GET, (b"upgrade", b"websocket")],
    "te-gzip": [*GET, (b"te", b"gzip")],
    "host-differs": [*GET, (b"host", b"other.test")],
    "no-authority": [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/")],
    "value-with-newline": [*GET, (b"x-a", b"1\nx-b: 2")],
    "value-with-spaces": [*GET, (b"x-a", b" 1 ")],
    "connect-with-path": [
        (b":method", b"CONNECT"),
        (b":authority", b"a.test:443"),
        (b":path", b"/"),
    ],
    "unknown-scheme": [(b":method", b"GET"), (b":scheme", b"ftp"), (b":path", b"/"), GET[2]],
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_request_resets_its_stream_only(case: str) -> None:
    server, peer = connected()
    events = useful(server.receive_data(peer.raw_headers(1, MALFORMED[case])))
    assert len(events) == 1
    reset = events[0]
    assert isinstance(reset, StreamReset) and not reset.remote
    assert reset.error_code == H2_PROTOCOL_ERROR and reset.reason
    (rst,) = of(RstStreamFrame, server.data_to_send())
    assert (rst.stream_id, rst.error_code) == (1, H2_PROTOCOL_ERROR)
    # The connection lives on: the next request is served.
    events = useful(server.receive_data(peer.raw_headers(3, GET)))
    assert isinstance(events[0], RequestReceived) and events[0].stream_id == 3


def test_te_trailers_is_allowed() -> None:
    server, peer = connected()
    events = useful(server.receive_data(peer.raw_headers(1, [*GET, (b"te", b"trailers")])))
    assert isinstance(events[0], RequestReceived)


def test_pseudo_header_in_trailers_resets_the_stream() -> None:
    server, peer = connected()
    data = peer.raw_headers(1, post(), end=False)
    events = useful(server.receive_data(data + peer.trailers(1, [(b":path", b"/sneaky")])))
    assert isinstance(events[-1], StreamReset) and events[-1].error_code == H2_PROTOCOL_ERROR


# --- content-length against DATA (RFC 9113 §8.1.1) ----------------------------------------


def body_frames(sid: int, chunks: list[bytes], *, padded: int = 0) -> bytes:
    out = b""
    for i, chunk in enumerate(chunks):
        f = DataFrame(sid, data=chunk)
        if padded:
            f.flags.add("PADDED")
            f.pad_length = padded
        if i == len(chunks) - 1:
            f.flags.add("END_STREAM")
        out += f.serialize()
    return out


@pytest.mark.parametrize(
    ("declared", "chunks"),
    [
        (5, [b"hello", b"!"]),  # more than declared
        (5, [b"hel"]),  # ends short
        (0, [b"x"]),
        (5, [b"hello!"]),  # one frame over
    ],
)
@pytest.mark.parametrize("bytewise", [False, True])
def test_content_length_mismatch_is_a_stream_error(
    declared: int, chunks: list[bytes], bytewise: bool
) -> None:
    server, peer = connected()
    data = peer.raw_headers(1, post(declared), end=False) + body_frames(1, chunks)
    events = useful(feed(server, data, bytewise=bytewise))
    assert isinstance(events[0], RequestReceived)
    assert isinstance(events[-1], StreamReset) and events[-1].error_code == H2_PROTOCOL_ERROR
    assert not any(isinstance(e, MessageEnded) for e in events)
    rst = of(RstStreamFrame, server.data_to_send())
    assert rst and rst[0].error_code == H2_PROTOCOL_ERROR
    # The connection window is credited back and the connection serves on.
    events = useful(server.receive_data(peer.raw_headers(3, GET)))
    assert isinstance(events[0], RequestReceived)


def test_end_with_the_head_despite_content_length_is_a_stream_error() -> None:
    server, peer = connected()
    events = useful(server.receive_data(peer.raw_headers(1, post(10), end=True)))
    assert isinstance(events[-1], StreamReset) and events[-1].error_code == H2_PROTOCOL_ERROR


def test_trailers_ending_a_short_body_are_a_stream_error() -> None:
    server, peer = connected()
    data = peer.raw_headers(1, post(10), end=False) + DataFrame(1, data=b"abc").serialize()
    events = useful(server.receive_data(data + peer.trailers(1, [(b"x-t", b"1")])))
    assert isinstance(events[-1], StreamReset) and not events[-1].remote


def test_padding_is_not_counted_as_content() -> None:
    server, peer = connected()
    data = peer.raw_headers(1, post(5), end=False) + body_frames(1, [b"hel", b"lo"], padded=7)
    events = useful(server.receive_data(data))
    assert events[1:] == [
        DataReceived(stream_id=1, data=b"hello"),
        MessageEnded(stream_id=1, trailers=[]),
    ]


# --- connection errors --------------------------------------------------------------------


def goaway_code(server: H2Server | H2Client) -> int:
    (frame,) = of(GoAwayFrame, server.data_to_send())
    return int(frame.error_code)


def test_rapid_reset_gets_goaway_enhance_your_calm() -> None:
    server, peer = connected()
    data = b""
    for i in range(201):
        sid = 1 + 2 * i
        data += (
            peer.raw_headers(sid, GET, end=False) + RstStreamFrame(sid, error_code=8).serialize()
        )
    with pytest.raises(ClientProtocolError) as err:
        server.receive_data(data, now=100.0)
    assert err.value.h2_code == H2_ENHANCE_YOUR_CALM
    assert goaway_code(server) == H2_ENHANCE_YOUR_CALM


def test_resets_spread_over_time_are_fine() -> None:
    server, peer = connected()
    for second in range(5):
        data = b""
        for i in range(150):
            sid = 1 + 2 * (second * 150 + i)
            data += peer.raw_headers(sid, GET, end=False)
            data += RstStreamFrame(sid, error_code=8).serialize()
        events = server.receive_data(data, now=float(second))
        assert sum(isinstance(e, StreamReset) and e.remote for e in events) == 150
    assert not of(GoAwayFrame, server.data_to_send())


def test_continuation_flood_gets_goaway_before_it_is_buffered() -> None:
    server, _peer = connected()
    head = HeadersFrame(1)
    head.data = b""
    data = head.serialize()
    for _ in range(100):
        data += ContinuationFrame(1, data=b"").serialize()
    with pytest.raises(ClientProtocolError) as err:
        server.receive_data(data)
    assert err.value.h2_code == H2_ENHANCE_YOUR_CALM
    assert goaway_code(server) == H2_ENHANCE_YOUR_CALM


def test_oversized_header_block_gets_goaway() -> None:
    server, _peer = connected()
    head = HeadersFrame(1)
    head.data = b"\x00" * 16000
    data = head.serialize()
    for _ in range(3):
        data += ContinuationFrame(1, data=b"\x00" * 16000).serialize()
    with pytest.raises(ClientProtocolError) as err:
        feed(server, data, bytewise=False)
    assert err.value.h2_code == H2_ENHANCE_YOUR_CALM


def test_header_list_over_the_limit_gets_goaway() -> None:
    server, peer = connected()
    # Small on the wire (HPACK indexes the repeats), large once decoded.
    big = [*GET, *[(b"x-h", b"v" * 400)] * 60]
    with pytest.raises(ClientProtocolError) as err:
        server.receive_data(peer.raw_headers(1, big))
    assert err.value.h2_code == H2_ENHANCE_YOUR_CALM


def test_data_beyond_the_window_gets_flow_control_error() -> None:
    server, peer = connected()
    data = peer.raw_headers(1, post(), end=False)
    for _ in range(5):  # 5 x 16 KiB > the 64 KiB stream window
        data += DataFrame(1, data=b"x" * 16384).serialize()
    with pytest.raises(ClientProtocolError) as err:
        server.receive_data(data)
    assert err.value.h2_code == FLOW_CONTROL_ERROR
    assert goaway_code(server) == FLOW_CONTROL_ERROR


def test_frame_over_max_frame_size_is_refused_on_its_header() -> None:
    server, peer = connected()
    header = (100_000).to_bytes(3, "big") + b"\x00\x00" + (1).to_bytes(4, "big")
    with pytest.raises(ClientProtocolError) as err:
        server.receive_data(peer.raw_headers(1, post(), end=False) + header)
    assert err.value.h2_code == FRAME_SIZE_ERROR


def test_bad_preface_is_a_connection_error() -> None:
    with pytest.raises(ClientProtocolError):
        H2Server().receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")


# --- flow control -------------------------------------------------------------------------


def test_received_data_is_acknowledged_only_once_consumed() -> None:
    # One stream: the connection window is then one stream window, and h2 updates it too.
    server, peer = connected(max_concurrent_streams=1)
    data = peer.raw_headers(1, post(), end=False)
    data += b"".join(DataFrame(1, data=b"x" * 10000).serialize() for _ in range(4))
    server.receive_data(data)
    assert not of(WindowUpdateFrame, server.data_to_send())
    server.acknowledge(1, 40000)
    updates = of(WindowUpdateFrame, server.data_to_send())
    assert {f.stream_id for f in updates} == {0, 1}


def test_forgetting_a_stream_credits_the_connection_window() -> None:
    server, peer = connected(max_concurrent_streams=1)
    data = peer.raw_headers(1, post(), end=False)
    data += b"".join(DataFrame(1, data=b"x" * 10000).serialize() for _ in range(4))
    server.receive_data(data)
    server.data_to_send()
    server.forget(1, H2_CANCEL)
    out = server.data_to_send()
    assert any(f.stream_id == 0 for f in of(WindowUpdateFrame, out))
    (rst,) = of(RstStreamFrame, out)
    assert rst.error_code == H2_CANCEL


def test_a_finished_response_ends_an_unread_request_with_no_error() -> None:
    server, peer = connected()
    server.receive_data(peer.raw_headers(1, post(), end=False))
    server.send_response(1, 200, [(b"content-length", b"0")], end=True)
    server.forget(1, H2_CANCEL)
    (rst,) = of(RstStreamFrame, server.data_to_send())
    assert rst.error_code == H2_NO_ERROR


def test_sending_respects_the_window_and_frame_size() -> None:
    server, peer = connected()
    peer.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000})
    server.receive_data(peer.bytes())
    server.receive_data(peer.raw_headers(1, GET))
    server.send_response(1, 200, [])
    assert server.send_data(1, b"y" * 5000) == 1000
    assert server.send_data(1, b"y" * 4000) == 0  # no window left
    sent = of(DataFrame, server.data_to_send())
    assert sum(len(f.data) for f in sent) == 1000
    opened = server.receive_data(WindowUpdateFrame(1, window_increment=50000).serialize())
    assert WindowUpdated(stream_id=1) in opened
    assert server.send_data(1, b"z" * 40000, end=True) == 40000
    sent = of(DataFrame, server.data_to_send())
    assert max(len(f.data) for f in sent) <= 16384
    assert "END_STREAM" in sent[-1].flags


# --- GOAWAY --------------------------------------------------------------------------------


def test_graceful_goaway_finishes_streams_in_flight_and_refuses_newer_ones() -> None:
    server, peer = connected()
    server.receive_data(peer.raw_headers(1, post(), end=False))
    server.goaway()
    (frame,) = of(GoAwayFrame, server.data_to_send())
    assert (frame.last_stream_id, frame.error_code) == (1, H2_NO_ERROR)
    # Stream 1 still receives its body and gets its answer...
    events = useful(server.receive_data(body_frames(1, [b"abc"])))
    assert events == [
        DataReceived(stream_id=1, data=b"abc"),
        MessageEnded(stream_id=1, trailers=[]),
    ]
    server.send_response(1, 200, [], end=True)
    # ... stream 3, opened after the GOAWAY, is refused unprocessed.
    events = useful(server.receive_data(peer.raw_headers(3, GET)))
    assert events == []
    rst = of(RstStreamFrame, server.data_to_send())
    assert [(f.stream_id, f.error_code) for f in rst] == [(3, H2_REFUSED_STREAM)]


def test_goaway_received_leaves_streams_in_flight_working() -> None:
    server, peer = connected()
    server.receive_data(peer.raw_headers(1, GET))
    got = server.receive_data(GoAwayFrame(0, last_stream_id=0, error_code=0).serialize())
    assert got == [GoAwayReceived(last_stream_id=0, error_code=0)]
    server.send_response(1, 200, [])
    assert server.send_data(1, b"still here", end=True) == 10


def test_malformed_goaway_is_a_connection_error() -> None:
    server, _ = connected()
    bad = (4).to_bytes(3, "big") + b"\x07\x00" + (0).to_bytes(4, "big") + b"\x00\x00\x00\x01"
    with pytest.raises(ClientProtocolError):
        server.receive_data(bad)


# --- the client side (origins over HTTP/2) ------------------------------------------------


class Origin:
    """A server that speaks through h2."""

    def __init__(self) -> None:
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self.conn.initiate_connection()


def client_connected() -> tuple[H2Client, Origin]:
    client = H2Client()
    origin = Origin()
    origin.conn.receive_data(client.data_to_send())
    client.receive_data(origin.conn.data_to_send())
    origin.conn.receive_data(client.data_to_send())
    return client, origin


def test_client_request_response_with_trailers() -> None:
    client, origin = client_connected()
    sid = client.send_request(b"POST", b"http", b"api.test", b"/svc/M", [(b"te", b"trailers")])
    assert client.send_data(sid, b"req", end=True) == 3
    got = origin.conn.receive_data(client.data_to_send())
    req = next(e for e in got if isinstance(e, h2.events.RequestReceived))
    assert (b":authority", b"api.test") in req.headers
    origin.conn.send_headers(sid, [(b":status", b"100")])
    origin.conn.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    origin.conn.send_data(sid, b"resp")
    origin.conn.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
    events = useful(client.receive_data(origin.conn.data_to_send()))
    assert events == [
        InformationalReceived(stream_id=sid, status=100, headers=[]),
        ResponseReceived(
            stream_id=sid,
            status=200,
            headers=[(b"content-type", b"application/grpc")],
            http_version=b"2",
        ),
        DataReceived(stream_id=sid, data=b"resp"),
        MessageEnded(stream_id=sid, trailers=[(b"grpc-status", b"0")]),
    ]


def test_client_trailers_only_response_is_ended_with_its_head() -> None:
    client, origin = client_connected()
    sid = client.send_request(b"POST", b"http", b"api.test", b"/svc/M", [], end=True)
    origin.conn.receive_data(client.data_to_send())
    origin.conn.send_headers(sid, [(b":status", b"200"), (b"grpc-status", b"14")], end_stream=True)
    resp, end = useful(client.receive_data(origin.conn.data_to_send()))
    assert isinstance(resp, ResponseReceived) and resp.ended
    assert isinstance(end, MessageEnded)


def test_client_response_content_length_mismatch_is_a_stream_error() -> None:
    client, origin = client_connected()
    sid = client.send_request(b"GET", b"http", b"api.test", b"/", [], end=True)
    origin.conn.receive_data(client.data_to_send())
    origin.conn.send_headers(sid, [(b":status", b"200"), (b"content-length", b"10")])
    origin.conn.send_data(sid, b"short", end_stream=True)
    events = useful(client.receive_data(origin.conn.data_to_send()))
    assert isinstance(events[-1], StreamReset) and events[-1].error_code == H2_PROTOCOL_ERROR


def test_client_head_response_content_length_is_not_weighed() -> None:
    client, origin = client_connected()
    sid = client.send_request(b"HEAD", b"http", b"api.test", b"/", [], end=True)
    origin.conn.receive_data(client.data_to_send())
    origin.conn.send_headers(
        sid, [(b":status", b"200"), (b"content-length", b"99")], end_stream=True
    )
    events = useful(client.receive_data(origin.conn.data_to_send()))
    assert isinstance(events[-1], MessageEnded)


def test_client_invalid_response_head_is_a_stream_error() -> None:
    client, origin = client_connected()
    sid = client.send_request(b"GET", b"http", b"api.test", b"/", [], end=True)
    origin.conn.receive_data(client.data_to_send())
    bad = HeadersFrame(sid)
    bad.data = Encoder().encode([(b":status", b"200"), (b"connection", b"close")])
    bad.flags.add("END_HEADERS")
    bad.flags.add("END_STREAM")
    origin.conn.data_to_send()
    events = client.receive_data(bad.serialize())
    assert isinstance(events[-1], StreamReset) and events[-1].error_code == H2_PROTOCOL_ERROR


def test_client_goaway_tells_which_streams_were_not_processed() -> None:
    client, origin = client_connected()
    first = client.send_request(b"GET", b"http", b"api.test", b"/a", [], end=True)
    second = client.send_request(b"GET", b"http", b"api.test", b"/b", [], end=True)
    origin.conn.receive_data(client.data_to_send())
    origin.conn.close_connection(last_stream_id=first)
    events = client.receive_data(origin.conn.data_to_send())
    assert events == [GoAwayReceived(last_stream_id=first, error_code=0)]
    assert second > first and not client.can_open_stream


def test_client_connection_error_is_the_origins_fault() -> None:
    client, _ = client_connected()
    with pytest.raises(BackendProtocolError):
        settings_on_a_stream = b"\x00\x00\x00\x04\x00" + (1).to_bytes(4, "big")
        client.receive_data(settings_on_a_stream)


def test_client_respects_the_servers_stream_limit() -> None:
    client = H2Client()
    origin = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    origin.local_settings = h2.settings.Settings(
        client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1}
    )
    origin.initiate_connection()
    origin.receive_data(client.data_to_send())
    client.receive_data(origin.data_to_send())
    assert client.peer_max_concurrent_streams == 1
    client.send_request(b"GET", b"http", b"api.test", b"/", [], end=False)
    assert not client.can_open_stream


# --- header blocks: our codec and checks against hpack's and h2's -------------------------
#
# http2_check.py replaces hpack's coder and h2's header validation on the hot path; these
# compare both on many generated blocks, so that what goes on the wire and what is refused
# stays what it was.

NAMES = [
    b":status",
    b"content-type",
    b"content-length",
    b"date",
    b"server",
    b"etag",
    b"x-a",
    b"X-Upper",
    b" spaced ",
    b"authorization",
    b"proxy-authorization",
    b"cookie",
    b"connection",
    b"transfer-encoding",
    b"keep-alive",
    b"set-cookie",
    b"accept-ranges",
]
VALUES = [
    b"",
    b"200",
    b"404",
    b"text/html",
    b"gzip, deflate",
    b" padded ",
    b"v",
    b"short=1",
    b"a-long-cookie-value=0123456789abcdef",
    b"x" * 300,
    b"\xc3\xa9t\xc3\xa9",
    b"bytes",
]


def random_fields(rng: random.Random, n: int) -> list[tuple[bytes, bytes]]:
    return [(rng.choice(NAMES), rng.choice(VALUES)) for _ in range(n)]


def test_encoder_writes_what_hpack_with_h2_normalisation_writes() -> None:
    rng = random.Random(7)
    ours, theirs = hpack_codec.Encoder(), Encoder()
    decoder = Decoder()
    flags = HeaderValidationFlags(False, False, True, False)
    for block_no in range(400):
        if block_no in (150, 300):  # the peer shrinks (then restores) its table
            size = 256 if block_no == 150 else 4096
            ours.header_table_size = size
            theirs.header_table_size = size
        fields = random_fields(rng, rng.randrange(1, 12))
        if rng.random() < 0.2:
            fields.append(NeverIndexedHeaderTuple(b"x-secret", b"hush"))
        expected = theirs.encode(list(normalize_outbound_headers(fields, flags)))
        assert ours.encode(fields) == expected
        decoder.decode(expected)  # and it is a valid block


def test_decoder_reads_what_hpack_reads() -> None:
    rng = random.Random(11)
    encoder = Encoder()
    ours, theirs = hpack_codec.Decoder(), Decoder()
    for _ in range(300):
        fields = [(n.strip().lower(), v) for n, v in random_fields(rng, rng.randrange(0, 12))]
        block = encoder.encode(fields, huffman=rng.random() < 0.5)
        assert ours.decode(block) == [
            (bytes(n), bytes(v)) for n, v in theirs.decode(block, raw=True)
        ]


@pytest.mark.parametrize(
    "block",
    [
        b"\x80",  # index 0
        b"\xff\x80\x80\x80\x80\x80\x01",  # integer too long
        b"\xbf",  # index beyond both tables
        b"\x40\x85ab",  # truncated name
        b"\x41\x03ab",  # truncated value
        b"\x3f\xe2\x1f",  # table size above the maximum (4097)
        b"\x82\x20",  # table size update after a field
        b"\x41\x82\xff\xff",  # invalid Huffman code
    ],
)
def test_decoder_refuses_what_hpack_refuses(block: bytes) -> None:
    with pytest.raises(HPACKDecodingError):
        Decoder().decode(block, raw=True)
    with pytest.raises(HPACKDecodingError):
        hpack_codec.Decoder().decode(block)


def test_decoder_enforces_the_header_list_size() -> None:
    block = Encoder().encode([(b"x-big", b"y" * 200)])
    with pytest.raises(OversizedHeaderListError):
        hpack_codec.Decoder(max_header_list_size=100).decode(block)


def _h2_request(raw: list[tuple[bytes, bytes]]) -> check.RequestHead | str:
    """The checks as they were: h2's validation, then ours; cookies joined at the end."""
    try:
        fields = [(bytes(n), bytes(v)) for n, v in validate_headers(raw, REQUEST_FLAGS)]
    except h2.exceptions.ProtocolError as exc:
        return str(exc)
    method = scheme = authority = path = protocol = host = None
    regular, cookies = [], []
    for name, value in fields:
        if name == b":method":
            method = value
        elif name == b":path":
            path = value
        elif name == b":authority":
            authority = value
        elif name == b":scheme":
            scheme = value
        elif name == b":protocol":
            protocol = value
        elif name == b"host":
            host = value
        elif name == b"cookie":
            cookies.append(value)
        else:
            regular.append((name, value))
    authority = host if authority is None else authority
    if not authority:
        return "no :authority"
    if method != b"CONNECT" or protocol is not None:
        if not path or not (path[:1] == b"/" or (path == b"*" and method == b"OPTIONS")):
            return "invalid :path"
        if scheme not in (b"http", b"https"):
            return "unsupported :scheme"
    assert method is not None
    if cookies:
        regular.append((b"cookie", b"; ".join(cookies)))
    regular.insert(0, (b"host", authority))
    length = next((int(v) for n, v in regular if n == b"content-length"), None)
    return check.RequestHead(
        method,
        path if path is not None else authority,
        authority,
        protocol or b"",
        regular,
        length,
    )


REQUEST_FLAGS = HeaderValidationFlags(False, False, False, False)
REQUEST_PARTS = [
    (b":method", b"GET"),
    (b":method", b"CONNECT"),
    (b":method", b"OPTIONS"),
    (b":scheme", b"https"),
    (b":scheme", b"ftp"),
    (b":path", b"/a?b"),
    (b":path", b"*"),
    (b":path", b""),
    (b":path", b"rel"),
    (b":authority", b"a.test"),
    (b":authority", b""),
    (b":protocol", b"websocket"),
    (b":status", b"200"),
    (b":x", b"1"),
    (b"host", b"a.test"),
    (b"host", b"b.test"),
    (b"cookie", b"a=1"),
    (b"cookie", b"b=2"),
    (b"te", b"trailers"),
    (b"te", b"TrAiLeRs"),
    (b"te", b"gzip"),
    (b"connection", b"close"),
    (b"upgrade", b"h2c"),
    (b"accept", b"*/*"),
    (b"Accept", b"*/*"),
    (b"x-a", b" v"),
    (b"x-a", b"v\t"),
    (b"x-a", b"a\x00b"),
    (b"x-a", b"a\rb"),
    (b"x-a", b""),
    (b"", b"v"),
    (b"x:y", b"v"),
    (b"x y", b"v"),
    (b"x\x7f", b"v"),
    (b"content-length", b"3"),
]


def test_request_checks_agree_with_h2s_validation() -> None:
    rng = random.Random(3)
    base = [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":path", b"/"),
        (b":authority", b"a.test"),
    ]
    accepted = refused = 0
    for _ in range(4000):
        raw = list(base) if rng.random() < 0.7 else []
        for _ in range(rng.randrange(0, 4)):
            raw.insert(rng.randrange(0, len(raw) + 1), rng.choice(REQUEST_PARTS))
        if rng.random() < 0.3 and raw:
            del raw[rng.randrange(0, len(raw))]
        expected = _h2_request(raw)
        got = check.request(raw, connect_protocol=True)
        if isinstance(expected, str):
            assert isinstance(got, str) and got, raw
            refused += 1
        else:
            assert got == expected, raw
            accepted += 1
    assert accepted > 500 and refused > 500


@pytest.mark.parametrize("from_client", [True, False])
def test_response_and_trailer_checks_agree_with_h2s_validation(from_client: bool) -> None:
    rng = random.Random(5)
    parts = [*REQUEST_PARTS, (b":status", b"404"), (b":status", b"99"), (b":status", b"2000")]
    trailer_flags = HeaderValidationFlags(not from_client, True, False, False)
    response_flags = HeaderValidationFlags(True, False, True, False)
    for _ in range(3000):
        raw = [(b":status", b"200")] if rng.random() < 0.6 else []
        for _ in range(rng.randrange(0, 4)):
            raw.insert(rng.randrange(0, len(raw) + 1), rng.choice(parts))
        try:
            list(validate_headers(raw, trailer_flags))
            trailers_ok = True
        except h2.exceptions.ProtocolError:
            trailers_ok = False
        assert (not isinstance(check.trailers(raw, from_client=from_client), str)) == trailers_ok
        try:
            fields = list(validate_headers(raw, response_flags))
            status = next(v for n, v in fields if n == b":status")
            response_ok = status.isdigit() and len(status) == 3 and 100 <= int(status) <= 599
        except h2.exceptions.ProtocolError:
            response_ok = False
        assert (not isinstance(check.response(raw), str)) == response_ok, raw


def test_a_cookie_before_pseudo_headers_is_malformed() -> None:
    """RFC 9113 §8.3: pseudo-headers come first (h2 let a cookie slip by, as it moved cookie
    fields to the end before validating)."""
    raw = [(b"cookie", b"a=1"), *GET]
    assert isinstance(check.request(raw, connect_protocol=True), str)


# --- the framing layer, rule by rule (what h2spec checks of a server) ---------------------


def raw(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    """A frame as bytes, whatever it says."""
    return (
        len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big") + payload
    )


def connection_error(data: bytes, **settings: int) -> int:
    """The GOAWAY code ``data`` gets from a connected server (which raises)."""
    server, _ = connected(**settings)
    with pytest.raises(ClientProtocolError) as err:
        server.receive_data(data)
    code = goaway_code(server)
    assert err.value.h2_code == code
    return code


FRAME_SIZE, STREAM_CLOSED, COMPRESSION = 0x6, 0x5, 0x9
SETTING = (1).to_bytes(2, "big")  # SETTINGS_HEADER_TABLE_SIZE, for payload lengths


@pytest.mark.parametrize(
    ("data", "code"),
    [
        # §6.5: SETTINGS on a stream, of a length not a multiple of 6, an ACK with a payload.
        (raw(0x4, 0, 1), H2_PROTOCOL_ERROR),
        (raw(0x4, 0, 0, b"\x00\x01\x00"), FRAME_SIZE),
        (raw(0x4, 0x1, 0, b"\x00" * 6), FRAME_SIZE),
        # §6.5.2: values out of range.
        (raw(0x4, 0, 0, b"\x00\x02\x00\x00\x00\x02"), H2_PROTOCOL_ERROR),
        (raw(0x4, 0, 0, b"\x00\x04\x80\x00\x00\x00"), FLOW_CONTROL_ERROR),
        (raw(0x4, 0, 0, b"\x00\x05\x00\x00\x3f\xff"), H2_PROTOCOL_ERROR),
        (raw(0x4, 0, 0, b"\x00\x05\x01\x00\x00\x00"), H2_PROTOCOL_ERROR),
        (raw(0x4, 0, 0, b"\x00\x08\x00\x00\x00\x02"), H2_PROTOCOL_ERROR),
        # §6.7: PING on a stream, of a wrong length.
        (raw(0x6, 0, 1, b"\x00" * 8), H2_PROTOCOL_ERROR),
        (raw(0x6, 0, 0, b"\x00" * 7), FRAME_SIZE),
        # §6.1, §6.2, §6.3, §6.4: frames that need a stream, on stream 0.
        (raw(0x0, 0, 0, b"x"), H2_PROTOCOL_ERROR),
        (raw(0x1, 0x4, 0, b"\x82"), H2_PROTOCOL_ERROR),
        (raw(0x2, 0, 0, b"\x00" * 5), H2_PROTOCOL_ERROR),
        (raw(0x3, 0, 0, b"\x00" * 4), H2_PROTOCOL_ERROR),
        # §5.1: frames other than HEADERS and PRIORITY on an idle stream.
        (raw(0x0, 0, 1, b"x"), H2_PROTOCOL_ERROR),
        (raw(0x3, 0, 1, b"\x00" * 4), H2_PROTOCOL_ERROR),
        (raw(0x8, 0, 1, b"\x00\x00\x00\x01"), H2_PROTOCOL_ERROR),
        # §5.1.1: a client opens odd streams only.
        (raw(0x1, 0x5, 2, b"\x82\x87\x84\x41\x01a"), H2_PROTOCOL_ERROR),
        # §6.3, §6.4, §6.9: fixed lengths.
        (raw(0x2, 0, 1, b"\x00" * 4), FRAME_SIZE),
        (raw(0x3, 0, 1, b"\x00" * 3), FRAME_SIZE),
        (raw(0x8, 0, 0, b"\x00" * 3), FRAME_SIZE),
        # §6.9: a zero increment, on the connection or a stream.
        (raw(0x8, 0, 0, b"\x00" * 4), H2_PROTOCOL_ERROR),
        # §6.9.1: the connection window beyond 2^31-1.
        (raw(0x8, 0, 0, b"\x7f\xff\xff\xff"), FLOW_CONTROL_ERROR),
        # §5.3.1: a stream that depends on itself.
        (raw(0x2, 0, 1, b"\x00\x00\x00\x01\x10"), H2_PROTOCOL_ERROR),
        (raw(0x1, 0x24, 1, b"\x00\x00\x00\x01\x10\x82"), H2_PROTOCOL_ERROR),
        # §6.10: CONTINUATION with no header block open.
        (raw(0x9, 0x4, 1, b"\x82"), H2_PROTOCOL_ERROR),
        # §6.6: push is off (a client never pushes anyway).
        (raw(0x5, 0x4, 1, b"\x00\x00\x00\x02\x82"), H2_PROTOCOL_ERROR),
        # §4.3: a header block that does not decode.
        (raw(0x1, 0x5, 1, b"\xbf"), COMPRESSION),
    ],
)
def test_frame_rules_are_connection_errors(data: bytes, code: int) -> None:
    assert connection_error(data) == code


def test_padding_as_long_as_the_frame_is_a_protocol_error() -> None:
    _, peer = connected()
    opened = peer.raw_headers(1, post(), end=False)
    assert connection_error(opened + raw(0x0, 0x8, 1, b"\x04abc")) == H2_PROTOCOL_ERROR
    assert connection_error(raw(0x1, 0xC, 1, b"\x05\x82\x87\x84\x41")) == H2_PROTOCOL_ERROR
    assert connection_error(opened + raw(0x0, 0x8, 1)) == FRAME_SIZE


def test_a_header_block_may_not_be_interrupted() -> None:
    _, peer = connected()
    block = peer.encoder.encode(GET)
    first = raw(0x1, 0x1, 1, block[:3])
    assert connection_error(first + raw(0x6, 0, 0, b"\x00" * 8)) == H2_PROTOCOL_ERROR
    assert connection_error(first + raw(0x9, 0x4, 3, block[3:])) == H2_PROTOCOL_ERROR
    assert connection_error(first + raw(0xFA, 0, 0, b"x")) == H2_PROTOCOL_ERROR


def test_a_header_block_spread_over_continuation_frames_is_one_request() -> None:
    server, peer = connected()
    block = peer.encoder.encode([*GET, (b"x-long", b"v" * 100)])
    data = raw(0x1, 0x1, 1, block[:10])
    data += raw(0x9, 0, 1, block[10:50]) + raw(0x9, 0x4, 1, block[50:])
    events = useful(feed(server, data, bytewise=True))
    assert isinstance(events[0], RequestReceived) and events[0].ended
    assert (b"x-long", b"v" * 100) in events[0].headers


def test_stream_ids_must_grow() -> None:
    server, peer = connected()
    server.receive_data(peer.raw_headers(5, GET))
    with pytest.raises(ClientProtocolError) as err:
        server.receive_data(peer.raw_headers(3, GET))
    assert err.value.h2_code == H2_PROTOCOL_ERROR


def test_more_streams_than_advertised_is_a_connection_error() -> None:
    server, peer = connected(max_concurrent_streams=2)
    server.receive_data(peer.raw_headers(1, GET, end=False) + peer.raw_headers(3, GET, end=False))
    with pytest.raises(ClientProtocolError) as err:
        server.receive_data(peer.raw_headers(5, GET, end=False))
    assert err.value.h2_code == H2_PROTOCOL_ERROR
    # A stream that closed makes room again.
    server, peer = connected(max_concurrent_streams=1)
    server.receive_data(peer.raw_headers(1, GET))
    server.send_response(1, 200, [], end=True)
    server.forget(1)
    assert isinstance(useful(server.receive_data(peer.raw_headers(3, GET)))[0], RequestReceived)


def test_unknown_frames_and_settings_are_ignored_and_pings_answered() -> None:
    server, _ = connected()
    data = raw(0xFA, 0x7, 1, b"whatever") + raw(0x4, 0, 0, b"\x00\x77\x00\x00\x00\x01")
    data += raw(0x6, 0, 0, b"12345678") + raw(0x2, 0, 9, b"\x00\x00\x00\x00\x10")
    assert useful(server.receive_data(data)) == []
    out = server.data_to_send()
    ping = [f for f in frames(out) if f.type == 0x6]
    assert len(ping) == 1 and "ACK" in ping[0].flags and ping[0].opaque_data == b"12345678"
    assert any(f.type == 0x4 and "ACK" in f.flags for f in frames(out))
    assert server.receive_data(raw(0x6, 0x1, 0, b"abcdefgh")) == [
        PingAcknowledged(data=b"abcdefgh")
    ]


def test_settings_are_acknowledged_and_the_initial_window_applies_to_open_streams() -> None:
    server, peer = connected()
    server.receive_data(peer.raw_headers(1, GET))
    server.send_response(1, 200, [])
    peer.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 10})
    events = server.receive_data(peer.bytes())
    assert WindowUpdated(stream_id=0) in events
    assert server.window(1) == 10
    assert server.send_data(1, b"x" * 100) == 10
    # A smaller window may go below 0: nothing is sent until it is positive again.
    peer.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    server.receive_data(peer.bytes())
    assert server.send_data(1, b"x") == 0 and server.window(1) == 0
    server.receive_data(raw(0x8, 0, 1, (15).to_bytes(4, "big")))
    assert server.window(1) == 5


def test_a_stream_window_beyond_the_maximum_is_a_stream_error() -> None:
    server, peer = connected()
    server.receive_data(peer.raw_headers(1, GET))
    events = server.receive_data(raw(0x8, 0, 1, b"\x7f\xff\xff\xff"))
    assert events == [
        StreamReset(
            stream_id=1, error_code=FLOW_CONTROL_ERROR, remote=False, reason=events[0].reason
        )
    ]
    (rst,) = of(RstStreamFrame, server.data_to_send())
    assert rst.error_code == FLOW_CONTROL_ERROR
    # An initial window that would push a stream's beyond the maximum: connection error.
    server, peer = connected()
    server.receive_data(peer.raw_headers(1, GET))
    server.receive_data(raw(0x8, 0, 1, b"\x7f\xff\x00\x00"))
    setting = b"\x00\x04" + (65535 + 0x10000).to_bytes(4, "big")
    with pytest.raises(ClientProtocolError) as err:
        server.receive_data(raw(0x4, 0, 0, setting))
    assert err.value.h2_code == FLOW_CONTROL_ERROR


def test_data_after_end_stream_is_a_stream_error_while_we_answer() -> None:
    server, peer = connected()
    server.receive_data(peer.raw_headers(1, GET))
    events = server.receive_data(raw(0x0, 0, 1, b"late"))
    assert [(type(e), e.error_code) for e in events] == [(StreamReset, STREAM_CLOSED)]
    (rst,) = of(RstStreamFrame, server.data_to_send())
    assert (rst.stream_id, rst.error_code) == (1, STREAM_CLOSED)
    assert not server.stream_open(1)
    # The connection lives on.
    assert isinstance(useful(server.receive_data(peer.raw_headers(3, GET)))[0], RequestReceived)


def test_headers_on_a_closed_stream_is_a_connection_error() -> None:
    server, peer = connected()
    server.receive_data(peer.raw_headers(1, GET))
    server.send_response(1, 200, [], end=True)
    server.forget(1)
    with pytest.raises(ClientProtocolError) as err:
        server.receive_data(peer.raw_headers(1, GET))
    assert err.value.h2_code == STREAM_CLOSED


def test_frames_on_a_stream_we_reset_are_ignored_but_count_for_the_connection() -> None:
    server, peer = connected(max_concurrent_streams=1)  # connection window = stream window
    server.receive_data(peer.raw_headers(1, post(), end=False))
    server.forget(1, H2_CANCEL)
    server.data_to_send()
    late = raw(0x0, 0, 1, b"x" * 16000) * 3 + peer.trailers(1, [(b"x-t", b"1")])
    assert useful(server.receive_data(late)) == []
    out = server.data_to_send()
    assert not of(RstStreamFrame, out)
    (update,) = of(WindowUpdateFrame, out)
    assert update.stream_id == 0 and update.window_increment == 48000
    # A RST_STREAM from the client crossing ours changes nothing either.
    assert server.receive_data(raw(0x3, 0, 1, b"\x00\x00\x00\x08")) == []


def test_trailers_without_end_stream_are_a_stream_error() -> None:
    server, peer = connected()
    server.receive_data(peer.raw_headers(1, post(), end=False))
    events = server.receive_data(peer.raw_headers(1, [(b"x-t", b"1")], end=False))
    assert isinstance(events[-1], StreamReset) and events[-1].error_code == H2_PROTOCOL_ERROR


@pytest.mark.parametrize("value", [b"abc", b"-1", b"1 ", b"+5"])
def test_an_invalid_content_length_is_a_stream_error(value: bytes) -> None:
    server, peer = connected()
    head = [*post(), (b"content-length", value)]
    (event,) = useful(server.receive_data(peer.raw_headers(1, head, end=False)))
    assert isinstance(event, StreamReset) and event.error_code == H2_PROTOCOL_ERROR
    head = [*post(), (b"content-length", b"3"), (b"content-length", b"4")]
    (event,) = useful(server.receive_data(peer.raw_headers(3, head, end=False)))
    assert isinstance(event, StreamReset)


def test_large_heads_go_in_continuation_frames_and_follow_the_peers_table_size() -> None:
    server, peer = connected()
    peer.conn.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 0})
    peer.conn.send_headers(1, GET, end_stream=True)
    server.receive_data(peer.bytes())
    big = [(f"x-h{i}".encode(), b"v" * 500) for i in range(60)]
    server.send_response(1, 200, big, end=True)
    out = server.data_to_send()
    assert [f.type for f in frames(out)].count(0x9) >= 1
    got = peer.conn.receive_data(out)
    resp = next(e for e in got if isinstance(e, h2.events.ResponseReceived))
    assert resp.headers == [(b":status", b"200"), *big]


def test_client_refuses_pushes_interim_ends_and_streams_it_did_not_open() -> None:
    client, origin = client_connected()
    sid = client.send_request(b"GET", b"http", b"api.test", b"/", [], end=True)
    origin.conn.receive_data(client.data_to_send())
    interim = HeadersFrame(sid)
    interim.data = origin.conn.encoder.encode([(b":status", b"103")])
    interim.flags.add("END_HEADERS")
    interim.flags.add("END_STREAM")
    events = client.receive_data(interim.serialize())
    assert isinstance(events[-1], StreamReset) and events[-1].error_code == H2_PROTOCOL_ERROR
    for data in (
        raw(0x5, 0x4, 1, b"\x00\x00\x00\x02\x88"),
        raw(0x1, 0x5, 2, b"\x88"),
        raw(0x4, 0, 0, b"\x00\x02\x00\x00\x00\x01"),  # SETTINGS_ENABLE_PUSH = 1 from a server
    ):
        client, _ = client_connected()
        with pytest.raises(BackendProtocolError) as err:
            client.receive_data(data)
        assert err.value.h2_code == H2_PROTOCOL_ERROR


# --- interop: many streams both ways with an h2 peer, bytes split at random --------------


def test_random_exchanges_with_an_h2_client_keep_every_byte_and_window() -> None:
    """Uploads and downloads on many streams at once, the client's bytes cut anywhere, our
    acknowledgements late or early: every byte arrives, no window is ever exceeded."""
    rng = random.Random(1)
    server, peer = connected(initial_window_size=20000, max_concurrent_streams=8)
    uploads: dict[int, bytes] = {}
    uploaded: dict[int, int] = {}  # what the client sent of each upload
    received: dict[int, bytearray] = {}
    answers: dict[int, bytes] = {}
    pending: dict[int, memoryview] = {}
    downloaded: dict[int, bytearray] = {}
    ended: set[int] = set()
    sid = 1
    wire = b""
    for _ in range(600):
        if sid < 160 and len(uploads) - len(ended) < 6 and rng.random() < 0.3:
            body = rng.randbytes(rng.choice([0, 10, 5000, 70000]))
            uploads[sid], uploaded[sid], received[sid] = body, 0, bytearray()
            peer.conn.send_headers(sid, post(len(body)), end_stream=not body)
            sid += 2
        for s, body in uploads.items():  # the client sends what its windows allow
            done = uploaded[s]
            if done == len(body):
                continue
            room = min(peer.conn.local_flow_control_window(s), 16384, len(body) - done)
            if room > 0:
                peer.conn.send_data(
                    s, body[done : done + room], end_stream=done + room == len(body)
                )
                uploaded[s] = done + room
        wire += peer.bytes()
        cut = rng.randrange(0, len(wire) + 1)
        chunk, wire = wire[:cut], wire[cut:]
        for ev in server.receive_data(chunk):
            if isinstance(ev, DataReceived):
                received[ev.stream_id] += ev.data
                if rng.random() < 0.5:
                    server.acknowledge(ev.stream_id, len(ev.data))
            elif isinstance(ev, MessageEnded):
                answers[ev.stream_id] = rng.randbytes(rng.choice([0, 100, 40000]))
                server.send_response(ev.stream_id, 200, [(b"x-n", b"1")])
                pending[ev.stream_id] = memoryview(answers[ev.stream_id])
            assert not isinstance(ev, StreamReset), ev
        if rng.random() < 0.5:  # late acknowledgements
            for s in received:
                server.acknowledge(s, 10**9)
        for s, view in list(pending.items()):
            taken = server.send_data(s, view, end=True)
            if taken == len(view):
                del pending[s]
                server.forget(s)
            else:
                pending[s] = view[taken:]
        for ev in peer.conn.receive_data(server.data_to_send()):
            if isinstance(ev, h2.events.DataReceived):
                downloaded.setdefault(ev.stream_id or 0, bytearray()).extend(ev.data or b"")
                peer.conn.acknowledge_received_data(ev.flow_controlled_length or 0, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                ended.add(ev.stream_id or 0)
            assert not isinstance(ev, h2.events.StreamReset | h2.events.ConnectionTerminated), ev
    assert len(ended) > 30
    for s in ended:
        assert bytes(received[s]) == uploads[s]
        assert bytes(downloaded.get(s, b"")) == answers[s]


def test_window_updates_of_the_connection_make_one_notice_per_read() -> None:
    """Each notice costs the shell a look at every stream: a flood of WINDOW_UPDATE frames on
    stream 0 (or of SETTINGS) makes one, not one each."""
    server, _ = connected()
    data = raw(0x8, 0, 0, b"\x00\x00\x00\x01") * 1000 + raw(0x4, 0, 0) * 10
    assert server.receive_data(data) == [WindowUpdated(stream_id=0)]
    assert server.receive_data(raw(0x6, 0, 0, b"\x00" * 8)) == []


def test_what_is_kept_of_closed_streams_is_bounded_and_resets_outlive_endings() -> None:
    """A stream we reset early (a request body still coming) ignores its late frames even
    after hundreds of streams ended meanwhile; what is kept per connection stays bounded."""
    server, peer = connected()
    server.receive_data(peer.raw_headers(1, post(), end=False))
    server.send_response(1, 413, [], end=True)
    server.forget(1)
    for sid in range(3, 3 + 2 * 600, 2):
        server.receive_data(peer.raw_headers(sid, GET))
        server.send_response(sid, 204, [], end=True)
        server.forget(sid)
    server.data_to_send()
    late = raw(0x0, 0, 1, b"x" * 100) + peer.trailers(1, [(b"x-t", b"1")])
    assert useful(server.receive_data(late)) == []
    assert not of(RstStreamFrame, server.data_to_send())
    assert len(server._closed) <= 256 and len(server._reset_by_us) <= 256
