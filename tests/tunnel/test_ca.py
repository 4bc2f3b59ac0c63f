"""tunnel/ca.py: the CA under state_dir, one-time tokens, signing, revocation."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import pytest
from cryptography import x509

from revproxy.tunnel.ca import EnrolmentRefused, TunnelCA, make_csr, serial_of


def test_ca_made_once_0700(tmp_path: Path) -> None:
    ca = TunnelCA(tmp_path)
    ca.ensure()
    assert ca.dir.stat().st_mode & 0o777 == 0o700
    assert (ca.dir / "ca.key").stat().st_mode & 0o777 == 0o600
    pem = ca.ca_pem.read_bytes()
    pin = ca.pin()
    TunnelCA(tmp_path).ensure()  # a restart keeps it
    assert ca.ca_pem.read_bytes() == pem and ca.pin() == pin
    assert isinstance(ca.server_context(), ssl.SSLContext)


def test_enrol_once(tmp_path: Path) -> None:
    ca = TunnelCA(tmp_path)
    token = ca.issue_token("home")
    assert not list((ca.dir / "tokens").glob("*")) or token.secret not in str(
        list((ca.dir / "tokens").iterdir())
    )
    _, csr = make_csr("home")
    cert_pem, ca_pem = ca.enrol("home", token.secret, csr.decode())
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    serial, name = serial_of(cert.public_bytes(ssl_der()))  # type: ignore[arg-type]
    assert name == "home" and ca.names()[serial] == "home"
    assert ca_pem == ca.ca_pem.read_text()
    with pytest.raises(EnrolmentRefused, match="already used"):
        ca.enrol("home", token.secret, csr.decode())
    other = ca.issue_token("home")
    with pytest.raises(EnrolmentRefused, match="another tunnel"):
        ca.enrol("work", other.secret, csr.decode())
    expired = ca.issue_token("home", ttl=-1)
    with pytest.raises(EnrolmentRefused, match="expired"):
        ca.enrol("home", expired.secret, csr.decode())
    # Revocation names every certificate of the tunnel, and is seen by a reader at once.
    assert ca.revoked() == frozenset()
    time.sleep(0.01)
    assert ca.revoke("home") == 1
    assert serial in TunnelCA(tmp_path).revoked()


def ssl_der() -> object:
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.DER


def test_peer_identity_names_as_serial_of(tmp_path: Path) -> None:
    """The hub names a connecting agent from ``getpeercert()``'s dict (no cryptography in the
    serving process): the same serial text and tunnel name as ``serial_of`` of its DER."""
    import _ssl

    from revproxy.tunnel.ca import peer_identity

    ca = TunnelCA(tmp_path)
    for _ in range(8):  # serials of every length: OpenSSL pads its hex to whole bytes
        token = ca.issue_token("home")
        _, csr = make_csr("home")
        cert_pem, _ = ca.enrol("home", token.secret, csr.decode())
        path = tmp_path / "agent.pem"
        path.write_text(cert_pem)
        # _test_decode_cert is what getpeercert() returns for a verified peer, from a file.
        as_dict = _ssl._test_decode_cert(str(path))  # type: ignore[attr-defined]
        der = ssl.PEM_cert_to_DER_cert(cert_pem)
        assert peer_identity(as_dict) == serial_of(der)
        assert peer_identity(as_dict)[1] == "home"
    assert peer_identity({"serialNumber": "00FF", "subject": ()}) == ("ff", "")
