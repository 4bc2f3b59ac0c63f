"""Routing room: (host, path) → route, table-driven.

The most specific host wins (exact, then the longest wildcard, then any host); within a host
the longest path prefix wins; ties keep configuration order; a host whose routes have no
matching path falls through to less specific hosts; no match is None.
"""

from __future__ import annotations

import pytest

from revproxy.config.model import Route
from revproxy.proto.host import host_matches, normalise_host
from revproxy.upstream.routing import Router, route_order


def route(index: int, host: tuple[str, ...] = (), path: str = "/") -> Route:
    return Route(host=host, path=path, pool=f"p{index}", index=index)


ROUTES = [
    route(0, ("example.com",)),
    route(1, ("example.com",), "/api"),
    route(2, ("example.com",), "/api/v2"),
    route(3, ("*.example.com",)),
    route(4, ("*.eu.example.com",)),
    route(5, ("*.example.com",), "/static"),
    route(6, (), "/.well-known/acme-challenge/"),
    route(7, ("shop.example.com", "store.example.com"), "/cart"),
    route(8, ("only-api.example.org",), "/api"),
    route(9, (), "/fallback"),
    route(10, ("example.com",), "/api"),  # same host and path as 1: 1 wins (config order)
]


@pytest.mark.parametrize(
    ("host", "path", "expected"),
    [
        ("example.com", "/", 0),
        ("example.com", "/index.html", 0),
        ("example.com", "/api", 1),
        ("example.com", "/api/v1/users", 1),
        ("example.com", "/api/v2", 2),
        ("example.com", "/api/v2/x", 2),
        ("www.example.com", "/", 3),
        ("www.example.com", "/static/app.js", 5),
        ("a.eu.example.com", "/", 4),  # the longer wildcard wins
        ("a.eu.example.com", "/static/x", 4),  # "*.example.com" (route 5) covers one label
        ("eu.example.com", "/", 3),  # "*.eu.example.com" needs one more label
        ("a.b.example.com", "/", None),  # a wildcard covers exactly one label
        ("example.com", "/.well-known/acme-challenge/tok", 0),  # exact host, "/" matches first
        ("unknown.test", "/.well-known/acme-challenge/tok", 6),  # any-host route
        ("unknown.test", "/", None),
        ("shop.example.com", "/cart/1", 7),  # exact beats the wildcard
        ("store.example.com", "/cart", 7),
        ("shop.example.com", "/", 3),  # exact host without a matching path falls through
        ("only-api.example.org", "/api/x", 8),
        ("only-api.example.org", "/", None),
        ("only-api.example.org", "/fallback/x", 9),  # falls through to any host
        ("example.org", "/fallback", 9),
        ("com", "/", None),
        ("", "/", None),
    ],
)
def test_match(host: str, path: str, expected: int | None) -> None:
    found = Router(ROUTES).match(host, path)
    assert (found.index if found else None) == expected


@pytest.mark.parametrize(
    ("authority", "host"),
    [
        (b"Example.COM", "example.com"),
        (b"example.com:8443", "example.com"),
        (b"EXAMPLE.com.", "example.com"),
        (b"example.com.:80", "example.com"),
        (b"[::1]:8080", "::1"),
        (b"[2001:DB8::1]", "2001:db8::1"),
        (b"127.0.0.1:80", "127.0.0.1"),
        (b" example.com ", "example.com"),
        ("Example.Org", "example.org"),
        (b"", ""),
    ],
)
def test_normalise_host(authority: bytes | str, host: str) -> None:
    assert normalise_host(authority) == host


def test_routing_ignores_case_and_port_once_normalised() -> None:
    router = Router(ROUTES)
    for authority in (b"EXAMPLE.COM", b"example.com:8080", b"Example.Com.:443"):
        found = router.match(normalise_host(authority), "/api")
        assert found is not None and found.index == 1


