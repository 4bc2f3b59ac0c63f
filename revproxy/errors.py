"""One exception tree for revproxy.

Rule of this room: every error says whose fault it is and carries the reply it implies
(HTTP status for HTTP/1.1, error code for an HTTP/2 stream reset). Only the HTTP pipeline
(`edge/h1_connection.py`) turns these into responses; everything else just raises.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

# HTTP/2 error codes (RFC 9113 section 7) used as hints.
H2_NO_ERROR = 0x0
H2_PROTOCOL_ERROR = 0x1
H2_INTERNAL_ERROR = 0x2
H2_REFUSED_STREAM = 0x7
H2_CANCEL = 0x8
H2_ENHANCE_YOUR_CALM = 0xB


class RevproxyError(Exception):
    """Base of every error revproxy raises on purpose."""

    status: int = 500
    h2_code: int = H2_INTERNAL_ERROR


# --- the client's fault -------------------------------------------------------------------


class ClientProtocolError(RevproxyError):
    """The client sent bytes that break the protocol: answer 400 and close."""

    status = 400
    h2_code = H2_PROTOCOL_ERROR


class HeaderTooLarge(ClientProtocolError):
    status = 431


class BodyTooLarge(ClientProtocolError):
    status = 413


class RequestTimeout(ClientProtocolError):
    """The client was too slow sending its request head."""

    status = 408
    h2_code = H2_CANCEL


class MisdirectedRequest(ClientProtocolError):
    """The Host / :authority does not belong to the TLS server name."""

    status = 421


class ProxyProtocolError(ClientProtocolError):
    """A PROXY protocol header was missing, malformed, truncated or untrusted."""


class ClientHelloError(ClientProtocolError):
    """The first bytes of a TLS listener's connection are not a usable ClientHello."""


# --- the backend's fault ------------------------------------------------------------------


class BackendError(RevproxyError):
    status = 502
    h2_code = H2_INTERNAL_ERROR


class BackendProtocolError(BackendError):
    """The origin answered with bytes that break the protocol."""


class BackendUnreachable(BackendError):
    """No connection could be made to any server of the pool."""


class NoBackendAvailable(BackendError):
    """Every server of the pool is down, disabled or full."""

    status = 503
    h2_code = H2_REFUSED_STREAM


class BackendTimeout(BackendError):
    """The origin did not answer within the pool's response timeout."""

    status = 504


# --- our own shortage ----------------------------------------------------------------------


class LocalResourceError(BackendError):
    """This proxy ran out of something it needs to reach any server (file descriptors, kernel
    buffers, memory). No server is at fault: passive and active health never count it, and
    the client gets 503 (try again), not 502."""

    status = 503
    h2_code = H2_REFUSED_STREAM


# errno values that say this process or host, not the peer, is out of something.
LOCAL_SHORTAGE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def is_local_shortage(exc: BaseException) -> bool:
    """Whether ``exc`` is the proxy's own lack of a resource (EMFILE, ENFILE, ...)."""
    return isinstance(exc, OSError) and exc.errno in LOCAL_SHORTAGE_ERRNOS


# --- the operator's fault -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong in the configuration: where, and why."""

    file: str
    key: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}: " if self.file else ""
        key = f"{self.key}: " if self.key else ""
        return f"{where}{key}{self.reason}"


class ConfigError(RevproxyError):
    """The configuration is invalid; carries every problem found, not just the first."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class CertificateError(RevproxyError):
    """A certificate or key file is unreadable, malformed, or the pair does not match."""
