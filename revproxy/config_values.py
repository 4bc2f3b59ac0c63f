"""Reading configuration values: durations, sizes, addresses, networks, host names, and the
table reader that hands them out with their key paths.

Rule of this room: a parser takes one TOML value and returns a typed value, or raises
``ValueError`` whose message is the whole reason, written for the operator: what is wrong and
what to write instead. A parser never knows where its value came from; ``TableReader`` puts the
file and key path in front of the reason and records it, and never stops at the first problem.
What the values mean together (references, clashes, merging files) is ``config_load.py``'s.
"""

from __future__ import annotations

import datetime
import difflib
import ipaddress
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from revproxy.config import Bind, Network
from revproxy.errors import ConfigProblem

__all__ = [
    "MISSING",
    "ReadContext",
    "TableReader",
    "describe",
    "parse_bind",
    "parse_duration",
    "parse_host_pattern",
    "parse_network",
    "parse_server",
    "parse_size",
    "unknown_key",
]


_T = TypeVar("_T")
_D = TypeVar("_D")
_S = TypeVar("_S", bound=str)

MISSING = object()  # what TableReader.raw returns for a key that is not there


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
        end = host.find("]")
        address = _ipv6(host[1:end]) if end > 0 else None
        if address is None:
            raise ValueError(f"{shown} is not a bracketed IPv6 address")
        if host[end + 1 :]:
            raise ValueError(
                f'{shown}: no port in host (write "[{address}]"; '
                "pick ports with the route's listeners)"
            )
        return f"[{address}]"
    if host.count(":") > 1:
        address = _ipv6(host)
        if address is None:
            raise ValueError(f"{shown} is not a host name")
        raise ValueError(f'{shown}: an IPv6 address needs brackets (write "[{address}]")')
    if ":" in host:
        name = host.partition(":")[0]
        raise ValueError(
            f'{shown}: no port in host (write "{name}"; pick ports with the route\'s listeners)'
        )
    if "*" in host:
        rest = host[2:]
        if not host.startswith("*.") or "*" in rest or not rest:
            raise ValueError(
                f'{shown}: "*" may only be the whole first label, as in "*.example.com"'
            )
        return "*." + _check_name(rest, shown)
    return _check_name(host, shown)


# --- reading tables ----------------------------------------------------------------------


@dataclass
class ReadContext:
    """What every reader shares: where relative paths start, and the problems so far."""

    base_dir: Path | None
    problems: list[ConfigProblem] = field(default_factory=list)

    def add(self, file: str, key: str, reason: str) -> None:
        self.problems.append(ConfigProblem(file, key, reason))

    def resolve(self, raw: str) -> Path:
        path = Path(raw)
        if self.base_dir is not None and not path.is_absolute():
            return self.base_dir / path
        return path


def unknown_key(name: str, allowed: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, allowed, n=1)
    hint = f'did you mean "{close[0]}"? ' if close else ""
    return f"unknown key ({hint}allowed keys: {', '.join(allowed)})"


