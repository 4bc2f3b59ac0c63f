"""PROXY protocol end to end: headers in from HAProxy, curl and raw sockets; headers out to
nginx and to a recording origin, for requests and for health checks.

One proxy serves the module. Its listeners trust 127.0.0.1 (HAProxy and the raw clients) and
127.0.0.5/.6 (curl, which writes its own connection's addresses into a v1 header); clients
that must not be believed connect from 127.0.0.66. Raw clients name documentation addresses
(198.51.100.7, 2001:db8::7) that no socket can have, so a test tells "the header was used"
from "the socket was used". Access-log lines are found by a path unique to each test.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import struct
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from harness import (
    LOOPBACK,
    Origin,
    Proxy,
    Response,
    curl,
    curl_http,
    free_port,
    make_cert,
    raw_exchange,
    split_response,
    wait_until,
)

from revproxy.errors import ProxyProtocolError
from revproxy.proto import proxy_protocol as pp

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("real_peers")]

# curl's source address: trusted, and distinct from the peers HAProxy and raw clients use.
CURL_CLIENT = "127.0.0.5"
# A second curl client, to prove two clients never share a PROXY-carrying origin connection.
OTHER_CLIENT = "127.0.0.6"
# A peer outside every `trusted` list.
UNTRUSTED = "127.0.0.66"
# Client addresses only a PROXY header can carry (documentation ranges, RFC 5737 / 3849).
CLIENT_V4 = "198.51.100.7"
CLIENT_V6 = "2001:db8::7"
DEST_V4 = ("192.0.2.1", 443)
DEST_V6 = ("2001:db8::1", 443)
# How long a listener waits for a complete PROXY header here.
HEADER_TIMEOUT = "1s"
# Active health checks of the pools that send PROXY headers.
HEALTH_INTERVAL = "1s"
# Bound on starting a peer (HAProxy, nginx).
PEER_START_TIMEOUT = 20.0


def need(tool: str) -> str:
    """The path of ``tool``; a missing peer fails loudly (CI installs it)."""
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed: apt-get install -y {tool}")
    return path


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Wait until something accepts on ``port`` or ``proc`` exits (bounded)."""

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{proc.args[0]} exited with {proc.returncode}:\n"
                + log.read_text(errors="replace")[-3000:]
            )
        try:
            with socket.create_connection((LOOPBACK, port), timeout=1.0):
                return True
        except OSError:
            return False

    if not wait_until(up, PEER_START_TIMEOUT):
        raise RuntimeError(
            f"{proc.args[0]} did not listen on {port}:\n" + log.read_text(errors="replace")[-3000:]
        )


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5.0)


# --- an origin that expects a PROXY header and records it -------------------------------------


@dataclass
class Received:
    header: pp.ProxyHeader | None
    error: str
    request_head: bytes


@dataclass
class PPOrigin:
    """Reads a PROXY header (v1 or v2) then one request per connection, and answers naming the
    header's source; remembers every header it was sent."""

    received: list[Received] = field(default_factory=list)
    port: int = 0
    _sock: socket.socket | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> PPOrigin:
        sock = socket.socket()
        sock.bind((LOOPBACK, 0))
        sock.listen(64)
        sock.settimeout(0.2)
        self._sock = sock
        self.port = int(sock.getsockname()[1])
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._sock is not None:
            self._sock.close()
        for t in self._threads:
            t.join(timeout=5.0)

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10.0)
        buf = b""
        header: pp.ProxyHeader | None = None
        try:
            while header is None:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                buf += chunk
                try:
                    header = pp.parse(buf)
                except ProxyProtocolError as exc:
                    self.received.append(Received(None, str(exc), buf))
                    return
            rest = buf[header.length :]
            while b"\r\n\r\n" not in rest:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                rest += chunk
            self.received.append(Received(header, "", rest.split(b"\r\n\r\n", 1)[0]))
            src = header.source[0] if header.source else "-"
            body = f"pp-origin v{header.version} {header.family.name} {src}\n".encode()
            conn.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
                + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
                + body
            )
        except OSError:
            return
        finally:
            conn.close()

    def last_for(self, path: str) -> Received:
        for r in reversed(self.received):
            if r.request_head.split(b" ", 2)[1:2] == [path.encode()]:
                return r
        raise AssertionError(f"{path} never reached the origin: {self.received!r}")


# --- nginx as an origin that speaks PROXY --------------------------------------------------


NGINX_CONF = """
master_process off;
worker_processes 1;
events {{ worker_connections 64; }}
http {{
    log_format pp '$proxy_protocol_addr|$request_uri|$http_user_agent';
    access_log {tmp}/access.log pp;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port} proxy_protocol;
        location / {{
            default_type text/plain;
            return 200 "nginx addr=$proxy_protocol_addr peer=$remote_addr\\n";
        }}
    }}
}}
"""


