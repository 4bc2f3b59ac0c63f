"""Egress in operation, end to end: a reload (``revproxy reload`` and SIGHUP) while CONNECT and
SOCKS5 tunnels carry data and a forward connection is kept alive — the rules changed (the
destination removed): the tunnels finish whole, new connections and the kept connection's next
request get the new rules; a kept connection across reloads that remove and add destinations,
remove a user, change the listener's allow list or remove the listener; egress listeners served
by several workers (``workers = 2`` and ``"auto"``) with their /metrics counters summed over
the workers; and the admin's egress rows (``ctl show info``, /stats): tunnels open, bytes each
way, decisions. Destinations are harness origins on 127.0.0.1."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import signal
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest
from egress_peers import PASSWORD, USER, json_lines, users_files, users_tables
from harness import (
    LOOPBACK,
    Origin,
    Proxy,
    Reply,
    Seen,
    curl_http,
    free_port,
    generated,
    generated_sha256,
    read_response,
    run_cli,
    split_response,
    toml_path,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("real_peers")]

BIG = 16 * 1024 * 1024
# What a tunnel has carried when the reload comes: the rest is still to flow.
BEFORE_RELOAD = 1024 * 1024
# Tunnels held open at once in the workers test.
HELD = 8
TIMEOUT = 30.0


def _handler(seen: Seen) -> Reply:
    if seen.target == "/big":
        return Reply(body=generated(BIG), length=BIG)
    return Reply(body=f"hello {seen.method} {seen.target}\n".encode())


@dataclass
class Ports:
    fwd: int
    socks: int
    admin: int

    @property
    def all(self) -> list[int]:
        return [self.fwd, self.socks, self.admin]


def config(
    d: Path,
    ports: Ports,
    dest: int | list[int] | None,
    *,
    workers: int | str = 1,
    fwd: str = "fwd",
    allow: str = "",
) -> str:
    """forward + socks5 listeners (Basic users) on one egress section that allows the origin
    at ``dest`` (or each of a list; None: nothing). ``fwd``: the forward listener's name;
    ``allow``: its allow list (TOML), if any."""
    basic, digest = users_files(d)
    dests = [] if dest is None else [dest] if isinstance(dest, int) else dest
    destinations = "[" + ", ".join(f'"127.0.0.1:{port}"' for port in dests) + "]"
    workers_value = f'"{workers}"' if isinstance(workers, str) else str(workers)
    allow_line = f"allow = {allow}" if allow else ""
    return f"""
[global]
access_log_format = "json"
workers = {workers_value}
shutdown_timeout = "5s"
watch = false      # the test reloads by itself

[admin]
socket = {toml_path(d / "admin.sock")}
bind = "{LOOPBACK}:{ports.admin}"
{users_tables(basic, digest)}
[[listener]]
name = "{fwd}"
bind = ["{LOOPBACK}:{ports.fwd}"]
mode = "forward"
egress = "ops"
auth = {{ users = "apps", scheme = "basic" }}
{allow_line}

[[listener]]
name = "socks"
bind = ["{LOOPBACK}:{ports.socks}"]
mode = "socks5"
egress = "ops"
auth = {{ users = "apps" }}

