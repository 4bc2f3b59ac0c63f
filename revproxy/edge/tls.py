"""Server-side TLS termination: the context a listener hands to asyncio, SNI choice per
handshake, and session tickets shared by the workers.

Rule of this room: a client that does not name one of our sites gets nothing that names one.
A scanner hitting the bare IP (no SNI, or a made-up name) is answered with a generated,
self-signed certificate whose subject is a neutral word and which has no subjectAltName at
all, so the handshake never reveals which hosts this proxy serves (or that it is revproxy).
With ``unknown_sni = "reject"`` the handshake is refused with ``unrecognized_name`` instead.

Each configured certificate gets its own ``ssl.SSLContext`` (``certs/store.py``); the
listener's context holds the default certificate and an SNI callback that switches the
connection to the right context. A certificate reload builds a new `CertStore` and swaps one
reference (`ServerTLS.replace_store`): new handshakes see it, established connections keep the
context they started with.

Session resumption: tickets are encrypted with the keys of the listener's context (OpenSSL keeps
it as the session context when SNI switches contexts), so they resume through any certificate.
Those keys are derived from the generated default key, which the master makes once and hands
to every worker: a ticket resumes on any worker and across reloads; a restart rotates them.
"""

from __future__ import annotations

import _ssl
import ctypes
import functools
import hashlib
import hmac
import logging
import ssl
import sys
from collections.abc import Sequence
from typing import Literal

from revproxy.certs.store import CertStore, normalize_server_name, server_context
from revproxy.proto.events import Headers
from revproxy.proto.tunnel import EGRESS_ALPN, ENROLL_ALPN, TUNNEL_ALPN

log = logging.getLogger("revproxy.tls")

# A ClientHello on an http listener with ``tunnel = true`` that offers one of these is an agent
# of the reverse tunnel (docs/tunnel.md): it is handed, before any handshake, to the tunnel's
# service, which ends TLS with the tunnel CA's context and requires the agent's certificate.
# The sites' context never asks for a client certificate, so browsers are never prompted.
TUNNEL_ALPNS = frozenset({TUNNEL_ALPN, EGRESS_ALPN, ENROLL_ALPN})

# --- session ticket keys ------------------------------------------------------------------

TICKET_KEYS_SIZE = 80  # OpenSSL's layout: 16-byte key name, 32-byte HMAC secret, 32-byte AES key
_SSL_CTRL_GET_TLSEXT_TICKET_KEYS = 58
_SSL_CTRL_SET_TLSEXT_TICKET_KEYS = 59


def hkdf_sha256(secret: bytes, *, length: int, info: bytes, salt: bytes = b"") -> bytes:
    """RFC 5869 HKDF with SHA-256 (extract, then expand), from the standard library: the
    serving process does not load cryptography (and its own OpenSSL) for these few lines."""
    size = hashlib.sha256().digest_size
    if not 0 < length <= 255 * size:
        raise ValueError(f"HKDF-SHA256 makes 1 to {255 * size} bytes, not {length}")
    prk = hmac.digest(salt or bytes(size), secret, "sha256")  # no salt: HashLen zeros
    okm = b""
    block = b""
    for counter in range(1, -(-length // size) + 1):
        block = hmac.digest(prk, block + info + bytes([counter]), "sha256")
        okm += block
    return okm[:length]


def ticket_keys_from(secret: bytes) -> bytes:
    """Session ticket keys derived from `secret` (HKDF-SHA256, a label of their own)."""
    return hkdf_sha256(secret, length=TICKET_KEYS_SIZE, info=b"revproxy tls session ticket keys v1")


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


# The SNI a handshake sent is kept on its SSLObject / SSLSocket (both have a __dict__), so it
# lives and dies with the connection: cheaper per handshake than a weak-keyed table, whose
# entries each cost a weak reference and a Python callback when the connection is collected.
_SERVER_NAME_ATTR = "_revproxy_server_name"


def server_name_of(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> str | None:
    """The server name (SNI) the client sent, lower-cased; None if it sent none."""
    name: str | None = getattr(ssl_object, _SERVER_NAME_ATTR, None)
    return name


def client_subject(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> str:
    """The verified client certificate's subject as RFC 4514 text ("CN=alice,O=Example");
    "" when the client sent none (``client_cert = "optional"``)."""
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return ""
    # Imported here: only listeners that ask for client certificates load cryptography, on
    # their first one (getpeercert()'s dict does not give RFC 4514 text).
    from cryptography import x509

    try:
        return x509.load_der_x509_certificate(der).subject.rfc4514_string()
    except ValueError:
        return ""


def with_client_cert(headers: Headers, name: bytes, subject: str) -> Headers:
    """Toward the origin: a client's own ``name`` header removed, the verified subject set
    (nothing when the client sent no certificate)."""
    kept = [h for h in headers if h[0] != name]
    if subject:
        kept.append((name, subject.encode("utf-8")))
    return kept


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
        self.context = server_context(
            None,
            None,
            alpn=alpn,
            cert_pem=cert_pem,
            key_pem=key_pem,
            client_auth=store.client_auth,
        )
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
            name = normalize_server_name(server_name)
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