@contextlib.contextmanager
def nginx_origin(directory: Path) -> Iterator[int]:
    nginx = need("nginx")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = directory / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=directory, port=port))
    log = directory / "error.log"
    globals_ = f"daemon off; pid {directory}/nginx.pid; error_log {log} info;"
    with open(directory / "nginx.out", "wb") as out:
        proc = subprocess.Popen(
            [nginx, "-p", str(directory), "-c", str(conf), "-e", str(log), "-g", globals_],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        wait_port(port, proc, log)
        yield port
    finally:
        stop_process(proc)


# --- HAProxy in front of revproxy ----------------------------------------------------------


HAPROXY_CONF = """
global
    log stderr format raw local0 info
defaults
    mode tcp
    log global
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend v1
    bind 127.0.0.1:{v1}
    default_backend to_v1
backend to_v1
    server rp 127.0.0.1:{target} send-proxy
frontend v2
    bind 127.0.0.1:{v2}
    unique-id-format %{{+X}}o\\ %ci:%cp_%fi:%fp_%Ts_%rt:%pid
    default_backend to_v2
backend to_v2
    server rp 127.0.0.1:{target} send-proxy-v2 proxy-v2-options unique-id,crc32c
frontend v2tls
    bind 127.0.0.1:{v2tls} ssl crt {pem} alpn http/1.1
    unique-id-format %{{+X}}o\\ %ci:%cp_%fi:%fp_%Ts_%rt:%pid
    default_backend to_v2tls
backend to_v2tls
    server rp 127.0.0.1:{target} send-proxy-v2 proxy-v2-options ssl,authority,unique-id,crc32c
"""


@dataclass
class HAProxy:
    v1: int
    v2: int
    v2tls: int


@contextlib.contextmanager
def haproxy_front(directory: Path, target: int, pem: Path) -> Iterator[HAProxy]:
    haproxy = need("haproxy")
    directory.mkdir(parents=True, exist_ok=True)
    ports = HAProxy(free_port(), free_port(), free_port())
    conf = directory / "haproxy.cfg"
    conf.write_text(
        HAPROXY_CONF.format(v1=ports.v1, v2=ports.v2, v2tls=ports.v2tls, target=target, pem=pem)
    )
    log = directory / "haproxy.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [haproxy, "-db", "-f", str(conf)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        for port in (ports.v1, ports.v2, ports.v2tls):
            wait_port(port, proc, log)
        yield ports
    finally:
        stop_process(proc)


# --- the proxy -------------------------------------------------------------------------------


@dataclass
class Setup:
    proxy: Proxy
    required: int  # proxy_protocol required, plain HTTP
    optional: int  # proxy_protocol optional, plain HTTP
    tls: int  # proxy_protocol required, TLS
    plain: int  # no PROXY protocol
    web: Origin
    rec: PPOrigin
    hc: PPOrigin
    nginx: int
    nginx_dir: Path
    haproxy: HAProxy
    ca: ssl.SSLContext
    cert: Path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    need("curl")
    tmp = tmp_path_factory.mktemp("pp")
    cert, key = make_cert(tmp, "site", ["pp.test", "rec1.test", "rec2.test"])
    pem = tmp / "haproxy.pem"
    pem.write_bytes(cert.read_bytes() + key.read_bytes())
    ca = ssl.create_default_context(cafile=str(cert))
    required, optional, tls, plain = free_port(), free_port(), free_port(), free_port()
    trusted = f'["127.0.0.1/32", "{CURL_CLIENT}/32", "{OTHER_CLIENT}/32"]'

    def pp_in(mode: str) -> str:
        return f'{{ mode = "{mode}", trusted = {trusted}, timeout = "{HEADER_TIMEOUT}" }}'

    with contextlib.ExitStack() as stack:
        web = stack.enter_context(Origin("web"))
        src = [stack.enter_context(Origin(f"src{i}")) for i in (1, 2)]
        rec = PPOrigin().start()
        stack.callback(rec.stop)
        hc = PPOrigin().start()  # only health checks reach it
        stack.callback(hc.stop)
        health = f'{{ path = "/healthz", interval = "{HEALTH_INTERVAL}", timeout = "0.5s" }}'
        nginx = stack.enter_context(nginx_origin(tmp / "nginx"))
        config = f"""
[[listener]]
name = "required"
bind = ["127.0.0.1:{required}"]
proxy_protocol = {pp_in("required")}

[[listener]]
name = "optional"
bind = ["127.0.0.1:{optional}"]
proxy_protocol = {pp_in("optional")}

[[listener]]
name = "tls"
bind = ["127.0.0.1:{tls}"]
tls = {{ certs = [{{ cert = "{cert}", key = "{key}" }}] }}
proxy_protocol = {pp_in("required")}

[[listener]]
name = "plain"
bind = ["127.0.0.1:{plain}"]

[[route]]
host = "pp.test"
pool = "web"

[[route]]
host = "rec1.test"
pool = "rec_v1"

[[route]]
host = "rec2.test"
pool = "rec_v2"

[[route]]
host = "ngx1.test"
pool = "ngx_v1"

[[route]]
host = "ngx2.test"
pool = "ngx_v2"

[[route]]
host = "src.test"
pool = "src"

[pool.web]
servers = ["{web.address}"]

[pool.src]
balance = "source"
servers = ["{src[0].address}", "{src[1].address}"]

[pool.rec_v1]
send_proxy = "v1"
servers = ["{rec.address}"]

[pool.rec_v2]
send_proxy = "v2"
servers = ["{rec.address}"]

[pool.ngx_v1]
send_proxy = "v1"
servers = ["127.0.0.1:{nginx}"]
health = {health}

[pool.ngx_v2]
send_proxy = "v2"
servers = ["127.0.0.1:{nginx}"]
health = {health}

[pool.hc_v1]
send_proxy = "v1"
servers = ["{hc.address}"]
health = {health}

[pool.hc_v2]
send_proxy = "v2"
servers = ["{hc.address}"]
health = {health}
"""
        proxy = stack.enter_context(
            Proxy(tmp / "proxy", config, ports=[required, optional, tls, plain])
        )
        front = stack.enter_context(haproxy_front(tmp / "haproxy", required, pem))
        yield Setup(
            proxy,
            required,
            optional,
            tls,
            plain,
            web,
            rec,
            hc,
            nginx,
            tmp / "nginx",
            front,
            ca,
            cert,
        )
        assert proxy.alive, "the proxy died:\n" + proxy.stderr()[-3000:]


# --- helpers -----------------------------------------------------------------------------------


@pytest.fixture
def case(request: pytest.FixtureRequest) -> str:
    """The id of the parametrized case: each case uses paths of its own."""
    return str(request.node.callspec.id)


def get(path: str, host: str = "pp.test") -> bytes:
    """A GET that closes the connection after its response."""
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()


def v2(
    source: tuple[str, int] = (CLIENT_V4, 40000),
    *,
    alpn: bytes | None = None,
    authority: str | None = None,
    unique_id: bytes | None = None,
    crc32c: bool = False,
    extra_tlvs: tuple[tuple[int, bytes], ...] | list[tuple[int, bytes]] = (),
) -> bytes:
    """A v2 PROXY header from ``source`` to a documentation address of the same family."""
    dest = DEST_V6 if ":" in source[0] else DEST_V4
    return pp.build_v2(
        source,
        dest,
        alpn=alpn,
        authority=authority,
        unique_id=unique_id,
        crc32c=crc32c,
        extra_tlvs=extra_tlvs,
    )


def v1(source: tuple[str, int] = (CLIENT_V4, 40000)) -> bytes:
    dest = DEST_V6 if ":" in source[0] else DEST_V4
    return pp.build_v1(source, dest)


def ok(data: bytes) -> tuple[int, bytes]:
    """The status and body of the one response in ``data``."""
    status, _, body, _ = split_response(data)
    return status, body


def log_line(s: Setup, path: str) -> str:
    """The access-log line of ``path``, without the time it starts with."""
    return s.proxy.wait_access(lambda line: f'"GET {path}"' in line).split(" ", 1)[1]


def seen_by_web(s: Setup, path: str) -> tuple[str | None, str | None]:
    """(X-Forwarded-For, X-Real-IP) the web origin got with the request for ``path``."""
    for r in s.web.requests():
        if r.target == path:
            return r.header("x-forwarded-for"), r.header("x-real-ip")
    raise AssertionError(f"{path} never reached the origin")


def assert_closed_silently(
    s: Setup,
    port: int,
    data: bytes | list[bytes],
    path: str,
    *,
    source: str | None = None,
    pause: float = 0.0,
    reason: str = "",
) -> None:
    """The proxy closes the connection, answers nothing, and nothing reaches an origin; with
    ``reason``, the proxy logs a line saying so (one more than before)."""
    before = s.proxy.stderr().count(reason) if reason else 0
    got, closed = raw_exchange(port, data, source=source, pause=pause, timeout=15.0)
    assert closed, "the connection was left open"
    assert got == b"", f"the proxy answered: {got[:200]!r}"
    assert all(r.target != path for r in s.web.requests()), "the request reached the origin"
    if reason:
        logged = wait_until(lambda: s.proxy.stderr().count(reason) > before, 10.0)
        assert logged, f"no log line with {reason!r}:\n" + s.proxy.stderr()[-3000:]


def curl_from(source: str, url: str, *args: str) -> Response:
    return curl_http(url, "--interface", source, *args)


# --- headers in: the client identity -----------------------------------------------------------


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_trusted_header_sets_the_client_everywhere(setup: Setup, version: str) -> None:
    path = f"/identity-{version}"
    header = v1() if version == "v1" else v2()
    status, body = ok(raw_exchange(setup.required, header + get(path))[0])
    assert status == 200 and body == f"web GET {path}\n".encode()
    assert seen_by_web(setup, path) == (CLIENT_V4, CLIENT_V4)
    line = log_line(setup, path)
    # The client first, then the TCP peer that carried its header.
    assert line.startswith(f"{CLIENT_V4} peer=127.0.0.1 "), line


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_ipv6_client_from_a_header(setup: Setup, version: str) -> None:
    path = f"/identity6-{version}"
    src = (CLIENT_V6, 40000)
    header = v1(src) if version == "v1" else v2(src)
    status, _ = ok(raw_exchange(setup.required, header + get(path))[0])
    assert status == 200
    assert seen_by_web(setup, path) == (CLIENT_V6, CLIENT_V6)
    assert log_line(setup, path).startswith(f"{CLIENT_V6} peer=127.0.0.1 ")


def test_ipv4_mapped_source_is_logged_as_ipv4(setup: Setup) -> None:
    path = "/mapped"
    header = pp.build_v2(("::ffff:" + CLIENT_V4, 40000), DEST_V6)
    assert ok(raw_exchange(setup.required, header + get(path))[0])[0] == 200
    assert seen_by_web(setup, path)[0] == CLIENT_V4
    assert log_line(setup, path).startswith(f"{CLIENT_V4} peer=127.0.0.1 ")


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(pp.build_local_v2(), id="local"),
        pytest.param(
            bytes(pp.V2_SIGNATURE) + b"\x20\x11\x00\x0c" + bytes(12), id="local-with-addresses"
        ),
        pytest.param(pp.build_v2(None, None), id="v2-unspec"),
        pytest.param(b"PROXY UNKNOWN\r\n", id="v1-unknown"),
        pytest.param(b"PROXY UNKNOWN 203.0.113.9 192.0.2.1 1 2\r\n", id="v1-unknown-with-fields"),
        pytest.param(pp.build_v2(("/run/client.sock", 0), ("/run/revproxy.sock", 0)), id="unix"),
    ],
)
def test_headers_without_a_client_address_use_the_socket(
    setup: Setup, header: bytes, case: str
) -> None:
    path = f"/socket-{case}"
    status, _ = ok(raw_exchange(setup.required, header + get(path))[0])
    assert status == 200
    assert seen_by_web(setup, path) == ("127.0.0.1", "127.0.0.1")
    line = log_line(setup, path)
    assert line.startswith("127.0.0.1 peer=127.0.0.1 "), line
    assert "203.0.113.9" not in line


