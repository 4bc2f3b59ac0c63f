"""Basic and Digest credentials (proto/httpauth.py): RFC 7617 and RFC 7616's own examples."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from revproxy.proto import httpauth as a

# RFC 7616 §3.9.1: the same request, answered with MD5 and with SHA-256.
RFC_FIELDS = (
    'username="Mufasa", realm="http-auth@example.org", uri="/dir/index.html", '
    'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", nc=00000001, '
    'cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", qop=auth, '
    'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
)
RFC_MD5 = f'Digest {RFC_FIELDS}, algorithm=MD5, response="8ca523f5e9506fed4657c9700eebdbec"'
RFC_SHA256 = (
    f"Digest {RFC_FIELDS}, algorithm=SHA-256, "
    'response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"'
)


@pytest.mark.parametrize(("value", "algorithm"), [(RFC_MD5, "MD5"), (RFC_SHA256, "SHA-256")])
def test_rfc_7616_examples(value: str, algorithm: str) -> None:
    creds = a.parse_digest(value.encode())
    assert creds is not None and creds.algorithm == algorithm and creds.nc == 1
    stored = a.ha1("Mufasa", "http-auth@example.org", "Circle of Life", algorithm)
    assert a.response_matches(creds, stored, "GET")
    assert not a.response_matches(creds, stored, "POST")
    wrong = a.ha1("Mufasa", "http-auth@example.org", "circle of life", algorithm)
    assert not a.response_matches(creds, wrong, "GET")


@pytest.mark.parametrize(
    "value",
    [
        b"Basic Zm9vOmJhcg==",
        b"Digest",
        b'Digest username="u"',
        RFC_MD5.replace("qop=auth", "qop=auth-int").encode(),
        RFC_MD5.replace("nc=00000001", "nc=1").encode(),
        RFC_MD5.replace("algorithm=MD5", "algorithm=SHA-512").encode(),
        RFC_MD5.replace('username="Mufasa", ', 'username="Mufasa", username="Scar", ').encode(),
        b'Digest username="unterminated',
        b"Digest \xff\xfe",
    ],
)
def test_malformed_digest_is_none(value: bytes) -> None:
    assert a.parse_digest(value) is None


def test_basic() -> None:
    assert a.parse_basic(b"Basic " + base64.b64encode(b"al:ice:pw")) == a.BasicCredentials(
        "al", "ice:pw"
    )
    assert a.parse_basic(b"basic " + base64.b64encode("jos\u00e9:p\u00e4ss".encode())) == (
        a.BasicCredentials("jos\u00e9", "p\u00e4ss")
    )
    encoded = [base64.b64encode(raw) for raw in (b"nocolon", b":pw", b"\xff:x")]
    for bad in [b"Basic", b"Basic !!!", b"Bearer abc", *(b"Basic " + e for e in encoded)]:
        assert a.parse_basic(bad) is None
    assert a.basic_challenge('a "b"') == b'Basic realm="a \\"b\\"", charset="UTF-8"'


def test_nonces_are_ours_and_age() -> None:
    key = b"k" * 32
    nonce = a.make_nonce(key, "staff", 1000.0)
    assert a.nonce_age(key, "staff", nonce, 1030.5) == pytest.approx(30.5)
    assert a.nonce_age(key, "other realm", nonce, 1030.5) is None
    assert a.nonce_age(b"x" * 32, "staff", nonce, 1030.5) is None
    assert a.nonce_age(key, "staff", nonce, 999.0) is None  # from the future
    assert a.nonce_age(key, "staff", nonce[:-2] + "AA", 1030.5) is None
    assert a.nonce_age(key, "staff", "not base64!", 1030.5) is None


def test_challenges() -> None:
    value = a.digest_challenge("staff", "abc", algorithm="MD5", stale=True, opaque="o")
    assert value == (
        b'Digest realm="staff", qop="auth", algorithm=MD5, nonce="abc", opaque="o", stale=true'
    )


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_give_none(value: bytes) -> None:
    a.parse_digest(b"Digest " + value)
    a.parse_basic(b"Basic " + value)
