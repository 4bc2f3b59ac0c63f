"""HTTP/1.1 header fields on the wire, for the fast implementation (``proto/http1/fast.py``).

Rule of this room: h11's grammar and h11's normalisation, bit for bit (``h11/_abnf.py``,
``_headers.py``, ``_readers.py``), done faster. Two ways, one answer:

- The plain case (``plain_fields``, ``plain_block``): CRLF lines of ``token: value``, one
  Host at most, one plain Content-Length or ``Transfer-Encoding: chunked`` at most, no
  Upgrade. Each line is read, or each field to send checked, once; then remembered, so that a
  line seen before costs one dict lookup. Whatever is not plain is left to the exact code.
- The exact code: llhttp (strict: no lenient flag is ever set) lexes a header block; when it
  refuses one, the block is decided again by a port of h11's line reader, so llhttp can make
  the common case fast but never the answer different. Outgoing fields are checked as h11
  checks them — names are tokens and values RFC 9110 §5.5 field values, so no CR, LF or NUL
  can reach the wire — field by field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any, Final

import httptools

from revproxy.proto.events import Headers

# --- grammar (RFC 9110 §5.5, RFC 9112 §3-§7, as h11/_abnf.py writes it) ---------------------

_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
# h11 allows control characters but NUL in values (real cookies carry \x01); \s excludes
# SP, HTAB, CR, LF, VT and FF, of which SP and HTAB may sit between visible characters.
_FIELD_CONTENT = rb"[^\x00\s]+(?:[ \t]+[^\x00\s]+)*"
NAME_RE: Final = re.compile(_TOKEN)
VALUE_RE: Final = re.compile(rb"(?:" + _FIELD_CONTENT + rb")?")
FIELD_LINE_RE: Final = re.compile(
    rb"(" + _TOKEN + rb"):[ \t]*((?:" + _FIELD_CONTENT + rb")?)[ \t]*"
)
REQUEST_LINE_RE: Final = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/([0-9]\.[0-9])")
STATUS_LINE_RE: Final = re.compile(rb"HTTP/([0-9]\.[0-9]) ([0-9]{3})(?: ((?:[ \t]|[^\x00\s])*))?")
REASON_RE: Final = re.compile(rb"(?:[ \t]|[^\x00\s])*")
TARGET_RE: Final = re.compile(rb"[\x21-\x7e]+")
# h11 bounds a chunk size to 20 hex digits and skips extensions whatever they hold.
CHUNK_HEADER_RE: Final = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;.*)?[ \t]*\r\n")
_OBS_FOLD_RE: Final = re.compile(rb"[ \t]+")
MAX_LENGTH_DIGITS: Final = 20

# Bytes a value may not hold anywhere (whitespace at its ends is checked apart): a value holds
# none when translate(None, NOT_IN_VALUES) leaves it as long as it was.
NOT_IN_VALUES: Final = b"\x00\r\n\x0b\x0c"
_NOTABLE: Final = frozenset(
    [b"host", b"content-length", b"transfer-encoding", b"connection", b"upgrade"]
)
PHRASES: Final = {int(s): s.phrase.encode() for s in HTTPStatus}


class Violation(Exception):
    """A protocol rule was broken; the caller says whose fault it is."""


# --- received fields ---------------------------------------------------------------------


def content_length(value: bytes) -> bytes:
    """h11's reading of one Content-Length field: a list of equal numbers is one number."""
    lengths = {length.strip() for length in value.split(b",")}
    if len(lengths) != 1:
        raise Violation("conflicting Content-Length headers")
    value = lengths.pop()
    if not value.isdigit() or len(value) > MAX_LENGTH_DIGITS:
        raise Violation("bad Content-Length")
    return value


