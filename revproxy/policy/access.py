"""Allow and deny lists, compiled once per generation.

Rule of this room: deny wins over allow; with an allow list, anything it does not name is
refused; a listener or route without either lets everyone in and costs nothing per request
(it has no ``AccessList`` at all). A lookup is one memoised address parse and one binary search
per list (proto/netset.py), whatever the list's length.
"""

from __future__ import annotations

from revproxy.config.model import Access
from revproxy.proto.netset import NetworkSet

# The reason a refusal is logged and counted under (access log ``refused=``, metrics).
DENY = "deny"


class AccessList:
    """The compiled ``allow``/``deny`` of one listener or route."""

    __slots__ = ("allow", "allow_listed", "deny")

    def __init__(self, access: Access) -> None:
        self.allow = NetworkSet(access.allow)
        self.deny = NetworkSet(access.deny)
        self.allow_listed = access.allow_listed

    def permits(self, client: str) -> bool:
        """Whether ``client`` (an address as text) may come in."""
        if self.deny and client in self.deny:
            return False
        return not self.allow_listed or client in self.allow


def compile_access(access: Access) -> AccessList | None:
    """None when nothing is checked (the common case costs one ``is None``)."""
    return AccessList(access) if access.restricted else None
