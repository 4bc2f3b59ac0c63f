"""Hardening, end to end: what attacking the proxy found, each fixed and held here.

Path normalisation is shown against a real nginx origin (it resolves paths as the attack's
origins did) and curl with ``--path-as-is``; the request faults against the recording origin
of the harness and raw sockets, because they need bytes curl will not send.
"""

from __future__ import annotations

import contextlib
import resource
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import (
    LOOPBACK,
    Origin,
    Proxy,
    curl,
    free_port,
    raw_exchange,
    split_response,
)
from l4_peers import nginx

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("real_peers")]


@contextlib.contextmanager
def nginx_echo(directory: Path) -> Iterator[int]:
    """nginx answering every request with the target it received (``$request_uri``) and the
    path it resolved it to (``$uri``)."""
    with nginx(directory, 'location / { return 200 "seen $request_uri as $uri\\n"; }') as port:
        yield port


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int, Path]]:
    """(proxy port, port of a second listener with escaped slashes kept, nginx log folder)."""
    d = tmp_path_factory.mktemp("paths")
    with nginx_echo(d) as nginx:
        port = free_port()
        config = f"""
[[listener]]
name = "web"
bind = ["{LOOPBACK}:{port}"]
h2c = true

[[route]]
path = "/admin/"
respond = {{ status = 403, body = "admin is closed" }}

[[route]]
path = "/raw/"
pool = "nginx"
normalize_path = false

[[route]]
pool = "nginx"

[pool.nginx]
servers = ["{LOOPBACK}:{nginx}"]
"""
        with Proxy(d, config, ports=[port]):
            yield port, nginx, d / "nginx" / "logs"


# The six bypasses of a `path = "/admin/"` rule, and the same in absolute form.
BYPASSES = ["//admin/x", "/./admin/x", "/x/../admin/x", "/%61dmin/x", "/x/%2e%2e/admin/x"]


def _get(port: int, target: str, *args: str) -> tuple[int, bytes]:
    url = f"http://{LOOPBACK}:{port}{target}"
    res = curl("--path-as-is", *args, "-o", "-", "-w", "\n%{http_code}", url)
    body, _, code = res.stdout.rpartition(b"\n")
    return int(code), body


def _raw(port: int, head: bytes) -> tuple[int, bytes]:
    """One request (a head without its final CRLF) on a connection the proxy closes after it."""
    data, _ = raw_exchange(port, head + b"\r\nConnection: close\r\n\r\n")
    status, _, body, _ = split_response(data)
    return status, body


@pytest.mark.parametrize("target", [*BYPASSES, "/admin/x", "/admin"])
def test_a_path_rule_cannot_be_bypassed(paths: tuple[int, int, Path], target: str) -> None:
    port, _, _ = paths
    status, body = _get(port, target)
    assert (status, body) == (403, b"admin is closed")


@pytest.mark.parametrize("target", BYPASSES)
def test_absolute_form_is_normalised_too(paths: tuple[int, int, Path], target: str) -> None:
    port, _, _ = paths
    head = f"GET http://example.com{target} HTTP/1.1\r\nHost: example.com".encode()
    assert _raw(port, head) == (403, b"admin is closed")


def test_the_origin_serves_what_was_matched(paths: tuple[int, int, Path]) -> None:
    port, _, _ = paths
    status, body = _get(port, "/pub//a/./b/../c/%7Euser/%3f")
    assert status == 200
    assert body == b"seen /pub/a/c/~user/%3F as /pub/a/c/~user/?\n"


def test_normalize_path_false_forwards_the_raw_path(paths: tuple[int, int, Path]) -> None:
    port, _, _ = paths
    status, body = _get(port, "/raw//x/./y")
    assert (status, body) == (200, b"seen /raw//x/./y as /raw/x/y\n")
    # Matching still used the normalised path: a raw path that resolves into /admin/ is refused.
    assert _get(port, "/raw/../admin/x")[0] == 403


@pytest.mark.parametrize("target", ["/admin%2fx", "/admin%2Fx", "/a%5cb", "/a%00b", "/a%zz"])
def test_escaped_separators_are_refused(paths: tuple[int, int, Path], target: str) -> None:
    port, _, logs = paths
    before = (logs / "access.log").read_bytes()
    assert _get(port, target)[0] == 400
    assert (logs / "access.log").read_bytes() == before  # never forwarded


def test_a_literal_backslash_is_refused(paths: tuple[int, int, Path]) -> None:
    port, _, _ = paths
    assert _raw(port, b"GET /admin\\x HTTP/1.1\r\nHost: example.com")[0] == 400


@pytest.mark.parametrize(
    "request_line", [b"GET * HTTP/1.1", b"GET example.com:80 HTTP/1.1", b"PUT * HTTP/1.1"]
)
def test_targets_of_the_wrong_form_are_refused(
    paths: tuple[int, int, Path], request_line: bytes
) -> None:
    port, _, _ = paths
    assert _raw(port, request_line + b"\r\nHost: a")[0] == 400


