"""What a paced stream asks of the engine, bytes in and bytes out: how much it may send now
(``window``: the least of the stream's and the connection's windows), what is queued and not
taken yet (``queued``), and the notices that say when more may be sent (``WindowUpdated``).

An origin relayed to an HTTP/2 stream is read no further ahead than ``window`` says
(net/h2_channel.py, ``conn_io.Sink``); a head needs no window. The peer is an ``h2`` client
whose SETTINGS shut every stream's window; frames it should not need h2 for are written with
``hyperframe``.
"""

from __future__ import annotations

import h2.config
import h2.connection
import h2.settings
from hyperframe.frame import SettingsFrame, WindowUpdateFrame

from revproxy.proto.events import DataReceived, Event, RequestReceived, WindowUpdated
from revproxy.proto.h2.server import H2Server

INITIAL_WINDOW_SIZE = h2.settings.SettingCodes.INITIAL_WINDOW_SIZE


def shut_peer() -> tuple[H2Server, h2.connection.H2Connection]:
    """A server and a client whose SETTINGS give every stream a window of 0."""
    server = H2Server(
        max_concurrent_streams=100,
        initial_window_size=65535,
        max_frame_size=16384,
        max_header_list_size=65536,
    )
    config = h2.config.H2Configuration(client_side=True, header_encoding=None)
    peer = h2.connection.H2Connection(config=config)
    peer.initiate_connection()
    server.receive_data(peer.data_to_send())
    peer.receive_data(server.data_to_send())
    server.receive_data(peer.data_to_send())  # the SETTINGS ack
    shut = SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0})
    server.receive_data(shut.serialize())
    server.data_to_send()  # its ack
    return server, peer


def get(peer: h2.connection.H2Connection, server: H2Server) -> int:
    sid = peer.get_next_available_stream_id()
    peer.send_headers(
        sid,
        [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a"), (b":path", b"/")],
        end_stream=True,
    )
    events = server.receive_data(peer.data_to_send())
    assert type(events[0]) is RequestReceived
    return sid


def notices(events: list[Event]) -> list[int]:
    return [ev.stream_id for ev in events if isinstance(ev, WindowUpdated)]


def test_a_shut_window_lets_the_head_through_and_no_data() -> None:
    server, peer = shut_peer()
    sid = get(peer, server)
    assert server.window(sid) == 0
    server.send_response(sid, 200, [(b"content-type", b"text/plain")], False)
    head = server.queued
    assert head > 0  # the head needs no window
    assert server.send_data(sid, b"x" * 1000) == 0
    assert server.queued == head  # nothing of the body
    events = peer.receive_data(server.data_to_send())
    assert [type(ev).__name__ for ev in events] == ["ResponseReceived"]
    assert server.queued == 0


def test_a_stream_window_update_is_noticed_and_bounds_what_is_sent() -> None:
    server, peer = shut_peer()
    sid = get(peer, server)
    server.send_response(sid, 200, [], False)
    peer.receive_data(server.data_to_send())
    events = server.receive_data(WindowUpdateFrame(sid, window_increment=3000).serialize())
    assert notices(events) == [sid]
    assert server.window(sid) == 3000
    assert server.send_data(sid, b"y" * 5000) == 3000
    assert server.window(sid) == 0
    data = server.data_to_send()
    received = [ev for ev in peer.receive_data(data) if type(ev).__name__ == "DataReceived"]
    assert sum(len(ev.data) for ev in received) == 3000


def test_the_connection_window_is_shared_by_the_streams() -> None:
    server, peer = shut_peer()
    one, two = get(peer, server), get(peer, server)
    for sid in (one, two):
        server.send_response(sid, 200, [], False)
    # Both streams opened wide: the connection's 65,535 bytes are what both may send.
    opened = SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 1 << 20})
    events = server.receive_data(opened.serialize())
    assert notices(events) == [0]  # one notice for every stream
    assert server.window(one) == server.window(two) == 65535
    assert server.send_data(one, b"a" * 60000) == 60000
    assert server.window(two) == 5535
    assert server.send_data(two, b"b" * 10000) == 5535
    assert server.window(one) == server.window(two) == 0
    # The connection's WINDOW_UPDATE: one notice (stream 0), both may send again.
    events = server.receive_data(WindowUpdateFrame(0, window_increment=100000).serialize())
    assert notices(events) == [0]
    assert server.window(one) == server.window(two) == 100000


def test_a_closed_or_forgotten_stream_has_no_window() -> None:
    server, peer = shut_peer()
    sid = get(peer, server)
    server.receive_data(WindowUpdateFrame(sid, window_increment=1000).serialize())
    assert server.window(sid) == 1000
    server.send_response(sid, 200, [], True)
    assert server.window(sid) == 0  # our side ended
    other = get(peer, server)
    server.receive_data(WindowUpdateFrame(other, window_increment=1000).serialize())
    server.forget(other)
    assert server.window(other) == 0


def test_data_received_is_acknowledged_only_when_consumed() -> None:
    """An upload: the client may send what its window allows; the window is given back
    (WINDOW_UPDATE) only as the shell acknowledges what it forwarded."""
    server = H2Server(
        max_concurrent_streams=1,
        initial_window_size=65535,
        max_frame_size=16384,
        max_header_list_size=65536,
    )
    config = h2.config.H2Configuration(client_side=True, header_encoding=None)
    peer = h2.connection.H2Connection(config=config)
    peer.initiate_connection()
    server.receive_data(peer.data_to_send())
    peer.receive_data(server.data_to_send())
    sid = peer.get_next_available_stream_id()
    peer.send_headers(
        sid,
        [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"a"), (b":path", b"/")],
    )
    window = peer.local_flow_control_window(sid)
    for k in range(0, window, 16384):
        peer.send_data(sid, b"z" * min(16384, window - k))
    events = server.receive_data(peer.data_to_send())
    assert sum(len(ev.data) for ev in events if isinstance(ev, DataReceived)) == window
    server.data_to_send()
    # Nothing acknowledged: nothing given back, the client may send no more.
    assert peer.local_flow_control_window(sid) == 0
    server.acknowledge(sid, window)
    peer.receive_data(server.data_to_send())
    assert peer.local_flow_control_window(sid) == window
