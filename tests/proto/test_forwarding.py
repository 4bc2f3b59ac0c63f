"""Header policy at the two borders of an exchange, table-driven.

Toward the origin: hop-by-hop headers out (and whatever Connection names), the client's
identity in, forwarding headers from untrusted peers dropped, from trusted ones appended to.
Toward the client: hop-by-hop and identity headers out, origin addresses rewritten out of
Location-like headers and cookie domains.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from revproxy.proto.events import Headers
from revproxy.proto.forwarding import (
    FORWARDING_HEADERS,
    HOP_BY_HOP,
    ORIGIN_IDENTITY_HEADERS,
    ClientIdentity,
    HidingPolicy,
    Network,
    _rewrite_cookie,
    _rewrite_refresh,
    _rewrite_url,
    is_trusted,
    remove_hop_by_hop,
    request_headers,
    response_headers,
)

LOCAL: list[Network] = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("10.0.0.0/8")]
CLIENT = ClientIdentity(address="203.0.113.7", scheme="https", host=b"app.test", port=443)
PROXY = ClientIdentity(address="10.0.0.2", scheme="https", host=b"app.test:8443", port=8443)
SPOOF: Headers = [
    (b"x-forwarded-for", b"6.6.6.6"),
    (b"x-forwarded-proto", b"http"),
    (b"x-forwarded-host", b"evil.test"),
    (b"x-forwarded-port", b"1"),
    (b"x-real-ip", b"6.6.6.6"),
    (b"forwarded", b"for=6.6.6.6"),
]


def values(headers: Headers, name: bytes) -> list[bytes]:
    return [v for n, v in headers if n == name]


# --- hop-by-hop ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "kept"),
    [
        ([(b"connection", b"keep-alive"), (b"x-a", b"1")], [(b"x-a", b"1")]),
        (
            [(b"connection", b"x-foo, X-Bar"), (b"x-foo", b"1"), (b"x-bar", b"2"), (b"x-c", b"3")],
            [(b"x-c", b"3")],
        ),
        ([(b"connection", b"x-foo"), (b"connection", b"x-bar"), (b"x-bar", b"2")], []),
        ([(b"connection", b" , ,"), (b"x-a", b"1")], [(b"x-a", b"1")]),
        (
            [
                (b"keep-alive", b"timeout=5"),
                (b"te", b"trailers"),
                (b"trailer", b"x-sum"),
                (b"transfer-encoding", b"chunked"),
                (b"upgrade", b"websocket"),
                (b"proxy-connection", b"keep-alive"),
                (b"proxy-authenticate", b"Basic"),
                (b"proxy-authorization", b"Basic eA=="),
                (b"authorization", b"Bearer x"),
            ],
            [(b"authorization", b"Bearer x")],
        ),
        ([(b"x-a", b"1"), (b"x-a", b"2")], [(b"x-a", b"1"), (b"x-a", b"2")]),
    ],
)
def test_remove_hop_by_hop(headers: Headers, kept: Headers) -> None:
    assert remove_hop_by_hop(headers) == kept


@pytest.mark.parametrize(
    ("address", "trusted"),
    [
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("::ffff:10.1.2.3", True),  # IPv4-mapped
        ("192.168.0.1", False),
        ("::1", False),
        ("not an address", False),
        ("", False),
    ],
)
def test_is_trusted(address: str, trusted: bool) -> None:
    assert is_trusted(address, LOCAL) is trusted
    assert is_trusted(address, []) is False


# --- toward the origin ----------------------------------------------------------------------


def test_untrusted_peer_forwarding_headers_are_replaced() -> None:
    out = request_headers([(b"host", b"app.test"), *SPOOF], CLIENT, trusted=LOCAL)
    assert values(out, b"x-forwarded-for") == [b"203.0.113.7"]
    assert values(out, b"x-real-ip") == [b"203.0.113.7"]
    assert values(out, b"x-forwarded-proto") == [b"https"]
    assert values(out, b"x-forwarded-host") == [b"app.test"]
    assert values(out, b"x-forwarded-port") == [b"443"]
    assert values(out, b"forwarded") == []
    assert values(out, b"host") == [b"app.test"]


def test_no_trust_configured_means_replace() -> None:
    out = request_headers(SPOOF, PROXY, trusted=[])
    assert values(out, b"x-forwarded-for") == [b"10.0.0.2"]
    assert b"6.6.6.6" not in b"".join(v for _, v in out)


def test_trusted_peer_forwarding_headers_are_appended_to() -> None:
    out = request_headers(SPOOF, PROXY, trusted=LOCAL, forwarded=True)
    assert values(out, b"x-forwarded-for") == [b"6.6.6.6, 10.0.0.2"]
    assert values(out, b"x-real-ip") == [b"6.6.6.6"]
    assert values(out, b"x-forwarded-proto") == [b"http"]
    assert values(out, b"x-forwarded-host") == [b"evil.test"]
    assert values(out, b"x-forwarded-port") == [b"1"]
    assert values(out, b"forwarded") == [
        b'for=6.6.6.6, for=10.0.0.2;proto=https;host="app.test:8443"'
    ]


def test_real_ip_is_the_rightmost_untrusted_hop() -> None:
    headers: Headers = [
        (b"x-forwarded-for", b"198.51.100.1, 203.0.113.9"),
        (b"x-forwarded-for", b"10.0.0.9"),
    ]
    out = request_headers(headers, PROXY, trusted=LOCAL)
    assert values(out, b"x-forwarded-for") == [b"198.51.100.1, 203.0.113.9, 10.0.0.9, 10.0.0.2"]
    assert values(out, b"x-real-ip") == [b"203.0.113.9"]


def test_forwarded_header_for_ipv6_is_quoted() -> None:
    v6 = ClientIdentity(address="2001:db8::1", scheme="http", host=b"app.test", port=80)
    out = request_headers([], v6, forwarded=True)
    assert values(out, b"forwarded") == [b'for="[2001:db8::1]";proto=http;host="app.test"']


def test_forwarded_host_cannot_break_out_of_its_quotes() -> None:
    odd = ClientIdentity(address="192.0.2.1", scheme="http", host=b'a"b.test', port=80)
    out = request_headers([], odd, forwarded=True)
    assert values(out, b"forwarded") == [b'for=192.0.2.1;proto=http;host="ab.test"']


def test_hop_by_hop_headers_do_not_reach_the_origin() -> None:
    headers: Headers = [
        (b"host", b"app.test"),
        (b"connection", b"x-foo"),
        (b"x-foo", b"private"),
        (b"keep-alive", b"300"),
        (b"te", b"trailers"),
        (b"trailer", b"x-sum"),
        (b"upgrade", b"websocket"),
        (b"proxy-authorization", b"Basic eA=="),
        (b"cookie", b"a=1"),
    ]
    out = request_headers(headers, CLIENT)
    names = [n for n, _ in out]
    assert names[:2] == [b"host", b"cookie"]
    assert not {b"connection", b"x-foo", b"keep-alive", b"te", b"trailer", b"upgrade"} & set(names)
    assert b"proxy-authorization" not in names


def test_connection_cannot_name_forwarding_headers_away() -> None:
    """Forwarding headers are end to end: a Connection header naming one is not obeyed, so a
    trusted peer's chain is kept."""
    out = request_headers(
        [(b"connection", b"x-forwarded-for"), (b"x-forwarded-for", b"6.6.6.6")],
        PROXY,
        trusted=LOCAL,
    )
    assert values(out, b"x-forwarded-for") == [b"6.6.6.6, 10.0.0.2"]


