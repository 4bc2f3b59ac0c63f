"""SNI passthrough end to end: TLS origins (openssl s_server, nginx, a Python TLS server that
reads a PROXY v2 header) reached through a TLS listener without being decrypted — the client
sees the ORIGIN's certificate — while other names on the same listener are terminated by
revproxy as usual, ClientHellos without SNI get the listener's default, and bytes that are
not TLS are closed.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import Proxy
from l4_peers import (
    LOOPBACK,
    ConfigProxy,
    TcpOrigin,
    access_field,
    access_status,
    free_port,
    nginx_tls,
    openssl_server,
    pool,
    read_all,
    wait_until,
)

from revproxy.certs.files import generate_self_signed
from revproxy.config.model import Bind, CertPair, Config, Listener, ListenerTLS, Route
from revproxy.proto import proxy_protocol as pp

pytestmark = [pytest.mark.e2e]


@dataclass
class Certs:
    origin: tuple[Path, Path]  # legacy.example.com, x.old.example.com (openssl s_server)
    nginx: tuple[Path, Path]  # *.old.example.com
    python: tuple[Path, Path]  # pp.example.com
    proxy: tuple[Path, Path]  # www.example.com (terminated by revproxy)


def _cert(directory: Path, stem: str, *names: str) -> tuple[Path, Path]:
    cert, key = directory / f"{stem}.pem", directory / f"{stem}.key"
    generate_self_signed(list(names), cert, key)
    return cert, key


def _der(pem_path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem_path.read_text())


def _pem_of(s_client_output: str) -> bytes:
    start = s_client_output.find("-----BEGIN CERTIFICATE-----")
    end = s_client_output.find("-----END CERTIFICATE-----", start)
    if start == -1 or end == -1:
        raise AssertionError("no certificate in s_client output:\n" + s_client_output[-2000:])
    return ssl.PEM_cert_to_DER_cert(s_client_output[start : end + 25])


def s_client(port: int, servername: str | None, send: str = "") -> subprocess.CompletedProcess[str]:
    sni = ["-servername", servername] if servername is not None else ["-noservername"]
    # -ign_eof: with something to send, wait for the server's answer and close.
    wait = ["-ign_eof"] if send else []
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"{LOOPBACK}:{port}", *sni, "-showcerts", *wait],
        input=send,
        capture_output=True,
        text=True,
        timeout=30,
    )


def curl_https(port: int, name: str, path: str = "/") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            "curl",
            "-sS",
            "-k",
            "--max-time",
            "20",
            "--resolve",
            f"{name}:{port}:{LOOPBACK}",
            f"https://{name}:{port}{path}",
        ],
        capture_output=True,
        timeout=30,
    )


def _web_origin() -> TcpOrigin:
    """A tiny HTTP/1.1 origin for the terminated name: answers "web" and closes."""

    def handle(sock: socket.socket, _n: int) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                return
            head += chunk
        sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nweb")

    return TcpOrigin(handle, "web")


class ProxyV2TlsOrigin:
    """A TLS origin that first reads a PROXY v2 header, records it, then speaks TLS: it
    answers every line with its own name and streams ``size`` bytes when asked."""

    def __init__(self, cert: tuple[Path, Path]) -> None:
        self.headers: list[pp.ProxyHeader] = []
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(cert[0]), str(cert[1]))
        self.tcp = TcpOrigin(self._handle, "pp-tls")
        self.port = self.tcp.port

    def _handle(self, sock: socket.socket, _n: int) -> None:
        data = b""
        while True:
            chunk = sock.recv(1, socket.MSG_PEEK)
            if not chunk:
                return
            data += sock.recv(1)
            header = pp.parse(data) if pp.detect(data) == "v2" else None
            if header is not None:
                break
        self.headers.append(header)
        tls = self.ctx.wrap_socket(sock, server_side=True)
        line = tls.recv(100)
        if line.startswith(b"big "):
            size = int(line.split()[1])
            block = (b"0123456789abcdef" * 65536)[: 1 << 20]
            sent = 0
            while sent < size:
                n = min(len(block), size - sent)
                tls.sendall(block[:n])
                sent += n
        else:
            tls.sendall(b"python origin\n")
        tls.close()

    def close(self) -> None:
        self.tcp.close()


@dataclass
class Setup:
    port: int
    certs: Certs
    proxy: ConfigProxy
    nginx_body: str
    pp_origin: ProxyV2TlsOrigin


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    d = tmp_path_factory.mktemp("passthrough")
    certs = Certs(
        origin=_cert(d, "origin", "legacy.example.com", "x.old.example.com"),
        nginx=_cert(d, "nginx", "*.old.example.com"),
        python=_cert(d, "python", "pp.example.com"),
        proxy=_cert(d, "proxy", "www.example.com"),
    )
    port = free_port()
    body = "served by nginx"
    with (
        openssl_server(*certs.origin) as s_port,
        nginx_tls(d, *certs.nginx, body) as n_port,
        _web_origin() as web,
    ):
        pp_origin = ProxyV2TlsOrigin(certs.python)
        try:
            config = Config(
                listeners=(
                    Listener(
                        name="tls",
                        bind=(bind_at(port),),
                        tls=ListenerTLS(certs=(CertPair(cert=certs.proxy[0], key=certs.proxy[1]),)),
                    ),
                ),
                routes=(
                    Route(sni=("legacy.example.com",), passthrough=True, pool="s_server"),
                    Route(sni=("*.old.example.com",), passthrough=True, pool="nginx"),
                    # An exact name beats the wildcard above.
                    Route(sni=("x.old.example.com",), passthrough=True, pool="s_server"),
                    Route(sni=("pp.example.com",), passthrough=True, pool="pp"),
                    Route(host=("www.example.com",), pool="web"),
                ),
                pools=(
                    pool("s_server", s_port),
                    pool("nginx", n_port),
                    pool("pp", pp_origin.port, send_proxy="v2"),
                    pool("web", web.port),
                ),
            )
            with ConfigProxy(d / "proxy", config) as proxy:
                yield Setup(port, certs, proxy, body, pp_origin)
        finally:
            pp_origin.close()


def bind_at(port: int) -> Bind:
    return Bind(host=LOOPBACK, port=port)


def test_passthrough_client_sees_origin_certificate(setup: Setup) -> None:
    res = s_client(setup.port, "legacy.example.com", send="GET / HTTP/1.0\r\n\r\n")
    assert _pem_of(res.stdout) == _der(setup.certs.origin[0])
    assert "s_server" in res.stdout  # the s_server -www status page came through
    line = setup.proxy.wait_access(
        lambda ln: '"TLS-PASSTHROUGH -"' in ln and "sni=legacy.example.com" in ln
    )
    assert access_field(line, "route") == "legacy.example.com"
    assert access_field(line, "pool") == "s_server"
    assert access_status(line) == 0
    assert int(access_field(line, "in")) > 0 and int(access_field(line, "out")) > 0


def test_other_name_on_same_listener_is_terminated(setup: Setup) -> None:
    res = s_client(setup.port, "www.example.com")
    assert _pem_of(res.stdout) == _der(setup.certs.proxy[0])
    got = curl_https(setup.port, "www.example.com")
    assert got.returncode == 0, got.stderr
    assert got.stdout == b"web"


def test_wildcard_route_reaches_nginx(setup: Setup) -> None:
    res = s_client(setup.port, "a.old.example.com")
    assert _pem_of(res.stdout) == _der(setup.certs.nginx[0])
    got = curl_https(setup.port, "a.old.example.com")
    assert got.returncode == 0, got.stderr
    assert got.stdout.decode().strip() == setup.nginx_body
    line = setup.proxy.wait_access(lambda ln: "sni=a.old.example.com" in ln)
    assert access_field(line, "route") == "*.old.example.com"


def test_exact_name_beats_wildcard(setup: Setup) -> None:
    res = s_client(setup.port, "x.old.example.com")
    assert _pem_of(res.stdout) == _der(setup.certs.origin[0])


def test_no_sni_gets_listener_default(setup: Setup) -> None:
    res = s_client(setup.port, None)
    der = _pem_of(res.stdout)
    assert der not in (_der(setup.certs.origin[0]), _der(setup.certs.nginx[0]))
    assert der != _der(setup.certs.python[0])


def test_unknown_name_is_terminated_not_passed_through(setup: Setup) -> None:
    res = s_client(setup.port, "b.example.com")  # no route: revproxy's own answer
    der = _pem_of(res.stdout)
    assert der not in (_der(setup.certs.origin[0]), _der(setup.certs.nginx[0]))


def test_non_tls_bytes_close_the_connection(setup: Setup) -> None:
    sock = socket.create_connection((LOOPBACK, setup.port), timeout=10)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: legacy.example.com\r\n\r\n")
    started = time.monotonic()
    try:
        got = read_all(sock)
    except ConnectionResetError:
        got = b""
    sock.close()
    assert got == b""
    assert time.monotonic() - started < 5


def _client_hello_bytes(
    server_name: str,
) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO, bytes]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return obj, incoming, outgoing, outgoing.read()


def _finish_handshake(
    sock: socket.socket, obj: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO
) -> bytes:
    """Complete the handshake over ``sock``; returns the server's leaf certificate (DER)."""
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            if out := outgoing.read():
                sock.sendall(out)
            data = sock.recv(65536)
            if not data:
                raise AssertionError("closed during the handshake") from None
            incoming.write(data)
    if out := outgoing.read():
        sock.sendall(out)
    cert = obj.getpeercert(binary_form=True)
    assert cert is not None
    return cert


