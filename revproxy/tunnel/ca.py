"""The tunnel CA and the enrolment state, under ``[global] state_dir``/tunnel (docs/tunnel.md).

Rule of this room: everything lives in files under one folder made 0700, so that it survives
restarts and reloads and every process of an instance (the master, each worker, the
``revproxy tunnel`` commands) sees the same state. Each change is atomic: a file is written
beside its final name and renamed, and a token is used up by renaming it away — of two
processes that try, one wins. No secret is kept in clear: a token's file is named by the
SHA-256 of its secret.

Files: ``ca.key``/``ca.pem`` (the CA that signs agents), ``server.key``/``server.pem`` (the
tunnel listener's certificate, signed by the CA; agents pin its SHA-256 at enrolment),
``tokens/HASH.json`` (one per unused token: its name and expiry), ``issued.json`` (serial →
name of every certificate signed) and ``revoked.json`` (the serials no longer accepted).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import secrets
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from revproxy.proto.tunnel import EGRESS_ALPN, ENROLL_ALPN, TUNNEL_ALPN, Token, check_name

# cryptography is imported by the functions that use it: a proxy imports this module for
# every tunnel listener (and the agent for SERVER_NAME), and loads cryptography's own OpenSSL
# only to make the CA, sign, or enrol (an agent that connects is named from getpeercert()).
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "DEFAULT_TOKEN_TTL",
    "EnrolmentRefused",
    "TunnelCA",
    "make_csr",
    "peer_identity",
    "serial_of",
]

# An enrolment token is good for this long by default.
DEFAULT_TOKEN_TTL = 3600.0
# Certificates are long-lived: revocation, not expiry, is how access ends.
CA_DAYS = 3650
AGENT_DAYS = 1825
SERVER_NAME = "revproxy-tunnel"


class EnrolmentRefused(Exception):
    """A token that is unknown, used, expired or for another name; the reason is the text."""


def _key() -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """``data`` into ``path`` atomically (written beside it, then renamed)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def make_csr(name: str) -> tuple[bytes, bytes]:
    """(key PEM, CSR PEM) for an agent enrolled as ``name``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    key = _key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    return _key_pem(key), csr.public_bytes(serialization.Encoding.PEM)


def serial_of(der: bytes) -> tuple[str, str]:
    """(serial in hex, common name) of a DER certificate."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_der_x509_certificate(der)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(names[0].value) if names else ""
    return format(cert.serial_number, "x"), name


def peer_identity(cert: dict[str, Any]) -> tuple[str, str]:
    """``serial_of`` for a verified peer's certificate as ``getpeercert()`` gives it: the
    serving process names an agent without loading cryptography. The serial is OpenSSL's hex
    (upper case, zero-padded to whole bytes), made the same text as ``serial_of``'s."""
    serial = format(int(str(cert.get("serialNumber", "0")), 16), "x")
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return serial, str(value)
    return serial, ""


