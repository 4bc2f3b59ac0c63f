"""TLS room: certificate loading, SNI choice, the generated default certificate, safe settings.

Handshakes are real: a threaded `ssl` server (and once asyncio) on loopback, with the
`openssl s_client` command line or Python's `ssl` as the client.
"""

from __future__ import annotations

import asyncio
import os
import queue
import re
import shutil
import socket
import ssl
import stat
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from revproxy.certs.files import (
    DEFAULT_CERT_COMMON_NAME,
    LoadedCert,
    generate_default_cert,
    generate_self_signed,
    load_cert_pair,
    scan_cert_dir,
)
from revproxy.certs.store import CertStore, server_context
from revproxy.edge.tls import ServerTLS, server_name_of, set_ticket_keys, ticket_keys_from
from revproxy.errors import CertificateError

ALPN = ("h2", "http/1.1")
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


# --- certificate factory ------------------------------------------------------------------


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, password: bytes = b"") -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def make_cert(
    folder: Path,
    names: Sequence[str],
    *,
    cn: str = "test",
    with_san: bool = True,
    days: int = 90,
    use_rsa: bool = False,
) -> tuple[Path, Path]:
    """Write <folder>/fullchain.pem + privkey.pem for `names`; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if use_rsa
        else ec.generate_private_key(ec.SECP256R1())
    )
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=days))
    )
    if with_san:
        san = x509.SubjectAlternativeName([x509.DNSName(n) for n in names])
        builder = builder.add_extension(san, critical=False)
    cert = builder.sign(key, hashes.SHA256())
    cert_path, key_path = folder / "fullchain.pem", folder / "privkey.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(_key_pem(key))
    return cert_path, key_path


def load(
    folder: Path,
    names: Sequence[str],
    *,
    cn: str = "test",
    with_san: bool = True,
    days: int = 90,
    use_rsa: bool = False,
) -> LoadedCert:
    pair = make_cert(folder, names, cn=cn, with_san=with_san, days=days, use_rsa=use_rsa)
    return load_cert_pair(*pair)


# --- a threaded TLS server and clients ----------------------------------------------------


@dataclass
class Handshake:
    server_name: str | None = None
    alpn: str | None = None
    context: ssl.SSLContext | None = None
    error: str | None = None


class EchoServer:
    """Accepts on 127.0.0.1, records each handshake, then echoes until the client leaves."""

    def __init__(self, tls: ServerTLS) -> None:
        self.tls = tls
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self.handshakes: queue.Queue[Handshake] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)

    def __enter__(self) -> EchoServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()

    def next_handshake(self) -> Handshake:
        return self.handshakes.get(timeout=10)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(10)
        try:
            tls = self.tls.context.wrap_socket(sock, server_side=True)
        except OSError as exc:
            sock.close()
            self.handshakes.put(Handshake(error=str(exc)))
            return
        with tls:
            self.handshakes.put(
                Handshake(
                    server_name=server_name_of(tls),
                    alpn=tls.selected_alpn_protocol(),
                    context=tls.context,
                )
            )
            try:
                while data := tls.recv(4096):
                    tls.sendall(data)
            except OSError:
                pass


@dataclass
class SClient:
    ok: bool
    output: str
    cert: x509.Certificate | None


def s_client(port: int, *args: str) -> SClient:
    """Run `openssl s_client -connect 127.0.0.1:PORT ARGS </dev/null`."""
    proc = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
        check=False,
    )
    out = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
    found = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", out, re.S)
    cert = x509.load_pem_x509_certificate(found.group(0).encode()) if found else None
    return SClient(ok=proc.returncode == 0 and cert is not None, output=out, cert=cert)


def py_client(port: int, server_name: str | None) -> ssl.SSLSocket:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(list(ALPN))
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return ctx.wrap_socket(sock, server_hostname=server_name)


def peer_serial(tls: ssl.SSLSocket) -> int:
    der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


# --- fixtures -----------------------------------------------------------------------------


@dataclass
class Sites:
    www: LoadedCert  # www.example.com, exact
    wildcard: LoadedCert  # *.example.com
    other: LoadedCert  # other.test
    default_pem: tuple[bytes, bytes]

    def store(self, *certs: LoadedCert) -> CertStore:
        return CertStore(certs or (self.www, self.wildcard, self.other), alpn=ALPN)


@pytest.fixture
def sites(tmp_path: Path) -> Sites:
    return Sites(
        www=load(tmp_path / "www", ["www.example.com"]),
        wildcard=load(tmp_path / "wild", ["*.example.com"]),
        other=load(tmp_path / "other", ["other.test"]),
        default_pem=generate_default_cert(),
    )


@pytest.fixture
def serve(sites: Sites) -> Iterator[Callable[..., EchoServer]]:
    servers: list[EchoServer] = []

    def start(
        unknown_sni: Literal["generated", "reject"] = "generated", store: CertStore | None = None
    ) -> EchoServer:
        tls = ServerTLS(
            store or sites.store(),
            unknown_sni=unknown_sni,
            alpn=ALPN,
            default_pem=sites.default_pem,
        )
        server = EchoServer(tls).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.__exit__()


# --- SNI choice over real handshakes ------------------------------------------------------


@needs_openssl
@pytest.mark.parametrize(
    ("sni", "expected"),
    [
        ("www.example.com", "www"),
        ("WWW.Example.COM", "www"),  # names are case-insensitive
        ("a.example.com", "wildcard"),
        ("other.test", "other"),
    ],
)
def test_sni_chooses_certificate(
    serve: Callable[..., EchoServer], sites: Sites, sni: str, expected: str
) -> None:
    server = serve()
    result = s_client(server.port, "-servername", sni)
    assert result.ok, result.output
    want: LoadedCert = getattr(sites, expected)
    assert result.cert is not None and result.cert.serial_number == want.serial
    assert server.next_handshake().server_name == sni.lower()


@needs_openssl
@pytest.mark.parametrize("sni", [None, "unknown.test", "example.com", "a.b.example.com"])
def test_unknown_or_missing_sni_gets_generated_cert(
    serve: Callable[..., EchoServer], sites: Sites, sni: str | None
) -> None:
    server = serve()
    result = s_client(server.port, *(["-servername", sni] if sni else ["-noservername"]))
    assert result.ok, result.output
    cert = result.cert
    assert cert is not None
    default = x509.load_pem_x509_certificate(sites.default_pem[0])
    assert cert.serial_number == default.serial_number
    assert cert.subject.rfc4514_string() == f"CN={DEFAULT_CERT_COMMON_NAME}"
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    der = cert.public_bytes(serialization.Encoding.DER)
    for name in (b"example", b"other.test", b"revproxy"):
        assert name not in der
    assert server.next_handshake().server_name == sni


@needs_openssl
@pytest.mark.parametrize("args", [["-noservername"], ["-servername", "unknown.test"]])
def test_reject_mode_fails_handshake(serve: Callable[..., EchoServer], args: list[str]) -> None:
    server = serve("reject")
    result = s_client(server.port, *args)
    assert not result.ok
    assert "unrecognized name" in result.output
    assert server.next_handshake().error is not None


@needs_openssl
def test_reject_mode_still_serves_known_names(
    serve: Callable[..., EchoServer], sites: Sites
) -> None:
    result = s_client(serve("reject").port, "-servername", "other.test")
    assert result.ok and result.cert is not None
    assert result.cert.serial_number == sites.other.serial


@needs_openssl
@pytest.mark.parametrize("sni", ["www.example.com", None])
def test_alpn_negotiated(serve: Callable[..., EchoServer], sni: str | None) -> None:
    server = serve()
    args = ["-servername", sni] if sni else ["-noservername"]
    result = s_client(server.port, *args, "-alpn", "http/1.1,h2")
    assert result.ok, result.output
    assert "ALPN protocol: h2" in result.output  # server preference wins
    assert server.next_handshake().alpn == "h2"


@needs_openssl
@pytest.mark.parametrize(
    ("args", "refusal"),
    [
        (["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"], None),
        (["-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305"], None),
        (["-tls1_3"], None),
        (["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA"], "NO_SHARED"),
        (["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"], "UNSUPPORTED_PROTOCOL"),
        (["-tls1", "-cipher", "DEFAULT@SECLEVEL=0"], "UNSUPPORTED_PROTOCOL"),
    ],
)
def test_protocol_and_cipher_floor(
    serve: Callable[..., EchoServer], args: list[str], refusal: str | None
) -> None:
    server = serve()
    result = s_client(server.port, "-servername", "www.example.com", *args)
    assert result.ok is (refusal is None), result.output
    error = server.next_handshake().error
    if refusal is None:
        assert error is None
    else:  # refused by the server, not by the client's own policy
        assert error is not None and refusal in error


@needs_openssl
@pytest.mark.parametrize(
    ("cipher", "accepted"),
    [("ECDHE-RSA-AES128-GCM-SHA256", True), ("AES128-GCM-SHA256", False)],  # RSA key exchange
)
def test_rsa_key_exchange_refused(
    serve: Callable[..., EchoServer], tmp_path: Path, cipher: str, accepted: bool
) -> None:
    cert = load(tmp_path / "rsa", ["rsa.test"], use_rsa=True)
    server = serve(store=CertStore([cert], alpn=ALPN))
    result = s_client(server.port, "-servername", "rsa.test", "-tls1_2", "-cipher", cipher)
    assert result.ok is accepted, result.output


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_session_ticket_resumes_through_sni_switch(
    serve: Callable[..., EchoServer], sites: Sites, version: ssl.TLSVersion
) -> None:
    server = serve()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = version
    session: ssl.SSLSession | None = None
    for attempt in range(3):  # full, resumed, resumed with the ticket the resumption gave
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        with ctx.wrap_socket(sock, server_hostname="www.example.com", session=session) as tls:
            tls.sendall(b"x")
            assert tls.recv(1) == b"x"  # TLS 1.3 tickets arrive after the handshake
            assert tls.session_reused is (attempt > 0)
            assert peer_serial(tls) == sites.www.serial
            session = tls.session
    assert session is not None and session.has_ticket


def _session_from(
    client: ssl.SSLContext, port: int, session: ssl.SSLSession | None
) -> tuple[ssl.SSLSession, bool]:
    """One connection offering `session`: (the session it ends with, whether it resumed)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    with client.wrap_socket(sock, server_hostname="a.example.com", session=session) as tls:
        tls.sendall(b"x")
        assert tls.recv(1) == b"x"  # TLS 1.3 tickets arrive after the handshake
        assert tls.session is not None
        return tls.session, tls.session_reused


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_ticket_resumes_on_every_listener_with_the_same_default_key(
    serve: Callable[..., EchoServer], sites: Sites, version: ssl.TLSVersion
) -> None:
    """Workers and reloads build their own contexts from the master's default certificate: a
    ticket one of them issued resumes on the others; another default key refuses it."""
    first, second = serve(), serve()
    assert first.tls.shared_tickets and second.tls.shared_tickets
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # a session belongs to its client context
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    client.maximum_version = version
    session, reused = _session_from(client, first.port, None)
    assert not reused
    session, reused = _session_from(client, second.port, session)
    assert reused
    assert _session_from(client, first.port, session)[1]
    stranger = EchoServer(
        ServerTLS(
            sites.store(), unknown_sni="generated", alpn=ALPN, default_pem=generate_default_cert()
        )
    )
    with stranger:
        assert not _session_from(client, stranger.port, session)[1]


