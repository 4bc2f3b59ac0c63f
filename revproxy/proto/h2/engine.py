"""HTTP/2 for both sides of a proxy (RFC 9113), behind the stream events of ``events.py``.

Rule of this room: bytes in, events out (``receive_data(data, now)``); commands in, bytes out
(``data_to_send()``). No I/O and no clock: ``now`` is passed in. This module is the receiving
half of the engine — frames parsed, checked and dispatched, stream states advanced, events
made — over the connection state and the sending half of ``connection.py``; header blocks are
coded by ``hpack_codec.py`` and checked by ``check.py``; the roles are ``server.py`` and
``client.py``. (It replaced python-hyper's h2, whose layers of frame objects, state-machine
tables and events cost several times the work of the requests themselves.) What it enforces,
each as the RFC says:

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
- §5.2, §6.9: DATA beyond a window is a FLOW_CONTROL_ERROR; so is a WINDOW_UPDATE or a
  SETTINGS_INITIAL_WINDOW_SIZE that takes a window over 2^31-1. Opened windows are reported
  (``WindowUpdated``; one notice for the whole connection however many frames opened it).
- §8.1.1: "Malformed requests or responses that are detected MUST be treated as a stream error
  (Section 5.4.2) of type PROTOCOL_ERROR": a malformed head or trailers (``check.py``), a
  content-length its DATA does not add up to, trailers without END_STREAM — one message reset,
  never its neighbours.
- §4.3: a header block that does not decode is a COMPRESSION_ERROR; one that decodes beyond
  ``max_header_list_size`` is ENHANCE_YOUR_CALM. Every block is decoded, whatever becomes of
  its stream, so that the compression context stays in step with the peer's.
- CONTINUATION flood: a header block (HEADERS + CONTINUATION frames) larger than
  ``max_header_list_size`` (plus room for padding) or spread over more than
  ``MAX_HEADER_FRAMES`` frames is a connection error ENHANCE_YOUR_CALM, decided on frame
  headers before the block is buffered.
- GOAWAY: a received one is reported (``GoAwayReceived``).
- Control-frame floods (CVE-2019-9512 ping flood, CVE-2019-9513 priority churn, CVE-2019-9515
  settings flood, CVE-2019-9518 empty frames): frames that carry no request or response cost
  us work (and an ACK to queue) and the peer nothing. Each of them spends one of
  ``max_control_frames_per_second`` (the second starts at the first ``receive_data`` one
  second or more after the last start, with the ``now`` passed in): PING, SETTINGS, PRIORITY,
  GOAWAY, frames of unknown types, DATA that carries no data and no END_STREAM, and
  WINDOW_UPDATE on a stream we no longer send on. Past it: a connection error
  ENHANCE_YOUR_CALM, before the frame is handled. (RST_STREAM has its own limit: rapid reset,
  ``server.py``.) DATA that carries data, and WINDOW_UPDATE on a stream we send on, cost
  nothing more.

Connection errors raise (``ClientProtocolError`` on the server side, ``BackendProtocolError``
on the client side, ``h2_code`` set) after queueing their GOAWAY: flush, then close.
"""

from __future__ import annotations

from hpack.exceptions import HPACKDecodingError, OversizedHeaderListError

from revproxy.errors import H2_ENHANCE_YOUR_CALM, H2_PROTOCOL_ERROR, RevproxyError
from revproxy.proto.events import (
    DataReceived,
    Event,
    GoAwayReceived,
    MessageEnded,
    PingAcknowledged,
    StreamReset,
    WindowUpdated,
)
from revproxy.proto.h2 import check as check
from revproxy.proto.h2 import frames as _frames
from revproxy.proto.h2.connection import (
    ENDED,
    RESET_BY_PEER,
    RESET_BY_US,
    H2Connection,
    Stream,
)
from revproxy.proto.h2.frames import (
    ACK,
    CONTINUATION,
    DATA,
    DEFAULT_FRAME_SIZE,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    H2_COMPRESSION_ERROR,
    H2_FLOW_CONTROL_ERROR,
    H2_FRAME_SIZE_ERROR,
    H2_STREAM_CLOSED,
    HEADERS,
    MAX_HEADER_FRAMES,
    MAX_WINDOW,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    SETTINGS_ENABLE_CONNECT_PROTOCOL,
    SETTINGS_ENABLE_PUSH,
    SETTINGS_HEADER_TABLE_SIZE,
    SETTINGS_INITIAL_WINDOW_SIZE,
    SETTINGS_MAX_CONCURRENT_STREAMS,
    SETTINGS_MAX_FRAME_SIZE,
    WINDOW_UPDATE,
)

