"""Egress, the plain path of the HTTP forward proxy, end to end: requests relayed by callbacks
and from what the parsers remembered (proto/forward_proxy.py ``PlainExchanges``) give what
the parsers give — the same bytes both ways, the same records — and every exchange that leaves
the plain course (a response in pieces or longer than it said, a kept connection found closed,
a destination that does not answer, pipelining, ``Connection: close``) is served as before.

The destination is a scripted server on 127.0.0.1 (allowed by ``deny = []``) that answers by
path and counts the requests of each path, so that a test can change what it sends once the
proxy has seen the same exchange twice (and remembered it)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from egress_peers import json_lines
from harness import LOOPBACK, Proxy, free_port, wait_until

pytestmark = [pytest.mark.e2e]

# A request is remembered the second time its head is seen, and so is a response: from the
# third exchange of a path on, both are served from memory.
WARM = 3
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nX-Test: a\r\n\r\n"
IO_TIMEOUT = 10.0


@dataclass
class Destination:
    """A scripted HTTP/1.1 server: by path, on the Nth request of that path (see ``_answer``)."""

    port: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    heads: list[bytes] = field(default_factory=list)
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _answer(self, conn: socket.socket, path: str, n: int) -> bool:
        """Answer request ``n`` (from 1) of ``path``; whether the connection goes on."""
        if path == "/split" and n > WARM:
            conn.sendall(HEAD)  # the remembered head, its body later
            time.sleep(0.1)
            conn.sendall(b"hello")
            return True
        if path == "/longer" and n > WARM:
            conn.sendall(HEAD.replace(b"Length: 5", b"Length: 11") + b"hello world")
            return True
        if path == "/extra" and n > WARM:
            conn.sendall(HEAD + b"hello" + b"garbage")  # past its length: never reused
            return True
        if path == "/drop" and n == WARM + 1:
            return False  # closed without a word: the proxy sends the request again
        if path == "/silent" and n > WARM:
            time.sleep(3.0)
            return False
        conn.sendall(HEAD + b"hello")
        return True

    def serve_conn(self, conn: socket.socket) -> None:
        with self.lock:
            self.connections += 1
        buf = b""
        conn.settimeout(IO_TIMEOUT)
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                with self.lock:
                    self.heads.append(head + b"\r\n\r\n")
                    n = self.counts[path] = self.counts.get(path, 0) + 1
                if not self._answer(conn, path, n):
                    return
        except OSError:
            return
        finally:
            conn.close()


@pytest.fixture(scope="module")
def destination() -> Iterator[Destination]:
    dest = Destination()
    srv = socket.socket()
    srv.bind((LOOPBACK, 0))
    srv.listen(64)
    dest.port = srv.getsockname()[1]

    def accept() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=dest.serve_conn, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield dest
    finally:
        srv.close()


@dataclass
class Site:
    proxy: Proxy
    port: int
    dest: Destination


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, destination: Destination) -> Iterator[Site]:
    d: Path = tmp_path_factory.mktemp("egress-plain")
    port = free_port()
    config = f"""
[global]
access_log_format = "json"

[[listener]]
name = "plain"
bind = ["{LOOPBACK}:{port}"]
mode = "forward"
egress = "tests"

