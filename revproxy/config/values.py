"""Reading configuration values: durations, sizes, addresses, networks, host names, status
patterns and URLs, and how durations and sizes are written back in messages.

Rule of this room: a parser takes one TOML value and returns a typed value, or raises
``ValueError`` whose message is the whole reason, written for the operator: what is wrong and
what to write instead. A parser never knows where its value came from; ``TableReader``
(``config/reader.py``) puts the file and key path in front of the reason and records it. What
the values mean together (references, clashes, merging files) is the loaders'.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import math
import re

from revproxy.config.model import Bind, Network

__all__ = [
    "as_str",
    "describe",
    "format_duration",
    "format_size",
    "header_value",
    "no_crlf",
    "parse_acme_server",
    "parse_bind",
    "parse_check_path",
    "parse_duration",
    "parse_email",
    "parse_expect",
    "parse_host_name",
    "parse_host_pattern",
    "parse_network",
    "parse_server",
    "parse_size",
    "parse_sni_name",
    "parse_sni_pattern",
]


def describe(value: object) -> str:
    """How a TOML value is shown after "got" in a message: strings quoted, containers named."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime.date | datetime.time):
        return f"a date/time ({value.isoformat()})"
    return type(value).__name__


def _q(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


# --- durations and sizes ------------------------------------------------------------------

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# "ms" before "m" so "500ms" is not read as 500 minutes followed by garbage.
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h))+")
_DURATION_HINT = 'write e.g. "500ms", "30s", "5m" or "1m30s"'


def parse_duration(value: object) -> float:
    """ "500ms", "2s", "1m", "1h", "1m30s", or a number of seconds → seconds."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(
            f'expected a duration like "30s" or a number of seconds, got {describe(value)}'
        )
    if isinstance(value, str):
        if re.fullmatch(r"\d+(?:\.\d+)?", value):
            raise ValueError(f'{_q(value)} has no unit (write "{value}s")')
        if not _DURATION.fullmatch(value):
            raise ValueError(f"{_q(value)} is not a duration ({_DURATION_HINT})")
        seconds = sum(
            float(number) * _DURATION_UNITS[unit] for number, unit in _DURATION_PART.findall(value)
        )
    else:
        seconds = float(value)
        if not math.isfinite(seconds):
            raise ValueError(f"{describe(value)} is not a duration ({_DURATION_HINT})")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {describe(value)}")
    return seconds


_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_SIZE = re.compile(r"(\d+)(?:([kmg])(?:i?b)?|b)?", re.IGNORECASE)
_SIZE_HINT = 'write e.g. 16384, "16k", "1m" or "1g"'


def parse_size(value: object) -> int:
    """16384, "16k", "1m", "1g" (binary multiples: "1k" is 1024) → bytes."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"expected a size ({_SIZE_HINT}), got {describe(value)}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative, got {value}")
        return value
    match = _SIZE.fullmatch(value)
    if match is None:
        raise ValueError(f"{_q(value)} is not a size ({_SIZE_HINT})")
    number, unit = match.groups()
    return int(number) * _SIZE_UNITS[(unit or "").lower()]


# --- addresses ----------------------------------------------------------------------------

_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


def _ipv6(text: str) -> ipaddress.IPv6Address | None:
    try:
        return ipaddress.IPv6Address(text)
    except ValueError:
        return None


def _check_name(name: str, shown: str) -> str:
    """A DNS host name or an IPv4 literal, lower-cased; raises ValueError otherwise."""
    if not name.isascii():
        try:
            ascii_form = name.encode("idna").decode("ascii")
        except UnicodeError:
            ascii_form = "xn--..."
        raise ValueError(f'{shown}: write the name in its ASCII form ("{ascii_form}")')
    name = name.lower()
    if re.fullmatch(r"[\d.]+", name):
        try:
            return str(ipaddress.IPv4Address(name))
        except ValueError:
            raise ValueError(f"{shown}: {_q(name)} is not a valid IPv4 address") from None
    if name.endswith("."):
        raise ValueError(f'{shown}: no trailing dot (write "{name.rstrip(".")}")')
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise ValueError(
            f"{shown}: {_q(name)} is not a valid host name "
            '(letters, digits, "-" and "_" in dot-separated labels of 1 to 63 characters)'
        )
    return name


