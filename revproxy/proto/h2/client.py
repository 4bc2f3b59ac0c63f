"""HTTP/2 toward origins: the client role of the adapter in ``http2.py``.

Rule of this room: as in http2.py — bytes in, events out; commands in, bytes out; no I/O.
What is particular to the client role: requests go out with :authority instead of Host and
the :scheme the origin is reached by; server push is refused (SETTINGS_ENABLE_PUSH = 0);
response heads are checked (``http2_check.py``) and a malformed one resets its stream; a
response's content-length is weighed against its DATA except where a response has no
content (HEAD, 204, 304); a GOAWAY from the origin says which streams were not processed
(``GoAwayReceived``) and ends ``can_open_stream``.
"""

from __future__ import annotations

from revproxy.errors import H2_PROTOCOL_ERROR
from revproxy.proto.events import Event, Headers, InformationalReceived, ResponseReceived
from revproxy.proto.h2 import check as check
from revproxy.proto.h2.connection import Stream
from revproxy.proto.h2.engine import H2Endpoint
from revproxy.proto.h2.frames import DEFAULT_WINDOW

# Statuses whose responses carry no content whatever their content-length says (RFC 9110 §6.4.1).
_NO_CONTENT = frozenset({204, 304})
# The highest stream id a client may use (RFC 9113 §5.1.1).
_MAX_STREAM_ID = 2**31 - 1


class H2Client(H2Endpoint):
    """The backend side of an exchange over HTTP/2: requests out, responses in."""

    _client_side = True

    def __init__(
        self,
        *,
        max_concurrent_streams: int = 100,
        initial_window_size: int = DEFAULT_WINDOW,
        max_frame_size: int = 16384,
        max_header_list_size: int = 16384,
    ) -> None:
        super().__init__(
            max_concurrent_streams=max_concurrent_streams,
            initial_window_size=initial_window_size,
            max_frame_size=max_frame_size,
            max_header_list_size=max_header_list_size,
        )

    def send_request(
        self,
        method: bytes,
        scheme: bytes,
        authority: bytes,
        path: bytes,
        headers: Headers,
        *,
        end: bool = False,
        protocol: bytes = b"",
    ) -> int:
        """Open a stream with this request head; returns its id. ``headers`` carry no Host
        (``authority`` becomes :authority) and no connection-specific field."""
        sid = self.highest_outbound_stream_id + 2 if self.highest_outbound_stream_id else 1
        if sid > _MAX_STREAM_ID:
            raise self._local_error("stream ids exhausted")
        if self._open_out >= self._peer_max_streams:
            raise self._local_error(f"over the origin's {self._peer_max_streams} streams")
        block: Headers = [(b":method", method), (b":scheme", scheme), (b":authority", authority)]
        if method != b"CONNECT" or protocol:
            block.append((b":path", path))
        if protocol:
            block.append((b":protocol", protocol))
        block.extend(headers)
        st = Stream(self._peer_initial_window, self._initial_window, head=method == b"HEAD")
        self.highest_outbound_stream_id = sid
        self._streams[sid] = st
        self._open_out += 1
        self._send_headers(sid, block, end)
        if end:
            self._local_ended(sid, st)
        return sid

    def _next_head(
        self, sid: int, st: Stream, fields: list[tuple[bytes, bytes]], end: bool, out: list[Event]
    ) -> None:
        head = check.response(fields, known=self._known)
        if isinstance(head, str):
            self._stream_error(sid, head, out)
            return
        status, headers = head
        if status < 200:
            # RFC 9113 §8.1: an interim response never ends the stream.
            if end:
                self._stream_error(sid, "interim response with END_STREAM", out, H2_PROTOCOL_ERROR)
                return
            out.append(InformationalReceived(sid, status, headers))
            return
        st.final = True
        if not (st.head or status in _NO_CONTENT):
            try:
                st.expected = check.content_length(headers)
            except ValueError:
                self._stream_error(sid, "invalid content-length", out)
                return
        out.append(ResponseReceived(sid, status, headers, b"", b"2", end))
        if end:
            self._remote_ended(sid, st, out)

    @property
    def can_open_stream(self) -> bool:
        """A new stream fits under the server's MAX_CONCURRENT_STREAMS and no GOAWAY."""
        if self.goaway_received or self.goaway_sent:
            return False
        return self.open_streams < self.peer_max_concurrent_streams
