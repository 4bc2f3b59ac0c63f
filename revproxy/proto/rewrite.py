"""Header edits of a route (``request_headers``, ``response_headers``) and their templates.

Rule of this room: an edit can change what a message says, never how it is framed or which
connection it belongs to. Names that carry framing or hop-by-hop meaning (``Content-Length``,
``Transfer-Encoding``, ``Connection``, ``Host``, ...) and HTTP/2 pseudo-headers are refused
when the configuration is read, so no edit can smuggle a second message or break the relay.
Edits run after the built-in forwarding and hiding rules (proto/forwarding.py), in a fixed
order: ``remove``, then ``set`` (every field of that name replaced by one), then ``add``
(appended). A value is a template: ``{client_ip}``, ``{request_id}``, ``{host}`` and ``{user}``
are replaced by the request's own (``{{`` and ``}}`` are literal braces); a value that would
carry CR, LF or NUL after substitution has those bytes removed (a Host or user name cannot
inject a header).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from revproxy.proto.events import Headers

__all__ = [
    "TEMPLATE_NAMES",
    "Edits",
    "Template",
    "apply_edits",
    "check_edit_name",
    "compile_edits",
    "parse_template",
]

TEMPLATE_NAMES: Final = ("client_ip", "request_id", "host", "user")

# Framing, routing and connection-level fields: edits of these are refused.
_REFUSED: Final = frozenset(
    {
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "host",
    }
)
_TOKEN: Final = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


def check_edit_name(name: str) -> str:
    """The lower-case field name, or ValueError saying why it may not be edited."""
    if not name or any(c not in _TOKEN for c in name):
        raise ValueError(f'"{name}" is not a header name (letters, digits and !#$%&\'*+-.^_`|~)')
    low = name.lower()
    if low in _REFUSED:
        hint = ' (use the pool\'s host_header = "...")' if low == "host" else ""
        raise ValueError(f'"{name}" frames or routes the message and cannot be edited{hint}')
    return low


@dataclass(frozen=True, slots=True)
class Template:
    """A header value with ``{name}`` fields; ``parts`` alternate literal bytes and names."""

    parts: tuple[bytes | str, ...]

    @property
    def constant(self) -> bytes | None:
        """The value when it has no fields, else None."""
        if all(isinstance(p, bytes) for p in self.parts):
            return b"".join(p for p in self.parts if isinstance(p, bytes))
        return None

    def render(self, values: Mapping[str, bytes]) -> bytes:
        out = []
        for part in self.parts:
            if isinstance(part, bytes):
                out.append(part)
            else:
                out.append(values.get(part, b"").translate(None, b"\r\n\x00"))
        return b"".join(out)


def parse_template(text: str) -> Template:
    """``text`` as a Template, or ValueError naming the problem."""
    if any(c in text for c in "\r\n\x00"):
        raise ValueError("a header value cannot contain CR, LF or NUL")
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(
            "a header value must be Latin-1 (write non-ASCII text percent-encoded)"
        ) from None
    parts: list[bytes | str] = []
    literal: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "{":
            if text.startswith("{{", i):
                literal.append("{")
                i += 2
                continue
            end = text.find("}", i)
            if end < 0:
                raise ValueError(f'"{text}": "{{" without "}}" (write "{{{{" for a brace)')
            name = text[i + 1 : end]
            if name not in TEMPLATE_NAMES:
                known = ", ".join("{" + n + "}" for n in TEMPLATE_NAMES)
                raise ValueError(f'"{text}": unknown field {{{name}}} (known: {known})')
            if literal:
                parts.append("".join(literal).encode("latin-1"))
                literal = []
            parts.append(name)
            i = end + 1
        elif c == "}":
            if not text.startswith("}}", i):
                raise ValueError(f'"{text}": "}}" without "{{" (write "}}}}" for a brace)')
            literal.append("}")
            i += 2
        else:
            literal.append(c)
            i += 1
    if literal or not parts:
        parts.append("".join(literal).encode("latin-1"))
    return Template(tuple(parts))


@dataclass(frozen=True, slots=True)
class Edits:
    """Compiled header edits: names lower-case bytes."""

    remove: frozenset[bytes]
    set: tuple[tuple[bytes, Template], ...]
    add: tuple[tuple[bytes, Template], ...]
    needs_values: bool  # some template has fields

    @property
    def dropped(self) -> frozenset[bytes]:
        """Every name whose existing fields go (removed, or replaced by ``set``)."""
        return self.remove | frozenset(name for name, _ in self.set)


def compile_edits(
    set_: Sequence[tuple[str, str]], add: Sequence[tuple[str, str]], remove: Sequence[str]
) -> Edits:
    """Edits from checked configuration values (names already passed ``check_edit_name``)."""
    sets = tuple((n.lower().encode(), parse_template(v)) for n, v in set_)
    adds = tuple((n.lower().encode(), parse_template(v)) for n, v in add)
    return Edits(
        remove=frozenset(n.lower().encode() for n in remove),
        set=sets,
        add=adds,
        needs_values=any(t.constant is None for _, t in (*sets, *adds)),
    )


_NO_VALUES: Final[Mapping[str, bytes]] = {}


def apply_edits(
    headers: Headers, edits: Edits, values: Mapping[str, bytes] = _NO_VALUES
) -> Headers:
    """``headers`` edited (a new list; the input is not changed)."""
    dropped = edits.dropped
    out = [h for h in headers if h[0] not in dropped] if dropped else list(headers)
    for name, template in edits.set:
        out.append((name, template.render(values)))
    for name, template in edits.add:
        out.append((name, template.render(values)))
    return out


def rewrite_prefix(target: bytes, strip: bytes | None, add: bytes | None) -> bytes:
    """A normalised origin-form ``target`` with ``strip`` taken off the front of its path
    and ``add`` put in front (``strip_prefix`` / ``add_prefix``; the query is kept).

    ``strip`` is taken off only where a segment ends: ``/api`` turns ``/api/x`` into ``/x`` and
    ``/api`` into ``/``, but leaves ``/apis`` alone (the route's path decides what reaches here;
    configuration checks the prefix belongs to it). ``add`` starts with "/" and has no
    trailing one: ``/v1`` + ``/x`` is ``/v1/x``, and ``/v1`` + ``/`` is ``/v1/``."""
    cut = target.find(b"?")
    path, query = (target, b"") if cut < 0 else (target[:cut], target[cut:])
    if strip:
        n = len(strip)
        if path.startswith(strip) and (len(path) == n or path[n : n + 1] == b"/"):
            path = path[n:] or b"/"
    if add:
        path = add + path
    return path + query
