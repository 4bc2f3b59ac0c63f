"""HTTP/1.1 through the proxy, end to end: keep-alive, bodies, 1xx, hop-by-hop, timeouts,
routing, pools and forwarded headers.

One proxy serves the whole module (plain listeners, so large bodies are fast); every origin is
a real HTTP/1.1 server on loopback that records what reached it; clients are curl and raw
sockets. Pools that are counted (round robin, keep-alive reuse) have origins of their own.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from harness import (
    LOOPBACK,
    Blackhole,
    Handler,
    Origin,
    Proxy,
    Reply,
    Response,
    Seen,
    closed_port,
    curl,
    curl_http,
    free_port,
    generated,
    generated_sha256,
    raw_exchange,
    read_response,
    split_response,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("real_peers")]

# Size of the streamed transfers: large enough that buffering a body would show in RSS.
BIG = 200 * 1024 * 1024
# How much the proxy's resident memory may grow while streaming BIG bytes.
RSS_GROWTH_LIMIT_KIB = 30 * 1024
# How long /slow makes the origin wait before answering.
SLOW = 3.0
# /hold waits for this (tests set it when done): a request held for exactly as long as needed.
HOLD = threading.Event()


def behaviour(name: str) -> Handler:
    """The reply of every test origin, chosen by path, so any origin can misbehave on request."""

    def handle(req: Seen) -> Reply:
        parts = urlsplit(req.target)
        path, query = parts.path, parse_qs(parts.query)
        body = f"{name} {req.method} {req.target}\n".encode()
        base = [("x-origin", name), ("content-type", "text/plain")]
        if path.startswith("/hangup-reused") and req.nth > 1:
            return Reply(raw=b"")  # as if its keep-alive timer fired just as the request came
        if path.startswith("/slow"):
            return Reply(headers=base, body=body, delay=SLOW)
        if path.startswith("/hold"):
            return Reply(headers=base, body=body, gate=HOLD)
        if path == "/stream":
            size = int(query["size"][0])
            chunked = query.get("framing", ["length"])[0] == "chunked"
            return Reply(headers=base, body=generated(size), length=None if chunked else size)
        if path == "/early-hints":
            hints = [("link", "</style.css>; rel=preload; as=style")]
            return Reply(headers=base, body=body, informational=[(103, hints)])
        if path == "/reveal":
            return Reply(
                headers=[
                    *base,
                    ("server", "Apache/2.4.1 (Unix)"),
                    ("x-powered-by", "PHP/8.1"),
                    ("location", f"http://{LOOPBACK}:{req.peer[1]}/moved"),
                    ("keep-alive", "timeout=5"),
                    ("connection", "x-bar"),
                    ("x-bar", "secret"),
                ],
                body=body,
            )
        if path == "/stall":
            return Reply(
                headers=base,
                body=generated(1 << 20, block=4096),
                length=1 << 20,
                stall_after_head=8.0,
            )
        if req.method == "HEAD":
            return Reply(headers=base, length=len(body))
        return Reply(headers=base, body=body)

    return handle


def origin(name: str) -> Origin:
    return Origin(name, behaviour(name))


@dataclass
class Site:
    proxy: Proxy
    http: int  # listener "http": trusts nobody
    trusting: int  # listener "trusting": trusts 127.0.0.2, adds Forwarded
    other: int  # listener "other"
    origins: dict[str, Origin]

    def url(self, host: str, path: str = "/", port: int | None = None) -> list[str]:
        port = port or self.http
        return ["--resolve", f"{host}:{port}:{LOOPBACK}", f"http://{host}:{port}{path}"]

    def get(self, host: str, path: str = "/", *args: str, port: int | None = None) -> Response:
        *resolve, url = self.url(host, path, port)
        return curl_http(url, *resolve, *args)

    def o(self, name: str) -> Origin:
        return self.origins[name]


ORIGINS = (
    "web", "api", "wild", "ka", "rr1", "rr2", "lc1", "lc2", "src1", "src2", "uri1", "uri2",
    "rnd1", "rnd2", "primary", "backup", "retry", "bh", "full", "slow", "idle", "big", "stale",
)  # fmt: skip


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    origins = {name: origin(name).start() for name in ORIGINS}
    blackhole = Blackhole()
    http, trusting, other = free_port(), free_port(), free_port()
    o = {name: origins[name].address for name in ORIGINS}
    config = f"""