def test_authority_and_vpce_tlvs_reach_the_access_log(setup: Setup) -> None:
    path = "/tlvs"
    header = v2(
        authority="shop.example",
        alpn=b"h2",
        unique_id=b"req-0001",
        extra_tlvs=[(pp.PP2_TYPE_AWS, b"\x01vpce-0abc"), (pp.PP2_TYPE_NETNS, b"blue")],
        crc32c=True,
    )
    assert ok(raw_exchange(setup.required, header + get(path))[0])[0] == 200
    line = log_line(setup, path)
    assert line.startswith(f"{CLIENT_V4} peer=127.0.0.1 ")
    assert " authority=shop.example" in line and " vpce=vpce-0abc" in line, line


def test_ssl_sub_tlvs_are_accepted(setup: Setup) -> None:
    path = "/ssl-tlvs"
    ssl_value = (
        bytes([pp.PP2_CLIENT_SSL]) + struct.pack("!I", 0)
        + struct.pack("!BH", pp.PP2_SUBTYPE_SSL_VERSION, 7) + b"TLSv1.3"
        + struct.pack("!BH", pp.PP2_SUBTYPE_SSL_CIPHER, 22) + b"TLS_AES_256_GCM_SHA384"
    )  # fmt: skip
    header = v2(extra_tlvs=[(pp.PP2_TYPE_SSL, ssl_value)], crc32c=True)
    assert ok(raw_exchange(setup.required, header + get(path))[0])[0] == 200
    assert seen_by_web(setup, path)[0] == CLIENT_V4


