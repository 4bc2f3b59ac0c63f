"""Server-side TLS: certificates, SNI choice, the generated default certificate, safe settings.

Rule of this room: a client that does not name one of our sites gets nothing that names one.
A scanner hitting the bare IP (no SNI, or a made-up name) is answered with a generated,
self-signed certificate whose subject is a neutral word and which has no subjectAltName at
all, so the handshake never reveals which hosts this proxy serves (or that it is revproxy).
With ``unknown_sni = "reject"`` the handshake is refused with ``unrecognized_name`` instead.

Each configured certificate gets its own ``ssl.SSLContext``; the listener's context holds the
default certificate and an SNI callback that switches the connection to the right context.
A certificate reload builds a new `CertStore` and swaps one reference (`ServerTLS.replace_store`):
new handshakes see it, established connections keep the context they started with.

Session resumption: tickets are encrypted with the keys of the listener's context (OpenSSL keeps
it as the session context when SNI switches contexts), so they resume through any certificate.
Those keys are derived from the generated default key, which the master makes once and hands
to every worker: a ticket resumes on any worker and across reloads; a restart rotates them.

Names are matched as RFC 6125 section 6.4.3 allows for a server: "*.example.com" stands for
exactly one left-most label. An exact name beats a wildcard; among certificates for the same
name, the one that stays valid longest wins (so a renewed certificate takes over at once).
"""

from __future__ import annotations

import _ssl
import contextlib
import ctypes
import functools
import ipaddress
import logging
import os
import re
import ssl
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from revproxy.errors import CertificateError

log = logging.getLogger("revproxy.tls")

# certbot's layout: <cert_dir>/<name>/fullchain.pem + privkey.pem (symlinks into archive/).
CERTBOT_CHAIN = "fullchain.pem"
CERTBOT_KEY = "privkey.pem"

# Subject of the generated default certificate: a word that names no host and no software.
DEFAULT_CERT_COMMON_NAME = "default"

# TLS 1.2 suites: forward secrecy (ECDHE) and AEAD only; no CBC, no RSA key exchange.
# TLS 1.3 suites are all AEAD and are left at OpenSSL's defaults.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL"

# TLS 1.3 session tickets sent after a full handshake (OpenSSL's default is 2; a resumed one
# always gets 1). Each costs the server ~50 us in OpenSSL 3.0 (session copy, encoding,
# encryption), and browsers and OpenSSL clients keep only the latest session per server.
TLS13_TICKETS = 1

_PEM_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadedCert:
    """A certificate + key pair that was read, checked and found to match."""

    cert_path: Path
    key_path: Path
    names: tuple[str, ...]  # DNS SANs lower-cased ("*.example.com" kept); CN only without SANs
    not_before: datetime  # tz-aware UTC
    not_after: datetime  # tz-aware UTC
    issuer: str
    subject: str
    serial: int


# --- loading ------------------------------------------------------------------------------


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CertificateError(f"{what} file {path} does not exist") from None
    except IsADirectoryError:
        raise CertificateError(f"{what} file {path} is a directory, not a file") from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise CertificateError(f"{what} file {path} cannot be read: {reason}") from None


def _pem_labels(data: bytes) -> list[str]:
    return [m.group(1).decode("ascii") for m in _PEM_LABEL.finditer(data)]


