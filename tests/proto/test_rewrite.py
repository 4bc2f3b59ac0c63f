"""Header edits and path prefixes of routes (proto/rewrite.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from revproxy.proto.rewrite import (
    Template,
    apply_edits,
    check_edit_name,
    compile_edits,
    parse_template,
    rewrite_prefix,
)

VALUES = {"client_ip": b"192.0.2.7", "request_id": b"ab12", "host": b"www.example", "user": b""}


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("prod", (b"prod",)),
        ("", (b"",)),
        ("{client_ip}", ("client_ip",)),
        ("ip={client_ip}; id={request_id}", (b"ip=", "client_ip", b"; id=", "request_id")),
        ("{{literal}}", (b"{literal}",)),
        ("{host}{user}", ("host", "user")),
    ],
)
def test_templates(text: str, parts: tuple[bytes | str, ...]) -> None:
    assert parse_template(text) == Template(parts)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{nope}", "unknown field {nope}"),
        ("{client_ip", '"{" without "}"'),
        ("a}b", '"}" without "{"'),
        ("a\r\nX-Evil: 1", "CR, LF or NUL"),
        ("caf\u00e9\u20ac", "Latin-1"),
    ],
)
def test_bad_templates(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=None) as err:
        parse_template(text)
    assert reason in str(err.value)


def test_render_strips_line_breaks_from_values() -> None:
    t = parse_template("host={host}")
    assert t.render({"host": b"a\r\nX-Evil: 1\x00"}) == b"host=aX-Evil: 1"
    assert t.constant is None
    assert parse_template("x").constant == b"x"


@pytest.mark.parametrize(
    "name", ["Content-Length", "transfer-encoding", "Host", "Connection", "TE"]
)
def test_framing_names_refused(name: str) -> None:
    with pytest.raises(ValueError, match="cannot be edited"):
        check_edit_name(name)


@pytest.mark.parametrize("name", ["", ":path", "X Env", "x-ü", "a\r\nb"])
def test_not_header_names(name: str) -> None:
    with pytest.raises(ValueError, match="not a header name"):
        check_edit_name(name)


def test_edits_order_remove_set_add() -> None:
    edits = compile_edits(
        [("X-Env", "prod"), ("X-Client", "{client_ip}")],
        [("Via-Note", "id {request_id}")],
        ["Cache-Control", "X-Drop"],
    )
    headers = [
        (b"cache-control", b"no-cache"),
        (b"x-env", b"dev"),
        (b"x-env", b"test"),
        (b"accept", b"*/*"),
        (b"via-note", b"kept"),
        (b"x-drop", b"1"),
    ]
    out = apply_edits(headers, edits, VALUES)
    assert out == [
        (b"accept", b"*/*"),
        (b"via-note", b"kept"),
        (b"x-env", b"prod"),
        (b"x-client", b"192.0.2.7"),
        (b"via-note", b"id ab12"),
    ]
    assert headers[0] == (b"cache-control", b"no-cache")  # the input is not changed
    assert edits.needs_values
    assert not compile_edits([("A", "b")], [], []).needs_values


@pytest.mark.parametrize(
    ("target", "strip", "add", "out"),
    [
        (b"/api/users?x=1", b"/api", None, b"/users?x=1"),
        (b"/api", b"/api", None, b"/"),
        (b"/api/", b"/api", None, b"/"),
        (b"/apis/x", b"/api", None, b"/apis/x"),
        (b"/x", None, b"/v1", b"/v1/x"),
        (b"/", None, b"/v1", b"/v1/"),
        (b"/api/x?q", b"/api", b"/v2", b"/v2/x?q"),
        (b"/api/x", b"/api/", None, b"/api/x"),  # config never gives a trailing slash
    ],
)
def test_prefixes(target: bytes, strip: bytes | None, add: bytes | None, out: bytes) -> None:
    assert rewrite_prefix(target, strip, add) == out


@given(st.text(max_size=40))
def test_parse_template_total(text: str) -> None:
    try:
        t = parse_template(text)
    except ValueError:
        return
    assert b"\r" not in t.render(VALUES) and b"\n" not in t.render(VALUES)