[egress.ops]
destinations = {destinations}
connect_ports = ["1025-65535"]
deny = []          # the destination is on loopback, which the default denies
"""


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    with Origin("dest", handler=_handler) as o:
        yield o


def _ports() -> Ports:
    return Ports(free_port(), free_port(), free_port())


# --- clients ---------------------------------------------------------------------------------

AUTH = "Proxy-Authorization: Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        piece = sock.recv(n - len(data))
        if not piece:
            raise AssertionError(f"closed after {data!r}")
        data += piece
    return data


def connect_tunnel(port: int, dest: int) -> tuple[socket.socket, int]:
    """A CONNECT to 127.0.0.1:``dest`` through the forward listener: (socket, status)."""
    sock = socket.create_connection((LOOPBACK, port), timeout=TIMEOUT)
    target = f"{LOOPBACK}:{dest}"
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{AUTH}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        piece = sock.recv(1)
        if not piece:
            break
        head += piece
    status = int(head.split(b" ", 2)[1]) if head else 0
    return sock, status


def socks_tunnel(port: int, dest: int) -> tuple[socket.socket, int]:
    """A SOCKS5 CONNECT (RFC 1928, RFC 1929 user) to 127.0.0.1:``dest``: (socket, REP)."""
    sock = socket.create_connection((LOOPBACK, port), timeout=TIMEOUT)
    sock.sendall(b"\x05\x01\x02")
    assert _recv_exact(sock, 2) == b"\x05\x02"
    sock.sendall(bytes([1, len(USER)]) + USER.encode() + bytes([len(PASSWORD)]) + PASSWORD.encode())
    assert _recv_exact(sock, 2) == b"\x01\x00"
    sock.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(LOOPBACK) + struct.pack("!H", dest))
    version, rep, _, atyp = _recv_exact(sock, 4)
    assert version == 5
    _recv_exact(sock, {1: 4, 4: 16}.get(atyp, 0) + 2)
    return sock, rep


class BigDownload:
    """``GET /big`` inside a tunnel, read in two parts so that a reload can come between."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.hash = hashlib.sha256()
        self.got = 0
        self.length = -1
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: dest\r\nConnection: close\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            piece = sock.recv(65536)
            assert piece, head
            head += piece
        head, _, rest = head.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        self.length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])  # type: ignore[index]
        self._take(rest)

    def _take(self, data: bytes) -> None:
        self.hash.update(data)
        self.got += len(data)

    def read(self, upto: int) -> None:
        while self.got < min(upto, self.length):
            piece = self.sock.recv(65536)
            assert piece, f"tunnel closed after {self.got} bytes"
            self._take(piece)

    def finish(self) -> str:
        """Read to the end (the destination closes: Connection: close); the body's sha256."""
        while piece := self.sock.recv(1 << 20):
            self._take(piece)
        assert self.got == self.length == BIG
        return self.hash.hexdigest()


def forward_get(sock: socket.socket, dest: int, path: str) -> tuple[int, bytes]:
    """One absolute-form GET on an open forward connection: (status, body)."""
    url = f"http://{LOOPBACK}:{dest}{path}"
    sock.sendall(f"GET {url} HTTP/1.1\r\nHost: {LOOPBACK}:{dest}\r\n{AUTH}\r\n\r\n".encode())
    status, _, body, rest = split_response(read_response(sock))
    assert rest == b""
    return status, body


def ctl(proxy: Proxy, *words: str) -> str:
    res = run_cli("ctl", "-c", str(proxy.conf), *words)
    assert res.returncode == 0, res.stderr
    return res.stdout


def generation(proxy: Proxy) -> int:
    """The generation serving (0 while the admin socket does not answer)."""
    res = run_cli("ctl", "-c", str(proxy.conf), "show", "info")
    m = re.search(r"generation: (\d+)", res.stdout)
    return int(m[1]) if res.returncode == 0 and m else 0


def egress_rows(proxy: Proxy) -> dict[str, dict[str, str]]:
    """``ctl show info``'s egress rows by listener."""
    text = ctl(proxy, "show", "info")
    assert "egress listeners:" in text, text
    lines = text.split("egress listeners:", 1)[1].strip().splitlines()
    keys = ["mode", "egress", "tunnels", "bytes_in", "bytes_out", "allowed", "denied", "auth"]
    rows = {}
    for line in lines[1:]:
        cells = line.split()
        rows[cells[0]] = dict(zip(keys, cells[1:], strict=True))
    return rows


def metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{name}\{{{re.escape(want)}\}} (\S+)$", text, re.M)
    return float(m[1]) if m else 0.0


