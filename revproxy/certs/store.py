"""The certificates of one TLS listener, indexed for SNI, and the safe server settings.

Rule of this room: a store is immutable; a certificate reload builds a new one and the
listener swaps one reference (``edge/tls.py``, ``ServerTLS.replace_store``). Every context is
made by ``server_context``: TLS 1.2+ with forward-secret AEAD suites only, no compression, no
client-initiated renegotiation.

Names are matched as RFC 6125 section 6.4.3 allows for a server: "*.example.com" stands for
exactly one left-most label. An exact name beats a wildcard; among certificates for the same
name, the one that stays valid longest wins (so a renewed certificate takes over at once).
"""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from revproxy.certs.files import LoadedCert
from revproxy.config.model import ListenerTLS
from revproxy.errors import CertificateError

# TLS 1.2 suites: forward secrecy (ECDHE) and AEAD only; no CBC, no RSA key exchange.
# TLS 1.3 suites are all AEAD and are left at OpenSSL's defaults.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL"

# TLS 1.3 session tickets sent after a full handshake (OpenSSL's default is 2; a resumed one
# always gets 1). Each costs the server ~50 us in OpenSSL 3.0 (session copy, encoding,
# encryption), and browsers and OpenSSL clients keep only the latest session per server.
TLS13_TICKETS = 1


# --- contexts -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientAuth:
    """Client certificates a listener asks for: verified against ``ca``; without one the
    handshake fails when ``required``, else goes on unauthenticated."""

    ca: Path
    required: bool = True


def client_auth_of(tls: ListenerTLS) -> ClientAuth | None:
    """A listener's ``tls.client_ca`` / ``tls.client_cert``, or None when it asks for none."""
    if tls.client_ca is None:
        return None
    return ClientAuth(tls.client_ca, required=tls.client_cert == "required")


def _ask_client_cert(ctx: ssl.SSLContext, auth: ClientAuth) -> None:
    try:
        ctx.load_verify_locations(cafile=str(auth.ca))
    except (ssl.SSLError, OSError) as exc:
        raise CertificateError(f"client_ca {auth.ca} cannot be used: {exc}") from None
    ctx.verify_mode = ssl.CERT_REQUIRED if auth.required else ssl.CERT_OPTIONAL


def server_context(
    cert_path: Path | None,
    key_path: Path | None,
    *,
    alpn: Sequence[str],
    cert_pem: bytes | None = None,
    key_pem: bytes | None = None,
    client_auth: ClientAuth | None = None,
) -> ssl.SSLContext:
    """A server context with our safe settings, holding one certificate (files or PEM bytes),
    asking for client certificates when ``client_auth`` says so."""
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
    if client_auth is not None:
        _ask_client_cert(ctx, client_auth)

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
    except OSError as os_error:
        raise CertificateError(
            f"{os_error.filename or cert_path} cannot be read: {os_error.strerror}"
        ) from None
    return ctx


# --- SNI ------------------------------------------------------------------------------------


def normalize_server_name(server_name: str) -> str:
    return server_name.rstrip(".").lower()


class CertStore:
    """Immutable: certificates of one TLS listener, indexed for SNI lookup.

    Exact name beats wildcard; "*.example.com" matches exactly one label (a.example.com, not
    example.com, not a.b.example.com). Among several certs for the same name, the one with
    the latest not_after wins.
    """

    __slots__ = ("_contexts", "_exact", "_wildcard", "alpn", "certs", "client_auth")

    def __init__(
        self,
        certs: Sequence[LoadedCert],
        *,
        alpn: Sequence[str],
        client_auth: ClientAuth | None = None,
    ) -> None:
        self.certs: tuple[LoadedCert, ...] = tuple(certs)
        self.alpn: tuple[str, ...] = tuple(alpn)
        # Every context of the listener asks alike: SNI may switch to any of them.
        self.client_auth = client_auth
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
                self._contexts[cert] = server_context(
                    cert.cert_path, cert.key_path, alpn=alpn, client_auth=client_auth
                )

    def lookup(self, server_name: str) -> LoadedCert | None:
        """The certificate for `server_name`, or None if no certificate names it."""
        return self._lookup_normalized(normalize_server_name(server_name))

    def context_for(self, server_name: str) -> ssl.SSLContext | None:
        """The SSL context of `lookup(server_name)`, or None."""
        return self._context_for_normalized(normalize_server_name(server_name))

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
