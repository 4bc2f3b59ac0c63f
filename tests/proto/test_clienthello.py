"""ClientHello peeking: real hellos from real clients, hand-built edge cases, fuzzing.

Every good hello is parsed three ways (whole, one byte at a time, with trailing bytes); bad
ones must raise ClientHelloError, and nothing may raise anything else.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from revproxy.errors import ClientHelloError, ClientProtocolError
from revproxy.proto.clienthello import (
    MAX_CLIENTHELLO,
    ClientHelloInfo,
    looks_like_tls,
    parse_client_hello,
)

TLS12 = 0x0303
TLS13 = 0x0304
# What a client might send right after its ClientHello: a TLS 1.3 early-data record, then junk.
TRAILING = b"\x17\x03\x03\x00\x05early" + b"GET / HTTP/1.1\r\n"


def parse_three_ways(data: bytes) -> ClientHelloInfo:
    """Parse whole, fed one byte at a time, and followed by more bytes; all must agree."""
    whole = parse_client_hello(data)
    assert whole is not None
    assert whole.length == len(data)
    for n in range(len(data)):
        assert parse_client_hello(data[:n]) is None, f"complete after only {n} bytes"
    assert parse_client_hello(data + TRAILING) == whole
    assert parse_client_hello(bytearray(data + b"\x16")) == whole
    assert parse_client_hello(memoryview(data + b"\x16\x03")) == whole
    return whole


def raises_early(data: bytes, match: str) -> None:
    """``data`` must be refused, and refused by the time its last byte arrives."""
    with pytest.raises(ClientHelloError, match=match):
        parse_client_hello(data)
    with pytest.raises(ClientHelloError, match=match):
        parse_client_hello(data + TRAILING)


# --- real hellos from real clients --------------------------------------------------------


def python_client_hello(
    server_hostname: str | None,
    *,
    alpn: Sequence[str] = (),
    maximum: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED,
) -> bytes:
    """The first flight of Python's ssl client, taken from its outgoing BIO (no network)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if server_hostname is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = maximum
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize("maximum", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_python_client_with_sni_and_alpn(maximum: ssl.TLSVersion) -> None:
    data = python_client_hello("WWW.Example.COM", alpn=["h2", "http/1.1"], maximum=maximum)
    info = parse_three_ways(data)
    assert info.server_name == "www.example.com"
    assert info.alpn == ("h2", "http/1.1")
    assert info.legacy_version == TLS12
    assert not info.has_ech
    if maximum is ssl.TLSVersion.TLSv1_3:
        assert info.supported_versions[0] == TLS13
        assert TLS12 in info.supported_versions
    else:
        assert TLS13 not in info.supported_versions


@pytest.mark.parametrize("maximum", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_python_client_without_sni_or_alpn(maximum: ssl.TLSVersion) -> None:
    info = parse_three_ways(python_client_hello(None, maximum=maximum))
    assert info.server_name is None
    assert info.alpn == ()


def test_python_client_max_size_is_inclusive() -> None:
    data = python_client_hello("example.com", alpn=["h2"])
    assert parse_client_hello(data, max_size=len(data)) is not None
    with pytest.raises(ClientHelloError, match="more than"):
        parse_client_hello(data, max_size=len(data) - 1)


def openssl_client_hello(args: Sequence[str]) -> bytes:
    """The first bytes ``openssl s_client`` sends to a local listening socket."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        port = listener.getsockname()[1]
        proc = subprocess.Popen(
            [openssl, "s_client", "-connect", f"127.0.0.1:{port}", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(10)
                data = b""
                while parse_client_hello(data) is None:
                    chunk = conn.recv(4096)
                    assert chunk, "openssl closed before its ClientHello was complete"
                    data += chunk
        finally:
            proc.kill()
            proc.wait(timeout=10)
    info = parse_client_hello(data)
    assert info is not None
    return data[: info.length]


def test_openssl_s_client_with_sni_and_alpn() -> None:
    data = openssl_client_hello(["-servername", "api.example.org", "-alpn", "h2,http/1.1"])
    info = parse_three_ways(data)
    assert info.server_name == "api.example.org"
    assert info.alpn == ("h2", "http/1.1")
    assert info.supported_versions[0] == TLS13


def test_openssl_s_client_tls12_without_sni() -> None:
    info = parse_three_ways(openssl_client_hello(["-noservername", "-tls1_2"]))
    assert info.server_name is None
    assert info.alpn == ()
    assert info.supported_versions == ()


# --- hand-built hellos --------------------------------------------------------------------


def grease(n: int) -> int:
    return (n << 12) | 0x0A00 | (n << 4) | 0x0A


def u(n: int, size: int) -> bytes:
    return n.to_bytes(size, "big")


class Lengths:
    """Length prefixes for a hand-built hello; any one can be overridden to lie."""

    def __init__(self, **overrides: int) -> None:
        self.overrides = overrides
        self.seen: dict[str, int] = {}

    def vec(self, name: str, size: int, data: bytes) -> bytes:
        self.seen[name] = len(data)
        return u(self.overrides.get(name, len(data)), size) + data


def extension(kind: int, data: bytes, lengths: Lengths | None = None, name: str = "") -> bytes:
    lengths = lengths or Lengths()
    return u(kind, 2) + lengths.vec(name or f"ext{kind}", 2, data)


def sni_extension(*entries: tuple[int, bytes], lengths: Lengths | None = None) -> bytes:
    lengths = lengths or Lengths()
    body = b"".join(bytes([kind]) + lengths.vec("sni_name", 2, name) for kind, name in entries)
    return extension(0, lengths.vec("sni_list", 2, body), lengths, "sni_ext")


def host(name: bytes) -> bytes:
    return sni_extension((0, name))


def alpn_extension(*names: bytes, lengths: Lengths | None = None) -> bytes:
    lengths = lengths or Lengths()
    body = b"".join(lengths.vec("alpn_name", 1, name) for name in names)
    return extension(16, lengths.vec("alpn_list", 2, body), lengths, "alpn_ext")


def versions_extension(*versions: int, lengths: Lengths | None = None) -> bytes:
    lengths = lengths or Lengths()
    body = b"".join(u(v, 2) for v in versions)
    return extension(43, lengths.vec("versions", 1, body), lengths, "versions_ext")


def hello_body(
    extensions: Sequence[bytes] | None = (),
    *,
    lengths: Lengths | None = None,
    suites: bytes = b"\x13\x01\x13\x02\xc0\x2f",
    session_id: bytes = b"",
) -> bytes:
    lengths = lengths or Lengths()
    body = (
        u(TLS12, 2)
        + bytes(range(32))
        + lengths.vec("session_id", 1, session_id)
        + lengths.vec("cipher_suites", 2, suites)
        + lengths.vec("compression", 1, b"\x00")
    )
    if extensions is not None:
        body += lengths.vec("extensions", 2, b"".join(extensions))
    return body


def handshake(body: bytes, *, kind: int = 1, declared: int | None = None) -> bytes:
    return bytes([kind]) + u(len(body) if declared is None else declared, 3) + body


def records(message: bytes, *sizes: int, version: bytes = b"\x03\x01") -> bytes:
    """Cut ``message`` into handshake records of the given sizes (the rest in a last one)."""
    out, pos = b"", 0
    for size in [*sizes, len(message)]:
        piece = message[pos : pos + size]
        pos += len(piece)
        if piece:
            out += b"\x16" + version + u(len(piece), 2) + piece
    return out


def client_hello(
    extensions: Sequence[bytes] | None = (),
    *,
    suites: bytes = b"\x13\x01\x13\x02\xc0\x2f",
    session_id: bytes = b"",
) -> bytes:
    return records(handshake(hello_body(extensions, suites=suites, session_id=session_id)))


TYPICAL = [
    host(b"shop.example.net"),
    alpn_extension(b"h2", b"http/1.1"),
    versions_extension(TLS13, TLS12),
    extension(10, u(4, 2) + u(0x001D, 2) + u(0x0017, 2)),  # supported_groups, skipped
]


def test_typical_hand_built_hello() -> None:
    info = parse_three_ways(client_hello(TYPICAL))
    assert info == ClientHelloInfo(
        server_name="shop.example.net",
        alpn=("h2", "http/1.1"),
        legacy_version=TLS12,
        supported_versions=(TLS13, TLS12),
        has_ech=False,
        length=info.length,
    )


@pytest.mark.parametrize(
    "sizes",
    [(1,), (2,), (3,), (4,), (5,), (40,), (1, 1), (3, 1, 1), (50, 30), (1, 100), (7, 7, 7)],
    ids=str,
)
def test_split_across_records(sizes: tuple[int, ...]) -> None:
    message = handshake(hello_body(TYPICAL))
    data = records(message, *sizes)
    assert data.count(b"\x16\x03\x01") >= len(sizes) + 1
    info = parse_three_ways(data)
    assert info.server_name == "shop.example.net"
    assert info.length == len(data)


def test_split_across_records_with_other_record_versions() -> None:
    message = handshake(hello_body(TYPICAL))
    data = records(message[:10], version=b"\x03\x00") + records(message[10:], version=b"\x03\x03")
    assert parse_three_ways(data).alpn == ("h2", "http/1.1")


def test_grease_everywhere() -> None:
    suites = u(grease(3), 2) + b"\x13\x01" + u(grease(11), 2)
    extensions = [
        extension(grease(0), b""),
        host(b"grease.example"),
        alpn_extension(u(grease(1), 2), b"h2", u(grease(2), 2), b"http/1.1"),
        versions_extension(grease(7), TLS13, TLS12),
        extension(10, u(4, 2) + u(grease(4), 2) + u(0x001D, 2)),
        extension(grease(15), b"\x00"),
    ]
    info = parse_three_ways(client_hello(extensions, suites=suites))
    assert info.server_name == "grease.example"
    assert info.alpn == ("h2", "http/1.1")
    assert info.supported_versions == (TLS13, TLS12)


def test_ech_outer_hello_routes_on_public_name() -> None:
    ech = extension(0xFE0D, b"\x00" + b"\x00\x01\x00\x01" + b"\x2a" + bytes(40))
    info = parse_three_ways(client_hello([host(b"public.example.com"), ech]))
    assert info.has_ech
    assert info.server_name == "public.example.com"


def test_no_extensions_at_all() -> None:
    info = parse_three_ways(client_hello(None))
    assert info == ClientHelloInfo(
        server_name=None,
        alpn=(),
        legacy_version=TLS12,
        supported_versions=(),
        has_ech=False,
        length=info.length,
    )


def test_empty_extensions_block() -> None:
    assert parse_three_ways(client_hello([])).server_name is None


def test_session_id_of_32_bytes() -> None:
    data = client_hello(TYPICAL, session_id=bytes(range(32)))
    assert parse_three_ways(data).server_name == "shop.example.net"


def test_unknown_extensions_and_name_types_are_skipped() -> None:
    extensions = [
        extension(0x7777, b"whatever"),
        sni_extension((5, b"\xff\xfe not a host"), (0, b"real.example")),
        extension(0x1234, b""),
    ]
    assert parse_three_ways(client_hello(extensions)).server_name == "real.example"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (b"Example.COM", "example.com"),
        (b"localhost", "localhost"),
        (b"xn--bcher-kva.example", "xn--bcher-kva.example"),
        (b"_acme.internal-host.example", "_acme.internal-host.example"),
        (b"a" * 63 + b".example", "a" * 63 + ".example"),
        (b"1.2.3.example", "1.2.3.example"),
    ],
)
def test_host_names_accepted(name: bytes, expected: str) -> None:
    assert parse_three_ways(client_hello([host(name)])).server_name == expected


@pytest.mark.parametrize(
    ("extension_bytes", "match"),
    [
        (host(b""), "empty"),
        (host(b"exa mple.com"), "characters"),
        (host(b"example.com\x00.evil"), "characters"),
        (host("bücher.example".encode()), "characters"),
        (host(b"[::1]"), "characters"),
        (host(b"example.com."), "ends with a dot"),
        (host(b"a..example"), "empty or over-long label"),
        (host(b".example"), "empty or over-long label"),
        (host(b"a" * 64 + b".example"), "empty or over-long label"),
        (host(b"a." * 127 + b"bb"), "more than 253"),
        (host(b"192.0.2.1"), "IPv4"),
        (sni_extension((0, b"one.example"), (0, b"two.example")), "two host_name"),
        (extension(0, b""), "server_name_list length"),
        (extension(0, b"\x00\x00"), "server_name_list is 0 bytes"),
        (extension(0, u(14, 2) + b"\x00" + u(11, 2) + b"one.example" + b"\x00"), "after"),
        (extension(16, b"\x00\x00"), "protocol_name_list is 0 bytes"),
        (extension(16, b"\x00\x02\x00\x00"), "ALPN protocol name is 0 bytes"),
        (extension(43, b"\x00"), "supported_versions is 0 bytes"),
        (extension(43, b"\x03\x03\x04\x03"), "odd"),
    ],
)
def test_malformed_extension_contents(extension_bytes: bytes, match: str) -> None:
    raises_early(client_hello([extension_bytes]), match)


def test_duplicate_extension() -> None:
    alpn = alpn_extension(b"h2")
    raises_early(client_hello([alpn, host(b"a.example"), alpn]), "two extensions of type 0x0010")
    raises_early(client_hello([extension(0x7777, b""), extension(0x7777, b"")]), "0x7777")


# Each length prefix of the hello, set beyond its container.
OVERRUNS = [
    ("session_id", 0xFF, "legacy_session_id"),
    ("cipher_suites", 0xFFFF, "cipher_suites"),
    ("compression", 0xFF, "legacy_compression_methods"),
    ("extensions", 0xFFFF, "extensions"),
    ("sni_ext", 0xFFFF, "extension 0x0000"),
    ("sni_list", 0xFFFF, "server_name_list"),
    ("sni_name", 0xFFFF, "server_name entry"),
    ("alpn_ext", 0xFFFF, "extension 0x0010"),
    ("alpn_list", 0xFFFF, "protocol_name_list"),
    ("alpn_name", 0xFF, "ALPN protocol name"),
    ("versions_ext", 0xFFFF, "extension 0x002b"),
    ("versions", 0xFF, "supported_versions"),
]


def hello_with_lengths(lengths: Lengths) -> bytes:
    extensions = [
        sni_extension((0, b"a.example"), lengths=lengths),
        alpn_extension(b"h2", lengths=lengths),
        versions_extension(TLS13, lengths=lengths),
    ]
    return records(handshake(hello_body(extensions, lengths=lengths)))


@pytest.mark.parametrize(("field", "value", "match"), OVERRUNS, ids=[o[0] for o in OVERRUNS])
def test_length_field_overruns_its_container(field: str, value: int, match: str) -> None:
    raises_early(hello_with_lengths(Lengths(**{field: value})), f"{match}.*container")


@pytest.mark.parametrize("delta", [1, -1])
@pytest.mark.parametrize("field", [o[0] for o in OVERRUNS])
def test_length_field_off_by_one(field: str, delta: int) -> None:
    honest = Lengths()
    hello_with_lengths(honest)
    lying = honest.seen[field] + delta
    if lying < 0:
        pytest.skip(f"{field} is empty; it cannot be one shorter")
    with pytest.raises(ClientHelloError):
        parse_client_hello(hello_with_lengths(Lengths(**{field: lying})))


def test_handshake_length_shorter_than_its_body() -> None:
    body = hello_body(TYPICAL)
    raises_early(records(handshake(body, declared=len(body) - 3)), "follow the ClientHello")


def test_handshake_length_longer_than_its_body_needs_more() -> None:
    body = hello_body(TYPICAL)
    data = records(handshake(body, declared=len(body) + 3))
    assert parse_client_hello(data) is None
    # ...and when the missing bytes come, they are past the extensions block.
    raises_early(data + records(b"abc"), "after its last element")


def test_bytes_after_the_extensions_block() -> None:
    raises_early(records(handshake(hello_body(TYPICAL) + b"\x00")), "after its last element")


def test_body_too_short_for_its_fixed_fields() -> None:
    raises_early(records(handshake(b"\x03\x03" + bytes(10))), "random needs 32 bytes")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"session_id": bytes(33)}, "more than 32"),
        ({"suites": b""}, "cipher_suites is 0 bytes"),
        ({"suites": b"\x13\x01\x13"}, "odd"),
    ],
)
def test_malformed_fixed_fields(kwargs: dict[str, bytes], match: str) -> None:
    raises_early(client_hello(TYPICAL, **kwargs), match)


def test_no_compression_methods() -> None:
    raises_early(records(handshake(hello_body(None, lengths=Lengths(compression=0))[:-1])), "0 b")


# --- not a ClientHello at all -------------------------------------------------------------


def test_plain_http_is_refused_on_its_first_byte() -> None:
    for data in (b"G", b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"):
        with pytest.raises(ClientHelloError, match=r"not TLS.*plain text"):
            parse_client_hello(data)


def test_clienthello_error_is_the_clients_fault() -> None:
    with pytest.raises(ClientProtocolError) as caught:
        parse_client_hello(b"GET / HTTP/1.1\r\n")
    assert caught.value.status == 400


@pytest.mark.parametrize(
    "data",
    [
        b"\x80\x2e\x01\x03\x01\x00\x15\x00\x00\x00\x10",  # SSLv2-compatible CLIENT-HELLO
        b"\x80",
        b"\xff\xff",
    ],
)
def test_sslv2_hello(data: bytes) -> None:
    with pytest.raises(ClientHelloError, match="SSLv2 hello not supported"):
        parse_client_hello(data)


@pytest.mark.parametrize("first", [0x14, 0x15, 0x17, 0x00, 0x01])
def test_other_record_type_first(first: int) -> None:
    with pytest.raises(ClientHelloError, match="not TLS"):
        parse_client_hello(bytes([first, 3, 1, 0, 2, 2, 40]))


@pytest.mark.parametrize("version", [b"\x02\x00", b"\x00\x03", b"\x04\x01", b"\xfe\xfd"])
def test_record_version_not_03(version: bytes) -> None:
    data = records(handshake(hello_body(TYPICAL)), version=version)
    with pytest.raises(ClientHelloError, match="record version"):
        parse_client_hello(data[:2])


def test_record_version_not_03_in_a_later_record() -> None:
    message = handshake(hello_body(TYPICAL))
    data = records(message[:20]) + records(message[20:], version=b"\x01\x00")
    raises_early(data, "record version")


def test_handshake_message_not_client_hello() -> None:
    data = records(handshake(hello_body(TYPICAL), kind=2))  # a ServerHello
    with pytest.raises(ClientHelloError, match="type 2 is not ClientHello"):
        parse_client_hello(data[:6])


@pytest.mark.parametrize(("content_type", "name"), [(0x15, "alert"), (0x17, "application_data")])
def test_other_record_in_the_middle(content_type: int, name: str) -> None:
    message = handshake(hello_body(TYPICAL))
    other = bytes([content_type]) + b"\x03\x03\x00\x02\x02\x28"
    data = records(message[:30]) + other + records(message[30:])
    with pytest.raises(ClientHelloError, match=f"{name} record arrived in the middle"):
        parse_client_hello(data[: len(records(message[:30])) + 1])


def test_empty_handshake_record() -> None:
    data = b"\x16\x03\x01\x00\x00" + client_hello(TYPICAL)
    raises_early(data, "empty handshake record")


def test_record_longer_than_2_to_the_14() -> None:
    raises_early(b"\x16\x03\x01\x40\x01\x01", "more than 2\\^14")


def test_extra_handshake_bytes_after_the_client_hello_in_its_record() -> None:
    message = handshake(hello_body(TYPICAL))
    raises_early(records(message + b"\x14\x00\x00\x00"), "follow the ClientHello")


def test_oversize_declared_length_is_refused_before_the_bytes_arrive() -> None:
    header = b"\x16\x03\x01\x40\x00" + b"\x01" + u(MAX_CLIENTHELLO, 3)
    with pytest.raises(ClientHelloError, match="more than"):
        parse_client_hello(header)
    assert parse_client_hello(header, max_size=MAX_CLIENTHELLO + 4) is None


def test_oversize_by_record_overhead() -> None:
    """Many small records cost 5 bytes each: the limit is on what the caller must buffer."""
    message = handshake(hello_body(TYPICAL))
    data = records(message, *([1] * 40))
    assert parse_client_hello(data, max_size=len(data)) is not None
    with pytest.raises(ClientHelloError, match="more than"):
        parse_client_hello(data, max_size=len(message) + 100)


def test_padded_hello_near_the_limit() -> None:
    padding = extension(21, bytes(3 * 16384))  # padding extension, three records' worth
    message = handshake(hello_body([host(b"big.example"), padding]))
    data = records(message, 16384, 16384, 16384)
    info = parse_client_hello(data)
    assert info is not None and info.server_name == "big.example"
    with pytest.raises(ClientHelloError, match="more than"):
        parse_client_hello(data, max_size=16384)


def test_looks_like_tls() -> None:
    assert looks_like_tls(0x16)
    for byte in (0x15, 0x17, ord("G"), ord("P"), 0x80, 0x00, 0xFF):
        assert not looks_like_tls(byte)
    assert looks_like_tls(python_client_hello("a.example")[0])


# --- fuzzing ------------------------------------------------------------------------------


def valid_hellos() -> Iterator[bytes]:
    yield python_client_hello("fuzz.example", alpn=["h2", "http/1.1"])
    yield client_hello(TYPICAL)
    yield records(handshake(hello_body(TYPICAL)), 3, 60)


VALID = list(valid_hellos())


def outcome(data: bytes) -> ClientHelloInfo | str | None:
    try:
        return parse_client_hello(data)
    except ClientHelloError as exc:
        return str(exc)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes(data: bytes) -> None:
    outcome(data)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_behind_a_handshake_record_header(payload: bytes) -> None:
    for prefix in (b"\x16\x03\x01", b"\x16\x03\x01" + u(len(payload), 2), b"\x16\x03\x01\x00"):
        outcome(prefix + payload)
        outcome(prefix + u(len(payload), 2) + b"\x01" + u(max(len(payload) - 4, 0), 3) + payload)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(VALID), st.data())
def test_mutated_valid_hello(hello: bytes, data: st.DataObject) -> None:
    mutated = bytearray(hello)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(mutated) - 1))
        mutated[at] = data.draw(st.integers(0, 255))
    outcome(bytes(mutated))
    outcome(bytes(mutated) + TRAILING)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(VALID), st.data())
def test_truncated_valid_hello_needs_more(hello: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(hello) - 1))
    assert parse_client_hello(hello[:cut]) is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 200), max_size=6))
def test_any_record_split_gives_the_same_answer(sizes: list[int]) -> None:
    message = handshake(hello_body(TYPICAL))
    data = records(message, *sizes)
    info = parse_client_hello(data)
    assert info is not None
    assert info.server_name == "shop.example.net"
    assert info.alpn == ("h2", "http/1.1")
    assert info.length == len(data)
    assert parse_client_hello(data[:-1]) is None
