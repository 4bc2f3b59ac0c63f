"""PROXY protocol v1 (text) and v2 (binary): read the header a trusted sender puts in front of a
connection, and write the one we put in front of a connection to a backend.

Rule of this room: bytes in, a header out; values in, bytes out. ``parse`` is handed the whole
buffer received so far, every time more bytes arrive. It returns ``None`` ("need more"), a
``ProxyHeader`` whose ``length`` says where the payload starts, or raises
``ProxyProtocolError``; it never consumes. Bad bytes are reported as soon as they can be seen
(a wrong v2 version at byte 13, not after 64 KiB). No sockets, no clocks, no globals.

Whether a listener expects a header at all is configuration, never a guess made from the
bytes. Section 2: "The receiver MUST be configured to only receive the protocol described in
this specification and MUST not try to guess whether the protocol header is present or not."
``detect`` only tells which of the two formats a listener that expects one was sent.

What the spec (HAProxy's proxy-protocol.txt, 2020/03/05) mandates, and where it lands here:

Section 2: "The receiver MUST NOT start processing the connection before it receives a
complete and valid PROXY protocol header." So ``parse`` answers "need more" until the last
byte and never returns a partial header.

Section 2.1 (v1): "If the CRLF sequence is not found in the first 107 characters, the receiver
should declare the line invalid." "The receiver must not tolerate a single CR or LF character
to end the line when a complete CRLF sequence is expected." "Heading zeroes are not permitted
in front of numbers in order to avoid any possible confusion with octal numbers." Fields are
separated by "exactly one space". For "UNKNOWN", "the receiver must ignore anything presented
before the CRLF is found". "Any sequence which does not exactly match the protocol must be
discarded and cause the receiver to abort the connection."

Section 2.2 (v2): the version "must always be sent as \\x2 and the receiver must only accept
this value"; for an unassigned command "Receivers must drop connections presenting unexpected
values here"; unknown address families and transport protocols "must be rejected as invalid
by receivers". "A receiver is not required to implement other ones, provided that it
automatically falls back to the UNSPEC mode for the valid combinations above that it does not
support": UDP (DGRAM) headers are read as UNSPEC. "Receivers MUST always consider this field
to skip the appropriate number of bytes and must not assume zero is presented for LOCAL
connections." For LOCAL the receiver "must use the real connection endpoints and discard the
protocol block including the family which is ignored."

Section 2.2.3 (CRC32C): the receiver MUST "replace the 32 bits of the checksum field in the
received PROXY header with all '0's and calculate a CRC32c checksum value of the whole PROXY
header" and, if it differs, "MUST treat the TCP connection providing the header as invalid."

Section 2.2.5: the unique ID is "an opaque byte sequence of up to 128 bytes".

Our own strictness, beyond the letter of the spec: a TLV that carries a decoded field (ALPN,
authority, CRC32C, unique ID, SSL, netns, AWS VPC endpoint) may appear once; a second copy
would let two readers of the same header disagree.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from revproxy.errors import ProxyProtocolError

__all__ = [
    "MAX_V1",
    "MAX_V2",
    "PP2_CLIENT_CERT_CONN",
    "PP2_CLIENT_CERT_SESS",
    "PP2_CLIENT_SSL",
    "PP2_SUBTYPE_AWS_VPCE_ID",
    "PP2_SUBTYPE_SSL_CIPHER",
    "PP2_SUBTYPE_SSL_CN",
    "PP2_SUBTYPE_SSL_KEY_ALG",
    "PP2_SUBTYPE_SSL_SIG_ALG",
    "PP2_SUBTYPE_SSL_VERSION",
    "PP2_TYPE_ALPN",
    "PP2_TYPE_AUTHORITY",
    "PP2_TYPE_AWS",
    "PP2_TYPE_CRC32C",
    "PP2_TYPE_NETNS",
    "PP2_TYPE_NOOP",
    "PP2_TYPE_SSL",
    "PP2_TYPE_UNIQUE_ID",
    "V1_PREFIX",
    "V2_SIGNATURE",
    "Command",
    "Family",
    "ProxyHeader",
    "SSLInfo",
    "build_local_v2",
    "build_v1",
    "build_v2",
    "castagnoli_crc32",
    "detect",
    "parse",
]

# Section 2.1: the worst case line, "PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535
# 65535\r\n", is 107 bytes.
MAX_V1 = 107
# Section 2.2: "the length of the protocol header in bytes is always exactly 16 + this value".
MAX_V2 = 16 + 0xFFFF
# What a listener buffers before giving up unless told otherwise: room for addresses and a
# generous set of TLVs, far below the 64 KiB the length field allows.
DEFAULT_MAX_SIZE = 4096

V1_PREFIX = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_FIXED = 16

PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_SUBTYPE_SSL_SIG_ALG = 0x24
PP2_SUBTYPE_SSL_KEY_ALG = 0x25
PP2_TYPE_NETNS = 0x30
# AWS load balancers: type 0xEA from the custom range, first value byte a subtype.
PP2_TYPE_AWS = 0xEA
PP2_SUBTYPE_AWS_VPCE_ID = 0x01

# Bits of the SSL TLV's <client> field (section 2.2.6).
PP2_CLIENT_SSL = 0x01
PP2_CLIENT_CERT_CONN = 0x02
PP2_CLIENT_CERT_SESS = 0x04

_UNIQUE_ID_MAX = 128
_UNIX_PATH_SIZE = 108
_TLV_HEADER = 3
_SSL_FIXED = 5  # uint8 client + uint32 verify

# Section 2.2, "the following protocol bytes are expected", with their address block sizes.
# Only these seven combinations are valid; DGRAM ones fall back to UNSPEC.
_ADDRESS_SIZES = {0x00: 0, 0x11: 12, 0x12: 12, 0x21: 36, 0x22: 36, 0x31: 216, 0x32: 216}
_FAMILY_NAMES = {0x0: "UNSPEC", 0x1: "INET", 0x2: "INET6", 0x3: "UNIX"}
_TRANSPORT_NAMES = {0x0: "UNSPEC", 0x1: "STREAM", 0x2: "DGRAM"}

_V1_NOT_PRINTABLE = re.compile(rb"[^\x20-\x7e]")
_V1_PORT = re.compile(r"0|[1-9][0-9]{0,4}")
_V1_IPV4 = re.compile(r"(?:0|[1-9][0-9]{0,2})(?:\.(?:0|[1-9][0-9]{0,2})){3}")
# What inet_pton(AF_INET6) accepts: hex groups, "::", an embedded dotted quad; no "%scope".
_V1_IPV6 = re.compile(r"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*")

Address = tuple[str, int]
TLV = tuple[int, bytes]
_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


class Command(enum.Enum):
    """The low nibble of the v2 version/command byte."""

    LOCAL = 0x0  # the proxy's own connection (health check): use the real endpoints
    PROXY = 0x1  # relayed on behalf of a client: the header carries its endpoints


class Family(enum.Enum):
    """What the addresses are; the values are the v2 family/transport bytes."""

    UNSPEC = 0x00  # v1 "UNKNOWN", v2 UNSPEC and the DGRAM fall-backs: use the real endpoints
    TCP4 = 0x11
    TCP6 = 0x21
    UNIX = 0x31


@dataclass(frozen=True, slots=True, kw_only=True)
class SSLInfo:
    """The PP2_TYPE_SSL TLV: how the client reached the sender (section 2.2.6)."""

    client: int  # PP2_CLIENT_* bits
    verify: int  # 0 if the client presented a certificate and it was verified
    version: str | None = None
    cn: str | None = None
    cipher: str | None = None
    sig_alg: str | None = None
    key_alg: str | None = None
    tlvs: tuple[TLV, ...] = ()  # the raw sub-TLVs, in order

    @property
    def client_ssl(self) -> bool:
        return bool(self.client & PP2_CLIENT_SSL)

    @property
    def client_cert_conn(self) -> bool:
        return bool(self.client & PP2_CLIENT_CERT_CONN)

    @property
    def client_cert_sess(self) -> bool:
        return bool(self.client & PP2_CLIENT_CERT_SESS)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyHeader:
    """One parsed PROXY header. ``length`` bytes of the stream belong to it."""

    version: int
    command: Command
    family: Family
    source: Address | None  # (ip, port), (path, 0) for UNIX; None for LOCAL and UNSPEC
    destination: Address | None
    tlvs: tuple[TLV, ...] = ()
    alpn: bytes | None = None
    authority: str | None = None
    unique_id: bytes | None = None
    ssl: SSLInfo | None = None
    netns: str | None = None
    aws_vpce_id: str | None = None
    length: int


# --- detection and parsing -----------------------------------------------------------------


def detect(data: bytes) -> Literal["v1", "v2", "none", "need_more"]:
    """Which header format ``data`` starts with, looking at its first 12 bytes at most."""
    head = bytes(data[: len(V2_SIGNATURE)])
    if head == V2_SIGNATURE:
        return "v2"
    if head[: len(V1_PREFIX)] == V1_PREFIX:
        return "v1"
    if V2_SIGNATURE.startswith(head) or V1_PREFIX.startswith(head):
        return "need_more"
    return "none"


def parse(data: bytes, *, max_size: int = DEFAULT_MAX_SIZE) -> ProxyHeader | None:
    """Parse the header at the start of ``data``; ``None`` means "need more bytes".

    A header larger than ``max_size`` bytes (v1: a line with no CRLF within
    ``min(107, max_size)`` bytes) is an error. Bytes after the header are left alone.
    """
    kind = detect(data)
    if kind == "need_more":
        return None
    if kind == "v1":
        return _parse_v1(data, min(MAX_V1, max_size))
    if kind == "v2":
        return _parse_v2(data, max_size)
    raise ProxyProtocolError(
        f"PROXY: bad signature {bytes(data[:12])!r}: expected 'PROXY ' (v1) or the v2 signature"
    )


def _parse_v1(data: bytes, limit: int) -> ProxyHeader | None:
    window = bytes(data[:limit])
    end = window.find(b"\r\n")
    line = window if end < 0 else window[:end]
    if end < 0 and line.endswith(b"\r"):
        line = line[:-1]  # its LF may be the next byte
    bad = _V1_NOT_PRINTABLE.search(line)
    if bad is not None:
        what = {b"\r": "a CR without LF", b"\n": "a LF without CR"}.get(
            bad.group(), f"the byte {bad.group()!r}"
        )
        raise ProxyProtocolError(f"PROXY v1: {what} at offset {bad.start()}; lines end in CRLF")
    if end < 0:
        if len(data) >= limit:
            raise ProxyProtocolError(f"PROXY v1: no CRLF within the first {limit} bytes")
        return None

    fields = line.decode("ascii").split(" ")
    protocol = fields[1]
    if protocol == "UNKNOWN":
        # Section 2.1: "the receiver must ignore anything presented before the CRLF".
        return ProxyHeader(
            version=1,
            command=Command.PROXY,
            family=Family.UNSPEC,
            source=None,
            destination=None,
            length=end + 2,
        )
    if protocol not in ("TCP4", "TCP6"):
        raise ProxyProtocolError(
            f"PROXY v1: protocol {protocol!r} is not 'TCP4', 'TCP6' or 'UNKNOWN'"
        )
    if len(fields) != 6 or "" in fields:
        raise ProxyProtocolError(
            f"PROXY v1: a {protocol} line is 'PROXY {protocol} <src> <dst> <sport> <dport>' "
            "with single spaces"
        )
    src = _v1_address(fields[2], protocol, "source")
    dst = _v1_address(fields[3], protocol, "destination")
    sport = _v1_port(fields[4], "source")
    dport = _v1_port(fields[5], "destination")
    return ProxyHeader(
        version=1,
        command=Command.PROXY,
        family=Family.TCP4 if protocol == "TCP4" else Family.TCP6,
        source=(src, sport),
        destination=(dst, dport),
        length=end + 2,
    )


def _v1_address(text: str, protocol: str, which: str) -> str:
    try:
        if protocol == "TCP4":
            if _V1_IPV4.fullmatch(text) is None:
                raise ValueError(text)
            return str(ipaddress.IPv4Address(text))
        if _V1_IPV6.fullmatch(text) is None:
            raise ValueError(text)
        return _ip_text(ipaddress.IPv6Address(text))
    except ValueError:
        kind = "IPv4" if protocol == "TCP4" else "IPv6"
        raise ProxyProtocolError(
            f"PROXY v1: {which} address {text!r} is not a canonical {kind} address "
            f"as {protocol} requires"
        ) from None


def _v1_port(text: str, which: str) -> int:
    if _V1_PORT.fullmatch(text) is None or int(text) > 0xFFFF:
        raise ProxyProtocolError(
            f"PROXY v1: {which} port {text!r} is not a decimal 0-65535 without leading zeros"
        )
    return int(text)


def _parse_v2(data: bytes, max_size: int) -> ProxyHeader | None:
    if len(data) < 13:
        return None
    version, cmd = data[12] >> 4, data[12] & 0x0F
    if version != 2:
        raise ProxyProtocolError(f"PROXY v2: version {version} is not 2")
    if cmd not in (0x0, 0x1):
        raise ProxyProtocolError(f"PROXY v2: command 0x{cmd:x} is neither LOCAL nor PROXY")
    if len(data) < 14:
        return None
    fam = data[13]
    if fam >> 4 not in _FAMILY_NAMES:
        raise ProxyProtocolError(f"PROXY v2: address family 0x{fam >> 4:x} is not defined")
    if fam & 0x0F not in _TRANSPORT_NAMES:
        raise ProxyProtocolError(f"PROXY v2: transport protocol 0x{fam & 0x0F:x} is not defined")
    if fam not in _ADDRESS_SIZES:
        raise ProxyProtocolError(
            f"PROXY v2: family byte 0x{fam:02x} ({_FAMILY_NAMES[fam >> 4]} over "
            f"{_TRANSPORT_NAMES[fam & 0x0F]}) is not a valid combination"
        )
    if len(data) < _V2_FIXED:
        return None
    (body_size,) = struct.unpack_from("!H", data, 14)
    total = _V2_FIXED + body_size
    if total > max_size:
        raise ProxyProtocolError(
            f"PROXY v2: header of {total} bytes is larger than the limit of {max_size}"
        )
    command = Command(cmd)
    address_size = _ADDRESS_SIZES[fam]
    if command is Command.PROXY and body_size < address_size:
        raise ProxyProtocolError(
            f"PROXY v2: length {body_size} is too short for the {address_size}-byte address "
            f"block of family byte 0x{fam:02x}"
        )
    if len(data) < total:
        return None

    body = bytes(data[_V2_FIXED:total])
    family, source, destination = Family.UNSPEC, None, None
    if command is Command.PROXY and fam in (0x11, 0x21, 0x31):
        family = Family(fam)
        source, destination = _v2_addresses(family, body[:address_size])
    # A LOCAL block shorter than its family's addresses is discarded whole, family and all.
    tlv_start = address_size if body_size >= address_size else body_size
    tlvs = _split_tlvs(body, tlv_start, "TLV")

    fields = _TLVFields()
    for offset, tlv_type, value in tlvs:
        fields.take(tlv_type, value)
        if tlv_type == PP2_TYPE_CRC32C:
            _check_crc32c(data[:total], _V2_FIXED + offset + _TLV_HEADER, value)
    return ProxyHeader(
        version=2,
        command=command,
        family=family,
        source=source,
        destination=destination,
        tlvs=tuple((tlv_type, value) for _, tlv_type, value in tlvs),
        alpn=fields.alpn,
        authority=fields.authority,
        unique_id=fields.unique_id,
        ssl=fields.ssl,
        netns=fields.netns,
        aws_vpce_id=fields.aws_vpce_id,
        length=total,
    )


def _v2_addresses(family: Family, block: bytes) -> tuple[Address, Address]:
    if family is Family.UNIX:
        return (_unix_path(block[:_UNIX_PATH_SIZE]), 0), (_unix_path(block[_UNIX_PATH_SIZE:]), 0)
    size = 4 if family is Family.TCP4 else 16
    src = ipaddress.ip_address(block[:size])
    dst = ipaddress.ip_address(block[size : 2 * size])
    sport, dport = struct.unpack_from("!HH", block, 2 * size)
    return (_ip_text(src), sport), (_ip_text(dst), dport)


def _ip_text(ip: _IP) -> str:
    """The canonical text of ``ip``; an IPv4-mapped IPv6 address as "::ffff:a.b.c.d", which
    says what it is (Python before 3.13 would print "::ffff:102:304")."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return f"::ffff:{ip.ipv4_mapped}"
    return str(ip)


