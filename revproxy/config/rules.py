"""HTTP rules and response services: the keys routes and listeners share for matching,
rewriting and answering (docs/http-rules.md), and the ``[cache]`` section.

Rule of this room: everything a rule needs is checked and loaded here, once per
configuration, so serving a request never meets a bad pattern, a missing error page or an
unknown template field: regular expressions are compiled, header names and template values
checked (proto/rewrite.py), error-page files read whole and size-checked, a static root must
be a directory. Every problem names the key path and the reason.
"""

from __future__ import annotations

import mimetypes
import re
from pathlib import Path
from typing import Final

from revproxy.config.model import (
    CacheSettings,
    Compress,
    ErrorPage,
    FieldMatch,
    HeaderEdits,
    Match,
    RouteCache,
    Static,
)
from revproxy.config.reader import TableReader
from revproxy.config.values import describe, parse_network
from revproxy.proto.rewrite import check_edit_name, parse_template

__all__ = [
    "CACHE_KEYS",
    "ERROR_PAGE_LIMIT",
    "read_cache_settings",
    "read_compress",
    "read_edits",
    "read_error_pages",
    "read_match",
    "read_prefix",
    "read_route_cache",
    "read_static",
]

MATCH_KEYS: Final = ("methods", "headers", "query", "src")
EDIT_KEYS: Final = ("set", "add", "remove")
COMPRESS_KEYS: Final = ("encodings", "types", "min_size", "level")
ROUTE_CACHE_KEYS: Final = ("ttl_max", "cookies", "authorization")
STATIC_KEYS: Final = ("root", "index")
CACHE_KEYS: Final = ("size", "max_object")

_STATIC_INDEX: Final = "index.html"
ERROR_PAGE_LIMIT: Final = 256 * 1024  # an error page is a page, not a download
# The levels each encoder takes (zstd: 1-19, whose windows stay within the 8 MiB RFC 9659
# allows the "zstd" coding; Brotli: quality 0-11; zlib: 1-9). One ``level`` must suit every
# listed encoding.
LEVELS: Final = {"zstd": (1, 19), "br": (0, 11), "gzip": (1, 9)}
_METHOD: Final = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_TYPE: Final = re.compile(r"^[a-z0-9!#$&^_.+-]+/([a-z0-9!#$&^_.+-]+|\*)$")
_PAGE_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".htm": "text/html; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".json": "application/json",
    ".xml": "application/xml",
}


# --- match ---------------------------------------------------------------------------------


def read_match(t: TableReader) -> Match | None:
    m = t.table("match", MATCH_KEYS)
    if m is None:
        return None
    methods = []
    for key, method in m.strings("methods", _parse_method):
        if method in methods:
            m.problem_at("methods", key, f'"{method}" is listed twice')
        methods.append(method)
    headers = _fields(m, "headers", header=True)
    query = _fields(m, "query", header=False)
    src = [net for _, net in m.strings("src", parse_network)]
    match = Match(methods=tuple(methods), headers=headers, query=query, src=tuple(src))
    if match.conditions == 0 and not m.failed:
        t.problem("match", "has no condition (give methods, headers, query or src, or drop it)")
    return match


def _parse_method(value: str) -> str:
    if not _METHOD.match(value):
        raise ValueError(f'"{value}" is not an HTTP method')
    if value != value.upper():
        raise ValueError(f'methods are case-sensitive and upper case (write "{value.upper()}")')
    return value


def _fields(m: TableReader, name: str, *, header: bool) -> tuple[FieldMatch, ...]:
    if name not in m.data:
        return ()
    raw = m.raw(name)
    if not isinstance(raw, dict):
        m.problem(name, f"expected a table of name = value, got {describe(raw)}")
        return ()
    out = []
    for field_name, value in raw.items():
        key = f"{m.key(name)}.{field_name}"
        if header:
            try:
                field_name = _header_name(field_name)
            except ValueError as exc:
                m.problem_at(name, key, str(exc))
                continue
        elif not field_name:
            m.problem_at(name, key, "a query parameter name cannot be empty")
            continue
        items = value if isinstance(value, list) else [value]
        values: list[str] = []
        patterns: list[str] = []
        for i, item in enumerate(items):
            where = f"{key}[{i}]" if isinstance(value, list) else key
            if not isinstance(item, str):
                m.problem_at(name, where, f"expected a string, got {describe(item)}")
                continue
            if item.startswith("~"):
                try:
                    re.compile(item[1:])
                except re.error as bad:
                    m.problem_at(name, where, f'"{item}" is not a valid regular expression: {bad}')
                    continue
                patterns.append(item[1:])
            else:
                values.append(item)
        if not items:
            m.problem_at(name, key, "an empty list matches nothing (give a value or drop it)")
            continue
        out.append(FieldMatch(name=field_name, values=tuple(values), patterns=tuple(patterns)))
    return tuple(out)


