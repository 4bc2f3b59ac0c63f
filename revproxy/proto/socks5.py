"""SOCKS5, the server side, sans-I/O: RFC 1928 (CONNECT) with RFC 1929 username/password.

Rule of this room: one table of states, bytes in, events and bytes out. The shell feeds what
the client sent (``receive_data``), acts on the events (checks the user, judges and connects
the destination) and answers through the commands (``accept_auth``, ``reply``), writing
``data_to_send()`` each time. Anything the table lacks is a ``Socks5Error`` that carries the
bytes to send before closing (RFC 1928 §6: "the SOCKS server MUST terminate the TCP connection
shortly after sending the reply"); nothing else is ever raised, whatever the bytes.

The states::

    GREETING --methods--> AUTH --user/pass--> (accept_auth) REQUEST --CONNECT--> (reply) DONE
             \\--no auth needed------------------------------/

- Methods (RFC 1928 §3): with users configured only 0x02 (username/password) is acceptable,
  without them only 0x00 (no authentication); a client offering neither gets ``05 FF``.
- RFC 1929 §2: "VER ... the current version of the subnegotiation, which is X'01'"; a status
  other than X'00' means failure and "the client MUST close the connection".
- Commands: CONNECT only. BIND and UDP ASSOCIATE are refused with reply 0x07 (command not
  supported); an unknown address type with 0x08.
- Bytes the client sent past its request (optimistic data) are ``trailing_data``: they belong
  to the destination.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

from revproxy.errors import ClientProtocolError

__all__ = [
    "AuthRequested",
    "ConnectRequested",
    "Event",
    "Reply",
    "Socks5Error",
    "Socks5Server",
]

VERSION = 0x05
AUTH_VERSION = 0x01
METHOD_NONE = 0x00
METHOD_USERPASS = 0x02
METHOD_REFUSED = 0xFF
CMD_CONNECT = 0x01
CMD_BIND = 0x02
CMD_UDP_ASSOCIATE = 0x03
ATYP_IPV4 = 0x01
ATYP_DOMAIN = 0x03
ATYP_IPV6 = 0x04


class Reply(enum.IntEnum):
    """RFC 1928 §6 reply codes."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02  # connection not allowed by ruleset
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


class Socks5Error(ClientProtocolError):
    """The client broke the protocol or asked for what is not offered: send ``reply`` (may
    be empty), then close."""

    def __init__(self, message: str, reply: bytes = b"") -> None:
        super().__init__(message)
        self.reply = reply


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthRequested:
    """RFC 1929 credentials; answer with ``accept_auth``."""

    user: str
    password: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectRequested:
    """A CONNECT to ``host`` (a name as sent, lower-cased, or an IP literal) and ``port``;
    answer with ``reply``."""

    host: str
    port: int
    is_name: bool  # ATYP 3: the proxy resolves (socks5h)


Event = AuthRequested | ConnectRequested


class _State(enum.Enum):
    GREETING = "greeting"
    AUTH = "auth"
    AUTH_PENDING = "auth-pending"  # waiting for accept_auth
    REQUEST = "request"
    REPLY_PENDING = "reply-pending"  # waiting for reply
    DONE = "done"  # replied: the connection is the destination's now
    CLOSED = "closed"


# Largest greeting / auth / request message: bounded by their one-byte length fields.
MAX_MESSAGE = 2 + 255 + 255 + 1


def _failure(code: Reply) -> bytes:
    return bytes((VERSION, code, 0x00, ATYP_IPV4, 0, 0, 0, 0, 0, 0))


