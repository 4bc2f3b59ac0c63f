"""Stream events shared by the HTTP/1.1 and HTTP/2 adapters.

Rule of this room: one vocabulary for both protocols. Received things are past tense; header
names are lower-case bytes; a connection's streams are numbered (HTTP/1.1 counts requests).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestReceived:
    stream_id: int
    method: bytes
    target: bytes  # origin-form ("/path?query"), or "*" / authority-form for OPTIONS / CONNECT
    authority: bytes  # Host header or :authority, as received (may carry a port)
    headers: Headers  # Host included for HTTP/1.1 and, added from :authority, for HTTP/2
    http_version: bytes = b"1.1"
    # HTTP/2: the stream ended with its head (no body at all, not even an empty one).
    ended: bool = False
    # HTTP/2 extended CONNECT (RFC 8441): the :protocol pseudo-header, e.g. b"websocket".
    protocol: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class InformationalReceived:
    stream_id: int
    status: int
    headers: Headers


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseReceived:
    stream_id: int
    status: int
    headers: Headers
    reason: bytes = b""
    http_version: bytes = b"1.1"
    # HTTP/2: the stream ended with its head (a gRPC "trailers-only" answer, a 204, ...).
    ended: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class DataReceived:
    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageEnded:
    stream_id: int
    trailers: Headers


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionClosed:
    """The peer closed its side cleanly between messages."""

    stream_id: int = 0


# --- HTTP/2 only ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamReset:
    """A stream ended abnormally: the peer sent RST_STREAM (``remote``), or the adapter reset
    it because the peer broke the protocol on it (a malformed request, a content-length that
    its DATA does not add up to)."""

    stream_id: int
    error_code: int
    remote: bool = True
    reason: str = ""  # why the adapter reset it (for the log)


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowUpdated:
    """The peer opened a flow-control window: a stream's, or the connection's (stream 0,
    which also stands for a change of its initial window size)."""

    stream_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class GoAwayReceived:
    """The peer sent GOAWAY: streams above ``last_stream_id`` were not processed (safe to
    retry elsewhere); no new stream may be opened on this connection."""

    stream_id: int = 0
    last_stream_id: int
    error_code: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PingAcknowledged:
    """The peer answered one of our PINGs."""

    stream_id: int = 0
    data: bytes


Event = (
    RequestReceived
    | InformationalReceived
    | ResponseReceived
    | DataReceived
    | MessageEnded
    | ConnectionClosed
    | StreamReset
    | WindowUpdated
    | GoAwayReceived
    | PingAcknowledged
)


# --- the events of every request, built without the frozen dataclass __init__ ----------------
#
# A frozen dataclass sets each field through object.__setattr__, which costs more than reading
# the head or frame an event comes from. The parsers' hot paths therefore fill an instance of a
# plain class with the same slots and then make it an instance of the event class (``__class__``
# assignment, which Python allows between classes of one layout): field for field and type for
# type the event the constructor would have built. Should an event change (other fields, another
# layout), its check fails and the constructor is used: slower, never wrong.


def _shadow(cls: type) -> type | None:
    """A class with ``cls``'s slots whose instances may become ``cls`` instances."""
    names = tuple(f.name for f in dataclasses.fields(cls))
    if getattr(cls, "__slots__", None) != names:
        return None  # pragma: no cover - the events changed
    shadow = type(f"_Fast{cls.__name__}", (), {"__slots__": names})
    try:
        probe = shadow()
        probe.__class__ = cls
    except TypeError:  # pragma: no cover - the events changed
        return None
    return shadow


_REQUEST = _shadow(RequestReceived)
_RESPONSE = _shadow(ResponseReceived)
_DATA = _shadow(DataReceived)
_END = _shadow(MessageEnded)
FAST_EVENTS = None not in (_REQUEST, _RESPONSE, _DATA, _END)


def request_received(
    sid: int,
    method: bytes,
    target: bytes,
    authority: bytes,
    headers: Headers,
    http_version: bytes = b"1.1",
    ended: bool = False,
    protocol: bytes = b"",
) -> RequestReceived:
    """``RequestReceived(...)``, built fast."""
    if _REQUEST is None:  # pragma: no cover - the events changed
        return RequestReceived(
            stream_id=sid,
            method=method,
            target=target,
            authority=authority,
            headers=headers,
            http_version=http_version,
            ended=ended,
            protocol=protocol,
        )
    ev: Any = _REQUEST()
    ev.stream_id = sid
    ev.method = method
    ev.target = target
    ev.authority = authority
    ev.headers = headers
    ev.http_version = http_version
    ev.ended = ended
    ev.protocol = protocol
    ev.__class__ = RequestReceived
    return ev  # type: ignore[no-any-return]


def response_received(
    sid: int,
    status: int,
    headers: Headers,
    reason: bytes = b"",
    http_version: bytes = b"1.1",
    ended: bool = False,
) -> ResponseReceived:
    """``ResponseReceived(...)``, built fast."""
    if _RESPONSE is None:  # pragma: no cover - the events changed
        return ResponseReceived(
            stream_id=sid,
            status=status,
            headers=headers,
            reason=reason,
            http_version=http_version,
            ended=ended,
        )
    ev: Any = _RESPONSE()
    ev.stream_id = sid
    ev.status = status
    ev.headers = headers
    ev.reason = reason
    ev.http_version = http_version
    ev.ended = ended
    ev.__class__ = ResponseReceived
    return ev  # type: ignore[no-any-return]


def data_received(sid: int, data: bytes) -> DataReceived:
    """``DataReceived(...)``, built fast."""
    if _DATA is None:  # pragma: no cover - the events changed
        return DataReceived(stream_id=sid, data=data)
    ev: Any = _DATA()
    ev.stream_id = sid
    ev.data = data
    ev.__class__ = DataReceived
    return ev  # type: ignore[no-any-return]


def message_ended(sid: int, trailers: Headers | None = None) -> MessageEnded:
    """``MessageEnded(...)`` (no trailers when None), built fast."""
    if _END is None:  # pragma: no cover - the events changed
        return MessageEnded(stream_id=sid, trailers=[] if trailers is None else trailers)
    ev: Any = _END()
    ev.stream_id = sid
    ev.trailers = [] if trailers is None else trailers
    ev.__class__ = MessageEnded
    return ev  # type: ignore[no-any-return]
