"""A client's TLS handshake on an accepted socket, with the reason for a refusal told.

The event loop's TLS transport closes the socket unflushed when a handshake fails, so the
fatal alert OpenSSL queued for a refused ClientHello (a version below the minimum, an unknown
name with ``unknown_sni = "reject"``, no shared cipher) never leaves. The transport gets a
duplicate of the socket instead; when the handshake fails, the alert (proto/tls_alert.py) is
written on the original, then it is closed. A handshake that succeeds costs one ``dup`` and
one ``close`` more.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable

from revproxy.config.model import ListenerTLS
from revproxy.proto.tls_alert import refusal_alert

__all__ = ["accept_tls"]


async def accept_tls(
    csock: socket.socket,
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    context: ssl.SSLContext,
    tls: ListenerTLS,
    timeout: float,
) -> asyncio.BaseTransport:
    """The TLS transport of ``csock`` once its handshake is done; the handshake's error
    otherwise (the client was told why when it was a refusal of its ClientHello). ``csock``
    is closed either way: the transport holds its own descriptor."""
    loop = asyncio.get_running_loop()
    sock = csock.dup()
    try:
        transport, _ = await loop.connect_accepted_socket(
            protocol_factory, sock, ssl=context, ssl_handshake_timeout=timeout
        )
    except BaseException as exc:
        if isinstance(exc, ssl.SSLError):
            alert = refusal_alert(exc.reason, sni_callback_refuses=tls.unknown_sni == "reject")
            if alert is not None:
                # Seven bytes into an empty send buffer: taken whole or not at all.
                with contextlib.suppress(OSError):
                    csock.send(alert)
        sock.close()  # if the transport never took it
        raise
    finally:
        csock.close()
    return transport
