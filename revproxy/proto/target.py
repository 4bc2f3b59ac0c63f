"""Request targets: which forms a request may use, and the one path routing and origins see.

Rule of this room: what a route matched is what the origin serves. A route ``path = "/admin/"``
must not be bypassed by ``//admin/x``, ``/./admin/x``, ``/x/../admin/x``, ``/%61dmin/x`` or
``/admin%2fx``, which origins (nginx, WSGI apps) resolve to ``/admin/x``. So the path is
normalised once, before routing, and the normalised path is what goes to the origin:

1. RFC 3986 §2.3: "URIs that differ in the replacement of an unreserved character with its
   corresponding percent-encoded US-ASCII octet are equivalent": percent-encoded unreserved
   characters (``A-Z a-z 0-9 - . _ ~``) are decoded;
2. §6.2.2.1: "the hexadecimal digits within a percent-encoding triplet ... should be
   normalized to use uppercase letters": the other escapes are kept, upper-cased;
3. repeated slashes are merged (as nginx's ``merge_slashes on``);
4. §5.2.4: dot segments are removed (``/a/./b`` → ``/a/b``, ``/a/../b`` → ``/b``, never above
   the root).

``%2F``, ``%5C``, ``%00`` and a literal ``\\`` in the path have no safe meaning (an origin may
read them as a separator or a string end) and are refused by default
(``global.path_escaped_slashes = "reject"``; ``"keep"`` passes them on, upper-cased). A
malformed escape (``%`` not followed by two hex digits) is refused. The query string is never
touched. RFC 9112 §3.2: a target is origin-form (``/path``), absolute-form (reduced to
origin-form by the parser), authority-form (``host:port``, CONNECT only) or asterisk-form
(``*``, OPTIONS only); anything else is refused.

Pure and total: bytes in, bytes out or ``ClientProtocolError`` (400). The common, already
normal path costs a few byte scans; results for new paths are remembered in a bounded memo.
"""

from __future__ import annotations

from typing import Final

from revproxy.errors import ClientProtocolError

_UNRESERVED: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
)
_HEX: Final = frozenset(b"0123456789abcdefABCDEF")
# Decoded, these would change what the path means to the origin: '/', '\' and NUL.
_ESCAPED_SEPARATORS: Final = frozenset({0x2F, 0x5C, 0x00})

# Targets normalised before → normalised target; one memo per mode, cleared when full.
_MEMO_MAX: Final = 4096
_MEMO_LENGTH: Final = 1024  # longer targets are worked out each time
_memos: dict[bool, dict[bytes, bytes]] = {True: {}, False: {}}


def normalize_target(method: bytes, target: bytes, *, reject_escaped: bool = True) -> bytes:
    """The target to route on and forward: its path normalised, its query untouched.

    Raises ``ClientProtocolError`` for a target of the wrong form for ``method``, an escaped
    separator (when ``reject_escaped``) and a malformed escape."""
    if target[:1] != b"/":
        _check_other_form(method, target)
        return target
    memo = _memos[reject_escaped]
    found = memo.get(target)
    if found is not None:
        return found
    cut = target.find(b"?")
    path = target if cut < 0 else target[:cut]
    if (
        path.find(b"%") < 0
        and path.find(b"//") < 0
        and path.find(b"/.") < 0
        and path.find(b"\\") < 0
    ):
        result = target  # already normal: the common case
    else:
        new_path = normalize_path(path, reject_escaped=reject_escaped)
        result = new_path if cut < 0 else new_path + target[cut:]
    if len(target) <= _MEMO_LENGTH:
        if len(memo) >= _MEMO_MAX:
            memo.clear()
        memo[target] = result
    return result


def normalize_path(path: bytes, *, reject_escaped: bool = True) -> bytes:
    """An origin-form path (no query) in its normal form (see the module's rule)."""
    if reject_escaped and path.find(b"\\") >= 0:
        raise ClientProtocolError("backslash in the request path")
    if path.find(b"%") >= 0:
        path = _decode_unreserved(path, reject_escaped)
    while path.find(b"//") >= 0:
        path = path.replace(b"//", b"/")
    if path.find(b"/.") >= 0:
        path = _remove_dot_segments(path)
    return path


def path_of(target: bytes) -> bytes:
    """The path of an origin-form target, without its query."""
    cut = target.find(b"?")
    return target if cut < 0 else target[:cut]


def _decode_unreserved(path: bytes, reject_escaped: bool) -> bytes:
    parts = path.split(b"%")
    out = bytearray(parts[0])
    for part in parts[1:]:
        if len(part) < 2 or part[0] not in _HEX or part[1] not in _HEX:
            raise ClientProtocolError("malformed percent-encoding in the request path")
        code = int(part[:2], 16)
        if code in _UNRESERVED:
            out.append(code)
        elif reject_escaped and code in _ESCAPED_SEPARATORS:
            raise ClientProtocolError("encoded slash, backslash or NUL in the request path")
        else:
            out += b"%" + part[:2].upper()
        out += part[2:]
    return bytes(out)


def _remove_dot_segments(path: bytes) -> bytes:
    """RFC 3986 §5.2.4 for an absolute path whose slashes are already merged."""
    segments = path.split(b"/")[1:]
    out: list[bytes] = []
    for segment in segments:
        if segment == b".":
            continue
        if segment == b"..":
            if out:
                out.pop()
            continue
        out.append(segment)
    result = b"/" + b"/".join(out)
    # "/a/b/." and "/a/b/.." name a directory: the output keeps the trailing slash.
    if segments and segments[-1] in (b".", b"..") and not result.endswith(b"/"):
        result += b"/"
    return result


def _check_other_form(method: bytes, target: bytes) -> None:
    """RFC 9112 §3.2.3-3.2.4: authority-form for CONNECT only, asterisk-form for OPTIONS."""
    if target == b"*":
        if method == b"OPTIONS":
            return
        raise ClientProtocolError("asterisk-form request target is for OPTIONS only")
    if method == b"CONNECT":
        host, sep, port = target.rpartition(b":")
        if sep and host and port.isdigit() and len(port) <= 5 and target.find(b"/") < 0:
            return
        raise ClientProtocolError("CONNECT needs an authority-form target (host:port)")
    raise ClientProtocolError("invalid request target")