class TableReader:
    """One TOML table being read: hands out typed values, records problems under key paths.

    Every reader returns the default when the key is missing *or* wrong, having recorded why;
    the object built from a table with problems is thrown away with the ConfigError.
    """

    def __init__(
        self,
        data: Mapping[str, object],
        where: str,
        file: str,
        ctx: ReadContext,
        allowed: Sequence[str],
        key_files: Mapping[str, str] | None = None,
    ) -> None:
        self.data = data
        self.where = where
        self.file = file
        self.ctx = ctx
        self.key_files = key_files or {}
        for name in data:
            if name not in allowed:
                self.problem(name, unknown_key(name, allowed))

    def key(self, name: str) -> str:
        """The key path of `name` in this table, e.g. listener[0].tls.certs."""
        return f"{self.where}.{name}" if self.where else name

    def problem(self, name: str, reason: str) -> None:
        self.ctx.add(self.key_files.get(name, self.file), self.key(name), reason)

    def problem_here(self, reason: str) -> None:
        self.ctx.add(self.file, self.where, reason)

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str) -> object:
        return self.data.get(name, MISSING)

    def parsed(self, name: str, parse: Callable[[object], _T], default: _D) -> _T | _D:
        value = self.raw(name)
        if value is MISSING:
            return default
        try:
            return parse(value)
        except ValueError as exc:
            self.problem(name, str(exc))
            return default

    def string(self, name: str, default: _D, *, required: str = "") -> str | _D:
        value = self.raw(name)
        if value is MISSING:
            if required:
                self.problem(name, f"required ({required})")
            return default
        if isinstance(value, str) and value:
            return value
        self.problem(name, f"expected a non-empty string, got {describe(value)}")
        return default

    def text(self, name: str, default: str) -> str:
        """A string that may be empty."""
        value = self.raw(name)
        if value is MISSING:
            return default
        if not isinstance(value, str):
            self.problem(name, f"expected a string, got {describe(value)}")
            return default
        return value

    def integer(self, name: str, default: _D, low: int, high: int | None = None) -> int | _D:
        value = self.raw(name)
        if value is MISSING:
            return default
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and low <= value <= (value if high is None else high)
        ):
            return value
        wanted = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"
        self.problem(name, f"expected {wanted}, got {describe(value)}")
        return default

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is MISSING:
            return default
        if isinstance(value, bool):
            return value
        self.problem(name, f"expected true or false, got {describe(value)}")
        return default

    def choice(self, name: str, allowed: Sequence[_S], default: _D) -> _S | _D:
        value = self.raw(name)
        if value is MISSING:
            return default
        for option in allowed:
            if value == option:
                return option
        listed = ", ".join(f'"{option}"' for option in allowed)
        self.problem(name, f"expected one of {listed}, got {describe(value)}")
        return default

    def duration(self, name: str, default: float, *, positive: bool = True) -> float:
        seconds = self.parsed(name, parse_duration, default)
        if positive and seconds <= 0:
            self.problem(name, f"must be more than zero, got {describe(self.raw(name))}")
            return default
        return seconds

    def size(self, name: str, default: int, low: int = 0) -> int:
        size = self.parsed(name, parse_size, default)
        if size < low:
            self.problem(name, f"must be at least {low} bytes, got {describe(self.raw(name))}")
            return default
        return size

    def path(self, name: str, default: _D, *, required: str = "") -> Path | _D:
        raw = self.string(name, None, required=required)
        return default if raw is None else self.ctx.resolve(raw)

    def table(self, name: str, allowed: Sequence[str]) -> TableReader | None:
        value = self.raw(name)
        if value is MISSING:
            return None
        if not isinstance(value, dict):
            self.problem(name, f"expected a table, got {describe(value)}")
            return None
        return TableReader(value, self.key(name), self.file, self.ctx, allowed)

    def items(self, name: str, *, single: bool = True) -> Iterator[tuple[str, object]]:
        """(key path, value) of each element of an array; a lone value counts as one."""
        value = self.raw(name)
        if value is MISSING:
            return
        if isinstance(value, list):
            for index, item in enumerate(value):
                yield f"{self.key(name)}[{index}]", item
        elif single:
            yield self.key(name), value
        else:
            self.problem(name, f"expected an array, got {describe(value)}")

    def tables(self, name: str, allowed: Sequence[str]) -> Iterator[TableReader]:
        for key, item in self.items(name, single=False):
            if isinstance(item, dict):
                yield TableReader(item, key, self.file, self.ctx, allowed)
            else:
                self.ctx.add(self.file, key, f"expected a table, got {describe(item)}")

    def strings(self, name: str, parse: Callable[[str], _T]) -> list[tuple[str, _T]]:
        """A string or an array of strings, each parsed; (key path, parsed value) pairs."""
        out: list[tuple[str, _T]] = []
        for key, item in self.items(name):
            if not isinstance(item, str):
                self.ctx.add(self.file, key, f"expected a string, got {describe(item)}")
                continue
            try:
                out.append((key, parse(item)))
            except ValueError as exc:
                self.ctx.add(self.file, key, str(exc))
        return out

    def unique(self, name: str, items: Sequence[tuple[str, object]]) -> None:
        """Report each value listed twice in one array."""
        first: dict[str, str] = {}
        for key, value in items:
            shown = str(value)
            if shown in first:
                self.ctx.add(self.file, key, f'"{shown}" is listed twice (also {first[shown]})')
            else:
                first[shown] = key