@pytest.mark.parametrize("named", [b"host", b"Host", b"content-length", b"x-real-ip"])
def test_connection_cannot_name_host_or_framing_away(named: bytes) -> None:
    """``Connection: close, host`` once left the origin without a Host."""
    headers = [
        (b"host", b"app.test"),
        (b"content-length", b"3"),
        (b"connection", b"close, " + named),
    ]
    out = request_headers(headers, CLIENT)
    assert values(out, b"host") == [b"app.test"]
    assert values(out, b"content-length") == [b"3"]


def test_underscore_twins_of_forwarding_headers_are_dropped() -> None:
    headers = [(b"x_forwarded_for", b"6.6.6.6"), (b"x_real_ip", b"6.6.6.6"), (b"x-a_b", b"1")]
    assert [n for n, _ in request_headers(headers, CLIENT)] == [
        b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port",
        b"x-real-ip",
    ]  # fmt: skip
    kept = request_headers(headers, CLIENT, underscores=True)
    assert [n for n, _ in kept[:3]] == [b"x_forwarded_for", b"x_real_ip", b"x-a_b"]


# --- toward the client ----------------------------------------------------------------------


POLICY = HidingPolicy(
    origin_authorities=frozenset({b"10.0.0.5:8080", b"10.0.0.5", b"app.internal:8080"}),
    origin_hosts=frozenset({b"10.0.0.5", b"app.internal"}),
    hide=frozenset({b"x-internal-id"}),
)


def client_side(headers: Headers, policy: HidingPolicy = POLICY) -> Headers:
    return response_headers(headers, policy, scheme=b"https", host=b"www.example.com")