class Socks5Server:
    """One SOCKS5 client connection, server side."""

    def __init__(self, *, require_auth: bool) -> None:
        self.require_auth = require_auth
        self.state = _State.GREETING
        self._buffer = bytearray()
        self._out = bytearray()

    # --- bytes in --------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed what the client sent; the events it completes (at most one: every message
        waits for an answer before the next may be read)."""
        if self.state in (_State.CLOSED,):
            raise Socks5Error("data after the connection was closed")
        self._buffer += data
        if self.state in (_State.DONE, _State.AUTH_PENDING, _State.REPLY_PENDING):
            if self.state is not _State.DONE and len(self._buffer) > MAX_MESSAGE:
                raise self._close("too many bytes before an answer")
            return []
        if self.state is _State.GREETING:
            self._greeting()
        if self.state is _State.AUTH:
            event = self._auth()
            if event is not None:
                return [event]
        if self.state is _State.REQUEST:
            request = self._request()
            if request is not None:
                return [request]
        return []

    @property
    def trailing_data(self) -> bytes:
        """Bytes received past the request (after ``reply``): the destination's."""
        return bytes(self._buffer) if self.state is _State.DONE else b""

    def _close(self, message: str, reply: bytes = b"") -> Socks5Error:
        self.state = _State.CLOSED
        return Socks5Error(message, reply)

    def _greeting(self) -> None:
        buf = self._buffer
        if not buf:
            return
        if buf[0] != VERSION:
            raise self._close(f"not SOCKS5 (version byte {buf[0]:#04x})")
        if len(buf) < 2 or len(buf) < 2 + buf[1]:
            return
        count = buf[1]
        methods = bytes(buf[2 : 2 + count])
        del buf[: 2 + count]
        wanted = METHOD_USERPASS if self.require_auth else METHOD_NONE
        if wanted not in methods:
            raise self._close(
                "no acceptable authentication method offered",
                bytes((VERSION, METHOD_REFUSED)),
            )
        self._out += bytes((VERSION, wanted))
        self.state = _State.AUTH if self.require_auth else _State.REQUEST

    def _auth(self) -> AuthRequested | None:
        buf = self._buffer
        if not buf:
            return None
        if buf[0] != AUTH_VERSION:
            raise self._close(
                f"username/password version {buf[0]:#04x} (RFC 1929 is 0x01)",
                bytes((AUTH_VERSION, 0x01)),
            )
        if len(buf) < 2:
            return None
        ulen = buf[1]
        if len(buf) < 3 + ulen:
            return None
        plen = buf[2 + ulen]
        end = 3 + ulen + plen
        if len(buf) < end:
            return None
        user = bytes(buf[2 : 2 + ulen]).decode("utf-8", "replace")
        password = bytes(buf[3 + ulen : end]).decode("utf-8", "replace")
        del buf[:end]
        self.state = _State.AUTH_PENDING
        return AuthRequested(user=user, password=password)

    def _request(self) -> ConnectRequested | None:
        buf = self._buffer
        if not buf:
            return None
        if buf[0] != VERSION:
            raise self._close(f"request version {buf[0]:#04x}", _failure(Reply.GENERAL_FAILURE))
        if len(buf) < 5:
            return None
        command, atyp = buf[1], buf[3]
        if atyp == ATYP_IPV4:
            end = 4 + 4 + 2
        elif atyp == ATYP_IPV6:
            end = 4 + 16 + 2
        elif atyp == ATYP_DOMAIN:
            end = 5 + buf[4] + 2
        else:
            raise self._close(
                f"address type {atyp:#04x}", _failure(Reply.ADDRESS_TYPE_NOT_SUPPORTED)
            )
        if len(buf) < end:
            return None
        if command != CMD_CONNECT:
            names = {CMD_BIND: "BIND", CMD_UDP_ASSOCIATE: "UDP ASSOCIATE"}
            raise self._close(
                f"command {names.get(command, hex(command))} is not supported (CONNECT only)",
                _failure(Reply.COMMAND_NOT_SUPPORTED),
            )
        raw = bytes(buf[4 : end - 2])
        port = int.from_bytes(buf[end - 2 : end], "big")
        del buf[:end]
        if atyp == ATYP_IPV4:
            host, is_name = str(ipaddress.IPv4Address(raw)), False
        elif atyp == ATYP_IPV6:
            host, is_name = str(ipaddress.IPv6Address(raw)), False
        else:
            name = raw[1:]
            if not name or not name.isascii() or any(b <= 0x20 or b == 0x7F for b in name):
                raise self._close("malformed domain name", _failure(Reply.HOST_UNREACHABLE))
            host, is_name = name.decode("ascii").lower().rstrip("."), True
        if port == 0:
            raise self._close("port 0", _failure(Reply.NOT_ALLOWED))
        self.state = _State.REPLY_PENDING
        return ConnectRequested(host=host, port=port, is_name=is_name)

    # --- commands, bytes out ----------------------------------------------------------------

    def accept_auth(self, ok: bool) -> list[Event]:
        """Answer the credentials: RFC 1929 status 0, then the events of a request already
        received; or status 1, and the connection is to be closed."""
        if self.state is not _State.AUTH_PENDING:
            raise Socks5Error(f"accept_auth in state {self.state.value}")
        self._out += bytes((AUTH_VERSION, 0x00 if ok else 0x01))
        if not ok:
            self.state = _State.CLOSED
            return []
        self.state = _State.REQUEST
        return self.receive_data(b"")

    def reply(self, code: Reply, bound: tuple[str, int] = ("0.0.0.0", 0)) -> None:
        """Answer the request; ``SUCCEEDED`` hands the connection to the destination
        (``bound``: the proxy's address toward it), anything else closes it."""
        if self.state is not _State.REPLY_PENDING:
            raise Socks5Error(f"reply in state {self.state.value}")
        address = ipaddress.ip_address(bound[0])
        atyp = ATYP_IPV4 if address.version == 4 else ATYP_IPV6
        self._out += bytes((VERSION, code, 0x00, atyp)) + address.packed
        self._out += bound[1].to_bytes(2, "big")
        self.state = _State.DONE if code is Reply.SUCCEEDED else _State.CLOSED

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    @property
    def closed(self) -> bool:
        return self.state is _State.CLOSED