def _header_name(name: str) -> str:
    if not name or not re.match(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$", name):
        raise ValueError(f'"{name}" is not a header name')
    return name.lower()


# --- header edits and prefixes ---------------------------------------------------------------


def read_edits(t: TableReader, name: str) -> HeaderEdits | None:
    e = t.table(name, EDIT_KEYS)
    if e is None:
        return None
    sets = _edit_pairs(e, "set")
    adds = _edit_pairs(e, "add")
    removes = []
    for key, header in e.strings("remove", check_edit_name):
        if header in removes:
            e.problem_at("remove", key, f'"{header}" is listed twice')
        removes.append(header)
    for header, _ in sets:
        if header in removes:
            e.problem("set", f'"{header}" is both removed and set (set already replaces it)')
    return HeaderEdits(set=tuple(sets), add=tuple(adds), remove=tuple(removes))


def _edit_pairs(e: TableReader, name: str) -> list[tuple[str, str]]:
    raw = e.raw(name)
    if name not in e.data:
        return []
    if not isinstance(raw, dict):
        e.problem(name, f'expected a table of "Header-Name" = "value", got {describe(raw)}')
        return []
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for header, value in raw.items():
        key = f"{e.key(name)}.{header}"
        try:
            low = check_edit_name(header)
            if not isinstance(value, str):
                raise ValueError(f"expected a string value, got {describe(value)}")
            parse_template(value)
        except ValueError as exc:
            e.problem_at(name, key, str(exc))
            continue
        if low in seen:
            e.problem_at(name, key, f'"{header}" is given twice (header names ignore case)')
            continue
        seen.add(low)
        out.append((low, value))
    return out


def read_prefix(t: TableReader, name: str) -> str | None:
    return t.parsed(name, _parse_prefix, None)


def _parse_prefix(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f'expected a path like "/api", got {describe(value)}')
    if not value.startswith("/") or value == "/":
        raise ValueError(f'"{value}" must start with "/" and name at least one segment')
    if value.endswith("/"):
        raise ValueError(f'"{value}" must not end with "/" (write "{value.rstrip("/")}")')
    if any(c.isspace() or c in "?#%\\" for c in value) or "//" in value:
        raise ValueError(f'"{value}" must be a plain path (no spaces, ?, #, %, \\ or //)')
    if any(seg in (".", "..") for seg in value.split("/")):
        raise ValueError(f'"{value}" must not contain "." or ".." segments')
    return value


# --- error pages -----------------------------------------------------------------------------


def read_error_pages(t: TableReader) -> tuple[ErrorPage, ...]:
    raw = t.raw("error_pages")
    if "error_pages" not in t.data:
        return ()
    if not isinstance(raw, dict):
        t.problem(
            "error_pages",
            f'expected a table like {{ 502 = "errors/50x.html" }}, got {describe(raw)}',
        )
        return ()
    pages = []
    for status_text, value in raw.items():
        key = f"{t.key('error_pages')}.{status_text}"
        if not status_text.isdigit() or not 400 <= int(status_text) <= 599:
            t.problem_at("error_pages", key, f'"{status_text}" is not an error status (400-599)')
            continue
        if not isinstance(value, str) or not value:
            t.problem_at("error_pages", key, f"expected a file name, got {describe(value)}")
            continue
        path = t.ctx.resolve(value)
        try:
            body = path.read_bytes()
        except FileNotFoundError:
            t.problem_at("error_pages", key, f"{path} does not exist")
            continue
        except OSError as exc:
            t.problem_at("error_pages", key, f"cannot read {path}: {exc.strerror or exc}")
            continue
        if len(body) > ERROR_PAGE_LIMIT:
            t.problem_at(
                "error_pages",
                key,
                f"{path} is {len(body)} bytes; an error page may be at most {ERROR_PAGE_LIMIT}",
            )
            continue
        pages.append(
            ErrorPage(status=int(status_text), file=path, body=body, content_type=_page_type(path))
        )
    return tuple(sorted(pages, key=lambda p: p.status))


def _page_type(path: Path) -> str:
    known = _PAGE_TYPES.get(path.suffix.lower())
    if known is not None:
        return known
    guessed, _ = mimetypes.MimeTypes(filenames=()).guess_type(path.name)
    return guessed or "application/octet-stream"


# --- compression, cache, static --------------------------------------------------------------


def read_compress(t: TableReader) -> Compress | None:
    c = t.table("compress", COMPRESS_KEYS)
    if c is None:
        return None
    default = Compress()
    encodings = []
    for key, enc in c.strings("encodings", _parse_encoding):
        if enc in encodings:
            c.problem_at("encodings", key, f'"{enc}" is listed twice')
        encodings.append(enc)
    if c.has("encodings") and not encodings and c.valid("encodings"):
        c.problem("encodings", "must name at least one of zstd, br, gzip")
    types = [ct for _, ct in c.strings("types", _parse_type)]
    if c.has("types") and not types and c.valid("types"):
        c.problem("types", "must name at least one content type (or drop it for the default)")
    chosen = tuple(encodings) or default.encodings
    level: int | None = None
    if c.has("level"):
        raw = c.raw("level")
        low = max(LEVELS[e][0] for e in chosen)
        high = min(LEVELS[e][1] for e in chosen)
        if isinstance(raw, int) and not isinstance(raw, bool) and low <= raw <= high:
            level = raw
        else:
            ranges = ", ".join(f"{e} {LEVELS[e][0]}-{LEVELS[e][1]}" for e in chosen)
            c.problem(
                "level",
                f"expected an integer from {low} to {high} (it must suit every listed "
                f"encoding: {ranges}), got {describe(raw)}",
            )
    return Compress(
        encodings=chosen,
        types=tuple(dict.fromkeys(types)),
        min_size=c.size("min_size", default.min_size),
        level=level,
    )


def _parse_encoding(value: str) -> str:
    if value not in LEVELS:
        raise ValueError(f'"{value}" is not an encoding revproxy makes (zstd, br, gzip)')
    return value


def _parse_type(value: str) -> str:
    low = value.strip().lower()
    if not _TYPE.match(low):
        raise ValueError(f'"{value}" is not a content type (write "type/subtype" or "type/*")')
    return low


def read_route_cache(t: TableReader) -> RouteCache | None:
    c = t.table("cache", ROUTE_CACHE_KEYS)
    if c is None:
        return None
    default = RouteCache()
    return RouteCache(
        ttl_max=c.duration("ttl_max", default.ttl_max),
        cookies=c.boolean("cookies", default.cookies),
        authorization=c.boolean("authorization", default.authorization),
    )


def read_static(t: TableReader) -> Static | None:
    s = t.table("static", STATIC_KEYS)
    if s is None:
        return None
    root = s.path("root", None, required='the folder to serve, e.g. root = "www"')
    index: str | None = _STATIC_INDEX
    if s.has("index"):
        raw = s.raw("index")
        if raw is False or raw == "":
            index = None
        elif isinstance(raw, str) and "/" not in raw and raw not in (".", ".."):
            index = raw
        else:
            s.problem(
                "index", f'expected a file name like "index.html" or false, got {describe(raw)}'
            )
    if root is None:
        return None
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a directory"
        s.problem("root", f"{root} {what}")
    return Static(root=root, index=index)


def read_cache_settings(t: TableReader | None) -> CacheSettings:
    default = CacheSettings()
    if t is None:
        return default
    size = t.size("size", default.size, low=1024 * 1024)
    max_object = t.size("max_object", default.max_object, low=1)
    if t.valid("size") and t.valid("max_object") and max_object > size:
        t.problem("max_object", f"is larger than size ({max_object} > {size} bytes)")
    return CacheSettings(size=size, max_object=max_object)
