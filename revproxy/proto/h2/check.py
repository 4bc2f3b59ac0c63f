"""HTTP/2 header fields: what makes a message malformed (RFC 9113 §8), checked on the decoded
header block.

Rule of this room: pure functions, decoded fields in, the message's parts or the reason it is
malformed out (a string: the caller resets the stream with PROTOCOL_ERROR — RFC 9113 §8.1.1:
"Malformed requests or responses that are detected MUST be treated as a stream error"). One
pass over the block checks field name and value characters (§8.2.1), pseudo-header order, set
and uniqueness (§8.3), connection-specific fields and ``te`` (§8.2.2), Host against
:authority (§8.3.1) — the rules h2's validation applied, which the tests compare against it —
then what a proxy needs on top: an :authority at all, a :path it can route, a :scheme it
knows, :protocol only once extended CONNECT was offered (RFC 8441 §4), and a valid :status.
Split cookie fields are joined (§8.2.3). Content-Length must be digits, the same in every
field (RFC 9110 §8.6). The coding of the blocks themselves (HPACK) is ``hpack_codec.py``'s.

Fields are passed on as the very tuples the decoder gave: one that arrived never indexed
(hpack's ``NeverIndexedHeaderTuple``) stays so, and cookies joined from crumbs of which one
arrived never indexed are never indexed either (RFC 7541 §6.2.3: "Intermediaries MUST use the
same representation for encoding this header field").
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from hpack.struct import HeaderTuple, NeverIndexedHeaderTuple

from revproxy.proto.events import Headers

# RFC 9113 §8.2.2: connection-specific fields make a message malformed.
CONNECTION_FIELDS = frozenset(
    {b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade"}
)
_REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path", b":protocol"})
# RFC 9113 §8.2.1: "A field name MUST NOT contain characters in the ranges 0x00-0x20,
# 0x41-0x5a, or 0x7f-0xff"; nor a colon past the first character (§8.3).
_BAD_NAME_BYTES = bytes([*range(0x21), *range(0x41, 0x5B), *range(0x7F, 0x100)])
# Names seen valid, so that a common name is checked by one set look-up (bounded).
_valid_names: set[bytes] = set()
_VALID_NAMES_MAX = 1024
# Fields a connection's ``known`` set may hold: fields seen valid on it (a client repeats its
# fields, HPACK hands them back from its table), checked by one look-up next time.
KNOWN_FIELDS_MAX = 256


class RequestHead(NamedTuple):
    method: bytes
    target: bytes  # :path, or :authority for CONNECT
    authority: bytes
    protocol: bytes  # :protocol of an extended CONNECT, else b""
    headers: Headers  # Host first (from :authority), no pseudo-header
    content_length: int | None = None


def _bad_name(name: bytes) -> str | None:
    """Why a field name is invalid (RFC 9113 §8.2.1), or None."""
    if name in _valid_names:
        return None
    if not name:
        return "Received header name with zero length."
    if len(name.translate(None, _BAD_NAME_BYTES)) != len(name) or b":" in name[1:]:
        for c in name:
            if 0x41 <= c <= 0x5A:
                return f"Received uppercase header name {name!r}."
            if c <= 0x20 or c >= 0x7F:
                return f"Illegal character '{chr(c)}' in header name: {name!r}"
        return f"Illegal character ':' in header name: {name!r}"
    if len(_valid_names) < _VALID_NAMES_MAX:
        _valid_names.add(name)
    return None


def _bad_value(value: bytes) -> str | None:
    """Why a field value is invalid (RFC 9113 §8.2.1), or None. Empty is valid."""
    if b"\r" in value or b"\n" in value or b"\x00" in value:
        return f"Illegal character in header value: {value!r}"
    if value[0] in (0x20, 0x09) or value[-1] in (0x20, 0x09):
        return f"Received header value surrounded by whitespace {value!r}"
    return None


def _bad_regular(name: bytes, value: bytes) -> str | None:
    """Why a regular (not pseudo-) field is not allowed in HTTP/2, or None."""
    if name in CONNECTION_FIELDS:
        return f"Connection-specific header field present: {name!r}."
    if name == b"te" and value.lower() != b"trailers":
        return f"Invalid value for TE header: {value!r}"
    return None


def _cookie(crumbs: list[bytes], never_indexed: bool) -> tuple[bytes, bytes]:
    """The cookie field joined from its crumbs (RFC 9113 §8.2.3), never indexed when one of
    them arrived so."""
    value = b"; ".join(crumbs)
    return NeverIndexedHeaderTuple(b"cookie", value) if never_indexed else (b"cookie", value)


def _bad_field(field: tuple[bytes, bytes], known: set[tuple[bytes, bytes]] | None) -> str | None:
    """Why a field's name or value is invalid (RFC 9113 §8.2.1), or None; a valid one joins
    ``known`` (while there is room), which spares it the check next time."""
    if known is not None and field in known:
        return None
    name, value = field
    reason = _bad_name(name) or (_bad_value(value) if value else None)
    if reason is None and known is not None and len(known) < KNOWN_FIELDS_MAX:
        known.add(field)
    return reason


def request(
    raw: Iterable[tuple[bytes, bytes]],
    *,
    connect_protocol: bool,
    known: set[tuple[bytes, bytes]] | None = None,
) -> RequestHead | str:
    """A request head, or why it is malformed."""
    method = scheme = authority = path = protocol = host = length = None
    regular: Headers = []
    cookies: list[bytes] | None = None
    secret = False  # a cookie crumb arrived never indexed
    seen_regular = False
    for field in raw:
        reason = _bad_field(field, known)
        if reason is not None:
            return reason
        name, value = field
        if name[0] == 0x3A:  # ":"
            if seen_regular:
                return f"Received pseudo-header field out of sequence: {name!r}"
            if name == b":method":
                if method is not None:
                    return "Received duplicate pseudo-header field b':method'"
                method = value
            elif name == b":path":
                if path is not None:
                    return "Received duplicate pseudo-header field b':path'"
                if not value:
                    return "An empty :path header is forbidden"
                path = value
            elif name == b":authority":
                if authority is not None:
                    return "Received duplicate pseudo-header field b':authority'"
                authority = value
            elif name == b":scheme":
                if scheme is not None:
                    return "Received duplicate pseudo-header field b':scheme'"
                scheme = value
            elif name == b":protocol":
                if protocol is not None:
                    return "Received duplicate pseudo-header field b':protocol'"
                protocol = value
            elif name == b":status":
                return "Encountered response-only headers {b':status'}"
            else:
                return f"Received custom pseudo-header field {name!r}"
            continue
        seen_regular = True
        if name == b"cookie":
            if cookies is None:
                cookies = [value]
            else:
                cookies.append(value)
            if type(field) is not tuple and isinstance(field, HeaderTuple):
                secret = secret or not field.indexable
            continue
        if name == b"host":
            if host is not None:
                return "Request header block has multiple Host headers."
            host = value
            continue
        if name == b"content-length":
            # RFC 9110 §8.6: digits, the same in every field.
            if not value.isdigit() or (length is not None and value != length):
                return f"invalid content-length {value!r}"
            length = value
        else:
            reason = _bad_regular(name, value)
            if reason is not None:
                return reason
        regular.append(field)
    # RFC 9113 §8.3.1, §8.5; RFC 8441 §4.
    if method is None:
        return "Header block missing mandatory b':method' header"
    if method == b"CONNECT" and protocol is None:
        if scheme is not None or path is not None:
            return "Ordinary CONNECT MUST NOT include :scheme or :path"
    else:
        if scheme is None:
            return "Header block missing mandatory b':scheme' header"
        if path is None:
            return "Header block missing mandatory b':path' header"
        if protocol is not None and method != b"CONNECT":
            return "Encountered connect-request-only headers {b':protocol'}"
    if authority is None and host is None:
        return "Request header block does not have an :authority or Host header."
    if authority is not None and host is not None and authority != host:
        return f"Request header block has mismatched :authority and Host: {authority!r} / {host!r}"
    if authority is None:
        authority = host  # RFC 9113 §8.3.1: Host stands in for a missing :authority
    if not authority:
        return "no :authority"
    if protocol is not None and not connect_protocol:
        return ":protocol without SETTINGS_ENABLE_CONNECT_PROTOCOL"
    if method != b"CONNECT" or protocol is not None:
        # RFC 9113 §8.3.1: ":path ... MUST NOT be empty for "http" or "https" URIs";
        # origin-form, or "*" for OPTIONS.
        if not path or not (path[:1] == b"/" or (path == b"*" and method == b"OPTIONS")):
            return f"invalid :path {path!r}"
        if scheme not in (b"http", b"https"):
            return f"unsupported :scheme {scheme!r}"
    if cookies is not None:
        # RFC 9113 §8.2.3: split cookie fields are joined for an HTTP/1.1 origin.
        regular.append(_cookie(cookies, secret))
    regular.insert(0, (b"host", authority))
    target = path if path is not None else authority
    return RequestHead(
        method,
        target,
        authority,
        protocol or b"",
        regular,
        None if length is None else int(length),
    )


def response(
    raw: Iterable[tuple[bytes, bytes]], *, known: set[tuple[bytes, bytes]] | None = None
) -> tuple[int, Headers] | str:
    """(status, headers without pseudo-headers) of a response head, or why it is malformed."""
    status: bytes | None = None
    regular: Headers = []
    cookies: list[bytes] | None = None
    secret = False  # a cookie crumb arrived never indexed
    seen_regular = False
    for field in raw:
        reason = _bad_field(field, known)
        if reason is not None:
            return reason
        name, value = field
        if name[0] == 0x3A:  # ":"
            if seen_regular:
                return f"Received pseudo-header field out of sequence: {name!r}"
            if name == b":status":
                if status is not None:
                    return "Received duplicate pseudo-header field b':status'"
                status = value
            elif name in _REQUEST_PSEUDO:
                return f"Encountered request-only headers {{{name!r}}}"
            else:
                return f"Received custom pseudo-header field {name!r}"
            continue
        seen_regular = True
        if name == b"cookie":
            if cookies is None:
                cookies = [value]
            else:
                cookies.append(value)
            if type(field) is not tuple and isinstance(field, HeaderTuple):
                secret = secret or not field.indexable
            continue
        reason = _bad_regular(name, value)
        if reason is not None:
            return reason
        regular.append(field)
    if status is None:
        return "Header block missing mandatory b':status' header"
    code = int(status) if status.isdigit() and len(status) == 3 else 0
    if not 100 <= code <= 599:
        return "invalid :status"
    if cookies is not None:
        regular.append(_cookie(cookies, secret))
    return code, regular


def trailers(
    raw: Iterable[tuple[bytes, bytes]],
    *,
    from_client: bool,
    known: set[tuple[bytes, bytes]] | None = None,
) -> Headers | str:
    """A trailer section, or why it is malformed (no pseudo-header may appear in one)."""
    fields: Headers = []
    cookies: list[bytes] | None = None
    secret = False  # a cookie crumb arrived never indexed
    for field in raw:
        reason = _bad_field(field, known)
        if reason is not None:
            return reason
        name, value = field
        if name[0] == 0x3A:  # ":"
            return f"Received pseudo-header in trailer {name!r}"
        if name == b"cookie":
            if cookies is None:
                cookies = [value]
            else:
                cookies.append(value)
            if type(field) is not tuple and isinstance(field, HeaderTuple):
                secret = secret or not field.indexable
            continue
        reason = _bad_regular(name, value)
        if reason is not None:
            return reason
        fields.append(field)
    if cookies is not None:
        fields.append(_cookie(cookies, secret))
    return fields


def content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    """The Content-Length of a message, None without one. ValueError when it is not digits or
    its fields disagree (RFC 9110 §8.6: the message is then malformed)."""
    found: bytes | None = None
    for name, value in headers:
        if name == b"content-length":
            if not value.isdigit() or (found is not None and value != found):
                raise ValueError(f"invalid content-length {value!r}")
            found = value
    return None if found is None else int(found)
