"""Egress, HTTP side, end to end: curl as the origin's HTTP client through ``mode = "forward"``
(absolute-form and CONNECT), Basic and Digest Proxy-Authorization, the destination policy
and its default deny (DNS rebinding to loopback refused), what the destination receives, the
access log and /metrics. Destinations are harness origins on 127.0.0.1, allowed explicitly."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from egress_peers import PASSWORD, REALM, USER, json_lines, users_files, users_tables
from harness import (
    LOOPBACK,
    Origin,
    Proxy,
    Reply,
    curl,
    curl_http,
    free_port,
    generated,
    generated_sha256,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("real_peers")]

BIG = 8 * 1024 * 1024


@dataclass
class Site:
    proxy: Proxy
    origin: Origin
    fwd: int  # forward, Basic users, destinations 127.0.0.1 (deny = [])
    digest: int  # forward, Digest users
    open_: int  # forward, no auth, destinations ["localhost"] with the default deny
    sourced: int  # forward, no auth, source = 127.0.0.3
    admin: int


def _handler(seen: object) -> Reply:
    from harness import Seen

    assert isinstance(seen, Seen)
    if seen.target == "/big":
        return Reply(body=generated(BIG), length=BIG)
    return Reply(body=f"hello {seen.method} {seen.target}\n".encode())


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    d = tmp_path_factory.mktemp("egress")
    basic, digest = users_files(d)
    fwd, dig, open_, sourced, admin = (free_port() for _ in range(5))
    with Origin("dest", handler=_handler) as origin:
        config = f"""
[global]
access_log_format = "json"

[admin]
bind = "{LOOPBACK}:{admin}"
{users_tables(basic, digest)}
[[listener]]
name = "egress"
bind = ["{LOOPBACK}:{fwd}"]
mode = "forward"
egress = "tests"
auth = {{ users = "apps", scheme = "basic" }}

[[listener]]
name = "egress-digest"
bind = ["{LOOPBACK}:{dig}"]
mode = "forward"
egress = "tests"
auth = {{ users = "digestapps", scheme = "digest", realm = "{REALM}" }}

[[listener]]
name = "egress-open"
bind = ["{LOOPBACK}:{open_}"]
mode = "forward"
egress = "rebinding"

[[listener]]
name = "egress-sourced"
bind = ["{LOOPBACK}:{sourced}"]
mode = "forward"
egress = "sourced"

[egress.tests]
destinations = ["127.0.0.1:{origin.port}"]
ports = [80, 443, "1025-65535"]
connect_ports = [443, {origin.port}]
deny = []          # the destinations are on loopback, which the default denies

[egress.rebinding]
destinations = ["localhost", "*.example.invalid"]   # the default deny stays
connect_ports = ["1025-65535"]