def _unix_path(raw: bytes) -> str:
    """A sun_path: up to its first NUL, or for an abstract name (leading NUL) its NUL padding
    stripped. Decoded as the socket module does (UTF-8, undecodable bytes escaped)."""
    if raw[:1] == b"\0":
        name = raw.rstrip(b"\0")
        path = b"\0" + name[1:] if name else b""
    else:
        path = raw.split(b"\0", 1)[0]
    return path.decode("utf-8", "surrogateescape")


def _split_tlvs(block: bytes, start: int, what: str) -> list[tuple[int, int, bytes]]:
    """(offset in block, type, value) of each TLV from ``start`` to the end of ``block``."""
    out: list[tuple[int, int, bytes]] = []
    pos = start
    while pos < len(block):
        if len(block) - pos < _TLV_HEADER:
            raise ProxyProtocolError(
                f"PROXY v2: {len(block) - pos} stray bytes where a {what} header (3 bytes) "
                "should be"
            )
        tlv_type = block[pos]
        (size,) = struct.unpack_from("!H", block, pos + 1)
        end = pos + _TLV_HEADER + size
        if end > len(block):
            raise ProxyProtocolError(
                f"PROXY v2: {what} 0x{tlv_type:02x} of length {size} overruns its block by "
                f"{end - len(block)} bytes"
            )
        out.append((pos, tlv_type, block[pos + _TLV_HEADER : end]))
        pos = end
    return out


