"""HTTP/2 for both sides of a proxy, over h2, behind the stream events of ``events.py``.

Rule of this room: bytes in, events out (``receive_data(data, now)``); commands in, bytes out
(``data_to_send()``). No I/O and no clock: ``now`` is passed in. This module owns flow control
— the shell only asks "how much may I send now" (``send_data`` takes what the windows allow)
and reports "the other side consumed n bytes" (``acknowledge``) — and the checks h2 leaves to
its user:

- RFC 9113 §8.1.1: "Malformed requests or responses that are detected MUST be treated as a
  stream error (Section 5.4.2) of type PROTOCOL_ERROR." h2 makes most of them connection
  errors, so its inbound validation is off and the checks run on the decoded block instead
  (``http2_check.py``): one malformed request resets its stream, never its neighbours. The
  same holds for "a request or response is also malformed if the value of a content-length
  header field does not equal the sum of the DATA frame payload lengths": DATA frames are
  weighed before h2 sees them.
- RFC 9113 §5.2: received DATA is acknowledged (WINDOW_UPDATE) only once the shell says the
  other side consumed it, so what a peer can make us hold is bounded by the windows we
  advertise; sending never exceeds min(stream window, connection window, max frame size), and
  the shell resumes on ``WindowUpdated``.
- CVE-2023-44487 (rapid reset): more than ``max_resets_per_second`` RST_STREAM from a client in
  one second is a connection error ENHANCE_YOUR_CALM.
- CONTINUATION flood: a header block (HEADERS + CONTINUATION frames) larger than
  ``max_header_list_size`` (plus room for padding) or spread over more than
  ``MAX_HEADER_FRAMES`` frames is a connection error ENHANCE_YOUR_CALM, decided on frame
  headers before h2 buffers the block. (h2 alone accepts 64 frames of ``max_frame_size``.)
- GOAWAY: h2 closes its state machine when it sends or receives GOAWAY, which would refuse the
  frames of the streams still in flight. GOAWAY frames therefore never reach h2: received ones
  are parsed here (``GoAwayReceived``), ours are built here (``goaway``), and a draining
  connection finishes its streams.

Connection errors raise (``ClientProtocolError`` on the server side, ``BackendProtocolError``
on the client side, ``h2_code`` set) after queueing their GOAWAY: flush, then close.
"""

from __future__ import annotations

import contextlib

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import h2.stream
from hyperframe.frame import GoAwayFrame