def normalise(fields: Headers) -> Headers:
    """h11's normalize_and_validate for parsed fields: one Content-Length, one chunked."""
    out: Headers = []
    seen_length: bytes | None = None
    chunked = False
    for name, value in fields:
        if name == b"content-length":
            value = content_length(value)
            if seen_length is None:
                seen_length = value
                out.append((name, value))
            elif seen_length != value:
                raise Violation("conflicting Content-Length headers")
        elif name == b"transfer-encoding":
            if chunked:
                raise Violation("multiple Transfer-Encoding headers")
            value = value.lower()
            if value != b"chunked":
                raise Violation("Only Transfer-Encoding: chunked is supported")
            chunked = True
            out.append((name, value))
        else:
            out.append((name, value))
    return out


def has_token(value: bytes, token: bytes) -> bool:
    """``token`` is one of the comma-separated, case-insensitive values."""
    return any(t.strip() == token for t in value.lower().split(b","))


class Message:
    """A received head's fields (normalised) and what they say about framing and the
    connection."""

    __slots__ = ("chunked", "close", "fields", "host", "hosts", "length", "upgrade")

    def __init__(self, fields: Headers, unique: dict[bytes, bytes] | None = None) -> None:
        """``unique``: the same fields as a dict, when no name occurs twice."""
        if (unique is None or not self._take(unique)) and not self._scan(fields):
            fields = normalise(fields)
            self._scan(fields)
        self.fields = fields

    def _take(self, unique: dict[bytes, bytes]) -> bool:
        host = unique.get(b"host")
        self.hosts = 0 if host is None else 1
        self.host = host or b""
        length = unique.get(b"content-length")
        self.length = -1
        if length is not None:
            if not length.isdigit() or len(length) > MAX_LENGTH_DIGITS:
                return False
            self.length = int(length)
        coding = unique.get(b"transfer-encoding")
        if coding is not None and coding != b"chunked":
            return False
        self.chunked = coding is not None
        connection = unique.get(b"connection")
        self.close = (
            connection is not None
            and b"close" in connection.lower()
            and has_token(connection, b"close")
        )
        upgrade = unique.get(b"upgrade")
        self.upgrade = upgrade is not None and any(t.strip() for t in upgrade.split(b","))
        return True

    def _scan(self, fields: Headers) -> bool:
        """False when a Content-Length or Transfer-Encoding needs h11's normalisation first."""
        self.length = -1
        self.chunked = self.close = self.upgrade = False
        self.hosts = 0
        self.host = b""
        for name, value in fields:
            if name not in _NOTABLE:
                continue
            if name == b"host":
                self.hosts += 1
                self.host = value
            elif name == b"content-length":
                if self.length >= 0 or not value.isdigit() or len(value) > MAX_LENGTH_DIGITS:
                    return False
                self.length = int(value)
            elif name == b"transfer-encoding":
                if self.chunked or value != b"chunked":
                    return False
                self.chunked = True
            elif name == b"connection":
                if b"close" in value.lower() and has_token(value, b"close"):
                    self.close = True
            elif any(t.strip() for t in value.split(b",")):
                self.upgrade = True
        return True


class _Lexer:
    """llhttp lexing header blocks behind a fixed status line, into a dict (names unique)."""

    __slots__ = ("fields", "on_header", "parser")

    def __init__(self) -> None:
        self.fields: dict[bytes, bytes] = {}
        # Called by llhttp once per field: keeps the first of two equal names, which the
        # caller notices by counting.
        self.on_header = self.fields.setdefault
        self.parser = httptools.HttpResponseParser(self)


class _ListLexer:
    """llhttp lexing into a list: for blocks with a repeated name or trailing whitespace."""

    __slots__ = ("fields", "parser")

    def __init__(self) -> None:
        self.fields: Headers = []
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp drops leading whitespace of a value but keeps trailing whitespace.
        self.fields.append((name.lower(), value.rstrip(b" \t")))


_LEXER_LINE: Final = b"HTTP/1.1 204 No Content\r\n"
# Lexers ready for another block. A free list, not shared state: a lexer is popped for one
# call and pushed back after it (both atomic), so no two callers ever hold the same one.
_free: list[_Lexer] = []
_MAX_FREE: Final = 16


