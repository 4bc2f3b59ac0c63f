"""Egress, HTTP side, end to end: curl as the origin's HTTP client through ``mode = "forward"``
(absolute-form and CONNECT), Basic and Digest Proxy-Authorization, the destination policy
and its default deny (DNS rebinding to loopback refused), what the destination receives, the
access log and /metrics. Destinations are harness origins on 127.0.0.1, allowed explicitly."""

from __future__ import annotations

import hashlib
import socket
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
    rec = _wait_record(site, "egress", 1)[-1]
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
    assert [s.nth for s in seen] == [1, 2, 3]  # one destination connection for all three
    assert b"Re-using existing connection" in curl("-v", *_proxy(site, site.fwd), url, url).stderr


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
    res = curl_http(f"http://localhost:{site.origin.port}/", "--proxy",
                    f"http://{LOOPBACK}:{site.open_}")  # fmt: skip
    assert res.status == 403
    res = curl("-p", "--proxy", f"http://{LOOPBACK}:{site.open_}",
               f"http://localhost:{site.origin.port}/")  # fmt: skip
    assert res.returncode != 0
    assert len(site.origin.seen) == before
    recs = _wait_record(site, "egress-open", 2)
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
