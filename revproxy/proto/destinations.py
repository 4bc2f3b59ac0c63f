"""Egress destination policy, pure: which host names, addresses and ports the origin may reach
through the forward proxy (``[egress.NAME]``), decided twice.

Rule of this room: nothing is allowed unless ``destinations`` names it (DESIGN decision 9).
A request is first judged by what the client asked for — the name (exact, or ``*.suffix``
matching any deeper name), the IP literal (inside a listed network), and the port (in
``ports``; for a tunnel, CONNECT or SOCKS5, also in ``connect_ports``). Then, at connect time,
every address the name resolved to is judged again against ``deny``: the classes
``loopback``, ``private``, ``link-local`` and ``metadata`` and any network written there. So a
name that is allowed but resolves (or is rebound) to 127.0.0.1 or 169.254.169.254 is refused.
An address that a ``destinations`` network (or literal) names itself is not refused by a deny
*class*: writing ``"10.1.2.0/24"`` in ``destinations`` is the explicit way to reach a private
network; a network written in ``deny`` is refused always.

No I/O here: resolution happens in the egress shell, which hands the addresses in.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

__all__ = [
    "DEFAULT_DENY",
    "DENY_CLASSES",
    "DestinationPolicy",
    "Rule",
    "parse_authority",
    "parse_deny",
    "parse_port_range",
    "parse_rule",
]


def _nets(*texts: str) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(t) for t in texts)


# The deny classes (RFC 6890 special-purpose registries, plus the cloud metadata endpoints).
DENY_CLASSES: dict[str, tuple[Network, ...]] = {
    # 0.0.0.0/8 and :: reach the host itself on Linux, like 127.0.0.1.
    "loopback": _nets("127.0.0.0/8", "0.0.0.0/8", "::1/128", "::/128"),
    # RFC 1918, shared address space (RFC 6598, carrier NAT), unique local IPv6 (RFC 4193).
    "private": _nets("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"),
    "link-local": _nets("169.254.0.0/16", "fe80::/10"),
    # AWS/GCP/Azure/OpenStack (169.254.169.254), AWS IPv6 (fd00:ec2::254), ECS task metadata
    # (169.254.170.2), Alibaba Cloud (100.100.100.200).
    "metadata": _nets(
        "169.254.169.254/32", "169.254.170.2/32", "fd00:ec2::254/128", "100.100.100.200/32"
    ),
}
DEFAULT_DENY: tuple[str, ...] = ("loopback", "private", "link-local", "metadata")

# Refusal reasons (access log ``refused=``, metrics ``decision``).
NOT_LISTED = "destination"
PORT = "port"
CONNECT_PORT = "connect-port"


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``destinations`` entry: ``"*"``, a name, ``"*.suffix"``, or a network; a port or
    None for any (``ports`` still applies)."""

    name: str = ""  # "*", "api.example.com", "*.example.com"; "" for a network
    network: Network | None = None
    port: int | None = None

    def __str__(self) -> str:
        if self.network is not None:
            if self.port is None:
                return str(self.network)
            host = str(self.network.network_address)
            if self.network.prefixlen != self.network.max_prefixlen:
                return f"{self.network}:{self.port}"
            return f"[{host}]:{self.port}" if self.network.version == 6 else f"{host}:{self.port}"
        return self.name if self.port is None else f"{self.name}:{self.port}"


