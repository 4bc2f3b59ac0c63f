"""PROXY protocol v1/v2: bytes in, header out; values in, bytes out.

Every accepted header is parsed three ways: whole, as every growing prefix (each must say
"need more"), and with a payload behind it (``length`` must point at the payload).
"""

from __future__ import annotations

import ast
import contextlib
import ipaddress
import struct
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from revproxy.errors import ClientProtocolError, ProxyProtocolError
from revproxy.proto import proxy_protocol as pp
from revproxy.proto.proxy_protocol import (
    MAX_V1,
    MAX_V2,
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_AWS,
    PP2_TYPE_CRC32C,
    PP2_TYPE_NETNS,
    PP2_TYPE_NOOP,
    PP2_TYPE_SSL,
    PP2_TYPE_UNIQUE_ID,
    V2_SIGNATURE,
    Command,
    Family,
    ProxyHeader,
    SSLInfo,
    build_local_v2,
    build_v1,
    build_v2,
    castagnoli_crc32,
    detect,
    parse,
)

PAYLOAD = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"


def parse_three_ways(wire: bytes, *, max_size: int = pp.DEFAULT_MAX_SIZE) -> ProxyHeader:
    header = parse(wire, max_size=max_size)
    assert header is not None
    assert header.length == len(wire)
    for end in range(len(wire)):
        assert parse(wire[:end], max_size=max_size) is None, f"prefix of {end} bytes"
    stream = wire + PAYLOAD
    with_payload = parse(stream, max_size=max_size)
    assert with_payload == header
    assert stream[with_payload.length :] == PAYLOAD
    return header


def reject(wire: bytes, match: str, *, max_size: int = pp.DEFAULT_MAX_SIZE) -> None:
    """Whole and with a payload: the error; byte by byte: never a header."""
    with pytest.raises(ProxyProtocolError, match=match):
        parse(wire, max_size=max_size)
    with pytest.raises(ProxyProtocolError, match=match):
        parse(wire + PAYLOAD, max_size=max_size)
    for end in range(len(wire)):
        with contextlib.suppress(ProxyProtocolError):
            assert parse(wire[:end], max_size=max_size) is None


def v2(ver_cmd: int, fam: int, body: bytes, *, length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    return V2_SIGNATURE + bytes([ver_cmd, fam]) + struct.pack("!H", size) + body


def tlv(tlv_type: int, value: bytes) -> bytes:
    return struct.pack("!BH", tlv_type, len(value)) + value


TCP4_BLOCK = bytes([192, 0, 2, 1, 198, 51, 100, 7]) + struct.pack("!HH", 56324, 443)


def with_crc(header: bytes) -> bytes:
    """Fill the zeroed CRC32C value of a hand-made header that has its CRC TLV last."""
    return header[:-4] + struct.pack("!I", castagnoli_crc32(header))


# --- the room's rule ------------------------------------------------------------------------


def test_the_module_does_no_io() -> None:
    imported = set()
    for path in sorted(Path(pp.__file__).parent.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
    assert not imported & {"asyncio", "socket", "ssl", "time", "select", "selectors"}


def test_errors_are_client_errors_answered_400() -> None:
    assert issubclass(ProxyProtocolError, ClientProtocolError)
    assert ProxyProtocolError.status == 400


# --- detect --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"", "need_more"),
        (b"P", "need_more"),
        (b"PROXY", "need_more"),
        (b"PROXY ", "v1"),
        (b"PROXY TCP4 1.2.3.4", "v1"),
        (b"PROXY\r\n", "none"),
        (b"PROXX ", "none"),
        (b"proxy ", "none"),
        (b"\r", "need_more"),
        (b"\r\n\r\n\x00\r\nQUI", "need_more"),
        (V2_SIGNATURE, "v2"),
        (V2_SIGNATURE + b"\x21\x11", "v2"),
        (V2_SIGNATURE[:11] + b"X", "none"),
        (b"\r\n\r\nGET", "none"),
        (b"GET / HTTP/1.1\r\n", "none"),
        (b"\x16\x03\x01\x02\x00", "none"),
    ],
)
def test_detect(data: bytes, kind: str) -> None:
    assert detect(data) == kind


def test_detect_reads_a_bounded_prefix() -> None:
    assert detect(V2_SIGNATURE + b"\xff" * 100_000) == "v2"
    assert detect(b"PROXY " + b"\xff" * 100_000) == "v1"


@pytest.mark.parametrize(
    "wire",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
        b"PROXY\r\n",
        b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"\r\n\r\n\x00\r\nQUIX\n\x21\x11\x00\x00",
        b"SSH-2.0-OpenSSH_9.6\r\n",
    ],
)
def test_bad_signature(wire: bytes) -> None:
    reject(wire, "bad signature")


# --- v1 ------------------------------------------------------------------------------------


def test_v1_spec_example() -> None:
    header = parse_three_ways(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n")
    assert header == ProxyHeader(
        version=1,
        command=Command.PROXY,
        family=Family.TCP4,
        source=("192.168.0.1", 56324),
        destination=("192.168.0.11", 443),
        length=47,
    )


def test_v1_longest_tcp4_line_is_56_bytes() -> None:
    wire = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"
    assert len(wire) == 56
    header = parse_three_ways(wire)
    assert header.source == ("255.255.255.255", 65535)


def test_v1_longest_tcp6_line_is_104_bytes() -> None:
    full = ":".join(["ffff"] * 8)
    wire = f"PROXY TCP6 {full} {full} 65535 65535\r\n".encode()
    assert len(wire) == 104
    header = parse_three_ways(wire)
    assert header.family is Family.TCP6
    assert header.source == ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("::1", "::1"),
        ("2001:DB8::A", "2001:db8::a"),
        ("2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
        ("::ffff:192.0.2.1", "::ffff:192.0.2.1"),
        ("::", "::"),
    ],
)
def test_v1_tcp6_addresses_are_canonicalised(text: str, canonical: str) -> None:
    header = parse_three_ways(f"PROXY TCP6 {text} ::1 0 80\r\n".encode())
    assert header.source == (canonical, 0)
    assert header.destination == ("::1", 80)