@pytest.mark.parametrize(
    ("pattern", "host", "matches"),
    [
        ("example.com", "example.com", True),
        ("example.com", "www.example.com", False),
        ("*.example.com", "www.example.com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "a.b.example.com", False),
        ("*.example.com", ".example.com", False),
        ("*.example.com", "wwwexample.com", False),
    ],
)
def test_host_matches(pattern: str, host: str, matches: bool) -> None:
    assert host_matches(pattern, host) is matches


def test_no_routes_match_nothing() -> None:
    router = Router([])
    assert router.match("example.com", "/") is None
    assert not router.knows_host("example.com")


def test_knows_host() -> None:
    router = Router([route(0, ("example.com",)), route(1, ("*.example.org",))])
    assert router.knows_host("example.com")
    assert router.knows_host("a.example.org")
    assert not router.knows_host("example.org")
    assert not router.knows_host("other.test")
    assert Router([route(0)]).knows_host("anything.test")


def test_route_order_lists_routes_as_they_are_tried() -> None:
    order = [r.index for r in route_order(ROUTES)]
    # Exact hosts (longer paths first, ties in config order), then wildcards (longer first),
    # then any host.
    assert order.index(2) < order.index(1) < order.index(10) < order.index(0)
    assert order.index(0) < order.index(4) < order.index(5) < order.index(3)
    assert order.index(3) < order.index(6) and order.index(3) < order.index(9)
    assert order.index(6) < order.index(9)  # longer any-host path first


def test_router_keeps_every_route() -> None:
    assert Router(ROUTES).routes == tuple(ROUTES)


# --- match conditions (route.match) ------------------------------------------------------------


def _conditional_routes() -> list[Route]:
    import ipaddress

    from revproxy.config.model import FieldMatch, Match

    return [
        Route(path="/api/", pool="plain", index=0),
        Route(path="/api/", pool="v2", index=1,
              match=Match(headers=(FieldMatch(name="x-api-version", values=("2",),
                                              patterns=("^v[23]$",)),))),
        Route(path="/api/", pool="post-debug", index=2,
              match=Match(methods=("POST",), query=(FieldMatch(name="debug", values=("1",)),))),
        Route(path="/api/", pool="inside", index=3,
              match=Match(src=(ipaddress.ip_network("10.0.0.0/8"),))),
        Route(path="/", pool="root", index=4, match=Match(methods=("GET",))),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "headers", "target", "client", "pool"),
    [
        (b"GET", [], b"/api/x", "192.0.2.1", "plain"),
        (b"GET", [(b"x-api-version", b"2")], b"/api/x", "192.0.2.1", "v2"),
        (b"GET", [(b"x-api-version", b" v3 ")], b"/api/x", "192.0.2.1", "v2"),
        (b"GET", [(b"x-api-version", b"v4")], b"/api/x", "192.0.2.1", "plain"),
        # more conditions first: method + query (2) beats the header (1) for a POST with both
        (b"POST", [(b"x-api-version", b"2")], b"/api/x?a=b&debug=1", "192.0.2.1", "post-debug"),
        (b"POST", [], b"/api/x?debug=0", "192.0.2.1", "plain"),
        (b"POST", [], b"/api/x?debug=%31", "192.0.2.1", "post-debug"),  # decoded as a form
        (b"GET", [], b"/api/x", "10.1.2.3", "inside"),
        (b"GET", [], b"/api/x", "not-an-ip", "plain"),
        (b"GET", [], b"/other", "192.0.2.1", "root"),
        (b"DELETE", [], b"/other", "192.0.2.1", None),  # the only "/" route wants GET
    ],
)
def test_match_request(
    method: bytes, headers: list[tuple[bytes, bytes]], target: bytes, client: str, pool: str | None
) -> None:
    router = Router(_conditional_routes())
    path = target.split(b"?")[0].decode()
    found = router.match_request("example.com", path, method, headers, target, client)
    assert (found.pool if found else None) == pool


def test_conditions_compiled_only_when_used() -> None:
    assert Router([Route(path="/", pool="a")]).conditions == {}
    assert set(Router(_conditional_routes()).conditions) == {1, 2, 3, 4}
    order = [r.pool for r in route_order(_conditional_routes())]
    assert order == ["post-debug", "v2", "inside", "plain", "root"]