def test_ticket_keys_are_derived_and_checked(sites: Sites) -> None:
    key_pem = sites.default_pem[1]
    keys = ticket_keys_from(key_pem)
    assert len(keys) == 80 and keys == ticket_keys_from(key_pem)
    assert keys != ticket_keys_from(generate_default_cert()[1])
    assert key_pem not in keys
    ctx = server_context(sites.www.cert_path, sites.www.key_path, alpn=ALPN)
    with pytest.raises(ValueError, match="80 bytes"):
        set_ticket_keys(ctx, keys[:48])
    assert set_ticket_keys(ctx, keys)


def test_server_name_of_with_asyncio(sites: Sites) -> None:
    tls = ServerTLS(
        sites.store(), unknown_sni="generated", alpn=ALPN, default_pem=sites.default_pem
    )
    seen: list[str | None] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        assert isinstance(ssl_object, ssl.SSLObject)
        seen.append(server_name_of(ssl_object))
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls.context)
        port = server.sockets[0].getsockname()[1]
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.check_hostname = False
        client.verify_mode = ssl.CERT_NONE
        async with server:
            for name in ("a.example.com", None):
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        "127.0.0.1", port, ssl=client, server_hostname=name or ""
                    ),
                    10,
                )
                await asyncio.sleep(0.05)
                writer.close()

    asyncio.run(main())
    assert seen == ["a.example.com", None]