@pytest.mark.parametrize(
    "wire",
    [
        b"PROXY UNKNOWN\r\n",
        b"PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY UNKNOWN anything at all, even  double  spaces\r\n",
        b"PROXY UNKNOWN " + b"f" * (MAX_V1 - 16) + b"\r\n",
    ],
)
def test_v1_unknown_ignores_the_rest_of_the_line(wire: bytes) -> None:
    header = parse_three_ways(wire)
    assert header.family is Family.UNSPEC
    assert header.command is Command.PROXY
    assert header.source is None and header.destination is None
    assert header.version == 1 and header.tlvs == ()


def test_v1_unknown_short_form_is_15_bytes() -> None:
    assert parse_three_ways(b"PROXY UNKNOWN\r\n").length == 15


def test_v1_line_of_exactly_107_bytes_is_accepted() -> None:
    wire = b"PROXY UNKNOWN " + b"f" * (MAX_V1 - 16) + b"\r\n"
    assert len(wire) == MAX_V1
    assert parse_three_ways(wire).length == MAX_V1


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        (b"PROXY UNKNOWN " + b"f" * (MAX_V1 - 15) + b"\r\n", "no CRLF within the first 107"),
        (b"PROXY " + b"A" * 200, "no CRLF within the first 107"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "a LF without CR at offset 30"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", "a CR without LF at offset 30"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n", "a CR without LF"),
        (b"PROXY TCP4\t1.2.3.4 5.6.7.8 1 2\r\n", r"the byte b'\\t' at offset 10"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\x00\r\n", r"the byte b'\\x00'"),
        (b"PROXY UNKNOWN \xff\r\n", r"the byte b'\\xff'"),
        (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "protocol 'TCP5' is not"),
        (b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", "protocol 'tcp4' is not"),
        (b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "protocol '' is not"),
        (b"PROXY UNKNOWNX\r\n", "protocol 'UNKNOWNX' is not"),
        (b"PROXY \r\n", "protocol '' is not"),
        (b"PROXY TCP4\r\n", "single spaces"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "single spaces"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "single spaces"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "single spaces"),
        (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "single spaces"),
        (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "source address '01.2.3.4' is not"),
        (b"PROXY TCP4 1.2.3.4 256.6.7.8 1 2\r\n", "destination address '256.6.7.8'"),
        (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "source address '1.2.3' is not a canonical IPv4"),
        (b"PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n", "source address '1.2.3.4.5'"),
        (b"PROXY TCP4 0x1.2.3.4 5.6.7.8 1 2\r\n", "source address '0x1.2.3.4'"),
        (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "as TCP4 requires"),
        (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "source address '1.2.3.4' is not a canonical IPv6"),
        (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "source address 'fe80::1%eth0'"),
        (b"PROXY TCP6 ::1::2 ::1 1 2\r\n", "source address '::1::2'"),
        (b"PROXY TCP6 12345::1 ::1 1 2\r\n", "source address '12345::1'"),
        (b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n", "source address"),
        (b"PROXY TCP6 ::1 g::1 1 2\r\n", "destination address 'g::1'"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n", "source port '080' is not"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 00 2\r\n", "source port '00'"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "source port '65536'"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 999999\r\n", "destination port '999999'"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "source port '-1'"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", r"source port '\+1'"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2a\r\n", "destination port '2a'"),
    ],
)
def test_v1_rejects(wire: bytes, match: str) -> None:
    reject(wire, match)


def test_v1_line_limit_is_reported_as_soon_as_it_is_passed() -> None:
    assert parse(b"PROXY " + b"A" * (MAX_V1 - 7)) is None
    with pytest.raises(ProxyProtocolError, match="no CRLF within the first 107"):
        parse(b"PROXY " + b"A" * (MAX_V1 - 6))


def test_v1_bad_byte_is_reported_before_the_line_ends() -> None:
    with pytest.raises(ProxyProtocolError, match="a LF without CR"):
        parse(b"PROXY TCP4\n")


def test_v1_port_zero_is_a_port() -> None:
    header = parse_three_ways(b"PROXY TCP4 0.0.0.0 10.0.0.1 0 0\r\n")
    assert header.source == ("0.0.0.0", 0)
    assert header.destination == ("10.0.0.1", 0)


def test_v1_respects_a_smaller_max_size() -> None:
    parse_three_ways(b"PROXY UNKNOWN\r\n", max_size=20)
    reject(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "no CRLF within the first 20 bytes", max_size=20)


# --- v2: addresses -------------------------------------------------------------------------


def test_v2_tcp4_as_haproxy_sends_it() -> None:
    # HAProxy's send-proxy-v2 for 172.19.0.1:42578 -> 172.19.0.3:80, byte for byte.
    wire = bytes.fromhex("0d0a0d0a000d0a515549540a 2111 000c ac130001 ac130003 a652 0050")
    header = parse_three_ways(wire)
    assert header == ProxyHeader(
        version=2,
        command=Command.PROXY,
        family=Family.TCP4,
        source=("172.19.0.1", 42578),
        destination=("172.19.0.3", 80),
        length=28,
    )
    assert build_v2(("172.19.0.1", 42578), ("172.19.0.3", 80)) == wire


def test_v2_tcp6() -> None:
    src = ipaddress.IPv6Address("2001:db8::1").packed
    dst = ipaddress.IPv6Address("2001:db8::2").packed
    wire = v2(0x21, 0x21, src + dst + struct.pack("!HH", 1, 65535))
    header = parse_three_ways(wire)
    assert header.family is Family.TCP6
    assert header.source == ("2001:db8::1", 1)
    assert header.destination == ("2001:db8::2", 65535)
    assert header.length == 16 + 36


def test_v2_tcp6_mapped_ipv4_reads_as_dotted_quad() -> None:
    mapped = ipaddress.IPv6Address("::ffff:192.0.2.1").packed
    header = parse_three_ways(v2(0x21, 0x21, mapped + mapped + struct.pack("!HH", 1, 2)))
    assert header.source == ("::ffff:192.0.2.1", 1)


def unix_field(path: bytes) -> bytes:
    return path.ljust(108, b"\0")


def test_v2_unix_paths_are_nul_stripped() -> None:
    wire = v2(0x21, 0x31, unix_field(b"/run/client.sock") + unix_field(b"/run/revproxy.sock"))
    header = parse_three_ways(wire)
    assert header.family is Family.UNIX
    assert header.source == ("/run/client.sock", 0)
    assert header.destination == ("/run/revproxy.sock", 0)
    assert header.length == 16 + 216


def test_v2_unix_path_ends_at_its_first_nul() -> None:
    field = b"/run/a.sock\0garbage left by the sender".ljust(108, b"\xaa")
    header = parse_three_ways(v2(0x21, 0x31, field + unix_field(b"")))
    assert header.source == ("/run/a.sock", 0)
    assert header.destination == ("", 0)


def test_v2_unix_abstract_name_keeps_its_leading_nul() -> None:
    header = parse_three_ways(v2(0x21, 0x31, unix_field(b"\0hidden") + unix_field(b"/x")))
    assert header.source == ("\0hidden", 0)


def test_v2_unix_path_of_108_bytes_without_nul() -> None:
    path = b"/" + b"p" * 107
    header = parse_three_ways(v2(0x21, 0x31, path + path))
    assert header.source == (path.decode(), 0)


def test_v2_unix_undecodable_path_is_escaped_like_the_socket_module() -> None:
    header = parse_three_ways(v2(0x21, 0x31, unix_field(b"/\xff") + unix_field(b"/x")))
    assert header.source == ("/\udcff", 0)


def test_v2_proxy_unspec_with_no_addresses() -> None:
    header = parse_three_ways(v2(0x21, 0x00, b""))
    assert header.command is Command.PROXY
    assert header.family is Family.UNSPEC
    assert header.source is None and header.destination is None


@pytest.mark.parametrize(("fam", "size"), [(0x12, 12), (0x22, 36), (0x32, 216)])
def test_v2_datagram_falls_back_to_unspec_but_its_block_is_skipped(fam: int, size: int) -> None:
    wire = v2(0x21, fam, b"\x07" * size + tlv(PP2_TYPE_AUTHORITY, b"example.com"))
    header = parse_three_ways(wire)
    assert header.family is Family.UNSPEC
    assert header.source is None
    assert header.authority == "example.com"


def test_v2_local_as_a_health_check_sends_it() -> None:
    wire = V2_SIGNATURE + b"\x20\x00\x00\x00"
    assert build_local_v2() == wire
    header = parse_three_ways(wire)
    assert header == ProxyHeader(
        version=2,
        command=Command.LOCAL,
        family=Family.UNSPEC,
        source=None,
        destination=None,
        length=16,
    )


def test_v2_local_discards_the_addresses_it_carries() -> None:
    header = parse_three_ways(v2(0x20, 0x11, TCP4_BLOCK + tlv(PP2_TYPE_UNIQUE_ID, b"id")))
    assert header.command is Command.LOCAL
    assert header.family is Family.UNSPEC
    assert header.source is None and header.destination is None
    assert header.unique_id == b"id"
    assert header.length == 16 + 12 + 5


def test_v2_local_with_a_family_but_no_addresses_is_accepted() -> None:
    # Section 2.2: "must not assume zero is presented for LOCAL connections" -- nor more.
    header = parse_three_ways(v2(0x20, 0x11, b""))
    assert header.command is Command.LOCAL and header.family is Family.UNSPEC
    header = parse_three_ways(v2(0x20, 0x21, b"\x01" * 5))
    assert header.tlvs == ()
    assert header.length == 21


# --- v2: TLVs ------------------------------------------------------------------------------


def test_v2_alpn_authority_unique_id() -> None:
    body = (
        TCP4_BLOCK
        + tlv(PP2_TYPE_ALPN, b"h2")
        + tlv(PP2_TYPE_AUTHORITY, "bücher.example".encode())
        + tlv(PP2_TYPE_UNIQUE_ID, b"\x00\x01\x02")
    )
    header = parse_three_ways(v2(0x21, 0x11, body))
    assert header.alpn == b"h2"
    assert header.authority == "bücher.example"
    assert header.unique_id == b"\x00\x01\x02"
    assert header.tlvs == (
        (PP2_TYPE_ALPN, b"h2"),
        (PP2_TYPE_AUTHORITY, "bücher.example".encode()),
        (PP2_TYPE_UNIQUE_ID, b"\x00\x01\x02"),
    )


def test_v2_unique_id_may_be_128_bytes() -> None:
    header = parse_three_ways(v2(0x21, 0x11, TCP4_BLOCK + tlv(PP2_TYPE_UNIQUE_ID, b"u" * 128)))
    assert header.unique_id == b"u" * 128


def test_v2_noop_may_repeat_and_be_empty() -> None:
    body = TCP4_BLOCK + tlv(PP2_TYPE_NOOP, b"") + tlv(PP2_TYPE_NOOP, b"\0\0\0")
    header = parse_three_ways(v2(0x21, 0x11, body))
    assert header.tlvs == ((PP2_TYPE_NOOP, b""), (PP2_TYPE_NOOP, b"\0\0\0"))


def test_v2_netns() -> None:
    header = parse_three_ways(v2(0x21, 0x11, TCP4_BLOCK + tlv(PP2_TYPE_NETNS, b"blue")))
    assert header.netns == "blue"


def test_v2_aws_vpc_endpoint_id() -> None:
    body = TCP4_BLOCK + tlv(PP2_TYPE_AWS, b"\x01vpce-08d2bf15fac5001c9")
    header = parse_three_ways(v2(0x21, 0x11, body))
    assert header.aws_vpce_id == "vpce-08d2bf15fac5001c9"


def test_v2_aws_tlv_of_another_subtype_is_kept_raw() -> None:
    header = parse_three_ways(v2(0x21, 0x11, TCP4_BLOCK + tlv(PP2_TYPE_AWS, b"\x02xyz")))
    assert header.aws_vpce_id is None
    assert header.tlvs == ((PP2_TYPE_AWS, b"\x02xyz"),)


@pytest.mark.parametrize("tlv_type", [0x06, 0x1F, 0x26, 0x31, 0xE0, 0xEF, 0xF0, 0xF8, 0xFF])
def test_v2_unknown_and_reserved_types_are_kept_raw(tlv_type: int) -> None:
    body = TCP4_BLOCK + tlv(tlv_type, b"opaque") + tlv(tlv_type, b"twice")
    header = parse_three_ways(v2(0x21, 0x11, body))
    assert header.tlvs == ((tlv_type, b"opaque"), (tlv_type, b"twice"))


def ssl_value(client: int, verify: int, subs: bytes) -> bytes:
    return struct.pack("!BI", client, verify) + subs


def test_v2_ssl_with_every_subtype() -> None:
    subs = (
        tlv(0x21, b"TLSv1.3")
        + tlv(0x22, "Zoë Client".encode())
        + tlv(0x23, b"TLS_AES_128_GCM_SHA256")
        + tlv(0x24, b"RSA-SHA256")
        + tlv(0x25, b"RSA2048")
        + tlv(0x2F, b"unknown sub-TLV")
    )
    value = ssl_value(pp.PP2_CLIENT_SSL | pp.PP2_CLIENT_CERT_CONN, 0, subs)
    header = parse_three_ways(v2(0x21, 0x11, TCP4_BLOCK + tlv(PP2_TYPE_SSL, value)))
    assert header.ssl == SSLInfo(
        client=0x03,
        verify=0,
        version="TLSv1.3",
        cn="Zoë Client",
        cipher="TLS_AES_128_GCM_SHA256",
        sig_alg="RSA-SHA256",
        key_alg="RSA2048",
        tlvs=(
            (0x21, b"TLSv1.3"),
            (0x22, "Zoë Client".encode()),
            (0x23, b"TLS_AES_128_GCM_SHA256"),
            (0x24, b"RSA-SHA256"),
            (0x25, b"RSA2048"),
            (0x2F, b"unknown sub-TLV"),
        ),
    )
    assert header.ssl.client_ssl and header.ssl.client_cert_conn
    assert not header.ssl.client_cert_sess


def test_v2_ssl_without_sub_tlvs() -> None:
    value = ssl_value(pp.PP2_CLIENT_CERT_SESS, 0x12345678, b"")
    header = parse_three_ways(v2(0x21, 0x11, TCP4_BLOCK + tlv(PP2_TYPE_SSL, value)))
    assert header.ssl == SSLInfo(client=0x04, verify=0x12345678)
    assert header.ssl.client_cert_sess and not header.ssl.client_ssl


def test_v2_tlvs_after_unspec_and_unix_blocks() -> None:
    header = parse_three_ways(v2(0x21, 0x00, tlv(PP2_TYPE_ALPN, b"http/1.1")))
    assert header.alpn == b"http/1.1"
    block = unix_field(b"/a") + unix_field(b"/b")
    header = parse_three_ways(v2(0x21, 0x31, block + tlv(PP2_TYPE_NETNS, b"ns")))
    assert header.netns == "ns"


# --- CRC32C --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "crc"),
    [
        (b"", 0x00000000),
        (b"123456789", 0xE3069283),
        # RFC 3720 appendix B.4 (iSCSI) test vectors.
        (b"\x00" * 32, 0x8A9136AA),
        (b"\xff" * 32, 0x62A8AB43),
        (bytes(range(32)), 0x46DD794E),
        (bytes(range(31, -1, -1)), 0x113FDB5C),
    ],
)
def test_castagnoli_crc32_known_answers(data: bytes, crc: int) -> None:
    assert castagnoli_crc32(data) == crc


def test_v2_crc32c_is_checked_with_its_field_zeroed() -> None:
    wire = with_crc(v2(0x21, 0x11, TCP4_BLOCK + tlv(PP2_TYPE_CRC32C, b"\0\0\0\0")))
    header = parse_three_ways(wire)
    assert header.tlvs == ((PP2_TYPE_CRC32C, wire[-4:]),)
    assert build_v2(("192.0.2.1", 56324), ("198.51.100.7", 443), crc32c=True) == wire


def test_v2_crc32c_anywhere_among_the_tlvs() -> None:
    body = TCP4_BLOCK + tlv(PP2_TYPE_CRC32C, b"\0\0\0\0") + tlv(PP2_TYPE_ALPN, b"h2")
    zeroed = v2(0x21, 0x11, body)
    at = 16 + 12 + 3
    crc = struct.pack("!I", castagnoli_crc32(zeroed))
    wire = zeroed[:at] + crc + zeroed[at + 4 :]
    header = parse_three_ways(wire)
    assert header.alpn == b"h2"


def test_v2_crc32c_on_a_local_header() -> None:
    wire = with_crc(v2(0x20, 0x00, tlv(PP2_TYPE_CRC32C, b"\0\0\0\0")))
    assert parse_three_ways(wire).command is Command.LOCAL


def test_v2_crc32c_mismatch() -> None:
    good = with_crc(v2(0x21, 0x11, TCP4_BLOCK + tlv(PP2_TYPE_CRC32C, b"\0\0\0\0")))
    spoofed = good[:16] + b"\x0a" + good[17:]  # another source address, same checksum
    reject(spoofed, "CRC32C mismatch: header says 0x")
    reject(good[:-1] + bytes([good[-1] ^ 1]), "CRC32C mismatch")


@pytest.mark.parametrize("size", [0, 3, 5])
def test_v2_crc32c_of_the_wrong_size(size: int) -> None:
    reject(v2(0x21, 0x00, tlv(PP2_TYPE_CRC32C, b"\0" * size)), f"is {size} bytes long instead of 4")


# --- v2: errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        (v2(0x11, 0x11, TCP4_BLOCK), "version 1 is not 2"),
        (v2(0x31, 0x11, TCP4_BLOCK), "version 3 is not 2"),
        (v2(0x01, 0x00, b""), "version 0 is not 2"),
        (v2(0x22, 0x11, TCP4_BLOCK), "command 0x2 is neither LOCAL nor PROXY"),
        (v2(0x2F, 0x11, TCP4_BLOCK), "command 0xf"),
        (v2(0x21, 0x41, TCP4_BLOCK), "address family 0x4 is not defined"),
        (v2(0x21, 0xF1, TCP4_BLOCK), "address family 0xf"),
        (v2(0x21, 0x13, TCP4_BLOCK), "transport protocol 0x3 is not defined"),
        (v2(0x21, 0x10, TCP4_BLOCK), r"0x10 \(INET over UNSPEC\) is not a valid combination"),
        (v2(0x21, 0x20, b""), r"0x20 \(INET6 over UNSPEC\)"),
        (v2(0x21, 0x30, b""), r"0x30 \(UNIX over UNSPEC\)"),
        (v2(0x21, 0x01, b""), r"0x01 \(UNSPEC over STREAM\)"),
        (v2(0x21, 0x02, b""), r"0x02 \(UNSPEC over DGRAM\)"),
        (v2(0x21, 0x11, TCP4_BLOCK[:11]), "length 11 is too short for the 12-byte address"),
        (v2(0x21, 0x11, b""), "length 0 is too short"),
        (v2(0x21, 0x21, b"\0" * 35), "length 35 is too short for the 36-byte"),
        (v2(0x21, 0x31, b"\0" * 215), "length 215 is too short for the 216-byte"),
        (v2(0x21, 0x12, b"\0" * 4), "length 4 is too short"),
        (v2(0x21, 0x00, b"\x01"), "1 stray bytes where a TLV header"),
        (v2(0x21, 0x11, TCP4_BLOCK + b"\x01\x00"), "2 stray bytes"),
        (v2(0x21, 0x11, TCP4_BLOCK + b"\x01\x00\x05ab"), "TLV 0x01 of length 5 overruns"),
        (v2(0x21, 0x00, b"\xe0\xff\xff"), "TLV 0xe0 of length 65535 overruns its block by"),
        (
            v2(0x21, 0x00, tlv(PP2_TYPE_ALPN, b"h2") + tlv(PP2_TYPE_ALPN, b"h2")),
            "the ALPN TLV appears more than once",
        ),
        (
            v2(0x21, 0x00, tlv(PP2_TYPE_AUTHORITY, b"a") + tlv(PP2_TYPE_AUTHORITY, b"b")),
            "AUTHORITY TLV appears more than once",
        ),
        (v2(0x21, 0x00, tlv(PP2_TYPE_AUTHORITY, b"\xff")), "AUTHORITY is not valid utf-8"),
        (v2(0x21, 0x00, tlv(PP2_TYPE_UNIQUE_ID, b"u" * 129)), "UNIQUE_ID of 129 bytes"),
        (
            v2(0x21, 0x00, tlv(PP2_TYPE_UNIQUE_ID, b"") * 2),
            "UNIQUE_ID TLV appears more than once",
        ),
        (v2(0x21, 0x00, tlv(PP2_TYPE_NETNS, b"bl\xfce")), "NETNS is not valid ascii"),
        (v2(0x21, 0x00, tlv(PP2_TYPE_NETNS, b"a") * 2), "NETNS TLV appears more than once"),
        (v2(0x21, 0x00, tlv(PP2_TYPE_AWS, b"")), "AWS TLV 0xea has no subtype byte"),
        (
            v2(0x21, 0x00, tlv(PP2_TYPE_AWS, b"\x01\xff")),
            "AWS VPC endpoint ID is not valid ascii",
        ),
        (
            v2(0x21, 0x00, tlv(PP2_TYPE_AWS, b"\x01a") + tlv(PP2_TYPE_AWS, b"\x01b")),
            "AWS VPC endpoint ID TLV appears more than once",
        ),
        (v2(0x21, 0x00, tlv(PP2_TYPE_SSL, b"\x01\0\0\0")), "SSL TLV of 4 bytes is shorter"),
        (
            v2(0x21, 0x00, tlv(PP2_TYPE_SSL, ssl_value(1, 0, b"\x21\x00\x09TLS"))),
            "SSL sub-TLV 0x21 of length 9 overruns",
        ),
        (
            v2(0x21, 0x00, tlv(PP2_TYPE_SSL, ssl_value(1, 0, b"\x21"))),
            "1 stray bytes where a SSL sub-TLV header",
        ),
        (
            v2(0x21, 0x00, tlv(PP2_TYPE_SSL, ssl_value(1, 0, tlv(0x23, b"a") * 2))),
            "the SSL cipher sub-TLV appears more than once",
        ),
        (
            v2(0x21, 0x00, tlv(PP2_TYPE_SSL, ssl_value(1, 0, tlv(0x22, b"\xc3")))),
            "SSL cn is not valid utf-8",
        ),
        (
            v2(0x21, 0x00, tlv(PP2_TYPE_SSL, ssl_value(1, 0, tlv(0x21, b"TLS\x80")))),
            "SSL version is not valid ascii",
        ),
        (
            v2(0x21, 0x00, tlv(PP2_TYPE_SSL, ssl_value(1, 0, b"")) * 2),
            "the SSL TLV appears more than once",
        ),
    ],
)
def test_v2_rejects(wire: bytes, match: str) -> None:
    reject(wire, match)