def _feed(parser: httptools.HttpResponseParser, block: memoryview) -> bool:
    try:
        parser.feed_data(_LEXER_LINE)
        parser.feed_data(block)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        return False
    return True


Lexed = tuple[Headers, dict[bytes, bytes] | None]


def lex(head: bytes, start: int) -> Lexed | None:
    """The fields of ``head[start:]`` (CRLF lines ending in the empty line), names lower-case,
    and the same as a dict when no name repeats (for ``Message``); None when llhttp refuses
    the block and h11's grammar must decide (``decode_fields``)."""
    block = memoryview(head)[start:]
    lexer = _free.pop() if _free else _Lexer()
    fields = lexer.fields
    try:
        lexer.parser.feed_data(_LEXER_LINE)
        lexer.parser.feed_data(block)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        # Refused; or a reused lexer closed by the "Connection: close" it lexed last time.
        lexer = _Lexer()
        fields = lexer.fields
        if not _feed(lexer.parser, block):
            return None
    # llhttp accepted the whole block, so it reached its end: every field was seen.
    unique = dict(zip(map(bytes.lower, fields), fields.values(), strict=True))
    fields.clear()
    if len(_free) < _MAX_FREE:
        _free.append(lexer)
    if (
        len(unique) == head.count(b"\r\n", start) - 1
        and head.find(b" \r\n", start) < 0
        and head.find(b"\t\r\n", start) < 0
    ):
        return list(unique.items()), unique
    listing = _ListLexer()
    _feed(listing.parser, block)
    return listing.fields, None


def _unfold(lines: list[bytes]) -> list[bytes]:
    """h11's obsolete line folding: a line starting with whitespace continues the previous."""
    out: list[bytes] = []
    for line in lines:
        m = _OBS_FOLD_RE.match(line)
        if m is None:
            out.append(line)
        elif not out:
            raise Violation("continuation line at start of headers")
        else:
            out[-1] = out[-1] + b" " + line[m.end() :]
    return out


def decode_fields(lines: list[bytes]) -> Headers:
    """Header lines (without terminators) read by h11's grammar; names lower-case."""
    fields: Headers = []
    for line in _unfold(lines):
        m = FIELD_LINE_RE.fullmatch(line)
        if m is None:
            raise Violation(f"illegal header line: {line!r}")
        fields.append((m[1].lower(), m[2]))
    return fields


def split_lines(head: bytes) -> list[bytes]:
    """A head up to its empty line, split as h11 does (on LF, one CR trimmed); the empty
    line is dropped."""
    lines = [line[:-1] if line.endswith(b"\r") else line for line in head.split(b"\n")]
    return lines[:-2]


def find_blank_line(buf: bytes | bytearray, start: int) -> int:
    """The end of the first empty line (h11: ``\\n\\r?\\n``) at or after ``start``, or -1."""
    crlf = buf.find(b"\n\r\n", start)
    lf = buf.find(b"\n\n", start, len(buf) if crlf < 0 else crlf + 1)
    if lf >= 0:
        return lf + 2
    return crlf + 3 if crlf >= 0 else -1


# --- fields to send ------------------------------------------------------------------------


class Outgoing:
    """Fields to send, checked and normalised as h11's event constructors do them.

    ``block`` is the serialised field lines (Host first, as RFC 9110 §7.2 asks of a user
    agent, and as h11 writes them), each ending in CRLF."""

    __slots__ = ("block", "chunked", "close", "hosts", "items", "length", "upgrade")

    def __init__(self, block: bytes, items: list[tuple[bytes, bytes, bytes]] | None) -> None:
        self.block = block
        self.items = items  # (raw name, lower-case name, value); None: build when needed
        self.length = -1
        self.chunked = self.close = self.upgrade = False
        self.hosts = 0

    def fields(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes, bytes]]:
        if self.items is None:
            self.items = [(raw, raw.lower(), value) for raw, value in headers]
        return self.items


