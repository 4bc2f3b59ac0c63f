"""Sets of IP networks (allow and deny lists), looked up in logarithmic time.

Rule of this room: a set is built once per configuration generation and never changes; a
lookup is one integer conversion and one binary search, whatever the size of the list (100,000
CIDRs cost what ten do). Networks are turned into inclusive integer ranges per address family,
sorted, and overlapping or adjacent ranges merged, so a lookup is "the last range that starts at
or below the address: does it reach it?". An IPv4-mapped IPv6 address (``::ffff:203.0.113.7``,
what a dual-stack socket reports for an IPv4 client) is looked up as the IPv4 address it is.

Pure and total: addresses that are no IP address (a Unix socket's path, "") are in no set.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_right
from collections.abc import Iterable
from typing import Final

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Client addresses converted before (a client sends many requests): bounded, cleared when full.
_MEMO_MAX: Final = 4096
_parsed: dict[str, tuple[int, int] | None] = {}


def parse_address(text: str) -> tuple[int, int] | None:
    """``(family, integer)`` of an address as text (4 or 6; IPv4-mapped IPv6 as 4), or None
    when it is no IP address. Remembered in a bounded memo."""
    if text in _parsed:
        return _parsed[text]
    try:
        ip: Address = ipaddress.ip_address(text)
    except ValueError:
        key = None
    else:
        key = _key(ip)
    if len(_parsed) >= _MEMO_MAX:
        _parsed.clear()
    _parsed[text] = key
    return key


def _key(ip: Address) -> tuple[int, int]:
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped
        if mapped is not None:
            return 4, int(mapped)
        return 6, int(ip)
    return 4, int(ip)


class NetworkSet:
    """An immutable set of IPv4 and IPv6 networks (``address in networks``)."""

    __slots__ = ("_ends", "_starts", "size")

    def __init__(self, networks: Iterable[Network]) -> None:
        ranges: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        size = 0
        for net in networks:
            size += 1
            family: int = net.version
            first = int(net.network_address)
            last = int(net.broadcast_address)
            if family == 6 and isinstance(net, ipaddress.IPv6Network):
                mapped = net.network_address.ipv4_mapped
                if mapped is not None and net.prefixlen >= 96:
                    # ::ffff:10.0.0.0/104 is 10.0.0.0/8: clients are looked up as IPv4.
                    family, first = 4, int(mapped)
                    last = first + (last - int(net.network_address))
            ranges[family].append((first, last))
        self._starts: dict[int, list[int]] = {}
        self._ends: dict[int, list[int]] = {}
        for family, spans in ranges.items():
            starts, ends = _merged(spans)
            self._starts[family] = starts
            self._ends[family] = ends
        self.size = size  # networks given, before merging (for messages and metrics)

    def __contains__(self, address: object) -> bool:
        if isinstance(address, str):
            key = parse_address(address)
        elif isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address):
            key = _key(address)
        else:
            return False
        if key is None:
            return False
        family, value = key
        starts = self._starts[family]
        i = bisect_right(starts, value) - 1
        return i >= 0 and value <= self._ends[family][i]

    def __bool__(self) -> bool:
        return bool(self._starts[4] or self._starts[6])

    def __len__(self) -> int:
        """Merged ranges (what a lookup searches)."""
        return len(self._starts[4]) + len(self._starts[6])


def _merged(spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """Sorted inclusive ranges with overlapping and adjacent ones joined."""
    starts: list[int] = []
    ends: list[int] = []
    for first, last in sorted(spans):
        if ends and first <= ends[-1] + 1:
            if last > ends[-1]:
                ends[-1] = last
        else:
            starts.append(first)
            ends.append(last)
    return starts, ends
