"""Response compression: which coding a client gets, which responses are left alone, and what
the headers of a compressed response say.

Rule of this room: pure decisions, no codecs. The exchange asks ``negotiate`` with the
request's Accept-Encoding, ``skip_reason`` with both heads, and rewrites the response head with
``compressed_headers`` (compressed) or ``with_vary`` (a response of a compressing route sent as
it is). The codecs live in ``revproxy/content/compress.py``.

What the RFCs mandate and where it shows here:

- RFC 9110 §12.5.3 (Accept-Encoding): "An "identity" token is used as a synonym for "no
  encoding"", "The asterisk "*" symbol in an Accept-Encoding field matches any available
  content coding not explicitly listed in the field", "If the representation has no content
  coding, then it is acceptable by default unless specifically excluded by the Accept-Encoding
  header field stating either "identity;q=0" or "*;q=0" without a more specific entry for
  "identity"", and "An Accept-Encoding header field with a field value that is empty implies
  that the user agent does not want any content coding in response." A missing field would
  allow any coding; like nginx and Caddy we compress only for clients that ask.
- RFC 9110 §12.4.2 (quality values): "A weight of 0 means "not acceptable"" and the grammar
  ``qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )``; a weight outside it makes
  the item absent (neither accepted nor refused).
- RFC 9110 §8.4.1.3: "A recipient SHOULD consider "x-gzip" to be equivalent to "gzip"."
- RFC 9110 §8.8.3.3: a strong entity tag names one representation, and a compressed response
  is another one: its strong ETag gets a suffix per coding (``"abc"`` -> ``"abc-zstd"``, as
  Caddy does) and the suffix is taken off again in If-None-Match / If-Match before the request
  reaches the origin, which only knows ``"abc"``. Weak tags may stay: "a weak entity tag ...
  might be shared by two representations of a resource if both representations are
  sufficiently equivalent".
- RFC 9110 §12.5.5: the response depends on Accept-Encoding, so every response of a route that
  compresses says ``Vary: Accept-Encoding`` (also when sent as it is, and on a 304: "the server
  generating a 304 response MUST generate any of the following header fields that would have
  been sent in a 200 (OK) response to the same request: ... ETag, and Vary", §15.4.5).
- RFC 9111 §5.2.2.6 / §5.2.1.6 (no-transform): "an intermediary (regardless of whether it
  implements a cache) MUST NOT transform the content"; the request directive is honoured too.
- RFC 9110 §14.2 / §15.3.7: ranges are of the selected representation; the encoded body's
  ranges are not offered (Accept-Ranges removed) and a Range request or a 206 is left alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from revproxy.proto.events import Headers

# The codings we can produce, in the order we prefer them when the client has no preference:
# zstd compresses as well as gzip 6 at a fifth of its CPU, brotli is close behind.
ENCODINGS: tuple[str, ...] = ("zstd", "br", "gzip")

# The content types compressed when a route does not list its own: Caddy's default matcher
# (modules/caddyhttp/encode/encode.go), itself Cloudflare's list. Caddy matches by prefix;
# here each is an exact ``type/subtype`` or a ``type/*``, parameters and case ignored.
# text/event-stream falls under text/* but is skipped unless a route names it exactly: an
# event stream must reach the client event by event (see ``skip_reason``).
DEFAULT_TYPES: tuple[str, ...] = (
    "application/atom+xml",
    "application/eot",
    "application/font",
    "application/geo+json",
    "application/graphql+json",
    "application/javascript",
    "application/json",
    "application/ld+json",
    "application/manifest+json",
    "application/opentype",
    "application/otf",
    "application/rss+xml",
    "application/truetype",
    "application/ttf",
    "application/vnd.api+json",
    "application/vnd.ms-fontobject",
    "application/wasm",
    "application/x-httpd-cgi",
    "application/x-javascript",
    "application/x-opentype",
    "application/x-otf",
    "application/x-perl",
    "application/x-protobuf",
    "application/x-ttf",
    "application/xhtml+xml",
    "application/xml",
    "font/otf",
    "font/ttf",
    "image/svg+xml",
    "image/vnd.microsoft.icon",
    "image/x-icon",
    "multipart/bag",
    "multipart/mixed",
    "text/*",
)

SSE_TYPE = "text/event-stream"

# The reasons ``skip_reason`` gives, for logs and counters.
SKIP_REASONS: tuple[str, ...] = (
    "method",
    "status",
    "range",
    "encoded",
    "no-transform",
    "grpc",
    "sse",
    "type",
    "small",
)

_DIGITS = frozenset(b"0123456789")
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_ALIASES = {"x-gzip": "gzip"}


# --- Accept-Encoding ---------------------------------------------------------------------------


def _qvalue(text: bytes) -> float | None:
    """RFC 9110 §12.4.2's qvalue, or None when ``text`` is not one."""
    head, _, frac = text.partition(b".")
    if head not in (b"0", b"1") or len(frac) > 3 or any(c not in _DIGITS for c in frac):
        return None
    if head == b"1":
        return 1.0 if frac.strip(b"0") == b"" else None
    return int(frac.ljust(3, b"0")) / 1000 if frac else 0.0


