"""Host names as clients send them: normalising an authority, matching a name pattern.

Rule of this room: pure functions of strings; the router, the TLS passthrough table and the
configuration checks all read host names through them, so a name means the same everywhere.
"""

from __future__ import annotations

import functools


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