def test_replace_store_affects_only_new_handshakes(
    serve: Callable[..., EchoServer], sites: Sites, tmp_path: Path
) -> None:
    server = serve()
    tls = server.tls
    old_store = tls.store
    first = py_client(server.port, "www.example.com")
    first_handshake = server.next_handshake()
    assert peer_serial(first) == sites.www.serial

    renewed = load(tmp_path / "renewed", ["www.example.com"], days=180)
    new_store = sites.store(renewed)
    tls.replace_store(new_store)
    assert tls.store is new_store

    with first:  # the established connection keeps working, on its old certificate
        first.sendall(b"ping")
        assert first.recv(4) == b"ping"
        assert peer_serial(first) == sites.www.serial
        assert first_handshake.context is old_store.context_for("www.example.com")
    with py_client(server.port, "www.example.com") as second:
        assert peer_serial(second) == renewed.serial
    assert server.next_handshake().context is new_store.context_for("www.example.com")


def test_replace_store_refuses_other_alpn(sites: Sites) -> None:
    tls = ServerTLS(
        sites.store(), unknown_sni="generated", alpn=ALPN, default_pem=sites.default_pem
    )
    with pytest.raises(ValueError, match="ALPN"):
        tls.replace_store(CertStore([sites.www], alpn=["http/1.1"]))


