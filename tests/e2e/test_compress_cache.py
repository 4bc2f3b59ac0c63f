"""Compression and the cache end to end (docs/http-rules.md): curl --compressed and Python's
own decoders read what the proxy encodes; server-sent events arrive through compression
within 100 ms each; 100 concurrent misses make one origin request; responses with Set-Cookie
or requested with a Cookie are never served to another client; a stale entry is revalidated
with the origin's validators."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import brotli
import pytest
import zstandard
from harness import (
    LOOPBACK,
    Origin,
    Proxy,
    Reply,
    Seen,
    curl,
    curl_http,
    free_port,
    run_cli,
    toml_path,
)

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("real_peers")]

DOC = json.dumps(
    [{"id": i, "name": f"item {i}", "tags": ["a", "b", "c"], "price": i * 1.5} for i in range(1500)]
).encode()


def _sse_events() -> Iterator[bytes]:
    for i in range(5):
        yield f"data: event {i} at {time.monotonic():.6f}\n\n".encode()
        time.sleep(0.3)


def handler(req: Seen) -> Reply:
    if req.target.startswith("/doc"):
        if req.header("if-none-match") == '"v1"':
            return Reply(status=304, headers=[("etag", '"v1"')])
        return Reply(headers=[("content-type", "application/json"), ("etag", '"v1"')], body=DOC)
    if req.target.startswith("/events"):
        return Reply(headers=[("content-type", "text/event-stream")], body=_sse_events())
    if req.target.startswith("/small"):
        return Reply(headers=[("content-type", "text/plain")], body=b"tiny\n")
    if req.target.startswith("/cached"):
        time.sleep(0.3)  # slow enough for 100 clients to miss together
        return Reply(
            headers=[("content-type", "text/plain"), ("cache-control", "max-age=60")],
            body=f"made for {req.target}\n".encode(),
        )
    if req.target.startswith("/cookie"):
        who = req.header("cookie") or "nobody"
        return Reply(
            headers=[("cache-control", "public, max-age=60"), ("set-cookie", f"s={who}")],
            body=f"private to {who}\n".encode(),
        )
    if req.target.startswith("/swr"):
        if req.header("if-none-match") == '"w1"':
            time.sleep(0.5)  # a slow origin: the stale answer must not wait for it
            return Reply(status=304, headers=[("etag", '"w1"'), ("cache-control", "max-age=60")])
        return Reply(
            headers=[("etag", '"w1"'), ("cache-control", "max-age=1, stale-while-revalidate=30")],
            body=b"swr body\n",
        )
    if req.target.startswith("/stale"):
        if req.header("if-none-match") == '"s1"':
            return Reply(status=304, headers=[("etag", '"s1"'), ("cache-control", "max-age=1")])
        return Reply(
            headers=[("etag", '"s1"'), ("cache-control", "max-age=1")], body=b"stale body\n"
        )
    return Reply(body=b"other\n")


def config(port: int, origin: Origin, admin: Path | None = None) -> str:
    section = f"[admin]\nsocket = {toml_path(admin)}\n" if admin is not None else ""
    return section + f"""
[[listener]]
name = "web"
bind = ["{LOOPBACK}:{port}"]
h2c = true

[cache]
size = "16m"
max_object = "1m"

[[route]]
path = "/events"
pool = "o"
compress = {{ types = ["text/event-stream"] }}

[[route]]
path = "/cached"
pool = "o"
cache = {{ ttl_max = "30s" }}

[[route]]
path = "/cookie"
pool = "o"
cache = {{ ttl_max = "30s" }}

[[route]]
path = "/stale"
pool = "o"
cache = {{ ttl_max = "30s" }}

[[route]]
path = "/swr"
pool = "o"
cache = {{ ttl_max = "30s" }}

[[route]]
pool = "o"
compress = {{ min_size = "1k" }}

