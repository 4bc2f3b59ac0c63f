"""HTTP/2 for both sides of a proxy (RFC 9113), behind the stream events of ``events.py``.

Rule of this room: bytes in, events out (``receive_data(data, now)``); commands in, bytes out
(``data_to_send()``). No I/O and no clock: ``now`` is passed in. This module is the framing
layer itself — frames, stream states, SETTINGS, flow control — with header blocks coded and
checked by ``http2_check.py``. (It replaced python-hyper's h2, whose layers of frame objects,
state-machine tables and events cost several times the work of the requests themselves.)
What it enforces, each as the RFC says:

- §4.1, §4.2, §6: frame sizes (over our SETTINGS_MAX_FRAME_SIZE: FRAME_SIZE_ERROR, decided on
  the frame header), frames on stream 0 or not, fixed payload lengths (FRAME_SIZE_ERROR),
  padding (PROTOCOL_ERROR), header blocks not interrupted (§6.10), SETTINGS values (§6.5.2),
  zero window increments (PROTOCOL_ERROR), PUSH_PROMISE never accepted (push is off).
- §5.1: stream states. A frame on an idle stream other than HEADERS or PRIORITY, a stream id
  that does not grow or has the wrong parity: PROTOCOL_ERROR. Frames on a stream we reset are
  ignored (DATA still counts against, and is credited back to, the connection window); DATA
  or HEADERS after the peer's END_STREAM: STREAM_CLOSED (a stream error while our side is
  open or the peer reset it, a connection error for HEADERS once the stream is closed).
  More streams than our SETTINGS_MAX_CONCURRENT_STREAMS: PROTOCOL_ERROR (§5.1.2).
- §5.2, §6.9: received DATA is acknowledged (WINDOW_UPDATE) only once the shell says the other
  side consumed it (``acknowledge``), in batches of half a window as h2 did, so what a peer can
  make us hold is bounded by the windows we advertise; DATA beyond a window is a
  FLOW_CONTROL_ERROR. Sending never exceeds min(stream window, connection window, the peer's
  max frame size); the shell resumes on ``WindowUpdated``.
- §8.1.1: "Malformed requests or responses that are detected MUST be treated as a stream error
  (Section 5.4.2) of type PROTOCOL_ERROR": a malformed head or trailers (``http2_check.py``), a
  content-length its DATA does not add up to, trailers without END_STREAM — one message reset,
  never its neighbours.
- §4.3: a header block that does not decode is a COMPRESSION_ERROR; one that decodes beyond
  ``max_header_list_size`` is ENHANCE_YOUR_CALM.
- CVE-2023-44487 (rapid reset): more than ``max_resets_per_second`` RST_STREAM from a client in
  one second is a connection error ENHANCE_YOUR_CALM.
- CONTINUATION flood: a header block (HEADERS + CONTINUATION frames) larger than
  ``max_header_list_size`` (plus room for padding) or spread over more than
  ``MAX_HEADER_FRAMES`` frames is a connection error ENHANCE_YOUR_CALM, decided on frame
  headers before the block is buffered.
- GOAWAY: ours carries the last stream processed; a draining connection finishes its streams
  and refuses newer ones (REFUSED_STREAM); a received one is reported (``GoAwayReceived``).

Connection errors raise (``ClientProtocolError`` on the server side, ``BackendProtocolError``
on the client side, ``h2_code`` set) after queueing their GOAWAY: flush, then close.
"""

from __future__ import annotations

import struct

from hpack.exceptions import HPACKDecodingError, OversizedHeaderListError

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
from revproxy.proto.events import (
    Event,
    GoAwayReceived,
    Headers,
    PingAcknowledged,
    StreamReset,
    WindowUpdated,
    data_received,
    message_ended,
    request_received,
)
from revproxy.proto.h2 import check as check

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

H2_FLOW_CONTROL_ERROR = 0x3
H2_STREAM_CLOSED = 0x5
H2_FRAME_SIZE_ERROR = 0x6
H2_COMPRESSION_ERROR = 0x9

# Frame types (RFC 9113 §6).
_DATA = 0x0
_HEADERS = 0x1
_PRIORITY = 0x2
_RST_STREAM = 0x3
_SETTINGS = 0x4
_PUSH_PROMISE = 0x5
_PING = 0x6
_GOAWAY = 0x7
_WINDOW_UPDATE = 0x8
_CONTINUATION = 0x9
# Flags.
_END_STREAM = 0x1
_ACK = 0x1
_END_HEADERS = 0x4
_PADDED = 0x8
_PRIORITY_FLAG = 0x20
# SETTINGS parameters (RFC 9113 §6.5.2, RFC 8441 §3).
SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6
SETTINGS_ENABLE_CONNECT_PROTOCOL = 0x8

