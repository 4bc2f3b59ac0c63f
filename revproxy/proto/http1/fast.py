"""HTTP/1.1 on llhttp (httptools): the fast implementation of the API in ``api.py``; its
server side, ``H1Server``, and the pair (``H1Client`` is re-exported from ``fast_client.py``).

Rule of this room: for the same bytes and the same calls, the same events or the same error
as ``exact.H1Server`` / ``exact.H1Client`` — h11 is the reference, and
``tests/proto/http1/test_differential.py`` holds this implementation to it. Bytes in, events
out; commands in, bytes out; no I/O.

The work is split five ways: ``wire.py`` reads and writes header fields (llhttp lexes, h11's
grammar decides whatever llhttp refuses), ``state.py`` holds h11's state table and its body
readers and writers, ``fast_lines.py`` reads and remembers the start lines of plain heads, and
this module (``H1Server``, the client side of an exchange) and ``fast_client.py``
(``H1Client``, the backend side) are the API the exchange uses; ``fast.H1Server`` and
``fast.H1Client`` name the pair, as ``exact`` does. Request heads get the screening of
``exact.py`` (bare CR/LF, obs-fold, 431 however the head arrives, Content-Length with
Transfer-Encoding, absolute-form reduced to origin-form) through the same functions
(``head.py``); on the fast path llhttp's strict lexer refuses every head that screen refuses,
and a refused head is screened again before h11's grammar says why. One check is added to
what h11 does: a reason phrase a peer could not parse back is never sent.

Each direction has a plain path first (``_plain_request``, ``_plain_response`` and the first
branch of each ``send_*``): a whole HTTP/1.1 head in one buffer, origin-form, plain fields and
framing, no protocol switch, a connection that stays open. It does in a few steps what the
exact code would do — the same events, bytes and connection state, slot for slot — and says
"not plain" (None, nothing changed) for anything else, which the exact code then decides.
The screening above holds there too: a plain head has no bare CR or LF, no obs-fold, one Host,
and never both Content-Length and Transfer-Encoding.
"""

from __future__ import annotations

from typing import ClassVar, Final

from revproxy.errors import BackendProtocolError, ClientProtocolError, HeaderTooLarge
from revproxy.proto.events import (
    ConnectionClosed,
    DataReceived,
    Event,
    Headers,
    MessageEnded,
    RequestReceived,
)
from revproxy.proto.http1.fast_client import H1Client
from revproxy.proto.http1.fast_lines import (
    _STATUS_LINES,
    _read_request_line,
    _request_lines,
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
    SEND_BODY,
    SEND_RESPONSE,
    SERVER,
    SWITCHED_PROTOCOL,
    Connection,
)
from revproxy.proto.http1.wire import (
    PHRASES,
    REASON_RE,
    REQUEST_LINE_RE,
    Message,
    Outgoing,
    Violation,
    decode_fields,
    field_block,
    lex,
    outgoing,
    plain_block,
    plain_fields,
    split_lines,
    tokens,
)

__all__ = ["H1Client", "H1Server"]

_NO_TRAILERS: Final = Outgoing(b"", [])


class H1Server(Connection):
    """The client side of an exchange: parses requests, serialises responses."""

    __slots__ = ("_eof", "_head_done", "_limit", "_max", "_pending", "stream_id")
    _IS_CLIENT: ClassVar[bool] = False

    def __init__(self, *, max_header_size: int = DEFAULT_MAX_HEADER_SIZE) -> None:
        self._max = max_header_size
        self._limit = max_header_size + 1024  # h11 max_incomplete_event_size (exact.py)
        self._reset()
        self._pending = bytearray()  # bytes of a request head not yet parsed
        self._head_done = False
        self._eof = False
        self.stream_id = 0

    # --- receiving ---------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> list[Event]:
        """Feed bytes from the client (``b""`` = end of stream); return the events completed."""
        if type(data) is not bytes:
            data = bytes(data)  # a caller's buffer is neither kept nor handed on in an event
        if not self._head_done:
            if not data:
                self._eof = True
                return self._try_head(self._pending)
            if self._pending:
                self._pending += data
                return self._try_head(self._pending)
            if not self._eof:
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
            return self._drain([DataReceived(self.stream_id, data)])
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
        out: list[Event] = [RequestReceived(sid, method, target, host, fields)]
        end += 4
        if chunked:
            self._reader = CHUNKED
        elif length > 0:
            self._read_left = self._read_total = length
            if end < len(data) and len(data) - end <= length:
                # The body (or its start) came with the head: handed on without a copy.
                out.append(DataReceived(sid, data[end:]))
                self._read_left -= len(data) - end
                return self._drain(out)
        elif not close:
            self._client = DONE  # no body; what follows is the next request's
            if end < len(data):
                self._buf += data[end:]
            out.append(MessageEnded(sid, []))
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
            # llhttp refused the fields, or the request line is wrong: screen as exact.py
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
        return RequestReceived(self.stream_id, method, target, host, headers, version)

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
                    out.append(DataReceived(sid, item))
                else:
                    assert isinstance(item, list)
                    self._fire(CLIENT, END)
                    self._settle()
                    out.append(MessageEnded(sid, item))
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
