"""Control-frame floods, bytes in and bytes out: the budget of frames that carry no request.

Every frame that carries no request or response (PING, SETTINGS, PRIORITY, GOAWAY, frames of
unknown types, DATA with no data and no END_STREAM, WINDOW_UPDATE on a stream we no longer
send on) spends one of ``max_control_frames_per_second``; one more within the same second is a
connection error ENHANCE_YOUR_CALM (GOAWAY 0xb). The second is told by the ``now`` passed in —
the engine reads no clock. DATA that carries data, WINDOW_UPDATE on a stream we send on and
RST_STREAM (its own limit, rapid reset) spend nothing.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import h2.config
import h2.connection
import pytest
from hpack import Encoder
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from revproxy.errors import H2_ENHANCE_YOUR_CALM, ClientProtocolError
from revproxy.proto.h2.client import H2Client
from revproxy.proto.h2.frames import PREFACE
from revproxy.proto.h2.server import H2Server

GET = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"app.test"), (b":path", b"/")]
POST = [
    (b":method", b"POST"),
    (b":scheme", b"https"),
    (b":authority", b"app.test"),
    (b":path", b"/up"),
]
# The budget of the tests (the default has a test of its own).
LIMIT = 5
# The handshake is fed at 0.0; the frames under test in a later second, with a whole budget.
T = 10.0


def frames(data: bytes) -> list[Frame]:
    if data.startswith(PREFACE):
        data = data[len(PREFACE) :]
    out: list[Frame] = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        out.append(frame)
        data = data[9 + length :]
    return out


def ping_acks(data: bytes) -> int:
    return sum(isinstance(f, PingFrame) and "ACK" in f.flags for f in frames(data))


def goaway_codes(data: bytes) -> list[int]:
    return [int(f.error_code) for f in frames(data) if isinstance(f, GoAwayFrame)]


def connected(limit: int = LIMIT) -> H2Server:
    """A server past the handshake (the client's SETTINGS and its ACK of ours, at 0.0)."""
    config = h2.config.H2Configuration(client_side=True, header_encoding=None)
    peer = h2.connection.H2Connection(config=config)
    peer.initiate_connection()
    server = H2Server(max_control_frames_per_second=limit)
    server.receive_data(peer.data_to_send(), 0.0)
    peer.receive_data(server.data_to_send())
    server.receive_data(peer.data_to_send(), 0.0)
    server.data_to_send()
    return server


def headers(sid: int, fields: list[tuple[bytes, bytes]], *, end: bool) -> bytes:
    f = HeadersFrame(sid)
    f.data = Encoder().encode(fields)  # a fresh encoder refers to no entry of the table
    f.flags.add("END_HEADERS")
    if end:
        f.flags.add("END_STREAM")
    return bytes(f.serialize())


def ping(ack: bool = False) -> bytes:
    return bytes(PingFrame(0, opaque_data=b"12345678", flags=["ACK"] if ack else []).serialize())


def raw_frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return struct.pack(">BHBBL", n >> 16, n & 0xFFFF, ftype, flags, sid) + payload


def empty_data(sid: int) -> bytes:
    return bytes(DataFrame(sid, data=b"").serialize())


def padding_only_data(sid: int) -> bytes:
    f = DataFrame(sid, data=b"")
    f.flags.add("PADDED")
    f.pad_length = 4
    return bytes(f.serialize())


def assert_budget_whole(server: H2Server) -> None:
    """Exactly LIMIT frames are left of this second's budget: what came before spent none."""
    server.receive_data(ping() * LIMIT, T)
    assert ping_acks(server.data_to_send()) == LIMIT
    must_calm(server, ping(), T)


def must_calm(server: H2Server, data: bytes, now: float) -> None:
    with pytest.raises(ClientProtocolError) as err:
        server.receive_data(data, now)
    assert err.value.h2_code == H2_ENHANCE_YOUR_CALM
    assert goaway_codes(server.data_to_send()) == [H2_ENHANCE_YOUR_CALM]


# --- PING: within the budget, past it, and the budget refilled --------------------------------


@pytest.mark.parametrize("bytewise", [False, True])
def test_pings_within_the_budget_are_acknowledged_and_one_more_is_not(bytewise: bool) -> None:
    server = connected()
    data = ping() * LIMIT
    if bytewise:
        for i in range(len(data)):
            server.receive_data(data[i : i + 1], T)
    else:
        server.receive_data(data, T)
    out = server.data_to_send()
    assert ping_acks(out) == LIMIT
    assert goaway_codes(out) == []
    must_calm(server, ping(), T)


def test_one_ping_more_within_the_same_second_gets_goaway_enhance_your_calm() -> None:
    server = connected()
    server.receive_data(ping() * LIMIT, T)
    assert ping_acks(server.data_to_send()) == LIMIT
    must_calm(server, ping(), T + 0.99)
    assert server.receive_data(ping(), T + 5) == []  # dead: nothing more is read


def test_the_frame_past_the_budget_is_not_answered() -> None:
    server = connected()
    with pytest.raises(ClientProtocolError):
        server.receive_data(ping() * (LIMIT + 3), T)
    out = server.data_to_send()
    assert ping_acks(out) == LIMIT  # the rest of the read is not even parsed
    assert goaway_codes(out) == [H2_ENHANCE_YOUR_CALM]


def test_the_budget_refills_with_the_time_passed_in() -> None:
    server = connected()
    for second in range(5):
        server.receive_data(ping() * LIMIT, T + second)
        server.receive_data(b"", T + second + 0.5)
    out = server.data_to_send()
    assert ping_acks(out) == 5 * LIMIT
    assert goaway_codes(out) == []
    server.receive_data(ping() * LIMIT, T + 5)
    must_calm(server, ping(), T + 5.5)


def test_the_second_starts_at_the_first_frame_of_it() -> None:
    """A fixed window from the first read one second or more after the last start: the
    budget spent at T + 0.9 belongs to the second that began at T."""
    server = connected()
    server.receive_data(ping(), T)
    server.receive_data(ping() * (LIMIT - 1), T + 0.9)
    server.receive_data(ping() * LIMIT, T + 1.0)  # a new second
    assert ping_acks(server.data_to_send()) == 2 * LIMIT
    must_calm(server, ping(), T + 1.9)


def test_the_default_budget_is_a_thousand_a_second() -> None:
    server = H2Server()
    config = h2.config.H2Configuration(client_side=True, header_encoding=None)
    peer = h2.connection.H2Connection(config=config)
    peer.initiate_connection()
    server.receive_data(peer.data_to_send(), 0.0)
    server.data_to_send()
    server.receive_data(ping() * 1000, T)
    assert ping_acks(server.data_to_send()) == 1000
    must_calm(server, ping(), T)


# --- every kind that carries nothing counts ---------------------------------------------------


def _open_post(server: H2Server) -> bytes:
    """Stream 1: a request whose body is still coming; the response started."""
    server.receive_data(headers(1, POST, end=False), 0.0)
    server.send_response(1, 200, [], end=False)
    server.data_to_send()
    return b""


def _ended_get(server: H2Server) -> bytes:
    """Stream 1: a GET answered whole (closed both ways, not yet forgotten)."""
    server.receive_data(headers(1, GET, end=True), 0.0)
    server.send_response(1, 204, [], end=True)
    server.data_to_send()
    return b""


def _forgotten_get(server: H2Server) -> bytes:
    _ended_get(server)
    server.forget(1)
    server.data_to_send()
    return b""


def _nothing(server: H2Server) -> bytes:
    return b""


KINDS: dict[str, tuple[Callable[[H2Server], bytes], Callable[[], bytes]]] = {
    "PING": (_nothing, ping),
    "PING ACK": (_nothing, lambda: ping(ack=True)),
    "SETTINGS": (_nothing, lambda: bytes(SettingsFrame(0).serialize())),
    "SETTINGS with a value": (
        _nothing,
        lambda: bytes(
            SettingsFrame(0, settings={SettingsFrame.MAX_CONCURRENT_STREAMS: 7}).serialize()
        ),
    ),
    "SETTINGS ACK": (_nothing, lambda: bytes(SettingsFrame(0, flags=["ACK"]).serialize())),
    "PRIORITY": (
        _nothing,
        lambda: bytes(PriorityFrame(3, depends_on=0, stream_weight=16).serialize()),
    ),
    "GOAWAY": (_nothing, lambda: bytes(GoAwayFrame(0, last_stream_id=0).serialize())),
    "unknown type": (_nothing, lambda: raw_frame(0xFA, 0, 0)),
    "empty DATA on an open stream": (_open_post, lambda: empty_data(1)),
    "padding-only DATA on an open stream": (_open_post, lambda: padding_only_data(1)),
    "empty DATA on a closed stream": (_ended_get, lambda: empty_data(1)),
    "WINDOW_UPDATE on a closed stream": (
        _ended_get,
        lambda: bytes(WindowUpdateFrame(1, window_increment=1).serialize()),
    ),
    "WINDOW_UPDATE on a forgotten stream": (
        _forgotten_get,
        lambda: bytes(WindowUpdateFrame(1, window_increment=1).serialize()),
    ),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_spends_the_budget(kind: str) -> None:
    setup, frame = KINDS[kind]
    server = connected()
    setup(server)
    server.receive_data(frame() * LIMIT, T)
    assert goaway_codes(server.data_to_send()) == []
    must_calm(server, frame(), T)


@pytest.mark.parametrize("kind", list(KINDS))
def test_kinds_share_one_budget(kind: str) -> None:
    setup, frame = KINDS[kind]
    server = connected()
    setup(server)
    server.receive_data(ping() * (LIMIT - 1) + frame(), T)
    must_calm(server, bytes(SettingsFrame(0).serialize()), T)


# --- what does not count ------------------------------------------------------------------------


def test_window_update_on_an_open_stream_does_not_count() -> None:
    server = connected()
    _open_post(server)
    update = bytes(WindowUpdateFrame(1, window_increment=1).serialize())
    server.receive_data(update * (LIMIT * 20), T)
    server.receive_data(bytes(WindowUpdateFrame(0, window_increment=1).serialize()) * 100, T)
    assert goaway_codes(server.data_to_send()) == []
    assert server.window(1) == 65535 + LIMIT * 20
    assert_budget_whole(server)


def test_data_with_payload_does_not_count() -> None:
    server = connected()
    _open_post(server)
    chunk = bytes(DataFrame(1, data=b"x").serialize())
    events = server.receive_data(chunk * (LIMIT * 20), T)
    assert sum(len(getattr(e, "data", b"")) for e in events) == LIMIT * 20
    padded = DataFrame(1, data=b"y")
    padded.flags.add("PADDED")
    padded.pad_length = 3
    server.receive_data(bytes(padded.serialize()) * (LIMIT * 2), T)
    assert goaway_codes(server.data_to_send()) == []
    assert_budget_whole(server)


def test_empty_data_that_ends_its_stream_does_not_count() -> None:
    server = connected()
    data = b""
    for i in range(LIMIT * 3):
        sid = 1 + 2 * i
        data += headers(sid, POST, end=False) + bytes(
            DataFrame(sid, data=b"", flags=["END_STREAM"]).serialize()
        )
    server.receive_data(data, T)
    assert goaway_codes(server.data_to_send()) == []
    assert_budget_whole(server)


def test_resets_spend_their_own_limit_not_this_one() -> None:
    server = connected()
    data = b""
    for i in range(LIMIT * 3):
        sid = 1 + 2 * i
        data += headers(sid, GET, end=False) + bytes(RstStreamFrame(sid, error_code=8).serialize())
    server.receive_data(data, T)
    assert goaway_codes(server.data_to_send()) == []
    assert_budget_whole(server)


def test_the_limit_is_the_server_roles() -> None:
    """Toward origins (the client role) no limit is set: they are the operator's own."""
    flood = bytes(SettingsFrame(0).serialize()) + ping() * (LIMIT * 1000)
    server = connected()
    must_calm(server, flood, T)
    client = H2Client()
    client.data_to_send()
    client.receive_data(flood, T)
    assert ping_acks(client.data_to_send()) == LIMIT * 1000
