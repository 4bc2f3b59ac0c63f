"""HTTP/1.1 connection state, body readers and body writers, for ``proto/http1/fast.py``.

Rule of this room: h11's state machine (``h11/_state.py``) as one table, and h11's readers and
writers (``_readers.py``, ``_writers.py``), with the same outcomes for the same calls. Each
side of a connection is in one state; an event the table lacks is a protocol error. RFC 9112
§9.3 keep-alive (HTTP/1.0 and ``Connection: close`` end the connection), §6.3 framing
(HEAD/204/304, Transfer-Encoding over Content-Length, read-until-close responses) and the
pause after an Upgrade or CONNECT request all live here.
"""

from __future__ import annotations

from typing import ClassVar, Final

from revproxy.proto.events import Headers
from revproxy.proto.http1.wire import (
    CHUNK_HEADER_RE,
    Message,
    Outgoing,
    Violation,
    decode_fields,
    find_blank_line,
    normalise,
    split_lines,
)

CLIENT: Final = 0
SERVER: Final = 1
_ROLE_NAMES: Final = ("CLIENT", "SERVER")

IDLE: Final = 0
SEND_BODY: Final = 1
SEND_RESPONSE: Final = 2
DONE: Final = 3
MUST_CLOSE: Final = 4
CLOSED: Final = 5
MIGHT_SWITCH_PROTOCOL: Final = 6
SWITCHED_PROTOCOL: Final = 7
ERROR: Final = 8
STATE_NAMES: Final = (
    "IDLE",
    "SEND_BODY",
    "SEND_RESPONSE",
    "DONE",
    "MUST_CLOSE",
    "CLOSED",
    "MIGHT_SWITCH_PROTOCOL",
    "SWITCHED_PROTOCOL",
    "ERROR",
)

# Events as the table sees them; the last three are h11's (event, role or switch) pairs.
REQUEST: Final = 0
INFORMATIONAL: Final = 1
RESPONSE: Final = 2
DATA: Final = 3
END: Final = 4
CLOSE: Final = 5
_REQUEST_SEEN: Final = 6  # a client's Request, as the server side sees it
_UPGRADE_ACCEPTED: Final = 7  # 101 answering a pending Upgrade
_CONNECT_ACCEPTED: Final = 8  # 2xx answering a pending CONNECT
_EVENT_NAMES: Final = (
    "Request",
    "InformationalResponse",
    "Response",
    "Data",
    "EndOfMessage",
    "ConnectionClosed",
    "Request",
    "InformationalResponse",
    "Response",
)

# (role, state, event) → new state. What the table lacks is an error.
_TRANSITIONS: Final[dict[tuple[int, int, int], int]] = {
    (CLIENT, IDLE, REQUEST): SEND_BODY,
    (CLIENT, IDLE, CLOSE): CLOSED,
    (CLIENT, SEND_BODY, DATA): SEND_BODY,
    (CLIENT, SEND_BODY, END): DONE,
    (CLIENT, DONE, CLOSE): CLOSED,
    (CLIENT, MUST_CLOSE, CLOSE): CLOSED,
    (CLIENT, CLOSED, CLOSE): CLOSED,
    (SERVER, IDLE, CLOSE): CLOSED,
    (SERVER, IDLE, RESPONSE): SEND_BODY,
    (SERVER, IDLE, _REQUEST_SEEN): SEND_RESPONSE,
    (SERVER, SEND_RESPONSE, INFORMATIONAL): SEND_RESPONSE,
    (SERVER, SEND_RESPONSE, RESPONSE): SEND_BODY,
    (SERVER, SEND_RESPONSE, _UPGRADE_ACCEPTED): SWITCHED_PROTOCOL,
    (SERVER, SEND_RESPONSE, _CONNECT_ACCEPTED): SWITCHED_PROTOCOL,
    (SERVER, SEND_BODY, DATA): SEND_BODY,
    (SERVER, SEND_BODY, END): DONE,
    (SERVER, DONE, CLOSE): CLOSED,
    (SERVER, MUST_CLOSE, CLOSE): CLOSED,
    (SERVER, CLOSED, CLOSE): CLOSED,
}
# (client, server) → (client, server), applied after every event until nothing changes.
_JOINT: Final[dict[tuple[int, int], tuple[int, int]]] = {
    (MIGHT_SWITCH_PROTOCOL, SWITCHED_PROTOCOL): (SWITCHED_PROTOCOL, SWITCHED_PROTOCOL),
    (CLOSED, DONE): (CLOSED, MUST_CLOSE),
    (CLOSED, IDLE): (CLOSED, MUST_CLOSE),
    (ERROR, DONE): (ERROR, MUST_CLOSE),
    (DONE, CLOSED): (MUST_CLOSE, CLOSED),
    (IDLE, CLOSED): (MUST_CLOSE, CLOSED),
    (DONE, ERROR): (MUST_CLOSE, ERROR),
}
_SWITCH_UPGRADE: Final = 1
_SWITCH_CONNECT: Final = 2