def _split_records(hello: bytes, size: int) -> list[bytes]:
    """The same ClientHello re-framed as several TLS records of at most ``size`` bytes."""
    assert hello[0] == 0x16
    version = hello[1:3]
    length = int.from_bytes(hello[3:5], "big")
    payload = hello[5 : 5 + length]
    assert len(hello) == 5 + length
    return [
        b"\x16" + version + len(piece).to_bytes(2, "big") + piece
        for piece in (payload[i : i + size] for i in range(0, len(payload), size))
    ]


@pytest.mark.parametrize("records", [False, True], ids=["tcp-segments", "tls-records"])
def test_fragmented_client_hello_is_routed(setup: Setup, records: bool) -> None:
    """A ClientHello that arrives in pieces (TCP segments with pauses, or several TLS records
    each sent on its own) is reassembled by the peek and still passed through untouched."""
    obj, incoming, outgoing, hello = _client_hello_bytes("legacy.example.com")
    if records:
        pieces = _split_records(hello, 100)
    else:
        quarter = len(hello) // 4 + 1
        pieces = [hello[i : i + quarter] for i in range(0, len(hello), quarter)]
    assert len(pieces) >= 3
    sock = socket.create_connection((LOOPBACK, setup.port), timeout=20)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(0.05)
        cert = _finish_handshake(sock, obj, incoming, outgoing)
    finally:
        sock.close()
    assert cert == _der(setup.certs.origin[0])


