"""The client side of an exchange: what is known of the client's connection, what the exchange
needs of it, and how the client is introduced to origins.

Rule of this room: the client's identity is established once, when its connection is accepted
(``ConnInfo``: socket, or a trusted PROXY header — DESIGN decision 5), and everything after
reads it from here. ``ClientStream`` is all an exchange may do with its client, whatever the
protocol: an HTTP/1.1 connection (http_proxy.py) or one HTTP/2 stream (h2_proxy.py) implement
it; the backend side's counterpart is ``OriginStream`` (dial.py).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from revproxy.errors import RevproxyError
from revproxy.proto.events import Event, Headers, MessageEnded
from revproxy.proto.proxy_protocol import ProxyHeader, build_v1, build_v2

if TYPE_CHECKING:
    from revproxy.net.relay import StreamPair


# Where sendfile(2) cannot send a file (TLS, HTTP/2), it is read and sent in pieces of this
# size: what is read ahead of the client is one piece, and each waits for the client's room.
FILE_PIECE = 64 * 1024


class ClientGone(Exception):
    """The client closed or reset its connection (or stream); nothing more can be sent."""


@dataclass(slots=True, kw_only=True)
class ConnInfo:
    """Facts about a client connection, established once when it is accepted."""

    peer: tuple[str, int]  # TCP peer
    client: tuple[str, int]  # the client (PROXY header from a trusted peer, else the peer)
    local: tuple[str, int]  # our socket's address
    destination: tuple[str, int]  # what the client connected to (PROXY header, else local)
    local_port: int
    tls: bool
    sni: str | None = None
    alpn: str = ""
    proxy: ProxyHeader | None = None
    authority: str = ""  # PROXY v2 AUTHORITY TLV
    vpce: str = ""  # PROXY v2 AWS VPC endpoint id
    tls_version: str = ""  # "TLSv1.3", ... after the handshake
    client_subject: str = ""  # the verified client certificate's subject (RFC 4514), if any


class ClientStream(Protocol):
    """The client side of one exchange (http_proxy.py: a connection; h2_proxy.py: a stream).

    Every ``send_*`` raises ClientGone when the client can no longer be written to."""

    bytes_out: int  # bytes sent to the client so far (the exchange takes differences)
    head_out: int  # of those, response heads (HTTP/1.1; HTTP/2 counts only DATA in bytes_out)

    @property
    def response_started(self) -> bool:
        """A response head went out: a local error page can no longer replace it."""
        ...

    @property
    def request_complete(self) -> bool:
        """The whole request (body and trailers) was received."""
        ...

    def take_bytes_in(self) -> int:
        """Client bytes received since the last call (for the access log)."""
        ...

    def body_end_ready(self) -> MessageEnded | None:
        """The request's end, when nothing of its body is left to read; else None."""
        ...

    async def next_body_event(self) -> Event:
        """The next DataReceived or MessageEnded of the request body; the previous chunk is
        taken as consumed. Raises ClientGone."""
        ...

    async def send_informational(self, status: int, headers: Headers) -> None: ...

    async def send_response(
        self, status: int, headers: Headers, end: bool = False, body: bytes = b""
    ) -> None:
        """The response head, then ``body`` (the whole body when ``end``) in one go."""
        ...

    async def send_data(self, data: bytes) -> None: ...

    async def send_end(self, trailers: Headers) -> None: ...

    async def send_file(self, fd: int, offset: int, count: int) -> None:
        """After ``send_response`` sent a head with Content-Length: ``count`` bytes of the open
        regular file ``fd`` from ``offset`` as (part of) the body; ``send_end`` follows. The
        caller keeps ``fd`` (and closes it). Plain HTTP/1.1: sendfile(2), the bytes go from
        the page cache to the socket; TLS and HTTP/2: pieces of FILE_PIECE through
        ``send_data``. Raises ClientGone (the client left, or took nothing for a long while),
        RevproxyError when the file ended before ``count`` bytes (it shrank: the response
        cannot be completed)."""
        ...

    async def send_whole(self, status: int, headers: Headers, body: bytes, close: bool) -> bool:
        """A whole local response; False when the client connection must close after it."""
        ...

    async def tunnel(
        self,
        headers: Headers,
        origin: StreamPair,
        leftover: bytes,
        idle_timeout: float,
    ) -> tuple[int, int]:
        """Accept a protocol switch with ``headers`` (101 over HTTP/1.1, 200 over HTTP/2),
        send the origin's ``leftover`` bytes, then relay bytes both ways until both directions
        end or nothing moves for ``idle_timeout``; returns (bytes up, bytes down)."""
        ...


async def send_file_pieces(
    send: Callable[[bytes], Awaitable[None]], fd: int, offset: int, count: int
) -> None:
    """``send_file`` where sendfile(2) cannot be used: the file read in pieces (``os.pread``,
    inline: a page-cache read costs less than a hop to a thread) and each given to ``send``,
    whose back-pressure paces the reading."""
    end = offset + count
    while offset < end:
        piece = os.pread(fd, min(FILE_PIECE, end - offset), offset)
        if not piece:
            raise RevproxyError("the file ended before the length the response announced")
        await send(piece)
        offset += len(piece)


def proxy_header_for(version: str | None, info: ConnInfo) -> bytes | None:
    """The PROXY header a backend connection for this client starts with, if its pool wants one."""
    if version == "v1":
        return build_v1(info.client, info.destination)
    if version == "v2":
        # What is known of the client's connection: our own TLS handshake, else the TLVs of
        # the PROXY header a trusted load balancer sent with it.
        upstream = info.proxy
        alpn = info.alpn.encode() if info.alpn else (upstream.alpn if upstream else None)
        return build_v2(
            info.client,
            info.destination,
            alpn=alpn,
            authority=info.sni or info.authority or None,
        )
    return None