class TunnelCA:
    """The CA and enrolment state in ``state_dir``/tunnel."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "tunnel"
        self._revoked: frozenset[str] = frozenset()
        self._revoked_mtime = -1.0

    # --- the CA itself

    @property
    def ca_pem(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def server_pem(self) -> Path:
        return self.dir / "server.pem"

    def ensure(self) -> None:
        """Create the folder (0700), the CA and the listener's certificate if missing."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        (self.dir / "tokens").mkdir(mode=0o700, exist_ok=True)
        with self._locked():
            if not self.ca_pem.exists():
                from cryptography import x509
                from cryptography.hazmat.primitives import hashes, serialization
                from cryptography.x509.oid import NameOID

                key = _key()
                name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "revproxy tunnel CA")])
                now = datetime.datetime.now(datetime.UTC)
                cert = (
                    x509.CertificateBuilder()
                    .subject_name(name)
                    .issuer_name(name)
                    .public_key(key.public_key())
                    .serial_number(x509.random_serial_number())
                    .not_valid_before(now - datetime.timedelta(minutes=5))
                    .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
                    .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                    .add_extension(
                        x509.KeyUsage(
                            digital_signature=True,
                            content_commitment=False,
                            key_encipherment=False,
                            data_encipherment=False,
                            key_agreement=False,
                            key_cert_sign=True,
                            crl_sign=True,
                            encipher_only=False,
                            decipher_only=False,
                        ),
                        critical=True,
                    )
                    .sign(key, hashes.SHA256())
                )
                _write(self.dir / "ca.key", _key_pem(key))
                _write(self.ca_pem, cert.public_bytes(serialization.Encoding.PEM), 0o644)
            if not self.server_pem.exists():
                from cryptography import x509
                from cryptography.hazmat.primitives import serialization

                key = _key()
                der = self._sign(SERVER_NAME, key.public_key(), server=True)
                _write(self.dir / "server.key", _key_pem(key))
                pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
                _write(self.server_pem, pem, 0o644)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _sign(self, name: str, public_key: object, *, server: bool = False) -> bytes:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        ca_key = serialization.load_pem_private_key((self.dir / "ca.key").read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(self.ca_pem.read_bytes())
        now = datetime.datetime.now(datetime.UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS if server else AGENT_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]), critical=False
            )
        cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        return cert.public_bytes(serialization.Encoding.DER)

    def pin(self) -> str:
        """SHA-256 (hex) of the listener's certificate, which tokens carry."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        cert = x509.load_pem_x509_certificate(self.server_pem.read_bytes())
        return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()

    def server_context(self) -> ssl.SSLContext:
        """The tunnel listener's TLS: our certificate; the agent's verified against the CA
        when it sends one (enrolment comes without)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(self.server_pem, self.dir / "server.key")
        ctx.load_verify_locations(cafile=str(self.ca_pem))
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.set_alpn_protocols([TUNNEL_ALPN, ENROLL_ALPN, EGRESS_ALPN])
        return ctx

    # --- tokens

    def issue_token(self, name: str, ttl: float = DEFAULT_TOKEN_TTL) -> Token:
        check_name("tunnel", name)
        self.ensure()
        secret = secrets.token_urlsafe(24)
        digest = hashlib.sha256(secret.encode()).hexdigest()
        body = json.dumps({"name": name, "expires": time.time() + ttl}).encode()
        _write(self.dir / "tokens" / f"{digest}.json", body)
        return Token(name, secret, self.pin())

    def enrol(self, name: str, secret: str, csr_pem: str) -> tuple[str, str]:
        """Use up the token and sign the agent's request: (certificate PEM, CA PEM)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        digest = hashlib.sha256(secret.encode()).hexdigest()
        path = self.dir / "tokens" / f"{digest}.json"
        taken = path.with_name(f".{digest}.{os.getpid()}.{secrets.token_hex(4)}.used")
        try:
            os.rename(path, taken)  # of two enrolments with one token, one wins
        except FileNotFoundError:
            raise EnrolmentRefused("unknown or already used token") from None
        try:
            data = json.loads(taken.read_bytes())
        finally:
            taken.unlink(missing_ok=True)
        if data.get("name") != name:
            raise EnrolmentRefused("the token is for another tunnel")
        if float(data.get("expires", 0)) < time.time():
            raise EnrolmentRefused("the token has expired (make a new one)")
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except ValueError:
            raise EnrolmentRefused("the certificate request is not PEM") from None
        if not csr.is_signature_valid:
            raise EnrolmentRefused("the certificate request's signature is wrong")
        der = self._sign(name, csr.public_key())
        serial, _ = serial_of(der)
        with self._locked():
            issued = self._read_json("issued.json")
            issued[serial] = name
            _write(self.dir / "issued.json", json.dumps(issued).encode())
        pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
        return pem.decode(), self.ca_pem.read_text()

    # --- revocation

    def _read_json(self, name: str) -> dict[str, str]:
        try:
            data = json.loads((self.dir / name).read_bytes())
        except FileNotFoundError:
            return {}
        return data if isinstance(data, dict) else {}

    def revoke(self, name: str) -> int:
        """Revoke every certificate issued to ``name`` (and its unused tokens); how many."""
        with self._locked():
            issued = self._read_json("issued.json")
            revoked = self._read_json("revoked.json")
            count = 0
            for serial, owner in issued.items():
                if owner == name and serial not in revoked:
                    revoked[serial] = name
                    count += 1
            _write(self.dir / "revoked.json", json.dumps(revoked).encode(), 0o644)
        for token in (self.dir / "tokens").glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                if json.loads(token.read_bytes()).get("name") == name:
                    token.unlink()
        return count

    def revoked(self) -> frozenset[str]:
        """The revoked serials, read again only when the file changed (a stat per call)."""
        try:
            mtime = (self.dir / "revoked.json").stat().st_mtime
        except FileNotFoundError:
            return frozenset()
        if mtime != self._revoked_mtime:
            self._revoked_mtime = mtime
            self._revoked = frozenset(self._read_json("revoked.json"))
        return self._revoked

    def names(self) -> dict[str, str]:
        """Serial → name of every certificate issued."""
        return self._read_json("issued.json")