def _names_of(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        found = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        found = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    names = (n.strip().rstrip(".").lower() for n in found)
    return tuple(dict.fromkeys(n for n in names if n))


def _spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_cert_pair(cert: Path, key: Path) -> LoadedCert:
    """Read a PEM certificate chain and its private key; raise `CertificateError` if unusable."""
    cert_data = _read(cert, "certificate")
    key_data = _read(key, "private key")

    cert_labels = _pem_labels(cert_data)
    if not cert_labels:
        raise CertificateError(f"certificate file {cert} is not PEM (no '-----BEGIN' line)")
    if "CERTIFICATE" not in cert_labels:
        found = ", ".join(dict.fromkeys(cert_labels))
        raise CertificateError(f"certificate file {cert} holds no certificate (found {found})")
    try:
        leaf = x509.load_pem_x509_certificates(cert_data)[0]
    except ValueError as exc:
        raise CertificateError(f"certificate file {cert} is malformed: {exc}") from None

    key_labels = _pem_labels(key_data)
    if not key_labels:
        raise CertificateError(f"private key file {key} is not PEM (no '-----BEGIN' line)")
    if "ENCRYPTED PRIVATE KEY" in key_labels or b"Proc-Type: 4,ENCRYPTED" in key_data:
        raise CertificateError(
            f"private key file {key} is encrypted; a passphrase cannot be typed at startup"
            f" (decrypt it: openssl pkey -in {key.name} -out {key.name}.plain)"
        )
    if not any(label.endswith("PRIVATE KEY") for label in key_labels):
        found = ", ".join(dict.fromkeys(key_labels))
        raise CertificateError(f"private key file {key} holds no private key (found {found})")
    try:
        private_key = serialization.load_pem_private_key(key_data, password=None)
    except TypeError:  # cryptography's way of saying "needs a password"
        raise CertificateError(f"private key file {key} is encrypted") from None
    except ValueError as exc:
        raise CertificateError(f"private key file {key} is malformed: {exc}") from None
    except UnsupportedAlgorithm as exc:
        raise CertificateError(f"private key file {key} cannot be used: {exc}") from None

    if _spki(private_key.public_key()) != _spki(leaf.public_key()):
        raise CertificateError(
            f"private key file {key} does not match certificate file {cert}"
            " (their public keys differ)"
        )

    # Final word to OpenSSL: exactly what the listener will do later.
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise CertificateError(f"OpenSSL refuses {cert} with {key}: {exc.reason or exc}") from None
    except OSError as exc:  # replaced under our feet, e.g. by a renewal
        raise CertificateError(f"{exc.filename or cert} cannot be read: {exc.strerror}") from None

    return LoadedCert(
        cert_path=cert,
        key_path=key,
        names=_names_of(leaf),
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        issuer=leaf.issuer.rfc4514_string(),
        subject=leaf.subject.rfc4514_string(),
        serial=leaf.serial_number,
    )


def scan_cert_dir(cert_dir: Path) -> tuple[list[LoadedCert], list[str]]:
    """Load every ``<cert_dir>/<name>/{fullchain,privkey}.pem`` pair (certbot's ``live/``).

    Returns the certificates that loaded and one message per folder that did not. Folders
    with neither file are not certificate folders and are skipped without a word.
    """
    if not os.path.lexists(cert_dir):
        return [], []  # a fresh install has no certificates yet
    if not cert_dir.is_dir():
        return [], [f"{cert_dir}: is not a directory (cert_dir must name a folder)"]
    try:
        entries = sorted(cert_dir.iterdir())
    except OSError as exc:
        return [], [f"{cert_dir}: cannot be listed: {exc.strerror or exc}"]

    certs: list[LoadedCert] = []
    errors: list[str] = []
    for folder in entries:
        if not folder.is_dir():  # follows symlinks; README and other files are ignored
            continue
        chain, key = folder / CERTBOT_CHAIN, folder / CERTBOT_KEY
        has_chain, has_key = os.path.lexists(chain), os.path.lexists(key)
        if not has_chain and not has_key:
            continue
        if has_chain != has_key:
            found, lacking = (
                (CERTBOT_CHAIN, CERTBOT_KEY) if has_chain else (CERTBOT_KEY, CERTBOT_CHAIN)
            )
            errors.append(f"{folder}: has {found} but no {lacking}")
            continue
        try:
            certs.append(load_cert_pair(chain, key))
        except CertificateError as exc:
            errors.append(f"{folder}: {exc}")
    return certs, errors


# --- generating ---------------------------------------------------------------------------


def _self_signed(subject: x509.Name, san: list[x509.GeneralName], days: int) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))  # tolerate clients with a slow clock
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    pkcs8, plain = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    key_pem = key.private_bytes(serialization.Encoding.PEM, pkcs8, plain)
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def generate_default_cert() -> tuple[bytes, bytes]:
    """A throwaway self-signed certificate that names no host: ``(cert_pem, key_pem)``."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DEFAULT_CERT_COMMON_NAME)])
    return _self_signed(subject, [], days=365)


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
        os.replace(tmp, path)  # a watcher never sees half a file
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def generate_self_signed(
    names: Sequence[str], cert_path: Path, key_path: Path, *, days: int = 365
) -> LoadedCert:
    """Write a self-signed certificate for `names` (DNS names or IP literals) and load it."""
    san: list[x509.GeneralName] = []
    for raw in names:
        name = raw.strip().rstrip(".").lower()
        try:
            san.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            try:
                ascii_name = name.encode("idna").decode("ascii")
            except UnicodeError:
                ascii_name = ""
            if not ascii_name or any(c.isspace() or c in "/:" for c in ascii_name):
                raise CertificateError(f"{raw!r} is not a host name or IP address") from None
            san.append(x509.DNSName(ascii_name))
    if not san:
        raise CertificateError("a self-signed certificate needs at least one name")
    first = str(san[0].value)
    cn = [x509.NameAttribute(NameOID.COMMON_NAME, first)] if len(first) <= 64 else []
    cert_pem, key_pem = _self_signed(x509.Name(cn), san, days)
    for path in (cert_path, key_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(key_path, key_pem, 0o600)
    _write_atomically(cert_path, cert_pem, 0o644)
    return load_cert_pair(cert_path, key_path)


# --- contexts -----------------------------------------------------------------------------


def server_context(
    cert_path: Path | None,
    key_path: Path | None,
    *,
    alpn: Sequence[str],
    cert_pem: bytes | None = None,
    key_pem: bytes | None = None,
) -> ssl.SSLContext:
    """A server context with our safe settings, holding one certificate (files or PEM bytes)."""
    from_files = cert_path is not None and key_path is not None
    from_pem = cert_pem is not None and key_pem is not None
    if from_files == from_pem:
        raise ValueError("give either cert_path and key_path, or cert_pem and key_pem")

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= (
        ssl.OP_NO_COMPRESSION  # CRIME
        | ssl.OP_CIPHER_SERVER_PREFERENCE
        | ssl.OP_NO_RENEGOTIATION  # client-initiated renegotiation is a CPU-burning DoS
    )
    ctx.options &= ~ssl.OP_NO_TICKET  # resumption saves a full handshake per reconnect
    ctx.num_tickets = TLS13_TICKETS
    if alpn:
        ctx.set_alpn_protocols(list(alpn))

    try:
        if cert_path is not None and key_path is not None:
            ctx.load_cert_chain(cert_path, key_path)
        elif cert_pem is not None and key_pem is not None:
            # ssl only loads from files: a private (0600) temporary file, removed at once.
            fd, tmp = tempfile.mkstemp(prefix="revproxy-", suffix=".pem")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(cert_pem.rstrip(b"\n") + b"\n" + key_pem)
                ctx.load_cert_chain(tmp)
            finally:
                os.unlink(tmp)
    except ssl.SSLError as exc:
        where = cert_path if cert_path is not None else "PEM data"
        raise CertificateError(f"OpenSSL refuses {where}: {exc.reason or exc}") from None
    except OSError as exc:
        raise CertificateError(
            f"{exc.filename or cert_path} cannot be read: {exc.strerror}"
        ) from None
    return ctx


# --- session ticket keys ------------------------------------------------------------------

TICKET_KEYS_SIZE = 80  # OpenSSL's layout: 16-byte key name, 32-byte HMAC secret, 32-byte AES key
_SSL_CTRL_GET_TLSEXT_TICKET_KEYS = 58
_SSL_CTRL_SET_TLSEXT_TICKET_KEYS = 59


def ticket_keys_from(secret: bytes) -> bytes:
    """Session ticket keys derived from `secret` (HKDF-SHA256, a label of their own)."""
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=TICKET_KEYS_SIZE,
        salt=None,
        info=b"revproxy tls session ticket keys v1",
    )
    return hkdf.derive(secret)


@functools.cache
def _libssl() -> ctypes.CDLL | None:
    """The OpenSSL that Python's ssl module is linked with, or None where we cannot tell."""
    path = getattr(_ssl, "__file__", None)  # the extension module that links OpenSSL
    if sys.implementation.name != "cpython" or not path:
        return None  # another object layout, or OpenSSL linked into the interpreter
    try:
        lib = ctypes.CDLL(path)  # dlsym also searches its dependencies: the same libssl
        lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_get_options.restype = ctypes.c_uint64
        lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        lib.SSL_CTX_ctrl.restype = ctypes.c_long
    except (OSError, AttributeError):
        return None
    return lib


