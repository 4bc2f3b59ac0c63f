"""Certificates end to end with a real ACME server: Pebble, pebble-challtestsrv and certbot.

Everything is on loopback with ephemeral ports. Pebble validates HTTP-01 for real
(no PEBBLE_VA_ALWAYS_VALID): its validator resolves every test name to 127.0.0.1 through
pebble-challtestsrv and connects to ``httpPort``, which is revproxy's plain listener — so the
token travels through revproxy's ACME side route exactly as it would from Let's Encrypt.

Flow: ``revproxy cert issue`` → Pebble fetches the token through revproxy → the certificate
is served on the TLS listener (checked with ``openssl s_client`` against Pebble's root) →
``revproxy cert renew --force`` under a bounded HTTPS load → the deploy hook fires and the
served serial changes with zero failed requests. Then the failing paths: Pebble unreachable,
challenge 404, certbot missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from harness import (
    LOOPBACK,
    REPO,
    Proxy,
    closed_port,
    first_certificate,
    free_port,
    openssl_client,
    toml_path,
    wait_until,
)

from revproxy.certs.files import generate_self_signed

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("real_peers")]

NAMES = ("site.example", "www.site.example")
BODY = b"hello from revproxy\n"
# Bounds: Pebble and its DNS start in well under a second; an issuance takes ~3-6 s.
PEER_START_TIMEOUT = 20.0
CERTBOT_TIMEOUT = 120.0
# The renewed certificate must reach new handshakes within this (the deploy hook is immediate;
# the file watcher settles in ~2 s).
SWAP_TIMEOUT = 20.0
# The load keeps running this long after the new serial is seen.
LOAD_TAIL = 1.0
# Hard bound of the load loop, whatever happens.
LOAD_LIMIT = 90.0


# --- peers ----------------------------------------------------------------------------------


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + PEER_START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited {proc.returncode}:\n{log.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.5):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.args!r} did not listen on {port}:\n{log.read_text()}")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@dataclass
class Pebble:
    """A running Pebble ACME server (with its DNS), validating HTTP-01 on `http_port`."""

    directory: str  # ACME directory URL
    tls_cert: Path  # Pebble's own HTTPS certificate (certbot trusts it)
    root: Path  # the root that issues this run's certificates
    http_port: int


@contextlib.contextmanager
def run_pebble(workdir: Path, http_port: int) -> Iterator[Pebble]:
    missing = [t for t in ("pebble", "pebble-challtestsrv", "certbot") if not shutil.which(t)]
    if missing:
        pytest.fail(
            f"ACME end-to-end tests need {', '.join(missing)} (apt-get install pebble certbot)"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    cert, key = workdir / "pebble.crt", workdir / "pebble.key"
    generate_self_signed(["localhost", LOOPBACK], cert, key, days=2)
    acme_port, mgmt_port, dns_port, dns_mgmt = (free_port() for _ in range(4))
    config = {
        "pebble": {
            "listenAddress": f"{LOOPBACK}:{acme_port}",
            "managementListenAddress": f"{LOOPBACK}:{mgmt_port}",
            "certificate": str(cert),
            "privateKey": str(key),
            "httpPort": http_port,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }
    (workdir / "pebble.json").write_text(json.dumps(config))
    dns_log, pebble_log = workdir / "challtestsrv.log", workdir / "pebble.log"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with open(dns_log, "wb") as out:
            procs.append(
                subprocess.Popen(
                    [
                        "pebble-challtestsrv",
                        "-dns01",
                        f"{LOOPBACK}:{dns_port}",
                        "-management",
                        f"{LOOPBACK}:{dns_mgmt}",
                        "-http01",
                        "",
                        "-https01",
                        "",
                        "-tlsalpn01",
                        "",
                        "-defaultIPv4",
                        LOOPBACK,
                        "-defaultIPv6",
                        "",
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            )
        _wait_port(dns_mgmt, procs[0], dns_log)
        env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0")
        env.pop("PEBBLE_VA_ALWAYS_VALID", None)  # the real validation path is the point
        with open(pebble_log, "wb") as out:
            procs.append(
                subprocess.Popen(
                    [
                        "pebble",
                        "-config",
                        str(workdir / "pebble.json"),
                        "-dnsserver",
                        f"{LOOPBACK}:{dns_port}",
                        "-strict=false",
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    cwd=workdir,
                )
            )
        _wait_port(acme_port, procs[1], pebble_log)
        _wait_port(mgmt_port, procs[1], pebble_log)
        ctx = ssl.create_default_context(cafile=str(cert))
        url = f"https://{LOOPBACK}:{mgmt_port}/roots/0"
        with urllib.request.urlopen(url, context=ctx, timeout=10) as resp:
            root_pem = resp.read()
        root = workdir / "pebble-root.pem"
        root.write_bytes(root_pem)
        yield Pebble(
            directory=f"https://{LOOPBACK}:{acme_port}/dir",
            tls_cert=cert,
            root=root,
            http_port=http_port,
        )
    finally:
        for proc in reversed(procs):
            _stop(proc)


# --- revproxy -------------------------------------------------------------------------------


@dataclass
class Site:
    dir: Path
    proxy: Proxy
    pebble: Pebble
    http_port: int
    https_port: int
    acme_toml: str  # the [acme] table the running proxy was started with
    issue: subprocess.CompletedProcess[str] | None = None
    log: list[str] = field(default_factory=list)

    @property
    def le(self) -> Path:
        return self.dir / "le"


def conf_text(d: Path, http_port: int, https_port: int, acme: str, workers: int = 1) -> str:
    return f"""
