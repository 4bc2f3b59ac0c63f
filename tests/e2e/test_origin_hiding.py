"""Origin hiding end to end: nothing a client receives names an origin.

The origins here are raw-socket servers on their own loopback addresses (127.0.0.23 and
127.0.0.24, ``localhost`` and ``[::1]``) that answer exactly the bytes a test asks for: the
identity headers, self-referencing ``Location``-like headers and cookie domains real
application servers send, a reason phrase, 1xx and trailer headers, garbage, and silence.
Clients are curl, ``openssl s_client`` and raw sockets. The leak test keeps every byte any
client received and searches it for the origins' addresses, ports and identity strings, while
the origins answer, misbehave and finally die.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from harness import (
    LOOPBACK,
    Proxy,
    closed_port,
    curl,
    first_certificate,
    free_port,
    make_cert,
    openssl_client,
    parse_curl_include,
    raw_exchange,
    split_response,
    toml_path,
)

import revproxy

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("real_peers")]

# The two servers of the "leaky" pool, each on an address of its own.
ORIGIN_A = "127.0.0.23"
ORIGIN_B = "127.0.0.24"
# What the origins say about themselves; none of it may reach a client.
IDENTITY = {
    "server": "Apache/2.4.57 (Debian) OpenSSL/3.0.11",
    "x-powered-by": "PHP/8.2.7",
    "x-aspnet-version": "4.0.30319",
    "x-aspnetmvc-version": "5.2",
    "x-runtime": "0.012345",
    "x-backend-server": "app-7.origin.internal",
    "via": "1.1 varnish-origin-cache",
    "x-internal-id": "secret-7f3a",  # hidden by the pool's hide_headers
}
IDENTITY_STRINGS = (
    "Apache", "OpenSSL/3", "PHP/", "4.0.30319", "0.012345", "origin.internal", "varnish",
    "secret-7f3a",
)  # fmt: skip
# The response timeout of the pools of origins that can be slow (leaky, named, v6): /slow
# outlasts it, and each client gets its 504 in a second rather than waiting out its own bound.
RESPONSE_TIMEOUT = "1s"


Responder = Callable[[str, "RawOrigin"], bytes | None]


@dataclass
class RawOrigin:
    """Answers each request (one per connection) with the bytes ``respond`` returns for its
    path, then closes; None means: stay silent until stopped."""

    host: str  # the address it listens on
    respond: Responder
    name: str = ""  # how it names itself (and how the pool names it); default: ``host``
    port: int = 0
    requests: list[str] = field(default_factory=list)
    _sock: socket.socket | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> RawOrigin:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(64)
        sock.settimeout(0.2)
        self._sock = sock
        self.port = int(sock.getsockname()[1])
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self) -> None:
        """The origin dies: its port refuses connections from now on."""
        self._stop.set()
        if self._sock is not None:
            self._sock.close()
        for t in self._threads:
            t.join(timeout=5.0)

    @property
    def me(self) -> str:
        return self.name or self.host

    @property
    def authority(self) -> str:
        return f"[{self.me}]:{self.port}" if ":" in self.me else f"{self.me}:{self.port}"

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
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            path = head.split(b" ", 2)[1].decode("latin-1")
            self.requests.append(path)
            data = self.respond(path, self)
            if data is None:
                self._stop.wait(30.0)
                return
            conn.sendall(data)
        except OSError:
            return
        finally:
            conn.close()


def identity_lines() -> str:
    return "".join(f"{name}: {value}\r\n" for name, value in IDENTITY.items())


def leaky(other: Callable[[], str]) -> Responder:
    """What an application server behind a proxy typically reveals, by path. ``other`` gives
    the authority of the other server of the pool."""

    def respond(path: str, me: RawOrigin) -> bytes | None:
        own = me.authority
        host = f"[{me.me}]" if ":" in me.me else me.me
        body = b"hello\n"
        length = f"content-length: {len(body)}\r\nconnection: close\r\n"
        if path == "/reveal":
            return (
                "HTTP/1.1 302 Found\r\n"
                + identity_lines()
                + f"location: http://{own}/login?next=/account\r\n"
                + f"content-location: http://{own}/reveal.php\r\n"
                + f"refresh: 5; url=http://{other()}/elsewhere\r\n"
                + f"set-cookie: sid=1; Domain={me.me}; Path=/; HttpOnly\r\n"
                + f"set-cookie: pref=2; path=/; domain=.{me.me}\r\n"
                + "set-cookie: theme=dark; Domain=example.com\r\n"
                + "set-cookie: plain=3\r\n"
                + length
                + "\r\n"
            ).encode() + body
        if path.startswith("/location/"):
            # /location/<form>: one Location header in the form asked for.
            form = path.split("/", 2)[2]
            target = {
                "own": f"http://{own}/a?b=c#d",
                "https": f"https://{own}/secure",
                "scheme-relative": f"//{own}/x",
                "upper": f"HTTP://{own.upper()}/UP",
                "userinfo": f"http://user:pw@{own}/u",
                "no-port": f"http://{host}/no-port",
                "other-port": f"http://{host}:1/other-port",
                "other-server": f"http://{other()}/sibling",
                "bare-authority": f"http://{own}",
                "relative": "/relative/path",
                "external": "https://example.org/elsewhere",
            }[form]
            return (
                f"HTTP/1.1 301 Moved Permanently\r\nlocation: {target}\r\n{length}\r\n"
            ).encode() + body
        if path == "/reason":
            return (f"HTTP/1.1 200 OK from {own} (Apache/2.4.57)\r\n{length}\r\n").encode() + body
        if path == "/early-hints":
            return (
                "HTTP/1.1 103 Early Hints\r\n"
                + identity_lines()
                + "link: </style.css>; rel=preload; as=style\r\n\r\n"
                + f"HTTP/1.1 200 OK\r\n{length}\r\n"
            ).encode() + body
        if path == "/trailers":
            return (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n"
                "trailer: x-powered-by, server, x-backend-server\r\nconnection: close\r\n\r\n"
                "6\r\nhello\n\r\n0\r\n"
                + f"x-powered-by: {IDENTITY['x-powered-by']}\r\n"
                + f"server: {IDENTITY['server']}\r\n"
                + f"x-backend-server: {own}\r\n"
                + "x-checksum: 42\r\n\r\n"
            ).encode()
        if path == "/die-in-body":
            return (
                "HTTP/1.1 200 OK\r\n" + identity_lines() + "content-length: 1000\r\n\r\npartial"
            ).encode()
        if path == "/garbage":
            return f"SSH-2.0-OpenSSH_9.2p1 Debian-2 {own}\r\n".encode()
        if path == "/slow":
            return None
        if path == "/error":
            return (
                "HTTP/1.1 500 Internal Server Error\r\n" + identity_lines() + f"{length}\r\n"
            ).encode() + body
        return (f"HTTP/1.1 200 OK\r\n{identity_lines()}{length}\r\n").encode() + body

    return respond


# --- the proxy -------------------------------------------------------------------------------


@dataclass
class Site:
    proxy: Proxy
    http: int
    https: int
    a: RawOrigin
    b: RawOrigin
    named: RawOrigin  # configured as localhost:PORT
    v6: RawOrigin  # configured as [::1]:PORT
    cert: Path
    received: list[bytes] = field(default_factory=list)  # every byte any client got

    def forbidden(self) -> list[str]:
        """Strings that name an origin: addresses, ports, host names, identity strings."""
        return [
            ORIGIN_A, ORIGIN_B, str(self.a.port), str(self.b.port), str(self.named.port),
            str(self.v6.port), "localhost", "::1", *IDENTITY_STRINGS,
        ]  # fmt: skip

    def leaks(self) -> list[str]:
        everything = b"".join(self.received).decode("latin-1")
        return [s for s in self.forbidden() if s.lower() in everything.lower()]

    def raw(self, data: bytes, *, tls: bool = False, host: str = "hide.test") -> bytes:
        port = self.https if tls else self.http
        ctx = None
        if tls:
            ctx = ssl.create_default_context(cafile=str(self.cert))
        got, _ = raw_exchange(port, data, tls=ctx, server_hostname=host if tls else None)
        self.received.append(got)
        return got

    def get(
        self, path: str, host: str = "hide.test", *, tls: bool = False, method: str = "GET"
    ) -> tuple[int, dict[str, list[str]], bytes]:
        """One request through curl; (status, headers by lower-case name, body)."""
        port = self.https if tls else self.http
        scheme = "https" if tls else "http"
        args = ["-i", "-X", method, "--resolve", f"{host}:{port}:{LOOPBACK}"]
        if tls:
            args += ["--cacert", str(self.cert)]
        res = curl(*args, f"{scheme}://{host}:{port}{path}")
        self.received.append(res.stdout)
        assert res.returncode == 0, res.stderr.decode(errors="replace")
        statuses, headers, body = parse_curl_include(res.stdout)
        by_name: dict[str, list[str]] = {}
        for name, value in headers:
            by_name.setdefault(name, []).append(value)
        return statuses[-1], by_name, body


def site_config(
    http: int,
    https: int,
    cert: Path,
    key: Path,
    a: RawOrigin,
    b: RawOrigin,
    named: RawOrigin,
    v6: RawOrigin,
) -> str:
    return f"""
