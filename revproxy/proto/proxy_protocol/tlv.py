"""The TLVs of a v2 PROXY header, read: the type-length-value fields after the address
block, the sub-TLVs of the SSL TLV, and the CRC32C check with its checksum function (which
``build.py`` uses to write one).

Rule of this room: a TLV block is split exactly — a stray byte or a length that overruns its
block is an error, never skipped — and a field is decoded only when its whole header has
arrived (``parse`` hands the block over complete). Raw TLVs are kept in order in
``ProxyHeader.tlvs``; NOOP, reserved and unknown types are kept there and otherwise ignored.

Section 2.2.3 (CRC32C): the receiver MUST "replace the 32 bits of the checksum field in the
received PROXY header with all '0's and calculate a CRC32c checksum value of the whole PROXY
header" and, if it differs, "MUST treat the TCP connection providing the header as invalid."

Section 2.2.5: the unique ID is "an opaque byte sequence of up to 128 bytes".

Section 2.2.6: the SSL TLV is a client byte and a 32-bit verify result followed by sub-TLVs
(version, CN, cipher, signature and key algorithms); text values must decode, or the header
is refused.

Our own strictness, beyond the letter of the spec: a TLV that carries a decoded field (ALPN,
authority, CRC32C, unique ID, SSL, netns, AWS VPC endpoint) may appear once; a second copy
would let two readers of the same header disagree.
"""

from __future__ import annotations

import struct

from revproxy.errors import ProxyProtocolError
from revproxy.proto.proxy_protocol.header import (
    _UNIQUE_ID_MAX,
    PP2_SUBTYPE_AWS_VPCE_ID,
    PP2_SUBTYPE_SSL_CIPHER,
    PP2_SUBTYPE_SSL_CN,
    PP2_SUBTYPE_SSL_KEY_ALG,
    PP2_SUBTYPE_SSL_SIG_ALG,
    PP2_SUBTYPE_SSL_VERSION,
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_AWS,
    PP2_TYPE_CRC32C,
    PP2_TYPE_NETNS,
    PP2_TYPE_SSL,
    PP2_TYPE_UNIQUE_ID,
    SSLInfo,
)

_TLV_HEADER = 3
_SSL_FIXED = 5  # uint8 client + uint32 verify


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
