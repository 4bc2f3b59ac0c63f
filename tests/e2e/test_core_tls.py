"""TLS listeners end to end: the certificate SNI chooses, the generated certificate for
everything else, unknown_sni = "reject", ALPN, protocol versions, session resumption
(tickets, TLS 1.3 and 1.2, through the SNI switch) and Host against SNI.

Clients are ``openssl s_client`` (with ``-servername`` and ``-noservername``), curl with
``--resolve`` and ``--cacert``, and Python's ssl module for requests curl will not make.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from harness import (
    LOOPBACK,
    Origin,
    Proxy,
    Response,
    curl_http,
    first_certificate,
    free_port,
    make_cert,
    openssl_client,
    read_response,
    split_response,
    toml_path,
    wait_until,
)

from revproxy.certs.files import DEFAULT_CERT_COMMON_NAME

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("real_peers")]

HOSTS = ("www.site.test", "*.site.test", "other.test")


@dataclass
class TlsSite:
    proxy: Proxy
    port: int  # unknown_sni = "generated"
    reject_port: int  # unknown_sni = "reject"
    single_port: int  # one certificate ("exact")
    certs: dict[str, tuple[Path, Path]]  # "exact", "wildcard", "other"
    origin: Origin

    def fingerprint(self, which: str) -> bytes:
        cert = x509.load_pem_x509_certificate(self.certs[which][0].read_bytes())
        return cert.fingerprint(hashes.SHA256())

    def get(self, name: str, path: str = "/", *args: str, ca: str = "") -> Response:
        port = self.port
        cafile = self.certs[ca or _cert_for(name)][0]
        return curl_http(
            f"https://{name}:{port}{path}",
            "--resolve",
            f"{name}:{port}:{LOOPBACK}",
            "--cacert",
            str(cafile),
            *args,
        )


def _cert_for(name: str) -> str:
    if name == "www.site.test":
        return "exact"
    if name.endswith(".site.test"):
        return "wildcard"
    return "other"


@pytest.fixture(scope="module")
def tls_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsSite]:
    base = tmp_path_factory.mktemp("tls")
    certs = {
        "exact": make_cert(base, "exact", ["www.site.test"]),
        "wildcard": make_cert(base, "wildcard", ["*.site.test"]),
        "other": make_cert(base, "other", ["other.test"]),
    }
    pairs = ", ".join(
        f"{{ cert = {toml_path(c)}, key = {toml_path(k)} }}" for c, k in certs.values()
    )
    port, reject_port, single_port = free_port(), free_port(), free_port()
    exact_cert, exact_key = certs["exact"]
    origin = Origin("tls-origin").start()
    config = f"""
[[listener]]
name = "https"
bind = ["127.0.0.1:{port}"]
tls = {{ certs = [{pairs}] }}

[[listener]]
name = "strict"
bind = ["127.0.0.1:{reject_port}"]
tls = {{ certs = [{pairs}], unknown_sni = "reject" }}

[[listener]]
name = "single"
bind = ["127.0.0.1:{single_port}"]
tls = {{ certs = [{{ cert = {toml_path(exact_cert)}, key = {toml_path(exact_key)} }}] }}

[[route]]
host = {list(HOSTS)!r}
pool = "web"