def set_ticket_keys(ctx: ssl.SSLContext, keys: bytes) -> bool:
    """Encrypt and accept session tickets (TLS 1.3 and 1.2) on `ctx` with `keys`.

    The ssl module does not expose ``SSL_CTX_set_tlsext_ticket_keys``: it is called through
    ctypes on the ``SSL_CTX *`` that CPython's SSLContext object holds right after its object
    header. Used only when that pointer proves to be `ctx`'s (its options read the same through
    OpenSSL) and the keys read back; otherwise nothing is touched, False is returned and the
    context keeps the random keys OpenSSL gave it.
    """
    if len(keys) != TICKET_KEYS_SIZE:
        raise ValueError(f"session ticket keys are {TICKET_KEYS_SIZE} bytes, not {len(keys)}")
    lib = _libssl()
    if lib is None:
        return False
    ssl_ctx = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not ssl_ctx or lib.SSL_CTX_get_options(ssl_ctx) != int(ctx.options):
        log.debug("session ticket keys: SSLContext layout not recognised; keys stay per process")
        return False
    wanted = ctypes.create_string_buffer(keys, TICKET_KEYS_SIZE)
    got = ctypes.create_string_buffer(TICKET_KEYS_SIZE)
    if (
        lib.SSL_CTX_ctrl(ssl_ctx, _SSL_CTRL_SET_TLSEXT_TICKET_KEYS, TICKET_KEYS_SIZE, wanted) != 1
        or lib.SSL_CTX_ctrl(ssl_ctx, _SSL_CTRL_GET_TLSEXT_TICKET_KEYS, TICKET_KEYS_SIZE, got) != 1
        or got.raw != keys
    ):
        log.debug("session ticket keys: OpenSSL refused them; keys stay per process")
        return False
    return True