@pytest.mark.parametrize(
    ("prefix", "match"),
    [
        (V2_SIGNATURE + b"\x11", "version 1 is not 2"),
        (V2_SIGNATURE + b"\x23", "command 0x3"),
        (V2_SIGNATURE + b"\x21\x51", "address family 0x5"),
        (V2_SIGNATURE + b"\x21\x11\x00\x0b", "length 11 is too short"),
        (V2_SIGNATURE + b"\x21\x11\x10\x00", "header of 4112 bytes is larger than the limit"),
    ],
)
def test_v2_errors_are_reported_as_soon_as_they_can_be_seen(prefix: bytes, match: str) -> None:
    for end in range(len(prefix)):
        assert parse(prefix[:end]) is None
    with pytest.raises(ProxyProtocolError, match=match):
        parse(prefix)


def test_v2_max_size() -> None:
    big = v2(0x21, 0x00, tlv(PP2_TYPE_NOOP, b"\0" * 5000))
    reject(big, "header of 5019 bytes is larger than the limit of 4096")
    assert parse_three_ways(big, max_size=MAX_V2).length == 5019
    reject(
        v2(0x21, 0x11, TCP4_BLOCK), "header of 28 bytes is larger than the limit of 27", max_size=27
    )
    assert parse_three_ways(v2(0x21, 0x11, TCP4_BLOCK), max_size=28).length == 28