[egress.sourced]
destinations = ["127.0.0.1"]
source = ["127.0.0.3"]
deny = ["private", "link-local", "metadata"]
"""
        with Proxy(d, config, ports=[fwd, dig, open_, sourced, admin]) as proxy:
            yield Site(proxy, origin, fwd, dig, open_, sourced, admin)


def _records(site: Site, listener: str) -> list[dict[str, object]]:
    return [r for r in json_lines(site.proxy.stdout()) if r.get("listener") == listener]


def _wait_record(site: Site, listener: str, count: int) -> list[dict[str, object]]:
    assert wait_until(lambda: len(_records(site, listener)) >= count, 10.0), site.proxy.stdout()
    return _records(site, listener)


def _proxy(site: Site, port: int, user: bool = True) -> list[str]:
    creds = f"{USER}:{PASSWORD}@" if user else ""
    return ["--proxy", f"http://{creds}{LOOPBACK}:{port}"]


def _fetch(url: str, *args: str) -> tuple[int, bytes]:
    """(last status, body) of one curl run that may go through a 407 first (Digest)."""
    res = curl("-o", "-", "-w", "\n%{http_code}", *args, url)
    body, _, code = res.stdout.rpartition(b"\n")
    return int(code), body


def test_forward_relays_and_adds_nothing(site: Site) -> None:
    before = len(site.origin.seen)
    logged = len(_records(site, "egress"))
    url = f"http://{LOOPBACK}:{site.origin.port}/path?q=1"
    res = curl_http(
        url, *_proxy(site, site.fwd),
        "-H", "X-Forwarded-For: 10.9.9.9", "-H", "Via: 1.1 somebody", "-H", "Forwarded: for=x",
        "-H", "X-Real-IP: 10.1.1.1", "-H", "X-App: kept",
    )  # fmt: skip
    assert res.status == 200
    assert res.body == b"hello GET /path?q=1\n"
    seen = site.origin.seen[before]
    assert seen.target == "/path?q=1"
    for name in ("proxy-authorization", "proxy-connection", "via", "forwarded",
                 "x-forwarded-for", "x-real-ip", "x-forwarded-proto"):  # fmt: skip
        assert not seen.has(name), (name, seen.headers)
    assert seen.header("x-app") == "kept"
    assert seen.header("host") == f"{LOOPBACK}:{site.origin.port}"
    assert not any(n.lower() == "via" for n, _ in res.headers)
    rec = _wait_record(site, "egress", logged + 1)[-1]
    assert rec["user"] == USER
    assert rec["destination"] == f"{LOOPBACK}:{site.origin.port}"
    assert rec["resolved"] == f"{LOOPBACK}:{site.origin.port}"
    assert rec["status"] == 200 and rec["method"] == "GET"
    assert int(str(rec["bytes_out"])) > 0


def test_keep_alive_both_sides(site: Site) -> None:
    before = len(site.origin.seen)
    url = f"http://{LOOPBACK}:{site.origin.port}/ka"
    res = curl(*_proxy(site, site.fwd), url, url, url)
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"hello GET /ka\n" * 3
    seen = site.origin.seen[before:]
    # One destination connection for all three (perhaps kept from an earlier client).
    assert len({s.conn for s in seen}) == 1
    assert [s.nth - seen[0].nth for s in seen] == [0, 1, 2]
    assert b"Re-using existing connection" in curl("-v", *_proxy(site, site.fwd), url, url).stderr
    # The next client connection is served on the connection the last one left.
    before = len(site.origin.seen)
    assert curl_http(url, *_proxy(site, site.fwd)).status == 200
    again = site.origin.seen[before]
    assert again.conn == seen[0].conn and again.nth > seen[-1].nth


def test_407_without_credentials(site: Site) -> None:
    res = curl_http(f"http://{LOOPBACK}:{site.origin.port}/", *_proxy(site, site.fwd, False))
    assert res.status == 407
    challenge = res.header("proxy-authenticate") or ""
    assert challenge.startswith("Basic realm=")
    bad = ["--proxy", f"http://{USER}:wrong@{LOOPBACK}:{site.fwd}"]
    assert curl_http(f"http://{LOOPBACK}:{site.origin.port}/", *bad).status == 407
    res = curl("-p", *_proxy(site, site.fwd, False), f"http://{LOOPBACK}:{site.origin.port}/")
    assert res.returncode != 0  # CONNECT refused with 407 too
    assert b"407" in res.stderr


def test_digest_proxy_auth(site: Site) -> None:
    args = ["--proxy", f"http://{LOOPBACK}:{site.digest}", "--proxy-digest",
            "--proxy-user", f"{USER}:{PASSWORD}"]  # fmt: skip
    assert _fetch(f"http://{LOOPBACK}:{site.origin.port}/d", *args) == (200, b"hello GET /d\n")
    res = curl("-p", *args, f"http://{LOOPBACK}:{site.origin.port}/tunnelled")
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"hello GET /tunnelled\n"
    bad = ["--proxy", f"http://{LOOPBACK}:{site.digest}", "--proxy-digest",
           "--proxy-user", f"{USER}:nope"]  # fmt: skip
    assert _fetch(f"http://{LOOPBACK}:{site.origin.port}/d", *bad)[0] == 407


def test_connect_relays_bulk_and_half_close(site: Site) -> None:
    res = curl("-p", *_proxy(site, site.fwd), f"http://{LOOPBACK}:{site.origin.port}/big")
    assert res.returncode == 0, res.stderr
    assert hashlib.sha256(res.stdout).hexdigest() == generated_sha256(BIG)
    recs = [r for r in _wait_record(site, "egress", 1) if r["method"] == "CONNECT"]
    assert wait_until(
        lambda: any(r["method"] == "CONNECT" and int(str(r["bytes_out"])) >= BIG
                    for r in _records(site, "egress")), 10.0)  # fmt: skip
    recs = [r for r in _records(site, "egress") if r["method"] == "CONNECT"]
    last = recs[-1]
    assert last["user"] == USER and last["status"] == 200
    assert last["resolved"] == f"{LOOPBACK}:{site.origin.port}"
    # Half-close by hand: the request goes, the client shuts its write side, the reply
    # still comes back whole.
    with socket.create_connection((LOOPBACK, site.fwd), timeout=10) as s:
        import base64

        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        dest = f"{LOOPBACK}:{site.origin.port}"
        s.sendall(f"CONNECT {dest} HTTP/1.1\r\nHost: {dest}\r\n"
                  f"Proxy-Authorization: Basic {token}\r\n\r\n".encode())  # fmt: skip
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(1)
        assert head.startswith(b"HTTP/1.1 200")
        s.sendall(f"GET /half HTTP/1.1\r\nHost: {dest}\r\nConnection: close\r\n\r\n".encode())
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        assert data.endswith(b"hello GET /half\n")


def test_destination_policy_refusals(site: Site) -> None:
    other = free_port()  # a port not listed
    res = curl_http(f"http://{LOOPBACK}:{other}/", *_proxy(site, site.fwd))
    assert res.status == 403
    # CONNECT only to connect_ports.
    res = curl("-p", *_proxy(site, site.fwd), f"http://{LOOPBACK}:{other}/")
    assert res.returncode != 0 and b"403" in res.stderr
    # Ports outside ``ports`` are refused before anything else.
    assert curl_http(f"http://{LOOPBACK}:81/", *_proxy(site, site.fwd)).status == 403
    # An https:// absolute-form request is refused: clients use CONNECT.
    with socket.create_connection((LOOPBACK, site.open_), timeout=10) as s:
        s.sendall(b"GET https://example.invalid/ HTTP/1.1\r\nHost: example.invalid\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 400")
    # An origin-form request names no destination.
    with socket.create_connection((LOOPBACK, site.open_), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: example.invalid\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 400")


def test_dns_rebinding_to_loopback_refused(site: Site) -> None:
    """``localhost`` is allowed by name, but it resolves to 127.0.0.1 (and ::1), which the
    default deny refuses: the resolved address decides."""
    before = len(site.origin.seen)
    # This module's proxy is shared: an earlier test's records on this listener (the two
    # 400s of test_destination_policy_refusals) may be there already; this test's two come
    # after them.
    logged = len(_records(site, "egress-open"))
    res = curl_http(f"http://localhost:{site.origin.port}/", "--proxy",
                    f"http://{LOOPBACK}:{site.open_}")  # fmt: skip
    assert res.status == 403
    res = curl("-p", "--proxy", f"http://{LOOPBACK}:{site.open_}",
               f"http://localhost:{site.origin.port}/")  # fmt: skip
    assert res.returncode != 0
    assert len(site.origin.seen) == before
    recs = _wait_record(site, "egress-open", logged + 2)
    assert all(r["refused"] == "deny:loopback" for r in recs[-2:])
    assert str(recs[-1]["resolved"]).endswith(f":{site.origin.port}")
    assert "decision=deny:loopback" in site.proxy.stderr()


def test_source_address(site: Site) -> None:
    before = len(site.origin.seen)
    res = curl_http(f"http://{LOOPBACK}:{site.origin.port}/src", "--proxy",
                    f"http://{LOOPBACK}:{site.sourced}")  # fmt: skip
    assert res.status == 200
    assert site.origin.seen[before].peer[0] == "127.0.0.3"


def test_metrics_count_decisions(site: Site) -> None:
    curl_http(f"http://{LOOPBACK}:{site.origin.port}/", *_proxy(site, site.fwd, False))
    curl_http(f"http://{LOOPBACK}:{site.origin.port}/m", *_proxy(site, site.fwd))
    metrics = curl_http(f"http://{LOOPBACK}:{site.admin}/metrics").body.decode()
    assert f'revproxy_egress_total{{listener="egress",user="{USER}",decision="allow"}}' in metrics
    assert 'revproxy_egress_total{listener="egress",user="-",decision="auth"}' in metrics


def test_bad_config_names_key(tmp_path: Path) -> None:
    from revproxy.config.load import load_config_text
    from revproxy.errors import ConfigError

    text = """
