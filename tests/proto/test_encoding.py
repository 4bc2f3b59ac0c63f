"""Response compression decisions (proto/encoding.py): negotiation, what is left alone, and the
head of a compressed response."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from revproxy.proto.encoding import (
    DEFAULT_TYPES,
    ENCODINGS,
    SKIP_REASONS,
    accept_encoding,
    compressed_headers,
    etag_with,
    etag_without,
    is_type_pattern,
    media_type,
    negotiate,
    parse_accept_encoding,
    skip_reason,
    strip_etag_suffixes,
    type_matches,
    with_vary,
)
from revproxy.proto.events import Headers

# --- negotiate ---------------------------------------------------------------------------------

NEGOTIATE = [
    # (Accept-Encoding, offered, chosen)
    (None, ENCODINGS, None),  # no field: we compress only for clients that ask
    (b"", ENCODINGS, None),  # empty: "does not want any content coding"
    (b"gzip, deflate, br, zstd", ENCODINGS, "zstd"),  # Chrome: equal weights, our order
    (b"gzip, deflate, br", ENCODINGS, "br"),  # Safari
    (b"gzip, deflate", ENCODINGS, "gzip"),
    (b"deflate", ENCODINGS, None),
    (b"identity", ENCODINGS, None),
    (b"gzip, br, zstd", ("gzip", "br", "zstd"), "gzip"),  # the route's order
    (b"gzip, br", ("zstd",), None),
    (b"gzip;q=0.5, br;q=0.8", ENCODINGS, "br"),
    (b"gzip;q=1, br;q=0.999", ENCODINGS, "gzip"),
    (b"zstd;q=0.001, gzip;q=0.001", ENCODINGS, "zstd"),
    (b"zstd;q=0, br;q=0, gzip", ENCODINGS, "gzip"),
    (b"zstd;q=0.0, br;q=0.00, gzip;q=0.000", ENCODINGS, None),
    (b"br;q=0.", ENCODINGS, None),  # "0." is a qvalue
    (b"*", ENCODINGS, "zstd"),
    (b"*;q=0.5, gzip", ENCODINGS, "gzip"),  # gzip is listed by name with the higher weight
    (b"*;q=0, gzip", ENCODINGS, "gzip"),
    (b"*;q=0", ENCODINGS, None),
    (b"zstd;q=0, *", ENCODINGS, "br"),  # * gives its weight only to codings not listed
    (b"identity;q=0, *;q=0", ENCODINGS, None),
    (b"x-gzip", ENCODINGS, "gzip"),  # RFC 9110 §8.4.1.3
    (b"x-gzip;q=0, gzip", ENCODINGS, None),  # the same coding twice: the lowest weight
    (b"gzip, gzip;q=0", ENCODINGS, None),
    (b"GZIP;Q=0.3, Br;q=0.2", ENCODINGS, "gzip"),  # codings and "q" are case-insensitive
    (b"  gzip ;  q=0.7 ,\tbr\t;q=0.9  ", ENCODINGS, "br"),  # OWS around everything
    (b"gzip, , ,br", ENCODINGS, "br"),  # empty list items
    # Malformed weights make the item absent (neither accepted nor refused).
    (b"gzip;q=1.5, br", ENCODINGS, "br"),
    (b"br;q=abc, gzip", ENCODINGS, "gzip"),
    (b"zstd;q=, gzip", ENCODINGS, "gzip"),
    (b"zstd;q, gzip", ENCODINGS, "gzip"),
    (b"zstd;q=0.0001, gzip", ENCODINGS, "gzip"),  # four decimals: not a qvalue
    (b"zstd;q=-1, gzip", ENCODINGS, "gzip"),
    (b"zstd;q=1.001, gzip;q=0.1", ENCODINGS, "gzip"),
    (b"zstd;q=0.5;q=oops, gzip;q=0.1", ENCODINGS, "gzip"),
    (b"*;q=2", ENCODINGS, None),
    (b"zstd;level=3, gzip;q=0.1", ENCODINGS, "zstd"),  # other parameters are ignored
    (b"zs td, gzip", ENCODINGS, "gzip"),  # not a token
    (b"zst\xffd, br", ENCODINGS, "br"),
]


@pytest.mark.parametrize(("value", "offered", "chosen"), NEGOTIATE)
def test_negotiate(value: bytes | None, offered: tuple[str, ...], chosen: str | None) -> None:
    assert negotiate(value, offered) == chosen


def test_parse_accept_encoding_weights() -> None:
    assert parse_accept_encoding(b"gzip;q=0.25, br;q=1.000, zstd;q=0.5, x-gzip;q=0.1") == {
        "gzip": 0.1,
        "br": 1.0,
        "zstd": 0.5,
    }
    assert parse_accept_encoding(b"") == {}


def test_several_fields_are_one_list() -> None:
    headers: Headers = [
        (b"host", b"example.com"),
        (b"accept-encoding", b"gzip;q=0.5"),
        (b"accept", b"*/*"),
        (b"accept-encoding", b"br;q=0.9, zstd;q=0"),
    ]
    joined = accept_encoding(headers)
    assert joined == b"gzip;q=0.5, br;q=0.9, zstd;q=0"
    assert negotiate(joined, ENCODINGS) == "br"
    assert accept_encoding([(b"host", b"example.com")]) is None


# Items that mean something: a coding (ours, another, *, identity, an alias) with a weight.
_codings = st.sampled_from(["zstd", "br", "gzip", "x-gzip", "deflate", "identity", "*", "ZSTD"])
_weights = st.sampled_from(["", ";q=0", ";q=0.0", ";q=0.5", ";q=1", ";q=0.001", ";q=0.999"])


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200), st.permutations(list(ENCODINGS)))
def test_negotiate_never_raises_and_answers_from_offered(value: bytes, offered: list[str]) -> None:
    chosen = negotiate(value, offered)
    assert chosen is None or chosen in offered


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.tuples(_codings, _weights), max_size=8),
    st.permutations(list(ENCODINGS)),
    st.binary(max_size=20),
)
def test_negotiate_never_chooses_a_refused_coding(
    items: list[tuple[str, str]], offered: list[str], noise: bytes
) -> None:
    value = b", ".join(f"{c}{w}".encode() for c, w in items)
    refused = {
        "gzip" if c.lower() == "x-gzip" else c.lower() for c, w in items if w in (";q=0", ";q=0.0")
    }
    # Malformed trailing items never make a refused coding acceptable.
    for candidate in (value, value + b"," + noise):
        chosen = negotiate(candidate, offered)
        assert chosen is None or chosen in offered
        assert chosen not in refused
    chosen = negotiate(value, offered)
    if chosen is not None:
        weights = parse_accept_encoding(value)
        star = weights.get("*", 0.0)
        best = max(weights.get(o, star) for o in offered)
        assert weights.get(chosen, star) == best > 0
        # Among equal weights, the first offered wins.
        assert chosen == next(o for o in offered if weights.get(o, star) == best)


# --- skip_reason -------------------------------------------------------------------------------

HTML: Headers = [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", b"5000")]


def _skip(
    method: bytes = b"GET",
    request: Headers | None = None,
    status: int = 200,
    response: Headers | None = None,
    types: tuple[str, ...] = DEFAULT_TYPES,
    min_size: int = 1024,
) -> str | None:
    return skip_reason(
        method,
        request or [],
        status,
        HTML if response is None else response,
        types=types,
        min_size=min_size,
    )


SKIP = [
    # (keyword arguments for _skip, reason)
    ({}, None),
    ({"method": b"POST"}, None),
    ({"method": b"HEAD"}, "method"),
    ({"method": b"CONNECT"}, "method"),
    ({"status": 100}, "status"),
    ({"status": 101}, "status"),
    ({"status": 103}, "status"),
    ({"status": 204}, "status"),
    ({"status": 206}, "status"),
    ({"status": 304}, "status"),
    ({"status": 201}, None),
    ({"status": 404}, None),
    ({"status": 500}, None),
    ({"request": [(b"range", b"bytes=0-99")]}, "range"),
    ({"response": [*HTML, (b"content-encoding", b"gzip")]}, "encoded"),
    ({"response": [*HTML, (b"content-encoding", b"identity")]}, None),
    ({"response": [*HTML, (b"content-encoding", b"Identity, br")]}, "encoded"),
    ({"response": [*HTML, (b"content-encoding", b"")]}, None),
    ({"response": [*HTML, (b"cache-control", b"public, No-Transform")]}, "no-transform"),
    (
        {
            "response": [
                *HTML,
                (b"cache-control", b"max-age=60"),
                (b"cache-control", b"no-transform"),
            ]
        },
        "no-transform",
    ),
    ({"response": [*HTML, (b"cache-control", b"no-transformers")]}, None),
    ({"request": [(b"cache-control", b"no-transform")]}, "no-transform"),
    ({"response": [(b"content-length", b"5000")]}, "type"),
    ({"response": [(b"content-type", b"image/png"), (b"content-length", b"5000")]}, "type"),
    ({"response": [(b"content-type", b"font/woff2")]}, "type"),  # already compressed
    ({"response": [(b"content-type", b"Application/JSON ; charset=UTF-8")]}, None),
    ({"response": [(b"content-type", b"TEXT/CSS")]}, None),
    ({"response": [(b"content-type", b"image/svg+xml")]}, None),
    ({"response": [(b"content-type", b"application/grpc")]}, "grpc"),
    ({"response": [(b"content-type", b"application/grpc+proto")]}, "grpc"),
    (
        {"response": [(b"content-type", b"application/grpc-web")], "types": ("application/*",)},
        "grpc",
    ),
    ({"response": [(b"content-type", b"text/event-stream")]}, "sse"),
    (
        {
            "response": [(b"content-type", b"text/event-stream; charset=utf-8")],
            "types": ("text/*",),
        },
        "sse",
    ),
    (
        {"response": [(b"content-type", b"text/event-stream")], "types": ("text/Event-Stream",)},
        None,
    ),
    ({"response": [(b"content-type", b"application/json")], "types": ("text/*",)}, "type"),
    ({"response": [(b"content-type", b"application/json")], "types": ("application/*",)}, None),
    ({"response": [(b"content-type", b"text/plain"), (b"content-length", b"1023")]}, "small"),
    ({"response": [(b"content-type", b"text/plain"), (b"content-length", b"1024")]}, None),
    ({"response": [(b"content-type", b"text/plain"), (b"content-length", b"0")]}, "small"),
    (
        {"response": [(b"content-type", b"text/plain"), (b"content-length", b"0")], "min_size": 0},
        None,
    ),
    ({"response": [(b"content-type", b"text/plain")]}, None),  # unknown length: compressed
    ({"response": [(b"content-type", b"text/plain"), (b"content-length", b"x")]}, None),
    # The first applicable reason is given.
    ({"method": b"HEAD", "status": 304}, "method"),
    ({"status": 206, "request": [(b"range", b"bytes=0-1")]}, "status"),
    ({"response": [(b"content-type", b"image/png"), (b"content-length", b"10")]}, "type"),
]


@pytest.mark.parametrize(("kwargs", "reason"), SKIP)
def test_skip_reason(kwargs: dict[str, object], reason: str | None) -> None:
    assert _skip(**kwargs) == reason  # type: ignore[arg-type]
    assert reason is None or reason in SKIP_REASONS


@pytest.mark.parametrize(
    ("content_type", "mtype"),
    [
        (b"text/html", "text/html"),
        (b"Text/HTML; charset=UTF-8", "text/html"),
        (b"  application/json  ;x=y", "application/json"),
        (b"", ""),
    ],
)
def test_media_type(content_type: bytes, mtype: str) -> None:
    assert media_type(content_type) == mtype


def test_type_matches() -> None:
    assert type_matches("text/html", ("text/*",))
    assert type_matches("text/html", ("TEXT/HTML",))
    assert not type_matches("text/html", ("text/plain", "application/*"))
    assert not type_matches("texts/html", ("text/*",))
    assert not type_matches("text/html", ())


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("text/html", True),
        ("text/*", True),
        ("application/vnd.api+json", True),
        ("*/*", False),
        ("text", False),
        ("text/", False),
        ("/html", False),
        ("text/ht ml", False),
        ("text/html;charset=utf-8", False),
        ("téxt/html", False),
    ],
)
def test_is_type_pattern(text: str, ok: bool) -> None:
    assert is_type_pattern(text) is ok


def test_default_types_are_patterns_and_sorted_like_caddy() -> None:
    assert all(is_type_pattern(t) for t in DEFAULT_TYPES)
    assert len(set(DEFAULT_TYPES)) == len(DEFAULT_TYPES)
    assert "text/*" in DEFAULT_TYPES and "text/event-stream" not in DEFAULT_TYPES


# --- ETags -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("etag", "encoding", "out"),
    [
        (b'"abc"', "zstd", b'"abc-zstd"'),
        (b'"abc"', "br", b'"abc-br"'),
        (b'"abc"', "gzip", b'"abc-gzip"'),
        (b'""', "gzip", b'"-gzip"'),
        (b' "abc" ', "gzip", b'"abc-gzip"'),
        (b'W/"abc"', "zstd", b'W/"abc"'),  # weak: may be shared by both representations
        (b"abc", "zstd", b"abc"),  # no entity tag
        (b'"', "zstd", b'"'),
    ],
)
def test_etag_with(etag: bytes, encoding: str, out: bytes) -> None:
    assert etag_with(etag, encoding) == out


@pytest.mark.parametrize(
    ("etag", "out"),
    [
        (b'"abc-zstd"', (b'"abc"', "zstd")),
        (b'"abc-br"', (b'"abc"', "br")),
        (b'"abc-gzip"', (b'"abc"', "gzip")),
        (b'"-gzip"', (b'""', "gzip")),
        (b'"abc-br-gzip"', (b'"abc-br"', "gzip")),  # one suffix only: ours is the last
        (b'"abc"', (b'"abc"', None)),
        (b'"abc-deflate"', (b'"abc-deflate"', None)),
        (b'W/"abc-gzip"', (b'W/"abc-gzip"', None)),
        (b'"abcgzip"', (b'"abcgzip"', None)),
        (b"abc-gzip", (b"abc-gzip", None)),
    ],
)
def test_etag_without(etag: bytes, out: tuple[bytes, str | None]) -> None:
    assert etag_without(etag) == out


@given(
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters='"')),
    st.sampled_from(ENCODINGS),
)
def test_etag_round_trip(opaque: str, encoding: str) -> None:
    tag = f'"{opaque}"'.encode()
    assert etag_without(etag_with(tag, encoding)) == (tag, encoding)


# --- response heads ----------------------------------------------------------------------------


def test_compressed_headers() -> None:
    headers: Headers = [
        (b"content-type", b"text/html"),
        (b"content-length", b"5000"),
        (b"etag", b'"v1"'),
        (b"accept-ranges", b"bytes"),
        (b"cache-control", b"max-age=60"),
        (b"content-encoding", b"identity"),
    ]
    assert compressed_headers(headers, "br") == [
        (b"content-type", b"text/html"),
        (b"etag", b'"v1-br"'),
        (b"cache-control", b"max-age=60"),
        (b"vary", b"Accept-Encoding"),
        (b"content-encoding", b"br"),
    ]
    assert headers[1] == (b"content-length", b"5000")  # a new list; the input is untouched


@pytest.mark.parametrize(
    ("vary", "out"),
    [
        ([], [b"Accept-Encoding"]),
        ([b"Origin"], [b"Origin, Accept-Encoding"]),
        ([b"Origin", b"Cookie"], [b"Origin, Accept-Encoding", b"Cookie"]),
        ([b"origin, accept-encoding"], [b"origin, accept-encoding"]),
        ([b"Origin", b"Accept-Encoding"], [b"Origin", b"Accept-Encoding"]),
        ([b"*"], [b"*"]),
        ([b"Origin, *"], [b"Origin, *"]),
        ([b""], [b"Accept-Encoding"]),
    ],
)
def test_vary_is_merged(vary: list[bytes], out: list[bytes]) -> None:
    headers: Headers = [(b"content-type", b"text/html"), *((b"vary", v) for v in vary)]
    for result in (compressed_headers(headers, "gzip"), with_vary(headers)):
        assert [v for k, v in result if k == b"vary"] == out


def test_compressed_headers_etags() -> None:
    def etags(headers: Headers) -> list[bytes]:
        return [v for k, v in compressed_headers(headers, "zstd") if k == b"etag"]

    assert etags([(b"etag", b'"abc"')]) == [b'"abc-zstd"']
    assert etags([(b"etag", b'W/"abc"')]) == [b'W/"abc"']
    assert etags([(b"etag", b"abc")]) == []  # no entity tag: it would name both
    assert etags([(b"etag", b'"a"b"')]) == []
    assert etags([]) == []


def test_with_vary() -> None:
    headers: Headers = [(b"etag", b'"abc"'), (b"content-length", b"10")]
    assert with_vary(headers) == [*headers, (b"vary", b"Accept-Encoding")]
    # A 304 whose request negotiated zstd says what the 200 would have said.
    assert with_vary(headers, "zstd") == [
        (b"etag", b'"abc-zstd"'),
        (b"content-length", b"10"),
        (b"vary", b"Accept-Encoding"),
    ]
    assert with_vary([(b"etag", b'W/"abc"')], "br") == [
        (b"etag", b'W/"abc"'),
        (b"vary", b"Accept-Encoding"),
    ]


# --- conditional requests toward the origin ---------------------------------------------------


@pytest.mark.parametrize(
    ("value", "out"),
    [
        (b'"abc-zstd"', b'"abc"'),
        (b'"abc-br"', b'"abc"'),
        (b'"abc-gzip"', b'"abc"'),
        (b'"abc"', b'"abc"'),
        (b"*", b"*"),
        (b'W/"abc-gzip"', b'W/"abc-gzip"'),
        (b'"a", "b-br"', b'"a", "b"'),
        (b'"a-zstd",W/"b-br" ,  "c"', b'"a", W/"b-br", "c"'),
        (b'"a",  "b"', b'"a",  "b"'),  # nothing of ours: byte for byte as it was
        (b'"a,b-br", "c"', b'"a,b", "c"'),  # a tag may hold a comma
        (b'"x-br",W/"y,z"', b'"x", W/"y,z"'),
        (b'"a-br" junk', b'"a-br" junk'),  # not a list of entity tags: left alone
        (b'"a-br", "b', b'"a-br", "b'),
        (b'"a-br"x', b'"a-br"x'),
        (b"a-br", b"a-br"),
        (b"", b""),
    ],
)
def test_strip_etag_suffixes(value: bytes, out: bytes) -> None:
    request: Headers = [
        (b"host", b"example.com"),
        (b"if-none-match", value),
        (b"if-match", value),
        (b"if-range", value),
        (b"etag", value),
    ]
    assert strip_etag_suffixes(request) == [
        (b"host", b"example.com"),
        (b"if-none-match", out),
        (b"if-match", out),
        (b"if-range", value),
        (b"etag", value),
    ]


def test_strip_etag_suffixes_of_named_encodings_only() -> None:
    request: Headers = [(b"if-none-match", b'"v1-gzip", "v2-zstd"')]
    assert strip_etag_suffixes(request, ("zstd",)) == [(b"if-none-match", b'"v1-gzip", "v2"')]


@given(
    st.lists(st.text(alphabet="abc-zstdbrgip", max_size=10), max_size=5), st.sampled_from(ENCODINGS)
)
def test_strip_undoes_etag_with(opaques: list[str], encoding: str) -> None:
    tags = [f'"{o}"'.encode() for o in opaques]
    value = b", ".join(etag_with(t, encoding) for t in tags)
    stripped = strip_etag_suffixes([(b"if-none-match", value)])
    assert stripped == [(b"if-none-match", b", ".join(tags))]


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=120))
def test_strip_etag_suffixes_never_raises(value: bytes) -> None:
    ((name, out),) = strip_etag_suffixes([(b"if-none-match", value)])
    assert name == b"if-none-match"
    if b"-zstd" not in value and b"-br" not in value and b"-gzip" not in value:
        assert out == value