# The struct layouts are bound here by assignment, not imported by name: CPython 3.11 compiles
# ``name.method(...)`` on a name an import bound as an attribute load (it takes the name for a
# module), which builds a bound method on every frame packed or unpacked.
_FRAME_HEADER = _frames.FRAME_HEADER
_SETTING = _frames.SETTING
_U32 = _frames.U32


class H2Endpoint(H2Connection):
    """What both sides share, and the receiving half: frames in, events out."""

    # --- receiving -------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float = 0.0) -> list[Event]:
        """Feed bytes from the peer; return the events they completed.

        Raises a RevproxyError for a connection error (its GOAWAY is then in
        ``data_to_send()``)."""
        if self._dead:
            return []
        self._now = now
        if now - self._control_since >= 1.0:
            # A new second: the control-frame budget is whole again.
            self._control_since = now
            self._control_left = self._max_control
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
            if ftype in (HEADERS, CONTINUATION):
                # Flood limits, decided on the frame header before the block is buffered.
                if ftype == HEADERS:
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
            if self._block_sid and (ftype != CONTINUATION or sid != self._block_sid):
                raise self._fatal("frame inside a header block", H2_PROTOCOL_ERROR)
            payload = buf[i + 9 : end]
            i = end
            if ftype == HEADERS:
                self._headers_frame(sid, flags, payload, out)
            elif ftype == DATA:
                self._data_frame(sid, flags, payload, out)
            elif ftype == WINDOW_UPDATE:
                self._window_update_frame(sid, payload, out)
            elif ftype == CONTINUATION:
                self._continuation_frame(sid, flags, payload, out)
            elif ftype == RST_STREAM:
                self._rst_stream_frame(sid, payload, out)
            else:
                # Every other frame carries no request or response: it spends the budget.
                self._control_left -= 1
                if self._control_left < 0:
                    raise self._control_flood()
                if ftype == SETTINGS:
                    self._settings_frame(sid, flags, payload, out)
                elif ftype == PING:
                    self._ping_frame(sid, flags, payload, out)
                elif ftype == PRIORITY:
                    self._priority_frame(sid, payload)
                elif ftype == GOAWAY:
                    self._goaway_received(sid, payload, out)
                elif ftype == PUSH_PROMISE:
                    raise self._fatal("PUSH_PROMISE while push is disabled", H2_PROTOCOL_ERROR)
                # Frames of unknown types (and ALTSVC, ORIGIN, PRIORITY_UPDATE) are ignored
                # (§5.5).
        self._held = buf[i:] if i < n else b""
        if self._opened_all:
            # One notice for every stream however many frames opened the connection's window
            # (each costs the shell a look at every stream).
            self._opened_all = False
            out.append(WindowUpdated(stream_id=0))
        return out

    def _control_frame(self) -> None:
        """A frame that carries nothing, found by its handler (empty DATA, WINDOW_UPDATE on a
        stream we no longer send on): it spends the control-frame budget as the others do in
        the loop above."""
        self._control_left -= 1
        if self._control_left < 0:
            raise self._control_flood()

    def _control_flood(self) -> RevproxyError:
        return self._fatal(
            f"over {self._max_control} control frames in a second (flood)", H2_ENHANCE_YOUR_CALM
        )

    # --- frames --------------------------------------------------------------------------------

    def _data_frame(self, sid: int, flags: int, payload: bytes, out: list[Event]) -> None:
        if sid == 0:
            raise self._fatal("DATA on stream 0", H2_PROTOCOL_ERROR)
        length = len(payload)
        if flags & PADDED:
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
        end = bool(flags & END_STREAM)
        st = self._streams.get(sid)
        if st is None or not st.remote_open:
            if not data and not end:
                self._control_frame()  # it carries nothing
            self._data_on_closed(sid, st, length, out)
            return
        st.recv_window -= length
        if st.recv_window < 0:
            raise self._fatal(f"DATA beyond the window of stream {sid}", H2_FLOW_CONTROL_ERROR)
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
            out.append(DataReceived(sid, data))
        elif not end:
            self._control_frame()  # it carries nothing
        if end:
            self._remote_ended(sid, st, out)

    def _data_on_closed(self, sid: int, st: Stream | None, length: int, out: list[Event]) -> None:
        """DATA on a stream that is not open to the peer: credited back to the connection
        window at once; ignored after our RST_STREAM, else a stream error STREAM_CLOSED."""
        closed_by = st.closed_by if st is not None else self._closed_how(sid)
        if st is None and not closed_by and sid > self._highest(sid):
            raise self._fatal(f"DATA on idle stream {sid}", H2_PROTOCOL_ERROR)
        self._credit(0, length)
        if closed_by == RESET_BY_US:
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
        if flags & PADDED:
            if not stop:
                raise self._fatal("HEADERS too short for its padding", H2_FRAME_SIZE_ERROR)
            pad = payload[0]
            start = 1
            if pad >= stop - 1 and pad:
                raise self._fatal("HEADERS padding longer than the frame", H2_PROTOCOL_ERROR)
            stop -= pad
        if flags & PRIORITY_FLAG:
            if stop - start < 5:
                raise self._fatal("HEADERS too short for its priority", H2_FRAME_SIZE_ERROR)
            if _U32.unpack_from(payload, start)[0] & 0x7FFFFFFF == sid:
                raise self._fatal(f"stream {sid} depends on itself", H2_PROTOCOL_ERROR)
            start += 5
        fragment = payload[start:stop] if start or stop != len(payload) else payload
        if flags & END_HEADERS:
            self._header_block(sid, fragment, bool(flags & END_STREAM), out)
            return
        self._block_sid = sid
        self._block_end = bool(flags & END_STREAM)
        self._block = [fragment]
        self._block_size = len(payload)

    def _continuation_frame(self, sid: int, flags: int, payload: bytes, out: list[Event]) -> None:
        if not self._block_sid:
            raise self._fatal("CONTINUATION without HEADERS", H2_PROTOCOL_ERROR)
        self._block.append(payload)
        self._block_size += len(payload)
        if flags & END_HEADERS:
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
        except OversizedHeaderListError as too_large:
            # (One name per exception type: a compiler gives a name one type per function.)
            raise self._fatal(f"header list too large: {too_large}", H2_ENHANCE_YOUR_CALM) from None
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
            if st.closed_by == RESET_BY_US:
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
        if how == RESET_BY_US:
            return
        if how == RESET_BY_PEER:
            self._rst_frame(sid, H2_STREAM_CLOSED)
            return
        if how == ENDED:
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
            self._stream_closed(sid, st, ENDED)
        out.append(MessageEnded(sid, st.trailers))

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
        if st is None or not st.local_open:
            if st is None and sid > self._highest(sid):
                raise self._fatal(f"WINDOW_UPDATE on idle stream {sid}", H2_PROTOCOL_ERROR)
            # Closed, or we sent all we had: ignored (RFC 9113 §6.9). It carries nothing (one
            # may arrive late on an honest stream).
            self._control_frame()
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
        self._stream_closed(sid, st, RESET_BY_PEER)
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
        if flags & ACK:
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
        self._out += _FRAME_HEADER.pack(0, 0, SETTINGS, ACK, 0)
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
        if flags & ACK:
            out.append(PingAcknowledged(data=bytes(payload)))
        else:
            self._out += _FRAME_HEADER.pack(0, 8, PING, ACK, 0)
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
