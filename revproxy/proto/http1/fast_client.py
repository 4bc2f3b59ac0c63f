"""HTTP/1.1 on llhttp (httptools), backend side: ``H1Client`` of the fast implementation
(``fast.py`` holds ``H1Server`` and re-exports this class, so ``fast.H1Client`` still names it).

Rule of this room: for the same calls and the same bytes, the same bytes and events or the
same error as ``exact.H1Client`` — h11 is the reference, and
``tests/proto/http1/test_differential.py`` holds this class to it. Commands in, bytes out;
bytes in, events out; no I/O.

A request goes out with h11's checks: one Host (RFC 9112 §3.2: a client MUST send one; an
empty one is added when the caller gave none, as ``exact.H1Client`` does), legal method and
target characters, the state table's framing. A response head is lexed by llhttp and, for
whatever llhttp refuses (bare LF, obs-fold, a control character), read by h11's grammar
(``wire.py``), so both give the same event or the same error. As in ``exact.py``, a head that
arrived whole is bounded by ``max_header_size`` too, and bytes past a response are never taken
for the next one (``reusable`` is false while they wait).

Each direction has a plain path first (``_plain_response`` and the first branch of each
``send_*``): a request sent whole with one Host first and a plain length, or a whole final
response (2xx to 9xx) in one buffer with plain fields and framing to a request sent whole
without a protocol switch. It does in a few steps what the exact code would do — the same
events, bytes and connection state, slot for slot — and says "not plain" (None, nothing
changed) for anything else, which the exact code then decides.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar, Final

from revproxy.errors import BackendProtocolError, ClientProtocolError
from revproxy.proto.events import (
    ConnectionClosed,
    DataReceived,
    Event,
    Headers,
    InformationalReceived,
    MessageEnded,
    ResponseReceived,
)
from revproxy.proto.http1.fast_lines import (
    _PLAIN_METHODS,
    _read_status_line,
    _status_lines,
    _targets,
    _valid_target,
)
from revproxy.proto.http1.head import BOTH_LENGTHS, DEFAULT_MAX_HEADER_SIZE
from revproxy.proto.http1.state import (
    CHUNKED,
    CLIENT,
    CLOSE,
    DONE,
    END,
    ERROR,
    IDLE,
    LENGTH,
    MUST_CLOSE,
    SEND_BODY,
    SEND_RESPONSE,
    SERVER,
    STATE_NAMES,
    SWITCHED_PROTOCOL,
    UNTIL_CLOSE,
    Connection,
)
from revproxy.proto.http1.wire import (
    NAME_RE,
    STATUS_LINE_RE,
    TARGET_RE,
    Message,
    Outgoing,
    Violation,
    decode_fields,
    find_blank_line,
    lex,
    outgoing,
    plain_block,
    plain_fields,
    split_lines,
)

_NO_TRAILERS: Final = Outgoing(b"", [])


class H1Client(Connection):
    """The backend side of an exchange: serialises requests, parses responses."""

    __slots__ = ("_max", "stream_id")
    _IS_CLIENT: ClassVar[bool] = True

    def __init__(self, *, max_header_size: int = DEFAULT_MAX_HEADER_SIZE) -> None:
        self._max = max_header_size
        self._reset()
        self.stream_id = 0

    # --- sending -----------------------------------------------------------------------

    def send_request(
        self, method: bytes, target: bytes, headers: Iterable[tuple[bytes, bytes]]
    ) -> bytes:
        self.stream_id += 1
        if (  # a plain request: one Host, first; a plain length or none; nothing to switch to
            type(headers) is list
            and headers
            and headers[0][0] == b"host"
            and method in _PLAIN_METHODS
            and self._client == IDLE
            and self._server == IDLE
            and type(target) is bytes
            and (target in _targets or _valid_target(target))
        ):
            plain = plain_block(headers)
            if plain is not None and plain[1] == 1:
                # What _on_request does for a request with one Host, first, and a plain length.
                self._client = SEND_BODY
                self._server = SEND_RESPONSE
                self._method = method
                self._writer = LENGTH
                self._write_left = max(plain[2], 0)
                return b"%b %b HTTP/1.1\r\n%b\r\n" % (method, target, plain[0])
        return self._send_request_exactly(method, target, headers)

    def _send_request_exactly(
        self, method: bytes, target: bytes, headers: Iterable[tuple[bytes, bytes]]
    ) -> bytes:
        headers = list(headers)
        if not any(name == b"host" for name, _ in headers):
            headers.insert(0, (b"host", b""))  # RFC 9112 §3.2, as in http1.H1Client
        try:
            fields, _ = outgoing(headers)
            if fields.hosts == 0:
                raise Violation("Missing mandatory Host: header")
            if fields.hosts > 1:
                raise Violation("Found multiple Host: headers")
            if NAME_RE.fullmatch(method) is None:
                raise Violation("Illegal method characters")
            if TARGET_RE.fullmatch(target) is None:
                raise Violation("Illegal target characters")
            if self._client == ERROR:
                raise Violation("Can't send data when our state is ERROR")
        except Violation as exc:
            raise ClientProtocolError(f"cannot relay request: {exc}") from None
        try:
            self._on_request(method, b"1.1", fields)
        except Violation as exc:
            self._error(CLIENT)
            raise ClientProtocolError(f"cannot relay request: {exc}") from None
        return b"%b %b HTTP/1.1\r\n%b\r\n" % (method, target, fields.block)

    def send_data(self, data: bytes) -> bytes:
        if (
            data
            and self._client == SEND_BODY
            and self._writer == LENGTH
            and len(data) <= self._write_left
        ):
            self._write_left -= len(data)  # as _write_data does
            return data
        return self._send_data_exactly(data)

    def _send_data_exactly(self, data: bytes) -> bytes:
        if not data:
            return b""
        try:
            return self._write_data(CLIENT, data)
        except Violation as exc:
            raise ClientProtocolError(f"cannot relay request: {exc}") from None

    def send_end(self, trailers: Headers | None = None) -> bytes:
        if (
            not trailers
            and self._client == SEND_BODY
            and self._writer == LENGTH
            and not self._write_left
            and self._keep_alive
            and not self._switch
            and (self._server == SEND_RESPONSE or self._server == SEND_BODY or self._server == DONE)
        ):
            self._client = DONE  # as _write_end does: nothing else moves (Connection._settle)
            return b""
        return self._send_end_exactly(trailers)

    def _send_end_exactly(self, trailers: Headers | None) -> bytes:
        try:
            return self._write_end(CLIENT, outgoing(trailers)[0] if trailers else _NO_TRAILERS)
        except Violation as exc:
            raise ClientProtocolError(f"cannot relay request: {exc}") from None

    # --- receiving ---------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> list[Event]:
        if type(data) is not bytes:
            data = bytes(data)  # a caller's buffer is neither kept nor handed on in an event
        if data and not self._buf and not self._closed:
            state = self._server
            if state == SEND_BODY and (
                self._reader == UNTIL_CLOSE
                or (self._reader == LENGTH and len(data) <= self._read_left)
            ):
                # The common case of a body arriving: hand the bytes on without copying them.
                if self._reader == LENGTH:
                    self._read_left -= len(data)
                return self._drain([DataReceived(self.stream_id, data)])
            if state == SEND_RESPONSE and data[0] >= 0x21:
                out = self._plain_response(data)
                if out is not None:
                    return out
                end = find_blank_line(data, 0)
                if end > 0:
                    return self._whole_head(data, end)
        self._feed(data)
        return self._drain([])

    def _plain_response(self, data: bytes) -> list[Event] | None:
        """A plain final response at the start of ``data`` (HTTP/1.1, 2xx to 9xx, plain framing)
        to a request sent whole without a protocol switch: the events and the state
        ``_whole_head`` would give, with far less work. None when the head is not plain or not
        whole; nothing changed then."""
        if self._client != DONE or self._switch:
            return None
        end = data.find(b"\r\n\r\n")
        if end < 0 or end + 4 > self._max:
            return None
        # The lines are checked one by one: no bare CR or LF, no NUL, VT or FF.
        lines = data[:end].split(b"\r\n")
        line = lines[0]
        status_line = _status_lines.get(line)
        if status_line is None:
            status_line = _read_status_line(line)
            if status_line is None:
                return None
        status, reason = status_line
        del lines[0]
        plain = plain_fields(lines)
        if plain is None:
            return None
        fields, _, length, chunked, close = plain
        if chunked and length >= 0:
            return None  # refused by _parse_head (RFC 9112 §6.3)
        # What _parse_head and _on_response do with such a head.
        self._their_version = b"1.1"
        self._server = SEND_BODY
        if close:
            self._keep_alive = False
            self._client = MUST_CLOSE
        sid = self.stream_id
        out: list[Event] = [ResponseReceived(sid, status, fields, reason)]
        end += 4
        more = len(data) - end
        if status == 204 or status == 304 or self._method == b"HEAD":
            length = 0
        elif chunked:
            self._set_framing(CHUNKED, 0, ours=False)
            if more:
                self._buf += data[end:]
            return self._drain(out)
        elif length < 0:
            self._set_framing(UNTIL_CLOSE, 0, ours=False)
            if more:
                out.append(DataReceived(sid, data[end:]))
            return self._drain(out)
        self._reader = LENGTH  # and the rest of what _set_framing does
        self._chunk_left = 0
        self._discard = b""
        self._trailer = False
        if more > length:
            self._read_left = self._read_total = length
            self._buf += data[end:]  # bytes past the response: _drain leaves them unread
            return self._drain(out)
        self._read_total = length
        self._read_left = length - more
        if more:
            out.append(DataReceived(sid, data[end:]))
        if more == length:
            self._server = DONE if self._keep_alive else MUST_CLOSE
            out.append(MessageEnded(sid, []))
        return out

    def _whole_head(self, data: bytes, end: int) -> list[Event]:
        """A response head that arrived at the start of ``data``: what ``_drain`` would do,
        without copying the bytes into the receive buffer first."""
        sid = self.stream_id
        try:
            event = self._parse_head(data[:end], sid)
        except (Violation, BackendProtocolError) as exc:
            self._buf += data[end:]  # what follows a refused head stays unparsed, as in _drain
            if isinstance(exc, BackendProtocolError):
                raise
            self._error(SERVER)
            raise BackendProtocolError(f"malformed response: {exc}") from None
        out: list[Event] = [event]
        if end < len(data):
            rest = data[end:]
            if self._server == SEND_BODY and (
                self._reader == UNTIL_CLOSE
                or (self._reader == LENGTH and len(rest) <= self._read_left)
            ):
                if self._reader == LENGTH:
                    self._read_left -= len(rest)
                out.append(DataReceived(sid, rest))
            else:
                self._buf += rest
        return self._drain(out)

    def _drain(self, out: list[Event]) -> list[Event]:
        sid = self.stream_id
        try:
            while True:
                state = self._server
                item: bytes | Headers | Event | None
                if state == SEND_BODY:
                    item = self._read_body()
                    if item is None and self._closed and not self._buf:
                        item = self._read_eof()
                elif state in (IDLE, SEND_RESPONSE):
                    item = self._read_head(sid)
                    if item is None and self._closed and not self._buf:
                        self._fire(SERVER, CLOSE)
                        self._settle()
                        out.append(ConnectionClosed(stream_id=sid))
                        return out
                elif (state == DONE and self._buf) or state == SWITCHED_PROTOCOL:
                    return out  # bytes beyond the response, or not HTTP any more: not ours
                elif state == ERROR:
                    raise Violation("Can't receive data when peer state is ERROR")
                else:
                    if self._buf:
                        raise Violation("Got data when expecting EOF")
                    if self._closed:
                        self._fire(SERVER, CLOSE)
                        self._settle()
                        out.append(ConnectionClosed(stream_id=sid))
                        return out
                    item = None
                if item is None:
                    if len(self._buf) > self._max:
                        raise Violation("Receive buffer too long")
                    if self._closed:
                        raise Violation("peer unexpectedly closed connection")
                    return out
                if type(item) is bytes:
                    out.append(DataReceived(sid, item))
                elif type(item) is list:
                    self._fire(SERVER, END)
                    self._settle()
                    out.append(MessageEnded(sid, item))
                else:
                    assert isinstance(item, InformationalReceived | ResponseReceived)
                    out.append(item)
        except Violation as exc:
            if self._server != ERROR:
                self._error(SERVER)
            raise BackendProtocolError(f"malformed response: {exc}") from None

    def _read_head(self, sid: int) -> Event | None:
        buf = self._buf
        if buf[:1] == b"\n" or buf[:2] == b"\r\n":
            self._take(1 if buf[0] == 10 else 2)  # h11 takes the empty line, then refuses it
            raise Violation("no response line received")
        end = find_blank_line(buf, self._lines_search)
        if end < 0:
            self._lines_search = max(0, len(buf) - 2)
            if buf and buf[0] < 0x21:
                raise Violation("illegal request line")
            return None
        return self._parse_head(self._take(end), sid)

    def _parse_head(self, head: bytes, sid: int) -> Event:
        """A complete response head (status line to empty line): its event, state updated."""
        line_end = head.find(b"\r\n")
        line = None
        lexed = None
        if line_end > 0 and head.endswith(b"\r\n\r\n"):
            line = STATUS_LINE_RE.fullmatch(head, 0, line_end)
            if line is not None:
                lexed = lex(head, line_end + 2)
        if lexed is not None:
            msg = Message(*lexed)
        else:
            # Bare LF, obs-fold, a control character llhttp refuses ...: h11's grammar decides.
            lines = split_lines(head)
            line = STATUS_LINE_RE.fullmatch(lines[0])
            if line is None:
                raise Violation(f"illegal status line: {lines[0]!r}")
            msg = Message(decode_fields(lines[1:]))
        assert line is not None
        if msg.chunked and msg.length >= 0:
            raise Violation(BOTH_LENGTHS)
        version = line[1]
        status = int(line[2])
        self._their_version = version
        if status < 200:
            if status < 100:
                raise Violation(
                    f"InformationalResponse status_code should be in range [100, 200), not {status}"
                )
            self._on_informational(status)
            self._check_head_size(head)
            return InformationalReceived(sid, status, msg.fields)
        self._on_response(status, version, msg)
        self._check_head_size(head)
        return ResponseReceived(sid, status, msg.fields, line[3] or b"", version)

    def _check_head_size(self, head: bytes) -> None:
        # As exact.py: a head that arrived whole is bounded too (h11 bounds only incomplete
        # ones), once the head was taken in, so the connection's state is not ERROR.
        if len(head) > self._max:
            raise BackendProtocolError(f"response head over {self._max} bytes")

    @property
    def response_complete(self) -> bool:
        return self._server == DONE

    @property
    def reusable(self) -> bool:
        """Request and response both finished and the connection may carry another
        (never with bytes past the response: see http1.H1Client.reusable)."""
        return self._client == DONE and self._server == DONE and not self._buf

    @property
    def trailing_data(self) -> bytes:
        """After a protocol switch (101): the bytes received past its head, unparsed."""
        return bytes(self._buf)

    def start_next_cycle(self) -> None:
        if self._client != DONE or self._server != DONE:
            raise RuntimeError(
                f"not in a reusable state: client {STATE_NAMES[self._client]}, "
                f"server {STATE_NAMES[self._server]}"
            )
        self._client = self._server = IDLE
        self._method = None