def test_keep_passes_escaped_slashes_to_the_origin(tmp_path: Path) -> None:
    with nginx_echo(tmp_path) as nginx:
        port = free_port()
        config = f"""
[global]
path_escaped_slashes = "keep"

[[listener]]
name = "web"
bind = ["{LOOPBACK}:{port}"]

[[route]]
pool = "nginx"

[pool.nginx]
servers = ["{LOOPBACK}:{nginx}"]
"""
        with Proxy(tmp_path, config, ports=[port]):
            status, body = _get(port, "/a%2fb/%61")
    assert (status, body) == (200, b"seen /a%2Fb/a as /a/b/a\n")


@pytest.mark.parametrize("target", BYPASSES)
def test_http2_paths_are_normalised(paths: tuple[int, int, Path], target: str) -> None:
    port, _, _ = paths
    assert _get(port, target, "--http2-prior-knowledge") == (403, b"admin is closed")
    status, body = _get(port, "/pub//a/../b", "--http2-prior-knowledge")
    assert (status, body) == (200, b"seen /pub/b as /pub/b\n")


def test_recording_origin_gets_the_normalised_target(tmp_path: Path) -> None:
    with Origin() as origin:
        port = free_port()
        config = f"""
[[listener]]
name = "web"
bind = ["{LOOPBACK}:{port}"]

[[route]]
pool = "o"

[pool.o]
servers = ["{origin.address}"]
"""
        with Proxy(tmp_path, config, ports=[port]):
            assert _get(port, "/a//b/../c?q=/../x")[0] == 200
        assert [r.target for r in origin.requests()] == ["/a/c?q=/../x"]


# --- request and response faults ------------------------------------------------------------


class RawOrigin:
    """An origin that answers every request head with the bytes given, then closes: for the
    responses a well-behaved HTTP library will not produce."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.heads: list[bytes] = []
        self.sock = socket.socket()
        self.sock.bind((LOOPBACK, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5.0)
                data = b""
                with contextlib.suppress(OSError):
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    self.heads.append(data.partition(b"\r\n\r\n")[0])
                    conn.sendall(self.reply)
                    conn.shutdown(socket.SHUT_WR)
                    while conn.recv(65536):
                        pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """A proxy in front of a recording origin (/, /upload), and raw origins for the faults."""
    d = tmp_path_factory.mktemp("faults")
    both = RawOrigin(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n"
    )
    unasked = RawOrigin(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
    wrong_accept = RawOrigin(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: bm90IHRoZSByaWdodCBvbmU=\r\n\r\n"
    )
    with Origin() as origin:
        port = free_port()
        config = f"""
[[listener]]
name = "web"
bind = ["{LOOPBACK}:{port}"]
h2c = true

[[route]]
path = "/both"
pool = "both"

[[route]]
path = "/unasked"
pool = "unasked"

[[route]]
path = "/ws"
pool = "wrong_accept"

[[route]]
pool = "origin"

[pool.origin]
servers = ["{origin.address}"]
timeouts = {{ response = "1s" }}

[pool.both]
servers = ["{LOOPBACK}:{both.port}"]

[pool.unasked]
servers = ["{LOOPBACK}:{unasked.port}"]

[pool.wrong_accept]
servers = ["{LOOPBACK}:{wrong_accept.port}"]
"""
        with Proxy(d, config, ports=[port]) as proxy:
            yield {"port": port, "origin": origin, "proxy": proxy, "unasked": unasked}
    for raw in (both, unasked, wrong_accept):
        raw.close()


@pytest.mark.parametrize("http", ["--http1.1", "--http2-prior-knowledge"])
def test_b1_content_length_with_chunked_response_is_502(
    faults: dict[str, object], http: str
) -> None:
    port = faults["port"]
    assert isinstance(port, int)
    assert _get(port, "/both", http) == (502, b"502 Bad Gateway\n")


def test_b2_response_timer_starts_after_the_upload(faults: dict[str, object]) -> None:
    """A 60 MB upload at 30 MB/s takes 2 s; the pool's response timeout is 1 s."""
    port = faults["port"]
    body = b"x" * (60 * 1024 * 1024)
    res = curl(
        "--limit-rate", "30M", "-o", "/dev/null", "-w", "%{http_code}",
        "--data-binary", "@-", f"http://{LOOPBACK}:{port}/upload",
        stdin=body, timeout=30,
    )  # fmt: skip
    assert res.stdout == b"200", res.stderr


def test_b4_pipelined_garbage_is_a_400_not_a_traceback(faults: dict[str, object]) -> None:
    port, proxy = faults["port"], faults["proxy"]
    assert isinstance(port, int) and isinstance(proxy, Proxy)
    data, _ = raw_exchange(
        port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\x00\x01\x02garbage\r\n\r\n", timeout=5
    )
    status, _, _, rest = split_response(data)
    assert status == 200
    assert split_response(rest)[0] == 400
    assert "Traceback" not in proxy.stderr()


def test_b5_connection_cannot_name_host_away(faults: dict[str, object]) -> None:
    port, origin = faults["port"], faults["origin"]
    assert isinstance(port, int) and isinstance(origin, Origin)
    origin.reset()
    status, _ = _raw(port, b"GET /b5 HTTP/1.1\r\nHost: app.test\r\nConnection: close, host")
    assert status == 200
    assert [r.header("host") for r in origin.requests()] == ["app.test"]


