"""HTTP/2 toward clients: the server role of the engine in ``engine.py``.

Rule of this room: as in engine.py — bytes in, events out; commands in, bytes out; no I/O and
no clock (``now`` comes with the bytes). What is particular to the server role, each as the
RFC says:

- §3.4: the client's connection preface is checked before its first frame (PROTOCOL_ERROR).
- §5.1.1: only the client opens streams (odd ids); each new stream's head is a request,
  checked by ``check.py`` (§8.3.1 pseudo-headers, §8.2 fields): a malformed one resets that
  stream with PROTOCOL_ERROR (§8.1.1). A request's DATA must add up to its content-length;
  a HEAD request's is weighed against 0 whatever its content-length says.
- §6.8: after our GOAWAY, a stream newer than its last stream id is refused (REFUSED_STREAM:
  "the request has not been processed", so the client may retry it elsewhere).
- RFC 8441 §3, §4: extended CONNECT (WebSocket over HTTP/2) is offered with
  SETTINGS_ENABLE_CONNECT_PROTOCOL, and :protocol is accepted only when it was.
- CVE-2023-44487 (rapid reset): more than ``max_resets_per_second`` RST_STREAM from a client in
  one second is a connection error ENHANCE_YOUR_CALM — streams opened and reset at once cost
  us work and them nothing.
- Control-frame floods (PING, SETTINGS, PRIORITY, empty DATA, ...; ``engine.py`` says which
  frames count): more than ``max_control_frames_per_second`` from a client in one second is a
  connection error ENHANCE_YOUR_CALM, so a flood costs us a bounded amount of work a second.
  (The client role sets no limit: its peers are the operator's own origins.)
- §8.1: responses go out as HEADERS (informational ones never ending the stream), DATA and
  trailers through the sending half (``connection.py``).
"""

from __future__ import annotations

from revproxy.errors import H2_ENHANCE_YOUR_CALM, H2_REFUSED_STREAM
from revproxy.proto.events import Event, Headers, RequestReceived
from revproxy.proto.h2 import check as check
from revproxy.proto.h2.connection import RESET_BY_US, Stream
from revproxy.proto.h2.engine import H2Endpoint
from revproxy.proto.h2.frames import DEFAULT_WINDOW, PREFACE, SETTINGS_ENABLE_CONNECT_PROTOCOL


class H2Server(H2Endpoint):
    """The client side of an exchange over HTTP/2: requests in, responses out."""

    _client_side = False

    def __init__(
        self,
        *,
        max_concurrent_streams: int = 100,
        initial_window_size: int = DEFAULT_WINDOW,
        max_frame_size: int = 16384,
        max_header_list_size: int = 16384,
        max_resets_per_second: int = 200,
        max_control_frames_per_second: int = 1000,
        enable_connect_protocol: bool = True,
    ) -> None:
        extra: dict[int, int] = {}
        if enable_connect_protocol:
            # RFC 8441 §3: extended CONNECT (WebSocket over HTTP/2).
            extra[SETTINGS_ENABLE_CONNECT_PROTOCOL] = 1
        super().__init__(
            max_concurrent_streams=max_concurrent_streams,
            initial_window_size=initial_window_size,
            max_frame_size=max_frame_size,
            max_header_list_size=max_header_list_size,
            max_control_frames_per_second=max_control_frames_per_second,
            extra_settings=extra,
        )
        self._preface_left = len(PREFACE)
        self._connect_protocol = enable_connect_protocol
        self._max_resets = max_resets_per_second
        self._reset_second = 0.0
        self._resets = 0

    def _new_stream(
        self, sid: int, fields: list[tuple[bytes, bytes]], end: bool, out: list[Event]
    ) -> None:
        if self.goaway_sent and sid > self.goaway_last_stream_id:
            # RFC 9113 §6.8: opened after our GOAWAY: not processed, the client may retry.
            self._rst_frame(sid, H2_REFUSED_STREAM)
            self._remember(sid, RESET_BY_US)
            return
        st = Stream(self._peer_initial_window, self._initial_window)
        self._streams[sid] = st
        self._open_in += 1
        head = check.request(fields, connect_protocol=self._connect_protocol, known=self._known)
        if isinstance(head, str):
            self._stream_error(sid, head, out)
            return
        st.final = True
        if head.method == b"HEAD":
            # A HEAD request's body is weighed against 0 whatever its content-length.
            st.head = True
            st.expected = 0
        else:
            st.expected = head.content_length
        out.append(
            RequestReceived(
                sid,
                head.method,
                head.target,
                head.authority,
                head.headers,
                b"2",
                end,
                head.protocol,
            )
        )
        if end:
            self._remote_ended(sid, st, out)

    def _peer_reset(self, sid: int, code: int) -> None:
        # CVE-2023-44487: streams opened and reset at once cost us work and them nothing.
        if self._now - self._reset_second >= 1.0:
            self._reset_second = self._now
            self._resets = 0
        self._resets += 1
        if self._resets > self._max_resets:
            raise self._fatal(
                f"over {self._max_resets} stream resets in a second (rapid reset)",
                H2_ENHANCE_YOUR_CALM,
            )

    def send_informational(self, stream_id: int, status: int, headers: Headers) -> None:
        self._sendable(stream_id)
        self._send_headers(stream_id, [(b":status", str(status).encode()), *headers], False)

    def send_response(
        self, stream_id: int, status: int, headers: Headers, end: bool = False
    ) -> None:
        st = self._sendable(stream_id)
        self._send_headers(stream_id, [(b":status", str(status).encode()), *headers], end)
        if end:
            self._local_ended(stream_id, st)