def parse_accept_encoding(value: bytes) -> dict[str, float]:
    """The codings an Accept-Encoding value names, lower-case, with their weights.

    Items that are not ``token [; q=qvalue]`` are left out (malformed parts never make a coding
    acceptable nor refuse one); parameters other than ``q`` are ignored. A coding listed twice
    keeps its lowest weight, so a ``q=0`` anywhere refuses it.
    """
    weights: dict[str, float] = {}
    for item in value.split(b","):
        name, *params = item.split(b";")
        name = name.strip(b" \t")
        if not name or any(c not in _TCHAR for c in name):
            continue
        q: float | None = 1.0
        for param in params:
            key, eq, raw = param.strip(b" \t").partition(b"=")
            if key.strip(b" \t").lower() != b"q":
                continue
            q = _qvalue(raw.strip(b" \t")) if eq else None
            if q is None:
                break
        if q is None:
            continue
        coding = name.decode("ascii").lower()
        coding = _ALIASES.get(coding, coding)
        weights[coding] = min(q, weights.get(coding, q))
    return weights


def accept_encoding(headers: Headers) -> bytes | None:
    """Every Accept-Encoding field of ``headers`` joined with ", " (RFC 9110 §5.3: a field
    sent several times is one list), or None when there is none."""
    values = [v for k, v in headers if k == b"accept-encoding"]
    return b", ".join(values) if values else None


def negotiate(accept_encoding: bytes | None, offered: Sequence[str]) -> str | None:
    """The coding of ``offered`` to send, or None to send the response as it is.

    The highest weight wins; among equal weights the server's ``offered`` order (the route's
    ``encodings``). ``*`` gives its weight to every coding not listed by name; ``identity`` is
    not one of ours and never chosen here.
    """
    if accept_encoding is None:
        return None
    weights = parse_accept_encoding(accept_encoding)
    star = weights.get("*", 0.0)
    best: str | None = None
    best_q = 0.0
    for coding in offered:
        q = weights.get(coding.lower(), star)
        if q > best_q:
            best, best_q = coding, q
    return best


# --- which responses are left alone ------------------------------------------------------------


def _values(headers: Headers, name: bytes) -> list[bytes]:
    return [v for k, v in headers if k == name]


def _list_items(values: Iterable[bytes]) -> list[bytes]:
    """The comma-separated items of a list field's values, stripped, empty ones dropped."""
    return [i for v in values for i in (p.strip(b" \t") for p in v.split(b",")) if i]


def media_type(content_type: bytes) -> str:
    """``type/subtype`` of a Content-Type value, lower-case, parameters dropped."""
    return content_type.split(b";", 1)[0].strip(b" \t").decode("latin-1").lower()


def is_type_pattern(text: str) -> bool:
    """Whether ``text`` is a ``types`` entry we can match: ``type/subtype`` or ``type/*``
    (for the configuration reader)."""
    kind, slash, sub = text.partition("/")
    return bool(slash) and kind != "*" and _is_token(kind) and _is_token(sub)


