"""The one small API both HTTP/1.1 implementations offer, and the choice between them.

Rule of this room: the exchange talks to ``H1ServerAPI`` / ``H1ClientAPI`` only; which
implementation stands behind them is decided once per generation by ``global.http1_parser``.
``receive_data`` takes ``bytes`` or a ``bytearray`` (the type says so, as a compiler would
check it); either way the events carry ``bytes`` and the caller's buffer is not kept.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from revproxy.proto.events import Event, Headers
from revproxy.proto.http1.exact import H1Client, H1Server
from revproxy.proto.http1.fast import H1Server as FastServer
from revproxy.proto.http1.fast_client import H1Client as FastClient
from revproxy.proto.http1.head import DEFAULT_MAX_HEADER_SIZE

# --- choosing an implementation (global.http1_parser) ---------------------------------------
#
# proto/http1/fast.py implements the same API on llhttp (httptools); it must give the same events
# and errors for the same bytes (tests/proto/test_http1_differential.py). h11 stays the
# portable fallback and the reference.

HTTP1_PARSERS = ("auto", "httptools", "h11")


class H1ServerAPI(Protocol):
    """What the client side of an exchange needs (edge/h1_connection.py), either way."""

    stream_id: int

    def __init__(self, *, max_header_size: int = DEFAULT_MAX_HEADER_SIZE) -> None: ...
    @property
    def trailing_data(self) -> bytes: ...

    def receive_data(self, data: bytes | bytearray) -> list[Event]: ...
    def send_informational(self, status: int, headers: Headers) -> bytes: ...
    def send_response(self, status: int, headers: Headers, reason: bytes = b"") -> bytes: ...
    def send_data(self, data: bytes) -> bytes: ...
    def send_end(self, trailers: Headers | None = None) -> bytes: ...
    def start_next_cycle(self) -> list[Event]: ...
    @property
    def has_partial_head(self) -> bool: ...
    @property
    def response_started(self) -> bool: ...
    @property
    def request_complete(self) -> bool: ...
    @property
    def keep_alive(self) -> bool: ...


class H1ClientAPI(Protocol):
    """What the backend side of an exchange needs (upstream/dialer.py), either way."""

    stream_id: int

    def __init__(self, *, max_header_size: int = DEFAULT_MAX_HEADER_SIZE) -> None: ...
    @property
    def trailing_data(self) -> bytes: ...

    def send_request(
        self, method: bytes, target: bytes, headers: Iterable[tuple[bytes, bytes]]
    ) -> bytes: ...
    def send_data(self, data: bytes) -> bytes: ...
    def send_end(self, trailers: Headers | None = None) -> bytes: ...
    def receive_data(self, data: bytes | bytearray) -> list[Event]: ...
    def start_next_cycle(self) -> None: ...
    @property
    def response_complete(self) -> bool: ...
    @property
    def reusable(self) -> bool: ...


def _fast(kind: str) -> bool:
    """Whether ``global.http1_parser = kind`` means llhttp: "httptools" (it must be
    installed), "auto" (when it is), or "h11"."""
    if kind == "h11":
        return False
    if kind not in HTTP1_PARSERS:
        raise ValueError(f'http1_parser: expected "auto", "httptools" or "h11", got {kind!r}')
    try:
        import httptools  # noqa: F401
    except ImportError:
        if kind == "httptools":
            raise ImportError(
                'http1_parser = "httptools" needs the httptools package (pip install httptools)'
            ) from None
        return False
    return True


def server_class(kind: str = "auto") -> type[H1ServerAPI]:
    """The H1Server for ``global.http1_parser``; resolve it once per generation."""
    if _fast(kind):
        return FastServer
    return H1Server


def client_class(kind: str = "auto") -> type[H1ClientAPI]:
    """The H1Client for ``global.http1_parser``; resolve it once per generation."""
    if _fast(kind):
        return FastClient
    return H1Client