# Header names seen valid, and what they are to framing: a memo of a pure function (bounded,
# never consulted to refuse anything), so the common case checks no name twice.
_ORDINARY, _HOST, _LENGTH, _CODING, _CONNECTION, _UPGRADE = range(6)
_NAME_KINDS: Final = {
    b"host": _HOST,
    b"content-length": _LENGTH,
    b"transfer-encoding": _CODING,
    b"connection": _CONNECTION,
    b"upgrade": _UPGRADE,
}
_known_names: dict[bytes, int] = {}
_MAX_KNOWN_NAMES: Final = 1024


def outgoing(headers: Iterable[tuple[bytes, bytes]]) -> tuple[Outgoing, list[tuple[bytes, bytes]]]:
    """The checked fields, and ``headers`` as a list; raises Violation as h11 would."""
    if type(headers) is not list:
        headers = list(headers)
    plain = plain_block(headers)
    if plain is None:
        return _outgoing_exactly(headers), headers
    out = Outgoing(plain[0], None)
    out.hosts = plain[1]
    out.length = plain[2]
    return out, headers


def check_field(raw: bytes, value: bytes) -> None:
    if NAME_RE.fullmatch(raw) is None:
        raise Violation(f"Illegal header name {raw!r}")
    if VALUE_RE.fullmatch(value) is None:
        raise Violation(f"Illegal header value {value!r}")


def _outgoing_exactly(headers: list[tuple[bytes, bytes]]) -> Outgoing:
    """Field by field, in h11's order of checks."""
    items: list[tuple[bytes, bytes, bytes]] = []
    length: bytes | None = None
    chunked = close = upgrade = False
    hosts = 0
    for raw, value in headers:
        check_field(raw, value)
        name = raw.lower()
        if len(_known_names) < _MAX_KNOWN_NAMES:
            _known_names[raw] = _NAME_KINDS.get(name, _ORDINARY)
        if name == b"content-length":
            value = content_length(value)
            if length is None:
                length = value
            elif length != value:
                raise Violation("conflicting Content-Length headers")
            else:
                continue
        elif name == b"transfer-encoding":
            if chunked:
                raise Violation("multiple Transfer-Encoding headers")
            value = value.lower()
            if value != b"chunked":
                raise Violation("Only Transfer-Encoding: chunked is supported")
            chunked = True
        elif name == b"host":
            hosts += 1
        elif name == b"connection":
            close = close or has_token(value, b"close")
        elif name == b"upgrade":
            upgrade = upgrade or any(t.strip() for t in value.split(b","))
        items.append((raw, name, value))
    out = Outgoing(field_block(items), items)
    out.length = -1 if length is None else int(length)
    out.chunked, out.close, out.upgrade, out.hosts = chunked, close, upgrade, hosts
    return out


def field_block(items: list[tuple[bytes, bytes, bytes]]) -> bytes:
    """Serialised field lines, Host first (h11's write_headers)."""
    hosts = [b"%s: %s\r\n" % (raw, value) for raw, name, value in items if name == b"host"]
    rest = [b"%s: %s\r\n" % (raw, value) for raw, name, value in items if name != b"host"]
    return b"".join(hosts + rest)


def tokens(items: list[tuple[bytes, bytes, bytes]], name: bytes) -> set[bytes]:
    """The comma-separated values of every ``name`` field, lower-case (h11's
    get_comma_header)."""
    out: set[bytes] = set()
    for _, n, value in items:
        if n == name:
            out.update(t for t in (t.strip() for t in value.lower().split(b",")) if t)
    return out