[[listener]]
name = "e"
bind = ["127.0.0.1:3128"]
mode = "forward"
egress = "nope"
"""
    with pytest.raises(ConfigError) as info:
        load_config_text([("conf/10.toml", text)])
    assert 'conf/10.toml: listener[0].egress: no egress named "nope"' in str(info.value)


def _auth_header() -> str:
    import base64

    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    return f"Proxy-Authorization: Basic {token}\r\n"


def _read_response(s: socket.socket, buf: bytearray) -> bytes:
    """One response with a Content-Length from ``s`` (``buf`` keeps what follows it)."""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        assert chunk, bytes(buf)
        buf += chunk
    end = buf.index(b"\r\n\r\n") + 4
    head = bytes(buf[:end]).lower()
    length = int(head.split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
    while len(buf) < end + length:
        chunk = s.recv(65536)
        assert chunk
        buf += chunk
    out = bytes(buf[: end + length])
    del buf[: end + length]
    return out


def test_upload_big_response_and_pipelining(site: Site) -> None:
    """A request body goes whole (the client paced by the destination), a big response comes
    back whole (the destination paced by the client), pipelined requests are answered in
    order, each read raw."""
    body = b"x" * (3 * 1024 * 1024 + 7)
    url = f"http://{LOOPBACK}:{site.origin.port}/upload"
    before = len(site.origin.seen)
    res = curl("--data-binary", "@-", *_proxy(site, site.fwd), url, stdin=body)
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"hello POST /upload\n"
    assert site.origin.seen[before].body_sha256 == hashlib.sha256(body).hexdigest()
    res = curl(*_proxy(site, site.fwd), f"http://{LOOPBACK}:{site.origin.port}/big")
    assert hashlib.sha256(res.stdout).hexdigest() == generated_sha256(BIG)
    dest = f"{LOOPBACK}:{site.origin.port}"
    with socket.create_connection((LOOPBACK, site.fwd), timeout=10) as s:
        s.sendall(b"".join(
            f"GET http://{dest}/p{i} HTTP/1.1\r\nHost: {dest}\r\n{_auth_header()}\r\n".encode()
            for i in range(3)
        ))  # fmt: skip
        buf = bytearray()
        for i in range(3):
            assert _read_response(s, buf).endswith(f"hello GET /p{i}\n".encode())


def test_connect_after_requests_on_one_connection(site: Site) -> None:
    """A client connection that relayed requests may then open a tunnel: its socket goes to
    the splice relay, with the bytes it sent behind the CONNECT first."""
    dest = f"{LOOPBACK}:{site.origin.port}"
    with socket.create_connection((LOOPBACK, site.fwd), timeout=10) as s:
        buf = bytearray()
        for _ in range(2):
            s.sendall(f"GET http://{dest}/before HTTP/1.1\r\nHost: {dest}\r\n"
                      f"{_auth_header()}\r\n".encode())  # fmt: skip
            assert _read_response(s, buf).endswith(b"hello GET /before\n")
        s.sendall(
            f"CONNECT {dest} HTTP/1.1\r\nHost: {dest}\r\n{_auth_header()}\r\n".encode()
            + f"GET /inside HTTP/1.1\r\nHost: {dest}\r\nConnection: close\r\n\r\n".encode()
        )
        data = bytes(buf)
        while chunk := s.recv(65536):
            data += chunk
        assert data.startswith(b"HTTP/1.1 200 Connection established\r\n\r\n")
        assert data.endswith(b"hello GET /inside\n")


def test_destination_closing_a_kept_connection(site: Site) -> None:
    """A kept connection the destination closed meanwhile is not used again: the next
    request goes on a new one."""
    srv = socket.socket()
    srv.bind((LOOPBACK, 0))
    srv.listen(8)
    srv.settimeout(10)
    port = srv.getsockname()[1]
    served: list[int] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            for n in range(2):
                c, _ = srv.accept()
                with c:
                    data = b""
                    while b"\r\n\r\n" not in data:
                        data += c.recv(4096)
                    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok" + str(n).encode())
                    served.append(n)
                    # Then closes it, as an origin whose keep-alive timeout ends.

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        url = f"http://{LOOPBACK}:{port}/"
        with socket.create_connection((LOOPBACK, site.sourced), timeout=10) as s:
            buf = bytearray()
            for n in range(2):
                s.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                assert _read_response(s, buf).endswith(f"ok{n}".encode())
                wait_until(lambda n=n: len(served) > n, 5.0)
                time.sleep(0.2)  # the destination's close reaches the proxy
    finally:
        srv.close()
        thread.join(timeout=10)
    assert served == [0, 1]


def test_h11_parser(site: Site, tmp_path: Path) -> None:
    """``global.http1_parser = "h11"``: the reference parser serves the forward path too."""
    port = free_port()
    config = f"""
[global]
http1_parser = "h11"

[[listener]]
name = "egress-h11"
bind = ["{LOOPBACK}:{port}"]
mode = "forward"
egress = "tests"

[egress.tests]
destinations = ["127.0.0.1:{site.origin.port}"]
deny = []
"""
    url = f"http://{LOOPBACK}:{site.origin.port}/h11"
    with Proxy(tmp_path, config, ports=[port]):
        before = len(site.origin.seen)
        res = curl("--proxy", f"http://{LOOPBACK}:{port}", url, url, "-H", "Via: 1.1 app")
        assert res.returncode == 0, res.stderr
        assert res.stdout == b"hello GET /h11\n" * 2
        res = curl("--proxy", f"http://{LOOPBACK}:{port}", "--data-binary", "abc", url)
        assert res.stdout == b"hello POST /h11\n"
        seen = site.origin.seen[before:]
        assert len({s.conn for s in seen}) == 1
        assert not any(s.has("via") for s in seen)
