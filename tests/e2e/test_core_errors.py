"""Errors end to end: malformed requests, oversized heads, unreachable and slow origins, and
what the local error pages give away (nothing). The proxy must survive all of it.

Malformed bytes come from raw sockets (curl will not send them); each must get its 4xx, the
connection must be closed, and the origin must not see the request. This module's proxy
writes its access log as JSON lines, which the last tests read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from harness import (
    LOOPBACK,
    Origin,
    Proxy,
    Reply,
    Response,
    Seen,
    closed_port,
    curl_http,
    free_port,
    raw_exchange,
    split_response,
    wait_until,
)

from revproxy import __version__

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("real_peers")]

MAX_HEADER = 4096


def misbehave(req: Seen) -> Reply:
    if req.target.startswith("/slow"):
        return Reply(body=b"late\n", delay=5.0)
    if req.target.startswith("/garbage"):
        return Reply(raw=b"this is not HTTP at all\r\n\r\n")
    if req.target.startswith("/hangup"):
        return Reply(raw=b"")
    if req.target.startswith("/huge-head"):
        return Reply(headers=[("x-huge", "h" * (2 * MAX_HEADER))], body=b"never seen\n")
    if req.target.startswith("/reveal-error"):
        return Reply(
            status=500,
            headers=[("server", "nginx/1.22.1"), ("x-powered-by", "Express")],
            body=b"origin error page\n",
        )
    return Reply(headers=[("x-origin", "errors")], body=f"ok {req.target}\n".encode())


@dataclass
class ErrSite:
    proxy: Proxy
    port: int
    origin: Origin
    dead_port: int

    def get(self, host: str, path: str = "/", *args: str) -> Response:
        return curl_http(
            f"http://{host}:{self.port}{path}", "--resolve", f"{host}:{self.port}:{LOOPBACK}", *args
        )


@pytest.fixture(scope="module")
def errsite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ErrSite]:
    origin = Origin("errors", misbehave).start()
    port, dead = free_port(), closed_port()
    config = f"""
[global]
access_log_format = "json"
max_header_size = {MAX_HEADER}
max_body_size = "1m"
header_timeout = "2s"

[[listener]]
name = "plain"
bind = ["127.0.0.1:{port}"]

[[route]]
host = "app.test"
pool = "web"

[[route]]
host = "down.test"
pool = "down"

[[route]]
host = "slow.test"
pool = "slow"

[pool.web]
servers = ["{origin.address}"]

[pool.down]
servers = ["127.0.0.1:{dead}"]