@pytest.mark.parametrize(
    "name",
    [b"x-powered-by", b"x-aspnet-version", b"x-runtime", b"x-backend-server", b"via",
     b"x-served-by", b"x-internal-id", b"keep-alive", b"transfer-encoding", b"connection"],
)  # fmt: skip
def test_identity_and_hop_by_hop_headers_are_removed(name: bytes) -> None:
    assert client_side([(name, b"something"), (b"x-kept", b"1")]) == [(b"x-kept", b"1")]


@pytest.mark.parametrize(
    ("server_header", "expected"),
    [("remove", []), ("keep", [b"Apache/2.4"]), ("edge", [b"edge"])],
)
def test_server_header(server_header: str, expected: list[bytes]) -> None:
    policy = HidingPolicy(server_header=server_header)
    assert values(client_side([(b"server", b"Apache/2.4")], policy), b"server") == expected


@pytest.mark.parametrize(
    ("location", "rewritten"),
    [
        (b"http://10.0.0.5:8080/login?next=/", b"https://www.example.com/login?next=/"),
        (b"http://10.0.0.5/x", b"https://www.example.com/x"),
        (b"http://APP.internal:8080/", b"https://www.example.com/"),
        (b"https://app.internal/a#f", b"https://www.example.com/a#f"),
        (b"//10.0.0.5:8080/p", b"https://www.example.com/p"),
        (b"http://user@10.0.0.5:8080/p", b"https://www.example.com/p"),
        (b"http://10.0.0.5:8080", b"https://www.example.com"),
        (b"/relative/path", b"/relative/path"),
        (b"https://elsewhere.example.org/", b"https://elsewhere.example.org/"),
        (b"http://10.0.0.50/", b"http://10.0.0.50/"),
    ],
)
def test_location_naming_an_origin_is_rewritten(location: bytes, rewritten: bytes) -> None:
    for name in (b"location", b"content-location"):
        assert client_side([(name, location)]) == [(name, rewritten)]


def test_refresh_naming_an_origin_is_rewritten() -> None:
    out = client_side([(b"refresh", b"5; url=http://10.0.0.5:8080/next")])
    assert out == [(b"refresh", b"5; url=https://www.example.com/next")]
    assert client_side([(b"refresh", b"5")]) == [(b"refresh", b"5")]


@pytest.mark.parametrize(
    ("cookie", "expected"),
    [
        (b"a=1; Domain=app.internal; Path=/", b"a=1; Path=/"),
        (b"a=1; domain=.internal; Secure", b"a=1; Secure"),
        (b"a=1; Domain=example.com; Path=/", b"a=1; Domain=example.com; Path=/"),
        (b"a=1; HttpOnly", b"a=1; HttpOnly"),
    ],
)
def test_cookie_domain_naming_an_origin_is_dropped(cookie: bytes, expected: bytes) -> None:
    assert client_side([(b"set-cookie", cookie)]) == [(b"set-cookie", expected)]


def test_ordinary_headers_pass_unchanged_and_in_order() -> None:
    headers: Headers = [
        (b"content-type", b"text/html"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"cache-control", b"max-age=60"),
        (b"content-length", b"10"),
    ]
    assert client_side(headers) == headers


# --- the one-pass functions agree with the rules written out pass by pass -------------------
#
# `remove_hop_by_hop`, `request_headers` and `response_headers` do their work in one pass over
# the headers (they run for every request). Below are the same rules as plain successive
# passes, the way the RFC sentences read; on any headers, both must give the same list.


# End-to-end headers a Connection header may not name away.
NEVER_NAMED = {b"host", b"content-length", b"transfer-encoding", *FORWARDING_HEADERS}


def reference_remove_hop_by_hop(headers: Headers) -> Headers:
    named: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            named.update(t.strip().lower() for t in value.split(b",") if t.strip())
    named -= NEVER_NAMED
    return [(n, v) for n, v in headers if n not in HOP_BY_HOP and n not in named]


def reference_request_headers(
    headers: Headers,
    client: ClientIdentity,
    trusted: list[Network],
    forwarded: bool,
    underscores: bool = False,
) -> Headers:
    if not underscores:
        headers = [(n, v) for n, v in headers if b"_" not in n]
    peer_trusted = is_trusted(client.address, trusted)
    xff: list[bytes] = []
    fwd: list[bytes] = []
    proto = host = port = None
    kept: Headers = []
    for name, value in reference_remove_hop_by_hop(headers):
        if name not in FORWARDING_HEADERS:
            kept.append((name, value))
        elif peer_trusted and name == b"x-forwarded-for":
            xff.append(value)
        elif peer_trusted and name == b"forwarded":
            fwd.append(value)
        elif peer_trusted and name == b"x-forwarded-proto":
            proto = value
        elif peer_trusted and name == b"x-forwarded-host":
            host = value
        elif peer_trusted and name == b"x-forwarded-port":
            port = value
    addr = client.address.encode()
    chain = b", ".join([*xff, addr])
    real_ip = addr
    if peer_trusted:
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
        node = f'"[{client.address}]"' if ":" in client.address else client.address
        element = f"for={node};proto={client.scheme}".encode()
        if client.host:
            element += b';host="' + client.host.replace(b'"', b"") + b'"'
        kept.append((b"forwarded", b", ".join([*fwd, element])))
    return kept


