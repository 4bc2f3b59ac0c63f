"""The table reader: hands out typed values of one TOML table, with their key paths.

Rule of this room: a reader never stops at the first problem. Every getter returns the
default when the key is missing *or* wrong, having recorded why under the key's file and path
(``conf/20-sites.toml: pool.web.servers[1]: ...``); the object built from a table with
problems is thrown away with the ``ConfigError`` raised at the end. What a value means is the
parsers' (``config/values.py``); what values mean together is the loaders'.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from revproxy.config.values import describe, parse_duration, parse_size
from revproxy.errors import ConfigProblem

__all__ = ["MISSING", "Entry", "ReadContext", "TableReader", "defined", "unknown_key"]

_T = TypeVar("_T")
_D = TypeVar("_D")
_S = TypeVar("_S", bound=str)

MISSING = object()  # what TableReader.raw returns for a key that is not there


CertPairCheck = Callable[[Path, Path], str]


@dataclass
class ReadContext:
    """What every reader shares: where relative paths start, and the problems so far."""

    base_dir: Path | None
    problems: list[ConfigProblem] = field(default_factory=list)
    # Why a certificate/key pair cannot serve ("" if it can). Reading certificates is
    # ``revproxy.certs``' job, a part above this one: the command that loads the config hands
    # its check in (``certs.files.cert_pair_problem``); None checks only that the keys are set.
    check_cert_pair: CertPairCheck | None = None

    def add(self, file: str, key: str, reason: str) -> None:
        self.problems.append(ConfigProblem(file, key, reason))

    def resolve(self, raw: str) -> Path:
        path = Path(raw)
        if self.base_dir is not None and not path.is_absolute():
            return self.base_dir / path
        return path


@dataclass
class Entry:
    """One [[listener]], [[route]] or [pool.NAME] table and the file it came from."""

    file: str
    data: Mapping[str, object]


def unknown_key(name: str, allowed: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, allowed, n=1)
    hint = f'did you mean "{close[0]}"? ' if close else ""
    return f"unknown key ({hint}allowed keys: {', '.join(allowed)})"


def defined(kind: str, names: Sequence[str]) -> str:
    """ "defined pools: web, api" — what a dangling reference could have named instead."""
    kinds = kind if kind.endswith("s") else f"{kind}s"  # "egress" is its own plural
    if not names:
        return f"no {kinds} are defined"
    return f"defined {kinds}: {', '.join(names)}"


class TableReader:
    """One TOML table being read: hands out typed values, records problems under key paths.

    Every reader returns the default when the key is missing *or* wrong, having recorded why;
    ``valid(name)`` says whether a key read without a problem, so checks that compare two
    values (a timeout shorter than an interval) are skipped when either is already reported.
    A table merged from several files (``[global]``) names each key's file in `key_files`.
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
        self.failed: set[str] = set()
        for name in data:
            if name not in allowed:
                self.problem(name, unknown_key(name, allowed))

    def key(self, name: str) -> str:
        """The key path of `name` in this table, e.g. listener[0].tls.certs."""
        return f"{self.where}.{name}" if self.where else name

    def file_of(self, name: str) -> str:
        """The file `name` was set in."""
        return self.key_files.get(name, self.file)

    def problem(self, name: str, reason: str) -> None:
        self.failed.add(name)
        self.ctx.add(self.file_of(name), self.key(name), reason)

    def problem_at(self, name: str, key: str, reason: str) -> None:
        """A problem with one element of `name` (``key`` is e.g. ``route[0].host[1]``)."""
        self.failed.add(name)
        self.ctx.add(self.file_of(name), key, reason)

    def problem_here(self, reason: str) -> None:
        self.ctx.add(self.file, self.where, reason)

    def has(self, name: str) -> bool:
        return name in self.data

    def valid(self, name: str) -> bool:
        """Whether `name` is absent or was read without a problem."""
        return name not in self.failed

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

    def boolean(self, name: str, default: _D) -> bool | _D:
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

    def size(self, name: str, default: int, low: int = 0, high: int | None = None) -> int:
        size = self.parsed(name, parse_size, default)
        if size < low:
            self.problem(name, f"must be at least {low} bytes, got {describe(self.raw(name))}")
            return default
        if high is not None and size > high:
            self.problem(name, f"must be at most {high} bytes, got {describe(self.raw(name))}")
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
        return TableReader(value, self.key(name), self.file_of(name), self.ctx, allowed)

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
                yield TableReader(item, key, self.file_of(name), self.ctx, allowed)
            else:
                self.problem_at(name, key, f"expected a table, got {describe(item)}")

    def strings(self, name: str, parse: Callable[[str], _T]) -> list[tuple[str, _T]]:
        """A string or an array of strings, each parsed; (key path, parsed value) pairs."""
        out: list[tuple[str, _T]] = []
        for key, item in self.items(name):
            if not isinstance(item, str):
                self.problem_at(name, key, f"expected a string, got {describe(item)}")
                continue
            try:
                out.append((key, parse(item)))
            except ValueError as exc:
                self.problem_at(name, key, str(exc))
        return out

    def unique(self, name: str, items: Sequence[tuple[str, object]]) -> None:
        """Report each value listed twice in one array."""
        first: dict[str, str] = {}
        for key, value in items:
            shown = str(value)
            if shown in first:
                self.problem_at(name, key, f'"{shown}" is listed twice (also {first[shown]})')
            else:
                first[shown] = key
