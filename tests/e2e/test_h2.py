"""HTTP/2 through the proxy, end to end: curl, nghttp and h2load as clients; HTTP/1.1 and
HTTP/2 origins (h2c, and TLS with certificate verification); RFC 9113 rules checked with a
client that misbehaves on purpose; flow control with large bodies; GOAWAY on reload and stop.

One proxy serves most of the module (a TLS listener offering h2 and an h2c listener); the
tests that reload, stop or time out connections start a proxy of their own.
"""

from __future__ import annotations

import hashlib
import re
import signal
import socket as socketlib
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import h2.events
import pytest
from h2_peers import H2Origin, H2Reply, RawH2, get
from harness import (
    Origin,
    Proxy,
    Reply,
    Seen,
    curl,
    curl_http,
    free_port,
    generated,
    generated_sha256,
    make_cert,
    toml_path,
    wait_until,
)
from hyperframe.frame import HeadersFrame, RstStreamFrame

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("real_peers")]

# HTTP/2 error codes (RFC 9113 §7).
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
REFUSED_STREAM = 0x7
ENHANCE_YOUR_CALM = 0xB
# SETTINGS_MAX_CONCURRENT_STREAMS the proxy advertises in this module.
MAX_STREAMS = 64
# Size of the streamed transfers: large enough that buffering a body would show in RSS.
BIG = 64 * 1024 * 1024
RSS_GROWTH_LIMIT_KIB = 30 * 1024
# /hold waits for this (tests set it when done).
HOLD = threading.Event()


def behaviour(name: str) -> Callable[[Seen], Reply]:
    def handle(req: Seen) -> Reply:
        parts = urlsplit(req.target)
        query = parse_qs(parts.query)
        base = [("x-origin", name), ("content-type", "text/plain"), ("x-powered-by", "secret")]
        if parts.path.startswith("/hold"):
            return Reply(headers=base, body=b"held\n", gate=HOLD)
        if parts.path == "/stream":
            size = int(query["size"][0])
            return Reply(headers=base, body=generated(size), length=size)
        if parts.path == "/sha":
            text = f"{req.body_len} {req.body_sha256}\n".encode()
            return Reply(headers=base, body=text)
        body = f"{name} {req.method} {req.target} {req.http_version}\n".encode()
        return Reply(headers=base, body=body)

    return handle


@dataclass
class Site:
    tls_port: int
    h2c_port: int
    proxy: Proxy
    cert: Path
    origin: Origin
    h2c: H2Origin
    h2tls: H2Origin
    limited: H2Origin

    def url(self, host: str, path: str = "/") -> str:
        return f"https://{host}:{self.tls_port}{path}"

    def resolve(self, host: str) -> list[str]:
        return ["--cacert", str(self.cert), "--resolve", f"{host}:{self.tls_port}:127.0.0.1"]

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    d = tmp_path_factory.mktemp("h2")
    names = ["site.test", "h2c.test", "h2tls.test", "h1tls.test", "badca.test", "limited.test"]
    cert, key = make_cert(d, "site", names)
    other_cert, other_key = make_cert(d, "other", ["other.test"])
    origin_cert, origin_key = make_cert(d, "origin", ["origin.test"])
    HOLD.clear()
    tls_port, h2c_port = free_port(), free_port()
    with (
        Origin("o1", behaviour("o1")) as origin,
        H2Origin("h2c") as h2c,
        H2Origin("h2tls", tls=(origin_cert, origin_key)) as h2tls,
        H2Origin("limited", max_streams=2) as limited,
    ):
        h2tls_gate = origin_cert  # the origin's own certificate is the trust anchor
        conf = f"""
[global]
access_log = "stdout"
[global.h2]
max_concurrent_streams = {MAX_STREAMS}
initial_window_size = 262144

[[listener]]
name = "tls"
bind = "127.0.0.1:{tls_port}"
tls = {{ certs = [{{ cert = {toml_path(cert)}, key = {toml_path(key)} }},
                  {{ cert = {toml_path(other_cert)}, key = {toml_path(other_key)} }}] }}

[[listener]]
name = "plain"
bind = "127.0.0.1:{h2c_port}"
h2c = true

[[route]]
host = ["h2c.test"]
pool = "h2c"
[[route]]
host = ["h2tls.test"]
pool = "h2tls"
[[route]]
host = ["h1tls.test"]
pool = "h1tls"
[[route]]
host = ["badca.test"]
pool = "badca"
[[route]]
host = ["limited.test"]
pool = "limited"
[[route]]
pool = "web"

[pool.web]
servers = ["{origin.address}"]
[pool.h2c]
servers = ["{h2c.address}"]
protocol = "h2c"
[pool.h2tls]
servers = ["{h2tls.address}"]
protocol = "h2"
tls = {{ sni = "origin.test", ca = {toml_path(h2tls_gate)} }}
[pool.h1tls]
servers = ["{h2tls.address}"]
tls = {{ sni = "origin.test", ca = {toml_path(h2tls_gate)} }}
[pool.badca]
servers = ["{h2tls.address}"]
protocol = "h2"
tls = {{ sni = "origin.test", ca = {toml_path(other_cert)} }}
[pool.limited]
servers = ["{limited.address}"]
protocol = "h2c"
"""
        with Proxy(d, conf, ports=[tls_port, h2c_port]) as proxy:
            yield Site(tls_port, h2c_port, proxy, cert, origin, h2c, h2tls, limited)
        HOLD.set()


