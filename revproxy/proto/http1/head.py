"""What both HTTP/1.1 implementations check of a request head before parsing it.

Rule of this room: the screen is one function both implementations call, so the reference
(``exact.py``, h11) and the fast path (``fast.py``, llhttp) refuse the same bytes: bare CR or
LF, obsolete line folding, and an absolute-form target with user information.
"""

from __future__ import annotations

from revproxy.errors import ClientProtocolError

DEFAULT_MAX_HEADER_SIZE = 16384


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
