"""One HTTP/2 connection's state, and what we send on it (RFC 9113), sans-I/O.

Rule of this room: commands in, bytes out (``data_to_send()``); no I/O and no clock. This is
the half of the engine that holds the connection — its streams and their states, both sides'
SETTINGS, the flow-control windows, GOAWAY — and queues the frames we send (all but the ACKs
of SETTINGS and PING); ``engine.py`` adds the other half, bytes in and events out, over the
same state. (Split there because the code divides there: the receiving half calls into this
one — to reset a stream, give window back, end a stream — and this one never calls into it.)
What it enforces, each as the RFC says:

- §5.1: stream states. A stream is open, half closed on either side, or closed; nothing is
  sent on a stream our side ended or reset (``StreamClosed``). Closed streams are remembered
  (``CLOSED_STREAMS_KEPT`` of each kind) so that a late frame on one is told apart from a
  frame on an idle stream: ignored after our RST_STREAM, STREAM_CLOSED otherwise.
- §5.2, §6.9: sending never exceeds min(stream window, connection window, the peer's max frame
  size); the shell resumes on ``WindowUpdated``. Received DATA is acknowledged
  (WINDOW_UPDATE) only once the shell says the other side consumed it (``acknowledge``), in
  batches of half a window as h2 did; what a reset stream was handed but did not consume is
  credited back to the connection at once.
- §5.4.1: a connection error queues GOAWAY with the last stream processed, then raises
  (``ClientProtocolError`` on the server side, ``BackendProtocolError`` on the client side,
  ``h2_code`` set): flush, then close. §5.4.2: a stream error resets that stream only.
- §6.5: our SETTINGS wait for the peer's ACK (``_pending_settings``) before the initial window
  they set applies; the connection window is opened to cover every stream's.
- §6.8: a GOAWAY we send carries the last stream we will process; a later one never raises
  it.
- Control-frame floods: the budget of frames a peer may send that carry no request or
  response a second (``max_control_frames_per_second``; ``engine.py`` spends it).
- §8.1: a complete response may end a request the client is still sending (``forget``:
  RST_STREAM NO_ERROR).
"""

from __future__ import annotations

from revproxy.errors import (
    H2_CANCEL,
    H2_NO_ERROR,
    H2_PROTOCOL_ERROR,
    BackendProtocolError,
    ClientProtocolError,
    RevproxyError,
)
from revproxy.proto.events import Event, Headers, StreamReset
from revproxy.proto.h2 import frames as _frames
from revproxy.proto.h2 import hpack_codec as hpack_codec
from revproxy.proto.h2.frames import (
    CONTINUATION,
    DATA,
    DEFAULT_FRAME_SIZE,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADER_BLOCK_SLACK,
    HEADERS,
    MAX_WINDOW,
    PING,
    PREFACE,
    RST_STREAM,
    SETTINGS,
    SETTINGS_ENABLE_PUSH,
    SETTINGS_HEADER_TABLE_SIZE,
    SETTINGS_INITIAL_WINDOW_SIZE,
    SETTINGS_MAX_CONCURRENT_STREAMS,
    SETTINGS_MAX_FRAME_SIZE,
    SETTINGS_MAX_HEADER_LIST_SIZE,
    UNLIMITED_STREAMS,
    WINDOW_UPDATE,
)

# The struct layouts are bound here by assignment, not imported by name: CPython 3.11 compiles
# ``name.method(...)`` on a name an import bound as an attribute load (it takes the name for a
# module), which builds a bound method on every frame packed or unpacked.
_FRAME_HEADER = _frames.FRAME_HEADER
_RST_FRAME = _frames.RST_FRAME
_SETTING = _frames.SETTING
_U32 = _frames.U32

# Closed streams remembered, of each kind: those we reset (late frames on them are ignored),
# and the others (what a late frame on them means: STREAM_CLOSED rather than PROTOCOL_ERROR).
# The oldest are forgotten first; a connection keeps at most twice this many ids.
CLOSED_STREAMS_KEPT = 256

# Control frames a second when no limit is set: in effect none (the client role, whose peers
# are the operator's own origins).
NO_CONTROL_LIMIT = 1 << 62

# How a stream closed.
RESET_BY_US = 1
RESET_BY_PEER = 2
ENDED = 3  # both sides sent END_STREAM


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


