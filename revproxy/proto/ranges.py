"""Range requests (RFC 9110 §14): which bytes of a representation of known size a ``Range``
field asks for, and whether ``If-Range`` lets it.

Rule of this room: pure and total; a field we will not honour is ignored, never an error.
``parse_range`` reads ``bytes=`` ranges (§14.1.2: ``first-last``, ``first-``, ``-suffix``)
and answers one of three things:

- ``None``: serve the whole representation (200). An unknown unit, a malformed or invalid
  ranges-specifier ("An int-range is invalid if the last-pos value is present and less than
  the first-pos"), more than ``MAX_RANGES`` ranges (against abuse: §14.2 "a server MAY ignore
  the Range header field"), and ranges that stay several once coalesced: we send no
  ``multipart/byteranges``, so several ranges get the whole representation, which §14.2
  allows. An empty representation has no byte a range could name: it is sent whole too.
- ``Unsatisfiable``: none of the ranges is satisfiable ("An int-range is satisfiable if the
  first-pos is less than the current length ... A suffix-range is satisfiable if the
  suffix-length is greater than zero") — 416 with ``Content-Range: bytes */size`` (§15.5.17).
- ``ByteRange``: the one range (first and last byte, inclusive) to send with 206 and
  ``Content-Range: bytes first-last/size``. Unsatisfiable members of a list are dropped, the
  others clamped to the representation and coalesced when they overlap or touch.

``if_range_allows`` is §13.1.5: the range is sent only if the If-Range validator still names
the representation — an entity-tag by the strong comparison, a date by being exactly its
Last-Modified.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from revproxy.proto.conditional import parse_etag
from revproxy.proto.httpdate import parse_http_date

__all__ = [
    "MAX_RANGES",
    "ByteRange",
    "Unsatisfiable",
    "if_range_allows",
    "parse_range",
    "parse_range_set",
]

# More ranges than this in one field: the field is ignored (200 with the whole representation).
MAX_RANGES: Final = 16
_OWS: Final = b" \t"
# Positions longer than this are beyond any file; read as _HUGE (no quadratic int parsing).
_MAX_DIGITS: Final = 18
_HUGE: Final = 10**18


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Bytes ``first`` to ``last`` (inclusive) of a representation of ``size`` bytes."""

    first: int
    last: int
    size: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    @property
    def content_range(self) -> bytes:
        """The ``Content-Range`` of a 206 carrying this range (§14.4)."""
        return b"bytes %d-%d/%d" % (self.first, self.last, self.size)


@dataclass(frozen=True, slots=True)
class Unsatisfiable:
    """No range of the field is satisfiable for a representation of ``size`` bytes: 416."""

    size: int

    @property
    def content_range(self) -> bytes:
        """§14.4: "A server generating a 416 (Range Not Satisfiable) response to a
        byte-range request SHOULD send a Content-Range header field with an
        unsatisfied-range value" — ``bytes */size``."""
        return b"bytes */%d" % self.size


def parse_range(value: bytes, size: int) -> ByteRange | Unsatisfiable | None:
    """The one range to send, 416, or None (the whole representation): see the module."""
    found = parse_range_set(value, size)
    if isinstance(found, tuple):
        return found[0] if len(found) == 1 else None
    return found


def parse_range_set(value: bytes, size: int) -> tuple[ByteRange, ...] | Unsatisfiable | None:
    """Every satisfiable range of ``value``, clamped to ``size``, coalesced and in order;
    ``Unsatisfiable`` when there is none; None when the field is to be ignored."""
    unit, eq, spec = value.strip(_OWS).partition(b"=")
    # "Range units are compared case-insensitively" (§14.1); no whitespace around "=".
    if not eq or unit.lower() != b"bytes" or size <= 0:
        return None
    spans: list[tuple[int, int]] = []
    members = 0
    for raw in spec.split(b","):
        member = raw.strip(_OWS)
        if not member:
            continue  # §5.6.1: empty list elements are ignored
        members += 1
        if members > MAX_RANGES:
            return None
        first_text, dash, last_text = member.partition(b"-")
        if not dash:
            return None
        if not first_text:
            # suffix-range: the last N bytes (all of them when N >= size).
            n = _position(last_text)
            if n is None:
                return None
            if n > 0:
                spans.append((max(size - n, 0), size - 1))
            continue
        first = _position(first_text)
        if first is None:
            return None
        if last_text:
            last = _position(last_text)
            if last is None or last < first:
                return None
        else:
            last = size - 1
        if first < size:
            spans.append((first, min(last, size - 1)))
    if not members:
        return None  # "bytes=" with no range-spec: not a range-set (1#range-spec)
    if not spans:
        return Unsatisfiable(size)
    spans.sort()
    merged: list[tuple[int, int]] = [spans[0]]
    for first, last in spans[1:]:
        top_first, top_last = merged[-1]
        if first <= top_last + 1:  # overlapping or adjacent
            merged[-1] = (top_first, max(top_last, last))
        else:
            merged.append((first, last))
    return tuple(ByteRange(first, last, size) for first, last in merged)


def if_range_allows(value: bytes, etag: bytes | None, last_modified: int | None) -> bool:
    """§13.1.5: "If the validator given in the If-Range header field matches the current
    validator for the selected representation of the target resource, then the server SHOULD
    process the Range header field as requested. If the validator does not match, then the
    server MUST ignore the Range header field." An entity-tag matches by the strong
    comparison (a weak one never does); an HTTP-date only "if the HTTP-date validator provided
    exactly matches the Last-Modified field value"; anything else matches nothing."""
    value = value.strip(_OWS)
    if value[:1] == b'"' or value[:2] == b"W/":
        theirs = parse_etag(value)
        ours = parse_etag(etag) if etag is not None else None
        if theirs is None or ours is None:
            return False
        return not theirs[0] and not ours[0] and theirs[1] == ours[1]
    date = parse_http_date(value)
    return date is not None and last_modified is not None and date == last_modified


def _position(text: bytes) -> int | None:
    """1*DIGIT as an int (beyond _MAX_DIGITS digits: _HUGE), else None."""
    if not text or not text.isdigit():
        return None
    if len(text) > _MAX_DIGITS:
        return _HUGE
    return int(text)
