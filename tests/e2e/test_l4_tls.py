"""TLS on ``mode = "tcp"`` listeners and client certificates toward origins, end to end.

The seed's use: a weak-auth service behind a strong-auth tunnel. A real PostgreSQL (trust
auth) sits behind a tcp listener that requires a client certificate; psql reaches it through
stunnel in client mode — with the certificate it gets its answer, without it the handshake
is refused and PostgreSQL never sees a connection (its own ``log_connections`` says so). The
PROXY v2 header toward the pool carries the TLS facts (PP2_TYPE_SSL), allow/deny closes a
connection before any handshake, and a pool presents a client certificate to an origin that
requires one (nginx ``ssl_verify_client on``, ``openssl s_server -Verify``).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import LOOPBACK, Proxy, curl_http, free_port, make_cert, toml_path, wait_until
from l4_peers import TcpOrigin, nginx, openssl_server, postgres, psql, read_all
from test_tls_client_certs import client_pki

from revproxy.proto import proxy_protocol as pp

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("real_peers")]

LOG_FORMAT = "{method} {status} {tls_version} cert={client_cert} sni={sni} backend={backend}"
STOP_TIMEOUT = 5.0


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """PostgreSQL logging every connection it receives: (port, its log)."""
    log = tmp_path_factory.mktemp("pg") / "postgres.log"
    with postgres(log, ("log_connections=on",)) as port:
        yield port, log


def pg_connections(log: Path) -> int:
    return log.read_text(errors="replace").count("connection received:")


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """The proxy's certificate for db.test, a client CA and alice's certificate it signed."""
    cert, key = make_cert(tmp_path, "db", ["db.test"])
    ca, client_cert, client_key = client_pki(tmp_path)
    return {
        "cert": cert,
        "key": key,
        "ca": ca,
        "client_cert": client_cert,
        "client_key": client_key,
    }


def tcp_tls_config(
    port: int, server: str, pki: dict[str, Path], *, client_cert: str = "required", extra: str = ""
) -> str:
    return f"""
[global]
access_log = "stdout"
access_log_format = "{LOG_FORMAT}"
watch = false

[[listener]]
name = "pg"
bind = "{LOOPBACK}:{port}"
mode = "tcp"
pool = "db"
tls = {{ certs = [{{ cert = {toml_path(pki["cert"])}, key = {toml_path(pki["key"])} }}], \
client_ca = {toml_path(pki["ca"])}, client_cert = "{client_cert}" }}
{extra}