def _mapped(address: Address) -> Address:
    """``::ffff:127.0.0.1`` is 127.0.0.1 (an IPv4-mapped IPv6 address reaches the IPv4 one)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _ip(text: str) -> Address | None:
    try:
        return _mapped(ipaddress.ip_address(text))
    except ValueError:
        return None


def parse_port_range(value: int | str) -> tuple[int, int]:
    """``443``, ``"443"`` or ``"1025-65535"`` → (low, high); ValueError otherwise."""
    if isinstance(value, int):
        low = high = value
    else:
        text = value.strip()
        lo, sep, hi = text.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f'"{value}" is not a port or a range (write 443 or "1025-65535")')
        low, high = int(lo), int(hi) if sep else int(lo)
    if not 1 <= low <= 65535 or not 1 <= high <= 65535:
        raise ValueError(f"{value}: ports are 1 to 65535")
    if low > high:
        raise ValueError(f'"{value}": the range is backwards (write "{high}-{low}")')
    return low, high


def _port(text: str, shown: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"{shown}: port {text!r} is not a number from 1 to 65535")
    return int(text)


def _name(text: str, shown: str) -> str:
    labels = text.split(".")
    if len(text) > 253 or not all(
        0 < len(label) <= 63
        and label.isascii()
        and all(c.isalnum() or c in "-_" for c in label)
        and not label.startswith("-")
        for label in labels
    ):
        raise ValueError(
            f"{shown} is not a host name, a *.wildcard, an IP address or a network "
            '(write e.g. "api.example.com", "*.example.com", "198.51.100.0/24")'
        )
    return text


def parse_rule(value: str) -> Rule:
    """A ``destinations`` entry: ``"*"``, ``"api.example.com"``, ``"*.example.com"``,
    ``"db.example.com:5432"``, ``"198.51.100.7"``, ``"198.51.100.0/24"``, ``"[2001:db8::1]:443"``,
    ``"2001:db8::/32"``. ValueError with the way out otherwise."""
    shown = f'"{value}"'
    text = value.strip().lower()
    if not text:
        raise ValueError('empty destination (write e.g. "api.example.com" or "*")')
    if "://" in text:
        raise ValueError(f"{shown}: write a host, not a URL")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f'{shown} has a "[" without its "]"')
        address = _ip(text[1:end])
        if address is None or address.version != 6:
            raise ValueError(f"{shown}: brackets are for IPv6 addresses only")
        rest = text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f'{shown}: expected ":PORT" after "]"')
        port = _port(rest[1:], shown) if rest else None
        return Rule(network=ipaddress.ip_network(address), port=port)
    if "/" in text:
        net_text, port = text, None
        if text.count(":") == 1 and "." in text:  # "198.51.100.0/24:443"
            net_text, _, port_text = text.rpartition(":")
            port = _port(port_text, shown)
        try:
            network = ipaddress.ip_network(net_text, strict=True)
        except ValueError:
            raise ValueError(
                f'{shown} is not a network (write e.g. "198.51.100.0/24"; host bits must be 0)'
            ) from None
        return Rule(network=network, port=port)
    if text.count(":") > 1:
        address = _ip(text)
        if address is None:
            raise ValueError(f'{shown}: an IPv6 address with a port goes in brackets ("[::1]:443")')
        return Rule(network=ipaddress.ip_network(address))
    host, sep, port_text = text.partition(":")
    port = _port(port_text, shown) if sep else None
    if host == "*":
        return Rule(name="*", port=port)
    address = _ip(host)
    if address is not None:
        return Rule(network=ipaddress.ip_network(address), port=port)
    if host.endswith("."):
        raise ValueError(f'{shown}: no trailing dot (write "{host.rstrip(".")}")')
    if host.startswith("*."):
        return Rule(name="*." + _name(host[2:], shown), port=port)
    if "*" in host:
        raise ValueError(f'{shown}: "*" only as the whole first label ("*.example.com")')
    return Rule(name=_name(host, shown), port=port)


def parse_deny(value: str) -> str | Network:
    """A ``deny`` entry: a class name or a network."""
    if value in DENY_CLASSES:
        return value
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError:
        classes = ", ".join(f'"{c}"' for c in DENY_CLASSES)
        raise ValueError(
            f'"{value}" is neither a class ({classes}) nor a network (write e.g. "10.0.0.0/8")'
        ) from None


def parse_authority(authority: str, default_port: int | None) -> tuple[str, int] | None:
    """What a client asked for — ``host:port``, ``[v6]:port`` (or without the port when
    ``default_port`` is given) — as (lower-case host without brackets or trailing dot, port);
    None when it is not one."""
    text = authority.strip()
    if not text or any(c.isspace() or c in "@/\\?#" for c in text):
        return None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        host, rest = text[1:end], text[end + 1 :]
        address = _ip(host)
        if address is None or ":" not in host:
            return None
        host = str(ipaddress.ip_address(host))
    else:
        if text.count(":") > 1:
            return None
        host, sep, port_text = text.partition(":")
        rest = ":" + port_text if sep else ""
    if rest:
        if not rest.startswith(":") or not rest[1:].isdigit():
            return None
        port = int(rest[1:])
    elif default_port is not None:
        port = default_port
    else:
        return None
    if not 1 <= port <= 65535:
        return None
    host = host.lower().rstrip(".")
    if not host or len(host) > 253 or not host.isascii():
        return None
    return host, port


def _in_ranges(port: int, ranges: Sequence[tuple[int, int]]) -> bool:
    return any(low <= port <= high for low, high in ranges)


@dataclass(frozen=True, slots=True)
class DestinationPolicy:
    """One ``[egress.NAME]``'s rules, compiled."""

    rules: tuple[Rule, ...] = ()
    ports: tuple[tuple[int, int], ...] = ((80, 80), (443, 443), (1025, 65535))
    connect_ports: tuple[tuple[int, int], ...] = ((443, 443),)
    deny_classes: tuple[str, ...] = DEFAULT_DENY
    deny_networks: tuple[Network, ...] = ()

    def check_request(self, host: str, port: int, *, tunnel: bool) -> str:
        """Why the destination the client asked for is refused, or "" when it may be
        resolved and checked again (``check_address``). ``host`` is lower-case, without
        brackets (``parse_authority``)."""
        if not _in_ranges(port, self.ports):
            return PORT
        if tunnel and not _in_ranges(port, self.connect_ports):
            return CONNECT_PORT
        address = _ip(host)
        for rule in self.rules:
            if rule.port is not None and rule.port != port:
                continue
            if rule.name == "*":
                return ""
            if address is not None:
                if rule.network is not None and address in rule.network:
                    return ""
            elif rule.name and _name_matches(rule.name, host):
                return ""
        return NOT_LISTED

    def check_address(self, address: str) -> str:
        """Why a resolved address is refused (``deny:CLASS`` or ``deny:NETWORK``), or ""."""
        ip = _ip(address)
        if ip is None:
            return "deny:address"
        for network in self.deny_networks:
            if ip.version == network.version and ip in network:
                return f"deny:{network}"
        if self.deny_classes and not self._listed(ip):
            for name in self.deny_classes:
                for network in DENY_CLASSES[name]:
                    if ip.version == network.version and ip in network:
                        return f"deny:{name}"
        return ""

    def _listed(self, ip: Address) -> bool:
        return any(
            rule.network is not None and ip.version == rule.network.version and ip in rule.network
            for rule in self.rules
        )

    def allowed_addresses(self, addresses: Iterable[str]) -> tuple[list[str], str]:
        """The addresses that pass ``check_address`` (in order) and the first refusal."""
        kept: list[str] = []
        refusal = ""
        for address in addresses:
            reason = self.check_address(address)
            if reason:
                refusal = refusal or reason
            else:
                kept.append(address)
        return kept, refusal


def _name_matches(pattern: str, host: str) -> bool:
    """``*.example.com`` matches any name below example.com (not example.com itself), as
    Squid's ``dstdomain .example.com`` does for subdomains."""
    if pattern.startswith("*."):
        suffix = pattern[1:]
        return host.endswith(suffix) and len(host) > len(suffix)
    return pattern == host
