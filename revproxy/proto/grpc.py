"""gRPC as a proxy sees it: which requests are gRPC, their deadline, and the answer a proxy
gives when it cannot reach the service.

Rule of this room: pure functions over header lists (grpc/doc/PROTOCOL-HTTP2.md). A proxy that
cannot forward a gRPC call answers in the protocol's own terms — a "Trailers-Only" response,
HTTP status 200 with ``grpc-status`` in its only header block — because "the gRPC client
library understands" that, where an HTML error page only becomes a vague ``UNKNOWN``.
"""

from __future__ import annotations

from collections.abc import Iterable

from revproxy.proto.events import Headers

# Status codes (grpc/doc/statuscodes.md) a proxy has reason to send.
CANCELLED = 1
DEADLINE_EXCEEDED = 4
INTERNAL = 13
UNAVAILABLE = 14

# "Timeout → "grpc-timeout" TimeoutValue TimeoutUnit"; "TimeoutValue → {positive integer as
# ASCII string of at most 8 digits}".
_UNITS = {
    ord("H"): 3600.0,
    ord("M"): 60.0,
    ord("S"): 1.0,
    ord("m"): 1e-3,
    ord("u"): 1e-6,
    ord("n"): 1e-9,
}


def is_grpc(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """ "Content-Type → "content-type" "application/grpc" [("+proto" / "+json" / {custom})]"."""
    for name, value in headers:
        if name == b"content-type":
            return value[:16].lower() == b"application/grpc"
    return False


def timeout_seconds(headers: Iterable[tuple[bytes, bytes]]) -> float | None:
    """The call's deadline from ``grpc-timeout``, in seconds; None when absent or malformed."""
    for name, value in headers:
        if name == b"grpc-timeout":
            digits, unit = value[:-1], value[-1:]
            if not (1 <= len(digits) <= 8 and digits.isdigit() and unit):
                return None
            scale = _UNITS.get(unit[0])
            return None if scale is None else int(digits) * scale
    return None


def wants_trailers(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """The client said ``te: trailers`` (gRPC servers require it of requests)."""
    return any(name == b"te" and b"trailers" in value.lower() for name, value in headers)


def _percent_encode(message: str) -> bytes:
    """ "Status-Message ... percent-encoded": bytes outside 0x20-0x7E, and '%', as %XX."""
    out = bytearray()
    for byte in message.encode("utf-8"):
        if 0x20 <= byte <= 0x7E and byte != 0x25:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    return bytes(out)


def trailers_only(status: int, message: str) -> Headers:
    """The header block of a Trailers-Only response (sent with HTTP status 200)."""
    return [
        (b"content-type", b"application/grpc"),
        (b"grpc-status", str(status).encode()),
        (b"grpc-message", _percent_encode(message)),
    ]