def test_v2_largest_header() -> None:
    wire = v2(0x21, 0x00, tlv(PP2_TYPE_NOOP, b"\0" * (0xFFFF - 3)))
    assert len(wire) == MAX_V2
    header = parse(wire + PAYLOAD, max_size=MAX_V2)
    assert header is not None and header.length == MAX_V2
    assert parse(wire[:-1], max_size=MAX_V2) is None


# --- building ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "destination", "wire"),
    [
        (
            ("192.168.0.1", 56324),
            ("192.168.0.11", 443),
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
        ),
        (("2001:db8::1", 1), ("::1", 2), b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n"),
        (("192.0.2.1", 1), ("::1", 2), b"PROXY TCP6 ::ffff:192.0.2.1 ::1 1 2\r\n"),
        (("::1", 1), ("192.0.2.1", 2), b"PROXY TCP6 ::1 ::ffff:192.0.2.1 1 2\r\n"),
        (("fe80::1%eth0", 1), ("fe80::2", 2), b"PROXY TCP6 fe80::1 fe80::2 1 2\r\n"),
        (("2001:DB8:0::1", 0), ("::", 65535), b"PROXY TCP6 2001:db8::1 :: 0 65535\r\n"),
        (None, None, b"PROXY UNKNOWN\r\n"),
    ],
)
def test_build_v1(
    source: tuple[str, int] | None, destination: tuple[str, int] | None, wire: bytes
) -> None:
    assert build_v1(source, destination) == wire
    parse_three_ways(wire)


