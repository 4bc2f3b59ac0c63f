"""Peek the server name and ALPN of a TLS ClientHello without consuming it.

Rule of this room: bytes in, facts out. ``parse_client_hello`` is handed the whole buffer
received so far on a TLS listener's connection, every time more bytes arrive. It returns
``None`` ("need more"), a ``ClientHelloInfo``, or raises ``ClientHelloError``; it never
consumes, so the caller forwards exactly what it buffered (SNI passthrough) or hands it to its
TLS stack (termination). Bad bytes are reported as early as they can be seen: plain HTTP is
refused on its first byte, not after 16 KiB.

What the RFCs mandate, and why this parser is shaped the way it is:

RFC 8446 section 4.1.2: "When a client first connects to a server, it is REQUIRED to send the
ClientHello as its first TLS message." Anything else first is an error, never "need more".

RFC 8446 section 4.1.2, the message itself (all vectors are length-prefixed)::

    struct {
        ProtocolVersion legacy_version = 0x0303;    /* TLS v1.2 */
        Random random;                              /* 32 bytes */
        opaque legacy_session_id<0..32>;
        CipherSuite cipher_suites<2..2^16-2>;
        opaque legacy_compression_methods<1..2^8-1>;
        Extension extensions<8..2^16-1>;
    } ClientHello;

RFC 5246 section 7.4.1.2 (a TLS 1.2 ClientHello may omit the extensions): "A server MUST accept
ClientHello messages both with and without the extensions field, and (as for all other
messages) it MUST check that the amount of data in the message precisely matches one of these
formats". So every length must fit its container and nothing may follow the extensions.

RFC 8446 section 4.2: "There MUST NOT be more than one extension of the same type in a given
extension block."

RFC 8446 section 5.1: "Handshake messages MAY be coalesced into a single TLSPlaintext record or
fragmented across several records", but "Handshake messages MUST NOT be interleaved with other
record types", "Implementations MUST NOT send zero-length fragments of Handshake types" and
the record "length MUST NOT exceed 2^14 bytes". So the ClientHello is reassembled from
consecutive handshake records, and any other record type before it is complete is an error.

RFC 6066 section 3: "The ServerNameList MUST NOT contain more than one name of the same
name_type." And: "'HostName' contains the fully qualified DNS hostname of the server, as
understood by the client. The hostname is represented as a byte string using ASCII encoding
without a trailing dot." And: "Literal IPv4 and IPv6 addresses are not permitted in
'HostName'." Only host_name (0) is defined; entries of other name types are skipped, read as a
16-bit length-prefixed opaque value as every deployed TLS stack does.

RFC 8701 (GREASE): clients offer reserved values 0x?A?A so that servers keep ignoring unknown
ones. They are tolerated wherever they appear and left out of ``supported_versions`` and
``alpn``, where they would only mislead routing.
"""

from __future__ import annotations

from dataclasses import dataclass

from revproxy.errors import ClientHelloError

__all__ = [
    "MAX_CLIENTHELLO",
    "ClientHelloInfo",
    "looks_like_tls",
    "parse_client_hello",
]

# A ClientHello with post-quantum key shares and a few PSKs is 2-3 KiB; four full records
# leaves ample room and still bounds what a connection may make us buffer before routing.
MAX_CLIENTHELLO = 16384 * 4

_RECORD_HEADER = 5
_HANDSHAKE_HEADER = 4
# RFC 8446 section 5.1: TLSPlaintext.length "MUST NOT exceed 2^14 bytes".
_MAX_RECORD_PAYLOAD = 2**14

_CONTENT_HANDSHAKE = 0x16
_CONTENT_NAMES = {
    0x14: "change_cipher_spec",
    0x15: "alert",
    0x16: "handshake",
    0x17: "application_data",
    0x18: "heartbeat",
}
_HANDSHAKE_CLIENT_HELLO = 1

_EXT_SERVER_NAME = 0
_EXT_ALPN = 16
_EXT_SUPPORTED_VERSIONS = 43
_EXT_ECH = 0xFE0D