[pool.slow]
timeouts = {{ response = "1s" }}
servers = ["{origin.address}"]
"""
    try:
        with Proxy(tmp_path_factory.mktemp("errors"), config, ports=[port]) as proxy:
            yield ErrSite(proxy, port, origin, dead)
            assert proxy.alive, "the proxy died:\n" + proxy.stderr()[-3000:]
    finally:
        origin.stop()


GOOD = b"GET /ok HTTP/1.1\r\nHost: app.test\r\n\r\n"

MALFORMED = {
    "cl-and-te": (
        b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "te-and-cl": (
        b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 5\r\n\r\n0\r\n\r\n"
    ),
    "conflicting-cl": (
        b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
    ),
    "cl-list": b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5, 6\r\n\r\nhello!",
    "cl-negative": b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: -1\r\n\r\n",
    "te-unknown": (
        b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
    ),
    "obs-fold": b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Folded: a\r\n  b\r\n\r\n",
    "obs-fold-tab": b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Folded: a\r\n\tb\r\n\r\n",
    "bare-lf": b"GET / HTTP/1.1\nHost: app.test\n\n",
    "bare-lf-one-line": b"GET / HTTP/1.1\r\nHost: app.test\nX-A: 1\r\n\r\n",
    "lone-cr": b"GET / HTTP/1.1\r\nHost: app.test\rX-A: 1\r\n\r\n",
    "space-before-colon": b"GET / HTTP/1.1\r\nHost : app.test\r\n\r\n",
    "control-char-in-name": b"GET / HTTP/1.1\r\nHost: app.test\r\nX-B\x01d: 1\r\n\r\n",
    "nul-in-value": b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Bad: a\x00b\r\n\r\n",
    "space-in-name": b"GET / HTTP/1.1\r\nHost: app.test\r\nBad Name: 1\r\n\r\n",
    "no-host": b"GET / HTTP/1.1\r\n\r\n",
    "two-hosts": b"GET / HTTP/1.1\r\nHost: app.test\r\nHost: evil.test\r\n\r\n",
    "bad-request-line": b"GET /\r\nHost: app.test\r\n\r\n",
    "bad-target": b"GET index.html HTTP/1.1\r\nHost: app.test\r\n\r\n",
}

# Bodies the proxy can only judge while streaming them: the origin may see the head, but
# never a complete request.
MALFORMED_BODY = {
    "bad-chunk-size": (
        b"POST /chunk HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nhello\r\n0\r\n\r\n"
    ),
    "absurd-chunk-size": (
        b"POST /chunk HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"f" * 64
        + b"\r\nhello\r\n0\r\n\r\n"
    ),
    "chunk-without-crlf": (
        b"POST /chunk HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhelloXX0\r\n\r\n"
    ),
}


def assert_rejected(errsite: ErrSite, data: bytes, status: int = 400) -> None:
    before = len(errsite.origin.requests())
    # A good request follows the bad one on the same connection: it must not be served.
    reply, closed = raw_exchange(errsite.port, data + GOOD, timeout=15.0)
    assert closed, f"connection left open after {data!r}"
    got, headers, body, rest = split_response(reply)
    assert got == status, reply
    assert ("connection", "close") in headers
    assert body.startswith(str(status).encode())
    assert rest == b"", "a request after the malformed one was answered"
    assert len(errsite.origin.requests()) == before, "the origin received a malformed request"


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_request_gets_400(errsite: ErrSite, name: str) -> None:
    assert_rejected(errsite, MALFORMED[name])


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_request_in_pieces_gets_400(errsite: ErrSite, name: str) -> None:
    """The same bytes in small pieces: a parser that waits for more must still decide."""
    data = MALFORMED[name]
    before = len(errsite.origin.requests())
    pieces = [data[i : i + 7] for i in range(0, len(data), 7)]
    reply, closed = raw_exchange(errsite.port, pieces, pause=0.01, timeout=15.0)
    assert closed
    assert split_response(reply)[0] == 400, reply
    assert len(errsite.origin.requests()) == before


@pytest.mark.parametrize("name", sorted(MALFORMED_BODY))
def test_malformed_body_gets_400(errsite: ErrSite, name: str) -> None:
    assert_rejected(errsite, MALFORMED_BODY[name])


def test_absolute_form_is_accepted_and_reduced_to_origin_form(errsite: ErrSite) -> None:
    errsite.origin.reset()
    data = (
        b"GET http://App.Test/abs/path?x=1 HTTP/1.1\r\nHost: wrong.test\r\n"
        b"Connection: close\r\n\r\n"
    )
    reply, _ = raw_exchange(errsite.port, data, timeout=15.0)
    status, _, body, _ = split_response(reply)
    assert status == 200
    assert body == b"ok /abs/path?x=1\n"
    (seen,) = errsite.origin.requests()
    assert seen.target == "/abs/path?x=1"
    assert seen.all("host") == ["App.Test"]


def test_head_over_the_limit_gets_431(errsite: ErrSite) -> None:
    big = b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Big: " + b"a" * (MAX_HEADER + 100) + b"\r\n\r\n"
    assert_rejected(errsite, big, 431)
    many = b"GET / HTTP/1.1\r\nHost: app.test\r\n" + b"X-Many: 0123456789\r\n" * 400 + b"\r\n"
    assert_rejected(errsite, many, 431)


def test_head_over_the_limit_in_pieces_gets_431(errsite: ErrSite) -> None:
    pieces = [b"GET / HTTP/1.1\r\nHost: app.test\r\n"] + [b"X-Many: 0123456789\r\n" * 20] * 30
    reply, closed = raw_exchange(errsite.port, pieces, pause=0.01, timeout=15.0)
    assert closed
    assert split_response(reply)[0] == 431
    # Never a complete head: still 431, not a wait for the header timeout.
    endless = [b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Long: "] + [b"b" * 512] * 20
    reply, closed = raw_exchange(errsite.port, endless, pause=0.01, timeout=15.0)
    assert closed
    assert split_response(reply)[0] == 431


def test_head_just_under_the_limit_is_served(errsite: ErrSite) -> None:
    head = b"GET /ok HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n"
    filler = b"X-Fill: " + b"f" * (MAX_HEADER - len(head) - 200) + b"\r\n"
    reply, _ = raw_exchange(errsite.port, head + filler + b"\r\n", timeout=15.0)
    assert split_response(reply)[0] == 200


def test_body_over_max_body_size_gets_413(errsite: ErrSite) -> None:
    body = b"x" * (2 << 20)
    declared = b"POST /big HTTP/1.1\r\nHost: app.test\r\nContent-Length: %d\r\n\r\n" % len(body)
    assert_rejected(errsite, declared + body, 413)
    chunk = b"100000\r\n" + b"x" * 0x100000 + b"\r\n"
    chunked = b"POST /big HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert_rejected(errsite, chunked + chunk * 2 + b"0\r\n\r\n", 413)


def test_slow_head_gets_408(errsite: ErrSite) -> None:
    reply, closed = raw_exchange(errsite.port, b"GET / HTTP/1.1\r\nHost: app", timeout=15.0)
    assert closed
    assert split_response(reply)[0] == 408


# --- origin failures and what error pages reveal ---------------------------------------------


def assert_discreet(errsite: ErrSite, r: Response, status: int) -> None:
    """A local error page: short, and naming neither the origin nor any software."""
    assert r.status == status
    assert len(r.body) < 100
    assert not r.has("server")
    assert not r.has("x-powered-by")
    everything = (" ".join(f"{n}: {v}" for n, v in r.headers) + r.body.decode("latin-1")).lower()
    for secret in (
        LOOPBACK,
        str(errsite.origin.port),
        str(errsite.dead_port),
        "revproxy",
        "python",
        "uvloop",
        "h11",
        __version__,
    ):
        assert secret not in everything, f"error page reveals {secret!r}: {everything!r}"


def test_origin_unreachable_gets_502(errsite: ErrSite) -> None:
    assert_discreet(errsite, errsite.get("down.test"), 502)


def test_origin_timeout_gets_504(errsite: ErrSite) -> None:
    assert_discreet(errsite, errsite.get("slow.test", "/slow"), 504)


def test_origin_garbage_gets_502(errsite: ErrSite) -> None:
    assert_discreet(errsite, errsite.get("app.test", "/garbage"), 502)


def test_origin_hanging_up_gets_502(errsite: ErrSite) -> None:
    assert_discreet(errsite, errsite.get("app.test", "/hangup"), 502)


def test_origin_head_over_the_limit_gets_502(errsite: ErrSite) -> None:
    assert_discreet(errsite, errsite.get("app.test", "/huge-head"), 502)


def test_no_route_gets_a_discreet_404(errsite: ErrSite) -> None:
    assert_discreet(errsite, errsite.get("nowhere.test"), 404)


def test_origin_error_pages_lose_their_identity_headers(errsite: ErrSite) -> None:
    r = errsite.get("app.test", "/reveal-error")
    assert r.status == 500
    assert r.body == b"origin error page\n"
    assert not r.has("server") and not r.has("x-powered-by")


def test_proxy_survives_and_still_serves(errsite: ErrSite) -> None:
    assert errsite.proxy.alive
    r = errsite.get("app.test", "/still-here")
    assert r.status == 200 and r.body == b"ok /still-here\n"
    assert "Traceback" not in errsite.proxy.stderr()


# --- access log as JSON --------------------------------------------------------------------------


def test_access_log_json_lines(errsite: ErrSite) -> None:
    errsite.get("app.test", "/json-log?q=1", "--data", "hello")
    errsite.proxy.wait_access(lambda s: "/json-log" in s)
    records = [json.loads(line) for line in errsite.proxy.access_lines()]
    (rec,) = [r for r in records if r["path"] == "/json-log?q=1"]
    assert rec["client"] == "127.0.0.1"
    assert rec["listener"] == "plain"
    assert rec["sni"] == ""
    assert rec["host"] == f"app.test:{errsite.port}"
    assert rec["method"] == "POST"
    assert rec["status"] == 200
    assert rec["bytes_in"] > 5 and rec["bytes_out"] > len("ok /json-log?q=1\n")
    assert rec["backend"] == f"web/{errsite.origin.address}"
    assert rec["pool"] == "web"
    assert isinstance(rec["duration_ms"], float) and isinstance(rec["upstream_ms"], float)
    statuses = {r["status"] for r in records}
    assert {502, 504, 404} <= statuses
    down = [r for r in records if r["host"].startswith("down.test")]
    assert down and all(r["status"] == 502 for r in down)
    assert all(re.fullmatch(r"[0-9a-f]+", r["id"]) for r in records)


def test_refused_requests_get_an_access_log_line(errsite: ErrSite) -> None:
    """A request refused before it could be parsed is still a request: 400, 431 and 408 are
    logged like any other answer, with the client, the listener and the bytes."""
    before = len(errsite.proxy.access_lines())
    bad = MALFORMED["cl-and-te"]
    raw_exchange(errsite.port, bad, source="127.0.0.9", timeout=15.0)
    huge = b"GET / HTTP/1.1\r\nHost: app.test\r\nX: " + b"a" * (MAX_HEADER + 10) + b"\r\n\r\n"
    raw_exchange(errsite.port, huge, source="127.0.0.9", timeout=15.0)
    raw_exchange(errsite.port, b"GET / HTTP/1.1\r\n", source="127.0.0.9", timeout=15.0)

    def refused() -> list[dict[str, object]]:
        records = [json.loads(line) for line in errsite.proxy.access_lines()[before:]]
        return [r for r in records if r["client"] == "127.0.0.9"]

    assert wait_until(lambda: len(refused()) == 3, 10.0), refused()
    assert sorted(int(str(r["status"])) for r in refused()) == [400, 408, 431]
    for rec in refused():
        assert rec["listener"] == "plain"
        assert rec["backend"] == "-"
        assert int(str(rec["bytes_in"])) > 0 and int(str(rec["bytes_out"])) > 0
