"""Reading a PROXY header, v1 (text) or v2 (binary): ``detect`` which one a listener that
expects a header was sent, ``parse`` it.

Rule of this room: bytes in, a header out. ``parse`` is handed the whole buffer received so
far, every time more bytes arrive. It returns ``None`` ("need more"), a ``ProxyHeader`` whose
``length`` says where the payload starts, or raises ``ProxyProtocolError``; it never consumes.
Bad bytes are reported as soon as they can be seen (a wrong v2 version at byte 13, not after
64 KiB). No sockets, no clocks, no globals.

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

The TLVs after the address block are read by ``tlv.py`` (each decoded type once, the SSL
sub-TLVs, the CRC32C check of section 2.2.3 over the whole header).
"""

from __future__ import annotations

import ipaddress
import re
import struct
from typing import Literal

from revproxy.errors import ProxyProtocolError
from revproxy.proto.proxy_protocol.header import (
    _UNIX_PATH_SIZE,
    DEFAULT_MAX_SIZE,
    MAX_V1,
    PP2_TYPE_CRC32C,
    V1_PREFIX,
    V2_SIGNATURE,
    Address,
    Command,
    Family,
    ProxyHeader,
    _ip_text,
)
from revproxy.proto.proxy_protocol.tlv import _TLV_HEADER, _check_crc32c, _split_tlvs, _TLVFields

_V2_FIXED = 16

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


def _unix_path(raw: bytes) -> str:
    """A sun_path: up to its first NUL, or for an abstract name (leading NUL) its NUL padding
    stripped. Decoded as the socket module does (UTF-8, undecodable bytes escaped)."""
    if raw[:1] == b"\0":
        name = raw.rstrip(b"\0")
        path = b"\0" + name[1:] if name else b""
    else:
        path = raw.split(b"\0", 1)[0]
    return path.decode("utf-8", "surrogateescape")
