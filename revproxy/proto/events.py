"""Stream events shared by the HTTP/1.1 and HTTP/2 adapters.

Rule of this room: one vocabulary for both protocols. Received things are past tense; header
names are lower-case bytes; a connection's streams are numbered (HTTP/1.1 counts requests).
"""

from __future__ import annotations

from dataclasses import dataclass

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
