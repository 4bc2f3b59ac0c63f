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
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from revproxy.errors import ClientProtocolError
from revproxy.proto.destinations import parse_authority
from revproxy.proto.events import Headers
from revproxy.proto.forwarding import FORWARDING_HEADERS, remove_hop_by_hop

__all__ = [
    "NotAProxyRequest",
    "ProxyTarget",
    "destination_headers",
    "proxy_target",
    "request_line",
    "response_headers",
]

# Headers that identify the client or the proxy, never sent on (besides the hop-by-hop ones).
IDENTIFYING = FORWARDING_HEADERS | {b"via", b"x-forwarded-server", b"x-proxyuser-ip"}


class NotAProxyRequest(ClientProtocolError):
    """A request a forward proxy cannot relay (origin-form, ``https://``, a bad authority):
    answered 400 with ``message``."""


@dataclass(frozen=True, slots=True)
class ProxyTarget:
    tunnel: bool  # CONNECT
    host: str  # lower-case, no brackets
    port: int
    path: bytes  # origin-form for a relayed request; b"" for CONNECT


def request_line(head: bytes) -> tuple[bytes, bytes]:
    """(method, target) of the request line at the start of ``head`` (one CRLF at least);
    the full checks are the HTTP/1.1 parser's."""
    line = head.split(b"\r\n", 1)[0]
    parts = line.split(b" ")
    if len(parts) != 3:
        raise ClientProtocolError("malformed request line")
    return parts[0], parts[1]


def proxy_target(method: bytes, target: bytes) -> ProxyTarget:
    """Where the request goes; NotAProxyRequest when it names no destination we relay to."""
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
    return ProxyTarget(False, parsed[0], parsed[1], path.encode("latin-1"))


def destination_headers(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """The request headers the destination gets: hop-by-hop and identifying ones removed,
    nothing added."""
    return [(n, v) for n, v in remove_hop_by_hop(headers) if n not in IDENTIFYING]


def response_headers(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """The response headers the client gets: hop-by-hop ones removed (framing is ours)."""
    return remove_hop_by_hop(headers)