def h2curl(site: Site, host: str, path: str = "/", *args: str) -> tuple[int, str, bytes, str]:
    """curl --http2 over TLS: (status, protocol line, body, stderr)."""
    res = curl("-i", "--http2", *site.resolve(host), *args, site.url(host, path))
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    head, _, body = res.stdout.partition(b"\r\n\r\n")
    first = head.split(b"\r\n", 1)[0].decode()
    return int(first.split()[1]), first, body, res.stderr.decode(errors="replace")


# --- clients: curl, nghttp, h2load ----------------------------------------------------------


def test_curl_negotiates_h2_and_reaches_an_http11_origin(site: Site) -> None:
    status, line, body, _ = h2curl(site, "site.test", "/hello?x=1")
    assert line.startswith("HTTP/2 ")
    assert status == 200
    assert body == b"o1 GET /hello?x=1 1.1\n"
    seen = site.origin.requests()[-1]
    assert seen.header("host") == f"site.test:{site.tls_port}"
    assert seen.header("x-forwarded-proto") == "https"


def test_identity_headers_are_hidden_over_h2(site: Site) -> None:
    res = curl_http(site.url("site.test"), "--http2", *site.resolve("site.test"))
    assert not res.has("x-powered-by")
    assert res.header("x-origin") == "o1"


def test_http11_is_still_served_on_the_tls_listener(site: Site) -> None:
    res = curl_http(site.url("site.test", "/one"), "--http1.1", *site.resolve("site.test"))
    assert res.status == 200 and res.body == b"o1 GET /one 1.1\n"


def test_h2c_prior_knowledge_and_http11_share_the_plain_listener(site: Site) -> None:
    url = f"http://127.0.0.1:{site.h2c_port}/plain"
    res = curl("-i", "--http2-prior-knowledge", url)
    assert res.returncode == 0 and res.stdout.startswith(b"HTTP/2 200")
    res = curl("-i", "--http1.1", url)
    assert res.returncode == 0 and res.stdout.startswith(b"HTTP/1.1 200")


