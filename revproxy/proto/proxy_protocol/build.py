"""Writing a PROXY header: the v1 line or the v2 header we put in front of a connection to
a backend, and the LOCAL header a health check sends.

Rule of this room: values in, bytes out. Unusable values (an address that is no IP address,
a port out of range, one address without the other, a TLV too long) raise ValueError before a
byte is produced: the mistake is the caller's, and nothing half-written leaves here.

Section 2.1: v1 carries TCP4, TCP6 or UNKNOWN, single spaces, no leading zeroes, a CRLF.
Section 2.2: v2 writes version 2, the command, the family and transport byte and the 16-bit
length of what follows; a LOCAL header carries no addresses, as the receiver "must use the
real connection endpoints". A mix of IPv4 and IPv6 goes out as TCP6 with the IPv4 address
mapped to ::ffff:a.b.c.d; a UNIX path fills its 108-byte field. Section 2.2.3: a CRC32C TLV
goes last, its value computed over the whole header with the value zeroed, as the receiver
checks it. Section 2.2.5: a unique ID longer than 128 bytes is refused.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence

from revproxy.proto.proxy_protocol.header import (
    _IP,
    _UNIQUE_ID_MAX,
    _UNIX_PATH_SIZE,
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_CRC32C,
    PP2_TYPE_UNIQUE_ID,
    TLV,
    V2_SIGNATURE,
    Address,
    Command,
    _ip_text,
)
from revproxy.proto.proxy_protocol.tlv import castagnoli_crc32

# --- building -------------------------------------------------------------------------------


def build_v1(source: Address | None, destination: Address | None) -> bytes:
    """The v1 line for a connection from ``source`` to ``destination``.

    Neither address gives "PROXY UNKNOWN\\r\\n". An IPv4 and an IPv6 address are sent as TCP6
    with the IPv4 one mapped to ::ffff:a.b.c.d. Raises ValueError for unusable values.
    """
    if source is None and destination is None:
        return b"PROXY UNKNOWN\r\n"
    src, sport, dst, dport = _ip_endpoints(source, destination)
    protocol = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {protocol} {_ip_text(src)} {_ip_text(dst)} {sport} {dport}\r\n".encode()


def build_v2(
    source: Address | None,
    destination: Address | None,
    *,
    command: Command = Command.PROXY,
    alpn: bytes | None = None,
    authority: str | None = None,
    unique_id: bytes | None = None,
    crc32c: bool = False,
    extra_tlvs: Sequence[TLV] = (),
) -> bytes:
    """The v2 header for a connection from ``source`` to ``destination``.

    IP addresses give TCP4 or TCP6 (mixed families: TCP6 with the IPv4 address mapped to
    ::ffff:a.b.c.d); paths starting with "/" (or "\\0" for an abstract socket) with port 0
    give UNIX; neither address gives UNSPEC. LOCAL takes no addresses. ``extra_tlvs`` are
    appended as given; ``crc32c`` adds a checksum TLV last. Raises ValueError for unusable
    values.
    """
    if command is Command.LOCAL:
        if source is not None or destination is not None:
            raise ValueError("a LOCAL header carries no addresses")
        fam, block = 0x00, b""
    else:
        fam, block = _v2_address_block(source, destination)
    tlvs = bytearray()
    if alpn is not None:
        tlvs += _tlv(PP2_TYPE_ALPN, alpn)
    if authority is not None:
        tlvs += _tlv(PP2_TYPE_AUTHORITY, authority.encode("utf-8"))
    if unique_id is not None:
        if len(unique_id) > _UNIQUE_ID_MAX:
            raise ValueError(f"unique_id is {len(unique_id)} bytes; the limit is 128")
        tlvs += _tlv(PP2_TYPE_UNIQUE_ID, unique_id)
    for tlv_type, value in extra_tlvs:
        if tlv_type == PP2_TYPE_CRC32C:
            raise ValueError("ask for a CRC32C TLV with crc32c=True, not in extra_tlvs")
        tlvs += _tlv(tlv_type, value)
    if crc32c:
        tlvs += _tlv(PP2_TYPE_CRC32C, b"\0\0\0\0")
    body_size = len(block) + len(tlvs)
    if body_size > 0xFFFF:
        raise ValueError(f"addresses and TLVs take {body_size} bytes; a v2 header holds 65535")
    header = bytearray(V2_SIGNATURE)
    header += bytes([0x20 | command.value, fam])
    header += struct.pack("!H", body_size)
    header += block
    header += tlvs
    if crc32c:
        header[-4:] = struct.pack("!I", castagnoli_crc32(bytes(header)))
    return bytes(header)


def build_local_v2() -> bytes:
    """The 16-byte LOCAL header a health check sends: "use the real connection endpoints"."""
    return build_v2(None, None, command=Command.LOCAL)


def _tlv(tlv_type: int, value: bytes) -> bytes:
    if not 0 <= tlv_type <= 0xFF:
        raise ValueError(f"TLV type {tlv_type} is not a byte")
    if len(value) > 0xFFFF:
        raise ValueError(f"TLV 0x{tlv_type:02x} value is {len(value)} bytes; the limit is 65535")
    return struct.pack("!BH", tlv_type, len(value)) + value


def _v2_address_block(source: Address | None, destination: Address | None) -> tuple[int, bytes]:
    if source is None and destination is None:
        return 0x00, b""
    if source is not None and destination is not None and _is_unix(source[0]):
        if not _is_unix(destination[0]):
            raise ValueError(f"{source[0]!r} is a UNIX path but {destination[0]!r} is not")
        return 0x31, _unix_field(source) + _unix_field(destination)
    src, sport, dst, dport = _ip_endpoints(source, destination)
    ports = struct.pack("!HH", sport, dport)
    return (0x11 if src.version == 4 else 0x21), src.packed + dst.packed + ports


def _is_unix(host: str) -> bool:
    return host.startswith(("/", "\0"))


def _unix_field(address: Address) -> bytes:
    path, port = address
    if port != 0:
        raise ValueError(f"UNIX address {path!r} has port {port}; write 0")
    raw = path.encode("utf-8", "surrogateescape")
    if len(raw) > _UNIX_PATH_SIZE:
        raise ValueError(f"UNIX path {path!r} is {len(raw)} bytes; the limit is 108")
    return raw.ljust(_UNIX_PATH_SIZE, b"\0")


def _ip_endpoints(source: Address | None, destination: Address | None) -> tuple[_IP, int, _IP, int]:
    if source is None or destination is None:
        raise ValueError("give both addresses or neither")
    src, dst = _ip(source[0]), _ip(destination[0])
    if src.version != dst.version:
        src, dst = _as_ipv6(src), _as_ipv6(dst)
    return src, _port(source), dst, _port(destination)


def _ip(host: str) -> _IP:
    # A scope ("fe80::1%eth0") means nothing to the receiver and has no place in either format.
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address") from None


def _as_ipv6(ip: _IP) -> ipaddress.IPv6Address:
    if isinstance(ip, ipaddress.IPv6Address):
        return ip
    return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed)


def _port(address: Address) -> int:
    port = address[1]
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} of {address[0]!r} is not 0-65535")
    return port