[pool.web]
servers = ["{origin.address}"]
""".replace("'", '"')
    try:
        with Proxy(base, config, ports=[port, reject_port, single_port]) as proxy:
            yield TlsSite(proxy, port, reject_port, single_port, certs, origin)
            assert proxy.alive, "the proxy died:\n" + proxy.stderr()[-3000:]
    finally:
        origin.stop()


def leaf(port: int, servername: str | None, *args: str) -> x509.Certificate:
    res = openssl_client(port, *args, servername=servername)
    return x509.load_pem_x509_certificate(first_certificate(res.stdout))


def san_names(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [str(v) for v in ext.value.get_values_for_type(x509.DNSName)]


# --- certificate choice --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("servername", "which"),
    [
        ("www.site.test", "exact"),  # exact beats the wildcard that also covers it
        ("WWW.Site.Test", "exact"),
        ("api.site.test", "wildcard"),
        ("other.test", "other"),
    ],
)
def test_sni_picks_the_certificate(tls_site: TlsSite, servername: str, which: str) -> None:
    cert = leaf(tls_site.port, servername)
    assert cert.fingerprint(hashes.SHA256()) == tls_site.fingerprint(which)


@pytest.mark.parametrize("servername", [None, "unknown.test", "a.b.site.test"])
def test_no_or_unknown_sni_gets_a_generated_certificate(
    tls_site: TlsSite, servername: str | None
) -> None:
    cert = leaf(tls_site.port, servername)
    assert cert.fingerprint(hashes.SHA256()) not in {
        tls_site.fingerprint(w) for w in ("exact", "wildcard", "other")
    }
    cn = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    assert cn == [DEFAULT_CERT_COMMON_NAME]
    text = cert.subject.rfc4514_string() + " " + " ".join(san_names(cert))
    for host in ("site.test", "other.test", "unknown.test"):
        assert host not in text


def test_curl_verifies_each_site(tls_site: TlsSite) -> None:
    for name in ("www.site.test", "api.site.test", "other.test"):
        r = tls_site.get(name, "/hello")
        assert r.status == 200
        assert r.body == b"tls-origin GET /hello\n"


def test_unknown_name_is_answered_locally(tls_site: TlsSite) -> None:
    before = len(tls_site.origin.requests())
    r = curl_http(
        f"https://unknown.test:{tls_site.port}/",
        "--resolve",
        f"unknown.test:{tls_site.port}:{LOOPBACK}",
        "-k",
    )
    assert r.status in (404, 421)
    assert len(tls_site.origin.requests()) == before


@pytest.mark.parametrize("servername", ["unknown.test", None])
def test_unknown_sni_reject_aborts_the_handshake(tls_site: TlsSite, servername: str | None) -> None:
    res = openssl_client(tls_site.reject_port, servername=servername, send=b"Q\n")
    assert res.returncode != 0
    assert "BEGIN CERTIFICATE" not in res.stdout
    # A known name on the same listener still works.
    cert = leaf(tls_site.reject_port, "www.site.test")
    assert cert.fingerprint(hashes.SHA256()) == tls_site.fingerprint("exact")


def received_alerts(output: str) -> list[str]:
    """Alerts the server sent, from ``openssl s_client -msg`` ("<<<" lines are received)."""
    return [line for line in output.splitlines() if line.startswith("<<<") and "Alert" in line]


@pytest.mark.parametrize(
    ("args", "port_name", "alert"),
    [
        (("-servername", "unknown.test"), "reject_port", "unrecognized_name"),
        (("-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0", "-servername", "www.site.test"), "port",
         "protocol_version"),
    ],
)  # fmt: skip
def test_refused_handshake_says_why(
    tls_site: TlsSite, args: tuple[str, ...], port_name: str, alert: str
) -> None:
    """RFC 6066 §3: a server that does not recognise the name SHOULD send a fatal
    unrecognized_name alert; RFC 8446 §4.2.1 / RFC 5246 E.1: protocol_version for a version
    it will not speak."""
    port = getattr(tls_site, port_name)
    res = subprocess.run(
        ["openssl", "s_client", "-connect", f"{LOOPBACK}:{port}", "-msg", *args],
        input="", capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    alerts = received_alerts(res.stdout + res.stderr)
    assert any(alert in line for line in alerts), alerts


# --- protocol ------------------------------------------------------------------------------------


def test_alpn_selects_http11(tls_site: TlsSite) -> None:
    # The default tls.alpn is ["h2", "http/1.1"]: h2 when offered, else HTTP/1.1.
    for offer, chosen in (("http/1.1", "http/1.1"), ("h2,http/1.1", "h2")):
        res = openssl_client(tls_site.port, "-alpn", offer, servername="www.site.test")
        assert f"ALPN protocol: {chosen}" in res.stdout, res.stdout[-2000:]
    ctx = ssl.create_default_context(cafile=str(tls_site.certs["exact"][0]))
    ctx.set_alpn_protocols(["http/1.1"])
    with (
        socket.create_connection((LOOPBACK, tls_site.port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="www.site.test") as tls,
    ):
        assert tls.selected_alpn_protocol() == "http/1.1"


def test_tls11_is_refused(tls_site: TlsSite) -> None:
    res = openssl_client(
        tls_site.port, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0", servername="www.site.test"
    )
    assert res.returncode != 0
    assert "BEGIN CERTIFICATE" not in res.stdout


@pytest.mark.parametrize(("flag", "version"), [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")])
def test_tls12_and_tls13_are_accepted(tls_site: TlsSite, flag: str, version: str) -> None:
    res = openssl_client(tls_site.port, flag, servername="www.site.test")
    assert f"Protocol  : {version}" in res.stdout or f"New, {version}" in res.stdout
    assert "BEGIN CERTIFICATE" in res.stdout


# --- session resumption ---------------------------------------------------------------------------


def resumed(
    port: int,
    servername: str | None,
    flag: str,
    session: Path,
    *,
    fresh: bool = True,
    host: str = "",
) -> str:
    """One ``openssl s_client`` connection that sends a request and reads the whole answer (so
    that TLS 1.3 tickets, sent after the handshake, arrive); ``fresh`` writes the session to
    ``session``, else it is offered from there. Returns the s_client output."""
    host = host or servername or "www.site.test"
    request = f"GET /resume HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    store = ["-sess_out", str(session)] if fresh else ["-sess_in", str(session)]
    res = openssl_client(port, flag, "-ign_eof", *store, servername=servername, send=request)
    assert "HTTP/1.1 " in res.stdout, res.stdout[-2000:] + res.stderr[-2000:]
    return res.stdout


@pytest.mark.parametrize(("flag", "version"), [("-tls1_3", "TLSv1.3"), ("-tls1_2", "TLSv1.2")])
@pytest.mark.parametrize(
    ("port_name", "servername"),
    [
        ("single_port", "www.site.test"),
        ("single_port", None),  # the generated certificate
        ("port", "www.site.test"),  # the SNI callback switched to the exact name's context
        ("port", "api.site.test"),  # ... to the wildcard's
        ("port", "other.test"),
        ("port", None),
        ("reject_port", "other.test"),
    ],
)
def test_session_ticket_resumes_the_session(
    tls_site: TlsSite,
    tmp_path: Path,
    port_name: str,
    servername: str | None,
    flag: str,
    version: str,
) -> None:
    port = getattr(tls_site, port_name)
    session = tmp_path / "session.pem"
    first = resumed(port, servername, flag, session)
    assert f"New, {version}" in first, first[-2000:]
    if version == "TLSv1.3":  # one ticket is enough (each costs the server a session encoding)
        assert first.count("Post-Handshake New Session Ticket arrived") == 1, first[-3000:]
    assert session.stat().st_size > 0
    for _ in range(2):  # a ticket may be offered again (s_time -reuse does)
        again = resumed(port, servername, flag, session, fresh=False)
        assert f"Reused, {version}" in again, again[-2000:]
        assert "HTTP/1.1 200" in again or servername is None, again[-2000:]


def test_tickets_resume_on_every_worker_and_after_a_reload(tmp_path: Path) -> None:
    """Each worker builds its own contexts: the ticket keys all workers share (derived from the
    master's default certificate) let a ticket one worker issued resume on the other, and on
    the contexts a reload builds."""
    cert, key = make_cert(tmp_path, "www", ["www.site.test"])
    port = free_port()
    origin = Origin("workers-origin").start()
    config = f"""
[global]
workers = 2

[[listener]]
name = "https"
bind = ["127.0.0.1:{port}"]
tls = {{ certs = [{{ cert = {toml_path(cert)}, key = {toml_path(key)} }}] }}

[[route]]
host = ["www.site.test"]
pool = "web"

[pool.web]
servers = ["{origin.address}"]
"""
    session = tmp_path / "session.pem"
    try:
        with Proxy(tmp_path, config, ports=[port]) as proxy:
            assert wait_until(lambda: "worker 1 (pid" in proxy.stderr(), 20), proxy.stderr()

            def misdirected() -> list[str]:  # one line per request, naming its worker
                return [line for line in proxy.stderr().splitlines() if "Misdirected" in line]

            # Host names no site: each answer (421) is logged by the worker that served it.
            resumed(port, "www.site.test", "-tls1_3", session, host="elsewhere.test")
            assert wait_until(lambda: len(misdirected()) == 1, 10), proxy.stderr()[-2000:]

            def both_workers_resumed() -> bool:
                out = resumed(port, "www.site.test", "-tls1_3", session, fresh=False,
                              host="elsewhere.test")  # fmt: skip
                assert "Reused, TLSv1.3" in out, out[-2000:]
                after_first = misdirected()[1:]
                return all(any(w in line for line in after_first) for w in ("worker0", "worker1"))

            assert wait_until(both_workers_resumed, 30, interval=0), misdirected()

            os.kill(proxy.pid, signal.SIGHUP)
            assert wait_until(lambda: "reload done" in proxy.stderr(), 20), proxy.stderr()[-2000:]
            for _ in range(4):
                out = resumed(port, "www.site.test", "-tls1_3", session, fresh=False)
                assert "Reused, TLSv1.3" in out and "HTTP/1.1 200" in out, out[-2000:]
            assert proxy.alive
    finally:
        origin.stop()


# --- Host and SNI --------------------------------------------------------------------------------


def tls_request(site: TlsSite, servername: str, host: str) -> tuple[int, bytes]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((LOOPBACK, site.port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=servername) as tls,
    ):
        tls.sendall(f"GET /sni HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        status, _, body, _ = split_response(read_response(tls))
    return status, body


@pytest.mark.parametrize(
    ("servername", "host"),
    [
        ("www.site.test", "other.test"),
        ("www.site.test", "api.site.test"),  # covered by another certificate of ours
        ("other.test", "www.site.test"),
    ],
)
def test_host_not_matching_sni_gets_421(tls_site: TlsSite, servername: str, host: str) -> None:
    before = len(tls_site.origin.requests())
    status, body = tls_request(tls_site, servername, host)
    assert status == 421
    assert body == b"421 Misdirected Request\n"
    assert len(tls_site.origin.requests()) == before, "the origin received a misdirected request"
    r = tls_site.get("www.site.test", "/x", "-H", "Host: other.test")
    assert r.status == 421
    assert len(tls_site.origin.requests()) == before


def test_host_matching_sni_is_served(tls_site: TlsSite) -> None:
    assert tls_request(tls_site, "www.site.test", "www.site.test:443")[0] == 200
    assert tls_request(tls_site, "www.site.test", "WWW.SITE.TEST")[0] == 200
    # One certificate covers both names: the same connection may serve both (RFC 9110 §7.4).
    assert tls_request(tls_site, "a.site.test", "b.site.test")[0] == 200


def test_https_request_reaches_the_origin_with_https_forwarding(tls_site: TlsSite) -> None:
    tls_site.origin.reset()
    r = tls_site.get("www.site.test", "/fwd")
    assert r.status == 200
    (seen,) = tls_site.origin.requests()
    assert seen.header("x-forwarded-proto") == "https"
    assert seen.header("x-forwarded-port") == str(tls_site.port)
    assert seen.header("host") == f"www.site.test:{tls_site.port}"
    line = tls_site.proxy.wait_access(lambda s: '"GET /fwd"' in s)
    assert "listener=https" in line and "sni=www.site.test" in line
