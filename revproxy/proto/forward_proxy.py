"""The forward proxy's request rules, pure: what a client asks for and what goes on.

Rule of this room: a forward proxy adds nothing and passes on nothing that identifies the
client or the proxy (DESIGN decision 9). Toward the destination every hop-by-hop header goes
(``Connection`` and what it names, ``Proxy-*``, ``Keep-Alive``, ``TE``, ``Upgrade``...) and so do
``Via``, ``Forwarded``, ``X-Forwarded-*`` and ``X-Real-IP``; nothing is added. Requests name
their destination in the target:

- ``CONNECT host:port`` (RFC 9110 §9.3.6: "the request-target consists of only the host name
  and port number of the tunnel destination") opens a tunnel;
- ``GET http://host[:port]/path`` (absolute-form, RFC 9112 §3.2.2) is relayed as origin-form;
- ``https://`` in absolute-form is refused: a client reaches TLS destinations with CONNECT,
  and the proxy never speaks TLS to a destination on a client's behalf;
- origin-form (``GET /path``) names no destination: refused.

``ForwardRequests`` reads the requests of one client connection: each head's request line is
read raw first (the destination is in it), and the HTTP/1.1 parser the generation chose
(proto/http1) is handed the head in origin-form — the form its plain path reads — and keeps
its state from one request to the next. The bytes past a CONNECT head are the tunnel's and
never reach the parser. A client that sends its next request before the answer (pipelining)
gets a fresh parser for it, so that its request line is read raw too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from revproxy.errors import ClientProtocolError, HeaderTooLarge
from revproxy.proto.destinations import parse_authority
from revproxy.proto.events import ConnectionClosed, Event, Headers
from revproxy.proto.forwarding import FORWARDING_HEADERS, remove_hop_by_hop
from revproxy.proto.http1.api import H1ServerAPI
from revproxy.proto.http1.head import START_CHECKED, impossible_request_start
from revproxy.proto.http1.wire import PHRASES

__all__ = [
    "ForwardRequests",
    "NotAProxyRequest",
    "ProxyTarget",
    "destination_headers",
    "proxy_target",
    "relayed_reason",
    "request_line",
    "response_headers",
]

# Headers that identify the client or the proxy, never sent on (besides the hop-by-hop ones).
IDENTIFYING = FORWARDING_HEADERS | {b"via", b"x-forwarded-server", b"x-proxyuser-ip"}
# Any other X-Forwarded-* (-scheme, -ssl, -prefix...) goes too.
_X_FORWARDED: Final = b"x-forwarded-"


class NotAProxyRequest(ClientProtocolError):
    """A request a forward proxy cannot relay (origin-form, ``https://``, a bad authority):
    answered 400 with ``message``."""


@dataclass(frozen=True, slots=True)
class ProxyTarget:
    tunnel: bool  # CONNECT
    host: str  # lower-case, no brackets
    port: int
    path: bytes  # origin-form for a relayed request; b"" for CONNECT
    # The authority as the target wrote it (RFC 9112 §3.2.2: the Host a proxy sends on).
    authority: bytes = b""


def request_line(head: bytes) -> tuple[bytes, bytes]:
    """(method, target) of the request line at the start of ``head`` (one CRLF at least);
    the full checks are the HTTP/1.1 parser's."""
    line = head.split(b"\r\n", 1)[0]
    parts = line.split(b" ")
    if len(parts) != 3:
        raise ClientProtocolError("malformed request line")
    return parts[0], parts[1]


# Targets already read → where they go: a memo of a pure function, bounded like those of
# proto/http1/wire.py (forgotten whole when full; never consulted to refuse anything).
_targets: dict[tuple[bytes, bytes], ProxyTarget] = {}
_MAX_TARGETS: Final = 4096
_MAX_TARGET_LINE: Final = 1024
_NOT_IN_TARGETS: Final = bytes(range(0x21)) + bytes(range(0x7F, 0x100))


def proxy_target(method: bytes, target: bytes) -> ProxyTarget:
    """Where the request goes; NotAProxyRequest when it names no destination we relay to."""
    key = (method, target)
    found = _targets.get(key)
    if found is not None:
        return found
    found = _proxy_target(method, target)
    if len(target) <= _MAX_TARGET_LINE:
        if len(_targets) >= _MAX_TARGETS:
            _targets.clear()
        _targets[key] = found
    return found


def _proxy_target(method: bytes, target: bytes) -> ProxyTarget:
    if not target or len(target.translate(None, _NOT_IN_TARGETS)) != len(target):
        # h11's target grammar, [\x21-\x7e]+: the parser sees the path only.
        raise NotAProxyRequest("invalid request target")
    text = target.decode("latin-1")
    if method == b"CONNECT":
        parsed = parse_authority(text, None)
        if parsed is None:
            raise NotAProxyRequest("CONNECT needs host:port as its target")
        return ProxyTarget(True, parsed[0], parsed[1], b"")
    lower = text[:8].lower()
    if lower.startswith("https://"):
        raise NotAProxyRequest("https:// is reached with CONNECT, not absolute-form")
    if not lower.startswith("http://"):
        raise NotAProxyRequest("a forward proxy needs an absolute-form target (http://host/...)")
    rest = text[7:]
    cut = len(rest)
    for sep in "/?#":
        index = rest.find(sep)
        if index != -1:
            cut = min(cut, index)
    authority, path = rest[:cut], rest[cut:]
    if "#" in path:
        path = path.split("#", 1)[0]
    parsed = parse_authority(authority, 80)
    if parsed is None:
        raise NotAProxyRequest("invalid host in the request target")
    if not path.startswith("/"):
        path = "/" + path
    return ProxyTarget(
        False, parsed[0], parsed[1], path.encode("latin-1"), authority.encode("latin-1")
    )


def destination_headers(
    headers: Iterable[tuple[bytes, bytes]], authority: bytes | None = None
) -> Headers:
    """The request headers the destination gets: hop-by-hop and identifying ones removed,
    nothing added. With ``authority`` (the target's), Host is that authority, first (RFC 9112
    §3.2.2: "A proxy that forwards such a request MUST generate a new Host field value based
    on the received request-target rather than forward the received Host field value")."""
    if authority is None:
        return [
            (n, v)
            for n, v in remove_hop_by_hop(headers)
            if n not in IDENTIFYING and not n.startswith(_X_FORWARDED)
        ]
    out: Headers = [(b"host", authority)]
    out += [
        (n, v)
        for n, v in remove_hop_by_hop(headers)
        if n not in IDENTIFYING and n != b"host" and not n.startswith(_X_FORWARDED)
    ]
    return out


def relayed_reason(status: int, reason: bytes) -> bytes:
    """The reason phrase the client gets: the destination's, or b"" (the standard one, which
    the serialiser writes on its plain path) when it is the standard one anyway."""
    return b"" if reason == PHRASES.get(status) else reason


def response_headers(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """The response headers the client gets: hop-by-hop ones removed (framing is ours)."""
    return remove_hop_by_hop(headers)


class ForwardRequests:
    """The requests of one client connection to a forward proxy, sans-I/O (see the module's
    rule): bytes in, the parser's events out, with each request's raw method, target and
    destination beside them (``method``, ``target``, ``dest``, valid from the
    ``RequestReceived`` on). Errors are the parser's, ``NotAProxyRequest`` (400) for a target
    that names no destination, ``HeaderTooLarge`` (431)."""

    __slots__ = (
        "_eof",
        "_head_wanted",
        "_max",
        "_new_parser",
        "_pending",
        "dest",
        "head_read",
        "method",
        "parser",
        "target",
        "tunnel_data",
    )

    def __init__(self, new_parser: Callable[[], H1ServerAPI], max_header_size: int) -> None:
        self._new_parser = new_parser
        self._max = max_header_size
        self.parser = new_parser()
        self._head_wanted = True  # the next bytes begin a request head
        self._pending = b""  # bytes of a head not whole yet
        self._eof = False
        self.head_read = False  # this request's head was read whole (its line is known)
        self.method = b""
        self.target = b""
        self.dest: ProxyTarget | None = None
        self.tunnel_data = b""  # after a CONNECT head: the bytes past it

    @property
    def has_partial_head(self) -> bool:
        """Some bytes of a request head arrived but not all of it."""
        return self._head_wanted and bool(self._pending)

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the client (``b""``: the end of the stream)."""
        if not self._head_wanted:
            dest = self.dest
            if dest is not None and dest.tunnel:
                self.tunnel_data += data  # a tunnel's bytes, not HTTP
                return []
            return self.parser.receive_data(data)
        if not data:
            self._eof = True
            if self._pending.strip(b"\r\n"):
                raise ClientProtocolError("connection closed inside a request head")
            return [ConnectionClosed(stream_id=self.parser.stream_id)]
        buf = self._pending + data if self._pending else data
        start = 0
        while buf.startswith(b"\r\n", start):  # RFC 9112 §2.2: empty lines before a head
            start += 2
        end = buf.find(b"\r\n\r\n", start)
        if end < 0 or end + 4 - start > self._max:
            self._pending = buf[start:]
            if len(self._pending) > self._max or end >= 0:
                raise HeaderTooLarge("request head too large")
            if impossible_request_start(self._pending[:START_CHECKED]):
                raise ClientProtocolError("bytes that cannot begin a request")
            return []
        self._pending = b""
        line_end = buf.find(b"\r\n", start)
        parts = buf[start:line_end].split(b" ")
        if len(parts) != 3:
            raise ClientProtocolError("malformed request line")
        method, target, version = parts
        self.method, self.target, self.head_read = method, target, True
        dest = self.dest = proxy_target(method, target)
        self._head_wanted = False
        if dest.tunnel:
            self.tunnel_data = buf[end + 4 :]
            return self.parser.receive_data(buf[start : end + 4])
        # The parser reads the head in origin-form: its plain path does, and the destination
        # (the authority) is ours to use.
        return self.parser.receive_data(
            b"%b %b %b%b" % (method, dest.path, version, buf[line_end:])
        )

    def next_cycle(self) -> list[Event]:
        """The request was answered and the connection goes on: prepare for the next one;
        returns the events of bytes already received."""
        parser = self.parser
        leftover = parser.trailing_data
        self._head_wanted = True
        self.head_read = False
        self.dest = None
        self.tunnel_data = b""
        if not leftover:
            return parser.start_next_cycle()
        # Pipelined: the next head is already in the parser; a fresh one reads it from us.
        self.parser = self._new_parser()
        return self.receive_data(leftover)
