"""The forward proxy's request rules: targets it relays, refuses, and the headers it strips."""

from __future__ import annotations

import pytest

from revproxy.proto.forward_proxy import (
    NotAProxyRequest,
    ProxyTarget,
    destination_headers,
    proxy_target,
    request_line,
)


@pytest.mark.parametrize(
    ("method", "target", "expected"),
    [
        (b"CONNECT", b"api.example:443", ProxyTarget(True, "api.example", 443, b"")),
        (b"CONNECT", b"[2001:db8::1]:443", ProxyTarget(True, "2001:db8::1", 443, b"")),
        (b"GET", b"http://Example.com/a?b", ProxyTarget(False, "example.com", 80, b"/a?b")),
        (b"GET", b"http://example.com:8080", ProxyTarget(False, "example.com", 8080, b"/")),
        (b"GET", b"HTTP://example.com?q", ProxyTarget(False, "example.com", 80, b"/?q")),
        (b"GET", b"http://example.com/p#frag", ProxyTarget(False, "example.com", 80, b"/p")),
    ],
)
def test_targets(method: bytes, target: bytes, expected: ProxyTarget) -> None:
    assert proxy_target(method, target) == expected


@pytest.mark.parametrize(
    ("method", "target", "reason"),
    [
        (b"CONNECT", b"api.example", "host:port"),
        (b"GET", b"https://api.example/", "CONNECT"),
        (b"GET", b"/origin-form", "absolute-form"),
        (b"GET", b"http://user@example.com/", "invalid host"),
        (b"GET", b"http:///nohost", "invalid host"),
    ],
)
def test_refused_targets(method: bytes, target: bytes, reason: str) -> None:
    with pytest.raises(NotAProxyRequest, match=reason):
        proxy_target(method, target)
    assert NotAProxyRequest.status == 400


def test_request_line() -> None:
    assert request_line(b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n") == (b"GET", b"http://x/")


def test_nothing_identifying_goes_on() -> None:
    headers = [
        (b"host", b"x"),
        (b"proxy-authorization", b"Basic eA=="),
        (b"proxy-connection", b"keep-alive"),
        (b"connection", b"close, x-secret"),
        (b"x-secret", b"1"),
        (b"via", b"1.1 app"),
        (b"forwarded", b"for=1.2.3.4"),
        (b"x-forwarded-for", b"1.2.3.4"),
        (b"x-real-ip", b"1.2.3.4"),
        (b"te", b"trailers"),
        (b"x-app", b"kept"),
    ]
    assert destination_headers(headers) == [(b"host", b"x"), (b"x-app", b"kept")]