@pytest.mark.parametrize(
    ("source", "destination", "match"),
    [
        (("1.2.3.4", 1), None, "both addresses or neither"),
        (None, ("1.2.3.4", 1), "both addresses or neither"),
        (("example.com", 1), ("1.2.3.4", 1), "'example.com' is not an IP address"),
        (("1.2.3.4", 65536), ("1.2.3.4", 1), "port 65536 of '1.2.3.4' is not 0-65535"),
        (("1.2.3.4", 1), ("1.2.3.4", -1), "port -1"),
        (("/run/a.sock", 0), ("/run/b.sock", 0), "'/run/a.sock' is not an IP address"),
    ],
)
def test_build_v1_refuses(
    source: tuple[str, int] | None, destination: tuple[str, int] | None, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        build_v1(source, destination)


def test_build_v2_tcp6_mixed_families_map_ipv4() -> None:
    wire = build_v2(("192.0.2.1", 1), ("2001:db8::1", 2))
    assert wire[13] == 0x21
    assert wire[16:32] == ipaddress.IPv6Address("::ffff:192.0.2.1").packed
    header = parse_three_ways(wire)
    assert header.source == ("::ffff:192.0.2.1", 1)
    assert header.destination == ("2001:db8::1", 2)


def test_build_v2_unix() -> None:
    wire = build_v2(("/run/client.sock", 0), ("\0abstract", 0))
    assert wire[12:16] == b"\x21\x31\x00\xd8"
    header = parse_three_ways(wire)
    assert header.source == ("/run/client.sock", 0)
    assert header.destination == ("\0abstract", 0)


def test_build_v2_proxy_without_addresses_is_unspec() -> None:
    wire = build_v2(None, None, authority="example.com")
    assert wire[12:14] == b"\x21\x00"
    header = parse_three_ways(wire)
    assert header.family is Family.UNSPEC and header.authority == "example.com"


def test_build_v2_every_tlv_in_order() -> None:
    wire = build_v2(
        ("192.0.2.1", 1),
        ("192.0.2.2", 2),
        alpn=b"h2",
        authority="example.com",
        unique_id=b"\x01" * 128,
        crc32c=True,
        extra_tlvs=[(PP2_TYPE_NETNS, b"blue"), (PP2_TYPE_NOOP, b"")],
    )
    header = parse_three_ways(wire)
    assert [t for t, _ in header.tlvs] == [
        PP2_TYPE_ALPN,
        PP2_TYPE_AUTHORITY,
        PP2_TYPE_UNIQUE_ID,
        PP2_TYPE_NETNS,
        PP2_TYPE_NOOP,
        PP2_TYPE_CRC32C,
    ]
    assert header.alpn == b"h2"
    assert header.authority == "example.com"
    assert header.unique_id == b"\x01" * 128
    assert header.netns == "blue"


def test_build_v2_local_with_tlvs() -> None:
    wire = build_v2(None, None, command=Command.LOCAL, unique_id=b"hc", crc32c=True)
    header = parse_three_ways(wire)
    assert header.command is Command.LOCAL and header.unique_id == b"hc"


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((("1.2.3.4", 1), ("1.2.3.4", 2)), {"command": Command.LOCAL}, "LOCAL header carries no"),
        ((("1.2.3.4", 1), None), {}, "both addresses or neither"),
        ((None, None), {"unique_id": b"u" * 129}, "unique_id is 129 bytes; the limit is 128"),
        ((None, None), {"alpn": b"a" * 0x10000}, "value is 65536 bytes"),
        ((None, None), {"extra_tlvs": [(0xE0, b"a" * 0xFFF0)] * 2}, "a v2 header holds 65535"),
        ((None, None), {"extra_tlvs": [(PP2_TYPE_CRC32C, b"1234")]}, "crc32c=True"),
        ((None, None), {"extra_tlvs": [(256, b"")]}, "TLV type 256 is not a byte"),
        ((("/a", 1), ("/b", 0)), {}, "UNIX address '/a' has port 1; write 0"),
        ((("/a", 0), ("1.2.3.4", 0)), {}, "'/a' is a UNIX path but '1.2.3.4' is not"),
        ((("1.2.3.4", 0), ("/a", 0)), {}, "'/a' is not an IP address"),
        ((("/" + "p" * 108, 0), ("/b", 0)), {}, "is 109 bytes; the limit is 108"),
        ((("example.com", 80), ("1.2.3.4", 2)), {}, "'example.com' is not an IP address"),
    ],
)
def test_build_v2_refuses(
    args: tuple[object, object], kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        build_v2(*args, **kwargs)  # type: ignore[arg-type]


def test_build_v2_largest_body() -> None:
    wire = build_v2(None, None, extra_tlvs=[(PP2_TYPE_NOOP, b"\0" * (0xFFFF - 3))])
    assert len(wire) == MAX_V2
    assert parse(wire, max_size=MAX_V2) is not None


# --- properties ----------------------------------------------------------------------------

ports = st.integers(0, 0xFFFF)
ipv4 = st.ip_addresses(v=4)
ipv6 = st.ip_addresses(v=6)
ips = ipv4 | ipv6
_DECODED = {
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_CRC32C,
    PP2_TYPE_UNIQUE_ID,
    PP2_TYPE_SSL,
    PP2_TYPE_NETNS,
    PP2_TYPE_AWS,
}
raw_tlvs = st.lists(
    st.tuples(st.integers(0, 255).filter(lambda t: t not in _DECODED), st.binary(max_size=40)),
    max_size=6,
)
texts = st.text(st.characters(codec="utf-8"), max_size=40)


def expected_pair(
    a: ipaddress.IPv4Address | ipaddress.IPv6Address,
    b: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
    if a.version == b.version:
        return a, b
    return tuple(ipaddress.IPv6Address(f"::ffff:{x}") if x.version == 4 else x for x in (a, b))


@given(ips, ips, ports, ports)
def test_v1_round_trip(
    src: ipaddress.IPv4Address | ipaddress.IPv6Address,
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address,
    sport: int,
    dport: int,
) -> None:
    header = parse_three_ways(build_v1((str(src), sport), (str(dst), dport)))
    want_src, want_dst = expected_pair(src, dst)
    assert header.family is (Family.TCP4 if want_src.version == 4 else Family.TCP6)
    assert header.source is not None and header.destination is not None
    assert ipaddress.ip_address(header.source[0]) == want_src
    assert ipaddress.ip_address(header.destination[0]) == want_dst
    assert (header.source[1], header.destination[1]) == (sport, dport)
    assert header.length <= MAX_V1


@settings(max_examples=200)
@given(
    ips,
    ips,
    ports,
    ports,
    st.none() | st.binary(max_size=20),
    st.none() | texts,
    st.none() | st.binary(max_size=128),
    st.booleans(),
    raw_tlvs,
)
def test_v2_round_trip(
    src: ipaddress.IPv4Address | ipaddress.IPv6Address,
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address,
    sport: int,
    dport: int,
    alpn: bytes | None,
    authority: str | None,
    unique_id: bytes | None,
    crc32c: bool,
    extra: list[tuple[int, bytes]],
) -> None:
    wire = build_v2(
        (str(src), sport),
        (str(dst), dport),
        alpn=alpn,
        authority=authority,
        unique_id=unique_id,
        crc32c=crc32c,
        extra_tlvs=extra,
    )
    header = parse_three_ways(wire)
    want_src, want_dst = expected_pair(src, dst)
    assert header.version == 2 and header.command is Command.PROXY
    assert header.source is not None and header.destination is not None
    assert ipaddress.ip_address(header.source[0]) == want_src
    assert ipaddress.ip_address(header.destination[0]) == want_dst
    assert (header.source[1], header.destination[1]) == (sport, dport)
    assert (header.alpn, header.authority, header.unique_id) == (alpn, authority, unique_id)
    raw = [(t, v) for t, v in header.tlvs if t != PP2_TYPE_CRC32C]
    named = [
        (t, v)
        for t, v in [
            (PP2_TYPE_ALPN, alpn),
            (PP2_TYPE_AUTHORITY, None if authority is None else authority.encode()),
            (PP2_TYPE_UNIQUE_ID, unique_id),
        ]
        if v is not None
    ]
    assert raw == named + extra
    crc_last = bool(header.tlvs) and header.tlvs[-1][0] == PP2_TYPE_CRC32C
    assert crc_last is crc32c


unix_paths = (
    st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=30)
    .map(lambda s: "/" + s)
    .filter(lambda s: len(s.encode()) <= 108)
)


@given(unix_paths, unix_paths, raw_tlvs)
def test_v2_unix_round_trip(src: str, dst: str, extra: list[tuple[int, bytes]]) -> None:
    header = parse_three_ways(build_v2((src, 0), (dst, 0), extra_tlvs=extra))
    assert header.family is Family.UNIX
    assert header.source == (src, 0) and header.destination == (dst, 0)
    assert list(header.tlvs) == extra


ssl_strings = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30)


