"""Static files end to end (docs/http-rules.md): content types, ETag and conditional requests,
ranges, sendfile over plain HTTP and pieces over TLS and HTTP/2, strip_prefix as nginx's
alias, and nothing outside root: dot segments in their encoded forms, symlinks out, dotfiles,
directory listings."""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import pytest
from harness import LOOPBACK, Proxy, curl, curl_http, free_port, make_cert, toml_path

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("real_peers")]


def test_static_site(tmp_path: Path) -> None:
    www = tmp_path / "conf" / "www"
    (www / "docs").mkdir(parents=True)
    (www / "empty").mkdir()
    (www / "index.html").write_text("<h1>home</h1>\n")
    (www / "docs" / "index.html").write_text("<h1>docs</h1>\n")
    (www / "app.js").write_text("console.log('hi');\n" * 200)
    (www / ".env").write_text("SECRET=1\n")
    big = os.urandom(3 * 1024 * 1024 + 17)
    (www / "big.bin").write_bytes(big)
    outside = tmp_path / "outside.txt"
    outside.write_text("not for you\n")
    (www / "escape.txt").symlink_to(outside)
    cert, key = make_cert(tmp_path, "site", ["localhost"])
    port, tls_port = free_port(), free_port()
    config = f"""
[[listener]]
name = "web"
bind = ["{LOOPBACK}:{port}"]

[[listener]]
name = "tls"
bind = ["{LOOPBACK}:{tls_port}"]
tls = {{ certs = [{{ cert = {toml_path(cert)}, key = {toml_path(key)} }}] }}

[[route]]
path = "/files/"
static = {{ root = "www" }}
strip_prefix = "/files"
compress = {{ encodings = ["gzip"] }}
"""
    base = f"http://{LOOPBACK}:{port}/files"
    with Proxy(tmp_path, config, ports=[port, tls_port]) as proxy:
        r = curl_http(f"{base}/")
        assert (r.status, r.body) == (200, b"<h1>home</h1>\n")
        assert r.header("content-type") == "text/html; charset=utf-8"
        etag = r.header("etag")
        assert etag and r.header("last-modified")
        r = curl_http(f"{base}/", "-H", f"If-None-Match: {etag}")
        assert r.status == 304 and r.body == b""
        r = curl_http(f"{base}/docs?x=1")
        assert (r.status, r.header("location")) == (301, "/files/docs/?x=1")
        assert curl_http(f"{base}/docs/").body == b"<h1>docs</h1>\n"
        r = curl_http(f"{base}/big.bin", "-r", "100-199")
        assert r.status == 206 and r.body == big[100:200]
        assert r.header("content-range") == f"bytes 100-199/{len(big)}"
        r = curl_http(f"{base}/big.bin", "-r", f"{len(big) + 5}-")
        assert r.status == 416
        # The whole file: sendfile on plain HTTP, pieces over TLS and HTTP/2.
        res = curl("-o", "-", f"{base}/big.bin")
        assert hashlib.sha256(res.stdout).digest() == hashlib.sha256(big).digest()
        for extra in ((), ("--http2",)):
            res = curl("-k", "--resolve", f"localhost:{tls_port}:{LOOPBACK}", *extra, "-o", "-",
                       f"https://localhost:{tls_port}/files/big.bin")  # fmt: skip
            assert res.returncode == 0
            assert hashlib.sha256(res.stdout).digest() == hashlib.sha256(big).digest()
        # Compressed on request (gzip), as sent otherwise.
        r = curl_http(f"{base}/app.js", "-H", "Accept-Encoding: gzip")
        assert r.header("content-encoding") == "gzip"
        assert gzip.decompress(r.body) == (www / "app.js").read_bytes()
        assert r.header("content-type") == "text/javascript; charset=utf-8"
        # Nothing outside root, no dotfiles, no listings.
        for path, allowed in [
            ("/escape.txt", {404}),
            ("/.env", {404}),
            ("/empty/", {404}),
            ("/%2e%2e/outside.txt", {400, 403, 404}),
            ("/..%2f..%2foutside.txt", {400, 403, 404}),
            ("/%252e%252e/outside.txt", {404}),
            ("/docs/..%5c..%5coutside.txt", {400, 403, 404}),
        ]:
            r = curl_http(f"{base}{path}", "--path-as-is")
            assert r.status in allowed, (path, r.status)
            assert b"not for you" not in r.body and b"SECRET" not in r.body
        line = proxy.wait_access(lambda s: '"GET /files/big.bin"' in s and " 200 " in s)
        assert "pool=static" in line
