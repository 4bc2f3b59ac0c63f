"""HTTP/2 header blocks: their coding (HPACK, RFC 7541) and what makes a message malformed
(RFC 9113 §8), checked on the decoded block.

Rule of this room: pure functions and codec objects, header block in, the message's parts or
the reason it is malformed out (a string: the caller resets the stream with PROTOCOL_ERROR —
RFC 9113 §8.1.1: "Malformed requests or responses that are detected MUST be treated as a
stream error"). One pass over the block checks field name and value characters (§8.2.1),
pseudo-header order, set and uniqueness (§8.3), connection-specific fields and ``te``
(§8.2.2), Host against :authority (§8.3.1) — the rules h2's validation applied, which the
tests compare against it — then what a proxy needs on top: an :authority at all, a :path it
can route, a :scheme it knows, :protocol only once extended CONNECT was offered (RFC 8441 §4),
and a valid :status. Split cookie fields are joined (§8.2.3).

The HPACK codec (``Encoder``, ``Decoder``, one of each per connection): the representations
and errors of python-hyper's hpack, with table look-ups by dict instead of a scan. The encoder
also normalises what it sends (lower-case names, no surrounding whitespace, no
connection-specific field) and never indexes credentials (RFC 7541 §7.1.3).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import NamedTuple

from hpack.exceptions import (
    HPACKDecodingError,
    InvalidTableIndex,
    InvalidTableSizeError,
    OversizedHeaderListError,
)
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.huffman_table import decode_huffman
from hpack.struct import HeaderTuple
from hpack.table import HeaderTable

from revproxy.proto.events import Headers

# RFC 9113 §8.2.2: connection-specific fields make a message malformed.
CONNECTION_FIELDS = frozenset(
    {b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade"}
)
_REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path", b":protocol"})
# RFC 9113 §8.2.1: "A field name MUST NOT contain characters in the ranges 0x00-0x20,
# 0x41-0x5a, or 0x7f-0xff"; nor a colon past the first character (§8.3).
_BAD_NAME_BYTES = bytes([*range(0x21), *range(0x41, 0x5B), *range(0x7F, 0x100)])
# Names seen valid, so that a common name is checked by one set look-up (bounded).
_valid_names: set[bytes] = set()
_VALID_NAMES_MAX = 1024
# Fields a connection's ``known`` set may hold: fields seen valid on it (a client repeats its
# fields, HPACK hands them back from its table), checked by one look-up next time.
KNOWN_FIELDS_MAX = 256


class RequestHead(NamedTuple):
    method: bytes
    target: bytes  # :path, or :authority for CONNECT
    authority: bytes
    protocol: bytes  # :protocol of an extended CONNECT, else b""
    headers: Headers  # Host first (from :authority), no pseudo-header
    content_length: int | None = None


def _bad_name(name: bytes) -> str | None:
    """Why a field name is invalid (RFC 9113 §8.2.1), or None."""
    if name in _valid_names:
        return None
    if not name:
        return "Received header name with zero length."
    if len(name.translate(None, _BAD_NAME_BYTES)) != len(name) or b":" in name[1:]:
        for c in name:
            if 0x41 <= c <= 0x5A:
                return f"Received uppercase header name {name!r}."
            if c <= 0x20 or c >= 0x7F:
                return f"Illegal character '{chr(c)}' in header name: {name!r}"
        return f"Illegal character ':' in header name: {name!r}"
    if len(_valid_names) < _VALID_NAMES_MAX:
        _valid_names.add(name)
    return None


def _bad_value(value: bytes) -> str | None:
    """Why a field value is invalid (RFC 9113 §8.2.1), or None. Empty is valid."""
    if b"\r" in value or b"\n" in value or b"\x00" in value:
        return f"Illegal character in header value: {value!r}"
    if value[0] in (0x20, 0x09) or value[-1] in (0x20, 0x09):
        return f"Received header value surrounded by whitespace {value!r}"
    return None


def _bad_regular(name: bytes, value: bytes) -> str | None:
    """Why a regular (not pseudo-) field is not allowed in HTTP/2, or None."""
    if name in CONNECTION_FIELDS:
        return f"Connection-specific header field present: {name!r}."
    if name == b"te" and value.lower() != b"trailers":
        return f"Invalid value for TE header: {value!r}"
    return None


def _bad_field(field: tuple[bytes, bytes], known: set[tuple[bytes, bytes]] | None) -> str | None:
    """Why a field's name or value is invalid (RFC 9113 §8.2.1), or None; a valid one joins
    ``known`` (while there is room), which spares it the check next time."""
    if known is not None and field in known:
        return None
    name, value = field
    reason = _bad_name(name) or (_bad_value(value) if value else None)
    if reason is None and known is not None and len(known) < KNOWN_FIELDS_MAX:
        known.add(field)
    return reason


def request(
    raw: Iterable[tuple[bytes, bytes]],
    *,
    connect_protocol: bool,
    known: set[tuple[bytes, bytes]] | None = None,
) -> RequestHead | str:
    """A request head, or why it is malformed."""
    method = scheme = authority = path = protocol = host = length = None
    regular: Headers = []
    cookies: list[bytes] | None = None
    seen_regular = False
    for field in raw:
        reason = _bad_field(field, known)
        if reason is not None:
            return reason
        name, value = field
        if name[0] == 0x3A:  # ":"
            if seen_regular:
                return f"Received pseudo-header field out of sequence: {name!r}"
            if name == b":method":
                if method is not None:
                    return "Received duplicate pseudo-header field b':method'"
                method = value
            elif name == b":path":
                if path is not None:
                    return "Received duplicate pseudo-header field b':path'"
                if not value:
                    return "An empty :path header is forbidden"
                path = value
            elif name == b":authority":
                if authority is not None:
                    return "Received duplicate pseudo-header field b':authority'"
                authority = value
            elif name == b":scheme":
                if scheme is not None:
                    return "Received duplicate pseudo-header field b':scheme'"
                scheme = value
            elif name == b":protocol":
                if protocol is not None:
                    return "Received duplicate pseudo-header field b':protocol'"
                protocol = value
            elif name == b":status":
                return "Encountered response-only headers {b':status'}"
            else:
                return f"Received custom pseudo-header field {name!r}"
            continue
        seen_regular = True
        if name == b"cookie":
            if cookies is None:
                cookies = [value]
            else:
                cookies.append(value)
            continue
        if name == b"host":
            if host is not None:
                return "Request header block has multiple Host headers."
            host = value
            continue
        if name == b"content-length":
            # RFC 9110 §8.6: digits, the same in every field.
            if not value.isdigit() or (length is not None and value != length):
                return f"invalid content-length {value!r}"
            length = value
        else:
            reason = _bad_regular(name, value)
            if reason is not None:
                return reason
        regular.append(field)
    # RFC 9113 §8.3.1, §8.5; RFC 8441 §4.
    if method is None:
        return "Header block missing mandatory b':method' header"
    if method == b"CONNECT" and protocol is None:
        if scheme is not None or path is not None:
            return "Ordinary CONNECT MUST NOT include :scheme or :path"
    else:
        if scheme is None:
            return "Header block missing mandatory b':scheme' header"
        if path is None:
            return "Header block missing mandatory b':path' header"
        if protocol is not None and method != b"CONNECT":
            return "Encountered connect-request-only headers {b':protocol'}"
    if authority is None and host is None:
        return "Request header block does not have an :authority or Host header."
    if authority is not None and host is not None and authority != host:
        return f"Request header block has mismatched :authority and Host: {authority!r} / {host!r}"
    if authority is None:
        authority = host  # RFC 9113 §8.3.1: Host stands in for a missing :authority
    if not authority:
        return "no :authority"
    if protocol is not None and not connect_protocol:
        return ":protocol without SETTINGS_ENABLE_CONNECT_PROTOCOL"
    if method != b"CONNECT" or protocol is not None:
        # RFC 9113 §8.3.1: ":path ... MUST NOT be empty for "http" or "https" URIs";
        # origin-form, or "*" for OPTIONS.
        if not path or not (path[:1] == b"/" or (path == b"*" and method == b"OPTIONS")):
            return f"invalid :path {path!r}"
        if scheme not in (b"http", b"https"):
            return f"unsupported :scheme {scheme!r}"
    if cookies is not None:
        # RFC 9113 §8.2.3: split cookie fields are joined for an HTTP/1.1 origin.
        regular.append((b"cookie", b"; ".join(cookies)))
    regular.insert(0, (b"host", authority))
    target = path if path is not None else authority
    return RequestHead(
        method,
        target,
        authority,
        protocol or b"",
        regular,
        None if length is None else int(length),
    )


def response(
    raw: Iterable[tuple[bytes, bytes]], *, known: set[tuple[bytes, bytes]] | None = None
) -> tuple[int, Headers] | str:
    """(status, headers without pseudo-headers) of a response head, or why it is malformed."""
    status: bytes | None = None
    regular: Headers = []
    cookies: list[bytes] | None = None
    seen_regular = False
    for field in raw:
        reason = _bad_field(field, known)
        if reason is not None:
            return reason
        name, value = field
        if name[0] == 0x3A:  # ":"
            if seen_regular:
                return f"Received pseudo-header field out of sequence: {name!r}"
            if name == b":status":
                if status is not None:
                    return "Received duplicate pseudo-header field b':status'"
                status = value
            elif name in _REQUEST_PSEUDO:
                return f"Encountered request-only headers {{{name!r}}}"
            else:
                return f"Received custom pseudo-header field {name!r}"
            continue
        seen_regular = True
        if name == b"cookie":
            if cookies is None:
                cookies = [value]
            else:
                cookies.append(value)
            continue
        reason = _bad_regular(name, value)
        if reason is not None:
            return reason
        regular.append(field)
    if status is None:
        return "Header block missing mandatory b':status' header"
    code = int(status) if status.isdigit() and len(status) == 3 else 0
    if not 100 <= code <= 599:
        return "invalid :status"
    if cookies is not None:
        regular.append((b"cookie", b"; ".join(cookies)))
    return code, regular


def trailers(
    raw: Iterable[tuple[bytes, bytes]],
    *,
    from_client: bool,
    known: set[tuple[bytes, bytes]] | None = None,
) -> Headers | str:
    """A trailer section, or why it is malformed (no pseudo-header may appear in one)."""
    fields: Headers = []
    cookies: list[bytes] | None = None
    for field in raw:
        reason = _bad_field(field, known)
        if reason is not None:
            return reason
        name, value = field
        if name[0] == 0x3A:  # ":"
            return f"Received pseudo-header in trailer {name!r}"
        if name == b"cookie":
            if cookies is None:
                cookies = [value]
            else:
                cookies.append(value)
            continue
        reason = _bad_regular(name, value)
        if reason is not None:
            return reason
        fields.append(field)
    if cookies is not None:
        fields.append((b"cookie", b"; ".join(cookies)))
    return fields


def content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    """The Content-Length of a message, None without one. ValueError when it is not digits or
    its fields disagree (RFC 9110 §8.6: the message is then malformed)."""
    found: bytes | None = None
    for name, value in headers:
        if name == b"content-length":
            if not value.isdigit() or (found is not None and value != found):
                raise ValueError(f"invalid content-length {value!r}")
            found = value
    return None if found is None else int(found)


# --- HPACK (RFC 7541) -------------------------------------------------------------------------

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
    it, strings Huffman-coded. The table follows the peer's SETTINGS_HEADER_TABLE_SIZE up to
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
        for field in headers:
            # A field found in a table was normalised when it got there: indexed at once.
            key = field if type(field) is tuple else (field[0], field[1])
            number = by_field.get(key)
            if number is not None:
                index = _STATIC_LEN + table.inserted - number
                if index >= 0x7F:
                    out += _integer(index, 7, 0x80)
                    continue
            else:
                static = _STATIC_FIELD.get(key)
                if static is None:
                    self._literal(out, field)
                    continue
                index = static
            out.append(0x80 | index)
        return bytes(out)

    def _literal(self, out: bytearray, field: tuple[bytes, bytes]) -> None:
        """A field no table has as such: normalised, then a literal (RFC 7541 §6.2)."""
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
        if index is not None or number is not None:  # it was not normalised
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
        if (
            name in _SECRET_FIELDS
            or (name == b"cookie" and len(value) < 20)
            or (isinstance(field, HeaderTuple) and not field.indexable)
        ):
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
    """HPACK decoder: ``decode`` a block into plain ``(name, value)`` tuples of bytes; hpack's
    exceptions for what does not decode (connection errors for the caller), beyond
    ``max_header_list_size`` or ``max_allowed_table_size`` included."""

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
        """A header block decoded (RFC 7541 §3, §6); fields are always bytes."""
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
                else:  # literal without indexing or never indexed (§6.2.2, §6.2.3)
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