[egress.tests]
destinations = ["127.0.0.1"]
ports = ["1025-65535"]
deny = []          # the destination is on loopback, which the default denies
timeouts = {{ connect = "2s", idle = "1s" }}
"""
    with Proxy(d, config, ports=[port]) as proxy:
        yield Site(proxy, port, destination)


def _request(site: Site, path: str, extra: bytes = b"") -> bytes:
    return (
        f"GET http://127.0.0.1:{site.dest.port}{path} HTTP/1.1\r\n".encode()
        + f"Host: 127.0.0.1:{site.dest.port}\r\n".encode()
        + b"User-Agent: plain-test\r\nProxy-Connection: Keep-Alive\r\n"
        + b"X-Forwarded-For: 192.0.2.9\r\nVia: 1.1 elsewhere\r\n"
        + extra
        + b"\r\n"
    )


def _read_response(sock: socket.socket) -> bytes:
    """One response with a Content-Length (or none: to the end), head and body, and not a
    byte more: a pipelined response after it stays in the socket for the next call."""
    buf = b""
    while not buf.endswith(b"\r\n\r\n"):
        chunk = sock.recv(1)  # the head byte by byte: it is short
        if not chunk:
            return buf
        buf += chunk
    head, body = buf[:-4], b""
    length = -1
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while length < 0 or len(body) < length:
        chunk = sock.recv(65536 if length < 0 else length - len(body))
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def _connect(site: Site) -> socket.socket:
    return socket.create_connection((LOOPBACK, site.port), timeout=IO_TIMEOUT)


def _records(site: Site, path: str) -> list[dict[str, object]]:
    return [
        r
        for r in json_lines(site.proxy.stdout())
        if r.get("listener") == "plain" and r.get("path") == path
    ]


def _heads_for(site: Site, path: str) -> list[bytes]:
    with site.dest.lock:
        return [h for h in site.dest.heads if h.split(b" ", 2)[1] == path.encode()]


def test_remembered_exchanges_give_the_same_bytes(site: Site) -> None:
    path = "/same"
    with _connect(site) as sock:
        answers = []
        for _ in range(WARM + 3):
            sock.sendall(_request(site, path))
            answers.append(_read_response(sock))
    assert len(set(answers)) == 1, answers
    assert answers[0].startswith(b"HTTP/1.1 200 OK\r\n") and answers[0].endswith(b"hello")
    heads = _heads_for(site, path)
    assert len(set(heads)) == 1 and len(heads) == WARM + 3
    # Removed and nothing added; Host is the target's authority, first.
    assert heads[0] == (
        f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1:{site.dest.port}\r\n".encode()
        + b"user-agent: plain-test\r\n\r\n"
    ), heads[0]
    assert wait_until(lambda: len(_records(site, path)) == WARM + 3, 10.0)
    records = _records(site, path)
    for rec in records:
        assert rec["status"] == 200
        assert rec["bytes_out"] == len(answers[0])
        assert rec["bytes_in"] == len(_request(site, path))
        assert rec["destination"] == f"127.0.0.1:{site.dest.port}"
        assert rec["backend"] == f"127.0.0.1:{site.dest.port}"


def test_many_connections_share_what_was_remembered(site: Site) -> None:
    path = "/shared"
    for _ in range(WARM + 2):
        with _connect(site) as sock:
            for _ in range(2):
                sock.sendall(_request(site, path))
                assert _read_response(sock).endswith(b"\r\n\r\nhello")


@pytest.mark.parametrize("path", ["/split", "/longer"])
def test_a_response_unlike_the_remembered_one(site: Site, path: str) -> None:
    with _connect(site) as sock:
        for i in range(WARM + 2):
            sock.sendall(_request(site, path))
            answer = _read_response(sock)
            if path == "/longer" and i >= WARM:
                assert answer.endswith(b"\r\n\r\nhello world"), answer
                assert b"content-length: 11" in answer.lower()
            else:
                assert answer.endswith(b"\r\n\r\nhello"), answer


def test_bytes_past_the_response_end_the_kept_connection(site: Site) -> None:
    path = "/extra"
    with _connect(site) as sock:
        for _ in range(WARM + 1):
            sock.sendall(_request(site, path))
            assert _read_response(sock).endswith(b"\r\n\r\nhello")
        before = site.dest.connections
        sock.sendall(_request(site, "/same"))
        assert _read_response(sock).endswith(b"\r\n\r\nhello")
    assert site.dest.connections == before + 1  # the confused connection was not reused


def test_a_kept_connection_closed_under_a_remembered_request(site: Site) -> None:
    path = "/drop"
    with _connect(site) as sock:
        for _ in range(WARM + 1):
            sock.sendall(_request(site, path))
            assert _read_response(sock).endswith(b"\r\n\r\nhello")
    # The (WARM + 1)th went twice: the kept connection closed without an answer, a new one
    # answered it.
    assert len(_heads_for(site, path)) == WARM + 2
    assert wait_until(lambda: len(_records(site, path)) == WARM + 1, 10.0)
    assert all(r["status"] == 200 for r in _records(site, path))


def test_a_destination_that_does_not_answer(site: Site) -> None:
    path = "/silent"
    with _connect(site) as sock:
        for _ in range(WARM):
            sock.sendall(_request(site, path))
            assert _read_response(sock).endswith(b"\r\n\r\nhello")
        started = time.monotonic()
        sock.sendall(_request(site, path))
        answer = _read_response(sock)
        assert answer.startswith(b"HTTP/1.1 504 "), answer
        assert time.monotonic() - started < 2.9  # timeouts.idle, not the destination's end
        assert sock.recv(1) == b""  # and the connection closes
    assert wait_until(lambda: len(_records(site, path)) == WARM + 1, 10.0)
    assert _records(site, path)[-1]["status"] == 504


def test_pipelined_requests_answered_in_order(site: Site) -> None:
    with _connect(site) as sock:
        for _ in range(WARM):
            sock.sendall(_request(site, "/same"))
            _read_response(sock)
        sock.sendall(_request(site, "/same") + _request(site, "/other") + _request(site, "/same"))
        answers = [_read_response(sock) for _ in range(3)]
    assert all(a.endswith(b"\r\n\r\nhello") for a in answers), answers
    assert len(_heads_for(site, "/other")) >= 1


def test_a_request_that_closes_is_not_remembered(site: Site) -> None:
    path = "/closing"
    for _ in range(WARM + 1):
        with _connect(site) as sock:
            sock.sendall(_request(site, path, b"Connection: close\r\n"))
            answer = _read_response(sock)
            assert answer.endswith(b"\r\n\r\nhello")
            assert b"connection: close" in answer.lower()
            assert sock.recv(1) == b""


def test_a_client_that_leaves_while_its_request_waits(site: Site) -> None:
    path = "/split"
    with _connect(site) as sock:
        sock.sendall(_request(site, path))
        sock.shutdown(socket.SHUT_WR)
        assert _read_response(sock).endswith(b"\r\n\r\nhello")
        assert sock.recv(1) == b""
    with _connect(site) as sock:  # the proxy goes on
        sock.sendall(_request(site, "/same"))
        assert _read_response(sock).endswith(b"\r\n\r\nhello")