def _port(text: str, shown: str) -> int:
    if not text:
        raise ValueError(f"{shown} has no port number after the colon")
    if not text.isdigit():
        raise ValueError(f"{shown}: port {_q(text)} is not a number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"{shown}: port {port} is out of range (1 to 65535)")
    return port


def _split_host_port(value: str, example_port: int) -> tuple[str, int]:
    """Split "host:port", "[v6]:port" or ":port"; the host comes back without brackets."""
    shown = _q(value)
    if not value:
        raise ValueError(f'empty address (write e.g. "127.0.0.1:{example_port}")')
    if any(c.isspace() for c in value):
        raise ValueError(f"{shown} contains white space")
    if "://" in value:
        bare = value.split("://", 1)[1].split("/", 1)[0]
        raise ValueError(f'{shown} is a URL; write only host and port (write "{bare}")')
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise ValueError(f'{shown} has a "[" without its "]"')
        host, rest = value[1:end], value[end + 1 :]
        if _ipv6(host) is None:
            raise ValueError(
                f'{shown}: brackets are for IPv6 addresses only (write "{host}{rest}")'
            )
        if not rest:
            raise ValueError(f'{shown} has no port (write "[{host}]:{example_port}")')
        if not rest.startswith(":"):
            raise ValueError(f'{shown}: expected ":PORT" after "]"')
        return host, _port(rest[1:], shown)
    if "]" in value:
        raise ValueError(f'{shown} has a "]" without its "["')
    if value.count(":") > 1:
        host, _, port_text = value.rpartition(":")
        split_ok = _ipv6(host) is not None and port_text.isdigit()
        if _ipv6(value) is not None:
            maybe = f'"[{host}]:{port_text}" or ' if split_ok else ""
            raise ValueError(
                f"{shown}: IPv6 addresses go in brackets, before the port "
                f'(write {maybe}"[{value}]:{example_port}")'
            )
        if split_ok:
            raise ValueError(
                f'{shown}: an IPv6 address needs brackets (write "[{host}]:{port_text}")'
            )
        raise ValueError(f'{shown} is not HOST:PORT (IPv6 addresses go in brackets: "[::1]:80")')
    if ":" not in value:
        raise ValueError(f'{shown} has no port (write "{value}:{example_port}")')
    host, _, port_text = value.partition(":")
    return host, _port(port_text, shown)


def _normal_host(host: str, shown: str) -> str:
    address = _ipv6(host)
    if address is not None:
        return str(address)  # compressed, lower-case; keeps a %zone
    return _check_name(host, shown)


def parse_bind(value: str) -> Bind:
    """ ":443" (every address), "127.0.0.1:8443", "[::1]:8443", "localhost:80" → Bind."""
    if value.isdigit():
        raise ValueError(
            f'{_q(value)} has no host (write ":{value}" for every address, or "127.0.0.1:{value}")'
        )
    if value.startswith("*:"):
        raise ValueError(f'{_q(value)}: write "{value[1:]}" to listen on every address')
    host, port = _split_host_port(value, 8080)
    if not host:
        return Bind(host="", port=port)
    return Bind(host=_normal_host(host, _q(value)), port=port)


def parse_server(value: str) -> tuple[str, int]:
    """ "10.0.0.10:8080", "[::1]:8080", "app.internal:8080" → (address without brackets, port)."""
    if value.isdigit():
        raise ValueError(f'{_q(value)} is only a port (write e.g. "10.0.0.5:{value}")')
    host, port = _split_host_port(value, 8080)
    if not host:
        raise ValueError(f'{_q(value)} has no host (write e.g. "10.0.0.5:{port}")')
    return _normal_host(host, _q(value)), port


def parse_network(value: str) -> Network:
    """A CIDR network ("10.0.0.0/8") or one address ("192.0.2.1", taken as /32 or /128)."""
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        if "has host bits set" in str(exc):
            network = ipaddress.ip_network(value, strict=False)
            address = value.split("/", 1)[0]
            raise ValueError(
                f'{_q(value)} has host bits set (write "{network}" for the network, '
                f'or "{address}" for one address)'
            ) from None
        raise ValueError(
            f"{_q(value)} is not an IP address or CIDR network "
            '(write e.g. "10.0.0.0/8" or "192.0.2.1")'
        ) from None


def parse_host_pattern(value: str) -> str:
    """A route host: "example.com", "*.example.com", "192.0.2.1" or "[2001:db8::1]".

    Lower-cased. Ports are an error (pick ports with the route's listeners); "*" is allowed
    only as the whole first label.
    """
    shown = _q(value)
    if not value:
        raise ValueError("empty host name (leave host out to match any host)")
    host = value.lower()
    if host == "*":
        raise ValueError('"*" is not needed: leave host out to match any host')
    if host.startswith("["):
        address = _bracketed(host, shown, "pick ports with the route's listeners")
        return f"[{address}]"
    _no_port(host, shown, "pick ports with the route's listeners")
    return _wildcard_or_name(host, shown)


def parse_sni_pattern(value: str) -> str:
    """A passthrough route's server name: "legacy.example.com" or "*.example.com".

    The rules of a route host, except that an IP address is an error: RFC 6066 section 3,
    "Literal IPv4 and IPv6 addresses are not permitted in "HostName"", so no client sends one.
    """
    shown = _q(value)
    if not value:
        raise ValueError('empty server name (write e.g. "legacy.example.com")')
    host = value.lower()
    if host == "*":
        raise ValueError('"*" is not a server name (write e.g. "*.example.com")')
    _no_ip_sni(host, shown)
    _no_port(host, shown, "pick ports with the route's listeners")
    return _wildcard_or_name(host, shown)


_SERVER_PORT = "the port is the server's"


def parse_sni_name(value: str) -> str:
    """The server name sent to origins in the ClientHello: a DNS name, no wildcard, no IP."""
    shown = _q(value)
    if not value:
        raise ValueError('empty server name (write e.g. "app.internal")')
    host = value.lower()
    _no_ip_sni(host, shown)
    _no_port(host, shown, _SERVER_PORT)
    if "*" in host:
        raise ValueError(f"{shown}: a server name sent to origins cannot be a wildcard")
    return _check_name(host, shown)


def parse_host_name(value: str) -> str:
    """One host for a Host header: "app.internal", "192.0.2.1" or "[2001:db8::1]"."""
    shown = _q(value)
    if not value:
        raise ValueError('empty host name (write e.g. "app.internal")')
    host = value.lower()
    if host.startswith("["):
        return f"[{_bracketed(host, shown, _SERVER_PORT)}]"
    _no_port(host, shown, _SERVER_PORT)
    if "*" in host:
        raise ValueError(f"{shown}: one host name, not a wildcard")
    return _check_name(host, shown)


def _bracketed(host: str, shown: str, port_hint: str) -> ipaddress.IPv6Address:
    end = host.find("]")
    address = _ipv6(host[1:end]) if end > 0 else None
    if address is None:
        raise ValueError(f"{shown} is not a bracketed IPv6 address")
    if host[end + 1 :]:
        raise ValueError(f'{shown}: no port in host (write "[{address}]"; {port_hint})')
    return address


def _no_port(host: str, shown: str, port_hint: str) -> None:
    """Reject "name:port" and bare IPv6 addresses."""
    if host.count(":") > 1:
        address = _ipv6(host)
        if address is None:
            raise ValueError(f"{shown} is not a host name")
        raise ValueError(f'{shown}: an IPv6 address needs brackets (write "[{address}]")')
    if ":" in host:
        name = host.partition(":")[0]
        raise ValueError(f'{shown}: no port in host (write "{name}"; {port_hint})')


def _no_ip_sni(host: str, shown: str) -> None:
    if host.startswith("[") or _ipv6(host) is not None or re.fullmatch(r"[\d.]+", host):
        raise ValueError(f"{shown}: SNI carries host names, never IP addresses (RFC 6066)")


def _wildcard_or_name(host: str, shown: str) -> str:
    if "*" in host:
        rest = host[2:]
        if not host.startswith("*.") or "*" in rest or not rest:
            raise ValueError(
                f'{shown}: "*" may only be the whole first label, as in "*.example.com"'
            )
        return "*." + _check_name(rest, shown)
    return _check_name(host, shown)


# --- HTTP details -------------------------------------------------------------------------

_EXPECT_ITEM = re.compile(r"([2-5])xx|([1-9]\d\d)(?:-([1-9]\d\d))?")
_EXPECT_HINT = 'write e.g. "2xx", "200", "200-399" or "2xx,3xx"'


def parse_expect(value: str) -> str:
    """Health check statuses: classes ("2xx"), codes ("200"), ranges ("200-399"), listed
    with commas ("2xx,3xx") → the same, lower-case, without spaces."""
    shown = _q(value)
    items = [item.strip().lower() for item in value.split(",")]
    for item in items:
        if not item:
            raise ValueError(f"{shown} has an empty item ({_EXPECT_HINT})")
        match = _EXPECT_ITEM.fullmatch(item)
        if match is None:
            raise ValueError(
                f"{shown}: {_q(item)} is not a status, range or class ({_EXPECT_HINT})"
            )
        if match[2] is None:
            continue
        low, high = int(match[2]), int(match[3] or match[2])
        for status in (low, high):
            if not 200 <= status <= 599:
                # h11 and h2 hand interim 1xx responses over separately; a check sees the
                # final status only.
                raise ValueError(f"{shown}: {status} is not a final status (200 to 599)")
        if low > high:
            raise ValueError(f'{shown}: the range {item} goes down (write "{high}-{low}")')
    return ",".join(items)


def parse_check_path(value: str) -> str:
    """The request target of an HTTP health check: "/healthz", "/status?full=1"."""
    shown = _q(value)
    if not value.startswith("/"):
        raise ValueError(f'{shown} must start with "/" (write "/{value}")')
    if any(c.isspace() or ord(c) < 0x20 or c == "\x7f" for c in value):
        raise ValueError(f"{shown} contains white space or control characters")
    if "#" in value:
        raise ValueError(f'{shown}: a fragment ("#...") is never sent to a server')
    return value


def parse_acme_server(value: str) -> str:
    """An ACME directory URL: "https://acme-staging-v02.api.letsencrypt.org/directory"."""
    scheme, sep, rest = value.partition("://")
    host = rest.split("/", 1)[0]
    if not sep or scheme not in ("https", "http") or not host or any(c.isspace() for c in value):
        raise ValueError(
            f"{_q(value)} is not an ACME directory URL (write one starting with https://, e.g. "
            '"https://acme-staging-v02.api.letsencrypt.org/directory")'
        )
    return value


_EMAIL = re.compile(r"[^@\s,]+@[^@\s,]+\.[^@\s,.][^@\s,]*")


def parse_email(value: str) -> str:
    """A contact address for the ACME account; certbot takes several separated by commas."""
    for address in value.split(","):
        if not _EMAIL.fullmatch(address.strip()):
            raise ValueError(
                f'{_q(address.strip())} is not an email address (write e.g. "admin@example.com")'
            )
    return ",".join(address.strip() for address in value.split(","))


def as_str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {describe(value)}")
    return value


def no_crlf(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError("must not contain line breaks (it is sent in a header)")
    return value


def header_value(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {describe(value)}")
    return no_crlf(value)


# --- written back -------------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    """90.0 → "1m30s", 0.5 → "500ms": how messages and `revproxy check` show durations."""
    if seconds < 1 and seconds != 0:
        return f"{seconds * 1000:g}ms"
    minutes, rest = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else ""]
    parts.append(f"{rest:g}s" if rest or not (hours or minutes) else "")
    return "".join(parts)


def format_size(size: int) -> str:
    """16384 → "16k"; sizes that are no whole multiple stay in bytes."""
    for unit, factor in (("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)