[pool.db]
servers = ["{server}"]
"""


@contextlib.contextmanager
def stunnel(
    directory: Path, target: int, ca: Path, cert: Path | None = None, key: Path | None = None
) -> Iterator[int]:
    """stunnel in client mode, in the foreground, with its configuration in ``directory``:
    plain TCP accepted on the port it yields, TLS (server checked as db.test) to ``target``."""
    exe = shutil.which("stunnel4") or shutil.which("stunnel")
    if exe is None:
        raise AssertionError("stunnel not found (apt-get install stunnel4)")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = directory / "stunnel.log"
    lines = [
        "foreground = yes",
        "pid =",
        f"output = {log}",
        "debug = info",
        "[pg]",
        "client = yes",
        f"accept = {LOOPBACK}:{port}",
        f"connect = {LOOPBACK}:{target}",
        f"CAfile = {ca}",
        "verifyChain = yes",
        "checkHost = db.test",
        "sni = db.test",
    ]
    if cert is not None and key is not None:
        lines += [f"cert = {cert}", f"key = {key}"]
    conf = directory / "stunnel.conf"
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen(
        [exe, str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    try:
        # Ready when it says so: a probe connection would be relayed to the proxy.
        def ready() -> bool:
            text = log.read_text(errors="replace") if log.exists() else ""
            return "Configuration successful" in text or proc.poll() is not None

        if not wait_until(ready, 20) or proc.poll() is not None:
            text = log.read_text(errors="replace") if log.exists() else ""
            raise AssertionError(f"stunnel did not start:\n{text[-3000:]}")
        yield port
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT)


def status_lines(proxy: Proxy, status: int) -> list[str]:
    return [line for line in proxy.access_lines() if line.startswith(f"TCP {status} ")]


# --- PostgreSQL behind a tcp listener that requires a client certificate ---------------------


def test_psql_with_client_certificate(
    tmp_path: Path, pg: tuple[int, Path], pki: dict[str, Path]
) -> None:
    pg_port, log = pg
    port = free_port()
    before = pg_connections(log)
    cfg = tcp_tls_config(port, f"{LOOPBACK}:{pg_port}", pki)
    with (
        Proxy(tmp_path / "p", cfg, ports=[port]) as proxy,
        stunnel(tmp_path / "s", port, pki["cert"], pki["client_cert"], pki["client_key"]) as sp,
    ):
        result = psql(sp, "select 'through tls ' || 40 + 2")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "through tls 42"
        line = proxy.wait_access(lambda line: line.startswith("TCP 0 "))
    assert line.split()[2] == "TLSv1.3"
    assert "cert=CN=alice,O=Example sni=db.test" in line
    assert f"backend=db/{LOOPBACK}:{pg_port}" in line
    assert pg_connections(log) > before


def test_psql_without_client_certificate_never_reaches_postgres(
    tmp_path: Path, pg: tuple[int, Path], pki: dict[str, Path]
) -> None:
    pg_port, log = pg
    port = free_port()
    cfg = tcp_tls_config(port, f"{LOOPBACK}:{pg_port}", pki)
    with (
        Proxy(tmp_path / "p", cfg, ports=[port]) as proxy,
        stunnel(tmp_path / "s", port, pki["cert"]) as sp,
    ):
        before = pg_connections(log)
        refused_before = len(status_lines(proxy, 400))  # the readiness probe's
        result = psql(sp, "select 1")
        assert result.returncode != 0
        assert wait_until(lambda: len(status_lines(proxy, 400)) > refused_before, 10)
        line = status_lines(proxy, 400)[-1]
        assert "TLS handshake failed: PEER_DID_NOT_RETURN_A_CERTIFICATE" in proxy.stderr()
    assert line == "TCP 400 - cert=- sni=- backend=-"  # nothing dialled
    assert pg_connections(log) == before


# --- PROXY v2 with the TLS TLVs; allow/deny before the handshake -----------------------------


def tls_client(port: int, pki: dict[str, Path], with_cert: bool) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(pki["cert"]))
    if with_cert:
        ctx.load_cert_chain(pki["client_cert"], pki["client_key"])
    raw = socket.create_connection((LOOPBACK, port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="db.test")


def test_send_proxy_v2_carries_the_tls_facts(tmp_path: Path, pki: dict[str, Path]) -> None:
    headers: list[pp.ProxyHeader] = []

    def handle(sock: socket.socket, _number: int) -> None:
        data = b""
        header = None
        while header is None:
            chunk = sock.recv(4096)
            if not chunk:
                return
            data += chunk
            header = pp.parse(data)
        headers.append(header)
        rest = data[header.length :]
        while not rest.endswith(b"ping"):
            chunk = sock.recv(4096)
            if not chunk:
                return
            rest += chunk
        sock.sendall(b"pong")

    port = free_port()
    with TcpOrigin(handle, "pp") as origin:
        cfg = tcp_tls_config(port, f"{LOOPBACK}:{origin.port}", pki, client_cert="optional")
        cfg += 'send_proxy = "v2"\n'
        with Proxy(tmp_path / "p", cfg, ports=[port]) as proxy:
            for with_cert in (True, False):
                with tls_client(port, pki, with_cert) as conn:
                    conn.sendall(b"ping")
                    assert read_all(conn) == b"pong"
            proxy.wait_access(lambda line: line.startswith("TCP 0 ") and "cert=-" in line)
    assert not origin.errors
    assert len(headers) == 2
    signed, anonymous = headers
    for header in headers:
        assert header.source is not None and header.source[0] == LOOPBACK
        assert header.authority == "db.test"
        assert header.ssl is not None and header.ssl.client_ssl
        assert header.ssl.version == "TLSv1.3"
        assert header.ssl.cipher
    assert signed.ssl is not None and anonymous.ssl is not None
    assert signed.ssl.client_cert_conn and signed.ssl.client_cert_sess
    assert signed.ssl.verify == 0
    assert signed.ssl.cn == "alice"
    assert not anonymous.ssl.client_cert_conn and not anonymous.ssl.client_cert_sess
    assert anonymous.ssl.verify != 0
    assert anonymous.ssl.cn is None


def test_deny_closes_before_the_handshake(tmp_path: Path, pki: dict[str, Path]) -> None:
    port = free_port()
    with TcpOrigin(lambda sock, _n: None, "never") as origin:
        cfg = tcp_tls_config(port, f"{LOOPBACK}:{origin.port}", pki, extra='deny = ["127.0.0.0/8"]')
        with Proxy(tmp_path / "p", cfg, ports=[port]) as proxy:
            with pytest.raises((ssl.SSLError, ConnectionError)):
                tls_client(port, pki, with_cert=True).close()
            line = proxy.wait_access(lambda line: line.startswith("TCP 403 "))
    assert " cert=- " in line  # no handshake, so no certificate was seen
    assert origin.connections == 0


def test_refused_version_is_told(tmp_path: Path, pki: dict[str, Path]) -> None:
    """A TLS 1.1 client of a tcp listener with tls gets the protocol_version alert (written by
    the listener: the event loop closes a failed handshake's socket unflushed), and the
    refusal is logged as a failed handshake; nothing is dialled."""
    port = free_port()
    with TcpOrigin(lambda sock, _n: None, "never") as origin:
        cfg = tcp_tls_config(port, f"{LOOPBACK}:{origin.port}", pki)
        with Proxy(tmp_path / "p", cfg, ports=[port]) as proxy:
            res = subprocess.run(
                ["openssl", "s_client", "-connect", f"{LOOPBACK}:{port}", "-msg",
                 "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0", "-servername", "db.test"],
                input="", capture_output=True, text=True, timeout=20,
            )  # fmt: skip
            received = [
                line for line in (res.stdout + res.stderr).splitlines() if line.startswith("<<<")
            ]
            assert any("Alert" in line and "protocol_version" in line for line in received), (
                received
            )
            proxy.wait_access(lambda line: line.startswith("TCP 400 "))
    assert origin.connections == 0


# --- a pool presenting a client certificate to origins -------------------------------------


def origin_pull_config(port: int, origin_port: int, origin_cert: Path, client: str) -> str:
    return f"""
[global]
access_log = "stdout"
watch = false

[[listener]]
name = "http"
bind = "{LOOPBACK}:{port}"

[[route]]
pool = "origin"

[pool.origin]
servers = ["{LOOPBACK}:{origin_port}"]
tls = {{ ca = {toml_path(origin_cert)}, sni = "origin.test"{client} }}
"""


def test_pool_client_certificate_to_nginx(tmp_path: Path, pki: dict[str, Path]) -> None:
    origin_cert, origin_key = make_cert(tmp_path, "origin", ["origin.test"])
    server = (
        f"ssl_certificate {origin_cert};\n        ssl_certificate_key {origin_key};\n"
        f"        ssl_client_certificate {pki['ca']};\n        ssl_verify_client on;\n"
        '        location / { return 200 "subject=$ssl_client_s_dn\\n"; }'
    )
    client = f", cert = {toml_path(pki['client_cert'])}, key = {toml_path(pki['client_key'])}"
    with nginx(tmp_path / "n", server) as origin_port:
        port = free_port()
        cfg = origin_pull_config(port, origin_port, origin_cert, client)
        with Proxy(tmp_path / "with", cfg, ports=[port]):
            ok = curl_http(f"http://{LOOPBACK}:{port}/")
            assert ok.status == 200
            assert ok.body == b"subject=CN=alice,O=Example\n"
        port = free_port()
        cfg = origin_pull_config(port, origin_port, origin_cert, "")
        with Proxy(tmp_path / "without", cfg, ports=[port]):
            refused = curl_http(f"http://{LOOPBACK}:{port}/")
            # nginx answers a request without the certificate it requires with a 400 page
            assert refused.status == 400
            assert b"subject=" not in refused.body


def test_pool_without_client_certificate_is_refused(tmp_path: Path, pki: dict[str, Path]) -> None:
    """An origin that refuses the handshake itself (``-Verify``): a failed connect, 502."""
    origin_cert, origin_key = make_cert(tmp_path, "origin", ["origin.test"])
    client = f", cert = {toml_path(pki['client_cert'])}, key = {toml_path(pki['client_key'])}"
    verify = ("-Verify", "1", "-CAfile", str(pki["ca"]))
    with openssl_server(origin_cert, origin_key, *verify) as origin_port:
        port = free_port()
        cfg = origin_pull_config(port, origin_port, origin_cert, client)
        with Proxy(tmp_path / "with", cfg, ports=[port]):
            assert curl_http(f"http://{LOOPBACK}:{port}/").status == 200
        port = free_port()
        cfg = origin_pull_config(port, origin_port, origin_cert, "")
        with Proxy(tmp_path / "without", cfg, ports=[port]) as proxy:
            assert curl_http(f"http://{LOOPBACK}:{port}/").status == 502
            proxy.wait_access(lambda line: '"GET /" 502' in line)