# --- CertStore lookup (no sockets) --------------------------------------------------------


@pytest.mark.parametrize(
    ("server_name", "expected"),
    [
        ("www.example.com", "www"),
        ("www.example.com.", "www"),  # absolute form
        ("Www.Example.Com", "www"),
        ("a.example.com", "wildcard"),
        ("example.com", None),  # the wildcard does not cover its parent
        ("a.b.example.com", None),  # ... nor two labels
        (".example.com", None),
        ("other.test", "other"),
        ("x.other.test", None),
        ("", None),
        ("127.0.0.1", None),
    ],
)
def test_store_lookup(sites: Sites, server_name: str, expected: str | None) -> None:
    store = sites.store()
    found = store.lookup(server_name)
    want = getattr(sites, expected) if expected else None
    assert found == want
    assert (store.context_for(server_name) is None) is (want is None)


def test_store_prefers_latest_not_after(sites: Sites, tmp_path: Path) -> None:
    short = load(tmp_path / "short", ["www.example.com", "*.example.com"], days=10)
    long_ = load(tmp_path / "long", ["www.example.com"], days=300)
    for order in ([short, long_, sites.wildcard], [sites.wildcard, long_, short]):
        store = CertStore(order, alpn=ALPN)
        assert store.lookup("www.example.com") == long_
        assert store.lookup("a.example.com") == sites.wildcard  # 90 days beats 10
        assert store.certs == tuple(order)


# --- load_cert_pair -----------------------------------------------------------------------


def test_load_cert_pair_reads_fields(tmp_path: Path) -> None:
    cert_path, key_path = make_cert(tmp_path / "ok", ["WWW.Example.com", "*.Example.com"])
    loaded = load_cert_pair(cert_path, key_path)
    assert loaded.names == ("www.example.com", "*.example.com")
    assert (loaded.cert_path, loaded.key_path) == (cert_path, key_path)
    assert loaded.not_before.tzinfo is not None and loaded.not_after.tzinfo is not None
    assert loaded.not_before < datetime.now(UTC) < loaded.not_after
    assert loaded.subject == loaded.issuer == "CN=test"
    assert loaded.serial > 0


def test_load_cert_pair_uses_cn_only_without_san(tmp_path: Path) -> None:
    loaded = load(tmp_path / "cn", [], cn="Legacy.Example", with_san=False)
    assert loaded.names == ("legacy.example",)
    with_san = load(tmp_path / "san", ["a.test"], cn="ignored.test")
    assert with_san.names == ("a.test",)


def _other_key_pem() -> bytes:
    return _key_pem(ec.generate_private_key(ec.SECP256R1()))


