"""Request-target normalisation (proto/target.py), Host checks (proto/host.py) and
impossible request starts (proto/http1/head.py): bytes in, bytes out."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from revproxy.errors import ClientProtocolError
from revproxy.proto import target as t
from revproxy.proto.host import valid_authority
from revproxy.proto.http1.head import impossible_request_start


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        (b"/", b"/"),
        (b"/admin/x", b"/admin/x"),
        # The bypasses of a `path = "/admin/"` rule found by attacking the proxy.
        (b"//admin/x", b"/admin/x"),
        (b"/./admin/x", b"/admin/x"),
        (b"/x/../admin/x", b"/admin/x"),
        (b"/%61dmin/x", b"/admin/x"),
        (b"/%61DMIN/x", b"/aDMIN/x"),  # %44 etc. decode to themselves: case is the client's
        (b"/x/%2e%2e/admin/x", b"/admin/x"),
        (b"/x/%2E./admin/x", b"/admin/x"),
        (b"/a//b///c", b"/a/b/c"),
        (b"/a/b/.", b"/a/b/"),
        (b"/a/b/..", b"/a/"),
        (b"/..", b"/"),
        (b"/../../etc/passwd", b"/etc/passwd"),
        (b"/a/./b/../c/", b"/a/c/"),
        (b"/.well-known/acme-challenge/tok", b"/.well-known/acme-challenge/tok"),
        (b"/a..b/c.", b"/a..b/c."),
        # Reserved characters stay escaped, upper-cased (RFC 3986 §6.2.2.1).
        (b"/a%3fb", b"/a%3Fb"),
        (b"/caf%c3%a9", b"/caf%C3%A9"),
        (b"/a%20b", b"/a%20b"),
        # The query is never touched.
        (b"/a//b?x=/../y&z=%2f", b"/a/b?x=/../y&z=%2f"),
        (b"/?q=%61", b"/?q=%61"),
    ],
)
def test_paths_are_normalised(raw: bytes, normal: bytes) -> None:
    assert t.normalize_target(b"GET", raw) == normal


@pytest.mark.parametrize(
    "raw",
    [b"/admin%2fx", b"/admin%2Fx", b"/a%5cb", b"/a%00b", b"/a\\b", b"/a%2", b"/a%zz", b"/a%"],
)
def test_escaped_separators_and_bad_escapes_are_refused(raw: bytes) -> None:
    with pytest.raises(ClientProtocolError) as caught:
        t.normalize_target(b"GET", raw)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("raw", "kept"),
    [(b"/admin%2fx", b"/admin%2Fx"), (b"/a%5cb", b"/a%5Cb"), (b"/a%00b", b"/a%00b")],
)
def test_keep_passes_escaped_separators_on_upper_cased(raw: bytes, kept: bytes) -> None:
    assert t.normalize_target(b"GET", raw, reject_escaped=False) == kept


def test_keep_still_refuses_malformed_escapes() -> None:
    with pytest.raises(ClientProtocolError):
        t.normalize_target(b"GET", b"/a%g0", reject_escaped=False)


@pytest.mark.parametrize(
    ("method", "raw"),
    [(b"OPTIONS", b"*"), (b"CONNECT", b"example.com:443"), (b"CONNECT", b"[::1]:8443")],
)
def test_other_forms_for_their_methods(method: bytes, raw: bytes) -> None:
    assert t.normalize_target(method, raw) == raw


@pytest.mark.parametrize(
    ("method", "raw"),
    [
        (b"GET", b"*"),
        (b"GET", b"example.com:443"),
        (b"GET", b"admin/x"),
        (b"CONNECT", b"example.com"),
        (b"CONNECT", b"example.com:https"),
        (b"CONNECT", b"x:80/x"),
        (b"POST", b"?x"),
    ],
)
def test_a_target_of_the_wrong_form_is_refused(method: bytes, raw: bytes) -> None:
    with pytest.raises(ClientProtocolError):
        t.normalize_target(method, raw)


def test_memo_returns_the_same_answer_and_stays_bounded() -> None:
    first = t.normalize_target(b"GET", b"/memo//x")
    assert t.normalize_target(b"GET", b"/memo//x") == first == b"/memo/x"
    for i in range(t._MEMO_MAX + 10):
        t.normalize_target(b"GET", b"/m/%d" % i)
    assert len(t._memos[True]) <= t._MEMO_MAX


_segment = st.sampled_from([b"a", b"b", b".", b"..", b"", b"%2e", b"%2E%2e", b"%61", b"x%3F"])


@given(st.lists(_segment, max_size=12), st.booleans())
def test_normal_form_properties(segments: list[bytes], trailing: bool) -> None:
    raw = b"/" + b"/".join(segments) + (b"/" if trailing else b"")
    out = t.normalize_target(b"GET", raw)
    assert out.startswith(b"/")
    assert b"//" not in out
    parts = out.split(b"/")
    assert b"." not in parts and b".." not in parts
    assert b"%2e" not in out.lower() and b"%61" not in out.lower()
    # Idempotent: the origin, normalising again, finds the same path.
    assert t.normalize_target(b"GET", out) == out


@given(st.binary(max_size=64))
def test_any_bytes_give_a_path_or_a_400(raw: bytes) -> None:
    try:
        out = t.normalize_target(b"GET", b"/" + raw)
    except ClientProtocolError:
        return
    assert out.startswith(b"/")


# --- Host / :authority (proto/host.py) ---------------------------------------------------


@pytest.mark.parametrize(
    "authority",
    [b"example.com", b"Example.COM:8443", b"[::1]:80", b"[2001:db8::1]", b"10.0.0.1", b"a:",
     b"xn--bcher-kva.example", b"a%41b"],
)  # fmt: skip
def test_valid_authorities(authority: bytes) -> None:
    assert valid_authority(authority)


@pytest.mark.parametrize(
    "authority",
    [b"", b"a b", b"u@h", b"user:pw@h", b"a:1:2", b"a:80:80", b"[::1", b"[zz]:80", b"a:123456",
     b"a:8o", b"a%2", b"a\tb", b"a/b", b"\xff"],
)  # fmt: skip
def test_malformed_authorities(authority: bytes) -> None:
    assert not valid_authority(authority)


@pytest.mark.parametrize(
    ("start", "impossible"),
    [
        (b"GET / HTTP/1.1\r\n", False),
        (b"GE", False),
        (b"\r\n\r\nPOST /x", False),
        (b"PRI * HTTP/2.0\r\n", False),
        (b"\x16\x03\x01\x00\xa5\x01\x00", True),  # a TLS ClientHello on a plain port
        (b"GET /\x00x", True),
        (b" GET /", True),
        (b"\xff\xfe", True),
        (b"G\x01ET", True),
    ],
)
def test_impossible_request_starts(start: bytes, impossible: bool) -> None:
    assert impossible_request_start(start) is impossible