# --- SNI ------------------------------------------------------------------------------------


def _normalize(server_name: str) -> str:
    return server_name.rstrip(".").lower()


class CertStore:
    """Immutable: certificates of one TLS listener, indexed for SNI lookup.

    Exact name beats wildcard; "*.example.com" matches exactly one label (a.example.com, not
    example.com, not a.b.example.com). Among several certs for the same name, the one with
    the latest not_after wins.
    """

    __slots__ = ("_contexts", "_exact", "_wildcard", "alpn", "certs")

    def __init__(self, certs: Sequence[LoadedCert], *, alpn: Sequence[str]) -> None:
        self.certs: tuple[LoadedCert, ...] = tuple(certs)
        self.alpn: tuple[str, ...] = tuple(alpn)
        self._exact: dict[str, LoadedCert] = {}
        self._wildcard: dict[str, LoadedCert] = {}  # "example.com" for "*.example.com"
        for cert in self.certs:
            for name in cert.names:
                if name.startswith("*."):
                    table, key = self._wildcard, name[2:]
                else:
                    table, key = self._exact, name
                best = table.get(key)
                if best is None or cert.not_after > best.not_after:
                    table[key] = cert
        self._contexts: dict[LoadedCert, ssl.SSLContext] = {}
        for cert in self.certs:
            if cert not in self._contexts:
                self._contexts[cert] = server_context(cert.cert_path, cert.key_path, alpn=alpn)

    def lookup(self, server_name: str) -> LoadedCert | None:
        """The certificate for `server_name`, or None if no certificate names it."""
        return self._lookup_normalized(_normalize(server_name))

    def context_for(self, server_name: str) -> ssl.SSLContext | None:
        """The SSL context of `lookup(server_name)`, or None."""
        return self._context_for_normalized(_normalize(server_name))

    def _lookup_normalized(self, name: str) -> LoadedCert | None:
        exact = self._exact.get(name)
        if exact is not None:
            return exact
        label, dot, parent = name.partition(".")
        if not label or not dot or not parent:
            return None
        return self._wildcard.get(parent)

    def _context_for_normalized(self, name: str) -> ssl.SSLContext | None:
        cert = self._lookup_normalized(name)
        return None if cert is None else self._contexts[cert]