# --- the plain case --------------------------------------------------------------------------
#
# The heads nearly every peer sends: CRLF lines of ``token: value``, one Host at most, one
# plain Content-Length or ``Transfer-Encoding: chunked`` at most, no Upgrade. They are read and
# written below with a few operations over the whole head or header list; anything else makes
# these functions return None, and the exact code above decides (and refuses) as h11 does.
# They never accept what that code would refuse, nor read or write a field differently.
#
# Most field lines repeat from one message to the next (a client's User-Agent and Accept
# lines, an origin's Server and Content-Type lines, the X-Forwarded-* lines the proxy adds), so
# each line is read or checked once and remembered: a memo of a pure function, like
# _known_names, consulted only to accept what was accepted before. Each memo is bounded, and
# forgets everything when full, so that it follows the traffic of the moment; a line longer
# than MAX_LINE (a cookie, a long referrer) is read every time and never remembered.

# What a field is to the framing of its message.
_PLAIN, _PLAIN_HOST, _PLAIN_LENGTH, _PLAIN_CHUNKED, _PLAIN_KEEP, _PLAIN_CLOSE = range(6)
# Received names seen valid that say nothing about framing (raw name → lower-case name).
_field_names: dict[bytes, bytes] = {}
# Received field lines seen plain → the field as h11 reads it; framing fields apart, with what
# they are to framing and the Content-Length they give.
_lines: dict[bytes, tuple[bytes, bytes]] = {}
_framing_lines: dict[bytes, tuple[tuple[bytes, bytes], int, int]] = {}
# Fields sent and seen valid and plain → their field line; framing fields apart, as above.
_sent: dict[tuple[bytes, bytes], bytes] = {}
_framing_sent: dict[tuple[bytes, bytes], tuple[bytes, int, int]] = {}
MAX_LINES: Final = 4096
MAX_LINE: Final = 256

PlainFields = tuple[Headers, bytes | None, int, bool, bool]


def plain_fields(lines: list[bytes]) -> PlainFields | None:
    """Header lines (without their CRLF) read as h11 reads them: (fields, the Host value or
    None, Content-Length or -1, chunked, close); None when a line is not ``token ":" OWS
    field-value OWS`` without NUL, CR, LF, VT or FF, or framing is not plain."""
    fields: list[Any] = list(map(_lines.get, lines))
    if None not in fields:
        return fields, None, -1, False, False
    host = None
    length = -1
    chunked = close = False
    i = -1
    for _ in range(fields.count(None)):  # framing fields, and lines not seen before
        i = fields.index(None, i + 1)
        line = lines[i]
        entry = _framing_lines.get(line)
        if entry is None:
            entry = _read_line(line)
            if entry is None:
                return None
        field, kind, n = entry
        fields[i] = field
        if kind == _PLAIN:
            continue
        if kind == _PLAIN_HOST:
            if host is not None:
                return None
            host = field[1]
        elif kind == _PLAIN_LENGTH:
            if length >= 0:
                return None
            length = n
        elif kind == _PLAIN_CHUNKED:
            if chunked:
                return None
            chunked = True
        elif kind == _PLAIN_CLOSE:
            close = True
    if chunked and length >= 0:
        return None
    return fields, host, length, chunked, close


def _read_line(line: bytes) -> tuple[tuple[bytes, bytes], int, int] | None:
    """A field line as h11 reads it, what it is to framing and its Content-Length (-1 unless
    it gives one); remembered. None when it is not plain."""
    name, sep, value = line.partition(b":")
    if not sep or len(line.translate(None, NOT_IN_VALUES)) != len(line):
        return None
    lower = _field_names.get(name)
    kind = _PLAIN
    if lower is None:
        lower = name.lower()
        special = _NAME_KINDS.get(lower)
        if special is None:
            if NAME_RE.fullmatch(name) is None:
                return None
            if len(_field_names) < _MAX_KNOWN_NAMES:
                _field_names[name] = lower
        elif special == _HOST:
            kind = _PLAIN_HOST
        elif special == _LENGTH:
            kind = _PLAIN_LENGTH
        elif special == _CODING:
            kind = _PLAIN_CHUNKED
        elif special == _CONNECTION:
            kind = _PLAIN_KEEP
        else:  # Upgrade: a protocol switch is never plain
            return None
    # bytes.strip() strips SP, HTAB, CR, LF, VT and FF: only SP and HTAB can be left, which
    # is h11's OWS around a field value.
    field = (lower, value.strip())
    length = -1
    if kind == _PLAIN_LENGTH:
        if not field[1].isdigit() or len(field[1]) > MAX_LENGTH_DIGITS:
            return None
        length = int(field[1])
    elif kind == _PLAIN_CHUNKED:
        if field[1] != b"chunked":
            return None
    elif kind == _PLAIN_KEEP and has_token(field[1], b"close"):
        kind = _PLAIN_CLOSE
    if len(line) <= MAX_LINE:
        if kind == _PLAIN:
            if len(_lines) >= MAX_LINES:
                _lines.clear()
            _lines[line] = field
        else:
            if len(_framing_lines) >= MAX_LINES:
                _framing_lines.clear()
            _framing_lines[line] = (field, kind, length)
    return field, kind, length


