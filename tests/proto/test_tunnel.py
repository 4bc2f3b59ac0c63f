"""proto/tunnel.py: tokens, the hello, stream paths, enrolment lines, liveness, back-off."""

from __future__ import annotations

import pytest

from revproxy.proto.tunnel import (
    Expose,
    Hello,
    Liveness,
    Role,
    Token,
    TunnelFormatError,
    backoff,
    decode_enrol_reply,
    decode_enrol_request,
    encode_enrol_reply,
    encode_enrol_request,
    expose_of_path,
    parse_worker,
    path_of_expose,
    worker_header,
)

PIN = "ab" * 32


def test_token_round_trip() -> None:
    token = Token("home", "s" * 32, PIN)
    text = token.encode()
    assert text.startswith("rpt1.") and "\n" not in text
    assert Token.parse(text) == token
    assert Token.parse(f"  {text}\n") == token


@pytest.mark.parametrize(
    "text",
    ["", "rpt2.abc", "rpt1.!!!", "rpt1." + "e30", "rpt1.eyJuIjoiaG9tZSJ9"],
)
def test_token_damaged(text: str) -> None:
    with pytest.raises(TunnelFormatError):
        Token.parse(text)


def test_token_bad_name_or_pin() -> None:
    with pytest.raises(TunnelFormatError):
        Token.parse(Token("bad/name", "s" * 32, PIN).encode())
    with pytest.raises(TunnelFormatError):
        Token.parse(Token("home", "s" * 32, "xyz").encode())
    with pytest.raises(TunnelFormatError):
        Token.parse(Token("home", "short", PIN).encode())


def test_hello_round_trip() -> None:
    hello = Hello(Role.SPARE, 3, "abc123", (Expose("web", "http"), Expose("ssh", "tcp")))
    assert Hello.parse(hello.headers()) == hello


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"revproxy-role", b"boss"), (b"revproxy-slot", b"0"), (b"revproxy-session", b"a")],
        [(b"revproxy-role", b"mux"), (b"revproxy-slot", b"x"), (b"revproxy-session", b"a")],
        [(b"revproxy-role", b"mux"), (b"revproxy-slot", b"0"), (b"revproxy-session", b"a b")],
        [
            (b"revproxy-role", b"mux"),
            (b"revproxy-slot", b"0"),
            (b"revproxy-session", b"a"),
            (b"revproxy-exposes", b"web=udp"),
        ],
    ],
)
def test_hello_refused(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(TunnelFormatError):
        Hello.parse(headers)


def test_worker_header() -> None:
    assert parse_worker([worker_header(1, 2)]) == (1, 2)
    for bad in (b"2/2", b"1", b"a/b", b"-1/2"):
        with pytest.raises(TunnelFormatError):
            parse_worker([(b"revproxy-worker", bad)])


def test_expose_paths() -> None:
    assert expose_of_path(path_of_expose("web")) == "web"
    for bad in (b"web", b"/", b"/a/b", b"/\xff"):
        with pytest.raises(TunnelFormatError):
            expose_of_path(bad)


def test_enrol_lines() -> None:
    token = Token("home", "s" * 32, PIN)
    line = encode_enrol_request(token, "CSR")
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_enrol_request(line) == ("home", "s" * 32, "CSR")
    assert decode_enrol_reply(encode_enrol_reply(cert="C", ca="A")) == ("C", "A")
    with pytest.raises(TunnelFormatError, match="refused: nope"):
        decode_enrol_reply(encode_enrol_reply(error="nope"))
    for bad in (b"", b"[]", b"{", b'{"name": 1}', b"x" * 70000):
        with pytest.raises(TunnelFormatError):
            decode_enrol_request(bad)


def test_liveness_dead_after_misses() -> None:
    live = Liveness(interval=10.0, misses=3, last_heard=0.0)
    assert not live.due(5.0)
    sent = [t for t in range(10, 60) if live.due(float(t))]
    assert sent[:4] == [10, 20, 30, 40]
    assert live.dead
    live.heard(60.0)
    assert not live.dead and not live.due(65.0)


def test_backoff_capped_jittered_never_gives_up() -> None:
    assert backoff(0, 0.0) == 0.25 and backoff(0, 0.999) < 0.5
    assert backoff(3, 1.0) == pytest.approx(4.0)
    assert backoff(10_000, 0.999) <= 30.0
    assert backoff(10_000, 0.0) == 15.0