def test_b6_a_101_nobody_asked_for_is_502(faults: dict[str, object]) -> None:
    port = faults["port"]
    assert isinstance(port, int)
    assert _raw(port, b"GET /unasked HTTP/1.1\r\nHost: a")[0] == 502


def test_b6_a_101_with_the_wrong_accept_is_502(faults: dict[str, object]) -> None:
    port = faults["port"]
    assert isinstance(port, int)
    head = (
        b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="
    )
    data, _ = raw_exchange(port, head + b"\r\n\r\n", timeout=5)
    assert split_response(data)[0] == 502


def test_w4_underscore_twins_of_forwarding_headers_are_dropped(faults: dict[str, object]) -> None:
    port, origin = faults["port"], faults["origin"]
    assert isinstance(port, int) and isinstance(origin, Origin)
    origin.reset()
    head = b"GET /w4 HTTP/1.1\r\nHost: a\r\nX_Forwarded_For: 6.6.6.6\r\nX_Real_IP: 6.6.6.6"
    assert _raw(port, head)[0] == 200
    (seen,) = origin.requests()
    assert not seen.has("x_forwarded_for") and not seen.has("x_real_ip")
    assert seen.header("x-forwarded-for") == LOOPBACK


@pytest.mark.parametrize(
    "host", [b"a b", b"user@app.test", b"app.test:80:80", b"", b"app.test:80x"]
)
def test_w5_malformed_host_is_400_and_not_forwarded(faults: dict[str, object], host: bytes) -> None:
    port, origin = faults["port"], faults["origin"]
    assert isinstance(port, int) and isinstance(origin, Origin)
    origin.reset()
    assert _raw(port, b"GET /w5 HTTP/1.1\r\nHost: " + host)[0] == 400
    assert origin.requests() == []


def test_a_malformed_body_in_hand_is_400_and_the_head_not_forwarded(
    faults: dict[str, object],
) -> None:
    port, origin = faults["port"], faults["origin"]
    assert isinstance(port, int) and isinstance(origin, Origin)
    origin.reset()
    request = (
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"  # one good request first: the pipelined case
        b"POST /in-hand HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"fffffffffffffffffffffffff\r\nxx"
    )
    data, _ = raw_exchange(port, request, timeout=5)
    status, _, _, rest = split_response(data)
    assert status == 200 and split_response(rest)[0] == 400
    assert [r.target for r in origin.requests()] == ["/"]


def test_garbage_is_refused_at_once(faults: dict[str, object]) -> None:
    port = faults["port"]
    assert isinstance(port, int)
    started = time.monotonic()
    data, closed = raw_exchange(port, b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", timeout=5)
    assert closed and time.monotonic() - started < 2.0  # header_timeout is 10 s
    assert split_response(data)[0] == 400


# --- B3: running out of file descriptors is the proxy's shortage, not the origin's fault -----


def test_b3_out_of_descriptors_never_marks_the_origin_down(tmp_path: Path) -> None:
    with Origin() as origin:
        port = free_port()
        config = f"""
[[listener]]
name = "web"
bind = ["{LOOPBACK}:{port}"]

[[route]]
pool = "o"

[pool.o]
servers = ["{origin.address}"]
keepalive = 0
passive = {{ failures = 1, cooldown = "60s" }}
"""
        with Proxy(tmp_path, config, ports=[port]) as proxy:
            assert _get(port, "/warm")[0] == 200
            fds = Path(f"/proc/{proxy.pid}/fd")
            _, hard = resource.prlimit(proxy.pid, resource.RLIMIT_NOFILE)
            idle = [socket.create_connection((LOOPBACK, port)) for _ in range(3)]
            try:
                time.sleep(0.3)  # accepted: each holds a descriptor now
                # One descriptor left: the next client is accepted, its origin connect fails.
                in_use = len(list(fds.iterdir()))
                resource.prlimit(proxy.pid, resource.RLIMIT_NOFILE, (in_use + 1, hard))
                status, body = _get(port, "/starved")
                assert (status, body) == (503, b"503 Service Unavailable\n")
            finally:
                resource.prlimit(proxy.pid, resource.RLIMIT_NOFILE, (hard, hard))
                for s in idle:
                    s.close()
            # The origin was never at fault: served at once, not after the 60 s cooldown.
            assert _get(port, "/after")[0] == 200
            assert "backend connect failed" not in proxy.stderr()
        assert [r.target for r in origin.requests()] == ["/warm", "/after"]


def test_b3_soft_descriptor_limit_is_raised_to_the_hard_one(tmp_path: Path) -> None:
    port = free_port()
    config = f'[[listener]]\nname = "web"\nbind = ["{LOOPBACK}:{port}"]\n'
    ours = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, ours[1]))  # what the proxy inherits
    try:
        with Proxy(tmp_path, config, ports=[port]) as proxy:
            soft, hard = resource.prlimit(proxy.pid, resource.RLIMIT_NOFILE)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, ours)
    assert (soft, hard) == (ours[1], ours[1])