from revproxy.errors import (
    H2_CANCEL,
    H2_ENHANCE_YOUR_CALM,
    H2_NO_ERROR,
    H2_PROTOCOL_ERROR,
    H2_REFUSED_STREAM,
    BackendProtocolError,
    ClientProtocolError,
    RevproxyError,
)
from revproxy.proto import http2_check as check
from revproxy.proto.events import (
    DataReceived,
    Event,
    GoAwayReceived,
    Headers,
    MessageEnded,
    PingAcknowledged,
    RequestReceived,
    StreamReset,
    WindowUpdated,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

H2_FRAME_SIZE_ERROR = 0x6

# Frame types and flags (RFC 9113 §6) the frame walker looks at.
_DATA = 0x0
_HEADERS = 0x1
_GOAWAY = 0x7
_CONTINUATION = 0x9
_END_STREAM = 0x1
_PADDED = 0x8

# Most frames one header block may span. A block within max_header_list_size needs one or
# two frames of the minimum frame size; only a flood needs more.
MAX_HEADER_FRAMES = 16
# Header block bytes allowed beyond max_header_list_size: padding (256) and priority (5).
HEADER_BLOCK_SLACK = 512
# Largest flow-control window (RFC 9113 §6.9.1) and the initial one (§6.9.2).
MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65535


class StreamClosed(Exception):
    """The stream was reset or closed: nothing more can be sent on it."""


class Stream:
    """What this side tracks of one stream while the shell serves it."""

    __slots__ = ("expected", "head", "received", "trailers", "unacked")

    def __init__(self, head: bool = False) -> None:
        self.head = head  # a HEAD request: its response has no content
        self.expected: int | None = None  # content-length of the message being received
        self.received = 0  # DATA payload bytes received
        self.trailers: Headers = []
        self.unacked = 0  # bytes handed to the shell and not yet acknowledged


class H2Endpoint:
    """What both sides share: the frame walker, flow control, resets and GOAWAY."""

    _client_side = False

    def __init__(
        self,
        *,
        max_concurrent_streams: int,
        initial_window_size: int,
        max_frame_size: int,
        max_header_list_size: int,
        extra_settings: dict[h2.settings.SettingCodes | int, int] | None = None,
    ) -> None:
        config = h2.config.H2Configuration(
            client_side=self._client_side,
            header_encoding=None,
            # Done in http2_check.py, in one pass, as stream errors; it also joins split
            # cookie fields (RFC 9113 §8.2.3).
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
            # What we send was validated on the way in (by h11, or here) or made by us; the
            # encoder of http2_check.py drops connection-specific fields and lower-cases names.
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        conn = h2.connection.H2Connection(config=config)
        conn.encoder = check.Encoder()  # type: ignore[assignment]
        conn.decoder = check.Decoder()  # type: ignore[assignment]
        codes = h2.settings.SettingCodes
        initial: dict[h2.settings.SettingCodes | int, int] = {
            codes.MAX_CONCURRENT_STREAMS: max_concurrent_streams,
            codes.MAX_FRAME_SIZE: max_frame_size,
            codes.MAX_HEADER_LIST_SIZE: max_header_list_size,
            **(extra_settings or {}),
        }
        conn.local_settings = h2.settings.Settings(
            client=self._client_side,
            initial_values=initial,  # type: ignore[arg-type]
        )
        # Frames up to our size are accepted at once (the peer may not have our SETTINGS
        # yet, but it never sends more than the 16384 every peer accepts).
        conn.max_inbound_frame_size = max_frame_size
        conn.decoder.max_header_list_size = max_header_list_size
        conn.initiate_connection()
        if initial_window_size != DEFAULT_WINDOW:
            # Pending until acknowledged: until then the peer may fill the default window.
            conn.update_settings({codes.INITIAL_WINDOW_SIZE: initial_window_size})
        # The connection window never limits below the sum of the stream windows; memory
        # stays bounded by those (each acknowledged only once consumed).
        target = min(MAX_WINDOW, max(DEFAULT_WINDOW, initial_window_size * max_concurrent_streams))
        if target > DEFAULT_WINDOW:
            conn.increment_flow_control_window(target - DEFAULT_WINDOW)
        self._h2 = conn
        self._max_block = max_header_list_size + HEADER_BLOCK_SLACK
        self._streams: dict[int, Stream] = {}
        self._held = bytearray()  # bytes of a frame whose fate is not decided yet
        self._skip = 0  # payload bytes of the current (already examined) frame still to come
        self._preface_left = 0
        self._block = 0  # bytes of the header block being received
        self._block_frames = 0
        self._out = bytearray()  # our own frames (GOAWAY), ahead of what h2 queued after them
        self._now = 0.0
        self.goaway_sent = False
        self.goaway_last_stream_id = 0
        self.goaway_received = False
        self.settings_received = False  # the peer's first SETTINGS arrived

    # --- errors ----------------------------------------------------------------------------

    def _peer_error(self, reason: str, code: int) -> RevproxyError:
        exc: RevproxyError = (
            BackendProtocolError(reason) if self._client_side else ClientProtocolError(reason)
        )
        exc.h2_code = code
        return exc

    def _local_error(self, reason: str) -> RevproxyError:
        """We cannot send what the other side of the exchange gave us."""
        if self._client_side:
            return ClientProtocolError(f"cannot relay request: {reason}")
        return BackendProtocolError(f"cannot relay response: {reason}")

    def _fatal(self, reason: str, code: int) -> RevproxyError:
        """A connection error we detected: queue GOAWAY with ``code``, return the error."""
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self._h2.close_connection(error_code=code, last_stream_id=self._last_processed())
        return self._peer_error(reason, code)

    def _last_processed(self) -> int:
        if self._client_side:
            return 0  # a client processes no stream its server opened
        if self.goaway_sent:
            return self.goaway_last_stream_id
        return self._h2.highest_inbound_stream_id

    # --- receiving -------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float = 0.0) -> list[Event]:
        """Feed bytes from the peer; return the events they completed.

        Raises a RevproxyError for a connection error (its GOAWAY is then in
        ``data_to_send()``)."""
        self._now = now
        if self._held:
            self._held += data
            view = bytes(self._held)
            self._held.clear()
        else:
            view = data
        out: list[Event] = []
        used = self._walk(view, out)
        if used < len(view):
            self._held += view[used:]
        return out

    def _walk(self, view: bytes, out: list[Event]) -> int:
        """Examine each frame header before h2 parses the frame; return the bytes consumed.

        Bytes before a frame that needs a decision are fed to h2 first, so that the state
        the decision reads (a stream's content-length) is up to date."""
        mv = memoryview(view)
        n = len(view)
        i = fed = 0
        if self._preface_left:
            i = min(self._preface_left, n)
            self._preface_left -= i  # h2 checks the preface itself
        while True:
            if self._skip:
                k = min(self._skip, n - i)
                i += k
                self._skip -= k
                if self._skip:
                    break
            if n - i < 9:
                break
            length = (view[i] << 16) | (view[i + 1] << 8) | view[i + 2]
            ftype = view[i + 3]
            flags = view[i + 4]
            sid = int.from_bytes(view[i + 5 : i + 9], "big") & 0x7FFFFFFF
            if length > self._h2.max_inbound_frame_size:
                self._feed(mv[fed:i], out)
                raise self._fatal(f"frame of {length} bytes over our maximum", H2_FRAME_SIZE_ERROR)
            if ftype == _DATA:
                if flags & _PADDED and n - i < 10:
                    break
                self._feed(mv[fed:i], out)
                fed = i
                size = length - 1 - view[i + 9] if flags & _PADDED else length
                self._weigh_data(sid, size, bool(flags & _END_STREAM), out)
            elif ftype == _GOAWAY:
                if n - i < 9 + length:
                    break
                self._feed(mv[fed:i], out)
                self._goaway_frame(sid, view[i + 9 : i + 9 + length], out)
                i += 9 + length
                fed = i
                continue
            elif ftype in (_HEADERS, _CONTINUATION):
                if ftype == _HEADERS:
                    self._block = length
                    self._block_frames = 1
                else:
                    self._block += length
                    self._block_frames += 1
                if self._block > self._max_block or self._block_frames > MAX_HEADER_FRAMES:
                    self._feed(mv[fed:i], out)
                    raise self._fatal(
                        f"header block over {self._max_block} bytes or {MAX_HEADER_FRAMES} frames",
                        H2_ENHANCE_YOUR_CALM,
                    )
            i += 9
            self._skip = length
        self._feed(mv[fed:i], out)
        return i

    def _feed(self, chunk: memoryview, out: list[Event]) -> None:
        if not chunk:
            return
        try:
            events = self._h2.receive_data(chunk)
        except h2.exceptions.ProtocolError as exc:
            # h2 has queued its GOAWAY already.
            raise self._peer_error(str(exc) or type(exc).__name__, int(exc.error_code)) from None
        self._convert(events, out)

    def _weigh_data(self, sid: int, size: int, end: bool, out: list[Event]) -> None:
        """RFC 9113 §8.1.1: content-length must equal the sum of the DATA payloads."""
        st = self._streams.get(sid)
        if st is None or st.expected is None:
            return
        st.received += size
        if st.received > st.expected or (end and st.received != st.expected):
            # Reset before h2 sees the frame: it then takes it as DATA on a closed stream
            # (connection window credited back) instead of failing the whole connection.
            self._stream_error(sid, "DATA does not add up to content-length", out)

    def _goaway_frame(self, sid: int, payload: bytes, out: list[Event]) -> None:
        if sid != 0:
            raise self._fatal("GOAWAY on a stream", H2_PROTOCOL_ERROR)
        if len(payload) < 8:
            raise self._fatal("GOAWAY shorter than 8 bytes", H2_FRAME_SIZE_ERROR)
        last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
        code = int.from_bytes(payload[4:8], "big")
        self.goaway_received = True
        out.append(GoAwayReceived(last_stream_id=last, error_code=code))

    def _stream_error(self, sid: int, reason: str, out: list[Event]) -> None:
        """RFC 9113 §5.4.2: reset the stream with PROTOCOL_ERROR; the connection lives on."""
        self._reset_quietly(sid, H2_PROTOCOL_ERROR)
        # Nothing more of it reaches the shell; what it was handed but did not consume is
        # credited back now (its later acknowledgements are then ignored).
        st = self._streams.pop(sid, None)
        if st is not None and st.unacked:
            self._ack(sid, st.unacked)
        out.append(
            StreamReset(stream_id=sid, error_code=H2_PROTOCOL_ERROR, remote=False, reason=reason)
        )

    def _reset_quietly(self, sid: int, code: int) -> None:
        with contextlib.suppress(h2.exceptions.ProtocolError):  # already closed
            self._h2.reset_stream(sid, code)

    def _convert(self, events: list[h2.events.Event], out: list[Event]) -> None:
        for ev in events:
            if isinstance(ev, h2.events.DataReceived):
                self._data(ev, out)
            elif isinstance(ev, h2.events.StreamEnded):
                self._ended(ev.stream_id, out)
            elif isinstance(ev, h2.events.RequestReceived):
                self._request(ev, out)
            elif isinstance(ev, h2.events.ResponseReceived):
                self._response(ev, out)
            elif isinstance(ev, h2.events.InformationalResponseReceived):
                self._informational(ev, out)
            elif isinstance(ev, h2.events.TrailersReceived):
                self._trailers(ev, out)
            elif isinstance(ev, h2.events.WindowUpdated):
                out.append(WindowUpdated(stream_id=ev.stream_id or 0))
            elif isinstance(ev, h2.events.StreamReset):
                self._remote_reset(ev, out)
            elif isinstance(ev, h2.events.RemoteSettingsChanged):
                # The initial window or the frame size may have changed for every stream.
                self.settings_received = True
                out.append(WindowUpdated(stream_id=0))
            elif isinstance(ev, h2.events.PingAckReceived):
                out.append(PingAcknowledged(data=bytes(ev.ping_data or b"")))
            # SETTINGS acks, PINGs (h2 answers them), PRIORITY and unknown frames: nothing to do.

    def _data(self, ev: h2.events.DataReceived, out: list[Event]) -> None:
        sid = ev.stream_id or 0
        data = ev.data or b""
        padding = (ev.flow_controlled_length or 0) - len(data)
        st = self._streams.get(sid)
        if st is None:
            # Not (or no longer) served: credit the connection window at once.
            self._ack(sid, padding + len(data))
            return
        if padding:
            self._ack(sid, padding)  # padding is consumed on arrival
        if data:
            st.unacked += len(data)
            out.append(DataReceived(stream_id=sid, data=data))

    def _ended(self, sid: int, out: list[Event]) -> None:
        st = self._streams.get(sid)
        if st is None:
            return
        if st.expected is not None and st.received != st.expected:
            # Trailers (or the head) ended a body shorter than its content-length.
            self._stream_error(sid, "stream ended before its content-length", out)
            return
        out.append(MessageEnded(stream_id=sid, trailers=st.trailers))

    def _trailers(self, ev: h2.events.TrailersReceived, out: list[Event]) -> None:
        sid = ev.stream_id or 0
        trailers = check.trailers(ev.headers or [], from_client=not self._client_side)
        if isinstance(trailers, str):
            self._stream_error(sid, trailers, out)
            return
        st = self._streams.get(sid)
        if st is not None:
            st.trailers = trailers

    def _remote_reset(self, ev: h2.events.StreamReset, out: list[Event]) -> None:
        out.append(StreamReset(stream_id=ev.stream_id or 0, error_code=int(ev.error_code or 0)))

    def _request(self, ev: h2.events.RequestReceived, out: list[Event]) -> None:
        self._reset_quietly(ev.stream_id or 0, H2_PROTOCOL_ERROR)  # servers only

    def _response(self, ev: h2.events.ResponseReceived, out: list[Event]) -> None:
        pass  # clients only (h2 refuses a response on the server side)

    def _informational(self, ev: h2.events.InformationalResponseReceived, out: list[Event]) -> None:
        pass  # clients only

    # --- sending ---------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Everything queued for the peer, in order; the shell writes it in its ``flush()``."""
        data = self._h2.data_to_send()
        if self._out:
            data = bytes(self._out) + data
            self._out.clear()
        return data

    def send_data(self, stream_id: int, data: bytes | memoryview, end: bool = False) -> int:
        """Send as much of ``data`` as the windows allow (in frames of the peer's maximum
        size); return how much was taken. ``end`` applies once everything is taken. The
        shell waits for ``WindowUpdated`` and calls again with the rest."""
        conn = self._h2
        try:
            room = conn.local_flow_control_window(stream_id)
            total = len(data)
            take = min(total, room)
            size = conn.max_outbound_frame_size
            sent = 0
            if take == total and total <= size:
                conn.send_data(stream_id, data, end_stream=end)
                return total
            view = memoryview(data)
            while sent < take:
                k = min(take - sent, size)
                last = end and sent + k == total
                conn.send_data(stream_id, view[sent : sent + k], end_stream=last)
                sent += k
            if end and total == 0:
                conn.end_stream(stream_id)
        except h2.exceptions.StreamClosedError as exc:
            raise StreamClosed(str(exc)) from None
        except h2.exceptions.NoSuchStreamError as exc:
            raise StreamClosed(str(exc)) from None
        except h2.exceptions.ProtocolError as exc:
            raise StreamClosed(str(exc)) from None
        return take

    def send_end(self, stream_id: int, trailers: Headers | None = None) -> None:
        """End our side of the stream, with trailers if any (they need no window)."""
        try:
            if trailers:
                self._h2.send_headers(stream_id, trailers, end_stream=True)
            else:
                self._h2.end_stream(stream_id)
        except (h2.exceptions.StreamClosedError, h2.exceptions.NoSuchStreamError) as exc:
            raise StreamClosed(str(exc)) from None
        except h2.exceptions.ProtocolError as exc:
            raise self._local_error(str(exc)) from None

    def window(self, stream_id: int) -> int:
        """Bytes that may be sent on the stream now (0 when it is closed)."""
        try:
            return self._h2.local_flow_control_window(stream_id)
        except h2.exceptions.ProtocolError:
            return 0

    def acknowledge(self, stream_id: int, size: int) -> None:
        """The other side consumed ``size`` bytes received on the stream: open the windows."""
        st = self._streams.get(stream_id)
        if st is None:
            return  # forgotten or reset: already credited back
        size = min(size, st.unacked)
        st.unacked -= size
        if size > 0:
            self._ack(stream_id, size)

    def _ack(self, stream_id: int, size: int) -> None:
        if size <= 0 or stream_id <= 0:
            return
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self._h2.acknowledge_received_data(size, stream_id)

    def reset(self, stream_id: int, code: int = H2_CANCEL) -> None:
        """RST_STREAM (if the stream is still open)."""
        self._reset_quietly(stream_id, code)

    def forget(self, stream_id: int, code: int = H2_CANCEL) -> None:
        """The shell is done with the stream: credit back what it did not consume, and reset
        the stream if it is still open — with ``code`` when our side did not finish, with
        NO_ERROR when only the peer's side is left (RFC 9113 §8.1: a complete response may
        end a request the client is still sending)."""
        st = self._streams.pop(stream_id, None)
        if st is not None and st.unacked:
            self._ack(stream_id, st.unacked)
        stream = self._h2.streams.get(stream_id)
        if stream is None or stream.closed:
            return
        ours_done = stream.state_machine.state == h2.stream.StreamState.HALF_CLOSED_LOCAL
        self._reset_quietly(stream_id, H2_NO_ERROR if ours_done else code)

    def stream_open(self, stream_id: int) -> bool:
        stream = self._h2.streams.get(stream_id)
        return stream is not None and not stream.closed

    def ping(self, data: bytes) -> None:
        self._h2.ping(data)

    def goaway(self, error_code: int = H2_NO_ERROR, last_stream_id: int | None = None) -> None:
        """Send GOAWAY but keep serving the streams at or below ``last_stream_id`` (default:
        the highest the peer opened); newer ones are refused (REFUSED_STREAM: safe to retry)."""
        last = self._h2.highest_inbound_stream_id if last_stream_id is None else last_stream_id
        if self.goaway_sent:
            last = min(last, self.goaway_last_stream_id)
        self.goaway_sent = True
        self.goaway_last_stream_id = last
        frame = GoAwayFrame(stream_id=0, last_stream_id=last, error_code=error_code)
        self._out += self._h2.data_to_send()
        self._out += frame.serialize()

    @property
    def open_streams(self) -> int:
        """Streams open in h2's sense (counted against MAX_CONCURRENT_STREAMS)."""
        if self._client_side:
            return int(self._h2.open_outbound_streams)
        return int(self._h2.open_inbound_streams)

    @property
    def peer_max_concurrent_streams(self) -> int:
        return int(self._h2.remote_settings.max_concurrent_streams)


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
        enable_connect_protocol: bool = True,
    ) -> None:
        extra: dict[h2.settings.SettingCodes | int, int] = {}
        if enable_connect_protocol:
            # RFC 8441 §3: extended CONNECT (WebSocket over HTTP/2).
            extra[h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL] = 1
        super().__init__(
            max_concurrent_streams=max_concurrent_streams,
            initial_window_size=initial_window_size,
            max_frame_size=max_frame_size,
            max_header_list_size=max_header_list_size,
            extra_settings=extra,
        )
        self._preface_left = len(PREFACE)
        self._connect_protocol = enable_connect_protocol
        self._max_resets = max_resets_per_second
        self._reset_second = 0.0
        self._resets = 0

    def _request(self, ev: h2.events.RequestReceived, out: list[Event]) -> None:
        sid = ev.stream_id or 0
        if self.goaway_sent and sid > self.goaway_last_stream_id:
            # RFC 9113 §6.8: opened after our GOAWAY: not processed, the client may retry.
            self._reset_quietly(sid, H2_REFUSED_STREAM)
            return
        head = check.request(ev.headers or [], connect_protocol=self._connect_protocol)
        if isinstance(head, str):
            self._stream_error(sid, head, out)
            return
        st = Stream(head=head.method == b"HEAD")
        # h2 weighs a HEAD request's body against 0 whatever its content-length; so do we.
        st.expected = 0 if st.head else check.content_length(head.headers)
        self._streams[sid] = st
        out.append(
            RequestReceived(
                stream_id=sid,
                method=head.method,
                target=head.target,
                authority=head.authority,
                headers=head.headers,
                http_version=b"2",
                ended=ev.stream_ended is not None,
                protocol=head.protocol,
            )
        )

    def _remote_reset(self, ev: h2.events.StreamReset, out: list[Event]) -> None:
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
        super()._remote_reset(ev, out)

    def send_informational(self, stream_id: int, status: int, headers: Headers) -> None:
        self._send_head(stream_id, status, headers, False)

    def send_response(
        self, stream_id: int, status: int, headers: Headers, end: bool = False
    ) -> None:
        self._send_head(stream_id, status, headers, end)

    def _send_head(self, stream_id: int, status: int, headers: Headers, end: bool) -> None:
        block = [(b":status", str(status).encode()), *headers]
        try:
            self._h2.send_headers(stream_id, block, end_stream=end)
        except (h2.exceptions.StreamClosedError, h2.exceptions.NoSuchStreamError) as exc:
            raise StreamClosed(str(exc)) from None
        except h2.exceptions.ProtocolError as exc:
            raise self._local_error(str(exc)) from None
