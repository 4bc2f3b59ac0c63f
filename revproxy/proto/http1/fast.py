"""HTTP/1.1 on llhttp (httptools): the fast implementation of the API in ``http1.py``.

Rule of this room: for the same bytes and the same calls, the same events or the same error
as ``http1.H1Server`` / ``http1.H1Client`` — h11 is the reference, and
``tests/proto/test_http1_differential.py`` holds this module to it. Bytes in, events out;
commands in, bytes out; no I/O.

The work is split three ways: ``http1_wire.py`` reads and writes header fields (llhttp lexes,
h11's grammar decides whatever llhttp refuses), ``http1_state.py`` holds h11's state table and
its body readers and writers, and this module is the API ``http_proxy.py`` uses. Request heads
get the screening of ``http1.py`` (bare CR/LF, obs-fold, 431 however the head arrives,
Content-Length with Transfer-Encoding, absolute-form reduced to origin-form) through the same
functions; on the fast path llhttp's strict lexer refuses every head that screen refuses, and
a refused head is screened again before h11's grammar says why. One check is added to what
h11 does: a reason phrase a peer could not parse back is never sent.

Each direction has a plain path first (``_plain_request``, ``_plain_response`` and the first
branch of each ``send_*``): a whole HTTP/1.1 head in one buffer, origin-form, plain fields and
framing, no protocol switch, a connection that stays open. It does in a few steps what the
exact code would do — the same events, bytes and connection state, slot for slot — and says
"not plain" (None, nothing changed) for anything else, which the exact code then decides.
The screening above holds there too: a plain head has no bare CR or LF, no obs-fold, one Host,
and never both Content-Length and Transfer-Encoding.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar, Final

from revproxy.errors import BackendProtocolError, ClientProtocolError, HeaderTooLarge
from revproxy.proto.events import (
    ConnectionClosed,
    DataReceived,
    Event,
    Headers,
    InformationalReceived,
    MessageEnded,
    RequestReceived,
    ResponseReceived,
    data_received,
    message_ended,
    request_received,
    response_received,
)
from revproxy.proto.http1.head import DEFAULT_MAX_HEADER_SIZE, screen_head, split_absolute
from revproxy.proto.http1.state import (
    CHUNKED,
    CLIENT,
    CLOSE,
    DONE,
    END,
    ERROR,
    IDLE,
    LENGTH,
    MIGHT_SWITCH_PROTOCOL,
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
    MAX_LINE,
    NAME_RE,
    NOT_IN_VALUES,
    PHRASES,
    REASON_RE,
    REQUEST_LINE_RE,
    STATUS_LINE_RE,
    TARGET_RE,
    Message,
    Outgoing,
    Violation,
    decode_fields,
    field_block,
    find_blank_line,
    lex,
    outgoing,
    plain_block,
    plain_fields,
    split_lines,
    tokens,
)

_NO_TRAILERS: Final = Outgoing(b"", [])

# Methods a plain request may have: those of RFC 9110 §9 that neither switch protocols
# (CONNECT) nor are unusual enough to leave to the exact code.
_PLAIN_METHODS: Final = frozenset(
    [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE"]
)
# What a target may not hold besides bytes above 0x7f (h11: ``[\x21-\x7e]+``).
_NOT_IN_TARGETS: Final = bytes(range(0x21)) + b"\x7f"
# Request lines of plain requests received → (method, target), and targets seen valid (in
# those lines or sent): memos, bounded like those of http1_wire.py.
_request_lines: dict[bytes, tuple[bytes, bytes]] = {}
_targets: set[bytes] = set()
_MAX_REQUEST_LINES: Final = 4096


def _read_request_line(line: bytes) -> tuple[bytes, bytes] | None:
    """``method SP origin-form SP HTTP/1.1`` with a method of _PLAIN_METHODS: (method,
    target), remembered; None otherwise."""
    parts = line.split(b" ")
    if len(parts) != 3:
        return None
    method, target, version = parts
    if (
        version != b"HTTP/1.1"
        or method not in _PLAIN_METHODS
        or target[:1] != b"/"
        or not _valid_target(target)
    ):
        return None
    if len(line) <= MAX_LINE:
        if len(_request_lines) >= _MAX_REQUEST_LINES:
            _request_lines.clear()
        _request_lines[line] = method, target
    return method, target


def _valid_target(target: bytes) -> bool:
    """h11's ``[\\x21-\\x7e]+``; remembered when true."""
    if not target or not target.isascii():
        return False
    if len(target.translate(None, _NOT_IN_TARGETS)) != len(target):
        return False
    if len(target) <= MAX_LINE:
        if len(_targets) >= _MAX_REQUEST_LINES:
            _targets.clear()
        _targets.add(target)
    return True


