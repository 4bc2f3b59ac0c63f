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
control options for the forwarded message)."
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable, Sequence
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
    headers = list(headers)
    named: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            named.update(t.strip().lower() for t in value.split(b",") if t.strip())
    if not named:
        return [(n, v) for n, v in headers if n not in HOP_BY_HOP]
    return [(n, v) for n, v in headers if n not in HOP_BY_HOP and n not in named]


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


def request_headers(
    headers: Iterable[tuple[bytes, bytes]],
    client: ClientIdentity,
    *,
    trusted: Sequence[Network] = (),
    forwarded: bool = False,
) -> Headers:
    """Headers to send to the origin for a request received from ``client``."""
    out = remove_hop_by_hop(headers)
    peer_trusted = is_trusted(client.address, trusted)
    xff: list[bytes] = []
    fwd: list[bytes] = []
    proto = host = port = None
    kept: Headers = []
    for name, value in out:
        if name in FORWARDING_HEADERS:
            if peer_trusted:
                if name == b"x-forwarded-for":
                    xff.append(value)
                elif name == b"forwarded":
                    fwd.append(value)
                elif name == b"x-forwarded-proto":
                    proto = value
                elif name == b"x-forwarded-host":
                    host = value
                elif name == b"x-forwarded-port":
                    port = value
            continue
        kept.append((name, value))
    addr = client.address.encode()
    chain = b", ".join([*xff, addr])
    real_ip = addr
    if peer_trusted:
        # The real client is the rightmost address not itself a trusted proxy.
        for hop in reversed([h.strip() for h in chain.split(b",")]):
            real_ip = hop
            if not is_trusted(hop.decode("latin-1"), trusted):
                break
    kept.append((b"x-forwarded-for", chain))
    kept.append((b"x-forwarded-proto", proto or client.scheme.encode()))
    kept.append((b"x-forwarded-host", host or client.host))
    kept.append((b"x-forwarded-port", port or str(client.port).encode()))
    kept.append((b"x-real-ip", real_ip))
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


def response_headers(
    headers: Iterable[tuple[bytes, bytes]],
    policy: HidingPolicy,
    *,
    scheme: bytes,
    host: bytes,
) -> Headers:
    """Headers to send to the client for a response from an origin."""
    out: Headers = []
    for name, value in remove_hop_by_hop(headers):
        if name in ORIGIN_IDENTITY_HEADERS or name in policy.hide:
            continue
        if name == b"server":
            if policy.server_header == "keep":
                out.append((name, value))
            elif policy.server_header != "remove":
                out.append((name, policy.server_header.encode()))
            continue
        if name in (b"location", b"content-location") and host:
            new = _rewrite_url(value, policy, scheme, host)
            if new is not None:
                value = new
        elif name == b"refresh" and host:
            value = _rewrite_refresh(value, policy, scheme, host)
        elif name == b"set-cookie":
            value = _rewrite_cookie(value, policy)
        out.append((name, value))
    return out


def interim_headers(headers: Iterable[tuple[bytes, bytes]], policy: HidingPolicy) -> Headers:
    """Headers of an origin's 1xx response or trailer section, for the client.

    They name the origin as easily as a final head does (``Server`` in a 103, an
    ``X-Powered-By`` trailer), so the same identity rules apply; there is no URL in them to
    rewrite.
    """
    return response_headers(headers, policy, scheme=b"", host=b"")


def strip_forwarding(headers: Collection[tuple[bytes, bytes]]) -> Headers:
    """Drop every forwarding header (used where no identity should be passed on)."""
    return [(n, v) for n, v in headers if n not in FORWARDING_HEADERS]