class H2Connection:
    """What both sides share: stream states, SETTINGS, flow control, GOAWAY, and the frames we
    send. The state of the receiving half (``H2Endpoint``) is set up here too, so that all of
    a connection's state reads in one place."""

    _client_side = False

    def __init__(
        self,
        *,
        max_concurrent_streams: int,
        initial_window_size: int,
        max_frame_size: int,
        max_header_list_size: int,
        max_control_frames_per_second: int = NO_CONTROL_LIMIT,
        extra_settings: dict[int, int] | None = None,
    ) -> None:
        self._out = bytearray()
        self._encoder = hpack_codec.Encoder()
        self._decoder = hpack_codec.Decoder(max_header_list_size)
        self._streams: dict[int, Stream] = {}
        self._reset_by_us: dict[int, None] = {}  # closed streams we reset, oldest first
        self._closed: dict[int, int] = {}  # other closed streams -> how they closed
        self._known: set[tuple[bytes, bytes]] = set()  # fields seen valid (check.py)
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
        # Frames that carry no request or response (engine.py says which): what is left of the
        # budget of the second that began at ``_control_since``.
        self._max_control = max_control_frames_per_second
        self._control_left = max_control_frames_per_second
        self._control_since = 0.0
        self._dead = False
        self._opened_all = False  # the connection's window opened (or SETTINGS changed)
        self.goaway_sent = False
        self.goaway_last_stream_id = 0
        self.goaway_received = False
        self.settings_received = False  # the peer's first SETTINGS arrived
        settings = {
            SETTINGS_HEADER_TABLE_SIZE: hpack_codec.DEFAULT_TABLE_SIZE,
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
            self._out += _RST_FRAME.pack(0, 4, WINDOW_UPDATE, 0, 0, target - DEFAULT_WINDOW)

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
        if how == RESET_BY_US:
            kept: dict[int, None] | dict[int, int] = self._reset_by_us
            self._reset_by_us[sid] = None
        else:
            kept = self._closed
            self._closed[sid] = how
        if len(kept) > CLOSED_STREAMS_KEPT:
            del kept[next(iter(kept))]

    def _closed_how(self, sid: int) -> int:
        if sid in self._reset_by_us:
            return RESET_BY_US
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
        self._remember(sid, RESET_BY_US)
        out.append(StreamReset(stream_id=sid, error_code=code, remote=False, reason=reason))

    def _close_by_reset(self, sid: int, st: Stream, code: int) -> None:
        self._rst_frame(sid, code)
        self._stream_closed(sid, st, RESET_BY_US)

    def _rst_frame(self, sid: int, code: int) -> None:
        self._out += _RST_FRAME.pack(0, 4, RST_STREAM, 0, sid, code)

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
            self._out += _RST_FRAME.pack(0, 4, WINDOW_UPDATE, 0, 0, inc)
        st = self._streams.get(sid) if sid else None
        if st is None or not st.remote_open:
            return
        st.processed += size
        inc = _window_update(st.processed, st.recv_window, st.recv_max)
        if inc:
            st.processed = 0
            st.recv_window += inc
            self._out += _RST_FRAME.pack(0, 4, WINDOW_UPDATE, 0, sid, inc)

    # --- sending ---------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Everything queued for the peer, in order; the shell writes it in its ``flush()``."""
        if not self._out:
            return b""
        data = bytes(self._out)
        self._out.clear()
        return data

    @property
    def queued(self) -> int:
        """Bytes queued for the peer that ``data_to_send()`` has not taken yet."""
        return len(self._out)

    def _send_settings(self, settings: dict[int, int]) -> None:
        payload = b"".join(_SETTING.pack(k, v) for k, v in settings.items())
        self._out += _FRAME_HEADER.pack(0, len(payload), SETTINGS, 0, 0)
        self._out += payload
        self._pending_settings.append(settings)

    def _send_headers(self, sid: int, fields: Headers, end: bool) -> None:
        """A header block, in HEADERS and CONTINUATION frames of the peer's maximum size."""
        block = self._encoder.encode(fields)
        size = self._peer_max_frame
        flags = END_STREAM if end else 0
        out = self._out
        if len(block) <= size:
            out += _FRAME_HEADER.pack(0, len(block), HEADERS, flags | END_HEADERS, sid)
            out += block
            return
        out += _FRAME_HEADER.pack(size >> 16, size & 0xFFFF, HEADERS, flags, sid)
        out += block[:size]
        for k in range(size, len(block), size):
            chunk = block[k : k + size]
            last = END_HEADERS if k + size >= len(block) else 0
            n = len(chunk)
            out += _FRAME_HEADER.pack(n >> 16, n & 0xFFFF, CONTINUATION, last, sid)
            out += chunk

    def _sendable(self, stream_id: int) -> Stream:
        st = self._streams.get(stream_id)
        if st is None or not st.local_open:
            raise StreamClosed(f"stream {stream_id} is closed")
        return st

    def _local_ended(self, sid: int, st: Stream) -> None:
        st.local_open = False
        if not st.remote_open:
            self._stream_closed(sid, st, ENDED)

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
            flags = END_STREAM if end else 0
            out += _FRAME_HEADER.pack(total >> 16, total & 0xFFFF, DATA, flags, stream_id)
            out += data
        else:
            sent = 0
            while sent < take:
                k = min(take - sent, size)
                flags = END_STREAM if end and sent + k == total else 0
                out += _FRAME_HEADER.pack(k >> 16, k & 0xFFFF, DATA, flags, stream_id)
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
            self._out += _FRAME_HEADER.pack(0, 0, DATA, END_STREAM, stream_id)
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
            self._stream_closed(stream_id, st, RESET_BY_US)
        self._remember(stream_id, st.closed_by)

    def stream_open(self, stream_id: int) -> bool:
        st = self._streams.get(stream_id)
        return st is not None and (st.local_open or st.remote_open)

    def ping(self, data: bytes) -> None:
        self._out += _FRAME_HEADER.pack(0, 8, PING, 0, 0)
        self._out += data[:8].ljust(8, b"\x00")

    def _goaway_frame(self, last: int, code: int) -> None:
        self._out += _FRAME_HEADER.pack(0, 8, GOAWAY, 0, 0)
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
