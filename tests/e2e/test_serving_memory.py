"""The serving processes do not load cryptography (issue 18: idle RSS per worker).

cryptography's Rust binding carries an OpenSSL of its own: about 12 MiB resident in every
process that imports it. A real ``revproxy run`` with TLS listeners (certificate pairs and a
certbot ``cert_dir``) serves, reloads onto a renewed certificate, and its master and workers
are checked for the binding in ``/proc/PID/maps``; the certificates are read by
``python -m revproxy.certs.probe`` children. A listener that asks for client certificates is
the control: it loads cryptography on its first client certificate, and the check sees it.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
from pathlib import Path

import pytest
from harness import (
    LOOPBACK,
    Origin,
    Proxy,
    _descendants,
    curl,
    free_port,
    toml_path,
    wait_until,
)
from test_tls_client_certs import client_pki

from revproxy.certs.files import generate_self_signed

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("real_peers")]

# The extension module of cryptography's Rust binding, as /proc/PID/maps names it.
BINDING = "/cryptography/hazmat/bindings/_rust"


def loads_cryptography(pid: int) -> bool:
    return BINDING in Path(f"/proc/{pid}/maps").read_text()


def serving_pids(proxy: Proxy) -> list[int]:
    """The master and its workers (not a certificate reader that happens to be running)."""
    pids = [proxy.pid]
    for pid in _descendants(proxy.pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone
        if b"worker" in cmdline:
            pids.append(pid)
    return pids


def served_der(port: int, name: str) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((LOOPBACK, port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def pem_der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def get(port: int, name: str, ca: Path, *args: str) -> None:
    res = curl(
        "--cacert", str(ca), "--resolve", f"{name}:{port}:{LOOPBACK}",
        f"https://{name}:{port}/", *args,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_serving_processes_do_not_load_cryptography(tmp_path: Path, workers: int) -> None:
    cert, key = tmp_path / "site.pem", tmp_path / "site.key"
    generate_self_signed(["site.test"], cert, key)
    live = tmp_path / "live"
    lineage = live / "dir.test"
    generate_self_signed(["dir.test"], lineage / "fullchain.pem", lineage / "privkey.pem")
    port, plain = free_port(), free_port()
    with Origin().start() as origin:
        cfg = f"""
[global]
workers = {workers}
watch = false

[[listener]]
name = "plain"
bind = "{LOOPBACK}:{plain}"

[[listener]]
name = "tls"
bind = "{LOOPBACK}:{port}"
tls = {{ cert_dir = {toml_path(live)}, certs = [{{ cert = {toml_path(cert)}, \
key = {toml_path(key)} }}] }}

[[route]]
pool = "app"

[pool.app]
servers = ["{origin.address}"]
"""
        with Proxy(tmp_path / "p", cfg, ports=[port, plain]) as proxy:
            get(port, "site.test", cert)
            get(port, "dir.test", lineage / "fullchain.pem")
            assert curl(f"http://{LOOPBACK}:{plain}/").returncode == 0

            # Renewed under the same names: a reload serves the new one.
            generate_self_signed(["site.test"], cert, key)
            os.kill(proxy.pid, signal.SIGHUP)
            # Every process reloads on its own: new connections land on either worker.
            renewed = pem_der(cert)
            assert wait_until(
                lambda: all(served_der(port, "site.test") == renewed for _ in range(8)), 20
            )
            get(port, "site.test", cert)

            pids = serving_pids(proxy)
            assert len(pids) == (1 if workers == 1 else 1 + workers), pids
            for pid in pids:
                assert not loads_cryptography(pid), f"pid {pid} loaded cryptography"
            assert proxy.alive


def test_client_certificates_load_cryptography_on_first_use(tmp_path: Path) -> None:
    # The control: the check above would see cryptography if a serving process loaded it.
    cert, key = tmp_path / "site.pem", tmp_path / "site.key"
    generate_self_signed(["site.test"], cert, key)
    ca, client_cert, client_key = client_pki(tmp_path)
    port = free_port()
    with Origin().start() as origin:
        cfg = f"""
[global]
watch = false

[[listener]]
name = "tls"
bind = "{LOOPBACK}:{port}"
tls = {{ certs = [{{ cert = {toml_path(cert)}, key = {toml_path(key)} }}], \
client_ca = {toml_path(ca)}, client_cert = "optional", client_cert_header = "X-Client" }}

[[route]]
pool = "app"

[pool.app]
servers = ["{origin.address}"]
"""
        with Proxy(tmp_path / "p", cfg, ports=[port]) as proxy:
            get(port, "site.test", cert)  # no client certificate: nothing to read
            assert not loads_cryptography(proxy.pid)
            get(port, "site.test", cert, "--cert", str(client_cert), "--key", str(client_key))
            assert origin.requests()[-1].header("x-client") == "CN=alice,O=Example"
            assert loads_cryptography(proxy.pid)


def test_tunnel_agents_are_named_without_cryptography(tmp_path: Path) -> None:
    """An agent that connects is named from its verified certificate as the ssl module reads
    it (``tunnel.ca.peer_identity``): the proxy serves through it without the binding. (The
    proxy that signs an enrolment — rare, once per agent — loads it to sign; the test
    restarts it after that.)"""
    from tunnel_peers import Agent, enroll_token, proxy_config, start_proxy

    http_port, tunnel_port = free_port(), free_port()
    with Origin("home-origin") as origin:
        proxy = start_proxy(
            tmp_path / "proxy",
            proxy_config(tmp_path / "state", http_port, tunnel_port),
            http_port,
            tunnel_port,
        )
        agent = Agent(tmp_path / "agent", tunnel_port, {"web": (origin.port, "http")})
        try:
            assert agent.enroll(enroll_token(proxy.conf)).returncode == 0
            proxy.stop()
            proxy.start()
            agent.start(wait_connections=2)
            url = f"http://{LOOPBACK}:{http_port}/"
            assert wait_until(lambda: curl("-fsS", url).returncode == 0, 5)
            assert not loads_cryptography(proxy.pid)
        finally:
            agent.stop()
            proxy.stop()
