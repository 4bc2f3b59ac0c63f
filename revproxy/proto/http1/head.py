"""What both HTTP/1.1 implementations check of a request head before parsing it.

Rule of this room: the screen is one function both implementations call, so the reference
(``exact.py``, h11) and the fast path (``fast.py``, llhttp) refuse the same bytes: bare CR or
LF, obsolete line folding, and an absolute-form target with user information. The connection
(``edge/h1_connection.py``) also asks whether the first bytes of a head can become a request
line at all, so that noise is refused at once.
"""

from __future__ import annotations

from revproxy.errors import ClientProtocolError

DEFAULT_MAX_HEADER_SIZE = 16384

# Why a response with both framings is refused (both implementations say the same).
BOTH_LENGTHS = "both Content-Length and Transfer-Encoding"


def screen_head(head: bytes) -> None:
    """Reject request-head bytes that h11 would accept but a proxy must not pass on."""
    crlf = head.count(b"\r\n")
    if head.count(b"\r") != crlf or head.count(b"\n") != crlf:
        raise ClientProtocolError("bare CR or LF in request head")
    if b"\r\n " in head or b"\r\n\t" in head:
        raise ClientProtocolError("obsolete line folding in request head")


def split_absolute(target: bytes) -> tuple[bytes, bytes] | None:
    """``http://host:port/p?q`` → (authority, "/p?q"); None when not absolute-form."""
    lower = target[:8].lower()
    if lower.startswith(b"http://"):
        rest = target[7:]
    elif lower.startswith(b"https://"):
        rest = target[8:]
    else:
        return None
    cut = len(rest)
    for sep in (b"/", b"?"):
        i = rest.find(sep)
        if i != -1:
            cut = min(cut, i)
    authority, path = rest[:cut], rest[cut:]
    if not authority or b"@" in authority:
        raise ClientProtocolError("invalid absolute-form request target")
    if not path.startswith(b"/"):
        path = b"/" + path
    return authority, path


# RFC 9110 §5.6.2: tchar, the bytes a method is made of.
_TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# What a request line may hold past its method: SP, VCHAR (the target, the version) and the
# CR of its line end.
_LINE = bytes(range(0x21, 0x7F)) + b" \r"
# How much of a connection's first bytes the check reads: a method and the start of a target.
START_CHECKED = 64


def impossible_request_start(start: bytes) -> bool:
    """True when ``start`` (the first bytes of a request, line end or not) can never become a
    request line, so the connection is answered 400 at once instead of waiting for a line end
    until the head timeout: a TLS ClientHello on a plain port, binary noise.

    RFC 9112 §2.2: empty lines before the request line are ignored; §3: request-line = method
    SP request-target SP HTTP-version, the method a token."""
    start = start[:START_CHECKED].lstrip(b"\r\n")
    if not start:
        return False
    line = start.split(b"\n", 1)[0]
    method_end = line.find(b" ")
    method = line if method_end < 0 else line[:method_end]
    if method.translate(None, _TCHAR) or (method_end == 0):
        return True
    return bool(method_end > 0 and line[method_end:].translate(None, _LINE))
