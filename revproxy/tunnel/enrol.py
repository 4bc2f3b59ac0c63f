"""The agent's side of enrolment, and the credentials it keeps (docs/tunnel.md).

Rule of this room: the key is made on the agent and never leaves it; the proxy is trusted
only once the certificate it shows matches the pin the token carries, and from then on only
through the tunnel CA it sent back (``ca.pem``). Credentials are written into a folder made
0700, each file atomically.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from revproxy.proto.tunnel import (
    ENROLL_ALPN,
    TUNNEL_ALPN,
    Token,
    TunnelFormatError,
    decode_enrol_reply,
    encode_enrol_request,
)
from revproxy.tunnel.ca import SERVER_NAME, make_csr

__all__ = ["Credentials", "EnrolError", "enrol"]

ENROL_TIMEOUT = 15.0


class EnrolError(Exception):
    """Enrolment failed; the text says why and what to do."""


@dataclass(frozen=True, slots=True)
class Credentials:
    folder: Path

    @property
    def key(self) -> Path:
        return self.folder / "key.pem"

    @property
    def cert(self) -> Path:
        return self.folder / "cert.pem"

    @property
    def ca(self) -> Path:
        return self.folder / "ca.pem"

    def present(self) -> bool:
        return self.key.exists() and self.cert.exists() and self.ca.exists()

    def client_context(self, alpn: str = TUNNEL_ALPN) -> ssl.SSLContext:
        """TLS toward the proxy: our certificate; theirs checked against the pinned CA (the
        name is not checked: only the proxy holds a certificate of that CA). ``alpn``: the
        agent connections', or ``EGRESS_ALPN`` for a forwarded connection."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(self.ca))
        ctx.load_cert_chain(self.cert, self.key)
        ctx.set_alpn_protocols([alpn])
        return ctx


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


async def enrol(token: Token, server: tuple[str, int], creds: Credentials) -> None:
    """Get a certificate for ``token.name`` from the proxy at ``server``; raises EnrolError."""
    key_pem, csr_pem = make_csr(token.name)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the pin below is the check
    ctx.set_alpn_protocols([ENROLL_ALPN])
    host, port = server
    try:
        async with asyncio.timeout(ENROL_TIMEOUT):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=ctx, server_hostname=SERVER_NAME
            )
    except (OSError, TimeoutError) as exc:
        raise EnrolError(f"cannot reach the proxy at {host}:{port}: {exc}") from None
    try:
        sslobj = writer.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        if not der or hashlib.sha256(der).hexdigest() != token.pin:
            raise EnrolError(
                f"{host}:{port} is not the proxy that made this token (its certificate does "
                "not match the token's pin): check the server address"
            )
        if sslobj.selected_alpn_protocol() != ENROLL_ALPN:
            raise EnrolError(f"{host}:{port} is not a tunnel listener (no enrolment there)")
        writer.write(encode_enrol_request(token, csr_pem.decode()))
        async with asyncio.timeout(ENROL_TIMEOUT):
            await writer.drain()
            line = await reader.readline()
        if not line:
            raise EnrolError("the proxy closed the connection without an answer")
        cert_pem, ca_pem = decode_enrol_reply(line)
    except TunnelFormatError as format_error:
        raise EnrolError(str(format_error)) from None
    except (OSError, TimeoutError) as exc:
        raise EnrolError(f"enrolment with {host}:{port} failed: {exc}") from None
    finally:
        writer.close()
    creds.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(creds.folder, 0o700)
    _write(creds.key, key_pem, 0o600)
    _write(creds.cert, cert_pem.encode(), 0o644)
    _write(creds.ca, ca_pem.encode(), 0o644)
