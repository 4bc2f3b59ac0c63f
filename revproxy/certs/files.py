"""Certificate files: reading and checking a certificate/key pair, scanning certbot's
live folder, generating the neutral default certificate and self-signed demo certificates.

Rule of this room: a certificate is loaded whole or refused whole, with a reason that names
the file. Nothing here serves a handshake: ``store.py`` builds contexts, ``edge/tls.py`` picks
one per connection.

cryptography is imported inside the functions that use it, never at the top: the serving
process imports this module (for `LoadedCert`) but reads certificate pairs through a child
process (``probe.py``), so that it never loads cryptography's own OpenSSL (docs/performance.md).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from revproxy.errors import CertificateError

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

# certbot's layout: <cert_dir>/<name>/fullchain.pem + privkey.pem (symlinks into archive/).
CERTBOT_CHAIN = "fullchain.pem"
CERTBOT_KEY = "privkey.pem"

# Subject of the generated default certificate: a word that names no host and no software.
DEFAULT_CERT_COMMON_NAME = "default"


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
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        found = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        found = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    names = (n.strip().rstrip(".").lower() for n in found)
    return tuple(dict.fromkeys(n for n in names if n))


def _spki(key: PublicKeyTypes) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_cert_pair(cert: Path, key: Path) -> LoadedCert:
    """Read a PEM certificate chain and its private key; raise `CertificateError` if unusable."""
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

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
    except UnsupportedAlgorithm as unsupported:
        raise CertificateError(f"private key file {key} cannot be used: {unsupported}") from None

    if _spki(private_key.public_key()) != _spki(leaf.public_key()):
        raise CertificateError(
            f"private key file {key} does not match certificate file {cert}"
            " (their public keys differ)"
        )

    # Final word to OpenSSL: exactly what the listener will do later.
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except ssl.SSLError as bad:
        raise CertificateError(f"OpenSSL refuses {cert} with {key}: {bad.reason or bad}") from None
    except OSError as err:  # replaced under our feet, e.g. by a renewal
        raise CertificateError(f"{err.filename or cert} cannot be read: {err.strerror}") from None

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
        except CertificateError as cert_error:
            errors.append(f"{folder}: {cert_error}")
    return certs, errors


# --- generating ---------------------------------------------------------------------------


def _self_signed(subject: x509.Name, san: list[x509.GeneralName], days: int) -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

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
    from cryptography import x509
    from cryptography.x509.oid import NameOID

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
    from cryptography import x509
    from cryptography.x509.oid import NameOID

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


def cert_pair_problem(cert: Path, key: Path) -> str:
    """Why the pair cannot serve, or "" if it can: the check ``revproxy check`` and every
    load of the configuration run for ``tls.certs`` (``config.reader.CertPairCheck``)."""
    try:
        load_cert_pair(cert, key)
    except CertificateError as exc:
        return str(exc)
    except OSError as os_error:
        return f"cannot read: {os_error}"
    return ""