def test_header_and_request_in_pieces(setup: Setup) -> None:
    """The header split across segments is read exactly; what follows is the request."""
    path = "/pieces"
    data = v2(authority="pieces.example") + get(path)
    pieces = [data[:5], data[5:14], data[14:30], data[30:]]
    got, _ = raw_exchange(setup.required, pieces, pause=0.1)
    assert ok(got)[0] == 200
    assert " authority=pieces.example" in log_line(setup, path)
    v1_pieces = [
        b"PROXY TC",
        b"P4 198.51.100.7 192.0.2.1 ",
        b"40000 443\r",
        b"\n" + get(path + "-v1"),
    ]
    got, _ = raw_exchange(setup.optional, v1_pieces, pause=0.1)
    assert ok(got)[0] == 200
    assert seen_by_web(setup, path + "-v1")[0] == CLIENT_V4


def test_keep_alive_after_a_header(setup: Setup) -> None:
    """Two requests on one connection both belong to the header's client."""
    first = b"GET /ka-1 HTTP/1.1\r\nHost: pp.test\r\n\r\n"
    got, _ = raw_exchange(setup.required, [v2() + first, get("/ka-2")], pause=0.2)
    _, _, _, rest = split_response(got)
    assert split_response(rest)[0] == 200
    assert seen_by_web(setup, "/ka-1")[0] == seen_by_web(setup, "/ka-2")[0] == CLIENT_V4