def test_nghttp_sees_our_settings_and_gets_every_stream(site: Site) -> None:
    urls = [f"https://127.0.0.1:{site.tls_port}/n{i}" for i in range(10)]
    res = subprocess.run(
        ["nghttp", "-nv", "-t", "20", *urls], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr + res.stdout[-2000:]
    assert f"SETTINGS_MAX_CONCURRENT_STREAMS(0x03):{MAX_STREAMS}" in res.stdout
    assert "SETTINGS_INITIAL_WINDOW_SIZE(0x04):262144" in res.stdout
    assert len(re.findall(r"recv HEADERS frame", res.stdout)) == 10
    assert "recv GOAWAY" not in res.stdout


def run_h2load(*args: str) -> str:
    res = subprocess.run(["h2load", *args], capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr + res.stdout[-2000:]
    m = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
        r"(\d+) failed, (\d+) errored, (\d+) timeout",
        res.stdout,
    )
    assert m, res.stdout
    total, _, done, ok, failed, errored, timeout = (int(x) for x in m.groups())
    assert (done, ok, failed, errored, timeout) == (total, total, 0, 0, 0), res.stdout
    return res.stdout


def test_h2load_many_streams_and_connections_without_errors(site: Site) -> None:
    out = run_h2load(
        "-n",
        "4000",
        "-c",
        "8",
        "-m",
        "16",
        f"--connect-to=127.0.0.1:{site.tls_port}",
        "https://site.test/load",
    )
    assert "status codes: 4000 2xx" in out


def test_h2load_over_h2c_to_an_h2_origin(site: Site) -> None:
    out = run_h2load(
        "-n",
        "1000",
        "-c",
        "4",
        "-m",
        "32",
        "-H",
        ":authority: h2c.test",
        f"http://127.0.0.1:{site.h2c_port}/load",
    )
    assert "status codes: 1000 2xx" in out


# --- streams are independent ----------------------------------------------------------------


def test_a_slow_stream_does_not_hold_up_the_others(site: Site) -> None:
    HOLD.clear()
    try:
        with RawH2(site.tls_port, tls=site.tls(), server_hostname="site.test") as c:
            slow = c.request(get("site.test", "/hold"))
            fast = [c.request(get("site.test", f"/fast{i}")) for i in range(5)]
            assert c.wait_for(lambda _: all(c.ended(s) for s in fast))
            assert not c.ended(slow)
            HOLD.set()
            status, _, body = c.response(slow)
            assert (status, body) == (200, b"held\n")
    finally:
        HOLD.set()


def test_large_download_streams_with_flow_control_and_bounded_memory(site: Site) -> None:
    before = site.proxy.rss_kib()
    res = curl(
        "--http2",
        *site.resolve("site.test"),
        "-o",
        "-",
        site.url("site.test", f"/stream?size={BIG}"),
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert hashlib.sha256(res.stdout).hexdigest() == generated_sha256(BIG)
    assert site.proxy.rss_kib() - before < RSS_GROWTH_LIMIT_KIB


def test_large_upload_streams_with_flow_control(site: Site, tmp_path: Path) -> None:
    data = tmp_path / "up.bin"
    with data.open("wb") as f:
        for chunk in generated(BIG // 2):
            f.write(chunk)
    for framing in ("length", "unknown"):
        args = ["--data-binary", f"@{data}"]
        if framing == "unknown":
            args = ["-H", "content-length:", "-T", str(data), "-X", "POST"]
        status, _, body, err = h2curl(site, "site.test", "/sha", *args)
        assert status == 200, err
        assert body == f"{BIG // 2} {generated_sha256(BIG // 2)}\n".encode()


def test_trailers_of_an_h2_origin_reach_an_h2_client(site: Site) -> None:
    site.h2c.handler = lambda req: H2Reply(body=b"body", trailers=[("x-sum", "42")])
    try:
        with RawH2(site.tls_port, tls=site.tls(), server_hostname="h2c.test") as c:
            sid = c.request([*get("h2c.test", "/t"), (b"te", b"trailers")])
            status, _, body = c.response(sid)
            assert (status, body) == (200, b"body")
            assert c.trailers(sid) == {b"x-sum": b"42"}
    finally:
        site.h2c.handler = site.h2c.default_reply


# --- RFC 9113 rules -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        [(b"connection", b"keep-alive")],
        [(b"transfer-encoding", b"chunked")],
        [(b"te", b"gzip")],
        [(b"host", b"elsewhere.test")],
        [(b":foo", b"bar")],
    ],
)
def test_malformed_request_resets_its_stream_and_the_connection_serves_on(
    site: Site, bad: list[tuple[bytes, bytes]]
) -> None:
    with RawH2(site.tls_port, tls=site.tls(), server_hostname="site.test", validate=False) as c:
        head = get("site.test", "/bad")
        sid = c.request([*head[:4], *bad] if bad[0][0][:1] != b":" else [*bad, *head])
        assert c.wait_for(lambda _: c.ended(sid))
        assert c.resets() == {sid: PROTOCOL_ERROR}
        good = c.request(get("site.test", "/good"))
        assert c.response(good)[0] == 200
        assert c.goaway() is None


def test_content_length_mismatch_resets_the_stream(site: Site) -> None:
    with RawH2(site.tls_port, tls=site.tls(), server_hostname="site.test", validate=False) as c:
        head = [*get("site.test", "/sha", "POST"), (b"content-length", b"10")]
        sid = c.request(head, b"too short")
        assert c.wait_for(lambda _: c.ended(sid))
        assert c.resets().get(sid) == PROTOCOL_ERROR
        assert c.response(c.request(get("site.test", "/after")))[0] == 200


def test_authority_outside_the_tls_name_gets_421(site: Site) -> None:
    with RawH2(site.tls_port, tls=site.tls(), server_hostname="site.test") as c:
        status, _, _ = c.response(c.request(get("other.test", "/")))
        assert status == 421
        # A name the same certificate covers is served (connection coalescing).
        assert c.response(c.request(get("h2c.test", "/")))[0] == 200


def test_rapid_reset_gets_goaway_and_the_proxy_serves_on(site: Site) -> None:
    with RawH2(site.tls_port, tls=site.tls(), server_hostname="site.test", validate=False) as c:
        encoder = c.conn.encoder
        raw = b""
        for i in range(400):
            sid = 1 + 2 * i
            f = HeadersFrame(sid)
            f.data = encoder.encode(get("site.test", "/reset"))
            f.flags.add("END_HEADERS")
            raw += f.serialize() + RstStreamFrame(sid, error_code=0x8).serialize()
        c.sock.sendall(raw)
        assert c.wait_for(lambda _: c.goaway() is not None or c.closed)
        goaway = c.goaway()
        assert goaway is not None and goaway.error_code == ENHANCE_YOUR_CALM
    status, _, _, _ = h2curl(site, "site.test", "/still-there")
    assert status == 200


def test_continuation_flood_gets_goaway(site: Site) -> None:
    from hyperframe.frame import ContinuationFrame

    with RawH2(site.tls_port, tls=site.tls(), server_hostname="site.test") as c:
        f = HeadersFrame(1)
        f.data = c.conn.encoder.encode(get("site.test", "/"))[:3]
        raw = f.serialize() + b"".join(
            ContinuationFrame(1, data=b"\x00").serialize() for _ in range(1000)
        )
        c.sock.sendall(raw)
        assert c.wait_for(lambda _: c.goaway() is not None or c.closed)
        goaway = c.goaway()
        assert goaway is not None and goaway.error_code == ENHANCE_YOUR_CALM


def test_as_many_streams_as_advertised_are_served_at_once(site: Site) -> None:
    HOLD.clear()
    try:
        with RawH2(site.tls_port, tls=site.tls(), server_hostname="site.test") as c:
            assert c.wait_for(
                lambda evs: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in evs)
            )
            held = [c.request(get("site.test", f"/hold{i}")) for i in range(MAX_STREAMS)]
            assert c.wait_for(lambda _: len(site.origin.requests()) > 0, 5)
            HOLD.set()
            for sid in held:
                assert c.response(sid)[0] == 200
    finally:
        HOLD.set()


