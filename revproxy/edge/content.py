"""Response services in the exchange: compressing a response, filling and serving the cache
(docs/http-rules.md). The decisions are ``proto/encoding.py`` and ``proto/caching.py``'s, the
codecs and the store ``content/``'s; this is the glue the exchange calls.

Rule of this room: a service never changes what a route without it does. Compression plans
once per response, from the response head, and then only turns body chunks into other
chunks (``flush`` whenever the origin pauses, so server-sent events and long polls arrive at
once). The cache stores a response as the origin's answer after the hiding rules and the
route's header edits (never compressed by us, never with our HSTS), so serving it applies
compression and listener headers per client like a fresh response.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from revproxy.config.model import Compress, RouteCache
from revproxy.content.cache import Cache, Entry, Flight, Recording
from revproxy.content.compress import (
    DEFAULT_LEVELS,
    BodyEncoder,
    Governor,
    compress_async,
    finish_async,
    flush_async,
)
from revproxy.net.relay import StreamPair
from revproxy.proto.caching import Freshness, storable, storable_headers
from revproxy.proto.encoding import (
    DEFAULT_TYPES,
    compressed_headers,
    etag_without,
    skip_reason,
    with_vary,
)
from revproxy.proto.events import Event, Headers, MessageEnded

__all__ = [
    "GOVERNOR",
    "CacheFill",
    "CaptureStream",
    "CompressRule",
    "ResponseCoder",
    "plan_compression",
]

# One per process (content/compress.py): how busy this process is decides the level.
GOVERNOR = Governor()


@dataclass(frozen=True, slots=True)
class CompressRule:
    encodings: tuple[str, ...]
    types: tuple[str, ...]
    min_size: int
    level: int | None

    @classmethod
    def of(cls, c: Compress) -> CompressRule:
        return cls(c.encodings, c.types or DEFAULT_TYPES, c.min_size, c.level)


class ResponseCoder:
    """The body of one compressed response."""

    __slots__ = ("enc",)

    def __init__(self, encoding: str, level: int) -> None:
        self.enc = BodyEncoder(encoding, level)

    async def data(self, chunk: bytes) -> bytes:
        return await compress_async(self.enc, chunk)

    async def pause(self) -> bytes:
        """Everything so far, decodable by the client now (the origin paused)."""
        return await flush_async(self.enc)

    async def end(self) -> bytes:
        return await finish_async(self.enc)

    async def whole(self, body: bytes) -> bytes:
        head = await compress_async(self.enc, body) if body else b""
        return head + await finish_async(self.enc)


def plan_compression(
    rule: CompressRule,
    negotiated: str | None,
    method: bytes,
    request_headers: Headers,
    status: int,
    headers: Headers,
) -> tuple[Headers, ResponseCoder | None, str]:
    """The response head to send, the coder of its body (None: sent as it is) and what the
    access log says: the encoding, or why not (``skip:REASON``, ``passed:saturated``)."""
    if negotiated is None:
        reason: str | None = "accept-encoding"
    else:
        reason = skip_reason(
            method, request_headers, status, headers, types=rule.types, min_size=rule.min_size
        )
    if reason is not None or negotiated is None:
        suffix = None
        if status == 304 and negotiated is not None:
            # A 304 keeps the ETag the client holds: the suffixed one, if it asked with it.
            suffix = _asked_with(request_headers, negotiated, rule.encodings)
        return with_vary(headers, suffix), None, f"skip:{reason}"
    configured = rule.level if rule.level is not None else DEFAULT_LEVELS[negotiated]
    level = GOVERNOR.level_for(negotiated, configured)
    if level is None:
        return with_vary(headers), None, "passed:saturated"
    return compressed_headers(headers, negotiated), ResponseCoder(negotiated, level), negotiated


def _asked_with(request_headers: Headers, encoding: str, encodings: Sequence[str]) -> str | None:
    for name, value in request_headers:
        if name == b"if-none-match":
            for tag in value.split(b","):
                if etag_without(tag.strip(), encodings)[1] == encoding:
                    return encoding
    return None


class CacheFill:
    """One request of a caching route on its way to the origin: the entry it revalidates
    (if any), its flight (if it leads one) and the recording of the response."""

    __slots__ = (
        "cache",
        "flight",
        "host",
        "key",
        "recording",
        "request_headers",
        "request_time",
        "rule",
        "stale",
    )

    def __init__(
        self,
        cache: Cache,
        rule: RouteCache,
        key: bytes,
        host: str,
        request_headers: Headers,
        *,
        flight: Flight | None = None,
        stale: Entry | None = None,
    ) -> None:
        self.cache = cache
        self.rule = rule
        self.key = key
        self.host = host
        self.request_headers = request_headers
        self.flight = flight
        self.stale = stale
        self.recording: Recording | None = None
        self.request_time = time.time()

    def begin(self, status: int, headers: Headers, path: str) -> None:
        """The response head arrived: record its body when it may be stored."""
        now = time.time()
        stored = storable_headers(headers)
        freshness = storable(
            status,
            stored,
            self.request_headers,
            ttl_max=self.rule.ttl_max,
            now=now,
            request_time=self.request_time,
            response_time=now,
            authorization_allowed=self.rule.authorization,
            cookies_allowed=self.rule.cookies,
        )
        if isinstance(freshness, Freshness):
            self.recording = self.cache.record(
                self.key,
                status,
                stored,
                freshness,
                request_headers=self.request_headers,
                host=self.host,
                path=path,
                stored_at=now,
            )

    def add(self, data: bytes) -> None:
        if self.recording is not None and not self.recording.add(data):
            self.recording = None

    def end(self) -> Entry | None:
        """The body ended whole: store it, and hand it to the requests waiting on it."""
        entry = self.recording.commit() if self.recording is not None else None
        self.recording = None
        if self.flight is not None:
            self.flight.finish(entry)
        return entry

    def refreshed(self, headers_from_304: Headers) -> Entry | None:
        """The origin confirmed the stale entry (304): it is fresh again (or dropped)."""
        assert self.stale is not None
        now = time.time()
        entry = self.cache.refresh(
            self.stale,
            headers_from_304,
            request_headers=self.request_headers,
            ttl_max=self.rule.ttl_max,
            request_time=self.request_time,
            response_time=now,
            authorization_allowed=self.rule.authorization,
            cookies_allowed=self.rule.cookies,
        )
        if self.flight is not None:
            self.flight.finish(entry)
        return entry


class CaptureStream:
    """A client side that is nobody: the background revalidation of a stale entry
    (``stale-while-revalidate``) runs an exchange whose response only goes to the cache."""

    __slots__ = ("bytes_out", "head_out", "started")

    def __init__(self) -> None:
        self.bytes_out = 0
        self.head_out = 0
        self.started = False

    @property
    def response_started(self) -> bool:
        return self.started

    @property
    def request_complete(self) -> bool:
        return True

    def take_bytes_in(self) -> int:
        return 0

    def body_end_ready(self) -> MessageEnded | None:
        return MessageEnded(stream_id=0, trailers=[])

    async def next_body_event(self) -> Event:
        return MessageEnded(stream_id=0, trailers=[])

    async def send_informational(self, status: int, headers: Headers) -> None:
        return None

    async def send_response(
        self, status: int, headers: Headers, end: bool = False, body: bytes = b""
    ) -> None:
        self.started = True
        self.bytes_out += len(body)

    async def send_data(self, data: bytes) -> None:
        self.bytes_out += len(data)

    async def send_end(self, trailers: Headers) -> None:
        return None

    async def send_file(self, fd: int, offset: int, count: int) -> None:
        self.bytes_out += count

    async def send_whole(self, status: int, headers: Headers, body: bytes, close: bool) -> bool:
        self.started = True
        return False

    async def tunnel(
        self, headers: Headers, origin: StreamPair, leftover: bytes, idle_timeout: float
    ) -> tuple[int, int]:
        raise ConnectionError("a cache revalidation does not switch protocols")