def test_header_before_tls(setup: Setup) -> None:
    """On a TLS listener the header comes first, then the handshake, then HTTP."""
    path = "/over-tls"
    sock = socket.create_connection((LOOPBACK, setup.tls), timeout=10.0)
    try:
        sock.sendall(v2(authority="pp.test"))
        with setup.ca.wrap_socket(sock, server_hostname="pp.test") as tls:
            tls.sendall(get(path))
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    finally:
        sock.close()
    assert ok(data)[0] == 200
    line = log_line(setup, path)
    assert line.startswith(f"{CLIENT_V4} peer=127.0.0.1 ") and "sni=pp.test" in line, line


def test_tls_without_a_header_is_closed(setup: Setup) -> None:
    sock = socket.create_connection((LOOPBACK, setup.tls), timeout=10.0)
    with (
        pytest.raises((ssl.SSLError, ConnectionError)),
        setup.ca.wrap_socket(sock, server_hostname="pp.test"),
    ):
        pass
    sock.close()


# --- mode = "optional" -------------------------------------------------------------------------


def test_optional_accepts_a_plain_request_from_a_trusted_peer(setup: Setup) -> None:
    path = "/optional-plain"
    status, body = ok(raw_exchange(setup.optional, get(path))[0])
    assert status == 200 and body == f"web GET {path}\n".encode()
    assert seen_by_web(setup, path) == ("127.0.0.1", "127.0.0.1")
    assert log_line(setup, path).startswith("127.0.0.1 peer=127.0.0.1 ")


def test_optional_believes_a_header_from_a_trusted_peer(setup: Setup) -> None:
    path = "/optional-header"
    assert ok(raw_exchange(setup.optional, v2() + get(path))[0])[0] == 200
    assert seen_by_web(setup, path)[0] == CLIENT_V4


def test_optional_serves_untrusted_plain_clients(setup: Setup) -> None:
    path = "/optional-untrusted-plain"
    status, _ = ok(raw_exchange(setup.optional, get(path), source=UNTRUSTED)[0])
    assert status == 200
    assert seen_by_web(setup, path)[0] == UNTRUSTED
    assert log_line(setup, path).startswith(f"{UNTRUSTED} peer={UNTRUSTED} ")


def test_optional_plain_request_arriving_byte_by_byte(setup: Setup) -> None:
    """A plain request whose first bytes could still be a signature ("P" of "POST"; a CR) is
    waited for, not refused, from trusted and untrusted peers alike."""
    for source in ("127.0.0.1", UNTRUSTED):
        path = f"/optional-slow-{source}"
        data = (
            f"POST {path} HTTP/1.1\r\nHost: pp.test\r\nContent-Length: 0\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        got, _ = raw_exchange(
            setup.optional, [data[:1], data[1:3], data[3:]], source=source, pause=0.2
        )
        assert got.startswith(b"HTTP/1.1 200 "), (source, got[:200])
        assert seen_by_web(setup, path)[0] == source


# --- headers that are never believed, or malformed ------------------------------------------


def test_spoofed_header_from_untrusted_peer_is_refused(setup: Setup) -> None:
    for port, path in ((setup.required, "/spoof-required"), (setup.optional, "/spoof-optional")):
        assert_closed_silently(
            setup,
            port,
            v2() + get(path),
            path,
            source=UNTRUSTED,
            reason=f"peer={UNTRUSTED} closed",
        )
        assert_closed_silently(
            setup, port, v1() + get(path + "-v1"), path + "-v1", source=UNTRUSTED
        )
    # It was logged, and no access-log line credits the spoofed address.
    assert "not a trusted sender" in setup.proxy.stderr()
    assert "from untrusted peer 127.0.0.66 refused" in setup.proxy.stderr()
    assert not any(CLIENT_V4 in line and "spoof" in line for line in setup.proxy.access_lines())


def test_missing_header_on_required_is_closed(setup: Setup) -> None:
    assert_closed_silently(
        setup,
        setup.required,
        get("/missing"),
        "/missing",
        reason="does not start with a PROXY header",
    )