[global]
header_timeout = "2s"
max_header_size = 4096

[[listener]]
name = "http"
bind = ["127.0.0.1:{http}"]

[[listener]]
name = "https"
bind = ["127.0.0.1:{https}"]
tls = {{ certs = [{{ cert = {toml_path(cert)}, key = {toml_path(key)} }}] }}

[[route]]
host = "hide.test"
pool = "leaky"

[[route]]
host = "named.test"
pool = "named"

[[route]]
host = "v6.test"
pool = "v6"

[[route]]
host = "keep.test"
pool = "keep"

[[route]]
host = "custom.test"
pool = "custom"

[[route]]
host = "dead.test"
pool = "dead"

[pool.leaky]
servers = ["{a.authority}", "{b.authority}"]
hide_headers = ["x-internal-id"]
timeouts = {{ response = "{RESPONSE_TIMEOUT}" }}

[pool.named]
servers = ["{named.authority}"]
hide_headers = ["x-internal-id"]
timeouts = {{ response = "{RESPONSE_TIMEOUT}" }}

[pool.v6]
servers = ["{v6.authority}"]
hide_headers = ["x-internal-id"]
timeouts = {{ response = "{RESPONSE_TIMEOUT}" }}

[pool.keep]
servers = ["{a.authority}"]
server_header = "keep"

