"""Client certificates on a TLS listener, end to end with curl: ``client_cert = "required"``
refuses a client without one, the verified subject is logged and sent to the origin in
``client_cert_header`` (a client's own header of that name never passes), and
``"optional"`` lets a client without one in, unnamed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from harness import LOOPBACK, Origin, Proxy, curl, free_port, make_cert, toml_path

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("real_peers")]


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)


def client_pki(d: Path, cn: str = "alice") -> tuple[Path, Path, Path]:
    """A client CA and a certificate it signed: (ca.pem, client.pem, client.key)."""
    ca, ca_key = d / "clients-ca.pem", d / "clients-ca.key"
    openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test clients CA",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca),
    )
    key, csr, cert = d / f"{cn}.key", d / f"{cn}.csr", d / f"{cn}.pem"
    openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        f"/O=Example/CN={cn}",
        "-keyout",
        str(key),
        "-out",
        str(csr),
    )
    ext = d / "client.ext"
    ext.write_text("extendedKeyUsage = clientAuth\n")
    openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        str(ext),
        "-out",
        str(cert),
    )
    return ca, cert, key  # fmt: skip


def config(port: int, origin: Origin, cert: Path, key: Path, ca: Path, mode: str) -> str:
    return f"""
[global]
access_log = "stdout"
access_log_format = "{{client}} {{status}} {{tls_version}} cert={{client_cert}}"
watch = false

[[listener]]
name = "tls"
bind = "{LOOPBACK}:{port}"
tls = {{ certs = [{{ cert = {toml_path(cert)}, key = {toml_path(key)} }}], \
client_ca = {toml_path(ca)}, client_cert = "{mode}", client_cert_header = "X-Client-Subject" }}

[[route]]
pool = "app"

[pool.app]
servers = ["{origin.address}"]
"""


def get(port: int, server_cert: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return curl(
        "--cacert", str(server_cert), "--resolve", f"app.test:{port}:{LOOPBACK}",
        "-H", "X-Client-Subject: CN=forged", f"https://app.test:{port}/", *args,
    )  # fmt: skip


@pytest.mark.parametrize("mode", ["required", "optional"])
def test_client_certificates(tmp_path: Path, mode: str) -> None:
    server_cert, server_key = make_cert(tmp_path, "server", ["app.test"])
    ca, ccert, ckey = client_pki(tmp_path)
    port = free_port()
    with Origin().start() as origin:
        cfg = config(port, origin, server_cert, server_key, ca, mode)
        with Proxy(tmp_path / "p", cfg, ports=[port]) as proxy:
            ok = get(port, server_cert, "--cert", str(ccert), "--key", str(ckey))
            assert ok.returncode == 0, ok.stderr
            seen = origin.requests()[-1]
            assert seen.all("x-client-subject") == ["CN=alice,O=Example"]
            proxy.wait_access(lambda line: "cert=CN=alice,O=Example" in line)
            origin.reset()
            bare = get(port, server_cert)
            if mode == "required":
                assert bare.returncode != 0  # the handshake (TLS 1.3: the first read) fails
                assert not origin.requests()
            else:
                assert bare.returncode == 0, bare.stderr
                assert not origin.requests()[-1].has("x-client-subject")  # the forged one gone
                proxy.wait_access(lambda line: line.endswith(" cert=-"))