def test_passthrough_sends_proxy_v2_with_sni_as_authority(setup: Setup) -> None:
    before = len(setup.pp_origin.headers)
    sock = socket.create_connection(
        (LOOPBACK, setup.port), timeout=20, source_address=("127.0.0.7", 0)
    )
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with ctx.wrap_socket(sock, server_hostname="pp.example.com") as tls:
        cert = tls.getpeercert(binary_form=True)
        client_port = tls.getsockname()[1]
        tls.sendall(b"hello\n")
        assert tls.recv(100) == b"python origin\n"
    assert cert == _der(setup.certs.python[0])
    assert wait_until(lambda: len(setup.pp_origin.headers) > before, 10)
    header = setup.pp_origin.headers[-1]
    assert header.source == ("127.0.0.7", client_port)
    assert header.destination == (LOOPBACK, setup.port)
    assert header.authority == "pp.example.com"


def test_large_download_through_passthrough(setup: Setup) -> None:
    size = 50 * 1024 * 1024
    sock = socket.create_connection((LOOPBACK, setup.port), timeout=30)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with ctx.wrap_socket(sock, server_hostname="pp.example.com") as tls:
        tls.sendall(b"big %d\n" % size)
        got = bytearray()
        total = 0
        while True:
            try:
                chunk = tls.recv(1 << 20)
            except ssl.SSLEOFError:
                break
            if not chunk:
                break
            total += len(chunk)
            if len(got) < 32:
                got += chunk[:32]
    assert total == size
    assert bytes(got[:16]) == b"0123456789abcdef"
    line = setup.proxy.wait_access(lambda ln: int(access_field(ln, "out")) > size)
    assert '"TLS-PASSTHROUGH -"' in line


