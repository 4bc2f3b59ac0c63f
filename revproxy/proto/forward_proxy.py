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

``PlainExchanges`` remembers what the generation's parsers made of the plain exchanges they
read whole: a ``GET`` head (HTTP/1.1, no body, nothing about the connection) seen twice, byte
for byte, and a response head with a plain length. The parsers are deterministic and start
every exchange from the same state, so the same bytes give the same events, the same bytes
out and the same state after: on a request head remembered, ``ForwardRequests`` hands out the
events the parser gave and leaves it untouched (``skipped``); the exchange writes what the
destination's parser wrote for that request, and relays a remembered response head as the
client's parser wrote it, with its body as it came. When the exchange leaves that course (a
response not remembered, not whole, a timeout), the parsers are brought to where they would
be by giving them the same bytes (``ForwardRequests.catch_up``, ``PlainRequest.head``) before
anything else is done with them. What is remembered is bounded, judged by the parsers
themselves, and never consulted to refuse anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from revproxy.errors import ClientProtocolError, HeaderTooLarge, RevproxyError
from revproxy.proto.destinations import parse_authority
from revproxy.proto.events import (
    ConnectionClosed,
    DataReceived,
    Event,
    Headers,
    MessageEnded,
    RequestReceived,
    ResponseReceived,
)
from revproxy.proto.forwarding import FORWARDING_HEADERS, HOP_BY_HOP, remove_hop_by_hop
from revproxy.proto.http1.api import H1ClientAPI, H1ServerAPI
from revproxy.proto.http1.head import START_CHECKED, impossible_request_start
from revproxy.proto.http1.wire import PHRASES