def _catches(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` (SigCgt in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


def _records(proxy: Proxy, method: str) -> list[dict[str, object]]:
    return [r for r in json_lines(proxy.stdout()) if r.get("method") == method]


# --- reload with tunnels in flight ----------------------------------------------------------------


@pytest.mark.parametrize(("workers", "how"), [(1, "reload"), (2, "sighup")])
def test_reload_with_tunnels_in_flight(
    tmp_path: Path, origin: Origin, workers: int, how: str
) -> None:
    ports = _ports()
    with Proxy(tmp_path, config(tmp_path, ports, origin.port, workers=workers),
               ports=ports.all) as proxy:  # fmt: skip
        conn_sock, status = connect_tunnel(ports.fwd, origin.port)
        assert status == 200
        socks_sock, rep = socks_tunnel(ports.socks, origin.port)
        assert rep == 0
        kept = socket.create_connection((LOOPBACK, ports.fwd), timeout=TIMEOUT)
        with conn_sock, socks_sock, kept:
            downloads = [BigDownload(conn_sock), BigDownload(socks_sock)]
            for dl in downloads:
                dl.read(BEFORE_RELOAD)  # the tunnels carry data; the rest is on its way
            assert forward_get(kept, origin.port, "/ka1") == (200, b"hello GET /ka1\n")

            # The destination is removed from the rules.
            (proxy.conf / "10-test.toml").write_text(config(tmp_path, ports, None, workers=workers))
            if how == "reload":
                res = run_cli("reload", "-c", str(proxy.conf))
                assert res.returncode == 0, res.stderr
            else:
                # Once started, the master catches SIGHUP (before, it would end it).
                assert wait_until(lambda: _catches(proxy.pid, signal.SIGHUP), TIMEOUT)
                os.kill(proxy.pid, signal.SIGHUP)
            assert wait_until(lambda: generation(proxy) == 2, TIMEOUT), proxy.stderr()

            # New connections get the new rules.
            _, status = connect_tunnel(ports.fwd, origin.port)
            assert status == 403
            _, rep = socks_tunnel(ports.socks, origin.port)
            assert rep == 0x02  # not allowed by the rules
            with socket.create_connection((LOOPBACK, ports.fwd), timeout=TIMEOUT) as fresh:
                assert forward_get(fresh, origin.port, "/new")[0] == 403

            # The tunnels in flight finish on the rules they started with, every byte intact.
            for dl in downloads:
                assert dl.finish() == generated_sha256(BIG)
            # The kept-alive forward connection went through the reload: its next request is
            # judged by the new rules (as Squid after ``squid -k reconfigure``).
            before = len(origin.seen)
            assert forward_get(kept, origin.port, "/ka2")[0] == 403
            assert len(origin.seen) == before

        assert wait_until(lambda: len(_records(proxy, "CONNECT")) >= 2, TIMEOUT)
        assert wait_until(lambda: len(_records(proxy, "SOCKS5")) >= 2, TIMEOUT)
        for method in ("CONNECT", "SOCKS5"):
            whole, refused = _records(proxy, method)[:2]
            if whole.get("refused"):
                whole, refused = refused, whole
            assert whole["status"] == 200 and int(str(whole["bytes_out"])) >= BIG, whole
            assert refused["refused"] == "destination", refused
        rows = egress_rows(proxy)
        assert rows["fwd"]["tunnels"] == rows["socks"]["tunnels"] == "0"
        assert rows["fwd"]["denied"] == "3" and rows["socks"]["denied"] == "1", rows
        assert int(rows["socks"]["bytes_out"]) >= BIG


# --- a kept connection follows the reloads ----------------------------------------------------


def exchange(sock: socket.socket, request: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """One request on an open forward connection: (status, headers, body)."""
    sock.sendall(request)
    status, headers, body, rest = split_response(read_response(sock))
    assert rest == b""
    return status, headers, body


def get_request(dest: int, path: str, auth: str = AUTH) -> bytes:
    url = f"http://{LOOPBACK}:{dest}{path}"
    return f"GET {url} HTTP/1.1\r\nHost: {LOOPBACK}:{dest}\r\n{auth}\r\n\r\n".encode()


def basic_auth(user: str, password: str) -> str:
    return "Proxy-Authorization: Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def reload_to(proxy: Proxy, text: str, number: int) -> None:
    """Write ``text`` as the configuration, ``revproxy reload``, wait for generation ``number``."""
    (proxy.conf / "10-test.toml").write_text(text)
    res = run_cli("reload", "-c", str(proxy.conf))
    assert res.returncode == 0, res.stderr
    assert wait_until(lambda: generation(proxy) == number, TIMEOUT), proxy.stderr()


def listener_records(proxy: Proxy, count: int, listener: str = "fwd") -> list[dict[str, object]]:
    """The access-log records of ``listener``, once there are ``count`` of them."""

    def records() -> list[dict[str, object]]:
        return [r for r in json_lines(proxy.stdout()) if r.get("listener") == listener]

    assert wait_until(lambda: len(records()) >= count, TIMEOUT), proxy.stdout()
    return records()


def closed_by_proxy(sock: socket.socket) -> bool:
    sock.settimeout(TIMEOUT)
    return sock.recv(1) == b""


def test_kept_connection_follows_destinations_across_reloads(
    tmp_path: Path, origin: Origin
) -> None:
    ports = _ports()
    with Origin("dest-b") as other, Proxy(tmp_path, config(tmp_path, ports, origin.port),
                                           ports=ports.all) as proxy:  # fmt: skip
        a, b = origin.port, other.port
        with socket.create_connection((LOOPBACK, ports.fwd), timeout=TIMEOUT) as kept:
            # The same request three times: the third is a remembered one (the plain path's
            # memory of exchanges), answered without either parser.
            for _ in range(3):
                assert exchange(kept, get_request(a, "/same"))[::2] == (200, b"hello GET /same\n")
            first_conn = origin.seen[-1].conn
            assert exchange(kept, get_request(b, "/b1"))[0] == 403

            # Only B allowed now: the same connection's next requests follow.
            reload_to(proxy, config(tmp_path, ports, b), 2)
            seen_a = len(origin.seen)
            assert exchange(kept, get_request(a, "/same"))[0] == 403  # the remembered one too
            assert exchange(kept, get_request(b, "/b2"))[::2] == (200, b"dest-b GET /b2\n")
            status, _ = connect_on(kept, a)
            assert status == 403
            assert len(origin.seen) == seen_a  # nothing reached A after the reload

            # A and B: A again, on a new destination connection (the one kept under the first
            # rules was closed when they changed); then a CONNECT to B.
            reload_to(proxy, config(tmp_path, ports, [a, b]), 3)
            assert exchange(kept, get_request(a, "/same"))[::2] == (200, b"hello GET /same\n")
            assert origin.seen[-1].conn != first_conn
            status, _ = connect_on(kept, b)
            assert status == 200
            kept.sendall(b"GET /in HTTP/1.1\r\nHost: dest-b\r\nConnection: close\r\n\r\n")
            data = b""
            while piece := kept.recv(65536):
                data += piece
            assert data.endswith(b"dest-b GET /in\n")

        records = listener_records(proxy, 9)
        decisions = [(r["method"], r.get("refused") or r["status"]) for r in records]
        assert decisions == [
            ("GET", 200), ("GET", 200), ("GET", 200), ("GET", "destination"),
            ("GET", "destination"), ("GET", 200), ("CONNECT", "destination"),
            ("GET", 200), ("CONNECT", 200),
        ], decisions  # fmt: skip


def connect_on(sock: socket.socket, dest: int) -> tuple[int, bytes]:
    """A CONNECT on an open forward connection: (status, the body of a refusal)."""
    target = f"{LOOPBACK}:{dest}"
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{AUTH}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        piece = sock.recv(1)
        assert piece, head
        head += piece
    status = int(head.split(b" ", 2)[1])
    if status == 200:
        return status, b""
    length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])  # type: ignore[index]
    return status, _recv_exact(sock, length)


def test_kept_connection_follows_users_across_reload(tmp_path: Path, origin: Origin) -> None:
    ports = _ports()
    text = config(tmp_path, ports, origin.port)
    basic = tmp_path / "apps.htpasswd"

    def users(*names: str) -> None:
        hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(5)).decode()
        basic.write_text("".join(f"{name}:{hashed}\n" for name in names))

    users(USER, "ops")
    with Proxy(tmp_path, text, ports=ports.all) as proxy:
        with socket.create_connection((LOOPBACK, ports.fwd), timeout=TIMEOUT) as kept:
            for _ in range(3):  # the user's password is known (checked once) after the first
                assert exchange(kept, get_request(origin.port, "/u"))[0] == 200
            kept_conn = origin.seen[-1].conn

            users("ops")  # USER removed; the egress section is the same
            reload_to(proxy, text, 2)
            status, headers, _ = exchange(kept, get_request(origin.port, "/u"))
            assert status == 407
            challenge = dict(headers)["proxy-authenticate"]
            assert challenge.startswith('Basic realm="restricted"'), challenge
            # The other user goes on, on the destination connection kept (same rules).
            ops = basic_auth("ops", PASSWORD)
            assert exchange(kept, get_request(origin.port, "/o", ops))[0] == 200
            assert origin.seen[-1].conn == kept_conn
        records = listener_records(proxy, 5)
        assert [r.get("refused") or r["status"] for r in records] == [200, 200, 200, "auth", 200]


@pytest.mark.parametrize("change", ["allow", "listener"])
def test_kept_connection_refused_when_its_listener_changes(
    tmp_path: Path, origin: Origin, change: str
) -> None:
    ports = _ports()
    with Proxy(tmp_path, config(tmp_path, ports, origin.port), ports=ports.all) as proxy:
        with socket.create_connection((LOOPBACK, ports.fwd), timeout=TIMEOUT) as kept:
            assert exchange(kept, get_request(origin.port, "/l"))[0] == 200
            if change == "allow":  # the client (127.0.0.1) is no longer allowed in
                text = config(tmp_path, ports, origin.port, allow='["10.0.0.0/8"]')
                reason, said = "deny", b"client not allowed (reloaded)\n"
            else:  # the forward listener is gone (another name, another port)
                moved = Ports(free_port(), ports.socks, ports.admin)
                text = config(tmp_path, moved, origin.port, fwd="fwd2")
                reason, said = "listener-gone", b"listener no longer configured (reloaded)\n"
            reload_to(proxy, text, 2)
            status, headers, body = exchange(kept, get_request(origin.port, "/l"))
            assert (status, body) == (403, said)
            assert ("connection", "close") in headers
            assert closed_by_proxy(kept)
        records = listener_records(proxy, 2)
        assert [r.get("refused") or r["status"] for r in records] == [200, reason]
        assert f"decision={reason}" in proxy.stderr()


# --- workers ------------------------------------------------------------------------------------


def _tcp_inodes(port: int) -> set[str]:
    """Socket inodes of established TCP connections whose local port is ``port``."""
    out: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
                    out.add(inode)
    return out


def _holders(pids: list[int], inodes: set[str]) -> dict[int, int]:
    """How many of the sockets ``inodes`` each process holds."""
    held: dict[int, int] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        held[pid] = held.get(pid, 0) + 1
    return held


def worker_pids(proxy: Proxy) -> list[int]:
    m = re.search(r"processes: \d+ workers \[([\d, ]*)\]", ctl(proxy, "show", "info"))
    return [int(x) for x in m[1].split(",") if x.strip()] if m else []


@pytest.mark.parametrize("workers", [2, "auto"])
def test_workers_serve_egress_and_sum_its_counters(
    tmp_path: Path, origin: Origin, workers: int | str
) -> None:
    # "auto": the CPUs revproxy may run on (docs/operations.md).
    count = len(os.sched_getaffinity(0)) if workers == "auto" else int(workers)
    ports = _ports()
    with Proxy(tmp_path, config(tmp_path, ports, origin.port, workers=workers),
               ports=ports.all) as proxy:  # fmt: skip
        # Every worker is up (they start after the master bound the listeners).
        expected = count if count > 1 else 0
        assert wait_until(lambda: len(worker_pids(proxy)) == expected, TIMEOUT), proxy.stderr()
        pids = worker_pids(proxy)
        # Forward requests, each on a connection of its own (any worker may take it).
        for i in range(10):
            with socket.create_connection((LOOPBACK, ports.fwd), timeout=TIMEOUT) as s:
                assert forward_get(s, origin.port, f"/w{i}") == (200, f"hello GET /w{i}\n".encode())
        # A refusal of each kind: no credentials (auth), a port not allowed (destination).
        assert curl_http(f"http://{LOOPBACK}:{origin.port}/",
                         "--proxy", f"http://{LOOPBACK}:{ports.fwd}").status == 407  # fmt: skip
        _, status = connect_tunnel(ports.fwd, free_port())
        assert status == 403
        # Tunnels held open at once, then used.
        tunnels: list[socket.socket] = []
        try:
            for _ in range(HELD):
                sock, status = connect_tunnel(ports.fwd, origin.port)
                tunnels.append(sock)
                assert status == 200
                sock, rep = socks_tunnel(ports.socks, origin.port)
                tunnels.append(sock)
                assert rep == 0
            held = _holders(pids or [proxy.pid], _tcp_inodes(ports.fwd) | _tcp_inodes(ports.socks))
            assert sum(held.values()) >= 2 * HELD
            if count > 1:
                assert len(held) > 1, f"every tunnel landed on one worker: {held}"
            rows = egress_rows(proxy)
            assert rows["fwd"]["tunnels"] == rows["socks"]["tunnels"] == str(HELD), rows
            assert (rows["fwd"]["mode"], rows["fwd"]["egress"]) == ("forward", "ops")
            assert (rows["socks"]["mode"], rows["socks"]["egress"]) == ("socks5", "ops")
            page = curl_http(f"http://{LOOPBACK}:{ports.admin}/stats").body.decode()
            assert "<h2>Egress</h2>" in page and "<td>socks5</td>" in page
            for sock in tunnels:
                sock.sendall(b"GET /in HTTP/1.1\r\nHost: dest\r\nConnection: close\r\n\r\n")
            for sock in tunnels:
                data = b""
                while piece := sock.recv(65536):
                    data += piece
                assert data.endswith(b"hello GET /in\n")
        finally:
            for sock in tunnels:
                sock.close()

        def tunnels_closed() -> bool:
            rows = egress_rows(proxy)
            return rows["fwd"]["tunnels"] == rows["socks"]["tunnels"] == "0"

        assert wait_until(tunnels_closed, TIMEOUT)
        metrics = curl_http(f"http://{LOOPBACK}:{ports.admin}/metrics").body.decode()
        allow = {"user": USER, "decision": "allow"}
        assert metric(metrics, "revproxy_egress_total", listener="fwd", **allow) == 10 + HELD
        assert metric(metrics, "revproxy_egress_total", listener="socks", **allow) == HELD
        assert metric(metrics, "revproxy_egress_total", listener="fwd", user="-",
                      decision="auth") == 1  # fmt: skip
        assert metric(metrics, "revproxy_egress_total", listener="fwd", user=USER,
                      decision="destination") == 1  # fmt: skip
        assert metric(metrics, "revproxy_egress_tunnels_open", listener="fwd") == 0
        rows = egress_rows(proxy)
        assert rows["fwd"]["allowed"] == str(10 + HELD)
        assert rows["fwd"]["denied"] == "1" and rows["fwd"]["auth"] == "1"
        assert rows["socks"]["allowed"] == str(HELD) and rows["socks"]["denied"] == "0"
        sent = metric(metrics, "revproxy_sent_bytes_total", listener="socks")
        assert int(rows["socks"]["bytes_out"]) == sent > 0
        received = metric(metrics, "revproxy_received_bytes_total", listener="fwd")
        assert int(rows["fwd"]["bytes_in"]) == received > 0