# --- origins over HTTP/2 and TLS ------------------------------------------------------------


def test_http11_client_to_h2c_origin(site: Site) -> None:
    res = curl_http(site.url("h2c.test", "/via-h1"), "--http1.1", *site.resolve("h2c.test"))
    assert res.status == 200
    assert res.body == b"h2c GET /via-h1 0\n"
    seen = site.h2c.requests()[-1]
    assert seen.protocol == "h2"
    assert seen.authority == f"h2c.test:{site.tls_port}"
    assert seen.header("host") is None  # :authority carries it
    assert seen.header("x-forwarded-for") == "127.0.0.1"


def test_h2_client_to_h2_origin_over_verified_tls(site: Site) -> None:
    status, _, body, _ = h2curl(site, "h2tls.test", "/secure", "--data-binary", "abc")
    assert (status, body) == (200, b"h2tls POST /secure 3\n")
    assert site.h2tls.requests()[-1].protocol == "h2"


def test_http11_origin_over_verified_tls(site: Site) -> None:
    status, _, body, _ = h2curl(site, "h1tls.test", "/reencrypted")
    assert (status, body) == (200, b"h2tls GET /reencrypted 0\n")
    assert site.h2tls.requests()[-1].protocol == "http/1.1"


def test_origin_certificate_that_does_not_verify_gets_502(site: Site) -> None:
    status, _, _, _ = h2curl(site, "badca.test", "/")
    assert status == 502
    line = site.proxy.wait_access(lambda s: "pool=badca" in s)
    assert " 502 " in line
    assert "TLS certificate" in site.proxy.stderr()