def _traditional_encrypted_key() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.BestAvailableEncryption(b"secret"),
    )


def _replace_with_dir(cert: Path, key: Path) -> None:
    cert.unlink()
    cert.mkdir()


def _dangle_key(folder: Path) -> None:
    (folder / "privkey.pem").unlink()
    (folder / "privkey.pem").symlink_to("gone.pem")


def _encrypted_key_of(cert: Path, key: Path) -> None:
    k = serialization.load_pem_private_key(key.read_bytes(), None)
    assert isinstance(k, ec.EllipticCurvePrivateKey)
    key.write_bytes(_key_pem(k, password=b"secret"))


LOAD_ERRORS: list[tuple[str, Callable[[Path, Path], object], str]] = [
    ("cert missing", lambda c, k: c.unlink(), r"certificate file .*fullchain\.pem does not exist"),
    ("key missing", lambda c, k: k.unlink(), r"private key file .*privkey\.pem does not exist"),
    ("cert is dir", _replace_with_dir, r"fullchain\.pem is a directory"),
    ("cert garbage", lambda c, k: c.write_bytes(b"\x00junk"), r"fullchain\.pem is not PEM"),
    ("cert is a key", lambda c, k: c.write_bytes(k.read_bytes()), r"holds no certificate"),
    (
        "cert bad base64",
        lambda c, k: c.write_bytes(
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        ),
        r"fullchain\.pem is malformed",
    ),
    ("key garbage", lambda c, k: k.write_text("hello"), r"privkey\.pem is not PEM"),
    ("key is a cert", lambda c, k: k.write_bytes(c.read_bytes()), r"holds no private key"),
    (
        "key bad base64",
        lambda c, k: k.write_bytes(
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        ),
        r"privkey\.pem is malformed",
    ),
    ("key mismatched", lambda c, k: k.write_bytes(_other_key_pem()), r"does not match"),
    ("key encrypted pkcs8", _encrypted_key_of, r"privkey\.pem is encrypted"),
    (
        "key encrypted traditional",
        lambda c, k: k.write_bytes(_traditional_encrypted_key()),
        r"privkey\.pem is encrypted",
    ),
]


@pytest.mark.parametrize(("case", "spoil", "message"), LOAD_ERRORS, ids=[c[0] for c in LOAD_ERRORS])
def test_load_cert_pair_errors(
    tmp_path: Path, case: str, spoil: Callable[[Path, Path], object], message: str
) -> None:
    cert_path, key_path = make_cert(tmp_path / "site", ["site.test"])
    spoil(cert_path, key_path)
    with pytest.raises(CertificateError, match=message):
        load_cert_pair(cert_path, key_path)


# --- scan_cert_dir ------------------------------------------------------------------------


def test_scan_follows_certbot_symlinks(tmp_path: Path) -> None:
    archive, live = tmp_path / "archive" / "example.com", tmp_path / "live" / "example.com"
    chain, key = make_cert(archive, ["example.com", "www.example.com"])
    chain.rename(archive / "fullchain1.pem")
    key.rename(archive / "privkey1.pem")
    live.mkdir(parents=True)
    (live / "fullchain.pem").symlink_to("../../archive/example.com/fullchain1.pem")
    (live / "privkey.pem").symlink_to("../../archive/example.com/privkey1.pem")
    (live.parent / "README").write_text("This directory contains your keys.\n")
    (live.parent / "empty").mkdir()

    certs, errors = scan_cert_dir(live.parent)
    assert errors == []
    assert [c.names for c in certs] == [("example.com", "www.example.com")]
    assert certs[0].cert_path == live / "fullchain.pem"  # the live link, renewed in place


SCAN_ERRORS: list[tuple[str, Callable[[Path], object], str]] = [
    ("no key", lambda d: (d / "privkey.pem").unlink(), r"has fullchain\.pem but no privkey\.pem"),
    ("no chain", lambda d: (d / "fullchain.pem").unlink(), r"has privkey\.pem but no fullchain"),
    ("mismatch", lambda d: (d / "privkey.pem").write_bytes(_other_key_pem()), r"does not match"),
    (
        "dangling link",
        _dangle_key,
        r"privkey\.pem does not exist",
    ),
]