# Most frames one header block may span. A block within max_header_list_size needs one or
# two frames of the minimum frame size; only a flood needs more.
MAX_HEADER_FRAMES = 16
# Header block bytes allowed beyond max_header_list_size: padding (256) and priority (5).
HEADER_BLOCK_SLACK = 512
# Largest flow-control window (RFC 9113 §6.9.1) and the initial one (§6.9.2).
MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65535
DEFAULT_FRAME_SIZE = 16384
# A peer's SETTINGS_MAX_CONCURRENT_STREAMS until it says one (RFC 9113 §6.5.2: unlimited).
UNLIMITED_STREAMS = 2**32 + 1
# Closed streams remembered, of each kind: those we reset (late frames on them are ignored),
# and the others (what a late frame on them means: STREAM_CLOSED rather than PROTOCOL_ERROR).
# The oldest are forgotten first; a connection keeps at most twice this many ids.
CLOSED_STREAMS_KEPT = 256

# How a stream closed.
_RESET_BY_US = 1
_RESET_BY_PEER = 2
_ENDED = 3  # both sides sent END_STREAM

_FRAME_HEADER = struct.Struct(">BHBBL")  # length (24 bits as 8 + 16), type, flags, stream id
_SETTING = struct.Struct(">HL")
_U32 = struct.Struct(">L")
_RST_FRAME = struct.Struct(">BHBBLL")  # a whole RST_STREAM or WINDOW_UPDATE frame


class StreamClosed(Exception):
    """The stream was reset or closed: nothing more can be sent on it."""


class Stream:
    """One stream: its states, its windows, and what is weighed of its message."""

    __slots__ = (
        "closed_by",
        "expected",
        "final",
        "head",
        "local_open",
        "processed",
        "received",
        "recv_max",
        "recv_window",
        "remote_open",
        "send_window",
        "trailers",
        "unacked",
    )

    def __init__(self, send_window: int, recv_window: int, head: bool = False) -> None:
        self.local_open = True  # we may send (no END_STREAM or RST_STREAM sent)
        self.remote_open = True  # the peer may send
        self.closed_by = 0
        self.send_window = send_window
        self.recv_window = recv_window  # what the peer may still send
        self.recv_max = recv_window
        self.processed = 0  # consumed bytes not yet given back (WINDOW_UPDATE)
        self.head = head  # a HEAD request: its response has no content
        self.final = False  # the (final) head of the message being received arrived
        self.expected: int | None = None  # content-length of the message being received
        self.received = 0  # DATA payload bytes received
        self.trailers: Headers = []
        self.unacked = 0  # bytes handed to the shell and not yet acknowledged