def test_one_multiplexed_connection_per_origin_more_at_its_stream_limit(site: Site) -> None:
    site.h2c.handler = lambda req: H2Reply(body=b"x", gate=HOLD)
    site.limited.handler = lambda req: H2Reply(body=b"x", gate=HOLD)
    HOLD.clear()
    try:
        before = site.h2c.connections
        with RawH2(site.tls_port, tls=site.tls(), server_hostname="site.test") as c:
            a = [c.request(get("h2c.test", f"/m{i}")) for i in range(10)]
            b = [c.request(get("limited.test", f"/m{i}")) for i in range(6)]
            assert c.wait_for(lambda _: len(site.limited.requests()) >= 6, 15)
            HOLD.set()
            for sid in a + b:
                assert c.response(sid)[0] == 200
        assert site.h2c.connections - before <= 1
        assert site.limited.connections >= 3  # 2 streams per connection
    finally:
        HOLD.set()
        site.h2c.handler = site.h2c.default_reply
        site.limited.handler = site.limited.default_reply


# --- GOAWAY: reload, stop, idle -------------------------------------------------------------


def small_proxy(d: Path, origin: Origin, extra: str = "") -> tuple[Proxy, int, Path]:
    cert, key = make_cert(d, "site", ["site.test"])
    port = free_port()
    conf = f"""
[global]
access_log = "stdout"
{extra}
[[listener]]
name = "tls"
bind = "127.0.0.1:{port}"
tls = {{ certs = [{{ cert = {toml_path(cert)}, key = {toml_path(key)} }}] }}
[[route]]
pool = "web"
[pool.web]
servers = ["{origin.address}"]
"""
    return Proxy(d, conf, ports=[port]), port, cert


@pytest.mark.parametrize("how", ["reload", "stop"])
def test_goaway_with_the_last_stream_id_lets_streams_in_flight_finish(
    tmp_path: Path, how: str
) -> None:
    gate = threading.Event()
    with Origin("g", lambda req: Reply(body=b"done\n", gate=gate)) as origin:
        proxy, port, cert = small_proxy(tmp_path, origin)
        with proxy:
            ctx = ssl.create_default_context(cafile=str(cert))
            with RawH2(port, tls=ctx, server_hostname="site.test") as c:
                sid = c.request(get("site.test", "/in-flight"))
                assert wait_until(lambda: len(origin.requests()) == 1, 10)
                sig = signal.SIGHUP if how == "reload" else signal.SIGTERM
                proxy.proc.send_signal(sig)  # type: ignore[union-attr]
                assert c.wait_for(lambda _: c.goaway() is not None)
                goaway = c.goaway()
                assert goaway is not None
                assert (goaway.error_code, goaway.last_stream_id) == (NO_ERROR, sid)
                gate.set()
                status, _, body = c.response(sid)
                assert (status, body) == (200, b"done\n")
                assert c.wait_for(lambda _: c.closed)


def test_idle_connection_gets_goaway(tmp_path: Path) -> None:
    with Origin("i") as origin:
        proxy, port, cert = small_proxy(tmp_path, origin, 'keepalive_timeout = "1s"')
        with proxy:
            ctx = ssl.create_default_context(cafile=str(cert))
            with RawH2(port, tls=ctx, server_hostname="site.test") as c:
                assert c.response(c.request(get("site.test", "/")))[0] == 200
                assert c.wait_for(lambda _: c.goaway() is not None, 10)
                assert c.wait_for(lambda _: c.closed, 10)


def test_silent_connection_is_pinged_then_closed(tmp_path: Path) -> None:
    with Origin("p") as origin:
        extra = '[global.h2]\nping_interval = "1s"\nping_timeout = "1s"'
        proxy, port, cert = small_proxy(tmp_path, origin, extra)
        with proxy:
            ctx = ssl.create_default_context(cafile=str(cert))
            ctx.set_alpn_protocols(["h2"])
            with (
                socketlib.create_connection(("127.0.0.1", port), timeout=10) as raw,
                ctx.wrap_socket(raw, server_hostname="site.test") as tls,
            ):
                # A preface and empty SETTINGS, then silence: PINGs go unanswered.
                empty_settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
                tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + empty_settings)
                received = b""
                while True:
                    chunk = tls.recv(65536)
                    if not chunk:
                        break
                    received += chunk
                ping = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00"  # PING frame header, no ACK
                assert ping in received
