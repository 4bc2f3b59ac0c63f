"""Conditional requests (RFC 9110 §13): whether a request's preconditions hold for the selected
representation, told by its entity tag and modification time.

Rule of this room: pure and total. The caller passes what it knows of the representation it
would send (``etag``: the whole entity-tag with its quotes, ``last_modified``: seconds since
the epoch, ``None`` when it has none) and gets the status the preconditions imply — 304, 412
or ``None`` (go on: the range, then the 200) — never an exception. The order is the one
§13.2.2 mandates:

1. If-Match: "When the field value is ... a list of entity tags, the condition is true if any
   of the listed tags match the entity tag of the selected representation" with the strong
   comparison (§13.1.1); false → 412;
2. else If-Unmodified-Since: "the condition is false if the selected representation's last
   modification date is more recent than the date provided"; false → 412;
3. If-None-Match, with the weak comparison (§13.1.2); a match → 304 for GET and HEAD, else 412;
4. else, for GET and HEAD only, If-Modified-Since: "the condition is false if the selected
   representation's last modification date is earlier or equal to the date provided"
   (§13.1.3); false → 304.

A date that is not a valid HTTP-date, or a date field sent more than once ("the field value
has more than one member"), is ignored, as §13.1.3 and §13.1.4 require. A list that cannot be
read as entity tags matches nothing: If-Match then fails (412, the safe side of a write) and
If-None-Match does not hold (the full response, the safe side of a read). ``*`` matches any
current representation: ``evaluate`` is only asked about one that exists. §13.2.1's "MUST
ignore all received preconditions if its response ... would have been a status code other than
a 2xx or 412" is the caller's: it asks only when it has a representation to send.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from revproxy.proto.httpdate import parse_http_date

__all__ = ["etag_matches", "evaluate", "parse_etag", "parse_etag_list"]

_SAFE: Final = (b"GET", b"HEAD")
_OWS: Final = b" \t"
# etagc = %x21 / %x23-7E / obs-text (RFC 9110 §8.8.3): any byte but controls, space and DQUOTE.
_ETAGC: Final = frozenset(range(0x21, 0x100)) - {0x22, 0x7F}
# Members read from one list at most: a longer list is refused (it matches nothing).
MAX_TAGS: Final = 64


def parse_etag(value: bytes) -> tuple[bool, bytes] | None:
    """An entity-tag (``"xyz"`` or ``W/"xyz"``) as (weak, opaque-tag with its quotes), or None
    when ``value`` is not exactly one."""
    weak = value[:2] == b"W/"
    tag = value[2:] if weak else value
    if len(tag) < 2 or tag[:1] != b'"' or tag[-1:] != b'"':
        return None
    if not all(c in _ETAGC for c in tag[1:-1]):
        return None
    return weak, tag


def parse_etag_list(value: bytes) -> list[tuple[bool, bytes]] | None:
    """``#entity-tag`` (§5.6.1: members separated by commas and optional whitespace, empty
    members ignored) as a list of (weak, opaque-tag); None when the list is malformed
    (``*`` included: it is no list, ``etag_matches`` reads it) or longer than MAX_TAGS.

    A comma may sit inside an opaque tag, so members are read tag by tag, not split."""
    tags: list[tuple[bool, bytes]] = []
    i, n = 0, len(value)
    while True:
        while i < n and value[i] in b", \t":
            i += 1
        if i >= n:
            break
        start = i
        if value.startswith(b"W/", i):
            i += 2
        if i >= n or value[i] != 0x22:
            return None
        end = value.find(b'"', i + 1)
        if end < 0:
            return None
        parsed = parse_etag(value[start : end + 1])
        if parsed is None:
            return None
        tags.append(parsed)
        if len(tags) > MAX_TAGS:
            return None
        i = end + 1
        while i < n and value[i] in _OWS:
            i += 1
        if i < n and value[i] != 0x2C:  # a member must end at a comma or the value's end
            return None
    return tags


def etag_matches(list_value: bytes, etag: bytes, *, weak: bool) -> bool:
    """Whether the field value ``list_value`` (``*`` or a list of entity tags) matches
    ``etag``: with the weak comparison ("two entity tags are equivalent if their opaque-tags
    match character-by-character, regardless of either or both being tagged as weak") when
    ``weak``, else the strong one ("both are not weak and their opaque-tags match") — §8.8.3.2."""
    value = list_value.strip(_OWS)
    if value == b"*":
        return True
    ours = parse_etag(etag)
    if ours is None:
        return False
    tags = parse_etag_list(value)
    if not tags:
        return False
    our_weak, our_tag = ours
    if weak:
        return any(tag == our_tag for _, tag in tags)
    if our_weak:
        return False
    return any(not their_weak and tag == our_tag for their_weak, tag in tags)


def evaluate(
    method: bytes,
    headers: Iterable[tuple[bytes, bytes]],
    *,
    etag: bytes | None,
    last_modified: int | None,
) -> int | None:
    """304 or 412 when the request's preconditions say so (see the module's rule), else None."""
    if_match: list[bytes] = []
    if_none_match: list[bytes] = []
    if_modified_since: list[bytes] = []
    if_unmodified_since: list[bytes] = []
    for name, value in headers:
        lower = name.lower()
        if lower == b"if-match":
            if_match.append(value)
        elif lower == b"if-none-match":
            if_none_match.append(value)
        elif lower == b"if-modified-since":
            if_modified_since.append(value)
        elif lower == b"if-unmodified-since":
            if_unmodified_since.append(value)
    # Step 1, else step 2.
    if if_match:
        if not _list_holds(b", ".join(if_match), etag, weak=False):
            return 412
    elif len(if_unmodified_since) == 1 and last_modified is not None:
        date = parse_http_date(if_unmodified_since[0])
        if date is not None and last_modified > date:
            return 412
    safe = method in _SAFE
    # Step 3, else step 4.
    if if_none_match:
        if _list_holds(b", ".join(if_none_match), etag, weak=True):
            return 304 if safe else 412
    elif safe and len(if_modified_since) == 1 and last_modified is not None:
        date = parse_http_date(if_modified_since[0])
        if date is not None and last_modified <= date:
            return 304
    return None


def _list_holds(value: bytes, etag: bytes | None, *, weak: bool) -> bool:
    """``*`` matches the (existing) representation; a list matches only a representation
    that has an entity tag."""
    if value.strip(_OWS) == b"*":
        return True
    return etag is not None and etag_matches(value, etag, weak=weak)
