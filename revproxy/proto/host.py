"""Host names as clients send them: checking and normalising an authority, matching a name
pattern.

Rule of this room: pure functions of strings; the router, the TLS passthrough table and the
configuration checks all read host names through them, so a name means the same everywhere.
"""

from __future__ import annotations

import functools
import ipaddress


def normalise_host(authority: bytes | str) -> str:
    """``Example.COM:8443`` → ``example.com``; ``[::1]:80`` → ``::1``; trailing dot dropped.

    Remembered for authorities of DNS-name length (a client sends the same one on every
    request); longer ones, which name no site anyway, are worked out each time so that the
    memo stays small (4096 entries of 261 bytes at most)."""
    if len(authority) <= _MEMO_LENGTH:
        return _normalise_memo(authority)
    return _normalise(authority)


_MEMO_LENGTH = 261  # a 253-character name, ":" and a port


def _normalise(authority: bytes | str) -> str:
    host = authority.decode("latin-1") if isinstance(authority, bytes) else authority
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        host = host[1:end] if end != -1 else host[1:]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


_normalise_memo = functools.lru_cache(maxsize=4096)(_normalise)


def host_matches(pattern: str, host: str) -> bool:
    """Exact name, or ``*.example.com`` matching exactly one more label."""
    if pattern.startswith("*."):
        suffix = pattern[1:]
        return host.endswith(suffix) and "." not in host[: -len(suffix)] and len(host) > len(suffix)
    return pattern == host


# RFC 3986 §3.2.2: reg-name = *( unreserved / pct-encoded / sub-delims ).
_REG_NAME = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~%!$&'()*+,;="
_HEX = frozenset(b"0123456789abcdefABCDEF")
# Authorities found valid before; a client sends the same one on every request.
_valid: set[bytes] = set()
_VALID_MAX = 4096


def valid_authority(authority: bytes) -> bool:
    """Whether ``authority`` is a Host / ``:authority`` value a server may accept.

    RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status code to any HTTP/1.1
    request message that ... contains ... a Host header field with an invalid field value."
    Valid is ``host [":" port]`` with host a reg-name, an IPv4 address or a bracketed IPv6
    address (RFC 3986 §3.2.2); no user information, no white space, one port of digits at most,
    and not empty."""
    if authority in _valid:
        return True
    if not _check_authority(authority):
        return False
    if len(authority) <= _MEMO_LENGTH:
        if len(_valid) >= _VALID_MAX:
            _valid.clear()
        _valid.add(authority)
    return True


def _check_authority(authority: bytes) -> bool:
    if authority[:1] == b"[":
        end = authority.find(b"]")
        if end < 0:
            return False
        try:
            ipaddress.IPv6Address(authority[1:end].decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            return False
        port = authority[end + 1 :]
    else:
        cut = authority.find(b":")
        host = authority if cut < 0 else authority[:cut]
        port = b"" if cut < 0 else authority[cut:]
        if not host or host.translate(None, _REG_NAME):
            return False
        at = host.find(b"%")
        while at >= 0:
            if len(host) < at + 3 or host[at + 1] not in _HEX or host[at + 2] not in _HEX:
                return False
            at = host.find(b"%", at + 3)
    if not port:
        return True
    digits = port[1:]
    return port[:1] == b":" and len(digits) <= 5 and (not digits or digits.isdigit())