_NAME_TYPE_HOST_NAME = 0
_MAX_HOST_NAME = 253  # RFC 1035: 255 octets on the wire, 253 characters in text form
_MAX_LABEL = 63
# Letters, digits, hyphen; underscore too, because internal names use it and DNS carries it.
_HOST_NAME_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientHelloInfo:
    """What a ClientHello says about where the client wants to go."""

    server_name: str | None
    """Lower-cased host_name of the server_name extension; None when the client sent none."""
    alpn: tuple[str, ...]
    """Protocols offered in the ALPN extension, in the client's order, GREASE left out."""
    legacy_version: int
    """ClientHello.legacy_version, 0x0303 for TLS 1.2 and 1.3 clients."""
    supported_versions: tuple[int, ...]
    """The supported_versions extension, GREASE left out; empty when absent."""
    has_ech: bool
    """An encrypted_client_hello extension is present: server_name is the outer, public name."""
    length: int
    """Bytes of the TLS records that carried the ClientHello (the caller consumes nothing)."""


def looks_like_tls(first_byte: int) -> bool:
    """Whether a connection's first byte can start a TLS ClientHello (a handshake record)."""
    return first_byte == _CONTENT_HANDSHAKE


def parse_client_hello(
    data: bytes | bytearray | memoryview, *, max_size: int = MAX_CLIENTHELLO
) -> ClientHelloInfo | None:
    """Parse the ClientHello at the start of ``data``; None means "need more bytes".

    ``data`` is everything received on the connection so far; bytes after the ClientHello's
    last record are ignored. Raises ``ClientHelloError`` as soon as the bytes cannot be the
    start of a ClientHello of at most ``max_size`` bytes.
    """
    view = memoryview(data).cast("B")
    found = _reassemble(view, max_size)
    if found is None:
        return None
    message, length = found
    return _parse_body(message, length)


# --- records ------------------------------------------------------------------------------


def _reassemble(view: memoryview, max_size: int) -> tuple[memoryview, int] | None:
    """Collect the ClientHello body from consecutive handshake records.

    Returns the body and the number of record bytes it took, or None if incomplete. Only
    record headers are walked until the whole message is present, so calling this again on
    every read of a slow client stays cheap.
    """
    fragments: list[memoryview] = []
    received = 0  # handshake bytes in complete records so far
    declared: int | None = None  # 4 + handshake length, once its header is in
    pos = 0
    while declared is None or received < declared:
        header = view[pos : pos + _RECORD_HEADER]
        _check_record_header(header, first=pos == 0)
        if len(header) < _RECORD_HEADER:
            return None
        payload = int.from_bytes(header[3:5], "big")
        if payload == 0:
            raise ClientHelloError(f"empty handshake record at byte {pos} (RFC 8446 section 5.1)")
        if payload > _MAX_RECORD_PAYLOAD:
            raise ClientHelloError(
                f"TLS record at byte {pos} is {payload} bytes long, more than 2^14"
            )
        end = pos + _RECORD_HEADER + payload
        if end > max_size:
            raise ClientHelloError(f"ClientHello takes more than {max_size} bytes of records")
        # A partial record still tells us the handshake type and length: check them early.
        fragment = view[pos + _RECORD_HEADER : end]
        declared = _check_handshake_header(fragments, fragment, declared, max_size)
        if len(view) < end:
            return None
        fragments.append(fragment)
        received += payload
        pos = end
    if received > declared:
        raise ClientHelloError(
            f"{received - declared} bytes of handshake data follow the ClientHello in its last"
            " record; a client sends nothing else before the server's reply"
        )
    message = memoryview(b"".join(fragments))
    return message[_HANDSHAKE_HEADER:], pos


