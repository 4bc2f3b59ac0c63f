"""HTTP/2 header blocks coded and decoded: HPACK (RFC 7541), one ``Encoder`` and one
``Decoder`` per connection.

Rule of this room: codec objects, fields in, bytes out and back; no I/O, and no judgement of
what the fields mean (``check.py`` does that on the decoded block). The representations and
errors are python-hyper's hpack's, with table look-ups by dict instead of a scan (the hot path
of every HTTP/2 request). What it enforces, each as the RFC says:

- §4.2, §6.3: dynamic table size updates only at the start of a block, never above the
  SETTINGS_HEADER_TABLE_SIZE we allow; the encoder signals the smallest size since the last
  block, then the current one, and uses at most 4096 bytes whatever the peer allows.
- §4.4: an entry larger than the table empties it.
- §5.1: integers of at most 5 octets (2**28 and up is no length or index we would accept).
- §7.1.3: fields whose values are credentials are never indexed (authorization, short
  cookies), as nghttp2 and Firefox do.
- §6.2.3: "Intermediaries MUST use the same representation for encoding this header field":
  a field that arrived never indexed is decoded as hpack's ``NeverIndexedHeaderTuple`` (a
  tuple, equal to the plain one, which the header checks and the header policy pass on as
  it is) and the encoder sends it never indexed again, even when a table holds it.
- RFC 9113 §4.3: what does not decode raises hpack's ``HPACKDecodingError`` (the caller's
  COMPRESSION_ERROR); a list beyond ``max_header_list_size`` raises
  ``OversizedHeaderListError`` (the caller's ENHANCE_YOUR_CALM).

The encoder also normalises what it sends (lower-case names, no surrounding whitespace, no
connection-specific field: RFC 9113 §8.2.2, ``check.CONNECTION_FIELDS``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from hpack.exceptions import (
    HPACKDecodingError,
    InvalidTableIndex,
    InvalidTableSizeError,
    OversizedHeaderListError,
)
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.huffman_table import decode_huffman
from hpack.struct import HeaderTuple, NeverIndexedHeaderTuple
from hpack.table import HeaderTable

from revproxy.proto.h2.check import CONNECTION_FIELDS

_STATIC = HeaderTable.STATIC_TABLE  # index 1 is _STATIC[0]
_STATIC_LEN = len(_STATIC)
_STATIC_FIELD: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAME: dict[bytes, int] = {}
for _i, (_n, _v) in enumerate(_STATIC, 1):
    if _n not in CONNECTION_FIELDS:  # never sent: not to be found by the encoder's fast path
        _STATIC_FIELD.setdefault((_n, _v), _i)
        _STATIC_NAME.setdefault(_n, _i)
DEFAULT_TABLE_SIZE = 4096
# Decoded Huffman strings a decoder keeps (per connection), and the longest kept.
HUFFMAN_CACHE_MAX = 64
HUFFMAN_CACHED_LENGTH = 256
# Longest integer representation accepted: a prefix and 4 continuation octets (2**28 and up
# is no length or index we would accept anyway).
_INT_OCTETS = 5
# RFC 7541 §7.1.3: fields whose values are credentials are never indexed (as nghttp2 and
# Firefox do: a cookie shorter than 20 bytes could be guessed through the compression).
_SECRET_FIELDS = frozenset({b"authorization", b"proxy-authorization"})


def _integer(value: int, prefix_bits: int, flags: int) -> bytes:
    """RFC 7541 §5.1: ``value`` in a prefix of ``prefix_bits`` with ``flags`` above it."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((flags | value,))
    out = bytearray((flags | limit,))
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def huffman(data: bytes) -> bytes:
    """RFC 7541 §5.2 and Appendix B: ``data`` Huffman-coded, padded with ones."""
    acc = 0
    bits = 0
    codes = REQUEST_CODES
    lengths = REQUEST_CODES_LENGTH
    for byte in data:
        n = lengths[byte]
        acc = (acc << n) | codes[byte]
        bits += n
    pad = -bits % 8
    acc = (acc << pad) | ((1 << pad) - 1)
    return acc.to_bytes((bits + pad) // 8, "big")


def _string(data: bytes) -> bytes:
    """A string literal, Huffman-coded (RFC 7541 §5.2)."""
    coded = huffman(data)
    return _integer(len(coded), 7, 0x80) + coded


class _Table:
    """The dynamic table (RFC 7541 §2.3.2, §4): newest entry first in index order.

    Entries carry an insertion number, so that the index of an entry found by dict look-up is
    ``62 + (inserted - 1 - number)``."""

    __slots__ = ("entries", "inserted", "max_size", "size")

    def __init__(self) -> None:
        self.entries: deque[tuple[tuple[bytes, bytes], int]] = deque()  # oldest first
        self.inserted = 0
        self.size = 0
        self.max_size = DEFAULT_TABLE_SIZE

    def get(self, index: int) -> tuple[bytes, bytes]:
        """The field at ``index`` (static table first; 0 is no index)."""
        if 0 < index <= _STATIC_LEN:
            return _STATIC[index - 1]
        i = index - _STATIC_LEN
        entries = self.entries
        if 0 < i <= len(entries):
            return entries[-i][0]
        raise InvalidTableIndex(f"Invalid table index {index}")

    def add(self, field: tuple[bytes, bytes]) -> int | None:
        """Insert a field; the number it got, or None when it did not fit (the table is then
        empty, RFC 7541 §4.4)."""
        size = 32 + len(field[0]) + len(field[1])
        if size > self.max_size:
            self.entries.clear()
            self.size = 0
            self.evicted_all()
            return None
        number = self.inserted
        self.inserted += 1
        self.entries.append((field, number))
        self.size += size
        if self.size > self.max_size:
            self.shrink()
        return number

    def shrink(self) -> None:
        entries = self.entries
        while self.size > self.max_size:
            field, number = entries.popleft()
            self.size -= 32 + len(field[0]) + len(field[1])
            self.evicted(field, number)

    def resize(self, size: int) -> None:
        self.max_size = size
        if size <= 0:
            self.entries.clear()
            self.size = 0
            self.evicted_all()
        else:
            self.shrink()

    def evicted(self, field: tuple[bytes, bytes], number: int) -> None:
        pass

    def evicted_all(self) -> None:
        pass


class _EncoderTable(_Table):
    __slots__ = ("by_field", "by_name")

    def __init__(self) -> None:
        super().__init__()
        # The newest entry of each field and of each name, by insertion number.
        self.by_field: dict[tuple[bytes, bytes], int] = {}
        self.by_name: dict[bytes, int] = {}

    def add(self, field: tuple[bytes, bytes]) -> int | None:
        number = super().add(field)
        if number is not None:
            self.by_field[field] = number
            self.by_name[field[0]] = number
        return number

    def evicted(self, field: tuple[bytes, bytes], number: int) -> None:
        if self.by_field.get(field) == number:
            del self.by_field[field]
        if self.by_name.get(field[0]) == number:
            del self.by_name[field[0]]

    def evicted_all(self) -> None:
        self.by_field.clear()
        self.by_name.clear()


class Encoder:
    """HPACK encoder: ``encode`` a block; ``header_table_size`` follows the peer's
    SETTINGS_HEADER_TABLE_SIZE.

    Representations as hpack's: a field in a table is indexed; any other is a literal with
    incremental indexing (never indexed for credentials), its name indexed when a table has
    it, strings Huffman-coded. A field marked never indexed (a ``HeaderTuple`` that is not
    ``indexable``, as the decoder gives one that arrived so) is always a literal never
    indexed (RFC 7541 §6.2.3). The table follows the peer's SETTINGS_HEADER_TABLE_SIZE up to
    4096 bytes (RFC 7541 §4.2: the encoder may use less than the decoder allows)."""

    def __init__(self) -> None:
        self._table = _EncoderTable()
        self._size_updates: list[int] = []

    @property
    def header_table_size(self) -> int:
        return self._table.max_size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        size = min(int(value), DEFAULT_TABLE_SIZE)
        if size != self._table.max_size:
            self._table.resize(size)
            self._size_updates.append(size)

    def encode(self, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
        """One header block. Names are lower-cased, names and values stripped of surrounding
        whitespace and connection-specific fields dropped; each field must be bytes."""
        out = bytearray()
        if self._size_updates:
            # RFC 7541 §4.2: the smallest size since the last block, then the current one.
            smallest = min(self._size_updates)
            out += _integer(smallest, 5, 0x20)
            if smallest != self._table.max_size:
                out += _integer(self._table.max_size, 5, 0x20)
            self._size_updates.clear()
        table = self._table
        by_field = table.by_field
        # ``field`` is declared an object on purpose: a field marked never indexed is a tuple
        # subclass, which a compiler would turn into a plain tuple were it a tuple[bytes, bytes].
        field: object
        for field in headers:
            if type(field) is tuple:
                key = field
            elif isinstance(field, HeaderTuple) and not field.indexable:
                self._literal(out, field, True)
                continue
            else:
                assert isinstance(field, tuple)
                key = (field[0], field[1])
            # A field found in a table was normalised when it got there: indexed at once.
            number = by_field.get(key)
            if number is not None:
                index = _STATIC_LEN + table.inserted - number
                if index >= 0x7F:
                    out += _integer(index, 7, 0x80)
                    continue
            else:
                static = _STATIC_FIELD.get(key)
                if static is None:
                    self._literal(out, key, False)
                    continue
                index = static
            out.append(0x80 | index)
        return bytes(out)

    def _literal(self, out: bytearray, field: tuple[bytes, bytes], never: bool) -> None:
        """A field no table has as such, or one that must not be indexed (``never``):
        normalised, then a literal (RFC 7541 §6.2)."""
        name, value = field[0], field[1]
        if not name.islower() and name.lower() != name:
            name = name.lower()
        if name[:1].isspace() or name[-1:].isspace():
            name = name.strip()
        if value[:1].isspace() or value[-1:].isspace():
            value = value.strip()
        if name in CONNECTION_FIELDS:
            return
        table = self._table
        index = _STATIC_FIELD.get((name, value))
        number = table.by_field.get((name, value))
        if not never and (index is not None or number is not None):  # it was not normalised
            out += _integer(
                index if index is not None else _STATIC_LEN + table.inserted - (number or 0),
                7,
                0x80,
            )
            return
        index = _STATIC_NAME.get(name)
        if index is None:
            number = table.by_name.get(name)
            if number is not None:
                index = _STATIC_LEN + table.inserted - number
        if never or name in _SECRET_FIELDS or (name == b"cookie" and len(value) < 20):
            # Literal never indexed (RFC 7541 §6.2.3).
            if index is not None:
                out += _integer(index, 4, 0x10)
            else:
                out.append(0x10)
                out += _string(name)
            out += _string(value)
            return
        # Literal with incremental indexing (RFC 7541 §6.2.1).
        if index is not None:
            out += _integer(index, 6, 0x40)
        else:
            out.append(0x40)
            out += _string(name)
        out += _string(value)
        table.add((name, value))


class Decoder:
    """HPACK decoder: ``decode`` a block into ``(name, value)`` tuples of bytes — plain ones,
    and hpack's ``NeverIndexedHeaderTuple`` for fields that arrived never indexed (RFC 7541
    §6.2.3); hpack's exceptions for what does not decode (connection errors for the caller),
    beyond ``max_header_list_size`` or ``max_allowed_table_size`` included."""

    def __init__(self, max_header_list_size: int = 2**16) -> None:
        self._table = _Table()
        self._huffman: dict[bytes, bytes] = {}  # Huffman-coded string -> decoded
        self.max_header_list_size = max_header_list_size
        self.max_allowed_table_size = DEFAULT_TABLE_SIZE

    @property
    def header_table_size(self) -> int:
        return self._table.max_size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self._table.resize(value)

    def decode(self, data: bytes) -> list[tuple[bytes, bytes]]:
        """A header block decoded (RFC 7541 §3, §6); fields are always bytes, and those that
        arrived never indexed are ``NeverIndexedHeaderTuple``."""
        table = self._table
        headers: list[tuple[bytes, bytes]] = []
        inflated = 0
        limit = self.max_header_list_size
        end = len(data)
        i = 0
        try:
            while i < end:
                b = data[i]
                if b & 0x80:  # indexed field (§6.1)
                    index = b & 0x7F
                    i += 1
                    if index == 0x7F:
                        index, i = self._integer(data, i, index)
                    field = _STATIC[index - 1] if 0 < index <= _STATIC_LEN else table.get(index)
                elif b & 0x40:  # literal with incremental indexing (§6.2.1)
                    field, i = self._literal(data, i, 0x3F)
                    table.add(field)
                elif b & 0x20:  # dynamic table size update (§6.3)
                    if headers:
                        raise HPACKDecodingError("Table size update not at the start of the block")
                    size = b & 0x1F
                    i += 1
                    if size == 0x1F:
                        size, i = self._integer(data, i, size)
                    if size > self.max_allowed_table_size:
                        raise InvalidTableSizeError("Encoder exceeded max allowable table size")
                    table.resize(size)
                    continue
                elif b & 0x10:  # literal never indexed (§6.2.3): to be sent on so
                    field, i = self._literal(data, i, 0x0F)
                    field = NeverIndexedHeaderTuple(field[0], field[1])
                else:  # literal without indexing (§6.2.2)
                    field, i = self._literal(data, i, 0x0F)
                headers.append(field)
                inflated += 32 + len(field[0]) + len(field[1])
                if inflated > limit:
                    raise OversizedHeaderListError(
                        f"A header list larger than {limit} has been received"
                    )
        except IndexError:
            raise HPACKDecodingError("Truncated header block") from None
        if table.max_size > self.max_allowed_table_size:
            raise InvalidTableSizeError("Encoder did not shrink table size to within the max")
        return headers

    @staticmethod
    def _integer(data: bytes, i: int, value: int) -> tuple[int, int]:
        """The continuation octets of an integer whose prefix was full (RFC 7541 §5.1)."""
        shift = 0
        for _ in range(_INT_OCTETS):
            b = data[i]
            i += 1
            value += (b & 0x7F) << shift
            if not b & 0x80:
                return value, i
            shift += 7
        raise HPACKDecodingError("Variable integer representation is too long")

    def _literal(self, data: bytes, i: int, mask: int) -> tuple[tuple[bytes, bytes], int]:
        index = data[i] & mask
        i += 1
        if index == mask:
            index, i = self._integer(data, i, index)
        if index:
            name = self._table.get(index)[0]
        else:
            name, i = self._string(data, i)
        value, i = self._string(data, i)
        return (name, value), i

    def _string(self, data: bytes, i: int) -> tuple[bytes, int]:
        b = data[i]
        length = b & 0x7F
        i += 1
        if length == 0x7F:
            length, i = self._integer(data, i, length)
        end = i + length
        if end > len(data):
            raise HPACKDecodingError("Truncated header block")
        raw = data[i:end]
        if not b & 0x80:
            return bytes(raw), end
        # A client codes the same strings again and again (those it does not index).
        cache = self._huffman
        text = cache.get(raw)
        if text is None:
            text = decode_huffman(raw)
            if len(cache) < HUFFMAN_CACHE_MAX and length <= HUFFMAN_CACHED_LENGTH:
                cache[bytes(raw)] = text
        return text, end