def test_crc32c_mismatch_is_closed(setup: Setup) -> None:
    good = bytearray(v2(crc32c=True))
    good[-1] ^= 0xFF
    assert_closed_silently(
        setup, setup.required, bytes(good) + get("/crc"), "/crc", reason="CRC32C"
    )
    # The same header with a valid checksum is accepted.
    assert ok(raw_exchange(setup.required, v2(crc32c=True) + get("/crc-ok"))[0])[0] == 200


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"PROXY TCP4 198.51.100.300 192.0.2.1 40000 443\r\n", id="v1-bad-address"),
        pytest.param(b"PROXY TCP4 198.51.100.7 192.0.2.1 040000 443\r\n", id="v1-leading-zero"),
        pytest.param(b"PROXY TCP4 198.51.100.7 192.0.2.1 40000 443\n", id="v1-bare-lf"),
        pytest.param(b"PROXY UDP4 198.51.100.7 192.0.2.1 40000 443\r\n", id="v1-udp"),
        pytest.param(b"PROXY TCP4 2001:db8::7 192.0.2.1 40000 443\r\n", id="v1-family-mismatch"),
        pytest.param(bytes(pp.V2_SIGNATURE) + b"\x11\x11\x00\x0c" + bytes(12), id="v2-version-1"),
        pytest.param(bytes(pp.V2_SIGNATURE) + b"\x23\x11\x00\x0c" + bytes(12), id="v2-command-3"),
        pytest.param(bytes(pp.V2_SIGNATURE) + b"\x21\x41\x00\x0c" + bytes(12), id="v2-family-0x4"),
        pytest.param(bytes(pp.V2_SIGNATURE) + b"\x21\x11\x00\x04" + bytes(4), id="v2-short-block"),
        pytest.param(
            bytes(pp.V2_SIGNATURE) + b"\x21\x11\x00\x10" + bytes(12) + b"\x02\x00\x09x",
            id="v2-bad-tlv",
        ),
    ],
)
def test_invalid_headers_are_closed(setup: Setup, case: str, data: bytes) -> None:
    path = f"/invalid-{case}"
    for port in (setup.required, setup.optional):
        assert_closed_silently(setup, port, data + get(path), path)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"PROXY TCP4 " + b"1" * 200 + b"\r\n", id="v1-no-crlf"),
        pytest.param(
            bytes(pp.V2_SIGNATURE)
            + b"\x21\x11"
            + struct.pack("!H", 0xFFFF)
            + bytes(12)
            + b"\x04"
            + struct.pack("!H", 0xFFFF - 15)
            + bytes(0xFFFF - 15),
            id="v2-too-long",
        ),
        pytest.param(
            bytes(pp.V2_SIGNATURE)
            + b"\x21\x11"
            + struct.pack("!H", 4081)
            + bytes(12)
            + b"\x04"
            + struct.pack("!H", 4066)
            + bytes(4066),
            id="v2-just-over",
        ),
    ],
)
def test_oversized_headers_are_closed(setup: Setup, case: str, data: bytes) -> None:
    path = f"/oversized-{case}"
    assert_closed_silently(
        setup,
        setup.required,
        data + get(path),
        path,
        reason="larger than" if case.startswith("v2") else "no CRLF",
    )


def test_header_at_the_size_limit_is_accepted(setup: Setup) -> None:
    path = "/at-limit"
    noop = 4096 - 16 - 12 - 3
    header = v2(extra_tlvs=[(pp.PP2_TYPE_NOOP, bytes(noop))])
    assert len(header) == 4096
    assert ok(raw_exchange(setup.required, header + get(path))[0])[0] == 200


@pytest.mark.parametrize(
    "pieces",
    [
        pytest.param([b""], id="nothing"),
        pytest.param([bytes(pp.V2_SIGNATURE)], id="v2-signature-only"),
        pytest.param([v2(authority="x" * 40)[:40]], id="v2-half"),
        pytest.param([b"PROXY TCP4 198.51.100.7 192.0.2.1 "], id="v1-no-end"),
        pytest.param([b"\r\n\r\n"], id="signature-prefix"),
    ],
)
def test_truncated_or_slow_headers_time_out(setup: Setup, case: str, pieces: list[bytes]) -> None:
    """A header that never completes is given up after proxy_protocol.timeout."""
    for port in (setup.required, setup.optional):
        assert_closed_silently(
            setup, port, pieces, f"/truncated-{case}", reason="not received in time"
        )


def test_header_cut_by_the_client_closing(setup: Setup) -> None:
    sock = socket.create_connection((LOOPBACK, setup.required), timeout=10.0)
    try:
        sock.sendall(v2()[:20])
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(100) == b""
    finally:
        sock.close()


def test_proxy_survives_every_bad_header(setup: Setup) -> None:
    """After all of the above, the listeners still serve well-formed clients."""
    assert ok(raw_exchange(setup.required, v2() + get("/still-alive"))[0])[0] == 200
    assert setup.proxy.alive


# --- curl --haproxy-protocol (v1) ------------------------------------------------------------


def test_curl_haproxy_protocol_v1(setup: Setup) -> None:
    port = setup.required
    r = curl_from(
        CURL_CLIENT,
        f"http://pp.test:{port}/curl-v1",
        "--haproxy-protocol",
        "--resolve",
        f"pp.test:{port}:{LOOPBACK}",
    )
    assert r.status == 200 and r.body == b"web GET /curl-v1\n"
    assert seen_by_web(setup, "/curl-v1") == (CURL_CLIENT, CURL_CLIENT)
    assert log_line(setup, "/curl-v1").startswith(f"{CURL_CLIENT} peer={CURL_CLIENT} ")


