"""The start lines of plain HTTP/1.1 heads, for the fast path (``fast.py``,
``fast_client.py``): request lines and status lines read and remembered, request targets
checked and remembered, status lines with their standard reason phrase.

Rule of this room: a line is read here only if it is plain — ``method SP origin-form SP
HTTP/1.1`` with a method of RFC 9110 §9 that does not switch protocols (RFC 9112 §3), or
``HTTP/1.1 SP 3DIGIT [SP reason]`` of a final response whose reason holds no NUL, CR, LF, VT
or FF (RFC 9112 §4) — and anything else is None, "not plain", left to the exact code, which
decides with h11's grammar. A target is h11's ``[\\x21-\\x7e]+``.

The memos are module globals that the plain paths read directly (one dict or set lookup per
line, no call): they remember only what was accepted, never a request line or target longer
than ``MAX_LINE``, and forget everything when full, bounded like those of ``wire.py``. They
memoise pure functions and are never consulted to refuse anything, so a cold memo and a warm
one give the same answers.
"""

from __future__ import annotations

from typing import Final

from revproxy.proto.http1.wire import MAX_LINE, NOT_IN_VALUES, PHRASES

# Methods a plain request may have: those of RFC 9110 §9 that neither switch protocols
# (CONNECT) nor are unusual enough to leave to the exact code.
_PLAIN_METHODS: Final = frozenset(
    [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE"]
)
# What a target may not hold besides bytes above 0x7f (h11: ``[\x21-\x7e]+``).
_NOT_IN_TARGETS: Final = bytes(range(0x21)) + b"\x7f"
# Request lines of plain requests received → (method, target), and targets seen valid (in
# those lines or sent): memos, bounded like those of proto/http1/wire.py.
_request_lines: dict[bytes, tuple[bytes, bytes]] = {}
_targets: set[bytes] = set()
_MAX_REQUEST_LINES: Final = 4096


def _read_request_line(line: bytes) -> tuple[bytes, bytes] | None:
    """``method SP origin-form SP HTTP/1.1`` with a method of _PLAIN_METHODS: (method,
    target), remembered; None otherwise."""
    parts = line.split(b" ")
    if len(parts) != 3:
        return None
    method, target, version = parts
    if (
        version != b"HTTP/1.1"
        or method not in _PLAIN_METHODS
        or target[:1] != b"/"
        or not _valid_target(target)
    ):
        return None
    if len(line) <= MAX_LINE:
        if len(_request_lines) >= _MAX_REQUEST_LINES:
            _request_lines.clear()
        _request_lines[line] = method, target
    return method, target


def _valid_target(target: bytes) -> bool:
    """h11's ``[\\x21-\\x7e]+``; remembered when true."""
    if not target or not target.isascii():
        return False
    if len(target.translate(None, _NOT_IN_TARGETS)) != len(target):
        return False
    if len(target) <= MAX_LINE:
        if len(_targets) >= _MAX_REQUEST_LINES:
            _targets.clear()
        _targets.add(target)
    return True


# Status lines of plain final responses received (the bytes after HTTP/1.1 being known valid)
# → (status, reason): a memo, bounded like those of proto/http1/wire.py.
_status_lines: dict[bytes, tuple[int, bytes]] = {}
_MAX_STATUS_LINES: Final = 256


def _read_status_line(line: bytes) -> tuple[int, bytes] | None:
    """``HTTP/1.1 SP 3DIGIT [SP reason]`` of a final response, the reason holding no NUL, CR,
    LF, VT or FF: (status, reason), remembered; None otherwise."""
    code = line[9:12]
    if (
        not line.startswith(b"HTTP/1.1 ")
        or len(line) < 12
        or not code.isdigit()
        or (len(line) > 12 and line[12] != 0x20)
        or len(line.translate(None, NOT_IN_VALUES)) != len(line)
    ):
        return None
    status = int(code)
    if status < 200:
        return None
    if len(_status_lines) >= _MAX_STATUS_LINES:
        _status_lines.clear()
    _status_lines[line] = (status, line[13:])
    return status, line[13:]


# Status lines with the standard reason phrase, for plain responses.
_STATUS_LINES: Final = {
    status: b"HTTP/1.1 %d %b\r\n" % (status, phrase)
    for status, phrase in PHRASES.items()
    if status >= 200
}