def _check_record_header(header: memoryview, *, first: bool) -> None:
    """Raise on a record header (possibly partial) that cannot carry the ClientHello."""
    if not header:
        return
    content_type = header[0]
    if content_type != _CONTENT_HANDSHAKE:
        if not first:
            name = _CONTENT_NAMES.get(content_type, f"type {content_type}")
            raise ClientHelloError(
                f"{name} record arrived in the middle of the ClientHello"
                " (handshake records must not be interleaved with other types)"
            )
        if content_type & 0x80:
            raise ClientHelloError("SSLv2 hello not supported (the client must speak TLS 1.0+)")
        hint = ""
        if 0x20 <= content_type < 0x7F:
            hint = " (plain text, such as HTTP, sent to a TLS listener?)"
        raise ClientHelloError(
            f"not TLS: first byte 0x{content_type:02x} is not a handshake record (0x16){hint}"
        )
    if len(header) >= 2 and header[1] != 0x03:
        version = bytes(header[1:3]).hex()
        raise ClientHelloError(f"not TLS: record version 0x{version} does not start with 0x03")


def _check_handshake_header(
    fragments: list[memoryview], fragment: memoryview, declared: int | None, max_size: int
) -> int | None:
    """Check the handshake header once its bytes are in; return 4 + the message length."""
    if declared is not None:
        return declared
    head = b"".join(f[:_HANDSHAKE_HEADER] for f in [*fragments, fragment])[:_HANDSHAKE_HEADER]
    if head and head[0] != _HANDSHAKE_CLIENT_HELLO:
        raise ClientHelloError(
            f"handshake message type {head[0]} is not ClientHello ({_HANDSHAKE_CLIENT_HELLO})"
        )
    if len(head) < _HANDSHAKE_HEADER:
        return None
    total = _HANDSHAKE_HEADER + int.from_bytes(head[1:4], "big")
    if total > max_size:
        raise ClientHelloError(f"ClientHello declares {total} bytes, more than {max_size}")
    return total


# --- the message --------------------------------------------------------------------------


class _Reader:
    """Bounds-checked reads over one length-delimited container of the message."""

    __slots__ = ("_buf", "_end", "_name", "_pos")

    def __init__(self, buf: memoryview, name: str) -> None:
        self._buf = buf
        self._pos = 0
        self._end = len(buf)
        self._name = name

    @property
    def left(self) -> int:
        return self._end - self._pos

    def take(self, n: int, field: str) -> memoryview:
        if n > self.left:
            raise ClientHelloError(
                f"ClientHello {field} needs {n} bytes but its container"
                f" ({self._name}) has {self.left} left"
            )
        out = self._buf[self._pos : self._pos + n]
        self._pos += n
        return out

    def uint(self, size: int, field: str) -> int:
        return int.from_bytes(self.take(size, field), "big")

    def vector(self, size: int, field: str, *, minimum: int = 0) -> _Reader:
        """Read a vector with a ``size``-byte length prefix; return a reader over it."""
        n = self.uint(size, f"{field} length")
        if n < minimum:
            raise ClientHelloError(f"ClientHello {field} is {n} bytes, fewer than {minimum}")
        return _Reader(self.take(n, field), field)

    def take_all(self) -> bytes:
        out = bytes(self._buf[self._pos : self._end])
        self._pos = self._end
        return out

    def expect_end(self) -> None:
        if self.left:
            raise ClientHelloError(
                f"ClientHello {self._name} has {self.left} bytes after its last element"
            )


