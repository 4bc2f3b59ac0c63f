"""The values of the PROXY protocol: the header as read (``ProxyHeader``, ``SSLInfo``), its
command and address family, and the signatures, size limits and type numbers of the spec
(HAProxy's proxy-protocol.txt, 2020/03/05).

Rule of this room: values only, shared by the reader (``parser.py``, ``tlv.py``) and the
writer (``build.py``), so both speak of the same numbers; nothing here reads or writes bytes.
A header read is frozen: whoever holds it sees what was received, and nothing else.

Section 2.1 bounds a v1 line at 107 bytes; section 2.2 makes a v2 header "always exactly 16 +
this value" bytes long, the value being a 16-bit length. Section 2.2 names the families and
transports (``Family`` keeps the four a header can be read as: the DGRAM ones fall back to
UNSPEC) and the two commands, LOCAL and PROXY. Section 2.2.5 bounds the unique ID at 128 bytes
and section 2.2.6 numbers the SSL TLV's client bits. An IP address becomes text one way on
both sides (``_ip_text``: canonical, an IPv4-mapped IPv6 address as ::ffff:a.b.c.d), so the
same address read and written is the same text.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

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


def _ip_text(ip: _IP) -> str:
    """The canonical text of ``ip``; an IPv4-mapped IPv6 address as "::ffff:a.b.c.d", which
    says what it is (Python before 3.13 would print "::ffff:102:304")."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return f"::ffff:{ip.ipv4_mapped}"
    return str(ip)
