"""Coverage-guided fuzzing of the PROXY protocol parser (atheris / libFuzzer).

Run from the repository root:

    python tests/proto/fuzz_proxy_protocol.py -max_total_time=20

The only exception allowed out of ``parse`` is ``ProxyProtocolError``. When a header comes back,
it must fit in the input and within ``max_size``, and parse to the same header from exactly its
own bytes. Any other exception or failed assertion is a crash, and libFuzzer writes the input
that caused it.

Random bytes rarely get past a signature, a CRLF and four well-formed fields, so the first input
byte picks how the rest is used: raw after a signature prefix, or as the choices of a v1 line or
a v2 header built field by field (right or wrong lengths, TLVs of every type, SSL sub-TLVs,
a CRC32C that is valid or not). Whatever is built, the fuzzer's leftover bytes follow it.
"""

from __future__ import annotations

import ipaddress
import struct
import sys
from pathlib import Path

import atheris  # type: ignore[import-untyped, unused-ignore]

# Run as a script, this file's folder is on sys.path but the repository root is not.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports():
    from revproxy.errors import ProxyProtocolError
    from revproxy.proto import proxy_protocol as pp

PREFIXES = (b"", pp.V1_PREFIX, pp.V2_SIGNATURE, pp.V2_SIGNATURE + b"\x21")
MAX_SIZES = (16, 64, pp.DEFAULT_MAX_SIZE, pp.MAX_V2)
FAMILY_BYTES = (0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32, 0x10, 0x13, 0x41)
ADDRESS_SIZES = {0x11: 12, 0x12: 12, 0x21: 36, 0x22: 36, 0x31: 216, 0x32: 216}
TLV_TYPES = (
    pp.PP2_TYPE_ALPN,
    pp.PP2_TYPE_AUTHORITY,
    pp.PP2_TYPE_CRC32C,
    pp.PP2_TYPE_NOOP,
    pp.PP2_TYPE_UNIQUE_ID,
    pp.PP2_TYPE_SSL,
    pp.PP2_TYPE_NETNS,
    pp.PP2_TYPE_AWS,
    0xE0,
    0xFF,
)
SSL_SUBTYPES = (0x21, 0x22, 0x23, 0x24, 0x25, 0x2F)


def v1_line(fdp: atheris.FuzzedDataProvider) -> bytes:
    fields = [b"PROXY", fdp.PickValueInList([b"TCP4", b"TCP6", b"UNKNOWN", b"TCP5"])]
    for _ in range(2):
        choice = fdp.ConsumeIntInRange(0, 2)
        if choice == 0:
            fields.append(str(ipaddress.IPv4Address(fdp.ConsumeBytes(4).ljust(4, b"\0"))).encode())
        elif choice == 1:
            fields.append(
                str(ipaddress.IPv6Address(fdp.ConsumeBytes(16).ljust(16, b"\0"))).encode()
            )
        else:
            fields.append(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 45)))
    for _ in range(2):
        if fdp.ConsumeBool():
            fields.append(str(fdp.ConsumeIntInRange(0, 70000)).encode())
        else:
            fields.append(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 6)))
    if fdp.ConsumeIntInRange(0, 7) == 0:
        fields.append(fdp.ConsumeBytes(3))
    return b" ".join(fields) + b"\r\n"


def tlv(fdp: atheris.FuzzedDataProvider, types: tuple[int, ...]) -> bytes:
    tlv_type = fdp.PickValueInList(list(types))
    if tlv_type == pp.PP2_TYPE_SSL:
        value = fdp.ConsumeBytes(5)
        for _ in range(fdp.ConsumeIntInRange(0, 4)):
            value += tlv(fdp, SSL_SUBTYPES)
    elif tlv_type == pp.PP2_TYPE_AWS:
        value = bytes([fdp.ConsumeIntInRange(0, 2)]) + fdp.ConsumeBytes(
            fdp.ConsumeIntInRange(0, 30)
        )
    else:
        value = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 140))
    size = len(value) if fdp.ConsumeIntInRange(0, 15) else fdp.ConsumeIntInRange(0, 0xFFFF)
    return struct.pack("!BH", tlv_type, size) + bytes(value)


def v2_header(fdp: atheris.FuzzedDataProvider) -> bytes:
    ver_cmd = fdp.PickValueInList([0x20, 0x21, 0x21, 0x21, 0x11, 0x22])
    fam = fdp.PickValueInList(list(FAMILY_BYTES))
    body = bytes(fdp.ConsumeBytes(ADDRESS_SIZES.get(fam, 0)))
    for _ in range(fdp.ConsumeIntInRange(0, 5)):
        body += tlv(fdp, TLV_TYPES)
    crc = fdp.ConsumeBool()
    if crc:
        body += struct.pack("!BH", pp.PP2_TYPE_CRC32C, 4) + b"\0\0\0\0"
    size = len(body) if fdp.ConsumeIntInRange(0, 15) else fdp.ConsumeIntInRange(0, 0xFFFF)
    header: bytes = pp.V2_SIGNATURE + bytes([ver_cmd, fam]) + struct.pack("!H", size) + body
    if crc and fdp.ConsumeIntInRange(0, 7):
        header = header[:-4] + struct.pack("!I", pp.castagnoli_crc32(header))
    return header


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    max_size = MAX_SIZES[data[1] % len(MAX_SIZES)]
    mode = data[0] % 6
    if mode < len(PREFIXES):
        wire = PREFIXES[mode] + data[2:]
    else:
        fdp = atheris.FuzzedDataProvider(data[2:])
        wire = v1_line(fdp) if mode == len(PREFIXES) else v2_header(fdp)
        wire += fdp.ConsumeBytes(fdp.remaining_bytes())
    try:
        header = pp.parse(wire, max_size=max_size)
    except ProxyProtocolError:
        return
    if header is None:
        return
    assert 0 < header.length <= min(len(wire), max_size), (header, len(wire))
    assert pp.parse(wire[: header.length], max_size=max_size) == header


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