[global]
workers = 1
header_timeout = "1s"
keepalive_timeout = "2s"

[[listener]]
name = "http"
bind = ["127.0.0.1:{http}"]

[[listener]]
name = "trusting"
bind = ["127.0.0.1:{trusting}"]
trusted_proxies = ["127.0.0.2/32"]
forwarded = true

[[listener]]
name = "other"
bind = ["127.0.0.1:{other}"]

[[route]]
host = "app.test"
pool = "web"

[[route]]
host = "app.test"
path = "/api"
pool = "api"

[[route]]
host = "*.app.test"
pool = "wild"

[[route]]
host = "respond.test"
respond = {{ status = 203, body = "fixed answer\\n" }}

[[route]]
host = "redirect.test"
redirect = "https://example.org/new"
redirect_status = 301

[[route]]
host = "only-other.test"
pool = "web"
listeners = ["other"]

[[route]]
host = "ka.test"
pool = "ka"

[[route]]
host = "rr.test"
pool = "rr"

[[route]]
host = "lc.test"
pool = "lc"

[[route]]
host = "src.test"
pool = "src"

[[route]]
host = "uri.test"
pool = "uri"

[[route]]
host = "rnd.test"
pool = "rnd"

[[route]]
host = "backup.test"
pool = "bk"

[[route]]
host = "retry.test"
pool = "retry"

[[route]]
host = "dead.test"
pool = "dead"

[[route]]
host = "bh.test"
pool = "bh"

[[route]]
host = "bhonly.test"
pool = "bhonly"

[[route]]
host = "full.test"
pool = "full"

[[route]]
host = "slow.test"
pool = "slow"

[[route]]
host = "idle.test"
pool = "idle"

[[route]]
host = "big.test"
pool = "big"

[[route]]
host = "stale.test"
pool = "stale"

[pool.web]
servers = ["{o["web"]}"]

[pool.api]
servers = ["{o["api"]}"]

[pool.wild]
servers = ["{o["wild"]}"]

[pool.ka]
servers = ["{o["ka"]}"]

[pool.rr]
balance = "roundrobin"
servers = [{{ address = "{o["rr1"]}", weight = 2 }}, {{ address = "{o["rr2"]}", weight = 1 }}]

[pool.lc]
balance = "leastconn"
servers = ["{o["lc1"]}", "{o["lc2"]}"]

[pool.src]
balance = "source"
servers = ["{o["src1"]}", "{o["src2"]}"]

[pool.uri]
balance = "uri"
servers = ["{o["uri1"]}", "{o["uri2"]}"]

[pool.rnd]
balance = "random"
servers = ["{o["rnd1"]}", "{o["rnd2"]}"]

[pool.bk]
passive = {{ failures = 2, cooldown = "1s" }}
servers = ["{o["primary"]}", {{ address = "{o["backup"]}", backup = true }}]

[pool.retry]
servers = ["127.0.0.1:{closed_port()}", "{o["retry"]}"]

[pool.dead]
servers = ["127.0.0.1:{closed_port()}", "127.0.0.1:{closed_port()}"]

[pool.bh]
timeouts = {{ connect = "1s" }}
servers = ["{blackhole.address}", "{o["bh"]}"]

[pool.bhonly]
timeouts = {{ connect = "1s" }}
servers = ["{blackhole.address}"]

[pool.full]
servers = [{{ address = "{o["full"]}", max_conns = 1 }}]

[pool.slow]
timeouts = {{ response = "1s" }}
servers = ["{o["slow"]}"]

[pool.idle]
timeouts = {{ idle = "1s" }}
servers = ["{o["idle"]}"]

[pool.big]
servers = ["{o["big"]}"]