__all__ = [
    "ForwardRequests",
    "NotAProxyRequest",
    "PlainExchanges",
    "PlainRequest",
    "PlainResponse",
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

    @property
    def shown(self) -> str:
        """host:port as logs show it (brackets around an IPv6 address)."""
        host = self.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"


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


# Names never sent on: hop-by-hop, identifying, and Host (ours, from the target).
_NOT_SENT_ON: Final = HOP_BY_HOP | IDENTIFYING | {b"host"}


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
    for field in headers:
        name = field[0]
        if name in _NOT_SENT_ON:
            if name == b"connection":  # it may name others: the general way
                return [out[0]] + [
                    (n, v)
                    for n, v in remove_hop_by_hop(headers)
                    if n not in IDENTIFYING and n != b"host" and not n.startswith(_X_FORWARDED)
                ]
            continue
        if not name.startswith(_X_FORWARDED):
            out.append(field)
    return out


def relayed_reason(status: int, reason: bytes) -> bytes:
    """The reason phrase the client gets: the destination's, or b"" (the standard one, which
    the serialiser writes on its plain path) when it is the standard one anyway."""
    return b"" if reason == PHRASES.get(status) else reason


def response_headers(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """The response headers the client gets: hop-by-hop ones removed (framing is ours)."""
    return remove_hop_by_hop(headers)


# Remembered heads: at most this many of each kind (forgotten whole when full), each at most
# this long; a head is remembered the second time it is seen (a head seen once costs a key).
PLAIN_KEPT: Final = 256
PLAIN_HEAD_MAX: Final = 2048
# The longest body a remembered response may announce.
PLAIN_BODY_MAX: Final = 64 * 1024
# A remembered request whose responses were not remembered this many times in a row is
# forgotten (its destination varies its heads: catching up would cost more than it saves);
# seen twice more, it is remembered again.
PLAIN_MISSES_MAX: Final = 16
# Request fields that change how a response is framed or the connection is kept (or that
# need a body): a head that has one is never plain.
_NOT_PLAIN_FIELDS: Final = frozenset(
    {
        b"connection",
        b"content-length",
        b"expect",
        b"keep-alive",
        b"te",
        b"transfer-encoding",
        b"upgrade",
    }
)
# The request every remembered response is judged after (what a plain request is, to both
# parsers: a GET over HTTP/1.1 with nothing about the connection).
_SAMPLE_REQUEST: Final = b"GET / HTTP/1.1\r\nhost: plain\r\n\r\n"
_SAMPLE_HEADERS: Final = [(b"host", b"plain")]


class PlainRequest:
    """A request head the parser read whole before: its events, its destination, the head
    as the parser read it (origin-form) and the bytes its destination got."""

    __slots__ = ("dest", "end", "head", "key", "method", "misses", "outbound", "req", "target")

    def __init__(
        self,
        method: bytes,
        target: bytes,
        dest: ProxyTarget,
        head: bytes,
        req: RequestReceived,
        end: MessageEnded,
        outbound: bytes,
    ) -> None:
        self.method = method
        self.target = target
        self.dest = dest
        self.head = head
        self.req = req
        self.end = end
        self.outbound = outbound
        self.key = b""  # the head as received (its key)
        self.misses = 0  # responses in a row not remembered


class PlainResponse:
    """A response head read whole before (after a plain request): what the client got for
    it, the body's length (as it announced it) and its status."""

    __slots__ = ("head", "length", "status")

    def __init__(self, head: bytes, length: int, status: int) -> None:
        self.head = head
        self.length = length
        self.status = status


class PlainExchanges:
    """What one generation's parsers made of plain requests and responses, by their bytes
    (see the module's rule). ``requests`` is read by ``ForwardRequests``; ``response`` by the
    exchange."""

    __slots__ = ("_new_client", "_new_server", "_seen_requests", "_seen_responses",
                 "requests", "responses")  # fmt: skip

    def __init__(
        self, new_server: Callable[[], H1ServerAPI], new_client: Callable[[], H1ClientAPI]
    ) -> None:
        self._new_server = new_server
        self._new_client = new_client
        self.requests: dict[bytes, PlainRequest] = {}
        self.responses: dict[bytes, PlainResponse | None] = {}
        self._seen_requests: dict[bytes, None] = {}
        self._seen_responses: dict[bytes, None] = {}

    def consider_request(
        self,
        head: bytes,
        target: bytes,
        version: bytes,
        origin_head: bytes,
        dest: ProxyTarget,
        events: list[Event],
        parser: H1ServerAPI,
    ) -> None:
        """A head the parser just read whole (``head`` as received, ``origin_head`` as the
        parser read it, ``events`` what it made of it): remembered the second time, when it
        is a plain request."""
        if (
            len(events) != 2
            or len(head) > PLAIN_HEAD_MAX
            or version != b"HTTP/1.1"
            or dest.tunnel
            or head in self.requests
        ):
            return
        req, end = events
        if (
            type(req) is not RequestReceived
            or type(end) is not MessageEnded
            or req.method != b"GET"
            or end.trailers
            or not parser.request_complete
            or parser.trailing_data
            or any(name in _NOT_PLAIN_FIELDS for name, _ in req.headers)
        ):
            return
        seen = self._seen_requests
        if head not in seen:
            if len(seen) >= PLAIN_KEPT:
                seen.clear()
            seen[head] = None
            return
        del seen[head]
        client = self._new_client()
        try:
            outbound = client.send_request(
                req.method, dest.path, destination_headers(req.headers, dest.authority)
            ) + client.send_end(None)
        except RevproxyError:
            return
        if len(self.requests) >= PLAIN_KEPT:
            self.requests.clear()
        known = self.requests[head] = PlainRequest(
            req.method, target, dest, origin_head, req, end, outbound
        )
        known.key = head

    def response_missed(self, request: PlainRequest) -> None:
        """The response to a remembered request was not (see ``PLAIN_MISSES_MAX``)."""
        request.misses += 1
        if request.misses >= PLAIN_MISSES_MAX and self.requests.get(request.key) is request:
            del self.requests[request.key]

    def response(self, head: bytes) -> PlainResponse | None:
        """What the client gets for a response ``head`` (after a plain request), when it is
        remembered; None when it is not (yet, or not plain: the parsers read it then)."""
        found = self.responses.get(head, False)
        if found is not False:
            return found  # type: ignore[return-value]
        seen = self._seen_responses
        if head not in seen:
            if len(seen) >= PLAIN_KEPT:
                seen.clear()
            seen[head] = None
            return None
        del seen[head]
        judged = self._judge_response(head) if len(head) <= PLAIN_HEAD_MAX else None
        if len(self.responses) >= PLAIN_KEPT:
            self.responses.clear()
        self.responses[head] = judged
        return judged

    def _judge_response(self, head: bytes) -> PlainResponse | None:
        """Let the parsers read ``head`` after the sample request, with a body of the length
        it announces: a PlainResponse when the client's head is all that differs (the body
        goes as it came, nothing ends it, both connections stay open)."""
        client = self._new_client()
        server = self._new_server()
        try:
            client.send_request(b"GET", b"/", _SAMPLE_HEADERS)
            client.send_end(None)
            events = client.receive_data(head)
            if not events or type(events[0]) is not ResponseReceived:
                return None
            res = events[0]
            assert isinstance(res, ResponseReceived)
            lengths = [v for n, v in res.headers if n == b"content-length"]
            if (
                not 200 <= res.status < 600
                or res.status in (204, 304)
                or len(lengths) != 1
                or not lengths[0].isdigit()
                or any(n == b"transfer-encoding" for n, _ in res.headers)
            ):
                return None
            length = int(lengths[0])
            if length > PLAIN_BODY_MAX:
                return None
            body = b"\0" * length
            if length:
                events += client.receive_data(body)
            if [type(ev) for ev in events] != [
                ResponseReceived,
                *([DataReceived] if length else []),
                MessageEnded,
            ] or not client.reusable:
                return None
            server.receive_data(_SAMPLE_REQUEST)
            out = server.send_response(
                res.status, response_headers(res.headers), relayed_reason(res.status, res.reason)
            )
            if length and server.send_data(body) != body:
                return None
            if server.send_end(None) != b"" or not server.keep_alive:
                return None
        except RevproxyError:
            return None
        return PlainResponse(out, length, res.status)


class ForwardRequests:
    """The requests of one client connection to a forward proxy, sans-I/O (see the module's
    rule): bytes in, the parser's events out, with each request's raw method, target and
    destination beside them (``method``, ``target``, ``dest``, valid from the
    ``RequestReceived`` on). Errors are the parser's, ``NotAProxyRequest`` (400) for a target
    that names no destination, ``HeaderTooLarge`` (431). With ``plain``, a head remembered
    there is answered from it when the caller asks (``receive_data(..., plain=True)``): the
    request is then ``skipped``, and ``catch_up`` gives the parser its head."""

    __slots__ = (
        "_eof",
        "_head_wanted",
        "_max",
        "_new_parser",
        "_pending",
        "_plain",
        "dest",
        "head_read",
        "method",
        "parser",
        "skipped",
        "target",
        "tunnel_data",
    )

    def __init__(
        self,
        new_parser: Callable[[], H1ServerAPI],
        max_header_size: int,
        plain: PlainExchanges | None = None,
    ) -> None:
        self._new_parser = new_parser
        self._max = max_header_size
        self._plain = plain
        # The remembered request being exchanged, while the parser has not read it.
        self.skipped: PlainRequest | None = None
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

    def receive_data(self, data: bytes, plain: bool = False) -> list[Event]:
        """Feed bytes from the client (``b""``: the end of the stream); ``plain``: a head
        remembered (``data`` being that head, whole) may be answered from memory."""
        if plain and not self._pending and self._head_wanted and self._plain is not None:
            known = self._plain.requests.get(data)
            if known is not None:
                self.method = known.method
                self.target = known.target
                self.head_read = True
                self.dest = known.dest
                self._head_wanted = False
                self.skipped = known
                return [known.req, known.end]
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
        if self._plain is None or start or end + 4 != len(buf):
            return self.parser.receive_data(
                b"%b %b %b%b" % (method, dest.path, version, buf[line_end:])
            )
        origin_head = b"%b %b %b%b" % (method, dest.path, version, buf[line_end:])
        events = self.parser.receive_data(origin_head)
        self._plain.consider_request(buf, target, version, origin_head, dest, events, self.parser)
        return events

    def follow(self, max_header_size: int, plain: PlainExchanges | None) -> None:
        """From the next head on, heads are read up to ``max_header_size`` and remembered in
        ``plain`` (None: not remembered): a reload gave the connection new settings."""
        self._max = max_header_size
        self._plain = plain

    def catch_up(self) -> None:
        """The parser reads the request it skipped (it ends where it would have)."""
        skipped = self.skipped
        if skipped is not None:
            self.skipped = None
            self.parser.receive_data(skipped.head)

    def next_cycle(self) -> list[Event]:
        """The request was answered and the connection goes on: prepare for the next one;
        returns the events of bytes already received."""
        self._head_wanted = True
        self.head_read = False
        self.dest = None
        self.tunnel_data = b""
        if self.skipped is not None:
            self.skipped = None  # the parser is where it began: nothing was left over
            return []
        parser = self.parser
        leftover = parser.trailing_data
        if not leftover:
            return parser.start_next_cycle()
        # Pipelined: the next head is already in the parser; a fresh one reads it from us.
        self.parser = self._new_parser()
        return self.receive_data(leftover)
