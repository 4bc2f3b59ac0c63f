"""SOCKS5 server side, bytes in / bytes out: RFC 1928 greeting and CONNECT, RFC 1929
username/password, the refusals, whole / byte by byte / with trailing data, and a fuzz test
that arbitrary bytes only ever raise ``Socks5Error``."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from revproxy.proto.socks5 import (
    AuthRequested,
    ConnectRequested,
    Event,
    Reply,
    Socks5Error,
    Socks5Server,
)

GREETING_AUTH = b"\x05\x02\x00\x02"
AUTH = b"\x01\x03app\x06s3cret"
CONNECT_NAME = b"\x05\x01\x00\x03\x0bexample.com" + struct.pack(">H", 443)
CONNECT_V4 = b"\x05\x01\x00\x01" + socket.inet_aton("198.51.100.7") + struct.pack(">H", 5432)
CONNECT_V6 = b"\x05\x01\x00\x04" + socket.inet_pton(socket.AF_INET6, "2001:db8::1") + b"\x01\xbb"


def feed(server: Socks5Server, data: bytes, *, bytewise: bool) -> list[Event]:
    if not bytewise:
        return server.receive_data(data)
    out: list[Event] = []
    for i in range(len(data)):
        out += server.receive_data(data[i : i + 1])
    return out


@pytest.mark.parametrize("bytewise", [False, True])
def test_auth_then_connect_by_name(bytewise: bool) -> None:
    s = Socks5Server(require_auth=True)
    assert feed(s, GREETING_AUTH, bytewise=bytewise) == []
    assert s.data_to_send() == b"\x05\x02"
    assert feed(s, AUTH, bytewise=bytewise) == [AuthRequested(user="app", password="s3cret")]
    assert s.accept_auth(True) == []
    assert s.data_to_send() == b"\x01\x00"
    events = feed(s, CONNECT_NAME, bytewise=bytewise)
    assert events == [ConnectRequested(host="example.com", port=443, is_name=True)]
    s.reply(Reply.SUCCEEDED, ("203.0.113.7", 40000))
    assert s.data_to_send() == b"\x05\x00\x00\x01" + socket.inet_aton("203.0.113.7") + b"\x9c\x40"
    assert s.trailing_data == b""


def test_everything_at_once_with_trailing_data() -> None:
    s = Socks5Server(require_auth=True)
    events = s.receive_data(GREETING_AUTH + AUTH + CONNECT_V4 + b"early bytes")
    assert events == [AuthRequested(user="app", password="s3cret")]
    assert s.accept_auth(True) == [ConnectRequested(host="198.51.100.7", port=5432, is_name=False)]
    s.reply(Reply.SUCCEEDED)
    assert s.data_to_send() == b"\x05\x02\x01\x00\x05\x00\x00\x01" + bytes(6)
    assert s.trailing_data == b"early bytes"


def test_no_auth_and_ipv6() -> None:
    s = Socks5Server(require_auth=False)
    events = s.receive_data(b"\x05\x01\x00" + CONNECT_V6)
    assert s.data_to_send() == b"\x05\x00"
    assert events == [ConnectRequested(host="2001:db8::1", port=443, is_name=False)]
    s.reply(Reply.NOT_ALLOWED, ("::", 0))
    assert s.data_to_send()[:4] == b"\x05\x02\x00\x04"
    assert s.closed


def test_refusals_carry_their_reply() -> None:
    with pytest.raises(Socks5Error) as caught:
        Socks5Server(require_auth=True).receive_data(b"\x05\x01\x00")
    assert caught.value.reply == b"\x05\xff"
    s = Socks5Server(require_auth=False)
    with pytest.raises(Socks5Error) as caught:
        s.receive_data(b"\x05\x01\x00\x05\x03\x00\x01" + bytes(6))  # UDP ASSOCIATE
    assert caught.value.reply[:2] == b"\x05\x07"
    s = Socks5Server(require_auth=False)
    with pytest.raises(Socks5Error) as caught:
        s.receive_data(b"\x05\x01\x00\x05\x02\x00\x01" + bytes(6))  # BIND
    assert caught.value.reply[:2] == b"\x05\x07"
    s = Socks5Server(require_auth=False)
    with pytest.raises(Socks5Error) as caught:
        s.receive_data(b"\x05\x01\x00\x05\x01\x00\x09" + bytes(6))  # address type 9
    assert caught.value.reply[:2] == b"\x05\x08"
    with pytest.raises(Socks5Error):
        Socks5Server(require_auth=False).receive_data(b"\x04\x01\x00\x50")  # SOCKS4
    s = Socks5Server(require_auth=True)
    s.receive_data(GREETING_AUTH + AUTH)
    assert s.accept_auth(False) == []
    assert s.data_to_send() == b"\x05\x02\x01\x01"
    assert s.closed


def test_commands_out_of_turn() -> None:
    s = Socks5Server(require_auth=False)
    with pytest.raises(Socks5Error):
        s.reply(Reply.SUCCEEDED)
    with pytest.raises(Socks5Error):
        s.accept_auth(True)


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=700), st.booleans(), st.lists(st.integers(1, 50), max_size=20))
def test_fuzz_only_socks5_error(data: bytes, require_auth: bool, cuts: list[int]) -> None:
    s = Socks5Server(require_auth=require_auth)
    pos = 0
    try:
        for cut in [*cuts, len(data)]:
            for event in s.receive_data(data[pos : pos + cut]):
                if isinstance(event, AuthRequested):
                    s.accept_auth(True)
                else:
                    s.reply(Reply.SUCCEEDED)
            pos += cut
            s.data_to_send()
            if pos >= len(data):
                break
    except Socks5Error:
        pass