[pool.stale]
servers = ["{o["stale"]}"]
"""
    proxy = Proxy(tmp_path_factory.mktemp("http"), config, ports=[http, trusting, other])
    try:
        with proxy:
            yield Site(proxy, http, trusting, other, origins)
            assert proxy.alive, "the proxy died:\n" + proxy.stderr()[-3000:]
    finally:
        for orig in origins.values():
            orig.stop()
        blackhole.close()


def served_by(
    site: Site, names: tuple[str, ...], host: str, paths: list[str], *args: str
) -> Counter[str]:
    """Send one request per path; count which origin answered each."""
    counts: Counter[str] = Counter()
    for path in paths:
        r = site.get(host, path, *args)
        assert r.status == 200, r
        who = r.header("x-origin")
        assert who in names
        counts[who] += 1
    return counts


# --- keep-alive ------------------------------------------------------------------------------


def test_client_keep_alive_reuses_one_connection(site: Site) -> None:
    port = site.http
    res = curl(
        "-v", "--resolve", f"app.test:{port}:{LOOPBACK}",
        f"http://app.test:{port}/one", f"http://app.test:{port}/two", f"http://app.test:{port}/3",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"web GET /one\nweb GET /two\nweb GET /3\n"
    err = res.stderr.decode()
    assert err.count("Re-using existing connection") == 2, err


def test_origin_keep_alive_reuses_one_connection(site: Site) -> None:
    ka = site.o("ka")
    ka.reset()
    for i in range(6):  # six client connections, one after the other
        assert site.get("ka.test", f"/r{i}").status == 200
    seen = ka.requests()
    assert [s.target for s in seen] == [f"/r{i}" for i in range(6)]
    assert {s.conn for s in seen} == {seen[0].conn}, "the origin connection was not reused"
    assert ka.connections == 1


def test_pooled_connection_closed_by_the_origin_is_retried_for_get(site: Site) -> None:
    stale = site.o("stale")
    stale.reset()
    assert site.get("stale.test", "/hangup-reused/1").status == 200
    r = site.get("stale.test", "/hangup-reused/2")
    assert r.status == 200 and r.body == b"stale GET /hangup-reused/2\n"
    seen = [(s.target, s.nth) for s in stale.requests()]
    assert seen == [("/hangup-reused/1", 1), ("/hangup-reused/2", 2), ("/hangup-reused/2", 1)]


@pytest.mark.parametrize(("method", "body"), [("POST", "buy=1"), ("PATCH", "x"), ("POST", "")])
def test_non_idempotent_request_is_not_retried(site: Site, method: str, body: str) -> None:
    """RFC 9110 §9.2.2: "A proxy MUST NOT automatically retry non-idempotent requests." The
    origin may have acted on the request before it hung up."""
    stale = site.o("stale")
    stale.reset()
    assert site.get("stale.test", "/warm").status == 200
    r = site.get("stale.test", "/hangup-reused/order", "-X", method, "--data", body)
    assert r.status == 502
    seen = [(s.method, s.target) for s in stale.requests()]
    assert seen == [("GET", "/warm"), (method, "/hangup-reused/order")], "request sent twice"


def test_idle_client_connection_is_closed(site: Site) -> None:
    request = b"GET /idle HTTP/1.1\r\nHost: app.test\r\n\r\n"
    data, closed = raw_exchange(site.http, request, timeout=15.0)
    assert closed, "an idle keep-alive connection was kept past keepalive_timeout"
    status, _, body, rest = split_response(data)
    assert status == 200 and body == b"web GET /idle\n" and rest == b""


# --- bodies ------------------------------------------------------------------------------------


def test_content_length_body_both_ways(site: Site, tmp_path: Path) -> None:
    payload = bytes(range(256)) * 4000
    f = tmp_path / "body"
    f.write_bytes(payload)
    web = site.o("web")
    web.reset()
    r = site.get("app.test", "/upload", "--data-binary", f"@{f}")
    assert r.status == 200
    (seen,) = web.requests()
    assert seen.method == "POST"
    assert seen.header("content-length") == str(len(payload))
    assert not seen.has("transfer-encoding")
    assert seen.body_sha256 == hashlib.sha256(payload).hexdigest()
    size = 3_000_000
    r = site.get("big.test", f"/stream?size={size}")
    assert r.header("content-length") == str(size)
    assert r.header("transfer-encoding") is None
    assert hashlib.sha256(r.body).hexdigest() == generated_sha256(size)


def test_chunked_body_both_ways(site: Site, tmp_path: Path) -> None:
    payload = b"chunk of bytes " * 50_000
    f = tmp_path / "body"
    f.write_bytes(payload)
    web = site.o("web")
    web.reset()
    r = site.get(
        "app.test", "/upload", "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{f}"
    )
    assert r.status == 200
    (seen,) = web.requests()
    assert seen.header("transfer-encoding") == "chunked"
    assert not seen.has("content-length")
    assert seen.body_len == len(payload)
    assert seen.body_sha256 == hashlib.sha256(payload).hexdigest()
    size = 3_000_001
    r = site.get("big.test", f"/stream?size={size}&framing=chunked")
    assert r.header("transfer-encoding") == "chunked"
    assert r.header("content-length") is None
    assert hashlib.sha256(r.body).hexdigest() == generated_sha256(size)


class RssSampler:
    """Highest VmRSS of the proxy while a transfer runs, sampled in a thread."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.baseline = proxy.rss_kib()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.proxy.rss_kib())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        self.peak = max(self.peak, self.proxy.rss_kib())

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def test_large_streamed_upload_from_a_pipe(site: Site, tmp_path: Path) -> None:
    """curl -T - sends 200 MB chunked from a pipe, with Expect: 100-continue; the origin gets
    every byte and the proxy's memory stays flat."""
    big = site.o("big")
    big.reset()
    site.get("big.test", "/warm-up")  # the first request allocates what every request needs
    big.reset()
    err, out = tmp_path / "curl.err", tmp_path / "curl.out"
    *resolve, url = site.url("big.test", "/upload")
    with RssSampler(site.proxy) as rss, open(err, "wb") as err_file, open(out, "wb") as out_file:
        proc = subprocess.Popen(
            ["curl", "-sS", "-v", "--max-time", "120", "-T", "-", *resolve, url],
            stdin=subprocess.PIPE, stdout=out_file, stderr=err_file,
        )  # fmt: skip
        assert proc.stdin is not None
        try:
            with contextlib.suppress(BrokenPipeError):  # curl's error is asserted below
                for chunk in generated(BIG):
                    proc.stdin.write(chunk)
                proc.stdin.close()
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    log = err.read_text(errors="replace")
    assert proc.returncode == 0, log[-2000:]
    assert out.read_bytes() == b"big PUT /upload\n"
    assert "Expect: 100-continue" in log
    assert "< HTTP/1.1 100" in log
    (seen,) = big.requests()
    assert seen.header("transfer-encoding") == "chunked"
    assert seen.body_len == BIG
    assert seen.body_sha256 == generated_sha256(BIG)
    print(f"RSS {rss.baseline} KiB, grew by {rss.growth} KiB")
    assert rss.growth < RSS_GROWTH_LIMIT_KIB, f"RSS grew by {rss.growth} KiB"