def _parse_body(body: memoryview, length: int) -> ClientHelloInfo:
    r = _Reader(body, "handshake message")
    legacy_version = r.uint(2, "legacy_version")
    r.take(32, "random")
    session_id = r.vector(1, "legacy_session_id")
    if session_id.left > 32:
        raise ClientHelloError(
            f"ClientHello legacy_session_id is {session_id.left} bytes, more than 32"
        )
    suites = r.vector(2, "cipher_suites", minimum=2)
    if suites.left % 2:
        raise ClientHelloError(f"ClientHello cipher_suites length {suites.left} is odd")
    r.vector(1, "legacy_compression_methods", minimum=1)

    server_name: str | None = None
    alpn: tuple[str, ...] = ()
    versions: tuple[int, ...] = ()
    seen: set[int] = set()
    if r.left:  # RFC 5246 section 7.4.1.2: the extensions block may be absent altogether
        extensions = r.vector(2, "extensions")
        r.expect_end()
        while extensions.left:
            ext_type = extensions.uint(2, "extension type")
            data = extensions.vector(2, f"extension 0x{ext_type:04x}")
            if ext_type in seen:
                raise ClientHelloError(
                    f"ClientHello has two extensions of type 0x{ext_type:04x}"
                    " (RFC 8446 section 4.2 allows one)"
                )
            seen.add(ext_type)
            if ext_type == _EXT_SERVER_NAME:
                server_name = _parse_server_name(data)
            elif ext_type == _EXT_ALPN:
                alpn = _parse_alpn(data)
            elif ext_type == _EXT_SUPPORTED_VERSIONS:
                versions = _parse_supported_versions(data)
    return ClientHelloInfo(
        server_name=server_name,
        alpn=alpn,
        legacy_version=legacy_version,
        supported_versions=versions,
        has_ech=_EXT_ECH in seen,
        length=length,
    )


def _parse_server_name(data: _Reader) -> str | None:
    names = data.vector(2, "server_name_list", minimum=1)
    data.expect_end()
    host: str | None = None
    while names.left:
        name_type = names.uint(1, "server_name name_type")
        raw = names.vector(2, "server_name entry").take_all()
        if name_type != _NAME_TYPE_HOST_NAME:
            continue  # other name types are undefined; skip them like every TLS stack does
        if host is not None:
            raise ClientHelloError(
                "server_name lists two host_name entries (RFC 6066 section 3 allows one)"
            )
        host = _host_name(raw)
    return host


def _host_name(raw: bytes) -> str:
    if not raw:
        raise ClientHelloError("server_name host_name is empty")
    if not _HOST_NAME_BYTES.issuperset(raw):
        raise ClientHelloError(
            f"server_name host_name {raw[:64]!r} has characters a DNS name cannot have"
            " (RFC 6066 section 3: ASCII, international names as A-labels)"
        )
    host = raw.decode("ascii").lower()
    if len(host) > _MAX_HOST_NAME:
        raise ClientHelloError(f"server_name host_name is {len(host)} characters, more than 253")
    if host.endswith("."):
        raise ClientHelloError(
            f"server_name host_name {host!r} ends with a dot (RFC 6066 section 3 forbids it)"
        )
    labels = host.split(".")
    if any(not label or len(label) > _MAX_LABEL for label in labels):
        raise ClientHelloError(f"server_name host_name {host!r} has an empty or over-long label")
    if len(labels) == 4 and all(label.isdigit() for label in labels):
        raise ClientHelloError(
            f"server_name host_name {host!r} is an IPv4 address (RFC 6066 section 3 forbids it)"
        )
    return host


def _parse_alpn(data: _Reader) -> tuple[str, ...]:
    names = data.vector(2, "ALPN protocol_name_list", minimum=2)
    data.expect_end()
    protocols: list[str] = []
    while names.left:
        name = names.vector(1, "ALPN protocol name", minimum=1).take_all()
        if len(name) == 2 and _is_grease(int.from_bytes(name, "big")):
            continue
        # ALPN names are opaque bytes; latin-1 keeps every one of them, ASCII ones unchanged.
        protocols.append(name.decode("latin-1"))
    return tuple(protocols)


def _parse_supported_versions(data: _Reader) -> tuple[int, ...]:
    versions = data.vector(1, "supported_versions", minimum=2)
    data.expect_end()
    if versions.left % 2:
        raise ClientHelloError(f"ClientHello supported_versions length {versions.left} is odd")
    found: list[int] = []
    while versions.left:
        version = versions.uint(2, "supported_versions entry")
        if not _is_grease(version):
            found.append(version)
    return tuple(found)


def _is_grease(value: int) -> bool:
    """RFC 8701: 0x0A0A, 0x1A1A, ... 0xFAFA: both bytes equal, low nibble 0xA."""
    return value & 0x0F0F == 0x0A0A and value >> 8 == value & 0xFF