# Status lines of plain final responses received (the bytes after HTTP/1.1 being known valid)
# → (status, reason): a memo, bounded like those of http1_wire.py.
_status_lines: dict[bytes, tuple[int, bytes]] = {}
_MAX_STATUS_LINES: Final = 256


def _read_status_line(line: bytes) -> tuple[int, bytes] | None:
    """``HTTP/1.1 SP 3DIGIT [SP reason]`` of a final response, the reason holding no NUL, CR,
    LF, VT or FF: (status, reason), remembered; None otherwise."""
    code = line[9:12]
    if (
        not line.startswith(b"HTTP/1.1 ")
        or len(line) < 12
        or not code.isdigit()
        or (len(line) > 12 and line[12] != 0x20)
        or len(line.translate(None, NOT_IN_VALUES)) != len(line)
    ):
        return None
    status = int(code)
    if status < 200:
        return None
    if len(_status_lines) >= _MAX_STATUS_LINES:
        _status_lines.clear()
    _status_lines[line] = (status, line[13:])
    return status, line[13:]


# Status lines with the standard reason phrase, for plain responses.
_STATUS_LINES: Final = {
    status: b"HTTP/1.1 %d %b\r\n" % (status, phrase)
    for status, phrase in PHRASES.items()
    if status >= 200
}