def _window_update(processed: int, current: int, maximum: int) -> int:
    """How much to give back of ``processed`` bytes (h2's rule, RFC 9113 §6.9.1 leaves it to
    us): once half a window was consumed, or sooner when the window is shut."""
    if (current == 0 and processed > min(1024, maximum // 4)) or processed >= maximum // 2:
        return min(processed, maximum - current)
    return 0


class H2Endpoint:
    """What both sides share: framing, stream states, SETTINGS, flow control, GOAWAY."""

    _client_side = False

    def __init__(
        self,
        *,
        max_concurrent_streams: int,
        initial_window_size: int,
        max_frame_size: int,
        max_header_list_size: int,
        extra_settings: dict[int, int] | None = None,
    ) -> None:
        self._out = bytearray()
        self._encoder = check.Encoder()
        self._decoder = check.Decoder(max_header_list_size)
        self._streams: dict[int, Stream] = {}
        self._reset_by_us: dict[int, None] = {}  # closed streams we reset, oldest first
        self._closed: dict[int, int] = {}  # other closed streams -> how they closed
        self._known: set[tuple[bytes, bytes]] = set()  # fields seen valid (http2_check)
        self._open_in = 0  # open streams the peer opened
        self._open_out = 0  # open streams we opened
        self.highest_inbound_stream_id = 0
        self.highest_outbound_stream_id = 0
        # Our settings: those that protect us apply at once; the initial window size only once
        # acknowledged (until then the peer may fill the default window).
        self._max_streams = max_concurrent_streams
        self.max_inbound_frame_size = max_frame_size
        self._initial_window = DEFAULT_WINDOW
        self._pending_settings: list[dict[int, int]] = []
        # The peer's settings.
        self._peer_initial_window = DEFAULT_WINDOW
        self._peer_max_frame = DEFAULT_FRAME_SIZE
        self._peer_max_streams = UNLIMITED_STREAMS
        # Connection windows: what we may send, what the peer may send.
        self._send_window = DEFAULT_WINDOW
        self._recv_window = DEFAULT_WINDOW
        self._recv_max = DEFAULT_WINDOW
        self._processed = 0
        self._max_block = max_header_list_size + HEADER_BLOCK_SLACK
        self._held = b""  # the start of a frame not wholly received
        self._preface_left = 0
        # The header block being received: its stream, flags of its HEADERS, fragments.
        self._block_sid = 0
        self._block_end = False
        self._block: list[bytes] = []
        self._block_size = 0
        self._now = 0.0
        self._dead = False
        self._opened_all = False  # the connection's window opened (or SETTINGS changed)
        self.goaway_sent = False
        self.goaway_last_stream_id = 0
        self.goaway_received = False
        self.settings_received = False  # the peer's first SETTINGS arrived
        settings = {
            SETTINGS_HEADER_TABLE_SIZE: check.DEFAULT_TABLE_SIZE,
            SETTINGS_ENABLE_PUSH: 0,
            SETTINGS_INITIAL_WINDOW_SIZE: initial_window_size,
            SETTINGS_MAX_FRAME_SIZE: max_frame_size,
            SETTINGS_MAX_CONCURRENT_STREAMS: max_concurrent_streams,
            SETTINGS_MAX_HEADER_LIST_SIZE: max_header_list_size,
            **(extra_settings or {}),
        }
        if self._client_side:
            self._out += PREFACE
        self._send_settings(settings)
        # The connection window never limits below the sum of the stream windows; memory
        # stays bounded by those (each acknowledged only once consumed).
        target = min(MAX_WINDOW, max(DEFAULT_WINDOW, initial_window_size * max_concurrent_streams))
        if target > DEFAULT_WINDOW:
            self._recv_window = self._recv_max = target
            self._out += _RST_FRAME.pack(0, 4, _WINDOW_UPDATE, 0, 0, target - DEFAULT_WINDOW)

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
        """A connection error (RFC 9113 §5.4.1): queue GOAWAY with ``code``, return the error."""
        if not self._dead:
            self._dead = True
            self._goaway_frame(self._last_processed(), code)
        return self._peer_error(reason, code)

    def _last_processed(self) -> int:
        if self._client_side:
            return 0  # a client processes no stream its server opened
        if self.goaway_sent:
            return self.goaway_last_stream_id
        return self.highest_inbound_stream_id

    # --- receiving -------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float = 0.0) -> list[Event]:
        """Feed bytes from the peer; return the events they completed.

        Raises a RevproxyError for a connection error (its GOAWAY is then in
        ``data_to_send()``)."""
        if self._dead:
            return []
        self._now = now
        buf = self._held + data if self._held else data
        out: list[Event] = []
        i = 0
        n = len(buf)
        if self._preface_left:
            k = min(self._preface_left, n)
            start = len(PREFACE) - self._preface_left
            if buf[:k] != PREFACE[start : start + k]:
                raise self._fatal("invalid HTTP/2 preface", H2_PROTOCOL_ERROR)
            self._preface_left -= k
            i = k
        unpack = _FRAME_HEADER.unpack_from
        while n - i >= 9:
            hi, lo, ftype, flags, sid = unpack(buf, i)
            length = (hi << 16) | lo
            sid &= 0x7FFFFFFF
            if length > self.max_inbound_frame_size:
                raise self._fatal(f"frame of {length} bytes over our maximum", H2_FRAME_SIZE_ERROR)
            if ftype in (_HEADERS, _CONTINUATION):
                # Flood limits, decided on the frame header before the block is buffered.
                if ftype == _HEADERS:
                    size, frames = length, 1
                else:
                    size, frames = self._block_size + length, len(self._block) + 1
                if size > self._max_block or frames > MAX_HEADER_FRAMES:
                    raise self._fatal(
                        f"header block over {self._max_block} bytes or {MAX_HEADER_FRAMES} frames",
                        H2_ENHANCE_YOUR_CALM,
                    )
            end = i + 9 + length
            if end > n:
                break
            if self._block_sid and (ftype != _CONTINUATION or sid != self._block_sid):
                raise self._fatal("frame inside a header block", H2_PROTOCOL_ERROR)
            payload = buf[i + 9 : end]
            i = end
            if ftype == _HEADERS:
                self._headers_frame(sid, flags, payload, out)
            elif ftype == _DATA:
                self._data_frame(sid, flags, payload, out)
            elif ftype == _WINDOW_UPDATE:
                self._window_update_frame(sid, payload, out)
            elif ftype == _CONTINUATION:
                self._continuation_frame(sid, flags, payload, out)
            elif ftype == _SETTINGS:
                self._settings_frame(sid, flags, payload, out)
            elif ftype == _RST_STREAM:
                self._rst_stream_frame(sid, payload, out)
            elif ftype == _PING:
                self._ping_frame(sid, flags, payload, out)
            elif ftype == _PRIORITY:
                self._priority_frame(sid, payload)
            elif ftype == _GOAWAY:
                self._goaway_received(sid, payload, out)
            elif ftype == _PUSH_PROMISE:
                raise self._fatal("PUSH_PROMISE while push is disabled", H2_PROTOCOL_ERROR)
            # Frames of unknown types (and ALTSVC, ORIGIN, PRIORITY_UPDATE) are ignored (§5.5).
        self._held = buf[i:] if i < n else b""
        if self._opened_all:
            # One notice for every stream however many frames opened the connection's window
            # (each costs the shell a look at every stream).
            self._opened_all = False
            out.append(WindowUpdated(stream_id=0))
        return out

    # --- frames --------------------------------------------------------------------------------

    def _data_frame(self, sid: int, flags: int, payload: bytes, out: list[Event]) -> None:
        if sid == 0:
            raise self._fatal("DATA on stream 0", H2_PROTOCOL_ERROR)
        length = len(payload)
        if flags & _PADDED:
            if not length:
                raise self._fatal("DATA too short for its padding", H2_FRAME_SIZE_ERROR)
            pad = payload[0]
            if pad >= length:
                raise self._fatal("DATA padding longer than the frame", H2_PROTOCOL_ERROR)
            data = payload[1 : length - pad]
        else:
            data = payload
        # Connection window first: DATA counts against it whatever its stream (§6.9).
        self._recv_window -= length
        if self._recv_window < 0:
            raise self._fatal("DATA beyond the connection window", H2_FLOW_CONTROL_ERROR)
        st = self._streams.get(sid)
        if st is None or not st.remote_open:
            self._data_on_closed(sid, st, length, out)
            return
        st.recv_window -= length
        if st.recv_window < 0:
            raise self._fatal(f"DATA beyond the window of stream {sid}", H2_FLOW_CONTROL_ERROR)
        end = bool(flags & _END_STREAM)
        if st.expected is not None:
            # RFC 9113 §8.1.1: content-length must equal the sum of the DATA payloads.
            st.received += len(data)
            if st.received > st.expected or (end and st.received != st.expected):
                self._stream_error(sid, "DATA does not add up to content-length", out)
                self._credit(sid, length)
                return
        if len(data) != length:
            self._credit(sid, length - len(data))  # padding is consumed on arrival
        if data:
            st.unacked += len(data)
            out.append(data_received(sid, data))
        if end:
            self._remote_ended(sid, st, out)

    def _data_on_closed(self, sid: int, st: Stream | None, length: int, out: list[Event]) -> None:
        """DATA on a stream that is not open to the peer: credited back to the connection
        window at once; ignored after our RST_STREAM, else a stream error STREAM_CLOSED."""
        closed_by = st.closed_by if st is not None else self._closed_how(sid)
        if st is None and not closed_by and sid > self._highest(sid):
            raise self._fatal(f"DATA on idle stream {sid}", H2_PROTOCOL_ERROR)
        self._credit(0, length)
        if closed_by == _RESET_BY_US:
            return
        if st is not None and st.local_open:
            self._stream_error(sid, "DATA after END_STREAM", out, H2_STREAM_CLOSED)
        else:
            self._rst_frame(sid, H2_STREAM_CLOSED)

    def _headers_frame(self, sid: int, flags: int, payload: bytes, out: list[Event]) -> None:
        if sid == 0:
            raise self._fatal("HEADERS on stream 0", H2_PROTOCOL_ERROR)
        start = 0
        stop = len(payload)
        if flags & _PADDED:
            if not stop:
                raise self._fatal("HEADERS too short for its padding", H2_FRAME_SIZE_ERROR)
            pad = payload[0]
            start = 1
            if pad >= stop - 1 and pad:
                raise self._fatal("HEADERS padding longer than the frame", H2_PROTOCOL_ERROR)
            stop -= pad
        if flags & _PRIORITY_FLAG:
            if stop - start < 5:
                raise self._fatal("HEADERS too short for its priority", H2_FRAME_SIZE_ERROR)
            if _U32.unpack_from(payload, start)[0] & 0x7FFFFFFF == sid:
                raise self._fatal(f"stream {sid} depends on itself", H2_PROTOCOL_ERROR)
            start += 5
        fragment = payload[start:stop] if start or stop != len(payload) else payload
        if flags & _END_HEADERS:
            self._header_block(sid, fragment, bool(flags & _END_STREAM), out)
            return
        self._block_sid = sid
        self._block_end = bool(flags & _END_STREAM)
        self._block = [fragment]
        self._block_size = len(payload)

    def _continuation_frame(self, sid: int, flags: int, payload: bytes, out: list[Event]) -> None:
        if not self._block_sid:
            raise self._fatal("CONTINUATION without HEADERS", H2_PROTOCOL_ERROR)
        self._block.append(payload)
        self._block_size += len(payload)
        if flags & _END_HEADERS:
            block = b"".join(self._block)
            self._block_sid = 0
            self._block = []
            self._block_size = 0
            self._header_block(sid, block, self._block_end, out)

    def _decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """RFC 9113 §4.3: every block is decoded, whatever becomes of its stream, so that the
        compression context stays in step with the peer's."""
        try:
            return self._decoder.decode(block)
        except OversizedHeaderListError as exc:
            raise self._fatal(f"header list too large: {exc}", H2_ENHANCE_YOUR_CALM) from None
        except HPACKDecodingError as exc:
            raise self._fatal(f"header block: {exc}", H2_COMPRESSION_ERROR) from None

    def _header_block(self, sid: int, block: bytes, end: bool, out: list[Event]) -> None:
        """A whole header block: a new stream's head, or the next head of a known stream."""
        st = self._streams.get(sid)
        if st is None:
            if sid % 2 == self._client_side or sid <= self.highest_inbound_stream_id:
                self._decode(block)
                self._headers_on_unknown(sid, out)
                return
            if self._open_in >= self._max_streams:
                raise self._fatal(f"over {self._max_streams} concurrent streams", H2_PROTOCOL_ERROR)
            fields = self._decode(block)
            self.highest_inbound_stream_id = sid
            self._new_stream(sid, fields, end, out)
            return
        fields = self._decode(block)
        if not st.remote_open:
            if st.closed_by == _RESET_BY_US:
                return  # RFC 9113 §5.1: ignored after our RST_STREAM
            if st.local_open:
                self._stream_error(sid, "HEADERS after END_STREAM", out, H2_STREAM_CLOSED)
            else:
                self._rst_frame(sid, H2_STREAM_CLOSED)
            return
        if not st.final:
            self._next_head(sid, st, fields, end, out)
            return
        # A trailer section (RFC 9113 §8.1): it ends the message.
        if not end:
            self._stream_error(sid, "trailers without END_STREAM", out)
            return
        trailers = check.trailers(fields, from_client=not self._client_side, known=self._known)
        if isinstance(trailers, str):
            self._stream_error(sid, trailers, out)
            return
        st.trailers = trailers
        self._remote_ended(sid, st, out)

    def _headers_on_unknown(self, sid: int, out: list[Event]) -> None:
        """HEADERS on a stream that is not open: one we reset (ignored), one the peer ended
        or reset, or one the peer may not open."""
        how = self._closed_how(sid)
        if how == _RESET_BY_US:
            return
        if how == _RESET_BY_PEER:
            self._rst_frame(sid, H2_STREAM_CLOSED)
            return
        if how == _ENDED:
            raise self._fatal(f"HEADERS on closed stream {sid}", H2_STREAM_CLOSED)
        raise self._fatal(f"HEADERS may not open stream {sid}", H2_PROTOCOL_ERROR)

    def _new_stream(
        self, sid: int, fields: list[tuple[bytes, bytes]], end: bool, out: list[Event]
    ) -> None:
        """A stream the peer opened (only servers have them: clients refuse in _header_block)."""
        raise self._fatal(f"HEADERS may not open stream {sid}", H2_PROTOCOL_ERROR)

    def _next_head(
        self, sid: int, st: Stream, fields: list[tuple[bytes, bytes]], end: bool, out: list[Event]
    ) -> None:
        """A head on a stream whose (final) head has not arrived: responses, for clients."""

    def _remote_ended(self, sid: int, st: Stream, out: list[Event]) -> None:
        """The peer's END_STREAM: the message is whole, if its content-length agrees."""
        if st.expected is not None and st.received != st.expected:
            # Trailers (or the head) ended a body shorter than its content-length.
            self._stream_error(sid, "stream ended before its content-length", out)
            return
        st.remote_open = False
        if not st.local_open:
            self._stream_closed(sid, st, _ENDED)
        out.append(message_ended(sid, st.trailers))

    def _window_update_frame(self, sid: int, payload: bytes, out: list[Event]) -> None:
        if len(payload) != 4:
            raise self._fatal("WINDOW_UPDATE of a wrong length", H2_FRAME_SIZE_ERROR)
        increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if not increment:
            raise self._fatal("WINDOW_UPDATE of 0", H2_PROTOCOL_ERROR)
        if sid == 0:
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise self._fatal("connection window over 2^31-1", H2_FLOW_CONTROL_ERROR)
            self._opened_all = True
            return
        st = self._streams.get(sid)
        if st is None:
            if sid > self._highest(sid):
                raise self._fatal(f"WINDOW_UPDATE on idle stream {sid}", H2_PROTOCOL_ERROR)
            return  # closed: ignored (RFC 9113 §6.9)
        if not st.local_open:
            return
        st.send_window += increment
        if st.send_window > MAX_WINDOW:
            self._stream_error(sid, "stream window over 2^31-1", out, H2_FLOW_CONTROL_ERROR)
            return
        out.append(WindowUpdated(stream_id=sid))

    def _rst_stream_frame(self, sid: int, payload: bytes, out: list[Event]) -> None:
        if len(payload) != 4:
            raise self._fatal("RST_STREAM of a wrong length", H2_FRAME_SIZE_ERROR)
        if sid == 0:
            raise self._fatal("RST_STREAM on stream 0", H2_PROTOCOL_ERROR)
        st = self._streams.get(sid)
        if st is None:
            if sid > self._highest(sid):
                raise self._fatal(f"RST_STREAM on idle stream {sid}", H2_PROTOCOL_ERROR)
            return  # closed: nothing to do
        if not st.local_open and not st.remote_open:
            return
        code = _U32.unpack(payload)[0]
        self._peer_reset(sid, code)
        self._stream_closed(sid, st, _RESET_BY_PEER)
        out.append(StreamReset(stream_id=sid, error_code=code))

    def _peer_reset(self, sid: int, code: int) -> None:
        """The peer reset a stream (rapid-reset accounting, for servers)."""

    def _priority_frame(self, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise self._fatal("PRIORITY on stream 0", H2_PROTOCOL_ERROR)
        if len(payload) != 5:
            raise self._fatal("PRIORITY of a wrong length", H2_FRAME_SIZE_ERROR)
        if _U32.unpack_from(payload)[0] & 0x7FFFFFFF == sid:
            raise self._fatal(f"stream {sid} depends on itself", H2_PROTOCOL_ERROR)

    def _settings_frame(self, sid: int, flags: int, payload: bytes, out: list[Event]) -> None:
        if sid != 0:
            raise self._fatal("SETTINGS on a stream", H2_PROTOCOL_ERROR)
        if flags & _ACK:
            if payload:
                raise self._fatal("SETTINGS ACK with a payload", H2_FRAME_SIZE_ERROR)
            if self._pending_settings:
                self._local_settings_acked(self._pending_settings.pop(0))
            return
        if len(payload) % 6:
            raise self._fatal("SETTINGS of a wrong length", H2_FRAME_SIZE_ERROR)
        for k in range(0, len(payload), 6):
            ident, value = _SETTING.unpack_from(payload, k)
            self._remote_setting(ident, value)
        self._out += _FRAME_HEADER.pack(0, 0, _SETTINGS, _ACK, 0)
        self.settings_received = True
        # The initial window or the frame size may have changed for every stream.
        self._opened_all = True

    def _remote_setting(self, ident: int, value: int) -> None:
        """RFC 9113 §6.5.2 (and RFC 8441 §3): validate and apply one of the peer's settings."""
        if ident == SETTINGS_HEADER_TABLE_SIZE:
            self._encoder.header_table_size = value
        elif ident == SETTINGS_ENABLE_PUSH:
            if value > 1 or (self._client_side and value):
                raise self._fatal("invalid SETTINGS_ENABLE_PUSH", H2_PROTOCOL_ERROR)
        elif ident == SETTINGS_INITIAL_WINDOW_SIZE:
            if value > MAX_WINDOW:
                raise self._fatal("SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1", H2_FLOW_CONTROL_ERROR)
            delta = value - self._peer_initial_window
            self._peer_initial_window = value
            for st in self._streams.values():
                if st.local_open:
                    st.send_window += delta
                    if st.send_window > MAX_WINDOW:
                        raise self._fatal("stream window over 2^31-1", H2_FLOW_CONTROL_ERROR)
        elif ident == SETTINGS_MAX_FRAME_SIZE:
            if not DEFAULT_FRAME_SIZE <= value <= 2**24 - 1:
                raise self._fatal("invalid SETTINGS_MAX_FRAME_SIZE", H2_PROTOCOL_ERROR)
            self._peer_max_frame = value
        elif ident == SETTINGS_MAX_CONCURRENT_STREAMS:
            self._peer_max_streams = value
        elif ident == SETTINGS_ENABLE_CONNECT_PROTOCOL and value > 1:
            raise self._fatal("invalid SETTINGS_ENABLE_CONNECT_PROTOCOL", H2_PROTOCOL_ERROR)

    def _local_settings_acked(self, settings: dict[int, int]) -> None:
        """The peer applied our SETTINGS: a new initial window size now holds for our
        streams (RFC 9113 §6.9.2)."""
        value = settings.get(SETTINGS_INITIAL_WINDOW_SIZE)
        if value is None or value == self._initial_window:
            return
        delta = value - self._initial_window
        self._initial_window = value
        for st in self._streams.values():
            st.recv_window += delta
            st.recv_max = max(st.recv_max + delta, 0)

    def _ping_frame(self, sid: int, flags: int, payload: bytes, out: list[Event]) -> None:
        if sid != 0:
            raise self._fatal("PING on a stream", H2_PROTOCOL_ERROR)
        if len(payload) != 8:
            raise self._fatal("PING of a wrong length", H2_FRAME_SIZE_ERROR)
        if flags & _ACK:
            out.append(PingAcknowledged(data=bytes(payload)))
        else:
            self._out += _FRAME_HEADER.pack(0, 8, _PING, _ACK, 0)
            self._out += payload

    def _goaway_received(self, sid: int, payload: bytes, out: list[Event]) -> None:
        if sid != 0:
            raise self._fatal("GOAWAY on a stream", H2_PROTOCOL_ERROR)
        if len(payload) < 8:
            raise self._fatal("GOAWAY shorter than 8 bytes", H2_FRAME_SIZE_ERROR)
        last = _U32.unpack_from(payload)[0] & 0x7FFFFFFF
        code = _U32.unpack_from(payload, 4)[0]
        self.goaway_received = True
        out.append(GoAwayReceived(last_stream_id=last, error_code=code))

    # --- stream bookkeeping --------------------------------------------------------------------

    def _highest(self, sid: int) -> int:
        """The highest stream id used of ``sid``'s parity (above it: idle streams)."""
        if sid % 2 == self._client_side:
            return self.highest_outbound_stream_id
        return self.highest_inbound_stream_id

    def _stream_closed(self, sid: int, st: Stream, how: int) -> None:
        """Both sides of ``st`` are done: it no longer counts against the stream limits."""
        if st.closed_by:
            return
        st.closed_by = how
        st.local_open = st.remote_open = False
        if sid % 2 == self._client_side:
            self._open_out -= 1
        else:
            self._open_in -= 1

    def _remember(self, sid: int, how: int) -> None:
        """How a stream the shell is done with closed, for frames that arrive late."""
        if how == _RESET_BY_US:
            kept: dict[int, None] | dict[int, int] = self._reset_by_us
            self._reset_by_us[sid] = None
        else:
            kept = self._closed
            self._closed[sid] = how
        if len(kept) > CLOSED_STREAMS_KEPT:
            del kept[next(iter(kept))]

    def _closed_how(self, sid: int) -> int:
        if sid in self._reset_by_us:
            return _RESET_BY_US
        return self._closed.get(sid, 0)

    def _stream_error(
        self, sid: int, reason: str, out: list[Event], code: int = H2_PROTOCOL_ERROR
    ) -> None:
        """RFC 9113 §5.4.2: reset the stream; the connection lives on. Nothing more of it
        reaches the shell; what it was handed but did not consume is credited back now (its
        later acknowledgements are then ignored)."""
        st = self._streams.get(sid)
        if st is not None:
            self._close_by_reset(sid, st, code)
            del self._streams[sid]
            if st.unacked:
                self._credit(0, st.unacked)
        else:
            self._rst_frame(sid, code)
        self._remember(sid, _RESET_BY_US)
        out.append(StreamReset(stream_id=sid, error_code=code, remote=False, reason=reason))

    def _close_by_reset(self, sid: int, st: Stream, code: int) -> None:
        self._rst_frame(sid, code)
        self._stream_closed(sid, st, _RESET_BY_US)

    def _rst_frame(self, sid: int, code: int) -> None:
        self._out += _RST_FRAME.pack(0, 4, _RST_STREAM, 0, sid, code)

    def _credit(self, sid: int, size: int) -> None:
        """``size`` received bytes are consumed: give them back to the peer's windows (the
        connection's, and the stream's while the peer may still send on it)."""
        if size <= 0:
            return
        self._processed += size
        inc = _window_update(self._processed, self._recv_window, self._recv_max)
        if inc:
            self._processed = 0
            self._recv_window += inc
            self._out += _RST_FRAME.pack(0, 4, _WINDOW_UPDATE, 0, 0, inc)
        st = self._streams.get(sid) if sid else None
        if st is None or not st.remote_open:
            return
        st.processed += size
        inc = _window_update(st.processed, st.recv_window, st.recv_max)
        if inc:
            st.processed = 0
            st.recv_window += inc
            self._out += _RST_FRAME.pack(0, 4, _WINDOW_UPDATE, 0, sid, inc)

    # --- sending ---------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Everything queued for the peer, in order; the shell writes it in its ``flush()``."""
        if not self._out:
            return b""
        data = bytes(self._out)
        self._out.clear()
        return data

    def _send_settings(self, settings: dict[int, int]) -> None:
        payload = b"".join(_SETTING.pack(k, v) for k, v in settings.items())
        self._out += _FRAME_HEADER.pack(0, len(payload), _SETTINGS, 0, 0)
        self._out += payload
        self._pending_settings.append(settings)

    def _send_headers(self, sid: int, fields: Headers, end: bool) -> None:
        """A header block, in HEADERS and CONTINUATION frames of the peer's maximum size."""
        block = self._encoder.encode(fields)
        size = self._peer_max_frame
        flags = _END_STREAM if end else 0
        out = self._out
        if len(block) <= size:
            out += _FRAME_HEADER.pack(0, len(block), _HEADERS, flags | _END_HEADERS, sid)
            out += block
            return
        out += _FRAME_HEADER.pack(size >> 16, size & 0xFFFF, _HEADERS, flags, sid)
        out += block[:size]
        for k in range(size, len(block), size):
            chunk = block[k : k + size]
            last = _END_HEADERS if k + size >= len(block) else 0
            n = len(chunk)
            out += _FRAME_HEADER.pack(n >> 16, n & 0xFFFF, _CONTINUATION, last, sid)
            out += chunk

    def _sendable(self, stream_id: int) -> Stream:
        st = self._streams.get(stream_id)
        if st is None or not st.local_open:
            raise StreamClosed(f"stream {stream_id} is closed")
        return st

    def _local_ended(self, sid: int, st: Stream) -> None:
        st.local_open = False
        if not st.remote_open:
            self._stream_closed(sid, st, _ENDED)

    def send_data(self, stream_id: int, data: bytes | memoryview, end: bool = False) -> int:
        """Send as much of ``data`` as the windows allow (in frames of the peer's maximum
        size); return how much was taken. ``end`` applies once everything is taken. The
        shell waits for ``WindowUpdated`` and calls again with the rest."""
        st = self._sendable(stream_id)
        total = len(data)
        take = min(total, self._send_window, st.send_window)
        if take < 0:
            take = 0
        size = self._peer_max_frame
        out = self._out
        if take == total and total <= size:
            flags = _END_STREAM if end else 0
            out += _FRAME_HEADER.pack(total >> 16, total & 0xFFFF, _DATA, flags, stream_id)
            out += data
        else:
            sent = 0
            while sent < take:
                k = min(take - sent, size)
                flags = _END_STREAM if end and sent + k == total else 0
                out += _FRAME_HEADER.pack(k >> 16, k & 0xFFFF, _DATA, flags, stream_id)
                out += data[sent : sent + k]
                sent += k
        self._send_window -= take
        st.send_window -= take
        if end and take == total:
            self._local_ended(stream_id, st)
        return take

    def send_end(self, stream_id: int, trailers: Headers | None = None) -> None:
        """End our side of the stream, with trailers if any (they need no window)."""
        st = self._sendable(stream_id)
        if trailers:
            self._send_headers(stream_id, trailers, True)
        else:
            self._out += _FRAME_HEADER.pack(0, 0, _DATA, _END_STREAM, stream_id)
        self._local_ended(stream_id, st)

    def window(self, stream_id: int) -> int:
        """Bytes that may be sent on the stream now (0 when it is closed)."""
        st = self._streams.get(stream_id)
        if st is None or not st.local_open:
            return 0
        return max(0, min(self._send_window, st.send_window))

    def acknowledge(self, stream_id: int, size: int) -> None:
        """The other side consumed ``size`` bytes received on the stream: open the windows."""
        st = self._streams.get(stream_id)
        if st is None:
            return  # forgotten or reset: already credited back
        size = min(size, st.unacked)
        st.unacked -= size
        if size > 0:
            self._credit(stream_id, size)

    def reset(self, stream_id: int, code: int = H2_CANCEL) -> None:
        """RST_STREAM (if the stream is still open)."""
        st = self._streams.get(stream_id)
        if st is not None and (st.local_open or st.remote_open):
            self._close_by_reset(stream_id, st, code)

    def forget(self, stream_id: int, code: int = H2_CANCEL) -> None:
        """The shell is done with the stream: credit back what it did not consume, and reset
        the stream if it is still open — with ``code`` when our side did not finish, with
        NO_ERROR when only the peer's side is left (RFC 9113 §8.1: a complete response may
        end a request the client is still sending)."""
        st = self._streams.pop(stream_id, None)
        if st is None:
            return
        if st.unacked:
            self._credit(0, st.unacked)
        if st.local_open or st.remote_open:
            self._rst_frame(stream_id, code if st.local_open else H2_NO_ERROR)
            self._stream_closed(stream_id, st, _RESET_BY_US)
        self._remember(stream_id, st.closed_by)

    def stream_open(self, stream_id: int) -> bool:
        st = self._streams.get(stream_id)
        return st is not None and (st.local_open or st.remote_open)

    def ping(self, data: bytes) -> None:
        self._out += _FRAME_HEADER.pack(0, 8, _PING, 0, 0)
        self._out += data[:8].ljust(8, b"\x00")

    def _goaway_frame(self, last: int, code: int) -> None:
        self._out += _FRAME_HEADER.pack(0, 8, _GOAWAY, 0, 0)
        self._out += _U32.pack(last) + _U32.pack(code)

    def goaway(self, error_code: int = H2_NO_ERROR, last_stream_id: int | None = None) -> None:
        """Send GOAWAY but keep serving the streams at or below ``last_stream_id`` (default:
        the highest the peer opened); newer ones are refused (REFUSED_STREAM: safe to retry)."""
        last = self.highest_inbound_stream_id if last_stream_id is None else last_stream_id
        if self.goaway_sent:
            last = min(last, self.goaway_last_stream_id)
        self.goaway_sent = True
        self.goaway_last_stream_id = last
        self._goaway_frame(last, error_code)

    @property
    def open_streams(self) -> int:
        """Streams open (counted against MAX_CONCURRENT_STREAMS): ours for a client, the
        peer's for a server."""
        return self._open_out if self._client_side else self._open_in

    @property
    def peer_max_concurrent_streams(self) -> int:
        return self._peer_max_streams


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
        extra: dict[int, int] = {}
        if enable_connect_protocol:
            # RFC 8441 §3: extended CONNECT (WebSocket over HTTP/2).
            extra[SETTINGS_ENABLE_CONNECT_PROTOCOL] = 1
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

    def _new_stream(
        self, sid: int, fields: list[tuple[bytes, bytes]], end: bool, out: list[Event]
    ) -> None:
        if self.goaway_sent and sid > self.goaway_last_stream_id:
            # RFC 9113 §6.8: opened after our GOAWAY: not processed, the client may retry.
            self._rst_frame(sid, H2_REFUSED_STREAM)
            self._remember(sid, _RESET_BY_US)
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
            request_received(
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