# Body framing: h11's "content-length", "chunked" and "http/1.0" (read until close).
LENGTH: Final = 0
CHUNKED: Final = 1
UNTIL_CLOSE: Final = 2


class Connection:
    """The state of both sides of one HTTP/1.1 connection, its receive buffer, the reader of
    the body being received and the writer of the body being sent."""

    __slots__ = (
        "_buf",
        "_chunk_left",
        "_client",
        "_closed",
        "_discard",
        "_keep_alive",
        "_line_search",
        "_lines_search",
        "_method",
        "_read_left",
        "_read_total",
        "_reader",
        "_server",
        "_switch",
        "_their_version",
        "_trailer",
        "_write_left",
        "_writer",
    )
    _IS_CLIENT: ClassVar[bool]  # our role
    _method: bytes | None
    _their_version: bytes | None
    _buf: bytearray

    def _reset(self) -> None:
        self._client = IDLE
        self._server = IDLE
        self._keep_alive = True
        self._switch = 0
        self._method = None
        self._their_version = None
        self._buf = bytearray()
        self._closed = False
        self._line_search = 0
        self._lines_search = 0
        self._reader = LENGTH
        self._read_left = self._read_total = 0
        self._chunk_left = 0
        self._discard = b""
        self._trailer = False
        self._writer = LENGTH
        self._write_left = 0

    # --- state ------------------------------------------------------------------------------

    def _fire(self, role: int, event: int) -> None:
        state = self._client if role == CLIENT else self._server
        new = _TRANSITIONS.get((role, state, event))
        if new is None:
            raise Violation(
                f"can't handle event type {_EVENT_NAMES[event]} when "
                f"role={_ROLE_NAMES[role]} and state={STATE_NAMES[state]}"
            )
        if role == CLIENT:
            self._client = new
        else:
            self._server = new

    def _settle(self) -> None:
        """h11's state-triggered transitions: switch proposals, keep-alive, the joint table."""
        client, server = self._client, self._server
        if (
            not self._switch
            and self._keep_alive
            and client != MIGHT_SWITCH_PROTOCOL
            and (client, server) not in _JOINT
        ):
            return
        while True:
            before = (client, server)
            if self._switch:
                if client == DONE:
                    client = MIGHT_SWITCH_PROTOCOL
            elif client == MIGHT_SWITCH_PROTOCOL:
                client = DONE
            if not self._keep_alive:
                if client == DONE:
                    client = MUST_CLOSE
                if server == DONE:
                    server = MUST_CLOSE
            client, server = _JOINT.get((client, server), (client, server))
            if (client, server) == before:
                break
        self._client, self._server = client, server

    def _error(self, role: int) -> None:
        if role == CLIENT:
            self._client = ERROR
        else:
            self._server = ERROR
        self._settle()

    def _on_request(self, method: bytes, version: bytes, msg: Message | Outgoing) -> None:
        if method == b"CONNECT":
            self._switch |= _SWITCH_CONNECT
        if msg.upgrade:
            self._switch |= _SWITCH_UPGRADE
        self._fire(CLIENT, REQUEST)
        self._fire(SERVER, _REQUEST_SEEN)
        self._method = method
        if msg.close or version < b"1.1":
            self._keep_alive = False
        self._settle()
        # RFC 9112 §6.3: a request without Transfer-Encoding or Content-Length has no body.
        if msg.chunked:
            self._set_framing(CHUNKED, 0, ours=self._IS_CLIENT)
        else:
            self._set_framing(LENGTH, max(msg.length, 0), ours=self._IS_CLIENT)

    def _on_informational(self, status: int) -> None:
        event = INFORMATIONAL
        if status == 101:
            if not self._switch & _SWITCH_UPGRADE:
                raise Violation("Received server _SWITCH_UPGRADE event without a pending proposal")
            event = _UPGRADE_ACCEPTED
        self._fire(SERVER, event)
        self._settle()

    def _on_response(self, status: int, version: bytes, msg: Message | Outgoing) -> None:
        if self._switch & _SWITCH_CONNECT and 200 <= status < 300:
            event = _CONNECT_ACCEPTED
        else:
            event = RESPONSE
            self._switch = 0
        self._fire(SERVER, event)
        if msg.close or version < b"1.1":
            self._keep_alive = False
        self._settle()
        # RFC 9112 §6.3: HEAD, 204, 304 and a CONNECT's 2xx have no body; Transfer-Encoding
        # beats Content-Length; with neither, the body runs until the connection closes.
        method = self._method
        ours = not self._IS_CLIENT
        if (
            status in (204, 304)
            or method == b"HEAD"
            or (method == b"CONNECT" and 200 <= status < 300)
        ):
            self._set_framing(LENGTH, 0, ours=ours)
        elif msg.chunked:
            self._set_framing(CHUNKED, 0, ours=ours)
        elif msg.length >= 0:
            self._set_framing(LENGTH, msg.length, ours=ours)
        else:
            self._set_framing(UNTIL_CLOSE, 0, ours=ours)

    def _set_framing(self, kind: int, length: int, *, ours: bool) -> None:
        if ours:
            self._writer = kind
            self._write_left = length
        else:
            self._reader = kind
            self._read_left = self._read_total = length
            self._chunk_left = 0
            self._discard = b""
            self._trailer = False

    # --- receiving --------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        if data:
            if self._closed:
                raise RuntimeError("received close, then received more data?")
            self._buf += data
        else:
            self._closed = True

    def _take(self, n: int) -> bytes:
        buf = self._buf
        data = bytes(buf[:n])
        del buf[:n]
        self._line_search = self._lines_search = 0
        return data

    def _extract_lines(self) -> list[bytes] | None:
        """h11's ReceiveBuffer.maybe_extract_lines: lines up to an empty line, or None."""
        buf = self._buf
        if buf[:1] == b"\n":
            self._take(1)
            return []
        if buf[:2] == b"\r\n":
            self._take(2)
            return []
        end = find_blank_line(buf, self._lines_search)
        if end < 0:
            self._lines_search = max(0, len(buf) - 2)
            return None
        return split_lines(self._take(end))

    def _read_body(self) -> bytes | Headers | None:
        """The next piece of body (bytes), the end of the message (its trailers), or None."""
        reader = self._reader
        if reader == LENGTH:
            left = self._read_left
            if left == 0:
                return []
            if not self._buf:
                return None
            data = self._take(left)
            self._read_left = left - len(data)
            return data
        if reader == UNTIL_CLOSE:
            return self._take(len(self._buf)) if self._buf else None
        return self._read_chunked()

    def _read_chunked(self) -> bytes | Headers | None:
        if self._trailer:
            lines = self._extract_lines()
            return None if lines is None else normalise(decode_fields(lines))
        buf = self._buf
        if self._discard:
            expected = self._discard
            data = self._take(len(expected))
            if not data:
                return None
            if data != expected[: len(data)]:
                raise Violation(f"malformed chunk footer: {data!r} (expected {expected!r})")
            self._discard = expected[len(data) :]
            if self._discard:
                return None
        if self._chunk_left == 0:
            i = buf.find(b"\r\n", max(0, self._line_search - 1))
            if i == -1:
                self._line_search = len(buf)
                return None
            line = self._take(i + 2)
            m = CHUNK_HEADER_RE.fullmatch(line)
            if m is None:
                raise Violation(f"illegal chunk header: {line!r}")
            self._chunk_left = int(m[1], 16)
            if self._chunk_left == 0:
                self._trailer = True
                return self._read_chunked()
        if not buf:
            return None
        data = self._take(self._chunk_left)
        self._chunk_left -= len(data)
        if self._chunk_left == 0:
            self._discard = b"\r\n"
        return data

    def _read_eof(self) -> Headers:
        """The connection closed while a body was being read."""
        if self._reader == LENGTH:
            raise Violation(
                "peer closed connection without sending complete message body "
                f"(received {self._read_total - self._read_left} bytes, "
                f"expected {self._read_total})"
            )
        if self._reader == CHUNKED:
            raise Violation(
                "peer closed connection without sending complete message body "
                "(incomplete chunked read)"
            )
        return []

    # --- sending ----------------------------------------------------------------------------

    def _write_data(self, role: int, data: bytes) -> bytes:
        if (self._client if role == CLIENT else self._server) == ERROR:
            raise Violation("Can't send data when our state is ERROR")
        try:
            self._fire(role, DATA)
            writer = self._writer
            if writer == LENGTH:
                self._write_left -= len(data)
                if self._write_left < 0:
                    raise Violation("Too much data for declared Content-Length")
                return data
            if writer == CHUNKED:
                return b"%x\r\n%b\r\n" % (len(data), data)
            return data
        except Violation:
            self._error(role)
            raise

    def _write_end(self, role: int, trailers: Outgoing) -> bytes:
        if (self._client if role == CLIENT else self._server) == ERROR:
            raise Violation("Can't send data when our state is ERROR")
        try:
            self._fire(role, END)
            self._settle()
            writer = self._writer
            if writer == LENGTH:
                if self._write_left != 0:
                    raise Violation("Too little data for declared Content-Length")
                if trailers.block:
                    raise Violation("Content-Length and trailers don't mix")
                return b""
            if writer == CHUNKED:
                return b"0\r\n" + trailers.block + b"\r\n"
            if trailers.block:
                raise Violation("can't send trailers to HTTP/1.0 client")
            return b""
        except Violation:
            self._error(role)
            raise