def test_large_streamed_upload_with_content_length(site: Site) -> None:
    """A Python client streams 200 MB with Content-Length through a raw socket."""
    big = site.o("big")
    site.get("big.test", "/warm-up")
    big.reset()
    head = (
        f"POST /upload HTTP/1.1\r\nHost: big.test\r\nContent-Length: {BIG}\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    with (
        RssSampler(site.proxy) as rss,
        socket.create_connection((LOOPBACK, site.http), timeout=60) as sock,
    ):
        sock.sendall(head)
        for chunk in generated(BIG):
            sock.sendall(chunk)
        data = read_response(sock)
    status, _, body, _ = split_response(data)
    assert status == 200 and body == b"big POST /upload\n"
    (seen,) = big.requests()
    assert seen.header("content-length") == str(BIG)
    assert seen.body_len == BIG and seen.body_sha256 == generated_sha256(BIG)
    print(f"RSS {rss.baseline} KiB, grew by {rss.growth} KiB")
    assert rss.growth < RSS_GROWTH_LIMIT_KIB, f"RSS grew by {rss.growth} KiB"


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_large_streamed_download(site: Site, tmp_path: Path, framing: str) -> None:
    site.get("big.test", "/warm-up")
    *resolve, url = site.url("big.test", f"/stream?size={BIG}&framing={framing}")
    digest = hashlib.sha256()
    received = 0
    err = tmp_path / "curl.err"
    with RssSampler(site.proxy) as rss, open(err, "wb") as err_file:
        proc = subprocess.Popen(
            ["curl", "-sS", "--max-time", "120", "-o", "-", *resolve, url],
            stdout=subprocess.PIPE, stderr=err_file, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert proc.stdout is not None
        try:
            while chunk := proc.stdout.read(1 << 20):
                digest.update(chunk)
                received += len(chunk)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    assert proc.returncode == 0, err.read_text()
    assert received == BIG
    assert digest.hexdigest() == generated_sha256(BIG)
    print(f"RSS {rss.baseline} KiB, grew by {rss.growth} KiB")
    assert rss.growth < RSS_GROWTH_LIMIT_KIB, f"RSS grew by {rss.growth} KiB"


def test_slow_reader_gets_backpressure_not_buffering(site: Site) -> None:
    """A client that stops reading must stop the origin, not fill the proxy's memory."""
    site.get("big.test", "/warm-up")
    request = f"GET /stream?size={BIG} HTTP/1.1\r\nHost: big.test\r\n\r\n".encode()
    digest = hashlib.sha256()
    received = 0
    with (
        RssSampler(site.proxy) as rss,
        socket.create_connection((LOOPBACK, site.http), timeout=60) as sock,
    ):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(request)
        time.sleep(3.0)  # read nothing while the origin could send everything
        stalled = rss.peak - rss.baseline
        # Then read it all, through a window of the usual size (through 64 KiB, 200 MiB
        # take a quarter of a minute).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            assert chunk, "connection closed before the response head"
            head += chunk
        head, _, body = head.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        digest.update(body)
        received = len(body)
        while received < BIG:
            chunk = sock.recv(1 << 20)
            assert chunk, f"connection closed after {received} bytes"
            digest.update(chunk)
            received += len(chunk)
    assert digest.hexdigest() == generated_sha256(BIG)
    print(f"RSS grew by {stalled} KiB while the client read nothing, {rss.growth} KiB in all")
    assert stalled < RSS_GROWTH_LIMIT_KIB
    assert rss.growth < RSS_GROWTH_LIMIT_KIB


def test_head(site: Site) -> None:
    web = site.o("web")
    web.reset()
    res = curl("-I", *site.url("app.test", "/page"))
    assert res.returncode == 0, res.stderr
    head = res.stdout.decode()
    assert head.startswith("HTTP/1.1 200")
    # The origin announces the length its GET would have; the proxy passes it on.
    assert re.search(r"(?im)^content-length: 15\r$", head), head
    (seen,) = web.requests()
    assert seen.method == "HEAD" and seen.target == "/page"
    # The response to HEAD carries no body: a second request on the connection still works.
    request = (
        b"HEAD /a HTTP/1.1\r\nHost: app.test\r\n\r\n"
        b"GET /b HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"
    )
    data, _ = raw_exchange(site.http, request, timeout=10.0)
    status, headers, body, rest = split_response(data, head_only=True)
    assert status == 200 and ("content-length", "12") in headers and body == b""
    status, _, body, _ = split_response(rest)
    assert status == 200 and body == b"web GET /b\n"


def test_expect_100_continue(site: Site, tmp_path: Path) -> None:
    f = tmp_path / "body"
    f.write_bytes(b"x" * 5000)
    web = site.o("web")
    web.reset()
    r = site.get("app.test", "/expect", "--data-binary", f"@{f}", "-H", "Expect: 100-continue")
    assert r.heads == [100, 200], r.heads
    (seen,) = web.requests()
    assert seen.header("expect") == "100-continue"
    assert seen.body_len == 5000


def test_informational_responses_are_relayed(site: Site) -> None:
    r = site.get("app.test", "/early-hints")
    assert r.heads == [103, 200]
    assert r.body == b"web GET /early-hints\n"
    res = curl("-i", *site.url("app.test", "/early-hints"))
    assert b"link: </style.css>; rel=preload; as=style" in res.stdout.lower()


def test_hop_by_hop_headers_do_not_reach_the_origin(site: Site) -> None:
    web = site.o("web")
    web.reset()
    r = site.get(
        "app.test", "/hop",
        "-H", "Connection: x-foo, keep-alive", "-H", "X-Foo: private", "-H", "Keep-Alive: 300",
        "-H", "TE: trailers", "-H", "Trailer: x-checksum", "-H", "Upgrade: websocket",
        "-H", "Proxy-Authorization: Basic c2VjcmV0", "-H", "Proxy-Connection: keep-alive",
        "-H", "X-Kept: yes",
    )  # fmt: skip
    assert r.status == 200
    (seen,) = web.requests()
    names = {n for n, _ in seen.headers}
    for hop in (
        "x-foo",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
    ):
        assert hop not in names, f"{hop} reached the origin: {seen.headers}"
    assert "x-foo" not in (seen.header("connection") or "")
    assert seen.header("x-kept") == "yes"


def test_response_hop_by_hop_and_identity_headers_are_removed(site: Site) -> None:
    r = site.get("app.test", "/reveal")
    assert r.status == 200
    for name in ("server", "x-powered-by", "keep-alive", "x-bar"):
        assert not r.has(name), f"{name} reached the client: {r.headers}"
    assert r.header("location") == f"http://app.test:{site.http}/moved"


# --- timeouts ------------------------------------------------------------------------------------


def test_slow_request_head_gets_408(site: Site) -> None:
    pieces = [b"GET / HTTP/1.1\r\n", b"Host: app.test\r\n"]
    data, closed = raw_exchange(site.http, pieces, pause=0.3, timeout=15.0)
    assert closed
    status, headers, body, _ = split_response(data)
    assert status == 408
    assert ("connection", "close") in headers
    assert b"408" in body


def test_origin_response_timeout_gets_504(site: Site) -> None:
    r = site.get("slow.test", "/slow")
    assert r.status == 504
    assert r.header("x-origin") is None


def test_origin_silent_inside_body_ends_the_response(site: Site) -> None:
    res = curl("-o", "-", *site.url("idle.test", "/stall"), timeout=30)
    assert res.returncode != 0  # the body was cut short, and curl knows it
    assert 0 < len(res.stdout) < 1 << 20
    assert site.get("app.test", "/after").status == 200


def test_client_silent_inside_its_body_gets_408(site: Site) -> None:
    idle = site.o("idle")
    idle.reset()
    head = b"POST /upload HTTP/1.1\r\nHost: idle.test\r\nContent-Length: 100\r\n\r\n"
    data, closed = raw_exchange(site.http, head + b"only ten b", timeout=15.0)
    assert closed
    status, headers, _, _ = split_response(data)
    assert status == 408
    assert ("connection", "close") in headers
    assert idle.requests() == []  # the origin never got a complete request


def test_connect_timeout_moves_to_the_next_server(site: Site) -> None:
    counts = served_by(site, ("bh",), "bh.test", ["/a", "/b", "/c"])
    assert counts == {"bh": 3}


def test_connect_timeout_on_the_only_server_gets_502(site: Site) -> None:
    r = site.get("bhonly.test", "/")
    assert r.status == 502


# --- routing ------------------------------------------------------------------------------------


def test_host_is_case_insensitive_and_port_is_ignored(site: Site) -> None:
    web = site.o("web")
    web.reset()
    r = site.get("app.test", "/case", "-H", "Host: APP.Test:9999")
    assert r.header("x-origin") == "web"
    (seen,) = web.requests()
    assert seen.header("host") == "APP.Test:9999"  # forwarded unchanged


def test_longest_path_prefix_wins(site: Site) -> None:
    assert site.get("app.test", "/api").header("x-origin") == "api"
    assert site.get("app.test", "/api/v1/users?x=1").header("x-origin") == "api"
    assert site.get("app.test", "/").header("x-origin") == "web"
    assert site.get("app.test", "/other/api").header("x-origin") == "web"


def test_exact_host_beats_wildcard(site: Site) -> None:
    assert site.get("app.test", "/").header("x-origin") == "web"
    assert site.get("x.app.test", "/").header("x-origin") == "wild"
    assert site.get("x.app.test", "/api").header("x-origin") == "wild"
    assert site.get("a.b.app.test", "/").status == 404  # a wildcard matches one label


def test_no_route_gets_a_local_404_and_the_origin_gets_nothing(site: Site) -> None:
    before = {name: len(o.requests()) for name, o in site.origins.items()}
    r = site.get("nobody.test", "/")
    assert r.status == 404
    assert r.body == b"404 Not Found\n"
    data, _ = raw_exchange(
        site.http, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    assert split_response(data)[0] == 404
    after = {name: len(o.requests()) for name, o in site.origins.items()}
    assert after == before


def test_respond_route(site: Site) -> None:
    r = site.get("respond.test", "/anything")
    assert r.status == 203
    assert r.body == b"fixed answer\n"
    assert r.header("content-type") == "text/plain; charset=utf-8"


def test_redirect_route(site: Site) -> None:
    r = site.get("redirect.test", "/old?q=1")
    assert r.status == 301
    assert r.header("location") == "https://example.org/new"


def test_route_limited_to_listeners(site: Site) -> None:
    assert site.get("only-other.test", "/").status == 404
    assert site.get("only-other.test", "/", port=site.other).header("x-origin") == "web"
    assert site.get("app.test", "/", port=site.other).header("x-origin") == "web"


# --- pools and balancing ---------------------------------------------------------------------


def test_roundrobin_follows_weights(site: Site) -> None:
    counts = served_by(site, ("rr1", "rr2"), "rr.test", [f"/{i}" for i in range(30)])
    assert counts == {"rr1": 20, "rr2": 10}


def test_leastconn_avoids_the_busy_server(site: Site) -> None:
    lc1, lc2 = site.o("lc1"), site.o("lc2")
    lc1.reset()
    lc2.reset()
    held: list[Response] = []
    HOLD.clear()
    t = threading.Thread(target=lambda: held.append(site.get("lc.test", "/hold")))
    t.start()
    try:
        assert wait_until(lambda: len(lc1.requests()) + len(lc2.requests()) == 1, 10.0)
        busy = "lc1" if lc1.requests() else "lc2"
        idle = "lc2" if busy == "lc1" else "lc1"
        counts = served_by(site, ("lc1", "lc2"), "lc.test", [f"/{i}" for i in range(6)])
        assert counts == {idle: 6}
    finally:
        HOLD.set()
        t.join(timeout=30)
    assert held and held[0].status == 200


def test_source_sends_one_client_to_one_server(site: Site) -> None:
    counts = served_by(site, ("src1", "src2"), "src.test", [f"/{i}" for i in range(10)])
    assert len(counts) == 1 and sum(counts.values()) == 10
    again = served_by(site, ("src1", "src2"), "src.test", ["/x"], "--interface", "127.0.0.2")
    assert sum(again.values()) == 1
    spread: Counter[str] = Counter()
    for n in range(2, 22):
        client = f"127.0.0.{n}"
        first = served_by(
            site, ("src1", "src2"), "src.test", ["/a", "/b", "/c"], "--interface", client
        )
        assert len(first) == 1, f"client {client} went to two servers: {first}"
        spread.update(first)
    assert set(spread) == {"src1", "src2"}


def test_uri_sends_one_path_to_one_server(site: Site) -> None:
    for path in ("/same", "/other/page"):
        counts = served_by(site, ("uri1", "uri2"), "uri.test", [path] * 5 + [path + "?q=1"])
        assert len(counts) == 1, counts
    spread = served_by(site, ("uri1", "uri2"), "uri.test", [f"/p{i}" for i in range(20)])
    assert set(spread) == {"uri1", "uri2"}


def test_random_spreads(site: Site) -> None:
    counts = served_by(site, ("rnd1", "rnd2"), "rnd.test", [f"/{i}" for i in range(40)])
    assert counts["rnd1"] >= 5 and counts["rnd2"] >= 5, counts


def test_backup_only_when_primaries_are_down(site: Site) -> None:
    primary = site.o("primary")
    counts = served_by(site, ("primary", "backup"), "backup.test", [f"/{i}" for i in range(5)])
    assert counts == {"primary": 5}
    port = primary.port
    primary.stop()
    try:
        counts = served_by(site, ("primary", "backup"), "backup.test", [f"/{i}" for i in range(5)])
        assert counts == {"backup": 5}
    finally:
        primary.start(port)
    # Passive health rests a server whose connects failed (cooldown 1 s); then it is back.
    assert wait_until(
        lambda: site.get("backup.test", "/back").header("x-origin") == "primary", 15.0, 0.2
    )
    counts = served_by(site, ("primary", "backup"), "backup.test", [f"/{i}" for i in range(5)])
    assert counts == {"primary": 5}


def test_connect_failure_retries_the_next_server(site: Site) -> None:
    counts = served_by(site, ("retry",), "retry.test", [f"/{i}" for i in range(6)])
    assert counts == {"retry": 6}


def test_every_server_down_gets_a_local_502(site: Site) -> None:
    r = site.get("dead.test", "/")
    assert r.status == 502
    assert r.body == b"502 Bad Gateway\n"


def test_every_server_full_gets_a_local_503(site: Site) -> None:
    full = site.o("full")
    full.reset()
    held: list[Response] = []
    HOLD.clear()
    t = threading.Thread(target=lambda: held.append(site.get("full.test", "/hold")))
    t.start()
    try:
        assert wait_until(lambda: len(full.requests()) == 1, 10.0)
        r = site.get("full.test", "/second")
        assert r.status == 503
        assert r.body == b"503 Service Unavailable\n"
    finally:
        HOLD.set()
        t.join(timeout=30)
    assert held and held[0].status == 200
    assert [s.target for s in full.requests()] == ["/hold"]


# --- forwarded headers ------------------------------------------------------------------------


SPOOF = [
    "-H", "X-Forwarded-For: 6.6.6.6", "-H", "X-Real-IP: 6.6.6.6",
    "-H", "Forwarded: for=6.6.6.6;proto=https", "-H", "X-Forwarded-Proto: https",
    "-H", "X-Forwarded-Host: evil.test", "-H", "X-Forwarded-Port: 1",
]  # fmt: skip


def one_request(site: Site, port: int, *args: str) -> Seen:
    web = site.o("web")
    web.reset()
    assert site.get("app.test", "/fwd", *args, port=port).status == 200
    (seen,) = web.requests()
    return seen


def test_untrusted_forwarding_headers_are_replaced(site: Site) -> None:
    seen = one_request(site, site.http, *SPOOF)
    assert seen.all("x-forwarded-for") == ["127.0.0.1"]
    assert seen.all("x-real-ip") == ["127.0.0.1"]
    assert seen.all("x-forwarded-proto") == ["http"]
    assert seen.all("x-forwarded-host") == [f"app.test:{site.http}"]
    assert seen.all("x-forwarded-port") == [str(site.http)]
    assert not seen.has("forwarded")  # this listener does not add one
    assert seen.all("host") == [f"app.test:{site.http}"]


def test_untrusted_peer_on_a_trusting_listener_is_replaced(site: Site) -> None:
    seen = one_request(site, site.trusting, *SPOOF, "--interface", "127.0.0.3")
    assert seen.all("x-forwarded-for") == ["127.0.0.3"]
    assert seen.all("x-real-ip") == ["127.0.0.3"]
    assert seen.all("x-forwarded-proto") == ["http"]
    assert seen.all("forwarded") == [f'for=127.0.0.3;proto=http;host="app.test:{site.trusting}"']


def test_trusted_peer_forwarding_headers_are_appended_to(site: Site) -> None:
    seen = one_request(site, site.trusting, *SPOOF, "--interface", "127.0.0.2")
    assert seen.all("x-forwarded-for") == ["6.6.6.6, 127.0.0.2"]
    assert seen.all("x-real-ip") == ["6.6.6.6"]
    assert seen.all("x-forwarded-proto") == ["https"]
    assert seen.all("x-forwarded-host") == ["evil.test"]
    assert seen.all("forwarded") == [
        f'for=6.6.6.6;proto=https, for=127.0.0.2;proto=http;host="app.test:{site.trusting}"'
    ]
    assert seen.all("host") == [f"app.test:{site.trusting}"]


def test_forwarded_headers_without_spoofing(site: Site) -> None:
    seen = one_request(site, site.trusting, "--interface", "127.0.0.2")
    assert seen.all("x-forwarded-for") == ["127.0.0.2"]
    assert seen.all("x-forwarded-proto") == ["http"]
    assert seen.all("x-forwarded-host") == [f"app.test:{site.trusting}"]
    assert seen.all("x-forwarded-port") == [str(site.trusting)]
    assert seen.all("forwarded") == [f'for=127.0.0.2;proto=http;host="app.test:{site.trusting}"']


# --- access log --------------------------------------------------------------------------------


def test_access_log_has_one_line_per_request(site: Site) -> None:
    marker = f"/log-{time.monotonic_ns()}"
    res = curl("--interface", "127.0.0.4", *site.url("app.test", marker), "--data", "abc")
    assert res.returncode == 0
    line = site.proxy.wait_access(lambda s: marker in s)
    assert len([s for s in site.proxy.access_lines() if marker in s]) == 1
    stamp, rest = line.split(" ", 1)  # every line starts with its time (log_time = "utc")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp), stamp
    assert rest.startswith("127.0.0.4 ")
    assert "listener=http" in line and "sni=-" in line
    assert f"host=app.test:{site.http}" in line
    assert f'"POST {marker}" 200' in line
    m = re.search(r" in=(\d+) out=(\d+) ", line)
    assert m and int(m.group(1)) > 3 and int(m.group(2)) > len(b"web POST \n") + len(marker)
    assert f"backend=web/{site.o('web').address}" in line
    assert re.search(r" time=\d+\.\dms upstream=\d+\.\dms", line)
    res = curl(*site.url("nobody.test", marker))
    line = site.proxy.wait_access(lambda s: marker in s and "nobody.test" in s)
    assert '" 404 ' in line and "backend=-" in line