[pool.o]
servers = ["{origin.address}"]
"""


def test_compression(tmp_path: Path) -> None:
    with Origin("o", handler) as origin:
        port = free_port()
        with Proxy(tmp_path, config(port, origin), ports=[port]) as proxy:
            url = f"http://{LOOPBACK}:{port}/doc"
            res = curl("--compressed", "-o", "-", url)
            assert res.returncode == 0 and res.stdout == DOC
            decoders = {
                "zstd": lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b),
                "br": brotli.decompress,
                "gzip": gzip.decompress,
            }
            for encoding, decode in decoders.items():
                r = curl_http(url, "-H", f"Accept-Encoding: {encoding}")
                assert r.header("content-encoding") == encoding
                assert r.header("vary") == "Accept-Encoding"
                assert r.header("etag") == f'"v1-{encoding}"'
                assert decode(r.body) == DOC
                assert len(r.body) < len(DOC) / 3
            # Preferences: q-values decide; identity when nothing offered is acceptable.
            r = curl_http(url, "-H", "Accept-Encoding: gzip;q=0.5, br;q=0.9, zstd;q=0")
            assert r.header("content-encoding") == "br"
            r = curl_http(url, "-H", "Accept-Encoding: identity")
            assert not r.has("content-encoding") and r.body == DOC
            assert r.header("vary") == "Accept-Encoding"
            # The suffixed ETag is mapped back for the origin; its 304 keeps the suffix.
            r = curl_http(url, "-H", "Accept-Encoding: zstd", "-H", 'If-None-Match: "v1-zstd"')
            assert r.status == 304 and r.header("etag") == '"v1-zstd"'
            assert origin.requests()[-1].header("if-none-match") == '"v1"'
            # Too small, HEAD, Range: as sent.
            r = curl_http(f"http://{LOOPBACK}:{port}/small", "-H", "Accept-Encoding: gzip")
            assert not r.has("content-encoding") and r.body == b"tiny\n"
            r = curl_http(url, "-H", "Accept-Encoding: gzip", "-r", "0-9")
            assert not r.has("content-encoding")
            line = proxy.wait_access(lambda s: "encoding=skip:range" in s)
            assert "encoding=skip:range" in line
            # HTTP/2 (h2c): the same negotiation and body.
            r = curl_http(url, "--http2-prior-knowledge", "-H", "Accept-Encoding: br")
            assert r.header("content-encoding") == "br" and brotli.decompress(r.body) == DOC


def test_server_sent_events_flushed(tmp_path: Path) -> None:
    with Origin("o", handler) as origin:
        port = free_port()
        with Proxy(tmp_path, config(port, origin), ports=[port]):
            sock = socket.create_connection((LOOPBACK, port), timeout=10)
            sock.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n")
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += sock.recv(65536)
            head, _, rest = buf.partition(b"\r\n\r\n")
            assert b"content-encoding: gzip" in head.lower()
            assert b"transfer-encoding: chunked" in head.lower()
            decoder = zlib.decompressobj(wbits=31)
            text = b""
            delays = []
            pending = rest
            while len(delays) < 5:
                # De-chunk what arrived, decode it, and time each complete event.
                while b"\r\n" in pending:
                    size_line, _, after = pending.partition(b"\r\n")
                    size = int(size_line, 16)
                    if len(after) < size + 2:
                        break
                    text += decoder.decompress(after[:size])
                    pending = after[size + 2 :]
                    if size == 0:
                        break
                while b"\n\n" in text:
                    event, _, text = text.partition(b"\n\n")
                    sent = float(event.rsplit(b" at ", 1)[1])
                    delays.append(time.monotonic() - sent)
                if len(delays) >= 5:
                    break
                chunk = sock.recv(65536)
                if not chunk:
                    break
                pending += chunk
            sock.close()
            assert len(delays) == 5
            assert max(delays) < 0.1, delays


async def _get_many(port: int, path: str, n: int, headers: str = "") -> list[bytes]:
    async def one() -> bytes:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n".encode()
        )
        data = await asyncio.wait_for(reader.read(), 20)
        writer.close()
        return data

    return await asyncio.gather(*(one() for _ in range(n)))


def test_cache(tmp_path: Path) -> None:
    with Origin("o", handler) as origin:
        port = free_port()
        admin = tmp_path / "admin.sock"
        with Proxy(tmp_path, config(port, origin, admin), ports=[port]) as proxy:
            # 100 concurrent misses: one origin request, every client the same answer.
            answers = asyncio.run(_get_many(port, "/cached/a", 100))
            assert all(a.endswith(b"made for /cached/a\n") for a in answers)
            assert all(a.startswith(b"HTTP/1.1 200") for a in answers)
            assert [r.target for r in origin.requests()].count("/cached/a") == 1
            r = curl_http(f"http://{LOOPBACK}:{port}/cached/a", "-H", "Host: x")
            assert r.header("age") is not None and r.body == b"made for /cached/a\n"
            proxy.wait_access(lambda s: "cache=hit" in s)
            proxy.wait_access(lambda s: "cache=coalesced" in s)
            # Set-Cookie: never stored; a Cookie request: never served from the cache.
            alice = curl_http(f"http://{LOOPBACK}:{port}/cookie", "-H", "Cookie: alice")
            assert alice.body == b"private to alice\n"
            anon = curl_http(f"http://{LOOPBACK}:{port}/cookie")
            assert anon.body == b"private to nobody\n"
            bob = curl_http(f"http://{LOOPBACK}:{port}/cookie", "-H", "Cookie: bob")
            assert bob.body == b"private to bob\n"
            assert [r.target for r in origin.requests()].count("/cookie") == 3
            proxy.wait_access(lambda s: "cache=bypass" in s)
            # Stale: the origin is asked with the stored ETag and its 304 refreshes it.
            assert curl_http(f"http://{LOOPBACK}:{port}/stale").body == b"stale body\n"
            time.sleep(1.3)
            r = curl_http(f"http://{LOOPBACK}:{port}/stale")
            assert (r.status, r.body) == (200, b"stale body\n")
            assert origin.requests()[-1].header("if-none-match") == '"s1"'
            proxy.wait_access(lambda s: "cache=revalidated" in s)
            # The client's own condition is answered from the cache.
            r = curl_http(f"http://{LOOPBACK}:{port}/stale", "-H", 'If-None-Match: "s1"')
            assert r.status == 304
            # ctl: what is stored, then purged by host and prefix.
            shown = run_cli("ctl", "-c", str(proxy.conf), "show", "cache")
            assert shown.returncode == 0 and "entries: " in shown.stdout, shown
            purged = run_cli("ctl", "-c", str(proxy.conf), "cache", "purge", "x/cached/")
            assert purged.returncode == 0 and "purged 1 stored response" in purged.stdout, purged
            curl_http(f"http://{LOOPBACK}:{port}/cached/a", "-H", "Host: x")
            assert [r.target for r in origin.requests()].count("/cached/a") == 2
            res = run_cli("ctl", "-c", str(proxy.conf), "show", "metrics")
            assert res.returncode == 0, res.stderr
            metrics = res.stdout
            assert 'revproxy_cache_total{listener="web",result="coalesced"} 99' in metrics
            # stale-while-revalidate: the stale answer at once, one refresh in the background.
            assert curl_http(f"http://{LOOPBACK}:{port}/swr").body == b"swr body\n"
            time.sleep(1.3)
            t0 = time.monotonic()
            r = curl_http(f"http://{LOOPBACK}:{port}/swr")
            assert r.body == b"swr body\n" and time.monotonic() - t0 < 0.4
            proxy.wait_access(lambda s: "/swr" in s and "cache=refresh" in s)
            assert origin.requests()[-1].header("if-none-match") == '"w1"'
            r = curl_http(f"http://{LOOPBACK}:{port}/swr")
            assert r.body == b"swr body\n"
            line = proxy.wait_access(lambda s: "/swr" in s and "cache=hit" in s)
            assert "cache=hit" in line
            assert [x.target for x in origin.requests()].count("/swr") == 2