[global]
pid_file = {toml_path(d / "revproxy.pid")}
watch = false
workers = {workers}

[admin]
socket = {toml_path(d / "admin.sock")}

[[listener]]
name = "http"
bind = "{LOOPBACK}:{http_port}"
acme = true
redirect_https = true

[[listener]]
name = "https"
bind = "{LOOPBACK}:{https_port}"
tls = {{ cert_dir = {toml_path(d / "le" / "live")} }}

[[route]]
host = {json.dumps(list(NAMES))}
respond = {{ status = 200, body = {json.dumps(BODY.decode())} }}

{acme}
"""


def acme_table(
    d: Path,
    pebble: Pebble,
    *,
    webroot: Path | None = None,
    certbot: str = "certbot",
    forward: str | None = None,
) -> str:
    answers = (
        f"forward = {json.dumps(forward)}"
        if forward
        else (f"webroot = {toml_path(webroot or d / 'acme')}")
    )
    return f"""
[acme]
{answers}
email = "ops@site.example"
certbot = {json.dumps(certbot)}
config_dir = {toml_path(d / "le")}
work_dir = {toml_path(d / "le-work")}
logs_dir = {toml_path(d / "le-logs")}
server = {json.dumps(pebble.directory)}
"""


def cli(
    pebble: Pebble, *args: str, timeout: float = CERTBOT_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """``python -m revproxy ARGS``; certbot (and its deploy hook) trust Pebble's HTTPS."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVPROXY")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["REQUESTS_CA_BUNDLE"] = str(pebble.tls_cert)
    env["REVPROXY_UNIT"] = ""  # never ask this machine's systemd
    return subprocess.run(
        [sys.executable, "-m", "revproxy", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )


# One process, and a master with two workers (each worker swaps its own certificate stores).
@pytest.fixture(scope="module", params=[1, 2], ids=["workers=1", "workers=2"])
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    workers = int(request.param)
    d = tmp_path_factory.mktemp(f"acme-w{workers}")
    http_port, https_port = free_port(), free_port()
    with run_pebble(d / "pebble", http_port) as pebble:
        acme = acme_table(d, pebble)
        text = conf_text(d, http_port, https_port, acme, workers)
        with Proxy(d, text, ports=[http_port, https_port]) as proxy:
            assert wait_until(lambda: (d / "revproxy.pid").exists(), 10), "no pid file written"
            yield Site(d, proxy, pebble, http_port, https_port, acme)


@pytest.fixture(scope="module")
def issued(site: Site) -> Site:
    """The first issuance, through the running proxy (its cert_dir did not exist yet)."""
    assert not (site.le / "live").exists()
    site.issue = cli(site.pebble, "cert", "issue", "-c", str(site.proxy.conf), *NAMES)
    return site


# --- clients --------------------------------------------------------------------------------


def served_cert(site: Site, name: str = NAMES[0]) -> tuple[x509.Certificate, str]:
    """The certificate `name` gets, and openssl's verdict against Pebble's root."""
    res = openssl_client(
        site.https_port,
        "-CAfile", str(site.pebble.root), "-verify_return_error", "-verify_hostname", name,
        servername=name,
    )  # fmt: skip
    out = res.stdout + res.stderr
    cert = x509.load_pem_x509_certificate(first_certificate(out))
    verdict = next((line.strip() for line in out.splitlines() if "Verify return code" in line), "")
    return cert, verdict


def client_context(site: Site) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(site.pebble.root))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def https_get(site: Site, ctx: ssl.SSLContext, name: str = NAMES[0]) -> tuple[int, bytes, int]:
    """One request on a new connection, certificate verified: (status, body, serial)."""
    with (
        socket.create_connection((LOOPBACK, site.https_port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        serial = x509.load_der_x509_certificate(der).serial_number
        tls.sendall(f"GET / HTTP/1.1\r\nhost: {name}\r\nconnection: close\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body, serial


class KeptAlive:
    """One HTTPS connection kept open across the renewal (in flight, must not be touched)."""

    def __init__(self, site: Site, ctx: ssl.SSLContext) -> None:
        raw = socket.create_connection((LOOPBACK, site.https_port), timeout=10)
        self.tls = ctx.wrap_socket(raw, server_hostname=NAMES[0])
        der = self.tls.getpeercert(binary_form=True)
        assert der is not None
        self.serial = x509.load_der_x509_certificate(der).serial_number

    def get(self) -> tuple[int, bytes]:
        self.tls.sendall(f"GET / HTTP/1.1\r\nhost: {NAMES[0]}\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += self.tls.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )  # fmt: skip
        while len(body) < length:
            body += self.tls.recv(65536)
        return int(head.split(b" ")[1]), body

    def close(self) -> None:
        self.tls.close()


class Load:
    """HTTPS requests in a loop, each on a new verified connection, until stopped."""

    def __init__(self, site: Site, workers: int = 2) -> None:
        self.site = site
        self.ctx = client_context(site)
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failures: list[str] = []
        self.serials: list[int] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]

    def _run(self) -> None:
        deadline = time.monotonic() + LOAD_LIMIT
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            try:
                status, body, serial = https_get(self.site, self.ctx)
                good = status == 200 and body == BODY
                reason = f"status {status} body {body[:60]!r}"
            except (OSError, ssl.SSLError, ValueError, IndexError) as exc:
                good, serial, reason = False, 0, f"{type(exc).__name__}: {exc}"
            with self.lock:
                if good:
                    self.ok += 1
                    if not self.serials or self.serials[-1] != serial:
                        self.serials.append(serial)
                else:
                    self.failures.append(reason)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=30)

    def latest_serial(self) -> int | None:
        with self.lock:
            return self.serials[-1] if self.serials else None


# --- the happy path -------------------------------------------------------------------------


def test_issue_through_the_running_proxy(issued: Site) -> None:
    site = issued
    res = site.issue
    assert res is not None
    assert res.returncode == 0, f"stdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    assert "Successfully received certificate." in res.stdout  # certbot's progress, streamed
    assert "warning:" not in res.stderr  # the local probe found revproxy serving the webroot
    assert "--no-random-sleep-on-renew" not in res.stderr  # (that is for renew)
    # Pebble fetched every token through revproxy's side route on the redirecting listener
    for name in NAMES:
        line = site.proxy.wait_access(
            lambda line, n=name: f"host={n}:" in line and "/.well-known/acme-challenge/" in line
        )
        assert '" 200 ' in line and "route=acme" in line and "listener=http " in line
    # the deploy hook ran and reached the running proxy
    assert "asked revproxy to reload its certificates" in res.stdout, res.stdout

    # the first certificate is served on the TLS listener (whose cert_dir did not exist)
    def served() -> bool:
        cert, verdict = served_cert(site)
        return verdict == "Verify return code: 0 (ok)" and "Pebble" in cert.issuer.rfc4514_string()

    assert wait_until(served, SWAP_TIMEOUT), served_cert(site)
    for name in NAMES:
        cert, verdict = served_cert(site, name)
        assert verdict == "Verify return code: 0 (ok)", name
        assert "Pebble Intermediate" in cert.issuer.rfc4514_string()
    status, body, _ = https_get(site, client_context(site))
    assert (status, body) == (200, BODY)

    # everything else on the plain listener still redirects to HTTPS
    with socket.create_connection((LOOPBACK, site.http_port), timeout=10) as s:
        s.sendall(f"GET /x HTTP/1.1\r\nhost: {NAMES[0]}\r\nconnection: close\r\n\r\n".encode())
        reply = s.recv(65536)
    assert reply.startswith(b"HTTP/1.1 308")
    assert f"location: https://{NAMES[0]}:{site.https_port}/x".encode() in reply.lower()

    listing = cli(site.pebble, "cert", "list", "-c", str(site.proxy.conf))
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if line.startswith("https "))
    assert ",".join(NAMES) in row and "Pebble Intermediate" in row
    assert str(site.le / "live" / NAMES[0] / "fullchain.pem") in row


def test_forced_renewal_under_load_swaps_the_serial_without_a_failed_request(
    issued: Site,
) -> None:
    site = issued
    assert site.issue is not None and site.issue.returncode == 0, "issuance failed"
    ctx = client_context(site)
    assert wait_until(lambda: https_get(site, ctx)[0] == 200, SWAP_TIMEOUT)
    old_serial = https_get(site, ctx)[2]
    held = KeptAlive(site, ctx)
    try:
        assert held.get() == (200, BODY)
        with Load(site) as load:
            assert wait_until(lambda: load.ok >= 5, 30), load.failures
            res = cli(site.pebble, "cert", "renew", "--force", "-c", str(site.proxy.conf))
            assert res.returncode == 0, f"stdout:\n{res.stdout}\nstderr:\n{res.stderr}"
            assert "--force-renewal" in res.stderr and "--no-random-sleep-on-renew" in res.stderr
            # certbot ran our deploy hook, which reached the running revproxy's admin socket
            assert "Hook 'deploy-hook' ran with output" in res.stdout, res.stdout
            assert "asked revproxy to reload its certificates" in res.stdout
            assert "reload certs: certificates reloaded" in res.stdout
            assert wait_until(
                lambda: load.latest_serial() not in (None, old_serial), SWAP_TIMEOUT
            ), "the renewed certificate never reached new handshakes"
            time.sleep(LOAD_TAIL)
        assert load.failures == [], load.failures[:5]
        assert load.serials[0] == old_serial and load.serials[-1] != old_serial
        assert load.ok >= 10
        # the connection made before the renewal still works, with its old certificate
        assert held.get() == (200, BODY)
        assert held.serial == old_serial
    finally:
        held.close()
    cert, verdict = served_cert(site)
    assert verdict == "Verify return code: 0 (ok)" and cert.serial_number != old_serial


# --- failing paths --------------------------------------------------------------------------


def _conf(site: Site, name: str, acme: str) -> Path:
    """Another configuration directory for the CLI (the running proxy keeps its own)."""
    conf = site.dir / name
    conf.mkdir()
    (conf / "10-test.toml").write_text(conf_text(site.dir, site.http_port, site.https_port, acme))
    return conf


def test_pebble_unreachable(site: Site) -> None:
    url = f"https://{LOOPBACK}:{closed_port()}/dir"
    res = cli(site.pebble, "cert", "issue", "-c", str(site.proxy.conf), "--server", url, NAMES[0])
    assert res.returncode == 1
    assert "certificate issuance failed (certbot exited with 1)" in res.stderr
    assert "Connection refused" in res.stderr  # certbot's own words
    assert "Traceback" not in res.stderr + res.stdout


def test_challenge_404_when_the_token_is_not_where_revproxy_looks(site: Site) -> None:
    # certbot writes its tokens to another folder than the one the running proxy serves
    elsewhere = site.dir / "elsewhere"
    conf = _conf(site, "conf-404", acme_table(site.dir, site.pebble, webroot=elsewhere))
    res = cli(site.pebble, "cert", "issue", "-c", str(conf), "other.example")
    assert res.returncode == 1, res.stdout
    # the local probe saw it coming ...
    assert "does not serve this [acme] webroot" in res.stderr, res.stderr
    # ... and Pebble's validation through revproxy confirms it
    assert "returned 404" in res.stderr, res.stderr
    assert "hint:" in res.stderr and "[acme] webroot" in res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    line = site.proxy.wait_access(
        lambda line: "host=other.example:" in line and "acme-challenge" in line
    )
    assert '" 404 ' in line and "route=acme" in line


def test_certbot_missing(site: Site) -> None:
    conf = _conf(
        site, "conf-no-certbot", acme_table(site.dir, site.pebble, certbot="/nonexistent/certbot")
    )
    for args in (("issue", NAMES[0]), ("renew",)):
        res = cli(site.pebble, "cert", *args[:1], "-c", str(conf), *args[1:])
        assert res.returncode == 1
        assert 'certbot not found: "/nonexistent/certbot"' in res.stderr, res.stderr
        assert "Traceback" not in res.stderr


# --- forward: challenges relayed to certbot --standalone ------------------------------------


def admin(site: Site, command: str) -> str:
    """One command on the running proxy's admin socket; its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(site.dir / "admin.sock"))
        s.sendall(command.encode() + b"\n")
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer.decode()


def test_issue_with_challenges_forwarded_to_certbot_standalone(issued: Site) -> None:
    """[acme] forward: revproxy relays Pebble's challenge requests to certbot --standalone,
    which listens on the forward address only while it runs."""
    site = issued
    conf_file = site.proxy.conf / "10-test.toml"
    original = conf_file.read_text()
    forward = f"{LOOPBACK}:{free_port()}"
    conf_file.write_text(
        conf_text(
            site.dir, site.http_port, site.https_port,
            acme_table(site.dir, site.pebble, forward=forward),
            workers=2 if "workers = 2" in original else 1,
        )
    )  # fmt: skip
    try:
        assert admin(site, "reload").startswith("ok"), "the forward config did not load"
        name = "fwd.example"
        res = cli(site.pebble, "cert", "issue", "-c", str(site.proxy.conf), name)
        assert res.returncode == 0, f"stdout:\n{res.stdout}\nstderr:\n{res.stderr}"
        assert f"--standalone --http-01-port {forward.rsplit(':', 1)[1]}" in res.stderr
        line = site.proxy.wait_access(
            lambda line: f"host={name}:" in line and "/.well-known/acme-challenge/" in line
        )
        assert '" 200 ' in line and "route=acme" in line

        def served() -> bool:
            cert, verdict = served_cert(site, name)
            return verdict == "Verify return code: 0 (ok)" and "Pebble" in str(cert.issuer)

        assert wait_until(served, SWAP_TIMEOUT), served_cert(site, name)
        # certbot is gone: a challenge now has nowhere to go (502), never a file or a redirect
        with socket.create_connection((LOOPBACK, site.http_port), timeout=10) as s:
            s.sendall(
                f"GET /.well-known/acme-challenge/abc HTTP/1.1\r\nhost: {name}\r\n"
                "connection: close\r\n\r\n".encode()
            )
            assert s.recv(65536).startswith(b"HTTP/1.1 502")
    finally:
        conf_file.write_text(original)
        assert admin(site, "reload").startswith("ok")