def plain_block(headers: list[tuple[bytes, bytes]]) -> tuple[bytes, int, int] | None:
    """Fields to send, serialised (``name: value`` CRLF each), when each name is a token and
    each value an RFC 9110 field value: (block, Host fields, Content-Length or -1). None when
    a field may be wrong or is not plain: one Host at most and first, one plain
    Content-Length at most, no other field framing or the connection depends on."""
    try:
        lines: list[Any] = list(map(_sent.get, headers))
    except TypeError:  # not a tuple of bytes: the exact code says what is wrong
        return None
    if None not in lines:
        return b"".join(lines), 0, -1
    hosts = 0
    length = -1
    i = -1
    for _ in range(lines.count(None)):  # framing fields, and fields not seen before
        i = lines.index(None, i + 1)
        field = headers[i]
        entry = _framing_sent.get(field)
        if entry is None:
            entry = _check_field(field)
            if entry is None:
                return None
        lines[i], kind, n = entry
        if kind == _PLAIN_HOST:
            if i:  # not first, or not the only one
                return None
            hosts = 1
        elif kind == _PLAIN_LENGTH:
            if length >= 0:
                return None
            length = n
    return b"".join(lines), hosts, length


def _check_field(field: tuple[bytes, bytes]) -> tuple[bytes, int, int] | None:
    """A field to send, serialised, what it is to framing and its Content-Length (-1 unless
    it gives one); remembered. None when it may be wrong or is not plain."""
    if type(field) is not tuple or len(field) != 2:
        return None
    name, value = field
    if type(name) is not bytes or type(value) is not bytes:
        return None
    kind = _known_names.get(name)
    if kind is None:
        if NAME_RE.fullmatch(name) is None:
            return None
        kind = _NAME_KINDS.get(name.lower(), _ORDINARY)
        if len(_known_names) < _MAX_KNOWN_NAMES:
            _known_names[name] = kind
    # A field value (RFC 9110 §5.5): no CR, LF or NUL (nor VT or FF, as h11), and no
    # whitespace at either end; empty values go the exact way (h11 writes them as they are).
    if not value or value.strip() is not value or value.translate(None, NOT_IN_VALUES) != value:
        return None
    line = b"%b: %b\r\n" % field
    length = -1
    if kind == _ORDINARY:
        if len(line) <= MAX_LINE:
            if len(_sent) >= MAX_LINES:
                _sent.clear()
            _sent[field] = line
        return line, _PLAIN, -1
    if kind == _HOST:
        kind = _PLAIN_HOST
    elif kind == _LENGTH:
        if not value.isdigit() or len(value) > MAX_LENGTH_DIGITS:
            return None
        kind = _PLAIN_LENGTH
        length = int(value)
    else:
        return None
    if len(line) <= MAX_LINE:
        if len(_framing_sent) >= MAX_LINES:
            _framing_sent.clear()
        _framing_sent[field] = (line, kind, length)
    return line, kind, length
