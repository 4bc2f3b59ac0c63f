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

from collections.abc import Iterable

import h2.events
import h2.exceptions
import h2.settings

from revproxy.proto import http2_check as check
from revproxy.proto.events import Event, Headers, InformationalReceived, ResponseReceived
from revproxy.proto.http2 import DEFAULT_WINDOW, H2Endpoint, Stream

# Statuses whose responses carry no content whatever their content-length says (RFC 9110 §6.4.1).
_NO_CONTENT = frozenset({204, 304})


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
            extra_settings={h2.settings.SettingCodes.ENABLE_PUSH: 0},
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
        sid = self._h2.get_next_available_stream_id()
        block: Headers = [(b":method", method), (b":scheme", scheme), (b":authority", authority)]
        if method != b"CONNECT" or protocol:
            block.append((b":path", path))
        if protocol:
            block.append((b":protocol", protocol))
        block.extend(headers)
        try:
            self._h2.send_headers(sid, block, end_stream=end)
        except h2.exceptions.ProtocolError as exc:
            raise self._local_error(str(exc)) from None
        self._streams[sid] = Stream(head=method == b"HEAD")
        return sid

    def _response(self, ev: h2.events.ResponseReceived, out: list[Event]) -> None:
        sid = ev.stream_id or 0
        head = self._head(sid, ev.headers or [], out)
        if head is None:
            return
        status, headers = head
        st = self._streams.get(sid)
        if st is not None:
            no_content = st.head or status in _NO_CONTENT
            st.expected = None if no_content else check.content_length(headers)
        out.append(
            ResponseReceived(
                stream_id=sid,
                status=status,
                headers=headers,
                http_version=b"2",
                ended=ev.stream_ended is not None,
            )
        )

    def _informational(self, ev: h2.events.InformationalResponseReceived, out: list[Event]) -> None:
        sid = ev.stream_id or 0
        head = self._head(sid, ev.headers or [], out)
        if head is not None:
            out.append(InformationalReceived(stream_id=sid, status=head[0], headers=head[1]))

    def _head(
        self, sid: int, raw: Iterable[tuple[bytes, bytes]], out: list[Event]
    ) -> tuple[int, Headers] | None:
        head = check.response(raw)
        if isinstance(head, str):
            self._stream_error(sid, head, out)
            return None
        return head

    @property
    def can_open_stream(self) -> bool:
        """A new stream fits under the server's MAX_CONCURRENT_STREAMS and no GOAWAY."""
        if self.goaway_received or self.goaway_sent:
            return False
        return self.open_streams < self.peer_max_concurrent_streams