@pytest.mark.parametrize(("case", "spoil", "message"), SCAN_ERRORS, ids=[c[0] for c in SCAN_ERRORS])
def test_scan_reports_bad_folders(
    tmp_path: Path, case: str, spoil: Callable[[Path], object], message: str
) -> None:
    make_cert(tmp_path / "good.test", ["good.test"])
    make_cert(tmp_path / "bad.test", ["bad.test"])
    spoil(tmp_path / "bad.test")
    certs, errors = scan_cert_dir(tmp_path)
    assert [c.names for c in certs] == [("good.test",)]
    assert len(errors) == 1
    assert errors[0].startswith(f"{tmp_path / 'bad.test'}: ")
    assert re.search(message, errors[0])


def test_scan_missing_dir_is_empty(tmp_path: Path) -> None:
    assert scan_cert_dir(tmp_path / "nothing") == ([], [])


def test_scan_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    certs, errors = scan_cert_dir(tmp_path / "file")
    assert certs == [] and len(errors) == 1 and "not a directory" in errors[0]


# --- generated certificates ---------------------------------------------------------------


def test_generated_default_cert_names_nothing() -> None:
    cert_pem, key_pem = generate_default_cert()
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert cert.subject == cert.issuer
    assert [a.oid for a in cert.subject] == [NameOID.COMMON_NAME]
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    now = datetime.now(UTC)
    assert now - timedelta(days=1, minutes=1) < cert.not_valid_before_utc < now
    assert cert.not_valid_after_utc - now > timedelta(days=364)
    assert b"PRIVATE KEY" in key_pem
    other = x509.load_pem_x509_certificate(generate_default_cert()[0])
    assert other.serial_number != cert.serial_number


def test_generate_self_signed(tmp_path: Path) -> None:
    cert_path, key_path = tmp_path / "demo" / "cert.pem", tmp_path / "demo" / "key.pem"
    loaded = generate_self_signed(["LocalHost", "127.0.0.1", "::1"], cert_path, key_path)
    assert loaded.names == ("localhost",)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    san = x509.load_pem_x509_certificate(cert_path.read_bytes()).extensions
    ips = san.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in ips.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert sorted(os.listdir(tmp_path / "demo")) == ["cert.pem", "key.pem"]  # no temp files left


@pytest.mark.parametrize("names", [[], ["bad name"], ["a/b"], ["a..b"], [""]])
def test_generate_self_signed_refuses_bad_names(tmp_path: Path, names: list[str]) -> None:
    with pytest.raises(CertificateError):
        generate_self_signed(names, tmp_path / "c.pem", tmp_path / "k.pem")


# --- server_context -----------------------------------------------------------------------


def test_server_context_settings(sites: Sites) -> None:
    ctx = server_context(sites.www.cert_path, sites.www.key_path, alpn=ALPN)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    for option in (ssl.OP_NO_COMPRESSION, ssl.OP_CIPHER_SERVER_PREFERENCE, ssl.OP_NO_RENEGOTIATION):
        assert ctx.options & option
    assert not ctx.options & ssl.OP_NO_TICKET
    assert ctx.num_tickets == 1
    for cipher in ctx.get_ciphers():
        if cipher["protocol"] == "TLSv1.2":
            assert cipher["name"].startswith("ECDHE-"), cipher["name"]
            assert "GCM" in cipher["name"] or "CHACHA20" in cipher["name"], cipher["name"]


def test_server_context_from_pem_leaves_no_file(
    sites: Sites, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    cert_pem, key_pem = sites.default_pem
    server_context(None, None, alpn=ALPN, cert_pem=cert_pem, key_pem=key_pem)
    assert list(scratch.iterdir()) == []
    with pytest.raises(CertificateError):
        server_context(None, None, alpn=ALPN, cert_pem=cert_pem, key_pem=_other_key_pem())
    assert list(scratch.iterdir()) == []


def test_server_context_needs_one_source(sites: Sites) -> None:
    with pytest.raises(ValueError):
        server_context(None, None, alpn=ALPN)
    with pytest.raises(ValueError):
        server_context(
            sites.www.cert_path,
            sites.www.key_path,
            alpn=ALPN,
            cert_pem=sites.default_pem[0],
            key_pem=sites.default_pem[1],
        )
