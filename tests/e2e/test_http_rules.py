"""HTTP rules end to end (docs/http-rules.md): routes matched on method, header, query and
source; header edits and path prefixes toward the origin; the pool's host_header; HSTS on TLS
listeners only; configured error pages for local errors. curl against a recording origin."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import (
    LOOPBACK,
    Origin,
    Proxy,
    Reply,
    Seen,
    closed_port,
    curl_http,
    free_port,
    make_cert,
    toml_path,
)

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("real_peers")]


def named(name: str):  # type: ignore[no-untyped-def]
    def handler(req: Seen) -> Reply:
        return Reply(
            headers=[("x-served-by", name), ("x-powered-by", "PHP/8"),
                     ("location", f"http://origin.internal{req.target}")],
            body=f"{name} {req.method} {req.target}\n".encode(),
        )  # fmt: skip

    return handler


def test_match_rewrites_and_host_header(tmp_path: Path) -> None:
    with Origin("a", named("a")) as a, Origin("b", named("b")) as b:
        port = free_port()
        config = f"""
[[listener]]
name = "web"
bind = ["{LOOPBACK}:{port}"]

[[route]]
path = "/api/"
pool = "b"
strip_prefix = "/api"
add_prefix = "/v2"
match = {{ headers = {{ "X-Api-Version" = ["2", "~^v[23]$"] }} }}
response_headers = {{ remove = ["X-Powered-By"], set = {{ "X-Route" = "api-v2" }} }}

[route.request_headers]
set = {{ "X-Env" = "prod" }}
add = {{ "X-Seen" = "{{client_ip}} {{host}}" }}
remove = ["Cache-Control"]

[[route]]
path = "/api/"
pool = "a"
match = {{ methods = ["POST"], query = {{ debug = "1" }} }}

[[route]]
path = "/api/"
pool = "a"
match = {{ src = ["192.0.2.0/24"] }}

[[route]]
pool = "a"

[pool.a]
servers = ["{a.address}"]

[pool.b]
servers = ["{b.address}"]
host_header = "origin.internal"
"""
        base = f"http://{LOOPBACK}:{port}"
        with Proxy(tmp_path, config, ports=[port]):
            # Header condition (exact and regex): the versioned pool, with its rewrites.
            for version in ("2", "v3"):
                r = curl_http(f"{base}/api/users?x=1", "-H", f"X-Api-Version: {version}",
                              "-H", "Cache-Control: no-cache")  # fmt: skip
                assert r.status == 200
                assert r.body == b"b GET /v2/users?x=1\n"
                assert r.header("x-route") == "api-v2"
                assert not r.has("x-powered-by")
                # The origin's own name in Location is hidden (it is the pool's host_header).
                assert r.header("location") == f"http://{LOOPBACK}:{port}/v2/users?x=1"
            seen = b.requests()[-1]
            assert seen.header("host") == "origin.internal"
            assert seen.header("x-forwarded-host") == f"{LOOPBACK}:{port}"
            assert seen.header("x-env") == "prod"
            assert seen.header("x-seen") == f"{LOOPBACK} {LOOPBACK}:{port}"
            assert not seen.has("cache-control")
            # Another version: the conditions fail, the plain route takes it, untouched.
            r = curl_http(f"{base}/api/users", "-H", "X-Api-Version: 1")
            assert r.body == b"a GET /api/users\n"
            assert r.has("x-powered-by") is False  # the built-in hiding applies everywhere
            assert a.requests()[-1].header("host") == f"{LOOPBACK}:{port}"
            # Method and query both needed.
            r = curl_http(f"{base}/api/x?debug=1", "-X", "POST")
            assert r.body == b"a POST /api/x?debug=1\n"
            r = curl_http(f"{base}/api/x?debug=0", "-X", "POST")
            assert r.body == b"a POST /api/x?debug=0\n"  # the catch-all route
            # src does not hold for loopback clients.
            r = curl_http(f"{base}/api/x")
            assert r.body == b"a GET /api/x\n"


def test_hsts_and_error_pages(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, "site", ["localhost"])
    (tmp_path / "conf" / "errors").mkdir(parents=True)
    (tmp_path / "conf" / "errors" / "50x.html").write_text("<h1>We will be back</h1>\n")
    (tmp_path / "conf" / "errors" / "404.html").write_text("<h1>Nothing here</h1>\n")
    (tmp_path / "conf" / "errors" / "route-502.json").write_text('{"error": "api down"}\n')
    tls_port, plain_port = free_port(), free_port()
    dead = closed_port()
    with Origin("a", named("a")) as a:
        config = f"""
[[listener]]
name = "tls"
bind = ["{LOOPBACK}:{tls_port}"]
tls = {{ certs = [{{ cert = {toml_path(cert)}, key = {toml_path(key)} }}] }}
hsts = "max-age=63072000; includeSubDomains"
error_pages = {{ 502 = "errors/50x.html", 503 = "errors/50x.html", 404 = "errors/404.html" }}

[[listener]]
name = "plain"
bind = ["{LOOPBACK}:{plain_port}"]

[[route]]
path = "/down/"
pool = "dead"

[[route]]
path = "/api/"
pool = "dead"
error_pages = {{ 502 = "errors/route-502.json", 503 = "errors/route-502.json" }}

[[route]]
path = "/ok/"
pool = "a"

[pool.a]
servers = ["{a.address}"]

[pool.dead]
servers = ["{LOOPBACK}:{dead}"]
"""
        with Proxy(tmp_path, config, ports=[tls_port, plain_port]):
            tls = f"https://localhost:{tls_port}"
            common = ("-k", "--resolve", f"localhost:{tls_port}:{LOOPBACK}")
            r = curl_http(f"{tls}/ok/x", *common)
            assert r.status == 200
            assert r.header("strict-transport-security") == "max-age=63072000; includeSubDomains"
            r = curl_http(f"{tls}/down/x", *common)
            assert r.status in (502, 503)
            assert r.body == b"<h1>We will be back</h1>\n"
            assert r.header("content-type") == "text/html; charset=utf-8"
            assert r.header("cache-control") == "no-store"
            assert r.header("strict-transport-security") is not None
            r = curl_http(f"{tls}/api/x", *common)
            assert r.status in (502, 503) and r.body == b'{"error": "api down"}\n'
            assert r.header("content-type") == "application/json"
            r = curl_http(f"{tls}/nothing", *common)
            assert (r.status, r.body) == (404, b"<h1>Nothing here</h1>\n")
            r = curl_http(f"{tls}/down/x", *common, "-I")
            assert r.status in (502, 503) and r.body == b""
            # Plain HTTP: no HSTS (RFC 6797 §7.2), the built-in pages.
            r = curl_http(f"http://{LOOPBACK}:{plain_port}/ok/x")
            assert r.status == 200 and not r.has("strict-transport-security")
            r = curl_http(f"http://{LOOPBACK}:{plain_port}/down/x")
            assert r.body in (b"502 Bad Gateway\n", b"503 Service Unavailable\n")
            r = curl_http(f"http://{LOOPBACK}:{plain_port}/api/x")
            assert r.body == b'{"error": "api down"}\n'  # the route's page on every listener
            # HTTP/2 too.
            r = curl_http(f"{tls}/down/x", *common, "--http2")
            assert r.body == b"<h1>We will be back</h1>\n"