def test_curl_haproxy_protocol_from_untrusted_address_is_refused(setup: Setup) -> None:
    port = setup.required
    res = curl(
        "--interface",
        UNTRUSTED,
        "--haproxy-protocol",
        "--resolve",
        f"pp.test:{port}:{LOOPBACK}",
        f"http://pp.test:{port}/curl-untrusted",
    )
    assert res.returncode != 0 and res.stdout == b""
    assert all(r.target != "/curl-untrusted" for r in setup.web.requests())


# --- HAProxy in front ------------------------------------------------------------------------


@pytest.mark.parametrize("front", ["v1", "v2"])
def test_haproxy_send_proxy(setup: Setup, front: str) -> None:
    """HAProxy (mode tcp, send-proxy / send-proxy-v2 with unique-id and crc32c TLVs) in front:
    the origin sees the address of the client that connected to HAProxy."""
    port = getattr(setup.haproxy, front)
    path = f"/haproxy-{front}"
    r = curl_from(
        CURL_CLIENT, f"http://pp.test:{port}{path}", "--resolve", f"pp.test:{port}:{LOOPBACK}"
    )
    assert r.status == 200 and r.body == f"web GET {path}\n".encode()
    assert seen_by_web(setup, path) == (CURL_CLIENT, CURL_CLIENT)
    line = log_line(setup, path)
    # HAProxy connects from 127.0.0.1: that is the peer, the client is curl.
    assert line.startswith(f"{CURL_CLIENT} peer=127.0.0.1 "), line


def test_haproxy_send_proxy_v2_with_authority_from_tls(setup: Setup) -> None:
    """HAProxy terminates TLS and passes the SNI on as the AUTHORITY TLV (with SSL sub-TLVs,
    a unique id and a CRC32C): the access log shows it."""
    port = setup.haproxy.v2tls
    path = "/haproxy-v2-tls"
    r = curl_from(
        CURL_CLIENT,
        f"https://pp.test:{port}{path}",
        "--cacert",
        str(setup.cert),
        "--resolve",
        f"pp.test:{port}:{LOOPBACK}",
    )
    assert r.status == 200
    assert seen_by_web(setup, path)[0] == CURL_CLIENT
    line = log_line(setup, path)
    assert line.startswith(f"{CURL_CLIENT} peer=127.0.0.1 ") and " authority=pp.test" in line


# --- headers out -------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_send_proxy_to_nginx_carries_the_client(setup: Setup, version: str) -> None:
    host = f"ngx{version[1]}.test"
    port = setup.plain
    for client in (CURL_CLIENT, OTHER_CLIENT, CURL_CLIENT):
        r = curl_from(client, f"http://{host}:{port}/", "--resolve", f"{host}:{port}:{LOOPBACK}")
        assert r.status == 200
        assert r.body == f"nginx addr={client} peer=127.0.0.1\n".encode(), r.body


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_client_from_a_header_is_what_nginx_sees(setup: Setup, version: str) -> None:
    """PROXY in and PROXY out: the client named by the incoming header reaches nginx."""
    host = f"ngx{version[1]}.test"
    for src in ((CLIENT_V4, 40001), (CLIENT_V6, 40002)):
        data = v2(src) + get("/", host)
        status, body = ok(raw_exchange(setup.required, data)[0])
        assert status == 200
        assert body == f"nginx addr={src[0]} peer=127.0.0.1\n".encode()


def test_haproxy_to_revproxy_to_nginx(setup: Setup) -> None:
    """The whole chain: curl → HAProxy (v2) → revproxy → nginx (v2) reports curl's address."""
    port = setup.haproxy.v2
    r = curl_from(
        CURL_CLIENT, f"http://ngx2.test:{port}/", "--resolve", f"ngx2.test:{port}:{LOOPBACK}"
    )
    assert r.body == f"nginx addr={CURL_CLIENT} peer=127.0.0.1\n".encode()


def test_send_proxy_v1_header_fields(setup: Setup) -> None:
    path = "/out-v1"
    data = v1((CLIENT_V4, 40003)) + get(path, "rec1.test")
    status, body = ok(raw_exchange(setup.required, data)[0])
    assert status == 200 and body == f"pp-origin v1 TCP4 {CLIENT_V4}\n".encode()
    got = setup.rec.last_for(path).header
    assert got is not None
    assert got.source == (CLIENT_V4, 40003) and got.destination == DEST_V4


def test_send_proxy_v2_carries_alpn_and_authority_from_tls(setup: Setup) -> None:
    """A TLS client's SNI and ALPN go to the origin as AUTHORITY and ALPN TLVs."""
    path = "/out-v2-tls"
    ctx = ssl.create_default_context(cafile=str(setup.cert))
    ctx.set_alpn_protocols(["http/1.1"])
    sock = socket.create_connection((LOOPBACK, setup.tls), timeout=10.0)
    try:
        sock.sendall(v2((CLIENT_V4, 40004)))
        with ctx.wrap_socket(sock, server_hostname="rec2.test") as tls:
            tls.sendall(get(path, "rec2.test"))
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    finally:
        sock.close()
    assert ok(data) == (200, f"pp-origin v2 TCP4 {CLIENT_V4}\n".encode())
    got = setup.rec.last_for(path).header
    assert got is not None
    assert got.version == 2 and got.family is pp.Family.TCP4
    assert got.source == (CLIENT_V4, 40004) and got.destination == DEST_V4
    assert got.authority == "rec2.test" and got.alpn == b"http/1.1"