class H1Server(Connection):
    """The client side of an exchange: parses requests, serialises responses."""

    __slots__ = ("_eof", "_head_done", "_limit", "_max", "_pending", "stream_id")
    _IS_CLIENT: ClassVar[bool] = False

    def __init__(self, *, max_header_size: int = DEFAULT_MAX_HEADER_SIZE) -> None:
        self._max = max_header_size
        self._limit = max_header_size + 1024  # h11's max_incomplete_event_size in http1.py
        self._reset()
        self._pending = bytearray()  # bytes of a request head not yet parsed
        self._head_done = False
        self._eof = False
        self.stream_id = 0

    # --- receiving ---------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the client (``b""`` = end of stream); return the events completed."""
        if not self._head_done:
            if not data:
                self._eof = True
                return self._try_head(self._pending)
            if self._pending:
                self._pending += data
                return self._try_head(self._pending)
            if not self._eof and type(data) is bytes:
                out = self._plain_request(data)
                if out is not None:
                    return out
            return self._try_head(data)
        if (
            data
            and not self._buf
            and self._client == SEND_BODY
            and self._reader == LENGTH
            and len(data) <= self._read_left
            and not self._closed
        ):
            # The common case of a body arriving: hand the bytes on without copying them.
            self._read_left -= len(data)
            return self._drain([DataReceived(stream_id=self.stream_id, data=data)])
        self._feed(data)
        return self._drain([])

    def _plain_request(self, data: bytes) -> list[Event] | None:
        """A plain request head at the start of ``data`` (HTTP/1.1, origin-form, one Host, plain
        framing, no protocol switch): the events and the state ``_try_head`` would give, with
        far less work. None when the head is not plain or not whole; nothing changed then."""
        end = data.find(b"\r\n\r\n")
        if end < 0 or end + 4 > self._max:
            return None
        # The lines are checked one by one: no bare CR or LF (RFC 9112 §2.2), no NUL, VT or FF.
        lines = data[:end].split(b"\r\n")
        request_line = _request_lines.get(lines[0])
        if request_line is None:
            request_line = _read_request_line(lines[0])
            if request_line is None:
                return None
        method, target = request_line
        del lines[0]
        plain = plain_fields(lines)  # obs-fold: a line starting with SP or HTAB is not plain
        if plain is None:
            return None
        fields, host, length, chunked, close = plain
        if host is None:
            return None
        # What _try_head, _on_request, _request and _drain do with such a head.
        self._head_done = True
        self._method = method
        self._their_version = b"1.1"
        self._client = SEND_BODY
        self._server = SEND_RESPONSE
        if close:
            self._keep_alive = False
        sid = self.stream_id = self.stream_id + 1
        out: list[Event] = [request_received(sid, method, target, host, fields)]
        end += 4
        if chunked:
            self._reader = CHUNKED
        elif length > 0:
            self._read_left = self._read_total = length
            if end < len(data) and len(data) - end <= length:
                # The body (or its start) came with the head: handed on without a copy.
                out.append(data_received(sid, data[end:]))
                self._read_left -= len(data) - end
                return self._drain(out)
        elif not close:
            self._client = DONE  # no body; what follows is the next request's
            if end < len(data):
                self._buf += data[end:]
            out.append(message_ended(sid))
            return out
        if end < len(data):
            self._buf += data[end:]
        return self._drain(out)

    def _try_head(self, buf: bytes | bytearray) -> list[Event]:
        # RFC 9112 §2.2: "a server that is expecting to receive and parse a request-line
        # SHOULD ignore at least one empty line (CRLF) received prior to the request-line".
        start = 0
        while buf.startswith(b"\r\n", start):
            start += 2
        end = buf.find(b"\r\n\r\n", start)
        if end == -1:
            pending = self._keep_pending(buf, start)
            if len(pending) > self._max:
                raise HeaderTooLarge("request head too large")
            if b"\n\n" in pending or b"\r\r" in pending:
                raise ClientProtocolError("bare CR or LF in request head")
            if self._eof:
                if pending:
                    raise ClientProtocolError("connection closed inside a request head")
                return [ConnectionClosed(stream_id=self.stream_id)]
            return []
        end += 4
        if end - start > self._max:
            self._keep_pending(buf, start)
            raise HeaderTooLarge("request head too large")
        head = bytes(buf[start:end])
        line_end = head.find(b"\r\n")
        line = REQUEST_LINE_RE.fullmatch(head, 0, line_end)
        lexed = lex(head, line_end + 2) if line is not None else None
        if lexed is None:
            # llhttp refused the fields, or the request line is wrong: screen as http1.py
            # does before anything else, then let h11's grammar say what is wrong.
            try:
                screen_head(head[:-2])
            except ClientProtocolError:
                self._keep_pending(buf, start)
                raise
        self._head_done = True
        self._buf = bytearray(buf[end:])
        self._pending = bytearray()
        self._closed = self._eof
        try:
            if line is None:
                raise Violation(f"illegal request line: {head[:line_end]!r}")
            if lexed is None:
                msg = Message(decode_fields(split_lines(head)[1:]))
            else:
                msg = Message(*lexed)
            method, target, version = line[1], line[2], line[3]
            if msg.hosts == 0 and version == b"1.1":
                raise Violation("Missing mandatory Host: header")
            if msg.hosts > 1:
                raise Violation("Found multiple Host: headers")
            self._on_request(method, version, msg)
            self._their_version = version
        except Violation as exc:
            self._error(CLIENT)
            raise ClientProtocolError(str(exc)) from None
        return self._drain([self._request(method, target, version, msg)])

    def _keep_pending(self, buf: bytes | bytearray, start: int) -> bytearray:
        """Keep the bytes of an incomplete head (empty lines before it dropped)."""
        if start or buf is not self._pending:
            self._pending = bytearray(buf[start:])
        return self._pending

    def _request(
        self, method: bytes, target: bytes, version: bytes, msg: Message
    ) -> RequestReceived:
        self.stream_id += 1
        headers = msg.fields
        host = msg.host
        if msg.chunked and msg.length >= 0:
            raise ClientProtocolError("both Content-Length and Transfer-Encoding")
        absolute = split_absolute(target)
        if absolute is not None:
            host, target = absolute
            headers = [(n, v) for n, v in headers if n != b"host"]
            headers.insert(0, (b"host", host))
        elif not (target.startswith(b"/") or target == b"*" or method == b"CONNECT"):
            raise ClientProtocolError("invalid request target")
        return RequestReceived(
            stream_id=self.stream_id,
            method=method,
            target=target,
            authority=host,
            headers=headers,
            http_version=version,
        )

    def _drain(self, out: list[Event]) -> list[Event]:
        sid = self.stream_id
        try:
            while True:
                state = self._client
                if state == SEND_BODY:
                    item = self._read_body()
                    if item is None and self._closed and not self._buf:
                        item = self._read_eof()
                elif (state == DONE and self._buf) or state in (
                    MIGHT_SWITCH_PROTOCOL,
                    SWITCHED_PROTOCOL,
                ):
                    return out  # pipelined bytes wait for start_next_cycle; or not HTTP now
                elif state == ERROR:
                    raise Violation("Can't receive data when peer state is ERROR")
                else:
                    if self._buf:
                        raise Violation("Got data when expecting EOF")
                    if self._closed:
                        self._fire(CLIENT, CLOSE)
                        self._settle()
                        out.append(ConnectionClosed(stream_id=sid))
                        return out
                    item = None
                if item is None:
                    if len(self._buf) > self._limit:
                        raise Violation("Receive buffer too long")
                    if self._closed:
                        raise Violation("peer unexpectedly closed connection")
                    return out
                if type(item) is bytes:
                    out.append(DataReceived(stream_id=sid, data=item))
                else:
                    assert isinstance(item, list)
                    self._fire(CLIENT, END)
                    self._settle()
                    out.append(MessageEnded(stream_id=sid, trailers=item))
        except Violation as exc:
            if self._client != ERROR:
                self._error(CLIENT)
            raise ClientProtocolError(str(exc) or "malformed request") from None

    # --- sending -----------------------------------------------------------------------

    def send_informational(self, status: int, headers: Headers) -> bytes:
        try:
            fields, _ = outgoing(headers)
            if not isinstance(status, int) or not 100 <= status < 200:
                raise Violation(
                    f"InformationalResponse status_code should be in range [100, 200), not {status}"
                )
            if self._server == ERROR:
                raise Violation("Can't send data when our state is ERROR")
        except Violation as exc:
            raise BackendProtocolError(f"cannot relay response: {exc}") from None
        try:
            self._on_informational(int(status))
        except Violation as exc:
            self._error(SERVER)
            raise BackendProtocolError(f"cannot relay response: {exc}") from None
        return b"HTTP/1.1 %d \r\n%b\r\n" % (status, fields.block)

    def send_response(self, status: int, headers: Headers, reason: bytes = b"") -> bytes:
        if (
            not reason
            and self._server == SEND_RESPONSE
            and self._keep_alive
            and not self._switch
            and type(headers) is list
        ):
            line = _STATUS_LINES.get(status) if type(status) is int else None
            plain = plain_block(headers) if line is not None else None
            if (
                line is not None
                and plain is not None
                and (plain[2] >= 0 or status == 204 or status == 304)
            ):
                # What _clean_up and _on_response do for a response that has a length (or no
                # body) on a connection that stays open: send the fields as they are.
                self._server = SEND_BODY
                if status == 204 or status == 304 or self._method == b"HEAD":
                    self._write_left = 0
                else:
                    self._write_left = plain[2]
                self._writer = LENGTH
                return line + plain[0] + b"\r\n"
        return self._send_response_exactly(status, headers, reason)

    def _send_response_exactly(self, status: int, headers: Headers, reason: bytes) -> bytes:
        try:
            fields, listed = outgoing(headers)
            if not isinstance(status, int) or not 200 <= status < 1000:
                raise Violation(
                    f"Response status_code should be in range [200, 1000), not {status}"
                )
            status = int(status)
            reason = reason or PHRASES.get(status, b"")
            if REASON_RE.fullmatch(reason) is None:
                raise Violation(f"illegal reason phrase {reason!r}")
            if self._server == ERROR:
                raise Violation("Can't send data when our state is ERROR")
        except Violation as exc:
            raise BackendProtocolError(f"cannot relay response: {exc}") from None
        try:
            self._clean_up(status, fields, listed)
            self._on_response(status, b"1.1", fields)
        except Violation as exc:
            self._error(SERVER)
            raise BackendProtocolError(f"cannot relay response: {exc}") from None
        return b"HTTP/1.1 %d %b\r\n%b\r\n" % (status, reason, fields.block)

    def _clean_up(self, status: int, fields: Outgoing, listed: list[tuple[bytes, bytes]]) -> None:
        """h11's _clean_up_response_headers_for_sending: a response without a length goes out
        chunked to an HTTP/1.1 client, and delimited by close (``Connection: close``) to an
        HTTP/1.0 one; a connection that will close says so."""
        method = self._method
        delimited = not (
            status in (204, 304) or (method == b"CONNECT" and 200 <= status < 300)
        ) and (fields.chunked or fields.length < 0)
        need_close = False
        if delimited:
            items = [
                t
                for t in fields.fields(listed)
                if t[1] != b"content-length" and t[1] != b"transfer-encoding"
            ]
            fields.length = -1
            if self._their_version is None or self._their_version < b"1.1":
                fields.chunked = False
                need_close = method != b"HEAD"
            else:
                items.append((b"Transfer-Encoding", b"transfer-encoding", b"chunked"))
                fields.chunked = True
            fields.items = items
        if not self._keep_alive or need_close:
            items = fields.fields(listed)
            connection = tokens(items, b"connection")
            connection.discard(b"keep-alive")
            connection.add(b"close")
            items = [t for t in items if t[1] != b"connection"]
            items.extend((b"Connection", b"connection", t) for t in sorted(connection))
            fields.items = items
            fields.close = True
        if delimited or fields.close:
            fields.block = field_block(fields.fields(listed))

    def send_data(self, data: bytes) -> bytes:
        if (
            data
            and self._server == SEND_BODY
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
            return self._write_data(SERVER, data)
        except Violation as exc:
            raise BackendProtocolError(f"cannot relay response: {exc}") from None

    def send_end(self, trailers: Headers | None = None) -> bytes:
        if (
            not trailers
            and self._server == SEND_BODY
            and self._writer == LENGTH
            and not self._write_left
            and self._keep_alive
            and not self._switch
            and (self._client == DONE or self._client == SEND_BODY)
        ):
            self._server = DONE  # as _write_end does: nothing else moves (Connection._settle)
            return b""
        return self._send_end_exactly(trailers)

    def _send_end_exactly(self, trailers: Headers | None) -> bytes:
        try:
            return self._write_end(SERVER, outgoing(trailers)[0] if trailers else _NO_TRAILERS)
        except Violation as exc:
            raise BackendProtocolError(f"cannot relay response: {exc}") from None

    # --- life cycle --------------------------------------------------------------------

    @property
    def has_partial_head(self) -> bool:
        """Some bytes of a request head arrived but not all of it."""
        return not self._head_done and bool(self._pending)

    @property
    def response_started(self) -> bool:
        """A response head went out: a local error page can no longer replace it."""
        return self._server != IDLE and self._server != SEND_RESPONSE

    @property
    def request_complete(self) -> bool:
        return self._client == DONE

    @property
    def keep_alive(self) -> bool:
        """Both messages done and neither side asked to close."""
        return self._server == DONE and self._client == DONE

    @property
    def trailing_data(self) -> bytes:
        """After a protocol switch (101): the bytes received past the request, unparsed."""
        return bytes(self._buf)

    def start_next_cycle(self) -> list[Event]:
        """Prepare for the next request; returns events from bytes already received."""
        leftover, closed = self._buf, self._closed
        self._reset()
        self._head_done = False
        self._eof = closed
        if leftover and not closed:
            out = self._plain_request(bytes(leftover))
            if out is not None:
                return out
        self._pending = leftover
        if leftover or closed:
            return self._try_head(leftover)
        return []


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

    def receive_data(self, data: bytes) -> list[Event]:
        if data and not self._buf and not self._closed:
            state = self._server
            if state == SEND_BODY and (
                self._reader == UNTIL_CLOSE
                or (self._reader == LENGTH and len(data) <= self._read_left)
            ):
                # The common case of a body arriving: hand the bytes on without copying them.
                if self._reader == LENGTH:
                    self._read_left -= len(data)
                return self._drain([DataReceived(stream_id=self.stream_id, data=data)])
            if state == SEND_RESPONSE and data[0] >= 0x21:
                if type(data) is bytes:
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
        # What _parse_head and _on_response do with such a head.
        self._their_version = b"1.1"
        self._server = SEND_BODY
        if close:
            self._keep_alive = False
            self._client = MUST_CLOSE
        sid = self.stream_id
        out: list[Event] = [response_received(sid, status, fields, reason)]
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
                out.append(data_received(sid, data[end:]))
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
            out.append(data_received(sid, data[end:]))
        if more == length:
            self._server = DONE if self._keep_alive else MUST_CLOSE
            out.append(message_ended(sid))
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
                out.append(DataReceived(stream_id=sid, data=rest))
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
                    out.append(DataReceived(stream_id=sid, data=item))
                elif type(item) is list:
                    self._fire(SERVER, END)
                    self._settle()
                    out.append(MessageEnded(stream_id=sid, trailers=item))
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
            return InformationalReceived(stream_id=sid, status=status, headers=msg.fields)
        self._on_response(status, version, msg)
        self._check_head_size(head)
        return ResponseReceived(
            stream_id=sid,
            status=status,
            headers=msg.fields,
            reason=line[3] or b"",
            http_version=version,
        )

    def _check_head_size(self, head: bytes) -> None:
        # As http1.py: a head that arrived whole is bounded too (h11 bounds only incomplete
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