def reference_response_headers(
    headers: Headers, policy: HidingPolicy, scheme: bytes, host: bytes
) -> Headers:
    out: Headers = []
    for name, value in reference_remove_hop_by_hop(headers):
        if name in ORIGIN_IDENTITY_HEADERS or name in policy.hide:
            continue
        if name == b"server":
            if policy.server_header == "keep":
                out.append((name, value))
            elif policy.server_header != "remove":
                out.append((name, policy.server_header.encode()))
            continue
        if name in (b"location", b"content-location") and host:
            value = _rewrite_url(value, policy, scheme, host) or value
        elif name == b"refresh" and host:
            value = _rewrite_refresh(value, policy, scheme, host)
        elif name == b"set-cookie":
            value = _rewrite_cookie(value, policy)
        out.append((name, value))
    return out


# Few names, so that a Connection header often names one that is there; one of each kind.
NAMES = [
    b"connection", b"keep-alive", b"te", b"upgrade", b"x-forwarded-for", b"x-forwarded-proto",
    b"x-forwarded-host", b"forwarded", b"x-real-ip", b"x-powered-by", b"via", b"host",
    b"server", b"location", b"refresh", b"set-cookie", b"x-a", b"x_forwarded_for",
    b"content-length",
]  # fmt: skip
header_name = st.sampled_from(NAMES)
# Connection values name any header, in any case, with stray commas and spaces.
connection_value = st.lists(
    st.sampled_from([*NAMES, b"close", b"X-A", b"Keep-Alive", b"", b" "]), max_size=4
).map(b", ".join)
header_value = st.one_of(
    st.sampled_from(
        [b"1", b"10.0.0.9, 6.6.6.6", b"10.0.0.3", b"http://10.0.0.5:8080/x",
         b"a=1; Domain=app.internal", b"5; url=http://app.internal/n", b"", b"Apache",
         b"for=6.6.6.6"]
    ),
    connection_value,
)  # fmt: skip
headers_st = st.lists(
    st.one_of(
        st.tuples(header_name, header_value),
        st.tuples(st.just(b"connection"), connection_value),
    ),
    max_size=14,
)
client_st = st.builds(
    ClientIdentity,
    address=st.sampled_from(["203.0.113.7", "10.0.0.2", "2001:db8::1", "::ffff:10.1.2.3"]),
    scheme=st.sampled_from(["http", "https"]),
    host=st.sampled_from([b"app.test", b"", b'a"b.test:8443']),
    port=st.sampled_from([80, 443, 8443]),
)
policy_st = st.builds(
    HidingPolicy,
    origin_authorities=st.just(frozenset({b"10.0.0.5:8080", b"app.internal"})),
    origin_hosts=st.just(frozenset({b"10.0.0.5", b"app.internal"})),
    hide=st.frozensets(header_name, max_size=3),
    server_header=st.sampled_from(["keep", "remove", "edge/1"]),
)


@given(headers=headers_st)
def test_remove_hop_by_hop_matches_the_rule(headers: Headers) -> None:
    assert remove_hop_by_hop(headers) == reference_remove_hop_by_hop(headers)


@settings(max_examples=500)
@given(
    headers=headers_st,
    client=client_st,
    trust=st.booleans(),
    forwarded=st.booleans(),
    underscores=st.booleans(),
)
def test_request_headers_match_the_rules(
    headers: Headers, client: ClientIdentity, trust: bool, forwarded: bool, underscores: bool
) -> None:
    trusted = LOCAL if trust else []
    got = request_headers(
        headers, client, trusted=trusted, forwarded=forwarded, underscores=underscores
    )
    assert got == reference_request_headers(headers, client, trusted, forwarded, underscores)
    assert all(type(h) is tuple for h in got)


@settings(max_examples=500)
@given(
    headers=headers_st,
    policy=policy_st,
    host=st.sampled_from([b"www.example.com", b""]),
)
def test_response_headers_match_the_rules(
    headers: Headers, policy: HidingPolicy, host: bytes
) -> None:
    got = response_headers(headers, policy, scheme=b"https", host=host)
    assert got == reference_response_headers(headers, policy, b"https", host)
    assert all(type(h) is tuple for h in got)
