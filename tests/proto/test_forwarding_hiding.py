"""Response headers toward the client: the origin-hiding rules, bytes in, bytes out."""

from __future__ import annotations

import pytest

from revproxy.config.model import Pool, Server
from revproxy.edge.generation import hiding_for
from revproxy.proto.forwarding import HidingPolicy, interim_headers, response_headers

POOL = Pool(
    name="web",
    servers=(
        Server(address="10.0.0.5", port=8080),
        Server(address="app.internal", port=80),
        Server(address="fd00::5", port=8443),
    ),
    hide_headers=("x-internal-id",),
)
POLICY = hiding_for(POOL)
ME = b"https://shop.example"


def rewrite(name: bytes, value: bytes, policy: HidingPolicy = POLICY) -> list[bytes]:
    out = response_headers([(name, value)], policy, scheme=b"https", host=b"shop.example")
    return [v for n, v in out if n == name]


@pytest.mark.parametrize(
    "value, expected",
    [
        (b"http://10.0.0.5:8080/a?b#c", ME + b"/a?b#c"),
        (b"https://10.0.0.5:8080", ME),
        (b"//10.0.0.5:8080/x", ME + b"/x"),
        (b"HTTP://APP.INTERNAL/Up", ME + b"/Up"),
        (b"http://app.internal:80/p", ME + b"/p"),
        (b"http://app.internal:9999/p", ME + b"/p"),  # any port of an origin host
        (b"http://user:pw@10.0.0.5:8080/u", ME + b"/u"),
        (b"http://[fd00::5]:8443/v6", ME + b"/v6"),
        (b"http://[FD00::5]/v6", ME + b"/v6"),
        (b"http://[fd00:0:0::0005]:8443/v6", ME + b"/v6"),
        (b"http://app.internal./dot", ME + b"/dot"),
        (b"  http://10.0.0.5:8080/space  ", ME + b"/space"),
        (b"/relative", b"/relative"),
        (b"https://example.org/x", b"https://example.org/x"),
        (b"http://10.0.0.50:8080/near-miss", b"http://10.0.0.50:8080/near-miss"),
        (b"http://app.internal.example.org/", b"http://app.internal.example.org/"),
    ],
)
def test_location_like_headers(value: bytes, expected: bytes) -> None:
    assert rewrite(b"location", value) == [expected]
    assert rewrite(b"content-location", value) == [expected]


@pytest.mark.parametrize(
    "value, expected",
    [
        (b"5; url=http://10.0.0.5:8080/next", b"5; url=" + ME + b"/next"),
        (b"0;URL='http://app.internal/q'", b"0;URL=" + ME + b"/q"),
        (b"5", b"5"),
        (b"5; url=/local", b"5; url=/local"),
    ],
)
def test_refresh(value: bytes, expected: bytes) -> None:
    assert rewrite(b"refresh", value) == [expected]


@pytest.mark.parametrize(
    "value, expected",
    [
        (b"a=1; Domain=10.0.0.5; Path=/", b"a=1; Path=/"),
        (b"a=1; domain=.app.internal", b"a=1"),
        (b"a=1; DOMAIN=internal; Secure", b"a=1; Secure"),  # a parent of an origin host
        (b"a=1; Domain=shop.example", b"a=1; Domain=shop.example"),
        (b"a=1; Path=/", b"a=1; Path=/"),
    ],
)
def test_set_cookie_domain(value: bytes, expected: bytes) -> None:
    assert rewrite(b"set-cookie", value) == [expected]


def test_identity_headers_and_server_header() -> None:
    headers = [
        (b"server", b"Apache/2.4"),
        (b"x-powered-by", b"PHP/8"),
        (b"x-aspnet-version", b"4.0"),
        (b"x-runtime", b"0.01"),
        (b"via", b"1.1 cache"),
        (b"x-internal-id", b"7"),
        (b"content-type", b"text/plain"),
    ]
    out = response_headers(headers, POLICY, scheme=b"https", host=b"shop.example")
    assert out == [(b"content-type", b"text/plain")]
    keep = hiding_for(Pool(name="k", servers=POOL.servers, server_header="keep"))
    assert rewrite(b"server", b"Apache/2.4", keep) == [b"Apache/2.4"]
    edge = hiding_for(Pool(name="e", servers=POOL.servers, server_header="edge"))
    assert rewrite(b"server", b"Apache/2.4", edge) == [b"edge"]


def test_interim_headers_follow_the_same_identity_rules() -> None:
    early = [
        (b"server", b"Apache/2.4"),
        (b"x-powered-by", b"PHP/8"),
        (b"x-internal-id", b"7"),
        (b"link", b"</style.css>; rel=preload"),
        (b"connection", b"keep-alive"),
    ]
    assert interim_headers(early, POLICY) == [(b"link", b"</style.css>; rel=preload")]
    trailers = [(b"x-backend-server", b"10.0.0.5:8080"), (b"x-checksum", b"42")]
    assert interim_headers(trailers, POLICY) == [(b"x-checksum", b"42")]
