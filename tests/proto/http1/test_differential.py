"""The llhttp implementation against the h11 reference, for the same bytes and the same calls.

Every case is a script of calls (bytes received, responses or requests sent, next cycle) run on
both ``http1`` and ``http1_fast``; after every call the two must agree on the events returned
(adjacent body pieces merged: how a body is cut into events is not part of the API), the bytes
returned, the error raised (class and status) and the state the properties report. Received
bytes are fed three ways (whole, one byte at a time, in two halves) and with trailing data.
"""

from __future__ import annotations

import importlib.util
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from revproxy.errors import RevproxyError
from revproxy.proto.events import (
    DataReceived,
    Event,
    Headers,
    RequestReceived,
)
from revproxy.proto.http1 import api
from revproxy.proto.http1 import exact as http1
from revproxy.proto.http1 import fast as http1_fast
from revproxy.proto.http1 import fast_lines as http1_fast_lines
from revproxy.proto.http1 import wire as http1_wire


def _sibling(name: str) -> ModuleType:
    """A test module of this folder, loaded by path (tests run with --import-mode=importlib)."""
    spec = importlib.util.spec_from_file_location(
        f"_corpus_{name}", Path(__file__).with_name(f"{name}.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The malformed corpus of the adapters' own tests, run here on both implementations.
_adapter_tests = _sibling("test_http1")
MALFORMED_REQUESTS: dict[str, bytes] = _adapter_tests.MALFORMED_REQUESTS
MALFORMED_BODIES: dict[str, bytes] = _adapter_tests.MALFORMED_BODIES
MALFORMED_RESPONSES: dict[str, bytes] = _adapter_tests.MALFORMED_RESPONSES
NEXT_REQUEST: bytes = _adapter_tests.NEXT_REQUEST
NEXT_RESPONSE: bytes = _adapter_tests.NEXT_RESPONSE

Step = tuple[Any, ...]
Script = Sequence[Step]

# --- running a script on one implementation ---------------------------------------------------


def _merge(events: list[Event]) -> list[Event]:
    out: list[Event] = []
    for ev in events:
        if isinstance(ev, DataReceived):
            if not ev.data:
                continue
            last = out[-1] if out else None
            if isinstance(last, DataReceived) and last.stream_id == ev.stream_id:
                out[-1] = DataReceived(stream_id=ev.stream_id, data=last.data + ev.data)
                continue
        out.append(ev)
    return out


def _error(exc: BaseException) -> tuple[str, object]:
    if isinstance(exc, RevproxyError):
        return (type(exc).__name__, exc.status)
    if isinstance(exc, h11.LocalProtocolError):
        return ("h11.LocalProtocolError escaped", None)
    return (type(exc).__name__, None)


# Properties compared after every step; trailing_data once the reference has it too.
_SERVER_PROPERTIES = ["has_partial_head", "response_started", "request_complete", "keep_alive"]
_CLIENT_PROPERTIES = ["response_complete", "reusable"]
if hasattr(http1.H1Server, "trailing_data"):
    _SERVER_PROPERTIES.append("trailing_data")
    _CLIENT_PROPERTIES.append("trailing_data")


def _server_state(s: Any) -> tuple[object, ...]:
    return (*(getattr(s, p) for p in _SERVER_PROPERTIES), s.stream_id)


def _client_state(c: Any) -> tuple[object, ...]:
    return (*(getattr(c, p) for p in _CLIENT_PROPERTIES), c.stream_id)


def _pieces(data: bytes, how: str) -> list[bytes]:
    if how == "bytes":
        return [data[i : i + 1] for i in range(len(data))] or [b""]
    if how == "halves":
        mid = len(data) // 2
        return [p for p in (data[:mid], data[mid:]) if p] or [b""]
    return [data]


def run(kind: str, script: Script, how: str = "whole") -> list[object]:
    """What each step of ``script`` gives on one implementation; stops at the first error."""
    module = http1 if kind == "h11" else http1_fast
    server = script[0][0] == "server"
    conn: Any = (module.H1Server if server else module.H1Client)(
        max_header_size=script[0][1] if len(script[0]) > 1 else 16384
    )
    state: Callable[[Any], tuple[object, ...]] = _server_state if server else _client_state
    results: list[object] = []
    for step in script[1:]:
        op, args = step[0], step[1:]
        try:
            if op == "recv":
                events: list[Event] = []
                for piece in _pieces(args[0], how) if args[0] else [b""]:
                    events += conn.receive_data(piece)
                out: object = _merge(events)
            elif op == "next":
                out = _merge(conn.start_next_cycle() or [])
            elif op == "reuse":  # as dial.py does: only a reusable connection goes on
                if not conn.reusable:
                    break
                out = conn.start_next_cycle()
            else:
                out = getattr(conn, op)(*args)
        except Exception as exc:
            results.append(("raised", _error(exc), state(conn)))
            break
        results.append((out, state(conn)))
    return results


def assert_same(script: Script) -> None:
    for how in ("whole", "bytes", "halves"):
        ref = run("h11", script, how)
        fast = run("fast", script, how)
        assert fast == ref, f"feeding {how}"


# --- the corpus -------------------------------------------------------------------------------

H = b"Host: a.test\r\n"
OK = [(b"content-length", b"2")]


@dataclass(frozen=True)
class Case:
    name: str
    script: Script

    def __str__(self) -> str:
        return self.name


def req(name: str, data: bytes, *more: Step) -> Case:
    """A request received, answered 200 with a 2-byte body, then the next cycle."""
    steps: list[Step] = [("server",), ("recv", data)]
    steps += more or [
        ("send_response", 200, OK),
        ("send_data", b"ok"),
        ("send_end",),
        ("next",),
        ("recv", b""),
    ]
    return Case(name, steps)


REQUESTS = [
    req("minimal", b"GET / HTTP/1.1\r\n" + H + b"\r\n"),
    req(
        "many headers",
        b"GET /p?q=1 HTTP/1.1\r\n"
        + H
        + b"".join(b"X-H%d: v%d\r\n" % (i, i) for i in range(40))
        + b"\r\n",
    ),
    req("http/1.0 no host", b"GET / HTTP/1.0\r\n\r\n"),
    req("http/1.0 keep-alive asked", b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"),
    req("http/2.0 line", b"GET / HTTP/2.0\r\n" + H + b"\r\n"),
    req("http/1.2 line", b"GET / HTTP/1.2\r\n" + H + b"\r\n"),
    req("http/0.9 line", b"GET /\r\n\r\n"),
    req("lower-case version", b"GET / http/1.1\r\n" + H + b"\r\n"),
    req("no host", b"GET / HTTP/1.1\r\n\r\n"),
    req("two hosts", b"GET / HTTP/1.1\r\n" + H + H + b"\r\n"),
    req("empty host", b"GET / HTTP/1.1\r\nHost:\r\n\r\n"),
    req("custom method", b"PURGE /x HTTP/1.1\r\n" + H + b"\r\n"),
    req("lower-case method", b"get / HTTP/1.1\r\n" + H + b"\r\n"),
    req("method with @", b"G@T / HTTP/1.1\r\n" + H + b"\r\n"),
    req("double space", b"GET  / HTTP/1.1\r\n" + H + b"\r\n"),
    req("space after version", b"GET / HTTP/1.1 \r\n" + H + b"\r\n"),
    req("target DEL", b"GET /\x7f HTTP/1.1\r\n" + H + b"\r\n"),
    req("target obs-text", b"GET /\xff HTTP/1.1\r\n" + H + b"\r\n"),
    req("target odd chars", b'GET /a\\b{}|^`"<> HTTP/1.1\r\n' + H + b"\r\n"),
    req("target relative", b"GET a/b HTTP/1.1\r\n" + H + b"\r\n"),
    req("target star", b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n"),
    req("absolute-form", b"GET http://Other.test:8080/p?q HTTP/1.1\r\n" + H + b"\r\n"),
    req("absolute-form https no path", b"GET https://o.test HTTP/1.1\r\n" + H + b"\r\n"),
    req("absolute-form with userinfo", b"GET http://u@o.test/ HTTP/1.1\r\n" + H + b"\r\n"),
    req("absolute-form empty authority", b"GET http:///p HTTP/1.1\r\n" + H + b"\r\n"),
    req("authority-form CONNECT", b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\nXY"),
    req("value with tab and obs-text", b"GET / HTTP/1.1\r\n" + H + b"X: a\tb \xff\x80\r\n\r\n"),
    req("value with \\x01 and DEL", b"GET / HTTP/1.1\r\n" + H + b"X: a\x01b\x7f\r\n\r\n"),
    req("value with VT", b"GET / HTTP/1.1\r\n" + H + b"X: a\x0bb\r\n\r\n"),
    req("value with FF", b"GET / HTTP/1.1\r\n" + H + b"X: a\x0cb\r\n\r\n"),
    req("value with NUL", b"GET / HTTP/1.1\r\n" + H + b"X: a\x00b\r\n\r\n"),
    req("whitespace around value", b"GET / HTTP/1.1\r\n" + H + b"X:  \t a  b \t \r\n\r\n"),
    req("empty value", b"GET / HTTP/1.1\r\n" + H + b"X:\r\nY: \r\n\r\n"),
    req("space before colon", b"GET / HTTP/1.1\r\n" + H + b"X : b\r\n\r\n"),
    req("empty name", b"GET / HTTP/1.1\r\n" + H + b": b\r\n\r\n"),
    req("no colon", b"GET / HTTP/1.1\r\n" + H + b"Xb\r\n\r\n"),
    req("name with (", b"GET / HTTP/1.1\r\n" + H + b"X(Y: 1\r\n\r\n"),
    req("name with odd tchars", b"GET / HTTP/1.1\r\n" + H + b"X.Y~!#$%&'*+^_`|: 1\r\n\r\n"),
    req("name with obs-text", b"GET / HTTP/1.1\r\n" + H + b"X\xffY: 1\r\n\r\n"),
    req("obs-fold", b"GET / HTTP/1.1\r\n" + H + b"X: a\r\n b\r\n\r\n"),
    req("obs-fold tab", b"GET / HTTP/1.1\r\n" + H + b"X: a\r\n\tb\r\n\r\n"),
    req("fold at start", b"GET / HTTP/1.1\r\n b: c\r\n" + H + b"\r\n"),
    req("bare LF", b"GET / HTTP/1.1\n" + H + b"\r\n"),
    req("bare LF head", b"GET / HTTP/1.1\nHost: a\n\n"),
    req("lone CR", b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n"),
    req("CR CR", b"GET / HTTP/1.1\r\nHost: a\r\r\n\r\n"),
    req("leading CRLFs", b"\r\n\r\nGET / HTTP/1.1\r\n" + H + b"\r\n"),
    req("leading LF", b"\nGET / HTTP/1.1\r\n" + H + b"\r\n"),
    req("leading space", b" GET / HTTP/1.1\r\n" + H + b"\r\n"),
    req("TLS bytes", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40),
    req("empty", b""),
    req("garbage line", b"hello\r\n\r\n"),
    # bodies
    req("content-length body", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhello"),
    req("content-length 0", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0\r\n\r\n"),
    req("GET with body", b"GET / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\n\r\nabc"),
    req("CL list", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5, 5\r\n\r\nhello"),
    req(
        "CL twice same",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\ncontent-length: 5\r\n\r\nhello",
    ),
    req(
        "CL conflicting",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    ),
    req("CL list conflicting", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5,6\r\n\r\nhello"),
    req("CL plus sign", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +5\r\n\r\nhello"),
    req("CL hex", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0x5\r\n\r\nhello"),
    req("CL empty", b"POST / HTTP/1.1\r\n" + H + b"Content-Length:\r\n\r\nhello"),
    req("CL negative", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n"),
    req(
        "CL 20 digits",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 99999999999999999999\r\n\r\nab",
    ),
    req(
        "CL 21 digits",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 999999999999999999999\r\n\r\n",
    ),
    req(
        "CL leading zeros",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0000000000000000000000005\r\n\r\nhello",
    ),
    req("CL short then EOF", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 10\r\n\r\nhello"),
    req(
        "chunked",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n1A\r\n" + b"z" * 26 + b"\r\n0\r\n\r\n",
    ),
    req(
        "chunked upper-case",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: Chunked\r\n\r\n0\r\n\r\n",
    ),
    req(
        "chunked twice",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    req(
        "TE list", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
    ),
    req("TE identity", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: identity\r\n\r\n"),
    req(
        "CL and TE",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    req(
        "TE and CL",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n"
        b"Content-Length: 5\r\n\r\n0\r\n\r\n",
    ),
    req(
        "chunk extensions",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
        b'5;a=b;c="d e"\r\nhello\r\n0;x\r\n\r\n',
    ),
    req(
        "odd chunk extension",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
        b"5;a b @\x01\r\nhello\r\n0\r\n\r\n",
    ),
    req(
        "chunk extension with CR",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
        b"5;a\rb\r\nhello\r\n0\r\n\r\n",
    ),
    req(
        "chunk size then space",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",
    ),
    req(
        "chunk size space ext",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
        b"5 ;a\r\nhello\r\n0\r\n\r\n",
    ),
    req(
        "chunk size 0x",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
    ),
    req(
        "chunk size 20 digits",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
        b"00000000000000000005\r\nhello\r\n0\r\n\r\n",
    ),
    req(
        "chunk size 21 digits",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
        b"000000000000000000005\r\nhello\r\n0\r\n\r\n",
    ),
    req(
        "chunk size huge",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
        b"fffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    ),
    req(
        "chunk size empty",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n\r\nhello\r\n0\r\n\r\n",
    ),
    req(
        "chunk size bare LF",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
    ),
    req(
        "chunk data too long",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
    ),
    req(
        "chunk data bare LF end",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n",
    ),
    req(
        "trailers",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nX-T: 1\r\nY:  2 \r\n\r\n",
    ),
    req(
        "trailer bad name",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX T: 1\r\n\r\n",
    ),
    req(
        "trailer bare LF",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\n\n",
    ),
    req(
        "trailer obs-fold",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\r\n 2\r\n\r\n",
    ),
    req(
        "trailer content-length list",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked"
        b"\r\n\r\n0\r\nContent-Length: 1, 2\r\n\r\n",
    ),
    req(
        "chunked EOF inside",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhel",
    ),
    # keep-alive, pipelining, upgrades
    req("connection close", b"GET / HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"),
    req(
        "connection close list",
        b"GET / HTTP/1.1\r\n" + H + b"Connection: Keep-Alive, CLOSE\r\n\r\n",
    ),
    req("connection closed word", b"GET / HTTP/1.1\r\n" + H + b"Connection: closed\r\n\r\n"),
    req("connection close then bytes", b"GET / HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\nGET"),
    req("http/1.0 then bytes", b"GET / HTTP/1.0\r\n\r\nGET / HTTP/1.0\r\n\r\n"),
    req(
        "pipelined",
        b"GET /1 HTTP/1.1\r\n" + H + b"\r\nGET /2 HTTP/1.1\r\n" + H + b"\r\n",
        ("send_response", 200, OK),
        ("send_data", b"ok"),
        ("send_end",),
        ("next",),
        ("send_response", 204, []),
        ("send_end",),
        ("next",),
        ("recv", b""),
    ),
    req(
        "pipelined with body",
        b"POST /1 HTTP/1.1\r\n" + H + b"Content-Length: 2\r\n\r\nab"
        b"GET /2 HTTP/1.1\r\n" + H + b"\r\n",
        ("send_response", 200, OK),
        ("send_data", b"ok"),
        ("send_end",),
        ("next",),
        ("send_response", 200, OK),
        ("send_data", b"ok"),
        ("send_end",),
        ("next",),
    ),
    req("pipelined bad second", b"GET /1 HTTP/1.1\r\n" + H + b"\r\nGET /2 HTTP/1.1\nHost: a\n\n"),
    req(
        "upgrade request",
        b"GET / HTTP/1.1\r\n" + H + b"Connection: upgrade\r\nUpgrade: websocket\r\n\r\nXYZ",
    ),
    req("upgrade header alone", b"GET / HTTP/1.1\r\n" + H + b"Upgrade: h2c\r\n\r\nXYZ"),
    req("empty upgrade header", b"GET / HTTP/1.1\r\n" + H + b"Upgrade: , \r\n\r\n"),
    req(
        "upgrade accepted",
        b"GET / HTTP/1.1\r\n" + H + b"Upgrade: websocket\r\n\r\nXYZ",
        ("send_informational", 101, [(b"upgrade", b"websocket")]),
        ("recv", b"more"),
    ),
    req(
        "101 without upgrade", b"GET / HTTP/1.1\r\n" + H + b"\r\n", ("send_informational", 101, [])
    ),
    req(
        "expect 100-continue",
        b"PUT / HTTP/1.1\r\n" + H + b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\n",
        ("send_informational", 100, []),
        ("recv", b"ab"),
        ("send_response", 201, [(b"content-length", b"0")]),
        ("send_end",),
        ("next",),
    ),
]


REQUESTS += [req(f"corpus {name}", data) for name, data in sorted(MALFORMED_REQUESTS.items())]
REQUESTS += [
    req(
        f"corpus body {name}",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + data,
    )
    for name, data in sorted(MALFORMED_BODIES.items())
]


def resp(name: str, request: bytes, *steps: Step) -> Case:
    """A request received, then the given sends."""
    return Case(name, [("server",), ("recv", request), *steps])


GET = b"GET / HTTP/1.1\r\n" + H + b"\r\n"
GET10 = b"GET / HTTP/1.0\r\n\r\n"
HEAD = b"HEAD / HTTP/1.1\r\n" + H + b"\r\n"
HEAD10 = b"HEAD / HTTP/1.0\r\n\r\n"
CLOSE = b"GET / HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"
CONNECT = b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n"
BODY = ("send_data", b"hello")
END = ("send_end",)

SENDS = [
    resp("length", GET, ("send_response", 200, [(b"content-length", b"5")]), BODY, END, ("next",)),
    resp("chunked for 1.1", GET, ("send_response", 200, [(b"x", b"1")]), BODY, BODY, END),
    resp("close-delimited for 1.0", GET10, ("send_response", 200, [(b"x", b"1")]), BODY, END),
    resp("length for 1.0", GET10, ("send_response", 200, [(b"content-length", b"5")]), BODY, END),
    resp(
        "TE given for 1.0",
        GET10,
        ("send_response", 200, [(b"transfer-encoding", b"chunked")]),
        BODY,
        END,
    ),
    resp(
        "TE and CL given",
        GET,
        ("send_response", 200, [(b"Content-Length", b"5"), (b"transfer-encoding", b"chunked")]),
        BODY,
        END,
    ),
    resp("HEAD with length", HEAD, ("send_response", 200, [(b"content-length", b"5")]), END),
    resp("HEAD without length", HEAD, ("send_response", 200, []), END, ("next",)),
    resp("HEAD 1.0 without length", HEAD10, ("send_response", 200, []), END),
    resp("HEAD body refused", HEAD, ("send_response", 200, [(b"content-length", b"5")]), BODY),
    resp("204", GET, ("send_response", 204, [(b"transfer-encoding", b"chunked")]), END),
    resp("304 with length", GET, ("send_response", 304, [(b"content-length", b"5")]), END),
    resp("204 body refused", GET, ("send_response", 204, []), BODY),
    resp("too much data", GET, ("send_response", 200, [(b"content-length", b"2")]), BODY),
    resp("too little data", GET, ("send_response", 200, [(b"content-length", b"9")]), BODY, END),
    resp(
        "trailers chunked",
        GET,
        ("send_response", 200, []),
        BODY,
        ("send_end", [(b"x-t", b"1"), (b"Host", b"h")]),
    ),
    resp(
        "trailers with length",
        GET,
        ("send_response", 200, [(b"content-length", b"5")]),
        BODY,
        ("send_end", [(b"x-t", b"1")]),
    ),
    resp("trailers to 1.0", GET10, ("send_response", 200, []), BODY, ("send_end", [(b"x", b"1")])),
    resp(
        "request said close",
        CLOSE,
        (
            "send_response",
            200,
            [(b"content-length", b"0"), (b"connection", b"keep-alive, Upgrade")],
        ),
        END,
        ("next",),
    ),
    resp(
        "response says close",
        GET,
        ("send_response", 200, [(b"content-length", b"0"), (b"connection", b"close")]),
        END,
    ),
    resp(
        "1.0 close added", GET10, ("send_response", 200, [(b"connection", b"x-a, keep-alive")]), END
    ),
    resp(
        "host first",
        GET,
        (
            "send_response",
            200,
            [(b"a", b"1"), (b"HOST", b"h"), (b"content-length", b"0"), (b"host", b"i")],
        ),
        END,
    ),
    resp(
        "reason given", GET, ("send_response", 299, [(b"content-length", b"0")], b"Fine \tthanks")
    ),
    resp("unknown status no reason", GET, ("send_response", 599, [(b"content-length", b"0")])),
    resp(
        "1xx then final",
        GET,
        ("send_informational", 103, [(b"link", b"</a>; rel=preload")]),
        ("send_informational", 100, []),
        ("send_response", 200, OK),
        ("send_data", b"ok"),
        END,
    ),
    resp("CONNECT accepted", CONNECT, ("send_response", 200, []), ("send_data", b"x")),
    resp(
        "CONNECT refused",
        CONNECT,
        ("send_response", 405, [(b"content-length", b"0"), (b"connection", b"close")]),
        END,
    ),
    resp("response twice", GET, ("send_response", 200, OK), ("send_response", 200, OK)),
    resp("data before response", GET, BODY),
    resp("end twice", GET, ("send_response", 200, [(b"content-length", b"0")]), END, END),
    resp("after error", GET, ("send_response", 200, [(b"content-length", b"1")]), BODY, BODY),
    resp("response before request", b"", ("send_response", 200, OK)),
    resp("informational before request", b"", ("send_informational", 100, [])),
    resp("CL list sent", GET, ("send_response", 200, [(b"content-length", b"5 , 5")]), BODY, END),
    resp(
        "CL twice sent",
        GET,
        ("send_response", 200, [(b"content-length", b"5"), (b"Content-Length", b"5")]),
        BODY,
        END,
    ),
    resp(
        "empty value sent",
        GET,
        ("send_response", 200, [(b"x", b""), (b"y", b"a:  b"), (b"content-length", b"0")]),
        END,
    ),
    resp("informational with headers", GET, ("send_informational", 103, [(b"a", b"b")])),
    resp("status as enum", GET, ("send_response", 200, OK)),
]

# Headers h11 refuses in its event constructors. http1.py builds the h11 event outside its
# try block, so h11's LocalProtocolError escapes instead of the error the API documents.
INVALID_SENDS = [
    resp(
        "CL conflict sent",
        GET,
        ("send_response", 200, [(b"content-length", b"5"), (b"Content-Length", b"6")]),
    ),
    resp("TE gzip sent", GET, ("send_response", 200, [(b"transfer-encoding", b"gzip")])),
    resp("CR LF in value", GET, ("send_response", 200, [(b"x", b"a\r\nSet-Cookie: b")])),
    resp("NUL in value", GET, ("send_response", 200, [(b"x", b"a\x00")])),
    resp("space in name", GET, ("send_response", 200, [(b"x y", b"a")])),
    resp("colon in name", GET, ("send_response", 200, [(b"x:", b"a")])),
    resp("empty name", GET, ("send_response", 200, [(b"", b"a")])),
    resp("leading space in value", GET, ("send_response", 200, [(b"x", b" a")])),
    resp("trailing tab in value", GET, ("send_response", 200, [(b"x", b"a\t")])),
    resp("status 99", GET, ("send_informational", 99, [])),
    resp("status 200 as 1xx", GET, ("send_informational", 200, [])),
    resp("status 1000", GET, ("send_response", 1000, [])),
    resp("status 150 as final", GET, ("send_response", 150, [])),
    resp("bad trailer", GET, ("send_response", 200, []), ("send_end", [(b"a b", b"c")])),
]


def client(
    name: str,
    response: bytes,
    *,
    method: bytes = b"GET",
    feed_eof: bool = True,
    headers: Sequence[tuple[bytes, bytes]] = ((b"host", b"o.test"),),
    body: bytes = b"",
) -> Case:
    steps: list[Step] = [("client",), ("send_request", method, b"/p", list(headers))]
    if body:
        steps.append(("send_data", body))
    steps += [("send_end",), ("recv", response)]
    if feed_eof:
        steps.append(("recv", b""))
    return Case(name, steps)


RESPONSES = [
    client("length", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
    client(
        "length keep-alive", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", feed_eof=False
    ),
    client(
        "length then extra",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA",
        feed_eof=False,
    ),
    client("no reason", b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", feed_eof=False),
    client("empty reason", b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n", feed_eof=False),
    client("odd reason", b"HTTP/1.1 404 Not\tF\xffound !\r\nContent-Length: 0\r\n\r\n"),
    client("reason with \\x01", b"HTTP/1.1 200 O\x01K\r\nContent-Length: 0\r\n\r\n"),
    client("http/1.0 response", b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi", feed_eof=False),
    client("http/2.0 response", b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nhi", feed_eof=False),
    client("lower-case http", b"http/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    client("two-digit status", b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n"),
    client("status 099", b"HTTP/1.1 099 OK\r\nContent-Length: 0\r\n\r\n"),
    client("status 999", b"HTTP/1.1 999 Odd\r\nContent-Length: 0\r\n\r\n", feed_eof=False),
    client(
        "chunked",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n",
        feed_eof=False,
    ),
    client(
        "chunked trailers",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nServer-Timing: a;dur=1\r\nX: y\r\n\r\n",
        feed_eof=False,
    ),
    client("chunked bad size", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
    client("chunked EOF", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhe"),
    client("TE gzip", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxxx"),
    client(
        "TE and CL",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n"
        b"\r\n2\r\nhi\r\n0\r\n\r\n",
        feed_eof=False,
    ),
    client("CL list", b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nhi", feed_eof=False),
    client(
        "CL conflicting", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi"
    ),
    client("CL bad", b"HTTP/1.1 200 OK\r\nContent-Length: two\r\n\r\nhi"),
    client("CL short", b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhi"),
    client("close-delimited", b"HTTP/1.1 200 OK\r\nX: y\r\n\r\nuntil the end"),
    client("close-delimited no EOF", b"HTTP/1.1 200 OK\r\n\r\nabc", feed_eof=False),
    client(
        "connection close",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        feed_eof=False,
    ),
    client(
        "connection close then bytes",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\nX",
    ),
    client("bare LF head", b"HTTP/1.1 200 OK\nContent-Length: 2\nX: a\n\nhi", feed_eof=False),
    client(
        "bare LF one line", b"HTTP/1.1 200 OK\r\nX: a\nContent-Length: 2\r\n\r\nhi", feed_eof=False
    ),
    client(
        "bare LF in status line",
        b"HTTP/1.1 200 O\nK: v\r\nContent-Length: 0\r\n\r\n",
        feed_eof=False,
    ),
    client("LF CRLF end", b"HTTP/1.1 200 OK\r\nContent-Length: 0\n\r\n", feed_eof=False),
    client("lone CR", b"HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 0\r\n\r\n"),
    client(
        "obs-fold", b"HTTP/1.1 200 OK\r\nX: a\r\n  b\r\nContent-Length: 0\r\n\r\n", feed_eof=False
    ),
    client("obs-fold first", b"HTTP/1.1 200 OK\r\n X: a\r\nContent-Length: 0\r\n\r\n"),
    client(
        "value \\x01",
        b"HTTP/1.1 200 OK\r\nX: a\x01\x7f\r\nContent-Length: 0\r\n\r\n",
        feed_eof=False,
    ),
    client("value VT", b"HTTP/1.1 200 OK\r\nX: a\x0bb\r\nContent-Length: 0\r\n\r\n"),
    client("bad name", b"HTTP/1.1 200 OK\r\nX Y: a\r\nContent-Length: 0\r\n\r\n"),
    client("leading CRLF", b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    client("leading LF", b"\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    client("leading space", b" HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    client("garbage", b"SSH-2.0-OpenSSH\r\n\r\n"),
    client("EOF before response", b""),
    client("EOF inside head", b"HTTP/1.1 200 OK\r\nContent-"),
    client(
        "204 with length", b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", feed_eof=False
    ),
    client(
        "304 chunked",
        b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
        feed_eof=False,
    ),
    client(
        "HEAD response",
        b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n",
        method=b"HEAD",
        feed_eof=False,
    ),
    client(
        "HEAD response with body",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        method=b"HEAD",
    ),
    client(
        "1xx then final",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n"
        b"Link: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
        feed_eof=False,
    ),
    client("101 without upgrade", b"HTTP/1.1 101 Switching Protocols\r\n\r\n"),
    client(
        "101 with upgrade",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: ws\r\n\r\nRAW",
        headers=[(b"host", b"o"), (b"upgrade", b"ws"), (b"connection", b"upgrade")],
    ),
    client(
        "upgrade refused",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        feed_eof=False,
        headers=[(b"host", b"o"), (b"upgrade", b"ws")],
    ),
    client("CONNECT 200", b"HTTP/1.1 200 OK\r\n\r\nTUNNEL", method=b"CONNECT"),
    client(
        "CONNECT 407",
        b"HTTP/1.1 407 Auth\r\nContent-Length: 0\r\n\r\n",
        method=b"CONNECT",
        feed_eof=False,
    ),
    client(
        "request said close",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        feed_eof=False,
        headers=[(b"Host", b"o"), (b"Connection", b"close")],
    ),
    client(
        "chunked request",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        feed_eof=False,
        headers=[(b"host", b"o"), (b"transfer-encoding", b"chunked")],
        body=b"abc",
    ),
    client(
        "length request",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        feed_eof=False,
        headers=[(b"x", b"1"), (b"host", b"o"), (b"content-length", b"3")],
        body=b"abc",
    ),
    client("request body without length", b"", headers=[(b"host", b"o")], body=b"abc"),
    client("big head", b"HTTP/1.1 200 OK\r\n" + b"X: " + b"a" * 20000 + b"\r\n\r\n"),
    client(
        "huge chunk line", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 20000
    ),
]

RESPONSES += [
    client(f"corpus {name}", data, feed_eof=False)
    for name, data in sorted(MALFORMED_RESPONSES.items())
]
RESPONSES += [
    client(
        "many heads each under the limit",
        (b"HTTP/1.1 103 Early Hints\r\nX: " + b"v" * 900 + b"\r\n\r\n") * 3
        + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        + NEXT_RESPONSE,
        feed_eof=False,
    ),
]

CLIENT_SENDS = [
    Case("no host", [("client",), ("send_request", b"GET", b"/", [])]),
    Case(
        "two hosts",
        [("client",), ("send_request", b"GET", b"/", [(b"host", b"a"), (b"Host", b"b")])],
    ),
    Case("bad method", [("client",), ("send_request", b"G T", b"/", [(b"host", b"a")])]),
    Case("bad target", [("client",), ("send_request", b"GET", b"/a b", [(b"host", b"a")])]),
    Case("bad header", [("client",), ("send_request", b"GET", b"/", [(b"host", b"a\r\nb")])]),
    Case(
        "trailers",
        [
            ("client",),
            ("send_request", b"POST", b"/", [(b"host", b"a"), (b"transfer-encoding", b"chunked")]),
            ("send_data", b"x"),
            ("send_end", [(b"t", b"1")]),
        ],
    ),
    Case(
        "next cycle",
        [
            ("client",),
            ("send_request", b"GET", b"/", [(b"host", b"a")]),
            ("send_end",),
            ("recv", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            ("start_next_cycle",),
            ("send_request", b"GET", b"/2", [(b"host", b"a")]),
            ("send_end",),
            ("recv", b"HTTP/1.1 204 No Content\r\n\r\n"),
        ],
    ),
]

SMALL_LIMIT = [
    Case(
        "head over limit in pieces",
        [("server", 64), ("recv", b"GET / HTTP/1.1\r\n" + H + b"X: " + b"a" * 80)],
    ),
    Case(
        "head over limit whole",
        [("server", 64), ("recv", b"GET / HTTP/1.1\r\n" + H + b"X: " + b"a" * 80 + b"\r\n\r\n")],
    ),
    Case(
        "head at limit",
        [("server", 64), ("recv", b"GET / HTTP/1.1\r\n" + H + b"X: " + b"a" * 27 + b"\r\n\r\n")],
    ),
    Case(
        "chunk line over limit",
        [
            ("server", 64),
            (
                "recv",
                b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n" + b"0" * 1200,
            ),
        ],
    ),
    Case(
        "response head over limit",
        [
            ("client", 64),
            ("send_request", b"GET", b"/", [(b"host", b"a")]),
            ("send_end",),
            ("recv", b"HTTP/1.1 200 OK\r\nX: " + b"a" * 80),
        ],
    ),
]


@pytest.mark.parametrize("case", REQUESTS, ids=str)
def test_requests(case: Case) -> None:
    assert_same(case.script)


@pytest.mark.parametrize("case", REQUESTS, ids=str)
def test_requests_with_trailing_data(case: Case) -> None:
    steps = list(case.script)
    steps[1] = ("recv", steps[1][1] + NEXT_REQUEST)
    assert_same(steps)


@pytest.mark.parametrize("case", REQUESTS, ids=str)
def test_requests_then_eof(case: Case) -> None:
    assert_same([*case.script[:2], ("recv", b"")])


@pytest.mark.parametrize("case", SENDS, ids=str)
def test_sends(case: Case) -> None:
    assert_same(case.script)


@pytest.mark.parametrize("case", INVALID_SENDS, ids=str)
def test_invalid_sends_are_refused(case: Case) -> None:
    """Both refuse, and leave the connection in the same state; the fast path raises the error
    the API documents where http1.py lets h11's own error escape."""
    ref = run("h11", case.script)
    fast = run("fast", case.script)
    assert len(ref) == len(fast)
    assert ref[:-1] == fast[:-1]
    ref_last, fast_last = ref[-1], fast[-1]
    assert isinstance(ref_last, tuple) and isinstance(fast_last, tuple)
    assert ref_last[0] == fast_last[0] == "raised"
    assert fast_last[1] == ("BackendProtocolError", 502)
    assert ref_last[1][0] in ("BackendProtocolError", "h11.LocalProtocolError escaped")
    assert fast_last[2] == ref_last[2]


@pytest.mark.parametrize("case", RESPONSES, ids=str)
def test_responses(case: Case) -> None:
    assert_same(case.script)


@pytest.mark.parametrize("case", RESPONSES, ids=str)
def test_responses_with_trailing_data(case: Case) -> None:
    steps = [s for s in case.script if s != ("recv", b"")]
    received = [i for i, s in enumerate(steps) if s[0] == "recv"]
    if received:
        steps[received[-1]] = ("recv", steps[received[-1]][1] + NEXT_RESPONSE)
    else:
        steps.append(("recv", NEXT_RESPONSE))
    assert_same(steps)


@pytest.mark.parametrize("case", CLIENT_SENDS + SMALL_LIMIT, ids=str)
def test_client_sends_and_limits(case: Case) -> None:
    assert_same(case.script)


def test_request_without_host_gets_an_empty_host() -> None:
    """RFC 9112 §3.2: an HTTP/1.0 client's request without Host goes out with an empty one."""
    for impl in (http1.H1Client, http1_fast.H1Client):
        out = impl().send_request(b"GET", b"/", [])
        assert out.startswith(b"GET / HTTP/1.1\r\nhost: \r\n"), (impl, out)


def test_reason_that_would_split_a_response_is_refused() -> None:
    """The one deliberate difference: h11 sends any reason phrase it is given."""
    s = http1_fast.H1Server()
    s.receive_data(GET)
    with pytest.raises(RevproxyError) as info:
        s.send_response(200, [], b"OK\r\nSet-Cookie: x")
    assert info.value.status == 502


def test_body_bytes_are_handed_on_without_copy() -> None:
    s = http1_fast.H1Server()
    s.receive_data(b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 10\r\n\r\n")
    piece = b"0123456789"
    (ev, end) = s.receive_data(piece)
    assert isinstance(ev, DataReceived) and ev.data is piece
    assert end.__class__.__name__ == "MessageEnded"


# --- generated requests and responses ---------------------------------------------------------

TCHAR = "!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits
names = st.text(TCHAR, min_size=1, max_size=12).map(str.encode)
value_bytes = st.binary(max_size=16).map(
    lambda b: bytes(c for c in b if c not in b"\r\n\x00\x0b\x0c")
)
ows = st.sampled_from([b"", b" ", b"\t", b"  ", b" \t "])
fields = st.lists(
    st.tuples(names, ows, value_bytes, ows).map(lambda t: t[0] + b":" + t[1] + t[2] + t[3]),
    max_size=8,
)
methods = st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"OPTIONS", b"PURGE", b"get"])
targets = st.sampled_from([b"/", b"/a?b=c", b"*", b"http://x.test/p", b"/%20x", b"a"])
versions = st.sampled_from([b"1.1", b"1.0", b"1.1", b"2.0"])


@st.composite
def bodies(draw: st.DrawFn) -> tuple[list[bytes], bytes]:
    kind = draw(st.sampled_from(["none", "length", "chunked", "bad-length"]))
    data = draw(st.binary(max_size=40))
    if kind == "length":
        return [b"Content-Length: %d" % len(data)], data
    if kind == "bad-length":
        return [b"Content-Length: %d" % (len(data) + 3)], data
    if kind == "chunked":
        ext = draw(st.sampled_from([b"", b";a=b", b" ", b";x y"]))
        cut = draw(st.integers(0, len(data)))
        parts = [p for p in (data[:cut], data[cut:]) if p]
        chunked = b"".join(b"%x%s\r\n%s\r\n" % (len(p), ext, p) for p in parts)
        trailer = draw(st.sampled_from([b"", b"T: 1\r\n", b"T:1\n", b" T: 1\r\n"]))
        return [b"Transfer-Encoding: chunked"], chunked + b"0\r\n" + trailer + b"\r\n"
    return [], b""


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    method, target, version = draw(methods), draw(targets), draw(versions)
    lines = draw(fields)
    framing, body = draw(bodies())
    host = [] if draw(st.integers(0, 9)) == 0 else [b"Host: h.test"]
    lines = host + lines + framing
    order = draw(st.permutations(lines))
    head = b"%s %s HTTP/%s\r\n" % (method, target, version)
    return head + b"".join(line + b"\r\n" for line in order) + b"\r\n" + body


def mutate(data: bytes, draw: Callable[[st.SearchStrategy[Any]], Any]) -> bytes:
    if not data or draw(st.integers(0, 2)):
        return data
    i: int = draw(st.integers(0, len(data) - 1))
    what: bytes = draw(
        st.sampled_from([b"\n", b"\r", b" ", b"\t", b":", b"\x00", b"\x7f", b"", b"5", b","])
    )
    skip: int = draw(st.integers(0, 1))
    return data[:i] + what + data[i + skip :]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_generated_requests(data: st.DataObject) -> None:
    raw = mutate(data.draw(requests()), data.draw)
    script: Script = [
        ("server",),
        ("recv", raw),
        ("send_response", 200, []),
        ("send_data", b"x"),
        ("send_end",),
        ("next",),
        ("recv", b""),
    ]
    assert_same(script)


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    status = draw(st.sampled_from([b"200", b"204", b"304", b"404", b"100", b"103", b"101"]))
    reason = draw(st.sampled_from([b" OK", b"", b" ", b" Odd \t reason"]))
    version = draw(st.sampled_from([b"1.1", b"1.0"]))
    lines = draw(fields)
    framing, body = draw(bodies())
    eol = draw(st.sampled_from([b"\r\n", b"\r\n", b"\n"]))
    head = b"HTTP/%s %s%s%s" % (version, status, reason, eol)
    return head + b"".join(line + eol for line in lines + framing) + eol + body


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_generated_responses(data: st.DataObject) -> None:
    raw = mutate(data.draw(responses()), data.draw)
    method = data.draw(st.sampled_from([b"GET", b"HEAD"]))
    script: Script = [
        ("client",),
        ("send_request", method, b"/", [(b"host", b"o")]),
        ("send_end",),
        ("recv", raw),
        ("recv", b""),
    ]
    assert_same(script)


# --- choosing the implementation -----------------------------------------------------------


def test_global_http1_parser_picks_the_implementation() -> None:
    assert api.server_class("h11") is http1.H1Server
    assert api.client_class("h11") is http1.H1Client
    assert api.server_class("httptools") is http1_fast.H1Server
    assert api.client_class("httptools") is http1_fast.H1Client
    # httptools is a dependency, so "auto" means llhttp wherever the tests run.
    assert api.server_class("auto") is http1_fast.H1Server
    assert api.client_class() is http1_fast.H1Client
    with pytest.raises(ValueError, match="http1_parser"):
        api.server_class("picohttpparser")


def test_both_implementations_have_the_api_the_pipeline_uses() -> None:
    servers: list[api.H1ServerAPI] = [http1.H1Server(), http1_fast.H1Server()]
    clients: list[api.H1ClientAPI] = [http1.H1Client(), http1_fast.H1Client()]
    assert [s.stream_id for s in servers] == [0, 0]
    assert [c.reusable for c in clients] == [False, False]


def test_outgoing_fields_are_the_same_before_and_after_their_names_are_known() -> None:
    """The fast checks use a memo of header names already seen valid; it must never change
    what is sent or refused."""
    cases: list[list[tuple[bytes, bytes]]] = [
        [(b"X-Memo-A", b"1"), (b"Content-Length", b"5")],
        [(b"Host", b"h"), (b"X-Memo-B", b"")],
        [(b"x-memo-c", b"a  b"), (b"X-Memo-C", b" lead")],
        [(b"X-Memo-D", b"v"), (b"Host", b"late")],
        [(b"X-Memo-E", b"ok"), (b"content-length", b"1, 1")],
    ]
    for headers in cases:
        outcomes = []
        for _ in range(2):
            s = http1_fast.H1Server()
            s.receive_data(GET)
            try:
                outcomes.append(s.send_response(200, headers))
            except RevproxyError as exc:
                outcomes.append(type(exc).__name__.encode())
        assert outcomes[0] == outcomes[1]
        r = http1.H1Server()
        r.receive_data(GET)
        try:
            assert r.send_response(200, headers) == outcomes[0]
        except (RevproxyError, h11.LocalProtocolError):
            assert outcomes[0] == b"BackendProtocolError"


# --- the plain paths ---------------------------------------------------------------------------
#
# http1_fast reads and writes plain heads on paths of their own (``_plain_request``,
# ``_plain_response``, the first branch of each ``send_*``), with memos of the lines it has
# seen. Each must give what the exact code of the same module gives: the same events, the same
# bytes, the same error, and the same connection state, slot for slot, after every step. The
# exact code is reached by a subclass with the plain paths turned off; h11 stays the
# reference for everything the API shows (``assert_same``).


class ExactServer(http1_fast.H1Server):
    """``H1Server`` with its plain paths turned off."""

    __slots__ = ()

    def _plain_request(self, data: bytes) -> list[Event] | None:
        return None

    def send_response(self, status: int, headers: Headers, reason: bytes = b"") -> bytes:
        return self._send_response_exactly(status, headers, reason)

    def send_data(self, data: bytes) -> bytes:
        return self._send_data_exactly(data)

    def send_end(self, trailers: Headers | None = None) -> bytes:
        return self._send_end_exactly(trailers)


class ExactClient(http1_fast.H1Client):
    """``H1Client`` with its plain paths turned off."""

    __slots__ = ()

    def _plain_response(self, data: bytes) -> list[Event] | None:
        return None

    def send_request(
        self, method: bytes, target: bytes, headers: Iterable[tuple[bytes, bytes]]
    ) -> bytes:
        self.stream_id += 1
        return self._send_request_exactly(method, target, headers)

    def send_data(self, data: bytes) -> bytes:
        return self._send_data_exactly(data)

    def send_end(self, trailers: Headers | None = None) -> bytes:
        return self._send_end_exactly(trailers)


def _slots(conn: Any) -> dict[str, object]:
    """Every slot of the connection: its whole state."""
    names = [n for cls in type(conn).__mro__ for n in getattr(cls, "__slots__", ())]
    state: dict[str, object] = {}
    for name in names:
        value = getattr(conn, name)
        state[name] = bytes(value) if isinstance(value, bytearray) else value
    return state


def _steps(conn: Any, script: Script) -> list[object]:
    """After each step: what it gave (events, bytes or error) and the whole state."""
    results: list[object] = []
    for op, *args in script[1:]:
        try:
            if op == "recv":
                out: object = conn.receive_data(args[0])
            elif op == "next":
                out = conn.start_next_cycle()
            elif op == "reuse":
                if not conn.reusable:
                    break
                out = conn.start_next_cycle()
            else:
                out = getattr(conn, op)(*args)
        except Exception as exc:
            results.append(("raised", type(exc).__name__, str(exc), _slots(conn)))
            break
        results.append((out, _slots(conn)))
    return results


def clear_memos() -> None:
    """Forget every line the plain paths remember, as a fresh worker would."""
    for memo in (
        http1_wire._lines,
        http1_wire._framing_lines,
        http1_wire._sent,
        http1_wire._framing_sent,
        http1_wire._field_names,
        http1_wire._known_names,
        http1_fast_lines._request_lines,
        http1_fast_lines._targets,
        http1_fast_lines._status_lines,
    ):
        memo.clear()


def assert_plain_is_exact(script: Script) -> None:
    """The plain paths give what the exact code gives, memos cold and warm, and what h11
    gives; events are compared unmerged, so even how a body is cut must be the same."""
    server = script[0][0] == "server"
    size = script[0][1] if len(script[0]) > 1 else 16384
    fast_class = http1_fast.H1Server if server else http1_fast.H1Client
    exact_class = ExactServer if server else ExactClient
    clear_memos()
    exact = _steps(exact_class(max_header_size=size), script)
    for memos in ("cold", "warm"):
        if memos == "cold":
            clear_memos()
        fast = _steps(fast_class(max_header_size=size), script)
        assert fast == exact, f"memos {memos}"
    assert_same(script)


HOST = b"Host: app.test\r\n"
BROWSER = (
    b"GET /static/app.js?v=3 HTTP/1.1\r\n"
    b"Host: www.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: text/html,application/xhtml+xml,*/*;q=0.8\r\n"
    b"Accept-Language: en-GB,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Connection: keep-alive\r\n"
    b"Cookie: session=0123456789abcdef; theme=dark\r\n"
    b"Upgrade-Insecure-Requests: 1\r\n"
    b"Sec-Fetch-Dest: document\r\n"
    b"\r\n"
)
NGINX_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Server: nginx/1.24.0\r\n"
    b"Date: Mon, 01 Jul 2024 12:00:00 GMT\r\n"
    b"Content-Type: text/html\r\n"
    b"Content-Length: 10\r\n"
    b"Last-Modified: Mon, 01 Jul 2024 11:00:00 GMT\r\n"
    b"Connection: keep-alive\r\n"
    b'ETag: "6682a0b0-a"\r\n'
    b"Accept-Ranges: bytes\r\n"
    b"\r\n"
)
# What forwarding.response_headers makes of it: what H1Server.send_response gets.
NGINX_OUT = [
    (b"date", b"Mon, 01 Jul 2024 12:00:00 GMT"),
    (b"content-type", b"text/html"),
    (b"content-length", b"10"),
    (b"last-modified", b"Mon, 01 Jul 2024 11:00:00 GMT"),
    (b"etag", b'"6682a0b0-a"'),
    (b"accept-ranges", b"bytes"),
]
# What forwarding.request_headers makes of a request: what H1Client.send_request gets.
FORWARDED = [
    (b"host", b"app.test"),
    (b"user-agent", b"curl/8.5.0"),
    (b"x-forwarded-for", b"127.0.0.1"),
    (b"x-forwarded-proto", b"https"),
    (b"x-forwarded-host", b"app.test"),
    (b"x-forwarded-port", b"443"),
    (b"x-real-ip", b"127.0.0.1"),
]
ANSWER = [("send_response", 200, NGINX_OUT), ("send_data", b"0123456789"), ("send_end",)]


def plain_server(name: str, data: bytes, *more: Step) -> Case:
    """A request received whole, answered as the pipeline answers, then the next cycle."""
    steps: list[Step] = [("server",), ("recv", data)]
    steps += more or [*ANSWER, ("next",), ("recv", b"")]
    return Case(name, steps)


PLAIN_REQUESTS = [
    plain_server("GET", b"GET /small HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"),
    plain_server("browser GET", BROWSER),
    *(
        plain_server(method.decode(), method + b" /x?y=1 HTTP/1.1\r\n" + HOST + b"\r\n")
        for method in (b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE")
    ),
    plain_server(
        "HEAD answered with a length",
        b"HEAD / HTTP/1.1\r\n" + HOST + b"\r\n",
        ("send_response", 200, [(b"content-length", b"99")]),
        ("send_end",),
        ("next",),
    ),
    plain_server(
        "odd but valid fields",
        b"GET / HTTP/1.1\r\n" + HOST + b"X-A:v\r\nx-b:  \t a \x01\x7f\xff b \t\r\nX-C:\r\n"
        b"x-a: again\r\nX.Y~!#$%&'*+^_`|: 1\r\n\r\n",
    ),
    plain_server(
        "long lines are not remembered",
        b"GET /" + b"p" * 300 + b" HTTP/1.1\r\n" + HOST + b"Cookie: " + b"c" * 400 + b"\r\n\r\n",
    ),
    plain_server(
        "mixed-case framing names", b"GET / HTTP/1.1\r\nhOST: a\r\nconnection: Keep-Alive\r\n\r\n"
    ),
    plain_server("Host last", b"GET / HTTP/1.1\r\nAccept: */*\r\nX: 1\r\nHost: a\r\n\r\n"),
    plain_server("empty Host", b"GET / HTTP/1.1\r\nHost:\r\n\r\n"),
    plain_server("two Hosts", b"GET / HTTP/1.1\r\n" + HOST + HOST + b"\r\n"),
    plain_server("no Host", b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n"),
    plain_server("Upgrade", b"GET / HTTP/1.1\r\n" + HOST + b"Upgrade: websocket\r\n\r\n"),
    plain_server(
        "content-length body whole",
        b"POST /f HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\n\r\nhello",
    ),
    plain_server(
        "content-length body in pieces",
        b"POST /f HTTP/1.1\r\n" + HOST + b"Content-Length: 9\r\n\r\nhel",
        ("recv", b"lo, "),
        ("recv", b"you"),
        *ANSWER,
        ("next",),
    ),
    plain_server(
        "content-length body after the head",
        b"PUT /f HTTP/1.1\r\n" + HOST + b"Content-Length: 2\r\n\r\n",
        ("recv", b"ab"),
        *ANSWER,
        ("next",),
    ),
    plain_server(
        "content-length 0 and leading zeros",
        b"POST /f HTTP/1.1\r\n" + HOST + b"Content-Length: 000\r\n\r\n",
    ),
    plain_server(
        "content-length twice",
        b"POST /f HTTP/1.1\r\n" + HOST + b"Content-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    ),
    plain_server(
        "content-length and chunked",
        b"POST /f HTTP/1.1\r\n" + HOST + b"Content-Length: 1\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    plain_server(
        "chunked body whole, with trailers",
        b"POST /f HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
    ),
    plain_server(
        "chunked body later",
        b"POST /f HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n",
        ("recv", b"3\r\nabc\r\n"),
        ("recv", b"0\r\n\r\n"),
        *ANSWER,
        ("next",),
    ),
    plain_server("connection close", b"GET / HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r\n"),
    plain_server(
        "connection close then bytes",
        b"GET / HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r\nGET / HTTP/1.1\r\n",
    ),
    plain_server(
        "connection close with a body",
        b"POST / HTTP/1.1\r\n" + HOST + b"Connection: x, close\r\nContent-Length: 2\r\n\r\nab",
    ),
    plain_server(
        "pipelined keep-alive cycles",
        b"GET /1 HTTP/1.1\r\n" + HOST + b"\r\n"
        b"POST /2 HTTP/1.1\r\n" + HOST + b"Content-Length: 3\r\n\r\nabc"
        b"GET /3 HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r\n",
        *ANSWER,
        ("next",),
        *ANSWER,
        ("next",),
        *ANSWER,
        ("next",),
    ),
    plain_server(
        "pipelined request arriving in halves",
        b"GET /1 HTTP/1.1\r\n" + HOST + b"\r\nGET /2 HTT",
        *ANSWER,
        ("next",),
        ("recv", b"P/1.1\r\n" + HOST + b"\r\n"),
        *ANSWER,
        ("next",),
    ),
    plain_server(
        "request then EOF",
        b"GET / HTTP/1.1\r\n" + HOST + b"\r\n",
        ("recv", b""),
        *ANSWER,
        ("next",),
    ),
    plain_server(
        "head at the limit", b"GET / HTTP/1.1\r\n" + HOST + b"X: " + b"a" * 16330 + b"\r\n\r\n"
    ),
    plain_server(
        "head over the limit", b"GET / HTTP/1.1\r\n" + HOST + b"X: " + b"a" * 16331 + b"\r\n\r\n"
    ),
    plain_server("bare LF in a value", b"GET / HTTP/1.1\r\n" + HOST + b"X: a\nb\r\n\r\n"),
    plain_server("bare CR in a value", b"GET / HTTP/1.1\r\n" + HOST + b"X: a\rb\r\n\r\n"),
    plain_server("NUL in a value", b"GET / HTTP/1.1\r\n" + HOST + b"X: a\x00b\r\n\r\n"),
    plain_server("VT in a value", b"GET / HTTP/1.1\r\n" + HOST + b"X: a\x0bb\r\n\r\n"),
    plain_server("obs-fold", b"GET / HTTP/1.1\r\n" + HOST + b"X: a\r\n b\r\n\r\n"),
    plain_server("space before colon", b"GET / HTTP/1.1\r\n" + HOST + b"X : a\r\n\r\n"),
    plain_server("no colon", b"GET / HTTP/1.1\r\n" + HOST + b"X a\r\n\r\n"),
    plain_server("target with DEL", b"GET /\x7f HTTP/1.1\r\n" + HOST + b"\r\n"),
    plain_server("target with obs-text", b"GET /\xe9 HTTP/1.1\r\n" + HOST + b"\r\n"),
    plain_server("target with tab", b"GET /a\tb HTTP/1.1\r\n" + HOST + b"\r\n"),
    plain_server("lower-case method", b"get / HTTP/1.1\r\n" + HOST + b"\r\n"),
    plain_server("HTTP/1.0", b"GET / HTTP/1.0\r\n" + HOST + b"\r\n"),
    plain_server(
        "answered without a length",
        b"GET / HTTP/1.1\r\n" + HOST + b"\r\n",
        ("send_response", 200, [(b"x", b"1")]),
        ("send_data", b"abc"),
        ("send_end",),
        ("next",),
    ),
    plain_server(
        "answered 204 and 304",
        b"GET /1 HTTP/1.1\r\n" + HOST + b"\r\nGET /2 HTTP/1.1\r\n" + HOST + b"\r\n",
        ("send_response", 204, [(b"x", b"1")]),
        ("send_end",),
        ("next",),
        ("send_response", 304, [(b"etag", b'"x"'), (b"content-length", b"5")]),
        ("send_end",),
        ("next",),
    ),
    plain_server(
        "answered with odd fields",
        b"GET / HTTP/1.1\r\n" + HOST + b"\r\n",
        ("send_response", 404, [(b"Content-Length", b"0"), (b"X-A", b"a\tb"), (b"x", b"")]),
        ("send_end",),
        ("next",),
    ),
    plain_server(
        "answered with a Host",
        b"GET / HTTP/1.1\r\n" + HOST + b"\r\n",
        ("send_response", 200, [(b"host", b"h"), (b"content-length", b"0")]),
        ("send_end",),
        ("next",),
    ),
    plain_server(
        "answered with a Host not first",
        b"GET / HTTP/1.1\r\n" + HOST + b"\r\n",
        ("send_response", 200, [(b"content-length", b"0"), (b"host", b"h")]),
        ("send_end",),
    ),
    plain_server(
        "answered with a bad value",
        b"GET / HTTP/1.1\r\n" + HOST + b"\r\n",
        ("send_response", 200, [(b"content-length", b"0"), (b"x", b"a\r\nb")]),
    ),
    plain_server(
        "answered with a bad length",
        b"GET / HTTP/1.1\r\n" + HOST + b"\r\n",
        ("send_response", 200, [(b"content-length", b"-1")]),
    ),
    plain_server(
        "answered with two lengths",
        b"GET / HTTP/1.1\r\n" + HOST + b"\r\n",
        ("send_response", 200, [(b"content-length", b"1"), (b"content-length", b"1")]),
        ("send_data", b"x"),
        ("send_end",),
    ),
    plain_server(
        "answered with a reason",
        b"GET / HTTP/1.1\r\n" + HOST + b"\r\n",
        ("send_response", 200, [(b"content-length", b"0")], b"Fine"),
        ("send_end",),
    ),
    plain_server(
        "answered with an unknown status",
        b"GET / HTTP/1.1\r\n" + HOST + b"\r\n",
        ("send_response", 599, [(b"content-length", b"0")]),
        ("send_end",),
    ),
    plain_server(
        "answered with too much",
        b"GET / HTTP/1.1\r\n" + HOST + b"\r\n",
        ("send_response", 200, [(b"content-length", b"2")]),
        ("send_data", b"a"),
        ("send_data", b"bc"),
    ),
    plain_server(
        "answered with too little",
        b"GET / HTTP/1.1\r\n" + HOST + b"\r\n",
        ("send_response", 200, [(b"content-length", b"2")]),
        ("send_data", b""),
        ("send_data", b"a"),
        ("send_end",),
    ),
    plain_server(
        "answered with trailers",
        b"GET / HTTP/1.1\r\n" + HOST + b"\r\n",
        ("send_response", 200, [(b"content-length", b"0")]),
        ("send_end", [(b"x", b"1")]),
    ),
    plain_server(
        "answered before the body came",
        b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 4\r\n\r\nab",
        *ANSWER,
        ("recv", b"cd"),
        ("next",),
    ),
    plain_server(
        "answered as the client closed",
        b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 2\r\n\r\nab",
        ("recv", b""),
        *ANSWER,
        ("next",),
    ),
]


def plain_client(
    name: str,
    *received: bytes,
    method: bytes = b"GET",
    headers: Sequence[tuple[bytes, bytes]] = FORWARDED,
    body: bytes = b"",
    again: bool = True,
) -> Case:
    """A request sent as the pipeline sends it, the response received in the given pieces,
    then (``again``) the next cycle and a second exchange."""
    steps: list[Step] = [("client",), ("send_request", method, b"/p?q=1", list(headers))]
    if body:
        steps.append(("send_data", body))
    steps.append(("send_end",))
    steps += [("recv", piece) for piece in received]
    if again:
        steps += [
            ("start_next_cycle",),
            ("send_request", b"GET", b"/2", list(FORWARDED)),
            ("send_end",),
            ("recv", NGINX_HEAD + b"0123456789"),
        ]
    return Case(name, steps)


PLAIN_RESPONSES = [
    plain_client("nginx", NGINX_HEAD + b"0123456789"),
    plain_client("nginx, body later", NGINX_HEAD, b"01234", b"56789"),
    plain_client("nginx, head and part of the body", NGINX_HEAD + b"0123", b"456789"),
    plain_client("bytes past the response", NGINX_HEAD + b"0123456789HTTP/1.1"),
    plain_client(
        "length 0",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    ),
    plain_client("no reason", b"HTTP/1.1 200\r\nContent-Length: 1\r\n\r\nx"),
    plain_client("empty reason", b"HTTP/1.1 404 \r\nContent-Length: 1\r\n\r\nx"),
    plain_client("odd reason", b"HTTP/1.1 599 So \t\x01\xff so\r\nContent-Length: 1\r\n\r\nx"),
    plain_client("reason with NUL", b"HTTP/1.1 200 O\x00K\r\nContent-Length: 1\r\n\r\nx"),
    plain_client("status 1000", b"HTTP/1.1 1000 OK\r\nContent-Length: 1\r\n\r\nx"),
    plain_client("status 20x", b"HTTP/1.1 20x OK\r\nContent-Length: 1\r\n\r\nx"),
    plain_client("status 200OK", b"HTTP/1.1 200OK\r\nContent-Length: 1\r\n\r\nx"),
    plain_client("HTTP/1.0", b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", again=False),
    plain_client(
        "1xx first",
        b"HTTP/1.1 100 Continue\r\n\r\n" + NGINX_HEAD + b"0123456789",
    ),
    plain_client(
        "chunked",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ),
    plain_client(
        "chunked later, with trailers",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"5\r\nhello\r\n",
        b"0\r\nX-T: 1\r\n\r\n",
    ),
    plain_client(
        "chunked then length",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nT: 1\r\n\r\n",
    ),
    plain_client(
        "delimited by close", b"HTTP/1.1 200 OK\r\nX: 1\r\n\r\nuntil", b" the end", b"", again=False
    ),
    plain_client("204", b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"),
    plain_client("304", b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n"),
    plain_client("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n", method=b"HEAD"),
    plain_client(
        "HEAD then bytes", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", method=b"HEAD"
    ),
    plain_client(
        "response says close",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx",
        again=False,
    ),
    plain_client(
        "response says close, body later",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n",
        b"xy",
        b"",
        again=False,
    ),
    plain_client(
        "Upgrade in a response", b"HTTP/1.1 200 OK\r\nUpgrade: h2c\r\nContent-Length: 0\r\n\r\n"
    ),
    plain_client(
        "two lengths", b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx"
    ),
    plain_client("bad length", b"HTTP/1.1 200 OK\r\nContent-Length: 0x1\r\n\r\nx"),
    plain_client("TE gzip", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nx"),
    plain_client("bare LF", b"HTTP/1.1 200 OK\r\nX: a\nContent-Length: 1\r\n\r\nx"),
    plain_client("obs-fold", b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 1\r\n\r\nx"),
    plain_client("bad name", b"HTTP/1.1 200 OK\r\nX Y: a\r\nContent-Length: 1\r\n\r\nx"),
    plain_client("head over the limit", b"HTTP/1.1 200 OK\r\nX: " + b"a" * 16400 + b"\r\n\r\n"),
    plain_client("EOF inside the body", NGINX_HEAD + b"01234", b""),
    plain_client(
        "request with a body",
        NGINX_HEAD + b"0123456789",
        method=b"POST",
        headers=[*FORWARDED, (b"content-length", b"3")],
        body=b"abc",
    ),
    plain_client(
        "response before the request body",
        NGINX_HEAD + b"0123456789",
        method=b"POST",
        headers=[*FORWARDED, (b"content-length", b"3")],
        again=False,
    ),
    plain_client("request without Host", NGINX_HEAD + b"0123456789", headers=FORWARDED[1:]),
    plain_client(
        "request with Host not first", NGINX_HEAD + b"0123456789", headers=FORWARDED[::-1]
    ),
    plain_client(
        "request with Host capitalised",
        NGINX_HEAD + b"0123456789",
        headers=[(b"Host", b"app.test"), *FORWARDED[1:]],
    ),
    plain_client(
        "request with an empty value",
        NGINX_HEAD + b"0123456789",
        headers=[*FORWARDED, (b"x-empty", b"")],
    ),
    plain_client(
        "request with a bad value",
        NGINX_HEAD + b"0123456789",
        headers=[*FORWARDED, (b"x-bad", b"a\nb")],
    ),
    plain_client(
        "chunked request",
        NGINX_HEAD + b"0123456789",
        method=b"POST",
        headers=[*FORWARDED, (b"transfer-encoding", b"chunked")],
        body=b"abc",
    ),
    plain_client(
        "request said close",
        NGINX_HEAD + b"0123456789",
        headers=[*FORWARDED, (b"connection", b"close")],
        again=False,
    ),
    plain_client("CONNECT", b"HTTP/1.1 200 OK\r\n\r\nTUNNEL", method=b"CONNECT", again=False),
    plain_client(
        "upgrade refused",
        NGINX_HEAD + b"0123456789",
        headers=[*FORWARDED, (b"upgrade", b"websocket"), (b"connection", b"upgrade")],
        again=False,
    ),
]


@pytest.mark.parametrize("case", PLAIN_REQUESTS + PLAIN_RESPONSES, ids=str)
def test_plain_paths_are_the_exact_code(case: Case) -> None:
    assert_plain_is_exact(case.script)


@pytest.mark.parametrize("case", REQUESTS + RESPONSES + SENDS + CLIENT_SENDS, ids=str)
def test_plain_paths_are_the_exact_code_on_the_whole_corpus(case: Case) -> None:
    """The plain paths say "not plain" to all that is odd in the corpus, and the rest they
    read as the exact code does."""
    clear_memos()
    server = case.script[0][0] == "server"
    exact = _steps((ExactServer if server else ExactClient)(), case.script)
    for _ in ("cold", "warm"):
        fast = _steps((http1_fast.H1Server if server else http1_fast.H1Client)(), case.script)
        assert fast == exact


def test_plain_heads_take_the_plain_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """So that the comparisons above compare something: a plain exchange never reaches the
    exact code."""

    def exact(*args: object) -> object:
        raise AssertionError("the exact code was reached")

    for name in ("_try_head", "_send_response_exactly", "_send_data_exactly", "_send_end_exactly"):
        monkeypatch.setattr(http1_fast.H1Server, name, exact)
    for name in (
        "_whole_head",
        "_send_request_exactly",
        "_send_data_exactly",
        "_send_end_exactly",
    ):
        monkeypatch.setattr(http1_fast.H1Client, name, exact)
    monkeypatch.setattr(http1_wire, "outgoing", exact)
    for memos in ("cold", "warm"):
        if memos == "cold":
            clear_memos()
        server, client = http1_fast.H1Server(), http1_fast.H1Client()
        post = BROWSER.replace(b"GET", b"POST", 1)[:-2] + b"Content-Length: 2\r\n\r\nab"
        for request in (BROWSER, post):
            events = server.receive_data(request)
            assert type(events[0]) is RequestReceived
            assert client.send_request(b"GET", b"/x", FORWARDED) + client.send_end()
            events = client.receive_data(NGINX_HEAD + b"0123456789")
            assert [type(ev).__name__ for ev in events] == [
                "ResponseReceived",
                "DataReceived",
                "MessageEnded",
            ]
            server.send_response(200, NGINX_OUT)
            server.send_data(b"0123456789")
            server.send_end([])
            assert client.reusable and server.keep_alive
            client.start_next_cycle()
            assert server.start_next_cycle() == []


def test_memos_are_bounded_and_remember_only_what_they_accepted() -> None:
    clear_memos()
    server = http1_fast.H1Server()
    # Lines refused, or longer than MAX_LINE, are never remembered.
    with pytest.raises(RevproxyError):
        server.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\nX Y: 1\r\n\r\n")
    long_line = b"X-Long: " + b"v" * http1_wire.MAX_LINE
    server = http1_fast.H1Server()
    server.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n" + long_line + b"\r\n\r\n")
    assert b"X Y: 1" not in http1_wire._lines
    assert long_line not in http1_wire._lines
    assert b"Host: a" in http1_wire._framing_lines
    # A memo that is full forgets everything, so it follows the traffic of the moment.
    for i in range(http1_wire.MAX_LINES + 10):
        server = http1_fast.H1Server()
        server.receive_data(b"GET /%d HTTP/1.1\r\nHost: a\r\nX-N: %d\r\n\r\n" % (i, i))
        assert len(http1_wire._lines) <= http1_wire.MAX_LINES
        assert len(http1_fast_lines._request_lines) <= http1_wire.MAX_LINES
        assert len(http1_fast_lines._targets) <= http1_wire.MAX_LINES
    client = http1_fast.H1Client()
    for i in range(http1_wire.MAX_LINES + 10):
        client.send_request(b"GET", b"/", [(b"host", b"a"), (b"x-n", b"%d" % i)])
        client.send_end()
        client.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        client.start_next_cycle()
        assert len(http1_wire._sent) <= http1_wire.MAX_LINES


# Generated plain exchanges: every field a plain path may see, framing of each kind, several
# messages on one connection; with now and then something that is not plain.
plain_names = st.one_of(
    st.sampled_from(
        [b"Accept", b"user-agent", b"X-Forwarded-For", b"Cookie", b"ETag", b"Server", b"x"]
    ),
    names,
)
plain_values = st.one_of(
    st.sampled_from([b"1", b"text/html", b"a b", b"a\tb", b"\x01\x7f\xff", b"", b"close"]),
    value_bytes,
)
plain_field_lists = st.lists(st.tuples(plain_names, ows, plain_values, ows), max_size=6)


@st.composite
def plain_requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS"]))
    target = draw(st.sampled_from([b"/", b"/a?b=c", b"/%20x", b"/a/b/c.js?v=3"]))
    lines = [n + b":" + o1 + v + o2 for n, o1, v, o2 in draw(plain_field_lists)]
    lines.insert(draw(st.integers(0, len(lines))), b"Host: " + draw(st.sampled_from([b"a", b""])))
    if draw(st.integers(0, 9)) == 0:
        lines.append(draw(st.sampled_from([b"Connection: close", b"Connection: keep-alive, x"])))
    framing, body = draw(bodies())
    head = b"%s %s HTTP/1.1\r\n" % (method, target)
    return head + b"".join(line + b"\r\n" for line in lines + framing) + b"\r\n" + body


@st.composite
def plain_answers(draw: st.DrawFn) -> list[Step]:
    fields = [(n.lower(), v.strip(b" \t")) for n, _, v, _ in draw(plain_field_lists)]
    body = draw(st.sampled_from([b"", b"x", b"hello"]))
    if draw(st.booleans()):
        fields.append((b"content-length", b"%d" % len(body)))
    status = draw(st.sampled_from([200, 200, 204, 304, 404]))
    steps: list[Step] = [("send_response", status, fields)]
    if body and status not in (204, 304):
        steps.append(("send_data", body))
    steps += [("send_end",), ("next",)]
    return steps


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_generated_plain_requests(data: st.DataObject) -> None:
    requests_ = data.draw(st.lists(plain_requests(), min_size=1, max_size=3))
    pipelined = data.draw(st.booleans())
    script: list[Step] = [("server",)]
    if pipelined:
        script.append(("recv", b"".join(requests_)))
    for request in requests_:
        if not pipelined:
            script.append(("recv", request))
        script += data.draw(plain_answers())
    script.append(("recv", b""))
    assert_plain_is_exact(script)


@st.composite
def plain_responses(draw: st.DrawFn) -> bytes:
    status = draw(st.sampled_from([b"200", b"200", b"204", b"304", b"404", b"599", b"103"]))
    reason = draw(st.sampled_from([b" OK", b"", b" ", b" Odd \t reason"]))
    lines = [n + b":" + o1 + v + o2 for n, o1, v, o2 in draw(plain_field_lists)]
    if draw(st.integers(0, 9)) == 0:
        lines.append(b"Connection: close")
    framing, body = draw(bodies())
    head = b"HTTP/1.1 %s%s\r\n" % (status, reason)
    return head + b"".join(line + b"\r\n" for line in lines + framing) + b"\r\n" + body


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_generated_plain_responses(data: st.DataObject) -> None:
    script: list[Step] = [("client",)]
    for _ in range(data.draw(st.integers(1, 3))):
        method = data.draw(st.sampled_from([b"GET", b"HEAD", b"POST"]))
        fields = [(n.lower(), v.strip(b" \t")) for n, _, v, _ in data.draw(plain_field_lists)]
        script += [
            ("send_request", method, b"/p", [(b"host", b"o"), *fields]),
            ("send_end",),
            ("recv", data.draw(plain_responses())),
            ("reuse",),
        ]
    assert_plain_is_exact(script)


def test_a_bytearray_is_read_as_bytes_are() -> None:
    """``receive_data`` takes a bytearray too (its type says so): the same events and state,
    events that carry bytes, and nothing that still refers to the caller's buffer."""
    request = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nab"
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nxy"
    for impl in (http1, http1_fast):
        results = []
        for kind in (bytes, bytearray):
            server = impl.H1Server()
            client = impl.H1Client()
            client.send_request(b"POST", b"/", [(b"host", b"a"), (b"content-length", b"4")])
            client.send_data(b"abcd")
            client.send_end()
            got: list[Event] = []
            for piece in (request, b"cd"):
                buf = kind(piece)
                got += server.receive_data(buf)
                if isinstance(buf, bytearray):
                    buf[:] = b"\0" * len(buf)  # the caller reuses its buffer
            server.send_response(200, [(b"content-length", b"4")])
            for piece in (response, b"zw"):
                buf = kind(piece)
                got += client.receive_data(buf)
                if isinstance(buf, bytearray):
                    buf[:] = b"\0" * len(buf)
            for ev in got:
                for value in vars_of(ev):
                    assert not isinstance(value, bytearray | memoryview)
            state = _slots(server) if impl is http1_fast else {}
            results.append((got, state))
        assert results[0] == results[1]
        assert [type(ev).__name__ for ev in results[0][0]] == [
            "RequestReceived",
            "DataReceived",
            "DataReceived",
            "MessageEnded",
            "ResponseReceived",
            "DataReceived",
            "DataReceived",
            "MessageEnded",
        ]


def vars_of(ev: Event) -> list[object]:
    """The values of an event's fields."""
    return [getattr(ev, name) for name in type(ev).__slots__]