[pool.custom]
servers = ["{a.authority}"]
server_header = "edge"

[pool.dead]
servers = ["{ORIGIN_A}:{closed_port()}"]
"""


@contextlib.contextmanager
def running_site(tmp: Path) -> Iterator[Site]:
    cert, key = make_cert(tmp, "site", ["hide.test", "named.test", "v6.test"])
    http, https = free_port(), free_port()
    origins: dict[str, RawOrigin] = {}

    def authority_of(name: str) -> Callable[[], str]:
        return lambda: origins[name].authority

    a = RawOrigin(ORIGIN_A, leaky(authority_of("b"))).start()
    b = RawOrigin(ORIGIN_B, leaky(authority_of("a"))).start()
    # Alone in their pools, these two name themselves where a and b name each other.
    named = RawOrigin(LOOPBACK, leaky(authority_of("named")), name="localhost").start()
    v6 = RawOrigin("::1", leaky(authority_of("v6"))).start()
    origins.update(a=a, b=b, named=named, v6=v6)
    try:
        config = site_config(http, https, cert, key, a, b, named, v6)
        with Proxy(tmp / "proxy", config, ports=[http, https]) as proxy:
            yield Site(proxy, http, https, a, b, named, v6, cert)
            assert proxy.alive, "the proxy died:\n" + proxy.stderr()[-3000:]
    finally:
        for o in origins.values():
            o.stop()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with running_site(tmp_path_factory.mktemp("hiding")) as s:
        yield s


# --- identity headers --------------------------------------------------------------------------


def test_identity_headers_are_removed_by_default(site: Site) -> None:
    status, headers, body = site.get("/plain")
    assert status == 200 and body == b"hello\n"
    for name in IDENTITY:
        assert name not in headers, (name, headers[name])


def test_server_header_keep(site: Site) -> None:
    _, headers, _ = site.get("/plain", "keep.test")
    assert headers["server"] == [IDENTITY["server"]]
    assert "x-powered-by" not in headers  # keep applies to Server only


def test_server_header_replaced(site: Site) -> None:
    _, headers, _ = site.get("/plain", "custom.test")
    assert headers["server"] == ["edge"]
    assert "x-internal-id" in headers  # hide_headers is per pool; this pool has none


def test_hide_headers_is_per_pool(site: Site) -> None:
    _, headers, _ = site.get("/plain")
    assert "x-internal-id" not in headers


# --- Location, Content-Location, Refresh -------------------------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_reveal_headers_are_rewritten_to_the_clients_host(site: Site, tls: bool) -> None:
    status, headers, _ = site.get("/reveal", tls=tls)
    scheme = "https" if tls else "http"
    port = site.https if tls else site.http
    me = f"{scheme}://hide.test:{port}"
    assert status == 302
    assert headers["location"] == [f"{me}/login?next=/account"]
    assert headers["content-location"] == [f"{me}/reveal.php"]
    assert headers["refresh"] == [f"5; url={me}/elsewhere"]


@pytest.mark.parametrize(
    "form, expected",
    [
        ("own", "{me}/a?b=c#d"),
        ("https", "{me}/secure"),
        ("scheme-relative", "{me}/x"),
        ("upper", "{me}/UP"),
        ("userinfo", "{me}/u"),
        ("no-port", "{me}/no-port"),
        ("other-port", "{me}/other-port"),
        ("other-server", "{me}/sibling"),
        ("bare-authority", "{me}"),
        ("relative", "/relative/path"),
        ("external", "https://example.org/elsewhere"),
    ],
)
def test_location_forms(site: Site, form: str, expected: str) -> None:
    status, headers, _ = site.get(f"/location/{form}")
    assert status == 301
    assert headers["location"] == [expected.format(me=f"http://hide.test:{site.http}")]


def test_location_from_an_origin_named_by_host_name(site: Site) -> None:
    _, headers, _ = site.get("/location/own", "named.test")
    # The origin is configured as localhost:PORT and says so in its Location.
    assert headers["location"] == [f"http://named.test:{site.http}/a?b=c#d"]


def test_location_from_an_ipv6_origin(site: Site) -> None:
    _, headers, _ = site.get("/location/own", "v6.test")
    assert headers["location"] == [f"http://v6.test:{site.http}/a?b=c#d"]
    _, headers, _ = site.get("/location/no-port", "v6.test")
    assert headers["location"] == [f"http://v6.test:{site.http}/no-port"]


def test_location_keeps_the_host_the_client_used(site: Site) -> None:
    """The rewrite names the Host the client sent, port included, and nothing else."""
    got = site.raw(b"GET /location/own HTTP/1.1\r\nHost: HIDE.test\r\nConnection: close\r\n\r\n")
    _, headers, _, _ = split_response(got)
    assert ("location", "http://HIDE.test/a?b=c#d") in headers


# --- cookies -----------------------------------------------------------------------------------


def test_cookie_domains_naming_an_origin_are_dropped(site: Site) -> None:
    _, headers, _ = site.get("/reveal")
    cookies = headers["set-cookie"]
    assert cookies == [
        "sid=1; Path=/; HttpOnly",
        "pref=2; path=/",
        "theme=dark; Domain=example.com",
        "plain=3",
    ]


def test_cookie_domain_of_an_origin_host_name(site: Site) -> None:
    _, headers, _ = site.get("/reveal", "named.test")
    assert headers["set-cookie"][:2] == ["sid=1; Path=/; HttpOnly", "pref=2; path=/"]


# --- what h11 passes on unless we stop it -------------------------------------------------------


def test_reason_phrase_is_not_the_origins(site: Site) -> None:
    got = site.raw(b"GET /reason HTTP/1.1\r\nHost: hide.test\r\nConnection: close\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 200 OK\r\n"), got[:100]


def test_informational_responses_carry_no_identity(site: Site) -> None:
    got = site.raw(b"GET /early-hints HTTP/1.1\r\nHost: hide.test\r\nConnection: close\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 103 "), got[:100]
    early, _, final = got.partition(b"\r\n\r\n")
    assert b"link: </style.css>; rel=preload; as=style" in early.lower()
    for name in IDENTITY:
        assert f"\n{name}:".encode() not in early.lower(), (name, early)
    assert final.startswith(b"HTTP/1.1 200 ")


def test_trailers_carry_no_identity(site: Site) -> None:
    got = site.raw(b"GET /trailers HTTP/1.1\r\nHost: hide.test\r\nConnection: close\r\n\r\n")
    head, _, body = got.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    assert body.startswith(b"6\r\nhello\n\r\n0\r\n")
    trailers = body[len(b"6\r\nhello\n\r\n0\r\n") :].lower()
    assert b"x-checksum: 42" in trailers
    for name in ("x-powered-by", "server", "x-backend-server"):
        assert f"{name}:".encode() not in trailers, trailers


# --- local answers ----------------------------------------------------------------------------


def assert_local(status: int, headers: dict[str, list[str]], body: bytes, expected: int) -> None:
    """A local answer: no Server header, no version, a plain-text body naming the status."""
    assert status == expected, (status, body)
    assert "server" not in headers
    assert body.startswith(f"{expected} ".encode()), body
    assert revproxy.__version__.encode() not in body
    assert b"revproxy" not in body.lower()


def test_origin_errors_become_local_pages(site: Site) -> None:
    assert_local(*site.get("/slow"), 504)
    assert_local(*site.get("/garbage"), 502)
    assert_local(*site.get("/", "dead.test"), 502)


def test_origin_error_response_is_relayed_without_identity(site: Site) -> None:
    status, headers, body = site.get("/error")
    assert status == 500 and body == b"hello\n"
    assert not set(headers) & set(IDENTITY)


def test_unknown_host_gets_a_local_404(site: Site) -> None:
    before = len(site.a.requests) + len(site.b.requests)
    for host in ("unknown.test", "127.0.0.1", ORIGIN_A, f"{ORIGIN_A}:{site.a.port}"):
        got = site.raw(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        status, headers, body, _ = split_response(got)
        assert_local(status, {n: [v] for n, v in headers}, body, 404)
    # HTTP/1.0 without a Host header: still no site.
    got = site.raw(b"GET / HTTP/1.0\r\n\r\n")
    assert got.split(b" ", 2)[1] == b"404"
    assert b"hello" not in got
    assert len(site.a.requests) + len(site.b.requests) == before


def test_unknown_host_over_tls_gets_a_local_404(site: Site) -> None:
    port = site.https
    res = curl(
        "-i", "-k", "--resolve", f"unknown.test:{port}:{LOOPBACK}", f"https://unknown.test:{port}/"
    )
    site.received.append(res.stdout)
    status, headers, body = parse_curl_include(res.stdout)
    assert_local(status[-1], {n: [v] for n, v in headers}, body, 404)


def test_misdirected_request_over_tls_is_local(site: Site) -> None:
    got = site.raw(b"GET / HTTP/1.1\r\nHost: elsewhere.test\r\nConnection: close\r\n\r\n", tls=True)
    status, headers, body, _ = split_response(got)
    assert status in (404, 421)
    assert_local(status, {n: [v] for n, v in headers}, body, status)


# --- certificates --------------------------------------------------------------------------------


def served_certificate(port: int, servername: str | None) -> x509.Certificate:
    out = openssl_client(port, servername=servername)
    return x509.load_pem_x509_certificate(first_certificate(out.stdout))


def names_in(cert: x509.Certificate) -> list[str]:
    names = [str(a.value) for a in cert.subject]
    with contextlib.suppress(x509.ExtensionNotFound):
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names += [str(n.value) for n in san]
    return names


@pytest.mark.parametrize(
    "servername",
    [None, "unknown.test", LOOPBACK, ORIGIN_A],
    ids=["no-sni", "unknown-name", "proxy-ip", "origin-ip"],
)
def test_tls_without_a_known_name_gets_the_generated_certificate(
    site: Site, servername: str | None
) -> None:
    site_cert = x509.load_pem_x509_certificate(site.cert.read_bytes())
    cert = served_certificate(site.https, servername)
    assert cert != site_cert
    names = names_in(cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "default"
    for leak in ("hide.test", "named.test", "v6.test", ORIGIN_A, ORIGIN_B, LOOPBACK):
        assert not any(leak in n for n in names), names


def test_tls_with_the_site_name_gets_the_site_certificate(site: Site) -> None:
    cert = served_certificate(site.https, "hide.test")
    assert cert == x509.load_pem_x509_certificate(site.cert.read_bytes())


# --- the leak test -----------------------------------------------------------------------------


def every_exchange(s: Site) -> None:
    """Every request a client can make, over both listeners."""
    paths = [
        "/plain", "/reveal", "/reason", "/early-hints", "/trailers", "/error", "/garbage",
        "/die-in-body", "/slow", "/location/own", "/location/https", "/location/upper",
        "/location/scheme-relative", "/location/userinfo", "/location/no-port",
        "/location/other-port", "/location/other-server", "/location/bare-authority",
    ]  # fmt: skip
    for tls, hosts in ((False, ("hide.test", "named.test", "v6.test")), (True, ("hide.test",))):
        for path in paths:
            for host in hosts:
                for method in ("GET", "HEAD"):
                    req = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                    s.raw(req.encode(), tls=tls, host=host)
    for host in ("unknown.test", ORIGIN_A, "dead.test"):
        s.raw(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    s.raw(b"GET / HTTP/1.1\r\nHost: hide.test\r\nContent-Length: x\r\n\r\n")  # 400
    s.raw(b"GET / HTTP/1.1\r\nHost: hide.test\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n")  # 431
    s.raw(b"CONNECT hide.test:443 HTTP/1.1\r\nHost: hide.test:443\r\n\r\n")  # 405
    s.raw(b"GET / HTTP/1.1\r\nHost: hide.test\r\n")  # 408: the head never ends


def test_nothing_any_client_receives_names_an_origin(tmp_path: Path) -> None:
    with running_site(tmp_path) as s:
        every_exchange(s)
        assert s.a.requests and s.b.requests and s.named.requests and s.v6.requests
        everything = b"".join(s.received)
        # The rewrites happened (the test saw what it meant to check) ...
        assert b"http://hide.test/login?next=/account" in everything
        assert b"https://hide.test/login?next=/account" in everything
        assert b"HTTP/1.1 502 " in everything and b"HTTP/1.1 504 " in everything
        # ... and then the origins die; clients keep asking.
        for o in (s.a, s.b, s.named, s.v6):
            o.stop()
        alive = len(s.received)
        every_exchange(s)
        assert b"HTTP/1.1 200 " not in b"".join(s.received[alive:])
        assert s.leaks() == [], _context(b"".join(s.received), s.leaks())


def _context(data: bytes, leaks: list[str]) -> str:
    """Where each leak appears, for the failure message."""
    text = data.decode("latin-1")
    out = []
    for leak in leaks:
        for m in list(re.finditer(re.escape(leak), text, re.IGNORECASE))[:3]:
            out.append(f"{leak!r}: ...{text[max(0, m.start() - 120) : m.end() + 60]!r}...")
    return "\n".join(out)
