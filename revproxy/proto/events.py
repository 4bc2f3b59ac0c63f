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
    headers: Headers  # Host included for HTTP/1.1
    http_version: bytes = b"1.1"


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


Event = (
    RequestReceived
    | InformationalReceived
    | ResponseReceived
    | DataReceived
    | MessageEnded
    | ConnectionClosed
)
