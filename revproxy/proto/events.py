"""Stream events shared by the HTTP/1.1 and HTTP/2 adapters.

Rule of this room: one vocabulary for both protocols. Received things are past tense; header
names are lower-case bytes; a connection's streams are numbered (HTTP/1.1 counts requests).

Events are plain slotted classes with their ``__init__``, ``__eq__``, ``__hash__`` and
``__repr__`` written out, and they behave as frozen, keyword-only dataclasses of the same
fields would: equal when of one class with equal fields, hashable when their fields are, shown
as ``DataReceived(stream_id=1, data=b'x')``. They are built several times per request, and
what a frozen dataclass costs to build (every field set through ``object.__setattr__``) was
more than the parsing of the head an event came from; a plain ``__init__`` is about the floor
of building an object in Python, and is code any compiler takes as it is.

- Immutable by contract, checked statically: every field is ``Final``, so ``mypy --strict``
  refuses an assignment to it anywhere in the code base; at run time nothing stops one (a
  ``__setattr__`` guard would cost what the frozen dataclass cost).
- The events of every request (``RequestReceived``, ``InformationalReceived``,
  ``ResponseReceived``, ``DataReceived``, ``MessageEnded``) take their fields by keyword or by
  position, in the order written below: the parsers' hot paths pass them by position, because
  Python 3.11 builds a dictionary for every keyword call of a class. Everywhere else, keywords.
  The other events, built now and then, take keywords only.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final

Headers = list[tuple[bytes, bytes]]


class _Event:
    """What every event shares: equality, hash and repr over its fields (``__slots__``, in
    order), as a frozen dataclass has them."""

    __slots__ = ()
    _names: ClassVar[tuple[str, ...]] = ()

    def _values(self) -> tuple[Any, ...]:
        return tuple([getattr(self, name) for name in self._names])

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._names)
        return f"{self.__class__.__qualname__}({fields})"


class RequestReceived(_Event):
    _names: ClassVar[tuple[str, ...]] = (
        "stream_id",
        "method",
        "target",
        "authority",
        "headers",
        "http_version",
        "ended",
        "protocol",
    )
    __slots__ = _names
    stream_id: Final[int]
    method: Final[bytes]
    target: Final[bytes]  # origin-form ("/path?query"), or "*" / authority-form (OPTIONS, CONNECT)
    authority: Final[bytes]  # Host header or :authority, as received (may carry a port)
    headers: Final[Headers]  # Host included for HTTP/1.1 and, from :authority, for HTTP/2
    http_version: Final[bytes]
    # HTTP/2: the stream ended with its head (no body at all, not even an empty one).
    ended: Final[bool]
    # HTTP/2 extended CONNECT (RFC 8441): the :protocol pseudo-header, e.g. b"websocket".
    protocol: Final[bytes]

    def __init__(
        self,
        stream_id: int,
        method: bytes,
        target: bytes,
        authority: bytes,
        headers: Headers,
        http_version: bytes = b"1.1",
        ended: bool = False,
        protocol: bytes = b"",
    ) -> None:
        self.stream_id = stream_id
        self.method = method
        self.target = target
        self.authority = authority
        self.headers = headers
        self.http_version = http_version
        self.ended = ended
        self.protocol = protocol


class InformationalReceived(_Event):
    _names: ClassVar[tuple[str, ...]] = ("stream_id", "status", "headers")
    __slots__ = _names
    stream_id: Final[int]
    status: Final[int]
    headers: Final[Headers]

    def __init__(self, stream_id: int, status: int, headers: Headers) -> None:
        self.stream_id = stream_id
        self.status = status
        self.headers = headers


class ResponseReceived(_Event):
    _names: ClassVar[tuple[str, ...]] = (
        "stream_id",
        "status",
        "headers",
        "reason",
        "http_version",
        "ended",
    )
    __slots__ = _names
    stream_id: Final[int]
    status: Final[int]
    headers: Final[Headers]
    reason: Final[bytes]
    http_version: Final[bytes]
    # HTTP/2: the stream ended with its head (a gRPC "trailers-only" answer, a 204, ...).
    ended: Final[bool]

    def __init__(
        self,
        stream_id: int,
        status: int,
        headers: Headers,
        reason: bytes = b"",
        http_version: bytes = b"1.1",
        ended: bool = False,
    ) -> None:
        self.stream_id = stream_id
        self.status = status
        self.headers = headers
        self.reason = reason
        self.http_version = http_version
        self.ended = ended


class DataReceived(_Event):
    _names: ClassVar[tuple[str, ...]] = ("stream_id", "data")
    __slots__ = _names
    stream_id: Final[int]
    data: Final[bytes]

    def __init__(self, stream_id: int, data: bytes) -> None:
        self.stream_id = stream_id
        self.data = data


class MessageEnded(_Event):
    _names: ClassVar[tuple[str, ...]] = ("stream_id", "trailers")
    __slots__ = _names
    stream_id: Final[int]
    trailers: Final[Headers]

    def __init__(self, stream_id: int, trailers: Headers) -> None:
        self.stream_id = stream_id
        self.trailers = trailers


class ConnectionClosed(_Event):
    """The peer closed its side cleanly between messages."""

    _names: ClassVar[tuple[str, ...]] = ("stream_id",)
    __slots__ = _names
    stream_id: Final[int]

    def __init__(self, *, stream_id: int = 0) -> None:
        self.stream_id = stream_id


# --- HTTP/2 only ---------------------------------------------------------------------------


class StreamReset(_Event):
    """A stream ended abnormally: the peer sent RST_STREAM (``remote``), or the adapter reset
    it because the peer broke the protocol on it (a malformed request, a content-length that
    its DATA does not add up to)."""

    _names: ClassVar[tuple[str, ...]] = ("stream_id", "error_code", "remote", "reason")
    __slots__ = _names
    stream_id: Final[int]
    error_code: Final[int]
    remote: Final[bool]
    reason: Final[str]  # why the adapter reset it (for the log)

    def __init__(
        self, *, stream_id: int, error_code: int, remote: bool = True, reason: str = ""
    ) -> None:
        self.stream_id = stream_id
        self.error_code = error_code
        self.remote = remote
        self.reason = reason


class WindowUpdated(_Event):
    """The peer opened a flow-control window: a stream's, or the connection's (stream 0,
    which also stands for a change of its initial window size)."""

    _names: ClassVar[tuple[str, ...]] = ("stream_id",)
    __slots__ = _names
    stream_id: Final[int]

    def __init__(self, *, stream_id: int) -> None:
        self.stream_id = stream_id


class GoAwayReceived(_Event):
    """The peer sent GOAWAY: streams above ``last_stream_id`` were not processed (safe to
    retry elsewhere); no new stream may be opened on this connection."""

    _names: ClassVar[tuple[str, ...]] = ("stream_id", "last_stream_id", "error_code")
    __slots__ = _names
    stream_id: Final[int]
    last_stream_id: Final[int]
    error_code: Final[int]

    def __init__(self, *, stream_id: int = 0, last_stream_id: int, error_code: int) -> None:
        self.stream_id = stream_id
        self.last_stream_id = last_stream_id
        self.error_code = error_code


class PingAcknowledged(_Event):
    """The peer answered one of our PINGs."""

    _names: ClassVar[tuple[str, ...]] = ("stream_id", "data")
    __slots__ = _names
    stream_id: Final[int]
    data: Final[bytes]

    def __init__(self, *, stream_id: int = 0, data: bytes) -> None:
        self.stream_id = stream_id
        self.data = data


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
