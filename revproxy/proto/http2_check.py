"""What makes an HTTP/2 message malformed (RFC 9113 §8), checked on a decoded header block.

Rule of this room: pure functions, header block in, the message's parts or the reason it is
malformed out (a string: the caller resets the stream with PROTOCOL_ERROR — RFC 9113 §8.1.1:
"Malformed requests or responses that are detected MUST be treated as a stream error"). h2's
own field checks do the bulk (characters, pseudo-header order and set, connection-specific
fields, ``te``, Host against :authority); what they leave is checked here: an :authority at
all, a :path a proxy can route, a :scheme it knows, :protocol only once extended CONNECT was
offered (RFC 8441 §4), and a valid :status.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import h2.exceptions
from h2.utilities import HeaderValidationFlags, validate_headers

from revproxy.proto.events import Headers

_REQUEST = HeaderValidationFlags(
    is_client=False, is_trailer=False, is_response_header=False, is_push_promise=False
)
_RESPONSE = HeaderValidationFlags(
    is_client=True, is_trailer=False, is_response_header=True, is_push_promise=False
)
_TRAILERS_FROM_CLIENT = HeaderValidationFlags(
    is_client=False, is_trailer=True, is_response_header=False, is_push_promise=False
)
_TRAILERS_FROM_SERVER = HeaderValidationFlags(
    is_client=True, is_trailer=True, is_response_header=False, is_push_promise=False
)


class RequestHead(NamedTuple):
    method: bytes
    target: bytes  # :path, or :authority for CONNECT
    authority: bytes
    protocol: bytes  # :protocol of an extended CONNECT, else b""
    headers: Headers  # Host first (from :authority), no pseudo-header


def _validated(raw: Iterable[tuple[bytes, bytes]], flags: HeaderValidationFlags) -> Headers | str:
    try:
        return [(bytes(n), bytes(v)) for n, v in validate_headers(raw, flags)]
    except h2.exceptions.ProtocolError as exc:
        return str(exc) or "malformed header block"


def request(raw: Iterable[tuple[bytes, bytes]], *, connect_protocol: bool) -> RequestHead | str:
    """A request head, or why it is malformed."""
    fields = _validated(raw, _REQUEST)
    if isinstance(fields, str):
        return fields
    method = scheme = authority = path = protocol = host = None
    regular: Headers = []
    for name, value in fields:
        if name[:1] == b":":
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            elif name == b":scheme":
                scheme = value
            elif name == b":protocol":
                protocol = value
        elif name == b"host":
            host = value
        else:
            regular.append((name, value))
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
    assert method is not None
    regular.insert(0, (b"host", authority))
    target = path if path is not None else authority
    return RequestHead(method, target, authority, protocol or b"", regular)


def response(raw: Iterable[tuple[bytes, bytes]]) -> tuple[int, Headers] | str:
    """(status, headers without pseudo-headers) of a response head, or why it is malformed."""
    fields = _validated(raw, _RESPONSE)
    if isinstance(fields, str):
        return fields
    status = 0
    regular: Headers = []
    for name, value in fields:
        if name == b":status":
            status = int(value) if value.isdigit() and len(value) == 3 else 0
        elif name[:1] != b":":
            regular.append((name, value))
    if not 100 <= status <= 599:
        return "invalid :status"
    return status, regular


def trailers(raw: Iterable[tuple[bytes, bytes]], *, from_client: bool) -> Headers | str:
    """A trailer section, or why it is malformed (no pseudo-header may appear in one)."""
    return _validated(raw, _TRAILERS_FROM_CLIENT if from_client else _TRAILERS_FROM_SERVER)


def content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            return int(value)  # h2 checked that it is digits and not conflicting
    return None
