"""Header policy at the two borders of an exchange.

Rule of this room: pure functions over header lists (lower-case ``bytes`` names). Toward the
origin: hop-by-hop headers out, the client's identity in (``X-Forwarded-*``, ``X-Real-IP``,
optionally RFC 7239 ``Forwarded``), and forwarding headers from untrusted peers never passed
on. Toward the client: hop-by-hop headers out and nothing that names the origin (identity
headers, ``Location``-like headers and cookie domains that point at a backend address).

RFC 9110 §7.6.1: "Intermediaries MUST parse a received Connection header field before a
message is forwarded and, for each connection-option in this field, remove any header or
trailer field(s) from the message with the same name as the connection-option, and then
remove the Connection header field itself (or replace it with the intermediary's own
control options for the forwarded message)." A Connection header may not name away what routing,
framing and the origin need (``Host``, ``Content-Length``, ``Transfer-Encoding``, the forwarding
headers): such names are ignored (``Connection: close, host`` once left the origin no Host).

Request header names with an underscore (``X_Forwarded_For``) are dropped by default
(``global.underscores_in_headers = "drop"``, nginx's default): CGI and WSGI origins read
``X-Forwarded-For`` and ``X_Forwarded_For`` as the same ``HTTP_X_FORWARDED_FOR``, so a client's
twin would be merged with the identity the proxy vouches for.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from revproxy.proto.events import Headers

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)

FORWARDING_HEADERS = frozenset(
    {
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-real-ip",
        b"forwarded",
    }
)

# Response headers that tell the world which software (and sometimes which host) answered.
ORIGIN_IDENTITY_HEADERS = frozenset(
    {
        b"x-powered-by",
        b"x-aspnet-version",
        b"x-aspnetmvc-version",
        b"x-runtime",
        b"x-version",
        b"x-generator",
        b"x-backend-server",
        b"x-server",
        b"x-upstream",
        b"x-served-by",
        b"x-host",
        b"via",
    }
)


def remove_hop_by_hop(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """Drop hop-by-hop headers and every header the Connection header names."""
    kept: Headers = []
    named: set[bytes] = set()
    for name, value in headers:
        if name in HOP_BY_HOP:
            if name == b"connection":
                _connection_options(value, named)
            continue
        kept.append((name, value))
    return _drop_named(kept, named)


# End-to-end headers a Connection header cannot name away (RFC 9110 §7.6.1 lets it name only
# what is hop-by-hop for this connection; these never are).
_NEVER_NAMED = frozenset({b"host", b"content-length", b"transfer-encoding"}) | FORWARDING_HEADERS


def _connection_options(value: bytes, named: set[bytes]) -> None:
    """Add the connection-options a Connection header lists to ``named``."""
    # (find, not ``in``: bytes.__contains__ first tries its argument as an int, and builds and
    # drops a TypeError when it is not one.)
    if value.find(b",") < 0:  # the usual "keep-alive" or "close"
        option = value.strip().lower()
        if option and option not in _NEVER_NAMED:
            named.add(option)
        return
    for token in value.split(b","):
        option = token.strip().lower()
        if option and option not in _NEVER_NAMED:
            named.add(option)


def _drop_named(headers: Headers, named: set[bytes]) -> Headers:
    """``headers`` without those a Connection header named (all hop-by-hop ones are already
    gone, so ``keep-alive``, ``upgrade``... need no second pass)."""
    if named <= HOP_BY_HOP:
        return headers
    return [(n, v) for n, v in headers if n not in named]


def is_trusted(address: str, trusted: Sequence[Network]) -> bool:
    if not trusted:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in trusted)


def policy_client(
    headers: Iterable[tuple[bytes, bytes]], address: str, trusted: Sequence[Network]
) -> str:
    """The client every policy decision reads (DESIGN decision 8): ``address`` (the socket's,
    or a trusted PROXY header's) unless it is a trusted proxy; then the rightmost
    ``X-Forwarded-For`` hop that is not itself trusted — the address ``request_headers`` sends
    as ``X-Real-IP``."""
    if not trusted or not is_trusted(address, trusted):
        return address
    hops = [
        hop.strip().decode("latin-1")
        for name, value in headers
        if name == b"x-forwarded-for"
        for hop in value.split(b",")
    ]
    for hop in reversed(hops):
        if hop and not is_trusted(hop, trusted):
            return hop
    return hops[0] if hops and hops[0] else address


def _forwarded_node(address: str) -> bytes:
    # RFC 7239 §6: IPv6 addresses are enclosed in brackets and the value quoted.
    if ":" in address:
        return f'"[{address}]"'.encode()
    return address.encode()


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientIdentity:
    """Who the exchange is for, established once per connection (DESIGN decision 5)."""

    address: str  # the client's IP (from the socket or a trusted PROXY header)
    scheme: str  # "https" or "http", as the client used it
    host: bytes  # the Host / :authority the client sent, port included if any
    port: int  # the listener port the client connected to


# Request headers ``request_headers`` does more with than keep them.
_REQUEST_SPECIAL = HOP_BY_HOP | FORWARDING_HEADERS
# Names met before that are kept as they are (neither special nor with "_"): a client sends
# the same names on every request, so most headers cost one set lookup. Bounded: cleared when
# full.
_plain_names: set[bytes] = set()
_PLAIN_NAMES_MAX = 1024


def request_headers(
    headers: Iterable[tuple[bytes, bytes]],
    client: ClientIdentity,
    *,
    trusted: Sequence[Network] = (),
    forwarded: bool = False,
    underscores: bool = False,
) -> Headers:
    """Headers to send to the origin for a request received from ``client``.

    One pass: most requests carry no hop-by-hop or forwarding header, and names met before
    are remembered, so each header costs one set lookup (and is kept as the same tuple). A
    trusted peer's forwarding headers are set aside and joined with ours at the end.
    ``underscores`` keeps header names with "_" (dropped by default)."""
    kept: Headers = []
    keep = kept.append
    named: set[bytes] = set()
    incoming: Headers = []  # a trusted peer's forwarding headers, in order
    peer_trusted: bool | None = None
    for header in headers:
        if header[0] in _plain_names:
            keep(header)
            continue
        name, value = header
        if name not in _REQUEST_SPECIAL:
            if name.find(b"_") < 0:
                if len(_plain_names) >= _PLAIN_NAMES_MAX:
                    _plain_names.clear()
                _plain_names.add(name)
                keep(header)
            elif underscores:
                keep(header)
        elif name == b"connection":
            if value != b"keep-alive":  # naming a hop-by-hop header changes nothing
                _connection_options(value, named)
        elif name in FORWARDING_HEADERS:
            if peer_trusted is None:
                peer_trusted = is_trusted(client.address, trusted)
            if peer_trusted:
                incoming.append(header)
    kept = _drop_named(kept, named)
    addr = client.address.encode()
    fwd: list[bytes] = []
    if not incoming:
        chain = real_ip = addr
        proto = client.scheme.encode()
        host = client.host
        port = str(client.port).encode()
    else:
        xff: list[bytes] = []
        proto_in = host_in = port_in = None
        for name, value in incoming:
            if name == b"x-forwarded-for":
                xff.append(value)
            elif name == b"forwarded":
                fwd.append(value)
            elif name == b"x-forwarded-proto":
                proto_in = value
            elif name == b"x-forwarded-host":
                host_in = value
            elif name == b"x-forwarded-port":
                port_in = value
        chain = b", ".join([*xff, addr])
        real_ip = addr
        # The real client is the rightmost address not itself a trusted proxy.
        for hop in reversed([h.strip() for h in chain.split(b",")]):
            real_ip = hop
            if not is_trusted(hop.decode("latin-1"), trusted):
                break
        proto = proto_in or client.scheme.encode()
        host = host_in or client.host
        port = port_in or str(client.port).encode()
    kept += (
        (b"x-forwarded-for", chain),
        (b"x-forwarded-proto", proto),
        (b"x-forwarded-host", host),
        (b"x-forwarded-port", port),
        (b"x-real-ip", real_ip),
    )
    if forwarded:
        element = b"for=" + _forwarded_node(client.address) + b";proto=" + client.scheme.encode()
        if client.host:
            element += b';host="' + client.host.replace(b'"', b"") + b'"'
        kept.append((b"forwarded", b", ".join([*fwd, element])))
    return kept


# --- toward the client --------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class HidingPolicy:
    """What a pool's responses must not reveal."""

    origin_authorities: frozenset[bytes] = frozenset()  # b"10.0.0.1:8080", b"app.internal"
    origin_hosts: frozenset[bytes] = frozenset()  # b"10.0.0.1", b"app.internal"
    hide: frozenset[bytes] = frozenset()  # extra header names to drop
    server_header: str = "remove"  # "keep" | "remove" | replacement value


def _rewrite_url(url: bytes, policy: HidingPolicy, scheme: bytes, host: bytes) -> bytes | None:
    """If ``url`` is absolute and points at an origin, return it pointed at the client's host."""
    stripped = url.strip()
    lower = stripped[:8].lower()
    if lower.startswith(b"http://"):
        rest = stripped[7:]
    elif lower.startswith(b"https://"):
        rest = stripped[8:]
    elif lower.startswith(b"//"):
        rest = stripped[2:]
    else:
        return None
    cut = len(rest)
    for sep in (b"/", b"?", b"#"):
        i = rest.find(sep)
        if i != -1:
            cut = min(cut, i)
    authority = rest[:cut].lower()
    if b"@" in authority:
        authority = authority.rsplit(b"@", 1)[1]
    bare = authority
    if bare.startswith(b"["):
        bare = bare[1 : bare.find(b"]")] if b"]" in bare else bare
        bare = _compressed_ipv6(bare)
    elif bare.count(b":") == 1:
        bare = bare.split(b":", 1)[0]
    bare = bare.rstrip(b".")  # "app.internal." is app.internal
    if authority not in policy.origin_authorities and bare not in policy.origin_hosts:
        return None
    return scheme + b"://" + host + rest[cut:]


def _compressed_ipv6(text: bytes) -> bytes:
    """``2001:DB8:0::5`` as the config stores it (``2001:db8::5``); other text unchanged."""
    try:
        return ipaddress.IPv6Address(text.decode("ascii")).compressed.encode()
    except (ValueError, UnicodeDecodeError):
        return text


def _rewrite_refresh(value: bytes, policy: HidingPolicy, scheme: bytes, host: bytes) -> bytes:
    lower = value.lower()
    i = lower.find(b"url=")
    if i == -1:
        return value
    url = value[i + 4 :].strip().strip(b"'\"")
    new = _rewrite_url(url, policy, scheme, host)
    return value if new is None else value[: i + 4] + new


def _rewrite_cookie(value: bytes, policy: HidingPolicy) -> bytes:
    parts = value.split(b";")
    kept = [parts[0]]
    for attr in parts[1:]:
        name, _, val = attr.strip().partition(b"=")
        if name.lower() == b"domain":
            domain = val.strip().lstrip(b".").lower()
            if domain in policy.origin_hosts or any(
                h.endswith(b"." + domain) for h in policy.origin_hosts
            ):
                continue  # a host-only cookie for the client's host instead
        kept.append(attr)
    return b";".join(kept)


# What ``response_headers`` does with a header, by name; a name not here is kept as it is
# (unless the pool hides it).
_DROP, _CONNECTION, _SERVER, _LOCATION, _REFRESH, _COOKIE = range(6)
_RESPONSE_ACTIONS: dict[bytes, int] = {
    **dict.fromkeys(HOP_BY_HOP, _DROP),
    **dict.fromkeys(ORIGIN_IDENTITY_HEADERS, _DROP),
    b"connection": _CONNECTION,
    b"server": _SERVER,
    b"location": _LOCATION,
    b"content-location": _LOCATION,
    b"refresh": _REFRESH,
    b"set-cookie": _COOKIE,
}


def response_headers(
    headers: Iterable[tuple[bytes, bytes]],
    policy: HidingPolicy,
    *,
    scheme: bytes,
    host: bytes,
) -> Headers:
    """Headers to send to the client for a response from an origin.

    One pass: each header costs one dict lookup (plus one set lookup when the pool hides
    headers of its own), and a header kept as it is stays the same tuple; a header named by
    the Connection header is dropped at the end."""
    out: Headers = []
    keep = out.append
    named: set[bytes] = set()
    hide = policy.hide
    for header in headers:
        if header[0] not in _RESPONSE_ACTIONS:
            if not hide or header[0] not in hide:
                keep(header)
            continue
        name, value = header
        action = _RESPONSE_ACTIONS[name]
        if action == _DROP:
            continue
        if action == _CONNECTION:
            if value != b"keep-alive":  # naming a hop-by-hop header changes nothing
                _connection_options(value, named)
            continue
        if hide and name in hide:
            continue
        if action == _SERVER:
            if policy.server_header == "keep":
                keep(header)
            elif policy.server_header != "remove":
                keep((name, policy.server_header.encode()))
            continue
        if action == _LOCATION:
            if host:
                new = _rewrite_url(value, policy, scheme, host)
                if new is not None:
                    value = new
        elif action == _REFRESH:
            if host:
                value = _rewrite_refresh(value, policy, scheme, host)
        else:  # _COOKIE
            value = _rewrite_cookie(value, policy)
        keep((name, value))
    return _drop_named(out, named)


def interim_headers(headers: Iterable[tuple[bytes, bytes]], policy: HidingPolicy) -> Headers:
    """Headers of an origin's 1xx response or trailer section, for the client.

    They name the origin as easily as a final head does (``Server`` in a 103, an
    ``X-Powered-By`` trailer), so the same identity rules apply; there is no URL in them to
    rewrite.
    """
    return response_headers(headers, policy, scheme=b"", host=b"")