def _is_token(text: str) -> bool:
    return bool(text) and all(ord(c) < 128 and ord(c) in _TCHAR for c in text)


def type_matches(mtype: str, types: Sequence[str]) -> bool:
    """Whether the media type ``mtype`` (as ``media_type`` gives it) is one of ``types``."""
    kind = mtype.partition("/")[0]
    for pattern in types:
        p = pattern.lower()
        if p == mtype or (p.endswith("/*") and p[:-2] == kind):
            return True
    return False


def _has_directive(headers: Headers, name: bytes, directive: bytes) -> bool:
    """Whether a Cache-Control-like field carries ``directive`` (case-insensitive)."""
    return any(
        i.split(b"=", 1)[0].strip(b" \t").lower() == directive
        for i in _list_items(_values(headers, name))
    )


def _content_length(headers: Headers) -> int | None:
    values = _values(headers, b"content-length")
    if not values:
        return None
    first = values[0].split(b",", 1)[0].strip(b" \t")
    return int(first) if first.isdigit() else None


def skip_reason(
    method: bytes,
    request_headers: Headers,
    status: int,
    response_headers: Headers,
    *,
    types: Sequence[str],
    min_size: int,
) -> str | None:
    """None when this response may be compressed, else why not (one of ``SKIP_REASONS``).

    ``types`` are the route's content types (``DEFAULT_TYPES`` when it names none) and
    ``min_size`` its smallest body worth compressing; a body of unknown length is compressed.
    """
    if method in (b"HEAD", b"CONNECT"):  # no body, or not a message body but a tunnel
        return "method"
    if status < 200 or status in (204, 206, 304):
        return "status"
    if _values(request_headers, b"range"):
        return "range"
    encodings = [e.lower() for e in _list_items(_values(response_headers, b"content-encoding"))]
    if any(e != b"identity" for e in encodings):
        return "encoded"
    if _has_directive(response_headers, b"cache-control", b"no-transform") or _has_directive(
        request_headers, b"cache-control", b"no-transform"
    ):
        return "no-transform"
    content_types = _values(response_headers, b"content-type")
    mtype = media_type(content_types[0]) if content_types else ""
    if mtype.startswith("application/grpc"):  # gRPC frames carry their own compression flag
        return "grpc"
    if mtype == SSE_TYPE and not any(t.lower() == SSE_TYPE for t in types):
        return "sse"
    if not mtype or not type_matches(mtype, types):
        return "type"
    length = _content_length(response_headers)
    if length is not None and length < min_size:
        return "small"
    return None


# --- the head of a compressed (or not compressed) response ------------------------------------


def etag_with(etag: bytes, encoding: str) -> bytes:
    """The strong ETag ``"abc"`` of a response compressed with ``encoding``: ``"abc-zstd"``.
    A weak tag (``W/"abc"``) is returned as it is, and so is a value that is no entity tag."""
    value = etag.strip(b" \t")
    if len(value) < 2 or value[:1] != b'"' or value[-1:] != b'"':
        return etag
    return value[:-1] + b"-" + encoding.encode("ascii") + b'"'


def etag_without(etag: bytes, encodings: Sequence[str] = ENCODINGS) -> tuple[bytes, str | None]:
    """``etag`` with our suffix taken off, and the coding it named: ``"abc-br"`` ->
    ``("abc", "br")``; a tag without one of ``encodings``' suffixes -> ``(etag, None)``."""
    value = etag.strip(b" \t")
    if len(value) < 2 or value[:1] != b'"' or value[-1:] != b'"':
        return etag, None
    for encoding in encodings:
        suffix = b"-" + encoding.encode("ascii") + b'"'
        if value.endswith(suffix) and len(value) >= len(suffix) + 1:
            return value[: -len(suffix)] + b'"', encoding
    return etag, None