# The SNI a handshake sent is kept on its SSLObject / SSLSocket (both have a __dict__), so it
# lives and dies with the connection: cheaper per handshake than a weak-keyed table, whose
# entries each cost a weak reference and a Python callback when the connection is collected.
_SERVER_NAME_ATTR = "_revproxy_server_name"


def server_name_of(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> str | None:
    """The server name (SNI) the client sent, lower-cased; None if it sent none."""
    name: str | None = getattr(ssl_object, _SERVER_NAME_ATTR, None)
    return name


class ServerTLS:
    """The ssl.SSLContext a TLS listener hands to asyncio; its sni_callback switches to the
    right per-cert context."""

    def __init__(
        self,
        store: CertStore,
        *,
        unknown_sni: Literal["generated", "reject"],
        alpn: Sequence[str],
        default_pem: tuple[bytes, bytes],
    ) -> None:
        if unknown_sni not in ("generated", "reject"):
            raise ValueError(f"unknown_sni must be 'generated' or 'reject', not {unknown_sni!r}")
        self._alpn = tuple(alpn)
        self._check_alpn(store)
        self._store = store
        self._unknown_sni = unknown_sni
        cert_pem, key_pem = default_pem
        self.context = server_context(None, None, alpn=alpn, cert_pem=cert_pem, key_pem=key_pem)
        self.context.sni_callback = self._on_server_name
        # Without shared keys (see set_ticket_keys) each process keeps OpenSSL's own.
        self.shared_tickets = set_ticket_keys(self.context, ticket_keys_from(key_pem))

    @property
    def store(self) -> CertStore:
        return self._store

    def replace_store(self, store: CertStore) -> None:
        """Use `store` for new handshakes; established connections keep their context."""
        self._check_alpn(store)
        self._store = store  # one reference: the callback reads it once per handshake

    def _check_alpn(self, store: CertStore) -> None:
        # OpenSSL negotiates ALPN with the context chosen by SNI: the lists must agree.
        if store.alpn != self._alpn:
            raise ValueError(f"store ALPN {store.alpn} differs from listener ALPN {self._alpn}")

    def _on_server_name(
        self,
        ssl_object: ssl.SSLObject | ssl.SSLSocket,
        server_name: str | None,
        _listener_context: ssl.SSLContext,
    ) -> int | None:
        # Runs inside every handshake (OpenSSL calls it without SNI too): keep it short.
        if server_name:
            name = _normalize(server_name)
            setattr(ssl_object, _SERVER_NAME_ATTR, name)
            chosen = self._store._context_for_normalized(name)
            if chosen is not None:
                # The session stays the listener context's: tickets it issued (and its
                # session cache) resume whichever certificate context SNI picks.
                ssl_object.context = chosen
                return None
        if self._unknown_sni == "reject":
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        return None  # keep the listener context and its generated certificate
