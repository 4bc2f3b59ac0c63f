"""The egress-over-the-tunnel wire (proto/tunnel.py): the destination, the agent's request line
and the proxy's reply line — whole, cut short at every byte, and with hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from revproxy.proto.tunnel import (
    MAX_EGRESS_LINE,
    TunnelFormatError,
    decode_egress_reply,
    decode_egress_request,
    encode_egress_reply,
    encode_egress_request,
    parse_destination,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("db.example.com:5432", ("db.example.com", 5432)),
        ("DB.Example.COM:1", ("db.example.com", 1)),
        ("127.0.0.7:65535", ("127.0.0.7", 65535)),
        ("[2001:db8::1]:443", ("2001:db8::1", 443)),
        ("under_score:80", ("under_score", 80)),
    ],
)
def test_destination(text: str, expected: tuple[str, int]) -> None:
    assert parse_destination(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("db.example.com", "not HOST:PORT"),
        (":5432", "not HOST:PORT"),
        ("db:0", "1 to 65535"),
        ("db:65536", "1 to 65535"),
        ("db:http", "1 to 65535"),
        ("2001:db8::1:443", "not a host name"),
        ("[2001:db8::1:443", "IPv6"),
        ("[nothex]:443", "IPv6"),
        ("a b:1", "not a host name"),
        ("-x:1", "not a host name"),
    ],
)
def test_destination_refused(text: str, why: str) -> None:
    with pytest.raises(TunnelFormatError, match=why):
        parse_destination(text)


def test_request_whole_and_cut() -> None:
    line = encode_egress_request("partners", "db.example.com:5432")
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_egress_request(line) == ("partners", "db.example.com", 5432)
    for i in range(len(line) - 1):  # every prefix short of the closing brace is no request
        with pytest.raises(TunnelFormatError):
            decode_egress_request(line[:i])


def test_reply_whole_and_cut() -> None:
    ok = encode_egress_reply(resolved="127.0.0.7:5432")
    assert decode_egress_reply(ok) == "127.0.0.7:5432"
    no = encode_egress_reply(error="destination db:1 refused", reason="destination")
    with pytest.raises(TunnelFormatError, match="the proxy refused: destination db:1 refused"):
        decode_egress_reply(no)
    for line in (ok, no):
        for i in range(len(line)):  # cut anywhere: the proxy closed before answering
            with pytest.raises(TunnelFormatError):
                decode_egress_reply(line[:i])


@pytest.mark.parametrize(
    "line",
    [
        b"not json\n",
        b"[1, 2]\n",
        b'{"egress": "p"}\n',
        b'{"egress": 1, "destination": "db:1"}\n',
        b'{"egress": "a b", "destination": "db:1"}\n',
        b'{"egress": "p", "destination": "db"}\n',
        b'{"egress": "p", "destination": "' + b"a" * MAX_EGRESS_LINE + b':1"}\n',
    ],
)
def test_request_refused(line: bytes) -> None:
    with pytest.raises(TunnelFormatError):
        decode_egress_request(line)


@pytest.mark.parametrize("line", [b"{}\n", b'{"ok": 1}\n', b"nope\n", b'"ok"\n'])
def test_reply_refused(line: bytes) -> None:
    with pytest.raises(TunnelFormatError):
        decode_egress_reply(line)


_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)
_hosts = st.from_regex(r"[a-z0-9_][a-z0-9_.-]{0,30}", fullmatch=True)


@given(_names, _hosts, st.integers(1, 65535))
def test_request_round_trip(egress: str, host: str, port: int) -> None:
    line = encode_egress_request(egress, f"{host}:{port}")
    assert decode_egress_request(line) == (egress, host, port)


@given(st.binary(max_size=200))
def test_request_never_crashes(data: bytes) -> None:
    try:
        egress, host, port = decode_egress_request(data)
    except TunnelFormatError:
        return
    assert 1 <= port <= 65535 and host == host.lower() and egress


@given(st.text(max_size=60))
def test_reply_round_trip(text: str) -> None:
    assert decode_egress_reply(encode_egress_reply(resolved=text)) == text
    if text:
        with pytest.raises(TunnelFormatError):
            decode_egress_reply(encode_egress_reply(error=text, reason="r"))