@given(
    st.integers(0, 7),
    st.integers(0, 0xFFFFFFFF),
    st.dictionaries(st.sampled_from([0x21, 0x22, 0x23, 0x24, 0x25]), ssl_strings),
)
def test_v2_ssl_round_trip(client: int, verify: int, subs: dict[int, str]) -> None:
    value = ssl_value(client, verify, b"".join(tlv(t, s.encode()) for t, s in subs.items()))
    header = parse_three_ways(build_v2(None, None, extra_tlvs=[(PP2_TYPE_SSL, value)]))
    assert header.ssl is not None
    assert (header.ssl.client, header.ssl.verify) == (client, verify)
    assert header.ssl.version == subs.get(0x21)
    assert header.ssl.cn == subs.get(0x22)
    assert header.ssl.cipher == subs.get(0x23)
    assert header.ssl.sig_alg == subs.get(0x24)
    assert header.ssl.key_alg == subs.get(0x25)


def _valid_headers() -> st.SearchStrategy[bytes]:
    return st.builds(
        lambda s, d, sp, dp, a, extra, crc: build_v2(
            (str(s), sp), (str(d), dp), alpn=a, extra_tlvs=extra, crc32c=crc
        ),
        ips,
        ips,
        ports,
        ports,
        st.none() | st.binary(max_size=8),
        raw_tlvs,
        st.booleans(),
    ) | st.builds(lambda s, d, sp, dp: build_v1((str(s), sp), (str(d), dp)), ips, ips, ports, ports)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    wire = bytearray(draw(_valid_headers()))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(wire) - 1))
        wire[at] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(wire)))
    return bytes(wire[:cut]) + draw(st.binary(max_size=16))


arbitrary = (
    st.binary(max_size=300)
    | st.binary(max_size=300).map(lambda b: b"PROXY " + b)
    | st.binary(max_size=300).map(lambda b: V2_SIGNATURE + b)
    | st.binary(max_size=300).map(lambda b: V2_SIGNATURE + b"\x21" + b)
    | mutated()
)


@settings(max_examples=500)
@given(arbitrary, st.sampled_from([16, 64, pp.DEFAULT_MAX_SIZE, MAX_V2]))
@example(V2_SIGNATURE + b"\x21\x11\x00\x0c" + b"\0" * 12, 4096)
@example(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", 16)
def test_parse_never_raises_anything_else(data: bytes, max_size: int) -> None:
    try:
        header = parse(data, max_size=max_size)
    except ProxyProtocolError:
        return
    if header is None:
        assert detect(data) in ("need_more", "v1", "v2")
        return
    assert 0 < header.length <= len(data)
    assert header.length <= max_size
    assert parse(data[: header.length], max_size=max_size) == header