def _check_crc32c(header: bytes, at: int, value: bytes) -> None:
    zeroed = bytearray(header)
    zeroed[at : at + 4] = b"\0\0\0\0"
    (received,) = struct.unpack("!I", value)
    computed = castagnoli_crc32(bytes(zeroed))
    if computed != received:
        raise ProxyProtocolError(
            f"PROXY v2: CRC32C mismatch: header says 0x{received:08x}, bytes give 0x{computed:08x}"
        )


def _text(value: bytes, what: str, encoding: str) -> str:
    try:
        return value.decode(encoding)
    except UnicodeDecodeError:
        raise ProxyProtocolError(f"PROXY v2: {what} is not valid {encoding}") from None


class _TLVFields:
    """The decoded TLVs of one header while it is being read (each type at most once)."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.alpn: bytes | None = None
        self.authority: str | None = None
        self.unique_id: bytes | None = None
        self.ssl: SSLInfo | None = None
        self.netns: str | None = None
        self.aws_vpce_id: str | None = None

    def _once(self, key: int, name: str) -> None:
        if key in self.seen:
            raise ProxyProtocolError(f"PROXY v2: the {name} TLV appears more than once")
        self.seen.add(key)

    def take(self, tlv_type: int, value: bytes) -> None:
        if tlv_type == PP2_TYPE_ALPN:
            self._once(tlv_type, "ALPN")
            self.alpn = value
        elif tlv_type == PP2_TYPE_AUTHORITY:
            self._once(tlv_type, "AUTHORITY")
            self.authority = _text(value, "AUTHORITY", "utf-8")
        elif tlv_type == PP2_TYPE_CRC32C:
            self._once(tlv_type, "CRC32C")
            if len(value) != 4:
                raise ProxyProtocolError(
                    f"PROXY v2: CRC32C TLV is {len(value)} bytes long instead of 4"
                )
        elif tlv_type == PP2_TYPE_UNIQUE_ID:
            self._once(tlv_type, "UNIQUE_ID")
            if len(value) > _UNIQUE_ID_MAX:
                raise ProxyProtocolError(
                    f"PROXY v2: UNIQUE_ID of {len(value)} bytes is longer than 128"
                )
            self.unique_id = value
        elif tlv_type == PP2_TYPE_SSL:
            self._once(tlv_type, "SSL")
            self.ssl = _parse_ssl(value)
        elif tlv_type == PP2_TYPE_NETNS:
            self._once(tlv_type, "NETNS")
            self.netns = _text(value, "NETNS", "ascii")
        elif tlv_type == PP2_TYPE_AWS:
            if not value:
                raise ProxyProtocolError("PROXY v2: AWS TLV 0xea has no subtype byte")
            if value[0] == PP2_SUBTYPE_AWS_VPCE_ID:
                self._once(0x100 | PP2_SUBTYPE_AWS_VPCE_ID, "AWS VPC endpoint ID")
                self.aws_vpce_id = _text(value[1:], "AWS VPC endpoint ID", "ascii")
        # NOOP, reserved and unknown types: kept raw in ProxyHeader.tlvs, otherwise ignored.


_SSL_SUBTYPES = {
    PP2_SUBTYPE_SSL_VERSION: ("version", "ascii"),
    PP2_SUBTYPE_SSL_CN: ("cn", "utf-8"),
    PP2_SUBTYPE_SSL_CIPHER: ("cipher", "ascii"),
    PP2_SUBTYPE_SSL_SIG_ALG: ("sig_alg", "ascii"),
    PP2_SUBTYPE_SSL_KEY_ALG: ("key_alg", "ascii"),
}


def _parse_ssl(value: bytes) -> SSLInfo:
    if len(value) < _SSL_FIXED:
        raise ProxyProtocolError(
            f"PROXY v2: SSL TLV of {len(value)} bytes is shorter than its 5-byte client and "
            "verify fields"
        )
    client, verify = struct.unpack_from("!BI", value)
    subs = _split_tlvs(value, _SSL_FIXED, "SSL sub-TLV")
    strings: dict[str, str] = {}
    for _, sub_type, sub_value in subs:
        if sub_type not in _SSL_SUBTYPES:
            continue
        name, encoding = _SSL_SUBTYPES[sub_type]
        if name in strings:
            raise ProxyProtocolError(f"PROXY v2: the SSL {name} sub-TLV appears more than once")
        strings[name] = _text(sub_value, f"SSL {name}", encoding)
    return SSLInfo(
        client=client,
        verify=verify,
        version=strings.get("version"),
        cn=strings.get("cn"),
        cipher=strings.get("cipher"),
        sig_alg=strings.get("sig_alg"),
        key_alg=strings.get("key_alg"),
        tlvs=tuple((sub_type, sub_value) for _, sub_type, sub_value in subs),
    )


# --- CRC32C (Castagnoli, RFC 4960 appendix B), table-driven -------------------------------


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def castagnoli_crc32(data: bytes) -> int:
    """CRC32C of ``data`` (reflected polynomial 0x82F63B78), as PP2_TYPE_CRC32C carries it."""
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


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