def test_send_proxy_v2_without_tls_names_the_socket_client(setup: Setup) -> None:
    port = setup.plain
    r = curl_from(
        CURL_CLIENT,
        f"http://rec2.test:{port}/out-v2-plain",
        "--resolve",
        f"rec2.test:{port}:{LOOPBACK}",
    )
    assert r.body == f"pp-origin v2 TCP4 {CURL_CLIENT}\n".encode()
    got = setup.rec.last_for("/out-v2-plain").header
    assert got is not None
    assert got.source is not None and got.source[0] == CURL_CLIENT
    assert got.destination == (LOOPBACK, port)
    assert got.authority is None and got.alpn is None


def test_send_proxy_v2_ipv6_client(setup: Setup) -> None:
    path = "/out-v2-ipv6"
    status, _ = ok(raw_exchange(setup.required, v2((CLIENT_V6, 40005)) + get(path, "rec2.test"))[0])
    assert status == 200
    got = setup.rec.last_for(path).header
    assert got is not None and got.family is pp.Family.TCP6
    assert got.source == (CLIENT_V6, 40005) and got.destination == DEST_V6


def test_local_header_in_gives_the_socket_address_out(setup: Setup) -> None:
    path = "/out-after-local"
    status, _ = ok(raw_exchange(setup.required, pp.build_local_v2() + get(path, "rec1.test"))[0])
    assert status == 200
    got = setup.rec.last_for(path).header
    assert got is not None and got.source is not None and got.source[0] == "127.0.0.1"


# --- health checks send LOCAL ------------------------------------------------------------------


def test_health_checks_send_a_local_header(setup: Setup) -> None:
    """A health check is the proxy's own connection: v2 pools get LOCAL, v1 pools UNKNOWN."""

    def checked() -> set[tuple[int, pp.Command, pp.Family]]:
        return {
            (r.header.version, r.header.command, r.header.family)
            for r in list(setup.hc.received)
            if r.header is not None and b" /healthz " in r.request_head
        }

    assert wait_until(lambda: len(checked()) == 2, 15.0), setup.hc.received
    assert checked() == {
        (1, pp.Command.PROXY, pp.Family.UNSPEC),  # "PROXY UNKNOWN"
        (2, pp.Command.LOCAL, pp.Family.UNSPEC),
    }
    assert not any(r.error for r in setup.hc.received)


def test_nginx_accepts_the_health_checks(setup: Setup) -> None:
    """nginx answers the checks (so the pools stay up) and sees no client address in them."""
    log = setup.nginx_dir / "access.log"

    def checks() -> list[str]:
        if not log.exists():
            return []
        return [line for line in log.read_text().splitlines() if "revproxy-health" in line]

    assert wait_until(lambda: len(checks()) >= 4, 15.0), checks()
    # nginx logs an empty $proxy_protocol_addr (LOCAL, UNKNOWN) as "-".
    assert all(line.startswith("-|/healthz|") for line in checks()), checks()
    port = setup.plain
    for host in ("ngx1.test", "ngx2.test"):
        r = curl_from(
            CURL_CLIENT, f"http://{host}:{port}/", "--resolve", f"{host}:{port}:{LOOPBACK}"
        )
        assert r.status == 200 and r.body.startswith(f"nginx addr={CURL_CLIENT} ".encode())


def test_send_proxy_v2_passes_on_tlvs_from_an_incoming_header(setup: Setup) -> None:
    """Behind a TLS-terminating load balancer the client's SNI and ALPN arrive as TLVs of its
    PROXY header; they are what is known of the client, so they go on to the origin."""
    path = "/out-v2-relayed-tlvs"
    header = v2((CLIENT_V4, 40006), authority="rec2.test", alpn=b"h2")
    status, _ = ok(raw_exchange(setup.required, header + get(path, "rec2.test"))[0])
    assert status == 200
    got = setup.rec.last_for(path).header
    assert got is not None and got.source == (CLIENT_V4, 40006)
    assert got.authority == "rec2.test" and got.alpn == b"h2"


def test_source_balancing_uses_the_client_from_the_header(setup: Setup) -> None:
    """balance = "source" hashes the header's client, not the load balancer that carried it:
    every request arrives from 127.0.0.1, yet clients spread over both servers, each client
    always to the same one."""
    served: dict[str, set[str]] = {}
    for _round in range(2):
        for i in range(1, 25):
            client = f"198.51.100.{i}"
            got, _ = raw_exchange(setup.required, v2((client, 40000)) + get("/src", "src.test"))
            status, headers, _, _ = split_response(got)
            assert status == 200
            served.setdefault(client, set()).update(v for n, v in headers if n == "x-origin")
    assert all(len(origins) == 1 for origins in served.values()), served
    assert set().union(*served.values()) == {"src1", "src2"}