def test_toml_config_through_revproxy_run(tmp_path: Path) -> None:
    """The same features configured as a user writes them, through ``revproxy run -c``: a
    passthrough route beside a terminated one, and a tcp listener with max_conns and
    send_proxy."""
    origin_cert = _cert(tmp_path, "origin", "legacy.example.com")
    proxy_cert = _cert(tmp_path, "proxy", "www.example.com")
    proxy_lines: list[bytes] = []

    def echo(sock: socket.socket, _n: int) -> None:
        line = b""
        while not line.endswith(b"\r\n"):
            if not (b := sock.recv(1)):
                return
            line += b
        proxy_lines.append(line)
        while data := sock.recv(65536):
            sock.sendall(data)

    tls_port, tcp_port = free_port(), free_port()
    with openssl_server(*origin_cert) as s_port, TcpOrigin(echo) as origin:
        toml = f"""
[[listener]]
name = "tls"
bind = ["{LOOPBACK}:{tls_port}"]
tls = {{ certs = [{{ cert = "{proxy_cert[0]}", key = "{proxy_cert[1]}" }}] }}

[[listener]]
name = "l4"
bind = ["{LOOPBACK}:{tcp_port}"]
mode = "tcp"
pool = "echo"
max_conns = 5

[[route]]
sni = ["legacy.example.com"]
passthrough = true
pool = "legacy"

[[route]]
host = ["www.example.com"]
respond = {{ body = "local" }}

[pool.legacy]
servers = ["{LOOPBACK}:{s_port}"]
timeouts = {{ tunnel = "30s" }}

[pool.echo]
servers = ["{LOOPBACK}:{origin.port}"]
send_proxy = "v1"
"""
        with Proxy(tmp_path / "run", toml, ports=(tls_port,)) as proxy:
            res = s_client(tls_port, "legacy.example.com")
            assert _pem_of(res.stdout) == _der(origin_cert[0])
            res = s_client(tls_port, "www.example.com")
            assert _pem_of(res.stdout) == _der(proxy_cert[0])
            got = curl_https(tls_port, "www.example.com")
            assert got.stdout == b"local"

            sock = socket.create_connection((LOOPBACK, tcp_port), timeout=20)
            sock.sendall(b"ping")
            assert sock.recv(10) == b"ping"
            sock.close()
            assert wait_until(lambda: bool(proxy_lines), 10)
            assert proxy_lines[-1].startswith(b"PROXY TCP4 127.0.0.1 127.0.0.1 ")
            proxy.wait_access(lambda ln: '"TLS-PASSTHROUGH -"' in ln)
            proxy.wait_access(lambda ln: '"TCP -"' in ln and "in=4 out=4" in ln)
