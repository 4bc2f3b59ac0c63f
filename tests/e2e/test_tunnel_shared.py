"""The reverse tunnel on the sites' TLS port (docs/tunnel.md, ``[[listener]] tunnel = true``):
an agent enrols and dials the https listener that serves the sites, told apart by ALPN
``revproxy-tunnel/1`` in its ClientHello, while curl uses the same port for a site whose pool
is that agent; a site client is never asked for a certificate, and a tunnel ALPN without the
enrolled certificate gets nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import (
    LOOPBACK,
    Origin,
    curl_http,
    first_certificate,
    free_port,
    make_cert,
    openssl_client,
    toml_path,
    wait_until,
)
from tunnel_peers import Agent, enroll_token, start_proxy

from revproxy.proto.tunnel import TUNNEL_ALPN

pytestmark = [pytest.mark.e2e]

SITE = "www.site.test"


@pytest.fixture
def origin() -> Iterator[Origin]:
    with Origin("home-origin") as o:
        yield o


def shared_config(state: Path, cert: Path, key: Path, port: int, direct: int) -> str:
    return f"""
[global]
state_dir = {toml_path(state)}
[[listener]]
name = "https"
bind = ["{LOOPBACK}:{port}"]
tls = {{ certs = [{{ cert = {toml_path(cert)}, key = {toml_path(key)} }}] }}
tunnel = true
[[route]]
host = ["{SITE}"]
pool = "web"
[[route]]
host = ["direct.site.test"]
pool = "direct"
[pool.web]
servers = [{{ tunnel = "home/web" }}]
timeouts = {{ connect = "2s" }}
[pool.direct]
servers = ["{LOOPBACK}:{direct}"]
[tunnel.home]
"""


def site(port: int, cert: Path, host: str = SITE, *args: str) -> tuple[int, bytes]:
    resp = curl_http(
        f"https://{host}:{port}/hello",
        "--cacert", str(cert), "--resolve", f"{host}:{port}:{LOOPBACK}", *args,
    )  # fmt: skip
    return resp.status, resp.body


def test_agent_and_sites_share_the_tls_port(tmp_path: Path, origin: Origin) -> None:
    cert, key = make_cert(tmp_path, "www", [SITE, "direct.site.test"])
    port = free_port()
    with Origin("direct-origin") as direct:
        proxy = start_proxy(
            tmp_path / "proxy",
            shared_config(tmp_path / "state", cert, key, port, direct.port),
            port,
        )
        agent = Agent(tmp_path / "agent", port, {"web": (origin.port, "http")})
        try:
            # Enrolment (ALPN revproxy-enroll/1) and the agent's connections reach the tunnel
            # through the sites' port: there is no tunnel listener.
            res = agent.enroll(enroll_token(proxy.conf))
            assert res.returncode == 0, res.stderr
            agent.start(wait_connections=2)
            assert wait_until(lambda: site(port, cert)[0] == 200, 5), proxy.stderr()
            for extra in ((), ("--http1.1",), ("--http2",)):
                status, body = site(port, cert, SITE, *extra)
                assert status == 200 and b"home-origin" in body
            # The same port still serves a site of a plain pool.
            status, body = site(port, cert, "direct.site.test")
            assert status == 200 and b"direct-origin" in body
            assert "tunnel=home" in proxy.stderr() and "registered" in proxy.stderr()
        finally:
            agent.stop()
            proxy.stop()


def test_site_clients_are_not_asked_for_a_certificate(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, "www", [SITE, "direct.site.test"])
    port = free_port()
    proxy = start_proxy(
        tmp_path / "proxy", shared_config(tmp_path / "state", cert, key, port, free_port()), port
    )
    try:
        # A site client: the site's certificate, and no CertificateRequest in the handshake.
        out = openssl_client(port, "-msg", "-alpn", "h2,http/1.1", servername=SITE)
        assert "ALPN protocol: h2" in out.stdout, out.stdout[-2000:]
        assert "CertificateRequest" not in out.stdout
        assert first_certificate(out.stdout) == first_certificate(cert.read_text())
        # A ClientHello offering the tunnel's ALPN reaches the tunnel's TLS: its own
        # certificate (the tunnel CA's), a certificate asked for, and without one, no session.
        out = openssl_client(port, "-msg", "-alpn", TUNNEL_ALPN, servername=SITE, send=b"x")
        assert "CertificateRequest" in out.stdout, out.stdout[-2000:]
        assert first_certificate(out.stdout) != first_certificate(cert.read_text())
        assert wait_until(
            lambda: (
                "no client certificate" in proxy.stderr()
                or "TLS handshake failed" in proxy.stderr()
            ),
            5,
        ), proxy.stderr()
    finally:
        proxy.stop()