def _merge_vary(headers: Headers) -> Headers:
    """``headers`` (a new list) with Accept-Encoding in its Vary: added to the first Vary
    field, or a new field; nothing changes when it is already there or Vary is ``*``."""
    items = [i.lower() for i in _list_items(_values(headers, b"vary"))]
    if b"*" in items or b"accept-encoding" in items:
        return list(headers)
    out: Headers = []
    merged = False
    for name, value in headers:
        if name == b"vary" and not merged:
            stripped = value.strip(b" \t")
            value = stripped + b", Accept-Encoding" if stripped else b"Accept-Encoding"
            merged = True
        out.append((name, value))
    if not merged:
        out.append((b"vary", b"Accept-Encoding"))
    return out


def _is_entity_tag(value: bytes) -> bool:
    v = value.strip(b" \t")
    if v[:2] == b"W/":
        v = v[2:]
    return len(v) >= 2 and v[:1] == b'"' and v[-1:] == b'"' and b'"' not in v[1:-1]


def compressed_headers(headers: Headers, encoding: str) -> Headers:
    """The head of the response once its body is compressed with ``encoding`` (a new list).

    Content-Length goes (the length is not known before the end), Content-Encoding is set,
    Vary gains Accept-Encoding, Accept-Ranges goes, a strong ETag gets the coding's suffix (a
    weak one stays) and a value that is no entity tag is dropped (sent unchanged, it would
    name two representations).
    """
    out: Headers = []
    for name, value in _merge_vary(headers):
        if name in (b"content-length", b"content-encoding", b"accept-ranges"):
            continue
        if name == b"etag":
            if not _is_entity_tag(value):
                continue
            value = etag_with(value, encoding)
        out.append((name, value))
    out.append((b"content-encoding", encoding.encode("ascii")))
    return out


def with_vary(headers: Headers, encoding: str | None = None) -> Headers:
    """The head of a response of a compressing route sent as it is (a new list): Vary gains
    Accept-Encoding. For a 304, ``encoding`` is the coding negotiated for the request (the 304
    says what the 200 would have: RFC 9110 §15.4.5) and a strong ETag gets its suffix; leave
    it None for any other response."""
    out = _merge_vary(headers)
    if encoding is None:
        return out
    return [(n, etag_with(v, encoding) if n == b"etag" else v) for n, v in out]


def _entity_tags(value: bytes) -> list[bytes] | None:
    """The entity tags of an If-None-Match / If-Match list (``*`` is one item), or None when
    the value is not such a list. Scanned, not split at commas: a tag may hold one."""
    tags: list[bytes] = []
    i, n = 0, len(value)
    while i < n:
        if value[i] in b" \t,":
            i += 1
            continue
        start = i
        if value.startswith(b"*", i):
            i += 1
        else:
            if value.startswith(b"W/", i):
                i += 2
            if not value.startswith(b'"', i):
                return None
            end = value.find(b'"', i + 1)
            if end < 0:
                return None
            i = end + 1
        if i < n and value[i] not in b" \t,":
            return None
        tags.append(value[start:i])
    return tags


def _strip_list(value: bytes, encodings: Sequence[str]) -> bytes:
    """An If-None-Match / If-Match value with our suffixes taken off its strong tags; a value
    that is not a list of entity tags is left as it is."""
    tags = _entity_tags(value)
    if tags is None:
        return value
    stripped = [etag_without(tag, encodings) for tag in tags]
    if all(found is None for _, found in stripped):
        return value
    return b", ".join(base for base, _ in stripped)


def strip_etag_suffixes(request_headers: Headers, encodings: Sequence[str] = ENCODINGS) -> Headers:
    """The request head for the origin (a new list): the strong tags of If-None-Match and
    If-Match that carry one of our suffixes get their origin's tag back (``"abc-zstd"`` ->
    ``"abc"``); weak tags, ``*`` and other fields are untouched.

    ``encodings``: the suffixes to take off (the route's ``encodings``; a single negotiated one
    is narrower still, and leaves an origin's own ``"v1-gzip"`` alone on other requests).
    """
    return [
        (n, _strip_list(v, encodings) if n in (b"if-none-match", b"if-match") else v)
        for n, v in request_headers
    ]
