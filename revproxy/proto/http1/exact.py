"""HTTP/1.1 for both sides of a proxy, behind one small API.

Rule of this room: bytes in, events out (``receive_data``); commands in, bytes out
(``send_*``). No I/O. The reference implementation wraps h11; a faster one may live beside it,
but it must raise the same errors for the same bytes.

h11 is strict, yet a proxy must close some gaps it leaves to its user (each is a known
request-smuggling or resource vector), so the request head is screened before h11 sees it:

- RFC 9112 §2.2: "a recipient MAY recognize a single LF as a line terminator" — a proxy that
  does while its origin does not is a smuggling vector: bare LF and lone CR are rejected.
- RFC 9112 §5.2: "A server that receives an obs-fold in a request message ... MUST either
  reject the message by sending a 400 (Bad Request) ..." — we reject.
- RFC 9112 §6.1: "A server MAY reject a request that contains both Content-Length and
  Transfer-Encoding or process such a request in accordance with the Transfer-Encoding
  alone." — a proxy that forwards such a request is the classic smuggling bug: we reject.
- A head over ``max_header_size`` gets 431 whether it arrives in pieces or whole.
- RFC 9112 §3.2.2: a server "MUST accept the absolute-form in requests" and then "MUST
  ignore the received Host header field": the target is reduced to origin-form and the
  authority taken from it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

import h11

from revproxy.errors import (
    BackendProtocolError,
    ClientProtocolError,
    HeaderTooLarge,
)
from revproxy.proto.events import (
    ConnectionClosed,
    DataReceived,
    Event,
    Headers,
    InformationalReceived,
    MessageEnded,
    RequestReceived,
    ResponseReceived,
)
from revproxy.proto.http1.head import (
    BOTH_LENGTHS,
    DEFAULT_MAX_HEADER_SIZE,
    screen_head,
    split_absolute,
)


def _phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


class H1Server:
    """The client side of an exchange: parses requests, serialises responses."""

    def __init__(self, *, max_header_size: int = DEFAULT_MAX_HEADER_SIZE) -> None:
        self._max = max_header_size
        self._conn = self._new_conn()
        self._pending = bytearray()  # bytes of a request head not yet handed to h11
        self._head_done = False
        self._eof = False
        self.stream_id = 0

    def _new_conn(self) -> h11.Connection:
        return h11.Connection(h11.SERVER, max_incomplete_event_size=self._max + 1024)

    # --- receiving ---------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> list[Event]:
        """Feed bytes from the client (``b""`` = end of stream); return the events completed."""
        if not self._head_done:
            if data:
                self._pending += data
            else:
                self._eof = True
            return self._try_head()
        self._conn.receive_data(bytes(data))
        return self._drain()

    def _try_head(self) -> list[Event]:
        buf = self._pending
        # RFC 9112 §2.2: "a server that is expecting to receive and parse a request-line
        # SHOULD ignore at least one empty line (CRLF) received prior to the request-line".
        while buf.startswith(b"\r\n"):
            del buf[:2]
        end = buf.find(b"\r\n\r\n")
        if end == -1:
            if len(buf) > self._max:
                raise HeaderTooLarge("request head too large")
            if b"\n\n" in buf or b"\r\r" in buf:
                raise ClientProtocolError("bare CR or LF in request head")
            if self._eof:
                if buf:
                    raise ClientProtocolError("connection closed inside a request head")
                return [ConnectionClosed(stream_id=self.stream_id)]
            return []
        if end + 4 > self._max:
            raise HeaderTooLarge("request head too large")
        screen_head(bytes(buf[: end + 2]))
        self._head_done = True
        data = bytes(buf)
        buf.clear()
        self._conn.receive_data(data)
        if self._eof:
            self._conn.receive_data(b"")
        return self._drain()

    def _drain(self) -> list[Event]:
        out: list[Event] = []
        while True:
            try:
                ev = self._conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise ClientProtocolError(str(exc) or "malformed request") from None
            if ev is h11.NEED_DATA or ev is h11.PAUSED:
                return out
            if isinstance(ev, h11.Request):
                out.append(self._request(ev))
            elif isinstance(ev, h11.Data):
                out.append(DataReceived(stream_id=self.stream_id, data=bytes(ev.data)))
            elif isinstance(ev, h11.EndOfMessage):
                out.append(MessageEnded(stream_id=self.stream_id, trailers=list(ev.headers)))
            elif isinstance(ev, h11.ConnectionClosed):
                out.append(ConnectionClosed(stream_id=self.stream_id))
                return out

    def _request(self, ev: h11.Request) -> RequestReceived:
        self.stream_id += 1
        headers: Headers = list(ev.headers)
        has_te = has_cl = False
        host = b""
        for name, value in headers:
            if name == b"transfer-encoding":
                has_te = True
            elif name == b"content-length":
                has_cl = True
            elif name == b"host":
                host = value
        if has_te and has_cl:
            raise ClientProtocolError("both Content-Length and Transfer-Encoding")
        target = bytes(ev.target)
        absolute = split_absolute(target)
        if absolute is not None:
            host, target = absolute
            headers = [(n, v) for n, v in headers if n != b"host"]
            headers.insert(0, (b"host", host))
        elif not (target.startswith(b"/") or target == b"*" or ev.method == b"CONNECT"):
            raise ClientProtocolError("invalid request target")
        return RequestReceived(
            stream_id=self.stream_id,
            method=bytes(ev.method),
            target=target,
            authority=host,
            headers=headers,
            http_version=bytes(ev.http_version),
        )

    # --- sending -----------------------------------------------------------------------

    def send_informational(self, status: int, headers: Headers) -> bytes:
        return self._send(h11.InformationalResponse, status_code=status, headers=headers)

    def send_response(self, status: int, headers: Headers, reason: bytes = b"") -> bytes:
        return self._send(
            h11.Response, status_code=status, headers=headers, reason=reason or _phrase(status)
        )

    def send_data(self, data: bytes) -> bytes:
        return self._send(h11.Data, data=data) if data else b""

    def send_end(self, trailers: Headers | None = None) -> bytes:
        return self._send(h11.EndOfMessage, headers=trailers or [])

    def _send(self, kind: Callable[..., h11.Event], **fields: Any) -> bytes:
        # The event is built inside the try: h11 validates fields in its constructors.
        try:
            out = self._conn.send(kind(**fields))
        except h11.LocalProtocolError as exc:
            raise BackendProtocolError(f"cannot relay response: {exc}") from None
        return out or b""

    # --- life cycle --------------------------------------------------------------------

    @property
    def has_partial_head(self) -> bool:
        """Some bytes of a request head arrived but not all of it."""
        return not self._head_done and bool(self._pending)

    @property
    def response_started(self) -> bool:
        """A response head went out: a local error page can no longer replace it."""
        return self._conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE)

    @property
    def request_complete(self) -> bool:
        return self._conn.their_state is h11.DONE

    @property
    def keep_alive(self) -> bool:
        """Both messages done and neither side asked to close."""
        return self._conn.our_state is h11.DONE and self._conn.their_state is h11.DONE

    @property
    def trailing_data(self) -> bytes:
        """After a protocol switch (101): the bytes received past the request, unparsed."""
        return bytes(self._conn.trailing_data[0])

    def start_next_cycle(self) -> list[Event]:
        """Prepare for the next request; returns events from bytes already received."""
        leftover, closed = self._conn.trailing_data
        self._conn = self._new_conn()
        self._head_done = False
        self._pending = bytearray(leftover)
        self._eof = closed
        if self._pending or closed:
            return self._try_head()
        return []


class H1Client:
    """The backend side of an exchange: serialises requests, parses responses."""

    def __init__(self, *, max_header_size: int = DEFAULT_MAX_HEADER_SIZE) -> None:
        self._max = max_header_size
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_header_size)
        self.stream_id = 0
        self._fed = 0  # bytes handed to h11 so far
        self._head_start = 0  # offset of the response head being parsed

    def send_request(
        self, method: bytes, target: bytes, headers: Iterable[tuple[bytes, bytes]]
    ) -> bytes:
        self.stream_id += 1
        fields = list(headers)
        if not any(name == b"host" for name, _ in fields):
            # RFC 9112 §3.2: "If the authority component is missing or undefined for the
            # target URI, then a client MUST send a Host header field with an empty field
            # value." (an HTTP/1.0 client may have sent none)
            fields.insert(0, (b"host", b""))
        return self._send(h11.Request, method=method, target=target, headers=fields)

    def send_data(self, data: bytes) -> bytes:
        return self._send(h11.Data, data=data) if data else b""

    def send_end(self, trailers: Headers | None = None) -> bytes:
        return self._send(h11.EndOfMessage, headers=trailers or [])

    def _send(self, kind: Callable[..., h11.Event], **fields: Any) -> bytes:
        try:
            out = self._conn.send(kind(**fields))
        except h11.LocalProtocolError as exc:
            raise ClientProtocolError(f"cannot relay request: {exc}") from None
        return out or b""

    def _head_end(self) -> int:
        """Offset just past what h11 has parsed so far."""
        return self._fed - len(self._conn.trailing_data[0])

    def _check_head_size(self) -> None:
        # h11 bounds a head only while it is incomplete; one that arrived whole is bounded here.
        end = self._head_end()
        size, self._head_start = end - self._head_start, end
        if size > self._max:
            raise BackendProtocolError(f"response head over {self._max} bytes")

    def receive_data(self, data: bytes | bytearray) -> list[Event]:
        self._conn.receive_data(bytes(data))
        self._fed += len(data)
        out: list[Event] = []
        sid = self.stream_id
        while True:
            try:
                ev = self._conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise BackendProtocolError(f"malformed response: {exc}") from None
            if ev is h11.NEED_DATA or ev is h11.PAUSED:
                return out
            if isinstance(ev, h11.InformationalResponse | h11.Response):
                self._check_head_size()
            if isinstance(ev, h11.InformationalResponse):
                out.append(
                    InformationalReceived(
                        stream_id=sid, status=ev.status_code, headers=list(ev.headers)
                    )
                )
            elif isinstance(ev, h11.Response):
                _refuse_both_lengths(ev.headers)
                out.append(
                    ResponseReceived(
                        stream_id=sid,
                        status=ev.status_code,
                        headers=list(ev.headers),
                        reason=bytes(ev.reason),
                        http_version=bytes(ev.http_version),
                    )
                )
            elif isinstance(ev, h11.Data):
                out.append(DataReceived(stream_id=sid, data=bytes(ev.data)))
            elif isinstance(ev, h11.EndOfMessage):
                self._head_start = self._head_end()
                out.append(MessageEnded(stream_id=sid, trailers=list(ev.headers)))
            elif isinstance(ev, h11.ConnectionClosed):
                out.append(ConnectionClosed(stream_id=sid))
                return out

    @property
    def response_complete(self) -> bool:
        return self._conn.their_state is h11.DONE

    @property
    def reusable(self) -> bool:
        """Request and response both finished and the connection may carry another.

        Bytes the origin sent past its response make the connection unusable: reusing it
        would read them as the next response (a desync).
        """
        return (
            self._conn.our_state is h11.DONE
            and self._conn.their_state is h11.DONE
            and not self._conn.trailing_data[0]
        )

    @property
    def trailing_data(self) -> bytes:
        """After a protocol switch (101): the bytes received past its head, unparsed."""
        return bytes(self._conn.trailing_data[0])

    def start_next_cycle(self) -> None:
        self._conn.start_next_cycle()


def _refuse_both_lengths(headers: Iterable[tuple[bytes, bytes]]) -> None:
    """RFC 9112 §6.3: a response with both Transfer-Encoding and Content-Length "ought to be
    handled as an error" — relayed, its stale Content-Length would misframe the client's
    connection (or the next response of a proxy in front)."""
    names = {name for name, _ in headers}
    if b"transfer-encoding" in names and b"content-length" in names:
        raise BackendProtocolError(f"malformed response: {BOTH_LENGTHS}")
