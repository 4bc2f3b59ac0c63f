"""The fatal alert that tells a client why its TLS handshake was refused.

Rule of this room: bytes only. OpenSSL writes such an alert when it refuses a ClientHello, but
the event loop's TLS transport closes the socket on a failed handshake without flushing what
OpenSSL queued, so the client sees the connection end with no reason ("unexpected eof"). The
listener therefore writes the alert itself, from the error the handshake ended with — only
for refusals of the ClientHello, which happen before the server sent anything: the alert then
goes as a plaintext record, as OpenSSL's own would (RFC 8446 §6, RFC 5246 §7.2). A refusal
after the server's first flight (a client certificate refused, say) would need the handshake's
keys; none is written then.
"""

from __future__ import annotations

__all__ = [
    "HANDSHAKE_FAILURE",
    "PROTOCOL_VERSION",
    "UNRECOGNIZED_NAME",
    "alert_record",
    "refusal_alert",
]

# AlertDescription values (RFC 8446 §6, RFC 6066 §3).
HANDSHAKE_FAILURE = 40
PROTOCOL_VERSION = 70
UNRECOGNIZED_NAME = 112

_ALERT = 21  # ContentType.alert
_FATAL = 2  # AlertLevel.fatal

# OpenSSL's reason codes (ssl.SSLError.reason) for refusals of the ClientHello, and the alert
# OpenSSL queued for each.
_REFUSALS = {
    "UNSUPPORTED_PROTOCOL": PROTOCOL_VERSION,  # below the listener's minimum version
    "VERSION_TOO_LOW": PROTOCOL_VERSION,
    "NO_SHARED_CIPHER": HANDSHAKE_FAILURE,
    "NO_SUITABLE_KEY_SHARE": HANDSHAKE_FAILURE,
    "NO_SHARED_GROUPS": HANDSHAKE_FAILURE,
}


def alert_record(description: int) -> bytes:
    """A plaintext fatal alert record. A refused version gets the TLS 1.0 record version, which
    every client of TLS 1.0 and later reads; the others TLS 1.2's (what TLS 1.3 records carry)."""
    minor = 1 if description == PROTOCOL_VERSION else 3
    return bytes((_ALERT, 3, minor, 0, 2, _FATAL, description))


def refusal_alert(reason: str | None, *, sni_callback_refuses: bool) -> bytes | None:
    """The alert record for a handshake that ended with OpenSSL's ``reason``; None when the
    reason is no refusal of the ClientHello (nothing is written then). ``CALLBACK_FAILED`` is
    the server-name callback saying no (a listener with ``unknown_sni = "reject"``): the name
    is unknown; it is a failure of ours otherwise, told as a plain handshake failure."""
    if reason is None:
        return None
    if reason == "CALLBACK_FAILED":
        return alert_record(UNRECOGNIZED_NAME if sni_callback_refuses else HANDSHAKE_FAILURE)
    description = _REFUSALS.get(reason)
    return None if description is None else alert_record(description)
